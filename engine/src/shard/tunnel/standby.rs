//! The relay's standby channels (issue 12 §2, docs/relay.md "Fleets"): a destination agent in
//! standby holds one `GET /notify?thing=NAME` WebSocket on the agent port, and the relay
//! pushes it a [`Notice`] for each tunnel of that thing: when the tunnel is opened (the
//! control side's [`Event::Notify`], sent to every shard), and when the channel comes up, for
//! each still-open tunnel of the thing whose destination is not connected (its destination
//! token is rotated then: the registry keeps hashes only, so a token to push must be new).
//!
//! A channel stays on the shard that accepted it (no hand-off: it carries a few notices, not
//! a tunnel's bytes), in [`Plane`]'s map by relay and thing. It costs its link (no buffer when
//! idle, see `splice_proto::tunnel::link`) and this struct. The relay pings it after the
//! relay's `ping_after` of silence and drops it after `idle_timeout`, as it does tunnel peers;
//! a message from the agent is a rule break (the channel is one-way).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use splice_proto::tunnel::link::Event as LinkEvent;
use splice_proto::tunnel::relay::notify::{Notice, StandbyRequest, may_speak_for};
use splice_proto::ws::close_code;

use super::link::LinkRef;
use super::relay_state::{Event, Relay};
use super::{Entity, EntityRef, Plane};
use crate::relay::identity::CaRole;
use crate::relay::registry::RotateSides;
use crate::relay::tunnel::{Side, Timestamp};
use crate::shard::Shard;

/// One standby channel.
pub(crate) struct StandbyPeer {
    relay: Arc<Relay>,
    thing: String,
    link: Option<LinkRef>,
    /// When the agent was last heard from.
    heard: Instant,
    /// When the entity's timer is armed for.
    armed: Option<Instant>,
}

/// Accepts `req` on link `r` (the identity check is the caller's): the 101, the channel's
/// entity, and a notice for every still-open tunnel of the thing whose destination is not
/// connected. The channel holds the peer's count in `Relay::peers` from now on; false (and
/// nothing done) when the link is gone.
pub(super) fn accept(
    plane: &mut Plane,
    shard: &mut Shard,
    relay: Arc<Relay>,
    r: LinkRef,
    req: StandbyRequest,
    peer: Option<std::net::SocketAddr>,
) -> bool {
    if plane.link_mut(r).is_none() {
        return false;
    }
    let now = Instant::now();
    let thing = req.thing.clone();
    let at = now + relay.limits.ping_after;
    let e = plane.insert_entity(Entity::Standby(Box::new(StandbyPeer {
        relay: relay.clone(),
        thing: thing.clone(),
        link: Some(r),
        heard: now,
        armed: Some(at),
    })));
    let pending = waiting_tunnels(&relay, &thing);
    let io = plane.link_mut(r).expect("checked above");
    io.owner = Some(e);
    io.link.accept(&req.accept_response());
    for notice in &pending {
        io.link.send_message(&notice.to_json());
    }
    relay.stats.standby.fetch_add(1, Relaxed);
    relay
        .stats
        .standby_notices
        .fetch_add(pending.len() as u64, Relaxed);
    plane
        .standby
        .entry((relay.id, thing.clone()))
        .or_default()
        .push(e);
    tracing::info!(relay = %relay.name, thing = %thing, ?peer, pushed = pending.len(), "standby agent connected");
    for n in &pending {
        tracing::info!(relay = %relay.name, thing = %thing, tunnel = %n.tunnel_id, "tunnel pushed to a standby agent");
    }
    plane.arm(shard, e, at);
    true
}

/// The still-open tunnels of `thing` whose destination is not connected, each with a new
/// destination token.
fn waiting_tunnels(relay: &Relay, thing: &str) -> Vec<Notice> {
    let now = Timestamp::now();
    let tunnels = match relay.registry.of_thing(thing) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(relay = %relay.name, thing, error = %e, "cannot list the thing's tunnels");
            return Vec::new();
        }
    };
    tunnels
        .into_iter()
        .filter(|t| t.is_open_at(now) && !t.peer(Side::Destination).connected)
        .filter_map(|t| {
            // Not waiting for the disk here: this is the shard's thread.
            let (rotated, _on_disk) = relay
                .registry
                .rotate_behind(&t.id, RotateSides::Destination, None, now)
                .ok()?;
            Some(Notice {
                client_access_token: rotated.destination_token?.expose().to_string(),
                tunnel_id: t.id,
                client_mode: "destination".into(),
                region: relay.name.clone(),
                services: t.services,
            })
        })
        .collect()
}

/// The control side's [`Event::Notify`]: the notice goes to this shard's channels of the thing.
pub(super) fn notify(
    plane: &mut Plane,
    shard: &mut Shard,
    relay: u32,
    thing: &str,
    notice: &Notice,
) {
    let Some(list) = plane.standby.get(&(relay, thing.to_string())).cloned() else {
        return;
    };
    for e in list {
        plane.run_entity(shard, e, |entity, plane, _| {
            if let Entity::Standby(s) = entity {
                s.push(notice, plane);
            }
            true
        });
    }
}

impl StandbyPeer {
    fn push(&mut self, notice: &Notice, plane: &mut Plane) {
        let Some(io) = self.link.and_then(|r| plane.link_mut(r)) else {
            return;
        };
        let notice = Notice {
            region: self.relay.name.clone(),
            ..notice.clone()
        };
        io.link.send_message(&notice.to_json());
        self.relay.stats.standby_notices.fetch_add(1, Relaxed);
        tracing::info!(relay = %self.relay.name, thing = %self.thing, tunnel = %notice.tunnel_id, "tunnel pushed to a standby agent");
    }

