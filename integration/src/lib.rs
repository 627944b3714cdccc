//! Real-server test tooling for Sluice providers.
//!
//! - [`servers`]: starts real servers (NATS with JetStream, ...) on free 127.0.0.1 ports, installing
//!   them first when missing, and stops them when dropped, even on panic.
//! - [`host`]: starts a provider binary exactly as a wasmCloud 1.x host does (HostData as base64
//!   JSON on stdin, environment cleared), puts and deletes links over the lattice control subjects,
//!   seals link secrets, checks health, kills with SIGKILL and restarts.
//! - [`component`]: plays a pipeline step natively over wRPC: serves `ingest.deliver` with a
//!   chosen behaviour (accept, reject some records, retry, stall) and calls `sink.write`.
//! - [`seaweedfs`]: an S3-protocol server (SeaweedFS `weed server` with its S3 gateway).
//! - [`fixture`]: file-backed source and sink connectors for the provider-shaped test binary.
//! - [`modbus`]: a real Modbus TCP server (pymodbus) with preset registers and a request log.
//! - [`proxy`]: a TCP forwarder a test cuts and restores, for outages of a real server.
//! - [`procfs`]: a process's CPU time and memory, as the kernel counts them.
//! - [`otlp`]: an OTLP/HTTP receiver that keeps the spans exporters send it.

pub mod component;
pub mod fixture;
pub mod host;
pub mod modbus;
pub mod otlp;
pub mod procfs;
pub mod proxy;
pub mod seaweedfs;
pub mod servers;

/// Installs a `tracing` subscriber for tests (once), honouring `RUST_LOG`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}
