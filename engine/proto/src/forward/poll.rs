//! What the forwarder asks the driver to do next ([`Core::poll_io`]): open a leg, send, receive,
//! shut a write half, offer a hand-off, close; and how a connection fails or is cut.

use super::buffers::MAX_RECORD;
use super::records;
use super::{Core, Failure, Fault, HandoffState, Io, Leg, LegState, Link};
use crate::pool;

impl Core {
    /// [`TlsForward::poll_io`](super::TlsForward::poll_io); `tls_idle` says that rustls has no
    /// record queued.
    pub(super) fn poll_io(&mut self, tls_idle: bool) -> Option<Io> {
        if self.closed {
            return None;
        }
        if let Some(f) = &self.failure {
            // Send a pending alert first if we can (alone: records queued before it are
            // dropped), then close with a reset.
            if f.fault == Fault::Tls
                && self.tls_leg.is_open()
                && self.tls_tx.idle()
                && !self.ctrl.is_empty()
            {
                if let Some(old) = self.tls_tx.buf.take() {
                    pool::give_initialized(old);
                }
                let buf = std::mem::take(&mut self.ctrl);
                self.tls_tx.lent = buf.len();
                return Some(Io::Send {
                    leg: Leg::Tls,
                    len: buf.len(),
                    buf,
                });
            }
            // A TLS failure waits for the records in flight, then sends its alert and waits
            // for that. A transport failure has no alert to send: waiting for a send that a
            // stalled peer may never take would keep the connection open for as long.
            if f.fault == Fault::Tls && self.tls_leg.is_open() && !self.tls_tx.idle() {
                return None;
            }
            self.closed = true;
            return Some(Io::Close {
                failure: self.failure.clone(),
            });
        }
        // Open the legs that are not open yet.
        match self.tls_leg.link {
            Link::Unopened => {
                self.tls_leg.link = Link::Connecting;
                return Some(Io::Connect(Leg::Tls));
            }
            Link::Connecting => return None,
            Link::Open => {}
        }
        if self.handshake_done {
            match self.plain_leg.link {
                Link::Unopened => {
                    self.plain_leg.link = Link::Connecting;
                    return Some(Io::Connect(Leg::Plain));
                }
                Link::Connecting => return self.poll_tls_send(),
                Link::Open => {}
            }
        }
        if let Some(io) = self.poll_tls_send() {
            return Some(io);
        }
        if self.handshake_done
            && self.handoff == HandoffState::Candidate
            && self.tls_tx.idle()
            && self.tls_tx.pending() == 0
            && self.ctrl.is_empty()
            && tls_idle
            && self.plain_leg.is_open()
        {
            self.handoff = HandoffState::Offered;
            return Some(Io::Handoff);
        }
        if self.record_mode() && self.handshake_done {
            return None; // waiting for the driver's hand-off decision
        }
        if let Some(io) = self.poll_tls_recv() {
            return Some(io);
        }
        if !self.handshake_done || !self.plain_leg.is_open() {
            return None;
        }
        // Plaintext out.
        if self.plain_tx.pending() > 0
            && let Some((buf, len)) = self.plain_tx.lend()
        {
            return Some(Io::Send {
                leg: Leg::Plain,
                buf,
                len,
            });
        }
        // Peer's stream cut without close_notify and everything before it delivered: reset.
        if self.tls_leg.read_ended
            && !self.close_notify_received
            && self.plain_tx.idle()
            && self.plain_tx.pending() == 0
        {
            self.cut_after_delivery();
            return self.poll_io(tls_idle);
        }
        // Peer finished and everything is delivered: pass the FIN on.
        if self.close_notify_received
            && !self.plain_leg.write_shut
            && self.plain_tx.idle()
            && self.plain_tx.pending() == 0
        {
            self.plain_leg.write_shut = true;
            return Some(Io::ShutdownWrite(Leg::Plain));
        }
        // Plain bytes in, once the records of the last read are out.
        if !self.plain_leg.read_ended
            && self.plain_rx.idle()
            && self.plain_rx.pending() == 0
            && self.tls_tx.idle()
            && self.tls_tx.pending() == 0
            && self.ctrl.is_empty()
        {
            let mut buf = self.plain_rx.buf.take().unwrap_or_default();
            buf.clear();
            if buf.capacity() < self.sizes.plain {
                pool::give(buf);
                buf = pool::take(self.sizes.plain);
            }
            return Some(Io::Recv {
                leg: Leg::Plain,
                buf,
                len: self.sizes.plain,
            });
        }
        // Our close_notify is out: pass the FIN on.
        if self.close_notify_sent
            && !self.tls_leg.write_shut
            && self.tls_tx.idle()
            && self.tls_tx.pending() == 0
            && self.ctrl.is_empty()
        {
            self.tls_leg.write_shut = true;
            return Some(Io::ShutdownWrite(Leg::Tls));
        }
        if self.tls_leg.write_shut
            && self.plain_leg.write_shut
            && self.tls_tx.idle()
            && self.plain_tx.idle()
            && self.plain_rx.idle()
            && self.rx.buf.is_some()
        {
            self.closed = true;
            return Some(Io::Close { failure: None });
        }
        None
    }

