//! The relay's data plane: a listener per `[[relay]]` on every shard, the peers' TLS and
//! upgrade ([`Pending`]), admission by the registry, the hand-off of an admitted peer to its
//! tunnel's shard ([`Arrival`]), and the tunnel there ([`TunnelPeers`]): a
//! [`Session`] that judges each frame, and the two peers' links.
//!
//! A tunnel's shard is a hash of its id modulo the shard count, so both peers meet there
//! without a shared map. Frames are forwarded as they came (each tunnel frame one WebSocket
//! message, never re-encoded). Flow control: when the link a peer's frames go to has more
//! than [`HIGH_WATER`] bytes waiting, the relay stops reading that peer until it is under
//! [`LOW_WATER`], so a peer that stops reading costs bounded memory and slows only its tunnel.

use std::hash::{Hash, Hasher};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use splice_proto::tunnel::FrameDecoder;
use splice_proto::tunnel::Version;
use splice_proto::tunnel::link::{Event as LinkEvent, Link};
use splice_proto::tunnel::relay::{Action, Closing, Session, Side, Verdict};
use splice_proto::ws::{self, Mode};

use super::relay_state::{Event, Relay};
use super::{Entity, EntityRef, LinkRef, Plane, TAG_RELAY_ACCEPT};
use crate::driver::{Completion, Op};
use crate::relay::counters::TunnelCounters;
use crate::relay::identity::CaRole;
use crate::relay::registry::{Admission, Refusal, RotateSides};
use crate::relay::tunnel::{Side as RegSide, Timestamp};
use crate::shard::{Shard, token};

/// How long a relay listener pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A relay listener's pause is over: accept again.
pub(super) fn resume_accept(plane: &mut Plane, shard: &mut Shard, id: u32) {
    if let Some((fd, _)) = plane.relays.get(&id) {
        shard.driver.submit(
            token(TAG_RELAY_ACCEPT, id, 0),
            Op::Accept { fd: fd.clone() },
        );
    }
}

/// Bytes waiting to go to a peer above which the relay stops reading the other peer.
pub(crate) const HIGH_WATER: usize = 256 * 1024;
/// ... and below which it reads again.
pub(crate) const LOW_WATER: usize = 64 * 1024;

