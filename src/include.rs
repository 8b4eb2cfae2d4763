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
    matches_counting(pattern, name, &mut 0)
}

/// The matcher, counting the pattern elements it compares. It goes forward through the name
/// once and, on a mismatch, retries only from the latest `*` (a later `*` makes earlier ones
/// irrelevant), so the work is at most (pattern length + 1) × (name length + 1): a pattern
/// with many `*` cannot make it exponential.
pub(crate) fn matches_counting(pattern: &[u8], name: &[u8], steps: &mut usize) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where to resume after the latest `*`: the pattern after it, and the next name position
    // that star would swallow.
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        *steps += 1;
        let step = match pattern.get(p) {
            Some(b'*') => {
                resume = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&pattern[p + 1..], name[n]) {
                Class::Matched(len) => Some(len + 1),
                Class::Missed => None,
                Class::Literal => (name[n] == b'[').then_some(1),
            },
            Some(literal) => (*literal == name[n]).then_some(1),
            None => None,
        };
        match (step, resume) {
            (Some(len), _) => {
                p += len;
                n += 1;
            }
            (None, Some((after_star, swallowed))) => {
                resume = Some((after_star, swallowed + 1));
                p = after_star;
                n = swallowed + 1;
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// What a bracket expression (the pattern right after its `[`) says about one byte.
enum Class {
    /// The byte is in the class, which is this long (up to and including its `]`).
    Matched(usize),
    Missed,
    /// No closing `]`: the `[` is an ordinary character.
    Literal,
}

fn class(rest: &[u8], byte: u8) -> Class {
    let (negated, set, skip) = match rest.split_first() {
        Some((b'!' | b'^', set)) => (true, set, 1),
        _ => (false, rest, 0),
    };
    // `]` right after `[` or `[!` is a member, not the end.
    let Some(end) = set.iter().skip(1).position(|b| *b == b']').map(|p| p + 1) else {
        return Class::Literal;
    };
    let members = &set[..end];
    let mut found = false;
    let mut i = 0;
    while i < members.len() {
        if i + 2 < members.len() && members[i + 1] == b'-' {
            found |= (members[i]..=members[i + 2]).contains(&byte);
            i += 3;
        } else {
            found |= members[i] == byte;
            i += 1;
        }
    }
    if found != negated {
        Class::Matched(skip + end + 1)
    } else {
        Class::Missed
    }
}

#[cfg(test)]
mod tests {
    use super::{matches, matches_counting};

    #[test]
    fn glob_matching() {
        assert!(matches(b"a*b*c", b"aXbYc"));
        assert!(!matches(b"a*b*c", b"aXbY"));
        assert!(matches(b"*x", b"xxx"));
        assert!(matches(b"[", b"["));
        assert!(matches(b"a[b", b"a[b"));
        assert!(!matches(b"a[b", b"ab"));
        assert!(matches(b"[!]]x", b"ax"));
        assert!(!matches(b"?", b""));
        assert!(matches(b"**", b"abc"));
        assert!(matches(b"*.yaml", b"a.yaml"));
        assert!(!matches(b"*.yaml", b"a.yml"));
        assert!(matches(b"?.conf", b"x.conf"));
        assert!(matches(b"[a-c]*", b"beta"));
        assert!(!matches(b"[!a-c]*", b"beta"));
        assert!(matches(b"[]x]", b"]"));
        assert!(matches(b"*", b""));
    }

    #[test]
    fn an_include_glob_with_several_stars_takes_exponential_time() {
        let pattern = b"*a*a*a*a*a*a*a*a*b.yaml";
        let name = [b'a'; 200];
        let mut steps = 0;
        assert!(!matches_counting(pattern, &name, &mut steps));
        let bound = (pattern.len() + 1) * (name.len() + 1);
        assert!(steps <= bound, "{steps} steps for a bound of {bound}");
    }
}
