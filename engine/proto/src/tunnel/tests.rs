//! The tunnel codec against the wire vectors, proto3's decoding rules, the protocol's checks,
//! in-place DATA framing, the stream decoder over every split, and a bounded fuzz run.

use super::vectors;
use super::*;
use crate::test_rng::Rng;

fn msg<'a>(kind: Type, stream_id: i32, service_id: &'a str, connection_id: u32) -> Message<'a> {
    Message {
        kind,
        stream_id,
        service_id,
        connection_id,
        ..Message::default()
    }
}

fn data<'a>(
    stream_id: i32,
    service_id: &'a str,
    connection_id: u32,
    payload: &'a [u8],
) -> Message<'a> {
    Message {
        payload,
        ..msg(Type::DATA, stream_id, service_id, connection_id)
    }
}

/// What each vector of frames.md says it is, in the file's order.
fn expected() -> Vec<Message<'static>> {
    let ids = |list: Vec<&'static str>| Message {
        available_service_ids: list,
        ..msg(Type::SERVICE_IDS, 0, "", 0)
    };
    vec![
        ids(vec!["SSH1"]),
        ids(vec![]),
        msg(Type::STREAM_START, 1, "SSH1", 1),
        msg(Type::CONNECTION_START, 1, "SSH1", 2),
        msg(Type::CONNECTION_START, 1, "SSH1", 3),
        data(1, "SSH1", 1, b"x"),
        data(1, "SSH1", 2, b"hello-2"),
        data(1, "SSH1", 1, &[0xfb, 0xfc, 0xfd, 0xfe, 0xff]),
        msg(Type::CONNECTION_RESET, 1, "SSH1", 1),
        msg(Type::STREAM_RESET, 1, "SSH1", 0),
        msg(Type::STREAM_START, 1, "SSH1", 0),
        data(1, "SSH1", 0, b"x"),
        msg(Type::STREAM_START, 1, "", 0),
        data(1, "", 0, b"x"),
        msg(Type::STREAM_RESET, 1, "", 0),
        msg(Type::STREAM_START, 1, "", 1),
        data(1, "", 1, b"x"),
        msg(Type::CONNECTION_RESET, 1, "", 1),
    ]
}

/// Who sends each type of the vectors.
fn sender_of(kind: Type) -> Sender {
    if kind == Type::SERVICE_IDS {
        Sender::Relay
    } else {
        Sender::Source
    }
}

fn frame_of(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    message.append_frame(&mut out).expect("encodes");
    out
}

#[test]
fn every_vector_decodes_as_described_and_reencodes_identically() {
    let vectors = vectors::all();
    let expected = expected();
    assert_eq!(vectors.len(), expected.len());
    for ((bytes, what), want) in vectors.iter().zip(&expected) {
        let mut decoder = FrameDecoder::new();
        let mut frames = decoder.handle_bytes(bytes);
        let frame = frames
            .next_frame()
            .unwrap_or_else(|| panic!("{what}: no frame"));
        assert_eq!(frame.bytes(), &bytes[..], "{what}: one frame, all of it");
        let got = frame.decode().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(&got, want, "{what}");
        assert!(frames.next_frame().is_none(), "{what}");
        assert_eq!(frame_of(want), *bytes, "{what}: re-encoded");
        assert_eq!(
            want.check(sender_of(want.kind), Version::V3, MAX_PAYLOAD),
            Ok(true),
            "{what}"
        );
    }
}

#[test]
fn vectors_say_their_version() {
    let formats: Vec<Version> = expected().iter().map(Message::format).collect();
    use Version::*;
    assert_eq!(
        formats,
        [
            V2, V2, V3, V3, V3, V3, V3, V3, V3, V2, V2, V2, V1, V1, V1, V3, V3, V3
        ]
    );
}

