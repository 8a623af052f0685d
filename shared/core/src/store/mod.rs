//! Object storage behind one trait: S3 in AWS (`gitferry_aws::S3Store`, outside the core), a
//! local directory on one machine ([`fs`]), and a fault-injecting wrapper for tests ([`fault`]).
//!
//! The cache (`crate::cache`) needs exactly what S3 offers and nothing more: whole-object reads
//! with an ETag, conditional writes (`If-Match` the ETag read, or `If-None-Match: *` to create),
//! deletes, prefix listing, and streamed transfers of large objects (packs) to and from local
//! files. Every adapter gives the same semantics, so the same test-suite runs over each.
//!
//! Keys are `/`-separated relative paths (`repos/{repo}/manifest.json`); adapters refuse keys
//! that are empty, absolute, or contain `..` / `.` components or a NUL.

use std::path::Path;

pub mod fault;
pub mod fs;

/// A whole object and its ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub body: Vec<u8>,
    pub etag: String,
}

/// What a listing or a download reports about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// When the object was last written, Unix milliseconds, where the store says (listings).
    /// Garbage collection uses it to leave young objects alone: they may belong to a commit
    /// still in flight.
    pub modified_ms: Option<u64>,
}

/// When a write may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditionally (last writer wins).
    Always,
    /// Only if the current object's ETag is this one (`If-Match`).
    IfMatch(String),
    /// Only if no object exists under the key (`If-None-Match: *`).
    IfAbsent,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: not found")]
    NotFound { key: String },
    /// The condition of a write did not hold: someone else wrote first.
    #[error("{key}: changed concurrently (precondition failed)")]
    PreconditionFailed { key: String },
    /// Worth retrying: network trouble, throttling, 5xx, timeouts.
    #[error("{key}: store unavailable ({message})")]
    Unavailable { key: String, message: String },
    /// Retrying cannot help: access denied, missing bucket, invalid key, local I/O error.
    #[error("{key}: {message}")]
    Failed { key: String, message: String },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::PreconditionFailed { .. }
        )
    }
}

/// An object store with S3's semantics. All methods are safe to call concurrently.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Read a whole (small) object. `Ok(None)` if there is none.
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError>;

    /// Write a whole (small) object if `condition` holds; returns the new ETag.
    async fn put(&self, key: &str, body: Vec<u8>, condition: Condition) -> Result<String, StoreError>;

    /// Delete an object. Deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Stream an object into the local file `dest` (created or truncated) without holding it in
    /// memory. `NotFound` if there is none.
    async fn download(&self, key: &str, dest: &Path) -> Result<ObjectInfo, StoreError>;

    /// Stream the local file `src` into an object (multipart for large files on S3) if
    /// `condition` holds; returns the new ETag.
    async fn upload(&self, key: &str, src: &Path, condition: Condition) -> Result<String, StoreError>;
}

/// Check a key: relative, `/`-separated, no empty, `.` or `..` components, no NUL or `\`.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::Failed {
        key: key.to_owned(),
        message: format!("invalid key: {why}"),
    };
    if key.is_empty() || key.len() > 1024 {
        return Err(bad("empty or longer than 1024 bytes"));
    }
    if key.starts_with('/') || key.contains(['\0', '\\']) {
        return Err(bad("absolute, or contains NUL or backslash"));
    }
    if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad("empty, '.' or '..' path component"));
    }
    Ok(())
}
