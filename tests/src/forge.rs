//! A loopback stand-in for the repository REST APIs of GitHub, GitLab and Gitea/Forgejo: the
//! calls gitferry's account discovery and target creation make, answered the way each
//! provider's published API description says. No real GitHub/GitLab/Gitea can run on these
//! machines; the repositories themselves live on the harness's real git servers (`Servers`),
//! so a repository "created" here is a real bare repository a real push lands in.
//!
//! Followed descriptions (request parameters, headers, status codes, the fields gitferry reads):
//!
//! * GitHub REST API (github/rest-api-description, `api.github.com` OpenAPI, as the npm package
//!   `@octokit/openapi` publishes it — `make deps` extracts `tests/openapi/github.json` from it:
//!   the stand-in's repository objects and error bodies start from its smallest valid instances
//!   of each schema, and `accounts.rs` validates every answer against the schemas;
//!   <https://docs.github.com/en/rest/repos/repos>): `GET /orgs/{org}/repos` and
//!   `GET /users/{username}/repos` (`per_page` max 100, default 30; `page` from 1; `Link` header
//!   with `rel="next"`); repository fields `id`, `full_name`, `clone_url`, `private`, `fork`,
//!   `archived`, `default_branch`, `description`, `has_wiki`. Conditional requests
//!   (<https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api>):
//!   every 200 carries an `ETag`; `If-None-Match` with it answers `304` with no body.
//!   `POST /orgs/{org}/repos` → 201, or 422 "name already exists on this account";
//!   `PATCH /repos/{owner}/{repo}` `{name}` renames. Rate limits
//!   (<https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>): 403 or
//!   429 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (epoch seconds), or a secondary
//!   limit with `retry-after` (seconds).
//! * GitLab REST API v4 (<https://docs.gitlab.com/api/groups/#list-projects> "List a group's
//!   projects", <https://docs.gitlab.com/api/rest/#pagination>): `GET /groups/:id/projects`
//!   (`include_subgroups`, `per_page` max 100, default 20, `page`), pagination headers
//!   `x-next-page` (empty on the last page), `x-page`, `x-per-page`, `x-total`, `link`; project
//!   fields `id`, `path_with_namespace`, `http_url_to_repo`, `visibility`, `archived`,
//!   `forked_from_project` (present for forks), `default_branch`, `description`,
//!   `wiki_enabled`. `GET /namespaces/:id`; `POST /projects` (`namespace_id`, `path`) → 201, or
//!   400 `{"message":{"name":["has already been taken"],"path":["has already been taken"]}}`;
//!   `PUT /projects/:id` renames.
//! * Gitea/Forgejo API v1 (the swagger at `/api/swagger`, `templates/swagger/v1_json.tmpl`):
//!   `GET /orgs/{org}/repos` (`page`, `limit`, capped at `MAX_RESPONSE_ITEMS` = 50), `Link`
//!   header and `X-Total-Count`; repository fields as GitHub's; `POST /orgs/{org}/repos` → 201,
//!   409 when the name is taken; `PATCH /repos/{owner}/{repo}` renames.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};

/// Which provider the stand-in plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Github,
    Gitlab,
    Gitea,
}

/// One repository the stand-in knows.
#[derive(Clone, Debug)]
pub struct Repo {
    pub id: u64,
    /// Owner path (`acme`, `group/sub`).
    pub owner: String,
    pub name: String,
    pub private: bool,
    pub fork: bool,
    pub archived: bool,
    pub description: String,
    pub default_branch: String,
    /// What the API reports as the clone URL.
    pub clone_url: String,
    /// The wiki is enabled (`has_wiki` / `wiki_enabled`).
    pub has_wiki: bool,
}

/// A rate-limit answer to give instead of the next request's.
#[derive(Clone, Debug)]
pub enum Limit {
    /// 403 with `x-ratelimit-remaining: 0` and a reset `secs` from now.
    Primary { secs: u64 },
    /// 429 with `retry-after: secs`.
    RetryAfter { secs: u64 },
}

/// What the stand-in holds; tests change it between runs.
#[derive(Debug, Default)]
pub struct State {
    pub repos: Vec<Repo>,
    /// Owners (organisations, groups) that exist, for creation.
    pub owners: BTreeSet<String>,
    /// Every request: (method, path with query, status answered).
    pub log: Vec<(String, String, u16)>,
    pub limits: VecDeque<Limit>,
    /// Where created repositories become real bare repositories (`{root}/{ns}/{name}.git`).
    pub git_root: Option<PathBuf>,
    /// Token every request must carry (401 otherwise).
    pub token: Option<String>,
    next_id: u64,
}

