//! Where the registry keeps its tunnels: the [`TunnelStore`] trait, and [`MemoryStore`]. The
//! SQLite store is in `sqlite.rs`. A store holds records; every rule (tokens, lifetimes,
//! statuses) is the registry's, so a store shared by several relays later only has to keep
//! records too.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex};

use super::secret::TokenHash;
use super::tunnel::{Pairing, Side, Timestamp, Tunnel, TunnelStatus};

/// A store failed (a file that cannot be read or written, a schema it does not know).
/// Transient as far as a peer is concerned: the relay answers 503 and the peer retries.
#[derive(Debug, thiserror::Error)]
#[error("tunnel store: {0}")]
pub(crate) struct StoreError(pub(crate) String);

/// Tunnel records by id, with lookups by what the relay asks of them as peers connect (an
/// access token, a client token, a pairing, a thing) and as time passes (lifetimes that ended,
/// closed tunnels past their retention).
pub(crate) trait TunnelStore: Send {
    /// Inserts `tunnel`, or replaces the record with its id.
    fn put(&mut self, tunnel: &Tunnel) -> Result<(), StoreError>;
    /// The tunnel with this id.
    fn get(&self, id: &str) -> Result<Option<Tunnel>, StoreError>;
    /// The tunnel one of whose sides has the access token with this hash.
    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Tunnel>, StoreError>;
    /// The tunnels one of whose sides is bound to the client token with this hash.
    fn find_by_client_token(&self, hash: &TokenHash) -> Result<Vec<Tunnel>, StoreError>;
    /// Every tunnel, oldest first.
    fn list(&self) -> Result<Vec<Tunnel>, StoreError>;
    /// The tunnels paired as `pairing` (kind and identity), oldest first.
    fn find_by_pairing(&self, pairing: &Pairing) -> Result<Vec<Tunnel>, StoreError>;
    /// The tunnels opened for the thing `thing` (`destinationConfig.thingName`), oldest first.
    fn find_by_thing(&self, thing: &str) -> Result<Vec<Tunnel>, StoreError>;
    /// A page of the list, newest first (by creation time, then id, both descending): at
    /// most `limit` tunnels (of `thing` only, when given) that come after `after`.
    fn page(
        &self,
        thing: Option<&str>,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Vec<Tunnel>, StoreError>;
    /// The first `limit` tunnels still `OPEN` whose lifetime ended by `now`, by the end of
    /// their lifetime (then id).
    fn lifetime_over(&self, now: Timestamp, limit: usize) -> Result<Vec<Tunnel>, StoreError>;
    /// The ids of the first `limit` `CLOSED` tunnels last changed before `before`, by that
    /// time (then id).
    fn closed_before(&self, before: Timestamp, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Forgets the tunnel with this id; whether there was one.
    fn remove(&mut self, id: &str) -> Result<bool, StoreError>;
    /// A ticket that is done once every change made so far is on disk. A store that
    /// writes as it is called is done at once (the default); see `writer::WriteBehind`.
    fn barrier(&mut self) -> Durable {
        Durable::done()
    }
    /// The changes from here to [`TunnelStore::commit`] may be written together, in one
    /// transaction (`writer::WriteBehind` batches what queued up). Nothing by default.
    fn begin(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Ends what [`TunnelStore::begin`] started: the changes since are on disk.
    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A store that lives as long as the process: for `--state :memory:`-like throwaway relays
/// and tests, and the memory [`WriteBehind`](super::writer::WriteBehind) answers from.
///
/// Every lookup the relay makes while peers connect, and every sweep of its expiry timer,
/// goes through an index, so their cost does not grow with the number of tunnels: the
/// registry's lock is held by them, and the shards wait on it to admit peers.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    tunnels: HashMap<String, Tunnel>,
    index: Index,
}

/// The indexes of a [`MemoryStore`], each from a key to tunnel ids.
#[derive(Debug, Default)]
struct Index {
    /// Both sides' access-token hashes. Looking a SHA-256 up in a hash map tells a timing
    /// observer nothing about the token it came from; the registry then compares the hash
    /// it found in constant time ([`TokenHash::matches`]).
    token: HashMap<TokenHash, String>,
    client: HashMap<TokenHash, BTreeSet<String>>,
    /// Pairings with an identity (certificate, thing); token pairing is the rest.
    pairing: HashMap<Pairing, BTreeSet<String>>,
    thing: HashMap<String, BTreeSet<String>>,
    /// Open tunnels by the end of their lifetime.
    open_until: BTreeSet<(Timestamp, String)>,
    /// Closed tunnels by their last change.
    closed_at: BTreeSet<(Timestamp, String)>,
    /// Every tunnel by its creation (the list's order).
    created: BTreeSet<(Timestamp, String)>,
}

impl Index {
    fn add(&mut self, t: &Tunnel) {
        let id = || t.id.clone();
        for side in Side::BOTH {
            let peer = t.peer(side);
            self.token.insert(peer.token, id());
            if let Some(c) = peer.token_use.client {
                self.client.entry(c).or_default().insert(id());
            }
        }
        if t.pairing.identity().is_some() {
            self.pairing
                .entry(t.pairing.clone())
                .or_default()
                .insert(id());
        }
        if let Some(thing) = &t.thing_name {
            self.thing.entry(thing.clone()).or_default().insert(id());
        }
        match t.status {
            TunnelStatus::Open => self.open_until.insert((t.expires_at(), id())),
            TunnelStatus::Closed => self.closed_at.insert((t.last_updated_at, id())),
        };
        self.created.insert((t.created_at, id()));
    }

    fn drop_entries(&mut self, t: &Tunnel) {
        for side in Side::BOTH {
            let peer = t.peer(side);
            if self.token.get(&peer.token) == Some(&t.id) {
                self.token.remove(&peer.token);
            }
            if let Some(c) = peer.token_use.client {
                unlist(&mut self.client, &c, &t.id);
            }
        }
        unlist(&mut self.pairing, &t.pairing, &t.id);
        if let Some(thing) = &t.thing_name {
            unlist(&mut self.thing, thing, &t.id);
        }
        let key = |at: Timestamp| (at, t.id.clone());
        match t.status {
            TunnelStatus::Open => self.open_until.remove(&key(t.expires_at())),
            TunnelStatus::Closed => self.closed_at.remove(&key(t.last_updated_at)),
        };
        self.created.remove(&key(t.created_at));
    }
}

/// A place in the list (`ListTunnels`' `nextToken`): the last tunnel of a page, by creation
/// time and id. The next page starts after it in the list's order, whether or not that tunnel
/// is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListPosition {
    pub(crate) created_at: Timestamp,
    pub(crate) id: String,
}

impl ListPosition {
    pub(crate) fn of(t: &Tunnel) -> Self {
        Self {
            created_at: t.created_at,
            id: t.id.clone(),
        }
    }

    /// Whether `t` comes after this place in the list (newest first, then by id descending).
    pub(crate) fn precedes(&self, t: &Tunnel) -> bool {
        (t.created_at, t.id.as_str()) < (self.created_at, self.id.as_str())
    }
}

/// Takes `id` out of the set under `key`, and the set when it is left empty.
fn unlist<K, Q>(map: &mut HashMap<K, BTreeSet<String>>, key: &Q, id: &str)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(ids) = map.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

impl MemoryStore {
    /// The tunnels with these ids, oldest first.
    fn tunnels<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<Tunnel> {
        let mut found: Vec<Tunnel> = ids
            .into_iter()
            .filter_map(|id| self.tunnels.get(id).cloned())
            .collect();
        oldest_first(&mut found);
        found
    }

    fn listed(&self, ids: Option<&BTreeSet<String>>) -> Vec<Tunnel> {
        ids.map_or_else(Vec::new, |ids| self.tunnels(ids))
    }
}

/// Sorts by creation, then id: the order every listing of a store has.
pub(crate) fn oldest_first(tunnels: &mut [Tunnel]) {
    tunnels.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
}

impl TunnelStore for MemoryStore {
    fn put(&mut self, tunnel: &Tunnel) -> Result<(), StoreError> {
        if let Some(old) = self.tunnels.insert(tunnel.id.clone(), tunnel.clone()) {
            self.index.drop_entries(&old);
        }
        self.index.add(tunnel);
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Tunnel>, StoreError> {
        Ok(self.tunnels.get(id).cloned())
    }

    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Tunnel>, StoreError> {
        Ok(self
            .index
            .token
            .get(hash)
            .and_then(|id| self.tunnels.get(id))
            .cloned())
    }

    fn find_by_client_token(&self, hash: &TokenHash) -> Result<Vec<Tunnel>, StoreError> {
        Ok(self.listed(self.index.client.get(hash)))
    }

    fn list(&self) -> Result<Vec<Tunnel>, StoreError> {
        let mut all: Vec<Tunnel> = self.tunnels.values().cloned().collect();
        oldest_first(&mut all);
        Ok(all)
    }

    fn find_by_pairing(&self, pairing: &Pairing) -> Result<Vec<Tunnel>, StoreError> {
        if pairing.identity().is_some() {
            return Ok(self.listed(self.index.pairing.get(pairing)));
        }
        let mut all = self.list()?;
        all.retain(|t| t.pairing == *pairing);
        Ok(all)
    }

    fn find_by_thing(&self, thing: &str) -> Result<Vec<Tunnel>, StoreError> {
        Ok(self.listed(self.index.thing.get(thing)))
    }

    fn page(
        &self,
        thing: Option<&str>,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Vec<Tunnel>, StoreError> {
        Ok(match thing {
            // A thing's tunnels are few: its index's list, oldest first, turned round.
            Some(thing) => self
                .find_by_thing(thing)?
                .into_iter()
                .rev()
                .filter(|t| after.is_none_or(|p| p.precedes(t)))
                .take(limit)
                .collect(),
            None => {
                let end = after.map_or(Bound::Unbounded, |p| {
                    Bound::Excluded((p.created_at, p.id.clone()))
                });
                self.index
                    .created
                    .range((Bound::Unbounded, end))
                    .rev()
                    .take(limit)
                    .filter_map(|(_, id)| self.tunnels.get(id).cloned())
                    .collect()
            }
        })
    }

    fn lifetime_over(&self, now: Timestamp, limit: usize) -> Result<Vec<Tunnel>, StoreError> {
        Ok(self
            .index
            .open_until
            .iter()
            .take_while(|(end, _)| *end <= now)
            .take(limit)
            .filter_map(|(_, id)| self.tunnels.get(id).cloned())
            .collect())
    }

    fn closed_before(&self, before: Timestamp, limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(self
            .index
            .closed_at
            .iter()
            .take_while(|(at, _)| *at < before)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect())
    }

    fn remove(&mut self, id: &str) -> Result<bool, StoreError> {
        let Some(old) = self.tunnels.remove(id) else {
            return Ok(false);
        };
        self.index.drop_entries(&old);
        Ok(true)
    }
}

/// Whether the writes made before it are on disk: done at once for a store that writes as
/// it is called, later for [`WriteBehind`](super::writer::WriteBehind). Its result is the first write that failed since
/// the previous barrier, if any.
#[derive(Clone)]
pub(crate) struct Durable(Arc<Slot>);

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    result: Option<Result<(), String>>,
    /// Called (on the writer thread) once the result is known.
    waker: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Durable").field(&self.poll()).finish()
    }
}

/// The same ticket.
impl PartialEq for Durable {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Durable {}

impl Durable {
    /// A ticket whose writes are on disk already.
    pub(crate) fn done() -> Self {
        let d = Durable(Arc::default());
        d.complete(Ok(()));
        d
    }

    pub(super) fn pending() -> Self {
        Durable(Arc::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn complete(&self, result: Result<(), String>) {
        let waker = {
            let mut s = self.state();
            s.result = Some(result);
            s.waker.take()
        };
        self.0.ready.notify_all();
        if let Some(w) = waker {
            w();
        }
    }

    /// The outcome if it is known (never blocks).
    pub(crate) fn poll(&self) -> Option<Result<(), StoreError>> {
        self.state().result.clone().map(|r| r.map_err(StoreError))
    }

    /// Blocks until the outcome is known: for the API's and the expiry's threads, never a
    /// shard.
    pub(crate) fn wait(&self) -> Result<(), StoreError> {
        let mut s = self.state();
        loop {
            if let Some(r) = &s.result {
                return r.clone().map_err(StoreError);
            }
            s = self.0.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Calls `wake` once the outcome is known: now (on this thread) when it is, else on the
    /// writer's thread. A second call replaces the first's `wake`.
    pub(crate) fn on_ready(&self, wake: impl FnOnce() + Send + 'static) {
        let mut s = self.state();
        if s.result.is_some() {
            drop(s);
            wake();
        } else {
            s.waker = Some(Box::new(wake));
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
