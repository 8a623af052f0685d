//! `--store` and `--queue` flags → adapters. Embedded defaults: a local directory and the
//! in-process queue (saved in that store); `s3://bucket/prefix` and `sqs://URL` select the AWS
//! adapters (credentials, region and `AWS_ENDPOINT_URL` from the standard AWS chain).

use std::path::PathBuf;
use std::sync::Arc;

use gitferry_core::queue::Queue;
use gitferry_core::queue::persistent::PersistentQueue;
use gitferry_core::store::ObjectStore;
use gitferry_core::store::fs::FsStore;

/// The default store: `./.gitferry` in the current directory.
pub const DEFAULT_STORE: &str = ".gitferry";

pub async fn store(spec: &str) -> Result<Arc<dyn ObjectStore>, String> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("--store {spec}: missing bucket (s3://BUCKET/PREFIX)"));
        }
        return s3(bucket, prefix.trim_end_matches('/'))
            .await
            .map_err(|e| format!("--store {spec}: {e}"));
    }
    let root = PathBuf::from(spec);
    std::fs::create_dir_all(&root).map_err(|e| format!("--store {spec}: {e}"))?;
    Ok(Arc::new(FsStore::new(root)))
}

pub async fn queue(spec: &str, store: Arc<dyn ObjectStore>) -> Result<Arc<dyn Queue>, String> {
    if spec == "memory" {
        let q = PersistentQueue::open(store, 10)
            .await
            .map_err(|e| format!("--queue memory: {e}"))?;
        return Ok(Arc::new(q));
    }
    if let Some(rest) = spec.strip_prefix("sqs://") {
        let url = if rest.starts_with("http://") || rest.starts_with("https://") {
            rest.to_owned()
        } else {
            format!("https://{rest}")
        };
        return sqs(url).await.map_err(|e| format!("--queue {spec}: {e}"));
    }
    Err(format!("--queue {spec}: use `memory` or sqs://QUEUE_URL"))
}

#[cfg(feature = "aws")]
async fn s3(bucket: &str, prefix: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let store = gitferry_aws::S3Store::from_env(bucket, prefix)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

#[cfg(feature = "aws")]
async fn sqs(url: String) -> Result<Arc<dyn Queue>, String> {
    Ok(Arc::new(gitferry_aws::SqsQueue::from_env(url).await))
}

/// What a binary built without the `aws` feature says to an AWS address.
#[cfg(not(feature = "aws"))]
const NO_AWS: &str = "this gitferry was built without AWS support (cargo feature `aws`); \
                      rebuild without --no-default-features";

#[cfg(not(feature = "aws"))]
async fn s3(_bucket: &str, _prefix: &str) -> Result<Arc<dyn ObjectStore>, String> {
    Err(NO_AWS.into())
}

#[cfg(not(feature = "aws"))]
async fn sqs(_url: String) -> Result<Arc<dyn Queue>, String> {
    Err(NO_AWS.into())
}

/// Where local bare repositories go: inside a local store, or a temp directory for S3.
pub fn default_work_dir(store: &str) -> PathBuf {
    if store.starts_with("s3://") {
        std::env::temp_dir().join("gitferry")
    } else {
        // `.gitferry-` names are reserved by the local store: never listed as objects.
        PathBuf::from(store).join(".gitferry-work")
    }
}
