//! The S3 sink: records stream into big objects, part by part, and a write succeeds only once
//! every object holding its records is complete.
//!
//! Each partition (the key template rendered without `{unique}`) has at most one open object.
//! Its bytes go through the format and compressor into a part buffer; once the buffer reaches
//! `part_size` it is uploaded as one part of a multipart upload while the next fills, so memory is
//! bounded by the open objects' part buffers, never by object size. An object that ends before
//! its first part fills is written with one `PutObject`. Objects close when they reach
//! `max_object_bytes` or `max_object_records`, when they are `max_object_age` old, when every
//! write slot of the link (`max_concurrent_writes`) is waiting on them, or when
//! `max_open_objects` would be exceeded. A multipart upload that fails is aborted, and every
//! write with records in it answers `retry`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::time::unix_ms;
use sluice_provider_core::{ConfigError, ConfigReader, ConnectorError, Failure, LinkKey, Message, Rejected};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::{ClientConfig, S3Error};
use crate::format::{Compression, Encoder, Format};
use crate::spool::{self, Spool};
use crate::template::{unique_suffix, KeyTemplate, Partition, TimeSource};
use crate::uploads::UploadMarkers;

/// S3's smallest part (all but the last).
const MIN_PART_SIZE: u64 = 5 << 20;

/// Config of one sink link.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Connection and bucket.
    pub client: ClientConfig,
    /// `key_template` (default `{link}/{date}/{hour}/{unique}.<ext>`).
    pub template: String,
    /// `time_source`: `record` (default) or `arrival`, for `{date}` and `{hour}`.
    pub time_source: TimeSource,
    /// `format` and `payload_encoding`.
    pub format: Format,
    /// `compression` and `compression_level`.
    pub compression: Compression,
    /// `part_size`: bytes per uploaded part (default `8MiB`, at least `5MiB`).
    pub part_size: u64,
    /// `max_object_bytes`: an object closes once this much is written to it (default `1GiB`).
    pub max_object_bytes: u64,
    /// `max_object_records`: an object closes after this many records (default unlimited).
    pub max_object_records: u64,
    /// `max_object_age`: an object closes this long after its first record (default `5s`).
    pub max_object_age: Duration,
    /// `max_open_objects`: open partitions at once; the oldest closes to make room (default 8).
    pub max_open_objects: usize,
    /// `max_concurrent_writes` (the engine's key): when this many writes all wait on open
    /// objects, no record can arrive before one returns, so the objects close at once.
    pub max_concurrent_writes: usize,
    /// `abort_incomplete_after`: at link start, multipart uploads this link (component and link
    /// name) started longer ago than this are aborted (left by a killed provider; default `1h`;
    /// `0s` aborts every one started before the link). Uploads are recorded by
    /// [`UploadMarkers`], so another link's uploads under the same prefix are never touched.
    pub abort_incomplete_after: Option<Duration>,
    /// Where the link's local spool lives, `None` with `spool = false`: a write succeeds once its
    /// records are fsynced in the spool, and objects are written from it in the background.
    /// `spool_dir`, or by default [`default_spool_root`] with a directory per endpoint and bucket.
    /// With `spool = false` a write waits until its objects are complete.
    pub spool_dir: Option<std::path::PathBuf>,
    /// `spool_max_bytes`: writes answer `retry` while the spool holds this much (default `1GiB`).
    pub spool_max_bytes: u64,
    /// `drain_timeout`: spool mode, on link delete or shutdown, how long uploading what the spool
    /// holds may take; what is left stays in the spool for the next put of the link (default `30s`).
    pub drain_timeout: Duration,
}

