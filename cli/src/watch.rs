//! Watching a logic project's sources for changes by polling their modification times (no
//! file-system notification API): [`Watcher::poll`] says whether anything changed since the last
//! poll, [`Watcher::settled`] waits until changes stop for a debounce interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Directories never watched: build output, dependencies, VCS data, caches.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "node_modules", "__pycache__", ".sluice-dev"];

/// How often [`Watcher::settled`] looks again while changes keep coming.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// What is known of one file: when it was last modified and its length.
type Stamp = (Option<SystemTime>, u64);

/// Polls the files under some paths (files or directories, walked recursively; build output,
/// `.wasm` files and the directories in [`SKIPPED_DIRS`] left out).
#[derive(Debug)]
pub struct Watcher {
    paths: Vec<PathBuf>,
    seen: BTreeMap<PathBuf, Stamp>,
}

impl Watcher {
    /// Watches `paths`, taking their current state as the starting point.
    #[must_use]
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let seen = snapshot(&paths);
        Self { paths, seen }
    }

    /// The watched paths.
    #[must_use]
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// How many files are watched.
    #[must_use]
    pub fn files(&self) -> usize {
        self.seen.len()
    }

    /// Whether a file was added, removed, modified or changed length since the last poll.
    pub fn poll(&mut self) -> bool {
        let now = snapshot(&self.paths);
        let changed = now != self.seen;
        self.seen = now;
        changed
    }

    /// After a change: waits until no file has changed for `debounce` (an editor's save, a `git
    /// checkout` of several files), so one burst of changes gives one rebuild.
    pub async fn settled(&mut self, debounce: Duration) {
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(SETTLE_POLL.min(debounce)).await;
            if self.poll() {
                quiet_since = tokio::time::Instant::now();
            } else if quiet_since.elapsed() >= debounce {
                return;
            }
        }
    }
}

fn snapshot(paths: &[PathBuf]) -> BTreeMap<PathBuf, Stamp> {
    let mut out = BTreeMap::new();
    for path in paths {
        walk(path, &mut out);
    }
    out
}

fn walk(path: &Path, out: &mut BTreeMap<PathBuf, Stamp>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let skipped = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| SKIPPED_DIRS.contains(&n));
        if skipped {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                walk(&entry.path(), out);
            }
        }
    } else if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
        out.insert(path.to_path_buf(), (meta.modified().ok(), meta.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join("target")).unwrap();
        dir
    }

    #[test]
    fn a_change_to_a_source_is_seen_once_and_build_output_never() {
        let dir = temp("poll");
        std::fs::write(dir.join("src/lib.rs"), "a").unwrap();
        let mut watcher = Watcher::new(vec![dir.clone()]);
        assert_eq!(watcher.files(), 1);
        assert!(!watcher.poll());
        // Same modification time granularity aside, a new length is a change.
        std::fs::write(dir.join("src/lib.rs"), "ab").unwrap();
        assert!(watcher.poll());
        assert!(!watcher.poll(), "seen once");
        std::fs::write(dir.join("target/out.rlib"), "x").unwrap();
        std::fs::write(dir.join("logic.wasm"), "x").unwrap();
        assert!(!watcher.poll(), "build output is not a source");
        std::fs::write(dir.join("src/new.rs"), "").unwrap();
        assert!(watcher.poll(), "a new file");
        std::fs::remove_file(dir.join("src/new.rs")).unwrap();
        assert!(watcher.poll(), "a removed file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn settled_waits_for_a_quiet_interval() {
        let dir = temp("settle");
        let mut watcher = Watcher::new(vec![dir.join("src")]);
        let file = dir.join("src/lib.rs");
        let writer = tokio::spawn(async move {
            for i in 0..5 {
                std::fs::write(&file, "x".repeat(i + 1)).unwrap();
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        });
        let start = tokio::time::Instant::now();
        watcher.settled(Duration::from_millis(300)).await;
        writer.await.unwrap();
        // Five writes 60 ms apart, then 300 ms of quiet.
        assert!(start.elapsed() >= Duration::from_millis(540), "{:?}", start.elapsed());
        assert!(!watcher.poll(), "every write was taken in");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
