//! One target's push: what we want it to carry → the receive-pack client → what it reported,
//! what to record for it in the manifest, and its line in the status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use gix::ObjectId;

use super::{Failure, blocking};
use crate::cache::Manifest;
use crate::config::{Divergence, RepoConfig, TargetConfig};
use crate::git::repo;
use crate::git::{self, PushOptions, RefState};
use crate::status::{RefIssue, TargetFinish};

/// What pushing one target did.
pub(super) struct Pushed {
    pub finish: TargetFinish,
    /// The target's refs to record (what it has now, as far as we know); `None`: keep the
    /// previous record (the push failed, nothing is known to have landed).
    pub recorded: Option<BTreeMap<String, String>>,
    pub bytes: u64,
    /// The push was stopped by the interrupt (time limit or shutdown), not refused.
    pub interrupted: bool,
}

/// One push of `desired` (the cache's refs) to `target`.
pub(super) struct TargetPush<'a> {
    pub config: &'a RepoConfig,
    pub target: &'a TargetConfig,
    pub cache_path: PathBuf,
    pub desired: &'a RefState,
    pub prune: bool,
    /// The manifest as last committed (for refs kept with `divergence = "keep"`).
    pub manifest: &'a Manifest,
    pub interrupt: Arc<AtomicBool>,
    /// For targets gitferry creates (`created.json`).
    pub store: &'a dyn crate::store::ObjectStore,
    /// The pack the fetch just received, sent as it is to a target whose refs are the cache's
    /// before that fetch (no counting, no re-packing; see `git::Forward`).
    pub forward: Option<&'a git::Forward>,
}

impl TargetPush<'_> {
    pub async fn run(self) -> Pushed {
        if self.target.create.is_some() && !self.pushed_before() {
            // A target template with `create = true`: make the repository exist first.
            if let Err(e) = crate::accounts::ensure_target(self.store, self.config, self.target).await {
                let class = if e.transient {
                    git::ErrorClass::Transient
                } else {
                    git::ErrorClass::Permanent
                };
                return self.failed(Failure {
                    message: e.message,
                    class,
                    interrupted: false,
                });
            }
        }
        let last_known = self.last_known();
        let options = PushOptions {
            refs: self.config.refs.clone(),
            prune: self.prune,
            atomic: false,
            keep_divergent: last_known.clone(),
        };
        let (path, remote, desired, interrupt, forward) = (
            self.cache_path.clone(),
            self.target.remote.clone(),
            self.desired.clone(),
            self.interrupt.clone(),
            self.forward.cloned(),
        );
        let pushed = blocking("pushing", move || {
            let r = repo::open(&path)?;
            git::push_through(&r, &remote, None, forward.as_ref(), &desired, &options, &interrupt)
        })
        .await;
        match pushed {
            Ok(outcome) => {
                tracing::info!(
                    repo = %self.config.name,
                    target = %self.target.remote,
                    pack = ?outcome.pack,
                    objects = outcome.objects,
                    bytes = outcome.bytes,
                    "pushed"
                );
                landed(outcome, last_known.as_ref())
            }
            Err(f) => self.failed(f),
        }
    }

    /// Has anything ever been recorded for this target (then it exists)?
    fn pushed_before(&self) -> bool {
        let recorded = &self.manifest.targets;
        recorded.contains_key(&self.target.state_key()) || recorded.contains_key(&self.target.name)
    }

    /// The refs we last knew the target to have, when it keeps refs others moved.
    fn last_known(&self) -> Option<BTreeMap<String, ObjectId>> {
        (self.target.divergence == Divergence::Keep).then(|| {
            let recorded = &self.manifest.targets;
            // Manifests written before targets were keyed by URL have them by name: read that
            // once, or every ref would look moved by someone else after the upgrade.
            recorded
                .get(&self.target.state_key())
                .or_else(|| recorded.get(&self.target.name))
                .map(|refs| {
                    refs.iter()
                        .filter_map(|(n, id)| ObjectId::from_hex(id.as_bytes()).ok().map(|id| (n.clone(), id)))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    fn failed(&self, f: Failure) -> Pushed {
        if !f.interrupted {
            tracing::warn!(repo = %self.config.name, target = %self.target.name, error = %f.message, "push failed");
        }
        Pushed {
            interrupted: f.interrupted,
            finish: TargetFinish {
                error: Some((f.message, f.class)),
                ..Default::default()
            },
            recorded: None,
            bytes: 0,
        }
    }
}

/// A push that got an answer: per-ref results, and the refs to record.
fn landed(outcome: git::PushOutcome, last_known: Option<&BTreeMap<String, ObjectId>>) -> Pushed {
    let mut after = outcome.target_after();
    // A withheld ref is recorded as we last knew it, not as the other writer left it: recording
    // theirs would make it "known", and the next sync would overwrite it after all.
    for d in &outcome.diverged {
        match last_known.and_then(|k| k.get(&d.name)) {
            Some(id) => after.insert(d.name.clone(), *id),
            None => after.remove(&d.name),
        };
    }
    let finish = TargetFinish {
        error: None,
        complete: false,
        lfs: None,
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
    };
    Pushed {
        finish,
        recorded: Some(after.into_iter().map(|(n, id)| (n, id.to_string())).collect()),
        bytes: outcome.bytes,
        interrupted: false,
    }
}

/// Fold one batch's result for a target into what the sync reports for it.
pub(super) fn merge(into: &mut TargetFinish, batch: TargetFinish) {
    into.refs_changed += batch.refs_changed;
    // Every push offers all the cache's refs so far: the latest verdicts are the complete ones.
    into.rejected = batch.rejected;
    into.diverged = batch.diverged;
    into.error = batch.error;
    into.complete = batch.complete;
    if batch.lfs.is_some() {
        into.lfs = batch.lfs; // the LFS step's, not undone by the push after it
    }
}
