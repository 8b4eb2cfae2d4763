//! `protocol: unix`: the socket file (its mode, a stale one replaced, a foreign file or a live
//! socket left alone, removal at stop) and the handler's environment without IP addresses.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::harness::{
    DEADLINE, Daemon, EX_CONFIG, Service, TestDir, all_output, check_config, rinetd, run_to_exit,
};

/// Connects to the socket at `path`, sends `input`, half-closes and reads up to EOF.
fn unix_exchange(path: &Path, input: &str) -> String {
    let mut client =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.write_all(input.as_bytes()).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).expect("read until EOF");
    answer
}

fn assert_socket_with_mode(path: &Path, mode: u32) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        mode,
        "mode of {}: {:o}",
        path.display(),
        meta.permissions().mode() & 0o7777
    );
}

fn hello(dir: &TestDir) -> std::path::PathBuf {
    dir.script("hello.sh", "echo hello")
}

#[test]
fn unix_socket_gets_its_mode_and_handlers_get_proto_unix_without_addresses() {
    let dir = TestDir::new("unix-basic");
    let environ = dir.script("environ.sh", "tr '\\0' '\\n' </proc/$$/environ");
    let private = dir.join("private.sock");
    let public = dir.join("public.sock");
    let daemon = Daemon::start(
        &dir,
        &[
            Service::unix("private", &environ, &private).set("socket_mode", "\"0600\""),
            Service::unix("public", &hello(&dir), &public),
        ],
    );
    daemon.wait_for_line(&format!(
        "private/unix: listening address={}",
        private.display()
    ));
    assert_socket_with_mode(&private, 0o600);
    assert_socket_with_mode(&public, 0o666);

    let answer = unix_exchange(&private, "");
    let environment: BTreeMap<&str, &str> = answer
        .lines()
        .map(|line| line.split_once('=').expect("NAME=value"))
        .collect();
    assert_eq!(environment.get("PROTO"), Some(&"UNIX"));
    assert_eq!(environment.get("RINETD_SERVICE"), Some(&"private"));
    let addresses: Vec<&&str> = environment
        .keys()
        .filter(|name| {
            name.starts_with("REMOTE_") || name.starts_with("LOCAL_") || name.starts_with("TCP")
        })
        .collect();
    assert!(
        addresses.is_empty(),
        "address variables over UNIX: {addresses:?}"
    );
    let accepted = daemon.wait_for_line("private/unix: accepted client=unix pid=");
    daemon.wait_for_line(&format!(
        "private/unix: exited pid={} status=0 ",
        accepted.pid()
    ));

    assert_eq!(unix_exchange(&public, ""), "hello\n");
}

#[test]
fn a_stale_socket_file_is_replaced_at_start() {
    let dir = TestDir::new("unix-stale");
    let path = dir.join("stale.sock");
    drop(UnixListener::bind(&path).expect("bind a socket to leave behind"));
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let _daemon = Daemon::start(&dir, &[Service::unix("local", &hello(&dir), &path)]);
    assert_eq!(unix_exchange(&path, ""), "hello\n");
}

#[test]
fn a_socket_someone_listens_on_is_left_to_them() {
    let dir = TestDir::new("unix-in-use");
    let path = dir.join("busy.sock");
    let owner = UnixListener::bind(&path).expect("bind the socket");
    let daemon = Daemon::start(&dir, &[Service::unix("local", &hello(&dir), &path)]);
    daemon.wait_for_line(&format!(
        "local/unix: bind failed address={} ",
        path.display()
    ));
    let _client = UnixStream::connect(&path).expect("connect");
    owner.set_nonblocking(true).unwrap();
    assert!(
        owner.accept().is_ok(),
        "the connection did not reach the process that owns the socket"
    );
}

#[test]
fn a_regular_file_at_the_path_is_a_configuration_error() {
    let dir = TestDir::new("unix-regular-file");
    let path = dir.write("not-a-socket", "precious data\n", 0o644);
    let config = dir.services_config(&[Service::unix("local", &hello(&dir), &path)]);

    let output = check_config(&config);
    assert_eq!(
        output.status.code(),
        Some(EX_CONFIG),
        "{}",
        all_output(&output)
    );
    assert!(
        all_output(&output).contains("is not a socket"),
        "{}",
        all_output(&output)
    );

    let (status, stderr) = run_to_exit(&dir, rinetd().arg("-f").arg("-c").arg(&config));
    assert_eq!(status.code(), Some(EX_CONFIG), "{stderr}");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "precious data\n",
        "the file was touched"
    );
}

#[test]
fn the_socket_file_is_removed_at_stop() {
    let dir = TestDir::new("unix-stop");
    let path = dir.join("gone.sock");
    let mut daemon = Daemon::start(&dir, &[Service::unix("local", &hello(&dir), &path)]);
    assert_eq!(unix_exchange(&path, ""), "hello\n");
    assert!(daemon.stop().success());
    assert!(
        fs::symlink_metadata(&path).is_err(),
        "{} left behind",
        path.display()
    );
}