/// A peer's address for logs: the address, or "unknown" when the socket could not say.
fn shown(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

fn side_of(s: RegSide) -> Side {
    match s {
        RegSide::Source => Side::Source,
        RegSide::Destination => Side::Destination,
    }
}

fn reg_side(s: Side) -> RegSide {
    match s {
        Side::Source => RegSide::Source,
        Side::Destination => RegSide::Destination,
    }
}

fn index(s: Side) -> usize {
    match s {
        Side::Source => 0,
        Side::Destination => 1,
    }
}

/// The shard a tunnel lives on.
pub(crate) fn shard_of(tunnel_id: &str, shards: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tunnel_id.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// A relay listener accepted (or failed to).
pub(super) fn accepted(plane: &mut Plane, shard: &mut Shard, id: u32, c: Completion) {
    let Some((fd, relay)) = plane.relays.get(&id) else {
        return;
    };
    let relay = relay.clone();
    let sock = match (c.result, c.accepted) {
        (Ok(_), Some(s)) => s,
        (Err(e), _) if e.raw_os_error() == Some(libc::ECANCELED) => return,
        (Err(e), _) => {
            if shard.log_allow(&relay.name, "relay accept failed") {
                tracing::warn!(relay = %relay.name, error = %e, "accept failed");
            }
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            ) {
                // Retrying at once would spin until an fd is freed: pause a little.
                shard.timers.push(std::cmp::Reverse((
                    Instant::now() + ACCEPT_PAUSE,
                    token(super::TIMER_RELAY_ACCEPT, id, 0),
                )));
            } else {
                shard.driver.submit(
                    token(TAG_RELAY_ACCEPT, id, 0),
                    Op::Accept { fd: fd.clone() },
                );
            }
            return;
        }
        (Ok(_), None) => {
            shard.driver.submit(
                token(TAG_RELAY_ACCEPT, id, 0),
                Op::Accept { fd: fd.clone() },
            );
            return;
        }
    };
    shard.driver.submit(
        token(TAG_RELAY_ACCEPT, id, 0),
        Op::Accept { fd: fd.clone() },
    );
    if relay.peers.fetch_add(1, Relaxed) as usize >= relay.max_peers {
        relay.peers.fetch_sub(1, Relaxed);
        let _ = crate::sys::socket::set_linger_zero(sock.as_fd());
        relay.stats.refusal(503);
        if shard.log_allow(&relay.name, "relay refused: max_peers") {
            tracing::warn!(relay = %relay.name, max = relay.max_peers, "peer refused: max_peers reached");
        }
        return;
    }
    let _ = crate::sys::socket::set_nodelay(sock.as_fd());
    let tls = match rustls::server::UnbufferedServerConnection::new(relay.tls.clone()) {
        Ok(t) => t,
        Err(e) => {
            relay.peers.fetch_sub(1, Relaxed);
            tracing::warn!(relay = %relay.name, error = %e, "cannot start a TLS session");
            return;
        }
    };
    let peer_addr = crate::sys::socket::peer_addr(sock.as_fd());
    let deadline = Instant::now() + relay.handshake_timeout;
    let e = plane.insert_entity(Entity::Pending(Pending {
        relay,
        link: None,
        deadline,
        peer_addr,
        waiting: None,
        handing: None,
        admitted: false,
    }));
    let link = plane.adopt_link(sock, Link::server(tls), Some(e));
    if let Some(Entity::Pending(p)) = plane.entities.get_mut(e.index, e.generation) {
        p.link = Some(link);
    }
    plane.arm(shard, e, deadline);
}

/// A peer in its TLS handshake and upgrade, on the shard that accepted it.
pub(crate) struct Pending {
    relay: Arc<Relay>,
    link: Option<LinkRef>,
    deadline: Instant,
    peer_addr: Option<std::net::SocketAddr>,
    /// Admitted, waiting for the registry's write of the token's use (its 101 goes once
    /// that is on disk).
    waiting: Option<Box<Waiting>>,
    /// Admitted, waiting for its send to finish before it moves to its tunnel's shard.
    handing: Option<(Admitted, Version)>,
    /// Admitted and on its way: its count in `Relay::peers` goes with it.
    admitted: bool,
}

impl Pending {
    pub(super) fn on_link(
        &mut self,
        me: EntityRef,
        r: LinkRef,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        if let Some((admission, version)) = self.handing.take() {
            return self.hand_off(r, admission, version, plane, shard);
        }
        if self.waiting.is_some() {
            // Only its end matters now: the answer waits for the registry.
            if plane.link_mut(r).is_none_or(|io| io.lost().is_some()) {
                plane.release(r);
                return self.gone();
            }
            return true;
        }
        let relay = self.relay.clone();
        let Some(io) = plane.link_mut(r) else {
            return self.gone();
        };
        if let Some(why) = io.lost() {
            if why.starts_with("TLS") {
                relay.stats.tls_failures.fetch_add(1, Relaxed);
                if shard.log_allow(&relay.name, "relay TLS handshake failed") {
                    tracing::warn!(relay = %relay.name, peer = %shown(self.peer_addr), error = %why, "peer's TLS handshake failed");
                }
            }
            plane.release(r);
            return self.gone();
        }
        let mut decision = None;
        while let Some(ev) = io.link.poll() {
            match ev {
                LinkEvent::Request(req) => {
                    decision = Some(req);
                    break;
                }
                LinkEvent::Http(req) => {
                    let (status, answer) = crate::relay::cookie::answer(
                        &relay.name,
                        &relay.registry,
                        &relay.cors_origins,
                        &req,
                        self.peer_addr,
                        || shard.log_allow(&relay.name, "relay cookie refused"),
                    );
                    if status >= 400 {
                        relay.stats.refusal(status);
                    }
                    io.link.refuse(&answer);
                    plane.release(r);
                    return self.gone();
                }
                LinkEvent::Standby(req) => {
                    if let Some((status, reason)) = super::standby::refusal(&relay, io, &req) {
                        relay.stats.refusal(status);
                        if shard.log_allow(&relay.name, "relay standby refused") {
                            tracing::warn!(relay = %relay.name, peer = %shown(self.peer_addr), thing = %req.thing, status, reason = %reason, "standby agent refused");
                        }
                        io.link.refuse(&ws::error_response(status, &reason, None));
                        plane.release(r);
                        return self.gone();
                    }
                    if super::standby::accept(plane, shard, relay, r, req, self.peer_addr) {
                        self.admitted = true;
                    }
                    return self.gone();
                }
                LinkEvent::BadRequest(e) => {
                    relay.stats.refusal(e.status());
                    if shard.log_allow(&relay.name, "relay upgrade refused") {
                        tracing::warn!(relay = %relay.name, peer = %shown(self.peer_addr), status = e.status(), error = %e, "upgrade request refused");
                    }
                    plane.release(r);
                    return self.gone();
                }
                _ => {}
            }
        }
        if io.link.is_done() {
            plane.release(r);
            return self.gone();
        }
        let Some(req) = decision else {
            return true;
        };
        let mode = match req.mode {
            Mode::Source => RegSide::Source,
            Mode::Destination => RegSide::Destination,
        };
        let version =
            Version::from_subprotocol(req.protocol.as_str()).expect("the versions are the same");
        if let Some((status, reason)) =
            crate::relay::cookie::upgrade_refusal(&req, &relay.cors_origins)
        {
            relay.stats.refusal(status);
            if shard.log_allow(&relay.name, "relay peer refused") {
                tracing::warn!(relay = %relay.name, peer = %shown(self.peer_addr), origin = ?req.origin, status, reason, "peer refused");
            }
            io.link.refuse(&ws::error_response(status, reason, None));
            plane.release(r);
            return self.gone();
        }
        // Who the peer is by its client certificate (verified in the handshake), when the
        // relay has client CAs and the peer presented one.
        let identity = io.link.take_peer_certificates().and_then(|chain| {
            relay
                .identities
                .as_ref()
                .and_then(|ids| ids.identify(&chain))
        });
        let admitted = match (req.access_token.as_ref(), &identity) {
            (Some(token), _) => {
                if let Some(id) = &identity {
                    // A token wins over a certificate: the peer joins the token's tunnel (a
                    // device in standby brings the token it was sent, and its certificate).
                    tracing::debug!(relay = %relay.name, peer = %shown(self.peer_addr), identity = %id.describe(), "peer brought a token and a client certificate: the token decides");
                }
                relay.registry.admit_naming(
                    token.secret(),
                    mode,
                    req.client_token.as_ref().map(|t| t.secret()),
                    &req.services,
                    Timestamp::now(),
                )
            }
            (None, Some(id)) if id.verified_as(CaRole::Client) => relay.registry.admit_identity(
                &id.pairing_identity(),
                mode,
                &req.services,
                Timestamp::now(),
            ),
            (None, Some(id)) => Err(Refusal::NotPairable(format!(
                "no access token, and the client certificate {} is not from the client CA \
                 (--client-ca): it cannot pair",
                id.describe()
            ))),
            (None, None) => Err(Refusal::NoToken),
        };
        let admission = match admitted {
            Ok(a) => Admitted::new(relay.clone(), a),
            Err(refusal) => {
                let status = refusal.status();
                relay.stats.refusal(status);
                if shard.log_allow(&relay.name, "relay peer refused") {
                    tracing::warn!(relay = %relay.name, peer = %shown(self.peer_addr), mode = mode.as_str(), status, identity = identity.as_ref().map(|i| i.pairing_identity()), reason = %refusal, "peer refused");
                }
                io.link
                    .refuse(&ws::error_response(status, &refusal.to_string(), None));
                plane.release(r);
                return self.gone();
            }
        };
        // The admission has the peer's place in `max_peers` from here on.
        self.admitted = true;
        let channel = format!("{}-{}", admission.tunnel_id, mode.as_str());
        let waiting = Waiting {
            response: req.accept_response(&channel),
            admission,
            version,
        };
        let durable = waiting.admission.durable.clone();
        if durable.poll().is_none() {
            // The token's first use is on its way to disk: answer once it is there, and
            // serve the shard's other peers meanwhile.
            self.waiting = Some(Box::new(waiting));
            match shard.peers.get(shard.index) {
                Some(peer) => {
                    let peer = peer.clone();
                    durable.on_ready(move || {
                        let _ = peer.send_tunnel(super::Cmd::Durable(me));
                    });
                }
                // No way to be woken (a shard without its peers): wait here.
                None => {
                    let _ = durable.wait();
                    return self.on_durable(plane, shard);
                }
            }
            return true;
        }
        self.answer(r, waiting, plane, shard)
    }

    /// The registry's write this peer waited for is done (or failed).
    pub(super) fn on_durable(&mut self, plane: &mut Plane, shard: &mut Shard) -> bool {
        let (Some(waiting), Some(r)) = (self.waiting.take(), self.link) else {
            return true;
        };
        self.answer(r, *waiting, plane, shard)
    }

    /// The upgrade's answer once the admission is on disk: the 101 and the hand-off, or a
    /// 503 when the registry could not write it (the token's use stays recorded: it is
    /// never taken twice, at worst not at all).
    fn answer(&mut self, r: LinkRef, w: Waiting, plane: &mut Plane, shard: &mut Shard) -> bool {
        let relay = self.relay.clone();
        let Some(io) = plane.link_mut(r) else {
            return self.gone();
        };
        let mode = w.admission.side;
        if let Some(Err(e)) = w.admission.durable.poll() {
            relay.stats.refusal(503);
            if shard.log_allow(&relay.name, "relay peer refused") {
                tracing::warn!(relay = %relay.name, peer = %shown(self.peer_addr), mode = mode.as_str(), status = 503, error = %e, "peer refused: the registry cannot record the token's use");
            }
            let reason = format!("the tunnel registry is unavailable: {e}");
            io.link.refuse(&ws::error_response(503, &reason, None));
            plane.release(r);
            return self.gone();
        }
        relay
            .stats
            .kernel
            .register(&w.admission.tunnel_id, side_of(mode), AsFd::as_fd(&*io.fd));
        io.link.accept(&w.response);
        tracing::info!(relay = %relay.name, tunnel = %w.admission.tunnel_id, side = mode.as_str(), peer = %shown(self.peer_addr), protocol = w.version.subprotocol(), reconnect = w.admission.reconnect, pairing = w.admission.pairing.kind(), identity = w.admission.pairing.identity(), "peer admitted");
        self.hand_off(r, w.admission, w.version, plane, shard)
    }

    fn hand_off(
        &mut self,
        r: LinkRef,
        admission: Admitted,
        version: Version,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        let shards = shard.peers.len();
        let target = shard_of(&admission.tunnel_id, shards);
        if shards < 2 || target == shard.index {
            self.admitted = true;
            attach(
                plane,
                shard,
                self.relay.clone(),
                admission,
                version,
                Attach::Here(r),
            );
            self.link = None;
            return false;
        }
        let Some((fd, link)) = plane.take_link(shard, r) else {
            // A send is in flight: move it once that is done, reading nothing meanwhile (a
            // receive in flight would keep it here).
            if let Some(io) = plane.link_mut(r) {
                io.pause();
            }
            self.handing = Some((admission, version));
            return true;
        };
        self.admitted = true;
        self.relay.stats.handoffs.fetch_add(1, Relaxed);
        let arrival = Arrival {
            relay: self.relay.id,
            fd,
            link,
            admission,
            version,
        };
        if let Err(super::Cmd::Peer(a)) =
            shard.peers[target].send_tunnel(super::Cmd::Peer(Box::new(arrival)))
        {
            // That shard has exited (the engine is stopping): serve it here.
            arrived(plane, shard, *a);
        }
        self.link = None;
        false
    }

    pub(super) fn on_timer(
        &mut self,
        _me: EntityRef,
        now: Instant,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        if now < self.deadline {
            return true;
        }
        if let Some(r) = self.link.take() {
            if shard.log_allow(&self.relay.name, "relay handshake timeout") {
                tracing::warn!(relay = %self.relay.name, peer = %shown(self.peer_addr), "peer's TLS handshake and upgrade took too long");
            }
            plane.drop_link(shard, r);
        }
        self.gone()
    }

    pub(super) fn drain(&mut self, plane: &mut Plane) -> bool {
        if let Some(r) = self.link.take() {
            plane.release(r);
        }
        self.gone()
    }

    fn gone(&mut self) -> bool {
        self.link = None;
        false
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // An admitted peer keeps its count (it moves on to its tunnel).
        if !self.admitted {
            self.relay.peers.fetch_sub(1, Relaxed);
        }
    }
}

/// An admitted peer waiting for its admission to be on disk: its answer and what it needs
/// afterwards.
struct Waiting {
    admission: Admitted,
    version: Version,
    /// The 101.
    response: Vec<u8>,
}

/// An admission on its way to its tunnel, from the registry's answer until the peer's link
/// is the tunnel's. Dropped before that (the peer died during its hand-off or while its
/// admission was written, its relay was removed, its tunnel's shard had exited, its
/// tunnel's session could not start), it gives back the peer's place in `max_peers` and
/// tells the registry the peer went, so no side stays marked connected.
struct Admitted {
    relay: Arc<Relay>,
    admission: Option<Admission>,
}

impl Admitted {
    fn new(relay: Arc<Relay>, admission: Admission) -> Self {
        Self {
            relay,
            admission: Some(admission),
        }
    }

    /// The peer reached its tunnel, which takes its place and its state over.
    fn arrived(mut self) -> Admission {
        self.admission.take().expect("taken once, here")
    }
}

impl std::ops::Deref for Admitted {
    type Target = Admission;

    fn deref(&self) -> &Admission {
        self.admission.as_ref().expect("there until it arrived")
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(a) = self.admission.take() else {
            return;
        };
        self.relay.peers.fetch_sub(1, Relaxed);
        tracing::info!(relay = %self.relay.name, tunnel = %a.tunnel_id, side = a.side.as_str(), "admitted peer gone before it reached its tunnel");
        if let Err(e) = self.relay.registry.abandoned(&a, Timestamp::now()) {
            tracing::warn!(relay = %self.relay.name, tunnel = %a.tunnel_id, error = %e, "cannot record a disconnect");
        }
    }
}

/// An admitted peer on its way to its tunnel's shard: the socket, the started link (TLS
/// session, the queued 101 and any bytes read past the request), and what admission said.
pub(crate) struct Arrival {
    relay: u32,
    fd: OwnedFd,
    link: Link,
    admission: Admitted,
    version: Version,
}

enum Attach {
    /// The link is in this shard's plane already.
    Here(LinkRef),
    /// The link came from another shard.
    Moved(OwnedFd, Box<Link>),
}

/// An admitted peer arrived from another shard.
pub(super) fn arrived(plane: &mut Plane, shard: &mut Shard, a: Arrival) {
    let Some((_, relay)) = plane.relays.get(&a.relay) else {
        return; // the relay is gone: dropping the socket closes it
    };
    let relay = relay.clone();
    attach(
        plane,
        shard,
        relay,
        a.admission,
        a.version,
        Attach::Moved(a.fd, Box::new(a.link)),
    );
}

/// Connects an admitted peer to its tunnel's session on this shard (made if need be).
fn attach(
    plane: &mut Plane,
    shard: &mut Shard,
    relay: Arc<Relay>,
    admission: Admitted,
    version: Version,
    link: Attach,
) {
    let key = (relay.id, admission.tunnel_id.clone());
    let side = side_of(admission.side);
    let existing = plane.tunnels.get(&key).copied();
    let e = match existing {
        Some(e) if plane.entities.get_mut(e.index, e.generation).is_some() => e,
        _ => {
            let session = match Session::new(admission.services.clone(), relay.limits) {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(relay = %relay.name, tunnel = %admission.tunnel_id, error = %err, "cannot make the tunnel's session");
                    // Dropping `admission` gives its place back and marks it gone.
                    if let Attach::Here(r) = link {
                        if let Some(io) = plane.link_mut(r) {
                            io.link
                                .close(ws::close_code::INTERNAL_ERROR, "tunnel session failed");
                        }
                        plane.release(r);
                    }
                    return;
                }
            };
            relay.stats.tunnels_open.fetch_add(1, Relaxed);
            let e = plane.insert_entity(Entity::Tunnel(Box::new(TunnelPeers {
                relay: relay.clone(),
                tunnel_id: admission.tunnel_id.clone(),
                session,
                links: [None, None],
                framers: [FrameDecoder::new(), FrameDecoder::new()],
                armed: None,
                streams: 0,
                buckets: [None, None],
                counters: {
                    let counters = relay.stats.per_tunnel.get(&admission.tunnel_id);
                    let _ = counters.pairing.set(admission.pairing.clone());
                    counters
                },
                serials: [0, 0],
            })));
            plane.tunnels.insert(key, e);
            e
        }
    };
    let r = match link {
        Attach::Here(r) => {
            if let Some(io) = plane.link_mut(r) {
                io.owner = Some(e);
            }
            r
        }
        Attach::Moved(fd, link) => plane.adopt_link(fd, *link, Some(e)),
    };
    // The tunnel has the peer now: its `left` reports the peer's end.
    let serial = admission.arrived().serial;
    plane.run_entity(shard, e, |entity, plane, shard| match entity {
        Entity::Tunnel(t) => {
            t.serials[index(side)] = serial;
            t.connect(e, side, version, r, plane, shard)
        }
        _ => true,
    });
}

