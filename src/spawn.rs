//! Parent side of starting a handler: builds argv, envp (the connection's address variables
//! too), limits and credentials for one connection, datagram or wait-mode socket, starts the
//! child with every signal blocked, and hands back its pid and the reading end of its output
//! pipe. The child side is `exec.rs`.
//!
//! The child is started the way posix_spawn does it, clone(CLONE_VM | CLONE_VFORK): it borrows
//! rinetd's memory until it execs, so rinetd's page tables are never copied and no page of
//! rinetd's is copied-on-write afterwards. This halves rinetd's CPU time per connection
//! (bench/run.sh: about 115 us with fork, about 50 us with this).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::unistd::{Pid, pipe2};

use std::net::{IpAddr, SocketAddr};

use crate::config::{Protocol, Resource, StderrMode};
use crate::exec::{ChildPlan, exec_handler};
use crate::service::{Argv, ExecPlan};
use crate::signals;

/// What a handler gets on its descriptors.
pub enum Stdio {
    /// nowait stream: the connection is fd 0 and fd 1 (and fd 2 with `stderr: socket`).
    Connection(RawFd),
    /// wait, or a supervised program with sockets: the sockets are fds 3, 4, … with
    /// LISTEN_FDS, and the first of them is fd 0 and 1 too.
    Listening(Vec<RawFd>),
    /// A UDP datagram: stdin reads it, stdout (and stderr with `stderr: socket`) is the reply.
    Datagram { request: RawFd, reply: RawFd },
    /// A supervised program without a socket: stdin is /dev/null, stdout goes to `stdout`
    /// (a pipe to the log; /dev/null with `stderr: null`).
    Detached { stdout: RawFd },
}

/// The most sockets one handler can be given (fds 3 to 3 + MAX_SOCKETS - 1).
pub const MAX_SOCKETS: usize = crate::exec::MAX_SOCKETS;

/// Starts handlers: what every handler gets from rinetd's own start-up state, prepared once.
pub struct Spawner {
    dev_null: OwnedFd,
    /// RLIMIT_NOFILE as rinetd found it, given back to handlers that do not set `nofile`.
    original_nofile: (u64, u64),
    reset_signals: Vec<libc::c_int>,
    child_stack: ChildStack,
    /// rinetd's PR_GET_DUMPABLE at start, put back after a child that switched credentials
    /// while sharing rinetd's memory.
    dumpable: bool,
    /// False when fs.suid_dumpable is 1: a handler's user could then ptrace its child between
    /// setuid and exec, and with shared memory reach rinetd's; such children are forked.
    memory_sharing_is_safe: bool,
    /// A child that shares rinetd's memory also starts on its descriptor table (CLONE_FILES)
    /// and copies only the descriptors it uses (see `ChildPlan::unshare_below`): on Linux 6.11
    /// and later, where close_range's CLOSE_RANGE_UNSHARE is fast and no longer corrupts the
    /// copy's bitmap of open descriptors (fixed in 6.11; older kernels keep the plain path).
    table_sharing_works: bool,
    /// What each spawn builds, kept between spawns so that starting a handler allocates
    /// nothing once warmed up (the loop is single-threaded: one spawn at a time).
    scratch: RefCell<Scratch>,
}

/// The per-spawn buffers: `NAME=value\0` entries of the connection's variables back to back,
/// and the pointer arrays handed to the child.
#[derive(Default)]
struct Scratch {
    env: Vec<u8>,
    /// Where each entry of `env` starts.
    starts: Vec<usize>,
    envp: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    groups: Vec<libc::gid_t>,
    listen_pid: Vec<u8>,
}

impl Spawner {
    /// Call after rinetd's own signal handlers are installed: they are among those reset.
    pub fn new(original_nofile: (u64, u64)) -> io::Result<Spawner> {
        Ok(Spawner {
            dev_null: OwnedFd::from(
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")?,
            ),
            original_nofile,
            reset_signals: signals::to_reset_in_child(),
            child_stack: ChildStack::new()?,
            dumpable: nix::sys::prctl::get_dumpable().unwrap_or(true),
            memory_sharing_is_safe: std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
                .map_or(true, |value| value.trim() != "1"),
            table_sharing_works: kernel_at_least(6, 11) && close_range_unshares(),
            scratch: RefCell::new(Scratch::default()),
        })
    }

