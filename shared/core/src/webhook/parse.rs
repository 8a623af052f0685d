//! What a delivery says: the body decoded, and per provider the event, the delivery id, the
//! repository URLs and the pushed ref. Nothing here decides anything; a payload is believed only
//! after [`super::auth`] checked its signature, and its URLs only *identify* configured
//! repositories.
//!
//! Bodies: JSON, or a form (`application/x-www-form-urlencoded`) whose `payload` field is the
//! JSON — what GitHub's REST API creates hooks with by default, and what Gitea and Forgejo send
//! when set to "POST content type: application/x-www-form-urlencoded".
//!
//! Per provider (their documentation and delivery code):
//!
//! * GitHub: `X-GitHub-Event` (`push`, `create`, `delete` change refs; `ping`);
//!   `X-GitHub-Delivery`, which a redelivery keeps (and which the repository and the
//!   organisation hook reporting one event share); `repository.clone_url` and friends. An
//!   organisation hook's `ping` names no repository.
//! * GitLab: `X-Gitlab-Event` `Push Hook` and `Tag Push Hook` (project and group hooks), or
//!   `System Hook` with the body's `event_name` `push`, `tag_push` or `repository_update`
//!   (system hooks: one secret for the whole instance). The delivery id is `Idempotency-Key`,
//!   which GitLab keeps across automatic retries and "Resend request" (GitLab 17.4+, the
//!   `WebHookService` sends it on every request); `X-Gitlab-Event-UUID` is GitLab's recursion
//!   detection id, new for every request, and only a fallback for older versions.
//! * Gitea and Forgejo: `X-Gitea-Event` / `X-Forgejo-Event` (`push`, `create`, `delete`),
//!   `X-Gitea-Delivery` / `X-Forgejo-Delivery`, `repository.clone_url` and `html_url`.

use std::borrow::Cow;

use serde_json::Value;

use super::{Delivery, header};
use crate::config::{Config, Provider, RepoConfig};

/// The provider of a `/webhook/{provider}` route.
pub(super) fn provider_of(segment: &str) -> Option<Provider> {
    match segment {
        "github" => Some(Provider::Github),
        "gitlab" => Some(Provider::Gitlab),
        "gitea" | "forgejo" => Some(Provider::Gitea),
        _ => None,
    }
}

/// The route's provider as a metric label and log field: one of a fixed set, whatever the path
/// said (a label per made-up path would grow the metrics registry without bound).
pub fn provider_label(segment: &str) -> &'static str {
    match segment {
        "github" => "github",
        "gitlab" => "gitlab",
        "gitea" => "gitea",
        "forgejo" => "forgejo",
        _ => "unknown",
    }
}

/// The event header of a provider, before the body is read.
pub(super) fn event_header(provider: Provider, headers: &[(String, String)]) -> Option<&str> {
    match provider {
        Provider::Github => header(headers, "X-GitHub-Event"),
        Provider::Gitlab => header(headers, "X-Gitlab-Event"),
        Provider::Gitea => header(headers, "X-Gitea-Event").or_else(|| header(headers, "X-Forgejo-Event")),
    }
}

/// The delivery id header of a provider (not yet filtered).
pub(super) fn delivery_header(provider: Provider, headers: &[(String, String)]) -> Option<&str> {
    match provider {
        Provider::Github => header(headers, "X-GitHub-Delivery"),
        Provider::Gitlab => header(headers, "Idempotency-Key").or_else(|| header(headers, "X-Gitlab-Event-UUID")),
        Provider::Gitea => header(headers, "X-Gitea-Delivery").or_else(|| header(headers, "X-Forgejo-Delivery")),
    }
}

/// A decoded body: the JSON, and the bytes the provider's signature covers.
pub(super) struct Payload<'a> {
    pub json: Value,
    pub signed: Cow<'a, [u8]>,
}

impl<'a> Payload<'a> {
    /// Decode a JSON or form body; the error is the 400's message.
    pub fn decode(provider: Provider, d: &Delivery<'a>) -> Result<Payload<'a>, &'static str> {
        let text: Cow<'a, [u8]> = if is_form(d) {
            Cow::Owned(form_payload(d.body).ok_or("form body without a payload field")?)
        } else {
            Cow::Borrowed(d.body)
        };
        let json = serde_json::from_slice(&text).map_err(|_| "malformed JSON payload")?;
        let signed = match provider {
            Provider::Gitea => text,
            Provider::Github | Provider::Gitlab => Cow::Borrowed(d.body),
        };
        Ok(Payload { json, signed })
    }
}

