//! Run the real Lambda bootstraps (`target/*/webhook`, `poll`, `sync`) as AWS runs them: each
//! execution environment is its own process behind its own emulated Lambda Runtime API, and the
//! process is frozen between invocations and killed at the function timeout.
//!
//! Why: calling the handlers in-process (tests/tests/lambda.rs) checks what they compute, not
//! how the deployed function behaves under Lambda's rules — a handler still running at the
//! deadline is killed mid-write (its `/tmp` survives for the next init in that environment), a
//! warm container's background work stops while it is frozen, a failed `Runtime::init` is an
//! init error rather than a handler error, and the only output is what the process prints
//! (EMF metric lines and JSON logs on stdout). [`Function`] reproduces those rules with the
//! real `lambda_runtime` client in the real binary, so tests can check the product against them.
//!
//! ```ignore
//! let spec = FunctionSpec::new("webhook", bin_path("webhook"), logs.path())
//!     .timeout(Duration::from_secs(29))
//!     .memory_mb(256)
//!     .log_format_json(true)
//!     .env("GITFERRY_BUCKET", &bucket);
//! let function = Function::new(spec);
//! let first = function.invoke(event.clone());
//! assert!(first.cold_start);
//! let response = first.expect_response();
//! ```
//!
//! What is emulated (details and sources in `lambda_rt.md`):
//!
//! * the Runtime API 2018-06-01 on `127.0.0.1:PORT` (one port per environment, given as
//!   `AWS_LAMBDA_RUNTIME_API`): `GET …/invocation/next` long-polls and answers the event with
//!   `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`, `-Trace-Id`
//!   and, when given, `-Client-Context` and `-Cognito-Identity`; `POST …/{id}/response`,
//!   `…/{id}/error` and `…/init/error` are answered `202 {"status":"OK"}`; a wrong request id
//!   gets `400 InvalidRequestID`, a call out of turn `403 InvalidStateTransition`, a response
//!   over 6 MB `413 RequestEntityTooLarge` (and the invocation fails with
//!   `Function.ResponseSizeTooLarge`), as Lambda's runtime interface emulator does;
//! * the lifecycle: init on first need (no more than `init_timeout`, until the runtime's first
//!   `/next`); invoke (`timeout` from handing out the event, the deadline header says when);
//!   freeze (`SIGSTOP` of the whole process tree) once the runtime asks for the next event,
//!   thaw (`SIGCONT`) to hand it one; on timeout or crash the process tree is killed and the
//!   environment reset: its next invocation is a cold start that keeps its `/tmp` (`TMPDIR`);
//!   an init failure discards the environment;
//! * concurrency: at most `max_concurrency` environments exist, a warm one is reused before a
//!   new one starts, and an invocation beyond the limit is [`Outcome::Throttled`];
//! * the environment variables Lambda sets (see [`FunctionSpec`] for which), with the
//!   caller's variables on top; nothing of the test process's environment leaks in.
//!
//! Not emulated: memory and CPU limits (`memory_mb` is only reported, with the peak RSS),
//! extensions and the Telemetry API, log-level filtering, response streaming, SnapStart, the
//! init retry with the function timeout after a failed 10 s init, payload limits of the event.
//!
//! Sources: the Runtime API <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>,
//! the lifecycle <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html>,
//! the variables <https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html>, the
//! status codes and error bodies of aws/aws-lambda-runtime-interface-emulator
//! (`lambda/rapi/handler`, `lambda/rapi/rendering`), and what the `lambda_runtime` 1.5 client
//! requires (`src/types.rs`, `src/runtime.rs`, `src/requests.rs`).
//!
//! Every line a process writes to stdout or stderr is kept whole, with the time it was read,
//! in memory ([`Function::logs`]) and appended to `<log_dir>/<name>.log`. Processes are spawned
//! in their own process group and killed as a tree (the group plus every descendant found in
//! `/proc`), so nothing a bootstrap started survives its environment or the [`Function`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The largest response Lambda accepts from a runtime (6 MB and 100 bytes).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024 + 100;
/// The account id in the function ARN handed to the runtime.
pub const ACCOUNT_ID: &str = "123456789012";
/// How often the waiting loops look at the process and the clock.
const TICK: Duration = Duration::from_millis(10);
/// After a process exits, how long requests it sent just before may take to arrive.
const LATE_REQUESTS: Duration = Duration::from_millis(100);

// ---- configuration --------------------------------------------------------------------------

/// One Lambda function: which bootstrap, with what configuration.
///
/// Lambda's own variables are set for every environment: `AWS_LAMBDA_RUNTIME_API`,
/// `_HANDLER=bootstrap`, `AWS_LAMBDA_FUNCTION_NAME`, `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`,
/// `AWS_LAMBDA_FUNCTION_VERSION=$LATEST`, `AWS_LAMBDA_INITIALIZATION_TYPE=on-demand`,
/// `AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/NAME`, `AWS_LAMBDA_LOG_STREAM_NAME`,
/// `AWS_LAMBDA_LOG_FORMAT=JSON` (only with `log_format_json`), `AWS_REGION` and
/// `AWS_DEFAULT_REGION` (from `env["AWS_REGION"]`, else `us-east-1`), `LAMBDA_TASK_ROOT` (a
/// directory holding `bootstrap`, also the working directory), `LAMBDA_RUNTIME_DIR`, `TZ=:UTC`,
/// `LANG`, `PATH` and `LD_LIBRARY_PATH` as on Lambda, and `TMPDIR` (this environment's
/// `/tmp`). Then `env` is applied: it may override all of these except `AWS_LAMBDA_RUNTIME_API`.
/// Credentials are not invented: put `AWS_ACCESS_KEY_ID` etc. in `env`.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    /// The function name (`AWS_LAMBDA_FUNCTION_NAME`, the ARN, the log file name).
    pub name: String,
    /// The bootstrap executable.
    pub binary: PathBuf,
    /// The function's environment variables (template `Environment.Variables`).
    pub env: BTreeMap<String, String>,
    /// The function timeout (template `Timeout`; Lambda's default is 3 s).
    pub timeout: Duration,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (template `MemorySize`); reported, not enforced.
    pub memory_mb: u32,
    /// `LoggingConfig.LogFormat: JSON`.
    pub log_format_json: bool,
    /// How long init may take before the environment is discarded (Lambda: 10 s).
    pub init_timeout: Duration,
    /// How many environments may run at once; more concurrent invocations are throttled.
    pub max_concurrency: usize,
    /// Where `<name>.log` is appended.
    pub log_dir: PathBuf,
}

