//! A destination agent in standby (`destination --thing NAME`, issue 12 §2): one channel to
//! the relay (`GET /notify?thing=NAME` over TLS with the device's client certificate, see
//! `splice_proto::tunnel::relay::notify`) on which the relay pushes each tunnel opened for the
//! thing; for each, a destination agent of that tunnel starts on this shard at once, with the
//! pushed token, a client token of its own (so that it may reconnect after a drop) and the
//! `--connect` services the tunnel names. A service of the tunnel that `--connect` lacks is
//! logged and left out. The tunnel's own agent ends when the relay closes the tunnel (a close
//! frame, or a 410 on a reconnect) and is not started again unless the relay pushes the tunnel
//! again (it does when this channel reconnects and the tunnel's destination is not
//! connected: then with a new token).
//!
//! The channel reconnects after a drop with the agents' policy ([`Reconnect`]: jittered
//! exponential backoff); a 4xx (the relay refused the certificate or the thing) ends the
//! agent unless `keep_trying`. It pings the relay after `ping_after` of silence and drops the
//! channel (and reconnects) after `idle_timeout`, as the tunnel connection does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use splice_proto::tunnel::agent::{Backoff, End, Jitter, Next, Reconnect};
use splice_proto::tunnel::link::{Event as LinkEvent, Link};
use splice_proto::tunnel::relay::notify::{ClientRequest, Notice};
use splice_proto::ws::{AccessToken, ClientToken, ResponseError, close_code};

use super::host::AgentStart;
use super::reactor::Sans;
use super::spec::AgentSpec;
use super::status::{AgentShared, AgentState};
use crate::resolve::Name;
use crate::shard::Shard;
use crate::shard::tunnel::link::LinkRef;
use crate::shard::tunnel::{Entity, EntityRef, Plane};

/// Time for the TCP connect, TLS handshake and upgrade together.
const LINK_DEADLINE: Duration = Duration::from_secs(10);

/// A standby agent on its way to a shard.
pub(crate) struct StandbyStart {
    /// The destination's settings (no token: each pushed tunnel brings its own).
    pub spec: Arc<AgentSpec>,
    pub thing: String,
    pub shared: Arc<AgentShared>,
}

/// A standby agent in a plane's entity slab.
pub(crate) struct StandbyAgent {
    spec: Arc<AgentSpec>,
    thing: String,
    shared: Arc<AgentShared>,
    /// The relay's addresses, looked up again after each failure, each failure moving on to
    /// the next.
    relay_name: Name,
    link: Option<LinkRef>,
    /// The relay's 101 arrived on `link`.
    standing: bool,
    reconnect: Reconnect,
    jitter: Jitter,
    /// When to connect again, after a failure.
    retry_at: Option<Instant>,
    /// When the attempt in progress must be up.
    deadline: Option<Instant>,
    heard: Instant,
    /// The destination agent started for each tunnel pushed.
    tunnels: HashMap<String, Arc<AgentShared>>,
    done: bool,
}

/// Starts a standby agent on this shard.
pub(crate) fn start(plane: &mut Plane, shard: &mut Shard, s: StandbyStart) {
    let mut seed = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut seed);
    let reconnect = Reconnect::new(Backoff::default(), s.spec.keep_trying);
    let relay_name = Name::new(&s.spec.host, s.spec.port, s.spec.relay_addrs.clone())
        .unresolved(s.spec.unresolved.clone());
    let e = plane.insert_entity(Entity::StandbyAgent(Box::new(StandbyAgent {
        relay_name,
        spec: s.spec,
        thing: s.thing,
        shared: s.shared,
        link: None,
        standing: false,
        reconnect,
        jitter: Jitter::new(u64::from_le_bytes(seed)),
        retry_at: None,
        deadline: None,
        heard: Instant::now(),
        tunnels: HashMap::new(),
        done: false,
    })));
    plane.run_entity(shard, e, |entity, plane, shard| match entity {
        Entity::StandbyAgent(a) => {
            a.connect(e, plane, shard);
            !a.done
        }
        _ => true,
    });
}

