//! Git LFS objects, mirrored with the refs that point at them (issue 19).
//!
//! A repository using Git LFS stores small *pointer* blobs in git and the content on an LFS
//! server beside the git host. A mirror that copies only git leaves the target with pointers
//! whose content is nowhere on the target's LFS server, and every checkout of it fails. So after
//! a fetch, gitferry:
//!
//! 1. finds the pointers among the objects the fetch brought — only those ([`scan`]: the new
//!    packs' small blobs), so an idle or incremental sync costs nothing extra;
//! 2. downloads each object it has not cached yet from the source's LFS server ([`batch`],
//!    [`transfer`]: the Batch API, `basic` transfer), streamed to disk through SHA-256 and
//!    kept by oid ([`ObjectCache`]) — one download per object, however many targets and
//!    restarts;
//! 3. asks each target's LFS server which of them it lacks and uploads just those, calling
//!    `verify` when asked to.
//!
//! Pointers found are recorded in the cache repository (`gitferry-lfs-pending.json`; the sync
//! service records them in its manifest, in the store) until every target has its objects, so
//! a sync that failed or was interrupted after the fetch still transfers them next time,
//! although that fetch then brings nothing new.
//!
//! An object the source's server does not have (404/410) is reported per object and does not
//! stop the refs: the mirror stays as complete as the source. Every other failure is a
//! [`LfsError`], transient or permanent, with what to do in its message.

pub mod batch;
pub mod endpoint;
pub mod pointer;
pub mod scan;
pub mod transfer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

pub use endpoint::Endpoint;
pub use pointer::Pointer;
pub use scan::PackSnapshot;
pub use transfer::ObjectCache;

use crate::remote::Remote;
use batch::{ObjectAnswer, Operation};

/// Whether LFS objects are mirrored: `auto` (when pointers are found and the remotes can have
/// an LFS server), `on` (always; a remote without one is an error), `off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LfsMode {
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for LfsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LfsMode::Auto),
            "on" | "true" => Ok(LfsMode::On),
            "off" | "false" => Ok(LfsMode::Off),
            other => Err(format!("{other:?} is not one of auto, on, off")),
        }
    }
}

/// How to mirror LFS objects.
#[derive(Clone)]
pub struct LfsOptions {
    pub mode: LfsMode,
    /// Where objects are cached (`{cache_dir}/lfs` for `gitferry mirror`).
    pub objects: PathBuf,
    /// A second, lasting tier behind that cache (the sync service's object store, where the
    /// local disk does not outlive the function): objects are looked for there before the
    /// source is asked, and kept there once downloaded — one download per object, ever.
    pub tier: Option<std::sync::Arc<dyn ObjectTier>>,
    /// Keep the pointers not yet everywhere in the cache repository
    /// (`gitferry-lfs-pending.json`), for the one-shot command. The sync service records them
    /// in its manifest instead (with the packs, in the store), and passes them as `found`.
    pub pending_in_cache: bool,
}

impl std::fmt::Debug for LfsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LfsOptions")
            .field("mode", &self.mode)
            .field("objects", &self.objects)
            .field("tier", &self.tier.is_some())
            .field("pending_in_cache", &self.pending_in_cache)
            .finish()
    }
}

/// Lasting storage of LFS objects by oid, behind the local [`ObjectCache`] (implemented by the
/// service over its object store: keys `lfs/{oid[0:2]}/{oid[2:4]}/{oid}`). Both calls stream
/// files; neither holds an object in memory.
pub trait ObjectTier: Send + Sync {
    /// Write the object into `dest` if the tier has it; `Ok(false)` if it does not.
    fn fetch(&self, pointer: &Pointer, dest: &Path) -> Result<bool, LfsError>;
    /// Keep the verified object found at `path`.
    fn keep(&self, pointer: &Pointer, path: &Path) -> Result<(), LfsError>;
}

