//! Sources: a connector reads its system; the [runner](run_source) batches what it reads, delivers
//! it to the linked component, and acknowledges only what the component accepted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::backoff::Backoff;
use crate::config::{ConfigError, ConfigReader};
use crate::link::{keep_opening, open_with_retry, LinkError, LinkErrorReason, LinkKey, Role};
use crate::metrics::{InFlight, LinkHealth, LinkMetrics};
use crate::{ConnectorError, Failure, Message};

/// A source system, as a connector sees it: how to read a link's config and open a reader.
pub trait SourceConnector: Send + Sync + 'static {
    /// The connector's typed config for one link (cloned when opening is tried again).
    type Config: Clone + Send + Sync + 'static;
    /// Reads one link's records.
    type Reader: SourceReader;

    /// `false` for [`crate::Unsupported`]: the provider refuses links in this role.
    const ENABLED: bool = true;

    /// Parses a link's config. Keys the engine itself reads (batching, retries) are already taken.
    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Self::Config, ConfigError>;

    /// Checks what can be checked of a link without taking what its reader holds (a consumer
    /// group membership, a session, a checkpoint): that the system answers, that what the link
    /// names exists, its dead-letter destination included. An error refuses the link as an error
    /// of [`open`](Self::open) does: at once when permanent (its message names the key at fault),
    /// after a few attempts when [transient](ConnectorError::is_transient) (then the link is
    /// degraded and opened in the background).
    ///
    /// The engine calls it before every `open`, and when a link is put again it calls it before
    /// stopping the running link: a new config that fails it is refused and the running link
    /// keeps going. The default checks nothing.
    fn check(&self, link: &LinkKey, config: &Self::Config) -> impl Future<Output = Result<(), ConnectorError>> + Send {
        let _ = (link, config);
        async { Ok(()) }
    }

    /// Whether a link must have one reader at a time across the provider's instances (a device
    /// polled once, one checkpoint, one session). Such a link is read only by the instance that
    /// holds its [lease](crate::lease); the others stand by. The default is `false`: the system
    /// shares the work itself (a consumer group, a durable consumer).
    fn single_reader(&self, config: &Self::Config) -> bool {
        let _ = config;
        false
    }

    /// Connects to the system for one link (after [`check`](Self::check) passed).
    fn open(
        &self,
        link: &LinkKey,
        config: Self::Config,
    ) -> impl Future<Output = Result<Self::Reader, ConnectorError>> + Send;
}

/// One record read from a source system, with what is needed to acknowledge it.
#[derive(Debug)]
pub struct Record<A> {
    /// The record.
    pub message: Message,
    /// Given back to [`SourceReader::ack`] once the record is done with.
    pub ack: A,
    /// Records with the same order key reach the component in the order they were read.
    pub order_key: Option<u64>,
}

impl<A> Record<A> {
    /// A record with no ordering constraint.
    pub fn new(message: Message, ack: A) -> Self {
        Self {
            message,
            ack,
            order_key: None,
        }
    }

    /// Keeps this record in order with every other record of the same `key` (a partition, a topic).
    #[must_use]
    pub fn ordered_by(mut self, key: impl Hash) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.order_key = Some(hasher.finish());
        self
    }
}

/// Reads records of one link from a source system.
pub trait SourceReader: Send + 'static {
    /// What acknowledges one record (an offset, a packet id, an object key).
    type Ack: Send + 'static;

    /// Returns up to `max` records, waiting until at least one is available.
    ///
    /// Must be cancel-safe: the runner drops this future when a delivery completes or the link
    /// stops, and records it had already taken must not be lost (keep them for the next call).
    fn poll(&mut self, max: usize) -> impl Future<Output = Result<Vec<Record<Self::Ack>>, ConnectorError>> + Send;

    /// Acknowledges records the component accepted (or that were dead-lettered), always in the
    /// order they were read: every record read before these has been acknowledged already.
    ///
    /// The returned future must not borrow the reader: the runner goes on reading and delivering
    /// while it runs (a Kafka commit is a broker round trip). One call is in flight per link at a
    /// time; what is released meanwhile goes into the next call, so each call covers records
    /// read after those of the call before it.
    fn ack(&mut self, acks: Vec<Self::Ack>) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static;

    /// Told of records the moment they are released for acknowledgement, in read order, before
    /// the [`ack`](Self::ack) call that covers them (which waits while another call is in flight).
    /// A reader that may have to acknowledge early keeps them: a Kafka consumer commits them when
    /// its partitions are revoked, so their new owner does not read them again. The default does
    /// nothing.
    fn released(&mut self, acks: &[Self::Ack]) {
        let _ = acks;
    }

    /// Stores records the component rejected for good (or that ran out of retries), with the
    /// reason. The default logs them with their origin; connectors with a dead-letter destination
    /// write them there, and check it in [`SourceConnector::check`].
    ///
    /// Like [`ack`](Self::ack), the returned future must not borrow the reader: the runner goes on
    /// reading and delivering the link's other lanes while it runs. A failed write is tried again
    /// (a new call with the same records) with the link's backoff; meanwhile the batch is not done,
    /// so its lane waits and nothing read after it is acknowledged, and the link shows as
    /// [degraded](LinkHealth::Degraded) until a write succeeds.
    fn dead_letter(
        &mut self,
        rejected: Vec<(Message, String)>,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send + 'static {
        async move {
            for (message, reason) in &rejected {
                warn!(origin = %message.origin, %reason, "record rejected; no dead-letter destination configured");
            }
            Ok(())
        }
    }

    /// Called once when the link stops, after the last acknowledgement.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Something that hands a batch to a component: the linked component's `ingest.deliver`.
