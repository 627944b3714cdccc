//! Building guest code to Wasm with the toolchains this project uses (see `harness/README.md`).
//!
//! - Rust: Debian's `rustc-web` with its standard library source, `-Zbuild-std`, for
//!   `wasm32-unknown-unknown` (no rustup target is needed). The result is a core module carrying
//!   its WIT in a custom section; [`crate::component::from_bytes`] turns it into a component.
//! - Python: `componentize-py` (PyPI).
//! - JavaScript: `componentize-js` (npm `@bytecodealliance/componentize-js`).
//!
//! This module uses nothing but `std`, so the CLI's build script shares it to build the trusted
//! `in` and `out` components.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the Wasm-capable Rust toolchain lives. Rustup's `cargo` usually comes first in `PATH` and
/// has no Wasm target here, so full paths are used; each can be overridden by an environment
/// variable (`SLUICE_WASM_CARGO`, `SLUICE_WASM_RUSTC`, `SLUICE_WASM_RUSTDOC`).
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The `cargo` that drives the guest build.
    pub cargo: PathBuf,
    /// The `rustc` whose sysroot has the standard library source.
    pub rustc: PathBuf,
    /// The matching `rustdoc`.
    pub rustdoc: PathBuf,
}

impl Toolchain {
    /// Debian's `rustc-web` toolchain, unless the environment points elsewhere.
    pub fn from_env() -> Self {
        let path = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Self {
            cargo: path("SLUICE_WASM_CARGO", "/usr/bin/cargo"),
            rustc: path("SLUICE_WASM_RUSTC", "/usr/bin/rustc"),
            rustdoc: path("SLUICE_WASM_RUSTDOC", "/usr/bin/rustdoc"),
        }
    }
}

/// The Wasm target Rust guests are built for.
pub const RUST_TARGET: &str = "wasm32-unknown-unknown";

/// Environment variables passed on to guest builds; everything else (notably the outer cargo's
/// `RUSTFLAGS`, `RUSTC_WRAPPER`, `CARGO_TARGET_DIR` and clippy's wrapper) is left out.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "TMPDIR",
    "LANG",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// A guest build that failed.
#[derive(Debug)]
pub struct GuestError(String);

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GuestError {}

/// Builds the Rust guest crate at `crate_dir` (its own workspace) in release mode and returns the
/// path of the core module. `target_dir` is shared by guest builds so the standard library is built
/// once. The crate's library name is read from `Cargo.toml` (`[package] name`, dashes to
/// underscores).
pub fn build_rust(toolchain: &Toolchain, crate_dir: &Path, target_dir: &Path) -> Result<PathBuf, GuestError> {
    for tool in [&toolchain.cargo, &toolchain.rustc] {
        if !tool.exists() {
            return Err(GuestError(format!(
                "{} not found: Rust guests are built with Debian's rustc-web \
                 (apt-get install rustc-web cargo-web rust-web-src rust-web-llvm lld-22)",
                tool.display()
            )));
        }
    }
    let mut cmd = Command::new(&toolchain.cargo);
    cmd.env_clear();
    for var in PASSED_ENV {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.current_dir(crate_dir)
        .env("RUSTC", &toolchain.rustc)
        .env("RUSTDOC", &toolchain.rustdoc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "--release", "--quiet", "--target", RUST_TARGET])
        .arg("-Zbuild-std=std,panic_abort");
    if crate_dir.join("Cargo.lock").exists() {
        cmd.arg("--locked");
    }
    run(&mut cmd)?;
    let name = package_name(crate_dir)?.replace('-', "_");
    Ok(target_dir
        .join(RUST_TARGET)
        .join("release")
        .join(format!("{name}.wasm")))
}

/// Builds a Python logic component with `componentize-py` from `app_dir` (which holds the module
/// `module`, e.g. `app` for `app.py`) against the `world` of the WIT at `wit`; writes `out`.
pub fn build_python(wit: &Path, world: &str, app_dir: &Path, module: &str, out: &Path) -> Result<(), GuestError> {
    let mut cmd = Command::new("componentize-py");
    cmd.arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize", "-p"])
        .arg(app_dir)
        .arg(module)
        .arg("-o")
        .arg(out);
    run(&mut cmd)
}

/// Builds a JavaScript logic component with `componentize-js` from the ES module `source` against
/// the `world` of the WIT at `wit`; writes `out`.
pub fn build_js(wit: &Path, world: &str, source: &Path, out: &Path) -> Result<(), GuestError> {
    let mut cmd = Command::new("componentize-js");
    cmd.arg(source)
        .arg("--wit")
        .arg(wit)
        .args(["--world-name", world, "-o"])
        .arg(out);
    run(&mut cmd)
}

/// Runs a build command, turning a failure into an error carrying its output.
fn run(cmd: &mut Command) -> Result<(), GuestError> {
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .map_err(|e| GuestError(format!("cannot run {shown}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(GuestError(format!(
            "{shown} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// The `[package] name` of the crate at `crate_dir`.
fn package_name(crate_dir: &Path) -> Result<String, GuestError> {
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| GuestError(format!("cannot read {}: {e}", manifest.display())))?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(value) = line.strip_prefix("name") {
                let value = value.trim_start();
                if let Some(value) = value.strip_prefix('=') {
                    return Ok(value.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    Err(GuestError(format!("no [package] name in {}", manifest.display())))
}
