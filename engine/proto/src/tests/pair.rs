//! The simulated world: a driver that performs the forwarder's operations on in-memory
//! sockets between the two endpoints.

use super::*;

pub(super) struct Pair {
    pub(super) fwd: TlsForward,
    pub(super) rng: Rng,
    pub(super) setup: Setup,
    /// Toward the forwarder, per leg (written by that leg's endpoint).
    pub(super) inbound: [Pipe; 2],
    /// From the forwarder, per leg (read by that leg's endpoint).
    pub(super) outbound: [Pipe; 2],
    /// The plain application and the TLS peer.
    pub(super) peers: [Peer; 2],
    pub(super) connected: [bool; 2],
    /// Connect(leg) in flight.
    pub(super) connect: Option<Leg>,
    pub(super) connect_error: Option<io::ErrorKind>,
    pub(super) connect_hangs: bool,
    pub(super) recv: [Option<(Vec<u8>, usize)>; 2],
    /// A Send in flight: the buffer and how many of its bytes to send.
    pub(super) send: [Option<(Vec<u8>, usize)>; 2],
    pub(super) shut: [bool; 2],
    pub(super) closed: Option<Option<Failure>>,
    pub(super) handoffs: usize,
    /// The driver took the connection at Handoff: the forwarder is no longer driven.
    pub(super) handed_off: bool,
    /// Check that TLS-leg reads stay inside records (record mode, until Handoff).
    pub(super) record_check: bool,
    pub(super) record_recvs: usize,
    /// At Handoff, application data from the peer was already waiting in the socket.
    pub(super) app_waiting_at_handoff: bool,
    /// Most bytes held by the forwarder: plain->TLS, TLS->plain.
    pub(super) max_held: [u64; 2],
    pub(super) bound: u64,
    pub(super) steps: usize,
    /// Notable driver events, in order.
    pub(super) events: Vec<String>,
    /// Per leg: bytes of each receive that brought data.
    pub(super) recv_log: [Vec<usize>; 2],
    /// Per leg: length of each Send.
    pub(super) send_log: [Vec<usize>; 2],
    /// Per leg: length of the buffer of each Send (more than is sent when it has scratch room).
    pub(super) send_buf_log: [Vec<usize>; 2],
    /// When set, a copy of every Send on the TLS leg.
    pub(super) tls_sends: Option<Vec<Vec<u8>>>,
    /// For each Recv on the TLS leg: bytes the forwarder moved to the front of its buffer first.
    pub(super) compactions: Vec<u64>,
    pub(super) compacted: u64,
}

impl Pair {
    pub(super) fn new(setup: Setup) -> Self {
        let configs = Configs::new(&setup);
        Self::with_configs(setup, &configs)
    }

    pub(super) fn with_configs(setup: Setup, configs: &Configs) -> Self {
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

    pub(super) fn app(&mut self) -> &mut Peer {
        &mut self.peers[PLAIN]
    }

    pub(super) fn peer(&mut self) -> &mut Peer {
        &mut self.peers[TLS]
    }

    pub(super) fn summary(&self) -> String {
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
    pub(super) fn check_held(&mut self) {
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
    pub(super) fn poll(&mut self) -> bool {
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

    pub(super) fn on_handoff(&mut self) {
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

    pub(super) fn on_close(&mut self, failure: Option<Failure>) {
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

    pub(super) fn complete_connect(&mut self) -> bool {
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

    pub(super) fn complete_recv(&mut self, i: usize) -> bool {
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

    pub(super) fn complete_send(&mut self, i: usize) -> bool {
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
    pub(super) fn complete(&mut self) -> bool {
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
    pub(super) fn step(&mut self) -> bool {
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
    pub(super) fn run(&mut self) {
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
    pub(super) fn handshake(&mut self) {
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
    pub(super) fn drive(&mut self) -> Option<Failure> {
        self.run();
        match &self.closed {
            Some(f) => f.clone(),
            None => panic!("stalled without Close\n{}", self.summary()),
        }
    }

    /// Runs to the end and expects a failure.
    pub(super) fn drive_to_failure(&mut self) -> Failure {
        match self.drive() {
            Some(f) => f,
            None => panic!("closed cleanly, expected a failure\n{}", self.summary()),
        }
    }

    /// Everything arrived, both ways, and the connection ended cleanly everywhere.
    pub(super) fn assert_clean(&self) {
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
