use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use splice_test_pki::{Cert, KeyType, Leaf, TempDir};

use super::*;
use crate::tls::control::{ControlAction, control_record};
use crate::tls::material::{self, ServerTlsOptions};

/// A self-signed ECDSA P-256 `localhost` certificate and its key as files in a fresh temp
/// dir (removed on drop).
struct Identity {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Identity {
    fn new() -> Self {
        let dir = TempDir::new("ktls");
        let cert = Cert::self_signed(&["localhost"], KeyType::P256);
        let leaf = Leaf::write(&cert, dir.path(), "localhost").expect("write identity");
        Identity {
            _dir: dir,
            cert: leaf.cert,
            key: leaf.key,
        }
    }
}

#[test]
fn probe_agrees_with_a_direct_setsockopt() {
    let pair = LoopbackPair::new().expect("loopback pair");
    let direct = set_ulp(pair.client.as_fd());
    let support = probe();
    match direct {
        Err(e) => {
            assert!(!support.available, "{support:?}");
            assert!(!support.aes_128_gcm && !support.aes_256_gcm && !support.chacha20_poly1305);
            let reason = support.reason.expect("a reason");
            if e.raw_os_error() == Some(libc::ENOENT) {
                assert_eq!(
                    reason,
                    "the kernel has no `tls` module (TCP_ULP \"tls\": ENOENT)"
                );
            } else {
                assert!(reason.contains(&e.to_string()), "{reason} vs {e}");
            }
        }
        Ok(()) => {
            for cipher in Cipher::ALL {
                let accepted = probe_cipher(cipher).is_ok();
                let claimed = match cipher {
                    Cipher::Aes128Gcm => support.aes_128_gcm,
                    Cipher::Aes256Gcm => support.aes_256_gcm,
                    Cipher::Chacha20Poly1305 => support.chacha20_poly1305,
                };
                assert_eq!(accepted, claimed, "{cipher:?}: {support:?}");
            }
            assert_eq!(
                support.available,
                support.aes_128_gcm || support.aes_256_gcm || support.chacha20_poly1305
            );
            let all = support.aes_128_gcm && support.aes_256_gcm && support.chacha20_poly1305;
            assert_eq!(support.reason.is_none(), all, "{support:?}");
        }
    }
}

#[test]
fn supports_follows_the_cipher() {
    let support = KtlsSupport {
        available: true,
        aes_128_gcm: true,
        aes_256_gcm: false,
        chacha20_poly1305: true,
        reason: None,
    };
    for suite in rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES {
        let name = format!("{:?}", suite.suite());
        let expected = !name.contains("AES_256");
        assert_eq!(support.supports(*suite), expected, "{name}");
    }
    let none = KtlsSupport::default();
    assert!(
        rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
            .iter()
            .all(|suite| !none.supports(*suite))
    );
}

#[test]
fn crypto_info_matches_the_kernel_layout() {
    // Sizes from include/uapi/linux/tls.h.
    assert_eq!(mem::size_of::<libc::tls12_crypto_info_aes_gcm_128>(), 40);
    assert_eq!(mem::size_of::<libc::tls12_crypto_info_aes_gcm_256>(), 56);
    assert_eq!(
        mem::size_of::<libc::tls12_crypto_info_chacha20_poly1305>(),
        56
    );

    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let iv: [u8; 12] = std::array::from_fn(|i| 0xa0 + i as u8);
    let seq = 0x0102_0304_0506_0708;
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(key),
        iv: Iv::new(iv),
    };
    let Ok(CryptoInfo::Aes256Gcm(info)) =
        CryptoInfo::new(libc::TLS_1_3_VERSION, seq, &secrets, Direction::Tx)
    else {
        panic!("AES-256-GCM layout");
    };
    assert_eq!(info.info.version, 0x0304);
    assert_eq!(info.info.cipher_type, 52);
    assert_eq!(info.key, key);
    assert_eq!(info.salt, iv[..4]);
    assert_eq!(info.iv, iv[4..]);
    assert_eq!(info.rec_seq, [1, 2, 3, 4, 5, 6, 7, 8]);

    let secrets = ConnectionTrafficSecrets::Chacha20Poly1305 {
        key: AeadKey::from(key),
        iv: Iv::new(iv),
    };
    let Ok(CryptoInfo::Chacha20Poly1305(info)) =
        CryptoInfo::new(libc::TLS_1_2_VERSION, 7, &secrets, Direction::Tx)
    else {
        panic!("ChaCha20-Poly1305 layout");
    };
    assert_eq!(info.info.version, 0x0303);
    assert_eq!(info.info.cipher_type, 54);
    assert_eq!(info.iv, iv);
    assert_eq!(info.key, key);
    assert_eq!(info.rec_seq, 7u64.to_be_bytes());

