//! What people see of the status, from a browser or a script, on AWS as locally.
//!
//! * **Authentication a browser can do**: the status token works as `Authorization: Bearer
//!   TOKEN` (scripts) and as the password of HTTP Basic authentication (any user name), and a
//!   refused request says `WWW-Authenticate: Basic` so the browser asks. The token is never put
//!   in a URL. Without a token the routes answer 401 to everyone, except on a local server
//!   listening on loopback only.
//! * **Pages and their JSON from one source**: `GET /` (overview) and `GET /repos/{repo}` render
//!   the same data `GET /status` and `GET /status/{repo}` return.
//! * **"Sync now" from the page** is a form POST, protected against cross-site requests: it
//!   must carry a token derived from the status secret for that repository, and a browser's
//!   `Origin`/`Sec-Fetch-Site` must say it came from this site. Scripts keep using the bearer
//!   token and get JSON.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::api::{Api, Request, Response};
use crate::cache::Manifest;
use crate::clock::now_ms;
use crate::page::{self, PageQuery, RepoPage};
use crate::request::SyncRequest;
use crate::status::RepoStatus;

/// How a request proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer` (a script).
    Bearer,
    /// HTTP Basic (a browser).
    Basic,
    /// A local server on loopback without a token.
    Anonymous,
}

/// Who is asking, or the 401 to send.
pub fn authenticate(api: &Api, req: &Request<'_>) -> Result<Auth, Response> {
    let header = req.header("authorization").unwrap_or_default().trim();
    let token = api.status_token.as_ref().map(|t| t.expose().as_bytes());
    let matches = |presented: &[u8]| token.is_some_and(|t| bool::from(presented.ct_eq(t)));
    if let Some(bearer) = header.strip_prefix("Bearer ")
        && matches(bearer.trim().as_bytes())
    {
        return Ok(Auth::Bearer);
    }
    if let Some(password) = header.strip_prefix("Basic ").and_then(basic_password)
        && matches(password.as_bytes())
    {
        return Ok(Auth::Basic);
    }
    if api.anonymous_status && api.status_token.is_none() {
        return Ok(Auth::Anonymous);
    }
    Err(Response::error(
        401,
        "a valid bearer token (or the token as the HTTP Basic password) is required",
    )
    .with_header("www-authenticate", "Basic realm=\"gitferry\", charset=\"UTF-8\""))
}

/// The password of a Basic credential (`user:password`, base64).
fn basic_password(encoded: &str) -> Option<String> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

/// Every configured repository's status, as readers see it.
async fn statuses(api: &Api) -> Result<Vec<RepoStatus>, Response> {
    let names = api.config.repos.keys().map(String::as_str);
    api.status
        .all(names)
        .await
        .map_err(|e| Response::error(503, &format!("status unavailable: {e}")))
}

/// `GET /`: the overview page.
pub async fn overview(api: &Api, req: &Request<'_>) -> Response {
    let all = match statuses(api).await {
        Ok(all) => all,
        Err(r) => return r,
    };
    let now = now_ms();
    let rows = page::rows(&all, &api.config, now);
    Response::html(page::overview(rows, &PageQuery::parse(req.query), now))
}

/// `GET /status`: every repository, with what the overview shows about it.
pub async fn status_json(api: &Api) -> Response {
    let all = match statuses(api).await {
        Ok(all) => all,
        Err(r) => return r,
    };
    let rows = page::rows(&all, &api.config, now_ms());
    let repos: Vec<serde_json::Value> = rows.iter().map(row_json).collect();
    Response::json(200, json!({ "repos": repos }))
}

fn row_json(row: &page::Row<'_>) -> serde_json::Value {
    let mut v = serde_json::to_value(row.status).expect("status serialises");
    v["stale"] = row.stale.into();
    v["account"] = row.group.clone().into();
    v
}

/// What the repository page and its JSON show.
struct Detail {
    status: RepoStatus,
    history: crate::status::History,
    source_refs: BTreeMap<String, String>,
    target_refs: BTreeMap<String, BTreeMap<String, String>>,
    stale: bool,
    account: String,
}

