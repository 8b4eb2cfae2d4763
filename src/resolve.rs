//! Turns the checked table into runnable services: port names, users and groups, the server
//! executable, the handler's fixed environment. The only module that asks NSS or the filesystem
//! about the configuration.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use nix::unistd::{AccessFlags, Gid, Group, Uid, User, access, getgrouplist};

use crate::config::{
    self, ConfigError, IdSpec, Place, PortSpec, Pos, Protocol, ServiceSpec, Table,
};
use crate::service::{
    Access, Argv, Credentials, Endpoint, ExecPlan, Handler, Limits, Service, SocketOptions,
    Supervise, Tls, limit,
};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the host tells about the process doing the resolving.
pub struct Host {
    pub euid: u32,
    pub egid: u32,
    pub services_file: String,
    pub environment: Vec<(String, String)>,
}

impl Host {
    pub fn current() -> Host {
        Host {
            euid: Uid::effective().as_raw(),
            egid: Gid::effective().as_raw(),
            services_file: std::fs::read_to_string("/etc/services").unwrap_or_default(),
            environment: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }
}

/// How many services the root warning names before it says "and N more".
const ROOT_WARNING_NAMES: usize = 10;

/// The runnable services (disabled ones left out) and warnings, or every error.
pub fn resolve(
    table: &Table,
    host: &Host,
) -> Result<(Vec<Service>, Vec<String>), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut as_root: Vec<&str> = Vec::new();
    let mut resolved = Vec::with_capacity(table.services.len());
    let mut lookups = Lookups::default();
    for spec in &table.services {
        let before = errors.len();
        let fail = |errors: &mut Vec<ConfigError>, pos: Pos, message: String| {
            errors.push(ConfigError {
                file: spec.file.clone(),
                pos: Some(pos),
                service: Some(spec.name.clone()),
                message,
            })
        };
        let port = match &spec.port {
            PortSpec::Number(n) => Some(*n),
            PortSpec::Name(name) => {
                let found = lookups.port(&host.services_file, name, spec.protocol);
                if found.is_none() {
                    let protocol = spec.protocol.as_str();
                    let message = if spec.port_from_name {
                        format!(
                            "no port: set \"port\" (\"{name}\" is not a {protocol} service in /etc/services)"
                        )
                    } else {
                        format!(
                            "key \"port\": \"{name}\" is not a {protocol} service in /etc/services"
                        )
                    };
                    fail(&mut errors, spec.port_pos, message);
                }
                found
            }
        };
        let mut script_problem = None;
        let program = match &spec.handler {
            config::Handler::Server { path, pos, args } => {
                match lookups.executable(path) {
                    Err(message) => fail(&mut errors, *pos, format!("key \"server\": {message}")),
                    Ok(problem) => {
                        script_problem = problem;
                        if let Some(problem) = &script_problem {
                            warnings.push(format!(
                                "{}:{}:{}: service \"{}\": key \"server\": {problem}",
                                spec.file, pos.line, pos.column, spec.name
                            ));
                        }
                    }
                }
                Some((path, args))
            }
            config::Handler::Builtin(_) => None,
        };
        if let Some(unix) = &spec.unix
            && let Err(message) = check_socket_path(&unix.path)
        {
            fail(&mut errors, unix.pos, format!("key \"path\": {message}"));
        }
        // Certificates are read at every load (-t, start, reload): a reload re-reads them.
        let tls = spec.tls.as_ref().and_then(|tls| {
            match crate::tls::config::load(&tls.settings, SystemTime::now()) {
                Ok(config) => Some(Box::new(Tls {
                    settings: tls.settings.clone(),
                    config,
                })),
                Err(problems) => {
                    for problem in problems {
                        let what = plain(&problem.problem);
                        let message = match &problem.path {
                            Some(path) => {
                                format!("key \"{}\": {}: {what}", problem.key, path.display())
                            }
                            None => format!("key \"{}\": {what}", problem.key),
                        };
                        fail(&mut errors, tls.places.pos(problem.key), message);
                    }
                    None
                }
            }
        });
        // A builtin runs as rinetd: a `user` it got from defaults is not its business.
        let identity = match program.as_ref().map(|_| identity(spec, host, &mut lookups)) {
            Some(Ok(identity)) => identity,
            Some(Err((place, message))) => {
                errors.push(ConfigError {
                    file: place.file,
                    pos: Some(place.pos),
                    service: Some(spec.name.clone()),
                    message,
                });
                None
            }
            None => None,
        };
        // `user: root` written out is a choice; only root by default deserves the warning
        // (a `group` alone leaves the user rinetd's own).
        let root_by_default = spec.user.is_none() && host.euid == 0;
        if root_by_default && !spec.disabled && program.is_some() {
            as_root.push(&spec.name);
        }
        let Some(port) = port.filter(|_| errors.len() == before && !spec.disabled) else {
            continue;
        };
        let listen = match &spec.unix {
            Some(unix) => vec![Endpoint::Unix(unix.path.clone())],
            None => spec
                .addresses
                .iter()
                .map(|ip| Endpoint::Ip(SocketAddr::new(*ip, port)))
                .collect(),
        };
        let handler = match (program, spec.handler_builtin()) {
            (Some((path, args)), _) => {
                let mut plan = exec_plan(spec, path, args, identity, host);
                plan.script_problem = script_problem.map(String::into_boxed_str);
                Handler::Exec(Box::new(plan))
            }
            (None, Some(builtin)) => Handler::Builtin(builtin),
            (None, None) => continue,
        };
        resolved.push((spec, listen, handler, tls));
    }
    if !as_root.is_empty() {
        warnings.push(root_warning(&table.file, &as_root));
    }
    errors.extend(socket_conflicts(&resolved));
    if !errors.is_empty() {
        return Err(errors);
    }
    let services = resolved
        .into_iter()
        .map(|(spec, listen, handler, tls)| runtime_service(spec, listen, handler, tls))
        .collect();
    // The parsed tree is gone by now: what it took is given back, not kept as holes.
    crate::spawn::release_free_heap();
    Ok((services, warnings))
}

