//! `rinetd -t`: every mistake in the table is reported as `FILE:LINE:COL: service "NAME": …`
//! with exit 78; a good table prints `FILE: OK, N services` with exit 0.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;

use crate::harness::{EX_CONFIG, TestDir, all_output, check_config, is_root};

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
        } else if text.contains("OK, 1 services") {
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
