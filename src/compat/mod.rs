//! Compatibility with the formats users arrive with: classic inetd.conf (`--format inetd`,
//! `convert --from inetd`) and xinetd (`convert --from xinetd`), and the hints a YAML table
//! gets when it is one of those in disguise. The readers are pure and translate into YAML
//! text, which then goes through the one loader every table goes through; this module reads
//! the files and points errors about the generated text back at the source lines.

pub mod emit;
pub mod inetd;
pub mod xinetd;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use emit::{Document, Origin};

use crate::config::{Builtin, ConfigError};

/// What a translation is for: running the file (`--format inetd`), where a service rinetd
/// cannot serve is an error, or converting it, where it becomes a commented-out entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Run,
    Convert,
}

/// The document read from a source file, the problems that stop it, and the settings that
/// were left out (also written as comments in the document).
#[derive(Debug, Default)]
pub struct Translation {
    pub doc: Document,
    /// `FILE:LINE[:COL]: …`, every one of them.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// The formats `convert` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Inetd,
    Xinetd,
}

/// Whether `text` reads like an inetd.conf or an xinetd file (for `convert` without `--from`
/// and for the hint after a YAML error). Looks at lines, never at more than the text.
pub fn looks_like(text: &str) -> Option<Detected> {
    let mut inetd_lines = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().take(7).collect();
        match words.as_slice() {
            ["service", _] | ["service", _, "{"] | ["defaults"] | ["defaults", "{"] => {
                return Some(Detected::Xinetd);
            }
            ["includedir", _] => return Some(Detected::Xinetd),
            [_, socket, proto, wait, _, _, ..]
                if matches!(*socket, "stream" | "dgram" | "raw" | "rdm" | "seqpacket")
                    && ["tcp", "udp", "unix", "rpc/"]
                        .iter()
                        .any(|p| proto.starts_with(p))
                    && (wait.starts_with("wait") || wait.starts_with("nowait")) =>
            {
                inetd_lines += 1;
            }
            _ => {}
        }
    }
    (inetd_lines > 0).then_some(Detected::Inetd)
}

/// The sentence added to a YAML syntax error in `file` when it is really another format.
pub fn hint_for_unparsable(file: &str, text: &str) -> Option<String> {
    match looks_like(text)? {
        Detected::Inetd => Some(format!(
            "this looks like an inetd.conf: run it with `rinetd --format inetd -c {file}`, or turn it into YAML with `rinetd convert {file}`"
        )),
        Detected::Xinetd => Some(format!(
            "this looks like an xinetd configuration: turn it into YAML with `rinetd convert {file}`"
        )),
    }
}

/// The rinetd key that replaces an xinetd attribute written as a YAML key.
pub fn replacement_for_xinetd_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "cps" => "rate_limit: {max: N, per: 1s, pause: WAIT}",
        "instances" => "max_children",
        "server_args" => "args (argv[0] first, unlike server_args)",
        "socket_type" => "protocol (stream: tcp, dgram: udp) and wait",
        "bind" | "interface" => "address",
        "passenv" => "pass_env",
        "disable" => "disabled",
        "id" => "name",
        "type" => "builtin (for type = INTERNAL)",
        "rlimit_as" | "rlimit_cpu" | "rlimit_data" | "rlimit_files" | "rlimit_stack"
        | "rlimit_core" => "rlimits: {as, cpu, data, nofile, stack, core}",
        "flags" => "keepalive (flags KEEPALIVE), address (flags IPv6)",
        _ => return None,
    })
}

/// The builtin an inetd/xinetd internal service name stands for.
pub fn builtin_named(name: &str) -> Option<&'static str> {
    Builtin::ALL
        .iter()
        .map(|(builtin, _)| *builtin)
        .find(|builtin| *builtin == name)
}