/// What one load asks the system, asked once per load however many services ask it: a table
/// of 1,000 services naming one server, one user, or ports by name otherwise stats and reads
/// the same file, asks NSS the same question, or scans /etc/services, 1,000 times. Nothing is
/// kept across loads: a reload sees the system as it is then.
#[derive(Default)]
struct Lookups<'h> {
    /// /etc/services as (name or alias, protocol) → port, the first line naming it winning.
    ports: Option<HashMap<(&'h str, &'h str), u16>>,
    /// A server: an error, or what stands in the way of exec'ing it (`interpreter_problem`).
    /// By the path's bytes: hashing a `Path` walks its components, at ~400 instructions.
    executables: HashMap<Vec<u8>, Result<Option<String>, String>>,
    users_by_name: HashMap<String, Option<User>>,
    users_by_id: HashMap<u32, Option<User>>,
    groups: HashMap<String, Option<u32>>,
    group_lists: HashMap<(String, u32), Option<Vec<u32>>>,
}

impl<'h> Lookups<'h> {
    fn port(&mut self, services_file: &'h str, name: &str, protocol: Protocol) -> Option<u16> {
        let ports = self.ports.get_or_insert_with(|| {
            let mut ports = HashMap::new();
            for line in services_file.lines() {
                let Some(line) = line.split('#').next() else {
                    continue;
                };
                let mut words = line.split_whitespace();
                let (Some(primary), Some(port)) = (words.next(), words.next()) else {
                    continue;
                };
                let Some((port, proto)) = port.split_once('/') else {
                    continue;
                };
                let Ok(port) = port.parse::<u16>() else {
                    continue;
                };
                for word in std::iter::once(primary).chain(words) {
                    ports.entry((word, proto)).or_insert(port);
                }
            }
            ports
        });
        ports.get(&(name, protocol_name(protocol))).copied()
    }

    fn executable(&mut self, path: &Path) -> Result<Option<String>, String> {
        let key = path.as_os_str().as_bytes();
        if let Some(known) = self.executables.get(key) {
            return known.clone();
        }
        let found = check_executable(path).map(|()| interpreter_problem(path));
        self.executables.insert(key.to_vec(), found.clone());
        found
    }

    fn user_by_name(&mut self, name: &str) -> Option<User> {
        self.users_by_name
            .entry(name.to_string())
            .or_insert_with(|| User::from_name(name).ok().flatten())
            .clone()
    }

    fn user_by_id(&mut self, id: u32) -> Option<User> {
        self.users_by_id
            .entry(id)
            .or_insert_with(|| User::from_uid(Uid::from_raw(id)).ok().flatten())
            .clone()
    }

    fn group(&mut self, name: &str) -> Option<u32> {
        *self.groups.entry(name.to_string()).or_insert_with(|| {
            Group::from_name(name)
                .ok()
                .flatten()
                .map(|group| group.gid.as_raw())
        })
    }

