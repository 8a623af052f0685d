//! Repository status: the single chokepoint for every status write.
//!
//! Following the hub/agent refactor's lesson (one `updateApplicationStatus` instead of four
//! divergent writers), nothing but [`StatusBook`] writes `status.json`, and it only knows two
//! transitions: [`StatusBook::begin`] (→ `Syncing`) and [`StatusBook::finish`] (→ `Success` or
//! `Failed`, per repository and per target). Streaks, last success, and what to notify are
//! derived here from the previous record, so the sync code cannot get them subtly wrong.
//!
//! A no-op sync does not come here at all: it writes nothing to the store.
//!
//! Readers ([`StatusBook::get`], [`StatusBook::all`]) see two things the stored record cannot
//! say by itself: a `syncing` record whose lease stopped heartbeating (the worker was killed:
//! time limit, out of memory, `kill -9`) reads as [`State::Stalled`], and `last_checked` includes
//! the poller's confirmations (`state/probe.json`), which are never written per repo.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cache::keys;
use crate::cache::lease::LeaseRecord;
use crate::clock::now_ms;
use crate::git::{ErrorClass, RefDelta};
use crate::request::TriggerKind;
use crate::store::{Condition, ObjectStore, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Configured but never synced.
    #[default]
    New,
    Syncing,
    Success,
    Failed,
    /// Stopped at its time limit (or a shutdown) after making progress; a continuation is
    /// queued.
    Interrupted,
    /// Shown, never stored: `Syncing`, but the lease stopped heartbeating — the worker died.
    /// The queue redelivers the request once its visibility timeout lapses.
    Stalled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Syncing => "syncing",
            State::Success => "success",
            State::Failed => "failed",
            State::Interrupted => "interrupted",
            State::Stalled => "stalled",
        }
    }
}

/// A ref the target refused, or left alone because it diverged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefIssue {
    pub name: String,
    pub reason: String,
}

/// One target's side of the last sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Every field defaults: statuses written by older versions (fewer fields) still load.
#[serde(default)]
pub struct TargetStatus {
    pub state: State,
    pub last_attempt_at: Option<u64>,
    pub last_success_at: Option<u64>,
    /// When the target was last confirmed to carry exactly the source's refs (a sync, or a
    /// poll probe finding the source unchanged since).
    pub last_checked: Option<u64>,
    pub last_error: Option<String>,
    pub error_class: Option<ErrorClass>,
    pub consecutive_failures: u32,
    /// Refs changed on the target by the last sync.
    pub refs_changed: usize,
    pub rejected: Vec<RefIssue>,
    /// Refs left as they are because someone else moved them (`divergence = "keep"`).
    pub diverged: Vec<RefIssue>,
    /// The LFS objects of the last sync, when it had any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lfs: Option<LfsCount>,
}

/// One target's Git LFS objects in a sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LfsCount {
    /// Objects the mirrored refs point to (new in this sync, or left from one before it).
    pub objects: u64,
    pub bytes: u64,
    /// Uploaded to this target (it had the others already).
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    /// Objects the source's LFS server does not have (their pointers are mirrored as they
    /// are), the first [`LFS_MISSING_SHOWN`] of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<crate::git::lfs::Missing>,
    /// How many the source lacks in all.
    #[serde(skip_serializing_if = "is_zero")]
    pub missing_count: usize,
    /// Why nothing was transferred (`lfs = "auto"` and a target without an LFS server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Missing LFS objects listed in a status (the count says how many there are).
pub const LFS_MISSING_SHOWN: usize = 20;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl LfsCount {
    /// What one target's LFS step did.
    pub fn of(summary: &crate::git::lfs::LfsSummary) -> LfsCount {
        LfsCount {
            objects: summary.objects,
            bytes: summary.bytes,
            uploaded: summary.uploaded,
            uploaded_bytes: summary.uploaded_bytes,
            missing: summary.missing.iter().take(LFS_MISSING_SHOWN).cloned().collect(),
            missing_count: summary.missing.len(),
            skipped: summary.skipped.clone(),
        }
    }

    /// This step's count added to an earlier step's of the same sync (a mirror in batches).
    pub fn after(mut self, earlier: Option<LfsCount>) -> LfsCount {
        if let Some(e) = earlier {
            self.objects += e.objects;
            self.bytes += e.bytes;
            self.uploaded += e.uploaded;
            self.uploaded_bytes += e.uploaded_bytes;
            self.missing_count += e.missing_count;
            let mut missing = e.missing;
            missing.append(&mut self.missing);
            missing.truncate(LFS_MISSING_SHOWN);
            self.missing = missing;
        }
        self
    }
}