/// A service name rinetd accepts (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`) and no other service has:
/// `base`, else `base-proto`, else `base-proto-LINE`, else with a counter.
pub fn unique_name(taken: &mut HashSet<String>, base: &str, proto: &str, line: usize) -> String {
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(48)
        .collect();
    if clean.is_empty() {
        clean = format!("line{line}");
    }
    let candidates = [
        clean.clone(),
        format!("{clean}-{proto}"),
        format!("{clean}-{proto}-{line}"),
    ];
    let mut chosen = candidates.into_iter().find(|name| !taken.contains(name));
    let mut counter = 2;
    while chosen.is_none() {
        let name = format!("{clean}-{proto}-{line}-{counter}");
        if !taken.contains(&name) {
            chosen = Some(name);
        }
        counter += 1;
    }
    let name = chosen.unwrap_or_default();
    taken.insert(name.clone());
    name
}

/// Points errors about generated YAML back at the source lines and fields they came from.
#[derive(Debug, Clone)]
pub struct LineMap {
    /// The name the generated YAML was parsed under (the source file as shown).
    pub file: String,
    pub origins: Vec<Option<Origin>>,
}

impl LineMap {
    fn origin(&self, line: u64) -> Option<&Origin> {
        let index = usize::try_from(line).ok()?.checked_sub(1)?;
        self.origins.get(index)?.as_ref()
    }

    /// `FILE:LINE:COL: service "NAME": FIELD field: …` for an error about the generated YAML.
    pub fn relocate(&self, error: &ConfigError) -> String {
        let origin = error
            .pos
            .filter(|_| error.file == self.file)
            .and_then(|pos| self.origin(pos.line));
        let Some(origin) = origin else {
            return error.to_string();
        };
        let service = error
            .service
            .as_ref()
            .map(|name| format!(" service \"{name}\":"))
            .unwrap_or_default();
        format!(
            "{}:{}:{}:{service} {}",
            origin.file,
            origin.line,
            origin.column,
            name_field(&error.message, origin.field)
        )
    }

    /// The same for a message already written as text (`FILE:LINE:COL: …`, e.g. a warning).
    pub fn relocate_text(&self, text: &str) -> String {
        let Some(rest) = text
            .strip_prefix(&self.file)
            .and_then(|r| r.strip_prefix(':'))
        else {
            return text.to_string();
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(line), Some(_column), Some(message)) = (parts.next(), parts.next(), parts.next())
        else {
            return text.to_string();
        };
        match line.parse::<u64>().ok().and_then(|line| self.origin(line)) {
            Some(origin) => format!(
                "{}:{}:{}:{message}",
                origin.file, origin.line, origin.column
            ),
            None => text.to_string(),
        }
    }
}

/// `key "server": …` said of the generated YAML becomes `server program field: …`.
fn name_field(message: &str, field: &str) -> String {
    if let Some(rest) = message.strip_prefix("key \"")
        && let Some((_, after)) = rest.split_once("\": ")
    {
        return format!("{field} field: {after}");
    }
    message.to_string()
}

/// An inetd.conf as YAML text for the one loader, with the map back to its lines, and the
/// warnings about settings it left out. Errors of the inetd syntax itself come all at once.
pub fn inetd_as_yaml(
    shown: &str,
    text: &str,
) -> Result<(String, LineMap, Vec<String>), Vec<String>> {
    let translation = inetd::translate(shown, text, Mode::Run);
    if !translation.errors.is_empty() {
        return Err(translation.errors);
    }
    let rendered = emit::render(&translation.doc);
    let map = LineMap {
        file: shown.to_string(),
        origins: rendered.origins,
    };
    Ok((rendered.text, map, translation.warnings))
}

/// `rinetd convert`: the YAML table for `path`, and the warnings for stderr; or every error.
pub fn convert(path: &Path, from: Option<Detected>) -> Result<(String, Vec<String>), Vec<String>> {
    let shown = path.display().to_string();
    let (text, from) = if path.is_dir() {
        // An xinetd.d folder: what `includedir` would read.
        let folder = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        (
            format!("includedir {}\n", folder.display()),
            Detected::Xinetd,
        )
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|err| vec![format!("{shown}: {}", plain(&err))])?;
        let from = match from.or_else(|| looks_like(&text)) {
            Some(from) => from,
            None => {
                return Err(vec![format!(
                    "{shown}: neither an inetd.conf nor an xinetd file that I can tell; say which with --from inetd or --from xinetd"
                )]);
            }
        };
        (text, from)
    };
    let translation = match from {
        Detected::Inetd => inetd::translate(&shown, &text, Mode::Convert),
        Detected::Xinetd => xinetd::translate(&shown, &text, &mut read_xinetd_include),
    };
    if !translation.errors.is_empty() {
        return Err(translation.errors);
    }
    Ok((emit::render(&translation.doc).text, translation.warnings))
}