/// A control event for relay `relay`: applies to the tunnel if it lives here.
pub(super) fn event(plane: &mut Plane, shard: &mut Shard, relay: u32, event: Event) {
    let id = match &event {
        Event::Closed { tunnel_id, .. } | Event::Rotated { tunnel_id, .. } => tunnel_id.clone(),
        Event::Notify { .. } => {
            super::standby::handle_event(plane, shard, relay, &event);
            return;
        }
    };
    let Some(e) = plane.tunnels.get(&(relay, id)).copied() else {
        return;
    };
    plane.run_entity(shard, e, |entity, plane, shard| match entity {
        Entity::Tunnel(t) => t.control(e, &event, plane, shard),
        _ => true,
    });
}

/// A tunnel on its shard: the session and the peers' links.
pub(crate) struct TunnelPeers {
    relay: Arc<Relay>,
    tunnel_id: String,
    session: Session,
    /// The link of each side ([`index`]).
    links: [Option<LinkRef>; 2],
    /// Each peer's byte stream cut into frames.
    framers: [FrameDecoder; 2],
    /// When its timer is armed for.
    armed: Option<Instant>,
    /// Its open streams, as last counted into the metrics.
    streams: i64,
    /// The rate limit's budget per direction (by sender side), when one is set.
    buckets: [Option<Bucket>; 2],
    /// This tunnel's counters (`/metrics`, describe).
    counters: Arc<TunnelCounters>,
    /// The registry's serial of each side's peer ([`index`]): when it goes, its side is
    /// marked disconnected only if no later peer was admitted on it.
    serials: [u64; 2],
}

