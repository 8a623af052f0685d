//! `mirrors.toml`: what to mirror where, and how. Parsed once, validated completely, and then
//! immutable; a bad file is refused at start with every problem listed as `file:line: field:
//! message`, rather than failing one sync at a time later.
//!
//! Secrets never live in the file. Credentials and webhook secrets are *references* to
//! environment variables (`token_env = "GITHUB_TOKEN"`), which the SAM template fills from
//! Secrets Manager / SSM and a local user exports; a reference to an unset variable is a
//! validation error, and a URL with a password in it is refused.
//!
//! ```toml
//! default_sync_policy = "both"       # webhook_only | poll_only | both
//! poll_interval_secs = 300           # default for every repo; at least 60
//! probe_timeout_secs = 10            # the poller gives a source this long to answer (1..=60)
//! stale_after_intervals = 3          # a repo not confirmed mirrored for 3 intervals is stale
//!
//! [notify]
//! slack_webhook_url_env = "GITFERRY_SLACK_WEBHOOK_URL"
//!
//! [repos.app]
//! url = "https://github.com/org/app.git"
//! token_env = "GITHUB_TOKEN"          # optional: to read private sources
//! sync_policy = "webhook_only"        # optional, overrides the default
//! refs = { include = ["refs/heads/*", "refs/tags/*"], exclude = ["refs/heads/tmp/*"] }
//! max_delete_fraction = 0.5           # refuse to delete more than half the refs in one sync
//! webhook = { provider = "github", secret_env = "APP_WEBHOOK_SECRET" }
//!
//! [[repos.app.targets]]
//! url = "https://gitlab.example.com/mirrors/app.git"
//! token_env = "GITLAB_TOKEN"
//! username = "oauth2"                 # optional (default x-access-token)
//! divergence = "keep"                 # force (default) | keep: leave refs changed on the target
//!
//! [[repos.app.targets]]
//! url = "ssh://git@backup.internal:2222/srv/git/app.git"   # or git@host:path (scp-like)
//! ssh_key_env = "BACKUP_DEPLOY_KEY"   # the private key (PEM text), never a path
//! ssh_key_passphrase_env = "BACKUP_DEPLOY_KEY_PASSPHRASE"  # optional
//! host_key = "SHA256:…"               # or a public key / known_hosts line, or a list of them
//! # known_hosts_env = "KNOWN_HOSTS"   # or known_hosts lines from a secret
//!
//! [webhooks.github]                   # optional: organisation hooks (GitLab: group and system
//! secret_env = "GITHUB_ORG_HOOK_SECRET" # hooks; Gitea/Forgejo: organisation and system hooks)
//! ```
//!
//! SSH remotes always verify the server's host key: pinned with `host_key` or
//! `known_hosts_env`, or built in for github.com, gitlab.com and bitbucket.org. A host nothing
//! is pinned for is a validation error (gitferry never trusts a key on first use).
//!
//! **Account-level webhook secrets** (`[webhooks.github]`, `[webhooks.gitlab]`,
//! `[webhooks.gitea]` — `forgejo` is the same table): an organisation, group or system hook has
//! one secret for every repository it reports on, and it also sends deliveries that name no
//! repository (GitHub's `ping` of an organisation hook) or repositories that are not mirrored.
//! One secret per provider authenticates those. It is tried in addition to a repository's own
//! `webhook.secret_env`, so per-repository hooks keep working unchanged and both kinds can be
//! set up at once. A later `[accounts.NAME]` (whole organisations) can add a secret per account
//! the same way: the webhook code asks the configuration for the secrets that could apply to a
//! delivery ([`Config::account_webhook`]) and does not care where they were written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

pub use gitferry_git::lfs::LfsMode;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::git::ssh::{HostKeys, SshIdentity};
use crate::git::{Credentials, RefPatterns, Remote};

/// Shortest allowed poll interval: below a minute the EventBridge schedule cannot honour it and
/// hosts start rate-limiting.
pub const MIN_POLL_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 300;
pub const DEFAULT_OVERWRITTEN_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_MAX_DELETE_FRACTION: f64 = 0.5;
/// How long the poller waits for a source to connect and list its refs.
pub const DEFAULT_PROBE_TIMEOUT_SECS: u64 = 10;
/// The poll function has 60 s for a whole tick; a probe gets at most this.
pub const MAX_PROBE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_STALE_AFTER_INTERVALS: u32 = 3;

/// Which triggers a repo follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    WebhookOnly,
    PollOnly,
    #[default]
    Both,
}

/// Webhook providers gitferry verifies deliveries from. Forgejo is Gitea's fork and signs the
/// same way, so `forgejo` is accepted as another name for `gitea`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Github,
    Gitlab,
    #[serde(alias = "forgejo")]
    Gitea,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        })
    }
}

/// What to do with a target ref that someone else moved (it is not where we last pushed it and
/// not an ancestor of the source's value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    /// Overwrite it with the source's value (a mirror is a copy).
    #[default]
    Force,
    /// Leave it alone and report it; the other refs are still mirrored.
    Keep,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub default_sync_policy: SyncPolicy,
    pub poll_interval_secs: u64,
    /// A repo not confirmed mirrored for this many of its poll intervals counts as stale.
    pub stale_after_intervals: u32,
    pub notify: NotifyConfig,
    pub repos: BTreeMap<String, RepoConfig>,
    /// Whole accounts whose repositories are discovered (`[accounts.NAME]`, see
    /// [`crate::accounts`]); their repositories join `repos` in [`crate::accounts::Catalog`].
    pub accounts: BTreeMap<String, crate::accounts::AccountConfig>,
    /// Account-level webhook secrets (`[webhooks.PROVIDER]`), at most one per provider.
    pub webhooks: Vec<WebhookConfig>,
}

