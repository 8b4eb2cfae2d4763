//! rinetd: parse the command line, load the table, detach unless -f, serve. Every outcome
//! becomes an exit status here and only here. A library only so that the fuzzers (`fuzz/`) can
//! reach the parsers; the program is `main`, called by `src/main.rs`.

mod bind;
mod builtin;
mod cli;
mod compat;
mod config;
// Detaching forks, and sockets handed over by a service manager become owned descriptors.
#[allow(unsafe_code)]
mod daemon;
mod events;
// The child between clone and execve: raw syscalls only.
#[allow(unsafe_code)]
mod exec;
pub mod fuzzing;
mod include;
mod logging;
mod notify;
mod proxy;
mod resolve;
mod server;
mod service;
// Signal dispositions and masks through the raw syscalls.
#[allow(unsafe_code)]
mod signals;
// clone(CLONE_VM | CLONE_VFORK) and the child's stack.
#[allow(unsafe_code)]
mod spawn;
mod tls;

use std::cell::RefCell;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;

use clap::{CommandFactory, Parser};
use log::LevelFilter;

use crate::cli::{Cli, Command, Format, LogTarget, SourceFormat};
use crate::logging::Target;
use crate::resolve::Host;
use crate::service::Service;

const EX_CONFIG: u8 = 78;
const EX_OSERR: u8 = 71;

/// The table's path as the operator gave it.
fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("RINETD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/rinetd.conf"))
}

/// What a load gives: the services to run, the checked table they came from (for `-T`), and
/// the warnings.
struct Loaded {
    services: Vec<Service>,
    table: config::Table,
    warnings: Vec<String>,
}

/// Reads, parses and resolves the table: the services and warnings, or every error as a line,
/// in file and line order.
fn load(path: &Path, format: Format) -> Result<Loaded, Vec<String>> {
    let shown = path.display().to_string();
    let host = Host::current();
    let text = resolve::read_config(path, &host).map_err(|err| vec![err])?;
    // An inetd.conf becomes YAML text that goes through the very same checks; what they say
    // about the generated lines is pointed back at the inetd.conf's lines and fields.
    let (text, line_map, left_out) = match format {
        Format::Yaml => (text, None, Vec::new()),
        Format::Inetd => {
            let (yaml, map, left_out) = compat::inetd_as_yaml(&shown, &text)?;
            (yaml, Some(map), left_out)
        }
    };
    let relocate = |text: String| match &line_map {
        Some(map) => map.relocate_text(&text),
        None => text,
    };
    let render = |errors: Vec<config::ConfigError>| -> Vec<String> {
        errors
            .iter()
            .map(|error| match &line_map {
                Some(map) => map.relocate(error),
                None => error.to_string(),
            })
            .collect()
    };
    let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut read_included = |pattern: &str| -> Result<Vec<(String, String)>, String> {
        include::expand(&base, pattern)?
            .into_iter()
            .map(|file| {
                let text = resolve::read_config(&file, &host)?;
                Ok((file.display().to_string(), text))
            })
            .collect()
    };
    let (table, mut errors) = config::parse_partial(&shown, &text, &mut read_included);
    match resolve::resolve(&table, &host) {
        Ok(_) if !errors.is_empty() => Err(render(errors)),
        Ok((services, warnings)) => {
            let warnings = left_out
                .into_iter()
                .chain(warnings.into_iter().map(relocate))
                .collect();
            Ok(Loaded {
                services,
                table,
                warnings,
            })
        }
        Err(more) => {
            errors.extend(more);
            config::sort_errors(&mut errors, &table.files);
            Err(render(errors))
        }
    }
}

/// The pure loader on one table's text, for fuzzing: the number of services, or every error
/// as a line. It reads no file (an `include:` names nothing) and asks the system nothing; it
/// must never panic, whatever the text.
pub fn check_table_text(text: &str) -> Result<usize, Vec<String>> {
    let (table, errors) = config::parse_partial("table", text, &mut |_| Ok(Vec::new()));
    if errors.is_empty() {
        Ok(table.services.len())
    } else {
        Err(errors.iter().map(ToString::to_string).collect())
    }
}

/// `-T`: the effective table as YAML on stdout (warnings were said on stderr).
fn dump(table: &config::Table) -> ExitCode {
    let services_file = Host::current().services_file;
    let port_of = |spec: &config::ServiceSpec| match &spec.port {
        config::PortSpec::Number(n) => Some(*n),
        config::PortSpec::Name(name) => resolve::service_port(&services_file, name, spec.protocol),
    };
    let text = config::dump::render(table, &port_of);
    // Written whole, and a closed pipe is an error to report, not a panic.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rinetd: writing the table: {err}");
            ExitCode::from(EX_OSERR)
        }
    }
}

