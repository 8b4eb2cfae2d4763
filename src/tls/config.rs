//! A service's `tls:` settings and their loading: certificate chains, keys, SNI table, client CA,
//! ALPN and versions become one `rustls::ServerConfig`, or every problem found, each naming the
//! file (or setting) and saying what is wrong in the operator's words.
//!
//! Loading reads files and nothing else: it is called at start-up, by `-t` and by every reload.
//! Each load builds a new `Arc<ServerConfig>`; a connection holds the `Arc` it started with, so
//! a reload never changes the certificate of a connection already open.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use super::cert;
use super::sni::{SniPattern, SniResolver, SniTable};

/// The contract's default `handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A PEM file larger than this is not a certificate or key file (and reading it must not take
/// rinetd's memory or time): it is refused rather than read.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The oldest protocol version a service accepts (`min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    V12,
    /// TLS 1.3 only.
    V13,
}

/// One `tls.sni` entry: a certificate served to clients that ask for one of `names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniEntry {
    /// Exact host names, or `*.`-wildcards covering exactly one more label.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A service's `tls:` map as the config checker hands it over (paths already absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM chain, leaf first: served when no SNI entry matches.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of `cert`'s leaf.
    pub key: PathBuf,
    pub sni: Vec<SniEntry>,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// Protocols offered in ALPN, most preferred first.
    pub alpn: Vec<String>,
    pub min_version: MinVersion,
    /// How long a client has to complete the handshake; the event loop enforces it.
    pub handshake_timeout: Duration,
}

/// Which `tls:` key a load error belongs to, so that the checker can point at its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsKey {
    Cert,
    Key,
    /// `sni[i].names`
    SniNames(usize),
    /// `sni[i].cert`
    SniCert(usize),
    /// `sni[i].key`
    SniKey(usize),
    ClientCa,
    Alpn,
    /// The settings as a whole (a combination rustls refuses).
    Tls,
}

impl fmt::Display for TlsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsKey::Cert => f.write_str("tls.cert"),
            TlsKey::Key => f.write_str("tls.key"),
            TlsKey::SniNames(i) => write!(f, "tls.sni[{i}].names"),
            TlsKey::SniCert(i) => write!(f, "tls.sni[{i}].cert"),
            TlsKey::SniKey(i) => write!(f, "tls.sni[{i}].key"),
            TlsKey::ClientCa => f.write_str("tls.client_ca"),
            TlsKey::Alpn => f.write_str("tls.alpn"),
            TlsKey::Tls => f.write_str("tls"),
        }
    }
}

/// One problem found while loading; shown as `tls.key: /etc/x.key: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsLoadError {
    /// The setting at fault, for the checker's line and column.
    pub key: TlsKey,
    /// The file at fault, when the problem is in a file.
    pub path: Option<PathBuf>,
    pub problem: String,
}

impl fmt::Display for TlsLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}: {}", self.key, path.display(), self.problem),
            None => write!(f, "{}: {}", self.key, self.problem),
        }
    }
}

/// The crypto provider of every rinetd TLS service: *ring* (see the module `tls` doc for why).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every file `settings` names and builds the server configuration, checking the leaf
/// certificates' validity against `now`. All problems are reported together.
pub fn load(
    settings: &TlsSettings,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, Vec<TlsLoadError>> {
    let provider = provider();
    let mut errors = Vec::new();

    let default = load_pair(
        &settings.cert,
        &settings.key,
        (TlsKey::Cert, TlsKey::Key),
        &provider,
        now,
        &mut errors,
    );
    let mut table = SniTable::default();
    for (i, entry) in settings.sni.iter().enumerate() {
        let patterns = sni_patterns(i, &entry.names, &mut table, &mut errors);
        let pair = load_pair(
            &entry.cert,
            &entry.key,
            (TlsKey::SniCert(i), TlsKey::SniKey(i)),
            &provider,
            now,
            &mut errors,
        );
        if let Some(pair) = pair {
            for pattern in patterns {
                table.insert(pattern, Arc::clone(&pair));
            }
        }
    }
    let verifier = settings
        .client_ca
        .as_deref()
        .and_then(|path| client_verifier(path, &provider, &mut errors));
    let alpn = alpn_protocols(&settings.alpn, &mut errors);

    let Some(default) = default else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
        MinVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder =
        match ServerConfig::builder_with_provider(provider).with_protocol_versions(versions) {
            Ok(builder) => builder,
            Err(err) => {
                return Err(vec![TlsLoadError {
                    key: TlsKey::Tls,
                    path: None,
                    problem: format!("unusable settings: {err}"),
                }]);
            }
        };
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(default, table)));
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// Validates one entry's names, reporting malformed ones and names another entry already has.
fn sni_patterns(
    entry: usize,
    names: &[String],
    table: &mut SniTable<Arc<CertifiedKey>>,
    errors: &mut Vec<TlsLoadError>,
) -> Vec<SniPattern> {
    let mut patterns: Vec<SniPattern> = Vec::new();
    let mut problem = |problem: String| {
        errors.push(TlsLoadError {
            key: TlsKey::SniNames(entry),
            path: None,
            problem,
        });
    };
    if names.is_empty() {
        problem("give at least one name: names: [host.example]".to_string());
    }
    for name in names {
        match SniPattern::parse(name) {
            Ok(pattern) if table.contains(&pattern) || patterns.contains(&pattern) => {
                problem(format!(
                    "\"{name}\" is already given for another certificate"
                ));
            }
            Ok(pattern) => patterns.push(pattern),
            Err(why) => problem(format!("\"{name}\": {why}")),
        }
    }
    // Reserve the names now so that a later entry repeating them is reported even if this
    // entry's certificate fails to load.
    for pattern in &patterns {
        table.reserve(pattern.clone());
    }
    patterns
}

