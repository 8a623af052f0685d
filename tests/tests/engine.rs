//! The git engine end to end, against a real `git daemon` and `git http-backend`.
//!
//! Every scenario runs over both transports; after each, the target's branches and tags must
//! equal the source's (where expected) and `git fsck --full --strict` must be clean.

use std::path::PathBuf;

use gitferry_core::git::push::PackMode;
use gitferry_core::git::{self, DeltaKind, MirrorOptions, MirrorSummary, RefPatterns, Remote};
use harness::leaks::CheckedOutput;
use harness::{
    BasicAuth, Proto, RepoServer, Servers, TempDir, Worktree, assert_fsck_clean, assert_refs_equal, git, install_hook,
    mirrored_refs, refs,
};

/// A source with history, an empty target, a cache directory, all on one pair of servers.
struct Case {
    servers: Servers,
    proto: Proto,
    source: PathBuf,
    target: PathBuf,
    wt: Worktree,
    cache: TempDir,
}

impl Case {
    fn new(proto: Proto) -> Case {
        Self::with_servers(proto, Servers::start())
    }

    fn with_servers(proto: Proto, servers: Servers) -> Case {
        let source = servers.create_bare("src.git");
        let target = servers.create_bare("dst.git");
        let mut wt = Worktree::new(&source);
        wt.build_history();
        Case {
            servers,
            proto,
            source,
            target,
            wt,
            cache: harness::tempdir(),
        }
    }

    fn source_remote(&self) -> Remote {
        Remote::parse(&self.servers.url(self.proto, "src.git")).unwrap()
    }

    fn target_remote(&self) -> Remote {
        Remote::parse(&self.servers.url(self.proto, "dst.git")).unwrap()
    }

    fn mirror(&self) -> MirrorSummary {
        self.try_mirror()
            .unwrap_or_else(|e| panic!("mirror over {:?} failed: {e}", self.proto))
    }

    fn try_mirror(&self) -> Result<MirrorSummary, git::Error> {
        git::mirror(
            &self.source_remote(),
            &self.target_remote(),
            self.cache.path(),
            &options(),
        )
    }

    fn cache_repo(&self) -> PathBuf {
        git::mirror::cache_path(self.cache.path(), &self.source_remote())
    }

    #[track_caller]
    fn assert_mirrored(&self) {
        assert_refs_equal(&self.source, &self.target);
        assert_refs_equal(&self.source, &self.cache_repo());
        assert_fsck_clean(&self.target);
        assert_fsck_clean(&self.cache_repo());
    }
}

fn options() -> MirrorOptions {
    MirrorOptions {
        refs: RefPatterns::default(),
        prune: true,
        atomic: false,
        progress: None,
        lfs: None,
    }
}

fn count(summary_deltas: &[git::RefDelta], kind: DeltaKind) -> usize {
    summary_deltas.iter().filter(|d| d.kind == kind).count()
}

#[test]
fn initial_mirror_into_empty_target() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        let n = mirrored_refs(&case.source).len();
        assert!(n >= 6, "fixture has branches and tags: {n}");
        git(&case.source, ["symbolic-ref", "HEAD", "refs/heads/release/1.x"]);
        let s = case.mirror();
        case.assert_mirrored();
        assert_eq!(
            git(&case.cache_repo(), ["symbolic-ref", "HEAD"]),
            "refs/heads/release/1.x",
            "{proto:?}: the cache follows the source's default branch"
        );
        assert_eq!(s.fetch.refs.created, n, "{proto:?}: every ref created in the cache");
        assert_eq!(
            loose_refs_and_keep_files(&case.cache_repo()),
            Vec::<String>::new(),
            "{proto:?}: the fetch writes its refs into packed-refs and releases its pack"
        );
        assert_eq!(s.push.refs.created, n, "{proto:?}: every ref created on the target");
        assert!(s.push.rejected.is_empty());
        assert!(s.fetch.objects > 20 && s.push.objects > 20, "{proto:?}: {s:?}");
        // The 1.5 MiB incompressible blob went both ways.
        assert!(
            s.fetch.bytes > 1_500_000 && s.push.bytes > 1_500_000,
            "{proto:?}: {s:?}"
        );
    }
}

/// Files under `refs/` and `.keep` files under `objects/pack/` of a bare repository.
fn loose_refs_and_keep_files(repo: &std::path::Path) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.starts_with(dir) {
                out.push(path.display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo.join("refs"), &mut found);
    walk(&repo.join("objects/pack"), &mut found);
    found.retain(|p| p.contains("/refs/") || p.ends_with(".keep"));
    found
}

#[test]
fn second_run_with_nothing_changed_transfers_no_pack() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        case.mirror();
        let before = tree_snapshot(case.cache.path());
        let s = case.mirror();
        assert_eq!(
            tree_snapshot(case.cache.path()),
            before,
            "{proto:?}: a no-op writes nothing in the cache"
        );
        case.assert_mirrored();
        assert!(
            s.fetch.up_to_date,
            "{proto:?}: no fetch when the cache matches the source"
        );
        assert_eq!((s.fetch.objects, s.fetch.bytes), (0, 0), "{proto:?}");
        assert!(
            s.push.results.is_empty(),
            "{proto:?}: nothing to push: {:?}",
            s.push.results
        );
        assert_eq!((s.push.objects, s.push.bytes), (0, 0), "{proto:?}");
    }
}

#[test]
fn incremental_commits_branch_and_annotated_tag() {
    for proto in Proto::ALL {
        let mut case = Case::new(proto);
        let first = case.mirror();
        let old_target = mirrored_refs(&case.target);
        let old_copy = case.servers.path("old.git");
        copy_dir(&case.target, &old_copy);
        case.wt.commit_file("src/new.rs", b"pub fn new() {}\n", "more work");
        case.wt
            .commit_file("src/new2.rs", b"pub fn new2() {}\n", "even more work");
        case.wt.git(["tag", "-a", "v2.0", "-m", "release 2.0"]);
        case.wt.git(["branch", "topic/next"]);
        case.wt.push_all();
        let s = case.mirror();
        case.assert_mirrored();
        assert_eq!(
            count(&s.fetch.deltas, DeltaKind::Created),
            2,
            "{proto:?}: tag + branch: {:?}",
            s.fetch.deltas
        );
        assert_eq!(
            count(&s.fetch.deltas, DeltaKind::Updated),
            1,
            "{proto:?}: main fast-forwarded"
        );
        assert_eq!((s.push.refs.created, s.push.refs.updated), (2, 1), "{proto:?}");
        // Only the delta travels: 2 commits, their trees and blobs, the tag — not the history.
        // The mirror forwards the source's pack; a push that counts sends exactly git's objects.
        assert_eq!(
            (s.push.objects, s.push.bytes),
            (s.fetch.objects, s.fetch.bytes),
            "{proto:?}"
        );
        assert_eq!(
            counted_push(&case, &old_copy),
            missing_objects(&case.source, &old_target),
            "{proto:?}: exactly what git would send"
        );
        assert!(
            s.push.bytes < first.push.bytes / 20,
            "{proto:?}: {} vs {}",
            s.push.bytes,
            first.push.bytes
        );
        assert!(s.fetch.bytes < first.fetch.bytes / 20, "{proto:?}");
    }
}

