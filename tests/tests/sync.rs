//! SyncManager end to end: real git servers (git daemon + http-backend), the local-directory
//! store, a loopback notification receiver. Every scenario asserts real outcomes: target refs,
//! `git fsck`, status values, store writes, notifications received.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitferry_core::config::Config;
use gitferry_core::metrics::{Metrics, Recorder};
use gitferry_core::notify::Notifier;
use gitferry_core::request::SyncRequest;
use gitferry_core::status::State;
use gitferry_core::store::ObjectStore;
use gitferry_core::store::fault::FaultStore;
use gitferry_core::store::fs::FsStore;
use gitferry_core::sync::{RepoOutcome, SyncManager, SyncOptions, Verdict};
use harness::receiver::Receiver;
use harness::{Proto, Servers, TempDir, Worktree, assert_fsck_clean, assert_refs_equal, git, mirrored_refs, refs};

struct World {
    servers: Servers,
    source: PathBuf,
    wt: Worktree,
    store: Arc<FaultStore>,
    _store_dir: TempDir,
    work: TempDir,
    receiver: Receiver,
    recorder: Arc<Recorder>,
}

impl World {
    fn new() -> World {
        let servers = Servers::start();
        let source = servers.create_bare("src.git");
        let mut wt = Worktree::new(&source);
        wt.build_history();
        let store_dir = harness::tempdir();
        let store = Arc::new(FaultStore::new(Arc::new(FsStore::new(store_dir.path().to_owned()))));
        World {
            servers,
            source,
            wt,
            store,
            _store_dir: store_dir,
            work: harness::tempdir(),
            receiver: Receiver::start(),
            recorder: Arc::new(Recorder::default()),
        }
    }

    /// A manager for `toml` (secrets: NOTIFY_URL → the receiver, HOOK_SECRET).
    fn manager(&self, toml: &str) -> SyncManager {
        let receiver = self.receiver.url();
        let env = move |name: &str| match name {
            "NOTIFY_URL" => Some(receiver.clone()),
            "HOOK_SECRET" => Some("s3cret".to_owned()),
            _ => None,
        };
        let config = Config::parse(toml, std::path::Path::new("test.toml"), &env).unwrap_or_else(|e| panic!("{e}"));
        let notifier = Notifier::new(&config.notify);
        SyncManager::new(
            Arc::new(config),
            self.store.clone(),
            notifier,
            Metrics::new(self.recorder.clone()),
            SyncOptions {
                work_dir: self.work.path().to_owned(),
                owner: "test-worker".into(),
                lease_ttl: Duration::from_secs(30),
                deadline_margin: Duration::from_secs(2),
                max_local_bytes: 1 << 30,
                orphan_age: Duration::ZERO,
            },
        )
    }

    fn url(&self, proto: Proto, name: &str) -> String {
        self.servers.url(proto, name)
    }

    /// One repo `app` from src.git to the given targets (already created on the server).
    fn toml(&self, proto: Proto, targets: &[(&str, &str)], extra: &str) -> String {
        let mut t = format!(
            "[notify]\ngeneric_webhook_url_env = \"NOTIFY_URL\"\n\n[repos.app]\nurl = \"{}\"\n{extra}\n",
            self.url(proto, "src.git")
        );
        for (name, opts) in targets {
            t.push_str(&format!(
                "[[repos.app.targets]]\nurl = \"{}\"\n{opts}\n",
                self.url(proto, name)
            ));
        }
        t
    }

    fn target(&self, name: &str) -> PathBuf {
        self.servers.create_bare(name)
    }

    async fn run(&self, m: &SyncManager, requests: &[SyncRequest]) -> gitferry_core::sync::BatchOutcome {
        m.handle_batch(requests, Instant::now() + Duration::from_secs(120))
            .await
    }
}

fn poll(slot: u64) -> SyncRequest {
    SyncRequest::poll("app", slot)
}