impl SinkConfig {
    /// Reads a sink link's config.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let client = ClientConfig::from_config(config)?;
        let format = Format::from_config(config)?;
        let compression = Compression::from_config(config)?;
        let ext = match (format, compression) {
            (Format::Jsonl(_), _) => "jsonl",
            (Format::Raw, _) => "txt",
        };
        let ext = match compression {
            Compression::None => ext.to_string(),
            Compression::Gzip(_) => format!("{ext}.gz"),
            Compression::Zstd(_) => format!("{ext}.zst"),
        };
        let part_size = config.size_or("part_size", 8 << 20)?;
        if part_size < MIN_PART_SIZE {
            return Err(ConfigError::invalid(
                "part_size",
                format!("S3 parts are at least 5MiB, got {part_size} bytes"),
            ));
        }
        let max_object_bytes = config.size_or("max_object_bytes", 1 << 30)?;
        if max_object_bytes == 0 {
            return Err(ConfigError::invalid("max_object_bytes", "expected more than 0 bytes"));
        }
        let abort = config.str("abort_incomplete_after").unwrap_or("1h");
        let abort_incomplete_after = match abort {
            "never" | "off" => None,
            text => Some(
                sluice_provider_core::config::parse_duration(text)
                    .map_err(|reason| ConfigError::invalid("abort_incomplete_after", reason))?,
            ),
        };
        let spool_dir = match (config.bool_or("spool", true)?, config.str("spool_dir")) {
            (false, _) => None,
            (true, Some(dir)) => Some(dir.into()),
            (true, None) => Some(default_spool_root().join(destination(&client))),
        };
        Ok(Self {
            client,
            template: config.str("key_template").map_or_else(
                || format!("{{link}}/{{date}}/{{hour}}/{{unique}}.{ext}"),
                str::to_string,
            ),
            time_source: match config.str("time_source").unwrap_or("record") {
                "record" => TimeSource::Record,
                "arrival" => TimeSource::Arrival,
                other => {
                    return Err(ConfigError::invalid(
                        "time_source",
                        format!("expected record or arrival, got `{other}`"),
                    ))
                }
            },
            format,
            compression,
            part_size,
            max_object_bytes,
            max_object_records: config
                .parse::<u64>("max_object_records", "a positive integer")?
                .unwrap_or(0),
            max_object_age: config.duration_or("max_object_age", Duration::from_secs(5))?,
            max_open_objects: config.positive_or("max_open_objects", 8)?,
            max_concurrent_writes: config.positive_or("max_concurrent_writes", 4)?,
            abort_incomplete_after,
            spool_dir,
            spool_max_bytes: config.size_or("spool_max_bytes", 1 << 30)?,
            drain_timeout: config.duration_or("drain_timeout", Duration::from_secs(30))?,
        })
    }
}

/// Where spools live when a link names no `spool_dir`: `/var/lib/sluice/s3-spool` when it can be
/// created (a provider run by root, as on an edge gateway), else `<temp dir>/sluice/s3-spool`.
#[must_use]
pub fn default_spool_root() -> std::path::PathBuf {
    let system = std::path::PathBuf::from("/var/lib/sluice/s3-spool");
    if std::fs::create_dir_all(&system).is_ok() {
        system
    } else {
        std::env::temp_dir().join("sluice").join("s3-spool")
    }
}

/// A directory name for a link's destination (endpoint and bucket), so that links of the same
/// component and name writing to different places never share a spool.
fn destination(client: &ClientConfig) -> String {
    use std::hash::{Hash as _, Hasher as _};
    // FNV-1a: stable across builds and platforms, unlike std's default hasher.
    struct Fnv(u64);
    impl std::hash::Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    (
        client.endpoint.as_deref().unwrap_or("aws"),
        &client.region,
        &client.bucket,
    )
        .hash(&mut hasher);
    let bucket: String = client
        .bucket
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{bucket}-{:016x}", hasher.finish())
}

/// What became of an object: `Ok` once complete and visible, else why not.
type Outcome = Option<Result<(), String>>;

/// A multipart upload in progress.
struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
    /// The part being uploaded while the next one fills.
    pending: Option<JoinHandle<Result<CompletedPart, S3Error>>>,
}

/// An object being written.
struct OpenObject {
    key: String,
    opened: Instant,
    records: u64,
    /// Bytes produced for the object so far (after compression).
    bytes: u64,
    encoder: Encoder,
    upload: Option<Upload>,
    done: watch::Sender<Outcome>,
}

#[derive(Default)]
struct Pool {
    open: HashMap<Partition, OpenObject>,
    seq: u64,
}

