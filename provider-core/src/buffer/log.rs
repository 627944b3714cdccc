//! The log itself, single-threaded: its segments, the index of batches not yet drained, and
//! the counters it keeps. [`super::DiskBuffer`] shares it between a link's writes and its drainer.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{error, warn};

use super::frame::{self, Parsed};
use super::{checkpoint, segment, BufferError, BufferOptions, FullPolicy, Pending, Position, Recovered};
use crate::metrics::LinkMetrics;

/// A batch not yet drained.
#[derive(Debug, Clone, Copy)]
struct Entry {
    position: Position,
    frame_len: u64,
    appended_ms: u64,
    records: usize,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    number: u64,
    file: File,
    len: u64,
}

#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    options: BufferOptions,
    metrics: Arc<LinkMetrics>,
    /// Batches not yet drained, oldest first.
    entries: VecDeque<Entry>,
    /// Their framed bytes.
    bytes: u64,
    /// Their records.
    records: u64,
    /// Segment numbers on disk, oldest first; the last is `active`.
    segments: VecDeque<u64>,
    active: Active,
    /// The last segment read from, kept open.
    reader: Option<(u64, File)>,
    /// Batches drained since the drained position was last written.
    unsynced: usize,
    /// When the drained position was last written.
    synced_at: Instant,
    /// Held for as long as the log is open.
    _lock: File,
}

