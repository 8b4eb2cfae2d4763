//! Hostile clients: PROXY headers never sent, resets mid-connection, a 20,000-connection
//! flood, chargen never read, slowloris. rinetd closes what it must within its deadlines,
//! serves the honest clients beside them, stays idle while clients stall, and comes back to
//! the descriptors and memory it had.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Service, TestDir, established_on, wait_until};
use crate::support::{
    CpuMeter, Figures, Footprint, IDLE_CPU_SHARE, LatencyProbe, assert_back_to, closed_within,
    echo_round_trip, percent, reset, run_clients, tally, try_connect, watch_for,
};

const RSS_SLACK_KIB: u64 = 1024;
/// rinetd's deadline for a PROXY header or a metrics request head.
const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// How late after the deadline a close still counts as on time on a busy machine.
const CLOSE_MARGIN: Duration = Duration::from_secs(3);

/// `service` on both 127.0.0.1 and ::1: the hostile clients come from the first, the honest
/// ones from the second, a different client as `per_source` and the PROXY waiting limits see it.
fn dual_stack(service: Service) -> Service {
    service.set("address", "[\"127.0.0.1\", \"::1\"]")
}

fn address_of(daemon: &Daemon, name: &str, ipv6: bool) -> SocketAddr {
    daemon
        .addresses(name)
        .into_iter()
        .find(|address| address.is_ipv6() == ipv6)
        .unwrap_or_else(|| {
            panic!(
                "{name} listens on no {}",
                if ipv6 { "::1" } else { "127.0.0.1" }
            )
        })
}

/// An honest PROXY client of an echo service: its header, a line, and the line back.
fn honest_proxy_round_trip(address: SocketAddr, n: usize) -> Result<(), String> {
    let header = format!("PROXY TCP6 2001:db8::1 2001:db8::2 {} 80\r\n", 1000 + n);
    let line = format!("honest{n}\n");
    let mut stream = try_connect(address).map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(format!("{header}{line}").as_bytes())
        .and_then(|()| stream.shutdown(Shutdown::Write))
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    reset(stream);
    (answer == line)
        .then_some(())
        .ok_or(format!("answer {answer:?}"))
}

/// Waits (in parallel, one thread each) until each stream is closed by rinetd; returns how long
/// after `since` each one was, or None for one still open after the deadline and the margin.
fn close_times(streams: Vec<TcpStream>, since: Instant) -> Vec<Option<Duration>> {
    thread::scope(|scope| {
        let waits: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                scope.spawn(move || {
                    let left = (HEADER_DEADLINE + CLOSE_MARGIN).saturating_sub(since.elapsed());
                    let closed = closed_within(&mut stream, left).then(|| since.elapsed());
                    reset(stream);
                    closed
                })
            })
            .collect();
        waits.into_iter().map(|w| w.join().unwrap()).collect()
    })
}

fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[test]
#[ignore = "long: make test-long"]
fn silent_proxy_clients_are_closed_by_the_header_deadline_and_honest_ones_are_all_served() {
    const SILENT: usize = 200;
    const HONEST: usize = 50;
    let dir = TestDir::new("fault-silent-proxy");
    let proxied = dual_stack(
        Service::new("proxied", std::path::Path::new("/bin/cat")).set("proxy_protocol", "true"),
    );
    let daemon = Daemon::start(&dir, &[proxied, Service::builtin("probe", "echo")]);
    let honest_address = address_of(&daemon, "proxied", true);
    honest_proxy_round_trip(honest_address, 0).expect("warm-up");
    wait_until("the warm-up handler is reaped", || {
        daemon.count_lines("proxied/tcp: exited ") == 1
    });
    let baseline = Footprint::of(&daemon);
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);

    let silent_address = address_of(&daemon, "proxied", false);
    let connected = Instant::now();
    let silent: Vec<_> = (0..SILENT)
        .map(|_| try_connect(silent_address).expect("connect a silent client"))
        .collect();
    let honest = run_clients(5, HONEST / 5, |t, n| {
        honest_proxy_round_trip(honest_address, 1 + t * HONEST / 5 + n)
    });
    let closed = close_times(silent, connected);
    let latencies = probe.stop();
    wait_until("every silent client's rejection is logged", || {
        daemon.count_lines("proxied/tcp: proxy header rejected") >= SILENT
    });

    let (served, errors) = tally(&honest);
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    let at_once = closed
        .iter()
        .flatten()
        .filter(|t| **t < HEADER_DEADLINE - Duration::from_secs(1))
        .count();
    let latest = closed.iter().flatten().max().copied().unwrap_or_default();
    let handlers = daemon.count_lines("proxied/tcp: accepted ") - 1;
    let after = assert_back_to(&daemon, baseline, RSS_SLACK_KIB);
    Figures::new("proxy-header-never-sent")
        .add("silent", SILENT)
        .add("silent_closed", SILENT - still_open)
        .add("silent_closed_at_once", at_once)
        .add("silent_closed_at_deadline", SILENT - still_open - at_once)
        .add("latest_close", seconds(latest))
        .add("honest", HONEST)
        .add("served", served)
        .add("refused", daemon.count_lines("refused"))
        .add("lost", HONEST - served)
        .add("handlers_started", handlers)
        .add("probe", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert_eq!(served, HONEST, "honest PROXY clients lost: {errors:?}");
    assert_eq!(
        still_open, 0,
        "silent clients still open after the deadline"
    );
    assert_eq!(
        handlers, HONEST,
        "a handler was started for a silent client"
    );
    latencies.assert_answered_in_time("silent PROXY clients waited");
}

