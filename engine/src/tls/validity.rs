//! The few fields of an X.509 certificate the engine reads itself, straight from its DER: the
//! validity period (expiry metrics and warnings), issuer and subject (is it self-issued?) and
//! the subjectPublicKeyInfo (key pins), and the names of the subject (the relay's client
//! identities: the common name and the DNS and URI subject alternative names).
//!
//! Only the path through `tbsCertificate` is walked (RFC 5280 §4.1): a certificate that
//! rustls accepted is well-formed, so a small reader is enough and spares the engine a full
//! X.509 parser. It does not check signatures or anything else; verification is webpki's.

use rustls::pki_types::CertificateDer;

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`, present in v2 and v3 certificates.
const VERSION_TAG: u8 = 0xa0;

/// The `notAfter` time of `cert`, in unix seconds; `None` if the DER is not a certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    validity(cert.as_ref()).map(|(_, not_after)| not_after)
}

/// A certificate's `notBefore` and `notAfter`, in unix seconds.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (tag, value, rest) = tlv_tagged(tbs(cert)?.validity)?;
    let not_before = der_time(tag, value)?;
    let (tag, value, _) = tlv_tagged(rest)?;
    Some((not_before, der_time(tag, value)?))
}

/// The fields of a certificate's `tbsCertificate` that the engine reads itself.
pub(crate) struct Tbs<'a> {
    /// The issuer name's contents.
    pub(crate) issuer: &'a [u8],
    /// The contents of the `validity` SEQUENCE.
    pub(crate) validity: &'a [u8],
    /// The subject name's contents.
    pub(crate) subject: &'a [u8],
    /// The whole subjectPublicKeyInfo, header included (as key pins hash it).
    pub(crate) spki: &'a [u8],
    /// What follows it: the unique ids, if any, and the `[3]` extensions.
    pub(crate) after_spki: &'a [u8],
}

/// Walks `cert` to its `tbsCertificate` fields (RFC 5280 §4.1).
pub(crate) fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION_TAG) {
        rest = tlv(rest)?.1;
    }
    rest = tlv(rest)?.1; // serialNumber
    rest = tlv(rest)?.1; // signature AlgorithmIdentifier
    let (issuer, rest) = tlv(rest)?;
    let (validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, rest) = tlv(rest)?;
    let (_, after) = tlv(rest)?;
    Some(Tbs {
        issuer,
        validity,
        subject,
        spki: &rest[..rest.len() - after.len()],
        after_spki: after,
    })
}

/// The names a certificate gives its subject.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SubjectNames {
    /// The subject's (first) common name, if it has one in a string type we read.
    pub(crate) common_name: Option<String>,
    /// `dNSName` subject alternative names, in order.
    pub(crate) dns: Vec<String>,
    /// `uniformResourceIdentifier` subject alternative names (e.g. SPIFFE IDs), in order.
    pub(crate) uris: Vec<String>,
}

/// id-at-commonName (2.5.4.3), DER contents.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-subjectAltName (2.5.29.17), DER contents.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID: u8 = 0x06;
const SET: u8 = 0x31;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
/// `[3] EXPLICIT Extensions` in a v3 `tbsCertificate`.
const EXTENSIONS_TAG: u8 = 0xa3;
/// GeneralName `[2] dNSName` and `[6] uniformResourceIdentifier` (IMPLICIT IA5String).
const DNS_NAME: u8 = 0x82;
const URI: u8 = 0x86;

/// The subject's names in `cert` (RFC 5280 §4.1.2.6, §4.2.1.6); `None` if the DER is not a
/// certificate. Names that are not valid UTF-8 are left out.
pub(crate) fn subject_names(cert: &[u8]) -> Option<SubjectNames> {
    let tbs = tbs(cert)?;
    let mut names = SubjectNames {
        common_name: common_name(tbs.subject),
        ..SubjectNames::default()
    };
    let mut rest = tbs.after_spki;
    while let Some((tag, value, after)) = tlv_tagged(rest) {
        rest = after;
        if tag != EXTENSIONS_TAG {
            continue; // issuerUniqueID, subjectUniqueID
        }
        let (mut exts, _) = expect(value, SEQUENCE)?;
        while let Some((ext, after)) = expect(exts, SEQUENCE) {
            exts = after;
            let (oid, mut ext) = expect(ext, OID)?;
            if oid != OID_SAN {
                continue;
            }
            if ext.first() == Some(&BOOLEAN) {
                ext = tlv(ext)?.1;
            }
            let (san, _) = expect(ext, OCTET_STRING)?;
            let (mut general, _) = expect(san, SEQUENCE)?;
            while let Some((tag, value, after)) = tlv_tagged(general) {
                general = after;
                let Ok(text) = std::str::from_utf8(value) else {
                    continue;
                };
                match tag {
                    DNS_NAME => names.dns.push(text.to_owned()),
                    URI => names.uris.push(text.to_owned()),
                    _ => {}
                }
            }
        }
    }
    Some(names)
}

/// The first common name in a Name's RDNSequence contents.
fn common_name(mut name: &[u8]) -> Option<String> {
    while let Some((rdn, after)) = expect(name, SET) {
        name = after;
        let mut attrs = rdn;
        while let Some((attr, after)) = expect(attrs, SEQUENCE) {
            attrs = after;
            let (oid, value) = expect(attr, OID)?;
            if oid != OID_CN {
                continue;
            }
            // UTF8String, PrintableString, TeletexString (read as Latin-1-ish ASCII), IA5String.
            let (tag, text, _) = tlv_tagged(value)?;
            if matches!(tag, 0x0c | 0x13 | 0x14 | 0x16) {
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
        }
    }
    None
}

/// One element of tag `tag`: its contents and what follows.
fn expect(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, value, rest) = tlv_tagged(der)?;
    (t == tag).then_some((value, rest))
}

/// One element, any tag: its contents and what follows.
fn tlv(der: &[u8]) -> Option<(&[u8], &[u8])> {
    tlv_tagged(der).map(|(_, v, rest)| (v, rest))
}

/// Tag, contents and rest of one DER element (single-byte tags, definite lengths).
fn tlv_tagged(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, der) = der.split_first()?;
    let (&first, mut der) = der.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || der.len() < n {
            return None;
        }
        let (bytes, rest) = der.split_at(n);
        der = rest;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if der.len() < len {
        return None;
    }
    let (value, rest) = der.split_at(len);
    Some((tag, value, rest))
}

/// A DER `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`)
/// as unix seconds.
fn der_time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = num(&digits[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (num(&digits[..4])?, &digits[4..]),
        _ => return None,
    };
    let [month, day, hour, minute, second] =
        [0, 2, 4, 6, 8].map(|i| num(&rest[i..i + 2]).unwrap_or(-1));
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..=60).contains(&second);
    valid.then(|| days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_until(year: i32, month: u8, day: u8) -> CertificateDer<'static> {
        use splice_test_pki::{Cert, KeyType};
        Cert::self_signed_between(
            &["localhost"],
            KeyType::P256,
            (1975, 1, 1),
            (year, month, day),
        )
        .der
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // 2031-05-17T00:00:00Z (UTCTime) and 2051-01-01T00:00:00Z (GeneralizedTime, RFC 5280
        // requires it from 2050 on).
        assert_eq!(not_after(&cert_until(2031, 5, 17)), Some(1_936_742_400));
        assert_eq!(not_after(&cert_until(2051, 1, 1)), Some(2_556_144_000));
    }

    #[test]
    fn calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(der_time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(UTC_TIME, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(der_time(UTC_TIME, b"5001010000Z"), None);
        assert_eq!(der_time(GENERALIZED_TIME, b"20241301000000Z"), None);
        assert_eq!(days_from_civil(2023, 11, 14), 1_700_000_000 / 86_400);
        assert_eq!(der_time(UTC_TIME, b"231114221320Z"), Some(1_700_000_000));
        assert_eq!(
            der_time(GENERALIZED_TIME, b"20231114221320Z"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn subject_names_of_a_leaf() {
        use splice_test_pki::{Authority, KeyType, Usage};
        let ca = Authority::new("names", KeyType::P256);
        let leaf = ca.issue_with(
            "dev-7",
            &["dev7.example", "127.0.0.1"],
            &["spiffe://fleet.example/dev/7"],
            None,
            KeyType::P256,
            Usage::Client,
        );
        let names = subject_names(leaf.der.as_ref()).expect("a certificate");
        assert_eq!(names.common_name.as_deref(), Some("dev-7"));
        assert_eq!(names.dns, ["dev7.example"]);
        assert_eq!(names.uris, ["spiffe://fleet.example/dev/7"]);
        let ca_names = subject_names(ca.cert_der().as_ref()).expect("a certificate");
        assert_eq!(
            ca_names.common_name.as_deref(),
            Some("splice test names CA")
        );
        assert!(ca_names.dns.is_empty() && ca_names.uris.is_empty());
        assert_eq!(subject_names(&[0x30, 0x03, 1, 2]), None);
    }

    #[test]
    fn not_a_certificate() {
        assert_eq!(
            not_after(&CertificateDer::from(vec![0x30, 0x03, 1, 2])),
            None
        );
        assert_eq!(not_after(&CertificateDer::from(Vec::new())), None);
    }
}
