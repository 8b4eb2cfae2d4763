//! Checks every log line the integration tests made rinetd write (one file per daemon, kept by
//! tests/integration/harness.rs when RINETD_TEST_LOGS is set): each parses with a logfmt parser
//! (the `tpt-logfmt-parse` crate) and has one of the shapes docs/log-events.md lists under
//! "Every shape", so that page says exactly what rinetd writes.
//!
//! `make test` runs it after the integration tests, with RINETD_CHECK_LOGS naming the folder;
//! without it (a plain `cargo test`) it says so and checks nothing.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

/// A logfmt value: quoted with escapes, or bare (no space, quote or equals sign).
const VALUE: &str = r#"(?:"(?:[^"\\]|\\.)*"|[^\s"=]+)"#;
const SERVICE: &str = r"[A-Za-z0-9][A-Za-z0-9._-]*/(?:tcp|udp|unix|none)";
const PREFIX: &str = "rinetd: (?:warning: |error: )?";

/// A shape line of the docs as a regular expression for a whole line: `<name>` is a value
/// (`<service>` a service label), `[…]` may be left out, `{…}` may repeat.
fn shape_regex(shape: &str) -> Regex {
    let mut pattern = format!("^{PREFIX}");
    let mut rest = shape;
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let end = rest.find('>').expect("a closed <name>");
                pattern.push_str(if &rest[1..end] == "service" {
                    SERVICE
                } else {
                    VALUE
                });
                rest = &rest[end + 1..];
                continue;
            }
            '[' | '{' => pattern.push_str("(?:"),
            ']' => pattern.push_str(")?"),
            '}' => pattern.push_str(")*"),
            c => pattern.push_str(&regex::escape(&c.to_string())),
        }
        rest = &rest[c.len_utf8()..];
    }
    pattern.push('$');
    Regex::new(&pattern).expect("a shape makes a regular expression")
}

fn shapes(doc: &Path) -> Vec<(String, Regex)> {
    let text = std::fs::read_to_string(doc).expect("read docs/log-events.md");
    let block = text
        .split("```shapes\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```shapes block in docs/log-events.md");
    block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| (line.to_string(), shape_regex(line)))
        .collect()
}

fn main() {
    let Some(folder) = std::env::var_os("RINETD_CHECK_LOGS") else {
        println!("logfmt check: nothing to check (make test runs it after the integration tests)");
        return;
    };
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/log-events.md");
    let known = shapes(&doc);
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .expect("read the log folder")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no logs in {folder:?}");
    let (mut lines, mut bad) = (0, 0);
    let mut seen = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            lines += 1;
            let problem = match tpt_logfmt_parse::LogfmtParser::new(line).find_map(Result::err) {
                Some(err) => Some(format!("not logfmt: {err}")),
                None => match known.iter().find(|(_, shape)| shape.is_match(line)) {
                    Some((shape, _)) => {
                        seen.insert(shape.clone());
                        None
                    }
                    None => Some("has no shape listed in docs/log-events.md".to_string()),
                },
            };
            if let Some(problem) = problem {
                bad += 1;
                if bad <= 20 {
                    eprintln!("{}: {problem}:\n    {line}", file.display());
                }
            }
        }
    }
    println!(
        "logfmt check: {lines} lines from {} daemons, {bad} bad; {} of {} documented shapes seen",
        files.len(),
        seen.len(),
        known.len()
    );
    assert_eq!(bad, 0, "log lines that are not as docs/log-events.md says");
}