/// Successive new commits changing files in different subtrees: the second one's unchanged
/// neighbours were untouched by the first (whose walk saw their whole subtree as the target's),
/// and must not be sent again. (Counting them once packed 15,718 objects for git's 241.)
#[test]
fn successive_commits_in_different_subtrees_send_only_what_changed() {
    for proto in Proto::ALL {
        let mut case = Case::new(proto);
        for dir in ["deep/a/x", "deep/b/y"] {
            for i in 0..4 {
                let file = format!("{dir}/f{i}.txt");
                case.wt.commit_file(&file, file.as_bytes(), "nested files");
            }
        }
        case.wt.push_all();
        case.mirror();
        let old_target = mirrored_refs(&case.target);
        let old_copy = case.servers.path("old.git");
        copy_dir(&case.target, &old_copy);
        case.wt.commit_file("deep/a/x/f0.txt", b"changed a\n", "change in a");
        case.wt.commit_file("deep/b/y/f1.txt", b"changed b\n", "change in b");
        case.wt
            .commit_file("deep/b/y/f2.txt", b"changed b again\n", "change in b again");
        case.wt.push_all();
        case.mirror();
        case.assert_mirrored();
        assert_eq!(
            counted_push(&case, &old_copy),
            missing_objects(&case.source, &old_target),
            "{proto:?}: exactly what git would send"
        );
    }
}

/// The pack the source sent is sent on as it is when the target's refs are the cache's before
/// the fetch (a first mirror, the usual incremental): same bytes out as in. Not when a new tip
/// is an object the cache held without a ref reaching it — the source sends nothing for it and
/// the target lacks it — then the pack is counted and written as for any other target.
#[test]
fn received_pack_is_forwarded_unless_a_new_tip_is_missing_from_it() {
    for proto in Proto::ALL {
        let mut case = Case::new(proto);
        let first = case.mirror();
        assert_eq!(
            (first.push.bytes, first.push.pack),
            (first.fetch.bytes, PackMode::Streamed),
            "{proto:?}: first mirror forwards while fetching: {first:?}"
        );
        case.wt.commit_file("src/next.rs", b"pub fn next() {}\n", "next");
        case.wt.push_all();
        let s = case.mirror();
        case.assert_mirrored();
        assert_eq!(
            (s.push.objects, s.push.bytes, s.push.pack),
            (s.fetch.objects, s.fetch.bytes, PackMode::Streamed),
            "{proto:?}: {s:?}"
        );
        // Forwarded after the fetch, not while (the sync service's way).
        let copy = case.servers.create_bare("copy.git");
        git(&case.target, ["push", "--quiet", "--mirror", copy.to_str().unwrap()]);
        case.wt.commit_file("src/again.rs", b"pub fn again() {}\n", "again");
        case.wt.push_all();
        let cache = git::repo::open(&case.cache_repo()).unwrap();
        let never = std::sync::atomic::AtomicBool::new(false);
        let fetched = git::mirror_fetch(&cache, &case.source_remote(), &git::FetchOptions::default(), &never).unwrap();
        let copy_remote = Remote::parse(&case.servers.url(proto, "copy.git")).unwrap();
        let desired = git::repo::read_refs(&cache, &RefPatterns::default(), git::repo::Peel::No).unwrap();
        let pushed = git::push_through(
            &cache,
            &copy_remote,
            None,
            fetched.forward.as_ref(),
            &desired,
            &git::PushOptions::default(),
            &never,
        )
        .unwrap();
        // The pack as stored: a thin one is completed with its bases when it is indexed.
        assert_eq!(pushed.pack, PackMode::Forwarded, "{proto:?}");
        assert!(pushed.objects >= fetched.objects, "{proto:?}: {pushed:?} {fetched:?}");
        assert_refs_equal(&case.source, &copy);
        assert_fsck_clean(&copy);

        // `gone` reaches a commit only it reaches; the cache keeps the object after the prune.
        let gone = case.wt.commit_file("gone.txt", b"soon unreferenced\n", "only on gone");
        case.wt.git(["branch", "gone"]);
        case.wt.git(["reset", "--quiet", "--hard", "HEAD~1"]);
        case.wt.push_all();
        case.mirror();
        case.wt.git(["branch", "-D", "gone"]);
        case.wt.push_all();
        case.mirror();
        // A target that never saw `gone`, with the cache's refs.
        let fresh = case.servers.create_bare("fresh.git");
        let fresh_remote = Remote::parse(&case.servers.url(proto, "fresh.git")).unwrap();
        git::mirror(&case.source_remote(), &fresh_remote, case.cache.path(), &options()).unwrap();
        // The branch comes back at that commit, with a new commit elsewhere (so a pack comes).
        case.wt.git(["branch", "gone", &gone]);
        case.wt.commit_file("src/later.rs", b"pub fn later() {}\n", "later");
        case.wt.push_all();
        let s = git::mirror(&case.source_remote(), &fresh_remote, case.cache.path(), &options()).unwrap();
        assert_refs_equal(&case.source, &fresh);
        assert_fsck_clean(&fresh);
        assert!(s.fetch.objects > 0, "{proto:?}: {s:?}");
        assert_eq!(
            s.push.pack,
            PackMode::Counted,
            "{proto:?}: counted, not forwarded: {s:?}"
        );
        assert_ne!(s.push.bytes, s.fetch.bytes, "{proto:?}: {s:?}");
    }
}

#[test]
fn source_force_push_is_reproduced() {
    for proto in Proto::ALL {
        let mut case = Case::new(proto);
        case.mirror();
        let old_target = mirrored_refs(&case.target);
        let old_main = git(&case.source, ["rev-parse", "refs/heads/main"]);
        case.wt.git(["reset", "--quiet", "--hard", "HEAD~2"]);
        case.wt
            .commit_file("rewritten.txt", b"history was rewritten\n", "rewrite");
        case.wt.push_all();
        let s = case.mirror();
        case.assert_mirrored();
        let forced: Vec<_> = s.fetch.deltas.iter().filter(|d| d.kind == DeltaKind::Forced).collect();
        assert_eq!(forced.len(), 1, "{proto:?}: {:?}", s.fetch.deltas);
        assert_eq!(forced[0].name, "refs/heads/main");
        assert_eq!(forced[0].old.unwrap().to_string(), old_main);
        assert_eq!(s.push.refs.forced, 1, "{proto:?}");
        assert_eq!(s.push.objects, missing_objects(&case.source, &old_target), "{proto:?}");
    }
}

/// How many objects `git rev-list --objects` says the source has beyond what `old` refs reach:
/// the exact content of a minimal pack.
/// Objects a push from the cache counts and packs for `old` (a copy of the target from before
/// the change, served next to it), checked by its refs afterwards — `git::push` never forwards.
fn counted_push(case: &Case, old: &std::path::Path) -> u64 {
    let cache = git::repo::open(&case.cache_repo()).unwrap();
    let desired = git::repo::read_refs(&cache, &RefPatterns::default(), git::repo::Peel::No).unwrap();
    let name = old.file_name().unwrap().to_str().unwrap();
    let remote = Remote::parse(&case.servers.url(case.proto, name)).unwrap();
    let never = std::sync::atomic::AtomicBool::new(false);
    let outcome = git::push(&cache, &remote, &desired, &git::PushOptions::default(), &never).unwrap();
    assert_refs_equal(&case.source, old);
    outcome.objects
}

