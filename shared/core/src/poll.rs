//! The poller: the one implementation the poll Lambda (every minute, EventBridge) and
//! `gitferry serve`'s ticker both run.
//!
//! **Schedule.** Every repo polls every `poll_interval_secs`, offset by a phase derived from its
//! name, so a thousand repos with the same interval spread over the interval instead of all
//! firing in the same minute. A repo is due in the tick at `t` when its slot
//! `⌊(t + phase) / interval⌋` changes in `(t − tick, t]`; `t` is the schedule's own time for the
//! tick ([`tick_time`]: EventBridge's event time, or the wall clock aligned to the tick), so
//! consecutive ticks cover time without gaps or overlaps however late they start. The slot is
//! also the poll request's deduplication id (`poll:{repo}:{slot}`), so a retried tick enqueues
//! nothing twice; a tick that never ran delays its repos by one interval.
//!
//! **Probing.** Enqueueing every due repo would cost a queue round trip, a sync invocation and a
//! manifest read per poll even when nothing changed (docs/cost.md). Instead the poller lists
//! each due source's refs itself (`ls-remote`, 32 at once, each within the repo's
//! `probe_timeout_secs`) and compares a digest of them with the digest it last *confirmed*
//! mirrored to every target:
//!
//! * equal → confirmed again (`checked_at`), nothing enqueued;
//! * different → the poller reads the manifest once: if a sync (say, from a webhook) already
//!   mirrored exactly these refs everywhere, that is the new confirmed digest; otherwise the
//!   repo is enqueued — at every due tick until a sync confirms it, whatever the digests say,
//!   so a failing repo is retried on its poll interval (also after its request went to the
//!   dead-letter queue);
//! * the source refused us (authentication, not found) → enqueued, so the sync records why;
//! * unreachable, or no answer within the timeout → enqueued from the second time in a row (one
//!   blip is not worth a sync);
//! * and every repo once per `recheck` (a day), which catches targets changed behind our back.
//!
//! Requests are enqueued as probes finish, and a tick stops waiting for probes after
//! [`PollOptions::budget`]: one stalled source delays nobody.
//!
//! **Confirmation and staleness.** `state/probe.json` (one object, read once and written at
//! most once per tick — and only every few minutes when nothing but check times moved) holds
//! per repo the confirmed digest and when it was last confirmed. A polled repo not confirmed
//! for `stale_after_intervals` of its intervals is *stale*: the tick reports how many there are
//! as the `StaleRepos` metric (an alarm watches it and its absence), and status readers show
//! `last_checked` from here ([`last_checked`]).
//!
//! **Startup reconciliation.** The first tick that sees a configuration (by digest) enqueues
//! every repository once — after a deploy or a config change nothing waits for its interval.
//! A marker object (`state/config-seen/{digest}`) records that it happened; it is written after
//! the enqueue, so a crash in between repeats the reconciliation rather than skipping it (the
//! requests deduplicate). `gitferry serve` reconciles at every start ([`Poller::reconcile`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::Manifest;
use crate::clock::{now_ms, scaled, scaled_secs};
use crate::config::{Config, RepoConfig, SyncPolicy};
use crate::keys;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};
use crate::request::{SyncRequest, SyncTrigger};
use crate::store::{Condition, ObjectStore, StoreError};

/// The EventBridge schedule's period (`rate(1 minute)` in template.yaml).
pub const TICK_SECS: u64 = 60;
/// Probe state whose only change is check times is written at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(300);
/// Enqueue what finished probing once no probe finished for this long.
const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// The tick period as this process runs it.
pub fn tick_period() -> Duration {
    scaled_secs(TICK_SECS)
}

/// The time a tick stands for: the schedule's time for it (EventBridge's `time`) when it is
/// plausible, else the wall clock aligned down to the tick period.
pub fn tick_time(scheduled_ms: Option<u64>, wall_ms: u64) -> u64 {
    let tick = (tick_period().as_millis() as u64).max(1);
    match scheduled_ms {
        Some(t) if t.abs_diff(wall_ms) <= 2 * tick => t,
        _ => wall_ms / tick * tick,
    }
}

/// A repo's poll interval in (scaled) milliseconds.
fn interval_ms(repo: &RepoConfig) -> u64 {
    (scaled_secs(repo.poll_interval_secs).as_millis() as u64).max(1)
}

/// The phase of a repository within its interval.
pub fn phase(repo: &str, interval_ms: u64) -> u64 {
    crate::git::hash::fnv1a(repo.as_bytes()) % interval_ms.max(1)
}

