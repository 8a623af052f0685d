//! Webhook deliveries: signature checks and payload → `SyncRequest`s. No HTTP framework: the
//! Lambda (API Gateway v2 events) and the local server both hand a [`Delivery`] to
//! [`accept`] and turn the [`Reply`] into their own response type.
//!
//! Order of checks, so hostile input is refused as early and as cheaply as possible:
//! body size (413) → provider known (404) → signature header present (401) → JSON well-formed
//! (400) → repository configured, matched by the payload's repository URLs against configured
//! source URLs (404) → signature valid for that repository's secret (401) → event kind (ping
//! 200, unknown 202 ignored) → policy (`poll_only` → 202 ignored) → enqueue (503 on failure, so
//! the provider redelivers) → 202 with the queued repos and the delivery id.
//!
//! The payload only *identifies* repositories: the URL fetched is always the one in the config,
//! never one from the payload (no SSRF). Signatures are HMAC-SHA256 (GitHub, Gitea/Forgejo)
//! compared in constant time by `hmac`; GitLab's shared token is compared with `subtle`.

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::{Config, Provider, RepoConfig};
use crate::queue::Queue;
use crate::request::{SyncRequest, TriggerKind};

/// Default body limit: GitHub caps payloads at 25 MB, but push payloads are small; 1 MiB keeps a
/// flood of junk cheap to refuse.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

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
        Reply::new(status, serde_json::json!({ "error": message }))
    }

    fn ignored(reason: &str) -> Reply {
        Reply::new(202, serde_json::json!({ "ignored": reason }))
    }
}

