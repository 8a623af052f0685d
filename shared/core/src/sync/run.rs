//! The sync proper, under the lease, checkpointed so that every invocation keeps what it did:
//!
//! ```text
//! restore the cache (rebuilt from the source if unreadable)
//! first mirror, or resuming one:  [batch of refs: fetch → back up overwritten tips → commit
//!                                  → push each target, recording what landed (commit)]*
//! then:  fetch everything → guard, prune, back up → commit → push each target (prune),
//!        recording what landed (commit) → compact → commit → collect garbage
//! ```
//!
//! A fetched pack is in the store before any push starts, and each target's landed refs are
//! recorded as they land, so a run stopped anywhere — its time limit, a crash, a shutdown —
//! leaves a state the next run continues from instead of starting over. The time limit is
//! honoured *inside* fetch and push: an [`Interrupt`] flag, set shortly before the deadline,
//! stops the transfer in flight; the run then reports [`Failure::interrupted`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gix::ObjectId;
use tokio::sync::watch;

use super::plan::{self, BatchSizer};
use super::target::{self, TargetPush};
use super::{Failure, SyncOptions, blocking};
use crate::cache::lease::Lease;
use crate::cache::{CacheError, NextState, RepoCache, Snapshot};
use crate::clock::now_ms;
use crate::config::RepoConfig;
use crate::git::refs::{OWN_REFS, RefDelta, RefState};
use crate::git::repo::{self, LocalUpdate, Peel};
use crate::git::{self, FetchOptions, RefPatterns};
use crate::status::{Backup, TargetFinish};

/// Sets a flag shortly before the deadline, or when the process is shutting down; fetch and
/// push check it between reads and writes.
pub(super) struct Interrupt {
    flag: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Interrupt {
    pub fn arm(stop_at: Instant, shutdown: Option<watch::Receiver<bool>>) -> Interrupt {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let task = tokio::spawn(async move {
            let stopping = async move {
                match shutdown {
                    Some(mut s) => {
                        let _ = s.wait_for(|stop| *stop).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(stop_at.into()) => {}
                _ = stopping => {}
            }
            set.store(true, Ordering::SeqCst);
        });
        Interrupt { flag, task }
    }

    pub fn fired(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a run did, for status, notifications and metrics — filled as it goes, so a failure or
/// an interruption half-way still reports what happened.
#[derive(Default)]
pub(super) struct Work {
    pub changes: Vec<RefDelta>,
    pub source_refs: Option<usize>,
    pub targets: BTreeMap<String, TargetFinish>,
    pub backups: Option<Vec<Backup>>,
    pub new_backups: Vec<Backup>,
    pub guard: Option<String>,
    pub stats: WorkStats,
    pub cache_rebuilt: Option<String>,
    /// The generation of the last commit this run wrote: progress nothing can take away.
    pub committed: Option<u64>,
    /// What the LFS step did (none when the repository has `lfs = false` or no pointer came).
    pub lfs: Option<git::lfs::LfsSummary>,
    /// Refs the cache has of those the source advertised, and how many it advertised.
    pub refs_done: usize,
    pub refs_total: usize,
}

#[derive(Default, Clone, Copy, Debug)]
pub(super) struct WorkStats {
    pub fetched: u64,
    pub pushed: u64,
    pub refs_changed: usize,
}

/// One sync under the lease. See the module docs.
pub(super) struct Run<'a> {
    pub config: &'a RepoConfig,
    pub cache: &'a RepoCache,
    pub lease: &'a Lease,
    pub options: &'a SyncOptions,
    pub interrupt: &'a Interrupt,
    pub deadline: Instant,
    /// The source's refs as listed before the lease was taken (the batch plan's input).
    pub advertised: RefState,
    /// The manifest as last committed.
    pub snapshot: Snapshot,
    pub work: Work,
    /// Refs per batch to record in the next commit (`None` once the final round runs).
    batch_refs: Option<usize>,
    start_generation: u64,
    /// The cache's packs as last scanned for LFS pointers (once restored, then before each
    /// commit): pointers are looked for in the packs added since.
    packs: git::lfs::PackSnapshot,
    /// LFS pointers whose objects have not reached every target (see
    /// [`crate::cache::Manifest::lfs_pending`]).
    lfs_pending: Vec<git::lfs::Pointer>,
    /// Look for LFS pointers in every pack, not only the new ones: a target never pushed to
    /// needs the objects of the whole history.
    lfs_backfill: bool,
}

impl<'a> Run<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &'a RepoConfig,
        cache: &'a RepoCache,
        lease: &'a Lease,
        options: &'a SyncOptions,
        interrupt: &'a Interrupt,
        deadline: Instant,
        advertised: RefState,
        snapshot: Snapshot,
    ) -> Run<'a> {
        let batch_refs = snapshot.manifest.batch_refs;
        let lfs_pending = snapshot.manifest.lfs_pending.clone();
        let start_generation = snapshot.manifest.generation;
        Run {
            config,
            cache,
            lease,
            options,
            interrupt,
            deadline,
            advertised,
            snapshot,
            work: Work::default(),
            batch_refs,
            start_generation,
            packs: git::lfs::PackSnapshot::default(),
            lfs_pending,
            lfs_backfill: false,
        }
    }

    pub async fn run(&mut self) -> Result<(), Failure> {
        self.restore().await?;
        let cached = self.cache_refs(&self.config.refs).await?;
        let order = plan::fetch_order(&self.advertised, &cached);
        self.work.refs_total = self.advertised.len();
        self.work.refs_done = self.advertised.len() - order.len();
        if (cached.is_empty() || self.batch_refs.is_some()) && order.len() > 1 {
            self.batches(&order).await?;
        }
        match self.final_round().await {
            Err(f) if f.interrupted && self.batch_refs.is_none() => {
                // Everything at once did not fit: the next run goes in batches.
                self.batch_refs = Some(BatchSizer::shrink_after_interrupt(order.len()));
                self.checkpoint_hint().await;
                Err(f)
            }
            other => other,
        }
    }

    /// Time left before the run must stop (the deadline less the margin kept for the status).
    fn time_left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(self.options.margin())
    }