    /// Whether handlers start on rinetd's descriptor table and copy only the descriptors
    /// they use (all of them: with fs.suid_dumpable 1, some are forked instead).
    pub fn starts_on_shared_table(&self) -> bool {
        self.table_sharing_works && self.memory_sharing_is_safe
    }
}

/// `REMOTE_*`/`LOCAL_*` (and for TCP the UCSPI `TCP*` names) of the contract, in its order.
/// Each address and port is formatted once; the TCP names take copies of the same text.
pub fn address_vars(
    protocol: Protocol,
    remote: SocketAddr,
    local: SocketAddr,
) -> Vec<(&'static str, String)> {
    let (remote_ip, remote_port) = (ip_text(remote.ip()), remote.port().to_string());
    let (local_ip, local_port) = (ip_text(local.ip()), local.port().to_string());
    let tcp = protocol == Protocol::Tcp;
    let mut vars = Vec::with_capacity(if tcp { 8 } else { 4 });
    if tcp {
        vars.extend([
            ("REMOTE_ADDR", remote_ip.clone()),
            ("REMOTE_PORT", remote_port.clone()),
            ("LOCAL_ADDR", local_ip.clone()),
            ("LOCAL_PORT", local_port.clone()),
            ("TCPREMOTEIP", remote_ip),
            ("TCPREMOTEPORT", remote_port),
            ("TCPLOCALIP", local_ip),
            ("TCPLOCALPORT", local_port),
        ]);
    } else {
        vars.extend([
            ("REMOTE_ADDR", remote_ip),
            ("REMOTE_PORT", remote_port),
            ("LOCAL_ADDR", local_ip),
            ("LOCAL_PORT", local_port),
        ]);
    }
    vars
}

/// An address as `Display` writes it. IPv4, the common case, without the formatting
/// machinery (which costs about ten times as much per address); IPv6 through `Display`.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Gives the free pages inside the heap back to the system. Loading a table builds and
/// drops its parsed form (a tree of small allocations about twice the size of what is kept);
/// glibc returns freed memory only from the heap's top, so without this the holes stay
/// resident for the daemon's life. Here because rinetd allows `unsafe` only in a few modules,
/// and this one already manages rinetd's own memory (the children borrow it).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks and madvises free
    // pages away; it touches no memory the program holds. rinetd is single-threaded.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The pipe a handler's stderr (or its exec failure report) comes back through. Made before the
/// connection is accepted, so that running out of descriptors leaves the connection waiting in
/// the backlog instead of accepting it and then dropping it.
pub struct OutputPipe {
    reader: OwnedFd,
    writer: OwnedFd,
}

impl OutputPipe {
    /// The end the handler writes to.
    pub fn writer_fd(&self) -> RawFd {
        self.writer.as_raw_fd()
    }

    /// The reading and the writing end.
    pub fn into_ends(self) -> (OwnedFd, OwnedFd) {
        (self.reader, self.writer)
    }

