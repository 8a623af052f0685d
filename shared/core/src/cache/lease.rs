//! Leases: one worker at a time changes a repository's cache and targets.
//!
//! The SQS FIFO group already serialises a repo's messages; the lease is the second guard, for
//! what the queue cannot see (a Lambda that timed out while its push was still running, a local
//! server and a Lambda sharing a bucket). Modelled on ghreplica's lease recovery:
//!
//! * `lease.json` holds owner, acquired_at, heartbeat_at, expires_at; it is taken with a
//!   conditional create (`If-None-Match: *`) or, when the previous holder's heartbeat is older
//!   than its TTL, reclaimed with `If-Match` on the ETag read — the reclaim is recorded with the
//!   previous owner, so a crashed worker is visible in status rather than silently papered over;
//! * a heartbeat task renews it (conditional on the ETag it last wrote) every TTL/3 while a sync
//!   runs; if a renewal finds someone else's lease, the lease is *lost* and the sync stops before
//!   pushing. A renewal whose write landed but whose reply was lost is not a loss: when the
//!   condition fails, the stored record is read back, and if it is still this lease (same owner
//!   and acquisition time, not released) the write is retried on its ETag;
//! * [`Lease::check`] also fails once the lease has expired by the holder's own clock — renewals
//!   that kept failing (store unreachable) for a whole TTL mean another worker may already hold it;
//! * release writes a `released` record (conditional again), so the next holder takes it without
//!   counting a reclaim.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{CacheError, keys};
use crate::clock::now_ms;
use crate::store::{Condition, ObjectStore, StoreError};

/// What `lease.json` holds. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub owner: String,
    pub acquired_at: u64,
    pub heartbeat_at: u64,
    pub expires_at: u64,
    #[serde(default)]
    pub released: bool,
    /// Set when this lease was taken over from a holder whose heartbeat had stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimed_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimed_at: Option<u64>,
}

impl LeaseRecord {
    pub fn is_live(&self, now: u64) -> bool {
        !self.released && self.expires_at > now
    }

    /// Live, and not held by a process of this machine that no longer runs (a crashed local
    /// server): someone may really be syncing.
    pub fn is_held(&self, now: u64) -> bool {
        self.is_live(now) && !local_holder_is_dead(&self.owner)
    }
}

