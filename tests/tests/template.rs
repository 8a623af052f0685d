//! `template.yaml` is part of the product: these tests parse it and hold it to the code, so the
//! two cannot drift.
//!
//! * every environment variable a function reads is set on it (`gitferry_lambda::*_ENV_VARS`),
//!   no function sets a `GITFERRY_*` variable the code does not know, and the status token
//!   comes from Secrets Manager, never from a plain parameter;
//! * every metric the dashboard and the alarms use is one the code emits
//!   (`gitferry_core::metrics::CATALOGUE`), with a dimension it emits; AWS metrics are from a
//!   known list (a typo would show an empty graph, not an error);
//! * the queue is FIFO (dedup and throughput per message group) with a visibility timeout of the
//!   sync function's timeout plus 1 to 5 minutes, agreeing with `GITFERRY_VISIBILITY_SECS`, and a FIFO
//!   dead-letter queue; the event source mapping reports batch item failures with a batch ≤ 10;
//! * the HTTP routes of `gitferry_core::api`, the one-minute schedule, least-privilege policies;
//! * `infra/mirrors.toml` is a valid configuration, and every secret it names is in
//!   `infra/secrets.example.json`.
//!
//! The checks return a list of problems instead of panicking at the first, and
//! `breaking_the_template_is_caught` applies deliberate mistakes to the real file to prove each
//! kind of check can fail.
//!
//! CloudFormation's short-form tags (`!Ref`, `!Sub`, `!GetAtt`, `!If`…) reach serde_yaml as
//! tagged values; [`to_json`] turns them into the long form (`{"Ref": …}`, `{"Fn::Sub": …}`) so
//! the checks read one shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gitferry_core::metrics::{CATALOGUE, NAMESPACE};
use serde_json::{Map, Value, json};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

// ---- YAML with CloudFormation tags → JSON ----------------------------------------------------

fn to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            let tag = t.tag.to_string();
            let name = tag.trim_start_matches('!').to_owned();
            let inner = to_json(t.value);
            match name.as_str() {
                "Ref" => json!({ "Ref": inner }),
                "Condition" => json!({ "Condition": inner }),
                "GetAtt" => {
                    let parts = match &inner {
                        Value::String(s) => match s.split_once('.') {
                            Some((a, b)) => json!([a, b]),
                            None => inner.clone(),
                        },
                        _ => inner,
                    };
                    json!({ "Fn::GetAtt": parts })
                }
                other => {
                    let mut m = Map::new();
                    m.insert(format!("Fn::{other}"), inner);
                    Value::Object(m)
                }
            }
        }
    }
}

fn parse(text: &str) -> Result<Value, String> {
    let y: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| format!("template.yaml does not parse: {e}"))?;
    Ok(to_json(y))
}

// ---- helpers -------------------------------------------------------------------------------

struct Template<'a> {
    t: &'a Value,
}

impl<'a> Template<'a> {
    fn resources(&self) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        self.t["Resources"].as_object().into_iter().flat_map(|m| m.iter())
    }

    fn of_type(&self, ty: &'a str) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        self.resources().filter(move |(_, r)| r["Type"] == ty)
    }

    fn resource(&self, id: &str) -> &'a Value {
        &self.t["Resources"][id]
    }

    fn parameter(&self, name: &str) -> Option<&'a Value> {
        self.t["Parameters"].get(name)
    }

    /// A function property, falling back to `Globals.Function`.
    fn function_prop(&self, f: &'a Value, prop: &str) -> &'a Value {
        match f["Properties"].get(prop) {
            Some(v) => v,
            None => &self.t["Globals"]["Function"][prop],
        }
    }

    /// A literal number, or a parameter's default (with its MaxValue when it has one).
    fn number(&self, v: &Value) -> Option<(f64, Option<f64>)> {
        match v {
            Value::Number(n) => n.as_f64().map(|x| (x, Some(x))),
            Value::String(s) => s.parse().ok().map(|x| (x, Some(x))),
            Value::Object(o) if o.contains_key("Ref") => {
                let p = self.parameter(o["Ref"].as_str()?)?;
                let default = self.number(&p["Default"])?.0;
                let max = p.get("MaxValue").and_then(|m| self.number(m)).map(|m| m.0);
                Some((default, max))
            }
            _ => None,
        }
    }
}

/// The logical id an intrinsic points at: `Ref X`, `GetAtt X.Attr`.
fn target(v: &Value) -> Option<&str> {
    if let Some(r) = v.get("Ref") {
        return r.as_str();
    }
    match v.get("Fn::GetAtt") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_str),
        Some(Value::String(s)) => s.split('.').next(),
        _ => None,
    }
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("Ref") {
                out.push(r.clone());
            }
            o.values().for_each(|x| refs(x, out));
        }
        _ => {}
    }
}

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        other => vec![other],
    }
}

// ---- the checks ----------------------------------------------------------------------------

