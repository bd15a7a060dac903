//! The shipped monitoring against a real Prometheus.
//!
//! - A real `prometheus` process (Debian's package; `scripts/test` installs
//!   it) on a free loopback port scrapes three real cluster nodes sharing a
//!   real `redis-server`, while `dtcp-bench` makes pairing traffic, both
//!   local and forwarded. Then, through Prometheus's HTTP API, every
//!   expression of every panel of the dashboard (its variables substituted,
//!   first with "All", then with one concrete value each) returns a
//!   non-empty result, and every alert rule has loaded and evaluates
//!   without error.
//! - `promtool test rules` runs the synthetic-series tests of the alerts,
//!   and every alert has a case where it fires and one, in the healthy
//!   cluster, where it stays silent.
//! - Every `outcome` docs/METRICS.md lists for the lane counters is
//!   exported from a node's start, at zero, as the lane-wait counter the
//!   dashboard and an alert read.
//!
//! The dashboard and the rules are the chart's files, the same ones the
//! compose demo mounts and the chart's ConfigMap and PrometheusRule embed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dtcp_tests::testkit::Process;
use dtcp_tests::{RedisServer, Relay, bin, cluster_node, eventually, free_port};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long Prometheus may take to start and to see its targets.
const PROMETHEUS_START: Duration = Duration::from_secs(30);
/// How long the rules may take to be evaluated once (they run every second).
const RULES_EVALUATED: Duration = Duration::from_secs(20);
/// Pairs the load generator makes, and at which concurrency.
const BENCH_PAIRS: u64 = 600;
const BENCH_CONCURRENCY: &str = "8";
/// What `$__rate_interval` becomes: Grafana makes it at least four scrape
/// intervals (1 s here), and it must still hold the bench's traffic when
/// the panels are queried a few seconds later.
const RATE_INTERVAL: &str = "30s";
/// The label the test scrape adds as Kubernetes would, so that the
/// dashboard's namespace variable has a value to take.
const NAMESPACE: &str = "dtcp-test";
/// The job the alert rules select (`up{job="dtcp-relay"}`).
const JOB: &str = "dtcp-relay";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn alerts_file() -> PathBuf {
    repo().join("helm/dtcp-relay/files/alerts.yaml")
}

fn dashboard_file() -> PathBuf {
    repo().join("helm/dtcp-relay/files/dashboard.json")
}

/// A program that must be installed: never skip a test for want of it.
fn program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is needed: install Debian's `prometheus` package \
                 (`apt-get install prometheus`; scripts/test does it)"
            )
        })
}

/// The names of the alerts in the rules file (`- alert: Name` lines).
fn alert_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(alerts_file()).expect("reading the alert rules");
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(names.len() >= 10, "too few alerts found: {names:?}");
    names
}

#[test]
fn every_alert_fires_in_its_situation_and_stays_silent_when_healthy() {
    let tests = repo().join("deploy/prometheus/alerts.test.yaml");
    let out = Command::new(program("promtool"))
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Which alert each test group expects firing, and which silent. The
    // file's two shapes: `{eval_time: .., alertname: X, exp_alerts: []}` on
    // one line, or `alertname: X` followed by `exp_alerts:` and its items.
    let text = std::fs::read_to_string(&tests).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut group = String::new();
    let mut firing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut silent: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (n, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("  - name:") {
            group = name.trim().to_owned();
        }
        let Some((_, rest)) = line.split_once("alertname:") else {
            continue;
        };
        let alert = rest.split([',', '}']).next().unwrap().trim().to_owned();
        let expectation = if line.contains("exp_alerts:") {
            (*line).to_owned()
        } else {
            let next = lines[n + 1..]
                .iter()
                .find(|l| l.contains("exp_alerts:"))
                .expect("exp_alerts after alertname");
            let after = lines[n + 1..]
                .iter()
                .skip_while(|l| !l.contains("exp_alerts:"))
                .nth(1)
                .copied()
                .unwrap_or_default();
            format!("{next} {after}")
        };
        let into = if expectation.contains("exp_alerts: []") {
            &mut silent
        } else {
            assert!(
                expectation.contains("- exp_labels:"),
                "{group}: cannot read the expectation of {alert}: {expectation}"
            );
            &mut firing
        };
        into.entry(alert).or_default().insert(group.clone());
    }
    for alert in alert_names() {
        assert!(
            firing.get(&alert).is_some_and(|g| !g.is_empty()),
            "{alert}: no test where it fires"
        );
        assert!(
            silent.get(&alert).is_some_and(|g| g.contains("healthy")),
            "{alert}: no check that it stays silent in the healthy cluster"
        );
    }
    for alert in firing.keys().chain(silent.keys()) {
        assert!(
            alert_names().contains(alert),
            "the tests name {alert}, which the rules do not have"
        );
    }
}

