//! Deploying Sluice pipelines on wasmCloud 1.x.
//!
//! - [`spec`]: a customer's pipeline spec (`pipeline.yaml`), checked with field paths in errors;
//! - [`manifest`]: the spec rendered as a wadm `core.oam.dev/v1beta1` Application;
//! - [`dag`]: multi-step specs (`steps:`/`sinks:` joined by JetStream hops), rendered, deployed, watched;
//! - [`archive`]: provider archives (`.par.gz`, written by `cargo xtask par`) read back as the host does;
//! - [`host`]: an embedded wasmCloud 1.x host (`wasmcloud-host` 0.27.1, as `release-1.9.x`);
//! - [`wadm`]: embedded wadm (`wadm` 0.21.1) and a client for its API;
//! - [`secrets`]: a local secrets backend speaking the host's secrets protocol;
//! - [`digest`]: short content digests naming versions and link configs;
//! - [`children`]: the processes this process started, ended before it exits;
//! - [`local`]: all of the above on a local nats-server, one host per lattice;
//! - [`pipeline`]: a pipeline deployed through wadm, watched and undeployed;
//! - [`progress`]: a deployed pipeline's live counters, on one line.

pub mod archive;
pub mod children;
pub mod dag;
pub mod digest;
pub mod host;
pub mod local;
pub mod manifest;
pub mod pipeline;
pub mod progress;
pub mod schemas;
pub mod secrets;
pub mod spec;
pub mod wadm;