const FUNCTIONS: [(&str, &[&str]); 3] = [
    ("webhook", gitferry_lambda::WEBHOOK_ENV_VARS),
    ("poll", gitferry_lambda::POLL_ENV_VARS),
    ("sync", gitferry_lambda::SYNC_ENV_VARS),
];

/// The HTTP API routes the webhook function must receive (`gitferry_core::api`).
const ROUTES: [(&str, &str); 6] = [
    ("POST", "/webhook/{provider}"),
    ("GET", "/status"),
    ("GET", "/status/{repo}"),
    ("POST", "/repos/{repo}/sync"),
    ("GET", "/"),
    ("GET", "/repos/{repo}"),
];

/// AWS metrics the dashboard and alarms may use, with the dimensions they take.
const AWS_METRICS: &[(&str, &str, &[&str])] = &[
    ("AWS/SQS", "ApproximateAgeOfOldestMessage", &["QueueName"]),
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible", &["QueueName"]),
    ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", &["QueueName"]),
    ("AWS/SQS", "NumberOfMessagesSent", &["QueueName"]),
    ("AWS/SQS", "NumberOfMessagesDeleted", &["QueueName"]),
    ("AWS/Lambda", "Errors", &["FunctionName"]),
    ("AWS/Lambda", "Throttles", &["FunctionName"]),
    ("AWS/Lambda", "Invocations", &["FunctionName"]),
    ("AWS/Lambda", "Duration", &["FunctionName"]),
    ("AWS/Lambda", "ConcurrentExecutions", &["FunctionName"]),
    ("AWS/ApiGateway", "Count", &["ApiId", "Stage"]),
    ("AWS/ApiGateway", "4xx", &["ApiId", "Stage"]),
    ("AWS/ApiGateway", "5xx", &["ApiId", "Stage"]),
    ("AWS/ApiGateway", "Latency", &["ApiId", "Stage"]),
];

/// One metric as a graph or an alarm uses it.
#[derive(Clone, Debug)]
struct MetricUse {
    at: String,
    namespace: String,
    name: String,
    dims: Vec<(String, String)>,
    stat: Option<String>,
}

fn check(text: &str) -> Vec<String> {
    let t = match parse(text) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let tpl = Template { t: &t };
    let mut p = Vec::new();
    if t["Transform"] != "AWS::Serverless-2016-10-31" {
        p.push("Transform must be AWS::Serverless-2016-10-31".into());
    }
    let functions = check_functions(&tpl, &mut p);
    check_queue(&tpl, functions.get("sync").map(String::as_str), &mut p);
    check_routes_and_schedule(&tpl, &functions, &mut p);
    check_iam(&tpl, &functions, &mut p);
    check_secrets(&tpl, &mut p);
    let uses = check_dashboard(&tpl, &mut p);
    let alarm_uses = check_alarms(&tpl, &mut p);
    check_metrics(&uses, &alarm_uses, &functions, &mut p);
    p
}

/// Binary name → logical id of its function; checks build metadata and environment.
fn check_functions(tpl: &Template, p: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for (id, f) in tpl.of_type("AWS::Serverless::Function") {
        let md = &f["Metadata"];
        if md["BuildMethod"] != "rust-cargolambda" {
            p.push(format!("{id}: Metadata.BuildMethod must be rust-cargolambda"));
        }
        let Some(bin) = md["BuildProperties"]["Binary"].as_str() else {
            p.push(format!("{id}: Metadata.BuildProperties.Binary must name the binary"));
            continue;
        };
        found.insert(bin.to_owned(), id.clone());
        if tpl.function_prop(f, "Runtime") != "provided.al2023" {
            p.push(format!("{id}: Runtime must be provided.al2023"));
        }
        if tpl.function_prop(f, "Handler") != "bootstrap" {
            p.push(format!("{id}: Handler must be bootstrap"));
        }
        let arch = tpl.function_prop(f, "Architectures");
        let arch_param = as_list(arch)
            .first()
            .and_then(|a| target(a))
            .and_then(|n| tpl.parameter(n));
        match arch_param {
            Some(param)
                if param["Default"] == "arm64" && as_list(&param["AllowedValues"]).iter().any(|v| *v == "x86_64") => {}
            _ => p.push(format!(
                "{id}: Architectures must come from a parameter (default arm64, x86_64 allowed)"
            )),
        }
    }
    let known: BTreeSet<&str> = gitferry_lambda::ENV_VARS.iter().copied().collect();
    let mut needed_by_someone = BTreeSet::new();
    for (bin, needs) in FUNCTIONS {
        needed_by_someone.extend(needs.iter().copied());
        let Some(id) = found.get(bin) else {
            p.push(format!(
                "no AWS::Serverless::Function builds the binary {bin:?} (Metadata.BuildProperties.Binary)"
            ));
            continue;
        };
        let f = tpl.resource(id);
        let vars = &f["Properties"]["Environment"]["Variables"];
        let globals = &tpl.t["Globals"]["Function"]["Environment"]["Variables"];
        let set = |name: &str| vars.get(name).or_else(|| globals.get(name));
        for name in needs {
            if set(name).is_none() {
                p.push(format!("{id} ({bin}): environment variable {name} is not set"));
            }
        }
        for name in vars.as_object().into_iter().flat_map(|m| m.keys()) {
            if name.starts_with("GITFERRY_") && !known.contains(name.as_str()) {
                p.push(format!(
                    "{id} ({bin}): sets {name}, which no function reads (not in gitferry_lambda::ENV_VARS)"
                ));
            }
        }
    }
    for name in known.difference(&needed_by_someone) {
        p.push(format!(
            "{name} is in ENV_VARS but in no function's list (WEBHOOK/POLL/SYNC_ENV_VARS)"
        ));
    }
    if let Some(id) = found.get("webhook") {
        let max_body = &tpl.resource(id)["Properties"]["Environment"]["Variables"]["GITFERRY_MAX_BODY"];
        if tpl.number(max_body).map(|n| n.0) != Some(gitferry_core::webhook::DEFAULT_MAX_BODY as f64) {
            p.push("GITFERRY_MAX_BODY should default to gitferry_core::webhook::DEFAULT_MAX_BODY".into());
        }
    }
    found
}

