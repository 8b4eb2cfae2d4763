//! Integration tests: each drives the built `rinetd` binary against configs, handler scripts
//! and clients on loopback (127.0.0.1 and ::1 only). See `harness` for the shared machinery.

// The tests prepare the processes they start (pre_exec, pidfd_open), each with its SAFETY line.
#![allow(unsafe_code)]

mod harness;

mod builtins;
mod cli;
mod config_errors;
mod convert;
mod daemonize;
mod datagrams;
mod debian_stock;
mod dump;
mod environment;
mod includes;
mod inetd_format;
mod lifecycle;
mod limits;
mod metrics;
mod newcomer;
mod overload;
mod packaging;
mod privileges;
mod proxy_protocol;
mod reaping;
mod recovery;
mod reload;
mod robustness;
mod stderr_modes;
mod supervise;
mod tcp;
mod timeouts;
mod tls;
mod unix_sockets;
mod wait_mode;