/// Where notifications go (URLs resolved from the environment).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NotifyConfig {
    pub slack_webhook_url: Option<Secret>,
    pub generic_webhook_url: Option<Secret>,
}

/// One mirrored repository.
#[derive(Clone, Debug, PartialEq)]
pub struct RepoConfig {
    pub name: String,
    pub source: Remote,
    pub targets: Vec<TargetConfig>,
    pub sync_policy: SyncPolicy,
    pub poll_interval_secs: u64,
    /// How long the poller waits for the source (connect and refs listing).
    pub probe_timeout_secs: u64,
    pub refs: RefPatterns,
    pub prune: bool,
    pub max_delete_fraction: f64,
    pub overwritten_retention_days: u32,
    /// Mirror Git LFS objects too (`lfs = "auto" | true | false`, default `auto`).
    pub lfs: LfsMode,
    pub webhook: Option<WebhookConfig>,
    /// Set for a repository discovered through an account (`None`: a `[repos.*]` entry).
    pub discovered: Option<crate::accounts::Origin>,
}

/// One push target of a repository.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetConfig {
    /// Unique within the repo; defaults to the target's host (plus a number if needed).
    pub name: String,
    pub remote: Remote,
    pub divergence: Divergence,
    /// Create the repository through the target provider's API before the first push
    /// (account target templates with `create = true`).
    pub create: Option<crate::accounts::CreateTarget>,
}

impl TargetConfig {
    /// The key of this target's refs in the cache manifest: its URL (credentials redacted), not
    /// its name. Names default to the host, so pointing a target at another repository on the
    /// same host keeps the name; keyed by name, the new target would inherit the old one's
    /// recorded refs — a sync would call it up to date and never push to it.
    pub fn state_key(&self) -> String {
        self.remote.to_string()
    }
}

/// How deliveries are authenticated: a repository's own hook (`repos.NAME.webhook`) or an
/// account-level one (`[webhooks.PROVIDER]`).
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    pub provider: Provider,
    pub secret: Secret,
}

/// A secret value read from the environment. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The variable it came from (safe to show).
    pub env: String,
    value: String,
}

impl Secret {
    pub fn new(env: impl Into<String>, value: impl Into<String>) -> Secret {
        Secret {
            env: env.into(),
            value: value.into(),
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(${})", self.env)
    }
}

impl Config {
    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.get(name)
    }

    /// The account-level webhook secret of `provider`, if one is configured.
    pub fn account_webhook(&self, provider: Provider) -> Option<&WebhookConfig> {
        self.webhooks.iter().find(|w| w.provider == provider)
    }

    /// Load and validate a file, reading secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_owned(),
            errors: vec![ConfigError {
                line: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parse and validate `text` (named `file` in errors), resolving secret references with
    /// `env`. Every problem is reported, not just the first.
    pub fn parse(text: &str, file: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut v = Validator {
            text,
            errors: Vec::new(),
            env,
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                return Err(ConfigErrors {
                    file: file.to_owned(),
                    errors: vec![ConfigError {
                        line: e.span().map(|s| v.line(s.start)),
                        field: String::new(),
                        message: e.message().trim().to_owned(),
                    }],
                });
            }
        };
        let config = v.validate(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            v.errors.sort_by_key(|e| e.line);
            Err(ConfigErrors {
                file: file.to_owned(),
                errors: v.errors,
            })
        }
    }

    /// A stable digest of the configuration as written (for "config changed" detection).
    pub fn digest(text: &str) -> String {
        format!("{:016x}", crate::git::hash::fnv1a(text.as_bytes()))
    }
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `repos.app.targets[1].url`.
    pub field: String,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
            }
            if e.field.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.field, e.message)?;
            }
        }
        Ok(())
    }
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    default_sync_policy: SyncPolicy,
    poll_interval_secs: Option<Spanned<u64>>,
    probe_timeout_secs: Option<Spanned<u64>>,
    stale_after_intervals: Option<Spanned<u32>>,
    #[serde(default)]
    notify: RawNotify,
    #[serde(default)]
    repos: BTreeMap<Spanned<String>, RawRepo>,
    #[serde(default)]
    accounts: BTreeMap<Spanned<String>, crate::accounts::config::RawAccount>,
    #[serde(default)]
    webhooks: RawAccountWebhooks,
}

/// `[webhooks.PROVIDER]` tables.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccountWebhooks {
    github: Option<RawAccountWebhook>,
    gitlab: Option<RawAccountWebhook>,
    #[serde(alias = "forgejo")]
    gitea: Option<RawAccountWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccountWebhook {
    secret_env: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    slack_webhook_url_env: Option<Spanned<String>>,
    generic_webhook_url_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    url: Spanned<String>,
    token_env: Option<Spanned<String>>,
    username: Option<String>,
    ssh_key_env: Option<Spanned<String>>,
    ssh_key_passphrase_env: Option<Spanned<String>>,
    host_key: Option<Spanned<OneOrMany>>,
    known_hosts_env: Option<Spanned<String>>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    sync_policy: Option<SyncPolicy>,
    poll_interval_secs: Option<Spanned<u64>>,
    probe_timeout_secs: Option<Spanned<u64>>,
    refs: Option<Spanned<RawRefs>>,
    prune: Option<bool>,
    max_delete_fraction: Option<Spanned<f64>>,
    overwritten_retention_days: Option<u32>,
    lfs: Option<Spanned<RawLfs>>,
    webhook: Option<RawWebhook>,
}

