//! The protobuf `Message` (reference §4), hand-coded: decoding borrows every bytes and string
//! field from the input, encoding writes into the caller's buffer.

use super::wire::{LEN, Reader, VARINT, Writer, varint_len};
use super::{Error, LENGTH_PREFIX, MAX_MESSAGE, Sender, Type, Version};

/// Field numbers of `Message.proto`.
mod field {
    pub const TYPE: u32 = 1;
    pub const STREAM_ID: u32 = 2;
    pub const IGNORABLE: u32 = 3;
    pub const PAYLOAD: u32 = 4;
    pub const SERVICE_ID: u32 = 5;
    pub const AVAILABLE_SERVICE_IDS: u32 = 6;
    pub const CONNECTION_ID: u32 = 7;
}

/// One tunnel message, its bytes and strings borrowed from the frame it was decoded from (or
/// from the caller, to encode one).
///
/// Fields hold proto3 values: a field absent from the wire reads as its default (0, false,
/// empty), and the encoder leaves defaults out, as localproxy and prost do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message<'a> {
    /// `type` (1). Open, as proto3 enums are: a value this side does not know is kept.
    pub kind: Type,
    /// `streamId` (2).
    pub stream_id: i32,
    /// `ignorable` (3): a receiver that does not know `kind` may drop the message.
    pub ignorable: bool,
    /// `payload` (4): DATA's bytes.
    pub payload: &'a [u8],
    /// `serviceId` (5): empty means absent (a V1 peer).
    pub service_id: &'a str,
    /// `availableServiceIds` (6): SERVICE_IDS's list. Empty (no allocation) for every other type.
    pub available_service_ids: Vec<&'a str>,
    /// `connectionId` (7): 0 means absent (a V1 or V2 peer).
    pub connection_id: u32,
    /// Whether the message had fields outside the schema (skipped, as proto3 says). The
    /// service closes a peer that sends them (§4); the decoder leaves that choice to its caller.
    pub unknown_fields: bool,
}

fn check_wire_type(field: u32, wire_type: u8, expected: u8) -> Result<(), Error> {
    if wire_type == expected {
        Ok(())
    } else {
        Err(Error::WrongWireType {
            field,
            wire_type,
            expected,
        })
    }
}

fn utf8(bytes: &[u8], field: u32) -> Result<&str, Error> {
    std::str::from_utf8(bytes).map_err(|_| Error::NotUtf8 { field })
}

