//! The trusted `in` component of a pipeline step.
//!
//! It exports `sluice:pipeline/ingest`: a source provider hands it a batch, it asks the customer's
//! logic (`transform.process`) for the records to write, forwards them to `sink.write` (the trusted
//! `out` component, which enforces the step's output limits before the real sink), maps every
//! failure onto the indices of the batch it was given, and logs one line per batch.
//!
//! `ingest` and `sink` carry `wire-message`s (payload bytes as a Latin-1 string, which a wasmCloud
//! 1.x host copies in one piece); the logic sees `message`s. This component converts both ways
//! with `sluice-wire`, the one implementation of that mapping. A delivered record whose payload is
//! not in the wire form (a char above U+00FF) is rejected by its index and never reaches the logic;
//! the rest of the batch goes on.
//!
//! Failure mapping:
//! - the logic answers `retry`: the batch is offered again (`retry`), nothing was written;
//! - the logic answers `reject(list)`: the logic is asked again with the records it did not reject
//!   (repeatedly, each round removing at least one record), their output is written, and the
//!   listed records come back as `reject` with the logic's reasons, so the source dead-letters them
//!   and acknowledges the rest;
//! - the logic answers `reject` naming a record that is not in the batch (or no record): every
//!   record is rejected with that explanation: the logic is broken and retrying cannot help;
//! - the sink answers `retry`: `retry` (the source offers the batch again; records already written
//!   by an earlier attempt may be written twice: at-least-once);
//! - the sink answers `reject` (including the `out` component's limit refusal): output records
//!   cannot be traced back to input records after a transform, so every input record is rejected
//!   with the sink's first reason: nothing is acknowledged that was not written.
//!
//! A trap in the logic traps the whole step instance: the host sees the error at the `deliver`
//! boundary and drops the instance.

#[path = "../../shared/reject.rs"]
mod reject;

mod bindings {
    wit_bindgen::generate!({
        world: "sluice:harness/in-component",
        path: "../wit",
        generate_all,
    });
}

use bindings::exports::sluice::pipeline::ingest::Guest;
use bindings::sluice::pipeline::types::{Failure, Message, Rejected, WireMessage};
use bindings::sluice::pipeline::{sink, transform};
use bindings::wasi::clocks::monotonic_clock;
use bindings::wasi::logging::logging::{log, Level};
use reject::reject_all;

/// The `context` of every log line this component emits.
const LOG_CONTEXT: &str = "sluice-step";

struct In;

impl Guest for In {
    fn deliver(batch: Vec<WireMessage>) -> Result<(), Failure> {
        let started = monotonic_clock::now();
        let records_in = batch.len();
        let (outcome, records_out) = deliver(batch);
        let micros = monotonic_clock::now().saturating_sub(started) / 1_000;
        let (level, what) = match &outcome {
            Ok(()) => (Level::Info, "ok".to_string()),
            Err(Failure::Retry(reason)) => (Level::Warn, format!("retry: {reason}")),
            Err(Failure::Reject(rejected)) => (
                Level::Warn,
                format!(
                    "rejected {} record(s), first: {}",
                    rejected.len(),
                    rejected.first().map(|r| r.reason.as_str()).unwrap_or("")
                ),
            ),
        };
        log(
            level,
            LOG_CONTEXT,
            &format!("batch: {records_in} in, {records_out} out, {micros} us, {what}"),
        );
        outcome
    }
}

/// Runs one batch through the logic and the sink; also returns how many records were written.
fn deliver(batch: Vec<WireMessage>) -> (Result<(), Failure>, usize) {
    let received = batch.len();
    let Decoded {
        messages,
        positions,
        refused,
    } = decode(batch);
    let (output, rejected) = match transform_with_rejects(received, messages, positions, refused) {
        Ok(done) => done,
        Err(failure) => return (Err(failure), 0),
    };
    let written = output.len();
    if !output.is_empty() {
        let output: Vec<WireMessage> = output.into_iter().map(to_wire).collect();
        match sink::write(&output) {
            Ok(()) => {}
            Err(Failure::Retry(reason)) => return (Err(Failure::Retry(reason)), 0),
            Err(Failure::Reject(list)) => {
                let reason = format!(
                    "the sink refused {} of {} output record(s): {}",
                    list.len(),
                    written,
                    list.first().map(|r| r.reason.as_str()).unwrap_or("no reason given")
                );
                return (Err(reject_all(received, &reason)), 0);
            }
        }
    }
    if rejected.is_empty() {
        (Ok(()), written)
    } else {
        (Err(Failure::Reject(rejected)), written)
    }
}