/// A token bucket: `tokens` bytes may go now (negative: a debt), refilled at the relay's
/// `rate_limit` per second up to one second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Reading from the sender is paused until then.
    until: Option<Instant>,
}

impl Bucket {
    fn refill(&mut self, rate: u64, now: Instant) {
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
    }
}

impl TunnelPeers {
    fn connect(
        &mut self,
        me: EntityRef,
        side: Side,
        version: Version,
        r: LinkRef,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        let now = Instant::now();
        let replaced = self.links[index(side)].take();
        let actions = self.session.peer_connected(side, version, now);
        self.framers[index(side)] = FrameDecoder::new();
        self.relay.stats.peers[index(side)].fetch_add(1, Relaxed);
        self.counters.peers[index(side)].fetch_add(1, Relaxed);
        // The new link takes its side before the actions (SERVICE_IDS goes to it); the old
        // one goes with the CloseReplaced action.
        self.links[index(side)] = Some(r);
        self.apply(actions, replaced, plane, shard);
        self.session.peer_active(side, now);
        // Messages that came with the upgrade's bytes.
        self.read(side, plane, shard);
        self.finish(me, plane, shard)
    }

    /// Carries out the session's actions. `replaced`: the link a `CloseReplaced` closes.
    fn apply(
        &mut self,
        actions: Vec<Action>,
        mut replaced: Option<LinkRef>,
        plane: &mut Plane,
        shard: &mut Shard,
    ) {
        for action in actions {
            match action {
                Action::Send { to, frame } => {
                    if let Some(io) = self.links[index(to)].and_then(|r| plane.link_mut(r)) {
                        io.link.send_message(&frame);
                    }
                }
                Action::Ping { to } => {
                    if let Some(io) = self.links[index(to)].and_then(|r| plane.link_mut(r)) {
                        io.link.send_ping();
                    }
                }
                Action::Close { to, code, reason } => {
                    if let Some(r) = self.links[index(to)].take() {
                        if let Some(io) = plane.link_mut(r) {
                            io.link.close(code, reason);
                        }
                        plane.release(r);
                        self.left(to, plane, shard);
                    }
                }
                Action::CloseReplaced { side, code, reason } => {
                    if let Some(r) = replaced.take() {
                        if let Some(io) = plane.link_mut(r) {
                            io.link.close(code, reason);
                        }
                        plane.release(r);
                        self.relay.stats.peers[index(side)].fetch_sub(1, Relaxed);
                        self.counters.peers[index(side)].fetch_sub(1, Relaxed);
                        self.relay.peers.fetch_sub(1, Relaxed);
                    }
                }
                Action::Disconnect { to, reason } => {
                    if let Some(r) = self.links[index(to)].take() {
                        tracing::info!(relay = %self.relay.name, tunnel = %self.tunnel_id, side = to.as_str(), reason, "peer disconnected");
                        plane.drop_link(shard, r);
                        self.left(to, plane, shard);
                    }
                }
            }
        }
    }

