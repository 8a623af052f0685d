//! Whole accounts: every repository of a GitHub organisation or user, a GitLab group (with its
//! subgroups) or user, a Gitea/Forgejo organisation or user — discovered, their targets created,
//! renames followed, nothing ever deleted.
//!
//! * [`config`] — `[accounts.NAME]` in `mirrors.toml`: provider, API, owner, token, filters,
//!   per-repository defaults and target *templates* (`{owner}`, `{name}`, `{path}`).
//! * [`discover`] — one [`discover::Provider`] trait (list with pagination and ETags, get,
//!   create, rename) with GitHub, GitLab and Gitea behind it, and the courtesy every client of
//!   those APIs owes: conditional requests, `X-RateLimit-*` and `Retry-After` honoured.
//! * [`expand`] — discovered repositories + account defaults + templates → `RepoConfig`s.
//!
//! **One state object per account** (`state/accounts/{account}.json`, [`AccountState`]) holds
//! what discovery found: per repository its provider id (stable across renames), path, clone
//! URL and flags, and per listing page the ETag and the ids it held. It is written only when
//! something changed — a listing whose every page answers `304 Not Modified` costs no write, and
//! on GitHub no rate limit.
//!
//! **The effective repository set** is the file's `[repos.*]` ∪ the discovered repositories,
//! computed in one place, [`Catalog::config`]; the poller, the sync, the API, the pages and the
//! CLI all ask the catalog, so a discovered repository is handled exactly like a configured
//! one. Explicit `[repos.NAME]` entries win over discovered ones of the same name.
//!
//! **Never destroy automatically.** A repository that is no longer listed (deleted, moved away,
//! or the token lost access), or that was archived while archived repositories are filtered
//! out, is kept in the set, marked ([`SourceState`]), reported once (notification) and no
//! longer polled or synced; its targets and cache are left alone. A renamed one (same id, new
//! path) is followed: the source URL changes, and each target that gitferry created is renamed
//! through its provider's API; a target gitferry did not create keeps its URL and is reported.

pub mod config;
pub mod discover;
pub mod expand;
pub mod preview;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::{now_ms, scaled};
use crate::config::{Config, Divergence, Provider, RepoConfig, Secret, SyncPolicy};
use crate::git::RefPatterns;
use crate::keys;
use crate::notify::{Event, Notifier};
use crate::request::{SyncRequest, SyncTrigger};
use crate::store::{Condition, ObjectStore, StoreError};
use discover::{ApiError, Creation, RemoteRepo};

// ---- configuration model -------------------------------------------------------------------

/// What kind of owner an account lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    /// A GitHub or Gitea organisation.
    #[default]
    Org,
    /// A user (GitHub, GitLab, Gitea).
    User,
    /// A GitLab group (with `include_subgroups`, its subgroups too).
    Group,
}

/// A validated `[accounts.NAME]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountConfig {
    pub name: String,
    pub provider: Provider,
    /// The REST API root (`https://api.github.com`, `https://gitlab.example.com/api/v4`,
    /// `https://gitea.example.com/api/v1`), without a trailing `/`.
    pub api_url: String,
    pub owner: String,
    pub owner_kind: OwnerKind,
    pub include_subgroups: bool,
    pub token: Option<Secret>,
    /// HTTP user name for git with the token (default per provider).
    pub username: Option<String>,
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
    pub forks: bool,
    pub archived: bool,
    pub private: bool,
    pub discover_interval_secs: u64,
    /// gitferry's name for a discovered repository (default `{name}`).
    pub repo_name: Template,
    /// The source URL of a discovered repository (default: the clone URL the API reports).
    pub source_url: Option<Template>,
    pub wikis: bool,
    pub defaults: RepoDefaults,
    pub targets: Vec<TargetTemplate>,
}

/// Per-repository settings every discovered repository of an account gets.
#[derive(Clone, Debug, PartialEq)]
pub struct RepoDefaults {
    pub sync_policy: SyncPolicy,
    pub poll_interval_secs: u64,
    pub probe_timeout_secs: u64,
    pub refs: RefPatterns,
    pub prune: bool,
    pub max_delete_fraction: f64,
    pub overwritten_retention_days: u32,
    pub lfs: crate::config::LfsMode,
}

/// A target of every discovered repository, its URL a template.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetTemplate {
    pub name: String,
    pub url: Template,
    pub token: Option<Secret>,
    pub username: Option<String>,
    pub divergence: Divergence,
    pub create: Option<CreateTarget>,
}

/// How to create a missing target repository (`create = true`).
#[derive(Clone, Debug, PartialEq)]
pub struct CreateTarget {
    pub provider: Provider,
    pub api_url: String,
    pub private: bool,
    pub token: Option<Secret>,
}