fn missing_objects(source: &std::path::Path, old: &std::collections::BTreeMap<String, String>) -> u64 {
    let mut args = vec![
        "rev-list".to_owned(),
        "--objects".into(),
        "--branches".into(),
        "--tags".into(),
        "--not".into(),
    ];
    args.extend(old.values().cloned());
    git(source, args).lines().count() as u64
}

#[test]
fn deleted_branch_and_tag_are_pruned_in_cache_and_target() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        case.mirror();
        git(&case.source, ["branch", "-D", "feature"]);
        git(&case.source, ["tag", "-d", "v1.0"]);
        let s = case.mirror();
        case.assert_mirrored();
        let cache_refs = refs(&case.cache_repo());
        assert!(!cache_refs.contains_key("refs/heads/feature") && !cache_refs.contains_key("refs/tags/v1.0"));
        assert_eq!(s.fetch.refs.deleted, 2, "{proto:?}");
        assert_eq!(s.push.refs.deleted, 2, "{proto:?}");
        assert_eq!(s.push.objects, 0, "{proto:?}: deletes need no objects");
    }
}

#[test]
fn refs_only_on_the_target_are_deleted_but_foreign_namespaces_kept() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        case.mirror();
        let main = git(&case.target, ["rev-parse", "refs/heads/main"]);
        git(&case.target, ["update-ref", "refs/heads/stray", &main]);
        git(&case.target, ["update-ref", "refs/tags/stray-tag", &main]);
        // Hosts keep read-only refs such as refs/pull/*: a mirror must not touch them.
        git(&case.target, ["update-ref", "refs/pull/1/head", &main]);
        let s = case.mirror();
        case.assert_mirrored();
        assert_eq!(s.push.refs.deleted, 2, "{proto:?}: {:?}", s.push.results);
        assert!(refs(&case.target).contains_key("refs/pull/1/head"));
    }
}

#[test]
fn hosted_read_only_refs_on_the_source_are_not_mirrored() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        let main = git(&case.source, ["rev-parse", "refs/heads/main"]);
        git(&case.source, ["update-ref", "refs/pull/7/head", &main]);
        case.mirror();
        case.assert_mirrored();
        assert!(!refs(&case.target).contains_key("refs/pull/7/head"));
        assert!(!refs(&case.cache_repo()).contains_key("refs/pull/7/head"));
    }
}

#[test]
fn target_hook_declining_one_ref_rejects_only_that_ref() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        // receive-pack's per-ref `update` hook (a pre-receive hook declines the whole push).
        install_hook(
            &case.target,
            "update",
            "#!/bin/sh\nif [ \"$1\" = refs/heads/feature ]; then echo \"policy: feature is frozen\" >&2; exit 1; fi\nexit 0\n",
        );
        let cli = std::process::Command::new(harness::gitferry_bin())
            .args([
                "mirror",
                &case.servers.url(proto, "src.git"),
                &case.servers.url(proto, "dst.git"),
                "--cache-dir",
            ])
            .arg(case.cache.path())
            .arg("--json")
            .checked_output()
            .expect("gitferry runs");
        assert_eq!(
            cli.status.code(),
            Some(1),
            "{proto:?}: a rejected ref fails the command"
        );
        let summary: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("JSON summary on stdout");
        let rejected = summary["push"]["rejected"].as_array().unwrap();
        assert_eq!(rejected.len(), 1, "{proto:?}: {summary}");
        assert_eq!(rejected[0]["name"], "refs/heads/feature");
        assert!(
            rejected[0]["reason"].as_str().unwrap().contains("hook declined"),
            "{summary}"
        );
        let messages = summary["push"]["remote_messages"].to_string();
        assert!(
            messages.contains("policy: feature is frozen"),
            "{proto:?}: hook output reported: {messages}"
        );
        assert!(
            !messages.contains("Resolving"),
            "{proto:?}: progress meters are not messages: {messages}"
        );
        let stderr = String::from_utf8_lossy(&cli.stderr);
        assert!(stderr.contains("rejected"), "{stderr}");
        // Everything else landed.
        let (s, t) = (mirrored_refs(&case.source), mirrored_refs(&case.target));
        for (name, id) in &s {
            if name != "refs/heads/feature" {
                assert_eq!(t.get(name), Some(id), "{proto:?}: {name} mirrored");
            }
        }
        assert!(!t.contains_key("refs/heads/feature"));
        assert_fsck_clean(&case.target);
    }
}

#[test]
fn atomic_push_applies_nothing_when_one_ref_is_declined() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        install_hook(
            &case.target,
            "update",
            "#!/bin/sh\n[ \"$1\" = refs/heads/feature ] && exit 1\nexit 0\n",
        );
        let mut opts = options();
        opts.atomic = true;
        let s = git::mirror(&case.source_remote(), &case.target_remote(), case.cache.path(), &opts).unwrap();
        assert!(!s.push.rejected.is_empty());
        assert_eq!(
            s.push.rejected.len(),
            s.push.results.len(),
            "{proto:?}: all-or-nothing: {:?}",
            s.push.results
        );
        assert!(mirrored_refs(&case.target).is_empty(), "{proto:?}: nothing applied");
    }
}

