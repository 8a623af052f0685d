//! dulwich, the pure-Python git server, on loopback (git://): a real server of a kind other than
//! git, speaking protocol v0 only, and advertising `symref=HEAD:refs/heads/master` for every new
//! repository although that branch does not exist yet.
//!
//! Needs Debian's python3-dulwich (`make deps` installs it) under /usr/bin/python3. Its
//! `dulwich daemon` command cannot serve in that version (it joins a str root with a bytes path),
//! so the server is started here with a small backend that does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::TempDir;

const PYTHON: &str = "/usr/bin/python3";

const SERVER: &str = r#"
import sys
from dulwich.server import TCPGitServer, FileSystemBackend
class Backend(FileSystemBackend):
    def open_repository(self, path):
        if isinstance(path, bytes):
            path = path.decode()
        return super().open_repository(path.lstrip("/"))
server = TCPGitServer(Backend(sys.argv[1]), "127.0.0.1", 0)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A dulwich git:// server over the repositories in its own temporary root.
pub struct Dulwich {
    child: Child,
    pub port: u16,
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
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dulwich did not start (is python3-dulwich installed? `make deps`): {line:?}");
        };
        Dulwich { child, port, dir }
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

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dulwich {
    fn drop(&mut self) {
        super::process::stop(&mut self.child);
    }
}
