//! Servers the harness starts are gone when it is done with them — provably.
//!
//! A server started through a wrapper (the `git` command forks `git-daemon`) or that forks its
//! own children survives a kill of the direct child: after one `make test`, 98 `git-daemon`
//! processes were still running. So every server the harness starts is:
//!
//! * spawned in its own process group ([`server`]), and killed as a group ([`stop`]);
//! * marked with [`MARK`] in its environment, which its children inherit: `make test` lists
//!   every process still carrying the mark after the suite and fails if there is one
//!   ([`leftovers`], `tests/leftovers.sh`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// The environment variable every server the harness starts carries.
pub const MARK: &str = "GITFERRY_TEST_SERVER";

/// Prepare `cmd` as a harness server: its own process group, and the mark.
pub fn server(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0).env(MARK, "1")
}

/// Kill a server and everything in its process group, and reap it.
pub fn stop(child: &mut Child) {
    let group = child.id() as i32;
    // SAFETY: kill(2) with a negative pid signals the process group this harness created.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Processes (pid, command line) that carry the mark: servers someone forgot to stop.
pub fn leftovers() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let marked = environ.split(|b| *b == 0).any(|v| v == format!("{MARK}=1").as_bytes());
        if marked {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push((pid, cmdline.trim().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_server_and_its_children_are_gone_after_stop() {
        // A shell that starts a grandchild in the background, like `git daemon` does.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 300 & sleep 300"]);
        let mut child = server(&mut cmd).spawn().expect("sh");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let ours = |pid: u32| leftovers().iter().any(|(p, c)| *p == pid || c.contains("sleep 300"));
        assert!(ours(child.id()), "the server carries the mark: {:?}", leftovers());
        let before = leftovers().iter().filter(|(_, c)| c.contains("sleep 300")).count();
        assert!(before >= 2, "{:?}", leftovers());
        stop(&mut child);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after: Vec<_> = leftovers()
            .into_iter()
            .filter(|(_, c)| c.contains("sleep 300"))
            .collect();
        assert!(after.is_empty(), "left running: {after:?}");
    }
}
