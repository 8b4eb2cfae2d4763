//! Process plumbing around the server: detaching into the background with a readiness pipe to
//! the waiting parent, the pidfile, standard descriptors and the NOFILE limit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{ForkResult, fork, pipe2, setsid};

/// Held by the detached daemon: tells the waiting parent how the start went.
pub struct Readiness {
    pipe: File,
}

impl Readiness {
    /// Start succeeded: the parent exits 0.
    pub fn ready(mut self) {
        let _ = self.pipe.write_all(&[0]);
    }

    /// Start failed: the parent prints `message` and exits with `code`.
    pub fn failed(mut self, code: u8, message: &str) {
        let _ = self.pipe.write_all(&[code]);
        let _ = self.pipe.write_all(message.as_bytes());
    }
}

/// Forks into the background. The parent waits for the child's verdict and exits with it; it
/// never returns. The child returns, in a new session, with cwd `/` and stdin/stdout on
/// /dev/null (stderr too unless `keep_stderr`).
pub fn detach(keep_stderr: bool) -> std::io::Result<Readiness> {
    let (reader, writer) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: rinetd is still single-threaded here (nothing has started a thread), so the child
    // may go on running ordinary Rust code.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => {
            drop(writer);
            std::process::exit(wait_for_child(reader));
        }
        ForkResult::Child => {
            drop(reader);
            setsid()?;
            std::env::set_current_dir("/")?;
            let null = File::options().read(true).write(true).open("/dev/null")?;
            nix::unistd::dup2_stdin(&null)?;
            nix::unistd::dup2_stdout(&null)?;
            if !keep_stderr {
                nix::unistd::dup2_stderr(&null)?;
            }
            Ok(Readiness {
                pipe: File::from(writer),
            })
        }
    }
}

/// The parent's side: 0 once the daemon says ready; its code and message if it failed; 71 if
/// it died without a word.
fn wait_for_child(reader: OwnedFd) -> i32 {
    let mut verdict = Vec::new();
    let _ = File::from(reader).read_to_end(&mut verdict);
    match verdict.split_first() {
        Some((0, _)) => 0,
        Some((code, message)) => {
            eprintln!("rinetd: {}", String::from_utf8_lossy(message));
            i32::from(*code)
        }
        None => {
            eprintln!("rinetd: the daemon exited during start-up (see its log)");
            71
        }
    }
}

/// Makes sure fds 0, 1 and 2 are open, so no socket of ours can land on them by accident.
pub fn ensure_standard_fds() {
    while let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        if null.as_raw_fd() > 2 {
            break;
        }
        let _ = null.into_raw_fd();
    }
}

/// Raises the NOFILE soft limit to the hard limit; returns the limits as found.
pub fn raise_nofile() -> (u64, u64) {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            (soft, hard)
        }
        Err(_) => (1024, 1024),
    }
}

/// Writes the pid to a temporary name beside `path`, then renames it into place, so that a
/// reader never sees an empty or partial pidfile.
pub fn write_pidfile(path: &Path) -> Result<(), String> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|err| {
            let _ = std::fs::remove_file(&temporary);
            format!("cannot write pidfile {}: {err}", path.display())
        })
}

/// The sockets a service manager passed when it socket-activated rinetd itself (sd_listen_fds:
/// `LISTEN_PID` is this process, `LISTEN_FDS` counts descriptors from fd 3). They become
/// close-on-exec so that no handler inherits them.
pub fn inherited_sockets() -> Vec<socket2::Socket> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|_| ours)
        .unwrap_or(0);
    (3..3 + count.clamp(0, 4096))
        .filter_map(|fd| {
            // SAFETY: by the socket-activation protocol these descriptors were handed to this
            // very process (LISTEN_PID) across exec, and nothing else in it has taken them.
            let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let socket = socket2::Socket::from(owned);
            socket.set_cloexec(true).ok()?;
            Some(socket)
        })
        .collect()
}

/// Marks every descriptor rinetd inherited (above 2) close-on-exec, so that no handler gets one.
/// rinetd's own are all opened close-on-exec, so after this the child needs no descriptor loop
/// of its own (its close_range is a second line of defence), which matters because rinetd
/// waits while the child runs until its exec.
pub fn close_inherited_on_exec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(F_SETFD) only changes a flag; a descriptor already closed (the one
        // read_dir used) just fails with EBADF.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}
