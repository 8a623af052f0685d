//! The queue between triggers and sync workers, behind one trait: SQS FIFO on AWS
//! (`gitferry_aws::SqsQueue`, outside the core), an in-process FIFO locally ([`memory`]) or one
//! kept on disk ([`persistent`]).
//!
//! Semantics are SQS FIFO's, because that is what production runs on: messages carry a group
//! (the repository) and a deduplication id; within a group, delivery is in order and a group with
//! a message in flight delivers nothing else until it is acknowledged or its visibility timeout
//! lapses; a message received too often goes to a dead-letter queue.

use std::time::Duration;

use crate::request::SyncRequest;

pub mod memory;
pub mod persistent;

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The raw body (decode with `SyncRequest::from_json`; it may be garbage).
    pub body: String,
    /// Handle for ack / retry / extend.
    pub receipt: String,
    pub group: String,
    /// How many times it has been delivered, this time included.
    pub receive_count: u32,
}

/// Why a queue call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("queue: {0}")]
    Failed(String),
    #[error("unknown or expired receipt")]
    UnknownReceipt,
}

impl QueueError {
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }
}

/// What a send did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub accepted: usize,
    /// Dropped as duplicates (only adapters that can tell report them; SQS drops silently).
    pub duplicates: usize,
}

#[async_trait::async_trait]
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Enqueue requests (group = repo, deduplication id from the request).
    async fn send(&self, requests: &[SyncRequest]) -> Result<Sent, QueueError>;

    /// Receive up to `max` messages, waiting up to `wait` for the first. Each is invisible to
    /// other receivers for `visibility`.
    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Message>, QueueError>;

    /// Done with a message: delete it.
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;

    /// Give a message back, visible again after `delay` (retry with backoff).
    async fn retry(&self, receipt: &str, delay: Duration) -> Result<(), QueueError>;

    /// Keep a message invisible for another `visibility` (heartbeat during a long sync).
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError>;
}
