//! splice-proto's hand-coded tunnel `Message` against prost code generated from
//! `Message.proto`, both ways: on every frames.md vector, on generated messages, and on random
//! and mutated bytes. Bounded and seeded, so every run checks the same cases.

use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use splice_proto::tunnel::{self, FrameDecoder};
use splice_tunnel_prost::{Message, Type};

#[path = "../../../engine/proto/src/tunnel/vectors.rs"]
#[allow(
    dead_code,
    reason = "shared with splice-proto's tests, which use all of it"
)]
mod vectors;

/// The hand-coded message as prost's.
fn to_prost(m: &tunnel::Message<'_>) -> Message {
    Message {
        r#type: m.kind.0,
        stream_id: m.stream_id,
        ignorable: m.ignorable,
        payload: m.payload.to_vec(),
        service_id: m.service_id.to_owned(),
        available_service_ids: m
            .available_service_ids
            .iter()
            .map(|s| s.to_string())
            .collect(),
        connection_id: m.connection_id,
    }
}

/// prost's message as the hand-coded one (borrowing from it).
fn from_prost(m: &Message) -> tunnel::Message<'_> {
    tunnel::Message {
        kind: tunnel::Type(m.r#type),
        stream_id: m.stream_id,
        ignorable: m.ignorable,
        payload: &m.payload,
        service_id: &m.service_id,
        available_service_ids: m.available_service_ids.iter().map(String::as_str).collect(),
        connection_id: m.connection_id,
        unknown_fields: false,
    }
}

fn hand_encode(m: &tunnel::Message<'_>) -> Vec<u8> {
    let mut out = vec![0; m.encoded_len()];
    let len = m.encode(&mut out).expect("room");
    assert_eq!(len, out.len());
    out
}

