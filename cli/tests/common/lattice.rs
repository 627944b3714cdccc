//! The pieces every real-host test needs: the providers' archives and a composed step.

use std::path::PathBuf;

use sluice_compose::compose::{compose, ComposeOptions};
use tokio::sync::OnceCell;
use xtask::par::{package_all, Keys, Profile, Workspace};

use super::fixtures::{example, Lang};

/// A directory of this test process under cargo's `CARGO_TARGET_TMPDIR` (inside the target
/// directory, not the system's temp directory), a new one per call; directories earlier test
/// processes left there are removed once those processes are gone.
pub fn scratch_dir(name: &str) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lattice");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let pid = entry
                .file_name()
                .to_string_lossy()
                .rsplit('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            if pid
                .is_some_and(|pid| pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("{name}-{n}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The throwaway keys directory the test archives are signed with (not the operator's
/// `~/.sluice/keys`); `sluice` commands a test runs get it as `SLUICE_KEYS_DIR`, so the pipeline
/// copies they sign are signed by the same issuer.
pub fn keys_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| scratch_dir("keys")).clone()
}

/// Every provider's `.par.gz`, packaged once from the debug binaries `cargo test` built, signed
/// with the keys in [`keys_dir`].
pub async fn archives() -> PathBuf {
    static DIR: OnceCell<PathBuf> = OnceCell::const_new();
    DIR.get_or_init(|| async {
        let dir = scratch_dir("par");
        let keys = Keys::open(keys_dir()).unwrap();
        let workspace = Workspace::discover().unwrap();
        package_all(&workspace, Profile::Debug, &dir, &keys)
            .await
            .expect("package the debug providers (build them first: `cargo build --bins`)");
        dir
    })
    .await
    .clone()
}

/// A directory holding `steps/sensors.wasm`: the example Rust logic composed into a step.
pub fn pipeline_dir() -> PathBuf {
    let dir = scratch_dir("pipeline");
    std::fs::create_dir_all(dir.join("steps")).unwrap();
    let step = compose(&example(Lang::Rust), &ComposeOptions::default()).expect("compose the step");
    std::fs::write(dir.join("steps/sensors.wasm"), step.bytes).unwrap();
    dir
}