/// Where a discovered repository came from (set on its `RepoConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub account: String,
    /// The source's path at its provider now (`acme/app`, `group/sub/app`).
    pub path: String,
    pub state: SourceState,
    /// The path it had before the last rename.
    pub renamed_from: Option<String>,
    /// Targets that kept their old URL after a rename (not created by gitferry).
    pub kept_targets: Vec<String>,
    pub description: Option<String>,
    pub default_branch: Option<String>,
    /// This is the wiki of the discovered repository (`{name}.wiki`, `wikis = true`).
    pub wiki: bool,
}

/// What became of a discovered repository's source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SourceState {
    /// Listed and mirrored.
    Active,
    /// Archived at the source while the account filters archived repositories out: the
    /// mirror is kept as it was and no longer synced.
    Archived { since: u64 },
    /// No longer listed (deleted, transferred, or the token lost access): kept, not synced.
    Vanished { since: u64, reason: String },
}

impl SourceState {
    /// Still mirrored?
    pub fn is_active(&self) -> bool {
        matches!(self, SourceState::Active)
    }

    pub fn describe(&self) -> String {
        match self {
            SourceState::Active => "active".into(),
            SourceState::Archived { .. } => "archived at the source: mirror kept, no longer synced".into(),
            SourceState::Vanished { reason, .. } => format!("{reason}: mirror kept, no longer synced"),
        }
    }
}

/// The values a template's placeholders take for one repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vars {
    /// The owner path (`acme`, `group/sub`).
    pub owner: String,
    /// The repository's own name (last path segment).
    pub name: String,
    /// The full path (`acme/app`).
    pub path: String,
}

/// A string with `{owner}`, `{name}` and `{path}` placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    raw: String,
}

impl Template {
    /// Refuses unknown placeholders and unbalanced braces.
    pub fn parse(raw: &str) -> Result<Template, String> {
        let mut rest = raw;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unbalanced '}}' in {raw:?}"));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("unbalanced '{{' in {raw:?}"));
            };
            let var = &after[..close];
            if !matches!(var, "owner" | "name" | "path") {
                return Err(format!(
                    "unknown placeholder {{{var}}}: templates know {{owner}}, {{name}} and {{path}}"
                ));
            }
            rest = &after[close + 1..];
        }
        Ok(Template { raw: raw.to_owned() })
    }

    pub fn render(&self, vars: &Vars) -> String {
        self.raw
            .replace("{owner}", &vars.owner)
            .replace("{name}", &vars.name)
            .replace("{path}", &vars.path)
    }

    /// Does it tell repositories apart?
    pub fn uses_name(&self) -> bool {
        self.raw.contains("{name}") || self.raw.contains("{path}")
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// A repository name pattern: `*` any run of characters, `?` one; case-insensitive. A pattern
/// with a `/` matches the path below the owner (`sub/*`), else the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() || pattern.len() > 200 {
            return Err("an empty or over-long pattern".into());
        }
        Ok(Glob(pattern.to_ascii_lowercase()))
    }

    pub fn matches(&self, name: &str, relative_path: &str) -> bool {
        let subject = if self.0.contains('/') { relative_path } else { name };
        glob_match(self.0.as_bytes(), subject.to_ascii_lowercase().as_bytes())
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with one backtrack point: linear for practical patterns.
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

impl AccountConfig {
    /// Is `owner` (from a webhook) this account's owner, or with subgroups one below it?
    pub fn concerns(&self, owner: &str) -> bool {
        let (o, mine) = (owner.to_ascii_lowercase(), self.owner.to_ascii_lowercase());
        o == mine || (self.include_subgroups && o.starts_with(&format!("{mine}/")))
    }

    /// Does a listed repository pass the account's filters (as first seen)?
    pub fn admits(&self, r: &RemoteRepo) -> Result<(), &'static str> {
        let relative = r.path.strip_prefix(&format!("{}/", self.owner)).unwrap_or(&r.path);
        if !self.include.is_empty() && !self.include.iter().any(|g| g.matches(&r.name, relative)) {
            return Err("not matched by include");
        }
        if self.exclude.iter().any(|g| g.matches(&r.name, relative)) {
            return Err("matched by exclude");
        }
        if r.fork && !self.forks {
            return Err("a fork (forks = false)");
        }
        if r.archived && !self.archived {
            return Err("archived (archived = false)");
        }
        if r.private && !self.private {
            return Err("private (private = false)");
        }
        if !self.include_subgroups && self.provider == Provider::Gitlab && relative.contains('/') {
            return Err("in a subgroup (include_subgroups = false)");
        }
        Ok(())
    }

    /// A digest of what decides which repositories are admitted: when it changes, the next
    /// discovery lists every page again instead of trusting ETags.
    pub fn filter_digest(&self) -> String {
        let text = format!(
            "{:?}|{:?}|{}|{}|{}|{}|{}|{:?}|{}",
            self.include,
            self.exclude,
            self.forks,
            self.archived,
            self.private,
            self.include_subgroups,
            self.owner,
            self.owner_kind,
            self.api_url
        );
        format!("{:016x}", crate::git::hash::fnv1a(text.as_bytes()))
    }

    /// gitferry's name for a repository: the name template, made a valid repository name.
    pub fn name_for(&self, vars: &Vars) -> String {
        let raw = self.repo_name.render(vars);
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .take(100)
            .collect();
        let cleaned = cleaned.trim_start_matches('.').to_owned();
        if cleaned.is_empty() { "repo".into() } else { cleaned }
    }

    /// The HTTP user name that goes with the token for git.
    pub fn git_username(&self) -> String {
        self.username
            .clone()
            .unwrap_or_else(|| default_username(self.provider).into())
    }
}

