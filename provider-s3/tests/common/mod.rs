//! Shared set-up of the provider-s3 tests: nats-server + SeaweedFS on 127.0.0.1, a plain S3
//! client, links carrying the credentials as wasmCloud secrets.

#![allow(dead_code)]

use std::io::Read as _;
use std::time::Duration;

use sluice_integration::host::Link;
use sluice_integration::seaweedfs::{object, S3Server};
use sluice_integration::servers::NatsServer;

pub const PROVIDER: &str = "sluice-provider-s3";
pub const BINARY: &str = env!("CARGO_BIN_EXE_sluice-provider-s3");

pub struct Env {
    pub nats: NatsServer,
    pub s3: S3Server,
    pub client: aws_sdk_s3::Client,
}

impl Env {
    pub async fn start() -> Self {
        sluice_integration::init_tracing();
        let nats = NatsServer::start().unwrap();
        let s3 = S3Server::start().unwrap();
        let client = s3.client();
        Self { nats, s3, client }
    }

    /// Creates `bucket`, waiting for the server to be ready.
    pub async fn bucket(&self, bucket: &str) {
        self.s3.create_bucket(bucket).await.unwrap();
    }

    /// A link config for the provider's end, pointing at the test server.
    pub fn config<'a>(&self, bucket: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
        let mut config = vec![
            ("bucket".to_string(), bucket.to_string()),
            ("endpoint".to_string(), self.s3.endpoint()),
        ];
        config.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        config
    }

    /// A sink link; in the mode where a write waits for its objects (`spool = false`) unless
    /// `extra` says otherwise, since that is what most sink tests examine.
    pub fn sink_link(&self, component: &str, name: &str, bucket: &str, extra: &[(&str, &str)]) -> Link {
        let mut config = self.config(bucket, extra);
        if !extra.iter().any(|(k, _)| k.starts_with("spool")) {
            config.push(("spool".to_string(), "false".to_string()));
        }
        let pairs: Vec<(&str, &str)> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.with_secrets(Link::sink(component, PROVIDER, name, &pairs))
    }

    pub fn source_link(&self, component: &str, name: &str, bucket: &str, extra: &[(&str, &str)]) -> Link {
        let config = self.config(bucket, extra);
        let pairs: Vec<(&str, &str)> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.with_secrets(Link::source(PROVIDER, component, name, &pairs))
    }

    pub fn with_secrets(&self, link: Link) -> Link {
        link.with_secret(PROVIDER, "access_key_id", &self.s3.access_key_id)
            .with_secret(PROVIDER, "secret_access_key", &self.s3.secret_access_key)
    }

    /// Every object under `prefix`: (key, size), listed with continuation tokens.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            for o in page.contents() {
                out.push((o.key().unwrap().to_string(), o.size().unwrap_or(0) as u64));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return out,
            }
        }
    }

    /// An object's bytes, decompressed by its extension (`.gz`, `.zst`).
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let body = object(&self.client, bucket, key).await.unwrap().to_vec();
        if key.ends_with(".gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
            out
        } else if key.ends_with(".zst") {
            zstd::decode_all(&body[..]).unwrap()
        } else {
            body
        }
    }

    /// Multipart uploads under `prefix` not completed or aborted.
    pub async fn incomplete_uploads(&self, bucket: &str, prefix: &str) -> usize {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        listed.uploads().len()
    }
}

/// Peak resident memory of a running process in KiB, as the kernel counts it (`VmHWM`): every
/// peak, however short, since the process started.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// Puts `body` as object `key`.
pub async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from(body.into()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
}

/// Peak resident memory of a process, sampled every 20 ms until the returned sender is dropped.
pub fn sample_rss(pid: u32) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<u64>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kib);
                }
            }
            tokio::select! {
                _ = &mut stopped => return peak,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });
    (stop, task)
}
