//! The agents in memory, with the frame codec: each version's message sequences as the
//! reference's §7 shows them (the frames.md vectors, byte for byte), the fall-back, resets,
//! bounded memory behind a slow local reader, a source and a destination through a relay that
//! passes frames, and the reconnect schedule.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::tunnel::{Message, Type, vectors};

/// The frames.md vector described as `what` (its version tag and remark left out).
fn v(what: &str) -> Vec<u8> {
    let matches = |described: &str| {
        let described = ["V1 ", "V2 ", "V3 "]
            .iter()
            .find_map(|tag| described.strip_prefix(tag))
            .unwrap_or(described);
        described == what || described.starts_with(&format!("{what} ("))
    };
    let found: Vec<Vec<u8>> = (vectors::all().into_iter())
        .filter(|(_, described)| matches(described))
        .map(|(bytes, _)| bytes)
        .collect();
    assert_eq!(found.len(), 1, "vectors for {what:?}");
    found.into_iter().next().unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn frame(message: Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    message.append_frame(&mut out).unwrap();
    out
}

fn service_ids(ids: &[&str]) -> Vec<u8> {
    frame(Message {
        kind: Type::SERVICE_IDS,
        available_service_ids: ids.to_vec(),
        ..Message::default()
    })
}

trait Agent {
    fn poll(&mut self) -> Option<Action>;
    fn bytes(&mut self, b: &[u8]) -> Result<(), Error>;
    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.poll()).collect()
    }
}

impl Agent for Source {
    fn poll(&mut self) -> Option<Action> {
        self.poll_action()
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        self.handle_tunnel_bytes(b)
    }
}

impl Agent for Destination {
    fn poll(&mut self) -> Option<Action> {
        self.poll_action()
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        self.handle_tunnel_bytes(b)
    }
}

fn send(frame: Vec<u8>) -> Action {
    Action::Send(frame)
}

fn write(local: LocalId, data: &[u8]) -> Action {
    Action::Write {
        local,
        data: data.to_vec(),
    }
}

fn source(services: &[&str], version: Version) -> Source {
    let mut s = Source::new(services, version, Limits::default()).unwrap();
    s.bytes(&service_ids(&["SSH1"])).unwrap();
    s
}

#[test]
fn v3_source_sends_what_localproxy_sends() {
    let mut s = Source::new(&["SSH1"], Version::V3, Limits::default()).unwrap();
    assert_eq!(
        s.handle_accept("SSH1"),
        Err(Error::NotServed("SSH1".into())),
        "no listener before SERVICE_IDS"
    );
    s.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    assert_eq!(
        s.drain(),
        [Action::Listen {
            service: "SSH1".into()
        }]
    );
    let c1 = s.handle_accept("SSH1").unwrap();
    s.handle_local_data(c1, b"x");
    let c2 = s.handle_accept("SSH1").unwrap();
    s.handle_local_data(c2, b"hello-2");
    assert_eq!(
        s.drain(),
        [
            send(v("STREAM_START stream=1 svc=SSH1 conn=1")),
            send(v("DATA stream=1 svc=SSH1 conn=1 payload \"x\"")),
            send(v("CONNECTION_START stream=1 svc=SSH1 conn=2")),
            send(v("DATA stream=1 svc=SSH1 conn=2 payload \"hello-2\"")),
        ]
    );
    s.bytes(&v("DATA stream=1 svc=SSH1 conn=1 payload fb fc fd fe ff"))
        .unwrap();
    assert_eq!(s.drain(), [write(c1, &[0xfb, 0xfc, 0xfd, 0xfe, 0xff])]);
    s.handle_local_closed(c1);
    assert_eq!(
        s.drain(),
        [send(v("CONNECTION_RESET stream=1 svc=SSH1 conn=1"))]
    );
    // The destination's reset of connection 2 finishes it (what came before it is written
    // first); the stream stays.
    s.bytes(&hex("000c080710012a04535348313802")).unwrap();
    assert_eq!(s.drain(), [Action::Finish { local: c2 }]);
    // Every connection closed: the next one is connection 3 of stream 1 (§5, observed).
    let c3 = s.handle_accept("SSH1").unwrap();
    assert_eq!(
        s.drain(),
        [send(v("CONNECTION_START stream=1 svc=SSH1 conn=3"))]
    );
    // Data for a connection reset in flight is dropped, not delivered elsewhere.
    s.bytes(&v("DATA stream=1 svc=SSH1 conn=2 payload \"hello-2\""))
        .unwrap();
    assert_eq!(s.drain(), []);
    // The stream's reset closes every connection; the next accept starts stream 2.
    s.bytes(&v("STREAM_RESET stream=1 svc=SSH1")).unwrap();
    assert_eq!(s.drain(), [Action::Close { local: c3 }]);
    s.handle_accept("SSH1").unwrap();
    assert_eq!(
        s.drain(),
        [send(hex("000c080210022a04535348313801"))],
        "STREAM_START stream=2 conn=1"
    );
}

#[test]
fn v2_source_one_stream_per_connection() {
    let mut s = source(&["SSH1"], Version::V2);
    s.drain();
    let c1 = s.handle_accept("SSH1").unwrap();
    assert_eq!(
        s.handle_accept("SSH1"),
        Err(Error::Busy("SSH1".into())),
        "V2: one connection per service at a time"
    );
    assert!(!Error::Busy(String::new()).is_fatal());
    s.handle_local_data(c1, b"x");
    s.handle_local_closed(c1);
    assert_eq!(
        s.drain(),
        [
            send(v("STREAM_START stream=1 svc=SSH1")),
            send(v("DATA stream=1 svc=SSH1 payload \"x\"")),
            send(v("STREAM_RESET stream=1 svc=SSH1")),
        ]
    );
    s.handle_accept("SSH1").unwrap();
    assert_eq!(
        s.drain(),
        [send(hex("000a080210022a0453534831"))],
        "the next connection is stream 2"
    );
}

#[test]
fn v1_source_bare_service() {
    let mut s = Source::new(&[""], Version::V1, Limits::default()).unwrap();
    s.bytes(&v("SERVICE_IDS []")).unwrap();
    assert_eq!(s.drain(), [Action::Listen { service: "".into() }]);
    let c1 = s.handle_accept("").unwrap();
    s.handle_local_data(c1, b"x");
    s.bytes(&v("DATA stream=1 payload \"x\"")).unwrap();
    s.handle_local_closed(c1);
    assert_eq!(
        s.drain(),
        [
            send(v("STREAM_START stream=1")),
            send(v("DATA stream=1 payload \"x\"")),
            write(c1, b"x"),
            send(v("STREAM_RESET stream=1")),
        ]
    );
}

