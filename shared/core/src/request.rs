//! `SyncRequest`: the one message every trigger becomes.
//!
//! A webhook delivery, a poll tick and an operator's "sync now" all turn into the same JSON
//! message on the queue, grouped by repository (FIFO `MessageGroupId = repo`, so one repo is
//! synced by one worker at a time) and deduplicated by an id derived from where it was born:
//! `wh:{provider}:{delivery}:{repo}` (a provider's redelivery is dropped), `poll:{repo}:{slot}` (a
//! retried poll tick enqueues nothing twice), `manual:{repo}:{id}`. Every id names its repo, so
//! ids stay distinct even on a queue whose deduplication scope is the whole queue.
//!
//! The wire format is versioned (`"v": 1`); a message of an unknown version is refused with a
//! clear error rather than half-understood.

use serde::{Deserialize, Serialize};

use crate::config::Provider;

pub const VERSION: u32 = 1;

/// SQS limits deduplication ids to 128 characters of printable ASCII.
const MAX_DEDUP_ID: usize = 128;

/// Why a sync was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SyncTrigger {
    /// A provider told us about a push. `after` is the pushed commit when the payload names one
    /// (a "static commit": the sync can confirm it arrived instead of re-deciding what is new).
    Webhook {
        provider: Provider,
        delivery_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        git_ref: Option<String>,
    },
    /// The poller found the repo due; `slot` numbers its interval since the epoch.
    Poll { slot: u64 },
    /// An operator asked (`gitferry sync`, `POST /repos/{repo}/sync`).
    Manual { requested_by: String, id: String },
    /// The continuation of a sync that stopped at its deadline after making progress
    /// (`generation`: the cache generation it committed). Followed whatever the sync policy:
    /// it finishes what an accepted trigger started.
    Resume { generation: u64, origin: TriggerKind },
}

/// The kinds of trigger, for policy checks and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Webhook,
    Poll,
    Manual,
    Resume,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Webhook => "webhook",
            TriggerKind::Poll => "poll",
            TriggerKind::Manual => "manual",
            TriggerKind::Resume => "resume",
        }
    }
}

impl crate::config::RepoConfig {
    /// Does this repo follow triggers of `kind`? (Here, not in `config`, so the dependency runs
    /// one way: requests know the configuration, the configuration knows nothing of requests.)
    pub fn follows(&self, kind: TriggerKind) -> bool {
        use crate::config::SyncPolicy;
        use TriggerKind as K;
        matches!(
            (self.sync_policy, kind),
            (_, K::Manual | K::Resume)
                | (SyncPolicy::Both, _)
                | (SyncPolicy::WebhookOnly, K::Webhook)
                | (SyncPolicy::PollOnly, K::Poll)
        )
    }
}

impl SyncTrigger {
    pub fn kind(&self) -> TriggerKind {
        match self {
            SyncTrigger::Webhook { .. } => TriggerKind::Webhook,
            SyncTrigger::Poll { .. } => TriggerKind::Poll,
            SyncTrigger::Manual { .. } => TriggerKind::Manual,
            SyncTrigger::Resume { .. } => TriggerKind::Resume,
        }
    }

    pub fn delivery_id(&self) -> Option<&str> {
        match self {
            SyncTrigger::Webhook { delivery_id, .. } => Some(delivery_id),
            _ => None,
        }
    }
}

/// A request to bring one repository's targets up to date with its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub v: u32,
    pub repo: String,
    pub trigger: SyncTrigger,
    /// When the request was enqueued, Unix milliseconds (queue lag = now − this).
    pub enqueued_at: u64,
}

/// A message that is not a valid `SyncRequest`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unsupported sync request version {0} (this gitferry understands version {VERSION})")]
    UnsupportedVersion(u64),
    #[error("malformed sync request: {0}")]
    Malformed(String),
}

