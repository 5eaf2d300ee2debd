//! The tunnel registry: opens, lists, describes, rotates, closes and expires tunnels, and
//! decides whether a peer that presents an access token may connect ([`Registry::admit`]).
//! It reads no clock (every call takes `now`) and keeps its records in a [`TunnelStore`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use super::secret::{RandomError, Secret, TokenHash, new_token, new_tunnel_id};
use super::store::{Durable, ListPosition, StoreError, TunnelStore};
use super::tunnel::{Pairing, Peer, Side, Timestamp, Tunnel, TunnelStatus};

/// What an operator may change; the defaults are AWS IoT Secure Tunneling's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The lifetime in seconds of a tunnel opened without `timeoutConfig` (AWS: 720
    /// minutes, 12 h).
    pub(crate) default_lifetime_seconds: u32,
    /// The longest lifetime accepted, in seconds (AWS: 720 minutes).
    pub(crate) max_lifetime_seconds: u32,
    /// Services per tunnel (AWS's default quota: 3).
    pub(crate) max_services: usize,
    /// How long a closed tunnel stays listed (and describable) before the registry forgets
    /// it, in seconds (AWS: "at least three hours").
    pub(crate) keep_closed_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_lifetime_seconds: 720 * 60,
            max_lifetime_seconds: 720 * 60,
            max_services: 3,
            keep_closed_seconds: 3 * 3600,
        }
    }
}

/// `OpenTunnel`'s input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpenRequest {
    pub(crate) description: Option<String>,
    pub(crate) thing_name: Option<String>,
    pub(crate) services: Vec<String>,
    /// In seconds; `None`: [`Limits::default_lifetime_seconds`].
    pub(crate) lifetime_seconds: Option<u32>,
    /// How its peers will be paired (the API opens `Token` and `Thing` tunnels; the relay
    /// makes `Certificate` ones itself).
    pub(crate) pairing: Pairing,
}

/// A new tunnel's id and its two access tokens, shown this once.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) tunnel_id: String,
    pub(crate) source_token: Secret,
    pub(crate) destination_token: Secret,
}

/// Which tokens a rotation replaces (AWS's `clientMode`: `SOURCE`, `DESTINATION`, `ALL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RotateSides {
    Source,
    Destination,
    Both,
}

impl RotateSides {
    fn includes(self, side: Side) -> bool {
        matches!(
            (self, side),
            (RotateSides::Both, _)
                | (RotateSides::Source, Side::Source)
                | (RotateSides::Destination, Side::Destination)
        )
    }
}

/// The new tokens of a rotation, shown this once.
#[derive(Debug, Default)]
pub(crate) struct Rotated {
    pub(crate) source_token: Option<Secret>,
    pub(crate) destination_token: Option<Secret>,
}

/// A failed registry call, by what the caller did wrong (or not).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The request itself is wrong (a field out of range, a bad name): HTTP 400.
    #[error("{0}")]
    Invalid(String),
    /// No tunnel has this id: HTTP 404.
    #[error("no tunnel has the id {0:?}")]
    NotFound(String),
    /// The call needs an open tunnel: HTTP 409.
    #[error("tunnel {0} is closed")]
    Closed(String),
    /// The store failed: HTTP 503.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness for a token: HTTP 503.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// A peer admitted to a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Admission {
    pub(crate) tunnel_id: String,
    pub(crate) side: Side,
    /// What `SERVICE_IDS` carries.
    pub(crate) services: Vec<String>,
    /// The token had been used before (a reconnect with its client token): a peer on this
    /// side, if still there, is being replaced, and the other peer gets `STREAM_RESET`s.
    pub(crate) reconnect: bool,
    /// When the tunnel's lifetime ends (the relay closes both peers then).
    pub(crate) expires_at: Timestamp,
    /// How the tunnel is paired (for its metrics' labels).
    pub(crate) pairing: Pairing,
    /// This admission among all of the registry's (see [`Registry::abandoned`]).
    pub(crate) serial: u64,
    /// Done once the token's use is on disk: the relay answers the upgrade (101) only then,
    /// so that a single-use token is never taken twice, even by a relay that dies right
    /// after admitting. Done at once on a store that writes as it is called.
    pub(crate) durable: Durable,
}

