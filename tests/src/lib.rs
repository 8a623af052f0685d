//! The end-to-end test harness: real git servers on loopback and fixture repositories.
//!
//! Everything gitferry does is checked against the git CLI, which is the independent reference
//! here (and only here: the product never runs git). A test typically:
//!
//! 1. starts [`Servers`] — a `git daemon` (git://, receive-pack enabled) and `git http-backend`
//!    behind a small loopback HTTP server ([`HttpBackend`], optional basic auth), both serving
//!    the bare repositories under one root directory, each on a free port;
//! 2. builds a source with [`Servers::create_bare`] + [`Worktree`] (commits, merges, branches,
//!    tags, a large-ish file — see [`Worktree::build_history`]);
//! 3. runs the engine and asserts with [`assert_refs_equal`] and [`assert_fsck_clean`].
//!
//! Servers are torn down when dropped. Git runs with an isolated environment (no user or system
//! config, fixed identities and dates) so fixtures are reproducible.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub mod alarms;
pub mod aws;
pub mod browser;
pub mod deliveries;
pub mod dulwich;
pub mod forge;
pub mod jgit;
pub mod lambda_rt;
pub mod leaks;
pub mod lfs;
pub mod moto;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod sshd;
pub mod v0proxy;

pub use leaks::TempDir;

/// A temporary directory checked for leaked secrets when dropped (see [`leaks`]).
pub fn tempdir() -> TempDir {
    TempDir::new("gitferry-test-")
}

/// Run each listed async test case once per store adapter, as `fs::case` and `s3::case`. The
/// calling test file defines `async fn fs_fixture()` and `async fn s3_fixture()` (a local
/// directory and a fresh moto bucket) returning what the cases take by reference.
#[macro_export]
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let f = super::fs_fixture().await;
                    super::$case(&f).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let f = super::s3_fixture().await;
                    super::$case(&f).await;
                }
            )*
        }
    };
}

/// Build a `git` command with an isolated, reproducible environment.
pub fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Fixture Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.invalid")
        .env("GIT_COMMITTER_NAME", "Fixture Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.invalid")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    cmd
}

/// Run git in `dir`, panic with its stderr on failure, return trimmed stdout.
pub fn git<I, S>(dir: &Path, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = git_cmd(dir).args(&args).output().expect("git runs");
    if !out.status.success() {
        panic!(
            "git {:?} in {} failed: {}\n{}",
            args,
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// All refs of a repository as `name -> object id` (tags not peeled), excluding `HEAD`.
pub fn refs(repo: &Path) -> BTreeMap<String, String> {
    refs_under(repo, &["refs/"])
}

/// Refs under the given prefixes (`git for-each-ref` patterns).
pub fn refs_under(repo: &Path, prefixes: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec!["for-each-ref", "--format=%(objectname) %(refname)"];
    args.extend_from_slice(prefixes);
    git(repo, args)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, name) = l.split_once(' ').expect("id and name");
            (name.to_owned(), id.to_owned())
        })
        .collect()
}

/// The refs a mirror carries by default: branches and tags.
pub fn mirrored_refs(repo: &Path) -> BTreeMap<String, String> {
    refs_under(repo, &["refs/heads/", "refs/tags/"])
}

/// Assert that the target has exactly the source's branches and tags, at the same ids.
#[track_caller]
pub fn assert_refs_equal(source: &Path, target: &Path) {
    let (s, t) = (mirrored_refs(source), mirrored_refs(target));
    if s != t {
        let only_s: Vec<_> = s.iter().filter(|(k, v)| t.get(*k) != Some(v)).collect();
        let only_t: Vec<_> = t.iter().filter(|(k, v)| s.get(*k) != Some(v)).collect();
        panic!(
            "refs differ\n  source {}: {:?}\n  target {}: {:?}",
            source.display(),
            only_s,
            target.display(),
            only_t
        );
    }
}

/// Assert `git fsck --full --strict` finds nothing wrong (no missing or corrupt objects).
#[track_caller]
pub fn assert_fsck_clean(repo: &Path) {
    let out = git_cmd(repo)
        .args(["fsck", "--full", "--strict", "--no-dangling"])
        .output()
        .expect("git fsck runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "git fsck of {} is not clean ({}):\n{stdout}\n{stderr}",
        repo.display(),
        out.status
    );
}

