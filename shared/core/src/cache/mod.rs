//! Bare repositories cached in an object store (S3 on AWS, a directory locally).
//!
//! A sync Lambda starts with an empty `/tmp`; it gets the repository back from the store, adds
//! only what it fetched, and can never roll back or corrupt another worker's state. Per repo,
//! under `repos/{repo}/`:
//!
//! * `manifest.json` — the generation, the packs that make up the repository, the source's refs,
//!   the overwritten-ref backups, and per target the refs last pushed. Written only with a
//!   conditional put on the ETag that was read (`If-None-Match: *` when creating), so a stale
//!   worker gets [`CacheError::Conflict`] instead of overwriting newer state;
//! * `packs/{checksum}.pack` + `.idx` — immutable and content-addressed: a sync uploads only the
//!   pack it fetched, and retrying an upload is harmless;
//! * `lease.json` — see [`lease`]; `status.json` — see `crate::status`.
//!
//! The local copy (`{work_dir}/{repo}.git`) carries a marker with the generation and ETag it
//! was restored to or committed as; when it matches the manifest (a warm container), nothing is
//! downloaded. The marker is removed before anything changes the local repository and written
//! back only after a successful commit, so a failed sync never leaves a copy that claims to be
//! current. Downloaded packs are verified (pack and index checksums, and the name) before they
//! are used; a corrupt or missing pack is reported as [`CacheError::Corrupt`], on which the
//! caller rebuilds from the source rather than crash-looping.
//!
//! A commit skips the upload of a pack only if the manifest it started from names it *and* this
//! local copy knows the stored object is intact: it downloaded and verified it, or uploaded it
//! itself (the list is kept next to the marker, `gitferry-stored-packs`). Every other pack is
//! uploaded (unconditionally: content-addressed, so an overwrite is the same bytes). Without
//! this, a rebuild from the source after `Corrupt` that fetched a pack of the same name as the
//! damaged one (the source had not changed) would trust the damaged object, and every cold
//! restore would find it corrupt again.
//!
//! Packs accumulate one per changing sync; past [`MAX_PACKS`] they are compacted into one, the
//! manifest switches to it, and only then are the old pack objects deleted. What is left behind
//! anyway (a race's loser uploaded its pack and then got `Conflict`; a delete failed) is found by
//! [`RepoCache::collect_garbage`]: pack objects no manifest names, older than [`ORPHAN_AGE`].

pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::git::refs::RefState;
use crate::git::repo::{self, LocalUpdate, Peel};
use crate::git::{self, RefPatterns};
use crate::store::{Condition, ObjectStore, StoreError};

/// Compact when a repository has more packs than this.
pub const MAX_PACKS: usize = 16;
/// Collect orphaned pack objects after a compaction, and otherwise every this many generations.
pub const GC_EVERY: u64 = 16;
/// Pack objects the manifest does not name are deleted only when at least this old: a younger
/// one may belong to a commit still in flight (a worker whose lease ran out, racing to a
/// conditional manifest write it will lose — or, if ours lost, win). Far longer than any sync.
pub const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
const MARKER: &str = "gitferry-state";
/// The packs this local copy knows are intact in the store (one name a line).
const STORED: &str = "gitferry-stored-packs";

/// Store keys of a repository (the layout is documented in [`crate::keys`]).
pub use crate::keys;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another worker committed a newer generation first: reload and retry.
    #[error("cache of {repo} was updated concurrently by another worker")]
    Conflict { repo: String },
    #[error("repository is being synced by {owner} (lease until {expires_at})")]
    LeaseHeld { owner: String, expires_at: u64 },
    #[error("lease lost to another worker; stopped before pushing")]
    LeaseLost,
    #[error("cache is corrupt: {what}")]
    Corrupt { what: String },
    #[error("local cache: {0}")]
    Local(String),
}

