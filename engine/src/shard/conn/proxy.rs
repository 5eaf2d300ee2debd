//! PROXY protocol: the header a load balancer sends before an `accept_proxy` connection's first
//! byte (read here before the pump starts), and the header `send_proxy` writes on the dialed
//! leg before any byte of the stream.

use std::os::fd::AsFd;

use splice_proto::proxy_protocol::{self, Addresses, Parsed};

use super::super::{Shard, token};
use super::{Conn, Outcome, wait_tag};
use crate::config::ProxyVersion;
use crate::driver::{Completion, Op};
use crate::error::Side;
use crate::modes::Role;
use crate::sys;

/// The PROXY header of an `accept_proxy` connection, read before anything else.
#[derive(Default)]
pub(super) struct ProxyIn {
    /// The header's bytes taken from the socket so far (every one of them is the header's).
    got: Vec<u8>,
    /// A readiness wait is in flight.
    waiting: bool,
    /// Why the connection is to be reset.
    pub(super) failed: Option<String>,
}

/// The most header bytes looked at in one read; a longer v2 header takes several.
const PROXY_PEEK: usize = 512;

impl Conn {
    /// `accept_proxy`: waits for the accepted socket to be readable, or resets the connection
    /// when the header was refused or is late.
    pub(super) fn drive_proxy_in(&mut self, index: u32, shard: &mut Shard) -> Outcome {
        let Some(p) = self.proxy_in.as_mut() else {
            return Outcome::Open;
        };
        if let Some(why) = p.failed.take() {
            return Outcome::Closed(Some((Side::Downstream, why)));
        }
        if !p.waiting {
            p.waiting = true;
            let tag = wait_tag(self.leg_of(Role::Accepted));
            let fd = self.accepted_fd().clone();
            shard.driver.submit(
                token(tag, index, self.generation),
                Op::Poll { fd, write: false },
            );
        }
        Outcome::Open
    }

    /// The accepted socket is readable: look at what arrived and take the header's bytes, and
    /// only those, off the socket. While the header is incomplete every byte that arrived is
    /// part of it, so each byte is read once and a slow sender cannot make us spin.
    pub(super) fn proxy_readable(&mut self, c: Completion) {
        let accepted = self.accepted_fd().clone();
        let Some(p) = self.proxy_in.as_mut() else {
            return;
        };
        p.waiting = false;
        if let Err(e) = c.result {
            p.failed = Some(format!("waiting for the PROXY header: {e}"));
            return;
        }
        let at_most = match proxy_protocol::parse(&p.got) {
            Ok(Parsed::Incomplete { at_most }) => at_most.min(PROXY_PEEK),
            _ => 0,
        };
        let had = p.got.len();
        let mut seen = p.got.clone();
        let take = match sys::peek_into(accepted.as_fd(), &mut seen, at_most) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => Err(format!("reading the PROXY header: {e}")),
            Ok(0) => Err("the peer closed before its PROXY header was complete".into()),
            Ok(n) => match proxy_protocol::parse(&seen) {
                Ok(Parsed::Incomplete { .. }) => Ok(n),
                Ok(Parsed::Complete { len, .. }) => Ok(len - had),
                Err(e) => Err(format!("bad PROXY header: {e}")),
            },
        };
        let take = match take {
            Ok(n) => n,
            Err(why) => {
                p.failed = Some(why);
                return;
            }
        };
        if let Err(e) = sys::recv_into(accepted.as_fd(), &mut p.got, take) {
            p.failed = Some(format!("reading the PROXY header: {e}"));
            return;
        }
        let header = match proxy_protocol::parse(&p.got) {
            Ok(Parsed::Complete { header, .. }) => header,
            Ok(Parsed::Incomplete { .. }) => return,
            Err(e) => {
                p.failed = Some(format!("bad PROXY header: {e}"));
                return;
            }
        };
        self.proxy_in = None;
        tracing::debug!(
            forwarder = %self.fwd.name,
            peer = %self.peer_text(),
            header = ?header,
            "PROXY header read"
        );
        if let Addresses::Tcp {
            source,
            destination,
        } = header.addresses
        {
            self.peer = Some(source);
            self.proxied_to = Some(Box::new(destination));
        }
    }

    /// `send_proxy`: writes the header on the freshly connected upstream socket, before any
    /// byte of the stream. Its send buffer is empty, so a header (at most 52 bytes here) goes
    /// out whole or the connect is reported failed.
    pub(super) fn send_proxy_header(&self, version: ProxyVersion) -> std::io::Result<()> {
        let up = self
            .leg_fd(self.leg_of(Role::Dialed))
            .ok_or_else(|| std::io::Error::other("no upstream socket"))?;
        let destination = self
            .proxied_to
            .as_deref()
            .copied()
            .or_else(|| sys::socket::local_addr(self.accepted_fd().as_fd()));
        let addresses = match (self.peer, destination) {
            (Some(source), Some(destination)) => Addresses::Tcp {
                source,
                destination,
            },
            _ => Addresses::Unknown,
        };
        let version = match version {
            ProxyVersion::V1 => proxy_protocol::Version::V1,
            ProxyVersion::V2 => proxy_protocol::Version::V2,
        };
        let header = proxy_protocol::encode(version, &addresses);
        let n = sys::send(up.as_fd(), &header)?;
        if n < header.len() {
            return Err(std::io::Error::other(format!(
                "PROXY header: only {n} of {} bytes sent",
                header.len()
            )));
        }
        Ok(())
    }
}
