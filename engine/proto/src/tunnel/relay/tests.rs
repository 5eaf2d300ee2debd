//! The relay session in memory: frames built with the codec and taken from the reference's
//! vectors, fed to a `Session`, its verdicts and actions checked.

use std::time::{Duration, Instant};

use super::super::vectors;
use super::{Action, Closing, Limits, Session, Side, Verdict, close};
use crate::tunnel::{Error, Message, Type, Version};

const SRC: Side = Side::Source;
const DST: Side = Side::Destination;

fn vector(what: &str) -> Vec<u8> {
    vectors::all()
        .into_iter()
        .find(|(_, description)| *description == what)
        .unwrap_or_else(|| panic!("no vector {what}"))
        .0
}

fn msg<'a>(kind: Type, stream_id: i32, service_id: &'a str, connection_id: u32) -> Message<'a> {
    Message {
        kind,
        stream_id,
        service_id,
        connection_id,
        ..Message::default()
    }
}

fn data<'a>(stream_id: i32, service_id: &'a str, connection_id: u32) -> Message<'a> {
    Message {
        payload: b"payload",
        ..msg(Type::DATA, stream_id, service_id, connection_id)
    }
}

fn frame(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    message.append_frame(&mut out).expect("encodes");
    out
}

fn session(services: &[&str]) -> Session {
    Session::new(
        services.iter().map(|s| s.to_string()).collect(),
        Limits::default(),
    )
    .expect("a valid tunnel")
}

/// A session with both peers connected (their SERVICE_IDS already taken).
fn paired(services: &[&str], source: Version, destination: Version, now: Instant) -> Session {
    let mut s = session(services);
    s.peer_connected(SRC, source, now);
    s.peer_connected(DST, destination, now);
    s
}

fn forward(s: &mut Session, side: Side, message: &Message<'_>) {
    assert_eq!(
        s.frame_from(side, message),
        Verdict::Forward,
        "{message:?} from {side:?}"
    );
}

fn sends(actions: &[Action]) -> Vec<(Side, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, frame } => Some((*to, frame.clone())),
            _ => None,
        })
        .collect()
}

fn is_policy(verdict: &Verdict) -> bool {
    matches!(
        verdict,
        Verdict::ClosePeer {
            code: close::POLICY_VIOLATION,
            ..
        }
    )
}

#[test]
fn service_ids_go_to_each_peer_on_connect_as_the_service_sends_them() {
    let now = Instant::now();
    let mut s = session(&["SSH1"]);
    let expected = vector("SERVICE_IDS [\"SSH1\"]");
    assert_eq!(
        s.peer_connected(DST, Version::V3, now),
        vec![Action::Send {
            to: DST,
            frame: expected.clone()
        }]
    );
    // Nothing goes to the peer already there: the protocol has no "peer present" message.
    assert_eq!(
        s.peer_connected(SRC, Version::V2, now),
        vec![Action::Send {
            to: SRC,
            frame: expected
        }]
    );

    let mut s = session(&[]);
    assert_eq!(
        sends(&s.peer_connected(SRC, Version::V3, now)),
        vec![(SRC, vector("SERVICE_IDS []"))]
    );
    // A V1 peer does not know SERVICE_IDS (a type it would refuse): it gets nothing.
    assert_eq!(s.peer_connected(DST, Version::V1, now), vec![]);

    let mut s = session(&["SSH1", "HTTP", "RDP"]);
    let [Action::Send { frame, .. }] = &s.peer_connected(SRC, Version::V3, now)[..] else {
        panic!("one SERVICE_IDS");
    };
    let ids = Message::decode(&frame[2..]).expect("decodes");
    assert_eq!(ids.kind, Type::SERVICE_IDS);
    assert_eq!(ids.available_service_ids, ["SSH1", "HTTP", "RDP"]);
}

#[test]
fn a_tunnel_with_bad_or_too_many_services_is_refused() {
    let bad = Session::new(vec!["SSH 1".into()], Limits::default()).unwrap_err();
    assert!(matches!(bad, Error::BadServiceId { .. }), "{bad:?}");
    let many = (0..600).map(|i| format!("{i:0>128}")).collect();
    let err = Session::new(many, Limits::default()).unwrap_err();
    assert!(matches!(err, Error::MessageTooLong { .. }), "{err:?}");
}

