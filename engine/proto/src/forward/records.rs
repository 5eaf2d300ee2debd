//! Running the records through the session over the forwarder's buffers: rustls's unbuffered
//! state machine during the handshake (and when asked to keep it), our record layer after.
//!
//! [`Core::run_rustls`] calls `process_tls_records` until rustls needs bytes the forwarder does not
//! have yet, and handles each state it returns:
//! * `ReadTraffic`: the records in the window were decrypted in place in the receive buffer; every
//!   record's plaintext is taken into `plain_tx` at once. None is ever left inside rustls: while
//!   it holds decrypted plaintext, rustls returns nothing else, so a parked record would stop the
//!   other direction too.
//! * `EncodeTlsData` / `TransmitTlsData`: handshake messages and alerts go into `tls_tx` (or
//!   `ctrl` while the driver is sending `tls_tx`), after everything already there, so records
//!   leave in the order rustls made them; the driver sends them from there.
//! * `WriteTraffic`: plaintext from `plain_rx` is encrypted into `tls_tx`, then close_notify
//!   after the plain leg's FIN.
//! * `BlockedHandshake` / `WriteTraffic`: rustls wants more records. The window grows by the
//!   whole records received and not shown yet, as many as `plain_tx` has room for; when there are
//!   none, the run stops and the driver receives more.
//!
//! rustls only ever sees whole records it is allowed to decrypt, so flow control is ours: a record
//! is decrypted only when its plaintext has somewhere to go.

use std::mem;

use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, WriteTraffic,
};

use super::{Core, Fault};
use crate::pool;
use crate::record::{
    APPLICATION_DATA, Control, HEADER, MAX_OVERHEAD, MAX_PLAINTEXT, RecordError, RecordLayer,
};
use crate::tls_conn::Records;

/// rustls rejects a record whose header claims this many payload bytes or more.
const MAX_PAYLOAD: usize = 16384 + 2048;
/// Room made for the expansion of one record when encrypting: more than any of our suites adds
/// (header 5, TLS 1.2 explicit nonce 8, tag 16, TLS 1.3 content type 1). rustls says so when it
/// needs more (a KeyUpdate or alert queued in front), and then it gets more.
const SEAL_ROOM: usize = 64;

/// What one call to rustls leaves `run_rustls` to do.
enum Step {
    /// Call rustls again.
    Again,
    /// rustls has processed everything it was shown and wants more records.
    Input,
    /// close_notify came: the records after it are to be ignored (RFC 8446 6.1).
    PeerClosed,
    /// rustls must not look at the records now; the next completion runs it again.
    Stop,
    /// The connection failed; rustls may have an alert queued.
    Failed,
}

/// The start of a record, as far as it has arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// This many more bytes complete it (5 for an empty buffer).
    Partial(usize),
    /// The record is all there and this long; or (for bytes that cannot start a record) this
    /// many bytes should go to rustls now, which rejects them rather than wait for more.
    Whole(usize),
}

/// Where the record at the start of `buf` ends. Headers are judged as rustls's deframer judges
/// them (content type after one byte, version after three, length after five), so that what
/// rustls would reject at once is handed to it at once.
pub(crate) fn head(buf: &[u8]) -> Head {
    let bad_type = buf.first().is_some_and(|t| !(20..=24).contains(t));
    let bad_version = buf.get(1..3).is_some_and(|v| {
        let v = u16::from_be_bytes([v[0], v[1]]);
        // rustls accepts 0x03XX and the other versions it knows (SSLv2, DTLS 1.0/1.2/1.3).
        v >> 8 != 3 && !matches!(v, 0x0200 | 0xfeff | 0xfefd | 0xfefc)
    });
    if bad_type || bad_version {
        return Head::Whole(buf.len());
    }
    let Some(&[typ, _, _, l0, l1]) = buf.get(..HEADER) else {
        return Head::Partial(HEADER - buf.len());
    };
    let body = usize::from(u16::from_be_bytes([l0, l1]));
    if body >= MAX_PAYLOAD || (body == 0 && typ != 23) {
        return Head::Whole(buf.len());
    }
    match buf.len().checked_sub(HEADER + body) {
        Some(_) => Head::Whole(HEADER + body),
        None => Head::Partial(HEADER + body - buf.len()),
    }
}

