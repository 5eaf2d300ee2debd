//! Interoperability with an independent TLS implementation: `openssl s_client` against server
//! mode, and `openssl s_server` as the upstream of client mode, with TLS 1.2 and TLS 1.3.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::*;

/// `openssl s_client` connected to server mode in front of the echo backend, verifying it against
/// the test CA; the fields keep the backend, the engine and the certificates alive.
struct SClient {
    cli: OpensslChild,
    _server: Proc,
    _backend: Backend,
    _pki: Pki,
}

impl SClient {
    /// Starts both, with `extra` s_client flags after the common ones.
    fn to_server_mode(extra: &[&str]) -> SClient {
        let pki = Pki::new();
        let backend = echo_backend();
        let sp = free_port();
        let server = EngineCmd::server(sp, backend.addr, &pki.server, "auto").start();
        let args = [&["-verify_return_error"], extra].concat();
        SClient {
            cli: OpensslChild::s_client(localhost(sp), &pki.ca.path, &args),
            _server: server,
            _backend: backend,
            _pki: pki,
        }
    }
}

/// `openssl s_client` (`-tls1_2` or `-tls1_3`) against server mode in front of the echo backend:
/// a short line and 256 KiB of text come back intact, and the negotiated version is the one
/// asked for.
fn s_client_to_server_mode(version_flag: &str, version_name: &str) {
    let mut s =
        SClient::to_server_mode(&["-verify_hostname", "localhost", "-nocommands", version_flag]);
    let cli = &mut s.cli;
    cli.send(b"0hello from openssl s_client\n");
    assert!(
        cli.wait_stdout(b"0hello from openssl s_client\n"),
        "s_client did not get its line echoed; stdout {:?}, stderr:\n{}",
        String::from_utf8_lossy(&cli.stdout()),
        cli.stderr()
    );
    let err = cli.stderr();
    assert!(
        err.contains(&format!("Protocol version: {version_name}")),
        "s_client did not negotiate {version_name}:\n{err}"
    );
    assert!(
        err.contains("Verification: OK"),
        "s_client verification:\n{err}"
    );

    // A bigger body: 4096 lines of 64 hex characters.
    let data = random_bytes(4096 * 32, 50);
    let mut text = Vec::new();
    for chunk in data.chunks(32) {
        text.extend_from_slice(b"0");
        text.extend_from_slice(hex(chunk).as_bytes());
        text.push(b'\n');
    }
    cli.send(&text);
    let mut expected = b"0hello from openssl s_client\n".to_vec();
    expected.extend_from_slice(&text);
    let ok = wait_until(SOON, || cli.stdout().len() >= expected.len());
    let got = cli.stdout();
    assert!(
        ok && got == expected,
        "s_client got {} bytes back, want {} (equal: {})",
        got.len(),
        expected.len(),
        got == expected
    );
    cli.close_stdin();
    assert!(
        cli.wait_exit(SOON).is_some(),
        "s_client did not finish after its stdin closed"
    );
}

#[test]
fn s_client_tls12_to_server_mode() {
    s_client_to_server_mode("-tls1_2", "TLSv1.2");
}

#[test]
fn s_client_tls13_to_server_mode() {
    s_client_to_server_mode("-tls1_3", "TLSv1.3");
}

/// `openssl s_client` updates its TLS 1.3 keys in the middle of the stream and asks for ours
/// (its `K` command): server mode's record layer changes its receive key, answers with a
/// KeyUpdate of its own, and the echo goes on under the new keys both ways.
#[test]
fn s_client_key_update_against_server_mode() {
    let mut s = SClient::to_server_mode(&["-tls1_3"]);
    let cli = &mut s.cli;
    cli.send(b"0before the key update\n");
    assert!(
        cli.wait_stdout(b"0before the key update\n"),
        "no echo before the key update; stderr:\n{}",
        cli.stderr()
    );
    for round in 0..3 {
        // s_client reads a command only at the start of what one read returns, and drops the
        // rest: wait until it has taken the command before sending the next line.
        cli.send(b"K\n");
        assert!(
            wait_until(SOON, || cli.stderr().matches("KEYUPDATE").count() > round),
            "s_client did not take its K command:\n{}",
            cli.stderr()
        );
        let line = format!("0after key update {round}\n");
        cli.send(line.as_bytes());
        assert!(
            cli.wait_stdout(line.as_bytes()),
            "no echo after key update {round}; stdout {:?}, stderr:\n{}",
            String::from_utf8_lossy(&cli.stdout()),
            cli.stderr()
        );
    }
    let err = cli.stderr();
    assert_eq!(
        err.matches("KEYUPDATE").count(),
        3,
        "s_client sent its key updates:\n{err}"
    );
    cli.close_stdin();
    assert!(
        cli.wait_exit(SOON).is_some(),
        "s_client did not finish after its stdin closed"
    );
}

