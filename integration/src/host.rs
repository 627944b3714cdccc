//! Starts a provider binary the way a wasmCloud 1.x host does, and drives it over the lattice.
//!
//! What is reproduced (from the host's `release-1.9.x` sources): the environment is cleared but for
//! `RUST_LOG`/`OTEL_*`; stdin gets the base64 of the HostData JSON, `\r\n`, then EOF; links are
//! published on `wasmbus.rpc.{lattice}.{provider_xkey}.linkdefs.put` and deleted on
//! `wasmbus.rpc.{lattice}.{provider_key}.linkdefs.del`; link secrets are sealed with the host's xkey
//! for the provider's xkey; health and shutdown are request/reply on the provider's subjects; a
//! restarted provider gets the current links in its HostData.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use nkeys::XKey;
use serde_json::{json, Value};
use sluice_provider_core::engine::Status;
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};

use crate::servers::{temp_dir, NatsServer};

/// A link as the host sends it (`InterfaceLinkDefinition`).
#[derive(Debug, Clone)]
pub struct Link {
    /// The caller: a component id, or the provider key when the provider feeds a component.
    pub source_id: String,
    /// The callee.
    pub target: String,
    /// The link name.
    pub name: String,
    /// WIT interfaces, e.g. `["ingest"]` or `["sink"]`.
    pub interfaces: Vec<String>,
    /// Config for the source end.
    pub source_config: HashMap<String, String>,
    /// Config for the target end.
    pub target_config: HashMap<String, String>,
    /// Plaintext secrets for the source end (sealed when sent).
    pub source_secrets: HashMap<String, String>,
    /// Plaintext secrets for the target end (sealed when sent).
    pub target_secrets: HashMap<String, String>,
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Link {
    /// The provider feeds `component` (`sluice:pipeline/ingest`) with `config` for the provider.
    pub fn source(provider: &str, component: &str, name: &str, config: &[(&str, &str)]) -> Self {
        Self {
            source_id: provider.into(),
            target: component.into(),
            name: name.into(),
            interfaces: vec!["ingest".into()],
            source_config: map(config),
            target_config: HashMap::new(),
            source_secrets: HashMap::new(),
            target_secrets: HashMap::new(),
        }
    }

    /// `component` writes to the provider (`sluice:pipeline/sink`) with `config` for the provider.
    pub fn sink(component: &str, provider: &str, name: &str, config: &[(&str, &str)]) -> Self {
        Self {
            source_id: component.into(),
            target: provider.into(),
            name: name.into(),
            interfaces: vec!["sink".into()],
            source_config: HashMap::new(),
            target_config: map(config),
            source_secrets: HashMap::new(),
            target_secrets: HashMap::new(),
        }
    }

    /// Adds a secret for the provider's end of the link.
    #[must_use]
    pub fn with_secret(mut self, provider: &str, key: &str, value: &str) -> Self {
        if self.source_id == provider {
            self.source_secrets.insert(key.into(), value.into());
        } else {
            self.target_secrets.insert(key.into(), value.into());
        }
        self
    }

    fn seal(secrets: &HashMap<String, String>, host: &XKey, provider: &XKey) -> anyhow::Result<Value> {
        if secrets.is_empty() {
            return Ok(Value::Null);
        }
        let plain: HashMap<&String, Value> = secrets
            .iter()
            .map(|(k, v)| (k, json!({"kind": "String", "value": v})))
            .collect();
        let sealed = host.seal(&serde_json::to_vec(&plain)?, provider)?;
        Ok(json!(sealed))
    }

    fn to_json(&self, host: &XKey, provider: &XKey) -> anyhow::Result<Value> {
        Ok(json!({
            "source_id": self.source_id,
            "target": self.target,
            "name": self.name,
            "wit_namespace": "sluice",
            "wit_package": "pipeline",
            "interfaces": self.interfaces,
            "source_config": self.source_config,
            "target_config": self.target_config,
            "source_secrets": Self::seal(&self.source_secrets, host, provider)?,
            "target_secrets": Self::seal(&self.target_secrets, host, provider)?,
        }))
    }

    fn same_link(&self, other: &Link) -> bool {
        self.source_id == other.source_id && self.target == other.target && self.name == other.name
    }
}

/// The host side a provider is started from: its lattice connection and identity.
struct Host {
    nats_url: String,
    nats: async_nats::Client,
    lattice: String,
    host_id: String,
}

/// A provider process started as a wasmCloud host starts it.
pub struct HostedProvider {
    binary: PathBuf,
    nats_url: String,
    nats: async_nats::Client,
    /// The lattice name.
    pub lattice: String,
    /// The provider's id on the lattice.
    pub provider_key: String,
    host_id: String,
    host_xkey: XKey,
    provider_xkey: XKey,
    config: HashMap<String, String>,
    links: Vec<Link>,
    child: Option<Child>,
    dir: PathBuf,
    starts: u32,
}

impl HostedProvider {
    /// Starts `binary` as provider `provider_key` on lattice `default`, with provider `config`,
    /// and waits until it answers health checks.
    pub async fn start(
        nats: &NatsServer,
        binary: impl AsRef<Path>,
        provider_key: &str,
        config: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let host = Host {
            nats_url: nats.url(),
            nats: nats.connect().await?,
            lattice: "default".into(),
            host_id: "NHOSTSLUICETEST".into(),
        };
        Self::launch(host, binary.as_ref(), provider_key, map(config)).await
    }

