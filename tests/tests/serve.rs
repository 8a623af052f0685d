//! `gitferry serve` and `gitferry demo` as a user runs them: the real binary, real git servers,
//! signals, a restart after `kill -9`, the status page in headless Chromium, and the webhooks
//! providers really send.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gitferry_core::config::Provider;
use gitferry_core::webhook::sign;
use harness::deliveries;
use harness::leaks::CheckedOutput;
use harness::{Proto, Servers, TempDir, Worktree, assert_fsck_clean, assert_refs_equal, git, install_hook};

const SECRET: &str = "serve-test-secret";

struct Setup {
    proto: Proto,
    servers: Servers,
    source: PathBuf,
    target: PathBuf,
    wt: Worktree,
    dir: TempDir,
}

impl Setup {
    /// src.git with history, an empty dst.git, and a config for repo `app` over `proto`.
    fn new(proto: Proto) -> Setup {
        let servers = Servers::start();
        let source = servers.create_bare("src.git");
        let target = servers.create_bare("dst.git");
        let mut wt = Worktree::new(&source);
        wt.build_history();
        harness::leaks::secret(SECRET);
        let dir = harness::tempdir();
        let config = format!(
            "[repos.app]\nurl = \"{}\"\nwebhook = {{ provider = \"github\", secret_env = \"APP_SECRET\" }}\n\
             [[repos.app.targets]]\nurl = \"{}\"\nname = \"mirror\"\n",
            servers.url(proto, "src.git"),
            servers.url(proto, "dst.git")
        );
        std::fs::write(dir.path().join("mirrors.toml"), config).unwrap();
        Setup {
            proto,
            servers,
            source,
            target,
            wt,
            dir,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Start `gitferry serve` on a free port; returns the child and the base URL.
    fn serve(&self) -> (Child, String) {
        // One log per start (restarts in the kill -9 tests keep the earlier ones).
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        harness::start_serve(
            self.dir.path(),
            [std::ffi::OsStr::new("--store"), self.store().as_os_str()],
            &[("APP_SECRET", SECRET), ("RUST_LOG", "info")],
            (&self.dir.path().join(format!("serve-{n}.log")), None),
            20,
        )
    }

    fn push_and_deliver(&mut self, base: &str, delivery: &str) -> u16 {
        self.wt
            .commit_file("served.txt", delivery.as_bytes(), "a change to mirror");
        self.wt.push_all();
        let after = git(&self.source, ["rev-parse", "refs/heads/main"]);
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "after": after,
            "repository": { "clone_url": self.servers.url(self.proto, "src.git") },
        })
        .to_string();
        deliver(
            base,
            delivery,
            &body,
            Some(&gitferry_core::webhook::sign(Provider::Github, SECRET, body.as_bytes())),
        )
    }
}

