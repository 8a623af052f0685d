//! Metrics: one API, two sinks.
//!
//! * On Lambda, CloudWatch Embedded Metric Format: one JSON line per measurement on stdout,
//!   which CloudWatch turns into metrics without any API call (no PutMetricData cost or
//!   latency). Only low-cardinality labels become dimensions (`Outcome`, `Trigger`, `Code`);
//!   the repository is a property, searchable in Logs Insights — a dimension per repository
//!   would cost a custom metric per repo and blow the cost model.
//! * Locally, Prometheus text exposition at `/metrics`, with every label (repo included).
//!
//! [`CATALOGUE`] lists every metric the code emits; the dashboard and alarms of `template.yaml`
//! are checked against it so they cannot drift.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "gitferry";

/// A metric's unit (EMF names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Bytes,
    /// A count that is a level, not an increment (Prometheus: the last value).
    Gauge,
}

impl Unit {
    fn emf(self) -> &'static str {
        match self {
            Unit::Count | Unit::Gauge => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Bytes => "Bytes",
        }
    }
}

/// A metric definition.
#[derive(Debug)]
pub struct Def {
    /// CloudWatch name (the Prometheus name is derived: `gitferry_` + snake case).
    pub name: &'static str,
    pub unit: Unit,
    /// Labels that are CloudWatch dimensions (each a separate dimension set, plus none).
    pub dimensions: &'static [&'static str],
    pub help: &'static str,
}

pub const SYNCS: Def = Def {
    name: "Syncs",
    unit: Unit::Count,
    dimensions: &["Outcome", "Trigger"],
    help: "Syncs finished, by outcome (success, failed, noop, skipped) and trigger",
};
pub const SYNC_DURATION: Def = Def {
    name: "SyncDuration",
    unit: Unit::Milliseconds,
    dimensions: &["Outcome"],
    help: "Duration of syncs that did work",
};
pub const REFS_CHANGED: Def = Def {
    name: "RefsChanged",
    unit: Unit::Count,
    dimensions: &[],
    help: "Refs created, updated or deleted on targets",
};
pub const BYTES_FETCHED: Def = Def {
    name: "BytesFetched",
    unit: Unit::Bytes,
    dimensions: &[],
    help: "Pack bytes received from sources",
};
pub const BYTES_PUSHED: Def = Def {
    name: "BytesPushed",
    unit: Unit::Bytes,
    dimensions: &[],
    help: "Pack bytes sent to targets",
};
pub const QUEUE_LAG: Def = Def {
    name: "QueueLag",
    unit: Unit::Milliseconds,
    dimensions: &["Trigger"],
    help: "Time from enqueue to the start of the sync",
};
pub const LEASE_RECLAIMS: Def = Def {
    name: "LeaseReclaims",
    unit: Unit::Count,
    dimensions: &[],
    help: "Leases taken over from workers whose heartbeat stopped",
};
pub const WEBHOOK_RESPONSES: Def = Def {
    name: "WebhookResponses",
    unit: Unit::Count,
    dimensions: &["Code"],
    help: "Webhook deliveries answered, by HTTP status code",
};
pub const NOTIFICATIONS_FAILED: Def = Def {
    name: "NotificationsFailed",
    unit: Unit::Count,
    dimensions: &[],
    help: "Notifications that could not be delivered",
};
/// Emitted by every poll tick that ran to the end, 0 when all is well: its sample count is the
/// poller's heartbeat, its maximum the repos not confirmed mirrored for too long
/// (`stale_after_intervals`). One metric for both keeps the custom-metric bill flat.
pub const STALE_REPOS: Def = Def {
    name: "StaleRepos",
    unit: Unit::Gauge,
    dimensions: &[],
    help: "Polled repositories not confirmed mirrored within stale_after_intervals poll intervals (one sample per poll tick)",
};

/// Every metric the code emits.
pub const CATALOGUE: &[&Def] = &[
    &SYNCS,
    &SYNC_DURATION,
    &REFS_CHANGED,
    &BYTES_FETCHED,
    &BYTES_PUSHED,
    &QUEUE_LAG,
    &LEASE_RECLAIMS,
    &WEBHOOK_RESPONSES,
    &NOTIFICATIONS_FAILED,
    &STALE_REPOS,
];

/// Where measurements go.
pub trait Sink: Send + Sync + std::fmt::Debug {
    fn record(&self, def: &'static Def, value: f64, labels: &[(&'static str, &str)]);
}

/// The metrics API the rest of gitferry uses.
#[derive(Clone, Debug)]
pub struct Metrics {
    sink: Arc<dyn Sink>,
}

impl Metrics {
    pub fn new(sink: Arc<dyn Sink>) -> Metrics {
        Metrics { sink }
    }

    /// Metrics that go nowhere.
    pub fn discard() -> Metrics {
        Metrics::new(Arc::new(Discard))
    }

