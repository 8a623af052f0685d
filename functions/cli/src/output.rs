//! Printing that never panics: every line the CLI prints goes through [`outln!`], [`out!`] or
//! [`errln!`] (clippy's `print_stdout`/`print_stderr` lints keep it that way).
//!
//! `println!` panics when stdout is closed: `gitferry mirror --json | head -c 10` ended with
//! "failed printing to stdout: Broken pipe" and exit 101. Rust ignores SIGPIPE, so writing to a
//! closed pipe returns `EPIPE`. We do not restore SIGPIPE's default action (die quietly, status
//! 141): `serve` and the git transports write to sockets, where that signal would kill the
//! whole process.
//!
//! The rule instead: a closed stdout means the reader has what it wanted. Printing stops
//! quietly and the exit code still reports the command itself — 0 when the mirror succeeded (it
//! ran to the end either way), as ripgrep does, rather than 141. Any other failure to write
//! stdout (a full disk behind a redirect) loses output the user asked for: it is reported on
//! stderr and the exit code becomes 1 ([`finish`]). stderr is written best-effort: if it is
//! closed too, there is nowhere left to report anything.

use std::io::Write;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// stdout stopped taking output (closed, or failed).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// Why stdout failed, when it was not simply closed by the reader.
static STDOUT_ERROR: OnceLock<String> = OnceLock::new();

/// Write to stdout (flushed at once, so a failure is seen here and not at exit).
pub fn write_out(args: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_ERROR.set(e.to_string());
        }
    }
}

/// Write to stderr, ignoring failures.
pub fn write_err(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// The exit code to end with: `code`, unless stdout failed for a reason other than a reader
/// that closed it.
pub fn finish(code: ExitCode) -> ExitCode {
    match STDOUT_ERROR.get() {
        Some(e) => {
            write_err(format_args!("error: writing to stdout: {e}\n"));
            ExitCode::from(1)
        }
        None => code,
    }
}

/// `println!` to stdout, without panicking (see the module docs).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to stdout, without panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

/// `eprintln!`, without panicking.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}
