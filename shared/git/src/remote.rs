//! Remotes: where a repository lives, how to reach it, and how to name it without leaking secrets.
//!
//! A [`Remote`] is parsed once from a user-supplied location. Credentials found in the URL's
//! userinfo are moved out of the URL into [`Credentials`] (which never print), so every
//! `Display` of a remote, every error and every log line shows the redacted URL only. HTTP
//! credentials are handed to the transport *before* the first request: a streamed (chunked) push
//! body cannot be replayed after a 401.

use std::fmt;
use std::path::PathBuf;

use super::Error;

/// Username and password (or token) for HTTP basic auth. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a remote is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A repository on this machine, opened directly (no `git` process is spawned).
    Local(PathBuf),
    /// `git://`, `http://` or `https://`.
    Network(gix::Url),
}

/// A source or target repository.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    location: Location,
    credentials: Option<Credentials>,
    /// The location as shown to humans: the URL without userinfo, or the path.
    display: String,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.display)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl Remote {
    /// Parse a location: `git://host[:port]/path`, `http(s)://[user[:password]@]host/path`, a
    /// `file://` URL or a local path. `ssh://` and scp-like locations are not supported yet.
    pub fn parse(input: &str) -> Result<Remote, Error> {
        let mut shown = redact_url(input);
        // Never echo a query or fragment (see below): they are refused, and may hold a token.
        if let Some(scheme) = shown.find("://")
            && let Some(cut) = shown[scheme + 3..].find(['?', '#'])
        {
            shown.replace_range(scheme + 3 + cut.., "?…");
        }
        let invalid = |reason: &str| Error::InvalidUrl {
            url: shown.clone(),
            reason: reason.to_owned(),
        };
        if input.trim().is_empty() {
            return Err(invalid("empty location"));
        }
        let is_url = input.contains("://");
        if !is_url {
            if looks_like_scp(input) {
                return Err(invalid(
                    "scp-like ssh locations are not supported; use git://, http(s):// or a local path",
                ));
            }
            return Ok(Remote::local(PathBuf::from(input)));
        }
        let mut url = gix::url::parse(input).map_err(|_| invalid("not a valid git URL"))?;
        match url.scheme {
            gix::url::Scheme::File => {
                let path = gix::path::from_bstring(url.path.clone()).map_err(|_| invalid("path is not valid UTF-8"))?;
                return Ok(Remote::local(path));
            }
            gix::url::Scheme::Git | gix::url::Scheme::Http | gix::url::Scheme::Https => {}
            gix::url::Scheme::Ssh => {
                return Err(invalid("ssh:// is not supported yet; use https:// with a token"));
            }
            _ => return Err(invalid("unsupported scheme; use git://, http(s):// or a local path")),
        }
        if url.host().is_none_or(str::is_empty) {
            return Err(invalid("missing host"));
        }
        // Git URLs have no query or fragment; one here is usually a token pasted into the URL,
        // which would then show in every status, log line and manifest key.
        if url.path.contains(&b'?') || url.path.contains(&b'#') {
            return Err(invalid(
                "query strings and fragments are not supported (a token belongs in token_env)",
            ));
        }
        let user = url.set_user(None);
        let password = url.set_password(None);
        let credentials = match (user, password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            // A lone userinfo on https is how tokens are often pasted: `https://TOKEN@host/...`.
            (Some(token), None) if url.scheme != gix::url::Scheme::Git => Some(Credentials {
                username: token,
                password: String::new(),
            }),
            (Some(_), None) => None,
            (None, _) => None,
        };
        if credentials.is_some() && url.scheme == gix::url::Scheme::Git {
            return Err(invalid("git:// has no authentication; remove the credentials"));
        }
        let display = url.to_bstring().to_string();
        Ok(Remote {
            location: Location::Network(url),
            credentials,
            display,
        })
    }

    pub(crate) fn local(path: PathBuf) -> Remote {
        Remote {
            display: path.display().to_string(),
            location: Location::Local(path),
            credentials: None,
        }
    }

    /// Use these credentials (overriding any from the URL). Ignored for git:// and local paths.
    pub fn with_credentials(mut self, credentials: Credentials) -> Remote {
        if self.is_http() {
            self.credentials = Some(credentials);
        }
        self
    }

    /// Take credentials from `{PREFIX}_TOKEN` (and optionally `{PREFIX}_USER`, default
    /// `x-access-token`, which GitHub, Gitea and GitLab all accept for tokens), if set.
    pub fn with_env_credentials(self, prefix: &str) -> Remote {
        match std::env::var(format!("{prefix}_TOKEN")) {
            Ok(token) if !token.is_empty() => {
                let username = std::env::var(format!("{prefix}_USER"))
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "x-access-token".into());
                self.with_credentials(Credentials {
                    username,
                    password: token,
                })
            }
            _ => self,
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    pub fn is_http(&self) -> bool {
        matches!(&self.location, Location::Network(u) if matches!(u.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https))
    }

    /// A short, filesystem-safe name derived from the location (for cache directories).
    pub fn cache_key(&self) -> String {
        let mut name: String = self
            .display
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .rsplit(['/', ':'])
            .next()
            .unwrap_or("repo")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() || name.starts_with('.') {
            name.insert(0, 'r');
        }
        name.truncate(64);
        // Distinguish same-named repositories of different hosts/owners.
        format!("{name}-{:016x}", crate::hash::fnv1a(self.display.as_bytes()))
    }
}

fn looks_like_scp(input: &str) -> bool {
    // `user@host:path` or `host:path` (but not `C:\…`-like or `./a:b`).
    match input.split_once(':') {
        Some((before, _)) => !before.contains('/') && before.len() > 1,
        None => false,
    }
}

/// Replace any userinfo (`user:password@`) in a URL-like string with `***@`. Used for input that
/// could not be parsed, so even a malformed location never shows its secret.
pub fn redact_url(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(scheme_end) = rest.find("://") {
        out.push_str(&rest[..scheme_end + 3]);
        rest = &rest[scheme_end + 3..];
        let authority_end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out.push_str("***@");
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Remove every occurrence of the given secrets from a message that came from elsewhere (a
/// server's error text, a library error that may embed a URL).
pub(crate) fn scrub(message: &str, remote: &Remote) -> String {
    let mut out = redact_url(message);
    if let Some(c) = &remote.credentials {
        for secret in [&c.password, &c.username] {
            if secret.len() >= 4 {
                out = out.replace(secret.as_str(), "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_refused_without_echoing_them() {
        for url in [
            "https://gitlab.example.com/org/app.git?private_token=glpat-secret123",
            "https://h/org/app.git#glpat-secret123",
        ] {
            let e = Remote::parse(url).unwrap_err().to_string();
            assert!(e.contains("query strings") && !e.contains("secret123"), "{e}");
        }
    }

    #[test]
    fn userinfo_moves_into_credentials_and_never_displays() {
        let r = Remote::parse("https://alice:s3cret-token@Example.com/org/repo.git").unwrap();
        assert_eq!(r.to_string(), "https://example.com/org/repo.git");
        let c = r.credentials().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "s3cret-token"));
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn bare_token_userinfo_is_a_credential() {
        let r = Remote::parse("https://ghp_abcdef@github.com/o/r").unwrap();
        assert_eq!(r.credentials().unwrap().username, "ghp_abcdef");
        assert!(!r.to_string().contains("ghp_"));
    }

    #[test]
    fn invalid_url_errors_are_redacted() {
        let e = Remote::parse("https://bob:hunter22@/nohost").unwrap_err().to_string();
        assert!(!e.contains("hunter22"), "{e}");
        let e = Remote::parse("ftp://bob:hunter22@host/x").unwrap_err().to_string();
        assert!(!e.contains("hunter22"), "{e}");
    }

    #[test]
    fn local_paths_and_file_urls() {
        assert!(matches!(
            Remote::parse("/srv/git/a.git").unwrap().location(),
            Location::Local(_)
        ));
        assert!(
            matches!(Remote::parse("file:///srv/git/a.git").unwrap().location(), Location::Local(p) if p == &PathBuf::from("/srv/git/a.git"))
        );
        assert!(Remote::parse("git@github.com:o/r.git").is_err());
        assert!(Remote::parse("ssh://git@github.com/o/r.git").is_err());
    }

    #[test]
    fn redact_url_handles_odd_input() {
        assert_eq!(redact_url("http://u:p@h/x"), "http://***@h/x");
        assert_eq!(redact_url("http://h/x@y"), "http://h/x@y");
        assert_eq!(
            redact_url("see http://a:b@c:80/d and more"),
            "see http://***@c:80/d and more"
        );
        assert_eq!(redact_url("no url"), "no url");
    }

    #[test]
    fn cache_keys_are_stable_and_distinct() {
        let a = Remote::parse("https://github.com/a/repo.git").unwrap().cache_key();
        let b = Remote::parse("https://gitlab.com/a/repo.git").unwrap().cache_key();
        assert!(a.starts_with("repo-") && b.starts_with("repo-") && a != b);
        let c = Remote::parse("https://tok@github.com/a/repo.git").unwrap().cache_key();
        assert_eq!(a, c, "credentials do not change the cache identity");
    }
}