/// A delivered batch in the logic's terms.
struct Decoded {
    /// The records whose payload is in the wire form, in delivery order.
    messages: Vec<Message>,
    /// The index in the delivered batch of each of `messages`.
    positions: Vec<u32>,
    /// The records whose payload is not in the wire form.
    refused: Vec<Rejected>,
}

/// Turns the delivered records into `message`s; one whose payload is not in the wire form is
/// refused with the reason.
fn decode(batch: Vec<WireMessage>) -> Decoded {
    let mut decoded = Decoded {
        messages: Vec::with_capacity(batch.len()),
        positions: Vec::with_capacity(batch.len()),
        refused: Vec::new(),
    };
    for (index, wire) in (0u32..).zip(batch) {
        match sluice_wire::decode_string(wire.payload) {
            Ok(payload) => {
                decoded.messages.push(Message {
                    key: wire.key,
                    payload,
                    headers: wire.headers,
                    timestamp_ms: wire.timestamp_ms,
                    origin: wire.origin,
                });
                decoded.positions.push(index);
            }
            Err(err) => decoded.refused.push(Rejected {
                index,
                reason: err.to_string(),
            }),
        }
    }
    decoded
}

/// A record of the logic's output as it travels to the sink.
fn to_wire(message: Message) -> WireMessage {
    WireMessage {
        key: message.key,
        payload: sluice_wire::encode_vec(message.payload),
        headers: message.headers,
        timestamp_ms: message.timestamp_ms,
        origin: message.origin,
    }
}

/// Asks the logic for the output of `offered`; when it rejects records, asks again without them.
///
/// `received` is the size of the delivered batch, `remaining[i]` the index in it of `offered[i]`,
/// and `rejected` what was refused before the logic was asked. Returns the output of the records
/// the logic accepted and every rejected record, with indices into the delivered batch.
fn transform_with_rejects(
    received: usize,
    mut offered: Vec<Message>,
    mut remaining: Vec<u32>,
    mut rejected: Vec<Rejected>,
) -> Result<(Vec<Message>, Vec<Rejected>), Failure> {
    // The logic sees every delivered batch, even an empty one, unless all of it was refused.
    if offered.is_empty() && !rejected.is_empty() {
        return Ok((Vec::new(), rejected));
    }
    loop {
        match transform::process(&offered) {
            Ok(output) => {
                rejected.sort_by_key(|r| r.index);
                return Ok((output, rejected));
            }
            Err(Failure::Retry(reason)) => return Err(Failure::Retry(reason)),
            Err(Failure::Reject(list)) => {
                let mut drop = vec![false; remaining.len()];
                for r in &list {
                    match drop.get_mut(r.index as usize) {
                        Some(slot) if !*slot => *slot = true,
                        _ => {
                            return Err(reject_all(
                                received,
                                &format!(
                                    "the logic rejected record {} of a batch of {} (or twice)",
                                    r.index,
                                    offered.len()
                                ),
                            ))
                        }
                    }
                }
                if list.is_empty() {
                    return Err(reject_all(
                        received,
                        "the logic answered `reject` without naming a record",
                    ));
                }
                rejected.extend(list.into_iter().map(|r| Rejected {
                    index: remaining[r.index as usize],
                    reason: r.reason,
                }));
                let mut keep = drop.iter().map(|d| !d);
                remaining.retain(|_| keep.next().unwrap_or(false));
                let mut keep = drop.iter().map(|d| !d);
                offered.retain(|_| keep.next().unwrap_or(false));
                if offered.is_empty() {
                    rejected.sort_by_key(|r| r.index);
                    return Ok((Vec::new(), rejected));
                }
            }
        }
    }
}

bindings::export!(In with_types_in bindings);
