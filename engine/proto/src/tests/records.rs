//! The record layers: ours against rustls's peers (suites, key updates, forged records), and
//! where records are opened and sealed in the buffers.

use super::*;

#[test]
fn own_record_layer_every_suite() {
    // Our record layer against rustls's, for every suite either version has for an ECDSA
    // certificate (TLS 1.2 AES-GCM carries an explicit nonce, ChaCha20-Poly1305 does not),
    // with each of the two cipher implementations the layer may pick.
    for backend in [crate::aead::Backend::AwsLc, crate::aead::Backend::Ring] {
        crate::aead::with_backend(backend, every_suite);
    }
}

fn every_suite() {
    let mut tested = 0;
    for suite in rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES {
        if format!("{:?}", suite.suite()).contains("_RSA_") {
            continue;
        }
        let version = match suite {
            rustls::SupportedCipherSuite::Tls13(_) => Version::Tls13,
            rustls::SupportedCipherSuite::Tls12(_) => Version::Tls12,
        };
        for mode in MODES {
            let mut s = Setup::new(mode, version);
            s.suite = Some(*suite);
            let p = both_ways(s, 300 * KIB + 5, 200 * KIB + 3);
            assert!(p.fwd.own_records());
            assert_eq!(p.fwd.negotiated().map(|n| n.suite), Some(*suite));
            tested += 1;
        }
    }
    assert_eq!(
        tested, 12,
        "3 TLS 1.3 and 3 TLS 1.2 ECDSA suites, both modes"
    );
}

#[test]
fn own_key_update_at_the_confidentiality_limit() {
    for backend in [crate::aead::Backend::AwsLc, crate::aead::Backend::Ring] {
        crate::aead::with_backend(backend, own_key_update_at_the_confidentiality_limit_with);
    }
}

fn own_key_update_at_the_confidentiality_limit_with() {
    // Our send key reaches its (lowered) limit every few records. TLS 1.3 changes it with a
    // KeyUpdate that the peer follows; TLS 1.2 cannot, so the connection fails there instead
    // of sealing past the limit.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.fwd.set_tx_limit(5);
            p.app().payload = payload(60, 400 * KIB);
            p.peer().payload = payload(61, 100 * KIB);
            match version {
                Version::Tls13 => {
                    p.drive();
                    p.assert_clean();
                    let (tx, _) = p.fwd.record_seqs().expect("our record layer");
                    assert!(tx < 5, "the key changed: {tx} records under the last one");
                }
                Version::Tls12 => {
                    let f = p.drive_to_failure();
                    assert_eq!(f.fault, Fault::Tls);
                    assert!(f.reason.contains("confidentiality limit"), "{f:?}");
                }
            }
        }
    }
}

#[test]
fn forged_record_fails_the_connection_with_an_alert() {
    for backend in [crate::aead::Backend::AwsLc, crate::aead::Backend::Ring] {
        crate::aead::with_backend(
            backend,
            forged_record_fails_the_connection_with_an_alert_with,
        );
    }
}

fn forged_record_fails_the_connection_with_an_alert_with() {
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.app().payload = payload(62, 10 * KIB);
            p.peer().payload = payload(63, 10 * KIB);
            p.app().end = End::Open;
            p.peer().end = End::Open;
            p.handshake();
            // Application data the peer never sealed, after what it sent.
            let mut forged = vec![23, 3, 3, 0, 40];
            forged.extend([0x5a; 40]);
            p.inbound[TLS].push(&forged);
            let f = p.drive_to_failure();
            assert_eq!(f.fault, Fault::Tls);
            assert!(f.reason.contains("bad_record_mac"), "{f:?}");
            assert!(
                !p.peers[PLAIN].fin_seen,
                "no clean end after a forged record"
            );
            assert!(
                matches!(
                    p.peers[TLS].error,
                    Some(rustls::Error::AlertReceived(
                        rustls::AlertDescription::BadRecordMac
                    ))
                ),
                "{mode:?} {version:?}: the peer is told why\n{}",
                p.summary()
            );
        }
    }
}

#[test]
fn key_update_mid_stream() {
    for backend in [crate::aead::Backend::AwsLc, crate::aead::Backend::Ring] {
        crate::aead::with_backend(backend, key_update_mid_stream_with);
    }
}

fn key_update_mid_stream_with() {
    // TLS 1.3: the peer updates its keys and asks for ours; the forwarder answers (through our
    // record layer, or through rustls) while data flows both ways.
    for mode in [Mode::Server, Mode::Client] {
        for (ktls, own) in [(false, false), (false, true), (true, true)] {
            let mut s = Setup::new(mode, Version::Tls13);
            s.ktls = ktls;
            s.own_records = own;
            let mut p = Pair::new(s);
            p.app().payload = payload(50, 300 * KIB);
            p.peer().payload = payload(51, 300 * KIB);
            p.peer().key_update_at = Some(100 * KIB);
            p.drive();
            p.assert_clean();
            assert!(p.peers[TLS].key_update_at.is_none());
        }
    }
}

#[test]
fn records_decrypted_in_place_in_one_receive() {
    // The TLS peer's records arrive together: the forwarder decrypts them all in the one receive
    // buffer, moves nothing in it, and sends their plaintext on in one piece.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.peer().payload = payload(60, 200 * KIB);
            p.drive();
            p.assert_clean();
            let whole = p.recv_log[TLS].iter().filter(|&&n| n > 200 * KIB).count();
            assert_eq!(whole, 1, "{mode:?} {version:?}: {:?}", p.recv_log[TLS]);
            assert_eq!(p.send_log[PLAIN], [200 * KIB], "{mode:?} {version:?}");
            assert_eq!(p.fwd.bytes_compacted(), 0, "{mode:?} {version:?}");
        }
    }
}

