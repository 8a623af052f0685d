//! `SyncManager`: the one sync algorithm, shared by the sync Lambda and the local server.
//!
//! It reads like the design's diagram, per repository:
//!
//! ```text
//! policy → manifest → ls-remote source → (unchanged? done: no-op, nothing written)
//!        → lease → status Syncing → restore cache → fetch → guard / prune / backups
//!        → commit cache → push each target (commit what landed) → status → metrics
//!        → notify → release
//! ```
//!
//! * [`plan`] holds the pure decisions (no-op, static commit, guard, backups, batch sizes);
//!   `run` the checkpointed work under the lease; `target` one target's push.
//!
//! * A batch is **coalesced**: ten requests for one repo make one sync (all triggers counted).
//! * **Policy** is applied again here (the config may have changed since the trigger was born).
//! * **No-op**: if the source's refs equal the manifest's and every target is known to have
//!   them, nothing is fetched, pushed or written — the common case of a poll.
//! * A webhook that names the pushed commit ("static commit") and finds it already recorded on
//!   the source and every target is a no-op without even asking the source.
//! * **No commit is lost silently**: a tip the source force-pushed or deleted is kept in the
//!   cache as `refs/gitferry/overwritten/{ref}/{unix-ms}` for the retention period, listed in
//!   status and in the notification.
//! * The **mass-deletion guard** holds back a prune that would delete more than
//!   `max_delete_fraction` of the refs (an emptied or mis-pointed source), and alerts.
//! * Each **target** succeeds or fails on its own; refs a target rejects or that diverged are
//!   isolated per ref.
//! * A **deadline** (from the caller: the Lambda context) is honoured *inside* fetch and push:
//!   they stop shortly before it, a terminal status is recorded (`interrupted`), and what was
//!   committed stays: the request is continued ([`Verdict::Continue`]) rather than restarted.
//!   A first mirror too big for one invocation goes in batches of refs (see `run`).

mod lfs;
pub mod plan;
mod run;
mod target;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::lease::Lease;
use crate::cache::{CacheError, RepoCache, Snapshot};
use crate::clock::{now_ms, scaled};
use crate::config::{Config, RepoConfig};
use crate::git::refs::RefState;
use crate::git::{self, ErrorClass};
use crate::metrics::Metrics;
use crate::notify::{Event, Notifier};
use crate::request::{SyncRequest, TriggerKind};
use crate::status::{Finish, RefIssue, RepoStatus, State, StatusBook, Transition, Transitions};
use crate::store::ObjectStore;
use run::{Interrupt, Run, Work, WorkStats};

/// Tunables of a [`SyncManager`].
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Local directory for bare repositories (`/tmp/gitferry` on Lambda).
    pub work_dir: PathBuf,
    /// Who we are in leases (Lambda request id, host:pid…).
    pub owner: String,
    pub lease_ttl: Duration,
    /// Do not start a phase with less time than this before the deadline, and stop transfers
    /// in flight this long before it (the time to record the status and release the lease).
    pub deadline_margin: Duration,
    /// Keep the local work directory under this size (LRU eviction).
    pub max_local_bytes: u64,
    /// Orphaned pack objects younger than this are left alone ([`crate::cache::ORPHAN_AGE`]).
    pub orphan_age: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            work_dir: std::env::temp_dir().join("gitferry"),
            owner: format!("{}:{}", hostname(), std::process::id()),
            lease_ttl: Duration::from_secs(90),
            deadline_margin: Duration::from_secs(15),
            max_local_bytes: 8 << 30,
            orphan_age: crate::cache::ORPHAN_AGE,
        }
    }
}

impl SyncOptions {
    /// The deadline margin as this process runs it: scaled, but at least half a second —
    /// stopping and recording a status take real time whatever the time scale.
    pub fn margin(&self) -> Duration {
        crate::clock::scaled_at_least(self.deadline_margin, Duration::from_millis(500))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gitferry".into())
}

/// What became of one request of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handled (synced, no-op, skipped, or failed permanently and recorded): acknowledge it.
    Done,
    /// Failed transiently: give it back to the queue.
    Retry(String),
    /// Stopped at the deadline after committing `generation`: queue a continuation.
    Continue { generation: u64 },
}

