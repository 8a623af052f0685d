//! The client side of the Git LFS Batch API (git-lfs docs/api/batch.md), `basic` transfer only.
//!
//! One `POST {endpoint}/objects/batch` per at most [`BATCH_SIZE`] objects says, per object,
//! where to download it from (or upload it to, and whether to call `verify` afterwards), or
//! that the server does not have it. Everything in the answer comes from a remote: it is
//! parsed into types, object ids are checked, sizes must match what was asked, and action URLs
//! must be http(s). 429 and 503 are retried after the server's `Retry-After` (capped), other 5xx
//! and network failures with a short growing delay, a few times; then the error is transient
//! and the sync retries later. Nothing here logs a URL with its query (pre-signed URLs carry
//! signatures there) or a header.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::endpoint::Endpoint;
use super::pointer::Pointer;
use super::{LfsError, http_status_error, network_error};

/// Objects per batch request (the specification's recommended maximum).
pub const BATCH_SIZE: usize = 100;
/// The media type of every batch request and response.
pub const MEDIA_TYPE: &str = "application/vnd.git-lfs+json";
/// Attempts per request before a retryable failure is given up (as a transient error).
const ATTEMPTS: u32 = 4;
/// The longest `Retry-After` honoured; a server asking for more gets a transient error.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A batch response larger than this is refused (100 objects take a few KiB).
const MAX_RESPONSE: u64 = 8 << 20;
/// An action is renewed when it expires within this margin.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// `download` or `upload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Download,
    Upload,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Download => "download",
            Operation::Upload => "upload",
        }
    }
}

#[derive(Serialize)]
struct Request {
    operation: &'static str,
    transfers: [&'static str; 1],
    objects: Vec<Pointer>,
    hash_algo: &'static str,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    transfer: Option<String>,
    #[serde(default)]
    objects: Vec<ObjectAnswer>,
}

/// The server's answer for one object.
#[derive(Deserialize, Debug)]
pub struct ObjectAnswer {
    pub oid: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub actions: Actions,
    #[serde(default)]
    pub error: Option<ObjectError>,
}

/// What to do with an object; all absent for an upload the server already has.
#[derive(Deserialize, Debug, Default)]
pub struct Actions {
    pub download: Option<Action>,
    pub upload: Option<Action>,
    pub verify: Option<Action>,
}

/// A per-object refusal (`404` not found, `410` removed, `422` invalid, …).
#[derive(Deserialize, Debug)]
pub struct ObjectError {
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

/// A request to make: URL, headers, and until when they are valid.
#[derive(Deserialize)]
pub struct Action {
    pub href: String,
    #[serde(default)]
    pub header: BTreeMap<String, String>,
    #[serde(default)]
    pub expires_in: Option<i64>,
    #[serde(default)]
    pub expires_at: Option<String>,
    /// When the batch answer arrived (for `expires_in`).
    #[serde(skip, default = "Instant::now")]
    pub received: Instant,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the href's query or the headers: they carry tokens.
        let href = self.href.split('?').next().unwrap_or_default();
        write!(f, "Action({})", crate::remote::redact_url(href))
    }
}

impl Action {
    /// Whether the action is about to expire (then the batch call is made again).
    pub fn expiring(&self) -> bool {
        if let Some(secs) = self.expires_in {
            let lifetime = Duration::from_secs(secs.max(0) as u64);
            if self.received.elapsed() + EXPIRY_MARGIN >= lifetime {
                return true;
            }
        }
        let at = self.expires_at.as_deref().and_then(parse_rfc3339);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        at.is_some_and(|at| at <= now + EXPIRY_MARGIN.as_secs() as i64)
    }

