//! `sluice`: renders pipeline specs to wadm manifests and runs them on an embedded lattice.
//!
//! The binary (`src/bin/sluice`) only parses arguments; what it does lives in libraries
//! (`sluice-deploy` for specs, manifests, the embedded host and wadm) so tests and other tools
//! can use it.
