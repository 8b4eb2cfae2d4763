//! The shape nearly every table has — block mappings and lists of plain one-line values, with
//! comments — read in one pass over its lines, at a small fraction of the general YAML
//! parser's cost (a table of 1,000 services took over half of rinetd's start-up in that
//! parser). Anything outside the shape — quotes, `[flow]` and `{flow}` collections, anchors,
//! aliases, tags, block scalars, values continued on the next line, tabs, non-ASCII text
//! outside comments, `---` — and every syntax error is left to the general parser: `read`
//! returns None and the file is read again from its start, so that what YAML allows and every
//! message about a mistake come from the one parser. Within the shape both readings give the
//! same tree, positions included; the tests compare them on generated tables.

use std::borrow::Cow;

use super::Pos;
use super::yaml::{Builder, Document};

/// One line with content, the comment and the indentation taken off.
#[derive(Clone, Copy)]
struct Line<'t> {
    /// 1-based.
    number: u64,
    /// 0-based, in bytes (the content is ASCII, so in characters too).
    column: usize,
    text: &'t str,
}

/// Reads `text` when it has the simple shape; None when the general parser must read it.
pub(super) fn read(text: &str) -> Option<Document<'_>> {
    let mut reader = Reader {
        lines: content_lines(text)?,
        next: 0,
        builder: Builder::new(text),
        depth: 0,
    };
    // An empty file, or one of comments only, is cheap for the general parser too.
    let first = *reader.lines.first()?;
    if is_entry(first.text) {
        reader.list(first.column, false)?;
    } else {
        reader.map(first.column)?;
    }
    // A line left over is less indented than the root: a mistake.
    if reader.next < reader.lines.len() {
        return None;
    }
    Some(reader.builder.into_document(None))
}

/// The lines that hold content, each checked to stay within the shape's characters. One pass
/// over each line's bytes: the generic string searches cost more than the reading itself.
fn content_lines(text: &str) -> Option<Vec<Line<'_>>> {
    let mut lines = Vec::with_capacity(text.len() / 16);
    for (index, raw) in text.split('\n').enumerate() {
        let bytes = raw.as_bytes();
        let column = bytes.iter().take_while(|&&byte| byte == b' ').count();
        // The content ends at a `#` that starts a comment: at the start or after a space; a
        // `#` elsewhere is part of a value, which the general parser reads.
        let mut end = bytes.len();
        for (at, &byte) in bytes.iter().enumerate().skip(column) {
            if byte == b'#' {
                if at > column && bytes[at - 1] != b' ' {
                    return None;
                }
                end = at;
                break;
            }
            if !plain_byte(byte) {
                return None;
            }
        }
        if end < bytes.len() && !raw[end..].chars().all(printable_in_comment) {
            return None;
        }
        let content = raw[column..end].trim_end_matches(' ');
        if content.is_empty() {
            continue;
        }
        if column == 0 && (content.starts_with("---") || content.starts_with("...")) {
            return None;
        }
        lines.push(Line {
            number: index as u64 + 1,
            column,
            text: content,
        });
    }
    Some(lines)
}

/// What a comment may hold here: YAML's printable characters, without tabs, the C1 controls
/// (U+0085 is a line break to YAML 1.1), the byte order mark and the Unicode line separators.
fn printable_in_comment(c: char) -> bool {
    matches!(c, ' '..='~')
        || (c >= '\u{a0}'
            && !matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            ))
}

/// Printable ASCII except YAML's indicators that start something other than a plain value
/// (quotes, flow collections, anchors, tags, block scalars, directives, `?` keys) — kept out of
/// the values too, so that no line needs a second look. `*` is let in for `include:` globs:
/// `plain_value` keeps it from starting a value (an alias).
fn plain_byte(byte: u8) -> bool {
    matches!(byte, b' '..=b'~')
        && !matches!(
            byte,
            b'"' | b'\''
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'&'
                | b'!'
                | b'|'
                | b'>'
                | b'%'
                | b'@'
                | b'`'
                | b'?'
                | b'#'
                | b'\\'
        )
}

