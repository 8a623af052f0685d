//! gitferry deployed the way AWS runs it, on one machine: the real `webhook`, `poll` and `sync`
//! bootstraps as their own processes behind the Lambda Runtime API ([`crate::lambda_rt`]),
//! killed at their time limits; moto's S3 bucket and SQS FIFO queue with its dead-letter queue;
//! an event source mapping with SQS → Lambda semantics; an EventBridge schedule; and the
//! template's alarms evaluated over what the functions printed ([`crate::alarms`]).
//!
//! Everything that shapes behaviour is read from `template.yaml`, never copied: the functions'
//! timeouts, memory, environment and log format; the queue's visibility timeout and
//! `maxReceiveCount`; the mapping's batch size, concurrency and `ReportBatchItemFailures`; the
//! schedule's rate; the alarms. Time is compressed by [`Deploy::scale`] — every one of those
//! durations is divided by it, and the functions run with `GITFERRY_TIME_SCALE` so that their
//! own waiting periods (lease TTL, retry delays, poll interval, probe timeout) shrink by the same
//! factor: the ratios between limits stay as deployed.
//!
//! The event source mapping ([`Stack::run_until`]) does what Lambda's SQS poller does: receive
//! up to `BatchSize` records (SQS FIFO itself hands out one batch per message group at a time,
//! and moves a message received `maxReceiveCount` times to the dead-letter queue), invoke the
//! sync function with them, and on a response delete every record not named in
//! `batchItemFailures`; on an error, a timeout or a crash it deletes nothing, so the records
//! come back when their visibility timeout lapses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};

use crate::alarms::{self, Alarm, AlarmState, EvalOptions, MetricStore, Template};
use crate::lambda_rt::{Function, FunctionSpec, Invocation, Outcome};
use crate::moto::{self, MotoServer};

/// What to deploy.
pub struct Deploy {
    /// How many times faster than real time (a 900 s limit is 900/scale s).
    pub scale: f64,
    /// `mirrors.toml`, uploaded to the bucket as the template's `GITFERRY_CONFIG_KEY`.
    pub config: String,
    /// Extra variables for every function (the secrets the configuration refers to; on AWS
    /// they come from the Secrets Manager secret).
    pub env: Vec<(String, String)>,
    /// Template parameter overrides.
    pub params: BTreeMap<String, String>,
    /// Sync environments that may run at once (at most the mapping's `MaximumConcurrency`;
    /// small here: each is a process on a 2-core machine).
    pub sync_concurrency: usize,
}

impl Deploy {
    pub fn new(scale: f64, config: impl Into<String>) -> Deploy {
        Deploy {
            scale,
            config: config.into(),
            env: Vec::new(),
            params: BTreeMap::new(),
            sync_concurrency: 2,
        }
    }
}

/// One invocation of the sync function by the event source mapping.
#[derive(Clone, Debug)]
pub struct SyncRun {
    pub at_ms: u64,
    pub took: Duration,
    /// The records' groups (repositories) and receive counts.
    pub records: Vec<(String, u32)>,
    /// "response", "error", "timeout", "crashed", …
    pub outcome: String,
    /// Records returned as batch item failures.
    pub failed: usize,
}

/// The template's settings of the event source mapping and queue (already scaled).
#[derive(Clone, Copy, Debug)]
pub struct Esm {
    pub batch_size: i32,
    pub concurrency: usize,
    pub max_receive_count: u32,
    pub visibility: Duration,
}

/// See the module docs.
pub struct Stack {
    pub moto: MotoServer,
    pub bucket: String,
    pub store: Arc<dyn gitferry_core::store::ObjectStore>,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub dlq_url: String,
    dlq_name: String,
    pub template: Template,
    pub scale: f64,
    pub webhook: Arc<Function>,
    pub poll: Arc<Function>,
    pub sync: Arc<Function>,
    pub esm: Esm,
    /// The schedule's period.
    pub tick: Duration,
    config_key: String,
    metrics: Mutex<MetricStore>,
    /// Log lines of each function already fed to `metrics`.
    ingested: Mutex<[usize; 3]>,
    dlq_samples: Arc<Mutex<Vec<(u64, f64)>>>,
    runs: Arc<Mutex<Vec<SyncRun>>>,
    _logs: crate::TempDir,
}

fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("template.yaml")
}

/// Where the bootstraps are: `GITFERRY_LAMBDA_DIR/{name}/bootstrap` when set (what `make
/// package` builds with cargo-lambda for deployment), else the workspace's own build of the
/// same binaries (the same code; only the linker differs).
pub fn bootstrap(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("GITFERRY_LAMBDA_DIR") {
        return Path::new(&dir).join(name).join("bootstrap");
    }
    let bin = crate::gitferry_bin();
    bin.with_file_name(name)
}

impl Stack {
    /// Create the bucket and queues, upload the configuration, prepare the three functions.
    pub async fn deploy(d: Deploy) -> Stack {
        crate::leaks::capture_logs();
        let moto = MotoServer::start();
        let (s3, bucket) = moto.client_with_bucket().await;
        let sqs = moto.sqs_client();
        let probe = Template::load(&template_path(), &d.params, &placeholder_attrs()).unwrap_or_else(|e| panic!("{e}"));
        let dlq_name = format!("gitferry-dlq-{}.fifo", uuid_ish());
        let dlq_url = create_queue(&sqs, &dlq_name, &probe, "SyncDeadLetterQueue", d.scale, None).await;
        let dlq_arn = format!(
            "arn:aws:sqs:{}:{}:{dlq_name}",
            moto::REGION,
            crate::lambda_rt::ACCOUNT_ID
        );
        let queue_name = format!("gitferry-{}.fifo", uuid_ish());
        let queue_url = create_queue(&sqs, &queue_name, &probe, "SyncQueue", d.scale, Some(&dlq_arn)).await;
        let attrs: BTreeMap<String, String> = [
            ("CacheBucket", bucket.clone()),
            ("SyncQueue", queue_url.clone()),
            (
                "SyncQueue.Arn",
                format!("arn:aws:sqs:{}:123456789012:{queue_name}", moto::REGION),
            ),
            ("SyncQueue.QueueName", queue_name.clone()),
            ("SyncDeadLetterQueue", dlq_url.clone()),
            ("SyncDeadLetterQueue.Arn", dlq_arn),
            ("SyncDeadLetterQueue.QueueName", dlq_name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let template = Template::load(&template_path(), &d.params, &attrs).unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn gitferry_core::store::ObjectStore> =
            Arc::new(gitferry_aws::S3Store::new(s3, bucket.clone(), "").expect("store"));
        let logs = crate::tempdir();
        let function = |id: &str, bin: &str, concurrency: usize| {
            Arc::new(Function::new(function_spec(
                &template,
                id,
                bin,
                logs.path(),
                &moto,
                &d,
                concurrency,
            )))
        };
        let esm = esm_settings(&template, d.scale, d.sync_concurrency);
        let webhook = function("WebhookFunction", "webhook", 2);
        let poll = function("PollFunction", "poll", 2);
        let sync = function("SyncFunction", "sync", esm.concurrency);
        let config_key = text(
            &template,
            "SyncFunction",
            &["Environment", "Variables", "GITFERRY_CONFIG_KEY"],
        );
        let stack = Stack {
            tick: schedule_period(&template, d.scale),
            moto,
            bucket,
            store,
            sqs,
            queue_url,
            dlq_url,
            dlq_name,
            template,
            scale: d.scale,
            webhook,
            poll,
            sync,
            esm,
            config_key,
            metrics: Mutex::new(MetricStore::new()),
            ingested: Mutex::new([0; 3]),
            dlq_samples: Arc::default(),
            runs: Arc::new(Mutex::new(Vec::new())),
            _logs: logs,
        };
        stack.put_config(&d.config).await;
        stack
    }

    /// Upload a new `mirrors.toml`.
    pub async fn put_config(&self, text: &str) {
        self.store
            .put(
                &self.config_key,
                text.as_bytes().to_vec(),
                gitferry_core::store::Condition::Always,
            )
            .await
            .expect("upload the configuration");
    }

    /// The sync function's time limit as deployed here.
    pub fn sync_timeout(&self) -> Duration {
        scaled_secs(
            self.template.number("SyncFunction", &["Timeout"]).expect("Timeout"),
            self.scale,
        )
    }

    /// One scheduled poll tick, as EventBridge delivers it.
    pub async fn poll_tick(&self) -> Invocation {
        let (poll, event) = (self.poll.clone(), scheduled_event(self.tick));
        tokio::task::spawn_blocking(move || poll.invoke(event))
            .await
            .expect("poll invocation")
    }

    /// Run the schedule (when `schedule`) and the event source mapping until `done` is true or
    /// `limit` passed. Returns how long it ran, or `Err` with that time if `done` never held.
    pub async fn run_until<F, Fut>(&self, limit: Duration, schedule: bool, mut done: F) -> Result<Duration, Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.esm.concurrency {
            tasks.spawn(esm_worker(self.worker_parts(), stop.clone()));
        }
        if schedule {
            tasks.spawn(scheduler(self.poll.clone(), self.tick, stop.clone()));
        }
        tasks.spawn(sampler(
            self.sqs.clone(),
            self.dlq_url.clone(),
            self.dlq_name.clone(),
            self.tick,
            stop.clone(),
            self.dlq_samples(),
        ));
        let started = Instant::now();
        let result = loop {
            if done().await {
                break Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                break Err(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        stop.store(true, Ordering::SeqCst);
        while tasks.join_next().await.is_some() {}
        result
    }

    fn worker_parts(&self) -> WorkerParts {
        WorkerParts {
            sqs: self.sqs.clone(),
            queue_url: self.queue_url.clone(),
            sync: self.sync.clone(),
            esm: self.esm,
            runs: self.runs.clone(),
        }
    }

    fn dlq_samples(&self) -> Arc<Mutex<Vec<(u64, f64)>>> {
        self.dlq_samples.clone()
    }

    /// The sync invocations so far.
    pub fn sync_runs(&self) -> Vec<SyncRun> {
        self.runs.lock().expect("not poisoned").clone()
    }

    /// A repository's status as the API shows it (stalled, last checked).
    pub async fn status(&self, repo: &str) -> Option<gitferry_core::status::RepoStatus> {
        gitferry_core::status::StatusBook::new(self.store.clone())
            .get(repo)
            .await
            .expect("status")
    }

    /// Messages visible, in flight, and in the dead-letter queue.
    pub async fn queue_depths(&self) -> (u64, u64, u64) {
        let (visible, inflight) = depths(&self.sqs, &self.queue_url).await;
        let (dead, _) = depths(&self.sqs, &self.dlq_url).await;
        (visible, inflight, dead)
    }

    /// Kill every process of the sync function (SIGKILL), as an out-of-memory kill would.
    pub fn kill_sync(&self) -> usize {
        let pids = self.sync.pids();
        for pid in &pids {
            // SAFETY: plain kill(2) of a pid this harness spawned.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        pids.len()
    }

    /// Every metric the functions printed so far (EMF lines), and the dead-letter queue depth.
    pub fn metrics(&self) -> std::sync::MutexGuard<'_, MetricStore> {
        let mut store = self.metrics.lock().expect("not poisoned");
        let mut ingested = self.ingested.lock().expect("not poisoned");
        for (i, f) in [&self.webhook, &self.poll, &self.sync].into_iter().enumerate() {
            let logs = f.logs();
            for line in &logs[ingested[i].min(logs.len())..] {
                store.ingest_emf_line(&line.line);
            }
            ingested[i] = logs.len();
        }
        for (at, depth) in self.dlq_samples().lock().expect("not poisoned").drain(..) {
            store.put(
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                &[("QueueName", &self.dlq_name)],
                at,
                depth,
            );
        }
        store
    }

    /// The lines a function printed that contain `needle` (for assertions and reports).
    pub fn log_lines(&self, function: &str, needle: &str) -> Vec<String> {
        let f = match function {
            "webhook" => &self.webhook,
            "poll" => &self.poll,
            _ => &self.sync,
        };
        f.logs()
            .into_iter()
            .filter(|l| l.line.contains(needle))
            .map(|l| format!("{} {}", l.at_ms, l.line))
            .collect()
    }

    /// An alarm of the template.
    pub fn alarm(&self, id: &str) -> Alarm {
        self.template.alarm(id).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The alarm's states between `from_ms` and `to_ms`, evaluated every (scaled) minute.
    pub fn timeline(&self, id: &str, from_ms: u64, to_ms: u64) -> Vec<(u64, AlarmState)> {
        let alarm = self.alarm(id);
        let opts = EvalOptions::scaled(self.scale);
        let times = alarm.evaluation_times(from_ms, to_ms, &opts);
        let metrics = self.metrics();
        alarm.timeline(&metrics, &times, &opts)
    }

    /// "+0.0s OK, +31.9s ALARM" for reports.
    pub fn describe(&self, id: &str, from_ms: u64, to_ms: u64) -> String {
        alarms::describe_timeline(from_ms, &alarms::transitions(&self.timeline(id, from_ms, to_ms)))
    }
}

fn uuid_ish() -> String {
    format!("{}-{}", std::process::id(), crate::now_ms() % 1_000_000_000)
}

fn scaled_secs(secs: f64, scale: f64) -> Duration {
    Duration::from_secs_f64(secs / scale)
}

/// `!GetAtt`/`!Ref` values good enough to read settings before the queues exist.
fn placeholder_attrs() -> BTreeMap<String, String> {
    [
        "CacheBucket",
        "SyncQueue",
        "SyncQueue.Arn",
        "SyncQueue.QueueName",
        "SyncDeadLetterQueue",
        "SyncDeadLetterQueue.Arn",
        "SyncDeadLetterQueue.QueueName",
    ]
    .into_iter()
    .map(|k| (k.to_owned(), "placeholder".to_owned()))
    .collect()
}

fn text(t: &Template, resource: &str, path: &[&str]) -> String {
    t.property(resource, path)
        .unwrap_or_else(|e| panic!("{e}"))
        .and_then(|v| alarms::scalar_string(&v))
        .unwrap_or_else(|| panic!("{resource}.{} is not set", path.join(".")))
}

/// A FIFO queue as the template declares it (visibility scaled; seconds are whole in SQS).
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    t: &Template,
    resource: &str,
    scale: f64,
    dead_letter_arn: Option<&str>,
) -> String {
    let mut request = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
    for (attr, path) in [
        (QueueAttributeName::DeduplicationScope, "DeduplicationScope"),
        (QueueAttributeName::FifoThroughputLimit, "FifoThroughputLimit"),
    ] {
        if let Some(v) = t.property(resource, &[path]).unwrap_or_else(|e| panic!("{e}")) {
            request = request.attributes(attr, alarms::scalar_string(&v).unwrap_or_default());
        }
    }
    if let Ok(visibility) = t.number(resource, &["VisibilityTimeout"]) {
        let secs = (visibility / scale).ceil().max(1.0);
        request = request.attributes(QueueAttributeName::VisibilityTimeout, format!("{secs}"));
    }
    if let Some(arn) = dead_letter_arn {
        let max = t
            .number(resource, &["RedrivePolicy", "maxReceiveCount"])
            .unwrap_or_else(|e| panic!("{e}"));
        let policy = json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max as u32 }).to_string();
        request = request.attributes(QueueAttributeName::RedrivePolicy, policy);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
        .queue_url()
        .expect("queue url")
        .to_owned()
}

/// A function as the template declares it, with time scaled and the emulators' endpoints.
fn function_spec(
    t: &Template,
    id: &str,
    bin: &str,
    logs: &Path,
    moto: &MotoServer,
    d: &Deploy,
    concurrency: usize,
) -> FunctionSpec {
    let timeout = scaled_secs(t.number(id, &["Timeout"]).unwrap_or_else(|e| panic!("{e}")), d.scale);
    let memory = t.number(id, &["MemorySize"]).unwrap_or_else(|e| panic!("{e}")) as u32;
    let json_logs = t
        .property(id, &["LoggingConfig", "LogFormat"])
        .ok()
        .flatten()
        .and_then(|v| alarms::scalar_string(&v))
        == Some("JSON".to_owned());
    let mut spec = FunctionSpec::new(bin, bootstrap(bin), logs)
        .timeout(timeout)
        .memory_mb(memory)
        .log_format_json(json_logs)
        .max_concurrency(concurrency);
    let vars = t
        .property(id, &["Environment", "Variables"])
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
    for (k, v) in vars.as_mapping().into_iter().flatten() {
        if let (Some(k), Some(v)) = (k.as_str(), alarms::scalar_string(v)) {
            spec = spec.env(k, v);
        }
    }
    spec = spec
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)
        .env("AWS_REGION", moto::REGION)
        .env("AWS_DEFAULT_REGION", moto::REGION)
        .env("GITFERRY_TIME_SCALE", format!("{}", d.scale))
        .env("RUST_LOG", "info");
    for (k, v) in &d.env {
        spec = spec.env(k, v);
    }
    spec
}

fn esm_settings(t: &Template, scale: f64, wanted: usize) -> Esm {
    let resource = "SyncEventSource";
    let responses = t.property(resource, &["FunctionResponseTypes"]).ok().flatten();
    assert!(
        format!("{responses:?}").contains("ReportBatchItemFailures"),
        "the mapping must report batch item failures"
    );
    let max = t
        .number(resource, &["ScalingConfig", "MaximumConcurrency"])
        .unwrap_or(1000.0) as usize;
    Esm {
        batch_size: t.number(resource, &["BatchSize"]).unwrap_or_else(|e| panic!("{e}")) as i32,
        concurrency: wanted.clamp(1, max),
        max_receive_count: t
            .number("SyncQueue", &["RedrivePolicy", "maxReceiveCount"])
            .unwrap_or_else(|e| panic!("{e}")) as u32,
        visibility: scaled_secs(
            t.number("SyncQueue", &["VisibilityTimeout"])
                .unwrap_or_else(|e| panic!("{e}")),
            scale,
        ),
    }
}

/// `rate(N minute[s])` of the poll function's schedule, scaled.
fn schedule_period(t: &Template, scale: f64) -> Duration {
    let schedule = t
        .property("PollFunction", &["Events", "Tick", "Properties", "Schedule"])
        .unwrap_or_else(|e| panic!("{e}"))
        .and_then(|v| alarms::scalar_string(&v))
        .expect("the poll function has a schedule");
    let inner = schedule.trim_start_matches("rate(").trim_end_matches(')');
    let (n, unit) = inner.split_once(' ').expect("rate(N unit)");
    let n: f64 = n.parse().expect("a number");
    let secs = match unit.trim_end_matches('s') {
        "minute" => 60.0,
        "hour" => 3600.0,
        other => panic!("unsupported schedule unit {other}"),
    };
    scaled_secs(n * secs, scale)
}

/// An API Gateway HTTP API (payload v2) event for a POST to `path`, as the webhook function
/// receives it.
pub fn api_event(path: &str, headers: &[(&str, &str)], body: &str) -> Value {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apigw-v2-webhook.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("json");
    v["rawPath"] = path.into();
    v["requestContext"]["http"]["path"] = path.into();
    v["requestContext"]["http"]["method"] = "POST".into();
    let hs = v["headers"].as_object_mut().expect("headers");
    hs.retain(|k, _| !k.starts_with("x-github") && !k.starts_with("x-hub"));
    for (k, val) in headers {
        hs.insert((*k).to_owned(), (*val).into());
    }
    v["body"] = body.into();
    v["isBase64Encoded"] = false.into();
    v
}

/// EventBridge's event for the tick at `at_ms` (its `time` is the schedule's, not the
/// delivery's: what the poller counts its windows from).
fn scheduled_event_at(at_ms: u64) -> Value {
    let secs = at_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let time = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        at_ms % 1000
    );
    json!({
        "version": "0",
        "id": format!("tick-{at_ms}"),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": crate::lambda_rt::ACCOUNT_ID,
        "time": time,
        "region": moto::REGION,
        "resources": [format!("arn:aws:events:{}:{}:rule/gitferry-poll", moto::REGION, crate::lambda_rt::ACCOUNT_ID)],
        "detail": {}
    })
}

/// The tick now, on the scaled schedule.
fn scheduled_event(period: Duration) -> Value {
    let p = (period.as_millis() as u64).max(1);
    scheduled_event_at(crate::now_ms() / p * p)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil-from-days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

async fn depths(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let get = |a: QueueAttributeName| {
        out.attributes()
            .and_then(|m| m.get(&a))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// EventBridge: a tick every `period`, invoked asynchronously (a slow tick does not delay the
/// next one; it runs in another environment).
async fn scheduler(poll: Arc<Function>, period: Duration, stop: Arc<AtomicBool>) {
    let mut pending = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(period).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let poll = poll.clone();
        let event = scheduled_event(period);
        pending.push(tokio::task::spawn_blocking(move || poll.invoke(event)));
    }
    for p in pending {
        let _ = p.await;
    }
}

/// Samples the dead-letter queue's depth every (scaled) minute, like the AWS/SQS metric.
async fn sampler(
    sqs: aws_sdk_sqs::Client,
    dlq_url: String,
    _name: String,
    period: Duration,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(u64, f64)>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let (visible, _) = depths(&sqs, &dlq_url).await;
        samples
            .lock()
            .expect("not poisoned")
            .push((crate::now_ms(), visible as f64));
        tokio::time::sleep(period / 2).await;
    }
}

struct WorkerParts {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    sync: Arc<Function>,
    esm: Esm,
    runs: Arc<Mutex<Vec<SyncRun>>>,
}

/// One poller of the event source mapping.
async fn esm_worker(p: WorkerParts, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let received = p
            .sqs
            .receive_message()
            .queue_url(&p.queue_url)
            .max_number_of_messages(p.esm.batch_size)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages().to_vec(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let event = sqs_event(&messages);
        let sync = p.sync.clone();
        let started = Instant::now();
        let at_ms = crate::now_ms();
        let invocation = tokio::task::spawn_blocking(move || sync.invoke(event))
            .await
            .expect("sync invocation");
        let failed = batch_failures(&invocation.outcome);
        let outcome = match &invocation.outcome {
            Outcome::Response(_) => "response".to_owned(),
            other => format!("{other:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("?")
                .to_lowercase(),
        };
        if let Some(failed) = &failed {
            delete_succeeded(&p, &messages, failed).await;
        }
        p.runs.lock().expect("not poisoned").push(SyncRun {
            at_ms,
            took: started.elapsed(),
            records: messages.iter().map(|m| (group(m), receive_count(m))).collect(),
            outcome,
            failed: failed.map_or(messages.len(), |f| f.len()),
        });
    }
}

fn group(m: &aws_sdk_sqs::types::Message) -> String {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned()
        .unwrap_or_default()
}

fn receive_count(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The SQS event the mapping hands the function.
fn sqs_event(messages: &[aws_sdk_sqs::types::Message]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: BTreeMap<String, String> = m
                .attributes()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect();
            json!({
                "messageId": m.message_id().unwrap_or_default(),
                "receiptHandle": m.receipt_handle().unwrap_or_default(),
                "body": m.body().unwrap_or_default(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body().unwrap_or_default(),
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:{}:{}:gitferry.fifo", moto::REGION, crate::lambda_rt::ACCOUNT_ID),
                "awsRegion": moto::REGION,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The message ids a response reports as failed (`None`: the invocation failed as a whole).
fn batch_failures(outcome: &Outcome) -> Option<Vec<String>> {
    let Outcome::Response(v) = outcome else { return None };
    Some(
        v["batchItemFailures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
            .collect(),
    )
}

async fn delete_succeeded(p: &WorkerParts, messages: &[aws_sdk_sqs::types::Message], failed: &[String]) {
    let entries: Vec<DeleteMessageBatchRequestEntry> = messages
        .iter()
        .filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id()))
        .enumerate()
        .map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
                .expect("id and handle")
        })
        .collect();
    if !entries.is_empty() {
        let _ = p
            .sqs
            .delete_message_batch()
            .queue_url(&p.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
    }
}