#[test]
fn the_v3_session_of_the_vectors_is_forwarded_and_stale_frames_dropped() {
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, Instant::now());
    for (side, what) in [
        (SRC, "V3 STREAM_START stream=1 svc=SSH1 conn=1"),
        (SRC, "V3 DATA stream=1 svc=SSH1 conn=1 payload \"x\""),
        (
            DST,
            "V3 DATA stream=1 svc=SSH1 conn=1 payload fb fc fd fe ff",
        ),
        (SRC, "V3 CONNECTION_START stream=1 svc=SSH1 conn=2"),
        (SRC, "V3 DATA stream=1 svc=SSH1 conn=2 payload \"hello-2\""),
        (DST, "V3 DATA stream=1 svc=SSH1 conn=2 payload \"hello-2\""),
        (SRC, "V3 CONNECTION_START stream=1 svc=SSH1 conn=3"),
        (SRC, "V3 CONNECTION_RESET stream=1 svc=SSH1 conn=1"),
    ] {
        let bytes = vector(what);
        assert_eq!(s.frame_bytes_from(side, &bytes), Verdict::Forward, "{what}");
    }
    assert_eq!(s.tracked_connections(), 2);
    // The destination's reset of connection 1 crossed the source's: dropped, since forwarding
    // it could end a later connection 1.
    let reset1 = vector("V3 CONNECTION_RESET stream=1 svc=SSH1 conn=1");
    assert_eq!(s.frame_bytes_from(DST, &reset1), Verdict::Drop);
    // DATA of the ended connection, in flight from either side: stale.
    let data1 = vector("V3 DATA stream=1 svc=SSH1 conn=1 payload \"x\"");
    assert_eq!(s.frame_bytes_from(DST, &data1), Verdict::Drop);
    // The destination cannot reach its target: it resets the stream (no connectionId).
    let stream_reset = vector("STREAM_RESET stream=1 svc=SSH1 (no connectionId)");
    assert_eq!(s.frame_bytes_from(DST, &stream_reset), Verdict::Forward);
    assert_eq!(s.open_stream("SSH1"), None);
    assert_eq!(s.tracked_connections(), 0);
    // Everything of stream 1 is stale now, from both sides.
    let data2 = vector("V3 DATA stream=1 svc=SSH1 conn=2 payload \"hello-2\"");
    assert_eq!(s.frame_bytes_from(SRC, &data2), Verdict::Drop);
    assert_eq!(s.frame_bytes_from(SRC, &stream_reset), Verdict::Drop);
    // A connection started on the ended stream is reset back to the source.
    let start3 = vector("V3 CONNECTION_START stream=1 svc=SSH1 conn=3");
    assert_eq!(
        s.frame_bytes_from(SRC, &start3),
        Verdict::Reply(vec![frame(&msg(Type::CONNECTION_RESET, 1, "SSH1", 3))])
    );
    // The source starts the next stream.
    forward(&mut s, SRC, &msg(Type::STREAM_START, 2, "SSH1", 1));
    assert_eq!(s.open_stream("SSH1"), Some(2));
}

/// A peer's messages in the format of a version: (serviceId, connectionId) it writes.
fn ids(version: Version, service: &str) -> (&str, u32) {
    version.ids(service, 1)
}

#[test]
fn every_pairing_of_versions_passes_a_stream_both_ways() {
    let now = Instant::now();
    for source in Version::ALL {
        for destination in Version::ALL {
            // A V1 peer works with a tunnel of at most one service (§6); a one-service tunnel
            // takes every pairing, the V1 form (no named service) too.
            for services in [&["SSH1"][..], &[][..]] {
                let service = services.first().copied().unwrap_or("");
                let mut s = paired(services, source, destination, now);
                let (src_svc, src_conn) = ids(source, service);
                let (dst_svc, dst_conn) = ids(destination, service);
                let case = format!("{source:?} -> {destination:?} on {services:?}");
                assert_eq!(
                    s.frame_from(SRC, &msg(Type::STREAM_START, 1, src_svc, src_conn)),
                    Verdict::Forward,
                    "{case}"
                );
                assert_eq!(
                    s.frame_from(SRC, &data(1, src_svc, src_conn)),
                    Verdict::Forward,
                    "{case}"
                );
                // A V3 destination answering a V2 or V1 stream falls back to its format, and
                // a V3 source counts a message without connectionId as connection 1.
                assert_eq!(
                    s.frame_from(DST, &data(1, dst_svc, dst_conn)),
                    Verdict::Forward,
                    "{case}"
                );
                if source == Version::V3 && destination == Version::V3 {
                    forward(&mut s, SRC, &msg(Type::CONNECTION_START, 1, src_svc, 2));
                    forward(&mut s, DST, &data(1, dst_svc, 2));
                    forward(&mut s, DST, &msg(Type::CONNECTION_RESET, 1, dst_svc, 2));
                }
                assert_eq!(
                    s.frame_from(DST, &msg(Type::STREAM_RESET, 1, dst_svc, 0)),
                    Verdict::Forward,
                    "{case}"
                );
                assert_eq!(s.open_stream(service), None, "{case}");
            }
        }
    }
}

