//! Throughput of a sink link with a disk buffer (`buffer = "disk"`: each batch fsynced in the
//! buffer before the write is answered, then drained into the sink) next to the same sink
//! without one, measured in the same run with the same writers. Prints a table; asserts nothing.
//!
//! `cargo run --release -p sluice-integration --bin bench-buffer`
//!
//! Both links write to one [`FileSink`]: every payload appended to a file in the bench's
//! temporary directory and flushed to the kernel per batch, not fsynced (a cheap, real sink, so
//! that what the table shows is the buffer's cost). `BENCH_BUFFER_RECORDS` (default 100,000) sets
//! the records per case.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_integration::procfs;
use sluice_provider_core::config::{ConfigError, ConfigReader};
use sluice_provider_core::{
    ConnectorError, Engine, Failure, LinkKey, LinkSpec, Message, SinkConnector, SinkWriter, Unsupported,
};

const PAYLOAD: usize = 1024;
/// Writers calling `write` at once, for both links (the sink's default `max_concurrent_writes`).
const WRITERS: usize = 4;

/// A sink that appends every payload to one file, flushed per batch, and counts the records.
#[derive(Clone)]
struct FileSink {
    file: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
    written: Arc<AtomicU64>,
}

impl FileSink {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self {
            file: Arc::new(Mutex::new(std::io::BufWriter::with_capacity(1 << 20, file))),
            written: Arc::default(),
        })
    }
}

impl SinkConnector for FileSink {
    type Config = ();
    type Writer = Self;

    fn parse_config(&self, _: &ConfigReader<'_>) -> Result<(), ConfigError> {
        Ok(())
    }

    async fn open(&self, _: &LinkKey, (): ()) -> Result<Self, ConnectorError> {
        Ok(self.clone())
    }
}

impl SinkWriter for FileSink {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for message in &batch {
            file.write_all(&message.payload)
                .map_err(|e| Failure::Retry(e.to_string()))?;
        }
        file.flush().map_err(|e| Failure::Retry(e.to_string()))?;
        self.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// One link's measurement.
struct Run {
    /// Records per second until the last write was answered.
    answered: f64,
    /// Records per second until the sink had the last record.
    in_sink: f64,
    fsyncs: u64,
    rss_mib: f64,
}

/// Writes `records` records in batches of `batch` through `link` from [`WRITERS`] tasks at once.
async fn run(
    engine: &Arc<Engine<Unsupported, FileSink>>,
    sink: &FileSink,
    link: &str,
    config: &[(&str, String)],
    batch: usize,
    records: usize,
) -> anyhow::Result<Run> {
    let key = LinkKey::new("bench", link);
    let config = config.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    engine.put_sink_link(LinkSpec::new(key.clone(), config)).await?;
    let before = sink.written.load(Ordering::Relaxed);
    let batches = records / batch;
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (engine, link) = (Arc::clone(engine), link.to_string());
            tokio::spawn(async move {
                for b in (w..batches).step_by(WRITERS) {
                    let messages = (0..batch)
                        .map(|i| Message::new(vec![b'x'; PAYLOAD], format!("bench@{}", b * batch + i)))
                        .collect();
                    engine.write("bench", &link, messages).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    let answered = started.elapsed();
    let wanted = before + (batches * batch) as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.written.load(Ordering::Relaxed) < wanted {
        anyhow::ensure!(Instant::now() < deadline, "the {link} link did not drain");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let in_sink = started.elapsed();
    let status = engine.status();
    let metrics = status
        .links
        .iter()
        .find(|l| l.component == "bench" && l.name == link)
        .map(|l| l.metrics)
        .unwrap_or_default();
    let rss_kib = procfs::memory_kib(std::process::id(), "VmRSS").unwrap_or(0);
    engine.delete_sink_link(&key).await;
    let n = (batches * batch) as f64;
    Ok(Run {
        answered: n / answered.as_secs_f64(),
        in_sink: n / in_sink.as_secs_f64(),
        fsyncs: metrics.fsyncs,
        rss_mib: rss_kib as f64 / 1024.0,
    })
}

fn records() -> usize {
    std::env::var("BENCH_BUFFER_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_integration::init_tracing();
    let dir: PathBuf = sluice_integration::servers::temp_dir("bench-buffer")?;
    let result = bench(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(dir: &Path) -> anyhow::Result<()> {
    let sink = FileSink::create(&dir.join("sink.out"))?;
    let engine = Arc::new(Engine::new(Unsupported, sink.clone()));
    let records = records();
    println!(
        "{records} records of {PAYLOAD} B per case, {WRITERS} writers at once, one sink appending to a file \
         (flushed per batch, no fsync);"
    );
    println!("plain = writes straight to the sink; buffered = `buffer = \"disk\"` (fsync per batch, drained in order)");
    println!(
        "{:>6} {:>12} {:>16} {:>14} {:>10} {:>10} {:>12} {:>9}",
        "batch", "plain rec/s", "buffered rec/s", "in sink rec/s", "buf/plain", "fsyncs", "fsyncs/batch", "RSS MiB"
    );
    for (case, batch) in [16, 64, 512].into_iter().enumerate() {
        let plain = run(&engine, &sink, &format!("plain-{case}"), &[], batch, records).await?;
        let buffer_dir = dir.join(format!("buffer-{case}"));
        let buffered_config = [
            ("buffer", "disk".to_string()),
            ("buffer_dir", buffer_dir.display().to_string()),
        ];
        let buffered = run(
            &engine,
            &sink,
            &format!("buffered-{case}"),
            &buffered_config,
            batch,
            records,
        )
        .await?;
        let batches = (records / batch) as f64;
        println!(
            "{batch:>6} {:>12.0} {:>16.0} {:>14.0} {:>9.2}x {:>10} {:>12.2} {:>9.1}",
            plain.answered,
            buffered.answered,
            buffered.in_sink,
            buffered.answered / plain.answered,
            buffered.fsyncs,
            buffered.fsyncs as f64 / batches,
            buffered.rss_mib.max(plain.rss_mib),
        );
    }
    let peak = procfs::memory_kib(std::process::id(), "VmHWM").unwrap_or(0);
    println!("peak RSS of the bench process: {:.1} MiB", peak as f64 / 1024.0);
    engine.shutdown().await;
    Ok(())
}