fn check_queue(tpl: &Template, sync: Option<&str>, p: &mut Vec<String>) {
    let Some(sync) = sync else { return };
    let f = tpl.resource(sync);
    // The trigger: an explicit event source mapping (SAM's `SQS` event would attach a managed
    // policy reading every queue in the account).
    for (name, e) in f["Properties"]["Events"].as_object().into_iter().flat_map(|m| m.iter()) {
        if e["Type"] == "SQS" {
            p.push(format!(
                "{sync}: event {name} is a SAM SQS event, which attaches AWSLambdaSQSQueueExecutionRole (Resource \"*\"); use an AWS::Lambda::EventSourceMapping"
            ));
        }
    }
    let mappings: Vec<(&String, &Value)> = tpl
        .of_type("AWS::Lambda::EventSourceMapping")
        .filter(|(_, m)| target(&m["Properties"]["FunctionName"]) == Some(sync))
        .collect();
    let [(esm_id, esm)] = mappings.as_slice() else {
        p.push(format!(
            "expected exactly one AWS::Lambda::EventSourceMapping for {sync}, found {}",
            mappings.len()
        ));
        return;
    };
    let props = &esm["Properties"];
    if !as_list(&props["FunctionResponseTypes"])
        .iter()
        .any(|v| *v == "ReportBatchItemFailures")
    {
        p.push(format!(
            "{esm_id}: FunctionResponseTypes must include ReportBatchItemFailures"
        ));
    }
    match tpl.number(&props["BatchSize"]) {
        Some((default, Some(max))) if default <= 10.0 && max <= 10.0 && default >= 1.0 => {}
        other => p.push(format!(
            "{esm_id}: BatchSize must be 1..=10 for a FIFO queue (found {other:?}; a parameter needs MaxValue ≤ 10)"
        )),
    }
    if props.get("MaximumBatchingWindowInSeconds").is_some() {
        p.push(format!(
            "{esm_id}: FIFO event sources do not support MaximumBatchingWindowInSeconds"
        ));
    }
    let Some(queue_id) = target(&props["EventSourceArn"]) else {
        p.push(format!(
            "{esm_id}: EventSourceArn must point at the queue of this template"
        ));
        return;
    };
    let q = tpl.resource(queue_id);
    let qp = &q["Properties"];
    if q["Type"] != "AWS::SQS::Queue" {
        p.push(format!("{esm_id}: EventSourceArn {queue_id} is not an AWS::SQS::Queue"));
        return;
    }
    for (key, want) in [
        ("FifoQueue", json!(true)),
        ("ContentBasedDeduplication", json!(false)),
        ("DeduplicationScope", json!("messageGroup")),
        ("FifoThroughputLimit", json!("perMessageGroupId")),
    ] {
        if qp[key] != want {
            p.push(format!("{queue_id}: {key} must be {want}"));
        }
    }
    let timeout = tpl.number(tpl.function_prop(f, "Timeout")).map(|n| n.0);
    let visibility = tpl.number(&qp["VisibilityTimeout"]).map(|n| n.0);
    match (timeout, visibility) {
        (Some(timeout), Some(vis)) => {
            if timeout > 900.0 {
                p.push(format!("{sync}: Timeout {timeout} exceeds Lambda's 900 s"));
            }
            if vis < timeout + 60.0 {
                p.push(format!(
                    "{queue_id}: VisibilityTimeout {vis} is below the sync timeout ({timeout} s) + a 60 s margin"
                ));
            }
            if vis > timeout + 300.0 {
                p.push(format!(
                    "{queue_id}: VisibilityTimeout {vis} is more than 5 minutes above the sync timeout ({timeout} s): \
                     a killed sync's request would wait that long"
                ));
            }
            let env = &f["Properties"]["Environment"]["Variables"]["GITFERRY_VISIBILITY_SECS"];
            if tpl.number(env).map(|n| n.0) != Some(vis) {
                p.push(format!(
                    "{sync}: GITFERRY_VISIBILITY_SECS must equal {queue_id}.VisibilityTimeout ({vis})"
                ));
            }
        }
        _ => p.push(format!(
            "{sync}.Timeout and {queue_id}.VisibilityTimeout must be literal numbers (so they can be checked)"
        )),
    }
    let redrive = &qp["RedrivePolicy"];
    match target(&redrive["deadLetterTargetArn"]) {
        Some(dlq) if tpl.resource(dlq)["Properties"]["FifoQueue"] == json!(true) => {}
        _ => p.push(format!(
            "{queue_id}: RedrivePolicy.deadLetterTargetArn must be a FIFO queue of this template"
        )),
    }
    if tpl.number(&redrive["maxReceiveCount"]).is_none() {
        p.push(format!("{queue_id}: RedrivePolicy.maxReceiveCount must be set"));
    }
    // /tmp must hold the warm repositories the sync keeps.
    let storage = tpl
        .number(&tpl.function_prop(f, "EphemeralStorage")["Size"])
        .map(|n| n.0);
    let keep = gitferry_core::sync::SyncOptions::default().max_local_bytes as f64 / (1024.0 * 1024.0);
    match storage {
        Some(mb) if mb > keep && mb <= 10240.0 => {}
        other => p.push(format!(
            "{sync}: EphemeralStorage.Size must exceed max_local_bytes ({keep} MB) and be ≤ 10240 (found {other:?})"
        )),
    }
}

