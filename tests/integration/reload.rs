//! SIGHUP reload: unchanged sockets stay open through any number of reloads, a bad table
//! changes nothing, changes apply to the next connection, removed services close their port
//! but keep their running handlers, and limits carry over.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{Daemon, LogLine, Service, TestDir, read_line, read_to_eof, services_yaml};

/// Rewrites the table, sends SIGHUP, and waits for the reload's outcome line after `after`.
fn reload(daemon: &Daemon, dir: &TestDir, yaml: &str, after: &LogLine, outcome: &str) -> LogLine {
    dir.config(yaml);
    kill(Pid::from_raw(daemon.pid()), Signal::SIGHUP).expect("SIGHUP");
    daemon.wait_for_line_after(after, outcome)
}

/// One request to 127.0.0.1:`port`, with bounded waits: the answer, or why there was none.
fn try_request(port: u16) -> Result<String, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    Ok(answer)
}

/// A `wait: true` handler that accepts one client on fd 3, answers `held LINE` once the
/// client has sent a line, and exits.
fn accept_one_and_answer(dir: &TestDir) -> std::path::PathBuf {
    dir.write(
        "wait.py",
        "#!/usr/bin/env python3\nimport socket\nlistener = socket.socket(fileno=3)\n\
         conn, _ = listener.accept()\nline = conn.makefile().readline().strip()\n\
         conn.sendall(('held ' + line + '\\n').encode())\n",
        0o755,
    )
}

fn refused(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
}

#[test]
fn two_hundred_reloads_under_load_lose_no_connection() {
    let dir = TestDir::new("reload-under-load");
    let hello = dir.script("hello.sh", "echo hello");
    let steady = Service::new("steady", &hello);
    let daemon = Daemon::start(&dir, std::slice::from_ref(&steady));
    let port = daemon.port("steady");
    let mut last = daemon.wait_for_line("ready services=");
    let stop = AtomicBool::new(false);
    let served = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match try_request(port) {
                        Ok(answer) if answer == "hello\n" => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            });
        }
        for round in 0..200 {
            // Other services come and go around the one under load.
            let mut services = vec![steady.clone()];
            if round % 2 == 0 {
                services.push(Service::new(&format!("extra{round}"), &hello));
            }
            services.push(Service::new(&format!("other{}", round % 3), &hello));
            last = reload(&daemon, &dir, &services_yaml(&services), &last, "reloaded ");
        }
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(daemon.port("steady"), port);
}

