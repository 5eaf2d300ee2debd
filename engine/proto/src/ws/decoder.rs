//! The frame decoder: bytes in as they arrive, messages and control frames out.

use std::ops::Range;

use super::frame::{MAX_CONTROL_PAYLOAD, OpCode, apply_mask, close_code_valid};
use super::{Role, close_code};

/// Size limits of a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest frame payload taken. The tunnel's is 131076 bytes each way.
    pub max_frame: usize,
    /// The longest message, fragments together. A tunnel frame is at most 65537 bytes (a 2-byte
    /// length and 65535 bytes of `Message`); the default, 131076, leaves headroom for a peer that
    /// puts two in one message.
    pub max_message: usize,
}

impl Limits {
    /// The AWS service's frame limit: (65536 + 2) × 2 bytes.
    pub const TUNNEL_FRAME: usize = 131_076;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame: Limits::TUNNEL_FRAME,
            max_message: Limits::TUNNEL_FRAME,
        }
    }
}

/// A received close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code, checked to be one that may be sent; `None` for an empty close frame.
    pub code: Option<u16>,
    /// Where the reason (checked to be UTF-8) lies in the buffer given to
    /// [`Decoder::handle_bytes`].
    pub reason: Range<usize>,
}

/// What one frame gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A whole binary message in one frame: its payload, unmasked in place, is this range of
    /// the buffer given to [`Decoder::handle_bytes`]. The common case; nothing was copied.
    Binary(Range<usize>),
    /// A whole binary message that came in fragments, reassembled (the only copy the decoder
    /// makes).
    Reassembled(Vec<u8>),
    /// A ping: answer with a pong carrying this range of the buffer.
    Ping(Range<usize>),
    /// A pong, with its payload's range.
    Pong(Range<usize>),
    /// The peer's close frame. The decoder takes nothing after it.
    Close(Close),
}

/// What [`Decoder::handle_bytes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// How many bytes at the front of the buffer the frame took (0: no whole frame yet). Drop
    /// them only after using `item`, whose ranges point into them.
    pub consumed: usize,
    /// What the frame gave: `None` for a fragment of an unfinished message, or when no whole
    /// frame is there yet.
    pub item: Option<Item>,
}

/// A peer broke RFC 6455 or the tunnel's use of it. Each names the close code to answer with
/// ([`ProtocolError::close_code`]); the connection cannot go on after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A reserved bit set: no extension was negotiated.
    #[error("reserved bits {0:#x} set without an extension")]
    ReservedBits(u8),
    /// A reserved opcode.
    #[error("reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A text frame: the tunnel carries binary messages only.
    #[error("a text frame: the tunnel is binary")]
    Text,
    /// A client's frame that is not masked (we are the server).
    #[error("a client frame that is not masked")]
    Unmasked,
    /// A server's frame that is masked (we are the client).
    #[error("a server frame that is masked")]
    Masked,
    /// A control frame longer than 125 bytes.
    #[error("a control frame of {0} bytes (at most 125)")]
    ControlTooLong(u64),
    /// A control frame without FIN.
    #[error("a fragmented control frame")]
    ControlFragmented,
    /// A continuation frame with no message begun.
    #[error("a continuation frame with no message begun")]
    UnexpectedContinuation,
    /// A new message begun before the fragmented one ended.
    #[error("a new message before the previous one's last fragment")]
    UnfinishedMessage,
    /// A 64-bit length with its most significant bit set.
    #[error("a 64-bit length with its most significant bit set")]
    LengthMsb,
    /// A frame longer than [`Limits::max_frame`].
    #[error("a frame of {len} bytes (at most {limit})")]
    FrameTooBig {
        /// Its length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A fragmented message longer than [`Limits::max_message`].
    #[error("a message of more than {limit} bytes")]
    MessageTooBig {
        /// The limit.
        limit: usize,
    },
    /// A close frame with a 1-byte payload.
    #[error("a close frame with a 1-byte payload")]
    CloseTooShort,
    /// A close code that may not be sent.
    #[error("close code {0}, which may not be sent")]
    BadCloseCode(u16),
    /// A close reason that is not UTF-8.
    #[error("a close reason that is not UTF-8")]
    CloseReasonNotUtf8,
    /// A frame after the peer's close frame.
    #[error("a frame after the close frame")]
    AfterClose,
}

