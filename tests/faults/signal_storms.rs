//! Signal storms: 1,000 SIGHUP and 1,000 SIGUSR1, as fast as they can be sent, while four
//! client threads keep connecting and the table keeps changing under rinetd. Not one
//! connection fails, no reload is refused, and the table rinetd ends on is the last one written.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use nix::sys::signal::Signal;

use crate::harness::{
    Daemon, LogLine, Service, TestDir, free_port_on_both_families, services_yaml, udp_client,
    wait_until,
};
use crate::support::{
    CpuMeter, Figures, Footprint, assert_back_to, echo_round_trip, percent, send_signal,
    try_connect, try_read_line,
};

const SIGNALS: usize = 1000;
/// The table changes every this many SIGHUPs during the storm.
const TABLE_EVERY: usize = 25;
/// Between two bursts: the storm lasts about SIGNALS / TABLE_EVERY of these.
const BURST_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
const RSS_SLACK_KIB: u64 = 2048;

/// The services of one version of the table: `hello` (a handler whose environment differs
/// between versions: a change, its socket kept), `echo` (tcp builtin) and `uecho` (udp builtin)
/// kept throughout, and `extra` under a name and port of its version's own (added and removed).
struct Ports {
    hello: u16,
    echo: u16,
    uecho: u16,
    extras: [u16; 3],
}

fn table(hello: &Path, ports: &Ports, version: usize) -> String {
    let extra = ["alpha", "beta", "final"][version];
    services_yaml(&[
        Service::new("hello", hello)
            .set("port", &ports.hello.to_string())
            .set("env", &format!("{{VERSION: \"{version}\"}}")),
        Service::builtin("echo", "echo").set("port", &ports.echo.to_string()),
        Service::builtin("uecho", "echo")
            .set("protocol", "udp")
            .set("port", &ports.uecho.to_string()),
        Service::builtin(extra, "daytime").set("port", &ports.extras[version].to_string()),
    ])
}

/// Replaces the table in one step (rename), so rinetd never reads half a file.
fn install(dir: &TestDir, yaml: &str) {
    let staged = dir.write("rinetd.conf.new", yaml, 0o644);
    std::fs::rename(staged, dir.join("rinetd.conf")).expect("install the table");
}

