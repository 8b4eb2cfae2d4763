//! A small YAML writer for converted tables: services as key/value entries with comments,
//! rendered in the layout of `man/rinetd.conf.5`, remembering which source line (and field)
//! each output line came from so that errors about the output can point at the input.

use std::fmt::Write as _;

/// Where in the source file (inetd.conf, xinetd file) a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column of the field (1 when the whole line is meant).
    pub column: usize,
    /// The field's name as the source format's manual calls it, e.g. "server program".
    pub field: &'static str,
}

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    /// A flow list of strings: `[a, "b c"]`.
    List(Vec<String>),
    /// A flow map of scalars: `{max: 5, per: 60s}`.
    Inline(Vec<(&'static str, Value)>),
    /// A block map of strings (env, rlimits): one `key: value` line each.
    Map(Vec<(String, Value)>),
}

/// One `key: value` of a service or of `defaults:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: &'static str,
    pub value: Value,
    pub origin: Option<Origin>,
}

/// One entry of `services:`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceDoc {
    pub name: String,
    /// Comment lines written above the entry (where it came from, what was left out).
    pub notes: Vec<String>,
    pub entries: Vec<Entry>,
    pub origin: Option<Origin>,
    /// Written as comments only: a service rinetd cannot run (the notes say why).
    pub commented_out: bool,
}

impl ServiceDoc {
    pub fn set(&mut self, key: &'static str, value: Value, origin: Option<Origin>) {
        self.entries.retain(|entry| entry.key != key);
        self.entries.push(Entry { key, value, origin });
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|entry| entry.key == key)
            .map(|entry| &entry.value)
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        let index = self.entries.iter().position(|entry| entry.key == key)?;
        Some(self.entries.remove(index))
    }
}

/// A whole table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    /// Comment lines at the top.
    pub header: Vec<String>,
    pub defaults_notes: Vec<String>,
    pub defaults: Vec<Entry>,
    pub services: Vec<ServiceDoc>,
}

/// The YAML text, and for each of its lines (index 0 = line 1) the source it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub origins: Vec<Option<Origin>>,
}

struct Writer {
    text: String,
    origins: Vec<Option<Origin>>,
}

impl Writer {
    fn line(&mut self, line: &str, origin: Option<&Origin>) {
        self.text.push_str(line);
        self.text.push('\n');
        self.origins.push(origin.cloned());
    }

    fn comment(&mut self, indent: &str, note: &str) {
        // A note may hold newlines of its own; each line stays a comment. What it quotes from
        // the source may hold characters a YAML comment cannot (a NUL, a CR that would end the
        // line): those are written as escapes.
        for part in note.split('\n') {
            let part = part.trim_end();
            if part.is_empty() {
                self.line(&format!("{indent}#"), None);
            } else {
                let mut line = format!("{indent}# ");
                for c in part.chars() {
                    push_char(&mut line, c);
                }
                self.line(&line, None);
            }
        }
    }

    /// `key: value` lines at `indent`; `prefix` is written before each (`# ` when commented).
    fn entries(&mut self, indent: &str, prefix: &str, first: Option<&str>, entries: &[Entry]) {
        for (index, entry) in entries.iter().enumerate() {
            let lead = match (index, first) {
                (0, Some(first)) => first.to_string(),
                _ => indent.to_string(),
            };
            let origin = entry.origin.as_ref();
            match &entry.value {
                Value::Map(pairs) => {
                    self.line(&format!("{prefix}{lead}{}:", entry.key), origin);
                    for (key, value) in pairs {
                        self.line(
                            &format!("{prefix}{indent}  {}: {}", scalar(key), inline(value)),
                            origin,
                        );
                    }
                }
                value => self.line(
                    &format!("{prefix}{lead}{}: {}", entry.key, inline(value)),
                    origin,
                ),
            }
        }
    }
}

/// Renders `doc` as YAML that `rinetd -t` reads.
pub fn render(doc: &Document) -> Rendered {
    let mut w = Writer {
        text: String::new(),
        origins: Vec::new(),
    };
    for note in &doc.header {
        w.comment("", note);
    }
    if !doc.defaults.is_empty() || !doc.defaults_notes.is_empty() {
        for note in &doc.defaults_notes {
            w.comment("", note);
        }
        if !doc.defaults.is_empty() {
            w.line("defaults:", None);
            w.entries("  ", "", None, &doc.defaults);
        }
        w.line("", None);
    }
    let live = doc.services.iter().any(|service| !service.commented_out);
    w.line(if live { "services:" } else { "services: []" }, None);
    for (index, service) in doc.services.iter().enumerate() {
        if index > 0 {
            w.line("", None);
        }
        for note in &service.notes {
            w.comment("  ", note);
        }
        let prefix = if service.commented_out { "  # " } else { "" };
        let indent = if service.commented_out { "  " } else { "    " };
        let first = if service.commented_out { "- " } else { "  - " };
        let mut entries = vec![Entry {
            key: "name",
            value: Value::Text(service.name.clone()),
            origin: service.origin.clone(),
        }];
        entries.extend(service.entries.iter().cloned());
        w.entries(indent, prefix, Some(first), &entries);
    }
    Rendered {
        text: w.text,
        origins: w.origins,
    }
}

