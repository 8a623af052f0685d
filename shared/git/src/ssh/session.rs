//! One SSH connection per transport, driving the remote git command's stdin and stdout.
//!
//! The engine is blocking (gix's blocking client, run in `spawn_blocking`); russh is async. Each
//! connection gets its own small tokio runtime with one worker thread, which keeps the session
//! alive (key re-exchange, keepalives, window adjustments) even while gix is busy between reads.
//! gix gets the channel as the blocking [`Read`]/[`Write`] pair of a spawned process
//! (`ConnectMode::Process`: no git-daemon header line); each read and write blocks on the
//! runtime for at most the I/O timeout, so a silent server fails the transfer as a transient
//! network error, as git:// does.
//!
//! What the remote command writes on stderr is kept (the first few KiB) and becomes the error
//! when the command ends without answering: `fatal: '…' does not appear to be a git repository`
//! reads as "not found", `Permission … denied` as an authentication error.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gix::protocol::transport::client::blocking_io::Transport;
use gix::protocol::transport::client::git::{ConnectMode, blocking_io::Connection};
use gix::protocol::transport::{Protocol, Service};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client};

use super::hostkeys::{HostKeys, Refusal};
use super::{DEFAULT_USER, SshOptions, remote_command};
use crate::Error;
use crate::remote::{Remote, scrub};
use crate::transport::Timeouts;

/// Key exchange, authentication and starting the command, together, at most this long (or the
/// caller's whole limit when it is shorter).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A keepalive when the server was silent this long; after [`KEEPALIVE_MAX`] unanswered ones
/// the connection is dead (NAT and load balancers drop idle flows during long pack writes).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 4;
/// How much of the command's stderr is kept for the error message.
const STDERR_LIMIT: usize = 4096;

/// Connect to the server of `remote` and start `service` for its repository.
pub(crate) fn open(
    remote: &Remote,
    url: &gix::Url,
    service: Service,
    version: Protocol,
    limits: Timeouts,
) -> Result<Box<dyn Transport + Send>, Error> {
    let target = Target::new(remote, url, service, limits)?;
    let runtime = Arc::new(Runtime::new().map_err(|e| Error::from_io(remote, "starting the SSH client", &e))?);
    let tcp = connect_tcp(remote, &target.host, target.port, limits.connect)?;
    let handshake = limits.total.unwrap_or(HANDSHAKE_TIMEOUT).min(HANDSHAKE_TIMEOUT);
    let (handle, channel) = runtime.block_on(async {
        match tokio::time::timeout(handshake, target.establish(tcp, version)).await {
            Ok(result) => result,
            Err(_) => Err(target.network(format!("the SSH handshake took longer than {handshake:?}"))),
        }
    })?;
    let (read, write) = channel.split();
    let session = Arc::new(Session {
        runtime,
        handle: Mutex::new(Some(handle)),
    });
    let reader = ChannelReader {
        session: session.clone(),
        half: read,
        pending: Vec::new(),
        at: 0,
        stderr: Vec::new(),
        exit: None,
        failed: None,
        timeout: limits.io,
    };
    let writer = ChannelWriter {
        session,
        half: Some(write),
        timeout: limits.io,
    };
    // Buffered: one channel message per pkt-line (gix writes each on its own) was one
    // `block_on` and one SSH packet per `want` or push command. Flushed before every read of
    // a response (gix, our pushes); the buffer is flushed before the EOF when dropped.
    let connection = Connection::new(
        reader,
        io::BufWriter::with_capacity(1 << 16, writer),
        version,
        url.path.clone(),
        None::<(String, Option<u16>)>,
        ConnectMode::Process,
        false,
    )
    .custom_url(Some(url.to_bstring()));
    Ok(Box::new(connection))
}

/// Where to connect and what to run there.
struct Target<'a> {
    remote: &'a Remote,
    host: String,
    port: u16,
    user: String,
    command: String,
    options: SshOptions,
}

