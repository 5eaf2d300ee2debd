//! Handshakes: big certificates, HelloRetryRequest, resumption, and the ways they fail.

use super::*;

#[test]
fn big_certificate() {
    // Handshake messages that span several records, in record mode with tiny reads too.
    assert!(
        pki(600).cert.len() > 20 * KIB,
        "the certificate spans several records"
    );
    for mode in MODES {
        for version in VERSIONS {
            for (ktls, recv) in [(false, usize::MAX), (true, usize::MAX), (true, 1)] {
                let mut s = Setup::new(mode, version);
                s.big_cert = true;
                s.ktls = ktls;
                s.limits[TLS].recv = recv;
                let mut p = Pair::new(s);
                p.app().payload = payload(52, 50 * KIB);
                p.peer().payload = payload(53, 50 * KIB);
                p.drive();
                p.assert_clean();
            }
        }
    }
}

#[test]
fn hello_retry_request() {
    for mode in MODES {
        for ktls in [false, true] {
            let mut s = Setup::new(mode, Version::Tls13);
            s.hello_retry = true;
            s.ktls = ktls;
            s.limits[TLS] = Limits {
                recv: 7,
                send: 7,
                random: true,
            };
            let mut p = Pair::new(s);
            p.app().payload = payload(54, 50 * KIB);
            p.peer().payload = payload(55, 50 * KIB);
            p.drive();
            p.assert_clean();
            assert_eq!(
                p.fwd.negotiated().and_then(|n| n.kind),
                Some(rustls::HandshakeKind::FullWithHelloRetryRequest)
            );
        }
    }
}

#[test]
fn resumption() {
    // A second connection with the same configurations resumes the session (an abbreviated
    // handshake, with a different order of flights in TLS 1.2).
    for mode in MODES {
        for version in VERSIONS {
            for ktls in [false, true] {
                let mut s = Setup::new(mode, version);
                s.ktls = ktls;
                let configs = Configs::new(&s);
                for round in 0..2 {
                    let mut p = Pair::with_configs(s.clone(), &configs);
                    p.app().payload = payload(56, 20 * KIB);
                    p.peer().payload = payload(57, 20 * KIB);
                    p.drive();
                    p.assert_clean();
                    let kind = p.fwd.negotiated().and_then(|n| n.kind);
                    let want = if round == 0 {
                        rustls::HandshakeKind::Full
                    } else {
                        rustls::HandshakeKind::Resumed
                    };
                    assert_eq!(kind, Some(want), "{mode:?} {version:?} ktls {ktls}");
                }
            }
        }
    }
}

#[test]
fn tls_peer_fin_during_the_handshake_fails() {
    for mode in MODES {
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        p.peer().conn = None; // a TCP peer that closes at once
        p.peer().end = End::Close;
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");
        assert!(!p.peers[PLAIN].fin_seen);
    }
}

#[test]
fn garbage_instead_of_tls() {
    let garbage: [&[u8]; 3] = [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x07\x01\x00\x04abcd", // a handshake record of TLS "7.1"
    ];
    for mode in MODES {
        for ktls in [false, true] {
            for bytes in garbage {
                let mut s = Setup::new(mode, Version::Tls13);
                s.ktls = ktls;
                let mut p = Pair::new(s);
                p.peer().conn = None;
                p.peer().payload = bytes.to_vec();
                p.peer().end = End::Open;
                let f = p.drive_to_failure();
                assert_eq!(f.fault, Fault::Tls, "{mode:?} ktls {ktls}: {f:?}");
                assert!(!p.peers[PLAIN].fin_seen);
            }
        }
    }
}