/// What became of one repository of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum RepoOutcome {
    /// Not configured, or no trigger the repo's policy follows.
    Skipped(String),
    /// Nothing changed: nothing fetched, pushed or written.
    NoOp,
    /// Synced; `status` is what was recorded (it may be `Failed` for some targets).
    Synced(Box<RepoStatus>),
    /// Stopped at the deadline (or a shutdown) with `status` recorded as `Interrupted`;
    /// `committed`: the cache generation it saved (`None`: no progress).
    Interrupted {
        status: Box<RepoStatus>,
        committed: Option<u64>,
    },
    /// Could not finish; `transient` decides whether the requests are retried.
    Failed { error: String, transient: bool },
}

/// One repository's part of a batch.
#[derive(Clone, Debug)]
pub struct RepoReport {
    pub repo: String,
    pub triggers: Vec<TriggerKind>,
    pub outcome: RepoOutcome,
}

/// The result of [`SyncManager::handle_batch`].
#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    /// One per input request, in input order.
    pub verdicts: Vec<Verdict>,
    pub repos: Vec<RepoReport>,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct SyncManager {
    config: Arc<Config>,
    /// The effective repository set (configured ∪ discovered).
    catalog: crate::accounts::Catalog,
    store: Arc<dyn ObjectStore>,
    status: StatusBook,
    notifier: Notifier,
    metrics: Metrics,
    options: SyncOptions,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

/// An error on the way, with its class.
#[derive(Debug)]
struct Failure {
    message: String,
    class: ErrorClass,
    /// Not an error: the deadline (or a shutdown) stopped the work.
    interrupted: bool,
}

impl Failure {
    fn interrupted(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            class: ErrorClass::Transient,
            interrupted: true,
        }
    }
}

impl From<CacheError> for Failure {
    fn from(e: CacheError) -> Failure {
        Failure {
            class: if e.is_transient() {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            },
            message: e.to_string(),
            interrupted: false,
        }
    }
}