#[test]
fn a_v3_source_runs_services_side_by_side_with_a_v2_destination() {
    let now = Instant::now();
    let mut s = paired(&["SSH", "HTTP"], Version::V3, Version::V2, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH", 1));
    forward(&mut s, SRC, &msg(Type::STREAM_START, 2, "HTTP", 1));
    forward(&mut s, DST, &data(1, "SSH", 0));
    forward(&mut s, DST, &data(2, "HTTP", 0));
    // Stream ids are per service: stream 1 is not open on HTTP.
    assert_eq!(s.frame_from(DST, &data(1, "HTTP", 0)), Verdict::Drop);
    forward(&mut s, DST, &msg(Type::STREAM_RESET, 1, "SSH", 0));
    assert_eq!(s.open_stream("SSH"), None);
    assert_eq!(s.open_stream("HTTP"), Some(2));
    forward(&mut s, SRC, &data(2, "HTTP", 1));
    // A second connection: the V2 destination does not know CONNECTION_START (it would
    // refuse it and reconnect), so the source's connection is reset instead.
    assert_eq!(
        s.frame_from(SRC, &msg(Type::CONNECTION_START, 2, "HTTP", 2)),
        Verdict::Reply(vec![frame(&msg(Type::CONNECTION_RESET, 2, "HTTP", 2))])
    );
    assert_eq!(s.frame_from(SRC, &data(2, "HTTP", 2)), Verdict::Drop);
    forward(&mut s, SRC, &data(2, "HTTP", 1));
    assert_eq!(s.tracked_connections(), 1);
}

#[test]
fn v1_peers_on_a_tunnel_with_several_services_lose_their_connection_only() {
    let now = Instant::now();
    let mut s = session(&["SSH", "HTTP"]);
    s.peer_connected(DST, Version::V3, now);
    let actions = s.peer_connected(SRC, Version::V1, now);
    assert!(
        matches!(
            actions[..],
            [Action::Close {
                to: SRC,
                code: close::POLICY_VIOLATION,
                ..
            }]
        ),
        "{actions:?}"
    );
    assert!(!s.is_connected(SRC));
    assert!(s.is_connected(DST));
    // Frames it sent before its connection went are dropped.
    assert_eq!(
        s.frame_from(SRC, &msg(Type::STREAM_START, 1, "", 0)),
        Verdict::Drop
    );
    assert_eq!(s.peer_gone(SRC), vec![]);

    // A V3 peer writing the V1 format on that tunnel.
    s.peer_connected(SRC, Version::V3, now);
    let verdict = s.frame_from(SRC, &msg(Type::STREAM_START, 1, "", 0));
    assert!(is_policy(&verdict), "{verdict:?}");
    assert!(s.is_connected(DST));
}

/// Each broken rule closes the sender, with 1008, and nothing else.
#[test]
fn each_rule_break_closes_only_its_sender() {
    let now = Instant::now();
    let unknown_field = {
        // STREAM_START stream=1 svc=SSH1 conn=1, then field 9 (varint 1).
        let mut f = vector("V3 STREAM_START stream=1 svc=SSH1 conn=1");
        f.extend_from_slice(&[0x48, 0x01]);
        f[1] += 2;
        f
    };
    let ignorable_unknown = Message {
        ignorable: true,
        ..msg(Type(42), 0, "", 0)
    };
    let mut service_ids = msg(Type::SERVICE_IDS, 0, "", 0);
    service_ids.available_service_ids = vec!["SSH1"];
    let cases: Vec<(&str, Side, bool, Vec<u8>)> = vec![
        // (what, sender, open stream 1 first, frame)
        ("SERVICE_IDS from a peer", SRC, false, frame(&service_ids)),
        (
            "SESSION_RESET from a peer",
            DST,
            false,
            frame(&msg(Type::SESSION_RESET, 0, "", 0)),
        ),
        (
            "STREAM_START from the destination",
            DST,
            false,
            frame(&msg(Type::STREAM_START, 1, "SSH1", 1)),
        ),
        (
            "CONNECTION_START from the destination",
            DST,
            true,
            frame(&msg(Type::CONNECTION_START, 1, "SSH1", 2)),
        ),
        ("a field outside the schema", SRC, false, unknown_field),
        (
            "type 0",
            SRC,
            false,
            frame(&msg(Type::UNKNOWN, 1, "SSH1", 1)),
        ),
        (
            "an unknown type, not ignorable",
            DST,
            false,
            frame(&msg(Type(42), 1, "SSH1", 1)),
        ),
        ("streamId 0", SRC, false, frame(&data(0, "SSH1", 1))),
        (
            "CONNECTION_START without connectionId",
            SRC,
            true,
            frame(&msg(Type::CONNECTION_START, 1, "SSH1", 0)),
        ),
        (
            "a service the tunnel does not have",
            SRC,
            false,
            frame(&msg(Type::STREAM_START, 1, "HTTP", 1)),
        ),
        (
            "switching to messages without serviceId",
            SRC,
            true,
            frame(&data(1, "", 1)),
        ),
        (
            "DATA before STREAM_START from the source",
            SRC,
            false,
            frame(&data(1, "SSH1", 1)),
        ),
        (
            "DATA before STREAM_START from the destination",
            DST,
            false,
            frame(&data(1, "SSH1", 1)),
        ),
        (
            "CONNECTION_START before STREAM_START",
            SRC,
            false,
            frame(&msg(Type::CONNECTION_START, 1, "SSH1", 2)),
        ),
        (
            "DATA for a connection never started",
            DST,
            true,
            frame(&data(1, "SSH1", 7)),
        ),
    ];
    for (what, side, open, bytes) in cases {
        let mut s = paired(&["SSH1", "SSH2"], Version::V3, Version::V3, now);
        if open {
            forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH1", 1));
            forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH2", 1));
        }
        let verdict = s.frame_bytes_from(side, &bytes);
        assert!(is_policy(&verdict), "{what}: {verdict:?}");
        // Whatever else it sent is dropped; the other peer is still connected.
        assert_eq!(
            s.frame_bytes_from(side, &frame(&ignorable_unknown)),
            Verdict::Drop,
            "{what}"
        );
        assert!(!s.is_connected(side), "{what}");
        assert!(s.is_connected(side.other()), "{what}");
        // Its connection down, the other peer hears each open stream reset, in its format.
        let resets = sends(&s.peer_gone(side));
        if open {
            assert_eq!(
                resets,
                vec![
                    (side.other(), frame(&msg(Type::STREAM_RESET, 1, "SSH1", 0))),
                    (side.other(), frame(&msg(Type::STREAM_RESET, 1, "SSH2", 0))),
                ],
                "{what}"
            );
        } else {
            assert_eq!(resets, vec![], "{what}");
        }
        // A new peer on that side works.
        s.peer_connected(side, Version::V3, now);
        forward(&mut s, SRC, &msg(Type::STREAM_START, 5, "SSH1", 1));
        forward(&mut s, DST, &data(5, "SSH1", 1));
    }

    // Garbage instead of a message: 1007.
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, now);
    assert_eq!(
        s.frame_bytes_from(SRC, &[0x00, 0x02, 0x08, 0xff]),
        Verdict::ClosePeer {
            code: close::INVALID_PAYLOAD,
            reason: close::UNDECODABLE
        }
    );
    assert!(s.is_connected(DST));
}

