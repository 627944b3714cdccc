//! Reading an object line by line with a bound on a line's length, so an object without newlines
//! (or with one huge line) costs at most `max` bytes of memory, never its size.

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

/// What [`read_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRead {
    /// Bytes taken from the stream, `\n` included (0 at the end of the stream).
    pub consumed: u64,
    /// Whether the line ended with `\n` (else the stream ended first).
    pub newline: bool,
    /// Whether the line, without its `\n` or `\r\n`, is longer than `max`: its bytes were read and
    /// dropped, and the buffer is empty.
    pub oversized: bool,
}

/// Reads one line into `buf` (cleared first), `\n` included, holding at most `max + 2` bytes: a
/// longer line is read to its end and dropped ([`LineRead::oversized`]).
///
/// # Errors
/// When the stream fails; what was read of the line is lost then, as with `read_until`.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut read = LineRead {
        consumed: 0,
        newline: false,
        oversized: false,
    };
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        let (n, newline) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if !read.oversized {
            // Room for the line and its `\r\n`.
            if buf.len() + n > max.saturating_add(2) {
                read.oversized = true;
                *buf = Vec::new();
            } else {
                buf.extend_from_slice(&available[..n]);
            }
        }
        reader.consume(n);
        read.consumed += n as u64;
        if newline {
            read.newline = true;
            break;
        }
    }
    if !read.oversized && content_len(buf) > max {
        read.oversized = true;
        *buf = Vec::new();
    }
    Ok(read)
}

/// Strips a line's `\n` or `\r\n`.
pub fn strip_newline(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

/// The length of a line without its `\n` or `\r\n`.
fn content_len(line: &[u8]) -> usize {
    match line {
        [rest @ .., b'\r', b'\n'] | [rest @ .., b'\n'] => rest.len(),
        _ => line.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize, capacity: usize) -> Vec<(Vec<u8>, LineRead)> {
        let mut reader = tokio::io::BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let read = read_line(&mut reader, &mut buf, max).await.unwrap();
            if read.consumed == 0 {
                return out;
            }
            assert!(buf.capacity() <= 2 * (max + 2) + capacity, "{}", buf.capacity());
            out.push((buf, read));
        }
    }

    #[tokio::test]
    async fn lines_up_to_max_pass_and_longer_ones_are_dropped_whole() {
        let input = b"abcd\nabcde\r\nabcdefgh\nab\r\nx".to_vec();
        let got = lines(&input, 5, 3).await;
        let summary: Vec<(&[u8], u64, bool, bool)> = got
            .iter()
            .map(|(b, r)| (&b[..], r.consumed, r.newline, r.oversized))
            .collect();
        assert_eq!(
            summary,
            [
                (&b"abcd\n"[..], 5, true, false),
                (&b"abcde\r\n"[..], 7, true, false),
                (&b""[..], 9, true, true),
                (&b"ab\r\n"[..], 4, true, false),
                (&b"x"[..], 1, false, false),
            ]
        );
        assert_eq!(
            got.iter().map(|(_, r)| r.consumed).sum::<u64>(),
            input.len() as u64,
            "every byte is accounted for"
        );
    }

    #[tokio::test]
    async fn a_long_tail_without_newline_is_dropped_without_being_held() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1 << 20));
        let got = lines(&input, 1024, 4096).await;
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1].1,
            LineRead {
                consumed: 1 << 20,
                newline: false,
                oversized: true
            }
        );
        // Exactly `max` bytes plus `\r\n` is a whole line.
        let exact = [vec![b'y'; 1024], b"\r\n".to_vec()].concat();
        let got = lines(&exact, 1024, 7).await;
        assert!(!got[0].1.oversized);
        let mut line = got[0].0.clone();
        strip_newline(&mut line);
        assert_eq!(line.len(), 1024);
    }
}