/// A tip the source force-pushed or deleted, kept in the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub git_ref: String,
    pub backup_ref: String,
    pub id: String,
    pub at: u64,
}

/// Statuses read at once by [`StatusBook::all`].
pub const READ_AHEAD: usize = 64;

/// How many syncs [`History`] keeps.
pub const HISTORY: usize = 30;

/// One sync that changed something or did not succeed, for the repository page and its charts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncRecord {
    pub started_at: u64,
    pub finished_at: u64,
    pub duration_ms: u64,
    /// How long the request that started it waited in the queue.
    pub queue_lag_ms: Option<u64>,
    pub trigger: Option<TriggerKind>,
    /// `Success`, `Failed` or `Interrupted`.
    pub state: State,
    /// Refs that moved (the first ten are in `changes`).
    pub refs_changed: usize,
    pub changes: Vec<RefDelta>,
    pub error: Option<String>,
    /// Targets that failed, with why.
    pub failed_targets: Vec<RefIssue>,
}

/// `status.json`: everything an operator asks about a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Every field defaults: statuses written by older versions (fewer fields) still load.
#[serde(default)]
pub struct RepoStatus {
    pub repo: String,
    pub state: State,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub last_success_at: Option<u64>,
    /// When the source was last confirmed equal to every target (a sync, or a poll probe
    /// finding the source unchanged since).
    pub last_checked: Option<u64>,
    /// When the source last changed (a sync that moved refs).
    pub last_change_at: Option<u64>,
    pub last_error: Option<String>,
    pub error_class: Option<ErrorClass>,
    pub consecutive_failures: u32,
    pub last_trigger: Option<TriggerKind>,
    pub last_delivery_id: Option<String>,
    /// Refs the source has (within the repo's patterns).
    pub source_refs: usize,
    /// The changes of the last sync that changed something (at most 50).
    pub last_changes: Vec<RefDelta>,
    pub targets: BTreeMap<String, TargetStatus>,
    pub overwritten: Vec<Backup>,
    /// Set while the mass-deletion guard holds back a prune.
    pub guard: Option<String>,
    pub lease: Option<LeaseRecord>,
    /// The last time the cache had to be rebuilt, and why (an unreadable manifest or pack).
    pub cache_rebuilt: Option<String>,
    pub duration_ms: Option<u64>,
    pub updated_at: u64,
}

/// `history.json`: the last [`HISTORY`] syncs that changed something or did not succeed, oldest
/// first. Beside the status rather than in it: the overview reads every status, the history only
/// a repository's own page; and an idle repository adds nothing, so it still writes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    pub syncs: Vec<SyncRecord>,
}

/// What a finished sync reports to the chokepoint.
#[derive(Clone, Debug, Default)]
pub struct Finish {
    /// `None` = the repo-level part succeeded (targets may still have failed).
    pub error: Option<(String, ErrorClass)>,
    pub changes: Vec<RefDelta>,
    pub source_refs: Option<usize>,
    pub targets: BTreeMap<String, TargetFinish>,
    /// The complete list of backups kept in the cache now (`None`: unchanged).
    pub overwritten: Option<Vec<Backup>>,
    pub guard: Option<String>,
    pub lease: Option<LeaseRecord>,
    /// Stopped at the time limit after progress (the message says how far): `Interrupted`,
    /// neither a failure nor a success.
    pub interrupted: Option<String>,
    /// The cache was rebuilt from the source, and why.
    pub cache_rebuilt: Option<String>,
    /// How long the request that started the sync waited in the queue.
    pub queue_lag_ms: Option<u64>,
}

