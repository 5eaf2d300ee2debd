//! tungstenite as an independent peer over an in-memory duplex stream: both directions, both
//! roles, binary messages of many sizes, fragments, pings, close, a text frame, and both sides
//! of the upgrade.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::Role as TRole;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode as TOpCode};
use tungstenite::{Bytes, Message, WebSocket};

use super::*;

type Queue = Rc<RefCell<VecDeque<u8>>>;

/// One end of an in-memory duplex stream; a read with nothing there would block.
struct End {
    rx: Queue,
    tx: Queue,
}

fn duplex() -> (End, End) {
    let (a, b) = (Queue::default(), Queue::default());
    (
        End {
            rx: a.clone(),
            tx: b.clone(),
        },
        End { rx: b, tx: a },
    )
}

impl Read for End {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        if rx.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rx.len().min(out.len());
        for (slot, byte) in out.iter_mut().zip(rx.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for End {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.tx.borrow_mut().extend(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Our side: the decoder and encoder on one end of the stream.
struct Ours {
    end: End,
    role: Role,
    receiver: Receiver,
    rng: Rng,
}

impl Ours {
    fn new(end: End, role: Role) -> Ours {
        Ours {
            end,
            role,
            receiver: Receiver::new(role),
            rng: Rng(11),
        }
    }

    fn mask(&mut self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(|| self.rng.mask())
    }

    fn send(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let mask = self.mask();
        let bytes = frame(self.role, opcode, fin, payload, mask);
        self.end.write_all(&bytes).unwrap();
    }

    /// Sends `message` as one frame, or in fragments of `fragment` bytes.
    fn send_message(&mut self, message: &[u8], fragment: Option<usize>) {
        let Some(size) = fragment.filter(|_| !message.is_empty()) else {
            return self.send(OpCode::Binary, true, message);
        };
        let pieces: Vec<&[u8]> = message.chunks(size).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            self.send(opcode, i + 1 == pieces.len(), piece);
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        let mask = self.mask();
        let mut out = Vec::new();
        Encoder::new(self.role)
            .close(code, reason, mask, &mut out)
            .unwrap();
        self.end.write_all(&out).unwrap();
    }

    /// Decodes everything that arrived (the way a driver hands over what it read).
    fn recv(&mut self) -> Result<Vec<Got>, ProtocolError> {
        let bytes: Vec<u8> = self.end.rx.borrow_mut().drain(..).collect();
        self.receiver.feed(&bytes)
    }
}

/// Everything tungstenite has to read now.
fn theirs_read(ws: &mut WebSocket<End>) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(message) => got.push(message),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return got,
            // After a close handshake: what came before it is all there is.
            Err(tungstenite::Error::ConnectionClosed) => return got,
            Err(e) => panic!("tungstenite: {e}"),
        }
    }
}

fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

const SIZES: [usize; 11] = [
    0, 1, 2, 125, 126, 127, 65535, 65536, 65537, 100_000, 131_076,
];

fn pair(our_role: Role) -> (Ours, WebSocket<End>) {
    let (a, b) = duplex();
    let their_role = match our_role {
        Role::Client => TRole::Server,
        Role::Server => TRole::Client,
    };
    (
        Ours::new(a, our_role),
        WebSocket::from_raw_socket(b, their_role, None),
    )
}

fn messages_both_ways(our_role: Role) {
    let (mut ours, mut theirs) = pair(our_role);
    for len in SIZES {
        let data = patterned(len);
        // Theirs to ours: one frame, so a range of our buffer.
        theirs
            .send(Message::Binary(Bytes::from(data.clone())))
            .unwrap();
        assert_eq!(
            ours.recv(),
            Ok(vec![Got::Ranged(data.clone())]),
            "{our_role:?} <- {len}"
        );
        // Ours to theirs, whole and in localproxy's 4096-byte fragments.
        ours.send_message(&data, None);
        ours.send_message(&data, Some(4096));
        let want = Message::Binary(Bytes::from(data.clone()));
        assert_eq!(
            theirs_read(&mut theirs),
            vec![want.clone(), want],
            "{our_role:?} -> {len}"
        );
    }
}

#[test]
fn messages_both_ways_with_tungstenite_as_client() {
    messages_both_ways(Role::Server);
}

#[test]
fn messages_both_ways_with_tungstenite_as_server() {
    messages_both_ways(Role::Client);
}

fn fragments_pings_and_close(our_role: Role) {
    let (mut ours, mut theirs) = pair(our_role);
    // Their fragmented message, a ping between its fragments.
    let data = patterned(10_000);
    let binary = TOpCode::Data(Data::Binary);
    let cont = TOpCode::Data(Data::Continue);
    theirs
        .write(Message::Frame(Frame::message(
            data[..3000].to_vec(),
            binary,
            false,
        )))
        .unwrap();
    theirs
        .write(Message::Ping(Bytes::from_static(b"1795325324811")))
        .unwrap();
    theirs
        .write(Message::Frame(Frame::message(
            data[3000..6000].to_vec(),
            cont,
            false,
        )))
        .unwrap();
    theirs
        .write(Message::Frame(Frame::message(
            data[6000..].to_vec(),
            cont,
            true,
        )))
        .unwrap();
    theirs.flush().unwrap();
    assert_eq!(
        ours.recv(),
        Ok(vec![
            Got::Ping(b"1795325324811".to_vec()),
            Got::Copied(data.clone())
        ])
    );
    // We answer the ping; they see the pong.
    ours.send(OpCode::Pong, true, b"1795325324811");
    assert_eq!(
        theirs_read(&mut theirs),
        vec![Message::Pong(Bytes::from_static(b"1795325324811"))]
    );
    // Our ping between our fragments: they read the ping, then the message, and answer the ping.
    ours.send(OpCode::Binary, false, &data[..5000]);
    ours.send(OpCode::Ping, true, b"p");
    ours.send(OpCode::Continuation, true, &data[5000..]);
    assert_eq!(
        theirs_read(&mut theirs),
        vec![
            Message::Ping(Bytes::from_static(b"p")),
            Message::Binary(Bytes::from(data))
        ]
    );
    theirs.flush().unwrap();
    assert_eq!(ours.recv(), Ok(vec![Got::Pong(b"p".to_vec())]));
    // We close; they read it and echo it.
    ours.close(close_code::NORMAL, "tunnel closed");
    let got = theirs_read(&mut theirs);
    let [Message::Close(Some(close))] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Normal, "tunnel closed")
    );
    // Their echo may already be out (then the connection is closed for them).
    match theirs.flush() {
        Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
        Err(e) => panic!("{e}"),
    }
    let got = ours.recv().unwrap();
    assert!(matches!(&got[..], [Got::Close(Some(1000), _)]), "{got:?}");
}