    // A 32-byte key labelled AES-128 is refused before any syscall.
    let secrets = ConnectionTrafficSecrets::Aes128Gcm {
        key: AeadKey::from(key),
        iv: Iv::new(iv),
    };
    match CryptoInfo::new(libc::TLS_1_3_VERSION, 0, &secrets, Direction::Rx) {
        Err(Error::Unavailable { why, .. }) => assert!(why.contains("32-byte"), "{why}"),
        _ => panic!("expected a key-length error"),
    }
}

#[test]
fn tls12_gcm_tx_never_reuses_a_rustls_nonce() {
    let key: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
    let iv = [1, 2, 3, 4, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x81];
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(key),
        iv: Iv::new(iv),
    };
    let info = |direction| match CryptoInfo::new(libc::TLS_1_2_VERSION, 1, &secrets, direction) {
        Ok(CryptoInfo::Aes256Gcm(info)) => (info.salt, info.iv, info.rec_seq),
        _ => panic!("AES-256-GCM layout"),
    };
    // Receiving: the kernel reads explicit nonces off the wire; the layout is rustls's.
    assert_eq!(
        info(Direction::Rx),
        (
            [1, 2, 3, 4],
            iv[4..].try_into().unwrap(),
            [0, 0, 0, 0, 0, 0, 0, 1]
        )
    );
    // Sending after rustls's Finished (seq 0, nonce explicit ^ 0): the next value up.
    let (salt, tx_iv, rec_seq) = info(Direction::Tx);
    assert_eq!(salt, [1, 2, 3, 4]);
    assert_eq!(tx_iv, [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x82]);
    assert_eq!(rec_seq, 1u64.to_be_bytes());

    // Property: no kernel nonce start + k equals a rustls nonce explicit ^ j, j < seq.
    let mut state = 0x243f_6a88_85a3_08d3u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..2_000 {
        let explicit = match round % 3 {
            0 => u64::MAX - (next() % 64),
            _ => next(),
        };
        let seq = 1 + next() % 70;
        let start = u64::from_be_bytes(tls12_gcm_first_explicit_nonce(explicit.to_be_bytes(), seq));
        for k in 0..256u64 {
            let sent = start.wrapping_add(k);
            assert!(
                (0..seq).all(|j| sent != explicit ^ j),
                "explicit {explicit:#x}, seq {seq}: kernel record {k} reuses a nonce"
            );
        }
    }
    assert_eq!(tls12_gcm_first_explicit_nonce([9; 8], 0), [9; 8]);
    assert_eq!(tls12_gcm_first_explicit_nonce([0xff; 8], 1), [0; 8]);
    assert_eq!(tls12_gcm_first_explicit_nonce([0; 8], u64::MAX), [0; 8]);
}

#[test]
fn close_notify_and_recv_record_on_plain_tcp() {
    // Plain TCP ignores SOL_TLS control messages, so this checks that the kernel accepts our
    // cmsg framing (a bad cmsg_len is EINVAL) and that recvmsg without a TLS cmsg reads as
    // application data.
    let pair = LoopbackPair::new().expect("loopback pair");
    send_close_notify(pair.client.as_fd()).expect("sendmsg");
    let mut buf = [0u8; 16];
    let (kind, n) = recv_record(pair._server.as_fd(), &mut buf).expect("recvmsg");
    assert_eq!((kind, &buf[..n]), (23, &[1u8, 0][..]));
    pair.client.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(
        recv_record(pair._server.as_fd(), &mut buf).expect("eof"),
        (23, 0)
    );
}

#[test]
fn socket_errors_carry_the_errno() {
    let pair = LoopbackPair::new().expect("loopback pair");
    let (client, server) = (pair.client, pair._server);
    drop(server);
    // The peer is gone: after an RST, sendmsg fails (EPIPE/ECONNRESET) without SIGPIPE.
    let mut failed = None;
    for _ in 0..100 {
        if let Err(e) = send_close_notify(client.as_fd()) {
            failed = Some(e);
            break;
        }
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let e = failed.expect("sendmsg to a closed peer fails");
    assert!(e.raw_os_error().is_some(), "{e:?}");
}

/// A client config offering only `suite`, trusting `ca`, with secret extraction on.
fn client_with_suite(
    ca: &std::path::Path,
    suite: SupportedCipherSuite,
) -> Arc<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let version = match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(material::load_roots(ca).expect("roots"))
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    Arc::new(config)
}

