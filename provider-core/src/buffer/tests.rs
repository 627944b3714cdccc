use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn batch(name: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("{name}-{i}").into_bytes(), format!("test:{name}@{i}")))
        .collect()
}

/// The framed size of `batch(name, n)`.
fn frame_len(name: &str, n: usize) -> u64 {
    frame::encode(&batch(name, n), 0).map_or(0, |f| f.bytes.len() as u64)
}

fn open(dir: &Path, options: &BufferOptions) -> (DiskBuffer, Recovered, Arc<LinkMetrics>) {
    let metrics = Arc::new(LinkMetrics::default());
    let (buffer, recovered) = DiskBuffer::open(dir, options, Arc::clone(&metrics)).expect("opens");
    (buffer, recovered, metrics)
}

/// Every batch left to drain, draining them as it goes.
fn drain_all(buffer: &DiskBuffer) -> Vec<Vec<Message>> {
    let mut out = Vec::new();
    while let Some(pending) = buffer.oldest().expect("reads") {
        buffer.drained(pending.position).expect("drains");
        out.push(pending.batch);
    }
    out
}

/// The batches left to drain, without draining them (reopens the log to read them).
fn replay(dir: &Path, options: &BufferOptions) -> (Vec<Vec<Message>>, Recovered) {
    let (buffer, recovered, _) = open(dir, options);
    let mut out = Vec::new();
    // Read by draining a copy of the directory, so that `dir` keeps its drained position.
    let copy = tempfile::tempdir().expect("tempdir");
    drop(buffer);
    for entry in fs::read_dir(dir).expect("lists") {
        let path = entry.expect("entry").path();
        fs::copy(&path, copy.path().join(path.file_name().expect("name"))).expect("copies");
    }
    let (buffer, _, _) = open(copy.path(), options);
    out.extend(drain_all(&buffer));
    (out, recovered)
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let numbers = segment::list(dir).expect("lists");
    segment::path(dir, *numbers.last().expect("a segment"))
}

/// The last segment that holds any bytes.
fn last_written_segment(dir: &Path) -> std::path::PathBuf {
    let numbers = segment::list(dir).expect("lists");
    numbers
        .iter()
        .rev()
        .map(|n| segment::path(dir, *n))
        .find(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0) > 0)
        .expect("a written segment")
}

fn options(dir: &Path) -> BufferOptions {
    BufferOptions::new(dir, 1 << 20)
}

#[test]
fn batches_round_trip_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let (buffer, recovered, metrics) = open(dir.path(), &opts);
    assert_eq!(recovered, Recovered::default());
    for name in ["a", "b", "c"] {
        buffer.append(&batch(name, 3)).unwrap();
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.buffered_records, 9);
    assert_eq!(snapshot.buffered_bytes, 3 * frame_len("a", 3));
    drop(buffer);

    let (buffer, recovered, metrics) = open(dir.path(), &opts);
    assert_eq!((recovered.batches, recovered.records), (3, 9));
    assert_eq!(metrics.snapshot().buffered_records, 9);
    assert_eq!(drain_all(&buffer), vec![batch("a", 3), batch("b", 3), batch("c", 3)]);
    let snapshot = metrics.snapshot();
    assert_eq!((snapshot.buffered_records, snapshot.buffered_bytes), (0, 0));
    assert_eq!(snapshot.buffer_drained, 9);
}

#[test]
fn one_fsync_per_appended_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (buffer, _, metrics) = open(dir.path(), &options(dir.path()));
    let before = metrics.fsyncs.load(Relaxed);
    for i in 0..10 {
        buffer.append(&batch(&format!("b{i}"), 5)).unwrap();
    }
    assert_eq!(metrics.fsyncs.load(Relaxed) - before, 10);
}

#[test]
fn a_torn_tail_is_cut_and_everything_before_it_is_replayed() {
    let opts_for = options;
    for tail in ["half a frame", "garbage", "a last frame with a bad checksum"] {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts_for(dir.path());
        let (buffer, _, _) = open(dir.path(), &opts);
        for name in ["a", "b", "c"] {
            buffer.append(&batch(name, 2)).unwrap();
        }
        drop(buffer);
        let segment = last_written_segment(dir.path());
        let whole = fs::metadata(&segment).unwrap().len();
        let frame = frame::encode(&batch("d", 2), 1).unwrap().bytes;
        let torn: Vec<u8> = match tail {
            "half a frame" => frame[..frame.len() / 2].to_vec(),
            "garbage" => vec![0xAB; 37],
            _ => {
                let mut bad = frame.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0xFF;
                bad
            }
        };
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(&torn)
            .unwrap();

        let (replayed, recovered) = replay(dir.path(), &opts);
        assert_eq!(replayed, vec![batch("a", 2), batch("b", 2), batch("c", 2)], "{tail}");
        assert_eq!(recovered.torn_bytes, torn.len() as u64, "{tail}");
        assert_eq!(fs::metadata(&segment).unwrap().len(), whole, "{tail}: the tail was cut");

        // The log goes on after the cut.
        let (buffer, _, _) = open(dir.path(), &opts);
        buffer.append(&batch("e", 2)).unwrap();
        drop(buffer);
        let (replayed, recovered) = replay(dir.path(), &opts);
        assert_eq!(replayed.len(), 4, "{tail}");
        assert_eq!(replayed[3], batch("e", 2), "{tail}");
        assert_eq!(recovered.torn_bytes, 0, "{tail}");
    }
}

