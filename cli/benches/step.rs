//! Records/s through in -> logic -> out inside one composed step, for 1 KiB JSON records, with the
//! example logic in Rust, Python and JavaScript, next to the same transform as native Rust in the
//! same run. Each contender runs in interleaved rounds; the median round counts.
//!
//! Two ways of calling a step: one instance reused for every batch, and a fresh instance per batch
//! (what a wasmCloud 1.x host does per invocation).
//!
//! `cargo bench -p sluice-cli --bench step` (`STEP_BENCH_SECS` per contender and round, default 1;
//! `STEP_BENCH_ROUNDS`, default 5).

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "../../examples/logic/rust/src/mapper.rs"]
mod mapper;

use std::time::{Duration, Instant};

use common::fixtures::{self, Lang};
use common::host::{message, Bounds, Message, StepHost};
use sluice_compose::compose::compose;

/// Records per batch: the source runner's default `max_batch_records`.
const BATCH: usize = 64;
/// Bytes per record payload.
const RECORD: usize = 1024;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A batch of 1 KiB readings (padded JSON objects the mapper keeps).
fn batch() -> Vec<Message> {
    (0..BATCH)
        .map(|i| {
            let head = format!(r#"{{"device":"d-{i:06}","temp":21.5,"site":"plant-1","pad":""#);
            let mut payload = head.into_bytes();
            payload.resize(RECORD - 2, b'x');
            payload.extend_from_slice(b"\"}");
            assert_eq!(payload.len(), RECORD);
            message(&payload, &format!("bench:readings/{i}"))
        })
        .collect()
}

/// The transform as native Rust: the Rust example's mapper, with the records collected as a sink
/// would receive them.
fn native(batch: &[Message]) -> usize {
    let mut written = Vec::with_capacity(batch.len());
    for m in batch {
        if let mapper::Outcome::Keep { key, payload } = mapper::map(&m.payload) {
            written.push(Message {
                key: Some(key),
                payload,
                ..m.clone()
            });
        }
    }
    written.len()
}

/// A way to push batches through, timed for `budget`; returns records/s.
trait Contender {
    fn run(&mut self, batch: &[Message], budget: Duration) -> f64;
}

struct Native;

impl Contender for Native {
    fn run(&mut self, batch: &[Message], budget: Duration) -> f64 {
        let started = Instant::now();
        let mut records = 0;
        while started.elapsed() < budget {
            assert_eq!(native(batch), batch.len());
            records += batch.len();
        }
        records as f64 / started.elapsed().as_secs_f64()
    }
}

struct Wasm {
    host: StepHost,
    per_batch_instance: bool,
}

impl Contender for Wasm {
    fn run(&mut self, batch: &[Message], budget: Duration) -> f64 {
        let mut step = self.host.instantiate().unwrap();
        let started = Instant::now();
        let mut records = 0;
        while started.elapsed() < budget {
            if self.per_batch_instance {
                step = self.host.instantiate().unwrap();
            }
            step.deliver(batch).unwrap().unwrap();
            let written = std::mem::take(&mut step.store.data_mut().written);
            assert_eq!(written.iter().map(Vec::len).sum::<usize>(), batch.len());
            step.store.data_mut().logs.clear();
            records += batch.len();
        }
        records as f64 / started.elapsed().as_secs_f64()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let budget = Duration::from_secs(env_number("STEP_BENCH_SECS", 1));
    let rounds = env_number("STEP_BENCH_ROUNDS", 5) as usize;
    let batch = batch();
    let bounds = Bounds {
        deadline: Duration::from_secs(600),
        ..Bounds::default()
    };

    let mut names = vec!["native Rust".to_string()];
    let mut sizes = vec![String::from("-")];
    let mut contenders: Vec<Box<dyn Contender>> = vec![Box::new(Native)];
    for lang in Lang::ALL {
        let logic = fixtures::example(lang);
        let step = compose(&logic, &fixtures::compose_options(lang)).unwrap();
        let instances = sluice_compose::component::core_instantiations(&step.bytes).unwrap();
        for per_batch_instance in [false, true] {
            names.push(format!(
                "{} logic, {}",
                lang.name(),
                if per_batch_instance {
                    "instance per batch"
                } else {
                    "reused instance"
                }
            ));
            sizes.push(format!(
                "logic {} KiB, step {} KiB, {instances} core instances",
                logic.len() / 1024,
                step.bytes.len() / 1024
            ));
            contenders.push(Box::new(Wasm {
                host: StepHost::new(&step.bytes, bounds).unwrap(),
                per_batch_instance,
            }));
        }
    }

    let mut samples = vec![Vec::new(); contenders.len()];
    for round in 0..rounds {
        for (i, contender) in contenders.iter_mut().enumerate() {
            samples[i].push(contender.run(&batch, budget));
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    println!("\n{BATCH} records of {RECORD} B per batch; median of {rounds} rounds of {budget:?}\n");
    println!("| path | records/s | vs native | sizes |");
    println!("| --- | ---: | ---: | --- |");
    for ((name, rate), size) in names.iter().zip(&medians).zip(&sizes) {
        println!("| {name} | {:.0} | {:.3}x | {size} |", rate, rate / medians[0]);
    }
}
