//! ssh:// end to end (issue 17), against OpenSSH's sshd on loopback with git-shell as the login
//! command (tests/src/sshd.rs): the engine suite over SSH as source and as target with every key
//! type, with and without a passphrase; protocol v2 where the server accepts `GIT_PROTOCOL` and
//! v0 where it does not; refused keys and host keys; a stalled server; connections cut
//! mid-fetch and mid-push; the CLI and `gitferry serve` with SSH remotes. Every secret (private
//! keys, passphrases) is registered with the suite-wide leak scan.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gitferry_core::git::{self, DeltaKind, HostKeys, MirrorOptions, MirrorSummary, RefPatterns, Remote, SshIdentity};
use harness::leaks::CheckedOutput;
use harness::proxy::{FaultProxy, Plan};
use harness::sshd::{self, ClientKey, KeyKind, Sshd};
use harness::{TempDir, Worktree, assert_fsck_clean, assert_refs_equal, git, install_hook, mirrored_refs};

fn options() -> MirrorOptions {
    MirrorOptions {
        refs: RefPatterns::default(),
        prune: true,
        atomic: false,
        progress: None,
        lfs: None,
    }
}

/// An sshd serving a directory of bare repositories: a source with history and an empty target.
struct Case {
    sshd: Sshd,
    repos: TempDir,
    source: PathBuf,
    target: PathBuf,
    wt: Worktree,
    cache: TempDir,
    keys: TempDir,
}

impl Case {
    fn new(server: &sshd::Options) -> Case {
        let sshd = Sshd::start(server);
        let repos = harness::tempdir();
        let bare = |name: &str| {
            git(
                repos.path(),
                ["init", "--quiet", "--bare", "--initial-branch=main", name],
            );
            repos.path().join(name)
        };
        let (source, target) = (bare("src.git"), bare("dst.git"));
        let mut wt = Worktree::new(&source);
        wt.build_history();
        Case {
            sshd,
            repos,
            source,
            target,
            wt,
            cache: harness::tempdir(),
            keys: harness::tempdir(),
        }
    }

    /// A key of `kind` the server accepts.
    fn key(&self, kind: KeyKind, passphrase: Option<&str>) -> ClientKey {
        let key = sshd::keygen(self.keys.path(), kind, passphrase);
        self.sshd.authorize(&key);
        key
    }

    /// `repo` over SSH with `key`, the server's host key pinned by fingerprint.
    fn remote(&self, repo: &Path, key: &ClientKey) -> Remote {
        self.remote_at(&self.sshd.url(repo), key)
    }

    fn remote_at(&self, url: &str, key: &ClientKey) -> Remote {
        Remote::parse(url)
            .unwrap()
            .with_ssh_identity(identity(key))
            .with_host_keys(HostKeys::parse_pin(&self.sshd.host_fingerprint).unwrap())
    }

    fn mirror(&self, key: &ClientKey) -> MirrorSummary {
        git::mirror(
            &self.remote(&self.source, key),
            &self.remote(&self.target, key),
            self.cache.path(),
            &options(),
        )
        .unwrap_or_else(|e| panic!("mirror over ssh with {:?}: {e}", key.kind))
    }

    #[track_caller]
    fn assert_mirrored(&self) {
        assert_refs_equal(&self.source, &self.target);
        assert_fsck_clean(&self.target);
    }
}

fn identity(key: &ClientKey) -> SshIdentity {
    SshIdentity::from_pem(&key.private, key.passphrase.as_deref()).expect("the test key decodes")
}

fn count(deltas: &[git::RefDelta], kind: DeltaKind) -> usize {
    deltas.iter().filter(|d| d.kind == kind).count()
}

