//! wRPC over NATS that never loses a reply.
//!
//! This speaks the wire protocol of `wrpc-transport-nats` (so a wasmCloud 1.x host and its
//! components are ordinary peers) for functions whose parameters and results are plain values,
//! which is every function of `sluice:pipeline`; nested (async) streams are refused.
//!
//! Why not `wrpc-transport-nats` 0.29, the version the wasmCloud 1.x SDK is built on: it registers
//! each reply subscription by sending a command to a demultiplexing task that polls the command
//! channel and the inbox in random order, so a reply could be routed before its subscription
//! existed and was dropped; the call then hung until its deadline (fixed upstream, wRPC pull
//! request 1272, in releases the 1.x SDK cannot use). Here every route is in the table before the
//! message that provokes its reply is published.
//!
//! One exchange, for a call on `{prefix}.wrpc.0.0.1.{instance}.{func}`:
//! 1. the caller publishes the invocation there with as much of the encoded parameters as fits one
//!    message, and its reply subject `R`;
//! 2. the server answers on `R` with an empty message whose reply subject is its own `S`;
//! 3. the caller sends the rest of the parameters to `S.params`, then an empty message (the end);
//! 4. the server sends the results to `R.results`, then an empty message.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use anyhow::{bail, ensure, Context as _};
use async_nats::{HeaderMap, PublishMessage, StatusCode, Subject};
use bytes::Bytes;
use futures::{Sink as _, Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tracing::{debug, trace};

/// The protocol segment of every invocation subject.
const PROTOCOL: &str = "wrpc.0.0.1";

/// The subject a function is served on: `{prefix}.wrpc.0.0.1.{instance}.{func}`.
#[must_use]
pub fn invocation_subject(prefix: &str, instance: &str, func: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + PROTOCOL.len() + instance.len() + func.len() + 3);
    if !prefix.is_empty() {
        subject.push_str(prefix);
        subject.push('.');
    }
    subject.push_str(PROTOCOL);
    subject.push('.');
    if !instance.is_empty() {
        subject.push_str(instance);
        subject.push('.');
    }
    subject.push_str(func);
    subject
}

/// A wRPC client and server on one NATS connection: calls functions served under `prefix`
/// ([`wrpc_transport::Invoke`]) and serves functions under `prefix`
/// ([`wrpc_transport::Serve`]), optionally in a queue group.
///
/// Clones and [`Client::with_prefix`] share one inbox subscription and its routing table.
#[derive(Clone)]
pub struct Client {
    inbox: Arc<Inbox>,
    prefix: Arc<str>,
    queue_group: Option<Arc<str>>,
    headers: HeaderMap,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("prefix", &self.prefix)
            .field("queue_group", &self.queue_group)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Subscribes to a fresh inbox on `nats` and routes what arrives there.
    ///
    /// # Errors
    /// When the inbox subscription fails (the connection is closed).
    pub async fn new(
        nats: async_nats::Client,
        prefix: impl Into<Arc<str>>,
        queue_group: Option<Arc<str>>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inbox: Arc::new(Inbox::subscribe(nats).await?),
            prefix: prefix.into(),
            queue_group,
            headers: HeaderMap::new(),
        })
    }

    /// The same connection and inbox, calling and serving under another prefix.
    #[must_use]
    pub fn with_prefix(&self, prefix: impl Into<Arc<str>>) -> Self {
        Self {
            prefix: prefix.into(),
            ..self.clone()
        }
    }

    /// The most parameter bytes a call can carry in its invocation message alone: the server's
    /// `max_payload` less room for the reply subject and headers. A wasmCloud 1.x host reads
    /// the rest of a larger call's parameters through a subscription that may lose them (see
    /// [`HandshakeRepeater`]), so callers keep batches within this.
    #[must_use]
    pub fn max_call_bytes(&self) -> u64 {
        const ROOM_FOR_SUBJECT_AND_HEADERS: usize = 8 << 10;
        let max = self.inbox.nats.server_info().max_payload;
        max.saturating_sub(ROOM_FOR_SUBJECT_AND_HEADERS).max(max / 2) as u64
    }

    /// Sends header `name: value` with every call, unless the call's own headers carry `name`.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// One wildcard subscription on `{inbox}.>` and the table that routes its messages to calls.
struct Inbox {
    nats: async_nats::Client,
    inbox: String,
    next: AtomicU64,
    routes: Arc<Routes>,
    demux: tokio::task::JoinHandle<()>,
}

