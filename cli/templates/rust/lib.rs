//! Customer logic for a Sluice pipeline step: `process` receives a batch of records and returns the
//! records to write. Return `Err(Failure::Reject(..))` to refuse records for good (the rest of the
//! batch is processed again without them), `Err(Failure::Retry(..))` to have the batch offered
//! again later.

mod bindings {
    wit_bindgen::generate!({
        world: "sluice:pipeline/logic",
        path: "wit",
        generate_all,
    });
}

use bindings::exports::sluice::pipeline::transform::Guest;
use bindings::sluice::pipeline::types::{Failure, Message, Rejected};

struct Logic;

impl Guest for Logic {
    fn process(batch: Vec<Message>) -> Result<Vec<Message>, Failure> {
        let mut output = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        for (index, message) in batch.into_iter().enumerate() {
            if message.payload.is_empty() {
                rejected.push(Rejected {
                    index: index as u32,
                    reason: "empty payload".to_string(),
                });
            } else {
                output.push(message);
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