pub trait Ingest: Send + Sync + 'static {
    /// Delivers one batch. The outer error is the transport's (no responder, connection lost).
    fn deliver(&self, batch: &[Message]) -> impl Future<Output = Result<Result<(), Failure>, anyhow::Error>> + Send;

    /// The most bytes one batch may take in a call, when the transport has a limit; the runner
    /// closes batches below it (a single larger record still goes alone).
    fn max_batch_bytes(&self) -> Option<u64> {
        None
    }
}

/// How a source link batches, bounds and retries. Read from the link config by the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerSettings {
    /// `max_batch_records`: most records in one batch (default 512). A batch is sent when it is
    /// full, or `linger` after its first record once its lane and a slot are free; behind a batch
    /// in flight the next one keeps growing, so batches grow with the backlog and a busy ordered
    /// lane (one MQTT topic) moves hundreds of records per round trip, while a trickle still
    /// leaves within `linger`.
    pub max_batch_records: usize,
    /// `max_batch_bytes`: a batch is sent once its payloads reach this size (default 1MiB).
    pub max_batch_bytes: u64,
    /// `linger`: how long a partial batch waits for more records (default 20ms).
    pub linger: Duration,
    /// `max_in_flight`: most batches outstanding at once (default 4).
    pub max_in_flight: usize,
    /// `deliver_timeout`: deadline of one `deliver` call (default 5s). A call that outlives it is
    /// tried again in another invocation of the step: a wasmCloud 1.x host gives an invocation
    /// waiting on a sink provider that died mid-call no deadline but the component's execution
    /// limit (10 minutes on a stock host), so this is what bounds a restarted sink's recovery.
    pub deliver_timeout: Duration,
    /// `retry_initial` / `retry_max`: backoff between attempts (default 100ms / 10s).
    pub backoff: Backoff,
    /// `max_retries`: attempts after which a batch is dead-lettered; absent or 0: retry forever.
    pub max_retries: Option<u32>,
    /// `drain_timeout`: on link delete or shutdown, how long in-flight batches may take (default 30s).
    pub drain_timeout: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            max_batch_records: 512,
            max_batch_bytes: 1 << 20,
            linger: Duration::from_millis(20),
            max_in_flight: 4,
            deliver_timeout: Duration::from_secs(5),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            max_retries: None,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl RunnerSettings {
    /// The most records a link holds read and not yet acknowledged (`max_in_flight *
    /// max_batch_records`): what a crash may deliver a second time, and how many unacknowledged
    /// messages a source system must be willing to hand out for the link to run at full speed.
    pub fn max_unacknowledged(&self) -> usize {
        self.max_in_flight * self.max_batch_records
    }

    /// Reads the engine's keys from a link's config, with the engine's defaults.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        Self::from_config_or(config, &Self::default())
    }

    /// Reads the engine's keys from a link's config; absent keys take their value from
    /// `defaults` (a connector's own defaults, e.g. a shorter `deliver_timeout` for requests
    /// a client is waiting on).
    pub fn from_config_or(config: &ConfigReader<'_>, defaults: &Self) -> Result<Self, ConfigError> {
        let d = defaults;
        let max_retries = config.parse::<u32>("max_retries", "a whole number")?;
        Ok(Self {
            max_batch_records: config.positive_or("max_batch_records", d.max_batch_records)?,
            max_batch_bytes: config.size_or("max_batch_bytes", d.max_batch_bytes)?,
            linger: config.duration_or("linger", d.linger)?,
            max_in_flight: config.positive_or("max_in_flight", d.max_in_flight)?,
            deliver_timeout: config.duration_or("deliver_timeout", d.deliver_timeout)?,
            backoff: Backoff {
                initial: config.duration_or("retry_initial", d.backoff.initial)?,
                max: config.duration_or("retry_max", d.backoff.max)?,
            },
            max_retries: match max_retries {
                Some(0) => None,
                Some(n) => Some(n),
                None => d.max_retries,
            },
            drain_timeout: config.duration_or("drain_timeout", d.drain_timeout)?,
        })
    }
}

