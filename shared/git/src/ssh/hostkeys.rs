//! Which SSH server keys a connection trusts. Always checked: there is no trust on first use.
//!
//! A server key is trusted when its SHA-256 fingerprint equals one of the pins for the host:
//!
//! * pins given per remote (`host_key`): a fingerprint as `ssh-keygen -lf` prints it
//!   (`SHA256:…`, optionally the whole line with the type in brackets), a public key
//!   (`ssh-ed25519 AAAA…`) or a `known_hosts` line;
//! * `known_hosts` lines (`known_hosts_env`, the CLI's `--known-hosts`): host patterns with
//!   `*`/`?` wildcards and `!` negation, `[host]:port` for other ports, hashed names
//!   (`|1|salt|hash`), `@revoked` keys (refused whatever else says);
//! * built-in fingerprints of github.com, gitlab.com and bitbucket.org, as their operators
//!   publish them ([`BUILT_IN`]).
//!
//! A key that matches nothing is refused, naming the host and the offered fingerprint so that
//! a person can check it and pin it: *unknown* when nothing was pinned for that host, *changed*
//! when something was (someone may be in the middle, or the server was reinstalled).
//!
//! Fingerprints only say which key, not which algorithm. When the pins of a host do say
//! (public keys, `ssh-keygen -lf` lines, the built-ins), the algorithms pinned are offered to
//! the server first, as OpenSSH does with its known hosts: a server with ed25519 and ECDSA keys
//! whose ECDSA key is pinned must show that one.

use std::fmt;

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{HostPatterns, Marker};
use russh::keys::{Algorithm, HashAlg, PublicKey};

/// Published host key fingerprints of the big hosts: (host names, algorithm, fingerprint).
///
/// Sources, checked 2026-11 (keep them in sync when a host rotates its keys):
/// * GitHub: "GitHub's SSH key fingerprints",
///   <https://docs.github.com/en/authentication/keeping-your-account-and-data-secure/githubs-ssh-key-fingerprints>
///   (the same keys serve ssh.github.com on port 443);
/// * GitLab: "SSH host keys fingerprints" of GitLab.com,
///   <https://docs.gitlab.com/user/gitlab_com/#ssh-host-keys-fingerprints> (altssh.gitlab.com on
///   port 443 serves the same keys);
/// * Bitbucket Cloud: "Configure SSH and two-step verification", SSH Host Keys,
///   <https://support.atlassian.com/bitbucket-cloud/docs/configure-ssh-and-two-step-verification/>.
pub const BUILT_IN: &[(&[&str], &str, &str)] = &[
    (
        GITHUB,
        "ssh-ed25519",
        "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
    ),
    (
        GITHUB,
        "ecdsa-sha2-nistp256",
        "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
    ),
    (GITHUB, "ssh-rsa", "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"),
    (
        GITLAB,
        "ssh-ed25519",
        "SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8",
    ),
    (
        GITLAB,
        "ecdsa-sha2-nistp256",
        "SHA256:HbW3g8zUjNSksFbqTiUWPWg2Bq1x8xdGUrliXFzSnUw",
    ),
    (GITLAB, "ssh-rsa", "SHA256:ROQFvPThGrW4RuWLoL9tq9I9zJ42fK4XywyRtbOz/EQ"),
    (
        BITBUCKET,
        "ssh-ed25519",
        "SHA256:ybgmFkzwOSotHTHLJgHO0QN8L0xErw6vd0VhFA9m3SM",
    ),
    (
        BITBUCKET,
        "ecdsa-sha2-nistp256",
        "SHA256:FC73VB6C4OQLSCrjEayhMp9UMxS97caD/Yyi2bhW/J0",
    ),
    (
        BITBUCKET,
        "ssh-rsa",
        "SHA256:46OSHA1Rmj8E8ERTC6xkNcmGOw9oFxYr0WF6zWW8l1E",
    ),
];
const GITHUB: &[&str] = &["github.com", "ssh.github.com"];
const GITLAB: &[&str] = &["gitlab.com", "altssh.gitlab.com"];
const BITBUCKET: &[&str] = &["bitbucket.org", "altssh.bitbucket.org"];

/// The host keys trusted for connections, besides [`BUILT_IN`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HostKeys {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    hosts: Hosts,
    /// `SHA256:…` (unpadded base64, as OpenSSH prints it).
    fingerprint: String,
    /// The key's algorithm name (`ssh-ed25519`, `ssh-rsa`, …) when the pin says it.
    algorithm: Option<String>,
    revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Hosts {
    /// Pinned for one remote: whatever host that remote names.
    ThisRemote,
    Patterns(Vec<String>),
    Hashed {
        salt: Vec<u8>,
        hash: [u8; 20],
    },
}

