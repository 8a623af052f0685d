//! The pure decisions of a sync, each testable on its own: when nothing needs doing, what the
//! mass-deletion guard holds back, which tips are backed up and for how long, and how a large
//! mirror is cut into batches that each fit in what is left of a function's time limit.

use std::collections::BTreeMap;
use std::time::Duration;

use gix::ObjectId;

use crate::cache::Snapshot;
use crate::config::RepoConfig;
use crate::git::refs::{DeltaKind, OWN_REFS, RefDelta, RefState};
use crate::request::SyncTrigger;

/// Source unchanged since the manifest, and every configured target known to have exactly the
/// source's refs.
pub fn is_noop(advertised: &RefState, snapshot: &Snapshot, config: &RepoConfig) -> bool {
    snapshot.etag.is_some()
        && snapshot.unreadable.is_none()
        && advertised.ids() == snapshot.manifest.source.ids()
        && snapshot.manifest.mirrored_to(config.targets.iter())
}

/// A webhook naming a commit (`after` at `git_ref`) that the manifest already records on the
/// source and every target.
pub fn static_commit_recorded(trigger: &SyncTrigger, snapshot: &Snapshot, config: &RepoConfig) -> bool {
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

/// The mass-deletion guard: `doomed` of `in_scope` refs would be deleted. Above
/// `max_fraction`, a message saying why nothing is deleted; `None` to go ahead.
pub fn guard(doomed: usize, in_scope: usize, max_fraction: f64) -> Option<String> {
    let total = in_scope.max(1);
    let fraction = doomed as f64 / total as f64;
    (doomed > 0 && fraction > max_fraction).then(|| {
        format!(
            "the source no longer has {doomed} of {total} refs ({:.0}% > max_delete_fraction {:.0}%); \
             not deleting them anywhere until this is resolved",
            fraction * 100.0,
            max_fraction * 100.0
        )
    })
}

/// `refs/heads/main` → `refs/gitferry/overwritten/heads/main/{ms}`.
pub fn backup_ref(name: &str, at_ms: u64) -> String {
    format!(
        "{OWN_REFS}overwritten/{}/{at_ms}",
        name.strip_prefix("refs/").unwrap_or(name)
    )
}

/// The inverse of [`backup_ref`] (without the time).
pub fn backup_source(backup: &str) -> String {
    let inner = backup
        .strip_prefix(OWN_REFS)
        .and_then(|r| r.strip_prefix("overwritten/"))
        .unwrap_or(backup);
    let without_time = inner.rsplit_once('/').map_or(inner, |(r, _)| r);
    format!("refs/{without_time}")
}

/// When a backup ref was made (its last path component), 0 if it does not say.
pub fn backup_time(backup: &str) -> u64 {
    backup.rsplit('/').next().and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// Backups older than the retention period, to delete.
pub fn expired_backups(backups: &BTreeMap<String, ObjectId>, now_ms: u64, retention_days: u32) -> Vec<String> {
    let retention_ms = u64::from(retention_days) * 86_400_000;
    backups
        .keys()
        .filter(|name| now_ms.saturating_sub(backup_time(name)) > retention_ms)
        .cloned()
        .collect()
}

/// The tips a change overwrote (forced or deleted), to back up: (backup ref, old tip, ref).
pub fn tips_to_back_up(changes: &[RefDelta], now_ms: u64) -> Vec<(String, ObjectId, String)> {
    changes
        .iter()
        .filter(|d| matches!(d.kind, DeltaKind::Forced | DeltaKind::Deleted))
        .filter_map(|d| d.old.map(|old| (backup_ref(&d.name, now_ms), old, d.name.clone())))
        .collect()
}

/// The refs still to fetch: those the source advertises that the cache does not have at the
/// advertised id, oldest first as far as names tell — tags in version order (each tag's
/// history mostly contains the previous one's, so every batch adds a slice instead of
/// everything), then branches, the default branch (usually the newest history) last.
pub fn fetch_order(advertised: &RefState, cached: &BTreeMap<String, ObjectId>) -> Vec<String> {
    let mut todo: Vec<&String> = advertised
        .refs
        .iter()
        .filter(|(name, t)| cached.get(*name) != Some(&t.id))
        .map(|(name, _)| name)
        .collect();
    let head = advertised.head.as_deref();
    todo.sort_by_cached_key(|name| {
        let class = if name.starts_with("refs/tags/") {
            0
        } else if Some(name.as_str()) == head {
            2
        } else {
            1
        };
        (class, version_key(name))
    });
    todo.into_iter().cloned().collect()
}

/// A sort key that orders embedded numbers numerically (`v2.10` after `v2.9`).
fn version_key(name: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                out.push((std::mem::take(&mut text), digits.parse().unwrap_or(u64::MAX)));
                digits.clear();
            }
            text.push(c);
        }
    }
    out.push((text, digits.parse().unwrap_or(0)));
    out
}

/// Sizes the batches of a large mirror from what the previous batch cost.
///
/// A batch is fetched, committed to the cache and pushed to every target before the next one
/// starts, so whatever happens later (time limit, crash) it stays done. The first batch of a
/// first mirror is one ref; each next one is sized to take about half of the time left at the
/// rate the last one achieved (at most 8× bigger), and to keep its pack under
/// `max_pack_bytes` (hosts refuse huge pushes: GitHub above 2 GB).
#[derive(Clone, Debug)]
pub struct BatchSizer {
    next: usize,
    max_refs: usize,
    max_pack_bytes: u64,
}

/// Refs per batch at most (each ref is a refspec of the fetch).
pub const MAX_BATCH_REFS: usize = 256;
/// A batch's pack is kept under this (estimated from the previous batch).
pub const MAX_BATCH_PACK_BYTES: u64 = 1 << 30;

