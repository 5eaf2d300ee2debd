use std::io::{Read, Write};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ProtocolVersion, ServerConnection};
use splice_test_pki::{Key, KeyType, Pki, TempDir};

use super::*;

/// The options that load `pki`'s server certificate, and that trust its CA.
trait Options {
    fn server_options(&self) -> ServerTlsOptions;
    fn client_options(&self) -> ClientTlsOptions;
}

impl Options for Pki {
    fn server_options(&self) -> ServerTlsOptions {
        ServerTlsOptions {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            ..ServerTlsOptions::default()
        }
    }

    fn client_options(&self) -> ClientTlsOptions {
        ClientTlsOptions {
            ca: Some(self.ca.path.clone()),
            ..ClientTlsOptions::default()
        }
    }
}

/// Which side of an in-memory handshake failed.
#[derive(Debug, PartialEq, Eq)]
enum Failed {
    Client,
    Server,
}

/// Moves every pending TLS byte from `from` to `to` and lets `to` process it.
fn transfer(from: &mut Connection, to: &mut Connection) -> std::result::Result<(), rustls::Error> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).expect("write_tls to a Vec");
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls from a slice");
        to.process_new_packets()?;
    }
    Ok(())
}

/// Runs a handshake between the two configs in memory, then one round of application data.
fn connect(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> std::result::Result<(ClientConnection, ServerConnection), (Failed, rustls::Error)> {
    let name = ServerName::try_from("localhost").expect("server name");
    let mut c = Connection::Client(ClientConnection::new(client, name).expect("client"));
    let mut s = Connection::Server(ServerConnection::new(server).expect("server"));
    for _ in 0..10 {
        transfer(&mut c, &mut s).map_err(|e| (Failed::Server, e))?;
        transfer(&mut s, &mut c).map_err(|e| (Failed::Client, e))?;
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake stalled"
    );
    c.writer().write_all(b"ping").expect("client write");
    transfer(&mut c, &mut s).expect("client to server");
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).expect("server read");
    assert_eq!(&got, b"ping");
    match (c, s) {
        (Connection::Client(c), Connection::Server(s)) => Ok((c, s)),
        _ => unreachable!("built above"),
    }
}