/// Why a peer was not admitted. Each maps to the HTTP status of the upgrade's answer
/// ([`Refusal::status`]): 4xx for what retrying cannot fix (the AWS local proxy gives up),
/// 503 for trouble that may pass (it retries every 2.5 s).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the client token is not 32 to 128 characters of [a-zA-Z0-9-]")]
    BadClientToken,
    #[error("no open tunnel has this access token")]
    UnknownToken,
    #[error("the access token is for {token} mode, the peer asked for {asked}")]
    WrongMode {
        token: &'static str,
        asked: &'static str,
    },
    #[error("the access token was used already and no client token was given with it")]
    TokenUsed,
    #[error("the access token is bound to another client token")]
    ClientTokenMismatch,
    #[error("tunnel {0} is closed")]
    TunnelClosed(String),
    #[error("the client token is in use by another open tunnel")]
    ClientTokenInUse,
    #[error("the tunnel registry is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "no access token (access-token header or awsiot-tunnel-token cookie) and no client certificate from the relay's client CA"
    )]
    NoToken,
    #[error("{0}")]
    NotPairable(String),
    #[error(
        "no destination with this certificate identity has connected yet: the tunnel is made \
         when it does (retry)"
    )]
    NoPairYet,
    #[error(
        "the tunnel of this certificate identity has the services {has:?}, the destination \
         announces {announced:?}: close the tunnel (its next contact makes a new one)"
    )]
    ServicesChanged {
        has: Vec<String>,
        announced: Vec<String>,
    },
    #[error("the announced services are refused: {0}")]
    BadServices(String),
    #[error(
        "tunnel {tunnel} has no service {unknown:?} (its services: {has:?}): check the \
         agent's service names; this attempt did not use the access token"
    )]
    UnknownServices {
        tunnel: String,
        unknown: Vec<String>,
        has: Vec<String>,
    },
}

impl Refusal {
    /// The HTTP status the relay answers the upgrade with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Refusal::BadClientToken | Refusal::BadServices(_) | Refusal::UnknownServices { .. } => {
                400
            }
            Refusal::NoToken => 401,
            Refusal::UnknownToken
            | Refusal::WrongMode { .. }
            | Refusal::TokenUsed
            | Refusal::ClientTokenMismatch
            | Refusal::NotPairable(_) => 403,
            Refusal::TunnelClosed(_) => 410,
            Refusal::ClientTokenInUse | Refusal::ServicesChanged { .. } => 409,
            // The source of a pair waits for its destination: the agents (and the AWS local
            // proxy) retry a 5xx.
            Refusal::Unavailable(_) | Refusal::NoPairYet => 503,
        }
    }
}

/// The registry's answer to `POST /cookie` (the sans-IO decision's input).
pub(crate) use splice_proto::tunnel::relay::cookie::TokenCheck as CookieCheck;

/// Refuses a peer that `announced` a service tunnel `t` lacks. Such an agent would fail at
/// SERVICE_IDS, after its single-use token was spent: a typo must not cost the token.
fn known_services(t: &Tunnel, announced: &[String]) -> Result<(), Refusal> {
    let unknown: Vec<String> = announced
        .iter()
        .filter(|s| !t.services.contains(s))
        .cloned()
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Refusal::UnknownServices {
        tunnel: t.id.clone(),
        unknown,
        has: t.services.clone(),
    })
}

/// Tunnels the expiry timer closes or forgets per hold of the registry's lock: about 0.3 ms on
/// the 2-core bench VM (about 5 µs a tunnel). Tunnels opened in one burst end in one: 50,000
/// closed in one hold took 250 ms there, and forgetting them 184 ms, while every shard that
/// admitted a peer stopped moving bytes.
const SWEEP_PART: usize = 64;

