//! Whole accounts (issue 18) against the harness's stand-ins for the GitHub, GitLab and
//! Gitea/Forgejo REST APIs (`harness::forge`, which cites the API descriptions it follows) and
//! real git servers for the repositories: discovery on the poll schedule (pagination,
//! include/exclude, forks/archived/private switches, ETags), discovered repositories mirrored
//! through templated targets, targets created through the provider's API (once; "already
//! exists" is success), renames followed, deleted sources kept and reported, rate limits
//! backed off.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitferry_core::accounts::Catalog;
use gitferry_core::config::Config;
use gitferry_core::metrics::Metrics;
use gitferry_core::notify::Notifier;
use gitferry_core::poll::{PollOptions, Poller, Tick};
use gitferry_core::queue::Queue;
use gitferry_core::queue::memory::MemoryQueue;
use gitferry_core::request::SyncRequest;
use gitferry_core::store::ObjectStore;
use gitferry_core::store::fault::FaultStore;
use gitferry_core::store::fs::FsStore;
use gitferry_core::sync::{SyncManager, SyncOptions};
use harness::forge::{Forge, Kind, Limit};
use harness::{Proto, Servers, Worktree};

const TOKEN: &str = "tok-acme-1234567890";
const ORG_SECRET: &str = "org-hook-secret-0987654321";
const MINUTE: u64 = 60_000;
const T0: u64 = 1_800_000_000_000;

