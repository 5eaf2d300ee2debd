//! Secrets: access tokens and the API token, their hashes, and how they are compared.
//!
//! An access token is 256 random bits from the system's generator (aws-lc-rs), written in
//! base64url without padding (43 characters: printable, no control characters, well inside
//! the 1–4096 characters the AWS local proxy accepts). It is shown once, in the answer to
//! the call that made it; the registry keeps only its SHA-256 ([`TokenHash`]). A hash of
//! 256 random bits can be looked up directly (an index on it tells an attacker nothing
//! about any token), and the hash found is then compared again in constant time.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Random bytes in an access token.
pub(crate) const TOKEN_BYTES: usize = 32;

/// A string that must never reach a log: its `Debug` and `Display` print `<redacted>`; only
/// [`Secret::expose`] gives it out, for the one answer that shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the answer that shows it once or for a comparison.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Its hash, as the registry stores it.
    pub(crate) fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The SHA-256 of a token (of its text, as the peer sends it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenHash(pub(crate) [u8; 32]);

impl TokenHash {
    pub(crate) fn of(token: &str) -> Self {
        let d = digest(&SHA256, token.as_bytes());
        let mut h = [0; 32];
        h.copy_from_slice(d.as_ref());
        Self(h)
    }

    /// Constant-time equality.
    pub(crate) fn matches(&self, other: &TokenHash) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell two apart in a test failure.
        write!(f, "TokenHash({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Whether `a == b`, in a time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Whether the secret `given` equals `expected`, in a time that depends on neither (both are
/// hashed first, so a length difference is not visible either).
pub(crate) fn secret_matches(given: &str, expected: &Secret) -> bool {
    TokenHash::of(given).matches(&expected.hash())
}

/// A new access token: 256 random bits, base64url.
pub(crate) fn new_token() -> Result<Secret, RandomError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(Secret(URL_SAFE_NO_PAD.encode(bytes)))
}

/// A new tunnel id: a random (version 4) UUID, as AWS's tunnel ids are.
pub(crate) fn new_tunnel_id() -> Result<String, RandomError> {
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).map_err(|_| RandomError)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// The system's random generator failed (it does not, short of a broken kernel).
#[derive(Debug, thiserror::Error)]
#[error("the system random generator failed")]
pub(crate) struct RandomError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let token = new_token().expect("token");
        let shown = format!("{token:?} {token} {:?}", Some(&token));
        assert!(!shown.contains(token.expose()), "{shown}");
        assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{token}"), "<redacted>");
        // Inside a struct that derives Debug too.
        #[derive(Debug)]
        #[expect(dead_code, reason = "only printed")]
        struct Holder {
            t: Secret,
        }
        let h = format!("{:?}", Holder { t: token.clone() });
        assert!(!h.contains(token.expose()), "{h}");
    }

    #[test]
    fn tokens_are_256_random_bits_in_base64url() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        let bytes = URL_SAFE_NO_PAD.decode(a.expose()).expect("base64url");
        assert_eq!(bytes.len(), TOKEN_BYTES);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
        let s = Secret::new("api-token");
        assert!(secret_matches("api-token", &s));
        assert!(!secret_matches("api-tokeN", &s));
        assert!(!secret_matches("api-token ", &s));
        assert!(!secret_matches("", &s));
        let h = TokenHash::of("x");
        assert!(h.matches(&TokenHash::of("x")));
        assert!(!h.matches(&TokenHash::of("y")));
    }

    #[test]
    fn tunnel_ids_are_uuid_v4() {
        let id = new_tunnel_id().expect("id");
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert_ne!(id, new_tunnel_id().expect("id"));
    }
}
