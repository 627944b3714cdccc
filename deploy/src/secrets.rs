//! A local wasmCloud secrets backend for `sluice run` and the lattice tests: it speaks the
//! host's secrets protocol (`{prefix}.v1alpha1.{backend}.server_xkey` and `.get`, requests and
//! replies sealed with xkeys) and serves secrets kept in memory, each optionally restricted to one
//! application so one customer's pipeline cannot read another's secrets.
//!
//! A production lattice uses a real backend (e.g. wasmCloud's `nats-kv`) under the same name.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use nkeys::XKey;
use tokio::task::JoinHandle;
use wasmcloud_secrets_types::{
    GetSecretError, Secret, SecretRequest, SecretResponse, RESPONSE_XKEY, SECRET_API_VERSION, WASMCLOUD_HOST_XKEY,
};

/// One secret: its value and, when set, the only application allowed to read it.
#[derive(Clone)]
pub struct SecretEntry {
    /// The value.
    pub value: String,
    /// The application (pipeline name) allowed to read it; `None` = any.
    pub application: Option<String>,
}

impl std::fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEntry")
            .field("value", &"<redacted>")
            .field("application", &self.application)
            .finish()
    }
}

/// A running backend; stops when dropped.
#[derive(Debug)]
pub struct LocalSecrets {
    task: JoinHandle<()>,
}

impl Drop for LocalSecrets {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply_error(error: GetSecretError) -> Vec<u8> {
    serde_json::to_vec(&SecretResponse::from(error)).unwrap_or_default()
}

fn answer(
    secrets: &HashMap<String, SecretEntry>,
    server: &XKey,
    msg: &async_nats::Message,
) -> (Option<XKey>, Result<Vec<u8>, GetSecretError>) {
    let Some(host_key) = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(WASMCLOUD_HOST_XKEY))
        .and_then(|k| XKey::from_public_key(k.as_str()).ok())
    else {
        return (None, Err(GetSecretError::InvalidXKey));
    };
    let Ok(plain) = server.open(&msg.payload, &host_key) else {
        return (None, Err(GetSecretError::DecryptionError));
    };
    let Ok(request) = serde_json::from_slice::<SecretRequest>(&plain) else {
        return (None, Err(GetSecretError::InvalidRequest));
    };
    if let Err(err) = request.context.valid_claims() {
        return (None, Err(GetSecretError::InvalidEntityJWT(err.to_string())));
    }
    let Some(entry) = secrets.get(&request.key) else {
        return (None, Err(GetSecretError::SecretNotFound));
    };
    if let Some(app) = &entry.application {
        if request.context.application.name.as_deref() != Some(app.as_str()) {
            return (None, Err(GetSecretError::Unauthorized));
        }
    }
    let response = SecretResponse {
        secret: Some(Secret {
            version: "1".into(),
            string_secret: Some(entry.value.clone()),
            binary_secret: None,
        }),
        error: None,
    };
    let Ok(body) = serde_json::to_vec(&response) else {
        return (None, Err(GetSecretError::InvalidPayload));
    };
    let response_key = XKey::new();
    match response_key.seal(&body, &host_key) {
        Ok(sealed) => (Some(response_key), Ok(sealed)),
        Err(_) => (None, Err(GetSecretError::EncryptionError)),
    }
}

impl LocalSecrets {
    /// Serves `secrets` (name -> entry) as backend `backend` under `prefix` (the hosts'
    /// `secrets_topic_prefix`, e.g. [`crate::host::SECRETS_TOPIC_PREFIX`]).
    pub async fn serve(
        nats: async_nats::Client,
        prefix: &str,
        backend: &str,
        secrets: HashMap<String, SecretEntry>,
    ) -> anyhow::Result<Self> {
        let base = format!("{prefix}.{SECRET_API_VERSION}.{backend}");
        let mut sub = nats
            .subscribe(format!("{base}.>"))
            .await
            .context("failed to subscribe for secrets requests")?;
        let server = Arc::new(XKey::new());
        let xkey_subject = format!("{base}.server_xkey");
        let get_subject = format!("{base}.get");
        nats.flush().await?;
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else { continue };
                let result = if msg.subject.as_str() == xkey_subject {
                    nats.publish(reply, server.public_key().into()).await
                } else if msg.subject.as_str() == get_subject {
                    match answer(&secrets, &server, &msg) {
                        (Some(response_key), Ok(body)) => {
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(RESPONSE_XKEY, response_key.public_key().as_str());
                            nats.publish_with_headers(reply, headers, body.into()).await
                        }
                        (_, Err(err)) => {
                            tracing::warn!(%err, "refused a secret request");
                            nats.publish(reply, reply_error(err).into()).await
                        }
                        (None, Ok(_)) => Ok(()),
                    }
                } else {
                    Ok(())
                };
                if let Err(err) = result {
                    tracing::warn!(%err, "failed to answer a secrets request");
                }
            }
        });
        Ok(Self { task })
    }
}
