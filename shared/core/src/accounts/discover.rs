//! The providers' REST APIs behind one trait: list an owner's repositories a page at a time
//! (conditional on the page's ETag), read one, create one, rename one.
//!
//! | | GitHub | GitLab (v4) | Gitea / Forgejo (v1) |
//! |---|---|---|---|
//! | list | `GET /orgs/{org}/repos`, `/users/{u}/repos` | `GET /groups/{id}/projects`, `/users/{u}/projects` | `GET /orgs/{org}/repos`, `/users/{u}/repos` |
//! | next page | `Link: rel="next"` | `X-Next-Page` | `Link: rel="next"` |
//! | one | `GET /repos/{o}/{r}` | `GET /projects/{path}` | `GET /repos/{o}/{r}` |
//! | create | `POST /orgs/{org}/repos`, else `/user/repos` | `POST /projects` (`namespace_id`) | `POST /orgs/{org}/repos`, else `/user/repos` |
//! | exists | 422 "already exists" | 400 "has already been taken" | 409 |
//! | rename | `PATCH /repos/{o}/{r}` | `PUT /projects/{path}` | `PATCH /repos/{o}/{r}` |
//!
//! **Courtesy.** Every request sends `If-None-Match` with the page's last ETag when there is
//! one (a `304` costs GitHub's rate limit nothing). A `403`/`429` that says it is a rate limit
//! (`Retry-After`, `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`, or GitHub's secondary
//! limit message) is waited out when the wait fits in the caller's deadline, with a growing
//! backoff when the provider names no time; otherwise the caller learns until when
//! ([`ApiError::RateLimited`]) and tries again then. Tokens go in headers only and never
//! into an error, a log line or a status.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AccountConfig, AccountState, CreateTarget, OwnerKind, PageMemo};
use crate::clock::now_ms;
use crate::config::Provider as Kind;

/// A repository as a provider lists it (the fields gitferry uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRepo {
    /// The provider's id (stable across renames and transfers).
    pub id: String,
    /// The owner's path (`acme`, `group/sub`).
    pub owner: String,
    /// The repository's own name (path segment).
    pub name: String,
    /// `owner/name`.
    pub path: String,
    pub clone_url: String,
    pub private: bool,
    pub fork: bool,
    pub archived: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub has_wiki: bool,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub enum Page {
    /// `304`: the page is what it was.
    NotModified,
    Fresh {
        repos: Vec<RemoteRepo>,
        etag: Option<String>,
        next: bool,
    },
}

/// What creating a repository came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creation {
    New,
    /// It was there already (created by someone, or by an earlier run).
    Exists,
}

/// What a created repository gets from its source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateSpec {
    pub private: bool,
    pub description: Option<String>,
    pub default_branch: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Rate-limited until this time (Unix ms) — longer than the caller could wait.
    #[error("rate-limited until {until_ms}")]
    RateLimited { until_ms: u64 },
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("{0}")]
    Transport(String),
    #[error("unexpected response: {0}")]
    Malformed(String),
}

impl ApiError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::RateLimited { .. } | ApiError::Transport(_) => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429,
            ApiError::Malformed(_) => false,
        }
    }
}

/// A provider's API.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Page `page` (1-based) of the owner's repositories, conditional on `etag`.
    async fn list_page(&self, page: u32, etag: Option<&str>, deadline: Instant) -> Result<Page, ApiError>;
    /// One repository by path (`owner/name`); `None` if it does not exist (or is hidden).
    async fn get_repo(&self, path: &str) -> Result<Option<RemoteRepo>, ApiError>;
    /// Create `namespace/name`.
    async fn create_repo(&self, namespace: &str, name: &str, spec: &CreateSpec) -> Result<Creation, ApiError>;
    /// Rename `namespace/from` to `namespace/to`.
    async fn rename_repo(&self, namespace: &str, from: &str, to: &str) -> Result<(), ApiError>;
    /// How many repositories a full listing page holds (what gitferry asks for).
    fn page_size(&self) -> usize {
        100
    }
}