impl<'a> Target<'a> {
    fn new(remote: &'a Remote, url: &gix::Url, service: Service, _limits: Timeouts) -> Result<Target<'a>, Error> {
        let command = remote_command(service.as_str(), &url.path).map_err(|reason| Error::InvalidUrl {
            url: remote.to_string(),
            reason,
        })?;
        Ok(Target {
            remote,
            host: url.host().unwrap_or_default().to_owned(),
            port: url.port.unwrap_or(22),
            user: url.user().filter(|u| !u.is_empty()).unwrap_or(DEFAULT_USER).to_owned(),
            command,
            options: remote.ssh_options().cloned().unwrap_or_default(),
        })
    }

    fn network(&self, message: String) -> Error {
        Error::Network {
            remote: self.remote.to_string(),
            message: scrub(&message, self.remote),
        }
    }

    /// Key exchange (the host key checked), authentication, a session channel running the
    /// command.
    async fn establish(
        &self,
        tcp: TcpStream,
        version: Protocol,
    ) -> Result<(client::Handle<Verifier>, russh::Channel<client::Msg>), Error> {
        let refusal = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            host: self.host.clone(),
            port: self.port,
            keys: self.options.host_keys.clone(),
            refusal: refusal.clone(),
        };
        let stream = tcp
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(tcp))
            .map_err(|e| Error::from_io(self.remote, "connect", &e))?;
        let connected = client::connect_stream(Arc::new(self.config()), stream, verifier).await;
        let mut handle = match connected {
            Ok(handle) => handle,
            Err(e) => {
                let refused = refusal.lock().unwrap_or_else(PoisonError::into_inner).take();
                return Err(match refused {
                    Some(refusal) => self.host_key_error(refusal),
                    None => self.protocol_error("SSH handshake", &e),
                });
            }
        };
        self.authenticate(&mut handle).await?;
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| self.protocol_error("opening an SSH session", &e))?;
        if version == Protocol::V2 {
            // Ignored by servers without `AcceptEnv GIT_PROTOCOL`: they answer v0. Only for v2,
            // as gix does for git:// and file://: asked for `version=1`, git answers with a
            // `version 1` line before the advertisement, which gix's handshake does not expect
            // (a receive-pack over SSH failed with "no 0 byte" in the capabilities).
            let value = format!("version={}", version as usize);
            channel
                .set_env(false, "GIT_PROTOCOL", value)
                .await
                .map_err(|e| self.protocol_error("sending GIT_PROTOCOL", &e))?;
        }
        channel
            .exec(true, self.command.as_str())
            .await
            .map_err(|e| self.protocol_error("starting the git command", &e))?;
        Ok((handle, channel))
    }

    fn config(&self) -> client::Config {
        let defaults = russh::Preferred::default();
        let key = self
            .options
            .host_keys
            .preferred_algorithms(&self.host, self.port, &defaults.key);
        client::Config {
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            preferred: russh::Preferred {
                key: key.into(),
                ..defaults
            },
            ..client::Config::default()
        }
    }

    async fn authenticate(&self, handle: &mut client::Handle<Verifier>) -> Result<(), Error> {
        let result = match &self.options.identity {
            Some(identity) => {
                let key = identity.key();
                let hash = match key.algorithm().is_rsa() {
                    // rsa-sha2-512 unless the server says it only has rsa-sha2-256.
                    true => Some(
                        handle
                            .best_supported_rsa_hash()
                            .await
                            .ok()
                            .flatten()
                            .flatten()
                            .unwrap_or(HashAlg::Sha512),
                    ),
                    false => None,
                };
                handle
                    .authenticate_publickey(self.user.as_str(), PrivateKeyWithHashAlg::new(key, hash))
                    .await
            }
            None => handle.authenticate_none(self.user.as_str()).await,
        };
        let result = result.map_err(|e| self.protocol_error("SSH authentication", &e))?;
        if result.success() {
            return Ok(());
        }
        let message = match &self.options.identity {
            Some(identity) => format!(
                "the server refused the key {} for user {:?}",
                identity.fingerprint(),
                self.user
            ),
            None => format!(
                "no SSH key configured (ssh_key_env, or --ssh-key) and the server wants one for user {:?}",
                self.user
            ),
        };
        Err(Error::Auth {
            remote: self.remote.to_string(),
            message,
        })
    }

    fn host_key_error(&self, refusal: Refusal) -> Error {
        Error::HostKey {
            remote: self.remote.to_string(),
            refusal,
        }
    }

    /// An SSH protocol failure: I/O and timeouts are transient; a server we cannot negotiate
    /// with will not change on a retry.
    fn protocol_error(&self, context: &str, e: &russh::Error) -> Error {
        use russh::Error as R;
        let message = format!("{context}: {}", crate::error::chain(e));
        match e {
            R::IO(io) => Error::from_io(self.remote, context, io),
            R::NoCommonAlgo { .. } | R::UnknownAlgo | R::Version | R::WrongServerSig => Error::Remote {
                remote: self.remote.to_string(),
                message: scrub(&message, self.remote),
                transient: false,
            },
            _ => self.network(message),
        }
    }
}

/// Resolve and connect with a time limit per address (like git://: every resolved address is
/// tried, not only the first).
fn connect_tcp(remote: &Remote, host: &str, port: u16, limit: Duration) -> Result<TcpStream, Error> {
    let io_err = |e: io::Error| Error::from_io(remote, "connect", &e);
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolved to no address");
    for addr in (host, port).to_socket_addrs().map_err(io_err)? {
        match TcpStream::connect_timeout(&addr, limit) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream)
                    .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)));
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(io_err(last))
}

/// Checks the server's key against the pins ([`HostKeys::verify`]); a refusal is kept for the
/// error message (russh itself only reports "unknown server key").
struct Verifier {
    host: String,
    port: u16,
    keys: HostKeys,
    refusal: Arc<Mutex<Option<Refusal>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, offered: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = match offered {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => {
                Err(HostKeys::certificate_refusal(&self.host, self.port))
            }
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(refusal) => {
                tracing::warn!(%refusal, "SSH host key refused");
                *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(refusal);
                Ok(false)
            }
        }
    }
}

