//! The git engine's one error type, and how errors from gix are classified.
//!
//! Every error is either *transient* (worth retrying: network trouble, server 5xx, timeouts,
//! a remote that died mid-transfer) or *permanent* (retrying cannot help: bad URL, auth
//! refused, repository not found, invalid refs). Callers decide retries from
//! [`Error::is_transient`] alone. Messages never contain credentials: remotes are shown by their
//! redacted URL and text from elsewhere is scrubbed (see `remote::scrub`).

use super::remote::{Remote, scrub};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid remote {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid ref pattern {pattern:?}: {reason}")]
    InvalidRefPattern { pattern: String, reason: String },

    #[error("refusing ref {name:?} advertised by the remote: {reason}")]
    InvalidRefName { name: String, reason: String },

    #[error("{remote}: authentication failed ({message})")]
    Auth { remote: String, message: String },

    #[error("{remote}: repository not found or not readable ({message})")]
    NotFound { remote: String, message: String },

    /// The SSH server's host key is not one we trust (unknown, changed or revoked): permanent
    /// until a person checks the key and pins it. The refusal names the host and the offered
    /// fingerprint.
    #[error("{remote}: {refusal}")]
    HostKey {
        remote: String,
        refusal: super::ssh::Refusal,
    },

    /// Could not reach the remote, or the connection failed mid-way (refused, reset, timeout,
    /// DNS, HTTP 5xx/429): transient.
    #[error("{remote}: network error ({message})")]
    Network { remote: String, message: String },

    /// The remote answered, but not in a way we can use (protocol error, unexpected HTTP
    /// status, unsupported server). Transient unless the server said something definitive.
    #[error("{remote}: {message}")]
    Remote {
        remote: String,
        message: String,
        transient: bool,
    },

    /// The target could not unpack what we sent (`unpack <reason>` in report-status).
    #[error("{remote}: the remote failed to unpack the pushed objects ({message})")]
    Unpack { remote: String, message: String },

    /// The local (cache or local-path) repository could not be read or written.
    #[error("local repository {path}: {message}")]
    Local { path: String, message: String },

    /// The repository uses an object format gix is not built for here (SHA-256): permanent
    /// until gitferry supports it.
    #[error("{remote}: {}", object_format_message(format))]
    UnsupportedObjectFormat { remote: String, format: String },

    /// A panic (a bug, in gitferry or a library) caught at one of the engine's entry points.
    /// Permanent: the same input would panic again.
    #[error("{remote}: internal error while {phase} (a bug in gitferry, not retried): {message}")]
    Panic {
        remote: String,
        phase: String,
        message: String,
    },

    #[error("interrupted")]
    Interrupted,
}

fn object_format_message(format: &str) -> String {
    if format.eq_ignore_ascii_case("sha256") {
        "SHA-256 repositories are not supported yet".into()
    } else {
        format!("object format {format:?} is not supported (only SHA-1 repositories are)")
    }
}

/// Retry classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Transient,
    Permanent,
}

