//! `gitferry serve`: the whole system on one machine. HTTP (axum) in front of the shared
//! `gitferry_core::api::Api`; behind it the same worker (`gitferry_core::worker`) and poller
//! (`gitferry_core::poll`) the Lambda functions run, driven by an in-process worker pool and a
//! ticker instead of SQS event source mappings and EventBridge. This file only wires adapters
//! and signals.
//!
//! * **Startup reconciliation**: every repo is enqueued once when the server starts.
//! * **Nothing queued is lost across a restart** (even `kill -9`): with the embedded queue, the
//!   queue is saved to the store after every change (`gitferry_core::queue::persistent`).
//! * **Shutdown** (SIGINT/SIGTERM): workers stop taking work; syncs in flight stop inside their
//!   current phase, record a terminal status and queue their continuation; the queue is saved.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use gitferry_core::accounts::Catalog;
use gitferry_core::api::{self, Api};
use gitferry_core::config::{Config, Secret};
use gitferry_core::metrics::{Metrics, Prometheus};
use gitferry_core::notify::Notifier;
use gitferry_core::poll::{PollOptions, Poller};
use gitferry_core::queue::Queue;
use gitferry_core::status::StatusBook;
use gitferry_core::store::ObjectStore;
use gitferry_core::sync::{SyncManager, SyncOptions};
use gitferry_core::worker::{self, Ack, Worker, WorkerOptions};
use tokio::sync::watch;

use crate::adapters;

/// Everything `serve` needs, already resolved.
pub struct ServeOptions {
    pub config: Arc<Config>,
    /// `Config::digest` of the file the config came from (the poller's reconciliation marker).
    pub config_digest: String,
    pub listen: SocketAddr,
    pub store: String,
    pub queue: String,
    pub workers: usize,
    pub work_dir: Option<PathBuf>,
    pub status_token: Option<Secret>,
    /// The webhook body limit (`GITFERRY_MAX_BODY`, the same setting as the webhook function's).
    pub max_body: usize,
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Arc<dyn ObjectStore>,
    shutdown: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop taking work, let in-flight syncs record a terminal status, save the queue.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.handle.await;
    }
}