/// The user name a provider's tokens work with over HTTP basic auth.
pub fn default_username(provider: Provider) -> &'static str {
    match provider {
        Provider::Github => "x-access-token",
        Provider::Gitlab => "oauth2",
        Provider::Gitea => "gitferry",
    }
}

// ---- the state object ----------------------------------------------------------------------

/// `state/accounts/{account}.json`: what discovery knows of one account.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountState {
    /// When something last changed (Unix ms).
    pub changed_at: u64,
    /// The admission settings the pages were listed with ([`AccountConfig::filter_digest`]).
    pub filter_digest: String,
    /// Per listing page: its ETag and the ids it held (a `304` reuses them).
    pub pages: Vec<PageMemo>,
    /// The discovered repositories by gitferry name.
    pub repos: BTreeMap<String, DiscoveredRepo>,
    /// Rate-limited: list again from this time (Unix ms; 0: on schedule).
    pub retry_at: u64,
}

/// One listing page as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageMemo {
    pub etag: Option<String>,
    /// The ids of every repository on the page (admitted or not).
    pub ids: Vec<String>,
}

/// One discovered repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredRepo {
    #[serde(flatten)]
    pub source: RemoteRepo,
    pub first_seen: u64,
    #[serde(default)]
    pub state: Option<SourceState>,
    /// The path before the last rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// Targets whose URL keeps the placeholders' values from before a rename.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pinned: BTreeMap<String, Vars>,
}

impl DiscoveredRepo {
    pub fn vars(&self) -> Vars {
        self.source.vars()
    }

    pub fn source_state(&self) -> SourceState {
        self.state.clone().unwrap_or(SourceState::Active)
    }
}

impl RemoteRepo {
    pub fn vars(&self) -> Vars {
        Vars {
            owner: self.owner.clone(),
            name: self.name.clone(),
            path: self.path.clone(),
        }
    }
}

/// What applying a listing changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub added: Vec<String>,
    pub vanished: Vec<String>,
    pub archived: Vec<String>,
    /// (gitferry name, old path, new path)
    pub renamed: Vec<(String, String, String)>,
    pub returned: Vec<String>,
    /// Anything at all (flags, descriptions, page memos) that needs a write.
    pub dirty: bool,
}

impl AccountState {
    pub async fn load(store: &dyn ObjectStore, account: &str) -> Result<(AccountState, Option<String>), StoreError> {
        match store.get(&keys::account(account)).await? {
            Some(o) => Ok((serde_json::from_slice(&o.body).unwrap_or_default(), Some(o.etag))),
            None => Ok((AccountState::default(), None)),
        }
    }

    /// Apply a complete listing (`listed`: every repository the provider listed, admitted or
    /// not; `started`: when the listing began). Pure: the caller writes if `dirty`.
    pub fn apply(&mut self, account: &AccountConfig, listed: &[RemoteRepo], started: u64, now: u64) -> Changes {
        let mut changes = Changes::default();
        let by_id: BTreeMap<String, String> = self
            .repos
            .iter()
            .map(|(n, r)| (r.source.id.clone(), n.clone()))
            .collect();
        for r in listed {
            match by_id.get(&r.id) {
                Some(name) => {
                    let entry = self.repos.get_mut(name).expect("indexed");
                    entry.follow(name, account, r, now, &mut changes);
                }
                None => self.add(account, r, now, &mut changes),
            }
        }
        self.mark_vanished(listed, started, now, &mut changes);
        if changes.dirty {
            self.changed_at = now;
        }
        changes
    }

    /// A repository listed for the first time, if the account admits it, under a name of its
    /// own (`-2`, `-3`… when the template's name is taken).
    fn add(&mut self, account: &AccountConfig, r: &RemoteRepo, now: u64, changes: &mut Changes) {
        if account.admits(r).is_err() {
            return;
        }
        let mut name = account.name_for(&r.vars());
        if self.repos.contains_key(&name) {
            name = (2..)
                .map(|i| format!("{name}-{i}"))
                .find(|n| !self.repos.contains_key(n))
                .expect("unbounded");
        }
        self.repos.insert(
            name.clone(),
            DiscoveredRepo {
                source: r.clone(),
                first_seen: now,
                state: None,
                renamed_from: None,
                pinned: BTreeMap::new(),
            },
        );
        changes.added.push(name);
        changes.dirty = true;
    }

