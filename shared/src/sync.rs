//! `SyncManager`: the one sync algorithm, shared by the sync Lambda and the local server.
//!
//! It reads like the design's diagram, per repository:
//!
//! ```text
//! policy → manifest → ls-remote source → (unchanged? done: no-op, nothing written)
//!        → lease → status Syncing → restore cache → fetch → guard / prune / backups
//!        → push each target → commit cache → status → metrics → notify → release
//! ```
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
//! * A **deadline** (from the caller: the Lambda context) stops new work in time to record a
//!   terminal status; such a stop is transient, so the queue retries it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use gix::ObjectId;

use crate::cache::lease::Lease;
use crate::cache::{CacheError, NextState, RepoCache, Snapshot};
use crate::config::{Config, Divergence, RepoConfig};
use crate::git::refs::{DeltaKind, OWN_REFS, RefDelta, RefState};
use crate::git::repo::{self, LocalUpdate, Peel};
use crate::git::{self, ErrorClass, FetchOptions, PushOptions, RefPatterns};
use crate::metrics::Metrics;
use crate::notify::{Event, Notifier};
use crate::request::{SyncRequest, SyncTrigger, TriggerKind, now_ms};
use crate::status::{Backup, Finish, RefIssue, RepoStatus, StatusBook, TargetFinish, Transition};
use crate::store::ObjectStore;

/// Tunables of a [`SyncManager`].
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Local directory for bare repositories (`/tmp/gitferry` on Lambda).
    pub work_dir: PathBuf,
    /// Who we are in leases (Lambda request id, host:pid…).
    pub owner: String,
    pub lease_ttl: Duration,
    /// Do not start a phase with less time than this before the deadline.
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
}

impl Failure {
    fn transient(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            class: ErrorClass::Transient,
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
        }
    }
}