#[test]
fn a_bad_table_keeps_the_old_one_running() {
    let dir = TestDir::new("reload-bad");
    let hello = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(&dir, &[Service::new("hello", &hello)]);
    let port = daemon.port("hello");
    let ready = daemon.wait_for_line("ready services=");
    let bad = "services:\n  - name: hello\n    port: 0\n    sever: /bin/true\n";
    let failed = reload(
        &daemon,
        &dir,
        bad,
        &ready,
        "reload failed, the running table is unchanged errors=1",
    );
    assert!(
        daemon
            .lines()
            .iter()
            .any(|l| l.contains(r#"reload error="#) && l.contains(r#"unknown key \"sever\""#)),
        "the error itself is logged, quoted as logfmt wants"
    );
    assert_eq!(try_request(port), Ok("hello\n".to_string()));
    // A good table after the bad one applies normally.
    let other = dir.script("other.sh", "echo other");
    let good = services_yaml(&[Service::new("hello", &other)]);
    reload(&daemon, &dir, &good, &failed, "reloaded ");
    assert_eq!(try_request(port), Ok("other\n".to_string()));
}

#[test]
fn a_reload_with_three_bad_services_logs_all_three() {
    // Reading stopped at the first serde error: one was logged, the next two came one reload
    // at a time.
    let dir = TestDir::new("reload-three-bad");
    let hello = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(&dir, &[Service::new("hello", &hello)]);
    let port = daemon.port("hello");
    let ready = daemon.wait_for_line("ready services=");
    let h = hello.display();
    let bad = format!(
        "services:\n  - name: one\n    port: 0\n    server: {h}\n    sever: {h}\n\
         \x20 - name: two\n    port: 0\n    server: {h}\n    keepalive: on\n\
         \x20 - name: three\n    port: 0\n    server: {h}\n    args: three -v\n"
    );
    let failed = reload(&daemon, &dir, &bad, &ready, "reload failed");
    assert!(failed.text.contains("errors=3"), "{}", failed.text);
    let lines = daemon.lines();
    for (service, mistake) in [
        ("one", "sever"),
        ("two", "keepalive"),
        ("three", "write a list"),
    ] {
        assert!(
            lines[..failed.index]
                .iter()
                .any(|l| l.contains(service) && l.contains(mistake)),
            "{service}: {mistake} is not logged: {lines:#?}"
        );
    }
    assert_eq!(try_request(port), Ok("hello\n".to_string()));
}

#[test]
fn a_changed_handler_serves_only_new_connections_and_removed_services_keep_their_handlers() {
    let dir = TestDir::new("reload-changes");
    // v1 answers only after its client has sent a line, so it is still running at the reload.
    let v1 = dir.script("v1.sh", "read line\necho \"v1 $line\"");
    let v2 = dir.script("v2.sh", "echo v2");
    let gone = dir.script("gone.sh", "read line\necho \"gone $line\"");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("svc", &v1), Service::new("gone", &gone)],
    );
    let (svc_port, gone_port) = (daemon.port("svc"), daemon.port("gone"));
    let mut old_svc = daemon.connect("svc");
    let mut old_gone = daemon.connect("gone");
    daemon.accepted("svc", &old_svc);
    daemon.accepted("gone", &old_gone);
    let ready = daemon.wait_for_line("ready services=");
    let summary = reload(
        &daemon,
        &dir,
        &services_yaml(&[Service::new("svc", &v2)]),
        &ready,
        "reloaded ",
    );
    assert!(
        summary.text.contains("changed=svc removed=gone"),
        "{}",
        summary.text
    );
    assert_eq!(try_request(svc_port), Ok("v2\n".to_string()));
    assert!(refused(gone_port), "a removed service's port is closed");
    for (client, expected) in [(&mut old_svc, "v1 x"), (&mut old_gone, "gone x")] {
        writeln!(client, "x").unwrap();
        assert_eq!(
            read_line(client),
            expected,
            "running handlers are never killed"
        );
    }
}

#[test]
fn max_children_counts_carry_over_a_reload() {
    let dir = TestDir::new("reload-max-children");
    let hold = dir.script("hold.sh", "read line\necho \"done $line\"");
    let limited = Service::new("limited", &hold).set("max_children", "1");
    let daemon = Daemon::start(&dir, std::slice::from_ref(&limited));
    let mut first = daemon.connect("limited");
    daemon.accepted("limited", &first);
    let ready = daemon.wait_for_line("ready services=");
    // A changed setting of the same service: its running handler still counts.
    let changed = limited.clone().set("keepalive", "true");
    let reloaded = reload(
        &daemon,
        &dir,
        &services_yaml(&[changed]),
        &ready,
        "reloaded ",
    );
    let mut second = daemon.connect("limited");
    writeln!(second, "second").unwrap();
    writeln!(first, "first").unwrap();
    assert_eq!(read_line(&mut first), "done first");
    let exited = daemon.wait_for_line_after(&reloaded, "limited/tcp: exited");
    let accepted = daemon.wait_for_line_after(&reloaded, "limited/tcp: accepted");
    assert!(
        accepted.index > exited.index,
        "the second client is accepted only after the first handler exits"
    );
    assert_eq!(read_to_eof(&mut second), "done second\n");
}

#[test]
fn a_burst_of_sighups_is_coalesced_and_the_service_keeps_answering() {
    let dir = TestDir::new("reload-burst");
    let hello = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(&dir, &[Service::new("hello", &hello)]);
    let port = daemon.port("hello");
    for _ in 0..50 {
        kill(Pid::from_raw(daemon.pid()), Signal::SIGHUP).expect("SIGHUP");
    }
    daemon.wait_for_line("reloaded ");
    assert_eq!(try_request(port), Ok("hello\n".to_string()));
    // Stop, so the log is complete: the 50 signals came as fewer reloads, each one whole.
    let mut daemon = daemon;
    assert!(daemon.stop().success());
    let lines = daemon.lines();
    let started = lines
        .iter()
        .filter(|l| l.contains("rinetd: reloading"))
        .count();
    let finished = lines.iter().filter(|l| l.contains("reloaded ")).count();
    assert!((1..=50).contains(&finished), "{finished} reloads");
    assert_eq!(started, finished, "every reload that started finished");
}

