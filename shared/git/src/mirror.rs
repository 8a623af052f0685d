//! The porcelain: one-shot mirror of a source to a target through a bare cache.
//!
//! The fetch lists the source's refs and, when the cache already has them all, negotiates
//! nothing (no pack); then the target is brought to the cache's refs, and when it already
//! matches, nothing is sent either. Running a mirror twice with nothing changed therefore
//! transfers no pack in either direction: one listing of each remote, nothing more.
//!
//! The target's handshake runs while the source is listed. When a pack comes and the target's
//! refs are the cache's, the push starts at once and the source's pack goes on to the target
//! as it arrives, its last bytes held until the cache has it all and any LFS objects are up
//! ([`push::Pipeline`]): a mirror then moves the pack once in and once out, and the target
//! works on it while the cache does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use super::Error;
use super::fetch::{FetchOptions, PackTee, mirror_fetch_teed};
use super::guard::guard;
use super::push::{self, PushOptions, RefResult};
use super::refs::{DeltaCounts, RefDelta, RefPatterns, RefState};
use super::remote::Remote;
use super::repo;

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
    /// How the pack was made: counted for the target, or the source's forwarded as it is.
    pub pack: push::PackMode,
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
    // round trip of wall time instead of two. When a pack comes and the target's refs are the
    // cache's, the push starts with it and is fed the pack as it arrives (`push::Pipeline`).
    let (fetched, forwarder) = std::thread::scope(|s| {
        let mut forwarder = Forwarder {
            cache: &cache,
            target,
            options,
            packs: &packs,
            interrupt: &interrupt,
            connecting: Some(s.spawn(|| push::connect(target))),
            connected: None,
            pipeline: None,
            scanned: None,
        };
        let fetched = fetch_step(&cache, source, options, &interrupt, &say, &mut forwarder);
        forwarder.join();
        (fetched, (forwarder.connected, forwarder.pipeline, forwarder.scanned))
    });
    let (fetch, forward, desired) = fetched?;
    let (connected, pipeline, scanned) = forwarder;
    // An empty target mirrored from a cache that had packs already (a cache directory used for
    // another target before) needs the LFS objects of the whole history: every pack is looked at.
    let new_target = matches!(&connected, Some(Ok(Some(c))) if c.is_empty());
    let found = match scanned {
        Some(found) => found?,
        None if super::lfs::enabled(options.lfs.as_ref()) => {
            let before = match new_target {
                true => super::lfs::PackSnapshot::default(),
                false => packs,
            };
            super::lfs::scan::new_pointers(&cache, &before, &interrupt)?
        }
        None => Vec::new(),
    };
    let lfs = super::lfs::for_mirror(&cache, found, source, target, options.lfs.as_ref(), &interrupt, &say)?;
    let step = PushStep {
        cache: &cache,
        target,
        desired: &desired,
        options,
        interrupt: &interrupt,
        say: &say,
    };
    let push = match pipeline {
        Some(p) => step.commit(p, forward.as_ref())?,
        None => step.push(fresh(connected.unwrap_or(Ok(None)))?, forward.as_ref())?,
    };
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
    tee: &mut dyn PackTee,
) -> Result<(FetchSummary, Option<push::Forward>, RefState), Error> {
    let fetch_options = FetchOptions {
        refs: options.refs.clone(),
        prune: options.prune,
        follow_head: true,
    };
    let outcome = mirror_fetch_teed(cache, source, &fetch_options, interrupt, Some(tee))?;
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
    Ok((fetch, outcome.forward, outcome.cache))
}

/// The push side of one mirror: the cache's refs after the fetch go to the target.
struct PushStep<'a> {
    cache: &'a gix::Repository,
    target: &'a Remote,
    /// The cache's refs after the fetch.
    desired: &'a RefState,
    options: &'a MirrorOptions,
    interrupt: &'a AtomicBool,
    say: &'a dyn Fn(String),
}