/// One target's result.
#[derive(Clone, Debug, Default)]
pub struct TargetFinish {
    pub error: Option<(String, ErrorClass)>,
    /// The target now carries every ref the source has (not just part of a batched mirror).
    pub complete: bool,
    pub refs_changed: usize,
    pub rejected: Vec<RefIssue>,
    pub diverged: Vec<RefIssue>,
    /// What the LFS step did for this target (none when there was nothing to do).
    pub lfs: Option<LfsCount>,
}

/// Streak transitions of a finished sync: the repository's, and each target's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transitions {
    pub repo: Transition,
    pub targets: BTreeMap<String, Transition>,
}

/// What changed between the previous and the new status, for notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Success after success (or first success).
    Ok,
    /// The first failure of a streak: notify once.
    StartedFailing,
    /// Still failing: do not notify again.
    StillFailing,
    /// Success after a failure streak.
    Recovered { after_failures: u32 },
}

/// Reads and writes `status.json` — the only writer.
#[derive(Clone, Debug)]
pub struct StatusBook {
    store: Arc<dyn ObjectStore>,
}

impl StatusBook {
    pub fn new(store: Arc<dyn ObjectStore>) -> StatusBook {
        StatusBook { store }
    }

    /// The store the statuses live in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// A repository's history (empty if none was recorded).
    pub async fn history(&self, repo: &str) -> Result<History, StoreError> {
        Ok(self
            .store
            .get(&keys::history(repo))
            .await?
            .and_then(|o| serde_json::from_slice(&o.body).ok())
            .unwrap_or_default())
    }

    /// Append to the history, keeping the last [`HISTORY`]. Unconditional writes: only the
    /// lease holder finishes syncs of a repository.
    async fn remember(&self, repo: &str, record: SyncRecord) -> Result<(), StoreError> {
        let mut history = self.history(repo).await?;
        history.syncs.push(record);
        let excess = history.syncs.len().saturating_sub(HISTORY);
        history.syncs.drain(..excess);
        let body = serde_json::to_vec(&history).expect("history serialises");
        self.store
            .put(&keys::history(repo), body, Condition::Always)
            .await
            .map(|_| ())
    }

    /// The stored record, as written.
    async fn read(&self, repo: &str) -> Result<Option<RepoStatus>, StoreError> {
        Ok(self
            .store
            .get(&keys::status(repo))
            .await?
            .and_then(|o| serde_json::from_slice(&o.body).ok()))
    }

    /// The stored record when it does not say what a no-op sync just found — everything
    /// mirrored — and nobody else is syncing: a worker died after its last push but before its
    /// status, or a failure was resolved without work. `None` when it is right as it is.
    pub async fn stale_after_noop(&self, repo: &str) -> Result<Option<RepoStatus>, StoreError> {
        let Some(stored) = self.read(repo).await? else {
            return Ok(Some(RepoStatus {
                repo: repo.to_owned(),
                ..Default::default()
            }));
        };
        match stored.state {
            State::Success => Ok(None),
            State::Syncing => {
                let lease = crate::cache::lease::read(self.store.as_ref(), repo)
                    .await
                    .ok()
                    .flatten();
                let held = lease.is_some_and(|l| l.is_held(now_ms()));
                Ok((!held).then_some(stored))
            }
            _ => Ok(Some(stored)),
        }
    }

    /// A repo's status as readers should see it (stalled syncs, the poller's checks).
    pub async fn get(&self, repo: &str) -> Result<Option<RepoStatus>, StoreError> {
        let checked = crate::poll::last_checked(self.store.as_ref()).await;
        match self.read(repo).await? {
            Some(s) => Ok(Some(self.view(s, &checked).await)),
            None => Ok(None),
        }
    }

