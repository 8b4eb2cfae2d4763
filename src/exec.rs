//! The child, from clone to execve: only raw async-signal-safe syscalls on data the parent
//! prepared, never an allocation or a lock (it runs in rinetd's own memory, see spawn.rs). It
//! never returns: it execs or `_exit(127)`s.

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_char, c_int, gid_t};

use crate::signals::{KERNEL_DEFAULT, KernelSigaction};

/// Everything the child needs, built by the parent before starting it.
pub struct ChildPlan<'a> {
    pub path: &'a CStr,
    /// NULL-terminated pointer arrays into CStrings the parent keeps alive until the exec.
    pub argv: &'a [*const c_char],
    pub envp: &'a [*const c_char],
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Sockets handed over (`wait: true`, supervised): they become fds 3, 4, … in blocking
    /// mode. At most MAX_SOCKETS.
    pub listening: &'a [RawFd],
    /// The digits of the child's own pid go here (a buffer inside the `LISTEN_PID=` entry of
    /// `envp`, long enough for any pid and its NUL), since the parent cannot know them.
    pub listen_pid: Option<*mut u8>,
    /// Where a setup failure is reported: fd 2 when it is the log pipe, otherwise a
    /// close-on-exec pipe that exec closes on success.
    pub report: RawFd,
    /// Signals to put back to SIG_DFL (see `signals::to_reset_in_child`).
    pub reset_signals: &'a [c_int],
    pub rlimits: &'a [(c_int, libc::rlimit)],
    /// Applied as an absolute value; None keeps rinetd's own.
    pub nice: Option<c_int>,
    pub umask: libc::mode_t,
    pub cwd: &'a CStr,
    pub credentials: Option<(&'a [gid_t], gid_t, libc::uid_t)>,
    /// Where a failing child leaves its errno before it exits, for the parent to read once
    /// CLONE_VFORK lets it go on (it shares this memory); null when the child has its own
    /// memory (fork), and then only the report line tells.
    pub failed_errno: *mut c_int,
    /// Set when the child was started on rinetd's own descriptor table (CLONE_FILES): every
    /// descriptor it uses is below this, and its first step takes a private copy of those
    /// alone. Copying the whole table, and closing it at exec, cost each start in proportion to
    /// the descriptors rinetd holds (two for each running handler).
    pub unshare_below: Option<c_int>,
}

/// The most sockets a child can be handed (the child has no heap to hold more).
pub const MAX_SOCKETS: usize = 16;

/// Prefix of the line a failing child writes to its report fd; the parent logs it as
/// `spawn failed`.
pub const REPORT_PREFIX: &str = "rinetd-spawn: ";

