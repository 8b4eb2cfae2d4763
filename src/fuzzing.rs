//! The pure entry points the fuzzers in `fuzz/` call: thin wrappers over the parsers, each
//! with no behaviour of its own, reading no file and asking the system nothing. Whatever the
//! input, none of them may panic; `fuzz/fuzz_targets/` states the other properties they keep.

use crate::compat::{self, Mode};
use crate::config;
pub use crate::proxy::{MAX_HEADER_LEN, Parsed, V1_MAX_LEN, parse as parse_proxy_header};

/// The loader and checker on one YAML table (`include:` names nothing): the number of
/// services, or every error as a line.
pub fn check_table_text(text: &str) -> Result<usize, Vec<String>> {
    crate::check_table_text(text)
}

/// `rinetd -T` on one YAML table that the checker accepts (a `port:` name stands for port 1):
/// the effective table as YAML, or every error as a line.
pub fn dump_table_text(text: &str) -> Result<String, Vec<String>> {
    let (table, errors) = config::parse_partial("table", text, &mut |_| Ok(Vec::new()));
    if errors.is_empty() {
        Ok(config::dump::render(&table, &|_| Some(1)))
    } else {
        Err(errors.iter().map(ToString::to_string).collect())
    }
}

/// Whether the fast reader of the common table shape, where it reads `text`, agrees with the
/// general YAML parser (the same tree, the same positions, no syntax error).
pub fn simple_yaml_agrees(text: &str) -> bool {
    config::simple_reading_agrees(text)
}

/// The YAML syntax error that stops the reading of `text`, if there is one (`LINE:COLUMN:
/// message`); what the checker says of the values is left out.
pub fn yaml_syntax_error(text: &str) -> Option<String> {
    config::syntax_error(text)
        .map(|(pos, message)| format!("{}:{}: {message}", pos.line, pos.column))
}

/// The include glob matcher (fnmatch(3) without flags, on bytes): whether `name` matches
/// `pattern`, and how many pattern elements it compared on the way.
pub fn glob_matches_counting(pattern: &[u8], name: &[u8]) -> (bool, usize) {
    let mut steps = 0;
    let matched = crate::include::matches_counting(pattern, name, &mut steps);
    (matched, steps)
}

/// An inetd.conf translated to YAML text, as `rinetd --format inetd` (`convert: false`) or
/// `rinetd convert --from inetd` (`convert: true`) does it; or the inetd syntax errors.
pub fn inetd_to_yaml(text: &str, convert: bool) -> Result<String, Vec<String>> {
    let mode = if convert { Mode::Convert } else { Mode::Run };
    let translation = compat::inetd::translate("inetd.conf", text, mode);
    if translation.errors.is_empty() {
        Ok(compat::emit::render(&translation.doc).text)
    } else {
        Err(translation.errors)
    }
}

/// An inetd.conf loaded as `rinetd --format inetd -t` loads it, short of the system lookups:
/// translated, checked, and every error about the generated YAML pointed back at the
/// inetd.conf. The number of services, or every error as a line.
pub fn check_inetd_text(text: &str) -> Result<usize, Vec<String>> {
    let (yaml, map, _left_out) = compat::inetd_as_yaml("inetd.conf", text)?;
    let (table, errors) = config::parse_partial("inetd.conf", &yaml, &mut |_| Ok(Vec::new()));
    if errors.is_empty() {
        Ok(table.services.len())
    } else {
        Err(errors.iter().map(|error| map.relocate(error)).collect())
    }
}

/// An xinetd configuration translated to YAML text, as `rinetd convert --from xinetd` does it
/// (an `include` or `includedir` reads nothing); or the xinetd syntax errors.
pub fn xinetd_to_yaml(text: &str) -> Result<String, Vec<String>> {
    let translation = compat::xinetd::translate("xinetd.conf", text, &mut |_, _| Ok(Vec::new()));
    if translation.errors.is_empty() {
        Ok(compat::emit::render(&translation.doc).text)
    } else {
        Err(translation.errors)
    }
}