/// What happened to LFS objects in one mirror.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LfsSummary {
    /// Objects the new commits point to (and those left over from an unfinished run).
    pub objects: u64,
    /// Their total size.
    pub bytes: u64,
    /// Downloaded from the source (the rest were cached already).
    pub downloaded: u64,
    /// Taken from the lasting tier (the service's object store) instead of the source.
    #[serde(skip_serializing_if = "is_zero")]
    pub restored: u64,
    /// Uploaded to the targets (the rest they had already).
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    /// Objects the source's LFS server does not have: their pointers are mirrored as they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    /// Why nothing was transferred although pointers were found (`auto` on a local path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl LfsSummary {
    /// Lines for [`crate::MirrorSummary::human`] (none when no pointer was found).
    pub fn human(&self) -> String {
        let mut out = String::new();
        if self.objects > 0 {
            out.push_str(&format!(
                "  lfs:   {} objects, {}; {} downloaded, {} uploaded\n",
                self.objects,
                crate::mirror::human_bytes(self.bytes),
                self.downloaded,
                self.uploaded
            ));
        }
        for m in &self.missing {
            out.push_str(&format!(
                "  lfs object missing on the source: {} ({} bytes)\n",
                m.oid, m.size
            ));
        }
        if let Some(reason) = &self.skipped {
            out.push_str(&format!("  lfs:   not mirrored: {reason}\n"));
        }
        out
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An object the source could not provide.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Missing {
    pub oid: String,
    pub size: u64,
    pub reason: String,
}

/// Why LFS mirroring failed.
#[derive(Debug, thiserror::Error)]
pub enum LfsError {
    #[error("{remote}: no Git LFS endpoint ({reason}); set lfs = \"off\" (--lfs off) to mirror without LFS objects")]
    NoEndpoint { remote: String, reason: String },
    #[error(
        "no Git LFS server at {endpoint} (HTTP 404): enable LFS for this repository there, or set lfs = \"off\" (--lfs off) to mirror pointers only"
    )]
    NoServer { endpoint: String },
    #[error(
        "Git LFS server {endpoint} refused the credentials (HTTP {status}): check that the token may read (source) or write (target) LFS objects"
    )]
    Auth { endpoint: String, status: u16 },
    #[error("Git LFS server {endpoint} answered HTTP {status}{}", if *transient { " (will be retried)" } else { "" })]
    Http {
        endpoint: String,
        status: u16,
        transient: bool,
    },
    #[error("Git LFS server {endpoint}: network error ({message}); will be retried")]
    Network { endpoint: String, message: String },
    #[error("Git LFS server {endpoint}: {message}; will be retried")]
    Protocol { endpoint: String, message: String },
    #[error("Git LFS object {oid}: {message}; it will be downloaded again")]
    Corrupt { oid: String, message: String },
    #[error("Git LFS server {endpoint} refused object {oid}: {message}")]
    Refused {
        endpoint: String,
        oid: String,
        message: String,
    },
    #[error("LFS cache {path}: {message}")]
    Local { path: String, message: String },
    #[error("LFS objects in the object store: {message}{}", if *transient { "; will be retried" } else { "" })]
    Store { message: String, transient: bool },
    #[error("interrupted")]
    Interrupted,
}

impl LfsError {
    pub fn is_transient(&self) -> bool {
        match self {
            LfsError::Network { .. } | LfsError::Protocol { .. } | LfsError::Corrupt { .. } | LfsError::Interrupted => {
                true
            }
            LfsError::Http { transient, .. } | LfsError::Store { transient, .. } => *transient,
            LfsError::NoEndpoint { .. }
            | LfsError::NoServer { .. }
            | LfsError::Auth { .. }
            | LfsError::Refused { .. }
            | LfsError::Local { .. } => false,
        }
    }
}

impl From<LfsError> for crate::Error {
    fn from(e: LfsError) -> crate::Error {
        match e {
            LfsError::Interrupted => crate::Error::Interrupted,
            LfsError::Local { path, message } => crate::Error::Local { path, message },
            other => crate::Error::Remote {
                remote: "lfs".into(),
                transient: other.is_transient(),
                message: other.to_string(),
            },
        }
    }
}

