//! The three Lambda handlers with genuine event fixtures (tests/fixtures), a real moto S3 and
//! SQS FIFO, and the real git servers: webhook codes and what reaches the queue, poll ticks,
//! the sync handler's partial batch failures, and the whole path webhook → SQS → sync.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::SqsEvent;
use gitferry_aws::S3Store;
use gitferry_aws::SqsQueue;
use gitferry_core::config::Provider;
use gitferry_core::metrics::{Metrics, Recorder};
use gitferry_core::queue::Queue;
use gitferry_core::store::ObjectStore;
use gitferry_core::webhook::sign;
use gitferry_lambda::{Env, Runtime};
use harness::deliveries;
use harness::moto::MotoServer;
use harness::receiver::Receiver;
use harness::{Proto, Servers, Worktree, assert_fsck_clean, assert_refs_equal};

const SECRET: &str = "lambda-test-secret";
const TOKEN: &str = "status-token-123";

fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Aws {
    moto: MotoServer,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    store: Arc<dyn ObjectStore>,
    bucket: String,
}

impl Aws {
    async fn start() -> Aws {
        let moto = MotoServer::start();
        let (s3, bucket) = moto.client_with_bucket().await;
        let sqs = moto.sqs_client();
        let queue_url = moto.create_fifo_queue(&sqs).await;
        let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(s3, bucket.clone(), "").unwrap());
        Aws {
            moto,
            sqs,
            queue_url,
            store,
            bucket,
        }
    }

    fn queue(&self) -> Arc<SqsQueue> {
        Arc::new(SqsQueue::new(self.sqs.clone(), self.queue_url.clone()))
    }

    /// A runtime whose config is `toml` (uploaded to the bucket like a deployment would).
    async fn runtime(&self, toml: &str, recorder: Arc<Recorder>) -> Runtime {
        for s in [SECRET, TOKEN, "gitlab-token", "gitea-secret"] {
            harness::leaks::secret(s);
        }
        let secrets = [
            ("APP_SECRET", SECRET),
            ("GL_TOKEN", "gitlab-token"),
            ("GT_SECRET", "gitea-secret"),
        ];
        self.runtime_with(toml, &secrets, recorder).await
    }

    /// A runtime whose config is `toml` and whose Secrets Manager secret holds `secrets`.
    async fn runtime_with(&self, toml: &str, secrets: &[(&str, &str)], recorder: Arc<Recorder>) -> Runtime {
        self.store
            .put(
                "config/mirrors.toml",
                toml.as_bytes().to_vec(),
                gitferry_core::store::Condition::Always,
            )
            .await
            .unwrap();
        harness::leaks::secret(TOKEN);
        let env = Env::from_lookup(&|k| match k {
            "GITFERRY_BUCKET" => Some(self.bucket.clone()),
            "GITFERRY_QUEUE_URL" => Some(self.queue_url.clone()),
            "GITFERRY_STATUS_TOKEN" => Some(TOKEN.into()),
            _ => None,
        })
        .unwrap();
        let secrets: HashMap<String, String> = secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Runtime::with_parts(env, self.store.clone(), self.queue(), secrets, Metrics::new(recorder))
    }

    /// Every message now in the queue, received and deleted (FIFO groups block behind
    /// messages in flight, so each batch is acknowledged before the next receive).
    async fn drain(&self) -> Vec<gitferry_core::queue::Message> {
        let q = self.queue();
        let mut all = Vec::new();
        loop {
            let got = q.receive(10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
            if got.is_empty() {
                return all;
            }
            for m in &got {
                q.ack(&m.receipt).await.unwrap();
            }
            all.extend(got);
        }
    }
}

