//! `respawn: true`: programs started at load and kept running — restarted at once after a
//! stable run, after a doubling delay when they keep failing — with their sockets held across
//! restarts so that clients wait in the backlog; `notify: true` readiness; reload and stop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{Daemon, LogLine, Service, TestDir, connect, wait_until};

fn signal(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal).expect("signal");
}

/// A supervised service without a socket running `body`.
fn program(dir: &TestDir, name: &str, body: &str) -> Service {
    let script = dir.script(&format!("{name}.sh"), body);
    Service::new(name, &script)
        .unset("address")
        .unset("port")
        .set("protocol", "none")
        .set("respawn", "true")
}

/// A supervised TCP service on 127.0.0.1 whose program answers each connection on fd 3 with
/// `hello from PID`, one at a time.
fn socket_program(dir: &TestDir, name: &str) -> Service {
    let script = dir.write(
        &format!("{name}.py"),
        "#!/usr/bin/python3\nimport os, socket\nlistener = socket.socket(fileno=3)\n\
         while True:\n    connection, _ = listener.accept()\n\
         \x20   connection.sendall(b'hello from %d\\n' % os.getpid())\n    connection.close()\n",
        0o755,
    );
    Service::new(name, &script).set("respawn", "true")
}

fn started_after(daemon: &Daemon, after: &LogLine, name: &str) -> LogLine {
    daemon.wait_for_line_after(after, &format!("{name}/none: started pid="))
}

#[test]
fn a_program_killed_with_sigkill_comes_back() {
    let dir = TestDir::new("respawn-kill");
    let daemon = Daemon::start(&dir, &[program(&dir, "keeper", "echo up\nexec sleep 1000")]);
    let first = daemon.wait_for_line("keeper/none: started pid=");
    daemon.wait_for_line(&format!("keeper/none: stdout pid={} line=up", first.pid()));
    signal(first.pid(), Signal::SIGKILL);
    let exited = daemon.wait_for_line_after(
        &first,
        &format!(
            "keeper/none: exited pid={} status=signal:SIGKILL",
            first.pid()
        ),
    );
    assert!(exited.text.ends_with(" restart_in=1s"), "{}", exited.text);
    let second = started_after(&daemon, &exited, "keeper");
    assert_ne!(second.pid(), first.pid());
    daemon.wait_for_line(&format!("keeper/none: stdout pid={} line=up", second.pid()));
}

#[test]
fn a_crash_loop_waits_1_2_4_then_the_cap_between_starts() {
    let dir = TestDir::new("respawn-crash-loop");
    let service = program(&dir, "crash", "exit 3").set("respawn_max_delay", "4s");
    let daemon = Daemon::start(&dir, &[service]);
    let mut started = daemon.wait_for_line("crash/none: started pid=");
    for expected in [1, 2, 4, 4] {
        let exited = daemon.wait_for_line_after(&started, "crash/none: exited pid=");
        assert!(
            exited.text.ends_with(&format!(" restart_in={expected}s")),
            "{}",
            exited.text
        );
        started = started_after(&daemon, &exited, "crash");
        let waited = started.at.duration_since(exited.at);
        assert!(
            waited >= Duration::from_millis(expected * 1000 - 100),
            "restarted after {waited:?}, not {expected} s"
        );
    }
}

#[test]
fn a_program_that_ran_10_seconds_is_restarted_at_once_and_the_delay_starts_over() {
    // Runs 1 and 2 fail at once (1 s, then 2 s), run 3 runs 10 s (at once), run 4 fails at once
    // again: 1 s, not 4 s.
    let dir = TestDir::new("respawn-stable");
    let counter = dir.join("runs");
    let body = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {c}\n\
         if [ $n -eq 3 ]; then sleep 10.2; fi\nexit 1",
        c = counter.display()
    );
    let daemon = Daemon::start(&dir, &[program(&dir, "flaky", &body)]);
    let mut after = daemon.wait_for_line("flaky/none: started pid=");
    let mut delays = Vec::new();
    for _ in 0..4 {
        let within = Duration::from_secs(20);
        let exited = daemon.wait_for_line_after_within(&after, "flaky/none: exited pid=", within);
        delays.push(exited.field("restart_in"));
        after = started_after(&daemon, &exited, "flaky");
    }
    assert_eq!(delays, ["1s", "2s", "0s", "1s"]);
}