/// Both decoders on the same bytes: both refuse them, or both give the same message.
fn same_decoding(bytes: &[u8]) -> bool {
    let hand = tunnel::Message::decode(bytes);
    let prost = Message::decode(bytes);
    match (&hand, &prost) {
        (Ok(h), Ok(p)) => assert_eq!(to_prost(h), *p, "bytes {bytes:02x?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("bytes {bytes:02x?}: hand-coded {hand:?}, prost {prost:?}"),
    }
    hand.is_ok()
}

/// Both encoders on the same message: the same bytes, and each decodes the other's.
fn same_encoding(p: &Message) {
    let hand = from_prost(p);
    let bytes = hand_encode(&hand);
    assert_eq!(bytes, p.encode_to_vec(), "{p:?}");
    assert_eq!(hand.encoded_len(), p.encoded_len());
    assert_eq!(Message::decode(&bytes[..]).as_ref(), Ok(p));
    assert_eq!(tunnel::Message::decode(&bytes), Ok(hand));
}

#[test]
fn every_vector_is_the_same_in_both_codecs() {
    let vectors = vectors::all();
    assert_eq!(vectors.len(), 18, "every vector of frames.md");
    for (frame, what) in &vectors {
        let mut decoder = FrameDecoder::new();
        let mut frames = decoder.handle_bytes(frame);
        let one = frames.next_frame().expect("a frame");
        assert_eq!(one.bytes(), &frame[..], "{what}");
        let body = one.message_bytes();
        // prost, both ways: decoding the vector and encoding it again gives the same bytes.
        let p = Message::decode(body).unwrap_or_else(|e| panic!("{what}: prost: {e}"));
        assert_eq!(
            p.encode_to_vec(),
            body,
            "{what}: prost re-encodes the vector"
        );
        let h = one
            .decode()
            .unwrap_or_else(|e| panic!("{what}: hand-coded: {e}"));
        assert_eq!(to_prost(&h), p, "{what}: decoded alike");
        assert_eq!(
            hand_encode(&h),
            body,
            "{what}: hand-coded re-encodes the vector"
        );
        same_encoding(&p);
        // The length prefix: prost's encoded_len is what the prefix says.
        assert_eq!(
            u16::from_be_bytes([frame[0], frame[1]]) as usize,
            p.encoded_len(),
            "{what}"
        );
        assert!(Type::try_from(p.r#type).is_ok(), "{what}: a known type");
    }
}

fn edge_i32(rng: &mut StdRng) -> i32 {
    match rng.random_range(0..6) {
        0 => 0,
        1 => 1,
        2 => [-1, i32::MIN, i32::MAX, 127, 128, 16383, 16384][rng.random_range(0..7)],
        3 => rng.random_range(0..300),
        _ => rng.random(),
    }
}

fn some_string(rng: &mut StdRng) -> String {
    const PIECES: [&str; 8] = ["", "SSH1", "HTTP", "a", "é", "服务", "x-y_z:0", "\u{0}"];
    let mut s = String::new();
    for _ in 0..rng.random_range(0..4) {
        s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
    }
    if rng.random_range(0..20) == 0 {
        s.push_str(&"n".repeat(rng.random_range(100..300)));
    }
    s
}

fn some_message(rng: &mut StdRng) -> Message {
    let payload_len = match rng.random_range(0..10) {
        0..=2 => 0,
        3 => tunnel::MAX_PAYLOAD,
        4 => rng.random_range(100..2000),
        _ => rng.random_range(1..130),
    };
    Message {
        r#type: if rng.random_bool(0.8) {
            rng.random_range(0..9)
        } else {
            edge_i32(rng)
        },
        stream_id: edge_i32(rng),
        ignorable: rng.random(),
        payload: (0..payload_len).map(|_| rng.random()).collect(),
        service_id: some_string(rng),
        available_service_ids: (0..rng.random_range(0..4))
            .map(|_| some_string(rng))
            .collect(),
        connection_id: edge_i32(rng) as u32,
    }
}

#[test]
fn generated_messages_encode_and_decode_alike() {
    let mut rng = StdRng::seed_from_u64(0x7e57_0001);
    for _ in 0..5_000 {
        same_encoding(&some_message(&mut rng));
    }
}

/// A random field: any number 1 to 10 (the schema's and unknown ones), any wire type
/// (right, wrong or invalid), a value of some shape, sometimes truncated.
fn some_field(rng: &mut StdRng, out: &mut Vec<u8>) {
    let number: u64 = if rng.random_range(0..10) == 0 {
        rng.random_range(0..1 << 29)
    } else {
        rng.random_range(0..11)
    };
    let wire_type: u64 = match rng.random_range(0..10) {
        0..=3 => 0,
        4..=6 => 2,
        _ => rng.random_range(0..8),
    };
    varint(number << 3 | wire_type, out);
    match wire_type {
        0 => match rng.random_range(0..4) {
            0 => varint(rng.random(), out),
            1 => out.extend([0xff; 9].iter().chain(&[rng.random_range(0..4)])),
            _ => varint(rng.random_range(0..300), out),
        },
        1 => out.extend((0..8).map(|_| rng.random::<u8>())),
        2 => {
            let len = rng.random_range(0..12);
            varint(len, out);
            let bytes: Vec<u8> = if rng.random_bool(0.7) {
                (0..len).map(|_| rng.random_range(b'0'..=b'z')).collect()
            } else {
                (0..len).map(|_| rng.random()).collect()
            };
            out.extend(bytes);
        }
        5 => out.extend((0..4).map(|_| rng.random::<u8>())),
        _ => {}
    }
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[test]
fn random_and_mutated_bytes_decode_alike() {
    let mut rng = StdRng::seed_from_u64(0x7e57_0002);
    let vectors: Vec<Vec<u8>> = vectors::all()
        .into_iter()
        .map(|(b, _)| b[2..].to_vec())
        .collect();
    let mut accepted = 0;
    for round in 0..60_000 {
        let mut bytes = Vec::new();
        match round % 3 {
            0 => (0..rng.random_range(0..40)).for_each(|_| bytes.push(rng.random())),
            1 => (0..rng.random_range(1..6)).for_each(|_| some_field(&mut rng, &mut bytes)),
            _ => {
                bytes = vectors[rng.random_range(0..vectors.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..=bytes.len());
                    match rng.random_range(0..4) {
                        0 if at < bytes.len() => bytes[at] = rng.random(),
                        1 => bytes.truncate(at),
                        2 => bytes.insert(at, rng.random()),
                        _ => {
                            let mut field = Vec::new();
                            some_field(&mut rng, &mut field);
                            bytes.splice(at..at, field);
                        }
                    }
                }
            }
        }
        // Groups, which the schema never uses, now and then around what was made.
        if rng.random_range(0..20) == 0 {
            let number = rng.random_range(1..12u64);
            let mut grouped = Vec::new();
            varint(number << 3 | 3, &mut grouped);
            grouped.extend(&bytes);
            varint(
                if rng.random_bool(0.8) {
                    number
                } else {
                    number + 1
                } << 3
                    | 4,
                &mut grouped,
            );
            bytes = grouped;
        }
        if same_decoding(&bytes) {
            accepted += 1;
        }
    }
    // Both accepting and refusing were exercised.
    assert!(
        (5_000..55_000).contains(&accepted),
        "{accepted} of 60000 accepted"
    );
}

#[test]
fn deep_groups_decode_alike() {
    for depth in [1, 50, 99, 100, 101, 150] {
        for inner in [&[][..], &[0x48, 0x01][..]] {
            let mut bytes = vec![0x4b; depth];
            bytes.extend(inner);
            bytes.extend(vec![0x4c; depth]);
            same_decoding(&bytes);
        }
    }
}