/// Loads a chain and its key and checks that they belong together and that the leaf is valid
/// at `now`. `None` when anything is wrong (and then `errors` says what).
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    (cert_key, key_key): (TlsKey, TlsKey),
    provider: &CryptoProvider,
    now: SystemTime,
    errors: &mut Vec<TlsLoadError>,
) -> Option<Arc<CertifiedKey>> {
    let mut fail = |key: TlsKey, path: &Path, problem: String| {
        errors.push(TlsLoadError {
            key,
            path: Some(path.to_path_buf()),
            problem,
        });
    };
    let chain = read_pem(cert_path)
        .and_then(|pem| certificates(&pem))
        .and_then(|chain| {
            leaf_validity(&chain, now)?;
            Ok(chain)
        })
        .map_err(|problem| fail(cert_key, cert_path, problem))
        .ok();
    let key = read_pem(key_path)
        .and_then(|pem| private_key(&pem))
        .and_then(|key| {
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|err| format!("unsupported private key: {err}"))
        })
        .map_err(|problem| fail(key_key, key_path, problem))
        .ok();
    let certified = CertifiedKey::new(chain?, key?);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Some(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            fail(
                key_key,
                key_path,
                format!(
                    "this private key does not match the certificate in {}",
                    cert_path.display()
                ),
            );
            None
        }
        Err(err) => {
            fail(
                cert_key,
                cert_path,
                format!("the certificate cannot be used: {err}"),
            );
            None
        }
    }
}

/// Reads a PEM file whole, refusing what cannot be one (too large, a folder, unreadable).
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read it: {err}"))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err("this is a folder, not a PEM file".to_string());
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read it: {err}"))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(format!(
            "larger than {} KiB: not a PEM certificate or key file",
            MAX_PEM_FILE / 1024
        ));
    }
    Ok(bytes)
}

/// The PEM sections of a file, with a message about malformed PEM.
fn sections(pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("malformed PEM: {err}"))
}

/// A hint for a file with no PEM section of the wanted kind: DER instead of PEM is common.
fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
}

/// Every certificate in a PEM file, in order (leaf first).
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = sections(pem)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if chain.is_empty() {
        return Err(if looks_like_der(pem) {
            "no PEM certificate in it (it looks like DER: convert it with \
             `openssl x509 -inform der -in FILE -out FILE.pem`)"
                .to_string()
        } else {
            "no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block)".to_string()
        });
    }
    Ok(chain)
}

