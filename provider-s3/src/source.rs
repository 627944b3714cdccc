//! The S3 source: lists a prefix, streams each object line by line, and records progress only
//! for what the component accepted.
//!
//! A background task per link does the I/O (list with continuation tokens, `GetObject` streamed
//! through a small buffer, resumed with a `Range` after a restart or a broken stream) and feeds a
//! bounded channel; [`S3Reader::poll`] only receives from it, so dropping a poll loses nothing.
//! Acknowledgements update the [`Checkpoint`], which a second task stores after each change; only
//! then are finished objects deleted or moved (`after_done`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, ConnectorError, LinkKey, Message, Record};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::checkpoint::{Checkpoint, CheckpointStore, Position};
use crate::client::{ClientConfig, S3Error};
use crate::lines::{read_line, strip_newline};
use crate::STATE_PREFIX;

/// How an object becomes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMode {
    /// One record per line (without its `\n` or `\r\n`).
    Lines,
    /// One record per line, checked to be JSON: a line that is not carries a `sluice-error` header.
    Jsonl,
    /// One record per object (held in memory: at most `max_object_size`).
    Object,
}

/// What happens to an object once all its records were accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterDone {
    /// Nothing: the checkpoint remembers it.
    Keep,
    /// It is deleted.
    Delete,
    /// It is copied under this prefix, then deleted.
    Move(String),
}

/// Config of one source link.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Connection and bucket.
    pub client: ClientConfig,
    /// `prefix`: only keys starting with it (default: the whole bucket).
    pub prefix: String,
    /// `poll_interval`: pause between listings once everything listed was read (default `5s`).
    pub poll_interval: Duration,
    /// `split`: `lines` (default), `jsonl` or `object`.
    pub split: SplitMode,
    /// `max_object_size`: largest object `split = object` delivers (default `16MiB`).
    pub max_object_size: u64,
    /// `max_record_size`: longest line `split = lines|jsonl` delivers (default `1MiB`); a longer
    /// line is skipped, logged with its origin like a dead-lettered record, and the object goes on.
    pub max_record_size: usize,
    /// `after_done`: `keep` (default), `delete` or `move` (with `move_prefix`).
    pub after_done: AfterDone,
    /// `checkpoint_file`: a local file for the checkpoint; else `checkpoint_key` in the bucket
    /// (default `_sluice/checkpoints/{component}/{link}.json`).
    pub checkpoint_file: Option<String>,
    /// `checkpoint_key`.
    pub checkpoint_key: Option<String>,
    /// `read_ahead`: records read ahead of delivery (default 1024).
    pub read_ahead: usize,
}

impl SourceConfig {
    /// Reads a source link's config.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let client = ClientConfig::from_config(config)?;
        let split = match config.str("split").unwrap_or("lines") {
            "lines" => SplitMode::Lines,
            "jsonl" => SplitMode::Jsonl,
            "object" => SplitMode::Object,
            other => {
                return Err(ConfigError::invalid(
                    "split",
                    format!("expected lines, jsonl or object, got `{other}`"),
                ))
            }
        };
        let after_done = match config.str("after_done").unwrap_or("keep") {
            "keep" => AfterDone::Keep,
            "delete" => AfterDone::Delete,
            "move" => AfterDone::Move(config.required_str("move_prefix")?.to_string()),
            other => {
                return Err(ConfigError::invalid(
                    "after_done",
                    format!("expected keep, delete or move, got `{other}`"),
                ))
            }
        };
        let prefix = config.str("prefix").unwrap_or_default().to_string();
        if let AfterDone::Move(to) = &after_done {
            if to.starts_with(&prefix) && !prefix.is_empty() || prefix.starts_with(to.as_str()) {
                return Err(ConfigError::invalid(
                    "move_prefix",
                    format!("`{to}` overlaps `prefix` `{prefix}`: moved objects would be read again"),
                ));
            }
        }
        Ok(Self {
            client,
            prefix,
            poll_interval: config.duration_or("poll_interval", Duration::from_secs(5))?,
            split,
            max_object_size: config.size_or("max_object_size", 16 << 20)?,
            max_record_size: match usize::try_from(config.size_or("max_record_size", 1 << 20)?) {
                Ok(0) | Err(_) => {
                    return Err(ConfigError::invalid(
                        "max_record_size",
                        "expected a size above 0 that fits in memory",
                    ))
                }
                Ok(n) => n,
            },
            after_done,
            checkpoint_file: config.str("checkpoint_file").map(str::to_string),
            checkpoint_key: config.str("checkpoint_key").map(str::to_string),
            read_ahead: config.positive_or("read_ahead", 1024)?,
        })
    }
}