    /// The peer on `side` is down (its link is released or dropped already).
    fn left(&mut self, side: Side, plane: &mut Plane, shard: &mut Shard) {
        self.relay.stats.peers[index(side)].fetch_sub(1, Relaxed);
        self.counters.peers[index(side)].fetch_sub(1, Relaxed);
        self.relay.peers.fetch_sub(1, Relaxed);
        self.framers[index(side)] = FrameDecoder::new();
        let serial = self.serials[index(side)];
        if let Err(e) =
            self.relay
                .registry
                .gone(&self.tunnel_id, reg_side(side), serial, Timestamp::now())
        {
            tracing::warn!(relay = %self.relay.name, tunnel = %self.tunnel_id, error = %e, "cannot record a disconnect");
        }
        let actions = self.session.peer_gone(side);
        self.apply(actions, None, plane, shard);
    }

    pub(super) fn on_link(
        &mut self,
        me: EntityRef,
        r: LinkRef,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        let Some(side) = [Side::Source, Side::Destination]
            .into_iter()
            .find(|s| self.links[index(*s)] == Some(r))
        else {
            return self.finish(me, plane, shard);
        };
        self.read(side, plane, shard);
        // Output drained on this link: the other side may read again.
        self.resume(side.other(), plane, shard);
        self.finish(me, plane, shard)
    }

