//! Running out of descriptors or processes slows rinetd down but loses nothing it has not
//! accepted, and it recovers by itself; a non-root rinetd serves handlers as its own user.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Daemon, Service, TestDir, is_root, read_line, wait_until};

/// A handler that holds its client until the client sends a line.
fn holding_service(dir: &TestDir) -> Service {
    let script = dir.script("hold.sh", "read line\necho \"done $line\"");
    Service::new("hold", &script)
}

/// `rinetd -f` for `config` behind a wrapper command (prlimit, setpriv) that execs it.
fn wrapped(wrapper: &[&str], config: &Path) -> Command {
    let mut command = Command::new(wrapper[0]);
    command
        .args(&wrapper[1..])
        .arg(env!("CARGO_BIN_EXE_rinetd"))
        .arg("-c")
        .arg(config)
        .args(["-f", "--log", "stderr"]);
    command
}

#[test]
fn out_of_descriptors_the_waiting_clients_stay_in_the_backlog_and_are_all_served() {
    let dir = TestDir::new("emfile");
    let config = dir.services_config(&[holding_service(&dir)]);
    // Room for a few handlers only: each running one holds its output pipe in the daemon.
    let daemon = Daemon::spawn(wrapped(&["prlimit", "--nofile=24:24"], &config));
    let mut clients: Vec<_> = (0..30).map(|_| daemon.connect("hold")).collect();
    daemon.wait_for_line("hold/tcp: accept failed error=\"Too many open files\"");
    for (n, client) in clients.iter_mut().enumerate() {
        writeln!(client, "client{n}").unwrap();
    }
    for (n, client) in clients.iter_mut().enumerate() {
        assert_eq!(read_line(client), format!("done client{n}"), "client {n}");
    }
    assert!(
        !daemon
            .lines()
            .iter()
            .any(|l| l.contains("refused") || l.contains("fork failed")),
        "{:#?}",
        daemon.lines()
    );
}

/// A cgroup (v1 pids controller) limiting how many processes rinetd and its handlers may have.
struct PidsCgroup {
    path: PathBuf,
}

impl PidsCgroup {
    fn new(test: &str, max: u32) -> Option<PidsCgroup> {
        let base = Path::new("/sys/fs/cgroup/pids");
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let path = base.join(format!("rinetd-test-{test}-{}", std::process::id()));
        fs::create_dir(&path).ok()?;
        fs::write(path.join("pids.max"), max.to_string()).ok()?;
        Some(PidsCgroup { path })
    }

    fn add(&self, pid: i32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

#[test]
fn when_fork_fails_the_daemon_backs_off_and_serves_again() {
    // Root only: creating a cgroup needs it (and a pids controller mounted at the v1 place).
    let cgroup = match is_root().then(|| PidsCgroup::new("fork", 3)).flatten() {
        Some(cgroup) => cgroup,
        None => {
            eprintln!("skipped: needs root and the cgroup v1 pids controller to make fork fail");
            return;
        }
    };
    let dir = TestDir::new("fork-fails");
    let daemon = Daemon::start(&dir, &[holding_service(&dir)]);
    cgroup.add(daemon.pid());
    // The daemon and two handlers fill the cgroup; the third fork fails.
    let mut first = daemon.connect("hold");
    let mut second = daemon.connect("hold");
    daemon.accepted("hold", &first);
    daemon.accepted("hold", &second);
    let mut third = daemon.connect("hold");
    writeln!(third, "z").unwrap();
    let failed = daemon.wait_for_line("hold/tcp: fork failed error=");
    for client in [&mut first, &mut second] {
        writeln!(client, "x").unwrap();
        assert_eq!(read_line(client), "done x");
    }
    // The connection fork failed for was kept, not closed: it is served once fork works again.
    assert_eq!(read_line(&mut third), "done z");
    daemon.wait_for_line_after(&failed, "hold/tcp: spawn recovered failures=");
    let mut later = daemon.connect("hold");
    writeln!(later, "y").unwrap();
    assert_eq!(
        read_line(&mut later),
        "done y",
        "served again after the backoff"
    );
}

#[test]
fn fork_failure_accepts_and_closes_a_connection_per_backoff() {
    // While fork keeps failing, the clients stay in the backlog: none is accepted only to be
    // closed, and each is served once fork works again.
    let cgroup = match is_root()
        .then(|| PidsCgroup::new("fork-backlog", 2))
        .flatten()
    {
        Some(cgroup) => cgroup,
        None => {
            eprintln!("skipped: needs root and the cgroup v1 pids controller to make fork fail");
            return;
        }
    };
    let dir = TestDir::new("fork-fails-backlog");
    let daemon = Daemon::start(&dir, &[holding_service(&dir)]);
    cgroup.add(daemon.pid());
    // The daemon and one handler fill the cgroup.
    let mut first = daemon.connect("hold");
    daemon.accepted("hold", &first);
    let mut waiting: Vec<_> = (0..5).map(|_| daemon.connect("hold")).collect();
    for (n, client) in waiting.iter_mut().enumerate() {
        writeln!(client, "w{n}").unwrap();
    }
    let mut seen = daemon.wait_for_line("hold/tcp: fork failed error=");
    // Let the back-off come round twice more while fork still fails.
    wait_until("two more spawn attempts have failed", || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.pid()),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        seen = daemon.wait_for_line_after(&seen, "hold/tcp: status ");
        seen.field("spawn_failures").parse::<u64>().unwrap() >= 3
    });
    writeln!(first, "x").unwrap();
    assert_eq!(read_line(&mut first), "done x");
    for (n, client) in waiting.iter_mut().enumerate() {
        assert_eq!(read_line(client), format!("done w{n}"), "client {n}");
    }
}

#[test]
fn a_non_root_daemon_runs_handlers_that_name_its_own_user() {
    if !is_root() {
        eprintln!("skipped: needs root to start rinetd as nobody");
        return;
    }
    let dir = TestDir::new("own-user");
    let script = dir.script("id.sh", "id -u; id -g");
    let config = dir.services_config(&[Service::new("id", &script)
        .set("user", "nobody")
        .set("group", "nogroup")]);
    let as_nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];
    let daemon = Daemon::spawn(wrapped(&as_nobody, &config));
    assert_eq!(daemon.request("id", ""), "65534\n65534\n");
}

#[test]
fn with_proxy_protocol_descriptor_exhaustion_drops_connections() {
    let dir = TestDir::new("emfile-proxy");
    let config = dir.services_config(&[holding_service(&dir).set("proxy_protocol", "true")]);
    let daemon = Daemon::spawn(wrapped(&["prlimit", "--nofile=64:64"], &config));
    let mut clients: Vec<_> = (0..120).map(|_| daemon.connect("hold")).collect();
    for (n, client) in clients.iter_mut().enumerate() {
        write!(
            client,
            "PROXY TCP4 192.0.2.1 192.0.2.2 {} 80\r\nclient{n}\n",
            1000 + n
        )
        .unwrap();
    }
    for (n, client) in clients.iter_mut().enumerate() {
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(client), &mut answer).unwrap();
        assert_eq!(answer, format!("done client{n}\n"), "client {n}");
    }
}
