//! The byte stream every bulk sender writes and every sink checks.
//!
//! It is a fixed pseudo-random block whose length is a prime, so that it never lines up with a
//! buffer or record size: a dropped, repeated or reordered chunk anywhere in a stream shows up as
//! a mismatch at a definite offset. Senders write slices of it (no generation cost per byte) and
//! the sink compares with `memcmp`, so checking costs far less than the proxies being measured.

/// The period of the pattern in bytes (a prime).
pub const PERIOD: usize = 1_048_573;

/// The longest slice [`Pattern::chunk`] hands out.
pub const MAX_CHUNK: usize = 256 * 1024;

/// The stream `byte[i] = block[i % PERIOD]`, held with a tail so any slice is contiguous.
pub struct Pattern {
    bytes: Vec<u8>,
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

impl Pattern {
    /// Builds the pattern (the same bytes in every process).
    pub fn new() -> Self {
        let mut bytes = Vec::with_capacity(PERIOD + MAX_CHUNK);
        // xorshift64*: cheap, deterministic, no repeats within the period.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while bytes.len() < PERIOD {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            let take = v.len().min(PERIOD - bytes.len());
            bytes.extend_from_slice(&v[..take]);
        }
        bytes.extend_from_within(..MAX_CHUNK);
        Self { bytes }
    }

    /// The `len` bytes (at most [`MAX_CHUNK`]) at stream offset `pos`.
    pub fn chunk(&self, pos: u64, len: usize) -> &[u8] {
        assert!(len <= MAX_CHUNK, "chunk of {len} bytes is over {MAX_CHUNK}");
        let start = (pos % PERIOD as u64) as usize;
        &self.bytes[start..start + len]
    }

    /// The offset of the first byte of `data` that differs from the stream at `pos`, if any.
    pub fn mismatch(&self, pos: u64, data: &[u8]) -> Option<u64> {
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(MAX_CHUNK);
            let want = self.chunk(pos + done as u64, n);
            let got = &data[done..done + n];
            if want != got {
                let i = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
                return Some(pos + (done + i) as u64);
            }
            done += n;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_agree_across_the_wrap() {
        let p = Pattern::new();
        let pos = PERIOD as u64 - 10;
        let a = p.chunk(pos, 30).to_vec();
        assert_eq!(&a[10..], p.chunk(0, 20), "the stream wraps to its start");
        assert_eq!(p.mismatch(pos, &a), None);
        assert_eq!(p.chunk(3 * PERIOD as u64 + 5, 7), p.chunk(5, 7));
    }

    #[test]
    fn finds_the_first_bad_byte() {
        let p = Pattern::new();
        let mut data = p.chunk(1000, MAX_CHUNK).to_vec();
        data.extend_from_slice(p.chunk(1000 + MAX_CHUNK as u64, 5000));
        assert_eq!(p.mismatch(1000, &data), None);
        data[MAX_CHUNK + 17] ^= 1;
        assert_eq!(p.mismatch(1000, &data), Some(1000 + MAX_CHUNK as u64 + 17));
        // The same bytes one position late are wrong at once.
        assert!(p.mismatch(1001, &data[..100]).is_some());
    }

    #[test]
    fn is_the_same_in_every_instance() {
        assert_eq!(
            Pattern::new().chunk(12345, 64),
            Pattern::new().chunk(12345, 64)
        );
        let p = Pattern::new();
        assert_ne!(p.chunk(0, 64), p.chunk(64, 64), "not a short repeat");
    }
}
