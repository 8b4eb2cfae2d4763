//! The daemon's life around the services: sd_notify messages, socket activation of rinetd
//! itself (LISTEN_FDS), bind retry while a port is taken, and the SIGUSR1 status dump.

use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{
    Daemon, Service, TestDir, connect, exchange, free_port_on_both_families, is_root,
};

fn signal(daemon: &Daemon, signal: Signal) {
    kill(Pid::from_raw(daemon.pid()), signal).expect("signal the daemon");
}

/// The next sd_notify datagram, waiting at most 10 s.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("an sd_notify message within the deadline");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sd_notify_ready_reloading_and_stopping() {
    let dir = TestDir::new("sd-notify");
    let server = dir.script("hello.sh", "echo hello");
    let notify_path = dir.join("notify.sock");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut command = Daemon::command(&dir.services_config(&[Service::new("hello", &server)]));
    command.env("NOTIFY_SOCKET", &notify_path);
    let mut daemon = Daemon::spawn(command);
    assert_eq!(
        next_notification(&listener),
        "READY=1\nSTATUS=serving 1 service on 1 socket"
    );
    signal(&daemon, Signal::SIGHUP);
    let reloading = next_notification(&listener);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(
        next_notification(&listener),
        "READY=1\nSTATUS=serving 1 service on 1 socket"
    );
    daemon.stop();
    assert_eq!(next_notification(&listener), "STOPPING=1");
}

#[test]
fn a_socket_activated_rinetd_serves_on_the_socket_it_was_given() {
    let dir = TestDir::new("listen-fds");
    let server = dir.script("hello.sh", "echo \"hello $TCPLOCALPORT\"");
    // Held open here for the whole test: rinetd could not bind this port itself.
    let given = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = given.local_addr().unwrap().port();
    let config =
        dir.services_config(&[Service::new("activated", &server).set("port", &port.to_string())]);
    let rinetd_args = Daemon::command(&config);
    let mut command = Command::new("/bin/sh");
    // `exec` keeps the shell's pid, so LISTEN_PID names rinetd.
    command
        .args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
        .arg(rinetd_args.get_program())
        .args(rinetd_args.get_args());
    let fd = given.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if (fd != 3 && libc::dup2(fd, 3) < 0) || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let daemon = Daemon::spawn(command);
    daemon.wait_for_line(&format!(
        "activated/tcp: listening address=127.0.0.1:{port} inherited"
    ));
    assert_eq!(daemon.request("activated", ""), format!("hello {port}\n"));
}

#[test]
fn a_port_in_use_is_retried_while_the_other_services_serve() {
    let dir = TestDir::new("bind-retry");
    let server = dir.script("hello.sh", "echo \"hello $RINETD_SERVICE\"");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("busy", &server).set("port", &port.to_string()),
            Service::new("free", &server),
        ],
    );
    daemon.wait_for_line(&format!("busy/tcp: bind failed address=127.0.0.1:{port}"));
    assert_eq!(daemon.request("free", ""), "hello free\n");
    drop(taken);
    // The retry comes 10 s after the failure.
    daemon.wait_for_line_within(
        &format!("busy/tcp: listening address=127.0.0.1:{port}"),
        Duration::from_secs(25),
    );
    assert_eq!(daemon.request("busy", ""), "hello busy\n");
}

#[test]
fn sigusr1_dumps_each_service_with_its_state_and_counters() {
    let dir = TestDir::new("status");
    let server = dir.script("hello.sh", "echo hello");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::new("open", &server),
            Service::new("closed", &server).set("only_from", "[10.0.0.0/8]"),
        ],
    );
    assert_eq!(daemon.request("open", ""), "hello\n");
    assert_eq!(daemon.request("closed", ""), "");
    daemon.wait_for_line("closed/tcp: refused");
    signal(&daemon, Signal::SIGUSR1);
    let open = daemon.wait_for_line("open/tcp: status");
    assert!(open.text.contains("state=listening"), "{}", open.text);
    assert!(open.text.contains("accepted=1"), "{}", open.text);
    let closed = daemon.wait_for_line("closed/tcp: status");
    assert!(
        closed.text.contains("refused_only_from=1"),
        "{}",
        closed.text
    );
}

