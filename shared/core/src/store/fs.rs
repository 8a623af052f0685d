//! [`FsStore`]: an [`ObjectStore`] on a local directory, with S3's semantics, for running
//! gitferry on one machine (and as the fast half of the store test-suite).
//!
//! Layout: the object `a/b/c` is the file `ROOT/a/b/c`. Everything the store itself keeps next
//! to the objects has a name starting with `.gitferry-` ([`RESERVED_PREFIX`]), so it can never be
//! mistaken for an object: keys with such a component are refused, and listings skip such
//! entries. That covers
//! - per-key lock files, `ROOT/.gitferry-locks/{sha256(key)}.lock`: flat and hashed, so a lock
//!   never needs directories of its own and two keys never share one. They are never deleted:
//!   removing a lock file while another process has it open would let a third process lock a
//!   fresh file with the same name, and the two would no longer exclude each other;
//! - temporary files, `.gitferry-tmp-{uuid}`, in the directory of the object being written.
//!
//! **Writes** (`put`, `upload`): the body is first streamed into a temporary file in the target's
//! directory (hashing as it goes) and fsynced, *without* holding any lock, so a slow upload does
//! not block other writers of the key. Then, under the key's exclusive lock, the condition is
//! checked against the current object and the temporary file is renamed over the target, and the
//! directory is fsynced. `rename(2)` is atomic, so a reader sees the old object or the new one,
//! never a mix, and a crash at any point leaves either the old object or the new one (plus, at
//! worst, an orphaned temporary file that is never listed). `delete` takes the same lock, so a
//! conditional write can never overwrite an object deleted or replaced after its check.
//!
//! **Locks** are `flock(2)` locks through [`std::fs::File::lock`]: they exclude other threads
//! (each call opens its own file description) and other processes alike, and the kernel drops
//! them when a holder dies, so a crashed writer never leaves a key locked. Reads take no lock:
//! they open whichever file is there and hash what they read, so the ETag always matches the
//! body returned.
//!
//! **ETags** are the lowercase hex SHA-256 of the content, computed while streaming. A listing
//! needs the ETag of every object, and hashing every pack on each listing would read gigabytes,
//! so ETags are remembered in memory per path together with the file's identity (device, inode,
//! size, mtime and ctime in nanoseconds). Every write replaces the file by a new inode, so a
//! change by this process or another one is always noticed and the file is hashed again.
//!
//! **Limits** compared with S3: a key cannot be both an object and a "directory" of other keys
//! (`a` and `a/b`): the second write fails with [`StoreError::Failed`]. Directories emptied by
//! deletes are left in place (removing them would race with writers creating files in them); an
//! empty directory is invisible to reads and listings, but still stops an object of its own name
//! (`a` after `a/b` was deleted). Temporary files orphaned by a crash are not swept up: they are
//! invisible, and safe to delete by hand when no writer runs.
//!
//! `download` writes straight into its destination (as the S3 adapter does); after a failure the
//! destination may hold part of the object, and callers verify or discard it.
//!
//! Blocking file I/O runs on tokio's blocking pool ([`tokio::task::spawn_blocking`]); a call
//! whose future is dropped still runs to completion, as an S3 request already sent would.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{Condition, Object, ObjectInfo, ObjectStore, StoreError, validate_key};

/// Names starting with this are the store's own (locks, temporary files), never objects.
pub const RESERVED_PREFIX: &str = ".gitferry-";
const LOCK_DIR: &str = ".gitferry-locks";
const TMP_PREFIX: &str = ".gitferry-tmp-";
/// Read/write buffer for streamed transfers.
const CHUNK: usize = 256 * 1024;
/// Past this many remembered ETags the memo is simply cleared (it is only a cache).
const MAX_MEMO: usize = 100_000;

/// Check a listing prefix: empty (everything), or a key prefix, optionally ending with `/`.
///
/// The part before a trailing `/` must itself pass [`validate_key`], so `repos/`, `repos/a` and
/// `repos/a/packs/` are accepted, and `/x`, `../`, `a//` are refused. (It lives here rather than
/// next to `validate_key` only because `mod.rs` holds the fixed trait.)
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix)).map_err(|e| match e {
        StoreError::Failed { message, .. } => StoreError::Failed {
            key: prefix.to_owned(),
            message: message.replace("invalid key", "invalid prefix"),
        },
        other => other,
    })
}

/// An object store on a local directory. Cheap to clone; clones share the ETag memo.
#[derive(Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStore").field("root", &self.inner.root).finish()
    }
}