#[test]
fn untrusted_server_certificate() {
    for version in VERSIONS {
        let mut s = Setup::new(Mode::Client, version);
        s.trusted = false;
        let mut p = Pair::new(s);
        p.app().payload = payload(10, 1000);
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::Tls, "{f:?}");
        assert!(f.reason.contains("certificate"), "{f:?}");
        assert_eq!(
            p.fwd.plain_bytes_in(),
            0,
            "plaintext read before the peer was verified"
        );
        // The alert went out before the reset: the server knows why.
        let peer = &p.peers[TLS];
        assert!(
            matches!(peer.error, Some(rustls::Error::AlertReceived(_))),
            "{}",
            peer.summary()
        );
    }
}

#[test]
fn tls_client_rejects_our_certificate() {
    // Server mode: the TLS client does not trust the forwarder's certificate.
    for version in VERSIONS {
        let mut s = Setup::new(Mode::Server, version);
        s.trusted = false;
        let mut p = Pair::new(s);
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::Tls, "{f:?}");
        assert!(
            !p.connected[PLAIN],
            "upstream connected for a failed handshake"
        );
    }
}

#[test]
fn connect_failure() {
    // Client mode: the TLS upstream refuses.
    let mut p = Pair::new(Setup::new(Mode::Client, Version::Tls13));
    p.connect_error = Some(io::ErrorKind::ConnectionRefused);
    p.app().payload = payload(11, 1000);
    let f = p.drive_to_failure();
    assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");
    assert!(p.peers[PLAIN].reset_seen && !p.peers[PLAIN].fin_seen);

    // Server mode: the plain upstream refuses after the handshake.
    let mut p = Pair::new(Setup::new(Mode::Server, Version::Tls13));
    p.connect_error = Some(io::ErrorKind::ConnectionRefused);
    p.peer().payload = payload(12, 1000);
    let f = p.drive_to_failure();
    assert_eq!(f.fault, Fault::Plain, "{f:?}");
    let peer = &p.peers[TLS];
    assert!(peer.reset_seen && !peer.close_notify, "{}", peer.summary());
}

#[test]
fn timeouts() {
    // The handshake stalls: the TLS peer accepts and says nothing.
    for mode in MODES {
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        if mode == Mode::Client {
            p.peer().conn = None;
            p.peer().end = End::Open;
        } else {
            p.peer().reading = false; // never sees the ServerHello... and sends only ClientHello
        }
        p.run();
        assert!(p.closed.is_none());
        assert!(p.fwd.is_handshaking());
        p.fwd.handle_timeout();
        p.poll();
        let f = p.closed.clone().flatten().expect("Close with a failure");
        assert_eq!(f.fault, Fault::Tls, "{f:?}");
        assert!(f.reason.contains("handshake"), "{f:?}");
    }

    // The TLS upstream does not answer the connect.
    let mut p = Pair::new(Setup::new(Mode::Client, Version::Tls13));
    p.connect_hangs = true;
    p.run();
    assert!(p.closed.is_none() && p.connect == Some(Leg::Tls));
    p.fwd.handle_timeout();
    p.poll();
    let f = p.closed.clone().flatten().expect("Close with a failure");
    assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");

    // Server mode: the plain upstream does not answer the connect.
    let mut p = Pair::new(Setup::new(Mode::Server, Version::Tls13));
    p.connect_hangs = true;
    p.run();
    assert!(p.closed.is_none() && p.connect == Some(Leg::Plain));
    p.fwd.handle_timeout();
    p.poll();
    let f = p.closed.clone().flatten().expect("Close with a failure");
    assert_eq!(f.fault, Fault::Plain, "{f:?}");

    // After the handshake the timer means nothing.
    let mut p = Pair::new(Setup::new(Mode::Client, Version::Tls13));
    p.app().payload = payload(13, 100 * KIB);
    p.peer().payload = payload(14, MIB);
    p.peers[PLAIN].reading = false;
    p.run();
    assert!(
        p.closed.is_none() && !p.fwd.is_handshaking(),
        "{}",
        p.summary()
    );
    p.fwd.handle_timeout();
    p.peers[PLAIN].reading = true;
    p.drive();
    p.assert_clean();
}
