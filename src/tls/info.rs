//! What a completed handshake tells the handler and the log: the mod_ssl environment variables
//! (`SSL_PROTOCOL`, `SSL_CIPHER`, `SSL_CLIENT_*`…) and the `tls=` field of the accepted line.
//!
//! `SSL_CIPHER` uses OpenSSL's names (`TLS_AES_128_GCM_SHA256`, `ECDHE-RSA-AES128-GCM-SHA256`),
//! the names mod_ssl, stunnel and `openssl s_client` show, so that scripts moved from behind
//! them see the same values. `SSL_CLIENT_CERT_SHA256` is the lower-case hex SHA-256 of the
//! client certificate's DER; `SSL_CLIENT_M_SERIAL` upper-case hex as OpenSSL prints it; DNs as
//! described in `cert.rs`.

use rustls::server::ServerConnection;
use rustls::{CipherSuite, ProtocolVersion};

use super::cert;

/// The client certificate's details, when one was presented and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertInfo {
    pub subject_dn: String,
    pub subject_cn: Option<String>,
    pub issuer_dn: String,
    pub serial: String,
    pub sha256: String,
}

/// What a completed handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub protocol: &'static str,
    /// OpenSSL's name of the cipher suite.
    pub cipher: String,
    /// The name the client asked for (SNI), lower-case.
    pub sni: Option<String>,
    /// The protocol agreed by ALPN.
    pub alpn: Option<String>,
    /// `None` when no client certificate was asked for.
    pub client: Option<ClientCertInfo>,
}

impl HandshakeInfo {
    /// Reads a connection whose handshake is complete.
    pub fn of(connection: &ServerConnection) -> HandshakeInfo {
        let protocol = match connection.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = connection
            .negotiated_cipher_suite()
            .map_or_else(|| "unknown".to_string(), |s| openssl_name(s.suite()));
        let client = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| client_cert_info(leaf.as_ref()));
        HandshakeInfo {
            protocol,
            cipher,
            sni: connection.server_name().map(safe_text),
            alpn: connection
                .alpn_protocol()
                .map(|p| safe_text(&String::from_utf8_lossy(p))),
            client,
        }
    }

    /// The handler's `SSL_*` variables, in the order the contract lists them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("SSL_PROTOCOL", self.protocol.to_string()),
            ("SSL_CIPHER", self.cipher.clone()),
        ];
        if let Some(sni) = &self.sni {
            vars.push(("SSL_TLS_SNI", sni.clone()));
        }
        if let Some(alpn) = &self.alpn {
            vars.push(("SSL_ALPN", alpn.clone()));
        }
        match &self.client {
            None => vars.push(("SSL_CLIENT_VERIFY", "NONE".to_string())),
            Some(client) => {
                vars.push(("SSL_CLIENT_VERIFY", "SUCCESS".to_string()));
                vars.push(("SSL_CLIENT_S_DN", client.subject_dn.clone()));
                if let Some(cn) = &client.subject_cn {
                    vars.push(("SSL_CLIENT_S_DN_CN", cn.clone()));
                }
                vars.push(("SSL_CLIENT_I_DN", client.issuer_dn.clone()));
                vars.push(("SSL_CLIENT_M_SERIAL", client.serial.clone()));
                vars.push(("SSL_CLIENT_CERT_SHA256", client.sha256.clone()));
            }
        }
        vars
    }

    /// The value of `tls=` on the accepted log line: `TLSv1.3/TLS_AES_128_GCM_SHA256`, with
    /// `/sni=name` and `/cn=name` when present. Never contains a space or a quote.
    pub fn log_summary(&self) -> String {
        let mut summary = format!("{}/{}", self.protocol, self.cipher);
        if let Some(sni) = &self.sni {
            summary.push_str("/sni=");
            summary.push_str(sni);
        }
        if let Some(cn) = self.client.as_ref().and_then(|c| c.subject_cn.as_deref()) {
            summary.push_str("/cn=");
            summary.extend(
                cn.chars()
                    .map(|c| if c == ' ' || c == '"' { '_' } else { c }),
            );
        }
        summary
    }
}

fn client_cert_info(der: &[u8]) -> ClientCertInfo {
    let sha256 = cert::sha256_hex(der);
    match cert::Parsed::from_der(der) {
        Ok(parsed) => ClientCertInfo {
            subject_dn: parsed.subject_dn(),
            subject_cn: parsed.subject_cn(),
            issuer_dn: parsed.issuer_dn(),
            serial: parsed.serial_hex(),
            sha256,
        },
        // rustls' verifier accepted it, so this cannot really happen; the fingerprint still
        // identifies the certificate.
        Err(_) => ClientCertInfo {
            subject_dn: String::new(),
            subject_cn: None,
            issuer_dn: String::new(),
            serial: String::new(),
            sha256,
        },
    }
}

/// Peer-chosen text made safe for an environment variable and a log line.
fn safe_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// OpenSSL's name for every suite rustls offers; IANA's (rustls') name for anything else.
fn openssl_name(suite: CipherSuite) -> String {
    let name = match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => {
            return other
                .as_str()
                .map_or_else(|| format!("{other:?}"), str::to_string);
        }
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(client: Option<ClientCertInfo>) -> HandshakeInfo {
        HandshakeInfo {
            protocol: "TLSv1.3",
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            sni: Some("localhost".into()),
            alpn: None,
            client,
        }
    }

    #[test]
    fn without_a_client_certificate_verify_is_none() {
        let vars = info(None).env();
        assert_eq!(
            vars,
            vec![
                ("SSL_PROTOCOL", "TLSv1.3".to_string()),
                ("SSL_CIPHER", "TLS_AES_128_GCM_SHA256".to_string()),
                ("SSL_TLS_SNI", "localhost".to_string()),
                ("SSL_CLIENT_VERIFY", "NONE".to_string()),
            ]
        );
        assert_eq!(
            info(None).log_summary(),
            "TLSv1.3/TLS_AES_128_GCM_SHA256/sni=localhost"
        );
    }

    #[test]
    fn a_client_certificate_fills_the_client_variables() {
        let client = ClientCertInfo {
            subject_dn: "CN=client one,O=Example".into(),
            subject_cn: Some("client one".into()),
            issuer_dn: "CN=Test CA".into(),
            serial: "1F".into(),
            sha256: "ab".repeat(32),
        };
        let with = info(Some(client));
        let vars = with.env();
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("SSL_CLIENT_VERIFY"), Some("SUCCESS"));
        assert_eq!(get("SSL_CLIENT_S_DN_CN"), Some("client one"));
        assert_eq!(get("SSL_CLIENT_I_DN"), Some("CN=Test CA"));
        assert_eq!(get("SSL_CLIENT_M_SERIAL"), Some("1F"));
        assert_eq!(
            with.log_summary(),
            "TLSv1.3/TLS_AES_128_GCM_SHA256/sni=localhost/cn=client_one"
        );
    }

    #[test]
    fn cipher_names_are_openssl_names() {
        assert_eq!(
            openssl_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
            "ECDHE-RSA-AES256-GCM-SHA384"
        );
        assert_eq!(
            openssl_name(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
            "TLS_CHACHA20_POLY1305_SHA256"
        );
        assert_eq!(
            openssl_name(CipherSuite::TLS_RSA_WITH_AES_128_GCM_SHA256),
            "TLS_RSA_WITH_AES_128_GCM_SHA256"
        );
    }

    #[test]
    fn peer_text_loses_control_characters() {
        assert_eq!(safe_text("h2\0\n"), "h2??");
    }
}