impl From<git::Error> for Failure {
    fn from(e: git::Error) -> Failure {
        Failure {
            class: e.class(),
            interrupted: matches!(e, git::Error::Interrupted),
            message: e.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Failure {
        CacheError::from(e).into()
    }
}

impl SyncManager {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn ObjectStore>,
        notifier: Notifier,
        metrics: Metrics,
        options: SyncOptions,
    ) -> SyncManager {
        SyncManager {
            status: StatusBook::new(store.clone()),
            catalog: crate::accounts::Catalog::new(config.clone(), store.clone()),
            config,
            store,
            notifier,
            metrics,
            options,
            shutdown: None,
        }
    }

    /// Stop starting new phases once `shutdown` turns true (a terminal status is still
    /// written, and the request is retried after the restart).
    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> SyncManager {
        self.shutdown = Some(shutdown);
        self
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Share the effective repository set with the rest of the process.
    pub fn with_catalog(mut self, catalog: crate::accounts::Catalog) -> SyncManager {
        self.catalog = catalog;
        self
    }

    pub fn catalog(&self) -> &crate::accounts::Catalog {
        &self.catalog
    }

    pub fn status_book(&self) -> &StatusBook {
        &self.status
    }

    /// Handle a batch: coalesce by repository (first-seen order), sync each once, and say per
    /// request whether to acknowledge or retry it. Repos not started before the deadline are
    /// retried.
    pub async fn handle_batch(&self, requests: &[SyncRequest], deadline: Instant) -> BatchOutcome {
        let mut order: Vec<&str> = Vec::new();
        let mut by_repo: HashMap<&str, Vec<&SyncRequest>> = HashMap::new();
        for r in requests {
            if !by_repo.contains_key(r.repo.as_str()) {
                order.push(&r.repo);
            }
            by_repo.entry(&r.repo).or_default().push(r);
        }
        let mut verdict_by_repo: HashMap<&str, Verdict> = HashMap::new();
        let mut out = BatchOutcome::default();
        for repo in order {
            let group = &by_repo[repo];
            let outcome = if self.time_left(deadline) {
                self.sync_repo(repo, group, deadline).await
            } else {
                RepoOutcome::Failed {
                    error: "deadline reached before this repository could start".into(),
                    transient: true,
                }
            };
            let verdict = verdict_of(&outcome);
            verdict_by_repo.insert(repo, verdict);
            out.repos.push(RepoReport {
                repo: repo.to_owned(),
                triggers: group.iter().map(|r| r.trigger.kind()).collect(),
                outcome,
            });
        }
        out.verdicts = requests
            .iter()
            .map(|r| verdict_by_repo[r.repo.as_str()].clone())
            .collect();
        out
    }

    fn time_left(&self, deadline: Instant) -> bool {
        let stopping = self.shutdown.as_ref().is_some_and(|s| *s.borrow());
        !stopping && deadline.saturating_duration_since(Instant::now()) > self.options.margin()
    }

    /// The requests the repo's policy follows (the others are counted as skipped), with their
    /// queue lag recorded.
    fn followed<'r>(&self, config: &RepoConfig, requests: &[&'r SyncRequest]) -> Vec<&'r SyncRequest> {
        let repo = config.name.as_str();
        let now = now_ms();
        let (followed, skipped): (Vec<&SyncRequest>, Vec<&SyncRequest>) =
            requests.iter().copied().partition(|r| config.follows(r.trigger.kind()));
        for r in skipped {
            tracing::info!(repo, trigger = r.trigger.kind().as_str(), policy = ?config.sync_policy, "skipped by sync policy");
            self.metrics.sync(repo, r.trigger.kind().as_str(), "skipped");
        }
        for r in &followed {
            let lag_ms = r.lag_ms(now);
            // One line per request taken: traces a delivery to the sync that served it.
            tracing::info!(repo, request = %r.dedup_id(), lag_ms, "request taken");
            self.metrics.queue_lag(repo, r.trigger.kind().as_str(), lag_ms);
        }
        followed
    }

    /// A queued "discover this account now" (an account webhook's repository event): list the
    /// account, then mirror what is new in the same run. What the deadline leaves unsynced the
    /// poller enqueues (never confirmed mirrored).
    async fn discover_now(&self, account: &str, deadline: Instant) -> RepoOutcome {
        let Some(config) = self.catalog.base().accounts.get(account).cloned() else {
            tracing::warn!(
                account,
                "discovery requested for an account that is not configured; dropped"
            );
            return RepoOutcome::Skipped("account not configured".into());
        };
        let failed = |e: crate::store::StoreError| RepoOutcome::Failed {
            error: format!("discovering account {account}: {e}"),
            transient: true,
        };
        let loaded = match crate::accounts::AccountState::load(self.store.as_ref(), account).await {
            Ok(l) => l,
            Err(e) => return failed(e),
        };
        let mut tick = crate::accounts::Discovery::default();
        let notifier = Some(&self.notifier);
        let found =
            crate::accounts::discover_account(&self.catalog, notifier, &config, loaded, now_ms(), deadline, &mut tick)
                .await;
        let requests = match found {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        tracing::info!(account, ?tick, "account discovered on a webhook");
        for r in &requests {
            if !self.time_left(deadline) {
                break;
            }
            Box::pin(self.sync_repo(&r.repo, &[r], deadline)).await;
        }
        RepoOutcome::NoOp
    }

    /// Sync one repository for the given (coalesced) requests.
    pub async fn sync_repo(&self, repo: &str, requests: &[&SyncRequest], deadline: Instant) -> RepoOutcome {
        if let Some(account) = crate::accounts::discovery_of(repo) {
            return self.discover_now(account, deadline).await;
        }
        let (config, followed) = match self.admit(repo, requests).await {
            Ok(admitted) => admitted,
            Err(skipped) => return skipped,
        };
        let config = &config;
        let primary = primary(&followed);
        let count = |outcome: &str| {
            for r in &followed {
                self.metrics.sync(repo, r.trigger.kind().as_str(), outcome);
            }
        };

        let cache = RepoCache::new(self.store.clone(), &self.options.work_dir, repo);
        let snapshot = match cache.load().await {
            Ok(s) => s,
            Err(e) => {
                count("failed");
                return self.fail_before_start(repo, primary, e.into()).await;
            }
        };
        // Static commit: every trigger names a commit the manifest already has everywhere.
        if followed
            .iter()
            .all(|r| plan::static_commit_recorded(&r.trigger, &snapshot, config))
        {
            tracing::info!(repo, "webhook commit already mirrored everywhere: no-op");
            return self.noop(repo, primary, &count).await;
        }
        // Latest commit: ask the source.
        let (source, patterns) = (config.source.clone(), config.refs.clone());
        let wiki = config.discovered.as_ref().is_some_and(|o| o.wiki);
        let listed = blocking("listing the source's refs", move || {
            match git::ls_remote(&source, &patterns) {
                // Wiki enabled, no page written yet: no wiki repository, nothing to mirror.
                Err(git::Error::NotFound { .. }) if wiki => Ok(None),
                listed => listed.map(Some),
            }
        });
        let advertised = match listed.await {
            Ok(Some(a)) => a,
            Ok(None) => {
                tracing::info!(repo, "the source has no wiki repository yet: nothing to mirror");
                return self.noop(repo, primary, &count).await;
            }
            Err(f) => {
                count("failed");
                return self.fail_before_start(repo, primary, f).await;
            }
        };
        if plan::is_noop(&advertised, &snapshot, config) {
            tracing::debug!(
                repo,
                refs = advertised.len(),
                "source unchanged and targets up to date: no-op"
            );
            return self.noop(repo, primary, &count).await;
        }

        let started = Instant::now();
        let outcome = self
            .sync_with_lease(config, &cache, snapshot, advertised, primary, deadline)
            .await;
        self.record_metrics(repo, &outcome, started.elapsed(), count);
        evict(&self.options, &cache);
        repo_outcome(outcome)
    }

    /// The repository's configuration and the requests its policy follows; `Err` holds the
    /// outcome when there is nothing to sync (not configured, frozen, or no trigger followed).
    async fn admit<'r>(
        &self,
        repo: &str,
        requests: &[&'r SyncRequest],
    ) -> Result<(RepoConfig, Vec<&'r SyncRequest>), RepoOutcome> {
        let Some(config) = self.catalog.repo(repo).await else {
            tracing::warn!(repo, "request for a repository that is not configured; dropped");
            self.count_skipped(repo, requests);
            return Err(RepoOutcome::Skipped("not configured".into()));
        };
        if let Some(why) = config.frozen_because() {
            // Accounts never delete: a vanished or archived source keeps its mirror as it is.
            tracing::info!(repo, why, "not synced: the source is gone");
            self.count_skipped(repo, requests);
            return Err(RepoOutcome::Skipped(why));
        }
        let followed = self.followed(&config, requests);
        if followed.is_empty() {
            return Err(RepoOutcome::Skipped(format!(
                "sync policy {:?} follows none of these triggers",
                config.sync_policy
            )));
        }
        Ok((config, followed))
    }

    fn count_skipped(&self, repo: &str, requests: &[&SyncRequest]) {
        for r in requests {
            self.metrics.sync(repo, r.trigger.kind().as_str(), "skipped");
        }
    }

    /// Nothing to do: counted as a no-op, and the status settled if it says otherwise.
    async fn noop(&self, repo: &str, primary: &SyncRequest, count: impl Fn(&str)) -> RepoOutcome {
        count("noop");
        self.settle_noop(repo, primary).await;
        RepoOutcome::NoOp
    }

    /// Sync outcome and work metrics. An interrupted sync is counted when its continuation
    /// finishes; only its bytes and refs count now.
    fn record_metrics(&self, repo: &str, outcome: &Result<Synced, Failure>, took: Duration, count: impl Fn(&str)) {
        let (label, stats) = match outcome {
            Ok(s) if s.interrupted => (None, s.stats),
            Ok(s) if s.status.error_class.is_none() => (Some("success"), s.stats),
            Ok(s) => (Some("failed"), s.stats),
            Err(_) => (Some("failed"), WorkStats::default()),
        };
        if let Some(label) = label {
            count(label);
        }
        self.metrics.sync_work(
            repo,
            label,
            took.as_millis() as u64,
            stats.refs_changed,
            stats.fetched,
            stats.pushed,
        );
    }

    /// A no-op found everything mirrored: if the stored status says otherwise (its worker died
    /// after the last push, before the status; or it failed and nothing needed doing since),
    /// record the success. Writes nothing in the common case.
    async fn settle_noop(&self, repo: &str, primary: &SyncRequest) {
        let stored = match self.status.stale_after_noop(repo).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => return tracing::warn!(repo, error = %e, "could not read the status after a no-op"),
        };
        tracing::info!(
            repo,
            state = stored.state.as_str(),
            "no-op: recording that everything is mirrored"
        );
        let begun = self
            .status
            .begin(repo, primary.trigger.kind(), primary.trigger.delivery_id(), None)
            .await;
        let Ok(previous) = begun else { return };
        let targets = self
            .catalog
            .repo(repo)
            .await
            .map(|c| {
                c.targets
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            crate::status::TargetFinish {
                                complete: true,
                                ..Default::default()
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let finish = Finish {
            targets,
            ..Finish::default()
        };
        if let Ok((status, transitions)) = self.status.finish(&previous, finish).await {
            let ok = Failure {
                message: String::new(),
                class: ErrorClass::Transient,
                interrupted: false,
            };
            self.notify_transitions(&status, &transitions, &ok).await;
        }
    }

    /// A failure before any state was touched: record it (so a broken source shows in status)
    /// and notify at the start of a streak.
    async fn fail_before_start(&self, repo: &str, primary: &SyncRequest, f: Failure) -> RepoOutcome {
        tracing::warn!(repo, error = %f.message, "sync failed before starting");
        if let Ok(previous) = self
            .status
            .begin(repo, primary.trigger.kind(), primary.trigger.delivery_id(), None)
            .await
        {
            let finish = Finish {
                error: Some((f.message.clone(), f.class)),
                ..Default::default()
            };
            if let Ok((status, transitions)) = self.status.finish(&previous, finish).await {
                self.notify_transitions(&status, &transitions, &f).await;
            }
        }
        RepoOutcome::Failed {
            error: f.message,
            transient: f.class == ErrorClass::Transient,
        }
    }

    /// Notify the start of a failure streak (the repo's, or a further target's while the repo
    /// was already failing) and a recovery — once each, never per failed attempt.
    async fn notify_transitions(&self, status: &RepoStatus, transitions: &Transitions, f: &Failure) {
        let repo = status.repo.as_str();
        match &transitions.repo {
            Transition::StartedFailing => {
                self.send(&Event::Failed {
                    repo: repo.to_owned(),
                    error: f.message.clone(),
                    transient: f.class == ErrorClass::Transient,
                })
                .await
            }
            Transition::StillFailing => {
                let newly: Vec<&String> = transitions
                    .targets
                    .iter()
                    .filter(|(_, t)| **t == Transition::StartedFailing)
                    .map(|(name, _)| name)
                    .collect();
                for name in newly {
                    let target = &status.targets[name];
                    self.send(&Event::Failed {
                        repo: repo.to_owned(),
                        error: format!("target {name}: {}", target.last_error.as_deref().unwrap_or("failed")),
                        transient: target.error_class == Some(ErrorClass::Transient),
                    })
                    .await
                }
            }
            Transition::Recovered { after_failures } => {
                self.send(&Event::Recovered {
                    repo: repo.to_owned(),
                    after_failures: *after_failures,
                })
                .await
            }
            Transition::Ok => {}
        }
    }

    async fn send(&self, event: &Event) {
        if self.notifier.is_configured() {
            let d = self.notifier.send(event).await;
            for _ in 0..d.failed {
                self.metrics.notification_failed(event.repo());
            }
        }
    }
    /// Everything that needs the lease. Always writes a terminal status once `Syncing` was
    /// written, and always releases the lease.
    async fn sync_with_lease(
        &self,
        config: &RepoConfig,
        cache: &RepoCache,
        snapshot: Snapshot,
        advertised: RefState,
        primary: &SyncRequest,
        deadline: Instant,
    ) -> Result<Synced, Failure> {
        let repo = config.name.as_str();
        let lease = Lease::acquire(
            self.store.clone(),
            repo,
            &self.options.owner,
            scaled(self.options.lease_ttl),
        )
        .await?;
        let record = lease.record().await;
        if let Some(previous_owner) = &record.reclaimed_from {
            tracing::warn!(repo, previous_owner, "lease reclaimed");
            self.metrics.lease_reclaimed(repo);
        }
        lease.start_heartbeat();
        let begun = self
            .status
            .begin(
                repo,
                primary.trigger.kind(),
                primary.trigger.delivery_id(),
                Some(record),
            )
            .await;
        let previous = match begun {
            Ok(p) => p,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e.into());
            }
        };
        let started_ms = now_ms();
        let stop_at = deadline.checked_sub(self.options.margin()).unwrap_or(deadline);
        let interrupt = Interrupt::arm(stop_at, self.shutdown.clone());
        let mut run = Run::new(
            config,
            cache,
            &lease,
            &self.options,
            &interrupt,
            deadline,
            advertised,
            snapshot,
        );
        let result = run.run().await;
        let work = run.work;
        let finish = finish_of(&result, &work, lease.record().await, primary.lag_ms(started_ms));
        let finished = self.status.finish(&previous, finish).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(repo, error = %e, "could not release lease (it will expire)");
        }
        let (status, transitions) = match finished {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(repo, error = %e, "could not record status");
                return Err(result.err().unwrap_or_else(|| e.into()));
            }
        };
        self.notify_sync(&status, &previous, &transitions, &work).await;
        let interrupted = matches!(&result, Err(f) if f.interrupted);
        match result {
            Err(f) if !interrupted && status.state != State::Failed => Err(f),
            Err(f) => {
                tracing::warn!(repo, error = %f.message, interrupted, "sync did not finish");
                Ok(Synced::of(status, work, interrupted))
            }
            Ok(()) => Ok(Synced::of(status, work, false)),
        }
    }

    /// Notify what changed, a guard that tripped, and failure/recovery transitions.
    async fn notify_sync(&self, status: &RepoStatus, previous: &RepoStatus, transitions: &Transitions, work: &Work) {
        let repo = status.repo.as_str();
        let diverged: Vec<RefIssue> = work.targets.values().flat_map(|t| t.diverged.clone()).collect();
        if !work.changes.is_empty() {
            self.send(&Event::Changed {
                repo: repo.to_owned(),
                changes: work.changes.clone(),
                overwritten: work.new_backups.clone(),
                diverged,
                lfs: work
                    .targets
                    .iter()
                    .filter_map(|(name, t)| Some((name.clone(), t.lfs.clone()?)))
                    .collect(),
            })
            .await;
        }
        if let Some(message) = &work.guard
            && previous.guard.as_ref() != Some(message)
        {
            self.send(&Event::GuardTripped {
                repo: repo.to_owned(),
                message: message.clone(),
            })
            .await;
        }
        let failure = Failure {
            message: status.last_error.clone().unwrap_or_default(),
            class: status.error_class.unwrap_or(ErrorClass::Permanent),
            interrupted: false,
        };
        self.notify_transitions(status, transitions, &failure).await;
    }
}

