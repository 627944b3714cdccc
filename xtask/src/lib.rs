//! Sluice's build tasks, as a library so tests can run them too.
//!
//! - [`par`]: every provider of the workspace packaged as a wasmCloud provider archive (`.par.gz`,
//!   what `wash par create --compress` writes), from stripped binaries.
//! - [`keys`]: the keys that sign them, kept in a directory so each provider's identity (the
//!   subject that secrets mappings name) survives rebuilds.

pub mod keys;
pub mod par;