impl BatchSizer {
    /// Start with `first` refs per batch.
    pub fn new(first: usize) -> BatchSizer {
        BatchSizer {
            next: first.clamp(1, MAX_BATCH_REFS),
            max_refs: MAX_BATCH_REFS,
            max_pack_bytes: MAX_BATCH_PACK_BYTES,
        }
    }

    /// Refs for the next batch.
    pub fn next(&self) -> usize {
        self.next
    }

    /// A batch of `refs` refs took `took` and `bytes` of pack; `left` is the time remaining.
    pub fn record(&mut self, refs: usize, took: Duration, bytes: u64, left: Duration) {
        let refs = refs.max(1);
        let per_ref = took.as_secs_f64() / refs as f64;
        let by_time = if per_ref > 0.0 {
            (left.as_secs_f64() / 2.0 / per_ref) as usize
        } else {
            usize::MAX
        };
        let by_bytes = match bytes / refs as u64 {
            0 => usize::MAX,
            b => (self.max_pack_bytes / b) as usize,
        };
        self.next = by_time
            .min(by_bytes)
            .min(refs.saturating_mul(8))
            .clamp(1, self.max_refs);
    }

    /// A batch of `refs` refs did not finish in time: the next attempt starts with a quarter.
    pub fn shrink_after_interrupt(refs: usize) -> usize {
        (refs / 4).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::refs::RefTarget;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn backup_refs_roundtrip() {
        let b = backup_ref("refs/heads/feature/x", 1700000000123);
        assert_eq!(b, "refs/gitferry/overwritten/heads/feature/x/1700000000123");
        assert_eq!(backup_source(&b), "refs/heads/feature/x");
        assert_eq!(backup_time(&b), 1700000000123);
        assert!(!crate::git::RefPatterns::default().matches(&b));
    }

    #[test]
    fn backups_expire_after_the_retention_period() {
        let day = 86_400_000;
        let now = 100 * day;
        let backups: BTreeMap<String, ObjectId> = [
            (backup_ref("refs/heads/a", now - 31 * day), oid(1)),
            (backup_ref("refs/heads/b", now - 29 * day), oid(2)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            expired_backups(&backups, now, 30),
            vec![backup_ref("refs/heads/a", now - 31 * day)]
        );
    }

    #[test]
    fn only_overwritten_tips_are_backed_up() {
        let delta = |name: &str, kind, old| RefDelta {
            name: name.into(),
            kind,
            old,
            new: Some(oid(9)),
        };
        let changes = [
            delta("refs/heads/ff", DeltaKind::Updated, Some(oid(1))),
            delta("refs/heads/forced", DeltaKind::Forced, Some(oid(2))),
            delta("refs/heads/new", DeltaKind::Created, None),
            RefDelta {
                name: "refs/heads/gone".into(),
                kind: DeltaKind::Deleted,
                old: Some(oid(3)),
                new: None,
            },
        ];
        let b = tips_to_back_up(&changes, 5);
        let names: Vec<&str> = b.iter().map(|(_, _, r)| r.as_str()).collect();
        assert_eq!(names, ["refs/heads/forced", "refs/heads/gone"]);
        assert_eq!(b[0].0, "refs/gitferry/overwritten/heads/forced/5");
    }

    #[test]
    fn the_guard_trips_above_the_fraction_only() {
        assert!(guard(0, 10, 0.5).is_none());
        assert!(guard(5, 10, 0.5).is_none());
        let m = guard(6, 10, 0.5).unwrap();
        assert!(m.contains("6 of 10 refs (60% > max_delete_fraction 50%)"), "{m}");
        assert!(guard(1, 1, 0.0).is_some());
    }

    #[test]
    fn fetch_order_is_tags_by_version_then_branches_then_head() {
        let mut adv = RefState::default();
        for (n, name) in [
            "refs/heads/main",
            "refs/heads/dev",
            "refs/tags/v1.10",
            "refs/tags/v1.9",
            "refs/tags/v1.2",
            "refs/tags/v2.0",
        ]
        .iter()
        .enumerate()
        {
            adv.refs.insert((*name).into(), RefTarget::new(oid(n as u8 + 1)));
        }
        adv.head = Some("refs/heads/main".into());
        let cached: BTreeMap<String, ObjectId> = [("refs/tags/v1.2".to_owned(), oid(5))].into_iter().collect();
        assert_eq!(
            fetch_order(&adv, &cached),
            [
                "refs/tags/v1.9",
                "refs/tags/v1.10",
                "refs/tags/v2.0",
                "refs/heads/dev",
                "refs/heads/main"
            ]
        );
    }

    #[test]
    fn batches_grow_with_the_rate_and_stay_inside_the_time_and_size_left() {
        let mut s = BatchSizer::new(1);
        assert_eq!(s.next(), 1);
        // 1 ref in 0.1 s with 100 s left: time would allow 500, growth caps at 8.
        s.record(1, Duration::from_millis(100), 1000, Duration::from_secs(100));
        assert_eq!(s.next(), 8);
        // 8 refs in 8 s, 20 s left: half of 20 s at 1 s per ref = 10.
        s.record(8, Duration::from_secs(8), 8000, Duration::from_secs(20));
        assert_eq!(s.next(), 10);
        // Huge packs: 600 MB per ref keeps batches at one ref.
        s.record(10, Duration::from_millis(10), 6_000_000_000, Duration::from_secs(300));
        assert_eq!(s.next(), 1);
        // Never above the refspec cap.
        s.record(200, Duration::from_millis(1), 0, Duration::from_secs(900));
        assert_eq!(s.next(), MAX_BATCH_REFS);
        assert_eq!(BatchSizer::shrink_after_interrupt(10), 2);
        assert_eq!(BatchSizer::shrink_after_interrupt(1), 1);
    }
}
