//! What to do with a TLS record that is not application data, once the kernel owns the session.
//!
//! After the kTLS hand-off the kernel decrypts every record, but it only passes application data
//! through `recv`/`splice`; anything else (an alert, a post-handshake message) comes back as a
//! *control record* (see [`crate::sys::ktls::recv_record`]). [`control_record`] decides what such
//! a record means for the forwarded connection. It is pure logic: no syscalls, no state, and no
//! panic on any input, since the bytes come from the peer.

use std::ops::Range;

use rustls::ProtocolVersion;
use splice_proto::alert_name;

/// TLS record content types (RFC 8446 §5.1).
const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

/// Handshake message types (RFC 8446 §4, RFC 5246 §7.4).
const HELLO_REQUEST: u8 = 0;
const CLIENT_HELLO: u8 = 1;
const NEW_SESSION_TICKET: u8 = 4;
const CERTIFICATE_REQUEST: u8 = 13;
const KEY_UPDATE: u8 = 24;

/// The alert description `close_notify` (RFC 8446 §6.1).
const CLOSE_NOTIFY: u8 = 0;

/// The failure reported for a TLS 1.3 KeyUpdate.
pub const KEY_UPDATE_FAILURE: &str =
    "peer sent KeyUpdate, which this kernel's kTLS cannot apply; connection reset";

/// What a control record asks of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAction {
    /// TLS 1.3 NewSessionTicket messages: the bodies are at these ranges of the payload. A client
    /// stores them (so that later connections resume); anyone else drops them.
    Tickets(Vec<Range<usize>>),
    /// The peer closed its sending side cleanly (`close_notify`): treat it as end of stream.
    Eof,
    /// The connection cannot go on; the string says why, for logs and
    /// [`crate::error::Error::KtlsRecord`].
    Fail(String),
}

/// Decides what a control record of content type `record_type`, whose decrypted body is
/// `payload`, means on a connection that negotiated `version`.
///
/// * TLS 1.3 handshake records holding only NewSessionTicket messages:
///   [`ControlAction::Tickets`].
/// * A KeyUpdate: [`ControlAction::Fail`] with [`KEY_UPDATE_FAILURE`], since the new keys
///   cannot be given to the kernel from here.
/// * TLS 1.2 handshake messages (HelloRequest or ClientHello, i.e. renegotiation, or anything
///   else): `Fail`.
/// * The alert `close_notify` at any level: [`ControlAction::Eof`]; any other alert: `Fail`
///   naming it.
/// * Application data (23) should never be passed here, and anything else (ChangeCipherSpec,
///   heartbeat, unknown types, malformed bodies) is a `Fail` too.
///
/// A handshake message split across records is reported as truncated: the kernel returns one
/// record at a time and this function keeps no state between calls.
pub fn control_record(record_type: u8, payload: &[u8], version: ProtocolVersion) -> ControlAction {
    match record_type {
        CONTENT_ALERT => alert(payload),
        CONTENT_HANDSHAKE if version == ProtocolVersion::TLSv1_3 => tls13_handshake(payload),
        CONTENT_HANDSHAKE => tls12_handshake(payload),
        CONTENT_APPLICATION_DATA => ControlAction::Fail(
            "application data reached the control-record path (an engine bug)".to_owned(),
        ),
        CONTENT_CHANGE_CIPHER_SPEC => {
            ControlAction::Fail("peer sent change_cipher_spec after the handshake".to_owned())
        }
        other => ControlAction::Fail(format!(
            "peer sent a record of unexpected content type {other}"
        )),
    }
}

fn alert(payload: &[u8]) -> ControlAction {
    let [level, description] = payload else {
        return ControlAction::Fail(format!(
            "peer sent a malformed alert ({} bytes, expected 2)",
            payload.len()
        ));
    };
    if *description == CLOSE_NOTIFY {
        return ControlAction::Eof;
    }
    let level = match level {
        1 => "warning".to_owned(),
        2 => "fatal".to_owned(),
        other => format!("level {other}"),
    };
    ControlAction::Fail(match alert_name(*description) {
        Some(name) => format!("peer sent alert {name} ({description}, {level})"),
        None => format!("peer sent alert {description} ({level})"),
    })
}

/// The types of the handshake messages in a record and where their bodies are; `Err` describes
/// the first malformed one.
fn handshake_messages(payload: &[u8]) -> Result<Vec<(u8, Range<usize>)>, String> {
    if payload.is_empty() {
        return Err("peer sent an empty handshake record".to_owned());
    }
    let mut messages = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let Some((header, after)) = rest.split_first_chunk::<4>() else {
            return Err(format!(
                "peer sent a truncated handshake message header ({} bytes)",
                rest.len()
            ));
        };
        let [kind, l0, l1, l2] = *header;
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let Some((_body, after)) = after.split_at_checked(len) else {
            return Err(format!(
                "peer sent a truncated or fragmented {} message ({} of {len} bytes in this record)",
                handshake_name(kind),
                after.len()
            ));
        };
        let start = payload.len() - rest.len() + 4;
        messages.push((kind, start..start + len));
        rest = after;
    }
    Ok(messages)
}