impl Core {
    /// Lets rustls process what it can: records received, plaintext to encrypt, close_notify to
    /// send. Call it after every change to the buffers.
    pub(super) fn run_rustls<C: Records>(&mut self, conn: &mut C) {
        if self.closed || self.failure.is_some() {
            return;
        }
        self.absorb_ctrl();
        loop {
            let step = self.step(conn);
            if !conn.state().is_handshaking() {
                self.handshake_done = true;
            }
            if self.failure.is_some() {
                // Whatever failed (rustls, or encrypting in `write`): take the alert, if any.
                self.drain_output(conn);
                break;
            }
            match step {
                Step::Again => {}
                Step::PeerClosed => self.close_notify_received = true,
                Step::Input => {
                    if !self.extend_window() {
                        break;
                    }
                }
                Step::Stop | Step::Failed => break,
            }
        }
        self.release_idle();
    }

    /// One call to `process_tls_records`, and what its state asks for.
    fn step<C: Records>(&mut self, conn: &mut C) -> Step {
        let mut rx = self.rx.buf.take();
        if rx.is_none() && self.rx.off < self.rx.win {
            // The driver is receiving into the buffer in which rustls keeps part of a handshake
            // message split across records. rustls would index into it (and panic on an empty
            // slice), so it is not called until the receive completes. Nothing is lost: its
            // queued records were taken when it made them.
            return Step::Stop;
        }
        let mut nothing = [0u8; 0];
        let incoming: &mut [u8] = match rx.as_mut() {
            Some(b) => &mut b[self.rx.off..self.rx.win],
            // Nothing is in the window (the driver has the buffer; it was compacted first), so
            // there is nothing rustls could want from it.
            None => &mut nothing,
        };
        let status = conn.process(incoming);
        let mut discard = status.discard;
        let step = match status.state {
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let cap = self.sizes.plain + MAX_PLAINTEXT;
                match self.plain_tx.idle() {
                    true => {
                        let mut failed = None;
                        while let Some(record) = records.next_record() {
                            match record {
                                Ok(record) => {
                                    discard += record.discard;
                                    let n = record.payload.len();
                                    if let Some(room) = self.plain_tx.room(n, cap) {
                                        room[..n].copy_from_slice(record.payload);
                                        self.plain_tx.filled += n;
                                    }
                                }
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        match failed {
                            None => Step::Again,
                            Some(e) => {
                                self.fail_tls(e);
                                Step::Failed
                            }
                        }
                    }
                    false => {
                        // `extend_window` shows rustls records only while we hold `plain_tx`.
                        self.fail(
                            Fault::Tls,
                            "internal: plaintext decrypted while the plaintext buffer was away"
                                .to_string(),
                        );
                        Step::Failed
                    }
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut records)) => {
                self.encode(&mut records);
                Step::Again
            }
            // The records are in our buffers, in order; the driver sends them from there.
            Ok(ConnectionState::TransmitTlsData(sent)) => {
                sent.done();
                Step::Again
            }
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                self.write(&mut traffic);
                Step::Input
            }
            Ok(ConnectionState::BlockedHandshake | ConnectionState::Closed) => Step::Input,
            Ok(ConnectionState::PeerClosed) => Step::PeerClosed,
            Ok(ConnectionState::ReadEarlyData(_)) => {
                // Our server configs accept no 0-RTT data, so rustls should never get here.
                self.fail(Fault::Tls, "peer sent early data".to_string());
                Step::Failed
            }
            Ok(other) => {
                self.fail(Fault::Tls, format!("unexpected TLS state {other:?}"));
                Step::Failed
            }
            Err(e) => {
                self.fail_tls(e);
                Step::Failed
            }
        };
        self.rx.off += discard;
        self.rx.buf = rx;
        step
    }

