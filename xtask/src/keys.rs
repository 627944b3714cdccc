//! The keys that sign the provider archives, kept in a directory so every build gives a provider
//! the same identity: one issuer (account) key for Sluice and one service key per provider, each a
//! file holding its nkeys seed, as `wash` keeps its keys (`<name>_account.nk`, `<name>_service.nk`,
//! mode 0600). A key that is missing is created there once; one that is there is only read.
//!
//! A provider's service public key is the subject of its archive's claims: what the host reports
//! as the provider's identity and what a `nats-kv` secrets mapping names.
//!
//! A pipeline's own copy of a provider archive is signed with a service key of that pipeline
//! ([`Keys::pipeline_service`], `pipelines/<lattice>/<pipeline>/<provider>_service.nk`), so a
//! secrets backend that grants by subject (wasmCloud's `nats-kv`) grants one pipeline's secrets to
//! that pipeline's providers only, however many customers one build of a provider serves.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nkeys::{KeyPair, KeyPairType};

/// The environment variable naming the keys directory when `--keys-dir` is not given.
pub const KEYS_DIR_ENV: &str = "SLUICE_KEYS_DIR";

/// The name of the issuer key: its file is `sluice_account.nk`.
pub const ISSUER: &str = "sluice";

/// Why the keys could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// No `--keys-dir`, no `SLUICE_KEYS_DIR` and no `HOME`.
    #[error("no keys directory: pass --keys-dir or set {KEYS_DIR_ENV} (HOME is not set either)")]
    NoDir,
    /// A file or the directory could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A key file does not hold a valid seed.
    #[error("{}: not a valid nkeys seed; restore the file, or remove it to get a new identity", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What nkeys said.
        source: nkeys::error::Error,
    },
    /// A key file holds a seed of another kind (e.g. an account seed where a service key belongs).
    #[error("{}: holds a {found:?} seed, expected a {expected:?} seed", path.display())]
    WrongKind {
        /// The key file.
        path: PathBuf,
        /// The kind the file should hold.
        expected: KeyPairType,
        /// The kind it holds.
        found: KeyPairType,
    },
    /// A lattice, pipeline or provider name that cannot name a directory or file.
    #[error("`{0}` cannot name a key: expected letters, digits, `-` and `_`")]
    BadName(String),
}

/// Chooses the keys directory: `flag` (`cargo xtask par --keys-dir`) if given, else
/// `$SLUICE_KEYS_DIR`, else `$HOME/.sluice/keys`; `env` reads a variable (an empty one counts as
/// unset).
pub fn choose_dir(flag: Option<PathBuf>, env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, KeysError> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    flag.or_else(|| var(KEYS_DIR_ENV))
        .or_else(|| var("HOME").map(|home| home.join(".sluice").join("keys")))
        .ok_or(KeysError::NoDir)
}

/// A keys directory (created, mode 0700, if missing).
#[derive(Debug, Clone)]
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    /// The keys directory when `--keys-dir` is not given: `$SLUICE_KEYS_DIR`, else
    /// `$HOME/.sluice/keys` ([`choose_dir`] with this process's environment).
    pub fn default_dir() -> Result<PathBuf, KeysError> {
        choose_dir(None, |name| std::env::var_os(name))
    }

    /// Opens the keys directory `dir`, creating it if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeysError> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| KeysError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(Self { dir })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The issuer key that signs every archive ([`Keys::issuer_path`]).
    pub fn issuer(&self) -> Result<KeyPair, KeysError> {
        load_or_create(&self.issuer_path(), KeyPairType::Account)
    }

    /// The service key of `provider` ([`Keys::service_path`]): its public key is the provider's
    /// subject.
    pub fn service(&self, provider: &str) -> Result<KeyPair, KeysError> {
        load_or_create(&self.service_path(provider), KeyPairType::Service)
    }

    /// The service key of `provider` in pipeline `pipeline` on lattice `lattice`
    /// ([`Keys::pipeline_service_path`]): its public key is the subject of the pipeline's own copy
    /// of the provider archive, what that pipeline's secrets are mapped to.
    pub fn pipeline_service(&self, lattice: &str, pipeline: &str, provider: &str) -> Result<KeyPair, KeysError> {
        let path = self.pipeline_service_path(lattice, pipeline, provider)?;
        let dir = path.parent().expect("a key file has a directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KeysError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        load_or_create(&path, KeyPairType::Service)
    }

    /// The seed file of `provider`'s service key in pipeline `pipeline` on lattice `lattice`:
    /// `pipelines/<lattice>/<pipeline>/<provider>_service.nk`.
    pub fn pipeline_service_path(&self, lattice: &str, pipeline: &str, provider: &str) -> Result<PathBuf, KeysError> {
        for name in [lattice, pipeline, provider] {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(KeysError::BadName(name.to_string()));
            }
        }
        Ok(self
            .dir
            .join("pipelines")
            .join(lattice)
            .join(pipeline)
            .join(format!("{provider}_service.nk")))
    }

    /// The issuer's seed file: `sluice_account.nk`.
    #[must_use]
    pub fn issuer_path(&self) -> PathBuf {
        self.dir.join(format!("{ISSUER}_account.nk"))
    }

    /// The seed file of `provider`'s service key: `<provider>_service.nk`.
    #[must_use]
    pub fn service_path(&self, provider: &str) -> PathBuf {
        self.dir.join(format!("{provider}_service.nk"))
    }
}

