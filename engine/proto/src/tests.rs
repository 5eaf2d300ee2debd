//! Deterministic in-memory tests of [`TlsForward`].
//!
//! A [`Pair`] is a small simulated world: a driver that performs the forwarder's [`Io`]
//! operations on in-memory sockets ([`Pipe`]s, with capacities and per-call limits for partial
//! I/O), a plain application on the plain leg and a rustls peer (or a raw byte stream) on the
//! TLS leg. Everything is single-threaded and seeded, so every run is the same.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::crypto::aws_lc_rs::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, Connection, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, SupportedProtocolVersion,
};

use crate::tls_conn::Records;
use crate::{Buffers, Failure, Fault, Io, Leg, TlsConn, TlsForward};

const PLAIN: usize = 0;
const TLS: usize = 1;
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The largest TLS record on the wire.
const MAX_RECORD: usize = 5 + 16384 + 256;

fn ix(leg: Leg) -> usize {
    match leg {
        Leg::Plain => PLAIN,
        Leg::Tls => TLS,
    }
}

fn leg_of(i: usize) -> Leg {
    if i == PLAIN { Leg::Plain } else { Leg::Tls }
}

// ---------------------------------------------------------------------------------------------
// A tiny seeded PRNG (xorshift64), so that no dependency is needed.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 spreads small seeds over the state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn payload(seed: u64, n: usize) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

// ---------------------------------------------------------------------------------------------
// Certificates and rustls configurations.

struct Pki {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

/// A self-signed certificate for "localhost"; `extra_names` more names make it bigger.
fn pki(extra_names: usize) -> Pki {
    let mut names = vec!["localhost".to_string()];
    names.extend((0..extra_names).map(|i| format!("host-{i}.a-rather-long-domain-name.example")));
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    Pki {
        cert: ck.cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()).into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

impl Version {
    fn rustls(self) -> &'static [&'static SupportedProtocolVersion] {
        static V12: [&SupportedProtocolVersion; 1] = [&TLS12];
        static V13: [&SupportedProtocolVersion; 1] = [&TLS13];
        match self {
            Version::Tls12 => &V12,
            Version::Tls13 => &V13,
        }
    }

    fn wire(self) -> ProtocolVersion {
        match self {
            Version::Tls12 => ProtocolVersion::TLSv1_2,
            Version::Tls13 => ProtocolVersion::TLSv1_3,
        }
    }
}

/// The rustls configurations of one test: shared between connections to test resumption.
struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl Configs {
    fn new(setup: &Setup) -> Self {
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
    fn client(&self) -> Connection {
        let name = ServerName::try_from("localhost").unwrap();
        ClientConnection::new(self.client.clone(), name)
            .unwrap()
            .into()
    }

    /// A TLS server peer (rustls's buffered API).
    fn server(&self) -> Connection {
        ServerConnection::new(self.server.clone()).unwrap().into()
    }

    /// The forwarder's session in client mode.
    fn fwd_client(&self) -> TlsConn {
        let name = ServerName::try_from("localhost").unwrap();
        UnbufferedClientConnection::new(self.client.clone(), name)
            .unwrap()
            .into()
    }

    /// The forwarder's session in server mode.
    fn fwd_server(&self) -> TlsConn {
        UnbufferedServerConnection::new(self.server.clone())
            .unwrap()
            .into()
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory sockets.

/// One direction of a TCP connection: a bounded byte queue with FIN and reset.
#[derive(Debug, Default)]
struct Pipe {
    data: VecDeque<u8>,
    /// The socket buffer: most bytes in flight.
    cap: usize,
    /// The writer shut down its write half; the reader gets EOF after the data.
    fin: bool,
    /// The writer reset the connection; the reader gets an error after the data.
    reset: bool,
    /// The reader is gone (reset or closed): writes fail.
    reader_gone: bool,
    written: u64,
    read: u64,
    /// Every byte written, while someone wants to look at the stream afterwards.
    history: Option<Vec<u8>>,
}

impl Pipe {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    fn room(&self) -> usize {
        self.cap.saturating_sub(self.data.len())
    }

    fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.data.extend(&bytes[..n]);
        if let Some(h) = &mut self.history {
            h.extend_from_slice(&bytes[..n]);
        }
        self.written += n as u64;
        n
    }

    fn pull(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = max.min(self.data.len());
        out.extend(self.data.drain(..n));
        self.read += n as u64;
        n
    }

    fn summary(&self) -> String {
        format!(
            "[{}/{} w{} r{}{}{}{}]",
            self.data.len(),
            self.cap,
            self.written,
            self.read,
            if self.fin { " fin" } else { "" },
            if self.reset { " rst" } else { "" },
            if self.reader_gone { " gone" } else { "" },
        )
    }
}

/// `Write` into a pipe, at most `max` bytes a call (`WouldBlock` when full).
struct PipeWriter<'a> {
    pipe: &'a mut Pipe,
    max: usize,
}

impl Write for PipeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pipe.reader_gone {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = self.pipe.push(&buf[..buf.len().min(self.max)]);
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `Read` from a pipe, at most `max` bytes a call.
struct PipeReader<'a> {
    pipe: &'a mut Pipe,
    max: usize,
}

impl Read for PipeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pipe.data.is_empty() {
            return if self.pipe.reset {
                Err(io::ErrorKind::ConnectionReset.into())
            } else if self.pipe.fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = out.len().min(self.max).min(self.pipe.data.len());
        for (o, b) in out.iter_mut().zip(self.pipe.data.drain(..n)) {
            *o = b;
        }
        self.pipe.read += n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// The endpoints: the plain application and the TLS peer.

/// When an endpoint starts sending its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Now,
    /// Once the other side's stream has ended cleanly (FIN for the plain app, close_notify for
    /// the TLS peer): a half-closed connection still carrying data the other way.
    AfterEof,
}

/// What an endpoint does once its payload is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Nothing: the write half stays open.
    Open,
    /// Plain: FIN. TLS: close_notify (then the trailer, if any), then FIN.
    Close,
    /// TLS: FIN without close_notify (a truncation attack, or a careless peer).
    FinOnly,
    /// Reset the connection.
    Reset,
}

/// An endpoint: with `conn` a TLS peer, without it a plain byte stream.
struct Peer {
    name: &'static str,
    conn: Option<Connection>,
    payload: Vec<u8>,
    sent: usize,
    start: Start,
    end: End,
    /// Raw bytes written after close_notify (End::Close only).
    trailer: Vec<u8>,
    trailer_sent: usize,
    /// Most bytes written (or given to rustls) at once.
    chunk: usize,
    reading: bool,
    /// Sometimes skip reading, to vary the interleaving.
    flaky: bool,
    received: Vec<u8>,
    fin_seen: bool,
    close_notify: bool,
    reset_seen: bool,
    /// rustls saw the transport end without close_notify.
    truncated: bool,
    error: Option<rustls::Error>,
    ended: bool,
    fin_sent: bool,
    /// Offset in the outgoing stream where this peer's first application data record starts.
    app_start: Option<u64>,
    /// (bytes written to the socket, plaintext sent) whenever all records were flushed: maps
    /// record bytes back to the plaintext they carry.
    marks: Vec<(u64, u64)>,
    /// Send a TLS 1.3 KeyUpdate (asking for one back) once this much plaintext is sent.
    key_update_at: Option<usize>,
}

impl Peer {
    fn new(name: &'static str, conn: Option<Connection>) -> Self {
        Self {
            name,
            conn,
            payload: Vec::new(),
            sent: 0,
            start: Start::Now,
            end: End::Close,
            trailer: Vec::new(),
            trailer_sent: 0,
            chunk: 64 * KIB,
            reading: true,
            flaky: false,
            received: Vec::new(),
            fin_seen: false,
            close_notify: false,
            reset_seen: false,
            truncated: false,
            error: None,
            ended: false,
            fin_sent: false,
            app_start: None,
            marks: Vec::new(),
            key_update_at: None,
        }
    }