/// A held lease. Dropping it without [`Lease::release`] leaves it to expire.
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    key: String,
    ttl: Duration,
    state: Mutex<(LeaseRecord, String)>,
    lost: Arc<AtomicBool>,
    /// `expires_at` of our last successful write (Unix ms), for [`Lease::check`].
    expires_at: AtomicU64,
    heartbeat: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Lease {
    /// Take the lease of `repo` for `owner`, reclaiming it if its holder stopped heartbeating.
    /// `LeaseHeld` (transient) if someone else holds a live lease.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        repo: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Arc<Lease>, CacheError> {
        let key = keys::lease(repo);
        let now = now_ms();
        let current = store.get(&key).await?;
        let mut record = LeaseRecord {
            owner: owner.to_owned(),
            acquired_at: now,
            heartbeat_at: now,
            expires_at: now + ttl.as_millis() as u64,
            released: false,
            reclaimed_from: None,
            reclaimed_at: None,
        };
        let condition = match &current {
            None => Condition::IfAbsent,
            Some(obj) => {
                let previous: Option<LeaseRecord> = serde_json::from_slice(&obj.body).ok();
                match previous {
                    Some(p) if p.is_live(now) && p.owner != owner && !local_holder_is_dead(&p.owner) => {
                        return Err(CacheError::LeaseHeld {
                            owner: p.owner,
                            expires_at: p.expires_at,
                        });
                    }
                    Some(p) if !p.released && p.owner != owner => {
                        tracing::warn!(repo, previous_owner = %p.owner, "reclaiming a stale lease (its heartbeat stopped)");
                        record.reclaimed_from = Some(p.owner);
                        record.reclaimed_at = Some(now);
                    }
                    _ => {}
                }
                Condition::IfMatch(obj.etag.clone())
            }
        };
        let body = serde_json::to_vec(&record).expect("lease serialises");
        let etag = match store.put(&key, body, condition).await {
            Ok(etag) => etag,
            Err(StoreError::PreconditionFailed { .. }) => {
                // Someone else took it between our read and write.
                let holder = store
                    .get(&key)
                    .await?
                    .and_then(|o| serde_json::from_slice::<LeaseRecord>(&o.body).ok());
                return Err(CacheError::LeaseHeld {
                    owner: holder.as_ref().map_or_else(|| "unknown".into(), |h| h.owner.clone()),
                    expires_at: holder.map_or(0, |h| h.expires_at),
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Arc::new(Lease {
            store,
            key,
            ttl,
            expires_at: AtomicU64::new(record.expires_at),
            state: Mutex::new((record, etag)),
            lost: Arc::new(AtomicBool::new(false)),
            heartbeat: std::sync::Mutex::new(None),
        }))
    }

    /// The record as last written by us.
    pub async fn record(&self) -> LeaseRecord {
        self.state.lock().await.0.clone()
    }

    /// True once a renewal found that someone else holds the lease: stop before pushing.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Fail with `LeaseLost` if the lease was lost, or if it has expired by our own clock (the
    /// renewals failed for a whole TTL, or it was released): another worker may hold it now.
    pub fn check(&self) -> Result<(), CacheError> {
        if self.is_lost() || now_ms() >= self.expires_at.load(Ordering::SeqCst) {
            Err(CacheError::LeaseLost)
        } else {
            Ok(())
        }
    }

    /// Renew once: push `expires_at` one TTL ahead, conditional on our last write.
    pub async fn renew(&self) -> Result<(), CacheError> {
        let mut state = self.state.lock().await;
        let now = now_ms();
        let mut record = state.0.clone();
        record.heartbeat_at = now;
        record.expires_at = now + self.ttl.as_millis() as u64;
        match self.write_own(&state, &record).await {
            Ok(etag) => {
                self.expires_at.store(record.expires_at, Ordering::SeqCst);
                *state = (record, etag);
                Ok(())
            }
            Err(CacheError::LeaseLost) => {
                self.lost.store(true, Ordering::SeqCst);
                Err(CacheError::LeaseLost)
            }
            Err(e) => Err(e),
        }
    }

    /// Write `record` over our lease, conditional on the ETag of our last write. A failed
    /// condition may be our own earlier write whose reply was lost: if the stored record is still
    /// this lease (same owner and acquisition, not released), retry once on its ETag. Otherwise
    /// someone else holds it: `LeaseLost`.
    async fn write_own(&self, state: &(LeaseRecord, String), record: &LeaseRecord) -> Result<String, CacheError> {
        let body = serde_json::to_vec(record).expect("lease serialises");
        match self
            .store
            .put(&self.key, body.clone(), Condition::IfMatch(state.1.clone()))
            .await
        {
            Ok(etag) => return Ok(etag),
            Err(StoreError::PreconditionFailed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(current) = self.store.get(&self.key).await? else {
            return Err(CacheError::LeaseLost);
        };
        let ours = serde_json::from_slice::<LeaseRecord>(&current.body)
            .is_ok_and(|s| s.owner == state.0.owner && s.acquired_at == state.0.acquired_at && !s.released);
        if !ours {
            return Err(CacheError::LeaseLost);
        }
        match self.store.put(&self.key, body, Condition::IfMatch(current.etag)).await {
            Ok(etag) => Ok(etag),
            Err(StoreError::PreconditionFailed { .. }) => Err(CacheError::LeaseLost),
            Err(e) => Err(e.into()),
        }
    }

    /// Renew every TTL/3 in the background until released (or lost).
    pub fn start_heartbeat(self: &Arc<Self>) {
        let lease = Arc::downgrade(self);
        let period = self.ttl / 3;
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(lease) = lease.upgrade() else { return };
                match lease.renew().await {
                    Ok(()) => {}
                    Err(CacheError::LeaseLost) => {
                        tracing::error!(key = %lease.key, "lease lost: another worker took over");
                        return;
                    }
                    // A failed renewal is retried next period; the TTL leaves room for two.
                    Err(e) => tracing::warn!(key = %lease.key, error = %e, "lease renewal failed"),
                }
            }
        });
        *self.heartbeat.lock().expect("not poisoned") = Some(handle);
    }

    /// Stop heartbeating and mark the lease released (if it is still ours).
    pub async fn release(&self) -> Result<(), CacheError> {
        if let Some(h) = self.heartbeat.lock().expect("not poisoned").take() {
            h.abort();
        }
        if self.is_lost() {
            return Ok(());
        }
        let state = self.state.lock().await;
        let mut record = state.0.clone();
        record.released = true;
        record.expires_at = now_ms();
        self.expires_at.store(record.expires_at, Ordering::SeqCst);
        match self.write_own(&state, &record).await {
            Ok(_) | Err(CacheError::LeaseLost) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut h) = self.heartbeat.lock()
            && let Some(h) = h.take()
        {
            h.abort();
        }
    }
}

/// A lease held by a process of this machine (`{host}:{pid}`, the local server's owner id)
/// that no longer runs can be taken at once instead of waiting for its TTL: after a crash and
/// restart, the repo resumes immediately.
fn local_holder_is_dead(owner: &str) -> bool {
    let Some((host, pid)) = owner.rsplit_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    let this_host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned());
    matches!(this_host, Ok(h) if h == host)
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The lease of `repo` as stored (for status), if any.
pub async fn read(store: &dyn ObjectStore, repo: &str) -> Result<Option<LeaseRecord>, CacheError> {
    Ok(store
        .get(&keys::lease(repo))
        .await?
        .and_then(|o| serde_json::from_slice(&o.body).ok()))
}
