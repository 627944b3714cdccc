//! The trusted `in` and `out` components, built from `harness/in` and `harness/out` by the build
//! script and embedded in the `sluice` binary.

use crate::component::{self, ComponentError};

/// The core module of `harness/in` (exports `ingest`, imports `transform` and `sink`).
const IN_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/in.wasm"));
/// The core module of `harness/out` (exports and imports `sink`, imports the step's limits).
const OUT_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/out.wasm"));

/// The trusted `in` component.
pub fn in_component() -> Result<Vec<u8>, ComponentError> {
    component::from_bytes("the trusted in component", IN_MODULE)
}

/// The trusted `out` component.
pub fn out_component() -> Result<Vec<u8>, ComponentError> {
    component::from_bytes("the trusted out component", OUT_MODULE)
}