struct Inner {
    root: PathBuf,
    /// path → (identity of the file hashed, its ETag).
    memo: Mutex<HashMap<PathBuf, (FileId, String)>>,
}

/// What identifies one version of a file: every write creates a new inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    #[cfg(unix)]
    fn of(meta: &fs::Metadata) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }

    #[cfg(not(unix))]
    fn of(_meta: &fs::Metadata) -> Option<FileId> {
        None
    }
}

impl FsStore {
    /// A store rooted at `root`. The directory is created on the first write; until then the
    /// store is empty.
    pub fn new(root: PathBuf) -> FsStore {
        let root = if root.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            root
        };
        FsStore {
            inner: Arc::new(Inner {
                root,
                memo: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The lock file guarding `key`. Another program that wants to write objects in this
    /// directory while gitferry runs must hold an exclusive `flock` on it around its
    /// check-and-rename, as [`FsStore`] does.
    pub fn lock_path(&self, key: &str) -> PathBuf {
        self.inner.lock_path(key)
    }

    async fn blocking<T, F>(&self, key: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Failed {
                key: key.to_owned(),
                message: format!("local store task failed: {e}"),
            })?
    }
}

fn failed(key: &str, what: impl std::fmt::Display, e: io::Error) -> StoreError {
    StoreError::Failed {
        key: key.to_owned(),
        message: format!("{what}: {e}"),
    }
}

/// Open the object file at `path` with its metadata; `None` if there is no such file (or it is
/// not a regular file).
fn open_object(key: &str, path: &Path) -> Result<Option<(File, fs::Metadata)>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(failed(key, format_args!("opening {}", path.display()), e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| failed(key, format_args!("reading {}", path.display()), e))?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// When the file was last written, Unix milliseconds (unknown if the platform cannot say).
fn modified_ms(meta: &fs::Metadata) -> Option<u64> {
    let since_epoch = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(since_epoch.as_millis() as u64)
}

/// Errors that mean "there is no object at this path": the file, or a directory on the way,
/// is missing, or a path component is a file where a directory would be.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory
    )
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// fsync a directory, so that entries created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Copy `from` into `to` in chunks, hashing; returns (hex SHA-256, bytes copied). Read errors
/// and write errors are told apart so they can name the right file.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> Result<(String, u64), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// A temporary file that is removed unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(dir: &Path) -> io::Result<TempFile> {
        let path = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file: Some(file) })
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("temp file open until finished")
    }

    /// Flush to disk and close, keeping the path for the rename.
    fn finish(&mut self) -> io::Result<()> {
        let file = self.file.take().expect("temp file finished once");
        file.sync_all()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Inner {
    /// The file of an object, or `Failed` for an invalid or reserved key.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        if key.split('/').any(|c| c.starts_with(RESERVED_PREFIX)) {
            return Err(StoreError::Failed {
                key: key.to_owned(),
                message: format!(
                    "invalid key: path components starting with {RESERVED_PREFIX:?} are reserved by the local store"
                ),
            });
        }
        Ok(self.root.join(key))
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root
            .join(LOCK_DIR)
            .join(format!("{}.lock", hex(&Sha256::digest(key.as_bytes()))))
    }

    /// Take the exclusive lock of `key`; it is released when the returned file is dropped (or
    /// when the process dies).
    fn lock(&self, key: &str) -> Result<File, StoreError> {
        let path = self.lock_path(key);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let dir = path.parent().expect("lock dir");
                self.ensure_dir(key, dir)?;
                open().map_err(|e| failed(key, format_args!("creating lock {}", path.display()), e))?
            }
            Err(e) => {
                return Err(failed(key, format_args!("opening lock {}", path.display()), e));
            }
        };
        file.lock()
            .map_err(|e| failed(key, format_args!("locking {}", path.display()), e))?;
        Ok(file)
    }

    /// Create `dir` (under the root) if missing, fsyncing each parent that gained an entry.
    fn ensure_dir(&self, key: &str, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_owned());
            match d.parent() {
                Some(p) if !p.as_os_str().is_empty() => d = p,
                _ => break,
            }
        }
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists && d.is_dir() => continue,
                Err(e) => {
                    let what = if e.kind() == ErrorKind::AlreadyExists || e.kind() == ErrorKind::NotADirectory {
                        "the key conflicts with an existing object (a key cannot also be a prefix \
                         directory of other keys in the local store)"
                            .to_string()
                    } else {
                        format!("creating directory {}", d.display())
                    };
                    return Err(failed(key, what, e));
                }
            }
            let parent = match d.parent() {
                Some(p) if p.as_os_str().is_empty() => Path::new("."), // relative root
                Some(p) => p,
                None => continue,
            };
            sync_dir(parent).map_err(|e| failed(key, format_args!("syncing {}", parent.display()), e))?;
        }
        Ok(())
    }

    /// The current object at `path`: its ETag, size and modification time (Unix ms), or `None`
    /// if there is none. Uses the memo when the file has not changed since it was last hashed.
    fn current(&self, key: &str, path: &Path) -> Result<Option<(String, u64, Option<u64>)>, StoreError> {
        let Some((mut file, meta)) = open_object(key, path)? else {
            return Ok(None);
        };
        let modified = modified_ms(&meta);
        let id = FileId::of(&meta);
        if let Some(id) = id
            && let Some((known, etag)) = self.memo.lock().expect("memo").get(path)
            && *known == id
        {
            return Ok(Some((etag.clone(), meta.len(), modified)));
        }
        let (etag, size) = match copy_hashing(&mut file, &mut io::sink()) {
            Ok(r) => r,
            Err(CopyError::Read(e) | CopyError::Write(e)) if is_absent(&e) => return Ok(None),
            Err(CopyError::Read(e) | CopyError::Write(e)) => {
                return Err(failed(key, format_args!("reading {}", path.display()), e));
            }
        };
        self.remember(path, id, &etag);
        Ok(Some((etag, size, modified)))
    }

    fn remember(&self, path: &Path, id: Option<FileId>, etag: &str) {
        let Some(id) = id else { return };
        let mut memo = self.memo.lock().expect("memo");
        if memo.len() >= MAX_MEMO {
            memo.clear();
        }
        memo.insert(path.to_owned(), (id, etag.to_owned()));
    }

    fn forget(&self, path: &Path) {
        self.memo.lock().expect("memo").remove(path);
    }

    fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let path = self.path(key)?;
        let Some((mut file, meta)) = open_object(key, &path)? else {
            return Ok(None);
        };
        let mut body = Vec::with_capacity(meta.len() as usize);
        match file.read_to_end(&mut body) {
            Ok(_) => {}
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(failed(key, format_args!("reading {}", path.display()), e)),
        }
        let etag = hex(&Sha256::digest(&body));
        self.remember(&path, FileId::of(&meta), &etag);
        Ok(Some(Object { body, etag }))
    }

    /// Stream `src` into a fresh, fsynced temporary file next to `path`; returns it with the
    /// content's ETag. No lock is held.
    fn stage(
        &self,
        key: &str,
        path: &Path,
        src: &mut impl Read,
        src_name: &dyn std::fmt::Display,
    ) -> Result<(TempFile, String), StoreError> {
        let dir = path.parent().expect("object paths are under the root");
        self.ensure_dir(key, dir)?;
        let mut temp = TempFile::create(dir)
            .map_err(|e| failed(key, format_args!("creating a temporary file in {}", dir.display()), e))?;
        let (etag, _) = copy_hashing(src, temp.file()).map_err(|e| match e {
            CopyError::Read(e) => failed(key, format_args!("reading {src_name}"), e),
            CopyError::Write(e) => failed(key, format_args!("writing {}", temp.path.display()), e),
        })?;
        temp.finish()
            .map_err(|e| failed(key, format_args!("syncing {}", temp.path.display()), e))?;
        Ok((temp, etag))
    }

    /// Under the key's lock: check `condition`, rename the staged file over the object, sync
    /// the directory.
    fn commit(
        &self,
        key: &str,
        path: &Path,
        mut temp: TempFile,
        etag: String,
        condition: &Condition,
    ) -> Result<String, StoreError> {
        let _lock = self.lock(key)?;
        let holds = match (condition, self.current(key, path)?) {
            (Condition::Always, _) => true,
            (Condition::IfAbsent, current) => current.is_none(),
            (Condition::IfMatch(expected), Some((etag, ..))) => etag == *expected,
            (Condition::IfMatch(_), None) => false,
        };
        if !holds {
            return Err(StoreError::PreconditionFailed { key: key.to_owned() });
        }
        fs::rename(&temp.path, path).map_err(|e| {
            let what = if e.kind() == ErrorKind::IsADirectory || e.kind() == ErrorKind::DirectoryNotEmpty {
                "the key conflicts with a prefix directory of other keys in the local store".to_string()
            } else {
                format!("renaming into {}", path.display())
            };
            failed(key, what, e)
        })?;
        temp.path = PathBuf::new(); // renamed: nothing left to remove
        let dir = path.parent().expect("object paths are under the root");
        sync_dir(dir).map_err(|e| failed(key, format_args!("syncing {}", dir.display()), e))?;
        let id = fs::metadata(path).ok().and_then(|m| FileId::of(&m));
        self.remember(path, id, &etag);
        Ok(etag)
    }

    fn put(&self, key: &str, body: &[u8], condition: &Condition) -> Result<String, StoreError> {
        let path = self.path(key)?;
        let (temp, etag) = self.stage(key, &path, &mut &body[..], &"the request body")?;
        self.commit(key, &path, temp, etag, condition)
    }

    fn upload(&self, key: &str, src: &Path, condition: &Condition) -> Result<String, StoreError> {
        let path = self.path(key)?;
        let mut file = File::open(src).map_err(|e| failed(key, format_args!("opening {}", src.display()), e))?;
        let (temp, etag) = self.stage(key, &path, &mut file, &src.display())?;
        drop(file);
        self.commit(key, &path, temp, etag, condition)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let _lock = self.lock(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(failed(key, format_args!("removing {}", path.display()), e)),
        }
        self.forget(&path);
        let dir = path.parent().expect("object paths are under the root");
        sync_dir(dir).map_err(|e| failed(key, format_args!("syncing {}", dir.display()), e))
    }

    fn download(&self, key: &str, dest: &Path) -> Result<ObjectInfo, StoreError> {
        let path = self.path(key)?;
        let Some((mut file, meta)) = open_object(key, &path)? else {
            return Err(StoreError::NotFound { key: key.to_owned() });
        };
        let mut out = File::create(dest).map_err(|e| failed(key, format_args!("creating {}", dest.display()), e))?;
        let (etag, size) = copy_hashing(&mut file, &mut out).map_err(|e| match e {
            CopyError::Read(e) => failed(key, format_args!("reading {}", path.display()), e),
            CopyError::Write(e) => failed(key, format_args!("writing {}", dest.display()), e),
        })?;
        out.flush()
            .map_err(|e| failed(key, format_args!("writing {}", dest.display()), e))?;
        self.remember(&path, FileId::of(&meta), &etag);
        Ok(ObjectInfo {
            key: key.to_owned(),
            size,
            etag,
            modified_ms: modified_ms(&meta),
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_prefix(prefix)?;
        // Only the directory named by the prefix's complete components needs walking.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        let mut stack = vec![(self.root.join(base), base.to_owned())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(it) => it,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(failed(prefix, format_args!("listing {}", dir.display()), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| failed(prefix, format_args!("listing {}", dir.display()), e))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // not UTF-8: cannot be a key
                };
                if name.starts_with(RESERVED_PREFIX) {
                    continue; // locks, temporary files
                }
                let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    // Descend only where keys can still match the prefix.
                    let as_dir = format!("{key}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        stack.push((entry.path(), key));
                    }
                } else if kind.is_file() && key.starts_with(prefix) && validate_key(&key).is_ok() {
                    let path = entry.path();
                    // Deleted since readdir: not listed.
                    if let Some((etag, size, modified_ms)) = self.current(&key, &path)? {
                        out.push(ObjectInfo {
                            key,
                            size,
                            etag,
                            modified_ms,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FsStore {
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let k = key.to_owned();
        self.blocking(key, move |s| s.get(&k)).await
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: Condition) -> Result<String, StoreError> {
        let k = key.to_owned();
        self.blocking(key, move |s| s.put(&k, &body, &condition)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = key.to_owned();
        self.blocking(key, move |s| s.delete(&k)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let p = prefix.to_owned();
        self.blocking(prefix, move |s| s.list(&p)).await
    }

    async fn download(&self, key: &str, dest: &Path) -> Result<ObjectInfo, StoreError> {
        let (k, dest) = (key.to_owned(), dest.to_owned());
        self.blocking(key, move |s| s.download(&k, &dest)).await
    }

    async fn upload(&self, key: &str, src: &Path, condition: Condition) -> Result<String, StoreError> {
        let (k, src) = (key.to_owned(), src.to_owned());
        self.blocking(key, move |s| s.upload(&k, &src, &condition)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["", "repos/", "repos", "repos/a", "repos/a/packs/"] {
            assert!(validate_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["/", "/x", "../", "a//", "a//b", "./a", "a/../b/"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reserved_keys_are_refused() {
        let s = Inner {
            root: PathBuf::from("/nonexistent"),
            memo: Mutex::new(HashMap::new()),
        };
        assert!(s.path(".gitferry-locks/x").is_err());
        assert!(s.path("a/.gitferry-tmp-1").is_err());
        assert!(s.path("a/.gitignore").is_ok());
    }

    #[test]
    fn hex_digest() {
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