#[test]
fn fragments_pings_and_close_with_tungstenite_as_client() {
    fragments_pings_and_close(Role::Server);
}

#[test]
fn fragments_pings_and_close_with_tungstenite_as_server() {
    fragments_pings_and_close(Role::Client);
}

#[test]
fn their_close_and_their_text_frame() {
    for our_role in [Role::Server, Role::Client] {
        let (mut ours, mut theirs) = pair(our_role);
        theirs
            .close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Library(4000),
                reason: "expired".into(),
            }))
            .unwrap();
        assert_eq!(
            ours.recv(),
            Ok(vec![Got::Close(Some(4000), "expired".into())])
        );

        // A text frame costs the connection with 1003, which they read.
        let (mut ours, mut theirs) = pair(our_role);
        theirs.send(Message::Text("hello".into())).unwrap();
        let error = ours.recv().unwrap_err();
        assert_eq!(error, ProtocolError::Text);
        let mask = ours.mask();
        let mut out = Vec::new();
        Encoder::new(our_role)
            .close_for(&error, mask, &mut out)
            .unwrap();
        ours.end.write_all(&out).unwrap();
        let got = theirs_read(&mut theirs);
        let [Message::Close(Some(close))] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(close.code, CloseCode::Unsupported);
    }
}

const TOKEN: &str = "tunnel-access-token-0123456789";

