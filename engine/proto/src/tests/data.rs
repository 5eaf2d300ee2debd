//! Data through the forwarder: sizes, partial I/O, flow control, randomized interleavings.

use super::*;

#[test]
fn data_both_ways() {
    for mode in MODES {
        for version in VERSIONS {
            for own in [true, false] {
                let mut s = Setup::new(mode, version);
                s.own_records = own;
                let p = both_ways(s, 3 * MIB, 3 * MIB + 17);
                assert_eq!(p.fwd.negotiated().map(|n| n.version), Some(version.wire()));
                assert!(!p.fwd.is_handshaking());
                assert_eq!(p.handoffs, 0);
                assert_eq!(p.fwd.own_records(), own, "{mode:?} {version:?}");
            }
        }
    }
}

#[test]
fn data_both_ways_small_buffers() {
    // Buffers smaller than a record, and odd socket sizes.
    for mode in MODES {
        for version in VERSIONS {
            let mut s = Setup::new(mode, version);
            s.buffers = Buffers {
                plain: 1000,
                tls: 777,
            };
            s.sock_cap = [3001, 1234];
            both_ways(s, 300 * KIB, 200 * KIB);
        }
    }
}

#[test]
fn partial_sends_and_one_byte_recvs() {
    for mode in MODES {
        for version in VERSIONS {
            let mut s = Setup::new(mode, version);
            s.limits = [Limits {
                recv: 1,
                send: 3,
                random: false,
            }; 2];
            s.sock_cap = [5, 7];
            both_ways(s.clone(), 40 * KIB, 40 * KIB);

            // Random partial sends over ample sockets.
            s.limits = [Limits {
                recv: 1,
                send: 700,
                random: true,
            }; 2];
            s.sock_cap = [256 * KIB; 2];
            both_ways(s, 40 * KIB, 60 * KIB);
        }
    }
}

#[test]
fn empty_streams() {
    for mode in MODES {
        for version in VERSIONS {
            both_ways(Setup::new(mode, version), 0, 0);
        }
    }
}

#[test]
fn many_tiny_records() {
    // Records of one byte each: a buffer read holds thousands of them.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.peer().payload = payload(40, 100 * KIB);
            p.peer().chunk = 1;
            p.app().payload = payload(41, 100 * KIB);
            p.app().chunk = 1;
            p.drive();
            p.assert_clean();
        }
    }
}

#[test]
fn slow_reader_keeps_memory_bounded() {
    for mode in MODES {
        for version in VERSIONS {
            // TLS -> plain: the app stops reading while the TLS peer sends a lot.
            let mut s = Setup::new(mode, version);
            s.sock_cap = [64 * KIB; 2];
            let mut p = Pair::new(s.clone());
            p.peer().payload = payload(30, 4 * MIB);
            p.app().payload = payload(31, 10 * KIB);
            p.app().reading = false;
            p.run();
            assert!(p.closed.is_none(), "{}", p.summary());
            let peer = &p.peers[TLS];
            assert!(
                peer.sent < peer.payload.len(),
                "the peer was never held back"
            );
            assert!(
                p.max_held[1] > 64 * KIB as u64,
                "buffers never filled: {:?}",
                p.max_held
            );
            assert!(p.max_held[1] <= p.bound);
            p.app().reading = true;
            p.drive();
            p.assert_clean();

            // plain -> TLS: the TLS peer stops reading while the app sends a lot.
            let mut p = Pair::new(s);
            p.app().payload = payload(32, 4 * MIB);
            p.peer().payload = payload(33, 10 * KIB);
            p.handshake();
            p.peer().reading = false;
            p.run();
            assert!(p.closed.is_none(), "{}", p.summary());
            let app = &p.peers[PLAIN];
            assert!(app.sent < app.payload.len(), "the app was never held back");
            assert!(
                p.max_held[0] > 32 * KIB as u64,
                "buffers never filled: {:?}",
                p.max_held
            );
            p.peer().reading = true;
            p.drive();
            p.assert_clean();
        }
    }
}

