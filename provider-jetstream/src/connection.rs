//! Connecting with a link's credentials, and making sure its stream exists under its prefix.

use async_nats::jetstream::{self, stream};
use tracing::info;

use crate::config::{Connection, Credentials, Storage, StreamSettings};
use crate::error::JetStreamError;

/// Connects to the link's server, logging in with its secrets.
pub(crate) async fn connect(conn: &Connection, name: &str) -> Result<async_nats::Client, JetStreamError> {
    let auth_error = |reason: String| JetStreamError::Auth {
        url: conn.url.clone(),
        reason,
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(conn.connect_timeout);
    options = match &conn.credentials {
        Credentials::None => options,
        Credentials::UserPassword { user, password } => {
            let text = |s: &sluice_provider_core::Secret, key: &str| {
                s.expose_str()
                    .map(str::to_string)
                    .ok_or_else(|| auth_error(format!("secret `{key}` is not UTF-8")))
            };
            options.user_and_password(text(user, "user")?, text(password, "password")?)
        }
        Credentials::NkeySeed(seed) => options.nkey(
            seed.expose_str()
                .ok_or_else(|| auth_error("secret `nkey_seed` is not UTF-8".into()))?
                .trim()
                .to_string(),
        ),
        Credentials::Creds(creds) => options
            .credentials(
                creds
                    .expose_str()
                    .ok_or_else(|| auth_error("secret `creds` is not UTF-8".into()))?,
            )
            .map_err(|e| auth_error(format!("secret `creds` is not a credentials file: {e}")))?,
    };
    let servers: Vec<&str> = conn.url.split(',').map(str::trim).collect();
    options.connect(servers).await.map_err(|e| {
        let reason = e.to_string();
        match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation | async_nats::ConnectErrorKind::Authentication => {
                auth_error(reason)
            }
            _ => JetStreamError::Connect {
                url: conn.url.clone(),
                reason,
            },
        }
    })
}

/// Checks a link against its server without changing anything: the server answers with these
/// credentials, and a stream of the link's name, if there is one, stays under the prefix.
pub(crate) async fn check(conn: &Connection, name: &str) -> Result<(), JetStreamError> {
    let client = connect(conn, name).await?;
    let js = jetstream::new(client);
    match js.get_stream(&conn.stream.name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| api("reading the stream's info", e, true))?;
            confined(&conn.stream.name, &info.config.subjects, &conn.subject_prefix)
        }
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(api(&format!("looking up stream `{}`", conn.stream.name), e, true)),
    }
}

fn not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref api)
        if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A stream whose subjects all lie under `prefix`, or the error that refuses the link.
fn confined(stream: &str, subjects: &[String], prefix: &str) -> Result<(), JetStreamError> {
    if subjects.is_empty() || subjects.iter().any(|s| !crate::config::under_prefix(s, prefix)) {
        return Err(JetStreamError::StreamOutsidePrefix {
            stream: stream.to_string(),
            subjects: subjects.to_vec(),
            prefix: prefix.to_string(),
        });
    }
    Ok(())
}

/// Returns the link's stream, creating it with the link's limits when missing. A stream of that
/// name with subjects outside the prefix refuses the link: a link never touches it.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
    prefix: &str,
) -> Result<stream::Stream, JetStreamError> {
    match js.get_stream(&settings.name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| api("reading the stream's info", e, true))?;
            confined(&settings.name, &info.config.subjects, prefix)?;
            Ok(stream)
        }
        Err(e) if not_found(&e) => {
            let config = stream::Config {
                name: settings.name.clone(),
                subjects: settings.subjects.clone(),
                max_bytes: settings.max_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
                max_age: settings.max_age.unwrap_or_default(),
                storage: match settings.storage {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                num_replicas: settings.replicas,
                max_message_size: settings
                    .max_record_size
                    .map_or(-1, |b| i32::try_from(b).unwrap_or(i32::MAX)),
                duplicate_window: settings.dedup_window,
                ..Default::default()
            };
            let stream = js.create_stream(config).await.map_err(|e| {
                // Subjects overlapping another stream, bad limits: trying again does not help.
                let transient = !matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(_));
                api(&format!("creating stream `{}`", settings.name), e, transient)
            })?;
            info!(stream = %settings.name, subjects = ?settings.subjects, "created stream");
            Ok(stream)
        }
        Err(e) => Err(api(&format!("looking up stream `{}`", settings.name), e, true)),
    }
}

/// A JetStream API error while doing `what`.
pub(crate) fn api(what: &str, err: impl std::fmt::Display, transient: bool) -> JetStreamError {
    JetStreamError::Api {
        what: what.to_string(),
        reason: err.to_string(),
        transient,
    }
}