#[test]
fn bare_service_adopts_the_tunnels_only_one() {
    // §5: a bare port and exactly one id: the id is adopted (and written in V3).
    let mut s = Source::new(&[""], Version::V3, Limits::default()).unwrap();
    s.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    s.drain();
    s.handle_accept("").unwrap();
    assert_eq!(
        s.drain(),
        [send(v("STREAM_START stream=1 svc=SSH1 conn=1"))]
    );
    // The adopted name goes into every frame: one that is not a service name is refused
    // (a 60000-byte one would not leave room for a full payload).
    let long = "A".repeat(60_000);
    for bad in [long.as_str(), "a b"] {
        let mut s = Source::new(&[""], Version::V3, Limits::default()).unwrap();
        let err = s.bytes(&service_ids(&[bad])).unwrap_err();
        assert!(matches!(err, Error::Frame(_)) && err.is_fatal(), "{err}");
    }
    // With several ids the bare form cannot choose.
    let mut s = Source::new(&[""], Version::V3, Limits::default()).unwrap();
    assert_eq!(
        s.bytes(&service_ids(&["A", "B"])),
        Err(Error::TooManyServices(2))
    );
}

#[test]
fn configured_service_missing_from_the_tunnel_is_fatal() {
    let mut s = Source::new(&["SSH1", "HTTP"], Version::V3, Limits::default()).unwrap();
    let err = s.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap_err();
    assert_eq!(err, Error::ServiceNotInTunnel("HTTP".into()));
    assert!(err.is_fatal());
    // A service of the tunnel that this side does not serve is fine; a later SERVICE_IDS is
    // ignored (§5).
    let mut s = Source::new(&["SSH1"], Version::V3, Limits::default()).unwrap();
    s.bytes(&service_ids(&["SSH1", "HTTP"])).unwrap();
    s.bytes(&service_ids(&[])).unwrap();
    assert_eq!(
        s.drain(),
        [Action::Listen {
            service: "SSH1".into()
        }]
    );
    assert!(Source::new(&["bad name"], Version::V3, Limits::default()).is_err());
    assert!(Source::new(&["A", "A"], Version::V3, Limits::default()).is_err());
    assert!(Source::new(&[], Version::V3, Limits::default()).is_err());
}

#[test]
fn v3_source_falls_back_to_v2_then_v1() {
    let mut s = source(&["SSH1"], Version::V3);
    s.drain();
    let c1 = s.handle_accept("SSH1").unwrap();
    let c2 = s.handle_accept("SSH1").unwrap();
    s.drain();
    // A V2 destination answers without connectionId: connection 1 is its stream (§6), the
    // second connection cannot exist for it and is closed.
    s.bytes(&v("DATA stream=1 svc=SSH1 payload \"x\"")).unwrap();
    assert_eq!(s.format(), Version::V2);
    let actions = s.drain();
    assert!(actions.contains(&write(c1, b"x")), "{actions:?}");
    assert!(
        actions.contains(&Action::Close { local: c2 }),
        "{actions:?}"
    );
    s.handle_local_closed(c1);
    assert_eq!(s.drain(), [send(v("STREAM_RESET stream=1 svc=SSH1"))]);
    // V2 from now on: one connection, a stream each.
    let c3 = s.handle_accept("SSH1").unwrap();
    assert_eq!(s.drain(), [send(hex("000a080210022a0453534831"))]);
    // A V1 destination (no serviceId): down to V1, on a one-service tunnel.
    s.bytes(&hex("000708011002220179")).unwrap();
    assert_eq!(s.format(), Version::V1);
    assert_eq!(s.drain(), [write(c3, b"y")]);
    s.handle_local_closed(c3);
    assert_eq!(s.drain(), [send(hex("000408031002"))]);
    // Never back up on that tunnel connection; a new one starts at V3 again.
    s.bytes(&v("DATA stream=1 svc=SSH1 conn=1 payload \"x\""))
        .unwrap();
    assert_eq!(s.format(), Version::V1);
    s.handle_tunnel_lost();
    assert_eq!(s.format(), Version::V3);
}

#[test]
fn source_refuses_what_a_destination_may_not_send() {
    for bad in [
        "STREAM_START stream=1 svc=SSH1 conn=1",
        "CONNECTION_START stream=1 svc=SSH1 conn=2",
    ] {
        let mut s = source(&["SSH1"], Version::V3);
        let err = s.bytes(&v(bad)).unwrap_err();
        assert!(
            matches!(err, Error::Frame(_)) && err.is_fatal(),
            "{bad}: {err}"
        );
    }
    // A type outside the schema: dropped if ignorable, else fatal (§5).
    let mut s = source(&["SSH1"], Version::V3);
    s.drain();
    let unknown = |ignorable| {
        frame(Message {
            kind: Type(42),
            stream_id: 1,
            ignorable,
            ..Message::default()
        })
    };
    s.bytes(&unknown(true)).unwrap();
    assert_eq!(s.drain(), []);
    assert!(s.bytes(&unknown(false)).is_err());
    // Garbage is fatal.
    let mut s = source(&["SSH1"], Version::V3);
    assert!(s.bytes(&hex("0003ffffff")).is_err());
}

#[test]
fn explicit_defaults_and_split_frames_are_taken() {
    // protobufjs writes ignorable=false as 18 00 (§12.4); and frames may be cut anywhere.
    let mut s = source(&["SSH1"], Version::V3);
    s.drain();
    let c1 = s.handle_accept("SSH1").unwrap();
    s.drain();
    let mut stream = hex("0011080110011800220178" /* DATA s=1 ign=false "x" */);
    stream.extend(hex("2a04535348313801"));
    stream.extend(v("DATA stream=1 svc=SSH1 conn=1 payload fb fc fd fe ff"));
    for b in stream.chunks(1) {
        s.bytes(b).unwrap();
    }
    assert_eq!(
        s.drain(),
        [write(c1, b"x"), write(c1, &[0xfb, 0xfc, 0xfd, 0xfe, 0xff])]
    );
}

#[test]
fn long_local_reads_are_cut_at_the_payload_limit() {
    let mut s = Source::new(&[""], Version::V1, Limits::default()).unwrap();
    s.bytes(&v("SERVICE_IDS []")).unwrap();
    let c1 = s.handle_accept("").unwrap();
    s.drain();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.handle_local_data(c1, &data);
    let mut got = Vec::new();
    for action in s.drain() {
        let Action::Send(f) = action else {
            panic!("{action:?}")
        };
        let m = Message::decode(&f[2..]).unwrap();
        assert_eq!(m.kind, Type::DATA);
        assert!(m.payload.len() <= crate::tunnel::MAX_PAYLOAD);
        got.extend_from_slice(m.payload);
    }
    assert_eq!(got, data);
}

