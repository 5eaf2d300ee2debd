//! One tunnel link on a shard: a socket, the sans-IO [`Link`] (TLS in user space, the HTTP
//! upgrade, WebSocket messages) and the driver ops that move its bytes.
//!
//! # For an entity that uses links (the relay's peers, the agents' tunnel links)
//!
//! A link lives in the shard's [`Plane`](super::Plane) slab of links; an entity refers to it
//! by [`LinkRef`] and is told of everything that happens on it.
//!
//! - **Create an entity**: add a variant to [`super::Entity`] (the agents' go in
//!   `tunnel/agent*`), then `plane.insert_entity(entity)` gives its [`super::EntityRef`].
//!   Its callback is [`super::Entity::on_link`] (and [`super::Entity::on_timer`] for timers
//!   armed with [`super::Plane::arm`]).
//! - **Dial a link (client role)**: build a `rustls::client::UnbufferedClientConnection` from
//!   the agent's `ClientConfig` (with `enable_secret_extraction`: after the handshake the
//!   link's own record layer takes over) and the relay's server name, and the upgrade request with
//!   [`splice_proto::ws::ClientRequest`] (the key from a random source); then
//!   `Link::client(tls, &request, seed)` and [`super::Plane::dial`]`(shard, addr, link,
//!   owner)`: the socket connects, TLS handshakes and the request goes out; the link's
//!   [`Link::poll`] gives `Event::Open` (or `Event::Refused`, with the HTTP status) once the
//!   relay answers.
//! - **Accepted links (server role)**: [`super::Plane::adopt_link`] with an accepted socket.
//! - **Send a binary message**: `plane.link_mut(r).link.send_message(bytes)`, then
//!   [`super::Plane::kick`]`(shard, r)` to write it out (the plane also kicks every link after
//!   an entity's callback returns, so inside a callback no kick is needed).
//! - **Receive messages**: in `on_link`, loop `while let Some(ev) = link.link.poll()`:
//!   `Event::Message(bytes)` is one whole binary message (borrowed until the next poll).
//! - **Pause / resume reads (head-of-line flow control)**: [`LinkIo::pause`] stops reading
//!   the socket (stop polling it too: messages already read stay buffered, at most
//!   [`splice_proto::tunnel::link::MAX_BUFFERED`] bytes); [`LinkIo::resume`] then a poll
//!   loop and a kick start again. [`Link::pending_output`] says how much waits to be written:
//!   bound it on the links you write to.
//! - **Close and loss**: `link.close(code, reason)` queues a close frame; then
//!   [`super::Plane::release`] hands the link to the plane, which writes what is queued and
//!   closes the socket. The entity is told of loss by `on_link` with [`LinkIo::is_lost`] true
//!   (socket error, the peer's end, a TLS error) or an `Event::Closed`/`Event::Failed` from
//!   poll; it then calls [`super::Plane::release`] (or [`super::Plane::drop_link`] to reset at
//!   once).

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use splice_proto::pool;
use splice_proto::tunnel::link::Link;

use crate::driver::{Completion, Driver, Fd, Op};
use crate::shard::token;

use super::{EntityRef, TAG_LINK_CONNECT, TAG_LINK_POLL, TAG_LINK_RECV, TAG_LINK_SEND};

/// Bytes asked for in one receive.
const RECV_CHUNK: usize = 64 * 1024;
/// Bytes asked for in one receive of a lingering link (they are dropped).
const LINGER_CHUNK: usize = 16 * 1024;
/// How long a released link waits for its peer's end before it closes anyway.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// The buffer for a receive of `len` bytes: `kept` (the last receive's, while bytes keep
/// coming) or one from the shard's pool.
fn recv_buffer(kept: &mut Vec<u8>, len: usize) -> Vec<u8> {
    let mut buf = std::mem::take(kept);
    if buf.capacity() < len {
        pool::give(buf);
        buf = pool::take(len);
    }
    buf.clear();
    buf
}

/// A link's place in the plane's slab: its index and generation (the tokens of its ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LinkRef {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// A link on a shard: see the [module documentation](self).
pub(crate) struct LinkIo {
    /// The sans-IO link.
    pub(crate) link: Link,
    pub(crate) fd: Fd,
    /// Who is told of what happens on it (`None`: released, the plane closes it when its
    /// output is written).
    pub(crate) owner: Option<EntityRef>,
    connecting: bool,
    recv_busy: bool,
    send_busy: bool,
    paused: bool,
    /// The socket failed or ended, or TLS did: the link is lost.
    lost: Option<String>,
    /// Bytes arrived since [`LinkIo::take_heard`] last asked.
    heard: bool,
    /// The last receive emptied the socket (or none was made yet): wait for readability
    /// before the next one, so an idle link holds no receive buffer (as the forwarders do).
    ready_first: bool,
    /// Released and written out: our side is shut down and what the peer still sends is
    /// read and dropped until its end (or the linger time), so that it reads our last words
    /// (a close frame, an error response) instead of a reset.
    lingering: bool,
    /// The peer's end was read while lingering.
    drained: bool,
    /// Buffers kept between ops.
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
}