/// A form body: by its content type or its shape (`payload=` first), unless it is plainly JSON —
/// a JSON body sent with the wrong content type is still a JSON body.
fn is_form(d: &Delivery<'_>) -> bool {
    let declared = d.header("content-type").is_some_and(|t| {
        t.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let first = d.body.iter().find(|b| !b.is_ascii_whitespace());
    (declared && first != Some(&b'{')) || d.body.starts_with(b"payload=")
}

/// The decoded `payload` field of a form body.
fn form_payload(body: &[u8]) -> Option<Vec<u8>> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned().into_bytes())
}

/// What a provider's delivery says, once parsed.
#[derive(Debug, PartialEq)]
pub(super) struct Parsed {
    pub event: Event,
    /// The event as logged: the header, and for GitLab system hooks the body's `event_name`.
    pub event_name: String,
    pub delivery_id: String,
    pub repo_urls: Vec<String>,
    pub git_ref: Option<String>,
    pub after: Option<String>,
    /// For a repository event: the owners it concerns (new and, for a transfer, old).
    pub owners: Vec<String>,
}

#[derive(Debug, PartialEq)]
pub(super) enum Event {
    Push,
    Ping,
    /// A repository created, renamed, transferred, archived or deleted in an account:
    /// GitHub's and Gitea's `repository` event, GitLab's system hook `project_*` events.
    Repository,
    Other(String),
}

/// Parse a decoded payload of `provider`.
pub(super) fn parse(provider: Provider, d: &Delivery<'_>, json: &Value) -> Parsed {
    let header_event = event_header(provider, d.headers).unwrap_or_default();
    let (event, event_name, repo_urls) = match provider {
        Provider::Github => (github_event(header_event), header_event.to_owned(), github_urls(json)),
        Provider::Gitlab => {
            let (event, name) = gitlab_event(header_event, json);
            (event, name, gitlab_urls(json))
        }
        Provider::Gitea => (gitea_event(header_event), header_event.to_owned(), gitea_urls(json)),
    };
    let (git_ref, after) = pushed(json);
    let owners = if event == Event::Repository {
        repository_owners(provider, json)
    } else {
        Vec::new()
    };
    Parsed {
        owners,
        event,
        event_name: super::printable(&event_name, 64),
        delivery_id: delivery_id(delivery_header(provider, d.headers), d.body),
        repo_urls,
        git_ref,
        after,
    }
}

fn github_event(name: &str) -> Event {
    match name {
        "push" | "create" | "delete" => Event::Push,
        "ping" => Event::Ping,
        "repository" => Event::Repository,
        other => Event::Other(other.to_owned()),
    }
}

/// GitLab's event: the header for project and group hooks; for system hooks and a group hook's
/// project events (`Project Hook`, GitLab 17.6: `project_create`, `project_destroy`) the body's
/// `event_name` (or `object_kind`, which newer system events use instead).
fn gitlab_event(name: &str, json: &Value) -> (Event, String) {
    match name {
        // GitLab's "Test" button sends a push hook too.
        "Push Hook" | "Tag Push Hook" => (Event::Push, name.to_owned()),
        "System Hook" | "Project Hook" => {
            let kind = json["event_name"]
                .as_str()
                .or_else(|| json["object_kind"].as_str())
                .unwrap_or_default();
            let event = match kind {
                "push" | "tag_push" | "repository_update" => Event::Push,
                "project_create" | "project_destroy" | "project_rename" | "project_transfer" | "project_update" => {
                    Event::Repository
                }
                other => Event::Other(format!("{name}: {other}")),
            };
            (event, format!("{name}: {kind}"))
        }
        other => (Event::Other(other.to_owned()), other.to_owned()),
    }
}

fn gitea_event(name: &str) -> Event {
    match name {
        "push" | "create" | "delete" => Event::Push,
        "repository" => Event::Repository,
        other => Event::Other(other.to_owned()),
    }
}

/// The owners a repository event concerns: GitHub `repository.owner.login` (and for a
/// transfer `changes.owner.from.{organization,user}.login`), Gitea/Forgejo
/// `repository.owner.login|username` and `organization.username`, GitLab system hooks the
/// namespace of `path_with_namespace` and `old_path_with_namespace`.
fn repository_owners(provider: Provider, json: &Value) -> Vec<String> {
    let namespace = |p: &Value| p.as_str().and_then(|p| p.rsplit_once('/')).map(|(ns, _)| ns.to_owned());
    let mut owners: Vec<String> = match provider {
        Provider::Github => strings([
            &json["repository"]["owner"]["login"],
            &json["organization"]["login"],
            &json["changes"]["owner"]["from"]["organization"]["login"],
            &json["changes"]["owner"]["from"]["user"]["login"],
        ]),
        Provider::Gitea => strings([
            &json["repository"]["owner"]["login"],
            &json["repository"]["owner"]["username"],
            &json["organization"]["username"],
        ]),
        Provider::Gitlab => [&json["path_with_namespace"], &json["old_path_with_namespace"]]
            .into_iter()
            .filter_map(namespace)
            .collect(),
    };
    owners.sort();
    owners.dedup();
    owners
}

