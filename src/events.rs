//! Every line rinetd logs, one function per event (s6's log_accept/log_reject habit), in
//! logfmt: `<service>/<proto>: <event> key=value…`, a value holding a space, `"`, `=` or a
//! control character written in double quotes with `\"` and `\\` escapes. The shapes are
//! listed in docs/log-events.md, which a test holds to what is written here.
//!
//! Nothing is formatted for a level that is off (the `log` macros check first), and the
//! backend writes each line with one write from a reused buffer.

use std::fmt::{self, Display, Write as _};
use std::time::Duration;

use log::{debug, error, info, warn};

/// A value as logfmt wants it: bare when it can be, else quoted and escaped.
pub struct Value<'a>(pub &'a str);

fn needs_quotes(text: &str) -> bool {
    text.is_empty()
        || text
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control())
}

impl Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !needs_quotes(self.0) {
            return f.write_str(self.0);
        }
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// An OS error as its plain description, without Rust's " (os error N)".
pub fn plain(err: &dyn Display) -> String {
    let text = err.to_string();
    match text.rsplit_once(" (os error ") {
        Some((description, rest)) if rest.ends_with(')') => description.to_string(),
        _ => text,
    }
}

/// A client as logged: its address, or `unix` for a UNIX-domain client.
pub struct Client(pub Option<std::net::SocketAddr>);

impl Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // Two lines a connection carry it: written by hand, as `Display` would, at a
            // tenth of the formatting machinery's cost.
            Some(std::net::SocketAddr::V4(address)) => {
                let mut text = [0u8; 21];
                let length = write_v4(&mut text, *address.ip(), address.port());
                f.write_str(std::str::from_utf8(&text[..length]).unwrap_or_default())
            }
            Some(address) => address.fmt(f),
            None => f.write_str("unix"),
        }
    }
}

/// `a.b.c.d:port` into `out` (21 bytes is the longest); the length written.
fn write_v4(out: &mut [u8; 21], ip: std::net::Ipv4Addr, port: u16) -> usize {
    let mut at = 0;
    let mut put = |byte: u8| {
        out[at] = byte;
        at += 1;
    };
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            put(b'.');
        }
        if octet >= 100 {
            put(b'0' + octet / 100);
        }
        if octet >= 10 {
            put(b'0' + octet / 10 % 10);
        }
        put(b'0' + octet % 10);
    }
    put(b':');
    let mut digits = [0u8; 5];
    let mut count = 0;
    let mut rest = port;
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for digit in digits[..count].iter().rev() {
        put(*digit);
    }
    at
}

/// A measured duration, to the millisecond: `0.004s` (rounded to the nearest millisecond,
/// in integers: every handler's exit line carries one).
pub struct Seconds(pub Duration);

impl Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = (self.0.as_nanos() + 500_000) / 1_000_000;
        write!(f, "{}.{:03}s", millis / 1000, millis % 1000)
    }
}

/// A configured duration as it would be written in the table: `100ms`, `10s`.
pub struct Configured(pub Duration);

impl Display for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}ms", self.0.as_millis())
        }
    }
}

// ---- a service's sockets -------------------------------------------------------------------

/// `bound`: the IP address a socket is bound to, else (a UNIX socket) the configured path.
pub fn listening(
    label: &str,
    bound: Option<std::net::SocketAddr>,
    path: &dyn Display,
    inherited: bool,
) {
    let how = if inherited { " inherited=true" } else { "" };
    match bound {
        // One line a listener, a thousand at the start of a big table: the address written by
        // hand, as a client's is.
        Some(address) => info!("{label}: listening address={}{how}", Client(Some(address))),
        None => info!(
            "{label}: listening address={}{how}",
            Value(&path.to_string())
        ),
    }
}

pub fn bind_failed(label: &str, address: &str, err: &dyn Display, retry: Duration) {
    warn!(
        "{label}: bind failed address={} error={} retry={}",
        Value(address),
        Value(&plain(err)),
        Configured(retry)
    );
}

pub fn listener_rebound(label: &str, err: &dyn Display) {
    error!(
        "{label}: listener unusable, binding it anew error={}",
        Value(&plain(err))
    );
}

pub fn reload_setting_failed(label: &str, what: &str, err: &dyn Display) {
    warn!(
        "{label}: reload not applied setting={what} error={}",
        Value(&plain(err))
    );
}

pub fn inherited_unclaimed(address: &str) {
    warn!(
        "inherited socket claimed by no service, closed address={}",
        Value(address)
    );
}

// ---- clients -------------------------------------------------------------------------------

pub fn accepted(label: &str, client: &dyn Display, pid: i32) {
    info!("{label}: accepted client={client} pid={pid}");
}

pub fn accepted_builtin(label: &str, client: &dyn Display, builtin: &str) {
    info!("{label}: accepted client={client} builtin={builtin}");
}

