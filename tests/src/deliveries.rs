//! Webhook deliveries the way GitHub, GitLab, Gitea and Forgejo send them — their published
//! example payloads (`tests/fixtures/webhooks`, sources in its README), the headers each adds,
//! signed the way each signs — and the answers gitferry owes each ([`cases`]).
//!
//! The same table runs through both front ends: the webhook Lambda handler with API Gateway v2
//! events (`tests/tests/lambda.rs`) and the HTTP routes of `gitferry serve`
//! (`tests/tests/serve.rs`), so they are held to the same answers, the same queue contents
//! ([`expected_queue`]), the same counts by code and the same log lines ([`log_line`]).

use std::collections::BTreeSet;
use std::path::PathBuf;

use hmac::{KeyInit, Mac};
use serde_json::Value;

/// The configuration both front ends run: per-repository hooks on every provider, account-level
/// secrets for GitHub organisation and GitLab group/system hooks, and a GitHub repository
/// written in another case than GitHub spells it.
pub const CONFIG: &str = r#"
[webhooks.github]
secret_env = "GH_ORG_SECRET"

[webhooks.gitlab]
secret_env = "GL_ACCOUNT_TOKEN"

[repos.hello]
url = "https://github.com/codertocat/hello-world.git"
webhook = { provider = "github", secret_env = "GH_HELLO_SECRET" }
[[repos.hello.targets]]
url = "/nonexistent/gitferry-test/hello.git"

[repos.octo]
url = "https://github.com/Octocoders/Hello-World.git"
webhook = { provider = "github", secret_env = "GH_OCTO_SECRET" }
[[repos.octo.targets]]
url = "/nonexistent/gitferry-test/octo.git"

[repos.example]
url = "https://example.com/jsmith/example.git"
webhook = { provider = "gitlab", secret_env = "GL_EXAMPLE_TOKEN" }
[[repos.example.targets]]
url = "/nonexistent/gitferry-test/example.git"

[repos.tea]
url = "http://localhost:3000/gitea/webhooks.git"
webhook = { provider = "gitea", secret_env = "GITEA_SECRET" }
[[repos.tea.targets]]
url = "/nonexistent/gitferry-test/tea.git"

[repos.fj]
url = "http://localhost:3000/forgejo/webhooks.git"
webhook = { provider = "forgejo", secret_env = "FORGEJO_SECRET" }
[[repos.fj.targets]]
url = "/nonexistent/gitferry-test/fj.git"
"#;

const GH_HELLO: &str = "gh-hello-hook-secret-1";
const GH_OCTO: &str = "gh-octo-hook-secret-2";
const GH_ORG: &str = "gh-org-hook-secret-3";
const GL_EXAMPLE: &str = "gl-example-token-4";
const GL_ACCOUNT: &str = "gl-account-token-5";
const GITEA: &str = "gitea-hook-secret-6";
const FORGEJO: &str = "forgejo-hook-secret-7";
/// The deprecated `secret` field of the Gitea and Forgejo examples: registered as a secret, so a
/// body that reached a log line or a stored file fails the leak checks.
const BODY_CANARY: &str = "3gEsCfjlV2ugRwgpU#w1*WaW*wa4NXgGmpCfkbG3";

/// The secrets [`CONFIG`] names, by variable, registered with the leak checks.
pub fn env() -> Vec<(&'static str, &'static str)> {
    super::leaks::secret(BODY_CANARY);
    let vars = [
        ("GH_HELLO_SECRET", GH_HELLO),
        ("GH_OCTO_SECRET", GH_OCTO),
        ("GH_ORG_SECRET", GH_ORG),
        ("GL_EXAMPLE_TOKEN", GL_EXAMPLE),
        ("GL_ACCOUNT_TOKEN", GL_ACCOUNT),
        ("GITEA_SECRET", GITEA),
        ("FORGEJO_SECRET", FORGEJO),
    ];
    for (_, s) in vars {
        super::leaks::secret(s);
    }
    vars.to_vec()
}

/// What gitferry must answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Want {
    /// 202, these repositories queued (again, for a redelivery: the queue drops the duplicate).
    Queued(&'static [&'static str]),
    /// 202 ignored, the reason containing this.
    Ignored(&'static str),
    /// 200 (a ping).
    Pong,
    /// This status, with exactly this error message.
    Refused(u16, &'static str),
}

/// One delivery and what it must get.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    /// `/webhook/{provider}`.
    pub route: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The provider as deduplication ids name it, and the delivery id gitferry must use.
    pub provider: &'static str,
    pub delivery: &'static str,
    pub want: Want,
}

