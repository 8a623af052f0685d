//! The HTTP API, framework-free: one handler for the webhook Lambda (API Gateway HTTP API v2)
//! and the local server alike, so both answer exactly the same way.
//!
//! | route                      | auth              | what |
//! |----------------------------|-------------------|------|
//! | `POST /webhook/{provider}` | signature         | verify and enqueue ([`crate::webhook`]) |
//! | `GET /status`              | status token      | every repo's status (JSON) |
//! | `GET /status/{repo}`       | status token      | one repo's status, history and refs (JSON) |
//! | `POST /repos/{repo}/sync`  | status token      | enqueue a manual sync (JSON; a form from the page) |
//! | `GET /`                    | status token      | the overview page (HTML; `?q=&state=&page=`) |
//! | `GET /repos/{repo}`        | status token      | one repository's page (HTML) |
//! | `GET /healthz`             | none              | liveness |
//! | `GET /metrics`             | none (local only) | Prometheus text |
//!
//! The status token comes from the environment (`GITFERRY_STATUS_TOKEN`) and is accepted as a
//! bearer token or as the HTTP Basic password, so a browser can open the pages ([`crate::ui`]);
//! without one the status and manual routes answer 401 to everyone — they are never open by
//! accident (the one exception: a local server listening on loopback only, where only this
//! machine can ask). Tokens are compared in constant time.

use std::sync::Arc;

use serde_json::json;

use crate::config::{Config, Secret, valid_repo_name};
use crate::metrics::{Metrics, Prometheus};
use crate::queue::Queue;
use crate::status::StatusBook;
use crate::webhook::{self, Delivery};

/// An HTTP request as any front end sees it.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without query string.
    pub path: &'a str,
    /// The raw query string (without `?`; empty if none).
    pub query: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        webhook::header(&self.headers, name)
    }
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides the content type (`WWW-Authenticate`, `Location`, …).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: serde_json::Value) -> Response {
        Response::text(status, "application/json", body.to_string())
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    pub fn html(body: String) -> Response {
        Response::text(200, "text/html; charset=utf-8", body)
    }

    /// 303 See Other: after a form POST, back to a page.
    pub fn redirect(to: &str) -> Response {
        Response::text(303, "text/plain; charset=utf-8", format!("see {to}\n")).with_header("location", to)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, json!({ "error": message }))
    }

    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The shared handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Api {
    pub config: Arc<Config>,
    pub queue: Arc<dyn Queue>,
    pub status: StatusBook,
    pub metrics: Metrics,
    pub status_token: Option<Secret>,
    pub max_body: usize,
    /// Local server only: the registry `/metrics` renders.
    pub prometheus: Option<Arc<Prometheus>>,
    /// Local server on a loopback address without a token: status routes are open (only this
    /// machine can reach them). Never set on Lambda.
    pub anonymous_status: bool,
    /// A random key of this process: signs the page's form tokens when there is no status
    /// token to derive them from (a local server on loopback).
    pub session_key: String,
}

impl Api {
    pub async fn handle(&self, req: Request<'_>) -> Response {
        let segments: Vec<&str> = req
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        match (req.method, segments.as_slice()) {
            ("POST", ["webhook", provider]) => {
                let delivery = Delivery {
                    provider,
                    headers: &req.headers,
                    body: req.body,
                };
                let reply = webhook::accept(&self.config, self.queue.as_ref(), &delivery, self.max_body).await;
                self.metrics
                    .webhook_response(webhook::provider_label(provider), reply.status);
                Response::json(reply.status, reply.body)
            }
            ("GET", ["healthz"]) => Response::json(200, json!({ "ok": true })),
            ("GET", ["metrics"]) => match &self.prometheus {
                Some(p) => {
                    let names = self.config.repos.keys().map(String::as_str);
                    let states = self.status.all(names).await.unwrap_or_default();
                    let text = p.render() + &crate::metrics::repository_states(&states);
                    Response::text(200, "text/plain; version=0.0.4", text)
                }
                None => Response::error(404, "metrics are published to CloudWatch"),
            },
            ("GET", [] | ["status"] | ["status", _] | ["repos", _]) | ("POST", ["repos", _, "sync"]) => {
                let auth = match crate::ui::authenticate(self, &req) {
                    Ok(a) => a,
                    Err(denied) => return denied,
                };
                match (req.method, segments.as_slice()) {
                    ("GET", []) => crate::ui::overview(self, &req).await,
                    ("GET", ["status"]) => crate::ui::status_json(self).await,
                    ("GET", ["status", repo]) => crate::ui::repo_json(self, repo).await,
                    ("GET", ["repos", repo]) => crate::ui::repo_page(self, repo).await,
                    (_, ["repos", repo, _]) if valid_repo_name(repo) => {
                        crate::ui::sync_now(self, &req, repo, auth).await
                    }
                    _ => Response::error(404, "repository not configured"),
                }
            }
            (
                _,
                ["webhook", _]
                | ["healthz"]
                | ["metrics"]
                | ["status"]
                | ["status", _]
                | ["repos", _]
                | ["repos", _, "sync"],
            ) => Response::error(405, "method not allowed"),
            _ => Response::error(404, "not found"),
        }
    }

    /// The answer to a request whose body a front end could not read whole — over
    /// [`Api::max_body`] before it was all read (`serve` stops reading there), or not decodable
    /// (an API Gateway event whose base64 is broken). A webhook delivery is logged and counted
    /// like any other answer ([`webhook::refuse`]); other routes just get the error.
    pub fn refuse_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        status: u16,
        message: &str,
    ) -> Response {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match (method, segments.as_slice()) {
            ("POST", ["webhook", provider]) => {
                let reply = webhook::refuse(provider, headers, status, message);
                self.metrics
                    .webhook_response(webhook::provider_label(provider), reply.status);
                Response::json(reply.status, reply.body)
            }
            _ => Response::error(status, message),
        }
    }
}
