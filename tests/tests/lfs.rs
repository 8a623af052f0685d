//! Git LFS mirroring (issue 19), end to end on real components: the git-lfs client makes the
//! repositories and reads the mirrors back; giftless serves the objects (tests/src/lfs.rs), on
//! the same loopback front as `git http-backend`.

use harness::lfs::{LfsServers, commit_lfs_file, git_ok, lfs_worktree};

/// The harness itself: the real client pushes an LFS repository (its pre-push hook uploads the
/// object to `{url}/info/lfs`), giftless stores it, and a fresh clone smudges it back.
#[test]
fn the_git_lfs_client_pushes_to_and_clones_from_the_harness() {
    let servers = LfsServers::start();
    servers.create_bare("org/src.git");
    let url = servers.url("org/src.git");
    let mut wt = lfs_worktree(&url);
    let content = harness::pseudo_random_bytes(200_000, 1);
    let oid = commit_lfs_file(&mut wt, "data.bin", &content);
    wt.push_all();
    assert!(servers.has_object("org/src.git", &oid), "giftless stored {oid}");
    let (batches, downloads, uploads) = servers.counts.get();
    assert!(batches >= 1 && uploads == 1 && downloads == 0, "{:?}", servers.counts);

    let dir = harness::tempdir();
    let clone = harness::lfs::lfs_clone(&url, dir.path(), "clone");
    assert_eq!(std::fs::read(clone.join("data.bin")).unwrap(), content);
    let (ok, out) = git_ok(&clone, &["lfs", "fsck"]);
    assert!(ok, "git lfs fsck: {out}");
    assert_eq!(servers.counts.get().1, 1, "one download by the clone");
}

/// giftless (waitress and whatever it starts) is gone once the servers are dropped.
#[test]
fn the_lfs_server_is_gone_after_drop() {
    let servers = LfsServers::start();
    let pid = servers.giftless.pid();
    let ours = || harness::process::leftovers().into_iter().any(|(p, _)| p == pid);
    assert!(ours(), "giftless runs and carries the harness mark");
    drop(servers);
    assert!(!ours(), "giftless still runs after drop");
}
