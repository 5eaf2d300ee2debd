//! The agent's local connections: the source's listeners and what they accept, the
//! destination's dialed connections, their reads (framed as DATA in place) and writes.

use std::net::SocketAddr;

use crate::resolve::MAX_DIALS;

use super::*;

/// A local connection.
pub(super) struct Local {
    pub(super) fd: Fd,
    pub(super) generation: u32,
    pub(super) service: usize,
    /// The agent's name for it; `None` once the agent forgot it (finished, or it ended).
    pub(super) id: Option<LocalId>,
    pub(super) connecting: bool,
    pub(super) recv_in_flight: bool,
    /// Its read completed while the tunnel's backlog was high: read again when it falls.
    pub(super) parked: bool,
    /// No more reads: the peer's end came (or the agent finished it and it is draining).
    pub(super) read_done: bool,
    pub(super) queue: VecDeque<Vec<u8>>,
    pub(super) sending: bool,
    /// Write out the queue, then FIN, then drain reads until the peer's FIN.
    pub(super) finishing: bool,
    /// Write out the queue, then close (its reading side already ended).
    pub(super) ending: bool,
    /// The peer half-closed it: write out the queue, then shut the write side (FIN).
    pub(super) shut_write: bool,
    /// Its write side is shut.
    pub(super) write_shut: bool,
    pub(super) rbuf: Option<Vec<u8>>,
    /// A destination's connection: the target's address being dialled, and how many of its
    /// addresses this connection has dialled (a refused one goes on to the next).
    pub(super) target: Option<SocketAddr>,
    pub(super) dials: usize,
}

impl Reactor {
    pub(super) fn listen(&mut self, io: &mut Io<'_>, service: &str) {
        let Some(i) = self.spec.services.iter().position(|s| s.name == service) else {
            return;
        };
        if let Some((fd, accepting)) = self.listeners.get_mut(i)
            && !*accepting
        {
            *accepting = true;
            io.driver.submit(
                op_token(self.slot, TAG_ACCEPT, i as u32, 0),
                Op::Accept { fd: fd.clone() },
            );
        }
    }