#[test]
fn data_frames_in_place_equal_the_vectors() {
    for want in expected().iter().filter(|m| m.kind == Type::DATA) {
        let framing = DataFraming::new(
            want.stream_id,
            want.service_id,
            want.connection_id,
            want.payload.len(),
        )
        .expect("valid");
        let mut buf = vec![0xaa; DATA_HEADROOM + want.payload.len() + DATA_TAILROOM];
        buf[DATA_HEADROOM..DATA_HEADROOM + want.payload.len()].copy_from_slice(want.payload);
        let range = framing
            .frame_in_place(&mut buf, DATA_HEADROOM)
            .expect("room");
        assert_eq!(buf[range.clone()], frame_of(want)[..]);
        assert_eq!(range.len(), framing.frame_len());
        let mut joined = framing.head().to_vec();
        joined.extend_from_slice(want.payload);
        joined.extend_from_slice(framing.tail());
        assert_eq!(joined, frame_of(want));
    }
}

#[test]
fn full_data_frame_matches_the_reference() {
    // frames.md: 64512 bytes of payload, message length 64528 = fc10, payload key 22 80 f8 03.
    let payload = vec![7u8; MAX_PAYLOAD];
    let want = data(1, "SSH1", 1, &payload);
    let frame = frame_of(&want);
    assert_eq!(frame[..2], [0xfc, 0x10]);
    assert_eq!(
        frame[2..10],
        [0x08, 0x01, 0x10, 0x01, 0x22, 0x80, 0xf8, 0x03]
    );
    let framing = DataFraming::new(1, "SSH1", 1, MAX_PAYLOAD).expect("valid");
    assert_eq!(framing.head(), &frame[..10]);
    assert_eq!(framing.tail(), &frame[10 + MAX_PAYLOAD..]);
    // The worst case fits the headroom and the tailroom.
    let long_id = "a".repeat(MAX_SERVICE_ID);
    let worst = DataFraming::new(i32::MIN, &long_id, u32::MAX, MAX_PAYLOAD).expect("valid");
    assert_eq!(worst.head().len(), DATA_HEADROOM);
    assert_eq!(worst.tail().len(), DATA_TAILROOM);
    let worst_msg = data(i32::MIN, &long_id, u32::MAX, &payload);
    let mut joined = worst.head().to_vec();
    joined.extend_from_slice(&payload);
    joined.extend_from_slice(worst.tail());
    assert_eq!(joined, frame_of(&worst_msg));
}

#[test]
fn data_framing_refuses_what_it_cannot_frame() {
    assert_eq!(
        DataFraming::new(1, "", 0, MAX_PAYLOAD + 1).err(),
        Some(Error::PayloadTooLong {
            len: MAX_PAYLOAD + 1,
            max: MAX_PAYLOAD
        })
    );
    assert!(DataFraming::new(1, "", 0, 0).is_err());
    assert_eq!(
        DataFraming::new(0, "", 0, 1).err(),
        Some(Error::NoStreamId(Type::DATA))
    );
    assert!(matches!(
        DataFraming::new(1, "bad id", 0, 1),
        Err(Error::BadServiceId { .. })
    ));
    let framing = DataFraming::new(1, "SSH1", 1, 4).expect("valid");
    let mut small = [0u8; 8];
    assert!(matches!(
        framing.frame_in_place(&mut small, 2),
        Err(Error::BufferTooSmall { .. })
    ));
    assert!(matches!(
        framing.frame_in_place(&mut small, 7),
        Err(Error::BufferTooSmall { .. })
    ));
}

/// Decodes hex as one message (no prefix).
fn decode_hex(text: &str) -> Result<Message<'static>, Error> {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect();
    // Leaked: a test's few bytes, so the message may borrow them for 'static.
    Message::decode(Vec::leak(bytes))
}