/// Records read but not yet sent, for one ordering lane.
struct Pending {
    messages: Vec<Message>,
    /// Read positions of `messages`.
    positions: Vec<u64>,
    /// What `messages` take in a call ([`encoded_len`]).
    bytes: u64,
    since: Instant,
}

/// Whether a batch of `lane` may be sent: no other batch of that ordering lane is in flight.
fn lane_free(busy_lanes: &HashSet<u64>, lane: &Option<u64>) -> bool {
    lane.is_none_or(|l| !busy_lanes.contains(&l))
}

/// About what a record takes in a `deliver` call: its bytes (the payload in the wire form, where
/// each byte from `0x80` takes two) and a little for each length prefix.
pub(crate) fn encoded_len(message: &Message) -> u64 {
    let headers: usize = message.headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let key = message.key.as_ref().map_or(0, |k| k.len());
    (message.wire_payload_len() + key + headers + message.origin.len() + 24) as u64
}

/// The one acknowledgement call of a link in flight, and how many records it covers.
struct AckCall {
    records: usize,
    call: Pin<Box<dyn Future<Output = Result<(), ConnectorError>> + Send>>,
}

impl AckCall {
    fn start<R: SourceReader>(reader: &mut R, acks: Vec<R::Ack>) -> Self {
        Self {
            records: acks.len(),
            call: Box::pin(reader.ack(acks)),
        }
    }
}

fn acknowledged(link: &LinkKey, metrics: &LinkMetrics, records: usize, result: Result<(), ConnectorError>) {
    match result {
        Ok(()) => LinkMetrics::add(&metrics.acked, records),
        // Delivered all the same; a lost acknowledgement means they may come again.
        Err(err) => warn!(%link, error = %err, records, "acknowledgement failed"),
    }
}

/// Acknowledgement tokens of every record read and not yet acknowledged, in read order: the
/// front is released once it is done, so acknowledgements follow read order.
struct AckQueue<A> {
    /// Read position of the front entry.
    front: u64,
    entries: VecDeque<(A, bool)>,
}

impl<A> AckQueue<A> {
    fn push(&mut self, ack: A) -> u64 {
        self.entries.push_back((ack, false));
        self.front + self.entries.len() as u64 - 1
    }

    fn finish(&mut self, positions: &[u64]) {
        for p in positions {
            if let Some(entry) = self.entries.get_mut((p - self.front) as usize) {
                entry.1 = true;
            }
        }
    }

    /// Takes the done records at the front.
    fn release(&mut self) -> Vec<A> {
        let done = self.entries.iter().take_while(|(_, done)| *done).count();
        self.front += done as u64;
        self.entries.drain(..done).map(|(ack, _)| ack).collect()
    }
}

