//! Builds the trusted `in` and `out` guests and the relay's identity logic (`harness/in`,
//! `harness/out`, `harness/identity`) to core Wasm modules and
//! places them in `OUT_DIR`, where `src/trusted.rs` embeds them, so the `sluice` binary carries the
//! components it composes around customer logic.
//!
//! Needs Debian's `rustc-web` toolchain (see `harness/README.md`); the guests share the target
//! directory `<cargo target dir>/wasm-guests`, so the standard library is built once.

#[path = "src/guest.rs"]
#[allow(dead_code)]
mod guest;

use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let harness = manifest_dir.parent().unwrap().to_path_buf();
    for watched in [
        "in/src",
        "in/Cargo.toml",
        "in/Cargo.lock",
        "out/src",
        "out/Cargo.toml",
        "identity/src",
        "identity/Cargo.toml",
        "identity/Cargo.lock",
        "shared",
    ] {
        println!("cargo:rerun-if-changed={}", harness.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", harness.join("out/Cargo.lock").display());
    println!("cargo:rerun-if-changed={}", harness.join("wit").display());
    for shared in ["wit", "wire/src", "wire/Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            harness.parent().unwrap().join(shared).display()
        );
    }
    for var in ["SLUICE_WASM_CARGO", "SLUICE_WASM_RUSTC", "SLUICE_WASM_RUSTDOC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let target_dir = guest_target_dir(&out_dir);
    let toolchain = guest::Toolchain::from_env();
    for name in ["in", "out", "identity"] {
        let module = guest::build_rust(&toolchain, &harness.join(name), &target_dir)
            .unwrap_or_else(|e| panic!("building the trusted `{name}` component: {e}"));
        std::fs::copy(&module, out_dir.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", module.display()));
    }
}

/// `<target>/wasm-guests`, found from `OUT_DIR` (`<target>/<profile>/build/<pkg>-<hash>/out`), so
/// every profile and every run shares one guest build.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(|build| build.parent()?.parent())
        .unwrap_or(out_dir)
        .join("wasm-guests")
}
