//! Tags per second polled from a 1,000-tag map: the provider binary (hosted as a wasmCloud host
//! runs it, delivering to a native component over NATS) next to raw tokio-modbus loops reading the
//! same registers from the same pymodbus server in the same run, one tag per request and one
//! merged request per block. Prints a table; asserts nothing.
//!
//! `cargo bench -p sluice-provider-modbus --bench poll`

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_integration::component::FakeComponent;
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::modbus::ModbusServer;
use sluice_integration::servers::{free_port, NatsServer};
use sluice_provider_modbus::map::{RegisterMap, Table};
use sluice_provider_modbus::plan::plan_device;
use tokio_modbus::client::{Context, Reader as _};

const PROVIDER: &str = "sluice-provider-modbus";
const BINARY: &str = env!("CARGO_BIN_EXE_sluice-provider-modbus");
const WINDOW: Duration = Duration::from_secs(4);

/// 1,000 tags over the four tables: 250 coils, 250 discrete inputs, 250 u32 input registers,
/// 250 u16 holding registers, all contiguous.
fn map(address: &str) -> Value {
    let mut tags = Vec::with_capacity(1000);
    for i in 0..250 {
        tags.push(json!({"name": format!("c{i}"), "table": "coil", "address": i}));
        tags.push(json!({"name": format!("d{i}"), "table": "discrete", "address": i}));
        tags.push(json!({"name": format!("i{i}"), "table": "input", "address": 2 * i, "type": "u32"}));
        tags.push(json!({"name": format!("h{i}"), "table": "holding", "address": i}));
    }
    json!({"devices": {"plc": {"address": address, "interval": "1ms", "timeout": "5s"}}, "tags": tags})
}

async fn read(ctx: &mut Context, table: Table, start: u16, count: u16) -> anyhow::Result<()> {
    match table {
        Table::Coil => ctx.read_coils(start, count).await??.len(),
        Table::DiscreteInput => ctx.read_discrete_inputs(start, count).await??.len(),
        Table::InputRegister => ctx.read_input_registers(start, count).await??.len(),
        Table::HoldingRegister => ctx.read_holding_registers(start, count).await??.len(),
    };
    Ok(())
}

/// Tags per second of a raw loop issuing `requests` (table, start, count, tags served) in turn.
async fn raw_rate(server: &ModbusServer, requests: &[(Table, u16, u16, usize)]) -> anyhow::Result<f64> {
    let mut ctx = tokio_modbus::client::tcp::connect_slave(server.address().parse()?, tokio_modbus::Slave(1)).await?;
    let started = Instant::now();
    let mut tags = 0usize;
    while started.elapsed() < WINDOW {
        for &(table, start, count, served) in requests {
            read(&mut ctx, table, start, count).await?;
            tags += served;
        }
    }
    Ok(tags as f64 / started.elapsed().as_secs_f64())
}

/// Tags per second delivered by the provider, and its RSS in KiB.
async fn provider_rate(nats: &NatsServer, server: &ModbusServer, record_per: &str) -> anyhow::Result<(f64, u64)> {
    let client = nats.connect().await?;
    let component = format!("bench-{record_per}");
    let step = FakeComponent::serve(&client, "default", &component).await?;
    let mut provider = HostedProvider::start(nats, BINARY, PROVIDER, &[]).await?;
    let map = map(&server.address()).to_string();
    provider
        .put_link(Link::source(
            PROVIDER,
            &component,
            "default",
            &[
                ("register_map", &map),
                ("record_per", record_per),
                ("max_batch_records", "1000"),
                ("max_batch_bytes", "8MiB"),
                ("linger", "2ms"),
            ],
        ))
        .await?;
    let tags_in = |s: &FakeComponent| -> usize {
        s.accepted()
            .iter()
            .map(|m| {
                let body: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                body["values"].as_object().map_or(1, serde_json::Map::len)
            })
            .sum()
    };
    anyhow::ensure!(
        step.wait_for(Duration::from_secs(30), |s| tags_in(s) >= 1000).await,
        "no poll arrived"
    );
    let before = tags_in(&step);
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let delivered = tags_in(&step) - before;
    let elapsed = started.elapsed();
    let rss = provider.rss_kib().unwrap_or(0);
    provider.terminate().await?;
    Ok((delivered as f64 / elapsed.as_secs_f64(), rss))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As in a provider: a subscriber at the usual level, so disabled trace spans cost nothing.
    sluice_integration::init_tracing();
    let server = ModbusServer::start_with(free_port(), &json!({"units": [1], "size": 1000}), false)?;
    let nats = NatsServer::start()?;

    let register_map = RegisterMap::parse(&map(&server.address()).to_string())?;
    let merged: Vec<(Table, u16, u16, usize)> = plan_device(&register_map, 0)
        .iter()
        .map(|b| (b.table, b.start, b.count, b.tags.len()))
        .collect();
    let per_tag: Vec<(Table, u16, u16, usize)> = register_map
        .tags
        .iter()
        .map(|t| (t.table, t.address, t.width(), 1))
        .collect();

    let raw_one = raw_rate(&server, &per_tag).await?;
    let raw_merged = raw_rate(&server, &merged).await?;
    let (device_rate, device_rss) = provider_rate(&nats, &server, "device").await?;
    let (tag_rate, tag_rss) = provider_rate(&nats, &server, "tag").await?;

    println!("1,000 tags (250 coils, 250 discrete inputs, 250 u32 input, 250 u16 holding), one pymodbus 3.16");
    println!(
        "server on 127.0.0.1, {} merged requests per poll; {:.0?} per measurement; 2 shared cores",
        merged.len(),
        WINDOW
    );
    println!(
        "{:<44} {:>12} {:>12} {:>14} {:>9}",
        "", "tags/s", "/ raw 1-tag", "/ raw merged", "RSS"
    );
    let row = |name: &str, rate: f64, rss: Option<u64>| {
        println!(
            "{name:<44} {rate:>12.0} {:>11.2}x {:>13.2}x {:>9}",
            rate / raw_one,
            rate / raw_merged,
            rss.map_or(String::new(), |r| format!("{:.1} MiB", r as f64 / 1024.0))
        );
    };
    row("raw tokio-modbus, one tag per request", raw_one, None);
    row("raw tokio-modbus, one request per block", raw_merged, None);
    row("provider, record per device poll", device_rate, Some(device_rss));
    row("provider, record per tag", tag_rate, Some(tag_rss));
    Ok(())
}
