//! The frame codec: RFC 6455 §5.7's examples (as binary frames: the tunnel refuses text), the
//! encoder in place, and every error with its close code.

use super::*;

const HELLO: &[u8] = b"Hello";
/// The masking key of RFC 6455 §5.7's masked examples.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn rfc_hello_unmasked_and_masked() {
    // §5.7 with opcode 2 (binary) in place of 1 (text).
    let unmasked = hex("82 05 48 65 6c 6c 6f");
    let masked = hex("82 85 37 fa 21 3d 7f 9f 4d 51 58");
    assert_eq!(
        frame(Role::Server, OpCode::Binary, true, HELLO, None),
        unmasked
    );
    assert_eq!(
        frame(Role::Client, OpCode::Binary, true, HELLO, Some(KEY)),
        masked
    );
    assert_eq!(
        decode(Role::Client, &unmasked),
        Ok(vec![Got::Ranged(HELLO.to_vec())])
    );
    assert_eq!(
        decode(Role::Server, &masked),
        Ok(vec![Got::Ranged(HELLO.to_vec())])
    );
}

#[test]
fn rfc_text_hello_is_refused_with_1003() {
    for (role, bytes) in [
        (Role::Client, hex("81 05 48 65 6c 6c 6f")),
        (Role::Server, hex("81 85 37 fa 21 3d 7f 9f 4d 51 58")),
    ] {
        // Refused at the first byte, before the payload is there.
        let error = Decoder::new(role, Limits::default()).handle_bytes(&mut bytes[..1].to_vec());
        assert_eq!(error, Err(ProtocolError::Text));
        assert_eq!(
            ProtocolError::Text.close_code(),
            close_code::UNSUPPORTED_DATA
        );
        assert_eq!(decode(role, &bytes), Err(ProtocolError::Text));
    }
}

#[test]
fn rfc_fragmented_hello_is_reassembled() {
    let bytes = hex("02 03 48 65 6c 80 02 6c 6f");
    let mut ours = frame(Role::Server, OpCode::Binary, false, b"Hel", None);
    ours.extend(frame(Role::Server, OpCode::Continuation, true, b"lo", None));
    assert_eq!(ours, bytes);
    assert_eq!(
        decode(Role::Client, &bytes),
        Ok(vec![Got::Copied(HELLO.to_vec())])
    );
}

#[test]
fn rfc_ping_and_masked_pong() {
    let ping = hex("89 05 48 65 6c 6c 6f");
    let pong = hex("8a 85 37 fa 21 3d 7f 9f 4d 51 58");
    let mut out = Vec::new();
    Encoder::new(Role::Server)
        .control(OpCode::Ping, HELLO, None, &mut out)
        .unwrap();
    assert_eq!(out, ping);
    out.clear();
    Encoder::new(Role::Client)
        .control(OpCode::Pong, HELLO, Some(KEY), &mut out)
        .unwrap();
    assert_eq!(out, pong);
    assert_eq!(
        decode(Role::Client, &ping),
        Ok(vec![Got::Ping(HELLO.to_vec())])
    );
    assert_eq!(
        decode(Role::Server, &pong),
        Ok(vec![Got::Pong(HELLO.to_vec())])
    );
}

#[test]
fn rfc_256_bytes_and_64_kib() {
    for (len, header) in [
        (256, hex("82 7e 01 00")),
        (65536, hex("82 7f 00 00 00 00 00 01 00 00")),
    ] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let bytes = frame(Role::Server, OpCode::Binary, true, &payload, None);
        assert_eq!(bytes[..header.len()], header[..]);
        assert_eq!(bytes.len(), header.len() + len);
        assert_eq!(
            decode(Role::Client, &bytes),
            Ok(vec![Got::Ranged(payload.clone())])
        );
        // Masked, the header grows by the key.
        let masked = frame(Role::Client, OpCode::Binary, true, &payload, Some(KEY));
        assert_eq!(masked.len(), header.len() + 4 + len);
        assert_eq!(
            decode(Role::Server, &masked),
            Ok(vec![Got::Ranged(payload)])
        );
    }
}

