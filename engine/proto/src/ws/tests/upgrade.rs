//! The upgrade: localproxy's request, tokens, subprotocols, every refusal and its status, and
//! the client's side.

use super::*;

const TOKEN: &str = "AQGAAXiVzSmRL1VXcdCCcJNBiAAAAMwgyhO2ZxpAdLAvzN3lTFw0ms2XOfpvmxSyMO6LApbv3Ugl";
const CLIENT_TOKEN: &str = "5f1a1c2e-3d4b-4a5c-9e8f-0a1b2c3d4e5f";
/// RFC 6455 §1.3's key and its accept value.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A request in localproxy v3.3.1's shape, with `extra` header lines before User-Agent.
fn request(target: &str, extra: &[&str]) -> Vec<u8> {
    let mut r = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
         Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str(
        "User-Agent: localproxy linux 64-bit/boost-1.81.0/openssl-3.0.0/protobuf-3.21.12\r\n\r\n",
    );
    r.into_bytes()
}

fn localproxy(extra: &[&str]) -> Vec<u8> {
    let mut headers = vec!["Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0"];
    headers.extend_from_slice(extra);
    request("/tunnel?local-proxy-mode=source", &headers)
}

fn complete(bytes: &[u8]) -> (UpgradeRequest, usize) {
    match parse_request(bytes) {
        Ok(ParsedRequest::Complete { request, len }) => (request, len),
        other => panic!("{other:?}"),
    }
}

/// A request without a token parses (the relay decides: a peer with a client certificate may
/// pair by it, any other gets a 401), with the services a destination announces.
#[test]
fn no_token_and_announced_services() {
    let (request, _) = complete(&localproxy(&["splice-services: ssh, web"]));
    assert_eq!(request.access_token, None);
    assert_eq!(request.services, ["ssh", "web"]);
    let (request, _) = complete(&localproxy(&[]));
    assert!(request.access_token.is_none() && request.services.is_empty());
    assert_eq!(UpgradeError::NoToken.status(), 401);
    let access = AccessToken::new(TOKEN).unwrap();
    let ours = ClientRequest {
        access_token: None,
        services: &["ssh", "web"],
        ..client_request(&access, &Subprotocol::ALL)
    }
    .encode();
    let (request, _) = complete(&ours);
    assert_eq!(request.access_token, None);
    assert_eq!(request.services, ["ssh", "web"]);
}

#[test]
fn localproxy_request_is_accepted_byte_at_a_time() {
    let token = format!("access-token: {TOKEN}");
    let client = format!("client-token: {CLIENT_TOKEN}");
    let bytes = localproxy(&[&token, &client]);
    assert!(bytes.len() < MAX_REQUEST_LEN);
    for end in 1..bytes.len() {
        assert_eq!(
            parse_request(&bytes[..end]),
            Ok(ParsedRequest::Incomplete),
            "{end}"
        );
    }
    let mut with_frame = bytes.clone();
    with_frame.extend_from_slice(&[0x89, 0x80, 0, 0, 0, 0]);
    let (request, len) = complete(&with_frame);
    assert_eq!(len, bytes.len());
    assert_eq!(request.mode, Mode::Source);
    assert_eq!(request.access_token.as_ref().unwrap().secret(), TOKEN);
    assert_eq!(request.token_source, TokenSource::Header);
    assert_eq!(
        request.client_token.as_ref().map(ClientToken::secret),
        Some(CLIENT_TOKEN)
    );
    assert_eq!(request.protocol, Subprotocol::V3);
    assert_eq!(request.host, "localhost");
    assert!(request.user_agent.unwrap().starts_with("localproxy"));
}

#[test]
fn accept_response_has_the_rfc_accept_key_and_the_subprotocol() {
    assert_eq!(accept_key(RFC_KEY), RFC_ACCEPT);
    let (request, _) = complete(&request(
        "/tunnel?local-proxy-mode=destination",
        &[
            "Sec-WebSocket-Protocol: aws.iot.securetunneling-2.0",
            &format!("access-token: {TOKEN}"),
        ],
    ));
    assert_eq!(request.mode, Mode::Destination);
    let response = String::from_utf8(request.accept_response("ch-1\r\nX: y")).unwrap();
    assert_eq!(
        response,
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {RFC_ACCEPT}\r\nSec-WebSocket-Protocol: aws.iot.securetunneling-2.0\r\n\
             channel-id: ch-1X: y\r\n\r\n"
        )
    );
}

