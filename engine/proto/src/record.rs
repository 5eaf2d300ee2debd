//! Our own TLS record layer, for the data phase of a connection.
//!
//! rustls runs the handshake; then [`RecordLayer::take_over`] takes the session's traffic
//! secrets and sequence numbers, exactly as for a kernel TLS hand-off, and the forwarder seals
//! and opens application data records itself with aws-lc-rs. Sealing reads the plaintext where
//! it was received and writes the record where it will be sent from; opening reads the record
//! where it was received and writes the plaintext where it will be sent from. No byte is copied
//! in user space besides the cipher's own pass, and nothing is allocated per record (rustls 0.23
//! copies each record into a `Vec` of its own on both paths).
//!
//! What rustls would still do after the handshake is done here, with rustls's
//! [`KernelConnection`] for the key schedule:
//! * TLS 1.3 post-handshake messages: NewSessionTicket (a client stores the ticket, so later
//!   connections resume) and KeyUpdate (the receive key moves on; when the peer asks, ours moves
//!   on too, after a KeyUpdate of our own). Any other handshake message is an
//!   `unexpected_message`.
//! * Our own KeyUpdate before a send key reaches its cipher's confidentiality limit (TLS 1.3);
//!   a TLS 1.2 connection is failed there instead, as TLS 1.2 cannot change keys.
//! * Alerts: close_notify ends the peer's direction; TLS 1.3's user_canceled and TLS 1.2's
//!   warnings are ignored; anything else fails the connection.
//! * TLS 1.2 renegotiation requests are refused with a `no_renegotiation` warning.
//! * A record that fails authentication, is too long, or has the wrong type or version fails
//!   the connection with the alert that RFC 8446 and RFC 5246 name.

use std::fmt;

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};

use crate::aead::{Cipher, Key};
use crate::tls_conn::TlsConn;

/// A record's header: content type, version, length.
pub(crate) const HEADER: usize = 5;
/// Most plaintext in one record (2^14).
pub(crate) const MAX_PLAINTEXT: usize = 16384;
/// The AEAD tag of every suite we seal with.
pub(crate) const TAG: usize = crate::aead::TAG;
/// TLS 1.2 AES-GCM's explicit nonce, carried in each record.
pub(crate) const EXPLICIT_NONCE: usize = 8;
/// Most bytes a record adds to its plaintext, over all versions and suites.
pub(crate) const MAX_OVERHEAD: usize = HEADER + EXPLICIT_NONCE + 1 + TAG;
/// Post-handshake handshake bytes held while a message is incomplete, at most.
const MAX_HANDSHAKE_HELD: usize = 64 * 1024;

pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;

/// Alert descriptions we send or recognise.
mod alert {
    pub(super) const CLOSE_NOTIFY: u8 = 0;
    pub(super) const UNEXPECTED_MESSAGE: u8 = 10;
    pub(super) const BAD_RECORD_MAC: u8 = 20;
    pub(super) const RECORD_OVERFLOW: u8 = 22;
    pub(super) const ILLEGAL_PARAMETER: u8 = 47;
    pub(super) const DECODE_ERROR: u8 = 50;
    pub(super) const PROTOCOL_VERSION: u8 = 70;
    pub(super) const INTERNAL_ERROR: u8 = 80;
    pub(super) const USER_CANCELED: u8 = 90;
    pub(super) const NO_RENEGOTIATION: u8 = 100;
}

/// TLS 1.3 handshake message types that may follow the handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// Why the record layer gave up on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordError {
    /// The fatal alert to send the peer, if one should go.
    pub alert: Option<u8>,
    /// What happened, for the log.
    pub reason: String,
}

impl RecordError {
    fn send(alert: u8, reason: impl Into<String>) -> Self {
        Self {
            alert: Some(alert),
            reason: reason.into(),
        }
    }
}

/// What a control record (not application data) asks of the forwarder.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Nothing to do (a ticket was stored, a key changed, a warning was ignored).
    Nothing,
    /// The peer sent close_notify: its direction is complete.
    PeerClosed,
}

