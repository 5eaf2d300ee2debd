//! Deterministic in-memory tests of [`TlsForward`].
//!
//! A [`Pair`] is a small simulated world: a driver that performs the forwarder's [`Io`]
//! operations on in-memory sockets ([`Pipe`]s, with capacities and per-call limits for partial
//! I/O), a plain application on the plain leg and a rustls peer (or a raw byte stream) on the
//! TLS leg. Everything is single-threaded and seeded, so every run is the same.
//!
//! The harness is in `setup` (what a test chooses, and the rustls configurations), `pipe` (the
//! in-memory sockets), `peer` (the endpoints) and `pair` (the simulated driver), with the small
//! helpers here; the tests are in the other children, by subject (`data`, `records`, `closing`,
//! `handshake`, `record_mode`), which see this module's items through `use super::*`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::crypto::aws_lc_rs::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, Connection, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, SupportedProtocolVersion,
};

use crate::tls_conn::Records;
use crate::{Buffers, Failure, Fault, Handoff, Io, Leg, Opens, TlsConn, TlsForward};

mod pair;
mod peer;
mod pipe;
mod setup;

use pair::Pair;
use peer::{End, Peer, Start};
use pipe::{Pipe, PipeReader, PipeWriter};
use setup::{Configs, Limits, Mode, Setup, Version, pki};

const PLAIN: usize = 0;
const TLS: usize = 1;
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The largest TLS record on the wire.
const MAX_RECORD: usize = 5 + 16384 + 256;

fn ix(leg: Leg) -> usize {
    match leg {
        Leg::Plain => PLAIN,
        Leg::Tls => TLS,
    }
}

fn leg_of(i: usize) -> Leg {
    if i == PLAIN { Leg::Plain } else { Leg::Tls }
}

// ---------------------------------------------------------------------------------------------
// A tiny seeded PRNG (xorshift64), so that no dependency is needed.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 spreads small seeds over the state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn payload(seed: u64, n: usize) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

/// Bytes from `pos` to the end of the record `pos` is in, in a stream of records (to the end of
/// the header while the header is not all there: no one can know more).
fn record_room(stream: &[u8], pos: u64) -> usize {
    let pos = pos as usize;
    let mut start = 0;
    loop {
        if stream.len() < start + 5 {
            return start + 5 - pos;
        }
        let end = start + 5 + u16::from_be_bytes([stream[start + 3], stream[start + 4]]) as usize;
        if pos < end {
            return end - pos;
        }
        start = end;
    }
}

/// (content type, payload length) of each record in `bytes`, which must hold whole records.
fn records_in(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        out.push((rest[0], len));
        rest = &rest[5 + len..];
    }
    out
}

/// Whether `pos` is where a record starts (or the stream ends after a whole record).
fn at_record_boundary(stream: &[u8], pos: u64) -> bool {
    let mut start = 0;
    while start < pos as usize {
        if stream.len() < start + 5 {
            return false;
        }
        start += 5 + u16::from_be_bytes([stream[start + 3], stream[start + 4]]) as usize;
    }
    start == pos as usize
}

fn same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes where {} were sent, first difference at {at}",
            got.len(),
            want.len()
        );
    }
}

/// The plaintext of every record in `records`, decrypted by a session that took over at the
/// hand-off (as the kernel would).
fn decrypt_all<C: Records>(conn: &mut C, mut records: Vec<u8>) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let status = conn.process(&mut records);
        let mut discard = status.discard;
        let more = match status.state.expect("records after the hand-off") {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    let record = record.unwrap();
                    discard += record.discard;
                    got.extend_from_slice(record.payload);
                }
                true
            }
            ConnectionState::WriteTraffic(_) => false,
            other => panic!("after the hand-off: {other:?}"),
        };
        records.drain(..discard);
        if !more {
            assert!(
                records.is_empty(),
                "{} bytes left undecrypted",
                records.len()
            );
            return got;
        }
    }
}

fn both_ways(setup: Setup, app_len: usize, peer_len: usize) -> Pair {
    let seed = setup.seed;
    let mut p = Pair::new(setup);
    p.app().payload = payload(seed * 2, app_len);
    p.peer().payload = payload(seed * 2 + 1, peer_len);
    p.drive();
    p.assert_clean();
    p
}

const MODES: [Mode; 2] = [Mode::Client, Mode::Server];
const VERSIONS: [Version; 2] = [Version::Tls12, Version::Tls13];

mod closing;
mod data;
mod handshake;
mod proxy_protocol;
mod record_mode;
mod records;