#[test]
fn the_highest_supported_subprotocol_is_chosen() {
    let token = format!("access-token: {TOKEN}");
    for (offers, chosen) in [
        (
            vec!["Sec-WebSocket-Protocol: aws.iot.securetunneling-1.0"],
            Subprotocol::V1,
        ),
        (
            vec![
                "Sec-WebSocket-Protocol: aws.iot.securetunneling-1.0, bogus,aws.iot.securetunneling-3.0",
            ],
            Subprotocol::V3,
        ),
        (
            vec![
                "Sec-WebSocket-Protocol: aws.iot.securetunneling-2.0",
                "Sec-WebSocket-Protocol: aws.iot.securetunneling-1.0, x",
            ],
            Subprotocol::V2,
        ),
    ] {
        let mut headers = offers.clone();
        headers.push(&token);
        let (request, _) = complete(&request("/tunnel?local-proxy-mode=source", &headers));
        assert_eq!(request.protocol, chosen, "{offers:?}");
    }
}

#[test]
fn the_token_may_come_in_the_cookie() {
    for cookie in [
        format!("Cookie: awsiot-tunnel-token={TOKEN}"),
        format!("Cookie: a=b; awsiot-tunnel-token=\"{TOKEN}\"; c=d"),
    ] {
        let (request, _) = complete(&localproxy(&[&cookie]));
        assert_eq!(request.access_token.as_ref().unwrap().secret(), TOKEN);
        assert_eq!(request.token_source, TokenSource::Cookie);
    }
}

/// Each bad request, the error it must give, and that error's status.
#[test]
fn every_refusal_and_its_status() {
    let token = format!("access-token: {TOKEN}");
    let cookie = format!("Cookie: awsiot-tunnel-token={TOKEN}");
    let v3 = "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0";
    let mut too_long = localproxy(&[&token]);
    too_long.truncate(too_long.len() - 2);
    too_long.extend(format!("X-Pad: {}\r\n", "p".repeat(4096)).bytes());
    let many: Vec<String> = (0..40).map(|i| format!("X-{i}: 1")).collect();
    let mut many_headers: Vec<&str> = many.iter().map(String::as_str).collect();
    many_headers.push(&token);
    let cases: Vec<(&str, Vec<u8>, UpgradeError, u16)> = vec![
        (
            "tls",
            vec![0x16, 0x03, 0x01, 0x02, 0x00],
            UpgradeError::NotHttp("does not begin with a method"),
            400,
        ),
        (
            "post",
            b"POST /tunnel HTTP/1.1\r\n\r\n".to_vec(),
            UpgradeError::Method,
            400,
        ),
        (
            "http/1.0",
            b"GET /tunnel?local-proxy-mode=source HTTP/1.0\r\n\r\n".to_vec(),
            UpgradeError::NotHttp("the version must be HTTP/1.1"),
            400,
        ),
        (
            "bad header",
            b"GET /tunnel HTTP/1.1\r\nBad Header: x\r\n\r\n".to_vec(),
            UpgradeError::NotHttp("invalid header name"),
            400,
        ),
        (
            "path",
            request("/other?local-proxy-mode=source", &[v3, &token]),
            UpgradeError::Path,
            400,
        ),
        (
            "no query",
            request("/tunnel", &[v3, &token]),
            UpgradeError::Query,
            400,
        ),
        (
            "bad mode",
            request("/tunnel?local-proxy-mode=both", &[v3, &token]),
            UpgradeError::Query,
            400,
        ),
        (
            "extra param",
            request("/tunnel?local-proxy-mode=source&x=1", &[v3, &token]),
            UpgradeError::Query,
            400,
        ),
        (
            "bad announced service",
            localproxy(&["splice-services: ssh,no spaces"]),
            UpgradeError::Header("splice-services"),
            400,
        ),
        (
            "two headers",
            localproxy(&[&token, &token]),
            UpgradeError::TwoTokens,
            400,
        ),
        (
            "two cookies",
            localproxy(&[&format!("{cookie}; awsiot-tunnel-token=x")]),
            UpgradeError::TwoTokens,
            400,
        ),
        (
            "header and cookie",
            localproxy(&[&token, &cookie]),
            UpgradeError::TwoTokens,
            400,
        ),
        (
            "empty token",
            localproxy(&["access-token: "]),
            UpgradeError::Token(TokenError::Access),
            400,
        ),
        (
            "bad client token",
            localproxy(&[&token, "client-token: short"]),
            UpgradeError::Token(TokenError::Client),
            400,
        ),
        (
            "two client tokens",
            localproxy(&[
                &token,
                &format!("client-token: {CLIENT_TOKEN}"),
                &format!("client-token: {CLIENT_TOKEN}"),
            ]),
            UpgradeError::Header("client-token"),
            400,
        ),
        (
            "no subprotocol",
            request("/tunnel?local-proxy-mode=source", &[&token]),
            UpgradeError::Subprotocol,
            400,
        ),
        (
            "unknown subprotocol",
            request(
                "/tunnel?local-proxy-mode=source",
                &[
                    "Sec-WebSocket-Protocol: aws.iot.securetunneling-4.0",
                    &token,
                ],
            ),
            UpgradeError::Subprotocol,
            400,
        ),
        ("too long", too_long, UpgradeError::TooLarge, 431),
        (
            "too many headers",
            localproxy(&many_headers),
            UpgradeError::TooLarge,
            431,
        ),
    ];
    for (name, bytes, error, status) in cases {
        assert_eq!(parse_request(&bytes), Err(error.clone()), "{name}");
        assert_eq!(error.status(), status, "{name}");
        let response = String::from_utf8(error.response(Some("ch-9"))).unwrap();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {response}"
        );
        assert!(response.contains("\r\nchannel-id: ch-9\r\n"), "{name}");
        assert!(
            response.ends_with(&format!("\r\n\r\n{error}\n")),
            "{name}: {response}"
        );
        assert!(
            !response.contains(TOKEN) && !error.to_string().contains(TOKEN),
            "{name}"
        );
    }
}