pub(crate) fn http_status_error(endpoint: &Endpoint, status: u16) -> LfsError {
    let endpoint = endpoint.to_string();
    match status {
        401 | 403 => LfsError::Auth { endpoint, status },
        408 | 429 | 500..=599 => LfsError::Http {
            endpoint,
            status,
            transient: true,
        },
        _ => LfsError::Http {
            endpoint,
            status,
            transient: false,
        },
    }
}

pub(crate) fn network_error(endpoint: &Endpoint, e: &dyn std::fmt::Display) -> LfsError {
    LfsError::Network {
        endpoint: endpoint.to_string(),
        message: crate::remote::redact_url(&e.to_string()),
    }
}

/// The HTTP client for LFS transfers: no total timeout (objects may be gigabytes), a connect
/// timeout, and TCP keepalive to notice a peer that vanished.
pub fn http_client() -> Result<reqwest::blocking::Client, LfsError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .tcp_keepalive(Duration::from_secs(30))
        .timeout(None)
        .user_agent(crate::AGENT)
        .build()
        .map_err(|e| LfsError::Local {
            path: "http client".into(),
            message: e.to_string(),
        })
}

const PENDING: &str = "gitferry-lfs-pending.json";

/// Pointers found by an earlier run whose objects did not reach every target yet.
fn read_pending(git_dir: &Path) -> Vec<Pointer> {
    let text = std::fs::read(git_dir.join(PENDING)).unwrap_or_default();
    let pointers: Vec<Pointer> = serde_json::from_slice(&text).unwrap_or_default();
    pointers.into_iter().filter(|p| Pointer::valid_oid(&p.oid)).collect()
}