impl CacheError {
    pub fn is_transient(&self) -> bool {
        match self {
            CacheError::Store(e) => e.is_transient(),
            CacheError::Conflict { .. } | CacheError::LeaseHeld { .. } | CacheError::LeaseLost => true,
            // A rebuild from the source fixes it; the caller does that, then it is worth a retry.
            CacheError::Corrupt { .. } => true,
            CacheError::Local(_) => false,
        }
    }
}

/// One pack of the repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// The pack's checksum (hex): its name locally and in the store.
    pub name: String,
    pub bytes: u64,
    pub objects: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    pub packs: Vec<PackRef>,
    /// The source's refs (selected by the repo's patterns) as of the last sync.
    pub source: RefState,
    /// `refs/gitferry/overwritten/...` backups of tips the source force-pushed or deleted.
    #[serde(default)]
    pub backups: BTreeMap<String, String>,
    /// Per target, by its URL (`TargetConfig::state_key`): the refs we last know it has (what we
    /// pushed and it accepted).
    #[serde(default)]
    pub targets: BTreeMap<String, BTreeMap<String, String>>,
    /// Set while a mirror proceeds in batches (a first mirror, or one that did not fit in a
    /// function's time limit): refs per batch to resume with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_refs: Option<usize>,
    /// LFS pointers among the packs committed here whose objects have not reached every
    /// target yet: recorded with the packs that brought them, so a sync stopped or failed
    /// after its commit still transfers them next time — on any machine — although its fetch
    /// then brings nothing to scan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lfs_pending: Vec<git::lfs::Pointer>,
    pub updated_at: u64,
}

impl Manifest {
    /// Every one of these targets (by `TargetConfig::state_key`) is recorded with exactly the
    /// source's refs: the last sync mirrored the source everywhere.
    pub fn mirrored_to<'a>(&self, mut targets: impl Iterator<Item = &'a crate::config::TargetConfig>) -> bool {
        let wanted: BTreeMap<String, String> = self
            .source
            .ids()
            .into_iter()
            .map(|(n, id)| (n, id.to_string()))
            .collect();
        targets.all(|t| self.targets.get(&t.state_key()) == Some(&wanted))
    }

    /// Same content, ignoring generation and time.
    fn same_state(&self, other: &Manifest) -> bool {
        let packs = |m: &Manifest| m.packs.iter().map(|p| p.name.clone()).collect::<BTreeSet<_>>();
        packs(self) == packs(other)
            && self.source == other.source
            && self.backups == other.backups
            && self.targets == other.targets
            && self.batch_refs == other.batch_refs
            && self.lfs_pending == other.lfs_pending
    }
}

/// A manifest and the ETag it was read with (`None`: no manifest yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub manifest: Manifest,
    pub etag: Option<String>,
    /// The stored manifest could not be read (why): this snapshot is empty, and the next
    /// commit replaces the unreadable object (conditional on its ETag) — the cache heals by a
    /// rebuild from the source instead of failing every sync.
    pub unreadable: Option<String>,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// The local copy was already at the manifest's generation: nothing downloaded.
    pub warm: bool,
    pub packs_downloaded: usize,
    pub bytes_downloaded: u64,
}

/// The state to record after a sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextState {
    pub source: RefState,
    pub backups: BTreeMap<String, String>,
    pub targets: BTreeMap<String, BTreeMap<String, String>>,
    /// See [`Manifest::batch_refs`].
    pub batch_refs: Option<usize>,
    /// See [`Manifest::lfs_pending`].
    pub lfs_pending: Vec<git::lfs::Pointer>,
}

/// What a commit did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// False when nothing changed: no store write at all.
    pub written: bool,
    pub packs_uploaded: usize,
    pub bytes_uploaded: u64,
    pub packs_deleted: usize,
    pub snapshot: Snapshot,
}

/// One repository's cache: the store side and the local bare copy.
#[derive(Clone, Debug)]
pub struct RepoCache {
    store: Arc<dyn ObjectStore>,
    repo: String,
    path: PathBuf,
}

