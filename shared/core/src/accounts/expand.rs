//! Discovered repositories + account defaults + target templates → `RepoConfig`s, merged with
//! the file's `[repos.*]` into the effective configuration. Explicit entries win; between two
//! accounts that discover the same name, the first account (by name) wins and the other is
//! logged. Pure: [`super::Catalog`] calls it whenever the account states change.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{AccountConfig, AccountState, DiscoveredRepo, Origin, SourceState};
use crate::config::{Config, RepoConfig, TargetConfig};
use crate::git::{Credentials, Remote};

/// The configuration with every discovered repository added to `repos`.
pub fn effective(base: &Config, states: &BTreeMap<String, Arc<AccountState>>) -> Config {
    let mut config = base.clone();
    for (account_name, account) in &base.accounts {
        let Some(state) = states.get(account_name) else {
            continue;
        };
        for (name, discovered) in &state.repos {
            if let Some(existing) = config.repos.get(name) {
                if existing.discovered.is_some() {
                    tracing::warn!(repo = %name, account = %account_name, "discovered by two accounts: the first keeps it");
                }
                continue; // explicit [repos.NAME] (or an earlier account) wins
            }
            match repo_config(account, name, discovered) {
                Ok(r) => {
                    let wiki = (account.wikis && discovered.source.has_wiki).then(|| wiki_config(&r));
                    config.repos.insert(name.clone(), r);
                    if let Some(w) = wiki.filter(|w| !config.repos.contains_key(&w.name)) {
                        config.repos.insert(w.name.clone(), w);
                    }
                }
                Err(why) => tracing::warn!(repo = %name, account = %account_name, why, "discovered repository skipped"),
            }
        }
    }
    config
}

/// One discovered repository as a `RepoConfig`.
pub fn repo_config(account: &AccountConfig, name: &str, d: &DiscoveredRepo) -> Result<RepoConfig, String> {
    let vars = d.vars();
    let source_url = match &account.source_url {
        Some(t) => t.render(&vars),
        None => d.source.clone_url.clone(),
    };
    if crate::git::remote::redact_url(&source_url) != source_url {
        return Err("the provider's clone URL carries credentials".into());
    }
    let mut source = Remote::parse(&source_url).map_err(|e| format!("source URL: {e}"))?;
    if let Some(token) = &account.token
        && source.is_http()
    {
        source = source.with_credentials(Credentials {
            username: account.git_username(),
            password: token.expose().to_owned(),
        });
    }
    let mut targets = Vec::new();
    let mut kept = Vec::new();
    for t in &account.targets {
        let target_vars = match d.pinned.get(&t.name) {
            Some(old) => {
                kept.push(t.name.clone());
                old
            }
            None => &vars,
        };
        let url = t.url.render(target_vars);
        let mut remote = Remote::parse(&url).map_err(|e| format!("target {}: {e}", t.name))?;
        if let Some(token) = &t.token
            && remote.is_http()
        {
            remote = remote.with_credentials(Credentials {
                username: t.username.clone().unwrap_or_else(|| {
                    t.create
                        .as_ref()
                        .map_or("x-access-token", |c| super::default_username(c.provider))
                        .to_owned()
                }),
                password: token.expose().to_owned(),
            });
        }
        targets.push(TargetConfig {
            name: t.name.clone(),
            remote,
            divergence: t.divergence,
            create: t.create.clone(),
        });
    }
    let d_ = &account.defaults;
    Ok(RepoConfig {
        name: name.to_owned(),
        source,
        targets,
        sync_policy: d_.sync_policy,
        poll_interval_secs: d_.poll_interval_secs,
        probe_timeout_secs: d_.probe_timeout_secs,
        refs: d_.refs.clone(),
        prune: d_.prune,
        max_delete_fraction: d_.max_delete_fraction,
        overwritten_retention_days: d_.overwritten_retention_days,
        lfs: d_.lfs,
        // Account hooks are authenticated by the provider's `[webhooks.PROVIDER]` secret.
        webhook: None,
        discovered: Some(Origin {
            account: account.name.clone(),
            path: d.source.path.clone(),
            state: d.source_state(),
            renamed_from: d.renamed_from.clone(),
            kept_targets: kept,
            description: d.source.description.clone(),
            default_branch: d.source.default_branch.clone(),
            wiki: false,
        }),
    })
}

/// The wiki of a discovered repository (`wikis = true`): `{name}.wiki`, from the source's
/// `….wiki.git` to each target's `….wiki.git` — the layout GitHub, GitLab and Gitea share.
/// Never created through an API (no provider creates a wiki repository that way: it comes
/// with the project, or with its first page); a target without one reports the push's error.
/// A source that has no wiki repository yet (wiki enabled, no page written) is a no-op.
fn wiki_config(repo: &RepoConfig) -> RepoConfig {
    let mut wiki = repo.clone();
    wiki.name = format!("{}.wiki", repo.name);
    wiki.source = repo.source.with_path_suffix(".wiki.git");
    for t in &mut wiki.targets {
        t.remote = t.remote.with_path_suffix(".wiki.git");
        t.create = None;
    }
    // A wiki has one branch and no tags worth a separate policy: the repository's settings.
    if let Some(origin) = &mut wiki.discovered {
        origin.wiki = true;
        origin.description = None;
    }
    wiki
}

impl RepoConfig {
    /// Is the repository mirrored at all? (A discovered one whose source vanished or was
    /// archived is kept, not synced.)
    pub fn active(&self) -> bool {
        self.discovered.as_ref().is_none_or(|o| o.state.is_active())
    }

    /// Why it is not mirrored any more, when it is not.
    pub fn frozen_because(&self) -> Option<String> {
        self.discovered
            .as_ref()
            .filter(|o| !matches!(o.state, SourceState::Active))
            .map(|o| o.state.describe())
    }
}
