//! A real Git LFS server for the LFS tests: giftless (PyPI; `make deps` installs it into
//! `.venv/` with waitress as its WSGI server), with its local storage backend, behind the same
//! loopback HTTP front that serves git (`git http-backend`).
//!
//! Why one front for both: git-lfs and gitferry find a remote's LFS server by deriving it from
//! the git URL (`http://host/org/app.git` → `http://host/org/app.git/info/lfs`), as every forge
//! serves it. So [`LfsServers`] routes `…/info/lfs/…` to giftless (whose routes are exactly
//! `<org>/<repo>.git/info/lfs/…`) and everything else to `git http-backend`; the git URL alone
//! is then all a client needs, for sources and targets alike. Repositories live one directory
//! down (`org/app.git`) because giftless wants an organisation in the path.
//!
//! The front counts what passes (batch calls, object downloads and uploads: [`LfsCounts`]) so
//! tests can prove that an object was not downloaded or uploaded again. With credentials, the
//! front demands them for git and for the batch API; object transfers use the bearer tokens
//! giftless puts into each action (like a forge's pre-signed URLs), and every such token the
//! front sees is registered as a secret for the leak check.
//!
//! giftless runs in its own process group, marked like every harness server, and is killed with
//! its group when [`Giftless`] is dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{BasicAuth, HttpBackend, TempDir, git, leaks, process};

/// The key giftless signs its action tokens with (a test value; registered as a secret).
const JWT_KEY: &str = "giftless-test-signing-key-7f3a";

/// `<repo root>/.venv/bin/waitress-serve`.
pub fn waitress_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    root.join(".venv").join("bin").join("waitress-serve")
}

/// What crossed the front's LFS routes.
#[derive(Default, Debug)]
pub struct LfsCounts {
    /// `POST …/objects/batch`.
    pub batches: AtomicU64,
    /// Object downloads (`GET …/objects/storage/{oid}`).
    pub downloads: AtomicU64,
    /// Object uploads (`PUT …/objects/storage/{oid}`).
    pub uploads: AtomicU64,
    /// Verify callbacks (`POST …/objects/storage/verify`).
    pub verifies: AtomicU64,
    /// Answer this many of the next batch calls `429 Too Many Requests`, `Retry-After: 1`.
    pub throttle_batches: AtomicU64,
    /// Batch calls answered 429.
    pub throttled: AtomicU64,
}

impl LfsCounts {
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.downloads.load(Ordering::Relaxed),
            self.uploads.load(Ordering::Relaxed),
        )
    }
}

/// giftless under waitress on a free loopback port, storing objects in its own directory.
pub struct Giftless {
    child: Child,
    pub port: u16,
    /// Kept last so the server stops before the directory goes away.
    pub dir: TempDir,
}

impl Giftless {
    /// Start giftless, anonymous read-write, and wait until it listens.
    pub fn start() -> Giftless {
        let bin = waitress_bin();
        assert!(
            bin.is_file(),
            "{} not found: run `make deps` (it installs giftless and waitress into .venv)",
            bin.display()
        );
        leaks::secret(JWT_KEY);
        let dir = TempDir::new("gitferry-giftless-");
        let config = dir.path().join("giftless.yaml");
        std::fs::write(&config, config_yaml(&dir.path().join("storage"))).expect("giftless config");
        leaks::allow(&config);
        for _attempt in 0..5 {
            let port = crate::free_port();
            let mut cmd = Command::new(&bin);
            process::server(&mut cmd);
            cmd.args(["--host=127.0.0.1", &format!("--port={port}"), "--threads=8"])
                .arg("giftless.wsgi_entrypoint:app")
                .current_dir(dir.path())
                .env("GIFTLESS_CONFIG_FILE", &config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            if crate::wait_for_port(port, &mut child, "giftless") {
                return Giftless { child, port, dir };
            }
            process::stop(&mut child);
        }
        panic!("giftless could not start on a free port");
    }

    /// Where giftless keeps the object `oid` of `org/repo` (its local storage layout).
    pub fn object_path(&self, org: &str, repo: &str, oid: &str) -> PathBuf {
        self.dir.path().join("storage").join(org).join(repo).join(oid)
    }
}

impl Giftless {
    /// The process id of the server (its process group's leader).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Giftless {
    fn drop(&mut self) {
        process::stop(&mut self.child);
    }
}

fn config_yaml(storage: &Path) -> String {
    format!(
        "AUTH_PROVIDERS:\n  - giftless.auth.allow_anon:read_write\nLEGACY_ENDPOINTS: false\n\
         TRANSFER_ADAPTERS:\n  basic:\n    factory: giftless.transfer.basic_streaming:factory\n    \
         options:\n      storage_class: giftless.storage.local_storage:LocalStorage\n      \
         storage_options:\n        path: {}\n\
         PRE_AUTHORIZED_ACTION_PROVIDER:\n  factory: giftless.auth.jwt:factory\n  options:\n    \
         algorithm: HS256\n    private_key: {JWT_KEY}\n    default_lifetime: 300\n",
        storage.display()
    )
}

/// Git (`git http-backend`) and Git LFS (giftless) on one loopback HTTP front.
pub struct LfsServers {
    pub http: HttpBackend,
    pub giftless: Giftless,
    pub counts: Arc<LfsCounts>,
    /// Kept last so the servers stop before the directory goes away.
    pub dir: TempDir,
}

impl LfsServers {
    pub fn start() -> LfsServers {
        Self::start_with_auth(None)
    }

