//! Secrets never leak, payload URLs are never fetched (issue 7's security checks).
//!
//! A real `gitferry serve` with debug logging mirrors from and to a basic-auth HTTP server, once
//! with the right credentials and once with a wrong password, receives good and bad webhooks,
//! and notifies a receiver. Then every byte it produced — its log, every object in its store,
//! the notifications, `/status`, `/metrics` — is scanned for the test secrets.

use std::process::Command;
use std::time::{Duration, Instant};

use gitferry_core::config::Provider;
use harness::receiver::Receiver;
use harness::{BasicAuth, Proto, Servers, Worktree};

const PASSWORD: &str = "pw-Z7q9-super-secret";
const WRONG_PASSWORD: &str = "pw-wrong-9x8y-secret";
const HOOK_SECRET: &str = "hook-Q3w4-secret";
const STATUS_TOKEN: &str = "token-K5l6-secret";

fn scan(what: &str, text: &str) {
    for secret in [PASSWORD, WRONG_PASSWORD, HOOK_SECRET, STATUS_TOKEN] {
        assert!(!text.contains(secret), "{what} contains the secret {secret:?}:\n{text}");
    }
}

#[test]
fn no_secret_in_logs_status_store_notifications_or_metrics_and_no_ssrf() {
    for s in [PASSWORD, WRONG_PASSWORD, HOOK_SECRET, STATUS_TOKEN] {
        harness::leaks::secret(s);
    }
    let auth = BasicAuth {
        user: "mirror-bot".into(),
        password: PASSWORD.into(),
    };
    let servers = Servers::start_with_auth(Some(auth));
    let source = servers.create_bare("src.git");
    servers.create_bare("dst.git");
    servers.create_bare("dst2.git");
    Worktree::new(&source).build_history();
    let receiver = Receiver::start();
    let canary = Receiver::start();
    let dir = harness::tempdir();
    let src_url = servers.url(Proto::Http, "src.git");
    let config = format!(
        "[notify]\ngeneric_webhook_url_env = \"NOTIFY\"\n\
         [repos.app]\nurl = \"{src_url}\"\ntoken_env = \"SRC_TOKEN\"\nusername = \"mirror-bot\"\n\
         webhook = {{ provider = \"github\", secret_env = \"HOOK\" }}\n\
         [[repos.app.targets]]\nurl = \"{}\"\ntoken_env = \"SRC_TOKEN\"\nusername = \"mirror-bot\"\n\
         [repos.broken]\nurl = \"{src_url}\"\ntoken_env = \"WRONG_TOKEN\"\nusername = \"mirror-bot\"\n\
         [[repos.broken.targets]]\nurl = \"{}\"\ntoken_env = \"WRONG_TOKEN\"\nusername = \"mirror-bot\"\n",
        servers.url(Proto::Http, "dst.git"),
        servers.url(Proto::Http, "dst2.git"),
    );
    std::fs::write(dir.path().join("mirrors.toml"), config).unwrap();
    let log = dir.path().join("serve.log");
    let notify = receiver.url();
    let (mut child, base) = harness::start_serve(
        dir.path(),
        ["--store", "store"],
        &[
            ("SRC_TOKEN", PASSWORD),
            ("WRONG_TOKEN", WRONG_PASSWORD),
            ("HOOK", HOOK_SECRET),
            ("NOTIFY", notify.as_str()),
            ("GITFERRY_STATUS_TOKEN", STATUS_TOKEN),
            ("RUST_LOG", "debug"),
        ],
        (&log, Some(&dir.path().join("stdout.log"))),
        60,
    );
    let client = reqwest::blocking::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(r) = get("/status", Some(STATUS_TOKEN))
            && let Ok(v) = r.json::<serde_json::Value>()
            && v["repos"]
                .as_array()
                .is_some_and(|a| a.iter().all(|s| s["state"] == "success" || s["state"] == "failed"))
        {
            break v;
        }
        assert!(Instant::now() < until, "repos never settled");
        std::thread::sleep(Duration::from_millis(100));
    };
    let states: Vec<_> = status["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["repo"].clone(), s["state"].clone()))
        .collect();
    assert!(
        states.contains(&("app".into(), "success".into())) && states.contains(&("broken".into(), "failed".into())),
        "{states:?}"
    );
    let broken_error = status["repos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["repo"] == "broken")
        .unwrap()["last_error"]
        .to_string();
    assert!(broken_error.contains("authentication failed"), "{broken_error}");

    // Status routes refuse missing or wrong tokens (the server is on loopback, but has a token).
    assert_eq!(get("/status", None).unwrap().status().as_u16(), 401);
    assert_eq!(get("/status", Some("wrong")).unwrap().status().as_u16(), 401);
    assert_eq!(get("/", None).unwrap().status().as_u16(), 401);
    let manual = client.post(format!("{base}/repos/app/sync")).send().unwrap();
    assert_eq!(manual.status().as_u16(), 401);

    // SSRF: a signed delivery whose payload names the configured repo *and* other URLs: only
    // the configured URL is ever fetched; the canary sees nothing. An unknown URL alone: 401,
    // as if the signature were wrong (nothing about the configuration is revealed).
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "repository": {
            "clone_url": src_url,
            "html_url": canary.url(),
            "git_url": canary.url(),
            "url": canary.url(),
        },
    })
    .to_string();
    let signed = |body: &str| gitferry_core::webhook::sign(Provider::Github, HOOK_SECRET, body.as_bytes());
    let post = |body: &str, sig: &str| {
        client
            .post(format!("{base}/webhook/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", uuid_like(body))
            .header("X-Hub-Signature-256", sig)
            .body(body.to_owned())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(&body, &signed(&body)), 202);
    let only_canary = serde_json::json!({ "repository": { "clone_url": canary.url() } }).to_string();
    assert_eq!(post(&only_canary, &signed(&only_canary)), 401);
    assert_eq!(post(&body, "sha256=0123"), 401);
    std::thread::sleep(Duration::from_secs(2));
    assert!(canary.bodies().is_empty(), "payload URLs are never contacted");

    let metrics = get("/metrics", None).unwrap().text().unwrap();
    let status_text = get("/status", Some(STATUS_TOKEN)).unwrap().text().unwrap();
    let page = get("/", Some(STATUS_TOKEN)).unwrap().text().unwrap();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // Now scan everything it produced.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("DEBUG") || log_text.contains("INFO"),
        "debug logging was on"
    );
    scan("the server log", &log_text);
    scan(
        "stdout",
        &std::fs::read_to_string(dir.path().join("stdout.log")).unwrap(),
    );
    scan("/metrics", &metrics);
    scan("/status", &status_text);
    scan("the status page", &page);
    for n in receiver.bodies() {
        scan("a notification", &n.to_string());
    }
    assert!(!receiver.bodies().is_empty(), "notifications were sent (and scanned)");
    let mut files = 0;
    for entry in walk(&dir.path().join("store")) {
        if entry.extension().is_some_and(|e| e == "pack" || e == "idx") {
            continue; // git objects: the fixture's content, not ours
        }
        let bytes = std::fs::read(&entry).unwrap();
        scan(
            &format!("store file {}", entry.display()),
            &String::from_utf8_lossy(&bytes),
        );
        files += 1;
    }
    assert!(files > 5, "the store was scanned ({files} files)");
}

fn uuid_like(body: &str) -> String {
    format!("{:x}", body.len() * 7919 + body.bytes().map(usize::from).sum::<usize>())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
