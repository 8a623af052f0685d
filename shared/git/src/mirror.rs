//! The porcelain: one-shot mirror of a source to a target through a bare cache.
//!
//! The fetch lists the source's refs and, when the cache already has them all, negotiates
//! nothing (no pack); then the target is brought to the cache's refs, and when it already
//! matches, nothing is sent either. Running a mirror twice with nothing changed therefore
//! transfers no pack in either direction: one listing of each remote, nothing more.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use super::Error;
use super::fetch::{FetchOptions, mirror_fetch};
use super::guard::guard;
use super::push::{self, PushOptions, RefResult};
use super::refs::{DeltaCounts, RefDelta, RefPatterns};
use super::remote::Remote;
use super::repo::{self, Peel};

/// Receives one line of progress text (for humans).
pub type ProgressFn = Arc<dyn Fn(&str) + Send + Sync>;

/// How to mirror.
#[derive(Clone, Default)]
pub struct MirrorOptions {
    pub refs: RefPatterns,
    pub prune: bool,
    pub atomic: bool,
    pub progress: Option<ProgressFn>,
    /// Mirror Git LFS objects too (`None`: never look for them).
    pub lfs: Option<super::lfs::LfsOptions>,
}

/// What the fetch side did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FetchSummary {
    pub refs: DeltaCounts,
    pub deltas: Vec<RefDelta>,
    pub objects: u64,
    pub bytes: u64,
    /// True when the cache already matched the source: no pack, no ref change.
    pub up_to_date: bool,
}

/// A ref the target refused.
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

/// What the push side did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushSummary {
    /// Applied changes by kind.
    pub refs: DeltaCounts,
    pub results: Vec<RefResult>,
    pub rejected: Vec<Rejected>,
    pub objects: u64,
    pub bytes: u64,
    pub remote_messages: Vec<String>,
}

/// The result of [`mirror()`]. Shown as JSON (`--json`) or text ([`MirrorSummary::human`]).
#[derive(Clone, Debug, Serialize)]
pub struct MirrorSummary {
    pub source: String,
    pub target: String,
    pub cache: PathBuf,
    pub fetch: FetchSummary,
    pub push: PushSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lfs: Option<super::lfs::LfsSummary>,
    pub duration_ms: u64,
}

/// Where the cache of `source` lives under `cache_dir`.
pub fn cache_path(cache_dir: &Path, source: &Remote) -> PathBuf {
    cache_dir.join(format!("{}.git", source.cache_key()))
}

/// Mirror `source` to `target` through a bare cache under `cache_dir`.
pub fn mirror(
    source: &Remote,
    target: &Remote,
    cache_dir: &Path,
    options: &MirrorOptions,
) -> Result<MirrorSummary, Error> {
    // Fetch and push have guards of their own (naming the source and the target); this one
    // covers the rest (the cache, progress callbacks, the summary).
    guard(source, &format!("mirroring to {target}"), || {
        mirror_through_cache(source, target, cache_dir, options)
    })
}