/// Runs one source link until `stop` is cancelled, then drains it.
///
/// Batches close at `max_batch_records`, `max_batch_bytes` or after `linger`; at most
/// `max_in_flight` are outstanding, and the reader is not polled while the next batch is full or
/// `max_in_flight * max_batch_records` records wait for acknowledgement. Records with an order key travel in a lane of their own (one batch in
/// flight per lane). Acknowledgements are released strictly in read order: a record is
/// acknowledged once it and every record read before it are done (accepted or dead-lettered).
/// One acknowledgement call is in flight at a time and the runner does not wait for it: what is
/// released meanwhile is acknowledged by the next call. Records whose acknowledgement has not
/// completed count against the unacknowledged bound, so a crash redelivers at most that many.
/// A batch with rejected records is done once the reader has [dead-lettered](SourceReader::dead_letter)
/// them: a failing write is retried with backoff as a task of its own while the other batches go
/// on, and the link shows as degraded meanwhile.
pub async fn run_source<R: SourceReader, I: Ingest>(
    link: LinkKey,
    mut reader: R,
    ingest: Arc<I>,
    settings: RunnerSettings,
    metrics: Arc<LinkMetrics>,
    stop: CancellationToken,
) {
    let lanes_count = settings.max_in_flight as u64;
    let max_unacked = settings.max_unacknowledged();
    // A batch must also fit one call of the transport (one NATS message: a host reading the rest
    // of a call's parameters may lose them, see `wrpc::nats`).
    let max_batch_bytes = settings
        .max_batch_bytes
        .min(ingest.max_batch_bytes().unwrap_or(u64::MAX));
    let is_full = |p: &Pending| p.messages.len() >= settings.max_batch_records || p.bytes >= max_batch_bytes;
    // Per lane, the batches read and not yet sent, oldest first: every one but the last is closed.
    let mut pending: HashMap<Option<u64>, VecDeque<Pending>> = HashMap::new();
    let closed = |q: &VecDeque<Pending>| q.len() > 1 || q.front().is_some_and(is_full);
    let mut busy_lanes: HashSet<u64> = HashSet::new();
    let mut acks = AckQueue {
        front: 0,
        entries: VecDeque::new(),
    };
    // Delivery tasks and dead-letter writes: a batch holds its slot and its lane until both are done.
    let mut inflight: JoinSet<Step> = JoinSet::new();
    let mut dead_letters = DeadLetterHealth::default();
    let mut acking: Option<AckCall> = None;
    let mut ack_waiting: Vec<R::Ack> = Vec::new();
    let mut poll_failures = 0u32;
    let mut poll_paused_until: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;

    loop {
        let stopping = drain_deadline.is_some();
        // Send every batch that is due and has a free slot, oldest first.
        let now = Instant::now();
        let mut due: Vec<Option<u64>> = pending
            .iter()
            .filter(|(lane, q)| {
                lane_free(&busy_lanes, lane)
                    && (closed(q) || stopping || q.front().is_some_and(|p| p.since + settings.linger <= now))
            })
            .map(|(lane, _)| *lane)
            .collect();
        due.sort_by_key(|lane| pending[lane].front().map(|p| p.since));
        for lane in due {
            if inflight.len() >= settings.max_in_flight {
                break;
            }
            let queue = pending.get_mut(&lane).expect("due lane is pending");
            let batch = queue.pop_front().expect("a pending lane has a batch");
            if queue.is_empty() {
                pending.remove(&lane);
            }
            if let Some(l) = lane {
                busy_lanes.insert(l);
            }
            let span = info_span!(
                "batch",
                component = %link.component,
                link = %link.name,
                records = batch.messages.len(),
                bytes = batch.bytes,
                outcome = tracing::field::Empty,
            );
            crate::trace::follow_records(&span, &batch.messages);
            let task = deliver_batch(
                Arc::clone(&ingest),
                batch.messages,
                settings.clone(),
                Arc::clone(&metrics),
            );
            let positions = batch.positions;
            inflight.spawn(
                async move {
                    Step::Delivered {
                        lane,
                        positions,
                        dead: task.await,
                    }
                }
                .instrument(span),
            );
        }

        if stopping && pending.is_empty() && inflight.is_empty() {
            break;
        }

        let paused = poll_paused_until.is_some_and(|t| t > now);
        // Records read but not yet acknowledged stay within the bound even behind one slow batch:
        // a poll asks for no more than the room left.
        let unacknowledged = acks.entries.len() + ack_waiting.len() + acking.as_ref().map_or(0, |a| a.records);
        let unacked_room = max_unacked.saturating_sub(unacknowledged);
        let can_poll = !stopping && !paused && unacked_room > 0 && !pending.values().any(closed);
        let largest = pending
            .values()
            .filter_map(|q| q.back().map(|p| p.messages.len()))
            .max()
            .unwrap_or(0);
        let room = settings
            .max_batch_records
            .saturating_sub(largest)
            .max(1)
            .min(unacked_room);
        // Only a batch that could be sent when its linger ends needs a timer: one waiting for a
        // busy lane or a free slot is woken by the delivery that frees them.
        let slot_free = inflight.len() < settings.max_in_flight;
        let wake_at = pending
            .iter()
            .filter(|(lane, _)| slot_free && lane_free(&busy_lanes, lane))
            .filter_map(|(_, q)| q.front().map(|p| p.since + settings.linger))
            .chain(poll_paused_until.filter(|_| paused))
            .chain(drain_deadline)
            .min();

        tokio::select! {
            biased;
            () = stop.cancelled(), if !stopping => {
                debug!(%link, "stopping: draining in-flight batches");
                drain_deadline = Some(Instant::now() + settings.drain_timeout);
            }
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                let (lane, positions) = match joined {
                    Ok(Step::Delivered { lane, positions, dead }) if !dead.is_empty() => {
                        // The batch is done once its rejected records are stored: until then it
                        // keeps its slot and lane, and what was read after it stays unacknowledged.
                        let write = reader.dead_letter(dead.clone());
                        inflight.spawn(dead_letter(lane, positions, dead, 1, Duration::ZERO, write));
                        continue;
                    }
                    Ok(Step::Delivered { lane, positions, .. }) => (lane, positions),
                    Ok(Step::DeadLettered { lane, positions, dead, attempt, result: Ok(()) }) => {
                        LinkMetrics::add(&metrics.dead_lettered, dead.len());
                        dead_letters.stored(&link, &metrics, attempt);
                        (lane, positions)
                    }
                    Ok(Step::DeadLettered { lane, positions, dead, attempt, result: Err(err) }) => {
                        dead_letters.failed(&link, &metrics, attempt, &err);
                        if stopping && attempt > 3 {
                            // Not stored anywhere: leave these records (and all read after them)
                            // unacknowledged, so the source system offers them again.
                            error!(%link, error = %err, records = dead.len(), "dead-letter failed while stopping; leaving the records unacknowledged");
                            if let Some(lane) = lane {
                                busy_lanes.remove(&lane);
                            }
                            continue;
                        }
                        let delay = settings.backoff.delay(attempt);
                        warn!(%link, error = %err, attempt, ?delay, "dead-letter failed; retrying while the other lanes go on");
                        let write = reader.dead_letter(dead.clone());
                        inflight.spawn(dead_letter(lane, positions, dead, attempt + 1, delay, write));
                        continue;
                    }
                    Err(err) => {
                        if !err.is_cancelled() {
                            error!(%link, %err, "delivery task failed");
                        }
                        continue;
                    }
                };
                if let Some(lane) = lane {
                    busy_lanes.remove(&lane);
                }
                acks.finish(&positions);
                let released = acks.release();
                reader.released(&released);
                ack_waiting.extend(released);
                if acking.is_none() && !ack_waiting.is_empty() {
                    acking = Some(AckCall::start(&mut reader, std::mem::take(&mut ack_waiting)));
                }
            }
            result = async { acking.as_mut().expect("guarded by is_some").call.as_mut().await }, if acking.is_some() => {
                let records = acking.take().map_or(0, |a| a.records);
                acknowledged(&link, &metrics, records, result);
                if !ack_waiting.is_empty() {
                    acking = Some(AckCall::start(&mut reader, std::mem::take(&mut ack_waiting)));
                }
            }
            () = sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => {
                if drain_deadline.is_some_and(|d| d <= Instant::now()) {
                    warn!(%link, unfinished = inflight.len(), "drain timed out; unfinished batches stay unacknowledged");
                    break;
                }
            }
            polled = reader.poll(room), if can_poll => match polled {
                Ok(records) => {
                    poll_failures = 0;
                    poll_paused_until = None;
                    LinkMetrics::add(&metrics.polled, records.len());
                    for record in records {
                        let lane = record.order_key.map(|k| k % lanes_count);
                        let bytes = encoded_len(&record.message);
                        let queue = pending.entry(lane).or_default();
                        let starts_batch = queue
                            .back()
                            .is_none_or(|p| is_full(p) || (!p.messages.is_empty() && p.bytes + bytes > max_batch_bytes));
                        if starts_batch {
                            queue.push_back(Pending {
                                messages: Vec::new(),
                                positions: Vec::new(),
                                bytes: 0,
                                since: Instant::now(),
                            });
                        }
                        let p = queue.back_mut().expect("a batch was just made");
                        p.bytes += bytes;
                        p.messages.push(record.message);
                        p.positions.push(acks.push(record.ack));
                    }
                }
                Err(err) => {
                    poll_failures += 1;
                    let delay = settings.backoff.delay(poll_failures);
                    warn!(%link, error = %err, ?delay, "reading the source failed; retrying");
                    poll_paused_until = Some(Instant::now() + delay);
                }
            },
        }
    }
    inflight.abort_all();
    // What was released is done: acknowledge it before closing.
    if let Some(call) = acking.take() {
        acknowledged(&link, &metrics, call.records, call.call.await);
    }
    if !ack_waiting.is_empty() {
        let call = AckCall::start(&mut reader, ack_waiting);
        acknowledged(&link, &metrics, call.records, call.call.await);
    }
    reader.close().await;
    debug!(%link, unacknowledged = acks.entries.len(), "source link stopped");
}

