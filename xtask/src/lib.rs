//! Sluice's build tasks, as a library so tests can run them too.
//!
//! - [`par`]: every provider of the workspace packaged as a wasmCloud provider archive (`.par.gz`,
//!   what `wash par create --compress` writes), from stripped binaries.

pub mod par;
