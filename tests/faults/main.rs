//! Fault-injection tests (issue 12): rinetd out of descriptors and processes, hostile handlers,
//! hostile clients and signal storms, each asserting figures it also prints
//! (`FIGURES fault=…`). They take minutes, so they are `#[ignore]`d in `make test` and run by
//! `make test-long` (`cargo test --test faults -- --ignored --test-threads=1`: one at a time,
//! so that one fault's load does not blur another's CPU and latency figures), against the
//! release build (`RINETD_BIN`), the one whose figures matter.

// The tests prepare the processes they start (pre_exec, pidfd_open), each with its SAFETY line.
#![allow(unsafe_code)]

// The integration tests' machinery, shared; not every helper is used here.
#[allow(dead_code)]
#[path = "../integration/harness.rs"]
mod harness;

mod support;

mod descriptors;
mod hostile_clients;
mod hostile_handlers;
mod processes;
mod signal_storms;
