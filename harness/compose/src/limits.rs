//! A step's output limits, baked in at compose time.
//!
//! The trusted `out` component imports `sluice:harness/limits`; `sluice compose` satisfies it with a
//! component generated here whose two functions return the configured constants. The limits are
//! therefore part of the composed step's binary: neither the customer's logic nor the manifest can
//! change them, and the step imports nothing for them.

use std::fmt;

use thiserror::Error;
use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, Module, TypeSection, ValType,
};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{WasmExport, WasmExportKind, WorldItem};

use crate::stub::MANGLING;
use crate::world::Decoded;

/// The interface the trusted `out` component reads its limits from.
pub const LIMITS_INTERFACE: &str = "sluice:harness/limits@0.1.0";

/// The most one `sink.write` of a step may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records per write.
    pub max_records: u32,
    /// Bytes per write (payload in the wire form, key, header names and values, origin).
    pub max_bytes: u64,
}

impl Default for Limits {
    /// 10,000 records and 16 MiB per write.
    fn default() -> Self {
        Self {
            max_records: 10_000,
            max_bytes: 16 << 20,
        }
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at most {} records and {} bytes per write",
            self.max_records, self.max_bytes
        )
    }
}

/// The limits component could not be generated.
#[derive(Debug, Error)]
#[error("cannot generate the limits component: {0}")]
pub struct LimitsError(String);

/// Generates the component exporting `limits` for the trusted `out` component `out` (whose WIT
/// defines the interface).
pub fn limits_component(out: &Decoded, limits: Limits) -> Result<Vec<u8>, LimitsError> {
    let error = |e: anyhow::Error| LimitsError(format!("{e:#}"));
    let mut resolve = out.resolve.clone();
    let package = resolve
        .push_str(
            "limits.wit",
            &format!("package sluice:limits-gen;\n\nworld limits {{\n    export {LIMITS_INTERFACE};\n}}\n"),
        )
        .map_err(error)?;
    let world = resolve.select_world(&[package], Some("limits")).map_err(error)?;
    let (key, interface) = resolve.worlds[world]
        .exports
        .iter()
        .find_map(|(key, item)| match item {
            WorldItem::Interface { id, .. } => Some((key.clone(), *id)),
            _ => None,
        })
        .ok_or_else(|| LimitsError(format!("{LIMITS_INTERFACE} has no interface")))?;

    let mut types = TypeSection::new();
    let mut functions = FunctionSection::new();
    let mut exports = ExportSection::new();
    let mut code = CodeSection::new();
    for (index, (name, func)) in resolve.interfaces[interface].functions.iter().enumerate() {
        let (ty, value) = match name.as_str() {
            "max-records" => (ValType::I32, Instruction::I32Const(limits.max_records as i32)),
            "max-bytes" => (ValType::I64, Instruction::I64Const(limits.max_bytes as i64)),
            other => return Err(LimitsError(format!("unknown limit `{other}`"))),
        };
        types.ty().function([], [ty]);
        functions.function(index as u32);
        let export = resolve.wasm_export_name(
            MANGLING,
            WasmExport::Func {
                interface: Some(&key),
                func,
                kind: WasmExportKind::Normal,
            },
        );
        exports.export(&export, ExportKind::Func, index as u32);
        let mut body = Function::new([]);
        body.instruction(&value).instruction(&Instruction::End);
        code.function(&body);
    }
    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&exports)
        .section(&code);
    let mut module = module.finish();
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).map_err(error)?;
    ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(error)
}
