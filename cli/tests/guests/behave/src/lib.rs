//! Test logic that misbehaves on request. A record's payload selects what happens to the batch:
//! `trap` panics (a trap), `loop` never returns, `alloc` allocates without bound, `retry` answers
//! `retry`, `flood N` returns N copies of the record, `reject` rejects the record; anything else
//! passes through unchanged.

mod bindings {
    wit_bindgen::generate!({
        world: "sluice:pipeline/logic",
        path: "../../../../wit",
        generate_all,
    });
}

use bindings::exports::sluice::pipeline::transform::Guest;
use bindings::sluice::pipeline::types::{Failure, Message, Rejected};

struct Behave;

impl Guest for Behave {
    fn process(batch: Vec<Message>) -> Result<Vec<Message>, Failure> {
        let mut output = Vec::new();
        let mut rejected = Vec::new();
        for (index, message) in batch.into_iter().enumerate() {
            match message.payload.as_slice() {
                b"trap" => panic!("the logic panicked"),
                b"loop" => loop {
                    std::hint::black_box(&message);
                },
                b"alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                b"retry" => return Err(Failure::Retry("asked to retry".into())),
                b"reject" => rejected.push(Rejected {
                    index: index as u32,
                    reason: "asked to reject".into(),
                }),
                payload if payload.starts_with(b"flood ") => {
                    let copies: usize = std::str::from_utf8(&payload[6..])
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    output.extend(std::iter::repeat_n(message, copies));
                }
                _ => output.push(message),
            }
        }
        if rejected.is_empty() {
            Ok(output)
        } else {
            Err(Failure::Reject(rejected))
        }
    }
}

bindings::export!(Behave with_types_in bindings);