#[test]
fn header_lengths_at_the_boundaries() {
    for (len, header) in [
        (0, 2),
        (125, 2),
        (126, 4),
        (65535, 4),
        (65536, 10),
        (131076, 10),
    ] {
        assert_eq!(header_len(len, false), header, "{len}");
        assert_eq!(header_len(len, true), header + 4, "{len}");
        let payload = vec![0xa5; len];
        let bytes = frame(
            Role::Client,
            OpCode::Binary,
            true,
            &payload,
            Some([1, 2, 3, 4]),
        );
        assert_eq!(bytes.len(), header + 4 + len);
        assert_eq!(decode(Role::Server, &bytes), Ok(vec![Got::Ranged(payload)]));
    }
}

#[test]
fn whole_message_is_a_range_of_the_input_unmasked_in_place() {
    let payload = b"tunnel frame bytes".to_vec();
    let mut buf = frame(
        Role::Client,
        OpCode::Binary,
        true,
        &payload,
        Some([9, 8, 7, 6]),
    );
    buf.extend_from_slice(&[0x82]); // the start of the next frame
    let mut decoder = Decoder::new(Role::Server, Limits::default());
    let decoded = decoder.handle_bytes(&mut buf).unwrap();
    assert_eq!(decoded.consumed, buf.len() - 1);
    let Some(Item::Binary(range)) = decoded.item else {
        panic!("{decoded:?}")
    };
    assert_eq!(range, 6..6 + payload.len());
    assert_eq!(&buf[range], &payload[..]);
    assert!(!decoder.in_message());
}