/// How long a received message stays hidden from the other workers (the worker's heartbeat
/// extends it during a long sync; the lease is the second guard).
const VISIBILITY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Start the HTTP server, the workers and the ticker; reconcile every repository once.
pub async fn start(opts: ServeOptions) -> Result<Running, String> {
    let store = adapters::store(&opts.store).await?;
    let queue = adapters::queue(&opts.queue, store.clone()).await?;
    let work_dir = match opts.work_dir {
        Some(d) => d,
        None => adapters::default_work_dir(&opts.store),
    };
    let prometheus = Arc::new(Prometheus::new());
    let metrics = Metrics::new(prometheus.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // One effective repository set (configured ∪ discovered) for the workers, the pages and
    // the poller: what discovery finds is seen by all of them at once.
    let catalog = Catalog::new(opts.config.clone(), store.clone());
    let manager = sync_manager(&opts.config, &store, &metrics, work_dir, &catalog, &shutdown_rx);
    let api = Api {
        catalog: catalog.clone(),
        queue: queue.clone(),
        status: StatusBook::new(store.clone()),
        metrics: metrics.clone(),
        anonymous_status: opts.status_token.is_none() && opts.listen.ip().is_loopback(),
        status_token: opts.status_token,
        max_body: opts.max_body,
        prometheus: Some(prometheus),
        session_key: uuid::Uuid::new_v4().to_string(),
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let poller = Poller::new(
        opts.config.clone(),
        opts.config_digest.clone(),
        queue.clone(),
        store.clone(),
        metrics,
        PollOptions::default(),
    )
    .with_catalog(catalog)
    .with_notifier(Notifier::new(&opts.config.notify));
    reconcile(&poller, addr, opts.config.repos.len()).await?;

    let http = spawn_http(listener, api, shutdown_rx.clone());
    let mut tasks = spawn_workers(&manager, &queue, opts.workers, &shutdown_rx);
    tasks.spawn(gitferry_core::poll::run(poller, shutdown_rx));
    let handle = tokio::spawn(async move {
        while tasks.join_next().await.is_some() {}
        let _ = http.await;
    });
    Ok(Running {
        addr,
        store,
        shutdown: shutdown_tx,
        handle,
    })
}

/// The sync manager the workers share; it stops starting phases once `shutdown` turns true.
fn sync_manager(
    config: &Arc<Config>,
    store: &Arc<dyn ObjectStore>,
    metrics: &Metrics,
    work_dir: PathBuf,
    catalog: &Catalog,
    shutdown: &watch::Receiver<bool>,
) -> SyncManager {
    SyncManager::new(
        config.clone(),
        store.clone(),
        Notifier::new(&config.notify),
        metrics.clone(),
        SyncOptions {
            work_dir,
            ..SyncOptions::default()
        },
    )
    .with_shutdown(shutdown.clone())
    .with_catalog(catalog.clone())
}

/// Enqueue every repository once: whatever happened while the server was down is caught up.
async fn reconcile(poller: &Poller, addr: SocketAddr, repos: usize) -> Result<(), String> {
    let reconciled = poller
        .reconcile("startup")
        .await
        .map_err(|e| format!("cannot enqueue the startup reconciliation: {e}"))?;
    tracing::info!(%addr, repos, reconciled, "gitferry serving");
    Ok(())
}

/// The HTTP server, until `shutdown` turns true (requests in flight are finished).
fn spawn_http(
    listener: tokio::net::TcpListener,
    api: Api,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new().fallback(handle).with_state(Arc::new(api));
    tokio::spawn(async move {
        let graceful = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    })
}

/// `workers` (at least one) queue consumers, each running the shared worker.
fn spawn_workers(
    manager: &SyncManager,
    queue: &Arc<dyn Queue>,
    workers: usize,
    shutdown: &watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let options = WorkerOptions {
        visibility: gitferry_core::clock::scaled(VISIBILITY),
        ack: Ack::Delete,
    };
    for id in 0..workers.max(1) {
        let worker = Worker::new(manager.clone(), queue.clone(), options);
        tasks.spawn(worker::consume(worker, id, shutdown.clone()));
    }
    tasks
}

/// Serve until SIGINT/SIGTERM.
pub async fn serve(opts: ServeOptions) -> Result<(), String> {
    let running = start(opts).await?;
    errln!("gitferry listening on http://{}", running.addr);
    wait_for_signal().await;
    errln!("stopping: finishing in-flight work");
    running.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// One HTTP request → the shared API. The body is read up to the limit and no further (memory
/// stays bounded whatever a client sends); a body over it is refused through the API, so the 413
/// is logged and counted like every other webhook answer.
async fn handle(State(api): State<Arc<Api>>, request: axum::extract::Request) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect();
    let (method, path) = (parts.method.as_str(), parts.uri.path());
    let limit = api.max_body;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let (status, message) = if is_length_limit(&e) {
                (413, gitferry_core::webhook::too_large_message(limit))
            } else {
                (400, "the request body could not be read".to_owned())
            };
            // The rest of the body is never read: the connection cannot carry another request,
            // and a client must not put it back in its pool (it did, and its next delivery
            // failed with "error sending request").
            let mut response = to_axum(api.refuse_body(method, path, &headers, status, &message));
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    let reply = api
        .handle(api::Request {
            method,
            path,
            query: parts.uri.query().unwrap_or_default(),
            headers,
            body: &body,
        })
        .await;
    to_axum(reply)
}

/// Did reading the body stop at the length limit (rather than at a broken connection)?
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn to_axum(r: api::Response) -> axum::response::Response {
    let mut builder = axum::response::Response::builder()
        .status(r.status)
        .header("content-type", r.content_type);
    for (name, value) in &r.headers {
        builder = builder.header(*name, value);
    }
    builder.body(axum::body::Body::from(r.body)).expect("valid response")
}
