//! Finding LFS pointers among the objects a fetch brought, and only those.
//!
//! Why packs: every fetch (network or local path) lands as one new pack in the cache's
//! `objects/pack`. Listing the pack indexes before the fetch ([`PackSnapshot::take`]) and
//! reading only the indexes that appeared after it visits exactly the new objects — an idle or
//! incremental sync reads nothing or a few entries, never the history. Each new object's header
//! (type and size) is read without inflating it; only blobs under the pointer size limit are
//! read and parsed, so large blobs cost one header lookup.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::LfsError;
use super::pointer::{MAX_POINTER_SIZE, Pointer};

/// The pack indexes a repository had at one moment.
#[derive(Clone, Debug, Default)]
pub struct PackSnapshot(BTreeSet<PathBuf>);

impl PackSnapshot {
    /// The `.idx` files in `git_dir/objects/pack` now (none if the directory does not exist).
    pub fn take(git_dir: &Path) -> PackSnapshot {
        let dir = git_dir.join("objects").join("pack");
        let indexes = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .collect();
        PackSnapshot(indexes)
    }

    /// No pack at all (a new repository).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Indexes present in `now` but not in `self`.
    fn added<'a>(&'a self, now: &'a PackSnapshot) -> impl Iterator<Item = &'a PathBuf> + 'a {
        now.0.difference(&self.0)
    }
}

/// The LFS pointers among the blobs of the packs that appeared in `repo` since `before`, sorted
/// and without duplicates. Stops with [`LfsError::Interrupted`] when `interrupt` is set (a big
/// pack's scan takes seconds, and the sync function must stop before its time limit).
pub fn new_pointers(
    repo: &gix::Repository,
    before: &PackSnapshot,
    interrupt: &AtomicBool,
) -> Result<Vec<Pointer>, LfsError> {
    let now = PackSnapshot::take(repo.path());
    let mut found = BTreeSet::new();
    for idx in before.added(&now) {
        scan_index(repo, idx, &mut found, interrupt)?;
    }
    Ok(found.into_iter().collect())
}

fn scan_index(
    repo: &gix::Repository,
    idx: &Path,
    found: &mut BTreeSet<Pointer>,
    interrupt: &AtomicBool,
) -> Result<(), LfsError> {
    let local = |e: &dyn std::fmt::Display| LfsError::Local {
        path: idx.display().to_string(),
        message: e.to_string(),
    };
    let index = gix_pack::index::File::at(idx, repo.object_hash()).map_err(|e| local(&e))?;
    for (n, entry) in index.iter().enumerate() {
        if n % 1024 == 0 && interrupt.load(Ordering::Relaxed) {
            return Err(LfsError::Interrupted);
        }
        let header = repo.find_header(entry.oid).map_err(|e| local(&e))?;
        if header.kind() != gix::object::Kind::Blob || header.size() >= MAX_POINTER_SIZE as u64 {
            continue;
        }
        let blob = repo.find_object(entry.oid).map_err(|e| local(&e))?;
        if let Some(pointer) = Pointer::parse(&blob.data) {
            found.insert(pointer);
        }
    }
    Ok(())
}