impl Case {
    /// Is the body form-encoded (API Gateway base64-encodes such bodies)?
    pub fn is_form(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("application/x-www-form-urlencoded"))
    }

    /// Panic unless `status` and `body` are what this case wants.
    pub fn check(&self, status: u16, body: &Value) {
        let name = self.name;
        match &self.want {
            Want::Queued(repos) => {
                assert_eq!(status, 202, "{name}: {body}");
                assert_eq!(body["queued"], serde_json::json!(repos), "{name}: {body}");
                assert_eq!(body["delivery"], self.delivery, "{name}: {body}");
            }
            Want::Ignored(reason) => {
                assert_eq!(status, 202, "{name}: {body}");
                let said = body["ignored"].as_str().unwrap_or_default();
                assert!(said.contains(reason), "{name}: {body}");
            }
            Want::Pong => assert_eq!((status, &body["pong"]), (200, &Value::Bool(true)), "{name}: {body}"),
            Want::Refused(code, message) => {
                assert_eq!(status, *code, "{name}: {body}");
                assert_eq!(body, &serde_json::json!({ "error": message }), "{name}");
            }
        }
    }
}

fn fixture(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/webhooks")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn hmac_hex<M: Mac + KeyInit>(secret: &str, data: &[u8]) -> String {
    let mut mac = <M as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn sha256(secret: &str, data: &[u8]) -> String {
    hmac_hex::<hmac::Hmac<sha2::Sha256>>(secret, data)
}

fn sha1(secret: &str, data: &[u8]) -> String {
    hmac_hex::<hmac::Hmac<sha1::Sha1>>(secret, data)
}

/// `payload=<json>`, encoded as a form (what GitHub and Gitea send for form hooks).
pub fn form(json: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", json)
        .finish()
}

/// How a GitHub hook is set up.
struct GitHubHook {
    /// `repository` or `organization` (`X-GitHub-Hook-Installation-Target-Type`).
    target: &'static str,
    secret: &'static str,
    form: bool,
}

/// A GitHub delivery: the headers GitHub documents; both signatures over the body as sent.
fn github(json: &str, event: &str, delivery: &str, hook: &GitHubHook) -> (Vec<(String, String)>, Vec<u8>) {
    let body = if hook.form { form(json) } else { json.to_owned() };
    let content_type = if hook.form {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    let sha1 = format!("sha1={}", sha1(hook.secret, body.as_bytes()));
    let sha256 = format!("sha256={}", sha256(hook.secret, body.as_bytes()));
    let headers = owned(&[
        ("Content-Type", content_type),
        ("User-Agent", "GitHub-Hookshot/044aadd"),
        ("X-GitHub-Delivery", delivery),
        ("X-GitHub-Event", event),
        ("X-GitHub-Hook-ID", "292430182"),
        ("X-GitHub-Hook-Installation-Target-ID", "79929171"),
        ("X-GitHub-Hook-Installation-Target-Type", hook.target),
        ("X-Hub-Signature", &sha1),
        ("X-Hub-Signature-256", &sha256),
    ]);
    (headers, body.into_bytes())
}

/// A GitLab delivery: `Idempotency-Key` is kept by a resend, the two request UUIDs are not.
fn gitlab(json: &str, event: &str, key: &str, request: u32, token: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let event_uuid = format!("9f1d2c3b-0000-4000-8000-{request:012}");
    let webhook_uuid = format!("5e6f7a8b-0000-4000-8000-{request:012}");
    let headers = owned(&[
        ("Content-Type", "application/json"),
        ("User-Agent", "GitLab/17.9.0"),
        ("Idempotency-Key", key),
        ("X-Gitlab-Event", event),
        ("X-Gitlab-Webhook-UUID", &webhook_uuid),
        ("X-Gitlab-Instance", "https://example.com"),
        ("X-Gitlab-Token", token),
        ("X-Gitlab-Event-UUID", &event_uuid),
    ]);
    (headers, json.as_bytes().to_vec())
}

/// How a Gitea or Forgejo hook is set up.
struct GiteaHook {
    forgejo: bool,
    secret: &'static str,
    form: bool,
    /// Sign the body as sent instead of the JSON (the wrong rule for form hooks).
    sign_body: bool,
}

/// A Gitea or Forgejo delivery: every signature over the JSON payload, whatever the content
/// type (Gitea's `deliver.go`); Forgejo adds its own `X-Forgejo-*` headers.
fn gitea(json: &str, delivery: &str, hook: &GiteaHook) -> (Vec<(String, String)>, Vec<u8>) {
    let body = if hook.form { form(json) } else { json.to_owned() };
    let signed = if hook.sign_body {
        body.as_bytes()
    } else {
        json.as_bytes()
    };
    let (sig1, sig256) = (sha1(hook.secret, signed), sha256(hook.secret, signed));
    let content_type = if hook.form {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    let mut headers = Vec::new();
    if hook.forgejo {
        headers.extend(owned(&[
            ("X-Forgejo-Delivery", delivery),
            ("X-Forgejo-Event", "push"),
            ("X-Forgejo-Event-Type", "push"),
            ("X-Forgejo-Signature", &sig256),
        ]));
    }
    headers.extend(owned(&[
        ("Content-Type", content_type),
        ("User-Agent", "Go-http-client/1.1"),
        ("X-Gitea-Delivery", delivery),
        ("X-Gitea-Event", "push"),
        ("X-Gitea-Event-Type", "push"),
        ("X-Gitea-Signature", &sig256),
        ("X-Gogs-Delivery", delivery),
        ("X-Gogs-Event", "push"),
        ("X-Gogs-Event-Type", "push"),
        ("X-Gogs-Signature", &sig256),
        ("X-Hub-Signature", &format!("sha1={sig1}")),
        ("X-Hub-Signature-256", &format!("sha256={sig256}")),
        ("X-GitHub-Delivery", delivery),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Event-Type", "push"),
    ]));
    (headers, body.into_bytes())
}

/// GitHub lists at most 2,048 commits in a push; such a push is over 1 MiB. Built from the
/// published branch push: its commit repeated with distinct ids, the rest unchanged.
pub fn large_github_push() -> String {
    let mut push: Value = serde_json::from_str(&fixture("github/push.with-new-branch.payload.json")).expect("JSON");
    let template = push["commits"][0].clone();
    let commits: Vec<Value> = (1..=2048u32)
        .map(|i| {
            let mut c = template.clone();
            c["id"] = format!("{i:040x}").into();
            c
        })
        .collect();
    push["commits"] = commits.into();
    let text = push.to_string();
    assert!(text.len() > 1 << 20, "{} bytes", text.len());
    text
}

/// Every case, in the order they must be sent (a redelivery follows its delivery).
pub fn cases() -> Vec<Case> {
    let mut all = github_cases();
    all.extend(gitlab_cases());
    all.extend(gitea_cases());
    all
}

fn case(
    name: &'static str,
    route: &'static str,
    (headers, body): (Vec<(String, String)>, Vec<u8>),
    (provider, delivery): (&'static str, &'static str),
    want: Want,
) -> Case {
    Case {
        name,
        route,
        headers,
        body,
        provider,
        delivery,
        want,
    }
}

const INVALID: Want = Want::Refused(401, "invalid signature");

fn github_cases() -> Vec<Case> {
    let push = fixture("github/push.with-new-branch.payload.json");
    let org_push = fixture("github/push.with-organization.payload.json");
    let org_ping = fixture("github/ping.with-organization.payload.json");
    let repo_ping = fixture("github/ping.payload.json");
    let other_repo = fixture("github/issues.transferred.payload.json");
    let hook = |target, secret, form| GitHubHook { target, secret, form };
    let (repo, org) = ("repository", "organization");
    let r = "/webhook/github";
    let id = |d: &'static str| ("github", d);
    let mut unsigned = github(&push, "push", "gh-unsigned", &hook(repo, GH_HELLO, false));
    unsigned.0.retain(|(k, _)| !k.starts_with("X-Hub-Signature"));
    let too_big = format!("{{\"pad\":\"{}\"}}", "x".repeat(26 << 20));
    vec![
        case(
            "GitHub repository hook: push (the config spells owner and name in lower case)",
            r,
            github(
                &push,
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000001",
                &hook(repo, GH_HELLO, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000001"),
            Want::Queued(&["hello"]),
        ),
        case(
            "GitHub redelivery of that push",
            r,
            github(
                &push,
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000001",
                &hook(repo, GH_HELLO, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000001"),
            Want::Queued(&["hello"]),
        ),
        case(
            "GitHub form-encoded push (what the REST API creates hooks with)",
            r,
            github(
                &push,
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000002",
                &hook(repo, GH_HELLO, true),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000002"),
            Want::Queued(&["hello"]),
        ),
        case(
            "GitHub push listing 2,048 commits (over 1 MiB)",
            r,
            github(
                &large_github_push(),
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000003",
                &hook(repo, GH_HELLO, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000003"),
            Want::Queued(&["hello"]),
        ),
        case(
            "GitHub organisation hook: ping (names no repository)",
            r,
            github(
                &org_ping,
                "ping",
                "0b1a7c00-aa01-11ef-8a01-000000000004",
                &hook(org, GH_ORG, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000004"),
            Want::Pong,
        ),
        case(
            "GitHub organisation hook: push to a mirrored repository",
            r,
            github(
                &org_push,
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000005",
                &hook(org, GH_ORG, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000005"),
            Want::Queued(&["hello"]),
        ),
        case(
            "GitHub organisation hook: an event of a repository that is not mirrored",
            r,
            github(
                &other_repo,
                "issues",
                "0b1a7c00-aa01-11ef-8a01-000000000006",
                &hook(org, GH_ORG, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000006"),
            Want::Ignored("does not change refs"),
        ),
        case(
            "GitHub repository hook: ping",
            r,
            github(
                &repo_ping,
                "ping",
                "0b1a7c00-aa01-11ef-8a01-000000000007",
                &hook(repo, GH_OCTO, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000007"),
            Want::Pong,
        ),
        case(
            "GitHub push signed with a wrong secret",
            r,
            github(
                &push,
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000008",
                &hook(repo, "not-the-secret-0", false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000008"),
            INVALID,
        ),
        case(
            "GitHub: a repository that is not mirrored, signed with another repository's secret",
            r,
            github(
                &other_repo,
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000009",
                &hook(repo, GH_HELLO, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000009"),
            INVALID,
        ),
        case(
            "GitHub organisation ping with a wrong secret",
            r,
            github(
                &org_ping,
                "ping",
                "0b1a7c00-aa01-11ef-8a01-000000000010",
                &hook(org, GH_HELLO, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000010"),
            INVALID,
        ),
        case(
            "GitHub push without a signature",
            r,
            unsigned,
            id("gh-unsigned"),
            Want::Refused(401, "missing signature"),
        ),
        case(
            "GitHub form body whose payload is not JSON",
            r,
            github(
                "{not json",
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000011",
                &hook(repo, GH_HELLO, true),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000011"),
            Want::Refused(400, "malformed JSON payload"),
        ),
        case(
            "GitHub body over 25 MiB",
            r,
            github(
                &too_big,
                "push",
                "0b1a7c00-aa01-11ef-8a01-000000000012",
                &hook(repo, GH_HELLO, false),
            ),
            id("0b1a7c00-aa01-11ef-8a01-000000000012"),
            Want::Refused(413, "body larger than 26214400 bytes"),
        ),
    ]
}

/// `Idempotency-Key`s: what GitLab keeps when a delivery is sent again.
const GITLAB_KEYS: [&str; 7] = [
    "c1d2e3f4-0001-4000-9000-000000000001",
    "c1d2e3f4-0001-4000-9000-000000000002",
    "c1d2e3f4-0001-4000-9000-000000000003",
    "c1d2e3f4-0001-4000-9000-000000000004",
    "c1d2e3f4-0001-4000-9000-000000000005",
    "c1d2e3f4-0001-4000-9000-000000000006",
    "c1d2e3f4-0001-4000-9000-000000000007",
];

fn gitlab_cases() -> Vec<Case> {
    let tag_push = fixture("gitlab/tag_push.json");
    let push = fixture("gitlab/push.json");
    let r = "/webhook/gitlab";
    let id = |d: &'static str| ("gitlab", d);
    let key = |n: usize| GITLAB_KEYS[n - 1];
    vec![
        case(
            "GitLab project hook: tag push",
            r,
            gitlab(&tag_push, "Tag Push Hook", key(1), 1, GL_EXAMPLE),
            id(key(1)),
            Want::Queued(&["example"]),
        ),
        case(
            "GitLab \"Resend request\": same Idempotency-Key, new request UUIDs",
            r,
            gitlab(&tag_push, "Tag Push Hook", key(1), 2, GL_EXAMPLE),
            id(key(1)),
            Want::Queued(&["example"]),
        ),
        case(
            "GitLab group hook: push to a project that is not mirrored",
            r,
            gitlab(&push, "Push Hook", key(2), 3, GL_ACCOUNT),
            id(key(2)),
            Want::Ignored("repository not mirrored"),
        ),
        case(
            "GitLab system hook: repository_update",
            r,
            gitlab(
                &fixture("gitlab/system_repository_update.json"),
                "System Hook",
                key(3),
                4,
                GL_ACCOUNT,
            ),
            id(key(3)),
            Want::Queued(&["example"]),
        ),
        case(
            "GitLab system hook: tag_push",
            r,
            gitlab(
                &fixture("gitlab/system_tag_push.json"),
                "System Hook",
                key(4),
                5,
                GL_ACCOUNT,
            ),
            id(key(4)),
            Want::Queued(&["example"]),
        ),
        case(
            "GitLab system hook: push to a project that is not mirrored",
            r,
            gitlab(
                &fixture("gitlab/system_push.json"),
                "System Hook",
                key(5),
                6,
                GL_ACCOUNT,
            ),
            id(key(5)),
            Want::Ignored("repository not mirrored"),
        ),
        case(
            "GitLab: a project that is not mirrored, with a made-up token",
            r,
            gitlab(&push, "Push Hook", key(6), 7, "made-up-token-000"),
            id(key(6)),
            INVALID,
        ),
        case(
            "GitLab: a mirrored project with a wrong token",
            r,
            gitlab(&tag_push, "Tag Push Hook", key(7), 8, "wrong-token-0000"),
            id(key(7)),
            INVALID,
        ),
    ]
}

fn gitea_cases() -> Vec<Case> {
    let tea = fixture("gitea/push.json");
    let fj = fixture("forgejo/push.json");
    let hook = |forgejo, secret, form, sign_body| GiteaHook {
        forgejo,
        secret,
        form,
        sign_body,
    };
    let id = |d: &'static str| ("gitea", d);
    vec![
        case(
            "Gitea push",
            "/webhook/gitea",
            gitea(
                &tea,
                "7d6c5b4a-0002-4000-a000-000000000001",
                &hook(false, GITEA, false, false),
            ),
            id("7d6c5b4a-0002-4000-a000-000000000001"),
            Want::Queued(&["tea"]),
        ),
        case(
            "Gitea form-encoded push (signature over the JSON inside)",
            "/webhook/gitea",
            gitea(
                &tea,
                "7d6c5b4a-0002-4000-a000-000000000002",
                &hook(false, GITEA, true, false),
            ),
            id("7d6c5b4a-0002-4000-a000-000000000002"),
            Want::Queued(&["tea"]),
        ),
        case(
            "Gitea form-encoded push signed over the form body (not Gitea's rule)",
            "/webhook/gitea",
            gitea(
                &tea,
                "7d6c5b4a-0002-4000-a000-000000000003",
                &hook(false, GITEA, true, true),
            ),
            id("7d6c5b4a-0002-4000-a000-000000000003"),
            INVALID,
        ),
        case(
            "Forgejo push",
            "/webhook/forgejo",
            gitea(
                &fj,
                "7d6c5b4a-0003-4000-a000-000000000001",
                &hook(true, FORGEJO, false, false),
            ),
            id("7d6c5b4a-0003-4000-a000-000000000001"),
            Want::Queued(&["fj"]),
        ),
        case(
            "Forgejo form-encoded push",
            "/webhook/forgejo",
            gitea(
                &fj,
                "7d6c5b4a-0003-4000-a000-000000000002",
                &hook(true, FORGEJO, true, false),
            ),
            id("7d6c5b4a-0003-4000-a000-000000000002"),
            Want::Queued(&["fj"]),
        ),
    ]
}

/// The deduplication ids the queue must hold after [`cases`]: one per queued repository and
/// delivery — a redelivery adds nothing.
pub fn expected_queue(cases: &[Case]) -> BTreeSet<String> {
    cases
        .iter()
        .filter_map(|c| match c.want {
            Want::Queued(repos) => Some(
                repos
                    .iter()
                    .map(move |r| format!("wh:{}:{}:{r}", c.provider, c.delivery)),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

/// How many answers of each status [`cases`] must produce, as `(status, count)`.
pub fn expected_codes(cases: &[Case]) -> Vec<(u16, usize)> {
    let status = |c: &Case| match c.want {
        Want::Queued(_) | Want::Ignored(_) => 202,
        Want::Pong => 200,
        Want::Refused(code, _) => code,
    };
    let codes: BTreeSet<u16> = cases.iter().map(status).collect();
    codes
        .into_iter()
        .map(|code| (code, cases.iter().filter(|c| status(c) == code).count()))
        .collect()
}

/// Is `line` the log line of a rejected delivery `case` (status, delivery id and reason present)?
pub fn log_line(case: &Case, line: &str) -> bool {
    let Want::Refused(status, reason) = case.want else {
        return false;
    };
    line.contains("webhook delivery rejected")
        && line.contains(&format!("delivery=\"{}\"", case.delivery))
        && line.contains(&format!("status={status}"))
        && line.contains(&format!("reason=\"{reason}\""))
}
