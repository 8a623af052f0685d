//! The decision flow of [`super::accept`] on small synthetic deliveries; the providers' published
//! payloads go through both front ends in `tests/tests/lambda.rs` and `tests/tests/serve.rs`.

use std::path::Path;

use super::*;
use crate::queue::memory::MemoryQueue;

const CONFIG: &str = "[webhooks.github]\nsecret_env = \"ORG\"\n\
    [repos.app]\nurl = \"https://github.com/Acme/App.git\"\n\
    webhook = { provider = \"github\", secret_env = \"APP\" }\n[[repos.app.targets]]\nurl = \"/t/app\"\n\
    [repos.nohook]\nurl = \"https://github.com/acme/nohook.git\"\n[[repos.nohook.targets]]\nurl = \"/t/nohook\"\n\
    [repos.polled]\nurl = \"https://github.com/acme/polled.git\"\nsync_policy = \"poll_only\"\n\
    [[repos.polled.targets]]\nurl = \"/t/polled\"\n\
    [repos.lab]\nurl = \"https://gitlab.example.com/g/lab.git\"\n\
    webhook = { provider = \"gitlab\", secret_env = \"LAB\" }\n[[repos.lab.targets]]\nurl = \"/t/lab\"\n";

fn config(text: &str) -> Config {
    let env = |name: &str| match name {
        "ORG" => Some("org-secret".to_owned()),
        "APP" => Some("app-secret".to_owned()),
        "LAB" => Some("lab-token".to_owned()),
        _ => None,
    };
    Config::parse(text, Path::new("t.toml"), &env).unwrap()
}

fn push(clone_url: &str) -> String {
    json!({ "ref": "refs/heads/main", "after": "a".repeat(40), "repository": { "clone_url": clone_url } }).to_string()
}

