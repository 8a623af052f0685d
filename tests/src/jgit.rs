//! JGit, the Java git implementation behind Gerrit, on loopback: `jgit daemon` for git:// and
//! JGit's `GitServlet` on Jetty for smart HTTP ([`jgit_http.java`](./jgit_http.java)), both
//! serving the bare repositories of one temporary root, receive-pack enabled.
//!
//! Needs Debian's jgit-cli, libjetty9-java, libservlet-api-java and a JDK (the HTTP server runs
//! through Java's source-file launcher); `make deps` installs them. Debian's `jgit` does not start
//! as shipped (`NoClassDefFoundError: org/eclipse/jgit/lfs/BuiltinLFS`): the jars on
//! [`JGIT_CLASSPATH`] complete it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::{Proto, RepoServer, TempDir, git};

const JARS: &str = "/usr/share/java";

/// What Debian's `jgit` script lacks to start (see the module docs).
pub const JGIT_CLASSPATH: [&str; 6] = [
    "org.eclipse.jgit.lfs.jar",
    "org.eclipse.jgit.http.apache.jar",
    "httpclient.jar",
    "httpcore.jar",
    "commons-logging.jar",
    "slf4j-nop.jar",
];

/// The HTTP server's classpath: JGit, its servlet, Jetty 9, the servlet API, quiet logging.
const HTTP_CLASSPATH: [&str; 11] = [
    "org.eclipse.jgit.jar",
    "org.eclipse.jgit.http.server.jar",
    "jetty9-server.jar",
    "jetty9-servlet.jar",
    "jetty9-security.jar",
    "jetty9-http.jar",
    "jetty9-io.jar",
    "jetty9-util.jar",
    "servlet-api.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
];

fn classpath(jars: &[&str]) -> String {
    let paths: Vec<String> = jars.iter().map(|j| format!("{JARS}/{j}")).collect();
    if let Some(missing) = paths.iter().find(|p| !Path::new(p).is_file()) {
        panic!("{missing} is missing: `make deps` installs JGit (jgit-cli, libjetty9-java, libservlet-api-java)");
    }
    paths.join(":")
}

/// `jgit daemon` (git://) and JGit's smart HTTP servlet over one root of bare repositories.
pub struct JGit {
    daemon: Child,
    http: Child,
    pub git_port: u16,
    pub http_port: u16,
    /// Kept last so the servers stop before the directory goes away.
    dir: TempDir,
}

/// Read `child`'s stdout until `parse` finds the port in a line; panic with its stderr (in
/// `log`) if it ends first.
fn port_from(stdout: ChildStdout, what: &str, log: &Path, parse: impl Fn(&str) -> Option<u16>) -> u16 {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(port) = parse(&line) {
                    // Keep draining stdout so the server never blocks on a full pipe.
                    std::thread::spawn(move || lines.for_each(drop));
                    return port;
                }
            }
            _ => panic!(
                "{what} did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

impl JGit {
    pub fn start() -> JGit {
        let dir = TempDir::new("gitferry-jgit-");
        let root = dir.path().join("repos");
        std::fs::create_dir_all(&root).unwrap();
        let spawn = |cmd: &mut Command, log: &str| -> Child {
            let log = std::fs::File::create(dir.path().join(log)).unwrap();
            // A short-lived test server: start fast, stay small.
            cmd.env("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss512k")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("{cmd:?} does not run ({e}): `make deps` installs JGit"))
        };
        let mut daemon = spawn(
            Command::new("jgit")
                .env("JGIT_CLASSPATH", classpath(&JGIT_CLASSPATH))
                .args([
                    "daemon",
                    "--export-all",
                    "--enable",
                    "receive-pack",
                    "--listen",
                    "127.0.0.1",
                    "--port",
                    "0",
                ])
                .arg(&root),
            "daemon.log",
        );
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/src/jgit_http.java");
        let mut http = spawn(
            Command::new("java")
                .args(["-cp", &classpath(&HTTP_CLASSPATH), source])
                .arg(&root),
            "http.log",
        );
        // "Listening on /127.0.0.1:PORT"
        let git_port = port_from(
            daemon.stdout.take().unwrap(),
            "jgit daemon",
            &dir.path().join("daemon.log"),
            |l| l.strip_prefix("Listening on ")?.rsplit(':').next()?.parse().ok(),
        );
        let http_port = port_from(
            http.stdout.take().unwrap(),
            "JGit's HTTP server",
            &dir.path().join("http.log"),
            |l| l.trim().parse().ok(),
        );
        JGit {
            daemon,
            http,
            git_port,
            http_port,
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repos")
    }
}

impl RepoServer for JGit {
    fn create_bare(&self, name: &str) -> PathBuf {
        git(
            &self.root(),
            ["init", "--quiet", "--bare", "--initial-branch=main", name],
        );
        self.path(name)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    fn url(&self, proto: Proto, name: &str) -> String {
        match proto {
            Proto::GitDaemon => format!("git://127.0.0.1:{}/{name}", self.git_port),
            Proto::Http => format!("http://127.0.0.1:{}/{name}", self.http_port),
        }
    }
}

impl Drop for JGit {
    fn drop(&mut self) {
        for child in [&mut self.daemon, &mut self.http] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
