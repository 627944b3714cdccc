//! The per-link counters of [`crate::metrics`] as OpenTelemetry metrics: one observable
//! instrument per counter, read from the engine's [`Status`] each time the meter provider
//! collects, with the link's role, component and name as attributes.
//!
//! On wasmCloud the host's `otel` settings (metrics enabled, an OTLP endpoint) make the provider
//! SDK install the global meter provider that [`crate::wasmcloud::run`] registers these on;
//! without them the instruments are never read and nothing is exported. The status subject
//! ([`crate::wasmcloud::status_subject`]) answers with the same figures on request.

use std::sync::Arc;

use opentelemetry::metrics::{AsyncInstrument, Meter, ObservableCounter, ObservableGauge};
use opentelemetry::KeyValue;

use crate::engine::{LinkStatus, Status};
use crate::metrics::MetricsSnapshot;

/// The instrumentation scope Sluice's metrics are reported under.
pub const SCOPE: &str = "sluice";

/// Attribute: `source` or `sink`.
pub const ROLE: &str = "sluice.link.role";
/// Attribute: the component at the other end of the link.
pub const COMPONENT: &str = "sluice.link.component";
/// Attribute: the link's name.
pub const LINK: &str = "sluice.link.name";

/// One counter of a link: its instrument name, unit, description, and how to read it.
struct Figure {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    read: fn(&MetricsSnapshot) -> u64,
}

/// Totals since the link was put (monotonic sums).
const TOTALS: [Figure; 13] = [
    Figure {
        name: "sluice.link.polled",
        unit: "{record}",
        description: "Records read from the source system.",
        read: |m| m.polled,
    },
    Figure {
        name: "sluice.link.delivered",
        unit: "{record}",
        description: "Records the component accepted.",
        read: |m| m.delivered,
    },
    Figure {
        name: "sluice.link.retried",
        unit: "{batch}",
        description: "Batch deliveries retried (retry, timeout or transport error).",
        read: |m| m.retried,
    },
    Figure {
        name: "sluice.link.rejected",
        unit: "{record}",
        description: "Records the component rejected.",
        read: |m| m.rejected,
    },
    Figure {
        name: "sluice.link.dead_lettered",
        unit: "{record}",
        description: "Records handed to the dead-letter destination.",
        read: |m| m.dead_lettered,
    },
    Figure {
        name: "sluice.link.acked",
        unit: "{record}",
        description: "Records acknowledged to the source system.",
        read: |m| m.acked,
    },
    Figure {
        name: "sluice.link.written",
        unit: "{record}",
        description: "Records a sink wrote durably.",
        read: |m| m.written,
    },
    Figure {
        name: "sluice.link.write_failures",
        unit: "{batch}",
        description: "Sink batches answered retry or reject.",
        read: |m| m.write_failures,
    },
    Figure {
        name: "sluice.link.busy",
        unit: "{call}",
        description: "Calls turned away because the link was at its concurrency limit or its buffer was full.",
        read: |m| m.busy,
    },
    Figure {
        name: "sluice.link.buffer.drained",
        unit: "{record}",
        description: "Records taken out of the disk buffer because the sink wrote or rejected them.",
        read: |m| m.buffer_drained,
    },
    Figure {
        name: "sluice.link.buffer.dropped",
        unit: "{record}",
        description: "Records dropped from the disk buffer unwritten.",
        read: |m| m.buffer_dropped,
    },
    Figure {
        name: "sluice.link.buffer.rejected",
        unit: "{record}",
        description: "Buffered records the sink rejected after their write was answered.",
        read: |m| m.buffer_rejected,
    },
    Figure {
        name: "sluice.link.buffer.fsyncs",
        unit: "{call}",
        description: "fsync calls of the disk buffer.",
        read: |m| m.fsyncs,
    },
];

