//! Hostile handlers: programs that exit at once, crash, daemonize holding the connection,
//! close their stdout and run on, or write 100 MB to stderr. Whatever they do, rinetd reaps
//! every one (no zombie), comes back to the descriptors and memory it had, and its other
//! services keep answering within the 100 ms.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Service, TestDir};
use crate::support::{
    CpuMeter, Figures, Footprint, LatencyProbe, assert_back_to, children_of, closed_within,
    percent, run_clients, try_read_line, wait_for_count, wait_until_within,
};

const RSS_SLACK_KIB: u64 = 1024;
/// How long a whole fault may take: 100 MB through a debug build on a loaded machine is slow.
const FAULT_DEADLINE: Duration = Duration::from_secs(120);

/// A daemon serving the hostile handler as `hostile`, an echo builtin `probe` whose latency is
/// watched, and a well-behaved handler `hello` that must still answer afterwards.
fn start_beside_hostile(dir: &TestDir, hostile: Service) -> Daemon {
    let hello = dir.script("hello.sh", "echo hello");
    Daemon::start(
        dir,
        &[
            hostile,
            Service::builtin("probe", "echo"),
            Service::new("hello", &hello),
        ],
    )
}

/// What one hostile fault did, measured around `clients` threads running `client` `each`
/// times against `hostile`. `client` returns whether the connection went as that fault
/// expects (served, or closed as it should be).
struct Run {
    connections: usize,
    as_expected: usize,
    unexpected: Vec<String>,
    exits: usize,
}

fn run_fault(
    fault: &str,
    daemon: &Daemon,
    clients: usize,
    each: usize,
    client: impl Fn(&Daemon) -> Result<(), String> + Sync,
) -> Run {
    // One connection first, so that what the first handler allocates is in the baseline.
    let _ = client(daemon);
    wait_until_within("the warm-up handler is reaped", FAULT_DEADLINE, || {
        children_of(daemon.pid()).is_empty()
    });
    wait_for_count(daemon, "hostile/tcp: exited ", 1, FAULT_DEADLINE);
    let warm_up_exits = daemon.count_lines("hostile/tcp: exited ");
    let baseline = Footprint::of(daemon);
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);
    let cpu = CpuMeter::start(daemon.pid());
    let started = Instant::now();

    let results = run_clients(clients, each, |_, _| client(daemon));

    let connections = clients * each;
    wait_until_within(
        "every hostile handler is logged as exited",
        FAULT_DEADLINE,
        || daemon.count_lines("hostile/tcp: exited ") >= warm_up_exits + connections,
    );
    let elapsed = started.elapsed();
    let cpu_seconds = cpu.seconds();
    let latencies = probe.stop();
    assert_eq!(
        daemon.request("hello", ""),
        "hello\n",
        "hello stopped answering"
    );
    let after = assert_back_to(daemon, baseline, RSS_SLACK_KIB);

    let as_expected = results.iter().filter(|r| r.is_ok()).count();
    let unexpected: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    let exits = daemon.count_lines("hostile/tcp: exited ") - warm_up_exits;
    Figures::new(fault)
        .add("connections", connections)
        .add("as_expected", as_expected)
        .add("unexpected", unexpected.len())
        .add("handler_exits", exits)
        .add("refused", daemon.count_lines("refused"))
        .add("seconds", format!("{:.1}", elapsed.as_secs_f64()))
        .add(
            "rinetd_cpu",
            percent(cpu_seconds / elapsed.as_secs_f64().max(0.001)),
        )
        .add("probe", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    latencies.assert_answered_in_time(fault);
    Run {
        connections,
        as_expected,
        unexpected,
        exits,
    }
}

/// How many of the hostile handlers' exits were logged with `status`.
fn count_exits_with(daemon: &Daemon, status: &str) -> usize {
    daemon
        .lines()
        .iter()
        .filter(|line| line.contains("hostile/tcp: exited ") && line.contains(status))
        .count()
}

fn connect_hostile(daemon: &Daemon) -> Result<TcpStream, String> {
    crate::support::try_connect(daemon.addresses("hostile")[0]).map_err(|e| format!("connect: {e}"))
}

/// Writes a little, then expects the connection to be closed within `DEADLINE`.
fn expect_closed(daemon: &Daemon) -> Result<(), String> {
    let mut stream = connect_hostile(daemon)?;
    // The handler may be gone already: a reset is as good as an answer here.
    let _ = stream.write_all(&[b'x'; 4096]);
    if closed_within(&mut stream, crate::harness::DEADLINE) {
        Ok(())
    } else {
        Err("the connection stayed open".into())
    }
}