    pub fn record(&self, def: &'static Def, value: f64, labels: &[(&'static str, &str)]) {
        self.sink.record(def, value, labels);
    }

    pub fn sync(&self, repo: &str, trigger: &str, outcome: &str) {
        self.record(
            &SYNCS,
            1.0,
            &[("Repo", repo), ("Trigger", trigger), ("Outcome", outcome)],
        );
    }

    /// What a sync that did work moved; its duration unless it did not finish (`None`:
    /// interrupted, counted when its continuation finishes).
    pub fn sync_work(
        &self,
        repo: &str,
        outcome: Option<&str>,
        duration_ms: u64,
        refs_changed: usize,
        fetched: u64,
        pushed: u64,
    ) {
        if let Some(outcome) = outcome {
            self.record(
                &SYNC_DURATION,
                duration_ms as f64,
                &[("Repo", repo), ("Outcome", outcome)],
            );
        }
        self.record(&REFS_CHANGED, refs_changed as f64, &[("Repo", repo)]);
        self.record(&BYTES_FETCHED, fetched as f64, &[("Repo", repo)]);
        self.record(&BYTES_PUSHED, pushed as f64, &[("Repo", repo)]);
    }

    pub fn queue_lag(&self, repo: &str, trigger: &str, lag_ms: u64) {
        self.record(&QUEUE_LAG, lag_ms as f64, &[("Repo", repo), ("Trigger", trigger)]);
    }

    pub fn lease_reclaimed(&self, repo: &str) {
        self.record(&LEASE_RECLAIMS, 1.0, &[("Repo", repo)]);
    }

    pub fn webhook_response(&self, provider: &str, code: u16) {
        self.record(
            &WEBHOOK_RESPONSES,
            1.0,
            &[("Provider", provider), ("Code", &code.to_string())],
        );
    }

    pub fn notification_failed(&self, repo: &str) {
        self.record(&NOTIFICATIONS_FAILED, 1.0, &[("Repo", repo)]);
    }

    /// Once per finished poll tick.
    pub fn stale_repos(&self, n: usize) {
        self.record(&STALE_REPOS, n as f64, &[]);
    }
}

#[derive(Debug)]
struct Discard;

impl Sink for Discard {
    fn record(&self, _: &'static Def, _: f64, _: &[(&'static str, &str)]) {}
}

/// CloudWatch Embedded Metric Format lines, written to a writer (stdout on Lambda).
pub struct Emf {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Emf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Emf")
    }
}

impl Emf {
    pub fn stdout() -> Emf {
        Emf::new(Box::new(std::io::stdout()))
    }

    pub fn new(out: Box<dyn Write + Send>) -> Emf {
        Emf { out: Mutex::new(out) }
    }

    /// The EMF document for one measurement.
    pub fn document(def: &Def, value: f64, labels: &[(&'static str, &str)], timestamp_ms: u64) -> serde_json::Value {
        let present: Vec<&str> = def
            .dimensions
            .iter()
            .copied()
            .filter(|d| labels.iter().any(|(k, _)| k == d))
            .collect();
        let mut dimension_sets: Vec<Vec<&str>> = vec![vec![]];
        dimension_sets.extend(present.iter().map(|d| vec![*d]));
        let mut doc = serde_json::json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": dimension_sets,
                    "Metrics": [{ "Name": def.name, "Unit": def.unit.emf() }],
                }],
            },
        });
        for (k, v) in labels {
            doc[*k] = serde_json::Value::String((*v).to_owned());
        }
        doc[def.name] = value.into();
        doc
    }
}

