//! One repository's page: what it is, how its recent syncs went (charts of duration and queue
//! lag, failures marked), each target's refs and results, the overwritten-ref backups with the
//! command that restores one, and a "sync now" button (a form POST carrying a token derived
//! from the status secret, checked together with the request's origin).

use std::collections::BTreeMap;

use super::chart::{self, Bar};
use super::{Shown, ago, esc, lag, shell, took};
use crate::config::RepoConfig;
use crate::status::{History, RepoStatus, State, SyncRecord, TargetStatus};

/// Everything the repository page shows.
pub struct RepoPage<'a> {
    pub status: &'a RepoStatus,
    pub history: &'a History,
    pub config: &'a RepoConfig,
    /// The source's refs as last synced (name → id), from the cache's manifest.
    pub source_refs: &'a BTreeMap<String, String>,
    /// Per target name, the refs it is known to carry.
    pub target_refs: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub stale: bool,
    /// The form token of the "sync now" button.
    pub csrf: &'a str,
    pub now: u64,
}

/// The repository page.
pub fn repo(p: &RepoPage<'_>) -> String {
    let s = p.status;
    let shown = match s.state {
        State::Success | State::New if p.stale => Shown::Stale,
        state => Shown::State(state),
    };
    let body = format!(
        "<p class=\"small\"><a href=\"/\">all repositories</a></p>\
         <h1>{repo} {badge}</h1>{facts}{button}{charts}{syncs}{targets}{backups}",
        repo = esc(&s.repo),
        badge = shown.badge(),
        facts = facts(p),
        button = sync_button(&s.repo, p.csrf),
        charts = charts(&p.history.syncs),
        syncs = syncs(&p.history.syncs, p.now),
        targets = targets(p),
        backups = backups(s, p.now),
    );
    shell(&format!("{} · gitferry", s.repo), false, &body)
}

fn facts(p: &RepoPage<'_>) -> String {
    let s = p.status;
    let c = p.config;
    let mut rows = vec![
        ("source", format!("<code>{}</code>", esc(&c.source.to_string()))),
        (
            "sync policy",
            format!("{:?}, polled every {} s", c.sync_policy, c.poll_interval_secs),
        ),
        ("last checked", ago(s.last_checked, p.now)),
        ("last success", ago(s.last_success_at, p.now)),
        ("last change", ago(s.last_change_at, p.now)),
        ("lag", lag(s, p.now)),
        ("source refs", s.source_refs.to_string()),
    ];
    if let Some(e) = &s.last_error {
        rows.push(("last error", format!("<span class=\"err\">{}</span>", esc(e))));
    }
    if let Some(g) = &s.guard {
        rows.push(("deletion guard", format!("<span class=\"warn\">{}</span>", esc(g))));
    }
    if let Some(r) = &s.cache_rebuilt {
        rows.push(("cache", esc(r)));
    }
    if let Some(l) = &s.lease {
        let holder = if s.state == State::Stalled {
            format!("{} stopped heartbeating", esc(&l.owner))
        } else {
            format!("last held by {}", esc(&l.owner))
        };
        rows.push(("lease", holder));
    }
    let mut out = String::from("<table class=\"facts\"><tbody>");
    for (k, v) in rows {
        out.push_str(&format!("<tr><th scope=\"row\">{k}</th><td>{v}</td></tr>"));
    }
    out.push_str("</tbody></table>");
    out
}

fn sync_button(repo: &str, csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/repos/{repo}/sync\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><button type=\"submit\">Sync now</button></p></form>",
        repo = esc(repo),
        csrf = esc(csrf)
    )
}

fn charts(history: &[SyncRecord]) -> String {
    if history.is_empty() {
        return String::new();
    }
    let bar = |value: u64, r: &SyncRecord| Bar {
        value: value as f64,
        failed: r.state == State::Failed,
        label: format!("{} · {}", r.state.as_str(), took(value)),
    };
    let durations: Vec<Bar> = history.iter().map(|r| bar(r.duration_ms, r)).collect();
    let lags: Vec<Bar> = history.iter().map(|r| bar(r.queue_lag_ms.unwrap_or(0), r)).collect();
    format!(
        "<h2>Recent syncs</h2><div class=\"charts\">{}{}</div>",
        chart::bars("sync duration", &durations, |v| took(v as u64)),
        chart::bars("queue lag", &lags, |v| took(v as u64)),
    )
}

