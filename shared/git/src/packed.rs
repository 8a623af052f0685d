//! Many ref changes in one packed-refs write.
//!
//! gix's ref transaction takes a lock file per ref even when it writes only packed-refs, so a
//! first fetch of 20,000 tags created and removed 20,000 lock files. A mirror cache is written by
//! one worker at a time (the lease), and its refs live in packed-refs: when none of the refs to
//! change has a loose file, [`apply`] rewrites packed-refs once, under `packed-refs.lock`, after
//! checking every ref's current value against the expected old one (compare-and-swap, as the
//! transaction does). Otherwise it declines and the caller uses the transaction.

use std::collections::BTreeMap;
use std::io::Write;

use gix::ObjectId;
use gix::bstr::BString;

use crate::Error;
use crate::repo::{self, LocalUpdate};

/// What [`apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every update is in packed-refs.
    Done,
    /// Some ref to change has a loose file (or a name packed-refs cannot hold): nothing written.
    Declined,
}

/// One packed-refs line: the ref's target and, for an annotated tag, the object it peels to.
type Entry = (ObjectId, Option<ObjectId>);

/// Apply `updates` (creates, updates and deletes with their expected old values) by rewriting
/// packed-refs once. Fails, writing nothing, if any ref's current value is not the expected one.
pub fn apply(repo: &gix::Repository, updates: &[LocalUpdate]) -> Result<Applied, Error> {
    let err = |m: String| Error::local(repo.path(), m);
    if updates.is_empty() {
        return Ok(Applied::Done);
    }
    for u in updates {
        repo::full_name(&u.name)?;
        if repo.path().join(&u.name).exists() {
            return Ok(Applied::Declined);
        }
    }
    let path = repo.refs.packed_refs_path();
    let mut lock = gix::lock::File::acquire_to_update_resource(&path, gix::lock::acquire::Fail::Immediately, None, 0)
        .map_err(|e| err(format!("locking packed-refs: {e}")))?;
    let mut refs = read(repo)?;
    for u in updates {
        let name = BString::from(u.name.as_str());
        let current = refs.get(&name).map(|(id, _)| *id);
        if current != u.old {
            return Err(err(format!(
                "ref {} moved during the update (expected {}, found {})",
                u.name,
                u.old.map_or("none".into(), |o| o.to_string()),
                current.map_or("none".into(), |o| o.to_string())
            )));
        }
        match u.new {
            Some(new) => {
                let peeled = repo::peel(repo, new).filter(|p| *p != new);
                refs.insert(name, (new, peeled));
            }
            None => {
                refs.remove(&name);
            }
        }
    }
    let mut out = Vec::with_capacity(64 + refs.len() * 100);
    out.extend_from_slice(b"# pack-refs with: peeled fully-peeled sorted \n");
    for (name, (id, peeled)) in &refs {
        write!(out, "{id} ").expect("writing to memory");
        out.extend_from_slice(name); // the name's bytes as they are
        out.push(b'\n');
        if let Some(p) = peeled {
            writeln!(out, "^{p}").expect("writing to memory");
        }
    }
    lock.write_all(&out)
        .map_err(|e| err(format!("writing packed-refs: {e}")))?;
    lock.commit()
        .map_err(|e| err(format!("writing packed-refs: {}", e.error)))?;
    Ok(Applied::Done)
}

/// The current packed refs, by name (in byte order, as packed-refs is sorted).
fn read(repo: &gix::Repository) -> Result<BTreeMap<BString, Entry>, Error> {
    let err = |m: String| Error::local(repo.path(), m);
    let mut refs = BTreeMap::new();
    let Some(buffer) = repo
        .refs
        .cached_packed_buffer()
        .map_err(|e| err(format!("reading packed-refs: {e}")))?
    else {
        return Ok(refs);
    };
    for r in buffer.iter().map_err(|e| err(format!("reading packed-refs: {e}")))? {
        let r = r.map_err(|e| err(format!("reading packed-refs: {e}")))?;
        let peeled = r.object.is_some().then(|| r.object());
        refs.insert(r.name.as_bstr().to_owned(), (r.target(), peeled));
    }
    Ok(refs)
}