    /// As [`LfsServers::start`], demanding `auth` for git and the batch API.
    pub fn start_with_auth(auth: Option<BasicAuth>) -> LfsServers {
        let dir = TempDir::new("gitferry-lfs-srv-");
        let giftless = Giftless::start();
        let counts = Arc::new(LfsCounts::default());
        let http = HttpBackend::start_with_lfs(dir.path(), auth, Some((giftless.port, counts.clone())));
        LfsServers {
            http,
            giftless,
            counts,
            dir,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the bare repository `name` (`"org/app.git"`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// Create an empty bare repository `name` (`"org/app.git"`; default branch `main`).
    pub fn create_bare(&self, name: &str) -> PathBuf {
        git(
            self.root(),
            ["init", "--quiet", "--bare", "--initial-branch=main", name],
        );
        self.path(name)
    }

    /// The git URL of `name`; its LFS endpoint is `{url}/info/lfs`.
    pub fn url(&self, name: &str) -> String {
        self.http.url(name)
    }

    /// Whether giftless holds `oid` for the repository `name` (`"org/app.git"`).
    pub fn has_object(&self, name: &str, oid: &str) -> bool {
        let (org, repo) = name.rsplit_once('/').expect("org/repo.git");
        let repo = repo.trim_end_matches(".git");
        self.giftless.object_path(org, repo, oid).is_file()
    }

    /// Remove `oid` from the repository `name` on the server (a missing object).
    pub fn remove_object(&self, name: &str, oid: &str) {
        let (org, repo) = name.rsplit_once('/').expect("org/repo.git");
        let path = self.giftless.object_path(org, repo.trim_end_matches(".git"), oid);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
    }
}

/// Whether the front serves `path` from the LFS server, and whether it needs the front's
/// credentials (the batch API does; object transfers carry giftless's own tokens).
pub(crate) fn route(path: &str) -> Option<bool> {
    let at = path.find("/info/lfs/")?;
    Some(!path[at..].starts_with("/info/lfs/objects/storage/"))
}

/// Forward `request` to giftless on `port`, the response streamed back unchanged. The `Host`
/// header is the client's, so the action URLs giftless writes lead back the same way.
pub(crate) fn proxy(mut request: tiny_http::Request, port: u16, front_port: u16, counts: &LfsCounts) {
    count(&request, counts);
    let throttle = request.url().ends_with("/objects/batch")
        && counts
            .throttle_batches
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
    if throttle {
        counts.throttled.fetch_add(1, Ordering::Relaxed);
        let retry = tiny_http::Header::from_bytes("Retry-After", "1").expect("valid header");
        let _ = request.respond(
            tiny_http::Response::from_string("slow down")
                .with_status_code(429)
                .with_header(retry),
        );
        return;
    }
    for h in request.headers() {
        if h.field.equiv("Authorization") && h.value.as_str().starts_with("Bearer ") {
            leaks::secret(h.value.as_str().trim_start_matches("Bearer "));
        }
    }
    let Ok(mut upstream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        let _ = request.respond(tiny_http::Response::from_string("LFS server down").with_status_code(502));
        return;
    };
    let mut body = Vec::new();
    let length = request.body_length();
    if length.is_none() {
        // Without a length (chunked), buffer it: the test bodies that come this way are small.
        let _ = request.as_reader().read_to_end(&mut body);
    }
    // The client's `Host` (the front, or a fault proxy in front of it): the action URLs
    // giftless writes lead back the way the client came.
    let host = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_owned())
        .unwrap_or_else(|| format!("127.0.0.1:{front_port}"));
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method(),
        request.url(),
        length.unwrap_or(body.len())
    );
    for h in request.headers() {
        let name = h.field.as_str().as_str();
        if ["Content-Type", "Accept", "Authorization"]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            head.push_str(&format!("{name}: {}\r\n", h.value.as_str()));
        }
    }
    head.push_str("\r\n");
    let sent = upstream.write_all(head.as_bytes()).is_ok()
        && match length {
            Some(_) => std::io::copy(request.as_reader(), &mut upstream).is_ok(),
            None => upstream.write_all(&body).is_ok(),
        };
    if !sent {
        return;
    }
    respond_from(request, BufReader::new(upstream));
}

/// Answer `request` with the HTTP response `upstream` sends. The request to it was HTTP/1.0, so
/// a streamed body comes unchunked and ends when waitress closes; it is passed on chunked, and
/// the client's connection stays usable.
fn respond_from(request: tiny_http::Request, mut upstream: BufReader<TcpStream>) {
    let mut line = String::new();
    let _ = upstream.read_line(&mut line);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(502);
    let (mut headers, mut length) = (Vec::new(), None);
    loop {
        line.clear();
        if upstream.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
            break;
        }
        let Some((k, v)) = line.trim_end().split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("Content-Length") {
            length = v.parse().ok();
        } else if !["Connection", "Transfer-Encoding"]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(k))
            && let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes())
        {
            headers.push(h);
        }
    }
    let _ = request.respond(tiny_http::Response::new(status.into(), headers, upstream, length, None));
}