#[test]
#[ignore = "long: make test-long"]
fn clients_that_reset_mid_connection_leak_nothing() {
    const EACH: usize = 100;
    let dir = TestDir::new("fault-reset");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::builtin("echo", "echo"),
            Service::new("cat", std::path::Path::new("/bin/cat")),
            Service::builtin("proxied", "echo").set("proxy_protocol", "true"),
            Service::builtin("probe", "echo"),
        ],
    );
    let baseline = Footprint::of(&daemon);
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);
    let targets = [
        (daemon.addresses("echo")[0], &b"0123456789"[..]),
        (daemon.addresses("cat")[0], &b"0123456789"[..]),
        (daemon.addresses("proxied")[0], &b"PROXY TCP4 192.0.2"[..]),
    ];
    let results = run_clients(6, EACH / 2, |t, _| {
        let (address, sent) = targets[t % 3];
        let mut stream = try_connect(address).map_err(|e| format!("connect: {e}"))?;
        stream.write_all(sent).map_err(|e| format!("write: {e}"))?;
        reset(stream);
        Ok::<(), String>(())
    });
    wait_until(
        "every reset connection is closed, reaped or rejected",
        || {
            daemon.count_lines("echo/tcp: closed ") >= EACH
                && daemon.count_lines("cat/tcp: exited ") >= EACH
                && daemon.count_lines("proxied/tcp: proxy header rejected") >= EACH
        },
    );
    let latencies = probe.stop();
    let (made, errors) = tally(&results);
    let after = assert_back_to(&daemon, baseline, RSS_SLACK_KIB);
    Figures::new("client-resets")
        .add("connections", 3 * EACH)
        .add("reset_after_sending", made)
        .add("builtin_closed", daemon.count_lines("echo/tcp: closed "))
        .add("handlers_reaped", daemon.count_lines("cat/tcp: exited "))
        .add(
            "proxy_rejected",
            daemon.count_lines("proxied/tcp: proxy header rejected"),
        )
        .add("refused", daemon.count_lines("refused"))
        .add("lost", 0)
        .add("probe", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert_eq!(made, 3 * EACH, "{errors:?}");
    latencies.assert_answered_in_time("clients reset their connections");
}

