//! The one queue consumer: a batch of queue messages → [`SyncManager`] → acknowledge, retry
//! after a delay, or continue. The sync Lambda and `gitferry serve` both run exactly this; they
//! differ only in where the batch comes from (an SQS event of the event source mapping, or
//! [`Queue::receive`]) and in who deletes acknowledged messages ([`Ack`]).
//!
//! Per batch:
//!
//! * messages that are not valid `SyncRequest`s are logged and acknowledged (never a poison
//!   loop);
//! * while the syncs run, the messages' visibility is extended (every third of the visibility
//!   timeout), but never beyond the worker's own deadline plus [`VISIBILITY_MARGIN`]: a Lambda
//!   killed at its time limit leaves messages that reappear a minute later, not after an hour;
//! * a transient failure is retried after [`retry_delay`] (5 s × 2ⁿ, capped at 5 minutes and at
//!   the repository's poll interval); FIFO order holds: once a message of a group is retried,
//!   every later message of that group in the batch is retried too;
//! * a sync that stopped at its deadline after committing progress is *continued*: a `resume`
//!   request is enqueued (a fresh message, so a long first mirror is not counted towards the
//!   dead-letter limit) and the message is acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::clock::{scaled, scaled_secs};
use crate::queue::{Message, Queue};
use crate::request::SyncRequest;
use crate::sync::{SyncManager, Verdict};

/// A message is never kept hidden longer than the worker's deadline plus this.
pub const VISIBILITY_MARGIN: Duration = Duration::from_secs(60);

/// Who deletes the messages the worker is done with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The worker deletes them (`gitferry serve`, which receives them itself).
    Delete,
    /// The caller does: the Lambda event source mapping deletes every record the function does
    /// not report as a batch item failure.
    ByCaller,
}

/// How the worker treats its queue.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// The queue's visibility timeout (what a receive hides a message for).
    pub visibility: Duration,
    pub ack: Ack,
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done with it (synced, no-op, skipped, failed permanently, continued, or invalid).
    Ack,
    /// Give it back: visible again after `delay`.
    Retry { delay: Duration, reason: String },
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Worker {
    manager: SyncManager,
    queue: Arc<dyn Queue>,
    options: WorkerOptions,
}

impl Worker {
    pub fn new(manager: SyncManager, queue: Arc<dyn Queue>, options: WorkerOptions) -> Worker {
        Worker {
            manager,
            queue,
            options,
        }
    }

    pub fn manager(&self) -> &SyncManager {
        &self.manager
    }

    /// Handle one batch and apply the result to the queue (retry delays; deletes with
    /// [`Ack::Delete`]). Returns one disposition per message, in order.
    pub async fn handle(&self, messages: &[Message], deadline: Instant) -> Vec<Disposition> {
        let (requests, positions) = decode(messages);
        let heartbeat = self.heartbeat(messages, deadline);
        let outcome = self.manager.handle_batch(&requests, deadline).await;
        heartbeat.abort();
        let mut dispositions = vec![Disposition::Ack; messages.len()];
        for ((verdict, request), i) in outcome.verdicts.iter().zip(&requests).zip(&positions) {
            dispositions[*i] = self.dispose(verdict, request, &messages[*i]).await;
        }
        keep_fifo_order(messages, &mut dispositions);
        self.apply(messages, &dispositions).await;
        dispositions
    }

    async fn dispose(&self, verdict: &Verdict, request: &SyncRequest, message: &Message) -> Disposition {
        match verdict {
            Verdict::Done => Disposition::Ack,
            Verdict::Retry(reason) => Disposition::Retry {
                delay: self.retry_delay_for(&request.repo, message.receive_count),
                reason: reason.clone(),
            },
            Verdict::Continue { generation } => {
                let next = SyncRequest::resume(&request.repo, *generation, request.trigger.kind());
                match self.queue.send(std::slice::from_ref(&next)).await {
                    Ok(_) => {
                        tracing::info!(repo = %request.repo, generation, "interrupted after progress: continuation queued");
                        Disposition::Ack
                    }
                    Err(e) => Disposition::Retry {
                        delay: scaled_secs(1),
                        reason: format!("interrupted, and the continuation could not be queued: {e}"),
                    },
                }
            }
        }
    }

    fn retry_delay_for(&self, repo: &str, receive_count: u32) -> Duration {
        let interval = self.manager.config().repo(repo).map(|r| r.poll_interval_secs);
        retry_delay(receive_count, interval)
    }

