//! YAML text → a tree of located nodes, read with granit-parser's event API. Every value keeps
//! its line, column and whether it was quoted; a mapping keeps every key it was given
//! (duplicates too, for the checker to report); a syntax error ends the reading at that point
//! and the tree holds what came before it, so the checker can still report the mistakes above.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use granit_parser::{ErrorKind, Event, Parser, ScalarStyle, ScanError, Span, Tag};

use super::Pos;
use super::simple;

/// One value of the document and where it starts. A tree borrows from the text it was read
/// from: a table of 1,000 services has 10,000 scalars, and a copy of each cost more than
/// reading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'t> {
    pub pos: Pos,
    pub value: Value<'t>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'t> {
    Scalar(Scalar<'t>),
    List(Vec<Node<'t>>),
    Map(Map<'t>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar<'t> {
    /// The text after YAML's escapes and line folding (borrowed when it is written as is).
    pub text: Cow<'t, str>,
    /// Written quoted (or as a block scalar, or tagged `!!str`): text for certain, where a
    /// plain `022` or `true` would have been read as a number or a boolean.
    pub quoted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Map<'t> {
    /// In the order written; merge keys (`<<: *base`) already applied.
    pub entries: Vec<(Node<'t>, Node<'t>)>,
    /// False when a syntax error cut the mapping short: keys it lacks may simply come later.
    pub complete: bool,
}

impl<'t> Node<'t> {
    pub fn scalar(&self) -> Option<&Scalar<'t>> {
        match &self.value {
            Value::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    /// YAML's null: an empty value, `~` or `null`, unquoted.
    pub fn is_null(&self) -> bool {
        self.scalar()
            .is_some_and(|s| !s.quoted && matches!(&*s.text, "" | "~" | "null" | "Null" | "NULL"))
    }

    /// How the value reads in a message: `"text"`, `a list`, `a mapping`, `nothing`.
    pub fn described(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing".to_string(),
            Value::Scalar(scalar) => format!("\"{}\"", scalar.text),
            Value::List(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    }
}

/// What reading a file gave: its root value (None for an empty file) and the syntax error
/// that stopped the reading, if one did.
#[derive(Debug, Default)]
pub struct Document<'t> {
    pub root: Option<Node<'t>>,
    pub error: Option<SyntaxError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Reads `text` as one YAML document.
pub fn read(text: &str) -> Document<'_> {
    // Nearly every table has the simple shape `simple` reads, at a small fraction of the
    // general parser's cost; anything else (and every mistake) is read by the general parser.
    simple::read(text).unwrap_or_else(|| read_general(text))
}

/// Reads `text` with the general YAML parser (granit-parser): any YAML, every syntax error.
pub(super) fn read_general(text: &str) -> Document<'_> {
    let mut builder = Builder::new(text);
    let mut error = None;
    for next in Parser::new_from_str(text) {
        let step = match next {
            Ok((event, span)) => builder.event(event, span),
            Err(err) => Err(describe(&err, text)),
        };
        if let Err(err) = step {
            error = Some(err);
            break;
        }
    }
    builder.into_document(error)
}

/// A collection still being read.
enum Open<'t> {
    List {
        pos: Pos,
        anchor: usize,
        items: Vec<Node<'t>>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node<'t>, Node<'t>)>,
        key: Option<Node<'t>>,
    },
}

/// Makes the tree from the document's events, in the order they come: the general parser's
/// and `simple`'s readings go through the same steps, so they cannot differ in what they make
/// of the same events.
pub(super) struct Builder<'t> {
    stack: Vec<Open<'t>>,
    root: Option<Node<'t>>,
    anchors: HashMap<usize, Node<'t>>,
    /// What may still be built or copied, in nodes plus scalar bytes.
    budget: usize,
    documents: usize,
}

impl<'t> Builder<'t> {
    pub(super) fn new(text: &str) -> Builder<'t> {
        Builder {
            stack: Vec::new(),
            root: None,
            anchors: HashMap::new(),
            // Aliases copy what they name: this bounds the copies to about the text's own
            // size, so that a few lines of nested aliases (a "billion laughs") cannot take the
            // memory.
            budget: 2 * text.len() + 10_000,
            documents: 0,
        }
    }

    /// The tree as read, what is still open closed as incomplete; `error` stopped the reading.
    pub(super) fn into_document(mut self, error: Option<SyntaxError>) -> Document<'t> {
        self.close_all();
        Document {
            root: self.root,
            error,
        }
    }

    fn event(&mut self, event: Event<'t>, span: Span) -> Result<(), SyntaxError> {
        let pos = pos_of(&span);
        match event {
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "a second YAML document (after `---`): the table is one document"
                            .to_string(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str = tag.as_deref().is_some_and(is_str_tag);
                let quoted = style != ScalarStyle::Plain || tagged_str;
                self.scalar(text, quoted, anchor, pos)?;
            }
            Event::SequenceStart(_, anchor, _) => self.open_list(pos, anchor),
            Event::MappingStart(_, anchor, _) => self.open_map(pos, anchor),
            Event::SequenceEnd | Event::MappingEnd => self.end()?,
            Event::Alias(anchor) => {
                let Some(named) = self.anchors.get(&anchor) else {
                    return Err(SyntaxError {
                        pos,
                        message: "an alias (*name) that names no anchor (&name) above it"
                            .to_string(),
                    });
                };
                let mut copy = named.clone();
                copy.pos = pos;
                self.spend(cost(&copy), pos)?;
                self.attach(copy);
            }
            _ => {}
        }
        Ok(())
    }

    /// A scalar value; `anchor` is 0 when it has none.
    pub(super) fn scalar(
        &mut self,
        text: Cow<'t, str>,
        quoted: bool,
        anchor: usize,
        pos: Pos,
    ) -> Result<(), SyntaxError> {
        self.spend(1 + text.len(), pos)?;
        let node = Node {
            pos,
            value: Value::Scalar(Scalar { text, quoted }),
        };
        self.finish(node, anchor)
    }

    pub(super) fn open_list(&mut self, pos: Pos, anchor: usize) {
        self.stack.push(Open::List {
            pos,
            anchor,
            items: Vec::new(),
        });
    }

    pub(super) fn open_map(&mut self, pos: Pos, anchor: usize) {
        self.stack.push(Open::Map {
            pos,
            anchor,
            entries: Vec::new(),
            key: None,
        });
    }

    /// The innermost open list or mapping is complete.
    pub(super) fn end(&mut self) -> Result<(), SyntaxError> {
        match self.close(true) {
            Some((node, anchor)) => self.finish(node, anchor),
            None => Ok(()),
        }
    }

    fn spend(&mut self, amount: usize, pos: Pos) -> Result<(), SyntaxError> {
        match self.budget.checked_sub(amount) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(SyntaxError {
                pos,
                message: "aliases (*name) here copy more than the file could hold: \
                          write the values out, or use `defaults:`"
                    .to_string(),
            }),
        }
    }

    /// A value is complete: remember it under its anchor, then put it in its parent.
    fn finish(&mut self, node: Node<'t>, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.spend(cost(&node), node.pos)?;
            self.anchors.insert(anchor, node.clone());
        }
        self.attach(node);
        Ok(())
    }

    fn attach(&mut self, node: Node<'t>) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::List { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    /// Closes the innermost collection; `complete` is false when an error cut it short.
    fn close(&mut self, complete: bool) -> Option<(Node<'t>, usize)> {
        match self.stack.pop()? {
            Open::List { pos, anchor, items } => Some((
                Node {
                    pos,
                    value: Value::List(items),
                },
                anchor,
            )),
            Open::Map {
                pos,
                anchor,
                mut entries,
                key,
            } => {
                // A key whose value never came: kept with an empty value, so that the checker
                // still says what it thinks of the key.
                if let Some(key) = key {
                    let empty = Node {
                        pos: key.pos,
                        value: Value::Scalar(Scalar {
                            text: Cow::Borrowed(""),
                            quoted: false,
                        }),
                    };
                    entries.push((key, empty));
                }
                Some((
                    Node {
                        pos,
                        value: Value::Map(Map {
                            entries: merged(entries),
                            complete,
                        }),
                    },
                    anchor,
                ))
            }
        }
    }

    /// After a syntax error (or at the end), closes what is still open, innermost first.
    fn close_all(&mut self) {
        while let Some((node, _)) = self.close(false) {
            self.attach(node);
        }
    }
}

