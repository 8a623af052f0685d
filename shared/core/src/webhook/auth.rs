//! Whose delivery is it: the signature header, the secrets that could apply, and the checks —
//! all in constant time.
//!
//! Each provider signs differently (checked against their documentation and delivery code):
//!
//! * GitHub: `X-Hub-Signature-256: sha256=HEX`, the HMAC-SHA256 of the body exactly as sent —
//!   for a form-encoded hook, of the form body (`payload=…`), not of the JSON inside it.
//! * Gitea and Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature: HEX`, the HMAC-SHA256 of the
//!   JSON payload — for a form-encoded hook, of the decoded `payload` field, not of the body
//!   (Gitea's `services/webhook/deliver.go` signs `PayloadContent` whatever the content type).
//! * GitLab: `X-Gitlab-Token` is the secret itself.
//!
//! The secrets that could apply to a delivery are the own secret of every configured repository
//! the payload names (`repos.NAME.webhook`, when it is a hook of this provider) and the
//! provider's account-level secret (`[webhooks.PROVIDER]`, for organisation, group and system
//! hooks). The account secret stands for every repository the payload names — that is what an
//! organisation hook is — and for deliveries that name none (an organisation hook's `ping`).
//! When no secret applies at all, one check against a throw-away key still runs, so the time of
//! the 401 does not tell an unknown repository from a wrong signature.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::header;
use crate::config::{Config, Provider, RepoConfig};

/// The signature header of a delivery (empty counts as missing).
pub(super) fn signature_header(provider: Provider, headers: &[(String, String)]) -> Option<&str> {
    match provider {
        Provider::Github => header(headers, "X-Hub-Signature-256"),
        Provider::Gitlab => header(headers, "X-Gitlab-Token"),
        Provider::Gitea => header(headers, "X-Gitea-Signature").or_else(|| header(headers, "X-Forgejo-Signature")),
    }
    .filter(|s| !s.is_empty())
}

/// The configured repositories (among `candidates`, those the payload names) that `signature`
/// proves the delivery is for; `None` when it matches no secret that could apply. `Some` of an
/// empty list: the account secret matched, and the payload names no mirrored repository.
pub(super) fn authenticate<'c>(
    config: &Config,
    provider: Provider,
    signature: &str,
    signed: &[u8],
    candidates: &[&'c RepoConfig],
) -> Option<Vec<&'c RepoConfig>> {
    let account = config
        .account_webhook(provider)
        .map(|w| verify(provider, w.secret.expose(), signature, signed));
    let own: Vec<(&str, bool)> = candidates
        .iter()
        .filter_map(|r| own_secret(r, provider).map(|s| (r.name.as_str(), verify(provider, s, signature, signed))))
        .collect();
    if account.is_none() && own.is_empty() {
        std::hint::black_box(verify(provider, "no secret applies", signature, signed));
        return None;
    }
    let by_account = account == Some(true);
    let verified = |name: &str| own.iter().any(|(n, ok)| *ok && *n == name);
    if !by_account && !own.iter().any(|(_, ok)| *ok) {
        return None;
    }
    Some(
        candidates
            .iter()
            .copied()
            .filter(|r| by_account || verified(&r.name))
            .collect(),
    )
}

/// A repository's own webhook secret, if its hook is one of `provider`'s.
fn own_secret(repo: &RepoConfig, provider: Provider) -> Option<&str> {
    repo.webhook
        .as_ref()
        .filter(|w| w.provider == provider)
        .map(|w| w.secret.expose())
}

/// Check a delivery's signature header against a secret; `signed` is what the provider signs
/// (see the module docs).
pub fn verify(provider: Provider, secret: &str, header: &str, signed: &[u8]) -> bool {
    match provider {
        Provider::Github => match header.strip_prefix("sha256=") {
            Some(hex_sig) => hmac_matches(secret, hex_sig, signed),
            None => false,
        },
        Provider::Gitea => hmac_matches(secret, header, signed),
        Provider::Gitlab => bool::from(header.as_bytes().ct_eq(secret.as_bytes())),
    }
}

fn hmac_matches(secret: &str, hex_sig: &str, body: &[u8]) -> bool {
    let Ok(expected) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

/// The signature header value for `signed` (tests and the demo's own deliveries).
pub fn sign(provider: Provider, secret: &str, signed: &[u8]) -> String {
    match provider {
        Provider::Gitlab => secret.to_owned(),
        _ => {
            let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
            mac.update(signed);
            let hex_sig = hex::encode(mac.finalize().into_bytes());
            if provider == Provider::Github {
                format!("sha256={hex_sig}")
            } else {
                hex_sig
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_test_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(Provider::Github, secret, sig, body));
        assert_eq!(sign(Provider::Github, secret, body), sig);
        assert!(!verify(Provider::Github, "wrong", sig, body));
        assert!(!verify(Provider::Github, secret, sig, b"Hello, World?"));
        assert!(!verify(Provider::Github, secret, &sig[7..], body), "prefix required");
        assert!(!verify(Provider::Github, secret, "sha256=zz", body));
    }

    #[test]
    fn gitea_and_gitlab() {
        let sig = sign(Provider::Gitea, "k", b"{}");
        assert!(verify(Provider::Gitea, "k", &sig, b"{}"));
        assert!(!verify(Provider::Gitea, "k", &sig, b"{ }"));
        assert!(verify(Provider::Gitlab, "tok", "tok", b"anything"));
        assert!(!verify(Provider::Gitlab, "tok", "tok2", b"anything"));
        assert!(!verify(Provider::Gitlab, "tok", "", b"anything"));
    }
}