impl State {
    pub fn add(&mut self, owner: &str, name: &str, clone_url: &str) -> &mut Repo {
        self.next_id += 1;
        self.repos.push(Repo {
            id: 1000 + self.next_id,
            owner: owner.into(),
            name: name.into(),
            private: false,
            fork: false,
            archived: false,
            description: format!("the {name} repository"),
            default_branch: "main".into(),
            clone_url: clone_url.into(),
            has_wiki: false,
        });
        self.repos.last_mut().expect("just pushed")
    }

    pub fn find(&mut self, path: &str) -> Option<&mut Repo> {
        self.repos
            .iter_mut()
            .find(|r| format!("{}/{}", r.owner, r.name).eq_ignore_ascii_case(path))
    }

    /// Requests answered with `status` whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.log
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(prefix))
            .count()
    }
}

/// See the module docs.
pub struct Forge {
    pub kind: Kind,
    pub state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    thread: Option<thread::JoinHandle<()>>,
    port: u16,
}

impl Forge {
    pub fn start(kind: Kind) -> Forge {
        let server = Arc::new(tiny_http::Server::http(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let state = Arc::new(Mutex::new(State::default()));
        let (srv, st) = (server.clone(), state.clone());
        let thread = thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let reply = answer(kind, &st, &request, &body);
                let mut response = tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
                for (k, v) in reply.headers {
                    response.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("header"));
                }
                let _ = request.respond(response);
            }
        });
        Forge {
            kind,
            state,
            server,
            thread: Some(thread),
            port,
        }
    }

    /// The API root gitferry is configured with (`api_url`).
    pub fn api_url(&self) -> String {
        match self.kind {
            Kind::Github => format!("http://127.0.0.1:{}", self.port),
            Kind::Gitlab => format!("http://127.0.0.1:{}/api/v4", self.port),
            Kind::Gitea => format!("http://127.0.0.1:{}/api/v1", self.port),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json; charset=utf-8".into())],
            body: body.to_string(),
        }
    }
}

fn header(req: &tiny_http::Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

fn answer(kind: Kind, state: &Mutex<State>, req: &tiny_http::Request, body: &str) -> Reply {
    let mut st = state.lock().expect("not poisoned");
    let method = req.method().as_str().to_owned();
    let url = req.url().to_owned();
    let reply = if let Some(limit) = st.limits.pop_front() {
        limited(&limit)
    } else if let Some(token) = st.token.clone()
        && !header(req, "authorization").is_some_and(|a| a.ends_with(&token))
    {
        Reply::json(401, json!({ "message": "Bad credentials" }))
    } else {
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let query: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let path = percent_decode(path);
        let path = match kind {
            Kind::Github => path.as_str(),
            Kind::Gitlab => path.strip_prefix("/api/v4").unwrap_or(&path),
            Kind::Gitea => path.strip_prefix("/api/v1").unwrap_or(&path),
        }
        .to_owned();
        let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let reply = route(kind, &mut st, &method, &path, &query, &body);
        conditional(reply, header(req, "if-none-match"))
    };
    st.log.push((method, url, reply.status));
    reply
}

fn limited(limit: &Limit) -> Reply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    match limit {
        Limit::Primary { secs } => Reply {
            status: 403,
            headers: vec![
                ("x-ratelimit-limit".into(), "5000".into()),
                ("x-ratelimit-remaining".into(), "0".into()),
                ("x-ratelimit-reset".into(), (now + secs).to_string()),
            ],
            body: json!({ "message": "API rate limit exceeded for user ID 1." }).to_string(),
        },
        Limit::RetryAfter { secs } => Reply {
            status: 429,
            headers: vec![("retry-after".into(), secs.to_string())],
            body: json!({ "message": "You have exceeded a secondary rate limit." }).to_string(),
        },
    }
}

