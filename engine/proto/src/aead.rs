//! The record layer's AEAD: one direction's key in whichever of two implementations is the
//! faster on this CPU.
//!
//! Both aws-lc-rs and ring implement AES-GCM and ChaCha20-Poly1305 behind the same interface,
//! with different assembly. On an x86-64 CPU with 256-bit VAES and VPCLMULQDQ but without
//! AVX-512 (AMD Zen 3, Intel's client cores since Alder Lake), ring's AES-GCM runs on 256-bit
//! vectors (`aes-gcm-avx2-x86_64`) while aws-lc (as of aws-lc-sys 0.47) falls back to the
//! 128-bit AES-NI code: on our 2-core AMD EPYC VM ring seals 16 KiB records at 58 Gbit/s against
//! aws-lc's 31, and opens them in 0.19 against 0.33 CPU s/GiB (docs/design.md). Everywhere
//! else aws-lc is at least as fast (its AVX-512 code where AVX-512 is there, the same AES-NI
//! code as ring's where VAES is not) and it can seal and open out of place, which ring cannot,
//! so it stays the choice there. rustls's own crypto (the handshake) is aws-lc-rs throughout;
//! this is only the data phase's cipher.

#[cfg(test)]
use std::cell::Cell;
use std::sync::OnceLock;

use aws_lc_rs::aead as awslc;
use ring::aead as rg;

/// Which implementation seals and opens records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// aws-lc-rs.
    AwsLc,
    /// ring.
    Ring,
}

impl Backend {
    /// The faster one on this CPU (see the module's documentation); decided once.
    pub fn fastest() -> Backend {
        static CHOICE: OnceLock<Backend> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            if ring_is_faster_here() {
                Backend::Ring
            } else {
                Backend::AwsLc
            }
        })
    }

    /// Its name, for logs and the bench.
    pub fn name(self) -> &'static str {
        match self {
            Backend::AwsLc => "aws-lc-rs",
            Backend::Ring => "ring",
        }
    }
}

#[cfg(test)]
thread_local! {
    /// A test's choice instead of [`Backend::fastest`], on its own thread.
    static FORCED: Cell<Option<Backend>> = const { Cell::new(None) };
}

/// The implementation new keys get: [`Backend::fastest`] (or, in a test, the one
/// [`with_backend`] forces).
pub(crate) fn chosen() -> Backend {
    #[cfg(test)]
    if let Some(b) = FORCED.with(Cell::get) {
        return b;
    }
    Backend::fastest()
}

/// Runs `f` with keys made by `backend` on this thread.
#[cfg(test)]
pub(crate) fn with_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> R {
    let before = FORCED.with(|c| c.replace(Some(backend)));
    let r = f();
    FORCED.with(|c| c.set(before));
    r
}

