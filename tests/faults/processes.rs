//! Process exhaustion: fork failing in rinetd (a pids cgroup) and exec failing in the handler
//! (RLIMIT_NPROC for the handler's user). rinetd must keep the clients it cannot serve yet,
//! log the condition once, stay idle while it waits, keep its other services answering, and
//! recover by itself.

use std::io::Write;

use crate::harness::{Daemon, LogLine, PidsCgroup, Service, TestDir, is_root};
use crate::support::{
    CpuMeter, Figures, Footprint, IDLE_CPU_SHARE, Latencies, LatencyProbe, assert_back_to, percent,
    try_read_line, watch_for,
};

/// Handlers that fit: the cgroup holds rinetd and this many processes.
const HANDLERS: usize = 5;
const CLIENTS: usize = 20;
const EXHAUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(3);
const RSS_SLACK_KIB: u64 = 1024;
/// A uid with no passwd entry and no process on the machine: RLIMIT_NPROC counts per user,
/// so the handlers' processes are the only ones it counts.
const NPROC_UID: u32 = 64_999;

fn hold(dir: &TestDir) -> Service {
    let script = dir.script("hold.sh", "read line\necho \"done $line\"");
    Service::new("hold", &script)
}

/// Each client sends its line and reads its answer, in order; returns the served count and
/// what went wrong for the others.
fn finish_clients(clients: &mut [std::net::TcpStream]) -> (usize, Vec<String>) {
    for (n, client) in clients.iter_mut().enumerate() {
        // A client whose handler could not run may be closed already: that shows when reading.
        let _ = writeln!(client, "client{n}");
    }
    let mut served = 0;
    let mut lost = Vec::new();
    for (n, client) in clients.iter_mut().enumerate() {
        match try_read_line(client) {
            Ok(answer) if answer == format!("done client{n}") => served += 1,
            other => lost.push(format!("client {n}: {other:?}")),
        }
    }
    (served, lost)
}

/// What one run of exhaustion showed: from the first failure, through EXHAUSTED_FOR of
/// waiting, to every client finished and the recovery logged.
struct Exhaustion {
    first_failure: LogLine,
    /// Handlers started by the end of the wait.
    running: usize,
    served: usize,
    lost: Vec<String>,
    /// Failed starts, as the `spawn recovered` line counts them.
    attempts: u64,
    refused: usize,
    /// rinetd's share of a core while it waited.
    cpu_share: f64,
    /// Lines of the log during the wait that `is_failure` picks.
    failure_lines: usize,
    latencies: Latencies,
    after: Footprint,
}

/// CLIENTS clients of `hold` against a limit that `daemon` hits: waits for the first failure,
/// measures EXHAUSTED_FOR of waiting, then lets every client finish.
fn exhaust(daemon: &Daemon, baseline: Footprint, is_failure: impl Fn(&str) -> bool) -> Exhaustion {
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| daemon.connect("hold")).collect();
    let first_failure = daemon.wait_for_line("hold/tcp: fork failed error=");
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);
    let lines_before = daemon.lines().len();
    let cpu = CpuMeter::start(daemon.pid());
    watch_for(EXHAUSTED_FOR);
    let cpu_share = cpu.share();
    let failure_lines = daemon.lines()[lines_before..]
        .iter()
        .filter(|line| is_failure(line))
        .count();
    let latencies = probe.stop();
    let running = daemon.count_lines("hold/tcp: accepted ");

    let (served, lost) = finish_clients(&mut clients);
    let recovered =
        daemon.wait_for_line_after(&first_failure, "hold/tcp: spawn recovered failures=");
    let attempts: u64 = recovered.field("failures").parse().unwrap();
    let refused = daemon.count_lines("refused");
    let after = assert_back_to(daemon, baseline, RSS_SLACK_KIB);
    Exhaustion {
        first_failure,
        running,
        served,
        lost,
        attempts,
        refused,
        cpu_share,
        failure_lines,
        latencies,
        after,
    }
}

