//! The `ObjectStore` test-suite: the same cases run over every adapter — `FsStore` on a temporary
//! directory and `S3Store` on a real S3 emulator (moto, one server per test, see
//! `harness::moto`) — because the cache relies on them behaving identically. The fault-injection
//! wrapper is tested over both too. Then adapter-specific cases: for the local store, exclusion
//! between *processes* and what a crash mid-write leaves behind; for S3, pagination, key
//! prefixes, error classification and configuration from the environment.
//!
//! Cross-process cases re-run this test binary as a helper process (see [`subprocess_helper`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitferry_aws::S3Store;
use gitferry_core::store::fault::{Calls, Fault, FaultStore, Op, Rule};
use gitferry_core::store::fs::FsStore;
use gitferry_core::store::{Condition, ObjectInfo, ObjectStore, StoreError};
use harness::TempDir;
use harness::moto::MotoServer;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A store under test, plus what keeps it alive and a scratch directory for local files.
struct Fixture {
    store: Arc<dyn ObjectStore>,
    /// The local store's root (`None` for S3).
    fs_root: Option<PathBuf>,
    scratch: TempDir,
    _moto: Option<MotoServer>,
    _root: Option<TempDir>,
}

impl Fixture {
    fn file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

async fn fs_fixture() -> Fixture {
    let root = TempDir::new("gitferry-store-");
    let store_root = root.path().join("store");
    Fixture {
        store: Arc::new(FsStore::new(store_root.clone())),
        fs_root: Some(store_root),
        scratch: TempDir::new("gitferry-scratch-"),
        _moto: None,
        _root: Some(root),
    }
}

async fn s3_fixture() -> Fixture {
    let moto = tokio::task::spawn_blocking(MotoServer::start)
        .await
        .expect("moto starts");
    let (client, bucket) = moto.client_with_bucket().await;
    // A prefix, as deployments use: everything must work through it.
    let store = S3Store::new(client, bucket, "deploy/test").expect("valid store");
    Fixture {
        store: Arc::new(store),
        fs_root: None,
        scratch: TempDir::new("gitferry-scratch-"),
        _moto: Some(moto),
        _root: None,
    }
}

// Each case becomes one test per adapter: `fs::case` and `s3::case`.
harness::store_suite!(
    put_get_roundtrip,
    if_absent_creates_once,
    if_match_guards_overwrites,
    concurrent_conditional_writers_one_wins,
    delete_is_idempotent,
    list_by_prefix_sorted,
    large_file_upload_download,
    small_file_upload_conditions,
    invalid_keys_refused,
    download_missing_is_not_found,
    fault_reply_lost_write_happened,
    fault_nth_error_and_counts,
);

// ---------------------------------------------------------------------------------------------
// Helpers

#[track_caller]
fn assert_precondition_failed<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    match r {
        Err(StoreError::PreconditionFailed { .. }) => {}
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(e @ StoreError::Failed { .. }) => {
            assert!(!e.is_transient(), "{what}: invalid input must be permanent");
            assert!(e.to_string().contains("invalid"), "{what}: {e}");
        }
        other => panic!("{what}: expected Failed (invalid), got {other:?}"),
    }
}