fn tls13_handshake(payload: &[u8]) -> ControlAction {
    let messages = match handshake_messages(payload) {
        Ok(messages) => messages,
        Err(why) => return ControlAction::Fail(why),
    };
    let mut tickets = Vec::new();
    for (kind, body) in messages {
        match kind {
            NEW_SESSION_TICKET => tickets.push(body),
            KEY_UPDATE => return ControlAction::Fail(KEY_UPDATE_FAILURE.to_owned()),
            CERTIFICATE_REQUEST => {
                return ControlAction::Fail(
                    "peer requested post-handshake client authentication, which kTLS cannot \
                     answer"
                        .to_owned(),
                );
            }
            other => {
                return ControlAction::Fail(format!(
                    "peer sent an unexpected post-handshake {} message",
                    handshake_name(other)
                ));
            }
        }
    }
    ControlAction::Tickets(tickets)
}

fn tls12_handshake(payload: &[u8]) -> ControlAction {
    // Anything after the TLS 1.2 handshake is (the start of) a renegotiation, which needs new
    // keys mid-stream; the kernel cannot follow.
    let kind = match handshake_messages(payload) {
        Ok(messages) => messages.first().map(|(kind, _)| *kind),
        Err(why) => return ControlAction::Fail(why),
    };
    ControlAction::Fail(match kind {
        Some(HELLO_REQUEST) => {
            "peer requested renegotiation (HelloRequest), which kTLS cannot follow; connection \
             reset"
                .to_owned()
        }
        Some(CLIENT_HELLO) => {
            "peer started renegotiation (ClientHello), which kTLS cannot follow; connection reset"
                .to_owned()
        }
        Some(other) => format!(
            "peer sent an unexpected {} message after the TLS 1.2 handshake",
            handshake_name(other)
        ),
        None => "peer sent an empty handshake record".to_owned(),
    })
}