#[test]
fn two_hundred_clients_while_the_program_is_killed_20_times_are_all_served() {
    let dir = TestDir::new("respawn-backlog");
    let service = socket_program(&dir, "web").set("respawn_max_delay", "100ms");
    let daemon = Daemon::start(&dir, &[service]);
    let port = daemon.port("web");
    let mut current = daemon.wait_for_line("web/tcp: started pid=");
    let (mut served, mut refused) = (0, 0);
    let mut longest = Duration::ZERO;
    for _ in 0..20 {
        // The program is killed; once it is gone, the clients connect while it is down and
        // wait in the backlog for the next one.
        signal(current.pid(), Signal::SIGKILL);
        daemon.wait_for_line_after(&current, &format!("web/tcp: exited pid={}", current.pid()));
        let clients: Vec<_> = (0..10)
            .map(|_| {
                std::thread::spawn(move || {
                    let asked = Instant::now();
                    let answer = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        let mut text = String::new();
                        let _ = c.read_to_string(&mut text);
                        text
                    });
                    (answer, asked.elapsed())
                })
            })
            .collect();
        for client in clients {
            let (answer, waited) = client.join().unwrap();
            longest = longest.max(waited);
            match answer {
                Ok(text) if text.starts_with("hello from ") => served += 1,
                _ => refused += 1,
            }
        }
        current = daemon.wait_for_line_after(&current, "web/tcp: started pid=");
    }
    eprintln!("200 clients, 20 restarts: served={served} refused={refused} max_wait={longest:?}");
    assert_eq!((served, refused), (200, 0));
}

#[test]
fn notify_programs_hold_back_rinetds_readiness_until_they_are_ready() {
    let dir = TestDir::new("respawn-notify");
    let gate = dir.join("go");
    // The real systemd-notify, from a script: it may only say ready once the gate exists.
    let body = format!(
        "while [ ! -e {gate} ]; do sleep 0.05; done\nsystemd-notify --ready --status=serving\nexec sleep 1000",
        gate = gate.display()
    );
    let service = program(&dir, "slow", &body).set("notify", "true");
    let notify_path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut command = Daemon::command(&dir.services_config(&[service]));
    command.env("NOTIFY_SOCKET", &notify_path);
    let daemon = Daemon::start_command(command);
    let started = daemon.wait_for_line("slow/none: started pid=");
    assert_eq!(
        daemon.count_lines("ready services="),
        0,
        "rinetd said ready before its notify program"
    );
    std::fs::write(&gate, "").unwrap();
    let ready = daemon.wait_for_line("slow/none: ready pid=");
    assert_eq!(ready.pid(), started.pid());
    let own = daemon.wait_for_line("ready services=");
    assert!(own.index > ready.index);
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1"));
    // STATUS= shows in the status dump.
    signal(daemon.pid(), Signal::SIGUSR1);
    let status = daemon.wait_for_line("slow/none: status state=running");
    assert_eq!(status.field("status"), "serving");
}

#[test]
fn a_notify_program_that_fails_to_start_does_not_hold_readiness_forever() {
    let dir = TestDir::new("respawn-notify-fail");
    let service = program(&dir, "broken", "exit 1").set("notify", "true");
    let daemon = Daemon::start(&dir, &[service]);
    let exited = daemon.wait_for_line("broken/none: exited pid=");
    assert!(daemon.wait_for_line("ready services=").index > exited.index);
}

#[test]
fn notifications_from_outside_the_programs_process_tree_are_ignored() {
    let dir = TestDir::new("respawn-notify-foreign");
    // The program prints its NOTIFY_SOCKET and waits; the test (not a descendant) says READY=1.
    let body = "echo \"socket=$NOTIFY_SOCKET\"\nexec sleep 1000";
    let service = program(&dir, "waiting", body).set("notify", "true");
    let daemon = Daemon::start_command(Daemon::command(&dir.services_config(&[service])));
    let line = daemon.wait_for_line("waiting/none: stdout pid=");
    let socket_name = line.field("line");
    let name = socket_name
        .strip_prefix("socket=@")
        .expect("an abstract NOTIFY_SOCKET");
    let foreign = UnixDatagram::unbound().unwrap();
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    foreign.send_to_addr(b"READY=1", &address).unwrap();
    // A status dump is a round trip through the loop: the datagram was read before it.
    signal(daemon.pid(), Signal::SIGUSR1);
    daemon.wait_for_line("waiting/none: status state=starting");
    assert_eq!(daemon.count_lines("ready services="), 0);
}