#[test]
fn ignorable_unknown_types_pass_so_agents_can_extend_the_protocol() {
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, Instant::now());
    let extension = Message {
        ignorable: true,
        payload: b"window 65536",
        ..msg(Type(100), 1, "SSH1", 1)
    };
    forward(&mut s, DST, &extension);
    forward(&mut s, SRC, &extension);
    s.peer_gone(DST);
    // No one to take it.
    assert_eq!(s.frame_from(SRC, &extension), Verdict::Drop);
}

#[test]
fn a_replaced_peer_makes_the_other_peer_reset_every_open_stream() {
    let now = Instant::now();
    let mut s = paired(&["SSH", "HTTP", "RDP"], Version::V3, Version::V3, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH", 1));
    forward(&mut s, SRC, &msg(Type::CONNECTION_START, 1, "SSH", 2));
    forward(&mut s, SRC, &msg(Type::STREAM_START, 4, "RDP", 1));

    // The source reconnects (same tokens) while the relay still holds the old connection.
    let actions = s.peer_replaced(SRC, Version::V3, now);
    assert_eq!(
        actions,
        vec![
            Action::CloseReplaced {
                side: SRC,
                code: close::NORMAL,
                reason: close::REPLACED
            },
            Action::Send {
                to: DST,
                frame: frame(&msg(Type::STREAM_RESET, 1, "SSH", 0))
            },
            Action::Send {
                to: DST,
                frame: frame(&msg(Type::STREAM_RESET, 4, "RDP", 0))
            },
            Action::Send {
                to: SRC,
                frame: frame(&Message {
                    kind: Type::SERVICE_IDS,
                    available_service_ids: vec!["SSH", "HTTP", "RDP"],
                    ..Message::default()
                })
            },
        ]
    );
    assert_eq!(s.tracked_connections(), 0);
    // The new source starts again at stream 1, connection 1 (§8).
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH", 1));
    forward(&mut s, DST, &data(1, "SSH", 1));
    // Its DATA for connection 2 was never started on this stream.
    assert!(is_policy(&s.frame_from(SRC, &data(1, "SSH", 2))));

    // peer_connected on an occupied side is a replacement too.
    let mut s = paired(&["SSH"], Version::V3, Version::V3, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 3, "SSH", 1));
    let actions = s.peer_connected(DST, Version::V2, now);
    assert!(matches!(
        actions[0],
        Action::CloseReplaced { side: DST, .. }
    ));
    assert_eq!(
        sends(&actions)[0],
        (SRC, frame(&msg(Type::STREAM_RESET, 3, "SSH", 0)))
    );
}

