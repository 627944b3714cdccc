//! Segment files: naming, listing, and the scan that recovers their records after a crash.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::frame::{self, Parsed};

const EXTENSION: &str = "seg";

/// The file of segment `number` in `dir`.
pub(crate) fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.{EXTENSION}"))
}

/// The numbers of the segments in `dir`, in order.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == EXTENSION) {
            if let Some(n) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()) {
                numbers.push(n);
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// A whole record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) offset: u64,
    pub(crate) frame_len: u64,
    pub(crate) appended_ms: u64,
    pub(crate) records: usize,
}

/// What a segment holds.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Its whole records, in order.
    pub(crate) found: Vec<Found>,
    /// Offsets of frames skipped because their checksum failed while a whole frame followed.
    pub(crate) corrupt: Vec<u64>,
    /// Where the readable data ends; what follows is a torn tail.
    pub(crate) valid_len: u64,
    /// The file's length.
    pub(crate) file_len: u64,
}

/// Reads every frame of `data`. A frame cut short, or a bad frame with no whole frame right
/// after it, ends the readable data: a torn tail. A bad frame followed by a whole one is skipped.
pub(crate) fn scan(data: &[u8]) -> Scan {
    let mut scan = Scan {
        file_len: data.len() as u64,
        ..Scan::default()
    };
    let mut at = 0usize;
    while at < data.len() {
        match frame::parse(&data[at..]) {
            Parsed::Record {
                frame_len,
                appended_ms,
                records,
            } => {
                scan.found.push(Found {
                    offset: at as u64,
                    frame_len,
                    appended_ms,
                    records,
                });
                at += usize::try_from(frame_len).unwrap_or(usize::MAX);
            }
            Parsed::Short => break,
            Parsed::Corrupt { frame_len } => {
                let next = usize::try_from(frame_len)
                    .ok()
                    .and_then(|len| at.checked_add(len))
                    .filter(|&next| next < data.len());
                match next {
                    Some(next) if matches!(frame::parse(&data[next..]), Parsed::Record { .. }) => {
                        scan.corrupt.push(at as u64);
                        at = next;
                    }
                    _ => break,
                }
            }
        }
    }
    scan.valid_len = at as u64;
    scan
}
