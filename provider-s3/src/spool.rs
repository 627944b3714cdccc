//! The local spool of a sink link (`spool_dir`): a write is durable once its records are in an
//! fsynced file here, and the sink uploads spooled batches in the background, deleting each file
//! only once every object holding its records is complete. A restarted provider finds the files
//! a killed one left and uploads them first.
//!
//! One file per accepted write, `{spool_dir}/{component}/{link}/{seq:020}.batch`, written as
//! `.tmp`, fsynced, renamed, and the directory fsynced: a file with the final name is whole.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sluice_provider_core::{LinkKey, Message};

const MAGIC: &[u8; 8] = b"SLUICE1\n";

/// One link's spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    next: AtomicU64,
    bytes: AtomicU64,
    files: AtomicU64,
    max_bytes: u64,
}

impl Spool {
    /// Opens (creating) the link's directory under `root`; returns the spool and the batch files
    /// an earlier run left, oldest first. Half-written files are removed.
    ///
    /// # Errors
    /// When the directory cannot be created or read.
    pub fn open(root: &Path, link: &LinkKey, max_bytes: u64) -> io::Result<(Self, Vec<PathBuf>)> {
        let dir = root.join(segment(&link.component)).join(segment(&link.name));
        fs::create_dir_all(&dir)?;
        let mut left = Vec::new();
        let mut bytes = 0;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("batch") => {
                    bytes += fs::metadata(&path)?.len();
                    left.push(path);
                }
                Some("tmp") => fs::remove_file(&path)?,
                _ => {}
            }
        }
        left.sort();
        let next = left
            .last()
            .and_then(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
            .map_or(0, |n| n + 1);
        let spool = Self {
            dir,
            next: AtomicU64::new(next),
            bytes: AtomicU64::new(bytes),
            files: AtomicU64::new(left.len() as u64),
            max_bytes,
        };
        Ok((spool, left))
    }

    /// Whether the spooled files have reached `spool_max_bytes`.
    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// Bytes in the spool's files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Batch files in the spool (written and not yet removed).
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    /// The batch files now in the spool, oldest first (blocking I/O).
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn list(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "batch") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Writes `batch` to a new file and makes it durable (blocking I/O).
    ///
    /// # Errors
    /// When writing, syncing or renaming fails; nothing is left under the final name then.
    pub fn append(&self, batch: &[&Message]) -> io::Result<PathBuf> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{seq:020}.batch"));
        let tmp = path.with_extension("tmp");
        let result = (|| {
            let mut out = BufWriter::new(File::create(&tmp)?);
            out.write_all(MAGIC)?;
            write_u64(&mut out, batch.len() as u64)?;
            for message in batch {
                encode(&mut out, message)?;
            }
            let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            let size = file.metadata()?.len();
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()?;
            Ok(size)
        })();
        match result {
            Ok(size) => {
                self.bytes.fetch_add(size, Ordering::Relaxed);
                self.files.fetch_add(1, Ordering::Relaxed);
                Ok(path)
            }
            Err(err) => {
                let _ = fs::remove_file(&tmp);
                Err(err)
            }
        }
    }

    /// Deletes a batch file whose records are all in complete objects.
    ///
    /// # Errors
    /// When the file cannot be removed.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path)?;
        self.bytes.fetch_sub(size.min(self.bytes()), Ordering::Relaxed);
        self.files.fetch_sub(1.min(self.files()), Ordering::Relaxed);
        Ok(())
    }
}

/// Reads a batch file back (blocking I/O).
///
/// # Errors
/// When the file cannot be read or is not a spool batch.
pub fn read(path: &Path) -> io::Result<Vec<Message>> {
    let mut input = BufReader::new(File::open(path)?);
    let mut magic = [0; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a Sluice spool batch"));
    }
    let count = read_u64(&mut input)?;
    (0..count).map(|_| decode(&mut input)).collect()
}

