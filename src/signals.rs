//! Signals as events: each handler only sets a flag and writes one byte to a self-pipe that the
//! event loop polls; the loop drains the pipe, then acts on the flags.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::unix::pipe;
use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};

/// What arrived since the last drain; several deliveries of one signal coalesce into one flag.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pending {
    pub child: bool,
    pub reload: bool,
    pub stop: bool,
    pub status: bool,
}

/// The signals rinetd catches; a handler gets them back at their default before anything else.
pub const CAUGHT: [i32; 5] = [SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1];

/// The kernel's own `struct sigaction` (x86_64 and aarch64 share this layout). glibc's
/// sigaction() refuses signals 32 and 33, which it keeps for itself, yet a process can inherit
/// them ignored (test runners do this); only the raw syscall can give them back their default.
#[repr(C)]
pub struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

// The layout the raw syscall reads, checked for every target built: handler, flags,
// restorer and a 64-bit mask, as x86_64 and aarch64 lay it out. Other architectures differ
// (mips puts flags first, some have no restorer), so they must be added with care.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("KernelSigaction's layout is known for x86_64 and aarch64 only");
const _: () = {
    assert!(std::mem::size_of::<KernelSigaction>() == 32);
    assert!(std::mem::offset_of!(KernelSigaction, flags) == 8);
    assert!(std::mem::offset_of!(KernelSigaction, restorer) == 16);
    assert!(std::mem::offset_of!(KernelSigaction, mask) == 24);
};

/// SIG_DFL, no flags, nothing blocked.
pub const KERNEL_DEFAULT: KernelSigaction = KernelSigaction {
    handler: 0,
    flags: 0,
    restorer: 0,
    mask: 0,
};

/// The highest signal number Linux has.
const LAST_SIGNAL: libc::c_int = 64;

/// Signals whose disposition a handler would inherit unless reset: every one not at its
/// default — caught by rinetd (so that none of rinetd's handlers runs in a child before exec)
/// or ignored at start-up (SIGPIPE by the Rust runtime, others by whoever started rinetd),
/// which exec would keep ignored.
pub fn to_reset_in_child() -> Vec<libc::c_int> {
    let mut signals: Vec<libc::c_int> = CAUGHT.to_vec();
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP || signals.contains(&signal) {
            continue;
        }
        let mut current = KERNEL_DEFAULT;
        // SAFETY: a NULL new action only reads the current disposition into `current`, a
        // kernel sigaction of the size the syscall is told.
        let read = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                std::ptr::null::<KernelSigaction>(),
                &mut current as *mut KernelSigaction,
                std::mem::size_of::<u64>(),
            )
        };
        // Ignored ones (exec keeps them ignored) and caught ones (Rust's own SIGSEGV/SIGBUS
        // handlers, say): none of rinetd's handlers may run in the child.
        if read == 0 && current.handler != libc::SIG_DFL {
            signals.push(signal);
        }
    }
    signals
}

pub struct Signals {
    receiver: pipe::Receiver,
    flags: Vec<(i32, Arc<AtomicBool>)>,
}

impl Signals {
    /// Installs the handlers and registers the pipe's reading end under `token`.
    pub fn install(registry: &Registry, token: Token) -> io::Result<Signals> {
        let (sender, mut receiver) = pipe::new()?;
        let sender = std::os::fd::OwnedFd::from(sender);
        let mut flags = Vec::new();
        for signal in CAUGHT {
            let flag = Arc::new(AtomicBool::new(false));
            // Order matters: the flag is set before the byte is written, so a wakeup never
            // finds its flag still clear.
            signal_hook::flag::register(signal, Arc::clone(&flag))?;
            let writer = sender.try_clone()?;
            signal_hook::low_level::pipe::register(signal, writer)?;
            flags.push((signal, flag));
        }
        registry.register(&mut receiver, token, Interest::READABLE)?;
        Ok(Signals { receiver, flags })
    }

    /// Empties the pipe and returns the flags that were set, clearing them.
    pub fn drain(&mut self) -> Pending {
        let mut buf = [0u8; 256];
        while matches!(self.receiver.read(&mut buf), Ok(n) if n > 0) {}
        let mut pending = Pending::default();
        for (signal, flag) in &self.flags {
            if flag.swap(false, Ordering::SeqCst) {
                match *signal {
                    SIGCHLD => pending.child = true,
                    SIGHUP => pending.reload = true,
                    SIGUSR1 => pending.status = true,
                    _ => pending.stop = true,
                }
            }
        }
        pending
    }
}

/// Blocks every signal, glibc's own 32 and 33 too (its sigprocmask leaves them out), and
/// returns the mask to restore.
pub fn block_all() -> u64 {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask with two valid 8-byte masks.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            std::mem::size_of::<u64>(),
        );
    }
    old
}

/// Restores a mask returned by `block_all`.
pub fn restore_mask(mask: u64) {
    // SAFETY: rt_sigprocmask with a valid 8-byte mask and no old-mask output.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        );
    }
}