fn github_headers(event: &str, delivery: &str, signature: &str) -> Vec<(String, String)> {
    [
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", signature),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn github(config: &Config, queue: &MemoryQueue, event: &str, body: &str, secret: &str) -> Reply {
    let headers = github_headers(event, "d-1", &sign(Provider::Github, secret, body.as_bytes()));
    let d = Delivery {
        provider: "github",
        headers: &headers,
        body: body.as_bytes(),
    };
    accept(config, queue, &d, DEFAULT_MAX_BODY).await
}

#[tokio::test]
async fn owner_and_name_match_in_any_case() {
    let (c, q) = (config(CONFIG), MemoryQueue::new(5));
    let r = github(&c, &q, "push", &push("https://github.com/acme/app.git"), "app-secret").await;
    assert_eq!((r.status, &r.body["queued"]), (202, &json!(["app"])), "{r:?}");
    let r = github(&c, &q, "push", &push("https://github.com/ACME/APP"), "app-secret").await;
    assert_eq!(r.status, 202, "{r:?}");
}

#[tokio::test]
async fn unknown_repository_and_wrong_signature_look_the_same() {
    let (c, q) = (config(CONFIG), MemoryQueue::new(5));
    let unknown = github(
        &c,
        &q,
        "push",
        &push("https://github.com/acme/secret-project.git"),
        "guess",
    )
    .await;
    let wrong = github(&c, &q, "push", &push("https://github.com/acme/app.git"), "guess").await;
    assert_eq!(unknown, wrong);
    assert_eq!(unknown, Reply::error(401, "invalid signature"));
    // Also with no account secret configured: nothing to check against is still a 401.
    let without_org = config(&CONFIG.replace("[webhooks.github]\nsecret_env = \"ORG\"\n", ""));
    let r = github(
        &without_org,
        &q,
        "push",
        &push("https://github.com/acme/secret-project.git"),
        "x",
    )
    .await;
    assert_eq!(r, wrong);
    // A per-repository secret only speaks for its own repository.
    let r = github(
        &c,
        &q,
        "push",
        &push("https://github.com/acme/nohook.git"),
        "app-secret",
    )
    .await;
    assert_eq!(r, wrong);
    assert!(q.is_empty().await);
}

#[tokio::test]
async fn the_account_secret_speaks_for_the_whole_organisation() {
    let (c, q) = (config(CONFIG), MemoryQueue::new(5));
    let ping = json!({ "zen": "Keep it logically awesome.", "hook": { "type": "Organization" } }).to_string();
    assert_eq!(github(&c, &q, "ping", &ping, "org-secret").await.status, 200);
    assert_eq!(github(&c, &q, "ping", &ping, "app-secret").await.status, 401);
    let r = github(
        &c,
        &q,
        "push",
        &push("https://github.com/acme/unmirrored.git"),
        "org-secret",
    )
    .await;
    assert_eq!(r, Reply::ignored("repository not mirrored"));
    let r = github(
        &c,
        &q,
        "issues",
        &push("https://github.com/acme/unmirrored.git"),
        "org-secret",
    )
    .await;
    assert_eq!(r, Reply::ignored("event \"issues\" does not change refs"));
    let r = github(
        &c,
        &q,
        "push",
        &push("https://github.com/acme/polled.git"),
        "org-secret",
    )
    .await;
    assert_eq!(r, Reply::ignored("repository is poll_only"));
    assert!(q.is_empty().await);
    // Repositories without a hook of their own, and those with one, alike.
    for repo in ["nohook", "app"] {
        let r = github(
            &c,
            &q,
            "push",
            &push(&format!("https://github.com/acme/{repo}.git")),
            "org-secret",
        )
        .await;
        assert_eq!(r.body["queued"], json!([repo]), "{r:?}");
    }
    // The GitHub account secret is not GitLab's.
    let headers = vec![
        ("X-Gitlab-Event".to_owned(), "Push Hook".to_owned()),
        ("X-Gitlab-Token".to_owned(), "org-secret".to_owned()),
    ];
    let body = json!({ "project": { "git_http_url": "https://gitlab.example.com/g/lab.git" } }).to_string();
    let d = Delivery {
        provider: "gitlab",
        headers: &headers,
        body: body.as_bytes(),
    };
    assert_eq!(accept(&c, &q, &d, DEFAULT_MAX_BODY).await.status, 401);
}

#[tokio::test]
async fn form_bodies_verify_by_each_providers_rule() {
    let c = config(
        "[repos.tea]\nurl = \"https://tea.example.com/o/tea.git\"\n\
         webhook = { provider = \"forgejo\", secret_env = \"APP\" }\n[[repos.tea.targets]]\nurl = \"/t\"\n\
         [repos.app]\nurl = \"https://github.com/acme/app.git\"\n\
         webhook = { provider = \"github\", secret_env = \"APP\" }\n[[repos.app.targets]]\nurl = \"/t2\"\n",
    );
    let q = MemoryQueue::new(5);
    let form = |json: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish()
    };
    let tea_json = push("https://tea.example.com/o/tea.git");
    let tea_form = form(&tea_json);
    let gitea = |signature: String| {
        vec![
            (
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("X-Forgejo-Event".to_owned(), "push".to_owned()),
            ("X-Forgejo-Signature".to_owned(), signature),
        ]
    };
    for (signed, want) in [(&tea_json, 202), (&tea_form, 401)] {
        let headers = gitea(sign(Provider::Gitea, "app-secret", signed.as_bytes()));
        let d = Delivery {
            provider: "forgejo",
            headers: &headers,
            body: tea_form.as_bytes(),
        };
        assert_eq!(
            accept(&c, &q, &d, DEFAULT_MAX_BODY).await.status,
            want,
            "Gitea signs the JSON"
        );
    }
    let app_form = form(&push("https://github.com/acme/app.git"));
    let r = github(&c, &q, "push", &app_form, "app-secret").await;
    assert_eq!(r.status, 202, "GitHub signs the form body: {r:?}");
}

#[tokio::test]
async fn limits_and_malformed_bodies() {
    let (c, q) = (config(CONFIG), MemoryQueue::new(5));
    let body = push("https://github.com/acme/app.git");
    let headers = github_headers("push", "d", &sign(Provider::Github, "app-secret", body.as_bytes()));
    let d = Delivery {
        provider: "github",
        headers: &headers,
        body: body.as_bytes(),
    };
    assert_eq!(accept(&c, &q, &d, body.len() - 1).await.status, 413);
    assert_eq!(accept(&c, &q, &d, body.len()).await.status, 202);
    let d = Delivery {
        provider: "github",
        headers: &headers,
        body: b"{not json",
    };
    assert_eq!(accept(&c, &q, &d, DEFAULT_MAX_BODY).await.status, 400);
    let d = Delivery {
        provider: "bitbucket",
        headers: &headers,
        body: body.as_bytes(),
    };
    assert_eq!(accept(&c, &q, &d, DEFAULT_MAX_BODY).await.status, 404);
}

#[test]
fn the_body_limit_setting() {
    assert_eq!(max_body_setting(None), Ok(DEFAULT_MAX_BODY));
    assert_eq!(max_body_setting(Some(" ")), Ok(DEFAULT_MAX_BODY));
    assert_eq!(max_body_setting(Some("2097152")), Ok(2 << 20));
    assert!(max_body_setting(Some("10")).is_err());
    assert!(max_body_setting(Some("1MB")).unwrap_err().contains(MAX_BODY_ENV));
    const { assert!(DEFAULT_MAX_BODY >= 25_000_000, "GitHub and GitLab send up to 25 MB") };
}

#[test]
fn provider_labels_are_a_fixed_set() {
    assert_eq!(provider_label("forgejo"), "forgejo");
    assert_eq!(provider_label("../../etc/passwd"), "unknown");
}
