//! Deterministic in-memory tests of [`TlsForward`].
//!
//! A [`Pair`] is a small simulated world: a driver that performs the forwarder's [`Io`]
//! operations on in-memory sockets ([`Pipe`]s, with capacities and per-call limits for partial
//! I/O), a plain application on the plain leg and a rustls peer (or a raw byte stream) on the
//! TLS leg. Everything is single-threaded and seeded, so every run is the same.
//!
//! This module is the harness; the tests are in its children, by subject (`data`, `records`,
//! `closing`, `handshake`, `record_mode`), which see its private items.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::crypto::aws_lc_rs::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, Connection, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, SupportedProtocolVersion,
};

use crate::tls_conn::Records;
use crate::{Buffers, Failure, Fault, Handoff, Io, Leg, Opens, TlsConn, TlsForward};

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
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let cert = splice_test_pki::Cert::self_signed(&names, splice_test_pki::KeyType::P256);
    Pki {
        key: cert.key.der(),
        cert: cert.der,
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
    /// Raw bytes written after close_notify (End::Close), or before the FIN (End::FinOnly).
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
                    // The FIN goes out below, after the trailer (if any).
                    End::FinOnly => continue,
                    End::Reset => {
                        self.reset(rx, tx);
                        return progress;
                    }
                }
            }
            if matches!(self.end, End::Close | End::FinOnly) {
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
        // Which legs are open at the start, indexed by PLAIN and TLS.
        let (opens, connected) = match setup.mode {
            Mode::Client => (Opens::TlsLeg, [true, false]),
            Mode::Server => (Opens::PlainLeg, [false, true]),
        };
        let handoff = match setup.ktls {
            true => Handoff::Offer,
            false => Handoff::Never,
        };
        let mut fwd = TlsForward::new(fwd_conn, opens, handoff, setup.buffers);
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
            connected,
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

mod closing;
mod data;
mod handshake;
mod proxy_protocol;
mod record_mode;
mod records;
