//! Where a remote's Git LFS server is, derived as git-lfs derives it, and which credentials it
//! gets.
//!
//! git-lfs's rule (docs/api/server-discovery.md): the remote's URL with `/info/lfs` appended
//! when it ends in `.git`, `.git/info/lfs` otherwise; ssh:// and git:// remotes map to
//! `https://host/path`. The source's `.lfsconfig` (`[lfs] url = …`, in its default branch) may
//! name another server; it is honoured for the source only — a mirror carries the source's
//! `.lfsconfig` to every target, where it still names the source's server.
//!
//! Credentials: the remote's own, and only when the endpoint is on the remote's scheme, host
//! and port. An `lfs.url` elsewhere (written by whoever can push to the source) never receives
//! them.

use std::fmt;

use crate::remote::{Credentials, Location, Remote};

use super::LfsError;

/// A Git LFS server: its batch API lives at `{url}/objects/batch`.
#[derive(Clone)]
pub struct Endpoint {
    /// Without a trailing `/`; never contains credentials.
    pub url: String,
    pub credentials: Option<Credentials>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::remote::redact_url(&self.url))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl Endpoint {
    /// The LFS endpoint of `remote`, or of `lfs_url` (a source's `.lfsconfig`) when given.
    pub fn of(remote: &Remote, lfs_url: Option<&str>) -> Result<Endpoint, LfsError> {
        let Location::Network(url) = remote.location() else {
            return Err(LfsError::NoEndpoint {
                remote: remote.to_string(),
                reason: "local paths have no Git LFS server".into(),
            });
        };
        let base = base_url(url);
        let derived = derive(&base);
        let Some(configured) = lfs_url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Endpoint {
                url: derived,
                credentials: remote.credentials().cloned(),
            });
        };
        if !(configured.starts_with("https://") || configured.starts_with("http://")) || configured.contains('@') {
            return Err(LfsError::NoEndpoint {
                remote: remote.to_string(),
                reason: format!(
                    "its .lfsconfig lfs.url {} is not an http(s) URL without credentials",
                    crate::remote::redact_url(configured)
                ),
            });
        }
        let same_origin = origin(configured) == origin(&base) && url_is_http(url);
        Ok(Endpoint {
            url: configured.trim_end_matches('/').to_owned(),
            credentials: remote.credentials().filter(|_| same_origin).cloned(),
        })
    }
}

fn url_is_http(url: &gix::Url) -> bool {
    matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https)
}

/// `scheme://host[:port]/path` of a remote URL, as HTTP: ssh and git remotes become https.
fn base_url(url: &gix::Url) -> String {
    let scheme = if url.scheme == gix::url::Scheme::Http {
        "http"
    } else {
        "https"
    };
    let host = url.host().unwrap_or_default();
    let port = match (url_is_http(url), url.port) {
        (true, Some(p)) => format!(":{p}"),
        _ => String::new(),
    };
    let path = url.path.to_string();
    let path = path.trim_start_matches('/');
    format!("{scheme}://{host}{port}/{path}")
}

/// git-lfs's derivation from an HTTP base URL.
fn derive(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(".git") {
        format!("{base}/info/lfs")
    } else {
        format!("{base}.git/info/lfs")
    }
}

/// `scheme://host[:port]` of an http(s) URL, lowercased.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
}

/// `lfs.url` from the text of a `.lfsconfig` (git-config syntax; the last value wins).
pub fn lfsconfig_url(text: &str) -> Option<String> {
    let mut in_lfs = false;
    let mut url = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_lfs = line
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .eq_ignore_ascii_case("lfs");
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if in_lfs && key.trim().eq_ignore_ascii_case("url") {
            let value = value
                .split(['#', ';'])
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"');
            url = Some(value.to_owned());
        }
    }
    url
}

/// `lfs.url` of the `.lfsconfig` at the root of `repo`'s `HEAD` tree, if there is one.
pub fn repo_lfs_url(repo: &gix::Repository) -> Option<String> {
    let tree = repo.head_commit().ok()?.tree().ok()?;
    let entry = tree.find_entry(".lfsconfig")?;
    let blob = entry.object().ok()?;
    if blob.data.len() > 64 * 1024 {
        return None;
    }
    lfsconfig_url(std::str::from_utf8(&blob.data).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, lfs_url: Option<&str>) -> Endpoint {
        Endpoint::of(&Remote::parse(url).unwrap(), lfs_url).unwrap()
    }

    #[test]
    fn endpoints_are_derived_as_git_lfs_derives_them() {
        for (remote, want) in [
            (
                "https://example.com/org/app.git",
                "https://example.com/org/app.git/info/lfs",
            ),
            (
                "https://example.com/org/app",
                "https://example.com/org/app.git/info/lfs",
            ),
            (
                "http://127.0.0.1:8080/org/app.git/",
                "http://127.0.0.1:8080/org/app.git/info/lfs",
            ),
            (
                "ssh://git@example.com:2222/org/app.git",
                "https://example.com/org/app.git/info/lfs",
            ),
            (
                "git@example.com:org/app.git",
                "https://example.com/org/app.git/info/lfs",
            ),
            ("git://example.com/org/app", "https://example.com/org/app.git/info/lfs"),
        ] {
            assert_eq!(endpoint(remote, None).url, want, "{remote}");
        }
    }

    #[test]
    fn credentials_go_only_to_the_remotes_own_origin() {
        let remote = Remote::parse("https://bot:s3cret-token@example.com/org/app.git").unwrap();
        let own = Endpoint::of(&remote, None).unwrap();
        assert_eq!(
            own.credentials.as_ref().map(|c| c.password.as_str()),
            Some("s3cret-token")
        );
        let same = Endpoint::of(&remote, Some("https://EXAMPLE.com/lfs/app")).unwrap();
        assert!(same.credentials.is_some());
        let other = Endpoint::of(&remote, Some("https://lfs.elsewhere.net/app")).unwrap();
        assert!(other.credentials.is_none(), "credentials never leave the remote's host");
        assert!(!format!("{own} {own:?}").contains("s3cret"));
        assert!(Endpoint::of(&remote, Some("https://u:p@lfs.example.com/x")).is_err());
        assert!(Endpoint::of(&remote, Some("file:///etc")).is_err());
        assert!(Endpoint::of(&Remote::parse("/srv/git/app.git").unwrap(), None).is_err());
    }

    #[test]
    fn lfsconfig_url_is_read_from_the_lfs_section() {
        let text = "[core]\n\turl = nope\n[lfs]\n\turl = \"https://lfs.example.com/app\" # comment\n";
        assert_eq!(lfsconfig_url(text).as_deref(), Some("https://lfs.example.com/app"));
        assert_eq!(lfsconfig_url("[remote \"origin\"]\nurl = x\n"), None);
        assert_eq!(lfsconfig_url("\u{0}garbage ]]] [[ =="), None);
    }
}