    pub(super) fn accepted(&mut self, io: &mut Io<'_>, i: u32, c: Completion) {
        let Some((fd, _)) = self.listeners.get(i as usize) else {
            return;
        };
        let fd = fd.clone();
        match (c.result, c.accepted) {
            (Err(e), _) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            (Err(e), _) => {
                tracing::warn!(agent = %self.spec.name, error = %e, "accept failed");
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    // Out of fds: try again after a pause rather than spin.
                    io.timers.push((
                        io.now + Duration::from_millis(100),
                        token(TIMER_RETRY, 1, i),
                    ));
                    return;
                }
            }
            (Ok(_), Some(sock)) => self.start_local(io, i as usize, sock),
            (Ok(_), None) => {}
        }
        io.driver
            .submit(op_token(self.slot, TAG_ACCEPT, i, 0), Op::Accept { fd });
    }

    pub(super) fn start_local(&mut self, io: &mut Io<'_>, service: usize, sock: OwnedFd) {
        let name = self.spec.services[service].name.clone();
        let stats = self.shared.service(service);
        let id = match &mut self.sans {
            Sans::Source(s) => s.handle_accept(&name),
            Sans::Destination(_) => return,
        };
        // V1 and V2 carry one connection per service: Busy there is not the configured limit.
        let per_service = matches!(&self.sans, Sans::Source(s) if s.format() >= Version::V3);
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                let _ = sys::socket::set_linger_zero(sock.as_fd());
                if matches!(e, AgentError::Busy(_)) && per_service {
                    self.over_limit(service, 1);
                    self.apply_actions(io);
                    return;
                }
                tracing::warn!(agent = %self.spec.name, service = %name, error = %e, "local connection refused");
                self.apply_actions(io);
                return;
            }
        };
        stats.connections.fetch_add(1, Relaxed);
        stats.active.fetch_add(1, Relaxed);
        let _ = sys::socket::set_nodelay(sock.as_fd());
        if let Some(kernel) = stats.kernel.get() {
            kernel.register(sock.as_fd(), crate::accounting::Leg::Downstream, false);
        }
        let index = self.insert_local(Rc::new(sock), service, id, false);
        if let Sans::Source(s) = &self.sans
            && let Some(start) = s.started_stream(id)
        {
            let t = token(TIMER_START_WAIT, start, service as u32);
            io.timers.push((io.now + START_WAIT, t));
        }
        self.apply_actions(io);
        self.read_local(io, index);
    }

    /// Counts `n` connections of `service` refused at `connections_per_service`, with a
    /// warning at most every [`crate::shard::tunnel::agent::status::WARN_EVERY`].
    pub(super) fn over_limit(&mut self, service: usize, n: u64) {
        if let Some(total) = self.shared.over_limit(service, n) {
            tracing::warn!(
                agent = %self.spec.name,
                service = %self.spec.services[service].name,
                limit = self.spec.connections_per_service,
                refused = total,
                "local connections refused: the service has connections_per_service open"
            );
        }
    }

    /// A destination's `CONNECTION_START`s reset at its limit, since the last look.
    pub(super) fn count_over_limit(&mut self) {
        if let Sans::Destination(d) = &mut self.sans {
            let counts: Vec<u64> = (0..self.spec.services.len())
                .map(|i| d.take_over_limit(i))
                .collect();
            for (i, n) in counts.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                self.over_limit(i, n);
            }
        }
    }

    pub(super) fn insert_local(
        &mut self,
        fd: Fd,
        service: usize,
        id: LocalId,
        connecting: bool,
    ) -> u32 {
        // (Socket indexes have 24 bits in a token: 16 million connections per agent.)
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.locals.push(None);
                self.generations.push(0);
                (self.locals.len() - 1) as u32
            }
        };
        let generation = self.next_generation(index);
        self.locals[index as usize] = Some(Local {
            fd,
            generation,
            service,
            id: Some(id),
            connecting,
            recv_in_flight: false,
            parked: false,
            read_done: false,
            queue: VecDeque::new(),
            sending: false,
            finishing: false,
            ending: false,
            shut_write: false,
            write_shut: false,
            rbuf: None,
            target: None,
            dials: 0,
        });
        self.by_id.insert(id, index);
        index
    }

    /// A new generation for local slot `index` (24 bits in a token): what completions and
    /// timers of its previous socket carry no longer matches.
    fn next_generation(&mut self, index: u32) -> u32 {
        let g = &mut self.generations[index as usize];
        *g = g.wrapping_add(1) & 0xff_ffff;
        *g
    }

    pub(super) fn dial(&mut self, io: &mut Io<'_>, local: LocalId, service: &str) {
        let Some(i) = self.spec.services.iter().position(|s| s.name == service) else {
            return;
        };
        let stats = self.shared.service(i);
        stats.connections.fetch_add(1, Relaxed);
        let (target, fd) = match self.targets[i].open(|a| self.target_socket(i, a)) {
            Some(Ok(opened)) => opened,
            Some(Err(e)) => {
                stats.failed.fetch_add(1, Relaxed);
                tracing::warn!(agent = %self.spec.name, service = %service, error = %e, "cannot open a socket for the service");
                if let Sans::Destination(d) = &mut self.sans {
                    d.handle_connect_failed(local);
                }
                return;
            }
            None => {
                // Not resolved yet (at start, or since): look again for the next stream.
                stats.failed.fetch_add(1, Relaxed);
                self.targets[i].refresh();
                tracing::warn!(
                    agent = %self.spec.name,
                    service = %service,
                    target = %self.spec.services[i].given,
                    error = %self.targets[i].no_address(),
                    "cannot reach the service; its stream is reset"
                );
                if let Sans::Destination(d) = &mut self.sans {
                    d.handle_connect_failed(local);
                }
                return;
            }
        };
        stats.active.fetch_add(1, Relaxed);
        let index = self.insert_local(fd.clone(), i, local, true);
        self.connect_local(io, index, fd, target);
    }

    /// A socket for a connection to service `i`'s target at `addr`, its bytes counted by the
    /// kernel when accounting is loaded.
    fn target_socket(&self, i: usize, addr: SocketAddr) -> std::io::Result<Fd> {
        let fd = Rc::new(sys::socket::tcp_stream(&SockAddr::from(addr))?);
        if let Some(kernel) = self.shared.service(i).kernel.get() {
            kernel.register(fd.as_fd(), crate::accounting::Leg::Upstream, true);
        }
        Ok(fd)
    }

    /// Dials `addr` on local connection `index` (its socket `fd`), with the connect deadline.
    fn connect_local(&mut self, io: &mut Io<'_>, index: u32, fd: Fd, addr: SocketAddr) {
        let Some(l) = self.locals[index as usize].as_mut() else {
            return;
        };
        l.target = Some(addr);
        l.dials += 1;
        let generation = l.generation;
        io.driver.submit(
            op_token(self.slot, TAG_LOCAL_CONNECT, index, generation),
            Op::Connect {
                fd,
                addr: Box::new(SockAddr::from(addr)),
            },
        );
        io.timers.push((
            io.now + self.spec.connect_timeout,
            token(TIMER_LOCAL_CONNECT, index, generation),
        ));
    }

    /// A destination's connection failed to connect (`why`): dials the target's next address
    /// on a new socket if it knows one this connection has not tried; false if not.
    fn redial_local(&mut self, io: &mut Io<'_>, index: u32, why: &str) -> bool {
        let Some(l) = self.locals[index as usize].as_ref() else {
            return false;
        };
        let (service, tried, dials) = (l.service, l.target, l.dials);
        let target = &self.targets[service];
        if target.current() == tried || dials >= target.known().min(MAX_DIALS) {
            return false;
        }
        let Some(Ok((next, fd))) = target.open(|a| self.target_socket(service, a)) else {
            return false;
        };
        if Some(next) == tried {
            // Past the others (of a family this host lacks), back at the one that refused.
            return false;
        }
        // A new socket, under a new generation: the old one's deadline timer is stale.
        let generation = self.next_generation(index);
        let Some(l) = self.locals[index as usize].as_mut() else {
            return false;
        };
        io.driver.cancel(l.fd.as_raw_fd());
        l.fd = fd.clone();
        l.generation = generation;
        l.connecting = true;
        if let Some(tried) = tried {
            tracing::debug!(
                agent = %self.spec.name,
                service = %self.spec.services[service].name,
                %tried,
                error = %why,
                "an address of the service's target failed; trying its next"
            );
        }
        self.connect_local(io, index, fd, next);
        true
    }

    /// A destination's connection could not reach the target (refused, or timed out): the
    /// next connection starts at the target's next address, and this one dials it now if it
    /// has not tried it; else its stream is reset.
    pub(super) fn connect_failed(&mut self, io: &mut Io<'_>, index: u32, why: &str) {
        let Some(l) = self.locals[index as usize].as_ref() else {
            return;
        };
        let (service, tried, id) = (l.service, l.target, l.id);
        // The target may have moved (a new address behind its name): later dials use a fresh
        // lookup if it comes back in time.
        self.targets[service].failed(tried);
        self.targets[service].refresh();
        if self.redial_local(io, index, why) {
            return;
        }
        self.shared.service(service).failed.fetch_add(1, Relaxed);
        tracing::warn!(
            agent = %self.spec.name,
            service = %self.spec.services[service].name,
            target = %self.spec.services[service].given,
            error = %why,
            "cannot reach the service; its stream is reset"
        );
        self.remove_local(io, index, true);
        if let (Some(id), Sans::Destination(d)) = (id, &mut self.sans) {
            self.by_id.remove(&id);
            d.handle_connect_failed(id);
        }
        self.apply_actions(io);
    }

    pub(super) fn local_completed(
        &mut self,
        io: &mut Io<'_>,
        tag: u8,
        index: u32,
        generation: u32,
        c: Completion,
    ) {
        let Some(l) = self
            .locals
            .get_mut(index as usize)
            .and_then(Option::as_mut)
            .filter(|l| l.generation == generation)
        else {
            return;
        };
        match (tag, c.op) {
            (TAG_LOCAL_CONNECT, _) => {
                if !l.connecting {
                    return;
                }
                l.connecting = false;
                if let Err(e) = c.result {
                    return self.connect_failed(io, index, &e.to_string());
                }
                if let (Some(id), Sans::Destination(d)) = (l.id, &mut self.sans) {
                    d.handle_connected(id);
                }
                self.apply_actions(io);
                self.read_local(io, index);
                self.write_local(io, index);
            }
            (TAG_LOCAL_RECV, Op::Recv { buf, .. }) => {
                l.recv_in_flight = false;
                let n = match c.result {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(agent = %self.spec.name, error = %e, "local connection failed");
                        let id = l.id.take();
                        return self.local_failed(io, index, id);
                    }
                };
                if n == 0 {
                    l.read_done = true;
                    if l.finishing {
                        // Drained to the peer's FIN after ours: done.
                        return self.remove_local(io, index, false);
                    }
                    let Some(id) = l.id else {
                        // Forgotten by the agent already: what is queued goes out, then close.
                        l.ending = true;
                        self.write_local(io, index);
                        return;
                    };
                    // The tunnel's side is told: a HALF_CLOSE (the connection stays for the
                    // other direction), or the ordinary reset and a Finish (write out, close).
                    if self.sans.handle_local_eof(id) == LocalEof::Waiting {
                        io.timers
                            .push((io.now + EOF_WAIT, token(TIMER_EOF_WAIT, index, generation)));
                    }
                    self.apply_actions(io);
                    return;
                }
                let service = l.service;
                match l.id {
                    Some(id) => {
                        self.shared
                            .service(service)
                            .to_tunnel
                            .fetch_add(n as u64, Relaxed);
                        self.send_data(id, buf, n);
                    }
                    None => l.rbuf = Some(buf),
                }
                self.flush_tunnel(io);
                if self.backlog_high() {
                    if let Some(l) = self.locals[index as usize].as_mut() {
                        l.parked = true;
                        self.parked.push(index);
                    }
                } else {
                    self.read_local(io, index);
                }
            }
            (TAG_LOCAL_SEND, Op::Send { mut buf, len, .. }) => {
                l.sending = false;
                let n = match c.result {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(agent = %self.spec.name, error = %e, "local connection write failed");
                        let id = l.id.take();
                        return self.local_failed(io, index, id);
                    }
                };
                self.shared
                    .service(l.service)
                    .from_tunnel
                    .fetch_add(n as u64, Relaxed);
                if n < len {
                    buf.drain(..n);
                    l.queue.push_front(buf);
                }
                if let Some(id) = l.id {
                    self.sans.handle_written(id, n);
                    self.apply_actions(io);
                }
                self.write_local(io, index);
            }
            _ => {}
        }
    }

    /// Frames `n` bytes read into `buf` (after [`HEADROOM`]) as DATA in place and sends them
    /// from there: the link takes the buffer over (its WebSocket frame and TLS record are
    /// made in it), so the next read gets a fresh one.
    pub(super) fn send_data(&mut self, id: LocalId, buf: Vec<u8>, n: usize) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        let Some(framing) = self.sans.data_framing(id, n) else {
            return;
        };
        let mut buf = buf;
        buf.resize(HEADROOM + n + DATA_TAILROOM, 0);
        let frame = framing
            .frame_in_place(&mut buf[SEND_HEADROOM..], DATA_HEADROOM)
            .expect("the buffer has the head- and tailroom");
        let frame = frame.start + SEND_HEADROOM..frame.end + SEND_HEADROOM;
        t.link.send_in_place(buf, frame);
    }

    pub(super) fn read_local(&mut self, io: &mut Io<'_>, index: u32) {
        let Some(l) = self.locals[index as usize].as_mut() else {
            return;
        };
        if l.recv_in_flight || l.read_done || l.connecting || l.parked {
            return;
        }
        let mut buf = l.rbuf.take().unwrap_or_else(|| {
            splice_proto::pool::take(HEADROOM + MAX_PAYLOAD + DATA_TAILROOM + SEND_TAILROOM)
        });
        buf.clear();
        buf.resize(HEADROOM, 0);
        l.recv_in_flight = true;
        io.driver.submit(
            op_token(self.slot, TAG_LOCAL_RECV, index, l.generation),
            Op::Recv {
                fd: l.fd.clone(),
                buf,
                len: MAX_PAYLOAD,
            },
        );
    }

    pub(super) fn write_local(&mut self, io: &mut Io<'_>, index: u32) {
        let Some(l) = self.locals[index as usize].as_mut() else {
            return;
        };
        if l.sending || l.connecting {
            return;
        }
        if let Some(buf) = l.queue.pop_front() {
            let len = buf.len();
            l.sending = true;
            io.driver.submit(
                op_token(self.slot, TAG_LOCAL_SEND, index, l.generation),
                Op::Send {
                    fd: l.fd.clone(),
                    buf,
                    len,
                },
            );
            return;
        }
        if l.shut_write && !l.write_shut {
            // The peer's half-close, after everything it sent before it.
            let _ = sys::socket::shutdown_write(l.fd.as_fd());
            l.write_shut = true;
        }
        if l.ending {
            self.remove_local(io, index, false);
        } else if l.finishing && !l.read_done {
            // Everything is written: FIN, then read (and drop) until the peer's FIN, so that
            // closing never resets bytes the peer has not read yet.
            let _ = sys::socket::shutdown_write(l.fd.as_fd());
            l.parked = false;
            self.read_local(io, index);
        } else if l.finishing {
            self.remove_local(io, index, false);
        }
    }

    /// Resets a local connection (RST) and forgets it.
    pub(super) fn reset_local(&mut self, io: &mut Io<'_>, index: u32) {
        self.remove_local(io, index, true);
    }

    /// A local connection's read or write failed: the agent forgets its id (`id`, taken from
    /// it), and it is reset and removed.
    fn local_failed(&mut self, io: &mut Io<'_>, index: u32, id: Option<LocalId>) {
        if let Some(id) = id {
            self.by_id.remove(&id);
            self.sans.handle_local_closed(id);
        }
        self.remove_local(io, index, true);
        self.apply_actions(io);
    }

    pub(super) fn remove_local(&mut self, io: &mut Io<'_>, index: u32, reset: bool) {
        let Some(l) = self.locals[index as usize].take() else {
            return;
        };
        if reset {
            let _ = sys::socket::set_linger_zero(l.fd.as_fd());
        }
        if let Some(id) = l.id {
            self.by_id.remove(&id);
        }
        io.driver.cancel(l.fd.as_raw_fd());
        self.shared.service(l.service).active.fetch_sub(1, Relaxed);
        self.free.push(index);
    }
}
