//! The seed corpus: the wire vectors of the protocol reference's frames.md
//! (`engine/proto/src/tunnel/vectors.txt`) and the upgrade requests localproxy was seen to send
//! (reference §2), in the input format of each target. `splice-fuzz seed` writes them into
//! `fuzz/corpus/<target>/seed-<hash>`; the corpus test checks that every one is there.

use splice_proto::tunnel::{Message, Type};
use splice_proto::ws::{
    self, AccessToken, ClientRequest, ClientToken, Encoder, MAX_HEADER_LEN, Mode, OpCode,
    ParsedRequest, Role, Subprotocol,
};

use crate::targets::RESPONSE_KEY;

/// frames.md's vectors, as in splice-proto's tests.
const VECTORS: &str = include_str!("../../engine/proto/src/tunnel/vectors.txt");

/// Every frame of frames.md.
pub fn vector_frames() -> Vec<Vec<u8>> {
    VECTORS
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let hex = line.split(' ').next().unwrap_or_default();
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("vectors.txt is hex"))
                .collect()
        })
        .collect()
}

/// A session as localproxy sends it: the vectors in order, then a DATA frame of 10000 bytes
/// (which localproxy splits into 4096-byte WebSocket fragments).
fn session() -> Vec<Vec<u8>> {
    let mut frames = vector_frames();
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let big = Message {
        kind: Type::DATA,
        stream_id: 1,
        payload: &payload,
        service_id: "SSH1",
        connection_id: 1,
        ..Message::default()
    };
    let mut frame = Vec::new();
    big.append_frame(&mut frame).expect("a frame that fits");
    frames.push(frame);
    frames
}

/// Seeds of every target: (target name, input).
pub fn all() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let frames = session();
    for (i, frame) in frames.iter().enumerate() {
        seeds.push(("tunnel_message", frame[2..].to_vec()));
        seeds.push(("tunnel_frames", [&[i as u8][..], frame].concat()));
    }
    // The whole session as one stream, cut three ways.
    let stream = frames.concat();
    for seed in [0u8, 1, 200] {
        seeds.push(("tunnel_frames", [&[seed][..], &stream].concat()));
    }

    for (target, role) in [("ws_server", Role::Client), ("ws_client", Role::Server)] {
        // The tunnel's limits, then small ones the frames overrun.
        for limits in [[0x80, 0x80], [0x04, 0x10]] {
            for (seed, frames) in [(0u8, &frames[..3]), (77, &frames[..])] {
                let mut input = vec![limits[0], limits[1], seed];
                input.extend(ws_session(role, frames, 4096));
                seeds.push((target, input));
            }
        }
        // Short ones: one tunnel frame each, in 5-byte fragments with a ping between them.
        for (i, frame) in frames[..frames.len() - 1].iter().enumerate() {
            let mut input = vec![0x80, if i % 2 == 0 { 0x80 } else { 0x02 }, i as u8];
            input.extend(ws_session(role, std::slice::from_ref(frame), 5));
            seeds.push((target, input));
        }
    }

    for request in requests() {
        seeds.push(("upgrade_request", request));
    }
    for response in responses() {
        seeds.push(("upgrade_response", response));
    }
    // client_request: flags, the key, then host, user agent, access token, client token.
    let fields = [
        (
            0b11111u8,
            [
                "localhost",
                USER_AGENT,
                "AQGAAXhJk3yRqmWcT0d1",
                CLIENT_TOKEN,
            ],
        ),
        (0b00100, ["relay.example.net", "", "t", ""]),
        (
            0b11000,
            [" h\r\nX-Injected: 1 ", "ua\r\n\r\nGET /", "tok", "short"],
        ),
    ];
    for (flags, fields) in fields {
        let mut input = vec![flags];
        input.extend_from_slice(b"0123456789abcdef");
        input.extend_from_slice(fields.join("\0").as_bytes());
        seeds.push(("client_request", input));
    }
    seeds
}