#[test]
fn http_basic_auth_right_and_wrong_credentials() {
    let auth = BasicAuth {
        user: "mirror-bot".into(),
        password: "correct-horse-battery".into(),
    };
    let case = Case::with_servers(Proto::Http, Servers::start_with_auth(Some(auth.clone())));
    let good = |name: &str| case.servers.http.url_with_userinfo(name, &auth.user, &auth.password);
    let s = git::mirror(
        &Remote::parse(&good("src.git")).unwrap(),
        &Remote::parse(&good("dst.git")).unwrap(),
        case.cache.path(),
        &options(),
    )
    .expect("right credentials work");
    assert!(s.push.refs.created > 0);
    assert_refs_equal(&case.source, &case.target);
    assert!(
        !serde_json::to_string(&s).unwrap().contains(&auth.password),
        "the summary never shows the password"
    );

    // Wrong password: a permanent auth error that does not print the password.
    let bad = case
        .servers
        .http
        .url_with_userinfo("src.git", &auth.user, &harness::leaks::secret("wrong-password-123"));
    let err = git::mirror(
        &Remote::parse(&bad).unwrap(),
        &Remote::parse(&good("dst.git")).unwrap(),
        case.cache.path(),
        &options(),
    )
    .unwrap_err();
    assert!(matches!(err, git::Error::Auth { .. }), "auth error, got {err:?}");
    assert!(!err.is_transient());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-password-123"), "{shown}");

    // Same through the CLI, credentials from the environment this time.
    let cli = std::process::Command::new(harness::gitferry_bin())
        .args([
            "mirror",
            &case.servers.http.url("src.git"),
            &case.servers.http.url("dst.git"),
            "--cache-dir",
        ])
        .arg(case.cache.path())
        .env("GITFERRY_SOURCE_USER", &auth.user)
        .env("GITFERRY_SOURCE_TOKEN", harness::leaks::secret("another-wrong-secret"))
        .env("GITFERRY_TARGET_USER", &auth.user)
        .env("GITFERRY_TARGET_TOKEN", &auth.password)
        .checked_output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(
        !stderr.contains("another-wrong-secret") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");

    // No credentials at all against a server that wants them: also an auth error.
    let err = git::mirror(
        &Remote::parse(&case.servers.http.url("src.git")).unwrap(),
        &Remote::parse(&good("dst.git")).unwrap(),
        case.cache.path(),
        &options(),
    )
    .unwrap_err();
    assert!(matches!(err, git::Error::Auth { .. }), "{err:?}");
    // The push side too: a target refusing our credentials is an auth error.
    let err = git::mirror(
        &Remote::parse(&good("src.git")).unwrap(),
        &Remote::parse(&case.servers.http.url_with_userinfo("dst.git", &auth.user, "nope-nope")).unwrap(),
        case.cache.path(),
        &options(),
    )
    .unwrap_err();
    assert!(matches!(err, git::Error::Auth { .. }), "{err:?}");
    assert!(!format!("{err}").contains("nope-nope"));
}

#[test]
fn unreachable_source_is_transient_and_leaves_the_cache_untouched() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        case.mirror();
        let before = refs(&case.cache_repo());
        // A port nobody listens on.
        let port = harness::free_port();
        let url = match proto {
            Proto::GitDaemon => format!("git://127.0.0.1:{port}/src.git"),
            Proto::Http => format!("http://127.0.0.1:{port}/src.git"),
        };
        // Same cache key as the real source would be different; point the cache dir at the same
        // repository by mirroring the unreachable URL into a copy of the cache.
        let unreachable = Remote::parse(&url).unwrap();
        let cache = git::mirror::cache_path(case.cache.path(), &unreachable);
        copy_dir(&case.cache_repo(), &cache);
        let err = git::mirror(&unreachable, &case.target_remote(), case.cache.path(), &options()).unwrap_err();
        assert!(err.is_transient(), "{proto:?}: {err:?}");
        assert!(matches!(err, git::Error::Network { .. }), "{proto:?}: {err:?}");
        assert_eq!(refs(&cache), before, "{proto:?}: cache untouched");
        assert_fsck_clean(&cache);
        assert_refs_equal(&case.source, &case.target);
    }
}

#[test]
fn missing_repository_is_a_permanent_not_found() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        let missing = Remote::parse(&case.servers.url(proto, "nope.git")).unwrap();
        let err = git::mirror(&missing, &case.target_remote(), case.cache.path(), &options()).unwrap_err();
        assert!(!err.is_transient(), "{proto:?}: {err:?}");
        assert!(matches!(err, git::Error::NotFound { .. }), "{proto:?}: {err:?}");
        // Listing (the poller's probe) and pushing say the same.
        let err = git::ls_remote(&missing, &RefPatterns::default()).unwrap_err();
        assert!(matches!(err, git::Error::NotFound { .. }), "{proto:?}: {err:?}");
        let err = git::mirror(&case.source_remote(), &missing, case.cache.path(), &options()).unwrap_err();
        assert!(matches!(err, git::Error::NotFound { .. }), "{proto:?}: {err:?}");
    }
}

#[test]
fn empty_source_mirrors_to_an_empty_target() {
    for proto in Proto::ALL {
        let servers = Servers::start();
        servers.create_bare("empty.git");
        servers.create_bare("dst.git");
        let cache = harness::tempdir();
        let s = git::mirror(
            &Remote::parse(&servers.url(proto, "empty.git")).unwrap(),
            &Remote::parse(&servers.url(proto, "dst.git")).unwrap(),
            cache.path(),
            &options(),
        )
        .unwrap();
        assert!(s.push.results.is_empty(), "{proto:?}");
        assert!(mirrored_refs(&servers.path("dst.git")).is_empty());
    }
}

#[test]
fn local_paths_are_mirrored_natively() {
    let servers = Servers::start();
    let source = servers.create_bare("src.git");
    let target = servers.create_bare("dst.git");
    let mut wt = Worktree::new(&source);
    wt.build_history();
    let cache = harness::tempdir();
    let run = || {
        git::mirror(
            &Remote::parse(source.to_str().unwrap()).unwrap(),
            &Remote::parse(target.to_str().unwrap()).unwrap(),
            cache.path(),
            &options(),
        )
        .unwrap()
    };
    let s = run();
    assert_refs_equal(&source, &target);
    assert_fsck_clean(&target);
    assert!(s.push.objects > 20);
    // Incremental with a force-push and a deletion, then a no-op.
    wt.git(["reset", "--quiet", "--hard", "HEAD~1"]);
    wt.commit_file("local.txt", b"local\n", "local change");
    wt.push_all();
    git(&source, ["tag", "-d", "light-1"]);
    let s = run();
    assert_refs_equal(&source, &target);
    assert_fsck_clean(&target);
    assert_eq!(
        (s.push.refs.forced, s.push.refs.deleted),
        (1, 1),
        "{:?}",
        s.push.results
    );
    let s = run();
    assert!(s.fetch.up_to_date && s.push.results.is_empty() && s.push.bytes == 0);
    // A missing local source is a clear not-found.
    let err = git::mirror(
        &Remote::parse("/nonexistent/gitferry/src.git").unwrap(),
        &Remote::parse(target.to_str().unwrap()).unwrap(),
        cache.path(),
        &options(),
    )
    .unwrap_err();
    assert!(matches!(err, git::Error::NotFound { .. }), "{err:?}");
}

#[test]
fn cli_json_summary_and_usage_errors() {
    let case = Case::new(Proto::GitDaemon);
    let run = |extra: &[&str]| {
        std::process::Command::new(harness::gitferry_bin())
            .args([
                "mirror",
                &case.servers.url(Proto::GitDaemon, "src.git"),
                &case.servers.url(Proto::GitDaemon, "dst.git"),
                "--cache-dir",
            ])
            .arg(case.cache.path())
            .args(extra)
            .checked_output()
            .unwrap()
    };
    let out = run(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["push"]["refs"]["created"].as_u64().unwrap() > 0);
    assert!(v["fetch"]["bytes"].as_u64().unwrap() > 0);
    assert!(v["duration_ms"].is_u64());
    assert_refs_equal(&case.source, &case.target);

    let out = run(&["--progress"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("up to date"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fetching"),
        "progress on stderr"
    );

    let usage = std::process::Command::new(harness::gitferry_bin())
        .args(["mirror", "only-one-arg"])
        .checked_output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let bad = std::process::Command::new(harness::gitferry_bin())
        .args([
            "mirror",
            &format!("ftp://user:{}@h/x", harness::leaks::secret("pw-secret")),
            "/tmp/x",
            "--cache-dir",
            "/tmp/y",
        ])
        .checked_output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with("error: invalid remote") && !stderr.contains("pw-secret"),
        "{stderr}"
    );
}

/// Every path under `dir` with its modification time (directories too: creating and removing a
/// lock file changes its directory's mtime).
fn tree_snapshot(dir: &std::path::Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        out.push((d.clone(), std::fs::metadata(&d).unwrap().modified().unwrap()));
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), entry.metadata().unwrap().modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[test]
fn target_without_ofs_delta_gets_ref_deltas() {
    for proto in Proto::ALL {
        let mut case = Case::new(proto);
        // receive-pack stops advertising ofs-delta with this setting.
        git(&case.target, ["config", "repack.useDeltaBaseOffset", "false"]);
        // History with similar file versions so the source's packs hold deltas to reuse.
        let base: Vec<u8> = (0..4000)
            .map(|i| format!("line {i}\n"))
            .collect::<String>()
            .into_bytes();
        for round in 0..4 {
            let mut content = base.clone();
            content.extend_from_slice(format!("round {round}\n").as_bytes());
            case.wt.commit_file("big.txt", &content, &format!("round {round}"));
        }
        case.wt.push_all();
        git(&case.source, ["repack", "-adq"]);
        case.mirror();
        case.assert_mirrored();
    }
}

/// Pseudo-random text lines: deflate cannot shrink them much, a delta against an edited copy can.
fn noisy_text(lines: usize) -> Vec<u8> {
    let mut s: u64 = 7;
    (0..lines)
        .flat_map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            format!("{i:05} {:016x} {:016x}\n", s, s.rotate_left(17)).into_bytes()
        })
        .collect()
}