fn write_pending(git_dir: &Path, pointers: &[Pointer]) -> Result<(), LfsError> {
    let path = git_dir.join(PENDING);
    let local = |e: std::io::Error| LfsError::Local {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if pointers.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(local(e)),
            _ => Ok(()),
        };
    }
    let tmp = git_dir.join(format!("{PENDING}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(pointers).expect("pointers serialize")).map_err(local)?;
    std::fs::rename(&tmp, &path).map_err(local)
}

/// Mirror the LFS objects of the pointers a fetch brought into `cache` (`found`, from
/// [`scan::new_pointers`]; plus what an earlier run left pending) from `source` to each of
/// `targets`.
pub fn mirror_objects(
    cache: &gix::Repository,
    found: Vec<Pointer>,
    source: &Remote,
    targets: &[&Remote],
    options: &LfsOptions,
    interrupt: &AtomicBool,
) -> Result<LfsSummary, LfsError> {
    if options.mode == LfsMode::Off {
        return Ok(LfsSummary::default());
    }
    let pending = |pointers: &[Pointer]| match options.pending_in_cache {
        true => write_pending(cache.path(), pointers),
        false => Ok(()),
    };
    let mut pointers = match options.pending_in_cache {
        true => read_pending(cache.path()),
        false => Vec::new(),
    };
    pointers.extend(found);
    pointers.sort();
    pointers.dedup();
    if pointers.is_empty() {
        return Ok(LfsSummary::default());
    }
    pending(&pointers)?;
    let mut summary = LfsSummary {
        objects: pointers.len() as u64,
        bytes: pointers.iter().map(|p| p.size).sum(),
        ..LfsSummary::default()
    };
    let endpoints = match endpoints(cache, source, targets) {
        Ok(e) => e,
        Err(e @ LfsError::NoEndpoint { .. }) if options.mode == LfsMode::Auto => {
            summary.skipped = Some(e.to_string());
            pending(&[])?;
            return Ok(summary);
        }
        Err(e) => return Err(e),
    };
    let transfers = Transfers {
        http: http_client()?,
        cache: ObjectCache::new(&options.objects),
        tier: options.tier.as_deref(),
        interrupt,
    };
    let (source_ep, target_eps) = endpoints;
    transfers.download_all(&source_ep, &pointers, &mut summary)?;
    let available: Vec<Pointer> = pointers.into_iter().filter(|p| transfers.cache.has(p)).collect();
    for target in &target_eps {
        transfers.upload_all(target, &available, &mut summary)?;
    }
    pending(&[])?;
    Ok(summary)
}

fn endpoints(
    cache: &gix::Repository,
    source: &Remote,
    targets: &[&Remote],
) -> Result<(Endpoint, Vec<Endpoint>), LfsError> {
    let source_ep = Endpoint::of(source, endpoint::repo_lfs_url(cache).as_deref())?;
    let target_eps = targets
        .iter()
        .map(|t| Endpoint::of(t, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((source_ep, target_eps))
}

/// One client, one cache, one interrupt flag: what every transfer of a run shares.
struct Transfers<'a> {
    http: reqwest::blocking::Client,
    cache: ObjectCache,
    tier: Option<&'a dyn ObjectTier>,
    interrupt: &'a AtomicBool,
}

impl Transfers<'_> {
    /// Download every pointer's object not cached yet (nor in the lasting tier); objects the
    /// source lacks go to `summary.missing`. Each object downloaded is kept in the tier at once:
    /// a run stopped half-way resumes after the last object it finished.
    fn download_all(&self, source: &Endpoint, pointers: &[Pointer], summary: &mut LfsSummary) -> Result<(), LfsError> {
        let mut wanted = Vec::new();
        for pointer in pointers.iter().filter(|p| !self.cache.has(p)) {
            match self.tier {
                Some(tier) if transfer::restore(&self.cache, tier, pointer)? => summary.restored += 1,
                _ => wanted.push(pointer.clone()),
            }
        }
        for chunk in wanted.chunks(batch::BATCH_SIZE) {
            let answers = batch::batch(&self.http, source, Operation::Download, chunk, self.interrupt)?;
            for pointer in chunk {
                match answers.iter().find(|a| a.oid == pointer.oid) {
                    Some(answer) => self.download_one(source, pointer, answer, summary)?,
                    None => summary
                        .missing
                        .push(missing(pointer, "not in the source's batch answer")),
                }
                if let Some(tier) = self.tier.filter(|_| self.cache.has(pointer)) {
                    tier.keep(pointer, &self.cache.path(&pointer.oid))?;
                }
            }
        }
        Ok(())
    }

    fn download_one(
        &self,
        source: &Endpoint,
        pointer: &Pointer,
        answer: &ObjectAnswer,
        summary: &mut LfsSummary,
    ) -> Result<(), LfsError> {
        if self.interrupt.load(Ordering::Relaxed) {
            return Err(LfsError::Interrupted);
        }
        let renewed;
        let action = match (&answer.error, &answer.actions.download) {
            (Some(e), _) if matches!(e.code, 404 | 410) => {
                summary.missing.push(missing(
                    pointer,
                    &format!("HTTP {} from the source: {}", e.code, e.message),
                ));
                tracing::warn!(oid = %pointer.oid, endpoint = %source, "LFS object missing on the source");
                return Ok(());
            }
            (Some(e), _) => return Err(refused(source, pointer, e)),
            (None, None) => return Err(protocol(source, "a download without a download action")),
            (None, Some(a)) if a.expiring() => {
                renewed = self.renew(source, Operation::Download, pointer)?;
                renewed
                    .actions
                    .download
                    .as_ref()
                    .ok_or_else(|| protocol(source, "renewal without download action"))?
            }
            (None, Some(a)) => a,
        };
        transfer::download(&self.http, source, action, &self.cache, pointer, self.interrupt)?;
        summary.downloaded += 1;
        Ok(())
    }

    /// Upload to `target` the objects its server says it lacks.
    fn upload_all(&self, target: &Endpoint, pointers: &[Pointer], summary: &mut LfsSummary) -> Result<(), LfsError> {
        for chunk in pointers.chunks(batch::BATCH_SIZE) {
            let answers = batch::batch(&self.http, target, Operation::Upload, chunk, self.interrupt)?;
            for answer in &answers {
                let Some(pointer) = chunk.iter().find(|p| p.oid == answer.oid) else {
                    continue;
                };
                if self.upload_one(target, pointer, answer)? {
                    summary.uploaded += 1;
                    summary.uploaded_bytes += pointer.size;
                }
            }
        }
        Ok(())
    }

    /// Returns whether the object was sent (false: the target already had it).
    fn upload_one(&self, target: &Endpoint, pointer: &Pointer, answer: &ObjectAnswer) -> Result<bool, LfsError> {
        if self.interrupt.load(Ordering::Relaxed) {
            return Err(LfsError::Interrupted);
        }
        if let Some(e) = &answer.error {
            return Err(refused(target, pointer, e));
        }
        let renewed;
        let actions = match &answer.actions.upload {
            None => return Ok(false),
            Some(a) if a.expiring() => {
                renewed = self.renew(target, Operation::Upload, pointer)?;
                &renewed.actions
            }
            Some(_) => &answer.actions,
        };
        let Some(upload) = &actions.upload else {
            return Ok(false);
        };
        transfer::upload(&self.http, target, upload, &self.cache, pointer, self.interrupt)?;
        if let Some(verify) = &actions.verify {
            transfer::verify(&self.http, target, verify, pointer, self.interrupt)?;
        }
        tracing::debug!(oid = %pointer.oid, endpoint = %target, "LFS object uploaded");
        Ok(true)
    }

    /// A fresh batch answer for one object whose action was about to expire.
    fn renew(&self, endpoint: &Endpoint, operation: Operation, pointer: &Pointer) -> Result<ObjectAnswer, LfsError> {
        let answers = batch::batch(
            &self.http,
            endpoint,
            operation,
            std::slice::from_ref(pointer),
            self.interrupt,
        )?;
        answers
            .into_iter()
            .next()
            .ok_or_else(|| protocol(endpoint, "renewal answered no object"))
    }
}

fn missing(pointer: &Pointer, reason: &str) -> Missing {
    Missing {
        oid: pointer.oid.clone(),
        size: pointer.size,
        reason: reason.to_owned(),
    }
}

fn refused(endpoint: &Endpoint, pointer: &Pointer, e: &batch::ObjectError) -> LfsError {
    LfsError::Refused {
        endpoint: endpoint.to_string(),
        oid: pointer.oid.clone(),
        message: format!("{} {}", e.code, e.message.chars().take(200).collect::<String>()),
    }
}

fn protocol(endpoint: &Endpoint, message: &str) -> LfsError {
    LfsError::Protocol {
        endpoint: endpoint.to_string(),
        message: message.to_owned(),
    }
}

/// Whether `options` mirror LFS objects at all.
pub fn enabled(options: Option<&LfsOptions>) -> bool {
    options.is_some_and(|o| o.mode != LfsMode::Off)
}

/// The LFS step of [`crate::mirror()`], between its fetch and its push: objects reach the
/// target before the refs that point at them, as with `git push` and git-lfs's pre-push hook.
pub(crate) fn for_mirror(
    cache: &gix::Repository,
    found: Vec<Pointer>,
    source: &Remote,
    target: &Remote,
    options: Option<&LfsOptions>,
    interrupt: &AtomicBool,
    say: &dyn Fn(String),
) -> Result<Option<LfsSummary>, crate::Error> {
    let Some(options) = options.filter(|o| o.mode != LfsMode::Off) else {
        return Ok(None);
    };
    let summary = mirror_objects(cache, found, source, &[target], options, interrupt)?;
    if summary.objects > 0 {
        say(format!(
            "LFS: {} objects ({}), {} downloaded, {} uploaded, {} missing on the source",
            summary.objects,
            crate::mirror::human_bytes(summary.bytes),
            summary.downloaded,
            summary.uploaded,
            summary.missing.len()
        ));
    }
    for m in &summary.missing {
        say(format!(
            "LFS object {} ({} bytes) missing on the source: {}",
            m.oid, m.size, m.reason
        ));
    }
    if let Some(reason) = &summary.skipped {
        say(format!("LFS objects not mirrored: {reason}"));
    }
    Ok(Some(summary))
}