    /// Most plaintext that the first `wire` bytes of our outgoing stream can carry.
    fn plaintext_upto(&self, wire: u64) -> u64 {
        if self.conn.is_none() {
            return wire;
        }
        let i = self.marks.partition_point(|&(w, _)| w < wire);
        self.marks
            .get(i)
            .map_or(self.sent as u64, |&(_, p)| p)
            .min(wire)
    }

    fn summary(&self) -> String {
        format!(
            "{}: sent {}/{} recv {}{}{}{}{}{}{}",
            self.name,
            self.sent,
            self.payload.len(),
            self.received.len(),
            if self.fin_seen { " fin_seen" } else { "" },
            if self.close_notify {
                " close_notify"
            } else {
                ""
            },
            if self.reset_seen { " reset_seen" } else { "" },
            if self.truncated { " truncated" } else { "" },
            if self.fin_sent { " fin_sent" } else { "" },
            self.error
                .as_ref()
                .map_or(String::new(), |e| format!(" error={e}")),
        )
    }

    fn chunk(&self, rng: &mut Rng, random: bool) -> usize {
        if random {
            rng.range(1, self.chunk)
        } else {
            self.chunk
        }
    }

    /// Reads what `rx` holds; returns whether anything happened.
    fn read(&mut self, rx: &mut Pipe, rng: &mut Rng, random: bool) -> bool {
        if !self.reading || self.reset_seen {
            return false;
        }
        if self.flaky && !rx.data.is_empty() && rng.chance(30) {
            return true; // not now, but there is something to do
        }
        let mut progress = false;
        loop {
            let max = if random {
                rng.range(1, 64 * KIB)
            } else {
                64 * KIB
            };
            if rx.data.is_empty() {
                if rx.reset {
                    self.reset_seen = true;
                    return true;
                }
                if !rx.fin || self.fin_seen {
                    return progress;
                }
                self.fin_seen = true;
                if self.conn.is_some() {
                    let _ = self.conn.as_mut().unwrap().read_tls(&mut io::empty());
                    self.process();
                }
                return true;
            }
            match &mut self.conn {
                None => {
                    rx.pull(&mut self.received, max);
                    progress = true;
                }
                Some(conn) => {
                    if self.error.is_some() {
                        return progress;
                    }
                    match conn.read_tls(&mut PipeReader { pipe: rx, max }) {
                        Ok(0) => return progress, // after close_notify rustls takes no more
                        Ok(_) => progress = true,
                        Err(e) => panic!("{}: read_tls: {e}", self.name),
                    }
                    self.process();
                }
            }
        }
    }

    fn process(&mut self) {
        if self.error.is_some() {
            return; // rustls asserts that it is not called again after a fatal alert
        }
        let conn = self.conn.as_mut().unwrap();
        if let Err(e) = conn.process_new_packets() {
            self.error.get_or_insert(e);
            return;
        }
        let mut tmp = [0u8; 16 * KIB];
        loop {
            match conn.reader().read(&mut tmp) {
                Ok(0) => {
                    self.close_notify = true;
                    break;
                }
                Ok(n) => self.received.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.truncated = true;
                    break;
                }
                Err(e) => panic!("{}: read plaintext: {e}", self.name),
            }
        }
    }

    fn started(&self) -> bool {
        match self.start {
            Start::Now => true,
            Start::AfterEof if self.conn.is_some() => self.close_notify,
            Start::AfterEof => self.fin_seen,
        }
    }

    fn reset(&mut self, rx: &mut Pipe, tx: &mut Pipe) {
        tx.reset = true;
        rx.reader_gone = true;
        self.fin_sent = true;
    }