    /// Known repositories the listing no longer holds are marked vanished, once. Those first
    /// seen after the listing `started` (a concurrent discovery) are not missing from it.
    fn mark_vanished(&mut self, listed: &[RemoteRepo], started: u64, now: u64, changes: &mut Changes) {
        let ids: BTreeMap<&str, &RemoteRepo> = listed.iter().map(|r| (r.id.as_str(), r)).collect();
        for (name, entry) in self.repos.iter_mut() {
            if ids.contains_key(entry.source.id.as_str()) || entry.first_seen >= started {
                continue;
            }
            if !matches!(entry.state, Some(SourceState::Vanished { .. })) {
                entry.state = Some(SourceState::Vanished {
                    since: now,
                    reason: "no longer listed (deleted, moved away, or the token lost access)".into(),
                });
                changes.vanished.push(name.clone());
                changes.dirty = true;
            }
        }
    }
}

impl DiscoveredRepo {
    /// A known repository listed again (`name`: gitferry's name for it): follow a rename (the
    /// targets keep the old placeholders' values until renamed with it), an archival or a
    /// return, and any change of what the provider says about it.
    fn follow(&mut self, name: &str, account: &AccountConfig, r: &RemoteRepo, now: u64, changes: &mut Changes) {
        if self.source.path != r.path {
            let old = self.source.vars();
            for t in &account.targets {
                self.pinned.entry(t.name.clone()).or_insert_with(|| old.clone());
            }
            changes
                .renamed
                .push((name.to_owned(), self.source.path.clone(), r.path.clone()));
            self.renamed_from = Some(self.source.path.clone());
        }
        let was = self.source_state();
        let now_state = if r.archived && !account.archived {
            match was {
                SourceState::Archived { .. } => was.clone(),
                _ => SourceState::Archived { since: now },
            }
        } else {
            SourceState::Active
        };
        if now_state != was {
            match (&was, &now_state) {
                (_, SourceState::Archived { .. }) => changes.archived.push(name.to_owned()),
                (SourceState::Vanished { .. } | SourceState::Archived { .. }, SourceState::Active) => {
                    changes.returned.push(name.to_owned())
                }
                _ => {}
            }
            self.state = (!now_state.is_active()).then_some(now_state);
            changes.dirty = true;
        }
        if self.source != *r {
            self.source = r.clone();
            changes.dirty = true;
        }
    }
}

// ---- the effective repository set ----------------------------------------------------------

/// How long a process trusts the account states it read (writers in the same process update
/// it at once; other processes see a change within this).
pub const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Cached {
    at: Option<Instant>,
    states: BTreeMap<String, Arc<AccountState>>,
    effective: Option<Arc<Config>>,
}

/// The effective repository set: the file's `[repos.*]` ∪ discovered repositories. Cheap to
/// clone; clones share what they read.
#[derive(Clone, Debug)]
pub struct Catalog {
    base: Arc<Config>,
    store: Arc<dyn ObjectStore>,
    cached: Arc<Mutex<Cached>>,
}

impl Catalog {
    pub fn new(base: Arc<Config>, store: Arc<dyn ObjectStore>) -> Catalog {
        Catalog {
            base,
            store,
            cached: Arc::default(),
        }
    }

    /// The configuration as written.
    pub fn base(&self) -> &Arc<Config> {
        &self.base
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The effective configuration: `repos` holds every configured and discovered repository.
    /// Without accounts this is the file's configuration and reads nothing.
    pub async fn config(&self) -> Arc<Config> {
        if self.base.accounts.is_empty() {
            return self.base.clone();
        }
        {
            let cached = self.cached.lock().expect("not poisoned");
            if let (Some(at), Some(c)) = (cached.at, &cached.effective)
                && at.elapsed() < scaled(REFRESH)
            {
                return c.clone();
            }
        }
        let mut states = BTreeMap::new();
        for name in self.base.accounts.keys() {
            match AccountState::load(self.store.as_ref(), name).await {
                Ok((s, _)) => {
                    states.insert(name.clone(), Arc::new(s));
                }
                Err(e) => {
                    tracing::warn!(account = %name, error = %e, "account state unreadable: using what was known");
                    let known = self.cached.lock().expect("not poisoned").states.get(name).cloned();
                    states.insert(name.clone(), known.unwrap_or_default());
                }
            }
        }
        self.install(states)
    }

    /// One repository of the effective set.
    pub async fn repo(&self, name: &str) -> Option<RepoConfig> {
        if let Some(r) = self.base.repo(name) {
            return Some(r.clone());
        }
        if self.base.accounts.is_empty() {
            return None;
        }
        self.config().await.repo(name).cloned()
    }

    /// The account states behind the current view.
    pub async fn states(&self) -> BTreeMap<String, Arc<AccountState>> {
        self.config().await;
        self.cached.lock().expect("not poisoned").states.clone()
    }

    /// This process wrote `state` for `account`: use it at once.
    pub fn put_state(&self, account: &str, state: AccountState) {
        let mut states = self.cached.lock().expect("not poisoned").states.clone();
        states.insert(account.to_owned(), Arc::new(state));
        self.install(states);
    }

    fn install(&self, states: BTreeMap<String, Arc<AccountState>>) -> Arc<Config> {
        let effective = Arc::new(expand::effective(&self.base, &states));
        let mut cached = self.cached.lock().expect("not poisoned");
        cached.at = Some(Instant::now());
        cached.states = states;
        cached.effective = Some(effective.clone());
        effective
    }
}

// ---- discovery on the poll schedule --------------------------------------------------------

/// What discovery did in one tick.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Discovery {
    /// Accounts listed.
    pub listed: usize,
    /// API requests made (pages, including `304`s).
    pub requests: usize,
    /// Pages that answered `304 Not Modified`.
    pub not_modified: usize,
    pub added: usize,
    pub vanished: usize,
    pub renamed: usize,
    /// State objects written.
    pub writes: usize,
    /// Accounts that hit a rate limit (listed again when it lifts).
    pub rate_limited: usize,
}