fn syncs(history: &[SyncRecord], now: u64) -> String {
    if history.is_empty() {
        return "<p class=\"small\">No sync changed anything or failed yet.</p>".into();
    }
    let mut out = String::from(
        "<table><thead><tr><th scope=\"col\">finished</th><th scope=\"col\">trigger</th>\
         <th scope=\"col\">result</th><th scope=\"col\">took</th><th scope=\"col\">refs</th>\
         <th scope=\"col\">problems</th></tr></thead><tbody>",
    );
    for r in history.iter().rev() {
        let refs: Vec<String> = r
            .changes
            .iter()
            .map(|c| format!("<code>{}</code> {:?}", esc(&c.name), c.kind).to_lowercase())
            .collect();
        let more = r.refs_changed.saturating_sub(r.changes.len());
        let more = match (refs.is_empty(), more) {
            (_, 0) => String::new(),
            (true, n) => format!("{n} ref{}", if n == 1 { "" } else { "s" }),
            (false, n) => format!("<br>and {n} more"),
        };
        let problems: Vec<String> = r
            .error
            .iter()
            .map(|e| esc(e))
            .chain(
                r.failed_targets
                    .iter()
                    .map(|t| format!("{}: {}", esc(&t.name), esc(&t.reason))),
            )
            .collect();
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td class=\"err\">{}</td></tr>",
            ago(Some(r.finished_at), now),
            r.trigger.map(|t| t.as_str()).unwrap_or("—"),
            Shown::State(r.state).badge(),
            took(r.duration_ms),
            refs.join("<br>"),
            more,
            problems.join("<br>"),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

fn targets(p: &RepoPage<'_>) -> String {
    let mut out = String::from("<h2>Targets</h2>");
    for t in &p.config.targets {
        let status = p.status.targets.get(&t.name).cloned().unwrap_or_default();
        let empty = BTreeMap::new();
        let refs = p.target_refs.get(&t.name).unwrap_or(&empty);
        out.push_str(&target(
            &t.name,
            &t.remote.to_string(),
            &status,
            refs,
            p.source_refs,
            p.now,
        ));
    }
    out
}

fn target(
    name: &str,
    url: &str,
    t: &TargetStatus,
    refs: &BTreeMap<String, String>,
    source: &BTreeMap<String, String>,
    now: u64,
) -> String {
    let issues: Vec<String> = t
        .rejected
        .iter()
        .map(|r| format!("rejected <code>{}</code>: {}", esc(&r.name), esc(&r.reason)))
        .chain(
            t.diverged
                .iter()
                .map(|r| format!("kept <code>{}</code>: {}", esc(&r.name), esc(&r.reason))),
        )
        .collect();
    let differ = source.iter().filter(|(n, id)| refs.get(*n) != Some(id)).count()
        + refs.keys().filter(|n| !source.contains_key(*n)).count();
    let listed: String = refs
        .iter()
        .map(|(n, id)| {
            let mark = if source.get(n) == Some(id) {
                ""
            } else {
                " (differs from the source)"
            };
            format!(
                "<li><code>{}</code> {}{mark}</li>",
                esc(n),
                esc(&id[..id.len().min(12)])
            )
        })
        .collect();
    format!(
        "<section aria-labelledby=\"t-{name}\"><h3 id=\"t-{name}\">{name} {badge}</h3>\
         <p class=\"small\"><code>{url}</code> · last push {push} · last checked {checked} · \
         {changed} refs changed by the last sync</p>{error}{issues}\
         <details><summary>{count} refs ({differ} differ from the source)</summary><ul>{listed}</ul></details></section>",
        name = esc(name),
        badge = Shown::State(t.state).badge(),
        url = esc(url),
        push = ago(t.last_success_at, now),
        checked = ago(t.last_checked, now),
        changed = t.refs_changed,
        error = t
            .last_error
            .as_deref()
            .map(|e| format!("<p class=\"err\">{}</p>", esc(e)))
            .unwrap_or_default(),
        issues = if issues.is_empty() {
            String::new()
        } else {
            format!("<p>{}</p>", issues.join("<br>"))
        },
        count = refs.len(),
    )
}

fn backups(s: &RepoStatus, now: u64) -> String {
    if s.overwritten.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>Overwritten refs kept</h2><p class=\"small\">Tips the source force-pushed or deleted, kept in \
         gitferry's cache. To bring one back, push it to the source under a new name (it then mirrors \
         to every target):</p><table><thead><tr><th scope=\"col\">ref</th><th scope=\"col\">tip</th>\
         <th scope=\"col\">kept since</th><th scope=\"col\">restore with</th></tr></thead><tbody>",
    );
    for b in &s.overwritten {
        let restored = format!("{}-restored", b.git_ref);
        out.push_str(&format!(
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td>\
             <td><code>gitferry restore {} {} --as {}</code></td></tr>",
            esc(&b.git_ref),
            esc(&b.id[..b.id.len().min(12)]),
            ago(Some(b.at), now),
            esc(&s.repo),
            esc(&b.backup_ref),
            esc(&restored),
        ));
    }
    out.push_str("</tbody></table>");
    out
}
