//! One record on disk: `len: u32 LE | crc32(body): u32 LE | body`, where the body is the time
//! the batch was appended (`u64` LE, Unix milliseconds) followed by the [encoded](crate::codec)
//! batch.

use bytes::Bytes;

use crate::codec;
use crate::Message;

/// Bytes before a record's body.
pub(crate) const HEADER: usize = 8;

/// The smallest body: the append time and an empty batch's count.
const MIN_BODY: usize = 16;

/// A record framed for appending, with what the buffer tracks of it.
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: usize,
}

/// Frames `batch`, appended at `appended_ms`. `None` when the body would not fit a `u32` length.
pub(crate) fn encode(batch: &[Message], appended_ms: u64) -> Option<Encoded> {
    let body_len = 8 + codec::encoded_len(batch);
    let len = u32::try_from(body_len).ok()?;
    let mut bytes = Vec::with_capacity(HEADER + body_len);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&appended_ms.to_le_bytes());
    codec::encode_batch(batch, &mut bytes);
    let crc = crc32fast::hash(&bytes[HEADER..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(Encoded {
        bytes,
        records: batch.len(),
    })
}

/// What is at one offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole record whose checksum holds: its frame length, body and record count.
    Record {
        frame_len: u64,
        appended_ms: u64,
        records: usize,
    },
    /// The data ends inside a frame (a torn write).
    Short,
    /// A whole frame whose checksum or contents are wrong; `frame_len` is what its header claims.
    Corrupt { frame_len: u64 },
}

/// Parses the frame at the start of `data`.
pub(crate) fn parse(data: &[u8]) -> Parsed {
    let Some((header, rest)) = data.split_first_chunk::<HEADER>() else {
        return Parsed::Short;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let frame_len = (HEADER + len) as u64;
    if len < MIN_BODY {
        // Zeroes left by a crash look like empty frames with a matching checksum.
        return Parsed::Corrupt { frame_len };
    }
    let Some(body) = rest.get(..len) else {
        return Parsed::Short;
    };
    if crc32fast::hash(body) != crc {
        return Parsed::Corrupt { frame_len };
    }
    let (time, batch) = body.split_at(8);
    let mut ms = [0; 8];
    ms.copy_from_slice(time);
    let mut count = [0; 8];
    count.copy_from_slice(&batch[..8]);
    Parsed::Record {
        frame_len,
        appended_ms: u64::from_le_bytes(ms),
        records: usize::try_from(u64::from_le_bytes(count)).unwrap_or(usize::MAX),
    }
}

/// Decodes the batch of a whole frame `parse` accepted.
pub(crate) fn decode(frame: Bytes) -> Result<Vec<Message>, codec::DecodeError> {
    codec::decode_batch(&frame.slice(HEADER + 8..))
}
