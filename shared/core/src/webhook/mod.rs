//! Webhook deliveries: whether to believe them, and what to enqueue. No HTTP framework: the
//! Lambda (API Gateway v2 events) and `gitferry serve` both hand a [`Delivery`] to [`accept`]
//! and turn the [`Reply`] into their own response type, so both answer exactly alike.
//!
//! Order of checks — authenticate before saying anything about the configuration, and refuse
//! hostile input as cheaply as possible (DESIGN.md, "Bad input"):
//!
//! 1. body over the limit → 413 ([`max_body_setting`]: one setting for `serve` and the Lambda,
//!    25 MiB by default because GitHub and GitLab send up to 25 MB);
//! 2. unknown provider route → 404; no signature header → 401;
//! 3. body decoded: JSON, or a form's `payload` field ([`parse`]) → 400 if that is not JSON;
//! 4. the secrets that could apply: the own secret of every configured repository the payload
//!    names (case-insensitively, as the providers compare names), and the provider's
//!    account-level secret for organisation, group and system hooks ([`auth`]);
//! 5. the signature checked against them in constant time → 401 if none matches. An unknown
//!    repository and a wrong signature get the same answer: a caller who proved nothing learns
//!    nothing about what is mirrored;
//! 6. only then the event and the configuration: ping → 200; an event that does not change refs
//!    → 202 ignored; a push naming no mirrored repository (an organisation hook reports every
//!    repository) → 202 ignored; `poll_only` → 202 ignored; otherwise enqueue → 202 with the
//!    queued repositories and the delivery id, or 503 when the queue fails (the provider
//!    redelivers).
//!
//! Every answer is logged once — provider, event, delivery id, the repositories concerned and
//! the reason; never the body or a secret — so "why doesn't my mirror update" has an answer on
//! gitferry's side; the API layer counts each answer by code (`WebhookResponses`). A front end
//! that refuses a body before it is read whole (`serve`'s streaming limit) goes through
//! [`refuse`], which logs the same way.
//!
//! The payload only *identifies* repositories: the URL fetched is always the one in the config,
//! never one from the payload (no SSRF).

mod auth;
mod parse;

pub use auth::{sign, verify};
pub use parse::{normalize_url, provider_label};

use serde_json::{Value, json};

use crate::config::{Config, Provider, RepoConfig};
use crate::queue::Queue;
use crate::request::{SyncRequest, TriggerKind};
use parse::{Event, Parsed};

/// The webhook body limit when [`MAX_BODY_ENV`] is unset: GitHub caps payloads at 25 MB and
/// GitLab's requests at 25 MB, so nothing a provider sends is refused for its size (a push
/// listing 2,048 commits is about 1.1 MiB). On AWS, API Gateway (10 MB) and a synchronous Lambda
/// invocation (6 MB, the whole event) cut earlier, before gitferry sees the request.
pub const DEFAULT_MAX_BODY: usize = 25 << 20;

/// The one setting of the body limit, for `gitferry serve` and the webhook function alike.
pub const MAX_BODY_ENV: &str = "GITFERRY_MAX_BODY";

/// The smallest limit accepted: below this not even a ping fits.
pub const MIN_MAX_BODY: usize = 1024;

/// The body limit from the value of [`MAX_BODY_ENV`] (`None` or empty: the default).
pub fn max_body_setting(value: Option<&str>) -> Result<usize, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_MAX_BODY),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= MIN_MAX_BODY)
            .ok_or_else(|| format!("{MAX_BODY_ENV} must be a number of bytes, at least {MIN_MAX_BODY} (got {v:?})")),
    }
}

/// The 413's message.
pub fn too_large_message(max_body: usize) -> String {
    format!("body larger than {max_body} bytes")
}

/// What arrived.
#[derive(Clone, Debug)]
pub struct Delivery<'a> {
    /// The `{provider}` path segment.
    pub provider: &'a str,
    /// Request headers (names compared case-insensitively).
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Delivery<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        header(self.headers, name)
    }
}

/// A header's value by case-insensitive name (HTTP header names are case-insensitive).
pub(crate) fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The answer: an HTTP status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn new(status: u16, body: Value) -> Reply {
        Reply { status, body }
    }

    fn error(status: u16, message: &str) -> Reply {
        Reply::new(status, json!({ "error": message }))
    }

    fn ignored(reason: &str) -> Reply {
        Reply::new(202, json!({ "ignored": reason }))
    }

    /// Why, in a few words (for the log line).
    fn reason(&self) -> &str {
        ["error", "ignored"]
            .iter()
            .find_map(|k| self.body[*k].as_str())
            .unwrap_or(if self.body.get("queued").is_some() {
                "queued"
            } else {
                "pong"
            })
    }
}

/// The answer to every delivery that cannot be attributed to a secret — a wrong signature, or a
/// repository that is not configured: the same words for both.
const NOT_AUTHENTICATED: &str = "invalid signature";

/// Handle one delivery: verify, map to configured repos, enqueue; log the answer. Never panics
/// on any input.
pub async fn accept(config: &Config, queue: &dyn Queue, delivery: &Delivery<'_>, max_body: usize) -> Reply {
    let mut facts = Facts::from_headers(delivery.provider, delivery.headers);
    let reply = decide(config, queue, delivery, max_body, &mut facts).await;
    facts.log(&reply);
    reply
}

