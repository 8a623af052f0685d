//! The status pages: server-rendered HTML an operator can live in, on AWS (through the webhook
//! function's HTTP API) as locally. No JavaScript framework and no external assets: a page is one
//! HTML document with its CSS inline, charts are inline SVG, and everything shown is escaped
//! (nothing secret is in a status to begin with).
//!
//! * [`overview`] — every repository: counts by state, search, a state filter, grouped by
//!   account (the source's host and owner), trouble first, paginated so that 5,000 repositories
//!   are a light page;
//! * [`repo`] — one repository: its recent syncs with charts of duration and queue lag,
//!   per-target refs and results, overwritten-ref backups with the command that restores one,
//!   and a "sync now" button.
//!
//! Accessibility is part of the design, and tested: a skip link, native controls only (links,
//! buttons, inputs: all reachable by keyboard), a visible focus outline, table headers with
//! scope, and every badge colour at a contrast of at least 4.5:1 with its white text.

mod chart;
pub mod overview;
pub mod repo;

use crate::config::{Config, SyncPolicy};
use crate::status::{RepoStatus, State};

pub use overview::{PageQuery, overview};
pub use repo::{RepoPage, repo};

pub(crate) fn esc(s: &str) -> String {
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

/// A duration in milliseconds, short.
pub fn took(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000),
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

/// What an overview row knows of a repository beyond its status.
#[derive(Clone, Debug)]
pub struct Row<'a> {
    pub status: &'a RepoStatus,
    /// Not confirmed mirrored within `stale_after_intervals` of its poll interval.
    pub stale: bool,
    /// The account it belongs to: the source's host and owner (`github.com/acme`).
    pub group: String,
}

impl Row<'_> {
    /// The badge a row shows: its state, or `stale` for a repository that looks fine but was
    /// not confirmed for too long.
    pub fn shown(&self) -> Shown {
        match self.status.state {
            State::Success | State::New if self.stale => Shown::Stale,
            s => Shown::State(s),
        }
    }

    /// Trouble first: stalled, failed, stale, interrupted, syncing, new, ok.
    pub fn trouble(&self) -> u8 {
        match self.shown() {
            Shown::State(State::Stalled) => 0,
            Shown::State(State::Failed) => 1,
            Shown::Stale => 2,
            Shown::State(State::Interrupted) => 3,
            Shown::State(State::Syncing) => 4,
            Shown::State(State::New) => 5,
            Shown::State(State::Success) => 6,
        }
    }
}

/// A badge: a state, or stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    State(State),
    Stale,
}

/// Badge colours (white text on them; the contrast is tested).
pub const PALETTE: &[(&str, &str)] = &[
    ("ok", "#1a7f37"),
    ("failed", "#b3261e"),
    ("stalled", "#7a0f1f"),
    ("stale", "#8a4600"),
    ("interrupted", "#6f4e00"),
    ("syncing", "#0a5fc2"),
    ("new", "#57606a"),
];

impl Shown {
    pub fn label(self) -> &'static str {
        match self {
            Shown::Stale => "stale",
            Shown::State(State::Success) => "ok",
            Shown::State(State::Failed) => "failed",
            Shown::State(State::Stalled) => "stalled",
            Shown::State(State::Interrupted) => "interrupted",
            Shown::State(State::Syncing) => "syncing",
            Shown::State(State::New) => "new",
        }
    }

    pub fn badge(self) -> String {
        let label = self.label();
        let text = match self {
            Shown::State(State::Interrupted) => "interrupted — resuming",
            _ => label,
        };
        format!("<span class=\"badge b-{label}\">{text}</span>")
    }
}

