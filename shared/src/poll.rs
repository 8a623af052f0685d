//! The poller: which repositories are due in a tick, statelessly.
//!
//! Every repo polls every `poll_interval_secs`, offset by a phase derived from its name, so a
//! thousand repos with the same interval spread over the interval instead of all firing in the
//! same minute. A repo is due in the tick `(now − tick, now]` when its slot
//! `⌊(t + phase) / interval⌋` changes inside that window; the slot is also the poll request's
//! deduplication id (`poll:{repo}:{slot}`), so a retried tick enqueues nothing twice. No state
//! is kept between ticks, which is what lets the poll Lambda be a plain scheduled function.
//!
//! **Probing** ([`probe_tick`], what the poll Lambda runs): enqueueing every due repo costs a
//! queue round trip, a sync invocation and a manifest read per poll even when nothing changed —
//! about $40 a month for 1,000 idle repos polled every 5 minutes (docs/cost.md). Instead the
//! poller lists each due repo's refs itself (`ls-remote`, many at once), hashes them, and
//! enqueues only repos whose digest differs from the one it last enqueued for, plus every repo
//! once per `recheck` (a day by default) so a permanently failing sync keeps being retried and a
//! lost state object heals. A source refusing us for good (authentication, not found) is
//! enqueued every time, so its sync records the failure at once; one that is unreachable for a
//! moment is asked again once, then left to the next re-check (measured: 32 probes at once
//! against one `git daemon` got connection resets, and enqueueing those turned an idle hour into
//! 363 needless syncs). The digests live in one object, `state/probe.json`.
//!
//! **Startup reconciliation**: the first tick that sees a configuration (by digest) enqueues
//! every repository once — after a deploy or a config change nothing waits for its interval.
//! A marker object (`state/config-seen/{digest}`) records that it happened; it is written after
//! the enqueue, so a crash in between repeats the reconciliation rather than skipping it (the
//! requests deduplicate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, SyncPolicy};
use crate::queue::{Queue, QueueError};
use crate::request::{SyncRequest, SyncTrigger};
use crate::store::{Condition, ObjectStore, StoreError};

/// The EventBridge schedule's period.
pub const TICK_SECS: u64 = 60;

/// The phase of a repository within its interval.
pub fn phase(repo: &str, interval: u64) -> u64 {
    crate::git::remote::fnv1a(repo.as_bytes()) % interval.max(1)
}

fn slot(t: u64, phase: u64, interval: u64) -> u64 {
    (t + phase) / interval.max(1)
}

/// Poll requests for the repos due in the tick ending at `now_secs`.
pub fn due(config: &Config, now_secs: u64, tick_secs: u64) -> Vec<SyncRequest> {
    let mut out = Vec::new();
    for (name, repo) in &config.repos {
        if repo.sync_policy == SyncPolicy::WebhookOnly {
            continue;
        }
        let interval = repo.poll_interval_secs;
        let p = phase(name, interval);
        let now_slot = slot(now_secs, p, interval);
        if now_slot != slot(now_secs.saturating_sub(tick_secs), p, interval) {
            out.push(SyncRequest::poll(name, now_slot));
        }
    }
    out
}

/// What a tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Poll requests enqueued.
    pub polled: usize,
    /// Repos whose refs the poller listed itself (probing only).
    pub probed: usize,
    /// Repos enqueued by startup reconciliation (0 unless the config is new).
    pub reconciled: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One tick: reconcile a new config, then enqueue what is due.
pub async fn tick(
    config: &Config,
    config_digest: &str,
    queue: &dyn Queue,
    store: &dyn ObjectStore,
    now_secs: u64,
) -> Result<Tick, PollError> {
    let mut report = Tick {
        reconciled: reconcile_new_config(config, config_digest, queue, store, now_secs).await?,
        ..Tick::default()
    };
    let due = due(config, now_secs, TICK_SECS);
    for chunk in due.chunks(10) {
        queue.send(chunk).await?;
    }
    report.polled = due.len();
    Ok(report)
}

/// Enqueue every repo once if this configuration was never seen. Returns how many.
async fn reconcile_new_config(
    config: &Config,
    config_digest: &str,
    queue: &dyn Queue,
    store: &dyn ObjectStore,
    now_secs: u64,
) -> Result<usize, PollError> {
    let marker = format!("state/config-seen/{config_digest}");
    if store.get(&marker).await?.is_none() {
        let all: Vec<SyncRequest> = config
            .repos
            .keys()
            .map(|name| {
                SyncRequest::new(
                    name,
                    SyncTrigger::Manual {
                        requested_by: "reconcile".into(),
                        id: format!("reconcile-{config_digest}"),
                    },
                )
            })
            .collect();
        for chunk in all.chunks(10) {
            queue.send(chunk).await?;
        }
        match store
            .put(&marker, now_secs.to_string().into_bytes(), Condition::IfAbsent)
            .await
        {
            Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            repos = all.len(),
            digest = config_digest,
            "new configuration: reconciled every repository"
        );
        return Ok(all.len());
    }
    Ok(0)
}