fn check_routes_and_schedule(tpl: &Template, functions: &BTreeMap<String, String>, p: &mut Vec<String>) {
    let events = |bin: &str| -> Vec<&Value> {
        functions
            .get(bin)
            .and_then(|id| tpl.resource(id)["Properties"]["Events"].as_object())
            .map(|m| m.values().collect())
            .unwrap_or_default()
    };
    let routes: BTreeSet<(String, String)> = events("webhook")
        .into_iter()
        .filter(|e| e["Type"] == "HttpApi")
        .map(|e| {
            let pr = &e["Properties"];
            (
                pr["Method"].as_str().unwrap_or("").to_uppercase(),
                pr["Path"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (method, path) in ROUTES {
        if !routes.contains(&(method.to_owned(), path.to_owned())) {
            p.push(format!("webhook function: HTTP API route {method} {path} is missing"));
        }
    }
    let tick = format!("rate({} minute)", gitferry_core::poll::TICK_SECS / 60);
    if !events("poll")
        .iter()
        .any(|e| e["Type"] == "Schedule" && e["Properties"]["Schedule"] == tick.as_str())
    {
        p.push(format!(
            "poll function: needs a Schedule event {tick:?} (gitferry_core::poll::TICK_SECS)"
        ));
    }
}

/// Least privilege: no wildcard resources or actions; each function only the actions it uses.
fn check_iam(tpl: &Template, functions: &BTreeMap<String, String>, p: &mut Vec<String>) {
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        (
            "webhook",
            &[
                "sqs:SendMessage",
                "s3:GetObject",
                "s3:ListBucket",
                "secretsmanager:GetSecretValue",
            ][..],
        ),
        (
            "poll",
            &[
                "sqs:SendMessage",
                "s3:GetObject",
                "s3:PutObject",
                "s3:ListBucket",
                "secretsmanager:GetSecretValue",
            ][..],
        ),
        (
            "sync",
            &[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListBucket",
                "secretsmanager:GetSecretValue",
            ][..],
        ),
    ]);
    for (bin, id) in functions {
        let f = tpl.resource(id);
        if f["Properties"].get("Role").is_some() {
            continue; // an explicit role is checked where it is defined
        }
        let mut actions = BTreeSet::new();
        for policy in as_list(&f["Properties"]["Policies"]) {
            let Some(statements) = policy.get("Statement") else {
                p.push(format!(
                    "{id}: only inline policy documents are allowed (found {policy})"
                ));
                continue;
            };
            for s in as_list(statements) {
                // `!If [cond, statement, !Ref AWS::NoValue]`
                let s = match s.get("Fn::If") {
                    Some(Value::Array(a)) if a.len() == 3 => &a[1],
                    _ => s,
                };
                for a in as_list(&s["Action"]) {
                    let a = a.as_str().unwrap_or("?");
                    if a.contains('*') {
                        p.push(format!("{id}: wildcard action {a}"));
                    }
                    actions.insert(a.to_owned());
                }
                for r in as_list(&s["Resource"]) {
                    if r == "*" {
                        p.push(format!("{id}: statement {} grants Resource \"*\"", s["Sid"]));
                    }
                }
            }
        }
        for a in &actions {
            if !allowed.get(bin.as_str()).is_some_and(|ok| ok.contains(&a.as_str())) {
                p.push(format!("{id} ({bin}): action {a} is more than this function uses"));
            }
        }
    }
}

/// Secrets come from Secrets Manager: no plain parameter feeds the status token, nothing
/// sensitive is an echoed parameter, and no output shows a secret.
fn check_secrets(tpl: &Template, p: &mut Vec<String>) {
    for (id, f) in tpl.of_type("AWS::Serverless::Function") {
        let Some(token) = f["Properties"]["Environment"]["Variables"].get("GITFERRY_STATUS_TOKEN") else {
            continue;
        };
        let mut r = Vec::new();
        refs(token, &mut r);
        for name in &r {
            if tpl.parameter(name).is_some() && !name.ends_with("Arn") {
                p.push(format!("{id}: GITFERRY_STATUS_TOKEN comes from the parameter {name}; use a Secrets Manager dynamic reference"));
            }
        }
        let mut s = Vec::new();
        strings(token, &mut s);
        if !s.iter().any(|s| s.contains("{{resolve:secretsmanager:")) {
            p.push(format!(
                "{id}: GITFERRY_STATUS_TOKEN must be a {{{{resolve:secretsmanager:…}}}} dynamic reference"
            ));
        }
    }
    for (name, param) in tpl.t["Parameters"].as_object().into_iter().flat_map(|m| m.iter()) {
        let lower = name.to_lowercase();
        // A value, not a reference to one: `StatusToken`, `DbPassword`, `WebhookSecret` (but
        // not `SecretsArn` or `SecretsRevision`).
        let sensitive = lower.contains("token") || lower.contains("password") || lower.ends_with("secret");
        if sensitive && param["NoEcho"] != json!(true) {
            p.push(format!("parameter {name} looks sensitive and must be NoEcho"));
        }
    }
    let mut out = Vec::new();
    strings(&tpl.t["Outputs"], &mut out);
    if out
        .iter()
        .any(|s| s.contains("resolve:secretsmanager") || s.contains("resolve:ssm-secure"))
    {
        p.push("an output shows a secret".into());
    }
}

/// `${Name}` placeholders of a Sub: Number parameters become their default (they stand
/// unquoted in JSON), everything else `<Name>`.
fn substitute(tpl: &Template, body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str(&format!("${{{literal}}}"));
        } else {
            match tpl.parameter(name) {
                Some(param) if param["Type"] == "Number" => out.push_str(&param["Default"].to_string()),
                _ => out.push_str(&format!("<{name}>")),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The metrics of a `SEARCH('{Namespace,Dim} MetricName="X"', …)` expression.
fn search_metric(expr: &str) -> Option<(String, String, Vec<String>)> {
    let start = expr.find("SEARCH(")?;
    let s = &expr[start..];
    let schema = &s[s.find('{')? + 1..s.find('}')?];
    let mut parts = schema.split(',').map(|x| x.trim().trim_matches('"').to_owned());
    let namespace = parts.next()?;
    let dims: Vec<String> = parts.collect();
    let key = "MetricName=";
    let at = s.find(key)? + key.len();
    let name: String = s[at..]
        .trim_start_matches(['"', '\\'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Some((namespace, name, dims))
}

fn check_dashboard(tpl: &Template, p: &mut Vec<String>) -> Vec<MetricUse> {
    let mut uses = Vec::new();
    let dashboards: Vec<_> = tpl.of_type("AWS::CloudWatch::Dashboard").collect();
    if dashboards.is_empty() {
        p.push("no AWS::CloudWatch::Dashboard".into());
    }
    for (id, d) in dashboards {
        let body = &d["Properties"]["DashboardBody"];
        let text = match body.get("Fn::Sub") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).unwrap_or_default().to_owned(),
            _ => body.as_str().unwrap_or_default().to_owned(),
        };
        let json: Value = match serde_json::from_str(&substitute(tpl, &text)) {
            Ok(v) => v,
            Err(e) => {
                p.push(format!("{id}: DashboardBody is not valid JSON: {e}"));
                continue;
            }
        };
        for (wi, w) in as_list(&json["widgets"]).into_iter().enumerate() {
            let props = &w["properties"];
            let title = props["title"].as_str().unwrap_or("");
            let at = format!("{id} widget {wi} ({title})");
            if w["type"] != "metric" {
                continue;
            }
            let default_stat = props["stat"].as_str().map(str::to_owned);
            let mut previous: Vec<String> = Vec::new();
            for row in as_list(&props["metrics"]) {
                let items = as_list(row);
                let options = items.last().filter(|v| v.is_object()).copied();
                if let Some(expr) = options.and_then(|o| o["expression"].as_str()) {
                    if expr.contains("SEARCH(") {
                        match search_metric(expr) {
                            Some((namespace, name, dims)) if !name.is_empty() => uses.push(MetricUse {
                                at: at.clone(),
                                namespace,
                                name,
                                dims: dims.into_iter().map(|d| (d, "*".into())).collect(),
                                stat: None,
                            }),
                            _ => p.push(format!("{at}: SEARCH expression without MetricName=\"…\": {expr}")),
                        }
                    }
                    continue;
                }
                let mut fields: Vec<String> = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    let Some(s) = v.as_str() else { break };
                    fields.push(if s == "." {
                        previous.get(i).cloned().unwrap_or_default()
                    } else {
                        s.to_owned()
                    });
                }
                previous = fields.clone();
                if fields.len() < 2 || !fields.len().is_multiple_of(2) {
                    p.push(format!("{at}: cannot read metric row {row}"));
                    continue;
                }
                let dims = fields[2..].chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
                let stat = options
                    .and_then(|o| o["stat"].as_str())
                    .map(str::to_owned)
                    .or_else(|| default_stat.clone());
                uses.push(MetricUse {
                    at: at.clone(),
                    namespace: fields[0].clone(),
                    name: fields[1].clone(),
                    dims,
                    stat,
                });
            }
        }
    }
    uses
}

fn dims_of(v: &Value) -> Vec<(String, String)> {
    as_list(v)
        .into_iter()
        .map(|d| {
            let value = match &d["Value"] {
                Value::String(s) => s.clone(),
                other => target(other)
                    .map(|t| format!("<{t}>"))
                    .unwrap_or_else(|| other.to_string()),
            };
            (d["Name"].as_str().unwrap_or("").to_owned(), value)
        })
        .collect()
}

fn check_alarms(tpl: &Template, p: &mut Vec<String>) -> Vec<MetricUse> {
    let mut uses = Vec::new();
    for (id, a) in tpl.of_type("AWS::CloudWatch::Alarm") {
        let pr = &a["Properties"];
        if let Some(name) = pr["MetricName"].as_str() {
            uses.push(MetricUse {
                at: id.clone(),
                namespace: pr["Namespace"].as_str().unwrap_or("").to_owned(),
                name: name.to_owned(),
                dims: dims_of(&pr["Dimensions"]),
                stat: pr["Statistic"].as_str().map(str::to_owned),
            });
        }
        for m in as_list(&pr["Metrics"]) {
            let stat = &m["MetricStat"];
            if stat.is_null() {
                continue;
            }
            let metric = &stat["Metric"];
            uses.push(MetricUse {
                at: id.clone(),
                namespace: metric["Namespace"].as_str().unwrap_or("").to_owned(),
                name: metric["MetricName"].as_str().unwrap_or("").to_owned(),
                dims: dims_of(&metric["Dimensions"]),
                stat: stat["Stat"].as_str().map(str::to_owned),
            });
        }
        // The optional SNS topic: `!If [HasTopic, [topic], !Ref AWS::NoValue]`.
        for key in ["AlarmActions", "OKActions"] {
            if pr[key].get("Fn::If").is_none() {
                p.push(format!(
                    "{id}: {key} must notify the optional topic through a condition"
                ));
            }
        }
    }
    uses
}

fn check_metrics(
    dashboard: &[MetricUse],
    alarms: &[MetricUse],
    functions: &BTreeMap<String, String>,
    p: &mut Vec<String>,
) {
    let sync_rs = read("shared/core/src/sync/mod.rs");
    let triggers = [
        gitferry_core::request::TriggerKind::Webhook,
        gitferry_core::request::TriggerKind::Poll,
        gitferry_core::request::TriggerKind::Manual,
        gitferry_core::request::TriggerKind::Resume,
    ]
    .map(|k| k.as_str());
    for u in dashboard.iter().chain(alarms) {
        if u.namespace == NAMESPACE {
            let Some(def) = CATALOGUE.iter().find(|d| d.name == u.name) else {
                p.push(format!(
                    "{}: metric {} is not one the code emits (gitferry_core::metrics::CATALOGUE)",
                    u.at, u.name
                ));
                continue;
            };
            if u.dims.len() > 1 {
                p.push(format!(
                    "{}: {} queried with {} dimensions; EMF declares each dimension as its own set, so use one or none",
                    u.at,
                    u.name,
                    u.dims.len()
                ));
            }
            for (dim, value) in &u.dims {
                if !def.dimensions.contains(&dim.as_str()) {
                    p.push(format!(
                        "{}: {} has no dimension {dim} (it has {:?})",
                        u.at, u.name, def.dimensions
                    ));
                }
                let known = match dim.as_str() {
                    "Outcome" => sync_rs.contains(&format!("\"{value}\"")),
                    "Trigger" => triggers.contains(&value.as_str()),
                    "Code" => value == "*" || value.parse::<u16>().is_ok(),
                    _ => true,
                };
                if !known {
                    p.push(format!(
                        "{}: {} {dim}={value:?} is not a value the code emits",
                        u.at, u.name
                    ));
                }
            }
        } else if let Some((_, _, dims)) = AWS_METRICS.iter().find(|(ns, n, _)| *ns == u.namespace && *n == u.name) {
            for (dim, _) in &u.dims {
                if !dims.contains(&dim.as_str()) {
                    p.push(format!("{}: {}/{} has no dimension {dim}", u.at, u.namespace, u.name));
                }
            }
        } else {
            p.push(format!("{}: unknown metric {}/{}", u.at, u.namespace, u.name));
        }
    }
    // What the dashboard must show (issue 9).
    let has = |ns: &str, name: &str, pred: &dyn Fn(&MetricUse) -> bool| {
        dashboard.iter().any(|u| u.namespace == ns && u.name == name && pred(u))
    };
    let dim_is = |d: &'static str, v: &'static str| move |u: &MetricUse| u.dims.iter().any(|(k, x)| k == d && x == v);
    for outcome in ["success", "noop", "failed"] {
        if !has(NAMESPACE, "Syncs", &dim_is("Outcome", outcome)) {
            p.push(format!("dashboard: syncs by outcome must show Outcome={outcome}"));
        }
    }
    for stat in ["p50", "p99"] {
        if !has(NAMESPACE, "SyncDuration", &|u| u.stat.as_deref() == Some(stat)) {
            p.push(format!("dashboard: sync duration {stat} is missing"));
        }
    }
    if !has(NAMESPACE, "BytesPushed", &|_| true) {
        p.push("dashboard: bytes pushed is missing".into());
    }
    if !has(NAMESPACE, "WebhookResponses", &|u| {
        u.dims.iter().any(|(k, _)| k == "Code")
    }) {
        p.push("dashboard: webhook responses by Code are missing".into());
    }
    if !has("AWS/SQS", "ApproximateAgeOfOldestMessage", &|_| true) {
        p.push("dashboard: queue age of oldest message is missing".into());
    }
    if !has("AWS/SQS", "ApproximateNumberOfMessagesVisible", &|u| {
        u.dims.iter().any(|(_, v)| v.contains("DeadLetter"))
    }) {
        p.push("dashboard: dead-letter queue depth is missing".into());
    }
    for metric in ["Errors", "Throttles"] {
        for id in functions.values() {
            let want = format!("<{id}>");
            if !has("AWS/Lambda", metric, &|u| u.dims.iter().any(|(_, v)| *v == want)) {
                p.push(format!("dashboard: Lambda {metric} of {id} is missing"));
            }
        }
    }
    // The alarms issue 9 asks for.
    let alarm = |pred: &dyn Fn(&MetricUse) -> bool| alarms.iter().any(pred);
    if !alarm(&|u| {
        u.name == "ApproximateNumberOfMessagesVisible" && u.dims.iter().any(|(_, v)| v.contains("DeadLetter"))
    }) {
        p.push("alarms: dead-letter queue not empty is missing".into());
    }
    if !alarm(&|u| u.name == "Syncs" && u.dims.iter().any(|(k, v)| k == "Outcome" && v == "failed")) {
        p.push("alarms: sync failures is missing".into());
    }
    if !alarm(&|u| u.name == "ApproximateAgeOfOldestMessage") {
        p.push("alarms: age of oldest message is missing".into());
    }
    if !alarm(&|u| u.name == "Syncs" && u.dims.iter().any(|(k, v)| k == "Outcome" && v == "success")) {
        p.push("alarms: the no-successful-sync watchdog is missing".into());
    }
}

// ---- tests ---------------------------------------------------------------------------------

#[test]
fn template_matches_the_code() {
    let problems = check(&read("template.yaml"));
    assert!(problems.is_empty(), "template.yaml:\n  {}", problems.join("\n  "));
}

#[test]
fn the_watchdog_treats_silence_as_breaching() {
    let t = parse(&read("template.yaml")).unwrap();
    let tpl = Template { t: &t };
    let watchdogs: Vec<_> = tpl
        .of_type("AWS::CloudWatch::Alarm")
        .filter(|(_, a)| a["Properties"]["TreatMissingData"] == "breaching")
        .collect();
    assert_eq!(
        watchdogs.len(),
        1,
        "exactly one alarm (the watchdog) treats missing data as breaching"
    );
}

/// Each mistake must be reported: the checks above can fail.
#[test]
fn breaking_the_template_is_caught() {
    let good = read("template.yaml");
    let mutations: &[(&str, &str, &str, &str)] = &[
        // (what, replace this, with this, a problem must mention)
        (
            "dashboard metric typo",
            "[\"gitferry\", \"BytesPushed\"",
            "[\"gitferry\", \"BytesPushd\"",
            "BytesPushd",
        ),
        (
            "metric by repository",
            "[\"gitferry\", \"SyncDuration\", {\"stat\": \"p50\"",
            "[\"gitferry\", \"SyncDuration\", \"Repo\", \"app\", {\"stat\": \"p50\"",
            "no dimension Repo",
        ),
        (
            "two dimensions",
            "[\"gitferry\", \"Syncs\", \"Outcome\", \"skipped\",",
            "[\"gitferry\", \"Syncs\", \"Outcome\", \"skipped\", \"Trigger\", \"poll\",",
            "2 dimensions",
        ),
        (
            "unknown outcome",
            "\"Outcome\", \"noop\", {\"label\"",
            "\"Outcome\", \"no-op\", {\"label\"",
            "Outcome=\"no-op\"",
        ),
        (
            "alarm metric typo",
            "      MetricName: Syncs\n",
            "      MetricName: Sync\n",
            "metric Sync is not",
        ),
        (
            "missing env var",
            "          GITFERRY_QUEUE_URL: !Ref SyncQueue\n",
            "",
            "GITFERRY_QUEUE_URL is not set",
        ),
        (
            "unknown env var",
            "          GITFERRY_CONFIG_KEY: config/mirrors.toml\n",
            "          GITFERRY_CONFIG_KEYS: config/mirrors.toml\n",
            "GITFERRY_CONFIG_KEYS",
        ),
        (
            "short visibility",
            "VisibilityTimeout: 960",
            "VisibilityTimeout: 900",
            "below the sync timeout",
        ),
        (
            "long visibility",
            "VisibilityTimeout: 960",
            "VisibilityTimeout: 5400",
            "more than 5 minutes above",
        ),
        (
            "standard queue",
            "      FifoQueue: true\n      ContentBasedDeduplication: false\n      DeduplicationScope",
            "      FifoQueue: false\n      ContentBasedDeduplication: false\n      DeduplicationScope",
            "FifoQueue",
        ),
        (
            "no partial batch failures",
            "        - ReportBatchItemFailures\n",
            "",
            "ReportBatchItemFailures",
        ),
        (
            "visibility env drift",
            "GITFERRY_VISIBILITY_SECS: '960'",
            "GITFERRY_VISIBILITY_SECS: '900'",
            "GITFERRY_VISIBILITY_SECS must equal",
        ),
        (
            "route removed",
            "            Path: /status/{repo}\n",
            "            Path: /status/{name}\n",
            "GET /status/{repo}",
        ),
        (
            "wildcard resource",
            "              Resource: !GetAtt SyncQueue.Arn\n",
            "              Resource: '*'\n",
            "Resource \"*\"",
        ),
        (
            "token from a parameter",
            "            - !Sub '{{resolve:secretsmanager:${SecretsArn}:SecretString:GITFERRY_STATUS_TOKEN}}'\n",
            "            - !Ref StatusToken\n",
            "GITFERRY_STATUS_TOKEN",
        ),
        (
            "build metadata",
            "        Binary: sync\n",
            "        Binary: sink\n",
            "\"sync\"",
        ),
        (
            "batch too large",
            "    MaxValue: 10\n    Description: >-\n      Records per sync",
            "    MaxValue: 100\n    Description: >-\n      Records per sync",
            "BatchSize",
        ),
    ];
    assert!(check(&good).is_empty(), "the real template must pass first");
    for (what, from, to, expect) in mutations {
        assert!(
            good.contains(from),
            "mutation {what:?}: {from:?} is not in template.yaml any more; update the test"
        );
        let broken = good.replacen(from, to, 1);
        let problems = check(&broken);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "mutation {what:?} was not caught (expected a problem mentioning {expect:?}); problems: {problems:#?}"
        );
    }
}

#[test]
fn short_form_tags_parse() {
    let v = parse(
        "A: !Ref X\nB: !GetAtt Q.Arn\nC: !Sub 'x-${Y}'\nD: !If [C, 1, !Ref AWS::NoValue]\nE: !Join ['', [a, b]]\n",
    )
    .unwrap();
    assert_eq!(v["A"], json!({"Ref": "X"}));
    assert_eq!(v["B"], json!({"Fn::GetAtt": ["Q", "Arn"]}));
    assert_eq!(v["C"], json!({"Fn::Sub": "x-${Y}"}));
    assert_eq!(v["D"], json!({"Fn::If": ["C", 1, {"Ref": "AWS::NoValue"}]}));
    assert_eq!(v["E"], json!({"Fn::Join": ["", ["a", "b"]]}));
}

// ---- infra/mirrors.toml --------------------------------------------------------------------

/// The example configuration is valid, and every secret it names is in the example secret.
#[test]
fn example_config_is_valid_and_its_secrets_are_documented() {
    let text = read("infra/mirrors.toml");
    let secrets: BTreeMap<String, Value> =
        serde_json::from_str(&read("infra/secrets.example.json")).expect("secrets.example.json is a JSON object");
    let asked = std::cell::RefCell::new(BTreeSet::new());
    let env = |name: &str| {
        asked.borrow_mut().insert(name.to_owned());
        Some(format!("fake-{name}"))
    };
    let config = gitferry_core::config::Config::parse(&text, Path::new("infra/mirrors.toml"), &env)
        .unwrap_or_else(|e| panic!("infra/mirrors.toml is not a valid configuration:\n{e}"));
    assert!(config.repos.len() >= 2, "the example shows several repositories");
    for name in asked.borrow().iter() {
        assert!(
            secrets.contains_key(name),
            "infra/mirrors.toml refers to {name}, which infra/secrets.example.json does not list"
        );
    }
    assert!(
        secrets.contains_key("GITFERRY_STATUS_TOKEN"),
        "the example secret holds the status token the template resolves"
    );
    // Without its secrets the file is refused, naming each missing variable.
    let err = gitferry_core::config::Config::parse(&text, Path::new("infra/mirrors.toml"), &|_| None).unwrap_err();
    assert!(err.to_string().contains("GITHUB_TOKEN"), "{err}");
}