/// Rows for `statuses` (in the configuration's terms: staleness, account).
pub fn rows<'a>(statuses: &'a [RepoStatus], config: &Config, now: u64) -> Vec<Row<'a>> {
    statuses
        .iter()
        .map(|status| {
            let repo = config.repo(&status.repo);
            let stale = repo.is_some_and(|r| {
                let limit = crate::clock::scaled_secs(r.poll_interval_secs * u64::from(config.stale_after_intervals));
                let seen = status.last_checked.or(match status.state {
                    State::New => None,
                    _ => Some(status.updated_at),
                });
                r.sync_policy != SyncPolicy::WebhookOnly
                    && seen.is_some_and(|t| now.saturating_sub(t) > limit.as_millis() as u64)
            });
            let group = repo
                .map(|r| account_of(&r.source.to_string()))
                .unwrap_or_else(|| "—".into());
            Row { status, stale, group }
        })
        .collect()
}

/// `https://github.com/acme/app.git` → `github.com/acme`; a local path → `local`.
pub fn account_of(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return "local".into();
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let mut parts = rest.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(host), Some(owner), Some(_)) => format!("{host}/{owner}"),
        (Some(host), _, _) => host.to_owned(),
        _ => "local".into(),
    }
}

/// The page around `body`: skip link, header, inline CSS.
pub(crate) fn shell(title: &str, refresh: bool, body: &str) -> String {
    let badges: String = PALETTE
        .iter()
        .map(|(name, colour)| format!(".b-{name}{{background:{colour}}}"))
        .collect();
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"30\">"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}\
         <title>{title}</title><style>{CSS}{badges}</style></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><a href=\"/\" class=\"home\">gitferry</a></header>\
         <main id=\"main\">{body}</main></body></html>\n",
        title = esc(title)
    )
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1f2328;background:#fff}\
header{padding:.6em 2em;border-bottom:1px solid #d0d7de}.home{font-weight:600;color:#1f2328;text-decoration:none}\
main{padding:1em 2em}h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}\
a{color:#0550ae}a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible,summary:focus-visible\
{outline:3px solid #0550ae;outline-offset:2px}\
.skip{position:absolute;left:-999px}.skip:focus{left:1em;top:.5em;background:#fff;padding:.3em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4em .5em;border-bottom:1px solid #d0d7de;vertical-align:top}\
th{font-weight:600}.group th{background:#f6f8fa;font-size:13px}\
.badge{color:#fff;border-radius:1em;padding:.1em .6em;font-size:12px;white-space:nowrap}\
.small{font-size:12px;color:#57606a}.err{color:#b3261e;max-width:32em;overflow-wrap:anywhere}.warn{color:#8a4600}\
.counts a{margin-right:1.2em}.counts b{font-size:1.2em}form.filter{margin:1em 0}\
code{font-size:12px;background:#f6f8fa;padding:.1em .3em;overflow-wrap:anywhere}\
.charts{display:flex;gap:2em;flex-wrap:wrap}figure{margin:0}figcaption{font-size:12px;color:#57606a}\
button{font:inherit;padding:.3em 1em}";

#[cfg(test)]
mod tests {
    use super::*;

    /// WCAG relative luminance of `#rrggbb`.
    fn luminance(hex: &str) -> f64 {
        let c = |i: usize| {
            let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5)
    }

    fn contrast(a: &str, b: &str) -> f64 {
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    #[test]
    fn every_badge_and_text_colour_reads_at_4_5_to_1() {
        for (name, colour) in PALETTE {
            let c = contrast(colour, "#ffffff");
            assert!(c >= 4.5, "{name} {colour}: {c:.2}");
        }
        for text in ["#1f2328", "#57606a", "#b3261e", "#8a4600", "#0550ae"] {
            let c = contrast(text, "#ffffff");
            assert!(c >= 4.5, "{text}: {c:.2}");
        }
        assert!(contrast("#57606a", "#f6f8fa") >= 4.5, "small text on the group header");
    }

    #[test]
    fn accounts_are_host_and_owner() {
        assert_eq!(account_of("https://github.com/acme/app.git"), "github.com/acme");
        assert_eq!(account_of("git://backup.internal/app.git"), "backup.internal");
        assert_eq!(account_of("/srv/git/app.git"), "local");
        assert_eq!(
            account_of("https://x-access-token:***@github.com/acme/app.git"),
            "github.com/acme"
        );
    }
}