impl fmt::Debug for HostKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.fingerprint))
            .finish()
    }
}

/// Why a server's key was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `host` or `[host]:port`, as known_hosts names it.
    pub host: String,
    pub kind: RefusalKind,
    /// The offered key's algorithm (`ssh-ed25519`, …) and fingerprint.
    pub algorithm: String,
    pub fingerprint: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Nothing is pinned for this host.
    Unknown,
    /// Other keys are pinned for this host.
    Changed,
    /// The key is listed as `@revoked`.
    Revoked,
    /// The server showed a certificate; only plain keys are pinned.
    Certificate,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (host, alg, fp) = (&self.host, &self.algorithm, &self.fingerprint);
        match self.kind {
            RefusalKind::Unknown => write!(
                f,
                "host key of {host} is not trusted: nothing is pinned for it; the server offered {alg} {fp} \
                 (after checking that this is the host's key, pin it: host_key = \"{fp}\")"
            ),
            RefusalKind::Changed => write!(
                f,
                "host key of {host} does not match the pinned keys (changed, or someone is in between); \
                 the server offered {alg} {fp}"
            ),
            RefusalKind::Revoked => write!(f, "host key of {host} is revoked: {alg} {fp}"),
            RefusalKind::Certificate => {
                write!(f, "{host} offered a host certificate; pin its plain host key instead")
            }
        }
    }
}

/// The SHA-256 fingerprint of a key, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// How known_hosts names a host: `host` on port 22, `[host]:port` otherwise.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

impl HostKeys {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add every key of `other`.
    pub fn extend(&mut self, other: HostKeys) {
        self.entries.extend(other.entries);
    }

    /// One `host_key` value of a remote: a fingerprint (`SHA256:…`, or a whole `ssh-keygen -lf`
    /// line), a public key (`ssh-ed25519 AAAA… [comment]`) or a known_hosts line.
    pub fn parse_pin(text: &str) -> Result<HostKeys, String> {
        let text = text.trim();
        let words: Vec<&str> = text.split_whitespace().collect();
        if let Some(fp) = words.iter().find(|w| w.starts_with("SHA256:")) {
            return Ok(HostKeys {
                entries: vec![Entry {
                    hosts: Hosts::ThisRemote,
                    fingerprint: checked_fingerprint(fp)?,
                    algorithm: keygen_type(&words),
                    revoked: false,
                }],
            });
        }
        if words
            .first()
            .is_some_and(|w| w.starts_with("MD5:") || (w.contains(':') && w.len() == 47))
        {
            return Err("MD5 fingerprints are not accepted: give the SHA256:… fingerprint".into());
        }
        if let Ok(key) = PublicKey::from_openssh(text) {
            return Ok(HostKeys {
                entries: vec![Entry::for_key(Hosts::ThisRemote, &key, false)],
            });
        }
        HostKeys::parse_known_hosts(text).map_err(|(_, e)| e)
    }

    /// known_hosts lines (blank lines and `#` comments skipped). The error names the line.
    pub fn parse_known_hosts(text: &str) -> Result<HostKeys, (usize, String)> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.push(parse_known_hosts_line(line).map_err(|e| (i + 1, e))?);
        }
        if entries.is_empty() {
            return Err((0, "no host keys in it".into()));
        }
        Ok(HostKeys { entries })
    }

    /// Whether anything here (or built in) names `host` on `port`.
    pub fn covers(&self, host: &str, port: u16) -> bool {
        !self.for_host(host, port).is_empty()
    }

    /// Check the key a server offered as `host` on `port`.
    pub fn verify(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), Refusal> {
        let offered = fingerprint(key);
        let relevant = self.for_host(host, port);
        let refuse = |kind| Refusal {
            host: host_name(host, port),
            kind,
            algorithm: key.algorithm().as_str().to_owned(),
            fingerprint: offered.clone(),
        };
        if relevant.iter().any(|e| e.revoked && e.fingerprint == offered) {
            return Err(refuse(RefusalKind::Revoked));
        }
        if relevant.iter().any(|e| !e.revoked && e.fingerprint == offered) {
            return Ok(());
        }
        match relevant.iter().any(|e| !e.revoked) {
            true => Err(refuse(RefusalKind::Changed)),
            false => Err(refuse(RefusalKind::Unknown)),
        }
    }

    /// A refusal for a server that showed a certificate.
    pub fn certificate_refusal(host: &str, port: u16) -> Refusal {
        Refusal {
            host: host_name(host, port),
            kind: RefusalKind::Certificate,
            algorithm: String::new(),
            fingerprint: String::new(),
        }
    }

    /// The host key algorithms to offer, most wanted first: those pinned for the host, then
    /// the rest of `defaults` in their order.
    pub fn preferred_algorithms(&self, host: &str, port: u16, defaults: &[Algorithm]) -> Vec<Algorithm> {
        let pinned: Vec<String> = self
            .for_host(host, port)
            .iter()
            .filter(|e| !e.revoked)
            .filter_map(|e| e.algorithm.clone())
            .collect();
        let wanted = |a: &Algorithm| {
            pinned
                .iter()
                .any(|p| p == a.as_str() || (matches!(a, Algorithm::Rsa { .. }) && p == "ssh-rsa"))
        };
        let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = defaults.iter().cloned().partition(wanted);
        first.extend(rest);
        first
    }

    fn for_host(&self, host: &str, port: u16) -> Vec<Entry> {
        let name = host_name(host, port);
        let mut out: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.hosts.matches(&name))
            .cloned()
            .collect();
        let host = host.to_ascii_lowercase();
        for (names, algorithm, fp) in BUILT_IN {
            if names.contains(&host.as_str()) {
                out.push(Entry {
                    hosts: Hosts::ThisRemote,
                    fingerprint: (*fp).to_owned(),
                    algorithm: Some((*algorithm).to_owned()),
                    revoked: false,
                });
            }
        }
        out
    }
}