pub fn accepted_datagram(label: &str, client: &dyn Display, bytes: usize, pid: i32) {
    info!("{label}: accepted client={client} bytes={bytes} pid={pid}");
}

pub fn accepted_tls(label: &str, client: &dyn Display, pid: i32, tls: &str) {
    info!(
        "{label}: accepted client={client} pid={pid} tls={}",
        Value(tls)
    );
}

pub fn accepted_builtin_tls(label: &str, client: &dyn Display, builtin: &str, tls: &str) {
    info!(
        "{label}: accepted client={client} builtin={builtin} tls={}",
        Value(tls)
    );
}

pub fn tls_handshake_failed(label: &str, client: &dyn Display, reason: &str) {
    warn!(
        "{label}: tls handshake failed client={client} error={}",
        Value(reason)
    );
}

pub fn tls_failed(label: &str, client: &dyn Display, reason: &str) {
    warn!(
        "{label}: tls failed client={client} error={}",
        Value(reason)
    );
}

pub fn closed(label: &str, client: &dyn Display, duration: Duration) {
    info!(
        "{label}: closed client={client} duration={}",
        Seconds(duration)
    );
}

pub fn refused(label: &str, client: &dyn Display, reason: &str) {
    info!("{label}: refused client={client} reason={reason}");
}

pub fn proxy_rejected(label: &str, client: &dyn Display, reason: &str) {
    warn!(
        "{label}: proxy header rejected client={client} error={}",
        Value(reason)
    );
}

pub fn cannot_serve(label: &str, err: &dyn Display) {
    warn!("{label}: cannot serve error={}", Value(&plain(err)));
}

pub fn loop_protection(label: &str, port: u16) {
    debug!("{label}: dropped datagram reason=loop_protection port={port}");
}

pub fn receive_failed(label: &str, err: &dyn Display) {
    warn!("{label}: receive failed error={}", Value(&plain(err)));
}

pub fn datagram_dropped(label: &str, err: &dyn Display) {
    warn!("{label}: datagram dropped error={}", Value(&plain(err)));
}

pub fn reply_cut(label: &str, client: &dyn Display, bytes: usize) {
    warn!("{label}: reply cut client={client} bytes={bytes}");
}

pub fn reply_failed(label: &str, client: &dyn Display, err: &dyn Display) {
    warn!(
        "{label}: reply failed client={client} error={}",
        Value(&plain(err))
    );
}

pub fn accept_failed(label: &str, err: &dyn Display) {
    warn!("{label}: accept failed error={}", Value(&plain(err)));
}

// ---- limits --------------------------------------------------------------------------------

pub fn paused_max_children(label: &str, running: u32) {
    info!("{label}: paused reason=max_children running={running}");
}

pub fn paused_rate_limit(label: &str, pause: Duration) {
    info!(
        "{label}: paused reason=rate_limit for={}",
        Configured(pause)
    );
}

pub fn resumed(label: &str) {
    info!("{label}: resumed");
}

/// Out of descriptors, processes or buffers, or a `wait: true` handler that failed at once:
/// `what` is the event (`accept failed`, `fork failed`, `datagram dropped`, `wait handler
/// failed`).
pub fn backoff(label: &str, what: &str, err: &dyn Display, delay: Duration) {
    warn!(
        "{label}: {what} error={} backoff={}",
        Value(&plain(err)),
        Configured(delay)
    );
}

// ---- handlers ------------------------------------------------------------------------------

pub fn exited(label: &str, pid: i32, status: &str, lived: Duration) {
    info!(
        "{label}: exited pid={pid} status={status} duration={}",
        Seconds(lived)
    );
}

pub fn stderr_line(label: &str, pid: i32, line: &str) {
    info!("{label}: stderr pid={pid} line={}", Value(line));
}

/// A line a supervised program without a socket wrote on its stdout.
pub fn stdout_line(label: &str, pid: i32, line: &str) {
    info!("{label}: stdout pid={pid} line={}", Value(line));
}

// ---- supervised programs -------------------------------------------------------------------

pub fn started(label: &str, pid: i32) {
    info!("{label}: started pid={pid}");
}

/// A supervised program exited and will be started again after `restart_in`.
pub fn exited_restart(label: &str, pid: i32, status: &str, lived: Duration, restart_in: Duration) {
    info!(
        "{label}: exited pid={pid} status={status} duration={} restart_in={}",
        Seconds(lived),
        Configured(restart_in)
    );
}

pub fn program_ready(label: &str, pid: i32) {
    info!("{label}: ready pid={pid}");
}

pub fn program_stopping(label: &str, pid: i32) {
    info!("{label}: stopping pid={pid}");
}

/// A supervised program a reload stopped did not end within its grace.
pub fn program_killed(label: &str, pid: i32, grace: Duration) {
    warn!(
        "{label}: killed pid={pid} after={} signal=SIGKILL",
        Configured(grace)
    );
}