fn apigw(path: &str, method: &str, headers: &[(&str, &str)], body: &str, base64: bool) -> ApiGatewayV2httpRequest {
    let mut v = fixture("apigw-v2-webhook.json");
    v["rawPath"] = path.into();
    v["requestContext"]["http"]["path"] = path.into();
    v["requestContext"]["http"]["method"] = method.into();
    let hs = v["headers"].as_object_mut().unwrap();
    hs.retain(|k, _| !k.starts_with("x-github") && !k.starts_with("x-hub"));
    for (k, val) in headers {
        hs.insert((*k).to_owned(), (*val).into());
    }
    if base64 {
        use base64::Engine;
        v["body"] = base64::engine::general_purpose::STANDARD.encode(body).into();
        v["isBase64Encoded"] = true.into();
    } else {
        v["body"] = body.into();
    }
    serde_json::from_value(v).unwrap()
}

/// A provider's delivery as API Gateway (HTTP API, payload v2) hands it to the function: header
/// names in lower case, the body base64-encoded when it is not JSON (form bodies) — and, to
/// exercise that path with JSON too, when `base64` says so.
fn apigw_delivery(case: &deliveries::Case, base64: bool) -> ApiGatewayV2httpRequest {
    let mut v = fixture("apigw-v2-webhook.json");
    v["rawPath"] = case.route.into();
    v["requestContext"]["http"]["path"] = case.route.into();
    v["pathParameters"]["provider"] = case.route.trim_start_matches("/webhook/").into();
    let hs = v["headers"].as_object_mut().unwrap();
    // The fixture's provider headers and body headers make way for the delivery's own.
    let replaced = [
        "x-git",
        "x-hub",
        "x-gogs",
        "x-forgejo",
        "content-type",
        "content-length",
        "user-agent",
    ];
    hs.retain(|k, _| !replaced.iter().any(|p| k.starts_with(p)));
    for (k, val) in &case.headers {
        hs.insert(k.to_ascii_lowercase(), val.as_str().into());
    }
    hs.insert("content-length".into(), case.body.len().to_string().into());
    if let Some(agent) = case.headers.iter().find(|(k, _)| k == "User-Agent") {
        v["requestContext"]["http"]["userAgent"] = agent.1.as_str().into();
    }
    if base64 || case.is_form() {
        use base64::Engine;
        v["body"] = base64::engine::general_purpose::STANDARD.encode(&case.body).into();
        v["isBase64Encoded"] = true.into();
    } else {
        v["body"] = String::from_utf8(case.body.clone()).unwrap().into();
        v["isBase64Encoded"] = false.into();
    }
    serde_json::from_value(v).unwrap()
}

fn github(delivery: &str, event: &str, body: &str, secret: &str) -> ApiGatewayV2httpRequest {
    let sig = sign(Provider::Github, secret, body.as_bytes());
    apigw(
        "/webhook/github",
        "POST",
        &[
            ("x-github-event", event),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &sig),
        ],
        body,
        false,
    )
}

fn push_payload(clone_url: &str) -> String {
    serde_json::json!({ "ref": "refs/heads/main", "after": "0".repeat(40), "repository": { "clone_url": clone_url } })
        .to_string()
}

fn code(r: &aws_lambda_events::apigw::ApiGatewayV2httpResponse) -> i64 {
    r.status_code
}

