//! An in-memory world for two [`TlsForward`]s back to back: no sockets, no threads, no clock.
//!
//! A client-mode forwarder's plain leg reads from a payload in memory; its TLS leg and a
//! server-mode forwarder's TLS leg are joined by two byte queues ([`Wire`]s) that stand in for
//! one TCP connection; the server's plain leg is a sink that checks every byte it is sent
//! against the payload. The driver performs the forwarders' [`Io`] operations as the engine's
//! drivers do, copying bytes in and out where a socket's `recv` and `send` would, so what the
//! benches time is the two state machines, rustls's record layer and those copies.
//!
//! Anything unexpected panics (a close, a stall, a byte that differs or goes missing), which
//! fails the bench: a fast number from a broken path is worse than none.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::UnbufferedClientConnection;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::NoServerSessionStorage;
use rustls::server::UnbufferedServerConnection;
use rustls::{
    CipherSuite, ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use splice_proto::{Buffers, Handoff, Io, Leg, Opens, TlsForward};
use splice_test_pki::{Authority, KeyType, Usage};

/// Bytes one direction of the simulated TCP connection holds in flight (the socket buffers).
/// Larger than a forwarder's record buffer, as loopback's are, so a send of a whole buffer of
/// records goes through at once.
const WIRE_CAP: usize = 1024 * 1024;

/// A TLS version and cipher suite, both sides configured for it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// TLS 1.3, TLS13_AES_128_GCM_SHA256 (the engine's first choice).
    Tls13Aes128Gcm,
    /// TLS 1.2, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256.
    Tls12EcdheEcdsaAes128Gcm,
}

/// Who seals and opens records after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Our record layer (the engine's default).
    Own,
    /// rustls's, the baseline.
    Rustls,
}

impl Records {
    /// Both, in bench order.
    pub const ALL: [Records; 2] = [Records::Own, Records::Rustls];

    /// The bench parameter name.
    pub fn name(self) -> &'static str {
        match self {
            Records::Own => "own",
            Records::Rustls => "rustls",
        }
    }
}

impl Suite {
    /// Every case, in bench order.
    pub const ALL: [Suite; 2] = [Suite::Tls13Aes128Gcm, Suite::Tls12EcdheEcdsaAes128Gcm];

    /// The bench parameter name.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Tls13Aes128Gcm => "tls13_aes128gcm",
            Suite::Tls12EcdheEcdsaAes128Gcm => "tls12_ecdhe_ecdsa_aes128gcm",
        }
    }

    fn rustls(self) -> (SupportedCipherSuite, &'static SupportedProtocolVersion) {
        match self {
            Suite::Tls13Aes128Gcm => (
                cipher_suite::TLS13_AES_128_GCM_SHA256,
                &rustls::version::TLS13,
            ),
            Suite::Tls12EcdheEcdsaAes128Gcm => (
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                &rustls::version::TLS12,
            ),
        }
    }

    fn wire(self) -> (CipherSuite, ProtocolVersion) {
        let (suite, version) = self.rustls();
        (suite.suite(), version.version)
    }
}

