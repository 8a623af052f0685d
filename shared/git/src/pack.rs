//! Pack generation: the objects a receiver lacks, streamed as a non-thin pack.
//!
//! gix has no `pack-objects` porcelain, so this composes gix-pack's generation plumbing:
//!
//! 1. enumerate commits reachable from the new tips but not from what the receiver has
//!    (`rev_walk(...).with_hidden(...)`);
//! 2. count objects: each such commit and everything in its tree (`TreeContents`: gix-pack
//!    prunes subtrees it has already seen, so each distinct tree is read once — measured 30%
//!    faster than diffing every commit against its parents), annotated tag objects as they are,
//!    trees/blobs pointed to directly in full;
//! 3. drop what the receiver already has: every object in the trees of the boundary commits
//!    (the receiver's commits our new ones build on) and of the refs' old tips (`also_has`).
//!    That is git's "edge" rule, and the pack holds exactly the missing objects in the usual
//!    cases (the tests compare the count with `git rev-list --objects`);
//! 4. copy entries out of our packs (existing deltas are reused when their base is sent too;
//!    otherwise the object is sent whole — never a thin pack), and stream them through
//!    `FromEntriesIter` into the writer. The header's object count is the number of counted
//!    objects, and we verify every counted object exists before writing, because gix-pack
//!    silently skips missing ones (which would corrupt the pack).
//!
//! Nothing is buffered beyond one chunk of entries: the pack goes straight to the socket, HTTP
//! body or local indexer.

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::prelude::Finalize;
use gix_pack::data::output;

use super::repo;