struct Shared {
    client: aws_sdk_s3::Client,
    config: SinkConfig,
    template: KeyTemplate,
    link: LinkKey,
    writer_id: u32,
    /// Records of the multipart uploads this link starts (with `abort_incomplete_after`).
    markers: Option<UploadMarkers>,
    pool: Mutex<Pool>,
    /// Writes whose records are in and that now wait for their objects.
    waiting: AtomicUsize,
    /// Objects being completed or aborted.
    closing: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Writes one link's records to S3.
pub struct S3Writer {
    shared: Arc<Shared>,
    ticker: JoinHandle<()>,
    spool: Option<Spooled>,
}

/// The spool of a link with `spool_dir`, and the task uploading from it.
struct Spooled {
    spool: Arc<Spool>,
    files: mpsc::UnboundedSender<PathBuf>,
    drainer: JoinHandle<()>,
}

impl S3Writer {
    /// A writer for `link` (its bucket already checked); with `spool_dir`, the files an earlier
    /// run left in the link's spool are uploaded first.
    ///
    /// # Errors
    /// When the spool directory cannot be created or read.
    pub fn new(
        client: aws_sdk_s3::Client,
        config: SinkConfig,
        template: KeyTemplate,
        link: LinkKey,
    ) -> std::io::Result<Self> {
        let spool = match &config.spool_dir {
            Some(root) => Some(Spool::open(root, &link, config.spool_max_bytes)?),
            None => None,
        };
        let markers = config
            .abort_incomplete_after
            .map(|_| UploadMarkers::new(client.clone(), &config.client.bucket, &link));
        let shared = Arc::new(Shared {
            client,
            markers,
            template,
            link,
            writer_id: rand::random(),
            pool: Mutex::default(),
            waiting: AtomicUsize::new(0),
            closing: std::sync::Mutex::default(),
            config,
        });
        if let (Some(age), Some(markers)) = (shared.config.abort_incomplete_after, shared.markers.clone()) {
            let cutoff = SystemTime::now() - age;
            let link = shared.link.clone();
            tokio::spawn(async move { markers.abort_stale(cutoff, &link).await });
        }
        let ticker = tokio::spawn(close_aged(Arc::downgrade(&shared)));
        let spool = spool.map(|(spool, left)| {
            if !left.is_empty() {
                info!(link = %shared.link, files = left.len(), bytes = spool.bytes(), "uploading what an earlier run spooled");
            }
            let spool = Arc::new(spool);
            let (files, queue) = mpsc::unbounded_channel();
            for path in left {
                let _ = files.send(path);
            }
            let drainer = tokio::spawn(drain_spool(
                Arc::clone(&shared),
                Arc::clone(&spool),
                files.clone(),
                queue,
            ));
            Spooled { spool, files, drainer }
        });
        Ok(Self { shared, ticker, spool })
    }
}

/// Feeds spooled batches into objects, in spool order; each file is deleted once every object
/// holding its records is complete, and offered again after a pause when one failed.
async fn drain_spool(
    shared: Arc<Shared>,
    spool: Arc<Spool>,
    files: mpsc::UnboundedSender<PathBuf>,
    mut queue: mpsc::UnboundedReceiver<PathBuf>,
) {
    while let Some(path) = queue.recv().await {
        let batch = match tokio::task::spawn_blocking({
            let path = path.clone();
            move || spool::read(&path)
        })
        .await
        {
            Ok(Ok(batch)) => batch,
            Ok(Err(err)) => {
                warn!(link = %shared.link, path = %path.display(), error = %err, "unreadable spool file left in place");
                continue;
            }
            Err(err) => {
                warn!(link = %shared.link, error = %err, "spool read task failed");
                continue;
            }
        };
        let (_, outcomes) = shared.append_batch(&batch, unix_ms(), false).await;
        drop(batch);
        let (shared_, spool, files) = (Arc::clone(&shared), Arc::clone(&spool), files.clone());
        shared.track(tokio::spawn(async move {
            match wait_outcomes(outcomes).await {
                None => {
                    if let Err(err) = spool.remove(&path) {
                        warn!(link = %shared_.link, path = %path.display(), error = %err, "could not delete an uploaded spool file");
                    }
                }
                Some(reason) => {
                    warn!(link = %shared_.link, path = %path.display(), error = %reason, "spooled records not stored; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = files.send(path);
                }
            }
        }));
    }
}

/// Waits for every object in `outcomes`; the reason of a failure, if any.
async fn wait_outcomes(outcomes: Vec<watch::Receiver<Outcome>>) -> Option<String> {
    let mut failure = None;
    for mut outcome in outcomes {
        let result = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
        match result {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(reason))) => failure = Some(reason),
            _ => failure = Some("the link closed before the object completed".into()),
        }
    }
    failure
}