/// initial, no-op, incremental, force-push, prune, and a hook declining one ref: SSH source and
/// SSH target, one key.
fn engine_suite(kind: KeyKind, passphrase: Option<&str>) {
    let mut case = Case::new(&sshd::Options::default());
    let key = case.key(kind, passphrase);
    let n = mirrored_refs(&case.source).len();

    let s = case.mirror(&key);
    case.assert_mirrored();
    assert_eq!((s.fetch.refs.created, s.push.refs.created), (n, n), "{kind:?}: initial");
    assert!(s.push.bytes > 1_500_000, "{kind:?}: the large blob went: {s:?}");

    let s = case.mirror(&key);
    assert!(s.fetch.up_to_date, "{kind:?}: no-op fetch");
    assert_eq!(
        (s.fetch.objects, s.push.objects, s.push.bytes),
        (0, 0, 0),
        "{kind:?}: no pack"
    );
    assert!(s.push.results.is_empty(), "{kind:?}: no commands: {:?}", s.push.results);

    case.wt.commit_file("src/new.rs", b"pub fn new() {}\n", "more work");
    case.wt.git(["tag", "-a", "v2.0", "-m", "release 2.0"]);
    case.wt.git(["branch", "topic/next"]);
    case.wt.push_all();
    let s = case.mirror(&key);
    case.assert_mirrored();
    assert_eq!(
        (s.push.refs.created, s.push.refs.updated),
        (2, 1),
        "{kind:?}: incremental"
    );
    assert!(s.push.objects < 10, "{kind:?}: only the delta: {s:?}");

    case.wt.git(["reset", "--quiet", "--hard", "HEAD~2"]);
    case.wt.commit_file("rewritten.txt", b"rewritten\n", "rewrite");
    case.wt.push_all();
    let s = case.mirror(&key);
    case.assert_mirrored();
    assert_eq!(count(&s.fetch.deltas, DeltaKind::Forced), 1, "{kind:?}: force-push");

    case.wt.git(["branch", "-D", "topic/next"]);
    case.wt.git(["tag", "-d", "light-1"]);
    case.wt.push_all();
    let s = case.mirror(&key);
    case.assert_mirrored();
    assert_eq!(s.push.refs.deleted, 2, "{kind:?}: prune");

    install_hook(
        &case.target,
        "update",
        "#!/bin/sh\nif [ \"$1\" = refs/heads/feature ]; then echo \"policy: feature is frozen\" >&2; exit 1; fi\n",
    );
    case.wt.git(["checkout", "--quiet", "feature"]);
    case.wt.commit_file("f.txt", b"frozen?\n", "feature work");
    case.wt.git(["checkout", "--quiet", "main"]);
    case.wt.commit_file("m.txt", b"main work\n", "main work");
    case.wt.push_all();
    let s = case.mirror(&key);
    assert_eq!(s.push.rejected.len(), 1, "{kind:?}: {s:?}");
    assert_eq!(s.push.rejected[0].name, "refs/heads/feature");
    assert!(
        s.push
            .remote_messages
            .iter()
            .any(|m| m.contains("policy: feature is frozen")),
        "{:?}",
        s.push.remote_messages
    );
    let main = |repo: &Path| git(repo, ["rev-parse", "refs/heads/main"]);
    assert_eq!(main(&case.source), main(&case.target), "{kind:?}: the rest landed");
    assert_fsck_clean(&case.target);
}

#[test]
fn engine_suite_ed25519() {
    engine_suite(KeyKind::Ed25519, None);
}

#[test]
fn engine_suite_ed25519_with_passphrase() {
    engine_suite(KeyKind::Ed25519, Some("correct horse ed25519"));
}

#[test]
fn engine_suite_ecdsa() {
    engine_suite(KeyKind::Ecdsa, None);
}

#[test]
fn engine_suite_ecdsa_with_passphrase() {
    engine_suite(KeyKind::Ecdsa, Some("correct horse ecdsa"));
}

#[test]
fn engine_suite_rsa() {
    engine_suite(KeyKind::Rsa, None);
}

#[test]
fn engine_suite_rsa_with_passphrase() {
    engine_suite(KeyKind::Rsa, Some("correct horse rsa"));
}

#[test]
fn protocol_v2_where_the_server_accepts_git_protocol_and_v0_where_not() {
    for accept in [true, false] {
        let case = Case::new(&sshd::Options {
            accept_git_protocol: accept,
            ..sshd::Options::default()
        });
        let key = case.key(KeyKind::Ed25519, None);
        let listed = git::ls_remote(&case.remote(&case.source, &key), &RefPatterns::default()).unwrap();
        assert_eq!(listed.refs.len(), mirrored_refs(&case.source).len(), "accept={accept}");
        assert_eq!(listed.head.as_deref(), Some("refs/heads/main"), "accept={accept}");
        case.mirror(&key);
        case.assert_mirrored();
        let trace = case.sshd.packet_trace();
        let v2 = trace.contains("upload-pack> version 2");
        assert_eq!(v2, accept, "accept={accept}: upload-pack spoke v2? trace:\n{trace}");
        if !accept {
            assert!(
                trace.contains("upload-pack> ") && trace.contains("refs/heads/main"),
                "v0 advertisement"
            );
        }
    }
}