    /// Writes what it can into `tx`; returns whether anything happened.
    fn write(&mut self, rx: &mut Pipe, tx: &mut Pipe, rng: &mut Rng, random: bool) -> bool {
        if self.fin_sent || self.reset_seen {
            return false;
        }
        if tx.reader_gone {
            // The forwarder closed: our writes would be answered with a reset.
            if self.sent < self.payload.len() || !self.ended {
                self.reset_seen = true;
                return true;
            }
            return false;
        }
        let started = self.started();
        let mut progress = false;
        if self.conn.is_none() {
            if started && self.sent < self.payload.len() {
                let end = self.payload.len().min(self.sent + self.chunk(rng, random));
                let n = tx.push(&self.payload[self.sent..end]);
                self.sent += n;
                progress |= n > 0;
            }
            if started && self.sent == self.payload.len() && !self.ended {
                self.ended = true;
                progress = true;
                match self.end {
                    End::Open => {}
                    End::Close | End::FinOnly => {
                        tx.fin = true;
                        self.fin_sent = true;
                    }
                    End::Reset => self.reset(rx, tx),
                }
            }
            return progress;
        }
        loop {
            let chunk = self.chunk(rng, random);
            let conn = self.conn.as_mut().unwrap();
            while conn.wants_write() {
                let max = if random {
                    rng.range(1, 64 * KIB)
                } else {
                    usize::MAX
                };
                match conn.write_tls(&mut PipeWriter { pipe: tx, max }) {
                    Ok(_) => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.reset_seen = true;
                        return true;
                    }
                }
            }
            if conn.wants_write() {
                return progress; // the socket is full
            }
            if self.marks.last().is_none_or(|&(w, _)| w < tx.written) {
                self.marks.push((tx.written, self.sent as u64));
            }
            if self.error.is_some() {
                // The alert is out: close the transport.
                tx.fin = true;
                self.fin_sent = true;
                return true;
            }
            if !started || conn.is_handshaking() {
                return progress;
            }
            if self.key_update_at.is_some_and(|at| self.sent >= at) {
                // TLS 1.3 only: the forwarder must answer with its own key update.
                self.key_update_at = None;
                conn.refresh_traffic_keys().unwrap();
                progress = true;
                continue;
            }
            if self.sent < self.payload.len() {
                self.app_start.get_or_insert(tx.written);
                let end = self.payload.len().min(self.sent + chunk);
                let n = conn.writer().write(&self.payload[self.sent..end]).unwrap();
                self.sent += n;
                progress = true;
                continue;
            }
            if !self.ended {
                self.ended = true;
                progress = true;
                match self.end {
                    End::Open => return progress,
                    End::Close => {
                        conn.send_close_notify();
                        continue;
                    }
                    End::FinOnly => {
                        tx.fin = true;
                        self.fin_sent = true;
                        return progress;
                    }
                    End::Reset => {
                        self.reset(rx, tx);
                        return progress;
                    }
                }
            }
            if self.end == End::Close {
                if self.trailer_sent < self.trailer.len() {
                    let n = tx.push(&self.trailer[self.trailer_sent..]);
                    self.trailer_sent += n;
                    progress |= n > 0;
                }
                if self.trailer_sent == self.trailer.len() {
                    tx.fin = true;
                    self.fin_sent = true;
                    progress = true;
                }
            }
            return progress;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated world.

/// Which side the forwarder plays on its TLS leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The forwarder is the TLS client (plain in, TLS out); the peer is a rustls server.
    Client,
    /// The forwarder is the TLS server (TLS in, plain out); the peer is a rustls client.
    Server,
}

/// Limits the driver applies to each call on a leg.
#[derive(Debug, Clone, Copy)]
struct Limits {
    recv: usize,
    send: usize,
    /// Pick each call's limit uniformly in `1..=limit`.
    random: bool,
}

impl Limits {
    const NONE: Self = Self {
        recv: usize::MAX,
        send: usize::MAX,
        random: false,
    };