/// The provider of an account's sources.
pub fn for_account(a: &AccountConfig) -> Box<dyn Provider> {
    let http = Http::new(a.provider, &a.api_url, a.token.as_ref().map(|t| t.expose().to_owned()));
    let owner = Owner {
        path: a.owner.clone(),
        kind: a.owner_kind,
        subgroups: a.include_subgroups,
    };
    provider(a.provider, http, owner)
}

/// The provider of a target template with `create = true`.
pub fn for_target(c: &CreateTarget) -> Box<dyn Provider> {
    let http = Http::new(c.provider, &c.api_url, c.token.as_ref().map(|t| t.expose().to_owned()));
    provider(c.provider, http, Owner::default())
}

fn provider(kind: Kind, http: Http, owner: Owner) -> Box<dyn Provider> {
    match kind {
        Kind::Github => Box::new(Github { http, owner }),
        Kind::Gitlab => Box::new(Gitlab { http, owner }),
        Kind::Gitea => Box::new(Gitea { http, owner }),
    }
}

/// `https://host/ns/sub/name.git` → (`ns/sub`, `name`).
pub fn split_repo_url(url: &str) -> Option<(String, String)> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let path = rest.split_once('/')?.1.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let (ns, name) = path.rsplit_once('/')?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_owned(), name.to_owned()))
}

/// A complete listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listed {
    pub repos: Vec<RemoteRepo>,
    pub pages: Vec<PageMemo>,
    /// Every page answered `304`: nothing changed.
    pub unchanged: bool,
}

/// The result of [`list_all`] and what it cost.
#[derive(Debug)]
pub struct Listing {
    pub result: Result<Listed, ApiError>,
    pub requests: usize,
    pub not_modified: usize,
}

/// List every page, reusing what a `304` page held from `state`. ETags are trusted only when
/// the account's filters are those the pages were listed with.
pub async fn list_all(p: &dyn Provider, state: &AccountState, account: &AccountConfig, deadline: Instant) -> Listing {
    let trust = state.filter_digest == account.filter_digest();
    let known: std::collections::HashMap<&str, &RemoteRepo> = state
        .repos
        .values()
        .map(|r| (r.source.id.as_str(), &r.source))
        .collect();
    let mut out = Listing {
        result: Ok(Listed::default()),
        requests: 0,
        not_modified: 0,
    };
    let mut listed = Listed {
        unchanged: true,
        ..Listed::default()
    };
    let mut page = 1u32;
    loop {
        let memo = state.pages.get(page as usize - 1).filter(|_| trust);
        let etag = memo.and_then(|m| m.etag.as_deref());
        out.requests += 1;
        match p.list_page(page, etag, deadline).await {
            Ok(Page::NotModified) => {
                let Some(memo) = memo else {
                    out.result = Err(ApiError::Malformed("304 for a page never listed".into()));
                    return out;
                };
                out.not_modified += 1;
                // Ids that were never admitted are not in the state: they stay not admitted.
                listed.repos.extend(
                    memo.ids
                        .iter()
                        .filter_map(|id| known.get(id.as_str()).map(|r| (*r).clone())),
                );
                listed.pages.push(memo.clone());
                // Past the last page known: a full one may have been followed by a new page
                // (listings are oldest first, so new repositories land at the end). That page
                // is asked once without an ETag, then conditionally like the others.
                if page as usize >= state.pages.len() && memo.ids.len() < p.page_size() {
                    break;
                }
            }
            Ok(Page::Fresh { repos, etag, next }) => {
                listed.unchanged = false;
                let full = repos.len() >= p.page_size();
                listed.pages.push(PageMemo {
                    etag,
                    ids: repos.iter().map(|r| r.id.clone()).collect(),
                });
                listed.repos.extend(repos);
                // A full last page is followed by the (empty) next one, whose ETag then tells
                // cheaply when a new repository starts a page of its own.
                if !next && !full {
                    break;
                }
            }
            Err(e) => {
                out.result = Err(e);
                return out;
            }
        }
        page += 1;
        if page > 10_000 {
            out.result = Err(ApiError::Malformed("more than 10,000 pages".into()));
            return out;
        }
    }
    // Ids seen on a 304 page but listed as admitted-and-known come from the state; ids never
    // admitted were skipped above. A repository listed twice (moved between pages while we
    // listed) counts once.
    let mut seen = std::collections::HashSet::new();
    listed.repos.retain(|r| seen.insert(r.id.clone()));
    out.result = Ok(listed);
    out
}