/// GitHub: an `ETag` on every 200 GET; `If-None-Match` with it → 304 without a body.
fn conditional(mut reply: Reply, if_none_match: Option<String>) -> Reply {
    if reply.status != 200 || reply.headers.iter().any(|(k, _)| k == "x-no-etag") {
        reply.headers.retain(|(k, _)| k != "x-no-etag");
        return reply;
    }
    let etag = format!("W/\"{:016x}\"", fnv(reply.body.as_bytes()));
    if if_none_match.as_deref() == Some(etag.as_str()) {
        return Reply {
            status: 304,
            headers: vec![("etag".into(), etag)],
            body: String::new(),
        };
    }
    reply.headers.push(("etag".into(), etag));
    reply
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn route(
    kind: Kind,
    st: &mut State,
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &Value,
) -> Reply {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match kind {
        Kind::Github | Kind::Gitea => match (method, parts.as_slice()) {
            ("GET", ["orgs" | "users", owner, "repos"]) => list(kind, st, owner, query),
            ("POST", ["orgs", owner, "repos"]) => create(kind, st, owner, body),
            ("PATCH", ["repos", owner, name]) => rename(kind, st, &format!("{owner}/{name}"), body),
            ("GET", ["repos", owner, name]) => match st.find(&format!("{owner}/{name}")) {
                Some(r) => Reply::json(200, repo_full_json(kind, r)),
                None if kind == Kind::Github => github_error(404, "Not Found", Value::Null),
                None => Reply::json(404, json!({ "message": "Not Found" })),
            },
            _ => Reply::json(404, json!({ "message": "Not Found" })),
        },
        Kind::Gitlab => match (method, parts.as_slice()) {
            ("GET", ["groups", group, "projects"]) => list(kind, st, group, query),
            ("GET", ["namespaces", ns]) => match st.owners.iter().position(|o| o == ns) {
                Some(i) => Reply::json(200, json!({ "id": i + 1, "full_path": ns, "kind": "group" })),
                None => Reply::json(404, json!({ "message": "404 Namespace Not Found" })),
            },
            ("POST", ["projects"]) => {
                let id = body["namespace_id"].as_u64().unwrap_or(0) as usize;
                match st.owners.iter().nth(id.wrapping_sub(1)).cloned() {
                    Some(ns) => create(kind, st, &ns, body),
                    None => Reply::json(404, json!({ "message": "404 Namespace Not Found" })),
                }
            }
            // `:id` is a number or the URL-encoded path (`grp%2Fapp`), decoded above into
            // several segments.
            ("PUT", ["projects", id @ ..]) if !id.is_empty() => rename(kind, st, &id.join("/"), body),
            _ => Reply::json(404, json!({ "message": "404 Not Found" })),
        },
    }
}

/// GitHub's answers as its published description has them (`tests/openapi/github.json`, made by
/// `make deps` from the npm package `@octokit/openapi`): a smallest valid instance of each object
/// the stand-in returns, which it fills in with its own values — so the answers carry every
/// field GitHub's do, and `tests/openapi/validate.py` checks them against GitHub's schemas.
fn github_template(name: &str) -> Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/github.json");
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (`make deps` makes it)", path.display()));
        serde_json::from_slice(&text).expect("github.json is JSON")
    });
    let template = doc["templates"][name].clone();
    assert!(template.is_object(), "no template {name} in github.json");
    template
}

