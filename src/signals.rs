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

/// Signals whose disposition a handler would inherit unless reset: the ones rinetd catches
/// (so that no rinetd handler runs in a child before exec) and the ones ignored at start-up
/// (SIGPIPE by the Rust runtime, others by whoever started rinetd), which exec keeps ignored.
pub fn to_reset_in_child() -> Vec<libc::c_int> {
    let mut signals: Vec<libc::c_int> = CAUGHT.to_vec();
    for signal in 1..libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP || signals.contains(&signal) {
            continue;
        }
        // SAFETY: a NULL new action only reads the current disposition into `current`.
        let ignored = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
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