pub fn spawn_failed(label: &str, pid: i32, reason: &str) {
    warn!("{label}: spawn failed pid={pid} error={}", Value(reason));
}

pub fn spawn_recovered(label: &str, failures: u64) {
    info!("{label}: spawn recovered failures={failures}");
}

pub fn output_unwatched(label: &str, pid: i32, err: &dyn Display) {
    warn!(
        "{label}: output not watched pid={pid} error={}",
        Value(&plain(err))
    );
}

pub fn timeout(label: &str, pid: i32, signal: &str) {
    warn!("{label}: timeout pid={pid} signal={signal}");
}

pub fn handed_over(label: &str, pid: i32) {
    info!("{label}: handed over pid={pid}");
}

pub fn unread_datagram_dropped(label: &str, client: &dyn Display) {
    warn!("{label}: dropped the datagram the handler left unread client={client}");
}

pub fn timestamps_off(label: &str, err: &dyn Display) {
    warn!(
        "{label}: datagram time stamps not enabled error={}",
        Value(&plain(err))
    );
}

pub fn waitpid_failed(err: &dyn Display) {
    warn!("waitpid failed error={}", Value(&plain(err)));
}

// ---- the daemon ----------------------------------------------------------------------------

pub fn ready(services: usize, listeners: usize) {
    info!("ready services={services} listeners={listeners}");
}

pub fn reloading() {
    info!("reloading");
}

pub fn reload_checked(took: Duration) {
    info!("reload checked duration={}", Seconds(took));
}

/// `names` are the services of each kind, comma-separated (`-` for none).
pub fn reloaded(added: &str, changed: &str, removed: &str, kept: usize, took: Duration) {
    info!(
        "reloaded added={} changed={} removed={} kept={kept} duration={}",
        Value(added),
        Value(changed),
        Value(removed),
        Seconds(took)
    );
}

pub fn reload_error(message: &str) {
    error!("reload error={}", Value(message));
}

pub fn reload_failed(errors: usize) {
    error!("reload failed, the running table is unchanged errors={errors}");
}

pub fn config_warning(message: &str) {
    warn!("config warning={}", Value(message));
}

pub fn stopping(handlers: usize) {
    info!("stopping handlers={handlers}");
}

pub fn stop_kill(pid: i32, grace: Duration) {
    warn!(
        "stop killed pid={pid} after={} signal=SIGKILL",
        Configured(grace)
    );
}

pub fn stopped() {
    info!("stopped");
}

pub fn start_failed(message: &str) {
    error!("start failed error={}", Value(message));
}

pub fn sd_notify_failed(err: &dyn Display) {
    warn!("sd_notify failed error={}", Value(&plain(err)));
}

// ---- the status dump -----------------------------------------------------------------------

pub fn status(services: usize, handlers: usize) {
    info!("status services={services} handlers={handlers}");
}

/// One service's line; `state` and `refused` are already `key=value` text.
pub fn service_status(
    label: &str,
    state: &str,
    addresses: &str,
    running: u32,
    accepted: u64,
    spawn_failures: u64,
    refused: &str,
) {
    info!(
        "{label}: status state={state} address={} running={running} accepted={accepted} spawn_failures={spawn_failures}{refused}",
        Value(addresses)
    );
}

/// `1 service`, `2 services`: a count for people to read (key=value fields stay bare numbers).
pub fn counted(count: usize, singular: &str, plural: &str) -> String {
    format!("{count} {}", if count == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_logfmt_needs_it() {
        assert_eq!(Value("127.0.0.1:80").to_string(), "127.0.0.1:80");
        assert_eq!(Value("").to_string(), "\"\"");
        assert_eq!(Value("Address in use").to_string(), "\"Address in use\"");
        assert_eq!(
            Value("say \"hi\" a=b c\\d").to_string(),
            "\"say \\\"hi\\\" a=b c\\\\d\""
        );
        assert_eq!(Value("a\tb\u{1}").to_string(), "\"a\\tb\\u0001\"");
    }

    #[test]
    fn clients_and_durations_read_as_before() {
        for text in [
            "127.0.0.1:80",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.20.199:4000",
            "[::1]:22",
            "[2001:db8::1]:443",
        ] {
            let address: std::net::SocketAddr = text.parse().unwrap();
            assert_eq!(Client(Some(address)).to_string(), text);
        }
        assert_eq!(Client(None).to_string(), "unix");
        for (nanos, shown) in [
            (0, "0.000s"),
            (4_000_000, "0.004s"),
            (1_499_999, "0.001s"),
            (1_500_000, "0.002s"),
            (61_234_567_890, "61.235s"),
        ] {
            assert_eq!(Seconds(Duration::from_nanos(nanos)).to_string(), shown);
        }
    }

    #[test]
    fn os_errors_read_as_their_description() {
        let err = std::io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(plain(&err), "Address already in use");
        assert_eq!(plain(&"no (os error here"), "no (os error here");
    }
}