#[test]
#[ignore = "long: make test-long"]
fn a_flood_of_20000_connections_is_served_in_full_and_other_services_answer_meanwhile() {
    const THREADS: usize = 20;
    const PER_THREAD: usize = 1000;
    /// Connections a thread opens before it completes any: up to THREADS × BURST at once.
    const BURST: usize = 100;
    let dir = TestDir::new("fault-flood");
    let flood = Service::builtin("flood", "echo")
        .set("max_children", "0")
        .set("backlog", "4096");
    let daemon = Daemon::start(&dir, &[flood, Service::builtin("probe", "echo")]);
    let address = daemon.addresses("flood")[0];
    echo_round_trip(address, b"warm-up\n").expect("warm-up");
    wait_until("the warm-up connection is closed", || {
        daemon.count_lines("flood/tcp: closed ") == 1
    });
    let baseline = Footprint::of(&daemon);
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);
    let cpu = CpuMeter::start(daemon.pid());
    let started = Instant::now();

    let bursts = run_clients(THREADS, PER_THREAD / BURST, |t, b| {
        let opened: Vec<_> = (0..BURST).map(|_| try_connect(address)).collect();
        opened
            .into_iter()
            .enumerate()
            .map(|(n, stream)| {
                let mut stream = stream.map_err(|e| format!("connect: {e}"))?;
                let payload = format!("{t}-{b}-{n}\n");
                stream
                    .write_all(payload.as_bytes())
                    .and_then(|()| stream.shutdown(Shutdown::Write))
                    .map_err(|e| format!("write: {e}"))?;
                let mut answer = String::new();
                stream
                    .read_to_string(&mut answer)
                    .map_err(|e| format!("read: {e}"))?;
                reset(stream);
                (answer == payload)
                    .then_some(())
                    .ok_or(format!("answer {answer:?}"))
            })
            .collect::<Vec<_>>()
    });
    let elapsed = started.elapsed();
    let cpu_seconds = cpu.seconds();
    let latencies = probe.stop();
    let results: Vec<_> = bursts.into_iter().flatten().collect();
    let (served, errors) = tally(&results);
    let total = THREADS * PER_THREAD;
    wait_until("rinetd has closed every flood connection", || {
        daemon.count_lines("flood/tcp: closed ") > total
    });
    let after = assert_back_to(&daemon, baseline, RSS_SLACK_KIB * 4);
    Figures::new("flood-20000")
        .add("connections", total)
        .add("served", served)
        .add("refused", daemon.count_lines("refused"))
        .add("lost", total - served)
        .add("seconds", format!("{:.1}", elapsed.as_secs_f64()))
        .add(
            "per_second",
            format!("{:.0}", served as f64 / elapsed.as_secs_f64()),
        )
        .add(
            "rinetd_cpu_us_per_connection",
            format!("{:.0}", cpu_seconds * 1e6 / total as f64),
        )
        .add("probe", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert_eq!(served, total, "flood connections lost: {errors:?}");
    latencies.assert_answered_in_time("20,000 connections flooded another service");
}

/// Bytes queued in the kernel's send queues of the server side of connections on `port`:
/// what rinetd has written that its clients have not read.
fn queued_to_clients(port: u16) -> u64 {
    established_on(port).iter().map(|q| q.send).sum()
}

const CHARGEN_CLIENTS: usize = 100;
/// What rinetd holds per chargen connection at most: its chunk (CHARGEN_CHUNK, 16 KiB, in
/// src/builtin/mod.rs), for every stalled client.
const CHUNKS_KIB: u64 = 16 * CHARGEN_CLIENTS as u64;

/// rinetd serving chargen next to a probe.
fn start_chargen(dir: &TestDir) -> Daemon {
    Daemon::start(
        dir,
        &[
            Service::builtin("chargen", "chargen"),
            Service::builtin("probe", "echo"),
        ],
    )
}

/// `CHARGEN_CLIENTS` chargen clients that never read, all accepted.
fn connect_silent_readers(daemon: &Daemon) -> Vec<TcpStream> {
    let address = daemon.addresses("chargen")[0];
    let before = daemon.count_lines("chargen/tcp: accepted ");
    let clients: Vec<_> = (0..CHARGEN_CLIENTS)
        .map(|_| try_connect(address).expect("connect to chargen"))
        .collect();
    wait_until("every chargen client is accepted", || {
        daemon.count_lines("chargen/tcp: accepted ") == before + CHARGEN_CLIENTS
    });
    clients
}

/// Resets `clients` and waits until rinetd has closed all of them.
fn leave(daemon: &Daemon, clients: Vec<TcpStream>) {
    let before = daemon.count_lines("chargen/tcp: closed ");
    let count = clients.len();
    clients.into_iter().for_each(reset);
    wait_until("every chargen connection is closed", || {
        daemon.count_lines("chargen/tcp: closed ") == before + count
    });
}

/// Waits until the kernel's queues towards the clients stop growing (their windows are closed
/// and rinetd's send buffers full); returns how many bytes they hold then.
fn wait_until_queues_are_full(port: u16) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = queued_to_clients(port);
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = queued_to_clients(port);
        if now > 0 && now == before {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the queues to the clients still grow after 60 s ({now} bytes)"
        );
        before = now;
    }
}