impl ProtocolError {
    /// The close code to answer with (RFC 6455 §7.4.1): 1003 for a text frame, 1007 for a close
    /// reason that is not UTF-8, 1009 for what is too big, 1002 for the rest.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::Text => close_code::UNSUPPORTED_DATA,
            ProtocolError::CloseReasonNotUtf8 => close_code::INVALID_PAYLOAD,
            ProtocolError::FrameTooBig { .. } | ProtocolError::MessageTooBig { .. } => {
                close_code::MESSAGE_TOO_BIG
            }
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Reads frames for one role (a server expects masked frames, a client unmasked ones).
///
/// It keeps no bytes of its own except a fragmented message being reassembled: the caller keeps
/// its receive buffer and hands all its unread bytes to [`handle_bytes`](Decoder::handle_bytes)
/// after each read, dropping the consumed ones. A frame is taken only once it is whole in that
/// buffer, so the buffer must hold [`Limits::max_frame`] plus [`super::MAX_HEADER_LEN`] bytes.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    limits: Limits,
    /// The fragmented message being reassembled, if one is.
    fragments: Option<Vec<u8>>,
    closed: bool,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    /// The header's length.
    len: usize,
    payload_len: usize,
}

impl Decoder {
    /// A decoder for `role` with `limits`.
    pub fn new(role: Role, limits: Limits) -> Decoder {
        Decoder {
            role,
            limits,
            fragments: None,
            closed: false,
        }
    }

    /// Whether the peer's close frame has been read.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a fragmented message is half-way.
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Reads at most one frame from the front of `buf`, the bytes received and not yet consumed.
    /// Call it after each read, and again while it consumes bytes. The payload of a whole frame
    /// is unmasked in place. An error is found as early as the bytes allow (a text frame or a
    /// missing mask at the frame's second byte, an oversized one at its length), and ends the
    /// connection: answer with a close frame of its [`ProtocolError::close_code`].
    pub fn handle_bytes(&mut self, buf: &mut [u8]) -> Result<Decoded, ProtocolError> {
        const NOTHING: Decoded = Decoded {
            consumed: 0,
            item: None,
        };
        if buf.is_empty() {
            return Ok(NOTHING);
        }
        if self.closed {
            return Err(ProtocolError::AfterClose);
        }
        let Some(header) = self.header(buf)? else {
            return Ok(NOTHING);
        };
        let end = header.len + header.payload_len;
        if buf.len() < end {
            return Ok(NOTHING);
        }
        let payload = header.len..end;
        if let Some(key) = header.mask {
            apply_mask(&mut buf[payload.clone()], key);
        }
        let item = match header.opcode {
            OpCode::Binary if header.fin => Some(Item::Binary(payload)),
            OpCode::Binary => {
                let mut message = Vec::new();
                self.append(&mut message, &buf[payload]);
                self.fragments = Some(message);
                None
            }
            OpCode::Continuation => {
                let mut message = self
                    .fragments
                    .take()
                    .ok_or(ProtocolError::UnexpectedContinuation)?;
                self.append(&mut message, &buf[payload]);
                if header.fin {
                    Some(Item::Reassembled(message))
                } else {
                    self.fragments = Some(message);
                    None
                }
            }
            OpCode::Ping => Some(Item::Ping(payload)),
            OpCode::Pong => Some(Item::Pong(payload)),
            OpCode::Close => {
                let close = parse_close(buf, payload)?;
                self.closed = true;
                self.fragments = None;
                Some(Item::Close(close))
            }
            OpCode::Text => unreachable!("refused in header()"),
        };
        Ok(Decoded {
            consumed: end,
            item,
        })
    }