/// `openssl s_server` (`-tls1_2` or `-tls1_3`) as the upstream of client mode (restricted to the
/// same version with `--tls-version`): data flows both ways.
fn s_server_behind_client_mode(version_flag: &str, engine_version: &str) {
    let pki = Pki::new();
    let up = free_port();
    let accept = localhost(up).to_string();
    let cert = pki.server.cert.to_string_lossy().into_owned();
    let key = pki.server.key.to_string_lossy().into_owned();
    let mut srv = OpensslChild::spawn(&[
        "s_server",
        "-accept",
        &accept,
        "-cert",
        &cert,
        "-key",
        &key,
        "-quiet",
        "-naccept",
        "1",
        version_flag,
    ]);
    srv.wait_listening(up);

    let cp = free_port();
    let _client = EngineCmd::client(cp, localhost(up), &pki.ca, "auto")
        .opt("--sni", "localhost")
        .opt("--tls-version", engine_version)
        .start();
    let mut s = connect(localhost(cp));
    s.write_all(b"0hello from the plain client\n")
        .expect("write");
    assert!(
        srv.wait_stdout(b"0hello from the plain client\n"),
        "s_server did not receive the client's line; stdout {:?}",
        String::from_utf8_lossy(&srv.stdout())
    );
    srv.send(b"0hello from s_server\n");
    let mut back = vec![0u8; b"0hello from s_server\n".len()];
    s.read_exact(&mut back)
        .expect("read s_server's line through client mode");
    assert_eq!(back, b"0hello from s_server\n");

    // A second round in each direction on the same connection.
    s.write_all(b"0second line\n").expect("write");
    assert!(
        srv.wait_stdout(b"0second line\n"),
        "s_server missed the second line"
    );
    srv.send(b"0second reply\n");
    let mut back = vec![0u8; b"0second reply\n".len()];
    s.read_exact(&mut back).expect("read the second reply");
    assert_eq!(back, b"0second reply\n");
}

#[test]
fn s_server_tls12_behind_client_mode() {
    s_server_behind_client_mode("-tls1_2", "1.2");
}

#[test]
fn s_server_tls13_behind_client_mode() {
    s_server_behind_client_mode("-tls1_3", "1.3");
}

/// Client mode restricted to TLS 1.3 against an `s_server` that only speaks TLS 1.2: the
/// handshake fails, the plain client is closed without data, and the engine logs side=tls.
#[test]
fn tls_version_mismatch_is_refused() {
    let pki = Pki::new();
    let up = free_port();
    let accept = localhost(up).to_string();
    let cert = pki.server.cert.to_string_lossy().into_owned();
    let key = pki.server.key.to_string_lossy().into_owned();
    let mut srv = OpensslChild::spawn(&[
        "s_server", "-accept", &accept, "-cert", &cert, "-key", &key, "-quiet", "-tls1_2",
    ]);
    srv.wait_listening(up);
    let cp = free_port();
    let client = EngineCmd::client(cp, localhost(up), &pki.ca, "auto")
        .opt("--sni", "localhost")
        .opt("--tls-version", "1.3")
        .start();
    let (data, end) = send_and_read_to_end(localhost(cp), b"0should never arrive\n");
    assert!(end.closed(), "the connection was not closed: {end:?}");
    assert!(
        data.is_empty(),
        "got data through a failed handshake: {data:?}"
    );
    assert!(
        !srv.stdout()
            .windows(b"should never arrive".len())
            .any(|w| w == b"should never arrive"),
        "s_server received data despite the version mismatch"
    );
    assert!(
        client.wait_log(SOON, |l| !warn_lines_with_side(l, "tls").is_empty()),
        "no warn line with side=tls for the failed handshake:\n{}",
        client.log()
    );
    // Keep the borrow checker honest about srv living until here.
    let _ = srv.wait_exit(Duration::from_millis(1));
}
