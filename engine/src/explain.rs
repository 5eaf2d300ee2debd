//! rustls errors in words for people, with what to do about the common ones.
//!
//! rustls's own `Display` shows Rust debug forms (`Other(OtherError(CaUsedAsEndEntity))`,
//! `DnsName("db")`); every TLS error that reaches a log line goes through [`explain`] instead.
//!
//! It sits below `error` (whose `Tls` variant is shown through it) and below `tls` (whose
//! certificate checks print dates with [`format_time`]), and imports only `kinds`.

use rustls::{AlertDescription, CertificateError, Error, InvalidMessage, PeerIncompatible};

use crate::kinds::Mode;

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One line saying what went wrong in `e`, from the point of view of a forwarder in `mode`
/// (whose TLS peer is the upstream in client mode, the client in server mode).
pub fn explain(e: &Error, mode: Mode) -> String {
    let peer = match mode {
        Mode::Client => "the upstream",
        Mode::Server => "the client",
    };
    explain_peer(e, mode, peer)
}

/// [`explain`] naming the TLS peer `peer` (`"the relay"` for a tunnel agent).
pub(crate) fn explain_peer(e: &Error, mode: Mode, peer: &str) -> String {
    match e {
        Error::InvalidCertificate(c) => {
            format!("{peer}'s certificate was refused: {}", certificate(c, mode))
        }
        Error::InvalidMessage(InvalidMessage::InvalidContentType)
        | Error::InvalidMessage(InvalidMessage::UnknownProtocolVersion) => match mode {
            Mode::Client => format!(
                "{peer} did not answer with TLS (is it a plain TCP port, or does it expect a \
                 protocol-specific STARTTLS first?)"
            ),
            Mode::Server => {
                format!("{peer} did not speak TLS (a plain TCP or HTTP client on the TLS port?)")
            }
        },
        Error::InvalidMessage(m) => format!("{peer} sent a malformed TLS message ({m:?})"),
        Error::AlertReceived(a) => format!("{peer} refused the connection: {}", alert(*a)),
        Error::NoCertificatesPresented => match mode {
            Mode::Server => {
                format!("{peer} presented no certificate, and `client_ca` requires one")
            }
            Mode::Client => format!("{peer} presented no certificate"),
        },
        Error::PeerIncompatible(p) => format!("{peer} has no TLS setting in common: {}", {
            match p {
                PeerIncompatible::NoCipherSuitesInCommon => "no cipher suite in common".into(),
                PeerIncompatible::NoSignatureSchemesInCommon => {
                    "no signature scheme in common".into()
                }
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::Tls13RequiredForQuic
                | PeerIncompatible::ServerDoesNotSupportTls12Or13 => {
                    "no TLS version in common (see `tls_versions`)".into()
                }
                other => format!("{other:?}"),
            }
        }),
        Error::PeerMisbehaved(m) => format!("{peer} broke the TLS protocol ({m:?})"),
        Error::NoApplicationProtocol => {
            format!("no ALPN protocol in common with {peer} (see `alpn`)")
        }
        Error::DecryptError => format!("a record from {peer} failed authentication"),
        Error::PeerSentOversizedRecord => format!("{peer} sent an oversized TLS record"),
        Error::General(s) => s.clone(),
        Error::Other(o) => o.to_string(),
        other => other.to_string(),
    }
}

