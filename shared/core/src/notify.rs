//! Notifications: Slack-compatible incoming webhooks and a generic JSON webhook.
//!
//! What is sent is decided from status transitions (see `crate::status::Transition`), so a
//! failing mirror notifies once when it starts failing and once when it recovers — not on every
//! retry — and a mirror that changed says what changed (at most 10 refs with short ids, then
//! "and N more"). Sending never fails a sync: errors and timeouts are logged and counted, and
//! one shared HTTP client with a short timeout is used for all of them. Messages never contain
//! credentials: they are built from redacted remotes and scrubbed error texts only.

use std::time::Duration;

use serde::Serialize;

use crate::config::NotifyConfig;
use crate::git::{DeltaKind, RefDelta};
use crate::status::{Backup, LfsCount, RefIssue};

/// Something worth telling people about a repository.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The source changed and the targets were updated.
    Changed {
        repo: String,
        changes: Vec<RefDelta>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        overwritten: Vec<Backup>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        diverged: Vec<RefIssue>,
        /// Git LFS objects, by target (only targets that had any).
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        lfs: std::collections::BTreeMap<String, LfsCount>,
    },
    /// The first failure of a streak.
    Failed {
        repo: String,
        error: String,
        transient: bool,
    },
    /// Success after `after_failures` failed attempts.
    Recovered { repo: String, after_failures: u32 },
    /// The mass-deletion guard held back a prune.
    GuardTripped { repo: String, message: String },
    /// A discovered repository's source was deleted, archived or became inaccessible: its
    /// mirror is kept (accounts never delete anything).
    SourceGone {
        repo: String,
        account: String,
        message: String,
    },
    /// A discovered repository's source was renamed.
    SourceRenamed {
        repo: String,
        account: String,
        message: String,
    },
}

impl Event {
    pub fn repo(&self) -> &str {
        match self {
            Event::Changed { repo, .. }
            | Event::Failed { repo, .. }
            | Event::Recovered { repo, .. }
            | Event::GuardTripped { repo, .. }
            | Event::SourceGone { repo, .. }
            | Event::SourceRenamed { repo, .. } => repo,
        }
    }

    /// The human text (also the Slack message).
    pub fn text(&self) -> String {
        match self {
            Event::Changed {
                repo,
                changes,
                overwritten,
                diverged,
                lfs,
            } => {
                let mut out = format!("gitferry: *{repo}* mirrored {} ref change(s)", changes.len());
                for d in changes.iter().take(10) {
                    out.push_str(&format!("\n• {}", describe(d)));
                }
                if changes.len() > 10 {
                    out.push_str(&format!("\n… and {} more", changes.len() - 10));
                }
                for b in overwritten.iter().take(10) {
                    out.push_str(&format!(
                        "\n⚠ overwritten tip of {} kept as {} ({})",
                        b.git_ref,
                        b.backup_ref,
                        short(&b.id)
                    ));
                }
                for d in diverged.iter().take(10) {
                    out.push_str(&format!("\n⚠ {} left as is on a target: {}", d.name, d.reason));
                }
                lfs_lines(&mut out, lfs);
                out
            }
            Event::Failed { repo, error, transient } => format!(
                "gitferry: *{repo}* failed to sync ({}): {error}",
                if *transient { "will retry" } else { "needs attention" }
            ),
            Event::Recovered { repo, after_failures } => {
                format!("gitferry: *{repo}* is syncing again after {after_failures} failed attempt(s)")
            }
            Event::GuardTripped { repo, message } => format!("gitferry: *{repo}* mass-deletion guard: {message}"),
            Event::SourceGone { repo, account, message } => {
                format!("gitferry: *{repo}* (account {account}): source {message}")
            }
            Event::SourceRenamed { repo, account, message } => {
                format!("gitferry: *{repo}* (account {account}): source {message}")
            }
        }
    }
}