/// The rustls object that derives the next traffic secrets (and stores a client's tickets).
enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    /// The next keys of the send (`tx`) or the receive direction, from sequence number 0.
    fn next_keys(&mut self, tx: bool) -> Result<Keys, RecordError> {
        let next = match (self, tx) {
            (Kernel::Client(k), true) => k.update_tx_secret(),
            (Kernel::Client(k), false) => k.update_rx_secret(),
            (Kernel::Server(k), true) => k.update_tx_secret(),
            (Kernel::Server(k), false) => k.update_rx_secret(),
        }
        .map_err(|e| {
            let side = if tx { "send" } else { "receive" };
            RecordError::send(
                alert::INTERNAL_ERROR,
                format!("cannot derive a {side} key: {e}"),
            )
        })?;
        Keys::new(next).map_err(|e| RecordError::send(alert::INTERNAL_ERROR, e))
    }
}

/// One direction's key, IV and record sequence number.
struct Keys {
    key: Key,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, String> {
        let (cipher, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return Err("a cipher our record layer does not implement".to_string()),
        };
        let key = Key::new(crate::aead::chosen(), cipher, key.as_ref())
            .map_err(|_| "the traffic key does not suit its cipher".to_string())?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| "the traffic IV is not 12 bytes".to_string())?;
        Ok(Self { key, iv, seq })
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes
    /// (TLS 1.3, TLS 1.2 ChaCha20-Poly1305; for TLS 1.2 AES-GCM this also makes a unique
    /// explicit nonce).
    fn nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn advance(&mut self) -> Result<(), RecordError> {
        self.seq = self.seq.checked_add(1).ok_or_else(|| {
            RecordError::send(alert::INTERNAL_ERROR, "record sequence number exhausted")
        })?;
        Ok(())
    }
}

/// The record layer of one connection after its handshake.
pub(crate) struct RecordLayer {
    tls13: bool,
    /// TLS 1.2 AES-GCM: each record carries an 8-byte explicit nonce.
    explicit_nonce: bool,
    tx: Keys,
    rx: Keys,
    kernel: Kernel,
    /// TLS 1.3 handshake bytes received after the handshake that are not yet a whole message.
    handshake: Vec<u8>,
    /// Records sealed under one key before the key must change (TLS 1.3) or the connection end
    /// (TLS 1.2): the cipher's confidentiality limit.
    tx_limit: u64,
    /// Records sealed that are not application data (KeyUpdates, alerts) and must go out
    /// before the next record the forwarder seals; the forwarder takes them with
    /// [`RecordLayer::take_outgoing`].
    outgoing: Vec<u8>,
    /// Our close_notify is sealed: nothing more may be sent (a KeyUpdate the peer asks for
    /// after it is not answered; only the receive key changes).
    tx_closed: bool,
}

