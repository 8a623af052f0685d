//! gitferry's AWS adapters, kept out of `gitferry_core` so the core compiles without the AWS
//! SDK and holds no AWS types (the dependency graph enforces it, not a convention).
//!
//! - [`S3Store`]: `gitferry_core::store::ObjectStore` on S3 (conditional writes, streamed
//!   multipart uploads);
//! - [`SqsQueue`]: `gitferry_core::queue::Queue` on an SQS FIFO queue (group per repo,
//!   deduplication ids, visibility changes for the worker's heartbeat and retries);
//! - [`secrets`]: the Secrets Manager secret that config secret references resolve from.
//!
//! The Lambda functions and the `gitferry` CLI (its default `aws` feature) build these; the
//! tests run them against moto.

pub mod s3;
pub mod secrets;
pub mod sqs;

pub use s3::S3Store;
pub use sqs::SqsQueue;
