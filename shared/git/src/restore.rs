//! Bringing back an overwritten tip: gitferry keeps what the source force-pushed or deleted as
//! `refs/gitferry/overwritten/…` in its cache; restoring one pushes it to the source under a new
//! name (the source is the truth a mirror follows, so that is where it must go back).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix::ObjectId;

use super::refs::{OWN_REFS, RefPatterns, RefState, RefTarget, validate_ref_name};
use super::remote::Remote;
use super::repo::{self, Peel};
use super::{Error, PushOptions, ls_remote, push};

/// Push the commit the backup ref `backup` of the cache at `cache` points to, to `remote` as the
/// new ref `name`. Refuses a name the remote already has (a restore never overwrites).
pub fn restore_ref(cache: &Path, remote: &Remote, backup: &str, name: &str) -> Result<ObjectId, Error> {
    let name = validate_ref_name(name.as_bytes())?;
    if !name.starts_with("refs/") || name.starts_with(OWN_REFS) {
        return Err(Error::InvalidRefPattern {
            pattern: name,
            reason: "restore under a branch or tag name, e.g. refs/heads/main-restored".into(),
        });
    }
    let r = repo::open(cache)?;
    let kept = repo::read_refs(&r, &RefPatterns::everything(), Peel::No)?;
    let Some(id) = kept
        .refs
        .get(backup)
        .filter(|_| backup.starts_with(OWN_REFS))
        .map(|t| t.id)
    else {
        return Err(Error::Local {
            path: cache.display().to_string(),
            message: format!("no backup {backup:?} is kept (gitferry status REPO lists them)"),
        });
    };
    let only = RefPatterns::new(vec![name.clone()], Vec::new())?;
    if ls_remote(remote, &only)?.refs.contains_key(&name) {
        return Err(Error::Remote {
            remote: remote.to_string(),
            message: format!("{name} already exists there; choose another name with --as"),
            transient: false,
        });
    }
    let mut desired = RefState::default();
    desired.refs.insert(name.clone(), RefTarget::new(id));
    let options = PushOptions {
        refs: only,
        prune: false,
        atomic: false,
        keep_divergent: None,
    };
    let outcome = push(&r, remote, &desired, &options, &AtomicBool::new(false))?;
    match outcome.rejected().next() {
        Some(rejected) => Err(Error::Remote {
            remote: remote.to_string(),
            message: format!(
                "{name} was refused: {}",
                rejected.rejected.as_deref().unwrap_or("no reason given")
            ),
            transient: false,
        }),
        None => Ok(id),
    }
}