#[test]
#[ignore = "long: make test-long"]
fn out_of_processes_in_a_pids_cgroup_rinetd_keeps_the_backlog_logs_once_and_recovers() {
    let Some(cgroup) = is_root()
        .then(|| PidsCgroup::new("fault-fork", 1 + HANDLERS as u32))
        .flatten()
    else {
        eprintln!("skipped: needs root and a pids cgroup controller to make fork fail");
        return;
    };
    let dir = TestDir::new("fault-fork");
    let daemon = Daemon::start(&dir, &[hold(&dir), Service::builtin("probe", "echo")]);
    let baseline = Footprint::of(&daemon);
    cgroup.add(daemon.pid());

    let Exhaustion {
        first_failure,
        running,
        served,
        lost,
        attempts,
        refused,
        cpu_share,
        failure_lines: fork_failed_lines,
        latencies,
        after,
    } = exhaust(&daemon, baseline, |line| line.contains("fork failed"));
    assert!(first_failure.text.contains("backoff="));
    Figures::new("pids-cgroup")
        .add("pids_max", 1 + HANDLERS)
        .add("clients", CLIENTS)
        .add("running_while_exhausted", running)
        .add("served", served)
        .add("refused", refused)
        .add("lost", lost.len())
        .add("failed_fork_attempts", attempts)
        .add("fork_failed_lines_in_window", fork_failed_lines)
        .add("cpu_while_exhausted", percent(cpu_share))
        .add("probe", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert!(lost.is_empty(), "clients lost: {lost:?}");
    assert_eq!(served, CLIENTS);
    assert_eq!(refused, 0);
    assert!(
        running <= HANDLERS,
        "{running} handlers in a cgroup for {HANDLERS}"
    );
    assert!(
        cpu_share < IDLE_CPU_SHARE,
        "rinetd used {} of a core while fork failed",
        percent(cpu_share)
    );
    assert!(
        fork_failed_lines == 0,
        "fork failure is logged once until a handler starts again, not {fork_failed_lines} \
         more times in {EXHAUSTED_FOR:?}"
    );
    latencies.assert_answered_in_time("fork failed");
}

/// rinetd for `hold` run as `NPROC_UID` with at most `HANDLERS` processes, and a probe.
fn start_nproc_limited(dir: &TestDir) -> Daemon {
    let uid = NPROC_UID.to_string();
    let hold = hold(dir)
        .set("user", &format!("\"{uid}\""))
        .set("rlimits", &format!("{{nproc: {HANDLERS}}}"));
    Daemon::start(dir, &[hold, Service::builtin("probe", "echo")])
}

#[test]
#[ignore = "long: make test-long"]
fn out_of_processes_for_the_handlers_user_rinetd_keeps_the_backlog_logs_once_and_recovers() {
    if !is_root() {
        eprintln!("skipped: needs root to run handlers as another user");
        return;
    }
    let dir = TestDir::new("fault-nproc");
    let daemon = start_nproc_limited(&dir);
    let baseline = Footprint::of(&daemon);

    // The first handlers fill the user's processes; the next one cannot exec, and the rest
    // wait for the back-off to end.
    let Exhaustion {
        first_failure,
        running,
        served,
        lost,
        attempts,
        refused,
        cpu_share,
        failure_lines: failed_lines,
        latencies,
        after,
    } = exhaust(&daemon, baseline, |line| {
        line.contains("fork failed") || line.contains("spawn failed")
    });
    Figures::new("rlimit-nproc")
        .add("nproc", HANDLERS)
        .add("clients", CLIENTS)
        .add("running_while_exhausted", running)
        .add("served", served)
        .add("refused", refused)
        .add("lost", lost.len())
        .add("failed_exec_attempts", attempts)
        .add("failure_lines_in_window", failed_lines)
        .add("cpu_while_exhausted", percent(cpu_share))
        .add("probe", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert_eq!(
        first_failure.field("error"),
        "Resource temporarily unavailable",
        "{}",
        first_failure.text
    );
    assert!(lost.is_empty(), "clients lost: {lost:?}");
    assert_eq!(served, CLIENTS);
    assert_eq!(refused, 0);
    // The user's limit, give or take the one whose count the kernel checks late (at setuid,
    // before the new process counts for its user).
    assert!(
        running <= HANDLERS + 1,
        "{running} handlers for nproc {HANDLERS}"
    );
    assert_eq!(daemon.count_lines("hold/tcp: spawn failed"), 0);
    assert!(
        cpu_share < IDLE_CPU_SHARE,
        "rinetd used {} of a core while exec failed",
        percent(cpu_share)
    );
    assert_eq!(
        failed_lines, 0,
        "the failure is logged once until a handler starts again"
    );
    latencies.assert_answered_in_time("exec failed for lack of processes");
}
