//! The tunnel's data plane on the shards: the relay's peers and the agents' links, beside the
//! forwarders' connections.
//!
//! Each shard owns a [`Plane`]: a slab of links ([`link::LinkIo`]: a socket carrying TLS and
//! WebSocket, driven by the shard's driver ops) and a slab of entities ([`Entity`]: what owns
//! links and decides what their messages mean — a relay peer still in its upgrade, a paired
//! tunnel, and the agents' entities). Link ops carry tokens with their own tags
//! ([`TAG_LINK_RECV`]...), timers the tag [`TIMER_TUNNEL`], so [`crate::shard`]'s
//! `complete` and timer heap route them here. Commands from the control thread and other
//! shards come as [`crate::shard::Command::Tunnel`] with a [`Cmd`].
//!
//! The protocol is sans-IO in `splice_proto` (`tunnel::link` for TLS + upgrade + WebSocket,
//! `tunnel::relay::Session` for a tunnel's rules); this module is the I/O glue. How an entity
//! uses a link is in [`link`]'s documentation.

pub(crate) mod agent;
pub(crate) mod exposition;
pub(crate) mod link;
pub(crate) mod metrics;
pub(crate) mod relay;
pub(crate) mod relay_state;
mod slab;
pub(crate) mod standby;
pub(crate) mod start;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use splice_proto::tunnel::link::Link;

use crate::driver::{Completion, Op};
use crate::shard::{Shard, token};
use link::{LinkIo, LinkRef};
use slab::Slab;

/// Op tags of links (token: tag, link index, link generation).
pub(crate) const TAG_LINK_RECV: u8 = 64;
pub(crate) const TAG_LINK_SEND: u8 = 65;
pub(crate) const TAG_LINK_CONNECT: u8 = 66;
/// A relay listener's accept (token: tag, relay id, 0).
pub(crate) const TAG_RELAY_ACCEPT: u8 = 67;
/// A link waits for readability before it receives (it is idle).
pub(crate) const TAG_LINK_POLL: u8 = 68;
/// The first tag the plane owns: the shard sends every tag from here on to the plane.
pub(crate) const TAG_FIRST: u8 = 64;
/// Free for the agents' own ops (local sockets, listeners): 80 to 127.
pub(crate) const TAG_AGENT_FIRST: u8 = 80;
/// An entity's timer, in the shard's timer heap (token: tag, entity index, generation).
pub(crate) const TIMER_TUNNEL: u8 = 64;
/// A released link's linger time is up (token: tag, link index, generation).
pub(crate) const TIMER_LINK: u8 = 65;
/// A relay listener's pause (out of file descriptors) is over (token: tag, relay id, 0).
pub(crate) const TIMER_RELAY_ACCEPT: u8 = 66;

/// An entity's place in the plane's slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EntityRef {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// What owns links. The agents add their variants here.
pub(crate) enum Entity {
    /// A relay peer in its TLS handshake and upgrade.
    Pending(relay::Pending),
    /// A tunnel's session and its peers.
    Tunnel(Box<relay::TunnelPeers>),
    /// A source or destination agent.
    Agent(Box<agent::host::AgentEntity>),
    /// A standby agent's channel to the relay (`GET /notify`).
    Standby(Box<standby::StandbyPeer>),
    /// A destination agent in standby for a thing (it starts an `Agent` per pushed tunnel).
    StandbyAgent(Box<agent::standby::StandbyAgent>),
}

impl Entity {
    /// Something happened on `link`, which it owns. Returns false when the entity is done
    /// (it has released its links).
    fn on_link(
        &mut self,
        me: EntityRef,
        link: LinkRef,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        match self {
            Entity::Pending(p) => p.on_link(me, link, plane, shard),
            Entity::Tunnel(t) => t.on_link(me, link, plane, shard),
            Entity::Agent(a) => a.on_link(),
            Entity::Standby(s) => s.on_link(me, link, plane, shard),
            Entity::StandbyAgent(a) => a.on_link(me, link, plane, shard),
        }
    }

    /// Its timer fired.
    fn on_timer(
        &mut self,
        me: EntityRef,
        now: Instant,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        match self {
            Entity::Pending(p) => p.on_timer(me, now, plane, shard),
            Entity::Tunnel(t) => t.on_timer(me, now, plane, shard),
            Entity::Agent(a) => a.on_timer(me, now, plane, shard),
            Entity::Standby(s) => s.on_timer(me, now, plane, shard),
            Entity::StandbyAgent(a) => a.on_timer(me, now, plane, shard),
        }
    }

