//! The embedded queue of `gitferry serve`: the in-process FIFO ([`super::memory`]) saved to the
//! store (`state/queue.json`) after every change and restored at start, so nothing queued is
//! lost across a restart, even `kill -9` — in-flight messages included, so an interrupted sync
//! runs again.

use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryQueue;
use super::{Message, Queue, QueueError, Sent};
use crate::request::SyncRequest;
use crate::store::{Condition, ObjectStore};

/// Where the embedded queue is saved.
pub const QUEUE_KEY: &str = crate::keys::QUEUE;
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