    /// Status of each named repo as readers should see it (in the order given); repos never
    /// synced show as `New`. Read [`READ_AHEAD`] at a time: an overview of 5,000 repositories
    /// on S3 is a few seconds, not minutes.
    pub async fn all<'a>(&self, repos: impl IntoIterator<Item = &'a str>) -> Result<Vec<RepoStatus>, StoreError> {
        let checked = Arc::new(crate::poll::last_checked(self.store.as_ref()).await);
        let names: Vec<String> = repos.into_iter().map(str::to_owned).collect();
        let permits = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, repo) in names.into_iter().enumerate() {
            let (book, checked, permits) = (self.clone(), checked.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let stored = book.read(&repo).await?.unwrap_or_else(|| RepoStatus {
                    repo: repo.clone(),
                    ..Default::default()
                });
                Ok::<_, StoreError>((i, book.view(stored, &checked).await))
            });
        }
        let mut out = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(r) => out.push(r?),
                Err(e) => {
                    return Err(StoreError::Unavailable {
                        key: "repos/*/status.json".into(),
                        message: format!("reading a status: {e}"),
                    });
                }
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    /// `Syncing` without a live lease is `Stalled`; a poller confirmation newer than the
    /// record's counts as a check of the repo and of every target that succeeded last.
    async fn view(&self, mut s: RepoStatus, checked: &BTreeMap<String, u64>) -> RepoStatus {
        if s.state == State::Syncing {
            let lease = crate::cache::lease::read(self.store.as_ref(), &s.repo)
                .await
                .ok()
                .flatten();
            if !lease.as_ref().is_some_and(|l| l.is_held(now_ms())) {
                s.state = State::Stalled;
                if lease.is_some() {
                    s.lease = lease;
                }
            }
        }
        if let Some(at) = checked.get(&s.repo).copied()
            && s.last_checked.is_none_or(|c| c < at)
        {
            s.last_checked = Some(at);
            for t in s.targets.values_mut().filter(|t| t.state == State::Success) {
                t.last_checked = Some(at);
            }
        }
        s
    }

    async fn write(&self, status: &RepoStatus) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(status).expect("status serialises");
        self.store
            .put(&keys::status(&status.repo), body, Condition::Always)
            .await
            .map(|_| ())
    }

    /// A status write must not be lost to one failed store call (a status stuck at `Syncing`
    /// would hide the outcome): retry transient failures a few times, briefly. Writes are
    /// unconditional, so repeating one whose reply was lost is harmless.
    async fn write_retrying(&self, status: &RepoStatus) -> Result<(), StoreError> {
        let mut delay = std::time::Duration::from_millis(100);
        for _ in 0..3 {
            match self.write(status).await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(repo = %status.repo, error = %e, "status write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
                other => return other,
            }
        }
        self.write(status).await
    }

    /// → `Syncing`. Returns the record written, which [`StatusBook::finish`] continues from
    /// (streak counters and guard are still the previous sync's).
    pub async fn begin(
        &self,
        repo: &str,
        trigger: TriggerKind,
        delivery_id: Option<&str>,
        lease: Option<LeaseRecord>,
    ) -> Result<RepoStatus, StoreError> {
        let previous = self.read(repo).await?.unwrap_or_else(|| RepoStatus {
            repo: repo.to_owned(),
            ..Default::default()
        });
        let mut next = previous.clone();
        next.state = State::Syncing;
        next.started_at = Some(now_ms());
        next.last_trigger = Some(trigger);
        if let Some(d) = delivery_id {
            next.last_delivery_id = Some(d.to_owned());
        }
        next.lease = lease;
        next.updated_at = now_ms();
        // Retried too: a `Syncing` write whose reply was lost must not end the sync before the
        // terminal write that would replace it.
        self.write_retrying(&next).await?;
        Ok(next)
    }

    /// → `Success` / `Failed` (or `Interrupted`), per repo and per target, from the previous
    /// status. Always writes. A repo is `Success` only if the repo-level part and every target
    /// succeeded.
    pub async fn finish(&self, previous: &RepoStatus, finish: Finish) -> Result<(RepoStatus, Transitions), StoreError> {
        let now = now_ms();
        let mut next = previous.clone();
        next.finished_at = Some(now);
        next.duration_ms = next.started_at.map(|s| now.saturating_sub(s));
        next.lease = finish.lease;
        if let Some(n) = finish.source_refs {
            next.source_refs = n;
        }
        let changes = finish.changes;
        if !changes.is_empty() {
            next.last_change_at = Some(now);
            next.last_changes = changes.iter().take(50).cloned().collect();
        }
        next.guard = finish.guard;
        if let Some(backups) = finish.overwritten {
            next.overwritten = backups;
        }
        if finish.cache_rebuilt.is_some() {
            next.cache_rebuilt = finish.cache_rebuilt;
        }
        let mut targets = BTreeMap::new();
        let mut target_error = None;
        for (name, t) in finish.targets {
            let entry = next.targets.entry(name.clone()).or_default();
            let before = entry.consecutive_failures;
            if let Some(error) = finish_target(entry, t, now) {
                target_error.get_or_insert((format!("target {name}: {}", error.0), error.1));
            }
            targets.insert(name, streak(before, entry.consecutive_failures));
        }
        match (finish.error.or(target_error), finish.interrupted) {
            (None, Some(progress)) => {
                next.state = State::Interrupted;
                next.last_error = Some(progress);
                next.error_class = Some(ErrorClass::Transient);
            }
            (None, None) => {
                next.state = State::Success;
                next.last_success_at = Some(now);
                next.last_checked = Some(now);
                next.last_error = None;
                next.error_class = None;
                next.consecutive_failures = 0;
            }
            (Some((message, class)), _) => {
                next.state = State::Failed;
                next.last_error = Some(message);
                next.error_class = Some(class);
                next.consecutive_failures = previous.consecutive_failures + 1;
            }
        }
        next.updated_at = now;
        self.write_retrying(&next).await?;
        if let Some(record) = record_of(&next, &changes, finish.queue_lag_ms)
            && let Err(e) = self.remember(&next.repo, record).await
        {
            // The history is for people; the status is what must be right.
            tracing::warn!(repo = %next.repo, error = %e, "could not record the sync in the history");
        }
        let repo = streak(previous.consecutive_failures, next.consecutive_failures);
        Ok((next, Transitions { repo, targets }))
    }
}