#[test]
fn proto3_rules_defaults_order_repeats_and_unknown_fields() {
    let v1_data = data(1, "", 0, b"x");
    // Explicit defaults, as protobufjs writes them (ignorable=false as 18 00), and an empty
    // serviceId and a zero connectionId.
    assert_eq!(
        decode_hex("080110011800220178 2a00 3800".replace(' ', "").as_str()),
        Ok(v1_data.clone())
    );
    // Fields in any order.
    assert_eq!(
        decode_hex("2201781001 0801".replace(' ', "").as_str()),
        Ok(v1_data.clone())
    );
    // The last of a repeated scalar wins; payload and serviceId too.
    assert_eq!(
        decode_hex("0803100708011001220179220178"),
        Ok(v1_data.clone())
    );
    // Repeated strings accumulate.
    let ids = decode_hex("08053201613201623201612a00").expect("decodes");
    assert_eq!(ids.available_service_ids, ["a", "b", "a"]);
    // Unknown fields of every wire type are skipped and noted.
    for unknown in [
        "4801",
        "4d01020304",
        "490102030405060708",
        "4a03616263",
        "4b4801500c4c",
    ] {
        let with = decode_hex(&format!("08011001{unknown}220178")).expect(unknown);
        assert!(with.unknown_fields, "{unknown}");
        assert_eq!(
            Message {
                unknown_fields: false,
                ..with
            },
            v1_data,
            "{unknown}"
        );
    }
    // A large field number and a negative streamId (a 10-byte varint).
    let negative = msg(Type::STREAM_START, -1, "", 0);
    let bytes = frame_of(&negative);
    assert_eq!(bytes.len(), 2 + 2 + 11);
    assert_eq!(Message::decode(&bytes[2..]), Ok(negative));
    assert!(
        decode_hex("f8ffffff0f01")
            .expect("field 2^29-1")
            .unknown_fields
    );
    // An open enum: an unknown type is kept as it is.
    assert_eq!(decode_hex("0863").expect("type 99").kind, Type(99));
}

#[test]
fn service_ids_are_bounded_whatever_the_type() {
    // A message of nothing but empty ids (two bytes each) is refused once it names more than
    // the bound, before anything looks at its type; at the bound it decodes.
    let at_bound = "3200".repeat(MAX_SERVICE_IDS);
    let decoded = decode_hex(&format!("0805{at_bound}")).expect("at the bound");
    assert_eq!(decoded.available_service_ids.len(), MAX_SERVICE_IDS);
    let over = format!("0801{at_bound}3200");
    let err = decode_hex(&over).expect_err("over the bound");
    assert_eq!(err, Error::TooManyServiceIds);
    assert_eq!(err.cost(), Cost::Connection);
}

#[test]
fn malformed_messages_are_typed_errors() {
    let cases: &[(&str, Error)] = &[
        ("08", Error::Truncated { what: "varint" }),
        ("0801220578", Error::Truncated { what: "payload" }),
        ("2a0253", Error::Truncated { what: "serviceId" }),
        ("08ffffffffffffffffff02", Error::BadVarint),
        ("08ffffffffffffffffffff01", Error::BadVarint),
        ("00", Error::BadKey { key: 0 }),
        ("0f", Error::BadKey { key: 0x0f }),
        ("0e", Error::BadKey { key: 0x0e }),
        ("8080808020", Error::BadKey { key: 1 << 33 }),
        (
            "0a0101",
            Error::WrongWireType {
                field: 1,
                wire_type: 2,
                expected: 0,
            },
        ),
        (
            "2001",
            Error::WrongWireType {
                field: 4,
                wire_type: 0,
                expected: 2,
            },
        ),
        (
            "3d00000000",
            Error::WrongWireType {
                field: 7,
                wire_type: 5,
                expected: 0,
            },
        ),
        ("2a02c328", Error::NotUtf8 { field: 5 }),
        ("3201ff", Error::NotUtf8 { field: 6 }),
        ("4c", Error::BadGroup),
        ("4b54", Error::BadGroup),
        ("4b", Error::Truncated { what: "varint" }),
    ];
    for (hex, want) in cases {
        assert_eq!(decode_hex(hex).as_ref(), Err(want), "{hex}");
        assert_eq!(want.cost(), Cost::Connection);
    }
    // Groups nest up to prost's limit of 100 and not deeper.
    let nested = |depth: usize| format!("{}{}", "4b".repeat(depth), "4c".repeat(depth));
    assert!(decode_hex(&nested(100)).is_ok());
    assert_eq!(decode_hex(&nested(101)), Err(Error::BadGroup));
    let field_at = |depth: usize| format!("{}4801{}", "4b".repeat(depth), "4c".repeat(depth));
    assert!(decode_hex(&field_at(99)).is_ok());
    assert_eq!(decode_hex(&field_at(100)), Err(Error::BadGroup));
}