/// Where the prober keeps what it last enqueued for.
pub const PROBE_KEY: &str = "state/probe.json";

/// How probing behaves.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    /// `ls-remote`s in flight at once.
    pub concurrency: usize,
    /// Enqueue a repo at least this often even if its refs did not change.
    pub recheck: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            concurrency: 32,
            recheck: Duration::from_secs(24 * 3600),
        }
    }
}

/// `state/probe.json`: per repo, the refs digest last enqueued for and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeState {
    pub repos: BTreeMap<String, Probed>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probed {
    pub digest: Option<String>,
    pub enqueued_at: u64,
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

/// One probing tick: reconcile a new config; list the due repos' refs; enqueue the changed ones
/// (and the ones due a re-check, and the ones that could not be listed).
pub async fn probe_tick(
    config: &Config,
    config_digest: &str,
    queue: &dyn Queue,
    store: &dyn ObjectStore,
    now_secs: u64,
    options: ProbeOptions,
) -> Result<Tick, PollError> {
    let mut report = Tick {
        reconciled: reconcile_new_config(config, config_digest, queue, store, now_secs).await?,
        ..Tick::default()
    };
    let due = due(config, now_secs, TICK_SECS);
    if due.is_empty() {
        return Ok(report);
    }
    let saved = store.get(PROBE_KEY).await?;
    let mut state: ProbeState = saved
        .as_ref()
        .and_then(|o| serde_json::from_slice(&o.body).ok())
        .unwrap_or_default();
    let listings = list_all(config, &due, options.concurrency).await;
    report.probed = due.len();
    let mut enqueue = Vec::new();
    for (request, listing) in due.into_iter().zip(listings) {
        let last = state.repos.get(&request.repo);
        let stale = last.is_none_or(|l| now_secs.saturating_sub(l.enqueued_at) >= options.recheck.as_secs());
        let (go, digest) = match listing {
            Listing::Refs(d) => (stale || last.is_none_or(|l| l.digest.as_ref() != Some(&d)), Some(d)),
            Listing::Unreachable => (stale, None),
            Listing::Refused => (true, None),
        };
        if go {
            state.repos.insert(
                request.repo.clone(),
                Probed {
                    digest,
                    enqueued_at: now_secs,
                },
            );
            enqueue.push(request);
        }
    }
    // Forget repos that are no longer configured.
    state.repos.retain(|name, _| config.repos.contains_key(name));
    for chunk in enqueue.chunks(10) {
        queue.send(chunk).await?;
    }
    report.polled = enqueue.len();
    let body = serde_json::to_vec(&state).expect("probe state serialises");
    if saved.as_ref().map(|o| &o.body) != Some(&body) {
        store.put(PROBE_KEY, body, Condition::Always).await?;
    }
    Ok(report)
}

/// What probing a source found.
enum Listing {
    Refs(String),
    /// A transient failure, twice.
    Unreachable,
    /// A permanent failure (authentication, not found, invalid).
    Refused,
}

/// `ls-remote` each due repo's source (bounded concurrency, off the async executor), asking
/// once more after a transient failure.
async fn list_all(config: &Config, due: &[SyncRequest], concurrency: usize) -> Vec<Listing> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(due.len());
    for request in due {
        let repo = &config.repos[&request.repo];
        let (source, patterns, permits) = (repo.source.clone(), repo.refs.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            for attempt in 0..2 {
                let (s, p) = (source.clone(), patterns.clone());
                match tokio::task::spawn_blocking(move || crate::git::ls_remote(&s, &p)).await {
                    Ok(Ok(refs)) => return Listing::Refs(refs_digest(&refs)),
                    Ok(Err(e)) if !e.is_transient() => {
                        tracing::warn!(error = %e, "poll probe: source refused");
                        return Listing::Refused;
                    }
                    Ok(Err(e)) => tracing::info!(error = %e, attempt, "poll probe: source unreachable"),
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Listing::Unreachable
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or(Listing::Unreachable));
    }
    out
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
        let start = 1_800_000_000u64;
        let mut per_repo: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_minute = Vec::new();
        let mut slots = std::collections::HashSet::new();
        for minute in 1..=60 {
            let due = due(&c, start + minute * 60, 60);
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
        let t = 1_800_000_123;
        let a: Vec<_> = due(&c, t, 60).iter().map(SyncRequest::dedup_id).collect();
        let b: Vec<_> = due(&c, t, 60).iter().map(SyncRequest::dedup_id).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn ten_thousand_repos_plan_fast() {
        let c = config(10_000, 300);
        let started = std::time::Instant::now();
        let n = due(&c, 1_800_000_000, 60).len();
        assert!(n > 0);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