/// The rustls configurations of both forwarders, shared by every pair made from them.
pub struct Configs {
    suite: Suite,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl Configs {
    /// A throwaway CA and an ECDSA P-256 leaf for "localhost" signed by it; both sides speak
    /// `suite` only. Resumption is off on both sides, as the engine configures it for
    /// `--no-resumption` (no tickets, no session cache), so every handshake is a full one.
    pub fn new(suite: Suite) -> Self {
        let ca = Authority::new("splice-bench", KeyType::P256);
        let leaf = ca.issue("localhost", &["localhost"], KeyType::P256, Usage::Server);
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der.clone(), ca.cert_der().clone()];
        let key = leaf.key.der();

        let (cs, version) = suite.rustls();
        let provider = Arc::new(CryptoProvider {
            cipher_suites: vec![cs],
            ..default_provider()
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .expect("server protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        // As in the engine: our record layer takes the secrets after the handshake.
        server.enable_secret_extraction = true;

        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("CA as a root");
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("client protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = Resumption::disabled();
        client.enable_secret_extraction = true;
        Self {
            suite,
            client: Arc::new(client),
            server: Arc::new(server),
        }
    }

    /// The client's and the server's rustls configurations (for `tunnel_link`'s links).
    #[allow(dead_code)] // tls_forward builds its pairs with `pair` instead
    pub fn rustls(&self) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        (self.client.clone(), self.server.clone())
    }

    /// A new pair of forwarders (client mode and server mode), not yet connected, with our
    /// record layer taking over after the handshake (as in the engine).
    pub fn pair(&self) -> Pair {
        self.pair_with(Records::Own)
    }

    /// A new pair, with the record layer given.
    pub fn pair_with(&self, records: Records) -> Pair {
        let name = ServerName::try_from("localhost").expect("server name");
        let client =
            UnbufferedClientConnection::new(self.client.clone(), name).expect("client connection");
        let server =
            UnbufferedServerConnection::new(self.server.clone()).expect("server connection");
        // The client's plain leg is the accepted connection, its TLS leg is still to connect;
        // the server's TLS leg is the accepted one and it connects its backend after the
        // handshake. No kTLS.
        let sizes = Buffers::default();
        let mut client = TlsForward::new(client.into(), Opens::TlsLeg, Handoff::Never, sizes);
        let mut server = TlsForward::new(server.into(), Opens::PlainLeg, Handoff::Never, sizes);
        if records == Records::Rustls {
            client.keep_rustls_records();
            server.keep_rustls_records();
        }
        Pair {
            suite: self.suite,
            client: End::new("client", client, [true, false]),
            server: End::new("server", server, [false, true]),
            c2s: Wire::new(),
            s2c: Wire::new(),
        }
    }
}

/// One direction of the simulated TCP connection between the two TLS legs.
struct Wire {
    data: Vec<u8>,
    /// Bytes at the front of `data` already read.
    head: usize,
}

impl Wire {
    fn new() -> Self {
        Self {
            data: Vec::with_capacity(2 * WIRE_CAP),
            head: 0,
        }
    }

    fn len(&self) -> usize {
        self.data.len() - self.head
    }

    /// Like a nonblocking `send`: takes what fits, 0 when full.
    fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(WIRE_CAP - self.len());
        if self.data.len() + n > self.data.capacity() {
            self.data.drain(..self.head);
            self.head = 0;
        }
        self.data.extend_from_slice(&bytes[..n]);
        n
    }

    /// Like a nonblocking `recv` of at most `max` bytes appended to `out`.
    fn pull(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = max.min(self.len());
        out.extend_from_slice(&self.data[self.head..self.head + n]);
        self.head += n;
        if self.head == self.data.len() {
            self.data.clear();
            self.head = 0;
        }
        n
    }
}

fn ix(leg: Leg) -> usize {
    match leg {
        Leg::Plain => 0,
        Leg::Tls => 1,
    }
}

/// A forwarder and the operations it has in flight (at most one of each kind per leg).
struct End {
    name: &'static str,
    fwd: TlsForward,
    connect: Option<Leg>,
    connected: [bool; 2],
    recv: [Option<(Vec<u8>, usize)>; 2],
    /// Each leg's pending send: the buffer and how many of its bytes to send.
    send: [Option<(Vec<u8>, usize)>; 2],
}

impl End {
    /// `connected`: whether the plain and the TLS leg are open from the start.
    fn new(name: &'static str, fwd: TlsForward, connected: [bool; 2]) -> Self {
        Self {
            name,
            fwd,
            connect: None,
            connected,
            recv: [None, None],
            send: [None, None],
        }
    }

    /// Takes the forwarder's operations until it has none; whether there were any.
    fn poll(&mut self) -> bool {
        let mut any = false;
        while let Some(io) = self.fwd.poll_io() {
            any = true;
            match io {
                Io::Connect(leg) => self.connect = Some(leg),
                Io::Recv { leg, buf, len } => {
                    assert!(
                        self.recv[ix(leg)].is_none(),
                        "{}: two Recv on {leg:?}",
                        self.name
                    );
                    self.recv[ix(leg)] = Some((buf, len));
                }
                Io::Send { leg, buf, len } => {
                    assert!(
                        self.send[ix(leg)].is_none(),
                        "{}: two Send on {leg:?}",
                        self.name
                    );
                    self.send[ix(leg)] = Some((buf, len));
                }
                Io::ShutdownWrite(leg) => panic!("{}: unexpected shutdown of {leg:?}", self.name),
                Io::Handoff => panic!("{}: hand-off offered without kTLS", self.name),
                Io::Close { failure } => panic!("{}: closed: {failure:?}", self.name),
            }
        }
        any
    }

    /// Every connect succeeds at once.
    fn complete_connect(&mut self) -> bool {
        let Some(leg) = self.connect.take() else {
            return false;
        };
        self.connected[ix(leg)] = true;
        self.fwd.handle_connected(leg, Ok(()));
        true
    }

    /// Completes a TLS-leg receive from `wire`, when it has bytes.
    fn complete_tls_recv(&mut self, wire: &mut Wire) -> bool {
        if wire.len() == 0 {
            return false;
        }
        let Some((mut buf, len)) = self.recv[ix(Leg::Tls)].take() else {
            return false;
        };
        let n = wire.pull(&mut buf, len);
        self.fwd.handle_recv(Leg::Tls, buf, Ok(n));
        true
    }

    /// Completes a TLS-leg send into `wire`, when it has room.
    fn complete_tls_send(&mut self, wire: &mut Wire) -> bool {
        let slot = &mut self.send[ix(Leg::Tls)];
        let Some((buf, len)) = slot.as_ref() else {
            return false;
        };
        let n = wire.push(&buf[..*len]);
        if n == 0 {
            return false;
        }
        let (buf, _) = slot.take().expect("checked above");
        self.fwd.handle_send(Leg::Tls, buf, Ok(n));
        true
    }
}

/// Two forwarders joined by their TLS legs.
pub struct Pair {
    suite: Suite,
    client: End,
    server: End,
    /// Client TLS leg -> server TLS leg.
    c2s: Wire,
    /// Server TLS leg -> client TLS leg.
    s2c: Wire,
}

/// Where one transfer is: the client's plain leg reads `payload` from `sent` on, the server's
/// plain leg has delivered the first `received` bytes of it.
struct Stream<'a> {
    payload: &'a [u8],
    sent: usize,
    received: usize,
}

impl Pair {
    /// Runs both handshakes to the end (and the server's backend connect), then checks that
    /// the configured version and cipher suite were negotiated.
    pub fn handshake(&mut self) {
        let mut stream = Stream {
            payload: &[],
            sent: 0,
            received: 0,
        };
        while self.client.fwd.is_handshaking()
            || self.server.fwd.is_handshaking()
            || !self.server.connected[ix(Leg::Plain)]
        {
            assert!(
                self.step(&mut stream),
                "handshake stalled\n{}",
                self.summary()
            );
        }
        for end in [&self.client, &self.server] {
            let tls = end.fwd.negotiated().expect("the handshake is over");
            let got = (tls.suite.suite(), tls.version);
            assert_eq!(got, self.suite.wire(), "{}: negotiated", end.name);
        }
    }

