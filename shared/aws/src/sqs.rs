//! The queue on Amazon SQS FIFO (aws-sdk-sqs).
//!
//! Sends use `SendMessageBatch` in chunks of ten (SQS's limit) with `MessageGroupId = repo` and
//! the request's deduplication id; entries a batch reports as failed are retried (with a short
//! backoff) a few times before the send fails, so a partial failure never loses requests
//! silently. Consumption is done by the Lambda event source mapping in production; the
//! `receive` / `ack` / `retry` / `extend` methods serve the local server with `--queue sqs://…`
//! and tests against moto. The endpoint can be overridden (`AWS_ENDPOINT_URL`) for moto.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};

use gitferry_core::queue::{Message, Queue, QueueError, Sent};
use gitferry_core::request::SyncRequest;

/// SQS's batch size limit.
const BATCH: usize = 10;
const SEND_ATTEMPTS: u32 = 4;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    /// A client from the standard AWS configuration chain (region, credentials, and
    /// `AWS_ENDPOINT_URL` for emulators).
    pub async fn from_env(url: impl Into<String>) -> SqsQueue {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        SqsQueue::new(Client::new(&config), url)
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

fn classify<E: std::fmt::Debug>(e: aws_sdk_sqs::error::SdkError<E>) -> QueueError {
    use aws_sdk_sqs::error::SdkError;
    let message = match &e {
        SdkError::ServiceError(s) => format!("{:?}", s.err()),
        other => other.to_string(),
    };
    // Keep it short and free of request details.
    let message: String = message.chars().take(300).collect();
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            QueueError::Unavailable(message)
        }
        SdkError::ServiceError(s) if s.raw().status().is_server_error() || s.raw().status().as_u16() == 429 => {
            QueueError::Unavailable(message)
        }
        _ => QueueError::Failed(message),
    }
}

#[async_trait::async_trait]
impl Queue for SqsQueue {
    async fn send(&self, requests: &[SyncRequest]) -> Result<Sent, QueueError> {
        let mut sent = Sent::default();
        for chunk in requests.chunks(BATCH) {
            let mut pending: Vec<(String, &SyncRequest)> =
                chunk.iter().enumerate().map(|(i, r)| (i.to_string(), r)).collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                attempt += 1;
                let entries = pending
                    .iter()
                    .map(|(id, r)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(r.to_json())
                            .message_group_id(r.group_id())
                            .message_deduplication_id(r.dedup_id())
                            .build()
                            .expect("id and body are set")
                    })
                    .collect::<Vec<_>>();
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(classify)?;
                sent.accepted += out.successful().len();
                let failed: Vec<String> = out.failed().iter().map(|f| f.id().to_owned()).collect();
                if failed.is_empty() {
                    break;
                }
                let sender_fault = out.failed().iter().any(|f| f.sender_fault());
                if sender_fault || attempt >= SEND_ATTEMPTS {
                    let reasons: Vec<String> = out
                        .failed()
                        .iter()
                        .map(|f| format!("{}: {}", f.code(), f.message().unwrap_or_default()))
                        .collect();
                    let message = format!("{} message(s) not accepted: {}", failed.len(), reasons.join("; "));
                    return Err(if sender_fault {
                        QueueError::Failed(message)
                    } else {
                        QueueError::Unavailable(message)
                    });
                }
                pending.retain(|(id, _)| failed.contains(id));
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
        }
        Ok(sent)
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .visibility_timeout(whole_seconds(visibility))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let attrs = m.attributes();
                Some(Message {
                    body: m.body()?.to_owned(),
                    receipt: m.receipt_handle()?.to_owned(),
                    group: attrs
                        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                        .cloned()
                        .unwrap_or_default(),
                    receive_count: attrs
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                })
            })
            .collect())
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn retry(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.extend(receipt, delay).await
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(whole_seconds(visibility))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

/// SQS counts visibility in whole seconds (at most 12 hours): never shorter than asked.
fn whole_seconds(d: Duration) -> i32 {
    d.as_secs_f64().ceil().clamp(0.0, 43_200.0) as i32
}
