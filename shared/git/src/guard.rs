//! Panics stop at the engine's entry points.
//!
//! A panic is a bug — ours or a library's (gix-protocol's `unreachable!` on a dangling HEAD
//! symref was one) — and it is usually set off by what one remote sent. Unwinding out of the
//! engine ended the CLI with exit 101 and took a worker or a Lambda invocation with it, and the
//! queue then handed the same repository back again and again. So each public entry point
//! ([`super::ls_remote`], [`super::mirror_fetch`], [`super::push`], [`super::mirror()`]) runs
//! its work through [`guard`]: a panic becomes [`Error::Panic`] — permanent, since the same
//! input would panic again — naming the remote and the phase. Its message is scrubbed like any
//! other text from elsewhere. The panic hook still reports the location for the bug report.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::Error;
use super::remote::{Remote, scrub};

/// Run `work` for `remote`; a panic inside it becomes [`Error::Panic`] for `phase` ("fetching",
/// "pushing", …).
///
/// Unwind safety: what `work` touches and outlives it is the repositories on disk (their lock
/// files are removed while unwinding, and every ref change is a compare-and-swap transaction, so
/// a later run sees a consistent state) and the caller's interrupt flag (an atomic).
pub(crate) fn guard<T>(remote: &Remote, phase: &str, work: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(|| {
        fail_point(phase);
        work()
    }))
    .unwrap_or_else(|payload| {
        tracing::error!(remote = %remote, phase, "a git task panicked (a bug): reported as a permanent error");
        Err(Error::Panic {
            remote: remote.to_string(),
            phase: phase.to_owned(),
            message: scrub(&panic_message(payload.as_ref()), remote),
        })
    })
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(not(test))]
#[inline(always)]
fn fail_point(_phase: &str) {}

/// Unit tests make a phase panic on this thread, to see it caught where it must be.
#[cfg(test)]
fn fail_point(phase: &str) {
    if test_hook::FAIL_AT.with(|f| f.borrow().as_deref() == Some(phase)) {
        panic!("forced panic while {phase}");
    }
}

#[cfg(test)]
pub(crate) mod test_hook {
    use std::cell::RefCell;

    thread_local! {
        pub(super) static FAIL_AT: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Panic when `phase` starts on this thread, until the returned value is dropped.
    pub(crate) fn panic_in(phase: &str) -> impl Drop {
        FAIL_AT.with(|f| *f.borrow_mut() = Some(phase.to_owned()));
        Reset
    }

    struct Reset;

    impl Drop for Reset {
        fn drop(&mut self) {
            FAIL_AT.with(|f| *f.borrow_mut() = None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::{self as git, FetchOptions, MirrorOptions, PushOptions, RefPatterns, repo};

    /// A local source with one commit on `main`, an empty bare target and a cache directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let src = gix::init_bare(dir.path().join("src.git")).unwrap();
            let tree = src.write_object(gix::objs::Tree::empty()).unwrap().detach();
            let sig = gix::actor::SignatureRef {
                name: "t".into(),
                email: "t@example.invalid".into(),
                time: "1700000000 +0000",
            };
            src.commit_as(sig, sig, "refs/heads/main", "one", tree, gix::commit::NO_PARENT_IDS)
                .unwrap();
            gix::init_bare(dir.path().join("dst.git")).unwrap();
            Fixture { dir }
        }

        fn remote(&self, name: &str) -> Remote {
            Remote::parse(self.dir.path().join(name).to_str().unwrap()).unwrap()
        }
    }

    #[track_caller]
    fn assert_panic_error(result: Result<impl std::fmt::Debug, Error>, remote: &Remote, phase: &str) {
        let err = result.unwrap_err();
        assert!(matches!(&err, Error::Panic { phase: p, .. } if p == phase), "{err:?}");
        assert!(!err.is_transient(), "a panic is never retried: {err:?}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&remote.to_string()) && shown.contains(phase) && shown.contains("forced panic"),
            "{shown}"
        );
    }

    #[test]
    fn a_panic_in_each_entry_point_is_a_permanent_error_naming_remote_and_phase() {
        let f = Fixture::new();
        let (src, dst) = (f.remote("src.git"), f.remote("dst.git"));
        let never = AtomicBool::new(false);
        let cache = repo::open_or_init_bare(&f.dir.path().join("cache.git")).unwrap();
        {
            let _hook = test_hook::panic_in("listing refs");
            assert_panic_error(git::ls_remote(&src, &RefPatterns::default()), &src, "listing refs");
        }
        {
            let _hook = test_hook::panic_in("fetching");
            assert_panic_error(
                git::mirror_fetch(&cache, &src, &FetchOptions::default(), &never),
                &src,
                "fetching",
            );
            // The same through the porcelain: the fetch's own guard names the phase.
            let cache_dir = f.dir.path().join("caches");
            assert_panic_error(
                git::mirror(&src, &dst, &cache_dir, &MirrorOptions::default()),
                &src,
                "fetching",
            );
        }
        let fetched = git::mirror_fetch(&cache, &src, &FetchOptions::default(), &never).unwrap();
        {
            let _hook = test_hook::panic_in("pushing");
            assert_panic_error(
                git::push(&cache, &dst, &fetched.source, &PushOptions::default(), &never),
                &dst,
                "pushing",
            );
        }
        // Nothing is left half-done: the next run without the fault mirrors.
        let summary = git::mirror(&src, &dst, &f.dir.path().join("caches"), &MirrorOptions::default()).unwrap();
        assert_eq!(summary.push.refs.created, 1);
    }

    #[test]
    fn panic_messages_are_scrubbed() {
        let remote = Remote::parse("https://bot:s3cret-token-99@example.com/r.git").unwrap();
        let err = guard(&remote, "pushing", || -> Result<(), Error> {
            panic!("oops at https://bot:s3cret-token-99@example.com/r.git")
        })
        .unwrap_err();
        assert!(!err.to_string().contains("s3cret-token-99"), "{err}");
        assert!(!err.is_transient());
    }
}