impl Error {
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { .. } | Error::Unpack { .. } | Error::Interrupted => true,
            Error::Remote { transient, .. } => *transient,
            Error::InvalidUrl { .. }
            | Error::InvalidRefPattern { .. }
            | Error::InvalidRefName { .. }
            | Error::Auth { .. }
            | Error::HostKey { .. }
            | Error::NotFound { .. }
            | Error::Local { .. }
            | Error::UnsupportedObjectFormat { .. }
            | Error::Panic { .. } => false,
        }
    }

    pub fn class(&self) -> ErrorClass {
        if self.is_transient() {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        }
    }

    pub(crate) fn local(path: &std::path::Path, message: impl std::fmt::Display) -> Error {
        Error::Local {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }

    /// Classify an error from gix's network stack talking to `remote`. `context` says what we
    /// were doing ("fetch", "push", "list refs").
    pub(crate) fn from_gix(remote: &Remote, context: &str, err: &gix::Error) -> Error {
        let message = scrub(&format!("{context}: {}", bytes_as_text(&chain(err))), remote);
        let name = remote.to_string();
        if err.is_cancelled() {
            return Error::Interrupted;
        }
        if err.is_unauthenticated() || err.is_permission_denied() {
            return Error::Auth { remote: name, message };
        }
        if let Some(client) = err.downcast_any_ref::<gix::protocol::transport::client::Error>() {
            use gix::protocol::transport::client::Error as C;
            if matches!(client, C::AuthenticationRefused(_) | C::AuthenticationUnsupported) {
                return Error::Auth { remote: name, message };
            }
        }
        if let Some(status) = http_status(err) {
            return match status {
                401 | 403 => Error::Auth { remote: name, message },
                404 | 410 => Error::NotFound { remote: name, message },
                408 | 429 | 500..=599 => Error::Network { remote: name, message },
                _ => Error::Remote {
                    remote: name,
                    message,
                    transient: false,
                },
            };
        }
        if is_not_found_text(&message) || err.is_not_found() {
            return Error::NotFound { remote: name, message };
        }
        if is_denied_text(&message) {
            return Error::Auth { remote: name, message };
        }
        if err.can_retry_lenient() {
            return Error::Network { remote: name, message };
        }
        if err.is_unsupported() || err.is_validation() {
            return Error::Remote {
                remote: name,
                message,
                transient: false,
            };
        }
        // Unknown: protocol hiccups (truncated streams, unexpected EOF) are usually a dying
        // connection; let the queue retry them rather than giving up on the mirror.
        Error::Remote {
            remote: name,
            message,
            transient: true,
        }
    }

    /// Classify an error of gix's transport layer (handshake, request) talking to `remote`.
    pub(crate) fn from_client(remote: &Remote, context: &str, e: &gix::protocol::transport::client::Error) -> Error {
        use gix::protocol::transport::client::Error as C;
        match e {
            C::Io(io) => Error::from_io(remote, context, io),
            C::AuthenticationRefused(_) | C::AuthenticationUnsupported => Error::Auth {
                remote: remote.to_string(),
                message: scrub(&e.to_string(), remote),
            },
            other => {
                let message = scrub(&format!("{context}: {}", bytes_as_text(&chain(other))), remote);
                let class = || gix::error::classify(other);
                if class().is_unauthenticated() || class().is_permission_denied() {
                    Error::Auth {
                        remote: remote.to_string(),
                        message,
                    }
                } else {
                    Error::Remote {
                        remote: remote.to_string(),
                        message,
                        transient: class().can_retry_lenient(),
                    }
                }
            }
        }
    }

    /// An advertisement we refused or could not read ([`super::advert`]).
    pub(crate) fn from_advert(remote: &Remote, context: &str, e: super::advert::AdvertError) -> Error {
        use super::advert::AdvertError as A;
        match e {
            A::Malformed(m) => Error::Remote {
                remote: remote.to_string(),
                message: scrub(&format!("{context}: malformed ref advertisement, refused: {m}"), remote),
                transient: false,
            },
            A::ObjectFormat(format) => Error::UnsupportedObjectFormat {
                remote: remote.to_string(),
                format,
            },
            A::Io(io) => Error::from_io(remote, context, &io),
        }
    }

    /// Classify an I/O error that happened while talking to `remote`.
    pub(crate) fn from_io(remote: &Remote, context: &str, err: &std::io::Error) -> Error {
        use std::io::ErrorKind as K;
        let message = scrub(&format!("{context}: {}", chain(err)), remote);
        let name = remote.to_string();
        if let Some(status) = http_status_in_text(&message) {
            return match status {
                401 | 403 => Error::Auth { remote: name, message },
                404 | 410 => Error::NotFound { remote: name, message },
                408 | 429 | 500..=599 => Error::Network { remote: name, message },
                _ => Error::Remote {
                    remote: name,
                    message,
                    transient: false,
                },
            };
        }
        match err.kind() {
            K::PermissionDenied => Error::Auth { remote: name, message },
            K::NotFound => Error::NotFound { remote: name, message },
            _ if is_not_found_text(&message) => Error::NotFound { remote: name, message },
            _ if is_denied_text(&message) => Error::Auth { remote: name, message },
            _ => Error::Network { remote: name, message },
        }
    }
}