#[cfg(target_arch = "x86_64")]
fn ring_is_faster_here() -> bool {
    std::arch::is_x86_feature_detected!("vaes")
        && std::arch::is_x86_feature_detected!("vpclmulqdq")
        && std::arch::is_x86_feature_detected!("avx2")
        && !std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn ring_is_faster_here() -> bool {
    false
}

/// The ciphers the record layer seals with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// The authentication tag that failed, or a key that does not suit its cipher: the callers
/// map it to the alert their context calls for.
#[derive(Debug)]
pub(crate) struct Unspecified;

/// One direction's key.
pub(crate) enum Key {
    AwsLc(awslc::LessSafeKey),
    /// Boxed: ring's key schedule is inline (about 0.5 KiB), aws-lc's is behind a pointer,
    /// and a relay keeps two per idle peer in its slab.
    Ring(Box<rg::LessSafeKey>),
}

/// A 16-byte AEAD tag.
pub(crate) const TAG: usize = 16;

impl Key {
    pub(crate) fn new(backend: Backend, cipher: Cipher, key: &[u8]) -> Result<Self, Unspecified> {
        Ok(match backend {
            Backend::AwsLc => {
                let alg = match cipher {
                    Cipher::Aes128Gcm => &awslc::AES_128_GCM,
                    Cipher::Aes256Gcm => &awslc::AES_256_GCM,
                    Cipher::Chacha20Poly1305 => &awslc::CHACHA20_POLY1305,
                };
                let key = awslc::UnboundKey::new(alg, key).map_err(|_| Unspecified)?;
                Key::AwsLc(awslc::LessSafeKey::new(key))
            }
            Backend::Ring => {
                let alg = match cipher {
                    Cipher::Aes128Gcm => &rg::AES_128_GCM,
                    Cipher::Aes256Gcm => &rg::AES_256_GCM,
                    Cipher::Chacha20Poly1305 => &rg::CHACHA20_POLY1305,
                };
                let key = rg::UnboundKey::new(alg, key).map_err(|_| Unspecified)?;
                Key::Ring(Box::new(rg::LessSafeKey::new(key)))
            }
        })
    }

    /// Seals `in_out` where it lies; returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG], Unspecified> {
        match self {
            Key::AwsLc(k) => k
                .seal_in_place_separate_tag(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::from(aad),
                    in_out,
                )
                .map(|t| copy_tag(t.as_ref()))
                .map_err(|_| Unspecified),
            Key::Ring(k) => k
                .seal_in_place_separate_tag(
                    rg::Nonce::assume_unique_for_key(nonce),
                    rg::Aad::from(aad),
                    in_out,
                )
                .map(|t| copy_tag(t.as_ref()))
                .map_err(|_| Unspecified),
        }
    }

    /// Seals `plain` followed by `extra` (TLS 1.3's inner content type, or nothing) into
    /// `out`, which holds exactly their length plus [`TAG`]: the ciphertext, then the tag.
    pub(crate) fn seal_into(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        plain: &[u8],
        extra: &[u8],
        out: &mut [u8],
    ) -> Result<(), Unspecified> {
        debug_assert_eq!(out.len(), plain.len() + extra.len() + TAG);
        match self {
            Key::AwsLc(k) => {
                let (ciphertext, extra_and_tag) = out.split_at_mut(plain.len());
                k.seal_out_of_place_scatter(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::from(aad),
                    plain,
                    ciphertext,
                    extra,
                    extra_and_tag,
                )
                .map_err(|_| Unspecified)
            }
            Key::Ring(_) => {
                // ring seals in place only: the plaintext's copy is the price, well below what
                // its faster cipher saves where it is chosen.
                let n = plain.len() + extra.len();
                out[..plain.len()].copy_from_slice(plain);
                out[plain.len()..n].copy_from_slice(extra);
                let (body, tag) = out.split_at_mut(n);
                let t = self.seal_in_place(nonce, aad, body)?;
                tag.copy_from_slice(&t);
                Ok(())
            }
        }
    }

    /// Opens `ciphertext` with `tag` into `out` (as long as `ciphertext`).
    pub(crate) fn open_into(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), Unspecified> {
        debug_assert_eq!(out.len(), ciphertext.len());
        match self {
            Key::AwsLc(k) => k
                .open_separate_gather(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::from(aad),
                    ciphertext,
                    tag,
                    out,
                )
                .map_err(|_| Unspecified),
            Key::Ring(k) => {
                out.copy_from_slice(ciphertext);
                ring_open_in_place(k, nonce, aad, tag, out)
            }
        }
    }
}

