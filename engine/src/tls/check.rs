//! What we check about certificates ourselves: validity dates when a file is loaded, the
//! self-signed CA given as `ca` that verification would refuse, and key pins.
//!
//! The DER is read by [`super::validity`]; verification proper is webpki's.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::validity::{tbs, validity};
use crate::explain::format_time;

/// Whether a certificate's issuer is its subject.
pub fn self_issued(cert: &[u8]) -> bool {
    tbs(cert).is_some_and(|t| t.issuer == t.subject)
}

/// SHA-256 of `data`, by aws-lc-rs (rustls's provider here).
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// sha256 of a certificate's subjectPublicKeyInfo (as `curl --pinnedpubkey` and HPKP hash it).
pub fn spki_sha256(cert: &[u8]) -> Option<[u8; 32]> {
    Some(sha256(tbs(cert)?.spki))
}

/// `sha256:<base64>` of a certificate's key: what `--pin` takes.
pub fn pin_of(cert: &[u8]) -> Option<String> {
    spki_sha256(cert).map(|h| format!("sha256:{}", BASE64.encode(h)))
}

/// Why a certificate loaded from `what` is not usable now, if it is not: expired or not yet
/// valid. `index` is its position in the file.
pub fn validity_problem(cert: &[u8], index: usize) -> Option<String> {
    let (not_before, not_after) = validity(cert)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let which = if index == 0 {
        "the certificate".to_string()
    } else {
        format!("certificate {} in the file", index + 1)
    };
    if now > not_after {
        Some(format!(
            "{which} expired on {}; peers will refuse it",
            format_time(not_after.max(0) as u64)
        ))
    } else if now < not_before {
        Some(format!(
            "{which} is not valid before {}; peers will refuse it until then (check the clock)",
            format_time(not_before.max(0) as u64)
        ))
    } else {
        None
    }
}

/// Parses `sha256:<base64 or hex>` (hex may have colons, as `openssl x509 -fingerprint`
/// prints it): the sha256 of a subjectPublicKeyInfo, or of a whole certificate.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let Some(value) = text.trim().strip_prefix("sha256:") else {
        return Err(format!(
            "pin {text:?} must start with \"sha256:\" (then base64 or hex of a SHA-256)"
        ));
    };
    let hex: String = value.chars().filter(|c| *c != ':').collect();
    let bytes = if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits"))
            .collect()
    } else {
        BASE64
            .decode(value)
            .map_err(|e| format!("pin {text:?} is neither 64 hex digits nor base64 ({e})"))?
    };
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "pin {text:?} is {} bytes long; a SHA-256 is 32 bytes",
            b.len()
        )
    })
}

/// The refusal of a certificate whose key is not pinned.
#[derive(Debug)]
struct NotPinned(String);

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "its key ({}) matches no `--pin`", self.0)
    }
}

impl std::error::Error for NotPinned {}

/// Trusts exactly the pinned keys, with no CA: the server's certificate is accepted when the
/// sha256 of its subjectPublicKeyInfo (or of the whole certificate) is pinned, whatever its
/// names, issuer and dates. The handshake signature is still verified against that key, so
/// only the holder of the private key passes.
#[derive(Debug)]
pub struct PinVerifier {
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    /// A verifier for `pins`, checking signatures with `provider`'s algorithms.
    pub fn new(pins: Vec<[u8; 32]>, provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self {
            pins,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let whole = sha256(end_entity.as_ref());
        let spki = spki_sha256(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if self.pins.iter().any(|p| *p == spki || *p == whole) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotPinned(format!(
                "sha256:{}",
                BASE64.encode(spki)
            ))))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The refusal of a CA certificate presented as the server's own, with the pin to use.
#[derive(Debug)]
struct CaAsServerCert(String);

impl fmt::Display for CaAsServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "it is a CA certificate (CA:TRUE) used as the server's own (a self-signed `openssl \
             req -x509` certificate?): trust exactly its key with `--pin {}`, or reissue it \
             with CA:FALSE and a subjectAltName",
            self.0
        )
    }
}

impl std::error::Error for CaAsServerCert {}

/// webpki's verification, with one refusal made actionable: a CA certificate presented as the
/// server's own (`CaUsedAsEndEntity`) is reported with the pin of its key.
#[derive(Debug)]
pub struct HintingVerifier(pub Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for HintingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))
                    if o.to_string().contains("CaUsedAsEndEntity") =>
                {
                    let pin = pin_of(end_entity).unwrap_or_default();
                    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                        rustls::OtherError(Arc::new(CaAsServerCert(pin))),
                    ))
                }
                e => e,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        // FIPS 180-2, appendix B.1: SHA-256("abc").
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pins_parse_in_both_encodings() {
        let h = [0xabu8; 32];
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_pin(&format!("sha256:{hex}")), Ok(h));
        let colons: Vec<String> = h.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_pin(&format!("sha256:{}", colons.join(":"))), Ok(h));
        assert_eq!(parse_pin(&format!("sha256:{}", BASE64.encode(h))), Ok(h));
        assert!(parse_pin(&hex).unwrap_err().contains("must start with"));
        assert!(parse_pin("sha256:AAAA").unwrap_err().contains("3 bytes"));
        assert!(parse_pin("sha256:!!").unwrap_err().contains("neither"));
    }
}