#[test]
fn check_applies_the_protocol_rules() {
    let max = MAX_PAYLOAD;
    assert_eq!(
        Message::default().check(Sender::Source, Version::V3, max),
        Err(Error::NoType)
    );
    let future = Message {
        kind: Type(9),
        ..Message::default()
    };
    assert_eq!(
        future.check(Sender::Source, Version::V3, max),
        Err(Error::UnknownType(Type(9)))
    );
    assert_eq!(
        Message {
            ignorable: true,
            ..future
        }
        .check(Sender::Source, Version::V3, max),
        Ok(false)
    );
    // A V1 or V2 receiver does not know the V3 types.
    let start = msg(Type::CONNECTION_START, 1, "SSH1", 2);
    assert_eq!(start.check(Sender::Source, Version::V3, max), Ok(true));
    assert_eq!(
        start.check(Sender::Source, Version::V2, max),
        Err(Error::UnknownType(Type::CONNECTION_START))
    );
    assert_eq!(
        msg(Type::SERVICE_IDS, 0, "", 0).check(Sender::Relay, Version::V1, max),
        Err(Error::UnknownType(Type::SERVICE_IDS))
    );
    for kind in [
        Type::DATA,
        Type::STREAM_START,
        Type::STREAM_RESET,
        Type::CONNECTION_RESET,
    ] {
        assert_eq!(
            msg(kind, 0, "", 1).check(Sender::Source, Version::V3, max),
            Err(Error::NoStreamId(kind))
        );
    }
    assert_eq!(
        msg(Type::SESSION_RESET, 0, "", 0).check(Sender::Relay, Version::V1, max),
        Ok(true)
    );
    assert_eq!(
        msg(Type::CONNECTION_RESET, 1, "SSH1", 0).check(Sender::Source, Version::V3, max),
        Err(Error::NoConnectionId(Type::CONNECTION_RESET))
    );
    // A payload above 64512 costs the stream, unless the receiver tolerates it (§12.3).
    let long = vec![0u8; MAX_PAYLOAD + 1];
    let err = data(1, "", 0, &long)
        .check(Sender::Source, Version::V1, max)
        .unwrap_err();
    assert_eq!(
        err,
        Error::PayloadTooLong {
            len: MAX_PAYLOAD + 1,
            max
        }
    );
    assert_eq!(err.cost(), Cost::Stream);
    assert_eq!(
        data(1, "", 0, &long).check(Sender::Source, Version::V1, MAX_MESSAGE),
        Ok(true)
    );
}

#[test]
fn each_sender_sends_only_its_types() {
    use Sender::*;
    let allowed = |kind: Type| -> Vec<Sender> {
        [Source, Destination, Relay]
            .into_iter()
            .filter(|s| kind.may_be_sent_by(*s))
            .collect()
    };
    assert_eq!(allowed(Type::SERVICE_IDS), [Relay]);
    assert_eq!(allowed(Type::SESSION_RESET), [Relay]);
    assert_eq!(allowed(Type::STREAM_START), [Source]);
    assert_eq!(allowed(Type::CONNECTION_START), [Source]);
    assert_eq!(allowed(Type::DATA), [Source, Destination]);
    assert_eq!(allowed(Type::CONNECTION_RESET), [Source, Destination]);
    assert_eq!(allowed(Type::STREAM_RESET), [Source, Destination, Relay]);
    assert_eq!(allowed(Type(42)), [Source, Destination, Relay]);
    let start = msg(Type::STREAM_START, 1, "SSH1", 1);
    let err = start
        .check(Destination, Version::V3, MAX_PAYLOAD)
        .unwrap_err();
    assert_eq!(
        err,
        Error::NotFromSender {
            kind: Type::STREAM_START,
            sender: Destination
        }
    );
    assert_eq!(err.cost(), Cost::Connection);
    assert!(
        msg(Type::SERVICE_IDS, 0, "", 0)
            .check(Source, Version::V3, MAX_PAYLOAD)
            .is_err()
    );
}

