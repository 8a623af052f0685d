//! The whole layout of the store (an S3 bucket on AWS, a directory locally), in one place.
//!
//! ```text
//! config/mirrors.toml              the configuration (AWS; `GITFERRY_CONFIG_KEY` may move it)
//! repos/{repo}/manifest.json       the cached bare repository: packs, refs, per-target state,
//!                                  LFS pointers whose objects are not on every target yet
//! repos/{repo}/packs/{sha}.pack    immutable, content-addressed packs of the cache
//! repos/{repo}/packs/{sha}.idx     ...and their indexes
//! repos/{repo}/lease.json          who is syncing the repo (owner, heartbeat, expiry)
//! repos/{repo}/status.json         written only by `crate::status`
//! repos/{repo}/history.json        the last syncs that changed something or failed (status)
//! state/probe.json                 the poller: per repo the confirmed refs digest, last check
//! state/config-seen/{digest}       "this configuration was reconciled" markers of the poller
//! state/queue.json                 the embedded queue of `gitferry serve` (local only)
//! state/accounts/{account}.json    discovered repositories of an account (`crate::accounts`)
//! state/accounts/{account}.creations.json  target repositories created for it in the last hour
//! repos/{repo}/created.json        targets gitferry created for a discovered repo (sync)
//! ```
//!
//! Everything under `repos/{repo}/` belongs to one repository: the sync function may write
//! there, and to `state/accounts/` (a repository discovered from an account webhook is
//! recorded by the sync that mirrors it first); the poll function writes only under `state/`;
//! the webhook function writes nothing (template.yaml scopes the functions' IAM policies the
//! same way).

/// The configuration object on AWS (`GITFERRY_CONFIG_KEY` overrides it).
pub const CONFIG: &str = "config/mirrors.toml";
/// The poller's state.
pub const PROBE: &str = "state/probe.json";
/// The embedded queue of `gitferry serve`.
pub const QUEUE: &str = "state/queue.json";

/// The marker that the configuration with this digest was reconciled.
pub fn config_seen(digest: &str) -> String {
    format!("state/config-seen/{digest}")
}

/// A Git LFS object, by its SHA-256 (shared by every repository that points at it).
pub fn lfs_object(oid: &str) -> String {
    format!(
        "lfs/{}/{}/{oid}",
        &oid[..2.min(oid.len())],
        &oid[2.min(oid.len())..4.min(oid.len())]
    )
}

pub fn manifest(repo: &str) -> String {
    format!("repos/{repo}/manifest.json")
}

pub fn lease(repo: &str) -> String {
    format!("repos/{repo}/lease.json")
}

pub fn status(repo: &str) -> String {
    format!("repos/{repo}/status.json")
}

pub fn history(repo: &str) -> String {
    format!("repos/{repo}/history.json")
}

/// Where a repository's packs live (for listings).
pub fn packs(repo: &str) -> String {
    format!("repos/{repo}/packs/")
}

pub fn pack(repo: &str, name: &str) -> String {
    format!("repos/{repo}/packs/{name}.pack")
}

pub fn index(repo: &str, name: &str) -> String {
    format!("repos/{repo}/packs/{name}.idx")
}

/// The discovery state of an account.
pub fn account(account: &str) -> String {
    format!("state/accounts/{account}.json")
}

/// When target repositories were created for an account's repositories (the shared budget).
pub fn creations(account: &str) -> String {
    format!("state/accounts/{account}.creations.json")
}

/// The targets gitferry created for a discovered repository.
pub fn created(repo: &str) -> String {
    format!("repos/{repo}/created.json")
}