#[test]
fn resets_the_relay_writes_are_in_the_survivors_format() {
    let now = Instant::now();
    // A V1 destination on a one-service tunnel: no serviceId (vector "V1 STREAM_RESET").
    let mut s = paired(&["SSH1"], Version::V3, Version::V1, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH1", 1));
    assert_eq!(
        sends(&s.peer_gone(SRC)),
        vec![(DST, vector("V1 STREAM_RESET stream=1"))]
    );
    // A V3 peer that has written the V1 format: no serviceId either.
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "", 1));
    assert_eq!(
        sends(&s.peer_gone(DST)),
        vec![(SRC, vector("V1 STREAM_RESET stream=1"))]
    );
    // A V2 or V3 peer otherwise gets the serviceId, and no connectionId (as localproxy's).
    let mut s = paired(&["SSH1"], Version::V2, Version::V3, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH1", 0));
    assert_eq!(
        sends(&s.peer_gone(SRC)),
        vec![(
            DST,
            vector("STREAM_RESET stream=1 svc=SSH1 (no connectionId)")
        )]
    );
}

#[test]
fn without_a_destination_the_source_is_answered_with_resets() {
    let now = Instant::now();
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH1", 1));
    assert_eq!(
        sends(&s.peer_gone(DST)),
        vec![(SRC, frame(&msg(Type::STREAM_RESET, 1, "SSH1", 0)))]
    );
    // In flight before the reset reached it: stale.
    assert_eq!(s.frame_from(SRC, &data(1, "SSH1", 1)), Verdict::Drop);
    assert_eq!(
        s.frame_from(SRC, &msg(Type::CONNECTION_START, 1, "SSH1", 2)),
        Verdict::Reply(vec![frame(&msg(Type::CONNECTION_RESET, 1, "SSH1", 2))])
    );
    // A new local connection: the stream cannot start, its reset goes straight back.
    assert_eq!(
        s.frame_from(SRC, &msg(Type::STREAM_START, 2, "SSH1", 1)),
        Verdict::Reply(vec![frame(&msg(Type::STREAM_RESET, 2, "SSH1", 0))])
    );
    assert_eq!(s.open_stream("SSH1"), None);
    // A destination connects: the next stream goes through.
    s.peer_connected(DST, Version::V3, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 3, "SSH1", 1));
    forward(&mut s, DST, &data(3, "SSH1", 1));
}