    /// Takes the records rustls has queued (handshake messages, alerts) without showing it any
    /// received bytes: rustls hands queued records out before it looks at what came in.
    fn drain_output<C: Records>(&mut self, conn: &mut C) {
        while conn.state().wants_write() {
            let status = conn.process(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut records)) = status.state else {
                break;
            };
            self.encode(&mut records);
        }
    }

    /// Copies one record rustls made (a handshake message or an alert) out of it: into
    /// `tls_tx` when we hold it and nothing waits in `ctrl`; otherwise, and after a failure
    /// (when only the alert should go), into `ctrl`.
    fn encode<D>(&mut self, records: &mut EncodeTlsData<'_, D>) {
        let direct = self.failure.is_none() && self.ctrl.is_empty();
        let encode = |room: &mut [u8]| records.encode(room);
        match self.tls_tx.buf.as_mut() {
            Some(out) if direct => {
                if out.is_empty() {
                    *out = pool::take_initialized(self.sizes.tls);
                }
                if let Ok(end) = put(out, self.tls_tx.filled, 0, encode, encode_need) {
                    self.tls_tx.filled = end;
                }
            }
            _ => {
                let at = self.ctrl.len();
                let end = put(&mut self.ctrl, at, 0, encode, encode_need).unwrap_or(at);
                self.ctrl.truncate(end);
            }
        }
    }

    /// Encrypts what `plain_rx` holds into `tls_tx`, then close_notify once the plain leg has
    /// ended and everything before it is encrypted. Waits while the driver is sending `tls_tx`.
    fn write<D>(&mut self, traffic: &mut WriteTraffic<'_, D>) {
        let Some(out) = self.tls_tx.buf.as_mut() else {
            return;
        };
        debug_assert!(self.ctrl.is_empty(), "ctrl goes into tls_tx first");
        let mut result = Ok(());
        if let Some(plain) = self.plain_rx.buf.as_ref() {
            while result.is_ok() && self.plain_rx.off < plain.len() {
                if out.is_empty() {
                    *out = pool::take_initialized(self.sizes.tls);
                }
                let end = plain.len().min(self.plain_rx.off + MAX_PLAINTEXT);
                let chunk = &plain[self.plain_rx.off..end];
                let room = chunk.len() + SEAL_ROOM;
                let encrypt = |room: &mut [u8]| traffic.encrypt(chunk, room);
                match put(out, self.tls_tx.filled, room, encrypt, encrypt_need) {
                    Ok(filled) => {
                        self.tls_tx.filled = filled;
                        self.plain_rx.off = end;
                    }
                    Err(e) => result = Err(e),
                }
            }
        }
        let all_encrypted = self
            .plain_rx
            .buf
            .as_ref()
            .is_some_and(|b| self.plain_rx.off >= b.len());
        if result.is_ok() && self.plain_leg.read_ended && all_encrypted && !self.close_notify_sent {
            if out.is_empty() {
                *out = pool::take_initialized(self.sizes.tls);
            }
            let close = |room: &mut [u8]| traffic.queue_close_notify(room);
            match put(out, self.tls_tx.filled, SEAL_ROOM, close, encrypt_need) {
                Ok(filled) => {
                    self.tls_tx.filled = filled;
                    self.close_notify_sent = true;
                }
                Err(e) => result = Err(e),
            }
        }
        if let Err(e) = result {
            self.fail(Fault::Tls, format!("encrypt: {e}"));
        }
    }

    /// Shows rustls the next whole records received, as many as `plain_tx` has room for (their
    /// plaintext is shorter than their length; the last may overshoot the room by up to one
    /// record); during the handshake (and until our record layer takes over) one at a time, so
    /// that rustls sees nothing past the handshake's end.
    /// Returns whether the window grew.
    fn extend_window(&mut self) -> bool {
        let held = self.rx.off < self.rx.win;
        if self.close_notify_received
            || (self.handshake_done && (self.record_mode() || (self.own_records && !held)))
        {
            // Nothing after close_notify counts; and what follows the handshake is for our
            // record layer, or the kernel's (or for after the driver's decision). rustls must
            // not process a KeyUpdate that we take over: it would keep its answer queued.
            // (Should rustls still hold part of a message, it gets the records it needs to
            // finish it, one at a time, so that our record layer can take over after it.)
            return false;
        }
        let (Some(rx), true) = (self.rx.buf.as_ref(), self.plain_tx.idle()) else {
            return false;
        };
        let start = self.rx.win;
        let mut committed = self.plain_tx.filled;
        while committed < self.sizes.plain {
            // `Whole` is never 0 long: an empty buffer is `Partial`.
            let Head::Whole(len) = head(&rx[self.rx.win..]) else {
                break;
            };
            self.rx.win += len;
            committed += len.saturating_sub(HEADER);
            if !self.handshake_done || self.own_records {
                break;
            }
        }
        self.rx.win > start
    }

    /// Moves `ctrl` behind what `tls_tx` holds, when we hold `tls_tx` (not after a failure:
    /// then `ctrl` holds the alert that goes alone).
    pub(super) fn absorb_ctrl(&mut self) {
        if self.ctrl.is_empty() || self.failure.is_some() {
            return;
        }
        if let Some(out) = self.tls_tx.buf.as_mut() {
            let (at, len) = (self.tls_tx.filled, self.ctrl.len());
            if out.len() < at + len {
                out.resize(at + len, 0);
            }
            out[at..at + len].copy_from_slice(&self.ctrl);
            self.tls_tx.filled = at + len;
            self.ctrl = Vec::new();
        }
    }

    /// Returns emptied buffers to the pool, so that an idle connection holds none.
    fn release_idle(&mut self) {
        if let Some(b) = &mut self.rx.buf {
            if self.close_notify_received {
                // Bytes after close_notify are ignored (RFC 8446 6.1).
                self.rx.off = b.len();
            }
            if self.rx.off >= b.len() {
                pool::give(mem::take(b));
                self.rx.off = 0;
                self.rx.win = 0;
            }
        }
        self.plain_rx.release_if_empty();
        self.tls_tx.release_if_empty();
        self.plain_tx.release_if_empty();
    }
}