#[test]
#[ignore = "long: make test-long"]
fn handlers_that_exit_at_once_are_all_reaped_and_leak_nothing() {
    let dir = TestDir::new("fault-exit-at-once");
    let daemon = start_beside_hostile(
        &dir,
        Service::new("hostile", std::path::Path::new("/bin/true")),
    );
    let run = run_fault("handler-exits-at-once", &daemon, 4, 500, expect_closed);
    assert_eq!(run.unexpected, Vec::<String>::new());
    assert_eq!(run.exits, run.connections);
    assert_eq!(
        daemon.count_lines("hostile/tcp: exited "),
        count_exits_with(&daemon, "status=0 "),
        "every exit is logged with its status"
    );
}

#[test]
#[ignore = "long: make test-long"]
fn handlers_that_crash_are_all_reaped_with_their_signal_and_leak_nothing() {
    let dir = TestDir::new("fault-crash");
    let script = dir.script("crash.sh", "kill -SEGV $$");
    let hostile = Service::new("hostile", &script).set("rlimits", "{core: 0}");
    let daemon = start_beside_hostile(&dir, hostile);
    let run = run_fault("handler-crashes", &daemon, 4, 250, expect_closed);
    assert_eq!(run.unexpected, Vec::<String>::new());
    assert_eq!(run.exits, run.connections);
    assert_eq!(
        daemon.count_lines("hostile/tcp: exited "),
        count_exits_with(&daemon, "status=signal:SIGSEGV "),
        "every crash is logged with its signal"
    );
}

#[test]
#[ignore = "long: make test-long"]
fn handlers_that_daemonize_holding_the_connection_are_reaped_while_their_daemon_serves() {
    let dir = TestDir::new("fault-daemonize");
    // The handler's child leaves the session and keeps the connection (and the stderr pipe)
    // for a second after the handler has exited; it answers the client from there.
    let script = dir.script(
        "daemonize.sh",
        "setsid -f sh -c 'sleep 1; echo from-the-daemon; sleep 1'\nexit 0",
    );
    let daemon = start_beside_hostile(&dir, Service::new("hostile", &script));
    let run = run_fault("handler-daemonizes", &daemon, 40, 1, |daemon| {
        let mut stream = connect_hostile(daemon)?;
        let answer = try_read_line(&mut stream)?;
        (answer == "from-the-daemon")
            .then_some(())
            .ok_or(format!("answer {answer:?}"))
    });
    assert_eq!(run.unexpected, Vec::<String>::new());
    assert_eq!(run.as_expected, run.connections);
    assert_eq!(run.exits, run.connections);
}

#[test]
#[ignore = "long: make test-long"]
fn handlers_that_close_stdout_and_run_on_let_the_client_go_and_are_reaped_later() {
    let dir = TestDir::new("fault-close-stdout");
    // Both copies of the connection are closed; the handler itself runs on for 2 s.
    let script = dir.script("close.sh", "exec 0<&- 1>&-\nsleep 2");
    let daemon = start_beside_hostile(&dir, Service::new("hostile", &script));
    let run = run_fault("handler-closes-stdout", &daemon, 40, 1, |daemon| {
        let mut stream = connect_hostile(daemon)?;
        let started = Instant::now();
        if !closed_within(&mut stream, Duration::from_secs(5)) {
            return Err("the client was not let go".into());
        }
        // The handler sleeps 2 s after closing: the client must not have waited for it.
        if started.elapsed() >= Duration::from_secs(2) {
            return Err(format!("EOF only after {:?}", started.elapsed()));
        }
        Ok(())
    });
    assert_eq!(run.unexpected, Vec::<String>::new());
    assert_eq!(run.exits, run.connections);
}

#[test]
#[ignore = "long: make test-long"]
fn a_handler_writing_100_mb_to_stderr_is_logged_in_full_without_stalling_the_others() {
    const LINE: usize = 1000;
    const TOTAL: usize = 100 * 1024 * 1024;
    let dir = TestDir::new("fault-stderr-flood");
    let script = dir.script(
        "flood.sh",
        &format!(
            "yes \"$(head -c {} /dev/zero | tr '\\0' x)\" | head -c {TOTAL} >&2",
            LINE - 1
        ),
    );
    let daemon = start_beside_hostile(&dir, Service::new("hostile", &script));
    let stderr_lines_before = daemon.count_lines("hostile/tcp: stderr ");
    let run = run_fault("handler-100mb-stderr", &daemon, 1, 1, expect_closed);
    assert_eq!(run.unexpected, Vec::<String>::new());
    // The warm-up connection wrote 100 MB too: two floods in all, every line of each logged.
    let lines = daemon.count_lines("hostile/tcp: stderr ") - stderr_lines_before;
    assert_eq!(lines, 2 * TOTAL.div_ceil(LINE), "stderr lines logged");
}
