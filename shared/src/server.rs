//! The local runtime behind `gitferry serve`: the same `SyncManager`, `Api` and poller as the
//! Lambda functions, driven by an in-process worker pool and a ticker instead of SQS event
//! source mappings and EventBridge.
//!
//! * **Workers** take batches from the queue (FIFO groups keep one repo serial while different
//!   repos sync in parallel), run them through `SyncManager`, acknowledge what is done and give
//!   back what failed transiently with a growing delay (5 s × 2^n, at most 5 minutes).
//! * **Ticker**: every minute, the repos that are due (`crate::poll::due`).
//! * **Startup reconciliation**: every repo is enqueued once when the server starts.
//! * **Nothing queued is lost across a restart** (even `kill -9`): with the embedded queue, the
//!   queue's contents are saved to the store (`state/queue.json`) after every change, and
//!   restored at start — in-flight messages included, so an interrupted sync runs again.
//! * **Shutdown** (SIGINT/SIGTERM): workers stop taking work; syncs in flight are told to stop at
//!   their next phase boundary, which records a terminal status; the queue is saved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::queue::memory::MemoryQueue;
use crate::queue::{Message, Queue, QueueError, Sent};
use crate::request::{SyncRequest, SyncTrigger};
use crate::store::{Condition, ObjectStore};
use crate::sync::{SyncManager, Verdict};

/// Where the embedded queue is saved.
pub const QUEUE_KEY: &str = "state/queue.json";
/// How long a worker may hold a batch before it is redelivered (a long sync extends nothing
/// locally: the lease protects the repository).
const VISIBILITY: Duration = Duration::from_secs(3600);

/// The embedded queue, saved to the store after every change.
///
/// Saves are group commits: a change bumps a generation counter, and a save covers every change
/// made before its snapshot, so concurrent senders waiting on one save do not each rewrite the
/// queue (measured with tests/tests/load.rs, debug build: 5,000 deliveries to 50 repos went from
/// 107/s, p50 140 ms to 856/s, p50 20 ms, together with 100-message worker batches).
#[derive(Debug)]
pub struct PersistentQueue {
    inner: MemoryQueue,
    store: Arc<dyn ObjectStore>,
    /// Generation of the last change, and of the last save.
    changed: std::sync::atomic::AtomicU64,
    save: tokio::sync::Mutex<u64>,
}

impl PersistentQueue {
    /// Restore the queue saved in `store` (if any).
    pub async fn open(store: Arc<dyn ObjectStore>, max_receives: u32) -> Result<PersistentQueue, QueueError> {
        let inner = MemoryQueue::new(max_receives);
        let saved = store
            .get(QUEUE_KEY)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        if let Some(obj) = saved {
            let bodies: Vec<(String, String)> = serde_json::from_slice(&obj.body).unwrap_or_default();
            tracing::info!(messages = bodies.len(), "restored the queue saved at the last stop");
            inner.restore(bodies).await;
        }
        Ok(PersistentQueue {
            inner,
            store,
            changed: std::sync::atomic::AtomicU64::new(0),
            save: tokio::sync::Mutex::new(0),
        })
    }

    pub fn inner(&self) -> &MemoryQueue {
        &self.inner
    }