/// The size of a value for the alias budget: its nodes and its scalars' bytes.
fn cost(node: &Node<'_>) -> usize {
    match &node.value {
        Value::Scalar(scalar) => 1 + scalar.text.len(),
        Value::List(items) => 1 + items.iter().map(cost).sum::<usize>(),
        Value::Map(map) => {
            1 + map
                .entries
                .iter()
                .map(|(key, value)| cost(key) + cost(value))
                .sum::<usize>()
        }
    }
}

fn is_str_tag(tag: &Tag) -> bool {
    tag.handle() == "tag:yaml.org,2002:" && tag.suffix() == "str"
}

/// YAML's merge key: `<<: *base` (or a list of them) adds the keys of `base` that the mapping
/// does not set itself; of several bases, the first one that has a key gives it. A `<<` whose
/// value is not mappings is left in place for the checker to call an unknown key.
fn merged<'t>(entries: Vec<(Node<'t>, Node<'t>)>) -> Vec<(Node<'t>, Node<'t>)> {
    let is_merge = |(key, value): &(Node<'t>, Node<'t>)| {
        let mappings = match &value.value {
            Value::Map(_) => true,
            Value::List(items) => items.iter().all(|i| matches!(i.value, Value::Map(_))),
            Value::Scalar(_) => false,
        };
        key.scalar().is_some_and(|k| !k.quoted && k.text == "<<") && mappings
    };
    if !entries.iter().any(is_merge) {
        return entries;
    }
    let (merges, mut own): (Vec<_>, Vec<_>) = entries.into_iter().partition(is_merge);
    let mut taken: HashSet<String> = own
        .iter()
        .filter_map(|(key, _)| key.scalar().map(|k| k.text.to_string()))
        .collect();
    for (_, value) in merges {
        let bases = match value.value {
            Value::Map(map) => vec![map],
            Value::List(items) => items
                .into_iter()
                .filter_map(|item| match item.value {
                    Value::Map(map) => Some(map),
                    _ => None,
                })
                .collect(),
            Value::Scalar(_) => Vec::new(),
        };
        for base in bases {
            for (key, value) in base.entries {
                let name = key.scalar().map(|k| k.text.to_string());
                if name.is_none_or(|name| taken.insert(name)) {
                    own.push((key, value));
                }
            }
        }
    }
    own
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line() as u64,
        column: span.start.col() as u64 + 1,
    }
}