/// A path segment for a component id or link name: what is not `[A-Za-z0-9._-]` becomes `_`.
fn segment(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("_{s}")
    } else {
        s
    }
}

fn write_u64(out: &mut impl Write, n: u64) -> io::Result<()> {
    out.write_all(&n.to_le_bytes())
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    write_u64(out, bytes.len() as u64)?;
    out.write_all(bytes)
}

fn encode(out: &mut impl Write, m: &Message) -> io::Result<()> {
    match &m.key {
        Some(key) => {
            out.write_all(&[1])?;
            write_bytes(out, key)?;
        }
        None => out.write_all(&[0])?,
    }
    write_bytes(out, &m.payload)?;
    write_u64(out, m.headers.len() as u64)?;
    for (name, value) in &m.headers {
        write_bytes(out, name.as_bytes())?;
        write_bytes(out, value)?;
    }
    match m.timestamp_ms {
        Some(ts) => {
            out.write_all(&[1])?;
            write_u64(out, ts)?;
        }
        None => out.write_all(&[0])?,
    }
    write_bytes(out, m.origin.as_bytes())
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut buf = [0; 8];
    input.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

fn read_flag(input: &mut impl Read) -> io::Result<bool> {
    let mut flag = [0; 1];
    input.read_exact(&mut flag)?;
    Ok(flag[0] == 1)
}

fn read_bytes(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let len = usize::try_from(read_u64(input)?).map_err(|_| io::ErrorKind::InvalidData)?;
    let mut bytes = Vec::new();
    input.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(bytes)
}

fn read_string(input: &mut impl Read) -> io::Result<String> {
    String::from_utf8(read_bytes(input)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn decode(input: &mut impl Read) -> io::Result<Message> {
    let key = if read_flag(input)? {
        Some(Bytes::from(read_bytes(input)?))
    } else {
        None
    };
    let payload = Bytes::from(read_bytes(input)?);
    let headers = (0..read_u64(input)?)
        .map(|_| Ok((read_string(input)?, Bytes::from(read_bytes(input)?))))
        .collect::<io::Result<_>>()?;
    let timestamp_ms = if read_flag(input)? {
        Some(read_u64(input)?)
    } else {
        None
    };
    Ok(Message {
        key,
        payload,
        headers,
        timestamp_ms,
        origin: read_string(input)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_survive_a_reopen() {
        let root = std::env::temp_dir().join(format!("sluice-spool-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let link = LinkKey::new("comp/onent", "default");
        let mut full = Message::new(b"payload".to_vec(), "test:a@1");
        full.key = Some(Bytes::from_static(b"key"));
        full.headers = vec![("h".into(), Bytes::from_static(b"v"))];
        full.timestamp_ms = Some(1_700_000_000_000);
        let bare = Message::new(Vec::new(), "test:a@2");

        let (spool, left) = Spool::open(&root, &link, 1 << 20).unwrap();
        assert!(left.is_empty());
        let first = spool.append(&[&full, &bare]).unwrap();
        let second = spool.append(&[&bare]).unwrap();
        assert_eq!(read(&first).unwrap(), vec![full.clone(), bare.clone()]);
        fs::write(first.with_extension("tmp"), b"half").unwrap();
        drop(spool);

        let (spool, left) = Spool::open(&root, &link, 1).unwrap();
        assert_eq!(
            left,
            vec![first.clone(), second.clone()],
            "oldest first, no half-written file"
        );
        assert!(spool.is_full());
        let third = spool.append(&[&full]).unwrap();
        assert!(third > second, "numbering continues after the files found");
        assert_eq!(spool.files(), 3);
        assert_eq!(spool.list().unwrap(), [first.clone(), second.clone(), third.clone()]);
        for path in [&first, &second, &third] {
            spool.remove(path).unwrap();
        }
        assert_eq!((spool.bytes(), spool.files()), (0, 0));
        fs::remove_dir_all(&root).unwrap();
    }
}
