//! The cache test-suite (issue 4): `RepoCache` and `Lease` over every store adapter — `FsStore`
//! on a temporary directory and `S3Store` on a real S3 emulator (moto, one server per test) —
//! with real git on both sides: sources served by the harness's `git daemon`, fetched with the
//! engine's `mirror_fetch`, and every restored copy checked with the git CLI (refs, `git fsck`).
//!
//! Each case runs once per adapter (`fs::case`, `s3::case`). Store traffic is observed through
//! `FaultStore`, which counts calls and injects failures. `evict_lru` works on the local disk
//! only and runs once.
//!
//! The `bench_cache` test is ignored: it is the cache benchmark (`bench/cache.sh` runs it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use gitferry_aws::S3Store;
use gitferry_core::cache::lease::{self, Lease, LeaseRecord};
use gitferry_core::cache::{self, CacheError, CommitOutcome, MAX_PACKS, NextState, RepoCache, RestoreStats, Snapshot};
use gitferry_core::clock::now_ms;
use gitferry_core::git::repo::{self, Peel};
use gitferry_core::git::{FetchOptions, FetchOutcome, RefPatterns, Remote, mirror_fetch};
use gitferry_core::store::fault::{Fault, FaultStore, Op, Rule};
use gitferry_core::store::fs::FsStore;
use gitferry_core::store::{Condition, ObjectStore, StoreError};
use harness::moto::MotoServer;
use harness::{
    Servers, TempDir, Worktree, assert_fsck_clean, assert_refs_equal, git, mirrored_refs, object_count,
    pseudo_random_bytes, refs,
};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A store under test and what keeps it alive.
struct Fixture {
    store: Arc<dyn ObjectStore>,
    _moto: Option<MotoServer>,
    _root: Option<TempDir>,
}

async fn fs_fixture() -> Fixture {
    let root = TempDir::new("gitferry-cache-store-");
    Fixture {
        store: Arc::new(FsStore::new(root.path().join("store"))),
        _moto: None,
        _root: Some(root),
    }
}

async fn s3_fixture() -> Fixture {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .expect("moto starts");
    let (client, bucket) = moto.client_with_bucket().await;
    // Under a prefix, as deployments use.
    let store = S3Store::new(client, bucket, "deploy/cache").expect("valid store");
    Fixture {
        store: Arc::new(store),
        _moto: Some(moto),
        _root: None,
    }
}

// Each case becomes one test per adapter: `fs::case` and `s3::case`.
harness::store_suite!(
    cold_restore_equals_the_source,
    warm_restore_downloads_nothing,
    incremental_sync_uploads_only_the_delta,
    noop_commit_writes_nothing,
    racing_workers_one_generation_wins_no_refs_lost,
    orphaned_packs_of_a_lost_race_are_collected_once_old,
    lease_free_held_released,
    lease_stale_is_reclaimed_and_the_old_holder_stops,
    lease_heartbeat_keeps_a_long_sync_alive,
    lease_heartbeat_notices_a_takeover,
    lease_lost_renewal_reply_is_not_a_lost_lease,
    lease_check_fails_once_renewals_fail_past_the_ttl,
    fault_error_at_every_call_of_a_sync,
    fault_reply_lost_at_every_call_of_a_sync,
    compaction_keeps_the_repo_and_deletes_old_packs_only_after_the_switch,
    integrity_corrupt_or_missing_packs_are_reported,
    rebuild_after_corrupt_repairs_the_store,
    sync_manager_rebuilds_a_corrupt_cache_from_the_source,
);

// ---------------------------------------------------------------------------------------------
// The git side

/// A source repository served by the harness's git daemon (and http-backend), authored through
/// a worktree.
struct Source {
    servers: Servers,
    path: PathBuf,
    wt: Worktree,
    seed: u64,
}

impl Source {
    /// `src.git` with [`Worktree::build_history`] (branches, merge, tags, a 1.5 MiB file).
    fn new() -> Source {
        let servers = Servers::start();
        let path = servers.create_bare("src.git");
        let mut wt = Worktree::new(&path);
        wt.build_history();
        Source {
            servers,
            path,
            wt,
            seed: 100,
        }
    }

    fn url(&self) -> String {
        self.servers.daemon.url("src.git")
    }

    /// One new commit on main adding `kib` KiB of incompressible data; pushed.
    fn advance(&mut self, kib: usize) -> String {
        self.seed += 1;
        let name = format!("data/{}.bin", self.seed);
        let id = self.wt.commit_file(
            &name,
            &pseudo_random_bytes(kib * 1024, self.seed),
            &format!("add {name}"),
        );
        self.wt.push_all();
        id
    }

    /// A change touching every kind of ref: a commit on main, one on release/1.x, a new
    /// annotated tag, the `feature` branch deleted.
    fn change_everything(&mut self) {
        self.advance(16);
        self.wt.git(["tag", "-a", "v2.0", "-m", "release 2.0"]);
        self.wt.git(["checkout", "--quiet", "release/1.x"]);
        self.wt
            .commit_file("src/mod1.rs", b"pub fn f1() -> u32 { 101 }\n", "backport 2");
        self.wt.git(["checkout", "--quiet", "main"]);
        self.wt.git(["branch", "-D", "feature"]);
        self.wt.push_all();
    }

    /// A copy of the source served as `name` with one more branch `branch` (one commit).
    fn fork(&self, name: &str, branch: &str) -> (PathBuf, String) {
        let path = self.servers.path(name);
        git(self.servers.root(), ["clone", "--quiet", "--mirror", "src.git", name]);
        let mut wt = Worktree::new(&path);
        wt.git(["fetch", "--quiet", "origin"]);
        wt.git(["checkout", "--quiet", "-b", branch, "origin/main"]);
        wt.commit_file(&format!("{branch}.txt"), branch.as_bytes(), branch);
        wt.git(["push", "--quiet", "origin", &format!("HEAD:refs/heads/{branch}")]);
        (path, self.servers.daemon.url(name))
    }
}

/// Mirror-fetch `url` into the bare repository at `path` (created if missing).
async fn fetch(path: &Path, url: &str, prune: bool) -> FetchOutcome {
    let (path, url) = (path.to_owned(), url.to_owned());
    tokio::task::spawn_blocking(move || {
        let r = repo::open_or_init_bare(&path).expect("open the local copy");
        let remote = Remote::parse(&url).expect("valid url");
        let options = FetchOptions {
            prune,
            ..Default::default()
        };
        mirror_fetch(&r, &remote, &options, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("fetch {url}: {e}"))
    })
    .await
    .expect("fetch task")
}

/// What a commit records: the local copy's branches and tags.
fn local_state(path: &Path) -> NextState {
    let r = repo::open(path).expect("open the local copy");
    NextState {
        source: repo::read_refs(&r, &RefPatterns::default(), Peel::No).expect("read refs"),
        ..Default::default()
    }
}

/// One worker (a Lambda container): its own work directory, a store shared with the others.
struct Worker {
    cache: RepoCache,
    _dir: TempDir,
}

/// What one sync did.
struct Synced {
    restored: RestoreStats,
    fetched: FetchOutcome,
    committed: CommitOutcome,
}

impl Worker {
    fn new(store: Arc<dyn ObjectStore>, repo: &str) -> Worker {
        let dir = TempDir::new("gitferry-cache-work-");
        Worker {
            cache: RepoCache::new(store, dir.path(), repo),
            _dir: dir,
        }
    }

    fn path(&self) -> &Path {
        self.cache.path()
    }