fn mirror_through_cache(
    source: &Remote,
    target: &Remote,
    cache_dir: &Path,
    options: &MirrorOptions,
) -> Result<MirrorSummary, Error> {
    let started = Instant::now();
    let say = |line: String| {
        if let Some(p) = &options.progress {
            p(&format!("[{:6.2}s] {line}", started.elapsed().as_secs_f64()));
        }
        tracing::info!("{line}");
    };
    let interrupt = AtomicBool::new(false);
    let cache_path = cache_path(cache_dir, source);
    let cache = repo::open_or_init_bare(&cache_path)?;

    say(format!("fetching {source}"));
    let packs = super::lfs::PackSnapshot::take(&cache_path);
    // The target's handshake runs while the fetch does: a no-op mirror then costs one server
    // round trip of wall time instead of two.
    let (fetched, connected) = std::thread::scope(|s| {
        let connected = s.spawn(|| push::connect(target));
        let fetched = fetch_step(&cache, source, options, &interrupt, &say);
        (fetched, connected.join())
    });
    let (fetch, forward) = fetched?;
    let lfs = super::lfs::for_mirror(&cache, &packs, source, target, options.lfs.as_ref(), &interrupt, &say)?;
    let connected = fresh(connected.unwrap_or_else(|_| Ok(None)))?;
    let push = push_step(&cache, target, connected, forward.as_ref(), options, &interrupt, &say)?;
    Ok(MirrorSummary {
        source: source.to_string(),
        target: target.to_string(),
        cache: cache_path,
        fetch,
        push,
        lfs,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

fn fetch_step(
    cache: &gix::Repository,
    source: &Remote,
    options: &MirrorOptions,
    interrupt: &AtomicBool,
    say: &dyn Fn(String),
) -> Result<(FetchSummary, Option<push::Forward>), Error> {
    let fetch_options = FetchOptions {
        refs: options.refs.clone(),
        prune: options.prune,
        follow_head: true,
    };
    let outcome = mirror_fetch(cache, source, &fetch_options, interrupt)?;
    let fetch = FetchSummary {
        refs: DeltaCounts::of(outcome.deltas.iter().map(|d| &d.kind)),
        up_to_date: outcome.deltas.is_empty() && outcome.objects == 0,
        deltas: outcome.deltas,
        objects: outcome.objects,
        bytes: outcome.bytes,
    };
    if fetch.up_to_date {
        say(format!(
            "cache is up to date with {source} ({} refs)",
            outcome.source.len()
        ));
    } else {
        say(format!(
            "fetched {} objects ({}), {} ref change(s)",
            fetch.objects,
            human_bytes(fetch.bytes),
            fetch.refs.total()
        ));
    }
    Ok((fetch, outcome.forward))
}

fn push_step(
    cache: &gix::Repository,
    target: &Remote,
    connected: Option<push::Connected>,
    forward: Option<&push::Forward>,
    options: &MirrorOptions,
    interrupt: &AtomicBool,
    say: &dyn Fn(String),
) -> Result<PushSummary, Error> {
    let desired = repo::read_refs(cache, &options.refs, Peel::No)?;
    say(format!("pushing {} refs to {target}", desired.len()));
    let push_options = PushOptions {
        refs: options.refs.clone(),
        prune: options.prune,
        atomic: options.atomic,
        keep_divergent: None,
    };
    let outcome = push::push_through(cache, target, connected, forward, &desired, &push_options, interrupt)?;
    for m in &outcome.remote_messages {
        say(format!("remote: {m}"));
    }
    let push = PushSummary {
        refs: DeltaCounts::of(outcome.applied().map(|r| &r.command.kind)),
        rejected: outcome
            .rejected()
            .map(|r| Rejected {
                name: r.command.name.clone(),
                reason: r.rejected.clone().unwrap_or_default(),
            })
            .collect(),
        objects: outcome.objects,
        bytes: outcome.bytes,
        remote_messages: outcome.remote_messages.clone(),
        results: outcome.results,
    };
    say(format!(
        "pushed {} objects ({}), {} ref change(s), {} rejected",
        push.objects,
        human_bytes(push.bytes),
        push.refs.total(),
        push.rejected.len()
    ));
    Ok(push)
}

impl MirrorSummary {
    /// A short report for terminals.
    pub fn human(&self) -> String {
        let counts = |c: &DeltaCounts| {
            format!(
                "{} created, {} updated, {} forced, {} deleted",
                c.created, c.updated, c.forced, c.deleted
            )
        };
        let mut out = format!(
            "mirrored {} -> {} in {:.2}s\n",
            self.source,
            self.target,
            self.duration_ms as f64 / 1000.0
        );
        if self.fetch.up_to_date {
            out.push_str("  fetch: up to date\n");
        } else {
            out.push_str(&format!(
                "  fetch: {}; {} objects, {}\n",
                counts(&self.fetch.refs),
                self.fetch.objects,
                human_bytes(self.fetch.bytes)
            ));
        }
        if self.push.results.is_empty() {
            out.push_str("  push:  up to date\n");
        } else {
            out.push_str(&format!(
                "  push:  {}; {} objects, {}\n",
                counts(&self.push.refs),
                self.push.objects,
                human_bytes(self.push.bytes)
            ));
        }
        if let Some(lfs) = &self.lfs {
            out.push_str(&lfs.human());
        }
        for r in &self.push.rejected {
            out.push_str(&format!("  rejected {}: {}\n", r.name, r.reason));
        }
        for m in &self.push.remote_messages {
            out.push_str(&format!("  remote: {m}\n"));
        }
        out
    }
}

/// How long a receive-pack connection opened during the fetch may wait for its commands before
/// a fresh one is opened instead: servers and proxies cut idle connections (`git daemon
/// --timeout`, load balancers), and a long first fetch would leave it idle for minutes.
const CONNECTION_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(20);

fn fresh(connected: Result<Option<push::Connected>, Error>) -> Result<Option<push::Connected>, Error> {
    Ok(connected?.filter(|c| c.age() < CONNECTION_FRESH_FOR))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