/// A syntax error in the user's words, located where the mistake is (the parser reports some
/// at the end of the value before it).
fn describe(err: &ScanError, text: &str) -> SyntaxError {
    let marker = err.marker();
    let pos = Pos {
        line: marker.line() as u64,
        column: marker.col() as u64 + 1,
    };
    let line_text = text
        .lines()
        .nth(marker.line().saturating_sub(1))
        .unwrap_or("");
    let (pos, message) = match err.kind() {
        ErrorKind::TabInPlainScalar
        | ErrorKind::TabInBlockIndentation
        | ErrorKind::TabNotAllowed => (
            first_tab_from_line(text, marker.line()).unwrap_or(pos),
            "a tab character: YAML indents with spaces only (replace the tab with spaces)"
                .to_string(),
        ),
        ErrorKind::MappingValueNotAllowed if has_unquoted_double_colon(line_text) => (
            pos,
            "an IPv6 address that starts with \":\" must be quoted: write \"::\" (in quotes)"
                .to_string(),
        ),
        ErrorKind::MappingValueNotAllowed => (
            pos,
            "\": \" cannot start a key here: check this line's indentation, or quote a value \
             that holds \": \""
                .to_string(),
        ),
        ErrorKind::ExpectedBlockMappingKey
        | ErrorKind::ExpectedBlockSequenceEntry
        | ErrorKind::InvalidIndentation => (
            pos,
            "this line's indentation does not match the lines above it".to_string(),
        ),
        ErrorKind::UnclosedQuotedScalar => (pos, "a quoted value is not closed".to_string()),
        ErrorKind::UnclosedFlowCollection { .. }
        | ErrorKind::UnexpectedEofFlowSequence
        | ErrorKind::UnexpectedEofFlowMapping
        | ErrorKind::UnexpectedEofImplicitFlowMapping
        | ErrorKind::ExpectedFlowSequenceSeparator
        | ErrorKind::ExpectedFlowMappingSeparator
        | ErrorKind::MismatchedFlowCollectionEnd { .. }
        | ErrorKind::MisplacedFlowCollectionEnd => (
            pos,
            format!(
                "a [list] or {{mapping}} is not closed properly ({})",
                err.info()
            ),
        ),
        ErrorKind::UnknownAnchor => (
            pos,
            "an alias (*name) that names no anchor (&name) above it".to_string(),
        ),
        _ => (pos, format!("YAML syntax: {}", err.info())),
    };
    SyntaxError { pos, message }
}

/// The first tab at or after the start of line `line` (1-based), where the parser's complaint
/// about a tab really points.
fn first_tab_from_line(text: &str, line: usize) -> Option<Pos> {
    let mut offset = 0;
    for _ in 1..line {
        offset += text.get(offset..)?.find('\n')? + 1;
    }
    let tab = offset + text.get(offset..)?.find('\t')?;
    let before = &text[..tab];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    Some(Pos {
        line: before.matches('\n').count() as u64 + 1,
        column: text[line_start..tab].chars().count() as u64 + 1,
    })
}