fn message(r: Result<impl std::fmt::Debug>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn missing_file_is_named() {
    let dir = TempDir::new("missing");
    let path = dir.join("nope.pem");
    for msg in [
        message(load_certs(&path)),
        message(load_key(&path)),
        message(load_roots(&path)),
    ] {
        assert_eq!(
            msg,
            format!(
                "{}: cannot read: No such file or directory (os error 2)",
                path.display()
            )
        );
    }
}

#[test]
fn key_given_as_certificate() {
    let pki = Pki::new();
    let msg = message(load_certs(&pki.server.key));
    assert_eq!(
        msg,
        format!(
            "{}: no PEM certificate found (is this a key?)",
            pki.server.key.display()
        )
    );
    let mut opts = pki.server_options();
    opts.cert = pki.server.key.clone();
    assert!(message(server_config(&opts)).contains("(is this a key?)"));
    let mut opts = pki.client_options();
    opts.ca = Some(pki.client.key.clone());
    let msg = message(client_config(&opts));
    assert!(
        msg.starts_with(&pki.client.key.display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("no PEM certificate found (is this a key?)"),
        "{msg}"
    );
}

#[test]
fn certificate_given_as_key() {
    let pki = Pki::new();
    let msg = message(load_key(&pki.server.cert));
    assert_eq!(
        msg,
        format!(
            "{}: no private key found (is this a certificate?)",
            pki.server.cert.display()
        )
    );
    let mut opts = pki.server_options();
    opts.key = pki.server.cert.clone();
    let msg = message(server_config(&opts));
    assert!(
        msg.starts_with(&pki.server.cert.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("no private key found"), "{msg}");
}

#[test]
fn garbage_pem_is_malformed() {
    let dir = TempDir::new("garbage");
    let bad_base64 = dir.write(
        "bad64.pem",
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let no_end = dir.write(
        "noend.pem",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n",
    );
    for path in [&bad_base64, &no_end] {
        for msg in [message(load_certs(path)), message(load_key(path))] {
            let prefix = format!("{}: malformed PEM: ", path.display());
            assert!(msg.starts_with(&prefix), "{msg}");
            assert!(msg.len() > prefix.len(), "says what is malformed: {msg}");
        }
    }
    assert_eq!(
        message(load_certs(&no_end)),
        format!(
            "{}: malformed PEM: no \"-----END PRIVATE KEY-----\" line",
            no_end.display()
        )
    );
    assert!(message(load_key(&bad_base64)).contains("malformed PEM: invalid base64 ("));
}

#[test]
fn files_without_pem() {
    let dir = TempDir::new("nopem");
    let empty = dir.write("empty.pem", "");
    let text = dir.write("text.pem", "hello, I am not a certificate\n");
    let der = dir.write("cert.der", [0x30, 0x82, 0x01, 0x00, 0x02, 0x01]);
    let cases = [
        (
            &empty,
            "no PEM certificate found (the file is empty)",
            "no private key found (the file is empty)",
        ),
        (&text, "no PEM certificate found", "no private key found"),
        (
            &der,
            "no PEM certificate found (this looks like DER; convert it to PEM)",
            "no private key found (this looks like DER; convert it to PEM)",
        ),
    ];
    for (path, cert_msg, key_msg) in cases {
        assert_eq!(
            message(load_certs(path)),
            format!("{}: {cert_msg}", path.display())
        );
        assert_eq!(
            message(load_key(path)),
            format!("{}: {key_msg}", path.display())
        );
    }
}

#[test]
fn roots_must_be_usable() {
    let dir = TempDir::new("roots");
    // Valid PEM and base64, but the body is not X.509.
    let bogus = dir.write(
        "bogus.pem",
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    );
    let msg = message(load_roots(&bogus));
    assert_eq!(
        msg,
        format!(
            "{}: no certificate was usable as a trust anchor (1 found, none parsed as X.509)",
            bogus.display()
        )
    );
    let opts = ClientTlsOptions {
        ca: Some(bogus.clone()),
        ..ClientTlsOptions::default()
    };
    assert_eq!(message(client_config(&opts)), msg);
    let pki = Pki::new();
    assert_eq!(load_roots(&pki.ca.path).expect("roots").len(), 1);
}

#[test]
fn mismatched_key_names_both_files() {
    let a = Pki::new();
    let b = Pki::mixed(KeyType::P256, KeyType::P256, KeyType::Ed25519);
    let expected = format!(
        "{}: private key does not match the certificate in {}",
        b.server.key.display(),
        a.server.cert.display()
    );
    let opts = ServerTlsOptions {
        cert: a.server.cert.clone(),
        key: b.server.key.clone(),
        ..ServerTlsOptions::default()
    };
    assert_eq!(message(server_config(&opts)), expected);

    // Same for a client certificate, across key types.
    let opts = ClientTlsOptions {
        ca: Some(a.ca.path.clone()),
        cert: Some(a.client.cert.clone()),
        key: Some(b.client.key.clone()),
        ..ClientTlsOptions::default()
    };
    assert_eq!(
        message(client_config(&opts)),
        format!(
            "{}: private key does not match the certificate in {}",
            b.client.key.display(),
            a.client.cert.display()
        )
    );
}

#[test]
fn half_a_client_identity_is_an_error() {
    let pki = Pki::new();
    let mut opts = pki.client_options();
    opts.cert = Some(pki.client.cert.clone());
    let msg = message(client_config(&opts));
    assert!(
        msg.starts_with(&pki.client.cert.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("without a private key"), "{msg}");
    let mut opts = pki.client_options();
    opts.key = Some(pki.client.key.clone());
    let msg = message(client_config(&opts));
    assert!(
        msg.starts_with(&pki.client.key.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("without a certificate"), "{msg}");
}

#[test]
fn encrypted_and_duplicate_keys_are_refused() {
    let dir = TempDir::new("enc");
    let enc = dir.write(
        "enc.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let msg = message(load_key(&enc));
    assert!(
        msg.starts_with(&format!("{}: encrypted private keys", enc.display())),
        "{msg}"
    );
    let k1 = Key::generate(KeyType::P256).pem();
    let k2 = Key::generate(KeyType::P256).pem();
    let two = dir.write("two.key", format!("{k1}{k2}"));
    assert_eq!(
        message(load_key(&two)),
        format!(
            "{}: 2 private keys found; expected exactly one",
            two.display()
        )
    );
    // A well-formed PKCS#8 section that the provider cannot use.
    let junk = dir.write(
        "junk.key",
        "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
    );
    let msg = message(load_key(&junk));
    assert!(
        msg.starts_with(&format!("{}: unusable PKCS#8 private key", junk.display())),
        "{msg}"
    );
}

/// Minimal DER walk: (content of the first TLV, bytes after it).
fn der_tlv(input: &[u8]) -> (&[u8], &[u8]) {
    let (len, header) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let count = usize::from(n & 0x7f);
            let len = input[2..2 + count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + count)
        }
    };
    (&input[header..header + len], &input[header + len..])
}

/// The inner key of a PKCS#8 `PrivateKeyInfo`: PKCS#1 for RSA, SEC1 for EC.
fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
    let (info, _) = der_tlv(pkcs8);
    let (_version, rest) = der_tlv(info);
    let (_algorithm, rest) = der_tlv(rest);
    let (inner, _) = der_tlv(rest);
    inner.to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[test]
fn every_key_format_loads_and_serves() {
    let pki = Pki::mixed(KeyType::P256, KeyType::Rsa, KeyType::P256);
    let rsa = pki.server.key_der();
    let pkcs1 = pki.dir.write(
        "rsa-pkcs1.key",
        pem("RSA PRIVATE KEY", &pkcs8_inner(rsa.secret_der())),
    );
    assert!(matches!(load_key(&pkcs1), Ok(PrivateKeyDer::Pkcs1(_))));
    assert!(matches!(
        load_key(&pki.server.key),
        Ok(PrivateKeyDer::Pkcs8(_))
    ));
    // The server certificate's key, re-encoded as PKCS#1, serves a handshake.
    let mut opts = pki.server_options();
    opts.key = pkcs1;
    connect(
        client_config(&pki.client_options()).expect("client").config,
        server_config(&opts).expect("server").config,
    )
    .expect("handshake with a PKCS#1 key");

    let pki = Pki::new();
    let ec = pki.server.key_der();
    let sec1 = pki.dir.write(
        "ec-sec1.key",
        pem("EC PRIVATE KEY", &pkcs8_inner(ec.secret_der())),
    );
    assert!(matches!(load_key(&sec1), Ok(PrivateKeyDer::Sec1(_))));
    let mut opts = pki.server_options();
    opts.key = sec1;
    connect(
        client_config(&pki.client_options()).expect("client").config,
        server_config(&opts).expect("server").config,
    )
    .expect("handshake with a SEC1 key");

    let pki = Pki::mixed(KeyType::P256, KeyType::Ed25519, KeyType::P256);
    assert!(matches!(
        load_key(&pki.server.key),
        Ok(PrivateKeyDer::Pkcs8(_))
    ));
}

#[test]
fn every_algorithm_as_server_and_client() {
    for server in KeyType::ALL {
        for client in KeyType::ALL {
            let pki = Pki::mixed(KeyType::P256, server, client);
            let mut server_opts = pki.server_options();
            server_opts.client_ca = Some(pki.ca.path.clone());
            let mut client_opts = pki.client_options();
            client_opts.cert = Some(pki.client.cert.clone());
            client_opts.key = Some(pki.client.key.clone());
            for version in ["1.2", "1.3"] {
                client_opts.versions = vec![version.to_owned()];
                let (c, s) = connect(
                    client_config(&client_opts).expect("client config").config,
                    server_config(&server_opts).expect("server config").config,
                )
                .unwrap_or_else(|e| {
                    panic!("{server:?} server, {client:?} client, TLS {version}: {e:?}")
                });
                let peer = s.peer_certificates().expect("client certificate");
                assert_eq!(peer[0], load_certs(&pki.client.cert).expect("cert")[0]);
                assert!(c.peer_certificates().is_some());
            }
        }
    }
}

#[test]
fn mtls_refuses_missing_and_foreign_client_certs() {
    let pki = Pki::new();
    let mut server_opts = pki.server_options();
    server_opts.client_ca = Some(pki.ca.path.clone());
    let server = server_config(&server_opts).expect("server config").config;

    let anonymous = client_config(&pki.client_options())
        .expect("client config")
        .config;
    let (side, err) = connect(anonymous, server.clone()).expect_err("anonymous client");
    assert_eq!(side, Failed::Server);
    assert_eq!(err, rustls::Error::NoCertificatesPresented);

    let other = Pki::new();
    let mut foreign = pki.client_options();
    foreign.cert = Some(other.client.cert.clone());
    foreign.key = Some(other.client.key.clone());
    let (side, err) = connect(
        client_config(&foreign).expect("client config").config,
        server,
    )
    .expect_err("client certificate from another CA");
    assert_eq!(side, Failed::Server);
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn client_verifies_the_server() {
    let pki = Pki::new();
    let other = Pki::new();
    let client = client_config(&other.client_options())
        .expect("client config")
        .config;
    let (side, err) = connect(
        client,
        server_config(&pki.server_options()).expect("server").config,
    )
    .expect_err("server from an unknown CA");
    assert_eq!(side, Failed::Client);
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn versions_are_pinned() {
    let pki = Pki::new();
    let cases = [
        (vec!["1.2"], vec![], ProtocolVersion::TLSv1_2),
        (vec!["1.3"], vec![], ProtocolVersion::TLSv1_3),
        (vec![], vec!["1.2"], ProtocolVersion::TLSv1_2),
        (vec![], vec!["1.3"], ProtocolVersion::TLSv1_3),
        (vec![], vec![], ProtocolVersion::TLSv1_3),
        (
            vec!["1.2", "1.3"],
            vec!["1.3", "1.2"],
            ProtocolVersion::TLSv1_3,
        ),
    ];
    for (client_versions, server_versions, expected) in cases {
        let mut c = pki.client_options();
        c.versions = client_versions.iter().map(|v| v.to_string()).collect();
        let mut s = pki.server_options();
        s.versions = server_versions.iter().map(|v| v.to_string()).collect();
        let (c, s) = connect(
            client_config(&c).expect("client").config,
            server_config(&s).expect("server").config,
        )
        .expect("handshake");
        assert_eq!(c.protocol_version(), Some(expected));
        assert_eq!(s.protocol_version(), Some(expected));
    }

    let mut c = pki.client_options();
    c.versions = vec!["1.2".into()];
    let mut s = pki.server_options();
    s.versions = vec!["1.3".into()];
    connect(
        client_config(&c).expect("client").config,
        server_config(&s).expect("server").config,
    )
    .expect_err("no common version");

    c.versions = vec!["1.1".into()];
    assert_eq!(
        message(client_config(&c)),
        "TLS options: unknown TLS version \"1.1\" (expected \"1.2\" or \"1.3\")"
    );
}

#[test]
fn alpn_and_secret_extraction() {
    let pki = Pki::new();
    let mut c = pki.client_options();
    c.alpn = vec!["h2".into(), "http/1.1".into()];
    let mut s = pki.server_options();
    s.alpn = vec!["http/1.1".into()];
    for version in ["1.2", "1.3"] {
        c.versions = vec![version.into()];
        let (client, server) = connect(
            client_config(&c).expect("client").config,
            server_config(&s).expect("server").config,
        )
        .expect("handshake");
        assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
        client.dangerous_extract_secrets().expect("client secrets");
        server.dangerous_extract_secrets().expect("server secrets");
    }
    c.alpn = vec![String::new()];
    assert!(message(client_config(&c)).contains("ALPN protocol \"\""));
}

#[test]
fn configs_keep_our_provider_and_resumption() {
    let pki = Pki::new();
    let c = client_config(&pki.client_options()).expect("client").config;
    let s = server_config(&pki.server_options()).expect("server").config;
    let ours = engine_provider();
    assert_eq!(
        c.crypto_provider().cipher_suites.len(),
        ours.cipher_suites.len()
    );
    assert_eq!(
        s.crypto_provider().cipher_suites.len(),
        ours.cipher_suites.len()
    );
    assert!(c.enable_secret_extraction && s.enable_secret_extraction);
    let default = rustls::client::Resumption::default();
    assert_eq!(format!("{:?}", c.resumption), format!("{default:?}"));
}

#[test]
fn system_roots_are_used_without_a_ca() {
    let found = rustls_native_certs::load_native_certs();
    let usable = RootCertStore::empty()
        .add_parsable_certificates(found.certs)
        .0;
    match client_config(&ClientTlsOptions::default()) {
        Ok(_) => assert!(usable > 0),
        Err(Error::Unavailable { feature, why }) => {
            assert_eq!(usable, 0);
            assert_eq!(feature, "the system trust store");
            assert!(why.contains("set a CA file"), "{why}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn ca_as_pem_text() {
    let pki = Pki::new();
    let pem = std::fs::read_to_string(&pki.ca.path).expect("CA file");
    let opts = ClientTlsOptions {
        ca_pem: Some(pem),
        server_name: Some("localhost".into()),
        ..ClientTlsOptions::default()
    };
    client_config(&opts).expect("a CA given as PEM text");
    let opts = ClientTlsOptions {
        ca_pem: Some("not PEM".into()),
        ..ClientTlsOptions::default()
    };
    assert!(
        message(client_config(&opts)).starts_with("ca_pem (CA certificates given as PEM text): "),
        "the error names ca_pem"
    );
}
