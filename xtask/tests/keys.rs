//! Provider identities: archives packaged with one keys directory carry the same subject and
//! issuer build after build (read back with `provider-archive`, as the host reads them); a new
//! keys directory is a new identity; a damaged seed file is refused by name.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use provider_archive::ProviderArchive;
use tempfile::TempDir;
use xtask::par::{package, package_all, Keys, Profile, ProviderPackage, Workspace};

/// A small ELF that `strip` accepts, standing in for a provider binary.
const BINARY: &str = "/bin/true";

const PROVIDERS: [&str; 2] = ["sluice-provider-a", "sluice-provider-b"];

fn provider(name: &str) -> ProviderPackage {
    ProviderPackage {
        name: name.into(),
        version: "0.1.0".into(),
    }
}

/// A workspace whose target dir holds a debug "binary" for each of [`PROVIDERS`].
fn workspace(root: &Path) -> Workspace {
    let debug = root.join("debug");
    std::fs::create_dir_all(&debug).unwrap();
    for name in PROVIDERS {
        std::fs::copy(BINARY, debug.join(name)).unwrap();
    }
    Workspace {
        target_dir: root.to_path_buf(),
        providers: PROVIDERS.iter().map(|name| provider(name)).collect(),
    }
}

/// The (subject, issuer) of the claims in the archive at `path`.
async fn identity(path: &PathBuf) -> (String, String) {
    let bytes = std::fs::read(path).unwrap();
    let archive = ProviderArchive::try_load(&bytes).await.expect("the archive loads");
    let claims = archive.claims().expect("the archive has claims");
    (claims.subject, claims.issuer)
}

/// Packages every provider of `workspace` into a new directory with the keys in `keys_dir` and
/// returns each archive's (subject, issuer) as read back from it.
async fn package_with(workspace: &Workspace, keys_dir: &Path) -> Vec<(String, String)> {
    let out = TempDir::new().unwrap();
    let keys = Keys::open(keys_dir).unwrap();
    let packaged = package_all(workspace, Profile::Debug, out.path(), &keys).await.unwrap();
    let mut identities = Vec::new();
    for archive in &packaged {
        let read_back = identity(&archive.path).await;
        assert_eq!(
            read_back,
            (archive.subject.clone(), archive.issuer.clone()),
            "{archive:?}"
        );
        identities.push(read_back);
    }
    identities
}

#[tokio::test]
async fn packaging_twice_with_one_keys_dir_keeps_every_subject_and_the_issuer() {
    let root = TempDir::new().unwrap();
    let workspace = workspace(root.path());
    let keys = TempDir::new().unwrap();
    let first = package_with(&workspace, keys.path()).await;
    let second = package_with(&workspace, keys.path()).await;
    assert_eq!(first, second);
    let [(subject_a, issuer_a), (subject_b, issuer_b)] = first.as_slice() else {
        panic!("two archives expected: {first:?}");
    };
    assert_ne!(subject_a, subject_b, "each provider has its own service key");
    assert_eq!(issuer_a, issuer_b, "one issuer signs every provider");
    assert!(subject_a.starts_with('V') && issuer_a.starts_with('A'), "{first:?}");
}

#[tokio::test]
async fn a_fresh_keys_dir_gives_new_subjects_and_a_new_issuer() {
    let root = TempDir::new().unwrap();
    let workspace = workspace(root.path());
    let (keys, other_keys) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let first = package_with(&workspace, keys.path()).await;
    let other = package_with(&workspace, other_keys.path()).await;
    for ((subject, issuer), (other_subject, other_issuer)) in first.iter().zip(&other) {
        assert_ne!(subject, other_subject);
        assert_ne!(issuer, other_issuer);
    }
}