impl LinkIo {
    pub(crate) fn new(fd: OwnedFd, link: Link, owner: Option<EntityRef>) -> Self {
        Self {
            link,
            fd: Rc::new(fd),
            owner,
            connecting: false,
            recv_busy: false,
            send_busy: false,
            paused: false,
            lost: None,
            heard: false,
            // A link starts by waiting for readability: one that arrives idle (a relay peer
            // moved to its tunnel's shard after its upgrade) then holds no receive buffer.
            ready_first: true,
            lingering: false,
            drained: false,
            recv_buf: Vec::new(),
            send_buf: Vec::new(),
        }
    }

    /// Whether bytes arrived (any: messages, pings, pongs) since the last call: the peer is
    /// alive.
    pub(crate) fn take_heard(&mut self) -> bool {
        std::mem::take(&mut self.heard)
    }

    #[allow(dead_code, reason = "for the agents' entities")]
    pub(crate) fn set_connecting(&mut self) {
        self.connecting = true;
    }

    /// Stops reading the socket (flow control).
    pub(crate) fn pause(&mut self) {
        self.paused = true;
    }

    /// Reads again.
    pub(crate) fn resume(&mut self) {
        self.paused = false;
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Why the link is lost, if it is.
    pub(crate) fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_some()
    }

    pub(crate) fn mark_lost(&mut self, why: impl Into<String>) {
        if self.lost.is_none() {
            self.lost = Some(why.into());
        }
    }

    /// No op in flight.
    pub(crate) fn is_idle(&self) -> bool {
        !self.connecting && !self.recv_busy && !self.send_busy
    }

    /// Whether a released link has written everything it will write (or is lost).
    pub(crate) fn finished(&self) -> bool {
        self.is_lost()
            || (self.link.is_done() && self.link.pending_output() == 0 && !self.send_busy)
    }

    /// Whether a finished link may close now: lost, or the peer's end was read.
    pub(crate) fn closable(&self) -> bool {
        self.is_lost() || self.drained || self.link.peer_ended()
    }

    /// Starts lingering (see the field); false if it already does.
    pub(crate) fn start_lingering(&mut self) -> bool {
        if self.lingering {
            return false;
        }
        self.lingering = true;
        let _ = crate::sys::socket::shutdown_write(std::os::fd::AsFd::as_fd(&*self.fd));
        true
    }

    pub(crate) fn is_lingering(&self) -> bool {
        self.lingering
    }

    /// Submits the ops the link needs now: a send of its pending output, a receive when it
    /// wants bytes and is not paused.
    pub(crate) fn submit(&mut self, at: LinkRef, driver: &mut Driver) {
        if self.connecting || self.is_lost() {
            return;
        }
        if self.lingering {
            if !self.recv_busy && !self.drained {
                let buf = recv_buffer(&mut self.recv_buf, LINGER_CHUNK);
                self.recv_busy = true;
                driver.submit(
                    token(TAG_LINK_RECV, at.index, at.generation),
                    Op::Recv {
                        fd: self.fd.clone(),
                        buf,
                        len: LINGER_CHUNK,
                    },
                );
            }
            return;
        }
        if !self.send_busy && self.link.pending_output() > 0 {
            let mut buf = std::mem::take(&mut self.send_buf);
            self.link.take_output(&mut buf);
            let len = buf.len();
            self.send_busy = true;
            driver.submit(
                token(TAG_LINK_SEND, at.index, at.generation),
                Op::Send {
                    fd: self.fd.clone(),
                    buf,
                    len,
                },
            );
        }
        let reading = self.owner.is_some() || !self.link.is_done();
        if !self.recv_busy && !self.paused && reading && self.link.wants_read() {
            self.recv_busy = true;
            if self.ready_first {
                driver.submit(
                    token(TAG_LINK_POLL, at.index, at.generation),
                    Op::Poll {
                        fd: self.fd.clone(),
                        write: false,
                    },
                );
                return;
            }
            let buf = recv_buffer(&mut self.recv_buf, RECV_CHUNK);
            driver.submit(
                token(TAG_LINK_RECV, at.index, at.generation),
                Op::Recv {
                    fd: self.fd.clone(),
                    buf,
                    len: RECV_CHUNK,
                },
            );
        }
    }

