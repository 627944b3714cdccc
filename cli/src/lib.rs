//! `sluice`, the command line of Sluice: composes pipeline steps (with `sluice-compose`), scaffolds
//! and tests customer logic, and (through `sluice-deploy`) renders pipeline specs as wadm manifests,
//! runs them on an embedded lattice, and deploys, watches and undeploys them on a user's lattice.
//!
//! The binary (`src/main.rs`, one module per subcommand in `src/commands/`) only parses arguments
//! and prints; what tests, benchmarks and other tools also use lives here, in `sluice-compose` or in
//! `sluice-deploy`.

pub mod cases;
pub mod project;
pub mod templates;
pub mod watch;
