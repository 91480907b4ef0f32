//! Monitoring the watcher (deploy/prometheus/, deploy/grafana/) against the real Prometheus tools
//! (Debian's `prometheus` package, installed by `scripts/services.sh install`): the rules pass
//! `promtool check rules` in both forms (plain and PrometheusRule, which must carry the same groups)
//! and their unit tests (`promtool test rules`, with a firing and a quiet case for every alert); every
//! alert is labelled, annotated and has a runbook section; the dashboard's queries parse; every metric
//! the rules and the dashboard query is one a running watcher exports (so renaming a metric fails
//! here); and a real Prometheus scraping a real watcher fires SafeguardWatcherDown when it stops.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, create_topic, env, fixture, free_port, wait_until, KillOnDrop};
use serde::Deserialize;
use serde_json::Value;

/// Metrics the rules read from other exporters, each documented in deploy/README.md: only Prometheus'
/// own `up` (the store's free space is the watcher's `safeguard_store_fs_free_bytes`).
const EXTERNAL: [&str; 1] = ["up"];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A Prometheus tool from Debian's `prometheus` package; missing, the test fails and says how to get it.
fn tool(name: &'static str) -> &'static str {
    let ok = Command::new(name).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "{name} is not installed: run `bash scripts/services.sh install` (it installs Debian's prometheus package, which provides prometheus and promtool), \
         or run the suite with scripts/test.sh"
    );
    name
}

/// Runs promtool; returns (success, stdout + stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("promtool")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn rules_file() -> PathBuf {
    repo("deploy/prometheus/safeguard.rules.yml")
}

/// Every rule (alerting or recording) of a rules file's `groups`.
fn rules_of(groups: &Value) -> Vec<&Value> {
    groups.as_array().expect("groups is a list").iter().flat_map(|g| g["rules"].as_array().expect("a group has rules")).collect()
}

fn alerts_of(groups: &Value) -> Vec<&Value> {
    rules_of(groups).into_iter().filter(|r| r["alert"].is_string()).collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no string {key} in {v}"))
}

// ------------------------------------------------------------------------------------------- PromQL