async fn drain(q: &MemoryQueue) -> Vec<SyncRequest> {
    let mut all = Vec::new();
    loop {
        let got = q.receive(100, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        if got.is_empty() {
            all.sort_by(|a: &SyncRequest, b| a.repo.cmp(&b.repo));
            return all;
        }
        for m in got {
            q.ack(&m.receipt).await.unwrap();
            all.push(SyncRequest::from_json(&m.body).unwrap());
        }
    }
}

/// The poller, a sync manager and the store of one gitferry, sharing one catalog.
struct Ferry {
    poller: Poller,
    manager: SyncManager,
    queue: Arc<MemoryQueue>,
    store: Arc<FaultStore>,
    catalog: Catalog,
    _dirs: (harness::leaks::TempDir, harness::leaks::TempDir),
}

impl Ferry {
    fn new(text: &str) -> Ferry {
        Self::build(text, None)
    }

    /// With notifications (`[notify]` with `generic_webhook_url_env = "NOTIFY_URL"`) going to
    /// `notify_url`.
    fn notifying(text: &str, notify_url: String) -> Ferry {
        Self::build(text, Some(notify_url))
    }

    fn build(text: &str, notify_url: Option<String>) -> Ferry {
        let env = |name: &str| match name {
            "ACME_TOKEN" => Some(TOKEN.to_owned()),
            "ORG_SECRET" => Some(ORG_SECRET.to_owned()),
            "NOTIFY_URL" => notify_url.clone(),
            _ => None,
        };
        let config = Arc::new(Config::parse(text, Path::new("mirrors.toml"), &env).unwrap());
        let (dir, work) = (harness::tempdir(), harness::tempdir());
        let store = Arc::new(FaultStore::new(Arc::new(FsStore::new(dir.path().to_owned()))));
        let queue = Arc::new(MemoryQueue::new(5));
        let catalog = Catalog::new(config.clone(), store.clone());
        let notifier = Notifier::new(&config.notify);
        let manager = SyncManager::new(
            config.clone(),
            store.clone(),
            notifier.clone(),
            Metrics::discard(),
            SyncOptions {
                work_dir: work.path().to_owned(),
                ..SyncOptions::default()
            },
        )
        .with_catalog(catalog.clone());
        let poller = Poller::new(
            config,
            "digest-1",
            queue.clone(),
            store.clone(),
            Metrics::discard(),
            PollOptions::default(),
        )
        .with_catalog(catalog.clone())
        .with_notifier(notifier);
        Ferry {
            poller,
            manager,
            queue,
            store,
            catalog,
            _dirs: (dir, work),
        }
    }

    /// One tick at `t`, then every request it enqueued synced. Returns the tick and the repos.
    async fn tick(&self, t: u64) -> (Tick, Vec<String>) {
        let tick = self.poller.tick(t).await.unwrap();
        let queued = drain(&self.queue).await;
        self.manager
            .handle_batch(&queued, Instant::now() + Duration::from_secs(120))
            .await;
        let mut repos: Vec<String> = queued.into_iter().map(|r| r.repo).collect();
        repos.dedup();
        (tick, repos)
    }
}

/// A source repository `path` (`acme/app`) with some history on the real git servers.
fn source(servers: &Servers, path: &str) -> Worktree {
    let src = servers.create_bare(&format!("{path}.git"));
    let mut wt = Worktree::new(&src);
    wt.commit_file("README", format!("{path}\n").as_bytes(), "init");
    wt.commit_file("b.txt", b"more\n", "second");
    wt.push_all();
    wt
}

fn account_toml(kind: Kind, forge: &Forge, servers: &Servers, owner: &str, extra: &str) -> String {
    let provider = match kind {
        Kind::Github => "github",
        Kind::Gitlab => "gitlab",
        Kind::Gitea => "gitea",
    };
    let api = forge.api_url();
    let http = servers.url(Proto::Http, "");
    let http = http.trim_end_matches('/');
    format!(
        "poll_interval_secs = 60\n\
         [accounts.acme]\nprovider = \"{provider}\"\napi_url = \"{api}\"\nowner = \"{owner}\"\n\
         token_env = \"ACME_TOKEN\"\ndiscover_interval_secs = 60\n{extra}\n\
         [[accounts.acme.targets]]\nname = \"backup\"\nurl = \"{http}/mirrors/{{name}}.git\"\ncreate = true\n\
         provider = \"{provider}\"\napi_url = \"{api}\"\ntoken_env = \"ACME_TOKEN\"\n"
    )
}

/// Discovery with pagination and every filter, discovered repositories mirrored into targets
/// created through the API, a second run that creates nothing — for each provider.
async fn discover_and_mirror(kind: Kind) {
    let servers = Servers::start();
    let forge = Forge::start(kind);
    let owner = if kind == Kind::Gitlab { "grp" } else { "acme" };
    let sub = if kind == Kind::Gitlab { "grp/sub" } else { owner };
    let mut wts = Vec::new();
    {
        let mut st = forge.state();
        st.token = Some(TOKEN.into());
        st.git_root = Some(servers.root().to_owned());
        st.owners.insert("mirrors".into());
        for name in ["app", "tools"] {
            wts.push(source(&servers, &format!("{owner}/{name}")));
            st.add(owner, name, &servers.url(Proto::Http, &format!("{owner}/{name}.git")));
        }
        // Wikis: app's has pages (a wiki repository), tools' is enabled but empty (none).
        wts.push(source(&servers, &format!("{owner}/app.wiki")));
        st.find(&format!("{owner}/app")).unwrap().has_wiki = true;
        st.find(&format!("{owner}/tools")).unwrap().has_wiki = true;
        wts.push(source(&servers, &format!("{sub}/deep")));
        st.add(sub, "deep", &servers.url(Proto::Http, &format!("{sub}/deep.git")));
        st.add(owner, "a-fork", "http://127.0.0.1:1/x.git").fork = true;
        st.add(owner, "frozen", "http://127.0.0.1:1/x.git").archived = true;
        st.add(owner, "secret", "http://127.0.0.1:1/x.git").private = true;
        for i in 0..120 {
            st.add(owner, &format!("filler-{i:03}"), "http://127.0.0.1:1/x.git");
        }
    }
    // `tools` has a target that exists already (someone made it): creating it is a no-op.
    servers.create_bare("mirrors/tools.git");
    // A wiki repository comes with its project (GitLab, Gitea) or first page (GitHub).
    let target_wiki = servers.create_bare("mirrors/app.wiki.git");
    forge.state().add("mirrors", "tools", "created:mirrors/tools");
    let subgroups = if kind == Kind::Gitlab {
        "include_subgroups = true\n"
    } else {
        ""
    };
    let text = account_toml(
        kind,
        &forge,
        &servers,
        owner,
        &format!(
            "exclude = [\"filler-*\"]\nforks = false\narchived = false\nprivate = false\nwikis = true\n{subgroups}"
        ),
    );
    let ferry = Ferry::new(&text);

    let started = Instant::now();
    let (tick, synced) = ferry.tick(T0).await;
    let d = &tick.discovery;
    let per_page = if kind == Kind::Gitea { 50 } else { 100 };
    let listed: usize = 3 + 3 + 120;
    assert_eq!(d.requests, listed.div_ceil(per_page), "{kind:?} {d:?}");
    assert_eq!((d.listed, d.added, d.writes), (1, 3, 1), "{kind:?} {d:?}");
    assert_eq!(synced, ["app", "app.wiki", "deep", "tools", "tools.wiki"], "{kind:?}");
    harness::assert_refs_equal(&servers.path(&format!("{owner}/app.wiki.git")), &target_wiki);
    // No wiki repository at tools' source: nothing to mirror, not a failure.
    let tools_wiki = ferry.manager.status_book().get("tools.wiki").await.unwrap();
    assert!(
        tools_wiki.as_ref().is_none_or(|s| s.error_class.is_none()),
        "{kind:?}: {tools_wiki:?}"
    );
    println!(
        "{kind:?}: discovered {} repos and mirrored 3 in {:?}",
        listed,
        started.elapsed()
    );
    for (name, src) in [("app", owner), ("tools", owner), ("deep", sub)] {
        harness::assert_refs_equal(
            &servers.path(&format!("{src}/{name}.git")),
            &servers.path(&format!("mirrors/{name}.git")),
        );
    }
    let config = ferry.catalog.config().await;
    let app = config.repo("app").unwrap();
    assert_eq!(app.discovered.as_ref().unwrap().account, "acme");
    assert!(config.repo("a-fork").is_none() && config.repo("frozen").is_none() && config.repo("secret").is_none());
    assert!(config.repo("filler-000").is_none());
    {
        let st = forge.state();
        let creates = st.log.iter().filter(|(m, _, _)| m == "POST").collect::<Vec<_>>();
        // app and deep created (201), tools already there (422/400/409: success).
        assert_eq!(creates.len(), 3, "{kind:?} {creates:?}");
        assert_eq!(creates.iter().filter(|(_, _, s)| *s == 201).count(), 2, "{creates:?}");
        let made = st.repos.iter().filter(|r| r.owner == "mirrors").collect::<Vec<_>>();
        assert!(
            made.iter().all(|r| r.private || r.name == "tools"),
            "private by default: {made:?}"
        );
        assert!(
            made.iter()
                .any(|r| r.name == "app" && r.description == "the app repository"),
            "description copied: {made:?}"
        );
    }

    // A new commit: the second run pushes it and creates nothing.
    wts[0].commit_file("c.txt", b"third\n", "third");
    wts[0].push_all();
    ferry.poller.reconcile("test").await.unwrap();
    let (_, synced) = ferry.tick(T0 + MINUTE).await;
    assert!(synced.contains(&"app".to_owned()), "{synced:?}");
    harness::assert_refs_equal(
        &servers.path(&format!("{owner}/app.git")),
        &servers.path("mirrors/app.git"),
    );
    assert_eq!(forge.state().count("POST", ""), 3, "a second run creates nothing");
    harness::leaks::check("forge log", &format!("{:?}", forge.state().log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_account_discovered_and_mirrored() {
    discover_and_mirror(Kind::Github).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_group_with_subgroups_discovered_and_mirrored() {
    discover_and_mirror(Kind::Gitlab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_organisation_discovered_and_mirrored() {
    discover_and_mirror(Kind::Gitea).await;
}

/// 5,000 repositories on GitHub: 50 full pages (and the empty 51st) inside one tick; the next
/// listing is 51 `304`s that write nothing; a new repository changes the last page only, is
/// discovered and mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_repos_then_not_modified_then_a_new_one() {
    let servers = Servers::start();
    let forge = Forge::start(Kind::Github);
    {
        let mut st = forge.state();
        st.token = Some(TOKEN.into());
        st.git_root = Some(servers.root().to_owned());
        st.owners.insert("mirrors".into());
        for i in 0..5000 {
            st.add("acme", &format!("r{i:04}"), "http://127.0.0.1:1/x.git");
        }
    }
    let text = account_toml(Kind::Github, &forge, &servers, "acme", "include = [\"new-*\"]\n");
    let ferry = Ferry::new(&text);
    let started = Instant::now();
    let (first, _) = ferry.tick(T0).await;
    let took = started.elapsed();
    assert_eq!((first.discovery.requests, first.discovery.writes), (51, 1), "{first:?}");
    println!("5,000 repos: 51 pages listed in {took:?}");

    let before = state_etag(&ferry).await;
    let (second, _) = ferry.tick(T0 + MINUTE).await;
    let d = &second.discovery;
    assert_eq!((d.requests, d.not_modified, d.writes, d.added), (51, 51, 0, 0), "{d:?}");
    assert_eq!(
        forge
            .state()
            .log
            .iter()
            .rev()
            .take(51)
            .filter(|(_, _, s)| *s == 304)
            .count(),
        51
    );
    assert_eq!(state_etag(&ferry).await, before, "an unchanged listing writes nothing");

    source(&servers, "acme/new-one");
    forge
        .state()
        .add("acme", "new-one", &servers.url(Proto::Http, "acme/new-one.git"));
    let (third, synced) = ferry.tick(T0 + 2 * MINUTE).await;
    assert_eq!((third.discovery.added, third.discovery.writes), (1, 1), "{third:?}");
    assert_eq!(third.discovery.not_modified, 50, "only the last page changed");
    assert_eq!(synced, ["new-one"]);
    harness::assert_refs_equal(&servers.path("acme/new-one.git"), &servers.path("mirrors/new-one.git"));
}

/// Renamed, deleted and archived sources; an explicit `[repos.NAME]` beside a discovered one of
/// the same name; rate limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_followed_deletions_kept_explicit_wins_rate_limits_wait() {
    let servers = Servers::start();
    let forge = Forge::start(Kind::Github);
    let mut wts = Vec::new();
    {
        let mut st = forge.state();
        st.token = Some(TOKEN.into());
        st.git_root = Some(servers.root().to_owned());
        st.owners.insert("mirrors".into());
        for name in ["app", "lib", "gone", "old"] {
            wts.push(source(&servers, &format!("acme/{name}")));
            st.add("acme", name, &servers.url(Proto::Http, &format!("acme/{name}.git")));
        }
    }
    servers.create_bare("elsewhere/lib.git");
    let mut text = account_toml(Kind::Github, &forge, &servers, "acme", "archived = false\n");
    text.push_str(&format!(
        "[repos.lib]\nurl = \"{}\"\n[[repos.lib.targets]]\nurl = \"{}\"\n",
        servers.url(Proto::Http, "acme/lib.git"),
        servers.path("elsewhere/lib.git").display()
    ));
    text.push_str("[notify]\ngeneric_webhook_url_env = \"NOTIFY_URL\"\n");
    let receiver = harness::receiver::Receiver::start();
    let ferry = Ferry::notifying(&text, receiver.url());
    let (first, synced) = ferry.tick(T0).await;
    assert_eq!(synced, ["app", "gone", "lib", "old"], "{first:?}");
    // The explicit entry wins: lib goes where [repos.lib] says, and no target is created for it.
    harness::assert_refs_equal(&servers.path("acme/lib.git"), &servers.path("elsewhere/lib.git"));
    assert!(!servers.path("mirrors/lib.git").exists());
    assert!(ferry.catalog.config().await.repo("lib").unwrap().discovered.is_none());

    // Rename app → app2 (same id), delete gone, archive old.
    std::fs::rename(servers.path("acme/app.git"), servers.path("acme/app2.git")).unwrap();
    {
        let mut st = forge.state();
        let app = st.find("acme/app").unwrap();
        app.name = "app2".into();
        app.clone_url = servers.url(Proto::Http, "acme/app2.git");
        st.repos.retain(|r| r.name != "gone");
        st.find("acme/old").unwrap().archived = true;
    }
    let (second, _) = ferry.tick(T0 + MINUTE).await;
    let d = &second.discovery;
    assert_eq!((d.renamed, d.vanished), (1, 1), "{d:?}");
    // Reported once each: the deleted and the archived source (kept), the rename (followed).
    receiver.wait_for(3, Duration::from_secs(5));
    let repos = |event: &str| {
        let mut r: Vec<String> = receiver
            .events(event)
            .iter()
            .map(|b| b["repo"].as_str().unwrap_or("").to_owned())
            .collect();
        r.sort();
        r
    };
    assert_eq!(repos("source_gone"), ["gone", "old"], "{:?}", receiver.bodies());
    assert_eq!(repos("source_renamed"), ["app"], "{:?}", receiver.bodies());
    let text = receiver.events("source_renamed")[0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(text.contains("app2"), "the new name is said: {text}");
    harness::leaks::check("notifications", &format!("{:?}", receiver.bodies()));
    assert_eq!(
        forge.state().count("PATCH", "/repos/mirrors/app"),
        1,
        "the created target renamed"
    );
    assert!(servers.path("mirrors/app2.git").exists() && !servers.path("mirrors/app.git").exists());
    let config = ferry.catalog.config().await;
    let gone = config.repo("gone").unwrap();
    assert!(gone.frozen_because().unwrap().contains("no longer listed"), "{gone:?}");
    assert!(
        config
            .repo("old")
            .unwrap()
            .frozen_because()
            .unwrap()
            .contains("archived")
    );
    // Kept: the mirrors of the deleted and the archived source are untouched.
    for name in ["gone", "old"] {
        harness::assert_refs_equal(
            &servers.path(&format!("acme/{name}.git")),
            &servers.path(&format!("mirrors/{name}.git")),
        );
    }
    // The renamed source is followed: a new commit lands in the renamed target.
    let mut moved = Worktree::new(&servers.path("acme/app2.git"));
    moved.commit_file("after-rename.txt", b"x\n", "after rename");
    moved.push_all();
    ferry.poller.reconcile("test").await.unwrap();
    let (_, synced) = ferry.tick(T0 + 2 * MINUTE).await;
    assert!(
        synced.contains(&"app".to_owned()) && !synced.contains(&"gone".to_owned()),
        "{synced:?}"
    );
    harness::assert_refs_equal(&servers.path("acme/app2.git"), &servers.path("mirrors/app2.git"));
    let json = gitferry_core::ui::status_json(&api(&ferry)).await;
    let body: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let gone_row = body["repos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repo"] == "gone")
        .unwrap();
    assert_eq!(gone_row["account"], "acme");
    assert!(
        gone_row["source_gone"].as_str().unwrap().contains("mirror kept"),
        "{gone_row}"
    );

    // A secondary rate limit with Retry-After: 1 is waited out inside the run.
    forge.state().limits.push_back(Limit::RetryAfter { secs: 1 });
    let t = Instant::now();
    let (limited, _) = ferry.tick(T0 + 3 * MINUTE).await;
    assert_eq!(limited.discovery.rate_limited, 0, "{limited:?}");
    assert!(t.elapsed() >= Duration::from_secs(1));
    // A primary limit an hour away: no waiting; listed again only when it lifts.
    forge.state().limits.push_back(Limit::Primary { secs: 3600 });
    let (limited, _) = ferry.tick(T0 + 4 * MINUTE).await;
    assert_eq!(limited.discovery.rate_limited, 1, "{limited:?}");
    let before = forge.state().log.len();
    let (later, _) = ferry.tick(T0 + 5 * MINUTE).await;
    assert_eq!(
        (later.discovery.listed, forge.state().log.len()),
        (0, before),
        "{later:?}"
    );
}

async fn state_etag(ferry: &Ferry) -> String {
    let key = gitferry_core::keys::account("acme");
    ferry.store.get(&key).await.unwrap().unwrap().etag
}

fn api(ferry: &Ferry) -> gitferry_core::api::Api {
    gitferry_core::api::Api {
        catalog: ferry.catalog.clone(),
        queue: ferry.queue.clone(),
        status: gitferry_core::status::StatusBook::new(ferry.store.clone()),
        metrics: Metrics::discard(),
        status_token: None,
        max_body: 1 << 20,
        prometheus: None,
        anonymous_status: true,
        session_key: "k".into(),
    }
}

/// An account-level hook's repository events, as each provider documents them, authenticated
/// with the account-level `[webhooks.PROVIDER]` secret: a created repository is discovered and
/// mirrored by the one sync the delivery enqueues; a deleted one is reported and its mirror
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_organisation_hook_repository_events_discover_at_once() {
    repository_events_discover_at_once(Kind::Github).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_group_hook_project_events_discover_at_once() {
    repository_events_discover_at_once(Kind::Gitlab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_organisation_hook_repository_events_discover_at_once() {
    repository_events_discover_at_once(Kind::Gitea).await;
}

/// A repository event from `owner`'s account-level hook: headers and body as the provider
/// sends them (`action` is `created` or `deleted`).
/// - GitHub `repository` (organisation hook): `action`, `repository` with `full_name`,
///   `owner.login`, `clone_url`; `organization.login`; HMAC-SHA256 in `X-Hub-Signature-256`.
/// - GitLab group hook "Project events" (GitLab 17.6; `X-Gitlab-Event: Project Hook`, the
///   secret in `X-Gitlab-Token`): the documented payload of `project_create` /
///   `project_destroy` — GitLab docs `doc/user/project/integrations/webhook_events.md`, as in
///   gitlabhq/gitlabhq at 88d3e50d6971e1cf4ab52c1d44eebf0ca852baf5.
/// - Gitea/Forgejo `repository` (organisation hook): `action`, `repository` with `full_name`,
///   `owner.login`/`username`, `clone_url`; `organization.username`; hex HMAC-SHA256 in
///   `X-Gitea-Signature`.
fn repository_event(
    kind: Kind,
    servers: &Servers,
    (action, owner, name): (&str, &str, &str),
    id: &str,
    secret: &str,
) -> (Vec<(String, String)>, String) {
    use gitferry_core::config::Provider;
    use gitferry_core::webhook::sign;
    let clone_url = servers.url(Proto::Http, &format!("{owner}/{name}.git"));
    let full_name = format!("{owner}/{name}");
    let (provider, body, mut headers) = match kind {
        Kind::Github => (
            Provider::Github,
            serde_json::json!({
                "action": action,
                "repository": { "id": 99, "name": name, "full_name": full_name,
                    "owner": { "login": owner, "type": "Organization" }, "clone_url": clone_url, "private": false },
                "organization": { "login": owner },
                "sender": { "login": "someone" },
            }),
            vec![("X-GitHub-Event", "repository"), ("X-GitHub-Delivery", id)],
        ),
        Kind::Gitlab => (
            Provider::Gitlab,
            serde_json::json!({
                "event_name": if action == "created" { "project_create" } else { "project_destroy" },
                "created_at": "2024-10-07T10:43:48Z", "updated_at": "2024-10-07T10:43:48Z",
                "name": name, "path": name, "path_with_namespace": full_name,
                "project_id": 22, "project_namespace_id": 32,
                "owners": [{ "name": "John", "email": "user1@example.com" }],
                "project_visibility": "private",
            }),
            vec![("X-Gitlab-Event", "Project Hook"), ("X-Gitlab-Event-UUID", id)],
        ),
        Kind::Gitea => (
            Provider::Gitea,
            serde_json::json!({
                "action": action,
                "repository": { "id": 99, "name": name, "full_name": full_name,
                    "owner": { "login": owner, "username": owner }, "clone_url": clone_url, "private": false },
                "organization": { "username": owner },
                "sender": { "login": "someone", "username": "someone" },
            }),
            vec![("X-Gitea-Event", "repository"), ("X-Gitea-Delivery", id)],
        ),
    };
    let body = body.to_string();
    let signature = sign(provider, secret, body.as_bytes());
    let signature_header = match kind {
        Kind::Github => "X-Hub-Signature-256",
        Kind::Gitlab => "X-Gitlab-Token",
        Kind::Gitea => "X-Gitea-Signature",
    };
    headers.push((signature_header, &signature));
    headers.push(("Content-Type", "application/json"));
    let headers = headers.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    (headers, body)
}

async fn repository_events_discover_at_once(kind: Kind) {
    use gitferry_core::webhook::{Delivery, accept};
    const SECRET: &str = ORG_SECRET;
    let (provider, owner) = match kind {
        Kind::Github => ("github", "acme"),
        Kind::Gitlab => ("gitlab", "grp"),
        Kind::Gitea => ("gitea", "acme"),
    };
    let servers = Servers::start();
    let forge = Forge::start(kind);
    {
        let mut st = forge.state();
        st.git_root = Some(servers.root().to_owned());
        st.owners.insert("mirrors".into());
        source(&servers, &format!("{owner}/app"));
        st.add(owner, "app", &servers.url(Proto::Http, &format!("{owner}/app.git")));
    }
    let mut text = account_toml(kind, &forge, &servers, owner, "");
    text.push_str(&format!("[webhooks.{provider}]\nsecret_env = \"ORG_SECRET\"\n"));
    let ferry = Ferry::new(&text);
    // Webhook discoveries run at the wall clock: the poll tick before them does too.
    let (_, synced) = ferry.tick(harness::now_ms() - MINUTE).await;
    assert_eq!(synced, ["app"]);

    let deliver = |action: &str, owner: &str, name: &str, id: &str, secret: &str| {
        repository_event(kind, &servers, (action, owner, name), id, secret)
    };
    // What the API hands the webhook code: the effective configuration.
    let config = ferry.catalog.config().await;

    // Created: one delivery, one queued discovery, the new repository mirrored by that sync.
    source(&servers, &format!("{owner}/fresh"));
    forge
        .state()
        .add(owner, "fresh", &servers.url(Proto::Http, &format!("{owner}/fresh.git")));
    let (headers, body) = deliver("created", owner, "fresh", "d-1", SECRET);
    let d = Delivery {
        provider,
        headers: &headers,
        body: body.as_bytes(),
    };
    let started = Instant::now();
    let reply = accept(&config, ferry.queue.as_ref(), &d, 1 << 20).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["discover"], serde_json::json!(["acme"]));
    let queued = drain(&ferry.queue).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].repo, "account:acme");
    let out = ferry
        .manager
        .handle_batch(&queued, Instant::now() + Duration::from_secs(120))
        .await;
    assert!(
        out.verdicts.iter().all(|v| format!("{v:?}").contains("Done")),
        "{out:?}"
    );
    harness::assert_refs_equal(
        &servers.path(&format!("{owner}/fresh.git")),
        &servers.path("mirrors/fresh.git"),
    );
    println!("webhook → discovered and mirrored in {:?}", started.elapsed());

    // A wrong signature: 401, nothing queued; an owner no account discovers: 202 ignored.
    let (headers, body) = deliver("created", owner, "x", "d-2", "wrong");
    let d = Delivery {
        provider,
        headers: &headers,
        body: body.as_bytes(),
    };
    assert_eq!(accept(&config, ferry.queue.as_ref(), &d, 1 << 20).await.status, 401);
    let (headers, body) = deliver("created", "other-org", "x", "d-3", SECRET);
    let d = Delivery {
        provider,
        headers: &headers,
        body: body.as_bytes(),
    };
    let reply = accept(&config, ferry.queue.as_ref(), &d, 1 << 20).await;
    assert_eq!(
        (reply.status, reply.body["ignored"].as_str()),
        (202, Some("no account discovers this owner"))
    );
    assert!(drain(&ferry.queue).await.is_empty());

    // Deleted: reported, the mirror kept.
    forge.state().repos.retain(|r| r.name != "app");
    let (headers, body) = deliver("deleted", owner, "app", "d-4", SECRET);
    let d = Delivery {
        provider,
        headers: &headers,
        body: body.as_bytes(),
    };
    assert_eq!(accept(&config, ferry.queue.as_ref(), &d, 1 << 20).await.status, 202);
    let queued = drain(&ferry.queue).await;
    ferry
        .manager
        .handle_batch(&queued, Instant::now() + Duration::from_secs(120))
        .await;
    let app = ferry.manager.catalog().config().await.repo("app").cloned().unwrap();
    assert!(app.frozen_because().unwrap().contains("mirror kept"), "{app:?}");
    harness::assert_refs_equal(
        &servers.path(&format!("{owner}/app.git")),
        &servers.path("mirrors/app.git"),
    );
}

/// `gitferry discover ACCOUNT --json`: what would be mirrored and created, nothing written;
/// no token in its output.
#[test]
fn discover_command_changes_nothing() {
    let servers = Servers::start();
    let forge = Forge::start(Kind::Gitea);
    {
        let mut st = forge.state();
        st.token = Some(TOKEN.into());
        st.owners.insert("mirrors".into());
        st.add("acme", "app", &servers.url(Proto::Http, "acme/app.git"));
        st.add("acme", "forked", "http://127.0.0.1:1/x.git").fork = true;
    }
    let dir = harness::tempdir();
    let config = dir.path().join("mirrors.toml");
    std::fs::write(&config, account_toml(Kind::Gitea, &forge, &servers, "acme", "")).unwrap();
    let store = dir.path().join("store");
    let out = std::process::Command::new(harness::gitferry_bin())
        .args(["discover", "acme", "--json", "--config"])
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .env("ACME_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(TOKEN) && !String::from_utf8_lossy(&out.stderr).contains(TOKEN));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["repos"][0]["name"], "app");
    assert_eq!(v["repos"][0]["targets"][0]["create"], true);
    assert!(
        v["repos"][0]["targets"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with("/mirrors/app.git")
    );
    assert_eq!(
        v["skipped"][0],
        serde_json::json!(["acme/forked", "a fork (forks = false)"])
    );
    assert_eq!(v["new"], serde_json::json!(["app"]));
    let written = walk(&store);
    assert!(written.is_empty(), "a dry run writes nothing: {written:?}");
    assert_eq!(forge.state().count("POST", ""), 0, "and creates nothing");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

/// The provider stand-ins answer as the providers' published API descriptions say: every call
/// a stand-in serves, at each status the description lists for it, gives a body valid against
/// that call's response schema (checked by `tests/openapi/validate.py` with the OpenAPI 3.0
/// validator `openapi-schema-validator`). GitHub's description (npm `@octokit/openapi`) has
/// `required` lists, so its bodies must carry every field GitHub's do; Gitea's and GitLab's
/// (Swagger 2.0, `tests/openapi/{gitea,gitlab}.json`) have none, so theirs are checked for types.
#[test]
fn the_stand_ins_answer_as_the_providers_api_descriptions_say() {
    for kind in [Kind::Github, Kind::Gitea, Kind::Gitlab] {
        let forge = Forge::start(kind);
        let owner = if kind == Kind::Gitlab { "grp" } else { "acme" };
        {
            let mut st = forge.state();
            st.owners.insert(owner.into());
            st.add(owner, "app", &format!("https://forge.example/{owner}/app.git"));
            st.add(owner, "tools", &format!("https://forge.example/{owner}/tools.git"))
                .private = true;
        }
        let mut answers = Answers::new(forge.api_url());
        let new = serde_json::json!({ "name": "new", "path": "new", "namespace_id": 1, "private": true });
        let rename = serde_json::json!({ "name": "renamed" });
        match kind {
            Kind::Gitlab => {
                answers.call(
                    "GET",
                    "/groups/grp/projects?per_page=1",
                    None,
                    200,
                    "/groups/{id}/projects",
                );
                answers.call("GET", "/namespaces/grp", None, 200, "/namespaces/{id}");
                answers.call("POST", "/projects", Some(new), 201, "/projects");
                answers.call("PUT", "/projects/grp%2Fnew", Some(rename), 200, "/projects/{id}");
            }
            _ => {
                answers.call(
                    "GET",
                    "/orgs/acme/repos?per_page=1&limit=1",
                    None,
                    200,
                    "/orgs/{org}/repos",
                );
                answers.call("GET", "/users/acme/repos", None, 200, "/users/{username}/repos");
                answers.call("POST", "/orgs/acme/repos", Some(new.clone()), 201, "/orgs/{org}/repos");
                if kind == Kind::Github {
                    // Gitea's description lists no 409 for a taken name (Gitea answers one).
                    answers.call("POST", "/orgs/acme/repos", Some(new), 422, "/orgs/{org}/repos");
                    answers.call("GET", "/repos/acme/nothing", None, 404, "/repos/{owner}/{repo}");
                }
                answers.call("GET", "/repos/acme/app", None, 200, "/repos/{owner}/{repo}");
                answers.call("PATCH", "/repos/acme/new", Some(rename), 200, "/repos/{owner}/{repo}");
            }
        }
        assert_eq!(
            answers.list[0]["body"].as_array().map(Vec::len),
            Some(1),
            "{kind:?}: paginated"
        );
        let provider = format!("{kind:?}").to_lowercase();
        answers.validate(&provider);
    }
}

/// Bodies of stand-in answers, by the described call they answer (`METHOD /path/{param} STATUS`).
struct Answers {
    api: String,
    http: reqwest::blocking::Client,
    list: Vec<serde_json::Value>,
}

impl Answers {
    fn new(api: String) -> Answers {
        Answers {
            api,
            http: reqwest::blocking::Client::new(),
            list: Vec::new(),
        }
    }

    #[track_caller]
    fn call(&mut self, method: &str, path: &str, body: Option<serde_json::Value>, status: u16, described: &str) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.api));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().unwrap();
        assert_eq!(res.status().as_u16(), status, "{method} {path}");
        let body: serde_json::Value = res.json().unwrap();
        self.list
            .push(serde_json::json!({ "call": format!("{method} {described} {status}"), "body": body }));
    }

    /// Every answer valid against `tests/openapi/{provider}.json`'s schemas.
    #[track_caller]
    fn validate(&self, provider: &str) {
        use std::io::Write;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut child = std::process::Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/openapi/validate.py"))
            .arg(provider)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the venv's python (`make deps` makes it)");
        let input = serde_json::to_string(&self.list).unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{provider}: answers not as described:\n{report}");
        let all = format!("{n} of {n} answers valid", n = self.list.len());
        assert!(report.contains(&all), "{provider}: {report}");
    }
}

/// Recorded real GitHub API sessions (npm `@octokit/fixtures` 23.1.2, scenarios
/// `get-repository` and `rename-repository`, copied by `make deps` into
/// `tests/openapi/recordings/`), replayed on loopback: gitferry's GitHub client reads a real
/// repository object, follows GitHub's 301 for a renamed repository to its new name, and renames
/// with the PATCH GitHub recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn githubs_recorded_answers_are_read_as_github_gave_them() {
    let replay = Replay::start(&["get-repository", "rename-repository"]);
    let api = gitferry_core::accounts::discover::for_target(&gitferry_core::accounts::CreateTarget {
        provider: gitferry_core::config::Provider::Github,
        api_url: replay.url(),
        private: true,
        token: None,
    });
    let repo = api
        .get_repo("octokit-fixture-org/hello-world")
        .await
        .unwrap_or_else(|e| panic!("{e} {:?}", replay.served()))
        .expect("found");
    assert_eq!(
        (repo.id.as_str(), repo.path.as_str(), repo.clone_url.as_str()),
        (
            "1000",
            "octokit-fixture-org/hello-world",
            "https://github.com/octokit-fixture-org/hello-world.git"
        )
    );
    assert_eq!(
        (repo.private, repo.fork, repo.archived, repo.has_wiki),
        (false, false, false, true)
    );
    assert_eq!(
        (repo.default_branch.as_deref(), repo.description.as_deref()),
        (Some("master"), None)
    );
    // After a rename GitHub answers the old path with 301 to /repositories/{id}.
    let renamed = api
        .get_repo("octokit-fixture-org/rename-repository")
        .await
        .unwrap()
        .expect("followed");
    assert_eq!(renamed.path, "octokit-fixture-org/rename-repository-newname");
    api.rename_repo("octokit-fixture-org", "rename-repository", "rename-repository-newname")
        .await
        .unwrap();
    let served = replay.served();
    assert!(
        served.contains(&"patch /repos/octokit-fixture-org/rename-repository 200".to_owned()),
        "{served:?}"
    );
}

/// Serves recorded exchanges (`normalized-fixture.json` of @octokit/fixtures: method, path,
/// request body, status, response headers and body) in the order recorded per method and path.
struct Replay {
    server: std::sync::Arc<tiny_http::Server>,
    served: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    port: u16,
}

impl Replay {
    fn start(scenarios: &[&str]) -> Replay {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/recordings");
        let mut exchanges: Vec<serde_json::Value> = Vec::new();
        for s in scenarios {
            let path = root.join(format!("{s}.json"));
            let text =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (`make deps` copies it)", path.display()));
            exchanges.extend(serde_json::from_slice::<Vec<serde_json::Value>>(&text).unwrap());
        }
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (srv, log) = (server.clone(), served.clone());
        std::thread::spawn(move || {
            let mut left = exchanges;
            for mut request in srv.incoming_requests() {
                let method = request.method().as_str().to_lowercase();
                let path = request.url().split('?').next().unwrap_or_default().to_owned();
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(request.as_reader(), &mut body);
                let sent: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                let at = left.iter().position(|x| {
                    x["method"] == method.as_str()
                        && x["path"] == path.as_str()
                        && (x["body"].is_null() || x["body"] == "" || x["body"] == sent)
                });
                let Some(at) = at else {
                    log.lock().unwrap().push(format!("{method} {path} unrecorded"));
                    let _ = request.respond(tiny_http::Response::from_string("not recorded").with_status_code(599));
                    continue;
                };
                let x = left.remove(at);
                let status = x["status"].as_u64().unwrap_or(500) as u16;
                log.lock().unwrap().push(format!("{method} {path} {status}"));
                let mut response = tiny_http::Response::from_string(x["response"].to_string()).with_status_code(status);
                for (k, v) in x["headers"].as_object().into_iter().flatten() {
                    let v = v
                        .as_str()
                        .unwrap_or_default()
                        .replace("https://api.github.com", &format!("http://127.0.0.1:{port}"));
                    if ["content-type", "location"].contains(&k.to_lowercase().as_str()) {
                        response.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
                    }
                }
                let _ = request.respond(response);
            }
        });
        Replay { server, served, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().clone()
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