#[test]
fn tungstenite_client_upgrades_against_our_server() {
    let (mut our_end, their_end) = duplex();
    let mut request = "ws://localhost/tunnel?local-proxy-mode=source"
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("access-token", TOKEN.parse().unwrap());
    headers.insert(
        "Sec-WebSocket-Protocol",
        "aws.iot.securetunneling-1.0, aws.iot.securetunneling-2.0"
            .parse()
            .unwrap(),
    );
    let Err(HandshakeError::Interrupted(mid)) = tungstenite::client(request, their_end) else {
        panic!("the handshake should wait for our answer")
    };
    let bytes: Vec<u8> = our_end.rx.borrow_mut().drain(..).collect();
    let Ok(ParsedRequest::Complete { request, len }) = parse_request(&bytes) else {
        panic!("{:?}", parse_request(&bytes))
    };
    assert_eq!(len, bytes.len());
    assert_eq!(
        (request.mode, request.protocol),
        (Mode::Source, Subprotocol::V2)
    );
    assert_eq!(request.access_token.as_ref().unwrap().secret(), TOKEN);
    our_end.write_all(&request.accept_response("chan")).unwrap();
    let (mut theirs, response) = mid.handshake().expect("tungstenite accepts our 101");
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"],
        "aws.iot.securetunneling-2.0"
    );
    assert_eq!(response.headers()["channel-id"], "chan");

    let mut ours = Ours::new(our_end, Role::Server);
    theirs
        .send(Message::Binary(Bytes::from_static(b"\x00\x02\x08\x05")))
        .unwrap();
    assert_eq!(
        ours.recv(),
        Ok(vec![Got::Ranged(b"\x00\x02\x08\x05".to_vec())])
    );
    ours.send_message(b"\x00\x08\x08\x05\x32\x04SSH1", None);
    assert_eq!(
        theirs_read(&mut theirs),
        vec![Message::Binary(Bytes::from_static(
            b"\x00\x08\x08\x05\x32\x04SSH1"
        ))]
    );
}

#[test]
fn tungstenite_client_sees_our_refusal() {
    let (mut our_end, their_end) = duplex();
    let request = "ws://localhost/tunnel?local-proxy-mode=source"
        .into_client_request()
        .unwrap();
    let Err(HandshakeError::Interrupted(mid)) = tungstenite::client(request, their_end) else {
        panic!("the handshake should wait for our answer")
    };
    let bytes: Vec<u8> = our_end.rx.borrow_mut().drain(..).collect();
    let error = parse_request(&bytes).unwrap_err();
    assert_eq!(error, UpgradeError::Subprotocol);
    our_end.write_all(&error.response(Some("chan"))).unwrap();
    match mid.handshake() {
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 400);
        }
        Err(HandshakeError::Failure(e)) => panic!("{e}"),
        Err(HandshakeError::Interrupted(_)) => panic!("interrupted"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn our_client_upgrades_against_tungstenite_server() {
    let (mut our_end, their_end) = duplex();
    let access = AccessToken::new(TOKEN).unwrap();
    let client = ClientToken::new("c".repeat(36)).unwrap();
    let ours = ClientRequest {
        host: "localhost",
        mode: Mode::Destination,
        access_token: Some(&access),
        services: &[],
        client_token: Some(&client),
        protocols: &Subprotocol::ALL,
        key: *b"0123456789abcdef",
        user_agent: "splice-engine/test",
    };
    our_end.write_all(&ours.encode()).unwrap();
    #[expect(clippy::result_large_err, reason = "tungstenite's Callback signature")]
    let callback = |request: &Request, mut response: Response| {
        assert_eq!(request.uri(), "/tunnel?local-proxy-mode=destination");
        assert_eq!(request.headers()["access-token"], TOKEN);
        assert_eq!(request.headers()["client-token"], "c".repeat(36).as_str());
        let offered = request.headers()["Sec-WebSocket-Protocol"]
            .to_str()
            .unwrap();
        assert!(
            offered.starts_with("aws.iot.securetunneling-3.0"),
            "{offered}"
        );
        response.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "aws.iot.securetunneling-3.0".parse().unwrap(),
        );
        Ok(response)
    };
    let mut theirs = match tungstenite::accept_hdr(their_end, callback) {
        Ok(ws) => ws,
        Err(HandshakeError::Interrupted(mid)) => mid.handshake().expect("handshake"),
        Err(HandshakeError::Failure(e)) => panic!("tungstenite refused our request: {e}"),
    };
    let bytes: Vec<u8> = our_end.rx.borrow_mut().drain(..).collect();
    let parsed = parse_response(&bytes, &ours.key, ours.protocols);
    let Ok(ParsedResponse::Complete { accepted, len }) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(len, bytes.len());
    assert_eq!(accepted.protocol, Subprotocol::V3);

    let mut ours = Ours::new(our_end, Role::Client);
    ours.send_message(&patterned(70_000), Some(4096));
    assert_eq!(
        theirs_read(&mut theirs),
        vec![Message::Binary(Bytes::from(patterned(70_000)))]
    );
    theirs
        .send(Message::Binary(Bytes::from(patterned(300))))
        .unwrap();
    assert_eq!(ours.recv(), Ok(vec![Got::Ranged(patterned(300))]));
}
