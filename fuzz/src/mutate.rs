//! Random mutations of corpus inputs, in the manner of libFuzzer's and AFL's havoc stage: no
//! coverage feedback, so the corpus seeds (valid frames and requests) carry the structure and
//! the mutations break it in the ways decoders trip on (lengths, boundaries, repeats).

/// Byte strings the targets' formats give meaning to, spliced into inputs.
const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"GET ",
    b"HTTP/1.1 ",
    b"101",
    b": ",
    b", ",
    b";",
    b"=",
    b"\"",
    b"/tunnel?local-proxy-mode=source",
    b"/tunnel?local-proxy-mode=destination",
    b"Host: ",
    b"Upgrade: websocket",
    b"Connection: upgrade",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Protocol: ",
    b"aws.iot.securetunneling-3.0",
    b"aws.iot.securetunneling-2.0",
    b"aws.iot.securetunneling-1.0",
    b"access-token: ",
    b"client-token: ",
    b"Cookie: awsiot-tunnel-token=",
    b"Origin: ",
    b"channel-id: ",
    b"Sec-WebSocket-Accept: ",
    b"Sec-WebSocket-Key: ",
    // WebSocket lengths (7-bit limits, 16- and 64-bit markers) and opcodes.
    b"\x7d",
    b"\x7e",
    b"\x7f",
    b"\xfe",
    b"\xff",
    b"\x82",
    b"\x02",
    b"\x00",
    b"\x80",
    b"\x88",
    b"\x89",
    b"\x8a",
    b"\x03\xe8",
    b"\xff\xff",
    b"\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\x80\x00\x00\x00\x00\x00\x00\x00",
    // protobuf keys of the tunnel Message, varints at their limits.
    b"\x08",
    b"\x10",
    b"\x18",
    b"\x22",
    b"\x2a",
    b"\x32",
    b"\x38",
    b"\xff\xff\xff\xff\x0f",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
];

/// A xorshift64* generator: small, fast, and the same sequence for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A small count, more often low: 1, 2, 4 ... up to 2^`max_log`.
    pub fn small(&mut self, max_log: usize) -> usize {
        let log = self.below(max_log + 1);
        1 + self.below(1 << log)
    }
}

/// Makes inputs from a pool of corpus inputs.
#[derive(Debug, Clone)]
pub struct Mutator {
    rng: Rng,
    max_len: usize,
}

impl Mutator {
    /// A mutator seeded with `seed`, making inputs of at most `max_len` bytes.
    pub fn new(seed: u64, max_len: usize) -> Mutator {
        Mutator {
            rng: Rng::new(seed),
            max_len,
        }
    }

    /// Writes into `out` a copy of a random input of `pool` (not empty) with a stack of 1 to 16
    /// random mutations applied.
    pub fn next_input(&mut self, pool: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&pool[self.rng.below(pool.len())]);
        for _ in 0..self.rng.small(4) {
            self.mutate(pool, out);
        }
        out.truncate(self.max_len);
    }

    fn mutate(&mut self, pool: &[Vec<u8>], data: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let len = data.len();
        match rng.below(11) {
            // Flip a bit.
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            // Set a byte to a random or an edge value.
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => 0x7f,
                    _ => rng.next_u64() as u8,
                };
            }
            // Add to or subtract from a byte (lengths off by a little).
            2 if len > 0 => {
                let at = rng.below(len);
                let delta = rng.below(35) as u8;
                data[at] = if rng.below(2) == 0 {
                    data[at].wrapping_add(delta)
                } else {
                    data[at].wrapping_sub(delta)
                };
            }
            // Write a random big-endian u16 (a tunnel frame's length prefix, a WebSocket length).
            3 if len > 1 => {
                let at = rng.below(len - 1);
                let value = match rng.below(4) {
                    0 => rng.below(0x100) as u16,
                    1 => 0xffff - rng.below(8) as u16,
                    _ => rng.next_u64() as u16,
                };
                data[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
            // Delete a range.
            4 if len > 0 => {
                let at = rng.below(len);
                let n = rng.small(6).min(len - at);
                data.drain(at..at + n);
            }
            // Duplicate a range in place (repeated fields, headers, frames).
            5 if len > 0 => {
                let at = rng.below(len);
                let n = rng.small(8).min(len - at);
                let copy = data[at..at + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, copy);
            }
            // Insert random bytes.
            6 => {
                let to = rng.below(len + 1);
                let n = rng.small(4);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                data.splice(to..to, bytes);
            }
            // Insert or overwrite with a dictionary word.
            7 | 8 => {
                let word = DICTIONARY[rng.below(DICTIONARY.len())];
                let at = rng.below(len + 1);
                if rng.below(2) == 0 || at + word.len() > len {
                    data.splice(at..at, word.iter().copied());
                } else {
                    data[at..at + word.len()].copy_from_slice(word);
                }
            }
            // Splice in a piece of another input (two frames, or two requests, end to end).
            9 => {
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = rng.small(12).min(other.len() - from);
                    let to = rng.below(len + 1);
                    data.splice(to..to, other[from..from + n].iter().copied());
                }
            }
            // Cut the end off.
            _ if len > 0 => data.truncate(rng.below(len)),
            _ => data.push(rng.next_u64() as u8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inputs() {
        let pool = vec![b"GET /tunnel HTTP/1.1\r\n\r\n".to_vec(), vec![0, 2, 8, 1]];
        let inputs = |seed| {
            let mut m = Mutator::new(seed, 64);
            let mut out = Vec::new();
            (0..200)
                .map(|_| {
                    m.next_input(&pool, &mut out);
                    out.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(inputs(7), inputs(7));
        assert_ne!(inputs(7), inputs(8));
        assert!(inputs(7).iter().all(|i| i.len() <= 64));
        // Not all copies: the mutations change the inputs.
        assert!(inputs(7).iter().filter(|i| !pool.contains(i)).count() > 150);
    }
}