impl Sink for Emf {
    fn record(&self, def: &'static Def, value: f64, labels: &[(&'static str, &str)]) {
        let line = Emf::document(def, value, labels, crate::clock::now_ms()).to_string();
        let mut out = self.out.lock().expect("not poisoned");
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Repositories by state as readers see them (a dead worker's `syncing` reads `stalled`), as
/// a Prometheus gauge: read from the statuses at scrape time, never stored.
pub fn repository_states(statuses: &[crate::status::RepoStatus]) -> String {
    use crate::status::State;
    let mut out = String::from(
        "# HELP gitferry_repositories Repositories by state (stalled: the worker syncing it stopped heartbeating)\n\
         # TYPE gitferry_repositories gauge\n",
    );
    for state in [
        State::New,
        State::Syncing,
        State::Success,
        State::Failed,
        State::Interrupted,
        State::Stalled,
    ] {
        let n = statuses.iter().filter(|s| s.state == state).count();
        out.push_str(&format!("gitferry_repositories{{state=\"{}\"}} {n}\n", state.as_str()));
    }
    out
}

/// Sorted `(label, value)` pairs.
type Labels = Vec<(String, String)>;

/// An in-process registry rendered as Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Prometheus {
    series: Mutex<BTreeMap<(String, Labels), Series>>,
}

#[derive(Debug, Default, Clone)]
struct Series {
    sum: f64,
    count: u64,
    buckets: Vec<u64>,
}

/// Histogram buckets, in seconds, for millisecond metrics.
const BUCKETS_S: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

fn prom_name(def: &Def) -> String {
    let mut out = String::from("gitferry_");
    for (i, c) in def.name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    match def.unit {
        Unit::Milliseconds => out.push_str("_seconds"),
        Unit::Bytes => out.push_str("_bytes_total"),
        Unit::Count => out.push_str("_total"),
        Unit::Gauge => {}
    }
    out
}

impl Prometheus {
    pub fn new() -> Prometheus {
        Prometheus::default()
    }

    /// The text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let series = self.series.lock().expect("not poisoned");
        let mut out = String::new();
        for def in CATALOGUE {
            let name = prom_name(def);
            let mine: Vec<_> = series.iter().filter(|((n, _), _)| *n == name).collect();
            if mine.is_empty() {
                continue;
            }
            let histogram = def.unit == Unit::Milliseconds;
            out.push_str(&format!("# HELP {name} {}\n", def.help));
            out.push_str(&format!(
                "# TYPE {name} {}\n",
                match def.unit {
                    Unit::Milliseconds => "histogram",
                    Unit::Gauge => "gauge",
                    _ => "counter",
                }
            ));
            for ((_, labels), s) in mine {
                let render = |extra: Option<(&str, String)>| {
                    let mut all: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                    if let Some((k, v)) = extra {
                        all.push(format!("{k}=\"{v}\""));
                    }
                    if all.is_empty() {
                        String::new()
                    } else {
                        format!("{{{}}}", all.join(","))
                    }
                };
                if histogram {
                    for (i, le) in BUCKETS_S.iter().enumerate() {
                        out.push_str(&format!(
                            "{name}_bucket{} {}\n",
                            render(Some(("le", le.to_string()))),
                            s.buckets[i]
                        ));
                    }
                    out.push_str(&format!(
                        "{name}_bucket{} {}\n",
                        render(Some(("le", "+Inf".into()))),
                        s.count
                    ));
                    out.push_str(&format!("{name}_sum{} {}\n", render(None), s.sum));
                    out.push_str(&format!("{name}_count{} {}\n", render(None), s.count));
                } else {
                    out.push_str(&format!("{name}{} {}\n", render(None), s.sum));
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Sink for Prometheus {
    fn record(&self, def: &'static Def, value: f64, labels: &[(&'static str, &str)]) {
        let mut key_labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        key_labels.sort();
        let mut series = self.series.lock().expect("not poisoned");
        let s = series.entry((prom_name(def), key_labels)).or_insert_with(|| Series {
            buckets: vec![0; BUCKETS_S.len()],
            ..Default::default()
        });
        if def.unit == Unit::Milliseconds {
            let secs = value / 1000.0;
            s.sum += secs;
            s.count += 1;
            for (i, le) in BUCKETS_S.iter().enumerate() {
                if secs <= *le {
                    s.buckets[i] += 1;
                }
            }
        } else if def.unit == Unit::Gauge {
            s.sum = value;
            s.count += 1;
        } else {
            s.sum += value;
            s.count += 1;
        }
    }
}

/// Records everything in memory (tests).
#[derive(Debug, Default)]
pub struct Recorder {
    pub records: Mutex<Vec<(String, f64, Labels)>>,
}

impl Recorder {
    /// Sum of a metric's values whose labels include all of `filter`.
    pub fn total(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.records
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(n, _, labels)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v, _)| v)
            .sum()
    }
}

impl Sink for Recorder {
    fn record(&self, def: &'static Def, value: f64, labels: &[(&'static str, &str)]) {
        self.records.lock().expect("not poisoned").push((
            def.name.to_owned(),
            value,
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_documents_have_low_cardinality_dimensions_only() {
        let doc = Emf::document(
            &SYNCS,
            1.0,
            &[("Repo", "app"), ("Trigger", "webhook"), ("Outcome", "success")],
            5,
        );
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "gitferry");
        assert_eq!(cw["Metrics"][0]["Name"], "Syncs");
        let dims = cw["Dimensions"].to_string();
        assert!(
            dims.contains("Outcome") && dims.contains("Trigger") && !dims.contains("Repo"),
            "{dims}"
        );
        assert_eq!(doc["Repo"], "app", "the repo is a property");
        assert_eq!(doc["Syncs"], 1.0);
    }

    #[test]
    fn prometheus_text_exposition() {
        let p = Arc::new(Prometheus::new());
        let m = Metrics::new(p.clone());
        m.sync("app", "webhook", "success");
        m.sync("app", "webhook", "success");
        m.sync_work("app", Some("success"), 1500, 3, 100, 200);
        let text = p.render();
        assert!(text.contains("# TYPE gitferry_syncs_total counter"), "{text}");
        assert!(
            text.contains("gitferry_syncs_total{outcome=\"success\",repo=\"app\",trigger=\"webhook\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("gitferry_sync_duration_seconds_bucket{outcome=\"success\",repo=\"app\",le=\"2.5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gitferry_sync_duration_seconds_count{outcome=\"success\",repo=\"app\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gitferry_bytes_pushed_bytes_total{repo=\"app\"} 200"),
            "{text}"
        );
    }
}
