//! What `deploy/monitoring` ships for operators: the PrometheusRule alerts and the Grafana
//! dashboard, checked with promtool (Debian's prometheus package, unpacked by
//! `tests/tools.sh`), against the series a real gatehouse exports, and the certificate
//! alerts against the certificates a real gatehouse reads.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use crate::support::*;

fn shipped(path: &str) -> String {
    std::fs::read_to_string(repo().join("deploy/monitoring").join(path)).unwrap()
}

/// The rule groups of the PrometheusRule: what a plain Prometheus reads as a rule file.
fn rule_groups() -> serde_json::Value {
    let rule: serde_json::Value = serde_saphyr::from_str(&shipped("prometheusrule.yaml")).unwrap();
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    rule["spec"].clone()
}

/// Writes `groups` as `gatehouse.rules.yaml` in `dir` (JSON is YAML) and returns its path.
fn write_rules(dir: &Path, groups: &serde_json::Value) -> String {
    let path = dir.join("gatehouse.rules.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(groups).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

fn promtool_in(dir: &Path, args: &[&str]) -> Output {
    let output = promtool().args(args).current_dir(dir).output().unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Every `expr` of the shipped rules.
fn rule_exprs() -> Vec<String> {
    let groups = rule_groups();
    groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .map(|rule| rule["expr"].as_str().unwrap().to_owned())
        .collect()
}

/// Every query of the dashboard's panels, with Grafana's variables as Prometheus
/// would receive them when "All" is chosen.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&shipped("grafana-dashboard.json")).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "gatehouse");
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "2m")
                .replace("$namespace", ".*")
                .replace("$job", ".*")
        })
        .collect()
}

/// The metric names an expression reads (gatehouse's and go-grpc-prometheus's), each
/// as the family a scrape declares with `# TYPE`: a histogram's `_bucket`, `_sum` and
/// `_count` belong to it.
fn families_read(expr: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    // Label names (in matchers and in `by (…)`, `without (…)`) are not metric names.
    let mut names = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find(['{', '(']) {
        let (before, from) = rest.split_at(at);
        names.push_str(before);
        let grouping = before.trim_end().ends_with(" by") || before.trim_end().ends_with("without");
        rest = if from.starts_with('{') || grouping {
            let close = if from.starts_with('{') { '}' } else { ')' };
            names.push(' ');
            &from[from.find(close).map_or(from.len(), |end| end + 1)..]
        } else {
            names.push(' ');
            &from[1..]
        };
    }
    names.push_str(rest);
    names
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("grpc_") || word.starts_with("gatehouse_"))
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| histograms.contains(*base))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_their_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), &rule_groups());
    let checked = promtool_in(dir.path(), &["check", "rules", &rules]);
    assert!(stdout(&checked).contains("SUCCESS"), "{}", stdout(&checked));
    // The scenarios: 24 h, 1 h and CA certificates renewed on the usual schedules stay
    // quiet, one never renewed warns then pages; calls, the app, reloads, spans.
    std::fs::write(
        dir.path().join("alerts.test.yaml"),
        shipped("alerts.test.yaml"),
    )
    .unwrap();
    let tested = promtool_in(dir.path(), &["test", "rules", "alerts.test.yaml"]);
    assert!(stdout(&tested).contains("SUCCESS"), "{}", stdout(&tested));
}