#[test]
fn removing_a_wait_service_while_its_handler_holds_the_socket_is_safe() {
    let dir = TestDir::new("reload-wait-removed");
    let handler = accept_one_and_answer(&dir);
    let other = dir.script("other.sh", "echo other");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("held", &handler).set("wait", "true"),
            Service::new("other", &other),
        ],
    );
    let mut client = daemon.connect("held");
    let ready = daemon.wait_for_line("held/tcp: handed over");
    let summary = reload(
        &daemon,
        &dir,
        &services_yaml(&[Service::new("other", &other)]),
        &ready,
        "reloaded ",
    );
    assert!(summary.text.contains("removed=held"), "{}", summary.text);
    writeln!(client, "x").unwrap();
    assert_eq!(read_line(&mut client), "held x", "the handler runs on");
    daemon.wait_for_line("held/tcp: exited");
    assert_eq!(
        daemon.request("other", ""),
        "other\n",
        "the daemon is still there"
    );
}

#[test]
fn a_removed_service_leaves_the_status_dump_once_its_handlers_are_gone() {
    let dir = TestDir::new("reload-retired");
    let hold = dir.script("hold.sh", "read line\necho \"done $line\"");
    let stay = dir.script("stay.sh", "echo stay");
    let daemon = Daemon::start(
        &dir,
        &[Service::new("gone", &hold), Service::new("stay", &stay)],
    );
    let mut client = daemon.connect("gone");
    daemon.accepted("gone", &client);
    let ready = daemon.wait_for_line("ready services=");
    let reloaded = reload(
        &daemon,
        &dir,
        &services_yaml(&[Service::new("stay", &stay)]),
        &ready,
        "reloaded ",
    );
    kill(Pid::from_raw(daemon.pid()), Signal::SIGUSR1).unwrap();
    let retired = daemon.wait_for_line_after(&reloaded, "gone/tcp: status");
    assert!(
        retired.text.contains("state=retired") && retired.text.contains("running=1"),
        "{}",
        retired.text
    );
    writeln!(client, "x").unwrap();
    assert_eq!(read_line(&mut client), "done x");
    let exited = daemon.wait_for_line_after(&reloaded, "gone/tcp: exited");
    kill(Pid::from_raw(daemon.pid()), Signal::SIGUSR1).unwrap();
    let summary = daemon.wait_for_line_after(&exited, "status services=");
    assert!(
        summary.text.contains("status services=1 "),
        "{}",
        summary.text
    );
    daemon.wait_for_line_after(&summary, "stay/tcp: status");
    assert!(
        !daemon.lines()[summary.index..]
            .iter()
            .any(|l| l.contains("gone/tcp: status")),
        "a retired service without handlers is no longer listed"
    );
}

#[test]
fn a_socket_held_by_a_wait_handler_is_not_read_by_the_service_a_reload_gives_it_to() {
    let dir = TestDir::new("reload-held-socket");
    let handler = accept_one_and_answer(&dir);
    let first_port = crate::harness::free_port_on_both_families();
    let mut second_port = crate::harness::free_port_on_both_families();
    while second_port == first_port {
        second_port = crate::harness::free_port_on_both_families();
    }
    let waiting = |port: u16| {
        Service::new("waiting", &handler)
            .set("wait", "true")
            .set("port", &port.to_string())
    };
    let day = Service::builtin("day", "daytime");
    let daemon = Daemon::start(&dir, &[waiting(first_port), day.clone()]);
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, first_port));
    let mut held = TcpStream::connect(address).unwrap();
    let handed = daemon.wait_for_line("waiting/tcp: handed over");
    // The service moves to another port; its old socket, still held, goes to an echo builtin.
    let echo = Service::builtin("echo", "echo").set("port", &first_port.to_string());
    let moved = [waiting(second_port), echo, day];
    reload(&daemon, &dir, &services_yaml(&moved), &handed, "reloaded ");
    let mut queued = TcpStream::connect(address).unwrap();
    writeln!(queued, "queued").unwrap();
    queued.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        daemon.request("day", "").ends_with("\r\n"),
        "the daemon is not stuck"
    );
    writeln!(held, "x").unwrap();
    assert_eq!(read_line(&mut held), "held x");
    // Once the handler is gone the socket is the echo service's, and the queued client is served.
    assert_eq!(read_to_eof(&mut queued), "queued\n");
}
