//! Errors of the JetStream connectors.

use sluice_provider_core::ConnectorError;

/// What went wrong reaching or setting up JetStream for a link.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// The server could not be reached (it may come back).
    #[error("cannot connect to `{url}`: {reason}")]
    Connect {
        /// `url`.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The server refused the credentials, or they could not be read.
    #[error("authentication with `{url}` failed: {reason}")]
    Auth {
        /// `url`.
        url: String,
        /// The client's error (never the secret).
        reason: String,
    },
    /// A stream of this name exists with subjects outside the link's prefix.
    #[error("stream `{stream}` exists with subjects {subjects:?}, outside `subject_prefix` `{prefix}`")]
    StreamOutsidePrefix {
        /// The stream.
        stream: String,
        /// Its subjects.
        subjects: Vec<String>,
        /// `subject_prefix`.
        prefix: String,
    },
    /// A JetStream API call failed.
    #[error("{what}: {reason}")]
    Api {
        /// What was being done.
        what: String,
        /// The server's or client's error.
        reason: String,
        /// Whether trying again may succeed.
        transient: bool,
    },
}

impl From<JetStreamError> for ConnectorError {
    fn from(err: JetStreamError) -> Self {
        let transient = match &err {
            JetStreamError::Connect { .. } => true,
            JetStreamError::Api { transient, .. } => *transient,
            JetStreamError::Auth { .. } | JetStreamError::StreamOutsidePrefix { .. } => false,
        };
        if transient {
            ConnectorError::transient(err)
        } else {
            ConnectorError::new(err)
        }
    }
}