/// Count objects in a repository (loose + packed), as `git count-objects -v` sees them.
pub fn object_count(repo: &Path) -> u64 {
    let out = git(repo, ["count-objects", "-v"]);
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0)
    };
    field("count:") + field("in-pack:")
}

/// A port nobody listens on right now (bind to 0, read it back, release it).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind loopback")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) fn wait_for_port(port: u16, child: &mut Child, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("{what} exited early: {status}");
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 10s");
}

/// A `git daemon` serving every repository under a root directory, receive-pack enabled.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(root: &Path) -> GitDaemon {
        for _attempt in 0..5 {
            let port = free_port();
            let mut cmd = git_cmd(root);
            cmd.args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--informative-errors",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            let mut child = process::server(&mut cmd).spawn().expect("git daemon starts");
            if wait_for_port(port, &mut child, "git daemon") {
                return GitDaemon { child, port };
            }
        }
        panic!("git daemon could not start on a free port");
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // `git daemon` runs as a child of the `git` wrapper: the whole group goes.
        process::stop(&mut self.child);
    }
}

/// Credentials the HTTP server demands (HTTP basic auth), if any.
#[derive(Clone, Debug)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

/// `git http-backend` (CGI) behind a small loopback HTTP server.
///
/// Request bodies (including chunked ones) are streamed into the CGI process and its output is
/// streamed back, so large pushes and fetches are not buffered in the test process.
pub struct HttpBackend {
    server: Arc<tiny_http::Server>,
    thread: Option<thread::JoinHandle<()>>,
    pub port: u16,
    /// Requests answered, by status code class; lets tests assert e.g. that a 401 happened.
    pub requests: Arc<RequestLog>,
}

/// What the HTTP server saw, for assertions.
#[derive(Default)]
pub struct RequestLog {
    pub total: AtomicU64,
    pub unauthorized: AtomicU64,
    pub request_bytes: AtomicU64,
}

impl HttpBackend {
    pub fn start(root: &Path, auth: Option<BasicAuth>) -> HttpBackend {
        Self::start_with_lfs(root, auth, None)
    }

    /// As [`HttpBackend::start`], with `…/info/lfs/…` forwarded to the Git LFS server on the
    /// given port, counted in the given counters ([`lfs::LfsServers`]).
    pub fn start_with_lfs(
        root: &Path,
        auth: Option<BasicAuth>,
        lfs: Option<(u16, Arc<lfs::LfsCounts>)>,
    ) -> HttpBackend {
        if let Some(a) = &auth {
            leaks::credentials(&a.user, &a.password);
        }
        let server =
            Arc::new(tiny_http::Server::http(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind http server"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let requests = Arc::new(RequestLog::default());
        let (srv, root, log) = (server.clone(), root.to_owned(), requests.clone());
        let thread = thread::spawn(move || {
            for request in srv.incoming_requests() {
                let (root, auth, log, lfs) = (root.clone(), auth.clone(), log.clone(), lfs.clone());
                thread::spawn(move || match (&lfs, lfs::route(request.url())) {
                    (Some((lfs_port, counts)), Some(needs_auth)) => {
                        let auth = auth.as_ref().filter(|_| needs_auth);
                        if let Some(request) = authorized(request, auth, &log) {
                            lfs::proxy(request, *lfs_port, port, counts);
                        }
                    }
                    _ => serve_cgi(request, &root, auth.as_ref(), &log),
                });
            }
        });
        HttpBackend {
            server,
            thread: Some(thread),
            port,
            requests,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The URL with credentials in its userinfo, as a user might configure it.
    pub fn url_with_userinfo(&self, name: &str, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header<'a>(request: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn basic_auth_ok(request: &tiny_http::Request, auth: &BasicAuth) -> bool {
    let Some(value) = header(request, "Authorization") else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    base64_decode(encoded.trim()).as_deref() == Some(format!("{}:{}", auth.user, auth.password).as_bytes())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// The request, counted, if `auth` is none or the request carries it; otherwise answered 401.
fn authorized(request: tiny_http::Request, auth: Option<&BasicAuth>, log: &RequestLog) -> Option<tiny_http::Request> {
    log.total.fetch_add(1, Ordering::Relaxed);
    if let Some(auth) = auth
        && !basic_auth_ok(&request, auth)
    {
        log.unauthorized.fetch_add(1, Ordering::Relaxed);
        let header = tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"gitferry-test\"").unwrap();
        let _ = request.respond(
            tiny_http::Response::from_string("authentication required")
                .with_status_code(401)
                .with_header(header),
        );
        return None;
    }
    Some(request)
}

fn serve_cgi(request: tiny_http::Request, root: &Path, auth: Option<&BasicAuth>, log: &RequestLog) {
    let Some(mut request) = authorized(request, auth, log) else {
        return;
    };
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let mut cmd = git_cmd(root);
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", request.method().as_str())
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "127.0.0.1")
        // Anonymous pushes are refused by http-backend unless receive-pack is enabled.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(auth) = auth {
        cmd.env("REMOTE_USER", &auth.user);
    }
    for (cgi, http) in [
        ("CONTENT_TYPE", "Content-Type"),
        ("CONTENT_LENGTH", "Content-Length"),
        ("HTTP_CONTENT_ENCODING", "Content-Encoding"),
        ("GIT_PROTOCOL", "Git-Protocol"),
    ] {
        if let Some(v) = header(&request, http) {
            cmd.env(cgi, v);
        }
    }
    let mut child = process::server(&mut cmd).spawn().expect("git http-backend starts");
    let mut stdin = child.stdin.take().expect("stdin");
    // Stream the request body into the CGI process while we read its output.
    let body_len = {
        let reader = request.as_reader();
        let mut counted = 0u64;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    counted += n as u64;
                    if stdin.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        counted
    };
    drop(stdin);
    log.request_bytes.fetch_add(body_len, Ordering::Relaxed);

    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut status = 200u16;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("Status") {
                status = v.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            } else if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                headers.push(h);
            }
        }
    }
    let response = tiny_http::Response::new(status.into(), headers, out, None, None);
    let _ = request.respond(response);
    let _ = child.wait();
}