/// The discovery slot of an account (like a repo's poll slot: spread by name).
fn discover_slot(account: &AccountConfig, t_ms: u64) -> u64 {
    let interval = (crate::clock::scaled_secs(account.discover_interval_secs).as_millis() as u64).max(1);
    let phase = crate::poll::phase(&format!("account:{}", account.name), interval);
    (t_ms + phase) / interval
}

/// Is `account` due for a listing in the tick `(from, now]`?
pub fn discovery_due(account: &AccountConfig, state: Option<&AccountState>, from: u64, now: u64) -> bool {
    match state {
        None => true,
        Some(s) if s.retry_at != 0 => s.retry_at <= now,
        Some(s) if s.changed_at == 0 && s.pages.is_empty() => true,
        Some(_) => discover_slot(account, from) != discover_slot(account, now),
    }
}

/// List the due accounts, record what changed (one write per changed account, none
/// otherwise), notify what vanished, was archived or renamed, and return the first-mirror
/// requests of new repositories. `force`: list every account now (startup, `gitferry discover`).
pub async fn discover_due(
    catalog: &Catalog,
    notifier: Option<&Notifier>,
    from: u64,
    now: u64,
    force: bool,
    deadline: Instant,
) -> Result<(Discovery, Vec<SyncRequest>), StoreError> {
    let mut tick = Discovery::default();
    let mut requests = Vec::new();
    for account in catalog.base().accounts.values() {
        let (state, etag) = AccountState::load(catalog.store().as_ref(), &account.name).await?;
        if !force && !discovery_due(account, etag.is_some().then_some(&state), from, now) {
            continue;
        }
        let added = discover_account(catalog, notifier, account, (state, etag), now, deadline, &mut tick).await?;
        requests.extend(added);
    }
    Ok((tick, requests))
}

