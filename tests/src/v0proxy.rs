//! A git:// proxy in front of `git daemon` that makes it look like an old or unusual server:
//! it asks the daemon for protocol v0 (whatever version the client wanted) and appends
//! capabilities to the first line of the ref advertisement — typically
//! `symref=HEAD:refs/heads/gone`, the dangling HEAD symref dulwich sends for every new
//! repository. Everything after that first line passes through untouched, so fetches and pushes
//! through it are real ones against git.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// See the module docs.
pub struct V0Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl V0Proxy {
    /// Proxy to a git daemon on `upstream_port`, adding `extra_capabilities` (space-separated)
    /// to every advertisement.
    pub fn start(upstream_port: u16, extra_capabilities: &str) -> V0Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, extra) = (stop.clone(), extra_capabilities.to_owned());
        thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let extra = extra.clone();
                        thread::spawn(move || {
                            let _ = relay(client, upstream_port, &extra);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        V0Proxy { port, stop }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for V0Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Read one pkt-line (length prefix included in the result); `None` for a flush or at EOF.
fn read_pkt(from: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len)?;
    let n = usize::from_str_radix(std::str::from_utf8(&len).unwrap_or("0"), 16).unwrap_or(0);
    if n < 4 {
        return Ok(None);
    }
    let mut data = vec![0u8; n - 4];
    from.read_exact(&mut data)?;
    Ok(Some(data))
}

fn write_pkt(to: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    to.write_all(format!("{:04x}", data.len() + 4).as_bytes())?;
    to.write_all(data)
}

fn relay(mut client: TcpStream, upstream_port: u16, extra: &str) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut server = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port))?;
    // `git-upload-pack /x.git\0host=h\0\0version=2\0`: drop the extra parameters (v0 then).
    let mut request = read_pkt(&mut client)?.unwrap_or_default();
    if let Some(i) = request.windows(2).position(|w| w == b"\0\0") {
        request.truncate(i + 1);
    }
    write_pkt(&mut server, &request)?;
    // The first advertisement line carries the capabilities behind a NUL.
    match read_pkt(&mut server)? {
        Some(mut first) => {
            let newline = first.last() == Some(&b'\n');
            if newline {
                first.pop();
            }
            if first.contains(&0) {
                first.push(b' ');
                first.extend_from_slice(extra.as_bytes());
            }
            if newline {
                first.push(b'\n');
            }
            write_pkt(&mut client, &first)?;
        }
        None => client.write_all(b"0000")?,
    }
    let (mut c2, mut s2) = (client.try_clone()?, server.try_clone()?);
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