#[test]
fn reload_keeps_an_unchanged_program_restarts_a_changed_one_and_stops_a_removed_one() {
    let dir = TestDir::new("respawn-reload");
    let services = |b_args: &str| {
        vec![
            program(&dir, "same", "exec sleep 1000"),
            program(&dir, "changed", "exec sleep 1000").set("args", b_args),
            program(&dir, "removed", "exec sleep 1000"),
        ]
    };
    let daemon = Daemon::start(&dir, &services("[changed.sh, one]"));
    let same = daemon.wait_for_line("same/none: started pid=");
    let changed = daemon.wait_for_line("changed/none: started pid=");
    let removed = daemon.wait_for_line("removed/none: started pid=");
    let mut kept = services("[changed.sh, two]");
    kept.pop();
    dir.services_config(&kept);
    signal(daemon.pid(), Signal::SIGHUP);
    let reloaded = daemon.wait_for_line("reloaded ");
    assert!(
        reloaded.text.contains("changed=changed removed=removed"),
        "{}",
        reloaded.text
    );
    daemon.wait_for_line(&format!(
        "changed/none: exited pid={} status=signal:SIGTERM",
        changed.pid()
    ));
    let restarted = daemon.wait_for_line_after(&reloaded, "changed/none: started pid=");
    assert_ne!(restarted.pid(), changed.pid());
    let gone = daemon.wait_for_line(&format!(
        "removed/none: exited pid={} status=signal:SIGTERM",
        removed.pid()
    ));
    assert!(!gone.text.contains("restart_in"), "{}", gone.text);
    // Unchanged: the same pid, never restarted.
    assert_eq!(daemon.count_lines("same/none: started pid="), 1);
    assert!(crate::harness::process_status(same.pid()).is_some_and(|(_, state)| state != 'Z'));
    assert_eq!(daemon.count_lines("removed/none: started pid="), 1);
}

#[test]
fn stop_kills_a_program_that_ignores_sigterm_10s_later() {
    let dir = TestDir::new("respawn-stubborn");
    let daemon_dir = &dir;
    let mut daemon = Daemon::start(
        daemon_dir,
        &[program(
            &dir,
            "stubborn",
            "trap '' TERM\necho up\nexec sleep 1000",
        )],
    );
    let started = daemon.wait_for_line("stubborn/none: started pid=");
    // Its trap is set once it says so.
    daemon.wait_for_line(&format!(
        "stubborn/none: stdout pid={} line=up",
        started.pid()
    ));
    let asked = Instant::now();
    signal(daemon.pid(), Signal::SIGTERM);
    // Longer than the harness's usual deadline: the grace alone is 10 s.
    daemon.wait_for_line_within("stopped", Duration::from_secs(20));
    assert!(
        asked.elapsed() >= Duration::from_secs(9),
        "stopped too soon"
    );
    let status = daemon.stop();
    assert!(status.success(), "{status:?}");
    assert!(crate::harness::is_not_running(started.pid()));
    let killed = daemon
        .lines()
        .iter()
        .any(|line| line.contains(&format!("stop killed pid={}", started.pid())));
    assert!(killed, "{:#?}", daemon.lines());
}

#[test]
fn systemd_socket_proxyd_under_respawn_serves_a_client_across_restarts() {
    let proxyd = [
        "/lib/systemd/systemd-socket-proxyd",
        "/usr/lib/systemd/systemd-socket-proxyd",
    ]
    .into_iter()
    .find(|path| Path::new(path).exists());
    let Some(proxyd) = proxyd else {
        eprintln!("skipped: systemd-socket-proxyd is not installed");
        return;
    };
    let dir = TestDir::new("respawn-proxyd");
    // proxyd takes its socket through LISTEN_FDS and forwards to rinetd's own echo builtin.
    let echo = crate::harness::free_port_on_both_families();
    let services = [
        Service::builtin("echo", "echo").set("port", &echo.to_string()),
        Service::new("proxy", Path::new(proxyd))
            .set("respawn", "true")
            .set(
                "args",
                &format!("[systemd-socket-proxyd, \"127.0.0.1:{echo}\"]"),
            ),
    ];
    let daemon = Daemon::start(&dir, &services);
    let ask = |line: &str| {
        let mut client = connect((Ipv4Addr::LOCALHOST, daemon.port("proxy")).into());
        writeln!(client, "{line}").unwrap();
        crate::harness::read_line(&mut client)
    };
    let first = daemon.wait_for_line("proxy/tcp: started pid=");
    assert_eq!(ask("before"), "before");
    signal(first.pid(), Signal::SIGKILL);
    daemon.wait_for_line_after(&first, "proxy/tcp: exited pid=");
    // Connected while proxyd is down: answered by the next one.
    assert_eq!(ask("across"), "across");
    let second = daemon.wait_for_line_after(&first, "proxy/tcp: started pid=");
    assert_ne!(first.pid(), second.pid());
    wait_until("proxyd runs again", || {
        crate::harness::process_status(second.pid()).is_some()
    });
}