    /// The engine drains: end gracefully. Returns false when the entity is done.
    fn drain(&mut self, me: EntityRef, plane: &mut Plane, shard: &mut Shard) -> bool {
        match self {
            Entity::Pending(p) => p.drain(plane),
            Entity::Tunnel(t) => t.drain(me, plane, shard),
            Entity::Agent(a) => a.drain(me, plane, shard),
            Entity::Standby(s) => s.drain(me, plane),
            Entity::StandbyAgent(a) => a.drain(plane, shard),
        }
    }
}

/// Commands for a shard's plane.
pub(crate) enum Cmd {
    /// Accept relay peers on this (per-shard, SO_REUSEPORT) listener.
    AddRelay {
        fd: OwnedFd,
        relay: std::sync::Arc<relay_state::Relay>,
    },
    /// An admitted relay peer, moved here because its tunnel lives on this shard.
    Peer(Box<relay::Arrival>),
    /// Start a source or destination agent here.
    StartAgent(Box<agent::host::AgentStart>),
    /// Start a standby agent (`destination --thing`) here.
    StartStandby(Box<agent::standby::StandbyStart>),
    /// Relay `id` is gone (a reload removed or changed it): close its listener here and its
    /// tunnels' peers (hung up without a close frame: they reconnect).
    RemoveRelay(u32),
    /// Stop this agent if it is here (a reload removed or changed it).
    StopAgent(std::sync::Arc<agent::AgentShared>),
    /// A relay's control side says a tunnel closed or its tokens were rotated.
    Event {
        relay: u32,
        event: relay_state::Event,
    },
    /// The registry's write that an admitted peer (this entity) waits for is on disk (or
    /// failed): answer its upgrade.
    Durable(EntityRef),
}

/// A shard's tunnel plane: see the [module documentation](self).
#[derive(Default)]
pub(crate) struct Plane {
    links: Slab<LinkIo>,
    entities: Slab<Entity>,
    /// Links touched since the last kick (their ops may need submitting).
    dirty: Vec<LinkRef>,
    /// Relay listeners by relay id.
    relays: HashMap<u32, (crate::driver::Fd, std::sync::Arc<relay_state::Relay>)>,
    /// The paired tunnels here, by relay id and tunnel id.
    tunnels: HashMap<(u32, String), EntityRef>,
    draining: bool,
    /// The agents on this shard, by the slot their ops' tokens carry.
    agents: Vec<Option<EntityRef>>,
    /// The standby channels here, by relay id and thing.
    standby: HashMap<(u32, String), Vec<EntityRef>>,
}

impl Plane {
    /// Whether nothing but listeners is left (a draining shard may exit).
    pub(crate) fn is_idle(&self) -> bool {
        self.links.is_empty() && self.entities.is_empty()
    }

    /// Adds an entity.
    pub(crate) fn insert_entity(&mut self, e: Entity) -> EntityRef {
        let (index, generation) = self.entities.insert(e);
        EntityRef { index, generation }
    }

    /// A link on an accepted (or otherwise connected) socket, owned by `owner`.
    pub(crate) fn adopt_link(
        &mut self,
        fd: OwnedFd,
        link: Link,
        owner: Option<EntityRef>,
    ) -> LinkRef {
        let (index, generation) = self.links.insert(LinkIo::new(fd, link, owner));
        let r = LinkRef { index, generation };
        self.dirty.push(r);
        r
    }

    /// Dials `addr` for a client-role `link` owned by `owner`.
    #[allow(dead_code, reason = "for the agents' entities")]
    pub(crate) fn dial(
        &mut self,
        shard: &mut Shard,
        addr: SocketAddr,
        link: Link,
        owner: EntityRef,
    ) -> std::io::Result<LinkRef> {
        let sock = crate::sys::socket::tcp_stream(&addr.into())?;
        let (index, generation) = self.links.insert(LinkIo::new(sock, link, Some(owner)));
        let r = LinkRef { index, generation };
        let io = self.links.get_mut(index, generation).expect("just added");
        io.set_connecting();
        shard.driver.submit(
            token(TAG_LINK_CONNECT, index, generation),
            Op::Connect {
                fd: io.fd.clone(),
                addr: Box::new(addr.into()),
            },
        );
        Ok(r)
    }

    /// The link `r`, if it is still there; marks it for a kick.
    pub(crate) fn link_mut(&mut self, r: LinkRef) -> Option<&mut LinkIo> {
        let io = self.links.get_mut(r.index, r.generation)?;
        self.dirty.push(r);
        Some(io)
    }