fn body_json(r: &aws_lambda_events::apigw::ApiGatewayV2httpResponse) -> serde_json::Value {
    match &r.body {
        Some(aws_lambda_events::encodings::Body::Text(t)) => serde_json::from_str(t).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

const SRC: &str = "https://github.com/org/app.git";

fn config(extra_repo: &str) -> String {
    format!(
        "[repos.app]\nurl = \"{SRC}\"\nwebhook = {{ provider = \"github\", secret_env = \"APP_SECRET\" }}\n\
         [[repos.app.targets]]\nurl = \"/tmp/nowhere/app.git\"\n\
         [repos.app-copy]\nurl = \"{SRC}\"\nwebhook = {{ provider = \"github\", secret_env = \"APP_SECRET\" }}\n\
         [[repos.app-copy.targets]]\nurl = \"/tmp/nowhere/copy.git\"\n\
         [repos.polled]\nurl = \"https://github.com/org/polled.git\"\nsync_policy = \"poll_only\"\n\
         webhook = {{ provider = \"github\", secret_env = \"APP_SECRET\" }}\n\
         [[repos.polled.targets]]\nurl = \"/tmp/nowhere/polled.git\"\n\
         [repos.lab]\nurl = \"https://gitlab.com/org/lab.git\"\nwebhook = {{ provider = \"gitlab\", secret_env = \"GL_TOKEN\" }}\n\
         [[repos.lab.targets]]\nurl = \"/tmp/nowhere/lab.git\"\n\
         [repos.tea]\nurl = \"https://gitea.example.com/org/tea.git\"\nwebhook = {{ provider = \"gitea\", secret_env = \"GT_SECRET\" }}\n\
         [[repos.tea.targets]]\nurl = \"/tmp/nowhere/tea.git\"\n{extra_repo}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_status_codes_and_what_reaches_the_queue() {
    let aws = Aws::start().await;
    let recorder = Arc::new(Recorder::default());
    let rt = aws.runtime(&config(""), recorder.clone()).await;
    let body = push_payload(SRC);

    // Rejected deliveries: nothing may reach the queue.
    let wrong_secret = gitferry_lambda::webhook(&rt, github("d-bad", "push", &body, "not-the-secret")).await;
    assert_eq!(code(&wrong_secret), 401);
    let missing = apigw(
        "/webhook/github",
        "POST",
        &[("x-github-event", "push"), ("x-github-delivery", "d-m")],
        &body,
        false,
    );
    assert_eq!(code(&gitferry_lambda::webhook(&rt, missing).await), 401);
    let one_byte = {
        let mut e = github("d-flip", "push", &body, SECRET);
        e.body = Some(body.replacen("main", "maim", 1));
        e
    };
    assert_eq!(
        code(&gitferry_lambda::webhook(&rt, one_byte).await),
        401,
        "a body changed by one byte"
    );
    assert_eq!(
        code(&gitferry_lambda::webhook(&rt, github("d-json", "push", "{not json", SECRET)).await),
        400
    );
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(25 << 20));
    assert_eq!(
        code(&gitferry_lambda::webhook(&rt, github("d-big", "push", &big, SECRET)).await),
        413
    );
    // An unknown repository looks like a wrong signature: the caller proved nothing.
    let other = push_payload("https://github.com/org/unknown.git");
    assert_eq!(
        code(&gitferry_lambda::webhook(&rt, github("d-unk", "push", &other, SECRET)).await),
        401
    );
    let polled = push_payload("https://github.com/org/polled.git");
    let r = gitferry_lambda::webhook(&rt, github("d-poll", "push", &polled, SECRET)).await;
    assert_eq!(
        (code(&r), body_json(&r)["ignored"].is_string()),
        (202, true),
        "poll_only repos ignore webhooks"
    );
    let r = gitferry_lambda::webhook(&rt, github("d-issue", "issues", &body, SECRET)).await;
    assert_eq!(code(&r), 202);
    assert!(body_json(&r)["ignored"].as_str().unwrap().contains("issues"));
    assert_eq!(
        code(&gitferry_lambda::webhook(&rt, github("d-ping", "ping", &body, SECRET)).await),
        200
    );
    assert!(
        aws.drain().await.is_empty(),
        "nothing enqueued by rejected or ignored deliveries"
    );

    // Accepted: one source configured for two mirrors enqueues both; a redelivery is deduplicated.
    let ok = gitferry_lambda::webhook(&rt, github("d-1", "push", &body, SECRET)).await;
    assert_eq!(code(&ok), 202);
    assert_eq!(body_json(&ok)["queued"], serde_json::json!(["app", "app-copy"]));
    assert_eq!(body_json(&ok)["delivery"], "d-1");
    let again = gitferry_lambda::webhook(&rt, github("d-1", "push", &body, SECRET)).await;
    assert_eq!(code(&again), 202);
    // Base64 bodies (API Gateway does that for some content types) verify the same.
    let sig = sign(Provider::Github, SECRET, body.as_bytes());
    let b64 = apigw(
        "/webhook/github",
        "POST",
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", "d-2"),
            ("x-hub-signature-256", &sig),
        ],
        &body,
        true,
    );
    assert_eq!(code(&gitferry_lambda::webhook(&rt, b64).await), 202);
    let messages = aws.drain().await;
    let mut groups: Vec<_> = messages.iter().map(|m| m.group.clone()).collect();
    groups.sort();
    assert_eq!(
        groups,
        vec!["app", "app", "app-copy", "app-copy"],
        "d-1 once per repo (redelivery dropped), d-2 once per repo"
    );
    assert_eq!(recorder.total("WebhookResponses", &[("Code", "401")]), 4.0);
    assert_eq!(recorder.total("WebhookResponses", &[("Code", "413")]), 1.0);

    // GitLab and Gitea/Forgejo signatures.
    let lab = serde_json::json!({ "project": { "git_http_url": "https://gitlab.com/org/lab.git" }, "ref": "refs/heads/main" }).to_string();
    let gl = |token: &str| {
        apigw(
            "/webhook/gitlab",
            "POST",
            &[
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-token", token),
                ("x-gitlab-event-uuid", "gl-1"),
            ],
            &lab,
            false,
        )
    };
    assert_eq!(code(&gitferry_lambda::webhook(&rt, gl("wrong")).await), 401);
    assert_eq!(code(&gitferry_lambda::webhook(&rt, gl("gitlab-token")).await), 202);
    let tea = serde_json::json!({ "repository": { "clone_url": "https://gitea.example.com/org/tea.git" } }).to_string();
    let tea_sig = sign(Provider::Gitea, "gitea-secret", tea.as_bytes());
    for (header, sig, want) in [
        ("x-gitea-signature", tea_sig.as_str(), 202),
        ("x-forgejo-signature", "00ff", 401),
    ] {
        let e = apigw(
            "/webhook/gitea",
            "POST",
            &[
                ("x-gitea-event", "push"),
                (header, sig),
                ("x-gitea-delivery", &format!("gt-{want}")),
            ],
            &tea,
            false,
        );
        assert_eq!(code(&gitferry_lambda::webhook(&rt, e).await), want, "{header}");
    }
    let groups: Vec<_> = aws.drain().await.into_iter().map(|m| m.group).collect();
    assert_eq!(groups.len(), 2, "{groups:?}");

    // Status and manual routes need the bearer token.
    assert_eq!(
        code(&gitferry_lambda::webhook(&rt, apigw("/status", "GET", &[], "", false)).await),
        401
    );
    let bad = apigw("/status", "GET", &[("authorization", "Bearer nope")], "", false);
    assert_eq!(code(&gitferry_lambda::webhook(&rt, bad).await), 401);
    let auth = format!("Bearer {TOKEN}");
    let ok = apigw(
        "/status",
        "GET",
        &[("authorization", &auth), ("accept", "application/json")],
        "",
        false,
    );
    let r = gitferry_lambda::webhook(&rt, ok).await;
    assert_eq!(code(&r), 200);
    assert_eq!(body_json(&r)["repos"].as_array().unwrap().len(), 5);
    assert_eq!(
        code(&gitferry_lambda::webhook(&rt, apigw("/repos/app/sync", "POST", &[], "", false)).await),
        401
    );
    let manual = gitferry_lambda::webhook(
        &rt,
        apigw("/repos/app/sync", "POST", &[("authorization", &auth)], "", false),
    )
    .await;
    assert_eq!(code(&manual), 202);
    assert_eq!(
        code(
            &gitferry_lambda::webhook(
                &rt,
                apigw("/repos/nope/sync", "POST", &[("authorization", &auth)], "", false)
            )
            .await
        ),
        404
    );
    assert_eq!(aws.drain().await.len(), 1);

    // Queue failure → 503 so the provider redelivers.
    let mut broken_env = rt.env.clone();
    broken_env.queue_url = format!("{}/123456789012/missing.fifo", aws.moto.endpoint());
    let broken = Runtime::with_parts(
        broken_env.clone(),
        aws.store.clone(),
        Arc::new(SqsQueue::new(aws.sqs.clone(), broken_env.queue_url.clone())),
        HashMap::from([("APP_SECRET".to_owned(), SECRET.to_owned())]),
        Metrics::discard(),
    );
    assert_eq!(
        code(&gitferry_lambda::webhook(&broken, github("d-503", "push", &body, SECRET)).await),
        503
    );
}

/// Issue 15: what GitHub, GitLab, Gitea and Forgejo really send (their published payloads and
/// headers, `harness::deliveries`) through the webhook function as API Gateway invokes it:
/// organisation, group and system hooks, form bodies, names in another case, GitLab's resend, a
/// push over 1 MiB. Every answer, what reached SQS (redeliveries once), the `WebhookResponses`
/// count of every code, and a log line for every refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_deliveries_of_every_provider() {
    let aws = Aws::start().await;
    let recorder = Arc::new(Recorder::default());
    let rt = aws
        .runtime_with(deliveries::CONFIG, &deliveries::env(), recorder.clone())
        .await;
    let cases = deliveries::cases();
    for (i, case) in cases.iter().enumerate() {
        // Every third JSON body base64-encoded too: API Gateway decides that, not the provider.
        let r = gitferry_lambda::webhook(&rt, apigw_delivery(case, i % 3 == 0)).await;
        case.check(u16::try_from(code(&r)).unwrap(), &body_json(&r));
    }
    let mut queued: Vec<String> = aws
        .drain()
        .await
        .iter()
        .map(|m| {
            gitferry_core::request::SyncRequest::from_json(&m.body)
                .unwrap()
                .dedup_id()
        })
        .collect();
    queued.sort();
    let expected: Vec<String> = deliveries::expected_queue(&cases).into_iter().collect();
    assert_eq!(
        queued, expected,
        "one message per delivery and repository, redeliveries dropped"
    );
    for (status, n) in deliveries::expected_codes(&cases) {
        let counted = recorder.total("WebhookResponses", &[("Code", &status.to_string())]);
        assert_eq!(counted, n as f64, "WebhookResponses with Code {status}");
    }
    for case in cases.iter().filter(|c| matches!(c.want, deliveries::Want::Refused(..))) {
        let lines = harness::leaks::logged(|l| deliveries::log_line(case, l));
        assert_eq!(lines.len(), 1, "{}: one log line for the refusal", case.name);
    }
}