/// `values` written over `into`, objects merged key by key.
fn overlay(into: &mut Value, values: Value) {
    match (into, values) {
        (Value::Object(into), Value::Object(values)) => {
            for (k, v) in values {
                overlay(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (into, v) => *into = v,
    }
}

/// A GitHub error body (`basic-error`, or `validation-error` with `errors`).
fn github_error(status: u16, message: &str, errors: Value) -> Reply {
    let mut body = match status {
        422 => github_template("validation-error"),
        _ => github_template("basic-error"),
    };
    overlay(
        &mut body,
        json!({ "message": message, "documentation_url": "https://docs.github.com/rest/repos/repos" }),
    );
    if status == 422 {
        body["errors"] = errors;
    }
    Reply::json(status, body)
}

/// A repository as listed (`minimal-repository` on GitHub).
fn repo_json(kind: Kind, r: &Repo) -> Value {
    repo_json_as(kind, r, "minimal-repository")
}

/// A repository as fetched, created or updated (`full-repository` on GitHub).
fn repo_full_json(kind: Kind, r: &Repo) -> Value {
    repo_json_as(kind, r, "full-repository")
}

fn repo_json_as(kind: Kind, r: &Repo, github_schema: &str) -> Value {
    let path = format!("{}/{}", r.owner, r.name);
    match kind {
        Kind::Gitlab => {
            let mut v = json!({
                "id": r.id, "name": r.name, "path": r.name, "path_with_namespace": path,
                "http_url_to_repo": r.clone_url, "visibility": if r.private { "private" } else { "public" },
                "archived": r.archived, "default_branch": r.default_branch, "description": r.description,
                "wiki_enabled": r.has_wiki,
            });
            if r.fork {
                v["forked_from_project"] = json!({ "id": 1, "path_with_namespace": "upstream/x" });
            }
            v
        }
        Kind::Github => {
            let mut v = github_template(github_schema);
            overlay(
                &mut v,
                json!({
                    "id": r.id, "name": r.name, "full_name": path, "clone_url": r.clone_url,
                    "private": r.private, "fork": r.fork, "archived": r.archived,
                    "visibility": if r.private { "private" } else { "public" },
                    "default_branch": r.default_branch, "description": r.description, "has_wiki": r.has_wiki,
                    "html_url": format!("https://github.com/{path}"),
                    "owner": { "login": r.owner },
                }),
            );
            v
        }
        Kind::Gitea => json!({
            "id": r.id, "name": r.name, "full_name": path, "clone_url": r.clone_url,
            "private": r.private, "fork": r.fork, "archived": r.archived,
            "default_branch": r.default_branch, "description": r.description, "has_wiki": r.has_wiki,
            "owner": { "login": r.owner },
        }),
    }
}

fn list(kind: Kind, st: &State, owner: &str, query: &BTreeMap<String, String>) -> Reply {
    let num = |k: &str, d: usize| query.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(d);
    let (per_page, max) = match kind {
        Kind::Github => (num("per_page", 30), 100),
        Kind::Gitlab => (num("per_page", 20), 100),
        Kind::Gitea => (num("limit", 50), 50),
    };
    let per_page = per_page.clamp(1, max);
    let page = num("page", 1).max(1);
    let subgroups = query.get("include_subgroups").is_some_and(|v| v == "true");
    let mut mine: Vec<&Repo> = st
        .repos
        .iter()
        .filter(|r| r.owner.eq_ignore_ascii_case(owner) || (subgroups && r.owner.starts_with(&format!("{owner}/"))))
        .collect();
    if kind == Kind::Github {
        // GitHub: `sort` created (default) | full_name; `direction` defaults to asc for
        // full_name, else desc (newest first).
        let sort = query.get("sort").map_or("created", String::as_str);
        let asc = query.get("direction").map_or(sort == "full_name", |d| d == "asc");
        if sort == "full_name" {
            mine.sort_by_key(|r| format!("{}/{}", r.owner, r.name).to_lowercase());
        }
        if !asc {
            mine.reverse();
        }
    }
    let items: Vec<Value> = mine
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| repo_json(kind, r))
        .collect();
    let last = mine.len().div_ceil(per_page).max(1);
    let mut headers = vec![("content-type".to_owned(), "application/json; charset=utf-8".to_owned())];
    if page < last {
        headers.push((
            "link".into(),
            format!(
                "<http://api/?page={}>; rel=\"next\", <http://api/?page={last}>; rel=\"last\"",
                page + 1
            ),
        ));
    }
    match kind {
        Kind::Gitlab => {
            let next = if page < last {
                (page + 1).to_string()
            } else {
                String::new()
            };
            headers.extend([
                ("x-next-page".into(), next),
                ("x-page".into(), page.to_string()),
                ("x-per-page".into(), per_page.to_string()),
                ("x-total".into(), mine.len().to_string()),
                ("x-no-etag".into(), String::new()),
            ]);
        }
        Kind::Gitea => {
            headers.push(("x-total-count".into(), mine.len().to_string()));
            headers.push(("x-no-etag".into(), String::new()));
        }
        Kind::Github => {}
    }
    Reply {
        status: 200,
        headers,
        body: Value::Array(items).to_string(),
    }
}

fn create(kind: Kind, st: &mut State, owner: &str, body: &Value) -> Reply {
    let name = body["path"]
        .as_str()
        .or(body["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return Reply::json(422, json!({ "message": "Validation Failed" }));
    }
    if !st.owners.contains(owner) {
        return Reply::json(404, json!({ "message": "Not Found" }));
    }
    if st.find(&format!("{owner}/{name}")).is_some() {
        return match kind {
            Kind::Github => github_error(
                422,
                "Repository creation failed.",
                json!([{ "resource": "Repository", "code": "custom", "field": "name",
                         "message": "name already exists on this account" }]),
            ),
            Kind::Gitlab => Reply::json(
                400,
                json!({ "message": { "name": ["has already been taken"], "path": ["has already been taken"] } }),
            ),
            Kind::Gitea => Reply::json(
                409,
                json!({ "message": "The repository with the same name already exists." }),
            ),
        };
    }
    let private = match kind {
        Kind::Gitlab => body["visibility"].as_str() != Some("public"),
        _ => body["private"].as_bool().unwrap_or(false),
    };
    if let Some(root) = &st.git_root {
        let dir = root.join(owner);
        std::fs::create_dir_all(&dir).expect("namespace dir");
        crate::git(&dir, ["init", "--quiet", "--bare", &format!("{name}.git")]);
    }
    let url = format!("created:{owner}/{name}");
    let repo = st.add(owner, &name, &url);
    repo.private = private;
    repo.description = body["description"].as_str().unwrap_or_default().to_owned();
    let v = repo_full_json(kind, &repo.clone());
    Reply::json(201, v)
}

fn rename(kind: Kind, st: &mut State, path: &str, body: &Value) -> Reply {
    let Some(to) = body["name"].as_str().map(str::to_owned) else {
        return Reply::json(422, json!({ "message": "Validation Failed" }));
    };
    let root = st.git_root.clone();
    let Some(repo) = st.find(path) else {
        return Reply::json(404, json!({ "message": "Not Found" }));
    };
    if let Some(root) = root {
        let dir = root.join(&repo.owner);
        let _ = std::fs::rename(dir.join(format!("{}.git", repo.name)), dir.join(format!("{to}.git")));
    }
    repo.name = to;
    let v = repo_full_json(kind, repo);
    Reply::json(200, v)
}
