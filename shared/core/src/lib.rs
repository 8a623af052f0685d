//! `gitferry-core`: everything in gitferry that is not an entrypoint.
//!
//! The Lambda functions and the `gitferry` command line are thin shells around this crate. It
//! holds no AWS types — it does not even depend on the AWS SDK: storage and queues are traits
//! ([`store::ObjectStore`], [`queue::Queue`]) with local adapters here (a directory, an
//! in-process queue) and AWS ones (S3, SQS) in `gitferry-aws`.
//!
//! * [`git`] — the pure-Rust git engine (crate `gitferry-git`): ls-remote, mirror fetch with
//!   prune, push (a receive-pack client), and the one-shot [`git::mirror()`];
//! * [`config`] — `mirrors.toml`, validated with errors naming file, line and field;
//! * [`request`] — `SyncRequest`, the one message every trigger becomes;
//! * [`store`] — object storage behind one trait (a local directory, fault injection; S3 in
//!   `gitferry-aws`);
//! * [`cache`] — bare repositories cached in a store: manifest, packs, leases;
//! * [`status`] — the single chokepoint for status writes; [`notify`], [`metrics`];
//! * [`queue`] — the queue trait, its in-process FIFO and the saved local queue (SQS in
//!   `gitferry-aws`);
//! * [`sync`] — `SyncManager`, the one sync algorithm;
//! * [`worker`] — the one queue consumer (sync Lambda and `gitferry serve`);
//! * [`poll`] — the one (probing) poller (poll Lambda and `gitferry serve`);
//! * [`keys`] — the whole store layout; [`clock`] — time and the test time scale;
//! * [`api`] — the HTTP routes (webhook Lambda and `serve`); [`ui`] and [`page`] — the status
//!   pages and their JSON.

pub mod api;
pub mod cache;
pub mod clock;
pub mod config;
/// The git engine (crate `gitferry-git`), under the name the rest of the core uses.
pub use gitferry_git as git;
pub mod keys;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod poll;
pub mod queue;
pub mod request;
pub mod status;
pub mod store;
pub mod sync;
pub mod ui;
pub mod webhook;
pub mod worker;