impl FunctionSpec {
    /// Lambda's defaults: 3 s timeout, 128 MB, text logs, 10 s init, one environment.
    pub fn new(name: impl Into<String>, binary: impl Into<PathBuf>, log_dir: impl Into<PathBuf>) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            binary: binary.into(),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(3),
            memory_mb: 128,
            log_format_json: false,
            init_timeout: Duration::from_secs(10),
            max_concurrency: 1,
            log_dir: log_dir.into(),
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> FunctionSpec {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> FunctionSpec {
        self.timeout = timeout;
        self
    }

    pub fn memory_mb(mut self, memory_mb: u32) -> FunctionSpec {
        self.memory_mb = memory_mb;
        self
    }

    pub fn log_format_json(mut self, json: bool) -> FunctionSpec {
        self.log_format_json = json;
        self
    }

    pub fn init_timeout(mut self, init_timeout: Duration) -> FunctionSpec {
        self.init_timeout = init_timeout;
        self
    }

    pub fn max_concurrency(mut self, n: usize) -> FunctionSpec {
        self.max_concurrency = n;
        self
    }

    /// `AWS_REGION` as the function sees it.
    pub fn region(&self) -> &str {
        self.env.get("AWS_REGION").map(String::as_str).unwrap_or("us-east-1")
    }

    /// The ARN handed to the runtime (`Lambda-Runtime-Invoked-Function-Arn`).
    pub fn arn(&self) -> String {
        format!("arn:aws:lambda:{}:{ACCOUNT_ID}:function:{}", self.region(), self.name)
    }
}

/// What a caller may add to an invocation (the optional `/next` headers).
#[derive(Clone, Debug, Default)]
pub struct InvokeOptions {
    /// `Lambda-Runtime-Client-Context` (JSON, as the mobile SDK sends it).
    pub client_context: Option<Value>,
    /// `Lambda-Runtime-Cognito-Identity` (JSON).
    pub cognito_identity: Option<Value>,
    /// `Lambda-Runtime-Trace-Id`; one is made up when absent.
    pub trace_id: Option<String>,
}

// ---- results ---------------------------------------------------------------------------------

/// How an invocation ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The runtime posted this JSON to `/response`.
    Response(Value),
    /// The runtime posted to `/error` (body `{errorType, errorMessage}`), or the response was
    /// too large (`Function.ResponseSizeTooLarge`).
    Error { error_type: String, message: String },
    /// No response by the deadline: the process tree was killed.
    Timeout,
    /// The environment could not start: the process exited, posted `/init/error`, or did not
    /// reach `/next` within the init timeout ("type: message").
    InitError(String),
    /// The process exited while handling the event.
    Crashed { status: ExitStatus },
    /// The runtime posted a response body that is not JSON (Lambda would pass the bytes on;
    /// gitferry's functions always answer JSON). The text is the body, lossily decoded.
    NotJson(String),
    /// Every environment was busy (`max_concurrency`): Lambda answers 429.
    Throttled,
}

/// One invocation's result.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub request_id: String,
    pub outcome: Outcome,
    /// From handing the event to the runtime until the outcome (zero if it was never handed).
    pub duration: Duration,
    /// Whether this invocation started a new process (including a failed start).
    pub cold_start: bool,
    /// How long init took, on a cold start.
    pub init_duration: Option<Duration>,
    /// The `Lambda-Runtime-Deadline-Ms` handed to the runtime (0 if none was).
    pub deadline_ms: u64,
    /// The execution environment that served it.
    pub env_id: Option<u64>,
    /// The bootstrap process's peak resident memory so far (`VmHWM`), in MB: what Lambda
    /// reports as "Max Memory Used" (compare with `memory_mb`; nothing is enforced).
    pub max_memory_used_mb: Option<u64>,
}

impl Invocation {
    /// The response, or a panic naming the outcome (for tests).
    #[track_caller]
    pub fn expect_response(&self) -> &Value {
        match &self.outcome {
            Outcome::Response(v) => v,
            other => panic!("invocation {} did not respond: {other:?}", self.request_id),
        }
    }

    fn without_environment(request_id: String, outcome: Outcome, cold_start: bool) -> Invocation {
        Invocation {
            request_id,
            outcome,
            duration: Duration::ZERO,
            cold_start,
            init_duration: None,
            deadline_ms: 0,
            env_id: None,
            max_memory_used_mb: None,
        }
    }
}

/// Which output a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Written by this emulator, like Lambda's own `START`/`END`/`REPORT` lines.
    Platform,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Platform => "platform",
        }
    }
}

/// One line of output, without its newline.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// When the line was read (Unix ms).
    pub at_ms: u64,
    pub stream: Stream,
    pub env_id: u64,
    pub line: String,
}

impl LogLine {
    /// The line as JSON, if it is (JSON logs, EMF records).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.line).ok()
    }
}

/// Counters since the function was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Invocations that got an environment (like CloudWatch's `Invocations`, throttles are not
    /// counted; init errors are).
    pub invocations: u64,
    pub cold_starts: u64,
    pub timeouts: u64,
    pub crashes: u64,
    pub init_errors: u64,
    pub throttles: u64,
}

// ---- the function ----------------------------------------------------------------------------

/// A Lambda function whose execution environments are processes of `spec.binary`.
///
/// `invoke` may be called from several threads at once. Dropping the function kills every
/// process it started (and waits for them) and removes its directories.
pub struct Function {
    spec: FunctionSpec,
    shared: Arc<Shared>,
    pool: Mutex<Pool>,
    next_env: AtomicU64,
    /// `task/bootstrap` (a link to the binary) and one `env-N` directory per environment.
    root: tempfile::TempDir,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Sandbox>,
    busy: usize,
}