fn localhost(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

#[test]
#[ignore = "long: make test-long"]
fn a_storm_of_sighup_and_sigusr1_under_load_fails_no_connection_and_ends_on_the_last_table() {
    let dir = TestDir::new("fault-signal-storm");
    let ports = Ports {
        hello: free_port_on_both_families(),
        echo: free_port_on_both_families(),
        uecho: free_port_on_both_families(),
        extras: [
            free_port_on_both_families(),
            free_port_on_both_families(),
            free_port_on_both_families(),
        ],
    };
    let hello = dir.script("hello.sh", "echo \"hello $VERSION\"");
    install(&dir, &table(&hello, &ports, 0));
    let daemon = Daemon::spawn(Daemon::command(&dir.join("rinetd.conf")));
    let baseline = Footprint::of(&daemon);
    let cpu = CpuMeter::start(daemon.pid());

    let stop = Arc::new(AtomicBool::new(false));
    // Per load thread: hello, hello, echo, uecho.
    let served: [AtomicUsize; 4] = Default::default();
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    let started = Instant::now();
    let (reloads_written, storm_seconds) = thread::scope(|scope| {
        // The load threads stop however this closure ends: a failed wait must not leave the
        // scope waiting for them forever.
        let _stop_load = StopOnDrop(&stop);
        // Four load threads: two on the handler, one on each builtin.
        for n in 0..4 {
            let (stop, served, failures, ports) = (&stop, &served, &failures, &ports);
            scope.spawn(move || {
                let udp = udp_client();
                while !stop.load(Ordering::Relaxed) {
                    let result = match n {
                        0 | 1 => hello_round_trip(localhost(ports.hello)),
                        2 => echo_round_trip(localhost(ports.echo), b"storm\n"),
                        _ => udp_round_trip(&udp, localhost(ports.uecho)),
                    };
                    match result {
                        Ok(()) => served[n].fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("thread {n}: {e}"));
                            0
                        }
                    };
                }
            });
        }
        // The storm: bursts of SIGHUP and SIGUSR1 in turn, as fast as they can be sent, the
        // table switching between two versions before each burst; the bursts are spread over
        // a few seconds so that reloads and connections overlap.
        let storm = Instant::now();
        let mut written = 0;
        for n in 0..SIGNALS {
            if n % TABLE_EVERY == 0 {
                if n > 0 {
                    thread::sleep(BURST_PAUSE);
                }
                install(&dir, &table(&hello, &ports, (n / TABLE_EVERY) % 2));
                written += 1;
            }
            send_signal(daemon.pid(), Signal::SIGHUP);
            send_signal(daemon.pid(), Signal::SIGUSR1);
        }
        let storm_seconds = storm.elapsed().as_secs_f64();
        // The last table, then its reload: the load goes on until it is in force.
        install(&dir, &table(&hello, &ports, 2));
        send_signal(daemon.pid(), Signal::SIGHUP);
        wait_until("the last table is in force", || {
            daytime_answers(localhost(ports.extras[2]))
                && hello_says(localhost(ports.hello), "hello 2")
        });
        stop.store(true, Ordering::Relaxed);
        (written + 1, storm_seconds)
    });
    let elapsed = started.elapsed();
    let cpu_seconds = cpu.seconds();

    // Nothing is left of the storm: a last dump shows exactly the last table's services.
    let mark = LogLine {
        index: daemon.lines().len() - 1,
        text: String::new(),
        at: Instant::now(),
    };
    send_signal(daemon.pid(), Signal::SIGUSR1);
    let dump = daemon.wait_for_line_after(&mark, "rinetd: status services=");
    let services: usize = dump.field("services").parse().unwrap();
    wait_until("the whole dump is read", || {
        daemon.lines()[dump.index + 1..]
            .iter()
            .filter(|line| line.contains(": status state="))
            .count()
            >= services
    });
    let lines = daemon.lines();
    let listed: Vec<String> = lines[dump.index + 1..]
        .iter()
        .filter(|line| line.contains(": status state="))
        .take(services)
        .map(|line| {
            line.trim_start_matches("rinetd: ")
                .split(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let failures = failures.into_inner().unwrap();
    let served = served.map(AtomicUsize::into_inner);
    let reloads = daemon.count_lines("rinetd: reloaded ");
    let dumps = daemon.count_lines("rinetd: status services=");
    let refused_reloads = daemon.count_lines("reload failed");
    let gone: Vec<bool> = [0, 1]
        .iter()
        .map(|&v| TcpStream::connect(localhost(ports.extras[v])).is_err())
        .collect();
    let after = assert_back_to(&daemon, baseline, RSS_SLACK_KIB);
    Figures::new("signal-storm")
        .add("sighup", SIGNALS + 1)
        .add("sigusr1", SIGNALS + 1)
        .add("storm_seconds", format!("{storm_seconds:.2}"))
        .add("tables_written", reloads_written)
        .add("reloads_applied", reloads)
        .add("reloads_refused", refused_reloads)
        .add("status_dumps", dumps)
        .add("served", served.iter().sum::<usize>())
        .add("served_hello", served[0] + served[1])
        .add("served_echo", served[2])
        .add("served_udp_echo", served[3])
        .add("refused", daemon.count_lines(": refused "))
        .add("failed", failures.len())
        .add("seconds", format!("{:.1}", elapsed.as_secs_f64()))
        .add("rinetd_cpu", percent(cpu_seconds / elapsed.as_secs_f64()))
        .add("fds_before", baseline.fds)
        .add("fds_after", after.fds)
        .add("rss_kib_before", baseline.rss_kib)
        .add("rss_kib_after", after.rss_kib)
        .print();
    assert!(
        failures.is_empty(),
        "connections failed: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "a load thread was never served: {served:?}"
    );
    assert_eq!(refused_reloads, 0, "a reload was refused");
    assert!(
        (2..=SIGNALS + 1).contains(&reloads),
        "{reloads} reloads for {} SIGHUPs",
        SIGNALS + 1
    );
    assert!(
        dumps >= 2,
        "{dumps} status dumps for {} SIGUSR1",
        SIGNALS + 1
    );
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(
        listed_sorted,
        ["echo/tcp", "final/tcp", "hello/tcp", "uecho/udp"],
        "the last dump: {listed:?}"
    );
    assert_eq!(gone, [true, true], "alpha and beta still listen");
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn hello_round_trip(address: SocketAddr) -> Result<(), String> {
    let mut stream = try_connect(address).map_err(|e| format!("connect: {e}"))?;
    let line = try_read_line(&mut stream)?;
    crate::support::reset(stream);
    line.starts_with("hello ")
        .then_some(())
        .ok_or(format!("answer {line:?}"))
}

fn hello_says(address: SocketAddr, expected: &str) -> bool {
    try_connect(address)
        .ok()
        .and_then(|mut stream| try_read_line(&mut stream).ok())
        .is_some_and(|line| line == expected)
}

fn daytime_answers(address: SocketAddr) -> bool {
    try_connect(address)
        .ok()
        .and_then(|mut stream| try_read_line(&mut stream).ok())
        .is_some()
}

fn udp_round_trip(socket: &std::net::UdpSocket, address: SocketAddr) -> Result<(), String> {
    socket
        .send_to(b"storm", address)
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 64];
    let (len, from) = socket
        .recv_from(&mut buf)
        .map_err(|e| format!("receive: {e}"))?;
    (from == address && &buf[..len] == b"storm")
        .then_some(())
        .ok_or(format!("reply {:?} from {from}", &buf[..len]))
}