fn handshake_name(kind: u8) -> String {
    let name = match kind {
        HELLO_REQUEST => "hello_request",
        CLIENT_HELLO => "client_hello",
        2 => "server_hello",
        NEW_SESSION_TICKET => "new_session_ticket",
        5 => "end_of_early_data",
        8 => "encrypted_extensions",
        11 => "certificate",
        12 => "server_key_exchange",
        CERTIFICATE_REQUEST => "certificate_request",
        14 => "server_hello_done",
        15 => "certificate_verify",
        16 => "client_key_exchange",
        20 => "finished",
        KEY_UPDATE => "key_update",
        254 => "message_hash",
        other => return format!("handshake type {other}"),
    };
    format!("{name} ({kind})")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V12: ProtocolVersion = ProtocolVersion::TLSv1_2;
    const V13: ProtocolVersion = ProtocolVersion::TLSv1_3;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = body.len();
        let mut out = vec![kind, (len >> 16) as u8, (len >> 8) as u8, len as u8];
        out.extend_from_slice(body);
        out
    }

    fn fail_text(action: ControlAction) -> String {
        match action {
            ControlAction::Fail(why) => why,
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    #[test]
    fn tickets_are_found_in_tls13() {
        let ticket = message(NEW_SESSION_TICKET, &[0, 0, 1, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0]);
        assert_eq!(
            control_record(22, &ticket, V13),
            ControlAction::Tickets(std::iter::once(4..17).collect())
        );
        let two = [ticket.clone(), ticket.clone()].concat();
        assert_eq!(
            control_record(22, &two, V13),
            ControlAction::Tickets(vec![4..17, 21..34])
        );
        // The same bytes after a TLS 1.2 handshake are not expected.
        let why = fail_text(control_record(22, &ticket, V12));
        assert!(why.contains("new_session_ticket (4)"), "{why}");
    }

    #[test]
    fn key_update_fails() {
        let key_update = message(KEY_UPDATE, &[0]);
        assert_eq!(
            control_record(22, &key_update, V13),
            ControlAction::Fail(
                "peer sent KeyUpdate, which this kernel's kTLS cannot apply; connection reset"
                    .to_owned()
            )
        );
        // Behind a ticket in the same record, too.
        let both = [message(NEW_SESSION_TICKET, &[0; 9]), key_update].concat();
        assert_eq!(
            control_record(22, &both, V13),
            ControlAction::Fail(KEY_UPDATE_FAILURE.to_owned())
        );
    }

    #[test]
    fn renegotiation_fails() {
        let why = fail_text(control_record(22, &message(HELLO_REQUEST, &[]), V12));
        assert!(why.contains("renegotiation (HelloRequest)"), "{why}");
        let why = fail_text(control_record(22, &message(CLIENT_HELLO, &[3, 3]), V12));
        assert!(why.contains("renegotiation (ClientHello)"), "{why}");
        let why = fail_text(control_record(22, &message(CERTIFICATE_REQUEST, &[]), V13));
        assert!(
            why.contains("post-handshake client authentication"),
            "{why}"
        );
        let why = fail_text(control_record(22, &message(20, &[0; 32]), V13));
        assert!(why.contains("finished (20)"), "{why}");
    }

    #[test]
    fn alerts() {
        assert_eq!(control_record(21, &[1, 0], V13), ControlAction::Eof);
        assert_eq!(control_record(21, &[2, 0], V12), ControlAction::Eof);
        assert_eq!(control_record(21, &[7, 0], V12), ControlAction::Eof);
        assert_eq!(
            fail_text(control_record(21, &[2, 40], V13)),
            "peer sent alert handshake_failure (40, fatal)"
        );
        assert_eq!(
            fail_text(control_record(21, &[1, 90], V12)),
            "peer sent alert user_canceled (90, warning)"
        );
        assert_eq!(
            fail_text(control_record(21, &[2, 255], V13)),
            "peer sent alert 255 (fatal)"
        );
        assert!(fail_text(control_record(21, &[1], V13)).contains("malformed alert (1 bytes"));
        assert!(fail_text(control_record(21, &[1, 0, 1, 0], V13)).contains("malformed alert"));
    }

    #[test]
    fn other_record_types_fail() {
        assert!(fail_text(control_record(23, b"data", V13)).contains("engine bug"));
        assert!(fail_text(control_record(20, &[1], V12)).contains("change_cipher_spec"));
        assert!(fail_text(control_record(24, &[1, 0, 0], V12)).contains("content type 24"));
        assert!(fail_text(control_record(0, &[], V13)).contains("content type 0"));
    }

    #[test]
    fn malformed_handshake_records_fail() {
        assert!(fail_text(control_record(22, &[], V13)).contains("empty handshake record"));
        assert!(
            fail_text(control_record(22, &[4, 0], V13))
                .contains("truncated handshake message header")
        );
        let ticket = message(NEW_SESSION_TICKET, &[0; 20]);
        let why = fail_text(control_record(22, &ticket[..10], V13));
        assert!(
            why.contains("new_session_ticket (4) message (6 of 20 bytes"),
            "{why}"
        );
        // The largest length a header can claim.
        let why = fail_text(control_record(22, &[4, 0xff, 0xff, 0xff], V13));
        assert!(why.contains("0 of 16777215 bytes"), "{why}");
    }

    #[test]
    fn records_split_into_messages() {
        let record = [
            message(4, &[1, 2, 3]),
            message(24, &[]),
            message(4, &[9; 300]),
        ]
        .concat();
        assert_eq!(
            handshake_messages(&record),
            Ok(vec![(4, 4..7), (24, 11..11), (4, 15..315)])
        );
    }

    /// xorshift64*: deterministic, dependency-free noise.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn byte(&mut self) -> u8 {
            (self.next() >> 56) as u8
        }
    }

    #[test]
    fn never_panics_on_random_or_truncated_input() {
        let versions = [
            V12,
            V13,
            ProtocolVersion::TLSv1_0,
            ProtocolVersion::Unknown(0xffff),
        ];
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50_000 {
            let len = (noise.next() % 48) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| noise.byte()).collect();
            // Bias toward plausible handshake headers so the parser's deeper paths run.
            if len >= 4 && noise.next() % 2 == 0 {
                payload[0] = [4, 24, 0, 1, 13][(noise.next() % 5) as usize];
                payload[1] = 0;
                payload[2] = 0;
                payload[3] = (noise.next() % 48) as u8;
            }
            let record_type = match noise.next() % 4 {
                0 => 21,
                1 => 22,
                _ => noise.byte(),
            };
            let version = versions[(noise.next() % 4) as usize];
            let action = control_record(record_type, &payload, version);
            // Only a TLS 1.3 handshake record can hold tickets, only an alert can end the stream.
            match action {
                ControlAction::Tickets(bodies) => {
                    assert!(record_type == 22 && version == V13);
                    assert!(bodies.iter().all(|b| b.end <= payload.len()));
                }
                ControlAction::Eof => assert_eq!(record_type, 21),
                ControlAction::Fail(why) => assert!(!why.is_empty()),
            }
        }
        // Every prefix of real records.
        let records = [
            [message(4, &[7; 30]), message(4, &[8; 3])].concat(),
            message(24, &[1]),
            vec![2, 40],
        ];
        for record in &records {
            for end in 0..=record.len() {
                for record_type in [21, 22, 23] {
                    for version in versions {
                        let _ = control_record(record_type, &record[..end], version);
                    }
                }
            }
        }
    }
}
