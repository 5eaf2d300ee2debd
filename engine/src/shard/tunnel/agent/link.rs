//! An agent's tunnel connection in the client role: the shared sans-IO
//! [`Link`](splice_proto::tunnel::link::Link) (the relay's too), built here with the agent's
//! TLS config, the relay's name and the upgrade request. The agent's reactor
//! ([`super::reactor`]) moves its ciphertext to and from the socket with the driver's ops.
//!
//! rustls runs the handshake (verifying the relay); then the link's own record layer opens
//! and seals the records in place, without rustls' buffers (see the link's documentation).

use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use splice_proto::tunnel::Version;
use splice_proto::tunnel::link::Link;
use splice_proto::ws::{AccessToken, ClientRequest, ClientToken, Mode, ResponseError, Subprotocol};

/// The subprotocols offered by an agent that speaks at most `max`, newest first.
pub(crate) fn offered(max: Version) -> Vec<Subprotocol> {
    Subprotocol::ALL
        .into_iter()
        .filter(|p| version_of(*p) <= max)
        .collect()
}

/// The format a subprotocol speaks.
pub(crate) fn version_of(p: Subprotocol) -> Version {
    match p {
        Subprotocol::V1 => Version::V1,
        Subprotocol::V2 => Version::V2,
        Subprotocol::V3 => Version::V3,
    }
}

/// The HTTP status the relay refused the upgrade with, if that is what happened.
pub(crate) fn refused_status(e: &ResponseError) -> Option<u16> {
    match e {
        ResponseError::Rejected { status, .. } => Some(*status),
        _ => None,
    }
}

