//! `gitferry demo`: the whole service, offline, in a temp dir, in under a minute.
//!
//! 1. create a source repository with history and an empty target (with gix — the product never
//!    runs `git`, and neither does the demo);
//! 2. start the local service (`serve`'s own code) on a loopback port with a config that mirrors
//!    the source to the target, a webhook secret, and a notification receiver;
//! 3. wait for the startup reconciliation to mirror the source;
//! 4. commit to the source, then deliver a signed GitHub `push` webhook to the service's own
//!    HTTP endpoint;
//! 5. wait for that sync, print the status table and the notification that was sent;
//! 6. verify the target's refs equal the source's, stop, clean up.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gitferry_core::config::{Config, Provider};
use gitferry_core::git::refs::{RefPatterns, RefState};
use gitferry_core::git::repo::{self, LocalUpdate, Peel};
use gitferry_core::status::{State, StatusBook};

use crate::serve::{self, ServeOptions};

const SECRET: &str = "demo-webhook-secret";

pub async fn run() -> Result<(), String> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("gitferry-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let source = dir.path().join("source.git");
    let target = dir.path().join("target.git");
    step("creating a source repository with history, and an empty target");
    create_repositories(&source, &target).await?;
    // A receiver for the notifications the service sends.
    let notifications: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let receiver = receiver(notifications.clone()).await?;
    let running = start_service(dir.path(), &source, &target, receiver).await?;
    let base = format!("http://{}", running.addr);
    outln!("serving on {base}");
    let book = StatusBook::new(running.store.clone());
    let first = wait_for(&book, |s| s.state == State::Success, "the startup sync").await?;
    outln!(
        "startup reconciliation mirrored the source ({} refs)",
        first.source_refs
    );

    step("committing to the source, then delivering a signed GitHub push webhook");
    let delivery = deliver_push(&source, &base).await?;
    step("waiting for the sync");
    show_sync(&book, &delivery, &notifications).await?;

    step("verifying: target refs == source refs");
    let result = verify(&source, &target).await;
    running.stop().await;
    result?;
    outln!(
        "\nOK: the target is an exact mirror of the source ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A source with three commits on `main`, a `feature` branch and a tag; an empty bare target.
async fn create_repositories(source: &Path, target: &Path) -> Result<(), String> {
    let src = source.to_path_buf();
    blocking(move || {
        let r = repo::open_or_init_bare(&src).map_err(|e| e.to_string())?;
        let mut tip = None;
        for i in 1..=3 {
            tip = Some(commit(
                &r,
                tip,
                &format!("notes.txt:change {i}\n"),
                &format!("change {i}"),
            )?);
        }
        let tip = tip.expect("three commits");
        let feature = commit(&r, Some(tip), "feature.txt:a feature\n", "a feature")?;
        set_refs(
            &r,
            &[
                ("refs/heads/main", tip),
                ("refs/heads/feature", feature),
                ("refs/tags/v1.0", tip),
            ],
        )
    })
    .await?;
    let tgt = target.to_path_buf();
    blocking(move || repo::open_or_init_bare(&tgt).map(|_| ()).map_err(|e| e.to_string())).await
}

/// `serve`'s own code on a loopback port, with a config mirroring `source` to `target`.
async fn start_service(
    dir: &Path,
    source: &Path,
    target: &Path,
    receiver: SocketAddr,
) -> Result<serve::Running, String> {
    let config_text = format!(
        "[notify]\ngeneric_webhook_url_env = \"DEMO_NOTIFY_URL\"\n\n\
         [repos.demo]\nurl = \"{}\"\nsync_policy = \"webhook_only\"\n\
         webhook = {{ provider = \"github\", secret_env = \"DEMO_WEBHOOK_SECRET\" }}\n\n\
         [[repos.demo.targets]]\nurl = \"{}\"\nname = \"backup\"\n",
        source.display(),
        target.display()
    );
    std::fs::write(dir.join("mirrors.toml"), &config_text).map_err(|e| e.to_string())?;
    let receiver_url = format!("http://{receiver}/notify");
    let env = move |name: &str| match name {
        "DEMO_NOTIFY_URL" => Some(receiver_url.clone()),
        "DEMO_WEBHOOK_SECRET" => Some(SECRET.to_owned()),
        _ => None,
    };
    let config = Config::parse(&config_text, &dir.join("mirrors.toml"), &env).map_err(|e| e.to_string())?;
    outln!("config ({}):\n{config_text}", dir.join("mirrors.toml").display());

    step("starting the local service (store, queue, workers, HTTP) on a loopback port");
    serve::start(ServeOptions {
        config: Arc::new(config),
        config_digest: Config::digest(&config_text),
        listen: "127.0.0.1:0".parse().expect("valid"),
        store: dir.join("store").display().to_string(),
        queue: "memory".into(),
        workers: 2,
        work_dir: Some(dir.join("work")),
        status_token: None,
        max_body: gitferry_core::webhook::DEFAULT_MAX_BODY,
    })
    .await
}

/// Commits to the source and delivers a signed GitHub `push` for it; the delivery id.
async fn deliver_push(source: &Path, base: &str) -> Result<String, String> {
    let src = source.to_path_buf();
    let after = blocking(move || {
        let r = repo::open(&src).map_err(|e| e.to_string())?;
        let main = r
            .find_reference("refs/heads/main")
            .map_err(|e| e.to_string())?
            .id()
            .detach();
        let next = commit(&r, Some(main), "notes.txt:change 4\n", "change 4")?;
        set_refs(&r, &[("refs/heads/main", next), ("refs/tags/v1.1", next)])?;
        Ok(next.to_string())
    })
    .await?;
    let delivery = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::json!({
        "ref": "refs/heads/main",
        "after": after,
        "repository": { "clone_url": source.display().to_string(), "full_name": "demo/source" },
    })
    .to_string();
    let signature = gitferry_core::webhook::sign(Provider::Github, SECRET, payload.as_bytes());
    let reply = reqwest::Client::new()
        .post(format!("{base}/webhook/github"))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", &delivery)
        .header("X-Hub-Signature-256", &signature)
        .body(payload)
        .send()
        .await
        .map_err(|e| format!("delivering the webhook: {e}"))?;
    let code = reply.status().as_u16();
    outln!(
        "POST /webhook/github → {code} {}",
        reply.text().await.unwrap_or_default()
    );
    if code != 202 {
        return Err(format!("the webhook was not accepted ({code})"));
    }
    Ok(delivery)
}

/// Waits for the webhook's sync, prints the status table and the notification sent for it.
async fn show_sync(
    book: &StatusBook,
    delivery: &str,
    notifications: &Mutex<Vec<serde_json::Value>>,
) -> Result<(), String> {
    let done = wait_for(
        book,
        |s| s.state == State::Success && s.last_delivery_id.as_deref() == Some(delivery),
        "the webhook's sync",
    )
    .await?;
    out!("{}", crate::table::render(&[done], gitferry_core::clock::now_ms()));
    // The notification for the webhook's change (the first one was for the startup sync).
    let until = Instant::now() + Duration::from_secs(5);
    while notifications.lock().expect("not poisoned").len() < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(last) = notifications.lock().expect("not poisoned").last() {
        outln!("\nnotification sent:\n{}", last["text"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// The target's refs must equal the source's; prints them.
async fn verify(source: &Path, target: &Path) -> Result<(), String> {
    let (s, t) = (source.to_path_buf(), target.to_path_buf());
    let (source_refs, target_refs) = blocking(move || Ok((refs_of(&s)?, refs_of(&t)?))).await?;
    if source_refs.ids() != target_refs.ids() {
        return Err("the target does not match the source".into());
    }
    for (name, t) in &target_refs.refs {
        outln!("{} {name}", t.id);
    }
    Ok(())
}

fn step(what: &str) {
    outln!("\n== {what}");
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?
}

/// Write `path:content` as a one-file change on top of `parent`'s tree; returns the commit.
fn commit(
    r: &gix::Repository,
    parent: Option<gix::ObjectId>,
    change: &str,
    message: &str,
) -> Result<gix::ObjectId, String> {
    use gix::objs::tree::{Entry, EntryKind};
    let (path, content) = change.split_once(':').expect("path:content");
    let mut entries: Vec<Entry> = match parent {
        Some(p) => {
            let tree = r.find_commit(p).and_then(|c| c.tree()).map_err(|e| e.to_string())?;
            tree.decode()
                .map_err(|e| e.to_string())?
                .entries
                .iter()
                .map(|e| Entry {
                    mode: e.mode,
                    filename: e.filename.to_owned(),
                    oid: e.oid.to_owned(),
                })
                .collect()
        }
        None => Vec::new(),
    };
    let blob = r.write_blob(content.as_bytes()).map_err(|e| e.to_string())?.detach();
    entries.retain(|e| e.filename != path);
    entries.push(Entry {
        mode: EntryKind::Blob.into(),
        filename: path.into(),
        oid: blob,
    });
    entries.sort_by(|a, b| a.filename.cmp(&b.filename));
    let tree = r
        .write_object(gix::objs::Tree { entries })
        .map_err(|e| e.to_string())?
        .detach();
    let commit = gix::objs::Commit {
        tree,
        parents: parent.into_iter().collect(),
        author: signature(),
        committer: signature(),
        encoding: None,
        message: message.into(),
        extra_headers: Vec::new(),
    };
    Ok(r.write_object(&commit).map_err(|e| e.to_string())?.detach())
}

fn signature() -> gix::actor::Signature {
    gix::actor::Signature {
        name: "gitferry demo".into(),
        email: "demo@example.invalid".into(),
        time: gix::date::Time::now_utc(),
    }
}

fn set_refs(r: &gix::Repository, refs: &[(&str, gix::ObjectId)]) -> Result<(), String> {
    let current = repo::read_refs(r, &RefPatterns::all(), Peel::No).map_err(|e| e.to_string())?;
    let updates: Vec<LocalUpdate> = refs
        .iter()
        .map(|(name, id)| LocalUpdate {
            name: (*name).to_owned(),
            old: current.refs.get(*name).map(|t| t.id),
            new: Some(*id),
        })
        .collect();
    repo::apply_ref_updates(r, &updates, Some("refs/heads/main"), "demo").map_err(|e| e.to_string())
}

fn refs_of(path: &std::path::Path) -> Result<RefState, String> {
    let r = repo::open(path).map_err(|e| e.to_string())?;
    repo::read_refs(&r, &RefPatterns::default(), Peel::No).map_err(|e| e.to_string())
}

async fn wait_for(
    book: &StatusBook,
    done: impl Fn(&gitferry_core::status::RepoStatus) -> bool,
    what: &str,
) -> Result<gitferry_core::status::RepoStatus, String> {
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok(Some(s)) = book.get("demo").await {
            if done(&s) {
                return Ok(s);
            }
            if s.state == State::Failed {
                return Err(format!("{what} failed: {}", s.last_error.unwrap_or_default()));
            }
        }
        if Instant::now() > until {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A one-route HTTP server on loopback recording the notifications it receives.
async fn receiver(into: Arc<Mutex<Vec<serde_json::Value>>>) -> Result<std::net::SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new().route(
        "/notify",
        axum::routing::post(move |body: axum::body::Bytes| {
            let into = into.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    into.lock().expect("not poisoned").push(v);
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
