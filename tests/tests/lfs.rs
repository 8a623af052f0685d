//! Git LFS mirroring (issue 19), end to end on real components: the git-lfs client makes the
//! repositories and reads the mirrors back; giftless serves the objects (tests/src/lfs.rs), on
//! the same loopback front as `git http-backend`.

use std::path::{Path, PathBuf};

use harness::assert_refs_equal;
use harness::leaks::CheckedOutput;
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

/// A source and an empty target on one LFS front, a git-lfs work tree of the source, and a
/// cache directory for `gitferry mirror`.
struct Case {
    servers: LfsServers,
    wt: harness::Worktree,
    cache: harness::TempDir,
}

impl Case {
    fn new() -> Case {
        Self::with_servers(LfsServers::start())
    }

    fn with_servers(servers: LfsServers) -> Case {
        servers.create_bare("org/src.git");
        servers.create_bare("org/dst.git");
        let wt = lfs_worktree(&servers.url("org/src.git"));
        Case {
            servers,
            wt,
            cache: harness::tempdir(),
        }
    }

    /// Commit `content` as the LFS file `name` and push it (objects first, by git-lfs).
    fn push_lfs(&mut self, name: &str, content: &[u8]) -> String {
        let oid = commit_lfs_file(&mut self.wt, name, content);
        self.wt.push_all();
        oid
    }

