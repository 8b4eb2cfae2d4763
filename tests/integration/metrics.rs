//! `builtin: metrics`: the Prometheus text exposition over HTTP, scraped by curl and read by a
//! real Prometheus parser (the `prometheus_client` package's), with counters that move with
//! real connections, refusals and exits.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use crate::harness::{Daemon, Service, TestDir, read_until_closed};

/// Parses an exposition with prometheus_client's parser: `name{label="v",…} value` per
/// sample, the labels sorted; None where python3 lacks the package.
fn parse_exposition(text: &str) -> Option<BTreeMap<String, f64>> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(sample.labels.items()))
        print("%s{%s} %r" % (sample.name, labels, sample.value))
"#;
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .ok()?;
    if !probe.success() {
        return None;
    }
    let mut parser = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(output.status.success(), "the parser refused:\n{text}");
    let samples = String::from_utf8(output.stdout).unwrap();
    Some(
        samples
            .lines()
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').unwrap();
                (name.to_string(), value.parse().unwrap())
            })
            .collect(),
    )
}

/// `curl` against the metrics service: status code and body.
fn curl(port: u16, extra: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("run curl");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

#[test]
fn metrics_are_scraped_by_a_prometheus_parser_and_move_with_connections_refusals_and_exits() {
    let dir = TestDir::new("metrics");
    let hello = dir.script("hello.sh", "echo hello");
    let fail = dir.script("fail.sh", "exit 3");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("hello", &hello),
            Service::new("denied", &hello).set("only_from", "[192.0.2.0/24]"),
            Service::new("fail", &fail),
            Service::builtin("metrics", "metrics"),
        ],
    );
    for _ in 0..3 {
        assert_eq!(daemon.request("hello", ""), "hello\n");
    }
    assert_eq!(read_until_closed(&mut daemon.connect("denied")), "");
    daemon.wait_for_line("denied/tcp: refused");
    let _ = daemon.request("fail", "");
    daemon.wait_for_line("fail/tcp: exited pid=");
    crate::harness::wait_until("three hello exits are logged", || {
        daemon.count_lines("hello/tcp: exited") == 3
    });

    let (code, body) = curl(daemon.port("metrics"), &[]);
    assert_eq!(code, "200", "{body}");
    let Some(samples) = parse_exposition(&body) else {
        eprintln!("skipped the parse: python3 has no prometheus_client (make deps installs it)");
        return;
    };
    let value = |name: &str| {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };
    let hello = r#"proto="tcp",service="hello""#;
    assert_eq!(
        value(&format!("rinetd_service_accepted_total{{{hello}}}")),
        3.0
    );
    assert_eq!(
        value(&format!("rinetd_service_handler_seconds_count{{{hello}}}")),
        3.0
    );
    assert_eq!(
        value(&format!(
            "rinetd_service_exits_total{{outcome=\"success\",{hello}}}"
        )),
        3.0
    );
    assert_eq!(
        value(r#"rinetd_service_exits_total{outcome="failure",proto="tcp",service="fail"}"#),
        1.0
    );
    assert_eq!(
        value(r#"rinetd_service_refused_total{proto="tcp",reason="only_from",service="denied"}"#),
        1.0
    );
    assert_eq!(value(&format!("rinetd_service_running{{{hello}}}")), 0.0);
    assert_eq!(value(&format!("rinetd_service_up{{{hello}}}")), 1.0);
    assert_eq!(value(r#"rinetd_reloads_total{result="ok"}"#), 0.0);
    assert!(value("rinetd_open_fds{}") > 3.0);
    assert!(value("rinetd_resident_memory_bytes{}") > 100_000.0);
    assert!(value("rinetd_start_time_seconds{}") > 1.7e9);
    // The scrape itself is a builtin connection of its own.
    daemon.wait_for_line("metrics/tcp: accepted client=127.0.0.1:");
}

#[test]
fn metrics_answers_other_methods_with_405_and_bad_requests_with_400() {
    let dir = TestDir::new("metrics-methods");
    let daemon = Daemon::start(&dir, &[Service::builtin("metrics", "metrics")]);
    let port = daemon.port("metrics");
    let (code, _) = curl(port, &["-X", "POST", "-d", "x"]);
    assert_eq!(code, "405");
    let mut client = daemon.connect("metrics");
    client.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut client);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    // A head longer than 8 KiB is refused too, without waiting for its end.
    let mut client = daemon.connect("metrics");
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "x".repeat(9000));
    let _ = client.write_all(long.as_bytes());
    let answer = read_until_closed(&mut client);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
}

#[test]
fn a_metrics_request_head_not_in_within_5s_is_closed() {
    let dir = TestDir::new("metrics-slow");
    let daemon = Daemon::start(&dir, &[Service::builtin("metrics", "metrics")]);
    let mut client = daemon.connect("metrics");
    client.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    // Kept open: rinetd gives up by itself (the read fails after 10 s otherwise).
    assert_eq!(read_until_closed(&mut client), "");
    let closed = daemon.wait_for_line("metrics/tcp: closed client=");
    let duration: f64 = closed
        .field("duration")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(duration >= 4.9, "closed before its 5 s: {}", closed.text);
}