impl From<git::Error> for Failure {
    fn from(e: git::Error) -> Failure {
        Failure {
            class: e.class(),
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
            let verdict = match &outcome {
                RepoOutcome::Failed { error, transient: true } => Verdict::Retry(error.clone()),
                RepoOutcome::Synced(s) if s.error_class == Some(ErrorClass::Transient) => {
                    Verdict::Retry(s.last_error.clone().unwrap_or_default())
                }
                _ => Verdict::Done,
            };
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
        !stopping && deadline.saturating_duration_since(Instant::now()) > self.options.deadline_margin
    }

    /// Sync one repository for the given (coalesced) requests.
    pub async fn sync_repo(&self, repo: &str, requests: &[&SyncRequest], deadline: Instant) -> RepoOutcome {
        let now = now_ms();
        let Some(config) = self.config.repo(repo) else {
            tracing::warn!(repo, "request for a repository that is not configured; dropped");
            for r in requests {
                self.metrics.sync(repo, r.trigger.kind().as_str(), "skipped");
            }
            return RepoOutcome::Skipped("not configured".into());
        };
        let followed: Vec<&SyncRequest> = requests
            .iter()
            .copied()
            .filter(|r| config.follows(r.trigger.kind()))
            .collect();
        for r in requests.iter().filter(|r| !config.follows(r.trigger.kind())) {
            tracing::info!(repo, trigger = r.trigger.kind().as_str(), policy = ?config.sync_policy, "skipped by sync policy");
            self.metrics.sync(repo, r.trigger.kind().as_str(), "skipped");
        }
        if followed.is_empty() {
            return RepoOutcome::Skipped(format!(
                "sync policy {:?} follows none of these triggers",
                config.sync_policy
            ));
        }
        for r in &followed {
            let lag_ms = r.lag_ms(now);
            // One line per request taken: traces a delivery to the sync that served it.
            tracing::info!(repo, request = %r.dedup_id(), lag_ms, "request taken");
            self.metrics.queue_lag(repo, r.trigger.kind().as_str(), lag_ms);
        }
        // The trigger shown in status: a webhook's delivery id is the most useful to trace.
        let primary = followed
            .iter()
            .rev()
            .find(|r| r.trigger.kind() == TriggerKind::Webhook)
            .unwrap_or_else(|| followed.last().expect("not empty"));
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
            .all(|r| static_commit_recorded(&r.trigger, &snapshot, config))
        {
            tracing::info!(repo, "webhook commit already mirrored everywhere: no-op");
            count("noop");
            return RepoOutcome::NoOp;
        }

        // Latest commit: ask the source.
        let source = config.source.clone();
        let patterns = config.refs.clone();
        let advertised = match blocking(move || git::ls_remote(&source, &patterns)).await {
            Ok(a) => a,
            Err(f) => {
                count("failed");
                return self.fail_before_start(repo, primary, f).await;
            }
        };
        if is_noop(&advertised, &snapshot, config) {
            tracing::debug!(
                repo,
                refs = advertised.len(),
                "source unchanged and targets up to date: no-op"
            );
            count("noop");
            return RepoOutcome::NoOp;
        }

        let started = Instant::now();
        let outcome = self.sync_with_lease(config, &cache, snapshot, primary, deadline).await;
        let (label, fetched, pushed, changed) = match &outcome {
            Ok((status, stats)) => (
                if status.error_class.is_none() {
                    "success"
                } else {
                    "failed"
                },
                stats.fetched,
                stats.pushed,
                stats.refs_changed,
            ),
            Err(_) => ("failed", 0, 0, 0),
        };
        count(label);
        self.metrics.sync_work(
            repo,
            label,
            started.elapsed().as_millis() as u64,
            changed,
            fetched,
            pushed,
        );
        evict(&self.options, &cache);
        match outcome {
            Ok((status, _)) => RepoOutcome::Synced(Box::new(status)),
            Err(f) => RepoOutcome::Failed {
                error: f.message,
                transient: f.class == ErrorClass::Transient,
            },
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
            if let Ok((_, transition)) = self.status.finish(&previous, finish).await {
                self.notify_transition(repo, &transition, &f).await;
            }
        }
        RepoOutcome::Failed {
            error: f.message,
            transient: f.class == ErrorClass::Transient,
        }
    }

    async fn notify_transition(&self, repo: &str, transition: &Transition, f: &Failure) {
        match transition {
            Transition::StartedFailing => {
                self.send(&Event::Failed {
                    repo: repo.to_owned(),
                    error: f.message.clone(),
                    transient: f.class == ErrorClass::Transient,
                })
                .await
            }
            Transition::Recovered { after_failures } => {
                self.send(&Event::Recovered {
                    repo: repo.to_owned(),
                    after_failures: *after_failures,
                })
                .await
            }
            _ => {}
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
        primary: &SyncRequest,
        deadline: Instant,
    ) -> Result<(RepoStatus, WorkStats), Failure> {
        let repo = config.name.as_str();
        let lease = Lease::acquire(self.store.clone(), repo, &self.options.owner, self.options.lease_ttl).await?;
        let record = lease.record().await;
        if let Some(previous_owner) = &record.reclaimed_from {
            tracing::warn!(repo, previous_owner, "lease reclaimed");
            self.metrics.lease_reclaimed(repo);
        }
        lease.start_heartbeat();
        let previous = match self
            .status
            .begin(
                repo,
                primary.trigger.kind(),
                primary.trigger.delivery_id(),
                Some(record),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e.into());
            }
        };

        let mut work = Work::default();
        let result = self.work(config, cache, snapshot, &lease, deadline, &mut work).await;
        let finish = Finish {
            error: result.as_ref().err().map(|f| (f.message.clone(), f.class)),
            changes: work.changes.clone(),
            source_refs: work.source_refs,
            targets: work.targets.clone(),
            overwritten: work.backups.clone(),
            guard: work.guard.clone(),
            lease: Some(lease.record().await),
        };
        let finished = self.status.finish(&previous, finish).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(repo, error = %e, "could not release lease (it will expire)");
        }
        let (status, transition) = match finished {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(repo, error = %e, "could not record status");
                return Err(result.err().unwrap_or_else(|| e.into()));
            }
        };

        // Notify: what changed, a guard that tripped, and failure/recovery transitions.
        let diverged: Vec<RefIssue> = work.targets.values().flat_map(|t| t.diverged.clone()).collect();
        if !work.changes.is_empty() {
            self.send(&Event::Changed {
                repo: repo.to_owned(),
                changes: work.changes.clone(),
                overwritten: work.new_backups.clone(),
                diverged,
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
        };
        self.notify_transition(repo, &transition, &failure).await;
        match result {
            Ok(()) => Ok((status, work.stats)),
            Err(f) if status.state == crate::status::State::Failed => {
                tracing::warn!(repo, error = %f.message, "sync failed");
                Ok((status, work.stats))
            }
            Err(f) => Err(f),
        }
    }

    /// The sync proper, under the lease. Fills `work` as it goes so a failure half-way still
    /// records what happened.
    async fn work(
        &self,
        config: &RepoConfig,
        cache: &RepoCache,
        snapshot: Snapshot,
        lease: &Lease,
        deadline: Instant,
        work: &mut Work,
    ) -> Result<(), Failure> {
        let repo = config.name.as_str();
        let deadline_check = |phase: &str| -> Result<(), Failure> {
            if self.time_left(deadline) {
                Ok(())
            } else {
                Err(Failure::transient(format!(
                    "deadline reached (or shutting down) before {phase}; will retry"
                )))
            }
        };

        // Restore; a corrupt cache is rebuilt from the source instead of failing forever.
        deadline_check("restoring the cache")?;
        match cache.restore(&snapshot).await {
            Ok(_) => {}
            Err(CacheError::Corrupt { what }) => {
                tracing::error!(repo, %what, "cache is corrupt: rebuilding it from the source");
                cache.wipe_local()?;
                let path = cache.path().to_owned();
                blocking(move || repo::open_or_init_bare(&path).map(|_| ())).await?;
            }
            Err(e) => return Err(e.into()),
        }
        cache.invalidate_local()?;

        // Fetch (no prune yet: the guard decides) and back up overwritten tips.
        deadline_check("fetching")?;
        let path = cache.path().to_owned();
        let source = config.source.clone();
        let patterns = config.refs.clone();
        let fetched = blocking(move || {
            let r = repo::open(&path)?;
            git::mirror_fetch(
                &r,
                &source,
                &FetchOptions {
                    refs: patterns,
                    prune: false,
                },
                &AtomicBool::new(false),
            )
        })
        .await?;
        work.stats.fetched = fetched.bytes;
        work.source_refs = Some(fetched.source.len());
        let mut changes = fetched.deltas.clone();

        let path = cache.path().to_owned();
        let cached =
            blocking(move || repo::read_refs(&repo::open(&path)?, &RefPatterns::everything(), Peel::No)).await?;
        let in_scope: BTreeMap<String, ObjectId> = cached
            .ids()
            .into_iter()
            .filter(|(n, _)| config.refs.matches(n))
            .collect();
        let doomed: Vec<(String, ObjectId)> = in_scope
            .iter()
            .filter(|(n, _)| !fetched.source.refs.contains_key(*n))
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        let mut prune = config.prune;
        if prune && !doomed.is_empty() {
            let total = in_scope.len().max(1);
            let fraction = doomed.len() as f64 / total as f64;
            if fraction > config.max_delete_fraction {
                let message = format!(
                    "the source no longer has {} of {} refs ({:.0}% > max_delete_fraction {:.0}%); not deleting them anywhere until this is resolved",
                    doomed.len(),
                    total,
                    fraction * 100.0,
                    config.max_delete_fraction * 100.0
                );
                tracing::error!(repo, %message, "mass-deletion guard tripped");
                work.guard = Some(message);
                prune = false;
            }
        }
        let now = now_ms();
        let mut updates: Vec<LocalUpdate> = Vec::new();
        if prune {
            for (name, id) in &doomed {
                updates.push(LocalUpdate {
                    name: name.clone(),
                    old: Some(*id),
                    new: None,
                });
                changes.push(RefDelta {
                    name: name.clone(),
                    kind: DeltaKind::Deleted,
                    old: Some(*id),
                    new: None,
                });
            }
        }
        // Backups of overwritten tips, and expiry of old ones.
        let retention_ms = u64::from(config.overwritten_retention_days) * 86_400_000;
        let mut backups: BTreeMap<String, String> = BTreeMap::new();
        for (name, id) in cached.ids().iter().filter(|(n, _)| n.starts_with(OWN_REFS)) {
            let at = name.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            if now.saturating_sub(at) > retention_ms {
                updates.push(LocalUpdate {
                    name: name.clone(),
                    old: Some(*id),
                    new: None,
                });
            } else {
                backups.insert(name.clone(), id.to_string());
            }
        }
        for d in &changes {
            if matches!(d.kind, DeltaKind::Forced | DeltaKind::Deleted)
                && let Some(old) = d.old
            {
                let backup = backup_ref(&d.name, now);
                updates.push(LocalUpdate {
                    name: backup.clone(),
                    old: None,
                    new: Some(old),
                });
                backups.insert(backup.clone(), old.to_string());
                work.new_backups.push(Backup {
                    git_ref: d.name.clone(),
                    backup_ref: backup,
                    id: old.to_string(),
                    at: now,
                });
            }
        }
        if !updates.is_empty() {
            let path = cache.path().to_owned();
            blocking(move || {
                repo::apply_ref_updates(&repo::open(&path)?, &updates, None, "gitferry: prune and back up")
            })
            .await?;
        }
        changes.sort_by(|a, b| a.name.cmp(&b.name));
        work.changes = changes;
        work.backups = Some(
            backups
                .iter()
                .map(|(name, id)| Backup {
                    git_ref: backup_source(name),
                    backup_ref: name.clone(),
                    id: id.clone(),
                    at: name.rsplit('/').next().and_then(|t| t.parse().ok()).unwrap_or(0),
                })
                .collect(),
        );

        // Push each target on its own.
        let path = cache.path().to_owned();
        let patterns = config.refs.clone();
        let desired = blocking(move || repo::read_refs(&repo::open(&path)?, &patterns, Peel::No)).await?;
        let mut target_refs = snapshot.manifest.targets.clone();
        for target in &config.targets {
            let name = target.name.clone();
            let key = target.state_key();
            if let Err(f) =
                deadline_check(&format!("pushing to {name}")).and_then(|_| lease.check().map_err(Failure::from))
            {
                work.targets.insert(
                    name,
                    TargetFinish {
                        error: Some((f.message.clone(), f.class)),
                        ..Default::default()
                    },
                );
                return Err(f);
            }
            let last_known: Option<BTreeMap<String, ObjectId>> = (target.divergence == Divergence::Keep).then(|| {
                let recorded = &snapshot.manifest.targets;
                // Manifests written before targets were keyed by URL have them by name: read
                // that once, or every ref would look moved by someone else after the upgrade.
                recorded
                    .get(&key)
                    .or_else(|| recorded.get(&name))
                    .map(|refs| {
                        refs.iter()
                            .filter_map(|(n, id)| ObjectId::from_hex(id.as_bytes()).ok().map(|id| (n.clone(), id)))
                            .collect()
                    })
                    .unwrap_or_default()
            });
            let options = PushOptions {
                refs: config.refs.clone(),
                prune,
                atomic: false,
                keep_divergent: last_known.clone(),
            };
            let (path, remote, desired) = (cache.path().to_owned(), target.remote.clone(), desired.clone());
            let pushed = blocking(move || {
                let r = repo::open(&path)?;
                git::push(&r, &remote, &desired, &options, &AtomicBool::new(false))
            })
            .await;
            let finish = match pushed {
                Ok(outcome) => {
                    work.stats.pushed += outcome.bytes;
                    work.stats.refs_changed += outcome.applied().count();
                    let mut after = outcome.target_after();
                    // A withheld ref is recorded as we last knew it, not as the other writer
                    // left it: recording theirs would make it "known", and the next sync would
                    // overwrite it after all.
                    for d in &outcome.diverged {
                        match last_known.as_ref().and_then(|k| k.get(&d.name)) {
                            Some(id) => after.insert(d.name.clone(), *id),
                            None => after.remove(&d.name),
                        };
                    }
                    target_refs.insert(
                        key.clone(),
                        after.into_iter().map(|(n, id)| (n, id.to_string())).collect(),
                    );
                    TargetFinish {
                        error: None,
                        refs_changed: outcome.applied().count(),
                        rejected: outcome
                            .rejected()
                            .map(|r| RefIssue {
                                name: r.command.name.clone(),
                                reason: r.rejected.clone().unwrap_or_default(),
                            })
                            .collect(),
                        diverged: outcome
                            .diverged
                            .iter()
                            .map(|d| RefIssue {
                                name: d.name.clone(),
                                reason: format!(
                                    "moved on the target to {} (kept; source has {})",
                                    d.target.to_hex_with_len(8),
                                    d.wanted
                                        .map_or_else(|| "no such ref".into(), |w| w.to_hex_with_len(8).to_string())
                                ),
                            })
                            .collect(),
                    }
                }
                Err(f) => {
                    tracing::warn!(repo, target = %name, error = %f.message, "push failed");
                    TargetFinish {
                        error: Some((f.message, f.class)),
                        ..Default::default()
                    }
                }
            };
            work.targets.insert(name, finish);
        }
        // Forget targets that are no longer configured.
        target_refs.retain(|t, _| config.targets.iter().any(|c| &c.state_key() == t));

        // Commit the cache (compacting first if packs piled up).
        lease.check()?;
        cache.compact_if_needed(crate::cache::MAX_PACKS).await?;
        let committed = cache
            .commit(
                &snapshot,
                NextState {
                    source: fetched.source,
                    backups,
                    targets: target_refs,
                },
            )
            .await?;
        let generation = committed.snapshot.manifest.generation;
        if committed.written
            && (committed.packs_deleted > 0 || generation % crate::cache::GC_EVERY == 0)
            && lease.check().is_ok()
        {
            // Storage hygiene only: never fails the sync, and only while we hold the lease.
            if let Err(e) = cache
                .collect_garbage(&committed.snapshot.manifest, self.options.orphan_age)
                .await
            {
                tracing::warn!(repo, error = %e, "could not collect orphaned pack objects");
            }
        }
        tracing::info!(
            repo,
            generation,
            written = committed.written,
            packs_uploaded = committed.packs_uploaded,
            bytes_uploaded = committed.bytes_uploaded,
            "cache committed"
        );
        Ok(())
    }
}

