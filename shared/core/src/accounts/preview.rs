//! `gitferry discover ACCOUNT`: what discovery would do now — which repositories would be
//! mirrored, where, which targets would be created, what is filtered out and why, what is new,
//! gone or renamed — without writing anything (the listing is applied to a copy of the state).

use std::time::Instant;

use serde::Serialize;

use super::{AccountConfig, AccountState, CreatedTargets, discover, expand};
use crate::store::ObjectStore;

/// The dry run's answer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Preview {
    pub account: String,
    /// Every repository the account would mirror (gitferry name order).
    pub repos: Vec<PreviewRepo>,
    /// Listed but filtered out: (path, why).
    pub skipped: Vec<(String, String)>,
    pub new: Vec<String>,
    pub gone: Vec<String>,
    /// (name, old path, new path)
    pub renamed: Vec<(String, String, String)>,
    /// API requests the listing took, and how many answered `304`.
    pub requests: usize,
    pub not_modified: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PreviewRepo {
    pub name: String,
    pub path: String,
    /// The source URL, credentials redacted.
    pub source: String,
    /// `active`, or why it is kept and no longer synced.
    pub state: String,
    pub targets: Vec<PreviewTarget>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PreviewTarget {
    pub name: String,
    pub url: String,
    /// `create = true` and gitferry has not created it yet: created before the first push
    /// (nothing happens when it exists already).
    pub create: bool,
}

/// List `account` and describe the outcome; writes nothing. The error says what to fix.
pub async fn preview(store: &dyn ObjectStore, account: &AccountConfig, deadline: Instant) -> Result<Preview, String> {
    let (state, _) = AccountState::load(store, &account.name)
        .await
        .map_err(|e| format!("reading the account's state: {e}"))?;
    let provider = discover::for_account(account);
    let listing = discover::list_all(provider.as_ref(), &state, account, deadline).await;
    let listed = listing.result.map_err(|e| match e {
        discover::ApiError::RateLimited { until_ms } => {
            format!("the provider's rate limit is exhausted; try again after {until_ms} (Unix ms)")
        }
        e => format!("listing {}'s repositories at {}: {e}", account.owner, account.api_url),
    })?;
    let mut next = state.clone();
    let now = crate::clock::now_ms();
    let changes = next.apply(account, &listed.repos, now, now);
    let skipped = listed
        .repos
        .iter()
        .filter(|r| !next.repos.values().any(|d| d.source.id == r.id))
        .filter_map(|r| account.admits(r).err().map(|why| (r.path.clone(), why.to_owned())))
        .collect();
    let mut repos = Vec::new();
    for (name, d) in &next.repos {
        let config = expand::repo_config(account, name, d)?;
        let created = CreatedTargets::load(store, name).await;
        repos.push(PreviewRepo {
            name: name.clone(),
            path: d.source.path.clone(),
            source: config.source.to_string(),
            state: d.source_state().describe(),
            targets: config
                .targets
                .iter()
                .map(|t| PreviewTarget {
                    name: t.name.clone(),
                    url: t.remote.to_string(),
                    create: t.create.is_some() && !created.targets.contains_key(&t.name),
                })
                .collect(),
        });
    }
    Ok(Preview {
        account: account.name.clone(),
        repos,
        skipped,
        new: changes.added,
        gone: changes.vanished.into_iter().chain(changes.archived).collect(),
        renamed: changes.renamed,
        requests: listing.requests,
        not_modified: listing.not_modified,
    })
}
