//! [`S3Store`]: the [`ObjectStore`] on Amazon S3 (or anything speaking its API, such as moto in
//! the tests), through aws-sdk-s3.
//!
//! Keys are stored under an optional prefix (`{prefix}/{key}`), so one bucket can hold several
//! deployments. ETags are returned and accepted without the surrounding quotes S3 puts on them;
//! they are opaque (typically an MD5 for single puts, `md5-N` for multipart objects).
//!
//! **Conditional writes** use S3's own `If-Match: "etag"` and `If-None-Match: *` on `PutObject`,
//! so the check and the write are one atomic step on the server. S3 answers a condition that
//! does not hold with 412, and a conditional write that races another one on the same key with
//! 409 `ConditionalRequestConflict`; both become [`StoreError::PreconditionFailed`]. `If-Match`
//! on a missing object is answered 404 `NoSuchKey`; for a write that also means the condition
//! did not hold, so it is `PreconditionFailed` too (the same as [`gitferry_core::store::fs::FsStore`]).
//!
//! **Uploads** of files up to [`MULTIPART_THRESHOLD`] are one `PutObject` streamed from the
//! file. Larger ones are multipart: parts of [`PART_SIZE`] are streamed from the file one at a
//! time (each part body reads its byte range from the file, so it is never in memory and the
//! SDK can replay it on retry), and the upload is aborted on any error. A condition is sent on
//! `CompleteMultipartUpload` (S3 accepts `If-Match` / `If-None-Match: *` there, and the SDK has
//! both), which is where S3 decides atomically. It is also checked up front with
//! `HeadObject`, so a write that is bound to fail does not upload hundreds of megabytes first —
//! and so emulators that ignore `If-Match` on completion (moto 5.2 honours only
//! `If-None-Match`) still refuse the common stale case. Part checksums are left to the SDK's
//! defaults (it adds a CRC32 to each part; the completion lists none): moto accepts that, real S3
//! has not been tried from here.
//!
//! **Errors** are classified from the HTTP status and S3's error code: 404 `NoSuchKey` /
//! `NotFound` → `NotFound` (`get` → `Ok(None)`, `delete` → success); 412 / 409
//! `ConditionalRequestConflict` → `PreconditionFailed`; throttling, 5xx, request timeouts,
//! connection failures and truncated bodies → `Unavailable`; the rest (403, `NoSuchBucket`,
//! invalid requests) → `Failed`. Messages carry the status, S3's code and message, or the SDK's
//! error chain — never credentials: the SDK signs requests in headers (no presigned URLs here)
//! and redacts secrets in its own errors.
//!
//! S3 answers a read of a missing key with 403 instead of 404 when the caller may not list the
//! bucket, so the role needs `s3:ListBucket` on the bucket for "absent" to be recognised (the
//! 403 would be a permanent `Failed`). `download` streams into `dest` as the body arrives; after
//! a failure `dest` may hold part of the object.
//!
//! Note on retries: the SDK retries transient failures itself (standard mode, 3 attempts). A
//! conditional `PutObject` whose first attempt succeeded but whose reply was lost is retried
//! and then fails its own condition (412). Callers of conditional writes must therefore treat
//! `PreconditionFailed` as "re-read and decide", never as proof that nothing was written —
//! which is what [`gitferry_core::store::fault::Fault::ReplyLost`] exercises.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncWriteExt;

use gitferry_core::store::fs::validate_prefix;
use gitferry_core::store::{Condition, Object, ObjectInfo, ObjectStore, StoreError, validate_key};

/// Files larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Size of each part of a multipart upload (the last one may be smaller). S3's minimum is 5 MiB
/// and its maximum part count 10,000, so this allows objects up to ~78 GiB.
pub const PART_SIZE: u64 = 8 * 1024 * 1024;

/// An object store on one S3 bucket, under an optional key prefix. Cheap to clone.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// `""` or a validated prefix ending with `/`.
    prefix: String,
}