async fn detail(api: &Api, repo: &str) -> Result<Detail, Response> {
    let unavailable = |e: crate::store::StoreError| Response::error(503, &format!("status unavailable: {e}"));
    let config = api
        .config
        .repo(repo)
        .ok_or_else(|| Response::error(404, "repository not configured"))?;
    let status = api.status.all([repo]).await.map_err(unavailable)?.remove(0);
    let history = api.status.history(repo).await.map_err(unavailable)?;
    let manifest: Manifest = api
        .status
        .store()
        .get(&crate::keys::manifest(repo))
        .await
        .map_err(unavailable)?
        .and_then(|o| serde_json::from_slice(&o.body).ok())
        .unwrap_or_default();
    let source_refs = manifest
        .source
        .ids()
        .into_iter()
        .map(|(n, id)| (n, id.to_string()))
        .collect();
    let target_refs = config
        .targets
        .iter()
        .filter_map(|t| {
            manifest
                .targets
                .get(&t.state_key())
                .map(|r| (t.name.clone(), r.clone()))
        })
        .collect();
    let row = &page::rows(std::slice::from_ref(&status), &api.config, now_ms())[0];
    let (stale, account) = (row.stale, row.group.clone());
    Ok(Detail {
        status,
        history,
        source_refs,
        target_refs,
        stale,
        account,
    })
}

/// `GET /status/{repo}`: the repository page's data.
pub async fn repo_json(api: &Api, repo: &str) -> Response {
    match detail(api, repo).await {
        Ok(d) => {
            let mut v = serde_json::to_value(&d.status).expect("status serialises");
            v["stale"] = d.stale.into();
            v["account"] = d.account.into();
            v["history"] = serde_json::to_value(&d.history.syncs).expect("history serialises");
            v["refs"] = json!({ "source": d.source_refs, "targets": d.target_refs });
            Response::json(200, v)
        }
        Err(r) => r,
    }
}

/// `GET /repos/{repo}`: the repository page.
pub async fn repo_page(api: &Api, repo: &str) -> Response {
    let d = match detail(api, repo).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some(config) = api.config.repo(repo) else {
        return Response::error(404, "repository not configured");
    };
    let csrf = csrf_token(api, repo);
    Response::html(page::repo(&RepoPage {
        status: &d.status,
        history: &d.history,
        config,
        source_refs: &d.source_refs,
        target_refs: &d.target_refs,
        stale: d.stale,
        csrf: &csrf,
        now: now_ms(),
    }))
}

/// `POST /repos/{repo}/sync`: a script (bearer) gets JSON; a browser's form, once its token
/// and origin check out, is sent back to the repository page.
pub async fn sync_now(api: &Api, req: &Request<'_>, repo: &str, auth: Auth) -> Response {
    if api.config.repo(repo).is_none() {
        return Response::error(404, "repository not configured");
    }
    let browser = auth != Auth::Bearer;
    if browser && let Err(why) = check_form(api, req, repo) {
        tracing::warn!(repo, why, "refused a sync form");
        return Response::error(403, why);
    }
    let who: String = req
        .header("x-requested-by")
        .unwrap_or(if browser { "status page" } else { "api" })
        .chars()
        .take(64)
        .collect();
    let request = SyncRequest::manual(repo, &who);
    match api.queue.send(std::slice::from_ref(&request)).await {
        Ok(_) if browser => Response::redirect(&format!("/repos/{repo}")),
        Ok(_) => Response::json(202, json!({ "queued": [repo], "request": request.dedup_id() })),
        Err(e) => {
            tracing::error!(error = %e, "could not enqueue manual sync");
            Response::error(503, "queue unavailable")
        }
    }
}

/// A form POST must come from this site and carry this repository's token. Scripts that
/// send neither header nor token use the bearer token instead.
fn check_form(api: &Api, req: &Request<'_>, repo: &str) -> Result<(), &'static str> {
    if let Some(site) = req.header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err("cross-site request");
    }
    if let (Some(origin), Some(host)) = (req.header("origin"), req.header("host"))
        && origin.split_once("://").map(|(_, h)| h) != Some(host)
    {
        return Err("cross-site request");
    }
    let body = std::str::from_utf8(req.body).unwrap_or_default();
    let presented = body
        .split('&')
        .find_map(|p| p.strip_prefix("csrf="))
        .unwrap_or_default();
    let expected = csrf_token(api, repo);
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err("missing or wrong form token")
    }
}

/// The "sync now" form token of `repo`: HMAC-SHA256 under the status token (or, on a local
/// server without one, this process's random key).
fn csrf_token(api: &Api, repo: &str) -> String {
    let key = match &api.status_token {
        Some(t) => t.expose().as_bytes().to_vec(),
        None => api.session_key.as_bytes().to_vec(),
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(b"gitferry sync form\0");
    mac.update(repo.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}
