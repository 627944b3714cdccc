//! The S3 connection of one link: endpoint, region, addressing and credentials, and errors that
//! say what went wrong in words an operator can act on.

use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader, ConnectorError, Secret};

/// Where and as whom a link talks to S3. Read from the link config and secrets.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `bucket`: the bucket the link reads or writes.
    pub bucket: String,
    /// `endpoint`: an S3-compatible endpoint URL; absent for AWS.
    pub endpoint: Option<String>,
    /// `region` (default `us-east-1`).
    pub region: String,
    /// `path_style`: path-style addressing (default `true` with an `endpoint`, else `false`).
    pub path_style: bool,
    /// `timeout`: deadline of one S3 operation, retries included (default `60s`).
    pub timeout: Duration,
    /// Secret `access_key_id`.
    access_key_id: Secret,
    /// Secret `secret_access_key`.
    secret_access_key: Secret,
    /// Secret `session_token`, for temporary credentials.
    session_token: Option<Secret>,
}

impl ClientConfig {
    /// Reads the connection keys and secrets of a link.
    pub fn from_config(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let bucket = config.required_str("bucket")?.to_string();
        let endpoint = config.str("endpoint").filter(|e| !e.is_empty()).map(str::to_string);
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "endpoint",
                    format!("expected an http:// or https:// URL, got `{endpoint}`"),
                ));
            }
        }
        let text = |key: &str, secret: Secret| {
            if secret.expose_str().is_some_and(|s| !s.is_empty()) {
                Ok(secret)
            } else {
                Err(ConfigError::invalid(key, "expected non-empty UTF-8 text"))
            }
        };
        Ok(Self {
            bucket,
            region: config.str("region").unwrap_or("us-east-1").to_string(),
            path_style: config.bool_or("path_style", endpoint.is_some())?,
            timeout: config.duration_or("timeout", Duration::from_secs(60))?,
            endpoint,
            access_key_id: text("access_key_id", config.required_secret("access_key_id")?)?,
            secret_access_key: text("secret_access_key", config.required_secret("secret_access_key")?)?,
            session_token: config
                .secret("session_token")?
                .map(|s| text("session_token", s))
                .transpose()?,
        })
    }

    /// A client for this link. Checksums are only sent where S3 requires them, so
    /// S3-compatible servers that predate the newer checksum headers work too.
    #[must_use]
    pub fn client(&self) -> aws_sdk_s3::Client {
        let expose = |s: &Secret| s.expose_str().unwrap_or_default().to_string();
        let credentials = Credentials::new(
            expose(&self.access_key_id),
            expose(&self.secret_access_key),
            self.session_token.as_ref().map(expose),
            None,
            "sluice-link-secrets",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(self.path_style)
            .http_client(http)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_timeout(self.timeout)
                    .build(),
            );
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }
}

/// An S3 operation that failed, described for an operator.
#[derive(Debug, thiserror::Error)]
#[error("{operation} on bucket `{bucket}`: {detail}")]
pub struct S3Error {
    /// The operation, e.g. `ListObjectsV2`.
    pub operation: &'static str,
    /// The bucket.
    pub bucket: String,
    /// S3's error code (`NoSuchBucket`, `SignatureDoesNotMatch`) or the transport's failure.
    pub detail: String,
    /// Whether asking again cannot help: a client error (no bucket, bad credentials; any 4xx but
    /// 408 and 429) rather than a server error, a timeout or an unreachable endpoint.
    pub permanent: bool,
}

impl S3Error {
    /// Describes `err` from `operation` on `bucket`.
    pub fn new<E>(operation: &'static str, bucket: &str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (detail, permanent) = match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let status = service.raw().status().as_u16();
                let code = e.code().unwrap_or_default();
                let hint = match code {
                    "NoSuchBucket" => " (the bucket does not exist)",
                    "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => {
                        " (check the `access_key_id` and `secret_access_key` secrets)"
                    }
                    _ => "",
                };
                // A client error stays one when asked again (bar a timeout or throttling); a
                // server error, such as `SlowDown` or `InternalError`, may pass.
                let permanent = (400..500).contains(&status) && !matches!(status, 408 | 429);
                let code = if code.is_empty() {
                    format!("HTTP {status} without an S3 error code")
                } else {
                    code.to_string()
                };
                let message = e.message().map(|m| format!(": {m}")).unwrap_or_default();
                (format!("{code}{hint}{message}"), permanent)
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
                format!("could not reach the endpoint: {}", DisplayErrorContext(&err)),
                false,
            ),
            _ => (DisplayErrorContext(&err).to_string(), false),
        };
        Self {
            operation,
            bucket: bucket.to_string(),
            detail,
            permanent,
        }
    }
}

impl From<S3Error> for ConnectorError {
    /// A permanent error refuses the link; any other is tried again by the engine first.
    fn from(err: S3Error) -> Self {
        if err.permanent {
            Self::new(err)
        } else {
            Self::transient(err)
        }
    }
}

/// Checks that the link's credentials work and its bucket exists, so a bad link is refused when
/// it is put rather than failing every write later.
pub async fn check_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), S3Error> {
    client
        .list_objects_v2()
        .bucket(bucket)
        .max_keys(1)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| S3Error::new("ListObjectsV2", bucket, e))
}

/// The keys of [`ClientConfig`], on source and sink links.
pub const KEYS: &[Key] = &[
    Key::new("bucket", KeyType::String, "The bucket").required(),
    Key::new(
        "endpoint",
        KeyType::String,
        "`http://` or `https://` URL of an S3-compatible server (default AWS)",
    ),
    Key::new("region", KeyType::String, "Signing region").default("us-east-1"),
    Key::new(
        "path_style",
        KeyType::Bool,
        "Path-style addressing (default: `true` with `endpoint`, else `false`)",
    ),
    Key::new(
        "timeout",
        KeyType::Duration,
        "Deadline of one S3 operation, retries included",
    )
    .default("60s"),
    Key::new("access_key_id", KeyType::String, "Access key id")
        .secret()
        .required(),
    Key::new("secret_access_key", KeyType::String, "Secret access key")
        .secret()
        .required(),
    Key::new(
        "session_token",
        KeyType::String,
        "Session token, for temporary credentials",
    )
    .secret(),
];

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    /// The error a `ListObjectsV2` answered with `status` and S3 error `code` turns into.
    fn answered(status: u16, code: Option<&str>) -> S3Error {
        let mut meta = ErrorMetadata::builder();
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let response = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        let err = SdkError::service_error(ListObjectsV2Error::generic(meta.build()), response);
        S3Error::new("ListObjectsV2", "b", err)
    }

    #[test]
    fn client_errors_refuse_and_server_errors_are_tried_again() {
        let missing = answered(404, Some("NoSuchBucket"));
        assert!(missing.permanent);
        assert_eq!(
            missing.to_string(),
            "ListObjectsV2 on bucket `b`: NoSuchBucket (the bucket does not exist)"
        );
        assert!(answered(403, Some("SignatureDoesNotMatch")).permanent);
        assert!(answered(400, None).permanent);
        for (status, code) in [(503, Some("SlowDown")), (500, None), (429, None), (408, None)] {
            let err = answered(status, code);
            assert!(!err.permanent, "{err}");
            assert!(ConnectorError::from(err).is_transient());
        }
        assert_eq!(
            answered(502, None).to_string(),
            "ListObjectsV2 on bucket `b`: HTTP 502 without an S3 error code"
        );
    }
}