#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(r: Result<T, StoreError>) -> StoreError {
    match r {
        Err(e @ StoreError::Unavailable { .. }) => {
            assert!(e.is_transient());
            e
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

async fn body_of(store: &dyn ObjectStore, key: &str) -> Option<Vec<u8>> {
    store.get(key).await.expect("get").map(|o| o.body)
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn keys(list: &[ObjectInfo]) -> Vec<&str> {
    list.iter().map(|o| o.key.as_str()).collect()
}

/// Every regular file under `dir`, relative, whatever its name (to catch leftovers).
fn files_on_disk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// The suite

async fn put_get_roundtrip(f: &Fixture) {
    let s = &*f.store;
    assert_eq!(s.get("repos/a/manifest.json").await.unwrap(), None);

    let e1 = s
        .put("repos/a/manifest.json", b"v1".to_vec(), Condition::Always)
        .await
        .unwrap();
    assert!(!e1.is_empty() && !e1.contains('"'), "ETag without quotes: {e1:?}");
    let got = s.get("repos/a/manifest.json").await.unwrap().expect("object");
    assert_eq!(got.body, b"v1");
    assert_eq!(got.etag, e1, "get reports the ETag put returned");

    let e2 = s
        .put("repos/a/manifest.json", b"v2".to_vec(), Condition::Always)
        .await
        .unwrap();
    assert_ne!(e1, e2, "new content, new ETag");
    let got = s.get("repos/a/manifest.json").await.unwrap().expect("object");
    assert_eq!((got.body.as_slice(), got.etag.as_str()), (&b"v2"[..], e2.as_str()));

    // Same content again: ETags are content digests on both adapters.
    let e3 = s
        .put("repos/a/manifest.json", b"v1".to_vec(), Condition::Always)
        .await
        .unwrap();
    assert_eq!(e3, e1);

    // Empty objects are objects.
    let e = s.put("empty", Vec::new(), Condition::IfAbsent).await.unwrap();
    let got = s.get("empty").await.unwrap().expect("empty object exists");
    assert!(got.body.is_empty());
    assert_eq!(got.etag, e);
}

async fn if_absent_creates_once(f: &Fixture) {
    let s = &*f.store;
    let e = s
        .put("repos/a/lease.json", b"first".to_vec(), Condition::IfAbsent)
        .await
        .unwrap();
    assert_precondition_failed(
        s.put("repos/a/lease.json", b"second".to_vec(), Condition::IfAbsent)
            .await,
    );
    let got = s.get("repos/a/lease.json").await.unwrap().unwrap();
    assert_eq!((got.body.as_slice(), got.etag), (&b"first"[..], e));

    // After a delete, creating works again.
    s.delete("repos/a/lease.json").await.unwrap();
    s.put("repos/a/lease.json", b"third".to_vec(), Condition::IfAbsent)
        .await
        .unwrap();
    assert_eq!(body_of(s, "repos/a/lease.json").await.unwrap(), b"third");
}

async fn if_match_guards_overwrites(f: &Fixture) {
    let s = &*f.store;
    let k = "repos/a/manifest.json";
    let e1 = s.put(k, b"gen 1".to_vec(), Condition::IfAbsent).await.unwrap();
    let e2 = s
        .put(k, b"gen 2".to_vec(), Condition::IfMatch(e1.clone()))
        .await
        .unwrap();
    assert_ne!(e1, e2);

    // A stale writer (still holding e1) must not overwrite gen 2.
    assert_precondition_failed(s.put(k, b"stale".to_vec(), Condition::IfMatch(e1.clone())).await);
    let got = s.get(k).await.unwrap().unwrap();
    assert_eq!((got.body.as_slice(), got.etag.as_str()), (&b"gen 2"[..], e2.as_str()));

    // If-Match on a missing object: the condition does not hold, nothing is created.
    assert_precondition_failed(
        s.put(
            "repos/none/manifest.json",
            b"x".to_vec(),
            Condition::IfMatch(e2.clone()),
        )
        .await,
    );
    assert_eq!(s.get("repos/none/manifest.json").await.unwrap(), None);

    // A made-up ETag fails too.
    assert_precondition_failed(s.put(k, b"x".to_vec(), Condition::IfMatch("0123abcd".into())).await);
    assert_eq!(body_of(s, k).await.unwrap(), b"gen 2");
}

async fn concurrent_conditional_writers_one_wins(f: &Fixture) {
    const WRITERS: usize = 4;
    let k = "repos/race/manifest.json";
    for round in 0..5 {
        // Race on If-Match of the same ETag...
        let base = f
            .store
            .put(k, format!("base {round}").into_bytes(), Condition::Always)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, base) = (f.store.clone(), base.clone());
                let body = format!("round {round} writer {w}").into_bytes();
                tokio::spawn(async move {
                    let r = store.put(k, body.clone(), Condition::IfMatch(base)).await;
                    (body, r)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (body, Ok(etag)) => winners.push((body, etag)),
                (_, r) => assert_precondition_failed(r),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one If-Match writer wins");
        let got = f.store.get(k).await.unwrap().unwrap();
        assert_eq!(
            (&got.body, &got.etag),
            (&winners[0].0, &winners[0].1),
            "the winner's write is what is stored"
        );

        // ...and on If-None-Match: * of a fresh key.
        let fresh = format!("repos/race/lease-{round}.json");
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, fresh) = (f.store.clone(), fresh.clone());
                tokio::spawn(async move { store.put(&fresh, vec![w as u8], Condition::IfAbsent).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                r => assert_precondition_failed(r),
            }
        }
        assert_eq!(ok, 1, "round {round}: exactly one creator wins");
    }
}

async fn delete_is_idempotent(f: &Fixture) {
    let s = &*f.store;
    s.delete("never/existed").await.unwrap();
    s.put("repos/a/x", b"x".to_vec(), Condition::Always).await.unwrap();
    s.put("repos/a/y", b"y".to_vec(), Condition::Always).await.unwrap();
    s.delete("repos/a/x").await.unwrap();
    assert_eq!(s.get("repos/a/x").await.unwrap(), None);
    s.delete("repos/a/x").await.unwrap();
    assert_eq!(keys(&s.list("repos/").await.unwrap()), ["repos/a/y"]);
    // Deleted keys can be created again, even conditionally.
    s.put("repos/a/x", b"x2".to_vec(), Condition::IfAbsent).await.unwrap();
    assert_eq!(body_of(s, "repos/a/x").await.unwrap(), b"x2");
}

async fn list_by_prefix_sorted(f: &Fixture) {
    let s = &*f.store;
    let objects: &[(&str, &[u8])] = &[
        ("repos/a/packs/2.pack", b"22"),
        ("repos/a/manifest.json", b"{}"),
        ("repos/a/packs/1.pack", b"1"),
        ("repos/ab/manifest.json", b"ab"),
        ("repos/b/lease.json", b"lease"),
        ("top", b"t"),
    ];
    let mut etags = std::collections::HashMap::new();
    let before = harness::now_ms();
    // Conditional and unconditional writes, so a local store creates locks and temporary
    // files along the way.
    for (i, (k, body)) in objects.iter().enumerate() {
        let cond = if i % 2 == 0 {
            Condition::IfAbsent
        } else {
            Condition::Always
        };
        etags.insert(*k, s.put(k, body.to_vec(), cond).await.unwrap());
    }

    let a = s.list("repos/a/").await.unwrap();
    assert_eq!(
        keys(&a),
        ["repos/a/manifest.json", "repos/a/packs/1.pack", "repos/a/packs/2.pack"]
    );
    // Listings say when each object was written (S3 has second precision).
    let after = harness::now_ms();
    for o in &a {
        let at = o
            .modified_ms
            .unwrap_or_else(|| panic!("{}: no modification time", o.key));
        assert!(
            before - 1000 <= at && at <= after + 1000,
            "{}: {at} not in {before}..{after}",
            o.key
        );
    }
    for o in &a {
        let body = objects.iter().find(|(k, _)| *k == o.key).unwrap().1;
        assert_eq!(o.size, body.len() as u64, "{}", o.key);
        assert_eq!(o.etag, etags[o.key.as_str()], "{}", o.key);
    }
    // A prefix is a string prefix, not a directory.
    assert_eq!(
        keys(&s.list("repos/a").await.unwrap()),
        [
            "repos/a/manifest.json",
            "repos/a/packs/1.pack",
            "repos/a/packs/2.pack",
            "repos/ab/manifest.json"
        ]
    );
    assert_eq!(
        keys(&s.list("repos/a/packs/1").await.unwrap()),
        ["repos/a/packs/1.pack"]
    );
    // Everything: exactly what was put, sorted — no lock or temporary files.
    let mut all: Vec<&str> = objects.iter().map(|(k, _)| *k).collect();
    all.sort();
    assert_eq!(keys(&s.list("").await.unwrap()), all);
    assert!(s.list("nothing/").await.unwrap().is_empty());
    assert!(s.list("repos/c").await.unwrap().is_empty());

    if let Some(root) = &f.fs_root {
        // The local store did leave its own files around; the listing must not show them.
        let on_disk = files_on_disk(root);
        assert!(
            on_disk.iter().any(|p| p.contains(".gitferry-locks")),
            "lock files exist on disk: {on_disk:?}"
        );
    }
    for bad in ["/repos", "../", "repos//", "./repos"] {
        assert_invalid(s.list(bad).await, bad);
    }
}

async fn large_file_upload_download(f: &Fixture) {
    const SIZE: usize = 20 * 1024 * 1024; // above S3Store's multipart threshold
    let s = &*f.store;
    let src = f.file("pack-1.pack");
    std::fs::write(&src, harness::pseudo_random_bytes(SIZE, 1)).unwrap();
    let k = "repos/a/packs/1.pack";

    let etag = s.upload(k, &src, Condition::IfAbsent).await.unwrap();
    assert!(!etag.is_empty() && !etag.contains('"'));
    if f.fs_root.is_none() {
        // S3's ETag of a multipart object is `md5-PARTS`: 20 MiB in 8 MiB parts.
        assert!(etag.ends_with("-3"), "uploaded in 3 parts: {etag}");
    }

    let dest = f.file("downloaded.pack");
    std::fs::write(
        &dest,
        b"old content that must be truncated away, and longer than nothing",
    )
    .unwrap();
    let info = s.download(k, &dest).await.unwrap();
    assert_eq!(
        info,
        ObjectInfo {
            key: k.into(),
            size: SIZE as u64,
            etag: etag.clone(),
            modified_ms: info.modified_ms,
        }
    );
    assert_eq!(
        sha256_file(&dest),
        sha256_file(&src),
        "downloaded bytes equal uploaded bytes"
    );
    assert_eq!(s.list("repos/a/packs/").await.unwrap(), [info]);

    // Conditions hold for large (multipart) uploads too.
    assert_precondition_failed(s.upload(k, &src, Condition::IfAbsent).await);
    let src2 = f.file("pack-2.pack");
    std::fs::write(&src2, harness::pseudo_random_bytes(SIZE + 12345, 2)).unwrap();
    let etag2 = s.upload(k, &src2, Condition::IfMatch(etag.clone())).await.unwrap();
    assert_ne!(etag2, etag);
    assert_precondition_failed(s.upload(k, &src, Condition::IfMatch(etag.clone())).await);
    let info = s.download(k, &dest).await.unwrap();
    assert_eq!((info.size, info.etag), ((SIZE + 12345) as u64, etag2));
    assert_eq!(
        sha256_file(&dest),
        sha256_file(&src2),
        "the stale upload did not overwrite"
    );

    // Nothing but the object is left behind (aborted uploads, temporary files).
    assert_eq!(keys(&s.list("").await.unwrap()), [k]);
    if let Some(root) = &f.fs_root {
        let left: Vec<_> = files_on_disk(root)
            .into_iter()
            .filter(|p| !p.contains(".gitferry-locks"))
            .collect();
        assert_eq!(left, [k], "no temporary files remain");
    }
}

async fn small_file_upload_conditions(f: &Fixture) {
    let s = &*f.store;
    let (a, b) = (f.file("a.idx"), f.file("b.idx"));
    std::fs::write(&a, b"index a").unwrap();
    std::fs::write(&b, b"index b").unwrap();
    let k = "repos/a/packs/1.idx";
    let e1 = s.upload(k, &a, Condition::IfAbsent).await.unwrap();
    assert_precondition_failed(s.upload(k, &b, Condition::IfAbsent).await);
    assert_eq!(
        s.get(k).await.unwrap().unwrap().etag,
        e1,
        "upload and get agree on the ETag"
    );
    // An uploaded object and a put one of the same content have the same ETag.
    assert_eq!(s.put("same", b"index a".to_vec(), Condition::Always).await.unwrap(), e1);
    let e2 = s.upload(k, &b, Condition::IfMatch(e1.clone())).await.unwrap();
    assert_precondition_failed(s.upload(k, &a, Condition::IfMatch(e1)).await);
    let got = s.get(k).await.unwrap().unwrap();
    assert_eq!((got.body.as_slice(), got.etag), (&b"index b"[..], e2));

    // A missing source file is a permanent local error, and nothing is written.
    let r = s
        .upload("repos/a/packs/2.idx", &f.file("missing"), Condition::Always)
        .await;
    assert!(matches!(r, Err(StoreError::Failed { .. })), "{r:?}");
    assert_eq!(s.get("repos/a/packs/2.idx").await.unwrap(), None);
}

async fn invalid_keys_refused(f: &Fixture) {
    let s = &*f.store;
    let src = f.file("src");
    std::fs::write(&src, b"x").unwrap();
    let dest = f.file("dest");
    for key in ["../x", "/abs", "a//b", "", "a/./b", "a/../../b", "a\\b", "trailing/"] {
        assert_invalid(s.get(key).await, key);
        assert_invalid(s.put(key, b"x".to_vec(), Condition::Always).await, key);
        assert_invalid(s.put(key, b"x".to_vec(), Condition::IfAbsent).await, key);
        assert_invalid(s.delete(key).await, key);
        assert_invalid(s.download(key, &dest).await, key);
        assert_invalid(s.upload(key, &src, Condition::Always).await, key);
    }
    assert!(s.list("").await.unwrap().is_empty(), "nothing was written");
    assert!(!f.scratch.path().join("x").exists() && !Path::new("/abs").exists());
}

async fn download_missing_is_not_found(f: &Fixture) {
    let s = &*f.store;
    let dest = f.file("dest");
    match s.download("repos/a/packs/missing.pack", &dest).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "repos/a/packs/missing.pack"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Also when a "directory" of the key is an object.
    s.put("repos/a", b"not a directory".to_vec(), Condition::Always)
        .await
        .unwrap();
    assert!(matches!(
        s.download("repos/a/x", &dest).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get("repos/a/x").await.unwrap(), None);
}

async fn fault_reply_lost_write_happened(f: &Fixture) {
    let fault = Arc::new(FaultStore::new(f.store.clone()));
    let s: Arc<dyn ObjectStore> = fault.clone();
    fault.inject(Rule::new(Op::Put, Fault::ReplyLost).nth(1));

    let k = "repos/a/manifest.json";
    assert_unavailable(s.put(k, b"gen 1".to_vec(), Condition::IfAbsent).await);
    // The write happened all the same...
    let got = f
        .store
        .get(k)
        .await
        .unwrap()
        .expect("the write whose reply was lost is stored");
    assert_eq!(got.body, b"gen 1");
    // ...so the caller's natural retry now fails its own condition, and must re-read.
    assert_precondition_failed(s.put(k, b"gen 1".to_vec(), Condition::IfAbsent).await);
    assert_eq!(s.get(k).await.unwrap().unwrap(), got);

    // Upload: same.
    fault.inject(Rule::new(Op::Upload, Fault::ReplyLost));
    let src = f.file("pack");
    std::fs::write(&src, b"pack bytes").unwrap();
    assert_unavailable(s.upload("repos/a/packs/1.pack", &src, Condition::IfAbsent).await);
    assert_eq!(body_of(&*f.store, "repos/a/packs/1.pack").await.unwrap(), b"pack bytes");

    assert_eq!(
        fault.calls(),
        Calls {
            get: 1,
            put: 2,
            upload: 1,
            faulted: 2,
            ..Calls::default()
        }
    );
}

async fn fault_nth_error_and_counts(f: &Fixture) {
    let fault = Arc::new(FaultStore::new(f.store.clone()));
    let s: Arc<dyn ObjectStore> = fault.clone();
    for k in ["a/one", "b/two"] {
        f.store.put(k, k.as_bytes().to_vec(), Condition::Always).await.unwrap();
    }

    // The 2nd get of a key containing "two" fails; other gets, and other keys, are untouched.
    fault.inject(Rule::new(Op::Get, Fault::Error).key_contains("two").nth(2));
    assert!(s.get("a/one").await.unwrap().is_some());
    assert!(s.get("b/two").await.unwrap().is_some());
    assert!(s.get("a/one").await.unwrap().is_some());
    let e = assert_unavailable(s.get("b/two").await);
    assert!(e.to_string().contains("injected"), "{e}");
    assert!(s.get("b/two").await.unwrap().is_some());

    // An injected Error means nothing happened.
    fault.inject(Rule::new(Op::Put, Fault::Error).nth(1));
    assert_unavailable(s.put("c/three", b"3".to_vec(), Condition::Always).await);
    assert_eq!(
        f.store.get("c/three").await.unwrap(),
        None,
        "an Error fault does not write"
    );
    s.put("c/three", b"3".to_vec(), Condition::Always).await.unwrap();

    // A timeout takes its time, and does nothing either.
    fault.inject(Rule::new(Op::Delete, Fault::Timeout(Duration::from_millis(200))));
    let t = Instant::now();
    assert_unavailable(s.delete("c/three").await);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(
        f.store.get("c/three").await.unwrap().is_some(),
        "a timed-out delete does not delete"
    );

    // Rules for any operation.
    fault.inject(Rule::new(None, Fault::Error).key_contains("zzz"));
    assert_unavailable(s.list("zzz").await);
    assert_unavailable(s.download("zzz", &f.file("d")).await);
    assert_eq!(s.list("a/").await.unwrap().len(), 1);

    let expected = Calls {
        get: 5,
        put: 2,
        delete: 1,
        list: 2,
        download: 1,
        upload: 0,
        faulted: 5,
    };
    assert_eq!(fault.calls(), expected);
    assert_eq!(fault.calls().total(), 11);
    assert_eq!(fault.calls().writes(), 3);
    assert_eq!(fault.calls().of(Op::Get), 5);

    fault.reset_counts();
    assert_eq!(fault.calls(), Calls::default());
    fault.clear_faults();
    s.delete("c/three").await.unwrap();
    assert_eq!(s.list("zzz").await.unwrap(), []);
    assert_eq!(
        fault.calls(),
        Calls {
            delete: 1,
            list: 1,
            ..Calls::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Local store only: other processes and crashes

/// Entry point of the helper processes: does nothing in a normal test run. With
/// `GITFERRY_STORE_HELPER` set, it is one of the other processes of a cross-process case.
#[test]
fn subprocess_helper() {
    let Ok(mode) = std::env::var("GITFERRY_STORE_HELPER") else {
        return;
    };
    let root = PathBuf::from(std::env::var("GITFERRY_STORE_ROOT").expect("root"));
    let key = std::env::var("GITFERRY_STORE_KEY").expect("key");
    let store = FsStore::new(root);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match mode.as_str() {
        // Hold the key's lock, as a writer in its critical section would, until killed.
        "hold-lock" => {
            let path = store.lock_path(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap();
            lock.lock().unwrap();
            // libtest may have written "test subprocess_helper ... " on this line already.
            println!("\n{LOCKED}");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        // Read-modify-write a counter N times with If-Match, retrying on conflicts.
        "increment" => {
            let n: u32 = std::env::var("GITFERRY_STORE_N").unwrap().parse().unwrap();
            rt.block_on(increment(&store, &key, n));
        }
        // Upload from a file (a FIFO the parent feeds, then kills us mid-way).
        "upload" => {
            let src = PathBuf::from(std::env::var("GITFERRY_STORE_SRC").unwrap());
            rt.block_on(store.upload(&key, &src, Condition::Always)).unwrap();
        }
        other => panic!("unknown helper mode {other}"),
    }
}

const LOCKED: &str = "gitferry-helper: locked";

/// A helper process, killed if the test ends (or fails) while it still runs.
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn helper(mode: &str, root: &Path, key: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "subprocess_helper", "--nocapture", "--test-threads=1"])
        .env("GITFERRY_STORE_HELPER", mode)
        .env("GITFERRY_STORE_ROOT", root)
        .env("GITFERRY_STORE_KEY", key)
        // Its own libtest report would only clutter ours; panics still show on stderr.
        .stdout(Stdio::null());
    cmd
}

async fn increment(store: &FsStore, key: &str, n: u32) {
    for _ in 0..n {
        loop {
            let (value, cond) = match store.get(key).await.unwrap() {
                Some(o) => (
                    String::from_utf8(o.body).unwrap().parse::<u32>().unwrap(),
                    Condition::IfMatch(o.etag),
                ),
                None => (0, Condition::IfAbsent),
            };
            match store.put(key, (value + 1).to_string().into_bytes(), cond).await {
                Ok(_) => break,
                Err(StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// A writer in another process holding a key's lock excludes our conditional write until it
/// lets go — here by dying, which must release the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_lock_excludes_other_processes_and_dies_with_them() {
    let f = fs_fixture().await;
    let root = f.fs_root.clone().unwrap();
    let key = "repos/a/manifest.json";
    let mut child = Helper(helper("hold-lock", &root, key).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    while line.trim() != LOCKED {
        line.clear();
        assert_ne!(out.read_line(&mut line).unwrap(), 0, "helper exited before locking");
    }

    let store = f.store.clone();
    let write = tokio::spawn(async move { store.put(key, b"mine".to_vec(), Condition::IfAbsent).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!write.is_finished(), "the write waits for the other process's lock");
    assert_eq!(f.store.get(key).await.unwrap(), None);

    drop(child); // killed: a crash, and the kernel drops its lock
    let etag = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("write proceeds")
        .unwrap()
        .unwrap();
    assert_eq!(f.store.get(key).await.unwrap().unwrap().etag, etag);
}

/// Two processes (and two tasks in this one) doing If-Match read-modify-write on one key lose no
/// update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_conditional_writes_across_processes_lose_nothing() {
    const N: u32 = 40;
    let f = fs_fixture().await;
    let root = f.fs_root.clone().unwrap();
    let key = "counter";
    let mut child = Helper(
        helper("increment", &root, key)
            .env("GITFERRY_STORE_N", N.to_string())
            .spawn()
            .unwrap(),
    );
    let store = FsStore::new(root.clone());
    let (a, b) = (store.clone(), store.clone());
    tokio::join!(increment(&a, key, N), increment(&b, key, N));
    assert!(child.0.wait().unwrap().success(), "helper process succeeded");
    let value = String::from_utf8(body_of(&store, key).await.unwrap()).unwrap();
    assert_eq!(
        value,
        (3 * N).to_string(),
        "every increment of 3 writers landed exactly once"
    );
}

/// A writer killed mid-upload leaves the previous object intact and its partial temporary file
/// invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_crash_mid_write_leaves_no_partial_object() {
    let f = fs_fixture().await;
    let root = f.fs_root.clone().unwrap();
    let key = "repos/a/packs/1.pack";
    let old = f
        .store
        .put(key, b"complete old object".to_vec(), Condition::Always)
        .await
        .unwrap();

    let fifo = f.file("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let child = Helper(
        helper("upload", &root, key)
            .env("GITFERRY_STORE_SRC", &fifo)
            .spawn()
            .unwrap(),
    );
    // Opening a FIFO blocks until the reader opens it: bound the wait in case the helper fails.
    let feed = tokio::task::spawn_blocking(move || {
        let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        pipe.write_all(&harness::pseudo_random_bytes(3 << 20, 3)).unwrap();
        pipe.flush().unwrap();
        pipe // kept open: the helper waits for more
    });
    let pipe = tokio::time::timeout(Duration::from_secs(20), feed)
        .await
        .expect("the helper reads the FIFO")
        .unwrap();
    // Wait until the helper has written part of the body into a file of its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    let partial = loop {
        let extra: Vec<_> = files_on_disk(&root)
            .into_iter()
            .filter(|p| p != key && !p.contains(".gitferry-locks"))
            .collect();
        if let Some(p) = extra.first()
            && std::fs::metadata(root.join(p)).map_or(0, |m| m.len()) > 0
        {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "the helper never started writing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(child); // killed mid-write
    drop(pipe);

    assert!(
        root.join(&partial).exists(),
        "the crash left a partial temporary file ({partial})"
    );
    let got = f.store.get(key).await.unwrap().unwrap();
    assert_eq!(
        (got.body.as_slice(), got.etag.as_str()),
        (&b"complete old object"[..], old.as_str())
    );
    assert_eq!(keys(&f.store.list("").await.unwrap()), [key]);
    assert_eq!(keys(&f.store.list("repos/a/packs/").await.unwrap()), [key]);
    // The store keeps working around the leftover.
    let new = f
        .store
        .put(key, b"new".to_vec(), Condition::IfMatch(old))
        .await
        .unwrap();
    assert_eq!(f.store.get(key).await.unwrap().unwrap().etag, new);
}

/// ETags remembered by one store instance (as listings do) follow writes made through another
/// instance — another process — on the same directory.
#[tokio::test]
async fn fs_remembered_etags_follow_other_writers() {
    let f = fs_fixture().await;
    let root = f.fs_root.clone().unwrap();
    let (a, b) = (FsStore::new(root.clone()), FsStore::new(root));
    let k = "repos/a/packs/1.pack";
    let old = a.put(k, b"one".to_vec(), Condition::Always).await.unwrap();
    assert_eq!(a.list("").await.unwrap()[0].etag, old);
    let new = b
        .put(k, b"two".to_vec(), Condition::IfMatch(old.clone()))
        .await
        .unwrap();
    assert_eq!(a.list("").await.unwrap()[0].etag, new);
    assert_precondition_failed(a.put(k, b"three".to_vec(), Condition::IfMatch(old)).await);
    assert_eq!(body_of(&a, k).await.unwrap(), b"two");
}

/// Keys reserved for the local store's own files are refused, so they can never be confused.
#[tokio::test]
async fn fs_reserved_names_refused() {
    let f = fs_fixture().await;
    for key in [".gitferry-locks/x", "a/.gitferry-tmp-123"] {
        assert_invalid(f.store.put(key, b"x".to_vec(), Condition::Always).await, key);
    }
    // Ordinary dot-files are fine.
    f.store
        .put("a/.hidden", b"x".to_vec(), Condition::Always)
        .await
        .unwrap();
    assert_eq!(keys(&f.store.list("a/").await.unwrap()), ["a/.hidden"]);
}

/// A local-store limit: a key cannot also be a "directory" of other keys. It fails clearly and
/// permanently rather than corrupting anything.
#[tokio::test]
async fn fs_key_that_is_a_directory_fails_cleanly() {
    let f = fs_fixture().await;
    f.store.put("a/b", b"x".to_vec(), Condition::Always).await.unwrap();
    let r = f.store.put("a", b"y".to_vec(), Condition::Always).await;
    assert!(matches!(r, Err(StoreError::Failed { .. })), "{r:?}");
    let r = f.store.put("a/b/c", b"y".to_vec(), Condition::Always).await;
    assert!(matches!(r, Err(StoreError::Failed { .. })), "{r:?}");
    assert_eq!(keys(&f.store.list("").await.unwrap()), ["a/b"]);
    assert_eq!(f.store.get("a").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// S3 only

/// More than one page of ListObjectsV2 (1000 keys a page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_list_paginates() {
    const N: usize = 1_050;
    let f = s3_fixture().await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = f.store.clone();
            tokio::spawn(async move {
                for i in (w..N).step_by(8) {
                    store
                        .put(&format!("many/{i:05}"), vec![1], Condition::Always)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    f.store.put("other/x", vec![1], Condition::Always).await.unwrap();
    let list = f.store.list("many/").await.unwrap();
    let expected: Vec<String> = (0..N).map(|i| format!("many/{i:05}")).collect();
    assert_eq!(keys(&list), expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(f.store.list("").await.unwrap().len(), N + 1);
}

/// Stores with different prefixes share a bucket without seeing each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_prefixes_isolate() {
    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    let (client, bucket) = moto.client_with_bucket().await;
    let a = S3Store::new(client.clone(), &bucket, "env/a").unwrap();
    let b = S3Store::new(client.clone(), &bucket, "env/b/").unwrap();
    let whole = S3Store::new(client.clone(), &bucket, "").unwrap();
    a.put("k", b"a".to_vec(), Condition::IfAbsent).await.unwrap();
    b.put("k", b"b".to_vec(), Condition::IfAbsent).await.unwrap();
    assert_eq!(body_of(&a, "k").await.unwrap(), b"a");
    assert_eq!(body_of(&b, "k").await.unwrap(), b"b");
    assert_eq!(keys(&a.list("").await.unwrap()), ["k"]);
    assert_eq!(keys(&whole.list("").await.unwrap()), ["env/a/k", "env/b/k"]);
    assert_eq!(body_of(&whole, "env/b/k").await.unwrap(), b"b");
    a.delete("k").await.unwrap();
    assert_eq!(keys(&whole.list("env/").await.unwrap()), ["env/b/k"]);
}

/// Permanent and transient failures are told apart, and credentials never show in errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_classified_without_credentials() {
    const KEY_ID: &str = "AKIAGITFERRYTESTKEY1";
    const SECRET: &str = "gitferry/Secret+Value/DoNotLeak0123456789";
    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    // The key id is an identifier the SDK logs at debug level; only the secret key is secret.
    harness::leaks::secret(SECRET);
    let creds = aws_sdk_s3::config::Credentials::new(KEY_ID, SECRET, None, None, "test");
    let no_leak = |e: &StoreError| {
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains(SECRET) && !text.contains(KEY_ID),
            "credentials in error: {text}"
        );
    };

    // A missing bucket: permanent.
    let client = aws_sdk_s3::Client::from_conf(moto.config().credentials_provider(creds.clone()).build());
    let store = S3Store::new(client, "no-such-bucket", "").unwrap();
    for r in [
        store.get("k").await.map(|_| ()),
        store.put("k", b"x".to_vec(), Condition::IfAbsent).await.map(|_| ()),
        store.list("").await.map(|_| ()),
    ] {
        match r {
            Err(e @ StoreError::Failed { .. }) => {
                assert!(!e.is_transient());
                assert!(e.to_string().contains("NoSuchBucket"), "{e}");
                no_leak(&e);
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    // Nobody listening: transient.
    let dead_port = harness::free_port();
    let config = moto
        .config()
        .credentials_provider(creds)
        .endpoint_url(format!("http://127.0.0.1:{dead_port}"))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    let store = S3Store::new(aws_sdk_s3::Client::from_conf(config), "bucket", "").unwrap();
    let e = assert_unavailable(store.put("k", b"x".to_vec(), Condition::Always).await);
    no_leak(&e);
    let e = assert_unavailable(store.get("k").await);
    no_leak(&e);
}

/// `S3Store::from_env` finds region, credentials and the endpoint override in the environment
/// and switches to path-style addressing for it. Run in a helper process, so that the
/// environment of this one (shared by concurrent tests) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_from_env_honours_endpoint_override() {
    let moto = tokio::task::spawn_blocking(MotoServer::start).await.unwrap();
    let (client, bucket) = moto.client_with_bucket().await;
    for var in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"] {
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "from_env_helper", "--nocapture", "--test-threads=1"])
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            // By name: for an IP address the SDK picks path-style by itself.
            .env(var, format!("http://localhost:{}", moto.port()))
            .env("GITFERRY_FROM_ENV_BUCKET", &bucket)
            .env("GITFERRY_FROM_ENV_KEY", var)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "from_env with {var}");
        let got = client
            .get_object()
            .bucket(&bucket)
            .key(format!("via-env/{var}"))
            .send()
            .await
            .unwrap();
        let body = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(&body[..], b"from env");
    }
}

#[test]
fn from_env_helper() {
    let Ok(bucket) = std::env::var("GITFERRY_FROM_ENV_BUCKET") else {
        return;
    };
    let key = std::env::var("GITFERRY_FROM_ENV_KEY").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = S3Store::from_env(bucket, "via-env").await.unwrap();
        let etag = store
            .put(&key, b"from env".to_vec(), Condition::IfAbsent)
            .await
            .unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap().etag, etag);
    });
}