impl Verifier {
    fn check(&self, key: &PublicKey) -> Result<(), Refusal> {
        self.keys.verify(&self.host, self.port, key)
    }
}

/// The runtime of one connection and its session handle, shared by the two halves; the last
/// one dropped says goodbye and stops the runtime.
struct Session {
    runtime: Arc<Runtime>,
    handle: Mutex<Option<client::Handle<Verifier>>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let handle = self.handle.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            let bye = handle.disconnect(russh::Disconnect::ByApplication, "", "en");
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_millis(200), bye).await });
        }
    }
}

/// A one-worker tokio runtime, stopped without waiting when dropped (the session task may be
/// blocked on a dead peer).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn new() -> io::Result<Runtime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gitferry-ssh")
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Runtime(Some(rt)))
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.as_ref().expect("present until dropped").block_on(future)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The command's stdout, as gix reads it.
struct ChannelReader {
    session: Arc<Session>,
    half: ChannelReadHalf,
    pending: Vec<u8>,
    at: usize,
    stderr: Vec<u8>,
    exit: Option<u32>,
    /// Once a read failed, every later one fails the same way.
    failed: Option<(io::ErrorKind, String)>,
    timeout: Duration,
}

/// What the channel said next.
enum Next {
    Data(Vec<u8>),
    /// The channel closed: the command ended (or the connection did).
    Closed,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        while self.at == self.pending.len() {
            match self.next() {
                Ok(Next::Data(data)) => {
                    self.pending = data;
                    self.at = 0;
                }
                Ok(Next::Closed) => return self.closed(),
                Err(e) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl ChannelReader {
    /// Wait (at most the I/O timeout) for the next data of the command's stdout, keeping its
    /// stderr and exit status on the way.
    fn next(&mut self) -> io::Result<Next> {
        let timeout = self.timeout;
        let (half, stderr, exit) = (&mut self.half, &mut self.stderr, &mut self.exit);
        let waited = self.session.runtime.block_on(async {
            tokio::time::timeout(timeout, async {
                loop {
                    match half.wait().await {
                        Some(ChannelMsg::Data { data }) => return Ok(Next::Data(data.to_vec())),
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            let room = STDERR_LIMIT.saturating_sub(stderr.len());
                            stderr.extend_from_slice(&data[..data.len().min(room)]);
                        }
                        Some(ChannelMsg::ExitStatus { exit_status }) => *exit = Some(exit_status),
                        Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                            stderr.extend_from_slice(format!("killed by signal {signal_name:?}").as_bytes());
                            *exit = Some(255);
                        }
                        Some(ChannelMsg::Failure) => {
                            return Err(io::Error::other("the SSH server refused to run the git command"));
                        }
                        Some(ChannelMsg::Close) | None => return Ok(Next::Closed),
                        Some(_) => {}
                    }
                }
            })
            .await
        });
        waited.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the SSH server sent nothing for {timeout:?}"),
            ))
        })
    }

    /// The end of stdout: fine when the command succeeded; otherwise an error that says why
    /// (its stderr), so that a missing repository or a refusal is not taken for a cut
    /// connection.
    fn closed(&mut self) -> io::Result<usize> {
        let stderr = String::from_utf8_lossy(&self.stderr).trim().to_owned();
        let error = match self.exit {
            Some(0) => return Ok(0),
            Some(code) => {
                let message = match stderr.is_empty() {
                    true => format!("the git command on the SSH server exited with {code}"),
                    false => format!("the SSH server said: {stderr}"),
                };
                io::Error::new(stderr_kind(&stderr), message)
            }
            None => io::Error::new(io::ErrorKind::UnexpectedEof, "the SSH connection closed mid-way"),
        };
        self.failed = Some((error.kind(), error.to_string()));
        Err(error)
    }
}

/// How a git server's complaint reads: refused (permanent, auth), missing (permanent), or
/// anything else (as a broken connection).
fn stderr_kind(stderr: &str) -> io::ErrorKind {
    let s = stderr.to_ascii_lowercase();
    if s.contains("denied") || s.contains("not allowed") || s.contains("permission") {
        io::ErrorKind::PermissionDenied
    } else if s.contains("not found") || s.contains("does not appear to be a git repository") || s.contains("no such") {
        io::ErrorKind::NotFound
    } else {
        io::ErrorKind::ConnectionAborted
    }
}

/// The command's stdin, as gix writes it. Dropping it sends EOF.
struct ChannelWriter {
    session: Arc<Session>,
    half: Option<ChannelWriteHalf<client::Msg>>,
    timeout: Duration,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(half) = &self.half else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let timeout = self.timeout;
        let sent = self
            .session
            .runtime
            .block_on(async { tokio::time::timeout(timeout, half.data(buf)).await });
        match sent {
            Ok(Ok(())) => Ok(buf.len()),
            Ok(Err(e)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("writing to the SSH channel: {e}"),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the SSH server accepted nothing for {timeout:?}"),
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        if let Some(half) = self.half.take() {
            let _ = self
                .session
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_millis(200), half.eof()).await });
        }
    }
}