/// A batch's step finished in the runner's task set.
enum Step {
    /// Its delivery ended; `dead` holds the records to dead-letter, with reasons.
    Delivered {
        lane: Option<u64>,
        positions: Vec<u64>,
        dead: Vec<(Message, String)>,
    },
    /// Attempt number `attempt` to store its dead letters ended with `result`.
    DeadLettered {
        lane: Option<u64>,
        positions: Vec<u64>,
        dead: Vec<(Message, String)>,
        attempt: u32,
        result: Result<(), ConnectorError>,
    },
}

/// Waits `delay` (the backoff before a retry), then runs one dead-letter `write` of a batch's
/// rejected records.
async fn dead_letter(
    lane: Option<u64>,
    positions: Vec<u64>,
    dead: Vec<(Message, String)>,
    attempt: u32,
    delay: Duration,
    write: impl Future<Output = Result<(), ConnectorError>>,
) -> Step {
    tokio::time::sleep(delay).await;
    let result = write.await;
    Step::DeadLettered {
        lane,
        positions,
        dead,
        attempt,
        result,
    }
}

/// Which batches of a link are waiting for a dead-letter write that failed: while any is, the
/// link shows as [degraded](LinkHealth::Degraded) with the last error, and it is healthy again once
/// every one of them has been stored.
#[derive(Default)]
struct DeadLetterHealth {
    failing: usize,
}