impl SyncRequest {
    pub fn new(repo: impl Into<String>, trigger: SyncTrigger) -> SyncRequest {
        SyncRequest {
            v: VERSION,
            repo: repo.into(),
            trigger,
            enqueued_at: crate::clock::now_ms(),
        }
    }

    pub fn webhook(
        repo: &str,
        provider: Provider,
        delivery_id: &str,
        after: Option<String>,
        git_ref: Option<String>,
    ) -> SyncRequest {
        SyncRequest::new(
            repo,
            SyncTrigger::Webhook {
                provider,
                delivery_id: delivery_id.to_owned(),
                after,
                git_ref,
            },
        )
    }

    pub fn poll(repo: &str, slot: u64) -> SyncRequest {
        SyncRequest::new(repo, SyncTrigger::Poll { slot })
    }

    /// The continuation of an interrupted sync of `repo` that committed `generation`.
    pub fn resume(repo: &str, generation: u64, origin: TriggerKind) -> SyncRequest {
        SyncRequest::new(repo, SyncTrigger::Resume { generation, origin })
    }

    pub fn manual(repo: &str, requested_by: &str) -> SyncRequest {
        SyncRequest::new(
            repo,
            SyncTrigger::Manual {
                requested_by: requested_by.to_owned(),
                id: uuid::Uuid::new_v4().to_string(),
            },
        )
    }

    /// FIFO group: one repository is synced by one worker at a time.
    pub fn group_id(&self) -> &str {
        &self.repo
    }

