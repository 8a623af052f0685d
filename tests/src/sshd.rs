//! OpenSSH's `sshd` on loopback, for the SSH transport tests (Debian's openssh-server, installed
//! by `make deps`).
//!
//! Each [`Sshd`] has its own directory: host keys made by `ssh-keygen`, the `authorized_keys`
//! file, the config and sshd's log. It listens on 127.0.0.1 only, runs in its own process group
//! (stopped as a group, like every harness server: [`super::process`]), and passes the harness's
//! mark to the sessions it starts (`SetEnv`), so a git command it left running is caught by the
//! leftover check too.
//!
//! The user. The server side runs as root: the tests run as root here and in CI, and root is
//! the one account every such machine has (creating accounts from a test would change the
//! machine). git-shell is enforced with `ForceCommand git-shell -c "$SSH_ORIGINAL_COMMAND"`,
//! which is exactly how sshd starts a login shell for a command, so the server accepts what a
//! `git-shell` account accepts and nothing else (no shell, no other commands). `UsePAM no` and
//! `StrictModes no` let sshd read keys from a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{TempDir, free_port, leaks, process, wait_for_port};

const SSHD: &str = "/usr/sbin/sshd";
/// The account the tests log in as (see the module docs).
pub const USER: &str = "root";

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// `AcceptEnv GIT_PROTOCOL`: the client's request for protocol v2 reaches git.
    pub accept_git_protocol: bool,
    /// The command every session runs instead of git-shell (a stalled server: `cat >/dev/null`).
    pub force_command: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            accept_git_protocol: true,
            force_command: None,
        }
    }
}

/// A running sshd. Stopped when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// `SHA256:…` of its (ed25519) host key.
    pub host_fingerprint: String,
    /// Its host key as a known_hosts line for `[127.0.0.1]:port`.
    pub known_hosts_line: String,
    /// Kept last: the server stops before its directory goes.
    pub dir: TempDir,
}

/// Client key types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    Ecdsa,
    Rsa,
}

impl KeyKind {
    pub const ALL: [KeyKind; 3] = [KeyKind::Ed25519, KeyKind::Ecdsa, KeyKind::Rsa];

    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::Ed25519 => &["-t", "ed25519"],
            KeyKind::Ecdsa => &["-t", "ecdsa", "-b", "256"],
            KeyKind::Rsa => &["-t", "rsa", "-b", "2048"],
        }
    }
}

/// A client key made by `ssh-keygen`, registered as a test secret.
#[derive(Clone, Debug)]
pub struct ClientKey {
    pub kind: KeyKind,
    /// The private key file (allowed to hold the secret) and its PEM text.
    pub path: PathBuf,
    pub private: String,
    pub passphrase: Option<String>,
    /// The `authorized_keys` line.
    pub public: String,
}

/// Make a client key in `dir` (named after its kind), with `passphrase` if given.
pub fn keygen(dir: &Path, kind: KeyKind, passphrase: Option<&str>) -> ClientKey {
    let path = dir.join(format!(
        "id_{kind:?}{}",
        if passphrase.is_some() { "_protected" } else { "" }
    ));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-C", "gitferry-test"])
        .args(kind.keygen_args())
        .arg("-N")
        .arg(passphrase.unwrap_or(""))
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen runs (apt-get install openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let private = std::fs::read_to_string(&path).expect("private key");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    leaks::ssh_private_key(&private, &public);
    leaks::allow(&path);
    if let Some(p) = passphrase {
        leaks::secret(p);
    }
    ClientKey {
        kind,
        path,
        private,
        passphrase: passphrase.map(str::to_owned),
        public: public.trim().to_owned(),
    }
}

impl Sshd {
    pub fn start(options: &Options) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (make deps)"
        );
        // sshd insists on its privilege separation directory, which only its service creates.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let dir = TempDir::new("gitferry-sshd-");
        let host_key = dir.path().join("host_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "gitferry-test-host", "-f"])
            .arg(&host_key)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.path().join("authorized_keys"), "").unwrap();
        let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let public: Vec<&str> = public.split_whitespace().take(2).collect();
        let host_fingerprint = fingerprint_of(&host_key.with_extension("pub"));
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(&config, config_text(dir.path(), &host_key, port, options)).unwrap();
            let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
            let mut cmd = Command::new(SSHD);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            let mut child = process::server(&mut cmd).spawn().expect("sshd starts");
            if wait_for_port(port, &mut child, "sshd") {
                return Sshd {
                    child,
                    port,
                    known_hosts_line: format!("[127.0.0.1]:{port} {}", public.join(" ")),
                    host_fingerprint,
                    dir,
                };
            }
        }
        panic!(
            "sshd could not start: {}",
            std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
        );
    }

    /// Let `key` log in.
    pub fn authorize(&self, key: &ClientKey) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .unwrap();
        writeln!(f, "{}", key.public).unwrap();
    }

    /// `ssh://root@127.0.0.1:PORT/abs/path` of a repository on this machine.
    pub fn url(&self, repo: &Path) -> String {
        format!("ssh://{USER}@127.0.0.1:{}{}", self.port, repo.display())
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Packets git exchanged in the sessions so far (`GIT_TRACE_PACKET`).
    pub fn packet_trace(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("packets.trace")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        process::stop(&mut self.child);
    }
}

fn config_text(dir: &Path, host_key: &Path, port: u16, options: &Options) -> String {
    let command = options
        .force_command
        .clone()
        .unwrap_or_else(|| "git-shell -c \"$SSH_ORIGINAL_COMMAND\"".into());
    let accept = if options.accept_git_protocol {
        "AcceptEnv GIT_PROTOCOL"
    } else {
        "# no AcceptEnv: GIT_PROTOCOL is dropped"
    };
    format!(
        "ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nAuthorizedKeysFile {dir}/authorized_keys\n\
         PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowUsers {USER}\n\
         AllowTcpForwarding no\nX11Forwarding no\nPermitTTY no\n\
         ForceCommand {command}\n{accept}\n\
         SetEnv {mark}=1 GIT_TRACE_PACKET={dir}/packets.trace GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null\n\
         LogLevel VERBOSE\n",
        host_key = host_key.display(),
        dir = dir.display(),
        mark = process::MARK,
    )
}

/// `SHA256:…` of a public key file, as `ssh-keygen -lf` prints it.
pub fn fingerprint_of(public_key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_key)
        .output()
        .expect("ssh-keygen -lf");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
        .to_owned()
}