/// A link that sends the upgrade for `mode` with these tokens (none: paired by the client
/// certificate in `tls`) and announced `services`, offering the subprotocols from `max` down,
/// as soon as TLS allows (the ClientHello is in its output at once). `tls` must allow secret
/// extraction (the engine's client configs do).
#[allow(clippy::too_many_arguments)]
pub(crate) fn client_link(
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    host: &str,
    mode: Mode,
    token: Option<&AccessToken>,
    client_token: Option<&ClientToken>,
    services: &[&str],
    max: Version,
) -> Result<Link, String> {
    let conn =
        UnbufferedClientConnection::new(tls, server_name).map_err(|e| format!("TLS: {e}"))?;
    let mut random = [0u8; 24];
    SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| "TLS: no random bytes for the WebSocket key".to_string())?;
    let key: [u8; 16] = random[..16].try_into().expect("16 bytes");
    let seed = u64::from_le_bytes(random[16..].try_into().expect("8 bytes"));
    let offered = offered(max);
    let request = ClientRequest {
        host,
        mode,
        access_token: token,
        services,
        client_token,
        protocols: &offered,
        key,
        user_agent: concat!("splice-engine/", env!("CARGO_PKG_VERSION")),
    };
    Ok(Link::client(conn, &request, seed))
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use rustls::ServerConnection;
    use splice_proto::tunnel::link::{Event, SEND_HEADROOM, SEND_TAILROOM};
    use splice_proto::ws::{
        self, Encoder, Item, OpCode, ParsedRequest, Role, close_code, parse_request,
    };
    use splice_test_pki::{Cert, KeyType};

    use super::*;

    /// The agent's config (secrets extractable, as the engine's are) and rustls' own server:
    /// an independent TLS and WebSocket peer for the link.
    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let cert = Cert::self_signed(&["relay.test"], KeyType::P256);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.enable_secret_extraction = true;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], cert.key.der())
            .unwrap();
        (Arc::new(client), Arc::new(server))
    }

    /// Moves the client's records to the server and back until neither has any; returns the
    /// plaintext the server read.
    fn pump(client: &mut Link, server: &mut ServerConnection) -> Vec<u8> {
        let mut plain = Vec::new();
        loop {
            let mut out = Vec::new();
            client.take_output(&mut out);
            let mut rd = &out[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
                let _ = server.reader().read_to_end(&mut plain); // WouldBlock once all is read
            }
            let mut back = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut back).unwrap();
            }
            if !back.is_empty() {
                client.receive_tls(&back).unwrap();
            }
            if out.is_empty() && back.is_empty() {
                return plain;
            }
        }
    }

    fn link(client: Arc<rustls::ClientConfig>, ct: Option<&ClientToken>) -> Link {
        client_link(
            client,
            ServerName::try_from("relay.test").unwrap(),
            "relay.test",
            Mode::Destination,
            Some(&AccessToken::new("secret-token").unwrap()),
            ct,
            &[],
            Version::V3,
        )
        .unwrap()
    }

    /// A link through its upgrade with rustls' server; returns the server.
    fn upgraded(client: &mut Link, server_cfg: Arc<rustls::ServerConfig>) -> ServerConnection {
        let mut server = ServerConnection::new(server_cfg).unwrap();
        let request = pump(client, &mut server);
        let ParsedRequest::Complete { request, .. } = parse_request(&request).unwrap() else {
            panic!("a whole request");
        };
        server
            .writer()
            .write_all(&request.accept_response("c"))
            .unwrap();
        pump(client, &mut server);
        let Some(Event::Open(accepted)) = client.poll() else {
            panic!("no 101");
        };
        assert_eq!(version_of(accepted.protocol), Version::V3);
        server
    }

    #[test]
    fn upgrade_messages_ping_and_close_in_memory() {
        let (client_cfg, server_cfg) = configs(rustls::DEFAULT_VERSIONS);
        let ct = ClientToken::new("c".repeat(40)).unwrap();
        let mut client = link(client_cfg, Some(&ct));
        let mut server = ServerConnection::new(server_cfg).unwrap();
        let request = pump(&mut client, &mut server);
        let ParsedRequest::Complete { request, len } = parse_request(&request).unwrap() else {
            panic!("a whole request");
        };
        assert!(len > 0);
        assert_eq!(request.mode, Mode::Destination);
        assert_eq!(
            request.access_token.as_ref().map(|t| t.secret()),
            Some("secret-token")
        );
        assert_eq!(request.client_token.as_ref(), Some(&ct));
        assert_eq!(request.protocol, Subprotocol::V3);
        assert!(!format!("{client:?}").contains("secret-token"));

        // The 101, a ping, a message, a close: each comes out as it should.
        let enc = Encoder::new(Role::Server);
        let mut wire = request.accept_response("chan-1");
        enc.control(OpCode::Ping, b"hi", None, &mut wire).unwrap();
        let frame = b"\x00\x02\x08\x05".to_vec();
        let mut msg = vec![0u8; ws::MAX_HEADER_LEN];
        msg.extend_from_slice(&frame);
        let end = msg.len();
        let start = enc
            .frame_in_place(
                &mut msg,
                ws::MAX_HEADER_LEN..end,
                OpCode::Binary,
                true,
                None,
            )
            .unwrap();
        wire.extend_from_slice(&msg[start..]);
        enc.close(1000, "tunnel closed", None, &mut wire).unwrap();
        server.writer().write_all(&wire).unwrap();
        pump(&mut client, &mut server);
        let Some(Event::Open(accepted)) = client.poll() else {
            panic!("no 101");
        };
        assert_eq!(version_of(accepted.protocol), Version::V3);
        let Some(Event::Message(m)) = client.poll() else {
            panic!("a message");
        };
        assert_eq!(m, &frame[..]);
        let Some(Event::Closed { code, reason }) = client.poll() else {
            panic!("the close");
        };
        assert_eq!((code, reason.as_str()), (Some(1000), "tunnel closed"));
        assert!(client.is_done());

        // The pong and our close answer went out, masked.
        let back = pump(&mut client, &mut server);
        let mut dec = ws::Decoder::new(Role::Server, ws::Limits::default());
        let mut buf = back.clone();
        let first = dec.handle_bytes(&mut buf).unwrap();
        let Some(Item::Pong(r)) = first.item else {
            panic!("a pong first: {first:?}");
        };
        assert_eq!(&buf[r], b"hi");
        let mut rest = buf[first.consumed..].to_vec();
        let Some(Item::Close(close)) = dec.handle_bytes(&mut rest).unwrap().item else {
            panic!("our close");
        };
        assert_eq!(close.code, Some(close_code::NORMAL));
    }

    /// DATA goes out with `send_in_place` (one record, or framed in place and sealed record by
    /// record when larger): rustls' server reads masked binary messages with the payloads, on
    /// TLS 1.2 and 1.3.
    #[test]
    fn frames_sent_in_place_are_masked_binary_messages() {
        for versions in [&[&rustls::version::TLS12][..], &[&rustls::version::TLS13]] {
            let (client_cfg, server_cfg) = configs(versions);
            let mut client = link(client_cfg, None);
            let mut server = upgraded(&mut client, server_cfg);
            let mut dec = ws::Decoder::new(Role::Server, ws::Limits::default());
            for n in [300, 16_000, 64_512] {
                let frame: Vec<u8> = (0..n).map(|i| (i * 13 + n) as u8).collect();
                let mut buf = Vec::with_capacity(SEND_HEADROOM + n + SEND_TAILROOM);
                buf.resize(SEND_HEADROOM, 0);
                buf.extend_from_slice(&frame);
                client.send_in_place(buf, SEND_HEADROOM..SEND_HEADROOM + n);
                let mut got = pump(&mut client, &mut server);
                let d = dec.handle_bytes(&mut got).unwrap();
                let Some(Item::Binary(r)) = d.item else {
                    panic!("a binary message: {d:?}");
                };
                assert!(got[r] == frame[..], "{n} bytes over {versions:?}");
                assert_eq!(d.consumed, got.len());
            }
        }
    }

    #[test]
    fn a_refusal_names_its_status() {
        let (client_cfg, server_cfg) = configs(rustls::DEFAULT_VERSIONS);
        let mut client = link(client_cfg, None);
        let mut server = ServerConnection::new(server_cfg).unwrap();
        pump(&mut client, &mut server);
        server
            .writer()
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
        pump(&mut client, &mut server);
        let Some(Event::Refused(e)) = client.poll() else {
            panic!("refused");
        };
        assert_eq!(refused_status(&e), Some(403));
    }

    #[test]
    fn offers_from_the_newest_down() {
        assert_eq!(
            offered(Version::V3),
            [Subprotocol::V3, Subprotocol::V2, Subprotocol::V1]
        );
        assert_eq!(offered(Version::V2), [Subprotocol::V2, Subprotocol::V1]);
        assert_eq!(offered(Version::V1), [Subprotocol::V1]);
    }
}