#[test]
fn closing_the_tunnel_closes_both_peers_and_keeps_them_out() {
    let now = Instant::now();
    for (why, reason) in [
        (Closing::Closed, close::TUNNEL_CLOSED),
        (Closing::Expired, close::TUNNEL_EXPIRED),
    ] {
        let mut s = paired(&["SSH1"], Version::V3, Version::V3, now);
        forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH1", 1));
        assert_eq!(
            s.tunnel_closed(why),
            vec![
                Action::Close {
                    to: SRC,
                    code: close::NORMAL,
                    reason
                },
                Action::Close {
                    to: DST,
                    code: close::NORMAL,
                    reason
                },
            ]
        );
        assert_eq!(s.frame_from(SRC, &data(1, "SSH1", 1)), Verdict::Drop);
        // The peers were closed with a close frame: no resets follow when they go.
        assert_eq!(s.peer_gone(SRC), vec![]);
        assert_eq!(s.peer_gone(DST), vec![]);
        assert_eq!(
            s.peer_connected(SRC, Version::V3, now),
            vec![Action::Close {
                to: SRC,
                code: close::NORMAL,
                reason: close::TUNNEL_CLOSED
            }]
        );
    }
    // With one peer only.
    let mut s = session(&[]);
    s.peer_connected(DST, Version::V1, now);
    assert_eq!(s.tunnel_closed(Closing::Closed).len(), 1);
}

#[test]
fn a_silent_peer_is_pinged_then_dropped() {
    let t0 = Instant::now();
    let limits = Limits::default();
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, t0);
    assert_eq!(s.poll_timeout(), Some(t0 + limits.ping_after));
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(1)), vec![]);

    // The destination pings every 20 s (localproxy); the source sends nothing.
    let mut now = t0;
    let mut actions = Vec::new();
    while now < t0 + limits.idle_timeout {
        now += Duration::from_secs(20);
        s.peer_active(DST, now);
        actions.extend(s.handle_timeout(now));
    }
    assert_eq!(
        actions,
        vec![
            Action::Ping { to: SRC },
            Action::Disconnect {
                to: SRC,
                reason: "idle"
            }
        ]
    );
    assert!(!s.is_connected(SRC));
    assert!(s.is_connected(DST));
    assert_eq!(s.poll_timeout(), Some(now + limits.ping_after));

    // A pong (any bytes) after the ping keeps a peer.
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, t0);
    let pinged = t0 + limits.ping_after;
    assert_eq!(
        s.handle_timeout(pinged),
        vec![Action::Ping { to: SRC }, Action::Ping { to: DST }]
    );
    assert_eq!(s.poll_timeout(), Some(t0 + limits.idle_timeout));
    s.peer_active(SRC, pinged + Duration::from_secs(1));
    s.peer_active(DST, pinged + Duration::from_secs(1));
    // Silent again since its pong: pinged again, not dropped.
    assert_eq!(
        s.handle_timeout(t0 + limits.idle_timeout),
        vec![Action::Ping { to: SRC }, Action::Ping { to: DST }]
    );
    assert!(s.is_connected(SRC) && s.is_connected(DST));
}

#[test]
fn connections_per_service_are_bounded_and_refused_ones_reset() {
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let mut s = Session::new(vec!["SSH1".into()], limits).unwrap();
    let now = Instant::now();
    s.peer_connected(SRC, Version::V3, now);
    s.peer_connected(DST, Version::V3, now);
    forward(&mut s, SRC, &msg(Type::STREAM_START, 1, "SSH1", 1));
    forward(&mut s, SRC, &msg(Type::CONNECTION_START, 1, "SSH1", 2));
    forward(&mut s, SRC, &msg(Type::CONNECTION_START, 1, "SSH1", 3));
    assert_eq!(
        s.frame_from(SRC, &msg(Type::CONNECTION_START, 1, "SSH1", 4)),
        Verdict::Reply(vec![frame(&msg(Type::CONNECTION_RESET, 1, "SSH1", 4))])
    );
    // DATA the source sent before the reset reached it: dropped, not a rule break.
    assert_eq!(s.frame_from(SRC, &data(1, "SSH1", 4)), Verdict::Drop);
    // A duplicate goes to the destination, which answers it (§5).
    forward(&mut s, SRC, &msg(Type::CONNECTION_START, 1, "SSH1", 2));
    forward(&mut s, DST, &msg(Type::CONNECTION_RESET, 1, "SSH1", 2));
    forward(&mut s, SRC, &msg(Type::CONNECTION_START, 1, "SSH1", 5));
    assert_eq!(s.tracked_connections(), 3);
}

