//! DATA frames built in place: the payload is read into a buffer with headroom, and the frame's
//! other bytes are written around it, so the payload is never copied.
//!
//! In tag order (what localproxy and prost write) a DATA message is
//! `type, streamId, payload, serviceId, connectionId`: the payload sits in the middle, so the
//! frame has a head (prefix, type, streamId, payload key and length) and a tail (serviceId,
//! connectionId).

use super::wire::{LEN, VARINT, Writer, varint_len};
use super::{Error, LENGTH_PREFIX, MAX_PAYLOAD, MAX_SERVICE_ID, Type, check_service_id};

/// The most bytes a DATA frame's head takes: the prefix (2), type (2), streamId (1 + up to 10:
/// a negative int32 is a 10-byte varint), the payload's key (1) and length (up to 3).
pub const DATA_HEADROOM: usize = LENGTH_PREFIX + 2 + 11 + 1 + 3;

/// The most bytes a DATA frame's tail takes: serviceId (1 + 2 + [`MAX_SERVICE_ID`]) and
/// connectionId (1 + 5).
pub const DATA_TAILROOM: usize = 1 + 2 + MAX_SERVICE_ID + 1 + 5;

/// The bytes around one DATA payload: write [`DataFraming::head`] right before the payload and
/// [`DataFraming::tail`] right after it (in place, or as the parts of a vectored write).
#[derive(Debug, Clone)]
pub struct DataFraming {
    head: [u8; DATA_HEADROOM],
    head_len: usize,
    tail: [u8; DATA_TAILROOM],
    tail_len: usize,
    payload_len: usize,
}

impl DataFraming {
    /// The head and tail of a DATA frame for `payload_len` bytes of stream `stream_id`,
    /// `service_id` and `connection_id` ("" and 0 to leave them out: use
    /// [`super::Version::ids`] for the peer's version). The payload must not be empty (proto3
    /// would leave it out) nor longer than [`MAX_PAYLOAD`]; the service id must be empty or a
    /// valid service name; the stream id must not be 0.
    pub fn new(
        stream_id: i32,
        service_id: &str,
        connection_id: u32,
        payload_len: usize,
    ) -> Result<Self, Error> {
        if stream_id == 0 {
            return Err(Error::NoStreamId(Type::DATA));
        }
        if payload_len == 0 || payload_len > MAX_PAYLOAD {
            return Err(Error::PayloadTooLong {
                len: payload_len,
                max: MAX_PAYLOAD,
            });
        }
        if !service_id.is_empty() {
            check_service_id(service_id)?;
        }
        let mut framing = DataFraming {
            head: [0; DATA_HEADROOM],
            head_len: 0,
            tail: [0; DATA_TAILROOM],
            tail_len: 0,
            payload_len,
        };

        let mut tail = Writer {
            buf: &mut framing.tail,
            at: 0,
        };
        if !service_id.is_empty() {
            tail.key(5, LEN);
            tail.varint(service_id.len() as u64);
            tail.bytes(service_id.as_bytes());
        }
        if connection_id != 0 {
            tail.key(7, VARINT);
            tail.varint(u64::from(connection_id));
        }
        framing.tail_len = tail.at;

        let stream = stream_id as i64 as u64;
        let message_len = 2
            + 1
            + varint_len(stream)
            + 1
            + varint_len(payload_len as u64)
            + payload_len
            + framing.tail_len;
        let mut head = Writer {
            buf: &mut framing.head,
            at: 0,
        };
        // At most 2 + 11 + 4 + 64512 + 137 bytes: the prefix always holds it.
        head.bytes(&(message_len as u16).to_be_bytes());
        head.key(1, VARINT);
        head.varint(Type::DATA.0 as u64);
        head.key(2, VARINT);
        head.varint(stream);
        head.key(4, LEN);
        head.varint(payload_len as u64);
        framing.head_len = head.at;
        Ok(framing)
    }

    /// The bytes that go right before the payload: prefix, type, streamId, the payload's key
    /// and length. At most [`DATA_HEADROOM`].
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// The bytes that go right after the payload: serviceId and connectionId, if any. At most
    /// [`DATA_TAILROOM`].
    pub fn tail(&self) -> &[u8] {
        &self.tail[..self.tail_len]
    }

    /// The length of the whole frame: head, payload and tail.
    pub fn frame_len(&self) -> usize {
        self.head_len + self.payload_len + self.tail_len
    }

    /// Frames the payload at `buf[headroom..headroom + payload_len]` (the length given to
    /// [`DataFraming::new`]) in place: writes the head just before it and the tail just after
    /// it, and returns where the frame is in `buf`. `headroom` must be at least
    /// [`DataFraming::head`]'s length ([`DATA_HEADROOM`] always is), and `buf` must have
    /// room for the tail after the payload ([`DATA_TAILROOM`] always is).
    pub fn frame_in_place(
        &self,
        buf: &mut [u8],
        headroom: usize,
    ) -> Result<std::ops::Range<usize>, Error> {
        let payload_len = self.payload_len;
        let start = headroom
            .checked_sub(self.head_len)
            .ok_or(Error::BufferTooSmall {
                need: self.head_len,
                have: headroom,
            })?;
        let end = headroom + payload_len + self.tail_len;
        if buf.len() < end {
            return Err(Error::BufferTooSmall {
                need: end,
                have: buf.len(),
            });
        }
        buf[start..headroom].copy_from_slice(self.head());
        buf[headroom + payload_len..end].copy_from_slice(self.tail());
        Ok(start..end)
    }
}