/// The metric names a PromQL expression selects: identifiers that are not function or aggregation
/// names, keywords, label names (inside `{}` or the lists of by/without/on/ignoring/group_left/
/// group_right), strings, numbers or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    const KEYWORDS: [&str; 8] = ["and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"];
    let b = expr.as_bytes();
    let n = b.len();
    let skip_ws = |mut i: usize| {
        while i < n && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // The index after a string literal starting at i.
    let skip_string = |mut i: usize| {
        let q = b[i];
        i += 1;
        while i < n && b[i] != q {
            i += if b[i] == b'\\' && q != b'`' { 2 } else { 1 };
        }
        i + 1
    };
    // The index after the bracket closing the one at i (strings inside skipped).
    let skip_group = |mut i: usize, open: u8, close: u8| {
        let mut depth = 0;
        while i < n {
            match b[i] {
                b'"' | b'\'' | b'`' => {
                    i = skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        n
    };
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < n {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(i);
        } else if c == b'{' {
            i = skip_group(i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(i, b'[', b']');
        } else if c == b'#' {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && i + 1 < n && b[i + 1].is_ascii_digit()) {
            // A number or a duration (1e-9, 0x1f, 0.5, 5m).
            while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || (matches!(b[i], b'+' | b'-') && matches!(b[i - 1], b'e' | b'E'))) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < n && is_ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let lower = word.to_ascii_lowercase();
            let next = skip_ws(i);
            if LABEL_LISTS.contains(&lower.as_str()) {
                if next < n && b[next] == b'(' {
                    i = skip_group(next, b'(', b')');
                }
                continue;
            }
            // A function, or an aggregation with its clause after the arguments: `sum(...) by (x)`.
            let call = next < n && b[next] == b'(';
            // An aggregation with its clause first: `sum by (x) (...)`.
            let clause_first =
                ["by", "without"].iter().any(|k| expr[next..].starts_with(k) && !expr[next + k.len()..].starts_with(|c: char| is_ident(c as u8)));
            if !call && !clause_first && !KEYWORDS.contains(&lower.as_str()) {
                out.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn metric_names_are_the_selectors_only() {
    let got = metric_names(
        r#"sum by (reason) (rate(a_total{reason=~"x|y", le="0.5"}[5m])) / on (job) group_left (instance) b offset 1h
           > 2 * max without (x) (c:rec) or absent(d{mountpoint="/"}) unless topk(3, e) and 1e-9 < bool f[30m:1m] # g"#,
    );
    assert_eq!(got, ["a_total", "b", "c:rec", "d", "e", "f"].into_iter().map(String::from).collect::<BTreeSet<_>>());
    assert_eq!(metric_names(r#"time() - safeguard_x > 120 or (up{job="s"} == 1 unless on (job, instance) safeguard_x)"#).len(), 2);
    assert!(metric_names("sum(rate(x[5m])) by (instance)").contains("x"));
    assert!(metric_names("bystander").contains("bystander"), "a name that merely starts with by");
}

// ------------------------------------------------------------------------------------------- rules

#[test]
fn rules_pass_promtool_check_and_their_unit_tests_cover_every_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = yaml(&rules_file());
    let count = rules_of(&rules["groups"]).len();
    assert!(count >= 10, "{count} rules");

    let (ok, out) = promtool(&["check", "rules", rules_file().to_str().unwrap()]);
    assert!(ok, "promtool check rules safeguard.rules.yml:\n{out}");
    assert!(out.contains(&format!("SUCCESS: {count} rules found")), "{out}");

    // promtool reads rule files, not Kubernetes objects: check the PrometheusRule's groups as one.
    let pr = yaml(&repo("deploy/prometheus/prometheusrule.yaml"));
    let from_crd = tmp.path().join("prometheusrule.rules.yml");
    std::fs::write(&from_crd, serde_norway::to_string(&serde_json::json!({ "groups": pr["spec"]["groups"] })).unwrap()).unwrap();
    let (ok, out) = promtool(&["check", "rules", from_crd.to_str().unwrap()]);
    assert!(ok, "promtool check rules on prometheusrule.yaml's spec:\n{out}");
    assert!(out.contains(&format!("SUCCESS: {count} rules found")), "{out}");

    let tests = repo("deploy/prometheus/tests.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok, "promtool test rules deploy/prometheus/tests.yml:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert has a case where it fires and one where it does not; no case names a missing alert.
    let t = yaml(&tests);
    assert_eq!(t["rule_files"], serde_json::json!(["safeguard.rules.yml"]));
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for test in t["tests"].as_array().unwrap() {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let e = cases.entry(s(case, "alertname").to_string()).or_default();
            if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    let names: BTreeSet<String> = alerts_of(&rules["groups"]).iter().map(|a| s(a, "alert").to_string()).collect();
    for name in &names {
        let (firing, quiet) = cases.get(name).copied().unwrap_or_default();
        assert!(firing >= 1 && quiet >= 1, "{name}: {firing} firing and {quiet} quiet cases in tests.yml; each alert needs both");
    }
    for name in cases.keys() {
        assert!(names.contains(name), "tests.yml tests {name}, which is not a rule");
    }
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() {
    let readme = std::fs::read_to_string(repo("deploy/README.md")).unwrap();
    let anchors: BTreeSet<String> = readme.lines().filter_map(|l| l.strip_prefix('#')).map(|l| anchor(l.trim_start_matches('#'))).collect();
    assert!(anchors.contains("monitoring-the-watcher"), "deploy/README.md has no 'Monitoring the watcher' section");
    let top = std::fs::read_to_string(repo("README.md")).unwrap();
    assert!(top.contains("deploy/README.md#monitoring-the-watcher"), "README.md points to the monitoring section");

    let rules = yaml(&rules_file());
    let alerts = alerts_of(&rules["groups"]);
    let mut seen = BTreeSet::new();
    for a in &alerts {
        let name = s(a, "alert");
        assert!(seen.insert(name), "{name} is defined twice");
        assert!(name.starts_with("Safeguard"), "{name}: alerts are named Safeguard*");
        let severity = s(&a["labels"], "severity");
        assert!(["critical", "warning", "info"].contains(&severity), "{name}: severity {severity}");
        for key in ["summary", "description"] {
            assert!(s(&a["annotations"], key).len() > 20, "{name}: {key} too short");
        }
        let runbook = s(&a["annotations"], "runbook");
        let section = runbook.strip_prefix("deploy/README.md#").unwrap_or_else(|| panic!("{name}: runbook {runbook} is not a deploy/README.md section"));
        assert_eq!(section, name.to_lowercase(), "{name}: its runbook section is the alert's name");
        assert!(anchors.contains(section), "{name}: deploy/README.md has no section #{section}");
        // The runbook says what the alert means, what to check and what to do, in that section.
        let body = readme.split(&format!("#### {name}\n")).nth(1).unwrap_or_else(|| panic!("no '#### {name}' heading")).split("\n#### ").next().unwrap();
        assert!(body.contains(&format!("*{severity}.*")), "{name}: its runbook states the severity {severity}");
        assert!(body.contains("Do:"), "{name}: its runbook says what to do");
    }
    // Every runbook section documents an alert that exists.
    for l in readme.lines().filter_map(|l| l.strip_prefix("#### Safeguard")) {
        assert!(seen.contains(format!("Safeguard{l}").as_str()), "deploy/README.md has a runbook for Safeguard{l}, which is not a rule");
    }
}

#[test]
fn the_prometheus_rule_and_service_monitor_agree_with_the_rules_file_and_the_kubernetes_manifests() {
    let rules = yaml(&rules_file());
    let pr = yaml(&repo("deploy/prometheus/prometheusrule.yaml"));
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(
        pr["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml's spec.groups differ from safeguard.rules.yml's groups: regenerate it (deploy/README.md)"
    );

    let mut services = Vec::new();
    for f in ["service.yaml", "statefulset.yaml"] {
        services.extend(yaml_docs(&repo(&format!("deploy/kubernetes/{f}"))).into_iter().filter(|d| d["kind"] == "Service"));
    }
    // The ServiceMonitor scrapes the `safeguard` Service's http port; the Operator names the job after
    // the Service, which is the job the rules select.
    let sm = yaml(&repo("deploy/prometheus/servicemonitor.yaml"));
    assert_eq!(sm["kind"], "ServiceMonitor");
    let ep = &sm["spec"]["endpoints"][0];
    let keep = ep["relabelings"].as_array().unwrap().iter().find(|r| r["action"] == "keep").expect("a keep relabeling");
    assert_eq!(keep["sourceLabels"], serde_json::json!(["__meta_kubernetes_service_name"]));
    let svc = services.iter().find(|s| s["metadata"]["name"] == keep["regex"]).expect("the kept Service exists");
    assert!(svc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == ep["port"]), "the Service has the port {}", ep["port"]);
    assert_eq!(ep["path"], "/metrics");
    let job = format!(r#"job="{}""#, s(&svc["metadata"], "name"));
    let kustom = yaml(&repo("deploy/kubernetes/kustomization.yaml"));
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&kustom["labels"][0]["pairs"][k], v, "the kustomization labels the Services with {k}={v}");
    }
    let exprs: Vec<&str> = rules_of(&rules["groups"]).iter().map(|r| s(r, "expr")).collect();
    assert!(exprs.iter().filter(|e| e.contains("up{")).all(|e| e.contains(&job)), "the rules select up{{{job}}}");

    // The disk rules read the free space the watcher reports for its own store, so no node_exporter
    // mountpoint or kubelet claim name has to be kept in step with the deployment.
    let disk: Vec<&&str> = exprs.iter().filter(|e| e.contains("safeguard_store_fs_free_bytes")).collect();
    assert_eq!(disk.len(), 2, "SafeguardStoreDiskLow and SafeguardStoreDiskFillingUp read safeguard_store_fs_free_bytes");
    assert!(exprs.iter().all(|e| !e.contains("node_filesystem") && !e.contains("kubelet_")), "a rule still reads another exporter's disk metrics");
}

// ------------------------------------------------------------------------------------------- dashboard

struct Dashboard {
    json: Value,
    /// (where, expr) for every panel target.
    exprs: Vec<(String, String)>,
    /// Template variable queries (`label_values(selector, label)`).
    variables: Vec<String>,
}

fn dashboard() -> Dashboard {
    let path = repo("deploy/grafana/safeguard.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((format!("panel {:?} target {}", p["title"].as_str().unwrap_or("?"), t["refId"].as_str().unwrap_or("?")), s(t, "expr").to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    walk(&json["panels"], &mut exprs);
    let variables = json["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_else(|| panic!("variable {} has no query", v["name"])).to_string())
        .collect();
    Dashboard { json, exprs, variables }
}

/// The dashboard's Grafana variables replaced by what they stand for, so the query is plain PromQL.
fn plain(expr: &str) -> String {
    let e =
        expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h").replace("${instance}", ".*").replace("$instance", ".*");
    assert!(!e.contains('$'), "an unknown Grafana variable in {expr}");
    e
}

/// The selector of `label_values(selector, label)`.
fn variable_selector(q: &str) -> &str {
    let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).unwrap_or_else(|| panic!("not label_values(...): {q}"));
    inner.rsplit_once(',').map(|(sel, _)| sel.trim()).unwrap_or_else(|| panic!("label_values without a label: {q}"))
}

fn dashboard_metrics(d: &Dashboard) -> BTreeMap<String, String> {
    let mut by: BTreeMap<String, String> = BTreeMap::new();
    for (at, e) in &d.exprs {
        for m in metric_names(&plain(e)) {
            by.entry(m).or_insert_with(|| at.clone());
        }
    }
    for q in &d.variables {
        for m in metric_names(variable_selector(q)) {
            by.entry(m).or_insert_with(|| format!("variable {q}"));
        }
    }
    by
}

#[test]
fn the_dashboard_imports_with_a_prometheus_input_and_every_query_parses() {
    let d = dashboard();
    let j = &d.json;
    let input = j["__inputs"].as_array().unwrap().iter().find(|i| i["name"] == "DS_PROMETHEUS").expect("a DS_PROMETHEUS input");
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");
    assert!(j["uid"].is_string() && j["title"].is_string() && j["schemaVersion"].as_u64().unwrap() >= 30);
    assert!(j["id"].is_null(), "an exported dashboard carries no database id");
    let ds = serde_json::json!({ "type": "prometheus", "uid": "${DS_PROMETHEUS}" });
    let mut ids = BTreeSet::new();
    for p in j["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "panel id {} twice", p["id"]);
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "panel {} without gridPos.{k}", p["title"]);
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"], ds, "panel {}", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"], ds, "panel {} target {}", p["title"], t["refId"]);
            }
        }
    }
    for v in j["templating"]["list"].as_array().unwrap() {
        assert_eq!(v["datasource"], ds, "variable {}", v["name"]);
    }
    assert!(d.exprs.len() >= 20, "{} queries", d.exprs.len());

    // promtool parses each query as a recording rule; a failure names the panel.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = Vec::new();
    let mut index = String::new();
    for (i, (at, e)) in d.exprs.iter().enumerate() {
        rules.push(serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": plain(e) }));
        index.push_str(&format!("dashboard:query_{i} = {at}: {e}\n"));
    }
    for (i, q) in d.variables.iter().enumerate() {
        rules.push(serde_json::json!({ "record": format!("dashboard:variable_{i}"), "expr": variable_selector(q) }));
        index.push_str(&format!("dashboard:variable_{i} = {q}\n"));
    }
    let file = tmp.path().join("dashboard.rules.yml");
    std::fs::write(&file, serde_norway::to_string(&serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] })).unwrap()).unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(ok, "a dashboard query does not parse:\n{out}\n{index}");
    assert!(out.contains(&format!("SUCCESS: {} rules found", rules.len())), "{out}");

    // The panels the issue asks for are there: each of these metrics is queried.
    let used = dashboard_metrics(&d);
    for m in [
        "safeguard_lines_read_total",
        "safeguard_lines_relevant_total",
        "safeguard_lines_rejected_total",
        "safeguard_events_applied_total",
        "safeguard_instances",
        "safeguard_instances_at_risk",
        "safeguard_instances_at_risk_by_reason",
        "safeguard_alerts",
        "safeguard_kafka_consumer_lag",
        "safeguard_store_size_bytes",
        "safeguard_recoveries",
        "safeguard_engine_last_commit_timestamp_seconds",
        "safeguard_engine_commit_duration_seconds_bucket",
        "safeguard_store_fs_free_bytes",
        "safeguard_store_errors_total",
        "up",
    ] {
        assert!(used.contains_key(m), "the dashboard has no panel on {m}");
    }
}

// ------------------------------------------------------------------------------------------- a watcher

/// GET over plain HTTP/1.1: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let r = crate::common::http_get(&format!("127.0.0.1:{port}"), path);
    (r.status, r.body)
}

fn url_encode(q: &str) -> String {
    q.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The metric names of a Prometheus text exposition's samples.
fn exported(body: &str) -> BTreeSet<String> {
    body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| l.split(['{', ' ']).next().unwrap().to_string()).collect()
}

fn start_watcher(config: &str, dir: &Path, http: u16) -> KillOnDrop {
    let cfg = dir.join("safeguard.toml");
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "--store", dir.join("store").to_str().unwrap(), "watch"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = KillOnDrop(child);
    wait_until("the watcher's HTTP endpoint", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", http)).is_ok());
    w
}

fn send_syslog(port: u16, lines: &[&str]) {
    wait_until("the syslog listener", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for l in lines {
        writeln!(tcp, "{l}").unwrap();
    }
}

#[test]
fn the_rules_and_the_dashboard_query_only_metrics_a_running_watcher_exports() {
    // Which names are queried, and where.
    let rules = yaml(&rules_file());
    let mut rule_metrics: BTreeMap<String, String> = BTreeMap::new();
    for r in rules_of(&rules["groups"]) {
        for m in metric_names(s(r, "expr")) {
            rule_metrics.entry(m).or_insert_with(|| r["alert"].as_str().or(r["record"].as_str()).unwrap().to_string());
        }
    }
    let recorded: BTreeSet<&str> = rules_of(&rules["groups"]).iter().filter_map(|r| r["record"].as_str()).collect();
    let dash = dashboard_metrics(&dashboard());
    let readme = std::fs::read_to_string(repo("deploy/README.md")).unwrap();
    for m in EXTERNAL {
        assert!(readme.contains(&format!("`{m}")), "deploy/README.md does not document the external metric {m}");
    }

    // A watcher with every kind of source, so that every metric it can export is exported: a syslog
    // listener (fed the seed log and a line it rejects) and a Kafka source on the test broker.
    let broker = env("SAFEGUARD_TEST_KAFKA");
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    let topic = format!("monitoring-{}-{n}", std::process::id());
    // A [leader] group of one, so the leadership metrics are exported too.
    for t in [topic.clone(), format!("{topic}-leader"), format!("{topic}-deliveries")] {
        create_topic(&env("SAFEGUARD_TEST_TANSU"), &broker, &t, 1);
    }
    let tmp = tempfile::tempdir().unwrap();
    let (syslog, http) = (free_port(), free_port());
    // And store backups to the test object store, every 2 s once the store holds something.
    let bucket = crate::backup::make_bucket("monitoring");
    let _w = start_watcher(
        &format!(
            r#"[watch]
commit_interval = "200ms"

[s3]
endpoint = "{s3}"
path_style = true
access_key_id = "test"
secret_access_key = "test-secret"
timeout = "5s"

[backup]
to = "s3://{bucket}/safeguard/"
interval = "2s"

[[sources]]
type = "syslog"
tcp = "127.0.0.1:{syslog}"

[[sources]]
type = "kafka"
brokers = ["{broker}"]
topics = ["{topic}"]
group_id = "{topic}-group"

[leader]
group_id = "{topic}-lead"
topic = "{topic}-leader"
deliveries_topic = "{topic}-deliveries"

[http]
listen = "127.0.0.1:{http}"
"#,
            s3 = env("SAFEGUARD_TEST_S3")
        ),
        tmp.path(),
        http,
    );
    let seed = std::fs::read_to_string(fixture("scenarios/seed.log")).unwrap();
    let mut lines: Vec<&str> = seed.lines().collect();
    lines.push("s3:// is all this line has");
    send_syslog(syslog, &lines);

    let wanted: BTreeSet<&str> =
        rule_metrics.keys().chain(dash.keys()).map(String::as_str).filter(|m| !EXTERNAL.contains(m) && !recorded.contains(m)).collect();
    let mut have = BTreeSet::new();
    let waited = Instant::now();
    // Lines are committed within 200 ms and the Kafka probe answers within seconds; a name that is
    // still missing after that is not exported at all.
    while waited.elapsed() < Duration::from_secs(30) {
        let (code, body) = get(http, "/metrics");
        if code == 200 {
            have = exported(&body);
            if wanted.iter().all(|m| have.contains(*m)) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let missing_rules: Vec<String> = rule_metrics
        .iter()
        .filter(|(m, _)| !have.contains(*m) && !EXTERNAL.contains(&m.as_str()) && !recorded.contains(m.as_str()))
        .map(|(m, at)| format!("{m} (rule {at})"))
        .collect();
    let missing_dash: Vec<String> = dash.iter().filter(|(m, _)| !have.contains(*m) && m.as_str() != "up").map(|(m, at)| format!("{m} ({at})")).collect();
    assert!(
        missing_rules.is_empty() && missing_dash.is_empty(),
        "queried but not exported by the watcher:\n  rules: {missing_rules:?}\n  dashboard: {missing_dash:?}\nexported: {have:?}"
    );
    // The check has teeth: the scrape holds the watcher's own metrics, and a name it lacks is caught.
    assert!(have.contains("safeguard_kafka_consumer_lag") && have.contains("safeguard_lines_rejected_by_reason_total"), "{have:?}");
    assert!(!have.contains("safeguard_lines_read") && !have.contains("up"));
}

// ------------------------------------------------------------------------------------------- Prometheus

/// A Prometheus server on a free loopback port, killed when dropped.
struct Prometheus {
    _child: KillOnDrop,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Prometheus {
        let bin = tool("prometheus");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let (ok, out) = promtool(&["check", "config", cfg.to_str().unwrap()]);
        assert!(ok, "promtool check config:\n{out}");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus { _child: KillOnDrop(child), port, log };
        let start = Instant::now();
        while get(port, "/-/ready").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(30), "Prometheus not ready after 30 s:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (code, body) = get(self.port, path);
        assert_eq!(code, 200, "GET {path}: {body}\n{}", self.log());
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{v}");
        v["data"].clone()
    }

    fn query(&self, q: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", url_encode(q)))["result"].as_array().unwrap().clone()
    }

    fn alerts(&self, name: &str) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"].as_array().unwrap().iter().filter(|a| a["labels"]["alertname"] == name).cloned().collect()
    }
}

#[test]
fn a_real_prometheus_fires_watcher_down_when_the_watcher_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let (syslog, http) = (free_port(), free_port());
    let watcher = start_watcher(
        &format!(
            r#"[watch]
commit_interval = "200ms"

[[sources]]
type = "syslog"
tcp = "127.0.0.1:{syslog}"

[http]
listen = "127.0.0.1:{http}"
"#
        ),
        tmp.path(),
        http,
    );

    // A test copy of the shipped rules: the same groups and expressions, every `for:` cut to 1 s (one
    // evaluation pending, the next firing), evaluated every second against a 1 s scrape.
    let mut rules = yaml(&rules_file());
    let mut shortened = 0;
    for g in rules["groups"].as_array_mut().unwrap() {
        for r in g["rules"].as_array_mut().unwrap() {
            if r["alert"].is_string() {
                r["for"] = "1s".into();
                shortened += 1;
            }
        }
    }
    assert!(shortened >= 10);
    let copy = tmp.path().join("safeguard.rules.yml");
    std::fs::write(&copy, serde_norway::to_string(&rules).unwrap()).unwrap();
    let prom = Prometheus::start(
        tmp.path(),
        &format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {}
scrape_configs:
  - job_name: safeguard
    static_configs:
      - targets: ["127.0.0.1:{http}"]
"#,
            copy.display()
        ),
    );
    let loaded: usize = prom.api("/api/v1/rules")["groups"].as_array().unwrap().iter().map(|g| g["rules"].as_array().unwrap().len()).sum();
    assert_eq!(loaded, rules_of(&rules["groups"]).len(), "Prometheus loaded every rule");

    // Up: scraped, the watcher's own metrics stored, and no watcher-down alert in any state.
    wait_until("Prometheus to scrape the watcher", Duration::from_secs(20), || {
        let up = prom.query(r#"up{job="safeguard"}"#);
        up.len() == 1 && up[0]["value"][1] == "1" && !prom.query("safeguard_engine_last_commit_timestamp_seconds").is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(prom.alerts("SafeguardWatcherDown").is_empty(), "{:?}", prom.alerts("SafeguardWatcherDown"));
    assert!(prom.alerts("SafeguardEngineStalled").is_empty(), "{:?}", prom.alerts("SafeguardEngineStalled"));

    // Down: the alert goes pending, then fires, within a bounded wait.
    drop(watcher);
    let stopped = Instant::now();
    let mut firing = Value::Null;
    let mut states = BTreeSet::new();
    while stopped.elapsed() < Duration::from_secs(30) {
        for a in prom.alerts("SafeguardWatcherDown") {
            states.insert(a["state"].as_str().unwrap_or("?").to_string());
            if a["state"] == "firing" {
                firing = a;
            }
        }
        if !firing.is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!firing.is_null(), "SafeguardWatcherDown not firing 30 s after the watcher stopped (states seen {states:?}):\n{}", prom.log());
    let labels = &firing["labels"];
    assert_eq!(labels["job"], "safeguard");
    assert_eq!(labels["instance"], format!("127.0.0.1:{http}"));
    assert_eq!(labels["severity"], "critical");
    assert_eq!(firing["annotations"]["runbook"], "deploy/README.md#safeguardwatcherdown");
    assert!(s(&firing["annotations"], "summary").contains(&format!("127.0.0.1:{http}")), "{firing}");
    eprintln!("SafeguardWatcherDown firing {:.1} s after the watcher stopped (states seen: {states:?})", stopped.elapsed().as_secs_f64());
}