    /// Stop here if the interrupt fired or too little time is left to start `phase`.
    fn check(&self, phase: &str) -> Result<(), Failure> {
        if self.interrupt.fired() || self.time_left().is_zero() {
            Err(Failure::interrupted(format!("stopped before {phase}")))
        } else {
            Ok(())
        }
    }

    /// A transfer that failed after the interrupt fired was stopped by it, whatever error the
    /// transport made of the broken-off stream.
    fn stopped_or(&self, f: Failure, phase: &str) -> Failure {
        if self.interrupt.fired() && !f.interrupted {
            tracing::debug!(error = %f.message, "failed after the interrupt: counted as stopped");
            Failure::interrupted(format!("stopped while {phase}"))
        } else {
            f
        }
    }

    /// Restore the cache; a corrupt one is rebuilt from the source instead of failing forever.
    async fn restore(&mut self) -> Result<(), Failure> {
        self.check("restoring the cache")?;
        if let Some(why) = &self.snapshot.unreadable {
            self.work.cache_rebuilt = Some(format!("{why}: rebuilt from the source"));
        }
        match self.cache.restore(&self.snapshot).await {
            Ok(_) => {}
            Err(CacheError::Corrupt { what }) => {
                tracing::error!(repo = %self.config.name, %what, "cache is corrupt: rebuilding it from the source");
                self.work.cache_rebuilt = Some(format!("the cache was damaged ({what}): rebuilt from the source"));
                self.cache.wipe_local()?;
                let path = self.cache.path().to_owned();
                blocking("creating the cache", move || repo::open_or_init_bare(&path).map(|_| ())).await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.cache.invalidate_local()?;
        self.packs = git::lfs::PackSnapshot::take(self.cache.path());
        let recorded = &self.snapshot.manifest.targets;
        let new_target = (self.config.targets.iter())
            .any(|t| !recorded.contains_key(&t.state_key()) && !recorded.contains_key(&t.name));
        self.lfs_backfill = new_target && !self.packs.is_empty();
        Ok(())
    }

    /// Fetch and push the refs in `order` batch by batch, all but the last batch (the final
    /// round fetches everything that is left, with prune).
    async fn batches(&mut self, order: &[String]) -> Result<(), Failure> {
        let mut sizer = BatchSizer::new(self.batch_refs.unwrap_or(1));
        let mut done = 0;
        while order.len() - done > sizer.next() {
            let names = &order[done..done + sizer.next()];
            self.batch_refs = Some(sizer.next());
            let started = Instant::now();
            match self.batch(names).await {
                Ok(bytes) => sizer.record(names.len(), started.elapsed(), bytes, self.time_left()),
                Err(f) if f.interrupted => {
                    self.batch_refs = Some(BatchSizer::shrink_after_interrupt(names.len()));
                    self.checkpoint_hint().await;
                    return Err(f);
                }
                Err(f) => return Err(f),
            }
            done += names.len();
            self.work.refs_done += names.len();
            tracing::info!(repo = %self.config.name, refs = done, of = order.len(), next = sizer.next(), "batch mirrored");
        }
        self.batch_refs = Some(sizer.next());
        Ok(())
    }

    /// One batch: fetch `names`, back up what they overwrote, commit, the batch's LFS objects,
    /// push every target.
    async fn batch(&mut self, names: &[String]) -> Result<u64, Failure> {
        let patterns = RefPatterns::new(names.to_vec(), Vec::new()).map_err(Failure::from)?;
        let fetched = self.fetch(patterns, false).await?;
        let updates = self.back_up(&fetched.deltas, now_ms());
        self.work.changes.extend(fetched.deltas);
        self.apply_local(updates).await?;
        let mut source = RefState {
            head: self.advertised.head.clone(),
            ..RefState::default()
        };
        let path = self.cache.path().to_owned();
        let patterns = self.config.refs.clone();
        source.refs = blocking("reading the cache", move || {
            repo::read_refs(&repo::open(&path)?, &patterns, Peel::No)
        })
        .await?
        .refs;
        self.note_lfs_pointers().await?;
        self.commit(source).await?;
        self.lfs().await?;
        // No forwarding: the batch's pack is valid for the batch's refs only, not for the
        // target's whole ref set that the push compares.
        self.push_all(false, false, None).await?;
        Ok(fetched.bytes)
    }

    /// Everything the source has now: fetch, the source-wide bookkeeping, push with prune,
    /// compaction, garbage collection.
    async fn final_round(&mut self) -> Result<(), Failure> {
        let fetched = self.fetch(self.config.refs.clone(), true).await?;
        self.work.source_refs = Some(fetched.source.len());
        let prune = self.prune_and_back_up(&fetched).await?;
        self.batch_refs = None;
        self.note_lfs_pointers().await?;
        self.commit(fetched.source.clone()).await?;
        self.work.refs_done = self.work.refs_total;
        self.lfs().await?;
        self.push_all(prune, true, fetched.forward.as_ref()).await?;
        self.compact_and_collect().await
    }

    /// Look for LFS pointers in the packs fetched since the last look (in every pack, once,
    /// when a target is new), and add them to those pending — before the commit that records
    /// these packs, which records the pointers too.
    async fn note_lfs_pointers(&mut self) -> Result<(), Failure> {
        if self.config.lfs == git::lfs::LfsMode::Off {
            return Ok(());
        }
        self.check("looking for LFS pointers")?;
        let packs = match std::mem::take(&mut self.lfs_backfill) {
            true => git::lfs::PackSnapshot::default(),
            false => self.packs.clone(),
        };
        let (path, flag) = (self.cache.path().to_owned(), self.interrupt.flag());
        let (found, scanned) = blocking("looking for LFS pointers", move || {
            let found = git::lfs::scan::new_pointers(&repo::open(&path)?, &packs, &flag)?;
            Ok((found, git::lfs::PackSnapshot::take(&path)))
        })
        .await
        .map_err(|f| self.stopped_or(f, "looking for LFS pointers"))?;
        self.packs = scanned;
        if !found.is_empty() {
            self.lfs_pending.extend(found);
            self.lfs_pending.sort();
            self.lfs_pending.dedup();
        }
        Ok(())
    }

    /// The LFS objects of the pending pointers (the batch's or final fetch's, and what an
    /// earlier step or run left) to every target, before the push gives it the refs that need
    /// them. Target by target, as the push: one that fails (no LFS server, refused) is
    /// reported and gets no refs; the others go on. Objects are downloaded once, for the first
    /// target. Pointers stay pending until every target has their objects.
    async fn lfs(&mut self) -> Result<(), Failure> {
        if self.config.lfs == git::lfs::LfsMode::Off || self.lfs_pending.is_empty() {
            return Ok(());
        }
        let found = self.lfs_pending.clone();
        let mut everywhere = true;
        let mut first = true; // the first target's count of this step
        let options = git::lfs::LfsOptions {
            mode: self.config.lfs,
            objects: self.cache.path().with_extension("lfs"),
            tier: Some(Arc::new(super::lfs::StoreTier {
                store: self.cache.store().clone(),
                runtime: tokio::runtime::Handle::current(),
            })),
            pending_in_cache: false,
        };
        for target in &self.config.targets {
            if self.work.targets.get(&target.name).is_some_and(|t| t.error.is_some()) {
                everywhere = false;
                continue; // failed earlier in this run: its push is skipped too
            }
            let phase = format!("mirroring LFS objects to {}", target.name);
            self.check(&phase)?;
            let (path, source, remote) = (
                self.cache.path().to_owned(),
                self.config.source.clone(),
                target.remote.clone(),
            );
            let (found, options, flag) = (found.clone(), options.clone(), self.interrupt.flag());
            let done = blocking("mirroring LFS objects", move || {
                let r = repo::open(&path)?;
                Ok(git::lfs::mirror_objects(
                    &r,
                    found,
                    &source,
                    &[&remote],
                    &options,
                    &flag,
                )?)
            })
            .await;
            match done {
                Ok(summary) => self.count_lfs(&target.name, summary, std::mem::take(&mut first)),
                Err(f) if f.interrupted || self.interrupt.fired() => {
                    return Err(Failure::interrupted(format!("stopped while {phase}")));
                }
                Err(f) => {
                    everywhere = false;
                    tracing::warn!(repo = %self.config.name, target = %target.name, error = %f.message, "LFS objects not mirrored: the target gets no refs");
                    let finish = TargetFinish {
                        error: Some((f.message, f.class)),
                        ..Default::default()
                    };
                    target::merge(self.work.targets.entry(target.name.clone()).or_default(), finish);
                }
            }
        }
        if everywhere {
            self.lfs_pending.clear(); // recorded by the next commit (the push's)
        }
        if let Some(s) = &self.work.lfs {
            tracing::info!(
                repo = %self.config.name,
                objects = s.objects,
                bytes = s.bytes,
                downloaded = s.downloaded,
                restored = s.restored,
                uploaded = s.uploaded,
                missing = s.missing.len(),
                "LFS objects mirrored"
            );
        }
        Ok(())
    }

    /// One target's LFS summary into its status count and the run's: the objects are the same
    /// for every target of a step (`first_of_step` brings new ones), what moved adds up.
    fn count_lfs(&mut self, target: &str, mut next: git::lfs::LfsSummary, first_of_step: bool) {
        if next.objects == 0 {
            return;
        }
        let count = crate::status::LfsCount::of(&next);
        let entry = &mut self.work.targets.entry(target.to_owned()).or_default().lfs;
        *entry = Some(count.after(entry.take()));
        match &mut self.work.lfs {
            None => self.work.lfs = Some(next),
            Some(total) => {
                if first_of_step {
                    // A new step (a mirror in batches): new objects.
                    total.objects += next.objects;
                    total.bytes += next.bytes;
                    total.missing.append(&mut next.missing);
                }
                total.downloaded += next.downloaded;
                total.restored += next.restored;
                total.uploaded += next.uploaded;
                total.uploaded_bytes += next.uploaded_bytes;
            }
        }
    }

    /// Fetch `refs` (no prune: the guard decides); `follow_head` only when fetching everything.
    async fn fetch(&mut self, refs: RefPatterns, follow_head: bool) -> Result<git::FetchOutcome, Failure> {
        self.check("fetching")?;
        let (path, source, flag) = (
            self.cache.path().to_owned(),
            self.config.source.clone(),
            self.interrupt.flag(),
        );
        let options = FetchOptions {
            refs,
            prune: false,
            follow_head,
        };
        let fetched = blocking("fetching", move || {
            let r = repo::open(&path)?;
            git::mirror_fetch(&r, &source, &options, &flag)
        })
        .await
        .map_err(|f| self.stopped_or(f, "fetching"))?;
        self.work.stats.fetched += fetched.bytes;
        Ok(fetched)
    }

    /// The cache's refs selected by `patterns`.
    async fn cache_refs(&self, patterns: &RefPatterns) -> Result<BTreeMap<String, ObjectId>, Failure> {
        let (path, patterns) = (self.cache.path().to_owned(), patterns.clone());
        let refs = blocking("reading the cache", move || {
            repo::read_refs(&repo::open(&path)?, &patterns, Peel::No)
        })
        .await?;
        Ok(refs.ids())
    }

    /// After the final fetch: the mass-deletion guard, then prunes, backups of overwritten
    /// tips and expiry of old backups, in one local transaction. Returns whether targets may be
    /// pruned.
    async fn prune_and_back_up(&mut self, fetched: &git::FetchOutcome) -> Result<bool, Failure> {
        let cached = self.cache_refs(&RefPatterns::everything()).await?;
        let in_scope: Vec<(&String, &ObjectId)> = cached.iter().filter(|(n, _)| self.config.refs.matches(n)).collect();
        let doomed: Vec<(String, ObjectId)> = in_scope
            .iter()
            .filter(|(n, _)| !fetched.source.refs.contains_key(*n))
            .map(|(n, id)| ((*n).clone(), **id))
            .collect();
        let mut prune = self.config.prune;
        if prune && let Some(message) = plan::guard(doomed.len(), in_scope.len(), self.config.max_delete_fraction) {
            tracing::error!(repo = %self.config.name, %message, "mass-deletion guard tripped");
            self.work.guard = Some(message);
            prune = false;
        }
        let now = now_ms();
        let mut changes = fetched.deltas.clone();
        let mut updates = Vec::new();
        if prune {
            for (name, id) in doomed {
                updates.push(LocalUpdate {
                    name: name.clone(),
                    old: Some(id),
                    new: None,
                });
                changes.push(RefDelta {
                    name,
                    kind: git::DeltaKind::Deleted,
                    old: Some(id),
                    new: None,
                });
            }
        }
        let backups: BTreeMap<String, ObjectId> = cached.into_iter().filter(|(n, _)| n.starts_with(OWN_REFS)).collect();
        for name in plan::expired_backups(&backups, now, self.config.overwritten_retention_days) {
            updates.push(LocalUpdate {
                old: backups.get(&name).copied(),
                name,
                new: None,
            });
        }
        updates.extend(self.back_up(&changes, now));
        self.work.changes.extend(changes);
        self.work.changes.sort_by(|a, b| a.name.cmp(&b.name));
        self.apply_local(updates).await?;
        Ok(prune)
    }

    /// Backup refs for the tips `changes` overwrote (recorded for the notification).
    fn back_up(&mut self, changes: &[RefDelta], now: u64) -> Vec<LocalUpdate> {
        plan::tips_to_back_up(changes, now)
            .into_iter()
            .map(|(backup, old, name)| {
                self.work.new_backups.push(Backup {
                    git_ref: name,
                    backup_ref: backup.clone(),
                    id: old.to_string(),
                    at: now,
                });
                LocalUpdate {
                    name: backup,
                    old: None,
                    new: Some(old),
                }
            })
            .collect()
    }

    async fn apply_local(&mut self, updates: Vec<LocalUpdate>) -> Result<(), Failure> {
        if !updates.is_empty() {
            let path = self.cache.path().to_owned();
            blocking("updating the cache's refs", move || {
                repo::apply_ref_updates(&repo::open(&path)?, &updates, None, "gitferry: prune and back up")
            })
            .await?;
        }
        Ok(())
    }

    /// Push the cache's refs to every target that has not failed in this run, recording what
    /// landed after each. `complete`: this push carries everything the source has.
    /// `forward`: the final fetch's pack, sent as it is where it is valid.
    async fn push_all(&mut self, prune: bool, complete: bool, forward: Option<&git::Forward>) -> Result<(), Failure> {
        let path = self.cache.path().to_owned();
        let patterns = self.config.refs.clone();
        let desired = blocking("reading the cache", move || {
            repo::read_refs(&repo::open(&path)?, &patterns, Peel::No)
        })
        .await?;
        for target in &self.config.targets {
            if self.work.targets.get(&target.name).is_some_and(|t| t.error.is_some()) {
                continue; // failed earlier in this run: reported once, not retried per batch
            }
            self.check(&format!("pushing to {}", target.name))?;
            self.lease.check()?;
            let pushed = TargetPush {
                config: self.config,
                target,
                cache_path: self.cache.path().to_owned(),
                desired: &desired,
                prune,
                manifest: &self.snapshot.manifest,
                interrupt: self.interrupt.flag(),
                store: self.cache.store().as_ref(),
                forward,
            }
            .run()
            .await;
            if pushed.interrupted || (pushed.finish.error.is_some() && self.interrupt.fired()) {
                return Err(Failure::interrupted(format!(
                    "stopped while pushing to {}",
                    target.name
                )));
            }
            self.work.stats.pushed += pushed.bytes;
            self.work.stats.refs_changed += pushed.finish.refs_changed;
            let mut finish = pushed.finish;
            finish.complete = complete && finish.error.is_none();
            target::merge(self.work.targets.entry(target.name.clone()).or_default(), finish);
            if let Some(recorded) = pushed.recorded {
                let mut targets = self.snapshot.manifest.targets.clone();
                targets.remove(&target.name);
                targets.insert(target.state_key(), recorded);
                self.commit_with(self.snapshot.manifest.source.clone(), targets).await?;
            }
        }
        Ok(())
    }

    /// Commit the local copy as the next generation with `source` as the source's refs.
    async fn commit(&mut self, source: RefState) -> Result<(), Failure> {
        let targets = self.snapshot.manifest.targets.clone();
        self.commit_with(source, targets).await
    }

    async fn commit_with(
        &mut self,
        source: RefState,
        mut targets: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), Failure> {
        self.lease.check()?;
        // Forget targets that are no longer configured (an entry under a target's name is
        // from before targets were keyed by URL: kept until that target's push replaces it).
        targets.retain(|key, _| {
            self.config
                .targets
                .iter()
                .any(|t| &t.state_key() == key || &t.name == key)
        });
        let backups = self.local_backups().await?;
        let next = NextState {
            source,
            backups,
            targets,
            batch_refs: self.batch_refs,
            lfs_pending: self.lfs_pending.clone(),
        };
        let committed = self.cache.commit(&self.snapshot, next).await?;
        if committed.written {
            self.work.committed = Some(committed.snapshot.manifest.generation);
            tracing::info!(
                repo = %self.config.name,
                generation = committed.snapshot.manifest.generation,
                packs_uploaded = committed.packs_uploaded,
                bytes_uploaded = committed.bytes_uploaded,
                "cache committed"
            );
        }
        self.snapshot = committed.snapshot;
        Ok(())
    }

    /// The backup refs the local copy holds now (and the status's list of them).
    async fn local_backups(&mut self) -> Result<BTreeMap<String, String>, Failure> {
        let all = self.cache_refs(&RefPatterns::everything()).await?;
        let backups: BTreeMap<String, String> = all
            .into_iter()
            .filter(|(n, _)| n.starts_with(OWN_REFS))
            .map(|(n, id)| (n, id.to_string()))
            .collect();
        self.work.backups = Some(
            backups
                .iter()
                .map(|(name, id)| Backup {
                    git_ref: plan::backup_source(name),
                    backup_ref: name.clone(),
                    id: id.clone(),
                    at: plan::backup_time(name),
                })
                .collect(),
        );
        Ok(backups)
    }

    /// Record only the batch size to resume with (after an interrupted batch). Best effort: the
    /// next run starts small anyway if this fails.
    async fn checkpoint_hint(&mut self) {
        if self.snapshot.manifest.batch_refs == self.batch_refs || self.lease.check().is_err() {
            return;
        }
        let (source, targets) = (
            self.snapshot.manifest.source.clone(),
            self.snapshot.manifest.targets.clone(),
        );
        if let Err(f) = self.commit_with(source, targets).await {
            tracing::warn!(repo = %self.config.name, error = %f.message, "could not record the batch size to resume with");
        }
    }

    /// Compact the packs if they piled up, commit, and now and then collect orphaned objects.
    async fn compact_and_collect(&mut self) -> Result<(), Failure> {
        self.lease.check()?;
        if self.check("compacting").is_ok() {
            self.cache
                .compact_unless(crate::cache::MAX_PACKS, self.interrupt.flag())
                .await?;
        }
        let (source, targets) = (
            self.snapshot.manifest.source.clone(),
            self.snapshot.manifest.targets.clone(),
        );
        let before = self.work.committed;
        self.commit_with(source, targets).await?;
        let generation = self.snapshot.manifest.generation;
        let compacted = self.work.committed != before;
        // Every GC_EVERY generations: did this run's commits cross a multiple of it?
        let every = crate::cache::GC_EVERY;
        let crossed = self.work.committed.is_some() && self.start_generation / every != generation / every;
        if (compacted || crossed) && self.lease.check().is_ok() {
            // Storage hygiene only: never fails the sync, and only while we hold the lease.
            if let Err(e) = self
                .cache
                .collect_garbage(&self.snapshot.manifest, self.options.orphan_age)
                .await
            {
                tracing::warn!(repo = %self.config.name, error = %e, "could not collect orphaned pack objects");
            }
        }
        Ok(())
    }
}
