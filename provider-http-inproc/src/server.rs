//! The listener: accepts connections (plain or TLS), serves HTTP/1.1 and HTTP/2 with hyper, and
//! answers each request from the route table.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER, TRANSFER_ENCODING,
    WWW_AUTHENTICATE,
};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use sluice_provider_core::{Outcome, Secret, Slot};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{reserved, RouteConfig, ServerConfig, TlsFiles};
use crate::metrics::{render, RequestMetrics};
use crate::path::{normalize, PathError};
use crate::records::{request_id, to_records, RequestInfo};
use crate::router::{Lookup, Route, Router};

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on `{key}` {address}: {source}")]
    Bind {
        /// `address` or `metrics_address`.
        key: &'static str,
        /// The configured address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server's runtime could not start.
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The TLS files could not be used.
    #[error("cannot use `{key}` ({path}): {reason}")]
    Tls {
        /// `tls_cert_file` or `tls_key_file`.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What every connection shares.
struct Shared {
    router: Arc<Router>,
    unrouted: RequestMetrics,
}

/// The running listener.
///
/// Connections are served on a Tokio runtime of their own (`http_threads` workers), apart from
/// the provider's runtime, where the lattice connection and the wRPC reply routing run, so a
/// flood of connections does not delay the answers every request waits for.
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServerError> {
    let err = |key: &'static str, path: &std::path::Path, reason: String| ServerError::Tls {
        key,
        path: path.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(&files.cert).map_err(|e| err("tls_cert_file", &files.cert, e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("tls_cert_file", &files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err("tls_cert_file", &files.cert, "no certificate in the file".into()));
    }
    let key_pem = std::fs::read(&files.key).map_err(|e| err("tls_key_file", &files.key, e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| err("tls_key_file", &files.key, e.to_string()))?
        .ok_or_else(|| err("tls_key_file", &files.key, "no private key in the file".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls_cert_file", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err("tls_key_file", &files.key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Server {
    /// Binds `config.address` and serves `router` until [`Server::shutdown`], on a runtime of
    /// its own.
    pub fn start(config: &ServerConfig, router: Arc<Router>) -> Result<Self, ServerError> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let bind_err = |source| ServerError::Bind {
            key: "address",
            address: config.address,
            source,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.http_threads)
            .thread_name("http")
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let _entered = runtime.enter();
        let std_listener = std::net::TcpListener::bind(config.address).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = TcpListener::from_std(std_listener).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            router,
            unrouted: RequestMetrics::default(),
        });
        let metrics_addr = match config.metrics_address {
            Some(address) => {
                let bind_err = |source| ServerError::Bind {
                    key: "metrics_address",
                    address,
                    source,
                };
                let std_listener = std::net::TcpListener::bind(address).map_err(bind_err)?;
                std_listener.set_nonblocking(true).map_err(bind_err)?;
                let listener = TcpListener::from_std(std_listener).map_err(bind_err)?;
                let bound = listener.local_addr().map_err(bind_err)?;
                runtime.spawn(metrics_loop(listener, Arc::clone(&shared), stop.clone()));
                info!(%bound, "serving /metrics");
                Some(bound)
            }
            None => None,
        };
        let task = runtime.spawn(accept_loop(listener, tls, config.clone(), shared, stop.clone()));
        drop(_entered);
        info!(%local_addr, tls = config.tls.is_some(), "listening");
        Ok(Self {
            local_addr,
            metrics_addr,
            stop,
            task: Mutex::new(Some(task)),
            runtime: Some(runtime),
        })
    }

    /// Where the listener is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served (`metrics_address`), if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, lets open connections finish their current request (within
    /// `shutdown_timeout`), and returns. Safe to call more than once.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(task) = self.task.lock().await.take() {
            if let Err(err) = task.await {
                warn!(%err, "the listener task failed");
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: ServerConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("never closed"),
        };
        let Some((stream, peer)) = accept(&listener, &stop).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let service = service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
        });
        let builder = Arc::clone(&builder);
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(%peer, %err, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let handshake_timeout = config.header_timeout;
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            debug!(%peer, %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    if let Err(err) = watcher.watch(conn).await {
                        debug!(%peer, %err, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    info!("listener closed; finishing open connections");
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(timeout = ?config.shutdown_timeout, "open connections did not finish in time");
    }
}

/// The next connection, or `None` once `stop` is cancelled. A failed accept (out of file
/// descriptors and the like) is logged and followed by a short pause instead of a spin.
async fn accept(listener: &TcpListener, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(err) => {
                    warn!(%err, listener = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves `GET /metrics` (and nothing else) on the `metrics_address` listener until `stop`.
async fn metrics_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Some((stream, peer)) = accept(&listener, &stop).await else {
            return;
        };
        let shared = Arc::clone(&shared);
        let service = service_fn(move |req: Request<Incoming>| {
            let response = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                let mut response = Response::new(Full::new(Bytes::from(render(
                    &shared.router.routes(),
                    &shared.unrouted,
                ))));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                response
            } else {
                error(StatusCode::NOT_FOUND, "only GET /metrics is served here")
            };
            async move { Ok::<_, Infallible>(response) }
        });
        let builder = Arc::clone(&builder);
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(err) = result {
                        debug!(%peer, %err, "metrics connection ended with an error");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    respond(status, json!({ "error": message.into() }))
}

/// The request's host, lowercase and without port.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(host.to_ascii_lowercase())
}

/// Compares a request's bearer token with the route's in constant time (for equal lengths).
fn authorized(req: &Request<Incoming>, token: &Secret) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let expected = token.expose();
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let body_sent = has_body(&req);
    let mut response = route_and_serve(shared, req).await;
    if body_sent && response.extensions().get::<BodyRead>().is_none() {
        // An answer given without reading the whole body (refused before the body, or cut off):
        // the server does not read the rest, so the client must not send another request on
        // this connection. Without the header a pooling client reuses a connection the server
        // is about to close, and its next request fails with "incomplete message".
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Marks an answer given after the request's whole body was read: its connection may be reused.
#[derive(Debug, Clone, Copy)]
struct BodyRead;

/// Whether a request carries a body (declared by length or chunked).
fn has_body<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(TRANSFER_ENCODING) || declared_length(req.headers()).is_some_and(|n| n > 0)
}

/// The body length a request declares (`Content-Length`), if it declares one that parses.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

async fn route_and_serve(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = match normalize(req.uri().path()) {
        Ok(path) => path,
        Err(PathError::NotAbsolute) => {
            return unrouted(shared, StatusCode::NOT_FOUND, "no route for this path", started)
        }
        Err(refused) => return unrouted(shared, StatusCode::BAD_REQUEST, refused.to_string(), started),
    };
    if reserved(&path) {
        // Never a route's, whatever the method, even under a catch-all `/`.
        if req.method() == Method::GET && path.eq_ignore_ascii_case("/healthz") {
            return respond(StatusCode::OK, json!({ "status": "ok", "routes": shared.router.len() }));
        }
        return unrouted(shared, StatusCode::NOT_FOUND, "no route for this path", started);
    }
    let host = host_of(&req);
    let route = match shared.router.lookup(host.as_deref(), &path, req.method()) {
        Lookup::Found(route) => route,
        Lookup::MethodNotAllowed(allowed) => {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route");
            let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                response.headers_mut().insert(ALLOW, v);
            }
            shared.unrouted.observe(response.status(), started.elapsed());
            return response;
        }
        Lookup::NotFound => return unrouted(shared, StatusCode::NOT_FOUND, "no route for this path", started),
    };
    let _in_flight = route.metrics.enter();
    let id = request_id(req.headers());
    let mut response = serve(&route, req, &path, &id, started).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    route.metrics.observe(response.status(), started.elapsed());
    response
}

/// An error answer to a request no route took, counted as such.
fn unrouted(shared: &Shared, status: StatusCode, message: impl Into<String>, started: Instant) -> Response<Body> {
    let response = error(status, message);
    shared.unrouted.observe(response.status(), started.elapsed());
    response
}

/// Serves a routed request (`path`: its normal form): auth, limits, body, delivery, answer.
async fn serve(route: &Route, req: Request<Incoming>, path: &str, id: &str, started: Instant) -> Response<Body> {
    let config = &route.config;
    if let Some(token) = &config.token {
        if !authorized(&req, token) {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    if declared_length(req.headers()).is_some_and(|n| n > config.max_body) {
        return too_large(config.max_body);
    }
    let Some(slot) = route.delivery.try_reserve() else {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this route already serves {} requests",
                route.delivery.settings().max_in_flight
            ),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(config.max_body).unwrap_or(usize::MAX);
    let body = match tokio::time::timeout(config.body_timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => return too_large(config.max_body),
        Ok(Err(err)) => return error(StatusCode::BAD_REQUEST, format!("reading the body failed: {err}")),
        Err(_) => {
            let mut response = error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {:?}", config.body_timeout),
            );
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let mut response = answer(config, slot, &parts.headers, path, id, started, body).await;
    response.extensions_mut().insert(BodyRead);
    response
}

/// Answers a request whose whole `body` was read: records, delivery, outcome.
async fn answer(
    config: &RouteConfig,
    slot: Slot,
    headers: &HeaderMap,
    path: &str,
    id: &str,
    started: Instant,
    body: Bytes,
) -> Response<Body> {
    let timestamp_ms = sluice_provider_core::time::unix_ms();
    let info = RequestInfo {
        path,
        headers,
        id,
        timestamp_ms,
    };
    let records = match to_records(config, &info, body) {
        Ok(records) => records,
        Err(malformed) => return error(StatusCode::BAD_REQUEST, malformed.to_string()),
    };
    let count = records.len();
    if count == 0 {
        return respond(config.success, json!({ "accepted": 0, "request_id": id }));
    }
    let deadline = started + config.request_timeout;
    match slot.deliver(records, deadline).await {
        Outcome::Delivered => respond(config.success, json!({ "accepted": count, "request_id": id })),
        Outcome::Rejected(rejected) => respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "accepted": count - rejected.len(),
                "rejected": rejected.iter().map(|r| json!({ "index": r.index, "reason": r.reason })).collect::<Vec<_>>(),
                "request_id": id,
            }),
        ),
        Outcome::Retry { reason, retry_after } => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            response
        }
    }
}

fn too_large(max: u64) -> Response<Body> {
    let mut response = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than this route's limit of {max} bytes"),
    );
    // The rest of the body is not read: the connection cannot be reused.
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
