//! The `log` backend: one line per event to stderr (`rinetd: …`) or to syslog(3) with facility
//! daemon and ident `rinetd`. libc's syslog reconnects by itself when syslogd restarts.

use std::io::Write;
use std::os::unix::net::UnixDatagram;

use log::{Level, LevelFilter, Log, Metadata, Record};
use nix::syslog::{Facility, LogFlags, Priority, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stderr,
    Syslog,
}

struct Logger {
    target: Target,
}

thread_local! {
    /// The line being written (rinetd has one thread).
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A line longer than this (a huge stderr line of a handler) does not keep its buffer.
const KEPT_CAPACITY: usize = 16 * 1024;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match self.target {
            Target::Stderr => {
                let prefix = match record.level() {
                    Level::Error => "error: ",
                    Level::Warn => "warning: ",
                    _ => "",
                };
                // One write per line from a buffer kept between lines: lines from a busy
                // daemon never interleave, and logging allocates nothing once warmed up.
                LINE.with_borrow_mut(|line| {
                    line.clear();
                    let _ = writeln!(line, "rinetd: {prefix}{}", record.args());
                    let _ = std::io::stderr().lock().write_all(line);
                    if line.capacity() > KEPT_CAPACITY {
                        *line = Vec::new();
                    }
                });
            }
            Target::Syslog => {
                let severity = match record.level() {
                    Level::Error => Severity::LOG_ERR,
                    Level::Warn => Severity::LOG_WARNING,
                    Level::Info => Severity::LOG_INFO,
                    Level::Debug | Level::Trace => Severity::LOG_DEBUG,
                };
                // Formatted into the same kept buffer: no allocation per line here either
                // (syslog(3) gets it through a buffer on the stack).
                LINE.with_borrow_mut(|line| {
                    line.clear();
                    let _ = write!(line, "{}", record.args());
                    if line.contains(&0) {
                        *line = escape_nul(line);
                    }
                    let message = String::from_utf8_lossy(line);
                    let _ = nix::syslog::syslog(
                        Priority::new(severity, Facility::LOG_DAEMON),
                        &*message,
                    );
                    if line.capacity() > KEPT_CAPACITY {
                        *line = Vec::new();
                    }
                });
            }
        }
    }

    fn flush(&self) {}
}

/// A line with its NULs written `\\0` (syslog(3) would end the line at the first).
fn escape_nul(line: &[u8]) -> Vec<u8> {
    let mut escaped = Vec::with_capacity(line.len() + 8);
    for &byte in line {
        if byte == 0 {
            escaped.extend_from_slice(b"\\0");
        } else {
            escaped.push(byte);
        }
    }
    escaped
}

/// Installs the logger. Syslog falls back to stderr (with a warning) when /dev/log is not there;
/// returns the target in use.
pub fn init(target: Target, level: LevelFilter) -> Target {
    let target = match target {
        Target::Syslog
            if UnixDatagram::unbound()
                .and_then(|s| s.connect("/dev/log"))
                .is_err() =>
        {
            let _ = writeln!(
                std::io::stderr(),
                "rinetd: warning: syslog is unavailable (/dev/log), logging to stderr"
            );
            Target::Stderr
        }
        target => target,
    };
    if target == Target::Syslog {
        let _ = nix::syslog::openlog(
            Some(c"rinetd"),
            LogFlags::LOG_PID | LogFlags::LOG_NDELAY,
            Facility::LOG_DAEMON,
        );
    }
    log::set_max_level(level);
    let _ = log::set_boxed_logger(Box::new(Logger { target }));
    target
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nul_is_written_as_backslash_zero() {
        assert_eq!(super::escape_nul(b"a\0b\0"), b"a\\0b\\0");
        assert_eq!(super::escape_nul(b"plain"), b"plain");
    }
}
