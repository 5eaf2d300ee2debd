//! In-memory tests of the WebSocket codec and the upgrade: the RFC 6455 examples, every error,
//! byte-at-a-time feeding, tungstenite as an independent peer (`interop`), and a bounded
//! fuzz-style run (`fuzz`).

use super::*;
use crate::test_rng::Rng;

mod frames;
mod fuzz;
mod interop;
mod upgrade;

/// An item, owned, with whether the decoder copied it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    /// A binary message given as a range of the input (no copy).
    Ranged(Vec<u8>),
    /// A binary message reassembled from fragments.
    Copied(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl Got {
    fn of(item: Item, buf: &[u8]) -> Got {
        match item {
            Item::Binary(r) => Got::Ranged(buf[r].to_vec()),
            Item::Reassembled(m) => Got::Copied(m),
            Item::Ping(r) => Got::Ping(buf[r].to_vec()),
            Item::Pong(r) => Got::Pong(buf[r].to_vec()),
            Item::Close(c) => Got::Close(
                c.code,
                String::from_utf8(buf[c.reason].to_vec()).expect("checked UTF-8"),
            ),
        }
    }

    /// The message's bytes, however it came.
    fn message(&self) -> Option<&[u8]> {
        match self {
            Got::Ranged(m) | Got::Copied(m) => Some(m),
            _ => None,
        }
    }
}

/// A receive buffer and its decoder, as a driver would keep them.
struct Receiver {
    decoder: Decoder,
    buf: Vec<u8>,
}

impl Receiver {
    fn new(role: Role) -> Receiver {
        Receiver::with_limits(role, Limits::default())
    }

    fn with_limits(role: Role, limits: Limits) -> Receiver {
        Receiver {
            decoder: Decoder::new(role, limits),
            buf: Vec::new(),
        }
    }

    /// Appends `bytes` and decodes every whole frame.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Got>, ProtocolError> {
        self.buf.extend_from_slice(bytes);
        let mut got = Vec::new();
        loop {
            let decoded = self.decoder.handle_bytes(&mut self.buf)?;
            if let Some(item) = decoded.item {
                got.push(Got::of(item, &self.buf));
            }
            if decoded.consumed == 0 {
                return Ok(got);
            }
            self.buf.drain(..decoded.consumed);
        }
    }
}

/// Decodes `bytes` fed `chunk` bytes at a time.
fn decode_chunked(role: Role, bytes: &[u8], chunk: usize) -> Result<Vec<Got>, ProtocolError> {
    let mut receiver = Receiver::new(role);
    let mut got = Vec::new();
    for piece in bytes.chunks(chunk) {
        got.extend(receiver.feed(piece)?);
    }
    assert!(
        receiver.buf.is_empty(),
        "bytes left over: {:?}",
        receiver.buf
    );
    Ok(got)
}

/// Decodes `bytes` whole, then byte at a time, and checks both give the same.
fn decode(role: Role, bytes: &[u8]) -> Result<Vec<Got>, ProtocolError> {
    let whole = decode_chunked(role, bytes, bytes.len().max(1));
    let bytewise = decode_chunked(role, bytes, 1);
    assert_eq!(whole, bytewise, "whole and byte-at-a-time differ");
    whole
}

/// One frame, written by our encoder with `payload` copied behind the headroom.
fn frame(role: Role, opcode: OpCode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut buf = vec![0; MAX_HEADER_LEN];
    buf.extend_from_slice(payload);
    let end = buf.len();
    let start = Encoder::new(role)
        .frame_in_place(&mut buf, MAX_HEADER_LEN..end, opcode, fin, mask)
        .expect("encodes");
    buf.drain(..start);
    buf
}

impl Rng {
    fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }

    /// Up to `max` random bytes.
    fn upto(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        self.bytes(n)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
