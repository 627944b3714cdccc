//! The pieces every real-host test needs: the providers' archives and a composed step.

use std::path::PathBuf;

use sluice_cli::compose::{compose, ComposeOptions};
use sluice_integration::servers::temp_dir;
use tokio::sync::OnceCell;
use xtask::par::{package_all, Keys, Profile, Workspace};

use super::fixtures::{example, Lang};

/// The throwaway keys directory the test archives are signed with (not the operator's
/// `~/.sluice/keys`); `sluice` commands a test runs get it as `SLUICE_KEYS_DIR`, so the pipeline
/// copies they sign are signed by the same issuer.
pub fn keys_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| temp_dir("keys").unwrap()).clone()
}

/// Every provider's `.par.gz`, packaged once from the debug binaries `cargo test` built, signed
/// with the keys in [`keys_dir`].
pub async fn archives() -> PathBuf {
    static DIR: OnceCell<PathBuf> = OnceCell::const_new();
    DIR.get_or_init(|| async {
        let dir = temp_dir("par").unwrap();
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
    let dir = temp_dir("pipeline").unwrap();
    std::fs::create_dir_all(dir.join("steps")).unwrap();
    let step = compose(&example(Lang::Rust), &ComposeOptions::default()).expect("compose the step");
    std::fs::write(dir.join("steps/sensors.wasm"), step.bytes).unwrap();
    dir
}
