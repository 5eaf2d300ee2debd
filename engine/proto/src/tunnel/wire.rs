//! Protobuf wire primitives: varints, field keys, skipping unknown fields, and a writer over a
//! caller's slice. The rules are prost's (0.14), so that the hand-coded message accepts and
//! rejects exactly what prost does.

use super::Error;

/// Wire type of a varint field.
pub(super) const VARINT: u8 = 0;
/// Wire type of a 64-bit field.
const FIXED64: u8 = 1;
/// Wire type of a length-delimited field.
pub(super) const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// prost's recursion limit: groups nest at most this deep.
const MAX_GROUP_DEPTH: usize = 100;

/// A cursor over a message's bytes.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A varint: at most 10 bytes, the 10th at most 1 (prost's rule).
    pub(super) fn varint(&mut self) -> Result<u64, Error> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    return Err(Error::BadVarint);
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        if self.buf.len() < 10 {
            Err(Error::Truncated { what: "varint" })
        } else {
            Err(Error::BadVarint)
        }
    }

    /// A field key: (field number, wire type).
    pub(super) fn key(&mut self) -> Result<(u32, u8), Error> {
        let key = self.varint()?;
        let wire_type = (key & 7) as u8;
        if key > u64::from(u32::MAX) || key >> 3 == 0 || wire_type > FIXED32 {
            return Err(Error::BadKey { key });
        }
        Ok(((key >> 3) as u32, wire_type))
    }

    /// `len` bytes.
    pub(super) fn bytes(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], Error> {
        if len > self.buf.len() as u64 {
            return Err(Error::Truncated { what });
        }
        let (head, rest) = self.buf.split_at(len as usize);
        self.buf = rest;
        Ok(head)
    }

    /// A length-delimited value.
    pub(super) fn len_delimited(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let len = self.varint()?;
        self.bytes(len, what)
    }

    /// Skips the value of an unknown field whose key was just read, groups included.
    pub(super) fn skip(&mut self, field: u32, wire_type: u8) -> Result<(), Error> {
        // Open groups, innermost last; iterative so that no input can exhaust the stack.
        let mut groups = [0u32; MAX_GROUP_DEPTH];
        let mut depth = 0;
        let (mut field, mut wire_type) = (field, wire_type);
        loop {
            match wire_type {
                VARINT => {
                    self.varint()?;
                }
                FIXED64 => {
                    self.bytes(8, "fixed64")?;
                }
                FIXED32 => {
                    self.bytes(4, "fixed32")?;
                }
                LEN => {
                    self.len_delimited("unknown field")?;
                }
                START_GROUP => {
                    groups[depth] = field;
                    depth += 1;
                }
                _ => {
                    // END_GROUP: closes the innermost group if it is that group's.
                    debug_assert_eq!(wire_type, END_GROUP);
                    if depth == 0 || groups[depth - 1] != field {
                        return Err(Error::BadGroup);
                    }
                    depth -= 1;
                }
            }
            if depth == 0 {
                return Ok(());
            }
            (field, wire_type) = self.key()?;
            // prost refuses any field but the group's end this deep.
            if depth == MAX_GROUP_DEPTH && wire_type != END_GROUP {
                return Err(Error::BadGroup);
            }
        }
    }
}

/// Bytes a varint of `value` takes: 1 to 10.
pub(super) const fn varint_len(value: u64) -> usize {
    // 1 byte per started 7 bits, at least one.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// A writer over a caller's slice whose size was checked beforehand.
pub(super) struct Writer<'a> {
    pub(super) buf: &'a mut [u8],
    pub(super) at: usize,
}

impl Writer<'_> {
    pub(super) fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf[self.at] = (value as u8) | 0x80;
            self.at += 1;
            value >>= 7;
        }
        self.buf[self.at] = value as u8;
        self.at += 1;
    }

    pub(super) fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field << 3 | u32::from(wire_type)));
    }

    pub(super) fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}
