//! No secret leaves gitferry: the whole suite is scanned, not one test.
//!
//! Every secret a test hands to gitferry is registered here ([`secret`], or implicitly by
//! [`super::HttpBackend`] for its basic-auth password). What gitferry produces is then checked
//! against every registered secret of the test binary, also in the forms in which it could leak
//! without being spelled out ([`find`]: percent-encoded, `Debug`-escaped, inside a base64
//! `Basic` credential):
//!
//! * in-process logs: [`capture_logs`] installs a tracing subscriber (debug level, every target)
//!   whose writer checks each formatted line; the harness's entry points call it, so every test
//!   that starts a server, a moto or a work directory has its library logs checked;
//! * files: [`TempDir`] (a temporary directory) checks every file under it when dropped —
//!   logs, statuses, manifests, the saved queue, git configs — except git objects and packs and
//!   the files the test itself wrote with a secret in them ([`allow`]); [`super::Servers`] does
//!   the same for its repositories;
//! * notifications: [`super::receiver::Receiver`] checks every body when dropped;
//! * S3: [`super::moto::MotoServer`] checks every object of every bucket when dropped;
//! * child processes: [`CheckedOutput::checked_output`] runs a command and checks its output.
//!
//! The captured log lines are also kept (the last 20,000, [`logged`]) for tests that check what
//! gitferry logged.
//!
//! A leak found in a log line is printed at once and fails the next teardown in the binary (a
//! panic in the middle of library code would hide where it came from); every other check panics at once
//! with the place and the leaked secret masked. Teardown checks are skipped when the test is
//! already failing, so the first failure stays the one reported.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, Once};

use base64::Engine;

/// Secrets shorter than this are not registered: `test` (moto's dummy key) is everywhere.
const MIN_LEN: usize = 8;

static SECRETS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static ALLOWED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
static LOG_LEAKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The last [`KEPT_LINES`] log lines of this test binary, for tests that check what was logged.
static LINES: Mutex<std::collections::VecDeque<String>> = Mutex::new(std::collections::VecDeque::new());
const KEPT_LINES: usize = 20_000;

/// Register `value` as a secret and return it (`const`s cannot register themselves, so tests
/// write `let token = harness::leaks::secret(TOKEN);` or call it once before use). Panics on a
/// secret shorter than 8 bytes: it would match innocent text, and skipping it silently would
/// leave it unchecked.
pub fn secret(value: &str) -> String {
    assert!(
        value.len() >= MIN_LEN,
        "test secrets must be at least {MIN_LEN} bytes to be checked for leaks"
    );
    SECRETS.lock().unwrap().insert(value.to_owned());
    value.to_owned()
}

