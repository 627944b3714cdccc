//! Shared by the trusted guests (`#[path]`-included; each has its own workspace).

use crate::bindings::sluice::pipeline::types::{Failure, Rejected};

/// Rejects every record of a batch of `len` with one reason.
pub fn reject_all(len: usize, reason: &str) -> Failure {
    Failure::Reject(
        (0..len as u32)
            .map(|index| Rejected {
                index,
                reason: reason.to_string(),
            })
            .collect(),
    )
}
