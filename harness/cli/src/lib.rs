//! `sluice`: composes a pipeline step from the trusted `in` and `out` components and a customer's
//! logic under an import policy, and scaffolds customer logic.
//!
//! The binary (`src/bin/sluice`) only parses arguments; everything it does lives here so tests,
//! benchmarks and other tools (deploy, render) can use it.

pub mod component;
pub mod compose;
pub mod guest;
pub mod limits;
pub mod policy;
pub mod stub;
pub mod templates;
pub mod trusted;
pub mod world;
