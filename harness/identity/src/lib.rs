//! The identity logic of a relay step: every batch goes out as it came in.
//!
//! A sink fed from a JetStream hop needs a component to call it; `sluice compose --relay` composes
//! this logic between the trusted `in` and `out` components, so a sink provider is only ever
//! called by trusted code. It exports `sluice:pipeline/transform` and imports nothing.

mod bindings {
    wit_bindgen::generate!({
        world: "sluice:pipeline/logic",
        path: "../../wit",
        generate_all,
    });
}

use bindings::exports::sluice::pipeline::transform::Guest;
use bindings::sluice::pipeline::types::{Failure, Message};

struct Identity;

impl Guest for Identity {
    fn process(batch: Vec<Message>) -> Result<Vec<Message>, Failure> {
        Ok(batch)
    }
}

bindings::export!(Identity with_types_in bindings);