#[test]
fn versions_say_what_they_write() {
    assert_eq!(Version::V3.ids("SSH1", 2), ("SSH1", 2));
    assert_eq!(Version::V2.ids("SSH1", 2), ("SSH1", 0));
    assert_eq!(Version::V1.ids("SSH1", 2), ("", 0));
    // A V3 receiver counts a message without connectionId as connection 1.
    assert_eq!(msg(Type::DATA, 1, "SSH1", 0).connection(), 1);
    assert_eq!(msg(Type::DATA, 1, "SSH1", 3).connection(), 3);
    for v in Version::ALL {
        assert_eq!(Version::from_subprotocol(v.subprotocol()), Some(v));
    }
    assert_eq!(
        Version::from_subprotocol("aws.iot.securetunneling-4.0"),
        None
    );
    assert!(Version::V1.knows(Type::SESSION_RESET) && !Version::V1.knows(Type::SERVICE_IDS));
    assert!(!Version::V3.knows(Type::UNKNOWN));
    // A V2 STREAM_START written for a V1 peer is the V1 vector.
    let (svc, conn) = Version::V1.ids("SSH1", 1);
    assert_eq!(
        frame_of(&msg(Type::STREAM_START, 1, svc, conn)),
        [0, 4, 8, 2, 0x10, 1]
    );
    assert!(check_service_id("SSH1").is_ok() && check_service_id("a:b_c-9").is_ok());
    assert!(check_service_id("").is_err() && check_service_id("a b").is_err());
    assert!(check_service_id(&"a".repeat(MAX_SERVICE_ID + 1)).is_err());
}

#[test]
fn encoders_refuse_what_does_not_fit() {
    let big = vec![0u8; MAX_MESSAGE];
    let too_long = data(1, "", 0, &big);
    let mut out = Vec::new();
    assert!(matches!(
        too_long.append_frame(&mut out),
        Err(Error::MessageTooLong { .. })
    ));
    assert!(out.is_empty(), "nothing left behind");
    let mut small = [0u8; 4];
    assert_eq!(
        data(1, "", 0, b"x").encode_frame(&mut small),
        Err(Error::BufferTooSmall { need: 9, have: 4 })
    );
}

/// All the vectors as one stream, and the frames' messages.
fn stream() -> (Vec<u8>, Vec<Vec<u8>>) {
    let frames: Vec<Vec<u8>> = vectors::all().into_iter().map(|(bytes, _)| bytes).collect();
    (frames.concat(), frames)
}

/// Feeds `pieces` to a decoder; returns the frames it gave, each checked to decode.
fn feed(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    for piece in pieces {
        let mut frames = decoder.handle_bytes(piece);
        while let Some(frame) = frames.next_frame() {
            frame.decode().expect("a vector");
            out.push(frame.bytes().to_vec());
        }
        assert!(decoder.buffered() <= MAX_FRAME);
    }
    assert!(decoder.is_between_frames());
    out
}

