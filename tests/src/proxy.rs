//! A loopback TCP proxy that breaks connections on purpose: cut after N bytes in either
//! direction (a clean close, or a reset), stall, or slow every read. Put it in front of a git server to check that a
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
    /// Cut with a TCP reset (RST: `ECONNRESET` on the peers) instead of a clean close (FIN).
    pub reset: bool,
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
    let aborted = Arc::new(AtomicBool::new(false));
    let (up_plan, up_aborted) = (plan.clone(), aborted.clone());
    let up = thread::spawn(move || {
        let cut = up_plan.cut_upstream_after;
        pump(c2, s2, cut, &up_plan, None, &up_aborted)
    });
    pump(server, client, plan.cut_downstream_after, &plan, plan.stall, &aborted);
    let _ = up.join();
    // The last handles close here: with linger 0 after a reset cut, that close sends the RST.
}

/// Abort both connections: linger 0 makes the final close send RST instead of FIN, and
/// shutting down the read side (which sends nothing) wakes the other pump's read.
fn reset(a: &TcpStream, b: &TcpStream) {
    for s in [a, b] {
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        let _ = s.shutdown(Shutdown::Read);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    cut_after: Option<u64>,
    plan: &Plan,
    stall: Option<Duration>,
    aborted: &AtomicBool,
) {
    let delay = plan.delay_per_chunk;
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
            if plan.reset {
                aborted.store(true, Ordering::SeqCst);
                reset(&from, &to);
            } else {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
            }
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
    if !aborted.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that writes 1 MiB to whoever connects.
    fn chatty_server() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                thread::spawn(move || {
                    let _ = conn.write_all(&vec![7u8; 1 << 20]);
                });
            }
        });
        port
    }

    /// Read until the end; the bytes read and how it ended.
    fn read_all(port: u16) -> (usize, std::io::Result<()>) {
        let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return (total, Ok(())),
                Ok(n) => total += n,
                Err(e) => return (total, Err(e)),
            }
        }
    }

    #[test]
    fn cuts_close_cleanly_or_reset() {
        let proxy = FaultProxy::start(chatty_server());
        assert_eq!(read_all(proxy.port).0, 1 << 20, "no plan: everything passes");
        proxy.set(Plan {
            cut_downstream_after: Some(1000),
            ..Plan::default()
        });
        let (n, end) = read_all(proxy.port);
        assert_eq!(
            (n, end.is_ok()),
            (1000, true),
            "a clean cut: EOF after exactly 1000 bytes"
        );
        proxy.set(Plan {
            cut_downstream_after: Some(1000),
            reset: true,
            ..Plan::default()
        });
        let (n, end) = read_all(proxy.port);
        assert!(n <= 1000, "{n}");
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "a reset cut"
        );
    }
}
