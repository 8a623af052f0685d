//! gitferry run the way AWS runs it (see tests/src/aws.rs): the real bootstraps behind the
//! Lambda Runtime API and killed at their time limits, moto's S3 and SQS FIFO with a
//! dead-letter queue, an event source mapping and a schedule with Lambda's semantics, and the
//! template's own alarms evaluated over the metrics the functions printed. Time runs `SCALE`
//! times faster than deployed, every limit and interval alike (the code's own through
//! `GITFERRY_TIME_SCALE`).
//!
//! Each test prints its figures (invocations, time to recover in deployed minutes, alarm
//! states over time); docs/reliability.md records them.

use std::time::Duration;

use gitferry_core::status::State;
use harness::aws::{Deploy, Stack};
use harness::proxy::{FaultProxy, Plan};
use harness::{Proto, Servers, Worktree, assert_fsck_clean, assert_refs_equal, git, mirrored_refs};

const SCALE: f64 = 30.0;

/// A repository entry of `mirrors.toml`.
fn repo(name: &str, source: &str, target: &str, extra: &str) -> String {
    format!("[repos.{name}]\nurl = \"{source}\"\n{extra}\n[[repos.{name}.targets]]\nurl = \"{target}\"\n")
}

/// Deployed minutes for a compressed duration.
fn deployed_minutes(d: Duration, scale: f64) -> f64 {
    d.as_secs_f64() * scale / 60.0
}

fn refs_match(a: &std::path::Path, b: &std::path::Path) -> bool {
    mirrored_refs(a) == mirrored_refs(b)
}

/// Sources with history and empty targets on a loopback git daemon.
fn fleet(servers: &Servers, n: usize) -> (String, Vec<(std::path::PathBuf, std::path::PathBuf)>) {
    // A probe gets 1 s real time (30 s deployed): loopback listings take milliseconds, but on
    // 2 loaded cores a few take longer than the 0.33 s a 10 s timeout becomes at this scale.
    let mut toml = String::from("poll_interval_secs = 300\nprobe_timeout_secs = 30\n");
    let mut pairs = Vec::new();
    for i in 0..n {
        let src = servers.create_bare(&format!("s{i}.git"));
        let mut wt = Worktree::new(&src);
        wt.commit_file("README", format!("repo {i}\n").as_bytes(), "init");
        wt.push_all();
        let dst = servers.create_bare(&format!("t{i}.git"));
        toml.push_str(&repo(
            &format!("r{i}"),
            &servers.url(Proto::GitDaemon, &format!("s{i}.git")),
            &servers.url(Proto::GitDaemon, &format!("t{i}.git")),
            "",
        ));
        pairs.push((src, dst));
    }
    (toml, pairs)
}

fn all_mirrored(pairs: &[(std::path::PathBuf, std::path::PathBuf)]) -> bool {
    pairs.iter().all(|(s, t)| refs_match(s, t))
}

