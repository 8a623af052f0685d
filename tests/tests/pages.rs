//! The status pages as an operator meets them: rendered by the shared handler over a real store,
//! looked at in headless Chromium (screenshots in target/pages/), navigated by keyboard, and
//! the browser authentication flow through both front ends — the webhook Lambda handler and a
//! running `gitferry serve`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitferry_core::api::{Api, Request, Response};
use gitferry_core::config::{Config, Secret};
use gitferry_core::metrics::Metrics;
use gitferry_core::queue::memory::MemoryQueue;
use gitferry_core::status::{History, RepoStatus, State, StatusBook, SyncRecord, TargetStatus};
use gitferry_core::store::fs::FsStore;
use gitferry_core::store::{Condition, ObjectStore};

const TOKEN: &str = "page-status-token-7f3a";

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `n` repositories with every kind of state, stored as the sync code stores them.
struct Fleet {
    api: Api,
    store: Arc<dyn ObjectStore>,
    _dir: harness::TempDir,
}

fn config_text(n: usize) -> String {
    let mut text = String::from("poll_interval_secs = 300\n");
    for i in 0..n {
        let owner = ["acme", "tools", "infra"][i % 3];
        text.push_str(&format!(
            "[repos.r{i:04}]\nurl = \"https://github.com/{owner}/r{i:04}.git\"\n\
             [[repos.r{i:04}.targets]]\nurl = \"https://gitlab.example.com/mirror/r{i:04}.git\"\nname = \"gitlab\"\n\
             [[repos.r{i:04}.targets]]\nurl = \"git://backup.internal/r{i:04}.git\"\nname = \"backup\"\n"
        ));
    }
    text
}

/// The state repository `i` of a fleet is in: r0000 fails on one target, every 10th is stale,
/// every 25th stalled, every 40th interrupted; the rest are fine.
fn status_of(i: usize, now: u64) -> RepoStatus {
    let ok = TargetStatus {
        state: State::Success,
        last_success_at: Some(now - 60_000),
        last_checked: Some(now - 30_000),
        ..Default::default()
    };
    let mut s = RepoStatus {
        repo: format!("r{i:04}"),
        state: State::Success,
        last_success_at: Some(now - 60_000),
        last_checked: Some(now - 30_000),
        source_refs: 12,
        targets: [("gitlab".to_owned(), ok.clone()), ("backup".to_owned(), ok)].into(),
        updated_at: now - 60_000,
        ..Default::default()
    };
    if i == 0 {
        s.state = State::Failed;
        s.consecutive_failures = 4;
        s.last_error = Some("target backup: backup.internal: network error (connection refused)".into());
        let t = s.targets.get_mut("backup").unwrap();
        t.state = State::Failed;
        t.last_error = s.last_error.clone();
    } else if i.is_multiple_of(25) {
        s.state = State::Syncing; // with no lease: reads as stalled
    } else if i.is_multiple_of(40) {
        s.state = State::Interrupted;
        s.last_error = Some("interrupted — resuming (stopped while fetching; progress saved)".into());
    } else if i.is_multiple_of(10) {
        s.last_checked = Some(now - 3 * 3_600_000); // three hours: more than 3 × 5 minutes
        s.updated_at = now - 3 * 3_600_000;
    }
    s
}

async fn fleet(n: usize) -> Fleet {
    let started = Instant::now();
    harness::leaks::secret(TOKEN);
    let dir = harness::tempdir();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path().to_owned()));
    let now = harness::now_ms();
    // Written as the local store lays objects out (its put fsyncs each: a minute for 5,000).
    for i in 0..n {
        let path = dir.path().join(gitferry_core::keys::status(&format!("r{i:04}")));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&status_of(i, now)).unwrap()).unwrap();
    }
    let config = Config::parse(&config_text(n), Path::new("pages.toml"), &|_| None).unwrap();
    let api = Api {
        config: Arc::new(config),
        queue: Arc::new(MemoryQueue::new(5)),
        status: StatusBook::new(store.clone()),
        metrics: Metrics::discard(),
        status_token: Some(Secret::new("GITFERRY_STATUS_TOKEN", TOKEN)),
        max_body: 1 << 20,
        prometheus: None,
        anonymous_status: false,
        session_key: String::new(),
    };
    println!("fleet of {n} stored in {:?}", started.elapsed());
    Fleet { api, store, _dir: dir }
}

