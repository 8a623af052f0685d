//! Remotes: where a repository lives, how to reach it, and how to name it without leaking secrets.
//!
//! A [`Remote`] is parsed once from a user-supplied location. Credentials found in the URL's
//! userinfo are moved out of the URL into [`Credentials`] (which never print), so every
//! `Display` of a remote, every error and every log line shows the redacted URL only. HTTP
//! credentials are handed to the transport *before* the first request: a streamed (chunked) push
//! body cannot be replayed after a 401.
//!
//! SSH remotes (`ssh://user@host[:port]/path`, scp-like `user@host:path`) keep their user name in
//! the URL: for SSH it names an account, it is not a secret. Their key and trusted host keys are
//! [`SshOptions`], attached from secret references ([`Remote::with_ssh_identity`]).

use std::fmt;
use std::path::PathBuf;

use super::Error;
use super::ssh::{HostKeys, SshIdentity, SshOptions};

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
    /// `git://`, `http://`, `https://` or `ssh://` (scp-like locations are ssh too).
    Network(gix::Url),
}

/// A source or target repository.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    location: Location,
    credentials: Option<Credentials>,
    /// Key and host keys of an SSH remote (empty otherwise).
    ssh: SshOptions,
    /// The location as shown to humans: the URL without userinfo (but with an SSH user), or the
    /// path.
    display: String,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.display)
            .field("credentials", &self.credentials)
            .field("ssh", &self.ssh)
            .finish()
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl Remote {
    /// Parse a location: `git://host[:port]/path`, `http(s)://[user[:password]@]host/path`,
    /// `ssh://[user@]host[:port]/path`, scp-like `[user@]host:path`, a `file://` URL or a local
    /// path.
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
        if !is_url && !looks_like_scp(input) {
            return Ok(Remote::local(PathBuf::from(input)));
        }
        let mut url = gix::url::parse(input).map_err(|_| invalid("not a valid git URL"))?;
        match url.scheme {
            gix::url::Scheme::File => {
                let path = gix::path::from_bstring(url.path.clone()).map_err(|_| invalid("path is not valid UTF-8"))?;
                return Ok(Remote::local(path));
            }
            gix::url::Scheme::Git | gix::url::Scheme::Http | gix::url::Scheme::Https => {}
            gix::url::Scheme::Ssh => return Remote::ssh(url, &invalid),
            _ => {
                return Err(invalid(
                    "unsupported scheme; use git://, http(s)://, ssh:// or a local path",
                ));
            }
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
            ssh: SshOptions::default(),
            display,
        })
    }

    /// An ssh:// or scp-like URL: the user stays (it is an account name), a password is refused.
    fn ssh(url: gix::Url, invalid: &dyn Fn(&str) -> Error) -> Result<Remote, Error> {
        if url.host().is_none_or(str::is_empty) {
            return Err(invalid("missing host"));
        }
        if url.password().is_some() {
            return Err(invalid(
                "ssh:// URLs carry no password: remove it and set ssh_key_env (or --ssh-key)",
            ));
        }
        if url.path.contains(&b'?') || url.path.contains(&b'#') {
            return Err(invalid("query strings and fragments are not supported"));
        }
        super::ssh::remote_command("git-upload-pack", &url.path).map_err(|reason| invalid(&reason))?;
        Ok(Remote {
            display: url.to_bstring().to_string(),
            location: Location::Network(url),
            credentials: None,
            ssh: SshOptions::default(),
        })
    }

    pub(crate) fn local(path: PathBuf) -> Remote {
        Remote {
            display: path.display().to_string(),
            location: Location::Local(path),
            credentials: None,
            ssh: SshOptions::default(),
        }
    }

    /// The same remote at a sibling path: `suffix` replaces a trailing `.git` (or is appended)
    /// — `acme/app.git` → `acme/app.wiki.git` for a repository's wiki. Credentials and SSH
    /// options stay.
    pub fn with_path_suffix(&self, suffix: &str) -> Remote {
        let swap = |path: &str| {
            format!(
                "{}{suffix}",
                path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/')
            )
        };
        let mut out = self.clone();
        match &mut out.location {
            Location::Local(path) => {
                *path = PathBuf::from(swap(&path.to_string_lossy()));
                out.display = path.display().to_string();
            }
            Location::Network(url) => {
                url.path = swap(&url.path.to_string()).into();
                out.display = url.to_bstring().to_string();
            }
        }
        out
    }

    /// Authenticate with this key (SSH remotes only; ignored otherwise).
    pub fn with_ssh_identity(mut self, identity: SshIdentity) -> Remote {
        if self.is_ssh() {
            self.ssh.identity = Some(identity);
        }
        self
    }

    /// Also trust these host keys (SSH remotes only; ignored otherwise).
    pub fn with_host_keys(mut self, keys: HostKeys) -> Remote {
        if self.is_ssh() {
            self.ssh.host_keys.extend(keys);
        }
        self
    }

    pub fn is_ssh(&self) -> bool {
        matches!(&self.location, Location::Network(u) if u.scheme == gix::url::Scheme::Ssh)
    }

    /// Key and trusted host keys, for an SSH remote.
    pub fn ssh_options(&self) -> Option<&SshOptions> {
        self.is_ssh().then_some(&self.ssh)
    }

    /// Host and port of an SSH remote.
    pub fn ssh_host(&self) -> Option<(String, u16)> {
        match &self.location {
            Location::Network(u) if u.scheme == gix::url::Scheme::Ssh => {
                Some((u.host().unwrap_or_default().to_owned(), u.port.unwrap_or(22)))
            }
            _ => None,
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
        let scheme_start = rest[..scheme_end]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+'))
            .map_or(0, |i| i + 1);
        let scheme = rest[scheme_start..scheme_end].to_ascii_lowercase();
        let is_ssh = scheme.split('+').any(|part| part == "ssh");
        out.push_str(&rest[..scheme_end + 3]);
        rest = &rest[scheme_end + 3..];
        let authority_end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            // An ssh user name is an account, not a secret; `user:password@` still goes.
            if is_ssh && !rest[..at].contains(':') {
                out.push_str(&rest[..=at]);
            } else {
                out.push_str("***@");
            }
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
    }

    #[test]
    fn ssh_urls_and_scp_like_locations() {
        let r = Remote::parse("ssh://git@example.com:29418/team/app.git").unwrap();
        assert!(r.is_ssh() && r.credentials().is_none());
        assert_eq!(r.to_string(), "ssh://git@example.com:29418/team/app.git");
        assert_eq!(r.ssh_host(), Some(("example.com".into(), 29418)));
        let r = Remote::parse("git@github.com:o/r.git").unwrap();
        assert!(r.is_ssh());
        assert_eq!(r.ssh_host(), Some(("github.com".into(), 22)));
        assert_eq!(r.to_string(), "git@github.com:o/r.git");
        let Location::Network(url) = r.location() else { panic!() };
        assert_eq!(url.user(), Some("git"));
        assert_eq!(url.path, "o/r.git");
        assert!(Remote::parse("backup.internal:/srv/git/app.git").unwrap().is_ssh());
        let e = Remote::parse("ssh://git:hunter22@h/x").unwrap_err().to_string();
        assert!(e.contains("no password") && !e.contains("hunter22"), "{e}");
        // No ssh binary runs, so nothing here can become an ssh option; the path goes to the
        // server quoted and starts with `/` (a bare `-…` path is refused: ssh::remote_command).
        assert!(Remote::parse("ssh://h/-oProxyCommand=x").is_ok());
        assert_eq!(redact_url("ssh://git@h/x"), "ssh://git@h/x");
        assert_eq!(redact_url("ssh://git:pw@h/x"), "ssh://***@h/x");
        assert_eq!(
            redact_url("git+ssh://u@h/x https://u@h/y"),
            "git+ssh://u@h/x https://***@h/y"
        );
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