impl Function {
    /// Prepare the function (no process starts until the first invocation). Panics if the log
    /// file or the working directories cannot be created.
    pub fn new(spec: FunctionSpec) -> Function {
        let root = tempfile::Builder::new()
            .prefix(&format!("lambda-{}-", spec.name))
            .tempdir()
            .expect("create the function's directory");
        let task = root.path().join("task");
        std::fs::create_dir(&task).expect("create the task root");
        let binary = std::path::absolute(&spec.binary).unwrap_or_else(|_| spec.binary.clone());
        std::os::unix::fs::symlink(&binary, task.join("bootstrap")).expect("link the bootstrap");
        std::fs::create_dir_all(&spec.log_dir).expect("create the log directory");
        let log_path = spec.log_dir.join(format!("{}.log", spec.name));
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            log_path,
            log_file: Mutex::new(log_file),
            logs: Mutex::new(Vec::new()),
            live: Mutex::new(BTreeSet::new()),
            stats: Mutex::new(Stats::default()),
        });
        Function {
            spec,
            shared,
            pool: Mutex::new(Pool::default()),
            next_env: AtomicU64::new(1),
            root,
        }
    }

    pub fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    /// The function's directory: `task/` (`LAMBDA_TASK_ROOT`) and `env-N/` (environment N's
    /// `TMPDIR`). Removed when the function is dropped.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Invoke synchronously (`RequestResponse`) and wait for the outcome.
    pub fn invoke(&self, event: Value) -> Invocation {
        self.invoke_with(event, &InvokeOptions::default())
    }

    /// [`Function::invoke`] with the optional `/next` headers.
    pub fn invoke_with(&self, event: Value, options: &InvokeOptions) -> Invocation {
        let request_id = new_request_id();
        let Some(mut lease) = self.lease() else {
            self.shared.count(|s| s.throttles += 1);
            return Invocation::without_environment(request_id, Outcome::Throttled, false);
        };
        self.shared.count(|s| s.invocations += 1);
        let sandbox = match lease.sandbox.as_mut() {
            Some(sandbox) => sandbox,
            None => {
                let outcome = Outcome::InitError("Harness: cannot create the environment's directory".into());
                return Invocation::without_environment(request_id, outcome, true);
            }
        };
        let (mut runtime, init) = match sandbox.take_warm_runtime() {
            Some(runtime) => (runtime, None),
            None => match self.cold_start(sandbox) {
                Ok((runtime, took)) => (runtime, Some(took)),
                Err(message) => {
                    self.shared.count(|s| s.init_errors += 1);
                    let env_id = sandbox.id;
                    lease.discard();
                    let mut invocation = Invocation::without_environment(request_id, Outcome::InitError(message), true);
                    invocation.env_id = Some(env_id);
                    return invocation;
                }
            },
        };
        let request = Request {
            id: request_id,
            body: serde_json::to_vec(&event).unwrap_or_default(),
            options,
        };
        let mut invocation = self.run(&mut runtime, &request);
        invocation.cold_start = init.is_some();
        invocation.init_duration = init;
        self.platform_report(&invocation, runtime.env_id);
        if runtime.is_healthy() {
            sandbox.runtime = Some(runtime);
        }
        invocation
    }

    /// Every line captured so far (all environments, in the order read).
    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.shared.logs).clone()
    }

    /// The lines captured so far, removing them from memory (the log file keeps them).
    pub fn take_logs(&self) -> Vec<LogLine> {
        std::mem::take(&mut *lock(&self.shared.logs))
    }

    /// `<log_dir>/<name>.log`: one line per captured line, `AT_MS NAME#ENV STREAM LINE`.
    pub fn log_path(&self) -> &Path {
        &self.shared.log_path
    }

    pub fn stats(&self) -> Stats {
        *lock(&self.shared.stats)
    }

    /// The bootstrap processes alive now (busy, idle or frozen).
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.shared.live).iter().copied().collect()
    }

    /// Shut down every idle environment, as Lambda does after a while without invocations: the
    /// next invocations start new environments with an empty `/tmp`.
    pub fn shutdown_idle(&self) {
        let idle = std::mem::take(&mut lock(&self.pool).idle);
        drop(idle);
    }

    fn lease(&self) -> Option<Lease<'_>> {
        let mut pool = lock(&self.pool);
        if let Some(sandbox) = pool.idle.pop() {
            pool.busy += 1;
            return Some(Lease {
                function: self,
                sandbox: Some(sandbox),
            });
        }
        if pool.busy >= self.spec.max_concurrency {
            return None;
        }
        pool.busy += 1;
        drop(pool);
        let mut lease = Lease {
            function: self,
            sandbox: None,
        };
        lease.sandbox = self.new_sandbox();
        Some(lease)
    }

    fn new_sandbox(&self) -> Option<Sandbox> {
        let id = self.next_env.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.path().join(format!("env-{id}"));
        std::fs::create_dir(&tmp).ok()?;
        Some(Sandbox { runtime: None, id, tmp })
    }

    /// Init: start the process and wait for its first `/next`.
    fn cold_start(&self, sandbox: &Sandbox) -> Result<(Runtime, Duration), String> {
        self.shared.count(|s| s.cold_starts += 1);
        let started = Instant::now();
        let result = Runtime::spawn(&self.spec, &self.shared, self.root.path(), sandbox)
            .and_then(|mut runtime| runtime.await_first_next(self.spec.init_timeout).map(|()| runtime));
        let took = started.elapsed();
        match result {
            Ok(runtime) => Ok((runtime, took)),
            Err(message) => {
                self.shared.platform(
                    sandbox.id,
                    format!(
                        "INIT_REPORT Init Duration: {:.2} ms Phase: init Status: error {message}",
                        ms(took)
                    ),
                );
                Err(message)
            }
        }
    }

    /// Invoke: hand the event out, wait for the outcome, then for the next `/next` (freeze).
    fn run(&self, runtime: &mut Runtime, request: &Request<'_>) -> Invocation {
        runtime.thaw();
        let deadline_ms = unix_ms() + self.spec.timeout.as_millis() as u64;
        let handed = Instant::now();
        let until = handed + self.spec.timeout;
        self.shared.platform(
            runtime.env_id,
            format!("START RequestId: {} Version: $LATEST", request.id),
        );
        runtime.hand_out(&self.spec, request, deadline_ms, until);
        let outcome = runtime.await_outcome(&request.id, until);
        let duration = handed.elapsed();
        let max_memory_used_mb = runtime.peak_memory_mb();
        match &outcome {
            Outcome::Timeout => {
                self.shared.count(|s| s.timeouts += 1);
                self.shared.platform(
                    runtime.env_id,
                    format!(
                        "{} Task timed out after {:.2} seconds",
                        request.id,
                        self.spec.timeout.as_secs_f64()
                    ),
                );
                runtime.kill();
            }
            Outcome::Crashed { status } => {
                self.shared.count(|s| s.crashes += 1);
                self.shared.platform(
                    runtime.env_id,
                    format!(
                        "RequestId: {} Error: Runtime exited with error: {status} Runtime.ExitError",
                        request.id
                    ),
                );
                runtime.kill();
            }
            _ => runtime.await_next_then_freeze(until),
        }
        Invocation {
            request_id: request.id.clone(),
            outcome,
            duration,
            cold_start: false,
            init_duration: None,
            deadline_ms,
            env_id: Some(runtime.env_id),
            max_memory_used_mb,
        }
    }

    fn platform_report(&self, inv: &Invocation, env_id: u64) {
        let mut report = format!(
            "REPORT RequestId: {}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
            inv.request_id,
            ms(inv.duration),
            ms(inv.duration).ceil() as u64,
            self.spec.memory_mb
        );
        if let Some(mb) = inv.max_memory_used_mb {
            report.push_str(&format!("\tMax Memory Used: {mb} MB"));
        }
        if let Some(init) = inv.init_duration {
            report.push_str(&format!("\tInit Duration: {:.2} ms", ms(init)));
        }
        self.shared
            .platform(env_id, format!("END RequestId: {}", inv.request_id));
        self.shared.platform(env_id, report);
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        // No invocation can be running (`invoke` borrows the function), so every environment
        // is idle; dropping one kills its process tree, reaps it and joins its log readers.
        let idle = std::mem::take(&mut lock(&self.pool).idle);
        drop(idle);
    }
}

