//! sd_notify(3) without libsystemd: READY=1, RELOADING=1 and STOPPING=1 as datagrams to
//! $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@').

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
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
        Notifier { target }
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(err) = socket.send_to_addr(message.as_bytes(), address)
        {
            crate::events::sd_notify_failed(&err);
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
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