    /// Deduplication id (at most 128 printable ASCII characters, as SQS requires).
    pub fn dedup_id(&self) -> String {
        let id = match &self.trigger {
            // The repo too: one delivery can concern several repos, and their messages must not
            // deduplicate each other even on a queue whose deduplication scope is the queue.
            SyncTrigger::Webhook {
                provider, delivery_id, ..
            } => format!("wh:{provider}:{delivery_id}:{}", self.repo),
            SyncTrigger::Poll { slot } => format!("poll:{}:{slot}", self.repo),
            SyncTrigger::Manual { id, .. } => format!("manual:{}:{id}", self.repo),
            SyncTrigger::Resume { generation, .. } => format!("resume:{}:{generation}", self.repo),
        };
        let printable = id.chars().all(|c| c.is_ascii_graphic());
        if printable && id.len() <= MAX_DEDUP_ID {
            id
        } else {
            // Keep it recognisable and unique: a prefix plus a digest of the whole.
            let prefix: String = id.chars().filter(char::is_ascii_graphic).take(80).collect();
            format!("{prefix}#{:016x}", crate::git::hash::fnv1a(id.as_bytes()))
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a SyncRequest always serialises")
    }

    /// Decode a queue message, refusing unknown versions explicitly.
    pub fn from_json(text: &str) -> Result<SyncRequest, RequestError> {
        #[derive(Deserialize)]
        struct Version {
            v: Option<serde_json::Value>,
        }
        let version: Version = serde_json::from_str(text).map_err(|e| RequestError::Malformed(e.to_string()))?;
        match version.v.as_ref().and_then(serde_json::Value::as_u64) {
            Some(1) => {}
            Some(other) => return Err(RequestError::UnsupportedVersion(other)),
            None => return Err(RequestError::Malformed("missing or invalid version field \"v\"".into())),
        }
        let request: SyncRequest = serde_json::from_str(text).map_err(|e| RequestError::Malformed(e.to_string()))?;
        if !crate::config::valid_repo_name(&request.repo) {
            return Err(RequestError::Malformed(format!(
                "invalid repository name {:?}",
                request.repo
            )));
        }
        Ok(request)
    }

    /// How long the request waited, in milliseconds.
    pub fn lag_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.enqueued_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policies_choose_the_triggers_a_repo_follows() {
        use TriggerKind as K;
        let config = crate::config::Config::parse(
            "[repos.app]\nurl = \"/a\"\nsync_policy = \"webhook_only\"\n[[repos.app.targets]]\nurl = \"/t\"\n\
             [repos.lib]\nurl = \"/l\"\nsync_policy = \"poll_only\"\n[[repos.lib.targets]]\nurl = \"/t\"\n\
             [repos.both]\nurl = \"/b\"\n[[repos.both.targets]]\nurl = \"/t\"\n",
            std::path::Path::new("mirrors.toml"),
            &|_| None,
        )
        .expect("valid");
        let (app, lib, both) = (
            config.repo("app").unwrap(),
            config.repo("lib").unwrap(),
            config.repo("both").unwrap(),
        );
        assert!(app.follows(K::Webhook) && !app.follows(K::Poll) && app.follows(K::Manual) && app.follows(K::Resume));
        assert!(!lib.follows(K::Webhook) && lib.follows(K::Poll) && lib.follows(K::Manual) && lib.follows(K::Resume));
        assert!(both.follows(K::Webhook) && both.follows(K::Poll));
    }

    #[test]
    fn json_v1_roundtrip_and_shape() {
        let r = SyncRequest::webhook(
            "app",
            Provider::Github,
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            Some("abc".into()),
            None,
        );
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["trigger"]["kind"], "webhook");
        assert_eq!(v["trigger"]["provider"], "github");
        assert_eq!(SyncRequest::from_json(&json).unwrap(), r);
        let p = SyncRequest::poll("lib", 42);
        assert_eq!(SyncRequest::from_json(&p.to_json()).unwrap(), p);
        let m = SyncRequest::manual("lib", "alice");
        assert_eq!(SyncRequest::from_json(&m.to_json()).unwrap(), m);
        let r = SyncRequest::resume("lib", 3, TriggerKind::Webhook);
        assert_eq!(SyncRequest::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(r.dedup_id(), "resume:lib:3");
    }

    #[test]
    fn dedup_and_group_ids_follow_the_design() {
        assert_eq!(
            SyncRequest::webhook("app", Provider::Gitlab, "d-1", None, None).dedup_id(),
            "wh:gitlab:d-1:app"
        );
        assert_eq!(SyncRequest::poll("app", 7).dedup_id(), "poll:app:7");
        let m = SyncRequest::manual("app", "bob");
        assert!(m.dedup_id().starts_with("manual:app:") && m.dedup_id().len() == 11 + 36);
        assert_ne!(m.dedup_id(), SyncRequest::manual("app", "bob").dedup_id());
        assert_eq!(m.group_id(), "app");
        // Hostile delivery ids still give valid SQS ids.
        let long = SyncRequest::webhook("app", Provider::Github, &"x".repeat(500), None, None).dedup_id();
        assert!(long.len() <= 128 && long.chars().all(|c| c.is_ascii_graphic()));
        let weird = SyncRequest::webhook("app", Provider::Github, "a b\nc\u{e9}", None, None).dedup_id();
        assert!(weird.chars().all(|c| c.is_ascii_graphic()), "{weird}");
        assert_ne!(
            weird,
            SyncRequest::webhook("app", Provider::Github, "a b\nc\u{e8}", None, None).dedup_id()
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused_clearly() {
        let e = SyncRequest::from_json(r#"{"v":2,"repo":"a","trigger":{"kind":"poll","slot":1},"enqueued_at":1}"#)
            .unwrap_err();
        assert_eq!(e, RequestError::UnsupportedVersion(2));
        assert!(e.to_string().contains("version 2"));
        assert!(matches!(SyncRequest::from_json("{}"), Err(RequestError::Malformed(_))));
        assert!(matches!(
            SyncRequest::from_json("not json"),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            SyncRequest::from_json(r#"{"v":1,"repo":"../x","trigger":{"kind":"poll","slot":1},"enqueued_at":1}"#),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            SyncRequest::from_json(r#"{"v":1,"repo":"a","trigger":{"kind":"teleport"},"enqueued_at":1}"#),
            Err(RequestError::Malformed(_))
        ));
    }
}
