//! A wasmtime host for composed steps: what a wasmCloud host does for a step, reduced to one
//! step and a native sink (`sluice test` and the tests use it). Records cross it in the wire form
//! (`wire-message`, converted with `sluice-wire`, as a provider does): callers deliver and read
//! back `message`s. It provides `sluice:pipeline/sink`
//! and `wasi:logging` natively, `wasi:clocks`,
//! `wasi:random`, `wasi:io/poll` and `wasi:cli/environment` (an empty environment, which the Python
//! runtime reads) from `wasmtime-wasi`, and nothing else, so a step importing anything more fails
//! to instantiate. Execution is bounded like a wasmCloud host bounds it: an
//! epoch deadline (wasmCloud's `--max-execution-time-ms`), optionally fuel, and a linear memory
//! limit (`--max-linear-memory-bytes`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, HasData, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::WasiCliView;
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::p2::bindings as wasi_p2;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    world: "sluice:harness/host-step",
    path: "../wit",
    additional_derives: [PartialEq, Eq],
});

use self::wasi::logging::logging::Level;
pub use sluice::pipeline::types::{Failure, Message, Rejected, WireMessage};

/// How often the epoch advances: the granularity of the execution deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The bounds a host puts on each call into a step.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Wall-clock time one call may take (epoch deadline).
    pub deadline: Duration,
    /// Fuel (roughly, Wasm instructions) one call may burn; `None` to not meter fuel.
    pub fuel: Option<u64>,
    /// The most bytes any one linear memory of the step may grow to.
    pub max_memory: usize,
}

impl Default for Bounds {
    /// 2 s, no fuel, 256 MiB (wasmCloud's default linear memory limit).
    /// `sluice test` uses the operator settings README recommends instead (see `cases`).
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(2),
            fuel: None,
            max_memory: 256 << 20,
        }
    }
}

/// One instance's state: what the native sink received, the log lines, WASI's context.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// Every batch the step wrote to the sink, decoded from the wire form.
    pub written: Vec<Vec<Message>>,
    /// Every log line: `level context: message`.
    pub logs: Vec<String>,
    /// What the sink answers instead of success, when set.
    pub sink_failure: Option<Failure>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl sluice::pipeline::types::Host for State {}

impl sluice::pipeline::sink::Host for State {
    /// Keeps the batch; like a provider, it rejects a record not in the wire form by index and
    /// keeps the rest.
    fn write(&mut self, batch: Vec<WireMessage>) -> Result<(), Failure> {
        if let Some(failure) = self.sink_failure.clone() {
            return Err(failure);
        }
        let mut kept = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for (index, wire) in (0u32..).zip(batch) {
            match from_wire(wire) {
                Ok(message) => kept.push(message),
                Err(err) => refused.push(Rejected {
                    index,
                    reason: err.to_string(),
                }),
            }
        }
        self.written.push(kept);
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Failure::Reject(refused))
        }
    }
}

/// A record as it travels to the step.
#[must_use]
pub fn to_wire(message: &Message) -> WireMessage {
    WireMessage {
        key: message.key.clone(),
        payload: sluice_wire::encode(&message.payload),
        headers: message.headers.clone(),
        timestamp_ms: message.timestamp_ms,
        origin: message.origin.clone(),
    }
}

/// The record a step wrote.
///
/// # Errors
/// When its payload is not in the wire form.
pub fn from_wire(wire: WireMessage) -> Result<Message, sluice_wire::NotWireForm> {
    Ok(Message {
        key: wire.key,
        payload: sluice_wire::decode_string(wire.payload)?,
        headers: wire.headers,
        timestamp_ms: wire.timestamp_ms,
        origin: wire.origin,
    })
}

impl self::wasi::logging::logging::Host for State {
    fn log(&mut self, level: Level, context: String, message: String) {
        self.logs.push(format!("{level:?} {context}: {message}"));
    }
}

/// `wasi:io/poll` works on the resource table alone.
struct Table;

impl HasData for Table {
    type Data<'a> = &'a mut ResourceTable;
}