/// Stops the standby agent of `shared` if it is on this shard, and the destination agents it
/// started.
pub(crate) fn stop(plane: &mut Plane, shard: &mut Shard, shared: &Arc<AgentShared>) {
    let mine: Vec<EntityRef> = plane
        .entities
        .keys()
        .into_iter()
        .map(|(index, generation)| EntityRef { index, generation })
        .collect();
    for e in mine {
        plane.run_entity(shard, e, |entity, plane, shard| match entity {
            Entity::StandbyAgent(a) if Arc::ptr_eq(&a.shared, shared) => {
                a.finish(plane, shard, AgentState::Stopped);
                false
            }
            _ => true,
        });
    }
}

/// 32 random characters of `[a-zA-Z0-9]`: a client token for one tunnel's agent.
fn client_token() -> Option<ClientToken> {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut random = [0u8; 32];
    SystemRandom::new().fill(&mut random).ok()?;
    let text: String = random
        .iter()
        .map(|b| CHARS[usize::from(*b) % CHARS.len()] as char)
        .collect();
    ClientToken::new(text).ok()
}

impl StandbyAgent {
    fn connect(&mut self, me: EntityRef, plane: &mut Plane, shard: &mut Shard) {
        if self.done {
            return;
        }
        self.retry_at = None;
        let Some(relay) = self.relay_name.current() else {
            let why = self.relay_name.no_address();
            return self.failed(me, plane, shard, End::Dropped, &why);
        };
        let spec = &self.spec;
        let mut random = [0u8; 24];
        if SystemRandom::new().fill(&mut random).is_err() {
            return self.failed(me, plane, shard, End::Dropped, "no randomness");
        }
        let key: [u8; 16] = random[..16].try_into().expect("16 bytes");
        let seed = u64::from_le_bytes(random[16..].try_into().expect("8 bytes")) | 1;
        let tls = match rustls::client::UnbufferedClientConnection::new(
            spec.tls.clone(),
            spec.server_name.clone(),
        ) {
            Ok(t) => t,
            Err(e) => {
                let why = format!("cannot start a TLS session: {e}");
                return self.failed(me, plane, shard, End::Dropped, &why);
            }
        };
        let request = ClientRequest {
            host: &spec.host,
            thing: &self.thing,
            key,
            user_agent: concat!("splice-engine/", env!("CARGO_PKG_VERSION")),
        };
        let link = Link::standby_client(tls, &request, seed);
        match plane.dial(shard, relay, link, me) {
            Ok(r) => {
                self.link = Some(r);
                self.standing = false;
                let at = Instant::now() + LINK_DEADLINE;
                self.deadline = Some(at);
                plane.arm(shard, me, at);
            }
            Err(e) => self.failed(me, plane, shard, End::Dropped, &format!("socket: {e}")),
        }
    }

    /// The channel (or the attempt at one) ended: reconnect after the policy's delay, or give
    /// up.
    fn failed(&mut self, me: EntityRef, plane: &mut Plane, shard: &mut Shard, end: End, why: &str) {
        if let Some(r) = self.link.take() {
            plane.drop_link(shard, r);
        }
        let was_up = std::mem::take(&mut self.standing);
        self.deadline = None;
        if self.done {
            return;
        }
        self.relay_name.failed(None);
        self.relay_name.refresh();
        let jitter = self.jitter.sample();
        match self.reconnect.handle_end(end, jitter) {
            Next::Retry(delay) => {
                self.shared.reconnects.fetch_add(1, Relaxed);
                self.shared.set_state(AgentState::Reconnecting);
                tracing::warn!(agent = %self.spec.name, relay = %self.spec.relay, thing = %self.thing, error = %why, was_up, retry_in_ms = delay.as_millis() as u64, "standby channel lost; reconnecting");
                let at = Instant::now() + delay;
                self.retry_at = Some(at);
                plane.arm(shard, me, at);
            }
            Next::Stop => {
                let why = format!("standby gave up: {why}");
                tracing::error!(agent = %self.spec.name, relay = %self.spec.relay, thing = %self.thing, "{why}");
                self.finish(plane, shard, AgentState::Finished(why));
            }
        }
    }

