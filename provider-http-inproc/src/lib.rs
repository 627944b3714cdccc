//! HTTP ingress for Sluice: one listener for the whole provider, any number of source links, each
//! a route (path prefix, optional host and methods) to its own pipeline step.
//!
//! - Routing is deterministic ([`router`]): the path is normalized first ([`path`]: `//`, dot
//!   segments and unreserved percent-encoding; an encoded `/` is `400`) and matched
//!   case-insensitively; host routes before any-host routes, then the longest prefix, then an
//!   explicit method before "any method". A link whose route collides with another link's, or
//!   lies under another link's prefix without that route declaring it (`nested_routes`), is
//!   refused at link time with an error naming both; routes come and go with links while the
//!   listener keeps running.
//! - A request becomes records ([`records`]): one per request, or one per line for
//!   `application/x-ndjson`; key = path, selected headers, origin `http:<route>#<request-id>`.
//! - Acknowledgement is synchronous: the answer is sent once the step's `deliver` returned —
//!   200/202 accepted, 422 rejected (with reasons), 503 + `Retry-After` (retry or timeout), 429
//!   (the route's in-flight limit), 413 (body limit), 408 (slow body), 404/405 (no route),
//!   401 (bearer token, a wasmCloud secret).
//! - `GET /healthz` on every host; `GET /metrics` (Prometheus text, naming every route and
//!   component) only on a separate `metrics_address`.
//!
//! The connector is a [`RequestSource`] on `sluice-provider-core`; nothing here depends on
//! wasmCloud. Every config key is documented in this crate's README.

pub mod config;
pub mod metrics;
pub mod path;
pub mod records;
pub mod router;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_provider_core::{
    ConfigError, ConfigReader, ConnectorError, Delivery, LinkKey, RequestSource, RunnerSettings,
};

use crate::config::{RouteConfig, ServerConfig};
use crate::router::{Route, Router};
use crate::server::{Server, ServerError};

/// The HTTP source: the listener and its route table.
#[derive(Debug)]
pub struct HttpSource {
    router: Arc<Router>,
    server: Server,
}

impl HttpSource {
    /// Reads the provider config and starts listening. Must run inside a Tokio runtime.
    pub fn start(config: &ConfigReader<'_>) -> anyhow::Result<Self> {
        let config = ServerConfig::from_config(config)?;
        Ok(Self::with_config(&config)?)
    }

    /// Starts listening with `config`.
    pub fn with_config(config: &ServerConfig) -> Result<Self, ServerError> {
        let router = Arc::new(Router::default());
        let server = Server::start(config, Arc::clone(&router))?;
        Ok(Self { router, server })
    }

    /// Where the listener is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where `/metrics` is served (`metrics_address`), if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    /// The route table.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }
}

impl RequestSource for HttpSource {
    type Config = RouteConfig;
    type Route = Arc<Route>;

    /// A client is waiting: 32 requests in flight per route (then 429); each `deliver` call
    /// bounded by 2s and retried from 50ms up to 1s apart, within the route's
    /// `request_timeout` (then 503). A short per-call deadline means a step that stalls one
    /// call is asked again instead of holding the client for the whole request timeout.
    fn runner_defaults(&self) -> RunnerSettings {
        let mut settings = RunnerSettings {
            max_in_flight: 32,
            deliver_timeout: std::time::Duration::from_secs(2),
            ..RunnerSettings::default()
        };
        settings.backoff.initial = std::time::Duration::from_millis(50);
        settings.backoff.max = std::time::Duration::from_secs(1);
        settings
    }

    fn parse_config(&self, config: &ConfigReader<'_>) -> Result<RouteConfig, ConfigError> {
        RouteConfig::from_config(config)
    }

    /// The route collides or nests undeclared with no other link's route.
    fn check(&self, link: &LinkKey, config: &RouteConfig) -> Result<(), ConnectorError> {
        self.router.check(config, link).map_err(ConnectorError::new)
    }

    fn attach(&self, link: &LinkKey, config: RouteConfig, delivery: Delivery) -> Result<Arc<Route>, ConnectorError> {
        let route = self.router.insert(config, delivery).map_err(ConnectorError::new)?;
        tracing::info!(%link, route = %router::RouteDisplay(&route.config), "route added");
        Ok(route)
    }

    fn detach(&self, route: Arc<Route>) {
        self.router.remove(&route);
        tracing::info!(link = %route.link(), route = %router::RouteDisplay(&route.config), "route removed");
    }

    async fn close(&self) {
        self.server.shutdown().await;
    }
}

/// Every link config key of the provider (the engine's with this source's defaults, the
/// route's) and its own config's keys.
#[must_use]
pub fn schema() -> sluice_provider_core::schema::Schema {
    use sluice_provider_core::Role;
    sluice_provider_core::schema::Schema::new(
        "http-inproc",
        "HTTP ingress source: each link a route; a request is answered once the step accepted its records",
        true,
        false,
    )
    .keys(config::ROUTE_KEYS)
    .provider_keys(config::SERVER_KEYS)
    .with_default(Role::Source, "max_in_flight", "32")
    .with_default(Role::Source, "deliver_timeout", "2s")
    .with_default(Role::Source, "retry_initial", "50ms")
    .with_default(Role::Source, "retry_max", "1s")
}

#[cfg(test)]
mod schema_tests {
    use std::collections::HashMap;

    use sluice_provider_core::schema::{check_keys, parse_engine_keys_with, testing};
    use sluice_provider_core::Role;

    use super::*;

    /// The defaults of [`HttpSource::runner_defaults`], without starting a listener.
    fn runner_defaults() -> RunnerSettings {
        let mut settings = RunnerSettings {
            max_in_flight: 32,
            deliver_timeout: std::time::Duration::from_secs(2),
            ..RunnerSettings::default()
        };
        settings.backoff.initial = std::time::Duration::from_millis(50);
        settings.backoff.max = std::time::Duration::from_secs(1);
        settings
    }

    #[tokio::test]
    async fn the_documented_defaults_are_the_sources() {
        let config = ServerConfig::from_config(&ConfigReader::new(
            &[("address".to_string(), "127.0.0.1:0".to_string())].into(),
            &HashMap::new(),
        ))
        .unwrap();
        let source = HttpSource::with_config(&config).unwrap();
        assert_eq!(source.runner_defaults(), runner_defaults());
        source.close().await;
    }

    #[test]
    fn every_documented_source_key_parses() {
        let config = [
            ("path", Some("/orders")),
            ("nested_routes", Some("/orders/eu")),
            ("host", Some("ingest.example.com")),
            ("methods", None),
            ("token", Some("t")),
            ("max_body", None),
            ("body_timeout", None),
            ("request_timeout", None),
            ("headers", None),
            ("body", None),
            ("success_status", None),
        ];
        check_keys(&schema(), Role::Source, &[&config], |r| {
            parse_engine_keys_with(Role::Source, r, &runner_defaults())?;
            config::RouteConfig::from_config(r)
        });
    }

    #[test]
    fn schema_json_readme_and_refusals() {
        let schema = schema();
        testing::check_committed(&schema, env!("CARGO_MANIFEST_DIR"));
        testing::check_readme(&schema, include_str!("../README.md"));
        testing::check_refusals(&schema);
    }
}