    fn group_list(&mut self, user: &str, gid: u32) -> Option<Vec<u32>> {
        self.group_lists
            .entry((user.to_string(), gid))
            .or_insert_with(|| {
                let name = CString::new(user.as_bytes()).ok()?;
                let list = getgrouplist(&name, Gid::from_raw(gid)).ok()?;
                Some(list.into_iter().map(Gid::as_raw).collect())
            })
            .clone()
    }
}

/// The protocol column of /etc/services a service's port name is looked up in.
fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "udp",
        Protocol::Tcp | Protocol::Unix | Protocol::None => "tcp",
    }
}

/// An OS error as its plain description, without Rust's "(os error N)".
fn plain(text: &str) -> &str {
    match text.rsplit_once(" (os error ") {
        Some((description, _)) => description,
        None => text,
    }
}

/// One line for every handler that would run as root, however many there are (a table of
/// 1,000 such services once logged 1,000 lines at each reload).
fn root_warning(file: &str, names: &[&str]) -> String {
    let shown = names.len().min(ROOT_WARNING_NAMES);
    let mut list = names[..shown].join(", ");
    if names.len() > shown {
        list.push_str(&format!(" and {} more", names.len() - shown));
    }
    format!(
        "{file}: handlers would run as root by default (set \"user\", or \"user: root\" to say so): {list}"
    )
}

/// What stands in the way of exec'ing a script whose `#!` line the kernel cannot follow: an
/// interpreter that does not exist, or a line ending in a carriage return (Windows line
/// endings, where the kernel looks for an interpreter named "/bin/sh\r"). Both make execve
/// fail with "No such file or directory" for a file that exists.
fn interpreter_problem(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let mut file = std::fs::File::open(path).ok()?;
    let length = file.read(&mut head).ok()?;
    let line = head[..length].strip_prefix(b"#!")?;
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(end) => &line[..end],
        // Longer than the kernel reads, or a file without a newline: nothing to say.
        None if length == head.len() => return None,
        None => line,
    };
    let line = String::from_utf8_lossy(line);
    let interpreter = line.trim_start_matches([' ', '\t']);
    let interpreter = interpreter.split([' ', '\t']).next().unwrap_or_default();
    let shown = path.display();
    if line.ends_with('\r') {
        return Some(format!(
            "{shown} has Windows line endings: its #! line asks for \"{}\" (with a carriage return), which does not exist; convert it with `dos2unix {shown}` or `sed -i 's/\\r$//' {shown}`",
            interpreter.escape_debug()
        ));
    }
    if interpreter.is_empty() {
        return Some(format!("{shown}: its #! line names no interpreter"));
    }
    if !Path::new(interpreter).is_file() {
        return Some(format!(
            "{shown}: its #! interpreter {interpreter} does not exist"
        ));
    }
    None
}

/// The settings the event loop acts on, without the positions they were written at.
fn runtime_service(
    spec: &ServiceSpec,
    listen: Vec<Endpoint>,
    handler: Handler,
    tls: Option<Box<Tls>>,
) -> Service {
    Service {
        label: Service::label_of(&spec.name, spec.protocol),
        protocol: spec.protocol,
        listen: listen.into_boxed_slice(),
        socket: SocketOptions {
            backlog: spec.backlog,
            keepalive: spec.keepalive,
            unix_mode: spec.unix.as_ref().map(|unix| unix.mode),
        },
        handler,
        wait: spec.wait,
        proxy_protocol: spec.proxy_protocol,
        limits: Limits {
            max_children: limit(spec.max_children),
            per_source: limit(spec.per_source),
            rate_limit: spec.rate_limit.map(Box::new),
            per_source_rate: spec.per_source_rate.map(Box::new),
            source_prefix: spec.source_prefix,
            timeout: spec.timeout,
        },
        access: Access {
            only_from: spec.only_from.as_slice().into(),
            no_access: spec.no_access.as_slice().into(),
        },
        supervise: spec.respawn.then_some(Supervise {
            notify: spec.notify,
        }),
        restart_max_delay: spec.respawn_max_delay,
        tls,
    }
}

/// A service resolved, before it becomes a runtime `Service`: its spec, where it listens, its
/// handler and its loaded certificates.
type Resolved<'s> = (&'s ServiceSpec, Vec<Endpoint>, Handler, Option<Box<Tls>>);

