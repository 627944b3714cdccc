//! Which multipart uploads a sink link started, so that a restarted link aborts what it left
//! behind (`abort_incomplete_after`) and never another link's uploads, even when both write under
//! the same key prefix (the default template starts with `{link}/`, the same for every component
//! whose link has that name).
//!
//! Before an object's multipart upload is created, an empty marker object
//! `_sluice/uploads/{component}/{link}/{object key}` is put; it is deleted once the upload is
//! completed or aborted. At link start the link lists only its own markers, aborts the uploads
//! of those keys started before the cutoff, and deletes the markers with no upload left.

use std::time::SystemTime;

use aws_sdk_s3::primitives::ByteStream;
use sluice_provider_core::LinkKey;
use tracing::{info, warn};

use crate::client::S3Error;
use crate::template::encode;
use crate::STATE_PREFIX;

/// The upload markers of one sink link.
#[derive(Debug, Clone)]
pub struct UploadMarkers {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// `_sluice/uploads/{component}/{link}/`.
    prefix: String,
}

impl UploadMarkers {
    /// The markers of `link` in `bucket`.
    #[must_use]
    pub fn new(client: aws_sdk_s3::Client, bucket: &str, link: &LinkKey) -> Self {
        Self {
            client,
            bucket: bucket.to_string(),
            prefix: format!(
                "{STATE_PREFIX}uploads/{}/{}/",
                encode(link.component.as_bytes()),
                encode(link.name.as_bytes())
            ),
        }
    }

    /// Records that this link is about to start a multipart upload of `key`.
    ///
    /// # Errors
    /// When the marker cannot be stored (the upload must not start then).
    pub async fn record(&self, key: &str) -> Result<(), S3Error> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| S3Error::new("PutObject", &self.bucket, e))
    }

    /// Forgets the upload of `key` once it is completed or aborted (best effort: a leftover marker
    /// is deleted at the next link start).
    pub async fn forget(&self, key: &str) {
        let marker = format!("{}{key}", self.prefix);
        if let Err(err) = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&marker)
            .send()
            .await
        {
            warn!(%marker, error = %S3Error::new("DeleteObject", &self.bucket, err), "could not delete an upload marker");
        }
    }

    /// Aborts this link's multipart uploads started before `cutoff` (what a killed provider left:
    /// invisible, but paid for until aborted) and deletes the markers of keys with no upload left.
    pub async fn abort_stale(&self, cutoff: SystemTime, link: &LinkKey) {
        let mut aborted = 0usize;
        let mut token: Option<String> = None;
        loop {
            let page = match self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_continuation_token(token.take())
                .send()
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    warn!(%link, error = %S3Error::new("ListObjectsV2", &self.bucket, err), "could not look for incomplete uploads");
                    return;
                }
            };
            for marker in page.contents().iter().filter_map(|o| o.key()) {
                let key = &marker[self.prefix.len()..];
                match self.abort_key(key, cutoff).await {
                    Ok((n, 0)) => {
                        aborted += n;
                        self.forget(key).await;
                    }
                    Ok((n, _left)) => aborted += n,
                    Err(err) => warn!(%link, %key, error = %err, "could not abort an incomplete upload"),
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        if aborted > 0 {
            info!(%link, aborted, "aborted incomplete multipart uploads this link left in an earlier run");
        }
    }

    /// Aborts the uploads of exactly `key` started before `cutoff`: (aborted, still running).
    async fn abort_key(&self, key: &str, cutoff: SystemTime) -> Result<(usize, usize), S3Error> {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await
            .map_err(|e| S3Error::new("ListMultipartUploads", &self.bucket, e))?;
        let (mut aborted, mut left) = (0, 0);
        for upload in listed.uploads().iter().filter(|u| u.key() == Some(key)) {
            let started = upload.initiated().and_then(|t| SystemTime::try_from(*t).ok());
            let Some(id) = upload.upload_id() else { continue };
            if started.is_none_or(|s| s > cutoff) {
                left += 1;
                continue;
            }
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| S3Error::new("AbortMultipartUpload", &self.bucket, e))?;
            aborted += 1;
        }
        Ok((aborted, left))
    }
}
