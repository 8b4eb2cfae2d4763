//! `rinetd convert` on xinetd syntax the stock Debian files do not use (defaults, include,
//! includedir, `+=`/`-=`, server_args, NAMEINARGS, cps, env…), format detection, and the
//! hints a YAML table gets when it holds another format or xinetd attribute names.

use std::fs;
use std::path::Path;

use crate::harness::{Daemon, EX_CONFIG, TestDir, all_output, check_config, exchange, rinetd};

fn convert(args: &[&str], file: &Path) -> std::process::Output {
    rinetd()
        .arg("convert")
        .args(args)
        .arg(file)
        .output()
        .expect("run rinetd convert")
}

fn converted(file: &Path) -> String {
    let output = convert(&[], file);
    assert!(output.status.success(), "{}", all_output(&output));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn an_xinetd_tree_with_defaults_includes_and_operators_converts_checks_and_serves() {
    let dir = TestDir::new("convert-xinetd");
    let show = "/bin/sh";
    // server_args leaves argv[0] out; convert puts the server's basename first. With
    // NAMEINARGS the first word is argv[0] itself.
    dir.write(
        "xinetd.conf",
        &format!(
            "defaults\n{{\n\tinstances = 10\n\tonly_from = 10.0.0.0/8\n\tenv = GREETING=hello\n\tlog_type = SYSLOG daemon info\n\tcps = 50 10\n}}\n\
             service args\n{{\n\tsocket_type = stream\n\tprotocol = tcp\n\twait = no\n\tuser = root\n\tport = 0\n\tbind = 127.0.0.1\n\
             \tserver = {show}\n\tserver_args = -c cat${{IFS}}/proc/$$/cmdline;echo;echo${{IFS}}$GREETING${{IFS}}$EXTRA\n\
             \tonly_from += 127.0.0.1\n\tenv += EXTRA=more\n}}\n\
             include extra.conf\nincludedir xinetd.d\n"
        ),
        0o644,
    );
    dir.write(
        "extra.conf",
        &format!(
            "service named\n{{\n\tsocket_type = stream\n\twait = no\n\tuser = root\n\tport = 0\n\tbind = 127.0.0.1\n\
             \tflags = NAMEINARGS\n\tserver = {show}\n\tserver_args = my-zero -c cat${{IFS}}/proc/$$/cmdline\n\
             \tonly_from = 127.0.0.0/8\n}}\n"
        ),
        0o644,
    );
    fs::create_dir(dir.join("xinetd.d")).unwrap();
    dir.write(
        "xinetd.d/retired",
        "service retired\n{\n\tsocket_type = stream\n\twait = no\n\tuser = root\n\tport = 0\n\tserver = /bin/true\n\tdisable = yes\n}\n",
        0o644,
    );
    // xinetd skips names with a dot or ending in ~ (package leftovers, editor backups).
    dir.write("xinetd.d/retired.dpkg-old", "garbage {\n", 0o644);
    dir.write("xinetd.d/retired~", "garbage {\n", 0o644);

    let yaml = converted(&dir.join("xinetd.conf"));
    for expected in [
        "defaults:\n",
        "  max_children: 10\n",
        "  rate_limit: {max: 50, per: 1s, pause: 10s}\n",
        "not converted: log_type = SYSLOG daemon info",
        "only_from: [10.0.0.0/8, 127.0.0.1]\n",
        "      GREETING: hello\n      EXTRA: more\n",
        "args: [sh, \"-c\",",
        "args: [my-zero, \"-c\",",
        "  - name: retired\n",
        "    disabled: true\n",
    ] {
        assert!(yaml.contains(expected), "{expected:?} missing in:\n{yaml}");
    }
    let config = dir.config(&yaml);
    let checked = check_config(&config);
    assert!(checked.status.success(), "{}", all_output(&checked));
    assert!(all_output(&checked).contains("OK, 3 services"));

    let daemon = Daemon::spawn(Daemon::command(&config));
    let answer = exchange(daemon.connect("args"), "");
    assert!(
        answer.starts_with("sh\0-c\0cat${IFS}"),
        "argv[0] is the server's basename: {answer:?}"
    );
    assert!(
        answer.ends_with("\nhello more\n"),
        "env and env +=: {answer:?}"
    );
    let answer = exchange(daemon.connect("named"), "");
    assert!(
        answer.starts_with("my-zero\0-c\0"),
        "NAMEINARGS: {answer:?}"
    );
}

#[test]
fn the_format_is_detected_and_from_overrides_it() {
    let dir = TestDir::new("convert-detect");
    let inetd = dir.write(
        "inetd.conf",
        "echo stream tcp nowait root internal\n",
        0o644,
    );
    let yaml = converted(&inetd);
    assert!(yaml.contains("builtin: echo"), "{yaml}");
    assert!(yaml.contains("(inetd.conf)"), "{yaml}");
    let as_xinetd = convert(&["--from", "xinetd"], &inetd);
    assert_eq!(as_xinetd.status.code(), Some(EX_CONFIG));
    assert!(all_output(&as_xinetd).contains("inetd.conf:1:"));

    let yaml_table = dir.config("services: []\n");
    let unknown = convert(&[], &yaml_table);
    assert_eq!(unknown.status.code(), Some(EX_CONFIG));
    assert!(
        all_output(&unknown).contains("--from inetd or --from xinetd"),
        "{}",
        all_output(&unknown)
    );
    let missing = convert(&[], &dir.join("nothing-here"));
    assert_eq!(missing.status.code(), Some(EX_CONFIG));
    assert!(
        all_output(&missing).contains("nothing-here: No such file or directory\n"),
        "{}",
        all_output(&missing)
    );
}

#[test]
fn a_converted_inetd_conf_keeps_unsupported_lines_as_comments_and_warns() {
    let dir = TestDir::new("convert-inetd-comments");
    let inetd = dir.write(
        "inetd.conf",
        "rstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\n\
         time stream tcp nowait root internal\n\
         ssh stream tcp nowait/10/20/3 root /bin/cat cat\n",
        0o644,
    );
    let output = convert(&[], &inetd);
    let yaml = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", all_output(&output));
    assert!(yaml.contains("not converted: RPC services"), "{yaml}");
    assert!(yaml.contains("#   rstatd/1-3 dgram rpc/udp"), "{yaml}");
    assert!(yaml.contains("max_children: 10\n"), "{yaml}");
    assert!(yaml.contains("per_source: 3\n"), "{yaml}");
    // FreeBSD's per-address-per-minute limit: the contract's per_source_rate.
    assert!(
        yaml.contains("per_source_rate: {max: 20, per: 60s}\n"),
        "{yaml}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("warning:"),
        "a left-out service is said on stderr too"
    );
}

#[test]
fn an_xinetd_file_given_as_a_table_gets_the_convert_hint() {
    let dir = TestDir::new("hint-xinetd");
    let config = dir.config("service echo\n{\n\tsocket_type = stream\n\twait = no\n}\n");
    let output = check_config(&config);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    assert!(
        text.contains("looks like an xinetd configuration"),
        "{text}"
    );
    assert!(
        text.contains(&format!("`rinetd convert {}`", config.display())),
        "{text}"
    );
}

#[test]
fn xinetd_attribute_names_as_keys_get_the_rinetd_key() {
    let dir = TestDir::new("hint-xinetd-keys");
    for (key, value, replacement) in [
        ("cps", "5", "rate_limit"),
        ("instances", "5", "max_children"),
        ("server_args", "x", "args (argv[0] first"),
        (
            "socket_type",
            "stream",
            "protocol (stream: tcp, dgram: udp) and wait",
        ),
        ("bind", "127.0.0.1", "address"),
        ("interface", "127.0.0.1", "address"),
    ] {
        let config = dir.config(&format!(
            "services:\n  - name: a\n    port: 1\n    server: /bin/true\n    {key}: {value}\n"
        ));
        let text = all_output(&check_config(&config));
        assert!(
            text.contains(&format!(
                "unknown key \"{key}\" (an xinetd attribute; rinetd's key is {replacement}"
            )),
            "{key}: {text}"
        );
        assert!(!text.contains("did you mean"), "{key}: {text}");
    }
}