/// An idle fleet for 30 ticks: no sync runs, the watchdog stays OK. Then the poll function
/// fails (a broken configuration is uploaded): the watchdog fires after WatchdogMinutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_fleet_stays_quiet_and_a_failing_poller_raises_the_watchdog() {
    let servers = Servers::start();
    let (toml, pairs) = fleet(&servers, 3);
    let stack = Stack::deploy(Deploy::new(SCALE, toml)).await;
    let start = harness::now_ms();
    // Mirrored, and nothing left in the queue (a retry of a startup request would otherwise
    // run during the idle period).
    let mirrored = stack
        .run_until(Duration::from_secs(60), true, || async {
            all_mirrored(&pairs) && stack.queue_depths().await == (0, 0, 0)
        })
        .await
        .expect("the first mirrors complete");
    println!(
        "first mirrors of 3 repos: {:.1} deployed minutes",
        deployed_minutes(mirrored, SCALE)
    );

    // Idle: 30 ticks.
    let syncs_before = stack.sync_runs().len();
    let idle_from = harness::now_ms();
    let thirty_ticks = stack.tick * 30;
    let _ = stack.run_until(thirty_ticks, true, || async { false }).await;
    let idle_to = harness::now_ms();
    let idle_syncs = stack.sync_runs().len() - syncs_before;
    assert_eq!(
        idle_syncs,
        0,
        "an idle fleet needs no sync: {:?}\n{}",
        stack.sync_runs(),
        stack.log_lines("poll", "enqueue").join("\n")
    );
    let watchdog = stack.timeline("WatchdogAlarm", idle_from, idle_to);
    println!(
        "watchdog while idle: {}",
        stack.describe("WatchdogAlarm", start, idle_to)
    );
    assert!(
        watchdog.iter().all(|(_, s)| *s == harness::alarms::AlarmState::Ok),
        "the watchdog must stay quiet on a healthy idle fleet: {}",
        stack.describe("WatchdogAlarm", idle_from, idle_to)
    );
    for (id, _) in [("DeadLetterAlarm", ()), ("SyncFailuresAlarm", ())] {
        assert!(
            stack
                .timeline(id, idle_from, idle_to)
                .iter()
                .all(|(_, s)| *s != harness::alarms::AlarmState::Alarm),
            "{id}: {}",
            stack.describe(id, idle_from, idle_to)
        );
    }

    // The poll function starts failing: a broken configuration (warm functions re-read it
    // within 30 s). Lambda records why.
    stack.put_config("this is not toml [").await;
    let broken_at = harness::now_ms();
    tokio::time::sleep(Duration::from_secs_f64(30.0 / SCALE) + Duration::from_millis(100)).await;
    let failed = stack.poll_tick().await;
    assert!(
        matches!(&failed.outcome, harness::lambda_rt::Outcome::Error { error_type, .. } if error_type == "gitferry.Configuration"),
        "{:?}",
        failed.outcome
    );
    let watchdog_minutes = stack.alarm("WatchdogAlarm").evaluation_periods as u32;
    let _ = stack
        .run_until(stack.tick * (watchdog_minutes + 4), true, || async { false })
        .await;
    let end = harness::now_ms();
    let after = stack.timeline("WatchdogAlarm", broken_at, end);
    let fired = after.iter().find(|(_, s)| *s == harness::alarms::AlarmState::Alarm);
    println!(
        "watchdog after the poller broke: {}",
        stack.describe("WatchdogAlarm", broken_at, end)
    );
    let fired_at = fired.expect("the watchdog fires when the poller fails").0;
    let minutes = (fired_at - broken_at) as f64 * SCALE / 60_000.0;
    println!("watchdog fired {minutes:.1} deployed minutes after the poll function started failing");
    assert!(
        minutes <= f64::from(watchdog_minutes) + 2.0,
        "fired after {minutes:.1} min (WatchdogMinutes {watchdog_minutes})"
    );
}

/// A sync of `repo` found in the queue's history: the records it carried.
fn runs_for(stack: &Stack, repo: &str) -> Vec<harness::aws::SyncRun> {
    stack
        .sync_runs()
        .into_iter()
        .filter(|r| r.records.iter().any(|(g, _)| g == repo))
        .collect()
}