/// `lfs = "auto"`, `lfs = true` or `lfs = false`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawLfs {
    Bool(bool),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    url: Spanned<String>,
    name: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    username: Option<String>,
    ssh_key_env: Option<Spanned<String>>,
    ssh_key_passphrase_env: Option<Spanned<String>>,
    host_key: Option<Spanned<OneOrMany>>,
    known_hosts_env: Option<Spanned<String>>,
    #[serde(default)]
    divergence: Divergence,
}

/// `host_key = "…"` or `host_key = ["…", "…"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// How a remote is reached, as a repo or a target writes it.
struct RemoteFields<'a> {
    url: &'a Spanned<String>,
    token_env: &'a Option<Spanned<String>>,
    username: &'a Option<String>,
    ssh_key_env: &'a Option<Spanned<String>>,
    ssh_key_passphrase_env: &'a Option<Spanned<String>>,
    host_key: &'a Option<Spanned<OneOrMany>>,
    known_hosts_env: &'a Option<Spanned<String>>,
}

impl RawRepo {
    fn remote_fields(&self) -> RemoteFields<'_> {
        RemoteFields {
            url: &self.url,
            token_env: &self.token_env,
            username: &self.username,
            ssh_key_env: &self.ssh_key_env,
            ssh_key_passphrase_env: &self.ssh_key_passphrase_env,
            host_key: &self.host_key,
            known_hosts_env: &self.known_hosts_env,
        }
    }
}