    /// `gitferry mirror src dst --json {args}`: exit code and summary.
    fn mirror_to(&self, target: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, serde_json::Value, String) {
        let out = std::process::Command::new(harness::gitferry_bin())
            .args([
                "mirror",
                &self.servers.url("org/src.git"),
                &self.servers.url(target),
                "--cache-dir",
            ])
            .arg(self.cache.path())
            .arg("--json")
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
            .checked_output()
            .expect("gitferry runs");
        let summary = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code(),
            summary,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn mirror(&self) -> serde_json::Value {
        let (code, summary, stderr) = self.mirror_to("org/dst.git", &[], &[]);
        assert_eq!(code, Some(0), "gitferry mirror failed: {stderr}");
        summary
    }

    /// `mirrors.toml` for the sync service: repository `app` (org/src.git) to `targets`
    /// (`org/{target}` each, named without `.git`).
    fn service_toml(&self, targets: &[&str]) -> String {
        let mut toml = format!("[repos.app]\nurl = \"{}\"\n", self.servers.url("org/src.git"));
        for name in targets {
            toml.push_str(&format!(
                "[[repos.app.targets]]\nname = \"{}\"\nurl = \"{}\"\n",
                name.trim_end_matches(".git"),
                self.servers.url(&format!("org/{name}"))
            ));
        }
        toml
    }

    /// A fresh git-lfs clone of `name` (every LFS file smudged), checked by `git lfs fsck`.
    fn clone_checked(&self, name: &str, dir: &Path) -> PathBuf {
        let clone = harness::lfs::lfs_clone(&self.servers.url(name), dir, "clone");
        let (ok, out) = git_ok(&clone, &["lfs", "fetch", "--all"]);
        assert!(ok, "git lfs fetch --all from {name}: {out}");
        let (ok, out) = git_ok(&clone, &["lfs", "fsck"]);
        assert!(ok, "git lfs fsck of {name}: {out}");
        clone
    }
}

fn lfs(summary: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| {
        summary["lfs"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("lfs.{k} in {summary}"))
    };
    (n("objects"), n("downloaded"), n("uploaded"))
}

#[test]
fn initial_then_incremental_mirror_carries_exactly_the_new_objects() {
    let mut case = Case::new();
    let a = harness::pseudo_random_bytes(300_000, 2);
    let b = harness::pseudo_random_bytes(5_000, 3);
    case.push_lfs("a.bin", &a);
    case.push_lfs("dir/b.bin", &b);
    case.wt.commit_file("plain.txt", b"not LFS\n", "a plain file");
    case.wt.push_all();

    let summary = case.mirror();
    assert_eq!(lfs(&summary), (2, 2, 2), "{summary}");
    assert_eq!(summary["lfs"]["bytes"], 305_000);
    assert_refs_equal(&case.servers.path("org/src.git"), &case.servers.path("org/dst.git"));
    let dir = harness::tempdir();
    let clone = case.clone_checked("org/dst.git", dir.path());
    assert_eq!(std::fs::read(clone.join("a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(clone.join("dir/b.bin")).unwrap(), b);

    // Incremental: one new object, and only it is looked at, downloaded and uploaded.
    let (_, downloads, uploads) = case.servers.counts.get();
    let c = harness::pseudo_random_bytes(70_000, 4);
    let oid_c = case.push_lfs("c.bin", &c);
    let summary = case.mirror();
    assert_eq!(lfs(&summary), (1, 1, 1), "{summary}");
    let (_, downloads_after, uploads_after) = case.servers.counts.get();
    assert_eq!(
        (downloads_after - downloads, uploads_after - uploads - 1),
        (1, 1),
        "one download, one upload by gitferry (the other upload was git-lfs's push of c.bin to the source)"
    );
    assert!(case.servers.has_object("org/dst.git", &oid_c));

    // Nothing new: no LFS request at all.
    let before = case.servers.counts.get();
    let summary = case.mirror();
    assert!(summary.get("lfs").is_none_or(|l| l["objects"] == 0), "{summary}");
    assert_eq!(
        case.servers.counts.get(),
        before,
        "an idle mirror asks no LFS server anything"
    );
}

#[test]
fn an_object_the_target_has_is_not_uploaded_again() {
    let mut case = Case::new();
    let shared = harness::pseudo_random_bytes(40_000, 5);
    let oid = case.push_lfs("shared.bin", &shared);
    case.push_lfs("new.bin", &harness::pseudo_random_bytes(40_000, 6));
    // The target's LFS server already has `shared.bin` (pushed there by git-lfs).
    let dst = case.servers.url("org/dst.git");
    case.wt.git(["lfs", "push", "--object-id", &dst, &oid]);
    assert!(case.servers.has_object("org/dst.git", &oid));

    let summary = case.mirror();
    assert_eq!(lfs(&summary), (2, 2, 1), "{summary}");
    let dir = harness::tempdir();
    case.clone_checked("org/dst.git", dir.path());
}

/// A second, empty target mirrored with the same cache directory: the fetch brings nothing,
/// yet the target gets the objects of the whole history (from the cache, not the source).
#[test]
fn a_new_target_on_a_used_cache_gets_every_lfs_object() {
    let mut case = Case::new();
    let oid = case.push_lfs("a.bin", &harness::pseudo_random_bytes(30_000, 9));
    case.mirror();
    case.servers.create_bare("org/second.git");
    let (code, summary, stderr) = case.mirror_to("org/second.git", &[], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(summary["fetch"]["up_to_date"], true, "{summary}");
    assert_eq!(lfs(&summary), (1, 0, 1), "{summary}");
    assert!(case.servers.has_object("org/second.git", &oid));
    let dir = harness::tempdir();
    case.clone_checked("org/second.git", dir.path());
}

#[test]
fn a_missing_object_is_reported_and_the_refs_are_still_mirrored() {
    let mut case = Case::new();
    let gone = case.push_lfs("gone.bin", &harness::pseudo_random_bytes(10_000, 7));
    case.push_lfs("kept.bin", &harness::pseudo_random_bytes(10_000, 8));
    case.servers.remove_object("org/src.git", &gone);

    let summary = case.mirror();
    assert_eq!(lfs(&summary), (2, 1, 1), "{summary}");
    let missing = summary["lfs"]["missing"].as_array().expect("missing objects listed");
    assert_eq!(missing.len(), 1, "{summary}");
    assert_eq!(missing[0]["oid"], gone.as_str());
    assert_refs_equal(&case.servers.path("org/src.git"), &case.servers.path("org/dst.git"));
}

#[test]
fn a_cold_git_cache_restores_without_downloading_again() {
    let mut case = Case::new();
    case.push_lfs("a.bin", &harness::pseudo_random_bytes(50_000, 9));
    case.push_lfs("b.bin", &harness::pseudo_random_bytes(50_000, 10));
    assert_eq!(lfs(&case.mirror()), (2, 2, 2));
    let downloads = case.servers.counts.downloads.load(std::sync::atomic::Ordering::Relaxed);

    // The bare cache is lost (a new machine), the LFS object cache is not; a second target.
    for entry in std::fs::read_dir(case.cache.path()).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "git") {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    case.servers.create_bare("org/dst2.git");
    let (code, summary, stderr) = case.mirror_to("org/dst2.git", &[], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lfs(&summary), (2, 0, 2), "{summary}");
    assert_eq!(
        case.servers.counts.downloads.load(std::sync::atomic::Ordering::Relaxed),
        downloads,
        "nothing downloaded from the source again"
    );
    let dir = harness::tempdir();
    case.clone_checked("org/dst2.git", dir.path());
}

#[test]
fn lfs_off_mirrors_pointers_only_and_asks_no_lfs_server() {
    let mut case = Case::new();
    case.push_lfs("a.bin", &harness::pseudo_random_bytes(1_000, 11));
    let before = case.servers.counts.get();
    let (code, summary, stderr) = case.mirror_to("org/dst.git", &["--lfs", "off"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(summary.get("lfs").is_none(), "{summary}");
    assert_eq!(case.servers.counts.get(), before);
    assert_refs_equal(&case.servers.path("org/src.git"), &case.servers.path("org/dst.git"));
}

#[test]
fn credentials_reach_git_and_lfs_and_never_the_output() {
    let (user, password) = ("mirror-bot", "lfs-pw-4f9c2e71");
    let auth = harness::BasicAuth {
        user: user.into(),
        password: password.into(),
    };
    let servers = LfsServers::start_with_auth(Some(auth));
    servers.create_bare("org/src.git");
    servers.create_bare("org/dst.git");
    let authed = servers.http.url_with_userinfo("org/src.git", user, password);
    let mut wt = lfs_worktree(&authed);
    let content = harness::pseudo_random_bytes(20_000, 12);
    let oid = commit_lfs_file(&mut wt, "a.bin", &content);
    wt.push_all();
    assert!(servers.has_object("org/src.git", &oid));
    let case = Case {
        servers,
        wt,
        cache: harness::tempdir(),
    };
    let creds = [
        ("GITFERRY_SOURCE_TOKEN", password),
        ("GITFERRY_SOURCE_USER", user),
        ("GITFERRY_TARGET_TOKEN", password),
        ("GITFERRY_TARGET_USER", user),
    ];
    // Without credentials the batch API refuses: a permanent error that says what to check.
    let (code, _, stderr) = case.mirror_to("org/dst.git", &[], &creds[2..]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("authentication failed") || stderr.contains("refused the credentials"),
        "{stderr}"
    );

    let (code, summary, stderr) = case.mirror_to("org/dst.git", &[], &creds);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lfs(&summary), (1, 1, 1), "{summary}");
    assert!(case.servers.has_object("org/dst.git", &oid));
    // stdout, stderr (debug log) and the cache were checked for the password and every action
    // token giftless issued (checked_output, and the cache's TempDir when dropped).
    harness::leaks::check_tree(case.cache.path());
}

#[test]
fn a_throttled_batch_call_is_retried_after_retry_after() {
    let mut case = Case::new();
    case.push_lfs("a.bin", &harness::pseudo_random_bytes(1_000, 13));
    case.servers
        .counts
        .throttle_batches
        .store(2, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    let summary = case.mirror();
    assert_eq!(lfs(&summary), (1, 1, 1), "{summary}");
    assert_eq!(
        case.servers.counts.throttled.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "waited as told");
}

#[test]
fn a_target_without_an_lfs_server_is_a_clear_error_and_gets_no_refs() {
    let mut case = Case::new();
    case.push_lfs("a.bin", &harness::pseudo_random_bytes(1_000, 14));
    // A plain git server: its /info/lfs/objects/batch is git http-backend's 404.
    let plain = harness::Servers::start();
    let dst = plain.create_bare("dst.git");
    let out = std::process::Command::new(harness::gitferry_bin())
        .args([
            "mirror",
            &case.servers.url("org/src.git"),
            &plain.url(harness::Proto::Http, "dst.git"),
        ])
        .arg("--cache-dir")
        .arg(case.cache.path())
        .checked_output()
        .expect("gitferry runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no Git LFS server at") && stderr.contains("--lfs off"),
        "{stderr}"
    );
    assert!(harness::mirrored_refs(&dst).is_empty(), "no pointer without its object");
    // Pointers only, when asked to.
    let out = std::process::Command::new(harness::gitferry_bin())
        .args([
            "mirror",
            &case.servers.url("org/src.git"),
            &plain.url(harness::Proto::Http, "dst.git"),
        ])
        .arg("--cache-dir")
        .arg(case.cache.path())
        .args(["--lfs", "off"])
        .checked_output()
        .expect("gitferry runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_refs_equal(&case.servers.path("org/src.git"), &dst);
}

#[test]
fn a_run_that_failed_after_its_fetch_resumes_the_objects_next_time() {
    let mut case = Case::new();
    case.push_lfs("a.bin", &harness::pseudo_random_bytes(2_000, 15));
    // The source's LFS server keeps throttling: the first run gives up (transient), after its
    // fetch; the target gets no refs.
    case.servers
        .counts
        .throttle_batches
        .store(100, std::sync::atomic::Ordering::Relaxed);
    let (code, _, stderr) = case.mirror_to("org/dst.git", &[], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("429") && stderr.contains("will be retried"), "{stderr}");
    assert!(harness::mirrored_refs(&case.servers.path("org/dst.git")).is_empty());
    // The next run's fetch brings nothing new, and the pointer found before is still handled.
    case.servers
        .counts
        .throttle_batches
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let summary = case.mirror();
    assert_eq!(summary["fetch"]["up_to_date"], true, "{summary}");
    assert_eq!(lfs(&summary), (1, 1, 1), "{summary}");
    let dir = harness::tempdir();
    case.clone_checked("org/dst.git", dir.path());
}

/// A connection cut in the middle of an object's download (a fault proxy in front of the
/// source's git and LFS server): the run fails as transient with nothing pushed and no partial
/// object cached; the next run downloads it whole, verified, and the mirror checks out.
#[test]
fn a_download_cut_midway_leaves_nothing_half_done_and_the_next_run_completes_it() {
    let mut case = Case::new();
    let oid = case.push_lfs("big.bin", &harness::pseudo_random_bytes(2_000_000, 31));
    let proxy = harness::proxy::FaultProxy::start(case.servers.http.port);
    let source = format!("http://127.0.0.1:{}/org/src.git", proxy.port);
    let run = || {
        let out = std::process::Command::new(harness::gitferry_bin())
            .args(["mirror", &source, &case.servers.url("org/dst.git"), "--cache-dir"])
            .arg(case.cache.path())
            .arg("--json")
            .checked_output()
            .expect("gitferry runs");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (
            out.status.code(),
            summary,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Every connection is cut after 300 KB from the server: git's exchanges are smaller, the
    // object is not.
    proxy.set(harness::proxy::Plan {
        cut_downstream_after: Some(300_000),
        ..Default::default()
    });
    let (code, _, stderr) = run();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("will be retried"), "transient: {stderr}");
    let (_, downloads, _) = case.servers.counts.get();
    assert!(
        downloads >= 1,
        "the batch call went through, the download was cut: {stderr}"
    );
    assert!(
        harness::mirrored_refs(&case.servers.path("org/dst.git")).is_empty(),
        "no refs pushed"
    );
    let cached = case
        .cache
        .path()
        .join("lfs")
        .join(&oid[..2])
        .join(&oid[2..4])
        .join(&oid);
    assert!(!cached.exists(), "no partial object is kept as the object");
    assert!(!case.servers.has_object("org/dst.git", &oid));

    proxy.clear();
    let (code, summary, stderr) = run();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lfs(&summary), (1, 1, 1), "{summary}");
    assert!(cached.is_file() && case.servers.has_object("org/dst.git", &oid));
    let dir = harness::tempdir();
    case.clone_checked("org/dst.git", dir.path());
}

/// An object store in a directory (kept while the returned guard lives), as `serve` has one.
fn fs_store() -> (std::sync::Arc<dyn gitferry_core::store::ObjectStore>, harness::TempDir) {
    let dir = harness::tempdir();
    let store = gitferry_core::store::fs::FsStore::new(dir.path().to_owned());
    (std::sync::Arc::new(store), dir)
}

/// One sync of `repo` by the sync service, as a function runs it: a cold work directory every
/// time, the store shared. Returns the repository's status after it.
async fn service_sync(
    toml: &str,
    store: std::sync::Arc<dyn gitferry_core::store::ObjectStore>,
    repo: &str,
) -> gitferry_core::status::RepoStatus {
    let work = harness::tempdir();
    let config = gitferry_core::config::Config::parse(toml, Path::new("test.toml"), &|_| None).unwrap();
    let manager = gitferry_core::sync::SyncManager::new(
        std::sync::Arc::new(config),
        store,
        gitferry_core::notify::Notifier::new(&Default::default()),
        gitferry_core::metrics::Metrics::discard(),
        gitferry_core::sync::SyncOptions {
            work_dir: work.path().to_owned(),
            ..Default::default()
        },
    );
    let request = gitferry_core::request::SyncRequest::poll(repo, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    manager.handle_batch(&[request], deadline).await;
    manager.status_book().get(repo).await.unwrap().unwrap()
}

/// A sync whose LFS step failed after its commit (the cache, with the new packs, is in the
/// store) transfers the objects on the next run — on another machine, whose fetch brings
/// nothing to scan — before the target gets the refs: the pointers pending are in the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_service_resumes_lfs_objects_on_another_machine() {
    let mut case = Case::new();
    let oid = case.push_lfs("a.bin", &harness::pseudo_random_bytes(2_000, 23));
    let toml = case.service_toml(&["dst.git"]);
    let (store, _store_dir) = fs_store();
    let throttle = |n| {
        case.servers
            .counts
            .throttle_batches
            .store(n, std::sync::atomic::Ordering::Relaxed)
    };
    throttle(100);
    let failed = service_sync(&toml, store.clone(), "app").await;
    assert!(failed.error_class.is_some(), "the LFS step gave up: {failed:?}");
    assert!(
        harness::mirrored_refs(&case.servers.path("org/dst.git")).is_empty(),
        "no refs without the objects"
    );
    throttle(0);
    let status = service_sync(&toml, store, "app").await;
    assert!(status.error_class.is_none(), "{status:?}");
    assert!(
        case.servers.has_object("org/dst.git", &oid),
        "the object reached the target"
    );
    let counts: Vec<_> = status
        .targets
        .values()
        .filter_map(|t| t.lfs.as_ref())
        .map(|c| (c.objects, c.uploaded))
        .collect();
    assert_eq!(counts, [(1, 1)], "the resumed object is counted: {status:?}");
    assert_refs_equal(&case.servers.path("org/src.git"), &case.servers.path("org/dst.git"));
    let dir = harness::tempdir();
    case.clone_checked("org/dst.git", dir.path());
}

/// A target added to a repository mirrored before gets the LFS objects of the whole history,
/// although the sync that adds it fetches nothing new; the first target is not sent them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_added_later_gets_the_lfs_objects_of_the_whole_history() {
    let mut case = Case::new();
    let oid = case.push_lfs("a.bin", &harness::pseudo_random_bytes(4_000, 27));
    case.servers.create_bare("org/late.git");
    let (store, _store_dir) = fs_store();
    let first = service_sync(&case.service_toml(&["dst.git"]), store.clone(), "app").await;
    assert!(
        first.error_class.is_none() && case.servers.has_object("org/dst.git", &oid),
        "{first:?}"
    );
    let (_, _, uploads_before) = case.servers.counts.get();
    let status = service_sync(&case.service_toml(&["dst.git", "late.git"]), store, "app").await;
    assert!(status.error_class.is_none(), "{status:?}");
    assert!(
        case.servers.has_object("org/late.git", &oid),
        "the new target got the object"
    );
    assert_eq!(
        case.servers.counts.get().2 - uploads_before,
        1,
        "uploaded to the new target only"
    );
    let late = status.targets["late"].lfs.clone().expect("late's LFS count");
    assert_eq!((late.objects, late.uploaded), (1, 1), "{status:?}");
    assert_refs_equal(&case.servers.path("org/src.git"), &case.servers.path("org/late.git"));
    let dir = harness::tempdir();
    case.clone_checked("org/late.git", dir.path());
}

/// A first mirror goes in batches of refs, each pushed before the next is fetched: each
/// batch's LFS objects reach the target before the batch's refs do. The target's pre-receive
/// hook refuses any ref whose tree holds a pointer its LFS server lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_in_batches_never_gives_a_target_pointers_before_their_objects() {
    let mut case = Case::new();
    let mut oids = vec![case.push_lfs("main.bin", &harness::pseudo_random_bytes(5_000, 41))];
    for (i, branch) in ["b1", "b2"].into_iter().enumerate() {
        case.wt.git(["checkout", "--quiet", "-b", branch, "main"]);
        oids.push(case.push_lfs(
            &format!("{branch}.bin"),
            &harness::pseudo_random_bytes(5_000, 42 + i as u64),
        ));
    }
    let storage = case.servers.giftless.object_path("org", "dst", "x");
    let storage = storage.parent().unwrap().display().to_string();
    let refused = harness::tempdir();
    let log = refused.path().join("refused.log").display().to_string();
    harness::install_hook(
        &case.servers.path("org/dst.git"),
        "pre-receive",
        &format!(
            r#"#!/bin/sh
while read old new ref; do
  [ "$new" = 0000000000000000000000000000000000000000 ] && continue
  git ls-tree -r "$new" | while read mode type id path; do
    [ "$type" = blob ] || continue
    oid=$(git cat-file -p "$id" | sed -n 's/^oid sha256://p')
    [ -z "$oid" ] || [ -f "{storage}/$oid" ] || {{ echo "no LFS object $oid for $ref" | tee -a {log}; exit 1; }}
  done || exit 1
done
"#
        ),
    );
    let toml = case.service_toml(&["dst.git"]);
    let (store, _store_dir) = fs_store();
    let status = service_sync(&toml, store, "app").await;
    assert!(status.error_class.is_none(), "{status:?}");
    // A refused batch would be pushed again by the final round: the hook's log tells.
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "",
        "no push was refused"
    );
    assert_refs_equal(&case.servers.path("org/src.git"), &case.servers.path("org/dst.git"));
    for oid in &oids {
        assert!(case.servers.has_object("org/dst.git", oid));
    }
    let count = status.targets["dst"].lfs.clone().expect("dst's LFS count");
    assert_eq!(
        (count.objects, count.uploaded),
        (3, 3),
        "counted over the batches: {status:?}"
    );
}

/// The sync service mirrors LFS objects too, and keeps each in the object store
/// (`lfs/ab/cd/{oid}`) once downloaded: a repository whose source's LFS server lacks an object
/// another repository already brought (a fork pushed without its LFS objects) gets it from the
/// store, on a cold work directory — never downloaded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_service_mirrors_lfs_objects_through_the_store() {
    let mut case = Case::new();
    let oid = case.push_lfs("a.bin", &harness::pseudo_random_bytes(3_000, 21));
    // The fork: the same git history, no LFS object on its LFS server.
    case.servers.create_bare("org/fork.git");
    harness::git(
        &case.servers.path("org/src.git"),
        [
            "push",
            "--quiet",
            "--mirror",
            case.servers.path("org/fork.git").to_str().unwrap(),
        ],
    );
    case.servers.create_bare("org/dst2.git");
    // app's second target is a local path, which has no LFS server: it gets the refs (lfs =
    // "auto" skips it) and does not keep the first target from getting the object.
    let plain = harness::tempdir();
    let plain_repo = plain.path().join("plain.git");
    harness::git(
        plain.path(),
        ["init", "--quiet", "--bare", plain_repo.to_str().unwrap()],
    );
    let toml = format!(
        "[repos.app]\nurl = \"{}\"\n[[repos.app.targets]]\nurl = \"{}\"\n\
         [[repos.app.targets]]\nname = \"plain\"\nurl = \"{}\"\n\n\
         [repos.fork]\nurl = \"{}\"\n[[repos.fork.targets]]\nurl = \"{}\"\n",
        case.servers.url("org/src.git"),
        case.servers.url("org/dst.git"),
        plain_repo.display(),
        case.servers.url("org/fork.git"),
        case.servers.url("org/dst2.git"),
    );
    let (store, _store_dir) = fs_store();
    let sync = |repo: &'static str| {
        let (toml, store) = (toml.clone(), store.clone());
        async move {
            let status = service_sync(&toml, store, repo).await;
            assert!(status.error_class.is_none(), "{repo}: {status:?}");
            status
        }
    };
    let status = sync("app").await;
    // Counted per target in the status: uploaded to the HTTP target, skipped on the path.
    let plain_lfs = status.targets["plain"].lfs.clone().expect("plain's LFS count");
    assert!(plain_lfs.skipped.is_some() && plain_lfs.uploaded == 0, "{plain_lfs:?}");
    let http_lfs: Vec<_> = status
        .targets
        .values()
        .filter_map(|t| t.lfs.clone())
        .filter(|c| c.skipped.is_none())
        .collect();
    assert_eq!(
        http_lfs
            .iter()
            .map(|c| (c.objects, c.bytes, c.uploaded, c.uploaded_bytes))
            .collect::<Vec<_>>(),
        [(1, 3_000, 1, 3_000)],
        "{status:?}"
    );
    assert!(
        case.servers.has_object("org/dst.git", &oid),
        "app's target got the object"
    );
    assert_refs_equal(&case.servers.path("org/src.git"), &plain_repo);
    assert!(
        store
            .get(&format!("lfs/{}/{}/{oid}", &oid[..2], &oid[2..4]))
            .await
            .unwrap()
            .is_some(),
        "kept in the store"
    );
    let dir = harness::tempdir();
    case.clone_checked("org/dst.git", dir.path());
    assert!(!case.servers.has_object("org/fork.git", &oid));
    sync("fork").await;
    assert!(
        case.servers.has_object("org/dst2.git", &oid),
        "restored from the store, not the source"
    );
    let dir2 = harness::tempdir();
    case.clone_checked("org/dst2.git", dir2.path());
}
