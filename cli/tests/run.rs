//! Composed steps running in a wasmtime host: records reach the sink, failures map onto the
//! delivered batch, and misbehaving logic is stopped at the step's boundary.

mod common;

use std::time::{Duration, Instant};

use common::fixtures::{self, Lang};
use common::host::{message, to_wire, Bounds, Failure, Message, Rejected, StepHost};
use serde_json::{json, Value};
use sluice_compose::compose::{compose, ComposeOptions, DenyMode};
use sluice_compose::limits::Limits;
use wasmtime::Trap;

/// Composes `logic` with the default policy, stubbing what it forbids.
fn step(logic: &[u8]) -> Vec<u8> {
    step_with(logic, Limits::default())
}

fn step_with(logic: &[u8], limits: Limits) -> Vec<u8> {
    let options = ComposeOptions {
        deny: DenyMode::Trap,
        limits,
        ..ComposeOptions::default()
    };
    compose(logic, &options).expect("composes").bytes
}

fn host(logic: &[u8]) -> StepHost {
    StepHost::new(&step(logic), Bounds::default()).expect("the step loads")
}

/// The trap behind a call's error.
fn trap(error: &wasmtime::Error) -> Option<Trap> {
    error.downcast_ref::<Trap>().copied()
}

fn readings() -> Vec<Message> {
    let mut batch: Vec<Message> = [
        br#"{"device":"d1","temp":21.5,"site":"plant-1","extra":"dropped"}"#.as_slice(),
        br#"{"kind":"heartbeat","device":"d1"}"#,
        b"not json",
        br#"{"device":"d2","temp":19}"#,
        br#"{"temp":3}"#,
    ]
    .iter()
    .enumerate()
    .map(|(i, payload)| message(payload, &format!("test:readings/{i}")))
    .collect();
    batch[0].headers = vec![("trace".to_string(), b"abc".to_vec())];
    batch[0].timestamp_ms = Some(1_700_000_000_000);
    batch
}

#[test]
fn example_logic_in_each_language_maps_filters_and_rejects() {
    for lang in Lang::ALL {
        let step = compose(&fixtures::example(lang), &fixtures::compose_options(lang)).unwrap();
        let host = StepHost::new(&step.bytes, Bounds::default()).unwrap();
        let mut step = host.instantiate().unwrap();
        let outcome = step.deliver(&readings()).unwrap();
        assert_eq!(
            outcome,
            Err(Failure::Reject(vec![
                Rejected {
                    index: 2,
                    reason: "payload is not a JSON object".into()
                },
                Rejected {
                    index: 4,
                    reason: "missing device".into()
                },
            ])),
            "{lang:?}"
        );
        assert_eq!(step.written().len(), 1, "{lang:?}: one write");
        let records = step.records();
        let payloads: Vec<Value> = records
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
        assert_eq!(
            payloads,
            vec![
                json!({"device_id": "d1", "temperature": 21.5, "site": "plant-1"}),
                json!({"device_id": "d2", "temperature": 19, "site": "unknown"}),
            ],
            "{lang:?}"
        );
        assert_eq!(records[0].key.as_deref(), Some(b"d1".as_slice()), "{lang:?}");
        assert_eq!(records[1].key.as_deref(), Some(b"d2".as_slice()), "{lang:?}");
        assert_eq!(records[0].headers, readings()[0].headers, "{lang:?}");
        assert_eq!(records[0].timestamp_ms, Some(1_700_000_000_000), "{lang:?}");
        assert_eq!(records[0].origin, "test:readings/0", "{lang:?}");
        assert_eq!(records[1].origin, "test:readings/3", "{lang:?}");
        assert_eq!(step.logs().len(), 1, "{lang:?}: one log line per batch");
        assert!(
            step.logs()[0].contains("batch: 5 in, 2 out"),
            "{lang:?}: {:?}",
            step.logs()
        );

        // A clean batch is accepted whole, on the same instance.
        let clean = [readings()[0].clone(), readings()[3].clone()];
        assert_eq!(step.deliver(&clean).unwrap(), Ok(()), "{lang:?}");
        assert_eq!(step.records().len(), 4, "{lang:?}");
    }
}

