//! Whole objects: put a file or bytes, get one as a stream of chunks, delete named keys under a prefix.
//! What the store's own backups need (`store::backup`); WAL-E's objects are only ever listed and copied.

use std::path::Path;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{ObjectStore, S3Error, S3Url};

/// Attempts for each whole-object call on transient errors (throttling, 5xx, timeouts, resets).
const ATTEMPTS: u32 = 3;
/// Files larger than this go up in parts of this size: one PutObject takes at most 5 GiB, and a failed
/// part is retried alone. 64 MiB x 10,000 parts (S3's limit) is 640 GiB.
pub const PART_SIZE: u64 = 64 << 20;
/// S3 refuses parts below 5 MiB (except the last).
pub const PART_MIN: u64 = 5 << 20;
/// S3 refuses part numbers above this.
pub const MAX_PARTS: u64 = 10_000;

impl ObjectStore {
    /// Uploads the file at `path` as the object `url`: one PutObject up to [`PART_SIZE`], a multipart
    /// upload above it.
    pub async fn put_file(&self, url: &S3Url, path: &Path) -> Result<(), S3Error> {
        let len = tokio::fs::metadata(path).await.map_err(|e| self.local("PutObject", url, path, &e))?.len();
        if len > PART_SIZE {
            // S3 takes at most 10,000 parts: past 640 GiB the parts grow.
            return self.put_file_in_parts(url, path, PART_SIZE.max(len.div_ceil(MAX_PARTS))).await;
        }
        self.put_file_whole(url, path).await
    }

