//! A bounded fuzz-style run: random and mutated input never panics the decoders, every error
//! names a close code or a 4xx, and the decoder never holds more than its limits.

use super::*;

const ROUNDS: u64 = 4000;

/// A valid stream of frames as `sender` writes them: messages whole and fragmented, controls
/// between fragments, a close at the end.
fn seed(rng: &mut Rng, sender: Role) -> Vec<u8> {
    let mask = |rng: &mut Rng| (sender == Role::Client).then(|| rng.mask());
    let mut out = Vec::new();
    let payload = rng.upto(200);
    out.extend(frame(sender, OpCode::Binary, true, &payload, mask(rng)));
    out.extend(frame(
        sender,
        OpCode::Binary,
        false,
        &rng.upto(150),
        mask(rng),
    ));
    out.extend(frame(sender, OpCode::Ping, true, &rng.upto(125), mask(rng)));
    out.extend(frame(
        sender,
        OpCode::Continuation,
        true,
        &rng.upto(300),
        mask(rng),
    ));
    let mut close = Vec::new();
    Encoder::new(sender)
        .close(1000, "bye", mask(rng), &mut close)
        .unwrap();
    out.extend(close);
    out
}

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(4) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 if at < bytes.len() => bytes[at] = rng.next() as u8,
            2 => bytes.insert(at, rng.next() as u8),
            _ => bytes.truncate(at.max(1)),
        }
    }
    bytes
}

#[test]
fn frames_random_and_mutated_never_panic_and_stay_bounded() {
    let limits = Limits {
        max_frame: 300,
        max_message: 600,
    };
    let mut rng = Rng(0x5eed_1e55);
    let mut errors = 0;
    for round in 0..ROUNDS {
        let role = if round % 2 == 0 {
            Role::Server
        } else {
            Role::Client
        };
        let sender = if role == Role::Server {
            Role::Client
        } else {
            Role::Server
        };
        let input = match round % 4 {
            0 => {
                let n = rng.below(600);
                rng.bytes(n)
            }
            _ => {
                let valid = seed(&mut rng, sender);
                mutate(&mut rng, valid)
            }
        };
        let mut receiver = Receiver::with_limits(role, limits);
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(64));
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            match receiver.feed(piece) {
                Ok(got) => {
                    for item in got {
                        match &item {
                            Got::Ranged(m) | Got::Copied(m) => {
                                assert!(m.len() <= limits.max_message)
                            }
                            Got::Ping(p) | Got::Pong(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
                            Got::Close(code, reason) => {
                                assert!(code.is_some() || reason.is_empty());
                                assert!(reason.len() <= MAX_CONTROL_PAYLOAD - 2);
                            }
                        }
                    }
                }
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1003 | 1007 | 1009), "{e}");
                    errors += 1;
                    break;
                }
            }
            assert!(receiver.decoder.memory() <= limits.max_message);
            // What is held is at most one unfinished frame.
            assert!(
                receiver.buf.len() < MAX_HEADER_LEN + limits.max_frame,
                "{}",
                receiver.buf.len()
            );
        }
    }
    // The run did exercise the error paths, and not only them.
    assert!(errors > ROUNDS / 10 && errors < ROUNDS, "{errors}");
}

#[test]
fn upgrade_random_and_mutated_never_panic() {
    let mut rng = Rng(0xbad_5eed);
    let access = AccessToken::new("t".repeat(40)).unwrap();
    let request = ClientRequest {
        host: "localhost",
        mode: Mode::Source,
        access_token: Some(&access),
        services: &[],
        client_token: None,
        protocols: &Subprotocol::ALL,
        key: [1; 16],
        user_agent: "fuzz",
    }
    .encode();
    let response = match parse_request(&request) {
        Ok(ParsedRequest::Complete { request, .. }) => request.accept_response("c"),
        other => panic!("{other:?}"),
    };
    let mut complete = 0;
    for round in 0..ROUNDS {
        let input = match round % 3 {
            0 => {
                let n = rng.below(300);
                rng.bytes(n)
            }
            1 => mutate(&mut rng, request.clone()),
            _ => mutate(&mut rng, response.clone()),
        };
        match parse_request(&input) {
            Ok(ParsedRequest::Incomplete) => assert!(input.len() < MAX_REQUEST_LEN),
            Ok(ParsedRequest::Complete { len, .. }) => {
                assert!(len <= input.len());
                complete += 1;
            }
            Err(e) => {
                assert!((400..500).contains(&e.status()), "{e}");
                assert!(!String::from_utf8_lossy(&e.response(None)).contains(access.secret()));
            }
        }
        match parse_response(&input, &[1; 16], &Subprotocol::ALL) {
            Ok(ParsedResponse::Complete { len, .. }) => assert!(len <= input.len()),
            Ok(ParsedResponse::Incomplete) | Err(_) => {}
        }
    }
    assert!(complete > 0);
}