#[test]
fn a_corrupt_frame_in_the_middle_is_skipped_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let (buffer, _, _) = open(dir.path(), &opts);
    for name in ["a", "b", "c"] {
        buffer.append(&batch(name, 2)).unwrap();
    }
    drop(buffer);
    let segment = last_written_segment(dir.path());
    let mut data = fs::read(&segment).unwrap();
    let second = usize::try_from(frame_len("a", 2)).unwrap();
    data[second + frame::HEADER + 12] ^= 0x01;
    fs::write(&segment, &data).unwrap();

    let (replayed, recovered) = replay(dir.path(), &opts);
    assert_eq!(replayed, vec![batch("a", 2), batch("c", 2)]);
    assert_eq!(recovered.corrupt_frames, 1);
    assert_eq!(recovered.torn_bytes, 0);
}

#[test]
fn segments_rotate_and_drained_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BufferOptions {
        segment_bytes: 2 * frame_len("s0", 4),
        ..options(dir.path())
    };
    let (buffer, _, _) = open(dir.path(), &opts);
    for i in 0..10 {
        buffer.append(&batch(&format!("s{i}"), 4)).unwrap();
    }
    let segments = segment::list(dir.path()).unwrap().len();
    assert!(segments >= 5, "{segments} segments for 10 batches of half a segment");
    for i in 0..7 {
        let pending = buffer.oldest().unwrap().unwrap();
        assert_eq!(pending.batch, batch(&format!("s{i}"), 4));
        buffer.drained(pending.position).unwrap();
    }
    let left = segment::list(dir.path()).unwrap().len();
    assert!(left <= 3, "{left} segments left for 3 batches");
    drain_all(&buffer);
    assert_eq!(
        segment::list(dir.path()).unwrap().len(),
        1,
        "only the one being appended to"
    );
    assert_eq!(last_segment(dir.path()), last_written_segment(dir.path()));
}

#[test]
fn the_drained_position_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let (buffer, _, _) = open(dir.path(), &opts);
    for i in 0..5 {
        buffer.append(&batch(&format!("d{i}"), 1)).unwrap();
    }
    for _ in 0..3 {
        let pending = buffer.oldest().unwrap().unwrap();
        buffer.drained(pending.position).unwrap();
    }
    // Fewer than a group: closing the log writes the position.
    buffer.close();
    drop(buffer);
    let (replayed, recovered) = replay(dir.path(), &opts);
    assert_eq!(recovered.batches, 2);
    assert_eq!(replayed, vec![batch("d3", 1), batch("d4", 1)]);

    // Fully drained, then reopened: nothing comes back, and new batches still do.
    let (buffer, _, _) = open(dir.path(), &opts);
    drain_all(&buffer);
    buffer.close();
    drop(buffer);
    let (buffer, recovered, _) = open(dir.path(), &opts);
    assert_eq!(recovered.batches, 0);
    buffer.append(&batch("new", 1)).unwrap();
    drop(buffer);
    assert_eq!(replay(dir.path(), &opts).0, vec![batch("new", 1)]);
}

#[test]
fn drop_oldest_drops_exactly_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BufferOptions {
        full: FullPolicy::DropOldest,
        ..BufferOptions::new(dir.path(), 3 * frame_len("o0", 2))
    };
    let (buffer, _, metrics) = open(dir.path(), &opts);
    for i in 0..5 {
        buffer.append(&batch(&format!("o{i}"), 2)).unwrap();
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.buffer_dropped, 4, "two batches of two records");
    assert_eq!(snapshot.buffered_records, 6);
    let newest = vec![batch("o2", 2), batch("o3", 2), batch("o4", 2)];
    drop(buffer);
    assert_eq!(replay(dir.path(), &opts).0, newest, "the drops are durable at once");
    let (buffer, _, _) = open(dir.path(), &opts);
    assert_eq!(drain_all(&buffer), newest);
}