    fn local(&self, op: &'static str, url: &S3Url, path: &Path, e: &(dyn std::error::Error + 'static)) -> S3Error {
        S3Error::Local { op, url: url.to_string(), path: path.display().to_string(), detail: crate::error_chain(e) }
    }

    /// A multipart upload of `path` in parts of `part_size` (at least [`PART_MIN`]), each part retried on
    /// its own; aborted on failure, so no half object is left (nor billed).
    pub async fn put_file_in_parts(&self, url: &S3Url, path: &Path, part_size: u64) -> Result<(), S3Error> {
        let part_size = part_size.max(PART_MIN);
        let len = tokio::fs::metadata(path).await.map_err(|e| self.local("UploadPart", url, path, &e))?.len();
        let client = self.client().await;
        let created = self
            .retrying(ATTEMPTS, None, || async {
                client.create_multipart_upload().bucket(&url.bucket).key(&url.key).send().await.map_err(|e| self.op_err("CreateMultipartUpload", url, e))
            })
            .await?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(self.local("CreateMultipartUpload", url, path, &std::io::Error::other("the object store returned no upload id")));
        };
        let upload = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            while offset < len || parts.is_empty() {
                let n = part_size.min(len - offset);
                let number = parts.len() as i32 + 1;
                let etag = self
                    .retrying(ATTEMPTS, None, || async {
                        let body = ByteStream::read_from()
                            .path(path)
                            .offset(offset)
                            .length(Length::Exact(n))
                            .build()
                            .await
                            .map_err(|e| self.local("UploadPart", url, path, &e))?;
                        let out = client
                            .upload_part()
                            .bucket(&url.bucket)
                            .key(&url.key)
                            .upload_id(&upload_id)
                            .part_number(number)
                            .body(body)
                            .send()
                            .await
                            .map_err(|e| self.op_err("UploadPart", url, e))?;
                        Ok(out.e_tag().map(str::to_string))
                    })
                    .await?;
                parts.push(CompletedPart::builder().part_number(number).set_e_tag(etag).build());
                offset += n;
                if n == 0 {
                    break;
                }
            }
            let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
            self.retrying(ATTEMPTS, None, || async {
                client
                    .complete_multipart_upload()
                    .bucket(&url.bucket)
                    .key(&url.key)
                    .upload_id(&upload_id)
                    .multipart_upload(done.clone())
                    .send()
                    .await
                    .map_err(|e| self.op_err("CompleteMultipartUpload", url, e))
            })
            .await?;
            Ok(())
        }
        .await;
        if upload.is_err() {
            if let Err(e) = self.abort_upload(url, &upload_id).await {
                tracing::warn!(url = %url, error = %e, "could not abort a failed multipart upload; a later backup begun over an hour after it aborts it");
            }
        }
        upload
    }

    async fn put_file_whole(&self, url: &S3Url, path: &Path) -> Result<(), S3Error> {
        let client = self.client().await;
        self.retrying(ATTEMPTS, None, || async {
            let body = ByteStream::from_path(path).await.map_err(|e| S3Error::Local {
                op: "PutObject",
                url: url.to_string(),
                path: path.display().to_string(),
                detail: crate::error_chain(&e),
            })?;
            client.put_object().bucket(&url.bucket).key(&url.key).body(body).send().await.map_err(|e| self.op_err("PutObject", url, e))?;
            Ok(())
        })
        .await
    }

    /// Uploads `bytes` as the object `url`.
    pub async fn put_bytes(&self, url: &S3Url, bytes: Vec<u8>, content_type: &str) -> Result<(), S3Error> {
        let client = self.client().await;
        self.retrying(ATTEMPTS, None, || async {
            client
                .put_object()
                .bucket(&url.bucket)
                .key(&url.key)
                .content_type(content_type)
                .body(ByteStream::from(bytes.clone()))
                .send()
                .await
                .map_err(|e| self.op_err("PutObject", url, e))?;
            Ok(())
        })
        .await
    }

    /// Downloads the object `url`, handing each chunk to `sink` as it arrives (nothing is held in
    /// memory beyond one chunk). Returns the bytes received. An error from `sink` stops the download and
    /// is reported as a local failure on `local` (what the sink writes to).
    pub async fn get_chunks(&self, url: &S3Url, local: &Path, mut sink: impl FnMut(&[u8]) -> std::io::Result<()>) -> Result<u64, S3Error> {
        let client = self.client().await;
        let out = client.get_object().bucket(&url.bucket).key(&url.key).send().await.map_err(|e| self.op_err("GetObject", url, e))?;
        let mut body = out.body;
        let mut n = 0u64;
        loop {
            let chunk = body.try_next().await.map_err(|e| S3Error::Operation {
                op: "GetObject",
                endpoint: self.endpoint_label(),
                url: url.to_string(),
                code: "read".into(),
                status: 0,
                detail: self.config.scrub(&crate::error_chain(&e)),
            })?;
            let Some(chunk) = chunk else { break };
            sink(&chunk).map_err(|e| S3Error::Local { op: "GetObject", url: url.to_string(), path: local.display().to_string(), detail: e.to_string() })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// Downloads a small object whole (at most `max` bytes: a manifest, not a backup).
    pub async fn get_bytes(&self, url: &S3Url, max: usize) -> Result<Vec<u8>, S3Error> {
        let mut buf = Vec::new();
        let too_big = std::io::Error::other(format!("the object is larger than {max} bytes"));
        let mut over = Some(too_big);
        self.get_chunks(url, Path::new("(memory)"), |c| {
            if buf.len() + c.len() > max {
                return Err(over.take().unwrap_or_else(|| std::io::Error::other("too large")));
            }
            buf.extend_from_slice(c);
            Ok(())
        })
        .await?;
        Ok(buf)
    }

    /// Multipart uploads begun and never completed nor aborted directly under `prefix` whose key `keep`
    /// accepts, at most `max` of them: (key, upload id, initiated, ms since the epoch; 0 when the store
    /// does not say).
    pub async fn unfinished_uploads(&self, prefix: &S3Url, max: usize, keep: impl Fn(&str) -> bool) -> Result<Vec<(String, String, i64)>, S3Error> {
        let client = self.client().await;
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .retrying(ATTEMPTS, None, || async {
                    client
                        .list_multipart_uploads()
                        .bucket(&prefix.bucket)
                        .prefix(&prefix.key)
                        .delimiter("/")
                        .set_key_marker(key_marker.clone())
                        .set_upload_id_marker(id_marker.clone())
                        .send()
                        .await
                        .map_err(|e| self.op_err("ListMultipartUploads", prefix, e))
                })
                .await?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    if out.len() < max && k.starts_with(&prefix.key) && keep(k) {
                        out.push((k.to_string(), id.to_string(), u.initiated().map_or(0, |t| t.to_millis().unwrap_or(0))));
                    }
                }
            }
            let next = (page.next_key_marker().map(str::to_string), page.next_upload_id_marker().map(str::to_string));
            // A store whose markers do not move would page for ever.
            if page.is_truncated() != Some(true) || out.len() >= max || next.0.is_none() || next == (key_marker.clone(), id_marker.clone()) {
                return Ok(out);
            }
            (key_marker, id_marker) = next;
        }
    }

    /// Aborts the multipart upload `upload_id` of `url`: its parts are removed (and no longer billed).
    /// One already gone (aborted by an earlier attempt or by someone else) counts as aborted.
    pub async fn abort_upload(&self, url: &S3Url, upload_id: &str) -> Result<(), S3Error> {
        let client = self.client().await;
        let r = self
            .retrying(ATTEMPTS, None, || async {
                client
                    .abort_multipart_upload()
                    .bucket(&url.bucket)
                    .key(&url.key)
                    .upload_id(upload_id)
                    .send()
                    .await
                    .map_err(|e| self.op_err("AbortMultipartUpload", url, e))
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(S3Error::Operation { code, .. }) if code == "NoSuchUpload" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes `keys` (full keys in `prefix`'s bucket), each checked to lie under `prefix`, which must
    /// not be a whole bucket; keys already gone count as deleted.
    pub async fn delete_under(&self, prefix: &S3Url, keys: &[String]) -> Result<u64, S3Error> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        if prefix.key.is_empty() || !prefix.is_prefix() {
            return Err(S3Error::Guard { reason: format!("deleting under {prefix}: a prefix ending in '/' inside a bucket is needed, never a whole bucket") });
        }
        let client = self.client().await;
        let mut deleted = 0u64;
        for chunk in keys.chunks(1000) {
            let mut ids = Vec::with_capacity(chunk.len());
            for k in chunk {
                if prefix.relative(k).is_none_or(|r| r.is_empty() || r.split('/').any(|p| p == ".." || p == ".")) {
                    return Err(S3Error::Guard { reason: format!("refusing to delete s3://{}/{k}: it is not under {prefix}", prefix.bucket) });
                }
                ids.push(ObjectIdentifier::builder().key(k).build().map_err(|e| S3Error::Guard { reason: e.to_string() })?);
            }
            let del = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| S3Error::Guard { reason: e.to_string() })?;
            let out = self
                .retrying(ATTEMPTS, None, || async {
                    client.delete_objects().bucket(&prefix.bucket).delete(del.clone()).send().await.map_err(|e| self.op_err("DeleteObjects", prefix, e))
                })
                .await?;
            if let Some(e) = out.errors().first() {
                return Err(S3Error::Operation {
                    op: "DeleteObjects",
                    endpoint: self.endpoint_label(),
                    url: format!("s3://{}/{}", prefix.bucket, e.key().unwrap_or("?")),
                    code: e.code().unwrap_or("").to_string(),
                    status: 0,
                    detail: format!("{} of {} keys were not deleted: {}", out.errors().len(), chunk.len(), e.message().unwrap_or("")),
                });
            }
            deleted += chunk.len() as u64;
        }
        Ok(deleted)
    }
}
