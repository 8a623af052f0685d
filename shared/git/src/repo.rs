//! Local repositories: the bare cache, and local-path sources/targets.
//!
//! Repositories are opened *isolated* (only their own config; no user, system or environment
//! config), so a developer's `~/.gitconfig` or `GIT_*` variables can never change what a mirror
//! does, and runs are reproducible.

use std::path::Path;

use gix::ObjectId;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::{FullName, Target};

use super::Error;
use super::refs::{RefPatterns, RefState, RefTarget};

fn open_options() -> gix::open::Options {
    gix::open::Options::isolated()
        .config_overrides([
            // Ref edits in a bare mirror need no reflog; and never fail for want of an identity.
            "core.logAllRefUpdates=false",
            "gitoxide.committer.nameFallback=gitferry",
            "gitoxide.committer.emailFallback=gitferry@localhost",
            "gitoxide.author.nameFallback=gitferry",
            "gitoxide.author.emailFallback=gitferry@localhost",
        ])
        .strict_config(false)
}

/// Open an existing repository at `path`: a bare repository (or any git directory), or a work
/// tree with its `.git` (directory, or file for linked work trees and submodules) inside.
pub fn open(path: &Path) -> Result<gix::Repository, Error> {
    let git_dir_itself = !path.join(".git").exists();
    gix::open_opts(path, open_options().open_path_as_is(git_dir_itself)).map_err(|e| refused(path, &e))
}

/// The branches checked out in the work trees of `repo` (its own unless it is bare, and every
/// linked one): pushing to one would leave that work tree's files and index behind.
pub fn checked_out_branches(repo: &gix::Repository) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    if !repo.is_bare()
        && let Ok(Some(head)) = repo.head_name()
    {
        out.insert(head.as_bstr().to_string());
    }
    for linked in repo.worktrees().unwrap_or_default() {
        let head = std::fs::read_to_string(linked.git_dir().join("HEAD")).unwrap_or_default();
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            out.insert(branch.to_owned());
        }
    }
    out
}

/// Whether `repo`'s config `key` (`receive.denyCurrentBranch`, `receive.denyDeleteCurrent`)
/// lets a push touch a checked-out branch: only `ignore`, `warn` or `false` do, as in git
/// (`updateInstead` would need a checkout, which a mirror never does).
pub fn allows_pushing_checked_out(repo: &gix::Repository, key: &str) -> bool {
    let value = repo
        .config_snapshot()
        .string(key)
        .map(|v| v.to_string().to_ascii_lowercase());
    matches!(value.as_deref(), Some("ignore" | "warn" | "false" | "no" | "off" | "0"))
}

/// Why `path` did not open. gix reads SHA-1 repositories only (in this build) and says so as a
/// configuration error; name the real reason instead.
fn refused(path: &Path, e: &(dyn std::error::Error + 'static)) -> Error {
    match declared_object_format(path) {
        Some(format) if !format.eq_ignore_ascii_case("sha1") => Error::UnsupportedObjectFormat {
            remote: path.display().to_string(),
            format,
        },
        _ => Error::local(path, super::error::chain(e)),
    }
}

/// The object format a repository's own config declares (`extensions.objectFormat`), read
/// from the file directly: gix refuses to open such a repository at all.
fn declared_object_format(path: &Path) -> Option<String> {
    [path.to_owned(), path.join(".git")].into_iter().find_map(|dir| {
        let config = gix::config::File::from_path_no_includes(dir.join("config"), gix::config::Source::Local).ok()?;
        config.string("extensions.objectFormat").map(|v| v.to_string())
    })
}

/// Open the bare cache repository at `path`, creating it (and its parents) if missing.
pub fn open_or_init_bare(path: &Path) -> Result<gix::Repository, Error> {
    if path.join("HEAD").is_file() {
        return open(path);
    }
    std::fs::create_dir_all(path).map_err(|e| Error::local(path, e))?;
    gix::ThreadSafeRepository::init_opts(
        path,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        open_options(),
    )
    .map(|r| r.to_thread_local())
    .map_err(|e| Error::local(path, super::error::chain(&e)))
}

/// Whether [`read_refs`] resolves annotated tags to the objects they point to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peel {
    /// Fill [`RefTarget::peeled`] (reads every annotated tag object).
    Yes,
    /// Names and ids only: all that sync decisions need, and it reads no object at all — a
    /// no-op mirror then never touches the object database.
    No,
}