impl RepoCache {
    pub fn new(store: Arc<dyn ObjectStore>, work_dir: &Path, repo: &str) -> RepoCache {
        RepoCache {
            store,
            repo: repo.to_owned(),
            path: work_dir.join(format!("{repo}.git")),
        }
    }

    /// The local bare repository.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Read the manifest (an empty one at generation 0 if there is none, or if it cannot be
    /// read: see [`Snapshot::unreadable`]).
    pub async fn load(&self) -> Result<Snapshot, CacheError> {
        let key = keys::manifest(&self.repo);
        match self.store.get(&key).await? {
            None => Ok(Snapshot::default()),
            Some(obj) => match serde_json::from_slice(&obj.body) {
                Ok(manifest) => Ok(Snapshot {
                    manifest,
                    etag: Some(obj.etag),
                    unreadable: None,
                }),
                Err(e) => {
                    tracing::error!(key, error = %e, "manifest unreadable: the cache will be rebuilt from the source");
                    Ok(Snapshot {
                        manifest: Manifest::default(),
                        etag: Some(obj.etag),
                        unreadable: Some(format!("{key} was unreadable ({e})")),
                    })
                }
            },
        }
    }

    fn marker_for(snap: &Snapshot) -> String {
        format!("{} {}", snap.manifest.generation, snap.etag.as_deref().unwrap_or("-"))
    }

    /// Is the local copy exactly `snap` (restored or committed as it)?
    pub fn is_warm(&self, snap: &Snapshot) -> bool {
        self.path.join("HEAD").is_file()
            && std::fs::read_to_string(self.path.join(MARKER)).is_ok_and(|m| m.trim() == Self::marker_for(snap))
    }