    /// Keep the batch hidden while it is worked on, never past `deadline` + the margin.
    fn heartbeat(&self, messages: &[Message], deadline: Instant) -> tokio::task::JoinHandle<()> {
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
        let (queue, visibility) = (self.queue.clone(), self.options.visibility);
        let period = (visibility / 3).max(Duration::from_millis(100));
        let margin = scaled(VISIBILITY_MARGIN);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let hide = visibility.min(deadline.saturating_duration_since(Instant::now()) + margin);
                for receipt in &receipts {
                    if let Err(e) = queue.extend(receipt, hide).await {
                        tracing::warn!(error = %e, "could not extend message visibility");
                    }
                }
            }
        })
    }

    async fn apply(&self, messages: &[Message], dispositions: &[Disposition]) {
        for (m, d) in messages.iter().zip(dispositions) {
            let result = match d {
                Disposition::Ack if self.options.ack == Ack::Delete => self.queue.ack(&m.receipt).await,
                Disposition::Ack => Ok(()),
                Disposition::Retry { delay, reason } => {
                    tracing::warn!(group = %m.group, %reason, retry_in = ?delay, "sync will be retried");
                    // Without this a returned message waits out the whole visibility timeout
                    // (and blocks its FIFO group that long).
                    self.queue.retry(&m.receipt, *delay).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(group = %m.group, error = %e, "queue update failed");
            }
        }
    }
}

/// Valid requests and their positions in the batch; invalid messages are logged (and end up
/// acknowledged).
fn decode(messages: &[Message]) -> (Vec<SyncRequest>, Vec<usize>) {
    let mut requests = Vec::new();
    let mut positions = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match SyncRequest::from_json(&m.body) {
            Ok(r) => {
                requests.push(r);
                positions.push(i);
            }
            Err(e) => tracing::error!(group = %m.group, error = %e, "dropping an invalid message"),
        }
    }
    (requests, positions)
}

/// FIFO: a message after a retried one of the same group must not be acknowledged before it.
fn keep_fifo_order(messages: &[Message], dispositions: &mut [Disposition]) {
    let mut failed: HashMap<&str, Duration> = HashMap::new();
    for (m, d) in messages.iter().zip(dispositions.iter_mut()) {
        match (d.clone(), failed.get(m.group.as_str())) {
            (Disposition::Retry { delay, .. }, None) => {
                failed.insert(&m.group, delay);
            }
            (Disposition::Ack, Some(delay)) => {
                *d = Disposition::Retry {
                    delay: *delay,
                    reason: "an earlier request of this repository is retried first".into(),
                };
            }
            _ => {}
        }
    }
}

/// Delay before a failed request is retried: 5 s × 2^(n−1), at most 5 minutes and at most the
/// repository's poll interval (the poller asks again by then anyway).
pub fn retry_delay(receive_count: u32, poll_interval_secs: Option<u64>) -> Duration {
    let exp = receive_count.saturating_sub(1).min(6);
    let secs = (5u64 << exp).min(300).min(poll_interval_secs.unwrap_or(u64::MAX));
    scaled_secs(secs)
}

/// `gitferry serve`'s consumer loop: receive up to 100 messages at once (more requests per repo
/// coalesce into one sync), handle them, until `shutdown` turns true.
pub async fn consume(worker: Worker, id: usize, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let received = tokio::select! {
            r = worker.queue.receive(100, worker.options.visibility, Duration::from_secs(1)) => r,
            _ = shutdown.changed() => return,
        };
        match received {
            Ok(m) if m.is_empty() => {}
            // Syncs stop inside their current phase once shutdown starts.
            Ok(m) => {
                worker.handle(&m, Instant::now() + Duration::from_secs(24 * 3600)).await;
            }
            Err(e) => {
                tracing::error!(worker = id, error = %e, "queue receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_caps_at_five_minutes_and_the_poll_interval() {
        assert_eq!(retry_delay(1, None), Duration::from_secs(5));
        assert_eq!(retry_delay(2, None), Duration::from_secs(10));
        assert_eq!(retry_delay(4, None), Duration::from_secs(40));
        assert_eq!(retry_delay(50, None), Duration::from_secs(300));
        assert_eq!(retry_delay(50, Some(60)), Duration::from_secs(60));
        assert_eq!(retry_delay(1, Some(60)), Duration::from_secs(5));
    }

    fn message(group: &str) -> Message {
        Message {
            body: String::new(),
            receipt: String::new(),
            group: group.into(),
            receive_count: 1,
        }
    }

    #[test]
    fn later_messages_of_a_retried_group_are_retried_too() {
        let messages = [message("a"), message("b"), message("a"), message("c")];
        let retry = Disposition::Retry {
            delay: Duration::from_secs(5),
            reason: "x".into(),
        };
        let mut d = vec![retry, Disposition::Ack, Disposition::Ack, Disposition::Ack];
        keep_fifo_order(&messages, &mut d);
        assert!(matches!(d[2], Disposition::Retry { .. }));
        assert_eq!((&d[1], &d[3]), (&Disposition::Ack, &Disposition::Ack));
    }
}
