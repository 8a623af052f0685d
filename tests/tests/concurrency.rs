//! Two `gitferry serve` processes sharing one moto S3 bucket and one SQS FIFO queue (issue 7):
//! 50 repositories, 1,000 webhook deliveries spread over both servers with redeliveries and
//! bursts. Every repository must end equal to its source, every manifest must record the
//! source's final refs (no generation lost), and redeliveries must be deduplicated.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gitferry_core::config::Provider;
use harness::moto::MotoServer;
use harness::{Servers, assert_fsck_clean, git, mirrored_refs};

const SECRET: &str = "shared-secret";
const REPOS: usize = 50;
const DELIVERIES: usize = 1000;

struct Server {
    child: Child,
    base: String,
}

fn start(dir: &std::path::Path, n: usize, moto: &MotoServer, bucket: &str, queue_url: &str) -> Server {
    let endpoint = moto.endpoint();
    let (child, base) = harness::start_serve(
        dir,
        [
            "--workers".to_owned(),
            "3".to_owned(),
            "--store".to_owned(),
            format!("s3://{bucket}/shared"),
            "--queue".to_owned(),
            format!("sqs://{queue_url}"),
            "--work-dir".to_owned(),
            dir.join(format!("work-{n}")).display().to_string(),
        ],
        &[
            ("S", SECRET),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("RUST_LOG", "info"),
        ],
        (&dir.join(format!("serve-{n}.log")), None),
        30,
    );
    Server { child, base }
}

#[test]
fn two_servers_one_bucket_one_queue_converge() {
    harness::leaks::secret(SECRET);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = MotoServer::start();
    let (bucket, queue_url) = rt.block_on(async {
        let (_, bucket) = moto.client_with_bucket().await;
        let queue_url = moto.create_fifo_queue(&moto.sqs_client()).await;
        (bucket, queue_url)
    });
    let servers = Servers::start();
    let dir = harness::tempdir();
    let (config, sources, mut worktrees) = servers.webhook_repos(REPOS, "S");
    std::fs::write(dir.path().join("mirrors.toml"), config).unwrap();
    let mut a = start(dir.path(), 1, &moto, &bucket, &queue_url);
    let mut b = start(dir.path(), 2, &moto, &bucket, &queue_url);

    // Deliveries in bursts: every 5th delivery moves a repo forward first; every 10th is a
    // redelivery of the previous id; they alternate between the two servers.
    let client = reqwest::blocking::Client::new();
    let mut accepted = 0;
    let mut redelivered_at = std::collections::BTreeMap::new();
    for i in 0..DELIVERIES {
        // A redelivery repeats the previous delivery exactly: same id, same body.
        let id = if i % 10 == 9 { i - 1 } else { i };
        let repo = (id * 7) % REPOS;
        if i % 5 == 0 {
            worktrees[repo].commit_file("f.txt", format!("change {i}\n").as_bytes(), &format!("change {i}"));
            worktrees[repo].push_all();
        }
        let body = serde_json::json!({ "ref": "refs/heads/main", "repository": { "clone_url": sources[repo].display().to_string() } })
            .to_string();
        let sig = gitferry_core::webhook::sign(Provider::Github, SECRET, body.as_bytes());
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        if id != i {
            redelivered_at.insert(format!("wh:github:d-{id}:r{repo}"), harness::now_ms());
        }
        let code = client
            .post(format!("{base}/webhook/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", format!("d-{id}"))
            .header("X-Hub-Signature-256", sig)
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(code, 202, "delivery {i}");
        accepted += 1;
    }
    assert_eq!(accepted, DELIVERIES);

    // Every target converges to its source.
    let until = Instant::now() + Duration::from_secs(300);
    for (r, source) in sources.iter().enumerate() {
        let dst = servers.path(&format!("dst{r}.git"));
        while mirrored_refs(&dst) != mirrored_refs(source) {
            assert!(Instant::now() < until, "repo r{r} did not converge");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_fsck_clean(&dst);
    }
    // Every manifest records the source's final refs: no generation was lost or rolled back.
    let manifests = rt.block_on(async {
        let s3 = moto.client();
        let mut out = Vec::new();
        for r in 0..REPOS {
            let obj = s3
                .get_object()
                .bucket(&bucket)
                .key(format!("shared/repos/r{r}/manifest.json"))
                .send()
                .await
                .unwrap();
            let bytes = obj.body.collect().await.unwrap().into_bytes();
            out.push(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap());
        }
        out
    });
    let mut reclaims = 0;
    for (r, m) in manifests.iter().enumerate() {
        let main = git(&sources[r], ["rev-parse", "refs/heads/main"]);
        assert_eq!(m["source"]["refs"]["refs/heads/main"]["id"], main, "r{r}: {m}");
        assert!(m["generation"].as_u64().unwrap() >= 1);
    }
    for s in [&a, &b] {
        let metrics = reqwest::blocking::get(format!("{}/metrics", s.base))
            .unwrap()
            .text()
            .unwrap();
        reclaims += metrics
            .lines()
            .filter(|l| l.starts_with("gitferry_lease_reclaims_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as usize;
    }
    // Duplicates deduplicated, nothing lost: the requests the two servers took are exactly the
    // 900 distinct deliveries, each once unless its sync was retried — or unless the original had
    // been taken (and maybe deleted) before its redelivery was sent: SQS remembers a deduplication
    // id for 5 minutes after deletion, moto only while the message is in the queue. A second take
    // of a redelivered request whose original was still waiting when the redelivery was sent
    // means deduplication failed.
    let (mut taken, retries) =
        harness::requests_taken(&[dir.path().join("serve-1.log"), dir.path().join("serve-2.log")]);
    let expected: std::collections::BTreeSet<String> = (0..DELIVERIES)
        .filter(|i| i % 10 != 9)
        .map(|i| format!("wh:github:d-{i}:r{}", (i * 7) % REPOS))
        .collect();
    // (Each server's start-up reconciliation adds one `manual:` request per repo; not counted.)
    taken.retain(|id, _| id.starts_with("wh:"));
    let seen: std::collections::BTreeSet<String> = taken.keys().cloned().collect();
    assert_eq!(seen, expected, "every distinct delivery taken, and nothing else");
    let total: usize = taken.values().map(Vec::len).sum();
    let mut after_deletion = 0;
    for (id, times) in taken.iter().filter(|(_, t)| t.len() > 1) {
        match redelivered_at.get(id) {
            // The tracing clock has microseconds, ours milliseconds: 1 ms of slack.
            Some(&sent) if times[0] <= sent + 1 => after_deletion += times.len() - 1,
            _ => {}
        }
    }
    assert!(
        total <= expected.len() + retries + after_deletion,
        "{total} requests taken for {} distinct deliveries, {retries} retries and {after_deletion} \
         redeliveries sent after their original was taken: a duplicate got through",
        expected.len()
    );
    println!(
        "two servers, {REPOS} repos, {DELIVERIES} deliveries: converged; {} distinct requests taken \
         ({total} takes, {retries} retries, {after_deletion} redeliveries taken again after moto forgot \
         their original); lease reclaims {reclaims}",
        expected.len()
    );
    assert_eq!(reclaims, 0, "no worker died, so no lease had to be reclaimed");
    for s in [&mut a, &mut b] {
        assert!(
            Command::new("kill")
                .args(["-TERM", &s.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(s.child.wait().unwrap().code(), Some(0));
    }
}