fn count(request: &tiny_http::Request, counts: &LfsCounts) {
    let url = request.url();
    let counter = match request.method() {
        tiny_http::Method::Post if url.ends_with("/objects/batch") => &counts.batches,
        tiny_http::Method::Post if url.ends_with("/objects/storage/verify") => &counts.verifies,
        tiny_http::Method::Get if url.contains("/objects/storage/") => &counts.downloads,
        tiny_http::Method::Put if url.contains("/objects/storage/") => &counts.uploads,
        _ => return,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A work tree whose files matching `*.bin` are LFS objects, pushed with the real git-lfs client
/// (its pre-push hook uploads the objects to `{remote}/info/lfs`).
pub fn lfs_worktree(remote_url: &str) -> crate::Worktree {
    let wt = crate::Worktree::new(Path::new(remote_url));
    wt.git(["lfs", "install", "--local"]);
    wt.git(["lfs", "track", "*.bin"]);
    wt.git(["add", ".gitattributes"]);
    wt.git(["commit", "--quiet", "-m", "track *.bin with LFS"]);
    wt
}

/// Write `content` to `file` in `wt`, commit it, return the object's oid (its SHA-256, hex).
pub fn commit_lfs_file(wt: &mut crate::Worktree, file: &str, content: &[u8]) -> String {
    wt.commit_file(file, content, &format!("add {file}"));
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(content))
}

/// Run `git {args}` in `dir` and return whether it succeeded, with its output.
pub fn git_ok(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = crate::git_cmd(dir).args(args).output().expect("git runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Clone `url` with git-lfs (smudging every LFS file), into `dir/name`; returns the work tree.
pub fn lfs_clone(url: &str, dir: &Path, name: &str) -> PathBuf {
    git(
        dir,
        [
            "-c",
            "filter.lfs.process=git-lfs filter-process",
            "-c",
            "filter.lfs.required=true",
            "-c",
            "filter.lfs.smudge=git-lfs smudge -- %f",
            "-c",
            "filter.lfs.clean=git-lfs clean -- %f",
            "clone",
            "--quiet",
            url,
            name,
        ],
    );
    dir.join(name)
}