#[test]
fn an_unauthorized_or_missing_key_is_a_permanent_auth_error() {
    let case = Case::new(&sshd::Options::default());
    let stranger = sshd::keygen(case.keys.path(), KeyKind::Ed25519, None);
    let err = git::ls_remote(&case.remote(&case.source, &stranger), &RefPatterns::default()).unwrap_err();
    assert!(matches!(err, git::Error::Auth { .. }) && !err.is_transient(), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains(identity(&stranger).fingerprint()) && shown.contains("\"root\""),
        "{shown}"
    );
    let keyless = Remote::parse(&case.sshd.url(&case.source))
        .unwrap()
        .with_host_keys(HostKeys::parse_pin(&case.sshd.host_fingerprint).unwrap());
    let err = git::ls_remote(&keyless, &RefPatterns::default()).unwrap_err();
    assert!(matches!(err, git::Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("no SSH key configured"), "{err}");
}

#[test]
fn unknown_and_changed_host_keys_are_refused_naming_host_and_fingerprint() {
    let case = Case::new(&sshd::Options::default());
    let key = case.key(KeyKind::Ed25519, None);
    let host = format!("[127.0.0.1]:{}", case.sshd.port);
    let url = case.sshd.url(&case.source);
    let unpinned = Remote::parse(&url).unwrap().with_ssh_identity(identity(&key));
    let err = git::ls_remote(&unpinned, &RefPatterns::default()).unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(&err, git::Error::HostKey { .. }) && !err.is_transient(),
        "{err:?}"
    );
    assert!(
        shown.contains(&host) && shown.contains(&case.sshd.host_fingerprint) && shown.contains("nothing is pinned"),
        "{shown}"
    );
    // Pinned to another key (GitHub's, say): "changed", and the offered key is named.
    let changed = unpinned
        .clone()
        .with_host_keys(HostKeys::parse_pin("SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU").unwrap());
    let err = git::mirror(
        &changed,
        &case.remote(&case.target, &key),
        case.cache.path(),
        &options(),
    )
    .unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(&err, git::Error::HostKey { .. }) && !err.is_transient(),
        "{err:?}"
    );
    assert!(
        shown.contains("does not match") && shown.contains(&case.sshd.host_fingerprint),
        "{shown}"
    );
    // A known_hosts line for the host works like the fingerprint.
    let by_line = unpinned.with_host_keys(HostKeys::parse_known_hosts(&case.sshd.known_hosts_line).unwrap());
    assert!(git::ls_remote(&by_line, &RefPatterns::default()).is_ok());
    assert!(mirrored_refs(&case.target).is_empty(), "nothing was pushed");
}

#[test]
fn a_missing_repository_is_not_found() {
    let case = Case::new(&sshd::Options::default());
    let key = case.key(KeyKind::Ecdsa, None);
    let missing = case.remote(&case.repos.path().join("nope.git"), &key);
    let err = git::ls_remote(&missing, &RefPatterns::default()).unwrap_err();
    assert!(
        matches!(err, git::Error::NotFound { .. }) && !err.is_transient(),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("does not appear to be a git repository"),
        "{err}"
    );
    let err = git::mirror(
        &case.remote(&case.source, &key),
        &missing,
        case.cache.path(),
        &options(),
    )
    .unwrap_err();
    assert!(matches!(err, git::Error::NotFound { .. }), "push: {err:?}");
}

