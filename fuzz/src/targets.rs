//! The fuzz targets. Each takes any bytes and panics when an invariant breaks; the invariants
//! are stated in each function's doc.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use splice_proto::tunnel::{
    FrameDecoder, LENGTH_PREFIX, MAX_FRAME, MAX_MESSAGE, MAX_PAYLOAD, Message, Sender, Version,
};
use splice_proto::ws::{
    self, Decoder, Encoder, Item, Limits, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, MAX_REQUEST_LEN,
    OpCode, ParsedRequest, ParsedResponse, ProtocolError, Role, Subprotocol,
};

/// Piece lengths for feeding a stream in parts, from one seed byte: 1 byte at a time, a few
/// bytes, or up to 4 KiB (localproxy's WebSocket fragment size).
struct Pieces(u32);

impl Pieces {
    fn new(seed: u8) -> Pieces {
        Pieces(u32::from(seed).wrapping_mul(2_654_435_761) | 1)
    }

    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        let max_log = self.0 % 13;
        1 + (self.0 >> 4) as usize % (1 << max_log)
    }

    /// `stream` cut into pieces.
    fn cut<'a>(&mut self, mut stream: &'a [u8]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        while !stream.is_empty() {
            let (piece, rest) = stream.split_at(self.next().min(stream.len()));
            pieces.push(piece);
            stream = rest;
        }
        pieces
    }
}

/// The tunnel frame decoder over a byte stream (the first byte picks how the stream is cut
/// into pieces). Invariants:
/// * every frame is a whole frame: its length prefix, then that many bytes;
/// * the frames, then the bytes held, are the stream: nothing lost, reordered or made up;
/// * the bytes held are less than one frame ([`MAX_FRAME`]), and none are held between frames;
/// * feeding the stream in pieces gives the same frames as feeding it whole, and so does a
///   caller that stops taking frames and hands the bytes not taken back in;
/// * every frame's message passes [`message_invariants`].
pub fn tunnel_frames(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = decode_frames(&[stream], None);
    let mut generator = Pieces::new(seed);
    let pieces = generator.cut(stream);
    let pieced = decode_frames(&pieces, None);
    assert_eq!(
        whole, pieced,
        "frames differ when the stream comes in pieces"
    );
    let stopped = decode_frames(&pieces, Some(&mut generator));
    assert_eq!(
        whole, stopped,
        "frames differ when the caller stops taking them"
    );
    for frame in &whole {
        message_invariants(&frame[LENGTH_PREFIX..]);
    }
}

/// Feeds `pieces` to a [`FrameDecoder`], checks the framing invariants, returns the frames.
/// With `stop`, the caller takes at most that many frames of each `handle_bytes` (one to
/// three, from the generator) and then hands the bytes not taken to it again: they must not
/// have been taken.
fn decode_frames(pieces: &[&[u8]], mut stop: Option<&mut Pieces>) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    // The bytes of the stream the decoder took, and how many of them are in frames.
    let mut taken = Vec::new();
    let mut framed = 0;
    for piece in pieces {
        let mut rest: &[u8] = piece;
        loop {
            let limit = stop.as_mut().map_or(usize::MAX, |p| p.next() % 3 + 1);
            let mut out = decoder.handle_bytes(rest);
            let mut count = 0;
            let mut used_up = true;
            while let Some(frame) = out.next_frame() {
                let bytes = frame.bytes();
                assert!(bytes.len() >= LENGTH_PREFIX && bytes.len() <= MAX_FRAME);
                let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
                assert_eq!(
                    bytes.len(),
                    LENGTH_PREFIX + len,
                    "a frame of the wrong length"
                );
                assert_eq!(frame.message_bytes(), &bytes[LENGTH_PREFIX..]);
                frames.push(bytes.to_vec());
                count += 1;
                if count == limit {
                    used_up = false;
                    break;
                }
            }
            // The frames and the bytes held are what was taken of the stream, in order.
            let before = taken.len();
            let now_framed: usize = frames.iter().map(Vec::len).sum();
            let took = now_framed + decoder.buffered() - before;
            assert!(took <= rest.len(), "took more than it was given");
            if used_up {
                assert_eq!(took, rest.len(), "bytes given neither framed nor held");
            }
            taken.extend_from_slice(&rest[..took]);
            for frame in &frames[frames.len() - count..] {
                assert_eq!(
                    frame[..],
                    taken[framed..framed + frame.len()],
                    "a frame that is not the stream's next bytes"
                );
                framed += frame.len();
            }
            assert!(decoder.buffered() < MAX_FRAME, "holds a whole frame");
            assert_eq!(decoder.is_between_frames(), decoder.buffered() == 0);
            rest = &rest[took..];
            if used_up || rest.is_empty() {
                break;
            }
        }
    }
    frames
}