/// Two services cannot bind the same protocol and port on the same address, nor on a wildcard
/// address and a specific one of the same family (the kernel refuses the second bind); two
/// UNIX services cannot share a path. Each service is checked against the earlier ones through
/// an index by port, so the check stays linear in the number of services.
fn socket_conflicts(services: &[Resolved<'_>]) -> Vec<ConfigError> {
    /// The earliest service (and its endpoint) of one protocol, family and port, on the
    /// wildcard address and on any.
    #[derive(Default)]
    struct Port<'s> {
        wildcard: Option<(usize, &'s Endpoint)>,
        earliest: Option<(usize, &'s Endpoint)>,
    }
    // Sized for one endpoint a service, and the specific addresses in one index of their own
    // rather than a map in each port (a table of 1,000 ports made 1,000 maps).
    let mut ports: HashMap<(Protocol, bool, u16), Port<'_>> =
        HashMap::with_capacity(services.len());
    let mut specific: HashMap<(Protocol, u16, IpAddr), (usize, &Endpoint)> =
        HashMap::with_capacity(services.len());
    let mut paths: HashMap<&Path, (usize, &Endpoint)> = HashMap::new();
    let mut errors = Vec::new();
    for (index, (spec, listen, _, _)) in services.iter().enumerate() {
        let protocol = spec.protocol;
        // The earliest earlier service this one overlaps, and where.
        let mut clash: Option<(usize, &Endpoint, &Endpoint)> = None;
        for mine in listen {
            let theirs = match mine {
                Endpoint::Ip(address) if address.port() == 0 => None,
                Endpoint::Ip(address) => ports
                    .get(&(protocol, address.is_ipv4(), address.port()))
                    .and_then(|port| {
                        if address.ip().is_unspecified() {
                            port.earliest
                        } else {
                            let same = specific
                                .get(&(protocol, address.port(), address.ip()))
                                .copied();
                            [port.wildcard, same]
                                .into_iter()
                                .flatten()
                                .min_by_key(|(i, _)| *i)
                        }
                    }),
                Endpoint::Unix(path) => paths.get(path.as_path()).copied(),
            };
            if let Some((other, theirs)) = theirs
                && clash.is_none_or(|(earliest, _, _)| other < earliest)
            {
                clash = Some((other, mine, theirs));
            }
        }
        for endpoint in listen {
            match endpoint {
                Endpoint::Ip(address) if address.port() == 0 => {}
                Endpoint::Ip(address) => {
                    let key = (protocol, address.is_ipv4(), address.port());
                    let port = ports.entry(key).or_default();
                    let entry = (index, endpoint);
                    port.earliest.get_or_insert(entry);
                    if address.ip().is_unspecified() {
                        port.wildcard.get_or_insert(entry);
                    } else {
                        specific
                            .entry((protocol, address.port(), address.ip()))
                            .or_insert(entry);
                    }
                }
                Endpoint::Unix(path) => {
                    paths.entry(path.as_path()).or_insert((index, endpoint));
                }
            }
        }
        let Some((other, mine, theirs)) = clash else {
            continue;
        };
        let other = &services[other].0.name;
        errors.push(ConfigError {
            file: spec.file.clone(),
            pos: Some(spec.port_pos),
            service: Some(spec.name.clone()),
            message: match mine {
                Endpoint::Unix(path) => format!(
                    "socket {} is also the path of service \"{other}\"",
                    path.display()
                ),
                Endpoint::Ip(_) => format!(
                    "{}/{mine} overlaps {theirs} of service \"{other}\"",
                    protocol.as_str()
                ),
            },
        });
    }
    errors
}

/// A UNIX socket's path may hold a stale socket (replaced at bind) but nothing else.
fn check_socket_path(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(format!(
            "{} exists and is not a socket; rinetd replaces only stale sockets",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// Looks `name` up in the text of /etc/services: `name port/proto [aliases…]`.
pub fn service_port(services_file: &str, name: &str, protocol: Protocol) -> Option<u16> {
    let proto = protocol_name(protocol);
    services_file.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let primary = words.next()?;
        let (port, line_proto) = words.next()?.split_once('/')?;
        let named = primary == name || words.any(|alias| alias == name);
        (named && line_proto == proto)
            .then(|| port.parse().ok())
            .flatten()
    })
}

/// Reads a table file. As root, a table anyone but root could change would let them run code
/// as root, so it is refused: a file not owned by root or writable by group or others, or one
/// in a folder they can write (a sticky folder owned by root is fine for entries root owns).
/// The file is opened once and the checks are made on what was opened (`fstat`), so swapping
/// a symlink between the check and the read achieves nothing.
pub fn read_config(path: &Path, host: &Host) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shown = path.display();
    let mut file = std::fs::File::open(path).map_err(|err| format!("{shown}: {err}"))?;
    if host.euid == 0 {
        let meta = file.metadata().map_err(|err| format!("{shown}: {err}"))?;
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(format!(
                "{shown}: writable by group or others (mode {:04o}); rinetd runs as root and refuses it",
                mode & 0o7777
            ));
        }
        if meta.uid() != 0 {
            return Err(format!(
                "{shown}: owned by uid {}, not root; rinetd runs as root and refuses it",
                meta.uid()
            ));
        }
        check_folder(path)?;
        // A symlink's target lives in a folder of its own, which must be as safe.
        if let Ok(real) = std::fs::canonicalize(path)
            && real.parent() != path.parent()
        {
            check_folder(&real)?;
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|err| format!("{shown}: {err}"))?;
    Ok(text)
}

/// The folder holding `path` must not let anyone but root replace it: not writable by group
/// or others, unless it is a sticky folder owned by root and the entry itself is root's.
fn check_folder(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(folder).map_err(|err| format!("{}: {err}", folder.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o022 == 0 {
        return Ok(());
    }
    let sticky = mode & 0o1000 != 0 && meta.uid() == 0;
    let entry_is_roots = std::fs::symlink_metadata(path).is_ok_and(|entry| entry.uid() == 0);
    if sticky && entry_is_roots {
        return Ok(());
    }
    Err(format!(
        "{}: in folder {} which group or others can write (mode {:04o}); rinetd runs as root and refuses it",
        path.display(),
        folder.display(),
        mode & 0o7777
    ))
}

fn check_executable(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{shown}: {}", plain(&e.to_string())))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    access(path, AccessFlags::X_OK).map_err(|_| format!("{shown} is not executable"))
}

/// Who a handler runs as: the credentials to switch to, and the passwd entry for USER/HOME/….
struct Identity {
    credentials: Credentials,
    user: Option<User>,
}

/// The identity to switch to, or None to keep rinetd's.
fn identity(
    spec: &ServiceSpec,
    host: &Host,
    lookups: &mut Lookups<'_>,
) -> Result<Option<Identity>, (Place, String)> {
    if spec.user.is_none() && spec.group.is_none() {
        return Ok(None);
    }
    let (uid, gid, user) = match &spec.user {
        None => (host.euid, host.egid, None),
        Some((who, place)) => {
            let user = match who {
                IdSpec::Name(name) => Some(lookups.user_by_name(name).ok_or_else(|| {
                    (
                        place.clone(),
                        format!("key \"user\": unknown user \"{name}\""),
                    )
                })?),
                IdSpec::Id(id) => lookups.user_by_id(*id),
            };
            match user {
                Some(user) => (user.uid.as_raw(), user.gid.as_raw(), Some(user)),
                // A numeric uid without a passwd entry: its number is the gid too.
                None => {
                    let IdSpec::Id(id) = who else {
                        return Err((place.clone(), "key \"user\": unknown user".to_string()));
                    };
                    (*id, *id, None)
                }
            }
        }
    };
    let gid = match &spec.group {
        None => gid,
        Some((IdSpec::Id(id), _)) => *id,
        Some((IdSpec::Name(name), place)) => lookups.group(name).ok_or_else(|| {
            (
                place.clone(),
                format!("key \"group\": unknown group \"{name}\""),
            )
        })?,
    };
    if host.euid != 0 && (uid != host.euid || gid != host.egid) {
        let place = spec.user.as_ref().or(spec.group.as_ref()).map_or_else(
            || Place {
                file: spec.file.clone(),
                pos: spec.pos,
            },
            |(_, place)| place.clone(),
        );
        return Err((
            place,
            "rinetd is not running as root, so handlers can only run as its own user and group"
                .to_string(),
        ));
    }
    let other_groups = match &user {
        Some(user) => lookups
            .group_list(&user.name, gid)
            .unwrap_or_default()
            .into_iter()
            .filter(|&group| group != gid)
            .collect(),
        None => Box::default(),
    };
    Ok(Some(Identity {
        credentials: Credentials {
            uid,
            gid,
            other_groups,
        },
        user,
    }))
}

/// The fixed environment entries most handlers share, as statics instead of a copy each.
fn shared_entry(name: &str, value: &str) -> Option<&'static CStr> {
    match (name, value) {
        ("PATH", DEFAULT_PATH) => Some(DEFAULT_PATH_ENTRY),
        ("PROTO", "TCP") => Some(c"PROTO=TCP"),
        ("PROTO", "UDP") => Some(c"PROTO=UDP"),
        ("PROTO", "UNIX") => Some(c"PROTO=UNIX"),
        ("PROTO", "NONE") => Some(c"PROTO=NONE"),
        _ => None,
    }
}

const DEFAULT_PATH_ENTRY: &CStr =
    c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole fixed environment of a service without `user`, `env` or `pass_env` (most of a
/// table's), as one static list per protocol instead of a list of its own.
fn shared_env(fixed: &[(&str, Cow<'_, str>)]) -> Option<&'static [Cow<'static, CStr>]> {
    const PATH: Cow<'static, CStr> = Cow::Borrowed(DEFAULT_PATH_ENTRY);
    let [("PATH", path), ("PROTO", proto)] = fixed else {
        return None;
    };
    if path != DEFAULT_PATH {
        return None;
    }
    Some(match proto.as_ref() {
        "TCP" => &[PATH, Cow::Borrowed(c"PROTO=TCP")],
        "UDP" => &[PATH, Cow::Borrowed(c"PROTO=UDP")],
        "UNIX" => &[PATH, Cow::Borrowed(c"PROTO=UNIX")],
        "NONE" => &[PATH, Cow::Borrowed(c"PROTO=NONE")],
        _ => return None,
    })
}

fn exec_plan(
    spec: &ServiceSpec,
    path: &Path,
    args: &[String],
    identity: Option<Identity>,
    host: &Host,
) -> ExecPlan {
    let (credentials, user) = match identity {
        // Only root can switch; a non-root rinetd was checked above to run handlers as itself.
        Some(Identity { credentials, user }) => {
            (Some(credentials).filter(|_| host.euid == 0), user)
        }
        None => (None, None),
    };
    // Borrowed, not copied: each is read once, into the plan's entries (or not at all, for
    // the usual static list), so a copy would only be made to be freed.
    let proto = match spec.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Unix => "UNIX",
        Protocol::None => "NONE",
    };
    let mut fixed: Vec<(&str, Cow<'_, str>)> = vec![
        ("PATH", Cow::Borrowed(DEFAULT_PATH)),
        ("PROTO", Cow::Borrowed(proto)),
    ];
    if let Some(user) = &user {
        fixed.push(("USER", Cow::Borrowed(&user.name)));
        fixed.push(("LOGNAME", Cow::Borrowed(&user.name)));
        fixed.push(("HOME", user.dir.to_string_lossy()));
        fixed.push(("SHELL", user.shell.to_string_lossy()));
    }
    let mut overrides: Vec<(&str, &str)> = spec
        .pass_env
        .iter()
        .filter_map(|name| {
            let (_, value) = host.environment.iter().find(|(k, _)| k == name)?;
            Some((name.as_str(), value.as_str()))
        })
        .collect();
    overrides.extend(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let overridden: BTreeSet<&str> = overrides.iter().map(|(k, _)| *k).collect();
    fixed.retain(|(k, _)| !overridden.contains(k));
    // A later `env` entry wins over a `pass_env` one of the same name.
    let mut seen = BTreeSet::new();
    let mut entries: Vec<(&str, Cow<'_, str>)> = Vec::new();
    for (k, v) in overrides.into_iter().rev() {
        if seen.insert(k) {
            entries.push((k, Cow::Borrowed(v)));
        }
    }
    entries.reverse();
    fixed.extend(entries);
    let fixed_env = match shared_env(&fixed) {
        Some(list) => Cow::Borrowed(list),
        None => Cow::Owned(
            fixed
                .iter()
                .filter_map(|(k, v)| {
                    shared_entry(k, v).map(Cow::Borrowed).or_else(|| {
                        CString::new([k, "=", v.as_ref()].concat())
                            .ok()
                            .map(Cow::Owned)
                    })
                })
                .collect(),
        ),
    };
    let argv = match args {
        [name]
            if path
                .file_name()
                .is_some_and(|file| file.as_bytes() == name.as_bytes()) =>
        {
            Argv::FileName
        }
        _ => Argv::Given(
            args.iter()
                .filter_map(|a| CString::new(a.as_str()).ok())
                .collect(),
        ),
    };
    let cwd = spec.cwd.as_os_str().as_bytes();
    ExecPlan {
        path: CString::new(path.as_os_str().as_bytes()).unwrap_or_default(),
        argv,
        fixed_env,
        // A set's order: sorted, as `spawn` searches it.
        overridden: overridden.into_iter().map(String::from).collect(),
        cwd: match cwd {
            b"/" => Cow::Borrowed(c"/"),
            _ => Cow::Owned(CString::new(cwd).unwrap_or_default()),
        },
        credentials,
        rlimits: spec.rlimits.as_slice().into(),
        nice: spec.nice,
        umask: spec.umask,
        stderr: spec.stderr,
        script_problem: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `yaml` (which must pass the checks) resolved as an unprivileged rinetd, uid 1000.
    fn resolve_yaml(yaml: &str) -> Result<(Vec<Service>, Vec<String>), Vec<ConfigError>> {
        let (table, errors) = crate::config::parse_partial("t", yaml, &mut |_| Ok(Vec::new()));
        assert!(errors.is_empty(), "{errors:?}");
        let host = Host {
            euid: 1000,
            egid: 1000,
            services_file: String::new(),
            environment: Vec::new(),
        };
        resolve(&table, &host)
    }

    /// The same-port errors of a table of echo builtins written as `(name, protocol, address, port)`.
    fn conflicts(services: &[(&str, &str, &str, u16)]) -> Vec<String> {
        let mut yaml = String::from("services:\n");
        for (name, protocol, address, port) in services {
            yaml.push_str(&format!(
                "  - {{name: {name}, protocol: {protocol}, address: \"{address}\", port: {port}, builtin: echo}}\n"
            ));
        }
        match resolve_yaml(&yaml) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
        }
    }

    #[test]
    fn same_port_overlaps() {
        assert!(
            conflicts(&[("a", "tcp", "127.0.0.1", 1), ("b", "tcp", "127.0.0.2", 1)]).is_empty()
        );
        assert!(conflicts(&[("a", "tcp", "0.0.0.0", 1), ("b", "udp", "0.0.0.0", 1)]).is_empty());
        assert!(conflicts(&[("a", "tcp", "0.0.0.0", 1), ("b", "tcp", "::", 1)]).is_empty());
        assert!(conflicts(&[("a", "tcp", "0.0.0.0", 0), ("b", "tcp", "0.0.0.0", 0)]).is_empty());
        assert_eq!(
            conflicts(&[("a", "tcp", "127.0.0.1", 1), ("b", "tcp", "0.0.0.0", 1)]),
            ["tcp/0.0.0.0:1 overlaps 127.0.0.1:1 of service \"a\""]
        );
        assert_eq!(
            conflicts(&[("a", "tcp", "::", 1), ("b", "tcp", "::1", 1)]),
            ["tcp/[::1]:1 overlaps [::]:1 of service \"a\""]
        );
        // The earliest service is named, once per service.
        assert_eq!(
            conflicts(&[
                ("a", "udp", "127.0.0.1", 1),
                ("b", "udp", "0.0.0.0", 1),
                ("c", "udp", "127.0.0.1", 1),
            ]),
            [
                "udp/0.0.0.0:1 overlaps 127.0.0.1:1 of service \"a\"",
                "udp/127.0.0.1:1 overlaps 127.0.0.1:1 of service \"a\"",
            ]
        );
    }

    /// A folder of its own under the system's temporary folder, removed at the end.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("rinetd-resolve-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }

        fn script(&self, name: &str, text: &str) -> String {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn resolved(yaml: &str) -> Result<(Vec<Service>, Vec<String>), Vec<String>> {
        resolve_yaml(yaml).map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn the_new_keys_reach_the_runtime_service() {
        let scratch = Scratch::new("new-keys");
        let server = scratch.script("run.sh", "#!/bin/sh\nexit 0\n");
        let yaml = format!(
            "defaults:\n  respawn_max_delay: 5m\n  per_source_rate: {{max: 3, per: 10s}}\n  source_prefix: {{ipv6: 48}}\n\
             services:\n  - {{name: keeper, protocol: none, respawn: true, notify: true, server: {server}}}\n\
             \x20 - {{name: web, port: 1, server: {server}, nice: 0}}\n"
        );
        let (services, _) = resolved(&yaml).unwrap();
        let keeper = &services[0];
        assert_eq!(keeper.supervise, Some(Supervise { notify: true }));
        assert!(keeper.listen.is_empty());
        assert_eq!(
            keeper.restart_max_delay,
            std::time::Duration::from_secs(300)
        );
        assert_eq!(keeper.limits.per_source_rate, None);
        let web = &services[1];
        assert_eq!(web.supervise, None);
        assert_eq!(
            web.limits.per_source_rate.as_deref(),
            Some(&crate::service::SourceRate {
                max: 3,
                per: std::time::Duration::from_secs(10)
            })
        );
        assert_eq!(web.limits.source_prefix.ipv6, 48);
        assert_eq!(web.exec_plan().map(|plan| plan.nice), Some(Some(0)));
        assert_eq!(keeper.exec_plan().map(|plan| plan.nice), Some(None));
    }

    #[test]
    fn a_script_exec_cannot_follow_is_a_warning_and_its_reason_rides_in_the_plan() {
        let scratch = Scratch::new("interpreter");
        let windows = scratch.script("windows.sh", "#!/bin/sh\r\nexit 0\r\n");
        let missing = scratch.script("missing.sh", "#!/no/such/interpreter -x\nexit 0\n");
        let fine = scratch.script("fine.sh", "#!/bin/sh\nexit 0\n");
        let yaml = format!(
            "services:\n  - {{name: w, port: 1, server: {windows}}}\n  - {{name: m, port: 2, server: {missing}}}\n  - {{name: f, port: 3, server: {fine}}}\n"
        );
        let (services, warnings) = resolved(&yaml).unwrap();
        let problems: Vec<Option<Box<str>>> = services
            .iter()
            .map(|service| {
                service
                    .exec_plan()
                    .and_then(|plan| plan.script_problem.clone())
            })
            .collect();
        assert!(
            problems[0]
                .as_deref()
                .is_some_and(|p| p.contains("Windows line endings")),
            "{problems:?}"
        );
        assert!(
            problems[1]
                .as_deref()
                .is_some_and(|p| p.contains("interpreter /no/such/interpreter does not exist")),
            "{problems:?}"
        );
        assert_eq!(problems[2], None);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("t:2:")
                && warnings[0].contains(": service \"w\": key \"server\": "),
            "{warnings:?}"
        );
    }

    #[test]
    fn tls_settings_are_loaded_into_the_service() {
        let scratch = Scratch::new("tls");
        let made = std::process::Command::new("openssl")
            .current_dir(&scratch.0)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ])
            .output();
        if !made.is_ok_and(|made| made.status.success()) {
            eprintln!("skipped: the openssl CLI is needed to make a certificate");
            return;
        }
        let dir = scratch.0.display();
        let yaml = format!(
            "services:\n  - {{name: s, port: 1, builtin: echo, tls: {{cert: {dir}/cert.pem, key: {dir}/key.pem, alpn: [h2]}}}}\n\
             \x20 - {{name: bad, port: 2, builtin: echo, tls: {{cert: {dir}/cert.pem, key: {dir}/nokey.pem}}}}\n"
        );
        let errors = resolved(&yaml).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("t:3:")
                && errors[0].contains(": service \"bad\": key \"tls.key\": ")
                && errors[0].ends_with("nokey.pem: cannot read it: No such file or directory"),
            "{errors:?}"
        );
        let yaml = yaml.lines().take(2).collect::<Vec<_>>().join("\n");
        let (services, _) = resolved(&yaml).unwrap();
        let tls = services[0].tls.as_ref().expect("tls loaded");
        assert_eq!(tls.settings.alpn, ["h2"]);
        assert_eq!(tls.config.alpn_protocols, [b"h2".to_vec()]);
    }

    #[test]
    fn the_shared_entries_are_what_formatting_would_give() {
        assert_eq!(
            DEFAULT_PATH_ENTRY.to_str().unwrap(),
            format!("PATH={DEFAULT_PATH}")
        );
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Unix, Protocol::None] {
            let value = protocol.as_str().to_ascii_uppercase();
            let entry = shared_entry("PROTO", &value).expect("a shared entry");
            assert_eq!(entry.to_str().unwrap(), format!("PROTO={value}"));
        }
        assert_eq!(shared_entry("PATH", "/bin"), None);
    }

    #[test]
    fn one_load_reads_etc_services_once_with_the_same_answers() {
        let text = "echo 7/tcp\necho 7/udp\nwww 80/tcp http # web\nhttp 8080/tcp\n\
                    bad x/tcp\nbad 9/tcp\n# gone 5/tcp\nalias 11/udp other\n";
        let mut lookups = Lookups::default();
        for name in [
            "echo", "www", "http", "bad", "gone", "other", "alias", "nope",
        ] {
            for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Unix] {
                assert_eq!(
                    lookups.port(text, name, protocol),
                    service_port(text, name, protocol),
                    "{name}/{protocol:?}"
                );
            }
        }
        assert!(lookups.ports.is_some());
    }

    #[test]
    fn service_names_and_aliases() {
        let text = "echo 7/tcp\necho 7/udp\nwww 80/tcp http # web\n";
        assert_eq!(service_port(text, "echo", Protocol::Udp), Some(7));
        assert_eq!(service_port(text, "http", Protocol::Tcp), Some(80));
        assert_eq!(service_port(text, "http", Protocol::Udp), None);
        assert_eq!(service_port(text, "nope", Protocol::Tcp), None);
    }
}
