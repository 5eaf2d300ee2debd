//! WebSocket over the engine: a tungstenite echo server (ws://) behind server mode, reached as
//! wss:// by a rustls + tungstenite client; and plain ws:// through the whole chain.

use std::io::{Read, Write};

use tungstenite::Message;

use crate::support::*;

/// A tungstenite echo server: echoes text and binary messages until the client closes.
fn ws_echo_backend() -> Backend {
    Backend::spawn(|sock| {
        let Ok(mut ws) = tungstenite::accept(sock) else {
            return;
        };
        loop {
            match ws.read() {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    if ws.send(msg).is_err() {
                        return;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => {
                    // tungstenite answers the close itself; flush it out.
                    let _ = ws.flush();
                    return;
                }
                Ok(_) => {}
            }
        }
    })
}

/// Sends text and binary messages of several sizes and checks each echo, then closes cleanly.
fn exchange<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>) {
    let messages = vec![
        Message::text("hello over the engine"),
        Message::binary(random_bytes(1, 80)),
        Message::text("ünïcödé ✓ text frame"),
        Message::binary(random_bytes(70_000, 81)),
        Message::text("x".repeat(200_000)),
        Message::binary(random_bytes(1024 * 1024, 82)),
        Message::text(""),
    ];
    for (i, msg) in messages.into_iter().enumerate() {
        ws.send(msg.clone())
            .unwrap_or_else(|e| panic!("send message {i}: {e}"));
        let back = loop {
            match ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(m) => break m,
                Err(e) => panic!("read echo of message {i}: {e}"),
            }
        };
        assert_eq!(back, msg, "echo of message {i}");
    }
    ws.close(None).expect("send close");
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing handshake: {e}"),
        }
    }
}

#[test]
fn wss_through_server_mode() {
    let pki = Pki::new();
    let backend = ws_echo_backend();
    let sp = free_port();
    let _server = EngineCmd::server(sp, backend.addr, &pki.server, "auto")
        .opt("--alpn", "http/1.1")
        .start();
    let mut cfg = (*client_config(&[&pki.ca], None, TLS_ANY)).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tls_connect(localhost(sp), "localhost", std::sync::Arc::new(cfg));
    assert_eq!(
        tls.conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN negotiated by server mode"
    );
    let (mut ws, resp) = tungstenite::client(format!("wss://localhost:{sp}/echo"), tls)
        .expect("WebSocket handshake over TLS through server mode");
    assert_eq!(resp.status().as_u16(), 101, "handshake status");
    exchange(&mut ws);
}

#[test]
fn ws_through_the_chain() {
    let pki = Pki::new();
    let backend = ws_echo_backend();
    let chain = Chain::start(&pki, backend.addr, "auto");
    let sock = connect(chain.entry);
    let (mut ws, resp) =
        tungstenite::client(format!("ws://localhost:{}/echo", chain.entry.port()), sock)
            .expect("WebSocket handshake through client mode and server mode");
    assert_eq!(resp.status().as_u16(), 101, "handshake status");
    exchange(&mut ws);
}

/// A browser ends `wss://` with the WebSocket close handshake and then closes TCP without
/// close_notify (Chromium does): an unclean close, counted as such, not an error, and no
/// warning.
#[test]
fn browser_style_wss_close_is_not_an_error() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let backend = ws_echo_backend();
        let (sp, mp) = (free_port(), free_port());
        let server = EngineCmd::server(sp, backend.addr, &pki.server, driver)
            .metrics(mp)
            .start();
        let tls = tls_connect(
            localhost(sp),
            "localhost",
            client_config(&[&pki.ca], None, TLS_ANY),
        );
        let (mut ws, _) = tungstenite::client(format!("wss://localhost:{sp}/echo"), tls)
            .expect("WebSocket handshake");
        ws.send(Message::text("bye soon")).expect("send");
        assert_eq!(ws.read().expect("echo"), Message::text("bye soon"));
        ws.close(None).expect("send close");
        loop {
            match ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("{driver}: closing handshake: {e}"),
            }
        }
        // TCP closes with no close_notify.
        let tls = ws.into_inner();
        tls.sock
            .shutdown(std::net::Shutdown::Both)
            .expect("close TCP");
        let m = wait_metric(
            localhost(mp),
            "splice_connection_unclean_closes_total",
            &[],
            |v| v == 1.0,
        );
        assert_eq!(
            m.value("splice_connection_errors_total", &[]),
            0.0,
            "{driver}: {}",
            m.text
        );
        let log = server.log();
        assert!(
            warn_lines_with_side(&log, "downstream").is_empty(),
            "{driver}: {log}"
        );
    }
}