    /// Make sure the store holds every change made so far (this caller's included).
    async fn persist(&self) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering;
        let mine = self.changed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut saved = self.save.lock().await;
        if *saved >= mine {
            return Ok(()); // a save that started after our change already covered it
        }
        let covers = self.changed.load(Ordering::SeqCst);
        let snapshot = self.inner.snapshot_with_groups().await;
        let body = serde_json::to_vec(&snapshot).expect("queue serialises");
        self.store
            .put(QUEUE_KEY, body, Condition::Always)
            .await
            .map_err(|e| QueueError::Unavailable(format!("saving the queue: {e}")))?;
        *saved = covers;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Queue for PersistentQueue {
    async fn send(&self, requests: &[SyncRequest]) -> Result<Sent, QueueError> {
        let sent = self.inner.send(requests).await?;
        if sent.accepted > 0 {
            self.persist().await?;
        }
        Ok(sent)
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Message>, QueueError> {
        self.inner.receive(max, visibility, wait).await
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.ack(receipt).await?;
        self.persist().await
    }

    async fn retry(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.inner.retry(receipt, delay).await
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.inner.extend(receipt, visibility).await
    }
}

/// Delay before a failed request is retried: 5 s × 2^(n−1), at most 5 minutes.
pub fn backoff(receive_count: u32) -> Duration {
    let exp = receive_count.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1 << exp)).min(Duration::from_secs(300))
}

/// Enqueue every repository once (startup reconciliation).
pub async fn reconcile(config: &Config, queue: &dyn Queue, why: &str) -> Result<usize, QueueError> {
    let all: Vec<SyncRequest> = config
        .repos
        .keys()
        .map(|repo| {
            SyncRequest::new(
                repo,
                SyncTrigger::Manual {
                    requested_by: why.to_owned(),
                    id: uuid::Uuid::new_v4().to_string(),
                },
            )
        })
        .collect();
    queue.send(&all).await.map(|s| s.accepted)
}

/// Run `workers` sync workers and the poll ticker until `shutdown` turns true; then wait for
/// the workers to finish their current batch (they stop at the next phase boundary).
pub async fn run(manager: SyncManager, queue: Arc<dyn Queue>, workers: usize, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    for id in 0..workers.max(1) {
        let (manager, queue, shutdown) = (manager.clone(), queue.clone(), shutdown.clone());
        tasks.spawn(async move { worker(id, manager, queue, shutdown).await });
    }
    {
        let (config, queue, mut shutdown) = (manager.config().clone(), queue.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(crate::poll::TICK_SECS));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await; // the first tick fires at once; startup reconciliation covers it
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let due = crate::poll::due(&config, crate::request::now_ms() / 1000, crate::poll::TICK_SECS);
                if !due.is_empty()
                    && let Err(e) = queue.send(&due).await
                {
                    tracing::error!(error = %e, "poll tick could not enqueue");
                }
            }
        });
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    while tasks.join_next().await.is_some() {}
}

async fn worker(id: usize, manager: SyncManager, queue: Arc<dyn Queue>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Up to 100 at once (SQS caps it at 10): more requests per repo coalesce into one sync.
        let messages = tokio::select! {
            r = queue.receive(100, VISIBILITY, Duration::from_secs(1)) => r,
            _ = shutdown.changed() => return,
        };
        let messages = match messages {
            Ok(m) if m.is_empty() => continue,
            Ok(m) => m,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "queue receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut requests = Vec::new();
        let mut owners = Vec::new();
        for m in &messages {
            match SyncRequest::from_json(&m.body) {
                Ok(r) => {
                    requests.push(r);
                    owners.push(m);
                }
                Err(e) => {
                    tracing::error!(worker = id, group = %m.group, error = %e, "dropping an invalid message");
                    let _ = queue.ack(&m.receipt).await;
                }
            }
        }
        // Syncs stop at their next phase boundary once shutdown starts.
        let outcome = manager
            .handle_batch(&requests, Instant::now() + Duration::from_secs(24 * 3600))
            .await;
        for (verdict, m) in outcome.verdicts.iter().zip(owners) {
            let result = match verdict {
                Verdict::Done => queue.ack(&m.receipt).await,
                Verdict::Retry(reason) => {
                    let delay = backoff(m.receive_count);
                    tracing::warn!(worker = id, group = %m.group, %reason, retry_in = ?delay, "sync will be retried");
                    queue.retry(&m.receipt, delay).await
                }
            };
            if let Err(e) = result {
                tracing::error!(worker = id, error = %e, "queue update failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }
}