#[test]
fn rejected_records_are_reported_and_the_rest_written() {
    let host = host(&fixtures::behave());
    let mut step = host.instantiate().unwrap();
    let batch = [message(b"a", "o/0"), message(b"reject", "o/1"), message(b"b", "o/2")];
    assert_eq!(
        step.deliver(&batch).unwrap(),
        Err(Failure::Reject(vec![Rejected {
            index: 1,
            reason: "asked to reject".into()
        }]))
    );
    let payloads: Vec<Vec<u8>> = step.records().into_iter().map(|m| m.payload).collect();
    assert_eq!(payloads, vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn binary_payloads_cross_the_step_unchanged() {
    let host = host(&fixtures::behave());
    let mut step = host.instantiate().unwrap();
    let all: Vec<u8> = (0..=255).collect();
    let reversed: Vec<u8> = all.iter().rev().copied().collect();
    let mut keyed = message(&[0x80, 0xff, b'x'], "o/2");
    keyed.key = Some(vec![0, 0xfe]);
    keyed.headers = vec![("h".to_string(), vec![0xc3, 0x28])];
    let batch = [
        message(&all, "o/0"),
        message(&reversed, "o/1"),
        keyed,
        message(b"", "o/3"),
        message(br#"{"ascii":true}"#, "o/4"),
    ];
    assert_eq!(step.deliver(&batch).unwrap(), Ok(()));
    assert_eq!(step.records(), batch);
}

#[test]
fn a_record_not_in_the_wire_form_is_rejected_by_index_and_the_rest_goes_on() {
    let host = host(&fixtures::behave());
    let mut step = host.instantiate().unwrap();
    let mut batch: Vec<_> = [
        message(b"a", "o/0"),
        message(b"bad", "o/1"),
        message(b"reject", "o/2"),
        message(&[0xe9], "o/3"),
    ]
    .iter()
    .map(to_wire)
    .collect();
    batch[1].payload = "\u{20AC} is not one byte".into();
    let Err(Failure::Reject(rejected)) = step.deliver_wire(&batch).unwrap() else {
        panic!("expected a reject");
    };
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2]);
    assert!(
        rejected[0].reason.starts_with("payload is not in the wire form"),
        "{rejected:?}"
    );
    assert_eq!(rejected[1].reason, "asked to reject");
    let payloads: Vec<Vec<u8>> = step.records().into_iter().map(|m| m.payload).collect();
    assert_eq!(payloads, vec![b"a".to_vec(), vec![0xe9]]);

    // A batch of nothing but such records never reaches the logic or the sink.
    let Err(Failure::Reject(rejected)) = step.deliver_wire(&batch[1..2]).unwrap() else {
        panic!("expected a reject");
    };
    assert_eq!(rejected.len(), 1);
    assert_eq!(step.written().len(), 1);
}

#[test]
fn a_trap_in_the_logic_is_an_error_at_the_boundary_and_the_host_keeps_running() {
    let host = host(&fixtures::behave());
    let mut step = host.instantiate().unwrap();
    let error = step
        .deliver(&[message(b"ok", "o/0"), message(b"trap", "o/1")])
        .expect_err("the logic traps");
    assert_eq!(trap(&error), Some(Trap::UnreachableCodeReached), "{error:?}");
    assert!(step.written().is_empty(), "nothing of the batch was written");

    // The host goes on: a fresh instance of the same step serves the next batch.
    let mut step = host.instantiate().unwrap();
    assert_eq!(step.deliver(&[message(b"ok", "o/2")]).unwrap(), Ok(()));
    assert_eq!(step.records().len(), 1);
}

#[test]
fn an_endless_loop_is_stopped_by_the_epoch_deadline() {
    let bounds = Bounds {
        deadline: Duration::from_millis(300),
        ..Bounds::default()
    };
    let host = StepHost::new(&step(&fixtures::behave()), bounds).unwrap();
    let mut step = host.instantiate().unwrap();
    let started = Instant::now();
    let error = step.deliver(&[message(b"loop", "o/0")]).expect_err("interrupted");
    assert_eq!(trap(&error), Some(Trap::Interrupt), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let mut step = host.instantiate().unwrap();
    assert_eq!(step.deliver(&[message(b"ok", "o/1")]).unwrap(), Ok(()));
}

#[test]
fn an_endless_loop_is_stopped_by_fuel() {
    let bounds = Bounds {
        deadline: Duration::from_secs(600),
        fuel: Some(50_000_000),
        ..Bounds::default()
    };
    let host = StepHost::new(&step(&fixtures::behave()), bounds).unwrap();
    let mut step = host.instantiate().unwrap();
    let error = step.deliver(&[message(b"loop", "o/0")]).expect_err("out of fuel");
    assert_eq!(trap(&error), Some(Trap::OutOfFuel), "{error:?}");
    let mut step = host.instantiate().unwrap();
    assert_eq!(step.deliver(&[message(b"ok", "o/1")]).unwrap(), Ok(()));
}

#[test]
fn unbounded_allocation_is_stopped_by_the_memory_limit() {
    let bounds = Bounds {
        max_memory: 64 << 20,
        ..Bounds::default()
    };
    let host = StepHost::new(&step(&fixtures::behave()), bounds).unwrap();
    let mut step = host.instantiate().unwrap();
    let error = step.deliver(&[message(b"alloc", "o/0")]).expect_err("stopped");
    assert!(
        format!("{error:?}").contains("memory"),
        "a memory limit error: {error:?}"
    );
    let mut step = host.instantiate().unwrap();
    assert_eq!(step.deliver(&[message(b"ok", "o/1")]).unwrap(), Ok(()));
}

#[test]
fn retry_from_the_logic_or_the_sink_is_retry_and_writes_nothing() {
    let host = host(&fixtures::behave());
    let mut step = host.instantiate().unwrap();
    assert_eq!(
        step.deliver(&[message(b"ok", "o/0"), message(b"retry", "o/1")])
            .unwrap(),
        Err(Failure::Retry("asked to retry".into()))
    );
    step.store.data_mut().sink_failure = Some(Failure::Retry("sink busy".into()));
    assert_eq!(
        step.deliver(&[message(b"ok", "o/2")]).unwrap(),
        Err(Failure::Retry("sink busy".into()))
    );
    assert!(step.written().is_empty());
}

#[test]
fn a_sink_reject_rejects_every_delivered_record() {
    let host = host(&fixtures::behave());
    let mut step = host.instantiate().unwrap();
    step.store.data_mut().sink_failure = Some(Failure::Reject(vec![Rejected {
        index: 0,
        reason: "schema mismatch".into(),
    }]));
    let Err(Failure::Reject(rejected)) = step.deliver(&[message(b"a", "o/0"), message(b"b", "o/1")]).unwrap() else {
        panic!("expected a reject");
    };
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
    assert!(rejected[0].reason.contains("schema mismatch"), "{rejected:?}");
}

#[test]
fn the_output_limit_stops_a_flooding_transform_before_the_sink() {
    let limits = Limits {
        max_records: 100,
        max_bytes: 4096,
    };
    let host = StepHost::new(&step_with(&fixtures::behave(), limits), Bounds::default()).unwrap();
    let mut step = host.instantiate().unwrap();

    // 100 records of 9 + 3 bytes pass; 101 records do not.
    assert_eq!(step.deliver(&[message(b"flood 100", "o/0")]).unwrap(), Ok(()));
    assert_eq!(step.records().len(), 100);
    let Err(Failure::Reject(rejected)) = step
        .deliver(&[message(b"flood 100", "o/1"), message(b"x", "o/2")])
        .unwrap()
    else {
        panic!("expected a reject");
    };
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
    assert!(
        rejected[0].reason.contains("101 records in one write, at most 100"),
        "{rejected:?}"
    );

    // Too many bytes: 10 records of over 4,000 bytes (a large header).
    let mut big = message(b"flood 10", "o/3");
    big.headers = vec![("pad".to_string(), vec![b'x'; 4000])];
    let Err(Failure::Reject(rejected)) = step.deliver(&[big]).unwrap() else {
        panic!("expected a reject");
    };
    assert!(
        rejected[0].reason.contains("bytes in one write, at most 4096"),
        "{rejected:?}"
    );
    assert_eq!(step.records().len(), 100, "nothing more reached the sink");

    // Bytes are counted in the wire form: 3,000 bytes from 0x80 travel as 6,000.
    let high = message(&[0xff; 3000], "o/4");
    let Err(Failure::Reject(rejected)) = step.deliver(&[high]).unwrap() else {
        panic!("expected a reject");
    };
    assert!(
        rejected[0].reason.contains("6003 bytes in one write, at most 4096"),
        "{rejected:?}"
    );
    assert!(step.deliver(&[message(&[b'x'; 3000], "o/5")]).unwrap().is_ok());
    assert_eq!(step.records().len(), 101);
}

#[test]
fn with_deny_trap_calling_a_forbidden_import_traps() {
    let host = host(&fixtures::forbidden());
    let mut step = host.instantiate().unwrap();
    assert_eq!(step.deliver(&[message(b"ok", "o/0")]).unwrap(), Ok(()));
    for call in ["http", "net", "fs"] {
        let mut step = host.instantiate().unwrap();
        let error = step.deliver(&[message(call.as_bytes(), "o/1")]).expect_err(call);
        assert_eq!(trap(&error), Some(Trap::UnreachableCodeReached), "{call}: {error:?}");
        assert!(step.written().is_empty());
    }
}

#[test]
fn the_relay_passes_every_record_on_unchanged_and_keeps_the_output_limits() {
    let relay = sluice_compose::compose::relay(&ComposeOptions::default()).expect("compose the relay");
    let host = StepHost::new(&relay.bytes, Bounds::default()).unwrap();
    let mut instance = host.instantiate().unwrap();
    // Binary payloads, keys, repeated headers, timestamps and origins, as a hop delivers them.
    let batch: Vec<Message> = (0..50u8)
        .map(|i| Message {
            key: Some(vec![i, 0xff, 0]),
            payload: (0..=255u8).map(|b| b.wrapping_add(i)).collect(),
            headers: vec![("h".into(), vec![i]), ("h".into(), b"again".to_vec())],
            timestamp_ms: Some(1_700_000_000_000 + u64::from(i)),
            origin: format!("jetstream:s/sub#{i}"),
        })
        .collect();
    assert_eq!(instance.deliver(&batch).unwrap(), Ok(()));
    assert_eq!(instance.records(), batch);
    // An empty batch is written as such.
    assert_eq!(instance.deliver(&[]).unwrap(), Ok(()));

    // The out component's limits hold for a relay too: a batch over them is rejected whole.
    let small = sluice_compose::compose::relay(&ComposeOptions {
        limits: Limits {
            max_records: 10,
            ..Limits::default()
        },
        ..ComposeOptions::default()
    })
    .unwrap();
    let host = StepHost::new(&small.bytes, Bounds::default()).unwrap();
    let mut instance = host.instantiate().unwrap();
    match instance.deliver(&batch[..11]).unwrap() {
        Err(Failure::Reject(rejected)) => assert_eq!(rejected.len(), 11),
        other => panic!("expected the batch rejected, got {other:?}"),
    }
    assert!(instance.records().is_empty());
}
