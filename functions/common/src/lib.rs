//! What gitferry's three Lambda functions share: reading the environment, building the AWS
//! adapters (S3 store, SQS queue, EMF metrics), loading the configuration, and converting
//! Lambda events to and from `gitferry_core`'s types. The handlers here are thin on purpose:
//! policy lives in `gitferry_core` (`api`, `poll`, `sync`), which the local server calls too.
//!
//! Configuration: `mirrors.toml` is an object in the cache bucket (`GITFERRY_CONFIG_KEY`,
//! default `config/mirrors.toml`), so changing mirrors needs no redeploy. It is cached across
//! warm invocations and re-read when its ETag changes (checked at most every
//! [`CONFIG_RECHECK`]). Secret references in it (`token_env`, `secret_env`, …) resolve from the
//! process environment and, when `GITFERRY_SECRETS_ARN` is set, from that Secrets Manager
//! secret (a JSON object of name → value), read once per container.
//!
//! | variable | used by | meaning |
//! |---|---|---|
//! | `GITFERRY_BUCKET` | all | cache / status / config bucket |
//! | `GITFERRY_PREFIX` | all | optional key prefix in the bucket |
//! | `GITFERRY_CONFIG_KEY` | all | key of `mirrors.toml` (default `config/mirrors.toml`) |
//! | `GITFERRY_QUEUE_URL` | all | the SQS FIFO queue |
//! | `GITFERRY_SECRETS_ARN` | all | optional Secrets Manager secret with the referenced secrets |
//! | `GITFERRY_STATUS_TOKEN` | webhook | bearer token of the status and manual-sync routes |
//! | `GITFERRY_MAX_BODY` | webhook | webhook body limit in bytes (default 25 MiB; the same setting as `gitferry serve`'s — API Gateway and Lambda cut at 10 MB and 6 MB before it) |
//! | `GITFERRY_VISIBILITY_SECS` | sync | the queue's visibility timeout (the worker's heartbeat extends it) |
//! | `GITFERRY_TIME_SCALE` | all | tests only: run every waiting period this many times faster (`gitferry_core::clock`) |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse};
use gitferry_aws::S3Store;
use gitferry_aws::SqsQueue;
use gitferry_core::api::{self, Api};
use gitferry_core::config::{Config, Secret};
use gitferry_core::metrics::{Emf, Metrics};
use gitferry_core::notify::Notifier;
use gitferry_core::poll::{PollOptions, Poller};
use gitferry_core::queue::{Message, Queue};
use gitferry_core::status::StatusBook;
use gitferry_core::store::ObjectStore;
use gitferry_core::sync::{SyncManager, SyncOptions};
use gitferry_core::worker::{Ack, Disposition, Worker, WorkerOptions};

pub use aws_lambda_events::apigw::ApiGatewayV2httpRequest as ApiRequest;
pub use aws_lambda_events::eventbridge::EventBridgeEvent as ScheduledEvent;
pub use aws_lambda_events::sqs::SqsEvent;
use aws_lambda_events::sqs::SqsMessage;
pub use gitferry_core::clock::now_ms;
pub use gitferry_core::poll::Tick;
pub use serde_json::Value;

/// The time a scheduled event stands for (see `gitferry_core::poll::tick_time`).
pub fn tick_time(event: &ScheduledEvent) -> u64 {
    let scheduled = event
        .time
        .map(|t| t.timestamp_millis())
        .and_then(|t| u64::try_from(t).ok());
    gitferry_core::poll::tick_time(scheduled, now_ms())
}

/// The poll function's result, as logged by the runtime.
pub fn tick_json(t: &Tick) -> Value {
    serde_json::to_value(t).unwrap_or_default()
}

/// Every environment variable any of the functions reads (the template test checks them all).
pub const ENV_VARS: &[&str] = &[
    "GITFERRY_BUCKET",
    "GITFERRY_PREFIX",
    "GITFERRY_CONFIG_KEY",
    "GITFERRY_QUEUE_URL",
    "GITFERRY_SECRETS_ARN",
    "GITFERRY_STATUS_TOKEN",
    "GITFERRY_MAX_BODY",
    "GITFERRY_VISIBILITY_SECS",
];

/// The variables the webhook function needs set in `template.yaml` (checked by
/// `tests/tests/template.rs`). Every function reads the bucket, config and queue at start
/// (`Runtime::init`) and resolves the config's secret references from the secret.
pub const WEBHOOK_ENV_VARS: &[&str] = &[
    "GITFERRY_BUCKET",
    "GITFERRY_PREFIX",
    "GITFERRY_CONFIG_KEY",
    "GITFERRY_QUEUE_URL",
    "GITFERRY_SECRETS_ARN",
    "GITFERRY_STATUS_TOKEN",
    "GITFERRY_MAX_BODY",
];