fn strings<'v>(values: impl IntoIterator<Item = &'v Value>) -> Vec<String> {
    values
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn github_urls(json: &Value) -> Vec<String> {
    let repo = &json["repository"];
    strings(["clone_url", "html_url", "git_url", "url"].map(|k| &repo[k]))
}

fn gitlab_urls(json: &Value) -> Vec<String> {
    let keys = ["git_http_url", "web_url", "http_url", "url"];
    strings(keys.iter().flat_map(|k| [&json["project"][k], &json["repository"][k]]))
}

fn gitea_urls(json: &Value) -> Vec<String> {
    let repo = &json["repository"];
    strings(["clone_url", "html_url"].map(|k| &repo[k]))
}

/// The pushed ref and its new value, when the delivery names exactly one: `ref`/`after` of a
/// push, or the single entry of a GitLab `repository_update`'s `changes`.
fn pushed(json: &Value) -> (Option<String>, Option<String>) {
    let single = match json["changes"].as_array() {
        Some(changes) if json.get("ref").is_none() && changes.len() == 1 => &changes[0],
        _ => json,
    };
    let git_ref = single["ref"]
        .as_str()
        .filter(|r| r.starts_with("refs/"))
        .map(str::to_owned);
    let after = single["after"]
        .as_str()
        .filter(|a| a.len() == 40 && a.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned);
    (git_ref, after)
}

/// The delivery id: the provider's, when it is plain printable text. Without a usable one the
/// body's digest stands in, so an identical redelivery still deduplicates. Providers send UUIDs
/// or numbers; anything else with spaces or control characters (a header-injection attempt:
/// CR/LF, escape sequences) never reaches a log line, a status, a notification or the queue.
fn delivery_id(header: Option<&str>, body: &[u8]) -> String {
    header
        .filter(|id| !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("body-{:016x}", crate::git::hash::fnv1a(body)))
}

/// The configured repositories whose source is one of `urls`.
pub(super) fn matching_repos<'c>(config: &'c Config, urls: &[String]) -> Vec<&'c RepoConfig> {
    if urls.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = urls.iter().map(|u| normalize_url(u)).collect();
    config
        .repos
        .values()
        .filter(|r| wanted.contains(&normalize_url(&r.source.to_string())))
        .collect()
}