/// A tunnel `Message` alone ([`message_invariants`]), and as the one frame of a stream.
pub fn tunnel_message(data: &[u8]) {
    message_invariants(data);
    if data.len() <= MAX_MESSAGE {
        let mut frame = (data.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(data);
        assert_eq!(decode_frames(&[&frame], None), [frame]);
    }
}

/// Invariants of [`Message::decode`]:
/// * an error has a cost and a text; `check` and the accessors never panic;
/// * decode → encode → decode gives the same message (unknown fields dropped), and encoding
///   that again gives the same bytes (the encoding is canonical);
/// * `encoded_len` is what `encode` writes, and a buffer one byte short is refused;
/// * `append_frame` writes the length prefix and the encoding, or refuses a message longer
///   than [`MAX_MESSAGE`] and leaves its buffer as it was.
pub fn message_invariants(bytes: &[u8]) {
    let message = match Message::decode(bytes) {
        Ok(message) => message,
        Err(e) => {
            let _ = (e.cost(), e.to_string());
            return;
        }
    };
    for sender in [Sender::Source, Sender::Destination, Sender::Relay] {
        for receiver in [Version::V1, Version::V2, Version::V3] {
            for max in [MAX_PAYLOAD, usize::MAX] {
                if let Err(e) = message.check(sender, receiver, max) {
                    let _ = (e.cost(), e.to_string());
                }
            }
        }
    }
    let _ = message.format();
    assert!(message.connection() >= 1);

    let len = message.encoded_len();
    let mut encoded = vec![0; len];
    assert_eq!(message.encode(&mut encoded), Ok(len));
    if len > 0 {
        assert!(message.encode(&mut encoded[..len - 1]).is_err());
    }
    let again = Message::decode(&encoded).expect("a re-encoded message decodes");
    let expected = Message {
        unknown_fields: false,
        ..message.clone()
    };
    assert_eq!(
        again, expected,
        "decode -> encode -> decode changed the message"
    );
    let mut encoded_again = vec![0; again.encoded_len()];
    assert_eq!(again.encode(&mut encoded_again), Ok(len));
    assert_eq!(encoded, encoded_again, "the encoding is not canonical");

    let mut frame = vec![0xa5];
    match message.append_frame(&mut frame) {
        Ok(n) => {
            assert_eq!(n, LENGTH_PREFIX + len);
            assert_eq!(frame[1..3], (len as u16).to_be_bytes());
            assert_eq!(frame[3..], encoded[..]);
        }
        Err(_) => {
            assert!(
                len > MAX_MESSAGE,
                "append_frame refused a message that fits"
            );
            assert_eq!(frame, [0xa5], "a refused append_frame left bytes behind");
        }
    }
}

/// The relay's WebSocket decoder (it reads masked frames from agents): [`ws_decoder`].
pub fn ws_server(data: &[u8]) {
    ws_decoder(Role::Server, data);
}

/// The agent's WebSocket decoder (it reads unmasked frames from the relay): [`ws_decoder`].
pub fn ws_client(data: &[u8]) {
    ws_decoder(Role::Client, data);
}

/// What one WebSocket frame gave, with its bytes copied out of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    /// A binary message whole in one frame.
    Binary(Vec<u8>),
    /// A binary message reassembled from fragments.
    Reassembled(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
}

/// Everything a decoder gave for a stream, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    got: Vec<Got>,
    error: Option<ProtocolError>,
    in_message: bool,
    memory: usize,
    /// Bytes received and not consumed at the end (0 after an error: the rest is not read).
    unread: usize,
}

