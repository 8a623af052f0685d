//! The probing poller against real git servers: it lists the due repos' refs itself and
//! enqueues only what changed (plus re-checks and unlistable sources), which is what makes idle
//! repositories nearly free on AWS (docs/cost.md).

use std::sync::Arc;
use std::time::Duration;

use gitferry_core::config::Config;
use gitferry_core::poll::{ProbeOptions, probe_tick};
use gitferry_core::queue::Queue;
use gitferry_core::queue::memory::MemoryQueue;
use gitferry_core::store::ObjectStore;
use gitferry_core::store::fault::FaultStore;
use gitferry_core::store::fs::FsStore;
use harness::{Proto, Servers, Worktree, git};

async fn drain(q: &MemoryQueue) -> Vec<String> {
    let mut groups = Vec::new();
    loop {
        let got = q.receive(10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        if got.is_empty() {
            groups.sort();
            return groups;
        }
        for m in got {
            q.ack(&m.receipt).await.unwrap();
            groups.push(m.group);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changed_repos_are_enqueued() {
    let servers = Servers::start();
    for name in ["a", "b"] {
        let src = servers.create_bare(&format!("{name}.git"));
        Worktree::new(&src).build_history();
    }
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "poll_interval_secs = 60\n\
         [repos.a]\nurl = \"{}\"\n[[repos.a.targets]]\nurl = \"/tmp/nowhere/a\"\n\
         [repos.b]\nurl = \"{}\"\n[[repos.b.targets]]\nurl = \"/tmp/nowhere/b\"\n\
         [repos.down]\nurl = \"git://127.0.0.1:{dead}/down.git\"\n[[repos.down.targets]]\nurl = \"/tmp/nowhere/c\"\n\
         [repos.hooked]\nurl = \"{}\"\nsync_policy = \"webhook_only\"\n[[repos.hooked.targets]]\nurl = \"/tmp/nowhere/d\"\n",
        servers.url(Proto::GitDaemon, "a.git"),
        servers.url(Proto::Http, "b.git"),
        servers.url(Proto::GitDaemon, "a.git"),
    );
    let config = Config::parse(&text, std::path::Path::new("t.toml"), &|_| None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultStore::new(Arc::new(FsStore::new(dir.path().to_owned()))));
    let queue = MemoryQueue::new(5);
    let options = ProbeOptions {
        concurrency: 4,
        recheck: Duration::from_secs(3600),
    };
    let t0 = 1_800_000_000u64;
    let tick = |now: u64| probe_tick(&config, "digest-1", &queue, store.as_ref(), now, options);

    // First tick: the new configuration is reconciled; every pollable repo is probed and
    // (never seen before) enqueued.
    let first = tick(t0).await.unwrap();
    assert_eq!((first.reconciled, first.probed, first.polled), (4, 3, 3), "{first:?}");
    assert_eq!(drain(&queue).await, vec!["a", "a", "b", "b", "down", "down", "hooked"]);

    // A minute later nothing changed: only the unlistable source is enqueued (so its sync
    // records the failure); no store write for an unchanged state.
    store.reset_counts();
    let idle = tick(t0 + 60).await.unwrap();
    assert_eq!((idle.probed, idle.polled), (3, 1), "{idle:?}");
    assert_eq!(drain(&queue).await, vec!["down"]);
    assert_eq!(store.calls().writes(), 0, "{:?}", store.calls());

    // The source of b changes: b alone is enqueued.
    let b = servers.path("b.git");
    let main = git(&b, ["rev-parse", "refs/heads/main"]);
    git(&b, ["update-ref", "refs/heads/new-branch", &main]);
    let changed = tick(t0 + 120).await.unwrap();
    assert_eq!(changed.polled, 2, "{changed:?}");
    assert_eq!(drain(&queue).await, vec!["b", "down"]);
    // ...and not again.
    assert_eq!(tick(t0 + 180).await.unwrap().polled, 1);
    drain(&queue).await;

    // After the re-check period every repo is enqueued once even if unchanged.
    let recheck = tick(t0 + 180 + 3600).await.unwrap();
    assert_eq!(recheck.polled, 3, "{recheck:?}");
    assert_eq!(drain(&queue).await, vec!["a", "b", "down"]);
    let state: serde_json::Value =
        serde_json::from_slice(&store.get(gitferry_core::poll::PROBE_KEY).await.unwrap().unwrap().body).unwrap();
    assert!(state["repos"]["a"]["digest"].is_string() && state["repos"].get("down").is_none(), "{state}");
}
