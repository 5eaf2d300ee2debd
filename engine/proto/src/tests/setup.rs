//! What a test chooses (mode, version, limits, seeds) and the certificates and rustls
//! configurations made from it.

use super::*;

pub(super) struct Pki {
    pub(super) cert: CertificateDer<'static>,
    pub(super) key: PrivateKeyDer<'static>,
}

/// A self-signed certificate for "localhost"; `extra_names` more names make it bigger.
pub(super) fn pki(extra_names: usize) -> Pki {
    let mut names = vec!["localhost".to_string()];
    names.extend((0..extra_names).map(|i| format!("host-{i}.a-rather-long-domain-name.example")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let cert = splice_test_pki::Cert::self_signed(&names, splice_test_pki::KeyType::P256);
    Pki {
        key: cert.key.der(),
        cert: cert.der,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    Tls12,
    Tls13,
}

impl Version {
    pub(super) fn rustls(self) -> &'static [&'static SupportedProtocolVersion] {
        static V12: [&SupportedProtocolVersion; 1] = [&TLS12];
        static V13: [&SupportedProtocolVersion; 1] = [&TLS13];
        match self {
            Version::Tls12 => &V12,
            Version::Tls13 => &V13,
        }
    }

    pub(super) fn wire(self) -> ProtocolVersion {
        match self {
            Version::Tls12 => ProtocolVersion::TLSv1_2,
            Version::Tls13 => ProtocolVersion::TLSv1_3,
        }
    }
}

/// The rustls configurations of one test: shared between connections to test resumption.
pub(super) struct Configs {
    pub(super) client: Arc<ClientConfig>,
    pub(super) server: Arc<ServerConfig>,
}

impl Configs {
    pub(super) fn new(setup: &Setup) -> Self {
        let server = pki(if setup.big_cert { 600 } else { 0 });
        let stranger = pki(0);
        let trust = if setup.trusted {
            &server.cert
        } else {
            &stranger.cert
        };
        let mut server_provider = default_provider();
        if setup.hello_retry {
            // The client's first key share (X25519) is not acceptable: HelloRetryRequest.
            server_provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP256R1];
        }
        if let Some(suite) = setup.suite {
            server_provider.cipher_suites = vec![suite];
        }
        let versions = setup.version.rustls();
        let mut scfg = ServerConfig::builder_with_provider(Arc::new(server_provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server.cert.clone()], server.key.clone_key())
            .unwrap();
        scfg.enable_secret_extraction = setup.extract && setup.mode == Mode::Server;
        let mut roots = RootCertStore::empty();
        roots.add(trust.clone()).unwrap();
        let mut ccfg = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ccfg.enable_secret_extraction = setup.extract && setup.mode == Mode::Client;
        Self {
            client: Arc::new(ccfg),
            server: Arc::new(scfg),
        }
    }

    /// A TLS client peer (rustls's buffered API).
    pub(super) fn client(&self) -> Connection {
        let name = ServerName::try_from("localhost").unwrap();
        ClientConnection::new(self.client.clone(), name)
            .unwrap()
            .into()
    }

    /// A TLS server peer (rustls's buffered API).
    pub(super) fn server(&self) -> Connection {
        ServerConnection::new(self.server.clone()).unwrap().into()
    }

    /// The forwarder's session in client mode.
    pub(super) fn fwd_client(&self) -> TlsConn {
        let name = ServerName::try_from("localhost").unwrap();
        UnbufferedClientConnection::new(self.client.clone(), name)
            .unwrap()
            .into()
    }

    /// The forwarder's session in server mode.
    pub(super) fn fwd_server(&self) -> TlsConn {
        UnbufferedServerConnection::new(self.server.clone())
            .unwrap()
            .into()
    }
}

// ---------------------------------------------------------------------------------------------
// What a test chooses.

/// Which side the forwarder plays on its TLS leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The forwarder is the TLS client (plain in, TLS out); the peer is a rustls server.
    Client,
    /// The forwarder is the TLS server (TLS in, plain out); the peer is a rustls client.
    Server,
}

/// Limits the driver applies to each call on a leg.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) recv: usize,
    pub(super) send: usize,
    /// Pick each call's limit uniformly in `1..=limit`.
    pub(super) random: bool,
}

impl Limits {
    const NONE: Self = Self {
        recv: usize::MAX,
        send: usize::MAX,
        random: false,
    };

    pub(super) fn pick(max: usize, random: bool, rng: &mut Rng) -> usize {
        if random {
            rng.range(1, max.min(256 * KIB))
        } else {
            max
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Setup {
    pub(super) mode: Mode,
    pub(super) version: Version,
    pub(super) ktls: bool,
    pub(super) decline_handoff: bool,
    pub(super) extract: bool,
    /// Our record layer takes over after the handshake (else rustls keeps it).
    pub(super) own_records: bool,
    /// The one cipher suite the server accepts.
    pub(super) suite: Option<rustls::SupportedCipherSuite>,
    pub(super) buffers: Buffers,
    pub(super) limits: [Limits; 2],
    pub(super) sock_cap: [usize; 2],
    /// The TLS client trusts the server's certificate.
    pub(super) trusted: bool,
    /// A server certificate of some 30 KB: handshake messages span several records.
    pub(super) big_cert: bool,
    /// TLS 1.3: the server makes the client retry its hello.
    pub(super) hello_retry: bool,
    pub(super) seed: u64,
    /// Complete the driver's operations in a random order each step.
    pub(super) random_order: bool,
    /// Endpoints use random chunk sizes and sometimes pause reading.
    pub(super) random_peers: bool,
}

impl Setup {
    pub(super) fn new(mode: Mode, version: Version) -> Self {
        Self {
            mode,
            version,
            ktls: false,
            decline_handoff: true,
            extract: true,
            own_records: true,
            suite: None,
            buffers: Buffers::default(),
            limits: [Limits::NONE; 2],
            sock_cap: [256 * KIB; 2],
            trusted: true,
            big_cert: false,
            hello_retry: false,
            seed: 1,
            random_order: false,
            random_peers: false,
        }
    }
}
