//! `rinetd -t`: every mistake in the table is reported as `FILE:LINE:COL: service "NAME": …`
//! with exit 78; a good table prints `FILE: OK, N services` with exit 0.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;

use crate::harness::{
    EX_CONFIG, TestDir, all_output, check_config, is_root, self_signed_certificate,
};

/// A bad table. The offending line is marked with `# <--`; `{server}` stands for an
/// executable handler and `{noexec}` for a file without the execute bit.
struct BadConfig {
    what: &'static str,
    yaml: &'static str,
    message: &'static [&'static str],
}

const BAD_CONFIGS: &[BadConfig] = &[
    BadConfig {
        what: "a misspelt key gets a suggestion",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    sever: {server}  # <--
",
        message: &[
            "service \"hello\"",
            "unknown key \"sever\"",
            "did you mean \"server\"",
        ],
    },
    BadConfig {
        what: "a key given twice",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    port: 1  # <--
",
        message: &["duplicate key \"port\""],
    },
    BadConfig {
        what: "a number where a bool belongs",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    keepalive: 3  # <--
",
        message: &["service \"hello\"", "keepalive"],
    },
    BadConfig {
        what: "a port out of range",
        yaml: "services:
  - name: hello
    port: 70000  # <--
    server: {server}
",
        message: &["service \"hello\"", "port", "70000"],
    },
    BadConfig {
        what: "two services with one name",
        yaml: "services:
  - name: twin
    port: 0
    server: {server}
  - name: twin  # <--
    port: 0
    server: {server}
",
        message: &["service \"twin\"", "duplicate"],
    },
    BadConfig {
        what: "two services on the same protocol, address and port",
        yaml: "services:
  - name: first
    address: 127.0.0.1
    port: 65001
    server: {server}
  - name: second
    address: 127.0.0.1
    port: 65001  # <--
    server: {server}
",
        message: &["service \"second\"", "65001", "first"],
    },
    BadConfig {
        what: "a relative server path",
        yaml: "services:
  - name: hello
    port: 0
    server: hello.sh  # <--
",
        message: &["service \"hello\"", "server", "absolute"],
    },
    BadConfig {
        what: "a server that is not executable",
        yaml: "services:
  - name: hello
    port: 0
    server: {noexec}  # <--
",
        message: &["service \"hello\"", "executable"],
    },
    BadConfig {
        what: "an unknown user",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    user: nosuchuser  # <--
",
        message: &["service \"hello\"", "nosuchuser"],
    },
    BadConfig {
        what: "an unknown group",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    group: nosuchgroup  # <--
",
        message: &["service \"hello\"", "nosuchgroup"],
    },
    BadConfig {
        what: "a port name missing from /etc/services",
        yaml: "services:
  - name: hello
    port: nosuchport  # <--
    server: {server}
",
        message: &["service \"hello\"", "nosuchport"],
    },
    BadConfig {
        what: "an unquoted umask (YAML 1.2 reads 022 as 22)",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    umask: 022  # <--
",
        message: &["service \"hello\"", "umask", "quote"],
    },
    BadConfig {
        what: "a bad CIDR in only_from",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    only_from: [10.0.0.0/33]  # <--
",
        message: &["service \"hello\"", "10.0.0.0/33"],
    },
    BadConfig {
        what: "a bad duration",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    timeout: 5 minutes  # <--
",
        message: &["service \"hello\"", "timeout"],
    },
    BadConfig {
        what: "no server",
        yaml: "services:
  - name: lonely  # <--
    port: 0
",
        message: &["service \"lonely\"", "server"],
    },
    BadConfig {
        what: "a name outside [A-Za-z0-9][A-Za-z0-9._-]{0,63}",
        yaml: "services:
  - name: \"-dash\"  # <--
    port: 0
    server: {server}
",
        message: &["name"],
    },
    BadConfig {
        what: "both server and builtin",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    builtin: echo  # <--
",
        message: &["service \"hello\"", "exactly one"],
    },
    BadConfig {
        what: "an unknown builtin",
        yaml: "services:
  - name: hello
    port: 0
    builtin: quote  # <--
",
        message: &[
            "service \"hello\"",
            "\"quote\" is not one of echo, discard, chargen",
        ],
    },
    BadConfig {
        what: "wait: true on a builtin",
        yaml: "services:
  - name: hello
    protocol: udp
    port: 0
    builtin: echo
    wait: true  # <--
",
        message: &["service \"hello\"", "does not apply"],
    },
    BadConfig {
        what: "args on a builtin",
        yaml: "services:
  - name: hello
    port: 0
    builtin: echo
    args: [echo]  # <--
",
        message: &["service \"hello\"", "args", "not for a builtin"],
    },
    BadConfig {
        what: "proxy_protocol on udp",
        yaml: "services:
  - name: hello
    protocol: udp
    port: 0
    server: {server}
    proxy_protocol: true  # <--
",
        message: &[
            "service \"hello\"",
            "only for tcp services with wait: false",
        ],
    },
    BadConfig {
        what: "proxy_protocol on a wait service",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    wait: true
    proxy_protocol: true  # <--
",
        message: &[
            "service \"hello\"",
            "only for tcp services with wait: false",
        ],
    },
    BadConfig {
        what: "a unix service without a path",
        yaml: "services:
  - name: hello  # <--
    protocol: unix
    server: {server}
",
        message: &["service \"hello\"", "missing key \"path\""],
    },
    BadConfig {
        what: "a port on a unix service",
        yaml: "services:
  - name: hello
    protocol: unix
    path: /tmp/rinetd-never-bound.sock
    port: 80  # <--
    server: {server}
",
        message: &["service \"hello\"", "not for protocol unix"],
    },
    BadConfig {
        what: "a unix path that is a regular file",
        yaml: "services:
  - name: hello
    protocol: unix
    path: {server}  # <--
    server: {server}
",
        message: &["service \"hello\"", "is not a socket"],
    },
    BadConfig {
        what: "a builtin on a unix socket",
        yaml: "services:
  - name: hello
    protocol: unix
    path: /tmp/rinetd-never-bound.sock
    builtin: echo  # <--
",
        message: &["service \"hello\"", "tcp and udp only"],
    },
    BadConfig {
        what: "a bad socket_mode",
        yaml: "services:
  - name: hello
    protocol: unix
    path: /tmp/rinetd-never-bound.sock
    socket_mode: \"0999\"  # <--
    server: {server}
",
        message: &["service \"hello\"", "socket_mode"],
    },
    BadConfig {
        what: "an included file that does not exist",
        yaml: "include: [other.yaml]  # <--
services: []
",
        message: &["include \"other.yaml\"", "does not exist"],
    },
    BadConfig {
        what: "an access list on a unix socket, which has no client address",
        yaml: "services:
  - name: hello
    protocol: unix
    path: /tmp/rinetd-never-bound.sock
    server: {server}
    only_from: [127.0.0.1]  # <--
",
        message: &[
            "service \"hello\"",
            "only_from",
            "does not apply to protocol unix",
        ],
    },
    BadConfig {
        what: "an access list on a tcp wait service, whose handler accepts by itself",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    wait: true
    no_access: [127.0.0.1]  # <--
",
        message: &[
            "service \"hello\"",
            "no_access",
            "does not apply to wait: true",
        ],
    },
    BadConfig {
        what: "keepalive on udp",
        yaml: "services:
  - name: hello
    protocol: udp
    port: 0
    server: {server}
    keepalive: true  # <--
",
        message: &[
            "service \"hello\"",
            "keepalive",
            "does not apply to protocol udp",
        ],
    },
    BadConfig {
        what: "a duration no clock can add",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    timeout: 9223372036854775807  # <--
",
        message: &["service \"hello\"", "timeout", "longer than 365 days"],
    },
    BadConfig {
        what: "rate_limit on a tcp wait service, whose handler accepts by itself",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    wait: true
    rate_limit: {max: 1, per: 1s, pause: 1s}  # <--
",
        message: &[
            "service \"hello\"",
            "rate_limit",
            "does not apply to wait: true",
        ],
    },
    BadConfig {
        what: "a handler setting on a builtin",
        yaml: "services:
  - name: hello
    port: 0
    builtin: echo
    timeout: 10s  # <--
",
        message: &[
            "service \"hello\"",
            "timeout",
            "does not apply to a builtin",
        ],
    },
    BadConfig {
        what: "an unquoted socket_mode",
        yaml: "services:
  - name: hello
    protocol: unix
    path: /tmp/rinetd-never-bound.sock
    server: {server}
    socket_mode: 0660  # <--
",
        message: &["service \"hello\"", "socket_mode", "quote"],
    },
    BadConfig {
        what: "a bad value in defaults applies to, and names, each service",
        yaml: "defaults:
  user: nosuchuser  # <--
services:
  - name: hello
    port: 0
    server: {server}
",
        message: &["service \"hello\"", "nosuchuser"],
    },
    BadConfig {
        what: "protocol none without respawn",
        yaml: "services:
  - name: hello
    protocol: none  # <--
    server: {server}
",
        message: &["service \"hello\"", "none is for supervised services"],
    },
    BadConfig {
        what: "a port on a service without a socket",
        yaml: "services:
  - name: hello
    protocol: none
    respawn: true
    port: 80  # <--
    server: {server}
",
        message: &["service \"hello\"", "port", "not for protocol none"],
    },
    BadConfig {
        what: "wait: false on a supervised service with a socket",
        yaml: "services:
  - name: hello
    port: 0
    respawn: true
    wait: false  # <--
    server: {server}
",
        message: &[
            "service \"hello\"",
            "supervised service with a socket is wait: true",
        ],
    },
    BadConfig {
        what: "a client limit on a supervised service",
        yaml: "services:
  - name: hello
    port: 0
    respawn: true
    server: {server}
    per_source_rate: {max: 5, per: 1m}  # <--
",
        message: &["service \"hello\"", "per_source_rate", "supervised service"],
    },
    BadConfig {
        what: "notify on an on-demand service",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    notify: true  # <--
",
        message: &[
            "service \"hello\"",
            "notify",
            "only for supervised services",
        ],
    },
    BadConfig {
        what: "per_source_rate on a unix socket, which has no client address",
        yaml: "services:
  - name: hello
    protocol: unix
    path: /tmp/rinetd-never-bound.sock
    server: {server}
    per_source_rate: {max: 5, per: 1m}  # <--
",
        message: &[
            "service \"hello\"",
            "per_source_rate",
            "does not apply to protocol unix",
        ],
    },
    BadConfig {
        what: "a source prefix longer than an IPv4 address",
        yaml: "services:
  - name: hello
    port: 0
    server: {server}
    source_prefix: {ipv4: 33, ipv6: 64}  # <--
",
        message: &[
            "service \"hello\"",
            "source_prefix.ipv4",
            "between 0 and 32",
        ],
    },
    BadConfig {
        what: "the metrics builtin over udp",
        yaml: "services:
  - name: hello
    protocol: udp
    port: 0
    builtin: metrics  # <--
",
        message: &[
            "service \"hello\"",
            "metrics is served over tcp and unix only",
        ],
    },
    BadConfig {
        what: "tls on a udp service",
        yaml: "services:
  - name: hello
    protocol: udp
    port: 0
    server: {server}
    tls: {cert: /etc/c.pem, key: /etc/k.pem}  # <--
",
        message: &[
            "service \"hello\"",
            "tls",
            "only for tcp services with wait: false",
        ],
    },
    BadConfig {
        what: "tls without a key",
        yaml: "services:
  - name: hello
    port: 0
    builtin: echo
    tls: {cert: /etc/c.pem}  # <--
",
        message: &["service \"hello\"", "key \"tls\": missing \"key\""],
    },
    BadConfig {
        what: "a service without port whose name is not in /etc/services",
        yaml: "services:
  - name: no-such-service-name  # <--
    server: {server}
",
        message: &["service \"no-such-service-name\"", "no port: set \"port\""],
    },
    BadConfig {
        what: "a wildcard address overlaps a specific one on the same port",
        yaml: "services:
  - name: all
    address: 0.0.0.0
    port: 7777
    server: {server}
  - name: loopback
    address: 127.0.0.1
    port: 7777  # <--
    server: {server}
",
        message: &["service \"loopback\"", "overlaps", "service \"all\""],
    },
];

