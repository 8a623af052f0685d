//! Evaluate the CloudWatch alarms that `template.yaml` defines over the metrics the code emits.
//!
//! An alarm that exists is not an alarm that works: a dimension the code never emits, a period
//! that cannot see the datapoints, `TreatMissingData` that hides silence, a `FILL` that turns
//! "nothing happened" into "all good" — all deploy cleanly and never fire. So gitferry tests its
//! alarms by *evaluating their definitions*: this module reads every `AWS::CloudWatch::Alarm` of
//! the template (resolving `!Ref`, `!If`, `!GetAtt`, `!Sub`… against parameter values), collects
//! the datapoints the functions printed as CloudWatch Embedded Metric Format lines (plus samples
//! the harness takes of AWS metrics, e.g. `AWS/SQS`), and computes the state CloudWatch would
//! give the alarm at a given time. Tests then assert "after 15 quiet minutes the watchdog is in
//! ALARM, one successful sync brings it back to OK" against what will actually be deployed.
//!
//! Time can be compressed: every `Period` of the template is divided by [`EvalOptions::scale`]
//! (a 60 s period runs as 2 s with scale 30), and so is the evaluation cadence (every minute).
//!
//! The CloudWatch semantics implemented, their sources, and what is not supported are listed in
//! `alarms.md` next to this file. In short:
//!
//! * a metric is (namespace, name, exact dimension set); statistics `SampleCount`, `Average`,
//!   `Sum`, `Minimum`, `Maximum`;
//! * alarms are evaluated every minute (every 10 s for periods under a minute) over the periods
//!   that end at that instant; the current, incomplete minute is not used;
//! * the evaluation range is `EvaluationPeriods + 2` periods (the documented examples), and
//!   missing datapoints follow the documented rules of `missing`, `ignore`, `breaching` and
//!   `notBreaching`, including the "premature ALARM" rule;
//! * metric math: numbers, ids, `+ - * / ^`, comparisons, `AND`/`&&`, `OR`/`||`, `NOT`, and
//!   `FILL`, `IF`, `MAX`, `MIN`, `SUM`, `AVG`, `ABS`, `CEIL`, `FLOOR`, `TIME_SERIES`.
//!
//! Nothing here panics on bad input: templates, alarms and expressions that cannot be evaluated
//! are reported as `Err` naming the alarm and the field, when the template is read.
//!
//! ```ignore
//! let tpl = Template::load(path, &BTreeMap::new(), &attrs)?;
//! let watchdog = tpl.alarm("WatchdogAlarm")?;
//! let mut store = MetricStore::new();
//! for line in captured_stdout.lines() {
//!     store.ingest_emf_line(line);
//! }
//! let opts = EvalOptions::scaled(30.0);
//! let times = watchdog.evaluation_times(start_ms, end_ms, &opts);
//! let states = watchdog.timeline(&store, &times, &opts);
//! println!("{}", describe_timeline(start_ms, &states));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

// ==== states and options =======================================================================

/// The state of a metric alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlarmState {
    Ok,
    Alarm,
    /// Also the state of an alarm that was never evaluated.
    InsufficientData,
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        })
    }
}

/// What `FILL(m, value)` yields when `m` has no datapoint at all in the evaluation range.
///
/// AWS documents that FILL fills the missing values of a time series, including the most recent
/// periods that have no data yet, but not what it does for a series without any datapoint.
/// Alarms should be written to behave under both readings; tests can check that with this switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyFill {
    /// Every period of the range gets the fill value (the default).
    Fill,
    /// The result stays empty: the alarm sees missing data.
    NoData,
}

/// How alarms are evaluated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalOptions {
    /// Every period (and the evaluation cadence) of the template is divided by this. A value
    /// that is not a positive finite number is treated as 1.
    pub scale: f64,
    /// Datapoints retrieved beyond `EvaluationPeriods` (the evaluation range is
    /// `EvaluationPeriods + extra_datapoints`). AWS does not document the exact number; its
    /// examples use 2 (3 evaluation periods, 5 datapoints).
    pub extra_datapoints: usize,
    /// See [`EmptyFill`].
    pub empty_fill: EmptyFill,
    /// `false` (default): evaluate every minute (every 10 s for periods under a minute), as
    /// CloudWatch documents, so a 5-minute period slides by one minute. `true`: evaluate once
    /// per period, windows aligned to multiples of the period since the epoch.
    pub period_aligned: bool,
}

impl Default for EvalOptions {
    fn default() -> EvalOptions {
        EvalOptions {
            scale: 1.0,
            extra_datapoints: 2,
            empty_fill: EmptyFill::Fill,
            period_aligned: false,
        }
    }
}

impl EvalOptions {
    /// The defaults with time compressed by `scale`.
    pub fn scaled(scale: f64) -> EvalOptions {
        EvalOptions {
            scale,
            ..EvalOptions::default()
        }
    }

    fn effective_scale(&self) -> f64 {
        if self.scale.is_finite() && self.scale > 0.0 {
            self.scale
        } else {
            1.0
        }
    }

    /// `seconds` of template time as milliseconds of scaled time (at least 1).
    fn scaled_ms(&self, seconds: u64) -> u64 {
        let ms = seconds as f64 * 1000.0 / self.effective_scale();
        if ms >= 1.0 { ms.round() as u64 } else { 1 }
    }
}

// ==== metrics ==================================================================================

/// A CloudWatch metric: namespace, name and the exact set of dimensions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricId {
    pub namespace: String,
    pub name: String,
    pub dimensions: BTreeMap<String, String>,
}

impl MetricId {
    pub fn new(namespace: &str, name: &str, dims: &[(&str, &str)]) -> MetricId {
        MetricId {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            dimensions: dims.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }
}

impl fmt::Display for MetricId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dimensions.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{}/{}{{{}}}", self.namespace, self.name, dims.join(","))
    }
}

#[derive(Clone, Debug)]
struct Sample {
    ts_ms: u64,
    value: f64,
    /// The EMF unit ("None" when the document gives none); `None` for [`MetricStore::put`].
    unit: Option<String>,
}

/// Raw datapoints by metric, as CloudWatch would have received them.
#[derive(Clone, Debug, Default)]
pub struct MetricStore {
    series: BTreeMap<MetricId, Vec<Sample>>,
}

impl MetricStore {
    pub fn new() -> MetricStore {
        MetricStore::default()
    }

    /// Records one datapoint of a metric that does not come from EMF (e.g. an `AWS/SQS` sample
    /// the harness takes). Non-finite values are dropped, as CloudWatch rejects them.
    pub fn put(&mut self, namespace: &str, name: &str, dims: &[(&str, &str)], timestamp_ms: u64, value: f64) {
        let sample = Sample {
            ts_ms: timestamp_ms,
            value,
            unit: None,
        };
        self.insert(MetricId::new(namespace, name, dims), sample);
    }

    /// Records the metrics of one EMF line. Returns false for lines that are not EMF documents
    /// (plain logs) and for EMF documents CloudWatch would reject (see
    /// [`MetricStore::try_ingest_emf_line`] for the reason).
    pub fn ingest_emf_line(&mut self, line: &str) -> bool {
        matches!(self.try_ingest_emf_line(line), Ok(n) if n > 0)
    }

    /// Records the metrics of one EMF line: `Ok(datapoints)`, `Ok(0)` for a line that is not an
    /// EMF document, `Err` for an EMF document that breaks the specification (nothing recorded).
    /// Text before the first `{` is skipped, as Lambda may prefix log lines.
    pub fn try_ingest_emf_line(&mut self, line: &str) -> Result<usize, String> {
        let Some(points) = parse_emf(line)? else { return Ok(0) };
        let n = points.len();
        for (id, sample) in points {
            self.insert(id, sample);
        }
        Ok(n)
    }

