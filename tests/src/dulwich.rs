//! dulwich, the pure-Python git server, on loopback, git:// and smart HTTP: a real server of a
//! kind other than git, speaking protocol v0 only, and advertising
//! `symref=HEAD:refs/heads/master` for every new repository although that branch does not exist
//! yet.
//!
//! Needs Debian's python3-dulwich (`make deps` installs it) under /usr/bin/python3. Its
//! `dulwich daemon` command cannot serve in that version (it joins a str root with a bytes path),
//! so the git:// server is started here with a small backend that does. HTTP is what `dulwich
//! web-daemon` runs (dulwich's WSGI application on wsgiref), in the same process on a free port;
//! its URLs carry the repository's absolute path.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{Proto, RepoServer, TempDir};

const PYTHON: &str = "/usr/bin/python3";

const SERVER: &str = r#"
import sys, threading
from dulwich.server import TCPGitServer, FileSystemBackend
from dulwich.web import make_server, make_wsgi_chain, WSGIRequestHandlerLogger, WSGIServerLogger
class Backend(FileSystemBackend):
    def open_repository(self, path):
        if isinstance(path, bytes):
            path = path.decode()
        return super().open_repository(path.lstrip("/"))
server = TCPGitServer(Backend(sys.argv[1]), "127.0.0.1", 0)
# As `dulwich web-daemon ROOT` serves it.
http = make_server("127.0.0.1", 0, make_wsgi_chain(FileSystemBackend(sys.argv[1])),
                   handler_class=WSGIRequestHandlerLogger, server_class=WSGIServerLogger)
threading.Thread(target=http.serve_forever, daemon=True).start()
print(server.server_address[1], http.server_address[1], flush=True)
server.serve_forever()
"#;

/// A dulwich git:// and HTTP server over the repositories in its own temporary root.
pub struct Dulwich {
    child: Child,
    /// git://
    pub port: u16,
    pub http_port: u16,
    /// Kept last so the server stops before the directory goes away.
    pub dir: TempDir,
}

impl Dulwich {
    pub fn start() -> Dulwich {
        let dir = TempDir::new("gitferry-dulwich-");
        let mut cmd = Command::new(PYTHON);
        super::process::server(&mut cmd);
        let mut child = cmd
            .args(["-c", SERVER])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{PYTHON} does not run ({e}): `make deps` installs python3-dulwich"));
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let ports: Vec<u16> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        let [port, http_port] = ports[..] else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dulwich did not start (is python3-dulwich installed? `make deps`): {line:?}");
        };
        Dulwich {
            child,
            port,
            http_port,
            dir,
        }
    }

    /// A new, empty bare repository as dulwich creates it (HEAD → refs/heads/master, unborn).
    pub fn create_bare(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let out = Command::new(PYTHON)
            .args([
                "-c",
                "import sys; from dulwich.repo import Repo; Repo.init_bare(sys.argv[1], mkdir=True)",
            ])
            .arg(&path)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "dulwich init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The git:// URL of `name`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// The HTTP URL of `name`: its absolute path on the server's host.
    pub fn http_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http_port, self.path(name).display())
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl RepoServer for Dulwich {
    fn create_bare(&self, name: &str) -> PathBuf {
        Dulwich::create_bare(self, name)
    }

    fn path(&self, name: &str) -> PathBuf {
        Dulwich::path(self, name)
    }

    fn url(&self, proto: Proto, name: &str) -> String {
        match proto {
            Proto::GitDaemon => Dulwich::url(self, name),
            Proto::Http => self.http_url(name),
        }
    }
}

impl Drop for Dulwich {
    fn drop(&mut self) {
        super::process::stop(&mut self.child);
    }
}