#[test]
#[ignore = "long: make test-long"]
fn chargen_clients_that_never_read_cost_no_cpu_once_their_buffers_are_full() {
    let dir = TestDir::new("fault-chargen-unread");
    let daemon = start_chargen(&dir);
    let port = daemon.addresses("chargen")[0].port();
    let baseline = Footprint::of(&daemon);

    let clients = connect_silent_readers(&daemon);
    let filled_at = Instant::now();
    let queued = wait_until_queues_are_full(port);
    let fill_seconds = filled_at.elapsed().as_secs_f64();
    let full = Footprint::of(&daemon);
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);
    let cpu = CpuMeter::start(daemon.pid());
    watch_for(Duration::from_secs(3));
    let cpu_share = cpu.share();
    let latencies = probe.stop();
    leave(&daemon, clients);
    // The allocator may keep the chunks the stalled connections needed, for reuse (glibc does,
    // or not, from one run to the next): more than that would be growth.
    let after = assert_back_to(&daemon, baseline, CHUNKS_KIB + RSS_SLACK_KIB);
    Figures::new("chargen-never-read")
        .add("clients", CHARGEN_CLIENTS)
        .add("closed", CHARGEN_CLIENTS)
        .add("refused", daemon.count_lines("refused"))
        .add("lost", 0)
        .add("kernel_mb_queued", queued / (1024 * 1024))
        .add("fill_seconds", format!("{fill_seconds:.1}"))
        .add("cpu_once_full", percent(cpu_share))
        .add("probe_once_full", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_while_stalled", full.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_while_stalled", full.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert!(
        cpu_share < IDLE_CPU_SHARE,
        "rinetd used {} of a core with {CHARGEN_CLIENTS} stalled chargen clients",
        percent(cpu_share)
    );
    // rinetd itself keeps a chunk per connection at most: the rest waits in the kernel.
    assert!(
        full.rss_kib <= baseline.rss_kib + CHUNKS_KIB + RSS_SLACK_KIB,
        "rinetd buffers for clients that do not read: {} KiB, {} KiB before they came",
        full.rss_kib,
        baseline.rss_kib
    );
    assert_eq!(full.fds, baseline.fds + CHARGEN_CLIENTS);
    assert!(
        after.rss_kib <= full.rss_kib + RSS_SLACK_KIB,
        "rinetd's RSS grew after the clients left: {} KiB stalled, {} KiB after",
        full.rss_kib,
        after.rss_kib
    );
    latencies.assert_answered_in_time("chargen clients stopped reading");
}

#[test]
#[ignore = "long: make test-long"]
fn chargen_clients_that_never_read_do_not_delay_other_services_while_their_buffers_fill() {
    // Each loop turn gives every writable builtin connection TURN_BUDGET (src/builtin/mod.rs):
    // at 256 KiB, 100 such clients made a turn of 25 MiB of chargen, a probe needs a few turns,
    // and until the kernel's autotuned buffers (MBs per connection) were full other services
    // waited up to 0.7 s (release build; 4 s in a debug build).
    let dir = TestDir::new("fault-chargen-fill");
    let daemon = start_chargen(&dir);
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);
    let clients = connect_silent_readers(&daemon);
    wait_until_queues_are_full(daemon.addresses("chargen")[0].port());
    let latencies = probe.stop();
    leave(&daemon, clients);
    Figures::new("chargen-while-buffers-fill")
        .add("clients", CHARGEN_CLIENTS)
        .add("probe", latencies.summary())
        .print();
    latencies.assert_answered_in_time("chargen buffers filled");
}

/// Sends `text` one byte every `pause` until the peer closes; returns when it did (from
/// `connected`) and how many bytes went out, or None if it never closed and all was sent.
fn trickle(mut stream: TcpStream, text: &[u8], pause: Duration) -> (Option<Duration>, usize) {
    let connected = Instant::now();
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    for (sent, byte) in text.iter().enumerate() {
        // A close shows as EOF or a reset on read, or a failed write.
        match stream.read(&mut buf) {
            Ok(0) => return (Some(connected.elapsed()), sent),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (Some(connected.elapsed()), sent);
            }
            _ => {}
        }
        if stream.write_all(&[*byte]).is_err() {
            return (Some(connected.elapsed()), sent);
        }
        thread::sleep(pause);
    }
    (None, text.len())
}

