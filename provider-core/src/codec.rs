//! A binary form of [`Message`] batches, for what the engine or a connector keeps on disk.
//!
//! Each message is its key (a flag byte, then the bytes), payload, headers, timestamp (a flag byte,
//! then the value) and origin; every length and number is a little-endian `u64`. A batch is its
//! message count followed by its messages. This is the record layout of `provider-s3`'s spool
//! batch files, so both can share one reader.

use bytes::Bytes;

use crate::Message;

/// Bytes that are not an encoded batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends inside a message.
    #[error("the batch ends early")]
    Truncated,
    /// A header name or an origin is not UTF-8.
    #[error("a header name or origin is not UTF-8")]
    NotUtf8,
    /// Bytes are left after the last message.
    #[error("{0} bytes after the last message")]
    Trailing(usize),
}

/// Appends `batch` in its binary form to `out`.
pub fn encode_batch(batch: &[Message], out: &mut Vec<u8>) {
    put_u64(out, batch.len() as u64);
    for message in batch {
        encode_message(message, out);
    }
}

/// The size of `batch` in its binary form.
#[must_use]
pub fn encoded_len(batch: &[Message]) -> usize {
    8 + batch
        .iter()
        .map(|m| {
            1 + m.key.as_ref().map_or(0, |k| 8 + k.len())
                + 8
                + m.payload.len()
                + 8
                + m.headers.iter().map(|(n, v)| 16 + n.len() + v.len()).sum::<usize>()
                + 1
                + m.timestamp_ms.map_or(0, |_| 8)
                + 8
                + m.origin.len()
        })
        .sum::<usize>()
}

/// Appends one message in its binary form to `out`.
pub fn encode_message(m: &Message, out: &mut Vec<u8>) {
    match &m.key {
        Some(key) => {
            out.push(1);
            put_bytes(out, key);
        }
        None => out.push(0),
    }
    put_bytes(out, &m.payload);
    put_u64(out, m.headers.len() as u64);
    for (name, value) in &m.headers {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value);
    }
    match m.timestamp_ms {
        Some(ts) => {
            out.push(1);
            put_u64(out, ts);
        }
        None => out.push(0),
    }
    put_bytes(out, m.origin.as_bytes());
}

/// Decodes a whole batch written by [`encode_batch`]. Payloads, keys and header values share
/// `input`'s buffer.
///
/// # Errors
/// When `input` is not exactly one encoded batch.
pub fn decode_batch(input: &Bytes) -> Result<Vec<Message>, DecodeError> {
    let mut reader = Reader { input, at: 0 };
    let count = reader.u64()?;
    // Each message takes at least 26 bytes: no count can promise more messages than that.
    let room = (input.len() / 26) as u64;
    let mut batch = Vec::with_capacity(usize::try_from(count.min(room)).unwrap_or(0));
    for _ in 0..count {
        batch.push(reader.message()?);
    }
    match input.len() - reader.at {
        0 => Ok(batch),
        left => Err(DecodeError::Trailing(left)),
    }
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    input: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.input.len());
        let end = end.ok_or(DecodeError::Truncated)?;
        let bytes = self.input.slice(self.at..end);
        self.at = end;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        let mut buf = [0; 8];
        buf.copy_from_slice(&bytes);
        Ok(u64::from_le_bytes(buf))
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        Ok(self.take(1)?[0] == 1)
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.u64()?).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }

    fn message(&mut self) -> Result<Message, DecodeError> {
        let key = if self.flag()? { Some(self.bytes()?) } else { None };
        let payload = self.bytes()?;
        let headers = (0..self.u64()?)
            .map(|_| Ok((self.string()?, self.bytes()?)))
            .collect::<Result<_, DecodeError>>()?;
        let timestamp_ms = if self.flag()? { Some(self.u64()?) } else { None };
        Ok(Message {
            key,
            payload,
            headers,
            timestamp_ms,
            origin: self.string()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Message> {
        let mut full = Message::new((0..=255).collect::<Vec<u8>>(), "kafka:orders/3@17");
        full.key = Some(Bytes::from_static(b"k"));
        full.headers = vec![("h".into(), Bytes::from_static(b"v")), ("e".into(), Bytes::new())];
        full.timestamp_ms = Some(1_700_000_000_000);
        vec![
            full,
            Message::new(Bytes::new(), ""),
            Message::new(&b"x"[..], "mqtt:t@1"),
        ]
    }

    #[test]
    fn a_batch_round_trips_and_its_length_is_known() {
        let batch = sample();
        let mut out = Vec::new();
        encode_batch(&batch, &mut out);
        assert_eq!(out.len(), encoded_len(&batch));
        assert_eq!(decode_batch(&Bytes::from(out)).unwrap(), batch);
    }

    #[test]
    fn a_cut_or_padded_batch_is_refused() {
        let mut out = Vec::new();
        encode_batch(&sample(), &mut out);
        for cut in [0, 7, 8, out.len() - 1] {
            assert_eq!(
                decode_batch(&Bytes::copy_from_slice(&out[..cut])),
                Err(DecodeError::Truncated),
                "cut at {cut}"
            );
        }
        out.push(0);
        assert_eq!(decode_batch(&Bytes::from(out)), Err(DecodeError::Trailing(1)));
        // A count promising more than the input can hold does not allocate for it.
        let mut huge = Vec::new();
        put_u64(&mut huge, u64::MAX);
        assert_eq!(decode_batch(&Bytes::from(huge)), Err(DecodeError::Truncated));
    }
}