/// Bytes of the pack `git pack-objects --revs --thin` makes in `repo` for `tips` to a receiver
/// with `old` refs: what `git push` would send.
fn git_thin_pack_bytes(
    repo: &std::path::Path,
    tips: &[String],
    old: &std::collections::BTreeMap<String, String>,
) -> usize {
    use std::io::Write;
    let mut child = harness::git_cmd(repo)
        .args(["pack-objects", "--revs", "--thin", "--stdout", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    for tip in tips {
        writeln!(input, "{tip}").unwrap();
    }
    for id in old.values() {
        writeln!(input, "^{id}").unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout.len()
}

/// A target that lags, mirrored from a cache whose pack holds the new version of a file whole
/// (a first fetch from a repacked source: git stores the newest version whole): the file goes
/// as a delta against the target's version, as `git push` sends it — not whole.
#[test]
fn a_lagging_target_gets_deltas_against_its_own_versions() {
    for proto in Proto::ALL {
        let mut case = Case::new(proto);
        let mut content = noisy_text(3000);
        case.wt.commit_file("data.txt", &content, "data");
        case.wt.push_all();
        case.mirror();
        let old_target = mirrored_refs(&case.target);
        content.splice(40_000..40_000, b"an edit in the middle\n".iter().copied());
        content.extend_from_slice(b"and a new line at the end\n");
        case.wt.commit_file("data.txt", &content, "edit data");
        case.wt.push_all();
        git(&case.source, ["repack", "-adfq"]);
        let new_blob = git(&case.source, ["rev-parse", "main:data.txt"]);
        let tips: Vec<String> = mirrored_refs(&case.source).into_values().collect();
        let git_bytes = git_thin_pack_bytes(&case.source, &tips, &old_target);

        let fresh_cache = harness::tempdir();
        let s = git::mirror(
            &case.source_remote(),
            &case.target_remote(),
            fresh_cache.path(),
            &options(),
        )
        .unwrap();
        assert_refs_equal(&case.source, &case.target);
        assert_fsck_clean(&case.target);
        let cache = git::mirror::cache_path(fresh_cache.path(), &case.source_remote());
        let whole = format!("{} {}", new_blob.trim(), "0".repeat(40));
        let stored = git(
            &cache,
            [
                "cat-file",
                "--batch-check=%(objectname) %(deltabase)",
                "--batch-all-objects",
            ],
        );
        assert!(
            stored.lines().any(|l| l == whole),
            "{proto:?}: the new version is stored whole in the cache"
        );
        assert_eq!(s.push.pack, PackMode::Counted, "{proto:?}: {s:?}");
        // The file whole deflates to ~68 KB; its delta, the commit and the trees take ~1 KB.
        // (git's own thin pack here carries it whole: it takes thin bases from at most
        // `pack.window` edge commits, and this history has more.)
        assert!(
            s.push.bytes < 4096 && s.push.bytes as usize <= git_bytes,
            "{proto:?}: pushed {} bytes where git pushes {git_bytes}",
            s.push.bytes
        );
    }
}

#[test]
fn ls_remote_lists_refs_peeled_tags_and_head() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        let main = git(&case.source, ["rev-parse", "refs/heads/main"]);
        git(&case.source, ["update-ref", "refs/pull/3/head", &main]);
        let state = git::ls_remote(&case.source_remote(), &RefPatterns::default()).unwrap();
        let ids: std::collections::BTreeMap<String, String> =
            state.refs.iter().map(|(n, t)| (n.clone(), t.id.to_string())).collect();
        assert_eq!(
            ids,
            mirrored_refs(&case.source),
            "{proto:?}: exactly the branches and tags"
        );
        let v1 = &state.refs["refs/tags/v1.0"];
        assert_eq!(
            v1.peeled.unwrap().to_string(),
            git(&case.source, ["rev-parse", "v1.0^{commit}"]),
            "{proto:?}"
        );
        assert!(
            state.refs["refs/tags/light-1"].peeled.is_none(),
            "lightweight tags have nothing to peel"
        );
        assert_eq!(state.head.as_deref(), Some("refs/heads/main"), "{proto:?}");
        // The same through a local path.
        let local = git::ls_remote(
            &Remote::parse(case.source.to_str().unwrap()).unwrap(),
            &RefPatterns::default(),
        )
        .unwrap();
        assert_eq!(local, state, "{proto:?}: local and network listings agree");
    }
}

#[test]
fn refs_created_at_objects_the_target_has_send_an_empty_pack() {
    for proto in Proto::ALL {
        let case = Case::new(proto);
        case.mirror();
        let old = git(&case.source, ["rev-parse", "refs/heads/main~2"]);
        git(&case.source, ["update-ref", "refs/heads/old-point", &old]);
        git(&case.source, ["update-ref", "refs/tags/light-2", &old]);
        let s = case.mirror();
        case.assert_mirrored();
        assert_eq!(s.push.refs.created, 2, "{proto:?}");
        assert_eq!(s.push.objects, 0, "{proto:?}: no object is missing");
        assert_eq!(
            s.push.bytes, 32,
            "{proto:?}: an empty pack (header + checksum) is still sent"
        );
    }
}

/// A hostile server advertising ref names that are invalid or climb out of `refs/` (as a
/// compromised or buggy host could): the listing is refused with a clear, permanent error (or,
/// for names outside `refs/`, the name is not listed at all), and a mirror from it writes
/// nothing. The server is a few lines of protocol v2 over git://.
#[test]
fn hostile_ref_names_in_an_advertisement_are_refused() {
    use std::io::{Read, Write};
    fn pkt(out: &mut Vec<u8>, line: &str) {
        out.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
    }
    let oid = "1234567890123456789012345678901234567890";
    for bad in [
        "refs/heads/../../../etc/passwd",
        "refs/heads/a..b",
        "refs/heads/x.lock",
        "refs/heads/sp ace",
        "refs/heads/ctl\u{7}",
        "refs/tags/v1\\x",
        "/etc/passwd",
        "../../x",
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let server = std::thread::spawn(move || {
            // Serve every connection until told to stop.
            listener.set_nonblocking(true).unwrap();
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf); // the git-upload-pack request line
                let mut out = Vec::new();
                for l in ["version 2\n", "ls-refs\n", "fetch\n", "object-format=sha1\n"] {
                    pkt(&mut out, l);
                }
                out.extend_from_slice(b"0000");
                if conn.write_all(&out).is_err() {
                    continue;
                }
                let _ = conn.read(&mut buf); // the ls-refs command
                let mut out = Vec::new();
                pkt(&mut out, &format!("{oid} refs/heads/main\n"));
                pkt(&mut out, &format!("{oid} {bad}\n"));
                out.extend_from_slice(b"0000");
                let _ = conn.write_all(&out);
                // Close gently: unread input at close would turn it into a reset.
                let _ = conn.shutdown(std::net::Shutdown::Write);
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        let src = Remote::parse(&format!("git://127.0.0.1:{port}/src.git")).unwrap();
        match git::ls_remote(&src, &RefPatterns::default()) {
            Err(err) => {
                assert!(bad.starts_with("refs/"), "{bad}: {err}");
                assert!(
                    !err.is_transient(),
                    "{bad}: a hostile advertisement is not retried: {err:?}"
                );
                let shown = err.to_string();
                println!("{bad:?}: {shown}");
                assert!(shown.contains("refus"), "{bad}: {shown}");
                assert!(
                    !shown.contains("[114, "),
                    "{bad}: protocol lines shown as text: {shown}"
                );
            }
            Ok(state) => {
                assert!(!bad.starts_with("refs/"), "{bad} must be refused");
                let names: Vec<&String> = state.refs.keys().collect();
                assert_eq!(names, ["refs/heads/main"], "{bad}: only refs/ are listed");
            }
        }

        let servers = Servers::start();
        let target = servers.create_bare("dst.git");
        let cache = harness::tempdir();
        let dst = Remote::parse(&servers.daemon.url("dst.git")).unwrap();
        git::mirror(&src, &dst, cache.path(), &options()).expect_err(bad);
        assert!(mirrored_refs(&target).is_empty(), "{bad}: nothing pushed");
        let escaped = cache.path().parent().unwrap().join("etc/passwd");
        assert!(!escaped.exists(), "{bad}: nothing written outside the cache");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        server.join().unwrap();
    }
}

/// A protocol-v0 server whose HEAD symref names a branch that does not exist (as dulwich
/// advertises for every new repository): listing, fetching from it and pushing to it work, the
/// source's HEAD reads as that (unborn) branch, and the mirror is exact. The server is git
/// itself behind a proxy that asks for v0 and adds `symref=HEAD:refs/heads/gone`.
#[test]
fn dangling_head_symref_on_a_v0_server_is_an_unborn_head() {
    let case = Case::new(Proto::GitDaemon);
    git(&case.source, ["symbolic-ref", "HEAD", "refs/heads/gone"]);
    let proxy = harness::v0proxy::V0Proxy::start(case.servers.daemon.port, "symref=HEAD:refs/heads/gone");
    let src = Remote::parse(&proxy.url("src.git")).unwrap();
    let dst = Remote::parse(&proxy.url("dst.git")).unwrap();

    let listed = git::ls_remote(&src, &RefPatterns::default()).expect("ls-remote");
    let ids: std::collections::BTreeMap<String, String> =
        listed.refs.iter().map(|(n, t)| (n.clone(), t.id.to_string())).collect();
    assert_eq!(ids, mirrored_refs(&case.source));
    assert_eq!(listed.head.as_deref(), Some("refs/heads/gone"));
    assert!(
        listed.refs["refs/tags/v1.0"].peeled.is_some(),
        "peeled tags from v0 lines"
    );
    let target_listed = git::ls_remote(&dst, &RefPatterns::default()).expect("ls-remote of the empty target");
    assert!(target_listed.refs.is_empty());

    let run = || git::mirror(&src, &dst, case.cache.path(), &options()).expect("mirror through v0");
    let cache = git::mirror::cache_path(case.cache.path(), &src);
    let assert_mirrored = || {
        for repo in [&case.target, &cache] {
            assert_refs_equal(&case.source, repo);
            assert_fsck_clean(repo);
        }
    };
    let s = run();
    assert!(s.push.rejected.is_empty(), "{:?}", s.push.rejected);
    assert_mirrored();
    assert_eq!(git(&cache, ["symbolic-ref", "HEAD"]), "refs/heads/gone");

    // Incremental and pruning runs over the same advertisements, then a no-op.
    git(&case.source, ["branch", "-D", "feature"]);
    let s = run();
    assert_eq!((s.fetch.refs.deleted, s.push.refs.deleted), (1, 1));
    assert_mirrored();
    let s = run();
    assert!(s.fetch.up_to_date && s.push.results.is_empty(), "{s:?}");
}

/// dulwich as source and as target, new repositories included (their HEAD names
/// `refs/heads/master`, which does not exist): no panic, an exact mirror, and a target whose
/// HEAD branch the mirror prunes keeps syncing.
#[test]
fn dulwich_source_and_target_with_dangling_head() {
    let dulwich = harness::dulwich::Dulwich::start();
    let servers = Servers::start();
    let cache = harness::tempdir();

    // An empty dulwich repository (it sends a bare flush) lists as empty and mirrors as nothing.
    dulwich.create_bare("empty.git");
    let empty = Remote::parse(&dulwich.url("empty.git")).unwrap();
    let listed = git::ls_remote(&empty, &RefPatterns::default()).expect("ls-remote of an empty dulwich repo");
    assert!(listed.refs.is_empty(), "{listed:?}");

    // git → new dulwich repository (capabilities-only advertisement with a dangling symref).
    let source = servers.create_bare("src.git");
    let mut wt = Worktree::new(&source);
    wt.build_history();
    wt.git(["push", "--quiet", "origin", "main:master"]);
    let target = dulwich.create_bare("dst.git");
    let src = Remote::parse(&servers.daemon.url("src.git")).unwrap();
    let dst = Remote::parse(&dulwich.url("dst.git")).unwrap();
    let s = git::mirror(&src, &dst, cache.path(), &options()).expect("mirror into a new dulwich repo");
    assert!(s.push.rejected.is_empty(), "{:?}", s.push.rejected);
    assert_refs_equal(&source, &target);
    assert_fsck_clean(&target);

    // The source drops the branch the target's HEAD names: pruned, and later syncs go on.
    git(&source, ["branch", "-D", "master"]);
    let s = git::mirror(&src, &dst, cache.path(), &options()).expect("prune the target's HEAD branch");
    assert_eq!(s.push.refs.deleted, 1, "{:?}", s.push.results);
    assert_refs_equal(&source, &target);
    wt.commit_file("after.txt", b"after\n", "after the prune");
    wt.push_all();
    let s = git::mirror(&src, &dst, cache.path(), &options()).expect("sync with a dangling target HEAD");
    assert_eq!(s.push.refs.updated, 1, "{:?}", s.push.results);
    assert_refs_equal(&source, &target);
    assert_fsck_clean(&target);

    // dulwich as the source (HEAD → master, which it no longer has) → git.
    let back = servers.create_bare("back.git");
    let from_dulwich = Remote::parse(&dulwich.url("dst.git")).unwrap();
    let listed = git::ls_remote(&from_dulwich, &RefPatterns::default()).expect("ls-remote of dulwich");
    assert_eq!(listed.head.as_deref(), Some("refs/heads/master"));
    assert_eq!(listed.refs.len(), mirrored_refs(&target).len());
    let cache2 = harness::tempdir();
    let s = git::mirror(
        &from_dulwich,
        &Remote::parse(&servers.http.url("back.git")).unwrap(),
        cache2.path(),
        &options(),
    )
    .expect("mirror from dulwich");
    assert!(s.push.rejected.is_empty());
    assert_refs_equal(&target, &back);
    assert_fsck_clean(&back);
}

/// A bare SHA-256 repository `name` under `root`, with one commit on `main` when `commit`.
fn sha256_repo(root: &std::path::Path, name: &str, commit: bool) -> PathBuf {
    git(
        root,
        [
            "init",
            "--quiet",
            "--bare",
            "--object-format=sha256",
            "--initial-branch=main",
            name,
        ],
    );
    let path = root.join(name);
    if commit {
        let wt = harness::tempdir();
        git(
            wt.path(),
            [
                "init",
                "--quiet",
                "--object-format=sha256",
                "--initial-branch=main",
                "wt",
            ],
        );
        let wt = wt.path().join("wt");
        git(&wt, ["commit", "--quiet", "--allow-empty", "-m", "sha256 commit"]);
        git(&wt, ["push", "--quiet", path.to_str().unwrap(), "main"]);
    }
    path
}

/// SHA-256 repositories, as source or target, over git://, HTTP and as local paths, empty or
/// not: refused with one clear, permanent message, and nothing is written to the target.
#[test]
fn sha256_repositories_are_refused_clearly_from_every_side() {
    let case = Case::new(Proto::GitDaemon);
    sha256_repo(case.servers.root(), "s256.git", true);
    sha256_repo(case.servers.root(), "s256-empty.git", false);
    let expect_refused = |err: git::Error, remote: &str| {
        assert!(
            matches!(err, git::Error::UnsupportedObjectFormat { .. }),
            "{remote}: {err:?}"
        );
        assert!(!err.is_transient(), "{remote}: {err:?}");
        assert_eq!(
            err.to_string(),
            format!("{remote}: SHA-256 repositories are not supported yet")
        );
    };
    let mut remotes: Vec<String> = Vec::new();
    for proto in Proto::ALL {
        remotes.push(case.servers.url(proto, "s256.git"));
        remotes.push(case.servers.url(proto, "s256-empty.git"));
    }
    remotes.push(case.servers.path("s256.git").display().to_string());
    remotes.push(case.servers.path("s256-empty.git").display().to_string());
    for url in &remotes {
        let sha256 = Remote::parse(url).unwrap();
        let cache = harness::tempdir();
        // As a source: listing and mirroring.
        match git::ls_remote(&sha256, &RefPatterns::default()) {
            Err(err) => expect_refused(err, url),
            // An empty repository over protocol v2 still names its format in the capabilities,
            // so listing refuses too; nothing else may succeed.
            Ok(state) => panic!("{url}: listed {state:?}"),
        }
        let err = git::mirror(&sha256, &case.target_remote(), cache.path(), &options()).unwrap_err();
        expect_refused(err, url);
        assert!(mirrored_refs(&case.target).is_empty(), "{url}: nothing pushed");
        // As a target.
        let err = git::mirror(&case.source_remote(), &sha256, cache.path(), &options()).unwrap_err();
        expect_refused(err, url);
    }
    assert_eq!(
        git(&case.servers.path("s256-empty.git"), ["for-each-ref"]),
        "",
        "the empty SHA-256 target got nothing"
    );

    // The CLI says the same in one line, exit 1.
    let cli = std::process::Command::new(harness::gitferry_bin())
        .args([
            "mirror",
            &remotes[0],
            &case.servers.url(Proto::GitDaemon, "dst.git"),
            "--cache-dir",
        ])
        .arg(case.cache.path())
        .checked_output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&cli.stderr).trim(),
        format!("error: {}: SHA-256 repositories are not supported yet", remotes[0])
    );
}