impl Core {
    /// Our record layer's run: opens the records received into `plain_tx` while it has room,
    /// then seals what `plain_rx` holds into `tls_tx` (and close_notify after the plain leg's
    /// FIN). Call it after every change to the buffers.
    pub(super) fn run_own(&mut self, rl: &mut RecordLayer) {
        if self.closed || self.failure.is_some() {
            return;
        }
        let result = self.open_records(rl).and_then(|()| {
            self.take_layer_output(rl);
            self.seal_records(rl)
        });
        if let Err(e) = result {
            self.fail(Fault::Tls, e.reason);
            if let Some(alert) = e.alert {
                // After a failure `ctrl` goes out alone (see `poll_io`): the records sealed
                // before the alert go in front of it, so that the peer can open it.
                rl.queue_alert(true, alert);
                let mut records = Vec::new();
                if let Some(buf) = self.tls_tx.buf.as_ref() {
                    records.extend_from_slice(&buf[..self.tls_tx.filled]);
                    self.tls_tx.filled = 0;
                }
                records.append(&mut self.ctrl);
                records.extend_from_slice(&rl.take_outgoing());
                self.ctrl = records;
            }
        }
        self.release_idle();
    }

    /// Records the layer sealed on its own account (KeyUpdates, alerts) go behind everything
    /// sealed before them.
    fn take_layer_output(&mut self, rl: &mut RecordLayer) {
        if rl.has_outgoing() {
            let records = rl.take_outgoing();
            self.ctrl.extend_from_slice(&records);
            self.absorb_ctrl();
        }
    }

    /// Opens whole records from the front of the receive buffer straight into `plain_tx`, as
    /// long as it is ours and has room.
    fn open_records(&mut self, rl: &mut RecordLayer) -> Result<(), RecordError> {
        let cap = self.sizes.plain + MAX_PLAINTEXT;
        while !self.close_notify_received
            && self.plain_tx.idle()
            && self.plain_tx.filled < self.sizes.plain
        {
            let Some(rx) = self.rx.buf.as_ref() else {
                break;
            };
            // `Whole` is never 0 long: an empty buffer is `Partial`. A header that cannot start
            // a record is `Whole` at once, and `open` rejects it.
            let Head::Whole(len) = head(&rx[self.rx.off..]) else {
                break;
            };
            let record = &rx[self.rx.off..self.rx.off + len];
            let Some(out) = self.plain_tx.room(len, cap) else {
                break;
            };
            let (typ, n) = rl.open(record, out)?;
            self.rx.off += len;
            self.rx.win = self.rx.off;
            if typ == APPLICATION_DATA {
                self.plain_tx.filled += n;
                continue;
            }
            let content = out[..n].to_vec();
            if rl.control(typ, &content)? == Control::PeerClosed {
                self.close_notify_received = true;
            }
            // A KeyUpdate of ours (the peer asked) goes out before the next record.
            self.take_layer_output(rl);
        }
        Ok(())
    }