#[test]
fn garbage_is_refused_at_its_first_byte() {
    assert_eq!(
        parse_request(&[0x16]),
        Err(UpgradeError::NotHttp("does not begin with a method"))
    );
    assert_eq!(parse_request(b"P"), Err(UpgradeError::Method));
    assert_eq!(parse_request(b"G"), Ok(ParsedRequest::Incomplete));
    assert_eq!(
        parse_request(b"GE\0"),
        Err(UpgradeError::NotHttp("does not begin with a method"))
    );
}

#[test]
fn header_refusals_and_status() {
    let token = format!("access-token: {TOKEN}");
    let v3 = "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0";
    let swap = |from: &str, to: &str| {
        let r = String::from_utf8(localproxy(&[&token])).unwrap();
        assert!(r.contains(from), "{from}");
        r.replace(from, to).into_bytes()
    };
    let cases = [
        (
            "no host",
            swap("Host: localhost\r\n", ""),
            UpgradeError::Header("Host"),
            400,
        ),
        (
            "no upgrade",
            swap("Upgrade: websocket\r\n", ""),
            UpgradeError::NotUpgrade,
            400,
        ),
        (
            "connection close",
            swap("Connection: upgrade", "Connection: close"),
            UpgradeError::NotUpgrade,
            400,
        ),
        (
            "version 8",
            swap("Version: 13", "Version: 8"),
            UpgradeError::Version,
            426,
        ),
        (
            "no key",
            swap(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n"), ""),
            UpgradeError::Header("Sec-WebSocket-Key"),
            400,
        ),
        (
            "short key",
            swap(RFC_KEY, "c2hvcnQ="),
            UpgradeError::Header("Sec-WebSocket-Key"),
            400,
        ),
        (
            "token with a space",
            swap(TOKEN, "a b"),
            UpgradeError::Token(TokenError::Access),
            400,
        ),
    ];
    for (name, bytes, error, status) in cases {
        assert_eq!(parse_request(&bytes), Err(error.clone()), "{name}");
        assert_eq!(error.status(), status);
    }
    let version = String::from_utf8(UpgradeError::Version.response(None)).unwrap();
    assert!(
        version.contains("\r\nSec-WebSocket-Version: 13\r\n"),
        "{version}"
    );
    // A browser's Connection list and mixed case pass.
    let browser = String::from_utf8(localproxy(&[&token]))
        .unwrap()
        .replace("Connection: upgrade", "connection: keep-alive, Upgrade")
        .replace("Upgrade: websocket", "upgrade: WebSocket");
    assert!(matches!(
        parse_request(browser.as_bytes()),
        Ok(ParsedRequest::Complete { .. })
    ));
    let _ = v3;
}

#[test]
fn tokens_are_redacted_in_debug() {
    let token = format!("access-token: {TOKEN}");
    let client = format!("client-token: {CLIENT_TOKEN}");
    let (request, _) = complete(&localproxy(&[&token, &client]));
    let shown = format!(
        "{request:?} {:?}",
        parse_request(&localproxy(&[&token, &client]))
    );
    assert!(
        !shown.contains(TOKEN) && !shown.contains(CLIENT_TOKEN),
        "{shown}"
    );
    assert!(shown.contains("<redacted>"));
    let access = AccessToken::new(TOKEN).unwrap();
    let client = ClientToken::new(CLIENT_TOKEN).unwrap();
    let ours = ClientRequest {
        host: "relay.example",
        mode: Mode::Source,
        access_token: Some(&access),
        services: &[],
        client_token: Some(&client),
        protocols: &Subprotocol::ALL,
        key: [7; 16],
        user_agent: "splice-engine",
    };
    let shown = format!("{ours:?}");
    assert!(
        !shown.contains(TOKEN) && !shown.contains(CLIENT_TOKEN),
        "{shown}"
    );
}

#[test]
fn token_shapes() {
    assert!(AccessToken::new("x").is_ok());
    assert!(AccessToken::new("a".repeat(4096)).is_ok());
    assert_eq!(AccessToken::new("a".repeat(4097)), Err(TokenError::Access));
    assert_eq!(AccessToken::new("a\tb"), Err(TokenError::Access));
    assert!(ClientToken::new("a".repeat(32)).is_ok());
    assert!(ClientToken::new("a-".repeat(64)).is_ok());
    assert_eq!(ClientToken::new("a".repeat(31)), Err(TokenError::Client));
    assert_eq!(ClientToken::new("a".repeat(129)), Err(TokenError::Client));
    assert_eq!(
        ClientToken::new(format!("{}_", "a".repeat(32))),
        Err(TokenError::Client)
    );
}

fn client_request<'a>(access: &'a AccessToken, protocols: &'a [Subprotocol]) -> ClientRequest<'a> {
    ClientRequest {
        host: "localhost",
        mode: Mode::Destination,
        access_token: Some(access),
        services: &[],
        client_token: None,
        protocols,
        key: *b"the sample nonce",
        user_agent: "splice-engine/test",
    }
}

#[test]
fn our_client_request_is_what_localproxy_sends_and_our_server_takes_it() {
    let access = AccessToken::new(TOKEN).unwrap();
    let ours = client_request(&access, &Subprotocol::ALL);
    let bytes = ours.encode();
    assert_eq!(
        String::from_utf8(bytes.clone()).unwrap(),
        format!(
            "GET /tunnel?local-proxy-mode=destination HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0, aws.iot.securetunneling-2.0, aws.iot.securetunneling-1.0\r\n\
             access-token: {TOKEN}\r\nUser-Agent: splice-engine/test\r\n\r\n"
        )
    );
    let (request, len) = complete(&bytes);
    assert_eq!(len, bytes.len());
    assert_eq!(
        (request.mode, request.protocol),
        (Mode::Destination, Subprotocol::V3)
    );
    // And our client takes our server's 101, byte at a time.
    let response = request.accept_response("abc");
    for end in 1..response.len() {
        assert_eq!(
            parse_response(&response[..end], &ours.key, ours.protocols),
            Ok(ParsedResponse::Incomplete)
        );
    }
    assert_eq!(
        parse_response(&response, &ours.key, ours.protocols),
        Ok(ParsedResponse::Complete {
            accepted: Accepted {
                protocol: Subprotocol::V3,
                channel_id: Some("abc".into())
            },
            len: response.len(),
        })
    );
}

#[test]
fn client_refuses_a_bad_101() {
    let key = *b"the sample nonce";
    let ok = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {RFC_ACCEPT}\r\nSec-WebSocket-Protocol: aws.iot.securetunneling-2.0\r\n\r\n"
    );
    assert!(matches!(
        parse_response(ok.as_bytes(), &key, &Subprotocol::ALL),
        Ok(ParsedResponse::Complete { .. })
    ));
    let cases = [
        (
            "wrong accept",
            ok.replace(RFC_ACCEPT, "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            &Subprotocol::ALL[..],
            ResponseError::Accept,
        ),
        (
            "no subprotocol",
            ok.replace(
                "Sec-WebSocket-Protocol: aws.iot.securetunneling-2.0\r\n",
                "",
            ),
            &Subprotocol::ALL[..],
            ResponseError::Subprotocol,
        ),
        (
            "bogus subprotocol",
            ok.replace("securetunneling-2.0", "bogus"),
            &Subprotocol::ALL[..],
            ResponseError::Subprotocol,
        ),
        (
            "not offered",
            ok.clone(),
            &[Subprotocol::V3][..],
            ResponseError::Subprotocol,
        ),
        (
            "no upgrade",
            ok.replace("Upgrade: websocket\r\n", ""),
            &Subprotocol::ALL[..],
            ResponseError::NotUpgrade,
        ),
        (
            "403",
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into(),
            &Subprotocol::ALL[..],
            ResponseError::Rejected {
                status: 403,
                reason: String::new(),
            },
        ),
        (
            "503",
            String::from_utf8(error_response(503, "busy", None)).unwrap(),
            &Subprotocol::ALL[..],
            ResponseError::Rejected {
                status: 503,
                reason: "busy".into(),
            },
        ),
        (
            "garbage",
            "\x15\x03\x03".into(),
            &Subprotocol::ALL[..],
            ResponseError::NotHttp("does not begin with HTTP/"),
        ),
    ];
    for (name, bytes, offered, error) in cases {
        assert_eq!(
            parse_response(bytes.as_bytes(), &key, offered),
            Err(error.clone()),
            "{name}"
        );
        assert_eq!(error.is_transient(), name == "503", "{name}");
    }
    let long = format!("HTTP/1.1 101 OK\r\nX: {}\r\n\r\n", "x".repeat(4096));
    assert_eq!(
        parse_response(long.as_bytes(), &key, &Subprotocol::ALL),
        Err(ResponseError::TooLarge)
    );
}

#[test]
fn origin_is_reported_and_header_values_cannot_inject_lines() {
    let token = format!("access-token: {TOKEN}");
    let (request, _) = complete(&localproxy(&[&token, "Origin: https://console.example"]));
    assert_eq!(request.origin.as_deref(), Some("https://console.example"));
    assert_eq!(complete(&localproxy(&[&token])).0.origin, None);
    assert_eq!(
        parse_request(&localproxy(&[
            &token,
            "Origin: https://a",
            "Origin: https://b"
        ])),
        Err(UpgradeError::Header("Origin"))
    );
    let access = AccessToken::new(TOKEN).unwrap();
    let mut ours = client_request(&access, &Subprotocol::ALL);
    ours.host = "evil\r\nX-Injected: 1";
    ours.user_agent = "ua\r\n\r\nGET /";
    let bytes = String::from_utf8(ours.encode()).unwrap();
    assert!(bytes.contains("\r\nHost: evilX-Injected: 1\r\n"), "{bytes}");
    assert!(
        bytes.ends_with("\r\nUser-Agent: uaGET /\r\n\r\n"),
        "{bytes}"
    );
    assert!(
        matches!(parse_request(bytes.as_bytes()), Ok(ParsedRequest::Complete { len, .. }) if len == bytes.len())
    );
}
