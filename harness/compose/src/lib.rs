//! Composes a pipeline step: the trusted `in` and `out` components (built from `harness/in` and
//! `harness/out`, embedded in this crate) around a customer's logic component, under an import
//! policy and resource limits; and runs a composed step in wasmtime under the bounds a host operator
//! is told to set ([`step_host`]).
//!
//! The `sluice` CLI (`sluice compose`, `sluice test`), the console and the tests use it.

pub mod component;
pub mod compose;
pub mod guest;
pub mod limits;
pub mod policy;
pub mod step_host;
pub mod stub;
pub mod trusted;
pub mod world;