    /// Seals what `plain_rx` holds into `tls_tx`, then close_notify once the plain leg has
    /// ended and everything before it is sealed. Waits while the driver is sending `tls_tx`
    /// (records the layer made meanwhile wait in `ctrl`, and go first).
    fn seal_records(&mut self, rl: &mut RecordLayer) -> Result<(), RecordError> {
        if !self.tls_tx.idle() || !self.ctrl.is_empty() {
            return Ok(());
        }
        let cap = self.sizes.tls;
        if let Some(plain) = self.plain_rx.buf.as_ref() {
            while self.plain_rx.off < plain.len() {
                let end = plain.len().min(self.plain_rx.off + MAX_PLAINTEXT);
                let chunk = &plain[self.plain_rx.off..end];
                rl.before_seal()?;
                if rl.has_outgoing() {
                    // The send key changed: its KeyUpdate goes before the next record. (Not
                    // through `take_layer_output`: `plain` borrows `self.plain_rx`.)
                    let key_update = rl.take_outgoing();
                    let room = self.tls_tx.room(key_update.len(), cap).expect("held");
                    room[..key_update.len()].copy_from_slice(&key_update);
                    self.tls_tx.filled += key_update.len();
                }
                let out = self
                    .tls_tx
                    .room(chunk.len() + MAX_OVERHEAD, cap)
                    .expect("held");
                self.tls_tx.filled += rl.seal(APPLICATION_DATA, chunk, out)?;
                self.plain_rx.off = end;
            }
        }
        let all_sealed = self
            .plain_rx
            .buf
            .as_ref()
            .is_some_and(|b| self.plain_rx.off >= b.len());
        if self.plain_leg.read_ended && all_sealed && !self.close_notify_sent {
            let out = self.tls_tx.room(MAX_OVERHEAD + 2, cap).expect("held");
            let n = rl.seal_close_notify(out)?;
            self.tls_tx.filled += n;
            self.close_notify_sent = true;
        }
        Ok(())
    }
}

/// Runs `write` (rustls writing records into the slice it is given, and saying how many bytes)
/// on `out[at..]`, with at least `room` bytes there, or as many as rustls says it needs when
/// that is not enough; returns where the records end.
///
/// `out` is initialised over its whole length, which only grows: bytes are zeroed only where
/// `out` never reached before (see `TxRecords`), so a record is not written twice.
fn put<E>(
    out: &mut Vec<u8>,
    at: usize,
    room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    need: fn(&E) -> Option<usize>,
) -> Result<usize, E> {
    if out.len() < at + room {
        out.resize(at + room, 0);
    }
    let mut result = write(&mut out[at..]);
    if let Some(required) = result.as_ref().err().and_then(need) {
        if out.len() < at + required {
            out.resize(at + required, 0);
        }
        result = write(&mut out[at..]);
    }
    result.map(|n| at + n)
}

/// The room `EncodeTlsData::encode` asked for.
fn encode_need(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// The room `WriteTraffic::encrypt` or `queue_close_notify` asked for.
fn encrypt_need(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_judged_like_rustls() {
        assert_eq!(head(&[]), Head::Partial(5));
        assert_eq!(head(&[23, 3]), Head::Partial(3));
        assert_eq!(head(&[23, 3, 3, 0, 10, 1, 2]), Head::Partial(8));
        assert_eq!(head(&[23, 3, 3, 0, 2, 1, 2, 9, 9]), Head::Whole(7));
        // An empty application data record is valid; an empty handshake record is not.
        assert_eq!(head(&[23, 3, 3, 0, 0]), Head::Whole(5));
        assert_eq!(head(&[22, 3, 1, 0, 0, 7]), Head::Whole(6));
        // Rejected as soon as the bytes that say so are there.
        assert_eq!(head(b"H"), Head::Whole(1));
        assert_eq!(head(b"SSH-2.0"), Head::Whole(7));
        assert_eq!(head(&[22, 7, 1]), Head::Whole(3));
        assert_eq!(head(&[23, 3, 3, 0x48, 0x00, 1]), Head::Whole(6)); // 18432 bytes
        assert_eq!(head(&[23, 3, 3, 0x47, 0xff]), Head::Partial(18431));
        // Versions rustls knows are waited for, like 0x03XX.
        assert_eq!(head(&[22, 2, 0, 0, 4]), Head::Partial(4));
        assert_eq!(head(&[22, 0xfe, 0xfd]), Head::Partial(2));
        assert_eq!(head(&[22, 0xfe, 0xfe]), Head::Whole(3));
    }
}