impl DeadLetterHealth {
    /// Attempt number `attempt` of a batch's dead-letter write failed with `err`.
    fn failed(&mut self, link: &LinkKey, metrics: &LinkMetrics, attempt: u32, err: &ConnectorError) {
        if attempt == 1 {
            self.failing += 1;
        }
        if self.failing == 1 && attempt == 1 {
            warn!(%link, error = %err, "link degraded: dead-letter writes are failing");
        }
        metrics.set_health(LinkHealth::Degraded(format!(
            "dead-letter writes failing ({} batches waiting): {err}",
            self.failing
        )));
    }

    /// Attempt number `attempt` of a batch's dead-letter write succeeded.
    fn stored(&mut self, link: &LinkKey, metrics: &LinkMetrics, attempt: u32) {
        if attempt == 1 {
            return;
        }
        self.failing = self.failing.saturating_sub(1);
        if self.failing == 0 {
            info!(%link, "dead-letter writes succeed again");
            metrics.set_health(LinkHealth::Ok);
        }
    }
}

/// The outcome of one `deliver` call.
pub(crate) enum Attempt {
    /// The component accepted the whole batch.
    Delivered,
    /// The component rejected these records (valid indices only, with reasons); it accepted the rest.
    Rejected(BTreeMap<usize, String>),
    /// The whole batch is to be offered again (some of it may have been kept already: at-least-once):
    /// a `retry` answer, a transport error or no answer in time.
    Failed(String),
}

/// Calls `deliver` once with a deadline of `limit`, counts what the component accepted and
/// rejected, and records the outcome on the current span. Shared by the polling runner and
/// [`crate::request::Slot::deliver`].
pub(crate) async fn attempt<I: Ingest + ?Sized>(
    ingest: &I,
    messages: &[Message],
    limit: Duration,
    metrics: &LinkMetrics,
) -> Attempt {
    let span = tracing::Span::current();
    match timeout(limit, ingest.deliver(messages)).await {
        Ok(Ok(Ok(()))) => {
            LinkMetrics::add(&metrics.delivered, messages.len());
            span.record("outcome", "delivered");
            Attempt::Delivered
        }
        Ok(Ok(Err(Failure::Reject(rejected)))) => {
            let mut reasons: BTreeMap<usize, String> = BTreeMap::new();
            for r in rejected {
                let index = r.index as usize;
                if index < messages.len() {
                    reasons.insert(index, r.reason);
                } else {
                    warn!(
                        index,
                        records = messages.len(),
                        "component rejected a record index outside the batch"
                    );
                }
            }
            LinkMetrics::add(&metrics.rejected, reasons.len());
            LinkMetrics::add(&metrics.delivered, messages.len() - reasons.len());
            span.record("outcome", "rejected");
            Attempt::Rejected(reasons)
        }
        Ok(Ok(Err(Failure::Retry(reason)))) => Attempt::Failed(format!("component asked to retry: {reason}")),
        Ok(Err(err)) => Attempt::Failed(format!("delivery failed: {err:#}")),
        Err(_) => Attempt::Failed(format!("no answer within {limit:?}")),
    }
}