    /// Reads what the peer on `side` sent, unless it is paused.
    fn read(&mut self, side: Side, plane: &mut Plane, shard: &mut Shard) {
        let Some(r) = self.links[index(side)] else {
            return;
        };
        let other = self.links[index(side.other())];
        let now = Instant::now();
        let mut gone: Option<String> = None;
        let mut rule_break: Option<(u16, &'static str)> = None;
        let mut forwarded = 0u64;
        {
            let (io, mut out) = match other {
                Some(o) => match plane.links_mut(r, o) {
                    Some([a, b]) => (a, Some(b)),
                    None => return,
                },
                None => match plane.link_mut(r) {
                    Some(a) => (a, None),
                    None => return,
                },
            };
            if io.take_heard() {
                self.session.peer_active(side, now);
            }
            if io.is_paused() {
                return;
            }
            let framer = &mut self.framers[index(side)];
            let mut replies: Vec<Vec<u8>> = Vec::new();
            'events: while let Some(ev) = io.link.poll() {
                self.session.peer_active(side, now);
                match ev {
                    LinkEvent::Message(bytes) => {
                        let mut frames = framer.handle_bytes(bytes);
                        while let Some(frame) = frames.next_frame() {
                            match self.session.frame_bytes_from(side, frame.bytes()) {
                                Verdict::Forward => {
                                    if let Some(out) = out.as_deref_mut() {
                                        out.link.send_message(frame.bytes());
                                        forwarded += frame.bytes().len() as u64;
                                    }
                                }
                                Verdict::Drop => {}
                                Verdict::Reply(frames) => replies.extend(frames),
                                Verdict::ClosePeer { code, reason } => {
                                    rule_break = Some((code, reason));
                                    break 'events;
                                }
                            }
                        }
                        if let Some(out) = out.as_deref()
                            && out.link.pending_output() > HIGH_WATER
                        {
                            io.pause();
                            break;
                        }
                    }
                    LinkEvent::Closed { code, reason } => {
                        let code = code.map_or("no code".to_string(), |c| format!("code {c}"));
                        let sep = if reason.is_empty() { "" } else { ": " };
                        gone = Some(format!("closed by the peer ({code}{sep}{reason})"));
                        break;
                    }
                    LinkEvent::Failed(e) => {
                        rule_break = Some((e.close_code(), "WebSocket protocol error"));
                        gone = Some(format!("WebSocket protocol error: {e}"));
                        break;
                    }
                    _ => {}
                }
            }
            for frame in replies {
                io.link.send_message(&frame);
            }
            if gone.is_none() && rule_break.is_none() {
                if let Some(why) = io.lost() {
                    gone = Some(why.to_string());
                } else if io.link.is_done() {
                    gone = Some("the link ended".into());
                }
            }
            if let Some((code, reason)) = rule_break
                && gone.is_none()
            {
                io.link.close(code, reason);
            }
        }
        if forwarded > 0 {
            self.relay.stats.bytes[index(side)].fetch_add(forwarded, Relaxed);
            self.counters.bytes[index(side)].fetch_add(forwarded, Relaxed);
            if let Some(rate) = self.relay.rate_limit {
                let bucket = self.buckets[index(side)].get_or_insert(Bucket {
                    tokens: rate as f64,
                    at: now,
                    until: None,
                });
                bucket.refill(rate, now);
                bucket.tokens -= forwarded as f64;
                if bucket.tokens < 0.0 {
                    // In debt: read nothing more from this peer until it is paid.
                    let wait = Duration::from_secs_f64(-bucket.tokens / rate.max(1) as f64);
                    let until = now + wait;
                    bucket.until = Some(until);
                    if let Some(io) = plane.link_mut(r) {
                        io.pause();
                    }
                    let me = plane
                        .tunnels
                        .get(&(self.relay.id, self.tunnel_id.clone()))
                        .copied();
                    if let Some(me) = me {
                        plane.arm(shard, me, until);
                    }
                }
            }
        }
        if let Some((code, reason)) = rule_break {
            self.relay.stats.rule_breaks.fetch_add(1, Relaxed);
            if shard.log_allow(&self.relay.name, "relay peer broke the rules") {
                tracing::warn!(relay = %self.relay.name, tunnel = %self.tunnel_id, side = side.as_str(), code, reason, detail = gone.as_deref().unwrap_or(""), "peer closed for breaking the protocol's rules");
            }
        } else if let Some(why) = &gone {
            tracing::info!(relay = %self.relay.name, tunnel = %self.tunnel_id, side = side.as_str(), why = %why, "peer gone");
        }
        if rule_break.is_some() || gone.is_some() {
            self.links[index(side)] = None;
            plane.release(r);
            self.left(side, plane, shard);
        }
    }

