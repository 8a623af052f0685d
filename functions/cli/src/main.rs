//! `gitferry` — the command line. Thin: it parses arguments, calls `gitferry_core`, and turns
//! results into output and exit codes. No mirroring logic lives here.
//!
//! Exit codes: 0 success, 1 the operation failed (a one-line error on stderr, or a summary with
//! rejected refs), 2 usage error (bad arguments).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use gitferry_core::git::{self, MirrorOptions, RefPatterns, Remote};

#[derive(Parser)]
#[command(
    name = "gitferry",
    version,
    about = "Keep mirrors of git repositories in sync",
    after_help = "Exit codes: 0 success, 1 failure (including refs a target rejected), 2 usage error.\n\
                  Logging: set RUST_LOG (e.g. RUST_LOG=gitferry_core=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One-shot mirror: fetch SOURCE into a bare cache under --cache-dir (pruning refs the source
    /// no longer has), then push branches and tags to TARGET, deleting refs the source dropped.
    #[command(after_help = "Examples:\n  \
        gitferry mirror https://github.com/org/repo.git git://backup.internal/repo.git --cache-dir ~/.cache/gitferry\n  \
        gitferry mirror /srv/git/app.git https://user:TOKEN@git.example.com/app.git --cache-dir /var/cache/gitferry --json\n\n\
        Credentials may be given in the URL's userinfo or with GITFERRY_SOURCE_TOKEN / GITFERRY_TARGET_TOKEN\n\
        (and GITFERRY_*_USER, default 'x-access-token'); they never appear in output.")]
    Mirror {
        /// Where to fetch from: git://, http(s):// or a local path.
        source: String,
        /// Where to push to: git://, http(s):// or a local path.
        target: String,
        /// Directory holding the bare cache repositories (created if missing).
        #[arg(long, value_name = "DIR")]
        cache_dir: PathBuf,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Report progress on stderr.
        #[arg(long)]
        progress: bool,
        /// Ref patterns to mirror (repeatable; `*` matches within and across `/`).
        /// Default: refs/heads/* and refs/tags/*.
        #[arg(long = "ref", value_name = "PATTERN")]
        refs: Vec<String>,
        /// Ref patterns to leave alone (repeatable).
        #[arg(long = "exclude", value_name = "PATTERN")]
        excludes: Vec<String>,
        /// Keep refs on the target (and in the cache) that the source no longer has.
        #[arg(long)]
        no_prune: bool,
        /// Ask the target to apply all ref updates or none (when it supports `atomic`).
        #[arg(long)]
        atomic: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Mirror {
            source,
            target,
            cache_dir,
            json,
            progress,
            refs,
            excludes,
            no_prune,
            atomic,
        } => {
            let source = match Remote::parse(&source).map(|r| r.with_env_credentials("GITFERRY_SOURCE")) {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            let target = match Remote::parse(&target).map(|r| r.with_env_credentials("GITFERRY_TARGET")) {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            let patterns = if refs.is_empty() && excludes.is_empty() {
                RefPatterns::default()
            } else {
                match RefPatterns::new(
                    if refs.is_empty() { RefPatterns::default().include } else { refs },
                    excludes,
                ) {
                    Ok(p) => p,
                    Err(e) => return fail(&e),
                }
            };
            let options = MirrorOptions {
                refs: patterns,
                prune: !no_prune,
                atomic,
                progress: progress.then(|| stderr_progress()),
            };
            let started = Instant::now();
            match git::mirror(&source, &target, &cache_dir, &options) {
                Ok(summary) => {
                    if json {
                        println!("{}", serde_json::to_string(&summary).expect("summary serialises"));
                    } else {
                        print!("{}", summary.human());
                    }
                    if summary.push.rejected.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!(
                            "error: {} ref(s) rejected by {} ({:.1}s)",
                            summary.push.rejected.len(),
                            target,
                            started.elapsed().as_secs_f64()
                        );
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail(&e),
            }
        }
    }
}

fn stderr_progress() -> git::ProgressFn {
    std::sync::Arc::new(|line: &str| eprintln!("{line}"))
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    // One clear line: the error and its causes, joined. Errors never carry credentials.
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        source = s_source(source);
    }
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

fn s_source<'a>(e: Option<&'a (dyn std::error::Error + 'static)>) -> Option<&'a (dyn std::error::Error + 'static)> {
    e.and_then(|e| e.source())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