/// Reads application data from a kTLS socket, letting `control_record` judge control records.
fn read_app_data(fd: BorrowedFd<'_>, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 14];
    loop {
        let (kind, n) = recv_record(fd, &mut buf).expect("recv_record");
        if kind == CONTENT_APPLICATION_DATA {
            return buf[..n].to_vec();
        }
        match control_record(kind, &buf[..n], version) {
            ControlAction::Tickets(_) => continue,
            other => panic!("unexpected control record {kind}: {other:?}"),
        }
    }
}

/// A real rustls handshake over loopback TCP, then `enable` on both ends. Where the kernel
/// has kTLS this also moves data both ways and a close_notify; where it has not, `enable`
/// must fail on TCP_ULP, as `probe` predicted.
#[test]
fn enable_after_a_loopback_handshake() {
    let id = Identity::new();
    let server = material::server_config(&ServerTlsOptions {
        cert: id.cert.clone(),
        key: id.key.clone(),
        ..ServerTlsOptions::default()
    })
    .expect("server config")
    .config;
    let support = probe();
    for suite in rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES {
        // The ECDSA key cannot serve the TLS 1.2 RSA suites.
        if format!("{:?}", suite.suite()).contains("_RSA_") {
            continue;
        }
        let client = client_with_suite(&id.cert, *suite);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = server.clone();
        thread::scope(|s| {
            let server_side = s.spawn(move || {
                let (mut tcp, _) = listener.accept().expect("accept");
                let mut tls = ServerConnection::new(server).expect("server conn");
                while tls.is_handshaking() {
                    tls.complete_io(&mut tcp).expect("server handshake");
                }
                while tls.wants_write() {
                    tls.write_tls(&mut tcp).expect("server flush");
                }
                let version = tls.protocol_version().expect("version");
                let result = enable(
                    tcp.as_fd(),
                    version,
                    tls.dangerous_extract_secrets().expect("secrets"),
                );
                (tcp, version, result)
            });
            let mut tcp = TcpStream::connect(addr).expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = ClientConnection::new(client, name).expect("client conn");
            while tls.is_handshaking() {
                tls.complete_io(&mut tcp).expect("client handshake");
            }
            while tls.wants_write() {
                tls.write_tls(&mut tcp).expect("client flush");
            }
            let version = tls.protocol_version().expect("version");
            assert_eq!(tls.negotiated_cipher_suite(), Some(*suite));
            let client_result = enable(
                tcp.as_fd(),
                version,
                tls.dangerous_extract_secrets().expect("secrets"),
            );
            let (mut server_tcp, server_version, server_result) =
                server_side.join().expect("server thread");
            assert_eq!(version, server_version);

            if support.supports(*suite) {
                client_result.unwrap_or_else(|e| panic!("{suite:?}: client enable: {e}"));
                server_result.unwrap_or_else(|e| panic!("{suite:?}: server enable: {e}"));
                tcp.write_all(b"hello from the client").expect("kTLS write");
                assert_eq!(
                    read_app_data(server_tcp.as_fd(), version),
                    b"hello from the client"
                );
                server_tcp
                    .write_all(b"hello from the server")
                    .expect("kTLS write");
                assert_eq!(
                    read_app_data(tcp.as_fd(), version),
                    b"hello from the server"
                );
                send_close_notify(tcp.as_fd()).expect("close_notify");
                let mut buf = [0u8; 64];
                let (kind, n) = recv_record(server_tcp.as_fd(), &mut buf).expect("alert");
                assert_eq!(control_record(kind, &buf[..n], version), ControlAction::Eof);
                let mut rest = Vec::new();
                drop(tcp);
                let _ = server_tcp.read_to_end(&mut rest);
            } else {
                for result in [client_result, server_result] {
                    let err = result.expect_err("kTLS is not usable for this suite");
                    let Error::Syscall(e) = &err else {
                        panic!("{suite:?}: expected a syscall error, got {err}");
                    };
                    if support.available {
                        // The module exists but refuses this cipher's keys.
                        assert_eq!(e.call, CALL_TX, "{err}");
                    } else {
                        assert_eq!(e.call, "setsockopt(SOL_TCP, TCP_ULP)", "{err}");
                        let reason = support.reason.as_deref().unwrap_or_default();
                        if e.source.raw_os_error() == Some(libc::ENOENT) {
                            assert!(reason.contains("ENOENT"), "{reason}");
                        }
                        assert!(err.to_string().contains("TCP_ULP"), "{err}");
                    }
                }
            }
        });
    }
}
