//! Trap stubs: a generated component exporting interfaces whose every function traps.
//!
//! With `--deny=trap`, `sluice compose` satisfies each import the policy forbids with such a stub
//! instead of refusing the logic, so a Python or JavaScript component (whose toolchain imports all
//! of WASI) composes into a step that can reach nothing: calling a forbidden function is an
//! `unreachable` trap inside the step. The stub's core module is `wit-component`'s dummy module
//! (every function body is `unreachable`) for a world exporting exactly the forbidden interfaces.

use thiserror::Error;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{LiftLowerAbi, ManglingAndAbi};

use crate::world::Decoded;

/// A stub that could not be generated.
#[derive(Debug, Error)]
#[error("cannot generate a trap stub for {interfaces}: {reason}")]
pub struct StubError {
    /// The interfaces the stub was for.
    pub interfaces: String,
    /// What went wrong.
    pub reason: String,
}

/// The mangling `wit-bindgen` and `wit-component` use for core module names.
pub(crate) const MANGLING: ManglingAndAbi = ManglingAndAbi::Legacy(LiftLowerAbi::Sync);

/// Generates a component exporting `interfaces` (named as in `logic`'s imports, e.g.
/// `wasi:http/types@0.2.10`) with every function trapping. What those interfaces use from other
/// interfaces it imports (e.g. `wasi:io/poll` for pollables).
pub fn trap_stub(logic: &Decoded, interfaces: &[String]) -> Result<Vec<u8>, StubError> {
    let error = |reason: String| StubError {
        interfaces: interfaces.join(", "),
        reason,
    };
    let mut resolve = logic.resolve.clone();
    let mut wit = String::from("package sluice:trap-stub;\n\nworld stub {\n");
    for interface in interfaces {
        wit.push_str(&format!("    export {interface};\n"));
    }
    wit.push_str("}\n");
    let package = resolve
        .push_str("trap-stub.wit", &wit)
        .map_err(|e| error(format!("{e:#}")))?;
    let world = resolve
        .select_world(&[package], Some("stub"))
        .map_err(|e| error(format!("{e:#}")))?;
    let mut module = wit_component::dummy_module(&resolve, world, MANGLING);
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .map_err(|e| error(format!("{e:#}")))?;
    ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| error(format!("{e:#}")))
}