impl Shared {
    /// Appends one encoded record to its partition's object, uploading a part when one is full
    /// and closing the object when the roll policy says so. Returns the object's outcome.
    async fn append(self: &Arc<Self>, pool: &mut Pool, partition: &Partition, line: &[u8]) -> watch::Receiver<Outcome> {
        if !pool.open.contains_key(partition) {
            if pool.open.len() >= self.config.max_open_objects {
                let oldest = pool
                    .open
                    .iter()
                    .min_by_key(|(_, o)| o.opened)
                    .map(|(p, _)| p.clone())
                    .expect("the pool is full");
                let object = pool.open.remove(&oldest).expect("oldest is open");
                self.close(object);
            }
            pool.seq += 1;
            let key = partition.object_key(&unique_suffix(unix_ms(), self.writer_id, pool.seq));
            pool.open.insert(
                partition.clone(),
                OpenObject {
                    key,
                    opened: Instant::now(),
                    records: 0,
                    bytes: 0,
                    encoder: self.config.compression.encoder(),
                    upload: None,
                    done: watch::channel(None).0,
                },
            );
        }
        let object = pool.open.get_mut(partition).expect("opened above");
        let before = object.encoder.output_len();
        object.encoder.write(line);
        object.bytes += (object.encoder.output_len() as u64).saturating_sub(before as u64);
        object.records += 1;
        let outcome = object.done.subscribe();
        let mut failed = None;
        if object.encoder.output_len() as u64 >= self.config.part_size {
            if let Err(err) = self.upload_part(object).await {
                failed = Some(err.to_string());
            }
        }
        let full = object.bytes >= self.config.max_object_bytes
            || (self.config.max_object_records > 0 && object.records >= self.config.max_object_records);
        if failed.is_some() || full {
            let object = pool.open.remove(partition).expect("still open");
            match failed {
                Some(reason) => self.fail(object, reason),
                None => self.close(object),
            }
        }
        outcome
    }

    /// Uploads the full part buffer of `object`, after the previous part is done.
    async fn upload_part(&self, object: &mut OpenObject) -> Result<(), S3Error> {
        let bucket = &self.config.client.bucket;
        if object.upload.is_none() {
            if let Some(markers) = &self.markers {
                markers.record(&object.key).await?;
            }
            let created = self
                .client
                .create_multipart_upload()
                .bucket(bucket)
                .key(&object.key)
                .send()
                .await
                .map_err(|e| S3Error::new("CreateMultipartUpload", bucket, e))?;
            let id = created.upload_id().unwrap_or_default().to_string();
            debug!(key = %object.key, upload = %id, "multipart upload started");
            object.upload = Some(Upload {
                id,
                parts: Vec::new(),
                pending: None,
            });
        }
        let upload = object.upload.as_mut().expect("created above");
        if let Some(previous) = upload.pending.take() {
            upload.parts.push(join_part(previous).await?);
        }
        let body = Bytes::from(object.encoder.take_output(self.config.part_size as usize + (64 << 10)));
        let number = i32::try_from(upload.parts.len() + 1).unwrap_or(i32::MAX);
        let request = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(&object.key)
            .upload_id(&upload.id)
            .part_number(number)
            .body(ByteStream::from(body));
        let bucket = bucket.clone();
        upload.pending = Some(tokio::spawn(async move {
            let out = request
                .send()
                .await
                .map_err(|e| S3Error::new("UploadPart", &bucket, e))?;
            Ok(CompletedPart::builder()
                .set_e_tag(out.e_tag().map(str::to_string))
                .part_number(number)
                .build())
        }));
        Ok(())
    }

    /// Completes `object` in the background; its writers learn the outcome.
    fn close(self: &Arc<Self>, object: OpenObject) {
        let shared = Arc::clone(self);
        self.track(tokio::spawn(async move {
            let key = object.key.clone();
            let records = object.records;
            let done = object.done.clone();
            let outcome = shared.complete(object).await;
            match &outcome {
                Ok(()) => debug!(%key, records, "object complete"),
                Err(err) => warn!(%key, records, error = %err, "object failed; its writes will be retried"),
            }
            done.send_replace(Some(outcome));
        }));
    }

