//! Guest logic the tests and the benchmark compose: the examples in three languages and the
//! misbehaving test guests, built once per test binary into `<target>/wasm-guests`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use sluice_compose::compose::{ComposeOptions, DenyMode};
use sluice_compose::guest::{self, Toolchain};
use sluice_compose::policy::Policy;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `<cargo target dir>/wasm-guests`, shared with the CLI's build script.
pub fn guest_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("wasm-guests")
}

/// The languages the example logic is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

/// How the examples compose: forbidden imports become trap stubs, and the Python runtime, which
/// reads its environment on the first call, is also allowed `wasi:cli/environment`.
pub fn compose_options(lang: Lang) -> ComposeOptions {
    let policy = match lang {
        Lang::Python => Policy::default_and(["wasi:cli/environment".parse().unwrap()]),
        Lang::Rust | Lang::Js => Policy::default(),
    };
    ComposeOptions {
        policy,
        deny: DenyMode::Trap,
        ..ComposeOptions::default()
    }
}

/// Guest builds are serialised: they share a target directory and take both cores.
static BUILD: Mutex<()> = Mutex::new(());

/// Builds the Rust guest crate at `dir` and returns its core module.
pub fn rust_guest(dir: &Path) -> Vec<u8> {
    let _build = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let module = guest::build_rust(&Toolchain::from_env(), dir, &guest_target()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(&module).unwrap()
}

/// The example logic (`examples/logic/<lang>`), built with its language's recipe.
pub fn example(lang: Lang) -> Vec<u8> {
    static BUILT: [OnceLock<Vec<u8>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = &BUILT[Lang::ALL.iter().position(|l| *l == lang).unwrap()];
    slot.get_or_init(|| {
        let dir = repo().join("examples/logic").join(lang.name());
        match lang {
            Lang::Rust => rust_guest(&dir),
            Lang::Python => componentized(&dir, "app.py", "logic-python.wasm", |out| {
                guest::build_python(&repo().join("wit"), "logic", &dir, "app", out)
            }),
            Lang::Js => componentized(&dir, "logic.js", "logic-js.wasm", |out| {
                guest::build_js(&repo().join("wit"), "logic", &dir.join("logic.js"), out)
            }),
        }
    })
    .clone()
}

/// Builds a Python or JS component into `<guest target>/<name>` unless it is newer than its
/// source and the WIT.
fn componentized(
    dir: &Path,
    source: &str,
    name: &str,
    build: impl FnOnce(&Path) -> Result<(), guest::GuestError>,
) -> Vec<u8> {
    let _build = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let out = guest_target().join(name);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let newest_input = [dir.join(source), repo().join("wit/pipeline.wit")]
        .iter()
        .filter_map(|p| modified(p))
        .max()
        .unwrap_or(SystemTime::now());
    if modified(&out).is_none_or(|built| built < newest_input) {
        std::fs::create_dir_all(guest_target()).unwrap();
        let partial = out.with_extension("partial.wasm");
        build(&partial).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&partial, &out).unwrap();
    }
    std::fs::read(&out).unwrap()
}

/// Test logic that traps, loops, allocates without bound, retries, floods or rejects on request.
pub fn behave() -> Vec<u8> {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT
        .get_or_init(|| rust_guest(&repo().join("cli/tests/guests/behave")))
        .clone()
}

/// Test logic importing `wasi:http`, `wasi:sockets` and `wasi:filesystem`.
pub fn forbidden() -> Vec<u8> {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT
        .get_or_init(|| rust_guest(&repo().join("cli/tests/guests/forbidden")))
        .clone()
}