/// What a sync under the lease came to.
struct Synced {
    status: RepoStatus,
    stats: WorkStats,
    /// Stopped at the deadline (or a shutdown); `committed`: the generation it got to.
    interrupted: bool,
    committed: Option<u64>,
}

impl Synced {
    fn of(status: RepoStatus, work: Work, interrupted: bool) -> Synced {
        Synced {
            status,
            stats: work.stats,
            interrupted,
            committed: work.committed,
        }
    }
}

/// The request shown in status: a webhook's delivery id is the most useful to trace.
fn primary<'r>(followed: &[&'r SyncRequest]) -> &'r SyncRequest {
    followed
        .iter()
        .rev()
        .find(|r| r.trigger.kind() == TriggerKind::Webhook)
        .copied()
        .unwrap_or_else(|| followed.last().expect("not empty"))
}

/// A sync under the lease as the batch reports it.
fn repo_outcome(outcome: Result<Synced, Failure>) -> RepoOutcome {
    match outcome {
        Ok(s) if s.interrupted => RepoOutcome::Interrupted {
            status: Box::new(s.status),
            committed: s.committed,
        },
        Ok(s) => RepoOutcome::Synced(Box::new(s.status)),
        Err(f) => RepoOutcome::Failed {
            error: f.message,
            transient: f.class == ErrorClass::Transient,
        },
    }
}