/// The history record of a sync that changed something or did not succeed.
fn record_of(next: &RepoStatus, changes: &[RefDelta], queue_lag_ms: Option<u64>) -> Option<SyncRecord> {
    if changes.is_empty() && next.state == State::Success {
        return None;
    }
    let failed_targets = next
        .targets
        .iter()
        .filter(|(_, t)| t.state == State::Failed && t.last_attempt_at == next.finished_at)
        .map(|(name, t)| RefIssue {
            name: name.clone(),
            reason: t.last_error.clone().unwrap_or_default(),
        })
        .collect();
    Some(SyncRecord {
        started_at: next.started_at.unwrap_or_default(),
        finished_at: next.finished_at.unwrap_or_default(),
        duration_ms: next.duration_ms.unwrap_or_default(),
        queue_lag_ms,
        trigger: next.last_trigger,
        state: next.state,
        refs_changed: changes.len(),
        changes: changes.iter().take(10).cloned().collect(),
        error: next.last_error.clone().filter(|_| next.state != State::Success),
        failed_targets,
    })
}

/// Apply one target's result; its error, if it failed.
fn finish_target(entry: &mut TargetStatus, t: TargetFinish, now: u64) -> Option<(String, ErrorClass)> {
    entry.last_attempt_at = Some(now);
    entry.refs_changed = t.refs_changed;
    entry.rejected = t.rejected;
    entry.diverged = t.diverged;
    entry.lfs = t.lfs;
    match t.error {
        None if entry.rejected.is_empty() => {
            entry.state = State::Success;
            entry.last_success_at = Some(now);
            if t.complete {
                entry.last_checked = Some(now);
            }
            entry.last_error = None;
            entry.error_class = None;
            entry.consecutive_failures = 0;
            None
        }
        error => {
            let (message, class) = error.unwrap_or_else(|| {
                (
                    format!("{} ref(s) rejected by the target", entry.rejected.len()),
                    ErrorClass::Permanent,
                )
            });
            entry.state = State::Failed;
            entry.last_error = Some(message.clone());
            entry.error_class = Some(class);
            entry.consecutive_failures += 1;
            Some((message, class))
        }
    }
}

/// The streak transition from `before` to `after` consecutive failures.
fn streak(before: u32, after: u32) -> Transition {
    match (before, after) {
        (0, 0) => Transition::Ok,
        (0, _) => Transition::StartedFailing,
        (n, 0) => Transition::Recovered { after_failures: n },
        _ => Transition::StillFailing,
    }
}
