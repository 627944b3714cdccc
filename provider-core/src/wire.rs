//! The wire form at the wRPC boundary.
//!
//! Connectors and the engine work with [`Message`] (payload [`bytes::Bytes`]); `ingest.deliver`
//! and `sink.write` carry [`WireMessage`]s, whose payload is a string holding the bytes one char
//! per byte (Latin-1, [`sluice_wire`]), because a wasmCloud 1.x host moves a `string` in one piece
//! and a `list<u8>` one element at a time. This module converts between the two, and only the
//! wRPC edges of the crate ([`crate::wrpc::WrpcIngest`], the sink server in [`crate::wasmcloud`])
//! call it.

use crate::{Failure, Message, Rejected};

pub use crate::bindings::sluice::pipeline::types::WireMessage;
pub use sluice_wire::NotWireForm;

impl Message {
    /// This record as it travels over wRPC. An ASCII payload is copied as it is.
    #[must_use]
    pub fn to_wire(&self) -> WireMessage {
        WireMessage {
            key: self.key.clone(),
            payload: sluice_wire::encode(&self.payload),
            headers: self.headers.clone(),
            timestamp_ms: self.timestamp_ms,
            origin: self.origin.clone(),
        }
    }

    /// How many bytes the payload takes in the wire form: its length plus one for each byte from
    /// `0x80`.
    #[must_use]
    pub fn wire_payload_len(&self) -> usize {
        sluice_wire::wire_len(&self.payload)
    }
}

impl WireMessage {
    /// The record this carries; an ASCII payload keeps its buffer.
    ///
    /// # Errors
    /// [`NotWireForm`] when the payload holds a char above U+00FF.
    pub fn into_message(self) -> Result<Message, NotWireForm> {
        Ok(Message {
            key: self.key,
            payload: sluice_wire::decode_string(self.payload)?.into(),
            headers: self.headers,
            timestamp_ms: self.timestamp_ms,
            origin: self.origin,
        })
    }
}

/// `batch` as it travels over wRPC.
#[must_use]
pub fn to_wire(batch: &[Message]) -> Vec<WireMessage> {
    batch.iter().map(Message::to_wire).collect()
}

/// Decodes a batch received in the wire form: the records whose payload is in the wire form, and
/// the [`Refusals`] of the others (by index, with the reason).
///
/// Whoever serves the call handles the records and answers with [`Refusals::answer`], which puts
/// the refused records into the answer with the indices of the received batch.
#[must_use]
pub fn decode_batch(batch: Vec<WireMessage>) -> (Vec<Message>, Refusals) {
    let mut messages = Vec::with_capacity(batch.len());
    let mut refusals = Refusals::default();
    for (index, wire) in (0u32..).zip(batch) {
        match wire.into_message() {
            Ok(message) => {
                messages.push(message);
                refusals.positions.push(index);
            }
            Err(err) => refusals.refused.push(Rejected {
                index,
                reason: err.to_string(),
            }),
        }
    }
    (messages, refusals)
}

/// The records of a received batch refused because their payload is not in the wire form, and
/// where the others were in it ([`decode_batch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// The index in the received batch of each decoded record.
    positions: Vec<u32>,
    /// The records that did not decode, by index in the received batch.
    refused: Vec<Rejected>,
}

impl Refusals {
    /// The refused records.
    #[must_use]
    pub fn refused(&self) -> &[Rejected] {
        &self.refused
    }

    /// Whether every record decoded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty()
    }

    /// The answer for the received batch, given `outcome`, the answer for the decoded records
    /// (`Ok(())` when there were none to handle): the refused records are rejected, indices in
    /// `outcome` are mapped back to the received batch, and `retry` stays `retry`.
    pub fn answer(self, outcome: Result<(), Failure>) -> Result<(), Failure> {
        if self.refused.is_empty() {
            return outcome;
        }
        let mut rejected = self.refused;
        match outcome {
            Ok(()) => {}
            Err(Failure::Retry(reason)) => return Err(Failure::Retry(reason)),
            Err(Failure::Reject(list)) => rejected.extend(list.into_iter().filter_map(|r| {
                Some(Rejected {
                    index: *self.positions.get(r.index as usize)?,
                    reason: r.reason,
                })
            })),
        }
        rejected.sort_by_key(|r| r.index);
        Err(Failure::Reject(rejected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(payload: &str) -> WireMessage {
        WireMessage {
            key: Some(b"k".to_vec().into()),
            payload: payload.into(),
            headers: vec![("h".into(), b"v".to_vec().into())],
            timestamp_ms: Some(7),
            origin: "test:x@0".into(),
        }
    }

    #[test]
    fn every_byte_value_survives_the_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        let mut message = Message::new(all.clone(), "test:bin@0");
        message.key = Some(b"key".to_vec().into());
        let on_wire = message.to_wire();
        assert_eq!(on_wire.payload.len(), message.wire_payload_len());
        assert_eq!(on_wire.payload.len(), 384);
        let back = on_wire.into_message().unwrap();
        assert_eq!(back, message);
        assert_eq!(&back.payload[..], &all[..]);
    }

    #[test]
    fn ascii_travels_unchanged() {
        let message = Message::new(&b"{\"temp\":21}"[..], "test:json@0");
        assert_eq!(message.to_wire().payload, "{\"temp\":21}");
        assert_eq!(message.wire_payload_len(), message.payload.len());
    }

    #[test]
    fn a_record_not_in_the_wire_form_is_refused_by_index() {
        let (messages, refusals) = decode_batch(vec![wire("a"), wire("\u{0100}"), wire("c"), wire("d\u{20AC}")]);
        assert_eq!(messages.len(), 2);
        assert_eq!(&messages[1].payload[..], b"c");
        assert_eq!(refusals.refused().len(), 2);
        assert!(refusals.refused()[0]
            .reason
            .starts_with("payload is not in the wire form"));
        let answer = refusals.clone().answer(Ok(()));
        let Err(Failure::Reject(list)) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(list.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 3]);

        // The handler's own rejects are mapped back to the received batch and merged.
        let answer = refusals.clone().answer(Err(Failure::Reject(vec![Rejected {
            index: 1,
            reason: "no".into(),
        }])));
        let Err(Failure::Reject(list)) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(list.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(list[1].reason, "no");

        let answer = refusals.answer(Err(Failure::Retry("later".into())));
        assert_eq!(answer, Err(Failure::Retry("later".into())));
    }

    #[test]
    fn a_clean_batch_keeps_the_handlers_answer() {
        let (messages, refusals) = decode_batch(vec![wire("a"), wire("\u{e9}")]);
        assert_eq!(&messages[1].payload[..], [0xe9]);
        assert!(refusals.is_empty());
        let reject = Err(Failure::Reject(vec![Rejected {
            index: 1,
            reason: "no".into(),
        }]));
        assert_eq!(refusals.answer(reject.clone()), reject);
    }
}