    pub(super) fn poll_tls_send(&mut self) -> Option<Io> {
        if !self.tls_tx.idle() {
            return None;
        }
        self.absorb_ctrl();
        if self.tls_tx.pending() == 0 {
            return None;
        }
        let (buf, len) = self.tls_tx.lend()?;
        Some(Io::Send {
            leg: Leg::Tls,
            buf,
            len,
        })
    }

    /// Records in: only when every whole record received has gone through rustls (so a
    /// direction holds one buffer of records), and never past a record boundary in record mode.
    pub(super) fn poll_tls_recv(&mut self) -> Option<Io> {
        if self.close_notify_received || self.tls_leg.read_ended {
            return None;
        }
        let buf = self.rx.buf.as_mut()?;
        let want = match records::head(&buf[self.rx.win..]) {
            records::Head::Partial(want) => want,
            records::Head::Whole(_) => return None, // held back until plaintext has room
        };
        // The unfinished record (and any handshake message rustls keeps) moves to the front:
        // the one memmove per receive buffer, of less than a record outside the handshake.
        let pending = buf.len() - self.rx.off;
        if self.rx.off > 0 {
            buf.copy_within(self.rx.off.., 0);
            buf.truncate(pending);
            self.compacted += pending as u64;
            self.rx.win -= self.rx.off;
            self.rx.off = 0;
        }
        let len = if self.handoff != HandoffState::Never {
            want
        } else {
            self.sizes
                .tls
                .saturating_sub(pending)
                .max(want.min(self.sizes.tls))
                .max(1)
        };
        if buf.capacity() == 0 {
            *buf = pool::take(self.sizes.tls.max(MAX_RECORD));
        }
        if buf.capacity() - buf.len() < len {
            buf.reserve(len);
        }
        let buf = self.rx.buf.take()?;
        Some(Io::Recv {
            leg: Leg::Tls,
            buf,
            len,
        })
    }

    /// The TLS leg's TCP stream ended; rustls has seen every whole record before it.
    pub(super) fn tls_transport_eof(&mut self) {
        self.tls_leg.read_ended = true;
        if !self.handshake_done {
            self.fail(
                Fault::TlsTransport,
                "connection closed during the TLS handshake".to_string(),
            );
        } else if !self.close_notify_received {
            // Without close_notify the end cannot be told from a truncation, so the plain side
            // is reset, never given a clean FIN. Inside a record it is a truncation for sure;
            // at a record boundary the records received are delivered first, and `poll_io`
            // then resets it as an unclean close (or as a failure, if bytes to the peer are
            // still unsent).
            let partial = self.partial_record();
            if partial > 0 {
                self.fail(
                    Fault::TlsTransport,
                    format!(
                        "peer closed the connection in the middle of a TLS record ({partial} \
                         bytes of it received) without close_notify: the stream was truncated"
                    ),
                );
            }
        }
    }

    /// Bytes received after the last whole record (a record cut short).
    pub(super) fn partial_record(&self) -> usize {
        let Some(buf) = self.rx.buf.as_ref() else {
            return 0;
        };
        let mut at = self.rx.win.max(self.rx.off);
        while at < buf.len() {
            match records::head(&buf[at..]) {
                records::Head::Whole(len) => at += len,
                records::Head::Partial(_) => break,
            }
        }
        buf.len().saturating_sub(at)
    }

    /// The TLS peer's stream ended without close_notify at a record boundary, and everything
    /// it sent is delivered: the connection ends with a reset, counted as an unclean close
    /// when nothing to the peer is lost with it.
    pub(super) fn cut_after_delivery(&mut self) {
        // Records being sent (lent to the driver) count too: the reset may drop them.
        let in_flight = if self.tls_tx.idle() {
            0
        } else {
            self.tls_tx.lent
        };
        let unsent = self.plain_rx.pending() + self.tls_tx.pending() + in_flight + self.ctrl.len();
        let (reason, unclean_close) = if unsent == 0 {
            (
                "peer closed the connection without close_notify".to_string(),
                true,
            )
        } else {
            (
                format!(
                    "peer closed the connection without close_notify while {unsent} bytes to \
                     it were unsent"
                ),
                false,
            )
        };
        self.failure = Some(Failure {
            fault: Fault::TlsTransport,
            reason,
            unclean_close,
            tls_error: None,
        });
    }

    /// Whether the handshake is read record by record: a hand-off is asked for or offered.
    pub(super) fn record_mode(&self) -> bool {
        self.handoff != HandoffState::Never
    }

    pub(super) fn leg_mut(&mut self, leg: Leg) -> &mut LegState {
        match leg {
            Leg::Plain => &mut self.plain_leg,
            Leg::Tls => &mut self.tls_leg,
        }
    }

    pub(super) fn fail(&mut self, fault: Fault, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                fault,
                reason,
                unclean_close: false,
                tls_error: None,
            });
        }
    }

    /// Fails with an error rustls reported.
    pub(super) fn fail_tls(&mut self, e: rustls::Error) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                fault: Fault::Tls,
                reason: e.to_string(),
                unclean_close: false,
                tls_error: Some(e),
            });
        }
    }
}

pub(super) fn fault_of(leg: Leg) -> Fault {
    match leg {
        Leg::Plain => Fault::Plain,
        Leg::Tls => Fault::TlsTransport,
    }
}