/// A test dir holding the executable `server.sh` and the non-executable `noexec.sh`.
fn dir_with_handlers(test: &str) -> (TestDir, String) {
    let dir = TestDir::new(test);
    let server = dir.script("server.sh", "echo hello");
    dir.write("noexec.sh", "#!/bin/sh\necho hello\n", 0o644);
    (dir, server.display().to_string())
}

fn marked_line(yaml: &str) -> usize {
    yaml.lines()
        .position(|line| line.contains("# <--"))
        .expect("a line marked # <--")
        + 1
}

#[test]
fn check_reports_each_bad_config_with_file_line_and_message() {
    let (dir, server) = dir_with_handlers("bad-configs");
    let noexec = dir.join("noexec.sh").display().to_string();
    let mut failures = Vec::new();
    for case in BAD_CONFIGS {
        let yaml = case
            .yaml
            .replace("{server}", &server)
            .replace("{noexec}", &noexec);
        let config = dir.config(&yaml);
        let output = check_config(&config);
        let text = all_output(&output);
        let location = format!("{}:{}:", config.display(), marked_line(&yaml));
        let reported = text
            .lines()
            .any(|line| line.contains(&location) && case.message.iter().all(|m| line.contains(m)));
        if output.status.code() != Some(EX_CONFIG) || !reported {
            failures.push(format!(
                "{}: expected exit {EX_CONFIG} and a line with {location:?} and {:?}; got {:?}:\n{text}",
                case.what, case.message, output.status
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn check_reports_every_error_not_just_the_first() {
    let (dir, server) = dir_with_handlers("every-error");
    let config = dir.config(&format!(
        "services:
  - name: one
    port: 70000
    server: {server}
  - name: two
    port: 0
    server: {server}
    only_from: [10.0.0.0/33]
"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    let path = config.display();
    assert!(text.contains(&format!("{path}:3:")), "{text}");
    assert!(text.contains(&format!("{path}:8:")), "{text}");
}

/// A duplicate name used to be found only among entries without mistakes: a second entry that
/// reused a name and also misspelt a key hid the duplicate until the key was fixed.
#[test]
fn a_duplicate_name_on_an_entry_with_another_mistake_was_reported_only_in_a_second_run() {
    let (dir, server) = dir_with_handlers("duplicate-with-mistake");
    let config = dir.config(&format!(
        "services:
  - name: web
    port: 0
    server: {server}
  - name: web
    port: 0
    protocl: tcp
    server: {server}
"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    let path = config.display();
    assert!(
        text.contains(&format!(
            "{path}:5:5: service \"web\": duplicate service name (first defined at {path}:2)"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "{path}:7:5: service \"web\": unknown key \"protocl\""
    )));
}

/// A tab on the line after `name: b` cuts the name short (a plain scalar may go on over
/// lines): the message named `service ""`.
#[test]
fn a_tab_right_after_a_name_was_reported_for_service_empty_quotes() {
    let (dir, server) = dir_with_handlers("tab-after-name");
    let config = dir.config(&format!(
        "services:\n  - name: a\n    port: 0\n    server: {server}\n  - name: b\n\tport: 2\n"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    assert!(
        text.contains(&format!("{}:6:1: a tab character", config.display())),
        "{text}"
    );
    assert!(!text.contains("service \"\""), "{text}");
}

/// The table of issue 9: eight mistakes of eight kinds in eight services. serde stopped at the
/// first; every one is reported in one run, in line order, each at its own line and column.
#[test]
fn a_table_with_eight_mistakes_reports_all_eight_in_one_run() {
    let (dir, server) = dir_with_handlers("eight-mistakes");
    let config = dir.config(&format!(
        "services:
  - name: hello
    port: 8080
    server: {server}
    sever: {server}
  - name: twice
    port: 8081
    port: 8082
    server: {server}
  - name: typed
    port: 8083
    server: {server}
    keepalive: on
  - name: args
    port: 8084
    server: {server}
    args: hello.sh -v
  - name: env
    port: 8085
    server: {server}
    env: [FOO=bar]
  - name: both
    address: [0.0.0.0, ::]
    port: 8086
    server: {server}
  - name: limits
    port: 8087
    server: {server}
    max_children: -1
  - name: tabbed
    port: 8088
\tserver: {server}
"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    let path = config.display();
    let expected = [
        (
            "5:5",
            "service \"hello\": unknown key \"sever\" (did you mean \"server\"?)",
        ),
        ("8:5", "service \"twice\": duplicate key \"port\""),
        (
            "13:16",
            "service \"typed\": key \"keepalive\": expected true or false",
        ),
        (
            "17:11",
            "service \"args\": key \"args\": write a list: args: [hello.sh, \"-v\"]",
        ),
        (
            "21:11",
            "service \"env\": key \"env\": write FOO: bar, not FOO=bar",
        ),
        (
            "23:14",
            "service \"both\": key \"address\": quote IPv6 addresses that start with \":\": address: [0.0.0.0, \"::\"]",
        ),
        (
            "29:19",
            "service \"limits\": key \"max_children\": must be between 0 and",
        ),
        ("32:1", "service \"tabbed\": a tab character"),
    ];
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("rinetd: "))
        .collect();
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (line, (place, message)) in lines.iter().zip(expected) {
        let start = format!("rinetd: {path}:{place}: {message}");
        assert!(line.starts_with(&start), "{line}\n  wanted {start}");
    }
}

#[test]
fn every_error_of_a_table_and_its_included_files_comes_in_file_and_line_order() {
    let (dir, server) = dir_with_handlers("error-order");
    std::fs::create_dir(dir.join("conf.d")).unwrap();
    dir.write(
        "conf.d/a.yaml",
        &format!(
            "services:\n  - name: inc\n    port: 0\n    server: {server}\n    user: nosuchuser\n  - name: other\n    port: 0\n    server: {server}\n    nice: 99\n"
        ),
        0o644,
    );
    // A resolve error (unknown user) above a check error (a port out of range) in the main
    // file, and both kinds in the included file.
    let config = dir.config(&format!(
        "include: [conf.d/*.yaml]\nservices:\n  - name: a\n    port: 0\n    server: {server}\n    group: nosuchgroup\n  - name: b\n    port: 70000\n    server: {server}\n"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    let places: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("rinetd: "))
        .filter_map(|line| line.split(": ").next())
        .map(|place| place.rsplit('/').next().unwrap_or(place).to_string())
        .collect();
    assert_eq!(
        places,
        [
            "rinetd.conf:6:12",
            "rinetd.conf:8:11",
            "a.yaml:5:11",
            "a.yaml:9:11"
        ],
        "{text}"
    );
}

#[test]
fn tls_files_are_read_at_check_time_and_each_problem_is_located_at_its_key() {
    let (dir, _) = dir_with_handlers("tls-located");
    if self_signed_certificate(&dir).is_none() {
        eprintln!("skipped: the openssl CLI is needed to make a certificate");
        return;
    }
    let path = dir.path.display();
    let good = dir.config(&format!(
        "services:\n  - name: secure\n    address: 127.0.0.1\n    port: 0\n    builtin: echo\n    tls: {{cert: {path}/cert.pem, key: {path}/key.pem}}\n"
    ));
    let output = check_config(&good);
    assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
    let config = dir.config(&format!(
        "services:
  - name: secure
    address: 127.0.0.1
    port: 0
    builtin: echo
    tls:
      cert: {path}/missing.pem
      key: {path}/key.pem
      sni:
        - names: [other.example]
          cert: {path}/cert.pem
          key: {path}/cert.pem
"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    let file = config.display();
    assert!(
        text.contains(&format!(
            "{file}:7:13: service \"secure\": key \"tls.cert\": {path}/missing.pem: cannot read it"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{file}:12:16: service \"secure\": key \"tls.sni[0].key\": {path}/cert.pem: no private key in it"
        )),
        "{text}"
    );
}

#[test]
fn check_warns_about_a_script_whose_interpreter_cannot_be_found() {
    let (dir, _) = dir_with_handlers("interpreter");
    let windows = dir.write("windows.sh", "#!/bin/sh\r\necho hello\r\n", 0o755);
    let missing = dir.write("missing.py", "#!/usr/bin/no-such-python\nprint(1)\n", 0o755);
    let config = dir.config(&format!(
        "services:\n  - name: windows\n    port: 0\n    server: {}\n  - name: missing\n    port: 0\n    server: {}\n",
        windows.display(),
        missing.display()
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let file = config.display();
    assert!(
        text.lines().any(|line| line.contains("warning")
            && line.contains(&format!("{file}:4:13: service \"windows\""))
            && line.contains(&windows.display().to_string())
            && line.contains("Windows line endings")),
        "{text}"
    );
    assert!(
        text.lines().any(|line| line.contains("warning")
            && line.contains(&format!("{file}:7:13: service \"missing\""))
            && line.contains("its #! interpreter /usr/bin/no-such-python does not exist")),
        "{text}"
    );
}

#[test]
fn handlers_that_would_run_as_root_make_one_warning_not_one_per_service() {
    if !is_root() {
        eprintln!("skipped: the root-handler warning only exists when rinetd runs as root");
        return;
    }
    let (dir, server) = dir_with_handlers("root-warning-once");
    let mut yaml = String::from("services:\n");
    for n in 0..25 {
        yaml.push_str(&format!(
            "  - {{name: s{n:02}, port: 0, server: {server}}}\n"
        ));
    }
    let output = check_config(&dir.config(&yaml));
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("rinetd: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].ends_with(
            "handlers would run as root by default (set \"user\", or \"user: root\" to say so): s00, s01, s02, s03, s04, s05, s06, s07, s08, s09 and 15 more"
        ),
        "{text}"
    );
}

#[test]
fn check_of_a_good_config_prints_ok_and_the_service_count() {
    let (dir, server) = dir_with_handlers("good-config");
    let config = dir.config(&format!(
        "defaults:
  max_children: 4
services:
  - name: one
    address: 127.0.0.1
    port: 0
    server: {server}
  - name: two
    address: [\"127.0.0.1\", \"::1\"]
    port: 0
    server: {server}
    args: [hello, --flag]
    stderr: null
    rate_limit: {{max: 5, per: 10s, pause: 500ms}}
    umask: \"077\"
"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("{}: OK, 2 services", config.display())),
        "{text}"
    );
}

#[test]
fn check_warns_about_a_handler_that_would_run_as_root_but_succeeds() {
    if !is_root() {
        eprintln!("skipped: the root-handler warning only exists when rinetd runs as root");
        return;
    }
    let (dir, server) = dir_with_handlers("root-warning");
    let config = dir.config(&format!(
        "services:
  - name: admin
    port: 0
    server: {server}
  - name: guest
    port: 0
    server: {server}
    user: nobody
"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("warning")).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("admin") && w.contains("root")),
        "{text}"
    );
    assert!(!warnings.iter().any(|w| w.contains("guest")), "{text}");
}

#[test]
fn check_binds_nothing_so_a_port_in_use_is_fine() {
    let (dir, server) = dir_with_handlers("check-binds-nothing");
    let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = dir.config(&format!(
        "services:
  - name: busy
    address: 127.0.0.1
    port: {port}
    server: {server}
"
    ));
    let output = check_config(&config);
    assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
}

#[test]
fn a_disabled_service_is_left_out_of_the_same_port_check() {
    let (dir, server) = dir_with_handlers("disabled-same-port");
    let config = dir.config(&format!(
        "services:
  - name: live
    address: 127.0.0.1
    port: 65001
    server: {server}
  - name: spare
    address: 127.0.0.1
    port: 65001
    server: {server}
    disabled: true
"
    ));
    let output = check_config(&config);
    assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
}

#[test]
fn check_reports_lookup_errors_together_with_syntax_errors() {
    let (dir, server) = dir_with_handlers("two-stages");
    let config = dir.config(&format!(
        "services:
  - name: out-of-range
    port: 70000
    server: {server}
  - name: nobody-here
    port: 0
    server: {server}
    user: nosuchuser
"
    ));
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    assert!(text.contains("70000"), "{text}");
    assert!(text.contains("unknown user \"nosuchuser\""), "{text}");
}

#[test]
fn as_root_a_table_others_can_write_is_refused() {
    if !is_root() {
        eprintln!("skipped: the permission check applies only when rinetd runs as root");
        return;
    }
    let (dir, server) = dir_with_handlers("writable-table");
    let config = dir.config(&format!(
        "services:\n  - name: hello\n    port: 0\n    server: {server}\n"
    ));
    assert_eq!(check_config(&config).status.code(), Some(0));
    for mode in [0o666, 0o620] {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        let output = check_config(&config);
        let text = all_output(&output);
        assert_eq!(
            output.status.code(),
            Some(EX_CONFIG),
            "mode {mode:o}: {text}"
        );
        assert!(text.contains("writable by group or others"), "{text}");
    }
}

#[test]
fn a_quoted_umask_after_non_ascii_text_is_accepted() {
    let (dir, server) = dir_with_handlers("umask-utf8");
    let config = dir.config(&format!(
        "# café, naïve: text before the value shifts characters against bytes\n\
         services:\n  - name: hello\n    port: 0\n    server: {server}\n    umask: \"027\"\n"
    ));
    let output = check_config(&config);
    assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
}

#[test]
fn as_root_a_table_in_a_folder_others_can_write_is_refused() {
    if !is_root() {
        eprintln!("skipped: the permission check applies only when rinetd runs as root");
        return;
    }
    let (dir, server) = dir_with_handlers("writable-folder");
    std::fs::create_dir(dir.join("tables")).unwrap();
    let config = dir.write(
        "tables/rinetd.conf",
        &format!("services:\n  - name: hello\n    port: 0\n    server: {server}\n"),
        0o644,
    );
    let folder = dir.join("tables");
    for (mode, refused) in [
        (0o755, false),
        (0o777, true),
        (0o775, true),
        (0o1777, false),
    ] {
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(mode)).unwrap();
        let output = check_config(&config);
        let text = all_output(&output);
        if refused {
            assert_eq!(output.status.code(), Some(EX_CONFIG), "{mode:o}: {text}");
            assert!(
                text.contains("folder") && text.contains("writable"),
                "{text}"
            );
        } else {
            assert_eq!(output.status.code(), Some(0), "{mode:o}: {text}");
        }
    }
    // A sticky folder protects only root's own files.
    std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
    let output = check_config(&config);
    assert_eq!(
        output.status.code(),
        Some(EX_CONFIG),
        "{}",
        all_output(&output)
    );
}

#[test]
fn config_permission_check_can_be_raced_by_swapping_a_symlink() {
    // The table is a symlink that another process keeps pointing at a good, root-owned table
    // (1 service) and at one owned by nobody (2 services). Each check must either read the good
    // one or refuse: never check one file and read the other.
    if !is_root() {
        eprintln!("skipped: the permission check applies only when rinetd runs as root");
        return;
    }
    let (dir, server) = dir_with_handlers("symlink-race");
    let one = format!("services:\n  - name: a\n    port: 0\n    server: {server}\n");
    let two = format!("{one}  - name: b\n    port: 0\n    server: {server}\n");
    let good = dir.write("good.conf", &one, 0o644);
    let evil = dir.write("evil.conf", &two, 0o644);
    std::os::unix::fs::chown(&evil, Some(65534), None).unwrap();
    let link = dir.join("rinetd-link.conf");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, link, good, evil) = (stop.clone(), link.clone(), good.clone(), evil.clone());
        let staging = dir.join("staging.conf");
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                flip = !flip;
                let _ = std::fs::remove_file(&staging);
                std::os::unix::fs::symlink(if flip { &evil } else { &good }, &staging).unwrap();
                std::fs::rename(&staging, &link).unwrap();
            }
        })
    };
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let text = all_output(&check_config(&link));
        let outcome = if text.contains("OK, 2 services") {
            "read the file nobody owns"
        } else if text.contains("OK, 1 service\n") {
            "good"
        } else {
            "refused"
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(
        outcomes.get("read the file nobody owns"),
        None,
        "{outcomes:?}"
    );
}

#[test]
fn the_same_port_overlap_check_is_quadratic() {
    // 20,000 services took seconds to check (and a reload that long stalls every service);
    // the check is linear now.
    let dir = TestDir::new("many-services");
    let mut yaml = String::from("services:\n");
    for n in 0..20_000 {
        yaml.push_str(&format!(
            "  - {{name: s{n}, address: 127.0.0.1, port: {}, builtin: echo}}\n",
            n + 1
        ));
    }
    let config = dir.config(&yaml);
    let (status, stderr) = crate::harness::run_to_exit(
        &dir,
        crate::harness::rinetd().args(["-t", "-c"]).arg(&config),
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_group_without_a_user_still_runs_handlers_as_root_and_is_warned_about() {
    if !is_root() {
        eprintln!("skipped: the root-handler warning only exists when rinetd runs as root");
        return;
    }
    let (dir, server) = dir_with_handlers("root-warning-group");
    let yaml = format!(
        "services:\n  - {{name: grouped, port: 0, server: {server}, group: 65534}}\n  - {{name: chosen, port: 0, server: {server}, user: root}}\n"
    );
    let output = check_config(&dir.config(&yaml));
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    // `group` alone leaves the user rinetd's own: root, by default, not by choice.
    assert!(
        text.lines().any(|l| l.starts_with("rinetd: warning:")
            && l.ends_with("handlers would run as root by default (set \"user\", or \"user: root\" to say so): grouped")),
        "{text}"
    );
}