    /// Aborts `object` in the background and fails its writers with `reason`.
    fn fail(self: &Arc<Self>, object: OpenObject, reason: String) {
        let shared = Arc::clone(self);
        self.track(tokio::spawn(async move {
            warn!(key = %object.key, error = %reason, "object failed; its writes will be retried");
            if let Some(upload) = object.upload {
                shared.abort(&object.key, upload).await;
            }
            object.done.send_replace(Some(Err(reason)));
        }));
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut closing = self.closing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        closing.retain(|t| !t.is_finished());
        closing.push(task);
    }

    async fn complete(&self, object: OpenObject) -> Result<(), String> {
        let bucket = &self.config.client.bucket;
        let key = object.key;
        let tail = object.encoder.finish();
        let Some(mut upload) = object.upload else {
            return self
                .client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from(tail))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| S3Error::new("PutObject", bucket, e).to_string());
        };
        let result = async {
            if let Some(previous) = upload.pending.take() {
                upload.parts.push(join_part(previous).await?);
            }
            if !tail.is_empty() {
                let number = i32::try_from(upload.parts.len() + 1).unwrap_or(i32::MAX);
                let out = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(&upload.id)
                    .part_number(number)
                    .body(ByteStream::from(tail))
                    .send()
                    .await
                    .map_err(|e| S3Error::new("UploadPart", bucket, e))?;
                upload.parts.push(
                    CompletedPart::builder()
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .part_number(number)
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(&key)
                .upload_id(&upload.id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(std::mem::take(&mut upload.parts)))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| S3Error::new("CompleteMultipartUpload", bucket, e))?;
            Ok::<(), S3Error>(())
        }
        .await;
        if let Err(err) = result {
            self.abort(&key, upload).await;
            return Err(err.to_string());
        }
        if let Some(markers) = &self.markers {
            markers.forget(&key).await;
        }
        Ok(())
    }

    async fn abort(&self, key: &str, mut upload: Upload) {
        if let Some(pending) = upload.pending.take() {
            let _ = pending.await;
        }
        let bucket = &self.config.client.bucket;
        match self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload.id)
            .send()
            .await
        {
            Ok(_) => {
                if let Some(markers) = &self.markers {
                    markers.forget(key).await;
                }
            }
            Err(err) => {
                warn!(%key, error = %S3Error::new("AbortMultipartUpload", bucket, err), "abort failed; the incomplete upload stays invisible until aborted");
            }
        }
    }

    /// Closes every open object (all its writers are waiting, or the link is closing).
    fn close_all(self: &Arc<Self>, pool: &mut Pool) {
        for (_, object) in pool.open.drain() {
            self.close(object);
        }
    }
}

async fn join_part(task: JoinHandle<Result<CompletedPart, S3Error>>) -> Result<CompletedPart, S3Error> {
    task.await.unwrap_or_else(|e| {
        Err(S3Error {
            operation: "UploadPart",
            bucket: String::new(),
            detail: format!("upload task failed: {e}"),
            permanent: false,
        })
    })
}

/// Closes objects older than `max_object_age`, until the writer is gone.
async fn close_aged(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(s) => (s.config.max_object_age / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let mut pool = shared.pool.lock().await;
        let aged: Vec<Partition> = pool
            .open
            .iter()
            .filter(|(_, o)| o.opened.elapsed() >= shared.config.max_object_age)
            .map(|(p, _)| p.clone())
            .collect();
        for partition in aged {
            let object = pool.open.remove(&partition).expect("listed above");
            shared.close(object);
        }
    }
}

