//! Mirror fetch into the bare cache: every selected ref forced to the source's value, refs the
//! source no longer has pruned, `HEAD` following the source's default branch.
//!
//! One conversation with the source ([`super::receive`]): its refs are listed (only the prefixes
//! we mirror, plus `HEAD`), and when the cache already has them all, nothing is negotiated and
//! no pack is sent. Otherwise the pack is received with gix's negotiation (refspecs `+P:P` for
//! each include pattern, `^P` for each exclude, no implicit tag following), and no ref is
//! written until it is in: then every create, update and prune is one change, compare-and-swap
//! against the refs read before the fetch, written into packed-refs in one go
//! ([`super::packed`]) — 20,000 new tags are one file write, not 20,000 lock files — and only
//! against the refs the source advertised in that same conversation. What changed is computed
//! by comparing the cache's refs before and after ([`super::refs::diff`]), which stays true
//! whichever way the refs moved.

use std::sync::atomic::AtomicBool;

use super::guard::guard;
pub use super::receive::PackTee;
use super::receive::Received;
use super::refs::{self, RefDelta, RefPatterns, RefState};
use super::remote::{Location, Remote};
use super::repo::{self, LocalUpdate, Peel};
use super::{Error, advert, local, lsremote, receive, transport};

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    pub refs: RefPatterns,
    /// Delete cache refs (matching the patterns) that the source no longer has.
    pub prune: bool,
    /// Also ask for `HEAD`, so the cache's `HEAD` follows the source's default branch. A batch
    /// of a large mirror leaves it out: gix fetches what `HEAD` points to, and the default
    /// branch's whole history would come with every batch.
    pub follow_head: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            refs: RefPatterns::default(),
            prune: true,
            follow_head: true,
        }
    }
}

/// What a fetch did.
#[derive(Clone, Debug, Default)]
pub struct FetchOutcome {
    /// How the cache's refs changed (created / updated / forced / deleted).
    pub deltas: Vec<RefDelta>,
    /// The source's refs (selected by the patterns) as advertised during this fetch.
    pub source: RefState,
    /// The cache's refs (selected by the patterns) after this fetch.
    pub cache: RefState,
    /// Objects and bytes of the pack received (0 when nothing was needed).
    pub objects: u64,
    pub bytes: u64,
    /// The pack received, as stored in the cache, and the cache's refs before the fetch: a
    /// target whose refs are those can be sent this pack as it is ([`super::push::Forward`]).
    pub forward: Option<super::push::Forward>,
}

/// Fetch `remote` into the bare repository `cache` as a mirror.
pub fn mirror_fetch(
    cache: &gix::Repository,
    remote: &Remote,
    options: &FetchOptions,
    interrupt: &AtomicBool,
) -> Result<FetchOutcome, Error> {
    mirror_fetch_teed(cache, remote, options, interrupt, None)
}

/// [`mirror_fetch`], showing the pack to `tee` as it arrives when it asks to see it (network
/// sources only; a local path has no pack stream).
pub fn mirror_fetch_teed(
    cache: &gix::Repository,
    remote: &Remote,
    options: &FetchOptions,
    interrupt: &AtomicBool,
    tee: Option<&mut dyn PackTee>,
) -> Result<FetchOutcome, Error> {
    guard(remote, "fetching", || {
        fetch_and_prune(cache, remote, options, interrupt, tee)
    })
}

fn fetch_and_prune(
    cache: &gix::Repository,
    remote: &Remote,
    options: &FetchOptions,
    interrupt: &AtomicBool,
    tee: Option<&mut dyn PackTee>,
) -> Result<FetchOutcome, Error> {
    let before = repo::read_refs(cache, &options.refs, Peel::No)?;
    let (source, mut received) = match remote.location() {
        Location::Local(path) => fetch_local(cache, remote, path, &before, &options.refs, interrupt)?,
        Location::Network(_) => fetch_network(cache, remote, &before, options, interrupt, tee)?,
    };
    let (objects, bytes) = (received.objects, received.bytes);

    // Creates, updates and prunes in one change, compare-and-swap on each ref against what was
    // read before the fetch (which wrote no ref); HEAD like the source's.
    let updates = ref_updates(&before, &source, options.prune);
    let applied = repo::apply_cache_ref_updates(cache, &updates, source.head.as_deref(), "gitferry: fetch");
    // Released either way: a pack kept forever would never be repacked; unreferenced objects
    // are what gc is for.
    received.release();
    applied?;
    tracing::debug!(updates = updates.len(), "cache refs written");
    let (deltas, after) = match updates.is_empty() {
        true => (Vec::new(), before.clone()),
        false => {
            let after = repo::read_refs(cache, &options.refs, Peel::No)?;
            let deltas = refs::diff(&before.ids(), &after.ids(), |old, new| {
                repo::is_ancestor(cache, old, new)
            });
            (deltas, after)
        }
    };
    let forward = received.pack.take().map(|pack| super::push::Forward {
        pack,
        valid_for: before.ids(),
    });
    Ok(FetchOutcome {
        deltas,
        cache: after,
        source,
        objects,
        bytes,
        forward,
    })
}