    /// Two different links at once.
    pub(crate) fn links_mut(&mut self, a: LinkRef, b: LinkRef) -> Option<[&mut LinkIo; 2]> {
        self.dirty.push(a);
        self.dirty.push(b);
        self.links
            .get2_mut((a.index, a.generation), (b.index, b.generation))
    }

    /// Submits what link `r` needs now. A released link that has written everything shuts
    /// its side down and lingers: it reads (and drops) until the peer's end or [`link::LINGER`],
    /// so that the peer reads our last words instead of a reset.
    pub(crate) fn kick(&mut self, shard: &mut Shard, r: LinkRef) {
        let Some(io) = self.links.get_mut(r.index, r.generation) else {
            return;
        };
        if io.owner.is_none() && io.finished() {
            if io.closable() {
                self.drop_link(shard, r);
                return;
            }
            if io.start_lingering() {
                shard.timers.push(Reverse((
                    Instant::now() + link::LINGER,
                    token(TIMER_LINK, r.index, r.generation),
                )));
            }
        }
        io.submit(r, &mut shard.driver);
    }

    fn kick_dirty(&mut self, shard: &mut Shard) {
        while let Some(r) = self.dirty.pop() {
            self.kick(shard, r);
        }
    }

    /// The owner lets go of `r`: the plane writes what it has queued (a close frame, an error
    /// response) and closes it.
    pub(crate) fn release(&mut self, r: LinkRef) {
        if let Some(io) = self.links.get_mut(r.index, r.generation) {
            io.owner = None;
            self.dirty.push(r);
        }
    }

    /// Closes `r` at once (its ops are cancelled; their completions are dropped).
    pub(crate) fn drop_link(&mut self, shard: &mut Shard, r: LinkRef) {
        if let Some(io) = self.links.remove(r.index, r.generation) {
            io.cancel(&mut shard.driver);
        }
    }

    /// Takes `r` out of the plane with its socket, to move it to another shard: only when
    /// no op is in flight (else it stays and `None` comes back).
    pub(crate) fn take_link(&mut self, shard: &mut Shard, r: LinkRef) -> Option<(OwnedFd, Link)> {
        let idle = self.links.get_mut(r.index, r.generation)?.is_idle();
        if !idle {
            return None;
        }
        let io = self.links.remove(r.index, r.generation)?;
        // Forget the fd in this driver (epoll's registration) before another shard owns it.
        io.cancel(&mut shard.driver);
        io.into_parts()
    }

    /// Arms the timer of entity `e` for `at` (a stale one just finds nothing to do).
    pub(crate) fn arm(&mut self, shard: &mut Shard, e: EntityRef, at: Instant) {
        shard
            .timers
            .push(Reverse((at, token(TIMER_TUNNEL, e.index, e.generation))));
    }

    fn run_entity(
        &mut self,
        shard: &mut Shard,
        e: EntityRef,
        f: impl FnOnce(&mut Entity, &mut Plane, &mut Shard) -> bool,
    ) {
        let Some(mut entity) = self.entities.take(e.index, e.generation) else {
            return;
        };
        if f(&mut entity, self, shard) {
            self.entities.put_back(e.index, entity);
        } else {
            self.entities.free(e.index);
        }
        self.kick_dirty(shard);
    }

    fn complete(&mut self, shard: &mut Shard, tag: u8, index: u32, generation: u32, c: Completion) {
        if tag >= TAG_AGENT_FIRST {
            agent::host::complete(self, shard, tag, index, generation, c);
            self.kick_dirty(shard);
            return;
        }
        if tag == TAG_RELAY_ACCEPT {
            relay::accepted(self, shard, index, c);
            self.kick_dirty(shard);
            return;
        }
        let r = LinkRef { index, generation };
        let Some(io) = self.links.get_mut(index, generation) else {
            return; // the link is gone; dropping `c` frees its buffer and fd
        };
        if !io.complete(tag, c) {
            self.kick(shard, r);
            return;
        }
        let mut owner = io.owner;
        if let Some(e) = owner
            && self.entities.get_mut(e.index, e.generation).is_none()
        {
            // Its owner is gone without letting go of it (a bug, or a failure on the way):
            // the plane closes it rather than keep it forever.
            io.owner = None;
            owner = None;
        }
        match owner {
            Some(owner) => {
                self.run_entity(shard, owner, |entity, plane, shard| {
                    entity.on_link(owner, r, plane, shard)
                });
                self.kick(shard, r);
            }
            None => {
                // Released: drain what it still receives (a close frame's answer), then go.
                if let Some(io) = self.links.get_mut(index, generation) {
                    while io.link.poll().is_some() {}
                }
                self.kick(shard, r);
            }
        }
    }