/// `address: ::` or `[0.0.0.0, ::]`: a `::` outside quotes and comments.
fn has_unquoted_double_colon(line: &str) -> bool {
    let mut quote = None;
    let mut previous = ' ';
    for c in line.chars() {
        match (quote, c) {
            (None, '#') if previous == ' ' => return false,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ':') if previous == ':' => return true,
            _ => {}
        }
        previous = c;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u64, column: u64) -> Pos {
        Pos { line, column }
    }

    fn root(text: &str) -> Node<'_> {
        let document = read(text);
        assert_eq!(document.error, None);
        document.root.expect("a root")
    }

    fn entries<'n, 't>(node: &'n Node<'t>) -> &'n [(Node<'t>, Node<'t>)] {
        match &node.value {
            Value::Map(map) => &map.entries,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn every_value_keeps_its_position_and_whether_it_was_quoted() {
        let node = root("a: 022\nb: \"022\"\nc: [x, 'y']\n");
        let entries = entries(&node);
        assert_eq!(entries[0].1.pos, at(1, 4));
        assert_eq!(entries[0].1.scalar().map(|s| s.quoted), Some(false));
        assert_eq!(entries[1].1.scalar().map(|s| s.quoted), Some(true));
        let Value::List(items) = &entries[2].1.value else {
            panic!("a list")
        };
        assert_eq!(items[1].pos, at(3, 8));
        assert!(items[1].scalar().is_some_and(|s| s.quoted && s.text == "y"));
    }

    #[test]
    fn duplicate_keys_are_all_kept() {
        let node = root("a: 1\na: 2\n");
        assert_eq!(entries(&node).len(), 2);
    }

    #[test]
    fn a_syntax_error_keeps_what_came_before_it() {
        let document = read("a: 1\nb: [x, y\nc: 3\n");
        let node = document.root.expect("a partial root");
        assert_eq!(entries(&node)[0].0.scalar().unwrap().text, "a");
        assert!(matches!(&node.value, Value::Map(map) if !map.complete));
        assert!(document.error.is_some());
    }

    #[test]
    fn a_tab_is_reported_on_its_own_line_and_column() {
        // The parser itself blames the end of "1" on line 3.
        let document = read("services:\n  - name: a\n    port: 1\n\tserver: /x\n");
        let error = document.error.expect("an error");
        assert_eq!(error.pos, at(4, 1));
        assert!(error.message.contains("tab"), "{error:?}");
        let document = read("a:\n  b: 1\n  \tc: 2\n");
        assert_eq!(document.error.expect("an error").pos, at(3, 3));
    }

    #[test]
    fn an_unquoted_double_colon_says_to_quote_it() {
        let document = read("address: ::\n");
        assert!(document.error.expect("an error").message.contains("\"::\""));
        assert!(has_unquoted_double_colon("x: [0.0.0.0, ::]"));
        assert!(!has_unquoted_double_colon("x: [0.0.0.0, \"::\"]"));
        assert!(!has_unquoted_double_colon("x: 1 # a::b"));
    }

    #[test]
    fn aliases_copy_and_merge_keys_merge() {
        let node = root("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n");
        let (_, used) = &entries(&node)[1];
        let keys: Vec<(&str, &str)> = entries(used)
            .iter()
            .map(|(k, v)| {
                (
                    k.scalar().unwrap().text.as_ref(),
                    v.scalar().unwrap().text.as_ref(),
                )
            })
            .collect();
        assert_eq!(keys, [("y", "3"), ("x", "1")]);
    }

    #[test]
    fn an_alias_bomb_is_refused_not_expanded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut previous = 'a';
        for name in 'b'..='k' {
            text.push_str(&format!(
                "{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
            ));
            previous = name;
        }
        let document = read(&text);
        assert!(
            document.error.expect("refused").message.contains("aliases"),
            "{text}"
        );
    }

    #[test]
    fn a_second_document_is_an_error() {
        assert!(read("a: 1\n---\nb: 2\n").error.is_some());
        assert!(read("---\na: 1\n").error.is_none());
    }

    #[test]
    fn strange_input_never_panics() {
        for text in [
            "",
            "\t",
            ":",
            "- - - -",
            "{",
            "[",
            "]]",
            "&a *a",
            "a: *b",
            "? ? ?",
            "\u{feff}a: 1",
            "a: |\n\tx",
            "\"\\",
            "%YAML 9.9\n---\n",
            "a: !!int x",
            "<<: 1",
            "<<: [1, *x]",
        ] {
            let _ = read(text);
        }
    }
}
