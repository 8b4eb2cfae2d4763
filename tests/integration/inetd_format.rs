//! `rinetd --format inetd`: a classic inetd.conf run directly, in the forms Debian's stock
//! files do not use (servers with argv, user:group, `.max`, FreeBSD's `/max-child`, `host:`
//! lines, unix sockets, continuation lines), its errors, warnings and reload.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{
    DEADLINE, Daemon, EX_CONFIG, TestDir, all_output, connect, exchange,
    free_port_on_both_families, is_root, rinetd,
};

fn inetd_command(conf: &Path) -> Command {
    let mut command = Daemon::command(conf);
    command.args(["--format", "inetd"]);
    command
}

fn check_inetd(conf: &Path) -> std::process::Output {
    rinetd()
        .args(["--format", "inetd", "-t", "-c"])
        .arg(conf)
        .output()
        .expect("run rinetd -t")
}

/// A handler that shows its own argv (NUL-separated, as /proc has it), its stderr and its
/// identity: `sh` run with the argv of the inetd.conf line. No blank may appear in an
/// inetd.conf argument, hence `${IFS}`.
const SHOW_ARGV: &str = "/bin/sh inetd-zero -c cat${IFS}/proc/$$/cmdline;echo;echo${IFS}on-stderr>&2;id${IFS}-un;id${IFS}-gn";

#[test]
fn a_server_line_runs_with_its_argv0_user_group_and_stderr_on_the_connection() {
    if !is_root() {
        eprintln!("skipped: switching to nobody:nogroup needs root");
        return;
    }
    let dir = TestDir::new("inetd-argv");
    let conf = dir.write(
        "inetd.conf",
        &format!("# a comment\n127.0.0.1:0 stream tcp nowait nobody:nogroup {SHOW_ARGV}\n"),
        0o644,
    );
    let daemon = Daemon::spawn(inetd_command(&conf));
    let answer = exchange(daemon.connect("0"), "");
    let mut lines = answer.lines();
    let argv = lines.next().unwrap_or_default();
    assert!(
        argv.starts_with("inetd-zero\0-c\0cat${IFS}"),
        "argv[0] is the first argument of the line: {answer:?}"
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["on-stderr", "nobody", "nogroup"],
        "stderr on the connection, as inetd did: {answer:?}"
    );
}

#[test]
fn user_dot_group_continuation_lines_host_lines_and_tcp46() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let dir = TestDir::new("inetd-forms");
    let port = free_port_on_both_families();
    // The arguments go on in a line that starts with a blank (BSD inetd's continuation).
    let conf = dir.write(
        "inetd.conf",
        &format!(
            "{port} stream tcp46 nowait nobody.nogroup /bin/sh sh -c\n\tid${{IFS}}-gn\n[::1]:\n0 stream tcp6 nowait root internal echo\n"
        ),
        0o644,
    );
    let daemon = Daemon::spawn(inetd_command(&conf));
    let name = port.to_string();
    let addresses = daemon.addresses(&name);
    assert_eq!(addresses.len(), 2, "tcp46 listens on both families");
    assert!(addresses.iter().any(|a| a.is_ipv4()) && addresses.iter().any(|a| a.is_ipv6()));
    assert_eq!(exchange(connect(addresses[0]), ""), "nogroup\n");
    assert_eq!(exchange(connect(addresses[1]), ""), "nogroup\n");
    // `[::1]:` sets the host of the lines below; FreeBSD names the builtin after `internal`.
    let echo = daemon.addresses_of("0", "tcp");
    assert!(echo[0].ip().is_loopback() && echo[0].is_ipv6(), "{echo:?}");
    assert_eq!(exchange(connect(echo[0]), "ping\n"), "ping\n");
}

#[test]
fn dot_max_pauses_accepting_after_max_spawns_a_minute() {
    let dir = TestDir::new("inetd-dot-max");
    let conf = dir.write(
        "inetd.conf",
        "127.0.0.1:0 stream tcp nowait.2 root /bin/echo echo hi\n",
        0o644,
    );
    let daemon = Daemon::spawn(inetd_command(&conf));
    for _ in 0..2 {
        assert_eq!(exchange(daemon.connect("0"), ""), "hi\n");
    }
    let _waiting = daemon.connect("0");
    daemon.wait_for_line("0/tcp: paused reason=rate_limit");
}

#[test]
fn freebsd_max_child_limits_concurrent_handlers() {
    let dir = TestDir::new("inetd-max-child");
    let conf = dir.write(
        "inetd.conf",
        "127.0.0.1:0 stream tcp nowait/1/0/0 root /bin/sh sh -c echo${IFS}started;exec${IFS}sleep${IFS}30\n",
        0o644,
    );
    let daemon = Daemon::spawn(inetd_command(&conf));
    let mut first = daemon.connect("0");
    let mut line = [0u8; 8];
    first.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"started\n");
    let _second = daemon.connect("0");
    daemon.wait_for_line("0/tcp: paused reason=max_children running=1");
}