fn slot(t_ms: u64, phase: u64, interval_ms: u64) -> u64 {
    (t_ms + phase) / interval_ms.max(1)
}

/// Poll requests for the repos whose slot changed in `(from_ms, now_ms]`.
pub fn due(config: &Config, from_ms: u64, now_ms: u64) -> Vec<SyncRequest> {
    let mut out = Vec::new();
    for (name, repo) in &config.repos {
        if repo.sync_policy == SyncPolicy::WebhookOnly {
            continue;
        }
        let interval = interval_ms(repo);
        let p = phase(name, interval);
        let now_slot = slot(now_ms, p, interval);
        if now_slot != slot(from_ms, p, interval) {
            out.push(SyncRequest::poll(name, now_slot));
        }
    }
    out
}

/// What a tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tick {
    /// Poll requests enqueued.
    pub polled: usize,
    /// Sources listed (the due repos).
    pub probed: usize,
    /// Due repos confirmed mirrored (nothing to do).
    pub confirmed: usize,
    /// Probes that got no answer within their timeout or the tick's budget.
    pub timed_out: usize,
    /// Repos enqueued by startup reconciliation (0 unless the config is new).
    pub reconciled: usize,
    /// Polled repos not confirmed mirrored for `stale_after_intervals` intervals.
    pub stale: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How probing behaves.
#[derive(Clone, Copy, Debug)]
pub struct PollOptions {
    /// `ls-remote`s in flight at once.
    pub concurrency: usize,
    /// A tick stops waiting for probes after this (the poll function has 60 s).
    pub budget: Duration,
    /// Enqueue a repo at least this often even if its refs did not change.
    pub recheck: Duration,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            concurrency: 32,
            budget: Duration::from_secs(40),
            recheck: Duration::from_secs(24 * 3600),
        }
    }
}

/// `state/probe.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeState {
    /// When the last tick ended (Unix ms).
    pub ticked_at: u64,
    /// When this object was last written.
    pub saved_at: u64,
    pub repos: BTreeMap<String, Probed>,
}

/// What the poller knows of one repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Probed {
    /// The source refs digest last confirmed mirrored to every target.
    pub confirmed: Option<String>,
    /// When the source was last confirmed equal to the targets.
    pub checked_at: Option<u64>,
    /// When the poller last enqueued the repo.
    pub enqueued_at: u64,
    /// Consecutive probes that could not list the source.
    pub unreachable: u32,
    /// When the poller first saw the repo (staleness counts from here until a confirmation).
    pub since: u64,
}