/// The whole program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        return run_command(command);
    }
    daemon::ensure_standard_fds();
    daemon::close_inherited_on_exec();
    let given = config_path(&cli);
    // Absolute (symlinks kept) before anything reads it, so that start-up and every reload
    // read the same file and resolve includes from the same folder, even after detaching has
    // changed the working directory.
    let path = std::path::absolute(&given).unwrap_or_else(|_| given.clone());
    let loaded = load(&path, cli.format);
    if cli.check || cli.dump {
        return match loaded {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    eprintln!("rinetd: warning: {warning}");
                }
                if cli.dump {
                    return dump(&loaded.table);
                }
                let count = loaded.table.services.len();
                let services = events::counted(count, "service", "services");
                println!("{}: OK, {services}", given.display());
                ExitCode::SUCCESS
            }
            Err(errors) => config_failure(&errors),
        };
    }
    let Loaded {
        services, warnings, ..
    } = match loaded {
        Ok(loaded) => loaded,
        Err(errors) => return config_failure(&errors),
    };
    let target = match cli.log {
        Some(LogTarget::Stderr) => Target::Stderr,
        Some(LogTarget::Syslog) => Target::Syslog,
        None if cli.foreground => Target::Stderr,
        None => Target::Syslog,
    };
    let level = if cli.verbose {
        LevelFilter::Debug
    } else if cli.quiet {
        LevelFilter::Warn
    } else {
        LevelFilter::Info
    };
    // Before detaching: LISTEN_PID names this process, not the detached child.
    let inherited = daemon::inherited_sockets();
    // Before detaching, so that "syslog is unavailable" still reaches the operator's terminal.
    let target = logging::init(target, level);
    let readiness = if cli.foreground {
        None
    } else {
        match daemon::detach(target == Target::Stderr) {
            Ok(readiness) => Some(readiness),
            Err(err) => {
                eprintln!("rinetd: cannot detach: {err}");
                return ExitCode::from(EX_OSERR);
            }
        }
    };
    for warning in warnings {
        events::config_warning(&warning);
    }
    let original_nofile = daemon::raise_nofile();
    // The readiness pipe is answered exactly once: ready from inside run, or failed below.
    let readiness = Rc::new(RefCell::new(readiness));
    let server = match server::Server::new(services, original_nofile, inherited) {
        Ok(server) => server,
        Err(err) => return fail_start(&readiness, &events::plain(&err)),
    };
    let pidfile = cli.pidfile.clone();
    let on_ready = {
        let readiness = Rc::clone(&readiness);
        let pidfile = pidfile.clone();
        Box::new(move || {
            if let Some(path) = &pidfile {
                daemon::write_pidfile(path)?;
            }
            if let Some(readiness) = readiness.borrow_mut().take() {
                readiness.ready();
            }
            Ok(())
        })
    };
    let format = cli.format;
    let reload = Box::new(move || {
        load(&path, format).map(|loaded| {
            for warning in loaded.warnings {
                events::config_warning(&warning);
            }
            loaded.services
        })
    });
    let hooks = server::Hooks {
        on_ready,
        load: reload,
        notifier: notify::Notifier::from_env(),
    };
    let outcome = server.run(hooks);
    if let Some(path) = &pidfile {
        let _ = std::fs::remove_file(path);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail_start(&readiness, &message),
    }
}

/// `convert` and `completions`: print to stdout, exit.
fn run_command(command: &Command) -> ExitCode {
    let output = match command {
        Command::Convert { from, file } => {
            let from = from.map(|from| match from {
                SourceFormat::Inetd => compat::Detected::Inetd,
                SourceFormat::Xinetd => compat::Detected::Xinetd,
            });
            match compat::convert(file, from) {
                Ok((yaml, warnings)) => {
                    for warning in warnings {
                        eprintln!("rinetd: warning: {warning}");
                    }
                    yaml.into_bytes()
                }
                Err(errors) => return config_failure(&errors),
            }
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "rinetd", &mut script);
            script
        }
    };
    // Written whole, and a closed pipe is an error to report, not a panic.
    match std::io::stdout().lock().write_all(&output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rinetd: writing the output: {err}");
            ExitCode::from(EX_OSERR)
        }
    }
}

/// Prints every configuration error; the exit status for them.
fn config_failure(errors: &[String]) -> ExitCode {
    for line in errors {
        eprintln!("rinetd: {line}");
    }
    ExitCode::from(EX_CONFIG)
}

fn fail_start(readiness: &Rc<RefCell<Option<daemon::Readiness>>>, message: &str) -> ExitCode {
    events::start_failed(message);
    if let Some(readiness) = readiness.borrow_mut().take() {
        readiness.failed(EX_OSERR, message);
    }
    ExitCode::from(EX_OSERR)
}