/// List one account (whose state and its ETag were just read), record and report what
/// changed, and return the first-mirror requests of its new repositories.
pub async fn discover_account(
    catalog: &Catalog,
    notifier: Option<&Notifier>,
    account: &AccountConfig,
    (state, etag): (AccountState, Option<String>),
    now: u64,
    deadline: Instant,
    tick: &mut Discovery,
) -> Result<Vec<SyncRequest>, StoreError> {
    let store = catalog.store().clone();
    let exists = etag.is_some();
    tick.listed += 1;
    let provider = discover::for_account(account);
    // Repositories first seen at or after this (a concurrent webhook discovery) are not
    // missing from a listing that began before them.
    let started = now;
    let listing = discover::list_all(provider.as_ref(), &state, account, deadline).await;
    tick.requests += listing.requests;
    tick.not_modified += listing.not_modified;
    let (mut state, mut etag) = (state, etag);
    for attempt in 0..3 {
        let mut next = state.clone();
        let changes = match &listing.result {
            Ok(list) => {
                let mut c = apply_listing(account, list, &state, &mut next, started, now);
                c.dirty |= !exists;
                c
            }
            Err(e) => listing_failed(account, e, &state, &mut next, now, tick),
        };
        if !changes.dirty {
            break;
        }
        // Rename the targets gitferry created before the one write that records it all.
        follow_renames(account, &mut next, &changes, store.as_ref()).await;
        match write_state(store.as_ref(), &account.name, &next, etag.as_deref()).await {
            Ok(()) => return Ok(recorded(catalog, notifier, account, next, &changes, tick).await),
            Err(StoreError::PreconditionFailed { .. }) if attempt < 2 => {
                // Someone (a webhook-triggered discovery) wrote meanwhile: apply to theirs.
                (state, etag) = AccountState::load(store.as_ref(), &account.name).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Vec::new())
}

/// A complete listing applied to `next` (a copy of `state`): new filters, repositories, page
/// memos, and the end of a rate-limit wait all make it worth a write.
fn apply_listing(
    account: &AccountConfig,
    list: &discover::Listed,
    state: &AccountState,
    next: &mut AccountState,
    started: u64,
    now: u64,
) -> Changes {
    let refiltered = next.filter_digest != account.filter_digest();
    if refiltered {
        next.filter_digest = account.filter_digest();
    }
    let applied = next.apply(account, &list.repos, started, now);
    if next.pages != list.pages {
        next.pages = list.pages.clone();
    }
    if next.retry_at != 0 {
        next.retry_at = 0;
    }
    let dirty = refiltered || applied.dirty || next.pages != state.pages || state.retry_at != 0;
    Changes { dirty, ..applied }
}

/// A listing that failed: a rate limit is recorded in `next` (listed again when it lifts);
/// anything else waits for the next interval and writes nothing.
fn listing_failed(
    account: &AccountConfig,
    e: &ApiError,
    state: &AccountState,
    next: &mut AccountState,
    now: u64,
    tick: &mut Discovery,
) -> Changes {
    match e {
        ApiError::RateLimited { until_ms } => {
            tick.rate_limited += 1;
            tracing::warn!(account = %account.name, until_ms, "discovery rate-limited: listing again when the limit lifts");
            // The provider's time is the wall clock; the schedule's is `now`.
            next.retry_at = now + until_ms.saturating_sub(now_ms()).max(1);
            Changes {
                dirty: next.retry_at != state.retry_at,
                ..Changes::default()
            }
        }
        e => {
            tracing::warn!(account = %account.name, error = %e, "discovery failed: trying again at the next interval");
            Changes::default()
        }
    }
}

/// Write an account's state, conditional on the version it was read at (`None`: it had none).
async fn write_state(
    store: &dyn ObjectStore,
    account: &str,
    state: &AccountState,
    etag: Option<&str>,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(state).expect("account state serialises");
    let condition = match etag {
        Some(e) => Condition::IfMatch(e.to_owned()),
        None => Condition::IfAbsent,
    };
    store.put(&keys::account(account), body, condition).await.map(|_| ())
}

/// The state was written: count it, let this process see it at once, report what changed, and
/// return the first-mirror requests of the new repositories.
async fn recorded(
    catalog: &Catalog,
    notifier: Option<&Notifier>,
    account: &AccountConfig,
    state: AccountState,
    changes: &Changes,
    tick: &mut Discovery,
) -> Vec<SyncRequest> {
    tick.writes += 1;
    tick.added += changes.added.len();
    tick.vanished += changes.vanished.len();
    tick.renamed += changes.renamed.len();
    catalog.put_state(&account.name, state.clone());
    report(account, &state, changes, notifier).await;
    changes
        .added
        .iter()
        .map(|name| first_mirror(&account.name, name))
        .collect()
}

/// The queue's name for "discover this account now" (a message group of its own; not a valid
/// repository name, so it never collides with one).
pub const DISCOVERY_PREFIX: &str = "account:";

/// The request an account webhook's repository event becomes: the sync function lists the
/// account and mirrors what is new in the same run.
pub fn discovery_request(account: &str, provider: Provider, delivery_id: &str) -> SyncRequest {
    SyncRequest::webhook(
        &format!("{DISCOVERY_PREFIX}{account}"),
        provider,
        delivery_id,
        None,
        None,
    )
}

/// The account a queued request asks to discover, if it is one.
pub fn discovery_of(repo: &str) -> Option<&str> {
    repo.strip_prefix(DISCOVERY_PREFIX)
}

/// The request that mirrors a newly discovered repository the first time.
pub fn first_mirror(account: &str, repo: &str) -> SyncRequest {
    SyncRequest::new(
        repo,
        SyncTrigger::Manual {
            requested_by: format!("discovery:{account}"),
            id: format!("discovered-{account}"),
        },
    )
}

/// Rename the targets gitferry created for renamed repositories; unpin those renamed.
/// Returns whether anything was unpinned.
async fn follow_renames(
    account: &AccountConfig,
    state: &mut AccountState,
    changes: &Changes,
    store: &dyn ObjectStore,
) -> bool {
    let mut unpinned = false;
    for (name, _, _) in &changes.renamed {
        let created = CreatedTargets::load(store, name).await;
        let Some(entry) = state.repos.get_mut(name) else {
            continue;
        };
        let now_vars = entry.vars();
        for t in &account.targets {
            let (Some(create), Some(old)) = (&t.create, entry.pinned.get(&t.name).cloned()) else {
                continue;
            };
            if !created.targets.contains_key(&t.name) {
                tracing::warn!(repo = %name, target = %t.name, "source renamed; the target was not created by gitferry: it keeps its name");
                continue;
            }
            let (from, to) = (t.url.render(&old), t.url.render(&now_vars));
            let (Some((ns, old_name)), Some((_, new_name))) =
                (discover::split_repo_url(&from), discover::split_repo_url(&to))
            else {
                continue;
            };
            let api = discover::for_target(create);
            match api.rename_repo(&ns, &old_name, &new_name).await {
                Ok(()) => {
                    tracing::info!(repo = %name, target = %t.name, from = %old_name, to = %new_name, "renamed the target with its source");
                    entry.pinned.remove(&t.name);
                    unpinned = true;
                }
                Err(e) => {
                    tracing::warn!(repo = %name, target = %t.name, error = %e, "could not rename the target: it keeps its name")
                }
            }
        }
    }
    unpinned
}

async fn report(account: &AccountConfig, state: &AccountState, changes: &Changes, notifier: Option<&Notifier>) {
    let mut events = Vec::new();
    for name in &changes.vanished {
        events.push(Event::SourceGone {
            repo: name.clone(),
            account: account.name.clone(),
            message: state
                .repos
                .get(name)
                .map(|r| r.source_state().describe())
                .unwrap_or_default(),
        });
    }
    for name in &changes.archived {
        events.push(Event::SourceGone {
            repo: name.clone(),
            account: account.name.clone(),
            message: SourceState::Archived { since: 0 }.describe(),
        });
    }
    for (name, old, new) in &changes.renamed {
        let kept: Vec<&String> = state
            .repos
            .get(name)
            .map(|r| r.pinned.keys().collect())
            .unwrap_or_default();
        let message = if kept.is_empty() {
            format!("renamed from {old} to {new}: followed")
        } else {
            format!(
                "renamed from {old} to {new}: followed; target(s) {} keep their old name (not created by gitferry)",
                kept.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )
        };
        events.push(Event::SourceRenamed {
            repo: name.clone(),
            account: account.name.clone(),
            message,
        });
    }
    for e in &events {
        tracing::warn!(repo = e.repo(), text = %e.text(), "account change");
        if let Some(n) = notifier {
            n.send(e).await;
        }
    }
}

// ---- targets gitferry created --------------------------------------------------------------

/// `repos/{repo}/created.json`: which targets gitferry created (written by the sync; read when
/// the source is renamed, to know which targets to rename).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreatedTargets {
    /// Target name → the repository URL it was created at (credentials redacted).
    pub targets: BTreeMap<String, String>,
}

impl CreatedTargets {
    pub async fn load(store: &dyn ObjectStore, repo: &str) -> CreatedTargets {
        match store.get(&keys::created(repo)).await {
            Ok(Some(o)) => serde_json::from_slice(&o.body).unwrap_or_default(),
            _ => CreatedTargets::default(),
        }
    }
}

/// Target repositories created for one account's repositories per minute and per hour at
/// most, by every process together (GitHub allows a user 80 content-creating requests a minute
/// and 500 an hour; GitLab and Gitea document less): the rest wait for later syncs, which the
/// poll schedule brings — 500 new repositories are created over a little more than an hour.
pub const CREATIONS_PER_MINUTE: usize = 20;
pub const CREATIONS_PER_HOUR: usize = 400;

/// `state/accounts/{account}.creations.json`: when targets were created in the last hour.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CreationLog {
    /// Unix milliseconds.
    at: Vec<u64>,
}

