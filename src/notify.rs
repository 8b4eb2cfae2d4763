//! sd_notify(3) without libsystemd: READY=1 (with a STATUS= line), RELOADING=1, STOPPING=1 and
//! the watchdog's WATCHDOG=1 as datagrams to $NOTIFY_SOCKET (a path, or an abstract name
//! written with a leading '@').

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half the service manager's watchdog timeout (`WATCHDOG_USEC`), when it set one for us.
    watchdog: Option<std::time::Duration>,
}

impl Notifier {
    /// From $NOTIFY_SOCKET; a missing or unusable one means "not under a service manager".
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|name| {
            let address = match name.strip_prefix('@') {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name).ok()?,
                None => SocketAddr::from_pathname(&name).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, address))
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours && target.is_some())
            .map(|usec| std::time::Duration::from_micros(usec / 2));
        Notifier { target, watchdog }
    }

    /// How often to send WATCHDOG=1, if the service manager watches rinetd.
    pub fn watchdog_interval(&self) -> Option<std::time::Duration> {
        self.watchdog
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(err) = socket.send_to_addr(message.as_bytes(), address)
        {
            crate::events::sd_notify_failed(&err);
        }
    }

    /// Ready (again), with a line for `systemctl status`.
    pub fn ready(&self, status: &str) {
        if self.target.is_some() {
            self.send(&format!("READY=1\nSTATUS={status}"));
        }
    }

    /// systemd wants the monotonic clock with RELOADING=1 (Type=notify-reload); the wall clock
    /// would be wrong, so this reads CLOCK_MONOTONIC.
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or_else(|_| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64)
            });
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}