/// The values docs/METRICS.md lists for `metric`'s `outcome` label: the
/// words quoted in its row's labels column, but the label's own name.
fn documented_outcomes(metric: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs/METRICS.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.starts_with(&format!("| `{metric}` |")))
        .unwrap_or_else(|| panic!("no row for {metric} in docs/METRICS.md"));
    let labels = row.split('|').nth(3).expect("a labels column");
    labels
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| *w != "outcome")
        .map(str::to_owned)
        .collect()
}

/// A counter whose series appears only at its first increment loses that
/// increment to `rate()` and `increase()`, and a panel or alert over it
/// shows nothing until then: each outcome the documentation promises is
/// there from the start, at zero.
#[tokio::test]
async fn every_documented_lane_outcome_is_exported_at_zero_from_the_start() {
    let relay = Relay::start(&[]);
    let page = relay.scrape().await;
    let has = |sample: &str| page.lines().any(|l| l == sample);
    for metric in ["dtcp_lane_dials_total", "dtcp_lane_pool_lanes_total"] {
        let outcomes = documented_outcomes(metric);
        assert!(
            outcomes.len() >= 6,
            "{metric}: too few outcomes read: {outcomes:?}"
        );
        for outcome in outcomes {
            let sample = format!("{metric}{{outcome=\"{outcome}\"}} 0");
            assert!(has(&sample), "{metric}: no {sample:?} at start");
        }
    }
    assert!(
        has("dtcp_lane_waits_expired_total 0"),
        "no lane-wait counter at start"
    );
}

