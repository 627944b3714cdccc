//! Checking, when a link is put, that the brokers answer and the named topics exist.

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use sluice_provider_core::ConnectorError;

/// Runs `fetch` (a blocking metadata request) on a blocking thread and checks that every topic in
/// `topics` exists, so a link to an unreachable cluster or a missing topic is refused at once.
/// Each topic comes with the config key that names it, when the error should name it (e.g.
/// `dead_letter_topic`).
pub(crate) async fn check_topics(
    fetch: impl FnOnce() -> KafkaResult<Metadata> + Send + 'static,
    servers: String,
    topics: Vec<(Option<&'static str>, String)>,
) -> Result<(), ConnectorError> {
    tokio::task::spawn_blocking(move || {
        let metadata = fetch().map_err(|e| {
            let message = format!("cannot reach the brokers at {servers}: {e}");
            if refused_for_good(&e) {
                ConnectorError::msg(message)
            } else {
                // Brokers down or still starting: the engine keeps the link degraded and tries again.
                ConnectorError::transient(message)
            }
        })?;
        let exists = |topic: &String| {
            metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none())
        };
        match topics.iter().find(|(_, topic)| !exists(topic)) {
            Some((key, missing)) => Err(ConnectorError::msg(format!(
                "{}topic `{missing}` does not exist at {servers}",
                key.map(|k| format!("`{k}`: ")).unwrap_or_default()
            ))),
            None => Ok(()),
        }
    })
    .await
    .map_err(ConnectorError::new)?
}

/// Whether a failed metadata request means the link can never work as configured (credentials,
/// authorization, TLS), rather than brokers that cannot be reached right now.
fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::InvalidArgument
        )
    )
}
