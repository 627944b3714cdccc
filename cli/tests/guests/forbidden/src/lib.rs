//! Test logic importing what the default policy forbids: `wasi:http`, `wasi:sockets` and
//! `wasi:filesystem`. A record with payload `http`, `net` or `fs` calls that import; anything else
//! passes through.

mod bindings {
    wit_bindgen::generate!({
        world: "test:forbidden/forbidden-logic",
        path: "wit",
        generate_all,
    });
}

use bindings::exports::sluice::pipeline::transform::Guest;
use bindings::sluice::pipeline::types::{Failure, Message};
use bindings::wasi::filesystem::preopens;
use bindings::wasi::http::types::Fields;
use bindings::wasi::sockets::instance_network;

struct Forbidden;

impl Guest for Forbidden {
    fn process(batch: Vec<Message>) -> Result<Vec<Message>, Failure> {
        for message in &batch {
            match message.payload.as_slice() {
                b"http" => drop(Fields::new()),
                b"net" => drop(instance_network::instance_network()),
                b"fs" => drop(preopens::get_directories()),
                _ => {}
            }
        }
        Ok(batch)
    }
}

bindings::export!(Forbidden with_types_in bindings);
