//! An in-process queue with SQS FIFO semantics: message groups, in-order delivery with one
//! in-flight batch per group, visibility timeouts, a deduplication window, receive counts and a
//! dead-letter list. The embedded default of `gitferry serve`, and the queue of unit tests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};

use super::{Message, Queue, QueueError, Sent};
use crate::request::SyncRequest;

/// SQS keeps deduplication ids for five minutes.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Entry {
    body: String,
    receipt: Option<String>,
    visible_at: Instant,
    receive_count: u32,
}

#[derive(Debug, Default)]
struct State {
    groups: BTreeMap<String, VecDeque<Entry>>,
    dedup: HashMap<String, Instant>,
    dead: Vec<(String, String)>,
}

/// See the module docs.
#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<State>,
    arrived: Notify,
    max_receives: u32,
}

impl MemoryQueue {
    /// A queue that moves a message to the dead-letter list after `max_receives` deliveries.
    pub fn new(max_receives: u32) -> MemoryQueue {
        MemoryQueue {
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            max_receives,
        }
    }

    /// Messages waiting or in flight.
    pub async fn len(&self) -> usize {
        self.state.lock().await.groups.values().map(VecDeque::len).sum()
    }

    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Bodies of dead-lettered messages, with their group.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        self.state.lock().await.dead.clone()
    }

    /// Every message still queued (waiting or in flight) as (group, body), in order — for
    /// persisting the queue across restarts.
    pub async fn snapshot_with_groups(&self) -> Vec<(String, String)> {
        let state = self.state.lock().await;
        state
            .groups
            .iter()
            .flat_map(|(g, entries)| entries.iter().map(move |e| (g.clone(), e.body.clone())))
            .collect()
    }

    /// Enqueue raw bodies for `group` (restoring a snapshot; no deduplication).
    pub async fn restore(&self, bodies: impl IntoIterator<Item = (String, String)>) {
        let mut state = self.state.lock().await;
        for (group, body) in bodies {
            state.groups.entry(group).or_default().push_back(Entry {
                body,
                receipt: None,
                visible_at: Instant::now(),
                receive_count: 0,
            });
        }
        drop(state);
        self.arrived.notify_waiters();
    }

    fn take(&self, state: &mut State, max: usize, visibility: Duration) -> Vec<Message> {
        let now = Instant::now();
        let mut out = Vec::new();
        let max_receives = self.max_receives;
        let mut dead = Vec::new();
        for (group, entries) in state.groups.iter_mut() {
            if out.len() >= max {
                break;
            }
            // A group whose head is in flight (and not yet timed out) is blocked.
            if entries
                .front()
                .is_some_and(|e| e.receipt.is_some() && e.visible_at > now)
            {
                continue;
            }
            for entry in entries.iter_mut() {
                if out.len() >= max || entry.visible_at > now {
                    break;
                }
                if entry.receive_count >= max_receives {
                    dead.push((group.clone(), entry.body.clone()));
                    entry.receipt = Some(String::from("dead"));
                    continue;
                }
                let receipt = uuid::Uuid::new_v4().to_string();
                entry.receipt = Some(receipt.clone());
                entry.visible_at = now + visibility;
                entry.receive_count += 1;
                out.push(Message {
                    body: entry.body.clone(),
                    receipt,
                    group: group.clone(),
                    receive_count: entry.receive_count,
                });
            }
        }
        for entries in state.groups.values_mut() {
            entries.retain(|e| e.receipt.as_deref() != Some("dead"));
        }
        state.groups.retain(|_, e| !e.is_empty());
        state.dead.extend(dead);
        out
    }

    fn find<'a>(state: &'a mut State, receipt: &str) -> Option<(&'a String, &'a mut VecDeque<Entry>, usize)> {
        state.groups.iter_mut().find_map(|(g, entries)| {
            entries
                .iter()
                .position(|e| e.receipt.as_deref() == Some(receipt))
                .map(|i| (g, entries, i))
        })
    }
}