    fn pick(max: usize, random: bool, rng: &mut Rng) -> usize {
        if random {
            rng.range(1, max.min(256 * KIB))
        } else {
            max
        }
    }
}

#[derive(Debug, Clone)]
struct Setup {
    mode: Mode,
    version: Version,
    ktls: bool,
    decline_handoff: bool,
    extract: bool,
    /// Our record layer takes over after the handshake (else rustls keeps it).
    own_records: bool,
    /// The one cipher suite the server accepts.
    suite: Option<rustls::SupportedCipherSuite>,
    buffers: Buffers,
    limits: [Limits; 2],
    sock_cap: [usize; 2],
    /// The TLS client trusts the server's certificate.
    trusted: bool,
    /// A server certificate of some 30 KB: handshake messages span several records.
    big_cert: bool,
    /// TLS 1.3: the server makes the client retry its hello.
    hello_retry: bool,
    seed: u64,
    /// Complete the driver's operations in a random order each step.
    random_order: bool,
    /// Endpoints use random chunk sizes and sometimes pause reading.
    random_peers: bool,
}

impl Setup {
    fn new(mode: Mode, version: Version) -> Self {
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

struct Pair {
    fwd: TlsForward,
    rng: Rng,
    setup: Setup,
    /// Toward the forwarder, per leg (written by that leg's endpoint).
    inbound: [Pipe; 2],
    /// From the forwarder, per leg (read by that leg's endpoint).
    outbound: [Pipe; 2],
    /// The plain application and the TLS peer.
    peers: [Peer; 2],
    connected: [bool; 2],
    /// Connect(leg) in flight.
    connect: Option<Leg>,
    connect_error: Option<io::ErrorKind>,
    connect_hangs: bool,
    recv: [Option<(Vec<u8>, usize)>; 2],
    /// A Send in flight: the buffer and how many of its bytes to send.
    send: [Option<(Vec<u8>, usize)>; 2],
    shut: [bool; 2],
    closed: Option<Option<Failure>>,
    handoffs: usize,
    /// The driver took the connection at Handoff: the forwarder is no longer driven.
    handed_off: bool,
    /// Check that TLS-leg reads stay inside records (record mode, until Handoff).
    record_check: bool,
    record_recvs: usize,
    /// At Handoff, application data from the peer was already waiting in the socket.
    app_waiting_at_handoff: bool,
    /// Most bytes held by the forwarder: plain->TLS, TLS->plain.
    max_held: [u64; 2],
    bound: u64,
    steps: usize,
    /// Notable driver events, in order.
    events: Vec<String>,
    /// Per leg: bytes of each receive that brought data.
    recv_log: [Vec<usize>; 2],
    /// Per leg: length of each Send.
    send_log: [Vec<usize>; 2],
    /// Per leg: length of the buffer of each Send (more than is sent when it has scratch room).
    send_buf_log: [Vec<usize>; 2],
    /// When set, a copy of every Send on the TLS leg.
    tls_sends: Option<Vec<Vec<u8>>>,
    /// For each Recv on the TLS leg: bytes the forwarder moved to the front of its buffer first.
    compactions: Vec<u64>,
    compacted: u64,
}

impl Pair {
    fn new(setup: Setup) -> Self {
        let configs = Configs::new(&setup);
        Self::with_configs(setup, &configs)
    }

    fn with_configs(setup: Setup, configs: &Configs) -> Self {
        let (fwd_conn, peer_conn) = match setup.mode {
            Mode::Client => (configs.fwd_client(), configs.server()),
            Mode::Server => (configs.fwd_server(), configs.client()),
        };
        let (tls_connected, plain_connected) = match setup.mode {
            Mode::Client => (false, true),
            Mode::Server => (true, false),
        };
        let mut fwd = TlsForward::new(
            fwd_conn,
            tls_connected,
            plain_connected,
            setup.ktls,
            setup.buffers,
        );
        if !setup.own_records {
            fwd.keep_rustls_records();
        }
        let mut inbound = [
            Pipe::new(setup.sock_cap[PLAIN]),
            Pipe::new(setup.sock_cap[TLS]),
        ];
        if setup.ktls {
            inbound[TLS].history = Some(Vec::new());
        }
        let b = setup.buffers;
        let mut app = Peer::new("app", None);
        let mut peer = Peer::new("tls peer", Some(peer_conn));
        app.flaky = setup.random_peers;
        peer.flaky = setup.random_peers;
        Self {
            fwd,
            rng: Rng::new(setup.seed),
            inbound,
            outbound: [
                Pipe::new(setup.sock_cap[PLAIN]),
                Pipe::new(setup.sock_cap[TLS]),
            ],
            peers: [app, peer],
            connected: [plain_connected, tls_connected],
            connect: None,
            connect_error: None,
            connect_hangs: false,
            recv: [None, None],
            send: [None, None],
            shut: [false; 2],
            closed: None,
            handoffs: 0,
            handed_off: false,
            record_check: setup.ktls,
            record_recvs: 0,
            app_waiting_at_handoff: false,
            max_held: [0; 2],
            // Each direction: one buffer read, one buffer (of records or plaintext) to send, and
            // what rustls holds in between.
            bound: (2 * (b.plain + b.tls.max(MAX_RECORD)) + 4 * MAX_RECORD) as u64,
            steps: 0,
            events: Vec::new(),
            recv_log: [Vec::new(), Vec::new()],
            send_log: [Vec::new(), Vec::new()],
            send_buf_log: [Vec::new(), Vec::new()],
            tls_sends: None,
            compactions: Vec::new(),
            compacted: 0,
            setup,
        }
    }

    fn app(&mut self) -> &mut Peer {
        &mut self.peers[PLAIN]
    }

    fn peer(&mut self) -> &mut Peer {
        &mut self.peers[TLS]
    }

    fn summary(&self) -> String {
        let ops: Vec<String> = (0..2)
            .flat_map(|i| {
                let leg = leg_of(i);
                let r = self.recv[i]
                    .as_ref()
                    .map(|(b, len)| format!("recv {leg:?} len {len} (buf {})", b.len()));
                let s = self.send[i]
                    .as_ref()
                    .map(|(_, len)| format!("send {leg:?} {len}"));
                [r, s]
            })
            .flatten()
            .collect();
        format!(
            "step {} closed={:?} handshaking={} plain in/out {}/{} ops={ops:?} connect={:?} \
             shut={:?} held max={:?}\n  plain  in {} out {}\n  tls    in {} out {}\n  {}\n  {}\n  \
             events {:?}",
            self.steps,
            self.closed,
            self.fwd.is_handshaking(),
            self.fwd.plain_bytes_in(),
            self.fwd.plain_bytes_out(),
            self.connect,
            self.shut,
            self.max_held,
            self.inbound[PLAIN].summary(),
            self.outbound[PLAIN].summary(),
            self.inbound[TLS].summary(),
            self.outbound[TLS].summary(),
            self.peers[PLAIN].summary(),
            self.peers[TLS].summary(),
            self.events,
        )
    }

    /// Bytes the forwarder holds in each direction, checked against the bound.
    fn check_held(&mut self) {
        // plain -> TLS: plaintext accepted minus record bytes sent (records are never smaller).
        let out = self
            .fwd
            .plain_bytes_in()
            .saturating_sub(self.outbound[TLS].written);
        // TLS -> plain: record bytes accepted minus plaintext delivered (records counted as no
        // more than the plaintext they carry, which matters for tiny records).
        let read = self.inbound[TLS].read;
        let back = self.peers[TLS]
            .plaintext_upto(read)
            .saturating_sub(self.fwd.plain_bytes_out());
        self.max_held[0] = self.max_held[0].max(out);
        self.max_held[1] = self.max_held[1].max(back);
        assert!(
            out + back <= self.bound,
            "the forwarder holds {out} + {back} bytes, more than {}\n{}",
            self.bound,
            self.summary()
        );
    }

    /// Polls the forwarder until it has nothing more to do, taking its operations.
    fn poll(&mut self) -> bool {
        let mut any = false;
        while self.closed.is_none() && !self.handed_off {
            let Some(io) = self.fwd.poll_io() else { break };
            any = true;
            match io {
                Io::Connect(leg) => {
                    assert!(
                        self.connect.is_none(),
                        "a second Connect\n{}",
                        self.summary()
                    );
                    assert!(!self.connected[ix(leg)], "Connect({leg:?}) on an open leg");
                    self.events.push(format!("connect {leg:?}"));
                    self.connect = Some(leg);
                }
                Io::Recv { leg, buf, len } => {
                    let i = ix(leg);
                    assert!(self.connected[i], "Recv on unconnected {leg:?}");
                    assert!(
                        self.recv[i].is_none(),
                        "two Recv on {leg:?}\n{}",
                        self.summary()
                    );
                    assert!(len > 0, "Recv of 0 bytes on {leg:?}");
                    assert!(
                        buf.capacity() - buf.len() >= len,
                        "Recv {leg:?}: no room for {len} bytes in the buffer"
                    );
                    if leg == Leg::Tls {
                        let now = self.fwd.bytes_compacted();
                        self.compactions.push(now - self.compacted);
                        self.compacted = now;
                    }
                    self.recv[i] = Some((buf, len));
                }
                Io::Send { leg, buf, len } => {
                    let i = ix(leg);
                    assert!(self.connected[i], "Send on unconnected {leg:?}");
                    assert!(
                        self.send[i].is_none(),
                        "two Send on {leg:?}\n{}",
                        self.summary()
                    );
                    assert!(len > 0, "empty Send on {leg:?}");
                    assert!(len <= buf.len(), "Send of {len} bytes from {}", buf.len());
                    assert!(!self.shut[i], "Send on {leg:?} after ShutdownWrite");
                    self.send_log[i].push(len);
                    self.send_buf_log[i].push(buf.len());
                    if let (Leg::Tls, Some(copies)) = (leg, &mut self.tls_sends) {
                        copies.push(buf[..len].to_vec());
                    }
                    self.send[i] = Some((buf, len));
                }
                Io::ShutdownWrite(leg) => {
                    let i = ix(leg);
                    assert!(
                        self.send[i].is_none(),
                        "ShutdownWrite({leg:?}) with a Send in flight"
                    );
                    assert!(!self.shut[i], "ShutdownWrite({leg:?}) twice");
                    self.events.push(format!("shutdown {leg:?}"));
                    self.shut[i] = true;
                    self.outbound[i].fin = true;
                }
                Io::Handoff => self.on_handoff(),
                Io::Close { failure } => self.on_close(failure),
            }
            self.check_held();
        }
        any
    }

    fn on_handoff(&mut self) {
        self.handoffs += 1;
        self.events.push("handoff".to_string());
        assert_eq!(
            self.handoffs,
            1,
            "Handoff offered twice\n{}",
            self.summary()
        );
        assert!(self.setup.ktls, "Handoff without ktls_candidate");
        assert!(!self.fwd.is_handshaking(), "Handoff during the handshake");
        assert!(
            self.recv[TLS].is_none() && self.send[TLS].is_none(),
            "Handoff with I/O in flight on the TLS leg\n{}",
            self.summary()
        );
        let rx = &self.inbound[TLS];
        let consumed = rx.read;
        // Nothing read past a record boundary...
        let stream = rx.history.as_deref().unwrap();
        assert!(
            at_record_boundary(stream, consumed),
            "Handoff in the middle of a record"
        );
        // ... and no application data at all.
        if let Some(start) = self.peers[TLS].app_start {
            assert!(
                consumed <= start,
                "{} bytes of application data were read before Handoff",
                consumed - start
            );
            self.app_waiting_at_handoff = rx.written > start;
        }
        self.record_check = false;
        self.inbound[TLS].history = None;
        if self.setup.decline_handoff {
            self.fwd.handle_handoff_declined();
        } else {
            self.handed_off = true;
        }
    }

    fn on_close(&mut self, failure: Option<Failure>) {
        self.events.push(format!("close {failure:?}"));
        // The driver cancels what is in flight and closes both sockets, with a reset on failure.
        self.closed = Some(failure.clone());
        // Cancelled operations still complete (as io_uring's do): the forwarder must take them
        // back quietly.
        let cancelled = || io::Error::other("operation cancelled");
        for i in [PLAIN, TLS] {
            if let Some((buf, _)) = self.recv[i].take() {
                self.fwd.handle_recv(leg_of(i), buf, Err(cancelled()));
            }
            if let Some((buf, _)) = self.send[i].take() {
                self.fwd.handle_send(leg_of(i), buf, Err(cancelled()));
            }
        }
        if let Some(leg) = self.connect.take() {
            self.fwd.handle_connected(leg, Err(cancelled()));
        }
        if let Some(io) = self.fwd.poll_io() {
            panic!("{io:?} after Close\n{}", self.summary());
        }
        for i in [PLAIN, TLS] {
            if !self.connected[i] {
                continue;
            }
            if failure.is_some() {
                self.outbound[i].reset = true;
            } else {
                assert!(
                    self.shut[i],
                    "clean Close before ShutdownWrite({:?})",
                    leg_of(i)
                );
            }
            self.inbound[i].reader_gone = true;
        }
    }

    fn complete_connect(&mut self) -> bool {
        let Some(leg) = self.connect else {
            return false;
        };
        if self.connect_hangs {
            return false;
        }
        self.connect = None;
        let result = match self.connect_error {
            Some(kind) => Err(io::Error::from(kind)),
            None => {
                self.connected[ix(leg)] = true;
                Ok(())
            }
        };
        self.fwd.handle_connected(leg, result);
        true
    }

    fn complete_recv(&mut self, i: usize) -> bool {
        let Some((_, len)) = &self.recv[i] else {
            return false;
        };
        let len = *len;
        let limits = self.setup.limits[i];
        let pipe = &mut self.inbound[i];
        let (buf, result) = if !pipe.data.is_empty() {
            if i == TLS && self.record_check {
                let room = record_room(pipe.history.as_deref().unwrap(), pipe.read);
                assert!(
                    len <= room,
                    "record mode: Recv of {len} bytes at offset {} crosses a record boundary \
                     ({room} bytes left in the record)",
                    pipe.read
                );
                self.record_recvs += 1;
            }
            let n = len
                .min(Limits::pick(limits.recv, limits.random, &mut self.rng))
                .min(pipe.data.len());
            let (mut buf, _) = self.recv[i].take().unwrap();
            pipe.pull(&mut buf, n);
            self.recv_log[i].push(n);
            (buf, Ok(n))
        } else if pipe.reset {
            (
                self.recv[i].take().unwrap().0,
                Err(io::ErrorKind::ConnectionReset.into()),
            )
        } else if pipe.fin {
            (self.recv[i].take().unwrap().0, Ok(0))
        } else {
            return false;
        };
        self.fwd.handle_recv(leg_of(i), buf, result);
        true
    }

    fn complete_send(&mut self, i: usize) -> bool {
        let Some((buf, len)) = &self.send[i] else {
            return false;
        };
        let buf = &buf[..*len];
        let limits = self.setup.limits[i];
        let pipe = &mut self.outbound[i];
        let result = if pipe.reader_gone {
            Err(io::ErrorKind::ConnectionReset.into())
        } else if pipe.room() == 0 {
            return false;
        } else {
            let n = buf.len().min(pipe.room()).min(Limits::pick(
                limits.send,
                limits.random,
                &mut self.rng,
            ));
            pipe.push(&buf[..n]);
            Ok(n)
        };
        let (buf, _) = self.send[i].take().unwrap();
        self.fwd.handle_send(leg_of(i), buf, result);
        true
    }

    /// Completes what the sockets allow of the operations in flight.
    fn complete(&mut self) -> bool {
        let mut order = [0, 1, 2, 3, 4];
        if self.setup.random_order {
            for k in (1..order.len()).rev() {
                order.swap(k, self.rng.range(0, k));
            }
        }
        let mut progress = false;
        for k in order {
            if self.closed.is_some() || self.handed_off {
                break;
            }
            let done = match k {
                0 => self.complete_connect(),
                1 => self.complete_recv(PLAIN),
                2 => self.complete_recv(TLS),
                3 => self.complete_send(PLAIN),
                _ => self.complete_send(TLS),
            };
            if done {
                progress = true;
                self.check_held();
                self.poll();
            }
        }
        progress
    }

    /// One round: the forwarder, both endpoints, then the driver's completions.
    fn step(&mut self) -> bool {
        self.steps += 1;
        let mut progress = self.poll();
        let random = self.setup.random_peers;
        for i in [PLAIN, TLS] {
            if self.connected[i] {
                let peer = &mut self.peers[i];
                progress |= peer.read(&mut self.outbound[i], &mut self.rng, random);
                progress |= peer.write(
                    &mut self.outbound[i],
                    &mut self.inbound[i],
                    &mut self.rng,
                    random,
                );
            }
        }
        progress |= self.complete();
        progress
    }

    /// Steps until nothing moves any more.
    fn run(&mut self) {
        let mut idle = 0;
        while idle < 2 {
            if self.step() {
                idle = 0;
            } else {
                idle += 1;
            }
            assert!(
                self.steps < 5_000_000,
                "no end in sight\n{}",
                self.summary()
            );
        }
    }

    /// Steps until both ends of the TLS leg are through the handshake.
    fn handshake(&mut self) {
        let start = self.steps;
        while self.fwd.is_handshaking()
            || self.peers[TLS]
                .conn
                .as_ref()
                .is_some_and(|c| c.is_handshaking())
        {
            assert!(self.closed.is_none(), "{}", self.summary());
            self.step();
            assert!(
                self.steps < start + 1000,
                "no handshake\n{}",
                self.summary()
            );
        }
    }

    /// Runs to the end: the forwarder must have closed.
    fn drive(&mut self) -> Option<Failure> {
        self.run();
        match &self.closed {
            Some(f) => f.clone(),
            None => panic!("stalled without Close\n{}", self.summary()),
        }
    }

    /// Runs to the end and expects a failure.
    fn drive_to_failure(&mut self) -> Failure {
        match self.drive() {
            Some(f) => f,
            None => panic!("closed cleanly, expected a failure\n{}", self.summary()),
        }
    }

    /// Everything arrived, both ways, and the connection ended cleanly everywhere.
    fn assert_clean(&self) {
        assert_eq!(self.closed, Some(None), "\n{}", self.summary());
        let (app, peer) = (&self.peers[PLAIN], &self.peers[TLS]);
        same("plain app received", &app.received, &peer.payload);
        same("TLS peer received", &peer.received, &app.payload);
        assert!(app.fin_seen && !app.reset_seen, "app: {}", app.summary());
        assert!(
            peer.close_notify && peer.fin_seen && !peer.truncated && !peer.reset_seen,
            "{}",
            peer.summary()
        );
        assert!(peer.error.is_none(), "{}", peer.summary());
        assert_eq!(self.fwd.plain_bytes_in(), app.payload.len() as u64);
        assert_eq!(self.fwd.plain_bytes_out(), peer.payload.len() as u64);
        assert!(self.max_held[0] + self.max_held[1] <= self.bound);
    }
}

/// Bytes from `pos` to the end of the record `pos` is in, in a stream of records (to the end of
/// the header while the header is not all there: no one can know more).
fn record_room(stream: &[u8], pos: u64) -> usize {
    let pos = pos as usize;
    let mut start = 0;
    loop {
        if stream.len() < start + 5 {
            return start + 5 - pos;
        }
        let end = start + 5 + u16::from_be_bytes([stream[start + 3], stream[start + 4]]) as usize;
        if pos < end {
            return end - pos;
        }
        start = end;
    }
}

/// (content type, payload length) of each record in `bytes`, which must hold whole records.
fn records_in(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        out.push((rest[0], len));
        rest = &rest[5 + len..];
    }
    out
}

/// Whether `pos` is where a record starts (or the stream ends after a whole record).
fn at_record_boundary(stream: &[u8], pos: u64) -> bool {
    let mut start = 0;
    while start < pos as usize {
        if stream.len() < start + 5 {
            return false;
        }
        start += 5 + u16::from_be_bytes([stream[start + 3], stream[start + 4]]) as usize;
    }
    start == pos as usize
}

fn same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes where {} were sent, first difference at {at}",
            got.len(),
            want.len()
        );
    }
}