    /// Lets the peer on `side` read again once the other peer's link has drained.
    fn resume(&mut self, side: Side, plane: &mut Plane, shard: &mut Shard) {
        if self.buckets[index(side)].is_some_and(|b| b.until.is_some()) {
            return; // held back by the rate limit until its timer
        }
        let (Some(r), Some(o)) = (self.links[index(side)], self.links[index(side.other())]) else {
            if let Some(io) = self.links[index(side)].and_then(|r| plane.link_mut(r))
                && io.is_paused()
            {
                io.resume();
                self.read(side, plane, shard);
            }
            return;
        };
        let Some([io, out]) = plane.links_mut(r, o) else {
            return;
        };
        if io.is_paused() && out.link.pending_output() < LOW_WATER {
            io.resume();
            self.read(side, plane, shard);
        }
    }

    pub(super) fn on_timer(
        &mut self,
        me: EntityRef,
        now: Instant,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        self.armed = None;
        // Peers held back by the rate limit whose debt is paid read again.
        for side in [Side::Source, Side::Destination] {
            if let Some(b) = self.buckets[index(side)].as_mut()
                && b.until.is_some_and(|u| u <= now)
            {
                b.until = None;
                self.resume(side, plane, shard);
            }
        }
        // A peer the relay stopped reading (back-pressure, rate limit) is not idle: its silence
        // is ours.
        for side in [Side::Source, Side::Destination] {
            if let Some(io) = self.links[index(side)].and_then(|r| plane.link_mut(r))
                && io.is_paused()
            {
                self.session.peer_active(side, now);
            }
        }
        let actions = self.session.handle_timeout(now);
        self.apply(actions, None, plane, shard);
        self.finish(me, plane, shard)
    }