/// A target down for three poll intervals: its syncs fail, their requests reach the
/// dead-letter queue, and the poller keeps retrying on the repo's interval; once the target is
/// back, it equals the source within one interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_down_for_three_intervals_catches_up_within_one_interval() {
    let servers = Servers::start();
    let src = servers.create_bare("src.git");
    let mut wt = Worktree::new(&src);
    wt.build_history();
    let dst = servers.create_bare("dst.git");
    let proxy = FaultProxy::start(servers.daemon.port);
    let toml = format!(
        "poll_interval_secs = 300\nprobe_timeout_secs = 30\n{}",
        repo(
            "app",
            &servers.url(Proto::GitDaemon, "src.git"),
            &proxy.url("dst.git"),
            ""
        )
    );
    let stack = Stack::deploy(Deploy::new(SCALE, toml)).await;
    let interval = Duration::from_secs_f64(300.0 / SCALE);
    stack
        .run_until(Duration::from_secs(60), true, || async { refs_match(&src, &dst) })
        .await
        .expect("the first mirror completes");

    // The target goes down (every connection reset), and the source moves on.
    proxy.set(Plan {
        cut_downstream_after: Some(0),
        reset: true,
        ..Plan::default()
    });
    wt.commit_file("during-outage.txt", b"new\n", "a change while the target is down");
    wt.push_all();
    let down_at = harness::now_ms();
    let runs_before = runs_for(&stack, "app").len();
    let _ = stack.run_until(interval * 3, true, || async { false }).await;
    let during = &runs_for(&stack, "app")[runs_before..];
    let (_, _, dead) = stack.queue_depths().await;
    let status = stack.status("app").await.expect("status");
    println!(
        "target down for 3 intervals: {} sync invocations, {} request(s) dead-lettered, status {} ({} failures in a row)",
        during.len(),
        dead,
        status.state.as_str(),
        status.consecutive_failures
    );
    assert_eq!(status.state, State::Failed, "{status:?}");
    assert!(dead >= 1, "the quick retries ran out and the request went to the DLQ");
    let max_receive = stack.esm.max_receive_count;
    let attempts_per_request = during
        .iter()
        .map(|r| r.records.iter().map(|(_, n)| *n).max().unwrap_or(0))
        .max();
    assert_eq!(
        attempts_per_request,
        Some(max_receive),
        "each request is received maxReceiveCount times"
    );

    // Back: within one interval (plus the sync itself) the target equals the source, whatever
    // happened to the requests (they are in the dead-letter queue).
    proxy.clear();
    let recovered = stack
        .run_until(interval * 3, true, || async { refs_match(&src, &dst) })
        .await
        .expect("the target catches up");
    let up_to = harness::now_ms();
    println!(
        "target back: equal to the source after {:.1} deployed minutes (interval {} min)",
        deployed_minutes(recovered, SCALE),
        300 / 60
    );
    assert!(
        recovered <= interval + Duration::from_secs(2),
        "took {recovered:?}, interval {interval:?}"
    );
    assert_fsck_clean(&dst);
    let status = stack
        .status("app")
        .await
        .filter(|s| s.state == State::Success)
        .expect("success recorded");
    assert_eq!(status.consecutive_failures, 0);
    for id in ["SyncFailuresAlarm", "DeadLetterAlarm", "WatchdogAlarm"] {
        println!("{id}: {}", stack.describe(id, down_at, up_to));
    }
    assert!(
        stack
            .timeline("DeadLetterAlarm", down_at, up_to)
            .iter()
            .any(|(_, s)| *s == harness::alarms::AlarmState::Alarm),
        "the dead-letter alarm fired"
    );
}

/// A corrupted manifest (garbage over `manifest.json`) is rebuilt from the source by the next
/// sync — triggered here by a signed webhook through the webhook function — and noted in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_manifest_is_healed_on_the_next_sync() {
    let servers = Servers::start();
    let src = servers.create_bare("src.git");
    let mut wt = Worktree::new(&src);
    wt.build_history();
    let dst = servers.create_bare("dst.git");
    let secret = "aws-hook-secret";
    harness::leaks::secret(secret);
    let toml = format!(
        "poll_interval_secs = 300\n{}",
        repo(
            "app",
            &servers.url(Proto::GitDaemon, "src.git"),
            &servers.url(Proto::GitDaemon, "dst.git"),
            "webhook = { provider = \"github\", secret_env = \"APP_SECRET\" }"
        )
    );
    let mut deploy = Deploy::new(SCALE, toml);
    deploy.env.push(("APP_SECRET".into(), secret.into()));
    let stack = Stack::deploy(deploy).await;
    stack
        .run_until(Duration::from_secs(60), true, || async { refs_match(&src, &dst) })
        .await
        .expect("the first mirror completes");

    stack
        .store
        .put(
            "repos/app/manifest.json",
            b"{\"generation\": \"garbage".to_vec(),
            gitferry_core::store::Condition::Always,
        )
        .await
        .unwrap();
    let after = wt.commit_file("after-damage.txt", b"x\n", "a change after the damage");
    wt.push_all();
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "after": after,
        "repository": { "clone_url": servers.url(Proto::GitDaemon, "src.git") },
    })
    .to_string();
    let signature = gitferry_core::webhook::sign(gitferry_core::config::Provider::Github, secret, body.as_bytes());
    let event = harness::aws::api_event(
        "/webhook/github",
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", "heal-1"),
            ("x-hub-signature-256", &signature),
        ],
        &body,
    );
    let webhook = stack.webhook.clone();
    let answer = tokio::task::spawn_blocking(move || webhook.invoke(event))
        .await
        .unwrap();
    assert_eq!(answer.expect_response()["statusCode"], 202, "{answer:?}");
    let healed = stack
        .run_until(Duration::from_secs(60), false, || async { refs_match(&src, &dst) })
        .await
        .expect("the next sync mirrors the change");
    println!("corrupted manifest healed by the next sync in {healed:?}");
    let status = stack.status("app").await.unwrap();
    assert_eq!(status.state, State::Success, "{status:?}");
    assert!(
        status
            .cache_rebuilt
            .as_deref()
            .is_some_and(|r| r.contains("unreadable")),
        "the rebuild is noted: {status:?}"
    );
    let manifest = stack.store.get("repos/app/manifest.json").await.unwrap().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.body).expect("a valid manifest again");
    assert_eq!(
        manifest["source"]["refs"]["refs/heads/main"]["id"].as_str(),
        Some(after.as_str())
    );
    assert_refs_equal(&src, &dst);
}