    /// Starts another provider on the same lattice and NATS server as `other` (e.g. a second
    /// instance of the same provider, as a second host would run it).
    pub async fn start_on(
        other: &HostedProvider,
        binary: impl AsRef<Path>,
        provider_key: &str,
    ) -> anyhow::Result<Self> {
        let host = Host {
            nats_url: other.nats_url.clone(),
            nats: other.nats.clone(),
            lattice: other.lattice.clone(),
            host_id: other.host_id.clone(),
        };
        Self::launch(host, binary.as_ref(), provider_key, other.config.clone()).await
    }

    async fn launch(
        host: Host,
        binary: &Path,
        provider_key: &str,
        config: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut provider = Self {
            binary: binary.to_path_buf(),
            nats_url: host.nats_url,
            nats: host.nats,
            lattice: host.lattice,
            provider_key: provider_key.into(),
            host_id: host.host_id,
            host_xkey: XKey::new(),
            provider_xkey: XKey::new(),
            config,
            links: Vec::new(),
            child: None,
            dir: temp_dir(provider_key)?,
            starts: 0,
        };
        provider.spawn().await?;
        Ok(provider)
    }

    fn host_data(&self) -> anyhow::Result<Value> {
        let links = self
            .links
            .iter()
            .map(|l| l.to_json(&self.host_xkey, &self.provider_xkey))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(json!({
            "host_id": self.host_id,
            "lattice_rpc_prefix": self.lattice,
            "link_name": "default",
            "lattice_rpc_user_jwt": "",
            "lattice_rpc_user_seed": "",
            "lattice_rpc_url": self.nats_url,
            "provider_key": self.provider_key,
            "env_values": {},
            "instance_id": format!("{}-{}", self.provider_key, self.starts),
            "link_definitions": links,
            "cluster_issuers": [],
            "config": self.config,
            "secrets": {},
            "host_xkey_public_key": self.host_xkey.public_key(),
            "provider_xkey_private_key": self.provider_xkey.seed()?,
            "default_rpc_timeout_ms": 10000,
            "structured_logging": false,
            "log_level": "debug",
        }))
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(&self.binary);
        command
            .env_clear()
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("failed to start {}", self.binary.display()))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&self.host_data()?)?);
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(encoded.as_bytes()).await?;
        stdin.write_all(b"\r\n").await?;
        drop(stdin);
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(30)).await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("provider.log")
    }

    /// Everything the provider has logged, across restarts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits up to `within` for `needle` to appear in the provider's log (it writes its log
    /// asynchronously: a line may land after the answer that reported the same event).
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A directory the test may use for this provider's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lattice connection the host side uses.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("provider exited with {status}:\n{}", self.logs());
                }
            }
            if self.health().await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("provider not healthy within {within:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn request(&self, subject: String, body: Vec<u8>) -> anyhow::Result<Value> {
        let reply = tokio::time::timeout(Duration::from_secs(5), self.nats.request(subject, body.into()))
            .await
            .context("request timed out")??;
        Ok(serde_json::from_slice(&reply.payload)?)
    }

    /// The provider's answer to the host's health check.
    pub async fn health(&self) -> anyhow::Result<Value> {
        let subject = format!("wasmbus.rpc.{}.{}.health", self.lattice, self.provider_key);
        self.request(subject, b"{}".to_vec()).await
    }

    /// The provider's link table and counters.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let subject = sluice_provider_core::wasmcloud::status_subject(&self.lattice, &self.provider_key);
        Ok(serde_json::from_value(self.request(subject, Vec::new()).await?)?)
    }

    /// Waits until `done` holds for the provider's status.
    pub async fn wait_status(&self, within: Duration, done: impl Fn(&Status) -> bool) -> anyhow::Result<Status> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.status().await?;
            if done(&status) {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("status did not reach the expected state within {within:?}: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Puts a link over the lattice, as the host does; waits until the provider has taken or
    /// refused it.
    pub async fn put_link(&mut self, link: Link) -> anyhow::Result<()> {
        let subject = format!(
            "wasmbus.rpc.{}.{}.linkdefs.put",
            self.lattice,
            self.provider_xkey.public_key()
        );
        let body = serde_json::to_vec(&link.to_json(&self.host_xkey, &self.provider_xkey)?)?;
        self.nats.publish(subject, body.into()).await?;
        self.nats.flush().await?;
        let (role, component, name) = self.component_end(&link);
        self.wait_status(Duration::from_secs(15), |s| {
            let live = s.links.iter().map(|l| (&l.role, &l.component, &l.name));
            let refused = s.refused.iter().map(|r| (&r.role, &r.component, &r.name));
            live.chain(refused)
                .any(|(r, c, n)| r == role && c == component && n == name)
        })
        .await?;
        self.links.retain(|l| !l.same_link(&link));
        self.links.push(link);
        Ok(())
    }

    /// Puts many links at once, as a host does when a manifest with many links is deployed,
    /// and waits until the provider has taken or refused every one of them.
    pub async fn put_links(&mut self, links: Vec<Link>) -> anyhow::Result<()> {
        let subject = format!(
            "wasmbus.rpc.{}.{}.linkdefs.put",
            self.lattice,
            self.provider_xkey.public_key()
        );
        for link in &links {
            let body = serde_json::to_vec(&link.to_json(&self.host_xkey, &self.provider_xkey)?)?;
            self.nats.publish(subject.clone(), body.into()).await?;
        }
        self.nats.flush().await?;
        let ends: Vec<(&str, String, String)> = links
            .iter()
            .map(|l| {
                let (role, component, name) = self.component_end(l);
                (role, component.to_string(), name.to_string())
            })
            .collect();
        self.wait_status(Duration::from_secs(120), |s| {
            let seen: std::collections::HashSet<(&str, &str, &str)> = s
                .links
                .iter()
                .map(|l| (l.role.as_str(), l.component.as_str(), l.name.as_str()))
                .chain(
                    s.refused
                        .iter()
                        .map(|r| (r.role.as_str(), r.component.as_str(), r.name.as_str())),
                )
                .collect();
            ends.iter()
                .all(|(r, c, n)| seen.contains(&(*r, c.as_str(), n.as_str())))
        })
        .await?;
        for link in links {
            self.links.retain(|l| !l.same_link(&link));
            self.links.push(link);
        }
        Ok(())
    }

    /// The provider's role in `link`, and the component and name that identify it.
    fn component_end<'a>(&self, link: &'a Link) -> (&'static str, &'a str, &'a str) {
        if link.source_id == self.provider_key {
            ("source", &link.target, &link.name)
        } else {
            ("sink", &link.source_id, &link.name)
        }
    }

    /// Deletes a link over the lattice, as the host does; waits until the provider dropped it.
    pub async fn delete_link(&mut self, link: &Link) -> anyhow::Result<()> {
        let subject = format!("wasmbus.rpc.{}.{}.linkdefs.del", self.lattice, self.provider_key);
        let body = serde_json::to_vec(&link.to_json(&self.host_xkey, &self.provider_xkey)?)?;
        self.nats.publish(subject, body.into()).await?;
        self.nats.flush().await?;
        let (role, component, name) = self.component_end(link);
        self.wait_status(Duration::from_secs(60), |s| {
            !s.links
                .iter()
                .any(|l| l.role == role && l.component == component && l.name == name)
        })
        .await?;
        self.links.retain(|l| !l.same_link(link));
        Ok(())
    }

    /// The provider's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Resident memory of the provider process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::procfs::memory_kib(self.pid()?, "VmRSS")
    }

    /// Kills the provider with SIGKILL: no drain, no acknowledgement, no goodbye.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts the provider again with the links currently put, as the host does after a crash.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    /// Asks the provider to shut down, as the host does, and waits for it to exit.
    pub async fn shutdown(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let subject = format!("wasmbus.rpc.{}.{}.default.shutdown", self.lattice, self.provider_key);
        let body = serde_json::to_vec(&json!({ "host_id": self.host_id }))?;
        tokio::time::timeout(Duration::from_secs(60), self.nats.request(subject, body.into()))
            .await
            .context("shutdown request timed out")??;
        let mut child = self.child.take().context("provider not running")?;
        Ok(tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("provider did not exit after shutdown")??)
    }

    /// Sends SIGTERM and waits for the provider to exit.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("provider not running")?;
        let pid = child.id().context("provider already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .context("provider did not exit after SIGTERM")??)
    }
}