#[test]
fn the_status_dump_and_metrics_show_a_backing_off_program_with_its_restarts_and_last_exit() {
    let dir = TestDir::new("respawn-status");
    let crash = program(&dir, "crash", "exit 3").set("respawn_max_delay", "30s");
    let keeper = program(&dir, "keeper", "exec sleep 1000");
    let metrics = Service::builtin("metrics", "metrics");
    let daemon = Daemon::start(&dir, &[crash, keeper, metrics]);
    // Two failures: the program now waits 2 s before its third start.
    let first = daemon.wait_for_line("crash/none: exited pid=");
    let second = daemon.wait_for_line_after(&first, "crash/none: exited pid=");
    assert_eq!(second.field("restart_in"), "2s");
    let running = daemon.wait_for_line("keeper/none: started pid=");
    signal(daemon.pid(), Signal::SIGUSR1);
    let status = daemon.wait_for_line_after(&second, "crash/none: status state=");
    assert_eq!(status.field("state"), "backing_off", "{}", status.text);
    assert_eq!(status.field("restarts"), "1");
    assert_eq!(status.field("last_exit"), "3");
    let left: f64 = status
        .field("for")
        .trim_end_matches('s')
        .parse()
        .expect("for= is a duration in seconds");
    assert!(left > 0.0 && left <= 2.0, "{}", status.text);
    let keeper = daemon.wait_for_line_after(&second, "keeper/none: status state=");
    assert_eq!(keeper.field("state"), "running");
    assert_eq!(keeper.pid(), running.pid());

    let scrape =
        crate::harness::exchange(daemon.connect("metrics"), "GET /metrics HTTP/1.0\r\n\r\n");
    let restarts = scrape
        .lines()
        .find(|line| {
            line.starts_with("rinetd_service_restarts_total{") && line.contains("\"crash\"")
        })
        .unwrap_or_else(|| panic!("no restarts for crash in:\n{scrape}"));
    assert!(restarts.ends_with(" 1"), "{restarts}");
    let up = scrape
        .lines()
        .find(|line| line.starts_with("rinetd_service_up{") && line.contains("\"keeper\""))
        .unwrap();
    assert!(up.ends_with(" 1"), "{up}");
}

#[test]
fn the_supervised_example_in_etc_serves_across_a_restart_of_its_daemon() {
    let dir = TestDir::new("respawn-etc-example");
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc");
    let port = crate::harness::free_port_on_both_families();
    let table = std::fs::read_to_string(etc.join("supervised.conf"))
        .unwrap()
        .replace("@ETC@", &etc.display().to_string())
        .replace("port: 8090\n", &format!("port: {port}\n"));
    let daemon = Daemon::spawn(Daemon::command(&dir.config(&table)));
    // notify: true: rinetd was ready only after the daemon said READY=1.
    let ready = daemon.wait_for_line("hello-daemon/tcp: ready pid=");
    assert!(daemon.wait_for_line("ready services=2").index > ready.index);
    daemon.wait_for_line("ticker/none: stdout pid=");
    let address = (Ipv4Addr::LOCALHOST, port).into();
    let first = crate::harness::read_to_eof(&mut connect(address));
    assert_eq!(
        first,
        format!("hello from the daemon, pid {}\n", ready.pid())
    );
    signal(ready.pid(), Signal::SIGKILL);
    // Connected once the daemon is gone and before the next one starts (1 s later): the client
    // waits in the backlog of the socket rinetd kept, and the next daemon serves it.
    let exited = daemon.wait_for_line(&format!("hello-daemon/tcp: exited pid={}", ready.pid()));
    assert_eq!(exited.field("restart_in"), "1s");
    let answer = crate::harness::read_to_eof(&mut connect(address));
    let next = daemon.wait_for_line_after(&ready, "hello-daemon/tcp: started pid=");
    assert_eq!(
        answer,
        format!("hello from the daemon, pid {}\n", next.pid()),
        "{}",
        daemon.lines().join("\n")
    );
}