/// One creation from the account's budget, shared through the store by every sync function
/// running at once (each is a process of its own: a per-process count let ten of them create
/// ten times the limit). `false` when the budget is spent for now. The write is conditional,
/// so two processes taking the last permit at once cannot both have it.
pub async fn creation_permit(store: &dyn ObjectStore, account: &str) -> Result<bool, StoreError> {
    let key = keys::creations(account);
    let (hour, minute) = (
        scaled(Duration::from_secs(3600)).as_millis() as u64,
        scaled(Duration::from_secs(60)).as_millis() as u64,
    );
    for _ in 0..32 {
        let (mut log, condition) = match store.get(&key).await? {
            Some(o) => (
                serde_json::from_slice::<CreationLog>(&o.body).unwrap_or_default(),
                Condition::IfMatch(o.etag),
            ),
            None => (CreationLog::default(), Condition::IfAbsent),
        };
        let now = now_ms();
        log.at.retain(|&t| now.saturating_sub(t) < hour);
        let last_minute = log.at.iter().filter(|&&t| now.saturating_sub(t) < minute).count();
        if last_minute >= CREATIONS_PER_MINUTE || log.at.len() >= CREATIONS_PER_HOUR {
            return Ok(false);
        }
        log.at.push(now);
        let body = serde_json::to_vec(&log).expect("serialises");
        match store.put(&key, body, condition).await {
            Ok(_) => return Ok(true),
            Err(StoreError::PreconditionFailed { .. }) => continue, // someone took one: count again
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Why a target could not be made to exist.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CreateError {
    pub message: String,
    pub transient: bool,
}

/// Before the first push to a `create = true` target: create the repository through the
/// target provider's API. "Already exists" is success (idempotent: a second run creates
/// nothing). Records what gitferry created.
pub async fn ensure_target(
    store: &dyn ObjectStore,
    repo: &RepoConfig,
    target: &crate::config::TargetConfig,
) -> Result<(), CreateError> {
    let Some(create) = &target.create else { return Ok(()) };
    let url = target.remote.to_string();
    let Some((namespace, name)) = discover::split_repo_url(&url) else {
        return Err(CreateError {
            message: format!("cannot tell namespace and name in {url}"),
            transient: false,
        });
    };
    let account = repo
        .discovered
        .as_ref()
        .map_or(repo.name.as_str(), |o| o.account.as_str());
    match creation_permit(store, account).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(CreateError {
                message: format!(
                    "creating {namespace}/{name} deferred: account {account} created {CREATIONS_PER_MINUTE} repositories in the last minute or {CREATIONS_PER_HOUR} in the last hour"
                ),
                transient: true,
            });
        }
        Err(e) => {
            return Err(CreateError {
                message: format!("creating {namespace}/{name}: the creation budget could not be read: {e}"),
                transient: e.is_transient(),
            });
        }
    }
    let origin = repo.discovered.as_ref();
    let spec = discover::CreateSpec {
        private: create.private,
        description: origin.and_then(|o| o.description.clone()),
        default_branch: origin.and_then(|o| o.default_branch.clone()),
    };
    let api = discover::for_target(create);
    match api.create_repo(&namespace, &name, &spec).await {
        Ok(Creation::New) => {
            tracing::info!(repo = %repo.name, target = %target.name, %namespace, %name, "created the target repository");
            let mut created = CreatedTargets::load(store, &repo.name).await;
            created.targets.insert(target.name.clone(), url);
            let body = serde_json::to_vec(&created).expect("serialises");
            if let Err(e) = store.put(&keys::created(&repo.name), body, Condition::Always).await {
                tracing::warn!(repo = %repo.name, error = %e, "could not record the created target");
            }
            Ok(())
        }
        Ok(Creation::Exists) => {
            tracing::debug!(repo = %repo.name, target = %target.name, "target repository exists");
            Ok(())
        }
        Err(e) => Err(CreateError {
            transient: e.is_transient(),
            message: format!("creating the target repository {namespace}/{name}: {e}"),
        }),
    }
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OwnerKind::Org => "org",
            OwnerKind::User => "user",
            OwnerKind::Group => "group",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose reads take a while: concurrent read-then-write sequences interleave.
    #[derive(Debug)]
    struct SlowReads(crate::store::fs::FsStore);

    #[async_trait::async_trait]
    impl ObjectStore for SlowReads {
        async fn get(&self, key: &str) -> Result<Option<crate::store::Object>, StoreError> {
            let got = self.0.get(key).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            got
        }
        async fn put(&self, key: &str, body: Vec<u8>, condition: Condition) -> Result<String, StoreError> {
            self.0.put(key, body, condition).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.0.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::store::ObjectInfo>, StoreError> {
            self.0.list(prefix).await
        }
        async fn download(&self, key: &str, dest: &std::path::Path) -> Result<crate::store::ObjectInfo, StoreError> {
            self.0.download(key, dest).await
        }
        async fn upload(&self, key: &str, src: &std::path::Path, condition: Condition) -> Result<String, StoreError> {
            self.0.upload(key, src, condition).await
        }
    }

    /// Four "processes" asking at once share one budget through the store: exactly
    /// `CREATIONS_PER_MINUTE` permits, however their reads and writes interleave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_creation_budget_is_shared_by_concurrent_processes() {
        let dir = std::env::temp_dir().join(format!("gitferry-budget-{}", std::process::id()));
        let store: Arc<dyn ObjectStore> = Arc::new(SlowReads(crate::store::fs::FsStore::new(dir.clone())));
        let asks: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut granted = 0;
                    for _ in 0..10 {
                        granted += usize::from(creation_permit(store.as_ref(), "acme").await.unwrap());
                    }
                    granted
                })
            })
            .collect();
        let mut granted = 0;
        for ask in asks {
            granted += ask.await.unwrap();
        }
        assert_eq!(granted, CREATIONS_PER_MINUTE);
        assert!(
            !creation_permit(store.as_ref(), "acme").await.unwrap(),
            "spent for this minute"
        );
        assert!(creation_permit(store.as_ref(), "other").await.unwrap(), "per account");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn templates_refuse_unknown_placeholders() {
        assert!(Template::parse("https://h/m/{name}.git").is_ok());
        assert!(Template::parse("https://h/{owner}/{path}").is_ok());
        let e = Template::parse("https://h/{repo}.git").unwrap_err();
        assert!(e.contains("unknown placeholder {repo}"), "{e}");
        assert!(Template::parse("https://h/{name").is_err());
        assert!(Template::parse("https://h/name}").is_err());
        let t = Template::parse("https://h/m/{owner}-{name}.git").unwrap();
        let v = Vars {
            owner: "acme".into(),
            name: "app".into(),
            path: "acme/app".into(),
        };
        assert_eq!(t.render(&v), "https://h/m/acme-app.git");
    }

    #[test]
    fn globs() {
        let g = Glob::new("svc-*").unwrap();
        assert!(g.matches("svc-api", "svc-api") && g.matches("SVC-x", "SVC-x") && !g.matches("api", "api"));
        let g = Glob::new("a?c").unwrap();
        assert!(g.matches("abc", "abc") && !g.matches("abbc", "abbc"));
        let g = Glob::new("sub/*").unwrap();
        assert!(g.matches("x", "sub/x") && !g.matches("x", "other/x"));
        assert!(Glob::new("*").unwrap().matches("", ""));
    }
}
