//! Load on the local server's webhook route (issue 7): many signed deliveries from a loopback
//! load generator, with redeliveries mixed in. Asserts that none is lost (every one answered 202
//! and counted), that every repository ends synced, that the queue drains, and that memory stays
//! bounded; prints p50/p99 latency. `cargo test --test load` runs a quick 600-delivery version;
//! `make load` runs 5,000 against a release build and records the figures.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gitferry_core::config::Provider;
use harness::Servers;

const SECRET: &str = "load-secret";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn run(deliveries: usize, repos: usize, senders: usize) {
    harness::leaks::secret(SECRET);
    let servers = Servers::start();
    let dir = harness::tempdir();
    let (config, _sources, _worktrees) = servers.webhook_repos(repos, "S");
    std::fs::write(dir.path().join("mirrors.toml"), config).unwrap();
    let (mut child, base) = harness::start_serve(
        dir.path(),
        ["--store", "store", "--workers", "4"],
        &[("S", SECRET), ("RUST_LOG", "info")],
        (&dir.path().join("serve.log"), None),
        20,
    );

    // Deliveries: ids 0..n; every 10th is a redelivery of the previous id.
    let next = Arc::new(Mutex::new(0usize));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(deliveries)));
    let codes = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, usize>::new()));
    let peak = Arc::new(Mutex::new(0u64));
    let started = Instant::now();
    let pid = child.id();
    let mut threads = Vec::new();
    for _ in 0..senders {
        let (next, latencies, codes, base, peak) = (
            next.clone(),
            latencies.clone(),
            codes.clone(),
            base.clone(),
            peak.clone(),
        );
        let src_paths: Vec<String> = (0..repos)
            .map(|r| servers.path(&format!("src{r}.git")).display().to_string())
            .collect();
        threads.push(std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    if *n >= deliveries {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                let id = if i % 10 == 9 { i - 1 } else { i };
                let repo = id % src_paths.len();
                let body =
                    serde_json::json!({ "ref": "refs/heads/main", "repository": { "clone_url": src_paths[repo] } })
                        .to_string();
                let sig = gitferry_core::webhook::sign(Provider::Github, SECRET, body.as_bytes());
                let t = Instant::now();
                let code = client
                    .post(format!("{base}/webhook/github"))
                    .header("X-GitHub-Event", "push")
                    .header("X-GitHub-Delivery", format!("load-{id}"))
                    .header("X-Hub-Signature-256", sig)
                    .body(body)
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                latencies.lock().unwrap().push(t.elapsed());
                *codes.lock().unwrap().entry(code).or_default() += 1;
                if i % 50 == 0 {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(rss_kib(pid));
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    let codes = codes.lock().unwrap().clone();
    assert_eq!(
        codes.get(&202).copied(),
        Some(deliveries),
        "every delivery accepted: {codes:?}"
    );

    // Every repo ends synced and the queue drains.
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        let status: serde_json::Value = reqwest::blocking::get(format!("{base}/status"))
            .unwrap()
            .json()
            .unwrap();
        let repos_ok = status["repos"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "success");
        let queued: Vec<serde_json::Value> = std::fs::read(dir.path().join("store/state/queue.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if repos_ok && queued.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "not drained: {} queued, status {status}",
            queued.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = reqwest::blocking::get(format!("{base}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gitferry_webhook_responses_total{code=\"202\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, deliveries, "every delivery counted");
    // Every distinct delivery was enqueued and taken; every redelivery was deduplicated.
    let (taken, retries) = harness::requests_taken(&[dir.path().join("serve.log")]);
    let expected: std::collections::BTreeSet<String> = (0..deliveries)
        .filter(|i| i % 10 != 9)
        .map(|i| format!("wh:github:load-{i}:r{}", i % repos))
        .collect();
    let seen: std::collections::BTreeSet<String> = taken.keys().filter(|id| id.starts_with("wh:")).cloned().collect();
    assert_eq!(seen, expected, "every distinct delivery taken, and nothing else");
    let takes: usize = taken
        .iter()
        .filter(|(id, _)| id.starts_with("wh:"))
        .map(|(_, t)| t.len())
        .sum();
    assert!(
        takes <= expected.len() + retries,
        "{takes} takes for {} distinct deliveries and {retries} retries: a redelivery got through",
        expected.len()
    );
    let peak_kib = (*peak.lock().unwrap()).max(rss_kib(pid));
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    println!(
        "load: {deliveries} deliveries ({} redeliveries, {takes} requests taken) from {senders} senders to {repos} repos in {:.2}s ({:.0}/s); \
         webhook latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; serve peak RSS {:.1} MiB",
        deliveries / 10,
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        l.last().unwrap().as_secs_f64() * 1000.0,
        peak_kib as f64 / 1024.0
    );
    assert!(peak_kib < 512 * 1024, "memory bounded: {peak_kib} KiB");
}

#[test]
fn webhook_burst_loses_nothing() {
    run(600, 10, 8);
}

#[test]
#[ignore = "5,000 deliveries: `make load` runs it against a release build"]
fn webhook_load_5000() {
    run(5000, 50, 16);
}
