//! How connections end: half-close both ways, close_notify, truncation, resets.

use super::*;

#[test]
fn half_close_from_the_plain_app() {
    // The app sends and shuts its write half; the TLS peer sees everything, close_notify and
    // FIN, and only then answers, over the half-closed connection.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.app().payload = payload(1, 300 * KIB);
            p.peer().payload = payload(2, 500 * KIB);
            p.peer().start = Start::AfterEof;
            p.drive();
            p.assert_clean();
            let tls_fin = p.events.iter().position(|e| e == "shutdown Tls").unwrap();
            let plain_fin = p.events.iter().position(|e| e == "shutdown Plain").unwrap();
            assert!(tls_fin < plain_fin, "{:?}", p.events);
        }
    }
}

#[test]
fn half_close_from_the_tls_peer() {
    // The TLS peer sends, then close_notify and FIN; the app gets everything then EOF, and only
    // then answers.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.peer().payload = payload(3, 300 * KIB);
            p.app().payload = payload(4, 500 * KIB);
            p.app().start = Start::AfterEof;
            p.drive();
            p.assert_clean();
            let tls_fin = p.events.iter().position(|e| e == "shutdown Tls").unwrap();
            let plain_fin = p.events.iter().position(|e| e == "shutdown Plain").unwrap();
            assert!(plain_fin < tls_fin, "{:?}", p.events);
        }
    }
}

#[test]
fn close_notify_while_the_app_reads_slowly() {
    // close_notify and FIN arrive while the plain leg is still busy sending earlier plaintext.
    for mode in MODES {
        for version in VERSIONS {
            let mut s = Setup::new(mode, version);
            s.sock_cap[PLAIN] = 4 * KIB;
            s.limits[PLAIN].send = KIB;
            both_ways(s, 10 * KIB, 300 * KIB);
        }
    }
}

#[test]
fn bytes_after_close_notify_are_ignored() {
    // A peer that goes on sending after close_notify: RFC 8446 6.1 says to ignore it.
    for mode in MODES {
        for version in VERSIONS {
            for (len, trailer) in [(50 * KIB, 20 * KIB), (0, 60 * KIB), (1000, 200 * KIB)] {
                let mut p = Pair::new(Setup::new(mode, version));
                p.peer().payload = payload(5, len);
                p.peer().trailer = payload(6, trailer);
                p.app().payload = payload(7, 1000);
                p.drive();
                p.assert_clean();
            }
        }
    }
}

#[test]
fn truncation_without_close_notify_fails() {
    // The TLS peer ends the TCP stream without close_notify: the plain side must not see a
    // clean end, whatever the timing.
    for mode in MODES {
        for version in VERSIONS {
            for (i, slow_app) in [false, true].into_iter().enumerate() {
                let mut s = Setup::new(mode, version);
                if slow_app {
                    s.sock_cap[PLAIN] = 2 * KIB;
                    s.limits[PLAIN].send = 100;
                }
                let mut p = Pair::new(s);
                p.peer().payload = payload(8 + i as u64, 200 * KIB);
                p.peer().end = End::FinOnly;
                p.app().end = End::Open;
                let f = p.drive_to_failure();
                assert_ne!(f.fault, Fault::Plain, "{f:?}");
                let app = &p.peers[PLAIN];
                assert!(!app.fin_seen, "the app saw a clean EOF\n{}", p.summary());
                assert!(app.reset_seen, "{}", p.summary());
                assert!(!p.shut[PLAIN]);
                assert!(p.peers[TLS].payload.starts_with(&app.received));
                // At a record boundary: everything before the FIN is delivered, then the reset.
                assert!(app.received == p.peers[TLS].payload, "{}", p.summary());
                assert!(f.unclean_close, "{f:?}");
            }
        }
    }
}

#[test]
fn fin_inside_a_record_is_a_truncation() {
    // Part of a record (its header and 3 bytes of its 64) and then a FIN: an error, not an
    // unclean close.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.peer().payload = payload(30, 10 * KIB);
            p.peer().trailer = vec![0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3];
            p.peer().end = End::FinOnly;
            p.app().end = End::Open;
            let f = p.drive_to_failure();
            assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");
            assert!(!f.unclean_close, "{f:?}");
            assert!(f.reason.contains("middle of a TLS record"), "{f:?}");
            assert!(p.peers[PLAIN].reset_seen, "{}", p.summary());
        }
    }
}

#[test]
fn resets() {
    for mode in MODES {
        // The app resets in the middle of its stream.
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        p.app().payload = payload(15, 300 * KIB);
        p.app().end = End::Reset;
        p.peer().payload = payload(16, 300 * KIB);
        p.peer().end = End::Open;
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::Plain, "{f:?}");
        let peer = &p.peers[TLS];
        assert!(peer.reset_seen && !peer.close_notify, "{}", peer.summary());

        // The TLS peer resets.
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        p.peer().payload = payload(17, 300 * KIB);
        p.peer().end = End::Reset;
        p.app().payload = payload(18, 300 * KIB);
        p.app().end = End::Open;
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");
        let app = &p.peers[PLAIN];
        assert!(app.reset_seen && !app.fin_seen, "{}", app.summary());
    }
}

#[test]
fn a_reset_while_the_other_leg_is_stalled_closes_at_once() {
    for mode in MODES {
        // Neither end reads, both send: every buffer fills and a send is in flight on each leg.
        let mut s = Setup::new(mode, Version::Tls13);
        s.sock_cap = [64 * KIB; 2];
        let mut p = Pair::new(s);
        p.app().payload = payload(40, 4 * MIB);
        p.peer().payload = payload(41, 4 * MIB);
        p.handshake();
        p.app().reading = false;
        p.peer().reading = false;
        p.run();
        assert!(p.closed.is_none(), "{}", p.summary());
        // The app resets: the send to it fails. The send to the stalled TLS peer never
        // completes, and must not hold the connection open.
        p.peers[PLAIN].reset(&mut p.outbound[PLAIN], &mut p.inbound[PLAIN]);
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::Plain, "{f:?}");
    }
}