    pub fn new() -> io::Result<OutputPipe> {
        let (reader, writer) = pipe2(OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(OutputPipe { reader, writer })
    }
}

pub struct Spawned {
    pub pid: Pid,
    /// Reading end of the pipe carrying the handler's stderr (`stderr: log`) or only the
    /// report of a failed exec; end of file on it once the handler and its heirs close it.
    pub output: OwnedFd,
    /// A pidfd of the handler, readable once it exits, so that it is reaped by its pid alone:
    /// `waitpid(-1)` scans every child, which made each reap cost in proportion to the handlers
    /// running. None where the kernel has no pidfd_open (before 5.3) or no descriptor was free (it
    /// is taken before the pipe's writing end is closed: the fallback serves such a handler).
    pub pidfd: Option<OwnedFd>,
}

/// `LISTEN_PID=` followed by room for the digits of any pid and a NUL.
const LISTEN_PID_SLOT: &[u8] = b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0";

fn libc_resource(resource: Resource) -> libc::c_int {
    (match resource {
        Resource::Nofile => libc::RLIMIT_NOFILE,
        Resource::Nproc => libc::RLIMIT_NPROC,
        Resource::Cpu => libc::RLIMIT_CPU,
        Resource::As => libc::RLIMIT_AS,
        Resource::Core => libc::RLIMIT_CORE,
        Resource::Fsize => libc::RLIMIT_FSIZE,
        Resource::Data => libc::RLIMIT_DATA,
        Resource::Stack => libc::RLIMIT_STACK,
    }) as libc::c_int
}

impl Spawner {
    /// Starts a handler of the service named `service`. `vars` are the per-connection
    /// environment variables (REMOTE_ADDR …); `env`/`pass_env` entries of the same name win
    /// over them and over RINETD_SERVICE.
    pub fn spawn(
        &self,
        plan: &ExecPlan,
        service: &str,
        stdio: Stdio,
        vars: &[(&str, String)],
        pipe: OutputPipe,
    ) -> io::Result<Spawned> {
        let Spawner {
            dev_null,
            original_nofile,
            reset_signals,
            ..
        } = self;
        let mut scratch = self.scratch.borrow_mut();
        let Scratch {
            env,
            starts,
            envp,
            argv,
            rlimits,
            groups,
            listen_pid,
        } = &mut *scratch;
        // The connection's variables as `NAME=value\0` entries in one reused buffer (an entry
        // holding a NUL cannot be passed and is left out, as CString::new would refuse it).
        env.clear();
        starts.clear();
        let named = std::iter::once(("RINETD_SERVICE", service));
        for (name, value) in named.chain(vars.iter().map(|(name, value)| (*name, value.as_str()))) {
            if plan
                .overridden
                .binary_search_by(|k| k.as_str().cmp(name))
                .is_ok()
                || name.contains('\0')
                || value.contains('\0')
            {
                continue;
            }
            starts.push(env.len());
            env.extend_from_slice(name.as_bytes());
            env.push(b'=');
            env.extend_from_slice(value.as_bytes());
            env.push(0);
        }
        listen_pid.clear();
        listen_pid.extend_from_slice(LISTEN_PID_SLOT);
        // Both pointers come from one `as_mut_ptr`: the child writes through one, execve reads the
        // other.
        let listen_pid_entry = listen_pid.as_mut_ptr();
        let listen_pid_ptr: *const libc::c_char = listen_pid_entry.cast_const().cast();
        let null = dev_null.as_raw_fd();
        let (stdin, stdout, socket, listening) = match &stdio {
            Stdio::Connection(fd) => (*fd, *fd, *fd, &[][..]),
            Stdio::Listening(fds) => match fds.first() {
                Some(first) if fds.len() <= MAX_SOCKETS => (*first, *first, *first, &fds[..]),
                _ => {
                    return Err(io::Error::other(
                        "between 1 and 16 sockets can be handed over",
                    ));
                }
            },
            Stdio::Datagram { request, reply } => (*request, *reply, *reply, &[][..]),
            Stdio::Detached { stdout } if plan.stderr == StderrMode::Null => {
                (null, null, null, &[][..])
            }
            Stdio::Detached { stdout } => (null, *stdout, null, &[][..]),
        };
        let handed_over = !listening.is_empty();
        // `env` is complete: pointers into it stay valid until the next spawn clears it.
        let base = env.as_ptr();
        envp.clear();
        envp.extend(plan.fixed_env.iter().map(|s| s.as_ptr()));
        envp.extend(
            starts
                .iter()
                .map(|start| base.wrapping_add(*start).cast::<libc::c_char>()),
        );
        envp.extend(handed_over.then_some(listen_pid_ptr));
        envp.push(std::ptr::null());
        argv.clear();
        match &plan.argv {
            Argv::FileName => {
                let path = plan.path.to_bytes();
                let start = path
                    .iter()
                    .rposition(|&byte| byte == b'/')
                    .map_or(0, |at| at + 1);
                argv.push(plan.path.as_ptr().wrapping_add(start));
            }
            Argv::Given(list) => argv.extend(list.iter().map(|s| s.as_ptr())),
        }
        argv.push(std::ptr::null());
        rlimits.clear();
        rlimits.extend(plan.rlimits.iter().map(|(r, v)| {
            let value = v.unwrap_or(libc::RLIM_INFINITY);
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            (libc_resource(*r), limit)
        }));
        if !plan.rlimits.iter().any(|(r, _)| *r == Resource::Nofile) {
            // Soft and hard as rinetd found them, not the raised soft limit rinetd runs with.
            let found = libc::rlimit {
                rlim_cur: original_nofile.0,
                rlim_max: original_nofile.1,
            };
            rlimits.push((libc::RLIMIT_NOFILE as libc::c_int, found));
        }
        groups.clear();
        let credentials = plan.credentials.as_ref().map(|c| {
            groups.push(c.gid);
            groups.extend_from_slice(&c.other_groups);
            (&groups[..], c.gid, c.uid)
        });
        let OutputPipe {
            reader: output,
            writer: output_writer,
        } = pipe;
        let (stderr, report) = match plan.stderr {
            // Without a socket there is nowhere else for stderr than the log.
            StderrMode::Log | StderrMode::Socket if socket == null => {
                (output_writer.as_raw_fd(), 2)
            }
            StderrMode::Log => (output_writer.as_raw_fd(), 2),
            StderrMode::Socket => (socket, output_writer.as_raw_fd()),
            StderrMode::Null => (null, output_writer.as_raw_fd()),
        };
        let share_memory = plan.credentials.is_none() || self.memory_sharing_is_safe;
        // Every descriptor the child uses, and so the most it needs of rinetd's table.
        let used = [stdin, stdout, stderr, report]
            .into_iter()
            .chain(listening.iter().copied());
        let unshare_below = (share_memory && self.table_sharing_works)
            .then(|| used.max().map_or(3, |highest| highest + 1));
        let files = if unshare_below.is_some() {
            libc::CLONE_FILES
        } else {
            0
        };
        let mut failed_errno: libc::c_int = 0;
        let child_plan = ChildPlan {
            path: &plan.path,
            argv,
            envp,
            stdin,
            stdout,
            stderr,
            listening,
            // SAFETY (of the pointer arithmetic): the entry is LISTEN_PID_SLOT long, so the digits'
            // room starts inside it and holds 11 bytes.
            listen_pid: handed_over.then(|| listen_pid_entry.wrapping_add(b"LISTEN_PID=".len())),
            report,
            reset_signals,
            rlimits,
            nice: plan.nice,
            umask: plan.umask as libc::mode_t,
            cwd: &plan.cwd,
            credentials,
            unshare_below,
            failed_errno: if share_memory {
                &raw mut failed_errno
            } else {
                std::ptr::null_mut()
            },
        };
        // With every signal blocked until the child has reset them, a signal meant for it cannot
        // run rinetd's handlers in it (they would write to rinetd's own self-pipe).
        let saved = signals::block_all();
        let started = if share_memory {
            // SAFETY: this is posix_spawn's technique. With CLONE_VM the child runs in rinetd's
            // memory on the reserved stack, and with CLONE_VFORK rinetd stays suspended until the
            // child has exec'd or exited, so nothing else touches that memory (or the stack)
            // meanwhile. The child only runs `exec_handler`: raw async-signal-safe syscalls on the
            // plan (which outlives the call), no allocation, no lock; it writes only its stack,
            // errno and the LISTEN_PID slot made for it. Every signal is blocked until it has reset
            // them. SIGCHLD makes it an ordinary child for waitpid. With CLONE_FILES it starts on
            // rinetd's descriptor table, and its first step (`unshare_below`) gives it a copy of
            // its own before it changes any descriptor.
            unsafe {
                libc::clone(
                    run_child,
                    self.child_stack.top(),
                    libc::CLONE_VM | libc::CLONE_VFORK | files | libc::SIGCHLD,
                    (&raw const child_plan).cast_mut().cast(),
                )
            }
        } else {
            // SAFETY: rinetd is single-threaded and the child only runs `exec_handler` (see above)
            // on its own copy of the memory.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => exec_handler(&child_plan),
                Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
                Err(_) => -1,
            }
        };
        let error = std::io::Error::last_os_error();
        signals::restore_mask(saved);
        if share_memory && plan.credentials.is_some() {
            // The child's setuid set the dumpable flag of the memory it shared: rinetd's own.
            let _ = nix::sys::prctl::set_dumpable(self.dumpable);
        }
        if started < 0 {
            return Err(error);
        }
        // SAFETY: the slot is this function's local; the child wrote it (if it failed) before
        // exiting, which it has done if it failed, since CLONE_VFORK only then let rinetd go on.
        // Volatile: it was written behind the compiler's back.
        let failed = unsafe { (&raw const failed_errno).read_volatile() };
        if is_resource_shortage(failed) {
            // The handler's user is out of processes (RLIMIT_NPROC is checked at execve) or the
            // machine out of memory or descriptors: as when fork fails, the caller keeps the
            // client and backs off instead of losing it. The child has exited: reaped here, it
            // is never taken for a handler.
            let _ = nix::sys::wait::waitpid(Pid::from_raw(started), None);
            return Err(io::Error::from_raw_os_error(failed));
        }
        let pidfd = pidfd_open(started).ok();
        drop(output_writer);
        Ok(Spawned {
            pid: Pid::from_raw(started),
            output,
            pidfd,
        })
    }
}