type Routes = Mutex<HashMap<String, mpsc::UnboundedSender<async_nats::Message>>>;

impl Inbox {
    async fn subscribe(nats: async_nats::Client) -> anyhow::Result<Self> {
        let inbox = nats.new_inbox();
        let mut messages = nats
            .subscribe(format!("{inbox}.>"))
            .await
            .context("failed to subscribe to the wRPC inbox")?;
        let routes = Arc::new(Routes::default());
        let demux = tokio::spawn({
            let routes = Arc::clone(&routes);
            async move {
                while let Some(msg) = messages.next().await {
                    let mut routes = routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match routes.get(msg.subject.as_str()) {
                        Some(route) => {
                            if let Err(mpsc::error::SendError(msg)) = route.send(msg) {
                                routes.remove(msg.subject.as_str());
                            }
                        }
                        None => debug!(subject = %msg.subject, "wRPC message for no call: dropped"),
                    }
                }
            }
        });
        Ok(Self {
            nats,
            inbox,
            next: AtomicU64::new(0),
            routes,
            demux,
        })
    }

    /// A subject under this inbox no call has used.
    fn fresh_subject(&self) -> String {
        format!("{}.{}", self.inbox, self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Routes messages on `subject` to the returned [`Route`] from now until it is dropped.
    fn route(&self, subject: String) -> Route {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(subject.clone(), tx);
        Route {
            subject,
            rx,
            routes: Arc::clone(&self.routes),
        }
    }

    /// The most payload one message may carry after `reply` and `headers`.
    fn max_payload(&self, reply: &str, headers: &HeaderMap) -> usize {
        let header_bytes: usize = headers
            .iter()
            .map(|(name, values)| {
                let name: &[u8] = name.as_ref();
                values.iter().map(|v| name.len() + v.as_str().len() + 4).sum::<usize>()
            })
            .sum();
        self.nats
            .server_info()
            .max_payload
            .saturating_sub(reply.len())
            .saturating_sub(header_bytes + b"NATS/1.0\r\n\r\n".len())
            .max(1)
    }

    /// Answers an invocation: routes `S.params`, then tells the caller `S`, again and again
    /// until the caller is heard on `S.params` (see [`HandshakeRepeater`]).
    async fn accept(&self, invocation: async_nats::Message) -> anyhow::Result<(Option<HeaderMap>, Writer, Reader)> {
        let reply = invocation.reply.context("wRPC invocation without a reply subject")?;
        let own = self.fresh_subject();
        let params = self.route(format!("{own}.params"));
        self.nats
            .publish_with_reply(reply.clone(), own.clone(), Bytes::new())
            .await
            .context("failed to answer the wRPC handshake")?;
        let params = HandshakeRepeater {
            nats: self.nats.clone(),
            caller: Subject::from(reply.to_string()),
            own: Subject::from(own),
        }
        .spawn(params);
        Ok((
            invocation.headers,
            Writer::new(self.nats.clone(), format!("{reply}.results")),
            Reader::new(invocation.payload, params),
        ))
    }
}

/// Repeats a server's handshake answer until the caller shows it arrived, by sending on the
/// server's `S.params` (the rest of its parameters, or the empty message that ends them).
///
/// A wasmCloud 1.x host calls providers with `wrpc-transport-nats` 0.29, whose inbox task may
/// route a message before it has registered the call's subscription, and then drops it. When the
/// dropped message is the handshake, the host never sends the end of the parameters and waits for
/// the handshake until the component's `max_execution_time` (10 minutes by default): the
/// invocation holds one of the component's instances all that time, and with `instances: 1` the
/// whole pipeline stops. A repeated handshake arrives once the subscription exists; a caller that
/// already has one ignores the others (its handshake subscription is gone).
struct HandshakeRepeater {
    nats: async_nats::Client,
    caller: Subject,
    own: Subject,
}

impl HandshakeRepeater {
    /// First repeat, after the handshake went out.
    const FIRST: std::time::Duration = std::time::Duration::from_millis(50);
    /// Most time between repeats.
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);
    /// How long a caller that stays silent is answered: a caller that died mid-call is given up.
    const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(120);

    /// Forwards the messages of `params` to the returned receiver, repeating the handshake until
    /// the first of them arrives. Ends at the end of the parameters, or when nobody reads them
    /// any more and the caller has been heard (or given up).
    fn spawn(self, mut params: Route) -> mpsc::UnboundedReceiver<async_nats::Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut delay = Self::FIRST;
            // Until the caller is heard: repeat the handshake, keep what arrives.
            let first = loop {
                tokio::select! {
                    msg = params.rx.recv() => break msg,
                    () = tokio::time::sleep(delay) => {
                        if started.elapsed() >= Self::GIVE_UP {
                            debug!(caller = %self.caller, "wRPC caller never sent its parameters: given up");
                            return;
                        }
                        trace!(caller = %self.caller, "repeating the wRPC handshake");
                        if let Err(err) = self.nats.publish_with_reply(self.caller.clone(), self.own.clone(), Bytes::new()).await {
                            debug!(%err, "failed to repeat the wRPC handshake");
                            return;
                        }
                        delay = (delay * 2).min(Self::MAX);
                    }
                }
            };
            let mut next = first;
            // Then forward the parameters to their reader until they end.
            while let Some(msg) = next {
                let end = msg.payload.is_empty();
                if tx.send(msg).is_err() || end {
                    return;
                }
                next = tokio::select! {
                    msg = params.rx.recv() => msg,
                    () = tx.closed() => return,
                };
            }
        });
        rx
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.demux.abort();
    }
}

