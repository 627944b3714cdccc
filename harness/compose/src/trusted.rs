//! The trusted `in` and `out` components and the relay's identity logic, built from `harness/in`,
//! `harness/out` and `harness/identity` by the build script and embedded in the `sluice` binary.

use crate::component::{self, ComponentError};

/// The core module of `harness/in` (exports `ingest`, imports `transform` and `sink`).
const IN_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/in.wasm"));
/// The core module of `harness/out` (exports and imports `sink`, imports the step's limits).
const OUT_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/out.wasm"));

/// The core module of `harness/identity` (exports `transform`, returns every batch as it came).
const IDENTITY_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/identity.wasm"));

/// The trusted `in` component.
pub fn in_component() -> Result<Vec<u8>, ComponentError> {
    component::from_bytes("the trusted in component", IN_MODULE)
}

/// The trusted `out` component.
pub fn out_component() -> Result<Vec<u8>, ComponentError> {
    component::from_bytes("the trusted out component", OUT_MODULE)
}

/// The identity logic a relay step is composed with (see [`crate::compose::relay`]).
pub fn identity_component() -> Result<Vec<u8>, ComponentError> {
    component::from_bytes("the relay's identity logic", IDENTITY_MODULE)
}