/// What to tell the queue about a repository's requests.
fn verdict_of(outcome: &RepoOutcome) -> Verdict {
    match outcome {
        RepoOutcome::Failed { error, transient: true } => Verdict::Retry(error.clone()),
        RepoOutcome::Synced(s) if s.error_class == Some(ErrorClass::Transient) => {
            Verdict::Retry(s.last_error.clone().unwrap_or_default())
        }
        RepoOutcome::Interrupted {
            committed: Some(generation),
            ..
        } => Verdict::Continue {
            generation: *generation,
        },
        RepoOutcome::Interrupted { status, .. } => Verdict::Retry(status.last_error.clone().unwrap_or_default()),
        _ => Verdict::Done,
    }
}

/// The status record of a run's result.
fn finish_of(
    result: &Result<(), Failure>,
    work: &Work,
    lease: crate::cache::lease::LeaseRecord,
    queue_lag_ms: u64,
) -> Finish {
    let interrupted = result.as_ref().err().filter(|f| f.interrupted);
    Finish {
        error: result
            .as_ref()
            .err()
            .filter(|f| !f.interrupted)
            .map(|f| (f.message.clone(), f.class)),
        interrupted: interrupted.map(|f| progress(f, work)),
        changes: work.changes.clone(),
        source_refs: work.source_refs,
        targets: work.targets.clone(),
        overwritten: work.backups.clone(),
        guard: work.guard.clone(),
        lease: Some(lease),
        cache_rebuilt: work.cache_rebuilt.clone(),
        queue_lag_ms: Some(queue_lag_ms),
    }
}