#[derive(Default)]
struct Work {
    changes: Vec<RefDelta>,
    source_refs: Option<usize>,
    targets: BTreeMap<String, TargetFinish>,
    backups: Option<Vec<Backup>>,
    new_backups: Vec<Backup>,
    guard: Option<String>,
    stats: WorkStats,
}

#[derive(Default, Clone, Copy, Debug)]
struct WorkStats {
    fetched: u64,
    pushed: u64,
    refs_changed: usize,
}

/// `refs/heads/main` → `refs/gitferry/overwritten/heads/main/{ms}`.
fn backup_ref(name: &str, at_ms: u64) -> String {
    format!(
        "{OWN_REFS}overwritten/{}/{at_ms}",
        name.strip_prefix("refs/").unwrap_or(name)
    )
}

/// The inverse of [`backup_ref`] (without the time).
fn backup_source(backup: &str) -> String {
    let inner = backup
        .strip_prefix(OWN_REFS)
        .and_then(|r| r.strip_prefix("overwritten/"))
        .unwrap_or(backup);
    let without_time = inner.rsplit_once('/').map_or(inner, |(r, _)| r);
    format!("refs/{without_time}")
}

/// Source unchanged since the manifest, and every configured target known to have exactly the
/// source's refs.
fn is_noop(advertised: &RefState, snapshot: &Snapshot, config: &RepoConfig) -> bool {
    if snapshot.etag.is_none() || advertised.ids() != snapshot.manifest.source.ids() {
        return false;
    }
    let wanted: BTreeMap<String, String> = advertised
        .ids()
        .into_iter()
        .map(|(n, id)| (n, id.to_string()))
        .collect();
    config
        .targets
        .iter()
        .all(|t| snapshot.manifest.targets.get(&t.state_key()) == Some(&wanted))
}