/// How many seeds the randomized tests run (`PROTO_SEEDS` overrides).
fn seeds(default: u64) -> u64 {
    std::env::var("PROTO_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A world with everything drawn from `seed`: mode, version, record mode, buffer sizes,
/// socket sizes, per-call I/O limits, completion order, payloads, chunking, who starts.
fn random_pair(seed: u64) -> (Pair, String) {
    let mut rng = Rng::new(seed);
    let mode = MODES[rng.range(0, 1)];
    let version = VERSIONS[rng.range(0, 1)];
    let mut s = Setup::new(mode, version);
    s.seed = seed;
    s.ktls = rng.chance(25);
    s.random_order = true;
    s.random_peers = true;
    if rng.chance(30) {
        s.buffers = Buffers {
            plain: rng.range(1, 80 * KIB),
            tls: rng.range(1, 80 * KIB),
        };
    }
    for i in [PLAIN, TLS] {
        s.sock_cap[i] = rng.range(1, 128 * KIB);
        s.limits[i] = Limits {
            recv: rng.range(1, 100 * KIB),
            send: rng.range(1, 100 * KIB),
            random: true,
        };
    }
    let app_len = rng.range(0, 300 * KIB);
    let peer_len = rng.range(0, 300 * KIB);
    let starts = match rng.range(0, 2) {
        0 => (Start::Now, Start::Now),
        1 => (Start::AfterEof, Start::Now),
        _ => (Start::Now, Start::AfterEof),
    };
    let key_update = version == Version::Tls13 && rng.chance(30);
    let desc = format!(
        "seed {seed}: {s:?} starts {starts:?} app {app_len} peer {peer_len} key update \
         {key_update}"
    );
    let mut p = Pair::new(s);
    p.app().payload = payload(seed * 2, app_len);
    p.peer().payload = payload(seed * 2 + 1, peer_len);
    p.app().start = starts.0;
    p.peer().start = starts.1;
    p.app().chunk = rng.range(1, 64 * KIB);
    p.peer().chunk = rng.range(1, 64 * KIB);
    if key_update {
        p.peer().key_update_at = Some(rng.range(0, peer_len));
    }
    (p, desc)
}

#[test]
fn randomized_io() {
    for seed in 0..seeds(48) {
        let (mut p, desc) = random_pair(seed);
        p.run();
        assert!(p.closed == Some(None), "{desc}\n{}", p.summary());
        p.assert_clean();
    }
}

#[test]
fn randomized_endings() {
    // Either side may end without a clean close: then the other side must not see one either,
    // and must never get bytes that were not sent.
    for seed in 0..seeds(48) {
        let (mut p, desc) = random_pair(1_000_000 + seed);
        let mut rng = Rng::new(seed);
        let app_end = [End::Close, End::Reset][rng.range(0, 1)];
        let peer_end = [End::Close, End::FinOnly, End::Reset][rng.range(0, 2)];
        p.app().end = app_end;
        p.peer().end = peer_end;
        if app_end != End::Close {
            p.peer().start = Start::Now;
        }
        if peer_end != End::Close {
            p.app().start = Start::Now;
        }
        let desc = format!("{desc} ends {app_end:?}/{peer_end:?}");
        let failure = p.drive();
        let (app, peer) = (&p.peers[PLAIN], &p.peers[TLS]);
        assert!(peer.payload.starts_with(&app.received), "{desc}");
        assert!(app.payload.starts_with(&peer.received), "{desc}");
        if app.fin_seen {
            assert_eq!(peer_end, End::Close, "{desc}\n{}", p.summary());
            same("app, at EOF", &app.received, &peer.payload);
        }
        if peer.close_notify {
            assert_eq!(app_end, End::Close, "{desc}\n{}", p.summary());
            same("peer, at close_notify", &peer.received, &app.payload);
        }
        match (app_end, peer_end, failure) {
            (End::Close, End::Close, None) => p.assert_clean(),
            (End::Close, End::Close, Some(f)) => panic!("{desc}: {f:?}\n{}", p.summary()),
            (_, _, None) => panic!("{desc}: clean Close\n{}", p.summary()),
            (End::Close, _, Some(f)) => assert_ne!(f.fault, Fault::Plain, "{desc}"),
            (_, End::Close, Some(f)) => assert_eq!(f.fault, Fault::Plain, "{desc}"),
            (_, _, Some(_)) => {}
        }
    }
}