/// How a child ended, in the kernel's numbers: nix's `WaitStatus` has no room for a signal it
/// cannot name (a real-time one) and fails on it after the child is already reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
}

/// Reaps the child behind `pidfd` if it has ended; None while it runs. An error means
/// `waitid(P_PIDFD)` is refused here (Linux before 5.4, a sandbox): the caller reaps otherwise.
pub fn reap_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<Ending>> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value (plain integers and unions of them).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG;
        // SAFETY: waitid writes only `info`, which lives across the call.
        let result = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if result < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid filled in a SIGCHLD siginfo, or left it zeroed when nothing ended;
        // these are the fields a SIGCHLD siginfo has.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(if info.si_code == libc::CLD_EXITED {
            Ending::Exited(status)
        } else {
            Ending::Signaled(status)
        }));
    }
}

/// Reaps one child, any child, that has ended; None when none has.
pub fn reap_any() -> io::Result<Option<(Pid, Ending)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only `status`, which lives across the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return Ok(None);
        }
        if pid < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(err),
            }
        }
        // Without WUNTRACED or WCONTINUED, waitpid reports only ends.
        let ending = if libc::WIFSIGNALED(status) {
            Ending::Signaled(libc::WTERMSIG(status))
        } else {
            Ending::Exited(libc::WEXITSTATUS(status))
        };
        return Ok(Some((Pid::from_raw(pid), ending)));
    }
}