/// Messages on one subject of the inbox, until dropped.
struct Route {
    subject: String,
    rx: mpsc::UnboundedReceiver<async_nats::Message>,
    routes: Arc<Routes>,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.subject);
    }
}

impl wrpc_transport::Invoke for Client {
    type Context = Option<HeaderMap>;
    type Outgoing = Writer;
    type Incoming = Reader;

    async fn invoke<P: AsRef<[Option<usize>]> + Send + Sync>(
        &self,
        cx: Self::Context,
        instance: &str,
        func: &str,
        mut params: Bytes,
        paths: impl AsRef<[P]> + Send,
    ) -> anyhow::Result<(Writer, Reader)> {
        ensure!(
            paths.as_ref().is_empty(),
            "{instance}.{func}: nested wRPC streams are not supported by this transport"
        );
        let mut headers = cx.unwrap_or_default();
        for (name, values) in self.headers.iter() {
            if headers.get(name.clone()).is_none() {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let subject = invocation_subject(&self.prefix, instance, func);
        let reply = self.inbox.fresh_subject();
        // Both routes exist before the invocation leaves, so no answer can miss them.
        let mut handshake = self.inbox.route(reply.clone());
        let results = self.inbox.route(format!("{reply}.results"));
        let first = params.split_to(self.inbox.max_payload(&reply, &headers).min(params.len()));
        trace!(subject, bytes = first.len(), "wRPC invocation");
        self.inbox
            .nats
            .publish_with_reply_and_headers(subject.clone(), reply, headers, first)
            .await
            .with_context(|| format!("failed to publish the invocation on {subject}"))?;

        let answer = handshake
            .rx
            .recv()
            .await
            .context("the NATS connection closed during a wRPC call")?;
        match answer.status {
            Some(StatusCode::NO_RESPONDERS) => bail!("no one serves {subject}"),
            Some(code) if !code.is_success() => bail!("{subject} answered with status {code}"),
            _ => {}
        }
        let server = answer
            .reply
            .with_context(|| format!("{subject}: the handshake carried no reply subject"))?;
        let mut outgoing = Writer::new(self.inbox.nats.clone(), format!("{server}.params"));
        if !params.is_empty() {
            outgoing.publish_all(params).await?;
        }
        Ok((outgoing, Reader::new(Bytes::new(), results)))
    }
}

impl wrpc_transport::Serve for Client {
    type Context = Option<HeaderMap>;
    type Outgoing = Writer;
    type Incoming = Reader;

    async fn serve(
        &self,
        instance: &str,
        func: &str,
        paths: impl Into<Arc<[Box<[Option<usize>]>]>> + Send,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<(Self::Context, Writer, Reader)>> + Send + 'static> {
        let paths = paths.into();
        ensure!(
            paths.is_empty(),
            "{instance}.{func}: nested wRPC streams are not supported by this transport"
        );
        let subject = invocation_subject(&self.prefix, instance, func);
        let nats = &self.inbox.nats;
        let invocations = match &self.queue_group {
            Some(group) => nats.queue_subscribe(subject.clone(), group.to_string()).await,
            None => nats.subscribe(subject.clone()).await,
        }
        .with_context(|| format!("failed to subscribe to {subject}"))?;
        let inbox = Arc::clone(&self.inbox);
        Ok(invocations.then(move |invocation| {
            let inbox = Arc::clone(&inbox);
            async move { inbox.accept(invocation).await }
        }))
    }
}

/// The incoming half of a call: the bytes that came with the invocation, then each message on
/// the call's route until an empty one.
pub struct Reader {
    buffer: Bytes,
    incoming: Option<Incoming>,
}

/// Where the rest of a call's stream arrives: its route, or a task forwarding from it.
enum Incoming {
    Route(Route),
    Forwarded(mpsc::UnboundedReceiver<async_nats::Message>),
}

impl Incoming {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<async_nats::Message>> {
        match self {
            Self::Route(route) => route.rx.poll_recv(cx),
            Self::Forwarded(rx) => rx.poll_recv(cx),
        }
    }
}

impl From<Route> for Incoming {
    fn from(route: Route) -> Self {
        Self::Route(route)
    }
}

impl From<mpsc::UnboundedReceiver<async_nats::Message>> for Incoming {
    fn from(rx: mpsc::UnboundedReceiver<async_nats::Message>) -> Self {
        Self::Forwarded(rx)
    }
}

impl Reader {
    fn new(buffer: Bytes, incoming: impl Into<Incoming>) -> Self {
        Self {
            buffer,
            incoming: Some(incoming.into()),
        }
    }
}

impl wrpc_transport::Index<Self> for Reader {
    fn index(&self, path: &[usize]) -> anyhow::Result<Self> {
        bail!("nested wRPC stream {path:?}: not supported by this transport")
    }
}

impl AsyncRead for Reader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.buffer.is_empty() {
            let Some(incoming) = self.incoming.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(incoming.poll_recv(cx)) {
                Some(msg) if !msg.payload.is_empty() => self.buffer = msg.payload,
                // An empty message ends the stream; so does a closed connection.
                _ => {
                    self.incoming = None;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let n = self.buffer.len().min(buf.remaining());
        buf.put_slice(&self.buffer.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// The outgoing half of a call: publishes what is written to one subject, at most
/// `max_payload` bytes a message, and an empty message at shutdown (or when dropped).
pub struct Writer {
    nats: async_nats::Client,
    subject: Subject,
    shut: bool,
}

impl Writer {
    fn new(nats: async_nats::Client, subject: String) -> Self {
        Self {
            nats,
            subject: Subject::from(subject),
            shut: false,
        }
    }

    async fn publish_all(&mut self, mut bytes: Bytes) -> anyhow::Result<()> {
        let max = self.nats.server_info().max_payload.max(1);
        while !bytes.is_empty() {
            let chunk = bytes.split_to(max.min(bytes.len()));
            self.nats
                .publish(self.subject.clone(), chunk)
                .await
                .with_context(|| format!("failed to publish on {}", self.subject))?;
        }
        Ok(())
    }
}

fn broken_pipe(err: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, err)
}

impl wrpc_transport::Index<Self> for Writer {
    fn index(&self, path: &[usize]) -> anyhow::Result<Self> {
        bail!("nested wRPC stream {path:?}: not supported by this transport")
    }
}

impl AsyncWrite for Writer {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        ready!(Pin::new(&mut self.nats).poll_ready(cx)).map_err(broken_pipe)?;
        let n = buf.len().min(self.nats.server_info().max_payload.max(1));
        let message = PublishMessage {
            subject: self.subject.clone(),
            payload: Bytes::copy_from_slice(&buf[..n]),
            reply: None,
            headers: None,
        };
        Pin::new(&mut self.nats).start_send(message).map_err(broken_pipe)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.nats).poll_flush(cx).map_err(broken_pipe)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.shut {
            ready!(Pin::new(&mut self.nats).poll_ready(cx)).map_err(broken_pipe)?;
            let end = PublishMessage {
                subject: self.subject.clone(),
                payload: Bytes::new(),
                reply: None,
                headers: None,
            };
            Pin::new(&mut self.nats).start_send(end).map_err(broken_pipe)?;
            self.shut = true;
        }
        self.poll_flush(cx)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The peer waits for the end of the stream; tell it even when a call was abandoned.
        if !self.shut {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (nats, subject) = (self.nats.clone(), self.subject.clone());
                runtime.spawn(async move {
                    if let Err(err) = nats.publish(subject, Bytes::new()).await {
                        debug!(%err, "failed to end an abandoned wRPC stream");
                    }
                });
            }
        }
    }
}