/// The plaintext of every record in `records`, decrypted by a session that took over at the
/// hand-off (as the kernel would).
fn decrypt_all<C: Records>(conn: &mut C, mut records: Vec<u8>) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let status = conn.process(&mut records);
        let mut discard = status.discard;
        let more = match status.state.expect("records after the hand-off") {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    let record = record.unwrap();
                    discard += record.discard;
                    got.extend_from_slice(record.payload);
                }
                true
            }
            ConnectionState::WriteTraffic(_) => false,
            other => panic!("after the hand-off: {other:?}"),
        };
        records.drain(..discard);
        if !more {
            assert!(
                records.is_empty(),
                "{} bytes left undecrypted",
                records.len()
            );
            return got;
        }
    }
}

fn both_ways(setup: Setup, app_len: usize, peer_len: usize) -> Pair {
    let seed = setup.seed;
    let mut p = Pair::new(setup);
    p.app().payload = payload(seed * 2, app_len);
    p.peer().payload = payload(seed * 2 + 1, peer_len);
    p.drive();
    p.assert_clean();
    p
}

const MODES: [Mode; 2] = [Mode::Client, Mode::Server];
const VERSIONS: [Version; 2] = [Version::Tls12, Version::Tls13];

// ---------------------------------------------------------------------------------------------
// The tests.

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
fn own_record_layer_every_suite() {
    // Our record layer against rustls's, for every suite either version has for an ECDSA
    // certificate (TLS 1.2 AES-GCM carries an explicit nonce, ChaCha20-Poly1305 does not).
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
fn half_close_from_the_plain_app() {
    // The app sends and shuts its write half; the TLS peer sees everything, close_notify and
    // FIN, and only then answers, over the half-closed connection.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.app().payload = payload(1, 300 * KIB);
            p.peer().payload = payload(2, 500 * KIB);
            p.peer().start = Start::AfterEof;
            p.drive();
            p.assert_clean();
            let tls_fin = p.events.iter().position(|e| e == "shutdown Tls").unwrap();
            let plain_fin = p.events.iter().position(|e| e == "shutdown Plain").unwrap();
            assert!(tls_fin < plain_fin, "{:?}", p.events);
        }
    }
}