    /// Ends the agent: the channel closes, the tunnels' agents stop.
    fn finish(&mut self, plane: &mut Plane, shard: &mut Shard, state: AgentState) {
        self.done = true;
        self.shared.set_state(state);
        if let Some(r) = self.link.take() {
            if let Some(io) = plane.link_mut(r) {
                io.link.close(close_code::GOING_AWAY, "");
            }
            plane.release(r);
        }
        for (_, shared) in self.tunnels.drain() {
            shared.set_state(AgentState::Stopped);
            super::host::stop(plane, shard, &shared);
        }
    }

    pub(crate) fn on_link(
        &mut self,
        me: EntityRef,
        r: LinkRef,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        if self.link != Some(r) {
            return !self.done;
        }
        let Some(io) = plane.link_mut(r) else {
            self.failed(me, plane, shard, End::Dropped, "the connection is gone");
            return !self.done;
        };
        if io.take_heard() {
            self.heard = Instant::now();
        }
        let mut notices = Vec::new();
        let mut end = None;
        while let Some(ev) = io.link.poll() {
            match ev {
                LinkEvent::Standing => {
                    self.standing = true;
                    self.deadline = None;
                    self.reconnect.handle_connected();
                    self.shared.tunnel_connects.fetch_add(1, Relaxed);
                    self.shared.set_state(AgentState::Connected);
                    tracing::info!(agent = %self.spec.name, relay = %self.spec.relay, thing = %self.thing, "standby: waiting for tunnels");
                }
                LinkEvent::Message(bytes) => match Notice::from_json(bytes) {
                    Ok(n) => notices.push(n),
                    Err(e) => {
                        tracing::warn!(agent = %self.spec.name, error = %e, "standby: a message that is no notice, ignored");
                    }
                },
                LinkEvent::Refused(e) => {
                    let end_as = match e {
                        ResponseError::Rejected { status, .. } => End::Status(status),
                        _ => End::Dropped,
                    };
                    end = Some((
                        end_as,
                        format!("the relay refused the standby channel: {e}"),
                    ));
                    break;
                }
                LinkEvent::Closed { code, reason } => {
                    end = Some((
                        End::from_close(code),
                        format!("the relay closed the standby channel ({code:?} {reason})"),
                    ));
                    break;
                }
                LinkEvent::Failed(e) => {
                    end = Some((End::Dropped, format!("WebSocket: {e}")));
                    break;
                }
                _ => {}
            }
        }
        let lost = io.lost().map(str::to_string);
        let over = io.link.is_done();
        for n in notices {
            self.tunnel(n, plane, shard);
        }
        if let Some((end, why)) = end {
            self.failed(me, plane, shard, end, &why);
        } else if let Some(why) = lost {
            self.failed(me, plane, shard, End::Dropped, &why);
        } else if over {
            self.failed(
                me,
                plane,
                shard,
                End::Dropped,
                "the relay ended the connection",
            );
        } else if self.standing {
            let at = Instant::now() + self.spec.ping_after;
            plane.arm(shard, me, at);
        }
        !self.done
    }

