//! Payloads and hashes: seeded random bytes, SHA-256 of what was written and read.

use super::*;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// `n` pseudo-random bytes from `seed`.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes `total` pseudo-random bytes (from `seed`) in 64 KiB chunks; returns their SHA-256.
/// `progress` counts the bytes written so far.
pub fn write_random(
    w: &mut impl Write,
    total: u64,
    seed: u64,
    progress: Option<&AtomicU64>,
) -> io::Result<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
        if let Some(p) = progress {
            p.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    w.flush()?;
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 `write_random` produces for (`total`, `seed`), without writing.
pub fn random_hash(total: u64, seed: u64) -> String {
    write_random(&mut io::sink(), total, seed, None).expect("hash to a sink")
}

/// Reads to EOF; returns the byte count and SHA-256, or the error with what was read before it.
pub fn read_hashed(r: &mut impl Read) -> Result<(u64, String), (u64, String, io::Error)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((n_total, hex(&hasher.finalize()))),
            Ok(n) => {
                hasher.update(&buf[..n]);
                n_total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((n_total, hex(&hasher.finalize()), e)),
        }
    }
}