/// An OS error as its plain description, without Rust's "(os error N)".
fn plain(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rsplit_once(" (os error ") {
        Some((description, _)) => description.to_string(),
        None => text,
    }
}

/// Reads an xinetd `include` or `includedir`, relative to the including file's folder.
fn read_xinetd_include(
    from: &str,
    include: xinetd::Include<'_>,
) -> Result<Vec<(String, String)>, String> {
    let base = Path::new(from).parent().unwrap_or(Path::new("/"));
    let read = |path: PathBuf| -> Result<(String, String), String> {
        let text = std::fs::read_to_string(&path)
            .map_err(|err| format!("{}: {}", path.display(), plain(&err)))?;
        Ok((path.display().to_string(), text))
    };
    match include {
        xinetd::Include::File(file) => Ok(vec![read(base.join(file))?]),
        xinetd::Include::Dir(dir) => {
            let dir = base.join(dir);
            let entries = std::fs::read_dir(&dir)
                .map_err(|err| format!("{}: {}", dir.display(), plain(&err)))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    // As xinetd: names with a dot or ending in ~ are backups and packaging leftovers.
                    !name.contains('.') && !name.ends_with('~') && entry.path().is_file()
                })
                .map(|entry| entry.path())
                .collect();
            files.sort();
            files.into_iter().map(read).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pos;

    #[test]
    fn detection() {
        assert_eq!(
            looks_like("# x\necho stream tcp nowait root internal\n"),
            Some(Detected::Inetd)
        );
        assert_eq!(looks_like("service echo\n{\n}\n"), Some(Detected::Xinetd));
        assert_eq!(looks_like("defaults\n{\n}\n"), Some(Detected::Xinetd));
        assert_eq!(looks_like("services:\n  - name: a\n"), None);
    }

    #[test]
    fn xinetd_keys_name_their_replacement() {
        assert_eq!(
            replacement_for_xinetd_key("instances"),
            Some("max_children")
        );
        assert!(replacement_for_xinetd_key("cps").is_some_and(|r| r.starts_with("rate_limit")));
        assert!(replacement_for_xinetd_key("socket_type").is_some_and(|r| r.contains("protocol")));
        assert_eq!(replacement_for_xinetd_key("server"), None);
    }

    #[test]
    fn unique_names() {
        let mut taken = HashSet::new();
        assert_eq!(unique_name(&mut taken, "echo", "tcp", 1), "echo");
        assert_eq!(unique_name(&mut taken, "echo", "tcp", 2), "echo-tcp");
        assert_eq!(unique_name(&mut taken, "echo", "tcp", 3), "echo-tcp-3");
        assert_eq!(unique_name(&mut taken, "echo", "tcp", 3), "echo-tcp-3-2");
        assert_eq!(unique_name(&mut taken, "/x y", "tcp", 4), "x-y");
        assert_eq!(unique_name(&mut taken, "***", "tcp", 5), "line5");
    }

    #[test]
    fn errors_about_the_yaml_point_at_the_inetd_line_and_field() {
        let (yaml, map, _) =
            inetd_as_yaml("inetd.conf", "# c\nx stream tcp nowait nobody /nope nope\n").unwrap();
        let line = yaml
            .lines()
            .position(|l| l.contains("server: /nope"))
            .unwrap() as u64
            + 1;
        let error = ConfigError {
            file: "inetd.conf".into(),
            pos: Some(Pos { line, column: 13 }),
            service: Some("x".into()),
            message: "key \"server\": /nope: No such file or directory".into(),
        };
        assert_eq!(
            map.relocate(&error),
            "inetd.conf:2:28: service \"x\": server program field: /nope: No such file or directory"
        );
        assert_eq!(
            map.relocate_text(&format!("inetd.conf:{line}:5: service \"x\": runs as root")),
            "inetd.conf:2:28: service \"x\": runs as root"
        );
    }
}