/// The WebSocket decoder for `role`. The first two bytes pick the limits (small ones, so the
/// limits are reached; or the tunnel's), the third how the stream is cut. Invariants:
/// * `consumed` is within the buffer, ranges are within the consumed frame;
/// * a binary frame is at most `max_frame`, a message at most `max_message`, a control frame's
///   payload at most 125 bytes, a close reason is UTF-8 and its code one that may be sent;
/// * the decoder holds at most `max_message` bytes ([`Decoder::memory`]), 0 between messages;
/// * with `max_frame` + [`MAX_HEADER_LEN`] bytes unread, it takes a frame or fails (a caller
///   whose buffer is that big never stalls);
/// * after a close frame it is closed and takes nothing more;
/// * feeding the stream in pieces gives the same items and the same error as feeding it whole;
/// * what it gave, encoded again by the peer's [`Encoder`] (messages fragmented to fit
///   `max_frame`), decodes to the same messages, pings, pongs and close.
pub fn ws_decoder(role: Role, data: &[u8]) {
    let [a, b, seed, stream @ ..] = data else {
        return;
    };
    let limit = |byte: u8| {
        if byte & 0x80 != 0 {
            Limits::TUNNEL_FRAME
        } else {
            usize::from(byte) * 16
        }
    };
    let limits = Limits {
        max_frame: limit(*a),
        max_message: limit(*b),
    };
    let whole = ws_run(role, limits, &[stream]);
    let pieces = Pieces::new(*seed).cut(stream);
    let pieced = ws_run(role, limits, &pieces);
    assert_eq!(
        whole, pieced,
        "items differ when the stream comes in pieces"
    );

    // Encode what was decoded again, as the peer would send it, and decode that.
    let peer = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let encoder = Encoder::new(peer);
    let mask = (peer == Role::Client).then_some([seed.wrapping_mul(31), *a, *b, 0x5a]);
    let mut again = Vec::new();
    for got in &whole.got {
        match got {
            Got::Binary(message) | Got::Reassembled(message) => {
                let pieces: Vec<&[u8]> = if message.is_empty() {
                    vec![&[]]
                } else {
                    message.chunks(limits.max_frame.max(1)).collect()
                };
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 {
                        OpCode::Binary
                    } else {
                        OpCode::Continuation
                    };
                    let at = again.len();
                    again.resize(at + MAX_HEADER_LEN, 0);
                    again.extend_from_slice(piece);
                    let end = again.len();
                    let start = encoder
                        .frame_in_place(
                            &mut again,
                            at + MAX_HEADER_LEN..end,
                            opcode,
                            i + 1 == pieces.len(),
                            mask,
                        )
                        .expect("frame a decoded message again");
                    again.drain(at..start);
                }
            }
            Got::Ping(payload) => encoder
                .control(OpCode::Ping, payload, mask, &mut again)
                .expect("encode a decoded ping again"),
            Got::Pong(payload) => encoder
                .control(OpCode::Pong, payload, mask, &mut again)
                .expect("encode a decoded pong again"),
            Got::Close(None, _) => encoder
                .control(OpCode::Close, &[], mask, &mut again)
                .expect("encode a decoded empty close again"),
            Got::Close(Some(code), reason) => {
                let reason = std::str::from_utf8(reason).expect("a UTF-8 reason");
                encoder
                    .close(*code, reason, mask, &mut again)
                    .expect("encode a decoded close again");
            }
        }
    }
    let redone = ws_run(role, limits, &[&again]);
    assert_eq!(
        redone.error, None,
        "what the peer's encoder wrote is refused"
    );
    assert_eq!(redone.unread, 0);
    let messages = |got: &[Got]| -> Vec<Got> {
        got.iter()
            .map(|g| match g {
                Got::Reassembled(m) => Got::Binary(m.clone()),
                other => other.clone(),
            })
            .collect()
    };
    assert_eq!(
        messages(&redone.got),
        messages(&whole.got),
        "decode -> encode -> decode changed the items"
    );
}