    /// Load and restore the current manifest.
    async fn restore(&self) -> Result<(Snapshot, RestoreStats), CacheError> {
        let snap = self.cache.load().await?;
        let stats = self.cache.restore(&snap).await?;
        Ok((snap, stats))
    }

    /// One sync as `SyncManager` runs it: load, restore, invalidate the local marker, fetch,
    /// compact past `compact` packs (if given), commit.
    async fn sync(&self, url: &str, compact: Option<usize>) -> Result<Synced, CacheError> {
        let (snap, restored) = self.restore().await?;
        self.cache.invalidate_local()?;
        let fetched = fetch(self.path(), url, true).await;
        if let Some(max) = compact {
            self.cache.compact_if_needed(max).await?;
        }
        let committed = self.cache.commit(&snap, local_state(self.path())).await?;
        Ok(Synced {
            restored,
            fetched,
            committed,
        })
    }
}

/// Store keys under `prefix`.
async fn keys_under(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// The store keys of the manifest's packs (pack and index of each), sorted.
fn pack_keys(repo: &str, snap: &Snapshot) -> Vec<String> {
    let mut keys: Vec<String> = snap
        .manifest
        .packs
        .iter()
        .flat_map(|p| [cache::keys::pack(repo, &p.name), cache::keys::index(repo, &p.name)])
        .collect();
    keys.sort();
    keys
}

#[track_caller]
fn expect_corrupt<T: std::fmt::Debug>(r: Result<T, CacheError>, mentions: &[&str]) -> String {
    match r {
        Err(e @ CacheError::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(e.is_transient(), "corrupt caches are rebuilt, then retried: {text}");
            for m in mentions {
                assert!(text.contains(m), "the message should mention {m:?}: {text}");
            }
            text
        }
        other => panic!("expected CacheError::Corrupt, got {other:?}"),
    }
}

/// Every object reachable from the refs (`git rev-list --objects --all`), sorted.
fn reachable_objects(path: &Path) -> Vec<String> {
    let mut ids: Vec<String> = git(path, ["rev-list", "--objects", "--all"])
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

fn symbolic_head(path: &Path) -> String {
    git(path, ["symbolic-ref", "HEAD"])
}

// ---------------------------------------------------------------------------------------------
// Restore, commit, no-op

/// A repository fetched from a real server and committed restores, in another work directory,
/// to exactly the source: same refs and HEAD, same objects, `git fsck` clean. The store then
/// holds exactly the manifest and one pack with its index.
async fn cold_restore_equals_the_source(f: &Fixture) {
    let src = Source::new();
    let a = Worker::new(f.store.clone(), "app");
    let first = a.sync(&src.url(), None).await.expect("first sync");
    let c = &first.committed;
    assert!(c.written && c.packs_uploaded == 1, "{c:?}");
    assert_eq!(c.snapshot.manifest.generation, 1);
    assert_eq!(c.snapshot.manifest.packs.len(), 1);
    assert_eq!(c.snapshot.manifest.source.ids(), local_state(a.path()).source.ids());
    let mut expected = pack_keys("app", &c.snapshot);
    expected.push(cache::keys::manifest("app"));
    expected.sort();
    assert_eq!(keys_under(&*f.store, "repos/app/").await, expected);

    let b = Worker::new(f.store.clone(), "app");
    let (snap, stats) = b.restore().await.expect("cold restore");
    assert_eq!(
        snap, c.snapshot,
        "the manifest (and ETag) read back is the one committed"
    );
    assert!(!stats.warm);
    assert_eq!(stats.packs_downloaded, 1);
    let stored_bytes: u64 = f
        .store
        .list("repos/app/packs/")
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    assert_eq!(stats.bytes_downloaded, stored_bytes, "pack + index");
    assert_refs_equal(&src.path, b.path());
    assert_eq!(refs(b.path()), refs(a.path()), "every ref of the committed copy");
    assert_eq!(symbolic_head(b.path()), symbolic_head(&src.path));
    assert_eq!(object_count(b.path()), object_count(&src.path));
    assert_fsck_clean(b.path());
}

/// A worker whose local copy carries the manifest's generation downloads nothing (one manifest
/// read in all); a cold worker downloads exactly the manifest's packs; a worker one generation
/// behind downloads only the new pack.
async fn warm_restore_downloads_nothing(f: &Fixture) {
    let mut src = Source::new();
    let store = Arc::new(FaultStore::new(f.store.clone()));
    let a = Worker::new(store.clone(), "app");
    a.sync(&src.url(), None).await.expect("sync 1");
    src.advance(8);
    let second = a.sync(&src.url(), None).await.expect("sync 2");
    assert_eq!(second.committed.snapshot.manifest.packs.len(), 2);

    // Warm: the local copy is what this worker committed.
    store.reset_counts();
    let (snap, stats) = a.restore().await.expect("warm restore");
    assert!(stats.warm, "{stats:?}");
    assert_eq!((stats.packs_downloaded, stats.bytes_downloaded), (0, 0));
    let calls = store.calls();
    assert_eq!(
        (calls.get, calls.total()),
        (1, 1),
        "only the manifest is read: {calls:?}"
    );
    assert_refs_equal(&src.path, a.path());

    // Cold: exactly the manifest's packs (pack + index each), nothing written.
    let b = Worker::new(store.clone(), "app");
    store.reset_counts();
    let (_, stats) = b.restore().await.expect("cold restore");
    let calls = store.calls();
    assert!(!stats.warm);
    assert_eq!(stats.packs_downloaded, snap.manifest.packs.len());
    assert_eq!(calls.download, 2 * snap.manifest.packs.len() as u64, "{calls:?}");
    assert_eq!(calls.writes(), 0, "{calls:?}");
    assert_refs_equal(&src.path, b.path());
    assert_fsck_clean(b.path());

    // Now b is warm too.
    store.reset_counts();
    let (_, stats) = b.restore().await.unwrap();
    assert!(stats.warm);
    assert_eq!(store.calls().download, 0);

    // One generation behind: only the new pack.
    src.advance(8);
    a.sync(&src.url(), None).await.expect("sync 3");
    store.reset_counts();
    let (snap, stats) = b.restore().await.expect("restore of the next generation");
    assert_eq!(snap.manifest.generation, 3);
    assert!(!stats.warm);
    assert_eq!(stats.packs_downloaded, 1);
    assert_eq!(store.calls().download, 2, "{:?}", store.calls());
    assert_refs_equal(&src.path, b.path());
    assert_fsck_clean(b.path());
}

/// A cold worker that fetches a small change uploads one pack of about the fetched size — not
/// the repository — and the result restores to the source.
async fn incremental_sync_uploads_only_the_delta(f: &Fixture) {
    let mut src = Source::new();
    let store = Arc::new(FaultStore::new(f.store.clone()));
    let first = Worker::new(store.clone(), "app")
        .sync(&src.url(), None)
        .await
        .expect("sync 1");
    let repo_bytes: u64 = first.committed.snapshot.manifest.packs.iter().map(|p| p.bytes).sum();
    assert!(repo_bytes > 1_500_000, "the fixture has a 1.5 MiB file: {repo_bytes}");

    src.advance(64);
    let b = Worker::new(store.clone(), "app");
    store.reset_counts();
    let s = b.sync(&src.url(), None).await.expect("incremental sync");
    let (fetched, c) = (s.fetched.bytes, &s.committed);
    assert!(
        fetched > 64 * 1024 && fetched < 256 * 1024,
        "fetched pack: {fetched} bytes"
    );
    assert_eq!(c.packs_uploaded, 1, "{c:?}");
    assert!(
        c.bytes_uploaded <= 2 * fetched,
        "uploaded {} for a fetched pack of {fetched}",
        c.bytes_uploaded
    );
    assert!(
        c.bytes_uploaded * 10 < repo_bytes,
        "uploaded {} of a {repo_bytes}-byte repository",
        c.bytes_uploaded
    );
    let calls = store.calls();
    assert_eq!((calls.upload, calls.put, calls.delete), (2, 1, 0), "{calls:?}");
    let manifest = &c.snapshot.manifest;
    assert_eq!(manifest.packs.len(), 2);
    let new: Vec<_> = manifest
        .packs
        .iter()
        .filter(|p| !first.committed.snapshot.manifest.packs.contains(p))
        .collect();
    assert_eq!(new.len(), 1);
    // `fetched` counts the wire; the cache stores a thin pack completed with the bases it
    // lacked (a few objects more), never a repack.
    assert!(
        new[0].bytes >= fetched && new[0].bytes <= 2 * fetched,
        "the pack uploaded is the pack fetched: {} for {fetched} received",
        new[0].bytes
    );

    let check = Worker::new(f.store.clone(), "app");
    check.restore().await.expect("cold restore");
    assert_refs_equal(&src.path, check.path());
    assert_fsck_clean(check.path());
}

/// With nothing changed, a sync writes nothing to the store — from a warm worker and from a
/// cold one — and the warm copy still counts as current afterwards.
async fn noop_commit_writes_nothing(f: &Fixture) {
    let src = Source::new();
    let store = Arc::new(FaultStore::new(f.store.clone()));
    let a = Worker::new(store.clone(), "app");
    let first = a.sync(&src.url(), None).await.expect("sync 1");

    store.reset_counts();
    let s = a.sync(&src.url(), None).await.expect("no-op sync");
    assert!(s.restored.warm);
    assert_eq!(s.fetched.bytes, 0);
    assert!(!s.committed.written, "{:?}", s.committed);
    assert_eq!(s.committed.snapshot, first.committed.snapshot);
    assert_eq!(store.calls().writes(), 0, "{:?}", store.calls());
    let snap = a.cache.load().await.unwrap();
    assert_eq!(snap.manifest.generation, 1);
    assert!(a.cache.is_warm(&snap), "the local copy is still current");

    let b = Worker::new(store.clone(), "app");
    store.reset_counts();
    let s = b.sync(&src.url(), None).await.expect("cold no-op sync");
    assert!(!s.committed.written);
    assert_eq!(store.calls().writes(), 0, "{:?}", store.calls());
    assert!(b.cache.is_warm(&snap));
}

// ---------------------------------------------------------------------------------------------
// Two workers

/// Two workers load the same generation and both commit a different change: exactly one
/// generation wins, the other gets `Conflict` (and overwrote nothing). After reloading,
/// restoring and re-applying its change, the loser commits, and both changes are there.
/// The set-up of a race: a seeded repo, two forks of the source (each with its own new branch),
/// and two workers that restored the same generation and fetched one fork each.
struct Race {
    _src: Source,
    forks: [(PathBuf, String); 2],
    workers: [Worker; 2],
    start: Snapshot,
}

impl Race {
    async fn new(f: &Fixture) -> Race {
        let src = Source::new();
        Worker::new(f.store.clone(), "app")
            .sync(&src.url(), None)
            .await
            .expect("seed");
        let forks = [src.fork("one.git", "topic-one"), src.fork("two.git", "topic-two")];
        let workers = [Worker::new(f.store.clone(), "app"), Worker::new(f.store.clone(), "app")];
        let (s1, _) = workers[0].restore().await.unwrap();
        let (s2, _) = workers[1].restore().await.unwrap();
        assert_eq!(s1, s2);
        for (w, (_, url)) in workers.iter().zip(&forks) {
            w.cache.invalidate_local().unwrap();
            fetch(w.path(), url, false).await;
        }
        Race {
            _src: src,
            forks,
            workers,
            start: s1,
        }
    }

    /// Both workers commit at once.
    async fn commit(&self) -> [Result<CommitOutcome, CacheError>; 2] {
        let [w1, w2] = &self.workers;
        let (r1, r2) = tokio::join!(
            w1.cache.commit(&self.start, local_state(w1.path())),
            w2.cache.commit(&self.start, local_state(w2.path())),
        );
        [r1, r2]
    }
}

async fn racing_workers_one_generation_wins_no_refs_lost(f: &Fixture) {
    let race = Race::new(f).await;
    let [(one_path, one), (two_path, two)] = &race.forks;
    let [w1, w2] = &race.workers;
    let s1 = &race.start;
    let [r1, r2] = race.commit().await;
    let (winner, loser, loser_url, won) = match (r1, r2) {
        (Ok(o), Err(e)) => (w1, w2, two, (o, e)),
        (Err(e), Ok(o)) => (w2, w1, one, (o, e)),
        other => panic!("exactly one commit must win: {other:?}"),
    };
    let (outcome, err) = won;
    assert!(
        matches!(&err, CacheError::Conflict { repo } if repo == "app"),
        "{err:?}"
    );
    assert!(err.is_transient());
    let current = winner.cache.load().await.unwrap();
    assert_eq!(current.manifest.generation, 2);
    assert_eq!(current, outcome.snapshot, "the winner's manifest stands");
    assert!(!loser.cache.is_warm(&current) && !loser.cache.is_warm(s1));

    // The loser starts over from the winner's state.
    let (snap, _) = loser.restore().await.expect("reload + restore");
    assert_eq!(mirrored_refs(loser.path()), mirrored_refs(winner.path()));
    loser.cache.invalidate_local().unwrap();
    fetch(loser.path(), loser_url, false).await;
    let retried = loser
        .cache
        .commit(&snap, local_state(loser.path()))
        .await
        .expect("retry commits");
    assert_eq!(retried.snapshot.manifest.generation, 3);

    let check = Worker::new(f.store.clone(), "app");
    check.restore().await.unwrap();
    let mut expected = mirrored_refs(one_path);
    expected.extend(mirrored_refs(two_path));
    assert!(expected.contains_key("refs/heads/topic-one") && expected.contains_key("refs/heads/topic-two"));
    assert_eq!(mirrored_refs(check.path()), expected, "no ref lost");
    assert_fsck_clean(check.path());
}

/// The loser of a race leaves its uploaded pack behind, named by no manifest. Garbage
/// collection leaves it while it is young (its commit might still be in flight) and deletes it
/// once old enough — it alone: every pack the manifest names stays, and the repo restores.
async fn orphaned_packs_of_a_lost_race_are_collected_once_old(f: &Fixture) {
    let race = Race::new(f).await;
    let winner = match race.commit().await {
        [Ok(_), Err(CacheError::Conflict { .. })] => &race.workers[0],
        [Err(CacheError::Conflict { .. }), Ok(_)] => &race.workers[1],
        other => panic!("exactly one commit must win: {other:?}"),
    };
    let current = winner.cache.load().await.unwrap();
    let named = pack_keys("app", &current);
    let stored = keys_under(&*f.store, "repos/app/packs/").await;
    let orphans: Vec<&String> = stored.iter().filter(|k| !named.contains(k)).collect();
    assert_eq!(orphans.len(), 2, "the loser's pack and index: {stored:?} vs {named:?}");

    let young = winner
        .cache
        .collect_garbage(&current.manifest, cache::ORPHAN_AGE)
        .await
        .unwrap();
    assert_eq!(young, 0, "young orphans are left alone");
    assert_eq!(keys_under(&*f.store, "repos/app/packs/").await, stored);

    let deleted = winner
        .cache
        .collect_garbage(&current.manifest, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(
        keys_under(&*f.store, "repos/app/packs/").await,
        named,
        "only the orphans went"
    );
    let check = Worker::new(f.store.clone(), "app");
    check.restore().await.expect("the repository still restores");
    assert_eq!(mirrored_refs(check.path()), mirrored_refs(winner.path()));
    assert_fsck_clean(check.path());
}

// ---------------------------------------------------------------------------------------------
// Leases

const LONG: Duration = Duration::from_secs(60);

async fn stored_lease(store: &dyn ObjectStore, repo: &str) -> LeaseRecord {
    lease::read(store, repo)
        .await
        .expect("read lease")
        .expect("a lease is stored")
}

#[track_caller]
fn expect_held<T: std::fmt::Debug>(r: Result<T, CacheError>, by: &str) -> u64 {
    match r {
        Err(e @ CacheError::LeaseHeld { .. }) => {
            assert!(e.is_transient());
            let CacheError::LeaseHeld { owner, expires_at } = e else {
                unreachable!()
            };
            assert_eq!(owner, by);
            expires_at
        }
        other => panic!("expected LeaseHeld by {by}, got {other:?}"),
    }
}

/// A free repo's lease is taken (and recorded as it says); another owner is refused while it is
/// fresh; after release the next owner takes it without a reclaim.
async fn lease_free_held_released(f: &Fixture) {
    let before = now_ms();
    let a = Lease::acquire(f.store.clone(), "app", "worker-a", LONG)
        .await
        .expect("free lease");
    let rec = a.record().await;
    assert_eq!(rec.owner, "worker-a");
    assert!(rec.acquired_at >= before && rec.acquired_at <= now_ms());
    assert_eq!(rec.heartbeat_at, rec.acquired_at);
    assert_eq!(rec.expires_at, rec.acquired_at + LONG.as_millis() as u64);
    assert!(!rec.released && rec.reclaimed_from.is_none());
    assert_eq!(stored_lease(&*f.store, "app").await, rec);
    assert!(a.check().is_ok() && !a.is_lost());

    let expires = expect_held(
        Lease::acquire(f.store.clone(), "app", "worker-b", LONG).await,
        "worker-a",
    );
    assert_eq!(expires, rec.expires_at);
    assert_eq!(
        stored_lease(&*f.store, "app").await,
        rec,
        "a refused acquire writes nothing"
    );
    // Other repos are independent.
    Lease::acquire(f.store.clone(), "other", "worker-b", LONG)
        .await
        .expect("another repo");

    a.release().await.expect("release");
    let released = stored_lease(&*f.store, "app").await;
    assert!(released.released && released.owner == "worker-a");
    let b = Lease::acquire(f.store.clone(), "app", "worker-b", LONG)
        .await
        .expect("released lease is free");
    let rec = b.record().await;
    assert_eq!(rec.owner, "worker-b");
    assert_eq!(rec.reclaimed_from, None, "a released lease is not reclaimed");
    assert_eq!(stored_lease(&*f.store, "app").await, rec);
}

/// A lease whose heartbeat stopped is reclaimed, and the reclaim names the previous owner; the
/// old holder finds out at its next renewal and stops (and never overwrites the new lease).
/// The same for a stale `lease.json` left by a crashed worker, and when two workers reclaim at
/// once only one gets it.
async fn lease_stale_is_reclaimed_and_the_old_holder_stops(f: &Fixture) {
    let a = Lease::acquire(f.store.clone(), "app", "worker-a", Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = now_ms();
    let b = Lease::acquire(f.store.clone(), "app", "worker-b", LONG)
        .await
        .expect("stale lease reclaimed");
    let rec = b.record().await;
    assert_eq!(rec.reclaimed_from.as_deref(), Some("worker-a"));
    assert!(rec.reclaimed_at.is_some_and(|t| t >= before && t <= now_ms()));
    assert_eq!(stored_lease(&*f.store, "app").await, rec, "the reclaim is recorded");

    assert!(matches!(a.renew().await, Err(CacheError::LeaseLost)));
    assert!(a.is_lost());
    assert!(matches!(a.check(), Err(CacheError::LeaseLost)));
    a.release().await.unwrap();
    assert_eq!(
        stored_lease(&*f.store, "app").await,
        rec,
        "the old holder leaves the new lease alone"
    );
    assert!(b.check().is_ok());

    // A lease.json whose heartbeat is long past, written by a worker that crashed.
    let crashed = LeaseRecord {
        owner: "crashed".into(),
        acquired_at: now_ms() - 600_000,
        heartbeat_at: now_ms() - 500_000,
        expires_at: now_ms() - 410_000,
        released: false,
        reclaimed_from: None,
        reclaimed_at: None,
    };
    let body = serde_json::to_vec(&crashed).unwrap();
    for repo in ["app2", "app3"] {
        f.store
            .put(&cache::keys::lease(repo), body.clone(), Condition::Always)
            .await
            .unwrap();
    }
    let c = Lease::acquire(f.store.clone(), "app2", "worker-c", LONG)
        .await
        .expect("reclaimed");
    assert_eq!(c.record().await.reclaimed_from.as_deref(), Some("crashed"));

    // Two workers reclaim the same stale lease at once: one wins.
    let (x, y) = tokio::join!(
        Lease::acquire(f.store.clone(), "app3", "worker-x", LONG),
        Lease::acquire(f.store.clone(), "app3", "worker-y", LONG),
    );
    let (won, lost) = match (x, y) {
        (Ok(l), Err(e)) | (Err(e), Ok(l)) => (l, e),
        other => panic!("exactly one reclaim must win: {other:?}"),
    };
    let winner = won.record().await;
    expect_held(Err::<(), _>(lost), &winner.owner);
    assert_eq!(stored_lease(&*f.store, "app3").await, winner);
}

/// A heartbeat keeps the lease of a sync that runs for several TTLs: nobody can take it, the
/// stored heartbeat moves, the holder's checks pass; release then frees it.
async fn lease_heartbeat_keeps_a_long_sync_alive(f: &Fixture) {
    let ttl = Duration::from_millis(1500);
    let a = Lease::acquire(f.store.clone(), "app", "worker-a", ttl).await.unwrap();
    let first = a.record().await;
    a.start_heartbeat();
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        expect_held(
            Lease::acquire(f.store.clone(), "app", "worker-b", ttl).await,
            "worker-a",
        );
        assert!(a.check().is_ok(), "after {:?}", started.elapsed());
    }
    let stored = stored_lease(&*f.store, "app").await;
    assert_eq!(stored.acquired_at, first.acquired_at);
    assert!(
        stored.heartbeat_at > first.heartbeat_at + ttl.as_millis() as u64,
        "{stored:?}"
    );
    assert!(stored.expires_at > now_ms());
    assert!(!a.is_lost());

    a.release().await.unwrap();
    let b = Lease::acquire(f.store.clone(), "app", "worker-b", ttl)
        .await
        .expect("released");
    assert_eq!(b.record().await.reclaimed_from, None);
    // The released holder's heartbeat is stopped: b keeps the lease.
    tokio::time::sleep(ttl).await;
    assert_eq!(stored_lease(&*f.store, "app").await.owner, "worker-b");
}

/// When someone else takes the lease over while a heartbeat runs, the holder sees it at its
/// next renewal (`is_lost`, `check` fails) and its release does not touch the new lease.
async fn lease_heartbeat_notices_a_takeover(f: &Fixture) {
    let ttl = Duration::from_millis(900);
    let a = Lease::acquire(f.store.clone(), "app", "worker-a", ttl).await.unwrap();
    a.start_heartbeat();
    let usurper = LeaseRecord {
        owner: "usurper".into(),
        acquired_at: now_ms(),
        heartbeat_at: now_ms(),
        expires_at: now_ms() + 60_000,
        released: false,
        reclaimed_from: Some("worker-a".into()),
        reclaimed_at: Some(now_ms()),
    };
    let body = serde_json::to_vec(&usurper).unwrap();
    f.store
        .put(&cache::keys::lease("app"), body, Condition::Always)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.is_lost() {
        assert!(Instant::now() < deadline, "the heartbeat did not notice the takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(a.check(), Err(CacheError::LeaseLost)));
    a.release().await.unwrap();
    assert_eq!(stored_lease(&*f.store, "app").await, usurper);
}

/// A renewal whose write landed but whose reply was lost leaves the lease ours: the next renewal
/// succeeds (it is not mistaken for a takeover), and release frees it for the next owner.
async fn lease_lost_renewal_reply_is_not_a_lost_lease(f: &Fixture) {
    let store = Arc::new(FaultStore::new(f.store.clone()));
    let a = Lease::acquire(store.clone(), "app", "worker-a", LONG).await.unwrap();
    store.inject(Rule::new(Op::Put, Fault::ReplyLost).key_contains("lease.json").nth(1));
    let r = a.renew().await;
    assert!(
        matches!(r, Err(CacheError::Store(StoreError::Unavailable { .. }))),
        "{r:?}"
    );
    a.renew().await.expect("the lease is still ours");
    assert!(!a.is_lost() && a.check().is_ok());
    assert_eq!(stored_lease(&*f.store, "app").await, a.record().await);

    // The same for release.
    store.inject(Rule::new(Op::Put, Fault::ReplyLost).key_contains("lease.json").nth(1));
    a.renew().await.unwrap_err();
    a.release().await.expect("release");
    assert!(stored_lease(&*f.store, "app").await.released);
    let b = Lease::acquire(f.store.clone(), "app", "worker-b", LONG)
        .await
        .expect("released");
    assert_eq!(b.record().await.reclaimed_from, None);
}

/// A holder whose renewals keep failing (store unreachable) must stop once its lease has
/// expired — another worker may take it at any moment, and does here.
async fn lease_check_fails_once_renewals_fail_past_the_ttl(f: &Fixture) {
    let store = Arc::new(FaultStore::new(f.store.clone()));
    let ttl = Duration::from_millis(600);
    let a = Lease::acquire(store.clone(), "app", "worker-a", ttl).await.unwrap();
    a.start_heartbeat();
    store.inject(Rule::new(Op::Put, Fault::Error).key_contains("lease.json"));
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert!(store.calls().faulted >= 1, "renewals were attempted");
    assert!(matches!(a.check(), Err(CacheError::LeaseLost)), "the lease expired");
    let b = Lease::acquire(f.store.clone(), "app", "worker-b", LONG)
        .await
        .expect("stale lease");
    assert_eq!(b.record().await.reclaimed_from.as_deref(), Some("worker-a"));
    assert!(matches!(a.check(), Err(CacheError::LeaseLost)));
}

// ---------------------------------------------------------------------------------------------
// Failures at every store call

/// Copy a local bare repository (`cp -a`).
fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

/// Put `repo` in the store at the state of the local copy `template` (a commit of a copy).
async fn seed_repo(store: &Arc<dyn ObjectStore>, template: &Path, repo: &str) -> TempDir {
    let dir = TempDir::new("gitferry-cache-seed-");
    copy_dir(template, &dir.path().join(format!("{repo}.git")));
    let c = RepoCache::new(store.clone(), dir.path(), repo);
    c.commit(&Snapshot::default(), local_state(c.path()))
        .await
        .expect("seed commit");
    dir
}

async fn fault_error_at_every_call_of_a_sync(f: &Fixture) {
    fault_at_every_call(f, Fault::Error).await;
}

async fn fault_reply_lost_at_every_call_of_a_sync(f: &Fixture) {
    fault_at_every_call(f, Fault::ReplyLost).await;
}

/// A compacting sync from a cold container — manifest read, download of two packs, fetch,
/// repack, upload of the new pack, manifest switch, deletion of the two old packs — with the
/// n-th store call failing, for every n: the store then restores to a valid repository at the
/// old or the new state (never a mix), and a retry by the same worker converges to the new one.
async fn fault_at_every_call(f: &Fixture, fault: Fault) {
    let inner = f.store.clone();
    let mut src = Source::new();
    let url = src.url();
    // The old state: two packs.
    let template = Worker::new(inner.clone(), "template");
    template.sync(&url, None).await.unwrap();
    src.advance(32);
    template.sync(&url, None).await.unwrap();
    let old = mirrored_refs(&src.path);
    assert_eq!(mirrored_refs(template.path()), old);
    src.change_everything();
    let new = mirrored_refs(&src.path);
    assert_ne!(old, new);

    // A clean run, to count the calls.
    let _seed = seed_repo(&inner, template.path(), "clean").await;
    let counting = Arc::new(FaultStore::new(inner.clone()));
    let clean = Worker::new(counting.clone(), "clean");
    let s = clean.sync(&url, Some(2)).await.expect("clean sync");
    assert_eq!(s.committed.packs_deleted, 2);
    let calls = counting.calls();
    assert_eq!(
        (
            calls.get,
            calls.download,
            calls.upload,
            calls.put,
            calls.delete,
            calls.list
        ),
        (1, 4, 2, 1, 4, 0),
        "{calls:?}"
    );
    assert_eq!(mirrored_refs(clean.path()), new);

    for n in 1..=calls.total() {
        let repo = format!("r{n}");
        let _seed = seed_repo(&inner, template.path(), &repo).await;
        let store = Arc::new(FaultStore::new(inner.clone()));
        store.inject(Rule::new(None, fault).nth(n));
        let w = Worker::new(store.clone(), &repo);
        let first = w.sync(&url, Some(2)).await;
        assert_eq!(store.calls().faulted, 1, "call {n} was hit");
        let what = format!("{fault:?} at call {n} of {}", calls.total());
        if let Err(e) = &first {
            assert!(e.is_transient(), "{what}: a store failure is worth a retry: {e}");
        }

        // Whatever happened, the store holds a valid repository: the old or the new one.
        let check = Worker::new(inner.clone(), &repo);
        check.restore().await.unwrap_or_else(|e| panic!("{what}: restore: {e}"));
        let got = mirrored_refs(check.path());
        assert!(got == old || got == new, "{what}: a mix of old and new refs: {got:?}");
        if first.is_ok() {
            assert_eq!(got, new, "{what}: the sync reported success");
        }
        assert_fsck_clean(check.path());

        // The same worker retries and converges.
        store.clear_faults();
        let retry = w
            .sync(&url, Some(2))
            .await
            .unwrap_or_else(|e| panic!("{what}: retry: {e}"));
        assert_eq!(mirrored_refs(w.path()), new, "{what}");
        assert_eq!(retry.committed.snapshot.manifest.packs.len(), 1, "{what}");
        let check = Worker::new(inner.clone(), &repo);
        check
            .restore()
            .await
            .unwrap_or_else(|e| panic!("{what}: restore after retry: {e}"));
        assert_eq!(mirrored_refs(check.path()), new, "{what}");
        assert_fsck_clean(check.path());
    }
}

// ---------------------------------------------------------------------------------------------
// Compaction

/// MAX_PACKS + 1 syncs leave as many packs; compaction makes one pack holding the same
/// repository. If the manifest switch fails, no old pack is deleted and the old manifest still
/// restores; once it succeeds, exactly the new pack is left in the store.
async fn compaction_keeps_the_repo_and_deletes_old_packs_only_after_the_switch(f: &Fixture) {
    let mut src = Source::new();
    let store = Arc::new(FaultStore::new(f.store.clone()));
    let w = Worker::new(store.clone(), "app");
    w.sync(&src.url(), None).await.unwrap();
    for _ in 0..MAX_PACKS {
        src.advance(1);
        w.sync(&src.url(), None).await.unwrap();
    }
    let (snap, stats) = w.restore().await.unwrap();
    assert!(stats.warm);
    assert_eq!(snap.manifest.packs.len(), MAX_PACKS + 1);
    let old_keys = pack_keys("app", &snap);
    assert_eq!(keys_under(&*f.store, "repos/app/packs/").await, old_keys);
    let before = Worker::new(f.store.clone(), "app");
    before.restore().await.unwrap();
    assert_refs_equal(&src.path, before.path());
    let objects = reachable_objects(before.path());
    assert_eq!(objects, reachable_objects(&src.path));

    // The switch fails: the new pack is uploaded, nothing is deleted.
    w.cache.invalidate_local().unwrap();
    assert!(
        !w.cache.compact_if_needed(MAX_PACKS + 1).await.unwrap(),
        "not past the threshold"
    );
    assert!(w.cache.compact_if_needed(MAX_PACKS).await.unwrap());
    store.reset_counts();
    store.inject(Rule::new(Op::Put, Fault::Error).key_contains("manifest.json"));
    let next = local_state(w.path());
    let failed = w.cache.commit(&snap, next.clone()).await;
    assert!(
        matches!(failed, Err(CacheError::Store(StoreError::Unavailable { .. }))),
        "{failed:?}"
    );
    assert_eq!(store.calls().delete, 0, "{:?}", store.calls());
    let listed = keys_under(&*f.store, "repos/app/packs/").await;
    assert!(
        old_keys.iter().all(|k| listed.contains(k)),
        "old packs must survive a failed switch"
    );
    assert_eq!(w.cache.load().await.unwrap(), snap, "the manifest did not change");
    let during = Worker::new(f.store.clone(), "app");
    during.restore().await.expect("the old manifest still restores");
    assert_refs_equal(&src.path, during.path());

    // The switch succeeds: then, and only then, the old packs go.
    store.clear_faults();
    store.reset_counts();
    let done = w.cache.commit(&snap, next).await.expect("compacting commit");
    assert!(done.written);
    assert_eq!(done.packs_deleted, MAX_PACKS + 1);
    assert_eq!(store.calls().delete, 2 * (MAX_PACKS as u64 + 1));
    assert_eq!(done.snapshot.manifest.packs.len(), 1);
    assert_eq!(done.snapshot.manifest.generation, snap.manifest.generation + 1);
    assert_eq!(
        keys_under(&*f.store, "repos/app/packs/").await,
        pack_keys("app", &done.snapshot)
    );

    let after = Worker::new(f.store.clone(), "app");
    let (_, stats) = after.restore().await.expect("restore of the compacted repo");
    assert_eq!(stats.packs_downloaded, 1);
    assert_refs_equal(&src.path, after.path());
    assert_eq!(refs(after.path()), refs(before.path()));
    assert_eq!(reachable_objects(after.path()), objects, "same objects");
    let packed = git(after.path(), ["count-objects", "-v"]);
    assert!(packed.contains("packs: 1"), "{packed}");
    assert_fsck_clean(after.path());
}

// ---------------------------------------------------------------------------------------------
// Integrity

/// Every way a stored pack can be damaged — garbage, one flipped byte, truncation, another
/// pack's index, a missing pack or index — makes restore fail with `Corrupt` naming the pack,
/// without installing it locally; repaired, the same restore works.
async fn integrity_corrupt_or_missing_packs_are_reported(f: &Fixture) {
    let mut src = Source::new();
    let w = Worker::new(f.store.clone(), "app");
    w.sync(&src.url(), None).await.unwrap();
    src.advance(32);
    let synced = w.sync(&src.url(), None).await.unwrap();
    let snap = synced.committed.snapshot;
    let [a, b] = [&snap.manifest.packs[0].name, &snap.manifest.packs[1].name];
    let local = |name: &str, ext: &str| w.path().join("objects/pack").join(format!("pack-{name}.{ext}"));
    let read = |name: &str, ext: &str| std::fs::read(local(name, ext)).unwrap();
    let key = |name: &str, ext: &str| format!("repos/app/packs/{name}.{ext}");

    let mut flipped = read(a, "pack");
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let mut truncated = read(a, "pack");
    truncated.truncate(truncated.len() - 100);
    enum Damage {
        Put(String, Vec<u8>),
        Delete(String),
    }
    let cases: Vec<(&str, Damage, &str, Vec<&str>)> = vec![
        (
            "garbage pack",
            Damage::Put(key(a, "pack"), pseudo_random_bytes(50_000, 3)),
            a,
            vec!["corrupt"],
        ),
        ("flipped byte", Damage::Put(key(a, "pack"), flipped), a, vec![]),
        ("truncated pack", Damage::Put(key(a, "pack"), truncated), a, vec![]),
        (
            "garbage index",
            Damage::Put(key(b, "idx"), pseudo_random_bytes(3000, 4)),
            b,
            vec![],
        ),
        (
            "another pack's index",
            Damage::Put(key(b, "idx"), read(a, "idx")),
            b,
            vec![],
        ),
        ("missing pack", Damage::Delete(key(b, "pack")), b, vec!["missing"]),
        ("missing index", Damage::Delete(key(a, "idx")), a, vec!["missing"]),
    ];
    for (what, damage, name, mut mentions) in cases {
        let (damaged_key, ext) = match &damage {
            Damage::Put(k, _) | Damage::Delete(k) => (k.clone(), k.rsplit('.').next().unwrap().to_owned()),
        };
        match damage {
            Damage::Put(k, body) => f.store.put(&k, body, Condition::Always).await.unwrap(),
            Damage::Delete(k) => f.store.delete(&k).await.map(|_| String::new()).unwrap(),
        };
        let cold = Worker::new(f.store.clone(), "app");
        mentions.push(name);
        let text = expect_corrupt(cold.restore().await, &mentions);
        assert!(!text.contains("panick"), "{what}: {text}");
        assert!(
            !local_pack_exists(cold.path(), name),
            "{what}: a damaged pack must not be installed"
        );
        assert!(!cold.cache.is_warm(&snap), "{what}");

        // Repaired, it restores.
        let original = local(name, &ext);
        f.store
            .upload(&damaged_key, &original, Condition::Always)
            .await
            .unwrap();
        let (_, stats) = cold
            .restore()
            .await
            .unwrap_or_else(|e| panic!("{what}: after repair: {e}"));
        assert!(stats.packs_downloaded >= 1);
        assert_refs_equal(&src.path, cold.path());
        assert_fsck_clean(cold.path());
    }

    // An unreadable manifest is not an error that would fail every sync: it loads as an empty
    // snapshot that says why, so the sync rebuilds the cache from the source and the next
    // commit replaces the object (conditional on its ETag).
    f.store
        .put("repos/app/manifest.json", b"{not json".to_vec(), Condition::Always)
        .await
        .unwrap();
    let snap = Worker::new(f.store.clone(), "app").cache.load().await.unwrap();
    assert!(
        snap.unreadable.as_deref().is_some_and(|w| w.contains("manifest.json")) && snap.etag.is_some(),
        "{snap:?}"
    );
    assert!(snap.manifest.packs.is_empty());
}

/// The rebuild `SyncManager` does on `Corrupt` (wipe the local copy, fetch everything from the
/// source, commit): when the source has not changed, the fetched pack has the name of the
/// damaged one, and the commit must upload it again (the manifest itself is already right), so
/// the next cold restore works — for a damaged pack and for a missing one.
async fn rebuild_after_corrupt_repairs_the_store(f: &Fixture) {
    let src = Source::new();
    let first = Worker::new(f.store.clone(), "app")
        .sync(&src.url(), None)
        .await
        .unwrap();
    let snap = first.committed.snapshot;
    let name = snap.manifest.packs[0].name.clone();
    let pack_key = cache::keys::pack("app", &name);
    for damage in ["garbage", "missing"] {
        if damage == "garbage" {
            f.store
                .put(&pack_key, pseudo_random_bytes(20_000, 5), Condition::Always)
                .await
                .unwrap();
        } else {
            f.store.delete(&pack_key).await.unwrap();
        }
        let w = Worker::new(f.store.clone(), "app");
        expect_corrupt(w.restore().await, &[&name]);
        w.cache.wipe_local().unwrap();
        fetch(w.path(), &src.url(), true).await;
        let rebuilt: Vec<String> = std::fs::read_dir(w.path().join("objects/pack"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pack"))
            .collect();
        assert_eq!(
            rebuilt,
            vec![format!("pack-{name}.pack")],
            "{damage}: the same pack again"
        );
        let c = w
            .cache
            .commit(&snap, local_state(w.path()))
            .await
            .expect("commit after rebuild");
        assert!(
            c.written && c.packs_uploaded == 1,
            "{damage}: the damaged pack is uploaded again: {c:?}"
        );
        assert_eq!(c.snapshot, snap, "{damage}: the manifest was right already");
        assert!(w.cache.is_warm(&snap));

        let check = Worker::new(f.store.clone(), "app");
        check
            .restore()
            .await
            .unwrap_or_else(|e| panic!("{damage}: restore after the rebuild: {e}"));
        assert_refs_equal(&src.path, check.path());
        assert_fsck_clean(check.path());
        // And a sync of the repaired cache is a no-op again.
        let again = check.sync(&src.url(), None).await.unwrap();
        assert!(!again.committed.written);
    }
}

fn local_pack_exists(repo: &Path, name: &str) -> bool {
    repo.join("objects/pack").join(format!("pack-{name}.idx")).exists()
        || repo.join("objects/pack").join(format!("pack-{name}.pack")).exists()
}

/// End to end: a sync that finds its cache corrupt rebuilds it from the source, pushes, and
/// leaves a store that cold-restores again — even when the rebuilt pack has the same name as
/// the damaged one (the source did not change), and when the pack was deleted outright.
async fn sync_manager_rebuilds_a_corrupt_cache_from_the_source(f: &Fixture) {
    use gitferry_core::config::Config;
    use gitferry_core::metrics::Metrics;
    use gitferry_core::notify::Notifier;
    use gitferry_core::request::SyncRequest;
    use gitferry_core::status::State;
    use gitferry_core::sync::{RepoOutcome, SyncManager, SyncOptions};

    let src = Source::new();
    for target in ["t1.git", "t2.git", "t3.git"] {
        src.servers.create_bare(target);
    }
    let manager = |targets: &[&str]| {
        let mut toml = format!("[repos.app]\nurl = \"{}\"\n", src.url());
        for t in targets {
            toml.push_str(&format!(
                "[[repos.app.targets]]\nname = \"{t}\"\nurl = \"{}\"\n",
                src.servers.daemon.url(t)
            ));
        }
        let config = Config::parse(&toml, Path::new("test.toml"), &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let work = TempDir::new("gitferry-cache-mgr-");
        let m = SyncManager::new(
            Arc::new(config),
            f.store.clone(),
            Notifier::with_urls(None, None),
            Metrics::discard(),
            SyncOptions {
                work_dir: work.path().to_owned(),
                owner: "test-worker".into(),
                lease_ttl: Duration::from_secs(30),
                deadline_margin: Duration::from_secs(2),
                max_local_bytes: 1 << 30,
                orphan_age: gitferry_core::cache::ORPHAN_AGE,
            },
        );
        (m, work)
    };
    let run = |m: SyncManager, slot: u64| async move {
        let out = m
            .handle_batch(
                &[SyncRequest::poll("app", slot)],
                Instant::now() + Duration::from_secs(120),
            )
            .await;
        match &out.repos[0].outcome {
            RepoOutcome::Synced(status) if status.state == State::Success => {}
            other => panic!("sync {slot}: {other:?}"),
        }
    };

    let (m, _work) = manager(&["t1.git"]);
    run(m, 1).await;
    assert_refs_equal(&src.path, &src.servers.path("t1.git"));
    let snap = Worker::new(f.store.clone(), "app").cache.load().await.unwrap();
    assert!(!snap.manifest.packs.is_empty());

    // 1. Garbage over every pack (a first mirror goes in batches of refs: a pack each; the
    // first batch is one ref, so the rebuild fetches a pack of the same name as a damaged one);
    // a new target makes the next sync real work; a cold container.
    for (i, p) in snap.manifest.packs.iter().enumerate() {
        f.store
            .put(
                &cache::keys::pack("app", &p.name),
                pseudo_random_bytes(10_000, 9 + i as u64),
                Condition::Always,
            )
            .await
            .unwrap();
    }
    expect_corrupt(Worker::new(f.store.clone(), "app").restore().await, &[]);
    let (m, _work) = manager(&["t1.git", "t2.git"]);
    run(m, 2).await;
    assert_refs_equal(&src.path, &src.servers.path("t2.git"));
    let check = Worker::new(f.store.clone(), "app");
    check.restore().await.expect("the rebuilt cache restores");
    assert_refs_equal(&src.path, check.path());
    assert_fsck_clean(check.path());

    // 2. The pack deleted outright.
    let snap = check.cache.load().await.unwrap();
    for p in &snap.manifest.packs {
        f.store.delete(&cache::keys::pack("app", &p.name)).await.unwrap();
    }
    expect_corrupt(Worker::new(f.store.clone(), "app").restore().await, &["missing"]);
    let (m, _work) = manager(&["t1.git", "t2.git", "t3.git"]);
    run(m, 3).await;
    assert_refs_equal(&src.path, &src.servers.path("t3.git"));
    let check = Worker::new(f.store.clone(), "app");
    check.restore().await.expect("the rebuilt cache restores");
    assert_refs_equal(&src.path, check.path());
    assert_fsck_clean(check.path());
}

// ---------------------------------------------------------------------------------------------
// Local disk budget

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(path).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    total
}

fn set_used(repo: &Path, secs_ago: u64) {
    let marker = std::fs::File::options()
        .write(true)
        .open(repo.join("gitferry-state"))
        .expect("marker");
    marker
        .set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

/// A committed (empty) repository `name` in `work`, padded to a known size.
async fn local_repo(store: &Arc<dyn ObjectStore>, work: &Path, name: &str) -> RepoCache {
    let c = RepoCache::new(store.clone(), work, name);
    let snap = c.load().await.unwrap();
    c.restore(&snap).await.unwrap();
    c.commit(&snap, NextState::default()).await.unwrap();
    std::fs::write(c.path().join("padding"), vec![7u8; 256 * 1024]).unwrap();
    c
}

/// `evict_lru` removes the least recently used repositories until the work directory fits, never
/// one in `keep` and nothing that is not a repository; a warm restore counts as a use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_lru_keeps_the_budget_and_the_kept_repos() {
    let store_dir = TempDir::new("gitferry-cache-store-");
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(store_dir.path().to_owned()));
    let work = TempDir::new("gitferry-cache-work-");
    let w = work.path();
    let [a, b, c] = [
        local_repo(&store, w, "a").await,
        local_repo(&store, w, "b").await,
        local_repo(&store, w, "c").await,
    ];
    for (r, age) in [(&a, 300), (&b, 200), (&c, 100)] {
        set_used(r.path(), age);
    }
    std::fs::create_dir(w.join("notes")).unwrap();
    std::fs::write(w.join("notes/big"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(w.join("file.git"), vec![0u8; 1 << 20]).unwrap();
    let size = |r: &RepoCache| dir_size(r.path());

    assert!(
        cache::evict_lru(w, u64::MAX, &[]).is_empty(),
        "within budget: nothing goes"
    );
    // Room for two: `a` is the least recently used but kept, so `b` goes.
    let removed = cache::evict_lru(w, size(&a) + size(&c), &[a.path()]);
    assert_eq!(removed, vec![b.path().to_owned()]);
    assert!(a.path().is_dir() && !b.path().exists() && c.path().is_dir());
    // Room for nothing: everything but the kept one.
    let removed = cache::evict_lru(w, 0, &[c.path()]);
    assert_eq!(removed, vec![a.path().to_owned()]);
    assert!(c.path().is_dir());
    assert!(
        w.join("notes/big").is_file() && w.join("file.git").is_file(),
        "only repositories are evicted"
    );

    // A warm restore is a use: `a` was committed long ago but just restored, `b` was not.
    let [a, b] = [local_repo(&store, w, "a2").await, local_repo(&store, w, "b2").await];
    set_used(a.path(), 300);
    set_used(b.path(), 200);
    let snap = a.load().await.unwrap();
    assert!(a.restore(&snap).await.unwrap().warm);
    let removed = cache::evict_lru(w, size(&a) + size(&c), &[c.path()]);
    assert_eq!(removed, vec![b.path().to_owned()], "the repository just restored stays");
    assert!(a.path().is_dir());
}

// ---------------------------------------------------------------------------------------------
// Benchmark (bench/cache.sh)

/// The cache benchmark: on a generated repository (`BENCH_ROOT/src.git`, see bench/cache.sh),
/// for the fs store and moto, cold restore time and bytes vs the repository's pack size, bytes
/// uploaded per incremental sync vs the fetched pack, and a warm no-op's store writes. Prints a
/// markdown table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by bench/cache.sh"]
async fn bench_cache() {
    let root = PathBuf::from(std::env::var("BENCH_ROOT").expect("BENCH_ROOT (see bench/cache.sh)"));
    let gen_repo = std::env::var("BENCH_GEN").expect("BENCH_GEN: path of bench/gen_repo.py");
    let commits: u64 = std::env::var("BENCH_COMMITS").map_or(3000, |v| v.parse().unwrap());
    let files: u64 = std::env::var("BENCH_FILES").map_or(4000, |v| v.parse().unwrap());
    let runs: u64 = std::env::var("BENCH_RUNS").map_or(3, |v| v.parse().unwrap());
    let src = root.join("src.git");
    let daemon = harness::GitDaemon::start(&root);
    let url = daemon.url("src.git");
    let repo_pack: u64 = std::fs::read_dir(src.join("objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let base_main = git(&src, ["rev-parse", "refs/heads/main"]);
    let mut rows = Vec::new();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    for kind in ["fs", "s3"] {
        // Both stores see the same repository and the same incremental commits.
        git(&src, ["update-ref", "refs/heads/main", &base_main]);
        let mut next_start = commits;
        let f = if kind == "fs" {
            fs_fixture().await
        } else {
            s3_fixture().await
        };
        let store = Arc::new(FaultStore::new(f.store.clone()));
        // Initial: fetch everything and commit it.
        let seed = Worker::new(store.clone(), "bench");
        let t = Instant::now();
        let first = seed.sync(&url, None).await.unwrap();
        let initial = t.elapsed();
        let initial_up = first.committed.bytes_uploaded;

        // Cold restores into fresh work directories.
        let (mut cold_ms, mut cold_bytes) = (Vec::new(), 0);
        for _ in 0..runs {
            let w = Worker::new(store.clone(), "bench");
            let t = Instant::now();
            let (_, stats) = w.restore().await.unwrap();
            cold_ms.push(ms(t.elapsed()));
            cold_bytes = stats.bytes_downloaded;
            assert_refs_equal(&src, w.path());
        }

        // Warm no-op syncs: zero store writes.
        let w = Worker::new(store.clone(), "bench");
        w.restore().await.unwrap();
        let (mut noop_ms, mut noop_writes, mut noop_calls) = (Vec::new(), 0, 0);
        for _ in 0..runs {
            store.reset_counts();
            let t = Instant::now();
            let s = w.sync(&url, None).await.unwrap();
            noop_ms.push(ms(t.elapsed()));
            assert!(!s.committed.written && s.restored.warm);
            noop_writes += store.calls().writes();
            noop_calls = store.calls().total();
        }

        // Incremental syncs: 20 new commits each, from the warm worker.
        let (mut inc_ms, mut ratios, mut fetched_b, mut uploaded_b) = (Vec::new(), Vec::new(), 0, 0);
        for run in 0..runs {
            let stream = std::process::Command::new("python3")
                .arg(&gen_repo)
                .args([
                    "--commits",
                    "20",
                    "--files",
                    &files.to_string(),
                    "--start",
                    &next_start.to_string(),
                ])
                .args(["--tag-every", "0", "--seed", &(run + 7).to_string()])
                .args(["--from-ref", &git(&src, ["rev-parse", "refs/heads/main"])])
                .output()
                .expect("gen_repo.py runs");
            assert!(stream.status.success());
            next_start += 20;
            let mut import = harness::git_cmd(&src)
                .args(["fast-import", "--quiet", "--force"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut import.stdin.take().unwrap(), &stream.stdout).unwrap();
            assert!(import.wait().unwrap().success());
            store.reset_counts();
            let t = Instant::now();
            let s = w.sync(&url, None).await.unwrap();
            inc_ms.push(ms(t.elapsed()));
            assert_eq!(s.committed.packs_uploaded, 1);
            ratios.push(s.committed.bytes_uploaded as f64 / s.fetched.bytes as f64);
            fetched_b = s.fetched.bytes;
            uploaded_b = s.committed.bytes_uploaded;
            assert_refs_equal(&src, w.path());
        }
        assert_fsck_clean(w.path());
        rows.push(format!(
            "| {kind} | {:.0} | {:.1} | {:.0} | {:.1} | {:.3} | {:.1} | {noop_writes} ({noop_calls} calls per sync) | {:.0} | {fetched_b} | {uploaded_b} | {:.2} |",
            ms(initial),
            initial_up as f64 / 1048576.0,
            median(cold_ms),
            cold_bytes as f64 / 1048576.0,
            cold_bytes as f64 / repo_pack as f64,
            median(noop_ms),
            median(inc_ms),
            median(ratios.clone()),
        ));
    }
    // Lines for bench/cache.sh start with "BENCH:".
    println!(
        "BENCH: Repository pack (`git repack -adq`): {repo_pack} bytes ({:.1} MiB). Median of {runs} runs per figure; incremental = 20 new commits per run, synced from the warm container.",
        repo_pack as f64 / 1048576.0
    );
    println!("BENCH:");
    println!(
        "BENCH: | store | initial fetch + commit ms | uploaded MiB | cold restore ms | cold restore MiB | cold bytes / repo pack | warm no-op sync ms | store writes in the no-op syncs | incremental sync ms | fetched pack B (last) | uploaded B (last) | uploaded / fetched (median) |"
    );
    println!("BENCH: |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("BENCH: {r}");
    }
}
