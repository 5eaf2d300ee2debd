//! Where the registry keeps its tunnels: the [`TunnelStore`] trait, and [`MemoryStore`]. The
//! SQLite store is in `sqlite.rs`. A store holds records; every rule (tokens, lifetimes,
//! statuses) is the registry's, so a store shared by several relays later only has to keep
//! records too.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

use super::secret::TokenHash;
use super::tunnel::{Pairing, Tunnel};

/// A store failed (a file that cannot be read or written, a schema it does not know).
/// Transient as far as a peer is concerned: the relay answers 503 and the peer retries.
#[derive(Debug, thiserror::Error)]
#[error("tunnel store: {0}")]
pub(crate) struct StoreError(pub(crate) String);

/// Tunnel records by id, with a lookup by access-token hash.
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
    /// Forgets the tunnel with this id; whether there was one.
    fn remove(&mut self, id: &str) -> Result<bool, StoreError>;
    /// A ticket that is done once every change made so far is on disk. A store that
    /// writes as it is called is done at once (the default); see `writer::WriteBehind`.
    fn barrier(&mut self) -> Durable {
        Durable::done()
    }
}

/// A store that lives as long as the process: for `--state :memory:`-like throwaway relays
/// and tests.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    tunnels: BTreeMap<String, Tunnel>,
}

impl TunnelStore for MemoryStore {
    fn put(&mut self, tunnel: &Tunnel) -> Result<(), StoreError> {
        self.tunnels.insert(tunnel.id.clone(), tunnel.clone());
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Tunnel>, StoreError> {
        Ok(self.tunnels.get(id).cloned())
    }

    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Tunnel>, StoreError> {
        Ok(self
            .tunnels
            .values()
            .find(|t| t.source.token == *hash || t.destination.token == *hash)
            .cloned())
    }

    fn find_by_client_token(&self, hash: &TokenHash) -> Result<Vec<Tunnel>, StoreError> {
        Ok(self
            .tunnels
            .values()
            .filter(|t| {
                t.source.token_use.client == Some(*hash)
                    || t.destination.token_use.client == Some(*hash)
            })
            .cloned()
            .collect())
    }

    fn list(&self) -> Result<Vec<Tunnel>, StoreError> {
        let mut all: Vec<Tunnel> = self.tunnels.values().cloned().collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    fn remove(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self.tunnels.remove(id).is_some())
    }

    fn find_by_pairing(&self, pairing: &Pairing) -> Result<Vec<Tunnel>, StoreError> {
        let mut all = self.list()?;
        all.retain(|t| t.pairing == *pairing);
        Ok(all)
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