impl Log {
    pub(crate) fn open(
        dir: &Path,
        options: &BufferOptions,
        metrics: Arc<LinkMetrics>,
    ) -> Result<(Self, Recovered), BufferError> {
        fs::create_dir_all(dir).map_err(BufferError::io("creating", dir))?;
        let lock = lock(dir)?;
        let drained = checkpoint::read(dir).map_err(BufferError::io("reading the drained position in", dir))?;
        let drained = drained.unwrap_or(Position { segment: 0, offset: 0 });
        let mut recovered = Recovered::default();
        let mut entries = VecDeque::new();
        let mut segments = VecDeque::new();
        let numbers = segment::list(dir).map_err(BufferError::io("listing", dir))?;
        let last = numbers.last().copied().unwrap_or(0);
        for number in numbers {
            let path = segment::path(dir, number);
            let data = fs::read(&path).map_err(BufferError::io("reading", &path))?;
            let scan = segment::scan(&data);
            drop(data);
            if scan.valid_len < scan.file_len {
                warn!(path = %path.display(), at = scan.valid_len, bytes = scan.file_len - scan.valid_len, "cutting the torn tail of a buffer segment");
                cut(&path, scan.valid_len)?;
                LinkMetrics::add(&metrics.fsyncs, 1);
                recovered.torn_bytes += scan.file_len - scan.valid_len;
            }
            for offset in &scan.corrupt {
                error!(path = %path.display(), offset, "skipping a buffered batch whose checksum fails: its records are lost");
            }
            recovered.corrupt_frames += scan.corrupt.len();
            let before = entries.len();
            entries.extend(
                scan.found
                    .iter()
                    .map(|f| Entry {
                        position: Position {
                            segment: number,
                            offset: f.offset,
                        },
                        frame_len: f.frame_len,
                        appended_ms: f.appended_ms,
                        records: f.records,
                    })
                    .filter(|e| e.position >= drained),
            );
            if entries.len() == before {
                fs::remove_file(&path).map_err(BufferError::io("removing", &path))?;
            } else {
                segments.push_back(number);
            }
        }
        // Numbers only grow, and past the drained position, so that nothing new looks drained.
        let number = last.max(drained.segment) + 1;
        let active = create_segment(dir, number)?;
        LinkMetrics::add(&metrics.fsyncs, 1);
        segments.push_back(number);
        recovered.batches = entries.len();
        recovered.records = entries.iter().map(|e| e.records as u64).sum();
        let log = Self {
            dir: dir.to_path_buf(),
            options: options.clone(),
            metrics,
            bytes: entries.iter().map(|e| e.frame_len).sum(),
            records: recovered.records,
            entries,
            segments,
            active,
            reader: None,
            unsynced: 0,
            synced_at: Instant::now(),
            _lock: lock,
        };
        log.publish();
        Ok((log, recovered))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn append(&mut self, batch: &[crate::Message], now_ms: u64) -> Result<(), BufferError> {
        let max = self.options.max_bytes;
        let encoded = frame::encode(batch, now_ms).ok_or_else(|| BufferError::TooLarge {
            needed: (frame::HEADER + 8 + crate::codec::encoded_len(batch)) as u64,
            max,
        })?;
        let needed = encoded.bytes.len() as u64;
        if needed > max {
            return Err(BufferError::TooLarge { needed, max });
        }
        self.expire(now_ms)?;
        if self.bytes + needed > max {
            match self.options.full {
                FullPolicy::Block => {
                    return Err(BufferError::Full {
                        buffered: self.bytes,
                        max,
                        needed,
                    })
                }
                FullPolicy::DropOldest => {
                    let mut dropped = Vec::new();
                    while self.bytes + needed > max {
                        let Some(entry) = self.entries.pop_front() else { break };
                        self.forget(entry);
                        dropped.push(entry);
                    }
                    self.report_dropped(&dropped, "the buffer is full (buffer_full = drop_oldest)");
                    self.advance()?;
                }
            }
        }
        if self.active.len >= self.options.segment_bytes {
            self.rotate()?;
        }
        let path = segment::path(&self.dir, self.active.number);
        let written = self
            .active
            .file
            .write_all(&encoded.bytes)
            .and_then(|()| self.active.file.sync_data());
        if let Err(err) = written {
            // Leave no partial frame for the next append to follow; a new segment if even that fails.
            if self.active.file.set_len(self.active.len).is_err() {
                self.active.len = u64::MAX;
            }
            return Err(BufferError::io("appending to", &path)(err));
        }
        LinkMetrics::add(&self.metrics.fsyncs, 1);
        self.entries.push_back(Entry {
            position: Position {
                segment: self.active.number,
                offset: self.active.len,
            },
            frame_len: needed,
            appended_ms: now_ms,
            records: encoded.records,
        });
        self.active.len += needed;
        self.bytes += needed;
        self.records += encoded.records as u64;
        self.publish();
        Ok(())
    }

    pub(crate) fn oldest(&mut self, now_ms: u64) -> Result<Option<Pending>, BufferError> {
        self.expire(now_ms)?;
        while let Some(entry) = self.entries.front().copied() {
            match self.read(entry)? {
                Some(batch) => {
                    return Ok(Some(Pending {
                        position: entry.position,
                        batch,
                    }))
                }
                None => {
                    error!(dir = %self.dir.display(), segment = entry.position.segment, offset = entry.position.offset, records = entry.records, "a buffered batch no longer reads back: dropping it");
                    self.entries.pop_front();
                    self.forget(entry);
                    LinkMetrics::add(&self.metrics.buffer_dropped, entry.records);
                    self.advance()?;
                }
            }
        }
        Ok(None)
    }

    /// The oldest batch not yet drained together with the batches after it, as long as
    /// `fits(records so far, next batch)` holds: one write for a run of small batches. The
    /// position is the last batch's.
    pub(crate) fn oldest_run(
        &mut self,
        now_ms: u64,
        fits: &dyn Fn(&[crate::Message], &[crate::Message]) -> bool,
    ) -> Result<Option<Pending>, BufferError> {
        let Some(mut run) = self.oldest(now_ms)? else {
            return Ok(None);
        };
        let next: Vec<Entry> = self
            .entries
            .iter()
            .skip_while(|e| e.position <= run.position)
            .copied()
            .collect();
        for entry in next {
            match self.read(entry)? {
                Some(batch) if fits(&run.batch, &batch) => {
                    run.batch.extend(batch);
                    run.position = entry.position;
                }
                _ => break,
            }
        }
        Ok(Some(run))
    }

    pub(crate) fn drained(&mut self, position: Position) -> Result<(), BufferError> {
        let mut records = 0;
        let mut batches = 0;
        while let Some(entry) = self.entries.front().copied().filter(|e| e.position <= position) {
            self.entries.pop_front();
            self.forget(entry);
            records += entry.records;
            batches += 1;
        }
        if batches == 0 {
            return Ok(());
        }
        LinkMetrics::add(&self.metrics.buffer_drained, records);
        self.unsynced += batches;
        let every = self.options.sync_drained;
        if self.unsynced >= every.batches.max(1) || self.synced_at.elapsed() >= every.interval {
            self.advance()
        } else {
            self.release()
        }
    }

    /// Writes the drained position if batches were drained since it was last written.
    pub(crate) fn sync_drained(&mut self) -> Result<(), BufferError> {
        if self.unsynced > 0 {
            self.advance()?;
        }
        Ok(())
    }

    /// Whether batches were drained since the drained position was last written.
    pub(crate) fn drained_unsynced(&self) -> bool {
        self.unsynced > 0
    }

    /// Takes `entry`, already removed from `entries`, off the totals.
    fn forget(&mut self, entry: Entry) {
        self.bytes -= entry.frame_len;
        self.records -= entry.records as u64;
    }

    /// Drops batches older than `max_age`.
    fn expire(&mut self, now_ms: u64) -> Result<(), BufferError> {
        let Some(max_age) = self.options.max_age else {
            return Ok(());
        };
        let max_age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut dropped = Vec::new();
        while let Some(entry) = self
            .entries
            .front()
            .copied()
            .filter(|e| now_ms.saturating_sub(e.appended_ms) > max_age)
        {
            self.entries.pop_front();
            self.forget(entry);
            dropped.push(entry);
        }
        if !dropped.is_empty() {
            self.report_dropped(&dropped, "older than buffer_max_age");
            self.advance()?;
        }
        Ok(())
    }

    /// Counts and logs dropped batches, with their records' origins.
    fn report_dropped(&mut self, dropped: &[Entry], why: &str) {
        for entry in dropped {
            let origins: Vec<String> = match self.read(*entry) {
                Ok(Some(batch)) => batch.into_iter().map(|m| m.origin).collect(),
                _ => vec!["(unreadable)".into()],
            };
            warn!(dir = %self.dir.display(), records = entry.records, ?origins, reason = why, "dropped buffered records");
            LinkMetrics::add(&self.metrics.buffer_dropped, entry.records);
        }
    }

    /// Where the oldest batch not yet drained starts (the end of the log when there is none).
    fn front(&self) -> Position {
        self.entries.front().map_or(
            Position {
                segment: self.active.number,
                offset: self.active.len,
            },
            |e| e.position,
        )
    }

    /// Makes the drained position durable and deletes segments with nothing left to drain.
    fn advance(&mut self) -> Result<(), BufferError> {
        checkpoint::write(&self.dir, self.front())
            .map_err(BufferError::io("writing the drained position in", &self.dir))?;
        LinkMetrics::add(&self.metrics.fsyncs, 1);
        self.unsynced = 0;
        self.synced_at = Instant::now();
        self.release()
    }

    /// Deletes segments with nothing left to drain. Safe before the drained position says so:
    /// after a crash, what a stale position points to in a deleted segment was drained.
    fn release(&mut self) -> Result<(), BufferError> {
        let position = self.front();
        while let Some(&number) = self.segments.front().filter(|&&n| n < position.segment) {
            let path = segment::path(&self.dir, number);
            if self.reader.as_ref().is_some_and(|(n, _)| *n == number) {
                self.reader = None;
            }
            fs::remove_file(&path).map_err(BufferError::io("removing", &path))?;
            self.segments.pop_front();
        }
        self.publish();
        Ok(())
    }

    /// Starts a new segment.
    fn rotate(&mut self) -> Result<(), BufferError> {
        let number = self.active.number + 1;
        self.active = create_segment(&self.dir, number)?;
        LinkMetrics::add(&self.metrics.fsyncs, 1);
        self.segments.push_back(number);
        if self.entries.is_empty() {
            self.advance()?;
        }
        Ok(())
    }

    /// Reads `entry`'s batch back; `None` when it no longer verifies.
    fn read(&mut self, entry: Entry) -> Result<Option<Vec<crate::Message>>, BufferError> {
        let Position { segment, offset } = entry.position;
        let path = segment::path(&self.dir, segment);
        if self.reader.as_ref().is_none_or(|(n, _)| *n != segment) {
            let file = File::open(&path).map_err(BufferError::io("opening", &path))?;
            self.reader = Some((segment, file));
        }
        let Some((_, file)) = self.reader.as_mut() else {
            return Ok(None);
        };
        let mut data = vec![0; usize::try_from(entry.frame_len).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut data))
            .map_err(BufferError::io("reading", &path))?;
        if !matches!(frame::parse(&data), Parsed::Record { .. }) {
            return Ok(None);
        }
        Ok(frame::decode(Bytes::from(data)).ok())
    }