/// Acknowledges one record: which object, which line, and whether it was the object's last.
#[derive(Debug, Clone)]
pub struct Ack {
    key: Arc<str>,
    etag: Arc<str>,
    line: u64,
    /// Object bytes up to the end of this line.
    end: u64,
    last: bool,
}

/// Progress shared by the reader (which advances it on acks), the checkpointer (which stores it)
/// and the scanner (which skips what is done).
struct Progress {
    checkpoint: Checkpoint,
    version: u64,
}

impl Progress {
    /// Records an object as read to the end and accepted: with `keep` the high-water mark moves
    /// to it (objects are read and acknowledged in listing order), else it is listed until
    /// removed.
    fn finished(&mut self, key: &str, etag: &str, after_done: &AfterDone) {
        match after_done {
            AfterDone::Keep => self.checkpoint.pass(key),
            AfterDone::Delete | AfterDone::Move(_) => self.checkpoint.finish(key, etag),
        }
    }

    /// Forgets a finished object that was deleted or moved.
    fn removed(&mut self, key: &str, etag: &str) {
        if self.checkpoint.removed(key, etag) {
            self.bump();
        }
    }

    /// Counts a change of the checkpoint; the new version.
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

/// Reads one source link.
pub struct S3Reader {
    records: mpsc::Receiver<Record<Ack>>,
    after_done: AfterDone,
    progress: Arc<Mutex<Progress>>,
    changed: watch::Sender<u64>,
    scanner: JoinHandle<()>,
    checkpointer: Option<JoinHandle<()>>,
}

impl S3Reader {
    /// Starts reading `config`'s bucket from where `store` says the link left off.
    pub async fn open(
        client: aws_sdk_s3::Client,
        config: SourceConfig,
        link: &LinkKey,
        store: CheckpointStore,
    ) -> Result<Self, ConnectorError> {
        let checkpoint = store.load().await.map_err(ConnectorError::new)?;
        let initial = checkpoint.clone();
        if let Some(p) = &checkpoint.current {
            info!(%link, key = %p.key, line = p.line, after = ?checkpoint.after, "resuming from the checkpoint");
        }
        let progress = Arc::new(Mutex::new(Progress { checkpoint, version: 0 }));
        let (tx, records) = mpsc::channel(config.read_ahead);
        let (changed, watcher) = watch::channel(0);
        let skip_key = match &store {
            CheckpointStore::Object { key, .. } => Some(key.clone()),
            CheckpointStore::File(_) => None,
        };
        let after_done = config.after_done.clone();
        let config = Arc::new(config);
        let scanner = tokio::spawn(
            Scanner {
                client: client.clone(),
                config: Arc::clone(&config),
                progress: Arc::clone(&progress),
                changed: changed.clone(),
                tx,
                skip_key,
                sent: HashMap::new(),
                link: link.clone(),
            }
            .run(),
        );
        let checkpointer = tokio::spawn(checkpointer(
            client,
            config,
            store,
            initial,
            Arc::clone(&progress),
            watcher,
            link.clone(),
        ));
        Ok(Self {
            records,
            after_done,
            progress,
            changed,
            scanner,
            checkpointer: Some(checkpointer),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl sluice_provider_core::SourceReader for S3Reader {
    type Ack = Ack;

    async fn poll(&mut self, max: usize) -> Result<Vec<Record<Ack>>, ConnectorError> {
        let Some(first) = self.records.recv().await else {
            return Err(ConnectorError::msg("the S3 reader task stopped"));
        };
        let mut out = vec![first];
        while out.len() < max {
            match self.records.try_recv() {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    fn ack(&mut self, acks: Vec<Ack>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        // The checkpoint is updated here; the checkpointer task saves it.
        let version = {
            let mut p = lock(&self.progress);
            for ack in acks {
                if ack.last {
                    p.finished(&ack.key, &ack.etag, &self.after_done);
                } else {
                    p.checkpoint.current = Some(Position {
                        key: ack.key.to_string(),
                        etag: ack.etag.to_string(),
                        line: ack.line,
                        offset: ack.end,
                    });
                }
            }
            p.bump()
        };
        self.changed.send_replace(version);
        std::future::ready(Ok(()))
    }

    async fn close(&mut self) {
        self.scanner.abort();
        // Dropping the sender ends the checkpointer after its last save.
        let (closed, _) = watch::channel(0);
        drop(std::mem::replace(&mut self.changed, closed));
        if let Some(task) = self.checkpointer.take() {
            let _ = task.await;
        }
    }
}

impl Drop for S3Reader {
    fn drop(&mut self) {
        self.scanner.abort();
    }
}

/// Stores the checkpoint after every change (coalescing changes that arrive while it saves), then
/// applies `after_done` to objects that became done.
async fn checkpointer(
    client: aws_sdk_s3::Client,
    config: Arc<SourceConfig>,
    store: CheckpointStore,
    initial: Checkpoint,
    progress: Arc<Mutex<Progress>>,
    mut changed: watch::Receiver<u64>,
    link: LinkKey,
) {
    let mut saved: Option<Checkpoint> = Some(initial);
    let mut failures = 0u32;
    loop {
        let closed = changed.changed().await.is_err();
        loop {
            let snapshot = lock(&progress).checkpoint.clone();
            if saved.as_ref() == Some(&snapshot) {
                break;
            }
            match store.save(&snapshot).await {
                Ok(()) => {
                    failures = 0;
                    let newly: Vec<(String, String)> = snapshot
                        .done
                        .iter()
                        .filter(|(k, _)| saved.as_ref().is_none_or(|s| !s.done.contains_key(*k)))
                        .map(|(k, e)| (k.clone(), e.clone()))
                        .collect();
                    saved = Some(snapshot);
                    if config.after_done != AfterDone::Keep {
                        for (key, etag) in newly {
                            // Forgotten once gone, so the checkpoint holds only objects in progress
                            // (saved with the next change, or by the next turn of this loop).
                            if finish_object(&client, &config, &key).await {
                                lock(&progress).removed(&key, &etag);
                            }
                        }
                    }
                }
                Err(err) => {
                    failures += 1;
                    warn!(%link, error = %err, "saving the checkpoint failed; retrying");
                    if closed && failures > 3 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200) * failures.min(25)).await;
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// Deletes or moves a finished object (best effort: a leftover is skipped by the checkpoint and
/// handled again on the next listing). Whether it is gone.
async fn finish_object(client: &aws_sdk_s3::Client, config: &SourceConfig, key: &str) -> bool {
    let bucket = &config.client.bucket;
    if let AfterDone::Move(prefix) = &config.after_done {
        let copied = client
            .copy_object()
            .bucket(bucket)
            .key(format!("{prefix}{key}"))
            .copy_source(format!("{bucket}/{}", encode_key(key)))
            .send()
            .await;
        if let Err(err) = copied {
            warn!(%key, error = %S3Error::new("CopyObject", bucket, err), "moving a finished object failed");
            return false;
        }
    }
    match client.delete_object().bucket(bucket).key(key).send().await {
        Ok(_) => true,
        Err(err) => {
            warn!(%key, error = %S3Error::new("DeleteObject", bucket, err), "deleting a finished object failed");
            false
        }
    }
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/`.
fn encode_key(key: &str) -> String {
    sluice_provider_core::percent::encode(key.as_bytes(), |b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b))
}

/// The background reader of one link.
struct Scanner {
    client: aws_sdk_s3::Client,
    config: Arc<SourceConfig>,
    progress: Arc<Mutex<Progress>>,
    changed: watch::Sender<u64>,
    tx: mpsc::Sender<Record<Ack>>,
    skip_key: Option<String>,
    /// Objects handed to delivery and not yet done (key -> ETag), so a later listing does not
    /// read them again while their records are in flight.
    sent: HashMap<String, String>,
    link: LinkKey,
}

/// One object as listed.
struct Listed {
    key: String,
    etag: String,
    size: u64,
    modified_ms: Option<u64>,
}

impl Scanner {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.pass().await {
                Ok(()) => failures = 0,
                Err(err) => {
                    failures += 1;
                    warn!(link = %self.link, error = %err, "reading the bucket failed; retrying");
                }
            }
            if self.tx.is_closed() {
                return;
            }
            let pause = if failures == 0 {
                self.config.poll_interval
            } else {
                (Duration::from_millis(500) * failures.min(20))
                    .min(self.config.poll_interval.max(Duration::from_secs(1)))
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Lists the prefix page by page and reads every object not done yet.
    async fn pass(&mut self) -> Result<(), S3Error> {
        let bucket = self.config.client.bucket.clone();
        let mut token: Option<String> = None;
        let mut seen: HashSet<String> = HashSet::new();
        // With `keep`, everything up to the high-water mark is done: listed no more.
        let after = match self.config.after_done {
            AfterDone::Keep => lock(&self.progress).checkpoint.after.clone(),
            AfterDone::Delete | AfterDone::Move(_) => None,
        };
        // Sluice's own state (checkpoints of this and other links, upload markers) is no data.
        let own_state = !self.config.prefix.starts_with(STATE_PREFIX);
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(&self.config.prefix)
                .set_start_after(after.clone())
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| S3Error::new("ListObjectsV2", &bucket, e))?;
            let listed: Vec<Listed> = page
                .contents()
                .iter()
                .filter_map(|o| {
                    Some(Listed {
                        key: o.key()?.to_string(),
                        etag: o.e_tag().unwrap_or_default().to_string(),
                        size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                        modified_ms: o.last_modified().and_then(|t| u64::try_from(t.to_millis().ok()?).ok()),
                    })
                })
                .collect();
            for object in listed {
                seen.insert(object.key.clone());
                if self.skip_key.as_deref() == Some(object.key.as_str())
                    || (own_state && object.key.starts_with(STATE_PREFIX))
                    || matches!(&self.config.after_done, AfterDone::Move(p) if object.key.starts_with(p.as_str()))
                {
                    continue;
                }
                let (done, resume) = {
                    let p = lock(&self.progress);
                    let done = p.checkpoint.is_done(&object.key, &object.etag);
                    let resume = p
                        .checkpoint
                        .current
                        .as_ref()
                        .filter(|c| c.key == object.key && c.etag == object.etag)
                        .map(|c| (c.line, c.offset));
                    (done, resume)
                };
                if done {
                    self.sent.remove(&object.key);
                    // Done but still here: a previous run stopped before deleting it.
                    if self.config.after_done != AfterDone::Keep
                        && finish_object(&self.client, &self.config, &object.key).await
                    {
                        let version = {
                            let mut p = lock(&self.progress);
                            p.removed(&object.key, &object.etag);
                            p.version
                        };
                        self.changed.send_replace(version);
                    }
                    continue;
                }
                if self.sent.get(&object.key) == Some(&object.etag) {
                    continue;
                }
                self.read_object(&object, resume.unwrap_or((0, 0))).await?;
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        // Forget finished keys that are gone from the bucket, so the checkpoint stays small.
        let version = {
            let mut p = lock(&self.progress);
            let before = p.checkpoint.done.len();
            p.checkpoint.done.retain(|k, _| seen.contains(k));
            (p.checkpoint.done.len() != before).then(|| p.bump())
        };
        if let Some(v) = version {
            self.changed.send_replace(v);
        }
        self.sent.retain(|k, _| seen.contains(k));
        Ok(())
    }

    /// Streams one object from line `line` (at byte `offset`) to the channel.
    async fn read_object(&mut self, object: &Listed, (mut line, mut offset): (u64, u64)) -> Result<(), S3Error> {
        let bucket = self.config.client.bucket.clone();
        if object.size == 0 {
            return Ok(());
        }
        if self.config.split == SplitMode::Object && object.size > self.config.max_object_size {
            warn!(key = %object.key, size = object.size, max = self.config.max_object_size, "object larger than `max_object_size`: skipped");
            return Ok(());
        }
        debug!(key = %object.key, line, offset, "reading object");
        let key: Arc<str> = object.key.as_str().into();
        let etag: Arc<str> = object.etag.as_str().into();
        let origin = |line: u64| format!("s3:{bucket}/{}#{line}", object.key);
        let message = |payload: Vec<u8>, line: u64| {
            let mut m = Message::new(payload, origin(line));
            m.key = Some(object.key.as_bytes().to_vec().into());
            m.timestamp_ms = object.modified_ms;
            m
        };
        // A line read but not sent yet: it is the object's last only if nothing follows it.
        let mut held: Option<(Vec<u8>, u64, u64)> = None;
        let mut skipped = false;
        let mut retries = 0u32;
        'stream: while offset < object.size {
            let mut request = self.client.get_object().bucket(&bucket).key(&object.key);
            if offset > 0 {
                request = request.range(format!("bytes={offset}-"));
            }
            let body = match request.send().await {
                Ok(out) => out.body,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    debug!(key = %object.key, "object vanished before it was read");
                    return Ok(());
                }
                Err(e) => return Err(S3Error::new("GetObject", &bucket, e)),
            };
            if self.config.split == SplitMode::Object {
                let bytes = body.collect().await.map_err(|e| S3Error {
                    operation: "GetObject",
                    bucket: bucket.clone(),
                    detail: format!("reading `{}`: {e}", object.key),
                    permanent: false,
                })?;
                let payload = bytes.to_vec();
                let end = payload.len() as u64;
                self.send(message(payload, 1), &key, &etag, 1, end, true).await;
                return Ok(());
            }
            let mut reader = tokio::io::BufReader::with_capacity(64 << 10, body.into_async_read());
            loop {
                let mut buf = Vec::new();
                let read = match read_line(&mut reader, &mut buf, self.config.max_record_size).await {
                    Ok(read) => read,
                    Err(err) => {
                        retries += 1;
                        if retries > 5 {
                            return Err(S3Error {
                                operation: "GetObject",
                                bucket: bucket.clone(),
                                detail: format!("reading `{}`: {err}", object.key),
                                permanent: false,
                            });
                        }
                        warn!(key = %object.key, offset, error = %err, "object stream broke; resuming with a range request");
                        continue 'stream;
                    }
                };
                if read.consumed == 0 {
                    break 'stream;
                }
                // A partial last line (no `\n`, and more may follow after a broken stream) is
                // only taken once the object's size says it is the end.
                if !read.newline && offset + read.consumed < object.size {
                    retries += 1;
                    if retries > 5 {
                        return Err(S3Error {
                            operation: "GetObject",
                            bucket: bucket.clone(),
                            detail: format!("`{}` ended before its listed size", object.key),
                            permanent: false,
                        });
                    }
                    continue 'stream;
                }
                offset += read.consumed;
                line += 1;
                if read.oversized {
                    // Dropped like a dead-lettered record (logged with its origin); the held line
                    // stays held, so the object's last delivered line still marks it done.
                    warn!(
                        link = %self.link,
                        origin = %origin(line),
                        bytes = read.consumed,
                        max_record_size = self.config.max_record_size,
                        "line longer than `max_record_size`: skipped"
                    );
                    skipped = true;
                    continue;
                }
                if let Some((payload, l, end)) = held.take() {
                    self.send(message(payload, l), &key, &etag, l, end, false).await;
                }
                strip_newline(&mut buf);
                held = Some((buf, line, offset));
            }
        }
        match held.take() {
            Some((payload, l, end)) => self.send(message(payload, l), &key, &etag, l, end, true).await,
            // Every line read was too long: no acknowledgement will mark the object done.
            None if skipped => self.finish_unsent(&object.key, &object.etag),
            None => {}
        }
        Ok(())
    }

    /// Marks an object done that delivered no record. With `keep` the high-water mark passes it
    /// with the next object done (marking it now could pass objects before it whose records are
    /// still in flight); until then this run does not read it again.
    fn finish_unsent(&mut self, key: &str, etag: &str) {
        self.sent.insert(key.to_string(), etag.to_string());
        if self.config.after_done == AfterDone::Keep {
            return;
        }
        let version = {
            let mut p = lock(&self.progress);
            p.finished(key, etag, &self.config.after_done);
            p.bump()
        };
        self.changed.send_replace(version);
    }

    async fn send(&mut self, mut message: Message, key: &Arc<str>, etag: &Arc<str>, line: u64, end: u64, last: bool) {
        if self.config.split == SplitMode::Jsonl {
            if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&message.payload) {
                message.headers.push((
                    "sluice-error".into(),
                    format!("invalid JSON: {err}").into_bytes().into(),
                ));
            }
        }
        if last {
            self.sent.insert(key.to_string(), etag.to_string());
        }
        let record = Record::new(
            message,
            Ack {
                key: Arc::clone(key),
                etag: Arc::clone(etag),
                line,
                end,
                last,
            },
        )
        .ordered_by(&**key);
        // The channel closes only when the link stops; the scanner is aborted then too.
        let _ = self.tx.send(record).await;
    }
}

/// The keys of [`SourceConfig`] beyond the client's.
pub const KEYS: &[Key] = &[
    Key::new(
        "prefix",
        KeyType::String,
        "Keys to read, in listing order (default the whole bucket)",
    )
    .source(),
    Key::new(
        "poll_interval",
        KeyType::Duration,
        "Pause between listings once everything listed was read",
    )
    .source()
    .default("5s"),
    Key::new(
        "split",
        KeyType::Enum(&["lines", "jsonl", "object"]),
        "One record per line, per JSON line, or per object",
    )
    .source()
    .default("lines"),
    Key::new(
        "max_object_size",
        KeyType::Size,
        "`split = object`: larger objects are skipped",
    )
    .source()
    .default("16MiB"),
    Key::new(
        "max_record_size",
        KeyType::Size,
        "`split = lines`/`jsonl`: longer lines are dropped",
    )
    .source()
    .default("1MiB"),
    Key::new(
        "after_done",
        KeyType::Enum(&["keep", "delete", "move"]),
        "What happens to an object once read",
    )
    .source()
    .default("keep"),
    Key::new(
        "move_prefix",
        KeyType::String,
        "With `after_done = move`: where objects go",
    )
    .source(),
    Key::new("checkpoint_key", KeyType::String, "Checkpoint object in the bucket").source(),
    Key::new("checkpoint_file", KeyType::String, "A local checkpoint file instead").source(),
    Key::new("read_ahead", KeyType::Int { min: 1 }, "Records read ahead of delivery")
        .source()
        .default("1024"),
];
