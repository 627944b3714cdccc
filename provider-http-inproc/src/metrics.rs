//! Request counters per route and their Prometheus text rendering (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper::StatusCode;

use crate::router::Route;

/// Status codes counted one by one; anything else is counted as `other`.
const CODES: [u16; 14] = [200, 202, 400, 401, 404, 405, 408, 413, 415, 422, 429, 500, 503, 505];

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests answered, by status code, with a latency histogram; and requests being served.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    codes: [AtomicU64; CODES.len() + 1],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    in_flight: AtomicU64,
}

/// Per-route metrics.
pub type RouteMetrics = RequestMetrics;

impl RequestMetrics {
    /// Counts one answered request.
    pub fn observe(&self, status: StatusCode, latency: Duration) {
        let slot = CODES.iter().position(|c| *c == status.as_u16()).unwrap_or(CODES.len());
        self.codes[slot].fetch_add(1, Relaxed);
        let seconds = latency.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[b].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Marks a request as being served until the guard drops.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlightGuard(&self.in_flight)
    }

    /// Requests answered with `status` so far.
    pub fn count_of(&self, status: StatusCode) -> u64 {
        CODES
            .iter()
            .position(|c| *c == status.as_u16())
            .map_or(0, |i| self.codes[i].load(Relaxed))
    }
}

/// Decrements an in-flight gauge when dropped.
pub struct InFlightGuard<'a>(&'a AtomicU64);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(route: &Route) -> String {
    let c = &route.config;
    let methods = c.methods.as_ref().map_or_else(
        || "*".to_string(),
        |m| m.iter().map(hyper::Method::as_str).collect::<Vec<_>>().join(","),
    );
    format!(
        "route=\"{}\",host=\"{}\",methods=\"{}\",component=\"{}\",link=\"{}\"",
        escape(&c.prefix),
        escape(c.host.as_deref().unwrap_or("")),
        escape(&methods),
        escape(&route.link().component),
        escape(&route.link().name),
    )
}

fn write_requests(out: &mut String, labels: &str, m: &RequestMetrics) {
    for (i, code) in CODES
        .iter()
        .map(u16::to_string)
        .chain(["other".to_string()])
        .enumerate()
    {
        let n = m.codes[i].load(Relaxed);
        if n > 0 {
            let _ = writeln!(out, "sluice_http_requests_total{{{labels},code=\"{code}\"}} {n}");
        }
    }
}

fn write_histogram(out: &mut String, labels: &str, m: &RequestMetrics) {
    let mut cumulative = 0;
    for (le, bucket) in BUCKETS.iter().zip(&m.buckets) {
        cumulative += bucket.load(Relaxed);
        let _ = writeln!(
            out,
            "sluice_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
        );
    }
    let count = m.count.load(Relaxed);
    let _ = writeln!(
        out,
        "sluice_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
    );
    let sum = m.sum_micros.load(Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "sluice_http_request_duration_seconds_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "sluice_http_request_duration_seconds_count{{{labels}}} {count}");
}

/// Renders every route's metrics and those of requests no route took, as Prometheus text.
pub fn render(routes: &[std::sync::Arc<Route>], unrouted: &RequestMetrics) -> String {
    let mut out = String::with_capacity(512 + routes.len() * 2048);
    out.push_str("# HELP sluice_http_requests_total Requests answered, by route and status code.\n");
    out.push_str("# TYPE sluice_http_requests_total counter\n");
    let all: Vec<(String, &RequestMetrics)> = routes
        .iter()
        .map(|r| (labels(r), &r.metrics))
        .chain([(
            "route=\"\",host=\"\",methods=\"\",component=\"\",link=\"\"".to_string(),
            unrouted,
        )])
        .collect();
    for (labels, m) in &all {
        write_requests(&mut out, labels, m);
    }
    out.push_str("# HELP sluice_http_request_duration_seconds Time from a request's arrival to its answer.\n");
    out.push_str("# TYPE sluice_http_request_duration_seconds histogram\n");
    for (labels, m) in &all {
        write_histogram(&mut out, labels, m);
    }
    out.push_str("# HELP sluice_http_requests_in_flight Requests being served right now, by route.\n");
    out.push_str("# TYPE sluice_http_requests_in_flight gauge\n");
    for (labels, m) in &all[..routes.len()] {
        let _ = writeln!(
            out,
            "sluice_http_requests_in_flight{{{labels}}} {}",
            m.in_flight.load(Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = RequestMetrics::default();
        m.observe(StatusCode::OK, Duration::from_micros(300));
        m.observe(StatusCode::OK, Duration::from_millis(3));
        m.observe(StatusCode::IM_A_TEAPOT, Duration::from_secs(60));
        let out = render(&[], &m);
        assert!(out.contains("code=\"200\"} 2\n"), "{out}");
        assert!(out.contains("code=\"other\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("le=\"+Inf\"} 3\n"), "{out}");
        assert_eq!(m.count_of(StatusCode::OK), 2);
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