/// Delivers one batch until it is accepted, rejected, out of retries, or the link's drain ends.
/// Returns the records to dead-letter, with reasons.
async fn deliver_batch<I: Ingest>(
    ingest: Arc<I>,
    mut messages: Vec<Message>,
    settings: RunnerSettings,
    metrics: Arc<LinkMetrics>,
) -> Vec<(Message, String)> {
    let _gauge = InFlight::enter(&metrics.in_flight);
    let span = tracing::Span::current();
    let mut attempts = 0u32;
    loop {
        let reason = match attempt(&*ingest, &messages, settings.deliver_timeout, &metrics).await {
            Attempt::Delivered => return Vec::new(),
            Attempt::Rejected(reasons) => {
                let mut dead = Vec::with_capacity(reasons.len());
                for (index, reason) in reasons.into_iter().rev() {
                    dead.push((messages.swap_remove(index), reason));
                }
                dead.reverse();
                return dead;
            }
            Attempt::Failed(reason) => reason,
        };
        attempts += 1;
        metrics.retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if settings.max_retries.is_some_and(|max| attempts > max) {
            span.record("outcome", "retries exhausted");
            warn!(%reason, attempts, "batch out of retries; dead-lettering it");
            let reason = format!("out of retries after {attempts} attempts: {reason}");
            return messages.into_iter().map(|m| (m, reason.clone())).collect();
        }
        let delay = settings.backoff.delay(attempts);
        if attempts == 1 {
            warn!(%reason, ?delay, "batch not accepted; retrying");
        } else {
            debug!(%reason, attempt = attempts, ?delay, "retrying batch");
        }
        // While draining, this keeps trying until the drain deadline aborts the task.
        tokio::time::sleep(delay).await;
    }
}

/// What the engine gives a source link it starts.
#[derive(Debug)]
pub struct LinkStart<I> {
    /// The link.
    pub link: LinkKey,
    /// The way to the linked component.
    pub ingest: Arc<I>,
    /// The link's engine settings.
    pub settings: RunnerSettings,
    /// The link's counters (in the status reply).
    pub metrics: Arc<LinkMetrics>,
    /// Cancelled when the link is deleted or the provider stops.
    pub stop: CancellationToken,
    /// The link's lease when it must have one reader across the provider's instances
    /// ([`SourceSide::single_reader`]) and the provider runs with leases: the link is read only
    /// while it is held.
    pub lease: Option<crate::lease::Lease>,
}

/// The source side of a provider as the engine runs it: every [`SourceConnector`] (its links are
/// read by the polling [runner](run_source)) and every request-driven source wrapped in
/// [`crate::request::Requests`] (its links are driven by callers waiting for the answer).
///
/// Connectors implement [`SourceConnector`] or [`crate::request::RequestSource`], not this.
pub trait SourceSide: Send + Sync + 'static {
    /// The connector's typed config for one link.
    type Config: Send + 'static;

    /// `false` for [`crate::Unsupported`]: the provider refuses links in this role.
    const ENABLED: bool = true;

    /// The engine settings a link gets for keys its config leaves out.
    fn runner_defaults(&self) -> RunnerSettings {
        RunnerSettings::default()
    }

    /// Parses a link's config. Keys the engine itself reads are already taken.
    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Self::Config, ConfigError>;

    /// Whether a link must have one reader at a time across the provider's instances
    /// ([`SourceConnector::single_reader`]). The default is `false`.
    fn single_reader(&self, config: &Self::Config) -> bool {
        let _ = config;
        false
    }

    /// Checks a link's config against its system without taking what a running link of the same
    /// key holds. When a link is put again the engine calls it before it stops the running link,
    /// which keeps running if this fails. An `Ok` does not promise that [`start`](Self::start)
    /// succeeds: what only opening can tell (e.g. a consumer group refusing the member) still
    /// refuses the new link, after the old one stopped. The default checks nothing.
    fn check(&self, link: &LinkKey, config: &Self::Config) -> impl Future<Output = Result<(), LinkErrorReason>> + Send {
        let _ = (link, config);
        async { Ok(()) }
    }

    /// Opens a link and returns what serves it: a future that runs until `link.stop` is
    /// cancelled, then drains the link (within `settings.drain_timeout`) and returns. An error
    /// refuses the link.
    ///
    /// A connector whose system cannot be reached yet (a [transient](ConnectorError::is_transient)
    /// error) is not refused: the link is reported degraded ([`LinkHealth::Degraded`]) and the
    /// returned future keeps trying to open it until it can, or until it fails for good
    /// ([`LinkHealth::Refused`]).
    fn start<I: Ingest>(
        self: Arc<Self>,
        config: Self::Config,
        link: LinkStart<I>,
    ) -> impl Future<Output = Result<futures::future::BoxFuture<'static, ()>, LinkErrorReason>> + Send;

    /// Called when the provider stops, after every link has stopped (possibly more than once).
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl<S: SourceConnector> SourceSide for S {
    type Config = S::Config;
    const ENABLED: bool = S::ENABLED;

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<Self::Config, ConfigError> {
        SourceConnector::parse_config(self, config)
    }

    fn single_reader(&self, config: &Self::Config) -> bool {
        SourceConnector::single_reader(self, config)
    }

    /// [`SourceConnector::check`], tried a few times while it fails transiently. A transient error
    /// passes: the system may be down for the running link too, and the new one then waits for
    /// it degraded, as on a first put.
    async fn check(&self, link: &LinkKey, config: &Self::Config) -> Result<(), LinkErrorReason> {
        match open_with_retry(link, Role::Source, || SourceConnector::check(self, link, config)).await {
            Err(error) if !error.is_transient() => Err(LinkErrorReason::Open(error)),
            _ => Ok(()),
        }
    }

    async fn start<I: Ingest>(
        self: Arc<Self>,
        config: Self::Config,
        mut l: LinkStart<I>,
    ) -> Result<futures::future::BoxFuture<'static, ()>, LinkErrorReason> {
        if let Some(lease) = l.lease.take() {
            // A config the system refuses for good is refused now, not once the lease is held.
            SourceSide::check(&*self, &l.link, &config).await?;
            return crate::lease::serve_leased(lease, l, move |l| start_reader(Arc::clone(&self), config.clone(), l))
                .await;
        }
        start_reader(self, config, l).await
    }
}