impl Key {
    /// Opens `ciphertext` with `tag` onto the end of `out`, which grows by its length (on an
    /// error, by an unspecified part of it: the caller truncates).
    pub(crate) fn open_append(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Unspecified> {
        let start = out.len();
        match self {
            Key::AwsLc(_) => {
                out.resize(start + ciphertext.len(), 0);
                self.open_into(nonce, aad, ciphertext, tag, &mut out[start..])
            }
            Key::Ring(k) => {
                // The copy ring needs anyway replaces the zeroing an out-of-place open needs.
                out.extend_from_slice(ciphertext);
                ring_open_in_place(k, nonce, aad, tag, &mut out[start..])
            }
        }
    }
}

/// ring's open, where the ciphertext was put.
fn ring_open_in_place(
    k: &rg::LessSafeKey,
    nonce: [u8; 12],
    aad: &[u8],
    tag: &[u8],
    in_out: &mut [u8],
) -> Result<(), Unspecified> {
    let tag: [u8; TAG] = tag.try_into().map_err(|_| Unspecified)?;
    k.open_in_place_separate_tag(
        rg::Nonce::assume_unique_for_key(nonce),
        rg::Aad::from(aad),
        rg::Tag::from(tag),
        in_out,
        0..,
    )
    .map(|_| ())
    .map_err(|_| Unspecified)
}

fn copy_tag(t: &[u8]) -> [u8; TAG] {
    let mut tag = [0; TAG];
    tag.copy_from_slice(t);
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKENDS: [Backend; 2] = [Backend::AwsLc, Backend::Ring];
    const CIPHERS: [(Cipher, usize); 3] = [
        (Cipher::Aes128Gcm, 16),
        (Cipher::Aes256Gcm, 32),
        (Cipher::Chacha20Poly1305, 32),
    ];

    fn key(b: Backend, c: Cipher, len: usize) -> Key {
        let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        Key::new(b, c, &bytes).unwrap()
    }

    #[test]
    fn each_backend_opens_what_the_other_sealed() {
        let nonce = [9; 12];
        let aad = [23, 3, 3, 0x40, 0x11];
        let plain: Vec<u8> = (0..16_384u32).map(|i| (i * 7 % 251) as u8).collect();
        for (cipher, len) in CIPHERS {
            for sealer in BACKENDS {
                for opener in BACKENDS {
                    let (s, o) = (key(sealer, cipher, len), key(opener, cipher, len));
                    // Out of place, with TLS 1.3's content type after the plaintext.
                    let mut out = vec![0; plain.len() + 1 + TAG];
                    s.seal_into(nonce, &aad, &plain, &[23], &mut out).unwrap();
                    let (ct, tag) = out.split_at(plain.len() + 1);
                    let mut back = vec![0; ct.len()];
                    o.open_into(nonce, &aad, ct, tag, &mut back).unwrap();
                    assert_eq!(&back[..plain.len()], &plain[..], "{cipher:?} {sealer:?}");
                    assert_eq!(back[plain.len()], 23);
                    // In place gives the same ciphertext and tag.
                    let mut in_place = plain.clone();
                    in_place.push(23);
                    let t = s.seal_in_place(nonce, &aad, &mut in_place).unwrap();
                    assert_eq!(in_place, ct);
                    assert_eq!(&t[..], tag);
                    // A flipped bit anywhere fails, and nothing is taken as opened.
                    let mut forged = ct.to_vec();
                    forged[100] ^= 1;
                    assert!(o.open_into(nonce, &aad, &forged, tag, &mut back).is_err());
                    let mut bad_tag = tag.to_vec();
                    bad_tag[0] ^= 0x80;
                    assert!(o.open_into(nonce, &aad, ct, &bad_tag, &mut back).is_err());
                    let other_aad = [23, 3, 3, 0x40, 0x12];
                    assert!(o.open_into(nonce, &other_aad, ct, tag, &mut back).is_err());
                }
            }
        }
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        for b in BACKENDS {
            assert!(Key::new(b, Cipher::Aes128Gcm, &[0; 32]).is_err());
            assert!(Key::new(b, Cipher::Aes256Gcm, &[0; 16]).is_err());
        }
    }

    #[test]
    fn the_choice_is_made_once_and_can_be_forced_in_a_test() {
        assert_eq!(Backend::fastest(), Backend::fastest());
        assert_eq!(with_backend(Backend::Ring, chosen), Backend::Ring);
        assert_eq!(with_backend(Backend::AwsLc, chosen), Backend::AwsLc);
        assert_eq!(chosen(), Backend::fastest());
    }
}