/// gix prints some raw protocol lines as byte lists (`[49, 50, 32, 114, …]`); show them as the
/// text they are (`"12 r…"`), which is what a person reading a status needs.
pub(crate) fn bytes_as_text(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let parsed = after.find(']').and_then(|end| {
            let bytes: Option<Vec<u8>> = after[..end].split(", ").map(|n| n.parse::<u8>().ok()).collect();
            bytes.filter(|b| b.len() >= 4).map(|b| (b, end))
        });
        match parsed {
            Some((bytes, end)) => {
                // Quoted, control characters escaped, nothing else: `scrub` runs on the result
                // and must still find a secret spelled out as it is.
                out.push('"');
                for c in String::from_utf8_lossy(&bytes).chars() {
                    if c.is_control() {
                        out.extend(c.escape_default());
                    } else {
                        out.push(c);
                    }
                }
                out.push('"');
                rest = &after[end + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The whole cause chain of an error on one line (each cause once).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn http_status(err: &gix::Error) -> Option<u16> {
    err.iter_errors()
        .find_map(|e| http_status_in_text(&e.to_string()))
        .or_else(|| http_status_in_text(&chain(err)))
}

fn http_status_in_text(text: &str) -> Option<u16> {
    let rest = &text[text.find("Received HTTP status ")? + "Received HTTP status ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// How an SSH git server says "you may not" on stderr (GitHub: "Permission to o/r.git denied to
/// deploy key"; git-shell and Gerrit: "… not allowed", "Permission denied").
fn is_denied_text(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("the ssh server said:")
        && (m.contains("denied") || m.contains("not allowed") || m.contains("permission"))
}

/// How git daemon and friends say "no such repository".
fn is_not_found_text(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("repository not exported")
        || m.contains("no such repository")
        || m.contains("does not appear to be a git repository")
        || m.contains("repository not found")
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_lists_from_gix_are_shown_as_text() {
        assert_eq!(
            super::bytes_as_text("list refs: [49, 50, 32, 114, 101, 102] could not be parsed [1, 2]"),
            "list refs: \"12 ref\" could not be parsed [1, 2]"
        );
        assert_eq!(
            super::bytes_as_text("a [x] b [300, 1, 2, 3] ["),
            "a [x] b [300, 1, 2, 3] ["
        );
        // Quotes and backslashes stay as they are (a secret containing them is still found by
        // `scrub`); control characters are escaped.
        assert_eq!(super::bytes_as_text("[112, 34, 92, 119, 10]"), "\"p\"\\w\\n\"");
    }

    use super::*;

    #[test]
    fn http_status_parsing() {
        assert_eq!(http_status_in_text("x: Received HTTP status 503 (bad)"), Some(503));
        assert_eq!(http_status_in_text("Received HTTP status 404"), Some(404));
        assert_eq!(http_status_in_text("nothing"), None);
    }

    #[test]
    fn classes() {
        let r = Remote::parse("https://u:pw12345@h/r").unwrap();
        let e = Error::from_io(
            &r,
            "push",
            &std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by https://u:pw12345@h/r"),
        );
        assert!(e.is_transient());
        assert!(!e.to_string().contains("pw12345"), "{e}");
        let e = Error::from_io(&r, "push", &std::io::Error::other("Received HTTP status 401"));
        assert!(matches!(e, Error::Auth { .. }) && !e.is_transient());
    }
}