/// A non-bare repository (a work tree) as a local source mirrors like a bare one; as a target it
/// is accepted with git's rule: the branch checked out in its work tree is refused (the files
/// and index would no longer match), everything else lands, unless its
/// `receive.denyCurrentBranch` says `ignore`.
#[test]
fn non_bare_local_repositories_as_source_and_target() {
    let servers = Servers::start();
    let source = servers.create_bare("src.git");
    let mut wt = Worktree::new(&source);
    wt.build_history();
    let cache = harness::tempdir();
    for (i, path) in [wt.path.clone(), wt.path.join(".git")].iter().enumerate() {
        let target = servers.create_bare(&format!("dst{i}.git"));
        let s = git::mirror(
            &Remote::parse(path.to_str().unwrap()).unwrap(),
            &Remote::parse(target.to_str().unwrap()).unwrap(),
            cache.path(),
            &options(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(s.push.rejected.is_empty());
        assert_refs_equal(&wt.path, &target);
        assert_fsck_clean(&target);
    }
    let listed = git::ls_remote(
        &Remote::parse(wt.path.to_str().unwrap()).unwrap(),
        &RefPatterns::default(),
    )
    .unwrap();
    assert_eq!(listed.head.as_deref(), Some("refs/heads/main"));

    // A non-bare target with `main` checked out (unborn, as after `git init`).
    let work = harness::tempdir();
    git(work.path(), ["init", "--quiet", "--initial-branch=main", "nb"]);
    let nb = work.path().join("nb");
    let target = Remote::parse(nb.to_str().unwrap()).unwrap();
    let src = Remote::parse(source.to_str().unwrap()).unwrap();
    let s = git::mirror(&src, &target, cache.path(), &options()).unwrap();
    let rejected: Vec<&str> = s.push.rejected.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(rejected, ["refs/heads/main"], "{:?}", s.push.rejected);
    assert!(
        s.push.rejected[0].reason.contains("checked out"),
        "{:?}",
        s.push.rejected
    );
    let mut expected = mirrored_refs(&source);
    expected.remove("refs/heads/main");
    assert_eq!(mirrored_refs(&nb), expected);
    assert_fsck_clean(&nb);
    assert_eq!(git(&nb, ["status", "--porcelain"]), "", "the work tree is untouched");

    git(&nb, ["config", "receive.denyCurrentBranch", "ignore"]);
    let s = git::mirror(&src, &target, cache.path(), &options()).unwrap();
    assert!(s.push.rejected.is_empty(), "{:?}", s.push.rejected);
    assert_refs_equal(&source, &nb);
    assert_fsck_clean(&nb);
}

/// A reader that closes stdout early (`gitferry mirror --json | head -c 10`) ends the command
/// quietly: no panic, the exit code of the operation itself (0: the mirror ran to the end), and
/// the mirror done. Checked with a pipe already closed before anything is written (every write
/// fails), for each subcommand that prints on stdout, and as a user types it.
#[test]
fn closed_stdout_ends_the_cli_quietly() {
    let case = Case::new(Proto::GitDaemon);
    let config = case.cache.path().join("mirrors.toml");
    std::fs::write(
        &config,
        format!(
            "[repos.app]\nurl = \"{}\"\n[[repos.app.targets]]\nurl = \"{}\"\n",
            case.source.display(),
            case.target.display()
        ),
    )
    .unwrap();
    let store = case.cache.path().join("store");
    let config_arg = config.to_str().unwrap();
    let store_arg = store.to_str().unwrap();
    let src = case.servers.daemon.url("src.git");
    let dst = case.servers.daemon.url("dst.git");
    let cache_dir = case.cache.path().join("c");
    let cache_arg = cache_dir.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["mirror", &src, &dst, "--cache-dir", cache_arg, "--json"],
        vec!["mirror", &src, &dst, "--cache-dir", cache_arg],
        vec!["check-config", config_arg],
        vec!["sync", "app", "--config", config_arg, "--store", store_arg],
        vec!["status", "--config", config_arg, "--store", store_arg, "--json"],
        vec!["status", "--config", config_arg, "--store", store_arg],
    ];
    for args in &commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(harness::gitferry_bin())
            .args(args)
            .stdout(writer)
            .checked_output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe") && stderr.trim().is_empty(),
            "{args:?}: {stderr}"
        );
    }
    assert_refs_equal(&case.source, &case.target);

    // Output lost for another reason (a full disk behind a redirect) is an error, in one line.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = std::process::Command::new(harness::gitferry_bin())
        .args(["check-config", config_arg])
        .stdout(full)
        .checked_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: writing to stdout:") && !stderr.contains("panicked"),
        "{stderr}"
    );

    // As typed in a shell; `head` may or may not have closed the pipe before the write.
    let script = format!(
        "\"$0\" mirror {src} {dst} --cache-dir {cache_arg} --json | head -c 10 >/dev/null; exit ${{PIPESTATUS[0]}}"
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .arg(harness::gitferry_bin())
        .checked_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The engine cases, in one chain of mirrors against one pair of servers: `src` serves the
/// sources over `sp`, `dst` the targets over `tp`; every repository name starts with `label`.
/// Empty source, initial mirror (tag kinds and a gitlink included), no-op, incremental,
/// force-push, prune, dangling `HEAD` on both sides, and a target with unrelated history.
/// After each: the target's refs equal the source's and `git fsck` finds nothing wrong.
fn engine_cases(label: &str, src: &dyn RepoServer, sp: Proto, dst: &dyn RepoServer, tp: Proto) {
    let cache = harness::tempdir();
    let name = |n: &str| format!("{label}-{n}.git");
    let mirror = |from: &str, to: &str| -> MirrorSummary {
        let s = Remote::parse(&src.url(sp, &name(from))).unwrap();
        let t = Remote::parse(&dst.url(tp, &name(to))).unwrap();
        let summary = git::mirror(&s, &t, cache.path(), &options())
            .unwrap_or_else(|e| panic!("{label}: mirroring {from} to {to}: {e}"));
        assert!(summary.push.rejected.is_empty(), "{label}: {:?}", summary.push.rejected);
        assert_refs_equal(&src.path(&name(from)), &dst.path(&name(to)));
        assert_fsck_clean(&dst.path(&name(to)));
        summary
    };

    // An empty source: nothing to push.
    src.create_bare(&name("empty"));
    dst.create_bare(&name("empty-dst"));
    let s = mirror("empty", "empty-dst");
    assert!(s.push.results.is_empty(), "{label}: {:?}", s.push.results);

    let source = src.create_bare(&name("src"));
    dst.create_bare(&name("dst"));
    let mut wt = Worktree::new(&source);
    wt.build_history();
    wt.add_tag_kinds_and_gitlink();
    let n = mirrored_refs(&source).len();
    let s = mirror("src", "dst");
    assert_eq!((s.fetch.refs.created, s.push.refs.created), (n, n), "{label}: initial");

    let s = mirror("src", "dst");
    assert!(s.fetch.up_to_date && s.push.results.is_empty(), "{label}: no-op: {s:?}");

    wt.commit_file("src/new.rs", b"pub fn new() {}\n", "more work");
    wt.git(["tag", "-a", "v2.0", "-m", "release 2.0"]);
    wt.git(["branch", "topic/next"]);
    wt.push_all();
    let s = mirror("src", "dst");
    assert_eq!(
        (s.push.refs.created, s.push.refs.updated),
        (2, 1),
        "{label}: incremental"
    );

    wt.git(["reset", "--quiet", "--hard", "HEAD~2"]);
    wt.commit_file("rewritten.txt", b"history was rewritten\n", "rewrite");
    wt.push_all();
    let s = mirror("src", "dst");
    assert_eq!(s.push.refs.forced, 1, "{label}: force-push: {:?}", s.push.results);

    git(&source, ["branch", "-D", "feature"]);
    git(&source, ["tag", "-d", "v1.0"]);
    let s = mirror("src", "dst");
    assert_eq!(s.push.refs.deleted, 2, "{label}: prune: {:?}", s.push.results);

    // HEAD naming a branch that does not exist, on both sides.
    git(&source, ["symbolic-ref", "HEAD", "refs/heads/gone"]);
    git(&dst.path(&name("dst")), ["symbolic-ref", "HEAD", "refs/heads/gone-too"]);
    wt.commit_file("after.txt", b"after\n", "with a dangling HEAD");
    wt.push_all();
    let s = mirror("src", "dst");
    assert_eq!(s.push.refs.updated, 1, "{label}: dangling HEAD: {:?}", s.push.results);

    // A target with history unrelated to the source's: overwritten, its own refs pruned.
    let unrelated = dst.create_bare(&name("unrelated"));
    let mut other = Worktree::new(&unrelated);
    other.commit_file("other.txt", b"another project\n", "unrelated");
    other.git(["tag", "stray"]);
    other.push_all();
    let s = mirror("src", "unrelated");
    assert_eq!(
        (s.push.refs.forced, s.push.refs.deleted),
        (1, 1),
        "{label}: unrelated: {:?}",
        s.push.results
    );
}

/// [`engine_cases`] with `server` as the source (into git's servers) and as the target (from
/// them), over git:// and smart HTTP.
fn engine_cases_both_ways(label: &str, server: &dyn RepoServer) {
    let servers = Servers::start();
    for (proto, p) in [(Proto::GitDaemon, "git"), (Proto::Http, "http")] {
        engine_cases(&format!("{label}-{p}-as-source"), server, proto, &servers, proto);
        engine_cases(&format!("{label}-{p}-as-target"), &servers, proto, server, proto);
    }
}

/// JGit (Gerrit's engine): `jgit daemon` and its smart HTTP servlet.
#[test]
fn jgit_as_source_and_target() {
    engine_cases_both_ways("jgit", &harness::jgit::JGit::start());
}

/// dulwich: its git:// server and `web-daemon`'s smart HTTP.
#[test]
fn dulwich_as_source_and_target() {
    engine_cases_both_ways("dulwich", &harness::dulwich::Dulwich::start());
}