/// What makes the cache's refs (`before`) the source's: creates and updates, and (`prune`) the
/// deletion of refs the source no longer has.
fn ref_updates(before: &RefState, source: &RefState, prune: bool) -> Vec<LocalUpdate> {
    let changed = source
        .refs
        .iter()
        .filter(|(name, t)| before.refs.get(*name).map(|b| b.id) != Some(t.id))
        .map(|(name, t)| LocalUpdate {
            name: name.clone(),
            old: before.refs.get(name).map(|b| b.id),
            new: Some(t.id),
        });
    let pruned = before
        .refs
        .iter()
        .filter(|(name, _)| prune && !source.refs.contains_key(*name))
        .map(|(name, t)| LocalUpdate {
            name: name.clone(),
            old: Some(t.id),
            new: None,
        });
    changed.chain(pruned).collect()
}

fn fetch_network(
    cache: &gix::Repository,
    remote: &Remote,
    before: &RefState,
    options: &FetchOptions,
    interrupt: &AtomicBool,
    tee: Option<&mut dyn PackTee>,
) -> Result<(RefState, Received), Error> {
    // gix parses the advertisement itself: `Guarded` keeps it from the path that panics on a
    // dangling symref, and notices a SHA-256 repository before gix fails on its ids.
    let (t, seen) = advert::Guarded::new(transport::open(
        remote,
        gix::protocol::transport::Service::UploadPack,
        gix::protocol::transport::Protocol::V2,
    )?);
    let gix_err = |e: gix::Error| match advert::seen(&seen).object_format {
        Some(format) => Error::UnsupportedObjectFormat {
            remote: remote.to_string(),
            format,
        },
        None => Error::from_gix(remote, "fetch", &e),
    };
    let (specs, head) = refspecs(options).map_err(gix_err)?;
    // Ask the server only for our prefixes, unless a pattern has no usable literal prefix
    // (e.g. `refs/*`): a literal `ref-prefix refs/*` would match nothing.
    let prefix_filter = options.refs.prefixes().iter().all(|p| p.len() > "refs/".len());
    let started = std::time::Instant::now();
    let listing = receive::list(t, specs, head, prefix_filter).map_err(gix_err)?;
    tracing::debug!(
        refs = listing.ref_map.remote_refs.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "listed the source's refs"
    );
    if listing.ref_map.object_hash != cache.object_hash() {
        return Err(Error::UnsupportedObjectFormat {
            remote: remote.to_string(),
            format: listing.ref_map.object_hash.to_string(),
        });
    }
    let mut source = lsremote::ref_state_from_advertisement(&listing.ref_map.remote_refs, &options.refs)?;
    if source.head.is_none() {
        // v0/v1: HEAD's target came as a capability (unborn when no such branch is listed).
        source.head = advert::seen(&seen)
            .head()
            .and_then(|target| refs::validate_ref_name(target.as_bytes()).ok());
    }
    let up_to_date = source
        .refs
        .iter()
        .all(|(name, t)| before.refs.get(name).map(|b| b.id) == Some(t.id));
    if up_to_date || listing.ref_map.mappings.iter().all(|m| m.local.is_none()) {
        // The cache has every ref already (or the source has none): no negotiation, no pack,
        // and no ref transaction — a no-op touches nothing on disk.
        return Ok((source, Received::default()));
    }
    let mut tee = match tee {
        Some(t) => t.start(before, &source).then_some(t),
        None => None,
    };
    let received = listing.receive(cache, interrupt, tee.as_deref_mut()).map_err(gix_err)?;
    if let Some(t) = tee {
        t.received();
    }
    tracing::debug!(
        objects = received.objects,
        bytes = received.bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "received the pack"
    );
    Ok((source, received))
}

/// The refspecs of a mirror fetch: `+P:P` for each include pattern (the mapping's local side
/// names the cache ref negotiation takes as a have), `^P` for each exclude, and `HEAD` without
/// destination (with `follow_head`) so the listing includes the source's default branch.
fn refspecs(options: &FetchOptions) -> Result<(Vec<gix::refspec::RefSpec>, Vec<gix::refspec::RefSpec>), gix::Error> {
    use gix::refspec::parse::Operation::Fetch;
    let parse = |s: &str| gix::refspec::parse(s.into(), Fetch).map(|r| r.to_owned());
    let patterns = &options.refs;
    let specs = patterns
        .include
        .iter()
        .map(|p| format!("+{p}:{p}"))
        .chain(patterns.exclude.iter().map(|p| format!("^{p}")))
        .map(|s| parse(&s))
        .collect::<Result<Vec<_>, _>>()?;
    let head = match options.follow_head {
        true => vec![parse("HEAD")?],
        false => Vec::new(),
    };
    Ok((specs, head))
}

fn fetch_local(
    cache: &gix::Repository,
    remote: &Remote,
    path: &std::path::Path,
    before: &RefState,
    patterns: &RefPatterns,
    interrupt: &AtomicBool,
) -> Result<(RefState, Received), Error> {
    let src = repo::open(path).map_err(|e| lsremote::not_found_if_missing(remote, path, e))?;
    let source = repo::read_refs(&src, patterns, Peel::No)?;
    let tips: Vec<_> = source.refs.values().map(|t| t.id).collect();
    let haves: Vec<_> = before.refs.values().map(|t| t.id).collect();
    let stats =
        local::copy_objects(&src, cache, &tips, &haves, interrupt).map_err(|e| e.into_error(remote.to_string()))?;
    Ok((source, Received::new(stats.objects, stats.bytes)))
}
