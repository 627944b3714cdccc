//! Example customer logic in Rust: a JSON field mapper and filter (see `mapper.rs`).

mod mapper;

mod bindings {
    wit_bindgen::generate!({
        world: "sluice:pipeline/logic",
        path: "../../../wit",
        generate_all,
    });
}

use bindings::exports::sluice::pipeline::transform::Guest;
use bindings::sluice::pipeline::types::{Failure, Message, Rejected};
use mapper::Outcome;

struct Logic;

impl Guest for Logic {
    fn process(batch: Vec<Message>) -> Result<Vec<Message>, Failure> {
        let mut output = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        for (index, message) in batch.into_iter().enumerate() {
            match mapper::map(&message.payload) {
                Outcome::Drop => {}
                Outcome::Reject(reason) => rejected.push(Rejected {
                    index: index as u32,
                    reason: reason.to_string(),
                }),
                Outcome::Keep { key, payload } => output.push(Message {
                    key: Some(key),
                    payload,
                    ..message
                }),
            }
        }
        if rejected.is_empty() {
            Ok(output)
        } else {
            Err(Failure::Reject(rejected))
        }
    }
}

bindings::export!(Logic with_types_in bindings);