    pub(super) fn on_link(
        &mut self,
        me: EntityRef,
        r: LinkRef,
        plane: &mut Plane,
        _shard: &mut Shard,
    ) -> bool {
        let Some(io) = plane.link_mut(r) else {
            return self.gone(me, plane);
        };
        if io.take_heard() {
            self.heard = Instant::now();
        }
        if io.is_lost() {
            return self.gone(me, plane);
        }
        let mut rule_break = false;
        while let Some(ev) = io.link.poll() {
            if let LinkEvent::Message(_) = ev {
                rule_break = true;
                break;
            }
        }
        if rule_break {
            self.relay.stats.rule_breaks.fetch_add(1, Relaxed);
            tracing::warn!(relay = %self.relay.name, thing = %self.thing, "standby agent sent a message: closed");
            io.link.close(
                close_code::POLICY_VIOLATION,
                "the standby channel takes no messages",
            );
            return self.gone(me, plane);
        }
        if io.link.is_done() {
            return self.gone(me, plane);
        }
        true
    }

    pub(super) fn on_timer(
        &mut self,
        me: EntityRef,
        now: Instant,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        if self.armed.is_some_and(|a| a > now) {
            return true;
        }
        self.armed = None;
        let Some(io) = self.link.and_then(|r| plane.link_mut(r)) else {
            return self.gone(me, plane);
        };
        if io.take_heard() {
            self.heard = now;
        }
        let limits = &self.relay.limits;
        let silent = now.saturating_duration_since(self.heard);
        if silent >= limits.idle_timeout {
            tracing::info!(relay = %self.relay.name, thing = %self.thing, silent_s = silent.as_secs(), "standby agent silent: dropped");
            io.link.hang_up();
            return self.gone(me, plane);
        }
        let next = if silent >= limits.ping_after {
            io.link.send_ping();
            (limits.idle_timeout - silent).min(limits.ping_after)
        } else {
            limits.ping_after - silent
        };
        let at = now + next.max(std::time::Duration::from_millis(10));
        self.armed = Some(at);
        plane.arm(shard, me, at);
        true
    }

    /// The engine drains: the channel is hung up (no close frame: the agent reconnects to the
    /// relay's next run).
    pub(super) fn drain(&mut self, me: EntityRef, plane: &mut Plane) -> bool {
        if let Some(io) = self.link.and_then(|r| plane.link_mut(r)) {
            io.link.hang_up();
        }
        self.gone(me, plane)
    }

    /// Lets go of the link and leaves the map and the counts.
    fn gone(&mut self, me: EntityRef, plane: &mut Plane) -> bool {
        let Some(r) = self.link.take() else {
            return false;
        };
        plane.release(r);
        self.relay.stats.standby.fetch_sub(1, Relaxed);
        self.relay.peers.fetch_sub(1, Relaxed);
        let key = (self.relay.id, std::mem::take(&mut self.thing));
        if let Some(list) = plane.standby.get_mut(&key) {
            list.retain(|e| *e != me);
            if list.is_empty() {
                plane.standby.remove(&key);
            }
        }
        tracing::debug!(relay = %self.relay.name, thing = %key.1, "standby agent gone");
        false
    }
}

/// Whether `event` is for the standby channels (handled here, not by a tunnel).
pub(super) fn handle_event(
    plane: &mut Plane,
    shard: &mut Shard,
    relay: u32,
    event: &Event,
) -> bool {
    match event {
        Event::Notify { thing, notice } => {
            notify(plane, shard, relay, thing, notice);
            true
        }
        _ => false,
    }
}

/// The standby channels of relay `id` (a reload removes it).
pub(super) fn of_relay(
    map: &std::collections::HashMap<(u32, String), Vec<EntityRef>>,
    id: u32,
) -> Vec<EntityRef> {
    map.iter()
        .filter(|((relay, _), _)| *relay == id)
        .flat_map(|(_, list)| list.iter().copied())
        .collect()
}

/// Why the peer on `io` may not wait for `req`'s thing, as the status and reason of the
/// refusal (`None`: it may). It must present a client certificate that the relay's device CA
/// verified, whose subject CN is the thing name or which has the URI SAN
/// `urn:splice:thing:<thing>` (docs/relay.md "Fleets").
pub(super) fn refusal(
    relay: &Relay,
    io: &mut super::link::LinkIo,
    req: &StandbyRequest,
) -> Option<(u16, String)> {
    let Some(ids) = relay.identities.as_ref() else {
        return Some((
            403,
            "this relay takes no standby agents (no device CA)".into(),
        ));
    };
    let Some(identity) = io
        .link
        .take_peer_certificates()
        .and_then(|chain| ids.identify(&chain))
    else {
        return Some((403, "a standby agent needs a device certificate".into()));
    };
    if !identity.verified_as(CaRole::Device) {
        return Some((
            403,
            "the certificate is not from the relay's device CA".into(),
        ));
    }
    if !may_speak_for(
        &req.thing,
        identity.common_name.as_deref(),
        identity.uri_sans.iter().map(String::as_str),
    ) {
        return Some((
            403,
            format!("the certificate does not name thing {:?}", req.thing),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay holds a standby channel per device of its fleet: what it costs beside its link
    /// (whose own budget is `link::tests`) stays small. Raise the budget only knowingly.
    #[test]
    fn a_standby_channel_costs_little() {
        let size = std::mem::size_of::<StandbyPeer>();
        assert!(size <= 96, "StandbyPeer is {size} bytes");
    }
}