/// An environment checked out of the pool; put back (or discarded) when dropped, so a panic in
/// a test cannot leak it.
struct Lease<'a> {
    function: &'a Function,
    sandbox: Option<Sandbox>,
}

impl Lease<'_> {
    /// Throw the environment away (init failed).
    fn discard(&mut self) {
        self.sandbox = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut pool = lock(&self.function.pool);
        pool.busy = pool.busy.saturating_sub(1);
        if let Some(sandbox) = self.sandbox.take() {
            pool.idle.push(sandbox);
        }
    }
}

/// An execution environment: its `/tmp` and, when initialised, its runtime process.
struct Sandbox {
    /// First, so the process dies before its directory is removed.
    runtime: Option<Runtime>,
    id: u64,
    tmp: PathBuf,
}

impl Sandbox {
    /// The frozen runtime, if it is still alive (something outside may have killed it).
    fn take_warm_runtime(&mut self) -> Option<Runtime> {
        let mut runtime = self.runtime.take()?;
        if runtime.exit_status().is_some() {
            return None; // dropped: killed and reaped
        }
        Some(runtime)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.runtime = None;
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// What the function keeps for every environment: logs, counters, live pids.
struct Shared {
    name: String,
    log_path: PathBuf,
    log_file: Mutex<File>,
    logs: Mutex<Vec<LogLine>>,
    live: Mutex<BTreeSet<u32>>,
    stats: Mutex<Stats>,
}

impl Shared {
    fn record(&self, line: LogLine) {
        let text = format!(
            "{} {}#{} {} {}\n",
            line.at_ms,
            self.name,
            line.env_id,
            line.stream.as_str(),
            line.line
        );
        // One write per line, under the lock: lines of different streams never interleave.
        let _ = lock(&self.log_file).write_all(text.as_bytes());
        lock(&self.logs).push(line);
    }

    fn platform(&self, env_id: u64, line: String) {
        self.record(LogLine {
            at_ms: unix_ms(),
            stream: Stream::Platform,
            env_id,
            line,
        });
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }
}

// ---- one runtime process ---------------------------------------------------------------------

/// The event being handed out.
struct Request<'a> {
    id: String,
    body: Vec<u8>,
    options: &'a InvokeOptions,
}

/// A runtime process and its Runtime API endpoint. Dropping it kills the process tree.
struct Runtime {
    env_id: u64,
    child: Child,
    pid: i32,
    api: tiny_http::Server,
    /// The runtime's pending `GET /next` (held while the environment is frozen).
    next: Option<tiny_http::Request>,
    readers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Whether the process is (as far as we know) alive and may be reused.
    healthy: bool,
    /// Set once the tree was killed and the process reaped: its pid may be reused, so it is
    /// never signalled again.
    killed: bool,
}

/// What the process did next. (Short-lived, one at a time: its size does not matter.)
#[allow(clippy::large_enum_variant)]
enum Event {
    Call(Call, tiny_http::Request),
    Exited(ExitStatus),
    Deadline,
}

/// A Runtime API request, by route.
enum Call {
    Next,
    Response(String),
    Error(String),
    InitError,
    Unknown,
}

impl Runtime {
    fn spawn(spec: &FunctionSpec, shared: &Arc<Shared>, root: &Path, sandbox: &Sandbox) -> Result<Runtime, String> {
        let api = tiny_http::Server::http((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("Harness: cannot listen for the runtime API: {e}"))?;
        let port = api
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or("Harness: the runtime API has no TCP address")?;
        let task_root = root.join("task");
        let mut child = Command::new(task_root.join("bootstrap"))
            .env_clear()
            .envs(lambda_env(spec, port, &task_root, &sandbox.tmp))
            .env(crate::process::MARK, "1")
            .current_dir(&task_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("Runtime.InvalidEntrypoint: cannot run {}: {e}", spec.binary.display()))?;
        lock(&shared.live).insert(child.id());
        let readers = [
            child
                .stdout
                .take()
                .map(|out| spawn_reader(out, Stream::Stdout, sandbox.id, shared.clone())),
            child
                .stderr
                .take()
                .map(|err| spawn_reader(err, Stream::Stderr, sandbox.id, shared.clone())),
        ];
        Ok(Runtime {
            env_id: sandbox.id,
            pid: child.id() as i32,
            child,
            api,
            next: None,
            readers: readers.into_iter().flatten().collect(),
            shared: shared.clone(),
            healthy: true,
            killed: false,
        })
    }

    fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// The init phase: wait for the first `GET /next`.
    fn await_first_next(&mut self, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            match self.wait(until) {
                Event::Call(Call::Next, request) => {
                    self.next = Some(request);
                    return Ok(());
                }
                Event::Call(Call::InitError, mut request) => {
                    let header = header(&request, "Lambda-Runtime-Function-Error-Type");
                    let body = read_body(&mut request, MAX_RESPONSE_BYTES).unwrap_or_default();
                    accepted(request);
                    let (error_type, message) = parse_error(&body, header);
                    return Err(format!("{error_type}: {message}"));
                }
                Event::Call(_, request) => invalid_state(request, "Init"),
                Event::Exited(status) => {
                    return Err(format!("Runtime.ExitError: Runtime exited with error: {status}"));
                }
                Event::Deadline => {
                    return Err(format!(
                        "Runtime.InitTimeout: the runtime did not ask for an event within {:.2} s",
                        limit.as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Answer the held `/next` with the event.
    fn hand_out(&mut self, spec: &FunctionSpec, request: &Request<'_>, deadline_ms: u64, until: Instant) {
        let next = match self.next.take() {
            Some(next) => Some(next),
            None => self.await_next(until), // only if the runtime lost its /next somehow
        };
        let Some(next) = next else { return };
        let trace = request.options.trace_id.clone().unwrap_or_else(new_trace_id);
        let mut headers = vec![
            ("Content-Type", "application/json".to_owned()),
            ("Lambda-Runtime-Aws-Request-Id", request.id.clone()),
            ("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string()),
            ("Lambda-Runtime-Invoked-Function-Arn", spec.arn()),
            ("Lambda-Runtime-Trace-Id", trace),
        ];
        if let Some(context) = &request.options.client_context {
            headers.push(("Lambda-Runtime-Client-Context", context.to_string()));
        }
        if let Some(identity) = &request.options.cognito_identity {
            headers.push(("Lambda-Runtime-Cognito-Identity", identity.to_string()));
        }
        let mut response = tiny_http::Response::from_data(request.body.clone()).with_status_code(200);
        for (name, value) in headers {
            if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(h);
            }
        }
        // If this fails the process is gone; the wait for the outcome sees it exit.
        let _ = next.respond(response);
    }

    fn await_next(&mut self, until: Instant) -> Option<tiny_http::Request> {
        loop {
            match self.wait(until) {
                Event::Call(Call::Next, request) => return Some(request),
                Event::Call(_, request) => invalid_state(request, "Ready"),
                Event::Exited(_) | Event::Deadline => return None,
            }
        }
    }

    /// The invoke phase: wait for `/response` or `/error` of this request until `until`.
    fn await_outcome(&mut self, request_id: &str, until: Instant) -> Outcome {
        loop {
            match self.wait(until) {
                Event::Call(Call::Response(id), request) if id == request_id => return self.response(request),
                Event::Call(Call::Error(id), mut request) if id == request_id => {
                    let header = header(&request, "Lambda-Runtime-Function-Error-Type");
                    let body = read_body(&mut request, MAX_RESPONSE_BYTES).unwrap_or_default();
                    accepted(request);
                    let (error_type, message) = parse_error(&body, header);
                    return Outcome::Error { error_type, message };
                }
                Event::Call(Call::Response(_) | Call::Error(_), request) => invalid_request_id(request),
                Event::Call(_, request) => invalid_state(request, "Invoke"),
                Event::Exited(status) => return Outcome::Crashed { status },
                Event::Deadline => return Outcome::Timeout,
            }
        }
    }

    fn response(&mut self, mut request: tiny_http::Request) -> Outcome {
        match read_body(&mut request, MAX_RESPONSE_BYTES) {
            Some(body) => {
                accepted(request);
                match serde_json::from_slice(&body) {
                    Ok(value) => Outcome::Response(value),
                    Err(_) => Outcome::NotJson(String::from_utf8_lossy(&body).into_owned()),
                }
            }
            None => {
                respond_json(
                    request,
                    413,
                    json!({
                        "errorType": "RequestEntityTooLarge",
                        "errorMessage": format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
                    }),
                );
                Outcome::Error {
                    error_type: "Function.ResponseSizeTooLarge".into(),
                    message: format!(
                        "Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
                    ),
                }
            }
        }
    }

    /// After the outcome: the invoke phase ends when the runtime asks for the next event; then
    /// the environment is frozen. A runtime that exits or never asks (before the deadline) is
    /// reset instead.
    fn await_next_then_freeze(&mut self, until: Instant) {
        loop {
            match self.wait(until) {
                Event::Call(Call::Next, request) => {
                    self.next = Some(request);
                    self.freeze();
                    return;
                }
                Event::Call(Call::Response(_) | Call::Error(_), request) => invalid_request_id(request),
                Event::Call(_, request) => invalid_state(request, "Invoke"),
                Event::Exited(_) | Event::Deadline => {
                    self.shared.platform(
                        self.env_id,
                        "the runtime did not ask for the next event: environment reset".into(),
                    );
                    self.kill();
                    return;
                }
            }
        }
    }

    /// The next thing the process does, or `Deadline` at `until`.
    fn wait(&mut self, until: Instant) -> Event {
        loop {
            if let Ok(Some(request)) = self.api.try_recv() {
                return Event::Call(route(&request), request);
            }
            if let Some(status) = self.exit_status() {
                return self.late_request().unwrap_or(Event::Exited(status));
            }
            let now = Instant::now();
            if now >= until {
                return Event::Deadline;
            }
            match self.api.recv_timeout(TICK.min(until - now)) {
                Ok(Some(request)) => return Event::Call(route(&request), request),
                Ok(None) => {}
                Err(_) => thread::sleep(TICK),
            }
        }
    }

    /// A request the process sent just before it exited, still on its way.
    fn late_request(&self) -> Option<Event> {
        match self.api.recv_timeout(LATE_REQUESTS) {
            Ok(Some(request)) => Some(Event::Call(route(&request), request)),
            _ => None,
        }
    }

    /// How the process exited, if it has; it is not reaped here (see [`exited`]), so its pid
    /// and process group id cannot be reused before [`Runtime::kill`] has killed the tree.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.killed {
            return self.child.try_wait().ok().flatten();
        }
        let status = exited(self.pid);
        if status.is_some() {
            self.healthy = false;
        }
        status
    }

    /// Stop the whole tree and wait until it is stopped (signals are delivered asynchronously):
    /// once `invoke` returns, nothing of the environment runs.
    fn freeze(&self) {
        if !self.killed {
            stop_tree(self.pid, Duration::from_secs(1));
        }
    }

    fn thaw(&self) {
        if !self.killed {
            signal_tree(self.pid, libc::SIGCONT);
        }
    }

    fn peak_memory_mb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb.div_ceil(1024))
    }

    /// Kill the process tree, reap the process, and collect the rest of its output. Idempotent.
    fn kill(&mut self) {
        self.healthy = false;
        if self.killed {
            return;
        }
        self.killed = true;
        drop(self.next.take());
        let tree = kill_tree(self.pid);
        let _ = self.child.wait();
        wait_dead(&tree, Duration::from_secs(1));
        join_readers(&mut self.readers, Duration::from_secs(2));
        lock(&self.shared.live).remove(&(self.pid as u32));
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- Runtime API helpers ---------------------------------------------------------------------

fn route(request: &tiny_http::Request) -> Call {
    let path = request.url().split('?').next().unwrap_or("");
    let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else {
        return Call::Unknown;
    };
    let get = *request.method() == tiny_http::Method::Get;
    let post = *request.method() == tiny_http::Method::Post;
    match (rest.split('/').collect::<Vec<_>>().as_slice(), get, post) {
        (["invocation", "next"], true, _) => Call::Next,
        (["invocation", id, "response"], _, true) => Call::Response((*id).to_owned()),
        (["invocation", id, "error"], _, true) => Call::Error((*id).to_owned()),
        (["init", "error"], _, true) => Call::InitError,
        _ => Call::Unknown,
    }
}

fn header(request: &tiny_http::Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

/// The body, or `None` if it is longer than `limit` (or unreadable).
fn read_body(request: &mut tiny_http::Request, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    request.as_reader().take(limit as u64 + 1).read_to_end(&mut body).ok()?;
    (body.len() <= limit).then_some(body)
}

/// `{errorType, errorMessage}` from an error body, leniently: the header or `Unhandled` for a
/// missing type, the raw body for a missing message.
fn parse_error(body: &[u8], header: Option<String>) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| parsed.as_ref()?.get(name)?.as_str().map(str::to_owned);
    let error_type = field("errorType").or(header).unwrap_or_else(|| "Unhandled".into());
    let message = field("errorMessage").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, message)
}

fn respond_json(request: tiny_http::Request, status: u16, body: Value) {
    let mut response = tiny_http::Response::from_string(body.to_string()).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
        response.add_header(h);
    }
    let _ = request.respond(response);
}

fn accepted(request: tiny_http::Request) {
    respond_json(request, 202, json!({ "status": "OK" }));
}

fn invalid_request_id(request: tiny_http::Request) {
    respond_json(
        request,
        400,
        json!({ "errorType": "InvalidRequestID", "errorMessage": "Invalid request ID" }),
    );
}

fn invalid_state(request: tiny_http::Request, state: &str) {
    let (status, body) = match route(&request) {
        Call::Unknown => (404, json!({ "errorType": "NotFound", "errorMessage": "Not found" })),
        _ => (
            403,
            json!({
                "errorType": "InvalidStateTransition",
                "errorMessage": format!("{} {} is not allowed in state {state}", request.method(), request.url()),
            }),
        ),
    };
    respond_json(request, status, body);
}

/// The variables Lambda sets for a custom runtime, then the function's own.
fn lambda_env(spec: &FunctionSpec, port: u16, task_root: &Path, tmp: &Path) -> BTreeMap<String, String> {
    let region = spec.region().to_owned();
    let task = task_root.display().to_string();
    let mut env: BTreeMap<String, String> = [
        ("_HANDLER", "bootstrap".to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", spec.name.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", spec.memory_mb.to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", spec.name)),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream_name()),
        ("AWS_REGION", region.clone()),
        ("AWS_DEFAULT_REGION", region),
        ("LAMBDA_TASK_ROOT", task.clone()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_owned()),
        ("TZ", ":UTC".to_owned()),
        ("LANG", "en_US.UTF-8".to_owned()),
        ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_owned()),
        (
            "LD_LIBRARY_PATH",
            format!("/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:{task}:{task}/lib:/opt/lib"),
        ),
        ("TMPDIR", tmp.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if spec.log_format_json {
        env.insert("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into());
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("AWS_LAMBDA_RUNTIME_API".into(), format!("127.0.0.1:{port}"));
    env
}

// ---- output ----------------------------------------------------------------------------------

/// Read `pipe` line by line into the function's logs until every writer has closed it.
fn spawn_reader(pipe: impl Read + Send + 'static, stream: Stream, env_id: u64, shared: Arc<Shared>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    shared.record(LogLine {
                        at_ms: unix_ms(),
                        stream,
                        env_id,
                        line: String::from_utf8_lossy(&buf).into_owned(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })
}

/// Join the readers that finish within `limit` (they end at EOF, once every process holding the
/// pipes is gone); a reader still blocked after that belongs to a process that escaped the
/// process tree and is left behind rather than hanging the test.
fn join_readers(readers: &mut Vec<JoinHandle<()>>, limit: Duration) {
    let until = Instant::now() + limit;
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
        thread::sleep(TICK);
    }
    for reader in std::mem::take(readers) {
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
}

// ---- processes -------------------------------------------------------------------------------

/// Whether `pid` is a live process (not a zombie): for tests that check nothing survives.
pub fn process_alive(pid: u32) -> bool {
    matches!(proc_stat(pid as i32), Some((state, _, _)) if state != 'Z' && state != 'X')
}

/// Whether `pid` is stopped (frozen).
pub fn process_stopped(pid: u32) -> bool {
    matches!(proc_stat(pid as i32), Some(('T', _, _)))
}

/// The exit status of our child `pid` if it has exited, leaving it a zombie (`WNOWAIT`).
fn exited(pid: i32) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    // SAFETY: `info` is plain data, zeroed as waitid(2) requires for WNOHANG; the call only
    // writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: as above.
    if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } != 0 {
        return None;
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed: pid 0 = no change).
    let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
    if child == 0 {
        return None;
    }
    // Back to a wait(2) status word: exit code in the second byte, or the signal number.
    Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
        libc::CLD_DUMPED => ExitStatus::from_raw(status | 0x80),
        _ => ExitStatus::from_raw(status),
    })
}

/// `(state, ppid, pgrp)` from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// The processes of `leader`'s tree: its process group and every descendant of any of them,
/// wherever it moved (a descendant in a new session or process group is still found, as long
/// as its parent is alive; an orphan that double-forked away is not).
fn process_tree(leader: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut todo = vec![leader];
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        if let Some((_, ppid, pgrp)) = proc_stat(pid) {
            children.entry(ppid).or_default().push(pid);
            if pgrp == leader {
                todo.push(pid);
            }
        }
    }
    let mut tree = BTreeSet::new();
    while let Some(pid) = todo.pop() {
        if tree.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    let me = std::process::id() as i32;
    tree.into_iter().filter(|&p| p > 1 && p != me).collect()
}

/// Send `signal` to `leader`'s process group and to every descendant outside it.
fn signal_tree(leader: i32, signal: i32) {
    if leader <= 1 {
        return; // never signal init or "every process" (-1)
    }
    // SAFETY: kill(2) has no memory-safety preconditions; the pids were checked above.
    unsafe { libc::kill(-leader, signal) };
    for pid in process_tree(leader) {
        // SAFETY: as above; `process_tree` excludes 0, 1 and this process.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Stop the tree and wait (bounded) until every member is stopped, stopping stragglers again
/// (a process forked just before the signal, or one busy in the kernel).
fn stop_tree(leader: i32, limit: Duration) {
    signal_tree(leader, libc::SIGSTOP);
    let until = Instant::now() + limit;
    loop {
        let running: Vec<i32> = process_tree(leader)
            .into_iter()
            .filter(|&pid| matches!(proc_stat(pid), Some((state, _, _)) if !matches!(state, 'T' | 't' | 'Z' | 'X')))
            .collect();
        if running.is_empty() || Instant::now() >= until {
            return;
        }
        for pid in running {
            // SAFETY: kill(2) has no memory-safety preconditions; `process_tree` excludes 0, 1
            // and this process.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Kill the whole tree: stop it (no new forks while we look), then SIGKILL every member (which
/// also ends stopped processes), then SIGCONT for good measure. Returns the members.
fn kill_tree(leader: i32) -> Vec<i32> {
    stop_tree(leader, Duration::from_millis(200));
    let tree = process_tree(leader);
    signal_tree(leader, libc::SIGKILL);
    signal_tree(leader, libc::SIGCONT);
    tree
}

/// Wait (bounded) until none of `pids` is alive; zombies count as dead (orphans are reaped by
/// init, whenever it gets to it).
fn wait_dead(pids: &[i32], limit: Duration) {
    let until = Instant::now() + limit;
    while pids.iter().any(|&pid| process_alive(pid as u32)) && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
}

// ---- small things ----------------------------------------------------------------------------

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A random UUID v4, as Lambda's request ids are.
fn new_request_id() -> String {
    let (a, b) = (random_u64(), random_u64());
    let hi = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// An X-Ray trace header, not sampled.
fn new_trace_id() -> String {
    format!(
        "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0",
        unix_ms() / 1000,
        ((random_u64() as u128) << 32 | random_u64() as u128) & ((1u128 << 96) - 1),
        random_u64()
    )
}

/// `YYYY/MM/DD/[$LATEST]<32 hex>`, like Lambda's log stream names.
fn log_stream_name() -> String {
    let days = (unix_ms() / 86_400_000) as i64;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}/{m:02}/{d:02}/[$LATEST]{:016x}{:016x}",
        random_u64(),
        random_u64()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

// ---- tests -----------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    //! The emulator's own checks, with a Lambda runtime written in bash (`/dev/tcp`), so they
    //! need no bootstrap binary. The real `lambda_runtime` client is exercised by the tests
    //! that run gitferry's bootstraps.

    use super::*;

    /// Answers `{"pid":PID,"child":CHILD}` (CHILD: a `sleep 600` it started at init), or
    /// `$RESPONSE` if set; an event containing "sleep" makes it sleep 30 s first.
    const BASH_RUNTIME: &str = r#"#!/bin/bash
host=${AWS_LAMBDA_RUNTIME_API%:*}
port=${AWS_LAMBDA_RUNTIME_API##*:}
api=/2018-06-01/runtime/invocation
sleep 600 &
child=$!
echo "pid=$$ child=$child"
while true; do
  exec 3<>"/dev/tcp/$host/$port" || exit 1
  printf 'GET %s/next HTTP/1.1\r\nHost: lambda\r\nConnection: close\r\n\r\n' "$api" >&3
  id= len=0
  while IFS= read -r line <&3; do
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case ${line,,} in
      lambda-runtime-aws-request-id:*) id=${line#*: } ;;
      content-length:*) len=${line#*: } ;;
    esac
  done
  body=
  [ "$len" -gt 0 ] && IFS= read -r -N "$len" body <&3
  exec 3<&-
  case $body in *sleep*) sleep 30 ;; esac
  out=${RESPONSE:-"{\"pid\":$$,\"child\":$child}"}
  exec 3<>"/dev/tcp/$host/$port" || exit 1
  printf 'POST %s/%s/response HTTP/1.1\r\nHost: lambda\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "$api" "$id" "${#out}" "$out" >&3
  cat <&3 >/dev/null
  exec 3<&-
done
"#;

    fn script(dir: &Path, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("bootstrap.sh");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn pids_of(response: &Value) -> [u32; 2] {
        ["pid", "child"].map(|k| response[k].as_u64().expect("pid in the response") as u32)
    }

    /// Processes are gone once killed, but a zombie may take a moment to be reaped.
    fn assert_gone(pids: &[u32]) {
        let until = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| process_alive(p)) && Instant::now() < until {
            thread::sleep(TICK);
        }
        for &pid in pids {
            assert!(!process_alive(pid), "process {pid} survived");
        }
    }

    #[test]
    fn warm_reuse_freezes_the_tree_and_drop_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        let function = Function::new(FunctionSpec::new("bash", script(dir.path(), BASH_RUNTIME), dir.path()));
        let first = function.invoke(json!({ "n": 1 }));
        assert!(first.cold_start);
        let pids = pids_of(first.expect_response());
        assert_eq!(function.pids(), vec![pids[0]]);
        for pid in pids {
            assert!(process_stopped(pid), "process {pid} is not frozen between invocations");
        }
        let second = function.invoke(json!({ "n": 2 }));
        assert!(!second.cold_start);
        assert_eq!(
            pids_of(second.expect_response()),
            pids,
            "the warm environment was not reused"
        );
        let stats = function.stats();
        assert_eq!((stats.invocations, stats.cold_starts), (2, 1));
        let root = function.root().to_owned();
        let log_path = function.log_path().to_owned();
        drop(function);
        assert_gone(&pids);
        assert!(!root.exists(), "the function's directory was left behind");
        let log = std::fs::read_to_string(log_path).unwrap();
        assert!(
            log.contains(&format!("bash#1 stdout pid={} child={}", pids[0], pids[1])),
            "{log}"
        );
        assert!(log.contains("platform REPORT RequestId"), "{log}");
    }

    #[test]
    fn timeout_kills_the_process_group_and_resets_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            FunctionSpec::new("bash", script(dir.path(), BASH_RUNTIME), dir.path()).timeout(Duration::from_millis(500));
        let function = Function::new(spec);
        let timed_out = function.invoke(json!("sleep"));
        assert!(matches!(timed_out.outcome, Outcome::Timeout), "{timed_out:?}");
        assert!(timed_out.duration >= Duration::from_millis(500));
        let started = function
            .logs()
            .into_iter()
            .find_map(|l| l.line.strip_prefix("pid=").map(str::to_owned))
            .expect("the runtime printed its pids");
        let pids: Vec<u32> = started.split(" child=").filter_map(|p| p.parse().ok()).collect();
        assert_eq!(pids.len(), 2, "{started}");
        assert_gone(&pids);
        assert!(function.pids().is_empty());
        let next = function.invoke(json!({}));
        assert!(
            next.cold_start,
            "the next invocation after a timeout must start a new process"
        );
        assert_eq!(next.env_id, timed_out.env_id, "the reset environment is reused");
        assert_eq!(function.stats().timeouts, 1);
    }

    #[test]
    fn a_bootstrap_that_exits_is_an_init_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FunctionSpec::new(
            "bash",
            script(dir.path(), "#!/bin/sh\necho starting\nexit 3\n"),
            dir.path(),
        );
        let function = Function::new(spec);
        let result = function.invoke(json!({}));
        match &result.outcome {
            Outcome::InitError(message) => assert!(message.contains("exit status: 3"), "{message}"),
            other => panic!("expected an init error, got {other:?}"),
        }
        assert!(function.pids().is_empty());
        assert_eq!(function.stats().init_errors, 1);
        assert!(
            function
                .logs()
                .iter()
                .any(|l| l.line == "starting" && l.stream == Stream::Stdout)
        );
    }

    #[test]
    fn init_error_posted_by_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"#!/bin/bash
body='{"errorType":"Custom.Init","errorMessage":"no configuration"}'
exec 3<>"/dev/tcp/${AWS_LAMBDA_RUNTIME_API%:*}/${AWS_LAMBDA_RUNTIME_API##*:}"
printf 'POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: lambda\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "${#body}" "$body" >&3
sleep 600
"#;
        let function = Function::new(FunctionSpec::new("bash", script(dir.path(), text), dir.path()));
        let result = function.invoke(json!({}));
        assert!(
            matches!(&result.outcome, Outcome::InitError(m) if m == "Custom.Init: no configuration"),
            "{result:?}"
        );
        assert!(function.pids().is_empty(), "the environment is discarded");
    }

    #[test]
    fn a_response_that_is_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FunctionSpec::new("bash", script(dir.path(), BASH_RUNTIME), dir.path()).env("RESPONSE", "SUCCESS");
        let function = Function::new(spec);
        let result = function.invoke(json!({}));
        assert!(
            matches!(&result.outcome, Outcome::NotJson(body) if body == "SUCCESS"),
            "{result:?}"
        );
        assert!(!function.invoke(json!({})).cold_start, "the environment stays warm");
    }

    #[test]
    fn request_ids_are_uuids_and_dates_are_civil() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_request_id());
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