/// A value written on one line.
fn inline(value: &Value) -> String {
    match value {
        Value::Text(text) => scalar(text),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::List(items) => {
            let items: Vec<String> = items.iter().map(|item| scalar(item)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Inline(pairs) => flow(pairs.iter().map(|(key, value)| (scalar(key), value))),
        // Only reached for a map nested in a flow value: it has no block form there.
        Value::Map(pairs) => flow(pairs.iter().map(|(key, value)| (scalar(key), value))),
    }
}

/// `{key: value, …}`.
fn flow<'a>(pairs: impl Iterator<Item = (String, &'a Value)>) -> String {
    let pairs: Vec<String> = pairs
        .map(|(key, value)| format!("{key}: {}", inline(value)))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// A string as a YAML scalar: plain when that cannot be read as anything but this string,
/// double-quoted (with escapes) otherwise.
pub fn scalar(text: &str) -> String {
    if is_plain_safe(text) {
        return text.to_string();
    }
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c => push_char(&mut quoted, c),
        }
    }
    quoted.push('"');
    quoted
}

/// `c`, or its YAML escape (`\xNN`, `\uNNNN`) where YAML would not read it back as itself
/// inside a double-quoted scalar or a comment: control characters (C0 but the tab, DEL, C1),
/// the line and paragraph separators, a byte-order mark and the two non-characters.
fn push_char(out: &mut String, c: char) {
    let code = u32::from(c);
    match c {
        '\t' => out.push(c),
        '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
            let _ = write!(out, "\\x{code:02x}");
        }
        '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
            let _ = write!(out, "\\u{code:04x}");
        }
        c => out.push(c),
    }
}

/// Letters, digits and `/ _ . + -`, not starting with a sign or a dot, not one of YAML's
/// words for booleans or null, and not something YAML reads as a number (`022`, `1e3`,
/// `0x1f`; `10.0.0.1` and `60s` are fine).
fn is_plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let charset = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '+' | '-'));
    let special = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~",
    ];
    let word = special.iter().any(|s| s.eq_ignore_ascii_case(text));
    let numeric = first.is_ascii_digit()
        && (text.parse::<f64>().is_ok()
            || ["0x", "0o", "0b"]
                .iter()
                .any(|radix| text.starts_with(radix)));
    charset && !word && !numeric && !matches!(first, '-' | '+' | '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_only_when_yaml_would_misread_them() {
        assert_eq!(scalar("echo"), "echo");
        assert_eq!(scalar("/usr/sbin/in.ftpd"), "/usr/sbin/in.ftpd");
        assert_eq!(scalar("127.0.0.1"), "127.0.0.1");
        assert_eq!(scalar("::"), "\"::\"");
        assert_eq!(scalar("022"), "\"022\"");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("-l"), "\"-l\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar("a \"b\"\\"), "\"a \\\"b\\\"\\\\\"");
        assert_eq!(scalar("tab\there"), "\"tab\\there\"");
        assert_eq!(scalar("bell\u{7}"), "\"bell\\x07\"");
        assert_eq!(scalar("nel\u{85}\u{2028}"), "\"nel\\x85\\u2028\"");
    }

    #[test]
    fn a_document_renders_with_origins_per_line() {
        let origin = Origin {
            file: "inetd.conf".into(),
            line: 3,
            column: 7,
            field: "server program",
        };
        let mut service = ServiceDoc {
            name: "echo".into(),
            notes: vec!["inetd.conf:3".into()],
            ..ServiceDoc::default()
        };
        service.set("builtin", Value::Text("echo".into()), Some(origin.clone()));
        service.set(
            "rate_limit",
            Value::Inline(vec![
                ("max", Value::Int(5)),
                ("per", Value::Text("60s".into())),
            ]),
            None,
        );
        service.set(
            "env",
            Value::Map(vec![("A".into(), Value::Text("b c".into()))]),
            None,
        );
        let doc = Document {
            header: vec!["converted".into()],
            services: vec![service],
            ..Document::default()
        };
        let rendered = render(&doc);
        assert_eq!(
            rendered.text,
            "# converted\nservices:\n  # inetd.conf:3\n  - name: echo\n    builtin: echo\n    rate_limit: {max: 5, per: 60s}\n    env:\n      A: \"b c\"\n"
        );
        assert_eq!(rendered.origins.len(), 8);
        assert_eq!(rendered.origins[4], Some(origin));
    }

    #[test]
    fn a_commented_out_service_is_all_comments() {
        let doc = Document {
            services: vec![ServiceDoc {
                name: "servers".into(),
                notes: vec!["no equivalent".into()],
                commented_out: true,
                entries: vec![Entry {
                    key: "port",
                    value: Value::Int(9099),
                    origin: None,
                }],
                origin: None,
            }],
            ..Document::default()
        };
        assert_eq!(
            render(&doc).text,
            "services: []\n  # no equivalent\n  # - name: servers\n  #   port: 9099\n"
        );
    }
}