/// Options whose drained position is written every `batches` drained batches, and never for
/// time's sake.
fn grouped(dir: &Path, batches: usize) -> BufferOptions {
    BufferOptions {
        sync_drained: SyncDrained {
            batches,
            interval: Duration::from_secs(3600),
        },
        ..options(dir)
    }
}

/// Drains the oldest batch, as a drainer does.
fn drain_one(buffer: &DiskBuffer) -> Vec<Message> {
    let pending = buffer.oldest().unwrap().expect("a batch to drain");
    buffer.drained(pending.position).unwrap();
    pending.batch
}

#[test]
fn the_drained_position_is_written_once_per_group_and_a_crash_drains_at_most_one_group_again() {
    let dir = tempfile::tempdir().unwrap();
    let opts = grouped(dir.path(), 4);
    let (buffer, _, metrics) = open(dir.path(), &opts);
    let all: Vec<_> = (0..10).map(|i| batch(&format!("g{i}"), 2)).collect();
    for b in &all {
        buffer.append(b).unwrap();
    }
    let before = metrics.fsyncs.load(Relaxed);
    for b in &all {
        assert_eq!(&drain_one(&buffer), b);
    }
    assert_eq!(
        metrics.fsyncs.load(Relaxed) - before,
        2,
        "one position write after the 4th and the 8th of 10 drained batches"
    );
    assert!(buffer.drained_unsynced());
    // kill -9: the log is dropped without closing. The last two drained batches come back
    // (fewer than a group); the eight before them do not, and nothing is lost.
    drop(buffer);
    let (replayed, recovered) = replay(dir.path(), &opts);
    assert_eq!(replayed, all[8..].to_vec());
    assert_eq!(recovered.batches, 2);

    // A position written every batch (a zero interval) leaves nothing to drain again.
    let dir = tempfile::tempdir().unwrap();
    let opts = BufferOptions {
        sync_drained: SyncDrained {
            batches: 64,
            interval: Duration::ZERO,
        },
        ..options(dir.path())
    };
    let (buffer, _, metrics) = open(dir.path(), &opts);
    for b in &all {
        buffer.append(b).unwrap();
    }
    let before = metrics.fsyncs.load(Relaxed);
    for _ in 0..3 {
        drain_one(&buffer);
    }
    assert_eq!(
        metrics.fsyncs.load(Relaxed) - before,
        3,
        "the interval had passed each time"
    );
    assert!(!buffer.drained_unsynced());
    drop(buffer);
    assert_eq!(replay(dir.path(), &opts).0, all[3..].to_vec());
}

#[test]
fn sync_drained_writes_a_partial_group_and_segments_go_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BufferOptions {
        segment_bytes: frame_len("p0", 3),
        ..grouped(dir.path(), 1000)
    };
    let (buffer, _, metrics) = open(dir.path(), &opts);
    for i in 0..6 {
        buffer.append(&batch(&format!("p{i}"), 3)).unwrap();
    }
    for _ in 0..4 {
        drain_one(&buffer);
    }
    // Drained segments are deleted at once, before the position says so: disk stays bounded.
    assert!(segment::list(dir.path()).unwrap().len() <= 3);
    let before = metrics.fsyncs.load(Relaxed);
    buffer.sync_drained().unwrap();
    buffer.sync_drained().unwrap();
    assert_eq!(metrics.fsyncs.load(Relaxed) - before, 1, "once, then nothing to write");
    drop(buffer);
    assert_eq!(replay(dir.path(), &opts).0, vec![batch("p4", 3), batch("p5", 3)]);
}

#[test]
fn block_refuses_what_does_not_fit_until_room_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BufferOptions::new(dir.path(), 2 * frame_len("k0", 2));
    let (buffer, _, metrics) = open(dir.path(), &opts);
    buffer.append(&batch("k0", 2)).unwrap();
    buffer.append(&batch("k1", 2)).unwrap();
    let err = buffer.append(&batch("k2", 2)).unwrap_err();
    assert!(matches!(err, BufferError::Full { .. }), "{err}");
    assert_eq!(metrics.snapshot().buffer_dropped, 0);
    let err = buffer.append(&batch("big", 100)).unwrap_err();
    assert!(matches!(err, BufferError::TooLarge { .. }), "{err}");

    let pending = buffer.oldest().unwrap().unwrap();
    buffer.drained(pending.position).unwrap();
    buffer.append(&batch("k2", 2)).unwrap();
    assert_eq!(drain_all(&buffer), vec![batch("k1", 2), batch("k2", 2)]);
}