/// A body API Gateway says is base64 but is not: refused with 400, logged and counted like
/// every other answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_base64_body_is_logged_and_counted() {
    let aws = Aws::start().await;
    let recorder = Arc::new(Recorder::default());
    let rt = aws.runtime(&config(""), recorder.clone()).await;
    let mut e = github("b64-broken-1", "push", &push_payload(SRC), SECRET);
    e.body = Some("%%% not base64 %%%".into());
    e.is_base64_encoded = true;
    let r = gitferry_lambda::webhook(&rt, e).await;
    assert_eq!(
        (code(&r), body_json(&r)["error"].as_str()),
        (400, Some("body is not valid base64"))
    );
    assert_eq!(recorder.total("WebhookResponses", &[("Code", "400")]), 1.0);
    let logged = harness::leaks::logged(|l| {
        l.contains("webhook delivery rejected") && l.contains("delivery=\"b64-broken-1\"") && l.contains("status=400")
    });
    assert_eq!(logged.len(), 1);
    assert!(aws.drain().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_ticks_reconcile_once_and_retries_add_nothing() {
    let aws = Aws::start().await;
    // Local-path sources that do not exist: the prober lists them without any network, fails,
    // and enqueues them (their syncs would record the failure).
    let mut toml = String::from("poll_interval_secs = 60\n");
    for i in 0..5 {
        toml.push_str(&format!("[repos.r{i}]\nurl = \"/tmp/nowhere/src-{i}.git\"\n[[repos.r{i}.targets]]\nurl = \"/tmp/nowhere/dst-{i}.git\"\n"));
    }
    let rt = aws.runtime(&toml, Arc::new(Recorder::default())).await;
    let _event: EventBridgeEvent = serde_json::from_value(fixture("eventbridge-scheduled.json")).unwrap();
    let now = 1_800_000_000;
    let first = gitferry_lambda::poll(&rt, now).await.unwrap();
    assert_eq!(first.reconciled, 5, "a new configuration: every repo once");
    assert_eq!(
        (first.probed, first.polled),
        (5, 5),
        "all due (60 s interval), none listable"
    );
    let retried = gitferry_lambda::poll(&rt, now).await.unwrap();
    assert_eq!(retried.reconciled, 0, "the config was seen");
    let messages = aws.drain().await;
    let mut polls = 0;
    for m in &messages {
        let r = gitferry_core::request::SyncRequest::from_json(&m.body).unwrap();
        if matches!(r.trigger, gitferry_core::request::SyncTrigger::Poll { .. }) {
            polls += 1;
        }
    }
    assert_eq!(
        polls, first.polled,
        "the retried tick's poll requests were deduplicated by SQS"
    );
    assert_eq!(messages.len(), 5 + first.polled);
}

/// SQS records (as the event source mapping delivers them) for received messages.
fn sqs_event(messages: &[gitferry_core::queue::Message]) -> SqsEvent {
    let template = fixture("sqs-fifo-batch.json")["Records"][0].clone();
    let records: Vec<serde_json::Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = template.clone();
            r["messageId"] = format!("msg-{i}").into();
            r["receiptHandle"] = m.receipt.clone().into();
            r["body"] = m.body.clone().into();
            r["attributes"]["MessageGroupId"] = m.group.clone().into();
            r
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

fn raw_event(records: &[(&str, &str, &str)]) -> SqsEvent {
    let template = fixture("sqs-fifo-batch.json")["Records"][0].clone();
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|(id, group, body)| {
            let mut r = template.clone();
            r["messageId"] = (*id).into();
            r["body"] = (*body).into();
            r["attributes"]["MessageGroupId"] = (*group).into();
            r
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_to_sqs_to_sync_end_to_end() {
    let aws = Aws::start().await;
    let servers = Servers::start();
    let source = servers.create_bare("src.git");
    let target = servers.create_bare("dst.git");
    let mut wt = Worktree::new(&source);
    wt.build_history();
    let receiver = Receiver::start();
    let src_url = servers.url(Proto::Http, "src.git");
    let toml = format!(
        "[notify]\ngeneric_webhook_url_env = \"NOTIFY\"\n[repos.app]\nurl = \"{src_url}\"\n\
         webhook = {{ provider = \"github\", secret_env = \"APP_SECRET\" }}\n\
         [[repos.app.targets]]\nurl = \"{}\"\n",
        servers.url(Proto::GitDaemon, "dst.git")
    );
    let recorder = Arc::new(Recorder::default());
    let mut rt = aws.runtime(&toml, recorder.clone()).await;
    rt = Runtime::with_parts(
        rt.env.clone(),
        aws.store.clone(),
        aws.queue(),
        HashMap::from([
            ("APP_SECRET".to_owned(), SECRET.to_owned()),
            ("NOTIFY".to_owned(), receiver.url()),
        ]),
        Metrics::new(recorder.clone()),
    );
    // Three deliveries for one repo arrive before the sync runs: one sync.
    for d in ["d-1", "d-2", "d-3"] {
        let r = gitferry_lambda::webhook(&rt, github(d, "push", &push_payload(&src_url), SECRET)).await;
        assert_eq!(code(&r), 202);
    }
    let messages = aws
        .queue()
        .receive(10, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(messages.len(), 3, "one group, in order, one batch");
    let deadline = Instant::now() + Duration::from_secs(300);
    let response = gitferry_lambda::sync(&rt, sqs_event(&messages), deadline, "lambda:test").await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    assert_refs_equal(&source, &target);
    assert_fsck_clean(&target);
    let status = gitferry_core::status::StatusBook::new(aws.store.clone())
        .get("app")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, gitferry_core::status::State::Success);
    assert_eq!(status.last_delivery_id.as_deref(), Some("d-3"));
    assert_eq!(
        recorder.total("Syncs", &[("Outcome", "success")]),
        3.0,
        "three triggers, coalesced"
    );
    let bodies = receiver.wait_for(1, Duration::from_secs(5));
    assert_eq!(bodies.len(), 1, "one notification: {bodies:?}");
    assert_eq!(bodies[0]["event"], "changed");
    // The cache is in the bucket: a second (cold) worker has nothing to do.
    std::fs::remove_dir_all(std::env::temp_dir().join("gitferry").join("app.git")).ok();
    let poll = gitferry_core::request::SyncRequest::poll("app", 1).to_json();
    let again = gitferry_lambda::sync(&rt, raw_event(&[("p1", "app", &poll)]), deadline, "lambda:test2").await;
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(recorder.total("Syncs", &[("Outcome", "noop")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_partial_failure_returns_the_failed_group_in_order() {
    let aws = Aws::start().await;
    let servers = Servers::start();
    for repo in ["a", "c"] {
        let src = servers.create_bare(&format!("{repo}.git"));
        servers.create_bare(&format!("{repo}-dst.git"));
        Worktree::new(&src).build_history();
    }
    let dead_port = harness::free_port();
    let mut toml = String::new();
    for repo in ["a", "c"] {
        toml.push_str(&format!(
            "[repos.{repo}]\nurl = \"{}\"\n[[repos.{repo}.targets]]\nurl = \"{}\"\n",
            servers.url(Proto::GitDaemon, &format!("{repo}.git")),
            servers.url(Proto::GitDaemon, &format!("{repo}-dst.git"))
        ));
    }
    // b's source is unreachable: a transient failure.
    toml.push_str(&format!(
        "[repos.b]\nurl = \"git://127.0.0.1:{dead_port}/b.git\"\n[[repos.b.targets]]\nurl = \"/tmp/nowhere/b.git\"\n"
    ));
    let rt = aws.runtime(&toml, Arc::new(Recorder::default())).await;
    let req = |repo: &str, slot: u64| gitferry_core::request::SyncRequest::poll(repo, slot).to_json();
    let (a1, b1, c1, b2, a2) = (req("a", 1), req("b", 1), req("c", 1), req("b", 2), req("a", 2));
    let event = raw_event(&[
        ("m1", "a", &a1),
        ("m2", "b", &b1),
        ("m3", "c", &c1),
        ("m4", "b", &b2),
        ("m5", "a", &a2),
        ("m6", "x", "this is not a sync request"),
    ]);
    let response = gitferry_lambda::sync(&rt, event, Instant::now() + Duration::from_secs(300), "lambda:t").await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        vec!["m2", "m4"],
        "b's records (in order), nothing else; garbage is acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_near_returns_unstarted_repos_as_failures() {
    let aws = Aws::start().await;
    let rt = aws.runtime(&config(""), Arc::new(Recorder::default())).await;
    let req = |repo: &str| gitferry_core::request::SyncRequest::manual(repo, "t").to_json();
    let (a, b) = (req("app"), req("lab"));
    let event = raw_event(&[("m1", "app", &a), ("m2", "lab", &b)]);
    // Less time than the sync manager's margin: nothing starts, everything is returned.
    let response = gitferry_lambda::sync(&rt, event, Instant::now() + Duration::from_secs(2), "lambda:t").await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec!["m1", "m2"]);
}

/// A corpus of hostile deliveries: each gets its documented code and nothing is enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhook_corpus_enqueues_nothing() {
    let aws = Aws::start().await;
    let rt = aws.runtime(&config(""), Arc::new(Recorder::default())).await;
    let body = push_payload(SRC);
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let too_big = format!("{{\"x\":\"{}\"}}", "y".repeat(25 << 20));
    let unicode =
        serde_json::json!({ "repository": { "clone_url": "https://github.com/org/\u{0430}pp.git" } }).to_string();
    let cases: Vec<(&str, ApiGatewayV2httpRequest, i64)> = vec![
        ("deeply nested JSON", github("h1", "push", &nested, SECRET), 400),
        ("a body over 25 MiB", github("h2", "push", &too_big, SECRET), 413),
        (
            "truncated JSON",
            github("h3", "push", &body[..body.len() / 2], SECRET),
            400,
        ),
        (
            "look-alike unicode repository",
            github("h4", "push", &unicode, SECRET),
            401,
        ),
        (
            "unknown provider",
            apigw(
                "/webhook/bitbucket",
                "POST",
                &[("x-github-event", "push")],
                &body,
                false,
            ),
            404,
        ),
        (
            "GET on the webhook route",
            apigw("/webhook/github", "GET", &[], "", false),
            405,
        ),
        (
            "signature for another body",
            {
                let mut e = github("h5", "push", &body, SECRET);
                e.body = Some(push_payload("https://github.com/org/app-copy.git"));
                e
            },
            401,
        ),
        // (CR/LF in a header cannot even be represented: API Gateway and hyper refuse them.)
        (
            "a 4 KiB delivery id, wrongly signed",
            github(&"i".repeat(4096), "push", &body, "wrong"),
            401,
        ),
        (
            "signature with the wrong algorithm prefix",
            {
                let sig = sign(Provider::Github, SECRET, body.as_bytes()).replace("sha256=", "sha1=");
                apigw(
                    "/webhook/github",
                    "POST",
                    &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
                    &body,
                    false,
                )
            },
            401,
        ),
        (
            "empty signature",
            apigw(
                "/webhook/github",
                "POST",
                &[("x-github-event", "push"), ("x-hub-signature-256", "")],
                &body,
                false,
            ),
            401,
        ),
        (
            "path traversal route",
            apigw("/webhook/../status", "POST", &[], &body, false),
            404,
        ),
    ];
    for (what, event, want) in cases {
        let r = gitferry_lambda::webhook(&rt, event).await;
        assert_eq!(code(&r), want, "{what}: {:?}", body_json(&r));
    }
    // A wrong content type is not a reason to refuse a correctly signed delivery (GitHub can be
    // set to form encoding; we document application/json) — but it must still verify.
    let mut form = github("h7", "push", &body, SECRET);
    form.headers
        .insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
    assert_eq!(code(&gitferry_lambda::webhook(&rt, form).await), 202);
    let queued = aws.drain().await;
    assert_eq!(
        queued.len(),
        2,
        "only the last, valid delivery (two mirrors of one source): {queued:?}"
    );

    // Header injection in a correctly signed delivery. CR/LF and escape characters cannot get
    // through an HTTP parser (API Gateway's or hyper's), so what arrives is spaces, a forged
    // header after them, markup: the delivery id is replaced by the body's digest; the event
    // name is only ever echoed quoted.
    let mut e = github("unused", "push", &body, SECRET);
    e.headers.insert(
        "x-github-delivery",
        "d-9 X-Injected: yes <!channel> <script>".parse().unwrap(),
    );
    let r = gitferry_lambda::webhook(&rt, e).await;
    assert_eq!(code(&r), 202, "{:?}", body_json(&r));
    let reply = serde_json::to_string(&body_json(&r)).unwrap();
    assert!(!reply.contains("Injected") && !reply.contains("<script>"), "{reply}");
    let queued = aws.drain().await;
    assert!(!queued.is_empty());
    for m in queued {
        let request = gitferry_core::request::SyncRequest::from_json(&m.body).unwrap();
        let id = request.trigger.delivery_id().unwrap();
        assert!(
            id.starts_with("body-") && id.bytes().all(|b| b.is_ascii_graphic()),
            "{id}"
        );
    }
    let mut e = github("h8", "push", &body, SECRET);
    e.headers
        .insert("x-github-event", "push, X-Injected: yes".parse().unwrap());
    let r = gitferry_lambda::webhook(&rt, e).await;
    assert_eq!(code(&r), 202, "an unknown event is acknowledged and ignored");
    assert!(aws.drain().await.is_empty(), "and nothing is queued");
}
