//! The wasmtime step host lives in the library (`sluice test` runs it); tests use it from there.

#[allow(unused_imports)]
pub use sluice_compose::step_host::*;