// ---- HTTP ----------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Owner {
    path: String,
    kind: OwnerKind,
    subgroups: bool,
}

struct Http {
    kind: Kind,
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::Malformed(format!("not JSON: {e}")))
    }

    fn error(&self) -> ApiError {
        let message = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("error"))
                    .map(|m| m.to_string().trim_matches('"').to_owned())
            })
            .unwrap_or_default();
        ApiError::Status {
            status: self.status,
            message: message.chars().take(300).collect(),
        }
    }

    /// `Link: <…>; rel="next"` or GitLab's `X-Next-Page`.
    fn has_next(&self) -> bool {
        let link = self
            .header("link")
            .is_some_and(|l| l.split(',').any(|part| part.contains("rel=\"next\"")));
        let gitlab = self.header("x-next-page").is_some_and(|n| !n.trim().is_empty());
        link || gitlab
    }
}

/// The most a single wait for a rate limit may last inside one run.
const MAX_WAIT: Duration = Duration::from_secs(30);

impl Http {
    fn new(kind: Kind, base: &str, token: Option<String>) -> Http {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(crate::git::AGENT)
            .build()
            .expect("HTTP client builds");
        Http {
            kind,
            base: base.trim_end_matches('/').to_owned(),
            token,
            client,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
        deadline: Instant,
    ) -> Result<Reply, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut backoff = Duration::from_secs(1);
        for attempt in 0..6 {
            let mut req = self.client.request(method.clone(), &url);
            req = match self.kind {
                Kind::Github => req
                    .header("accept", "application/vnd.github+json")
                    .header("x-github-api-version", "2022-11-28"),
                _ => req.header("accept", "application/json"),
            };
            if let Some(t) = &self.token {
                req = match self.kind {
                    Kind::Github | Kind::Gitlab => req.header("authorization", format!("Bearer {t}")),
                    Kind::Gitea => req.header("authorization", format!("token {t}")),
                };
            }
            if let Some(e) = etag {
                req = req.header("if-none-match", e);
            }
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b.to_string());
            }
            // reqwest's errors carry the URL, never the headers: the token stays out of them.
            let response = req.send().await.map_err(|e| ApiError::Transport(transport(&e)))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map_err(|e| ApiError::Transport(transport(&e)))?
                .to_vec();
            let reply = Reply { status, headers, body };
            let Some(wait) = rate_limit_wait(&reply, backoff) else {
                return Ok(reply);
            };
            let until = Instant::now() + wait;
            let until_ms = now_ms() + wait.as_millis() as u64;
            if wait > MAX_WAIT || until >= deadline || attempt == 5 {
                return Err(ApiError::RateLimited { until_ms });
            }
            tracing::info!(api = %self.base, status, wait_ms = wait.as_millis() as u64, "rate-limited: waiting");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_WAIT);
        }
        unreachable!("the loop returns")
    }

    async fn get(&self, path: &str, etag: Option<&str>, deadline: Instant) -> Result<Reply, ApiError> {
        self.send(reqwest::Method::GET, path, None, etag, deadline).await
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Reply, ApiError> {
        self.send(method, path, Some(body), None, Instant::now() + Duration::from_secs(60))
            .await
    }
}

fn transport(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match e.url() {
        Some(u) => format!("{what}: {}", crate::git::remote::redact_url(u.as_str())),
        None => what.to_owned(),
    }
}

