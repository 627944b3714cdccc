//! Checking, when a link is put, that the brokers answer and the named topics exist.

use rdkafka::error::KafkaResult;
use rdkafka::metadata::Metadata;
use sluice_provider_core::ConnectorError;

/// Runs `fetch` (a blocking metadata request) on a blocking thread and checks that every topic in
/// `topics` exists, so a link to an unreachable cluster or a missing topic is refused at once.
pub(crate) async fn check_topics(
    fetch: impl FnOnce() -> KafkaResult<Metadata> + Send + 'static,
    servers: String,
    topics: Vec<String>,
) -> Result<(), ConnectorError> {
    tokio::task::spawn_blocking(move || {
        let metadata =
            fetch().map_err(|e| ConnectorError::msg(format!("cannot reach the brokers at {servers}: {e}")))?;
        let exists = |topic: &String| {
            metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none())
        };
        match topics.iter().find(|topic| !exists(topic)) {
            Some(missing) => Err(ConnectorError::msg(format!(
                "topic `{missing}` does not exist at {servers}"
            ))),
            None => Ok(()),
        }
    })
    .await
    .map_err(ConnectorError::new)?
}