impl<'a> Message<'a> {
    /// Decodes a message (the bytes after a frame's length prefix), as proto3 and prost do:
    /// fields in any order, the last of a repeated scalar wins, unknown fields are skipped
    /// (and noted in [`Message::unknown_fields`]), defaults written explicitly are accepted.
    ///
    /// It checks the wire format only; [`Message::check`] applies the protocol's rules.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut message = Message::default();
        let mut reader = Reader { buf: bytes };
        while !reader.buf.is_empty() {
            let (number, wire_type) = reader.key()?;
            match number {
                field::TYPE => {
                    check_wire_type(number, wire_type, VARINT)?;
                    message.kind = Type(reader.varint()? as i32);
                }
                field::STREAM_ID => {
                    check_wire_type(number, wire_type, VARINT)?;
                    message.stream_id = reader.varint()? as i32;
                }
                field::IGNORABLE => {
                    check_wire_type(number, wire_type, VARINT)?;
                    message.ignorable = reader.varint()? != 0;
                }
                field::PAYLOAD => {
                    check_wire_type(number, wire_type, LEN)?;
                    message.payload = reader.len_delimited("payload")?;
                }
                field::SERVICE_ID => {
                    check_wire_type(number, wire_type, LEN)?;
                    message.service_id = utf8(reader.len_delimited("serviceId")?, number)?;
                }
                field::AVAILABLE_SERVICE_IDS => {
                    check_wire_type(number, wire_type, LEN)?;
                    let id = utf8(reader.len_delimited("availableServiceIds")?, number)?;
                    if message.available_service_ids.len() == super::MAX_SERVICE_IDS {
                        return Err(Error::TooManyServiceIds);
                    }
                    message.available_service_ids.push(id);
                }
                field::CONNECTION_ID => {
                    check_wire_type(number, wire_type, VARINT)?;
                    message.connection_id = reader.varint()? as u32;
                }
                _ => {
                    reader.skip(number, wire_type)?;
                    message.unknown_fields = true;
                }
            }
        }
        Ok(message)
    }

    /// The length of the encoded message, without its length prefix.
    pub fn encoded_len(&self) -> usize {
        let mut len = 0;
        if self.kind != Type::UNKNOWN {
            len += 1 + varint_len(self.kind.0 as i64 as u64);
        }
        if self.stream_id != 0 {
            len += 1 + varint_len(self.stream_id as i64 as u64);
        }
        if self.ignorable {
            len += 2;
        }
        if !self.payload.is_empty() {
            len += len_field(self.payload.len());
        }
        if !self.service_id.is_empty() {
            len += len_field(self.service_id.len());
        }
        for id in &self.available_service_ids {
            len += len_field(id.len());
        }
        if self.connection_id != 0 {
            len += 1 + varint_len(u64::from(self.connection_id));
        }
        len
    }

    /// Encodes the message (no length prefix) into the front of `out`, fields in tag order and
    /// defaults left out (byte for byte what prost and localproxy write). Returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.encoded_len();
        if out.len() < len {
            return Err(Error::BufferTooSmall {
                need: len,
                have: out.len(),
            });
        }
        let mut w = Writer { buf: out, at: 0 };
        if self.kind != Type::UNKNOWN {
            w.key(field::TYPE, VARINT);
            w.varint(self.kind.0 as i64 as u64);
        }
        if self.stream_id != 0 {
            w.key(field::STREAM_ID, VARINT);
            w.varint(self.stream_id as i64 as u64);
        }
        if self.ignorable {
            w.key(field::IGNORABLE, VARINT);
            w.varint(1);
        }
        if !self.payload.is_empty() {
            write_len_field(&mut w, field::PAYLOAD, self.payload);
        }
        if !self.service_id.is_empty() {
            write_len_field(&mut w, field::SERVICE_ID, self.service_id.as_bytes());
        }
        for id in &self.available_service_ids {
            write_len_field(&mut w, field::AVAILABLE_SERVICE_IDS, id.as_bytes());
        }
        if self.connection_id != 0 {
            w.key(field::CONNECTION_ID, VARINT);
            w.varint(u64::from(self.connection_id));
        }
        debug_assert_eq!(w.at, len);
        Ok(len)
    }

    /// Encodes the message as a whole frame, its 2-byte big-endian length prefix first, into
    /// the front of `out`. Returns the frame's length. A message longer than
    /// [`MAX_MESSAGE`] is an error: the prefix cannot say its length.
    pub fn encode_frame(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.encoded_len();
        if len > MAX_MESSAGE {
            return Err(Error::MessageTooLong {
                len,
                max: MAX_MESSAGE,
            });
        }
        if out.len() < LENGTH_PREFIX + len {
            return Err(Error::BufferTooSmall {
                need: LENGTH_PREFIX + len,
                have: out.len(),
            });
        }
        out[..LENGTH_PREFIX].copy_from_slice(&(len as u16).to_be_bytes());
        self.encode(&mut out[LENGTH_PREFIX..])?;
        Ok(LENGTH_PREFIX + len)
    }

    /// Appends the message as a whole frame (length prefix first) to `out`.
    pub fn append_frame(&self, out: &mut Vec<u8>) -> Result<usize, Error> {
        let start = out.len();
        out.resize(start + LENGTH_PREFIX + self.encoded_len(), 0);
        let written = self.encode_frame(&mut out[start..]);
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    /// The oldest protocol version whose format the message is in: V3 if it has a
    /// connectionId, V2 if it has a serviceId (or is SERVICE_IDS), V1 otherwise. A V3 receiver
    /// that gets a V2 message falls back to V2 for that peer (reference §6).
    pub fn format(&self) -> Version {
        if self.connection_id != 0 || self.kind.since() == Some(Version::V3) {
            Version::V3
        } else if !self.service_id.is_empty() || self.kind.since() == Some(Version::V2) {
            Version::V2
        } else {
            Version::V1
        }
    }

    /// The connection the message is for, as a V3 receiver counts: a message without a
    /// connectionId (from a V1 or V2 peer) is for connection 1 (reference §6).
    pub fn connection(&self) -> u32 {
        self.connection_id.max(1)
    }

    /// Checks the protocol's rules that hold for every message (§4, §5): a type other than
    /// UNKNOWN (0); a type the `receiver` version knows, unless ignorable;
    /// a non-zero streamId on stream-scoped types; a connectionId on CONNECTION_START and
    /// CONNECTION_RESET; a DATA payload of at most `max_payload` bytes ([`super::MAX_PAYLOAD`] by the
    /// protocol; a receiver may tolerate up to what a frame can hold, §12.3).
    ///
    /// `sender` may send its type ([`Type::may_be_sent_by`]).
    ///
    /// `Ok(false)` means the message is of a type `receiver` does not know and is ignorable:
    /// drop it. Which services and streams exist, and whether a peer keeps to one format
    /// (§4), are the session's to check.
    pub fn check(
        &self,
        sender: Sender,
        receiver: Version,
        max_payload: usize,
    ) -> Result<bool, Error> {
        if self.kind == Type::UNKNOWN {
            return Err(Error::NoType);
        }
        if !self.kind.may_be_sent_by(sender) {
            return Err(Error::NotFromSender {
                kind: self.kind,
                sender,
            });
        }
        if !receiver.knows(self.kind) {
            return if self.ignorable {
                Ok(false)
            } else {
                Err(Error::UnknownType(self.kind))
            };
        }
        if self.kind.is_stream_scoped() && self.stream_id == 0 {
            return Err(Error::NoStreamId(self.kind));
        }
        if matches!(self.kind, Type::CONNECTION_START | Type::CONNECTION_RESET)
            && self.connection_id == 0
        {
            return Err(Error::NoConnectionId(self.kind));
        }
        if self.kind == Type::DATA && self.payload.len() > max_payload {
            return Err(Error::PayloadTooLong {
                len: self.payload.len(),
                max: max_payload,
            });
        }
        Ok(true)
    }
}

/// Bytes a length-delimited field of `len` bytes takes with its key (fields 4 to 6: 1-byte key).
const fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn write_len_field(w: &mut Writer<'_>, number: u32, bytes: &[u8]) {
    w.key(number, LEN);
    w.varint(bytes.len() as u64);
    w.bytes(bytes);
}
