//! `gitferry` — the command line and the local server. Thin: it parses arguments, builds
//! adapters, calls `gitferry_core`, and turns results into output and exit codes.
//!
//! Exit codes: 0 success, 1 the operation failed (a clear message on stderr, or a summary with
//! failed refs or targets), 2 usage error (bad arguments or an invalid configuration file).
//! A reader that closes stdout early (`| head`) changes none of them (see `output`).
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
mod output;

mod adapters;
mod demo;
mod serve;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use gitferry_core::config::{Config, Secret};
use gitferry_core::git::{self, MirrorOptions, RefPatterns, Remote};
use gitferry_core::metrics::Metrics;
use gitferry_core::notify::Notifier;
use gitferry_core::request::SyncRequest;
use gitferry_core::status::{RepoStatus, State, StatusBook};
use gitferry_core::sync::{RepoOutcome, SyncManager, SyncOptions};

#[derive(Parser)]
#[command(
    name = "gitferry",
    version,
    about = "Keep mirrors of git repositories in sync",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage or configuration error.\n\
                  Logging: RUST_LOG=info (or debug, or gitferry_core=debug,...), default warn."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Where {
    /// The configuration file.
    #[arg(long, short, default_value = "mirrors.toml")]
    config: PathBuf,
    /// The store: a local directory, or s3://BUCKET/PREFIX.
    #[arg(long, default_value = adapters::DEFAULT_STORE)]
    store: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on this machine: webhook and status HTTP routes, sync workers and
    /// the poller. Stops cleanly on SIGINT/SIGTERM; queued work survives restarts.
    #[command(after_help = "Examples:\n  \
        gitferry serve --config mirrors.toml\n  \
        GITFERRY_STATUS_TOKEN=… gitferry serve --listen 0.0.0.0:8080 --workers 4\n  \
        gitferry serve --store s3://my-bucket/gitferry --queue sqs://https://sqs.eu-west-1.amazonaws.com/123/gitferry.fifo\n\n\
        Routes: POST /webhook/{github,gitlab,gitea,forgejo}, GET / (status page), GET /status[/REPO],\n\
        POST /repos/REPO/sync, GET /metrics, GET /healthz. Status routes need\n\
        `Authorization: Bearer $GITFERRY_STATUS_TOKEN`, except on a loopback address without a token.\n\
        GITFERRY_MAX_BODY: the webhook body limit in bytes (default 25 MiB).")]
    Serve(ServeArgs),
    /// A complete tour, offline, in a temp dir: creates a source repository, serves it, pushes
    /// to it, delivers a signed webhook, waits for the sync, shows status and notification, and
    /// verifies the target equals the source.
    Demo,
    /// Sync one repository now, in this process, and wait for the result.
    #[command(
        after_help = "Examples:\n  gitferry sync app\n  gitferry sync app --config /etc/gitferry/mirrors.toml --json"
    )]
    Sync(SyncArgs),
    /// Show the status of every repository (or one), grouped by account.
    #[command(after_help = "Examples:\n  gitferry status\n  gitferry status app --json")]
    Status(StatusArgs),
    /// List an account now and show what would be mirrored, where, and which targets would be
    /// created — without changing anything.
    #[command(
        after_help = "Examples:\n  gitferry discover acme\n  gitferry discover acme --config mirrors.toml --json"
    )]
    Discover(DiscoverArgs),
    /// Check a configuration file: prints OK (exit 0), or every problem with file:line and
    /// field (exit 2).
    CheckConfig(CheckConfigArgs),
    /// Bring back a tip the source force-pushed or deleted: push a backup gitferry kept
    /// (`refs/gitferry/overwritten/…`, listed by `status` and on the repository page) to the
    /// source under a new name; the next sync mirrors it to every target.
    #[command(after_help = "Example:\n  \
        gitferry restore app refs/gitferry/overwritten/heads/main/1732870000000 --as refs/heads/main-restored")]
    Restore(RestoreArgs),
    /// Ask a running server to sync every repository now (reconcile).
    #[command(after_help = "Example:\n  GITFERRY_STATUS_TOKEN=… gitferry enqueue --all --server http://127.0.0.1:8080")]
    Enqueue(EnqueueArgs),
    /// One-shot mirror: fetch SOURCE into a bare cache under --cache-dir (pruning refs the source
    /// no longer has), then push branches and tags to TARGET, deleting refs the source dropped.
    #[command(after_help = "Examples:\n  \
        gitferry mirror https://github.com/org/repo.git git://backup.internal/repo.git --cache-dir ~/.cache/gitferry\n  \
        gitferry mirror /srv/git/app.git https://user:TOKEN@git.example.com/app.git --cache-dir /var/cache/gitferry --json\n\n\
        gitferry mirror git@github.com:org/repo.git ssh://git@backup.internal:2222/srv/git/repo.git \\\n    \
          --cache-dir /var/cache/gitferry --ssh-key ~/.ssh/mirror_ed25519 --known-hosts ~/.ssh/known_hosts\n\n\
        Credentials may be given in the URL's userinfo or with GITFERRY_SOURCE_TOKEN / GITFERRY_TARGET_TOKEN\n\
        (and GITFERRY_*_USER, default 'x-access-token'); they never appear in output. SSH remotes use\n\
        --ssh-key; their host keys are always verified: against --known-hosts, and the published keys of\n\
        github.com, gitlab.com and bitbucket.org.")]
    Mirror(MirrorArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    at: Where,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// `memory` (in-process, saved in the store) or sqs://QUEUE_URL.
    #[arg(long, default_value = "memory")]
    queue: String,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Where local bare repositories live (default: inside a local store, or a temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SyncArgs {
    repo: String,
    #[command(flatten)]
    at: Where,
    /// Print the resulting status as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    repo: Option<String>,
    #[command(flatten)]
    at: Where,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DiscoverArgs {
    /// The account (`[accounts.NAME]`).
    account: String,
    #[command(flatten)]
    at: Where,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CheckConfigArgs {
    file: PathBuf,
}

#[derive(clap::Args)]
struct RestoreArgs {
    repo: String,
    /// The backup ref, as listed.
    backup: String,
    /// The ref to create on the source (it must not exist yet).
    #[arg(long = "as", value_name = "REF")]
    as_ref: String,
    #[command(flatten)]
    at: Where,
}

#[derive(clap::Args)]
struct EnqueueArgs {
    /// Every configured repository.
    #[arg(long, required = true)]
    all: bool,
    #[arg(long, short, default_value = "mirrors.toml")]
    config: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
}

#[derive(clap::Args)]
struct MirrorArgs {
    /// Where to fetch from: git://, http(s)://, ssh://, user@host:path or a local path.
    source: String,
    /// Where to push to: git://, http(s)://, ssh://, user@host:path or a local path.
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
    /// Ref patterns to mirror (repeatable; one `*` each). Default: refs/heads/* and refs/tags/*.
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
    /// Git LFS objects: `auto` mirrors them when pointers are found, `on` also fails when a
    /// remote can have no LFS server (a local path), `off` mirrors pointers only. Objects are
    /// cached under `{cache-dir}/lfs`.
    #[arg(long, value_name = "auto|on|off", default_value = "auto", value_parser = parse_lfs_mode)]
    lfs: git::lfs::LfsMode,
    #[command(flatten)]
    ssh: SshArgs,
}

fn parse_lfs_mode(s: &str) -> Result<git::lfs::LfsMode, String> {
    s.parse()
}

/// How `mirror` reaches SSH remotes (source and target alike).
#[derive(clap::Args, Clone, Default)]
struct SshArgs {
    /// Private key file for ssh:// and user@host:path remotes (Ed25519, ECDSA or RSA).
    #[arg(long, value_name = "FILE")]
    ssh_key: Option<PathBuf>,
    /// The environment variable holding the key's passphrase, if it has one.
    #[arg(long, value_name = "VAR", requires = "ssh_key")]
    ssh_key_passphrase_env: Option<String>,
    /// known_hosts file of trusted host keys. Without it only github.com's, gitlab.com's and
    /// bitbucket.org's published keys are trusted.
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
}

impl SshArgs {
    /// Apply the key and host keys to `remote` (nothing changes for non-SSH remotes).
    fn apply(&self, remote: Remote) -> Result<Remote, String> {
        if !remote.is_ssh() {
            return Ok(remote);
        }
        let mut remote = remote;
        if let Some(path) = &self.ssh_key {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the SSH key {}: {e}", path.display()))?;
            let passphrase = match &self.ssh_key_passphrase_env {
                Some(var) => Some(std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?),
                None => None,
            };
            let identity = git::SshIdentity::from_pem(&text, passphrase.as_deref())
                .map_err(|e| format!("the SSH key {}: {e}", path.display()))?;
            remote = remote.with_ssh_identity(identity);
        }
        if let Some(path) = &self.known_hosts {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let keys = git::HostKeys::parse_known_hosts(&text)
                .map_err(|(line, e)| format!("{}:{line}: {e}", path.display()))?;
            remote = remote.with_host_keys(keys);
        }
        Ok(remote)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    output::finish(runtime.block_on(run(cli.command)))
}

/// A panic is a bug, and the engine turns one in a git task into an error that names the remote
/// and phase; what the user sees of the panic itself is one line with its location (for the
/// bug report) instead of the default hook's several. `RUST_BACKTRACE` keeps the default.
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        errln!("gitferry: internal error (a bug, please report it){location}: {message}");
    }));
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(args) => serve_cmd(args).await,
        Command::Demo => match demo::run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Sync(args) => sync_now(&args.repo, &args.at, args.json).await,
        Command::Status(args) => status(args.repo.as_deref(), &args.at, args.json).await,
        Command::Discover(args) => discover(&args.account, &args.at, args.json).await,
        Command::CheckConfig(args) => check_config(&args.file),
        Command::Enqueue(args) => enqueue_all(&args.config, &args.server).await,
        Command::Restore(args) => restore(&args.repo, &args.backup, &args.as_ref, &args.at).await,
        Command::Mirror(args) => mirror(args).await,
    }
}