/// A `prometheus` process of the test's own, killed when dropped.
#[derive(Debug)]
struct Prometheus {
    process: Process,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `nodes` every second, with the alert rules.
    fn start(nodes: &[&Relay]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("dtcp-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {:?}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n",
            alerts_file().display().to_string()
        );
        for (n, node) in nodes.iter().enumerate() {
            // The `pod` label comes from the scrape, as in the compose
            // demo and under the Prometheus Operator.
            config.push_str(&format!(
                "      - targets: [\"{}\"]\n        labels: {{pod: relay-{}, namespace: {NAMESPACE}}}\n",
                node.metrics,
                n + 1
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut process = Process::new(
            program("prometheus"),
            [
                format!("--config.file={}", config_file.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".to_owned(),
            ],
        );
        // Ready when its API answers, which the test polls.
        process.spawn();
        Prometheus { process, addr, dir }
    }

    /// One HTTP/1.0 GET (so that the answer is never chunked): status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(self.addr).await else {
            return (0, String::new());
        };
        let req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        let resp = String::from_utf8(resp).expect("UTF-8 answer");
        let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// A successful API call's `data`.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{path}: HTTP {status}, not JSON: {body}"));
        assert_eq!(v["status"], "success", "{path}: HTTP {status}: {body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The one value of a query that sums to a scalar-like vector; 0 when empty.
    async fn value(&self, expr: &str) -> f64 {
        self.query(expr)
            .await
            .first()
            .and_then(|s| s["value"][1].as_str().map(str::to_owned))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Values of `label` on the series `selector` matches (Grafana's
    /// `label_values(selector, label)`).
    async fn label_values(&self, selector: &str, label: &str) -> Vec<String> {
        let data = self
            .api(&format!(
                "/api/v1/label/{label}/values?match[]={}",
                encode(selector)
            ))
            .await;
        data.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Replaces `$name` and `${name}` by their values; panics on a variable it
/// does not know, so that a new one cannot slip through untested.
fn substitute(expr: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = expr.to_owned();
    // Longest names first: `$__rate_interval` before a hypothetical `$__rate`.
    let mut names: Vec<&&str> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &vars[*name])
            .replace(&format!("${name}"), &vars[*name]);
    }
    assert!(
        !out.contains('$'),
        "unknown variable left in {out:?} (from {expr:?})"
    );
    out
}

/// `label_values(selector, label)` split in its two parts.
fn parse_label_values(query: &str) -> (String, String) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values() query: {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    (selector.trim().to_owned(), label.trim().to_owned())
}

/// Every `(panel title, expression)` of the dashboard, and its static
/// rules: a unit on every panel, the datasource variable everywhere, and
/// no fixed rate window.
fn panel_expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        let unit = p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or_default();
        assert!(!unit.is_empty(), "panel {title:?} has no unit");
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title:?} does not use the datasource variable"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "a query of {title:?} does not use the datasource variable"
            );
            let expr = t["expr"].as_str().expect("expr").to_owned();
            for window in ["[1m]", "[5m]", "[30s]", "[2m]", "[10m]"] {
                assert!(
                    !expr.contains(window),
                    "{title:?}: a fixed window {window} instead of $__rate_interval"
                );
            }
            if expr.contains("rate(") {
                assert!(expr.contains("[$__rate_interval]"), "{title:?}: {expr}");
            }
            for label in ["namespace", "job", "instance"] {
                assert!(
                    expr.contains(&format!("{label}=~\"${label}\"")),
                    "{title:?}: the ${label} variable does not select {expr}"
                );
            }
            out.push((title.clone(), expr));
        }
    }
    out
}

/// Every datasource `uid` under `v`.
fn datasource_uids(v: &Value, into: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(uid) = m.get("datasource").and_then(|d| d["uid"].as_str()) {
                into.insert(uid.to_owned());
            }
            m.values().for_each(|v| datasource_uids(v, into));
        }
        Value::Array(a) => a.iter().for_each(|v| datasource_uids(v, into)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_against_a_real_prometheus() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap())
            .expect("the dashboard is JSON");
    let expressions = panel_expressions(&dashboard);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let names: Vec<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["datasource", "namespace", "job", "instance"]);
    let mut uids = BTreeSet::new();
    datasource_uids(&dashboard["panels"], &mut uids);
    datasource_uids(&dashboard["templating"], &mut uids);
    assert_eq!(
        uids,
        BTreeSet::from(["${datasource}".to_owned()]),
        "a hard-coded datasource uid"
    );

    let redis = RedisServer::start();
    let urls = [redis.url()];
    let args = ["--max-pending-per-ip", "10000"];
    let nodes = [
        cluster_node(&urls, &args),
        cluster_node(&urls, &args),
        cluster_node(&urls, &args),
    ];
    let prom = Prometheus::start(&nodes.iter().collect::<Vec<_>>());
    let p = &prom;
    eventually(PROMETHEUS_START, "Prometheus ready", || async move {
        p.get("/-/ready").await.0 == 200
    })
    .await;
    let up = format!("count(up{{job=\"{JOB}\"}} == 1)");
    let up = up.as_str();
    eventually(
        PROMETHEUS_START,
        "Prometheus scrapes all three nodes",
        || async move { p.value(up).await == 3.0 },
    )
    .await;
    eventually(
        PROMETHEUS_START,
        "the nodes see each other in the store",
        || async move { p.value("min(dtcp_nodes_alive)").await == 3.0 },
    )
    .await;

    // Pairing traffic: CREATEs take turns on the three nodes, CONNECTs on
    // two, so that pairs are both local and forwarded.
    let create_on = nodes.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>();
    let connect_on = [nodes[0].addr.to_string(), nodes[2].addr.to_string()];
    let out = tokio::process::Command::new(bin("dtcp-bench"))
        .arg("--create-on")
        .arg(create_on.join(","))
        .arg("--connect-on")
        .arg(connect_on.join(","))
        .args(["--json", "pair", "--pairs", &BENCH_PAIRS.to_string()])
        .args(["--concurrency", BENCH_CONCURRENCY])
        .output()
        .await
        .expect("running dtcp-bench");
    assert!(
        out.status.success(),
        "dtcp-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pairs = BENCH_PAIRS as f64;
    eventually(
        PROMETHEUS_START,
        "Prometheus sees the bench's pairs",
        || async move { p.value("sum(dtcp_pairing_latency_seconds_count)").await >= pairs },
    )
    .await;
    for path in ["local", "forwarded"] {
        let expr = format!("sum(dtcp_pairing_latency_seconds_count{{path=\"{path}\"}})");
        assert!(p.value(&expr).await > 0.0, "no {path} pairing");
    }

    // The variables, as Grafana resolves them: first "All" (or the first
    // value where "All" is not offered), then the first value of each.
    for all in [true, false] {
        let mut vars: BTreeMap<&str, String> = BTreeMap::new();
        vars.insert("__rate_interval", RATE_INTERVAL.to_owned());
        vars.insert("datasource", "prometheus".to_owned());
        for v in variables.iter().filter(|v| v["type"] == "query") {
            let name = v["name"].as_str().unwrap();
            let query = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("the variable's query");
            let (selector, label) = parse_label_values(query);
            let selector = substitute(&selector, &vars);
            let values = p.label_values(&selector, &label).await;
            assert!(
                !values.is_empty(),
                "variable {name}: {query} has no value (as {selector})"
            );
            let value = if all && v["includeAll"] == true {
                v["allValue"].as_str().expect("allValue").to_owned()
            } else {
                values[0].clone()
            };
            vars.insert(name, value);
        }
        assert_eq!(vars["job"], JOB);
        for (title, expr) in &expressions {
            let query = substitute(expr, &vars);
            let result = p.query(&query).await;
            assert!(
                !result.is_empty(),
                "panel {title:?} shows no data: {query} (variables {vars:?})"
            );
            if all {
                // With every node selected, traffic made each of them a
                // number (a histogram with no observation would be NaN).
                let finite = result.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                });
                assert!(finite, "panel {title:?}: only NaN from {query}: {result:?}");
            }
        }
    }

    // Every rule loaded, and evaluated without error.
    let expected = alert_names();
    eventually(
        RULES_EVALUATED,
        "every rule evaluated once",
        || async move {
            let data = p.api("/api/v1/rules").await;
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            rules.len() == alert_names().len()
                && rules.iter().all(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
        },
    )
    .await;
    let data = p.api("/api/v1/rules").await;
    let mut loaded = BTreeSet::new();
    for group in data["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_owned();
            assert_eq!(rule["type"], "alerting", "{name}");
            assert_eq!(
                rule["health"], "ok",
                "{name} does not evaluate: {}",
                rule["lastError"]
            );
            assert!(
                rule["lastError"].as_str().unwrap_or_default().is_empty(),
                "{name}: {}",
                rule["lastError"]
            );
            loaded.insert(name);
        }
    }
    assert_eq!(loaded, expected, "the rules Prometheus loaded");
    // The relay's series are where the rules look for them: the absent()
    // guard and the node-down alert are quiet while every node runs.
    for rule in data["groups"][0]["rules"].as_array().unwrap() {
        if ["DtcpRelayAbsent", "DtcpRelayNodeDown"].contains(&rule["name"].as_str().unwrap()) {
            assert_eq!(rule["state"], "inactive", "{}", rule["name"]);
        }
    }
    drop(prom);
    drop(nodes);
}