    fn timer(&mut self, shard: &mut Shard, tag: u8, index: u32, generation: u32, now: Instant) {
        if tag == TIMER_RELAY_ACCEPT {
            relay::resume_accept(self, shard, index);
            return;
        }
        if tag == TIMER_LINK {
            let r = LinkRef { index, generation };
            if self
                .links
                .get_mut(index, generation)
                .is_some_and(|io| io.is_lingering())
            {
                self.drop_link(shard, r);
            }
            return;
        }
        let e = EntityRef { index, generation };
        self.run_entity(shard, e, |entity, plane, shard| {
            entity.on_timer(e, now, plane, shard)
        });
    }

    fn command(&mut self, shard: &mut Shard, cmd: Cmd) {
        match cmd {
            Cmd::AddRelay { fd, relay } => {
                let fd = std::rc::Rc::new(fd);
                shard.driver.submit(
                    token(TAG_RELAY_ACCEPT, relay.id, 0),
                    Op::Accept { fd: fd.clone() },
                );
                self.relays.insert(relay.id, (fd, relay));
            }
            Cmd::Peer(arrival) => relay::arrived(self, shard, *arrival),
            Cmd::Event { relay, event } => relay::event(self, shard, relay, event),
            Cmd::Durable(e) => self.run_entity(shard, e, |entity, plane, shard| match entity {
                Entity::Pending(p) => p.on_durable(plane, shard),
                _ => true,
            }),
            Cmd::StartAgent(start) => agent::host::start(self, shard, *start),
            Cmd::StartStandby(start) => agent::standby::start(self, shard, *start),
            Cmd::StopAgent(shared) => {
                agent::host::stop(self, shard, &shared);
                agent::standby::stop(self, shard, &shared);
            }
            Cmd::RemoveRelay(id) => {
                if let Some((fd, _)) = self.relays.remove(&id) {
                    shard.driver.cancel(fd.as_raw_fd());
                }
                let gone: Vec<EntityRef> = (self.tunnels.iter())
                    .filter(|((relay, _), _)| *relay == id)
                    .map(|(_, e)| *e)
                    .chain(standby::of_relay(&self.standby, id))
                    .collect();
                for e in gone {
                    self.run_entity(shard, e, |entity, plane, shard| {
                        entity.drain(e, plane, shard)
                    });
                }
            }
        }
        self.kick_dirty(shard);
    }

    fn drain(&mut self, shard: &mut Shard) {
        self.draining = true;
        for (_, (fd, _)) in self.relays.drain() {
            shard.driver.cancel(fd.as_raw_fd());
        }
        for (index, generation) in self.entities.keys() {
            let e = EntityRef { index, generation };
            self.run_entity(shard, e, |entity, plane, shard| {
                entity.drain(e, plane, shard)
            });
        }
    }
}

/// Runs `f` on the shard's plane, taken out of the shard for the time (the plane's code needs
/// both). Only the box moves: no plane is built or dropped per completion.
fn with_plane(shard: &mut Shard, f: impl FnOnce(&mut Plane, &mut Shard)) {
    let mut plane = (shard.plane.take()).expect("the plane's hooks do not nest");
    f(&mut plane, shard);
    shard.plane = Some(plane);
}

/// The shard hook: a completion whose tag is the plane's.
pub(crate) fn complete(shard: &mut Shard, tag: u8, index: u32, generation: u32, c: Completion) {
    with_plane(shard, |plane, shard| {
        plane.complete(shard, tag, index, generation, c)
    });
}

/// The shard hook: a timer of the plane's (an entity's, or a lingering link's).
pub(crate) fn timer(shard: &mut Shard, tag: u8, index: u32, generation: u32, now: Instant) {
    with_plane(shard, |plane, shard| {
        plane.timer(shard, tag, index, generation, now)
    });
}

/// The shard hook: a [`Cmd`].
pub(crate) fn command(shard: &mut Shard, cmd: Cmd) {
    with_plane(shard, |plane, shard| plane.command(shard, cmd));
}

/// The shard hook: the engine drains (listeners stop, peers are hung up without a close frame).
pub(crate) fn drain(shard: &mut Shard) {
    with_plane(shard, |plane, shard| plane.drain(shard));
}
