//! A real S3 emulator for tests: moto's server (`moto_server`), from the project venv that
//! `make deps` creates (`.venv/`, moto pinned in the Makefile).
//!
//! Each [`MotoServer`] is its own process on a free loopback port, with its own empty state,
//! killed when dropped; it starts in about half a second, so tests simply start one each rather
//! than sharing one (a shared server would outlive the test binary, and tests would see each
//! other's objects). [`MotoServer::client`] gives an aws-sdk-s3 client for it with dummy
//! credentials and path-style addressing (`bucket.127.0.0.1` does not resolve), and
//! [`MotoServer::create_bucket`] a fresh, uniquely named bucket.
//!
//! moto is used rather than a hand-written fake because the point is to check the S3 adapter
//! against S3's behaviour (conditional writes answered 412, multipart uploads, pagination, error
//! codes), written by people who compared it with AWS.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// The dummy credentials the emulator accepts (it checks nothing).
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";
pub const REGION: &str = "us-east-1";

/// `<repo root>/.venv/bin/moto_server`.
pub fn moto_server_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    root.join(".venv").join("bin").join("moto_server")
}

/// A running `moto_server` on 127.0.0.1, killed on drop.
pub struct MotoServer {
    child: Child,
    port: u16,
    /// The server's output, shown if it fails to start.
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    /// Start a server and wait until it answers HTTP. Panics (asking for `make deps`) when the
    /// venv has no moto.
    pub fn start() -> MotoServer {
        super::leaks::capture_logs();
        let bin = moto_server_bin();
        if !bin.is_file() {
            panic!(
                "{} not found: run `make deps` (it creates .venv with the pinned moto[server])",
                bin.display()
            );
        }
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = super::free_port();
            let log = tempfile::Builder::new()
                .prefix("gitferry-moto-")
                .suffix(".log")
                .tempfile()
                .expect("moto log file");
            let mut cmd = Command::new(&bin);
            super::process::server(&mut cmd);
            let child = cmd
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("log"))
                .stderr(log.reopen().expect("log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut server = MotoServer { child, port, log };
            if server.wait_ready() {
                return server;
            }
            last_log = server.log_text();
            // Dropping kills it; try another port (it may have been taken meanwhile).
        }
        panic!("moto_server did not start; its last output:\n{last_log}");
    }

    /// Poll until an HTTP request gets an HTTP answer; false if the process died.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_status)) = self.child.try_wait() {
                return false;
            }
            if http_answers(self.port) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "moto_server did not answer on port {} within 30s; its output:\n{}",
            self.port,
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The SDK configuration for this server: dummy static credentials, `us-east-1`,
    /// path-style addressing. Tests may adjust it (e.g. retries) before building a client.
    pub fn config(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "moto"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
    }

    /// A client for this server.
    pub fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(self.config().build())
    }

    /// Create a new bucket with a unique name and return the name.
    pub async fn create_bucket(&self, client: &aws_sdk_s3::Client) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "gitferry-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating bucket {name}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
        name
    }

    /// An SQS client for this server (same credentials and region).
    pub fn sqs_client(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new(REGION))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "moto",
            ))
            .endpoint_url(self.endpoint())
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// Create a FIFO queue configured like the template's (per-group deduplication and
    /// throughput, explicit deduplication ids) and return its URL.
    pub async fn create_fifo_queue(&self, client: &aws_sdk_sqs::Client) -> String {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "gitferry-{}-{}.fifo",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        client
            .create_queue()
            .queue_name(&name)
            .attributes(A::FifoQueue, "true")
            .attributes(A::ContentBasedDeduplication, "false")
            .attributes(A::DeduplicationScope, "messageGroup")
            .attributes(A::FifoThroughputLimit, "perMessageGroupId")
            .attributes(A::VisibilityTimeout, "60")
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating queue {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
            .queue_url()
            .expect("queue url")
            .to_owned()
    }

    /// A client and a fresh bucket on this server.
    pub async fn client_with_bucket(&self) -> (aws_sdk_s3::Client, String) {
        let client = self.client();
        let bucket = self.create_bucket(&client).await;
        (client, bucket)
    }
}

impl MotoServer {
    /// Every object of every bucket (except packs), as (`bucket/key`, text): what gitferry
    /// stored, for the leak check. Plain HTTP: moto checks no signatures, and drop has no runtime.
    pub fn stored_texts(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(list) = http_get(self.port, "/") else {
            return out;
        };
        for bucket in xml_values(&list, "Name") {
            let mut token: Option<String> = None;
            loop {
                let mut path = format!("/{bucket}?list-type=2");
                if let Some(t) = &token {
                    path.push_str(&format!("&continuation-token={}", percent_encode(t)));
                }
                let Some(page) = http_get(self.port, &path) else { break };
                for key in xml_values(&page, "Key") {
                    if key.ends_with(".pack") || key.ends_with(".idx") {
                        continue;
                    }
                    let encoded: Vec<String> = key.split('/').map(percent_encode).collect();
                    if let Some(body) = http_get(self.port, &format!("/{bucket}/{}", encoded.join("/"))) {
                        out.push((format!("{bucket}/{key}"), body));
                    }
                }
                token = xml_values(&page, "NextContinuationToken").into_iter().next();
                if token.is_none() {
                    break;
                }
            }
        }
        out
    }
}

/// `GET path` with HTTP/1.0; the body as text when the answer is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.split(' ').nth(1).filter(|code| *code == "200")?;
    Some(body.to_owned())
}

/// The text of every `<tag>…</tag>` (XML entities of keys decoded).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v))
        .map(|v| {
            v.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

/// Every byte but `A-Za-z0-9-._~` as `%XX` (a URL path segment or query value).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Nothing gitferry stored may hold a secret (see `leaks`): read it all while the server
        // runs, stop the server, then check (a failed check must not leave moto running).
        let stored = if std::thread::panicking() {
            Vec::new()
        } else {
            self.stored_texts()
        };
        super::process::stop(&mut self.child);
        super::leaks::at_teardown(|| {
            for (what, text) in stored {
                super::leaks::check(&format!("s3://{what}"), &text);
            }
        });
    }
}

/// Does something answer `GET /` on the port with an HTTP status line?
fn http_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head[..got].starts_with(b"HTTP/")
}