#[test]
fn batches_older_than_max_age_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = BufferOptions {
        max_age: Some(Duration::from_secs(60)),
        ..options(dir.path())
    };
    let metrics = Arc::new(LinkMetrics::default());
    let (mut log, _) = log::Log::open(dir.path(), &opts, Arc::clone(&metrics)).unwrap();
    let now = crate::time::unix_ms();
    log.append(&batch("old", 3), now - 120_000).unwrap();
    log.append(&batch("older", 2), now - 120_000).unwrap();
    assert!(metrics.snapshot().buffer_oldest_age_ms >= 120_000);
    // Draining expires them first.
    assert_eq!(log.oldest(now).unwrap(), None);
    assert_eq!(metrics.snapshot().buffer_dropped, 5);
    // So does appending.
    log.append(&batch("stale", 1), now - 120_000).unwrap();
    log.append(&batch("new", 1), now).unwrap();
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.buffer_dropped, 6);
    assert!(snapshot.buffer_oldest_age_ms < 60_000);
    assert_eq!(log.oldest(now).unwrap().map(|p| p.batch), Some(batch("new", 1)));
}

#[test]
fn a_log_is_opened_once() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let (buffer, _, _) = open(dir.path(), &opts);
    let err = DiskBuffer::open(dir.path(), &opts, Arc::default()).unwrap_err();
    assert!(matches!(err, BufferError::Locked(_)), "{err}");
    buffer.close();
    assert!(matches!(buffer.append(&batch("x", 1)), Err(BufferError::Closed)));
    DiskBuffer::open(dir.path(), &opts, Arc::default()).expect("the closed log opens again");
}

#[test]
fn link_keys_read_from_config() {
    use std::collections::HashMap;
    let read = |pairs: &[(&str, &str)]| {
        let values: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        BufferOptions::from_config(&ConfigReader::new(&values, &HashMap::new()))
    };
    assert_eq!(read(&[]), Ok(None));
    assert_eq!(read(&[("buffer", "none"), ("buffer_dir", "x")]), Ok(None));
    assert_eq!(read(&[("buffer", "disk")]).unwrap_err().key(), "buffer_dir");
    assert_eq!(read(&[("buffer", "tape")]).unwrap_err().key(), "buffer");
    let full = read(&[
        ("buffer", "disk"),
        ("buffer_dir", "/var/lib/sluice"),
        ("buffer_max_bytes", "64MiB"),
        ("buffer_max_age", "1h"),
        ("buffer_full", "drop_oldest"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(full.max_bytes, 64 << 20);
    assert_eq!(full.max_age, Some(Duration::from_secs(3600)));
    assert_eq!(full.full, FullPolicy::DropOldest);
    assert_eq!(full.segment_bytes, 8 << 20);
    let defaults = read(&[("buffer", "disk"), ("buffer_dir", "d")]).unwrap().unwrap();
    assert_eq!(
        (defaults.max_bytes, defaults.full, defaults.max_age),
        (DEFAULT_MAX_BYTES, FullPolicy::Block, None)
    );
    for (key, value) in [
        ("buffer_full", "panic"),
        ("buffer_max_age", "soon"),
        ("buffer_max_bytes", "0"),
    ] {
        let err = read(&[("buffer", "disk"), ("buffer_dir", "d"), (key, value)]).unwrap_err();
        assert_eq!(err.key(), key);
    }
}

#[test]
fn a_run_joins_consecutive_batches_within_the_limits_and_drains_them_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (buffer, _, metrics) = open(dir.path(), &options(dir.path()));
    for i in 0..5 {
        buffer.append(&batch(&format!("j{i}"), 3)).unwrap();
    }
    let run = buffer.oldest_run(7, u64::MAX).unwrap().unwrap();
    assert_eq!(
        run.batch,
        [batch("j0", 3), batch("j1", 3)].concat(),
        "two batches fit 7 records"
    );
    buffer.drained(run.position).unwrap();
    assert_eq!(metrics.snapshot().buffered_records, 9);
    // A batch larger than the limit still comes alone; the byte limit counts too.
    assert_eq!(buffer.oldest_run(1, u64::MAX).unwrap().unwrap().batch, batch("j2", 3));
    let one = batch("j2", 3).iter().map(crate::source::encoded_len).sum::<u64>();
    assert_eq!(
        buffer.oldest_run(100, one * 2 - 1).unwrap().unwrap().batch,
        batch("j2", 3)
    );
    let rest = buffer.oldest_run(100, u64::MAX).unwrap().unwrap();
    assert_eq!(rest.batch, [batch("j2", 3), batch("j3", 3), batch("j4", 3)].concat());
    buffer.drained(rest.position).unwrap();
    assert!(buffer.is_empty());
}
