//! Test tooling for the harness: building guest logic with the project's recipes, the providers'
//! archives and a composed step for real-host tests, and a wasmtime host that runs a composed step, supplying `sink` and `wasi:logging` natively and nothing but the
//! allowed WASI interfaces (clocks, random, poll) from `wasmtime-wasi`.

#![allow(dead_code)]

pub mod fixtures;
pub mod host;
pub mod lattice;