/// The first private key in a PEM file, with the reason when there is none rinetd can use.
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    for (kind, der) in sections(pem)? {
        let key = match kind {
            SectionKind::PrivateKey => PrivateKeyDer::from_pem(kind, der),
            SectionKind::RsaPrivateKey => PrivateKeyDer::from_pem(kind, der),
            SectionKind::EcPrivateKey => PrivateKeyDer::from_pem(kind, der),
            _ => None,
        };
        if let Some(key) = key {
            return Ok(key);
        }
    }
    let text = String::from_utf8_lossy(pem);
    Err(
        if text.contains("BEGIN ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            "the private key is encrypted; rinetd cannot ask for a passphrase: decrypt it with \
         `openssl pkey -in FILE -out FILE.key` and keep it readable by root only"
                .to_string()
        } else if text.contains("BEGIN OPENSSH PRIVATE KEY") {
            "this is an OpenSSH key, not a TLS private key".to_string()
        } else if looks_like_der(pem) {
            "no PEM private key in it (it looks like DER: convert it with \
         `openssl pkey -inform der -in FILE -out FILE.key`)"
                .to_string()
        } else {
            "no private key in it (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN EC PRIVATE KEY\" \
         or \"BEGIN RSA PRIVATE KEY\" block)"
                .to_string()
        },
    )
}

/// Refuses a chain whose leaf is expired or not yet valid at `now`.
fn leaf_validity(chain: &[CertificateDer<'_>], now: SystemTime) -> Result<(), String> {
    let Some(leaf) = chain.first() else {
        return Err("no certificate in it".to_string());
    };
    let parsed = cert::Parsed::from_der(leaf)
        .map_err(|why| format!("the first certificate cannot be parsed: {why}"))?;
    match parsed.validity_at(now) {
        cert::Validity::Valid => Ok(()),
        cert::Validity::Expired(when) => Err(format!(
            "the certificate ({}) expired on {when}",
            parsed.subject_dn()
        )),
        cert::Validity::NotYetValid(when) => Err(format!(
            "the certificate ({}) is not valid before {when}",
            parsed.subject_dn()
        )),
    }
}

/// The verifier that requires a client certificate signed by one of `path`'s CAs.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
    errors: &mut Vec<TlsLoadError>,
) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut fail = |problem: String| {
        errors.push(TlsLoadError {
            key: TlsKey::ClientCa,
            path: Some(path.to_path_buf()),
            problem,
        });
    };
    let cas = match read_pem(path).and_then(|pem| certificates(&pem)) {
        Ok(cas) => cas,
        Err(problem) => {
            fail(problem);
            return None;
        }
    };
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.into_iter().enumerate() {
        if let Err(err) = roots.add(ca) {
            fail(format!(
                "certificate {} cannot be a trust anchor: {err}",
                i + 1
            ));
            return None;
        }
    }
    match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider)).build()
    {
        Ok(verifier) => Some(verifier),
        Err(err) => {
            fail(format!("cannot verify clients with it: {err}"));
            None
        }
    }
}

/// ALPN protocol names as rustls wants them: non-empty, at most 255 bytes (RFC 7301).
fn alpn_protocols(names: &[String], errors: &mut Vec<TlsLoadError>) -> Vec<Vec<u8>> {
    let mut protocols = Vec::new();
    for name in names {
        if name.is_empty() || name.len() > 255 {
            errors.push(TlsLoadError {
                key: TlsKey::Alpn,
                path: None,
                problem: format!("\"{name}\": a protocol name is 1 to 255 bytes long"),
            });
        } else {
            protocols.push(name.as_bytes().to_vec());
        }
    }
    protocols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_the_file() {
        let err = TlsLoadError {
            key: TlsKey::SniKey(1),
            path: Some(PathBuf::from("/etc/rinetd/other.key")),
            problem: "no private key in it".to_string(),
        };
        assert_eq!(
            err.to_string(),
            "tls.sni[1].key: /etc/rinetd/other.key: no private key in it"
        );
    }

    #[test]
    fn private_key_explains_encrypted_and_foreign_keys() {
        let encrypted =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(private_key(encrypted).unwrap_err().contains("encrypted"));
        let ssh = b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(private_key(ssh).unwrap_err().contains("OpenSSH"));
        assert!(
            private_key(&[0x30, 0x82, 1, 2])
                .unwrap_err()
                .contains("DER")
        );
        assert!(
            private_key(b"hello")
                .unwrap_err()
                .contains("no private key")
        );
    }

    #[test]
    fn certificates_explain_what_is_missing() {
        assert!(certificates(b"").unwrap_err().contains("no certificate"));
        assert!(certificates(&[0x30, 0x82]).unwrap_err().contains("DER"));
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(certificates(broken).unwrap_err().contains("malformed PEM"));
    }

    #[test]
    fn alpn_names_are_checked() {
        let mut errors = Vec::new();
        let ok = alpn_protocols(&["h2".into(), String::new()], &mut errors);
        assert_eq!(ok, vec![b"h2".to_vec()]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, TlsKey::Alpn);
    }
}