/// Whether the running kernel is `major.minor` or later (by /proc/sys/kernel/osrelease).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release_at_least(&release, major, minor)
}

/// Whether kernel release `release` ("6.18.44-fc", "5.10.0-28-amd64") is `major.minor` or
/// later; false when it cannot tell.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(found_major), Some(found_minor)) => (found_major, found_minor) >= (major, minor),
        _ => false,
    }
}

/// Whether close_range knows CLOSE_RANGE_UNSHARE. Asked on rinetd's own table, which nothing
/// shares, with a range holding no descriptor: it changes nothing either way.
fn close_range_unshares() -> bool {
    let last = libc::c_uint::MAX;
    // SAFETY: close_range on an empty range touches no descriptor and no memory of ours.
    let result =
        unsafe { libc::syscall(libc::SYS_close_range, last, last, libc::CLOSE_RANGE_UNSHARE) };
    result == 0
}

/// Where descriptors that live as long as their handler are moved once many handlers run:
/// above the ones a handler is started with (connections, pipes and listeners take the lowest
/// free numbers), so that a start copies few descriptors however many handlers run.
const LASTING_FROM: RawFd = 4096;

/// `fd` moved to LASTING_FROM or above; as it was where that is not possible (a lower
/// RLIMIT_NOFILE, say).
pub fn move_up(fd: OwnedFd) -> OwnedFd {
    match nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(LASTING_FROM)) {
        // SAFETY: the descriptor was just made for us and nothing else owns it; `fd`, the old
        // number, is closed as it drops.
        Ok(moved) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) },
        Err(_) => fd,
    }
}

