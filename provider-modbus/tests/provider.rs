//! `sluice-provider-modbus` started as a wasmCloud 1.x host starts it, against real pymodbus
//! Modbus TCP servers on 127.0.0.1 and a real nats-server.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_integration::component::FakeComponent;
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::modbus::{ModbusServer, ServedRequest};
use sluice_integration::servers::NatsServer;
use sluice_provider_core::{Failure, Message};
use tokio_modbus::client::{Reader as _, Writer as _};

const PROVIDER: &str = "sluice-provider-modbus";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-provider-modbus");

/// Payloads of the records `step` accepted, as JSON.
fn bodies(step: &FakeComponent) -> Vec<Value> {
    step.accepted()
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("records are JSON"))
        .collect()
}

/// Records of `device` that `step` accepted.
fn device_records(step: &FakeComponent, device: &str) -> Vec<Value> {
    bodies(step).into_iter().filter(|b| b["device"] == device).collect()
}

async fn raw_client(server: &ModbusServer, unit: u8) -> tokio_modbus::client::Context {
    tokio_modbus::client::tcp::connect_slave(server.address().parse().unwrap(), tokio_modbus::Slave(unit))
        .await
        .unwrap()
}

/// One row of the decoding table: a value the server holds, and how the map describes it.
struct Case {
    name: &'static str,
    table: &'static str,
    ty: &'static str,
    byte_order: &'static str,
    word_order: &'static str,
    value: Value,
}