/// A hostile source floods the relay with connections, streams, data and resets: the
/// session's memory stays bounded (at most `max_connections` per service) and the destination
/// keeps its connection.
#[test]
fn a_flooding_peer_cannot_grow_the_session() {
    let now = Instant::now();
    let max = Limits::default().max_connections;
    let mut s = paired(&["A", "B", "C"], Version::V3, Version::V3, now);
    for service in ["A", "B", "C"] {
        forward(&mut s, SRC, &msg(Type::STREAM_START, 1, service, 1));
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut forwarded, mut refused) = (0, 0);
    for round in 0..100_000u32 {
        let r = next();
        let service = ["A", "B", "C"][(r % 3) as usize];
        let connection = (r >> 16) as u32 % 1_000_000 + 2;
        let message = match round % 10 {
            // Streams that are not open: stale, dropped, nothing kept.
            0 => data(((r >> 8) % 1000) as i32 + 2, service, 1),
            1 => msg(Type::CONNECTION_RESET, 1, service, connection),
            2 => msg(Type::STREAM_RESET, ((r >> 8) % 1000) as i32 + 2, service, 0),
            _ => msg(Type::CONNECTION_START, 1, service, connection),
        };
        match s.frame_from(SRC, &message) {
            Verdict::Forward => forwarded += 1,
            Verdict::Reply(frames) => {
                assert_eq!(
                    frames,
                    [frame(&msg(Type::CONNECTION_RESET, 1, service, connection))]
                );
                refused += 1;
            }
            Verdict::Drop => {}
            verdict => panic!("{message:?}: {verdict:?}"),
        }
        assert!(s.tracked_connections() <= 3 * max);
    }
    assert_eq!(
        s.tracked_connections(),
        3 * max,
        "the flood reached the bound"
    );
    assert!(forwarded >= 3 * max && refused > 0, "{forwarded} {refused}");
    assert!(s.is_connected(DST));
    forward(&mut s, DST, &data(1, "A", 1));

    // DATA of a stream the source never started, on a new connection: a rule break that costs
    // the source alone; nothing was kept for it.
    let mut s = paired(&["A"], Version::V3, Version::V3, now);
    assert!(is_policy(&s.frame_from(SRC, &data(77, "A", 1))));
    assert_eq!(s.tracked_connections(), 0);
    assert!(s.is_connected(DST));
}

/// WebSocket frames a client (an agent) writes for one binary message: masked, and cut into
/// `fragment`-byte frames as localproxy cuts at 4096.
fn client_message(message: &[u8], fragment: usize, out: &mut Vec<u8>) {
    use crate::ws::{Encoder, MAX_HEADER_LEN, OpCode, Role};
    let encoder = Encoder::new(Role::Client);
    let pieces: Vec<&[u8]> = message.chunks(fragment).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let mut buf = vec![0; MAX_HEADER_LEN];
        buf.extend_from_slice(piece);
        let end = buf.len();
        let opcode = if i == 0 {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        let mask = [i as u8, 0x5a, 0xa5, 0x3c];
        let start = encoder
            .frame_in_place(
                &mut buf,
                MAX_HEADER_LEN..end,
                opcode,
                i + 1 == pieces.len(),
                Some(mask),
            )
            .expect("frames");
        out.extend_from_slice(&buf[start..]);
    }
}

