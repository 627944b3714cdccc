//! The drained position: where the oldest record not yet drained starts, in a small file
//! replaced atomically (written aside, fsynced, renamed over). A crash leaves the old or the new
//! position, both safe: the old one only replays a few drained batches again.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::Path;

use super::Position;

const FILE: &str = "drained";
const TMP: &str = "drained.tmp";

/// Reads the drained position; `None` when there is none or it does not verify.
pub(crate) fn read(dir: &Path) -> io::Result<Option<Position>> {
    let data = match fs::read(dir.join(FILE)) {
        Ok(data) => data,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let Some((body, crc)) = data.split_first_chunk::<16>() else {
        return Ok(None);
    };
    if crc != crc32fast::hash(body).to_le_bytes() {
        return Ok(None);
    }
    let (segment, offset) = body.split_at(8);
    let number = |b: &[u8]| {
        let mut n = [0; 8];
        n.copy_from_slice(b);
        u64::from_le_bytes(n)
    };
    Ok(Some(Position {
        segment: number(segment),
        offset: number(offset),
    }))
}

/// Replaces the drained position with `position` (one fsync).
pub(crate) fn write(dir: &Path, position: Position) -> io::Result<()> {
    let mut data = Vec::with_capacity(20);
    data.extend_from_slice(&position.segment.to_le_bytes());
    data.extend_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&data);
    data.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(&data)?;
    file.sync_data()?;
    fs::rename(tmp, dir.join(FILE))
}