    /// Forget that the local copy matches any manifest (call before changing it).
    pub fn invalidate_local(&self) -> Result<(), CacheError> {
        match std::fs::remove_file(self.path.join(MARKER)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::Local(format!("{}: {e}", self.path.display()))),
        }
    }

    /// Remove the local copy entirely (before a rebuild from the source).
    pub fn wipe_local(&self) -> Result<(), CacheError> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::Local(format!("{}: {e}", self.path.display()))),
        }
    }

    fn write_marker(&self, snap: &Snapshot) -> Result<(), CacheError> {
        // Writing it also marks the copy as used just now, for LRU eviction.
        std::fs::write(self.path.join(MARKER), Self::marker_for(snap))
            .map_err(|e| CacheError::Local(format!("{}: {e}", self.path.display())))?;
        Ok(())
    }

    /// Mark a warm copy as used just now (LRU eviction goes by the marker's time).
    fn touch_marker(&self) {
        if let Ok(f) = std::fs::File::options().write(true).open(self.path.join(MARKER)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// The packs this local copy knows to be intact in the store.
    fn stored_packs(&self) -> BTreeSet<String> {
        std::fs::read_to_string(self.path.join(STORED))
            .map(|text| text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn write_stored_packs(&self, names: &BTreeSet<String>) -> Result<(), CacheError> {
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(self.path.join(STORED), text)
            .map_err(|e| CacheError::Local(format!("{}: {e}", self.path.display())))
    }

    /// Bring the local copy to exactly `snap`: download the packs it lacks (streamed, verified),
    /// drop packs the manifest does not name, set the refs. Nothing is downloaded when warm.
    pub async fn restore(&self, snap: &Snapshot) -> Result<RestoreStats, CacheError> {
        if self.is_warm(snap) {
            self.touch_marker();
            return Ok(RestoreStats {
                warm: true,
                ..Default::default()
            });
        }
        self.invalidate_local()?;
        let path = self.path.clone();
        blocking(move || {
            repo::open_or_init_bare(&path)
                .map(|_| ())
                .map_err(|e| CacheError::Local(e.to_string()))
        })
        .await?;
        let pack_dir = self.path.join("objects").join("pack");
        let local = local_packs(&pack_dir)?;
        let wanted: BTreeSet<&str> = snap.manifest.packs.iter().map(|p| p.name.as_str()).collect();
        let mut stored: BTreeSet<String> = self
            .stored_packs()
            .into_iter()
            .filter(|n| wanted.contains(n.as_str()) && local.contains_key(n))
            .collect();
        let mut stats = RestoreStats::default();
        for pack in &snap.manifest.packs {
            if local.contains_key(&pack.name) {
                continue;
            }
            stats.bytes_downloaded += self.download_pack(&pack_dir, &pack.name).await?;
            stats.packs_downloaded += 1;
            stored.insert(pack.name.clone());
        }
        for name in local.keys().filter(|n| !wanted.contains(n.as_str())) {
            remove_pack_files(&pack_dir, name);
        }
        let path = self.path.clone();
        let manifest = snap.manifest.clone();
        blocking(move || set_local_refs(&path, &manifest)).await?;
        self.write_stored_packs(&stored)?;
        self.write_marker(snap)?;
        Ok(stats)
    }

    async fn download_pack(&self, pack_dir: &Path, name: &str) -> Result<u64, CacheError> {
        let tmp_pack = pack_dir.join(format!(".incoming-{name}.pack"));
        let tmp_idx = pack_dir.join(format!(".incoming-{name}.idx"));
        let corrupt = |what: String| CacheError::Corrupt { what };
        let mut bytes = 0;
        for (key, tmp) in [
            (keys::pack(&self.repo, name), &tmp_pack),
            (keys::index(&self.repo, name), &tmp_idx),
        ] {
            match self.store.download(&key, tmp).await {
                Ok(info) => bytes += info.size,
                Err(StoreError::NotFound { .. }) => {
                    let _ = std::fs::remove_file(&tmp_pack);
                    return Err(corrupt(format!("{key} is named by the manifest but missing")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (p, i, expected) = (tmp_pack.clone(), tmp_idx.clone(), name.to_owned());
        let verified = blocking(move || verify_pack(&p, &i, &expected)).await;
        if let Err(e) = verified {
            let _ = std::fs::remove_file(&tmp_pack);
            let _ = std::fs::remove_file(&tmp_idx);
            return Err(e);
        }
        // The pack first, then its index: gix discovers packs through their index.
        let local_err = |e: std::io::Error| CacheError::Local(format!("{}: {e}", pack_dir.display()));
        std::fs::rename(&tmp_pack, pack_dir.join(format!("pack-{name}.pack"))).map_err(local_err)?;
        std::fs::rename(&tmp_idx, pack_dir.join(format!("pack-{name}.idx"))).map_err(local_err)?;
        Ok(bytes)
    }

    /// Record the local copy as the next generation: upload packs the manifest lacks (and any it
    /// names that this copy cannot vouch for in the store), write the manifest conditionally,
    /// then delete packs it no longer names. Writes nothing at all when the state is unchanged.
    pub async fn commit(&self, snap: &Snapshot, next: NextState) -> Result<CommitOutcome, CacheError> {
        let pack_dir = self.path.join("objects").join("pack");
        let local = local_packs(&pack_dir)?;
        let packs: Vec<PackRef> = local.values().cloned().collect();
        let manifest = Manifest {
            generation: snap.manifest.generation + 1,
            packs,
            source: next.source,
            backups: next.backups,
            targets: next.targets,
            batch_refs: next.batch_refs,
            lfs_pending: next.lfs_pending,
            updated_at: now_ms(),
        };
        // Skip a pack only if the manifest names it and we know the stored object is intact.
        let known: BTreeSet<&str> = snap.manifest.packs.iter().map(|p| p.name.as_str()).collect();
        let mut stored = self.stored_packs();
        let uploads: Vec<PackRef> = manifest
            .packs
            .iter()
            .filter(|p| !(known.contains(p.name.as_str()) && stored.contains(&p.name)))
            .cloned()
            .collect();
        let same_state = snap.etag.is_some() && snap.unreadable.is_none() && manifest.same_state(&snap.manifest);
        if same_state && uploads.is_empty() {
            self.write_marker(snap)?;
            return Ok(CommitOutcome {
                written: false,
                snapshot: snap.clone(),
                ..Default::default()
            });
        }
        let mut outcome = CommitOutcome {
            written: true,
            ..Default::default()
        };
        self.upload_packs(&uploads, &pack_dir, &mut stored, &mut outcome)
            .await?;
        if same_state {
            // Only the objects needed repair (a rebuild after `Corrupt`): the manifest is right.
            self.write_marker(snap)?;
            outcome.snapshot = snap.clone();
            return Ok(outcome);
        }
        let etag = self.put_manifest(snap, &manifest).await?;
        // Only now that the manifest no longer names them may old packs go.
        outcome.packs_deleted = self.delete_unnamed(snap, &manifest).await;
        outcome.snapshot = Snapshot {
            manifest,
            etag: Some(etag),
            unreadable: None,
        };
        self.write_marker(&outcome.snapshot)?;
        Ok(outcome)
    }

    /// Upload each pack and its index, recording each as stored as soon as it is.
    async fn upload_packs(
        &self,
        uploads: &[PackRef],
        pack_dir: &Path,
        stored: &mut BTreeSet<String>,
        outcome: &mut CommitOutcome,
    ) -> Result<(), CacheError> {
        for pack in uploads {
            for (key, file) in [
                (
                    keys::pack(&self.repo, &pack.name),
                    pack_dir.join(format!("pack-{}.pack", pack.name)),
                ),
                (
                    keys::index(&self.repo, &pack.name),
                    pack_dir.join(format!("pack-{}.idx", pack.name)),
                ),
            ] {
                // Content-addressed: an object already under this name (a retried upload) is the
                // same bytes, or a damaged copy that this replaces.
                self.store.upload(&key, &file, Condition::Always).await?;
                outcome.bytes_uploaded += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            }
            outcome.packs_uploaded += 1;
            stored.insert(pack.name.clone());
            self.write_stored_packs(stored)?;
        }
        Ok(())
    }

    /// Write the manifest on condition that nobody else committed since `snap`; its new ETag.
    async fn put_manifest(&self, snap: &Snapshot, manifest: &Manifest) -> Result<String, CacheError> {
        let key = keys::manifest(&self.repo);
        let condition = match &snap.etag {
            Some(etag) => Condition::IfMatch(etag.clone()),
            None => Condition::IfAbsent,
        };
        let body = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        match self.store.put(&key, body, condition).await {
            Ok(etag) => Ok(etag),
            Err(StoreError::PreconditionFailed { .. }) => Err(CacheError::Conflict {
                repo: self.repo.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete the packs `snap` named and `manifest` does not; how many. Failures are harmless
    /// garbage that `collect_garbage` finds later.
    async fn delete_unnamed(&self, snap: &Snapshot, manifest: &Manifest) -> usize {
        let mut deleted = 0;
        let current: BTreeSet<&str> = manifest.packs.iter().map(|p| p.name.as_str()).collect();
        for old in snap
            .manifest
            .packs
            .iter()
            .filter(|p| !current.contains(p.name.as_str()))
        {
            for key in [keys::pack(&self.repo, &old.name), keys::index(&self.repo, &old.name)] {
                if let Err(e) = self.store.delete(&key).await {
                    // Harmless garbage: `collect_garbage` finds it later.
                    tracing::warn!(key, error = %e, "could not delete an unreferenced pack");
                }
            }
            deleted += 1;
        }
        deleted
    }

    /// Delete pack objects that `manifest` (the one just committed) does not name and that were
    /// written at least `min_age` ago: what a commit that lost a race (`Conflict`) uploaded, or
    /// what a compaction failed to delete. Objects of unknown age are kept. Returns how many
    /// objects were deleted; a failed delete is logged and left for the next collection.
    pub async fn collect_garbage(
        &self,
        manifest: &Manifest,
        min_age: std::time::Duration,
    ) -> Result<usize, CacheError> {
        let named: BTreeSet<&str> = manifest.packs.iter().map(|p| p.name.as_str()).collect();
        let prefix = keys::packs(&self.repo);
        let cutoff = now_ms().saturating_sub(min_age.as_millis() as u64);
        let mut deleted = 0;
        for object in self.store.list(&prefix).await? {
            let file = &object.key[prefix.len()..];
            // Only packs and indexes: anything else under `packs/` is not ours to judge.
            let Some(name) = file.strip_suffix(".pack").or_else(|| file.strip_suffix(".idx")) else {
                continue;
            };
            let old_enough = object.modified_ms.is_some_and(|t| t <= cutoff);
            if named.contains(name) || !old_enough {
                continue;
            }
            match self.store.delete(&object.key).await {
                Ok(()) => {
                    tracing::info!(key = object.key, bytes = object.size, "deleted an orphaned pack object");
                    deleted += 1;
                }
                Err(e) => tracing::warn!(key = object.key, error = %e, "could not delete an orphaned pack object"),
            }
        }
        Ok(deleted)
    }

    /// Repack the local copy into a single pack if it has more than `max_packs`. Returns whether
    /// it did; the next [`RepoCache::commit`] then switches the manifest and deletes old packs.
    pub async fn compact_if_needed(&self, max_packs: usize) -> Result<bool, CacheError> {
        self.compact_unless(max_packs, Arc::new(AtomicBool::new(false))).await
    }

    /// [`RepoCache::compact_if_needed`], given up (not an error: `Ok(false)`, nothing changed)
    /// if `interrupt` is set before it is done — compaction is housekeeping, the next sync can
    /// do it.
    pub async fn compact_unless(&self, max_packs: usize, interrupt: Arc<AtomicBool>) -> Result<bool, CacheError> {
        let pack_dir = self.path.join("objects").join("pack");
        if local_packs(&pack_dir)?.len() <= max_packs {
            return Ok(false);
        }
        self.invalidate_local()?;
        let path = self.path.clone();
        blocking(move || {
            let r = repo::open(&path).map_err(|e| CacheError::Local(e.to_string()))?;
            match git::local::repack_all(&r, &interrupt) {
                Ok(_) => Ok(true),
                Err(git::local::CopyError::Pack(git::pack::PackError::Interrupted)) => Ok(false),
                Err(e) => Err(CacheError::Local(e.to_string())),
            }
        })
        .await
    }
}

/// Run blocking local-repository work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CacheError::Local(format!("worker thread failed: {e}")))?
}

/// The packs in a local pack directory, by name.
fn local_packs(pack_dir: &Path) -> Result<BTreeMap<String, PackRef>, CacheError> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(pack_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(CacheError::Local(format!("{}: {e}", pack_dir.display()))),
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_prefix("pack-").and_then(|f| f.strip_suffix(".idx")) else {
            continue;
        };
        let pack = pack_dir.join(format!("pack-{name}.pack"));
        let Ok(meta) = std::fs::metadata(&pack) else { continue };
        let objects = gix_pack::index::File::at(entry.path(), gix::hash::Kind::Sha1)
            .map(|i| u64::from(i.num_objects()))
            .unwrap_or(0);
        out.insert(
            name.to_owned(),
            PackRef {
                name: name.to_owned(),
                bytes: meta.len(),
                objects,
            },
        );
    }
    Ok(out)
}

fn remove_pack_files(pack_dir: &Path, name: &str) {
    for ext in ["idx", "pack", "keep", "rev", "bitmap"] {
        let _ = std::fs::remove_file(pack_dir.join(format!("pack-{name}.{ext}")));
    }
}

/// Check a downloaded pack and index against each other and against the name they were
/// stored under.
fn verify_pack(pack: &Path, idx: &Path, expected: &str) -> Result<(), CacheError> {
    let corrupt = |what: String| CacheError::Corrupt { what };
    let interrupt = AtomicBool::new(false);
    let data =
        gix_pack::data::File::at(pack, gix::hash::Kind::Sha1).map_err(|e| corrupt(format!("pack {expected}: {e}")))?;
    let actual = data
        .verify_checksum(&mut gix::progress::Discard, &interrupt)
        .map_err(|e| corrupt(format!("pack {expected}: {e}")))?;
    let named = gix::ObjectId::from_hex(expected.as_bytes()).ok();
    if named != Some(actual) {
        return Err(corrupt(format!("pack {expected} has checksum {actual}")));
    }
    let index =
        gix_pack::index::File::at(idx, gix::hash::Kind::Sha1).map_err(|e| corrupt(format!("index {expected}: {e}")))?;
    index
        .verify_checksum(&mut gix::progress::Discard, &interrupt)
        .map_err(|e| corrupt(format!("index {expected}: {e}")))?;
    if named != Some(index.pack_checksum()) {
        return Err(corrupt(format!(
            "index {expected} belongs to pack {}",
            index.pack_checksum()
        )));
    }
    Ok(())
}

/// Make the local refs exactly the manifest's source refs plus backups, in one transaction.
fn set_local_refs(path: &Path, manifest: &Manifest) -> Result<(), CacheError> {
    let local_err = |e: git::Error| CacheError::Local(e.to_string());
    let r = repo::open(path).map_err(local_err)?;
    let all = RefPatterns::everything();
    let current = repo::read_refs(&r, &all, Peel::No).map_err(local_err)?.ids();
    let mut desired: BTreeMap<String, gix::ObjectId> = manifest.source.ids();
    for (name, id) in &manifest.backups {
        let id = gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| CacheError::Corrupt {
            what: format!("manifest backup {name}: {e}"),
        })?;
        desired.insert(name.clone(), id);
    }
    if let Some(missing) = desired.values().find(|id| !r.has_object(**id)) {
        return Err(CacheError::Corrupt {
            what: format!("object {missing} is named by the manifest's refs but in none of its packs"),
        });
    }
    let mut updates = Vec::new();
    for (name, id) in &desired {
        if current.get(name) != Some(id) {
            updates.push(LocalUpdate {
                name: name.clone(),
                old: current.get(name).copied(),
                new: Some(*id),
            });
        }
    }
    for (name, id) in &current {
        if !desired.contains_key(name) {
            updates.push(LocalUpdate {
                name: name.clone(),
                old: Some(*id),
                new: None,
            });
        }
    }
    repo::apply_ref_updates(&r, &updates, manifest.source.head.as_deref(), "gitferry: restore").map_err(local_err)
}

/// Keep the local work directory under `max_bytes` by removing the least recently used
/// repositories (by their marker's modification time), never those in `keep`.
pub fn evict_lru(work_dir: &Path, max_bytes: u64, keep: &[&Path]) -> Vec<PathBuf> {
    let mut repos: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(work_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "git") && p.is_dir())
                .map(|p| {
                    let used = std::fs::metadata(p.join(MARKER))
                        .or_else(|_| std::fs::metadata(&p))
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    (used, dir_size(&p), p)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut total: u64 = repos.iter().map(|r| r.1).sum();
    repos.sort();
    let mut removed = Vec::new();
    for (_, size, path) in repos {
        if total <= max_bytes {
            break;
        }
        if keep.iter().any(|k| *k == path) {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            total = total.saturating_sub(size);
            removed.push(path);
        }
    }
    removed
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