/// A fake syslogd: a datagram socket at `path`.
fn syslogd(path: &std::path::Path) -> UnixDatagram {
    let _ = std::fs::remove_file(path);
    let socket = UnixDatagram::bind(path).expect("bind the fake /dev/log");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
}

/// Syslog messages until one contains `pattern`.
fn syslog_until(socket: &UnixDatagram, pattern: &str) -> String {
    loop {
        let message = next_notification(socket);
        if message.contains(pattern) {
            return message;
        }
    }
}

#[test]
fn syslog_lines_still_arrive_after_syslogd_restarts() {
    if !crate::harness::is_root() {
        eprintln!("skipped: needs root for a private mount namespace with a fake /dev/log");
        return;
    }
    let dir = TestDir::new("syslog");
    let server = dir.script("hello.sh", "echo hello");
    let config = dir.services_config(&[Service::new("hello", &server)]);
    let log_path = dir.join("log.sock");
    let first = syslogd(&log_path);
    // /dev in the namespace: a fresh tmpfs with the real null device and /dev/log pointing
    // at the test's socket, so that the socket can be replaced like a restarted syslogd's.
    let setup = r#"set -e
dir=$1; shift
mount --make-rprivate /
touch "$dir/null"; mount --bind /dev/null "$dir/null"
mount -t tmpfs none /dev
touch /dev/null; mount --bind "$dir/null" /dev/null
ln -s "$dir/log.sock" /dev/log
exec "$@""#;
    let daemon = Command::new("unshare")
        .args(["--mount", "sh", "-c", setup, "sh"])
        .arg(&dir.path)
        .arg(env!("CARGO_BIN_EXE_rinetd"))
        .arg("-c")
        .arg(&config)
        .args(["-f", "--log", "syslog"])
        .spawn()
        .expect("start rinetd in a mount namespace");
    let mut daemon = KillOnDrop(daemon);
    let listening = syslog_until(&first, "hello/tcp: listening address=127.0.0.1:");
    let port: u16 = listening
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("a port in the listening line");
    syslog_until(&first, "ready services=1");
    let request = || {
        let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        answer
    };
    // syslogd goes away; what rinetd logs meanwhile is lost, and rinetd keeps serving.
    drop(first);
    std::fs::remove_file(&log_path).unwrap();
    assert_eq!(request(), "hello\n");
    // syslogd comes back at the same path: the next lines reach it.
    let second = syslogd(&log_path);
    assert_eq!(request(), "hello\n");
    let accepted = syslog_until(&second, "hello/tcp: accepted");
    assert!(accepted.contains("rinetd["), "ident and pid: {accepted}");
    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).unwrap();
    assert!(daemon.0.wait().unwrap().success());
}

