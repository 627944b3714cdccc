//! A logic project as `sluice new logic` lays it out, for `sluice dev`: which language it is
//! written in, the command that builds it (the standard route of its template's README), where the
//! built logic lands, and what to watch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::templates::Language;

/// A logic project `sluice dev` builds.
#[derive(Debug, Clone)]
pub struct Project {
    /// The project directory (the build command runs there).
    pub dir: PathBuf,
    /// Its language, when known (`Cargo.toml`, `app.py` or `logic.js` in `dir`).
    pub language: Option<Language>,
    /// The build command, run with `sh -c` in `dir`.
    pub build: String,
    /// The built logic, relative to `dir`; `None` for a Rust project: the newest
    /// `target/<triple>/release/<crate>.wasm`.
    pub artifact: Option<PathBuf>,
}

/// A project that cannot be built.
#[derive(Debug, Error)]
pub enum ProjectError {
    /// No build command given and none known for what is in the directory.
    #[error("{0}: no Cargo.toml, app.py or logic.js here; say how to build the logic with --build (and --artifact)")]
    Unknown(PathBuf),
    /// The build command failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Build {
        /// The command.
        command: String,
        /// How it ended.
        status: String,
        /// Its output (stdout then stderr).
        output: String,
    },
    /// The build command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The build did not leave the logic where it was expected.
    #[error("the build left no logic at {0}; give its path with --artifact")]
    NoArtifact(PathBuf),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Built logic: its bytes, where it came from and how long the build took.
#[derive(Debug)]
pub struct Built {
    /// The logic (a component or a core module with its WIT).
    pub logic: Vec<u8>,
    /// Where it was read from.
    pub path: PathBuf,
    /// How long the build command ran.
    pub took: Duration,
}

impl Project {
    /// The project in `dir`: `build` and `artifact` when given, else its template's standard
    /// route (Rust: `cargo build --release --target wasm32-wasip2`; Python: `componentize-py`;
    /// JS: `componentize-js`).
    pub fn open(dir: &Path, build: Option<String>, artifact: Option<PathBuf>) -> Result<Self, ProjectError> {
        let language = if dir.join("Cargo.toml").is_file() {
            Some(Language::Rust)
        } else if dir.join("app.py").is_file() {
            Some(Language::Python)
        } else if dir.join("logic.js").is_file() {
            Some(Language::Js)
        } else {
            None
        };
        let build = match (build, language) {
            (Some(build), _) => build,
            (None, Some(language)) => default_build(language).to_string(),
            (None, None) => return Err(ProjectError::Unknown(dir.to_path_buf())),
        };
        let artifact = artifact.or(match language {
            Some(Language::Python | Language::Js) => Some(PathBuf::from("logic.wasm")),
            Some(Language::Rust) | None => None,
        });
        if artifact.is_none() && language != Some(Language::Rust) {
            return Err(ProjectError::Unknown(dir.to_path_buf()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            language,
            build,
            artifact,
        })
    }

    /// What to watch by default: the project directory (build output, dependencies and `.wasm`
    /// files are never watched, see [`crate::watch`]).
    #[must_use]
    pub fn default_watch(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    /// Runs the build command and reads the built logic.
    pub fn build(&self) -> Result<Built, ProjectError> {
        let start = Instant::now();
        let output = Command::new("sh")
            .arg("-c")
            .arg(&self.build)
            .current_dir(&self.dir)
            .output()
            .map_err(|source| ProjectError::Spawn {
                command: self.build.clone(),
                source,
            })?;
        let took = start.elapsed();
        if !output.status.success() {
            return Err(ProjectError::Build {
                command: self.build.clone(),
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let path = match &self.artifact {
            Some(artifact) => self.dir.join(artifact),
            None => self.newest_rust_artifact()?,
        };
        let logic = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ProjectError::NoArtifact(path.clone()),
            _ => ProjectError::Read {
                path: path.clone(),
                source,
            },
        })?;
        Ok(Built { logic, path, took })
    }

    /// The newest `target/<triple>/release/<crate>.wasm` of a Rust project.
    fn newest_rust_artifact(&self) -> Result<PathBuf, ProjectError> {
        let manifest = self.dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).map_err(|source| ProjectError::Read {
            path: manifest.clone(),
            source,
        })?;
        let file = format!("{}.wasm", package_name(&text).unwrap_or_default().replace('-', "_"));
        let target = self.dir.join("target");
        let newest = std::fs::read_dir(&target)
            .into_iter()
            .flatten()
            .flatten()
            .map(|triple| triple.path().join("release").join(&file))
            .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
            .max();
        newest
            .map(|(_, path)| path)
            .ok_or_else(|| ProjectError::NoArtifact(target.join("<target>/release").join(file)))
    }
}

/// The standard build route of `language`'s template (its README's first build command).
#[must_use]
pub fn default_build(language: Language) -> &'static str {
    match language {
        Language::Rust => "cargo build --release --target wasm32-wasip2",
        Language::Python => "componentize-py -d wit -w logic componentize app -o logic.wasm",
        Language::Js => "componentize-js logic.js --wit wit --world-name logic -o logic.wasm",
    }
}

/// The `[package] name` in a `Cargo.toml`.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            let Some(rest) = line.strip_prefix("name") else {
                continue;
            };
            if let Some(value) = rest.trim_start().strip_prefix('=') {
                return Some(value.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-project-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn each_template_gets_its_standard_build_and_a_rust_build_its_newest_artifact() {
        let dir = temp("rust");
        crate::templates::write_logic(Language::Rust, "my-logic", &dir).unwrap();
        let project = Project::open(&dir, None, None).unwrap();
        assert_eq!(project.language, Some(Language::Rust));
        assert_eq!(project.build, "cargo build --release --target wasm32-wasip2");
        // A stand-in build writing both routes' outputs, the fallback's last: it is the one read.
        let fake = "mkdir -p target/wasm32-wasip2/release target/wasm32-unknown-unknown/release \
                    && printf old > target/wasm32-wasip2/release/my_logic.wasm && sleep 0.05 \
                    && printf new > target/wasm32-unknown-unknown/release/my_logic.wasm";
        let project = Project::open(&dir, Some(fake.into()), None).unwrap();
        let built = project.build().unwrap();
        assert_eq!(built.logic, b"new");
        std::fs::remove_dir_all(&dir).unwrap();

        for (language, name) in [(Language::Python, "python"), (Language::Js, "js")] {
            let dir = temp(name);
            crate::templates::write_logic(language, "my-logic", &dir).unwrap();
            let project = Project::open(&dir, None, None).unwrap();
            assert_eq!(project.build, default_build(language));
            assert_eq!(project.artifact, Some(PathBuf::from("logic.wasm")));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_failed_build_or_a_missing_artifact_is_an_error_naming_it() {
        let dir = temp("fail");
        assert!(matches!(Project::open(&dir, None, None), Err(ProjectError::Unknown(_))));
        let project = Project::open(&dir, Some("echo broken >&2; exit 3".into()), Some("x.wasm".into())).unwrap();
        let error = project.build().unwrap_err().to_string();
        assert!(error.contains("exit status: 3") && error.contains("broken"), "{error}");
        let project = Project::open(&dir, Some("true".into()), Some("x.wasm".into())).unwrap();
        let error = project.build().unwrap_err().to_string();
        assert!(error.contains("x.wasm") && error.contains("--artifact"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
