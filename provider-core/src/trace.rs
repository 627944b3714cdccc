//! W3C trace context across hops, as first-party wasmCloud providers carry it: the span of a
//! batch travels with its `deliver` (`traceparent` / `tracestate` headers, which the host
//! continues into the step and on into the step's `sink.write`), a write's span continues the
//! caller's trace, and a batch's span continues the trace its records arrived with (an HTTP
//! request's `traceparent`), or links to each when they came with several (Kafka records'). Spans are OpenTelemetry spans when the
//! provider exports them (the host's `otel` settings); otherwise nothing is sent.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::Message;

/// The header naming a record's or a call's trace (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Trace headers read from NATS headers or from a record's headers.
enum Extract<'a> {
    Nats(&'a HeaderMap),
    Record(&'a Message),
}

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self {
            Self::Nats(headers) => headers.get(key).map(async_nats::HeaderValue::as_str),
            Self::Record(message) => message
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(key))
                .and_then(|(_, value)| std::str::from_utf8(value).ok()),
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Self::Nats(headers) => headers.iter().map(|(name, _)| name.as_ref()).collect(),
            Self::Record(message) => message.headers.iter().map(|(name, _)| name.as_str()).collect(),
        }
    }
}

/// The headers that carry `span`'s trace context; empty when the span is not exported.
#[must_use]
pub fn headers_of(span: &tracing::Span) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Inject(&mut headers));
    }
    headers
}

/// Makes `span` continue the trace whose context `headers` carry, if they carry one.
pub fn continue_from(span: &tracing::Span, headers: &HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&Extract::Nats(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Ties `span` (a batch's) to the traces its records arrived with: when they all carry the same
/// trace context (one HTTP request's, one producer call's), the span continues that trace;
/// otherwise it links to each.
pub fn follow_records(span: &tracing::Span, messages: &[Message]) {
    let propagator = TraceContextPropagator::new();
    let mut contexts: Vec<opentelemetry::trace::SpanContext> = Vec::new();
    for message in messages {
        if !has_trace(message) {
            continue;
        }
        let cx = propagator.extract(&Extract::Record(message));
        let record = cx.span().span_context().clone();
        if record.is_valid() && !contexts.contains(&record) {
            contexts.push(record);
        }
    }
    match contexts.as_slice() {
        [] => {}
        [one] if messages.iter().all(has_trace) => {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(one.clone()));
        }
        _ => {
            for record in contexts {
                span.add_link(record);
            }
        }
    }
}

fn has_trace(message: &Message) -> bool {
    message
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_without_an_exported_span_carries_no_trace_headers() {
        let span = tracing::info_span!("batch");
        assert!(headers_of(&span).is_empty());
    }

    #[test]
    fn a_record_traceparent_is_read_from_its_headers_whatever_the_case() {
        let mut message = Message::new(b"x".to_vec(), "test@0");
        message.headers.push((
            "TraceParent".into(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .to_vec()
                .into(),
        ));
        let cx = TraceContextPropagator::new().extract(&Extract::Record(&message));
        let span = cx.span().span_context().clone();
        assert!(span.is_valid());
        assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let cx = TraceContextPropagator::new().extract(&Extract::Nats(&headers));
        assert_eq!(cx.span().span_context().span_id().to_string(), "00f067aa0ba902b7");
    }
}