/// A daemon started outside the harness, killed if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `test` on a thread of its own in a network namespace of its own, whose only interface
/// is its loopback: systemd-socket-activate's `[::]:PORT` socket then listens on loopback
/// alone, as every socket of the suite must. A namespace is a thread's, and so are the
/// processes it starts. False where one cannot be made (it needs root).
fn in_private_network(test: impl FnOnce() + Send + 'static) -> bool {
    if !is_root() {
        return false;
    }
    let outcome = std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) moves this thread alone into a new network namespace;
        // it touches no memory.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return false;
        }
        let namespace = |task: &str| std::fs::read_link(format!("/proc/{task}/ns/net")).ok();
        assert_ne!(
            namespace("thread-self"),
            namespace("self"),
            "the thread is still in the suite's network namespace"
        );
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        if !up.is_ok_and(|status| status.success()) {
            return false;
        }
        test();
        true
    })
    .join();
    match outcome {
        Ok(made) => made,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `rinetd -f` for `config`, started by the real systemd-socket-activate listening on `port`
/// (as `ListenStream=PORT` does: one `[::]:PORT` socket that takes IPv4 too), or None where the
/// machine lacks the tool. The tool starts rinetd at the first connection: `first_client`
/// makes it, once the socket listens, and its stream is returned too.
fn socket_activated(
    config: &std::path::Path,
    port: u16,
    first_client: std::net::SocketAddr,
) -> Option<(Daemon, std::net::TcpStream)> {
    let tool = [
        "/usr/bin/systemd-socket-activate",
        "/lib/systemd/systemd-activate",
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())?;
    let rinetd = Daemon::command(config);
    let mut command = Command::new(tool);
    command
        .arg("--listen")
        .arg(port.to_string())
        .arg(rinetd.get_program())
        .args(rinetd.get_args());
    let daemon = Daemon::start_command(command);
    daemon.wait_for_line(&format!("Listening on [::]:{port}"));
    let client = connect(first_client);
    daemon.wait_for_line("ready services=");
    Some((daemon, client))
}

#[test]
fn a_socket_activated_dual_stack_socket_serves_a_service_on_the_ipv4_wildcard() {
    let made = in_private_network(|| {
        // ListenStream=PORT hands over [::]:PORT with IPV6_V6ONLY off. A service on 0.0.0.0:PORT
        // used to bind its own socket against it, fail with "address in use", close the inherited
        // one as unclaimed and serve nothing.
        let dir = TestDir::new("activate-dual-v4");
        let server = dir.script("hello.sh", "echo \"hello $REMOTE_ADDR\"");
        let port = free_port_on_both_families();
        let config = dir.services_config(&[Service::new("web", &server)
            .set("address", "0.0.0.0")
            .set("port", &port.to_string())]);
        let first_client = (Ipv4Addr::LOCALHOST, port).into();
        let Some((daemon, first)) = socket_activated(&config, port, first_client) else {
            eprintln!("skipped: systemd-socket-activate is not installed");
            return;
        };
        daemon.wait_for_line(&format!(
            "web/tcp: listening address=[::]:{port} inherited=true"
        ));
        assert_eq!(exchange(first, ""), "hello 127.0.0.1\n");
        let answer = exchange(connect((Ipv4Addr::LOCALHOST, port).into()), "");
        // The IPv4 client arrives as ::ffff:127.0.0.1 and is its IPv4 address.
        assert_eq!(answer, "hello 127.0.0.1\n");
        assert_eq!(
            daemon.count_lines("bind failed"),
            0,
            "{:#?}",
            daemon.lines()
        );
        assert_eq!(daemon.count_lines("claimed by no service"), 0);
    });
    if !made {
        eprintln!(
            "skipped: needs root and ip(8) for a network namespace of its own (the socket listens on [::])"
        );
    }
}

#[test]
fn a_socket_activated_dual_stack_socket_serves_both_wildcards_of_one_service() {
    let made = in_private_network(|| {
        let dir = TestDir::new("activate-dual-both");
        let server = dir.script("hello.sh", "echo \"hello $REMOTE_ADDR\"");
        let port = free_port_on_both_families();
        let config = dir.services_config(&[Service::new("web", &server)
            .set("address", "[0.0.0.0, \"::\"]")
            .set("port", &port.to_string())]);
        let first_client = (Ipv6Addr::LOCALHOST, port).into();
        let Some((daemon, first)) = socket_activated(&config, port, first_client) else {
            eprintln!("skipped: systemd-socket-activate is not installed");
            return;
        };
        assert_eq!(exchange(first, ""), "hello ::1\n");
        let four = exchange(connect((Ipv4Addr::LOCALHOST, port).into()), "");
        let six = exchange(connect((Ipv6Addr::LOCALHOST, port).into()), "");
        assert_eq!(
            (four.as_str(), six.as_str()),
            ("hello 127.0.0.1\n", "hello ::1\n")
        );
        assert_eq!(
            daemon.count_lines("bind failed"),
            0,
            "{:#?}",
            daemon.lines()
        );
        assert_eq!(daemon.count_lines("web/tcp: listening address="), 2);
    });
    if !made {
        eprintln!(
            "skipped: needs root and ip(8) for a network namespace of its own (the socket listens on [::])"
        );
    }
}

#[test]
fn sd_notify_status_names_the_services_not_bound_yet_and_the_watchdog_is_fed() {
    let dir = TestDir::new("sd-notify-status");
    let server = dir.script("hello.sh", "echo hello");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let notify_path = dir.join("notify.sock");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut command = Daemon::command(&dir.services_config(&[
        Service::new("hello", &server),
        Service::new("busy", &server).set("port", &port.to_string()),
    ]));
    // A watchdog of 400 ms: rinetd says it is alive every 200 ms.
    command
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    let _daemon = Daemon::spawn(command);
    assert_eq!(
        next_notification(&listener),
        "READY=1\nSTATUS=serving 2 services on 1 socket; not bound yet: busy"
    );
    for _ in 0..3 {
        assert_eq!(next_notification(&listener), "WATCHDOG=1");
    }
}
