//! A loopback TCP proxy that breaks connections on purpose: cut after N bytes in either
//! direction, stall, or slow every read. Put it in front of a git server to check that a
//! transfer interrupted at any point leaves no corrupt repository and a retry converges.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What to do to the next connections.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Close both sides after this many bytes client → server.
    pub cut_upstream_after: Option<u64>,
    /// Close both sides after this many bytes server → client.
    pub cut_downstream_after: Option<u64>,
    /// Sleep this long before forwarding anything server → client (a stalled server).
    pub stall: Option<Duration>,
    /// Sleep this long after every chunk (a slow link).
    pub delay_per_chunk: Option<Duration>,
}

/// See the module docs.
pub struct FaultProxy {
    pub port: u16,
    plan: Arc<Mutex<Plan>>,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let (p, s, c) = (plan.clone(), stop.clone(), connections.clone());
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        c.fetch_add(1, Ordering::SeqCst);
                        let plan = p.lock().unwrap().clone();
                        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
                        thread::spawn(move || proxy(client, upstream, plan));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            port,
            plan,
            stop,
            connections,
        }
    }

    /// Apply `plan` to connections accepted from now on.
    pub fn set(&self, plan: Plan) {
        *self.plan.lock().unwrap() = plan;
    }

    pub fn clear(&self) {
        self.set(Plan::default());
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn proxy(client: TcpStream, upstream: SocketAddr, plan: Plan) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up_plan = plan.clone();
    let up = thread::spawn(move || pump(c2, s2, up_plan.cut_upstream_after, None, up_plan.delay_per_chunk));
    pump(
        server,
        client,
        plan.cut_downstream_after,
        plan.stall,
        plan.delay_per_chunk,
    );
    let _ = up.join();
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    cut_after: Option<u64>,
    stall: Option<Duration>,
    delay: Option<Duration>,
) {
    if let Some(s) = stall {
        thread::sleep(s);
    }
    let mut total = 0u64;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n = n;
        if let Some(limit) = cut_after
            && total + n as u64 >= limit
        {
            n = (limit - total) as usize;
            let _ = to.write_all(&buf[..n]);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        if let Some(d) = delay {
            thread::sleep(d);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
