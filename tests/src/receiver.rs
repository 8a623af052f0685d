//! A loopback HTTP server that records what is POSTed to it: the receiving end of Slack and
//! generic notification webhooks in tests. It can also be told to fail (answer 500) to check
//! that a broken receiver never fails a sync.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// See the module docs.
pub struct Receiver {
    server: Arc<tiny_http::Server>,
    thread: Option<thread::JoinHandle<()>>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    status: Arc<AtomicU16>,
    pub port: u16,
}

impl Receiver {
    pub fn start() -> Receiver {
        super::leaks::capture_logs();
        let server = Arc::new(tiny_http::Server::http(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (srv, b, st) = (server.clone(), bodies.clone(), status.clone());
        let thread = thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
                b.lock().unwrap().push(value);
                let code = st.load(Ordering::SeqCst);
                let _ = request.respond(tiny_http::Response::from_string("ok").with_status_code(code));
            }
        });
        Receiver {
            server,
            thread: Some(thread),
            bodies,
            status,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answer every following request with this status code.
    pub fn respond_with(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Received bodies whose `event` field equals `event`.
    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.bodies().into_iter().filter(|b| b["event"] == event).collect()
    }

    /// Wait until at least `n` bodies arrived (or the timeout passes); returns them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let until = Instant::now() + timeout;
        while Instant::now() < until && self.bodies.lock().unwrap().len() < n {
            thread::sleep(Duration::from_millis(10));
        }
        self.bodies()
    }

    pub fn clear(&self) {
        self.bodies.lock().unwrap().clear();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // No notification may carry a secret (see `leaks`).
        super::leaks::at_teardown(|| {
            for body in self.bodies() {
                super::leaks::check("a notification", &body.to_string());
            }
        });
    }
}
