//! The HTTP API, framework-free: one handler for the webhook Lambda (API Gateway HTTP API v2)
//! and the local server alike, so both answer exactly the same way.
//!
//! | route                      | auth              | what |
//! |----------------------------|-------------------|------|
//! | `POST /webhook/{provider}` | signature         | verify and enqueue ([`crate::webhook`]) |
//! | `GET /status`              | bearer token      | every repo's status (JSON, or HTML for browsers) |
//! | `GET /status/{repo}`       | bearer token      | one repo's status |
//! | `POST /repos/{repo}/sync`  | bearer token      | enqueue a manual sync |
//! | `GET /`                    | bearer token      | the status page (HTML) |
//! | `GET /healthz`             | none              | liveness |
//! | `GET /metrics`             | none (local only) | Prometheus text |
//!
//! The bearer token comes from the environment (`GITFERRY_STATUS_TOKEN`); without one the
//! status and manual routes answer 401 to everyone — they are never open by accident (the one
//! exception: a local server listening on loopback only, where only this machine can ask).
//! Tokens are compared in constant time.

use std::sync::Arc;

use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::{Config, Secret, valid_repo_name};
use crate::metrics::{Metrics, Prometheus};
use crate::queue::Queue;
use crate::request::SyncRequest;
use crate::status::StatusBook;
use crate::webhook::{self, Delivery};

/// An HTTP request as any front end sees it.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without query string.
    pub path: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        webhook::header(&self.headers, name)
    }
}

/// An HTTP response.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        }
    }

    fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
        }
    }

    fn error(status: u16, message: &str) -> Response {
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
            ("GET", [] | ["status"]) => {
                if let Some(denied) = self.authorize(&req) {
                    return denied;
                }
                let names = self.config.repos.keys().map(String::as_str);
                match self.status.all(names).await {
                    Ok(all) => {
                        let wants_html =
                            segments.is_empty() || req.header("accept").is_some_and(|a| a.contains("text/html"));
                        if wants_html {
                            Response::text(
                                200,
                                "text/html; charset=utf-8",
                                crate::page::render(&all, crate::clock::now_ms()),
                            )
                        } else {
                            Response::json(200, json!({ "repos": all }))
                        }
                    }
                    Err(e) => Response::error(503, &format!("status unavailable: {e}")),
                }
            }
            ("GET", ["status", repo]) => {
                if let Some(denied) = self.authorize(&req) {
                    return denied;
                }
                if self.config.repo(repo).is_none() {
                    return Response::error(404, "repository not configured");
                }
                match self.status.all([*repo]).await {
                    Ok(mut one) => Response::json(200, serde_json::to_value(one.remove(0)).expect("status serialises")),
                    Err(e) => Response::error(503, &format!("status unavailable: {e}")),
                }
            }
            ("POST", ["repos", repo, "sync"]) => {
                if let Some(denied) = self.authorize(&req) {
                    return denied;
                }
                if !valid_repo_name(repo) || self.config.repo(repo).is_none() {
                    return Response::error(404, "repository not configured");
                }
                let who = req
                    .header("x-requested-by")
                    .unwrap_or("api")
                    .chars()
                    .take(64)
                    .collect::<String>();
                let request = SyncRequest::manual(repo, &who);
                match self.queue.send(std::slice::from_ref(&request)).await {
                    Ok(_) => Response::json(202, json!({ "queued": [repo], "request": request.dedup_id() })),
                    Err(e) => {
                        tracing::error!(error = %e, "could not enqueue manual sync");
                        Response::error(503, "queue unavailable")
                    }
                }
            }
            (_, ["webhook", _] | ["healthz"] | ["metrics"] | ["status"] | ["status", _] | ["repos", _, "sync"]) => {
                Response::error(405, "method not allowed")
            }
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

    /// `None` if the request carries the status token; otherwise the 401 to send.
    fn authorize(&self, req: &Request<'_>) -> Option<Response> {
        let presented = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        if self.anonymous_status && self.status_token.is_none() {
            return None;
        }
        match (&self.status_token, presented) {
            (Some(token), Some(p)) if bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())) => None,
            _ => Some(Response::error(401, "a valid bearer token is required")),
        }
    }
}
