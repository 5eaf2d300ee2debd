//! rustls peers: client and server configs, handshakes, a TLS echo server.

use super::*;

/// A rustls client stream over TCP.
pub type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

/// TLS 1.3 only.
pub const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// TLS 1.2 only.
pub const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
/// Both.
pub const TLS_ANY: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The engine's provider (aws-lc-rs), explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config trusting only `roots`, presenting `cert` if given.
pub fn client_config(
    roots: &[&Ca],
    cert: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for ca in roots {
        store.add(ca.cert_der.clone()).expect("add a root");
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("client protocol versions")
        .with_root_certificates(store);
    let cfg = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key_der())
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// A server config presenting `leaf`, requiring client certificates from `client_ca` if given.
pub fn server_config(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("server protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut store = RootCertStore::empty();
            store.add(ca.cert_der.clone()).expect("add client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der())
            .expect("server cert"),
    )
}

/// Connects and completes a TLS handshake, or says why not.
pub fn try_tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<ClientConfig>,
) -> io::Result<TlsStream> {
    try_tls_on(try_connect(addr)?, sni, cfg)
}

/// Completes a TLS handshake on an already connected socket, or says why not.
pub fn try_tls_on(sock: TcpStream, sni: &str, cfg: Arc<ClientConfig>) -> io::Result<TlsStream> {
    let name = ServerName::try_from(sni.to_string()).expect("valid server name");
    let conn = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Connects and completes a TLS handshake; panics on failure.
pub fn tls_connect(addr: SocketAddr, sni: &str, cfg: Arc<ClientConfig>) -> TlsStream {
    try_tls_connect(addr, sni, cfg)
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} (SNI {sni}) failed: {e}"))
}

/// Sends close_notify and half-closes the TCP write side.
pub fn tls_close(tls: &mut TlsStream) {
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    let _ = tls.sock.shutdown(Shutdown::Write);
}

/// A rustls TLS echo server (each connection on its own thread).
pub fn tls_echo_server(cfg: Arc<ServerConfig>) -> Backend {
    Backend::spawn(move |sock| {
        let Ok(conn) = ServerConnection::new(cfg.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                        return;
                    }
                }
            }
        }
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
    })
}