/// Register the credentials of a basic-auth user: the password, and `user:password` as it
/// would appear base64-encoded without the `Basic ` that [`find`] looks behind.
pub fn credentials(user: &str, password: &str) {
    secret(password);
    secret(&base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
}

/// Register an SSH private key (PEM text): the whole text and each full line of its base64 body,
/// so that a fragment of it is found as well as the whole. Lines that hold nothing secret are
/// left out, or every `authorized_keys` and host key file would be a "leak": an OpenSSH private
/// key embeds its public key (`public`, the `.pub` line), so a line whose base64 is part of the
/// public key's is public; the first line is the format's header (cipher, KDF and its salt, the
/// start of the public key: shared by every unencrypted key of a type) and the short last line
/// (padding, comment) is shared by keys with the same comment. Its passphrase is registered with
/// [`secret`].
pub fn ssh_private_key(pem: &str, public: &str) {
    /// OpenSSH writes 70 characters a line, PEM 64: a shorter line is the tail.
    const FULL_LINE: usize = 64;
    secret(pem.trim());
    for line in pem.lines().map(str::trim).filter(|l| !l.starts_with("-----")).skip(1) {
        if line.len() >= FULL_LINE && !public.contains(line) && !line.contains(':') {
            secret(line);
        }
    }
}

/// A file the test wrote with a secret in it on purpose (an input, such as a secrets file given
/// to the CLI): not a leak.
pub fn allow(path: &Path) {
    ALLOWED.lock().unwrap().insert(path.to_owned());
}

/// The registered secret `text` contains, if any — spelled out, percent-encoded (any case, any
/// subset of characters), escaped as `Debug` prints strings, or inside a base64 `Basic`
/// credential (whatever the user name).
pub fn find(text: &str) -> Option<String> {
    let mut forms = vec![
        text.to_owned(),
        percent_decode(text),
        text.replace("\\\"", "\"").replace("\\\\", "\\"),
    ];
    forms.extend(basic_credentials(text));
    let secrets = SECRETS.lock().unwrap();
    secrets
        .iter()
        .find(|s| forms.iter().any(|f| f.contains(s.as_str())))
        .cloned()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded `user:password` of every `Basic <base64>` in `text`.
fn basic_credentials(text: &str) -> Vec<String> {
    text.match_indices("Basic ")
        .filter_map(|(at, m)| {
            let encoded: String = text[at + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
                .collect();
            base64::engine::general_purpose::STANDARD.decode(encoded).ok()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

fn mask(secret: &str) -> String {
    let start: String = secret.chars().take(3).collect();
    format!("{start}…({} chars)", secret.len())
}

/// `text` with every registered secret masked.
fn masked(text: &str) -> String {
    let mut out = text.to_owned();
    for s in SECRETS.lock().unwrap().iter() {
        out = out.replace(s.as_str(), &mask(s));
    }
    out
}

/// Panic if `text` (what gitferry produced, described by `what`) contains a registered secret.
pub fn check(what: &str, text: &str) {
    if let Some(s) = find(text) {
        let at = text.find(&s).unwrap_or(0);
        let from = text[..at].char_indices().rev().nth(80).map_or(0, |(i, _)| i);
        let context = masked(&text[from..at]);
        panic!("secret {} leaked into {what}, after: {context:?}", mask(&s));
    }
}

/// Check every file under `dir` except git objects and packs, and allowed inputs.
pub fn check_tree(dir: &Path) {
    let allowed = ALLOWED.lock().unwrap().clone();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if path.file_name().is_some_and(|n| n == "objects") {
                    continue;
                }
                stack.push(path);
            } else if kind.is_file() && !allowed.contains(&path) {
                let skip = path
                    .extension()
                    .is_some_and(|e| e == "pack" || e == "idx" || e == "rev" || e == "keep");
                if skip {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(&path) {
                    check(&path.display().to_string(), &String::from_utf8_lossy(&bytes));
                }
            }
        }
    }
}

/// [`Command::output`] that also checks stdout and stderr for secrets: for every command whose
/// output gitferry produced (`use harness::leaks::CheckedOutput;`, then `.checked_output()`).
pub trait CheckedOutput {
    fn checked_output(&mut self) -> std::io::Result<Output>;
}

impl CheckedOutput for Command {
    fn checked_output(&mut self) -> std::io::Result<Output> {
        let out = self.output()?;
        check(
            &format!("stdout of {:?}", self.get_program()),
            &String::from_utf8_lossy(&out.stdout),
        );
        check(
            &format!("stderr of {:?}", self.get_program()),
            &String::from_utf8_lossy(&out.stderr),
        );
        Ok(out)
    }
}

/// The in-process log lines (of every test of this binary: filter by something unique to yours)
/// that `keep` selects, oldest first; the last 20,000 lines are kept.
pub fn logged(keep: impl Fn(&str) -> bool) -> Vec<String> {
    LINES.lock().unwrap().iter().filter(|l| keep(l)).cloned().collect()
}

/// Panic if a log line leaked a secret since the last call (teardowns call this).
pub fn assert_no_log_leaks() {
    let leaks: Vec<String> = std::mem::take(&mut *LOG_LEAKS.lock().unwrap());
    assert!(leaks.is_empty(), "secrets leaked into logs: {leaks:#?}");
}

/// For teardown code: check unless the thread is already panicking.
pub(crate) fn at_teardown(f: impl FnOnce()) {
    if !std::thread::panicking() {
        assert_no_log_leaks();
        f();
    }
}

/// Install (once per test binary) a tracing subscriber that formats every event at debug level
/// and checks it for secrets; nothing is printed unless `GITFERRY_TEST_LOG` is set.
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(|| LineChecker(Vec::new()))
            .try_init()
            .expect("no other tracing subscriber: logs would go unchecked for secrets");
    });
}

/// Buffers one formatted event, checks it when dropped.
struct LineChecker(Vec<u8>);

impl Write for LineChecker {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineChecker {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0);
        if find(&line).is_some() {
            let shown = masked(line.trim_end());
            // Said at once (not captured by the test harness), so a leak from a background
            // thread after the last teardown is still seen; the next teardown fails on it.
            let _ = writeln!(std::io::stderr(), "SECRET LEAKED into a log line: {shown}");
            LOG_LEAKS.lock().unwrap().push(shown);
        }
        if std::env::var_os("GITFERRY_TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(&self.0);
        }
        let mut lines = LINES.lock().unwrap();
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(masked(line.trim_end()));
    }
}