/// What a provider's delivery says, once parsed.
#[derive(Debug, PartialEq)]
struct Parsed {
    event: Event,
    delivery_id: String,
    repo_urls: Vec<String>,
    git_ref: Option<String>,
    after: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Event {
    Push,
    Ping,
    Other(String),
}

/// Handle one delivery: verify, map to configured repos, enqueue. Never panics on any input.
pub async fn accept(config: &Config, queue: &dyn Queue, delivery: &Delivery<'_>, max_body: usize) -> Reply {
    if delivery.body.len() > max_body {
        return Reply::error(413, &format!("body larger than {max_body} bytes"));
    }
    let provider = match delivery.provider {
        "github" => Provider::Github,
        "gitlab" => Provider::Gitlab,
        "gitea" | "forgejo" => Provider::Gitea,
        _ => return Reply::error(404, "unknown provider (github, gitlab, gitea)"),
    };
    let Some(signature) = signature_header(provider, delivery) else {
        return Reply::error(401, "missing signature");
    };
    let json: Value = match serde_json::from_slice(delivery.body) {
        Ok(v) => v,
        Err(_) => return Reply::error(400, "malformed JSON payload"),
    };
    let parsed = parse(provider, delivery, &json);
    let candidates: Vec<&RepoConfig> = config
        .repos
        .values()
        .filter(|r| r.webhook.as_ref().is_some_and(|w| w.provider == provider))
        .filter(|r| {
            let source = normalize_url(&r.source.to_string());
            parsed.repo_urls.iter().any(|u| normalize_url(u) == source)
        })
        .collect();
    if candidates.is_empty() {
        return Reply::error(404, "repository not configured for this provider");
    }
    let verified: Vec<&RepoConfig> = candidates
        .into_iter()
        .filter(|r| {
            let secret = r.webhook.as_ref().expect("filtered above").secret.expose();
            verify(provider, secret, signature, delivery.body)
        })
        .collect();
    if verified.is_empty() {
        return Reply::error(401, "invalid signature");
    }
    match parsed.event {
        Event::Ping => return Reply::new(200, serde_json::json!({ "pong": true })),
        Event::Other(name) => return Reply::ignored(&format!("event {name:?} does not change refs")),
        Event::Push => {}
    }
    let followed: Vec<&RepoConfig> = verified
        .iter()
        .copied()
        .filter(|r| r.follows(TriggerKind::Webhook))
        .collect();
    if followed.is_empty() {
        return Reply::ignored("repository is poll_only");
    }
    let requests: Vec<SyncRequest> = followed
        .iter()
        .map(|r| {
            let git_ref = parsed.git_ref.clone().filter(|g| r.refs.matches(g));
            let after = parsed.after.clone().filter(|_| git_ref.is_some());
            SyncRequest::webhook(&r.name, provider, &parsed.delivery_id, after, git_ref)
        })
        .collect();
    match queue.send(&requests).await {
        Ok(_) => Reply::new(
            202,
            serde_json::json!({
                "queued": followed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                "delivery": parsed.delivery_id,
            }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "could not enqueue webhook delivery");
            Reply::error(503, "queue unavailable; please redeliver")
        }
    }
}

fn signature_header<'a>(provider: Provider, d: &'a Delivery<'_>) -> Option<&'a str> {
    match provider {
        Provider::Github => d.header("X-Hub-Signature-256"),
        Provider::Gitlab => d.header("X-Gitlab-Token"),
        Provider::Gitea => d
            .header("X-Gitea-Signature")
            .or_else(|| d.header("X-Forgejo-Signature")),
    }
    .filter(|s| !s.is_empty())
}

/// Check a delivery's signature header against the repository's secret.
pub fn verify(provider: Provider, secret: &str, header: &str, body: &[u8]) -> bool {
    match provider {
        Provider::Github => match header.strip_prefix("sha256=") {
            Some(hex_sig) => hmac_matches(secret, hex_sig, body),
            None => false,
        },
        Provider::Gitea => hmac_matches(secret, header, body),
        Provider::Gitlab => bool::from(header.as_bytes().ct_eq(secret.as_bytes())),
    }
}

fn hmac_matches(secret: &str, hex_sig: &str, body: &[u8]) -> bool {
    let Ok(expected) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The signature header value for `body` (for tests and the demo's own deliveries).
pub fn sign(provider: Provider, secret: &str, body: &[u8]) -> String {
    match provider {
        Provider::Gitlab => secret.to_owned(),
        _ => {
            let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
            mac.update(body);
            let hex_sig = hex::encode(mac.finalize().into_bytes());
            if provider == Provider::Github {
                format!("sha256={hex_sig}")
            } else {
                hex_sig
            }
        }
    }
}

fn parse(provider: Provider, d: &Delivery<'_>, json: &Value) -> Parsed {
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let mut urls = Vec::new();
    let mut push_url = |v: &Value| {
        if let Some(u) = v.as_str() {
            urls.push(u.to_owned());
        }
    };
    let (event, delivery_id) = match provider {
        Provider::Github => {
            let repo = &json["repository"];
            for k in ["clone_url", "html_url", "git_url", "url"] {
                push_url(&repo[k]);
            }
            let event = match d.header("X-GitHub-Event").unwrap_or_default() {
                "push" | "create" | "delete" => Event::Push,
                "ping" => Event::Ping,
                other => Event::Other(other.to_owned()),
            };
            (event, d.header("X-GitHub-Delivery"))
        }
        Provider::Gitlab => {
            for k in ["git_http_url", "web_url", "http_url", "url"] {
                push_url(&json["project"][k]);
                push_url(&json["repository"][k]);
            }
            let event = match d.header("X-Gitlab-Event").unwrap_or_default() {
                "Push Hook" | "Tag Push Hook" => Event::Push,
                // GitLab's "Test" button sends a push hook; system hooks are not supported.
                other => Event::Other(other.to_owned()),
            };
            (
                event,
                d.header("X-Gitlab-Event-UUID").or_else(|| d.header("Idempotency-Key")),
            )
        }
        Provider::Gitea => {
            let repo = &json["repository"];
            for k in ["clone_url", "html_url"] {
                push_url(&repo[k]);
            }
            let event = match d
                .header("X-Gitea-Event")
                .or_else(|| d.header("X-Forgejo-Event"))
                .unwrap_or_default()
            {
                "push" | "create" | "delete" => Event::Push,
                other => Event::Other(other.to_owned()),
            };
            (
                event,
                d.header("X-Gitea-Delivery").or_else(|| d.header("X-Forgejo-Delivery")),
            )
        }
    };
    // Without a usable delivery id the body's digest stands in, so an identical redelivery still
    // deduplicates. Providers send UUIDs or numbers; anything else with spaces or control
    // characters (a header-injection attempt: CR/LF, escape sequences) never reaches a log line,
    // a status, a notification or the queue.
    let delivery_id = delivery_id
        .filter(|id| !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("body-{:016x}", crate::git::hash::fnv1a(d.body)));
    let git_ref = s(&json["ref"]).filter(|r| r.starts_with("refs/"));
    let after = s(&json["after"]).filter(|a| a.len() == 40 && a.bytes().all(|b| b.is_ascii_hexdigit()));
    Parsed {
        event,
        delivery_id,
        repo_urls: urls,
        git_ref,
        after,
    }
}

/// Compare repository URLs loosely: scheme and host case, userinfo, default ports, a trailing
/// `/` and `.git` do not matter; `http` and `https` are the same repository.
pub fn normalize_url(url: &str) -> String {
    let url = crate::git::remote::redact_url(url).replace("***@", "");
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r.to_owned()),
        None => (String::new(), url.clone()),
    };
    let scheme = if scheme == "http" { "https".to_owned() } else { scheme };
    let (host, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let host = host.to_ascii_lowercase();
    let host = host
        .strip_suffix(":443")
        .or_else(|| host.strip_suffix(":80"))
        .unwrap_or(&host)
        .to_owned();
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{scheme}://{host}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_test_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(Provider::Github, secret, sig, body));
        assert_eq!(sign(Provider::Github, secret, body), sig);
        assert!(!verify(Provider::Github, "wrong", sig, body));
        assert!(!verify(Provider::Github, secret, sig, b"Hello, World?"));
        assert!(!verify(Provider::Github, secret, &sig[7..], body), "prefix required");
        assert!(!verify(Provider::Github, secret, "sha256=zz", body));
    }

    #[test]
    fn gitea_and_gitlab() {
        let sig = sign(Provider::Gitea, "k", b"{}");
        assert!(verify(Provider::Gitea, "k", &sig, b"{}"));
        assert!(!verify(Provider::Gitea, "k", &sig, b"{ }"));
        assert!(verify(Provider::Gitlab, "tok", "tok", b"anything"));
        assert!(!verify(Provider::Gitlab, "tok", "tok2", b"anything"));
        assert!(!verify(Provider::Gitlab, "tok", "", b"anything"));
    }

    #[test]
    fn url_normalisation() {
        let a = normalize_url("https://GitHub.com/Org/Repo.git");
        assert_eq!(a, "https://github.com/Org/Repo");
        assert_eq!(normalize_url("http://github.com:80/Org/Repo/"), a);
        assert_eq!(normalize_url("https://user:pw@github.com:443/Org/Repo"), a);
        assert_ne!(normalize_url("https://github.com/org/other"), a);
    }
}