#[test]
fn v3_destination_answers_as_localproxy_does() {
    let mut d = Destination::new(&["SSH1"], Version::V3, Limits::default()).unwrap();
    assert_eq!(
        d.bytes(&v("STREAM_START stream=1 svc=SSH1 conn=1")),
        Err(Error::BeforeServiceIds(Type::STREAM_START)),
    );
    d.handle_tunnel_lost();
    d.drain();
    d.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    d.bytes(&v("STREAM_START stream=1 svc=SSH1 conn=1"))
        .unwrap();
    // DATA may follow STREAM_START at once: it waits for the connection.
    d.bytes(&v("DATA stream=1 svc=SSH1 conn=1 payload \"x\""))
        .unwrap();
    let c1 = LocalId(0);
    assert_eq!(
        d.drain(),
        [Action::Connect {
            local: c1,
            service: "SSH1".into()
        }]
    );
    assert_eq!(d.pending(c1), 1);
    d.handle_connected(c1);
    assert_eq!(d.drain(), [write(c1, b"x")]);
    d.bytes(&v("CONNECTION_START stream=1 svc=SSH1 conn=2"))
        .unwrap();
    let c2 = LocalId(1);
    assert_eq!(
        d.drain(),
        [Action::Connect {
            local: c2,
            service: "SSH1".into()
        }]
    );
    // Connection 2 cannot connect: only it is reset; connection 1 goes on.
    d.handle_connect_failed(c2);
    d.handle_local_data(c1, b"x");
    d.handle_local_closed(c1);
    assert_eq!(
        d.drain(),
        [
            send(hex("000c080710012a04535348313802")),
            send(v("DATA stream=1 svc=SSH1 conn=1 payload \"x\"")),
            send(v("CONNECTION_RESET stream=1 svc=SSH1 conn=1")),
        ]
    );
    // A lone connection that cannot connect resets its stream, as localproxy does.
    d.bytes(&v("CONNECTION_START stream=1 svc=SSH1 conn=3"))
        .unwrap();
    let c3 = LocalId(2);
    d.drain();
    d.handle_connect_failed(c3);
    assert_eq!(d.drain(), [send(v("STREAM_RESET stream=1 svc=SSH1"))]);
    // A connection of a stream no longer active is reset, not opened.
    d.bytes(&v("CONNECTION_START stream=1 svc=SSH1 conn=2"))
        .unwrap();
    assert_eq!(d.drain(), [send(hex("000c080710012a04535348313802"))]);
}

#[test]
fn destination_resets_streams_of_unserved_services_and_duplicates() {
    let mut d = Destination::new(&["SSH1"], Version::V3, Limits::default()).unwrap();
    d.bytes(&service_ids(&["SSH1", "HTTP"])).unwrap();
    d.bytes(&hex("000c080210012a04485454503801")).unwrap();
    assert_eq!(d.drain(), [send(hex("000a080310012a0448545450"))]);
    d.bytes(&v("STREAM_START stream=1 svc=SSH1 conn=1"))
        .unwrap();
    d.bytes(&v("CONNECTION_START stream=1 svc=SSH1 conn=2"))
        .unwrap();
    d.drain();
    // A duplicate connectionId is an error: that connection is reset (§5).
    d.bytes(&v("CONNECTION_START stream=1 svc=SSH1 conn=2"))
        .unwrap();
    assert_eq!(
        d.drain(),
        [
            Action::Close { local: LocalId(1) },
            send(hex("000c080710012a04535348313802"))
        ]
    );
    // A new stream replaces the active one: its connections close (§5).
    d.bytes(&hex("000c080210022a04535348313801")).unwrap();
    assert_eq!(
        d.drain(),
        [
            Action::Close { local: LocalId(0) },
            Action::Connect {
                local: LocalId(2),
                service: "SSH1".into()
            }
        ]
    );
    // The old stream's reset and DATA are stale: ignored.
    d.bytes(&v("STREAM_RESET stream=1 svc=SSH1")).unwrap();
    d.bytes(&v("DATA stream=1 svc=SSH1 conn=1 payload \"x\""))
        .unwrap();
    assert_eq!(d.drain(), []);
    // SESSION_RESET ends every stream.
    d.bytes(&hex("00020804")).unwrap();
    assert_eq!(d.drain(), [Action::Close { local: LocalId(2) }]);
}

#[test]
fn destination_answers_in_the_sources_format() {
    // §12.2: a V1 STREAM_START on a one-service tunnel is taken, and answered in V1.
    let mut d = Destination::new(&["SSH1"], Version::V3, Limits::default()).unwrap();
    d.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    d.bytes(&v("STREAM_START stream=1")).unwrap();
    let c1 = LocalId(0);
    d.handle_connected(c1);
    d.handle_local_data(c1, b"x");
    d.handle_local_closed(c1);
    let sent: Vec<Action> = d.drain().into_iter().skip(1).collect();
    assert_eq!(
        sent,
        [
            send(v("DATA stream=1 payload \"x\"")),
            send(v("STREAM_RESET stream=1"))
        ]
    );
    assert_eq!(d.format(), Version::V1);
    // V2 (serviceId, no connectionId).
    let mut d = Destination::new(&["SSH1"], Version::V3, Limits::default()).unwrap();
    d.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    d.bytes(&v("STREAM_START stream=1 svc=SSH1")).unwrap();
    d.handle_connected(c1);
    d.handle_local_data(c1, b"x");
    d.handle_local_closed(c1);
    let sent: Vec<Action> = d.drain().into_iter().skip(1).collect();
    assert_eq!(
        sent,
        [
            send(v("DATA stream=1 svc=SSH1 payload \"x\"")),
            send(v("STREAM_RESET stream=1 svc=SSH1"))
        ]
    );
    // A destination held to V2 refuses CONNECTION_START as a V2 peer does: it could not
    // answer it.
    let mut d = Destination::new(&["SSH1"], Version::V2, Limits::default()).unwrap();
    d.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    d.bytes(&v("STREAM_START stream=1 svc=SSH1 conn=1"))
        .unwrap();
    assert_eq!(d.format(), Version::V2);
    let err = d.bytes(&v("CONNECTION_START stream=1 svc=SSH1 conn=2"));
    assert!(err.is_err_and(|e| e.is_fatal()));
    // A connectionId without serviceId (the reference's last group).
    let mut d = Destination::new(&[""], Version::V3, Limits::default()).unwrap();
    d.bytes(&v("SERVICE_IDS []")).unwrap();
    d.bytes(&v("STREAM_START stream=1 conn=1 (no svc)"))
        .unwrap();
    d.handle_connected(c1);
    d.handle_local_data(c1, b"x");
    d.handle_local_closed(c1);
    let sent: Vec<Action> = d.drain().into_iter().skip(1).collect();
    assert_eq!(
        sent,
        [
            send(v("DATA stream=1 conn=1 payload \"x\" (no svc)")),
            send(v("CONNECTION_RESET stream=1 conn=1 (no svc)"))
        ]
    );
}

