//! Multi-step pipelines: specs with named `steps:` and `sinks:` joined by JetStream hops
//! ([`spec`]), rendered as one wadm manifest ([`render`]), deployed and watched with counts per
//! step and per hop ([`deployment`]).

pub mod deployment;
pub mod render;
pub mod spec;

pub use deployment::{progress_of, DagDeployment};
pub use render::{render_dag, DagIds, DagImages, Hop, HopConsumer};
pub use spec::{AnySpec, DagSource, DagSpec, DagStep, Hops, PipelineRef, Relay};