    fn valid(&self) -> bool {
        (self.href.starts_with("https://") || self.href.starts_with("http://"))
            && self.header.iter().all(|(k, v)| {
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok()
                    && reqwest::header::HeaderValue::from_str(v).is_ok()
            })
    }
}

/// Ask `endpoint` about `objects` (at most [`BATCH_SIZE`]). Answers are checked: each names an
/// asked-for object with its size; actions are http(s) requests.
pub fn batch(
    http: &reqwest::blocking::Client,
    endpoint: &Endpoint,
    operation: Operation,
    objects: &[Pointer],
    interrupt: &AtomicBool,
) -> Result<Vec<ObjectAnswer>, LfsError> {
    let body = serde_json::to_vec(&Request {
        operation: operation.as_str(),
        transfers: ["basic"],
        objects: objects.to_vec(),
        hash_algo: "sha256",
    })
    .map_err(|e| LfsError::Local {
        path: "batch request".into(),
        message: e.to_string(),
    })?;
    let url = format!("{}/objects/batch", endpoint.url);
    let response = with_retries(endpoint, interrupt, || {
        let mut request = http
            .post(&url)
            .header("Accept", MEDIA_TYPE)
            .header("Content-Type", MEDIA_TYPE)
            .body(body.clone());
        if let Some(c) = &endpoint.credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        request.send()
    })
    .map_err(|e| match e {
        // The batch route itself is missing: this remote has no LFS server.
        LfsError::Http { status: 404, .. } => LfsError::NoServer {
            endpoint: endpoint.to_string(),
        },
        other => other,
    })?;
    parse_response(endpoint, response, objects)
}

fn parse_response(
    endpoint: &Endpoint,
    response: reqwest::blocking::Response,
    asked: &[Pointer],
) -> Result<Vec<ObjectAnswer>, LfsError> {
    let mut text = Vec::new();
    response
        .take(MAX_RESPONSE)
        .read_to_end(&mut text)
        .map_err(|e| network_error(endpoint, &e))?;
    let protocol = |message: String| LfsError::Protocol {
        endpoint: endpoint.to_string(),
        message,
    };
    let parsed: Response =
        serde_json::from_slice(&text).map_err(|e| protocol(format!("batch response is not valid JSON ({e})")))?;
    if parsed.transfer.as_deref().is_some_and(|t| t != "basic") {
        return Err(protocol("the server chose a transfer other than basic".into()));
    }
    let mut answers = Vec::with_capacity(parsed.objects.len());
    for answer in parsed.objects {
        let known = asked
            .iter()
            .any(|p| p.oid == answer.oid && (p.size == answer.size || answer.error.is_some()));
        let actions = [&answer.actions.download, &answer.actions.upload, &answer.actions.verify];
        if !known || actions.into_iter().flatten().any(|a| !a.valid()) {
            return Err(protocol(
                "batch response names an object or action that was not asked for".into(),
            ));
        }
        answers.push(answer);
    }
    Ok(answers)
}

/// Send a request, retrying throttling (429/503, after `Retry-After`), other 5xx and network
/// failures a few times. Returns a successful response or the classified error.
pub(crate) fn with_retries(
    endpoint: &Endpoint,
    interrupt: &AtomicBool,
    mut send: impl FnMut() -> reqwest::Result<reqwest::blocking::Response>,
) -> Result<reqwest::blocking::Response, LfsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        if interrupt.load(Ordering::Relaxed) {
            return Err(LfsError::Interrupted);
        }
        let (error, wait) = match send() {
            Ok(r) if r.status().is_success() => return Ok(r),
            Ok(r) => {
                let wait = retry_after(&r).unwrap_or(backoff(attempt));
                (http_status_error(endpoint, r.status().as_u16()), wait)
            }
            Err(e) => (network_error(endpoint, &e.without_url()), backoff(attempt)),
        };
        if !error.is_transient() || attempt >= ATTEMPTS || wait > MAX_RETRY_AFTER {
            return Err(error);
        }
        tracing::debug!(endpoint = %endpoint, attempt, wait_ms = wait.as_millis() as u64, "LFS request will be retried: {error}");
        std::thread::sleep(wait);
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(6))
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
fn retry_after(response: &reqwest::blocking::Response) -> Option<Duration> {
    let status = response.status().as_u16();
    if status != 429 && status != 503 {
        return None;
    }
    let value = response.headers().get("Retry-After")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Seconds since the epoch of an RFC 3339 time (`2026-11-30T01:02:03Z`, fractions and offsets
/// allowed); `None` when it does not parse.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once(['T', 't'])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let split = time.find(['Z', 'z', '+', '-'])?;
    let (clock, zone) = time.split_at(split);
    let mut c = clock.split('.').next()?.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        c.next()?.parse().ok()?,
        c.next()?.parse().ok()?,
        c.next()?.parse().ok()?,
    );
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let (h, mi) = zone[1..].split_once(':')?;
            let secs = h.parse::<i64>().ok()? * 3600 + mi.parse::<i64>().ok()? * 60;
            if zone.starts_with('-') { -secs } else { secs }
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-30T01:02:03.5Z"), Some(1_796_000_523));
        assert_eq!(parse_rfc3339("2026-11-30T02:02:03+01:00"), Some(1_796_000_523));
        for bad in [
            "",
            "2026-11-30",
            "2026-13-01T00:00:00Z",
            "x-y-zT1:2:3Z",
            "2026-11-30T01:02:03",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn actions_expire_by_either_field() {
        let action = |json: &str| serde_json::from_str::<Action>(json).unwrap();
        assert!(!action(r#"{"href":"https://x/o"}"#).expiring());
        assert!(!action(r#"{"href":"https://x/o","expires_in":3600}"#).expiring());
        assert!(action(r#"{"href":"https://x/o","expires_in":5}"#).expiring());
        assert!(action(r#"{"href":"https://x/o","expires_at":"2000-01-01T00:00:00Z"}"#).expiring());
        assert!(!action(r#"{"href":"https://x/o","expires_at":"2999-01-01T00:00:00Z"}"#).expiring());
        assert!(!action(r#"{"href":"file:///etc/passwd"}"#).valid());
        let secret = action(r#"{"href":"https://x/o?X-Amz-Signature=abc","header":{"Authorization":"Bearer t0ken"}}"#);
        assert!(!format!("{secret:?}").contains("abc") && !format!("{secret:?}").contains("t0ken"));
    }
}
