//! The human status table of `gitferry status` and `gitferry demo`.

use gitferry_core::page::{ago, lag};
use gitferry_core::status::{RepoStatus, State};

pub fn render(statuses: &[RepoStatus], now: u64) -> String {
    let state = |s: State| match s {
        State::New => "new",
        State::Syncing => "syncing",
        State::Success => "ok",
        State::Failed => "FAILED",
        State::Interrupted => "interrupted-resuming",
        State::Stalled => "STALLED",
    };
    let mut rows = vec![
        [
            "REPO",
            "STATE",
            "LAST SUCCESS",
            "CHECKED",
            "LAG",
            "TARGETS",
            "LAST ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in statuses {
        let targets: Vec<String> = s
            .targets
            .iter()
            .map(|(n, t)| format!("{n}:{}", state(t.state)))
            .collect();
        let mut st = state(s.state).to_owned();
        if s.consecutive_failures > 1 {
            st.push_str(&format!(" x{}", s.consecutive_failures));
        }
        let mut error = s.last_error.clone().unwrap_or_default();
        if error.chars().count() > 80 {
            error = error.chars().take(77).collect::<String>() + "...";
        }
        rows.push(vec![
            s.repo.clone(),
            st,
            ago(s.last_success_at, now),
            ago(s.last_checked, now),
            lag(s, now),
            if targets.is_empty() {
                "-".into()
            } else {
                targets.join(" ")
            },
            error,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