/// Why a certificate was refused, and what to do about it.
fn certificate(c: &CertificateError, mode: Mode) -> String {
    use CertificateError as C;
    match c {
        C::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = if presented.is_empty() {
                "no DNS or IP name (subjectAltName); the CN alone is not used".to_string()
            } else {
                let names: Vec<String> = presented.iter().map(|n| plain_name(n)).collect();
                format!("only {}", names.join(", "))
            };
            let hint = match mode {
                Mode::Client => "; set `--sni` (`sni`) to a name it is valid for",
                Mode::Server => "",
            };
            format!(
                "it is not valid for {:?}: it names {names}{hint}",
                expected.to_str()
            )
        }
        C::NotValidForName => match mode {
            Mode::Client => "it is not valid for the name we asked for; set `--sni` (`sni`) to a \
                             name it is valid for"
                .to_string(),
            Mode::Server => "it is not valid for the expected name".to_string(),
        },
        C::ExpiredContext { time, not_after } => format!(
            "it expired on {} (now {})",
            format_time(not_after.as_secs()),
            format_time(time.as_secs())
        ),
        C::Expired => "it has expired".to_string(),
        C::NotValidYetContext { time, not_before } => format!(
            "it is not valid before {} (now {}; check the clocks)",
            format_time(not_before.as_secs()),
            format_time(time.as_secs())
        ),
        C::NotValidYet => "it is not valid yet (check the clocks)".to_string(),
        C::UnknownIssuer => match mode {
            Mode::Client => {
                "it was not issued by a CA we trust (set `--ca`, or `--pin` its key)".to_string()
            }
            Mode::Server => "it was not issued by a CA in `client_ca`".to_string(),
        },
        C::BadSignature => "its signature does not verify".to_string(),
        C::BadEncoding => "it is not a valid X.509 certificate".to_string(),
        C::Revoked => "it has been revoked".to_string(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => match mode {
            Mode::Client => "it is not a server certificate (extendedKeyUsage)".to_string(),
            Mode::Server => "it is not a client certificate (extendedKeyUsage)".to_string(),
        },
        C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "it is signed with an algorithm we do not accept".to_string()
        }
        C::Other(o) => {
            let inner = o.to_string();
            if inner.contains("CaUsedAsEndEntity") {
                match mode {
                    Mode::Client => "it is a CA certificate (CA:TRUE) used as the server's own \
                                     (a self-signed `openssl req -x509` certificate?): pin its \
                                     key with `--pin`, or reissue it with CA:FALSE and a \
                                     subjectAltName"
                        .to_string(),
                    Mode::Server => {
                        "it is a CA certificate (CA:TRUE) used as the client's own".to_string()
                    }
                }
            } else {
                inner
            }
        }
        other => format!("{other:?}"),
    }
}

/// `DnsName("a.example")` or `IpAddress(10.0.0.1)` (rustls's debug forms of the names a
/// certificate presents) as `a.example` and `10.0.0.1`.
fn plain_name(n: &str) -> String {
    let inner = n
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(n);
    inner.trim_matches('"').to_string()
}

/// An alert's name, as RFC 8446 spells it, with a word on the usual cause.
fn alert(a: AlertDescription) -> String {
    let code = u8::from(a);
    let name = splice_proto::alert_name(code)
        .map_or_else(|| format!("alert {code}"), |n| format!("{n} alert"));
    let why = match a {
        AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateRequired => " (it did not accept our certificate)",
        AlertDescription::HandshakeFailure => " (no cipher, version or key type in common?)",
        AlertDescription::ProtocolVersion => " (no TLS version in common)",
        AlertDescription::NoApplicationProtocol => " (no ALPN protocol in common)",
        AlertDescription::UnrecognisedName => " (it does not serve this SNI name)",
        _ => "",
    };
    format!("{name}{why}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::OtherError;
    use rustls::pki_types::{ServerName, UnixTime};

    use super::*;

    #[test]
    fn no_debug_forms_for_the_common_failures() {
        let ca_as_ee = Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            std::io::Error::other("CaUsedAsEndEntity"),
        ))));
        let name = Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("db.example.com").unwrap(),
            presented: vec!["DnsName(\"x\")".into()],
        });
        let expired = Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000)),
        });
        let cases = [
            (ca_as_ee, "--pin"),
            (name.clone(), "--sni"),
            (expired, "expired on 2023-11-14 22:13:20 UTC"),
            (
                Error::InvalidMessage(InvalidMessage::InvalidContentType),
                "did not answer with TLS",
            ),
            (
                Error::AlertReceived(AlertDescription::UnknownCA),
                "unknown_ca alert",
            ),
        ];
        for (e, want) in cases {
            let text = explain(&e, Mode::Client);
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("OtherError"), "{text}");
            assert!(!text.contains("DnsName("), "{text}");
        }
        assert!(!explain(&name, Mode::Server).contains("--sni"));
    }
}