/// A temporary directory whose files are checked for secrets when it is dropped (the harness's
/// `TempDir`).
pub struct TempDir(Option<tempfile::TempDir>);

impl TempDir {
    /// A new directory named `{prefix}…` under the system's temporary directory (and log
    /// capture on).
    pub fn new(prefix: &str) -> TempDir {
        capture_logs();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temporary directory");
        TempDir(Some(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("present until dropped").path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let dir = self.0.take().expect("dropped once");
        at_teardown(|| check_tree(dir.path()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_text(result: std::thread::Result<()>) -> String {
        let payload = result.expect_err("the leak is caught");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    // One test: the leak registries are global, and parallel tests would drain each other's.
    #[test]
    fn leaks_are_found_in_every_form_and_place() {
        secret("pw-unit-1/+x");
        credentials("bot", "pw-unit-2-abc");
        assert!(find("token pw-unit-1/+x here").is_some());
        assert!(find("url http://u:pw-unit-1%2F%2Bx@h/").is_some());
        let header = base64::engine::general_purpose::STANDARD.encode("bot:pw-unit-2-abc");
        assert!(find(&format!("Authorization: Basic {header}")).is_some());
        assert!(find("nothing here").is_none());
        assert!(
            std::panic::catch_unwind(|| secret("test")).is_err(),
            "too short to check"
        );
        // Partly percent-encoded (as the url crate does), any user name in a Basic header,
        // Debug-escaped.
        assert!(find("http://u:pw-unit-1%2F+x@h/").is_some());
        assert!(find("http://u:pw-unit-1%2f%2bx@h/").is_some());
        let other = base64::engine::general_purpose::STANDARD.encode("x-access-token:pw-unit-2-abc");
        assert!(find(&format!("authorization: Basic {other}")).is_some());
        secret("pw-\"q\\-unit");
        assert!(find(&format!("{:?}", "pw-\"q\\-unit")).is_some());

        // A file under a work dir fails its teardown, without printing the secret.
        secret("pw-unit-3-file");
        let text = panic_text(std::panic::catch_unwind(|| {
            let dir = TempDir::new("leaks-");
            std::fs::create_dir_all(dir.path().join("state")).unwrap();
            std::fs::write(dir.path().join("state/status.json"), "{\"e\":\"pw-unit-3-file\"}").unwrap();
        }));
        assert!(
            text.contains("status.json") && !text.contains("pw-unit-3-file"),
            "{text}"
        );
        // Git objects and allowed inputs are not scanned.
        let dir = TempDir::new("leaks-");
        std::fs::create_dir_all(dir.path().join("x.git/objects")).unwrap();
        std::fs::write(dir.path().join("x.git/objects/blob"), "pw-unit-3-file").unwrap();
        std::fs::write(dir.path().join("secrets.json"), "pw-unit-3-file").unwrap();
        allow(&dir.path().join("secrets.json"));
        drop(dir);

        // A log line fails the next teardown, once.
        secret("pw-unit-4-log");
        tracing::warn!(url = "http://u:pw-unit-4-log@h/", "oops");
        let text = panic_text(std::panic::catch_unwind(assert_no_log_leaks));
        assert!(text.contains("oops") && !text.contains("pw-unit-4-log"), "{text}");
        assert_no_log_leaks();

        // Child process output.
        let text = panic_text(std::panic::catch_unwind(|| {
            let _ = Command::new("echo").arg("pw-unit-1/+x").checked_output();
        }));
        assert!(text.contains("stdout of \"echo\""), "{text}");
    }
}