/// Memory for decoded delta bases and decoded objects while counting and copying: half and a
/// quarter of the repository's pack size, within [4, 32] and [2, 16] MiB.
fn cache_sizes(repo: &gix::Repository) -> (usize, usize) {
    let packs: u64 = std::fs::read_dir(repo.objects.store_ref().path().join("pack"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let packs = usize::try_from(packs).unwrap_or(usize::MAX);
    (
        (packs / 2).clamp(4 << 20, 32 << 20),
        (packs / 4).clamp(2 << 20, 16 << 20),
    )
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    pub objects: u64,
    pub bytes: u64,
}

/// Why a pack could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading our own repository failed (missing object, corrupt pack…).
    #[error("{0}")]
    Local(String),
    /// The writer failed (the connection to the receiver broke).
    #[error("writing pack: {0}")]
    Write(#[source] std::io::Error),
    #[error("interrupted")]
    Interrupted,
}

/// A writer that counts what passes through it.
pub struct CountingWriter<W> {
    pub inner: W,
    pub count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What to send: `tips` are the object ids the receiver's refs will point to; `haves` are ids
/// the receiver already has (its advertised refs). `also_has` are haves whose whole trees are
/// worth excluding (the old values of the refs being updated); keep it short, each costs a tree
/// walk. Unknown haves are ignored.
pub fn write_pack(
    repo: &gix::Repository,
    tips: &[ObjectId],
    haves: &[ObjectId],
    also_has: &[ObjectId],
    use_ofs_delta: bool,
    out: &mut dyn Write,
    interrupt: &AtomicBool,
) -> Result<PackStats, PackError> {
    let local = |e: gix::Error| PackError::Local(super::error::chain(&e));
    let mut db: gix::odb::HandleArc = repo
        .objects
        .clone()
        .into_inner()
        .into_arc()
        .map_err(|e| PackError::Local(e.to_string()))?;
    db.prevent_pack_unload();
    db.ignore_replacements = true;
    // A fresh handle has no caches: without a delta-base cache every tree lookup during counting
    // re-resolves its whole delta chain (2.5x slower on a 10k-commit repository). Sized by the
    // repository so small ones stay small.
    let (pack_cache, object_cache) = cache_sizes(repo);
    db.set_pack_cache(move || Box::new(gix_pack::cache::lru::MemoryCappedHashmap::new(pack_cache)));
    db.set_object_cache(move || Box::new(gix_pack::cache::object::MemoryCappedHashmap::new(object_cache)));
    let started = std::time::Instant::now();
    let counts = count_objects(repo, &db, tips, haves, also_has, interrupt)?;
    tracing::debug!(
        objects = counts.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "counted objects to pack"
    );
    let mut out = CountingWriter { inner: out, count: 0 };
    if counts.is_empty() {
        write_empty_pack(repo.object_hash(), &mut out)?;
        return Ok(PackStats {
            objects: 0,
            bytes: out.count,
        });
    }
    if let Some(c) = counts.iter().find(|c| !gix_pack::Find::contains(&db, &c.id)) {
        return Err(PackError::Local(format!(
            "object {} is missing from the local repository",
            c.id
        )));
    }
    let num_entries = counts.len();
    let header_count = u32::try_from(num_entries).map_err(|_| PackError::Local("more than 2^32 objects".into()))?;
    let entries = output::entry::iter_from_counts(
        counts,
        db,
        Box::new(gix::progress::Discard),
        output::entry::iter_from_counts::Options {
            thread_limit: None,
            mode: output::entry::iter_from_counts::Mode::PackCopyAndBaseObjects,
            allow_thin_pack: false,
            chunk_size: 64,
            version: gix_pack::data::Version::V2,
            compression: repo.pack_compression().map_err(local)?,
        },
    )
    .map_err(local)?;
    let mut in_order = gix::parallel::InOrderIter::from(entries);

    // The receiver may not speak ofs-delta: then point reused deltas at their in-pack base by id.
    let mut written: Vec<ObjectId> = Vec::with_capacity(if use_ofs_delta { 0 } else { num_entries });
    let mut invalid = 0usize;
    let chunks = in_order.by_ref().map(|chunk| {
        chunk.map(|mut entries| {
            for e in &mut entries {
                if e.is_invalid() {
                    invalid += 1;
                }
                if !use_ofs_delta {
                    if let output::entry::Kind::DeltaRef { object_index } = e.kind {
                        e.kind = output::entry::Kind::DeltaOid {
                            id: written[object_index],
                        };
                    }
                    written.push(e.id);
                }
            }
            entries
        })
    });
    let mut writer = output::bytes::FromEntriesIter::new(
        chunks,
        &mut out,
        header_count,
        gix_pack::data::Version::V2,
        repo.object_hash(),
    );
    for step in writer.by_ref() {
        if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(PackError::Interrupted);
        }
        if let Err(e) = step {
            // Distinguish a broken receiver from a local read problem.
            return Err(match e.downcast_any_ref::<std::io::Error>() {
                Some(io) => PackError::Write(std::io::Error::new(io.kind(), io.to_string())),
                None => PackError::Local(super::error::chain(&e)),
            });
        }
    }
    drop(writer);
    let stats = in_order.inner.finalize().map_err(local)?;
    if stats.missing_objects != 0 || invalid != 0 {
        // Unreachable given the pre-check, but a wrong header count must never go unnoticed.
        return Err(PackError::Local(format!(
            "{} object(s) vanished while writing the pack",
            stats.missing_objects.max(invalid)
        )));
    }
    out.flush().map_err(PackError::Write)?;
    tracing::debug!(
        objects = num_entries,
        bytes = out.count,
        copied = stats.objects_copied_from_pack,
        recompressed = stats.decoded_and_recompressed_objects,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pack written"
    );
    Ok(PackStats {
        objects: num_entries as u64,
        bytes: out.count,
    })
}

/// A pack with no objects: header and checksum (32 bytes for SHA-1).
pub fn write_empty_pack(hash: gix::hash::Kind, out: &mut dyn Write) -> Result<u64, PackError> {
    let mut w = output::bytes::FromEntriesIter::new(
        std::iter::empty::<gix::Result<Vec<output::Entry>>>(),
        out,
        0,
        gix_pack::data::Version::V2,
        hash,
    );
    let mut total = 0;
    for step in w.by_ref() {
        total += step.map_err(|e| match e.downcast_any_ref::<std::io::Error>() {
            Some(io) => PackError::Write(std::io::Error::new(io.kind(), io.to_string())),
            None => PackError::Local(super::error::chain(&e)),
        })?;
    }
    Ok(total)
}

/// Add the ids of the root trees of `commits` and of every tree and blob below them to `into`.
/// Subtrees already in `into` are not walked again.
fn tree_objects(repo: &gix::Repository, commits: impl Iterator<Item = ObjectId>, into: &mut HashSet<ObjectId>) {
    let mut stack: Vec<ObjectId> = commits
        .filter_map(|c| repo.find_commit(c).ok()?.tree_id().ok().map(|t| t.detach()))
        .collect();
    while let Some(tree_id) = stack.pop() {
        if !into.insert(tree_id) {
            continue;
        }
        let Ok(tree) = repo.find_tree(tree_id) else { continue };
        for entry in tree.iter().flatten() {
            let mode = entry.mode();
            if mode.is_tree() {
                stack.push(entry.oid().to_owned());
            } else if !mode.is_commit() {
                into.insert(entry.oid().to_owned());
            }
        }
    }
}

/// The objects to send, deduplicated. See the module docs for the method.
fn count_objects(
    repo: &gix::Repository,
    db: &gix::odb::HandleArc,
    tips: &[ObjectId],
    haves: &[ObjectId],
    also_has: &[ObjectId],
    interrupt: &AtomicBool,
) -> Result<Vec<output::Count>, PackError> {
    use gix::object::Kind;
    use output::count::objects::ObjectExpansion;
    let local = |e: gix::Error| PackError::Local(super::error::chain(&e));

    let hidden: Vec<ObjectId> = haves
        .iter()
        .filter_map(|h| repo::peel(repo, *h))
        .filter(|id| repo::object_kind(repo, *id) == Some(Kind::Commit))
        .collect();

    // Sort tips into commits to walk, tag objects to send as-is and trees/blobs to send whole.
    let mut commit_tips = Vec::new();
    let mut tag_objects = Vec::new();
    let mut whole = Vec::new();
    for &tip in tips {
        let mut id = tip;
        loop {
            match repo::object_kind(repo, id) {
                Some(Kind::Tag) => {
                    tag_objects.push(id);
                    let tag = repo.find_object(id).map_err(|e| PackError::Local(e.to_string()))?;
                    id = tag
                        .try_into_tag()
                        .map_err(|e| PackError::Local(e.to_string()))?
                        .target_id()
                        .map_err(|e| PackError::Local(e.to_string()))?
                        .detach();
                }
                Some(Kind::Commit) => {
                    commit_tips.push(id);
                    break;
                }
                Some(Kind::Tree | Kind::Blob) => {
                    whole.push(id);
                    break;
                }
                None => {
                    return Err(PackError::Local(format!(
                        "object {id} is missing from the local repository"
                    )));
                }
            }
        }
    }

    let mut walked = HashSet::new();
    let mut boundary = HashSet::new();
    if !commit_tips.is_empty() {
        let walk = repo
            .rev_walk(commit_tips.iter().copied())
            .with_hidden(hidden.iter().copied())
            .all()
            .map_err(local)?;
        let mut parents = Vec::new();
        for info in walk {
            let info = info.map_err(local)?;
            walked.insert(info.id);
            parents.extend(info.parent_ids.iter().copied());
        }
        boundary.extend(parents.into_iter().filter(|p| !walked.contains(p)));
    }
    // Everything in the trees of the boundary commits and the old tips: the receiver has it.
    let mut skip: HashSet<ObjectId> = boundary.clone();
    if !walked.is_empty() {
        let old_commits = also_has
            .iter()
            .filter_map(|h| repo::peel(repo, *h))
            .filter(|id| repo::object_kind(repo, *id) == Some(Kind::Commit));
        tree_objects(repo, boundary.iter().copied().chain(old_commits), &mut skip);
    }

    let mut counts = Vec::new();
    let mut seen = HashSet::new();
    let mut add =
        |ids: Vec<ObjectId>, expansion: ObjectExpansion, counts: &mut Vec<output::Count>| -> Result<(), PackError> {
            if ids.is_empty() {
                return Ok(());
            }
            let mut input = ids.into_iter().map(Ok::<_, gix::Error>);
            let (found, _) =
                output::count::objects_unthreaded(db, &mut input, &gix::progress::Discard, interrupt, expansion)
                    .map_err(|e| {
                        if e.is_cancelled() {
                            PackError::Interrupted
                        } else {
                            local(e)
                        }
                    })?;
            counts.extend(found.into_iter().filter(|c| !skip.contains(&c.id) && seen.insert(c.id)));
            Ok(())
        };
    let mut walked: Vec<ObjectId> = walked.into_iter().collect();
    walked.sort(); // deterministic packs for the same input
    add(walked, ObjectExpansion::TreeContents, &mut counts)?;
    add(tag_objects, ObjectExpansion::AsIs, &mut counts)?;
    add(whole, ObjectExpansion::TreeContents, &mut counts)?;
    Ok(counts)
}
