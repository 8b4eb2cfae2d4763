//! Descriptor exhaustion: rinetd started with a low RLIMIT_NOFILE and more clients than it has
//! descriptors. It must back off instead of spinning on EMFILE (CPU near zero), keep the
//! clients it cannot take in the backlog, log the condition once, and serve every one of them
//! once the others leave.

use std::io::{Read, Write};
use std::net::Shutdown;

use crate::harness::{Daemon, Service, TestDir, wait_until, wrapped};
use crate::support::{
    CpuMeter, Figures, Footprint, IDLE_CPU_SHARE, assert_back_to, percent, reset, try_read_line,
    watch_for,
};

/// rinetd's descriptor limit: its listeners, log and self-pipe plus a few dozen clients.
const NOFILE: usize = 64;
/// More clients than rinetd has descriptors.
const CLIENTS: usize = 150;
/// How long rinetd is watched while out of descriptors.
const EXHAUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(3);
/// RSS rinetd may keep after the fault (allocator noise, not a leak).
const RSS_SLACK_KIB: u64 = 1024;

fn start_with_few_descriptors(dir: &TestDir, service: Service) -> Daemon {
    let config = dir.services_config(&[service]);
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    Daemon::spawn(wrapped(&["prlimit", &limit], &config))
}

/// Waits until rinetd has hit the limit and its descriptor count has stopped moving, then
/// measures its CPU over `EXHAUSTED_FOR` and counts the `accept failed` lines logged meanwhile.
fn watch_exhausted(daemon: &Daemon, service: &str) -> (f64, usize, usize) {
    let failed = daemon.wait_for_line(&format!(
        "{service}/tcp: accept failed error=\"Too many open files\""
    ));
    wait_until("rinetd holds nearly all its descriptors", || {
        crate::harness::open_fd_count(daemon.pid()) >= NOFILE - 8
    });
    let lines_before = daemon.lines().len();
    let cpu = CpuMeter::start(daemon.pid());
    watch_for(EXHAUSTED_FOR);
    let share = cpu.share();
    let backoff_lines = daemon.lines()[lines_before..]
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    let accepted = daemon.count_lines(&format!("{service}/tcp: accepted "));
    assert!(failed.text.contains("backoff="), "{}", failed.text);
    (share, backoff_lines, accepted)
}

#[test]
#[ignore = "long: make test-long"]
fn out_of_descriptors_with_handlers_rinetd_idles_and_serves_every_client_once_others_leave() {
    let dir = TestDir::new("fault-emfile-handlers");
    let script = dir.script("hold.sh", "read line\necho \"done $line\"");
    let daemon = start_with_few_descriptors(&dir, Service::new("hold", &script));
    let baseline = Footprint::of(&daemon);

    let mut clients: Vec<_> = (0..CLIENTS).map(|_| daemon.connect("hold")).collect();
    let (cpu_share, backoff_lines, taken_in) = watch_exhausted(&daemon, "hold");

    // The clients leave one by one (each handler exits once it has its line), which frees
    // descriptors for the ones still in the backlog.
    for (n, client) in clients.iter_mut().enumerate() {
        writeln!(client, "client{n}").unwrap();
    }
    let mut served = 0;
    let mut lost = Vec::new();
    for (n, client) in clients.iter_mut().enumerate() {
        match try_read_line(client) {
            Ok(answer) if answer == format!("done client{n}") => served += 1,
            other => lost.push(format!("client {n}: {other:?}")),
        }
    }
    let refused = daemon.count_lines("hold/tcp: refused");
    let after = assert_back_to(&daemon, baseline, RSS_SLACK_KIB);
    Figures::new("emfile-handlers")
        .add("nofile", NOFILE)
        .add("clients", CLIENTS)
        .add("taken_in_while_exhausted", taken_in)
        .add("served", served)
        .add("refused", refused)
        .add("lost", lost.len())
        .add("cpu_while_exhausted", percent(cpu_share))
        .add("accept_failed_lines_in_window", backoff_lines)
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert!(lost.is_empty(), "clients lost: {lost:?}");
    assert_eq!(served, CLIENTS);
    assert_eq!(refused, 0);
    assert!(
        taken_in < CLIENTS,
        "the limit was not reached: all {CLIENTS} clients were taken in at once"
    );
    assert!(
        cpu_share < IDLE_CPU_SHARE,
        "rinetd used {} of a core while out of descriptors",
        percent(cpu_share)
    );
    // Logged once until something starts again (at most once more per recovery).
    assert!(
        backoff_lines <= 1,
        "{backoff_lines} accept-failed lines in {EXHAUSTED_FOR:?} of exhaustion"
    );
}

#[test]
#[ignore = "long: make test-long"]
fn out_of_descriptors_with_builtin_connections_rinetd_idles_and_serves_every_client_once_others_leave()
 {
    let dir = TestDir::new("fault-emfile-builtin");
    let daemon = start_with_few_descriptors(&dir, Service::builtin("echo", "echo"));
    let baseline = Footprint::of(&daemon);

    // Each open echo connection holds one of rinetd's descriptors.
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| daemon.connect("echo")).collect();
    let (cpu_share, backoff_lines, taken_in) = watch_exhausted(&daemon, "echo");

    let mut served = 0;
    let mut lost = Vec::new();
    for (n, mut client) in clients.drain(..).enumerate() {
        let payload = format!("client{n}\n");
        let answer = client
            .write_all(payload.as_bytes())
            .and_then(|()| client.shutdown(Shutdown::Write))
            .and_then(|()| {
                let mut answer = String::new();
                client.read_to_string(&mut answer).map(|_| answer)
            });
        match answer {
            Ok(answer) if answer == payload => served += 1,
            other => lost.push(format!("client {n}: {other:?}")),
        }
        reset(client);
    }
    let refused = daemon.count_lines("echo/tcp: refused");
    let after = assert_back_to(&daemon, baseline, RSS_SLACK_KIB);
    Figures::new("emfile-builtin")
        .add("nofile", NOFILE)
        .add("clients", CLIENTS)
        .add("taken_in_while_exhausted", taken_in)
        .add("served", served)
        .add("refused", refused)
        .add("lost", lost.len())
        .add("cpu_while_exhausted", percent(cpu_share))
        .add("accept_failed_lines_in_window", backoff_lines)
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert!(lost.is_empty(), "clients lost: {lost:?}");
    assert_eq!(served, CLIENTS);
    assert_eq!(refused, 0);
    assert!(taken_in < CLIENTS, "the limit was not reached");
    assert!(
        cpu_share < IDLE_CPU_SHARE,
        "rinetd used {} of a core while out of descriptors",
        percent(cpu_share)
    );
    assert!(
        backoff_lines <= 1,
        "{backoff_lines} accept-failed lines in {EXHAUSTED_FOR:?} of exhaustion"
    );
}
