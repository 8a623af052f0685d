//! Moving one object: download into the content-addressed cache, upload from it, `verify`.
//!
//! Streamed end to end: a download goes from the socket through SHA-256 into a temporary file
//! beside its final place, and is renamed into `{root}/{oid[0:2]}/{oid[2:4]}/{oid}` only once
//! its size and digest are the pointer's — so the cache never holds a wrong or partial object,
//! and a restarted sync finds every object that completed (the per-object checkpoint). An
//! upload re-reads the cached file through SHA-256 first (the cache may sit on a disk or a
//! store that can rot), then sends the file as the request body. Memory stays at the copy
//! buffers, whatever the object's size.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};

use super::batch::{Action, MEDIA_TYPE, with_retries};
use super::endpoint::Endpoint;
use super::pointer::Pointer;
use super::{LfsError, network_error};

/// LFS objects on local disk, by oid (`{root}/ab/cd/{oid}`, the layout of git-lfs and of the
/// store's `lfs/` keys).
#[derive(Clone, Debug)]
pub struct ObjectCache {
    root: PathBuf,
}

impl ObjectCache {
    pub fn new(root: impl Into<PathBuf>) -> ObjectCache {
        ObjectCache { root: root.into() }
    }

    /// Where `oid` is kept (the oid is validated by [`Pointer::parse`] before it gets here).
    pub fn path(&self, oid: &str) -> PathBuf {
        self.root.join(&oid[0..2]).join(&oid[2..4]).join(oid)
    }

    /// Whether the object is cached (complete: only verified objects are ever renamed in).
    pub fn has(&self, pointer: &Pointer) -> bool {
        std::fs::metadata(self.path(&pointer.oid)).is_ok_and(|m| m.len() == pointer.size)
    }

    /// Where `oid` goes, and a temporary file beside it to fill and verify before it is
    /// renamed there (so the cache never holds a partial object).
    fn temp_for(&self, oid: &str) -> Result<(PathBuf, tempfile::NamedTempFile), LfsError> {
        let dest = self.path(oid);
        let dir = dest.parent().expect("oid path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| self.local(dir, e))?;
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.local(dir, e))?;
        Ok((dest, tmp))
    }

    fn local(&self, path: &Path, e: impl std::fmt::Display) -> LfsError {
        LfsError::Local {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Download `pointer` with `action` into `cache`, verified.
pub fn download(
    http: &reqwest::blocking::Client,
    endpoint: &Endpoint,
    action: &Action,
    cache: &ObjectCache,
    pointer: &Pointer,
    interrupt: &AtomicBool,
) -> Result<(), LfsError> {
    let mut response = with_retries(endpoint, interrupt, || {
        with_headers(http.get(&action.href), action).send()
    })?;
    let (dest, mut tmp) = cache.temp_for(&pointer.oid)?;
    let mut hashing = Hashing::new(tmp.as_file_mut());
    // At most one byte more than announced: enough to tell an oversized body.
    io::copy(&mut (&mut response).take(pointer.size + 1), &mut hashing).map_err(|e| network_error(endpoint, &e))?;
    let (size, digest) = hashing.finish();
    check(pointer, size, &digest, "downloaded")?;
    tmp.as_file().sync_all().map_err(|e| cache.local(&dest, e))?;
    tmp.persist(&dest).map_err(|e| cache.local(&dest, e.error))?;
    Ok(())
}

/// Bring `pointer` into `cache` from a second tier (the sync service's object store), verified
/// as a download is. Returns whether the tier had it, intact.
pub fn restore(cache: &ObjectCache, tier: &dyn super::ObjectTier, pointer: &Pointer) -> Result<bool, LfsError> {
    let (dest, tmp) = cache.temp_for(&pointer.oid)?;
    if !tier.fetch(pointer, tmp.path())? {
        return Ok(false);
    }
    let (size, digest) = hash_file(tmp.path()).map_err(|e| cache.local(tmp.path(), e))?;
    if check(pointer, size, &digest, "restored").is_err() {
        tracing::warn!(oid = %pointer.oid, "LFS object in the store does not match its pointer: downloading it again");
        return Ok(false);
    }
    tmp.persist(&dest).map_err(|e| cache.local(&dest, e.error))?;
    Ok(true)
}

/// Upload the cached `pointer` with `action`, after checking the cached file.
pub fn upload(
    http: &reqwest::blocking::Client,
    endpoint: &Endpoint,
    action: &Action,
    cache: &ObjectCache,
    pointer: &Pointer,
    interrupt: &AtomicBool,
) -> Result<(), LfsError> {
    let path = cache.path(&pointer.oid);
    let (size, digest) = hash_file(&path).map_err(|e| cache.local(&path, e))?;
    check(pointer, size, &digest, "cached")?;
    with_retries(endpoint, interrupt, || {
        // Reopened for each attempt; a file gone since it was hashed sends nothing, which the
        // server refuses as the wrong size.
        let body = File::open(&path)
            .map(|f| reqwest::blocking::Body::sized(f, pointer.size))
            .unwrap_or_else(|_| reqwest::blocking::Body::from(Vec::new()));
        with_headers(http.put(&action.href), action)
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
    })?;
    Ok(())
}

/// Tell the server an upload is complete (`verify` action): it checks and may refuse.
pub fn verify(
    http: &reqwest::blocking::Client,
    endpoint: &Endpoint,
    action: &Action,
    pointer: &Pointer,
    interrupt: &AtomicBool,
) -> Result<(), LfsError> {
    let body = serde_json::to_vec(pointer).expect("a pointer serializes");
    with_retries(endpoint, interrupt, || {
        with_headers(http.post(&action.href), action)
            .header("Accept", MEDIA_TYPE)
            .header("Content-Type", MEDIA_TYPE)
            .body(body.clone())
            .send()
    })?;
    Ok(())
}

fn with_headers(mut request: reqwest::blocking::RequestBuilder, action: &Action) -> reqwest::blocking::RequestBuilder {
    for (name, value) in &action.header {
        request = request.header(name.as_str(), value.as_str());
    }
    request
}

fn check(pointer: &Pointer, size: u64, digest: &str, what: &str) -> Result<(), LfsError> {
    if size == pointer.size && digest == pointer.oid {
        return Ok(());
    }
    Err(LfsError::Corrupt {
        oid: pointer.oid.clone(),
        message: format!(
            "the {what} object has {size} bytes and SHA-256 {digest}, not {} bytes",
            pointer.size
        ),
    })
}

/// Size and SHA-256 (hex) of a file, read in a stream.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut hashing = Hashing::new(io::sink());
    io::copy(&mut File::open(path)?, &mut hashing)?;
    Ok(hashing.finish())
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.sha.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