impl RawTarget {
    fn remote_fields(&self) -> RemoteFields<'_> {
        RemoteFields {
            url: &self.url,
            token_env: &self.token_env,
            username: &self.username,
            ssh_key_env: &self.ssh_key_env,
            ssh_key_passphrase_env: &self.ssh_key_passphrase_env,
            host_key: &self.host_key,
            known_hosts_env: &self.known_hosts_env,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRefs {
    #[serde(default = "default_includes")]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

fn default_includes() -> Vec<String> {
    RefPatterns::default().include
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    provider: Provider,
    secret_env: Spanned<String>,
}

pub(crate) struct Validator<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn error(&mut self, offset: usize, field: impl Into<String>, message: impl Into<String>) {
        let line = Some(self.line(offset));
        self.errors.push(ConfigError {
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    pub(crate) fn interval(&mut self, value: &Option<Spanned<u64>>, default: u64, field: &str) -> u64 {
        match value {
            Some(v) if *v.get_ref() < MIN_POLL_INTERVAL_SECS => {
                self.error(
                    v.span().start,
                    field,
                    format!(
                        "{} is below the minimum of {MIN_POLL_INTERVAL_SECS} seconds",
                        v.get_ref()
                    ),
                );
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    pub(crate) fn probe_timeout(&mut self, value: &Option<Spanned<u64>>, default: u64, field: &str) -> u64 {
        match value {
            Some(v) if !(1..=MAX_PROBE_TIMEOUT_SECS).contains(v.get_ref()) => {
                self.error(
                    v.span().start,
                    field,
                    format!("must be from 1 to {MAX_PROBE_TIMEOUT_SECS} seconds"),
                );
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    pub(crate) fn secret(&mut self, reference: &Spanned<String>, field: &str) -> Option<Secret> {
        let name = reference.get_ref();
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            self.error(
                reference.span().start,
                field,
                format!("{name:?} is not an environment variable name"),
            );
            return None;
        }
        match (self.env)(name) {
            Some(value) if !value.is_empty() => Some(Secret::new(name.clone(), value)),
            _ => {
                self.error(
                    reference.span().start,
                    field,
                    format!("environment variable {name} is not set (secrets are read from the environment)"),
                );
                None
            }
        }
    }

    fn remote(&mut self, f: &RemoteFields<'_>, field: &str) -> Option<Remote> {
        let (url, raw) = (f.url, f.url.get_ref());
        // Parse first: a location that cannot be used at all (`ssh://git@host/…`, whose user
        // name is not a credential) is reported for that reason, not for its userinfo. The
        // parse error shows the URL redacted.
        let remote = match Remote::parse(raw) {
            Ok(r) => r,
            Err(e) => {
                self.error(url.span().start, format!("{field}.url"), e.to_string());
                return None;
            }
        };
        if crate::git::remote::redact_url(raw) != *raw {
            self.error(
                url.span().start,
                format!("{field}.url"),
                "credentials do not belong in the file: remove them from the URL and set token_env",
            );
            return None;
        }
        if remote.is_ssh() {
            return self.ssh_remote(remote, f, field);
        }
        let ssh_fields = [
            ("ssh_key_env", f.ssh_key_env.as_ref().map(|s| s.span().start)),
            (
                "ssh_key_passphrase_env",
                f.ssh_key_passphrase_env.as_ref().map(|s| s.span().start),
            ),
            ("host_key", f.host_key.as_ref().map(|s| s.span().start)),
            ("known_hosts_env", f.known_hosts_env.as_ref().map(|s| s.span().start)),
        ];
        if let Some((name, Some(at))) = ssh_fields.into_iter().find(|(_, at)| at.is_some()) {
            self.error(
                at,
                format!("{field}.{name}"),
                "only used with ssh:// (or user@host:path) URLs",
            );
            return None;
        }
        let Some(token_env) = f.token_env else {
            return Some(remote);
        };
        let secret = self.secret(token_env, &format!("{field}.token_env"))?;
        if !remote.is_http() {
            self.error(
                token_env.span().start,
                format!("{field}.token_env"),
                "credentials are only used with http(s):// URLs",
            );
            return None;
        }
        Some(remote.with_credentials(Credentials {
            username: f.username.clone().unwrap_or_else(|| "x-access-token".into()),
            password: secret.expose().to_owned(),
        }))
    }

    /// `refs = { include, exclude }` of a repo (or an account's defaults) under `field`.
    pub(crate) fn refs(&mut self, refs: &Option<Spanned<RawRefs>>, field: &str) -> RefPatterns {
        match refs {
            None => RefPatterns::default(),
            Some(r) => {
                let patterns = &r.get_ref();
                let mut ok = RefPatterns::new(patterns.include.clone(), patterns.exclude.clone()).unwrap_or_else(|e| {
                    self.error(r.span().start, format!("{field}.refs"), e.to_string());
                    RefPatterns::default()
                });
                if ok.include.iter().chain(&ok.exclude).any(|p| p.matches('*').count() > 1) {
                    self.error(
                        r.span().start,
                        format!("{field}.refs"),
                        "a pattern may contain at most one '*'",
                    );
                    ok = RefPatterns::default();
                }
                ok
            }
        }
    }

    /// `max_delete_fraction` of a repo (or an account's defaults) under `field`.
    /// `lfs` of a repo (or an account's defaults) under `field`: `"auto"`, `true` or `false`.
    pub(crate) fn lfs(&mut self, value: &Option<Spanned<RawLfs>>, default: LfsMode, field: &str) -> LfsMode {
        match value.as_ref().map(|v| (v.span().start, v.get_ref())) {
            None => default,
            Some((_, RawLfs::Bool(true))) => LfsMode::On,
            Some((_, RawLfs::Bool(false))) => LfsMode::Off,
            Some((_, RawLfs::Text(t))) if t == "auto" => LfsMode::Auto,
            Some((at, RawLfs::Text(_))) => {
                self.error(at, format!("{field}.lfs"), "must be \"auto\", true or false");
                default
            }
        }
    }

    pub(crate) fn fraction(&mut self, value: &Option<Spanned<f64>>, field: &str) -> f64 {
        match value {
            Some(f) if !(0.0..=1.0).contains(f.get_ref()) => {
                self.error(
                    f.span().start,
                    format!("{field}.max_delete_fraction"),
                    "must be between 0.0 and 1.0",
                );
                DEFAULT_MAX_DELETE_FRACTION
            }
            Some(f) => *f.get_ref(),
            None => DEFAULT_MAX_DELETE_FRACTION,
        }
    }

    /// An SSH remote: its key (a secret reference, decoded now so a wrong passphrase is a
    /// validation error) and the host keys it trusts, which must cover its host.
    fn ssh_remote(&mut self, remote: Remote, f: &RemoteFields<'_>, field: &str) -> Option<Remote> {
        if let Some(t) = f.token_env {
            self.error(
                t.span().start,
                format!("{field}.token_env"),
                "ssh remotes authenticate with a key: use ssh_key_env",
            );
            return None;
        }
        let identity = self.ssh_identity(f, field)?;
        let mut keys = HostKeys::default();
        for pin in f.host_key.iter() {
            for item in pin.get_ref().items() {
                match HostKeys::parse_pin(item) {
                    Ok(k) => keys.extend(k),
                    Err(e) => self.error(pin.span().start, format!("{field}.host_key"), e),
                }
            }
        }
        if let Some(reference) = f.known_hosts_env {
            let name = format!("{field}.known_hosts_env");
            let lines = self.secret(reference, &name)?;
            match HostKeys::parse_known_hosts(lines.expose()) {
                Ok(k) => keys.extend(k),
                Err((line, e)) => self.error(
                    reference.span().start,
                    name,
                    format!("line {line} of ${}: {e}", reference.get_ref()),
                ),
            }
        }
        let (host, port) = remote.ssh_host()?;
        if !keys.covers(&host, port) {
            self.error(
                f.url.span().start,
                format!("{field}.host_key"),
                format!(
                    "no host key is pinned for {}: set host_key to the server's SHA256 fingerprint (as \
                     `ssh-keygen -lf` prints it, checked with the server's administrator) or known_hosts_env; \
                     gitferry never trusts a host key on first use",
                    crate::git::ssh::hostkeys::host_name(&host, port)
                ),
            );
            return None;
        }
        Some(remote.with_ssh_identity(identity).with_host_keys(keys))
    }

    fn ssh_identity(&mut self, f: &RemoteFields<'_>, field: &str) -> Option<SshIdentity> {
        let Some(key_env) = f.ssh_key_env else {
            let at = f
                .ssh_key_passphrase_env
                .as_ref()
                .map_or(f.url.span().start, |p| p.span().start);
            self.error(
                at,
                format!("{field}.ssh_key_env"),
                "ssh remotes need a private key: set ssh_key_env to the variable holding it",
            );
            return None;
        };
        let key = self.secret(key_env, &format!("{field}.ssh_key_env"))?;
        let passphrase = match f.ssh_key_passphrase_env {
            Some(p) => Some(self.secret(p, &format!("{field}.ssh_key_passphrase_env"))?),
            None => None,
        };
        match SshIdentity::from_pem(key.expose(), passphrase.as_ref().map(Secret::expose)) {
            Ok(identity) => Some(identity),
            Err(e) => {
                self.error(
                    key_env.span().start,
                    format!("{field}.ssh_key_env"),
                    format!("the key in ${}: {e}", key_env.get_ref()),
                );
                None
            }
        }
    }

    /// A target's name: the one given (checked), or one derived from its URL that no target in
    /// `seen` has yet.
    pub(crate) fn target_name(
        &mut self,
        given: &Option<Spanned<String>>,
        remote: &Remote,
        seen: &BTreeSet<String>,
        tfield: &str,
    ) -> String {
        match given {
            Some(n) => {
                if !valid_repo_name(n.get_ref()) {
                    self.error(
                        n.span().start,
                        format!("{tfield}.name"),
                        "use letters, digits, '-', '_' and '.'",
                    );
                }
                n.get_ref().clone()
            }
            None => default_target_name(remote, seen),
        }
    }

    fn validate(&mut self, raw: RawConfig) -> Config {
        let defaults = crate::accounts::config::Defaults {
            sync_policy: raw.default_sync_policy,
            poll_interval_secs: self.interval(
                &raw.poll_interval_secs,
                DEFAULT_POLL_INTERVAL_SECS,
                "poll_interval_secs",
            ),
            probe_timeout_secs: self.probe_timeout(
                &raw.probe_timeout_secs,
                DEFAULT_PROBE_TIMEOUT_SECS,
                "probe_timeout_secs",
            ),
        };
        let stale_after_intervals = match &raw.stale_after_intervals {
            Some(v) if *v.get_ref() == 0 => {
                self.error(v.span().start, "stale_after_intervals", "must be at least 1");
                DEFAULT_STALE_AFTER_INTERVALS
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_STALE_AFTER_INTERVALS,
        };
        let notify = NotifyConfig {
            slack_webhook_url: raw
                .notify
                .slack_webhook_url_env
                .as_ref()
                .and_then(|r| self.secret(r, "notify.slack_webhook_url_env")),
            generic_webhook_url: raw
                .notify
                .generic_webhook_url_env
                .as_ref()
                .and_then(|r| self.secret(r, "notify.generic_webhook_url_env")),
        };
        if raw.repos.is_empty() && raw.accounts.is_empty() {
            self.errors.push(ConfigError {
                line: None,
                field: "repos".into(),
                message: "no repositories configured (add a [repos.NAME] or an [accounts.NAME] table)".into(),
            });
        }
        let repos = raw
            .repos
            .into_iter()
            .filter_map(|(name, repo)| self.repo(name, &repo, &defaults))
            .map(|r| (r.name.clone(), r))
            .collect();
        let accounts = crate::accounts::config::validate(self, raw.accounts, &defaults);
        let webhooks = self.account_webhooks(&raw.webhooks);
        Config {
            default_sync_policy: raw.default_sync_policy,
            poll_interval_secs: defaults.poll_interval_secs,
            stale_after_intervals,
            notify,
            repos,
            accounts,
            webhooks,
        }
    }

    /// One `[repos.NAME]` table; `None` when its source is unusable (the errors are recorded).
    fn repo(
        &mut self,
        name: Spanned<String>,
        repo: &RawRepo,
        defaults: &crate::accounts::config::Defaults,
    ) -> Option<RepoConfig> {
        let (name_span, name) = (name.span().start, name.into_inner());
        let field = format!("repos.{name}");
        if !valid_repo_name(&name) {
            self.error(
                name_span,
                &field,
                "repository names use letters, digits, '-', '_' and '.', and do not start with '.'",
            );
        }
        let source = self.remote(&repo.remote_fields(), &field);
        let targets = self.targets(repo, source.as_ref(), &field);
        let refs = self.refs(&repo.refs, &field);
        let max_delete_fraction = self.fraction(&repo.max_delete_fraction, &field);
        let webhook = repo.webhook.as_ref().and_then(|w| {
            self.secret(&w.secret_env, &format!("{field}.webhook.secret_env"))
                .map(|secret| WebhookConfig {
                    provider: w.provider,
                    secret,
                })
        });
        let poll_interval_secs = self.interval(
            &repo.poll_interval_secs,
            defaults.poll_interval_secs,
            &format!("{field}.poll_interval_secs"),
        );
        let probe_timeout_secs = self.probe_timeout(
            &repo.probe_timeout_secs,
            defaults.probe_timeout_secs,
            &format!("{field}.probe_timeout_secs"),
        );
        Some(RepoConfig {
            name,
            source: source?,
            targets,
            sync_policy: repo.sync_policy.unwrap_or(defaults.sync_policy),
            poll_interval_secs,
            probe_timeout_secs,
            refs,
            prune: repo.prune.unwrap_or(true),
            max_delete_fraction,
            overwritten_retention_days: repo
                .overwritten_retention_days
                .unwrap_or(DEFAULT_OVERWRITTEN_RETENTION_DAYS),
            lfs: self.lfs(&repo.lfs, LfsMode::Auto, &field),
            webhook,
            discovered: None,
        })
    }

    /// A repository's `[[targets]]`: each usable, distinct from the others and from the source.
    fn targets(&mut self, repo: &RawRepo, source: Option<&Remote>, field: &str) -> Vec<TargetConfig> {
        let mut targets = Vec::new();
        let mut seen_urls = BTreeSet::new();
        let mut seen_names = BTreeSet::new();
        if repo.targets.is_empty() {
            self.error(
                repo.url.span().start,
                format!("{field}.targets"),
                "at least one target is needed ([[repos.NAME.targets]] with a url)",
            );
        }
        for (i, t) in repo.targets.iter().enumerate() {
            let tfield = format!("{field}.targets[{i}]");
            let Some(remote) = self.remote(&t.remote_fields(), &tfield) else {
                continue;
            };
            let problem = if !seen_urls.insert(remote.to_string()) {
                Some(format!("duplicate target {remote}"))
            } else if source.is_some_and(|s| s.to_string() == remote.to_string()) {
                Some("a target cannot be the source itself".to_owned())
            } else {
                None
            };
            if let Some(problem) = problem {
                self.error(t.url.span().start, format!("{tfield}.url"), problem);
                continue;
            }
            let name = self.target_name(&t.name, &remote, &seen_names, &tfield);
            if !seen_names.insert(name.clone()) {
                let at = t.name.as_ref().map_or(t.url.span().start, |n| n.span().start);
                self.error(at, format!("{tfield}.name"), format!("duplicate target name {name:?}"));
                continue;
            }
            targets.push(TargetConfig {
                name,
                remote,
                divergence: t.divergence,
                create: None,
            });
        }
        targets
    }

    fn account_webhooks(&mut self, raw: &RawAccountWebhooks) -> Vec<WebhookConfig> {
        [
            (Provider::Github, &raw.github),
            (Provider::Gitlab, &raw.gitlab),
            (Provider::Gitea, &raw.gitea),
        ]
        .into_iter()
        .filter_map(|(provider, hook)| {
            let hook = hook.as_ref()?;
            let secret = self.secret(&hook.secret_env, &format!("webhooks.{provider}.secret_env"))?;
            Some(WebhookConfig { provider, secret })
        })
        .collect()
    }
}

/// Repo and target names end up in store keys, metric dimensions and URLs.
pub fn valid_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) fn default_target_name(remote: &Remote, taken: &BTreeSet<String>) -> String {
    let base: String = match remote.location() {
        crate::git::remote::Location::Network(url) => url.host().unwrap_or("target").to_owned(),
        crate::git::remote::Location::Local(_) => "local".to_owned(),
    };
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !taken.contains(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken.contains(n))
        .expect("unbounded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("tok-123456".into()),
            "SECRET" => Some("hook-secret".into()),
            "SLACK" => Some("https://hooks.slack.invalid/x".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("mirrors.toml"), &env)
    }

    const GOOD: &str = r#"
default_sync_policy = "webhook_only"
poll_interval_secs = 120

[notify]
slack_webhook_url_env = "SLACK"

[repos.app]
url = "https://github.com/org/app.git"
token_env = "TOKEN"
webhook = { provider = "github", secret_env = "SECRET" }

[[repos.app.targets]]
url = "https://gitlab.example.com/m/app.git"
token_env = "TOKEN"
username = "oauth2"
divergence = "keep"

[[repos.app.targets]]
url = "git://backup.internal/app.git"

[repos.lib]
url = "/srv/git/lib.git"
sync_policy = "poll_only"
poll_interval_secs = 600
refs = { include = ["refs/heads/*"], exclude = ["refs/heads/tmp/*"] }
prune = false
max_delete_fraction = 0.25
[[repos.lib.targets]]
url = "/srv/mirror/lib.git"
"#;

    #[test]
    fn a_good_file_parses_with_defaults_applied() {
        let c = parse(GOOD).unwrap();
        let app = c.repo("app").unwrap();
        assert_eq!(app.sync_policy, SyncPolicy::WebhookOnly);
        assert_eq!(app.poll_interval_secs, 120);
        assert_eq!(app.targets.len(), 2);
        assert_eq!(app.targets[0].name, "gitlab.example.com");
        assert_eq!(app.targets[0].divergence, Divergence::Keep);
        assert_eq!(app.targets[0].remote.credentials().unwrap().username, "oauth2");
        assert_eq!(app.targets[1].divergence, Divergence::Force);
        assert_eq!(app.webhook.as_ref().unwrap().provider, Provider::Github);
        assert_eq!(app.refs, RefPatterns::default());
        assert!(app.prune);
        let lib = c.repo("lib").unwrap();
        assert_eq!(lib.sync_policy, SyncPolicy::PollOnly);
        assert_eq!(
            (lib.poll_interval_secs, lib.prune, lib.max_delete_fraction),
            (600, false, 0.25)
        );
        assert!(!lib.refs.matches("refs/heads/tmp/x") && lib.refs.matches("refs/heads/main"));
        assert!(c.notify.slack_webhook_url.is_some());
        // Secrets never show in Debug output.
        assert!(!format!("{c:?}").contains("tok-123456") && !format!("{c:?}").contains("hook-secret"));
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .to_string()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let e = errors("[repos.a]\nurl = \"/x\"\nurll = 1\n[[repos.a.targets]]\nurl = \"/y\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("mirrors.toml:3:") && e[0].contains("urll"), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_with_file_line_and_field() {
        let text = r#"poll_interval_secs = 10
[repos.a]
url = "ftp://host/x"
[[repos.a.targets]]
url = "https://h/t.git"
token_env = "MISSING_TOKEN"
[[repos.a.targets]]
url = "/dup"
[[repos.a.targets]]
url = "/dup"
[repos.b]
url = "https://user:pass@h/b.git"
poll_interval_secs = 30
[[repos.b.targets]]
url = "/t"
[repos.c]
url = "/c"
webhook = { provider = "gitea", secret_env = "NOPE" }
"#;
        let e = errors(text);
        let has = |line: usize, needle: &str| {
            assert!(
                e.iter()
                    .any(|l| l.starts_with(&format!("mirrors.toml:{line}:")) && l.contains(needle)),
                "missing line {line} {needle:?} in {e:#?}"
            )
        };
        has(1, "poll_interval_secs: 10 is below the minimum of 60");
        has(3, "repos.a.url: invalid remote");
        has(
            6,
            "repos.a.targets[0].token_env: environment variable MISSING_TOKEN is not set",
        );
        has(10, "repos.a.targets[2].url: duplicate target");
        has(12, "credentials do not belong in the file");
        has(13, "repos.b.poll_interval_secs: 30 is below");
        has(17, "repos.c.targets: at least one target");
        has(18, "repos.c.webhook.secret_env: environment variable NOPE is not set");
        assert!(!e.join("\n").contains("pass@"), "no secret in errors: {e:?}");
    }

    #[test]
    fn account_webhook_secrets_one_per_provider() {
        let text = "[webhooks.github]\nsecret_env = \"SECRET\"\n[webhooks.forgejo]\nsecret_env = \"TOKEN\"\n\
                    [repos.a]\nurl = \"/x\"\nwebhook = { provider = \"forgejo\", secret_env = \"SECRET\" }\n\
                    [[repos.a.targets]]\nurl = \"/y\"\n";
        let c = parse(text).unwrap();
        assert_eq!(
            c.account_webhook(Provider::Github).unwrap().secret.expose(),
            "hook-secret"
        );
        assert_eq!(
            c.account_webhook(Provider::Gitea).unwrap().secret.expose(),
            "tok-123456"
        );
        assert!(c.account_webhook(Provider::Gitlab).is_none());
        assert_eq!(c.repo("a").unwrap().webhook.as_ref().unwrap().provider, Provider::Gitea);
        assert!(!format!("{c:?}").contains("hook-secret"), "secrets never show in Debug");
        let e = errors(
            "[webhooks.gitlab]\nsecret_env = \"NOPE\"\n[repos.a]\nurl = \"/x\"\n[[repos.a.targets]]\nurl = \"/y\"\n",
        );
        assert!(
            e.iter().any(|l| l.starts_with("mirrors.toml:2:")
                && l.contains("webhooks.gitlab.secret_env: environment variable NOPE is not set")),
            "{e:?}"
        );
        let e = errors(
            "[webhooks.bitbucket]\nsecret_env = \"SECRET\"\n[repos.a]\nurl = \"/x\"\n[[repos.a.targets]]\nurl = \"/y\"\n",
        );
        assert!(
            e[0].starts_with("mirrors.toml:1") && e[0].contains("bitbucket"),
            "{e:?}"
        );
    }

    #[test]
    fn an_ssh_url_is_refused_for_what_it_is_not_for_its_user_name() {
        let e = errors("[repos.a]\nurl = \"ssh://git@github.com/org/a.git\"\n[[repos.a.targets]]\nurl = \"/y\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        // The user name is an account, not a credential: what is missing is the key.
        assert!(
            e[0].contains("repos.a.ssh_key_env: ssh remotes need a private key"),
            "{e:?}"
        );
        assert!(!e[0].contains("credentials do not belong"), "{e:?}");
        // A password is still refused as a credential, and never echoed.
        let e = errors("[repos.a]\nurl = \"https://u:pw-secret@h/a.git\"\n[[repos.a.targets]]\nurl = \"/y\"\n");
        assert!(
            e[0].contains("credentials do not belong") && !e[0].contains("pw-secret"),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let e = errors("[repos.a]\nurl = \"/x\"\nprune = maybe\n");
        assert!(e[0].starts_with("mirrors.toml:3"), "{e:?}");
    }

    #[test]
    fn lfs_is_auto_unless_set_to_true_or_false() {
        let repo = |lfs: &str| format!("[repos.a]\nurl = \"/x\"\n{lfs}\n[[repos.a.targets]]\nurl = \"/y\"\n");
        for (line, want) in [
            ("", LfsMode::Auto),
            ("lfs = \"auto\"", LfsMode::Auto),
            ("lfs = true", LfsMode::On),
            ("lfs = false", LfsMode::Off),
        ] {
            assert_eq!(parse(&repo(line)).unwrap().repo("a").unwrap().lfs, want, "{line}");
        }
        let e = errors(&repo("lfs = \"yes\""));
        assert!(
            e[0].starts_with("mirrors.toml:3") && e[0].contains("repos.a.lfs: must be \"auto\", true or false"),
            "{e:?}"
        );
        let e = errors(&repo("lfs = 1"));
        assert!(e[0].starts_with("mirrors.toml:3"), "{e:?}");
    }

    #[test]
    fn bad_names_and_fractions() {
        let e = errors(
            "[repos.\"../etc\"]\nurl = \"/x\"\nmax_delete_fraction = 2.0\n[[repos.\"../etc\".targets]]\nurl = \"/y\"\n",
        );
        assert!(e.iter().any(|l| l.contains("repository names")), "{e:?}");
        assert!(e.iter().any(|l| l.contains("between 0.0 and 1.0")), "{e:?}");
    }
}

#[cfg(test)]
mod ssh {
    use super::*;

    /// A throwaway ed25519 key made for this test with `ssh-keygen -N unit-pass-123`.
    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABBqWcm+zg\nY4KXeYfvZ+jG+RAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIEDnxrPBqpCIp6L5\nFZQBjB7BYLrKgdj+vaMfsVroACvFAAAAkM733wyUKelx/EOijgoApRvpUiTj29KQH/FfuO\n2zJI9NKj9GIPqMzwcVOZb+SlItR0huNK3CaY9T5dhfsYle80iiFckVf96jK2B9luAtGLXz\nEENkpb9V3iHusC8biPJFqKNDQ3C3LTX2LqetiAAtv5mYF6Sybgo/hpy2thNg9ZS9A91nZl\nGIptQoRJiG4r5+oA==\n-----END OPENSSH PRIVATE KEY-----\n";
    const FP: &str = "SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8";

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some(KEY.into()),
            "PASS" => Some("unit-pass-123".into()),
            "BAD_PASS" => Some("not-the-passphrase".into()),
            "KH" => Some(
                "# hosts\n[backup.internal]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf\n"
                    .into(),
            ),
            "BAD_KH" => Some("# hosts\nnot a line\n".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("m.toml"), &env)
    }

    fn errors(text: &str) -> String {
        let e = parse(text).unwrap_err().to_string();
        assert!(
            !e.contains("b3BlbnNzaC1rZXkt") && !e.contains("unit-pass-123"),
            "no secret in errors: {e}"
        );
        e
    }

    #[test]
    fn ssh_remotes_with_keys_and_pins() {
        let c = parse(&format!(
            "[repos.app]\nurl = \"git@github.com:acme/app.git\"\nssh_key_env = \"KEY\"\nssh_key_passphrase_env = \"PASS\"\n\
             [[repos.app.targets]]\nurl = \"ssh://git@backup.internal:2222/srv/app.git\"\nssh_key_env = \"KEY\"\n\
             ssh_key_passphrase_env = \"PASS\"\nhost_key = [\"{FP}\", \"SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM\"]\n\
             [[repos.app.targets]]\nurl = \"ssh://gerrit.internal:29418/app\"\nssh_key_env = \"KEY\"\nssh_key_passphrase_env = \"PASS\"\nknown_hosts_env = \"KH\"\n\
             host_key = \"[gerrit.internal]:29418 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let app = c.repo("app").unwrap();
        assert!(app.source.is_ssh() && app.source.ssh_options().unwrap().identity.is_some());
        assert_eq!(app.targets[0].name, "backup.internal");
        assert_eq!(
            app.targets[0].remote.to_string(),
            "ssh://git@backup.internal:2222/srv/app.git"
        );
        assert!(!format!("{c:?}").contains("b3BlbnNzaC1rZXkt"), "Debug shows no key");
    }

    #[test]
    fn ssh_mistakes_are_reported_at_their_line() {
        let e = errors(
            "[repos.a]\nurl = \"ssh://git@h.example/a.git\"\nssh_key_env = \"KEY\"\nssh_key_passphrase_env = \"BAD_PASS\"\nhost_key = \"SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8\"\n[[repos.a.targets]]\nurl = \"/t\"\n",
        );
        assert!(
            e.contains("m.toml:3: repos.a.ssh_key_env: the key in $KEY: ") && e.contains("wrong passphrase"),
            "{e}"
        );
        let e = errors(
            "[repos.a]\nurl = \"ssh://git@h.example/a.git\"\nssh_key_env = \"KEY\"\nhost_key = \"SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8\"\n[[repos.a.targets]]\nurl = \"/t\"\n",
        );
        assert!(e.contains("passphrase-protected"), "{e}");
        let e = errors(
            "[repos.a]\nurl = \"ssh://git@h.example:2200/a.git\"\nssh_key_env = \"KEY\"\nssh_key_passphrase_env = \"PASS\"\n[[repos.a.targets]]\nurl = \"/t\"\n",
        );
        assert!(
            e.contains("m.toml:2:") && e.contains("no host key is pinned for [h.example]:2200"),
            "{e}"
        );
        let e = errors(
            "[repos.a]\nurl = \"ssh://h.example/a.git\"\nssh_key_env = \"KEY\"\nssh_key_passphrase_env = \"PASS\"\nknown_hosts_env = \"BAD_KH\"\n[[repos.a.targets]]\nurl = \"/t\"\n",
        );
        assert!(
            e.contains("m.toml:5: repos.a.known_hosts_env: line 2 of $BAD_KH"),
            "{e}"
        );
        let e = errors(
            "[repos.a]\nurl = \"https://h/a.git\"\nhost_key = \"SHA256:x\"\n[[repos.a.targets]]\nurl = \"/t\"\n",
        );
        assert!(e.contains("m.toml:3: repos.a.host_key: only used with ssh://"), "{e}");
        let e = errors(
            "[repos.a]\nurl = \"ssh://h.example/a.git\"\nhost_key = \"SHA256:short\"\nssh_key_env = \"KEY\"\nssh_key_passphrase_env = \"PASS\"\n[[repos.a.targets]]\nurl = \"/t\"\n",
        );
        assert!(
            e.contains("m.toml:3: repos.a.host_key:") && e.contains("not a SHA256 fingerprint"),
            "{e}"
        );
        let e = errors("[repos.a]\nurl = \"ssh://git:pw-secret@h.example/a.git\"\n[[repos.a.targets]]\nurl = \"/t\"\n");
        assert!(
            e.contains("m.toml:2: repos.a.url:") && e.contains("carry no password") && !e.contains("pw-secret"),
            "{e}"
        );
        let e = errors("[repos.a]\nurl = \"git@github.com:a/b.git\"\n[[repos.a.targets]]\nurl = \"/t\"\n");
        assert!(e.contains("repos.a.ssh_key_env: ssh remotes need a private key"), "{e}");
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("hostile.toml"), &|_| Some("a-secret-value".into()))
    }

    #[test]
    fn deeply_nested_values_are_an_error_not_a_stack_overflow() {
        for depth in [1_000, 100_000] {
            let text = format!("x = {}{}\n", "[".repeat(depth), "]".repeat(depth));
            let e = parse(&text).expect_err("nested");
            assert!(!e.errors.is_empty());
            let text = format!("x = {}1{}\n", "{a=".repeat(depth), "}".repeat(depth));
            parse(&text).expect_err("nested tables");
        }
    }

    #[test]
    fn garbage_and_huge_files_are_errors_quickly() {
        let started = std::time::Instant::now();
        let garbage: String = (0..200_000u32)
            .map(|i| char::from_u32(i % 0x2000 + 1).unwrap_or('x'))
            .collect();
        parse(&garbage).expect_err("garbage");
        let many: String = (0..5_000)
            .map(|i| {
                format!(
                    "[repos.r{i}]\nurl = \"https://h/{i}.git\"\n[[repos.r{i}.targets]]\nurl = \"https://m/{i}.git\"\n"
                )
            })
            .collect();
        assert_eq!(parse(&many).expect("5,000 repos").repos.len(), 5_000);
        let long_string = format!("[repos.a]\nurl = \"https://h/{}.git\"\n", "a".repeat(5 << 20));
        let _ = parse(&long_string);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }
}