impl Entry {
    fn for_key(hosts: Hosts, key: &PublicKey, revoked: bool) -> Entry {
        Entry {
            hosts,
            fingerprint: fingerprint(key),
            algorithm: Some(key.algorithm().as_str().to_owned()),
            revoked,
        }
    }
}

fn parse_known_hosts_line(line: &str) -> Result<Entry, String> {
    let entry: russh::keys::ssh_key::known_hosts::Entry = line
        .parse()
        .map_err(|_| "not a known_hosts line (hosts, key type, base64 key)".to_owned())?;
    let revoked = match entry.marker() {
        None => false,
        Some(Marker::Revoked) => true,
        Some(Marker::CertAuthority) => {
            return Err("@cert-authority lines are not supported: pin the host's own key".into());
        }
    };
    let hosts = match entry.host_patterns() {
        HostPatterns::Patterns(p) => Hosts::Patterns(p.iter().map(|s| s.to_ascii_lowercase()).collect()),
        HostPatterns::HashedName { salt, hash } => Hosts::Hashed {
            salt: salt.clone(),
            hash: *hash,
        },
    };
    Ok(Entry::for_key(hosts, entry.public_key(), revoked))
}

/// `SHA256:` and 43 characters of unpadded base64 (32 bytes).
fn checked_fingerprint(text: &str) -> Result<String, String> {
    use base64::Engine;
    let b64 = text.trim_start_matches("SHA256:").trim_end_matches('=');
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64);
    match decoded {
        Ok(bytes) if bytes.len() == 32 => Ok(format!("SHA256:{b64}")),
        _ => Err(format!(
            "{text:?} is not a SHA256 fingerprint (SHA256: and 43 base64 characters)"
        )),
    }
}

/// The algorithm of an `ssh-keygen -lf` line: `256 SHA256:… comment (ED25519)`.
fn keygen_type(words: &[&str]) -> Option<String> {
    let last = words.last()?.strip_prefix('(')?.strip_suffix(')')?;
    match last.to_ascii_uppercase().as_str() {
        "ED25519" => Some("ssh-ed25519".into()),
        "RSA" => Some("ssh-rsa".into()),
        "ECDSA" => words
            .first()
            .and_then(|bits| bits.parse::<u32>().ok())
            .map(|bits| format!("ecdsa-sha2-nistp{bits}")),
        _ => None,
    }
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::ThisRemote => true,
            Hosts::Patterns(patterns) => patterns_match(patterns, &name.to_ascii_lowercase()),
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
        }
    }
}

/// OpenSSH's rule: some positive pattern matches and no negated one does.
fn patterns_match(patterns: &[String], name: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        match p.strip_prefix('!') {
            Some(negated) if glob(negated.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
            None => matched |= glob(p.as_bytes(), name.as_bytes()),
        }
    }
    matched
}