impl Shared {
    /// Encodes `batch` into its partitions' objects: the records the format refuses, and the
    /// outcomes of the objects now holding the rest. A `waiting` write counts itself among the
    /// link's writes waiting on objects (all slots waiting closes the open objects).
    async fn append_batch(
        self: &Arc<Self>,
        batch: &[Message],
        arrival: u64,
        waiting: bool,
    ) -> (Vec<Rejected>, Vec<watch::Receiver<Outcome>>) {
        let mut rejected = Vec::new();
        let mut outcomes: Vec<watch::Receiver<Outcome>> = Vec::new();
        let mut line = Vec::new();
        let mut pool = self.pool.lock().await;
        for (i, message) in batch.iter().enumerate() {
            line.clear();
            if let Err(reason) = self.config.format.encode(message, &mut line) {
                rejected.push(Rejected {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    reason,
                });
                continue;
            }
            let partition = self.template.partition(message, self.config.time_source, arrival);
            let outcome = self.append(&mut pool, &partition, &line).await;
            if !outcomes.iter().any(|o| o.same_channel(&outcome)) {
                outcomes.push(outcome);
            }
        }
        if waiting && self.waiting.fetch_add(1, Ordering::SeqCst) + 1 >= self.config.max_concurrent_writes {
            self.close_all(&mut pool);
        }
        (rejected, outcomes)
    }
}

impl S3Writer {
    /// Spool mode: the records the format accepts go to an fsynced spool file, and the write
    /// succeeds; objects are written from the spool in the background.
    async fn spool(&self, spooled: &Spooled, batch: Vec<Message>) -> Result<(), Failure> {
        if spooled.spool.is_full() {
            return Err(Failure::Retry(format!(
                "the spool holds {} bytes (spool_max_bytes); try again",
                spooled.spool.bytes()
            )));
        }
        let mut rejected = Vec::new();
        let mut line = Vec::new();
        let mut keep = vec![true; batch.len()];
        for (i, message) in batch.iter().enumerate() {
            line.clear();
            if let Err(reason) = self.shared.config.format.encode(message, &mut line) {
                keep[i] = false;
                rejected.push(Rejected {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    reason,
                });
            }
        }
        if rejected.len() < batch.len() {
            let spool = Arc::clone(&spooled.spool);
            let written = tokio::task::spawn_blocking(move || {
                let accepted: Vec<&Message> = batch.iter().zip(&keep).filter(|(_, k)| **k).map(|(m, _)| m).collect();
                spool.append(&accepted)
            })
            .await
            .map_err(|e| Failure::Retry(format!("spool task failed: {e}")))?
            .map_err(|e| Failure::Retry(format!("records not spooled: {e}")))?;
            let _ = spooled.files.send(written);
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(Failure::Reject(rejected))
        }
    }
}

