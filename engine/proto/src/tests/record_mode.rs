//! Record mode: reading the handshake record by record for a kTLS hand-off, taken or declined.

use super::*;

fn record_mode_setup(mode: Mode, version: Version) -> Setup {
    let mut s = Setup::new(mode, version);
    s.ktls = true;
    s
}

#[test]
fn record_mode_handoff_declined() {
    for mode in MODES {
        for version in VERSIONS {
            for (recv, random) in [(usize::MAX, false), (1, false), (9, true)] {
                let mut s = record_mode_setup(mode, version);
                s.limits[TLS] = Limits {
                    recv,
                    send: usize::MAX,
                    random,
                };
                let mut p = Pair::new(s);
                p.app().payload = payload(20, 200 * KIB);
                p.peer().payload = payload(21, 300 * KIB);
                p.drive();
                p.assert_clean();
                assert_eq!(p.handoffs, 1, "{:?}", p.events);
                assert!(p.record_recvs > 0);
                // Where the peer's data can be there before the forwarder's handshake is over
                // (it sends right after its own last handshake flight), it was there.
                let early = matches!(
                    (mode, version),
                    (Mode::Client, Version::Tls12) | (Mode::Server, Version::Tls13)
                );
                if early {
                    assert!(
                        p.app_waiting_at_handoff,
                        "{mode:?} {version:?}: no data waiting"
                    );
                }
            }
        }
    }
}

#[test]
fn record_mode_handoff_taken() {
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup {
                decline_handoff: false,
                extract: true,
                ..record_mode_setup(mode, version)
            });
            p.app().end = End::Open;
            p.peer().payload = payload(22, 40 * KIB);
            p.peer().end = End::Open;
            p.run(); // the forwarder stops at Handoff; the peer goes on
            assert!(p.handed_off && p.closed.is_none(), "{}", p.summary());
            assert!(p.peers[TLS].sent == 40 * KIB, "{}", p.summary());
            let Pair {
                fwd,
                mut inbound,
                peers,
                ..
            } = p;
            let mut conn = fwd.into_tls().expect("rustls has the session at Handoff");
            assert!(!conn.common().is_handshaking());
            // Whatever takes the session over carries on from the socket where the forwarder
            // stopped: the peer's data are all there, none went into the forwarder.
            let mut records = Vec::new();
            inbound[TLS].pull(&mut records, usize::MAX);
            let got = match &mut conn {
                TlsConn::Client(c) => decrypt_all(c, records),
                TlsConn::Server(s) => decrypt_all(s, records),
            };
            same("after hand-off", &got, &peers[TLS].payload);
        }
    }
    // The secrets can be extracted at the Handoff point.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup {
                decline_handoff: false,
                extract: true,
                ..record_mode_setup(mode, version)
            });
            p.app().end = End::Open;
            p.peer().end = End::Open;
            p.run();
            assert!(p.handed_off, "{}", p.summary());
            let conn = p.fwd.into_tls().expect("rustls has the session at Handoff");
            conn.dangerous_extract_secrets()
                .expect("secrets at the Handoff point");
        }
    }
}