/// A slow local reader behind the destination: the tunnel is read only while the agent does
/// not pause it, the local connection takes a little at a time. Every byte arrives in order,
/// and the bytes waiting for it never pass the bound plus one tunnel read and one frame.
#[test]
fn slow_local_reader_pauses_the_tunnel_and_memory_stays_bounded() {
    let limits = Limits {
        pending: 64 * 1024,
        ..Limits::default()
    };
    let mut d = Destination::new(&["SSH1"], Version::V3, limits).unwrap();
    d.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    d.bytes(&v("STREAM_START stream=1 svc=SSH1 conn=1"))
        .unwrap();
    let c1 = LocalId(0);
    d.handle_connected(c1);
    d.drain();
    // 8 MiB of DATA, in full 64512-byte payloads, read from the tunnel 16 KiB at a time.
    let total = 8 << 20;
    let sent: Vec<u8> = (0..total).map(|i: usize| (i * 7 % 253) as u8).collect();
    let mut tunnel = Vec::new();
    for chunk in sent.chunks(crate::tunnel::MAX_PAYLOAD) {
        tunnel.extend(frame(Message {
            kind: Type::DATA,
            stream_id: 1,
            payload: chunk,
            service_id: "SSH1",
            connection_id: 1,
            ..Message::default()
        }));
    }
    let read = 16 * 1024;
    let (mut at, mut paused, mut pauses, mut resumes) = (0, false, 0, 0);
    let mut local: Vec<u8> = Vec::new();
    let mut to_write: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut max_pending = 0;
    while local.len() < total {
        if !paused && at < tunnel.len() {
            let end = (at + read).min(tunnel.len());
            d.bytes(&tunnel[at..end]).unwrap();
            at = end;
        }
        for action in d.drain() {
            match action {
                Action::Write { local, data } => {
                    assert_eq!(local, c1);
                    to_write.push_back(data);
                }
                Action::PauseTunnelReads => {
                    assert!(!paused);
                    (paused, pauses) = (true, pauses + 1);
                }
                Action::ResumeTunnelReads => {
                    assert!(paused);
                    (paused, resumes) = (false, resumes + 1);
                }
                other => panic!("{other:?}"),
            }
        }
        max_pending = max_pending.max(d.pending(c1));
        // A read may complete a frame the decoder held the start of.
        let bound = limits.pending + read + crate::tunnel::MAX_FRAME;
        assert!(d.pending(c1) <= bound, "{}", d.pending(c1));
        // The local reader takes 4 KiB per turn.
        if let Some(mut front) = to_write.pop_front() {
            let n = front.len().min(4096);
            local.extend_from_slice(&front[..n]);
            d.handle_written(c1, n);
            if n < front.len() {
                front.drain(..n);
                to_write.push_front(front);
            }
        }
    }
    assert_eq!(local, sent);
    assert!(pauses > 10 && resumes == pauses, "{pauses} {resumes}");
    assert!(max_pending > limits.pending, "the bound was reached");
    assert!(!d.is_paused());
    assert_eq!(d.pending(c1), 0);
}

#[test]
fn closing_a_backed_up_connection_resumes_the_tunnel() {
    let limits = Limits {
        pending: 10,
        ..Limits::default()
    };
    let mut s = Source::new(&["SSH1"], Version::V3, limits).unwrap();
    s.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    let c1 = s.handle_accept("SSH1").unwrap();
    s.drain();
    s.bytes(&frame(Message {
        kind: Type::DATA,
        stream_id: 1,
        payload: &[1; 20],
        service_id: "SSH1",
        connection_id: 1,
        ..Message::default()
    }))
    .unwrap();
    assert!(s.is_paused());
    assert_eq!(s.drain(), [write(c1, &[1; 20]), Action::PauseTunnelReads]);
    s.bytes(&v("CONNECTION_RESET stream=1 svc=SSH1 conn=1"))
        .unwrap();
    assert_eq!(
        s.drain(),
        [Action::Finish { local: c1 }, Action::ResumeTunnelReads]
    );
    // Losing the tunnel closes everything and starts counting again at stream 1.
    let c2 = s.handle_accept("SSH1").unwrap();
    s.drain();
    s.handle_tunnel_lost();
    assert_eq!(s.drain(), [Action::Close { local: c2 }]);
    assert!(s.handle_accept("SSH1").is_err(), "no tunnel, no service");
    s.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    assert_eq!(s.drain(), [], "the listener is still there");
    s.handle_accept("SSH1").unwrap();
    assert_eq!(
        s.drain(),
        [send(v("STREAM_START stream=1 svc=SSH1 conn=1"))]
    );
}

/// The relay: SERVICE_IDS to both, then each frame passed as it is.
struct Pair {
    src: Source,
    dst: Destination,
    /// Per side: local id -> bytes received.
    src_got: HashMap<LocalId, Vec<u8>>,
    dst_got: HashMap<LocalId, Vec<u8>>,
    /// Finished (closed after their writes) by the agent; a Close (a cut) fails the test.
    dst_closed: Vec<LocalId>,
    src_closed: Vec<LocalId>,
    /// Write sides shut after the peer's HALF_CLOSE.
    dst_shut: Vec<LocalId>,
    src_shut: Vec<LocalId>,
}

impl Pair {
    fn new(services: &[&str], src: Version, dst: Version) -> Pair {
        Pair::with(services, (src, Limits::default()), (dst, Limits::default()))
    }

    fn with(services: &[&str], src: (Version, Limits), dst: (Version, Limits)) -> Pair {
        let mut pair = Pair {
            src: Source::new(services, src.0, src.1).unwrap(),
            dst: Destination::new(services, dst.0, dst.1).unwrap(),
            src_got: HashMap::new(),
            dst_got: HashMap::new(),
            dst_closed: Vec::new(),
            src_closed: Vec::new(),
            dst_shut: Vec::new(),
            src_shut: Vec::new(),
        };
        let ids = service_ids(services);
        pair.src.bytes(&ids).unwrap();
        pair.dst.bytes(&ids).unwrap();
        pair.run();
        pair
    }

    /// Moves frames both ways and does the local side's work until nothing moves.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            for action in self.src.drain() {
                moved = true;
                match action {
                    Action::Send(f) => self.dst.bytes(&f).unwrap(),
                    Action::Write { local, data } => {
                        self.src.handle_written(local, data.len());
                        self.src_got.entry(local).or_default().extend(data);
                    }
                    Action::Finish { local } => self.src_closed.push(local),
                    Action::ShutdownWrite { local } => self.src_shut.push(local),
                    Action::Listen { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
            for action in self.dst.drain() {
                moved = true;
                match action {
                    Action::Send(f) => self.src.bytes(&f).unwrap(),
                    Action::Connect { local, .. } => self.dst.handle_connected(local),
                    Action::Write { local, data } => {
                        self.dst.handle_written(local, data.len());
                        self.dst_got.entry(local).or_default().extend(data);
                    }
                    Action::Finish { local } => self.dst_closed.push(local),
                    Action::ShutdownWrite { local } => self.dst_shut.push(local),
                    other => panic!("{other:?}"),
                }
            }
            if !moved {
                return;
            }
        }
    }
}