/// A compiled step, ready to be instantiated many times.
pub struct StepHost {
    engine: Engine,
    pre: HostStepPre<State>,
    bounds: Bounds,
    ticking: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl StepHost {
    /// Compiles the step `bytes` and links it against the host's interfaces.
    ///
    /// # Errors
    /// When the bytes are not a component, or it imports what the host does not provide.
    pub fn new(bytes: &[u8], bounds: Bounds) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        if bounds.fuel.is_some() {
            config.consume_fuel(true);
        }
        let engine = Engine::new(&config)?;
        let component = Component::new(&engine, bytes)?;
        let mut linker = Linker::<State>::new(&engine);
        HostStep::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)?;
        use wasmtime_wasi::cli::WasiCli;
        use wasmtime_wasi::clocks::WasiClocks;
        use wasmtime_wasi::random::WasiRandom;
        wasi_p2::clocks::wall_clock::add_to_linker::<State, WasiClocks>(&mut linker, State::clocks)?;
        wasi_p2::clocks::monotonic_clock::add_to_linker::<State, WasiClocks>(&mut linker, State::clocks)?;
        wasi_p2::random::random::add_to_linker::<State, WasiRandom>(&mut linker, |s| s.wasi.random())?;
        wasi_p2::random::insecure::add_to_linker::<State, WasiRandom>(&mut linker, |s| s.wasi.random())?;
        wasi_p2::random::insecure_seed::add_to_linker::<State, WasiRandom>(&mut linker, |s| s.wasi.random())?;
        wasi_p2::cli::environment::add_to_linker::<State, WasiCli>(&mut linker, State::cli)?;
        wasi_p2::sync::io::poll::add_to_linker::<State, Table>(&mut linker, |s| &mut s.table)?;
        let pre = HostStepPre::new(linker.instantiate_pre(&component)?)?;

        let ticking = Arc::new(AtomicBool::new(true));
        let ticker = {
            let engine = engine.clone();
            let ticking = ticking.clone();
            std::thread::spawn(move || {
                while ticking.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
        };
        Ok(Self {
            engine,
            pre,
            bounds,
            ticking,
            ticker: Some(ticker),
        })
    }

    /// A fresh instance of the step, as a host makes per invocation.
    ///
    /// # Errors
    /// When instantiating traps (e.g. the memory limit is below what the step needs to start).
    pub fn instantiate(&self) -> wasmtime::Result<Step> {
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.bounds.max_memory)
                .trap_on_grow_failure(true)
                .build(),
            written: Vec::new(),
            logs: Vec::new(),
            sink_failure: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let mut step = Step {
            store,
            bindings: None,
            bounds: self.bounds,
        };
        step.arm()?;
        step.bindings = Some(self.pre.instantiate(&mut step.store)?);
        Ok(step)
    }
}

impl Drop for StepHost {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// One instance of a step.
pub struct Step {
    /// The instance's store (its state is the native sink's and logger's record).
    pub store: Store<State>,
    bindings: Option<HostStep>,
    bounds: Bounds,
}

impl Step {
    /// Resets the deadline and the fuel for the next call.
    fn arm(&mut self) -> wasmtime::Result<()> {
        let ticks = self.bounds.deadline.as_millis() / EPOCH_TICK.as_millis();
        self.store.set_epoch_deadline(ticks.max(1) as u64);
        if let Some(fuel) = self.bounds.fuel {
            self.store.set_fuel(fuel)?;
        }
        Ok(())
    }

    /// Calls `ingest.deliver` with `batch` in the wire form; the outer error is a trap (the
    /// instance is unusable afterwards).
    ///
    /// # Errors
    /// A trap: the deadline, fuel or memory ran out, or the step panicked.
    pub fn deliver(&mut self, batch: &[Message]) -> wasmtime::Result<Result<(), Failure>> {
        let batch: Vec<WireMessage> = batch.iter().map(to_wire).collect();
        self.deliver_wire(&batch)
    }

    /// Calls `ingest.deliver` with records as they travel (e.g. one not in the wire form).
    ///
    /// # Errors
    /// As [`Step::deliver`].
    pub fn deliver_wire(&mut self, batch: &[WireMessage]) -> wasmtime::Result<Result<(), Failure>> {
        self.arm()?;
        let bindings = self.bindings.as_ref().expect("instantiated");
        bindings.sluice_pipeline_ingest().call_deliver(&mut self.store, batch)
    }

    /// Every batch the step wrote to the sink.
    #[must_use]
    pub fn written(&self) -> &[Vec<Message>] {
        &self.store.data().written
    }

    /// Every record the step wrote, in order.
    #[must_use]
    pub fn records(&self) -> Vec<Message> {
        self.written().iter().flatten().cloned().collect()
    }

    /// The log lines.
    #[must_use]
    pub fn logs(&self) -> &[String] {
        &self.store.data().logs
    }
}

/// A record with the given payload and origin, no key, headers or timestamp.
#[must_use]
pub fn message(payload: &[u8], origin: &str) -> Message {
    Message {
        key: None,
        payload: payload.to_vec(),
        headers: Vec::new(),
        timestamp_ms: None,
        origin: origin.to_string(),
    }
}