/// How long a rate-limited reply asks us to wait; `None` when it is not a rate limit.
fn rate_limit_wait(r: &Reply, backoff: Duration) -> Option<Duration> {
    if r.status != 403 && r.status != 429 {
        return None;
    }
    if let Some(secs) = r.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if r.header("x-ratelimit-remaining").map(str::trim) == Some("0") {
        let reset = r
            .header("x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let now = now_ms() / 1000;
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    let text = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    if r.status == 429 || text.contains("rate limit") {
        return Some(backoff.max(Duration::from_secs(1)));
    }
    None
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn opt(v: &Value, k: &str) -> Option<String> {
    v.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn id(v: &Value) -> Result<String, ApiError> {
    match v.get("id") {
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ApiError::Malformed("a repository without an id".into())),
    }
}

fn enc(path: &str) -> String {
    path.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

fn page_of(reply: Reply, parse: impl Fn(&Value) -> Result<RemoteRepo, ApiError>) -> Result<Page, ApiError> {
    match reply.status {
        304 => Ok(Page::NotModified),
        200 => {
            let json = reply.json()?;
            let items = json
                .as_array()
                .ok_or_else(|| ApiError::Malformed("a listing that is not an array".into()))?;
            let repos = items.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
            Ok(Page::Fresh {
                repos,
                etag: reply.header("etag").map(str::to_owned),
                next: reply.has_next(),
            })
        }
        _ => Err(reply.error()),
    }
}

/// `GET path` of one repository: `None` when it does not exist (or is hidden).
async fn one_repo(
    http: &Http,
    path: &str,
    parse: fn(&Value) -> Result<RemoteRepo, ApiError>,
) -> Result<Option<RemoteRepo>, ApiError> {
    let r = http.get(path, None, Instant::now() + Duration::from_secs(60)).await?;
    match r.status {
        200 => parse(&r.json()?).map(Some),
        404 => Ok(None),
        _ => Err(r.error()),
    }
}

// ---- GitHub's REST shape, which Gitea copies -----------------------------------------------
//
// Gitea (and Forgejo) answer in GitHub's shape: the same repository JSON (`full_name`,
// `clone_url`, `private`, `fork`, `archived`, `has_wiki`…), `GET /repos/{owner}/{name}`,
// create under the organisation or else the token's own user, rename by `PATCH`. That part is
// written once, here; each provider's `impl` below says what differs (the listing's URL and
// page size, the body of a create, how "it already exists" reads).

/// A repository in GitHub's (and Gitea's) JSON.
fn full_name_repo(v: &Value) -> Result<RemoteRepo, ApiError> {
    let path = s(v, "full_name");
    let (owner, name) = path
        .split_once('/')
        .map(|(o, n)| (o.to_owned(), n.to_owned()))
        .ok_or_else(|| ApiError::Malformed("full_name without owner".into()))?;
    Ok(RemoteRepo {
        id: id(v)?,
        owner,
        name,
        path,
        clone_url: s(v, "clone_url"),
        private: b(v, "private"),
        fork: b(v, "fork"),
        archived: b(v, "archived"),
        default_branch: opt(v, "default_branch"),
        description: opt(v, "description"),
        has_wiki: b(v, "has_wiki"),
    })
}

/// `POST /orgs/{namespace}/repos`; when that is not an organisation (404), the token's own
/// user: `POST /user/repos`. The reply is the caller's to read.
async fn create_in_org_or_user(http: &Http, namespace: &str, body: &Value) -> Result<Reply, ApiError> {
    let r = http
        .call(reqwest::Method::POST, &format!("/orgs/{}/repos", enc(namespace)), body)
        .await?;
    if r.status != 404 {
        return Ok(r);
    }
    http.call(reqwest::Method::POST, "/user/repos", body).await
}

/// `PATCH /repos/{namespace}/{from}` with the new name.
async fn rename_by_patch(http: &Http, namespace: &str, from: &str, to: &str) -> Result<(), ApiError> {
    let r = http
        .call(
            reqwest::Method::PATCH,
            &format!("/repos/{}/{}", enc(namespace), enc(from)),
            &serde_json::json!({ "name": to }),
        )
        .await?;
    if r.status == 200 { Ok(()) } else { Err(r.error()) }
}

// ---- GitHub --------------------------------------------------------------------------------

struct Github {
    http: Http,
    owner: Owner,
}

#[async_trait::async_trait]
impl Provider for Github {
    async fn list_page(&self, page: u32, etag: Option<&str>, deadline: Instant) -> Result<Page, ApiError> {
        let o = enc(&self.owner.path);
        let path = match self.owner.kind {
            // Oldest first: a new repository changes the last page only, so the other pages
            // keep their ETags (the default order, newest first, would shift every page).
            OwnerKind::User => {
                format!("/users/{o}/repos?type=owner&sort=created&direction=asc&per_page=100&page={page}")
            }
            _ => format!("/orgs/{o}/repos?type=all&sort=created&direction=asc&per_page=100&page={page}"),
        };
        page_of(self.http.get(&path, etag, deadline).await?, full_name_repo)
    }

    async fn get_repo(&self, path: &str) -> Result<Option<RemoteRepo>, ApiError> {
        one_repo(&self.http, &format!("/repos/{path}"), full_name_repo).await
    }

    async fn create_repo(&self, namespace: &str, name: &str, spec: &CreateSpec) -> Result<Creation, ApiError> {
        // GitHub's create takes no default branch; `auto_init: false` keeps the repository
        // empty for the first push.
        let body = serde_json::json!({
            "name": name,
            "private": spec.private,
            "description": spec.description.clone().unwrap_or_default(),
            "auto_init": false,
        });
        let r = create_in_org_or_user(&self.http, namespace, &body).await?;
        match r.status {
            201 => Ok(Creation::New),
            422 if String::from_utf8_lossy(&r.body).contains("already exists") => Ok(Creation::Exists),
            _ => Err(r.error()),
        }
    }

    async fn rename_repo(&self, namespace: &str, from: &str, to: &str) -> Result<(), ApiError> {
        rename_by_patch(&self.http, namespace, from, to).await
    }
}

// ---- GitLab --------------------------------------------------------------------------------

struct Gitlab {
    http: Http,
    owner: Owner,
}

fn gitlab_repo(v: &Value) -> Result<RemoteRepo, ApiError> {
    let path = s(v, "path_with_namespace");
    let (owner, name) = path
        .rsplit_once('/')
        .map(|(o, n)| (o.to_owned(), n.to_owned()))
        .ok_or_else(|| ApiError::Malformed("path_with_namespace without namespace".into()))?;
    Ok(RemoteRepo {
        id: id(v)?,
        owner,
        name,
        path,
        clone_url: s(v, "http_url_to_repo"),
        private: v.get("visibility").and_then(Value::as_str) != Some("public"),
        fork: v.get("forked_from_project").is_some_and(|f| !f.is_null()),
        archived: b(v, "archived"),
        default_branch: opt(v, "default_branch"),
        description: opt(v, "description"),
        has_wiki: b(v, "wiki_enabled"),
    })
}

#[async_trait::async_trait]
impl Provider for Gitlab {
    async fn list_page(&self, page: u32, etag: Option<&str>, deadline: Instant) -> Result<Page, ApiError> {
        let o = enc(&self.owner.path);
        let path = match self.owner.kind {
            OwnerKind::User => format!("/users/{o}/projects?per_page=100&page={page}&order_by=id&sort=asc"),
            _ => format!(
                "/groups/{o}/projects?per_page=100&page={page}&order_by=id&sort=asc&include_subgroups={}",
                self.owner.subgroups
            ),
        };
        page_of(self.http.get(&path, etag, deadline).await?, gitlab_repo)
    }

    async fn get_repo(&self, path: &str) -> Result<Option<RemoteRepo>, ApiError> {
        one_repo(&self.http, &format!("/projects/{}", enc(path)), gitlab_repo).await
    }

    async fn create_repo(&self, namespace: &str, name: &str, spec: &CreateSpec) -> Result<Creation, ApiError> {
        let ns = self
            .http
            .get(
                &format!("/namespaces/{}", enc(namespace)),
                None,
                Instant::now() + Duration::from_secs(60),
            )
            .await?;
        if ns.status != 200 {
            return Err(ns.error());
        }
        let ns_id = ns.json()?.get("id").cloned().unwrap_or(Value::Null);
        let mut body = serde_json::json!({
            "name": name,
            "path": name,
            "namespace_id": ns_id,
            "visibility": if spec.private { "private" } else { "public" },
            "description": spec.description.clone().unwrap_or_default(),
        });
        if let Some(branch) = &spec.default_branch {
            body["default_branch"] = branch.clone().into();
        }
        let r = self.http.call(reqwest::Method::POST, "/projects", &body).await?;
        match r.status {
            201 => Ok(Creation::New),
            400 | 409 if String::from_utf8_lossy(&r.body).contains("has already been taken") => Ok(Creation::Exists),
            _ => Err(r.error()),
        }
    }

    async fn rename_repo(&self, namespace: &str, from: &str, to: &str) -> Result<(), ApiError> {
        let r = self
            .http
            .call(
                reqwest::Method::PUT,
                &format!("/projects/{}", enc(&format!("{namespace}/{from}"))),
                &serde_json::json!({ "name": to, "path": to }),
            )
            .await?;
        if r.status == 200 { Ok(()) } else { Err(r.error()) }
    }
}

// ---- Gitea / Forgejo -----------------------------------------------------------------------

struct Gitea {
    http: Http,
    owner: Owner,
}

#[async_trait::async_trait]
impl Provider for Gitea {
    fn page_size(&self) -> usize {
        50
    }

    async fn list_page(&self, page: u32, etag: Option<&str>, deadline: Instant) -> Result<Page, ApiError> {
        let o = enc(&self.owner.path);
        let path = match self.owner.kind {
            OwnerKind::User => format!("/users/{o}/repos?limit=50&page={page}"),
            _ => format!("/orgs/{o}/repos?limit=50&page={page}"),
        };
        page_of(self.http.get(&path, etag, deadline).await?, full_name_repo)
    }

    async fn get_repo(&self, path: &str) -> Result<Option<RemoteRepo>, ApiError> {
        one_repo(&self.http, &format!("/repos/{path}"), full_name_repo).await
    }

    async fn create_repo(&self, namespace: &str, name: &str, spec: &CreateSpec) -> Result<Creation, ApiError> {
        let mut body = serde_json::json!({
            "name": name,
            "private": spec.private,
            "description": spec.description.clone().unwrap_or_default(),
        });
        if let Some(branch) = &spec.default_branch {
            body["default_branch"] = branch.clone().into();
        }
        let r = create_in_org_or_user(&self.http, namespace, &body).await?;
        match r.status {
            201 => Ok(Creation::New),
            409 => Ok(Creation::Exists),
            _ => Err(r.error()),
        }
    }

    async fn rename_repo(&self, namespace: &str, from: &str, to: &str) -> Result<(), ApiError> {
        rename_by_patch(&self.http, namespace, from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_urls_split_into_namespace_and_name() {
        assert_eq!(
            split_repo_url("https://gitlab.example.com/mirrors/sub/app.git"),
            Some(("mirrors/sub".into(), "app".into()))
        );
        assert_eq!(
            split_repo_url("https://x:***@github.com/acme/app"),
            Some(("acme".into(), "app".into()))
        );
        assert_eq!(split_repo_url("https://host/app.git"), None);
    }

    #[test]
    fn rate_limit_replies() {
        let reply = |status, headers: &[(&'static str, &str)], body: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in headers {
                h.insert(*k, v.parse().unwrap());
            }
            Reply {
                status,
                headers: h,
                body: body.as_bytes().to_vec(),
            }
        };
        let b = Duration::from_secs(2);
        assert_eq!(rate_limit_wait(&reply(200, &[], ""), b), None);
        assert_eq!(rate_limit_wait(&reply(403, &[], "forbidden"), b), None, "a plain 403");
        assert_eq!(
            rate_limit_wait(&reply(429, &[("retry-after", "7")], ""), b),
            Some(Duration::from_secs(7))
        );
        let reset = (now_ms() / 1000 + 100).to_string();
        let w = rate_limit_wait(
            &reply(
                403,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &reset)],
                "",
            ),
            b,
        )
        .unwrap();
        assert!(w >= Duration::from_secs(98) && w <= Duration::from_secs(100), "{w:?}");
        assert_eq!(
            rate_limit_wait(&reply(403, &[], "You have exceeded a secondary rate limit"), b),
            Some(b)
        );
    }
}
