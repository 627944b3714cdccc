//! `sluice new logic`: ready-to-build customer logic in Rust, Python or JavaScript.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

/// The contract every template builds against.
const PIPELINE_WIT: &str = include_str!("../../wit/pipeline.wit");

/// The cases every template ships (`sluice test`): the templates behave alike.
const CASES: &str = include_str!("../templates/cases.yaml");

/// A language customer logic can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Rust with `wit-bindgen`, built for rustup's `wasm32-wasip2` target (or, where no rustup
    /// target can be added, with Debian's rustc-web and `-Zbuild-std`).
    Rust,
    /// Python with `componentize-py`.
    Python,
    /// JavaScript with `componentize-js`.
    Js,
}

impl Language {
    /// Every language, in the order `--help` lists them.
    pub const ALL: [Language; 3] = [Language::Rust, Language::Python, Language::Js];

    /// The template's files: path in the project and contents (with `{{name}}` / `{{crate}}`).
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Language::Rust => &[
                ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
                ("src/lib.rs", include_str!("../templates/rust/lib.rs")),
                ("README.md", include_str!("../templates/rust/README.md")),
                ("cases.yaml", CASES),
                (".gitignore", "/target\n"),
            ],
            Language::Python => &[
                ("app.py", include_str!("../templates/python/app.py")),
                ("README.md", include_str!("../templates/python/README.md")),
                ("cases.yaml", CASES),
                (".gitignore", "/logic.wasm\n__pycache__/\n"),
            ],
            Language::Js => &[
                ("logic.js", include_str!("../templates/js/logic.js")),
                ("README.md", include_str!("../templates/js/README.md")),
                ("cases.yaml", CASES),
                (".gitignore", "/logic.wasm\n"),
            ],
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::Js => "js",
        })
    }
}

/// A language `sluice new` has no template for.
#[derive(Debug, Error)]
#[error("no template for `{0}`: choose rust, python or js")]
pub struct UnknownLanguage(String);

impl FromStr for Language {
    type Err = UnknownLanguage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|lang| lang.to_string() == s)
            .ok_or_else(|| UnknownLanguage(s.to_string()))
    }
}

/// A template that could not be written.
#[derive(Debug, Error)]
pub enum TemplateError {
    /// The name cannot name a package.
    #[error("`{0}` is not a usable name: use lowercase letters, digits and dashes, starting with a letter")]
    BadName(String),
    /// The directory already has files.
    #[error("{0} already exists and is not empty")]
    NotEmpty(PathBuf),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Writes the `lang` logic template named `name` into `dir` (created; must be empty) and returns
/// the files written. The contract lands in `wit/pipeline.wit`.
pub fn write_logic(lang: Language, name: &str, dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(TemplateError::BadName(name.to_string()));
    }
    if dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(TemplateError::NotEmpty(dir.to_path_buf()));
    }
    let crate_name = name.replace('-', "_");
    let mut written = Vec::new();
    let files = lang
        .files()
        .iter()
        .map(|(path, text)| (*path, text.replace("{{name}}", name).replace("{{crate}}", &crate_name)))
        .chain([("wit/pipeline.wit", PIPELINE_WIT.to_string())]);
    for (path, text) in files {
        let path = dir.join(path);
        let io = |source| TemplateError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(path.parent().unwrap_or(dir)).map_err(io)?;
        std::fs::write(&path, text).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}