    /// The bytes the decoder holds: the capacity of the message being reassembled, at most
    /// [`Limits::max_message`]; 0 between messages (an idle connection costs nothing here).
    pub fn memory(&self) -> usize {
        self.fragments.as_ref().map_or(0, Vec::capacity)
    }

    /// Appends a fragment, growing the buffer by doubling but never past `max_message` (the
    /// header check already made sure the fragment fits).
    fn append(&self, message: &mut Vec<u8>, fragment: &[u8]) {
        let need = message.len() + fragment.len();
        if need > message.capacity() {
            let target = need
                .max(message.capacity() * 2)
                .max(4096)
                .min(self.limits.max_message);
            message.reserve_exact(target.max(need) - message.len());
        }
        message.extend_from_slice(fragment);
    }

    /// Parses and checks the header at the front of `buf`, or `None` if it is not all there.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let b0 = buf[0];
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::ReservedBits(b0 & 0x70));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(ProtocolError::UnknownOpcode(b0 & 0x0f))?;
        match opcode {
            OpCode::Text => return Err(ProtocolError::Text),
            OpCode::Continuation if self.fragments.is_none() => {
                return Err(ProtocolError::UnexpectedContinuation);
            }
            OpCode::Binary if self.fragments.is_some() => {
                return Err(ProtocolError::UnfinishedMessage);
            }
            op if op.is_control() && !fin => return Err(ProtocolError::ControlFragmented),
            _ => {}
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        match self.role {
            Role::Server if !masked => return Err(ProtocolError::Unmasked),
            Role::Client if masked => return Err(ProtocolError::Masked),
            _ => {}
        }
        let (len_bytes, short) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        let payload_len = match short {
            Some(n) => n,
            None => {
                let Some(bytes) = buf.get(2..2 + len_bytes) else {
                    return Ok(None);
                };
                let n = bytes.iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
                if n >> 63 != 0 {
                    return Err(ProtocolError::LengthMsb);
                }
                n
            }
        };
        if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ProtocolError::ControlTooLong(payload_len));
        }
        if payload_len > self.limits.max_frame as u64 {
            return Err(ProtocolError::FrameTooBig {
                len: payload_len,
                limit: self.limits.max_frame,
            });
        }
        // Fits in usize: at most max_frame.
        let payload_len = payload_len as usize;
        let so_far = match (&self.fragments, opcode) {
            (Some(message), OpCode::Continuation) => message.len(),
            _ => 0,
        };
        if !opcode.is_control() && so_far + payload_len > self.limits.max_message {
            return Err(ProtocolError::MessageTooBig {
                limit: self.limits.max_message,
            });
        }
        if buf.len() < header_len {
            return Ok(None);
        }
        let mask = masked.then(|| {
            let at = header_len - 4;
            [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
        });
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len: header_len,
            payload_len,
        }))
    }
}

/// Checks a close frame's payload (already unmasked): empty, or a code that may be sent and a
/// UTF-8 reason.
fn parse_close(buf: &[u8], payload: Range<usize>) -> Result<Close, ProtocolError> {
    match payload.len() {
        0 => Ok(Close {
            code: None,
            reason: payload.end..payload.end,
        }),
        1 => Err(ProtocolError::CloseTooShort),
        _ => {
            let code = u16::from_be_bytes([buf[payload.start], buf[payload.start + 1]]);
            if !close_code_valid(code) {
                return Err(ProtocolError::BadCloseCode(code));
            }
            let reason = payload.start + 2..payload.end;
            std::str::from_utf8(&buf[reason.clone()])
                .map_err(|_| ProtocolError::CloseReasonNotUtf8)?;
            Ok(Close {
                code: Some(code),
                reason,
            })
        }
    }
}