/// Compare repository URLs the way the providers do: GitHub, GitLab and Gitea treat `Org/Repo`
/// and `org/repo` as the same repository (both clone), so case does not matter, nor do userinfo,
/// default ports, a trailing `/` or `.git`; `http` and `https` are the same repository.
pub fn normalize_url(url: &str) -> String {
    let url = crate::git::remote::redact_url(url).replace("***@", "").to_lowercase();
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_owned(), r.to_owned()),
        None => (String::new(), url.clone()),
    };
    let scheme = if scheme == "http" { "https".to_owned() } else { scheme };
    let (host, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let host = host
        .strip_suffix(":443")
        .or_else(|| host.strip_suffix(":80"))
        .unwrap_or(host);
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{scheme}://{host}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> Delivery<'a> {
        Delivery {
            provider: "github",
            headers,
            body,
        }
    }

    #[test]
    fn url_normalisation_ignores_case_like_the_providers() {
        let a = normalize_url("https://GitHub.com/Org/Repo.git");
        assert_eq!(a, "https://github.com/org/repo");
        assert_eq!(normalize_url("http://github.com:80/org/repo/"), a);
        assert_eq!(normalize_url("https://user:pw@github.com:443/ORG/REPO"), a);
        assert_ne!(normalize_url("https://github.com/org/other"), a);
        assert_ne!(normalize_url("https://github.com/org/repo2"), a);
    }

    #[test]
    fn form_bodies_are_decoded_and_json_with_a_wrong_content_type_is_json() {
        let json = r#"{"ref":"refs/heads/main","x":"a b&c=d"}"#;
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish();
        let form_type = vec![(
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        )];
        for (headers, body) in [(&form_type, form.as_bytes()), (&vec![], form.as_bytes())] {
            let d = delivery(headers, body);
            let p = Payload::decode(Provider::Github, &d).unwrap();
            assert_eq!(p.json["x"], "a b&c=d");
            assert_eq!(&*p.signed, form.as_bytes(), "GitHub signs the body as sent");
            let p = Payload::decode(Provider::Gitea, &d).unwrap();
            assert_eq!(&*p.signed, json.as_bytes(), "Gitea signs the JSON");
        }
        let d = delivery(&form_type, json.as_bytes());
        assert_eq!(Payload::decode(Provider::Github, &d).unwrap().json["x"], "a b&c=d");
        let d = delivery(&form_type, b"other=1");
        assert_eq!(
            Payload::decode(Provider::Github, &d).err(),
            Some("form body without a payload field")
        );
        let d = delivery(&form_type, b"payload=%7Bnot");
        assert_eq!(
            Payload::decode(Provider::Github, &d).err(),
            Some("malformed JSON payload")
        );
    }

    /// Repository events name their owners: GitHub's `repository` (a transfer names the old
    /// owner too), Gitea's `repository`, GitLab's system hook `project_rename` (both paths) and
    /// group hook `project_create`.
    #[test]
    fn repository_events_name_their_owners() {
        let h = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let github = h("X-GitHub-Event", "repository");
        let json = serde_json::json!({
            "action": "transferred",
            "repository": { "full_name": "new-org/app", "owner": { "login": "new-org" } },
            "changes": { "owner": { "from": { "organization": { "login": "acme" } } } },
        });
        let p = parse(Provider::Github, &delivery(&github, b""), &json);
        assert_eq!(
            (p.event, p.owners),
            (Event::Repository, vec!["acme".into(), "new-org".into()])
        );
        let gitea = h("X-Gitea-Event", "repository");
        let json = serde_json::json!({ "action": "created",
            "repository": { "full_name": "acme/x", "owner": { "login": "acme", "username": "acme" } },
            "organization": { "username": "acme" } });
        let d = Delivery {
            provider: "gitea",
            headers: &gitea,
            body: b"",
        };
        let p = parse(Provider::Gitea, &d, &json);
        assert_eq!((p.event, p.owners), (Event::Repository, vec!["acme".into()]));
        let gitlab = h("X-Gitlab-Event", "System Hook");
        let json = serde_json::json!({ "event_name": "project_rename",
            "path_with_namespace": "grp/sub/new", "old_path_with_namespace": "grp/sub/old" });
        let d = Delivery {
            provider: "gitlab",
            headers: &gitlab,
            body: b"",
        };
        let p = parse(Provider::Gitlab, &d, &json);
        assert_eq!((p.event, p.owners), (Event::Repository, vec!["grp/sub".into()]));
        // A group hook's project event (GitLab 17.6), the documented payload (GitLab docs
        // doc/user/project/integrations/webhook_events.md, gitlabhq/gitlabhq at 88d3e50d).
        let group = h("X-Gitlab-Event", "Project Hook");
        let json = serde_json::json!({ "event_name": "project_create",
            "created_at": "2024-10-07T10:43:48Z", "updated_at": "2024-10-07T10:43:48Z",
            "name": "project1", "path": "project1", "path_with_namespace": "group1/project1",
            "project_id": 22, "project_namespace_id": 32,
            "owners": [{ "name": "John", "email": "user1@example.com" }], "project_visibility": "private" });
        let d = Delivery {
            provider: "gitlab",
            headers: &group,
            body: b"",
        };
        let p = parse(Provider::Gitlab, &d, &json);
        assert_eq!((p.event, p.owners), (Event::Repository, vec!["group1".into()]));
    }

    #[test]
    fn gitlab_system_hooks_and_the_idempotency_key() {
        let headers = vec![
            ("X-Gitlab-Event".to_owned(), "System Hook".to_owned()),
            ("X-Gitlab-Event-UUID".to_owned(), "per-request".to_owned()),
            ("Idempotency-Key".to_owned(), "kept-on-retry".to_owned()),
        ];
        let json = serde_json::json!({
            "event_name": "repository_update",
            "project": { "git_http_url": "http://example.com/jsmith/example.git" },
            "changes": [{ "before": "0".repeat(40), "after": "4".repeat(40), "ref": "refs/heads/master" }],
        });
        let d = Delivery {
            provider: "gitlab",
            headers: &headers,
            body: b"",
        };
        let p = parse(Provider::Gitlab, &d, &json);
        assert_eq!(p.event, Event::Push);
        assert_eq!(p.event_name, "System Hook: repository_update");
        assert_eq!(p.delivery_id, "kept-on-retry");
        assert_eq!(p.git_ref.as_deref(), Some("refs/heads/master"));
        assert_eq!(p.after, Some("4".repeat(40)));
        let other = parse(
            Provider::Gitlab,
            &d,
            &serde_json::json!({ "event_name": "user_create" }),
        );
        assert_eq!(other.event, Event::Other("System Hook: user_create".into()));
        let older = [("X-Gitlab-Event-UUID".to_owned(), "per-request".to_owned())];
        let d = Delivery {
            provider: "gitlab",
            headers: &older,
            body: b"",
        };
        assert_eq!(parse(Provider::Gitlab, &d, &json).delivery_id, "per-request");
    }
}