#[test]
fn a_server_that_stalls_after_the_handshake_fails_transient_within_the_timeout() {
    // Authentication succeeds, then the "git" command reads and never answers.
    let case = Case::new(&sshd::Options {
        force_command: Some("cat >/dev/null".into()),
        ..sshd::Options::default()
    });
    let key = case.key(KeyKind::Ed25519, None);
    let started = Instant::now();
    let err = git::ls_remote_within(
        &case.remote(&case.source, &key),
        &RefPatterns::default(),
        Duration::from_secs(2),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // A server that stalls before the SSH handshake: the same.
    let proxy = FaultProxy::start(case.sshd.port);
    proxy.set(Plan {
        stall: Some(Duration::from_secs(5)),
        ..Plan::default()
    });
    let url = format!("ssh://root@127.0.0.1:{}{}", proxy.port, case.source.display());
    let started = Instant::now();
    let err = git::ls_remote_within(
        &case.remote_at(&url, &key),
        &RefPatterns::default(),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

/// Byte offsets into the SSH stream: inside the key exchange, just after it, and spread over a
/// transfer of about 1.6 MB (the fixture's large blob dominates).
const OFFSETS: [u64; 5] = [700, 6_000, 60_000, 700_000, 1_500_000];

#[test]
fn cut_mid_fetch_leaves_the_cache_clean_and_the_retry_converges() {
    let case = Case::new(&sshd::Options::default());
    let key = case.key(KeyKind::Ed25519, None);
    let proxy = FaultProxy::start(case.sshd.port);
    let src = case.remote_at(
        &format!("ssh://root@127.0.0.1:{}{}", proxy.port, case.source.display()),
        &key,
    );
    let dst = case.remote(&case.target, &key);
    for (i, offset) in OFFSETS.into_iter().enumerate() {
        let cache = harness::tempdir();
        proxy.set(Plan {
            cut_downstream_after: Some(offset),
            reset: i % 2 == 1,
            ..Plan::default()
        });
        let before = mirrored_refs(&case.target);
        let err = git::mirror(&src, &dst, cache.path(), &options()).expect_err("the cut fails the fetch");
        assert!(err.is_transient(), "offset {offset}: {err:?}");
        assert_eq!(mirrored_refs(&case.target), before, "offset {offset}: nothing pushed");
        let cache_repo = git::mirror::cache_path(cache.path(), &src);
        if cache_repo.join("HEAD").exists() {
            assert_fsck_clean(&cache_repo);
        }
        proxy.clear();
        git::mirror(&src, &dst, cache.path(), &options()).unwrap_or_else(|e| panic!("offset {offset}: retry: {e}"));
        case.assert_mirrored();
        assert_fsck_clean(&cache_repo);
        git(&case.target, ["update-ref", "-d", "refs/heads/main"]);
    }
}

#[test]
fn cut_mid_push_leaves_old_or_new_per_ref_and_the_retry_converges() {
    let case = Case::new(&sshd::Options::default());
    let key = case.key(KeyKind::Rsa, None);
    let proxy = FaultProxy::start(case.sshd.port);
    let src = case.remote(&case.source, &key);
    let wanted = mirrored_refs(&case.source);
    for (i, offset) in OFFSETS.into_iter().enumerate() {
        let name = format!("dst{i}.git");
        git(case.repos.path(), ["init", "--quiet", "--bare", &name]);
        let target = case.repos.path().join(&name);
        let dst = case.remote_at(
            &format!("ssh://root@127.0.0.1:{}{}", proxy.port, target.display()),
            &key,
        );
        let cache = harness::tempdir();
        // A first fetch through an intact connection, so the cut falls in the push.
        git::mirror_fetch(
            &git::repo::open_or_init_bare(&git::mirror::cache_path(cache.path(), &src)).unwrap(),
            &src,
            &git::FetchOptions::default(),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        proxy.set(Plan {
            cut_upstream_after: Some(offset),
            reset: i % 2 == 1,
            ..Plan::default()
        });
        let err = git::mirror(&src, &dst, cache.path(), &options()).expect_err("the cut fails the push");
        assert!(err.is_transient(), "offset {offset}: {err:?}");
        for (name, id) in mirrored_refs(&target) {
            assert_eq!(
                wanted.get(&name),
                Some(&id),
                "offset {offset}: {name} is old (absent) or new"
            );
        }
        assert_fsck_clean(&target);
        proxy.clear();
        git::mirror(&src, &dst, cache.path(), &options()).unwrap_or_else(|e| panic!("offset {offset}: retry: {e}"));
        assert_refs_equal(&case.source, &target);
        assert_fsck_clean(&target);
    }
}

#[test]
fn cli_mirror_with_a_protected_key_and_known_hosts() {
    let case = Case::new(&sshd::Options::default());
    let key = case.key(KeyKind::Ecdsa, Some("cli passphrase 42"));
    let known_hosts = case.keys.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("# test server\n{}\n", case.sshd.known_hosts_line)).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(harness::gitferry_bin())
            .arg("mirror")
            .arg(case.sshd.url(&case.source))
            .arg(case.sshd.url(&case.target))
            .arg("--cache-dir")
            .arg(case.cache.path())
            .arg("--ssh-key")
            .arg(&key.path)
            .args(["--ssh-key-passphrase-env", "MIRROR_KEY_PASSPHRASE"])
            .args(extra)
            .env("MIRROR_KEY_PASSPHRASE", key.passphrase.as_deref().unwrap())
            .checked_output()
            .expect("gitferry runs")
    };
    // Without --known-hosts only the built-in hosts are trusted.
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&case.sshd.host_fingerprint), "{stderr}");
    let out = run(&["--known-hosts", known_hosts.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["source"].as_str().unwrap().starts_with("ssh://root@127.0.0.1:"),
        "{summary}"
    );
    case.assert_mirrored();
}

#[test]
fn serve_syncs_to_an_ssh_target_and_leaks_no_key() {
    let case = Case::new(&sshd::Options::default());
    let key = case.key(KeyKind::Ed25519, Some("serve passphrase 7"));
    // A second target whose key the server does not know: its failure goes through the error
    // paths (status, logs, notifications) that are likeliest to quote what they were given.
    let stranger = sshd::keygen(case.keys.path(), KeyKind::Rsa, None);
    git(case.repos.path(), ["init", "--quiet", "--bare", "refused.git"]);
    let dir = harness::tempdir();
    let config = format!(
        "[repos.app]\nurl = \"{}\"\n[[repos.app.targets]]\nname = \"backup\"\nurl = \"{}\"\n\
         ssh_key_env = \"BACKUP_KEY\"\nssh_key_passphrase_env = \"BACKUP_KEY_PASSPHRASE\"\nhost_key = \"{}\"\n\
         [[repos.app.targets]]\nname = \"refused\"\nurl = \"{}\"\nssh_key_env = \"STRANGER_KEY\"\n\
         known_hosts_env = \"KNOWN_HOSTS\"\n",
        case.source.display(),
        case.sshd.url(&case.target),
        case.sshd.host_fingerprint,
        case.sshd.url(&case.repos.path().join("refused.git")),
    );
    std::fs::write(dir.path().join("mirrors.toml"), config).unwrap();
    let env = [
        ("BACKUP_KEY", key.private.as_str()),
        ("BACKUP_KEY_PASSPHRASE", key.passphrase.as_deref().unwrap()),
        ("STRANGER_KEY", stranger.private.as_str()),
        ("KNOWN_HOSTS", case.sshd.known_hosts_line.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let check = std::process::Command::new(harness::gitferry_bin())
        .args(["check-config", "mirrors.toml"])
        .current_dir(dir.path())
        .envs(env)
        .checked_output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let store = dir.path().join("store");
    let (mut child, base) = harness::start_serve(
        dir.path(),
        [std::ffi::OsStr::new("--store"), store.as_os_str()],
        &env,
        (&dir.path().join("serve.log"), Some(&dir.path().join("serve.out"))),
        20,
    );
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status: serde_json::Value = reqwest::blocking::get(format!("{base}/status/app"))
            .unwrap()
            .json()
            .unwrap();
        let done = |t: &str| matches!(status["targets"][t]["state"].as_str(), Some("success" | "failed"));
        if (done("backup") && done("refused")) || Instant::now() > until {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    harness::process::stop(&mut child);
    assert_eq!(status["targets"]["backup"]["state"], "success", "{status}");
    case.assert_mirrored();
    let refused = &status["targets"]["refused"];
    assert_eq!(refused["state"], "failed", "{status}");
    assert_eq!(refused["error_class"], "permanent", "{status}");
    let error = refused["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused the key") && error.contains(identity(&stranger).fingerprint()),
        "the error names the public fingerprint: {error}"
    );
    // The keys went through debug logs, the status and the store: the scan of `dir` (logs,
    // store) at drop proves none of it holds a fragment of a key or the passphrase.
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap()
        + &std::fs::read_to_string(dir.path().join("serve.out")).unwrap();
    assert!(
        log.contains("refused the key"),
        "the refusal is logged (or the scan proves little):\n{log}"
    );
}