/// A client that does not speak TLS, and an HTTP/2 request that is not gRPC.
async fn not_tls_and_not_grpc(addr: std::net::SocketAddr) {
    // A client that does not speak TLS.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = plain.read_to_end(&mut Vec::new()).await;

    // An HTTP/2 request that is not gRPC.
    let tls = tls_connect(addr, Some(&Identity::gateway())).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Echo")
        .header("content-type", "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 415);
}

/// A scrape in which every family gatehouse has carries samples (prometheus-client
/// leaves empty ones out): calls allowed, over their rate and under a dry-run rule, a
/// failed handshake, a non-gRPC request, an outbound call, a reload, spans, the app gone.
async fn scrape_of_every_family() -> String {
    const KEY_A: &str = "monitoring-key-a-0123456789";
    const KEY_B: &str = "monitoring-key-b-0123456789";
    let (_collector, collector) = Collector::start(false).await;
    let app = App::start().await;
    let mut config = DevConfig::new(app.addr)
        .admin()
        .limit("per_identity", "{ calls_per_second: 1 }");
    config.otlp_endpoint = Some(format!("http://{collector}"));
    let yaml = config.yaml()
        + &format!(
            "auth:\n  api_keys:\n    keys:\n      - {{ name: a, sha256: \"{}\" }}\n      - {{ name: b, sha256: \"{}\" }}
authorization: {{ default: deny, dry_run: true, rules: [] }}
outbound:
  listen: 127.0.0.1:0
  destinations:
    - {{ name: nowhere, address: \"localhost:1\", identity: [\"spiffe://dev.gatehouse/ns/default/sa/nowhere\"], credentials: none }}
",
            hash(KEY_A),
            hash(KEY_B)
        );
    let gatehouse = Gatehouse::start(&yaml);
    let keyed = |key: &str| with_key(pb::EchoRequest::default(), key);
    let mut client = client(gatehouse.addr).await;
    client.echo(keyed(KEY_A)).await.expect("allowed (dry run)");
    let mut over_rate = false;
    for _ in 0..20 {
        if client.echo(keyed(KEY_A)).await.is_err() {
            over_rate = true;
            break;
        }
    }
    assert!(over_rate, "20 calls in a row never passed 1 a second");

    not_tls_and_not_grpc(gatehouse.addr).await;

    // An outbound call to a destination that does not answer.
    let outbound = outbound_address(&gatehouse);
    let mut app_client = app_client(outbound, "nowhere").await;
    app_client
        .echo(pb::EchoRequest::default())
        .await
        .expect_err("nowhere answers");

    gatehouse.signal("HUP");
    gatehouse.wait_for_line(&["configuration reloaded"]).await;

    app.kill().await;
    // The first call may still find the dying connection (kind="request"); a later one
    // has to dial, and fails to connect.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        client
            .echo(keyed(KEY_B))
            .await
            .expect_err("the app is gone");
        let scrape = scrape_metrics(&gatehouse).await;
        if sample(
            &scrape,
            r#"gatehouse_upstream_errors_total{kind="connect"}"#,
        )
        .is_some()
        {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connect error counted:\n{scrape}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_and_the_dashboard_read_only_series_gatehouse_exports() {
    let scrape = scrape_of_every_family().await;
    let declared = |kind: &str| -> BTreeSet<String> {
        scrape
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .filter(|(_, declared)| kind.is_empty() || *declared == kind)
            .map(|(name, _)| name.to_owned())
            .collect()
    };
    let (families, histograms) = (declared(""), declared("histogram"));

    let dashboard = dashboard_exprs();
    assert!(dashboard.len() > 15, "{dashboard:?}");
    for expr in rule_exprs().iter().chain(&dashboard) {
        let read = families_read(expr, &histograms);
        assert!(!read.is_empty(), "{expr} reads no gatehouse series");
        let unknown: Vec<_> = read.difference(&families).collect();
        assert!(
            unknown.is_empty(),
            "{expr} reads {unknown:?}, not in\n{scrape}"
        );
    }

    // The dashboard's queries are PromQL promtool parses: checked as recording rules.
    let rules: Vec<serde_json::Value> = dashboard
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({ "record": format!("gatehouse:panel_{i}"), "expr": expr }))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_rules(
        dir.path(),
        &serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] }),
    );
    promtool_in(dir.path(), &["check", "rules", &path]);
}

/// A promtool scenario that feeds the certificate series a real gatehouse exports to the
/// shipped rules, shifted so `now` is time 0 (the rules read only differences of times,
/// so the outcome is the one Prometheus would reach), evaluated ten minutes later.
fn certificate_scenario(scrape: &str, file: &Path, now: u64, expected: &str) -> String {
    let series = |name: &str| {
        let series = format!("{name}{{file=\"{}\"}}", file.display());
        let value = sample(scrape, &series).unwrap_or_else(|| panic!("{series} in\n{scrape}"));
        format!(
            "      - series: '{series}'\n        values: '{}x20'\n",
            value - now as f64
        )
    };
    format!(
        "rule_files: [gatehouse.rules.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{}{}    alert_rule_test:\n{expected}",
        series("gatehouse_cert_not_before_timestamp_seconds"),
        series("gatehouse_cert_expiry_timestamp_seconds"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_24h_certificate_alerts_only_once_its_renewal_is_late() {
    let app = App::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    const HOUR: u64 = 3600;
    let dir = tempfile::tempdir().unwrap();
    let promtool_dir = tempfile::tempdir().unwrap();
    write_rules(promtool_dir.path(), &rule_groups());
    // Issued a minute ago, as cert-manager or SPIRE just did; and issued 20 h ago,
    // 4 h after cert-manager's renewal (renewBefore 8h) and 8 h after SPIRE's.
    let cases = [
        ("fresh", now - 60, "", "[]"),
        ("late", now - 20 * HOUR, "3h 50m 0s", "warning"),
    ];
    for (name, not_before, left, expected) in cases {
        let certs = dir.path().join(name);
        std::fs::create_dir(&certs).unwrap();
        let identity = broken::server_certificate_between(name, not_before, not_before + 24 * HOUR);
        let (cert, key) = identity.write_to(&certs, "tls");
        let config = DevConfig::new(app.addr)
            .tls_files(&cert, &key, &dev_cert("ca.crt"))
            .admin();
        let gatehouse = Gatehouse::start(&config.yaml());
        let scrape = scrape_metrics(&gatehouse).await;
        let lifetime = sample(
            &scrape,
            &format!(
                "gatehouse_cert_expiry_timestamp_seconds{{file=\"{}\"}}",
                cert.display()
            ),
        )
        .unwrap()
            - sample(
                &scrape,
                &format!(
                    "gatehouse_cert_not_before_timestamp_seconds{{file=\"{}\"}}",
                    cert.display()
                ),
            )
            .unwrap();
        assert_eq!(lifetime, (24 * HOUR) as f64, "{scrape}");

        let alerts = if expected == "[]" {
            String::new()
        } else {
            format!(
                "          - exp_labels: {{ severity: {expected}, file: '{}' }}\n            exp_annotations:\n              summary: '{} was not renewed in time'\n              description: 'The certificate in {} (pod ) expires in {left}, with less than a quarter of its lifetime left: later than any usual renewal. Check the issuer (cert-manager, SPIRE agent, spiffe-helper) and that the new files reach the pod; gatehouse re-reads them within a second.'\n",
                cert.display(),
                cert.display(),
                cert.display()
            )
        };
        let expected = format!(
            "      - eval_time: 10m\n        alertname: GatehouseCertificateRotationLate\n        exp_alerts:{}\n{alerts}      - eval_time: 10m\n        alertname: GatehouseCertificateExpiring\n        exp_alerts: []\n",
            if alerts.is_empty() { " []" } else { "" }
        );
        let scenario = certificate_scenario(&scrape, &cert, now, &expected);
        let test = promtool_dir.path().join(format!("{name}.test.yaml"));
        std::fs::write(&test, &scenario).unwrap();
        let output = promtool()
            .args(["test", "rules", test.to_str().unwrap()])
            .current_dir(promtool_dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}:\n{scenario}\n{}{}",
            stdout(&output),
            stderr(&output)
        );
    }
}