/// Runs in the child after clone (or fork). Steps in the contract's order: session, descriptors, signals,
/// rlimits, nice, umask, cwd, then groups, gid, uid so the drop cannot be undone, then execve.
pub fn exec_handler(plan: &ChildPlan<'_>) -> ! {
    let mut report = plan.report;
    // SAFETY: every call below is a raw async-signal-safe syscall on descriptors and memory the
    // parent prepared and keeps alive while it is suspended (CLONE_VFORK); nothing allocates or
    // takes a lock. Shared memory written here: this stack, errno (rinetd's TLS; rinetd does
    // not read it after a successful clone) and the LISTEN_PID slot made for this child.
    unsafe {
        // Before anything changes a descriptor: until this, the table is rinetd's.
        if let Some(below) = plan.unshare_below
            && libc::syscall(
                libc::SYS_close_range,
                below,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            ) < 0
        {
            fail(plan, report, b"close_range", None);
        }
        libc::setsid();
        if libc::dup2(plan.stdin, 0) < 0
            || libc::dup2(plan.stdout, 1) < 0
            || libc::dup2(plan.stderr, 2) < 0
        {
            fail(plan, report, b"dup2", None);
        }
        let sockets = &plan.listening[..plan.listening.len().min(MAX_SOCKETS)];
        let first_free = 3 + sockets.len() as c_int;
        if !sockets.is_empty() {
            if (3..first_free).contains(&report) {
                report = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, first_free);
            }
            // Every socket is first copied above the target fds, so that no dup2 overwrites a
            // socket still to be placed (one may sit at 3, say).
            let mut above = [0 as RawFd; MAX_SOCKETS];
            for (copy, socket) in above.iter_mut().zip(sockets) {
                *copy = libc::fcntl(*socket, libc::F_DUPFD_CLOEXEC, first_free);
                if *copy < 0 {
                    fail(plan, report, b"dup", None);
                }
            }
            for (target, copy) in (3..first_free).zip(&above) {
                // The copies are close-on-exec, and so is dup2's result: cleared explicitly.
                if libc::dup2(*copy, target) < 0 || libc::fcntl(target, libc::F_SETFD, 0) < 0 {
                    fail(plan, report, b"dup2", None);
                }
                let flags = libc::fcntl(target, libc::F_GETFL);
                libc::fcntl(target, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        let keep_from = first_free as libc::c_uint;
        if let Some(slot) = plan.listen_pid {
            write_decimal(slot, libc::getpid() as u32);
        }
        // Everything else closes at exec (the report pipe too, which is how the parent learns
        // that exec succeeded). Every descriptor of rinetd's is close-on-exec already (see
        // daemon::close_inherited_on_exec); close_range (Linux >= 5.11) makes sure of it, and
        // where it is missing no loop replaces it: rinetd waits while this child runs.
        libc::syscall(
            libc::SYS_close_range,
            keep_from,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        for signal in plan.reset_signals {
            libc::syscall(
                libc::SYS_rt_sigaction,
                *signal,
                &KERNEL_DEFAULT as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        for (resource, limit) in plan.rlimits {
            if libc::setrlimit(*resource as _, limit) < 0 {
                fail(plan, report, b"setrlimit", None);
            }
        }
        if let Some(nice) = plan.nice
            && libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0
        {
            fail(plan, report, b"setpriority", None);
        }
        libc::umask(plan.umask);
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            fail(plan, report, b"chdir", Some(plan.cwd));
        }
        // Raw syscalls, as glibc's own spawn child does: glibc's wrappers may run its setxid
        // machinery (locks and state shared with rinetd, whose memory this child borrows).
        if let Some((groups, gid, uid)) = plan.credentials {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0 {
                fail(plan, report, b"setgroups", None);
            }
            if libc::syscall(libc::SYS_setgid, gid) < 0 {
                fail(plan, report, b"setgid", None);
            }
            if libc::syscall(libc::SYS_setuid, uid) < 0 {
                fail(plan, report, b"setuid", None);
            }
        }
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(plan, report, b"exec", Some(plan.path))
    }
}

/// Writes `n` in decimal and a NUL at `slot`, which has room for 11 bytes.
///
/// # Safety
/// `slot` must point to at least 11 writable bytes.
unsafe fn write_decimal(slot: *mut u8, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..count {
        // SAFETY: count <= 10, so every write stays within the 11 bytes promised.
        unsafe { *slot.add(i) = digits[count - 1 - i] };
    }
    // SAFETY: as above.
    unsafe { *slot.add(count) = 0 };
}

/// Leaves the errno in `plan.failed_errno`, writes `rinetd-spawn: cannot STEP [WHAT]: REASON\n`
/// to `report` and exits 127.
fn fail(plan: &ChildPlan<'_>, report: RawFd, step: &[u8], what: Option<&CStr>) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if !plan.failed_errno.is_null() {
        // SAFETY: the parent made this slot for this child, keeps it alive while it is
        // suspended, and reads it only once the child has exited.
        unsafe { plan.failed_errno.write_volatile(errno) };
    }
    let reason = nix::errno::Errno::from_raw(errno).desc().as_bytes();
    let what = what.map_or(&[][..], CStr::to_bytes);
    let parts: [&[u8]; 8] = [
        REPORT_PREFIX.as_bytes(),
        b"cannot ",
        step,
        if what.is_empty() { b"" } else { b" " },
        what,
        b": ",
        reason,
        b"\n",
    ];
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the slices are live for the calls.
    unsafe {
        for part in parts {
            libc::write(report, part.as_ptr().cast(), part.len());
        }
        libc::_exit(127)
    }
}