/// Reads the key of `kind` at `path`, or creates it there if the file is missing.
fn load_or_create(path: &Path, kind: KeyPairType) -> Result<KeyPair, KeysError> {
    let io = |source| KeysError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(seed) => return parse(path, &seed, kind),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io(source)),
    }
    let key = KeyPair::new(kind.clone());
    let seed = key.seed().expect("a generated key has its seed");
    if create(path, &seed).map_err(io)? {
        Ok(key)
    } else {
        // Another process created it first: use theirs.
        parse(path, &std::fs::read_to_string(path).map_err(io)?, kind)
    }
}

fn parse(path: &Path, seed: &str, expected: KeyPairType) -> Result<KeyPair, KeysError> {
    let key = KeyPair::from_seed(seed.trim()).map_err(|source| KeysError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    let found = key.key_pair_type();
    if found != expected {
        return Err(KeysError::WrongKind {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(key)
}

/// Writes `seed` to `path` (mode 0600) unless the file exists; `false` if it did. The seed goes to
/// a temporary file first, linked into place whole, so a concurrent reader never sees half a seed.
fn create(path: &Path, seed: &str) -> std::io::Result<bool> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let temp = path.with_extension(format!(
        "nk.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(seed.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| match std::fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(err),
        });
    std::fs::remove_file(&temp).ok();
    created
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn the_flag_wins_then_the_env_var_then_home() {
        let all = [(KEYS_DIR_ENV, "/env/keys"), ("HOME", "/home/op")];
        assert_eq!(
            choose_dir(Some("/flag/keys".into()), env(&all)).unwrap(),
            Path::new("/flag/keys")
        );
        assert_eq!(choose_dir(None, env(&all)).unwrap(), Path::new("/env/keys"));
        let home = [(KEYS_DIR_ENV, ""), ("HOME", "/home/op")];
        assert_eq!(
            choose_dir(None, env(&home)).unwrap(),
            Path::new("/home/op/.sluice/keys")
        );
        assert!(matches!(choose_dir(None, env(&[])), Err(KeysError::NoDir)));
    }

    #[test]
    fn a_pipeline_key_is_stable_and_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::open(dir.path()).unwrap();
        let s3 = "sluice-provider-s3";
        let a = keys.pipeline_service("customer-a", "sensors", s3).unwrap().public_key();
        // Read back, also through another handle on the directory: the same subject.
        assert_eq!(
            keys.pipeline_service("customer-a", "sensors", s3).unwrap().public_key(),
            a
        );
        let again = Keys::open(dir.path()).unwrap();
        assert_eq!(
            again
                .pipeline_service("customer-a", "sensors", s3)
                .unwrap()
                .public_key(),
            a
        );
        // Another tenant, another pipeline, the provider's own key: all different.
        let b = keys.pipeline_service("customer-b", "sensors", s3).unwrap().public_key();
        let other = keys.pipeline_service("customer-a", "orders", s3).unwrap().public_key();
        let build = keys.service(s3).unwrap().public_key();
        assert!(
            a != b && a != other && a != build && b != other,
            "{a} {b} {other} {build}"
        );
        assert!(a.starts_with('V'), "a service key: {a}");
        assert!(dir
            .path()
            .join("pipelines/customer-a/sensors/sluice-provider-s3_service.nk")
            .is_file());
        for bad in ["", "..", "a/b", "a b"] {
            assert!(matches!(
                keys.pipeline_service(bad, "sensors", s3),
                Err(KeysError::BadName(_))
            ));
        }
    }
}
