//! `sluice`: composes a pipeline step from the trusted `in` and `out` components and a customer's
//! logic under an import policy, scaffolds customer logic, and (through `sluice-deploy`) renders
//! pipeline specs as wadm manifests and runs them on an embedded lattice.
//!
//! The binary (`src/bin/sluice`) only parses arguments; everything it does lives here or in
//! `sluice-deploy` so tests, benchmarks and other tools can use it.

pub mod cases;
pub mod component;
pub mod compose;
pub mod guest;
pub mod limits;
pub mod policy;
pub mod step_host;
pub mod stub;
pub mod templates;
pub mod trusted;
pub mod world;