/// Tunnels a whole listing reads per hold of the registry's lock ([`Registry::newest_first`]):
/// about 80 µs on the 2-core bench VM (`splice-bench`'s `registry/list_part_256`). One hold
/// for the whole list took 146 ms there at 100,000 tunnels, during which every shard that
/// admitted a peer stopped moving bytes.
const LIST_CHUNK: usize = 256;

/// The registry. Its calls may come from the API server's thread and the shards at once;
/// each is one short critical section on the store.
pub(crate) struct Registry {
    store: Mutex<Box<dyn TunnelStore>>,
    limits: Limits,
    /// The last [`Admission::serial`] given out.
    serials: AtomicU64,
    /// The serial of the last peer admitted on each side of a tunnel (in memory only: no
    /// peer outlives the relay).
    latest: Mutex<HashMap<(String, Side), u64>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(store: Box<dyn TunnelStore>, limits: Limits) -> Self {
        Self {
            store: Mutex::new(store),
            limits,
            serials: AtomicU64::new(0),
            latest: Mutex::default(),
        }
    }

    fn store(&self) -> MutexGuard<'_, Box<dyn TunnelStore>> {
        // A panic while holding the lock leaves at worst one record unwritten; the store
        // itself stays consistent (each put is one statement), so carry on.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a tunnel (`OpenTunnel`).
    pub(crate) fn open(&self, req: OpenRequest, now: Timestamp) -> Result<Opened, RegistryError> {
        self.validate(&req)?;
        let lifetime = req
            .lifetime_seconds
            .unwrap_or(self.limits.default_lifetime_seconds);
        let (source_token, destination_token) = (new_token()?, new_token()?);
        let tunnel = Tunnel {
            id: new_tunnel_id()?,
            description: req.description,
            thing_name: req.thing_name,
            services: req.services,
            lifetime_seconds: lifetime,
            status: TunnelStatus::Open,
            created_at: now,
            last_updated_at: now,
            source: Peer::new(source_token.hash(), None, now),
            destination: Peer::new(destination_token.hash(), None, now),
            pairing: req.pairing,
        };
        let mut store = self.store();
        store.put(&tunnel)?;
        durable(store)?;
        Ok(Opened {
            tunnel_id: tunnel.id,
            source_token,
            destination_token,
        })
    }

    fn validate(&self, req: &OpenRequest) -> Result<(), RegistryError> {
        let invalid = |m: String| Err(RegistryError::Invalid(m));
        let max = self.limits.max_lifetime_seconds;
        if let Some(s) = req.lifetime_seconds
            && !(1..=max).contains(&s)
        {
            return invalid(format!(
                "the lifetime (timeoutConfig) is {}; it must be 1 second to {}",
                lifetime_text(s),
                lifetime_text(max)
            ));
        }
        if req.services.len() > self.limits.max_services {
            return invalid(format!(
                "destinationConfig.services has {} services; at most {} are allowed",
                req.services.len(),
                self.limits.max_services
            ));
        }
        for (i, s) in req.services.iter().enumerate() {
            if !valid_name(s) {
                return invalid(format!(
                    "destinationConfig.services: {s:?} is not 1 to 128 characters of \
                     [a-zA-Z0-9:_-]"
                ));
            }
            if req.services[..i].contains(s) {
                return invalid(format!("destinationConfig.services names {s:?} twice"));
            }
        }
        if let Some(t) = &req.thing_name
            && !valid_name(t)
        {
            return invalid(format!(
                "destinationConfig.thingName {t:?} is not 1 to 128 characters of [a-zA-Z0-9:_-]"
            ));
        }
        if let Some(d) = &req.description
            && (d.chars().count() > 2048 || d.chars().any(char::is_control))
        {
            return invalid(
                "description must be at most 2048 characters, without control characters".into(),
            );
        }
        Ok(())
    }