#[test]
fn source_and_destination_echo_through_a_relay_in_every_pairing() {
    for src in Version::ALL {
        for dst in Version::ALL {
            // V1 has one service; V2 and V3 carry several.
            let services: &[&str] = if src == Version::V1 || dst == Version::V1 {
                &["SSH1"]
            } else {
                &["SSH1", "HTTP", "PLC"]
            };
            let mut pair = Pair::new(services, src, dst);
            let mut open = Vec::new();
            for (i, name) in services.iter().enumerate() {
                let local = pair.src.handle_accept(name).unwrap();
                pair.run();
                let payload: Vec<u8> = (0..100_000 + i).map(|b| (b * 13 + i) as u8).collect();
                pair.src.handle_local_data(local, &payload);
                pair.run();
                open.push((local, payload));
            }
            // Destination locals were handed out in order; echo back what each got.
            let mut dst_ids: Vec<LocalId> = pair.dst_got.keys().copied().collect();
            dst_ids.sort();
            assert_eq!(dst_ids.len(), services.len(), "{src:?}->{dst:?}");
            for (&d, (s, payload)) in dst_ids.iter().zip(&open) {
                assert_eq!(&pair.dst_got[&d], payload, "{src:?}->{dst:?}");
                let echo = pair.dst_got[&d].clone();
                pair.dst.handle_local_data(d, &echo);
                pair.run();
                assert_eq!(&pair.src_got[s], payload, "{src:?}->{dst:?}");
            }
            assert_eq!(pair.src.format(), src.min(dst), "{src:?}->{dst:?}");
            // The source's client closes: the destination's connection closes too.
            for (s, _) in &open {
                pair.src.handle_local_closed(*s);
            }
            pair.run();
            assert_eq!(pair.dst_closed.len(), services.len(), "{src:?}->{dst:?}");
        }
    }
}

#[test]
fn v3_pair_carries_many_connections_per_service() {
    let mut pair = Pair::new(&["SSH1"], Version::V3, Version::V3);
    let locals: Vec<LocalId> = (0..128)
        .map(|_| pair.src.handle_accept("SSH1").unwrap())
        .collect();
    assert_eq!(
        pair.src.handle_accept("SSH1"),
        Err(Error::Busy("SSH1".into()))
    );
    pair.run();
    for (i, &l) in locals.iter().enumerate() {
        pair.src
            .handle_local_data(l, format!("conn {i}").as_bytes());
    }
    pair.run();
    let mut got: Vec<String> = (pair.dst_got.values())
        .map(|b| String::from_utf8(b.clone()).unwrap())
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..128).map(|i| format!("conn {i}")).collect();
    want.sort();
    assert_eq!(got, want);
    // The destination's target closes one: only that one closes at the source.
    let d = *pair.dst_got.keys().min().unwrap();
    pair.dst.handle_local_closed(d);
    pair.run();
    assert_eq!(pair.src_closed, [locals[0]]);
}

#[test]
fn reconnect_schedule() {
    let backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };
    assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(50));
    assert_eq!(backoff.delay(0, 1.0), Duration::from_millis(100));
    assert_eq!(backoff.delay(3, 0.5), Duration::from_millis(600));
    assert_eq!(backoff.delay(7, 1.0), Duration::from_secs(10), "capped");
    assert_eq!(backoff.delay(u32::MAX, 1.0), Duration::from_secs(10));
    assert_eq!(backoff.delay(2, f64::NAN), Duration::from_millis(200));
    assert_eq!(backoff.delay(2, 7.0), Duration::from_millis(400));

    let mut r = Reconnect::new(backoff, false);
    let delays: Vec<Next> = (0..9).map(|_| r.handle_end(End::Dropped, 1.0)).collect();
    let ms = |m| Next::Retry(Duration::from_millis(m));
    assert_eq!(
        delays,
        [
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1600),
            ms(3200),
            ms(6400),
            ms(10_000),
            ms(10_000)
        ]
    );
    assert_eq!(r.handle_end(End::Status(503), 0.0), ms(5000));
    r.handle_connected();
    assert_eq!(r.failures(), 0);
    assert_eq!(r.handle_end(End::Dropped, 0.0), ms(50));
    assert_eq!(r.handle_end(End::Closed, 0.0), Next::Stop);
    assert_eq!(r.handle_end(End::Status(403), 0.0), Next::Stop);
    assert_eq!(r.handle_end(End::Status(400), 0.0), Next::Stop);

    let mut keep = Reconnect::new(backoff, true);
    assert_eq!(keep.handle_end(End::Closed, 1.0), ms(100));
    assert_eq!(keep.handle_end(End::Status(403), 1.0), ms(200));
}

/// Jitter stays in [0, 1), spreads over it, and even a zero seed gives a moving sequence.
#[test]
fn jitter_is_spread_over_zero_to_one_from_any_seed() {
    for seed in [0, 1, u64::MAX, 0x5eed] {
        let mut j = Jitter::new(seed);
        let v: Vec<f64> = (0..1000).map(|_| j.sample()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)), "seed {seed}");
        assert!(v.iter().any(|x| *x < 0.25), "seed {seed}: none low");
        assert!(v.iter().any(|x| *x > 0.75), "seed {seed}: none high");
    }
}

#[test]
fn a_relay_going_away_is_a_drop_and_any_other_close_ends_the_tunnel() {
    assert_eq!(End::from_close(Some(1001)), End::Dropped);
    for code in [None, Some(1000), Some(1008), Some(1011), Some(4000)] {
        assert_eq!(End::from_close(code), End::Closed, "{code:?}");
    }
    let mut r = Reconnect::new(Backoff::default(), false);
    assert!(matches!(
        r.handle_end(End::from_close(Some(1001)), 0.0),
        Next::Retry(_)
    ));
    assert_eq!(r.handle_end(End::from_close(Some(1000)), 0.0), Next::Stop);
}

#[test]
fn data_framed_in_place_is_what_handle_local_data_sends() {
    use crate::tunnel::{DATA_HEADROOM, DATA_TAILROOM};
    for (services, version, ids) in [
        (&["SSH1"][..], Version::V3, "SERVICE_IDS [\"SSH1\"]"),
        (&["SSH1"][..], Version::V2, "SERVICE_IDS [\"SSH1\"]"),
        (&[""][..], Version::V1, "SERVICE_IDS []"),
    ] {
        let mut s = Source::new(services, version, Limits::default()).unwrap();
        s.bytes(&v(ids)).unwrap();
        let c1 = s.handle_accept(services[0]).unwrap();
        s.drain();
        for len in [1, 127, 128, crate::tunnel::MAX_PAYLOAD] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            s.handle_local_data(c1, &payload);
            let [Action::Send(sent)] = &s.drain()[..] else {
                panic!("one frame")
            };
            let mut buf = vec![0; DATA_HEADROOM + len + DATA_TAILROOM];
            buf[DATA_HEADROOM..DATA_HEADROOM + len].copy_from_slice(&payload);
            let framing = s.data_framing(c1, len).unwrap();
            let range = framing.frame_in_place(&mut buf, DATA_HEADROOM).unwrap();
            assert_eq!(&buf[range], &sent[..], "{version:?} {len}");
        }
        assert!(s.data_framing(c1, 0).is_none());
        assert!(s.data_framing(c1, crate::tunnel::MAX_PAYLOAD + 1).is_none());
        s.handle_local_closed(c1);
        assert!(s.data_framing(c1, 1).is_none(), "closed");
    }
}