    /// Starts the destination agent of a pushed tunnel.
    fn tunnel(&mut self, n: Notice, plane: &mut Plane, shard: &mut Shard) {
        self.tunnels
            .retain(|_, s| !matches!(s.state(), AgentState::Finished(_) | AgentState::Stopped));
        if let Some(old) = self.tunnels.remove(&n.tunnel_id) {
            // Pushed again (with a new token): the old one is of no use any more.
            old.set_state(AgentState::Stopped);
            super::host::stop(plane, shard, &old);
        }
        let mut services = Vec::new();
        for s in &n.services {
            match self.spec.services.iter().find(|c| c.name == *s) {
                Some(c) => services.push(c.clone()),
                None => {
                    tracing::warn!(agent = %self.spec.name, thing = %self.thing, tunnel = %n.tunnel_id, service = %s, "the tunnel names a service this agent has no --connect for: left out");
                }
            }
        }
        if n.services.is_empty()
            && let [only] = &self.spec.services[..]
            && only.name.is_empty()
        {
            // A V1 tunnel (no services) and the bare form: its one service.
            services.push(only.clone());
        }
        if services.is_empty() {
            tracing::warn!(agent = %self.spec.name, thing = %self.thing, tunnel = %n.tunnel_id, "no service of the tunnel can be served: not connecting");
            return;
        }
        let Ok(token) = AccessToken::new(n.client_access_token) else {
            tracing::warn!(agent = %self.spec.name, tunnel = %n.tunnel_id, "a notice with a malformed token, ignored");
            return;
        };
        let spec = AgentSpec {
            name: format!("{}/{}", self.spec.name, n.tunnel_id),
            token: Some(token),
            client_token: client_token(),
            services,
            keep_trying: false,
            // The addresses the channel found, not those of the start.
            relay_addrs: self.relay_name.addrs(),
            unresolved: None,
            ..(*self.spec).clone()
        };
        let sans = match Sans::new(&spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(agent = %self.spec.name, tunnel = %n.tunnel_id, error = %e, "cannot serve the tunnel");
                return;
            }
        };
        let spec = Arc::new(spec);
        let shared = Arc::new(AgentShared::new(
            spec.name.clone(),
            "destination",
            &spec.service_names(),
        ));
        tracing::info!(agent = %self.spec.name, thing = %self.thing, tunnel = %n.tunnel_id, services = ?spec.service_names(), "tunnel pushed: connecting its destination");
        self.tunnels.insert(n.tunnel_id, shared.clone());
        self.shared.add_child(shared.clone());
        super::host::start(
            plane,
            shard,
            AgentStart {
                spec,
                shared,
                sans,
                listeners: Vec::new(),
            },
        );
    }

    pub(crate) fn on_timer(
        &mut self,
        me: EntityRef,
        now: Instant,
        plane: &mut Plane,
        shard: &mut Shard,
    ) -> bool {
        if self.done {
            return false;
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.connect(me, plane, shard);
            return !self.done;
        }
        if self.deadline.is_some_and(|at| at <= now) {
            self.failed(me, plane, shard, End::Dropped, "no 101 in time");
            return !self.done;
        }
        let Some(io) = self.link.and_then(|r| plane.link_mut(r)) else {
            return !self.done;
        };
        if !self.standing {
            return true;
        }
        if io.take_heard() {
            self.heard = now;
        }
        let silent = now.saturating_duration_since(self.heard);
        if silent >= self.spec.idle_timeout {
            let why = format!("the relay was silent for {} s", silent.as_secs());
            self.failed(me, plane, shard, End::Dropped, &why);
            return !self.done;
        }
        if silent >= self.spec.ping_after {
            io.link.send_ping();
        }
        let next = if silent >= self.spec.ping_after {
            (self.spec.idle_timeout - silent).min(self.spec.ping_after)
        } else {
            self.spec.ping_after - silent
        };
        plane.arm(shard, me, now + next.max(Duration::from_millis(10)));
        true
    }

    /// The engine drains: the channel goes (the tunnels' agents drain on their own).
    pub(crate) fn drain(&mut self, plane: &mut Plane, shard: &mut Shard) -> bool {
        self.done = true;
        self.shared.set_state(AgentState::Stopped);
        if let Some(r) = self.link.take() {
            if let Some(io) = plane.link_mut(r) {
                io.link.close(close_code::GOING_AWAY, "");
            }
            plane.release(r);
        }
        let _ = shard;
        false
    }
}
