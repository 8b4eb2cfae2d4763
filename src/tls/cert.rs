//! What rinetd reads out of an X.509 certificate: validity dates (load-time checks) and the
//! subject, issuer, serial and fingerprint that become a handler's `SSL_CLIENT_*` variables.
//!
//! Distinguished names are written as mod_ssl writes them by default (OpenSSL's RFC 2253 form,
//! `XN_FLAG_RFC2253` without escaping UTF-8): most specific RDN first, `,` between RDNs, `+`
//! inside a multi-valued RDN, OpenSSL's short names (`CN`, `O`, `OU`, `C`, `ST`, `L`,
//! `emailAddress`, `DC`, `UID`…), RFC 4514 escaping of `,+"\<>;`, a leading `#` or space and
//! a trailing space; attributes of unknown type as `1.2.3.4=#<hex of the DER value>`.
//! Example: `CN=client,O=Example,C=DE`.

use std::time::SystemTime;

use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::name::Name;

/// OpenSSL's short names for the attribute types that appear in real certificates.
const SHORT_NAMES: &[(ObjectIdentifier, &str)] = &[
    (ObjectIdentifier::new_unwrap("2.5.4.3"), "CN"),
    (ObjectIdentifier::new_unwrap("2.5.4.4"), "SN"),
    (ObjectIdentifier::new_unwrap("2.5.4.5"), "serialNumber"),
    (ObjectIdentifier::new_unwrap("2.5.4.6"), "C"),
    (ObjectIdentifier::new_unwrap("2.5.4.7"), "L"),
    (ObjectIdentifier::new_unwrap("2.5.4.8"), "ST"),
    (ObjectIdentifier::new_unwrap("2.5.4.9"), "street"),
    (ObjectIdentifier::new_unwrap("2.5.4.10"), "O"),
    (ObjectIdentifier::new_unwrap("2.5.4.11"), "OU"),
    (ObjectIdentifier::new_unwrap("2.5.4.12"), "title"),
    (ObjectIdentifier::new_unwrap("2.5.4.42"), "GN"),
    (ObjectIdentifier::new_unwrap("2.5.4.43"), "initials"),
    (ObjectIdentifier::new_unwrap("2.5.4.46"), "dnQualifier"),
    (ObjectIdentifier::new_unwrap("2.5.4.65"), "pseudonym"),
    (
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1"),
        "emailAddress",
    ),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1"),
        "UID",
    ),
    (
        ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25"),
        "DC",
    ),
];
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// A certificate's validity at some moment; the dates are shown as `2030-01-01T00:00:00Z`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired(String),
    NotYetValid(String),
}

/// A parsed certificate. The lenient `Raw` profile is used because rustls' own verifier has
/// already judged the certificate; this only reads it.
pub struct Parsed(CertificateInner<Raw>);

impl Parsed {
    pub fn from_der(der: &[u8]) -> Result<Parsed, String> {
        CertificateInner::<Raw>::from_der(der)
            .map(Parsed)
            .map_err(|err| err.to_string())
    }

    pub fn validity_at(&self, now: SystemTime) -> Validity {
        let validity = self.0.tbs_certificate().validity();
        if now < validity.not_before.to_system_time() {
            Validity::NotYetValid(validity.not_before.to_date_time().to_string())
        } else if now > validity.not_after.to_system_time() {
            Validity::Expired(validity.not_after.to_date_time().to_string())
        } else {
            Validity::Valid
        }
    }

    pub fn subject_dn(&self) -> String {
        distinguished_name(self.0.tbs_certificate().subject())
    }

    pub fn issuer_dn(&self) -> String {
        distinguished_name(self.0.tbs_certificate().issuer())
    }

    /// The first common name of the subject, unescaped (mod_ssl's `SSL_CLIENT_S_DN_CN`).
    pub fn subject_cn(&self) -> Option<String> {
        self.0
            .tbs_certificate()
            .subject()
            .iter()
            .find(|atv| atv.oid == COMMON_NAME)
            .and_then(|atv| string_value(&atv.value))
    }

    /// The serial number as OpenSSL prints it: upper-case hex, two digits a byte, without the
    /// leading zero bytes DER adds to keep it positive.
    pub fn serial_hex(&self) -> String {
        let bytes = self.0.tbs_certificate().serial_number().as_bytes();
        let significant: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
        if significant.is_empty() {
            return "0".to_string();
        }
        significant.iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// Lower-case hex SHA-256 of the certificate's DER (as `sha256sum` or `openssl x509
/// -fingerprint -sha256` print it, the latter upper-case with colons).
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A name in the form described in the module doc.
fn distinguished_name(name: &Name) -> String {
    let mut out = String::new();
    for (i, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            // x509-cert writes the value with RFC 4514 escaping (or as #hex when it is not a
            // string); only the attribute's name is replaced by OpenSSL's.
            let shown = atv.to_string();
            let value = shown.split_once('=').map_or(shown.as_str(), |(_, v)| v);
            match SHORT_NAMES.iter().find(|(oid, _)| *oid == atv.oid) {
                Some((_, short)) => out.push_str(short),
                None => out.push_str(&atv.oid.to_string()),
            }
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

/// The text of a directory string, control characters shown as `\xx` so that the value is
/// safe in an environment variable and a log line.
fn string_value(value: &x509_cert::der::Any) -> Option<String> {
    let text = match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::TeletexString
        | Tag::VisibleString => String::from_utf8_lossy(value.value()).into_owned(),
        Tag::BmpString => {
            let units: Vec<u16> = value
                .value()
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => return None,
    };
    Some(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\{:02x}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use x509_cert::der::Encode;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    #[test]
    fn names_read_most_specific_first_with_openssl_short_names() {
        // RFC 4514 text is most specific first, as is the output.
        let dn = name("CN=client,OU=Ops+O=Example,C=DE");
        assert_eq!(distinguished_name(&dn), "CN=client,OU=Ops+O=Example,C=DE");
        let email = name("emailAddress=a@example.org,CN=x");
        assert_eq!(
            distinguished_name(&email),
            "emailAddress=a@example.org,CN=x"
        );
    }

    #[test]
    fn special_characters_are_escaped() {
        let dn = name("CN=a\\,b\\+c,O=x");
        assert_eq!(distinguished_name(&dn), "CN=a\\,b\\+c,O=x");
    }

    #[test]
    fn string_values_of_every_directory_string_kind() {
        let utf8 = x509_cert::der::Any::new(Tag::Utf8String, "Zoë".as_bytes()).unwrap();
        assert_eq!(string_value(&utf8).as_deref(), Some("Zoë"));
        let bmp = x509_cert::der::Any::new(Tag::BmpString, [0u8, b'h', 0, b'i']).unwrap();
        assert_eq!(string_value(&bmp).as_deref(), Some("hi"));
        let control = x509_cert::der::Any::new(Tag::Utf8String, &b"a\0b\n"[..]).unwrap();
        assert_eq!(string_value(&control).as_deref(), Some("a\\00b\\0a"));
        let int = x509_cert::der::Any::new(Tag::Integer, [1u8]).unwrap();
        assert_eq!(string_value(&int), None);
        assert!(int.to_der().is_ok());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Parsed::from_der(b"").is_err());
        assert!(Parsed::from_der(&[0x30, 0x03, 0x02, 0x01]).is_err());
        assert!(Parsed::from_der(&[0xff; 64]).is_err());
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