/// A source with release history: `tags` commits, each tagged and adding `bytes` of data that
/// does not compress.
fn release_history(servers: &Servers, name: &str, tags: usize, bytes: usize) -> (std::path::PathBuf, Worktree) {
    let src = servers.create_bare(name);
    let mut wt = Worktree::new(&src);
    for i in 0..tags {
        wt.commit_file(
            &format!("data/{i:03}.bin"),
            &harness::pseudo_random_bytes(bytes, i as u64 + 1),
            &format!("release {i}"),
        );
        wt.git(["tag", &format!("v1.{i}")]);
    }
    wt.push_all();
    (src, wt)
}

/// How long `git clone --mirror` takes from `url`.
fn clone_time(url: &str) -> Duration {
    let dir = harness::tempdir();
    let started = std::time::Instant::now();
    git(dir.path(), ["clone", "--quiet", "--mirror", url, "probe.git"]);
    started.elapsed()
}

/// A first mirror that needs three times the sync function's time limit (a throttled source;
/// the deployment's time scale is chosen so that the limit is a third of a measured full
/// fetch): it goes in checkpointed batches of refs, each invocation stopping itself before the
/// deadline and continuing in the next; it completes within five invocations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_mirror_three_times_the_time_limit_completes_within_five_invocations() {
    let servers = Servers::start();
    let (src, _wt) = release_history(&servers, "big.git", 24, 320 * 1024);
    let dst = servers.create_bare("dst.git");
    let proxy = FaultProxy::start(servers.daemon.port);
    proxy.set(Plan {
        delay_per_chunk: Some(Duration::from_millis(60)),
        ..Plan::default()
    });
    let full = clone_time(&proxy.url("big.git"));
    // The sync function's 900 s limit becomes full / 3.
    let scale = (900.0 / (full.as_secs_f64() / 3.0)).clamp(20.0, 120.0);
    println!(
        "a full fetch of the throttled source takes {full:?}; scale {scale:.0}: the limit is {:.1} s",
        900.0 / scale
    );
    let toml = format!(
        "poll_interval_secs = 3600\n{}",
        repo(
            "big",
            &proxy.url("big.git"),
            &servers.url(Proto::GitDaemon, "dst.git"),
            ""
        )
    );
    let stack = Stack::deploy(Deploy::new(scale, toml)).await;
    // One tick: the new configuration is reconciled (the request), then the mapping alone.
    assert!(matches!(
        stack.poll_tick().await.outcome,
        harness::lambda_rt::Outcome::Response(_)
    ));
    let took = stack
        .run_until(stack.sync_timeout() * 8, false, || async { refs_match(&src, &dst) })
        .await
        .unwrap_or_else(|t| {
            panic!(
                "not mirrored after {t:?}: {:#?}\n{}",
                stack.sync_runs(),
                stack.log_lines("sync", "").join("\n")
            )
        });
    let runs = stack.sync_runs();
    let work: Vec<_> = runs
        .iter()
        .filter(|r| r.records.iter().any(|(g, _)| g == "big"))
        .collect();
    for r in &work {
        println!(
            "  invocation: {:.1} s, {} → {}",
            r.took.as_secs_f64(),
            r.outcome,
            r.failed
        );
    }
    for line in stack
        .log_lines("sync", "batch mirrored")
        .iter()
        .chain(&stack.log_lines("sync", "did not finish"))
    {
        println!("  {}", &line[..line.len().min(160)]);
    }
    println!(
        "first mirror needing {:.1}× the limit: {} invocations, {:.1} s ({:.1} deployed minutes)",
        full.as_secs_f64() / stack.sync_timeout().as_secs_f64(),
        work.len(),
        took.as_secs_f64(),
        deployed_minutes(took, scale)
    );
    assert!(
        full.as_secs_f64() >= 2.5 * stack.sync_timeout().as_secs_f64(),
        "the mirror must need about 3× the limit: {full:?} vs {:?}",
        stack.sync_timeout()
    );
    assert!(
        work.len() <= 5,
        "{} invocations:\n{}",
        work.len(),
        stack.log_lines("sync", "retried").join("\n")
    );
    assert!(
        work.iter().all(|r| r.outcome == "response"),
        "none was killed at the limit: {work:?}"
    );
    assert_refs_equal(&src, &dst);
    assert_fsck_clean(&dst);
    let status = stack.status("big").await.unwrap();
    assert_eq!(
        status.state,
        State::Success,
        "{status:?}\n{}",
        stack.log_lines("sync", "").join("\n")
    );
}

