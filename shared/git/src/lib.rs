//! `gitferry-git`: the git engine of gitferry — pure Rust on gix, no `git` binary at run time
//! (Lambda's provided.al2023 has none). Its own crate because it is the part with one job and
//! no opinion about where repositories are cached or when syncs run: it knows remotes, refs,
//! packs and the wire protocols, and nothing of queues, stores, statuses or AWS. It is blocking
//! (gix's blocking client); async callers run it on `spawn_blocking`.
//!
//! gix provides transports, ls-refs and fetch; it has no push and no prune. This crate adds
//! them on gix's plumbing:
//!
//! * [`remote`] — locations and credentials, redacted everywhere they are shown;
//! * [`refs`] — ref snapshots ([`RefState`]), patterns, and what changed ([`RefDelta`]);
//! * [`ls_remote`] — a remote's refs without fetching;
//! * [`advert`] — protocol v0/v1 ref advertisements, read without gix's parser (it panics on a
//!   dangling HEAD symref);
//! * [`fetch`] — mirror fetch into a bare cache, with prune;
//! * [`mod@push`] — a receive-pack client (plan, pack, report-status) and local-path pushes;
//! * [`pack`] / [`local`] — streamed pack generation (with `delta`, git's delta encoding) and
//!   local object copies;
//! * [`ssh`] — ssh:// in process (russh), host keys always verified;
//! * [`lfs`] — Git LFS objects: pointers among fetched objects, the Batch API, a cache by oid;
//! * [`mirror()`] — the one-shot porcelain behind `gitferry mirror`.
//!
//! Errors are one enum, [`Error`], each transient or permanent. A panic never leaves the engine:
//! [`guard`] turns it into a permanent [`Error::Panic`] at every entry point above.

pub mod advert;
mod count;
mod delta;
pub mod error;
pub mod fetch;
pub mod guard;
pub mod hash;
pub mod lfs;
pub mod local;
mod lsremote;
pub mod mirror;
pub mod pack;
mod packed;
pub mod push;
mod receive;
pub mod refs;
pub mod remote;
pub mod repo;
mod restore;
pub mod ssh;
mod transport;

pub use error::{Error, ErrorClass};
pub use fetch::{FetchOptions, FetchOutcome, mirror_fetch};
pub use lsremote::{ls_remote, ls_remote_within};
pub use mirror::{MirrorOptions, MirrorSummary, ProgressFn, mirror};
pub use push::{Forward, PushOptions, PushOutcome, RefResult, push, push_through};
pub use refs::{DeltaKind, RefDelta, RefPatterns, RefState, RefTarget};
pub use remote::{Credentials, Remote};
pub use restore::restore_ref;
pub use ssh::{HostKeys, SshIdentity};
pub use transport::AGENT;