    /// Records every EMF line of `text`. Returns the number of datapoints, or every invalid EMF
    /// line (the valid ones are recorded anyway).
    pub fn ingest_emf_text(&mut self, text: &str) -> Result<usize, String> {
        let mut count = 0;
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            match self.try_ingest_emf_line(line) {
                Ok(n) => count += n,
                Err(e) => problems.push(format!("line {}: {e}", i + 1)),
            }
        }
        if problems.is_empty() {
            Ok(count)
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Every metric that has datapoints.
    pub fn metric_ids(&self) -> impl Iterator<Item = &MetricId> {
        self.series.keys()
    }

    /// The datapoints of a metric, `(timestamp_ms, value)` in time order.
    pub fn samples(&self, id: &MetricId) -> Vec<(u64, f64)> {
        self.series
            .get(id)
            .map_or_else(Vec::new, |s| s.iter().map(|x| (x.ts_ms, x.value)).collect())
    }

    fn insert(&mut self, id: MetricId, sample: Sample) {
        if !sample.value.is_finite() {
            return;
        }
        let samples = self.series.entry(id).or_default();
        let at = samples.partition_point(|s| s.ts_ms <= sample.ts_ms);
        samples.insert(at, sample);
    }

    /// Values in `[start_ms, end_ms)`, of `unit` when given (samples without a unit match any).
    fn values_in(&self, id: &MetricId, unit: Option<&str>, start_ms: u64, end_ms: u64) -> Vec<f64> {
        let Some(samples) = self.series.get(id) else {
            return Vec::new();
        };
        let from = samples.partition_point(|s| s.ts_ms < start_ms);
        let to = samples.partition_point(|s| s.ts_ms < end_ms);
        samples[from..to.max(from)]
            .iter()
            .filter(|s| match (unit, &s.unit) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .map(|s| s.value)
            .collect()
    }
}

type EmfPoints = Vec<(MetricId, Sample)>;

/// `Ok(None)`: not an EMF document. `Err`: an EMF document CloudWatch would reject.
fn parse_emf(line: &str) -> Result<Option<EmfPoints>, String> {
    let Some(start) = line.find('{') else { return Ok(None) };
    let Ok(doc) = serde_json::from_str::<Json>(line[start..].trim_end()) else {
        return Ok(None);
    };
    let Some(directives) = doc.get("_aws").and_then(|a| a.get("CloudWatchMetrics")) else {
        return Ok(None);
    };
    let timestamp = emf_timestamp(&doc)?;
    let directives = directives
        .as_array()
        .ok_or("EMF: _aws.CloudWatchMetrics is not an array")?;
    let mut points = Vec::new();
    for (i, directive) in directives.iter().enumerate() {
        emf_directive(&doc, directive, timestamp, &mut points)
            .map_err(|e| format!("EMF: _aws.CloudWatchMetrics[{i}]: {e}"))?;
    }
    Ok(Some(points))
}

fn emf_timestamp(doc: &Json) -> Result<u64, String> {
    let ts = doc["_aws"].get("Timestamp").ok_or("EMF: _aws.Timestamp is missing")?;
    match (ts.as_u64(), ts.as_f64()) {
        (Some(ms), _) => Ok(ms),
        (None, Some(ms)) if ms >= 0.0 && ms.is_finite() => Ok(ms as u64),
        _ => Err(format!("EMF: _aws.Timestamp {ts} is not a number of milliseconds")),
    }
}

fn emf_directive(doc: &Json, directive: &Json, ts_ms: u64, out: &mut EmfPoints) -> Result<(), String> {
    let namespace = directive
        .get("Namespace")
        .and_then(Json::as_str)
        .ok_or("Namespace is missing or not a string")?;
    let dimension_sets = emf_dimension_sets(doc, directive)?;
    let metrics = directive
        .get("Metrics")
        .and_then(Json::as_array)
        .ok_or("Metrics is missing or not an array")?;
    for metric in metrics {
        let name = metric
            .get("Name")
            .and_then(Json::as_str)
            .ok_or("a metric has no Name")?;
        let unit = match metric.get("Unit") {
            None => "None",
            Some(u) => u
                .as_str()
                .ok_or_else(|| format!("metric {name}: Unit is not a string"))?,
        };
        let values = emf_values(doc, name)?;
        for dimensions in &dimension_sets {
            let id = MetricId {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                dimensions: dimensions.clone(),
            };
            for value in &values {
                out.push((
                    id.clone(),
                    Sample {
                        ts_ms,
                        value: *value,
                        unit: Some(unit.to_owned()),
                    },
                ));
            }
        }
    }
    Ok(())
}

/// Each dimension set is its own metric; `[]` (no set at all) is taken as the dimensionless one.
fn emf_dimension_sets(doc: &Json, directive: &Json) -> Result<Vec<BTreeMap<String, String>>, String> {
    let sets = directive
        .get("Dimensions")
        .and_then(Json::as_array)
        .ok_or("Dimensions is missing or not an array")?;
    if sets.is_empty() {
        return Ok(vec![BTreeMap::new()]);
    }
    let mut out = Vec::new();
    for set in sets {
        let keys = set.as_array().ok_or("a dimension set is not an array")?;
        let mut dims = BTreeMap::new();
        for key in keys {
            let key = key.as_str().ok_or("a dimension key is not a string")?;
            let value = doc.get(key).and_then(Json::as_str);
            let value = value.ok_or_else(|| format!("dimension {key} has no string value on the root node"))?;
            dims.insert(key.to_owned(), value.to_owned());
        }
        out.push(dims);
    }
    Ok(out)
}

/// A metric target is a number or an array of numbers (each a sample).
fn emf_values(doc: &Json, name: &str) -> Result<Vec<f64>, String> {
    let bad = || format!("metric {name}: the root node has no number or array of numbers under {name:?}");
    match doc.get(name) {
        Some(Json::Number(n)) => Ok(vec![n.as_f64().ok_or_else(bad)?]),
        Some(Json::Array(items)) => items.iter().map(|v| v.as_f64().ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

// ==== alarm definitions ========================================================================

/// How datapoints of one period are aggregated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Statistic {
    SampleCount,
    Average,
    Sum,
    Minimum,
    Maximum,
}

impl Statistic {
    fn parse(s: &str) -> Result<Statistic, String> {
        Ok(match s {
            "SampleCount" => Statistic::SampleCount,
            "Average" => Statistic::Average,
            "Sum" => Statistic::Sum,
            "Minimum" => Statistic::Minimum,
            "Maximum" => Statistic::Maximum,
            other => {
                return Err(format!(
                    "statistic {other:?} is not supported (SampleCount, Average, Sum, Minimum, Maximum)"
                ));
            }
        })
    }

    fn apply(self, values: &[f64]) -> Option<f64> {
        if values.is_empty() {
            return None;
        }
        let sum: f64 = values.iter().sum();
        Some(match self {
            Statistic::SampleCount => values.len() as f64,
            Statistic::Sum => sum,
            Statistic::Average => sum / values.len() as f64,
            Statistic::Minimum => values.iter().copied().fold(f64::INFINITY, f64::min),
            Statistic::Maximum => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// `ComparisonOperator` of a static-threshold alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    GreaterThanOrEqualToThreshold,
    GreaterThanThreshold,
    LessThanThreshold,
    LessThanOrEqualToThreshold,
}

impl Comparison {
    fn parse(s: &str) -> Result<Comparison, String> {
        Ok(match s {
            "GreaterThanOrEqualToThreshold" => Comparison::GreaterThanOrEqualToThreshold,
            "GreaterThanThreshold" => Comparison::GreaterThanThreshold,
            "LessThanThreshold" => Comparison::LessThanThreshold,
            "LessThanOrEqualToThreshold" => Comparison::LessThanOrEqualToThreshold,
            other => {
                return Err(format!(
                    "ComparisonOperator {other:?} is not supported (static thresholds only)"
                ));
            }
        })
    }

    /// Whether a datapoint breaches the threshold.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterThanOrEqualToThreshold => value >= threshold,
            Comparison::GreaterThanThreshold => value > threshold,
            Comparison::LessThanThreshold => value < threshold,
            Comparison::LessThanOrEqualToThreshold => value <= threshold,
        }
    }
}

/// `TreatMissingData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreatMissingData {
    Missing,
    NotBreaching,
    Breaching,
    Ignore,
}

impl TreatMissingData {
    fn parse(s: &str) -> Result<TreatMissingData, String> {
        Ok(match s {
            "missing" => TreatMissingData::Missing,
            "notBreaching" => TreatMissingData::NotBreaching,
            "breaching" => TreatMissingData::Breaching,
            "ignore" => TreatMissingData::Ignore,
            other => {
                return Err(format!(
                    "TreatMissingData {other:?} is not one of missing, notBreaching, breaching, ignore"
                ));
            }
        })
    }
}

/// A metric with the statistic and period an alarm reads it with.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricStat {
    pub metric: MetricId,
    pub stat: Statistic,
    pub period_s: u64,
    /// Only datapoints of this unit count (EMF units; datapoints from `put` match any unit).
    pub unit: Option<String>,
}

/// One entry of a metric-math alarm's `Metrics`.
#[derive(Clone, Debug)]
pub struct Query {
    pub id: String,
    pub label: Option<String>,
    pub return_data: bool,
    /// Set for a `MetricStat` entry.
    pub metric: Option<MetricStat>,
    /// Set for an `Expression` entry (the text as written).
    pub expression: Option<String>,
    expr: Option<Node>,
}

/// What an alarm watches.
#[derive(Clone, Debug)]
pub enum Source {
    /// `Namespace`, `MetricName`, `Dimensions`, `Statistic`, `Period` on the alarm.
    Metric(MetricStat),
    /// `Metrics`; `result` is the id of the entry with `ReturnData: true`.
    Math { queries: Vec<Query>, result: String },
}

/// An alarm of the template, ready to evaluate.
#[derive(Clone, Debug)]
pub struct Alarm {
    /// The logical id in the template.
    pub id: String,
    /// `AlarmName`, if the template sets one.
    pub name: Option<String>,
    pub source: Source,
    /// Seconds, unscaled.
    pub period_s: u64,
    pub evaluation_periods: usize,
    pub datapoints_to_alarm: usize,
    pub threshold: f64,
    pub comparison: Comparison,
    pub treat_missing_data: TreatMissingData,
    /// Query indices, each after the ones it refers to (metric math only).
    order: Vec<usize>,
}

// ==== evaluation ===============================================================================

/// The periods of one evaluation, oldest first: `[start, start + period)` in scaled ms.
struct Grid {
    starts: Vec<i128>,
    period_ms: i128,
}

impl Alarm {
    /// The metrics the alarm reads.
    pub fn metrics(&self) -> Vec<&MetricId> {
        match &self.source {
            Source::Metric(stat) => vec![&stat.metric],
            Source::Math { queries, .. } => queries
                .iter()
                .filter_map(|q| q.metric.as_ref().map(|m| &m.metric))
                .collect(),
        }
    }

    /// The state at `now_ms` of an alarm that was `INSUFFICIENT_DATA` before (a new alarm),
    /// periods divided by `scale`. Use [`Alarm::evaluate_from`] or [`Alarm::timeline`] for
    /// `TreatMissingData: ignore`, which keeps the previous state.
    pub fn evaluate(&self, store: &MetricStore, now_ms: u64, scale: f64) -> AlarmState {
        self.evaluate_from(store, now_ms, &EvalOptions::scaled(scale), AlarmState::InsufficientData)
    }

    /// The state at `now_ms` (as of the last evaluation instant at or before it) given the
    /// state the alarm was in before.
    pub fn evaluate_from(
        &self,
        store: &MetricStore,
        now_ms: u64,
        opts: &EvalOptions,
        previous: AlarmState,
    ) -> AlarmState {
        let points = self.datapoints(store, now_ms, opts);
        let breaches = |v: f64| self.comparison.breaches(v, self.threshold);
        decide(
            &points,
            self.evaluation_periods,
            self.datapoints_to_alarm,
            self.treatment(),
            previous,
            breaches,
        )
    }

    /// The datapoints of the evaluation range at `now_ms`, oldest first (`None`: missing).
    pub fn datapoints(&self, store: &MetricStore, now_ms: u64, opts: &EvalOptions) -> Vec<Option<f64>> {
        let grid = self.grid(now_ms, opts);
        match &self.source {
            Source::Metric(stat) => metric_points(store, stat, &grid),
            Source::Math { queries, result } => self.math_points(queries, result, store, &grid, opts),
        }
    }

    /// The instants in `[from_ms, to_ms]` at which CloudWatch evaluates the alarm.
    pub fn evaluation_times(&self, from_ms: u64, to_ms: u64, opts: &EvalOptions) -> Vec<u64> {
        let tick = self.tick_ms(opts);
        let first = from_ms.div_ceil(tick).saturating_mul(tick);
        let mut out = Vec::new();
        let mut t = first;
        while t <= to_ms {
            out.push(t);
            match t.checked_add(tick) {
                Some(next) => t = next,
                None => break,
            }
        }
        out
    }

    /// The state at each of `times_ms` (ascending), carrying the state from one evaluation to
    /// the next as CloudWatch does; the alarm starts as `INSUFFICIENT_DATA`.
    pub fn timeline(&self, store: &MetricStore, times_ms: &[u64], opts: &EvalOptions) -> Vec<(u64, AlarmState)> {
        let mut state = AlarmState::InsufficientData;
        times_ms
            .iter()
            .map(|&t| {
                state = self.evaluate_from(store, t, opts, state);
                (t, state)
            })
            .collect()
    }

    /// Alarms on `AWS/DynamoDB` metrics always ignore missing data (documented exception).
    fn treatment(&self) -> TreatMissingData {
        if self.metrics().iter().any(|m| m.namespace == "AWS/DynamoDB") {
            TreatMissingData::Ignore
        } else {
            self.treat_missing_data
        }
    }

    fn tick_ms(&self, opts: &EvalOptions) -> u64 {
        if opts.period_aligned {
            opts.scaled_ms(self.period_s)
        } else {
            opts.scaled_ms(if self.period_s < 60 { 10 } else { 60 })
        }
    }

    fn grid(&self, now_ms: u64, opts: &EvalOptions) -> Grid {
        let period_ms = i128::from(opts.scaled_ms(self.period_s));
        let tick = i128::from(self.tick_ms(opts));
        let end = i128::from(now_ms) / tick * tick;
        let range = self.evaluation_periods + opts.extra_datapoints;
        let starts = (0..range).map(|i| end - (range - i) as i128 * period_ms).collect();
        Grid { starts, period_ms }
    }

    fn math_points(
        &self,
        queries: &[Query],
        result: &str,
        store: &MetricStore,
        grid: &Grid,
        opts: &EvalOptions,
    ) -> Vec<Option<f64>> {
        let n = grid.starts.len();
        let mut values: BTreeMap<&str, Val> = BTreeMap::new();
        for &i in &self.order {
            let query = &queries[i];
            let value = match (&query.metric, &query.expr) {
                (Some(stat), _) => Val::Series(metric_points(store, stat, grid)),
                (None, Some(expr)) => eval(
                    expr,
                    &Ctx {
                        values: &values,
                        n,
                        empty_fill: opts.empty_fill,
                    },
                ),
                (None, None) => Val::Series(vec![None; n]),
            };
            values.insert(query.id.as_str(), value);
        }
        match values.remove(result) {
            Some(Val::Series(points)) => points,
            _ => vec![None; n],
        }
    }
}

fn metric_points(store: &MetricStore, stat: &MetricStat, grid: &Grid) -> Vec<Option<f64>> {
    grid.starts
        .iter()
        .map(|&start| {
            let end = start + grid.period_ms;
            if end <= 0 {
                return None;
            }
            let (lo, hi) = (start.max(0) as u64, end.min(i128::from(u64::MAX)) as u64);
            stat.stat
                .apply(&store.values_in(&stat.metric, stat.unit.as_deref(), lo, hi))
        })
        .collect()
}

/// The alarm state from the datapoints of the evaluation range (oldest first), following
/// "How alarm state is evaluated when data is missing" of the CloudWatch User Guide.
fn decide(
    points: &[Option<f64>],
    n: usize,
    m: usize,
    treat: TreatMissingData,
    previous: AlarmState,
    breaches: impl Fn(f64) -> bool,
) -> AlarmState {
    // (age, breaching) of the real datapoints, newest first; age 1 is the most recent period.
    let real: Vec<(usize, bool)> = points
        .iter()
        .rev()
        .enumerate()
        .filter_map(|(i, p)| p.map(|v| (i + 1, breaches(v))))
        .collect();
    let verdict = |breaching: usize| {
        if breaching >= m {
            AlarmState::Alarm
        } else {
            AlarmState::Ok
        }
    };
    if real.len() >= n {
        // Enough real datapoints: the most recent N of them, however far back.
        return verdict(real[..n].iter().filter(|(_, b)| *b).count());
    }
    let breaching = real.iter().filter(|(_, b)| *b).count();
    let filled = n - real.len();
    match treat {
        TreatMissingData::Breaching => verdict(breaching + filled),
        TreatMissingData::NotBreaching => verdict(breaching),
        TreatMissingData::Missing | TreatMissingData::Ignore => {
            let undecided = if treat == TreatMissingData::Missing {
                AlarmState::InsufficientData
            } else {
                previous
            };
            if breaching >= m {
                AlarmState::Alarm
            } else if real.is_empty() {
                undecided
            } else if breaching < real.len() {
                AlarmState::Ok
            } else if treat == TreatMissingData::Missing && real.last().is_some_and(|(age, _)| *age >= m) {
                // Premature-ALARM rule: only breaching data, the oldest at least M periods old.
                AlarmState::Alarm
            } else {
                undecided
            }
        }
    }
}

/// Only the entries of a timeline where the state changed (and the first one).
pub fn transitions(timeline: &[(u64, AlarmState)]) -> Vec<(u64, AlarmState)> {
    let mut out: Vec<(u64, AlarmState)> = Vec::new();
    for &(t, s) in timeline {
        if out.last().is_none_or(|(_, last)| *last != s) {
            out.push((t, s));
        }
    }
    out
}

/// A timeline's transitions as text, times relative to `start_ms`:
/// `+0.000s INSUFFICIENT_DATA, +2.000s ALARM, +4.000s OK`.
pub fn describe_timeline(start_ms: u64, timeline: &[(u64, AlarmState)]) -> String {
    transitions(timeline)
        .iter()
        .map(|(t, s)| {
            let rel = *t as i128 - start_ms as i128;
            let sign = if rel < 0 { "-" } else { "+" };
            format!("{sign}{}.{:03}s {s}", rel.abs() / 1000, rel.abs() % 1000)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ==== metric math: syntax ======================================================================

#[derive(Clone, Copy, Debug, PartialEq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Func {
    Fill,
    If,
    Max,
    Min,
    Sum,
    Avg,
    Abs,
    Ceil,
    Floor,
    TimeSeries,
}

impl Func {
    fn from_name(name: &str) -> Option<(Func, usize, usize)> {
        Some(match name {
            "FILL" => (Func::Fill, 2, 2),
            "IF" => (Func::If, 2, 3),
            "MAX" => (Func::Max, 1, 1),
            "MIN" => (Func::Min, 1, 1),
            "SUM" => (Func::Sum, 1, 1),
            "AVG" => (Func::Avg, 1, 1),
            "ABS" => (Func::Abs, 1, 1),
            "CEIL" => (Func::Ceil, 1, 1),
            "FLOOR" => (Func::Floor, 1, 1),
            "TIME_SERIES" => (Func::TimeSeries, 1, 1),
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FillMode {
    Repeat,
    Linear,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Num(f64),
    Id(String),
    Mode(FillMode),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Word(String),
    Sym(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let (value, next) = number_token(&chars, i)?;
            out.push(Tok::Num(value));
            i = next;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let (sym, len) = symbol_token(&chars[i..]).ok_or_else(|| format!("unexpected character {c:?}"))?;
            out.push(Tok::Sym(sym));
            i += len;
        }
    }
    Ok(out)
}

fn number_token(chars: &[char], start: usize) -> Result<(f64, usize), String> {
    let mut i = start;
    while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
        i += 1;
    }
    if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
        let mut j = i + 1;
        if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
            j += 1;
        }
        if j < chars.len() && chars[j].is_ascii_digit() {
            i = j;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let text: String = chars[start..i].iter().collect();
    let value = text.parse::<f64>().map_err(|_| format!("{text:?} is not a number"))?;
    Ok((value, i))
}

fn symbol_token(rest: &[char]) -> Option<(&'static str, usize)> {
    const TWO: [&str; 6] = ["==", "!=", "<=", ">=", "&&", "||"];
    const ONE: [&str; 11] = ["+", "-", "*", "/", "^", "<", ">", "(", ")", ",", "!"];
    let two: String = rest.iter().take(2).collect();
    if let Some(s) = TWO.iter().find(|s| **s == two) {
        return Some((*s, 2));
    }
    let one: String = rest.iter().take(1).collect();
    ONE.iter().find(|s| **s == one).map(|s| (*s, 1))
}

/// Recursive descent; loosest first: OR, AND, NOT, comparisons, + -, * /, unary -, ^.
struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn parse(text: &str) -> Result<Node, String> {
        let mut p = Parser {
            toks: tokenize(text)?,
            pos: 0,
        };
        let node = p.or()?;
        match p.toks.get(p.pos) {
            None => Ok(node),
            Some(t) => Err(format!("unexpected {} after a complete expression", describe(t))),
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let hit = matches!(self.toks.get(self.pos), Some(Tok::Sym(s)) if *s == sym);
        self.pos += usize::from(hit);
        hit
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let hit = matches!(self.toks.get(self.pos), Some(Tok::Word(w)) if w == word);
        self.pos += usize::from(hit);
        hit
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.eat_sym("||") || self.eat_word("OR") {
            left = Node::Bin(BinOp::Or, Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.not()?;
        while self.eat_sym("&&") || self.eat_word("AND") {
            left = Node::Bin(BinOp::And, Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, String> {
        if self.eat_sym("!") || self.eat_word("NOT") {
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, String> {
        let ops = [
            ("==", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ];
        let mut left = self.additive()?;
        'more: loop {
            for (sym, op) in ops {
                if self.eat_sym(sym) {
                    left = Node::Bin(op, Box::new(left), Box::new(self.additive()?));
                    continue 'more;
                }
            }
            return Ok(left);
        }
    }

    fn additive(&mut self) -> Result<Node, String> {
        let mut left = self.multiplicative()?;
        loop {
            let op = if self.eat_sym("+") {
                BinOp::Add
            } else if self.eat_sym("-") {
                BinOp::Sub
            } else {
                return Ok(left);
            };
            left = Node::Bin(op, Box::new(left), Box::new(self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_sym("*") {
                BinOp::Mul
            } else if self.eat_sym("/") {
                BinOp::Div
            } else {
                return Ok(left);
            };
            left = Node::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.eat_sym("-") {
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        if self.eat_sym("+") {
            return self.unary();
        }
        self.power()
    }

    /// `a ^ b` binds tighter than unary minus and is right-associative: `-2^2` is -4.
    fn power(&mut self) -> Result<Node, String> {
        let base = self.primary()?;
        if self.eat_sym("^") {
            return Ok(Node::Bin(BinOp::Pow, Box::new(base), Box::new(self.unary()?)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Node, String> {
        let tok = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("the expression ends too early")?;
        self.pos += 1;
        match tok {
            Tok::Num(v) => Ok(Node::Num(v)),
            Tok::Sym("(") => {
                let inner = self.or()?;
                if self.eat_sym(")") {
                    Ok(inner)
                } else {
                    Err("missing )".to_owned())
                }
            }
            Tok::Word(w) => self.word(w),
            other => Err(format!("unexpected {}", describe(&other))),
        }
    }

    fn word(&mut self, word: String) -> Result<Node, String> {
        match word.as_str() {
            "REPEAT" => return Ok(Node::Mode(FillMode::Repeat)),
            "LINEAR" => return Ok(Node::Mode(FillMode::Linear)),
            _ => {}
        }
        if word.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Ok(Node::Id(word));
        }
        let Some((func, min, max)) = Func::from_name(&word) else {
            return Err(format!(
                "{word} is not a supported function (FILL, IF, MAX, MIN, SUM, AVG, ABS, CEIL, FLOOR, TIME_SERIES) nor an id (ids start with a lowercase letter)"
            ));
        };
        if !self.eat_sym("(") {
            return Err(format!("{word} must be followed by ("));
        }
        let mut args = Vec::new();
        if !self.eat_sym(")") {
            loop {
                args.push(self.or()?);
                if self.eat_sym(")") {
                    break;
                }
                if !self.eat_sym(",") {
                    return Err(format!("{word}(: expected , or )"));
                }
            }
        }
        if args.len() < min || args.len() > max {
            return Err(format!(
                "{word} takes {} arguments, not {}",
                if min == max {
                    min.to_string()
                } else {
                    format!("{min} or {max}")
                },
                args.len()
            ));
        }
        Ok(Node::Call(func, args))
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Num(v) => format!("number {v}"),
        Tok::Word(w) => format!("word {w}"),
        Tok::Sym(s) => format!("{s:?}"),
    }
}

/// Whether an expression (or id) is a scalar or a time series; checked when the alarm is read
/// so that evaluation cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Scalar,
    Series,
}

fn kind(node: &Node, ids: &BTreeMap<String, Kind>) -> Result<Kind, String> {
    Ok(match node {
        Node::Num(_) => Kind::Scalar,
        Node::Id(id) => *ids.get(id).ok_or_else(|| format!("unknown id {id}"))?,
        Node::Mode(_) => return Err("REPEAT and LINEAR are only valid as the second argument of FILL".to_owned()),
        Node::Neg(a) | Node::Not(a) => kind(a, ids)?,
        Node::Bin(_, a, b) => combine(kind(a, ids)?, kind(b, ids)?),
        Node::Call(func, args) => call_kind(*func, args, ids)?,
    })
}

fn combine(a: Kind, b: Kind) -> Kind {
    if a == Kind::Scalar && b == Kind::Scalar {
        Kind::Scalar
    } else {
        Kind::Series
    }
}

fn call_kind(func: Func, args: &[Node], ids: &BTreeMap<String, Kind>) -> Result<Kind, String> {
    let series_arg = |name: &str| -> Result<(), String> {
        match kind(&args[0], ids)? {
            Kind::Series => Ok(()),
            Kind::Scalar => Err(format!("{name} needs a time series as its first argument")),
        }
    };
    Ok(match func {
        Func::Fill => {
            series_arg("FILL")?;
            if !matches!(args[1], Node::Mode(_)) {
                kind(&args[1], ids)?;
            }
            Kind::Series
        }
        Func::If => {
            let kinds = args.iter().map(|a| kind(a, ids)).collect::<Result<Vec<_>, _>>()?;
            let all_scalar = kinds.len() == 3 && kinds.iter().all(|k| *k == Kind::Scalar);
            if all_scalar { Kind::Scalar } else { Kind::Series }
        }
        Func::Max | Func::Min | Func::Sum | Func::Avg => {
            series_arg("MAX/MIN/SUM/AVG")?;
            Kind::Scalar
        }
        Func::Abs | Func::Ceil | Func::Floor => kind(&args[0], ids)?,
        Func::TimeSeries => match kind(&args[0], ids)? {
            Kind::Scalar => Kind::Series,
            Kind::Series => return Err("TIME_SERIES takes a scalar".to_owned()),
        },
    })
}

fn references(node: &Node, out: &mut BTreeSet<String>) {
    match node {
        Node::Id(id) => {
            out.insert(id.clone());
        }
        Node::Neg(a) | Node::Not(a) => references(a, out),
        Node::Bin(_, a, b) => {
            references(a, out);
            references(b, out);
        }
        Node::Call(_, args) => args.iter().for_each(|a| references(a, out)),
        Node::Num(_) | Node::Mode(_) => {}
    }
}

// ==== metric math: evaluation ==================================================================

/// A value during evaluation: a scalar, or one entry per period of the range (oldest first).
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Scalar(f64),
    Series(Vec<Option<f64>>),
}

struct Ctx<'a> {
    values: &'a BTreeMap<&'a str, Val>,
    n: usize,
    empty_fill: EmptyFill,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn truth(v: f64) -> bool {
    v != 0.0 && !v.is_nan()
}

fn eval(node: &Node, cx: &Ctx<'_>) -> Val {
    match node {
        Node::Num(v) => Val::Scalar(*v),
        Node::Id(id) => cx
            .values
            .get(id.as_str())
            .cloned()
            .unwrap_or_else(|| Val::Series(vec![None; cx.n])),
        Node::Mode(_) => Val::Series(vec![None; cx.n]),
        Node::Neg(a) => map(eval(a, cx), |v| -v),
        Node::Not(a) => map(eval(a, cx), |v| if truth(v) { 0.0 } else { 1.0 }),
        Node::Bin(op, a, b) => binary(*op, eval(a, cx), eval(b, cx)),
        Node::Call(func, args) => call(*func, args, cx),
    }
}

fn map(v: Val, f: impl Fn(f64) -> f64) -> Val {
    match v {
        Val::Scalar(x) => Val::Scalar(f(x)),
        Val::Series(points) => Val::Series(points.into_iter().map(|p| p.and_then(|x| finite(f(x)))).collect()),
    }
}

/// `None` drops the datapoint (division by zero, non-finite results).
fn apply(op: BinOp, x: f64, y: f64) -> Option<f64> {
    let bool_val = |b: bool| if b { 1.0 } else { 0.0 };
    finite(match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div if y == 0.0 => return None,
        BinOp::Div => x / y,
        BinOp::Pow => x.powf(y),
        BinOp::Eq => bool_val(x == y),
        BinOp::Ne => bool_val(x != y),
        BinOp::Lt => bool_val(x < y),
        BinOp::Le => bool_val(x <= y),
        BinOp::Gt => bool_val(x > y),
        BinOp::Ge => bool_val(x >= y),
        BinOp::And => bool_val(truth(x) && truth(y)),
        BinOp::Or => bool_val(truth(x) || truth(y)),
    })
}

/// Series with series: a datapoint wherever either has one, the missing side counting as 0
/// (documented for arithmetic and for comparisons).
fn binary(op: BinOp, a: Val, b: Val) -> Val {
    match (a, b) {
        (Val::Scalar(x), Val::Scalar(y)) => Val::Scalar(apply(op, x, y).unwrap_or(f64::NAN)),
        (Val::Series(s), Val::Scalar(y)) => {
            Val::Series(s.into_iter().map(|p| p.and_then(|x| apply(op, x, y))).collect())
        }
        (Val::Scalar(x), Val::Series(s)) => {
            Val::Series(s.into_iter().map(|p| p.and_then(|y| apply(op, x, y))).collect())
        }
        (Val::Series(s), Val::Series(t)) => Val::Series(
            s.into_iter()
                .zip(t)
                .map(|pair| match pair {
                    (None, None) => None,
                    (x, y) => apply(op, x.unwrap_or(0.0), y.unwrap_or(0.0)),
                })
                .collect(),
        ),
    }
}

fn call(func: Func, args: &[Node], cx: &Ctx<'_>) -> Val {
    match func {
        Func::Fill => fill(eval(&args[0], cx), &args[1], cx),
        Func::If => if_(
            eval(&args[0], cx),
            eval(&args[1], cx),
            args.get(2).map(|b| eval(b, cx)),
            cx.n,
        ),
        Func::Max | Func::Min | Func::Sum | Func::Avg => reduce(func, eval(&args[0], cx)),
        Func::Abs => map(eval(&args[0], cx), f64::abs),
        Func::Ceil => map(eval(&args[0], cx), f64::ceil),
        Func::Floor => map(eval(&args[0], cx), f64::floor),
        Func::TimeSeries => match eval(&args[0], cx) {
            Val::Scalar(x) => Val::Series(vec![finite(x); cx.n]),
            series => series,
        },
    }
}

fn fill(input: Val, filler: &Node, cx: &Ctx<'_>) -> Val {
    let Val::Series(mut points) = input else { return input };
    if points.iter().all(Option::is_none) && cx.empty_fill == EmptyFill::NoData {
        return Val::Series(points);
    }
    match filler {
        Node::Mode(FillMode::Repeat) => repeat(&mut points),
        Node::Mode(FillMode::Linear) => linear(&mut points),
        other => match eval(other, cx) {
            Val::Scalar(x) => points.iter_mut().filter(|p| p.is_none()).for_each(|p| *p = finite(x)),
            Val::Series(with) => points
                .iter_mut()
                .zip(with)
                .filter(|(p, _)| p.is_none())
                .for_each(|(p, w)| *p = w),
        },
    }
    Val::Series(points)
}

/// The most recent earlier value; missing values before the first one stay missing.
fn repeat(points: &mut [Option<f64>]) {
    let mut last = None;
    for p in points.iter_mut() {
        match p {
            Some(v) => last = Some(*v),
            None => *p = last,
        }
    }
}

/// Interpolation between the values on both sides of a gap; gaps at either end stay missing.
fn linear(points: &mut [Option<f64>]) {
    let known: Vec<(usize, f64)> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|v| (i, v)))
        .collect();
    for pair in known.windows(2) {
        let ((i, a), (j, b)) = (pair[0], pair[1]);
        for (k, p) in points.iter_mut().enumerate().take(j).skip(i + 1) {
            *p = finite(a + (b - a) * (k - i) as f64 / (j - i) as f64);
        }
    }
}

/// IF as documented: a true condition with no datapoint in a series `a` gives 0; a false one
/// takes `b`, or drops the datapoint when `b` is omitted or has none; no condition, no datapoint.
fn if_(cond: Val, a: Val, b: Option<Val>, n: usize) -> Val {
    match cond {
        Val::Scalar(c) if truth(c) => a,
        Val::Scalar(_) => b.unwrap_or_else(|| Val::Series(vec![None; n])),
        Val::Series(conds) => Val::Series(
            conds
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    None => None,
                    Some(c) if truth(*c) => match &a {
                        Val::Scalar(x) => finite(*x),
                        Val::Series(s) => Some(s[i].unwrap_or(0.0)),
                    },
                    Some(_) => match &b {
                        None => None,
                        Some(Val::Scalar(y)) => finite(*y),
                        Some(Val::Series(s)) => s[i],
                    },
                })
                .collect(),
        ),
    }
}

/// MAX, MIN, SUM, AVG of one series: a scalar over its datapoints (NaN when it has none).
fn reduce(func: Func, v: Val) -> Val {
    let Val::Series(points) = v else { return v };
    let values: Vec<f64> = points.into_iter().flatten().collect();
    let stat = match func {
        Func::Max => Statistic::Maximum,
        Func::Min => Statistic::Minimum,
        Func::Sum => Statistic::Sum,
        _ => Statistic::Average,
    };
    Val::Scalar(stat.apply(&values).unwrap_or(f64::NAN))
}

// ==== template =================================================================================

/// A parsed CloudFormation/SAM template with parameter values, to read alarms from.
#[derive(Clone, Debug)]
pub struct Template {
    doc: Yaml,
    /// Every declared parameter: the given value, else its `Default` (None: neither).
    params: BTreeMap<String, Option<String>>,
    /// Pseudo parameters (`AWS::Region`…) the caller gave.
    pseudo: BTreeMap<String, String>,
    /// `"Resource.Attribute"` for `!GetAtt`, `"Resource"` for a resource's `!Ref`.
    attrs: BTreeMap<String, String>,
}

impl Template {
    /// Reads a template. `params` overrides parameter defaults (and may give pseudo parameters
    /// such as `AWS::Region`); `attrs` gives `!GetAtt` values as `"Res.Attr"` and resources'
    /// `!Ref` values as `"Res"`.
    pub fn load(
        path: &Path,
        params: &BTreeMap<String, String>,
        attrs: &BTreeMap<String, String>,
    ) -> Result<Template, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Template::parse(&text, params, attrs).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// [`Template::load`] from text.
    pub fn parse(
        text: &str,
        params: &BTreeMap<String, String>,
        attrs: &BTreeMap<String, String>,
    ) -> Result<Template, String> {
        let doc: Yaml = serde_yaml::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        if !doc.is_mapping() {
            return Err("the template is not a mapping".to_owned());
        }
        let mut values = BTreeMap::new();
        if let Some(declared) = doc.get("Parameters").and_then(Yaml::as_mapping) {
            for (name, decl) in declared {
                let name = name.as_str().ok_or("Parameters: a parameter name is not a string")?;
                values.insert(name.to_owned(), decl.get("Default").and_then(scalar_string));
            }
        }
        let mut pseudo = BTreeMap::new();
        for (name, value) in params {
            if name.starts_with("AWS::") {
                pseudo.insert(name.clone(), value.clone());
            } else if values.contains_key(name) {
                values.insert(name.clone(), Some(value.clone()));
            } else {
                return Err(format!("parameter {name} is not declared in the template"));
            }
        }
        Ok(Template {
            doc,
            params: values,
            pseudo,
            attrs: attrs.clone(),
        })
    }

    /// A property of a resource (`path` below its `Properties`), intrinsic functions resolved;
    /// `None` when absent. What the AWS-time harness reads timeouts, queue settings and
    /// environments from, so they are never copied into tests.
    pub fn property(&self, resource: &str, path: &[&str]) -> Result<Option<Yaml>, String> {
        let mut v = self
            .doc
            .get("Resources")
            .and_then(|r| r.get(resource))
            .ok_or_else(|| format!("no resource {resource}"))?;
        for key in std::iter::once(&"Properties").chain(path) {
            match v.get(*key) {
                Some(next) => v = next,
                None => return Ok(None),
            }
        }
        self.resolve(v, &format!("{resource}.{}", path.join(".")))
    }

    /// [`Template::property`] as a number (CloudFormation numbers may be strings).
    pub fn number(&self, resource: &str, path: &[&str]) -> Result<f64, String> {
        let v = self
            .property(resource, path)?
            .ok_or_else(|| format!("{resource}.{} is not set", path.join(".")))?;
        scalar_string(&v)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{resource}.{} is not a number: {v:?}", path.join(".")))
    }

    /// Logical ids of every `AWS::CloudWatch::Alarm` resource, in template order.
    pub fn alarm_ids(&self) -> Vec<String> {
        let Some(resources) = self.doc.get("Resources").and_then(Yaml::as_mapping) else {
            return Vec::new();
        };
        resources
            .iter()
            .filter(|(_, r)| r.get("Type").and_then(Yaml::as_str) == Some("AWS::CloudWatch::Alarm"))
            .filter_map(|(id, _)| id.as_str().map(str::to_owned))
            .collect()
    }

    /// Every alarm the template creates with these parameters (alarms whose resource
    /// `Condition` is false are left out), in template order.
    pub fn alarms(&self) -> Result<Vec<Alarm>, String> {
        let mut out = Vec::new();
        for id in self.alarm_ids() {
            if let Some(alarm) = self.alarm_if_created(&id)? {
                out.push(alarm);
            }
        }
        Ok(out)
    }

    /// One alarm by logical id.
    pub fn alarm(&self, id: &str) -> Result<Alarm, String> {
        self.alarm_if_created(id)?
            .ok_or_else(|| format!("alarm {id} is not created: its Condition is false"))
    }

    fn alarm_if_created(&self, id: &str) -> Result<Option<Alarm>, String> {
        let resource = self
            .doc
            .get("Resources")
            .and_then(|r| r.get(id))
            .ok_or_else(|| format!("no resource {id}"))?;
        if resource.get("Type").and_then(Yaml::as_str) != Some("AWS::CloudWatch::Alarm") {
            return Err(format!("resource {id} is not an AWS::CloudWatch::Alarm"));
        }
        if let Some(condition) = resource.get("Condition") {
            let name = condition
                .as_str()
                .ok_or_else(|| format!("{id}.Condition is not a condition name"))?;
            if !self.condition(name, &mut Vec::new())? {
                return Ok(None);
            }
        }
        let raw = resource.get("Properties").and_then(Yaml::as_mapping);
        let raw = raw.ok_or_else(|| format!("alarm {id}: Properties is missing or not a mapping"))?;
        let mut props = serde_yaml::Mapping::new();
        for (key, value) in raw {
            let name = key.as_str().unwrap_or("?");
            let at = format!("{id}.Properties.{name}");
            // Actions, descriptions and names do not change the evaluation: what cannot be
            // resolved there (an SNS topic's Ref, AWS::StackName) is left out, not an error.
            let resolved = if IGNORED.contains(&name) {
                self.resolve(value, &at).ok().flatten()
            } else {
                self.resolve(value, &at)?
            };
            if let Some(resolved) = resolved {
                props.insert(key.clone(), resolved);
            }
        }
        parse_alarm(id, &Yaml::Mapping(props))
            .map(Some)
            .map_err(|e| format!("alarm {id}: {e}"))
    }

    /// A value with intrinsic functions resolved; `None` for `AWS::NoValue`.
    fn resolve(&self, v: &Yaml, at: &str) -> Result<Option<Yaml>, String> {
        if let Some((name, arg)) = intrinsic(v) {
            return self.intrinsic_value(&name, arg, at);
        }
        match v {
            Yaml::Sequence(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.resolve(item, &format!("{at}[{i}]"))?);
                }
                Ok(Some(Yaml::Sequence(out)))
            }
            Yaml::Mapping(map) => {
                let mut out = serde_yaml::Mapping::new();
                for (key, item) in map {
                    let name = key.as_str().map_or_else(|| format!("{key:?}"), str::to_owned);
                    if let Some(value) = self.resolve(item, &format!("{at}.{name}"))? {
                        out.insert(key.clone(), value);
                    }
                }
                Ok(Some(Yaml::Mapping(out)))
            }
            Yaml::Tagged(t) => Err(format!("{at}: unsupported tag {}", t.tag)),
            other => Ok(Some(other.clone())),
        }
    }

    fn intrinsic_value(&self, name: &str, arg: &Yaml, at: &str) -> Result<Option<Yaml>, String> {
        match name {
            "Ref" => {
                let target = arg.as_str().ok_or_else(|| format!("{at}: !Ref needs a name"))?;
                self.reference(target, at)
            }
            "If" => {
                let [cond, yes, no] = fixed_args::<3>(arg, "!If", at)?;
                let cond = cond
                    .as_str()
                    .ok_or_else(|| format!("{at}: !If needs a condition name first"))?;
                let branch = if self.condition(cond, &mut Vec::new())? {
                    yes
                } else {
                    no
                };
                self.resolve(branch, at)
            }
            "GetAtt" => self.get_att(arg, at).map(|v| Some(Yaml::String(v))),
            "Sub" => self.sub(arg, at).map(|v| Some(Yaml::String(v))),
            "Join" => {
                let [delimiter, items] = fixed_args::<2>(arg, "!Join", at)?;
                let delimiter = delimiter
                    .as_str()
                    .ok_or_else(|| format!("{at}: !Join needs a string delimiter"))?;
                let items = self.resolve(items, at)?.unwrap_or(Yaml::Null);
                let items = items.as_sequence().ok_or_else(|| format!("{at}: !Join needs a list"))?;
                let parts = items
                    .iter()
                    .map(|i| scalar_string(i).ok_or_else(|| format!("{at}: !Join of a non-scalar")));
                Ok(Some(Yaml::String(
                    parts.collect::<Result<Vec<_>, _>>()?.join(delimiter),
                )))
            }
            other => Err(format!("{at}: Fn::{other} is not supported here")),
        }
    }

    fn reference(&self, target: &str, at: &str) -> Result<Option<Yaml>, String> {
        if target == "AWS::NoValue" {
            return Ok(None);
        }
        if let Some(value) = self.params.get(target) {
            let value = value
                .as_ref()
                .ok_or_else(|| format!("{at}: parameter {target} has no Default and no value was given"))?;
            return Ok(Some(Yaml::String(value.clone())));
        }
        if let Some(value) = self.pseudo.get(target).or_else(|| self.attrs.get(target)) {
            return Ok(Some(Yaml::String(value.clone())));
        }
        if target.starts_with("AWS::") {
            return Err(format!("{at}: !Ref {target}: give the pseudo parameter in params"));
        }
        Err(format!(
            "{at}: !Ref {target} is not a parameter; give the resource's Ref value in attrs as {target:?}"
        ))
    }

    fn get_att(&self, arg: &Yaml, at: &str) -> Result<String, String> {
        let key = match arg {
            Yaml::String(s) => s.clone(),
            Yaml::Sequence(parts) if parts.len() == 2 => {
                let part = |p: &Yaml| {
                    self.resolve(p, at)
                        .map(|v| v.as_ref().and_then(scalar_string).unwrap_or_default())
                };
                format!("{}.{}", part(&parts[0])?, part(&parts[1])?)
            }
            _ => return Err(format!("{at}: !GetAtt needs Resource.Attribute")),
        };
        self.attrs
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("{at}: !GetAtt {key} is unresolved: give it in attrs as {key:?}"))
    }

    fn sub(&self, arg: &Yaml, at: &str) -> Result<String, String> {
        let (text, vars) = match arg {
            Yaml::String(s) => (s.as_str(), BTreeMap::new()),
            Yaml::Sequence(items) if items.len() == 2 => {
                let text = items[0].as_str().ok_or_else(|| format!("{at}: !Sub needs a string"))?;
                let resolved = self.resolve(&items[1], at)?.unwrap_or(Yaml::Null);
                let mut vars = BTreeMap::new();
                for (k, v) in resolved.as_mapping().into_iter().flatten() {
                    if let (Some(k), Some(v)) = (k.as_str(), scalar_string(v)) {
                        vars.insert(k.to_owned(), v);
                    }
                }
                (text, vars)
            }
            _ => return Err(format!("{at}: !Sub needs a string or [string, variables]")),
        };
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after.find('}').ok_or_else(|| format!("{at}: !Sub: unterminated ${{"))?;
            let name = &after[..end];
            match name.strip_prefix('!') {
                Some(literal) => {
                    out.push_str("${");
                    out.push_str(literal);
                    out.push('}');
                }
                None => out.push_str(&self.sub_variable(name, &vars, at)?),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn sub_variable(&self, name: &str, vars: &BTreeMap<String, String>, at: &str) -> Result<String, String> {
        if let Some(v) = vars.get(name) {
            return Ok(v.clone());
        }
        if name.contains('.') && !name.starts_with("AWS::") {
            return self.get_att(&Yaml::String(name.to_owned()), at);
        }
        let value = self.reference(name, at)?;
        Ok(value.as_ref().and_then(scalar_string).unwrap_or_default())
    }

    fn condition(&self, name: &str, stack: &mut Vec<String>) -> Result<bool, String> {
        if stack.iter().any(|s| s == name) {
            return Err(format!("condition {name} refers to itself ({})", stack.join(" -> ")));
        }
        let def = self.doc.get("Conditions").and_then(|c| c.get(name));
        let def = def.ok_or_else(|| format!("condition {name} is not defined"))?;
        stack.push(name.to_owned());
        let value = self.condition_value(def, &format!("Conditions.{name}"), stack);
        stack.pop();
        value
    }

    fn condition_value(&self, v: &Yaml, at: &str, stack: &mut Vec<String>) -> Result<bool, String> {
        let Some((func, arg)) = condition_function(v) else {
            return v.as_bool().ok_or_else(|| format!("{at}: not a condition"));
        };
        let operands = || {
            arg.as_sequence()
                .ok_or_else(|| format!("{at}: Fn::{func} needs a list"))
        };
        match func.as_str() {
            "Equals" => {
                let [a, b] = fixed_args::<2>(arg, "!Equals", at)?;
                Ok(self.comparable(a, at)? == self.comparable(b, at)?)
            }
            "Not" => {
                let [inner] = fixed_args::<1>(arg, "!Not", at)?;
                Ok(!self.condition_value(inner, at, stack)?)
            }
            "And" => {
                for c in operands()? {
                    if !self.condition_value(c, at, stack)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            "Or" => {
                for c in operands()? {
                    if self.condition_value(c, at, stack)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            "Condition" => {
                let name = arg.as_str().ok_or_else(|| format!("{at}: !Condition needs a name"))?;
                self.condition(name, stack)
            }
            other => Err(format!("{at}: Fn::{other} is not a condition function")),
        }
    }

    /// Values as `!Equals` compares them: scalars as their string form (`-1` equals `'-1'`).
    fn comparable(&self, v: &Yaml, at: &str) -> Result<String, String> {
        let resolved = self.resolve(v, at)?;
        Ok(match &resolved {
            None => String::new(),
            Some(value) => scalar_string(value).unwrap_or_else(|| format!("{value:?}")),
        })
    }
}

/// `!Name arg` or `{"Ref": arg}` / `{"Fn::Name": arg}` as `(Name, arg)`.
fn intrinsic(v: &Yaml) -> Option<(String, &Yaml)> {
    match v {
        Yaml::Tagged(t) => Some((t.tag.to_string().trim_start_matches('!').to_owned(), &t.value)),
        Yaml::Mapping(m) if m.len() == 1 => {
            let (key, arg) = m.iter().next()?;
            let key = key.as_str()?;
            if key == "Ref" {
                Some(("Ref".to_owned(), arg))
            } else {
                key.strip_prefix("Fn::").map(|f| (f.to_owned(), arg))
            }
        }
        _ => None,
    }
}

/// Like [`intrinsic`], also accepting `{"Condition": name}`.
fn condition_function(v: &Yaml) -> Option<(String, &Yaml)> {
    intrinsic(v).or_else(|| {
        let m = v.as_mapping().filter(|m| m.len() == 1)?;
        let (key, arg) = m.iter().next()?;
        (key.as_str() == Some("Condition")).then(|| ("Condition".to_owned(), arg))
    })
}

fn fixed_args<'a, const N: usize>(arg: &'a Yaml, name: &str, at: &str) -> Result<[&'a Yaml; N], String> {
    let items = arg.as_sequence().filter(|s| s.len() == N);
    let items = items.ok_or_else(|| format!("{at}: {name} needs a list of {N}"))?;
    let refs: Vec<&Yaml> = items.iter().collect();
    refs.try_into().map_err(|_| format!("{at}: {name} needs a list of {N}"))
}

pub fn scalar_string(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

// ==== alarm properties =========================================================================

/// Properties that do not change how the alarm evaluates.
const IGNORED: &[&str] = &[
    "ActionsEnabled",
    "AlarmActions",
    "AlarmDescription",
    "AlarmName",
    "InsufficientDataActions",
    "OKActions",
    "Tags",
    "EvaluateLowSampleCountPercentile",
];
const SINGLE_METRIC: &[&str] = &["Namespace", "MetricName", "Dimensions", "Statistic", "Period", "Unit"];
const COMMON: &[&str] = &[
    "ComparisonOperator",
    "DatapointsToAlarm",
    "EvaluationPeriods",
    "Metrics",
    "Threshold",
    "TreatMissingData",
];
const UNSUPPORTED: &[&str] = &["ExtendedStatistic", "ThresholdMetricId"];

fn parse_alarm(id: &str, props: &Yaml) -> Result<Alarm, String> {
    let map = props.as_mapping().ok_or("Properties is not a mapping")?;
    for key in map.keys() {
        let key = key.as_str().unwrap_or("?");
        if UNSUPPORTED.contains(&key) {
            return Err(format!("{key} is not supported by this evaluator"));
        }
        if !IGNORED.contains(&key) && !SINGLE_METRIC.contains(&key) && !COMMON.contains(&key) {
            return Err(format!("unknown property {key}"));
        }
    }
    let comparison = Comparison::parse(string(required(props, "ComparisonOperator")?, "ComparisonOperator")?)
        .map_err(|e| format!("ComparisonOperator: {e}"))?;
    let threshold = number(required(props, "Threshold")?, "Threshold")?;
    let evaluation_periods = positive(required(props, "EvaluationPeriods")?, "EvaluationPeriods")?;
    let datapoints_to_alarm = match props.get("DatapointsToAlarm") {
        Some(v) => positive(v, "DatapointsToAlarm")?,
        None => evaluation_periods,
    };
    if datapoints_to_alarm > evaluation_periods {
        return Err(format!(
            "DatapointsToAlarm {datapoints_to_alarm} is more than EvaluationPeriods {evaluation_periods}"
        ));
    }
    let treat_missing_data = match props.get("TreatMissingData") {
        Some(v) => {
            TreatMissingData::parse(string(v, "TreatMissingData")?).map_err(|e| format!("TreatMissingData: {e}"))?
        }
        None => TreatMissingData::Missing,
    };
    let (source, period_s, order) = if props.get("Metrics").is_some() {
        math_source(props)?
    } else {
        metric_source(props)?
    };
    Ok(Alarm {
        id: id.to_owned(),
        name: props.get("AlarmName").and_then(scalar_string),
        source,
        period_s,
        evaluation_periods,
        datapoints_to_alarm,
        threshold,
        comparison,
        treat_missing_data,
        order,
    })
}

fn metric_source(props: &Yaml) -> Result<(Source, u64, Vec<usize>), String> {
    let metric = MetricId {
        namespace: string(required(props, "Namespace")?, "Namespace")?.to_owned(),
        name: string(required(props, "MetricName")?, "MetricName")?.to_owned(),
        dimensions: dimensions(props.get("Dimensions"), "Dimensions")?,
    };
    let stat =
        Statistic::parse(string(required(props, "Statistic")?, "Statistic")?).map_err(|e| format!("Statistic: {e}"))?;
    let period_s = period(required(props, "Period")?, "Period")?;
    let unit = props
        .get("Unit")
        .map(|u| string(u, "Unit").map(str::to_owned))
        .transpose()?;
    Ok((
        Source::Metric(MetricStat {
            metric,
            stat,
            period_s,
            unit,
        }),
        period_s,
        Vec::new(),
    ))
}

fn math_source(props: &Yaml) -> Result<(Source, u64, Vec<usize>), String> {
    if let Some(key) = SINGLE_METRIC.iter().find(|k| props.get(**k).is_some()) {
        return Err(format!("Metrics cannot be combined with {key}"));
    }
    let items = props["Metrics"]
        .as_sequence()
        .filter(|s| !s.is_empty())
        .ok_or("Metrics: not a non-empty list")?;
    let mut queries = Vec::new();
    let mut periods = BTreeSet::new();
    let mut result_period = None;
    for (i, item) in items.iter().enumerate() {
        let at = format!("Metrics[{i}]");
        let (query, own_period) = parse_query(item, &at)?;
        if queries.iter().any(|q: &Query| q.id == query.id) {
            return Err(format!("{at}: Id {} is used twice", query.id));
        }
        periods.extend(query.metric.as_ref().map(|m| m.period_s));
        if query.return_data {
            result_period = own_period;
        }
        queries.push(query);
    }
    let results: Vec<&Query> = queries.iter().filter(|q| q.return_data).collect();
    let [result] = results.as_slice() else {
        return Err(format!(
            "Metrics: exactly one entry must have ReturnData true, not {}",
            results.len()
        ));
    };
    let result = result.id.clone();
    if queries.iter().filter(|q| q.metric.is_some()).count() > 10 {
        return Err("Metrics: an alarm can use at most 10 metrics".to_owned());
    }
    let period_s = math_period(&periods, result_period)?;
    let order = topological_order(&queries)?;
    check_kinds(&queries, &order, &result)?;
    Ok((Source::Math { queries, result }, period_s, order))
}

/// Every metric of a math alarm must use the same period.
fn math_period(metric_periods: &BTreeSet<u64>, result_period: Option<u64>) -> Result<u64, String> {
    let mut all = metric_periods.clone();
    all.extend(result_period);
    match all.len() {
        1 => Ok(all.into_iter().next().unwrap_or(60)),
        0 => Err("Metrics: no period (no MetricStat, and no Period on the ReturnData entry)".to_owned()),
        _ => Err(format!("Metrics: every metric must use the same period, not {all:?}")),
    }
}

fn parse_query(item: &Yaml, at: &str) -> Result<(Query, Option<u64>), String> {
    const KEYS: &[&str] = &[
        "Id",
        "Expression",
        "MetricStat",
        "ReturnData",
        "Label",
        "Period",
        "AccountId",
    ];
    let map = item.as_mapping().ok_or_else(|| format!("{at}: not a mapping"))?;
    if let Some(key) = map.keys().filter_map(Yaml::as_str).find(|k| !KEYS.contains(k)) {
        return Err(format!("{at}: unknown property {key}"));
    }
    let id = string(
        required(item, "Id").map_err(|e| format!("{at}: {e}"))?,
        &format!("{at}.Id"),
    )?
    .to_owned();
    let valid_id =
        id.starts_with(|c: char| c.is_ascii_lowercase()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_id {
        return Err(format!(
            "{at}: Id {id:?} must start with a lowercase letter and hold only letters, digits and _"
        ));
    }
    let at = format!("{at} ({id})");
    let return_data = match item.get("ReturnData") {
        None => true,
        Some(v) => boolean(v).ok_or_else(|| format!("{at}.ReturnData: not a boolean"))?,
    };
    let own_period = item
        .get("Period")
        .map(|p| period(p, &format!("{at}.Period")))
        .transpose()?;
    let (metric, expression, expr) = match (item.get("MetricStat"), item.get("Expression")) {
        (Some(stat), None) => (Some(metric_stat(stat, &format!("{at}.MetricStat"))?), None, None),
        (None, Some(text)) => {
            let text = string(text, &format!("{at}.Expression"))?;
            let node = Parser::parse(text).map_err(|e| format!("{at}.Expression {text:?}: {e}"))?;
            (None, Some(text.to_owned()), Some(node))
        }
        _ => return Err(format!("{at}: needs exactly one of MetricStat and Expression")),
    };
    let label = item.get("Label").and_then(scalar_string);
    Ok((
        Query {
            id,
            label,
            return_data,
            metric,
            expression,
            expr,
        },
        own_period,
    ))
}

fn metric_stat(v: &Yaml, at: &str) -> Result<MetricStat, String> {
    let metric = required(v, "Metric").map_err(|e| format!("{at}: {e}"))?;
    let field = |parent: &Yaml, key: &str, at: &str| -> Result<String, String> {
        let value = required(parent, key).map_err(|e| format!("{at}: {e}"))?;
        string(value, &format!("{at}.{key}")).map(str::to_owned)
    };
    let metric_at = format!("{at}.Metric");
    let id = MetricId {
        namespace: field(metric, "Namespace", &metric_at)?,
        name: field(metric, "MetricName", &metric_at)?,
        dimensions: dimensions(metric.get("Dimensions"), &format!("{metric_at}.Dimensions"))?,
    };
    let stat = Statistic::parse(&field(v, "Stat", at)?).map_err(|e| format!("{at}.Stat: {e}"))?;
    let period_s = period(
        required(v, "Period").map_err(|e| format!("{at}: {e}"))?,
        &format!("{at}.Period"),
    )?;
    let unit = v
        .get("Unit")
        .map(|u| string(u, &format!("{at}.Unit")).map(str::to_owned))
        .transpose()?;
    Ok(MetricStat {
        metric: id,
        stat,
        period_s,
        unit,
    })
}

fn topological_order(queries: &[Query]) -> Result<Vec<usize>, String> {
    let index: BTreeMap<&str, usize> = queries.iter().enumerate().map(|(i, q)| (q.id.as_str(), i)).collect();
    let mut state = vec![0u8; queries.len()]; // 0 new, 1 on the path, 2 done
    let mut order = Vec::new();
    let mut path = Vec::new();
    for i in 0..queries.len() {
        visit(i, queries, &index, &mut state, &mut order, &mut path)?;
    }
    Ok(order)
}

fn visit(
    i: usize,
    queries: &[Query],
    index: &BTreeMap<&str, usize>,
    state: &mut [u8],
    order: &mut Vec<usize>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match state[i] {
        2 => return Ok(()),
        1 => {
            return Err(format!(
                "Metrics: expressions refer to each other in a cycle: {} -> {}",
                path.join(" -> "),
                queries[i].id
            ));
        }
        _ => {}
    }
    state[i] = 1;
    path.push(queries[i].id.clone());
    let mut refs = BTreeSet::new();
    if let Some(expr) = &queries[i].expr {
        references(expr, &mut refs);
    }
    for r in &refs {
        let j = *index
            .get(r.as_str())
            .ok_or_else(|| format!("Metrics: {} refers to unknown id {r}", queries[i].id))?;
        visit(j, queries, index, state, order, path)?;
    }
    path.pop();
    state[i] = 2;
    order.push(i);
    Ok(())
}

fn check_kinds(queries: &[Query], order: &[usize], result: &str) -> Result<(), String> {
    let mut kinds = BTreeMap::new();
    for &i in order {
        let q = &queries[i];
        let k = match &q.expr {
            Some(expr) => kind(expr, &kinds).map_err(|e| format!("Metrics: {}: {e}", q.id))?,
            None => Kind::Series,
        };
        kinds.insert(q.id.clone(), k);
    }
    if kinds.get(result) == Some(&Kind::Scalar) {
        return Err(format!(
            "Metrics: {result} (ReturnData) must be a time series, not a scalar"
        ));
    }
    Ok(())
}

fn required<'a>(v: &'a Yaml, key: &str) -> Result<&'a Yaml, String> {
    v.get(key)
        .filter(|x| !x.is_null())
        .ok_or_else(|| format!("{key} is missing"))
}

fn string<'a>(v: &'a Yaml, at: &str) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| format!("{at}: not a string"))
}

fn boolean(v: &Yaml) -> Option<bool> {
    match v {
        Yaml::Bool(b) => Some(*b),
        Yaml::String(s) if s == "true" => Some(true),
        Yaml::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// Numbers may arrive as strings (parameters are strings).
fn number(v: &Yaml, at: &str) -> Result<f64, String> {
    let value = match v {
        Yaml::Number(n) => n.as_f64(),
        Yaml::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    value
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("{at}: {v:?} is not a number"))
}

fn positive(v: &Yaml, at: &str) -> Result<usize, String> {
    let x = number(v, at)?;
    if x < 1.0 || x.fract() != 0.0 || x > 100_000.0 {
        return Err(format!("{at}: {x} is not a positive whole number"));
    }
    Ok(x as usize)
}

/// 10, 20, 30 or a multiple of 60 seconds.
fn period(v: &Yaml, at: &str) -> Result<u64, String> {
    let p = positive(v, at)? as u64;
    if [10, 20, 30].contains(&p) || p.is_multiple_of(60) {
        Ok(p)
    } else {
        Err(format!(
            "{at}: {p} s is not a valid alarm period (10, 20, 30 or a multiple of 60)"
        ))
    }
}

fn dimensions(v: Option<&Yaml>, at: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let items = v.as_sequence().ok_or_else(|| format!("{at}: not a list"))?;
    for (i, item) in items.iter().enumerate() {
        let name = item.get("Name").and_then(Yaml::as_str);
        let value = item.get("Value").and_then(scalar_string);
        let (Some(name), Some(value)) = (name, value) else {
            return Err(format!("{at}[{i}]: needs Name and Value"));
        };
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("{at}: dimension {name} is given twice"));
        }
    }
    Ok(out)
}

// ==== tests ====================================================================================

#[cfg(test)]
mod tests {
    use super::*;

    // ---- helpers --------------------------------------------------------------------------

    fn no_params() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// A one-alarm template around `props` (YAML lines of the alarm's Properties).
    fn alarm_from(props: &str) -> Result<Alarm, String> {
        let indented: String = props.lines().map(|l| format!("      {l}\n")).collect();
        let text = format!("Resources:\n  A:\n    Type: AWS::CloudWatch::Alarm\n    Properties:\n{indented}");
        Template::parse(&text, &no_params(), &no_params())?.alarm("A")
    }

    fn single(stat: &str, cmp: &str, threshold: f64, n: usize, m: usize, treat: &str, period: u64) -> Alarm {
        alarm_from(&format!(
            "Namespace: ns\nMetricName: m\nStatistic: {stat}\nPeriod: {period}\nEvaluationPeriods: {n}\n\
             DatapointsToAlarm: {m}\nThreshold: {threshold}\nComparisonOperator: {cmp}\nTreatMissingData: {treat}"
        ))
        .unwrap()
    }

    /// "0 - X" (oldest first) as datapoints: 0 not breaching, X breaching (threshold >= 1).
    fn pts(s: &str) -> Vec<Option<f64>> {
        s.split_whitespace()
            .map(|t| match t {
                "X" => Some(1.0),
                "0" => Some(0.0),
                _ => None,
            })
            .collect()
    }

    fn state(points: &str, n: usize, m: usize, treat: TreatMissingData, previous: AlarmState) -> AlarmState {
        decide(&pts(points), n, m, treat, previous, |v| v >= 1.0)
    }

    /// Evaluates `expr` over named series (all the same length).
    fn eval_expr(expr: &str, series: &[(&str, Vec<Option<f64>>)], empty_fill: EmptyFill) -> Result<Val, String> {
        let node = Parser::parse(expr)?;
        let kinds: BTreeMap<String, Kind> = series.iter().map(|(id, _)| ((*id).to_owned(), Kind::Series)).collect();
        kind(&node, &kinds)?;
        let values: BTreeMap<&str, Val> = series.iter().map(|(id, s)| (*id, Val::Series(s.clone()))).collect();
        let n = series.first().map_or(4, |(_, s)| s.len());
        Ok(eval(
            &node,
            &Ctx {
                values: &values,
                n,
                empty_fill,
            },
        ))
    }

    fn series(expr: &str, inputs: &[(&str, Vec<Option<f64>>)]) -> Vec<Option<f64>> {
        match eval_expr(expr, inputs, EmptyFill::Fill).unwrap() {
            Val::Series(s) => s,
            other => panic!("{expr}: not a series: {other:?}"),
        }
    }

    fn scalar(expr: &str) -> f64 {
        match eval_expr(expr, &[], EmptyFill::Fill).unwrap() {
            Val::Scalar(x) => x,
            other => panic!("{expr}: not a scalar: {other:?}"),
        }
    }

    fn s(values: &[f64]) -> Vec<Option<f64>> {
        values
            .iter()
            .map(|v| if v.is_nan() { None } else { Some(*v) })
            .collect()
    }

    const NA: f64 = f64::NAN; // "no datapoint" in `s(..)`

    /// An EMF line exactly as gitferry's `Emf::document` writes it.
    fn gitferry_emf(name: &str, unit: &str, value: f64, labels: &[(&str, &str)], dims: &[&str], ts: u64) -> String {
        let mut sets: Vec<Vec<&str>> = vec![vec![]];
        sets.extend(
            dims.iter()
                .filter(|d| labels.iter().any(|(k, _)| k == *d))
                .map(|d| vec![*d]),
        );
        let mut doc = serde_json::json!({
            "_aws": {
                "Timestamp": ts,
                "CloudWatchMetrics": [{
                    "Namespace": "gitferry",
                    "Dimensions": sets,
                    "Metrics": [{ "Name": name, "Unit": unit }],
                }],
            },
        });
        for (k, v) in labels {
            doc[*k] = Json::String((*v).to_owned());
        }
        doc[name] = value.into();
        doc.to_string()
    }

    fn sync_line(outcome: &str, ts: u64) -> String {
        let labels = [("Repo", "app"), ("Trigger", "poll"), ("Outcome", outcome)];
        gitferry_emf("Syncs", "Count", 1.0, &labels, &["Outcome", "Trigger"], ts)
    }

    /// What every finished poll tick prints.
    fn tick_line(stale: f64, ts: u64) -> String {
        gitferry_emf("StaleRepos", "Count", stale, &[], &[], ts)
    }

    // ---- EMF ------------------------------------------------------------------------------

    #[test]
    fn emf_each_dimension_set_is_its_own_metric() {
        let mut store = MetricStore::new();
        assert!(store.ingest_emf_line(&sync_line("failed", 1_000)));
        let ids: Vec<String> = store.metric_ids().map(ToString::to_string).collect();
        assert_eq!(
            ids,
            [
                "gitferry/Syncs{}",
                "gitferry/Syncs{Outcome=failed}",
                "gitferry/Syncs{Trigger=poll}"
            ]
        );
        assert_eq!(
            store.samples(&MetricId::new("gitferry", "Syncs", &[("Outcome", "failed")])),
            [(1_000, 1.0)]
        );
        // The repository is a property, never a dimension: no metric carries it.
        assert!(store.metric_ids().all(|m| !m.dimensions.contains_key("Repo")));
    }

    #[test]
    fn emf_arrays_prefixes_and_plain_lines() {
        let mut store = MetricStore::new();
        let line = r#"{"_aws":{"Timestamp":5,"CloudWatchMetrics":[{"Namespace":"n","Dimensions":[["A"]],"Metrics":[{"Name":"L"}]}]},"A":"x","L":[1,2,3]}"#;
        assert_eq!(
            store.try_ingest_emf_line(&format!("2024-01-01T00:00:00Z req-1 INFO {line}")),
            Ok(3)
        );
        assert_eq!(store.samples(&MetricId::new("n", "L", &[("A", "x")])).len(), 3);
        assert!(!store.ingest_emf_line("INFO sync finished {repo}"));
        assert!(!store.ingest_emf_line(r#"{"level":"INFO","message":"hello"}"#));
        assert!(!store.ingest_emf_line(""));
        let dimensionless = r#"{"_aws":{"Timestamp":5,"CloudWatchMetrics":[{"Namespace":"n","Dimensions":[],"Metrics":[{"Name":"C"}]}]},"C":1}"#;
        assert!(store.ingest_emf_line(dimensionless));
        assert_eq!(store.samples(&MetricId::new("n", "C", &[])).len(), 1);
    }

    #[test]
    fn emf_documents_cloudwatch_would_reject_are_errors() {
        let mut store = MetricStore::new();
        let missing_dim = r#"{"_aws":{"Timestamp":5,"CloudWatchMetrics":[{"Namespace":"n","Dimensions":[["A"]],"Metrics":[{"Name":"C"}]}]},"C":1}"#;
        let err = store.try_ingest_emf_line(missing_dim).unwrap_err();
        assert!(err.contains("dimension A"), "{err}");
        let bad_value = r#"{"_aws":{"Timestamp":5,"CloudWatchMetrics":[{"Namespace":"n","Dimensions":[[]],"Metrics":[{"Name":"C"}]}]},"C":"1"}"#;
        assert!(store.try_ingest_emf_line(bad_value).is_err());
        let no_timestamp = r#"{"_aws":{"CloudWatchMetrics":[]}}"#;
        assert!(
            store
                .try_ingest_emf_line(no_timestamp)
                .unwrap_err()
                .contains("Timestamp")
        );
        assert!(!store.ingest_emf_line(missing_dim));
        assert_eq!(
            store.metric_ids().count(),
            0,
            "nothing recorded from rejected documents"
        );
        let text = format!("plain\n{}\n{missing_dim}\n", sync_line("noop", 1));
        let err = store.ingest_emf_text(&text).unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        assert_eq!(store.metric_ids().count(), 3, "the valid line was recorded");
    }

    // ---- statistics, windows, scale ------------------------------------------------------

    #[test]
    fn statistics_aggregate_each_period() {
        let mut store = MetricStore::new();
        for (ts, v) in [(60_000, 4.0), (70_000, 1.0), (119_999, 7.0), (120_000, 100.0)] {
            store.put("ns", "m", &[], ts, v);
        }
        store.put("ns", "m", &[("D", "x")], 61_000, 1000.0); // another metric: ignored
        let opts = EvalOptions::default();
        let expect = [
            ("Sum", 12.0),
            ("SampleCount", 3.0),
            ("Average", 4.0),
            ("Minimum", 1.0),
            ("Maximum", 7.0),
        ];
        for (stat, want) in expect {
            let alarm = single(stat, "GreaterThanThreshold", 0.0, 1, 1, "missing", 60);
            // Evaluated at 2:00.5 (the 2:00 evaluation): periods end at 2:00; the newest is [1:00, 2:00).
            let points = alarm.datapoints(&store, 120_500, &opts);
            assert_eq!(points.len(), 3, "evaluation range = 1 + 2");
            assert_eq!(points, [None, None, Some(want)], "{stat}");
        }
    }

    #[test]
    fn comparison_operators() {
        let cases = [
            ("GreaterThanOrEqualToThreshold", [false, true, true]),
            ("GreaterThanThreshold", [false, false, true]),
            ("LessThanThreshold", [true, false, false]),
            ("LessThanOrEqualToThreshold", [true, true, false]),
        ];
        for (op, want) in cases {
            for (value, breaching) in [1.0, 2.0, 3.0].into_iter().zip(want) {
                let mut store = MetricStore::new();
                store.put("ns", "m", &[], 30_000, value);
                let alarm = single("Maximum", op, 2.0, 1, 1, "missing", 60);
                let expect = if breaching { AlarmState::Alarm } else { AlarmState::Ok };
                assert_eq!(alarm.evaluate(&store, 60_000, 1.0), expect, "{value} {op} 2");
            }
        }
    }

    #[test]
    fn scale_divides_periods_and_the_evaluation_cadence() {
        // 60 s at scale 30: 2 s periods, evaluated every 2 s.
        let alarm = single("Sum", "GreaterThanOrEqualToThreshold", 1.0, 1, 1, "notBreaching", 60);
        let mut store = MetricStore::new();
        store.put("ns", "m", &[], 5_000, 1.0); // in [4 s, 6 s)
        assert_eq!(
            alarm.evaluate(&store, 5_999, 30.0),
            AlarmState::Ok,
            "the 4 s evaluation sees [2 s, 4 s)"
        );
        assert_eq!(alarm.evaluate(&store, 6_000, 30.0), AlarmState::Alarm);
        assert_eq!(alarm.evaluate(&store, 7_999, 30.0), AlarmState::Alarm);
        let newest = |t: u64| {
            alarm
                .datapoints(&store, t, &EvalOptions::scaled(30.0))
                .last()
                .copied()
                .flatten()
        };
        assert_eq!(
            newest(8_000),
            None,
            "the newest period no longer holds the datapoint..."
        );
        // ...but CloudWatch keeps evaluating the most recent real datapoints while they are in
        // the evaluation range (EvaluationPeriods + 2 periods), whatever TreatMissingData says.
        assert_eq!(alarm.evaluate(&store, 10_000, 30.0), AlarmState::Alarm);
        assert_eq!(alarm.evaluate(&store, 12_000, 30.0), AlarmState::Ok);
        assert_eq!(
            alarm.evaluate(&store, 6_000, 1.0),
            AlarmState::Ok,
            "unscaled, 6 s is inside the first minute"
        );
        assert_eq!(alarm.evaluate(&store, 60_000, 1.0), AlarmState::Alarm);
        assert_eq!(
            alarm.evaluation_times(1, 7_000, &EvalOptions::scaled(30.0)),
            [2_000, 4_000, 6_000]
        );
    }

    #[test]
    fn windows_slide_every_minute_unless_period_aligned() {
        let alarm = single("Sum", "GreaterThanOrEqualToThreshold", 1.0, 1, 1, "notBreaching", 300);
        let mut store = MetricStore::new();
        store.put("ns", "m", &[], 30_000, 1.0);
        let newest = |t: u64, o: &EvalOptions| alarm.datapoints(&store, t, o).last().copied().flatten();
        let sliding = EvalOptions::default();
        assert_eq!(newest(59_999, &sliding), None, "the 0:00 evaluation: [-5:00, 0:00)");
        assert_eq!(
            newest(60_000, &sliding),
            Some(1.0),
            "the 1:00 evaluation: [-4:00, 1:00)"
        );
        assert_eq!(newest(330_000, &sliding), Some(1.0), "[0:00, 5:00)");
        assert_eq!(newest(360_000, &sliding), None, "[1:00, 6:00)");
        let aligned = EvalOptions {
            period_aligned: true,
            ..EvalOptions::default()
        };
        assert_eq!(newest(60_000, &aligned), None, "the 0:00 evaluation");
        assert_eq!(newest(300_000, &aligned), Some(1.0));
        assert_eq!(newest(599_999, &aligned), Some(1.0));
        assert_eq!(newest(600_000, &aligned), None);
        assert_eq!(alarm.evaluation_times(0, 600_000, &aligned), [0, 300_000, 600_000]);
        // The state: ALARM from 1:00 while the datapoint is in the 3-period evaluation range.
        let at = |t: u64| alarm.evaluate_from(&store, t, &sliding, AlarmState::InsufficientData);
        assert_eq!(at(59_999), AlarmState::Ok);
        assert_eq!(at(60_000), AlarmState::Alarm);
        assert_eq!(
            at(900_000),
            AlarmState::Alarm,
            "[0:00, 5:00) is the oldest period of the range"
        );
        assert_eq!(at(960_000), AlarmState::Ok);
    }

    #[test]
    fn units_filter_emf_datapoints() {
        let props = "Namespace: gitferry\nMetricName: SyncDuration\nStatistic: Maximum\nPeriod: 60\nEvaluationPeriods: 1\n\
                     Threshold: 1\nComparisonOperator: GreaterThanThreshold\nUnit: Seconds";
        let alarm = alarm_from(props).unwrap();
        let mut store = MetricStore::new();
        store.ingest_emf_line(&gitferry_emf("SyncDuration", "Milliseconds", 5000.0, &[], &[], 1_000));
        assert_eq!(
            alarm.evaluate(&store, 60_000, 1.0),
            AlarmState::InsufficientData,
            "a unit mismatch sees nothing"
        );
    }

    // ---- missing data: the tables of the CloudWatch User Guide -----------------------------

    #[test]
    fn missing_data_three_of_three() {
        use AlarmState::{Alarm as A, InsufficientData as I, Ok as O};
        use TreatMissingData::*;
        // Data points (oldest first), then MISSING, IGNORE (None: retain), BREACHING, NOT BREACHING.
        let rows: [(&str, AlarmState, Option<AlarmState>, AlarmState, AlarmState); 5] = [
            ("0 - X - X", O, Some(O), O, O),
            ("0 - - - -", O, Some(O), O, O),
            ("- - - - -", I, None, A, O),
            ("0 X X - X", A, Some(A), A, A),
            ("- - X - -", A, None, A, O),
        ];
        for (points, missing, ignore, breaching, not_breaching) in rows {
            assert_eq!(state(points, 3, 3, Missing, O), missing, "{points} missing");
            assert_eq!(state(points, 3, 3, Breaching, O), breaching, "{points} breaching");
            assert_eq!(
                state(points, 3, 3, NotBreaching, O),
                not_breaching,
                "{points} notBreaching"
            );
            for previous in [O, A, I] {
                assert_eq!(
                    state(points, 3, 3, Ignore, previous),
                    ignore.unwrap_or(previous),
                    "{points} ignore"
                );
            }
        }
        // Rows of the earlier version of the same page.
        assert_eq!(state("- - - - X", 3, 3, Missing, O), I);
        assert_eq!(state("X - - - -", 3, 3, Missing, O), A);
    }

    #[test]
    fn missing_data_two_of_three() {
        use AlarmState::{Alarm as A, InsufficientData as I, Ok as O};
        use TreatMissingData::*;
        let rows: [(&str, AlarmState, Option<AlarmState>, AlarmState, AlarmState); 5] = [
            ("0 - X - X", A, Some(A), A, A),
            ("0 0 X 0 X", A, Some(A), A, A),
            ("0 - X - -", O, Some(O), A, O),
            ("- - - - 0", O, Some(O), A, O),
            ("- - - X -", A, None, A, O),
        ];
        for (points, missing, ignore, breaching, not_breaching) in rows {
            assert_eq!(state(points, 3, 2, Missing, O), missing, "{points} missing");
            assert_eq!(state(points, 3, 2, Breaching, O), breaching, "{points} breaching");
            assert_eq!(
                state(points, 3, 2, NotBreaching, O),
                not_breaching,
                "{points} notBreaching"
            );
            for previous in [O, A, I] {
                assert_eq!(
                    state(points, 3, 2, Ignore, previous),
                    ignore.unwrap_or(previous),
                    "{points} ignore"
                );
            }
        }
        assert_eq!(state("- - - - X", 3, 2, Missing, O), I);
    }

    #[test]
    fn m_out_of_n_uses_the_most_recent_real_datapoints() {
        use TreatMissingData::NotBreaching;
        // 2 of 3: breaching points need not be consecutive.
        assert_eq!(
            state("0 0 X 0 X", 3, 2, NotBreaching, AlarmState::Ok),
            AlarmState::Alarm
        );
        assert_eq!(state("0 0 X 0 0", 3, 2, NotBreaching, AlarmState::Ok), AlarmState::Ok);
        // Enough real points: older ones stand in for missing recent ones, whatever the treatment.
        assert_eq!(
            state("X X - X -", 3, 3, NotBreaching, AlarmState::Ok),
            AlarmState::Alarm
        );
        // End to end, 2 of 3 over a store.
        let alarm = single("Maximum", "GreaterThanThreshold", 10.0, 3, 2, "notBreaching", 60);
        let mut store = MetricStore::new();
        for (minute, v) in [(0, 50.0), (1, 1.0), (2, 50.0)] {
            store.put("ns", "m", &[], minute * 60_000 + 1, v);
        }
        assert_eq!(alarm.evaluate(&store, 180_000, 1.0), AlarmState::Alarm);
        assert_eq!(
            alarm.evaluate(&store, 240_000, 1.0),
            AlarmState::Alarm,
            "minute 3 missing: the last 3 real ones"
        );
        store.put("ns", "m", &[], 3 * 60_000 + 1, 1.0);
        assert_eq!(
            alarm.evaluate(&store, 240_000, 1.0),
            AlarmState::Ok,
            "only 1 breaching of the last 3"
        );
    }

    #[test]
    fn ignore_keeps_the_state_through_a_timeline() {
        let alarm = single("Maximum", "GreaterThanThreshold", 10.0, 1, 1, "ignore", 60);
        let mut store = MetricStore::new();
        store.put("ns", "m", &[], 1, 50.0); // minute 0: breaching, then nothing
        let opts = EvalOptions::default();
        let times = alarm.evaluation_times(0, 600_000, &opts);
        let timeline = alarm.timeline(&store, &times, &opts);
        assert_eq!(timeline[0], (0, AlarmState::InsufficientData));
        assert!(
            timeline[1..].iter().all(|(_, s)| *s == AlarmState::Alarm),
            "{timeline:?}"
        );
        // The same with `missing`: INSUFFICIENT_DATA once the datapoint leaves the range.
        let missing = single("Maximum", "GreaterThanThreshold", 10.0, 1, 1, "missing", 60);
        let timeline = missing.timeline(&store, &times, &opts);
        assert_eq!(
            describe_timeline(0, &timeline),
            "+0.000s INSUFFICIENT_DATA, +60.000s ALARM, +240.000s INSUFFICIENT_DATA"
        );
    }

    #[test]
    fn dynamodb_alarms_always_ignore_missing_data() {
        let props = "Namespace: AWS/DynamoDB\nMetricName: ThrottledRequests\nStatistic: Sum\nPeriod: 60\n\
                     EvaluationPeriods: 1\nThreshold: 1\nComparisonOperator: GreaterThanOrEqualToThreshold\nTreatMissingData: breaching";
        let alarm = alarm_from(props).unwrap();
        let store = MetricStore::new();
        assert_eq!(
            alarm.evaluate_from(&store, 600_000, &EvalOptions::default(), AlarmState::Ok),
            AlarmState::Ok
        );
    }

    // ---- metric math ---------------------------------------------------------------------

    #[test]
    fn expression_precedence() {
        assert_eq!(scalar("1 + 2 * 3"), 7.0);
        assert_eq!(scalar("(1 + 2) * 3"), 9.0);
        assert_eq!(scalar("2 ^ 3 ^ 2"), 512.0, "right-associative");
        assert_eq!(scalar("-2 ^ 2"), -4.0, "^ binds tighter than unary minus");
        assert_eq!(scalar("2 ^ -1"), 0.5);
        assert_eq!(scalar("10 - 4 - 3"), 3.0);
        assert_eq!(scalar("12 / 3 / 2"), 2.0);
        assert_eq!(scalar("1 + 2 > 2 AND 1 < 2"), 1.0);
        assert_eq!(scalar("0 OR 0 && 1"), 0.0);
        assert_eq!(scalar("1 || 0 AND 0"), 1.0, "AND binds tighter than OR");
        assert_eq!(scalar("NOT 1 > 2"), 1.0);
        assert_eq!(scalar("!0"), 1.0);
        assert_eq!(scalar("1 == 1 != 0"), 1.0);
        assert_eq!(scalar("3 <= 3") + scalar("3 >= 4") + scalar("1.5e1 == 15"), 2.0);
        assert!(scalar("1 / 0").is_nan(), "division by zero drops the value");
    }

    #[test]
    fn arithmetic_and_comparisons_between_series() {
        // From the user guide: metric1 = [30, 20, 0, 0], metric2 = [20, -, 20, -].
        let inputs = [
            ("metric1", s(&[30.0, 20.0, 0.0, 0.0])),
            ("metric2", s(&[20.0, NA, 20.0, NA])),
        ];
        assert_eq!(series("(metric1 < metric2)", &inputs), s(&[0.0, 0.0, 1.0, 0.0]));
        assert_eq!(series("(metric1 >= 30)", &inputs), s(&[1.0, 0.0, 0.0, 0.0]));
        assert_eq!(
            series("(metric1 > 15 AND metric2 > 15)", &inputs),
            s(&[1.0, 0.0, 0.0, 0.0])
        );
        // Arithmetic: a missing value counts as 0; division by zero drops the datapoint.
        let inputs = [("a", s(&[1.0, NA, 4.0, NA])), ("b", s(&[2.0, 3.0, 0.0, NA]))];
        assert_eq!(series("a + b", &inputs), s(&[3.0, 3.0, 4.0, NA]));
        assert_eq!(series("a - b", &inputs), s(&[-1.0, -3.0, 4.0, NA]));
        assert_eq!(series("a * 10", &inputs), s(&[10.0, NA, 40.0, NA]));
        assert_eq!(series("a / b", &inputs), s(&[0.5, 0.0, NA, NA]));
        assert_eq!(series("b ^ 2", &inputs), s(&[4.0, 9.0, 0.0, NA]));
        assert_eq!(series("-a", &inputs), s(&[-1.0, NA, -4.0, NA]));
        assert_eq!(series("NOT b", &inputs), s(&[0.0, 0.0, 1.0, NA]));
        assert_eq!(series("a || b", &inputs), s(&[1.0, 1.0, 1.0, NA]));
        assert_eq!(series("a != b", &inputs), s(&[1.0, 1.0, 1.0, NA]));
        assert_eq!(series("a == 4", &inputs), s(&[0.0, NA, 1.0, NA]));
        assert_eq!(series("a <= b", &inputs), s(&[1.0, 1.0, 0.0, NA]));
        assert_eq!(
            series("ABS(a - b) + CEIL(0.5) + FLOOR(-0.5)", &inputs),
            s(&[1.0, 3.0, 4.0, NA])
        );
        assert_eq!(
            series("a - MAX(a) + MIN(b) + SUM(b) + AVG(a)", &inputs),
            s(&[4.5, NA, 7.5, NA])
        );
        assert_eq!(series("TIME_SERIES(7)", &inputs), s(&[7.0; 4]));
    }

    #[test]
    fn if_follows_the_documented_tables() {
        let inputs = [
            ("metric1", s(&[1.0, 1.0, 0.0, 0.0, NA])),
            ("metric2", s(&[30.0, NA, 0.0, 0.0, 30.0])),
            ("metric3", s(&[0.0, 0.0, 20.0, NA, 20.0])),
        ];
        assert_eq!(
            series("IF(metric1, metric2, metric3)", &inputs),
            s(&[30.0, 0.0, 20.0, NA, NA])
        );
        assert_eq!(series("IF(metric1, 5, metric3)", &inputs), s(&[5.0, 5.0, 20.0, NA, NA]));
        assert_eq!(
            series("IF(metric1, metric2, 5)", &inputs),
            s(&[30.0, 0.0, 5.0, 5.0, NA])
        );
        assert_eq!(series("IF(metric1, metric2)", &inputs), s(&[30.0, 0.0, NA, NA, NA]));
        assert_eq!(series("IF(metric2 > 10, 1, 0)", &inputs), s(&[1.0, NA, 0.0, 0.0, 1.0]));
        assert_eq!(series("IF(1, metric2, metric3)", &inputs), inputs[1].1);
        assert_eq!(series("IF(0, metric2)", &inputs), s(&[NA; 5]));
        assert_eq!(scalar("IF(0, 1, 2)"), 2.0);
    }

    #[test]
    fn fill_values_series_repeat_and_linear() {
        let inputs = [
            ("m", s(&[NA, 2.0, NA, NA, 8.0, NA])),
            ("f", s(&[9.0, 9.0, NA, 7.0, 9.0, 6.0])),
        ];
        assert_eq!(series("FILL(m, 0)", &inputs), s(&[0.0, 2.0, 0.0, 0.0, 8.0, 0.0]));
        assert_eq!(series("FILL(m, -1)", &inputs), s(&[-1.0, 2.0, -1.0, -1.0, 8.0, -1.0]));
        assert_eq!(series("FILL(m, f)", &inputs), s(&[9.0, 2.0, NA, 7.0, 8.0, 6.0]));
        assert_eq!(series("FILL(m, REPEAT)", &inputs), s(&[NA, 2.0, 2.0, 2.0, 8.0, 8.0]));
        assert_eq!(series("FILL(m, LINEAR)", &inputs), s(&[NA, 2.0, 4.0, 6.0, 8.0, NA]));
        assert_eq!(series("FILL(m, MIN(m))", &inputs), s(&[2.0, 2.0, 2.0, 2.0, 8.0, 2.0]));
    }

    #[test]
    fn fill_of_a_series_without_datapoints_follows_the_option() {
        let inputs = [("ok", s(&[NA; 3])), ("noop", s(&[NA, 1.0, NA]))];
        let expr = "FILL(ok, 0) + FILL(noop, 0)";
        assert_eq!(
            eval_expr(expr, &inputs, EmptyFill::Fill).unwrap(),
            Val::Series(s(&[0.0, 1.0, 0.0]))
        );
        assert_eq!(
            eval_expr("FILL(ok, 0)", &inputs, EmptyFill::Fill).unwrap(),
            Val::Series(s(&[0.0; 3]))
        );
        assert_eq!(
            eval_expr("FILL(ok, 0)", &inputs, EmptyFill::NoData).unwrap(),
            Val::Series(s(&[NA; 3]))
        );
        // The other side still has data, so the sum has datapoints everywhere either way.
        assert_eq!(
            eval_expr(expr, &inputs, EmptyFill::NoData).unwrap(),
            Val::Series(s(&[0.0, 1.0, 0.0]))
        );
        assert_eq!(
            eval_expr("FILL(ok, REPEAT)", &inputs, EmptyFill::Fill).unwrap(),
            Val::Series(s(&[NA; 3]))
        );
    }

    #[test]
    fn expression_errors_are_reported_when_the_alarm_is_read() {
        let math = |expr: &str| {
            alarm_from(&format!(
                "Metrics:\n  - Id: e\n    Expression: \"{expr}\"\n    ReturnData: true\n  - Id: m\n    ReturnData: false\n    \
                 MetricStat:\n      Metric: {{Namespace: ns, MetricName: x}}\n      Period: 60\n      Stat: Sum\n\
                 EvaluationPeriods: 1\nThreshold: 1\nComparisonOperator: GreaterThanThreshold"
            ))
        };
        assert!(math("FILL(m, 0) * 2").is_ok());
        let cases = [
            ("FILLL(m, 0)", "FILLL is not a supported function"),
            ("FILL(m)", "FILL takes 2 arguments"),
            ("nope + 1", "unknown id nope"),
            ("MAX(m)", "must be a time series"),
            ("FILL(1, 0)", "FILL needs a time series"),
            ("m + REPEAT", "REPEAT and LINEAR"),
            ("(m + 1", "missing )"),
            ("m +", "ends too early"),
            ("m m", "after a complete expression"),
            ("m # 2", "unexpected character"),
            ("METRICS()", "not a supported function"),
            ("e + 1", "cycle"),
        ];
        for (expr, want) in cases {
            let err = math(expr).unwrap_err();
            assert!(err.starts_with("alarm A: ") && err.contains(want), "{expr}: {err}");
        }
    }

    #[test]
    fn math_alarm_structure_is_validated() {
        let base = "EvaluationPeriods: 1\nThreshold: 1\nComparisonOperator: GreaterThanThreshold\n";
        let stat = |id: &str, period: u64, ret: bool| {
            format!(
                "  - Id: {id}\n    ReturnData: {ret}\n    MetricStat:\n      Metric: {{Namespace: ns, MetricName: {id}}}\n      Period: {period}\n      Stat: Sum\n"
            )
        };
        let two_results = format!("{base}Metrics:\n{}{}", stat("a", 60, true), stat("b", 60, true));
        assert!(
            alarm_from(&two_results)
                .unwrap_err()
                .contains("exactly one entry must have ReturnData true, not 2")
        );
        let periods = format!("{base}Metrics:\n{}{}", stat("a", 60, true), stat("b", 300, false));
        assert!(alarm_from(&periods).unwrap_err().contains("same period"));
        let duplicate = format!("{base}Metrics:\n{}{}", stat("a", 60, true), stat("a", 60, false));
        assert!(alarm_from(&duplicate).unwrap_err().contains("used twice"));
        let bad_id = format!("{base}Metrics:\n{}", stat("Abc", 60, true));
        assert!(alarm_from(&bad_id).unwrap_err().contains("lowercase"));
        let mixed = format!("{base}Namespace: ns\nMetrics:\n{}", stat("a", 60, true));
        assert!(
            alarm_from(&mixed)
                .unwrap_err()
                .contains("cannot be combined with Namespace")
        );
        let plain = format!("{base}Metrics:\n{}", stat("a", 60, true));
        let alarm = alarm_from(&plain).unwrap();
        assert_eq!(alarm.period_s, 60);
        assert_eq!(alarm.metrics(), [&MetricId::new("ns", "a", &[])]);
    }

    #[test]
    fn math_alarm_end_to_end_with_if() {
        // Error rate in percent, only when there were at least 10 requests.
        let props = "Metrics:\n\
                     \x20 - {Id: rate, Expression: 'IF(req >= 10, 100 * FILL(err, 0) / req, 0)', ReturnData: true}\n\
                     \x20 - Id: req\n    ReturnData: false\n    MetricStat: {Metric: {Namespace: ns, MetricName: Requests}, Period: 60, Stat: Sum}\n\
                     \x20 - Id: err\n    ReturnData: false\n    MetricStat: {Metric: {Namespace: ns, MetricName: Errors}, Period: 60, Stat: Sum}\n\
                     EvaluationPeriods: 1\nThreshold: 5\nComparisonOperator: GreaterThanThreshold\nTreatMissingData: missing";
        let alarm = alarm_from(props).unwrap();
        let mut store = MetricStore::new();
        store.put("ns", "Requests", &[], 1_000, 100.0);
        store.put("ns", "Errors", &[], 2_000, 6.0);
        store.put("ns", "Requests", &[], 61_000, 5.0); // too few requests to judge
        store.put("ns", "Errors", &[], 62_000, 5.0);
        store.put("ns", "Requests", &[], 121_000, 100.0); // no errors at all
        let opts = EvalOptions::default();
        assert_eq!(alarm.datapoints(&store, 60_000, &opts), [None, None, Some(6.0)]);
        assert_eq!(alarm.evaluate(&store, 60_000, 1.0), AlarmState::Alarm);
        assert_eq!(alarm.evaluate(&store, 120_000, 1.0), AlarmState::Ok);
        assert_eq!(
            alarm.datapoints(&store, 180_000, &opts),
            [Some(6.0), Some(0.0), Some(0.0)]
        );
        assert_eq!(
            alarm.evaluate(&store, 300_000, 1.0),
            AlarmState::Ok,
            "[0, -, -]: the last real datapoint"
        );
        assert_eq!(alarm.evaluate(&store, 420_000, 1.0), AlarmState::InsufficientData);
    }

    // ---- template resolution -------------------------------------------------------------

    const RESOLUTION: &str = r#"
Parameters:
  Minutes: {Type: Number, Default: 15}
  Limit: {Type: Number, Default: '3'}
  Topic: {Type: String, Default: ''}
  Env: {Type: String, Default: prod}
  Required: {Type: String}
Conditions:
  HasTopic: !Not [!Equals [!Ref Topic, '']]
  IsProd: !Equals [!Ref Env, prod]
  Strict: !And [!Condition IsProd, !Or [!Equals [!Ref Limit, 3], !Condition HasTopic]]
  Loop: !Condition Loop
Resources:
  Queue:
    Type: AWS::SQS::Queue
  Watch:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !Sub '${Env}-watch-${Queue.QueueName}-${!Literal}'
      Namespace: AWS/SQS
      MetricName: ApproximateAgeOfOldestMessage
      Dimensions:
        - Name: QueueName
          Value: !GetAtt Queue.QueueName
      Statistic: Maximum
      Period: !If [Strict, 60, 300]
      EvaluationPeriods: !Ref Minutes
      DatapointsToAlarm: !If [HasTopic, 1, !Ref AWS::NoValue]
      Threshold: !Ref Limit
      ComparisonOperator: GreaterThanThreshold
      AlarmActions: !If [HasTopic, [!Ref Topic], !Ref AWS::NoValue]
      OKActions: [!Ref Pager]
  OnlyWithTopic:
    Type: AWS::CloudWatch::Alarm
    Condition: HasTopic
    Properties:
      Namespace: n
      MetricName: m
      Statistic: Sum
      Period: 60
      EvaluationPeriods: 1
      Threshold: 1
      ComparisonOperator: GreaterThanThreshold
  NeedsParam:
    Type: AWS::CloudWatch::Alarm
    Condition: Never
    Properties: {}
Outputs: {}
"#;

    #[test]
    fn intrinsics_resolve_against_parameters_conditions_and_attributes() {
        let attrs = map(&[("Queue.QueueName", "q1.fifo")]);
        let tpl = Template::parse(RESOLUTION, &no_params(), &attrs).unwrap();
        assert_eq!(tpl.alarm_ids(), ["Watch", "OnlyWithTopic", "NeedsParam"]);
        let watch = tpl.alarm("Watch").unwrap();
        assert_eq!(watch.name.as_deref(), Some("prod-watch-q1.fifo-${Literal}"));
        assert_eq!(watch.period_s, 60, "Strict: IsProd and Limit == 3");
        assert_eq!(
            (watch.evaluation_periods, watch.datapoints_to_alarm),
            (15, 15),
            "NoValue drops the property"
        );
        assert_eq!(watch.threshold, 3.0, "a number given as a string");
        assert_eq!(
            watch.metrics(),
            [&MetricId::new(
                "AWS/SQS",
                "ApproximateAgeOfOldestMessage",
                &[("QueueName", "q1.fifo")]
            )]
        );
        assert!(tpl.alarm("OnlyWithTopic").unwrap_err().contains("Condition is false"));

        let params = map(&[
            ("Topic", "arn:aws:sns:eu-west-1:123456789012:t"),
            ("Env", "dev"),
            ("Minutes", "5"),
        ]);
        let tpl = Template::parse(RESOLUTION, &params, &attrs).unwrap();
        let watch = tpl.alarm("Watch").unwrap();
        assert_eq!(
            (watch.period_s, watch.evaluation_periods, watch.datapoints_to_alarm),
            (300, 5, 1)
        );
        assert_eq!(tpl.alarm("OnlyWithTopic").unwrap().id, "OnlyWithTopic");
    }

    #[test]
    fn long_form_intrinsics_and_join() {
        let text = r#"{
          "Parameters": {"Env": {"Type": "String", "Default": "prod"}},
          "Conditions": {"IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]}},
          "Resources": {"A": {"Type": "AWS::CloudWatch::Alarm", "Properties": {
            "Namespace": {"Fn::Join": ["/", ["gitferry", {"Ref": "Env"}]]},
            "MetricName": "Syncs",
            "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["Queue", "QueueName"]}}],
            "Statistic": "Sum",
            "Period": {"Fn::If": ["IsProd", 60, 300]},
            "EvaluationPeriods": 1,
            "Threshold": 1,
            "ComparisonOperator": "GreaterThanThreshold",
            "AlarmName": {"Fn::Sub": "${AWS::StackName}-a"}
          }}}
        }"#;
        let attrs = map(&[("Queue.QueueName", "q")]);
        let alarm = Template::parse(text, &no_params(), &attrs).unwrap().alarm("A").unwrap();
        assert_eq!(
            alarm.metrics(),
            [&MetricId::new("gitferry/prod", "Syncs", &[("QueueName", "q")])]
        );
        assert_eq!(alarm.period_s, 60);
        assert_eq!(alarm.name, None, "AWS::StackName was not given: the name is left out");
        let tpl = Template::parse(text, &map(&[("AWS::StackName", "s")]), &attrs).unwrap();
        assert_eq!(tpl.alarm("A").unwrap().name.as_deref(), Some("s-a"));
    }

    #[test]
    fn template_problems_name_the_alarm_and_the_field() {
        let tpl = Template::parse(RESOLUTION, &no_params(), &no_params()).unwrap();
        let err = tpl.alarm("Watch").unwrap_err();
        assert!(
            err.contains("Watch.Properties.Dimensions[0].Value") && err.contains("Queue.QueueName"),
            "{err}"
        );
        let err = tpl.alarms().unwrap_err();
        assert!(err.contains("Queue.QueueName"), "{err}");
        let err = tpl.alarm("NeedsParam").unwrap_err();
        assert!(err.contains("condition Never is not defined"), "{err}");
        assert!(
            Template::parse(RESOLUTION, &map(&[("Nope", "1")]), &no_params())
                .unwrap_err()
                .contains("Nope")
        );
        let looped = RESOLUTION.replace("Condition: HasTopic", "Condition: Loop");
        let tpl = Template::parse(&looped, &no_params(), &map(&[("Queue.QueueName", "q")])).unwrap();
        assert!(tpl.alarm("OnlyWithTopic").unwrap_err().contains("refers to itself"));

        let bad = [
            ("Threshold: lots", "Threshold"),
            ("EvaluationPeriods: 0", "EvaluationPeriods"),
            (
                "DatapointsToAlarm: 9",
                "DatapointsToAlarm 9 is more than EvaluationPeriods 1",
            ),
            ("Period: 45", "not a valid alarm period"),
            ("Statistic: p99", "statistic \"p99\" is not supported"),
            (
                "ComparisonOperator: LessThanLowerOrGreaterThanUpperThreshold",
                "ComparisonOperator",
            ),
            ("TreatMissingData: Breaching", "TreatMissingData"),
            ("ExtendedStatistic: p99", "ExtendedStatistic is not supported"),
            ("Treshold: 1", "unknown property Treshold"),
        ];
        let good = "Namespace: n\nMetricName: m\nStatistic: Sum\nPeriod: 60\nEvaluationPeriods: 1\nThreshold: 1\nComparisonOperator: GreaterThanThreshold";
        assert!(alarm_from(good).is_ok());
        for (line, want) in bad {
            let key = line.split(':').next().unwrap_or_default();
            let props: String = good
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}:")))
                .chain([line])
                .collect::<Vec<_>>()
                .join("\n");
            let err = alarm_from(&props).unwrap_err();
            assert!(err.starts_with("alarm A: ") && err.contains(want), "{line}: {err}");
        }
        let missing = good.replace("MetricName: m\n", "");
        assert!(alarm_from(&missing).unwrap_err().contains("MetricName is missing"));
        let err = Template::parse(
            "Parameters: {P: {Type: String}}\nResources:\n  A:\n    Type: AWS::CloudWatch::Alarm\n    Properties: {Threshold: !Ref P}\n",
            &no_params(),
            &no_params(),
        )
        .unwrap()
        .alarm("A")
        .unwrap_err();
        assert!(
            err.contains("A.Properties.Threshold") && err.contains("parameter P has no Default"),
            "{err}"
        );
    }

    // ---- the project's template ------------------------------------------------------------

    fn project_template(params: &[(&str, &str)]) -> Template {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml"));
        let attrs = map(&[
            ("SyncQueue.QueueName", "sync.fifo"),
            ("SyncDeadLetterQueue.QueueName", "dead.fifo"),
        ]);
        Template::load(path, &map(params), &attrs).unwrap()
    }

    #[test]
    fn every_alarm_of_the_project_template_parses() {
        let tpl = project_template(&[]);
        let alarms = tpl.alarms().unwrap();
        let ids: Vec<&str> = alarms.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            tpl.alarm_ids(),
            "every alarm is created with the default parameters"
        );
        assert!(!alarms.is_empty());
        for alarm in &alarms {
            assert!(!alarm.metrics().is_empty(), "{}", alarm.id);
            let store = MetricStore::new();
            let opts = EvalOptions::scaled(30.0);
            let times = alarm.evaluation_times(0, 60_000, &opts);
            assert_eq!(alarm.timeline(&store, &times, &opts).len(), times.len());
        }
        // With an alarm topic the actions are set; evaluation is unchanged.
        let with_topic = project_template(&[("AlarmTopicArn", "arn:aws:sns:eu-west-1:123456789012:alarms")]);
        assert_eq!(with_topic.alarms().unwrap().len(), alarms.len());
    }

    #[test]
    fn project_watchdog_watches_the_poller_staleness_and_failing_syncs() {
        let tpl = project_template(&[]);
        let watchdog = tpl.alarm("WatchdogAlarm").unwrap();
        let n = watchdog.evaluation_periods as u64;
        for empty_fill in [EmptyFill::Fill, EmptyFill::NoData] {
            let opts = EvalOptions {
                empty_fill,
                ..EvalOptions::scaled(30.0)
            };
            let minute = opts.scaled_ms(60);
            let t0 = 1_000 * minute; // an evaluation instant
            let states = |store: &MetricStore, until: u64| {
                let times = watchdog.evaluation_times(t0, until, &opts);
                transitions(&watchdog.timeline(store, &times, &opts))
            };
            // A healthy idle fleet: a tick a minute, nothing stale, no syncs at all. OK from the
            // first healthy minute; when the ticks stop, ALARM after N minutes.
            let mut idle = MetricStore::new();
            for m in 0..2 * n {
                idle.ingest_emf_line(&tick_line(0.0, t0 + m * minute + 10));
            }
            let quiet_from = t0 + 2 * n * minute;
            assert_eq!(
                states(&idle, quiet_from + (n + 2) * minute),
                vec![
                    (t0, AlarmState::Alarm),
                    (t0 + minute, AlarmState::Ok),
                    (quiet_from + n * minute, AlarmState::Alarm)
                ],
                "{empty_fill:?}"
            );
            // Ticks go on, but a repository is stale (or every sync fails): ALARM after N minutes.
            for unhealthy in ["stale", "failing"] {
                let mut store = MetricStore::new();
                for m in 0..3 * n {
                    let bad = m >= n;
                    let stale = if bad && unhealthy == "stale" { 1.0 } else { 0.0 };
                    store.ingest_emf_line(&tick_line(stale, t0 + m * minute + 10));
                    if bad && unhealthy == "failing" {
                        store.ingest_emf_line(&sync_line("failed", t0 + m * minute + 20));
                    }
                }
                let bad_from = t0 + n * minute;
                assert_eq!(
                    states(&store, t0 + 3 * n * minute),
                    vec![
                        (t0, AlarmState::Alarm),
                        (t0 + minute, AlarmState::Ok),
                        (bad_from + n * minute, AlarmState::Alarm)
                    ],
                    "{unhealthy} {empty_fill:?}"
                );
            }
            // A failure next to a success in the same minute is not "every sync fails".
            let mut mixed = MetricStore::new();
            for m in 0..2 * n {
                mixed.ingest_emf_line(&tick_line(0.0, t0 + m * minute + 10));
                mixed.ingest_emf_line(&sync_line("failed", t0 + m * minute + 20));
                mixed.ingest_emf_line(&sync_line("success", t0 + m * minute + 30));
            }
            assert_eq!(
                states(&mixed, t0 + 2 * n * minute),
                vec![(t0, AlarmState::Alarm), (t0 + minute, AlarmState::Ok)]
            );
        }
    }

    #[test]
    fn project_sync_failures_alarm_counts_failures_over_its_period() {
        let tpl = project_template(&[]);
        let alarm = tpl.alarm("SyncFailuresAlarm").unwrap();
        let opts = EvalOptions::scaled(30.0);
        let minute = opts.scaled_ms(60);
        let period = opts.scaled_ms(alarm.period_s);
        let threshold = alarm.threshold as u64;
        let t0 = 1_000 * minute;
        let mut store = MetricStore::new();
        for i in 0..threshold {
            store.ingest_emf_line(&sync_line("failed", t0 + i * minute + 1));
            store.ingest_emf_line(&sync_line("success", t0 + i * minute + 2)); // other outcomes don't count
        }
        let last_failure_seen = t0 + threshold * minute;
        let at = |t: u64| alarm.evaluate_from(&store, t, &opts, AlarmState::Ok);
        assert_eq!(at(last_failure_seen - minute), AlarmState::Ok, "one failure short");
        assert_eq!(at(last_failure_seen), AlarmState::Alarm);
        assert_eq!(
            at(t0 + period),
            AlarmState::Alarm,
            "the first failure is still in the window"
        );
        assert_eq!(at(t0 + period + minute), AlarmState::Ok, "the first failure slid out");
    }

    #[test]
    fn project_queue_alarms_read_the_harness_sqs_samples() {
        let tpl = project_template(&[("QueueAgeAlarmSeconds", "120")]);
        let opts = EvalOptions::scaled(30.0);
        let minute = opts.scaled_ms(60);
        let t0 = 1_000 * minute;
        {
            let dead = tpl.alarm("DeadLetterAlarm").unwrap();
            let mut store = MetricStore::new();
            let metric = dead.metrics()[0].clone();
            let dims: Vec<(&str, &str)> = metric
                .dimensions
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(dims, [("QueueName", "dead.fifo")]);
            store.put(&metric.namespace, &metric.name, &dims, t0 + 1, 0.0);
            assert_eq!(dead.evaluate(&store, t0 + minute, 30.0), AlarmState::Ok);
            store.put(&metric.namespace, &metric.name, &dims, t0 + minute + 1, 1.0);
            assert_eq!(dead.evaluate(&store, t0 + 2 * minute, 30.0), AlarmState::Alarm);
        }
        {
            let age = tpl.alarm("QueueAgeAlarm").unwrap();
            assert_eq!(age.threshold, 120.0, "the parameter override, given as a string");
            let mut store = MetricStore::new();
            let metric = age.metrics()[0].clone();
            let dims: Vec<(&str, &str)> = metric
                .dimensions
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            store.put(&metric.namespace, &metric.name, &dims, t0 + 1, 121.0);
            assert_eq!(age.evaluate(&store, t0 + minute, 30.0), AlarmState::Alarm);
            assert_eq!(
                age.evaluate(&store, t0 + 20 * minute, 30.0),
                AlarmState::Ok,
                "notBreaching once the sample is old"
            );
        }
    }
}