#[test]
#[ignore = "long: make test-long"]
fn slowloris_clients_are_cut_off_at_the_deadline_and_honest_clients_are_served() {
    const SLOW: usize = 30;
    const HONEST: usize = 20;
    /// One byte per this: the header and the request head take far longer than the deadline.
    const PAUSE: Duration = Duration::from_millis(250);
    let dir = TestDir::new("fault-slowloris");
    let daemon = Daemon::start(
        &dir,
        &[
            dual_stack(Service::builtin("proxied", "echo").set("proxy_protocol", "true")),
            Service::builtin("metrics", "metrics"),
            Service::builtin("probe", "echo"),
        ],
    );
    let baseline = Footprint::of(&daemon);
    let probe = LatencyProbe::start(daemon.addresses("probe")[0]);
    let cpu = CpuMeter::start(daemon.pid());
    let proxy_header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nsome data\n";
    let request_head = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow\r\n\r\n";
    let slow_proxy = address_of(&daemon, "proxied", false);
    let metrics = daemon.addresses("metrics")[0];
    let honest_proxy = address_of(&daemon, "proxied", true);

    let (slow, honest) = thread::scope(|scope| {
        let slow: Vec<_> = (0..2 * SLOW)
            .map(|n| {
                let (address, text): (SocketAddr, &[u8]) = if n % 2 == 0 {
                    (slow_proxy, proxy_header)
                } else {
                    (metrics, request_head)
                };
                scope.spawn(move || {
                    let stream = try_connect(address).expect("connect a slow client");
                    trickle(stream, text, PAUSE)
                })
            })
            .collect();
        let honest: Vec<_> = (0..HONEST)
            .map(|n| {
                let proxied = honest_proxy_round_trip(honest_proxy, n);
                let scraped = scrape(metrics);
                proxied.and(scraped)
            })
            .collect();
        let slow: Vec<_> = slow.into_iter().map(|s| s.join().unwrap()).collect();
        (slow, honest)
    });
    let cpu_share = cpu.share();
    let latencies = probe.stop();
    let (served, errors) = tally(&honest);
    let never_closed = slow.iter().filter(|(closed, _)| closed.is_none()).count();
    let close_times: Vec<Duration> = slow.iter().filter_map(|(closed, _)| *closed).collect();
    let earliest = close_times.iter().min().copied().unwrap_or_default();
    let latest = close_times.iter().max().copied().unwrap_or_default();
    let after = assert_back_to(&daemon, baseline, RSS_SLACK_KIB);
    Figures::new("slowloris")
        .add("slow_clients", 2 * SLOW)
        .add("cut_off", 2 * SLOW - never_closed)
        .add("earliest_cut", seconds(earliest))
        .add("latest_cut", seconds(latest))
        .add("honest", 2 * HONEST)
        .add("served", 2 * served)
        .add("refused", daemon.count_lines("refused"))
        .add("lost", 2 * (HONEST - served))
        .add("rinetd_cpu", percent(cpu_share))
        .add("probe", latencies.summary())
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert_eq!(served, HONEST, "honest clients lost: {errors:?}");
    assert_eq!(
        never_closed, 0,
        "slow clients sent everything and were never cut off"
    );
    assert!(
        latest <= HEADER_DEADLINE + CLOSE_MARGIN,
        "a slow client was cut off only after {latest:?}"
    );
    assert!(
        earliest >= HEADER_DEADLINE - Duration::from_millis(500),
        "a slow client was cut off before the deadline, after {earliest:?}"
    );
    assert!(
        cpu_share < IDLE_CPU_SHARE * 2.0,
        "rinetd used {} of a core",
        percent(cpu_share)
    );
    latencies.assert_answered_in_time("slowloris clients trickled");
}

/// A whole metrics scrape: `200` and a counter in the body.
fn scrape(address: SocketAddr) -> Result<(), String> {
    let mut stream = try_connect(address).map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    reset(stream);
    (answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.contains("rinetd_"))
        .then_some(())
        .ok_or(format!("scrape {:?}", &answer[..answer.len().min(80)]))
}
