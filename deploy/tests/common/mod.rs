//! Shared by the deploy tests: provider archives packaged once per test process from the debug
//! provider binaries that `cargo test --workspace` builds (run `cargo build --bins` first when
//! testing this package alone).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tokio::sync::OnceCell;
use xtask::par::{Keys, ProviderPackage, Workspace};

/// `target/debug`, where this test binary (in `target/debug/deps`) and the providers live.
pub fn debug_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/debug").to_path_buf()
}

/// Every provider package of the workspace.
pub fn providers() -> Vec<ProviderPackage> {
    Workspace::discover().expect("cargo metadata").providers
}

static ARCHIVES: OnceCell<PathBuf> = OnceCell::const_new();

/// A directory with every provider's `.par.gz`, packaged (once, in parallel) from the debug binaries.
/// Signed with throwaway keys: a test run must not create (or use) the operator's keys in
/// `~/.sluice/keys`, and nothing here depends on a provider keeping its subject across runs.
pub async fn archives() -> PathBuf {
    ARCHIVES
        .get_or_init(|| async {
            let dir = sluice_integration::servers::temp_dir("par").expect("temp dir");
            let keys = Keys::open(dir.join("keys")).expect("keys dir");
            let workspace = Workspace::discover().expect("cargo metadata");
            xtask::par::package_all(&workspace, xtask::par::Profile::Debug, &dir, &keys)
                .await
                .expect("package the debug providers (build them first: `cargo build --bins`)");
            dir
        })
        .await
        .clone()
}
