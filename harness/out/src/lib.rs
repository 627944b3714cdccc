//! The trusted `out` component of a pipeline step: the step's single way out.
//!
//! It exports `sluice:pipeline/sink` (called by the `in` component with the logic's output) and
//! imports `sluice:pipeline/sink` (the sink provider, linked in the manifest). Before forwarding a
//! batch it checks the step's output limits: at most `limits.max-records` records and
//! `limits.max-bytes` bytes (payload + key + header names and values + origin) per write, counted
//! as the records travel: the payload in the wire form (`wire-message`: one char per payload byte,
//! so a byte from `0x80` counts two), which is what reaches the host and the sink provider; the
//! records are forwarded as they are, never decoded here. A batch over either limit is refused
//! with `reject` naming every record and the limit, and nothing of it reaches the sink, so a
//! runaway transform cannot flood a sink. The limits come from a small component that
//! `sluice compose` generates from its `--max-records` / `--max-bytes` options.

#[path = "../../shared/reject.rs"]
mod reject;

mod bindings {
    wit_bindgen::generate!({
        world: "sluice:harness/out-component",
        path: "../wit",
        generate_all,
    });
}

use bindings::exports::sluice::pipeline::sink::Guest;
use bindings::sluice::harness::limits;
use bindings::sluice::pipeline::sink;
use bindings::sluice::pipeline::types::{Failure, WireMessage};
use reject::reject_all;

struct Out;

impl Guest for Out {
    fn write(batch: Vec<WireMessage>) -> Result<(), Failure> {
        let max_records = limits::max_records();
        let max_bytes = limits::max_bytes();
        let records = batch.len() as u64;
        let bytes: u64 = batch.iter().map(size).sum();
        if records > u64::from(max_records) {
            return Err(reject_all(
                batch.len(),
                &format!("step output limit: {records} records in one write, at most {max_records}"),
            ));
        }
        if bytes > max_bytes {
            return Err(reject_all(
                batch.len(),
                &format!("step output limit: {bytes} bytes in one write, at most {max_bytes}"),
            ));
        }
        sink::write(&batch)
    }
}

/// The bytes a record counts against the limit: payload (in the wire form), key, header names and
/// values, origin.
fn size(message: &WireMessage) -> u64 {
    let headers: usize = message.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (message.payload.len() + message.key.as_ref().map_or(0, Vec::len) + headers + message.origin.len()) as u64
}

bindings::export!(Out with_types_in bindings);