    fn control(
        &mut self,
        me: EntityRef,
        event: &Event,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        match event {
            Event::Closed { expired, .. } => {
                let why = if *expired {
                    Closing::Expired
                } else {
                    Closing::Closed
                };
                tracing::info!(relay = %self.relay.name, tunnel = %self.tunnel_id, expired, "tunnel closed: closing its peers");
                let actions = self.session.tunnel_closed(why);
                self.apply(actions, None, plane, shard);
                // The session is closed: nothing more can join it here.
                for side in [Side::Source, Side::Destination] {
                    if let Some(r) = self.links[index(side)].take() {
                        plane.release(r);
                        self.left(side, plane, shard);
                    }
                }
                self.end(plane);
                false
            }
            Event::Rotated { sides, .. } => {
                for side in [Side::Source, Side::Destination] {
                    let rotated = matches!(
                        (sides, side),
                        (RotateSides::Both, _)
                            | (RotateSides::Source, Side::Source)
                            | (RotateSides::Destination, Side::Destination)
                    );
                    if rotated && let Some(r) = self.links[index(side)].take() {
                        tracing::info!(relay = %self.relay.name, tunnel = %self.tunnel_id, side = side.as_str(), "token rotated: peer dropped");
                        plane.drop_link(shard, r);
                        self.left(side, plane, shard);
                    }
                }
                self.finish(me, plane, shard)
            }
            // For the standby channels, not a tunnel (see `event`).
            Event::Notify { .. } => true,
        }
    }

    pub(super) fn drain(&mut self, _me: EntityRef, plane: &mut Plane, _shard: &mut Shard) -> bool {
        for side in [Side::Source, Side::Destination] {
            if let Some(r) = self.links[index(side)].take() {
                if let Some(io) = plane.link_mut(r) {
                    // No close frame: the tunnel is not over, the relay is (for a restart
                    // or an upgrade); every agent, localproxy too, reconnects after a drop.
                    io.link.hang_up();
                }
                plane.release(r);
                self.relay.stats.peers[index(side)].fetch_sub(1, Relaxed);
                self.counters.peers[index(side)].fetch_sub(1, Relaxed);
                self.relay.peers.fetch_sub(1, Relaxed);
                let _ = self.relay.registry.gone(
                    &self.tunnel_id,
                    reg_side(side),
                    self.serials[index(side)],
                    Timestamp::now(),
                );
            }
        }
        self.end(plane);
        false
    }

    /// After each call: the metrics, the timer, and whether the tunnel stays.
    fn finish(&mut self, me: EntityRef, plane: &mut Plane, shard: &mut Shard) -> bool {
        let streams = self
            .session
            .services()
            .iter()
            .filter(|s| self.session.open_stream(s).is_some())
            .count() as i64
            + i64::from(
                self.session.services().is_empty() && self.session.open_stream("").is_some(),
            );
        if streams != self.streams {
            self.relay
                .stats
                .streams
                .fetch_add(streams - self.streams, Relaxed);
            self.counters
                .streams
                .fetch_add(streams - self.streams, Relaxed);
            self.streams = streams;
        }
        if self.links.iter().all(Option::is_none) {
            self.end(plane);
            return false;
        }
        if let Some(at) = self.session.poll_timeout()
            && self.armed.is_none_or(|a| a > at)
        {
            self.armed = Some(at);
            plane.arm(shard, me, at);
        }
        true
    }

    fn end(&mut self, plane: &mut Plane) {
        self.relay.stats.tunnels_open.fetch_sub(1, Relaxed);
        self.relay.stats.streams.fetch_sub(self.streams, Relaxed);
        self.counters.streams.fetch_sub(self.streams, Relaxed);
        self.streams = 0;
        // A tunnel closed while no session of it was here (or as this one began) keeps no
        // counters.
        if !self
            .relay
            .registry
            .describe(&self.tunnel_id, Timestamp::now())
            .is_ok_and(|t| t.is_open_at(Timestamp::now()))
        {
            self.relay.stats.per_tunnel.forget(&self.tunnel_id);
        }
        plane
            .tunnels
            .remove(&(self.relay.id, self.tunnel_id.clone()));
    }
}