/// The relay's read side as the data plane will run it: WebSocket frames from `side` decoded,
/// their payloads cut into tunnel frames, each judged by the session; a forwarded frame's bytes
/// go out to the other peer as one unmasked WebSocket message.
fn relay_pass(s: &mut Session, side: Side, mut wire: Vec<u8>) -> (Vec<Verdict>, Vec<u8>) {
    use crate::tunnel::FrameDecoder;
    use crate::ws::{Decoder, Encoder, Item, Limits as WsLimits, MAX_HEADER_LEN, OpCode, Role};
    let mut ws = Decoder::new(Role::Server, WsLimits::default());
    let mut frames = FrameDecoder::new();
    let encoder = Encoder::new(Role::Server);
    let (mut verdicts, mut out) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < wire.len() {
        let decoded = ws.handle_bytes(&mut wire[at..]).expect("valid WebSocket");
        assert!(decoded.consumed > 0, "whole frames only in this test");
        let payload = match decoded.item {
            Some(Item::Binary(range)) => wire[at..][range].to_vec(),
            Some(Item::Reassembled(message)) => message,
            None => Vec::new(),
            Some(item) => panic!("{item:?}"),
        };
        at += decoded.consumed;
        let mut cut = frames.handle_bytes(&payload);
        while let Some(frame) = cut.next_frame() {
            let verdict = s.frame_bytes_from(side, frame.bytes());
            if verdict == Verdict::Forward {
                let mut buf = vec![0; MAX_HEADER_LEN];
                buf.extend_from_slice(frame.bytes());
                let end = buf.len();
                let start = encoder
                    .frame_in_place(&mut buf, MAX_HEADER_LEN..end, OpCode::Binary, true, None)
                    .expect("frames");
                out.extend_from_slice(&buf[start..]);
            }
            verdicts.push(verdict);
        }
    }
    (verdicts, out)
}

/// The messages a client (the other agent) reads from the relay's bytes.
fn client_reads(mut wire: Vec<u8>) -> Vec<Vec<u8>> {
    use crate::ws::{Decoder, Item, Limits as WsLimits, Role};
    let mut ws = Decoder::new(Role::Client, WsLimits::default());
    let mut messages = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let decoded = ws.handle_bytes(&mut wire[at..]).expect("valid WebSocket");
        match decoded.item {
            Some(Item::Binary(range)) => messages.push(wire[at..][range].to_vec()),
            item => panic!("the relay sends whole binary messages only: {item:?}"),
        }
        at += decoded.consumed;
    }
    messages
}

/// localproxy's framing (one tunnel frame a message, cut at 4096 bytes) and the joined and
/// split framings the reference allows a peer: the other peer reads each forwarded tunnel
/// frame as exactly one WebSocket message, byte for byte as sent (§11.5).
#[test]
fn forwarded_frames_reach_the_other_peer_unchanged_one_message_each() {
    let mut s = paired(&["SSH1"], Version::V3, Version::V3, Instant::now());
    let full = {
        let payload: Vec<u8> = (0..crate::tunnel::MAX_PAYLOAD).map(|i| i as u8).collect();
        frame(&Message {
            payload: &payload,
            ..msg(Type::DATA, 1, "SSH1", 1)
        })
    };
    assert_eq!(&full[..2], [0xfc, 0x10]);
    let sent = [
        vector("V3 STREAM_START stream=1 svc=SSH1 conn=1"),
        full,
        vector("V3 CONNECTION_START stream=1 svc=SSH1 conn=2"),
        vector("V3 DATA stream=1 svc=SSH1 conn=2 payload \"hello-2\""),
        vector("V3 CONNECTION_RESET stream=1 svc=SSH1 conn=1"),
        // Stale: connection 1 has ended. Dropped, so the reader never sees it.
        vector("V3 DATA stream=1 svc=SSH1 conn=1 payload \"x\""),
        vector("V3 DATA stream=1 svc=SSH1 conn=2 payload \"hello-2\""),
    ];
    let mut wire = Vec::new();
    for f in &sent[..2] {
        client_message(f, 4096, &mut wire);
    }
    // Two frames in one message, then one frame split across two messages.
    client_message(&[&sent[2][..], &sent[3][..]].concat(), 4096, &mut wire);
    client_message(&sent[4][..5], 4096, &mut wire);
    client_message(&sent[4][5..], 4096, &mut wire);
    client_message(&[&sent[5][..], &sent[6][..]].concat(), 7, &mut wire);

    let (verdicts, out) = relay_pass(&mut s, SRC, wire);
    let mut expected = vec![Verdict::Forward; 7];
    expected[5] = Verdict::Drop;
    assert_eq!(verdicts, expected);
    let mut forwarded = sent.to_vec();
    forwarded.remove(5);
    assert_eq!(client_reads(out), forwarded);
}
