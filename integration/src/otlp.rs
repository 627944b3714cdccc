//! An OTLP/HTTP receiver on 127.0.0.1 for tests: it takes what OpenTelemetry exporters send to
//! `/v1/traces` and `/v1/metrics` (protobuf), keeps every span and every integer data point with
//! the service that sent it, and answers every signal (`/v1/logs` too) with an empty success.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use tokio::net::TcpListener;

/// A span as a receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The sender's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its trace, in hex.
    pub trace_id: String,
    /// Its id, in hex.
    pub span_id: String,
    /// Its parent's id, in hex (empty for a root).
    pub parent_span_id: String,
    /// The traces it links to, in hex.
    pub linked_traces: Vec<String>,
}

/// An integer data point (of a sum or a gauge) as a receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPoint {
    /// The sender's `service.name`.
    pub service: String,
    /// The metric's name.
    pub metric: String,
    /// The point's attributes, values as strings.
    pub attributes: BTreeMap<String, String>,
    /// Its value.
    pub value: i64,
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    points: Vec<ReceivedPoint>,
}

/// A running receiver; it stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    port: u16,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn service_of(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
        .map(|a| text(a.value.as_ref()))
        .unwrap_or_default()
}

fn attributes_of(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|a| (a.key.clone(), text(a.value.as_ref())))
        .collect()
}

fn spans_of(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource in &request.resource_spans {
        let service = service_of(resource.resource.as_ref());
        for scope in &resource.scope_spans {
            for span in &scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    linked_traces: span.links.iter().map(|l| hex(&l.trace_id)).collect(),
                });
            }
        }
    }
    out
}

fn points_of(request: &ExportMetricsServiceRequest) -> Vec<ReceivedPoint> {
    let mut out = Vec::new();
    for resource in &request.resource_metrics {
        let service = service_of(resource.resource.as_ref());
        for scope in &resource.scope_metrics {
            for metric in &scope.metrics {
                let points = match &metric.data {
                    Some(Data::Sum(sum)) => &sum.data_points,
                    Some(Data::Gauge(gauge)) => &gauge.data_points,
                    _ => continue,
                };
                for point in points {
                    if let Some(number_data_point::Value::AsInt(value)) = point.value {
                        out.push(ReceivedPoint {
                            service: service.clone(),
                            metric: metric.name.clone(),
                            attributes: attributes_of(&point.attributes),
                            value,
                        });
                    }
                }
            }
        }
    }
    out
}

impl OtlpReceiver {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Received::default()));
        let kept = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let kept = Arc::clone(&kept);
                        async move {
                            let path = request.uri().path().to_string();
                            let body = request.into_body().collect().await?.to_bytes();
                            let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            let decoded = match path.as_str() {
                                "/v1/traces" => ExportTraceServiceRequest::decode(body)
                                    .map(|export| kept.spans.extend(spans_of(&export))),
                                "/v1/metrics" => ExportMetricsServiceRequest::decode(body)
                                    .map(|export| kept.points.extend(points_of(&export))),
                                _ => Ok(()),
                            };
                            drop(kept);
                            if let Err(err) = decoded {
                                tracing::warn!(%err, path, "an OTLP export that is not protobuf");
                            }
                            // An empty Export*ServiceResponse is an empty protobuf message.
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .expect("a static response"),
                            )
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Ok(Self { port, received, task })
    }

    /// `http://127.0.0.1:PORT`, the OTLP/HTTP endpoint (exporters add `/v1/traces`).
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    #[must_use]
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received().spans.clone()
    }

    /// Every integer data point received so far, in the order they arrived.
    #[must_use]
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.received().points.clone()
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