impl PushStep<'_> {
    /// Through `connected` (or a new connection), with `forward`'s pack where it is valid.
    fn push(&self, connected: Option<push::Connected>, forward: Option<&push::Forward>) -> Result<PushSummary, Error> {
        (self.say)(format!("pushing {} refs to {}", self.desired.len(), self.target));
        let options = push_options(self.options);
        let outcome = push::push_through(
            self.cache,
            self.target,
            connected,
            forward,
            self.desired,
            &options,
            self.interrupt,
        )?;
        Ok(push_summary(outcome, self.say))
    }

    /// A forwarded push's end: the commands planned again on the fetched cache (classified
    /// now that it has the new objects), the pack's held-back end, the target's report. Pushes
    /// again the ordinary way if that fails, or if the target waited so long for the pack's
    /// end (LFS transfers) that a server or proxy may have cut the connection.
    fn commit(&self, mut pipeline: push::Pipeline, forward: Option<&push::Forward>) -> Result<PushSummary, Error> {
        let (target, say) = (self.target, self.say);
        if !pipeline.finished() {
            let why = if pipeline.idle() >= CONNECTION_FRESH_FOR {
                Some(format!(
                    "{target} waited {:.0?} for the rest of the pack",
                    pipeline.idle()
                ))
            } else if *pipeline.desired() != self.desired.ids() {
                Some("the cache's refs are not those the forwarded push was started for".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                say(format!("{why}; pushing again"));
                drop(pipeline);
                return self.push(None, forward);
            }
            pipeline.finish(self.cache);
        }
        say(format!(
            "finishing the push to {target}: the source's pack, forwarded as it arrived"
        ));
        match pipeline.outcome() {
            Ok(outcome) => Ok(push_summary(outcome, say)),
            Err(Error::Interrupted) => Err(Error::Interrupted),
            Err(e) => {
                say(format!("forwarding the pack to {target} failed ({e}); pushing again"));
                self.push(None, None)
            }
        }
    }
}

fn push_options(options: &MirrorOptions) -> PushOptions {
    PushOptions {
        refs: options.refs.clone(),
        prune: options.prune,
        atomic: options.atomic,
        keep_divergent: None,
    }
}

fn push_summary(outcome: push::PushOutcome, say: &dyn Fn(String)) -> PushSummary {
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
        pack: outcome.pack,
        remote_messages: outcome.remote_messages.clone(),
        results: outcome.results,
    };
    let how = match push.pack {
        push::PackMode::None | push::PackMode::Counted => "",
        push::PackMode::Forwarded => ", the source's pack as received",
        push::PackMode::Streamed => ", the source's pack as it arrived",
    };
    say(format!(
        "pushed {} objects ({}{how}), {} ref change(s), {} rejected",
        push.objects,
        human_bytes(push.bytes),
        push.refs.total(),
        push.rejected.len()
    ));
    push
}

/// The target's connection, opened while the fetch lists the source, and — when a pack comes
/// that is valid for the target — the forwarded push it starts ([`push::Pipeline`]).
struct Forwarder<'a, 'scope> {
    cache: &'a gix::Repository,
    target: &'a Remote,
    options: &'a MirrorOptions,
    /// The cache's packs before the fetch (new LFS pointers are in the packs added since).
    packs: &'a super::lfs::PackSnapshot,
    interrupt: &'a AtomicBool,
    connecting: Option<std::thread::ScopedJoinHandle<'scope, Result<Option<push::Connected>, Error>>>,
    connected: Option<Result<Option<push::Connected>, Error>>,
    pipeline: Option<push::Pipeline>,
    /// The LFS pointers among the new objects, when the pack's arrival had them looked for.
    scanned: Option<Result<Vec<super::lfs::Pointer>, super::lfs::LfsError>>,
}

impl Forwarder<'_, '_> {
    fn join(&mut self) {
        if let Some(handle) = self.connecting.take() {
            self.connected = Some(handle.join().unwrap_or(Ok(None)));
        }
    }
}

impl PackTee for Forwarder<'_, '_> {
    fn start(&mut self, before: &RefState, source: &RefState) -> bool {
        self.join();
        let Some(Ok(Some(connected))) = self.connected.take() else {
            return false;
        };
        let options = push_options(self.options);
        match push::Pipeline::start(self.cache, self.target, connected, before, source, &options) {
            Ok(p) => self.pipeline = Some(p),
            Err(connected) => self.connected = Some(Ok(connected)),
        }
        self.pipeline.is_some()
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(p) = &mut self.pipeline {
            p.write(bytes);
        }
    }

    /// The pack is in the cache: the target gets its end now, unless LFS objects must reach
    /// the target first (then after the LFS step, [`PushStep::commit`]).
    fn received(&mut self) {
        let Some(p) = &mut self.pipeline else {
            return;
        };
        if super::lfs::enabled(self.options.lfs.as_ref()) {
            let found = super::lfs::scan::new_pointers(self.cache, self.packs, self.interrupt);
            let clear = found.as_ref().is_ok_and(Vec::is_empty);
            self.scanned = Some(found);
            if !clear {
                return;
            }
        }
        p.finish(self.cache);
    }
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