/// The variables the poll function needs set in `template.yaml`.
pub const POLL_ENV_VARS: &[&str] = &[
    "GITFERRY_BUCKET",
    "GITFERRY_PREFIX",
    "GITFERRY_CONFIG_KEY",
    "GITFERRY_QUEUE_URL",
    "GITFERRY_SECRETS_ARN",
];

/// The variables the sync function needs set in `template.yaml`.
pub const SYNC_ENV_VARS: &[&str] = &[
    "GITFERRY_BUCKET",
    "GITFERRY_PREFIX",
    "GITFERRY_CONFIG_KEY",
    "GITFERRY_QUEUE_URL",
    "GITFERRY_SECRETS_ARN",
    "GITFERRY_VISIBILITY_SECS",
];

/// The sync queue's visibility timeout when `GITFERRY_VISIBILITY_SECS` is unset: the sync
/// function's 900 s limit plus a minute (template.yaml).
pub const DEFAULT_VISIBILITY_SECS: u64 = 960;

/// How often a warm container checks whether the configuration changed.
pub const CONFIG_RECHECK: Duration = Duration::from_secs(30);

/// Why a function could not start or load its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Aws(String),
}

impl From<SetupError> for lambda_runtime::Diagnostic {
    /// What Lambda records as the invocation's error: a stable type per cause (the console
    /// and the `Errors` metric's logs show it), and the message.
    fn from(e: SetupError) -> lambda_runtime::Diagnostic {
        let kind = match &e {
            SetupError::MissingEnv(_) => "gitferry.MissingEnvironment",
            SetupError::Config(_) => "gitferry.Configuration",
            SetupError::Aws(_) => "gitferry.Aws",
        };
        lambda_runtime::Diagnostic {
            error_type: kind.to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// The environment, read once per container.
#[derive(Clone, Debug)]
pub struct Env {
    pub bucket: String,
    pub prefix: String,
    pub config_key: String,
    pub queue_url: String,
    pub secrets_arn: Option<String>,
    pub status_token: Option<Secret>,
    pub max_body: usize,
    pub visibility: Duration,
}

impl Env {
    pub fn from_env() -> Result<Env, SetupError> {
        Env::from_lookup(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Env, SetupError> {
        let need = |k: &'static str| get(k).ok_or(SetupError::MissingEnv(k));
        Ok(Env {
            bucket: need("GITFERRY_BUCKET")?,
            prefix: get("GITFERRY_PREFIX").unwrap_or_default(),
            config_key: get("GITFERRY_CONFIG_KEY").unwrap_or_else(|| gitferry_core::keys::CONFIG.into()),
            queue_url: need("GITFERRY_QUEUE_URL")?,
            secrets_arn: get("GITFERRY_SECRETS_ARN"),
            status_token: get("GITFERRY_STATUS_TOKEN").map(|v| Secret::new("GITFERRY_STATUS_TOKEN", v)),
            max_body: gitferry_core::webhook::max_body_setting(get(gitferry_core::webhook::MAX_BODY_ENV).as_deref())
                .map_err(SetupError::Config)?,
            visibility: gitferry_core::clock::scaled_secs(
                get("GITFERRY_VISIBILITY_SECS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_VISIBILITY_SECS),
            ),
        })
    }
}

struct Loaded {
    config: Arc<Config>,
    digest: String,
    etag: String,
    checked: Instant,
}

/// What a function keeps across warm invocations.
pub struct Runtime {
    pub env: Env,
    pub store: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn Queue>,
    pub metrics: Metrics,
    secrets: HashMap<String, String>,
    loaded: tokio::sync::Mutex<Option<Loaded>>,
}

impl Runtime {
    /// Build the AWS adapters from the environment (cold start).
    pub async fn init() -> Result<Runtime, SetupError> {
        let env = Env::from_env()?;
        let store = S3Store::from_env(env.bucket.clone(), &env.prefix)
            .await
            .map_err(|e| SetupError::Aws(e.to_string()))?;
        let queue = SqsQueue::from_env(env.queue_url.clone()).await;
        let secrets = match &env.secrets_arn {
            Some(arn) => load_secrets(arn).await?,
            None => HashMap::new(),
        };
        let mut env = env;
        if env.status_token.is_none()
            && let Some(token) = secrets.get("GITFERRY_STATUS_TOKEN").filter(|t| !t.is_empty())
        {
            // Read at run time from the secret, so rotating it needs no redeploy.
            env.status_token = Some(Secret::new("GITFERRY_STATUS_TOKEN", token.clone()));
        }
        Ok(Runtime::with_parts(
            env,
            Arc::new(store),
            Arc::new(queue),
            secrets,
            Metrics::new(Arc::new(Emf::stdout())),
        ))
    }

    /// Build from given parts (tests, or other front ends).
    pub fn with_parts(
        env: Env,
        store: Arc<dyn ObjectStore>,
        queue: Arc<dyn Queue>,
        secrets: HashMap<String, String>,
        metrics: Metrics,
    ) -> Runtime {
        Runtime {
            env,
            store,
            queue,
            metrics,
            secrets,
            loaded: tokio::sync::Mutex::new(None),
        }
    }

    /// The configuration, re-read when the object changed.
    pub async fn config(&self) -> Result<(Arc<Config>, String), SetupError> {
        let mut loaded = self.loaded.lock().await;
        if let Some(l) = loaded.as_ref()
            && l.checked.elapsed() < gitferry_core::clock::scaled(CONFIG_RECHECK)
        {
            return Ok((l.config.clone(), l.digest.clone()));
        }
        let object = self
            .store
            .get(&self.env.config_key)
            .await
            .map_err(|e| SetupError::Config(format!("reading the configuration: {e}")))?
            .ok_or_else(|| SetupError::Config(format!("no configuration at {}", self.env.config_key)))?;
        if let Some(l) = loaded.as_mut()
            && l.etag == object.etag
        {
            l.checked = Instant::now();
            return Ok((l.config.clone(), l.digest.clone()));
        }
        let text =
            String::from_utf8(object.body).map_err(|_| SetupError::Config("configuration is not UTF-8".into()))?;
        let lookup = |name: &str| std::env::var(name).ok().or_else(|| self.secrets.get(name).cloned());
        let config = Config::parse(&text, std::path::Path::new(&self.env.config_key), &lookup)
            .map_err(|e| SetupError::Config(e.to_string()))?;
        let digest = Config::digest(&text);
        tracing::info!(key = %self.env.config_key, %digest, repos = config.repos.len(), "configuration loaded");
        let config = Arc::new(config);
        *loaded = Some(Loaded {
            config: config.clone(),
            digest: digest.clone(),
            etag: object.etag,
            checked: Instant::now(),
        });
        Ok((config, digest))
    }
}

async fn load_secrets(arn: &str) -> Result<HashMap<String, String>, SetupError> {
    gitferry_aws::secrets::load(arn).await.map_err(|e| match e {
        gitferry_aws::secrets::SecretsError::Shape => SetupError::Config(e.to_string()),
        e => SetupError::Aws(e.to_string()),
    })
}

// ---- webhook -------------------------------------------------------------------------------

/// API Gateway HTTP API (payload v2) → the shared HTTP handler → response.
pub async fn webhook(rt: &Runtime, event: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
    let config = match rt.config().await {
        Ok((c, _)) => c,
        Err(e) => {
            tracing::error!(error = %e, "configuration unavailable");
            return response(api::Response::json(
                503,
                serde_json::json!({ "error": "configuration unavailable" }),
            ));
        }
    };
    let api = Api {
        config,
        queue: rt.queue.clone(),
        status: StatusBook::new(rt.store.clone()),
        metrics: rt.metrics.clone(),
        status_token: rt.env.status_token.clone(),
        max_body: rt.env.max_body,
        prometheus: None,
        anonymous_status: false,
        // Form tokens derive from the status token on Lambda (anonymous access is never on).
        session_key: String::new(),
    };
    let headers: Vec<(String, String)> = event
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect();
    let path = event
        .raw_path
        .clone()
        .or_else(|| event.request_context.http.path.clone())
        .unwrap_or_else(|| "/".into());
    let method = event.request_context.http.method.as_str().to_owned();
    let query = event.raw_query_string.clone().unwrap_or_default();
    // API Gateway base64-encodes bodies it does not consider text (form bodies among them).
    let body = match event.body.as_deref() {
        None => Vec::new(),
        Some(b) if event.is_base64_encoded => match base64_decode(b) {
            Some(bytes) => bytes,
            None => return response(api.refuse_body(&method, &path, &headers, 400, "body is not valid base64")),
        },
        Some(b) => b.as_bytes().to_vec(),
    };
    let reply = api
        .handle(api::Request {
            method: &method,
            path: &path,
            query: &query,
            headers,
            body: &body,
        })
        .await;
    response(reply)
}

fn response(r: api::Response) -> ApiGatewayV2httpResponse {
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(r.status);
    out.headers
        .insert("content-type", r.content_type.parse().expect("valid header value"));
    for (name, value) in &r.headers {
        if let Ok(value) = value.parse() {
            out.headers.insert(*name, value);
        }
    }
    out.body = Some(Body::Text(String::from_utf8_lossy(&r.body).into_owned()));
    out.is_base64_encoded = false;
    out
}

/// Standard base64 (API Gateway encodes binary bodies so).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

// ---- poll ----------------------------------------------------------------------------------

/// The scheduled tick: `gitferry_core::poll::Poller`, the same poller `gitferry serve` runs. It
/// probes the due repositories' refs itself and enqueues only what needs a sync (what keeps
/// 1,000 idle repos under $1 a month).
pub async fn poll(rt: &Runtime, now_ms: u64) -> Result<Tick, SetupError> {
    let (config, digest) = rt.config().await?;
    let poller = Poller::new(
        config,
        digest,
        rt.queue.clone(),
        rt.store.clone(),
        rt.metrics.clone(),
        PollOptions::default(),
    );
    let tick = poller.tick(now_ms).await.map_err(|e| SetupError::Aws(e.to_string()))?;
    tracing::info!(
        probed = tick.probed,
        polled = tick.polled,
        confirmed = tick.confirmed,
        timed_out = tick.timed_out,
        reconciled = tick.reconciled,
        stale = tick.stale,
        "poll tick"
    );
    Ok(tick)
}

// ---- sync ----------------------------------------------------------------------------------

/// A batch of SQS FIFO records → `gitferry_core::worker::Worker` (the same consumer `gitferry
/// serve` runs) → partial batch failures. The event source mapping deletes every record not
/// reported as failed; the worker has already set a short retry delay on the failed ones.
pub async fn sync(rt: &Runtime, event: SqsEvent, deadline: Instant, owner: &str) -> SqsBatchResponse {
    let (ids, messages): (Vec<String>, Vec<Message>) = event.records.into_iter().map(message).unzip();
    let config = match rt.config().await {
        Ok((c, _)) => c,
        Err(e) => {
            tracing::error!(error = %e, "configuration unavailable: returning the whole batch");
            return batch_response(ids);
        }
    };
    let manager = SyncManager::new(
        config.clone(),
        rt.store.clone(),
        Notifier::new(&config.notify),
        rt.metrics.clone(),
        SyncOptions {
            work_dir: std::env::temp_dir().join("gitferry"),
            owner: owner.to_owned(),
            ..SyncOptions::default()
        },
    );
    let options = WorkerOptions {
        visibility: rt.env.visibility,
        ack: Ack::ByCaller,
    };
    let dispositions = Worker::new(manager, rt.queue.clone(), options)
        .handle(&messages, deadline)
        .await;
    let failed = ids
        .into_iter()
        .zip(dispositions)
        .filter(|(_, d)| matches!(d, Disposition::Retry { .. }))
        .map(|(id, _)| id)
        .collect();
    batch_response(failed)
}

/// An SQS record as the worker sees it, and its message id (what a batch failure names).
fn message(m: SqsMessage) -> (String, Message) {
    let id = m.message_id.unwrap_or_default();
    let message = Message {
        group: m.attributes.get("MessageGroupId").cloned().unwrap_or_default(),
        receive_count: m
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        receipt: m.receipt_handle.unwrap_or_default(),
        body: m.body.unwrap_or_default(),
    };
    (id, message)
}

fn batch_response(ids: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = ids
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// The Lambda context's deadline (Unix ms) as an `Instant`.
pub fn deadline_from(ctx_deadline_ms: u64) -> Instant {
    let now = gitferry_core::clock::now_ms();
    Instant::now() + Duration::from_millis(ctx_deadline_ms.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_bodies() {
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert!(base64_decode("!!").is_none());
    }

    #[test]
    fn env_requires_bucket_and_queue() {
        let e = Env::from_lookup(&|_| None).unwrap_err();
        assert!(e.to_string().contains("GITFERRY_BUCKET"));
        let env = Env::from_lookup(&|k| match k {
            "GITFERRY_BUCKET" => Some("b".into()),
            "GITFERRY_QUEUE_URL" => Some("q".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(env.config_key, "config/mirrors.toml");
        assert!(env.status_token.is_none());
    }
}