    /// Publishes the gauges.
    fn publish(&self) {
        let m = &self.metrics;
        m.buffered_bytes.store(self.bytes, Relaxed);
        m.buffered_records.store(self.records, Relaxed);
        m.buffer_oldest_ms
            .store(self.entries.front().map_or(0, |e| e.appended_ms.max(1)), Relaxed);
    }
}

/// Creates segment `number`, durably (the file and its directory entry).
fn create_segment(dir: &Path, number: u64) -> Result<Active, BufferError> {
    let path = segment::path(dir, number);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(BufferError::io("creating", &path))?;
    let len = file.metadata().map_err(BufferError::io("reading", &path))?.len();
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BufferError::io("syncing", dir))?;
    Ok(Active { number, file, len })
}

/// Cuts `path` to `len` bytes, durably.
fn cut(path: &Path, len: u64) -> Result<(), BufferError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len).and_then(|()| f.sync_all()))
        .map_err(BufferError::io("cutting the torn tail of", path))
}

/// Takes the log's lock file, so that no other process opens the same log.
fn lock(dir: &Path) -> Result<File, BufferError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(BufferError::io("opening", &path))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: flock on a descriptor this function owns; it only takes an advisory lock.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !taken {
            return Err(BufferError::Locked(dir.to_path_buf()));
        }
    }
    Ok(file)
}
