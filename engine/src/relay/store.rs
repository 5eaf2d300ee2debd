//! Where the registry keeps its tunnels: the [`TunnelStore`] trait, and [`MemoryStore`]. The
//! SQLite store is in `sqlite.rs`. A store holds records; every rule (tokens, lifetimes,
//! statuses) is the registry's, so a store shared by several relays later only has to keep
//! records too.

use std::collections::BTreeMap;

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