#[tokio::test]
async fn keys_are_created_once_as_seed_files_only_the_owner_reads() {
    let root = TempDir::new().unwrap();
    let dir = root.path().join("not/there/yet");
    let keys = Keys::open(&dir).unwrap();
    let packaged = package(Path::new(BINARY), &provider("sluice-provider-a"), root.path(), &keys)
        .await
        .unwrap();
    for (path, public) in [
        (keys.issuer_path(), &packaged.issuer),
        (keys.service_path("sluice-provider-a"), &packaged.subject),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        let seed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(&nkeys::KeyPair::from_seed(&seed).unwrap().public_key(), public);
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        2,
        "only the two key files, no temporary ones"
    );
    // Opened again, the directory gives the same keys.
    let again = Keys::open(&dir).unwrap();
    assert_eq!(again.issuer().unwrap().public_key(), packaged.issuer);
    assert_eq!(
        again.service("sluice-provider-a").unwrap().public_key(),
        packaged.subject
    );
}

#[tokio::test]
async fn a_corrupt_seed_is_an_error_naming_the_file() {
    let root = TempDir::new().unwrap();
    let workspace = workspace(root.path());
    let keys = Keys::open(root.path().join("keys")).unwrap();
    for path in [keys.service_path("sluice-provider-b"), keys.issuer_path()] {
        std::fs::write(&path, "SUNOTASEED\n").unwrap();
        let out = root.path().join("par");
        let err = package_all(&workspace, Profile::Debug, &out, &keys).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a valid nkeys seed"), "{message}");
        assert!(
            !out.join("sluice-provider-b.par.gz").exists(),
            "nothing written with a bad key"
        );
    }
}

#[test]
fn a_seed_of_the_wrong_kind_is_refused() {
    let root = TempDir::new().unwrap();
    let keys = Keys::open(root.path()).unwrap();
    let account = nkeys::KeyPair::new_account().seed().unwrap();
    std::fs::write(keys.service_path("sluice-provider-a"), account).unwrap();
    let err = keys.service("sluice-provider-a").unwrap_err().to_string();
    assert!(err.contains("sluice-provider-a_service.nk"), "{err}");
    assert!(err.contains("expected a Service seed"), "{err}");
}

/// Re-signs the archive of `provider` packaged in `par` for pipeline `pipeline` on `lattice` into
/// `out`, and returns the copy's (subject, issuer) as read back from it.
async fn pipeline_copy(par: &Path, out: &Path, keys: &Keys, lattice: &str, pipeline: &str) -> (String, String) {
    let provider = PROVIDERS[0];
    let to = out.join(lattice).join(pipeline).join(format!("{provider}.par.gz"));
    let service = keys.pipeline_service(lattice, pipeline, provider).unwrap();
    let copy = xtask::par::resign(
        &xtask::par::archive_path(par, provider),
        &to,
        &keys.issuer().unwrap(),
        &service,
    )
    .await
    .unwrap();
    let read_back = identity(&to).await;
    assert_eq!(read_back, (copy.subject, copy.issuer));
    read_back
}

#[tokio::test]
async fn each_tenants_copy_has_its_own_subject_stable_across_builds() {
    let root = TempDir::new().unwrap();
    let workspace = workspace(root.path());
    let keys_dir = TempDir::new().unwrap();
    let keys = Keys::open(keys_dir.path()).unwrap();
    let (first, second) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let build = package_all(&workspace, Profile::Debug, first.path(), &keys)
        .await
        .unwrap();
    let out = TempDir::new().unwrap();
    let a = pipeline_copy(first.path(), out.path(), &keys, "customer-a", "sensors").await;
    let b = pipeline_copy(first.path(), out.path(), &keys, "customer-b", "sensors").await;
    // Two tenants: two subjects, one issuer, neither the build's own subject.
    assert_ne!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.1, build[0].issuer);
    assert_ne!(a.0, build[0].subject);
    // Another build, re-signed again into fresh copies: the same subjects.
    package_all(&workspace, Profile::Debug, second.path(), &keys)
        .await
        .unwrap();
    let out2 = TempDir::new().unwrap();
    assert_eq!(
        pipeline_copy(second.path(), out2.path(), &keys, "customer-a", "sensors").await,
        a
    );
    assert_eq!(
        pipeline_copy(second.path(), out2.path(), &keys, "customer-b", "sensors").await,
        b
    );
    // Re-signing over an existing copy keeps its identity (and the copy loads, hashes checked).
    assert_eq!(
        pipeline_copy(second.path(), out.path(), &keys, "customer-a", "sensors").await,
        a
    );
}