/// `- item`: a list entry (a lone `-` is one too, with its item on the lines below).
fn is_entry(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// Where `: ` first is in `text` (a byte loop: `str::find` of a two-byte needle costs more).
fn colon_space(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (1..bytes.len())
        .find(|&at| bytes[at] == b' ' && bytes[at - 1] == b':')
        .map(|at| at - 1)
}

/// `key: value` or `key:` as (key, where the value starts in the line and the value).
fn split_key(text: &str) -> Option<(&str, Option<(usize, &str)>)> {
    match colon_space(text) {
        Some(colon) => {
            let value = text[colon + 2..].trim_start_matches(' ');
            Some((&text[..colon], Some((text.len() - value.len(), value))))
        }
        None => Some((text.strip_suffix(':')?, None)),
    }
}

/// A plain value on one line, as the general parser reads it: no `: ` inside (a mapping
/// where none may start), no `:` at its end, and a first character that starts no other
/// kind of node. Keys more: no `:` at all, no space before the colon, and short (YAML's
/// limit on a key on one line is 1,024 characters).
fn plain_value(text: &str) -> bool {
    let bytes = text.as_bytes();
    let starts_plain = match bytes.first() {
        Some(b'-') => bytes.get(1).is_some_and(|&next| next != b' '),
        Some(&first) => {
            first.is_ascii_alphanumeric()
                || matches!(first, b'/' | b'.' | b'_' | b'~' | b'+' | b'<' | b'$' | b'=')
        }
        None => false,
    };
    starts_plain && colon_space(text).is_none() && !text.ends_with(':')
}

fn plain_key(text: &str) -> bool {
    plain_value(text)
        && !text.as_bytes().contains(&b':')
        && !text.ends_with(' ')
        && text.len() <= 1000
}

struct Reader<'t> {
    lines: Vec<Line<'t>>,
    /// The line being read: `list` replaces an entry's line with the item after its `- `.
    next: usize,
    builder: Builder<'t>,
    depth: usize,
}

/// Far deeper than any table, far below the general parser's limit on nesting.
const MAX_DEPTH: usize = 64;

