//! Registries for `splice-bench`'s `registry` benchmark: what the calls the relay makes
//! under the registry's lock cost as the number of tunnels grows (a peer's admission on a
//! shard, the expiry timer's sweep every second, a device's lookup, a part of a listing),
//! what a whole listing costs, and how long a burst of admissions takes to reach the disk
//! (peers coming back after a relay restart).

use std::path::Path;

use super::registry::{Limits, OpenRequest, Registry};
use super::secret::Secret;
use super::sqlite::SqliteStore;
use super::store::MemoryStore;
use super::tunnel::{Side, Timestamp};
use super::writer::WriteBehind;

/// A registry on the memory store (which the relay's SQLite store answers from) with `n`
/// tunnels opened, half of them closed since, none due for expiry or forgetting.
pub struct RegistryAtScale {
    registry: Registry,
    /// A source token of some of the open tunnels, with the client token its admissions
    /// bring (so that it can be admitted again; a client token binds one open tunnel).
    tokens: Vec<(Secret, String)>,
    now: Timestamp,
    next: usize,
}

impl std::fmt::Debug for RegistryAtScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAtScale")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl RegistryAtScale {
    /// Opens `n` tunnels (at least 2), two per thing (`thing-<i / 2>`), and closes every
    /// other one.
    pub fn new(n: usize) -> Self {
        let registry = Registry::new(Box::new(MemoryStore::default()), Limits::default());
        let start = Timestamp::now();
        let mut tokens = Vec::new();
        for i in 0..n.max(2) {
            let req = OpenRequest {
                thing_name: Some(format!("thing-{}", i / 2)),
                services: vec!["ssh".into()],
                ..OpenRequest::default()
            };
            let opened = registry.open(req, start).expect("open a tunnel");
            if i % 2 == 0 {
                registry
                    .close(&opened.tunnel_id, false, start)
                    .expect("close a tunnel");
            } else if tokens.len() < 1000 {
                tokens.push((opened.source_token, format!("bench-client-token-{i:020}")));
            }
        }
        Self {
            registry,
            tokens,
            now: start,
            next: 0,
        }
    }

    /// One peer's admission (the next token in turn, with its client token).
    pub fn admit_one(&mut self) {
        let (token, client) = &self.tokens[self.next % self.tokens.len()];
        self.next += 1;
        self.registry
            .admit(token.expose(), Side::Source, Some(client), self.now)
            .expect("admitted");
    }

    /// One tick of the expiry timer: the lifetimes that ended, and the closed tunnels past
    /// their retention (none are).
    pub fn sweep(&self) {
        let closed = self.registry.expire(self.now).expect("expire");
        let forgotten = self.registry.forget_closed(self.now).expect("forget");
        assert!(closed.is_empty() && forgotten == 0);
    }

    /// The tunnels of one thing, as a device's standby connect looks them up.
    pub fn of_thing(&self) -> usize {
        let found = self.registry.of_thing("thing-7").expect("of_thing").len();
        assert_eq!(found, 2);
        found
    }

    /// `ListTunnels`' first page of `limit` tunnels, newest first, in one hold of the lock.
    pub fn page(&self, limit: usize) -> usize {
        let page = self
            .registry
            .page(None, None, limit, self.now)
            .expect("page");
        page.len()
    }

    /// Every tunnel, as `ListTunnels` without a page size and the console read them.
    pub fn list_all(&self) -> usize {
        self.registry.list(None, self.now).expect("list").len()
    }
}

/// A registry as the relay runs it, on a SQLite file behind the write-behind store, with
/// `n` open tunnels whose sources have connected once with a client token.
pub struct RegistryOnDisk {
    registry: Registry,
    tokens: Vec<(Secret, String)>,
}

impl std::fmt::Debug for RegistryOnDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOnDisk")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl RegistryOnDisk {
    /// Creates the SQLite file `path` (which must not exist) with `n` tunnels.
    pub fn new(path: &Path, n: usize) -> Self {
        let file = SqliteStore::open(path).expect("create the SQLite file");
        let store = WriteBehind::new(Box::new(file)).expect("write-behind");
        let registry = Registry::new(Box::new(store), Limits::default());
        let now = Timestamp::now();
        let tokens: Vec<(Secret, String)> = (0..n)
            .map(|i| {
                let req = OpenRequest {
                    services: vec!["ssh".into()],
                    ..OpenRequest::default()
                };
                let opened = registry.open(req, now).expect("open a tunnel");
                (opened.source_token, format!("bench-client-token-{i:020}"))
            })
            .collect();
        let this = Self { registry, tokens };
        this.reconnect_all();
        this
    }

    /// Every source reconnects at once (as after a relay restart); returns once the last
    /// admission is on disk, which is when the relay would send that peer its 101.
    pub fn reconnect_all(&self) {
        let now = Timestamp::now();
        let mut last = None;
        for (token, client) in &self.tokens {
            let admitted = self
                .registry
                .admit(token.expose(), Side::Source, Some(client), now)
                .expect("admitted");
            last = Some(admitted.durable);
        }
        if let Some(d) = last {
            d.wait().expect("on disk");
        }
    }
}