/// Values at the moment of collection (gauges).
const LEVELS: [Figure; 4] = [
    Figure {
        name: "sluice.link.in_flight",
        unit: "{batch}",
        description: "Batches being delivered or written.",
        read: |m| m.in_flight,
    },
    Figure {
        name: "sluice.link.buffer.bytes",
        unit: "By",
        description: "Bytes in the disk buffer not yet drained.",
        read: |m| m.buffered_bytes,
    },
    Figure {
        name: "sluice.link.buffer.records",
        unit: "{record}",
        description: "Records in the disk buffer not yet drained.",
        read: |m| m.buffered_records,
    },
    Figure {
        name: "sluice.link.buffer.oldest_age",
        unit: "ms",
        description: "Age of the oldest record in the disk buffer not yet drained.",
        read: |m| m.buffer_oldest_age_ms,
    },
];

/// Reads the engine's status; called once per instrument per collection.
pub type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// The registered instruments. They report for as long as the meter provider lives; keep this
/// value for the provider's lifetime.
#[derive(Debug)]
pub struct LinkInstruments {
    _totals: Vec<ObservableCounter<u64>>,
    _levels: Vec<ObservableGauge<u64>>,
}

fn attributes(role: &str, component: &str, link: &str) -> [KeyValue; 3] {
    [
        KeyValue::new(ROLE, role.to_owned()),
        KeyValue::new(COMPONENT, component.to_owned()),
        KeyValue::new(LINK, link.to_owned()),
    ]
}

fn observe(status: &StatusFn, read: fn(&MetricsSnapshot) -> u64, observer: &dyn AsyncInstrument<u64>) {
    for link in status().links {
        observer.observe(
            read(&link.metrics),
            &attributes(&link.role, &link.component, &link.name),
        );
    }
}

/// A gauge of a live link's state: its name, its description, and when it is 1.
type LinkFlag = (&'static str, &'static str, fn(&LinkStatus) -> bool);

