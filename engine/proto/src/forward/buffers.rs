//! The forwarder's four buffers: plain bytes read, records to send, records received, plaintext
//! to send. They come from the pool when bytes arrive and go back to it when they are empty.

use crate::pool;

/// The largest TLS record on the wire: header, 2^14 payload, 256 bytes of expansion.
pub(super) const MAX_RECORD: usize = 5 + 16384 + 256;

#[derive(Debug, Default)]
pub(super) struct Slot {
    /// The buffer when we hold it; `None` while the driver has it.
    pub(super) buf: Option<Vec<u8>>,
    /// Bytes at the front of `buf` already consumed.
    pub(super) off: usize,
}

impl Slot {
    /// A slot with no memory yet: buffers come from the pool when bytes arrive.
    pub(super) fn new() -> Self {
        Self {
            buf: Some(Vec::new()),
            off: 0,
        }
    }
    /// When everything in the buffer has been consumed, returns it to the pool.
    pub(super) fn release_if_empty(&mut self) {
        if let Some(b) = &mut self.buf
            && self.off >= b.len()
        {
            pool::give(std::mem::take(b));
            self.off = 0;
        }
    }
    pub(super) fn idle(&self) -> bool {
        self.buf.is_some()
    }
    pub(super) fn pending(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len() - self.off)
    }
}

/// Bytes waiting to be sent on a leg, `buf[..filled]`: records for the TLS leg, plaintext for
/// the plain leg.
///
/// Ciphers and rustls write into a `&mut [u8]`, which safe code can only offer from initialised
/// memory, so `buf` stays initialised over its whole length (it comes from
/// [`pool::take_initialized`]) and `filled` says how much of it holds bytes to send. Zeroing
/// fresh room before each record instead cost as much as a copy.
#[derive(Debug)]
pub(super) struct TxBuf {
    /// The buffer when we hold it; `None` while the driver sends from it.
    pub(super) buf: Option<Vec<u8>>,
    pub(super) filled: usize,
    /// While the driver has `buf`: how many bytes it was asked to send.
    pub(super) lent: usize,
}

impl TxBuf {
    pub(super) fn new() -> Self {
        Self {
            buf: Some(Vec::new()),
            filled: 0,
            lent: 0,
        }
    }
    /// Room for `more` bytes after `filled`, and the slice to write them to. A buffer with no
    /// memory yet comes from the pool with at least `cap` bytes.
    pub(super) fn room(&mut self, more: usize, cap: usize) -> Option<&mut [u8]> {
        let out = self.buf.as_mut()?;
        if out.is_empty() {
            *out = pool::take_initialized(cap.max(more));
        }
        if out.len() < self.filled + more {
            out.resize(self.filled + more, 0);
        }
        Some(&mut out[self.filled..])
    }
    /// Lends the buffer to the driver to send `filled` bytes.
    pub(super) fn lend(&mut self) -> Option<(Vec<u8>, usize)> {
        let buf = self.buf.take()?;
        self.lent = self.filled;
        Some((buf, self.filled))
    }
    /// The driver sent `sent` bytes of the buffer: the rest moves to the front.
    pub(super) fn returned(&mut self, mut buf: Vec<u8>, sent: usize) {
        let lent = std::mem::take(&mut self.lent).min(buf.len());
        let sent = sent.min(lent);
        buf.copy_within(sent..lent, 0);
        self.filled = lent - sent;
        self.buf = Some(buf);
        self.release_if_empty();
    }
    pub(super) fn idle(&self) -> bool {
        self.buf.is_some()
    }
    pub(super) fn pending(&self) -> usize {
        self.buf.as_ref().map_or(0, |_| self.filled)
    }
    /// When nothing is waiting, returns the buffer to the pool (still initialised).
    pub(super) fn release_if_empty(&mut self) {
        if let Some(b) = &mut self.buf
            && self.filled == 0
            && b.capacity() > 0
        {
            pool::give_initialized(std::mem::take(b));
        }
    }
}

/// The receive buffer of the TLS leg, in three parts: `buf[..off]` rustls has discarded;
/// `buf[off..win]`, the window, has been shown to rustls, which processed it but may still keep
/// part of a handshake message there; `buf[win..]` is not shown yet: whole records held back until
/// the plaintext buffer has room for them, then at most one unfinished record.
#[derive(Debug, Default)]
pub(super) struct Rx {
    /// The buffer when we hold it; `None` while the driver receives into it.
    pub(super) buf: Option<Vec<u8>>,
    pub(super) off: usize,
    pub(super) win: usize,
}