    /// Moves `payload` from the client's plain leg through both forwarders to the server's
    /// plain leg, checking every byte; the connection stays open for the next transfer.
    pub fn transfer(&mut self, payload: &[u8]) {
        let mut stream = Stream {
            payload,
            sent: 0,
            received: 0,
        };
        while stream.received < payload.len() {
            assert!(
                self.step(&mut stream),
                "stalled after {} of {} bytes sent, {} delivered\n{}",
                stream.sent,
                payload.len(),
                stream.received,
                self.summary()
            );
        }
        assert_eq!(stream.sent, payload.len(), "more read than delivered");
    }

    /// One round: take both forwarders' operations, then complete what the wires and the
    /// stream allow. Whether anything moved.
    fn step(&mut self, stream: &mut Stream<'_>) -> bool {
        let mut progress = self.client.poll();
        progress |= self.server.poll();
        progress |= self.client.complete_connect();
        progress |= self.server.complete_connect();
        progress |= self.client.complete_tls_send(&mut self.c2s);
        progress |= self.server.complete_tls_recv(&mut self.c2s);
        progress |= self.server.complete_tls_send(&mut self.s2c);
        progress |= self.client.complete_tls_recv(&mut self.s2c);
        progress |= self.source(stream);
        progress |= self.sink(stream);
        progress
    }

    /// The client's plain leg reads the next bytes of the payload.
    fn source(&mut self, stream: &mut Stream<'_>) -> bool {
        let left = stream.payload.len() - stream.sent;
        if left == 0 {
            return false;
        }
        let Some((mut buf, len)) = self.client.recv[ix(Leg::Plain)].take() else {
            return false;
        };
        let n = len.min(left);
        buf.extend_from_slice(&stream.payload[stream.sent..stream.sent + n]);
        stream.sent += n;
        self.client.fwd.handle_recv(Leg::Plain, buf, Ok(n));
        true
    }

    /// The server's plain leg takes all it is sent, each byte checked against the payload.
    fn sink(&mut self, stream: &mut Stream<'_>) -> bool {
        let Some((buf, n)) = self.server.send[ix(Leg::Plain)].take() else {
            return false;
        };
        let at = stream.received;
        let want = stream.payload.get(at..at + n);
        assert!(
            want == Some(&buf[..n]),
            "the server delivered {n} bytes at offset {at} that differ from the {} bytes sent",
            stream.payload.len()
        );
        stream.received += n;
        self.server.fwd.handle_send(Leg::Plain, buf, Ok(n));
        true
    }

    fn summary(&self) -> String {
        let end = |e: &End| {
            format!(
                "{}: handshaking={} plain in/out {}/{} connected={:?} recv={:?} send={:?}",
                e.name,
                e.fwd.is_handshaking(),
                e.fwd.plain_bytes_in(),
                e.fwd.plain_bytes_out(),
                e.connected,
                e.recv.each_ref().map(|r| r.as_ref().map(|(_, len)| *len)),
                e.send.each_ref().map(|s| s.as_ref().map(|(_, len)| *len)),
            )
        };
        format!(
            "  {}\n  {}\n  wires: c2s {} s2c {}",
            end(&self.client),
            end(&self.server),
            self.c2s.len(),
            self.s2c.len()
        )
    }
}

/// `n` bytes that no simple mistake reproduces (xorshift64), made once per bench.
pub fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}