/// What a peer in `role` sends: a ping (localproxy's, milliseconds since the epoch), each
/// frame as one binary message in `fragment`-byte fragments (localproxy's are 4096 bytes),
/// a pong between fragments, then a close.
fn ws_session(role: Role, frames: &[Vec<u8>], fragment: usize) -> Vec<u8> {
    let encoder = Encoder::new(role);
    let mask = (role == Role::Client).then_some([0x37, 0xfa, 0x21, 0x3d]);
    let mut out = Vec::new();
    encoder
        .control(OpCode::Ping, b"1764720000000", mask, &mut out)
        .expect("a ping");
    for frame in frames {
        let pieces: Vec<&[u8]> = frame.chunks(fragment).collect();
        for (i, piece) in pieces.iter().enumerate() {
            if i == 1 {
                encoder
                    .control(OpCode::Pong, b"", mask, &mut out)
                    .expect("a pong");
            }
            let opcode = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            let at = out.len();
            out.resize(at + MAX_HEADER_LEN, 0);
            out.extend_from_slice(piece);
            let end = out.len();
            let start = encoder
                .frame_in_place(
                    &mut out,
                    at + MAX_HEADER_LEN..end,
                    opcode,
                    i + 1 == pieces.len(),
                    mask,
                )
                .expect("a frame");
            out.drain(at..start);
        }
    }
    encoder
        .control(OpCode::Pong, b"1764720000000", mask, &mut out)
        .expect("a pong");
    encoder.close(1000, "bye", mask, &mut out).expect("a close");
    out
}

const USER_AGENT: &str = "localproxy linux 64-bit/boost-1.81.0/openssl-3.0.0/protobuf-3.21.12";
const CLIENT_TOKEN: &str = "6f1d4c3e-8a2b-4f7d-9c1e-2b3a4d5e6f70";

/// Upgrade requests: localproxy v3.3.1's (reference §2, both modes, with and without a client
/// token; v3.1.2's is the one without), one with every subprotocol offered, and a browser's
/// (cookie, Origin).
fn requests() -> Vec<Vec<u8>> {
    let token = AccessToken::new("AQGAAXhJk3yRqmWcT0d1_example-access-token").expect("a token");
    let client = ClientToken::new(CLIENT_TOKEN).expect("a client token");
    let mut requests = Vec::new();
    for mode in [Mode::Source, Mode::Destination] {
        for client_token in [None, Some(&client)] {
            for protocols in [&[Subprotocol::V3][..], &Subprotocol::ALL] {
                let request = ClientRequest {
                    host: "localhost",
                    mode,
                    access_token: Some(&token),
                    services: &[],
                    client_token,
                    protocols,
                    key: *b"0123456789abcdef",
                    user_agent: USER_AGENT,
                };
                requests.push(request.encode());
            }
        }
    }
    requests.push(
        b"GET /tunnel?local-proxy-mode=destination HTTP/1.1\r\n\
          Host: relay.example.net\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Origin: https://console.example.net\r\n\
          Sec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Protocol: aws.iot.securetunneling-2.0, aws.iot.securetunneling-1.0\r\n\
          Cookie: theme=dark; awsiot-tunnel-token=\"AQGAAXhJk3yRqmWcT0d1\"\r\n\r\n"
            .to_vec(),
    );
    requests
}

/// Relay responses, after the byte that picks what was offered ([`crate::targets`]): the 101 of
/// each subprotocol for [`RESPONSE_KEY`], and refusals (a 4xx and a 5xx).
fn responses() -> Vec<Vec<u8>> {
    let token = AccessToken::new("token").expect("a token");
    let mut responses = Vec::new();
    for (i, protocol) in Subprotocol::ALL.into_iter().enumerate() {
        let request = ClientRequest {
            host: "localhost",
            mode: Mode::Source,
            access_token: Some(&token),
            services: &[],
            client_token: None,
            protocols: &[protocol],
            key: RESPONSE_KEY,
            user_agent: USER_AGENT,
        }
        .encode();
        let Ok(ParsedRequest::Complete { request, .. }) = ws::parse_request(&request) else {
            panic!("our own request does not parse");
        };
        let accept = request.accept_response("fb7fe0d5-7b8c-4c1e-a3c4-5d6e7f8091a2");
        responses.push([&[1u8 << i][..], &accept].concat());
        responses.push([&[0x07][..], &accept, b"\x82\x02\x00\x00"].concat());
    }
    for status in [400, 503] {
        responses.push([&[0x07][..], &ws::error_response(status, "no", Some("ch"))].concat());
    }
    responses
}