#[test]
fn stream_ids_wrap_at_i32_max() {
    let mut s = source(&["SSH1"], Version::V2);
    s.drain();
    s.last_stream = i32::MAX - 1;
    let c1 = s.handle_accept("SSH1").unwrap();
    s.handle_local_closed(c1);
    s.handle_accept("SSH1").unwrap();
    let starts: Vec<i32> = (s.drain().into_iter())
        .filter_map(|a| match a {
            Action::Send(f) => Some(Message::decode(&f[2..]).unwrap())
                .and_then(|m| (m.kind == Type::STREAM_START).then_some(m.stream_id)),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [i32::MAX, 1]);
}

/// The peer's close comes after its last DATA: the local connection gets every byte, then a
/// FIN (Finish), never a cut (Close) that would drop bytes still waiting to be written.
#[test]
fn a_peer_close_finishes_after_the_data_before_it() {
    // Source: the target answered and closed (V3: CONNECTION_RESET; V2: STREAM_RESET).
    for (version, reset) in [
        (Version::V3, v("CONNECTION_RESET stream=1 svc=SSH1 conn=1")),
        (Version::V2, v("STREAM_RESET stream=1 svc=SSH1")),
    ] {
        let mut s = source(&["SSH1"], version);
        s.drain();
        let c1 = s.handle_accept("SSH1").unwrap();
        s.drain();
        let data = if version == Version::V3 {
            v("DATA stream=1 svc=SSH1 conn=1 payload \"x\"")
        } else {
            v("DATA stream=1 svc=SSH1 payload \"x\"")
        };
        s.bytes(&[data, reset].concat()).unwrap();
        assert_eq!(
            s.drain(),
            [write(c1, b"x"), Action::Finish { local: c1 }],
            "{version:?}"
        );
    }
    // In V3 a STREAM_RESET is trouble (a target out of reach, a peer replaced): a cut.
    let mut s = source(&["SSH1"], Version::V3);
    s.drain();
    let c1 = s.handle_accept("SSH1").unwrap();
    s.drain();
    s.bytes(&v("STREAM_RESET stream=1 svc=SSH1")).unwrap();
    assert_eq!(s.drain(), [Action::Close { local: c1 }]);

    // Destination: the client sent its request and closed before the target connected.
    let mut d = Destination::new(&["SSH1"], Version::V3, Limits::default()).unwrap();
    d.bytes(&v("SERVICE_IDS [\"SSH1\"]")).unwrap();
    let c1 = LocalId(0);
    d.bytes(
        &[
            v("STREAM_START stream=1 svc=SSH1 conn=1"),
            v("DATA stream=1 svc=SSH1 conn=1 payload \"x\""),
            v("CONNECTION_RESET stream=1 svc=SSH1 conn=1"),
        ]
        .concat(),
    )
    .unwrap();
    d.drain();
    // The stream goes on without it: connection 2 opens meanwhile.
    d.bytes(&v("CONNECTION_START stream=1 svc=SSH1 conn=2"))
        .unwrap();
    assert_eq!(
        d.drain(),
        [Action::Connect {
            local: LocalId(1),
            service: "SSH1".into()
        }]
    );
    d.handle_connected(c1);
    assert_eq!(d.drain(), [write(c1, b"x"), Action::Finish { local: c1 }]);
    assert_eq!(d.pending(c1), 0, "forgotten");
    // One that cannot connect any more tells the source nothing: its side is gone already.
    d.bytes(&hex("000c080710012a04535348313802")).unwrap();
    d.handle_connect_failed(LocalId(1));
    assert_eq!(d.drain(), []);
}

fn half_close_on() -> Limits {
    Limits {
        half_close: true,
        ..Limits::default()
    }
}

/// An HTTP/1.0 exchange through two agents that both take half-closes, in every version
/// pairing: the client's request and EOF, then the answer and the target's EOF, each whole.
#[test]
fn half_close_carries_the_answer_after_the_requests_eof() {
    for src in Version::ALL {
        for dst in Version::ALL {
            let what = format!("{src:?}->{dst:?}");
            let mut pair = Pair::with(&["SSH1"], (src, half_close_on()), (dst, half_close_on()));
            let s = pair.src.handle_accept("SSH1").unwrap();
            pair.run();
            pair.src.handle_local_data(s, b"GET / HTTP/1.0\r\n\r\n");
            assert_eq!(pair.src.handle_local_eof(s), LocalEof::HalfClosed, "{what}");
            pair.run();
            let d = LocalId(0);
            assert_eq!(pair.dst_got[&d], b"GET / HTTP/1.0\r\n\r\n", "{what}");
            assert_eq!(pair.dst_shut, [d], "{what}: its write side shut");
            assert!(
                pair.dst_closed.is_empty() && pair.src_closed.is_empty(),
                "{what}"
            );
            // The answer comes back over the half-closed connection, then the target's EOF.
            let answer: Vec<u8> = (0..200_000).map(|i| (i * 7) as u8).collect();
            pair.dst.handle_local_data(d, &answer);
            assert_eq!(pair.dst.handle_local_eof(d), LocalEof::Closed, "{what}");
            pair.run();
            assert_eq!(pair.src_got[&s], answer, "{what}");
            assert_eq!(pair.src_closed, [s], "{what}: finished after the answer");
            assert_eq!(pair.dst_closed, [d], "{what}");
            assert!(pair.src_shut.is_empty(), "{what}");
            // The stream (V1, V2) or connection (V3) ended the ordinary way: a new one works.
            let s2 = pair.src.handle_accept("SSH1").unwrap();
            pair.run();
            pair.src.handle_local_data(s2, b"again");
            pair.run();
            assert_eq!(pair.dst_got[&LocalId(1)], b"again", "{what}");
        }
    }
}

/// Both sides end at once: the HALF_CLOSEs cross, each side closes its connection with the
/// ordinary reset, and the crossing resets are dropped.
#[test]
fn crossing_half_closes_end_both_sides() {
    for version in Version::ALL {
        let mut pair = Pair::with(
            &["SSH1"],
            (version, half_close_on()),
            (version, half_close_on()),
        );
        let s = pair.src.handle_accept("SSH1").unwrap();
        pair.run();
        let d = LocalId(0);
        pair.src.handle_local_data(s, b"ping");
        pair.dst.handle_local_data(d, b"pong");
        assert_eq!(pair.src.handle_local_eof(s), LocalEof::HalfClosed);
        assert_eq!(pair.dst.handle_local_eof(d), LocalEof::HalfClosed);
        pair.run();
        assert_eq!(pair.src_got[&s], b"pong", "{version:?}");
        assert_eq!(pair.dst_got[&d], b"ping", "{version:?}");
        assert_eq!(pair.src_closed, [s], "{version:?}");
        assert_eq!(pair.dst_closed, [d], "{version:?}");
    }
}

/// What goes on the wire: STREAM_START then the source's HELLO (ignorable, streamId and
/// serviceId as the stream's), the destination's HELLO before anything else, a HALF_CLOSE
/// with the connection's ids; and nothing of it with the feature off.
#[test]
fn half_close_messages_on_the_wire() {
    let mut s = Source::new(&["SSH1"], Version::V3, half_close_on()).unwrap();
    s.bytes(&service_ids(&["SSH1"])).unwrap();
    s.drain();
    let c1 = s.handle_accept("SSH1").unwrap();
    // type 1001 (e9 07), streamId 1, ignorable, serviceId SSH1.
    let hello = hex("000d08e907100118012a0453534831");
    assert_eq!(
        s.drain(),
        [
            send(v("STREAM_START stream=1 svc=SSH1 conn=1")),
            send(hello.clone())
        ]
    );
    assert_eq!(
        Message::decode(&hello[2..]).unwrap(),
        Message {
            kind: HELLO,
            stream_id: 1,
            ignorable: true,
            service_id: "SSH1",
            ..Message::default()
        }
    );
    s.bytes(&hello).unwrap();
    assert_eq!(s.handle_local_eof(c1), LocalEof::HalfClosed);
    let sent = s.drain();
    let [Action::Send(half)] = sent.as_slice() else {
        panic!("{sent:?}")
    };
    assert_eq!(
        Message::decode(&half[2..]).unwrap(),
        Message {
            kind: HALF_CLOSE,
            stream_id: 1,
            ignorable: true,
            service_id: "SSH1",
            connection_id: 1,
            ..Message::default()
        }
    );

    // The destination says HELLO as it takes the STREAM_START, before it connects.
    let mut d = Destination::new(&["SSH1"], Version::V3, half_close_on()).unwrap();
    d.bytes(&service_ids(&["SSH1"])).unwrap();
    d.bytes(&v("STREAM_START stream=1 svc=SSH1 conn=1"))
        .unwrap();
    assert_eq!(
        d.drain(),
        [
            send(hello.clone()),
            Action::Connect {
                local: LocalId(0),
                service: "SSH1".into()
            }
        ]
    );

    // Off (the default): exactly what localproxy sends, and HELLO / HALF_CLOSE are dropped.
    let mut s = source(&["SSH1"], Version::V3);
    s.drain();
    let c1 = s.handle_accept("SSH1").unwrap();
    assert_eq!(
        s.drain(),
        [send(v("STREAM_START stream=1 svc=SSH1 conn=1"))]
    );
    s.bytes(&[hello.clone(), half.clone()].concat()).unwrap();
    assert_eq!(s.drain(), []);
    assert_eq!(s.handle_local_eof(c1), LocalEof::Closed);
    assert_eq!(
        s.drain(),
        [
            send(v("CONNECTION_RESET stream=1 svc=SSH1 conn=1")),
            Action::Finish { local: c1 }
        ]
    );
}

/// A peer that never says HELLO (localproxy, or an agent with the feature off): an EOF
/// before it said anything waits, then goes out as the ordinary reset, after the peer's DATA
/// (which shows no HELLO is coming) or after the wait. Nothing the peer sent is lost.
#[test]
fn a_peer_without_half_close_gets_the_ordinary_reset() {
    for version in Version::ALL {
        // Our source, a destination with the feature off.
        let mut pair = Pair::with(
            &["SSH1"],
            (version, half_close_on()),
            (version, Limits::default()),
        );
        let s = pair.src.handle_accept("SSH1").unwrap();
        pair.src.handle_local_data(s, b"request");
        assert_eq!(pair.src.handle_local_eof(s), LocalEof::Waiting);
        pair.run();
        let d = LocalId(0);
        assert_eq!(pair.dst_got[&d], b"request");
        assert!(pair.dst_closed.is_empty(), "{version:?}: waits for a word");
        // The answer shows the destination does not say HELLO: the reset goes out after it.
        pair.dst.handle_local_data(d, b"answer");
        pair.run();
        assert_eq!(pair.src_got[&s], b"answer", "{version:?}");
        assert_eq!(pair.src_closed, [s], "{version:?}");
        assert_eq!(pair.dst_closed, [d], "{version:?}: the ordinary reset");
        assert!(pair.dst_shut.is_empty(), "{version:?}");
        // The stream's later EOFs do not wait.
        if version == Version::V3 {
            let s2 = pair.src.handle_accept("SSH1").unwrap();
            pair.run();
            assert_eq!(pair.src.handle_local_eof(s2), LocalEof::Closed);
        }

        // A silent peer: the wait ends it.
        let mut pair = Pair::with(
            &["SSH1"],
            (version, half_close_on()),
            (version, Limits::default()),
        );
        let s = pair.src.handle_accept("SSH1").unwrap();
        pair.run();
        assert_eq!(pair.src.handle_local_eof(s), LocalEof::Waiting);
        pair.run();
        assert!(pair.dst_closed.is_empty());
        pair.src.handle_eof_wait_over(s);
        pair.run();
        assert_eq!(pair.src_closed, [s], "{version:?}");
        assert_eq!(pair.dst_closed, [LocalId(0)], "{version:?}");

        // Our destination, a source with the feature off: its EOF goes out as a reset at
        // once once the source's first word about the stream was not HELLO.
        let mut pair = Pair::with(
            &["SSH1"],
            (version, Limits::default()),
            (version, half_close_on()),
        );
        let s = pair.src.handle_accept("SSH1").unwrap();
        pair.src.handle_local_data(s, b"x");
        pair.run();
        let d = LocalId(0);
        assert_eq!(
            pair.dst.handle_local_eof(d),
            LocalEof::Closed,
            "{version:?}"
        );
        pair.run();
        assert_eq!(pair.src_closed, [s], "{version:?}");
    }
}

/// An EOF before the peer's HELLO arrived waits for it, then goes out as a HALF_CLOSE; a
/// HALF_CLOSE for a connection still connecting shuts it after the bytes held for it.
#[test]
fn half_close_waits_for_the_hello_and_for_the_connect() {
    let mut src = Source::new(&["SSH1"], Version::V3, half_close_on()).unwrap();
    let mut dst = Destination::new(&["SSH1"], Version::V3, half_close_on()).unwrap();
    src.bytes(&service_ids(&["SSH1"])).unwrap();
    dst.bytes(&service_ids(&["SSH1"])).unwrap();
    src.drain();
    let s = src.handle_accept("SSH1").unwrap();
    src.handle_local_data(s, b"all of it");
    assert_eq!(src.handle_local_eof(s), LocalEof::Waiting);
    for action in src.drain() {
        let Action::Send(f) = action else { panic!() };
        dst.bytes(&f).unwrap();
    }
    // The destination's HELLO, then its Connect; the connection is not up yet.
    let d = LocalId(0);
    for action in dst.drain() {
        if let Action::Send(f) = action {
            src.bytes(&f).unwrap();
        }
    }
    let sent = src.drain();
    assert_eq!(sent.len(), 1, "the HALF_CLOSE: {sent:?}");
    let Action::Send(half) = &sent[0] else {
        panic!()
    };
    assert_eq!(Message::decode(&half[2..]).unwrap().kind, HALF_CLOSE);
    dst.bytes(half).unwrap();
    assert_eq!(dst.drain(), []);
    dst.handle_connected(d);
    assert_eq!(
        dst.drain(),
        [write(d, b"all of it"), Action::ShutdownWrite { local: d }]
    );
    // The target's EOF then closes both halves: the ordinary reset, and Finish here.
    assert_eq!(dst.handle_local_eof(d), LocalEof::Closed);
    assert_eq!(
        dst.drain(),
        [
            send(v("CONNECTION_RESET stream=1 svc=SSH1 conn=1")),
            Action::Finish { local: d }
        ]
    );
}

/// V1 and V2 carry one connection per stream: a connection whose client ended its side gives
/// way to the next one (cut, as a new STREAM_START replaces a stream), rather than refuse it
/// while its answer comes back.
#[test]
fn one_connection_formats_let_a_half_closed_connection_give_way() {
    for version in [Version::V1, Version::V2] {
        let mut pair = Pair::with(
            &["SSH1"],
            (version, half_close_on()),
            (version, half_close_on()),
        );
        let s1 = pair.src.handle_accept("SSH1").unwrap();
        pair.run();
        assert!(
            matches!(pair.src.handle_accept("SSH1"), Err(Error::Busy(_))),
            "{version:?}"
        );
        pair.src.drain();
        assert_eq!(pair.src.handle_local_eof(s1), LocalEof::HalfClosed);
        pair.run();
        pair.src.handle_accept("SSH1").unwrap();
        let mut to_dst = Vec::new();
        for action in pair.src.drain() {
            match action {
                Action::Send(f) => to_dst.push(f),
                other => assert_eq!(other, Action::Close { local: s1 }, "{version:?}"),
            }
        }
        pair.dst.bytes(&to_dst.concat()).unwrap();
        // The destination's side of the first is cut too, and the second connects.
        let got: Vec<Action> = (pair.dst.drain().into_iter())
            .filter(|a| !matches!(a, Action::Send(_)))
            .collect();
        assert_eq!(
            got,
            [
                Action::Close { local: LocalId(0) },
                Action::Connect {
                    local: LocalId(1),
                    service: "SSH1".into()
                }
            ],
            "{version:?}"
        );
    }
}

/// The kinds of the frames among `actions`' sends.
fn sent_kinds(actions: &[Action]) -> Vec<Type> {
    (actions.iter())
        .filter_map(|a| match a {
            Action::Send(f) => Some(
                Message::decode(&f[crate::tunnel::LENGTH_PREFIX..])
                    .unwrap()
                    .kind,
            ),
            _ => None,
        })
        .collect()
}

/// A relay that drops the STREAM_START (one of another make, while the destination was
/// away): the destination drops the source's DATA as stale and, in V3, resets the stream's
/// later connections. After `START_WAIT` the source gives the stream up (its connection reset,
/// a STREAM_RESET out) and the next connection starts a new stream, which works: the tunnel
/// lives on. A stream the destination showed it has is left alone. Before, the first
/// connection waited for ever and (V3) every later one was reset while it lived.
#[test]
fn a_stream_start_the_relay_drops_is_given_up_after_start_wait() {
    for (version, half_close) in [
        (Version::V3, false),
        (Version::V3, true),
        (Version::V2, false),
        (Version::V1, false),
    ] {
        let limits = Limits {
            half_close,
            ..Limits::default()
        };
        let case = format!("{version:?}, half_close {half_close}");
        let mut pair = Pair::with(&["SSH1"], (version, limits), (version, limits));
        let first = pair.src.handle_accept("SSH1").unwrap();
        let stream = pair.src.started_stream(first).expect("a new stream");
        let dropped = pair.src.drain();
        assert_eq!(sent_kinds(&dropped)[0], Type::STREAM_START, "{case}");
        pair.src.handle_local_data(first, b"anyone there?");
        pair.run();
        assert!(pair.dst_got.is_empty(), "{case}: the DATA is stale to it");
        if version == Version::V3 {
            let second = pair.src.handle_accept("SSH1").unwrap();
            assert_eq!(pair.src.started_stream(second), None, "{case}");
            pair.run();
            assert_eq!(
                pair.src_closed,
                [second],
                "{case}: reset by the destination"
            );
        }
        pair.src.handle_start_wait_over("SSH1", stream);
        let actions = pair.src.drain();
        assert!(
            actions.contains(&Action::Close { local: first }),
            "{case}: {actions:?}"
        );
        assert_eq!(sent_kinds(&actions), [Type::STREAM_RESET], "{case}");
        assert_eq!(pair.src.lost_starts(), 1, "{case}");
        for a in actions {
            if let Action::Send(f) = a {
                pair.dst.bytes(&f).unwrap();
            }
        }
        pair.run();
        // The next connection starts a new stream, which the relay passes this time.
        let next = pair.src.handle_accept("SSH1").unwrap();
        let again = pair.src.started_stream(next).expect("a new stream");
        assert_ne!(again, stream, "{case}");
        pair.run();
        pair.src.handle_local_data(next, b"ping");
        pair.run();
        let (&d, got) = pair.dst_got.iter().next().expect("the destination has it");
        assert_eq!(got, b"ping", "{case}");
        pair.dst.handle_local_data(d, b"pong");
        pair.run();
        assert_eq!(pair.src_got[&next], b"pong", "{case}");
        // The destination showed it has the stream: the wait's end leaves it be.
        pair.src.handle_start_wait_over("SSH1", again);
        assert_eq!(pair.src.drain(), [], "{case}");
        // And a stale wait (an older stream's) does nothing either.
        pair.src.handle_start_wait_over("SSH1", stream);
        assert_eq!(pair.src.drain(), [], "{case}");
        assert_eq!(pair.src.lost_starts(), 1, "{case}");
    }
}

/// With our destination's HELLO (half-close on both sides) a stream is known to be taken
/// at once, before any DATA: a silent first connection is not given up.
#[test]
fn a_hello_shows_the_stream_start_arrived() {
    let mut pair = Pair::with(
        &["SSH1"],
        (Version::V3, half_close_on()),
        (Version::V3, half_close_on()),
    );
    let local = pair.src.handle_accept("SSH1").unwrap();
    let stream = pair.src.started_stream(local).unwrap();
    pair.run();
    pair.src.handle_start_wait_over("SSH1", stream);
    assert_eq!(pair.src.drain(), []);
    assert_eq!(pair.src.lost_starts(), 0);
}