#[test]
fn half_close_from_the_tls_peer() {
    // The TLS peer sends, then close_notify and FIN; the app gets everything then EOF, and only
    // then answers.
    for mode in MODES {
        for version in VERSIONS {
            let mut p = Pair::new(Setup::new(mode, version));
            p.peer().payload = payload(3, 300 * KIB);
            p.app().payload = payload(4, 500 * KIB);
            p.app().start = Start::AfterEof;
            p.drive();
            p.assert_clean();
            let tls_fin = p.events.iter().position(|e| e == "shutdown Tls").unwrap();
            let plain_fin = p.events.iter().position(|e| e == "shutdown Plain").unwrap();
            assert!(plain_fin < tls_fin, "{:?}", p.events);
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
fn close_notify_while_the_app_reads_slowly() {
    // close_notify and FIN arrive while the plain leg is still busy sending earlier plaintext.
    for mode in MODES {
        for version in VERSIONS {
            let mut s = Setup::new(mode, version);
            s.sock_cap[PLAIN] = 4 * KIB;
            s.limits[PLAIN].send = KIB;
            both_ways(s, 10 * KIB, 300 * KIB);
        }
    }
}

#[test]
fn bytes_after_close_notify_are_ignored() {
    // A peer that goes on sending after close_notify: RFC 8446 6.1 says to ignore it.
    for mode in MODES {
        for version in VERSIONS {
            for (len, trailer) in [(50 * KIB, 20 * KIB), (0, 60 * KIB), (1000, 200 * KIB)] {
                let mut p = Pair::new(Setup::new(mode, version));
                p.peer().payload = payload(5, len);
                p.peer().trailer = payload(6, trailer);
                p.app().payload = payload(7, 1000);
                p.drive();
                p.assert_clean();
            }
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
fn key_update_mid_stream() {
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
fn big_certificate() {
    // Handshake messages that span several records, in record mode with tiny reads too.
    assert!(
        pki(600).cert.len() > 20 * KIB,
        "the certificate spans several records"
    );
    for mode in MODES {
        for version in VERSIONS {
            for (ktls, recv) in [(false, usize::MAX), (true, usize::MAX), (true, 1)] {
                let mut s = Setup::new(mode, version);
                s.big_cert = true;
                s.ktls = ktls;
                s.limits[TLS].recv = recv;
                let mut p = Pair::new(s);
                p.app().payload = payload(52, 50 * KIB);
                p.peer().payload = payload(53, 50 * KIB);
                p.drive();
                p.assert_clean();
            }
        }
    }
}

#[test]
fn hello_retry_request() {
    for mode in MODES {
        for ktls in [false, true] {
            let mut s = Setup::new(mode, Version::Tls13);
            s.hello_retry = true;
            s.ktls = ktls;
            s.limits[TLS] = Limits {
                recv: 7,
                send: 7,
                random: true,
            };
            let mut p = Pair::new(s);
            p.app().payload = payload(54, 50 * KIB);
            p.peer().payload = payload(55, 50 * KIB);
            p.drive();
            p.assert_clean();
            assert_eq!(
                p.fwd.negotiated().and_then(|n| n.kind),
                Some(rustls::HandshakeKind::FullWithHelloRetryRequest)
            );
        }
    }
}

#[test]
fn resumption() {
    // A second connection with the same configurations resumes the session (an abbreviated
    // handshake, with a different order of flights in TLS 1.2).
    for mode in MODES {
        for version in VERSIONS {
            for ktls in [false, true] {
                let mut s = Setup::new(mode, version);
                s.ktls = ktls;
                let configs = Configs::new(&s);
                for round in 0..2 {
                    let mut p = Pair::with_configs(s.clone(), &configs);
                    p.app().payload = payload(56, 20 * KIB);
                    p.peer().payload = payload(57, 20 * KIB);
                    p.drive();
                    p.assert_clean();
                    let kind = p.fwd.negotiated().and_then(|n| n.kind);
                    let want = if round == 0 {
                        rustls::HandshakeKind::Full
                    } else {
                        rustls::HandshakeKind::Resumed
                    };
                    assert_eq!(kind, Some(want), "{mode:?} {version:?} ktls {ktls}");
                }
            }
        }
    }
}

#[test]
fn truncation_without_close_notify_fails() {
    // The TLS peer ends the TCP stream without close_notify: the plain side must not see a
    // clean end, whatever the timing.
    for mode in MODES {
        for version in VERSIONS {
            for (i, slow_app) in [false, true].into_iter().enumerate() {
                let mut s = Setup::new(mode, version);
                if slow_app {
                    s.sock_cap[PLAIN] = 2 * KIB;
                    s.limits[PLAIN].send = 100;
                }
                let mut p = Pair::new(s);
                p.peer().payload = payload(8 + i as u64, 200 * KIB);
                p.peer().end = End::FinOnly;
                p.app().end = End::Open;
                let f = p.drive_to_failure();
                assert_ne!(f.fault, Fault::Plain, "{f:?}");
                let app = &p.peers[PLAIN];
                assert!(!app.fin_seen, "the app saw a clean EOF\n{}", p.summary());
                assert!(app.reset_seen, "{}", p.summary());
                assert!(!p.shut[PLAIN]);
                assert!(p.peers[TLS].payload.starts_with(&app.received));
            }
        }
    }
}

#[test]
fn tls_peer_fin_during_the_handshake_fails() {
    for mode in MODES {
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        p.peer().conn = None; // a TCP peer that closes at once
        p.peer().end = End::Close;
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");
        assert!(!p.peers[PLAIN].fin_seen);
    }
}

#[test]
fn garbage_instead_of_tls() {
    let garbage: [&[u8]; 3] = [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x07\x01\x00\x04abcd", // a handshake record of TLS "7.1"
    ];
    for mode in MODES {
        for ktls in [false, true] {
            for bytes in garbage {
                let mut s = Setup::new(mode, Version::Tls13);
                s.ktls = ktls;
                let mut p = Pair::new(s);
                p.peer().conn = None;
                p.peer().payload = bytes.to_vec();
                p.peer().end = End::Open;
                let f = p.drive_to_failure();
                assert_eq!(f.fault, Fault::Tls, "{mode:?} ktls {ktls}: {f:?}");
                assert!(!p.peers[PLAIN].fin_seen);
            }
        }
    }
}

#[test]
fn untrusted_server_certificate() {
    for version in VERSIONS {
        let mut s = Setup::new(Mode::Client, version);
        s.trusted = false;
        let mut p = Pair::new(s);
        p.app().payload = payload(10, 1000);
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::Tls, "{f:?}");
        assert!(f.reason.contains("certificate"), "{f:?}");
        assert_eq!(
            p.fwd.plain_bytes_in(),
            0,
            "plaintext read before the peer was verified"
        );
        // The alert went out before the reset: the server knows why.
        let peer = &p.peers[TLS];
        assert!(
            matches!(peer.error, Some(rustls::Error::AlertReceived(_))),
            "{}",
            peer.summary()
        );
    }
}

#[test]
fn tls_client_rejects_our_certificate() {
    // Server mode: the TLS client does not trust the forwarder's certificate.
    for version in VERSIONS {
        let mut s = Setup::new(Mode::Server, version);
        s.trusted = false;
        let mut p = Pair::new(s);
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::Tls, "{f:?}");
        assert!(
            !p.connected[PLAIN],
            "upstream connected for a failed handshake"
        );
    }
}

#[test]
fn connect_failure() {
    // Client mode: the TLS upstream refuses.
    let mut p = Pair::new(Setup::new(Mode::Client, Version::Tls13));
    p.connect_error = Some(io::ErrorKind::ConnectionRefused);
    p.app().payload = payload(11, 1000);
    let f = p.drive_to_failure();
    assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");
    assert!(p.peers[PLAIN].reset_seen && !p.peers[PLAIN].fin_seen);

    // Server mode: the plain upstream refuses after the handshake.
    let mut p = Pair::new(Setup::new(Mode::Server, Version::Tls13));
    p.connect_error = Some(io::ErrorKind::ConnectionRefused);
    p.peer().payload = payload(12, 1000);
    let f = p.drive_to_failure();
    assert_eq!(f.fault, Fault::Plain, "{f:?}");
    let peer = &p.peers[TLS];
    assert!(peer.reset_seen && !peer.close_notify, "{}", peer.summary());
}

#[test]
fn timeouts() {
    // The handshake stalls: the TLS peer accepts and says nothing.
    for mode in MODES {
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        if mode == Mode::Client {
            p.peer().conn = None;
            p.peer().end = End::Open;
        } else {
            p.peer().reading = false; // never sees the ServerHello... and sends only ClientHello
        }
        p.run();
        assert!(p.closed.is_none());
        assert!(p.fwd.is_handshaking());
        p.fwd.handle_timeout();
        p.poll();
        let f = p.closed.clone().flatten().expect("Close with a failure");
        assert_eq!(f.fault, Fault::Tls, "{f:?}");
        assert!(f.reason.contains("handshake"), "{f:?}");
    }

    // The TLS upstream does not answer the connect.
    let mut p = Pair::new(Setup::new(Mode::Client, Version::Tls13));
    p.connect_hangs = true;
    p.run();
    assert!(p.closed.is_none() && p.connect == Some(Leg::Tls));
    p.fwd.handle_timeout();
    p.poll();
    let f = p.closed.clone().flatten().expect("Close with a failure");
    assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");

    // Server mode: the plain upstream does not answer the connect.
    let mut p = Pair::new(Setup::new(Mode::Server, Version::Tls13));
    p.connect_hangs = true;
    p.run();
    assert!(p.closed.is_none() && p.connect == Some(Leg::Plain));
    p.fwd.handle_timeout();
    p.poll();
    let f = p.closed.clone().flatten().expect("Close with a failure");
    assert_eq!(f.fault, Fault::Plain, "{f:?}");

    // After the handshake the timer means nothing.
    let mut p = Pair::new(Setup::new(Mode::Client, Version::Tls13));
    p.app().payload = payload(13, 100 * KIB);
    p.peer().payload = payload(14, MIB);
    p.peers[PLAIN].reading = false;
    p.run();
    assert!(
        p.closed.is_none() && !p.fwd.is_handshaking(),
        "{}",
        p.summary()
    );
    p.fwd.handle_timeout();
    p.peers[PLAIN].reading = true;
    p.drive();
    p.assert_clean();
}

#[test]
fn resets() {
    for mode in MODES {
        // The app resets in the middle of its stream.
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        p.app().payload = payload(15, 300 * KIB);
        p.app().end = End::Reset;
        p.peer().payload = payload(16, 300 * KIB);
        p.peer().end = End::Open;
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::Plain, "{f:?}");
        let peer = &p.peers[TLS];
        assert!(peer.reset_seen && !peer.close_notify, "{}", peer.summary());

        // The TLS peer resets.
        let mut p = Pair::new(Setup::new(mode, Version::Tls13));
        p.peer().payload = payload(17, 300 * KIB);
        p.peer().end = End::Reset;
        p.app().payload = payload(18, 300 * KIB);
        p.app().end = End::Open;
        let f = p.drive_to_failure();
        assert_eq!(f.fault, Fault::TlsTransport, "{f:?}");
        let app = &p.peers[PLAIN];
        assert!(app.reset_seen && !app.fin_seen, "{}", app.summary());
    }
}

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

// ---------------------------------------------------------------------------------------------
// The unbuffered API: where records are decrypted and encrypted.

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
    // while the driver receives the rest into it. Anything that runs the pump meanwhile must
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
            p.fwd.repump();
            assert!(p.fwd.handshake_fragment_out());
            p.drive();
            p.assert_clean();
        }
    }
}
