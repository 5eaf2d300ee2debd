//! A [`TunnelStore`] that answers from memory and writes behind, in order, on its own thread
//! ([`WriteBehind`]), completing the tickets that say when a write is on disk ([`Durable`]).
//!
//! The shards call the registry while they admit peers and as peers go: with the SQLite
//! store in the way, a slow disk (an fsync of the log per change) stalled every peer of the
//! shard. Here the records the registry reads and changes are in memory, so its calls stay
//! short; the writer thread applies each change to the inner store in the order it was made.
//! A caller that must not go on before its change is on disk (the API before it answers,
//! admission before a single-use token's 101) takes a [`Durable`] with
//! [`TunnelStore::barrier`] and waits for it, off the shard (the shard is woken).

use std::sync::mpsc;

use super::secret::TokenHash;
use super::store::{Durable, ListPosition, MemoryStore, StoreError, TunnelStore};
use super::tunnel::{Pairing, Timestamp, Tunnel};

/// One change for the writer thread.
enum Write {
    Put(Box<Tunnel>),
    Remove(String),
    /// Every change before it is applied: complete the ticket.
    Barrier(Durable),
}

/// See the [module documentation](self). The inner store is read once, when this starts;
/// from then on this store's memory is the truth and the inner store follows it.
pub(crate) struct WriteBehind {
    memory: MemoryStore,
    queue: Option<mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl WriteBehind {
    /// Reads every record of `inner`, and starts the thread that writes the changes to it.
    pub(crate) fn new(mut inner: Box<dyn TunnelStore>) -> Result<Self, StoreError> {
        let mut memory = MemoryStore::default();
        for t in inner.list()? {
            memory.put(&t)?;
        }
        let (tx, rx) = mpsc::channel::<Write>();
        let writer = std::thread::Builder::new()
            .name("relay-store".into())
            .spawn(move || write_loop(&mut *inner, &rx))
            .map_err(|e| StoreError(format!("the registry's writer thread: {e}")))?;
        Ok(Self {
            memory,
            queue: Some(tx),
            writer: Some(writer),
        })
    }

    fn send(&self, w: Write) -> Result<(), StoreError> {
        self.queue
            .as_ref()
            .and_then(|q| q.send(w).ok())
            .ok_or_else(|| StoreError("the registry's writer thread has stopped".into()))
    }
}

/// Most changes written in one transaction.
const MAX_BATCH: usize = 4096;

/// The writer thread: applies the changes in order, each batch of those queued meanwhile in
/// one transaction (group commit), and completes a batch's tickets once it is committed.
///
/// A relay that restarts sees its peers come back all at once, and each waits for its
/// admission to be on disk before its 101. One commit (an fsync) per change made the last of
/// 2,000 peers wait 1.2 s on the bench VM's disk, and ten times that at the 10,000 peers a
/// relay is sized for, past the handshake timeout on a slower disk; one commit per batch
/// writes whatever queued up during the previous commit together.
fn write_loop(inner: &mut dyn TunnelStore, rx: &mpsc::Receiver<Write>) {
    // The first failure since the last barrier, which that barrier reports.
    let mut failed: Option<String> = None;
    let mut batch = Vec::new();
    // The batch's barriers, each with the failure it reports if the commit succeeds.
    let mut tickets: Vec<(Durable, Option<String>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        if let Err(e) = inner.begin() {
            tracing::warn!(error = %e, "cannot write the tunnel registry");
            failed.get_or_insert(e.0);
        }
        for w in batch.drain(..) {
            let r = match w {
                Write::Put(t) => inner.put(&t),
                Write::Remove(id) => inner.remove(&id).map(|_| ()),
                Write::Barrier(d) => {
                    tickets.push((d, failed.take()));
                    continue;
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot write the tunnel registry");
                failed.get_or_insert(e.0);
            }
        }
        // A failed commit loses the whole batch: every ticket in it reports it, and so
        // does the next one (for the changes after the batch's last barrier).
        let committed = inner.commit();
        if let Err(e) = &committed {
            tracing::warn!(error = %e, "cannot write the tunnel registry");
            failed.get_or_insert(e.0.clone());
        }
        for (d, failure) in tickets.drain(..) {
            let result = match &committed {
                Ok(()) => failure.map_or(Ok(()), Err),
                Err(e) => Err(e.0.clone()),
            };
            d.complete(result);
        }
    }
}

impl Drop for WriteBehind {
    /// Writes what is queued, then stops the thread.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl TunnelStore for WriteBehind {
    fn put(&mut self, tunnel: &Tunnel) -> Result<(), StoreError> {
        self.send(Write::Put(Box::new(tunnel.clone())))?;
        self.memory.put(tunnel)
    }

    fn get(&self, id: &str) -> Result<Option<Tunnel>, StoreError> {
        self.memory.get(id)
    }

    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Tunnel>, StoreError> {
        self.memory.find_by_token(hash)
    }

    fn find_by_client_token(&self, hash: &TokenHash) -> Result<Vec<Tunnel>, StoreError> {
        self.memory.find_by_client_token(hash)
    }

    fn list(&self) -> Result<Vec<Tunnel>, StoreError> {
        self.memory.list()
    }

    fn find_by_pairing(&self, pairing: &Pairing) -> Result<Vec<Tunnel>, StoreError> {
        self.memory.find_by_pairing(pairing)
    }

    fn find_by_thing(&self, thing: &str) -> Result<Vec<Tunnel>, StoreError> {
        self.memory.find_by_thing(thing)
    }

    fn page(
        &self,
        thing: Option<&str>,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Vec<Tunnel>, StoreError> {
        self.memory.page(thing, after, limit)
    }

    fn lifetime_over(&self, now: Timestamp, limit: usize) -> Result<Vec<Tunnel>, StoreError> {
        self.memory.lifetime_over(now, limit)
    }

    fn closed_before(&self, before: Timestamp, limit: usize) -> Result<Vec<String>, StoreError> {
        self.memory.closed_before(before, limit)
    }

    fn remove(&mut self, id: &str) -> Result<bool, StoreError> {
        self.send(Write::Remove(id.to_string()))?;
        self.memory.remove(id)
    }

    fn barrier(&mut self) -> Durable {
        let d = Durable::pending();
        if let Err(e) = self.send(Write::Barrier(d.clone())) {
            d.complete(Err(e.0));
        }
        d
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