/// SIGKILL of the sync function mid-fetch, then mid-push (an out-of-memory kill looks the
/// same): within one lease TTL the status reads `stalled`; the request comes back after the
/// visibility timeout and the repo converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_fetch_and_mid_push_reads_stalled_and_converges() {
    let servers = Servers::start();
    let (src, mut wt) = release_history(&servers, "src.git", 10, 256 * 1024);
    let dst = servers.create_bare("dst.git");
    let slow_source = FaultProxy::start(servers.daemon.port);
    let slow_target = FaultProxy::start(servers.daemon.port);
    let toml = format!(
        "poll_interval_secs = 3600\n{}",
        repo("app", &slow_source.url("src.git"), &slow_target.url("dst.git"), "")
    );
    let stack = Stack::deploy(Deploy::new(SCALE, toml)).await;
    let lease_ttl = Duration::from_secs_f64(90.0 / SCALE);
    for (phase, proxy) in [("fetch", &slow_source), ("push", &slow_target)] {
        proxy.set(Plan {
            delay_per_chunk: Some(Duration::from_millis(20)),
            ..Plan::default()
        });
        if phase == "push" {
            wt.commit_file("more.bin", &harness::pseudo_random_bytes(1 << 20, 99), "more");
            wt.push_all();
        }
        // Start the sync (the reconciliation request, then a manual one) and kill it once it
        // is under way.
        if phase == "fetch" {
            stack.poll_tick().await;
        } else {
            gitferry_core::queue::Queue::send(
                &gitferry_aws::SqsQueue::new(stack.sqs.clone(), stack.queue_url.clone()),
                &[gitferry_core::request::SyncRequest::manual("app", "test")],
            )
            .await
            .unwrap();
        }
        let killed_at = std::sync::Mutex::new(None);
        let _ = stack
            .run_until(Duration::from_secs(30), false, || async {
                if killed_at.lock().unwrap().is_none()
                    && let Some(s) = stack.status("app").await
                    && s.state == State::Syncing
                {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    stack.kill_sync();
                    *killed_at.lock().unwrap() = Some(std::time::Instant::now());
                }
                killed_at.lock().unwrap().is_some()
            })
            .await;
        let killed_at = killed_at.lock().unwrap().expect("the sync was started and killed");
        // The status tells the truth within a lease TTL.
        let mut seen = None;
        while killed_at.elapsed() < lease_ttl * 3 {
            let s = stack.status("app").await.unwrap();
            if s.state == State::Stalled {
                seen = Some(killed_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stalled_after = seen.unwrap_or_else(|| panic!("{phase}: never read as stalled"));
        println!(
            "killed mid-{phase}: `stalled` after {:.1} deployed s (lease TTL 90 s)",
            stalled_after.as_secs_f64() * SCALE
        );
        assert!(
            stalled_after <= lease_ttl + Duration::from_millis(500),
            "{stalled_after:?}"
        );
        proxy.clear();
        // Converged: the target equals the source and the status says so (a push killed after
        // its pack was sent may still land; the status needs the redelivered request).
        let converged = stack
            .run_until(stack.esm.visibility * 3, false, || async {
                refs_match(&src, &dst) && stack.status("app").await.is_some_and(|s| s.state == State::Success)
            })
            .await;
        if let Err(t) = converged {
            let logs = stack.log_lines("sync", "");
            panic!(
                "{phase}: no convergence after {t:?}: {:?}\n{:?}\n{}",
                stack.sync_runs(),
                stack.status("app").await,
                logs[logs.len().saturating_sub(80)..].join("\n")
            )
        }
        println!(
            "killed mid-{phase}: converged, status success, {:.1} deployed minutes after the kill (visibility {} s)",
            deployed_minutes(killed_at.elapsed(), SCALE),
            (stack.esm.visibility.as_secs_f64() * SCALE).round()
        );
        assert_refs_equal(&src, &dst);
        assert_fsck_clean(&dst);
    }
}

/// 200 repositories due in the same tick, one of them a source that accepts connections and
/// never answers: the other 199 are enqueued by that same tick, which ends inside the poll
/// function's time limit (the probe timeout alone would exceed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_stalled_source_among_200_due_repos_delays_nobody() {
    let servers = Servers::start();
    let src = servers.create_bare("src.git");
    Worktree::new(&src).build_history();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    // Every repo is due every minute; a probe may wait 60 s — the poll function's whole limit.
    let mut toml = String::from("poll_interval_secs = 60\nprobe_timeout_secs = 60\n");
    for i in 0..199 {
        toml.push_str(&repo(
            &format!("r{i:03}"),
            &servers.url(Proto::GitDaemon, "src.git"),
            &format!("/tmp/nowhere/{i}.git"),
            "",
        ));
    }
    toml.push_str(&repo(
        "stalled",
        &format!("git://127.0.0.1:{silent_port}/x.git"),
        "/tmp/nowhere/x.git",
        "",
    ));
    // Far less compressed than the others: this tick is measured against its limit, and what
    // it waits for does not shrink with the scale — the process start-up, and moto, whose SQS
    // FIFO send slows down as the queue fills (measured here: 30 ms a message with 200 queued;
    // SQS itself does not).
    let scale = 3.0;
    let stack = Stack::deploy(Deploy::new(scale, toml.clone())).await;
    // This configuration was reconciled already: only the poller's own requests count.
    let digest = gitferry_core::config::Config::digest(&toml);
    stack
        .store
        .put(
            &gitferry_core::keys::config_seen(&digest),
            b"0".to_vec(),
            gitferry_core::store::Condition::Always,
        )
        .await
        .unwrap();
    let tick = stack.poll_tick().await;
    let limit = Duration::from_secs_f64(60.0 / scale);
    println!(
        "a tick over 200 due repos, one stalled: {:?} (limit {limit:?}): {:?}",
        tick.duration, tick.outcome
    );
    let harness::lambda_rt::Outcome::Response(result) = &tick.outcome else {
        panic!(
            "the tick did not finish: {:?}\n{}",
            tick.outcome,
            stack.log_lines("poll", "").join("\n")
        )
    };
    assert_eq!(result["probed"], 200, "{result}");
    assert_eq!(result["timed_out"], 1, "{result}");
    let (visible, _, _) = stack.queue_depths().await;
    assert_eq!(visible, 199, "the other 199 were enqueued by this tick: {result}");
    drop(silent);
}
