//! A real Modbus TCP server for tests: pymodbus 3.16 running `servers/modbus_server.py` (shipped
//! in this crate) on a 127.0.0.1 port, with preset register contents and, optionally, a log line
//! per request served so a test can count requests at the server.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::servers::{free_port, temp_dir, ServerProcess};

const SCRIPT: &str = include_str!("../servers/modbus_server.py");
const PYMODBUS: &str = "pymodbus==3.16.1";

static INSTALL: Mutex<()> = Mutex::new(());

fn pymodbus_present() -> bool {
    Command::new("python3")
        .args(["-c", "import pymodbus, sys; sys.exit(pymodbus.__version__ != '3.16.1')"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `python3` can import pymodbus 3.16.1, installing it from PyPI when missing.
pub fn ensure_pymodbus() -> anyhow::Result<()> {
    let _guard = INSTALL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if pymodbus_present() {
        return Ok(());
    }
    for extra in [&[][..], &["--break-system-packages"][..]] {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", PYMODBUS])
            .args(extra)
            .stdout(Stdio::null())
            .status();
        if pymodbus_present() {
            return Ok(());
        }
    }
    bail!("python3 cannot import {PYMODBUS}, and `pip install {PYMODBUS}` did not fix that")
}

/// One request the server served, as it logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedRequest {
    /// The unit id addressed.
    pub unit: u8,
    /// The function code (1 coils, 2 discrete inputs, 3 holding, 4 input, 5/6/15/16 writes).
    pub function: u8,
    /// The first address.
    pub address: u16,
    /// Registers or bits requested (or written).
    pub count: u16,
}

/// A pymodbus Modbus TCP server on 127.0.0.1, killed when dropped.
#[derive(Debug)]
pub struct ModbusServer {
    process: ServerProcess,
    port: u16,
}

impl ModbusServer {
    /// Starts a server on a free port with `preset` (the JSON the script documents: `units`,
    /// `size`, `values`), logging every request it serves.
    pub fn start(preset: &Value) -> anyhow::Result<Self> {
        Self::start_with(free_port(), preset, true)
    }

    /// Starts a server on `port` (e.g. the port of a server that was stopped, to bring a device
    /// back), logging every request when `log_requests`.
    pub fn start_with(port: u16, preset: &Value, log_requests: bool) -> anyhow::Result<Self> {
        ensure_pymodbus()?;
        let dir = temp_dir("modbus")?;
        let script = dir.join("modbus_server.py");
        std::fs::write(&script, SCRIPT)?;
        let preset_path = dir.join("preset.json");
        std::fs::write(&preset_path, serde_json::to_vec(preset)?)?;
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .args(["--port", &port.to_string()])
            .arg("--preset")
            .arg(&preset_path);
        if log_requests {
            command.arg("--log-requests");
        }
        let mut process = ServerProcess::spawn("modbus", command, dir)?;
        process
            .wait_for_port(port, Duration::from_secs(20))
            .context("the Modbus server did not start")?;
        Ok(Self { process, port })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as a register map's device address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request served so far (with request logging on), in order.
    pub fn requests(&self) -> Vec<ServedRequest> {
        self.process.log().lines().filter_map(parse_request).collect()
    }

    /// The server process (its directory and log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

fn parse_request(line: &str) -> Option<ServedRequest> {
    let rest = line.strip_prefix("REQ ")?;
    let mut fields = rest.split(' ').filter_map(|kv| kv.split_once('='));
    let mut next = |name: &str| -> Option<u32> {
        let (k, v) = fields.next()?;
        (k == name).then(|| v.parse().ok()).flatten()
    };
    Some(ServedRequest {
        unit: u8::try_from(next("unit")?).ok()?,
        function: u8::try_from(next("fc")?).ok()?,
        address: u16::try_from(next("address")?).ok()?,
        count: u16::try_from(next("count")?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse() {
        assert_eq!(
            parse_request("REQ unit=1 fc=3 address=100 count=125"),
            Some(ServedRequest {
                unit: 1,
                function: 3,
                address: 100,
                count: 125
            })
        );
        assert_eq!(parse_request("serving units [1]"), None);
    }
}