/// Registers one instrument per link counter on `meter`, plus `sluice.link.degraded` (1 while a
/// live link cannot reach its system), `sluice.link.standby` (1 while another instance of the
/// provider reads the link) and `sluice.link.refused` (1 for each refused link).
#[must_use]
pub fn register(meter: &Meter, status: StatusFn) -> LinkInstruments {
    let totals = TOTALS
        .iter()
        .map(|figure| {
            let status = Arc::clone(&status);
            let read = figure.read;
            meter
                .u64_observable_counter(figure.name)
                .with_unit(figure.unit)
                .with_description(figure.description)
                .with_callback(move |observer| observe(&status, read, observer))
                .build()
        })
        .collect();
    let mut levels: Vec<ObservableGauge<u64>> = LEVELS
        .iter()
        .map(|figure| {
            let status = Arc::clone(&status);
            let read = figure.read;
            meter
                .u64_observable_gauge(figure.name)
                .with_unit(figure.unit)
                .with_description(figure.description)
                .with_callback(move |observer| observe(&status, read, observer))
                .build()
        })
        .collect();
    // Gauges of a live link's state: 1 while `state` holds for it.
    let flags: [LinkFlag; 2] = [
        (
            "sluice.link.degraded",
            "1 while a live link cannot reach its system (the engine keeps trying).",
            |link| link.degraded.is_some(),
        ),
        (
            "sluice.link.standby",
            "1 while another instance of the provider holds the link's lease and reads it.",
            |link| link.standby_for.is_some(),
        ),
    ];
    for (name, description, state) in flags {
        let status = Arc::clone(&status);
        levels.push(
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    for link in status().links {
                        observer.observe(
                            u64::from(state(&link)),
                            &attributes(&link.role, &link.component, &link.name),
                        );
                    }
                })
                .build(),
        );
    }
    levels.push(
        meter
            .u64_observable_gauge("sluice.link.refused")
            .with_description("1 for each link refused since it was last put successfully.")
            .with_callback(move |observer| {
                for link in status().refused {
                    observer.observe(1, &attributes(&link.role, &link.component, &link.name));
                }
            })
            .build(),
    );
    LinkInstruments {
        _totals: totals,
        _levels: levels,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

    use super::*;
    use crate::engine::{LinkStatus, RefusedLink};

    /// Keeps every exported data point as (metric, link name) -> value.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<BTreeMap<(String, String), u64>>>);

    impl PushMetricExporter for Collected {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            let mut points = self.0.lock().unwrap();
            for scope in metrics.scope_metrics() {
                assert_eq!(scope.scope().name(), SCOPE);
                for metric in scope.metrics() {
                    let AggregatedMetrics::U64(data) = metric.data() else {
                        panic!("{} is not u64", metric.name());
                    };
                    let values: Vec<(String, u64)> = match data {
                        MetricData::Sum(sum) => {
                            assert!(sum.is_monotonic(), "{} is a monotonic sum", metric.name());
                            sum.data_points()
                                .map(|p| (link_of(p.attributes()), p.value()))
                                .collect()
                        }
                        MetricData::Gauge(gauge) => gauge
                            .data_points()
                            .map(|p| (link_of(p.attributes()), p.value()))
                            .collect(),
                        _ => panic!("{} is neither a sum nor a gauge", metric.name()),
                    };
                    for (link, value) in values {
                        points.insert((metric.name().to_owned(), link), value);
                    }
                }
            }
            Ok(())
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }

        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    fn link_of<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> String {
        let attributes: BTreeMap<String, String> = attributes
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        format!("{}/{}/{}", attributes[ROLE], attributes[COMPONENT], attributes[LINK])
    }

    #[test]
    fn every_counter_of_every_link_is_exported_with_the_link_as_attributes() {
        let status = Arc::new(Mutex::new(Status::default()));
        let collected = Collected::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(collected.clone()).build())
            .build();
        let read = Arc::clone(&status);
        let _instruments = register(&provider.meter(SCOPE), Arc::new(move || read.lock().unwrap().clone()));

        *status.lock().unwrap() = Status {
            links: vec![
                LinkStatus {
                    role: "source".into(),
                    component: "step".into(),
                    name: "default".into(),
                    metrics: MetricsSnapshot {
                        polled: 7,
                        delivered: 6,
                        acked: 5,
                        in_flight: 1,
                        ..MetricsSnapshot::default()
                    },
                    degraded: None,
                    standby_for: Some("host-b (pid 9)".into()),
                },
                LinkStatus {
                    role: "sink".into(),
                    component: "step".into(),
                    name: "out".into(),
                    metrics: MetricsSnapshot {
                        written: 4,
                        buffered_bytes: 1024,
                        fsyncs: 3,
                        ..MetricsSnapshot::default()
                    },
                    degraded: Some("connection refused".into()),
                    standby_for: None,
                },
            ],
            refused: vec![RefusedLink {
                role: "sink".into(),
                component: "other".into(),
                name: "bad".into(),
                error: "bucket: missing".into(),
            }],
        };
        provider.force_flush().unwrap();

        let points = collected.0.lock().unwrap().clone();
        let value = |metric: &str, link: &str| points.get(&(metric.to_owned(), link.to_owned())).copied();
        assert_eq!(value("sluice.link.polled", "source/step/default"), Some(7));
        assert_eq!(value("sluice.link.delivered", "source/step/default"), Some(6));
        assert_eq!(value("sluice.link.acked", "source/step/default"), Some(5));
        assert_eq!(value("sluice.link.in_flight", "source/step/default"), Some(1));
        assert_eq!(value("sluice.link.written", "sink/step/out"), Some(4));
        assert_eq!(value("sluice.link.buffer.bytes", "sink/step/out"), Some(1024));
        assert_eq!(value("sluice.link.buffer.fsyncs", "sink/step/out"), Some(3));
        assert_eq!(value("sluice.link.degraded", "sink/step/out"), Some(1));
        assert_eq!(value("sluice.link.degraded", "source/step/default"), Some(0));
        assert_eq!(value("sluice.link.standby", "source/step/default"), Some(1));
        assert_eq!(value("sluice.link.standby", "sink/step/out"), Some(0));
        assert_eq!(value("sluice.link.refused", "sink/other/bad"), Some(1));
        let names: std::collections::BTreeSet<&str> = points.keys().map(|(m, _)| m.as_str()).collect();
        assert_eq!(names.len(), TOTALS.len() + LEVELS.len() + 3, "{names:?}");
        provider.shutdown().unwrap();
    }
}
