//! `[accounts.NAME]` as written, and its validation (same `file:line: field: message` errors as
//! the rest of `mirrors.toml`). Kept apart from `config.rs` so the two evolve independently.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use super::{AccountConfig, CreateTarget, Glob, OwnerKind, RepoDefaults, TargetTemplate, Template, Vars};
use crate::config::{
    DEFAULT_OVERWRITTEN_RETENTION_DAYS, Divergence, MIN_POLL_INTERVAL_SECS, Provider, RawRefs, Secret, SyncPolicy,
    Validator, valid_repo_name,
};
use crate::git::Remote;

/// How often an account is listed when it does not say.
pub const DEFAULT_DISCOVER_INTERVAL_SECS: u64 = 3600;

/// The file's defaults an account's repositories fall back to.
pub(crate) struct Defaults {
    pub sync_policy: SyncPolicy,
    pub poll_interval_secs: u64,
    pub probe_timeout_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccount {
    provider: Spanned<Provider>,
    api_url: Option<Spanned<String>>,
    owner: Spanned<String>,
    owner_type: Option<Spanned<OwnerKind>>,
    #[serde(default)]
    include_subgroups: bool,
    token_env: Option<Spanned<String>>,
    username: Option<String>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    forks: Option<bool>,
    archived: Option<bool>,
    private: Option<bool>,
    discover_interval_secs: Option<Spanned<u64>>,
    name: Option<Spanned<String>>,
    source_url: Option<Spanned<String>>,
    #[serde(default)]
    wikis: bool,
    // Defaults for every discovered repository (as `[repos.NAME]` has them).
    sync_policy: Option<SyncPolicy>,
    poll_interval_secs: Option<Spanned<u64>>,
    probe_timeout_secs: Option<Spanned<u64>>,
    refs: Option<Spanned<RawRefs>>,
    prune: Option<bool>,
    max_delete_fraction: Option<Spanned<f64>>,
    overwritten_retention_days: Option<u32>,
    lfs: Option<Spanned<crate::config::RawLfs>>,
    #[serde(default)]
    targets: Vec<RawTargetTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetTemplate {
    url: Spanned<String>,
    name: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    username: Option<String>,
    #[serde(default)]
    divergence: Divergence,
    #[serde(default)]
    create: bool,
    provider: Option<Spanned<Provider>>,
    api_url: Option<Spanned<String>>,
    /// Repositories gitferry creates are private unless this says otherwise.
    private: Option<bool>,
}

/// The API a provider has on its public host.
fn default_api(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::Github => Some("https://api.github.com"),
        Provider::Gitlab => Some("https://gitlab.com/api/v4"),
        Provider::Gitea => None,
    }
}

/// The API of the host a target URL points at, when it is a public host we know.
fn api_for_host(provider: Provider, url: &str) -> Option<String> {
    let host = url.split_once("://")?.1.split('/').next()?.to_ascii_lowercase();
    match (provider, host.as_str()) {
        (Provider::Github, "github.com") => Some("https://api.github.com".into()),
        (Provider::Gitlab, "gitlab.com") => Some("https://gitlab.com/api/v4".into()),
        _ => None,
    }
}

/// Validate every `[accounts.NAME]`; an account whose API is unknown is left out (its errors
/// are reported).
pub(crate) fn validate(
    v: &mut Validator<'_>,
    raw: BTreeMap<Spanned<String>, RawAccount>,
    defaults: &Defaults,
) -> BTreeMap<String, AccountConfig> {
    let mut out = BTreeMap::new();
    for (name, a) in raw {
        if let Some(account) = account(v, name, &a, defaults) {
            out.insert(account.name.clone(), account);
        }
    }
    out
}

/// One account. The checks run in the order of the fields as documented, so the errors of one
/// file always come out in the same order.
fn account(v: &mut Validator<'_>, name: Spanned<String>, a: &RawAccount, defaults: &Defaults) -> Option<AccountConfig> {
    let (at, name) = (name.span().start, name.into_inner());
    let field = format!("accounts.{name}");
    if !valid_repo_name(&name) {
        v.error(
            at,
            &field,
            "account names use letters, digits, '-', '_' and '.', and do not start with '.'",
        );
    }
    let provider = *a.provider.get_ref();
    let api_url = account_api(v, a, &field);
    let (owner, owner_kind) = owner(v, a, &field);
    let token = a
        .token_env
        .as_ref()
        .and_then(|t| v.secret(t, &format!("{field}.token_env")));
    let include = globs(v, &a.include, &format!("{field}.include"));
    let exclude = globs(v, &a.exclude, &format!("{field}.exclude"));
    let discover_interval_secs = v.interval(
        &a.discover_interval_secs,
        DEFAULT_DISCOVER_INTERVAL_SECS,
        &format!("{field}.discover_interval_secs"),
    );
    let repo_name = a
        .name
        .as_ref()
        .and_then(|t| template(v, t, &format!("{field}.name"), false))
        .unwrap_or_else(|| Template::parse("{name}").expect("valid"));
    let source_url = a.source_url.as_ref().and_then(|t| {
        let tpl = template(v, t, &format!("{field}.source_url"), true)?;
        sample_remote(v, t, &tpl, &format!("{field}.source_url"))?;
        Some(tpl)
    });
    let defaults = repo_defaults(v, a, defaults, &field);
    let targets = target_templates(v, a, &field);
    Some(AccountConfig {
        name,
        provider,
        api_url: api_url?,
        owner,
        owner_kind,
        include_subgroups: a.include_subgroups,
        token,
        username: a.username.clone(),
        include,
        exclude,
        forks: a.forks.unwrap_or(false),
        archived: a.archived.unwrap_or(true),
        private: a.private.unwrap_or(true),
        discover_interval_secs,
        repo_name,
        source_url,
        wikis: a.wikis,
        defaults,
        targets,
    })
}

/// `api_url`, or the provider's public API when it has one.
fn account_api(v: &mut Validator<'_>, a: &RawAccount, field: &str) -> Option<String> {
    let provider = *a.provider.get_ref();
    match a.api_url.as_ref() {
        Some(u) => http_url(v, u, &format!("{field}.api_url")),
        None => match default_api(provider) {
            Some(u) => Some(u.to_owned()),
            None => {
                v.error(
                    a.provider.span().start,
                    format!("{field}.api_url"),
                    format!("{provider} has no public default: set api_url (e.g. https://gitea.example.com/api/v1)"),
                );
                None
            }
        },
    }
}

/// The owner's path and kind, checked against what the provider has (only GitLab has groups,
/// nested paths and subgroups).
fn owner(v: &mut Validator<'_>, a: &RawAccount, field: &str) -> (String, OwnerKind) {
    let provider = *a.provider.get_ref();
    let owner = a.owner.get_ref().trim_matches('/').to_owned();
    if owner.is_empty() || owner.contains(char::is_whitespace) || owner.contains("..") {
        v.error(a.owner.span().start, format!("{field}.owner"), "not an owner name");
    }
    let owner_kind = match a.owner_type.as_ref() {
        Some(k) => {
            let ok = matches!(
                (provider, k.get_ref()),
                (Provider::Gitlab, OwnerKind::Group | OwnerKind::User)
                    | (Provider::Github | Provider::Gitea, OwnerKind::Org | OwnerKind::User)
            );
            if !ok {
                let kinds = match provider {
                    Provider::Gitlab => "\"group\" or \"user\"",
                    _ => "\"org\" or \"user\"",
                };
                v.error(
                    k.span().start,
                    format!("{field}.owner_type"),
                    format!("{provider} owners are {kinds}"),
                );
            }
            *k.get_ref()
        }
        None if provider == Provider::Gitlab => OwnerKind::Group,
        None => OwnerKind::Org,
    };
    if owner.contains('/') && provider != Provider::Gitlab {
        v.error(
            a.owner.span().start,
            format!("{field}.owner"),
            "only GitLab owners (groups) have '/' in them",
        );
    }
    if a.include_subgroups && provider != Provider::Gitlab {
        v.error(
            a.owner.span().start,
            format!("{field}.include_subgroups"),
            "subgroups are a GitLab notion",
        );
    }
    (owner, owner_kind)
}

/// What every discovered repository gets unless the file says otherwise.
fn repo_defaults(v: &mut Validator<'_>, a: &RawAccount, defaults: &Defaults, field: &str) -> RepoDefaults {
    RepoDefaults {
        sync_policy: a.sync_policy.unwrap_or(defaults.sync_policy),
        poll_interval_secs: v.interval(
            &a.poll_interval_secs,
            defaults.poll_interval_secs,
            &format!("{field}.poll_interval_secs"),
        ),
        probe_timeout_secs: v.probe_timeout(
            &a.probe_timeout_secs,
            defaults.probe_timeout_secs,
            &format!("{field}.probe_timeout_secs"),
        ),
        refs: v.refs(&a.refs, field),
        prune: a.prune.unwrap_or(true),
        max_delete_fraction: v.fraction(&a.max_delete_fraction, field),
        overwritten_retention_days: a
            .overwritten_retention_days
            .unwrap_or(DEFAULT_OVERWRITTEN_RETENTION_DAYS),
        lfs: v.lfs(&a.lfs, crate::config::LfsMode::Auto, field),
    }
}

/// `[[accounts.NAME.targets]]`: at least one; a target with an error is left out.
fn target_templates(v: &mut Validator<'_>, a: &RawAccount, field: &str) -> Vec<TargetTemplate> {
    if a.targets.is_empty() {
        v.error(
            a.owner.span().start,
            format!("{field}.targets"),
            "at least one target template is needed ([[accounts.NAME.targets]] with a url)",
        );
    }
    let mut targets = Vec::new();
    let mut seen_names = BTreeSet::new();
    for (i, t) in a.targets.iter().enumerate() {
        if let Some(target) = target_template(v, t, &format!("{field}.targets[{i}]"), &mut seen_names) {
            targets.push(target);
        }
    }
    targets
}

/// One target template; `None` when it cannot be used (the error is reported).
fn target_template(
    v: &mut Validator<'_>,
    t: &RawTargetTemplate,
    tfield: &str,
    seen_names: &mut BTreeSet<String>,
) -> Option<TargetTemplate> {
    let (url, sample) = target_url(v, t, tfield)?;
    let token = target_token(v, t, &sample, tfield);
    let target_name = v.target_name(&t.name, &sample, seen_names, tfield);
    if !seen_names.insert(target_name.clone()) {
        v.error(
            t.url.span().start,
            format!("{tfield}.name"),
            format!("duplicate target name {target_name:?}"),
        );
        return None;
    }
    let create = if t.create {
        let Some(p) = t.provider.as_ref() else {
            v.error(
                t.url.span().start,
                format!("{tfield}.provider"),
                "create = true needs the target's provider (github, gitlab or gitea)",
            );
            return None;
        };
        create_target(v, t, p, &sample, token.as_ref(), tfield)
    } else {
        if let Some(p) = &t.provider {
            v.error(
                p.span().start,
                format!("{tfield}.provider"),
                "only used with create = true",
            );
        }
        None
    };
    Some(TargetTemplate {
        name: target_name,
        url,
        token,
        username: t.username.clone(),
        divergence: t.divergence,
        create,
    })
}

/// The URL template, which must tell repositories apart, and the remote it renders for a
/// sample repository.
fn target_url(v: &mut Validator<'_>, t: &RawTargetTemplate, tfield: &str) -> Option<(Template, Remote)> {
    let url = template(v, &t.url, &format!("{tfield}.url"), true)?;
    if !url.uses_name() {
        v.error(
            t.url.span().start,
            format!("{tfield}.url"),
            "a target template needs {name} or {path}: otherwise every repository would be pushed to one target",
        );
        return None;
    }
    let sample = sample_remote(v, &t.url, &url, &format!("{tfield}.url"))?;
    Some((url, sample))
}

/// The target's token (only http(s) targets use one).
fn target_token(v: &mut Validator<'_>, t: &RawTargetTemplate, sample: &Remote, tfield: &str) -> Option<Secret> {
    let token = t
        .token_env
        .as_ref()
        .and_then(|e| v.secret(e, &format!("{tfield}.token_env")));
    if t.token_env.is_some() && token.is_some() && !sample.is_http() {
        v.error(
            t.url.span().start,
            format!("{tfield}.token_env"),
            "credentials are only used with http(s):// URLs",
        );
    }
    token
}

/// `create = true` with its `provider`: the API to create through (named, or the public
/// host's), which needs a token and an http(s) target. `None` when the API is unknown.
fn create_target(
    v: &mut Validator<'_>,
    t: &RawTargetTemplate,
    p: &Spanned<Provider>,
    sample: &Remote,
    token: Option<&Secret>,
    tfield: &str,
) -> Option<CreateTarget> {
    let tprovider = *p.get_ref();
    let api = match &t.api_url {
        Some(u) => http_url(v, u, &format!("{tfield}.api_url")),
        None => match api_for_host(tprovider, t.url.get_ref()) {
            Some(u) => Some(u),
            None => {
                v.error(
                    p.span().start,
                    format!("{tfield}.api_url"),
                    "create = true on a self-hosted target needs its api_url",
                );
                None
            }
        },
    };
    if token.is_none() {
        v.error(
            t.url.span().start,
            format!("{tfield}.token_env"),
            "create = true needs a token that may create repositories",
        );
    }
    if !sample.is_http() {
        v.error(
            t.url.span().start,
            format!("{tfield}.url"),
            "create = true needs an http(s):// target template",
        );
    }
    api.map(|api_url| CreateTarget {
        provider: tprovider,
        api_url,
        private: t.private.unwrap_or(true),
        token: token.cloned(),
    })
}

fn globs(v: &mut Validator<'_>, raw: &[Spanned<String>], field: &str) -> Vec<Glob> {
    raw.iter()
        .filter_map(|g| match Glob::new(g.get_ref()) {
            Ok(glob) => Some(glob),
            Err(why) => {
                v.error(g.span().start, field, why);
                None
            }
        })
        .collect()
}

fn template(v: &mut Validator<'_>, raw: &Spanned<String>, field: &str, url: bool) -> Option<Template> {
    match Template::parse(raw.get_ref()) {
        Ok(t) => {
            if url && crate::git::remote::redact_url(raw.get_ref()) != *raw.get_ref() {
                v.error(
                    raw.span().start,
                    field,
                    "credentials do not belong in the file: remove them from the URL and set token_env",
                );
                return None;
            }
            Some(t)
        }
        Err(why) => {
            v.error(raw.span().start, field, why);
            None
        }
    }
}

/// The template rendered for a sample repository must be a valid remote.
fn sample_remote(v: &mut Validator<'_>, raw: &Spanned<String>, t: &Template, field: &str) -> Option<Remote> {
    let sample = Vars {
        owner: "owner".into(),
        name: "repo".into(),
        path: "owner/repo".into(),
    };
    match Remote::parse(&t.render(&sample)) {
        Ok(r) => Some(r),
        Err(e) => {
            v.error(raw.span().start, field, e.to_string());
            None
        }
    }
}

fn http_url(v: &mut Validator<'_>, raw: &Spanned<String>, field: &str) -> Option<String> {
    let u = raw.get_ref().trim_end_matches('/');
    let ok = (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() > "https://".len()
        && !u.contains(['?', '#', '@', ' ']);
    if !ok {
        v.error(
            raw.span().start,
            field,
            "an http(s):// URL without credentials or query string",
        );
        return None;
    }
    Some(u.to_owned())
}

/// `MIN_POLL_INTERVAL_SECS` also bounds how often an account may be listed.
const _: () = assert!(MIN_POLL_INTERVAL_SECS >= 60);
