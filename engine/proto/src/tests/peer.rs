//! The endpoints: the plain application and the TLS peer.

use super::*;

/// When an endpoint starts sending its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    Now,
    /// Once the other side's stream has ended cleanly (FIN for the plain app, close_notify for
    /// the TLS peer): a half-closed connection still carrying data the other way.
    AfterEof,
}

/// What an endpoint does once its payload is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
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
pub(super) struct Peer {
    pub(super) name: &'static str,
    pub(super) conn: Option<Connection>,
    pub(super) payload: Vec<u8>,
    pub(super) sent: usize,
    pub(super) start: Start,
    pub(super) end: End,
    /// Raw bytes written after close_notify (End::Close), or before the FIN (End::FinOnly).
    pub(super) trailer: Vec<u8>,
    pub(super) trailer_sent: usize,
    /// Most bytes written (or given to rustls) at once.
    pub(super) chunk: usize,
    pub(super) reading: bool,
    /// Sometimes skip reading, to vary the interleaving.
    pub(super) flaky: bool,
    pub(super) received: Vec<u8>,
    pub(super) fin_seen: bool,
    pub(super) close_notify: bool,
    pub(super) reset_seen: bool,
    /// rustls saw the transport end without close_notify.
    pub(super) truncated: bool,
    pub(super) error: Option<rustls::Error>,
    pub(super) ended: bool,
    pub(super) fin_sent: bool,
    /// Offset in the outgoing stream where this peer's first application data record starts.
    pub(super) app_start: Option<u64>,
    /// (bytes written to the socket, plaintext sent) whenever all records were flushed: maps
    /// record bytes back to the plaintext they carry.
    pub(super) marks: Vec<(u64, u64)>,
    /// Send a TLS 1.3 KeyUpdate (asking for one back) once this much plaintext is sent.
    pub(super) key_update_at: Option<usize>,
}

impl Peer {
    pub(super) fn new(name: &'static str, conn: Option<Connection>) -> Self {
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
    pub(super) fn plaintext_upto(&self, wire: u64) -> u64 {
        if self.conn.is_none() {
            return wire;
        }
        let i = self.marks.partition_point(|&(w, _)| w < wire);
        self.marks
            .get(i)
            .map_or(self.sent as u64, |&(_, p)| p)
            .min(wire)
    }

    pub(super) fn summary(&self) -> String {
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

    pub(super) fn chunk(&self, rng: &mut Rng, random: bool) -> usize {
        if random {
            rng.range(1, self.chunk)
        } else {
            self.chunk
        }
    }

    /// Reads what `rx` holds; returns whether anything happened.
    pub(super) fn read(&mut self, rx: &mut Pipe, rng: &mut Rng, random: bool) -> bool {
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

    pub(super) fn process(&mut self) {
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

    pub(super) fn started(&self) -> bool {
        match self.start {
            Start::Now => true,
            Start::AfterEof if self.conn.is_some() => self.close_notify,
            Start::AfterEof => self.fin_seen,
        }
    }

    pub(super) fn reset(&mut self, rx: &mut Pipe, tx: &mut Pipe) {
        tx.reset = true;
        rx.reader_gone = true;
        self.fin_sent = true;
    }

    /// Writes what it can into `tx`; returns whether anything happened.
    pub(super) fn write(
        &mut self,
        rx: &mut Pipe,
        tx: &mut Pipe,
        rng: &mut Rng,
        random: bool,
    ) -> bool {
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