/// A pidfd for child `pid`, which is not reaped yet: until it is, its pid is its own, so the
/// pidfd names the handler and nothing else. Close-on-exec, as every pidfd is.
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, touches no memory of ours, and returns a new
    // descriptor (owned from here on) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just made for us and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// A setup step or exec that failed for want of a resource that comes back by itself.
fn is_resource_shortage(errno: libc::c_int) -> bool {
    matches!(
        errno,
        libc::EAGAIN | libc::ENOMEM | libc::ENFILE | libc::EMFILE
    )
}

/// The stack a child runs on between clone and exec: mapped once, with a guard page below it,
/// and reused (rinetd is suspended while a child uses it).
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // The guard must be a whole page of the machine's size (16 KiB or 64 KiB on some
        // arm64 kernels), or mprotect would leave part of it writable.
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| usize::try_from(size).ok())
            .unwrap_or(4096);
        let len = CHILD_STACK + page;
        // SAFETY: a fresh private anonymous mapping, owned by the returned value; the
        // mprotect applies to its first page only.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if libc::mprotect(base, page, libc::PROT_NONE) < 0 {
                let error = io::Error::last_os_error();
                libc::munmap(base, len);
                return Err(error);
            }
            Ok(ChildStack { base, len })
        }
    }

    /// Its 16-byte aligned top: the stack grows down.
    fn top(&self) -> *mut libc::c_void {
        let top = self.base.cast::<u8>().wrapping_add(self.len);
        top.wrapping_sub(top as usize % 16).cast()
    }
}

/// Stack for the child between clone and exec: exec_handler itself needs about 2 KiB
/// (measured); the rest is room for glibc's syscall wrappers.
const CHILD_STACK: usize = 64 * 1024;

/// The child's entry point after clone.
extern "C" fn run_child(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` is the ChildPlan that `spawn` passed to clone; it stays alive until the
    // child has exec'd or exited, since rinetd is suspended until then (CLONE_VFORK).
    let plan = unsafe { &*plan.cast::<ChildPlan<'_>>() };
    exec_handler(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        let remote: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let vars = address_vars(Protocol::Tcp, remote, local);
        let names: Vec<&str> = vars.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "REMOTE_ADDR",
                "REMOTE_PORT",
                "LOCAL_ADDR",
                "LOCAL_PORT",
                "TCPREMOTEIP",
                "TCPREMOTEPORT",
                "TCPLOCALIP",
                "TCPLOCALPORT"
            ]
        );
        assert_eq!(vars[0].1, "192.0.2.10");
        assert_eq!(vars[5].1, "40000");
        let udp = address_vars(Protocol::Udp, remote, local);
        assert_eq!(udp.len(), 4);
        assert_eq!(udp[2], ("LOCAL_ADDR", "127.0.0.1".to_string()));
    }

    #[test]
    fn a_kernel_release_is_compared_by_major_then_minor() {
        assert!(release_at_least("6.18.44-fc-v1045", 6, 11));
        assert!(release_at_least("6.11", 6, 11));
        assert!(release_at_least("7.0.1", 6, 11));
        assert!(!release_at_least("6.10.14-generic", 6, 11));
        assert!(!release_at_least("5.15.0-91-generic", 6, 11));
        assert!(!release_at_least("", 6, 11));
        assert!(!release_at_least("linux", 6, 11));
    }
}