fn webhook(id: &str) -> SyncRequest {
    SyncRequest::webhook("app", gitferry_core::config::Provider::Github, id, None, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_mirrors_then_a_noop_writes_nothing() {
    for proto in Proto::ALL {
        let w = World::new();
        let dst = w.target("dst.git");
        let m = w.manager(&w.toml(proto, &[("dst.git", "")], ""));
        let out = w.run(&m, &[webhook("d-1")]).await;
        assert_eq!(out.verdicts, vec![Verdict::Done]);
        let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
            panic!("{:?}", out.repos)
        };
        assert_eq!(status.state, State::Success, "{status:?}");
        assert_eq!(status.last_delivery_id.as_deref(), Some("d-1"));
        assert_eq!(status.targets["127.0.0.1"].state, State::Success);
        assert_refs_equal(&w.source, &dst);
        assert_fsck_clean(&dst);
        let stored = m.status_book().get("app").await.unwrap().unwrap();
        assert_eq!(stored.state, State::Success, "status is persisted");
        assert!(stored.lease.as_ref().is_some_and(|l| l.owner == "test-worker"));

        // Nothing changed: no fetch, no push, no store write.
        w.store.reset_counts();
        let out = w.run(&m, &[poll(1)]).await;
        assert_eq!(out.repos[0].outcome, RepoOutcome::NoOp, "{proto:?}");
        assert_eq!(
            w.store.calls().writes(),
            0,
            "{proto:?}: a no-op writes nothing: {:?}",
            w.store.calls()
        );
        assert_eq!(w.recorder.total("Syncs", &[("Outcome", "noop")]), 1.0);
    }
}

/// The sync service sends the pack the source sent on as it is when the target's refs are the
/// cache's before the fetch (the usual incremental): no counting, no re-packing. Not when the
/// target lags (a second target added later): then a pack is counted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetched_pack_is_forwarded_to_targets_in_step() {
    for proto in Proto::ALL {
        let mut w = World::new();
        let dst = w.target("dst.git");
        let m = w.manager(&w.toml(proto, &[("dst.git", "")], ""));
        // How each push to `name` made its pack, from the log line the sync writes per push.
        let servers = &w.servers;
        let packs = |name: &str| {
            let url = servers.url(proto, name);
            harness::leaks::logged(|l| l.contains("pushed") && l.contains(&format!("target={url} ")))
                .iter()
                .filter_map(|l| l.split("pack=").nth(1)?.split(' ').next().map(str::to_owned))
                .collect::<Vec<_>>()
        };
        for round in 0..3 {
            let out = w.run(&m, &[poll(round)]).await;
            assert_eq!(out.verdicts, vec![Verdict::Done], "{proto:?}");
            assert_refs_equal(&w.source, &dst);
            assert_fsck_clean(&dst);
            w.wt.commit_file(&format!("round{round}.txt"), b"more\n", "more");
            w.wt.push_all();
        }
        // The first sync goes in batches (counted); the incrementals are forwarded.
        assert_eq!(
            packs("dst.git").last().map(String::as_str),
            Some("Forwarded"),
            "{proto:?}"
        );
        assert_eq!(
            packs("dst.git").iter().filter(|p| *p == "Forwarded").count(),
            2,
            "{proto:?}"
        );
        let late = w.target("late.git");
        let m = w.manager(&w.toml(proto, &[("dst.git", ""), ("late.git", "")], ""));
        let out = w.run(&m, &[poll(9)]).await;
        assert_eq!(out.verdicts, vec![Verdict::Done], "{proto:?}");
        assert_refs_equal(&w.source, &dst);
        assert_refs_equal(&w.source, &late);
        assert_fsck_clean(&late);
        assert_eq!(
            packs("dst.git").last().map(String::as_str),
            Some("Forwarded"),
            "{proto:?}"
        );
        assert_eq!(packs("late.git"), ["Counted"], "{proto:?}: late lacks the history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_requests_for_one_repo_make_one_sync() {
    let w = World::new();
    let dst = w.target("dst.git");
    let m = w.manager(&w.toml(Proto::GitDaemon, &[("dst.git", "")], ""));
    let requests: Vec<_> = (0..10)
        .map(|i| if i % 2 == 0 { poll(i) } else { webhook(&format!("d{i}")) })
        .collect();
    let out = w.run(&m, &requests).await;
    assert_eq!(out.repos.len(), 1);
    assert_eq!(out.repos[0].triggers.len(), 10);
    assert!(out.verdicts.iter().all(|v| *v == Verdict::Done));
    assert_refs_equal(&w.source, &dst);
    let manifest = w.store.get("repos/app/manifest.json").await.unwrap().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    assert_eq!(
        manifest["source"]["refs"].as_object().unwrap().len(),
        mirrored_refs(&w.source).len(),
        "the whole source is recorded: {manifest}"
    );
    assert!(
        manifest.get("batch_refs").is_none(),
        "the first mirror finished: {manifest}"
    );
    assert_eq!(
        w.recorder.total("Syncs", &[("Outcome", "success")]),
        10.0,
        "every trigger is counted"
    );
    assert_eq!(
        w.receiver.wait_for(1, Duration::from_secs(5)).len(),
        1,
        "one change notification"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_filters_triggers() {
    let w = World::new();
    w.target("dst.git");
    let m = w.manager(&w.toml(Proto::GitDaemon, &[("dst.git", "")], "sync_policy = \"webhook_only\""));
    let out = w.run(&m, &[poll(1)]).await;
    assert!(
        matches!(out.repos[0].outcome, RepoOutcome::Skipped(_)),
        "{:?}",
        out.repos
    );
    assert_eq!(out.verdicts, vec![Verdict::Done], "skipped requests are acknowledged");
    assert_eq!(w.store.calls().writes(), 0);
    assert_eq!(
        w.recorder
            .total("Syncs", &[("Outcome", "skipped"), ("Trigger", "poll")]),
        1.0
    );
    // Manual triggers always pass; unknown repos are dropped.
    let out = w
        .run(&m, &[SyncRequest::manual("app", "op"), SyncRequest::poll("nope", 1)])
        .await;
    assert!(matches!(out.repos[0].outcome, RepoOutcome::Synced(_)));
    assert!(matches!(out.repos[1].outcome, RepoOutcome::Skipped(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_target_does_not_stop_the_other() {
    for proto in Proto::ALL {
        let w = World::new();
        let good = w.target("good.git");
        // "missing.git" is never created: the push fails with not-found (permanent).
        let m = w.manager(&w.toml(
            proto,
            &[("good.git", "name = \"good\""), ("missing.git", "name = \"broken\"")],
            "",
        ));
        let out = w.run(&m, &[poll(1)]).await;
        let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
            panic!("{:?}", out.repos)
        };
        assert_refs_equal(&w.source, &good);
        assert_eq!(status.targets["good"].state, State::Success, "{proto:?}");
        assert_eq!(status.targets["broken"].state, State::Failed, "{proto:?}");
        assert!(
            status.targets["broken"]
                .last_error
                .as_deref()
                .unwrap()
                .contains("not found"),
            "{status:?}"
        );
        assert_eq!(status.state, State::Failed, "the repo shows the failure");
        assert_eq!(
            out.verdicts,
            vec![Verdict::Done],
            "{proto:?}: permanent: recorded, not retried"
        );
        let failed = w.receiver.wait_for(2, Duration::from_secs(5));
        assert_eq!(w.receiver.events("failed").len(), 1, "{failed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_force_push_keeps_the_overwritten_tip() {
    let mut w = World::new();
    let dst = w.target("dst.git");
    let m = w.manager(&w.toml(Proto::Http, &[("dst.git", "")], ""));
    w.run(&m, &[poll(1)]).await;
    let old_main = git(&w.source, ["rev-parse", "refs/heads/main"]);
    w.wt.git(["reset", "--quiet", "--hard", "HEAD~1"]);
    w.wt.commit_file("rewrite.txt", b"rewritten\n", "rewrite history");
    w.wt.push_all();
    w.receiver.clear();
    let out = w.run(&m, &[webhook("force-1")]).await;
    let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
        panic!("{:?}", out.repos)
    };
    assert_refs_equal(&w.source, &dst);
    assert_eq!(status.overwritten.len(), 1, "{status:?}");
    let backup = &status.overwritten[0];
    assert_eq!(backup.git_ref, "refs/heads/main");
    assert_eq!(backup.id, old_main);
    // The old tip is still in the cache, under our own namespace, and was not pushed.
    let cache = w.work.path().join("app.git");
    assert_eq!(refs(&cache).get(&backup.backup_ref), Some(&old_main));
    assert!(!refs(&dst).keys().any(|r| r.starts_with("refs/gitferry/")));
    let changed = w.receiver.wait_for(1, Duration::from_secs(5));
    let text = changed[0]["text"].as_str().unwrap();
    assert!(
        text.contains("force-pushed") && text.contains("overwritten tip of refs/heads/main"),
        "{text}"
    );
    // It survives a cold restore (it is in the manifest).
    std::fs::remove_dir_all(&cache).unwrap();
    w.wt.commit_file("more.txt", b"more\n", "more");
    w.wt.push_all();
    w.run(&m, &[poll(2)]).await;
    assert_eq!(
        refs(&cache).get(&backup.backup_ref),
        Some(&old_main),
        "backup restored from the store"
    );
    assert_fsck_clean(&cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergence_keep_and_force() {
    let mut w = World::new();
    let keep = w.target("keep.git");
    let force = w.target("force.git");
    let m = w.manager(&w.toml(
        Proto::GitDaemon,
        &[
            ("keep.git", "name = \"keep\"\ndivergence = \"keep\""),
            ("force.git", "name = \"force\""),
        ],
        "",
    ));
    w.run(&m, &[poll(1)]).await;
    // Someone commits directly on both targets' feature branch.
    for target in [&keep, &force] {
        let tree = git(target, ["rev-parse", "refs/heads/feature^{tree}"]);
        let parent = git(target, ["rev-parse", "refs/heads/feature"]);
        let out = harness::git_cmd(target)
            .args(["commit-tree", &tree, "-p", &parent, "-m", "direct change on the mirror"])
            .output()
            .unwrap();
        let commit = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        git(target, ["update-ref", "refs/heads/feature", &commit]);
    }
    let direct = git(&keep, ["rev-parse", "refs/heads/feature"]);
    // And the source moves feature in a non-fast-forward way plus main forward.
    let src_feature_parent = git(&w.source, ["rev-parse", "refs/heads/feature~1"]);
    git(&w.source, ["update-ref", "refs/heads/feature", &src_feature_parent]);
    let out = w.run(&m, &[poll(2)]).await;
    let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
        panic!("{:?}", out.repos)
    };
    // keep: feature left as someone else set it, reported; force: overwritten.
    assert_eq!(git(&keep, ["rev-parse", "refs/heads/feature"]), direct);
    assert_eq!(status.targets["keep"].diverged.len(), 1, "{status:?}");
    assert_eq!(status.targets["keep"].diverged[0].name, "refs/heads/feature");
    assert_refs_equal(&w.source, &force);
    // Everything else on keep is mirrored.
    let (s, k) = (mirrored_refs(&w.source), mirrored_refs(&keep));
    for (name, id) in &s {
        if name != "refs/heads/feature" {
            assert_eq!(k.get(name), Some(id), "{name}");
        }
    }

    // The next sync (the source moved again) still keeps it: a withheld ref is not "known" just
    // because we saw it once.
    w.wt.commit_file("more.txt", b"more\n", "more");
    w.wt.push_all();
    let out = w.run(&m, &[poll(3)]).await;
    let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
        panic!("{:?}", out.repos)
    };
    assert_eq!(git(&keep, ["rev-parse", "refs/heads/feature"]), direct, "still kept");
    assert_eq!(status.targets["keep"].diverged.len(), 1, "still reported: {status:?}");
    assert_eq!(
        git(&keep, ["rev-parse", "refs/heads/main"]),
        git(&w.source, ["rev-parse", "refs/heads/main"])
    );

    // Once someone puts it back where we left it, it is mirrored again, force-updates included.
    // (`push_all` above restored the source's feature to what we last pushed; move it back
    // again, non-fast-forward.)
    let ours = git(&keep, ["rev-parse", "refs/heads/feature~1"]);
    assert_eq!(ours, git(&w.source, ["rev-parse", "refs/heads/feature"]));
    git(&keep, ["update-ref", "refs/heads/feature", &ours]);
    let back = git(&w.source, ["rev-parse", "refs/heads/feature~1"]);
    git(&w.source, ["update-ref", "refs/heads/feature", &back]);
    let out = w.run(&m, &[poll(4)]).await;
    let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
        panic!("{:?}", out.repos)
    };
    assert!(status.targets["keep"].diverged.is_empty(), "{status:?}");
    assert_refs_equal(&w.source, &keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_deletion_guard_trips_and_alerts() {
    let w = World::new();
    let dst = w.target("dst.git");
    let m = w.manager(&w.toml(Proto::GitDaemon, &[("dst.git", "")], "max_delete_fraction = 0.3"));
    w.run(&m, &[poll(1)]).await;
    let before = mirrored_refs(&dst);
    // Someone deletes most refs at the source (keeps main).
    for (name, _) in mirrored_refs(&w.source) {
        if name != "refs/heads/main" {
            git(&w.source, ["update-ref", "-d", &name]);
        }
    }
    w.receiver.clear();
    let out = w.run(&m, &[poll(2)]).await;
    let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
        panic!("{:?}", out.repos)
    };
    assert!(
        status.guard.as_deref().unwrap().contains("max_delete_fraction"),
        "{status:?}"
    );
    assert_eq!(mirrored_refs(&dst), before, "nothing deleted on the target");
    let events = w.receiver.wait_for(1, Duration::from_secs(5));
    assert_eq!(w.receiver.events("guard_tripped").len(), 1, "{events:?}");
    // Not alerting again while it stays the same.
    w.receiver.clear();
    w.run(&m, &[poll(3)]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(w.receiver.events("guard_tripped").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_streak_notifies_once_and_recovery_once() {
    let w = World::new();
    let dst = w.target("dst.git");
    let m = w.manager(&w.toml(Proto::Http, &[("dst.git", "")], ""));
    w.run(&m, &[poll(1)]).await;
    // The source disappears (e.g. renamed on the host).
    let hidden = w.servers.path("src-hidden.git");
    std::fs::rename(&w.source, &hidden).unwrap();
    w.receiver.clear();
    for slot in 2..5 {
        let out = w.run(&m, &[poll(slot)]).await;
        assert!(
            matches!(out.repos[0].outcome, RepoOutcome::Failed { transient: false, .. }),
            "{:?}",
            out.repos
        );
    }
    let status = m.status_book().get("app").await.unwrap().unwrap();
    assert_eq!((status.state, status.consecutive_failures), (State::Failed, 3));
    assert!(
        status.last_error.as_deref().unwrap().contains("not found"),
        "{status:?}"
    );
    assert_eq!(w.receiver.wait_for(1, Duration::from_secs(5)).len(), 1);
    assert_eq!(w.receiver.events("failed").len(), 1, "notified once per streak");
    // Back, with a new commit: recovery is notified once.
    std::fs::rename(&hidden, &w.source).unwrap();
    git(&w.source, ["tag", "after-outage", "refs/heads/main"]);
    w.receiver.clear();
    w.run(&m, &[poll(5)]).await;
    w.receiver.wait_for(2, Duration::from_secs(5));
    assert_eq!(w.receiver.events("recovered").len(), 1, "{:?}", w.receiver.bodies());
    assert_eq!(w.receiver.events("changed").len(), 1);
    assert_refs_equal(&w.source, &dst);
    let status = m.status_book().get("app").await.unwrap().unwrap();
    assert_eq!((status.state, status.consecutive_failures), (State::Success, 0));
}

/// Streaks are counted per target too: a second target that starts failing while the first is
/// still failing is notified (the repository's streak alone would stay silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_target_starting_to_fail_is_notified_too() {
    let w = World::new();
    let (one, two) = (w.target("one.git"), w.target("two.git"));
    let m = w.manager(&w.toml(
        Proto::GitDaemon,
        &[("one.git", "name = \"one\""), ("two.git", "name = \"two\"")],
        "",
    ));
    w.run(&m, &[poll(1)]).await;
    let moved = |p: &PathBuf| p.with_extension("gone");
    let change = |tag: &str| git(&w.source, ["tag", tag, "refs/heads/main"]);
    w.receiver.clear();
    std::fs::rename(&one, moved(&one)).unwrap();
    change("t1");
    w.run(&m, &[poll(2)]).await;
    change("t2");
    w.run(&m, &[poll(3)]).await;
    assert_eq!(
        w.receiver.wait_for(3, Duration::from_secs(5)).len(),
        3,
        "{:?}",
        w.receiver.bodies()
    );
    assert_eq!(
        w.receiver.events("failed").len(),
        1,
        "one streak so far: {:?}",
        w.receiver.bodies()
    );
    std::fs::rename(&two, moved(&two)).unwrap();
    change("t3");
    w.run(&m, &[poll(4)]).await;
    change("t4");
    w.run(&m, &[poll(5)]).await;
    w.receiver.wait_for(5, Duration::from_secs(5));
    let failed = w.receiver.events("failed");
    assert_eq!(
        failed.len(),
        2,
        "the second target's streak is notified once: {failed:?}"
    );
    assert!(
        failed[1]["error"].as_str().unwrap().starts_with("target two:"),
        "{failed:?}"
    );
    let status = m.status_book().get("app").await.unwrap().unwrap();
    assert_eq!(
        (
            status.targets["one"].consecutive_failures,
            status.targets["two"].consecutive_failures
        ),
        (4, 2)
    );
    // Both back: one recovery.
    std::fs::rename(moved(&one), &one).unwrap();
    std::fs::rename(moved(&two), &two).unwrap();
    w.receiver.clear();
    change("t5");
    w.run(&m, &[poll(6)]).await;
    w.receiver.wait_for(2, Duration::from_secs(5));
    assert_eq!(w.receiver.events("recovered").len(), 1, "{:?}", w.receiver.bodies());
    assert_eq!(w.receiver.events("failed").len(), 0);
    assert_refs_equal(&w.source, &one);
    assert_refs_equal(&w.source, &two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_reached_records_a_terminal_status_and_retries() {
    let w = World::new();
    w.target("dst.git");
    let m = w.manager(&w.toml(Proto::GitDaemon, &[("dst.git", "")], ""));
    // Less time than the margin: nothing may start.
    let out = m
        .handle_batch(&[poll(1)], Instant::now() + Duration::from_millis(500))
        .await;
    assert!(
        matches!(&out.verdicts[0], Verdict::Retry(r) if r.contains("deadline")),
        "{:?}",
        out.verdicts
    );
    assert!(
        m.status_book().get("app").await.unwrap().is_none(),
        "nothing started, nothing written"
    );
    // Just enough to start (1 ms over the 2 s margin), so the margin is hit once the source
    // has been asked: Syncing → terminal Interrupted with the reason, not a failure; nothing was
    // saved, so the request is retried (not continued).
    let out = m
        .handle_batch(&[poll(2)], Instant::now() + Duration::from_millis(2_001))
        .await;
    let status = m.status_book().get("app").await.unwrap().expect("status recorded");
    assert_eq!(status.state, State::Interrupted, "never left in Syncing: {status:?}");
    assert_eq!(status.consecutive_failures, 0, "an interruption is not a failure");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("interrupted — retrying (stopped before"),
        "{status:?}"
    );
    assert!(matches!(&out.verdicts[0], Verdict::Retry(_)), "{:?}", out.verdicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_failures_never_fail_a_sync() {
    let w = World::new();
    let dst = w.target("dst.git");
    w.receiver.respond_with(500);
    let m = w.manager(&w.toml(Proto::GitDaemon, &[("dst.git", "")], ""));
    let out = w.run(&m, &[poll(1)]).await;
    assert!(matches!(&out.repos[0].outcome, RepoOutcome::Synced(s) if s.state == State::Success));
    assert_refs_equal(&w.source, &dst);
    assert_eq!(w.recorder.total("NotificationsFailed", &[]), 1.0);
}

/// The fault-injecting store on every call of a whole sync (issue 7): for every n, the n-th
/// store call of a sync that has something to do fails — and separately succeeds with its reply
/// lost. Each attempt ends with a terminal status (never `Syncing`), a valid target, and the
/// next attempt converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fault_at_every_call_of_a_sync_never_loses_state() {
    use gitferry_core::store::fault::{Fault, Rule};
    let mut w = World::new();
    let dst = w.target("dst.git");
    let m = w.manager(&w.toml(Proto::GitDaemon, &[("dst.git", "")], ""));
    w.run(&m, &[poll(0)]).await;
    // How many store calls does one changing sync make?
    w.wt.commit_file("count.txt", b"count\n", "count");
    w.wt.push_all();
    w.store.reset_counts();
    w.run(&m, &[poll(1)]).await;
    let calls = w.store.calls().total();
    assert!(calls >= 6, "{:?}", w.store.calls());
    for fault in [Fault::Error, Fault::ReplyLost] {
        for n in 1..=calls {
            w.wt.commit_file("round.txt", format!("{fault:?} {n}\n").as_bytes(), "a change");
            w.wt.push_all();
            w.store.inject(Rule::new(None, fault).nth(n));
            let out = w.run(&m, &[poll(100 + n)]).await;
            w.store.clear_faults();
            if let Some(status) = m.status_book().get("app").await.unwrap() {
                assert_ne!(
                    status.state,
                    State::Syncing,
                    "{fault:?} at call {n}: left Syncing ({out:?})"
                );
            }
            assert_fsck_clean(&dst);
            // The retry converges (a lease left by a lost release expires or is ours).
            let mut converged = false;
            for attempt in 0..3 {
                let out = w
                    .run(&m, &[SyncRequest::manual("app", &format!("retry-{n}-{attempt}"))])
                    .await;
                if mirrored_refs(&dst) == mirrored_refs(&w.source) && out.verdicts == vec![Verdict::Done] {
                    converged = true;
                    break;
                }
            }
            assert!(converged, "{fault:?} at call {n}: did not converge");
            assert_fsck_clean(&dst);
        }
    }
}

/// A connection cut in the middle of the fetch (clean close) or of the push (TCP reset): the
/// sync records `Failed` with a transient error and asks for a retry, the target holds old or new
/// refs only (fsck clean), a failed fetch leaves the cache manifest as it was, and the retry
/// converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_record_a_transient_failure_and_the_retry_converges() {
    use gitferry_core::git::ErrorClass;
    use harness::proxy::{FaultProxy, Plan};
    let w = World::new();
    let proxy = FaultProxy::start(w.servers.daemon.port);
    let direct = |name: &str| w.url(Proto::GitDaemon, name);
    let cases = [
        (
            "mid-fetch",
            Plan {
                cut_downstream_after: Some(50_000),
                ..Plan::default()
            },
            proxy.url("src.git"),
            "dst1.git",
            direct("dst1.git"),
        ),
        (
            "mid-push",
            Plan {
                cut_upstream_after: Some(50_000),
                reset: true,
                ..Plan::default()
            },
            direct("src.git"),
            "dst2.git",
            proxy.url("dst2.git"),
        ),
    ];
    for (case, plan, source_url, target_name, target_url) in cases {
        let target = w.target(target_name);
        let toml = format!("[repos.app]\nurl = \"{source_url}\"\n[[repos.app.targets]]\nurl = \"{target_url}\"\n");
        let m = w.manager(&toml);
        let manifest_before = w.store.get("repos/app/manifest.json").await.unwrap().map(|o| o.etag);
        proxy.set(plan);
        let out = w.run(&m, &[webhook(&format!("{case}-1"))]).await;
        assert!(
            matches!(out.verdicts[..], [Verdict::Retry(_)]),
            "{case}: {:?} {:#?}",
            out.verdicts,
            out.repos
        );
        let status = m.status_book().get("app").await.unwrap().unwrap();
        assert_eq!(status.state, State::Failed, "{case}: {status:?}");
        assert_eq!(status.error_class, Some(ErrorClass::Transient), "{case}: {status:?}");
        assert!(status.consecutive_failures >= 1, "{case}");
        let wanted = mirrored_refs(&w.source);
        for (name, id) in mirrored_refs(&target) {
            assert_eq!(wanted.get(&name), Some(&id), "{case}: {name} is old (absent) or new");
        }
        assert_fsck_clean(&target);
        if case == "mid-fetch" {
            let manifest_after = w.store.get("repos/app/manifest.json").await.unwrap().map(|o| o.etag);
            assert_eq!(manifest_after, manifest_before, "a failed fetch commits nothing");
        }

        proxy.clear();
        let out = w.run(&m, &[webhook(&format!("{case}-2"))]).await;
        assert_eq!(out.verdicts, vec![Verdict::Done], "{case}");
        let status = m.status_book().get("app").await.unwrap().unwrap();
        assert_eq!(status.state, State::Success, "{case}: {status:?}");
        assert_eq!(status.consecutive_failures, 0, "{case}");
        assert_refs_equal(&w.source, &target);
        assert_fsck_clean(&target);
    }
}

/// A target re-pointed at another repository keeps its name (names default to the host), but
/// not its recorded state: the first sync after the change pushes everything to the new
/// repository even though the source did not move — through the latest-commit check (a poll)
/// and the static-commit check (a webhook naming a commit the manifest already has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_re_pointed_under_the_same_name_is_pushed_to() {
    let w = World::new();
    let main = git(&w.source, ["rev-parse", "refs/heads/main"]);
    for (i, name) in ["dst-a.git", "dst-b.git", "dst-c.git"].into_iter().enumerate() {
        let dst = w.target(name);
        let m = w.manager(&w.toml(Proto::GitDaemon, &[(name, "")], ""));
        let request = if i == 2 {
            SyncRequest::webhook(
                "app",
                gitferry_core::config::Provider::Github,
                "d-static",
                Some(main.clone()),
                Some("refs/heads/main".into()),
            )
        } else {
            poll(i as u64)
        };
        let out = w.run(&m, &[request]).await;
        let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
            panic!("{name}: {:?}", out.repos)
        };
        assert_eq!(status.state, State::Success, "{name}");
        assert!(status.targets.contains_key("127.0.0.1"), "same target name each time");
        assert_refs_equal(&w.source, &dst);
    }
}

/// Orphaned pack objects (what a lost race or a failed delete leaves) are collected by a
/// regular sync every `GC_EVERY` generations; nothing the manifest names is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_pack_objects_are_collected_by_regular_syncs() {
    use gitferry_core::store::Condition;
    let mut w = World::new();
    let dst = w.target("dst.git");
    let m = w.manager(&w.toml(Proto::GitDaemon, &[("dst.git", "")], ""));
    let orphan = format!("repos/app/packs/{}.pack", "0".repeat(40));
    w.store
        .put(&orphan, b"left behind by a lost race".to_vec(), Condition::Always)
        .await
        .unwrap();
    let exists = |store: Arc<FaultStore>, key: String| async move { store.get(&key).await.unwrap().is_some() };
    let every = gitferry_core::cache::GC_EVERY;
    for i in 1.. {
        if i > 1 {
            w.wt.commit_file("f.txt", format!("change {i}\n").as_bytes(), &format!("change {i}"));
            w.wt.push_all();
        }
        let out = w.run(&m, &[poll(i)]).await;
        assert_eq!(out.verdicts, vec![Verdict::Done], "sync {i}");
        let manifest = w.store.get("repos/app/manifest.json").await.unwrap().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
        let generation = manifest["generation"].as_u64().unwrap();
        let still_there = exists(w.store.clone(), orphan.clone()).await;
        // Collected by the sync whose commits reach generation GC_EVERY, not before.
        assert_eq!(
            still_there,
            generation < every,
            "after generation {generation} (sync {i})"
        );
        if generation >= every {
            break;
        }
        assert!(i < 2 * every, "the generation must grow with changing syncs");
    }
    // Every pack the manifest names is still stored, and the target is a mirror.
    let manifest = w.store.get("repos/app/manifest.json").await.unwrap().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    for p in manifest["packs"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        for ext in ["pack", "idx"] {
            assert!(
                exists(w.store.clone(), format!("repos/app/packs/{name}.{ext}")).await,
                "{name}.{ext}"
            );
        }
    }
    assert_refs_equal(&w.source, &dst);
}

/// Manifests written before per-target refs were keyed by URL have them by target name. With
/// `divergence = "keep"`, reading nothing for the target would make every force-update look like
/// someone else's change; the name-keyed entry is read instead, once, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_divergent_reads_a_manifest_keyed_by_target_name() {
    use gitferry_core::store::Condition;
    let w = World::new();
    let keep = w.target("keep.git");
    let m = w.manager(&w.toml(
        Proto::GitDaemon,
        &[("keep.git", "name = \"keep\"\ndivergence = \"keep\"")],
        "",
    ));
    w.run(&m, &[poll(1)]).await;
    // Rewrite the manifest as an older gitferry wrote it: the target under its name.
    let stored = w.store.get("repos/app/manifest.json").await.unwrap().unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&stored.body).unwrap();
    let targets = manifest["targets"].as_object_mut().unwrap();
    let (url_key, refs) = targets.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
    assert!(url_key.ends_with("/keep.git"), "keyed by URL: {url_key}");
    targets.clear();
    targets.insert("keep".into(), refs);
    w.store
        .put(
            "repos/app/manifest.json",
            serde_json::to_vec(&manifest).unwrap(),
            Condition::IfMatch(stored.etag),
        )
        .await
        .unwrap();
    // The source force-moves feature; nobody touched the target.
    let back = git(&w.source, ["rev-parse", "refs/heads/feature~1"]);
    git(&w.source, ["update-ref", "refs/heads/feature", &back]);
    let out = w.run(&m, &[poll(2)]).await;
    let RepoOutcome::Synced(status) = &out.repos[0].outcome else {
        panic!("{:?}", out.repos)
    };
    assert!(
        status.targets["keep"].diverged.is_empty(),
        "no false divergence: {status:?}"
    );
    assert_refs_equal(&w.source, &keep);
    let stored = w.store.get("repos/app/manifest.json").await.unwrap().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&stored.body).unwrap();
    let keys: Vec<&String> = manifest["targets"].as_object().unwrap().keys().collect();
    assert_eq!(keys, [&url_key], "rewritten under the URL");
}
