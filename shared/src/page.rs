//! The status page: server-rendered HTML, one row per repository, refreshing itself. No
//! JavaScript. Everything shown is escaped; nothing secret is in a status to begin with.

use crate::status::{RepoStatus, State};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// "3m ago" style.
pub fn ago(ms: Option<u64>, now: u64) -> String {
    let Some(ms) = ms else { return "never".into() };
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn badge(state: State) -> (&'static str, &'static str) {
    match state {
        State::New => ("new", "#888"),
        State::Syncing => ("syncing", "#1f6feb"),
        State::Success => ("ok", "#1a7f37"),
        State::Failed => ("failed", "#cf222e"),
        State::Interrupted => ("interrupted — resuming", "#9a6700"),
        State::Stalled => ("stalled", "#cf222e"),
    }
}

/// How far behind the source a repository may be: nothing when the last sync succeeded,
/// otherwise the time since it last did.
pub fn lag(s: &RepoStatus, now: u64) -> String {
    match s.state {
        State::Success => "up to date".into(),
        State::New => "not synced yet".into(),
        _ => match s.last_success_at {
            Some(t) => format!("{} behind at most", ago(Some(t), now).trim_end_matches(" ago")),
            None => "never synced".into(),
        },
    }
}

pub fn render(repos: &[RepoStatus], now: u64) -> String {
    let mut rows = String::new();
    for s in repos {
        let (label, color) = badge(s.state);
        let targets: Vec<String> = s
            .targets
            .iter()
            .map(|(name, t)| {
                let (l, c) = badge(t.state);
                let mut cell = format!(
                    "<span class=\"badge\" style=\"background:{c}\">{l}</span> {}",
                    esc(name)
                );
                for r in t.rejected.iter().chain(&t.diverged) {
                    cell.push_str(&format!(
                        "<div class=\"small\">{}: {}</div>",
                        esc(&r.name),
                        esc(&r.reason)
                    ));
                }
                cell
            })
            .collect();
        let backups: Vec<String> = s
            .overwritten
            .iter()
            .map(|b| {
                format!(
                    "<div class=\"small\">{} → {} ({})</div>",
                    esc(&b.git_ref),
                    esc(&b.backup_ref),
                    esc(&b.id[..b.id.len().min(8)])
                )
            })
            .collect();
        let lease = match (&s.lease, s.state) {
            (Some(l), State::Syncing) => format!("held by {}", esc(&l.owner)),
            (Some(l), State::Stalled) => format!("<span class=\"err\">{} stopped heartbeating</span>", esc(&l.owner)),
            (Some(l), _) => {
                let reclaim = l
                    .reclaimed_from
                    .as_deref()
                    .map(|p| format!(" (reclaimed from {})", esc(p)))
                    .unwrap_or_default();
                format!("<span class=\"small\">last: {}{reclaim}</span>", esc(&l.owner))
            }
            (None, _) => "—".into(),
        };
        let error = s.last_error.as_deref().map(esc).unwrap_or_default();
        let guard = s
            .guard
            .as_deref()
            .map(|g| format!("<div class=\"warn\">{}</div>", esc(g)))
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr data-repo=\"{repo}\" data-state=\"{label}\"><td><b>{repo}</b></td>\
             <td><span class=\"badge\" style=\"background:{color}\">{label}</span>{streak}</td>\
             <td>{success}</td><td>{checked}</td><td>{lag}</td><td>{targets}</td><td class=\"err\">{error}{guard}</td>\
             <td>{backups}</td><td>{lease}</td></tr>\n",
            repo = esc(&s.repo),
            streak = if s.consecutive_failures > 1 {
                format!(" ×{}", s.consecutive_failures)
            } else {
                String::new()
            },
            success = ago(s.last_success_at, now),
            checked = ago(s.last_checked, now),
            lag = lag(s, now),
            targets = targets.join("<br>"),
            backups = if backups.is_empty() {
                "—".into()
            } else {
                backups.join("")
            },
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"10\">\
         <title>gitferry status</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;color:#1f2328}}table{{border-collapse:collapse;width:100%}}\
         th,td{{text-align:left;padding:.5em;border-bottom:1px solid #d0d7de;vertical-align:top}}\
         .badge{{color:#fff;border-radius:1em;padding:.1em .6em;font-size:12px}}.small{{font-size:12px;color:#57606a}}\
         .err{{color:#cf222e;max-width:30em}}.warn{{color:#9a6700}}</style></head><body>\
         <h1>gitferry</h1><p class=\"small\">{n} repositories · refreshed every 10 s</p>\
         <table><thead><tr><th>repository</th><th>state</th><th>last success</th><th>last checked</th><th>lag</th><th>targets</th>\
         <th>last error</th><th>overwritten refs kept</th><th>lease</th></tr></thead><tbody>\n{rows}</tbody></table></body></html>\n",
        n = repos.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_escaped_and_complete() {
        let s = RepoStatus {
            repo: "app".into(),
            state: State::Failed,
            last_error: Some("<script>alert(1)</script>".into()),
            consecutive_failures: 3,
            ..Default::default()
        };
        let html = render(&[s], 0);
        assert!(html.contains("data-repo=\"app\"") && html.contains("data-state=\"failed\""));
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("×3"));
    }
}