/// Refuse a delivery whose body could not be read whole (a front end's own body limit, a body
/// API Gateway says is base64 but is not), logged like every other answer.
pub fn refuse(provider: &str, headers: &[(String, String)], status: u16, message: &str) -> Reply {
    let reply = Reply::error(status, message);
    Facts::from_headers(provider, headers).log(&reply);
    reply
}

async fn decide(config: &Config, queue: &dyn Queue, d: &Delivery<'_>, max_body: usize, facts: &mut Facts) -> Reply {
    if d.body.len() > max_body {
        return Reply::error(413, &too_large_message(max_body));
    }
    let Some(provider) = parse::provider_of(d.provider) else {
        return Reply::error(404, "unknown provider (github, gitlab, gitea, forgejo)");
    };
    let Some(signature) = auth::signature_header(provider, d.headers) else {
        return Reply::error(401, "missing signature");
    };
    let payload = match parse::Payload::decode(provider, d) {
        Ok(p) => p,
        Err(why) => return Reply::error(400, why),
    };
    let parsed = parse::parse(provider, d, &payload.json);
    let candidates = parse::matching_repos(config, &parsed.repo_urls);
    facts.learn(&parsed, &candidates);
    match auth::authenticate(config, provider, signature, &payload.signed, &candidates) {
        None => Reply::error(401, NOT_AUTHENTICATED),
        Some(repos) => {
            facts.repos = names(&repos);
            respond(queue, provider, &parsed, &repos).await
        }
    }
}

/// The answer to an authenticated delivery.
async fn respond(queue: &dyn Queue, provider: Provider, parsed: &Parsed, repos: &[&RepoConfig]) -> Reply {
    match &parsed.event {
        Event::Ping => return Reply::new(200, json!({ "pong": true })),
        Event::Other(name) => return Reply::ignored(&format!("event {name:?} does not change refs")),
        Event::Push => {}
    }
    if repos.is_empty() {
        return Reply::ignored("repository not mirrored");
    }
    let followed: Vec<&RepoConfig> = repos
        .iter()
        .copied()
        .filter(|r| r.follows(TriggerKind::Webhook))
        .collect();
    if followed.is_empty() {
        return Reply::ignored("repository is poll_only");
    }
    enqueue(queue, provider, parsed, &followed).await
}

async fn enqueue(queue: &dyn Queue, provider: Provider, parsed: &Parsed, repos: &[&RepoConfig]) -> Reply {
    let requests: Vec<SyncRequest> = repos
        .iter()
        .map(|r| {
            let git_ref = parsed.git_ref.clone().filter(|g| r.refs.matches(g));
            let after = parsed.after.clone().filter(|_| git_ref.is_some());
            SyncRequest::webhook(&r.name, provider, &parsed.delivery_id, after, git_ref)
        })
        .collect();
    match queue.send(&requests).await {
        Ok(_) => Reply::new(202, json!({ "queued": names(repos), "delivery": parsed.delivery_id })),
        Err(e) => {
            tracing::error!(error = %e, "could not enqueue webhook delivery");
            Reply::error(503, "queue unavailable; please redeliver")
        }
    }
}

fn names(repos: &[&RepoConfig]) -> Vec<String> {
    repos.iter().map(|r| r.name.clone()).collect()
}

/// `text` cut to `max` characters, with anything but printable ASCII replaced: header values are
/// the caller's text and go into log lines.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

/// What is known about a delivery, for its one log line. Only headers, configured repository
/// names and gitferry's own words: no body, no secret (signature headers are never read here).
struct Facts {
    provider: &'static str,
    event: String,
    delivery: String,
    repos: Vec<String>,
}

impl Facts {
    fn from_headers(segment: &str, headers: &[(String, String)]) -> Facts {
        let provider = parse::provider_of(segment);
        let event = provider.and_then(|p| parse::event_header(p, headers));
        let delivery = provider.and_then(|p| parse::delivery_header(p, headers));
        Facts {
            provider: provider_label(segment),
            event: printable(event.unwrap_or("-"), 64),
            delivery: printable(delivery.unwrap_or("-"), 100),
            repos: Vec::new(),
        }
    }

    /// What the parsed payload adds: the event as the provider named it, the delivery id used for
    /// deduplication, and the configured repositories it names (known to the operator only).
    fn learn(&mut self, parsed: &Parsed, candidates: &[&RepoConfig]) {
        self.event = parsed.event_name.clone();
        self.delivery = parsed.delivery_id.clone();
        self.repos = names(candidates);
    }

    fn log(&self, reply: &Reply) {
        let repos = if self.repos.is_empty() {
            "-".to_owned()
        } else {
            self.repos.join(",")
        };
        let (provider, event, delivery, status) = (self.provider, &self.event, &self.delivery, reply.status);
        let reason = reply.reason();
        match status {
            200..=299 => {
                tracing::info!(
                    provider,
                    event,
                    delivery,
                    repos,
                    status,
                    reason,
                    "webhook delivery answered"
                )
            }
            500..=599 => {
                tracing::error!(
                    provider,
                    event,
                    delivery,
                    repos,
                    status,
                    reason,
                    "webhook delivery failed"
                )
            }
            _ => tracing::warn!(
                provider,
                event,
                delivery,
                repos,
                status,
                reason,
                "webhook delivery rejected"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