/// A webhook naming a commit (`after` at `git_ref`) that the manifest already records on the
/// source and every target.
fn static_commit_recorded(trigger: &SyncTrigger, snapshot: &Snapshot, config: &RepoConfig) -> bool {
    let SyncTrigger::Webhook {
        after: Some(after),
        git_ref: Some(git_ref),
        ..
    } = trigger
    else {
        return false;
    };
    if snapshot.etag.is_none() || !config.refs.matches(git_ref) {
        return false;
    }
    let at_source = snapshot.manifest.source.refs.get(git_ref).map(|t| t.id.to_string());
    at_source.as_deref() == Some(after.as_str())
        && config.targets.iter().all(|t| {
            snapshot
                .manifest
                .targets
                .get(&t.state_key())
                .and_then(|r| r.get(git_ref))
                == Some(after)
        })
}

fn evict(options: &SyncOptions, cache: &RepoCache) {
    let removed = crate::cache::evict_lru(&options.work_dir, options.max_local_bytes, &[cache.path()]);
    for p in removed {
        tracing::info!(path = %p.display(), "evicted local cache copy (disk budget)");
    }
}

/// Run blocking git work off the async executor. A panic in it is a bug that the same input
/// would set off again: permanent, never retried (the engine's entry points already turn their
/// own panics into `git::Error::Panic`; this covers the local work around them).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, git::Error> + Send + 'static) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Failure::from),
        Err(e) if e.is_panic() => Err(Failure {
            message: format!(
                "internal error in a git task (a bug in gitferry, not retried): {}",
                git::guard::panic_message(e.into_panic().as_ref())
            ),
            class: ErrorClass::Permanent,
        }),
        Err(e) => Err(Failure {
            message: format!("git worker failed: {e}"),
            class: ErrorClass::Transient,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_refs_roundtrip() {
        let b = backup_ref("refs/heads/feature/x", 1700000000123);
        assert_eq!(b, "refs/gitferry/overwritten/heads/feature/x/1700000000123");
        assert_eq!(backup_source(&b), "refs/heads/feature/x");
        assert!(!RefPatterns::default().matches(&b));
    }

    #[tokio::test]
    async fn a_panicking_git_task_is_a_permanent_failure() {
        let failure = blocking(|| -> Result<(), git::Error> { panic!("boom in a git task") })
            .await
            .unwrap_err();
        assert_eq!(failure.class, ErrorClass::Permanent);
        assert!(failure.message.contains("boom in a git task"), "{}", failure.message);
    }
}