fn decoding_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let orders = [
        ("big", "big"),
        ("big", "little"),
        ("little", "big"),
        ("little", "little"),
    ];
    let values: [(&str, Value); 8] = [
        ("u16", json!(48879)),
        ("i16", json!(-12345)),
        ("u32", json!(3_000_000_000u64)),
        ("i32", json!(-2_000_000_001i64)),
        // Not exact in binary: the record holds the f32's own shortest form, not its widening.
        ("f32", json!(-123.456)),
        ("u64", json!(18_000_000_000_000_000_001u64)),
        ("i64", json!(-9_000_000_000_000_000_001i64)),
        ("f64", json!(std::f64::consts::PI)),
    ];
    let names = ["bb", "bl", "lb", "ll"];
    for (ty, value) in values {
        for ((byte_order, word_order), suffix) in orders.iter().zip(names) {
            // Word order means nothing to one-register types: two rows (the byte orders) suffice.
            if matches!(ty, "u16" | "i16") && *word_order == "little" {
                continue;
            }
            let table = if cases.len() % 2 == 0 { "holding" } else { "input" };
            cases.push(Case {
                name: Box::leak(format!("{ty}_{suffix}").into_boxed_str()),
                table,
                ty,
                byte_order,
                word_order,
                value: value.clone(),
            });
        }
    }
    for (byte_order, name) in [("big", "text_b"), ("little", "text_l")] {
        cases.push(Case {
            name,
            table: "holding",
            ty: "string",
            byte_order,
            word_order: "big",
            value: json!("SLUICE-7"),
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_to_what_the_server_holds() {
    sluice_integration::init_tracing();
    let cases = decoding_cases();
    // Each value at its own address, 5 registers apart (a gap, so reads merge through gaps too).
    let mut preset_values = Vec::new();
    let mut tags = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let address = i * 5;
        let mut entry = json!({"unit": 7, "table": case.table, "address": address, "type": case.ty,
            "value": case.value, "byte_order": case.byte_order, "word_order": case.word_order});
        let mut tag = json!({"name": case.name, "table": case.table, "address": address, "type": case.ty,
            "byte_order": case.byte_order, "word_order": case.word_order});
        if case.ty == "string" {
            entry["registers"] = json!(4);
            tag["length"] = json!(4);
        }
        preset_values.push(entry);
        tags.push(tag);
    }
    // Bits, and a scaled value: raw 650 * 0.1 - 40 = 25.
    preset_values.push(json!({"unit": 7, "table": "coil", "address": 3, "bits": [true, false, true]}));
    preset_values.push(json!({"unit": 7, "table": "discrete", "address": 9, "bits": [false, true]}));
    preset_values.push(json!({"unit": 7, "table": "holding", "address": 500, "registers": [650]}));
    tags.push(json!({"name": "coil3", "table": "coil", "address": 3}));
    tags.push(json!({"name": "coil4", "table": "coil", "address": 4}));
    tags.push(json!({"name": "coil5", "table": "coil", "address": 5}));
    tags.push(json!({"name": "di10", "table": "discrete", "address": 10}));
    tags.push(json!({"name": "di9", "table": "discrete", "address": 9}));
    tags.push(
        json!({"name": "temp", "table": "holding", "address": 500, "type": "i16", "scale": 0.1,
        "offset": -40, "unit": "degC"}),
    );
    // Past the server's 1000 registers: the device answers exception 2 for that block only.
    tags.push(json!({"name": "missing", "table": "holding", "address": 1000}));
    let server = ModbusServer::start(&json!({"units": [7], "size": 1000, "values": preset_values})).unwrap();

    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "decode-step").await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    // JSON this time (the README's other example is TOML).
    let map = json!({"devices": {"plc": {"address": server.address(), "unit_id": 7, "interval": "1h"}}, "tags": tags});
    let map = map.to_string();
    provider
        .put_link(Link::source(
            PROVIDER,
            "decode-step",
            "default",
            &[("register_map", &map), ("record_per", "tag"), ("linger", "5ms")],
        ))
        .await
        .unwrap();
    let total = cases.len() + 7;
    assert!(
        step.wait_for(Duration::from_secs(20), |s| s.accepted().len() >= total)
            .await,
        "got {} of {total} tag records:\n{}",
        step.accepted().len(),
        provider.logs()
    );
    let records = step.accepted();
    let by_tag = |name: &str| -> (Value, &Message) {
        let m = records
            .iter()
            .find(|m| m.key.as_deref() == Some(name.as_bytes()))
            .unwrap_or_else(|| panic!("no record for {name}"));
        (serde_json::from_slice(&m.payload).unwrap(), m)
    };
    for case in &cases {
        let (body, message) = by_tag(case.name);
        assert_eq!(body["quality"], "good", "{}: {body}", case.name);
        assert_eq!(
            body["value"], case.value,
            "{} ({} {} bytes, {} words)",
            case.name, case.ty, case.byte_order, case.word_order
        );
        let index = cases.iter().position(|c| c.name == case.name).unwrap();
        assert_eq!(message.origin, format!("modbus:plc/{}/{}", case.table, index * 5));
        assert!(message.timestamp_ms.is_some());
    }
    for (name, want) in [
        ("coil3", true),
        ("coil4", false),
        ("coil5", true),
        ("di9", false),
        ("di10", true),
    ] {
        assert_eq!(by_tag(name).0["value"], want, "{name}");
    }
    let (temp, message) = by_tag("temp");
    assert!((temp["value"].as_f64().unwrap() - 25.0).abs() < 1e-9, "{temp}");
    assert_eq!(temp["unit"], "degC");
    assert_eq!(message.origin, "modbus:plc/holding/500");
    let (missing, _) = by_tag("missing");
    assert_eq!(missing["quality"], "bad", "{missing}");
    assert_eq!(missing["value"], Value::Null);
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("exception 2 (IllegalDataAddress)"),
        "{missing}"
    );
    // One poll: every request was a merged block read, nothing was written.
    let requests = server.requests();
    assert!(requests.iter().all(|r| matches!(r.function, 1..=4)), "{requests:?}");
    assert!(
        requests.len() < total / 4,
        "{} requests for {total} tags",
        requests.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tags_in_four_tables_take_the_minimal_number_of_requests() {
    sluice_integration::init_tracing();
    let mut tags = Vec::new();
    // 50 contiguous coils: one read of 50 bits.
    for i in 0..50 {
        tags.push(json!({"name": format!("c{i}"), "table": "coil", "address": 100 + i}));
    }
    // 50 discrete inputs 10 apart (gaps of 9 bits read through): one read of 491 bits.
    for i in 0..50 {
        tags.push(json!({"name": format!("d{i}"), "table": "discrete", "address": i * 10}));
    }
    // 50 contiguous u32 input registers: one read of 100 registers.
    for i in 0..50 {
        tags.push(json!({"name": format!("i{i}"), "table": "input", "address": i * 2, "type": "u32"}));
    }
    // 49 contiguous f64 holding registers (196 registers, never split: 31 + 18 tags) and one u16
    // far away (a gap of 800 is not read through): three reads.
    for i in 0..49 {
        tags.push(json!({"name": format!("h{i}"), "table": "holding", "address": i * 4, "type": "f64"}));
    }
    tags.push(json!({"name": "far", "table": "holding", "address": 1000}));
    assert_eq!(tags.len(), 200);
    let server = ModbusServer::start(&json!({"units": [1], "size": 2000})).unwrap();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "merge-step").await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    let map = json!({"devices": {"plc": {"address": server.address(), "interval": "1h"}}, "tags": tags}).to_string();
    provider
        .put_link(Link::source(
            PROVIDER,
            "merge-step",
            "default",
            &[("register_map", &map), ("linger", "5ms")],
        ))
        .await
        .unwrap();
    assert!(
        step.wait_for(Duration::from_secs(20), |s| !s.accepted().is_empty())
            .await
    );
    let record = &bodies(&step)[0];
    assert_eq!(record["quality"], "good", "{record}");
    assert_eq!(record["values"].as_object().unwrap().len(), 200);
    // Give a stray request time to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut requests = server.requests();
    requests.sort_by_key(|r| (r.function, r.address));
    let read = |function, address, count| ServedRequest {
        unit: 1,
        function,
        address,
        count,
    };
    assert_eq!(
        requests,
        vec![
            read(1, 100, 50),
            read(2, 0, 491),
            read(3, 0, 124),
            read(3, 124, 72),
            read(3, 1000, 1),
            read(4, 0, 100),
        ],
        "one poll of 200 tags in 4 tables"
    );
    eprintln!("200 tags in 4 tables: {} requests per poll", requests.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_going_down_is_reported_and_reconnected_while_another_keeps_polling() {
    sluice_integration::init_tracing();
    let preset = json!({"units": [1], "size": 100,
        "values": [{"table": "holding", "address": 0, "registers": [1234]}]});
    let server_a = ModbusServer::start_with(sluice_integration::servers::free_port(), &preset, false).unwrap();
    let port_a = server_a.port();
    let server_b = ModbusServer::start_with(sluice_integration::servers::free_port(), &preset, false).unwrap();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "updown-step").await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    // A third device accepts connections and never answers: its requests time out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let map = format!(
        r#"
[devices.silent]
address = "{silent_address}"
interval = "100ms"
timeout = "300ms"

[[tags]]
name = "silent_value"
device = "silent"
table = "input"
address = 0

[devices.a]
address = "{}"
interval = "100ms"
timeout = "300ms"

[devices.b]
address = "{}"
interval = "100ms"
timeout = "300ms"

[[tags]]
name = "a_value"
device = "a"
table = "holding"
address = 0

[[tags]]
name = "b_value"
device = "b"
table = "holding"
address = 0
"#,
        server_a.address(),
        server_b.address()
    );
    provider
        .put_link(Link::source(
            PROVIDER,
            "updown-step",
            "default",
            &[
                ("register_map", &map),
                ("linger", "5ms"),
                ("reconnect_initial", "100ms"),
                ("reconnect_max", "400ms"),
            ],
        ))
        .await
        .unwrap();
    let good = |s: &FakeComponent, d: &str| device_records(s, d).iter().filter(|r| r["quality"] == "good").count();
    assert!(
        step.wait_for(Duration::from_secs(20), |s| good(s, "a") >= 2 && good(s, "b") >= 2)
            .await
    );
    assert_eq!(device_records(&step, "a")[0]["values"]["a_value"], 1234);
    let timed_out = |s: &FakeComponent| {
        device_records(s, "silent")
            .iter()
            .any(|r| r["quality"] == "bad" && r["error"].as_str().unwrap_or("").contains("no answer within 300ms"))
    };
    assert!(
        step.wait_for(Duration::from_secs(20), timed_out).await,
        "a device that never answers is reported as timed out: {:?}",
        device_records(&step, "silent")
    );

    // Device a goes away.
    drop(server_a);
    let bad_a = |s: &FakeComponent| device_records(s, "a").iter().any(|r| r["quality"] == "bad");
    assert!(
        step.wait_for(Duration::from_secs(20), bad_a).await,
        "the outage is reported"
    );
    let down = device_records(&step, "a")
        .into_iter()
        .find(|r| r["quality"] == "bad")
        .unwrap();
    assert!(
        down["error"].as_str().unwrap().contains(&port_a.to_string()),
        "the error names the device's address: {down}"
    );
    assert_eq!(down["values"], json!({}));
    // Meanwhile b keeps polling, and a keeps being retried and reported down.
    let b_before = good(&step, "b");
    let a_bad_before = device_records(&step, "a").len();
    assert!(
        step.wait_for(Duration::from_secs(20), |s| good(s, "b") >= b_before + 5
            && device_records(s, "a").len() >= a_bad_before + 2)
            .await,
        "device b stalled while a was down"
    );
    assert!(device_records(&step, "a")[a_bad_before..]
        .iter()
        .all(|r| r["quality"] == "bad"));
    assert_eq!(provider.health().await.unwrap()["healthy"], true);

    // Device a comes back on the same port: reconnected, good readings again.
    let a_seen = device_records(&step, "a").len();
    let _server_a = ModbusServer::start_with(port_a, &preset, false).unwrap();
    let back = |s: &FakeComponent| {
        device_records(s, "a")[a_seen..]
            .iter()
            .any(|r| r["quality"] == "good" && r["values"]["a_value"] == 1234)
    };
    assert!(
        step.wait_for(Duration::from_secs(20), back).await,
        "device a is read again after it came back:\n{}",
        provider.logs()
    );
    assert!(provider.logs().contains("device reachable again"));
    let status = provider.status().await.unwrap();
    assert_eq!(status.links.len(), 1);
    assert!(status.refused.is_empty());

    // kill -9, and the host starts the provider again with its links: polling resumes.
    provider.kill().await.unwrap();
    let (a_seen, b_seen) = (good(&step, "a"), good(&step, "b"));
    provider.restart().await.unwrap();
    assert!(
        step.wait_for(Duration::from_secs(20), |s| good(s, "a") > a_seen + 2
            && good(s, "b") > b_seen + 2)
            .await,
        "polling resumed after kill -9 and restart"
    );
    let exit = provider.terminate().await.unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_writes_declared_tags_only_and_rejects_the_rest_per_record() {
    sluice_integration::init_tracing();
    let preset = json!({"units": [1], "size": 100, "values": [
        {"table": "holding", "address": 0, "registers": [5]},
        {"table": "holding", "address": 20, "registers": [777]},
        {"table": "input", "address": 0, "registers": [99]},
    ]});
    let server = ModbusServer::start(&preset).unwrap();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "writer-step").await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    let map = format!(
        r#"
[devices.plc]
address = "{}"

[[tags]]
name = "setpoint"
table = "holding"
address = 0
writable = true
min = 0
max = 100

[[tags]]
name = "flow_setpoint"
table = "holding"
address = 10
type = "f32"
word_order = "little"
scale = 0.5
writable = true

[[tags]]
name = "pump"
table = "coil"
address = 3
writable = true

[[tags]]
name = "label"
table = "holding"
address = 30
type = "string"
length = 3
writable = true

[[tags]]
name = "status"
table = "holding"
address = 20

[[tags]]
name = "temperature"
table = "input"
address = 0
"#,
        server.address()
    );
    provider
        .put_link(Link::sink(
            "writer-step",
            PROVIDER,
            "default",
            &[("register_map", &map)],
        ))
        .await
        .unwrap();

    let record = |body: Value| Message::new(body.to_string().into_bytes(), "test");
    let mut keyed = Message::new(b"true".to_vec(), "test");
    keyed.key = Some(b"pump".to_vec().into());
    let batch = vec![
        record(json!({"tag": "setpoint", "value": 42})),
        record(json!({"tag": "flow_setpoint", "value": 12.5})),
        keyed,
        record(json!({"tag": "label", "value": "OK-1"})),
        record(json!({"tag": "ghost", "value": 1})),
        record(json!({"tag": "temperature", "value": 20})),
        record(json!({"tag": "status", "value": 1})),
        record(json!({"tag": "setpoint", "value": 101})),
        record(json!({"tag": "setpoint", "value": -1})),
        record(json!({"tag": "setpoint", "value": "high"})),
        Message::new(b"{not json".to_vec(), "test"),
    ];
    let result = step.write(PROVIDER, "default", &batch).await.unwrap();
    let Err(Failure::Reject(rejected)) = result else {
        panic!("expected per-record rejections, got {result:?}");
    };
    let reasons: Vec<(u32, &str)> = rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
    let expected: [(u32, &str); 7] = [
        (4, "unknown tag `ghost`"),
        (5, "tag `temperature` is in the read-only `input` table"),
        (6, "tag `status` is not declared writable"),
        (7, "above the tag's max 100"),
        (8, "below the tag's min 0"),
        (9, "expected a number"),
        (10, "payload is not JSON"),
    ];
    assert_eq!(reasons.len(), expected.len(), "{reasons:?}");
    for ((index, reason), (want_index, want)) in reasons.iter().zip(expected) {
        assert_eq!(*index, want_index);
        assert!(reason.contains(want), "record {index}: `{reason}` lacks `{want}`");
    }

    // Read the registers back with a plain client.
    let mut raw = raw_client(&server, 1).await;
    assert_eq!(raw.read_holding_registers(0, 1).await.unwrap().unwrap(), vec![42]);
    // 12.5 / scale 0.5 = 25.0f32 = 0x41C80000, low word first.
    assert_eq!(
        raw.read_holding_registers(10, 2).await.unwrap().unwrap(),
        vec![0x0000, 0x41C8]
    );
    assert_eq!(raw.read_coils(3, 1).await.unwrap().unwrap(), vec![true]);
    assert_eq!(
        raw.read_holding_registers(30, 3).await.unwrap().unwrap(),
        vec![u16::from_be_bytes(*b"OK"), u16::from_be_bytes(*b"-1"), 0]
    );
    assert_eq!(
        raw.read_holding_registers(20, 1).await.unwrap().unwrap(),
        vec![777],
        "read-only tag unchanged"
    );
    assert_eq!(raw.read_input_registers(0, 1).await.unwrap().unwrap(), vec![99]);
    // Nothing but the four accepted records reached the server as writes; f32 and the string went
    // in one write-multiple request each.
    let writes: Vec<(u8, u16, u16)> = server
        .requests()
        .iter()
        .filter(|r| matches!(r.function, 5 | 6 | 15 | 16))
        .map(|r| (r.function, r.address, r.count))
        .collect();
    assert_eq!(writes, vec![(6, 0, 1), (16, 10, 2), (5, 3, 1), (16, 30, 3)]);

    // A device the sink cannot reach answers `retry` (the batch may come again), not a rejection.
    raw.write_single_register(0, 5).await.unwrap().unwrap();
    let dead_port = sluice_integration::servers::free_port();
    let dead_map = format!("[devices.gone]\naddress = \"127.0.0.1:{dead_port}\"\ntimeout = \"300ms\"\n[[tags]]\nname = \"x\"\ntable = \"holding\"\naddress = 0\nwritable = true\n");
    let other = FakeComponent::serve(&client, "default", "writer-two").await.unwrap();
    provider
        .put_link(Link::sink(
            "writer-two",
            PROVIDER,
            "default",
            &[("register_map", &dead_map)],
        ))
        .await
        .unwrap();
    match other
        .write(PROVIDER, "default", &[record(json!({"tag": "x", "value": 1}))])
        .await
        .unwrap()
    {
        Err(Failure::Retry(reason)) => assert!(
            reason.contains("gone") && reason.contains(&dead_port.to_string()),
            "{reason}"
        ),
        other => panic!("expected retry, got {other:?}"),
    }

    // Malformed maps refuse their link, naming the tag and the field; the good link keeps working.
    let bad_map = format!(
        "[devices.plc]\naddress = \"{}\"\n[[tags]]\nname = \"flow\"\ntable = \"holding\"\naddress = 1\ntype = \"f16\"\n",
        server.address()
    );
    provider
        .put_link(Link::source(
            PROVIDER,
            "bad-source",
            "orders",
            &[("register_map", &bad_map)],
        ))
        .await
        .unwrap();
    let bad_sink_map = format!(
        "[devices.plc]\naddress = \"{}\"\n[[tags]]\nname = \"temp\"\ntable = \"input\"\naddress = 1\nwritable = true\n",
        server.address()
    );
    provider
        .put_link(Link::sink(
            "bad-sink",
            PROVIDER,
            "default",
            &[("register_map", &bad_sink_map)],
        ))
        .await
        .unwrap();
    let status = provider.status().await.unwrap();
    let refusal = |component: &str| {
        status
            .refusal(component)
            .unwrap_or_else(|| panic!("{component} not refused: {status:?}"))
            .to_string()
    };
    let e = refusal("bad-source");
    for needle in [
        "register_map",
        "tag `flow`",
        "field `type`",
        "unknown data type `f16`",
        "orders",
    ] {
        assert!(e.contains(needle), "`{needle}` missing from {e}");
    }
    let e = refusal("bad-sink");
    for needle in [
        "register_map",
        "tag `temp`",
        "field `writable`",
        "read-only",
        "bad-sink",
    ] {
        assert!(e.contains(needle), "`{needle}` missing from {e}");
    }
    step.write(PROVIDER, "default", &[record(json!({"tag": "setpoint", "value": 7}))])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.read_holding_registers(0, 1).await.unwrap().unwrap(), vec![7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_on_change_sends_only_moves_beyond_the_deadband() {
    sluice_integration::init_tracing();
    let preset =
        json!({"units": [1], "size": 10, "values": [{"table": "holding", "address": 0, "registers": [100, 0]}]});
    let server = ModbusServer::start_with(sluice_integration::servers::free_port(), &preset, false).unwrap();
    let nats = NatsServer::start().unwrap();
    let client = nats.connect().await.unwrap();
    let step = FakeComponent::serve(&client, "default", "change-step").await.unwrap();
    let mut provider = HostedProvider::start(&nats, BINARY, PROVIDER, &[]).await.unwrap();
    // `probe` (no deadband) is written together with `level` in one request, so a record of the
    // probe's new value proves a poll saw the level's new value too.
    let map = format!(
        "[devices.tank]\naddress = \"{}\"\ninterval = \"50ms\"\n\
         [[tags]]\nname = \"level\"\ntable = \"holding\"\naddress = 0\ndeadband = 5\n\
         [[tags]]\nname = \"probe\"\ntable = \"holding\"\naddress = 1\n",
        server.address()
    );
    provider
        .put_link(Link::source(
            PROVIDER,
            "change-step",
            "default",
            &[
                ("register_map", &map),
                ("record_per", "tag"),
                ("report_on_change", "true"),
                ("linger", "5ms"),
            ],
        ))
        .await
        .unwrap();
    let values = |s: &FakeComponent, tag: &str| -> Vec<Value> {
        bodies(s)
            .into_iter()
            .filter(|b| b["tag"] == tag)
            .map(|b| b["value"].clone())
            .collect()
    };
    assert!(
        step.wait_for(Duration::from_secs(20), |s| values(s, "level") == [json!(100)]
            && values(s, "probe") == [json!(0)])
            .await
    );
    let mut raw = raw_client(&server, 1).await;
    for (level, probe) in [(103u16, 1u16), (96, 2), (110, 3), (106, 4), (104, 5)] {
        raw.write_multiple_registers(0, &[level, probe]).await.unwrap().unwrap();
        assert!(
            step.wait_for(Duration::from_secs(20), |s| values(s, "probe").contains(&json!(probe)))
                .await
        );
    }
    // Unchanged polls sent nothing; the level went out only when it moved more than 5 from the
    // last value sent (100 -> 110 -> 104).
    assert_eq!(values(&step, "probe"), [0, 1, 2, 3, 4, 5].map(|v| json!(v)));
    assert_eq!(values(&step, "level"), [json!(100), json!(110), json!(104)]);
}