async fn get(api: &Api, path: &str, query: &str) -> Response {
    api.handle(Request {
        method: "GET",
        path,
        query,
        headers: vec![("authorization".into(), basic("ops", TOKEN))],
        body: b"",
    })
    .await
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn write_page(html: &str, name: &str) -> (harness::TempDir, String) {
    let dir = harness::tempdir();
    let file = dir.path().join(format!("{name}.html"));
    std::fs::write(&file, html).unwrap();
    let url = format!("file://{}", file.display());
    (dir, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_at_1_50_and_5000_repositories() {
    for n in [1, 50, 5000] {
        let f = fleet(n).await;
        let started = Instant::now();
        let page = get(&f.api, "/", "").await;
        let served = started.elapsed();
        assert_eq!(page.status, 200);
        let html = text(&page);
        // Rendering alone (the statuses already read): what the 200 ms goal is about.
        let all = f
            .api
            .status
            .all(f.api.config.repos.keys().map(String::as_str))
            .await
            .unwrap();
        let started = Instant::now();
        let rows = gitferry_core::page::rows(&all, &f.api.config, harness::now_ms());
        let rendered = gitferry_core::page::overview(rows, &Default::default(), harness::now_ms());
        let render = started.elapsed();
        println!(
            "overview of {n}: {} KiB, rendered in {render:?}, served (reading {n} statuses) in {served:?}",
            rendered.len() / 1024
        );
        assert!(render < Duration::from_millis(200), "{n}: {render:?}");
        assert!(html.len() < 200 * 1024, "a light page: {} bytes", html.len());
        // Trouble first (stalled, then failing, stale…), the counts at the top.
        let first = html.find("<tr data-repo=").unwrap();
        let want = if n > 25 {
            "data-state=\"stalled\""
        } else {
            "data-repo=\"r0000\" data-state=\"failed\""
        };
        assert!(
            html[first..first + 60].contains(want),
            "{n}: {}",
            &html[first..first + 60]
        );
        let failing = get(&f.api, "/", "state=failing").await;
        assert!(
            text(&failing).contains("data-repo=\"r0000\""),
            "{n}: the failing one, filtered"
        );
        // Accounts stay together: each group header appears once on the page.
        let headers: Vec<&str> = html
            .split("class=\"group\"")
            .skip(1)
            .map(|h| &h[..60.min(h.len())])
            .collect();
        let distinct: std::collections::BTreeSet<&&str> = headers.iter().collect();
        assert_eq!(headers.len(), distinct.len(), "{n}: {headers:?}");
        assert!(html.contains("data-count=\"failed\"><b>1</b> failing"), "{n}");
        if n == 5000 {
            assert!(
                html.contains("data-count=\"stalled\"><b>199</b> stalled"),
                "every 25th, but r0000"
            );
            assert!(html.contains("1–100 of 5000"));
            let stale = get(&f.api, "/", "state=stale&q=r00").await;
            assert!(text(&stale).contains("data-state=\"stale\""));
            assert!(!text(&stale).contains("data-state=\"ok\""));
        }
        let (_page_dir, url) = write_page(&html, &format!("overview-{n}"));
        let dom = harness::browser::dump_dom(&url);
        assert!(
            dom.matches("<tr data-repo=").count() == n.min(100),
            "Chromium renders every row"
        );
        let shot = harness::browser::screenshot(&url, &format!("overview-{n}"), (1400, 900));
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a real screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_page_with_a_failing_target() {
    let f = fleet(3).await;
    let now = harness::now_ms();
    let syncs: Vec<SyncRecord> = (0..12)
        .map(|i| SyncRecord {
            started_at: now - (12 - i) * 600_000,
            finished_at: now - (12 - i) * 600_000 + 2_000 + i * 300,
            duration_ms: 2_000 + i * 300,
            queue_lag_ms: Some(150 + i * 20),
            state: if i % 4 == 3 { State::Failed } else { State::Success },
            refs_changed: 1,
            error: (i % 4 == 3).then(|| "target backup: connection refused".to_owned()),
            ..Default::default()
        })
        .collect();
    f.store
        .put(
            &gitferry_core::keys::history("r0000"),
            serde_json::to_vec(&History { syncs }).unwrap(),
            Condition::Always,
        )
        .await
        .unwrap();
    let page = get(&f.api, "/repos/r0000", "").await;
    assert_eq!(page.status, 200);
    let html = text(&page);
    assert!(
        html.contains("<svg role=\"img\" aria-label=\"sync duration: 12 syncs"),
        "a chart"
    );
    assert!(html.matches("class=\"bad\"").count() >= 3, "failures marked");
    assert!(html.contains("<button type=\"submit\">Sync now</button>"));
    assert!(html.contains("connection refused"));
    // The same data as JSON.
    let json = get(&f.api, "/status/r0000", "").await.body_json();
    assert_eq!(json["state"], "failed");
    assert_eq!(json["history"].as_array().unwrap().len(), 12);
    assert_eq!(json["account"], "github.com/acme");
    assert!(json["refs"]["targets"].is_object());
    let (_page_dir, url) = write_page(&html, "repo-failing");
    let shot = harness::browser::screenshot(&url, "repo-failing", (1400, 1200));
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

/// Through the webhook Lambda handler: a browser is asked for the token (401 with
/// `WWW-Authenticate`), gets in with it as the Basic password; the page's "sync now" form works
/// from the page and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_auth_and_the_sync_form_through_the_lambda_handler() {
    let f = fleet(2).await;
    f.store
        .put("config/mirrors.toml", config_text(2).into_bytes(), Condition::Always)
        .await
        .unwrap();
    let env = gitferry_lambda::Env::from_lookup(&|k| match k {
        "GITFERRY_BUCKET" => Some("b".into()),
        "GITFERRY_QUEUE_URL" => Some("q".into()),
        "GITFERRY_STATUS_TOKEN" => Some(TOKEN.into()),
        _ => None,
    })
    .unwrap();
    let queue = Arc::new(MemoryQueue::new(5));
    let rt =
        gitferry_lambda::Runtime::with_parts(env, f.store.clone(), queue.clone(), HashMap::new(), Metrics::discard());
    let event = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let mut v = harness::aws::api_event(path, headers, body);
        v["requestContext"]["http"]["method"] = method.into();
        v["headers"]
            .as_object_mut()
            .unwrap()
            .insert("host".into(), "status.example.com".into());
        serde_json::from_value::<gitferry_lambda::ApiRequest>(v).unwrap()
    };
    let denied = gitferry_lambda::webhook(&rt, event("GET", "/", &[], "")).await;
    assert_eq!(denied.status_code, 401);
    assert!(
        denied.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"gitferry\""),
        "the browser is asked: {:?}",
        denied.headers
    );
    let wrong = basic("ops", "not-the-token");
    assert_eq!(
        gitferry_lambda::webhook(&rt, event("GET", "/", &[("authorization", &wrong)], ""))
            .await
            .status_code,
        401
    );
    let auth = basic("anyone", TOKEN);
    let page = gitferry_lambda::webhook(&rt, event("GET", "/repos/r0001", &[("authorization", &auth)], "")).await;
    assert_eq!(page.status_code, 200);
    let html = match &page.body {
        Some(aws_lambda_events::encodings::Body::Text(t)) => t.clone(),
        other => panic!("{other:?}"),
    };
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the form carries a token")
        .to_owned();
    let post = |headers: &[(&str, &str)], body: &str| event("POST", "/repos/r0001/sync", headers, body);
    let form = format!("csrf={csrf}");
    let same_site = [
        ("authorization", auth.as_str()),
        ("origin", "https://status.example.com"),
        ("sec-fetch-site", "same-origin"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let cross_site = [
        ("authorization", auth.as_str()),
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ];
    assert_eq!(
        gitferry_lambda::webhook(&rt, post(&cross_site, &form))
            .await
            .status_code,
        403
    );
    assert_eq!(
        gitferry_lambda::webhook(&rt, post(&same_site, "csrf=forged"))
            .await
            .status_code,
        403
    );
    assert_eq!(queue.len().await, 0, "nothing was queued by refused forms");
    let ok = gitferry_lambda::webhook(&rt, post(&same_site, &form)).await;
    assert_eq!(ok.status_code, 303);
    assert_eq!(ok.headers["location"], "/repos/r0001");
    let bearer = format!("Bearer {TOKEN}");
    let script = gitferry_lambda::webhook(&rt, post(&[("authorization", &bearer)], "")).await;
    assert_eq!(script.status_code, 202, "scripts keep the bearer token and JSON");
    assert_eq!(queue.len().await, 2);
}

/// A running `gitferry serve` with a token: the browser flow, then a keyboard user tabbing
/// through the overview and a repository page (playwright-core driving Chromium).
#[test]
fn serve_asks_browsers_for_the_token_and_the_pages_work_by_keyboard() {
    harness::leaks::secret(TOKEN);
    let dir = harness::tempdir();
    std::fs::write(dir.path().join("mirrors.toml"), config_text(3)).unwrap();
    let (mut child, base) = harness::start_serve(
        dir.path(),
        ["--store", "store"],
        &[("GITFERRY_STATUS_TOKEN", TOKEN)],
        (&dir.path().join("serve.log"), None),
        20,
    );
    let client = reqwest::blocking::Client::new();
    let denied = client.get(format!("{base}/")).send().unwrap();
    assert_eq!(denied.status(), 401);
    assert!(
        denied.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let ok = client
        .get(format!("{base}/"))
        .basic_auth("ops", Some(TOKEN))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    for path in ["/", "/repos/r0001"] {
        let report = harness::browser::keyboard(&format!("{base}{path}"), "ops", TOKEN);
        assert_eq!(report["status"], 200, "{report}");
        let focused = report["focused"].as_array().unwrap();
        assert_eq!(
            focused[0]["text"], "Skip to content",
            "the skip link comes first: {report}"
        );
        assert_eq!(report["afterSkip"], "#main", "{report}");
        assert!(
            focused.iter().all(|f| f["outline"] == true),
            "every focused element shows a focus outline: {report}"
        );
        let reachable: Vec<&str> = focused.iter().filter_map(|f| f["text"].as_str()).collect();
        let wanted = if path == "/" { "r0000" } else { "Sync now" };
        assert!(
            reachable.contains(&wanted),
            "{wanted} is reachable by Tab: {reachable:?}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