impl std::fmt::Debug for S3Store {
    // Not derived: the client's configuration has no business in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Store {
    /// A store on `bucket`, every key under `prefix` (`""` for none; a trailing `/` is
    /// optional). `Failed` if the bucket name is empty or the prefix is not a valid key.
    pub fn new(client: Client, bucket: impl Into<String>, prefix: &str) -> Result<S3Store, StoreError> {
        let bucket = bucket.into();
        if bucket.is_empty() {
            return Err(StoreError::Failed {
                key: prefix.to_owned(),
                message: "no bucket name given".into(),
            });
        }
        let trimmed = prefix.trim_end_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            validate_key(trimmed)?;
            format!("{trimmed}/")
        };
        Ok(S3Store { client, bucket, prefix })
    }

    /// A store configured from the environment: region and credentials from the standard AWS
    /// chain (env, profile, web identity, ECS/IMDS — on Lambda, the function's role).
    ///
    /// An endpoint override (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, or the profile's global
    /// `endpoint_url`) is applied by aws-config itself; when one is set we also switch to
    /// path-style addressing (`http://host/bucket/key`), which emulators such as moto need
    /// because `bucket.127.0.0.1` does not resolve. (A service-specific `endpoint_url` in a
    /// profile's `services` section is honoured by the SDK but not detected here.)
    pub async fn from_env(bucket: impl Into<String>, prefix: &str) -> Result<S3Store, StoreError> {
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let ignored =
            std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let overridden = sdk_config.endpoint_url().is_some()
            || (!ignored && std::env::var("AWS_ENDPOINT_URL_S3").is_ok_and(|v| !v.is_empty()));
        let config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(overridden)
            .build();
        S3Store::new(Client::from_conf(config), bucket, prefix)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix keys are stored under: `""` or ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The S3 key of a store key.
    fn s3_key(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    async fn put_object(
        &self,
        key: &str,
        s3_key: &str,
        body: ByteStream,
        condition: &Condition,
    ) -> Result<String, StoreError> {
        let mut req = self.client.put_object().bucket(&self.bucket).key(s3_key).body(body);
        req = match condition {
            Condition::Always => req,
            Condition::IfMatch(etag) => req.if_match(quoted(etag)),
            Condition::IfAbsent => req.if_none_match("*"),
        };
        let out = req.send().await.map_err(|e| write_error(key, condition, e))?;
        etag_of(key, out.e_tag())
    }

    /// The cheap up-front check of a multipart upload's condition (see the module docs).
    async fn precheck(&self, key: &str, s3_key: &str, condition: &Condition) -> Result<(), StoreError> {
        if *condition == Condition::Always {
            return Ok(());
        }
        let current = match self.client.head_object().bucket(&self.bucket).key(s3_key).send().await {
            Ok(out) => Some(etag_of(key, out.e_tag())?),
            Err(e) => match classify(key, e) {
                StoreError::NotFound { .. } => None,
                other => return Err(other),
            },
        };
        let holds = match (condition, current) {
            (Condition::IfAbsent, current) => current.is_none(),
            (Condition::IfMatch(expected), Some(etag)) => etag == normalize_etag(expected),
            (_, _) => false,
        };
        if holds {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed { key: key.to_owned() })
        }
    }

    async fn upload_multipart(
        &self,
        key: &str,
        s3_key: &str,
        src: &Path,
        len: u64,
        condition: &Condition,
    ) -> Result<String, StoreError> {
        self.precheck(key, s3_key, condition).await?;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(s3_key)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(StoreError::Failed {
                key: key.to_owned(),
                message: "CreateMultipartUpload returned no upload id".into(),
            });
        };
        let result = self.upload_parts(key, s3_key, src, len, upload_id, condition).await;
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(s3_key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                // The bucket's lifecycle rule for incomplete uploads is the backstop.
                tracing::warn!(key, error = %classify(key, e), "could not abort multipart upload");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        s3_key: &str,
        src: &Path,
        len: u64,
        upload_id: &str,
        condition: &Condition,
    ) -> Result<String, StoreError> {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < len {
            let size = PART_SIZE.min(len - offset);
            let body = ByteStream::read_from()
                .path(src)
                .offset(offset)
                .length(Length::Exact(size))
                .build()
                .await
                .map_err(|e| StoreError::Failed {
                    key: key.to_owned(),
                    message: format!("reading {}: {e}", src.display()),
                })?;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(s3_key)
                .upload_id(upload_id)
                .part_number(number)
                .body(body)
                .send()
                .await
                .map_err(|e| classify(key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(out.e_tag().unwrap_or_default())
                    .build(),
            );
            offset += size;
            number += 1;
        }
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(s3_key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        req = match condition {
            Condition::Always => req,
            Condition::IfMatch(etag) => req.if_match(quoted(etag)),
            Condition::IfAbsent => req.if_none_match("*"),
        };
        let out = req.send().await.map_err(|e| write_error(key, condition, e))?;
        etag_of(key, out.e_tag())
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let s3_key = self.s3_key(key)?;
        let out = match self.client.get_object().bucket(&self.bucket).key(&s3_key).send().await {
            Ok(out) => out,
            Err(e) => {
                return match classify(key, e) {
                    StoreError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let etag = etag_of(key, out.e_tag())?;
        let body = out.body.collect().await.map_err(|e| StoreError::Unavailable {
            key: key.to_owned(),
            message: format!("reading the body: {}", DisplayErrorContext(&e)),
        })?;
        Ok(Some(Object {
            body: body.into_bytes().to_vec(),
            etag,
        }))
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: Condition) -> Result<String, StoreError> {
        let s3_key = self.s3_key(key)?;
        self.put_object(key, &s3_key, ByteStream::from(body), &condition).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let s3_key = self.s3_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&s3_key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match classify(key, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_prefix(prefix)?;
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(prefix, e))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| k.strip_prefix(self.prefix.as_str())) else {
                    continue;
                };
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    etag: obj.e_tag().map(normalize_etag).unwrap_or_default(),
                    modified_ms: unix_ms(obj.last_modified()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        // S3 already lists in UTF-8 byte order; sorting again keeps the promise for any
        // S3-compatible server.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn download(&self, key: &str, dest: &Path) -> Result<ObjectInfo, StoreError> {
        let s3_key = self.s3_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&s3_key)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        let etag = etag_of(key, out.e_tag())?;
        let modified_ms = unix_ms(out.last_modified());
        let expected = out.content_length().map(|n| n.max(0) as u64);
        let mut body = out.body;
        let write_err = |e: std::io::Error| StoreError::Failed {
            key: key.to_owned(),
            message: format!("writing {}: {e}", dest.display()),
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(write_err)?;
        let mut size = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::Unavailable {
            key: key.to_owned(),
            message: format!("reading the body: {}", DisplayErrorContext(&e)),
        })? {
            file.write_all(&chunk).await.map_err(write_err)?;
            size += chunk.len() as u64;
        }
        file.flush().await.map_err(write_err)?;
        if let Some(expected) = expected
            && expected != size
        {
            return Err(StoreError::Unavailable {
                key: key.to_owned(),
                message: format!("body truncated: {size} of {expected} bytes"),
            });
        }
        Ok(ObjectInfo {
            key: key.to_owned(),
            size,
            etag,
            modified_ms,
        })
    }

    async fn upload(&self, key: &str, src: &Path, condition: Condition) -> Result<String, StoreError> {
        let s3_key = self.s3_key(key)?;
        let len = tokio::fs::metadata(src)
            .await
            .map_err(|e| StoreError::Failed {
                key: key.to_owned(),
                message: format!("reading {}: {e}", src.display()),
            })?
            .len();
        if len > MULTIPART_THRESHOLD {
            return self.upload_multipart(key, &s3_key, src, len, &condition).await;
        }
        let body = ByteStream::from_path(src).await.map_err(|e| StoreError::Failed {
            key: key.to_owned(),
            message: format!("reading {}: {e}", src.display()),
        })?;
        self.put_object(key, &s3_key, body, &condition).await
    }
}

/// An ETag as S3 sends it (`"abc"`, possibly weak `W/"abc"`) without the decoration.
pub fn normalize_etag(etag: &str) -> String {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"').to_owned()
}

/// An ETag as an `If-Match` header wants it.
fn quoted(etag: &str) -> String {
    format!("\"{}\"", normalize_etag(etag))
}

fn etag_of(key: &str, etag: Option<&str>) -> Result<String, StoreError> {
    match etag {
        Some(e) if !e.is_empty() => Ok(normalize_etag(e)),
        _ => Err(StoreError::Failed {
            key: key.to_owned(),
            message: "the response carried no ETag".into(),
        }),
    }
}

/// A failed conditional write: a missing object under `If-Match` means the condition failed.
fn write_error<E>(key: &str, condition: &Condition, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match classify(key, err) {
        StoreError::NotFound { key } if matches!(condition, Condition::IfMatch(_)) => {
            StoreError::PreconditionFailed { key }
        }
        other => other,
    }
}

/// Map an SDK error to a [`StoreError`] (see the module docs).
fn classify<E>(key: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let key = key.to_owned();
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or("");
            let message = format!(
                "HTTP {status}{}{}{}",
                if code.is_empty() { "" } else { " " },
                code,
                ctx.err().message().map(|m| format!(": {m}")).unwrap_or_default()
            );
            classify_service(key, status, code, message)
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => StoreError::Unavailable {
            key,
            message: DisplayErrorContext(&err).to_string(),
        },
        SdkError::DispatchFailure(d) if d.is_user() => StoreError::Failed {
            key,
            message: DisplayErrorContext(&err).to_string(),
        },
        SdkError::DispatchFailure(_) => StoreError::Unavailable {
            key,
            message: DisplayErrorContext(&err).to_string(),
        },
        // ConstructionFailure (e.g. no region or credentials configured) and future variants.
        _ => StoreError::Failed {
            key,
            message: DisplayErrorContext(&err).to_string(),
        },
    }
}

fn classify_service(key: String, status: u16, code: &str, message: String) -> StoreError {
    match (status, code) {
        (412, _) | (_, "PreconditionFailed") | (409, "ConditionalRequestConflict") => {
            StoreError::PreconditionFailed { key }
        }
        (_, "NoSuchBucket" | "NoSuchUpload") => StoreError::Failed { key, message },
        (404, _) | (_, "NoSuchKey" | "NotFound") => StoreError::NotFound { key },
        (429 | 500..=599, _)
        | (
            _,
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeTooSkewed"
            | "InternalError"
            | "ServiceUnavailable"
            | "OperationAborted",
        ) => StoreError::Unavailable { key, message },
        _ => StoreError::Failed { key, message },
    }
}

/// An S3 timestamp as Unix milliseconds (before 1970 or unreadable: unknown).
fn unix_ms(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<u64> {
    t.and_then(|t| t.to_millis().ok()).and_then(|ms| u64::try_from(ms).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalised() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc-3"), "abc-3");
        assert_eq!(quoted("abc"), "\"abc\"");
        assert_eq!(quoted("\"abc\""), "\"abc\"");
    }

    #[test]
    fn service_errors_are_classified() {
        let c = |status, code: &str| classify_service("k".into(), status, code, String::new());
        assert!(matches!(
            c(412, "PreconditionFailed"),
            StoreError::PreconditionFailed { .. }
        ));
        assert!(matches!(
            c(409, "ConditionalRequestConflict"),
            StoreError::PreconditionFailed { .. }
        ));
        assert!(matches!(c(409, "BucketNotEmpty"), StoreError::Failed { .. }));
        assert!(matches!(c(404, "NoSuchKey"), StoreError::NotFound { .. }));
        assert!(matches!(c(404, ""), StoreError::NotFound { .. }));
        assert!(matches!(c(404, "NoSuchBucket"), StoreError::Failed { .. }));
        assert!(matches!(c(503, "SlowDown"), StoreError::Unavailable { .. }));
        assert!(matches!(c(500, "InternalError"), StoreError::Unavailable { .. }));
        assert!(matches!(c(400, "RequestTimeout"), StoreError::Unavailable { .. }));
        assert!(matches!(c(403, "AccessDenied"), StoreError::Failed { .. }));
        assert!(matches!(c(400, "InvalidRequest"), StoreError::Failed { .. }));
    }

    #[test]
    fn prefixes_are_normalised() {
        let client = Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .build(),
        );
        let s = S3Store::new(client.clone(), "b", "").unwrap();
        assert_eq!(s.prefix(), "");
        assert_eq!(s.s3_key("a/b").unwrap(), "a/b");
        let s = S3Store::new(client.clone(), "b", "env/prod/").unwrap();
        assert_eq!(s.prefix(), "env/prod/");
        assert_eq!(s.s3_key("a").unwrap(), "env/prod/a");
        assert!(S3Store::new(client.clone(), "b", "../x").is_err());
        assert!(S3Store::new(client.clone(), "", "x").is_err());
        assert!(s.s3_key("../x").is_err());
    }
}