fn deliver(base: &str, delivery: &str, body: &str, signature: Option<&str>) -> u16 {
    let mut req = reqwest::blocking::Client::new()
        .post(format!("{base}/webhook/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .body(body.to_owned());
    if let Some(s) = signature {
        req = req.header("X-Hub-Signature-256", s);
    }
    req.send().unwrap().status().as_u16()
}

fn status(base: &str) -> serde_json::Value {
    reqwest::blocking::get(format!("{base}/status/app"))
        .unwrap()
        .json()
        .unwrap()
}

/// Wait until `done(status)` or panic after `secs`.
fn wait_status(base: &str, secs: u64, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(r) = reqwest::blocking::get(format!("{base}/status/app"))
            && let Ok(s) = r.json::<serde_json::Value>()
            && done(&s)
        {
            return s;
        }
        assert!(Instant::now() < until, "status never got there: {}", status(base));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stored_status(store: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(store.join("repos/app/status.json")).unwrap()).unwrap()
}

fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn signed_webhook_syncs_and_status_and_metrics_show_it() {
    // Sources over HTTP: the webhook payload names the repo by its clone URL.
    let mut s = Setup::new(Proto::Http);
    let (mut child, base) = s.serve();
    // The startup reconciliation mirrors everything first.
    wait_status(&base, 30, |st| st["state"] == "success");
    assert_refs_equal(&s.source, &s.target);

    // Unsigned and wrongly signed deliveries are refused and change nothing.
    assert_eq!(deliver(&base, "nope-1", "{}", None), 401);
    let body = r#"{"repository":{"clone_url":"x"}}"#;
    assert_eq!(
        deliver(&base, "nope-2", body, Some("sha256=00")),
        401,
        "unknown repository: the same answer as a wrong signature"
    );

    assert_eq!(s.push_and_deliver(&base, "delivery-42"), 202);
    let st = wait_status(&base, 30, |st| {
        st["last_delivery_id"] == "delivery-42" && st["state"] == "success"
    });
    assert_eq!(st["targets"]["mirror"]["state"], "success");
    assert_refs_equal(&s.source, &s.target);
    assert_fsck_clean(&s.target);

    let metrics = reqwest::blocking::get(format!("{base}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("gitferry_syncs_total{outcome=\"success\",repo=\"app\",trigger=\"webhook\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gitferry_webhook_responses_total{code=\"401\",provider=\"github\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gitferry_webhook_responses_total{code=\"202\",provider=\"github\"} 1"),
        "{metrics}"
    );

    signal(&child, "-TERM");
    let code = child.wait().unwrap();
    assert_eq!(code.code(), Some(0), "clean exit on SIGTERM");
}

#[test]
fn kill_9_during_a_sync_then_restart_converges() {
    let mut s = Setup::new(Proto::GitDaemon);
    let (mut child, base) = s.serve();
    wait_status(&base, 30, |st| st["state"] == "success");
    // The next push to the target hangs in a hook, so the sync is mid-push when we kill.
    install_hook(&s.target, "pre-receive", "#!/bin/sh\nsleep 3\nexit 0\n");
    assert_eq!(s.push_and_deliver(&base, "before-crash"), 202);
    wait_status(&base, 20, |st| st["state"] == "syncing");
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "-KILL");
    child.wait().unwrap();
    assert_eq!(stored_status(&s.store())["state"], "syncing", "killed mid-sync");
    std::fs::remove_file(s.target.join("hooks/pre-receive")).unwrap();

    // Restart on the same store: the queued request is still there, the lease of the dead
    // process expires, the repo converges.
    let (mut child, base) = s.serve();
    let st = wait_status(&base, 150, |st| {
        st["state"] == "success" && st["source_refs"].as_u64() > Some(0)
    });
    assert_refs_equal(&s.source, &s.target);
    assert_fsck_clean(&s.target);
    assert!(st["targets"]["mirror"]["state"] == "success");
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn sigterm_during_a_sync_writes_a_terminal_status_and_exits_0() {
    let mut s = Setup::new(Proto::GitDaemon);
    let (mut child, base) = s.serve();
    wait_status(&base, 30, |st| st["state"] == "success");
    install_hook(&s.target, "pre-receive", "#!/bin/sh\nsleep 2\nexit 0\n");
    assert_eq!(s.push_and_deliver(&base, "during-term"), 202);
    wait_status(&base, 20, |st| st["state"] == "syncing");
    signal(&child, "-TERM");
    let code = child.wait().unwrap();
    assert_eq!(code.code(), Some(0));
    let st = stored_status(&s.store());
    assert!(
        ["success", "failed", "interrupted"].contains(&st["state"].as_str().unwrap_or_default()),
        "terminal, not syncing: {st}"
    );
    assert!(
        st["duration_ms"].as_u64().unwrap() < 10_000,
        "stopped promptly, not after a transfer timeout: {st}"
    );
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let s = Setup::new(Proto::GitDaemon);
    let (mut child, base) = s.serve();
    wait_status(&base, 30, |st| st["state"] == "success");
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium is installed by `make deps`");
    let profile = tempfile::tempdir().unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,500",
    ];
    let dom = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("{base}/"))
        .checked_output()
        .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains("data-repo=\"app\"") && html.contains("data-state=\"ok\""),
        "{html}"
    );
    assert!(html.contains("mirror"), "the target is listed: {html}");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    let out = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("{base}/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "a real screenshot");
    signal(&child, "-TERM");
    child.wait().unwrap();
}

#[test]
fn demo_runs_offline_from_a_clean_home_in_under_a_minute() {
    let home = harness::tempdir();
    let started = Instant::now();
    let out = Command::new(harness::gitferry_bin())
        .arg("demo")
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", home.path())
        .current_dir(home.path())
        .checked_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("OK: the target is an exact mirror of the source"),
        "{text}"
    );
    assert!(text.contains("POST /webhook/github → 202"), "{text}");
    assert!(text.contains("notification sent"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // It cleaned up after itself.
    let left: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn check_config_status_and_sync_commands() {
    let s = Setup::new(Proto::GitDaemon);
    let bin = harness::gitferry_bin();
    let run = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .current_dir(s.dir.path())
            .env("APP_SECRET", SECRET)
            .checked_output()
            .unwrap()
    };
    let ok = run(&["check-config", "mirrors.toml"]);
    assert!(ok.status.success() && String::from_utf8_lossy(&ok.stdout).starts_with("OK"));
    std::fs::write(
        s.dir.path().join("bad.toml"),
        "[repos.x]\nurl = \"ftp://h/x\"\npoll_interval_secs = 5\n",
    )
    .unwrap();
    let bad = run(&["check-config", "bad.toml"]);
    assert_eq!(bad.status.code(), Some(2), "an invalid configuration is a usage error");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("bad.toml:2: repos.x.url") && err.contains("bad.toml:3: repos.x.poll_interval_secs"),
        "{err}"
    );

    let store = s.store();
    let store = store.to_str().unwrap();
    let synced = run(&["sync", "app", "--store", store, "--json"]);
    assert!(synced.status.success(), "{}", String::from_utf8_lossy(&synced.stderr));
    let st: serde_json::Value = serde_json::from_slice(&synced.stdout).unwrap();
    assert_eq!(st["state"], "success");
    assert_refs_equal(&s.source, &s.target);
    let again = run(&["sync", "app", "--store", store]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));
    let table = run(&["status", "--store", store]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("app") && text.contains("mirror:ok"),
        "{text}"
    );
    let unknown = run(&["sync", "nope", "--store", store]);
    assert_eq!(unknown.status.code(), Some(1));

    // The source force-moves main back: the overwritten tip is kept, and restoring it puts it
    // back on the source under a new name, which the next sync mirrors.
    let tip = git(&s.source, ["rev-parse", "refs/heads/main"]);
    git(&s.source, ["update-ref", "refs/heads/main", "refs/heads/main~1"]);
    assert!(run(&["sync", "app", "--store", store]).status.success());
    let st = run(&["status", "app", "--store", store, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let backup = st[0]["overwritten"][0]["backup_ref"].as_str().unwrap().to_owned();
    assert_eq!(st[0]["overwritten"][0]["id"], tip.as_str());
    let restored = run(&[
        "restore",
        "app",
        &backup,
        "--as",
        "refs/heads/main-restored",
        "--store",
        store,
    ]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(git(&s.source, ["rev-parse", "refs/heads/main-restored"]), tip);
    let twice = run(&[
        "restore",
        "app",
        &backup,
        "--as",
        "refs/heads/main-restored",
        "--store",
        store,
    ]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already exists"));
    assert!(run(&["sync", "app", "--store", store]).status.success());
    assert_eq!(git(&s.target, ["rev-parse", "refs/heads/main-restored"]), tip);
}

/// `kill -9` at 20 pseudo-random points of 20 syncs (issue 7): after each restart on the same
/// store, the repo converges, nothing queued is lost, and target and cache stay fsck-clean.
#[test]
fn kill_9_at_random_points_of_20_syncs_loses_nothing() {
    let mut s = Setup::new(Proto::GitDaemon);
    let (mut child, mut base) = s.serve();
    wait_status(&base, 30, |st| st["state"] == "success");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay_ms = seed % 400;
        let delivery = format!("round-{round}");
        assert_eq!(s.push_and_deliver(&base, &delivery), 202, "round {round}");
        std::thread::sleep(Duration::from_millis(delay_ms));
        signal(&child, "-KILL");
        child.wait().unwrap();
        let (c, b) = s.serve();
        child = c;
        base = b;
        // The delivered sync (or the restart's reconciliation) brings the target to the source.
        let want = git(&s.source, ["rev-parse", "refs/heads/main"]);
        let until = Instant::now() + Duration::from_secs(60);
        while git(&s.target, ["rev-parse", "refs/heads/main"]) != want {
            assert!(
                Instant::now() < until,
                "round {round} (killed after {delay_ms} ms) did not converge"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_status(&base, 60, |st| st["state"] == "success");
        assert_refs_equal(&s.source, &s.target);
    }
    assert_fsck_clean(&s.target);
    assert_fsck_clean(&s.store().join(".gitferry-work/app.git"));
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// The sum over providers of `gitferry_webhook_responses_total` with this code, from `/metrics`.
fn webhook_responses(metrics: &str, code: u16) -> u64 {
    let prefix = format!("gitferry_webhook_responses_total{{code=\"{code}\",");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// POST one delivery the way its provider sends it; the status and the JSON answer.
fn post(client: &reqwest::blocking::Client, base: &str, case: &deliveries::Case) -> (u16, serde_json::Value) {
    let mut request = client.post(format!("{base}{}", case.route)).body(case.body.clone());
    for (k, v) in &case.headers {
        request = request.header(k, v);
    }
    let response = request.send().unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let status = response.status().as_u16();
    (status, response.json().unwrap_or_default())
}

/// Issue 15 through `gitferry serve`'s HTTP route: the same published deliveries of GitHub,
/// GitLab, Gitea and Forgejo as the webhook function's test (`harness::deliveries`) — every
/// answer, the requests the workers took off the queue (redeliveries once), the counts by code
/// on `/metrics`, and a log line for every refusal, the 413 of the body limit included.
#[test]
fn published_deliveries_of_every_provider() {
    let dir = harness::tempdir();
    std::fs::write(dir.path().join("mirrors.toml"), deliveries::CONFIG).unwrap();
    // The configured sources are the providers' example repositories (github.com, example.com,
    // localhost:3000). Their syncs must fail without leaving this machine: every HTTP request
    // goes to a proxy that is not there.
    let proxy = format!("http://127.0.0.1:{}", harness::free_port());
    let mut env = deliveries::env();
    for var in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
    ] {
        env.push((var, proxy.as_str()));
    }
    // Retries of those failing syncs come 10× sooner, so every request is taken within seconds.
    env.extend([
        ("NO_PROXY", ""),
        ("no_proxy", ""),
        ("RUST_LOG", "info"),
        ("GITFERRY_TIME_SCALE", "10"),
    ]);
    let log = dir.path().join("serve.log");
    let (mut child, base) = harness::start_serve(dir.path(), ["--store", "store"], &env, (&log, None), 20);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let cases = deliveries::cases();
    for case in &cases {
        let (status, body) = post(&client, &base, case);
        case.check(status, &body);
    }

    let expected = deliveries::expected_queue(&cases);
    let until = Instant::now() + Duration::from_secs(60);
    let taken = loop {
        let (taken, _) = harness::requests_taken(std::slice::from_ref(&log));
        let webhook: BTreeSet<String> = taken.into_keys().filter(|k| k.starts_with("wh:")).collect();
        if webhook.is_superset(&expected) || Instant::now() > until {
            break webhook;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        taken, expected,
        "one request per delivery and repository, redeliveries dropped"
    );

    let metrics = client.get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    for (status, n) in deliveries::expected_codes(&cases) {
        assert_eq!(
            webhook_responses(&metrics, status),
            n as u64,
            "code {status}:\n{metrics}"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    for case in cases.iter().filter(|c| matches!(c.want, deliveries::Want::Refused(..))) {
        let lines = text.lines().filter(|l| deliveries::log_line(case, l)).count();
        assert_eq!(lines, 1, "{}: one log line for the refusal", case.name);
    }
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Issue 15, item 1: a push over the body limit (`GITFERRY_MAX_BODY`, the same setting as the
/// webhook function's) is refused with 413, logged and counted — and the poller still brings a
/// `both` repository up to date within its interval. A `webhook_only` repository is not polled:
/// that push is not mirrored until the next delivery (README: use `both` where pushes can be
/// that large).
#[test]
fn an_oversized_push_is_refused_logged_and_caught_by_the_poller() {
    let servers = Servers::start();
    let mut worktrees = Vec::new();
    let mut toml = String::from("poll_interval_secs = 60\n");
    for (repo, policy) in [("polled", "both"), ("hooked", "webhook_only")] {
        let source = servers.create_bare(&format!("{repo}-src.git"));
        let target = servers.create_bare(&format!("{repo}-dst.git"));
        let mut wt = Worktree::new(&source);
        wt.build_history();
        toml.push_str(&format!(
            "[repos.{repo}]\nurl = \"{}\"\nsync_policy = \"{policy}\"\n\
             webhook = {{ provider = \"github\", secret_env = \"APP_SECRET\" }}\n\
             [[repos.{repo}.targets]]\nurl = \"{}\"\n",
            servers.url(Proto::GitDaemon, &format!("{repo}-src.git")),
            servers.url(Proto::GitDaemon, &format!("{repo}-dst.git")),
        ));
        worktrees.push((repo, source, target, wt));
    }
    harness::leaks::secret(SECRET);
    let dir = harness::tempdir();
    std::fs::write(dir.path().join("mirrors.toml"), toml).unwrap();
    let log = dir.path().join("serve.log");
    // Time 30× faster: the 60 s poll interval is 2 s.
    let env = [
        ("APP_SECRET", SECRET),
        ("RUST_LOG", "info"),
        ("GITFERRY_TIME_SCALE", "30"),
        ("GITFERRY_MAX_BODY", "65536"),
    ];
    let (mut child, base) = harness::start_serve(dir.path(), ["--store", "store"], &env, (&log, None), 20);
    for (repo, source, target, _) in &worktrees {
        let until = Instant::now() + Duration::from_secs(30);
        while git(target, ["for-each-ref"]) != git(source, ["for-each-ref"]) {
            assert!(Instant::now() < until, "{repo}: the startup sync did not mirror it");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let client = reqwest::blocking::Client::new();
    for (repo, source, _, wt) in &mut worktrees {
        wt.commit_file(
            "big.txt",
            b"a push with many commits",
            "the push the webhook could not carry",
        );
        wt.push_all();
        let after = git(source, ["rev-parse", "refs/heads/main"]);
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "after": after,
            "commits": vec![serde_json::json!({ "message": "x".repeat(1000) }); 100],
            "repository": { "clone_url": servers.url(Proto::GitDaemon, &format!("{repo}-src.git")) },
        })
        .to_string();
        let r = client
            .post(format!("{base}/webhook/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", format!("too-big-{repo}"))
            .header("X-Hub-Signature-256", sign(Provider::Github, SECRET, body.as_bytes()))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 413, "{repo}");
    }
    let (polled, hooked) = (&worktrees[0], &worktrees[1]);
    let until = Instant::now() + Duration::from_secs(30);
    while git(&polled.2, ["rev-parse", "refs/heads/main"]) != git(&polled.1, ["rev-parse", "refs/heads/main"]) {
        assert!(
            Instant::now() < until,
            "the poller did not catch the push of the `both` repository"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_refs_equal(&polled.1, &polled.2);
    // Three more poll intervals: the webhook_only repository stays behind.
    std::thread::sleep(Duration::from_secs(6));
    assert_ne!(
        git(&hooked.2, ["rev-parse", "refs/heads/main"]),
        git(&hooked.1, ["rev-parse", "refs/heads/main"]),
        "webhook_only repositories are not polled"
    );
    let metrics = client.get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    assert_eq!(webhook_responses(&metrics, 413), 2, "{metrics}");
    let text = std::fs::read_to_string(&log).unwrap();
    for repo in ["polled", "hooked"] {
        assert!(
            text.lines().any(|l| l.contains("webhook delivery rejected")
                && l.contains(&format!("delivery=\"too-big-{repo}\""))
                && l.contains("status=413")
                && l.contains("body larger than 65536 bytes")),
            "{repo}: no log line for the 413:\n{text}"
        );
    }
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
