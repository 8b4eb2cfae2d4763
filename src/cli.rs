//! The command line (clap derive types only).

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTarget {
    Stderr,
    Syslog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Inetd,
}

/// An inetd-style superserver: binds the services of a YAML table and runs a handler per
/// connection.
#[derive(Debug, Parser)]
#[command(
    name = "rinetd",
    version,
    about = "An inetd-style superserver: serves a YAML table of services, a handler per \
             connection; runs an inetd.conf as it is (--format inetd) and converts inetd and \
             xinetd files (rinetd convert)",
    after_help = "The table's keys: rinetd.conf(5). Signals, the handler's environment, logging \
                  and exit codes: rinetd(8). In a source tree: man -l man/rinetd.8",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The service table [default: $RINETD_CONFIG, else /etc/rinetd.conf]
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Stay in the foreground; log to stderr unless --log syslog
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,

    /// Check the table as a start would (no socket bound), print the result, exit 0 or 78
    #[arg(short = 't', long = "check")]
    pub check: bool,

    /// Check as -t does, then print the effective table as YAML (every default written out)
    #[arg(short = 'T', long = "dump", conflicts_with = "check")]
    pub dump: bool,

    /// More logging (debug)
    #[arg(short = 'v', long = "verbose", action = ArgAction::SetTrue, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Less logging (warnings and errors only)
    #[arg(short = 'q', long = "quiet", action = ArgAction::SetTrue)]
    pub quiet: bool,

    /// Where log lines go [default: syslog when daemonized, stderr with -f]
    #[arg(long = "log", value_enum, value_name = "TARGET")]
    pub log: Option<LogTarget>,

    /// Write the daemon's pid here once the listeners are bound; removed at exit
    #[arg(long = "pidfile", value_name = "PATH")]
    pub pidfile: Option<PathBuf>,

    /// The table's format
    #[arg(long = "format", value_enum, default_value = "yaml")]
    pub format: Format,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands other than serving a table.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an inetd.conf or xinetd configuration as a rinetd YAML table
    Convert {
        /// The format of FILE [default: told from its contents]
        #[arg(long = "from", value_enum, value_name = "FORMAT")]
        from: Option<SourceFormat>,
        /// An inetd.conf, an xinetd.conf, or an xinetd.d file or folder
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the completion script for SHELL (used by `make install`)
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The formats `convert` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceFormat {
    Inetd,
    Xinetd,
}
