//! Where a source link keeps its place, stored as JSON in an object of the bucket or in a local
//! file (written, fsynced, renamed), rewritten after every acknowledgement. Its size follows the
//! objects in progress, never the bucket: with `after_done = keep` a high-water mark in listing
//! order stands for every object before it; with `delete`/`move` only objects finished and not
//! yet removed are listed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use crate::client::S3Error;

/// A source link's progress: only what the component accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `after_done = keep`: every key up to this one in listing (lexicographic) order was read to
    /// the end and accepted, or skipped; listings start after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Keys read to the end and accepted that `after` does not cover, with the ETag they had:
    /// with `delete`/`move`, those not removed yet (a replaced object is read again); with `keep`,
    /// only what a checkpoint written before the high-water mark listed, until the mark passes it.
    #[serde(default)]
    pub done: BTreeMap<String, String>,
    /// The object being read, and how much of it was accepted.
    pub current: Option<Position>,
}

impl Checkpoint {
    /// Whether `key` with `etag` needs no reading.
    #[must_use]
    pub fn is_done(&self, key: &str, etag: &str) -> bool {
        self.after.as_deref().is_some_and(|after| key <= after) || self.done.get(key).is_some_and(|e| e == etag)
    }

    /// `keep`: every key up to `key` is done; the high-water mark moves there.
    pub fn pass(&mut self, key: &str) {
        if self.after.as_deref().is_none_or(|after| after < key) {
            self.after = Some(key.to_string());
        }
        let after = self.after.as_deref().unwrap_or_default();
        self.done.retain(|k, _| k.as_str() > after);
        self.end_current(key);
    }

    /// `delete`/`move`: `key` with `etag` is done, until [`Checkpoint::removed`].
    pub fn finish(&mut self, key: &str, etag: &str) {
        self.done.insert(key.to_string(), etag.to_string());
        self.end_current(key);
    }

    /// A finished object was deleted or moved: forgotten (a new object of that key is new).
    /// Whether the checkpoint changed.
    pub fn removed(&mut self, key: &str, etag: &str) -> bool {
        if self.done.get(key).is_some_and(|e| e == etag) {
            self.done.remove(key);
            return true;
        }
        false
    }

    fn end_current(&mut self, key: &str) {
        if self.current.as_ref().is_some_and(|c| c.key == key) {
            self.current = None;
        }
    }
}

/// How far into one object records were accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The object key.
    pub key: String,
    /// Its ETag when read.
    pub etag: String,
    /// Lines accepted (the next line to deliver is `line + 1`).
    pub line: u64,
    /// Bytes of the object those lines take up.
    pub offset: u64,
}

/// A checkpoint that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// S3 failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// The local file failed.
    #[error("checkpoint file `{path}`: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The stored checkpoint is not one this provider wrote.
    #[error("checkpoint `{at}` is corrupt: {source}")]
    Corrupt {
        /// Where it is.
        at: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// Where checkpoints live.
#[derive(Debug, Clone)]
pub enum CheckpointStore {
    /// An object in the link's bucket.
    Object {
        /// The client.
        client: aws_sdk_s3::Client,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// A local file.
    File(PathBuf),
}

impl CheckpointStore {
    /// Reads the stored checkpoint; none stored yet is an empty one.
    pub async fn load(&self) -> Result<Checkpoint, CheckpointError> {
        let (bytes, at) = match self {
            Self::File(path) => match tokio::fs::read(path).await {
                Ok(b) => (b, path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
                Err(source) => {
                    return Err(CheckpointError::File {
                        path: path.clone(),
                        source,
                    })
                }
            },
            Self::Object { client, bucket, key } => match client.get_object().bucket(bucket).key(key).send().await {
                Ok(out) => {
                    let body = out.body.collect().await.map_err(|e| S3Error {
                        operation: "GetObject",
                        bucket: bucket.clone(),
                        detail: format!("reading checkpoint `{key}`: {e}"),
                        permanent: false,
                    })?;
                    (body.to_vec(), format!("s3://{bucket}/{key}"))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(Checkpoint::default()),
                Err(e) => return Err(S3Error::new("GetObject", bucket, e).into()),
            },
        };
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt { at, source })
    }

    /// Stores `checkpoint` durably, replacing the previous one.
    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec(checkpoint).expect("a checkpoint serializes");
        match self {
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    write_file(&path, &bytes).map_err(|source| CheckpointError::File { path, source })
                })
                .await
                .expect("checkpoint write task runs")
            }
            Self::Object { client, bucket, key } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type("application/json")
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map_err(|e| S3Error::new("PutObject", bucket, e))?;
                Ok(())
            }
        }
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_checkpoint_round_trips() {
        let dir = std::env::temp_dir().join(format!("sluice-s3-ckpt-{}", std::process::id()));
        let store = CheckpointStore::File(dir.join("sub/c.json"));
        assert_eq!(store.load().await.unwrap(), Checkpoint::default());
        let mut c = Checkpoint::default();
        c.finish("a", "e1");
        c.current = Some(Position {
            key: "b".into(),
            etag: "e2".into(),
            line: 3,
            offset: 30,
        });
        store.save(&c).await.unwrap();
        assert_eq!(store.load().await.unwrap(), c);
        std::fs::write(dir.join("sub/c.json"), b"{").unwrap();
        let err = store.load().await.unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_high_water_mark_covers_every_key_before_it_and_stays_small() {
        // Written before the mark existed: every finished key listed.
        let mut c: Checkpoint = serde_json::from_str(r#"{"done":{"a":"1","b":"2","x":"9"},"current":null}"#).unwrap();
        assert!(c.is_done("b", "2") && !c.is_done("b", "3") && !c.is_done("c", "1"));
        for i in 0..10_000 {
            let key = format!("c/{i:05}");
            c.current = Some(Position {
                key: key.clone(),
                etag: "e".into(),
                line: 1,
                offset: 1,
            });
            c.pass(&key);
        }
        assert!(c.is_done("a", "other etag") && c.is_done("c/04711", "e") && !c.is_done("c/10000", "e"));
        assert_eq!(c.current, None);
        assert_eq!(
            c.done.keys().collect::<Vec<_>>(),
            ["x"],
            "keys beyond the mark stay listed"
        );
        assert!(serde_json::to_vec(&c).unwrap().len() < 100);
        c.pass("a");
        assert_eq!(c.after.as_deref(), Some("c/09999"), "the mark never moves back");

        let mut d = Checkpoint::default();
        d.finish("k", "1");
        assert!(d.is_done("k", "1") && !d.is_done("k", "2"));
        assert!(!d.removed("k", "2"));
        assert!(d.removed("k", "1") && d.done.is_empty());
    }
}
