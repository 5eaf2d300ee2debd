//! The agents on the shards: each agent is an [`Entity::Agent`] of one shard's tunnel plane.
//! Its ops carry the plane's agent tags (from [`TAG_AGENT_FIRST`]) with the agent's slot on
//! the shard in the token's index, so [`complete`] finds it; its timers are its own heap,
//! whose earliest entry arms the plane's timer for the entity.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use super::reactor::{Io, Reactor, Sans};
use super::spec::AgentSpec;
use super::status::{AgentShared, AgentState};
use crate::driver::Completion;
use crate::shard::Shard;
use crate::shard::tunnel::{Entity, EntityRef, Plane, TAG_AGENT_FIRST};

/// An agent on its way to a shard.
pub(crate) struct AgentStart {
    pub spec: Arc<AgentSpec>,
    pub shared: Arc<AgentShared>,
    pub sans: Sans,
    /// Source: the services' listeners, bound by the control thread.
    pub listeners: Vec<OwnedFd>,
}

/// An agent in a plane's entity slab.
pub(crate) struct AgentEntity {
    reactor: Reactor,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// When the plane's timer for this entity is armed for.
    armed: Option<Instant>,
    slot: usize,
    /// Its state and counters, by which [`stop`] finds it.
    shared: Arc<AgentShared>,
}

/// Starts an agent on this shard.
pub(crate) fn start(plane: &mut Plane, shard: &mut Shard, s: AgentStart) {
    let slot = match plane.agents.iter().position(Option::is_none) {
        Some(i) => i,
        None if plane.agents.len() < 256 => {
            plane.agents.push(None);
            plane.agents.len() - 1
        }
        None => {
            let why = "more than 256 agents on one shard".to_string();
            tracing::error!(agent = %s.spec.name, "{why}");
            s.shared.set_state(AgentState::Finished(why));
            return;
        }
    };
    let shared = s.shared.clone();
    let reactor = Reactor::new(s.spec, s.shared, s.sans, s.listeners, slot as u32);
    let e = plane.insert_entity(Entity::Agent(Box::new(AgentEntity {
        reactor,
        timers: BinaryHeap::new(),
        armed: None,
        slot,
        shared,
    })));
    plane.agents[slot] = Some(e);
    plane.run_entity(shard, e, |entity, plane, shard| match entity {
        Entity::Agent(a) => a.with_io(e, plane, shard, |r, io| r.start(io)),
        _ => true,
    });
}

/// Stops the agent of `shared` if it is on this shard: its sockets close, its state becomes
/// `Stopped`.
pub(crate) fn stop(plane: &mut Plane, shard: &mut Shard, shared: &Arc<AgentShared>) {
    for e in plane.agents.clone().into_iter().flatten() {
        plane.run_entity(shard, e, |entity, plane, shard| match entity {
            Entity::Agent(a) if Arc::ptr_eq(&a.shared, shared) => {
                a.with_io(e, plane, shard, |r, io| r.stop(io))
            }
            _ => true,
        });
    }
}

/// A completion of an agent's op (tag from [`TAG_AGENT_FIRST`]).
pub(crate) fn complete(
    plane: &mut Plane,
    shard: &mut Shard,
    tag: u8,
    index: u32,
    generation: u32,
    c: Completion,
) {
    let slot = (index >> 24) as usize;
    let Some(Some(e)) = plane.agents.get(slot).copied() else {
        return; // the agent is gone; dropping `c` frees its buffer and fd
    };
    let tag = tag - TAG_AGENT_FIRST;
    plane.run_entity(shard, e, |entity, plane, shard| match entity {
        Entity::Agent(a) => a.with_io(e, plane, shard, |r, io| {
            r.complete(io, tag, index & 0xff_ffff, generation, c)
        }),
        _ => true,
    });
}

impl AgentEntity {
    /// Runs `f` on the reactor with the shard's driver, then arms the plane's timer for the
    /// earliest of the agent's timers. Returns false when the agent is done.
    fn with_io(
        &mut self,
        me: EntityRef,
        plane: &mut Plane,
        shard: &mut Shard,
        f: impl FnOnce(&mut Reactor, &mut Io<'_>),
    ) -> bool {
        let mut armed = Vec::new();
        let mut io = Io {
            driver: &mut shard.driver,
            timers: &mut armed,
            now: Instant::now(),
        };
        f(&mut self.reactor, &mut io);
        let finished = self.reactor.is_finished(&mut io);
        for t in armed {
            self.timers.push(Reverse(t));
        }
        if finished {
            plane.agents[self.slot] = None;
            return false;
        }
        if let Some(Reverse((at, _))) = self.timers.peek().copied()
            && self.armed.is_none_or(|armed| at < armed)
        {
            self.armed = Some(at);
            plane.arm(shard, me, at);
        }
        true
    }

    /// The plane's timer for this entity fired: runs the agent's due timers.
    pub(crate) fn on_timer(
        &mut self,
        me: EntityRef,
        now: Instant,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        if self.armed.is_some_and(|at| at <= now) {
            self.armed = None;
        }
        let mut due = Vec::new();
        while let Some(Reverse((at, tok))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push(tok);
        }
        self.with_io(me, plane, shard, |r, io| {
            for tok in due {
                r.timer(io, tok);
            }
        })
    }

    /// The engine drains: the agent takes no new local connection and stops once the open
    /// ones ended.
    pub(crate) fn drain(&mut self, me: EntityRef, plane: &mut Plane, shard: &mut Shard) -> bool {
        self.with_io(me, plane, shard, |r, io| r.drain(io))
    }

    /// Links are the relay's: an agent owns none.
    pub(crate) fn on_link(&mut self) -> bool {
        true
    }
}
