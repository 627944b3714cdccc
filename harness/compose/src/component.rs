//! Reading Wasm binaries as components.

use thiserror::Error;
use wit_component::ComponentEncoder;

/// A binary that is neither a component nor a core module with embedded WIT.
#[derive(Debug, Error)]
#[error("{what} is not a usable Wasm component: {reason}")]
pub struct ComponentError {
    /// What the binary is (e.g. `the logic`).
    pub what: String,
    /// Why it was refused.
    pub reason: String,
}

/// Whether `bytes` is a binary component (rather than a core module).
pub fn is_component(bytes: &[u8]) -> bool {
    wasmparser::Parser::is_component(bytes)
}

/// Returns `bytes` as a component: a component as it is, a core module built with `wit-bindgen`
/// (it carries its WIT in a custom section) turned into one. `what` names it in errors.
pub fn from_bytes(what: &str, bytes: &[u8]) -> Result<Vec<u8>, ComponentError> {
    if is_component(bytes) {
        return Ok(bytes.to_vec());
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(ComponentError {
            what: what.to_string(),
            reason: "not a WebAssembly binary".to_string(),
        });
    }
    ComponentEncoder::default()
        .module(bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| ComponentError {
            what: what.to_string(),
            reason: format!("{e:#}"),
        })
}

/// How many core module instantiations the component `bytes` performs (nested components
/// included), to compare with a host's per-component limit (wasmCloud 1.x:
/// `--max-core-instances-per-component`, default 30).
pub fn core_instantiations(bytes: &[u8]) -> Result<usize, wasmparser::BinaryReaderError> {
    let mut count = 0;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::InstanceSection(reader) = payload? {
            for instance in reader {
                if matches!(instance?, wasmparser::Instance::Instantiate { .. }) {
                    count += 1;
                }
            }
        }
    }
    Ok(count)
}