/// Runs a decoder over `pieces` as a caller does: appends each piece to a receive buffer and
/// calls `handle_bytes` while it consumes bytes, dropping them after each call.
fn ws_run(role: Role, limits: Limits, pieces: &[&[u8]]) -> Run {
    let mut decoder = Decoder::new(role, limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut got = Vec::new();
    let mut error = None;
    'pieces: for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let decoded = match decoder.handle_bytes(&mut buf) {
                Ok(decoded) => decoded,
                Err(e) => {
                    let code = e.close_code();
                    assert!(
                        matches!(code, 1002 | 1003 | 1007 | 1009),
                        "close code {code}"
                    );
                    error = Some(e);
                    break 'pieces;
                }
            };
            assert!(
                decoder.memory() <= limits.max_message,
                "holds more than max_message"
            );
            if !decoder.in_message() {
                assert_eq!(decoder.memory(), 0, "holds memory between messages");
            }
            let frame = &buf[..decoded.consumed];
            let slice = |range: &std::ops::Range<usize>| -> Vec<u8> {
                assert!(range.start <= range.end && range.end <= frame.len());
                frame[range.clone()].to_vec()
            };
            match &decoded.item {
                None => {}
                Some(Item::Binary(range)) => {
                    assert!(range.len() <= limits.max_frame && range.len() <= limits.max_message);
                    assert_eq!(range.end, decoded.consumed, "the payload ends the frame");
                    got.push(Got::Binary(slice(range)));
                }
                Some(Item::Reassembled(message)) => {
                    assert!(message.len() <= limits.max_message);
                    got.push(Got::Reassembled(message.clone()));
                }
                Some(Item::Ping(range)) => {
                    assert!(range.len() <= MAX_CONTROL_PAYLOAD);
                    got.push(Got::Ping(slice(range)));
                }
                Some(Item::Pong(range)) => {
                    assert!(range.len() <= MAX_CONTROL_PAYLOAD);
                    got.push(Got::Pong(slice(range)));
                }
                Some(Item::Close(close)) => {
                    assert!(decoder.is_closed() && !decoder.in_message());
                    let reason = slice(&close.reason);
                    assert!(std::str::from_utf8(&reason).is_ok(), "a reason not UTF-8");
                    if let Some(code) = close.code {
                        assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999));
                    } else {
                        assert!(reason.is_empty());
                    }
                    got.push(Got::Close(close.code, reason));
                }
            }
            if decoded.consumed == 0 {
                assert!(decoded.item.is_none(), "an item from no bytes");
                assert!(
                    buf.len() < limits.max_frame + MAX_HEADER_LEN,
                    "{} bytes unread and no frame taken: a caller would stall",
                    buf.len()
                );
                break;
            }
            assert!(decoded.consumed <= buf.len());
            buf.drain(..decoded.consumed);
        }
    }
    if decoder.is_closed() && error.is_none() {
        assert_eq!(
            decoder.handle_bytes(&mut []),
            Ok(ws::Decoded {
                consumed: 0,
                item: None
            })
        );
        assert_eq!(
            decoder.handle_bytes(&mut [0x88, 0x80]),
            Err(ProtocolError::AfterClose)
        );
    }
    Run {
        got,
        in_message: decoder.in_message(),
        memory: decoder.memory(),
        unread: if error.is_some() { 0 } else { buf.len() },
        error,
    }
}