/// Per target, its LFS objects; then the objects the source lacks (the same for every target).
fn lfs_lines(out: &mut String, lfs: &std::collections::BTreeMap<String, LfsCount>) {
    for (target, c) in lfs {
        if let Some(why) = &c.skipped {
            out.push_str(&format!(
                "\n• LFS on {target}: {} object(s) not transferred: {why}",
                c.objects
            ));
            continue;
        }
        out.push_str(&format!(
            "\n• LFS on {target}: {} object(s), {}; {} uploaded ({})",
            c.objects,
            crate::git::mirror::human_bytes(c.bytes),
            c.uploaded,
            crate::git::mirror::human_bytes(c.uploaded_bytes)
        ));
    }
    if let Some(c) = lfs.values().find(|c| c.missing_count > 0) {
        for m in c.missing.iter().take(10) {
            out.push_str(&format!("\n⚠ LFS object {} missing on the source: {}", m.oid, m.reason));
        }
        if c.missing_count > 10 {
            out.push_str(&format!("\n… and {} more missing LFS objects", c.missing_count - 10));
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

fn describe(d: &RefDelta) -> String {
    let id = |o: &Option<gix::ObjectId>| o.map(|i| i.to_hex_with_len(8).to_string()).unwrap_or_default();
    match d.kind {
        DeltaKind::Created => format!("{} created at {}", d.name, id(&d.new)),
        DeltaKind::Updated => format!("{} {}..{}", d.name, id(&d.old), id(&d.new)),
        DeltaKind::Forced => format!("{} force-pushed {}...{}", d.name, id(&d.old), id(&d.new)),
        DeltaKind::Deleted => format!("{} deleted (was {})", d.name, id(&d.old)),
    }
}

/// Sends events to the configured webhooks.
#[derive(Clone, Debug)]
pub struct Notifier {
    client: reqwest::Client,
    slack: Option<String>,
    generic: Option<String>,
}

/// How one delivery went (for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    pub sent: usize,
    pub failed: usize,
}

impl Notifier {
    pub fn new(config: &NotifyConfig) -> Notifier {
        Notifier::with_urls(
            config.slack_webhook_url.as_ref().map(|s| s.expose().to_owned()),
            config.generic_webhook_url.as_ref().map(|s| s.expose().to_owned()),
        )
    }

    pub fn with_urls(slack: Option<String>, generic: Option<String>) -> Notifier {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(crate::git::AGENT)
            .build()
            .expect("HTTP client builds");
        Notifier { client, slack, generic }
    }

    pub fn is_configured(&self) -> bool {
        self.slack.is_some() || self.generic.is_some()
    }

    /// Send to every configured webhook; never fails.
    pub async fn send(&self, event: &Event) -> Delivered {
        let mut outcome = Delivered::default();
        if let Some(url) = &self.slack {
            let body = serde_json::json!({ "text": event.text() });
            self.post(url, &body, event, &mut outcome).await;
        }
        if let Some(url) = &self.generic {
            let mut body = serde_json::to_value(event).expect("event serialises");
            body["text"] = event.text().into();
            self.post(url, &body, event, &mut outcome).await;
        }
        outcome
    }

    async fn post(&self, url: &str, body: &serde_json::Value, event: &Event, outcome: &mut Delivered) {
        let result = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match result {
            Ok(_) => outcome.sent += 1,
            Err(e) => {
                outcome.failed += 1;
                // The URL itself is a secret (Slack webhook URLs are bearer credentials).
                let reason = if e.is_timeout() {
                    "timed out".to_owned()
                } else if let Some(s) = e.status() {
                    format!("HTTP {s}")
                } else {
                    "connection failed".to_owned()
                };
                tracing::warn!(repo = event.repo(), %reason, "notification not delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(i: u8, kind: DeltaKind) -> RefDelta {
        RefDelta {
            name: format!("refs/heads/b{i}"),
            kind,
            old: Some(gix::ObjectId::from_bytes_or_panic(&[i; 20])),
            new: Some(gix::ObjectId::from_bytes_or_panic(&[i + 1; 20])),
        }
    }

    #[test]
    fn change_messages_list_ten_refs_then_summarise() {
        let e = Event::Changed {
            repo: "app".into(),
            changes: (0..13).map(|i| delta(i, DeltaKind::Updated)).collect(),
            overwritten: vec![],
            diverged: vec![],
            lfs: Default::default(),
        };
        let text = e.text();
        assert_eq!(text.lines().filter(|l| l.starts_with('•')).count(), 10);
        assert!(text.ends_with("… and 3 more"), "{text}");
        assert!(text.contains("refs/heads/b0 00000000..01010101"), "{text}");
        let forced = Event::Changed {
            repo: "app".into(),
            changes: vec![delta(5, DeltaKind::Forced)],
            overwritten: vec![],
            diverged: vec![],
            lfs: Default::default(),
        };
        assert!(forced.text().contains("force-pushed 05050505...06060606"));
    }

    #[test]
    fn lfs_objects_are_counted_per_target_and_missing_ones_named() {
        let missing = |i: u8| crate::git::lfs::Missing {
            oid: format!("{i:064x}"),
            size: 10,
            reason: "404 from the source's LFS server".into(),
        };
        let count = |uploaded| LfsCount {
            objects: 12,
            bytes: 3 << 20,
            uploaded,
            uploaded_bytes: uploaded << 18,
            missing: (0..12).map(missing).collect(),
            missing_count: 12,
            skipped: None,
        };
        let e = Event::Changed {
            repo: "app".into(),
            changes: vec![delta(1, DeltaKind::Updated)],
            overwritten: vec![],
            diverged: vec![],
            lfs: [("gitlab".to_owned(), count(4)), ("backup".to_owned(), count(0))].into(),
        };
        let text = e.text();
        assert!(
            text.contains("LFS on gitlab: 12 object(s), 3.0 MiB; 4 uploaded (1.0 MiB)"),
            "{text}"
        );
        assert!(
            text.contains("LFS on backup: 12 object(s), 3.0 MiB; 0 uploaded"),
            "{text}"
        );
        assert_eq!(text.matches("missing on the source").count(), 10, "{text}");
        assert!(text.ends_with("… and 2 more missing LFS objects"), "{text}");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["lfs"]["gitlab"]["uploaded"], 4);
        assert_eq!(v["lfs"]["backup"]["missing_count"], 12);
    }

    #[test]
    fn generic_payload_is_structured() {
        let e = Event::Failed {
            repo: "app".into(),
            error: "boom".into(),
            transient: true,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(v["repo"], "app");
        assert!(e.text().contains("will retry"));
    }
}