impl fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordLayer")
            .field("tls13", &self.tls13)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// Takes the record layer over from rustls. The session must be past its handshake with
    /// nothing queued to send and nothing held of a partly received message, and its config
    /// must allow secret extraction.
    pub(crate) fn take_over(conn: TlsConn) -> Result<Self, String> {
        let (secrets, kernel) = match conn {
            TlsConn::Client(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Client(k))),
            TlsConn::Server(s) => s
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Server(k))),
        }
        .map_err(|e| format!("cannot take the record layer from rustls: {e}"))?;
        let (version, suite) = match &kernel {
            Kernel::Client(k) => (k.protocol_version(), k.negotiated_cipher_suite()),
            Kernel::Server(k) => (k.protocol_version(), k.negotiated_cipher_suite()),
        };
        let tls13 = match version {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            other => return Err(format!("{other:?} is not a version we seal records for")),
        };
        let chacha = matches!(
            secrets.tx.1,
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. }
        );
        Ok(Self {
            tls13,
            explicit_nonce: !tls13 && !chacha,
            tx: Keys::new(secrets.tx)?,
            rx: Keys::new(secrets.rx)?,
            kernel,
            handshake: Vec::new(),
            tx_limit: match suite {
                SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
                SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
            },
            outgoing: Vec::new(),
            tx_closed: false,
        })
    }

    /// Lowers the confidentiality limit, so that tests reach the key change.
    #[cfg(test)]
    pub(crate) fn set_tx_limit(&mut self, records: u64) {
        self.tx_limit = records;
    }

    /// The sequence numbers of the next record sealed and the next opened.
    #[cfg(test)]
    pub(crate) fn seqs(&self) -> (u64, u64) {
        (self.tx.seq, self.rx.seq)
    }

    /// Bytes a record of `len` plaintext bytes takes on the wire.
    pub(crate) fn record_len(&self, len: usize) -> usize {
        self.front() + len + TAG + if self.tls13 { 1 } else { 0 }
    }

    /// Bytes of a record in front of its plaintext: the header, and TLS 1.2 AES-GCM's
    /// explicit nonce.
    fn front(&self) -> usize {
        HEADER
            + if self.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            }
    }

    /// Call before sealing application data: a TLS 1.3 send key at its cipher's limit is
    /// changed, and the KeyUpdate waits in [`Self::take_outgoing`], to be sent first.
    pub(crate) fn before_seal(&mut self) -> Result<(), RecordError> {
        if self.tx.seq.saturating_add(1) >= self.tx_limit {
            self.limit_reached()?;
        }
        Ok(())
    }

    /// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes) as one record of type `typ` into the
    /// front of `out`, which must hold [`Self::record_len`] bytes; returns the record's length.
    pub(crate) fn seal(
        &mut self,
        typ: u8,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        debug_assert!(plain.len() <= MAX_PLAINTEXT);
        let len = self.record_len(plain.len());
        let body = len - HEADER;
        let nonce = self.tx.nonce();
        let outer = if self.tls13 { APPLICATION_DATA } else { typ };
        let [l0, l1] = u16::try_from(body)
            .expect("a record body fits in 16 bits")
            .to_be_bytes();
        let (header, rest) = out[..len].split_at_mut(HEADER);
        header.copy_from_slice(&[outer, 3, 3, l0, l1]);
        let sealed = if self.tls13 {
            // AAD: the record header. The inner content type is encrypted after the plaintext.
            self.tx.key.seal_into(nonce, header, plain, &[typ], rest)
        } else {
            let aad = tls12_aad(self.tx.seq, typ, plain.len());
            let rest = if self.explicit_nonce {
                let (explicit, rest) = rest.split_at_mut(EXPLICIT_NONCE);
                explicit.copy_from_slice(&nonce[4..]);
                rest
            } else {
                rest
            };
            self.tx.key.seal_into(nonce, &aad, plain, &[], rest)
        };
        sealed.map_err(|_| RecordError::send(alert::INTERNAL_ERROR, "sealing a record failed"))?;
        self.tx.advance()?;
        Ok(len)
    }

    /// Seals `buf[plain]` (at most [`MAX_PLAINTEXT`] bytes of application data) as one record
    /// where it lies, and returns the record's range in `buf`: its header (and TLS 1.2
    /// AES-GCM's explicit nonce) go in the [`HEADER`] + [`EXPLICIT_NONCE`] bytes before
    /// `plain` (which must be there), TLS 1.3's inner content type and the tag in the
    /// `1 + TAG` bytes after it (which `buf` must hold). No byte of the plaintext is copied.
    pub(crate) fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        plain: std::ops::Range<usize>,
    ) -> Result<std::ops::Range<usize>, RecordError> {
        let n = plain.len();
        debug_assert!(n <= MAX_PLAINTEXT);
        let len = self.record_len(n);
        let start = plain.start - self.front();
        let nonce = self.tx.nonce();
        let [l0, l1] = u16::try_from(len - HEADER)
            .expect("a record body fits in 16 bits")
            .to_be_bytes();
        buf[start..start + HEADER].copy_from_slice(&[APPLICATION_DATA, 3, 3, l0, l1]);
        let (sealed_end, tag) = if self.tls13 {
            // The inner content type follows the plaintext, under the cipher too; the AAD is
            // the record header.
            buf[plain.end] = APPLICATION_DATA;
            let (head, body) = buf.split_at_mut(plain.start);
            let aad: [u8; HEADER] = head[start..].try_into().expect("a record header");
            let tag = self.tx.key.seal_in_place(nonce, &aad, &mut body[..n + 1]);
            (plain.end + 1, tag)
        } else {
            if self.explicit_nonce {
                buf[start + HEADER..plain.start].copy_from_slice(&nonce[4..]);
            }
            let aad = tls12_aad(self.tx.seq, APPLICATION_DATA, n);
            let tag = self
                .tx
                .key
                .seal_in_place(nonce, &aad, &mut buf[plain.clone()]);
            (plain.end, tag)
        };
        let tag =
            tag.map_err(|_| RecordError::send(alert::INTERNAL_ERROR, "sealing a record failed"))?;
        buf[sealed_end..sealed_end + TAG].copy_from_slice(&tag);
        debug_assert_eq!(sealed_end + TAG - start, len);
        self.tx.advance()?;
        Ok(start..start + len)
    }

    /// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes of application data) as one record at
    /// the end of `out`: the plaintext is copied there once, between the record's header and
    /// its tail, and sealed in place, with no pass that zeroes the room first. On an error
    /// `out` is as it was.
    pub(crate) fn seal_append(
        &mut self,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        const ROOM: [u8; HEADER + EXPLICIT_NONCE + 1 + TAG] =
            [0; HEADER + EXPLICIT_NONCE + 1 + TAG];
        let at = out.len();
        let front = self.front();
        let len = self.record_len(plain.len());
        out.reserve(len);
        out.extend_from_slice(&ROOM[..front]);
        out.extend_from_slice(plain);
        out.extend_from_slice(&ROOM[..len - front - plain.len()]);
        let sealed = self.seal_in_place(&mut out[at..], front..front + plain.len());
        if sealed.is_err() {
            out.truncate(at);
        }
        sealed.map(|_| ())
    }

    /// Whether sealed records wait in [`Self::take_outgoing`].
    pub(crate) fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The records sealed on the layer's own account, to send before anything sealed later.
    pub(crate) fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Seals an alert into [`Self::take_outgoing`].
    pub(crate) fn queue_alert(&mut self, fatal: bool, description: u8) {
        if self.tx_closed {
            return;
        }
        let level = if fatal { 2 } else { 1 };
        // Sealing an alert fails only when the sequence number is exhausted; then nothing can
        // be sent and the connection is reset without it.
        let _ = self.seal_into_outgoing(ALERT, &[level, description]);
    }

    /// Seals close_notify into the front of `out` (which must hold `record_len(2)` bytes).
    pub(crate) fn seal_close_notify(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        let n = self.seal(ALERT, &[1, alert::CLOSE_NOTIFY], out)?;
        self.tx_closed = true;
        Ok(n)
    }

    /// The send key has sealed as many records as its cipher allows.
    fn limit_reached(&mut self) -> Result<(), RecordError> {
        if !self.tls13 {
            return Err(RecordError {
                alert: None,
                reason: "the cipher's confidentiality limit was reached, and TLS 1.2 cannot \
                         change keys"
                    .to_string(),
            });
        }
        self.update_tx_key()
    }

    /// Sends a KeyUpdate (update_not_requested) under the current key, then changes it.
    fn update_tx_key(&mut self) -> Result<(), RecordError> {
        self.seal_into_outgoing(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0])?;
        self.tx = self.kernel.next_keys(true)?;
        Ok(())
    }

    fn seal_into_outgoing(&mut self, typ: u8, plain: &[u8]) -> Result<(), RecordError> {
        let at = self.outgoing.len();
        let len = self.record_len(plain.len());
        let mut out = std::mem::take(&mut self.outgoing);
        out.resize(at + len, 0);
        let result = self.seal(typ, plain, &mut out[at..]);
        if result.is_err() {
            out.truncate(at);
        }
        self.outgoing = out;
        result.map(|_| ())
    }

    /// Opens the whole record `record` into the front of `out` (which must be at least as long
    /// as the record), returning its content type and plaintext length. Application data is
    /// for the caller; anything else goes to [`Self::control`].
    pub(crate) fn open(
        &mut self,
        record: &[u8],
        out: &mut [u8],
    ) -> Result<(u8, usize), RecordError> {
        let o = self.check(record)?;
        let (ciphertext, tag) = (&record[o.ciphertext.clone()], &record[o.ciphertext.end..]);
        let n = ciphertext.len();
        self.rx
            .key
            .open_into(o.nonce, o.aad(), ciphertext, tag, &mut out[..n])
            .map_err(|_| bad_record_mac())?;
        self.opened(o.typ, &out[..n])
    }

    /// Opens the whole record `record` onto the end of `out`, returning its content type and
    /// plaintext length; `out` grows by that length. Nothing of the record is written to
    /// `out` first (no zeroing), which is what a growing buffer wants.
    pub(crate) fn open_append(
        &mut self,
        record: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(u8, usize), RecordError> {
        let o = self.check(record)?;
        let (ciphertext, tag) = (&record[o.ciphertext.clone()], &record[o.ciphertext.end..]);
        let start = out.len();
        if self
            .rx
            .key
            .open_append(o.nonce, o.aad(), ciphertext, tag, out)
            .is_err()
        {
            out.truncate(start);
            return Err(bad_record_mac());
        }
        let opened = self.opened(o.typ, &out[start..]);
        match opened {
            Ok((_, len)) => out.truncate(start + len),
            Err(_) => out.truncate(start),
        }
        opened
    }

    /// Checks a whole record's header and length, and works out its nonce and AAD.
    fn check(&self, record: &[u8]) -> Result<Opening, RecordError> {
        let Some(&[typ, v0, v1, l0, l1]) = record.get(..HEADER) else {
            return Err(RecordError::send(alert::DECODE_ERROR, "malformed record"));
        };
        let body = &record[HEADER..];
        if usize::from(u16::from_be_bytes([l0, l1])) != body.len() {
            return Err(RecordError::send(alert::DECODE_ERROR, "malformed record"));
        }
        if [v0, v1] != [3, 3] {
            return Err(RecordError::send(
                alert::PROTOCOL_VERSION,
                format!("record with version {v0}.{v1} after the handshake"),
            ));
        }
        let overhead = self.record_len(0) - HEADER;
        let max_body = if self.tls13 {
            MAX_PLAINTEXT + 256
        } else {
            MAX_PLAINTEXT + 2048
        };
        if body.len() > max_body {
            return Err(RecordError::send(
                alert::RECORD_OVERFLOW,
                format!("record of {} bytes", body.len()),
            ));
        }
        if body.len() < overhead {
            return Err(RecordError::send(
                alert::BAD_RECORD_MAC,
                "record too short to be sealed",
            ));
        }
        let nonce = if self.explicit_nonce {
            let mut nonce = self.rx.iv;
            nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
            nonce
        } else {
            self.rx.nonce()
        };
        let start = HEADER
            + if self.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            };
        let ciphertext = start..record.len() - TAG;
        let n = ciphertext.len();
        let mut aad = [0; 13];
        let aad_len = if self.tls13 {
            if typ != APPLICATION_DATA {
                return Err(RecordError::send(
                    alert::UNEXPECTED_MESSAGE,
                    format!("record of type {typ} after the TLS 1.3 handshake"),
                ));
            }
            // The record header.
            aad[..HEADER].copy_from_slice(&record[..HEADER]);
            HEADER
        } else {
            if !matches!(typ, ALERT | HANDSHAKE | APPLICATION_DATA) {
                return Err(RecordError::send(
                    alert::UNEXPECTED_MESSAGE,
                    format!("record of type {typ} after the TLS 1.2 handshake"),
                ));
            }
            aad = tls12_aad(self.rx.seq, typ, n);
            aad.len()
        };
        Ok(Opening {
            typ,
            nonce,
            aad,
            aad_len,
            ciphertext,
        })
    }

    /// After a record's `opened` bytes passed authentication: the sequence number moves on,
    /// and the content type and plaintext length are found (TLS 1.3 hides them at the end).
    fn opened(&mut self, typ: u8, opened: &[u8]) -> Result<(u8, usize), RecordError> {
        self.rx.advance()?;
        let (typ, len) = if self.tls13 {
            // The inner content type is the last non-zero byte; zeroes after it are padding.
            match opened.iter().rposition(|&b| b != 0) {
                Some(at) => (opened[at], at),
                None => {
                    return Err(RecordError::send(
                        alert::UNEXPECTED_MESSAGE,
                        "record with no content type",
                    ));
                }
            }
        } else {
            (typ, opened.len())
        };
        if len > MAX_PLAINTEXT {
            return Err(RecordError::send(
                alert::RECORD_OVERFLOW,
                format!("record of {len} plaintext bytes"),
            ));
        }
        if len == 0 && typ != APPLICATION_DATA {
            return Err(RecordError::send(
                alert::UNEXPECTED_MESSAGE,
                format!("empty record of type {typ}"),
            ));
        }
        Ok((typ, len))
    }

    /// Handles the plaintext of a record that is not application data.
    pub(crate) fn control(&mut self, typ: u8, content: &[u8]) -> Result<Control, RecordError> {
        match typ {
            ALERT => self.alert(content),
            HANDSHAKE if self.tls13 => self.post_handshake(content),
            HANDSHAKE => {
                // A TLS 1.2 HelloRequest or ClientHello: renegotiation, which we do not do.
                self.queue_alert(false, alert::NO_RENEGOTIATION);
                Ok(Control::Nothing)
            }
            other => Err(RecordError::send(
                alert::UNEXPECTED_MESSAGE,
                format!("record of type {other} after the handshake"),
            )),
        }
    }

    fn alert(&mut self, content: &[u8]) -> Result<Control, RecordError> {
        let &[level, description] = content else {
            return Err(RecordError::send(alert::DECODE_ERROR, "malformed alert"));
        };
        if description == alert::CLOSE_NOTIFY {
            return Ok(Control::PeerClosed);
        }
        // TLS 1.3 treats every alert but these two as fatal whatever its level (RFC 8446 6).
        let warning = if self.tls13 {
            description == alert::USER_CANCELED
        } else {
            level == 1
        };
        if warning {
            return Ok(Control::Nothing);
        }
        Err(RecordError {
            alert: None,
            reason: match alert_name(description) {
                Some(name) => format!("peer sent fatal alert {name}"),
                None => format!("peer sent fatal alert {description}"),
            },
        })
    }

    /// TLS 1.3 handshake messages after the handshake: tickets and key updates.
    fn post_handshake(&mut self, content: &[u8]) -> Result<Control, RecordError> {
        self.handshake.extend_from_slice(content);
        if self.handshake.len() > MAX_HANDSHAKE_HELD {
            return Err(RecordError::send(
                alert::UNEXPECTED_MESSAGE,
                "post-handshake message too large",
            ));
        }
        let mut at = 0;
        let held = std::mem::take(&mut self.handshake);
        let result = loop {
            let Some(&[typ, a, b, c]) = held.get(at..at + 4) else {
                break Ok(Control::Nothing);
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            let Some(body) = held.get(at + 4..at + 4 + len) else {
                break Ok(Control::Nothing);
            };
            at += 4 + len;
            let step = match typ {
                NEW_SESSION_TICKET => self.new_session_ticket(body),
                KEY_UPDATE if at < held.len() => Err(RecordError::send(
                    alert::UNEXPECTED_MESSAGE,
                    "data after a KeyUpdate in the same record",
                )),
                KEY_UPDATE => self.key_update(body),
                other => Err(RecordError::send(
                    alert::UNEXPECTED_MESSAGE,
                    format!("handshake message of type {other} after the handshake"),
                )),
            };
            if let Err(e) = step {
                break Err(e);
            }
        };
        self.handshake = held;
        self.handshake.drain(..at);
        result
    }

    fn new_session_ticket(&mut self, body: &[u8]) -> Result<(), RecordError> {
        match &mut self.kernel {
            Kernel::Client(k) => k.handle_new_session_ticket(body).map_err(|e| {
                RecordError::send(alert::DECODE_ERROR, format!("bad NewSessionTicket: {e}"))
            }),
            Kernel::Server(_) => Err(RecordError::send(
                alert::UNEXPECTED_MESSAGE,
                "a TLS client sent NewSessionTicket",
            )),
        }
    }

    fn key_update(&mut self, body: &[u8]) -> Result<(), RecordError> {
        let requested = match body {
            [0] => false,
            [1] => true,
            [_] => {
                return Err(RecordError::send(
                    alert::ILLEGAL_PARAMETER,
                    "KeyUpdate with an unknown request",
                ));
            }
            _ => {
                return Err(RecordError::send(
                    alert::DECODE_ERROR,
                    "malformed KeyUpdate",
                ));
            }
        };
        self.rx = self.kernel.next_keys(false)?;
        if requested && !self.tx_closed {
            self.update_tx_key()?;
        }
        Ok(())
    }
}

/// TLS 1.2's additional data: sequence number, content type, version, plaintext length.
/// What [`RecordLayer::check`] found out about a record to open.
struct Opening {
    /// The outer content type.
    typ: u8,
    nonce: [u8; 12],
    aad: [u8; 13],
    aad_len: usize,
    /// Where the ciphertext lies in the record; the tag follows it.
    ciphertext: std::ops::Range<usize>,
}

impl Opening {
    fn aad(&self) -> &[u8] {
        &self.aad[..self.aad_len]
    }
}

fn bad_record_mac() -> RecordError {
    RecordError::send(
        alert::BAD_RECORD_MAC,
        "record failed authentication (bad_record_mac)",
    )
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..11].copy_from_slice(&[typ, 3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// The RFC 8446 §6 / RFC 5246 §7.2 name of an alert description.
pub fn alert_name(description: u8) -> Option<&'static str> {
    Some(match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => return None,
    })
}