/// The relay's upgrade request parser. Invariants:
/// * `Incomplete` only under [`MAX_REQUEST_LEN`] bytes;
/// * a request is at most the buffer and [`MAX_REQUEST_LEN`]; it parses the same alone (the
///   bytes after it are not looked at), and each shorter prefix of it is `Incomplete`;
/// * its 101 response is accepted by the agent's parser with the request's key, protocol and
///   the `channel-id` given (control characters left out);
/// * an error has a 4xx status, and its response is one head (no header line injected by the
///   channel id or the error text) with a body of its `Content-Length`.
pub fn upgrade_request(data: &[u8]) {
    let parsed = ws::parse_request(data);
    match &parsed {
        Ok(ParsedRequest::Incomplete) => assert!(data.len() < MAX_REQUEST_LEN),
        Ok(ParsedRequest::Complete { request, len }) => {
            let len = *len;
            assert!(len <= data.len() && len <= MAX_REQUEST_LEN);
            assert_eq!(ws::parse_request(&data[..len]), parsed);
            for prefix in [0, 1, 3, 4, 5, len / 2, len.saturating_sub(2), len - 1] {
                if prefix < len {
                    assert_eq!(
                        ws::parse_request(&data[..prefix]),
                        Ok(ParsedRequest::Incomplete),
                        "a prefix of {prefix} bytes of a request"
                    );
                }
            }
            let key = sec_websocket_key(&data[..len]).expect("a request that parses has a key");
            let channel = String::from_utf8_lossy(&data[len.saturating_sub(12)..len]);
            let response = request.accept_response(&channel);
            let safe: String = channel.chars().filter(|c| !c.is_control()).collect();
            assert_eq!(
                ws::parse_response(&response, &key, &[request.protocol]),
                Ok(ParsedResponse::Complete {
                    accepted: ws::Accepted {
                        protocol: request.protocol,
                        channel_id: Some(safe.trim().to_owned()),
                    },
                    len: response.len(),
                }),
                "the agent refuses the relay's 101"
            );
        }
        Err(e) => {
            let status = e.status();
            assert!((400..500).contains(&status));
            let channel = String::from_utf8_lossy(&data[..data.len().min(24)]);
            error_response_invariants(&e.response(Some(&channel)), status);
            error_response_invariants(&e.response(None), status);
        }
    }
}

/// The decoded `Sec-WebSocket-Key` of a request head: its one such header.
fn sec_websocket_key(head: &[u8]) -> Option<[u8; 16]> {
    // httparse takes a bare \n as a line end too; other headers may be any bytes.
    let mut keys = head.split(|&b| b == b'\n').filter_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let value = std::str::from_utf8(&line[colon + 1..]).ok()?;
        line[..colon]
            .eq_ignore_ascii_case(b"sec-websocket-key")
            .then(|| value.trim())
    });
    let key = keys.next()?;
    BASE64.decode(key).ok()?.try_into().ok()
}

/// An error response: one head with `status`, then a body of its `Content-Length`.
fn error_response_invariants(response: &[u8], status: u16) {
    let text = std::str::from_utf8(response).expect("a UTF-8 error response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")));
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        let (name, value) = line.split_once(": ").expect("a header line");
        assert!(
            [
                "Content-Type",
                "Content-Length",
                "Connection",
                "Sec-WebSocket-Version",
                "channel-id"
            ]
            .contains(&name),
            "an injected header line {line:?}"
        );
        if name == "Content-Length" {
            length = Some(value.parse::<usize>().expect("a number"));
        }
        assert!(!value.contains(['\r', '\n']));
    }
    assert_eq!(length, Some(body.len()));
}

/// The agent's check of the relay's 101. The first byte picks the subprotocols offered; the
/// key is [`RESPONSE_KEY`] (so the corpus's accept values stay right under mutation).
/// Invariants:
/// * `Incomplete` only under [`MAX_REQUEST_LEN`] bytes;
/// * a response is at most the buffer and [`MAX_REQUEST_LEN`], parses the same alone, and
///   each shorter prefix of it is `Incomplete`; its protocol is one offered;
/// * only a 5xx is transient.
pub fn upgrade_response(data: &[u8]) {
    let Some((&choice, response)) = data.split_first() else {
        return;
    };
    let offered: Vec<Subprotocol> = Subprotocol::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| choice & (1 << i) != 0)
        .map(|(_, p)| p)
        .collect();
    let parsed = ws::parse_response(response, &RESPONSE_KEY, &offered);
    match &parsed {
        Ok(ParsedResponse::Incomplete) => assert!(response.len() < MAX_REQUEST_LEN),
        Ok(ParsedResponse::Complete { accepted, len }) => {
            let len = *len;
            assert!(len <= response.len() && len <= MAX_REQUEST_LEN);
            assert!(offered.contains(&accepted.protocol));
            if let Some(id) = &accepted.channel_id {
                assert!(!id.contains(['\r', '\n']));
            }
            assert_eq!(
                ws::parse_response(&response[..len], &RESPONSE_KEY, &offered),
                parsed
            );
            for prefix in [
                0,
                1,
                4,
                5,
                len / 2,
                len.saturating_sub(2),
                len.saturating_sub(1),
            ] {
                if prefix < len {
                    assert_eq!(
                        ws::parse_response(&response[..prefix], &RESPONSE_KEY, &offered),
                        Ok(ParsedResponse::Incomplete),
                        "a prefix of {prefix} bytes of a response"
                    );
                }
            }
        }
        Err(e) => {
            let transient = matches!(e, ws::ResponseError::Rejected { status, .. } if *status >= 500 && *status < 600);
            assert_eq!(e.is_transient(), transient);
            let _ = e.to_string();
        }
    }
}