#[test]
fn record_split_across_receives() {
    // Receives of 10,000 bytes split every 16 KiB record in two or three. Before each receive,
    // the unfinished record moves to the front of the buffer, once: never more than one record.
    for mode in MODES {
        for version in VERSIONS {
            let mut s = Setup::new(mode, version);
            s.limits[TLS].recv = 10_000;
            let mut p = Pair::new(s);
            p.peer().payload = payload(61, 600 * KIB);
            p.app().payload = payload(62, 1000);
            p.drive();
            p.assert_clean();
            let moved: Vec<u64> = p.compactions.iter().copied().filter(|&c| c > 0).collect();
            assert!(moved.len() > 20, "{mode:?} {version:?}: {moved:?}");
            let biggest = *moved.iter().max().unwrap();
            assert!(
                biggest < MAX_RECORD as u64,
                "{mode:?} {version:?}: moved {biggest}"
            );
            // Less than the unfinished part of each record, so far below one copy per byte.
            let received: usize = p.recv_log[TLS].iter().sum();
            assert!(p.fwd.bytes_compacted() < received as u64 / 2, "{moved:?}");
        }
    }
}

#[test]
fn plaintext_larger_than_one_record() {
    // One read of 100 KiB from the plain leg becomes seven records, six of them full (16 KiB of
    // plaintext), encrypted into one buffer and sent at once.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.tls_sends = Some(Vec::new());
            p.app().payload = payload(63, 100 * KIB);
            p.app().chunk = 100 * KIB;
            p.peer().payload = payload(64, 1000);
            p.drive();
            p.assert_clean();
            assert!(
                p.recv_log[PLAIN].contains(&(100 * KIB)),
                "{:?}",
                p.recv_log[PLAIN]
            );
            let sends = p.tls_sends.as_ref().unwrap();
            let big: Vec<&Vec<u8>> = sends.iter().filter(|b| b.len() > 100 * KIB).collect();
            assert_eq!(big.len(), 1, "{mode:?} {version:?}: {:?}", p.send_log[TLS]);
            let records = records_in(big[0]);
            assert_eq!(records.len(), 7, "{records:?}");
            assert!(records.iter().all(|&(typ, _)| typ == 23), "{records:?}");
            // TLS 1.3: content type and tag; TLS 1.2 AES-GCM: explicit nonce and tag.
            let overhead = records[0].1 - 16384;
            assert_eq!(overhead, if version == Version::Tls13 { 17 } else { 24 });
            assert!(records[..6].iter().all(|&(_, len)| len == 16384 + overhead));
            assert_eq!(records[6].1, 100 * KIB - 6 * 16384 + overhead);
            // The record buffer goes out whole, initialised beyond the records, so that it need
            // not be zeroed again before rustls encrypts into it next time.
            let at = p.send_log[TLS].iter().position(|&n| n > 100 * KIB).unwrap();
            let whole = p.send_buf_log[TLS][at];
            assert!(whole >= Buffers::default().tls, "buffer of {whole} bytes");
        }
    }
}

#[test]
fn upload_flows_while_download_is_stalled() {
    // The app does not read while the TLS peer sends a lot, and uploads meanwhile. rustls never
    // keeps a decrypted record the app has no room for: one left inside it would stop the
    // encryption of the upload too.
    for mode in MODES {
        for version in VERSIONS {
            let mut s = Setup::new(mode, version);
            s.sock_cap = [64 * KIB; 2];
            let mut p = Pair::new(s);
            p.peer().payload = payload(65, 4 * MIB);
            p.app().payload = payload(66, 2 * MIB);
            p.app().reading = false;
            p.run();
            assert!(p.closed.is_none(), "{}", p.summary());
            let (app, peer) = (&p.peers[PLAIN], &p.peers[TLS]);
            same("upload, download stalled", &peer.received, &app.payload);
            assert!(peer.close_notify, "{}", peer.summary());
            assert!(
                peer.sent < peer.payload.len(),
                "the download was never held back"
            );
            p.app().reading = true;
            p.drive();
            p.assert_clean();
        }
    }
}

#[test]
fn handshake_fragment_while_the_receive_buffer_is_out() {
    // A certificate split across records: rustls keeps the first part in the receive buffer
    // while the driver receives the rest into it. Anything that runs the records meanwhile must
    // leave rustls alone (it would look for the part in a buffer that is not there).
    for version in VERSIONS {
        for ktls in [false, true] {
            let mut s = Setup::new(Mode::Client, version);
            s.big_cert = true;
            s.ktls = ktls;
            s.limits[TLS].recv = 1000;
            let mut p = Pair::new(s);
            p.app().payload = payload(67, 20 * KIB);
            p.peer().payload = payload(68, 20 * KIB);
            let mut seen = false;
            while !seen && p.fwd.is_handshaking() {
                assert!(p.steps < 10_000, "{}", p.summary());
                p.step();
                seen = p.fwd.handshake_fragment_out();
            }
            assert!(seen, "{version:?}: the certificate never spanned a receive");
            p.fwd.run_records();
            assert!(p.fwd.handshake_fragment_out());
            p.drive();
            p.assert_clean();
        }
    }
}