#[test]
fn a_unix_socket_line_is_served() {
    let dir = TestDir::new("inetd-unix");
    let path = dir.join("cat.sock");
    let conf = dir.write(
        "inetd.conf",
        &format!("{} stream unix nowait root /bin/cat cat\n", path.display()),
        0o644,
    );
    let _daemon = Daemon::spawn(inetd_command(&conf));
    let mut client = UnixStream::connect(&path).expect("connect to the unix service");
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.write_all(b"over unix\n").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "over unix\n");
}

#[test]
fn every_error_is_reported_in_one_run_with_line_column_and_field() {
    let dir = TestDir::new("inetd-errors");
    let conf = dir.write(
        "inetd.conf",
        "echo stream tcp nowait root\n\
         x stream tcpx nowait root /bin/cat cat\n\
         y stream tcp sometimes root /bin/cat cat\n\
         z dgram tcp nowait root /bin/cat cat\n\
         nosuchservice stream tcp nowait root /bin/cat cat\n\
         echo stream tcp nowait root /no/such/server x\n\
         example.org:echo stream tcp nowait root internal\n",
        0o644,
    );
    let output = check_inetd(&conf);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(EX_CONFIG), "{text}");
    let shown = conf.display();
    for expected in [
        format!("{shown}:1:1: expected at least 6 fields"),
        format!("{shown}:2:10: protocol field: \"tcpx\""),
        format!("{shown}:3:14: wait/nowait field: \"sometimes\""),
        format!("{shown}:4:3: socket type field"),
        format!("{shown}:7:1: service field: host \"example.org\""),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing in:\n{text}");
    }
    // The inetd syntax is read first; the table checks run once it is well formed.
    let fixed = dir.write(
        "fixed.conf",
        "nosuchservice stream tcp nowait root /bin/cat cat\necho stream tcp nowait root /no/such/server x\n",
        0o644,
    );
    let text = all_output(&check_inetd(&fixed));
    let shown = fixed.display();
    assert!(
        text.contains(&format!("{shown}:1:1: service \"nosuchservice\": service field: \"nosuchservice\" is not a tcp service in /etc/services")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{shown}:2:29: service \"echo\": server program field: /no/such/server"
        )),
        "{text}"
    );
}

#[test]
fn settings_without_an_equivalent_are_warnings_naming_the_line() {
    let dir = TestDir::new("inetd-warnings");
    let conf = dir.write(
        "inetd.conf",
        "127.0.0.1:0 stream tcp,sndbuf=4096 nowait root/staff /bin/cat cat\n",
        0o644,
    );
    let output = check_inetd(&conf);
    let text = all_output(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("OK, 1 service\n"), "{text}");
    let shown = conf.display();
    assert!(
        text.contains(&format!(
            "warning: {shown}:1:1: service field: protocol options \"sndbuf=4096\""
        )),
        "{text}"
    );
    assert!(text.contains("login class \"staff\""), "{text}");
}

#[test]
fn sighup_rereads_the_inetd_conf() {
    let dir = TestDir::new("inetd-reload");
    let conf = dir.write(
        "inetd.conf",
        "127.0.0.1:0 stream tcp nowait root internal echo\n",
        0o644,
    );
    let daemon = Daemon::spawn(inetd_command(&conf));
    let echo_port = daemon.port("0");
    let port = free_port_on_both_families();
    dir.write(
        "inetd.conf",
        &format!("127.0.0.1:0 stream tcp nowait root internal echo\n127.0.0.1:{port} stream tcp nowait root /bin/echo echo added\n"),
        0o644,
    );
    kill(Pid::from_raw(daemon.pid()), Signal::SIGHUP).unwrap();
    let reloaded = daemon.wait_for_line("reloaded added=");
    daemon.wait_for_line(&format!("{port}/tcp: listening address=127.0.0.1:{port}"));
    assert_eq!(exchange(daemon.connect(&port.to_string()), ""), "added\n");
    assert_eq!(
        daemon.port("0"),
        echo_port,
        "the kept service keeps its socket"
    );

    // A broken inetd.conf changes nothing and says why, with its line.
    dir.write("inetd.conf", "broken line\n", 0o644);
    kill(Pid::from_raw(daemon.pid()), Signal::SIGHUP).unwrap();
    daemon.wait_for_line_after(&reloaded, "inetd.conf:1:1: expected at least 6 fields");
    assert_eq!(exchange(daemon.connect(&port.to_string()), ""), "added\n");
}