/// Which server a test talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    GitDaemon,
    Http,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::GitDaemon, Proto::Http];
}

/// A root directory of bare repositories served by both a git daemon and http-backend.
pub struct Servers {
    pub daemon: GitDaemon,
    pub http: HttpBackend,
    /// Kept last so the servers stop before the directory goes away.
    pub dir: TempDir,
}

impl Servers {
    pub fn start() -> Servers {
        Self::start_with_auth(None)
    }

    pub fn start_with_auth(auth: Option<BasicAuth>) -> Servers {
        leaks::capture_logs();
        let dir = TempDir::new("gitferry-srv-");
        let daemon = GitDaemon::start(dir.path());
        let http = HttpBackend::start(dir.path(), auth);
        Servers { daemon, http, dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the bare repository `name` (e.g. `"src.git"`) on the server side.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// Create an empty bare repository `name` on the server (default branch `main`).
    pub fn create_bare(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        git(
            self.root(),
            ["init", "--quiet", "--bare", "--initial-branch=main", name],
        );
        path
    }

    pub fn url(&self, proto: Proto, name: &str) -> String {
        match proto {
            Proto::GitDaemon => self.daemon.url(name),
            Proto::Http => self.http.url(name),
        }
    }
}

/// A server of bare repositories on disk, reachable over git:// and HTTP: git's own
/// ([`Servers`]), JGit ([`jgit::JGit`]) or dulwich ([`dulwich::Dulwich`]). Lets one scenario run
/// against each.
pub trait RepoServer {
    /// Create an empty bare repository `name` the way this server's users would.
    fn create_bare(&self, name: &str) -> PathBuf;
    /// Where the repository `name` is on disk.
    fn path(&self, name: &str) -> PathBuf;
    /// Its URL over `proto`.
    fn url(&self, proto: Proto, name: &str) -> String;
}

impl RepoServer for Servers {
    fn create_bare(&self, name: &str) -> PathBuf {
        Servers::create_bare(self, name)
    }

    fn path(&self, name: &str) -> PathBuf {
        Servers::path(self, name)
    }

    fn url(&self, proto: Proto, name: &str) -> String {
        Servers::url(self, proto, name)
    }
}

impl Servers {
    /// `n` sources `src{i}.git` with one commit each, `n` empty targets `dst{i}.git`, and a
    /// `mirrors.toml` mirroring repo `r{i}` from the first to the second by local path, driven
    /// by signed GitHub webhooks whose secret is in `$secret_env`. Returns the config text, the
    /// sources and their worktrees (to push more).
    pub fn webhook_repos(&self, n: usize, secret_env: &str) -> (String, Vec<PathBuf>, Vec<Worktree>) {
        let mut config = String::from("default_sync_policy = \"webhook_only\"\n");
        let (mut sources, mut worktrees) = (Vec::new(), Vec::new());
        for r in 0..n {
            let src = self.create_bare(&format!("src{r}.git"));
            self.create_bare(&format!("dst{r}.git"));
            let mut wt = Worktree::new(&src);
            wt.commit_file("f.txt", format!("repo {r}\n").as_bytes(), "init");
            wt.push_all();
            config.push_str(&format!(
                "[repos.r{r}]\nurl = \"{}\"\nwebhook = {{ provider = \"github\", secret_env = \"{secret_env}\" }}\n\
                 [[repos.r{r}.targets]]\nurl = \"{}\"\n",
                src.display(),
                self.path(&format!("dst{r}.git")).display()
            ));
            sources.push(src);
            worktrees.push(wt);
        }
        (config, sources, worktrees)
    }
}

/// Start `gitferry serve --config mirrors.toml --listen 127.0.0.1:PORT {args}` in `dir` on a
/// free port, with `env` added, stderr into `log` and stdout into `stdout` (or nowhere); wait up
/// to `startup` seconds until it answers `/healthz`. Returns the child and the base URL.
pub fn start_serve<S: AsRef<OsStr>>(
    dir: &Path,
    args: impl IntoIterator<Item = S>,
    env: &[(&str, &str)],
    (log, stdout): (&Path, Option<&Path>),
    startup: u64,
) -> (Child, String) {
    let port = free_port();
    let stdout = match stdout {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("stdout file")),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(gitferry_bin());
    process::server(&mut cmd);
    let child = cmd
        .args([
            "serve",
            "--config",
            "mirrors.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
        .spawn()
        .expect("gitferry serve starts");
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, startup, log);
    (child, base)
}

/// Wait until `GET {base}/healthz` answers (a freshly started `gitferry serve`), or panic with
/// `log`'s content after `secs`.
fn wait_healthy(base: &str, secs: u64, log: &Path) {
    let until = Instant::now() + Duration::from_secs(secs);
    let addr = base.trim_start_matches("http://");
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            Instant::now() < until,
            "the server at {base} did not come up: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// What `gitferry serve` logs (at `RUST_LOG=info`) say it took off the queue: for each request
/// (by deduplication id) when it was taken, Unix ms, once per take; and how many syncs were put
/// back for a retry.
pub fn requests_taken(logs: &[PathBuf]) -> (BTreeMap<String, Vec<u64>>, usize) {
    let mut taken: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut retries = 0;
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        for line in text.lines() {
            if line.contains("sync will be retried") {
                retries += 1;
            }
            if line.contains("request taken")
                && let Some(id) = line.split("request=").nth(1).and_then(|t| t.split_whitespace().next())
            {
                let at = line.split_whitespace().next().and_then(rfc3339_ms).unwrap_or(0);
                taken.entry(id.to_owned()).or_default().push(at);
            }
        }
    }
    for times in taken.values_mut() {
        times.sort();
    }
    (taken, retries)
}

/// `2026-11-25T16:21:13.295537Z` (a tracing timestamp) as Unix milliseconds.
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms).ok()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// A non-bare working repository used to author history and push it to a served bare repo.
pub struct Worktree {
    pub path: PathBuf,
    /// Test-authored content only: not checked for leaks.
    _dir: tempfile::TempDir,
    counter: u64,
}

impl Worktree {
    /// A new worktree whose `origin` is the bare repository at `remote`.
    pub fn new(remote: &Path) -> Worktree {
        let dir = tempfile::Builder::new()
            .prefix("gitferry-wt-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("wt");
        git(dir.path(), ["init", "--quiet", "--initial-branch=main", "wt"]);
        git(
            &path,
            ["remote", "add", "origin"]
                .map(String::from)
                .into_iter()
                .chain([remote.display().to_string()]),
        );
        Worktree {
            path,
            _dir: dir,
            counter: 0,
        }
    }

    pub fn git<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        git(&self.path, args)
    }

    /// Write `content` to `file` and commit it with a deterministic date; returns the commit id.
    pub fn commit_file(&mut self, file: &str, content: &[u8], message: &str) -> String {
        let p = self.path.join(file);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        self.git(["add", "--", file]);
        self.commit(message)
    }

    /// Commit what is staged (allowing empty commits) with a deterministic, increasing date.
    pub fn commit(&mut self, message: &str) -> String {
        self.counter += 1;
        let date = format!("{} +0000", 1_700_000_000 + self.counter * 60);
        let out = git_cmd(&self.path)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .args(["commit", "--quiet", "--allow-empty", "-m", message])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "commit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.git(["rev-parse", "HEAD"])
    }

    /// A small history with everything a mirror must carry: several branches, a merge commit,
    /// annotated and lightweight tags, nested directories and a large-ish (1.5 MiB,
    /// incompressible) file. Pushes all branches and tags to `origin`.
    pub fn build_history(&mut self) {
        self.commit_file("README.md", b"# fixture\n", "initial commit");
        for i in 0..5 {
            self.commit_file(
                &format!("src/mod{i}.rs"),
                format!("pub fn f{i}() -> u32 {{ {i} }}\n").as_bytes(),
                &format!("add mod{i}"),
            );
        }
        self.commit_file(
            "assets/blob.bin",
            &pseudo_random_bytes(1536 * 1024, 7),
            "add a large file",
        );
        self.git(["tag", "-a", "v1.0", "-m", "release 1.0"]);
        self.git(["checkout", "--quiet", "-b", "feature"]);
        for i in 0..3 {
            self.commit_file(
                "src/feature.rs",
                format!("// feature step {i}\n").as_bytes(),
                &format!("feature step {i}"),
            );
        }
        self.git(["checkout", "--quiet", "main"]);
        self.commit_file("CHANGELOG.md", b"- 1.1\n", "changelog");
        self.counter += 1;
        let date = format!("{} +0000", 1_700_000_000 + self.counter * 60);
        let out = git_cmd(&self.path)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .args(["merge", "--quiet", "--no-ff", "-m", "merge feature", "feature"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "merge failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.git(["tag", "light-1"]);
        self.git(["checkout", "--quiet", "-b", "release/1.x", "v1.0"]);
        self.commit_file("src/mod0.rs", b"pub fn f0() -> u32 { 100 }\n", "backport fix");
        self.git(["tag", "-a", "v1.0.1", "-m", "release 1.0.1"]);
        self.git(["checkout", "--quiet", "main"]);
        self.push_all();
    }

    /// On top of [`Worktree::build_history`]: the rarer objects a mirror must carry — annotated
    /// tags of a tree, of a blob and of another tag, a lightweight tag naming a blob, and a
    /// commit whose tree has a gitlink (a submodule entry: a commit id that is not in this
    /// repository). Pushes all branches and tags to `origin`.
    pub fn add_tag_kinds_and_gitlink(&mut self) {
        self.git(["tag", "-a", "tree-tag", "-m", "a tag of a tree", "HEAD^{tree}"]);
        self.git(["tag", "-a", "blob-tag", "-m", "a tag of a blob", "HEAD:README.md"]);
        self.git(["tag", "-a", "nested-tag", "-m", "a tag of a tag", "v1.0"]);
        self.git(["tag", "light-blob", "HEAD:README.md"]);
        self.git([
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,1234567890abcdef1234567890abcdef12345678,vendor/lib",
        ]);
        self.commit("add a submodule");
        self.push_all();
    }

    /// Push all branches and tags to origin, forcing, and prune what origin has beyond them.
    pub fn push_all(&self) {
        self.git([
            "push",
            "--quiet",
            "--force",
            "--prune",
            "origin",
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ]);
    }
}

/// Deterministic incompressible bytes (xorshift), so pack sizes are stable across runs.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Install an executable hook script into a bare repository.
pub fn install_hook(repo: &Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let hooks = repo.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let p = hooks.join(name);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The path of the `gitferry` binary built by cargo for this test run.
pub fn gitferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GITFERRY_BIN") {
        return PathBuf::from(p);
    }
    // tests/… binaries live in target/<profile>/deps; the CLI is in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    profile_dir.join("gitferry")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tracing_timestamps_parse_to_unix_ms() {
        assert_eq!(super::rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            super::rfc3339_ms("2026-11-25T16:21:13.295537Z"),
            Some(1_795_623_673_295)
        );
        assert_eq!(super::rfc3339_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(super::rfc3339_ms("not a time"), None);
    }
}