impl S3Writer {
    /// Spool mode, link closing: every write was answered, so the spool only empties. Its files
    /// go into objects, completed at once, for up to `drain_timeout`. What is left then (S3
    /// unreachable) stays on disk, each file logged, and is uploaded first by the next provider
    /// that puts this link.
    async fn drain(&self, spooled: &Spooled) {
        let shared = &self.shared;
        let emptied = tokio::time::timeout(shared.config.drain_timeout, async {
            while spooled.spool.files() > 0 {
                shared.close_all(&mut *shared.pool.lock().await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok();
        spooled.drainer.abort();
        if emptied {
            return;
        }
        // Stop uploading: the objects holding spooled records are dropped unfinished (their
        // files stay; an upload already started is aborted at a later start of the link).
        for task in std::mem::take(&mut *shared.closing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            task.abort();
        }
        for (_, object) in shared.pool.lock().await.open.drain() {
            if let Some(pending) = object.upload.and_then(|u| u.pending) {
                pending.abort();
            }
        }
        let spool = Arc::clone(&spooled.spool);
        let left = tokio::task::spawn_blocking(move || spool.list())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match left {
            Ok(left) => {
                for path in &left {
                    warn!(link = %shared.link, path = %path.display(), "spooled records not uploaded within `drain_timeout`: the file stays for the next provider that puts this link");
                }
                warn!(link = %shared.link, files = left.len(), drain_timeout = ?shared.config.drain_timeout, "link closed with records still spooled");
            }
            Err(err) => {
                warn!(link = %shared.link, error = %err, "link closed with records still spooled; cannot list them")
            }
        }
    }
}

impl sluice_provider_core::SinkWriter for S3Writer {
    async fn write(&self, batch: Vec<Message>) -> Result<(), Failure> {
        if let Some(spooled) = &self.spool {
            return self.spool(spooled, batch).await;
        }
        // Records go straight from the batch into their objects' part buffers: no copy of the
        // batch is held beside it.
        let (rejected, outcomes) = self.shared.append_batch(&batch, unix_ms(), true).await;
        drop(batch);
        let failure = wait_outcomes(outcomes).await;
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        if let Some(reason) = failure {
            return Err(Failure::Retry(format!("records not stored: {reason}")));
        }
        if !rejected.is_empty() {
            return Err(Failure::Reject(rejected));
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), ConnectorError> {
        if let Some(spooled) = &self.spool {
            self.drain(spooled).await;
        }
        {
            let mut pool = self.shared.pool.lock().await;
            self.shared.close_all(&mut pool);
        }
        self.ticker.abort();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .shared
                .closing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(spooled) = &self.spool {
            spooled.drainer.abort();
        }
    }
}

/// The keys of [`SinkConfig`] beyond the client's and the format's.
pub const KEYS: &[Key] = &[
    Key::new(
        "key_template",
        KeyType::String,
        "Object keys, with fields such as `{date}` and `{unique}`",
    )
    .sink(),
    Key::new(
        "time_source",
        KeyType::Enum(&["record", "arrival"]),
        "Where `{date}`/`{hour}` come from",
    )
    .sink()
    .default("record"),
    Key::new("part_size", KeyType::Size, "Multipart part size, at least 5MiB")
        .sink()
        .default("8MiB"),
    Key::new(
        "max_object_bytes",
        KeyType::Size,
        "Roll once an object holds this many bytes",
    )
    .sink()
    .default("1GiB"),
    Key::new(
        "max_object_records",
        KeyType::Int { min: 0 },
        "Roll after this many records (default unlimited)",
    )
    .sink(),
    Key::new(
        "max_object_age",
        KeyType::Duration,
        "Roll this long after an object's first record",
    )
    .sink()
    .default("5s"),
    Key::new(
        "max_open_objects",
        KeyType::Int { min: 1 },
        "Open partitions; one more completes the oldest",
    )
    .sink()
    .default("8"),
    Key::new(
        "spool",
        KeyType::Bool,
        "A write succeeds once fsynced in the link's local spool",
    )
    .sink()
    .default("true"),
    Key::new(
        "spool_dir",
        KeyType::String,
        "Where spools live (one directory per component and link)",
    )
    .sink(),
    Key::new(
        "spool_max_bytes",
        KeyType::Size,
        "Writes answer retry while the spool holds this much",
    )
    .sink()
    .default("1GiB"),
    Key::new(
        "drain_timeout",
        KeyType::Duration,
        "On link delete or shutdown, how long uploading the spool may take",
    )
    .sink()
    .default("30s"),
    Key::new(
        "abort_incomplete_after",
        KeyType::String,
        "At link start, abort this link's multipart uploads started this long before (a duration, or `never`)",
    )
    .sink()
    .default("1h"),
];

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use sluice_provider_core::{ConfigReader, Secret};

    use super::*;

    fn parse(extra: &[(&str, &str)]) -> SinkConfig {
        let values: HashMap<String, String> = [("bucket", "readings"), ("endpoint", "http://127.0.0.1:9000")]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let secrets = HashMap::from([
            ("access_key_id".to_string(), Secret::new("id")),
            ("secret_access_key".to_string(), Secret::new("secret")),
        ]);
        SinkConfig::from_config(&ConfigReader::new(&values, &secrets)).unwrap()
    }

    #[test]
    fn a_write_is_spooled_by_default_in_a_directory_per_destination() {
        let a = parse(&[]).spool_dir.expect("spooled by default");
        assert!(a.starts_with(default_spool_root()), "{}", a.display());
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("readings-"), "{name}");
        let b = parse(&[("endpoint", "http://127.0.0.1:9001")]).spool_dir.unwrap();
        assert_ne!(a, b, "another endpoint, another spool");
        assert_eq!(parse(&[]).spool_dir.unwrap(), a, "the same destination, the same spool");
        assert_eq!(
            parse(&[("spool_dir", "/data/spool")]).spool_dir,
            Some("/data/spool".into())
        );
        assert_eq!(parse(&[("spool", "false")]).spool_dir, None);
    }
}