impl<'t> Reader<'t> {
    fn peek(&self) -> Option<Line<'t>> {
        self.lines.get(self.next).copied()
    }

    fn pos(line: Line<'_>, column: usize) -> Pos {
        Pos {
            line: line.number,
            column: column as u64 + 1,
        }
    }

    fn scalar(&mut self, text: &'t str, pos: Pos) -> Option<()> {
        self.builder.scalar(Cow::Borrowed(text), false, 0, pos).ok()
    }

    /// A block mapping whose keys start at `column`, the first on the current line.
    fn map(&mut self, column: usize) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let first = self.peek()?;
        self.builder.open_map(Self::pos(first, column), 0);
        while let Some(line) = self.peek() {
            if line.column < column {
                break;
            }
            if line.column > column || is_entry(line.text) {
                return None;
            }
            let (key, value) = split_key(line.text)?;
            if !plain_key(key) {
                return None;
            }
            self.scalar(key, Self::pos(line, column))?;
            self.next += 1;
            match value {
                Some((offset, value)) => {
                    if !plain_value(value) {
                        return None;
                    }
                    self.scalar(value, Self::pos(line, column + offset))?;
                }
                None => match self.peek() {
                    Some(below) if below.column > column => {
                        if is_entry(below.text) {
                            self.list(below.column, false)?;
                        } else {
                            self.map(below.column)?;
                        }
                    }
                    // `key:` and `- item` lines below at its own indentation: its list.
                    Some(below) if below.column == column && is_entry(below.text) => {
                        self.list(column, true)?;
                    }
                    // No value: the general parser reads a plain `~` at the colon.
                    _ => self.scalar("~", Self::pos(line, column + key.len()))?,
                },
            }
        }
        self.depth -= 1;
        self.builder.end().ok()
    }

    /// A block list whose `-` are at `column`, the first on the current line. `indentless`:
    /// the value of a key at the same indentation (`key:` then `- item`), which the general
    /// parser places at its first item rather than at its first `-`.
    fn list(&mut self, column: usize, indentless: bool) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let mut opened = false;
        while let Some(line) = self.peek() {
            if line.column < column || (indentless && line.column == column && !is_entry(line.text))
            {
                break;
            }
            if line.column > column || !is_entry(line.text) {
                return None;
            }
            // The item after `- ` (an item on the lines below is left to the general parser).
            let item = line.text.get(2..)?.trim_start_matches(' ');
            let item_column = column + line.text.len() - item.len();
            if !opened {
                let start = if indentless { item_column } else { column };
                self.builder.open_list(Self::pos(line, start), 0);
                opened = true;
            }
            let item_line = Line {
                number: line.number,
                column: item_column,
                text: item,
            };
            if is_entry(item) {
                // `- - x`: a list in a list, rare enough for the general parser.
                return None;
            }
            if split_key(item).is_some() {
                self.lines[self.next] = item_line;
                self.map(item_column)?;
            } else {
                if !plain_value(item) {
                    return None;
                }
                self.scalar(item, Self::pos(item_line, item_column))?;
                self.next += 1;
            }
        }
        if !opened {
            return None;
        }
        self.depth -= 1;
        self.builder.end().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::super::yaml::read_general;
    use super::*;

    /// The simple reading, when it reads `text`, is the general parser's.
    fn same_as_general(text: &str) -> bool {
        match read(text) {
            Some(simple) => {
                let general = read_general(text);
                assert_eq!(general.error, None, "read a mistake:\n{text}");
                assert_eq!(simple.root, general.root, "\n{text}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn the_bench_table_is_read_simply_and_the_same() {
        let mut text = String::from("services:\n");
        for i in 0..50 {
            text.push_str(&format!(
                "  - name: s{i}\n    address: 127.0.0.1\n    port: {}\n    server: /bin/true\n    max_children: 0\n",
                20000 + i
            ));
        }
        assert!(same_as_general(&text));
    }

    #[test]
    fn comments_empty_values_and_lists_at_the_keys_indentation() {
        let text = "# a table\ndefaults:\n  user: nobody   # who\n  env:\nservices:\n- name: a\n  args:\n  - x\n  -   y z\n  port:   -5\n\n  pass_env:\n    - HOME\n  cwd:  # nothing\n- name: b\n  server: /bin/true # ü — comments may be anything printable\n  rate_limit:\n    max: 1\n    per: 1s\ninclude:\n  - /etc/x/*.yaml\n";
        assert!(same_as_general(text));
    }

    #[test]
    fn other_shapes_are_left_to_the_general_parser() {
        for text in [
            "",
            "# only a comment\n",
            "a: \"quoted\"\n",
            "a: [1, 2]\n",
            "a: &x 1\nb: *x\n",
            "a: *x\n",
            "a: |\n  text\n",
            "a: b\n  continued\n",
            "a:\tb\n",
            "a: ü\n",
            "---\na: 1\n",
            "a: 1\n---\nb: 2\n",
            "a: b: c\n",
            "a: ::1\n",
            "a:b: c\n",
            "a : 1\n",
            "- - a\n",
            "-\n  a: 1\n",
            "a:\n  - x\n  b: 1\n",
            "  a: 1\nb: 2\n",
            "a: 1\n b: 2\n",
            "a: x#y\n",
            "just text\n",
            "a: 1\r\n",
            "\u{feff}a: 1\n",
            "a:\n- x\n  - y\n",
        ] {
            assert!(read(text).is_none(), "{text:?}");
            // Whatever the general parser makes of it, never a panic on the way here.
            let _ = read_general(text);
        }
    }

    /// A small generator (xorshift, fixed seed): tables of the shape and near it, mistakes
    /// included; each one the simple reading accepts must read the same generally.
    #[test]
    fn generated_tables_read_the_same() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let words = [
            "name",
            "s1",
            "127.0.0.1",
            "-5",
            "fe80::1",
            "a b",
            "x:y",
            "~",
            "null",
            "<<",
            "/bin/true",
            "1s",
            "a,b",
            "+1",
            ".5",
            "_x",
            "$HOME",
            "=",
            "a-b",
            "0",
            "/etc/*.yaml",
            "*.x",
            "a: b",
        ];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            let mut indent = 0usize;
            for _ in 0..1 + next(12) {
                let pad = |text: &mut String, n: usize| text.push_str(&" ".repeat(n));
                match next(10) {
                    0 => indent = indent.saturating_sub(1 + next(4)),
                    1 | 2 => indent += 1 + next(3),
                    _ => {}
                }
                pad(&mut text, indent);
                match next(9) {
                    0 | 1 => text.push_str(&format!("{}:", words[next(words.len())])),
                    2..=4 => text.push_str(&format!(
                        "{}:{}{}",
                        words[next(words.len())],
                        " ".repeat(1 + next(2)),
                        words[next(words.len())]
                    )),
                    5 => text.push_str(&format!("- {}", words[next(words.len())])),
                    6 => text.push_str(&format!(
                        "-{}{}: {}",
                        " ".repeat(1 + next(2)),
                        words[next(words.len())],
                        words[next(words.len())]
                    )),
                    7 => text.push_str("# note"),
                    _ => {}
                }
                if next(6) == 0 {
                    text.push_str(" # c");
                }
                if next(8) == 0 {
                    text.push(' ');
                }
                text.push('\n');
            }
            if same_as_general(&text) {
                accepted += 1;
            }
        }
        // The generator must reach the shape often enough to say something.
        assert!(accepted > 2000, "{accepted}");
    }
}