    /// Every tunnel (`ListTunnels` without a page size), oldest first; those of `thing_name`
    /// only if given. Tunnels whose lifetime ended are closed first.
    pub(crate) fn list(
        &self,
        thing_name: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<Tunnel>, RegistryError> {
        let mut all = self.newest_first(thing_name, None, now)?;
        all.reverse();
        Ok(all)
    }

    /// [`Registry::list`] newest first, from after `after` if given. The list is read
    /// [`LIST_CHUNK`] tunnels per hold of the lock, each part after the last one read, so
    /// that shards admitting peers wait for one part at most: a tunnel opened during the walk
    /// is not in it, one forgotten during it may be, as with `ListTunnels`' pages.
    pub(crate) fn newest_first(
        &self,
        thing_name: Option<&str>,
        after: Option<&ListPosition>,
        now: Timestamp,
    ) -> Result<Vec<Tunnel>, RegistryError> {
        self.expire(now)?;
        let mut all: Vec<Tunnel> = Vec::new();
        loop {
            let from = all.last().map(ListPosition::of);
            let part = self
                .store()
                .page(thing_name, from.as_ref().or(after), LIST_CHUNK)?;
            let last = part.len() < LIST_CHUNK;
            all.extend(part);
            if last {
                return Ok(all);
            }
        }
    }

    /// A page of `ListTunnels`: newest first, at most `limit` tunnels (of `thing_name` only,
    /// if given) after `after`.
    pub(crate) fn page(
        &self,
        thing_name: Option<&str>,
        after: Option<&ListPosition>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<Tunnel>, RegistryError> {
        self.expire(now)?;
        Ok(self.store().page(thing_name, after, limit)?)
    }

    /// The tunnels of `thing` as they are in memory, expired ones included (the caller checks
    /// `is_open_at`): for a shard, which must not wait for the disk as [`Registry::list`] may.
    pub(crate) fn of_thing(&self, thing: &str) -> Result<Vec<Tunnel>, RegistryError> {
        Ok(self.store().find_by_thing(thing)?)
    }

    /// One tunnel (`DescribeTunnel`), closed first if its lifetime ended.
    pub(crate) fn describe(&self, id: &str, now: Timestamp) -> Result<Tunnel, RegistryError> {
        let mut store = self.store();
        let mut t = store
            .get(id)?
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        if close_if_expired(&mut t, now) {
            store.put(&t)?;
            durable(store)?;
        }
        Ok(t)
    }

    /// New access tokens for `sides` (`RotateTunnelAccessToken`); the old ones stop working
    /// at once. With `client_token`, only a peer that brings it may use the new tokens.
    /// Answers once the new tokens are on disk.
    pub(crate) fn rotate(
        &self,
        id: &str,
        sides: RotateSides,
        client_token: Option<&str>,
        now: Timestamp,
    ) -> Result<Rotated, RegistryError> {
        let (rotated, durable) = self.rotate_behind(id, sides, client_token, now)?;
        durable.wait()?;
        Ok(rotated)
    }

    /// [`Registry::rotate`] without waiting for the disk, for a shard (a standby device's
    /// tunnels): the new tokens work at once, and a relay that dies before they are written
    /// knows the old ones, which the device is pushed again with new ones when it comes back.
    pub(crate) fn rotate_behind(
        &self,
        id: &str,
        sides: RotateSides,
        client_token: Option<&str>,
        now: Timestamp,
    ) -> Result<(Rotated, Durable), RegistryError> {
        let client = match client_token {
            Some(c) if !valid_client_token(c) => {
                return Err(RegistryError::Invalid(
                    "clientToken must be 32 to 128 characters of [a-zA-Z0-9-]".into(),
                ));
            }
            Some(c) => Some(TokenHash::of(c)),
            None => None,
        };
        let mut store = self.store();
        let mut t = store
            .get(id)?
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        if close_if_expired(&mut t, now) {
            store.put(&t)?;
        }
        if t.status == TunnelStatus::Closed {
            return Err(RegistryError::Closed(t.id));
        }
        if let Pairing::Certificate(identity) = &t.pairing {
            return Err(RegistryError::Invalid(format!(
                "tunnel {} is paired by the certificate identity {identity}: it has no tokens \
                 to rotate",
                t.id
            )));
        }
        if let Some(c) = &client
            && client_token_in_use(&**store, c, &t.id, now)?
        {
            return Err(RegistryError::Invalid(
                "clientToken is in use by another open tunnel".into(),
            ));
        }
        let mut rotated = Rotated::default();
        for side in Side::BOTH.into_iter().filter(|s| sides.includes(*s)) {
            let token = new_token()?;
            let peer = t.peer_mut(side);
            let connected = peer.connected;
            *peer = Peer::new(token.hash(), client, now);
            // The relay drops a peer connected with the old token; until it reports that,
            // the peer is still there.
            peer.connected = connected;
            match side {
                Side::Source => rotated.source_token = Some(token),
                Side::Destination => rotated.destination_token = Some(token),
            }
        }
        t.last_updated_at = now;
        store.put(&t)?;
        Ok((rotated, store.barrier()))
    }

    /// Closes a tunnel (`CloseTunnel`); closing a closed tunnel is not an error. With
    /// `delete`, the record goes too.
    pub(crate) fn close(
        &self,
        id: &str,
        delete: bool,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        let mut store = self.store();
        let mut t = store
            .get(id)?
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        if delete {
            store.remove(id)?;
            self.forget_latest(&[id.to_string()]);
            return Ok(durable(store)?);
        }
        if t.status == TunnelStatus::Open {
            t.status = TunnelStatus::Closed;
            t.last_updated_at = now;
            store.put(&t)?;
            durable(store)?;
        }
        Ok(())
    }

    /// Closes every open tunnel whose lifetime ended by `now`; returns their ids, so the
    /// relay can send both peers a close frame. [`SWEEP_PART`] tunnels per hold of the lock.
    pub(crate) fn expire(&self, now: Timestamp) -> Result<Vec<String>, RegistryError> {
        let mut closed = Vec::new();
        self.in_parts(|store| {
            let due = store.lifetime_over(now, SWEEP_PART)?;
            let whole = due.len() < SWEEP_PART;
            let before = closed.len();
            for mut t in due {
                if close_if_expired(&mut t, now) {
                    store.put(&t)?;
                    closed.push(t.id);
                }
            }
            let changed = closed.len() > before;
            Ok((changed, whole || !changed))
        })?;
        Ok(closed)
    }

    /// Forgets the tunnels closed more than [`Limits::keep_closed_seconds`] before `now`
    /// (AWS lists a closed tunnel for a few hours, then deletes it): without this, a relay
    /// that runs for months would keep every tunnel it ever opened. Returns how many went.
    /// [`SWEEP_PART`] tunnels per hold of the lock.
    pub(crate) fn forget_closed(&self, now: Timestamp) -> Result<usize, RegistryError> {
        let keep_ms = self.limits.keep_closed_seconds.saturating_mul(1000);
        let before = Timestamp(now.0.saturating_sub(keep_ms));
        let mut gone = 0;
        self.in_parts(|store| {
            let ids = store.closed_before(before, SWEEP_PART)?;
            for id in &ids {
                store.remove(id)?;
            }
            self.forget_latest(&ids);
            gone += ids.len();
            Ok((!ids.is_empty(), ids.len() < SWEEP_PART))
        })?;
        Ok(gone)
    }

    /// Runs `part` on the store, one hold of the lock each time, until it answers that it
    /// was the last (`(changed, last)`); then waits once, for the disk to have what the parts
    /// changed.
    fn in_parts(
        &self,
        mut part: impl FnMut(&mut dyn TunnelStore) -> Result<(bool, bool), RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut written = None;
        loop {
            let mut store = self.store();
            let (changed, last) = part(store.as_mut())?;
            if changed {
                written = Some(store.barrier());
            }
            drop(store);
            if last {
                break;
            }
        }
        if let Some(d) = written {
            d.wait()?;
        }
        Ok(())
    }

    /// Whether a peer that presents `token` in `mode` (with `client_token`, if it sent one)
    /// may join its tunnel; if so, its side is marked connected and the token's use is
    /// recorded (reference §2: single-use, unless bound to a client token). This is a peer
    /// that announced no services, as the AWS local proxy; see [`Registry::admit_naming`].
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn admit(
        &self,
        token: &str,
        mode: Side,
        client_token: Option<&str>,
        now: Timestamp,
    ) -> Result<Admission, Refusal> {
        self.admit_naming(token, mode, client_token, &[], now)
    }

    /// [`Registry::admit`] for a peer that `announced` its services (our agents do): each
    /// must be one of the tunnel's, checked before the token is used.
    pub(crate) fn admit_naming(
        &self,
        token: &str,
        mode: Side,
        client_token: Option<&str>,
        announced: &[String],
        now: Timestamp,
    ) -> Result<Admission, Refusal> {
        if client_token.is_some_and(|c| !valid_client_token(c)) {
            return Err(Refusal::BadClientToken);
        }
        let hash = TokenHash::of(token);
        let unavailable = |e: StoreError| Refusal::Unavailable(e.0);
        let mut store = self.store();
        let mut t = store
            .find_by_token(&hash)
            .map_err(unavailable)?
            .ok_or(Refusal::UnknownToken)?;
        // The store found it by hash; compare again in constant time, which also covers a
        // store whose lookup is not an exact match.
        let side = Side::BOTH
            .into_iter()
            .find(|s| t.peer(*s).token.matches(&hash))
            .ok_or(Refusal::UnknownToken)?;
        if close_if_expired(&mut t, now) {
            store.put(&t).map_err(unavailable)?;
        }
        if t.status == TunnelStatus::Closed {
            return Err(Refusal::TunnelClosed(t.id));
        }
        if side != mode {
            return Err(Refusal::WrongMode {
                token: side.as_str(),
                asked: mode.as_str(),
            });
        }
        known_services(&t, announced)?;
        let given = client_token.map(TokenHash::of);
        let token_use = t.peer(side).token_use;
        let reconnect = token_use.used;
        match (token_use.client, given) {
            (Some(bound), Some(given)) if bound.matches(&given) => {}
            (Some(_), _) => return Err(Refusal::ClientTokenMismatch),
            (None, _) if token_use.used => return Err(Refusal::TokenUsed),
            (None, None) => {}
            (None, Some(given)) => {
                let in_use =
                    client_token_in_use(&**store, &given, &t.id, now).map_err(unavailable)?;
                if in_use {
                    return Err(Refusal::ClientTokenInUse);
                }
                t.peer_mut(side).token_use.client = Some(given);
            }
        }
        // What must survive a crash before the 101: a token's first use (and the client
        // token it was bound to). A reconnect waits too: the use it reconnects with may be
        // the one whose write is still queued (or failed).
        self.connect_side(&mut store, t, side, reconnect, now)
    }

    /// Whether a peer without a token whose client certificate (from the client CA) has
    /// `identity` may join the tunnel of that identity in `mode`; if so, its side is marked
    /// connected. The tunnel is made by the first destination of the identity, with the
    /// services it `announced` (a source that comes first is told to retry), and lives as a
    /// tunnel opened by the API would (the default lifetime; closed by the API or its end, the
    /// next contact makes a new one). Its tokens are made and thrown away: nobody can use one.
    pub(crate) fn admit_identity(
        &self,
        identity: &str,
        mode: Side,
        announced: &[String],
        now: Timestamp,
    ) -> Result<Admission, Refusal> {
        let pairing = Pairing::Certificate(identity.to_string());
        let unavailable = |e: StoreError| Refusal::Unavailable(e.0);
        let mut store = self.store();
        let mut open = None;
        for mut t in store.find_by_pairing(&pairing).map_err(unavailable)? {
            if close_if_expired(&mut t, now) {
                store.put(&t).map_err(unavailable)?;
            }
            if t.status == TunnelStatus::Open {
                open = Some(t);
            }
        }
        let (t, reconnect) = match open {
            Some(t) => {
                if mode == Side::Source {
                    known_services(&t, announced)?;
                }
                if mode == Side::Destination && t.services != announced {
                    return Err(Refusal::ServicesChanged {
                        has: t.services,
                        announced: announced.to_vec(),
                    });
                }
                let reconnect = t.peer(mode).token_use.used;
                (t, reconnect)
            }
            None if mode == Side::Source => return Err(Refusal::NoPairYet),
            None => {
                let req = OpenRequest {
                    description: Some(format!("paired by certificate {identity}")),
                    services: announced.to_vec(),
                    pairing: pairing.clone(),
                    ..OpenRequest::default()
                };
                self.validate(&req)
                    .map_err(|e| Refusal::BadServices(e.to_string()))?;
                let token = || new_token().map_err(|e| Refusal::Unavailable(e.to_string()));
                let (source_token, destination_token) = (token()?, token()?);
                let id = new_tunnel_id().map_err(|e| Refusal::Unavailable(e.to_string()))?;
                let t = Tunnel {
                    id,
                    description: req.description,
                    thing_name: None,
                    services: req.services,
                    lifetime_seconds: self.limits.default_lifetime_seconds,
                    status: TunnelStatus::Open,
                    created_at: now,
                    last_updated_at: now,
                    source: Peer::new(source_token.hash(), None, now),
                    destination: Peer::new(destination_token.hash(), None, now),
                    pairing,
                };
                (t, false)
            }
        };
        // The tunnel this contact made (or its side's use) is on disk before the 101, as
        // for a token's first use.
        self.connect_side(&mut store, t, mode, reconnect, now)
    }

    /// Marks `side` of `t` used and connected, stores it, and gives the admission with the
    /// ticket for its write (the relay answers the upgrade once it is done).
    fn connect_side(
        &self,
        store: &mut MutexGuard<'_, Box<dyn TunnelStore>>,
        mut t: Tunnel,
        side: Side,
        reconnect: bool,
        now: Timestamp,
    ) -> Result<Admission, Refusal> {
        let peer = t.peer_mut(side);
        peer.token_use.used = true;
        peer.connected = true;
        peer.updated_at = now;
        t.last_updated_at = now;
        store
            .put(&t)
            .map_err(|e: StoreError| Refusal::Unavailable(e.0))?;
        let durable = store.barrier();
        let serial = self.serials.fetch_add(1, Relaxed) + 1;
        self.latest().insert((t.id.clone(), side), serial);
        Ok(Admission {
            services: t.services.clone(),
            expires_at: t.expires_at(),
            pairing: t.pairing.clone(),
            tunnel_id: t.id,
            side,
            reconnect,
            serial,
            durable,
        })
    }

    /// What `POST /cookie` may say about `token` at `now`: an open tunnel's token not used
    /// yet, and the seconds until the tunnel's end. Marks nothing (the upgrade that follows
    /// is the token's use).
    pub(crate) fn cookie_check(&self, token: &str, now: Timestamp) -> CookieCheck {
        let hash = TokenHash::of(token);
        let store = self.store();
        let t = match store.find_by_token(&hash) {
            Ok(Some(t)) => t,
            Ok(None) => return CookieCheck::Unknown,
            Err(_) => return CookieCheck::Unavailable,
        };
        let Some(side) = Side::BOTH
            .into_iter()
            .find(|s| t.peer(*s).token.matches(&hash))
        else {
            return CookieCheck::Unknown;
        };
        if !t.is_open_at(now) {
            return CookieCheck::Closed;
        }
        if t.peer(side).token_use.used {
            return CookieCheck::Used;
        }
        CookieCheck::Valid {
            seconds_left: t.expires_at().0.saturating_sub(now.0) / 1000,
        }
    }

    /// Marks every side of every tunnel disconnected: for a relay that starts, since no
    /// peer outlives the relay it was connected to. Returns how many sides it changed.
    pub(crate) fn reset_connections(&self, now: Timestamp) -> Result<usize, RegistryError> {
        let mut store = self.store();
        let mut changed = 0;
        for mut t in store.list()? {
            let mut touched = false;
            for side in Side::BOTH {
                let peer = t.peer_mut(side);
                if peer.connected {
                    peer.connected = false;
                    peer.updated_at = now;
                    changed += 1;
                    touched = true;
                }
            }
            if touched {
                t.last_updated_at = now;
                store.put(&t)?;
            }
        }
        durable(store)?;
        Ok(changed)
    }

    /// A peer admitted as `admission` went before it reached its tunnel (it died during
    /// its hand-off, its relay was removed, its tunnel's session could not start): its side
    /// is disconnected, unless a later peer was admitted on that side meanwhile.
    pub(crate) fn abandoned(
        &self,
        admission: &Admission,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        self.gone(&admission.tunnel_id, admission.side, admission.serial, now)
    }

    /// The peer admitted as [`Admission::serial`] `serial` on `side` of tunnel `id` has gone:
    /// its side is disconnected, unless a later peer was admitted on that side meanwhile (a
    /// reconnect on its way to the tunnel while the old connection is found dead).
    pub(crate) fn gone(
        &self,
        id: &str,
        side: Side,
        serial: u64,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        let store = self.store();
        let key = (id.to_string(), side);
        let mut latest = self.latest();
        if latest.get(&key) == Some(&serial) {
            // Nobody is on this side now: the map keeps only the sides with a peer.
            latest.remove(&key);
            drop(latest);
            self.mark_disconnected(store, id, side, now)?;
        }
        Ok(())
    }

    /// Drops the admissions of both sides of the tunnels `ids` (which the store forgot).
    fn forget_latest(&self, ids: &[String]) {
        let mut latest = self.latest();
        for id in ids {
            for side in Side::BOTH {
                latest.remove(&(id.clone(), side));
            }
        }
    }

    fn latest(&self) -> MutexGuard<'_, HashMap<(String, Side), u64>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer on `side` of tunnel `id` has gone. An unknown tunnel (deleted meanwhile) is
    /// not an error.
    #[cfg(test)]
    pub(crate) fn disconnected(
        &self,
        id: &str,
        side: Side,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        self.mark_disconnected(self.store(), id, side, now)
    }

    /// Written behind: a shard calls it.
    fn mark_disconnected(
        &self,
        mut store: MutexGuard<'_, Box<dyn TunnelStore>>,
        id: &str,
        side: Side,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        if let Some(mut t) = store.get(id)? {
            let peer = t.peer_mut(side);
            if peer.connected {
                peer.connected = false;
                peer.updated_at = now;
                t.last_updated_at = now;
                store.put(&t)?;
            }
        }
        Ok(())
    }
}

/// Waits until every change `store` was told of is on disk, after letting go of its lock (so
/// the shards' calls do not wait for the disk): for the API's calls, which answer only then.
fn durable(mut store: MutexGuard<'_, Box<dyn TunnelStore>>) -> Result<(), StoreError> {
    let d = store.barrier();
    drop(store);
    d.wait()
}

/// Whether an open tunnel other than `this` has a side bound to the client token with hash
/// `client` (reference §2: a client token is unique among the open tunnels).
fn client_token_in_use(
    store: &dyn TunnelStore,
    client: &TokenHash,
    this: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    Ok(store
        .find_by_client_token(client)?
        .iter()
        .any(|t| t.id != this && t.is_open_at(now)))
}

/// A lifetime in seconds as the API writes it: whole minutes as `N minutes`, else seconds.
fn lifetime_text(seconds: u32) -> String {
    if seconds > 0 && seconds % 60 == 0 {
        format!("{} minutes", seconds / 60)
    } else {
        format!("{seconds} seconds")
    }
}

/// Marks `t` closed if it is open and its lifetime has ended; whether it did.
fn close_if_expired(t: &mut Tunnel, now: Timestamp) -> bool {
    if t.status == TunnelStatus::Open && !t.is_open_at(now) {
        t.status = TunnelStatus::Closed;
        t.last_updated_at = now.min(t.expires_at()).max(t.last_updated_at);
        true
    } else {
        false
    }
}

/// AWS's pattern for a thing name or a service id: `[a-zA-Z0-9:_-]{1,128}` (the same as the
/// protocol's check of a service id).
fn valid_name(s: &str) -> bool {
    splice_proto::tunnel::check_service_id(s).is_ok()
}

/// Reference §2: `^[a-zA-Z0-9-]{32,128}$`.
fn valid_client_token(s: &str) -> bool {
    splice_proto::ws::ClientToken::is_valid(s)
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