    /// Takes a completion of one of its ops. Returns whether the owner should look at the
    /// link (bytes arrived, it was lost, output drained); if not, only its ops need a kick.
    pub(crate) fn complete(&mut self, tag: u8, c: Completion) -> bool {
        match (tag, c.op) {
            (TAG_LINK_POLL, _) => {
                self.recv_busy = false;
                self.ready_first = false;
                match c.result {
                    Err(e) if e.raw_os_error() != Some(libc::ECANCELED) => {
                        self.mark_lost(format!("poll: {e}"));
                        true
                    }
                    _ => false,
                }
            }
            (TAG_LINK_CONNECT, _) => {
                self.connecting = false;
                if let Err(e) = c.result {
                    self.mark_lost(format!("connect: {e}"));
                }
                true
            }
            (TAG_LINK_RECV, Op::Recv { buf, .. }) if self.lingering => {
                self.recv_busy = false;
                match c.result {
                    Ok(0) => self.drained = true,
                    Ok(_) => {
                        self.recv_buf = buf;
                        return true;
                    }
                    Err(e) => self.mark_lost(format!("receive: {e}")),
                }
                pool::give(buf);
                true
            }
            (TAG_LINK_RECV, Op::Recv { buf, .. }) => {
                self.recv_busy = false;
                let result = c.result;
                let r = match result {
                    Ok(0) => {
                        self.link.receive_eof();
                        if self.link.is_open() {
                            self.mark_lost("the peer closed the connection");
                        }
                        Ok(())
                    }
                    Ok(n) => {
                        self.heard = true;
                        self.ready_first = n < RECV_CHUNK;
                        let client = self.link.is_client();
                        self.link
                            .receive_tls(&buf)
                            .map_err(|e| tls_failure(e, client))
                    }
                    Err(e) => Err(format!("receive: {e}")),
                };
                // Keep the buffer for the next receive only while bytes keep coming; else it
                // goes back to the shard's pool.
                if self.ready_first {
                    pool::give(buf);
                } else {
                    self.recv_buf = buf;
                }
                if let Err(e) = r {
                    self.mark_lost(e);
                }
                true
            }
            (TAG_LINK_SEND, Op::Send { buf, len, .. }) => {
                self.send_busy = false;
                match c.result {
                    Ok(n) if n < len => self.link.unsent(&buf[n..len]),
                    Ok(_) => {}
                    Err(e) => self.mark_lost(format!("send: {e}")),
                }
                // Keep the buffer only while there is more to send; else it goes back to the
                // shard's pool (the link takes its next output buffer from there).
                if self.link.pending_output() > 0 {
                    self.send_buf = buf;
                } else {
                    pool::give(buf);
                }
                true
            }
            _ => false,
        }
    }

    /// The buffers it keeps between ops (an idle link keeps none).
    #[cfg(test)]
    pub(crate) fn kept_buffers(&self) -> usize {
        self.recv_buf.capacity() + self.send_buf.capacity()
    }

    /// Cancels its ops (their completions find no link and are dropped).
    pub(crate) fn cancel(&self, driver: &mut Driver) {
        driver.cancel(self.fd.as_raw_fd());
    }

    /// The socket and the link, to move to another shard: only with no op in flight (`None`
    /// otherwise, or when something else still holds the fd; the link is then closed).
    pub(crate) fn into_parts(self) -> Option<(OwnedFd, Link)> {
        if !self.is_idle() {
            return None;
        }
        let LinkIo { link, fd, .. } = self;
        Rc::try_unwrap(fd).ok().map(|fd| (fd, link))
    }
}

/// A link's TLS failure for the log (`client`: an agent's link): a handshake that rustls
/// refused is said as the forwarders say it (what is wrong with the certificate, and which setting fixes it), else as it came.
pub(crate) fn tls_failure(e: splice_proto::tunnel::link::TlsError, client: bool) -> String {
    use crate::kinds::Mode;
    match &e.rustls {
        Some(r) => {
            // The forwarders' words, naming the peer: an agent's is the relay.
            let text = match client {
                true => crate::explain::explain_peer(r, Mode::Client, "the relay"),
                false => crate::explain::explain(r, Mode::Server),
            };
            format!("TLS: {text}")
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    use splice_proto::tunnel::link::Link;

    use super::{LinkIo, LinkRef};
    use crate::driver::fake::FakeDriver;
    use crate::driver::{Driver, Op};

    fn server_link() -> Link {
        let cert =
            splice_test_pki::Cert::self_signed(&["localhost"], splice_test_pki::KeyType::P256);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], cert.key.der())
            .unwrap();
        config.enable_secret_extraction = true;
        Link::server(rustls::server::UnbufferedServerConnection::new(Arc::new(config)).unwrap())
    }

    /// A relay holds thousands of idle links, each in a slab slot: the slot stays small, and a
    /// link that has nothing to read (a fresh one, or one moved to its tunnel's shard after its
    /// upgrade) waits for readability with no receive buffer, rather than hold a 64 KiB one in
    /// a receive until its peer speaks.
    #[test]
    fn an_idle_link_is_small_and_waits_without_a_buffer() {
        let size = std::mem::size_of::<LinkIo>();
        assert!(size <= 384, "LinkIo is {size} bytes");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut io = LinkIo::new(OwnedFd::from(a), server_link(), None);
        let fake = FakeDriver::default();
        let mut driver = Driver::Fake(fake.clone());
        io.submit(
            LinkRef {
                index: 0,
                generation: 1,
            },
            &mut driver,
        );
        let state = fake.0.borrow();
        assert_eq!(state.in_flight.len(), 1, "{state:?}");
        assert!(
            matches!(state.in_flight[0].1, Op::Poll { write: false, .. }),
            "{state:?}"
        );
        assert_eq!(io.kept_buffers(), 0);
    }
}