/// Opens a link's reader and returns the runner that reads it (or, while its system cannot be
/// reached, a task that keeps opening it first).
async fn start_reader<S: SourceConnector, I: Ingest>(
    connector: Arc<S>,
    config: S::Config,
    l: LinkStart<I>,
) -> Result<futures::future::BoxFuture<'static, ()>, LinkErrorReason> {
    let reader = match open_with_retry(&l.link, Role::Source, || check_and_open(&*connector, &l.link, &config)).await {
        Ok(reader) => reader,
        Err(error) if error.is_transient() => {
            warn!(link = %l.link, %error, "source link degraded: cannot connect yet; trying on in the background");
            l.metrics.set_health(LinkHealth::Degraded(error.to_string()));
            return Ok(Box::pin(async move {
                let LinkStart {
                    link,
                    ingest,
                    settings,
                    metrics,
                    stop,
                    ..
                } = l;
                let opened = tokio::select! {
                    () = stop.cancelled() => return,
                    opened = keep_opening(
                        &link,
                        Role::Source,
                        || check_and_open(&*connector, &link, &config),
                        |error| metrics.set_health(LinkHealth::Degraded(error.to_string())),
                    ) => opened,
                };
                match opened {
                    Ok(reader) => {
                        metrics.set_health(LinkHealth::Ok);
                        info!(%link, "source link connected");
                        run_source(link, reader, ingest, settings, metrics, stop).await;
                    }
                    Err(error) => {
                        let refused = LinkError {
                            key: link,
                            role: Role::Source,
                            reason: LinkErrorReason::Open(error),
                        };
                        tracing::error!(error = %refused, "link refused");
                        metrics.set_health(LinkHealth::Refused(refused.to_string()));
                    }
                }
            }));
        }
        Err(error) => return Err(LinkErrorReason::Open(error)),
    };
    Ok(Box::pin(run_source(
        l.link, reader, l.ingest, l.settings, l.metrics, l.stop,
    )))
}

/// [`SourceConnector::check`], then [`SourceConnector::open`].
async fn check_and_open<S: SourceConnector>(
    connector: &S,
    link: &LinkKey,
    config: &S::Config,
) -> Result<S::Reader, ConnectorError> {
    SourceConnector::check(connector, link, config).await?;
    connector.open(link, config.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_counts_its_payload_in_the_wire_form() {
        let ascii = Message::new(vec![b'x'; 100], "o");
        let high = Message::new(vec![0xff; 100], "o");
        assert_eq!(encoded_len(&ascii), 100 + 1 + 24);
        assert_eq!(encoded_len(&high), 200 + 1 + 24);
    }
}