#[test]
fn localproxy_fragmentation_of_a_full_data_frame() {
    // A 64530-byte tunnel frame as localproxy sends it: 15 masked frames of 4096, then 3090.
    let mut rng = Rng(7);
    let message = rng.bytes(64530);
    let mut bytes = Vec::new();
    for (i, piece) in message.chunks(4096).enumerate() {
        let opcode = if i == 0 {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        let fin = i == 15;
        bytes.extend(frame(Role::Client, opcode, fin, piece, Some(rng.mask())));
    }
    assert_eq!(message.chunks(4096).count(), 16);
    assert_eq!(decode(Role::Server, &bytes), Ok(vec![Got::Copied(message)]));
}

#[test]
fn control_frames_interleave_with_fragments() {
    let mut bytes = frame(Role::Server, OpCode::Binary, false, b"ab", None);
    bytes.extend(frame(
        Role::Server,
        OpCode::Ping,
        true,
        b"1795325324811",
        None,
    ));
    bytes.extend(frame(
        Role::Server,
        OpCode::Continuation,
        false,
        b"cd",
        None,
    ));
    bytes.extend(frame(Role::Server, OpCode::Pong, true, b"", None));
    bytes.extend(frame(Role::Server, OpCode::Continuation, true, b"ef", None));
    bytes.extend(frame(Role::Server, OpCode::Binary, true, b"next", None));
    assert_eq!(
        decode(Role::Client, &bytes),
        Ok(vec![
            Got::Ping(b"1795325324811".to_vec()),
            Got::Pong(Vec::new()),
            Got::Copied(b"abcdef".to_vec()),
            Got::Ranged(b"next".to_vec()),
        ])
    );
}

#[test]
fn close_frames() {
    let mut out = Vec::new();
    Encoder::new(Role::Client)
        .close(close_code::NORMAL, "tunnel closed", Some(KEY), &mut out)
        .unwrap();
    assert_eq!(
        decode(Role::Server, &out),
        Ok(vec![Got::Close(Some(1000), "tunnel closed".into())])
    );
    assert_eq!(
        decode(Role::Client, &hex("88 00")),
        Ok(vec![Got::Close(None, String::new())])
    );
    assert_eq!(
        decode(Role::Client, &hex("88 02 0f a0")),
        Ok(vec![Got::Close(Some(4000), String::new())])
    );
    // A long reason is cut at a character boundary to fit 125 bytes.
    let long = "é".repeat(100);
    out.clear();
    Encoder::new(Role::Server)
        .close(close_code::INTERNAL_ERROR, &long, None, &mut out)
        .unwrap();
    let got = decode(Role::Client, &out).unwrap();
    let [Got::Close(Some(1011), reason)] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(reason.len(), 122);
    assert!(out.len() <= 2 + 125);
}

#[test]
fn nothing_is_taken_after_close() {
    let mut bytes = hex("88 02 03 e8");
    bytes.extend(hex("82 01 00"));
    let mut receiver = Receiver::new(Role::Client);
    assert_eq!(receiver.feed(&bytes), Err(ProtocolError::AfterClose));
    assert!(receiver.decoder.is_closed());
    assert_eq!(
        ProtocolError::AfterClose.close_code(),
        close_code::PROTOCOL_ERROR
    );
}

/// Each bad input, the role decoding it, and the error it must give.
#[test]
fn every_protocol_error_and_its_close_code() {
    let big = {
        let mut b = hex("82 7f");
        b.extend((Limits::TUNNEL_FRAME as u64 + 1).to_be_bytes());
        b
    };
    let mut two_messages = frame(Role::Server, OpCode::Binary, false, b"a", None);
    two_messages.extend(frame(Role::Server, OpCode::Binary, true, b"b", None));
    let cases: Vec<(&str, Role, Vec<u8>, ProtocolError, u16)> = vec![
        (
            "rsv1",
            Role::Client,
            hex("c2 00"),
            ProtocolError::ReservedBits(0x40),
            1002,
        ),
        (
            "rsv3",
            Role::Client,
            hex("92 00"),
            ProtocolError::ReservedBits(0x10),
            1002,
        ),
        (
            "opcode 3",
            Role::Client,
            hex("83 00"),
            ProtocolError::UnknownOpcode(3),
            1002,
        ),
        (
            "opcode 0xb",
            Role::Client,
            hex("8b 00"),
            ProtocolError::UnknownOpcode(0xb),
            1002,
        ),
        (
            "text",
            Role::Client,
            hex("81 00"),
            ProtocolError::Text,
            1003,
        ),
        (
            "unmasked client",
            Role::Server,
            hex("82 01 00"),
            ProtocolError::Unmasked,
            1002,
        ),
        (
            "masked server",
            Role::Client,
            hex("82 81 00 00 00 00 00"),
            ProtocolError::Masked,
            1002,
        ),
        (
            "ping of 126",
            Role::Client,
            hex("89 7e 00 7e"),
            ProtocolError::ControlTooLong(126),
            1002,
        ),
        (
            "fragmented ping",
            Role::Client,
            hex("09 00"),
            ProtocolError::ControlFragmented,
            1002,
        ),
        (
            "lone continuation",
            Role::Client,
            hex("80 01 00"),
            ProtocolError::UnexpectedContinuation,
            1002,
        ),
        (
            "binary inside a message",
            Role::Client,
            two_messages,
            ProtocolError::UnfinishedMessage,
            1002,
        ),
        (
            "length msb",
            Role::Client,
            hex("82 7f 80 00 00 00 00 00 00 00"),
            ProtocolError::LengthMsb,
            1002,
        ),
        (
            "frame too big",
            Role::Client,
            big,
            ProtocolError::FrameTooBig {
                len: 131_077,
                limit: 131_076,
            },
            1009,
        ),
        (
            "close of 1 byte",
            Role::Client,
            hex("88 01 03"),
            ProtocolError::CloseTooShort,
            1002,
        ),
        (
            "close 1005",
            Role::Client,
            hex("88 02 03 ed"),
            ProtocolError::BadCloseCode(1005),
            1002,
        ),
        (
            "close 999",
            Role::Client,
            hex("88 02 03 e7"),
            ProtocolError::BadCloseCode(999),
            1002,
        ),
        (
            "close 5000",
            Role::Client,
            hex("88 02 13 88"),
            ProtocolError::BadCloseCode(5000),
            1002,
        ),
        (
            "close not utf-8",
            Role::Client,
            hex("88 04 03 e8 c3 28"),
            ProtocolError::CloseReasonNotUtf8,
            1007,
        ),
    ];
    for (name, role, bytes, error, code) in cases {
        assert_eq!(
            decode_chunked(role, &bytes, bytes.len()),
            Err(error.clone()),
            "{name}"
        );
        assert_eq!(
            decode_chunked(role, &bytes, 1),
            Err(error.clone()),
            "{name}, byte at a time"
        );
        assert_eq!(error.close_code(), code, "{name}");
        // The close frame that answers it decodes on the other side with that code.
        let mut close = Vec::new();
        let (ours, mask) = match role {
            Role::Server => (Role::Server, None),
            Role::Client => (Role::Client, Some(KEY)),
        };
        Encoder::new(ours)
            .close_for(&error, mask, &mut close)
            .unwrap();
        let peer = if ours == Role::Server {
            Role::Client
        } else {
            Role::Server
        };
        let got = decode(peer, &close).unwrap();
        assert!(
            matches!(&got[..], [Got::Close(Some(c), _)] if *c == code),
            "{name}: {got:?}"
        );
    }
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    // 10 header bytes announce 2^40 bytes: refused without waiting for them.
    let mut header = hex("82 7f 00 00 01 00 00 00 00 00");
    let got = Decoder::new(Role::Client, Limits::default()).handle_bytes(&mut header);
    assert!(
        matches!(got, Err(ProtocolError::FrameTooBig { .. })),
        "{got:?}"
    );
    // A masked 16-bit length is refused before its key arrives.
    let limits = Limits {
        max_frame: 1000,
        max_message: 1000,
    };
    let got = Decoder::new(Role::Server, limits).handle_bytes(&mut hex("82 fe 04 00"));
    assert_eq!(
        got,
        Err(ProtocolError::FrameTooBig {
            len: 1024,
            limit: 1000
        })
    );
}

#[test]
fn reassembly_is_bounded_by_max_message() {
    let limits = Limits {
        max_frame: 100,
        max_message: 250,
    };
    let mut receiver = Receiver::with_limits(Role::Client, limits);
    let mut bytes = frame(Role::Server, OpCode::Binary, false, &[1; 100], None);
    bytes.extend(frame(
        Role::Server,
        OpCode::Continuation,
        false,
        &[2; 100],
        None,
    ));
    assert_eq!(receiver.feed(&bytes), Ok(vec![]));
    assert!(
        (200..=250).contains(&receiver.decoder.memory()),
        "{}",
        receiver.decoder.memory()
    );
    // The third fragment would make 300: refused from its header.
    let third = frame(Role::Server, OpCode::Continuation, true, &[3; 100], None);
    assert_eq!(
        receiver.feed(&third[..2]),
        Err(ProtocolError::MessageTooBig { limit: 250 })
    );
    // Exactly at the limit is fine.
    let mut receiver = Receiver::with_limits(Role::Client, limits);
    bytes.extend(frame(
        Role::Server,
        OpCode::Continuation,
        true,
        &[3; 50],
        None,
    ));
    let got = receiver.feed(&bytes).unwrap();
    assert_eq!(got[0].message().map(<[u8]>::len), Some(250));
    assert_eq!(
        receiver.decoder.memory(),
        0,
        "nothing kept between messages"
    );
}

#[test]
fn encoder_refuses_what_it_must_not_write() {
    let server = Encoder::new(Role::Server);
    let client = Encoder::new(Role::Client);
    let mut buf = vec![0; 20];
    assert_eq!(
        server.frame_in_place(&mut buf, 1..20, OpCode::Binary, true, None),
        Err(EncodeError::NoHeadroom { need: 2, have: 1 })
    );
    assert_eq!(
        client.frame_in_place(&mut buf, 4..20, OpCode::Binary, true, Some(KEY)),
        Err(EncodeError::NoHeadroom { need: 6, have: 4 })
    );
    assert_eq!(
        server.frame_in_place(&mut buf, 14..20, OpCode::Binary, true, Some(KEY)),
        Err(EncodeError::Masking { role: Role::Server })
    );
    assert_eq!(
        client.frame_in_place(&mut buf, 14..20, OpCode::Binary, true, None),
        Err(EncodeError::Masking { role: Role::Client })
    );
    assert_eq!(
        server.frame_in_place(&mut buf, 14..20, OpCode::Ping, false, None),
        Err(EncodeError::Control { len: 6, fin: false })
    );
    assert_eq!(
        server.frame_in_place(&mut buf, 14..30, OpCode::Binary, true, None),
        Err(EncodeError::Range(14..30))
    );
    let mut out = Vec::new();
    assert!(matches!(
        server.control(OpCode::Ping, &[0; 126], None, &mut out),
        Err(EncodeError::Control { .. })
    ));
    assert!(matches!(
        server.control(OpCode::Binary, b"x", None, &mut out),
        Err(EncodeError::Control { .. })
    ));
    assert_eq!(
        server.close(1005, "", None, &mut out),
        Err(EncodeError::CloseCode(1005))
    );
    assert!(out.is_empty());
}

#[test]
fn mask_matches_a_bytewise_xor_at_every_length() {
    let mut rng = Rng(3);
    for len in 0..40 {
        let data = rng.bytes(len);
        let key = rng.mask();
        let mut fast = data.clone();
        apply_mask(&mut fast, key);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(fast, slow, "{len}");
    }
}