#[test]
fn frames_are_cut_from_any_split_of_the_stream() {
    let (all, frames) = stream();
    assert_eq!(feed(&[&all]), frames, "joined");
    for at in 0..=all.len() {
        assert_eq!(feed(&[&all[..at], &all[at..]]), frames, "split at {at}");
    }
    let bytes: Vec<&[u8]> = all.chunks(1).collect();
    assert_eq!(feed(&bytes), frames, "byte by byte");
    for size in [2, 3, 5, 7, 13] {
        let chunks: Vec<&[u8]> = all.chunks(size).collect();
        assert_eq!(feed(&chunks), frames, "chunks of {size}");
    }
}

#[test]
fn whole_frames_are_borrowed_from_the_input() {
    let (all, _) = stream();
    let mut decoder = FrameDecoder::new();
    let mut frames = decoder.handle_bytes(&all);
    let range = all.as_ptr_range();
    while let Some(frame) = frames.next_frame() {
        assert!(range.contains(&frame.bytes().as_ptr()), "not copied");
    }
    // A cut stream is held, then finished by the next input; an empty frame (length 0) is a
    // frame whose message has every field at its default.
    let mut decoder = FrameDecoder::new();
    let first_and_a_byte = [
        0x00, 0x08, 0x08, 0x05, 0x32, 0x04, b'S', b'S', b'H', b'1', 0x00,
    ];
    let mut frames = decoder.handle_bytes(&first_and_a_byte);
    assert!(frames.next_frame().is_some());
    assert!(frames.next_frame().is_none());
    assert_eq!(decoder.buffered(), 1);
    assert!(!decoder.is_between_frames());
    let mut frames = decoder.handle_bytes(&[0x02, 0x08, 0x05, 0x00, 0x00]);
    assert_eq!(
        frames.next_frame().map(|f| f.bytes().to_vec()),
        Some(vec![0, 2, 8, 5])
    );
    let empty = frames.next_frame().expect("empty frame");
    assert_eq!(empty.decode(), Ok(Message::default()));
    assert!(frames.next_frame().is_none());
    assert!(decoder.is_between_frames());
}

/// Decodes anything without panicking; whatever decodes re-encodes to bytes that decode to
/// the same message.
fn decode_anything(bytes: &[u8]) {
    if let Ok(message) = Message::decode(bytes) {
        let _ = message.check(Sender::Source, Version::V3, MAX_PAYLOAD);
        let mut out = vec![0; message.encoded_len()];
        let len = message.encode(&mut out).expect("room");
        let again = Message::decode(&out[..len]).expect("re-decodes");
        assert_eq!(
            again,
            Message {
                unknown_fields: false,
                ..message
            }
        );
    }
}

#[test]
fn fuzz_random_and_mutated_bytes_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let vectors: Vec<Vec<u8>> = vectors::all().into_iter().map(|(b, _)| b).collect();
    let mut decoder = FrameDecoder::new();
    for round in 0..20_000 {
        let mut bytes = if round % 2 == 0 {
            let len = rng.below(64);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let mut bytes = vectors[rng.below(vectors.len())].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(4) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] = rng.next() as u8;
                    }
                    1 if !bytes.is_empty() => {
                        bytes.truncate(rng.below(bytes.len()));
                    }
                    2 => {
                        let at = rng.below(bytes.len() + 1);
                        bytes.insert(at, rng.next() as u8);
                    }
                    _ => {
                        let at = rng.below(bytes.len() + 1);
                        bytes.splice(
                            at..at,
                            [0x80, 0xff, 0x4b, 0x4c][..rng.below(4)].iter().copied(),
                        );
                    }
                }
            }
            bytes
        };
        decode_anything(&bytes);
        decode_anything(bytes.get(2..).unwrap_or(&[]));
        // The same bytes as a stream, in random pieces: frames come out, state stays bounded.
        if bytes.len() > 1 && rng.below(2) == 0 {
            bytes.truncate(bytes.len() - 1);
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(1 + rng.below(rest.len()));
            rest = tail;
            let mut frames = decoder.handle_bytes(piece);
            while let Some(frame) = frames.next_frame() {
                decode_anything(frame.message_bytes());
            }
            assert!(decoder.buffered() <= MAX_FRAME);
        }
    }
}
