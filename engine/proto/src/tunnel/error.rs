//! Why bytes are not a tunnel frame, or a frame breaks the protocol's rules.

use super::Type;

/// How much a peer loses for an [`Error`].
///
/// The reference (§3, §4) says what the service does: a message it cannot parse, or one that
/// breaks its validity rules, closes the peer's WebSocket; a receiver that can tell which stream
/// a bad message belongs to may reset that stream alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// The peer's connection: the framing or the session's rules cannot be trusted any more.
    Connection,
    /// The stream the message names (reset it); the connection and other streams go on.
    Stream,
}

/// Why bytes are not a tunnel frame, or why a decoded message breaks the protocol's rules.
///
/// Each variant says in its doc what it costs the peer that sent it ([`Error::cost`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field's bytes run past the end of the message. Costs the connection.
    #[error("tunnel message truncated: {what} runs past the end of the message")]
    Truncated {
        /// What was being read: "varint", "payload" ...
        what: &'static str,
    },
    /// A varint longer than 10 bytes, or whose 10th byte overflows 64 bits. Costs the connection.
    #[error("tunnel message: malformed varint")]
    BadVarint,
    /// A field key above `u32::MAX`, with field number 0, or with wire type 6 or 7. Costs the
    /// connection.
    #[error("tunnel message: invalid field key {key:#x}")]
    BadKey {
        /// The key as read.
        key: u64,
    },
    /// A field of the schema with a wire type its type cannot have (say `streamId` as bytes).
    /// Costs the connection.
    #[error("tunnel message: field {field} has wire type {wire_type}, expected {expected}")]
    WrongWireType {
        /// The field number.
        field: u32,
        /// The wire type found.
        wire_type: u8,
        /// The wire type the schema gives it.
        expected: u8,
    },
    /// A group (wire types 3/4) that does not close with its own tag, or nests deeper than
    /// prost's recursion limit (100). Costs the connection.
    #[error("tunnel message: unbalanced or too deeply nested group")]
    BadGroup,
    /// `serviceId` or one of `availableServiceIds` is not UTF-8. Costs the connection.
    #[error("tunnel message: field {field} is not UTF-8")]
    NotUtf8 {
        /// The field number (5 or 6).
        field: u32,
    },
    /// More than [`super::MAX_SERVICE_IDS`] `availableServiceIds`: a 64 KiB message of empty
    /// ids would otherwise decode into some 32,000 string slices (half a megabyte), before the
    /// protocol's rules could refuse it. Costs the connection.
    #[error("tunnel message: more than {max} availableServiceIds", max = super::MAX_SERVICE_IDS)]
    TooManyServiceIds,
    /// A message longer than the 2-byte length prefix can say (65535 bytes); only the encoder
    /// meets it (the caller's error: nothing is sent).
    #[error("tunnel message of {len} bytes is longer than the frame limit of {max}")]
    MessageTooLong {
        /// The message's length without its prefix.
        len: usize,
        /// [`super::MAX_MESSAGE`].
        max: usize,
    },
    /// A caller's buffer is too small for what is to be written into it (the encoder's; the
    /// caller's error).
    #[error("buffer of {have} bytes cannot hold the {need} bytes to write")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// `type` is 0 (UNKNOWN), or absent. Costs the connection.
    #[error("tunnel message without a type (type 0, UNKNOWN)")]
    NoType,
    /// A type this side does not know, without `ignorable`: the reference lets a receiver drop
    /// only an ignorable one. Costs the connection (localproxy reconnects).
    #[error("tunnel message of unknown type {0:?} and not ignorable")]
    UnknownType(Type),
    /// A type its sender may not send ([`Type::may_be_sent_by`]): SERVICE_IDS or
    /// SESSION_RESET from a peer, STREAM_START or CONNECTION_START from the destination.
    /// Costs the connection (the service closes it).
    #[error("tunnel message {kind:?} may not come from the {sender:?}")]
    NotFromSender {
        /// The type.
        kind: Type,
        /// Who sent it.
        sender: super::Sender,
    },
    /// A stream-scoped type (DATA, STREAM_START, STREAM_RESET, CONNECTION_START,
    /// CONNECTION_RESET) with streamId 0. Costs the connection (the service closes it).
    #[error("tunnel message {0:?} with streamId 0")]
    NoStreamId(Type),
    /// A CONNECTION_START or CONNECTION_RESET without a connectionId. Costs the connection.
    #[error("tunnel message {0:?} without a connectionId")]
    NoConnectionId(Type),
    /// A DATA payload longer than the receiver accepts (64512 bytes by the protocol). Costs
    /// the stream.
    #[error("tunnel DATA payload of {len} bytes, the limit is {max}")]
    PayloadTooLong {
        /// The payload's length.
        len: usize,
        /// The limit applied.
        max: usize,
    },
    /// A service name a caller gives that is empty, longer than [`super::MAX_SERVICE_ID`]
    /// bytes, or has a byte outside `[A-Za-z0-9:_-]` (the caller's error; a peer's serviceId
    /// is checked against the tunnel's services by the session).
    #[error("tunnel serviceId of {len} bytes is not a service name (1 to {max} of [A-Za-z0-9:_-])")]
    BadServiceId {
        /// Its length in bytes.
        len: usize,
        /// [`super::MAX_SERVICE_ID`].
        max: usize,
    },
}

impl Error {
    /// What the error costs the peer whose bytes were decoded or checked.
    ///
    /// The encoder's errors ([`Error::BufferTooSmall`], [`Error::MessageTooLong`], and those
    /// of [`super::DataFraming::new`] and [`super::check_service_id`]) are the caller's, not a
    /// peer's: nothing was sent, and `cost` has nothing to say about them (it says
    /// [`Cost::Connection`]).
    pub fn cost(&self) -> Cost {
        match self {
            Error::PayloadTooLong { .. } => Cost::Stream,
            _ => Cost::Connection,
        }
    }
}
