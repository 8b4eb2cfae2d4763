//! The newcomer's path, exactly as the README and `make run` lay it out: the table `make run`
//! writes (under any umask, as root or not) is served without a warning, and the README's `nc`
//! commands, run with Debian's netcat, end with the answers they promise.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    DEADLINE, Daemon, TestDir, all_output, free_port_on_both_families, is_root, rinetd,
};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `make -s run-config RUN_DIR=<run_dir>` under umask 002, as `user` (None: as we are).
fn make_run_config(run_dir: &Path, user: Option<&str>) -> std::process::Output {
    let script = format!(
        "umask 002 && exec make -s -C {} run-config RUN_DIR={}",
        repository().display(),
        run_dir.display()
    );
    let mut command = match user {
        Some(user) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={user}"),
                "--regid=nogroup",
                "--clear-groups",
                "sh",
                "-c",
                &script,
            ]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        }
    };
    command.output().expect("run make")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn make_run_writes_a_table_rinetd_takes_without_a_warning_under_umask_002() {
    let dir = TestDir::new("make-run-config");
    let run_dir = dir.join("run");
    let made = make_run_config(&run_dir, None);
    assert!(made.status.success(), "{}", all_output(&made));
    let table = run_dir.join("rinetd.conf");
    assert_eq!(mode(&run_dir), 0o755);
    assert_eq!(mode(&table), 0o644);
    let checked = rinetd().arg("-t").arg("-c").arg(&table).output().unwrap();
    let text = all_output(&checked);
    assert!(checked.status.success(), "{text}");
    assert_eq!(
        text.trim(),
        format!("{}: OK, 3 services", table.display()),
        "rinetd -t said more than OK"
    );
}

#[test]
fn make_run_as_a_user_other_than_root_is_served_without_a_warning() {
    if !is_root() {
        eprintln!("skipped: needs root to become nobody");
        return;
    }
    // nobody must be able to read the repository to run make in it.
    let readable = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "test",
            "-r",
        ])
        .arg(repository().join("Makefile"))
        .status()
        .expect("run setpriv");
    if !readable.success() {
        eprintln!("skipped: nobody cannot read this checkout");
        return;
    }
    let dir = TestDir::new("make-run-nobody");
    let home = dir.join("nobody");
    fs::create_dir(&home).unwrap();
    nix::unistd::chown(
        &home,
        Some(nix::unistd::User::from_name("nobody").unwrap().unwrap().uid),
        None,
    )
    .unwrap();
    let run_dir = home.join("run");
    let made = make_run_config(&run_dir, Some("nobody"));
    assert!(made.status.success(), "{}", all_output(&made));
    let table = run_dir.join("rinetd.conf");
    assert!(!fs::read_to_string(&table).unwrap().contains("user:"));
    let checked = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_rinetd"))
        .arg("-t")
        .arg("-c")
        .arg(&table)
        .output()
        .unwrap();
    let text = all_output(&checked);
    assert!(checked.status.success(), "{text}");
    assert_eq!(text.trim(), format!("{}: OK, 3 services", table.display()));
}

/// The `nc` lines of the README's "Try it" block: (arguments, comment).
fn readme_nc_commands() -> Vec<(Vec<String>, String)> {
    let readme = fs::read_to_string(repository().join("README.md")).unwrap();
    let section = readme
        .split("## Try it")
        .nth(1)
        .expect("the README has a \"Try it\" section");
    section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with("nc "))
        .map(|line| {
            let (command, comment) = line.split_once('#').unwrap_or((line, ""));
            let words = command.split_whitespace().map(String::from).collect();
            (words, comment.trim().to_string())
        })
        .collect()
}

/// Waits for `child` up to `DEADLINE`; its stdout, or a failure naming `what`.
fn finished_output(mut child: Child, what: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert!(status.success(), "{what}: {status}");
            return out;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: nc did not end within {DEADLINE:?}, as the README says it does");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_readme_nc_commands_end_with_the_answers_they_promise() {
    if Command::new("nc").arg("-h").output().is_err() {
        eprintln!("skipped: nc is not installed (make deps installs netcat-openbsd)");
        return;
    }
    let dir = TestDir::new("readme-nc");
    let run_dir = dir.join("run");
    let made = make_run_config(&run_dir, None);
    assert!(made.status.success(), "{}", all_output(&made));
    // The sample's ports, moved to free ones so that the test never meets a real `make run`.
    let mut table = fs::read_to_string(run_dir.join("rinetd.conf")).unwrap();
    let mut ports = std::collections::BTreeMap::new();
    for sample in ["8080", "8081", "8007"] {
        let free = free_port_on_both_families().to_string();
        table = table.replace(&format!("port: {sample}\n"), &format!("port: {free}\n"));
        ports.insert(sample.to_string(), free);
    }
    let config = dir.config(&table);
    let daemon = Daemon::spawn(Daemon::command(&config));

    let commands = readme_nc_commands();
    assert_eq!(commands.len(), 4, "the README's nc lines: {commands:?}");
    for (words, comment) in commands {
        let mut args: Vec<String> = words[1..].to_vec();
        let port = args.pop().unwrap();
        args.push(ports[&port].clone());
        let mut nc = Command::new("nc")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run nc");
        let what = words.join(" ");
        let echo = comment.starts_with("echo:");
        if echo {
            // Typing a line, then Ctrl-D.
            nc.stdin.as_mut().unwrap().write_all(b"typed\n").unwrap();
            drop(nc.stdin.take());
        }
        // Otherwise stdin stays open, as a terminal's does: the service ends the connection.
        let out = finished_output(nc, &what);
        if echo {
            assert_eq!(out, "typed\n", "{what}");
        } else if comment.starts_with("hello:") {
            assert!(out.starts_with("hello from rinetd"), "{what}: {out}");
        } else if args.contains(&"::1".to_string()) {
            assert!(out.starts_with("you are [::1]:"), "{what}: {out}");
            assert!(out.ends_with(&format!("talking to [::1]:{}\n", ports["8081"])));
        } else {
            assert!(out.starts_with("you are 127.0.0.1:"), "{what}: {out}");
        }
    }
    assert!(
        !daemon.lines().iter().any(|line| line.contains("warning")),
        "make run's table gave warnings:\n{}",
        daemon.lines().join("\n")
    );
}

#[test]
fn help_points_to_the_man_pages_and_every_value_it_lists_is_accepted() {
    let help = rinetd().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(
        text.contains("rinetd(8)") && text.contains("rinetd.conf(5)"),
        "{text}"
    );
    assert!(
        !text.contains("xinetd compatible"),
        "--help promises to run xinetd files, which --format refuses:\n{text}"
    );
    // Each value --help lists for an option is one the option takes.
    let dir = TestDir::new("help-values");
    let table = dir.config("services: []\n");
    let inetd = dir.write("inetd.conf", "# nothing\n", 0o644);
    for line in text.lines() {
        let Some(values) = line.split("[possible values: ").nth(1) else {
            continue;
        };
        let option = line
            .split_whitespace()
            .find(|word| word.starts_with("--"))
            .unwrap()
            .trim_end_matches(',');
        for value in values.trim_end_matches(']').split(", ") {
            let file = if option == "--format" && value == "inetd" {
                &inetd
            } else {
                &table
            };
            let out = rinetd()
                .args(["-t", option, value, "-c"])
                .arg(file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{option} {value}: {}",
                all_output(&out)
            );
        }
    }
}