/// The refs of a local repository that match `patterns` and the `HEAD` symref target.
pub fn read_refs(repo: &gix::Repository, patterns: &RefPatterns, peel: Peel) -> Result<RefState, Error> {
    let path = repo.path().to_owned();
    let err = |e: gix::Error| Error::local(&path, super::error::chain(&e));
    let mut state = RefState::default();
    let platform = repo.references().map_err(err)?;
    for prefix in patterns.prefixes() {
        // `prefixed` wants a directory-ish prefix; trim to the last `/` and filter precisely below.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "refs/",
        };
        for reference in platform.prefixed(dir).map_err(err)? {
            let mut reference = reference.map_err(err)?;
            let name = reference.name().as_bstr().to_string();
            if !patterns.matches(&name) || state.refs.contains_key(&name) {
                continue;
            }
            let Some(id) = reference.try_id().map(|id| id.detach()) else {
                continue; // symbolic refs are not mirrored as such
            };
            let peeled = match peel {
                Peel::Yes => Some(reference.peel_to_id().map_err(err)?.detach()).filter(|p| *p != id),
                Peel::No => None,
            };
            state.refs.insert(name, RefTarget { id, peeled });
        }
    }
    state.head = repo.head_name().map_err(err)?.map(|n| n.as_bstr().to_string());
    Ok(state)
}

/// Is `ancestor` reachable from `descendant` (a fast-forward)? False when either is unknown
/// locally or not a commit.
pub fn is_ancestor(repo: &gix::Repository, ancestor: ObjectId, descendant: ObjectId) -> bool {
    if ancestor == descendant {
        return true;
    }
    if !repo.has_object(ancestor) || !repo.has_object(descendant) {
        return false;
    }
    matches!(repo.merge_base(ancestor, descendant), Ok(Some(base)) if base.detach() == ancestor)
}

/// Peel an object id through annotated tags to the final object, if it exists locally.
pub fn peel(repo: &gix::Repository, id: ObjectId) -> Option<ObjectId> {
    let obj = repo.find_object(id).ok()?;
    obj.peel_tags_to_end().ok().map(|o| o.id)
}

/// Kind of a local object, if present.
pub fn object_kind(repo: &gix::Repository, id: ObjectId) -> Option<gix::object::Kind> {
    repo.find_header(id).ok().map(|h| h.kind())
}

pub(crate) fn full_name(name: &str) -> Result<FullName, Error> {
    FullName::try_from(name).map_err(|e| Error::InvalidRefName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// One ref change to apply locally with compare-and-swap semantics.
#[derive(Clone, Debug)]
pub struct LocalUpdate {
    pub name: String,
    pub old: Option<ObjectId>,
    pub new: Option<ObjectId>,
}

/// Apply ref changes (creates, updates, deletes) in one transaction: either all are prepared
/// and committed, or none (if any ref moved under us, nothing is written). `head` optionally
/// points `HEAD` at a branch in the same transaction.
pub fn apply_ref_updates(
    repo: &gix::Repository,
    updates: &[LocalUpdate],
    head: Option<&str>,
    message: &str,
) -> Result<(), Error> {
    let mut edits = Vec::with_capacity(updates.len() + 1);
    for u in updates {
        let name = full_name(&u.name)?;
        let expected = match u.old {
            Some(old) => PreviousValue::MustExistAndMatch(Target::Object(old)),
            None => PreviousValue::MustNotExist,
        };
        edits.push(match u.new {
            Some(new) => RefEdit {
                change: Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: message.into(),
                    },
                    expected,
                    new: Target::Object(new),
                },
                name,
                deref: false,
            },
            None => RefEdit {
                change: Change::Delete {
                    expected,
                    log: RefLog::AndReference,
                },
                name,
                deref: false,
            },
        });
    }
    if let Some(head) = head {
        let target = full_name(head)?;
        let current = repo.head_name().ok().flatten();
        if current.as_ref() != Some(&target) {
            edits.push(RefEdit {
                change: Change::Update {
                    log: LogChange::default(),
                    expected: PreviousValue::Any,
                    new: Target::Symbolic(target),
                },
                name: full_name("HEAD")?,
                deref: false,
            });
        }
    }
    if edits.is_empty() {
        return Ok(());
    }
    repo.edit_references(edits)
        .map(|_| ())
        .map_err(|e| Error::local(repo.path(), format!("updating refs: {}", super::error::chain(&e))))
}