impl ProbeState {
    /// Polled repos not confirmed for `stale_after_intervals` of their intervals.
    pub fn stale(&self, config: &Config, now: u64) -> Vec<String> {
        polled(config)
            .filter(|(name, repo)| {
                let entry = self.repos.get(*name);
                let last = entry.and_then(|e| e.checked_at.or(Some(e.since))).unwrap_or(now);
                now.saturating_sub(last) > u64::from(config.stale_after_intervals) * interval_ms(repo)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// How often a save is due when only check times changed: well inside the shortest
    /// staleness threshold, so a stored check time is never old enough to look stale.
    fn save_every(config: &Config) -> u64 {
        let shortest = polled(config)
            .map(|(_, r)| u64::from(config.stale_after_intervals) * interval_ms(r) / 3)
            .min()
            .unwrap_or(u64::MAX);
        (scaled(SAVE_EVERY).as_millis() as u64).min(shortest).max(1)
    }
}

fn polled(config: &Config) -> impl Iterator<Item = (&String, &RepoConfig)> {
    config
        .repos
        .iter()
        .filter(|(_, r)| r.sync_policy != SyncPolicy::WebhookOnly)
}

/// When each repo was last confirmed mirrored by the poller (for status readers).
pub async fn last_checked(store: &dyn ObjectStore) -> BTreeMap<String, u64> {
    let Ok(Some(object)) = store.get(keys::PROBE).await else {
        return BTreeMap::new();
    };
    let state: ProbeState = serde_json::from_slice(&object.body).unwrap_or_default();
    state
        .repos
        .into_iter()
        .filter_map(|(name, p)| p.checked_at.map(|t| (name, t)))
        .collect()
}

/// A digest of the refs a mirror carries (names and ids), for change detection.
pub fn refs_digest(refs: &crate::git::RefState) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, t) in &refs.refs {
        h.update(name.as_bytes());
        h.update(b" ");
        h.update(t.id.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// What probing one source found.
#[derive(Debug)]
enum Probe {
    /// Listed; `mirrored`: the manifest shows exactly these refs on every target.
    Listed { digest: String, mirrored: bool },
    /// A permanent failure (authentication, not found, invalid).
    Refused,
    /// A transient failure, twice, or no answer in time.
    Unreachable,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Poller {
    config: Arc<Config>,
    config_digest: String,
    queue: Arc<dyn Queue>,
    store: Arc<dyn ObjectStore>,
    metrics: Metrics,
    options: PollOptions,
}

impl Poller {
    pub fn new(
        config: Arc<Config>,
        config_digest: impl Into<String>,
        queue: Arc<dyn Queue>,
        store: Arc<dyn ObjectStore>,
        metrics: Metrics,
        options: PollOptions,
    ) -> Poller {
        Poller {
            config,
            config_digest: config_digest.into(),
            queue,
            store,
            metrics,
            options,
        }
    }

    /// One tick at `now` (Unix ms): reconcile a new config, probe what is due, enqueue what
    /// needs a sync, count the stale, save the state.
    pub async fn tick(&self, now: u64) -> Result<Tick, PollError> {
        let reconciled = self.reconcile_new_config(now).await?;
        let (mut state, saved) = self.load_state().await?;
        let since = now.saturating_sub(tick_period().as_millis() as u64);
        for name in self.config.repos.keys() {
            let entry = state.repos.entry(name.clone()).or_default();
            if entry.since == 0 {
                entry.since = now; // new, or from a state written before `since` existed
            }
        }
        state.repos.retain(|name, _| self.config.repos.contains_key(name));
        let mut tick = self.probe_due(due(&self.config, since, now), &mut state, now).await?;
        tick.reconciled = reconciled;
        tick.stale = state.stale(&self.config, now).len();
        state.ticked_at = now;
        self.save_state(state, saved.as_ref(), now).await?;
        self.metrics.stale_repos(tick.stale);
        Ok(tick)
    }

    /// Enqueue every repository once (`gitferry serve` at start, or a new configuration),
    /// and record that this configuration was reconciled.
    pub async fn reconcile(&self, why: &str) -> Result<usize, PollError> {
        let all: Vec<SyncRequest> = self
            .config
            .repos
            .keys()
            .map(|name| {
                SyncRequest::new(
                    name,
                    SyncTrigger::Manual {
                        requested_by: why.to_owned(),
                        id: format!("{why}-{}", self.config_digest),
                    },
                )
            })
            .collect();
        for chunk in all.chunks(10) {
            self.queue.send(chunk).await?;
        }
        match self
            .store
            .put(
                &keys::config_seen(&self.config_digest),
                now_ms().to_string().into_bytes(),
                Condition::IfAbsent,
            )
            .await
        {
            Ok(_) | Err(StoreError::PreconditionFailed { .. }) => Ok(all.len()),
            Err(e) => Err(e.into()),
        }
    }

    async fn reconcile_new_config(&self, _now: u64) -> Result<usize, PollError> {
        if self.store.get(&keys::config_seen(&self.config_digest)).await?.is_some() {
            return Ok(0);
        }
        let n = self.reconcile("reconcile").await?;
        tracing::info!(repos = n, digest = %self.config_digest, "new configuration: reconciled every repository");
        Ok(n)
    }

    async fn load_state(&self) -> Result<(ProbeState, Option<Vec<u8>>), PollError> {
        let saved = self.store.get(keys::PROBE).await?.map(|o| o.body);
        // An unreadable state is a fresh start: every repo is confirmed again from manifests.
        let state = saved
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        Ok((state, saved))
    }

    /// Write the state if anything but check times changed, or every `save_every`.
    async fn save_state(&self, mut state: ProbeState, saved: Option<&Vec<u8>>, now: u64) -> Result<(), PollError> {
        let previous: Option<ProbeState> = saved.and_then(|b| serde_json::from_slice(b).ok());
        let changed = previous.as_ref().is_none_or(|p| !same_but_check_times(p, &state));
        let due = now.saturating_sub(state.saved_at) >= ProbeState::save_every(&self.config);
        if changed || due {
            state.saved_at = now;
            let body = serde_json::to_vec(&state).expect("probe state serialises");
            self.store.put(keys::PROBE, body, Condition::Always).await?;
        }
        Ok(())
    }

    /// Probe `due` (bounded concurrency and time), enqueueing as results arrive.
    async fn probe_due(&self, due: Vec<SyncRequest>, state: &mut ProbeState, now: u64) -> Result<Tick, PollError> {
        let mut tick = Tick {
            probed: due.len(),
            ..Tick::default()
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(self.options.concurrency.max(1)));
        let mut outstanding: BTreeMap<String, SyncRequest> = BTreeMap::new();
        let mut set = JoinSet::new();
        for request in due {
            let repo = self.config.repos[&request.repo].clone();
            let confirmed = state.repos.get(&request.repo).and_then(|p| p.confirmed.clone());
            let (store, permits) = (self.store.clone(), permits.clone());
            outstanding.insert(request.repo.clone(), request.clone());
            set.spawn(async move {
                let _permit = permits.acquire_owned().await.ok();
                (request.repo.clone(), probe(&repo, confirmed, store.as_ref()).await)
            });
        }
        let stop_at = Instant::now() + scaled(self.options.budget);
        let mut sender = Sender::new(self.queue.clone());
        while !set.is_empty() {
            let next = tokio::time::timeout(FLUSH_AFTER, set.join_next());
            match tokio::time::timeout_at(stop_at.into(), next).await {
                Err(_) => break, // the budget is spent
                Ok(Err(_)) => sender.flush(),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(Err(e)))) => tracing::error!(error = %e, "poll probe task failed"),
                Ok(Ok(Some(Ok((name, result))))) => {
                    let Some(request) = outstanding.remove(&name) else {
                        continue;
                    };
                    let entry = state.repos.entry(name).or_default();
                    if let Some(why) = decide(entry, result, now, &self.options, &mut tick) {
                        tracing::info!(repo = %request.repo, why, "poll: enqueue");
                        entry.enqueued_at = now;
                        sender.push(request);
                    }
                }
            }
        }
        set.abort_all();
        for (name, request) in outstanding {
            tracing::warn!(repo = %name, "poll probe: no answer within the tick's budget");
            tick.timed_out += 1;
            let entry = state.repos.entry(name).or_default();
            if decide(entry, Probe::Unreachable, now, &self.options, &mut tick).is_some() {
                entry.enqueued_at = now;
                sender.push(request);
            }
        }
        sender.finish().await?;
        Ok(tick)
    }
}

/// Enqueues as probes finish, in batches of ten, several batches in flight: a slow queue
/// holds up neither the probes nor the other batches.
struct Sender {
    queue: Arc<dyn Queue>,
    pending: Vec<SyncRequest>,
    in_flight: JoinSet<Result<(), QueueError>>,
    failed: Option<QueueError>,
}

impl Sender {
    const BATCH: usize = 10;
    const IN_FLIGHT: usize = 8;

    fn new(queue: Arc<dyn Queue>) -> Sender {
        Sender {
            queue,
            pending: Vec::new(),
            in_flight: JoinSet::new(),
            failed: None,
        }
    }

    fn push(&mut self, request: SyncRequest) {
        self.pending.push(request);
        if self.pending.len() >= Self::BATCH {
            self.flush();
        }
    }

    /// Start sending what is pending (waiting only if too many batches are in flight).
    fn flush(&mut self) {
        while let Some(Ok(done)) = self.in_flight.try_join_next() {
            self.note(done);
        }
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let queue = self.queue.clone();
        self.in_flight
            .spawn(async move { queue.send(&batch).await.map(|_| ()) });
        if self.in_flight.len() > Self::IN_FLIGHT {
            tracing::debug!(in_flight = self.in_flight.len(), "poll: the queue is slow");
        }
    }

    fn note(&mut self, result: Result<(), QueueError>) {
        if let Err(e) = result {
            self.failed.get_or_insert(e);
        }
    }

    /// Send the rest and wait for every batch: the first error, if any.
    async fn finish(mut self) -> Result<(), PollError> {
        self.flush();
        while let Some(done) = self.in_flight.join_next().await {
            match done {
                Ok(r) => self.note(r),
                Err(e) => tracing::error!(error = %e, "poll: an enqueue task failed"),
            }
        }
        match self.failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Whether to enqueue a probed repo (and why), updating what the poller knows of it.
fn decide(entry: &mut Probed, probe: Probe, now: u64, options: &PollOptions, tick: &mut Tick) -> Option<&'static str> {
    // Counted from the last enqueue, or from when the poller first saw the repo (startup
    // reconciliation enqueued it then).
    let last = entry.enqueued_at.max(entry.since);
    let recheck_due = now.saturating_sub(last) >= scaled(options.recheck).as_millis() as u64;
    let why = match probe {
        Probe::Listed { digest, mirrored } => {
            entry.unreachable = 0;
            if entry.confirmed.as_ref() == Some(&digest) || mirrored {
                entry.confirmed = Some(digest);
                entry.checked_at = Some(now);
                tick.confirmed += 1;
                recheck_due.then_some("daily re-check")
            } else {
                Some("not mirrored yet")
            }
        }
        Probe::Refused => Some("the source refused the listing"),
        Probe::Unreachable => {
            entry.unreachable += 1;
            (entry.unreachable >= 2 || recheck_due).then_some("the source is unreachable")
        }
    };
    if why.is_some() {
        tick.polled += 1;
    }
    why
}

/// Equal except for check and tick times.
fn same_but_check_times(a: &ProbeState, b: &ProbeState) -> bool {
    let strip = |s: &ProbeState| -> BTreeMap<String, Probed> {
        s.repos
            .iter()
            .map(|(n, p)| {
                let mut p = p.clone();
                p.checked_at = p.checked_at.map(|_| 0);
                (n.clone(), p)
            })
            .collect()
    };
    strip(a) == strip(b)
}

/// List one source (twice on a transient failure, each within its probe timeout) and, if its
/// digest is not the confirmed one, ask the manifest whether a sync mirrored it already.
async fn probe(repo: &RepoConfig, confirmed: Option<String>, store: &dyn ObjectStore) -> Probe {
    let limit = scaled_secs(repo.probe_timeout_secs);
    for attempt in 0..2 {
        let (source, patterns) = (repo.source.clone(), repo.refs.clone());
        let listing = tokio::time::timeout(
            limit + limit / 2,
            tokio::task::spawn_blocking(move || crate::git::ls_remote_within(&source, &patterns, limit)),
        )
        .await;
        match listing {
            Ok(Ok(Ok(refs))) => {
                tracing::debug!(repo = %repo.name, refs = refs.len(), "poll probe: listed");
                let digest = refs_digest(&refs);
                let mirrored = confirmed.as_ref() != Some(&digest) && mirrored(repo, &digest, store).await;
                return Probe::Listed { digest, mirrored };
            }
            Ok(Ok(Err(e))) if !e.is_transient() => {
                tracing::warn!(repo = %repo.name, error = %e, "poll probe: source refused");
                return Probe::Refused;
            }
            Ok(Ok(Err(e))) => tracing::info!(repo = %repo.name, error = %e, attempt, "poll probe: source unreachable"),
            Ok(Err(e)) => tracing::error!(repo = %repo.name, error = %e, "poll probe: listing task failed"),
            Err(_) => {
                tracing::warn!(repo = %repo.name, timeout = ?limit, "poll probe: no answer in time");
                return Probe::Unreachable;
            }
        }
        tokio::time::sleep(scaled(Duration::from_millis(250))).await;
    }
    Probe::Unreachable
}

/// Does the manifest record exactly the refs with `digest` on the source and every target?
async fn mirrored(repo: &RepoConfig, digest: &str, store: &dyn ObjectStore) -> bool {
    let Ok(Some(object)) = store.get(&keys::manifest(&repo.name)).await else {
        return false;
    };
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&object.body) else {
        return false;
    };
    refs_digest(&manifest.source) == digest && manifest.mirrored_to(repo.targets.iter())
}

/// `gitferry serve`'s ticker: a tick every [`tick_period`] until `shutdown`. (The first one
/// runs one period after the start: startup reconciliation has just enqueued everything.)
pub async fn run(poller: Poller, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(tick_period());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        match poller.tick(tick_time(None, now_ms())).await {
            Ok(t) => tracing::debug!(?t, "poll tick"),
            Err(e) => tracing::error!(error = %e, "poll tick failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: usize, interval: u64) -> Config {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[repos.r{i}]\nurl = \"/src/{i}\"\npoll_interval_secs = {interval}\n[[repos.r{i}.targets]]\nurl = \"/dst/{i}\"\n"
            ));
        }
        text.push_str("[repos.hook]\nurl = \"/src/hook\"\nsync_policy = \"webhook_only\"\n[[repos.hook.targets]]\nurl = \"/dst/hook\"\n");
        Config::parse(&text, std::path::Path::new("t.toml"), &|_| None).unwrap()
    }

    #[test]
    fn every_repo_once_per_interval_evenly_spread() {
        let c = config(1000, 300);
        let start = 1_800_000_000_000u64;
        let mut per_repo: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_minute = Vec::new();
        let mut slots = std::collections::HashSet::new();
        for minute in 1..=60 {
            let now = start + minute * 60_000;
            let due = due(&c, now - 60_000, now);
            per_minute.push(due.len());
            for r in due {
                assert!(slots.insert(r.dedup_id()), "a slot is never repeated");
                *per_repo.entry(r.repo).or_default() += 1;
            }
        }
        assert!(!per_repo.contains_key("hook"), "webhook_only repos are never polled");
        assert_eq!(per_repo.len(), 1000);
        assert!(
            per_repo.values().all(|n| *n == 12),
            "60 minutes / 5-minute interval = 12 polls each"
        );
        let mean = 12_000.0 / 60.0;
        let max = *per_minute.iter().max().unwrap() as f64;
        assert!(max <= 2.0 * mean, "no minute above twice the mean: {max} vs {mean}");
    }

    #[test]
    fn a_retried_tick_yields_the_same_dedup_ids() {
        let c = config(50, 120);
        let t = 1_800_000_123_000;
        let a: Vec<_> = due(&c, t - 60_000, t).iter().map(SyncRequest::dedup_id).collect();
        let b: Vec<_> = due(&c, t - 60_000, t).iter().map(SyncRequest::dedup_id).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn ticks_stand_for_their_scheduled_time() {
        let t = 1_800_000_000_000u64; // a whole minute
        assert_eq!(tick_time(Some(t), t + 1_500), t, "a late start keeps its minute");
        assert_eq!(tick_time(None, t + 59_999), t, "the wall clock, aligned");
        assert_eq!(
            tick_time(Some(t - 3_600_000), t + 10),
            t,
            "an implausible event time is ignored"
        );
    }

    #[test]
    fn ten_thousand_repos_plan_fast() {
        let c = config(10_000, 300);
        let started = Instant::now();
        let n = due(&c, 1_800_000_000_000 - 60_000, 1_800_000_000_000).len();
        assert!(n > 0);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    fn probed() -> Probed {
        Probed {
            since: 1,
            ..Probed::default()
        }
    }

    #[test]
    fn decisions() {
        let o = PollOptions::default();
        let now = 10_000_000;
        let mut t = Tick::default();
        let listed = |d: &str, mirrored| Probe::Listed {
            digest: d.into(),
            mirrored,
        };
        // Never confirmed, not in the manifest: enqueue, every time.
        let mut e = probed();
        e.enqueued_at = now;
        assert!(decide(&mut e, listed("a", false), now, &o, &mut t).is_some());
        assert!(decide(&mut e, listed("a", false), now, &o, &mut t).is_some());
        // A sync mirrored it: confirmed, and from then on no manifest is needed.
        assert!(decide(&mut e, listed("a", true), now, &o, &mut t).is_none());
        assert_eq!((e.confirmed.as_deref(), e.checked_at), (Some("a"), Some(now)));
        assert!(decide(&mut e, listed("a", false), now + 1, &o, &mut t).is_none());
        // One unreachable probe waits; two in a row enqueue.
        assert!(decide(&mut e, Probe::Unreachable, now, &o, &mut t).is_none());
        assert!(decide(&mut e, Probe::Unreachable, now, &o, &mut t).is_some());
        assert!(decide(&mut e, Probe::Refused, now, &o, &mut t).is_some());
        // The daily re-check.
        let later = now + o.recheck.as_millis() as u64;
        assert_eq!(
            decide(&mut e, listed("a", false), later, &o, &mut t),
            Some("daily re-check")
        );
    }

    #[test]
    fn staleness_counts_from_the_last_confirmation() {
        let c = config(2, 300);
        let now = 100_000_000;
        let mut s = ProbeState::default();
        s.repos.insert(
            "r0".into(),
            Probed {
                checked_at: Some(now - 899_000),
                ..probed()
            },
        );
        s.repos.insert(
            "r1".into(),
            Probed {
                checked_at: Some(now - 901_000),
                ..probed()
            },
        );
        s.repos.insert("hook".into(), Probed { since: 0, ..probed() });
        assert_eq!(s.stale(&c, now), vec!["r1".to_owned()]);
    }
}