/// "interrupted — resuming": how far an interrupted run got.
fn progress(f: &Failure, work: &Work) -> String {
    let how_far = if work.refs_total > 0 {
        format!("; {} of {} refs in the cache", work.refs_done, work.refs_total)
    } else {
        String::new()
    };
    match work.committed {
        Some(_) => format!("interrupted — resuming ({}{how_far}; progress saved)", f.message),
        None => format!("interrupted — retrying ({}{how_far}; nothing new saved)", f.message),
    }
}

fn evict(options: &SyncOptions, cache: &RepoCache) {
    let removed = crate::cache::evict_lru(&options.work_dir, options.max_local_bytes, &[cache.path()]);
    for p in removed {
        tracing::info!(path = %p.display(), "evicted local cache copy (disk budget)");
    }
}

/// Run blocking git work off the async executor. A panic there is a bug: reported as a
/// permanent failure naming the phase, never retried as if the network were to blame.
async fn blocking<T: Send + 'static>(
    phase: &str,
    f: impl FnOnce() -> Result<T, git::Error> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Failure::from),
        Err(e) => {
            let panic = e.try_into_panic().ok();
            let text = panic
                .as_ref()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                })
                .unwrap_or_else(|| "the task was cancelled".into());
            tracing::error!(phase, panic = %text, "internal error in a git task");
            Err(Failure {
                message: format!("internal error while {phase} (a gitferry bug, please report it): {text}"),
                class: ErrorClass::Permanent,
                interrupted: false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_git_task_is_a_permanent_failure() {
        let failure = blocking("testing", || -> Result<(), git::Error> { panic!("boom in a git task") })
            .await
            .unwrap_err();
        assert_eq!(failure.class, ErrorClass::Permanent);
        assert!(failure.message.contains("boom in a git task"), "{}", failure.message);
    }
}
