//! Tunnel frames of AWS IoT Secure Tunneling: the protobuf `Message` and its 2-byte length
//! prefix (the protocol reference, §3 and §4), sans-IO.
//!
//! - [`Message`] is the protobuf message, hand-coded: [`Message::decode`] borrows the payload
//!   and strings from its input (no allocation but for SERVICE_IDS's list), and the encoders
//!   write into the caller's buffer. It accepts and writes exactly what prost code generated
//!   from `Message.proto` does (the `splice-tunnel-prost` test crate proves it).
//! - [`DataFraming`] frames a DATA payload in place: read the payload into a buffer after
//!   [`DATA_HEADROOM`] bytes of headroom, then write the prefix and message header in front
//!   of it and the fields that follow it in tag order behind it.
//! - [`FrameDecoder`] cuts a byte stream (WebSocket message payloads, which may join or split
//!   frames) into frames, borrowing whole frames from the input and buffering only a frame
//!   split across inputs (at most [`MAX_FRAME`] bytes).
//! - [`Version`] says what each protocol version sends and accepts (§6).
//!
//! It does not know sessions: who may send which type, which services a tunnel has, which
//! streams are open are the relay's and the agents' to check.

pub mod agent;
mod data;
mod error;
mod framing;
pub mod link;
mod message;
pub mod relay;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
mod version;
mod wire;

use std::fmt;

pub use data::{DATA_HEADROOM, DATA_TAILROOM, DataFraming};
pub use error::{Cost, Error};
pub use framing::{Frame, FrameDecoder, Frames};
pub use message::Message;
pub use version::Version;

/// Bytes of the length prefix in front of every message (big-endian; it does not count itself).
pub const LENGTH_PREFIX: usize = 2;

/// The longest message, without its prefix: what the 2-byte prefix can say.
pub const MAX_MESSAGE: usize = u16::MAX as usize;

/// The longest frame, prefix included.
pub const MAX_FRAME: usize = LENGTH_PREFIX + MAX_MESSAGE;

/// The longest DATA payload a peer may send (63 KiB): a protocol rule both peers share, and
/// localproxy's `max_payload_size`. Senders never exceed it; a receiver may accept longer
/// payloads, up to what a frame holds (see [`Message::check`]).
pub const MAX_PAYLOAD: usize = 64512;

/// The longest serviceId we write or accept from a caller: the AWS API's limit on a service
/// name (1 to 128 characters of `[A-Za-z0-9:_-]`).
pub const MAX_SERVICE_ID: usize = 128;

/// The most `availableServiceIds` a message may carry. The protocol sets no number (AWS allows
/// 3 services per tunnel, an operator of our relay a few more); the bound keeps what one
/// message can make the decoder allocate at a few KiB.
pub const MAX_SERVICE_IDS: usize = 256;

/// A message's `type`. Proto3 enums are open, so any `i32` is a `Type`; the constants are the
/// ones `Message.proto` names.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Type(pub i32);

impl Type {
    /// 0: not a valid type on the wire.
    pub const UNKNOWN: Type = Type(0);
    /// 1: payload bytes of one stream (or V3 connection). Both directions.
    pub const DATA: Type = Type(1);
    /// 2: a new stream of one service. Source to destination.
    pub const STREAM_START: Type = Type(2);
    /// 3: the end of a stream and all its connections. Either direction, or the relay.
    pub const STREAM_RESET: Type = Type(3);
    /// 4: the end of every stream. The relay only.
    pub const SESSION_RESET: Type = Type(4);
    /// 5 (V2): the tunnel's services. The relay only, right after the handshake.
    pub const SERVICE_IDS: Type = Type(5);
    /// 6 (V3): another connection in an open stream. Source to destination.
    pub const CONNECTION_START: Type = Type(6);
    /// 7 (V3): the end of one connection of a stream. Either direction.
    pub const CONNECTION_RESET: Type = Type(7);

    /// The name `Message.proto` gives it, if any.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Type::UNKNOWN => "UNKNOWN",
            Type::DATA => "DATA",
            Type::STREAM_START => "STREAM_START",
            Type::STREAM_RESET => "STREAM_RESET",
            Type::SESSION_RESET => "SESSION_RESET",
            Type::SERVICE_IDS => "SERVICE_IDS",
            Type::CONNECTION_START => "CONNECTION_START",
            Type::CONNECTION_RESET => "CONNECTION_RESET",
            _ => return None,
        })
    }

    /// The version that introduced it; `None` for UNKNOWN and values outside the schema.
    pub fn since(self) -> Option<Version> {
        match self.0 {
            1..=4 => Some(Version::V1),
            5 => Some(Version::V2),
            6 | 7 => Some(Version::V3),
            _ => None,
        }
    }

    /// Whether `sender` may send it (reference §4, §5): SERVICE_IDS and SESSION_RESET come
    /// from the relay only, STREAM_START and CONNECTION_START from the source only; DATA and
    /// the resets from either peer, STREAM_RESET from the relay too. A type outside the schema
    /// is for [`Message::check`] to judge (dropped if ignorable), so any sender may send it.
    pub fn may_be_sent_by(self, sender: Sender) -> bool {
        match self {
            Type::SERVICE_IDS | Type::SESSION_RESET => sender == Sender::Relay,
            Type::STREAM_START | Type::CONNECTION_START => sender == Sender::Source,
            Type::DATA | Type::CONNECTION_RESET => sender != Sender::Relay,
            Type::STREAM_RESET => true,
            Type::UNKNOWN => false,
            _ => true,
        }
    }

    /// Whether it names a stream, so needs a non-zero streamId.
    pub fn is_stream_scoped(self) -> bool {
        matches!(
            self,
            Type::DATA
                | Type::STREAM_START
                | Type::STREAM_RESET
                | Type::CONNECTION_START
                | Type::CONNECTION_RESET
        )
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Type({})", self.0),
        }
    }
}

/// Who sent a message: one of a tunnel's two peers (by the mode it connected in), or the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The peer in `source` mode: it accepts local connections and starts streams.
    Source,
    /// The peer in `destination` mode: it connects to the local service.
    Destination,
    /// The relay itself (SERVICE_IDS, SESSION_RESET, the STREAM_RESET of a replaced peer).
    Relay,
}

/// Checks a service name a caller gives (to write as serviceId or in SERVICE_IDS): 1 to
/// [`MAX_SERVICE_ID`] bytes of `[A-Za-z0-9:_-]`, the AWS API's rule.
pub fn check_service_id(id: &str) -> Result<(), Error> {
    let valid = (1..=MAX_SERVICE_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(Error::BadServiceId {
            len: id.len(),
            max: MAX_SERVICE_ID,
        })
    }
}
