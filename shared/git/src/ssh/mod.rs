//! ssh:// in process: Lambda's provided.al2023 has no `ssh` binary, and spawning one would put
//! key files on disk. So an SSH client (russh) runs `git-upload-pack '<path>'` or
//! `git-receive-pack '<path>'` on the server, and the channel's data is handed to gix as the
//! stdin/stdout of a spawned process ([`session`]); fetch, ls-remote and push then run the same
//! code as over git:// and HTTP.
//!
//! * Keys come from secret references only ([`SshIdentity`]; `ssh_key_env` in the
//!   configuration, `--ssh-key` on the command line): Ed25519, ECDSA and RSA (signing with
//!   rsa-sha2-512/256), optionally passphrase-protected. They never print: `Debug` shows the
//!   public key's fingerprint.
//! * Host keys are always verified ([`hostkeys`]): no trust on first use.
//! * Protocol v2 is asked for with `GIT_PROTOCOL=version=2` in an env request before the exec;
//!   a server without `AcceptEnv GIT_PROTOCOL` ignores it and answers v0, which gix detects.
//! * The user defaults to `git` (what GitHub, GitLab, Bitbucket and Gerrit's documentation
//!   use): a Lambda function has no login name to fall back on.

pub mod hostkeys;
mod session;

use std::fmt;
use std::sync::Arc;

use russh::keys::{Algorithm, HashAlg, PrivateKey};

pub use hostkeys::{HostKeys, Refusal, RefusalKind};
pub(crate) use session::open;

/// The user when the URL names none.
pub const DEFAULT_USER: &str = "git";

/// A private key to authenticate with. `Debug` shows its public fingerprint only; the key is
/// zeroed in memory when the last clone is dropped (ssh-key's `ZeroizeOnDrop`).
#[derive(Clone)]
pub struct SshIdentity {
    key: Arc<PrivateKey>,
    fingerprint: String,
}

impl fmt::Debug for SshIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SshIdentity({} {})", self.key.algorithm().as_str(), self.fingerprint)
    }
}

impl PartialEq for SshIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for SshIdentity {}

/// Why a private key could not be used. The messages never quote the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a private key (expected an OpenSSH, PKCS#8, PKCS#1 or SEC1 PEM block)")]
    Malformed,
    #[error("the key is passphrase-protected: set its passphrase (ssh_key_passphrase_env)")]
    NeedsPassphrase,
    #[error("the key could not be decrypted: wrong passphrase")]
    WrongPassphrase,
    #[error("{0} keys are not supported (use Ed25519, ECDSA or RSA)")]
    Unsupported(String),
}

impl SshIdentity {
    /// Read a private key (PEM text, as `ssh-keygen` writes it), decrypting it with
    /// `passphrase` when it is protected.
    pub fn from_pem(text: &str, passphrase: Option<&str>) -> Result<SshIdentity, KeyError> {
        let passphrase = passphrase.filter(|p| !p.is_empty());
        let key = russh::keys::decode_secret_key(text, passphrase).map_err(|e| key_error(&e, passphrase))?;
        if key.is_encrypted() {
            return Err(KeyError::NeedsPassphrase);
        }
        let algorithm = key.algorithm();
        if !matches!(
            algorithm,
            Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { .. }
        ) {
            return Err(KeyError::Unsupported(algorithm.as_str().to_owned()));
        }
        Ok(SshIdentity {
            fingerprint: key.public_key().fingerprint(HashAlg::Sha256).to_string(),
            key: Arc::new(key),
        })
    }

    /// The public key's SHA-256 fingerprint (safe to show: it is what the server lists).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn key(&self) -> Arc<PrivateKey> {
        self.key.clone()
    }
}

fn key_error(e: &russh::keys::Error, passphrase: Option<&str>) -> KeyError {
    use russh::keys::Error as E;
    match e {
        E::KeyIsEncrypted => KeyError::NeedsPassphrase,
        E::UnsupportedKeyType { key_type_string, .. } => KeyError::Unsupported(key_type_string.clone()),
        _ if looks_encrypted(e) && passphrase.is_none() => KeyError::NeedsPassphrase,
        _ if passphrase.is_some() => KeyError::WrongPassphrase,
        _ => KeyError::Malformed,
    }
}

/// ssh-key reports a missing passphrase for an OpenSSH key as a decryption error.
fn looks_encrypted(e: &russh::keys::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("encrypt") || text.contains("decrypt") || text.contains("passphrase") || text.contains("password")
}

/// How a remote reached over SSH authenticates, and which host keys it trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshOptions {
    pub identity: Option<SshIdentity>,
    pub host_keys: HostKeys,
}

/// The command that serves `service` for `path` on the server, quoted as git quotes it
/// (`git-upload-pack '/srv/a b.git'`). A path that starts with `-` is refused: after the
/// server's shell unquotes it, it would be an option.
pub fn remote_command(service: &str, path: &[u8]) -> Result<String, String> {
    let path = String::from_utf8(path.to_vec()).map_err(|_| "the path is not valid UTF-8".to_owned())?;
    // `ssh://host/~/repo` and `ssh://host/~user/repo` are relative to a home directory: git
    // drops the leading slash so the server's shell expands `~`... which it cannot inside
    // quotes, so git-shell and git-upload-pack expand it themselves.
    let path = match path.strip_prefix("/~") {
        Some(rest) => format!("~{rest}"),
        None => path,
    };
    if path.is_empty() {
        return Err("no repository path".into());
    }
    if path.starts_with('-') {
        return Err("a path starting with '-' is refused".into());
    }
    Ok(format!("{service} {}", shell_quote(&path)))
}

/// git's `sq_quote`: single quotes, with `'` and `!` closed, escaped and reopened.
fn shell_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' | '!' => {
                out.push_str("'\\");
                out.push(c);
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_like_git() {
        assert_eq!(
            remote_command("git-upload-pack", b"/srv/a b.git").unwrap(),
            "git-upload-pack '/srv/a b.git'"
        );
        assert_eq!(
            remote_command("git-receive-pack", b"it's!.git").unwrap(),
            "git-receive-pack 'it'\\''s'\\!'.git'"
        );
        assert_eq!(
            remote_command("git-upload-pack", b"/~/repo.git").unwrap(),
            "git-upload-pack '~/repo.git'"
        );
        assert!(remote_command("git-upload-pack", b"-oProxyCommand=x").is_err());
        assert!(remote_command("git-upload-pack", b"").is_err());
    }

    #[test]
    fn garbage_keys_are_refused_without_echo() {
        let e = SshIdentity::from_pem(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0\n-----END OPENSSH PRIVATE KEY-----\n",
            None,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        assert_eq!(SshIdentity::from_pem("hello", None).unwrap_err(), KeyError::Malformed);
    }
}