/// `*` (any run) and `?` (one character) wildcards.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == b'?' || *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published ed25519 host key; its published fingerprint is in [`BUILT_IN`].
    const GITHUB_ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    /// Another key (GitLab's published ed25519 host key).
    const OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    #[test]
    fn fingerprints_are_what_the_hosts_publish() {
        assert_eq!(
            fingerprint(&key(GITHUB_ED25519)),
            "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"
        );
        assert_eq!(
            fingerprint(&key(OTHER)),
            "SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8"
        );
    }

    #[test]
    fn built_ins_trust_the_big_hosts_and_nothing_else() {
        let none = HostKeys::default();
        assert!(none.verify("github.com", 22, &key(GITHUB_ED25519)).is_ok());
        assert!(none.verify("ssh.github.com", 443, &key(GITHUB_ED25519)).is_ok());
        assert!(none.verify("gitlab.com", 22, &key(OTHER)).is_ok());
        let e = none.verify("github.com", 22, &key(OTHER)).unwrap_err();
        assert_eq!(e.kind, RefusalKind::Changed);
        let e = none.verify("git.example.com", 2222, &key(OTHER)).unwrap_err();
        assert_eq!(e.kind, RefusalKind::Unknown);
        assert_eq!(e.host, "[git.example.com]:2222");
        let shown = e.to_string();
        assert!(
            shown.contains("[git.example.com]:2222")
                && shown.contains("SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8"),
            "{shown}"
        );
    }

    #[test]
    fn pins_in_every_form() {
        let fp = "SHA256:eUXGGm1YGsMAS7vkcx6JOJdOGHPem5gQp4taiCfCLB8";
        for pin in [
            fp.to_owned(),
            format!("256 {fp} root@host (ED25519)"),
            format!("{OTHER} comment"),
            format!("[h.example]:2222 {OTHER}"),
        ] {
            let keys = HostKeys::parse_pin(&pin).unwrap_or_else(|e| panic!("{pin}: {e}"));
            assert!(keys.verify("h.example", 2222, &key(OTHER)).is_ok(), "{pin}");
            assert_eq!(
                keys.verify("h.example", 2222, &key(GITHUB_ED25519)).unwrap_err().kind,
                RefusalKind::Changed,
                "{pin}"
            );
        }
        assert!(HostKeys::parse_pin("SHA256:short").is_err());
        assert!(HostKeys::parse_pin("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48").is_err());
        assert!(HostKeys::parse_pin("nonsense").is_err());
        let typed = HostKeys::parse_pin("256 SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM x (ECDSA)").unwrap();
        assert_eq!(typed.entries[0].algorithm.as_deref(), Some("ecdsa-sha2-nistp256"));
    }

    #[test]
    fn known_hosts_patterns_ports_negation_hashes_and_revocation() {
        let text = format!(
            "# comment\n\n*.example.com,!evil.example.com {OTHER}\n[git.example.org]:29418 {GITHUB_ED25519}\n\
             @revoked * {GITHUB_ED25519}\n\
             |1|iSaDzD6IDHz6j/Ob/yVEoZC8L6U=|WN0At0aUKmdsk/CbuFz5TOlk4a0= {OTHER}\n"
        );
        let keys = HostKeys::parse_known_hosts(&text).unwrap();
        assert!(keys.verify("a.example.com", 22, &key(OTHER)).is_ok());
        assert_eq!(
            keys.verify("evil.example.com", 22, &key(OTHER)).unwrap_err().kind,
            RefusalKind::Unknown
        );
        assert_eq!(
            keys.verify("a.example.com", 2222, &key(OTHER)).unwrap_err().kind,
            RefusalKind::Unknown,
            "another port is another name"
        );
        assert_eq!(
            keys.verify("git.example.org", 29418, &key(GITHUB_ED25519))
                .unwrap_err()
                .kind,
            RefusalKind::Revoked,
            "revoked wins"
        );
        // Made with `ssh-keygen -H` from a line for hashed.example.net.
        assert!(keys.verify("hashed.example.net", 22, &key(OTHER)).is_ok());
        assert!(keys.verify("other.example.net", 22, &key(OTHER)).is_err());
        let e = HostKeys::parse_known_hosts("ok.example.com ssh-ed25519 AAAAC3Nz\n").unwrap_err();
        assert_eq!(e.0, 1);
        assert!(HostKeys::parse_known_hosts(&format!("@cert-authority * {OTHER}")).is_err());
    }

    #[test]
    fn pinned_algorithms_are_offered_first() {
        let defaults = [
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP256,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
        ];
        let keys = HostKeys::parse_pin("3072 SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s x (RSA)").unwrap();
        let order = keys.preferred_algorithms("h", 22, &defaults);
        assert!(
            matches!(order[0], Algorithm::Rsa { .. }) && order.len() == 3,
            "{order:?}"
        );
        assert_eq!(HostKeys::default().preferred_algorithms("h", 22, &defaults), defaults);
    }

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("*", "x", true),
            ("a*c", "abbbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.example.com", "example.com", false),
            ("[h]:22*", "[h]:2222", true),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), m, "{p} {t}");
        }
    }
}
