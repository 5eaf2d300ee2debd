//! The frame header (RFC 6455 §5.2), masking, and the encoder that writes a header into the
//! headroom in front of a payload.

use std::ops::Range;

use super::Role;

/// The longest frame header: 2 bytes, a 64-bit length and a masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// The longest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// The next fragment of a message.
    Continuation,
    /// A UTF-8 message (never sent on the tunnel, refused when received).
    Text,
    /// A binary message, or its first fragment.
    Binary,
    /// The close handshake.
    Close,
    /// A ping, answered by a pong with the same payload.
    Ping,
    /// A pong.
    Pong,
}

impl OpCode {
    /// The 4-bit value on the wire.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xa,
        }
    }

    /// The opcode of a 4-bit value, or `None` for a reserved one.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return None,
        })
    }

    /// Whether it is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The length of the header of a frame carrying `payload_len` bytes.
pub fn header_len(payload_len: usize, masked: bool) -> usize {
    let len = match payload_len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    if masked { len + 4 } else { len }
}

/// XORs `data` with the masking key, in place (masking and unmasking are the same operation).
/// `data` must start at the first byte of a frame's payload.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key starts over at its first byte.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// The payload of a close frame: the code, big-endian, then the reason, cut at a character
/// boundary to fit the 125 bytes of a control frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Whether a close code may be sent in a close frame (RFC 6455 §7.4: 1000-1003, 1007-1014 and
/// the registered and private ranges 3000-4999; 1004-1006 and 1015 are never on the wire).
pub(super) fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why a frame could not be written. Each is a mistake of the caller, not of a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload does not leave room for the header in front of it.
    #[error("{need} bytes of headroom needed in front of the payload, {have} there")]
    NoHeadroom {
        /// The header's length.
        need: usize,
        /// The bytes in front of the payload.
        have: usize,
    },
    /// A client frame without a masking key, or a server frame with one.
    #[error("a {role:?} frame must {} masked", if matches!(role, Role::Client) { "be" } else { "not be" })]
    Masking {
        /// Our role.
        role: Role,
    },
    /// A control frame longer than 125 bytes or not final.
    #[error("a control frame must be final and carry at most 125 bytes (got {len}, fin {fin})")]
    Control {
        /// Its payload length.
        len: usize,
        /// Its FIN bit.
        fin: bool,
    },
    /// A close code that may not be sent.
    #[error("close code {0} may not be sent")]
    CloseCode(u16),
    /// A payload range outside the buffer.
    #[error("the payload range {0:?} is not inside the buffer")]
    Range(Range<usize>),
}

/// Writes frames for one role: a client masks, a server does not.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    role: Role,
}

impl Encoder {
    /// An encoder for `role`.
    pub fn new(role: Role) -> Encoder {
        Encoder { role }
    }

    /// Makes `buf[payload]` a frame: writes the header into the bytes just before
    /// `payload.start` and, for a client, masks the payload in place with `mask` (a server
    /// passes `None`). Returns where the frame starts; the frame is `buf[start..payload.end]`.
    ///
    /// Call it with the payload read into a buffer that left [`MAX_HEADER_LEN`] bytes (or
    /// [`header_len`]) free in front of it: nothing is copied.
    pub fn frame_in_place(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        opcode: OpCode,
        fin: bool,
        mask: Option<[u8; 4]>,
    ) -> Result<usize, EncodeError> {
        if payload.start > payload.end || payload.end > buf.len() {
            return Err(EncodeError::Range(payload));
        }
        if mask.is_some() != (self.role == Role::Client) {
            return Err(EncodeError::Masking { role: self.role });
        }
        let len = payload.len();
        if opcode.is_control() && (len > MAX_CONTROL_PAYLOAD || !fin) {
            return Err(EncodeError::Control { len, fin });
        }
        let need = header_len(len, mask.is_some());
        if payload.start < need {
            return Err(EncodeError::NoHeadroom {
                need,
                have: payload.start,
            });
        }
        let start = payload.start - need;
        let header = &mut buf[start..payload.start];
        header[0] = if fin { 0x80 } else { 0 } | opcode.bits();
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let key_at = match len {
            0..=125 => {
                header[1] = mask_bit | len as u8;
                2
            }
            126..=0xffff => {
                header[1] = mask_bit | 126;
                header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                header[1] = mask_bit | 127;
                header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        if let Some(key) = mask {
            header[key_at..key_at + 4].copy_from_slice(&key);
            apply_mask(&mut buf[payload], key);
        }
        Ok(start)
    }

    /// Appends a control frame (ping, pong or close) carrying `payload` to `out`.
    pub fn control(
        &self,
        opcode: OpCode,
        payload: &[u8],
        mask: Option<[u8; 4]>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if !opcode.is_control() || payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(EncodeError::Control {
                len: payload.len(),
                fin: true,
            });
        }
        let at = out.len();
        out.resize(at + MAX_HEADER_LEN, 0);
        out.extend_from_slice(payload);
        let end = out.len();
        let start = self.frame_in_place(out, at + MAX_HEADER_LEN..end, opcode, true, mask)?;
        // Close the gap the unused part of the headroom left (small: a control frame).
        out.drain(at..start);
        Ok(())
    }

    /// Appends a close frame with `code` and `reason` (cut to fit) to `out`.
    pub fn close(
        &self,
        code: u16,
        reason: &str,
        mask: Option<[u8; 4]>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if !close_code_valid(code) {
            return Err(EncodeError::CloseCode(code));
        }
        self.control(OpCode::Close, &close_payload(code, reason), mask, out)
    }

    /// Appends the close frame that answers `error`'s close code with its text.
    pub fn close_for(
        &self,
        error: &super::ProtocolError,
        mask: Option<[u8; 4]>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.close(error.close_code(), &error.to_string(), mask, out)
    }
}
