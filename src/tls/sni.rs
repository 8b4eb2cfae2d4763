//! Certificate selection by the client's SNI name: exact names first, then `*.` wildcards that
//! cover exactly one label, else the service's default certificate.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A validated `tls.sni[].names` entry, lower-cased and without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SniPattern {
    /// `host.example`
    Exact(String),
    /// `*.example`, stored as `example`: matches `a.example`, not `a.b.example` nor `example`.
    Wildcard(String),
}

/// The longest DNS name (RFC 1035), without its trailing dot.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

impl SniPattern {
    /// Parses a configured name; the error says what is wrong with it.
    pub fn parse(name: &str) -> Result<SniPattern, String> {
        let lowered = name.to_ascii_lowercase();
        let trimmed = lowered.strip_suffix('.').unwrap_or(&lowered);
        if trimmed.parse::<IpAddr>().is_ok() {
            return Err("SNI carries host names, never IP addresses".to_string());
        }
        let (wildcard, base) = match trimmed.strip_prefix("*.") {
            Some(base) => (true, base),
            None => (false, trimmed),
        };
        if base.contains('*') {
            return Err(
                "a wildcard is a whole first label followed by a name: *.example.com".to_string(),
            );
        }
        check_dns_name(base)?;
        Ok(if wildcard {
            SniPattern::Wildcard(base.to_string())
        } else {
            SniPattern::Exact(base.to_string())
        })
    }
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniPattern::Exact(name) => f.write_str(name),
            SniPattern::Wildcard(base) => write!(f, "*.{base}"),
        }
    }
}

/// Host-name syntax (RFC 1123 labels; `_` allowed since real internal names use it).
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".to_string());
    }
    if name.len() > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".to_string());
        }
        if label.len() > MAX_LABEL {
            return Err(format!("a label is longer than {MAX_LABEL} characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" begins or ends with '-'"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "'{bad}' is not allowed in a host name (letters, digits, '-' and '_'; \
                 international names in their xn-- form)"
            ));
        }
    }
    Ok(())
}

/// Names to values, looked up the way the contract says. Generic so that the lookup is tested
/// without certificates.
#[derive(Debug)]
pub struct SniTable<T> {
    exact: HashMap<String, Option<T>>,
    wildcard: HashMap<String, Option<T>>,
}

impl<T> Default for SniTable<T> {
    fn default() -> Self {
        SniTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> SniTable<T> {
    fn map(&self, pattern: &SniPattern) -> (&HashMap<String, Option<T>>, String) {
        match pattern {
            SniPattern::Exact(name) => (&self.exact, name.clone()),
            SniPattern::Wildcard(base) => (&self.wildcard, base.clone()),
        }
    }

    /// Whether a pattern is already taken (by a loaded or a reserved entry).
    pub fn contains(&self, pattern: &SniPattern) -> bool {
        let (map, key) = self.map(pattern);
        map.contains_key(&key)
    }

    /// Takes a pattern without a value yet, so that duplicates are found even when the entry
    /// that owns it fails to load.
    pub fn reserve(&mut self, pattern: SniPattern) {
        match pattern {
            SniPattern::Exact(name) => self.exact.entry(name).or_insert(None),
            SniPattern::Wildcard(base) => self.wildcard.entry(base).or_insert(None),
        };
    }

    pub fn insert(&mut self, pattern: SniPattern, value: T) {
        match pattern {
            SniPattern::Exact(name) => self.exact.insert(name, Some(value)),
            SniPattern::Wildcard(base) => self.wildcard.insert(base, Some(value)),
        };
    }

    /// The value for a client's SNI name: an exact entry, else the wildcard of its parent
    /// domain; `None` means the default.
    pub fn pick(&self, server_name: Option<&str>) -> Option<&T> {
        let name = server_name?.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        if let Some(Some(value)) = self.exact.get(name) {
            return Some(value);
        }
        let (first, parent) = name.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(parent).and_then(Option::as_ref)
    }
}

/// rustls' certificate choice for one service.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    table: SniTable<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(default: Arc<CertifiedKey>, table: SniTable<Arc<CertifiedKey>>) -> SniResolver {
        SniResolver { default, table }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = self
            .table
            .pick(client_hello.server_name())
            .unwrap_or(&self.default);
        Some(Arc::clone(chosen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SniTable<&'static str> {
        let mut table = SniTable::default();
        for (name, value) in [
            ("other.example", "other"),
            ("*.other.example", "wild"),
            ("exact.other.example", "exact"),
        ] {
            table.insert(SniPattern::parse(name).unwrap(), value);
        }
        table
    }

    #[test]
    fn exact_names_win_over_wildcards() {
        let table = table();
        assert_eq!(table.pick(Some("exact.other.example")), Some(&"exact"));
        assert_eq!(table.pick(Some("EXACT.Other.Example.")), Some(&"exact"));
        assert_eq!(table.pick(Some("other.example")), Some(&"other"));
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let table = table();
        assert_eq!(table.pick(Some("a.other.example")), Some(&"wild"));
        assert_eq!(table.pick(Some("a.b.other.example")), None);
        assert_eq!(table.pick(Some(".other.example")), None);
    }

    #[test]
    fn no_name_or_an_unknown_one_gets_the_default() {
        let table = table();
        assert_eq!(table.pick(None), None);
        assert_eq!(table.pick(Some("localhost")), None);
        assert_eq!(table.pick(Some("example")), None);
    }

    #[test]
    fn reserved_names_are_taken_but_pick_nothing() {
        let mut table: SniTable<&str> = SniTable::default();
        let pattern = SniPattern::parse("a.example").unwrap();
        table.reserve(pattern.clone());
        assert!(table.contains(&pattern));
        assert_eq!(table.pick(Some("a.example")), None);
    }

    #[test]
    fn patterns_are_validated() {
        assert_eq!(
            SniPattern::parse("*.Example.COM."),
            Ok(SniPattern::Wildcard("example.com".into()))
        );
        assert_eq!(
            SniPattern::parse("my_host.lan").map(|p| p.to_string()),
            Ok("my_host.lan".into())
        );
        for bad in [
            "",
            "*",
            "*.",
            "a.*.example",
            "*example.com",
            "**.example",
            "a..b",
            ".a",
            "-a.example",
            "a-.example",
            "a b.example",
            "127.0.0.1",
            "::1",
            "é.example",
        ] {
            assert!(SniPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SniPattern::parse(&"a".repeat(64)).is_err());
        assert!(SniPattern::parse(&["a"; 128].join(".")).is_err());
    }
}
