//! Test tooling for the harness: building guest logic with the project's recipes, the providers'
//! archives and a composed step for real-host tests, and (re-exported from the library) the
//! wasmtime host that runs a composed step.

#![allow(dead_code)]

pub mod fixtures;
pub mod host;
pub mod lattice;
