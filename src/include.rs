//! `include:` entries on the filesystem: a path or a glob (`*`, `?`, `[…]` in its last
//! component) relative to the including file's folder, expanded in C-locale (byte) order.

use std::path::{Path, PathBuf};

/// The files `pattern` names, sorted. A literal path must exist; a glob may match nothing.
pub fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = base.join(pattern);
    let name = full
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| "not a file path".to_string())?;
    if !name.contains(['*', '?', '[']) {
        return if full.is_file() {
            Ok(vec![full])
        } else {
            Err(format!(
                "{} does not exist or is not a file",
                full.display()
            ))
        };
    }
    let folder = full.parent().unwrap_or(Path::new("/"));
    if folder.to_str().is_some_and(|f| f.contains(['*', '?', '['])) {
        return Err("wildcards are allowed in the last path component only".to_string());
    }
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        // A conf.d folder that does not exist yet simply holds nothing.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(format!("{}: {err}", folder.display())),
    };
    let mut matches: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let file_name = entry.file_name();
            let file_name = file_name.as_encoded_bytes();
            // Like the shell, a wildcard does not match a leading dot.
            let hidden = file_name.starts_with(b".") && !name.starts_with('.');
            !hidden && matches(name.as_bytes(), file_name) && entry.path().is_file()
        })
        .map(|entry| entry.path())
        .collect();
    matches.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(matches)
}

/// fnmatch(3) without flags, on bytes: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| matches(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && matches(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some((&first, tail)) = name.split_first() else {
                return false;
            };
            let (negated, set) = match rest.split_first() {
                Some((b'!' | b'^', set)) => (true, set),
                _ => (false, rest),
            };
            // `]` right after `[` or `[!` is a member, not the end.
            let Some(end) = set.iter().skip(1).position(|b| *b == b']').map(|p| p + 1) else {
                return first == b'[' && matches(rest, tail);
            };
            let members = &set[..end];
            let mut found = false;
            let mut i = 0;
            while i < members.len() {
                if i + 2 < members.len() && members[i + 1] == b'-' {
                    found |= (members[i]..=members[i + 2]).contains(&first);
                    i += 3;
                } else {
                    found |= members[i] == first;
                    i += 1;
                }
            }
            found != negated && matches(&set[end + 1..], tail)
        }
        Some((literal, rest)) => name.first() == Some(literal) && matches(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn glob_matching() {
        assert!(matches(b"*.yaml", b"a.yaml"));
        assert!(!matches(b"*.yaml", b"a.yml"));
        assert!(matches(b"?.conf", b"x.conf"));
        assert!(matches(b"[a-c]*", b"beta"));
        assert!(!matches(b"[!a-c]*", b"beta"));
        assert!(matches(b"[]x]", b"]"));
        assert!(matches(b"*", b""));
    }
}