#[async_trait::async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, requests: &[SyncRequest]) -> Result<Sent, QueueError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        state.dedup.retain(|_, until| *until > now);
        let mut sent = Sent::default();
        for r in requests {
            // Scope: the message group, as the FIFO queue is configured (one delivery may
            // concern several repositories).
            let id = format!("{}\0{}", r.group_id(), r.dedup_id());
            if state.dedup.contains_key(&id) {
                sent.duplicates += 1;
                continue;
            }
            state.dedup.insert(id, now + DEDUP_WINDOW);
            state
                .groups
                .entry(r.group_id().to_owned())
                .or_default()
                .push_back(Entry {
                    body: r.to_json(),
                    receipt: None,
                    visible_at: now,
                    receive_count: 0,
                });
            sent.accepted += 1;
        }
        drop(state);
        self.arrived.notify_waiters();
        Ok(sent)
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Message>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.arrived.notified();
            {
                let mut state = self.state.lock().await;
                let got = self.take(&mut state, max, visibility);
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake on new messages, or poll for visibility timeouts lapsing.
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(100)), notified).await;
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        let (_, entries, i) = Self::find(&mut state, receipt).ok_or(QueueError::UnknownReceipt)?;
        entries.remove(i);
        state.groups.retain(|_, e| !e.is_empty());
        drop(state);
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn retry(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        let (_, entries, i) = Self::find(&mut state, receipt).ok_or(QueueError::UnknownReceipt)?;
        entries[i].visible_at = Instant::now() + delay;
        Ok(())
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        let (_, entries, i) = Self::find(&mut state, receipt).ok_or(QueueError::UnknownReceipt)?;
        entries[i].visible_at = Instant::now() + visibility;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIS: Duration = Duration::from_secs(30);
    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn fifo_groups_deliver_in_order_one_batch_at_a_time() {
        let q = MemoryQueue::new(5);
        q.send(&[
            SyncRequest::poll("a", 1),
            SyncRequest::poll("a", 2),
            SyncRequest::poll("b", 1),
        ])
        .await
        .unwrap();
        let first = q.receive(10, VIS, NOW).await.unwrap();
        assert_eq!(first.len(), 3, "both of a (in order) and b");
        assert!(first[0].body.contains("\"slot\":1") && first[1].body.contains("\"slot\":2"));
        // Groups with messages in flight deliver nothing more.
        q.send(&[SyncRequest::poll("a", 3)]).await.unwrap();
        assert!(q.receive(10, VIS, NOW).await.unwrap().is_empty());
        for m in &first {
            q.ack(&m.receipt).await.unwrap();
        }
        let next = q.receive(10, VIS, NOW).await.unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].body.contains("\"slot\":3"));
    }

    #[tokio::test]
    async fn duplicates_are_dropped_within_the_window() {
        let q = MemoryQueue::new(5);
        let r = SyncRequest::poll("a", 9);
        let s = q.send(&[r.clone(), r.clone()]).await.unwrap();
        assert_eq!((s.accepted, s.duplicates), (1, 1));
        assert_eq!(q.send(&[r]).await.unwrap().duplicates, 1);
        assert_eq!(q.len().await, 1);
    }

    #[tokio::test]
    async fn visibility_timeout_redelivers_and_dead_letters_after_max_receives() {
        let q = MemoryQueue::new(2);
        q.send(&[SyncRequest::poll("a", 1)]).await.unwrap();
        let short = Duration::from_millis(20);
        let m1 = q.receive(1, short, NOW).await.unwrap();
        assert_eq!(m1[0].receive_count, 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let m2 = q.receive(1, short, NOW).await.unwrap();
        assert_eq!(m2[0].receive_count, 2);
        assert!(
            q.ack(&m1[0].receipt).await.is_err(),
            "an expired receipt is no longer valid"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(q.receive(1, short, NOW).await.unwrap().is_empty());
        assert_eq!(q.dead_letters().await.len(), 1);
        assert!(q.is_empty().await);
    }

    #[tokio::test]
    async fn retry_delays_and_receive_waits_for_arrivals() {
        let q = std::sync::Arc::new(MemoryQueue::new(5));
        q.send(&[SyncRequest::poll("a", 1)]).await.unwrap();
        let m = q.receive(1, VIS, NOW).await.unwrap();
        q.retry(&m[0].receipt, Duration::from_millis(50)).await.unwrap();
        assert!(q.receive(1, VIS, NOW).await.unwrap().is_empty());
        let again = q.receive(1, VIS, Duration::from_secs(2)).await.unwrap();
        assert_eq!(again[0].receive_count, 2);
        q.ack(&again[0].receipt).await.unwrap();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.receive(1, VIS, Duration::from_secs(5)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        q.send(&[SyncRequest::poll("b", 1)]).await.unwrap();
        assert_eq!(waiter.await.unwrap().len(), 1);
    }
}