async fn serve_cmd(args: ServeArgs) -> ExitCode {
    let config = match load_config(&args.at.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let max_body =
        gitferry_core::webhook::max_body_setting(std::env::var(gitferry_core::webhook::MAX_BODY_ENV).ok().as_deref());
    let max_body = match max_body {
        Ok(n) => n,
        Err(e) => {
            errln!("{e}");
            return ExitCode::from(2);
        }
    };
    let status_token = std::env::var("GITFERRY_STATUS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| Secret::new("GITFERRY_STATUS_TOKEN", t));
    let config_digest = std::fs::read_to_string(&args.at.config)
        .map(|text| Config::digest(&text))
        .unwrap_or_default();
    let opts = serve::ServeOptions {
        config: Arc::new(config),
        config_digest,
        listen: args.listen,
        store: args.at.store,
        queue: args.queue,
        workers: args.workers,
        work_dir: args.work_dir,
        status_token,
        max_body,
    };
    match serve::serve(opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// 0 and "OK" for a valid file; 2 and every problem (file:line, field) for an invalid one.
fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            outln!("OK: {} ({} repositories)", file.display(), c.repos.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            errln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        errln!("{e}");
        ExitCode::from(2)
    })
}

async fn sync_now(repo: &str, at: &Where, json: bool) -> ExitCode {
    let config = match load_config(&at.config) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let store = match adapters::store(&at.store).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // Configured or discovered from an account.
    let catalog = gitferry_core::accounts::Catalog::new(config.clone(), store.clone());
    if catalog.repo(repo).await.is_none() {
        return fail(&format!(
            "repository {repo:?} is neither in {} nor discovered from an account",
            at.config.display()
        ));
    }
    let manager = SyncManager::new(
        config.clone(),
        store,
        Notifier::new(&config.notify),
        Metrics::discard(),
        SyncOptions {
            work_dir: adapters::default_work_dir(&at.store),
            ..SyncOptions::default()
        },
    )
    .with_catalog(catalog);
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let request = SyncRequest::manual(repo, &who);
    let outcome = manager
        .handle_batch(
            std::slice::from_ref(&request),
            Instant::now() + Duration::from_secs(6 * 3600),
        )
        .await;
    let status = manager.status_book().get(repo).await.ok().flatten();
    if json {
        outln!("{}", serde_json::to_string_pretty(&status).expect("status serialises"));
    }
    match &outcome.repos[0].outcome {
        RepoOutcome::NoOp => {
            if !json {
                outln!("{repo}: up to date (nothing to do)");
            }
            ExitCode::SUCCESS
        }
        RepoOutcome::Synced(s) if s.state == State::Success => {
            if !json {
                out!("{}", table::render(&[(**s).clone()], gitferry_core::clock::now_ms()));
            }
            ExitCode::SUCCESS
        }
        RepoOutcome::Synced(s) => {
            if !json {
                out!("{}", table::render(&[(**s).clone()], gitferry_core::clock::now_ms()));
            }
            ExitCode::from(1)
        }
        RepoOutcome::Interrupted { status, .. } => {
            if !json {
                out!(
                    "{}",
                    table::render(&[(**status).clone()], gitferry_core::clock::now_ms())
                );
            }
            fail(&format!(
                "{repo}: stopped before finishing; run `gitferry sync {repo}` again to continue"
            ))
        }
        RepoOutcome::Failed { error, .. } => fail(error),
        RepoOutcome::Skipped(reason) => fail(&format!("{repo}: skipped ({reason})")),
    }
}

async fn status(repo: Option<&str>, at: &Where, json: bool) -> ExitCode {
    let config = match load_config(&at.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match adapters::store(&at.store).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let catalog = gitferry_core::accounts::Catalog::new(Arc::new(config), store.clone());
    let config = catalog.config().await;
    let names: Vec<&str> = match repo {
        Some(r) if config.repo(r).is_none() => return fail(&format!("repository {r:?} is not configured")),
        Some(r) => vec![r],
        None => config.repos.keys().map(String::as_str).collect(),
    };
    match StatusBook::new(store).all(names).await {
        Ok(all) => {
            let now = gitferry_core::clock::now_ms();
            let rows = gitferry_core::page::rows(&all, &config, now);
            if json {
                let grouped: Vec<serde_json::Value> = rows.iter().map(status_json).collect();
                outln!("{}", serde_json::to_string_pretty(&grouped).expect("status serialises"));
            } else if config.accounts.is_empty() {
                out!("{}", table::render(&all, now));
            } else {
                // Grouped by account (configured repositories by their source's host and owner).
                let mut groups: std::collections::BTreeMap<&str, Vec<RepoStatus>> = Default::default();
                for row in &rows {
                    groups.entry(row.group.as_str()).or_default().push(row.status.clone());
                }
                for (group, statuses) in groups {
                    outln!("{group}:");
                    out!("{}", table::render(&statuses, now));
                    for row in rows.iter().filter(|r| r.group == group) {
                        if let Some(why) = &row.source_gone {
                            outln!("  {}: source {why}", row.status.repo);
                        }
                    }
                }
            }
            if all.iter().any(|s| s.state == State::Failed) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(&format!("reading status: {e}")),
    }
}

/// A status as JSON, with its account and, for a vanished source, why it is kept.
fn status_json(row: &gitferry_core::page::Row<'_>) -> serde_json::Value {
    let mut v = serde_json::to_value(row.status).expect("status serialises");
    v["account"] = row.group.clone().into();
    if let Some(why) = &row.source_gone {
        v["source_gone"] = why.clone().into();
    }
    v
}

/// `gitferry discover ACCOUNT`: list it now and show the outcome; writes nothing.
async fn discover(account: &str, at: &Where, json: bool) -> ExitCode {
    let config = match load_config(&at.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(account_config) = config.accounts.get(account) else {
        let known: Vec<&str> = config.accounts.keys().map(String::as_str).collect();
        return fail(&format!(
            "account {account:?} is not in {} (accounts: {})",
            at.config.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ));
    };
    let store = match adapters::store(&at.store).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let preview = match gitferry_core::accounts::preview::preview(store.as_ref(), account_config, deadline).await {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&preview).expect("preview serialises")
        );
        return ExitCode::SUCCESS;
    }
    outln!(
        "account {}: {} repositories to mirror ({} new, {} gone, {} renamed), {} filtered out; {} API requests ({} not modified)",
        preview.account,
        preview.repos.len(),
        preview.new.len(),
        preview.gone.len(),
        preview.renamed.len(),
        preview.skipped.len(),
        preview.requests,
        preview.not_modified
    );
    for r in &preview.repos {
        let new = if preview.new.contains(&r.name) { " (new)" } else { "" };
        outln!("  {}{new}  {}  [{}]", r.name, r.source, r.state);
        for t in &r.targets {
            let create = if t.create { "  (created if missing)" } else { "" };
            outln!("    → {}: {}{create}", t.name, t.url);
        }
    }
    for (path, why) in &preview.skipped {
        outln!("  skipped {path}: {why}");
    }
    ExitCode::SUCCESS
}

async fn restore(repo: &str, backup: &str, as_ref: &str, at: &Where) -> ExitCode {
    let config = match load_config(&at.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(repo_config) = config.repo(repo) else {
        return fail(&format!("repository {repo:?} is not in {}", at.config.display()));
    };
    let store = match adapters::store(&at.store).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // A private copy of the cache: a running server's working copy is left alone.
    let work = match tempfile::tempdir() {
        Ok(w) => w,
        Err(e) => return fail(&format!("a temporary directory: {e}")),
    };
    let cache = gitferry_core::cache::RepoCache::new(store, work.path(), repo);
    let restored = match cache.load().await {
        Ok(snapshot) => cache.restore(&snapshot).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = restored {
        return fail(&format!("reading the cache of {repo}: {e}"));
    }
    let (path, source) = (cache.path().to_owned(), repo_config.source.clone());
    let (b, name) = (backup.to_owned(), as_ref.to_owned());
    let pushed = tokio::task::spawn_blocking(move || git::restore_ref(&path, &source, &b, &name)).await;
    match pushed {
        Ok(Ok(id)) => {
            outln!(
                "restored {id} as {as_ref} on {}: the next sync mirrors it to the targets",
                repo_config.source
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail_err(&e),
        Err(e) => fail(&format!("internal error: {e}")),
    }
}

async fn enqueue_all(config: &Path, server: &str) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let client = reqwest::Client::new();
    let token = std::env::var("GITFERRY_STATUS_TOKEN").unwrap_or_default();
    let mut failed = 0;
    for repo in config.repos.keys() {
        let mut req = client
            .post(format!("{}/repos/{repo}/sync", server.trim_end_matches('/')))
            .header("x-requested-by", "gitferry enqueue");
        if !token.is_empty() {
            req = req.bearer_auth(&token);
        }
        match req.send().await {
            Ok(r) if r.status().as_u16() == 202 => outln!("queued {repo}"),
            Ok(r) => {
                failed += 1;
                errln!("{repo}: the server answered {}", r.status());
            }
            Err(e) => {
                failed += 1;
                errln!(
                    "{repo}: {}",
                    if e.is_connect() {
                        format!("cannot reach {server}")
                    } else {
                        e.to_string()
                    }
                );
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn mirror(args: MirrorArgs) -> ExitCode {
    let (source, target, patterns) = match mirror_inputs(&args) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let MirrorArgs {
        cache_dir,
        json,
        progress,
        no_prune,
        atomic,
        lfs,
        ..
    } = args;
    let bar = progress.then(progress_line);
    let options = MirrorOptions {
        lfs: Some(git::lfs::LfsOptions {
            mode: lfs,
            objects: cache_dir.join("lfs"),
            tier: None,
            pending_in_cache: true,
        }),
        refs: patterns,
        prune: !no_prune,
        atomic,
        progress: bar.clone().map(|b| {
            let f: git::ProgressFn = Arc::new(move |line: &str| b(line));
            f
        }),
    };
    let started = Instant::now();
    let target_name = target.to_string();
    // `git::mirror` turns its own panics into errors; a join error is left for anything else.
    let result = match tokio::task::spawn_blocking(move || git::mirror(&source, &target, &cache_dir, &options)).await {
        Ok(result) => result,
        Err(e) => return fail(&format!("internal error (a bug in gitferry): {e}")),
    };
    match result {
        Ok(summary) => {
            if json {
                outln!("{}", serde_json::to_string(&summary).expect("summary serialises"));
            } else {
                out!("{}", summary.human());
            }
            if summary.push.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                errln!(
                    "error: {} ref(s) rejected by {} ({:.1}s)",
                    summary.push.rejected.len(),
                    target_name,
                    started.elapsed().as_secs_f64()
                );
                ExitCode::from(1)
            }
        }
        Err(e) => fail_err(&e),
    }
}

/// The remotes (with credentials from the environment) and ref patterns `mirror` was given.
fn mirror_inputs(args: &MirrorArgs) -> Result<(Remote, Remote, RefPatterns), ExitCode> {
    let source = Remote::parse(&args.source)
        .map(|r| r.with_env_credentials("GITFERRY_SOURCE"))
        .map_err(|e| fail_err(&e))?;
    let target = Remote::parse(&args.target)
        .map(|r| r.with_env_credentials("GITFERRY_TARGET"))
        .map_err(|e| fail_err(&e))?;
    let source = args.ssh.apply(source).map_err(|e| fail(&e))?;
    let target = args.ssh.apply(target).map_err(|e| fail(&e))?;
    if args.refs.is_empty() && args.excludes.is_empty() {
        return Ok((source, target, RefPatterns::default()));
    }
    let include = if args.refs.is_empty() {
        RefPatterns::default().include
    } else {
        args.refs.clone()
    };
    let patterns = RefPatterns::new(include, args.excludes.clone()).map_err(|e| fail_err(&e))?;
    Ok((source, target, patterns))
}

/// Progress for `--progress`: a spinner line on a terminal, plain lines otherwise.
fn progress_line() -> Arc<dyn Fn(&str) + Send + Sync> {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Arc::new(move |line: &str| {
            bar.println(line);
            bar.set_message(line.to_owned());
        })
    } else {
        Arc::new(|line: &str| errln!("{line}"))
    }
}

fn fail(message: &str) -> ExitCode {
    errln!("error: {message}");
    ExitCode::from(1)
}

fn fail_err(e: &dyn std::error::Error) -> ExitCode {
    // One clear line: the error and its causes, joined. Errors never carry credentials.
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    fail(&msg)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: escape codes in a redirected log break grep and log shippers.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