/// The `Sec-WebSocket-Key` (raw) that [`upgrade_response`] checks responses against.
pub const RESPONSE_KEY: [u8; 16] = *b"splice-fuzz-key!";

/// The agent's request ([`ws::ClientRequest::encode`]) read by the relay's parser: the first
/// byte picks the mode, whether a client token is sent and the subprotocols offered, the next
/// 16 are the key, the rest is the host, user agent, access token and client token, split at
/// NUL bytes (a token of the wrong shape is replaced by a valid one). Invariants: the relay
/// reads back the mode, tokens, the highest subprotocol offered, the host and user agent
/// (control characters left out, trimmed), and no header the agent did not write; an empty
/// host or no subprotocol is refused, nothing else.
pub fn client_request(data: &[u8]) {
    let [flags, rest @ ..] = data else {
        return;
    };
    let Some((key, rest)) = rest.split_first_chunk::<16>() else {
        return;
    };
    let mut fields = rest.split(|&b| b == 0).map(String::from_utf8_lossy);
    let mut field = || fields.next().unwrap_or_default();
    let (host, user_agent, access, client) = (field(), field(), field(), field());
    let access = ws::AccessToken::new(access.as_ref())
        .unwrap_or_else(|_| ws::AccessToken::new("AQGAAXhJk3yR").expect("a token"));
    let client = ws::ClientToken::new(client.as_ref()).unwrap_or_else(|_| {
        ws::ClientToken::new("6f1d4c3e-8a2b-4f7d-9c1e-2b3a4d5e6f70").expect("a client token")
    });
    let mode = if flags & 1 == 0 {
        ws::Mode::Source
    } else {
        ws::Mode::Destination
    };
    let protocols: Vec<Subprotocol> = Subprotocol::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| flags & (4 << i) != 0)
        .map(|(_, p)| p)
        .collect();
    let request = ws::ClientRequest {
        host: &host,
        mode,
        access_token: Some(&access),
        services: &[],
        client_token: (flags & 2 != 0).then_some(&client),
        protocols: &protocols,
        key: *key,
        user_agent: &user_agent,
    }
    .encode();
    let safe = |text: &str| -> String {
        let kept: String = text.chars().filter(|c| !c.is_control()).collect();
        kept.trim().to_owned()
    };
    let parsed = ws::parse_request(&request);
    if safe(&host).is_empty() {
        assert_eq!(parsed, Err(ws::UpgradeError::Header("Host")));
        return;
    }
    if protocols.is_empty() {
        assert_eq!(parsed, Err(ws::UpgradeError::Subprotocol));
        return;
    }
    if request.len() > MAX_REQUEST_LEN {
        assert_eq!(parsed, Err(ws::UpgradeError::TooLarge));
        return;
    }
    let Ok(ParsedRequest::Complete { request: got, len }) = parsed else {
        panic!("the relay refuses the agent's request: {parsed:?}");
    };
    assert_eq!(len, request.len());
    assert_eq!(got.mode, mode);
    assert_eq!(got.access_token, Some(access));
    assert_eq!(got.token_source, ws::TokenSource::Header);
    assert_eq!(got.client_token, (flags & 2 != 0).then(|| client.clone()));
    assert_eq!(Some(got.protocol), protocols.iter().copied().max());
    assert_eq!(got.host, safe(&host));
    assert_eq!(got.user_agent, Some(safe(&user_agent)));
    assert_eq!(got.origin, None);
}
