//! The relay's control side: the tunnel registry (tunnels, access tokens, lifetimes), its
//! storage, and the HTTP API that opens, lists, describes, rotates and closes tunnels.
//!
//! Not here: the data plane (TLS + WebSocket endpoint, pairing peers, passing tunnel
//! frames), which runs on the shards and asks [`registry::Registry::admit`] whether a peer
//! may join. See `docs/relay.md`.

pub(crate) mod api;
#[cfg(feature = "bench-internals")]
pub(crate) mod at_scale;
pub(crate) mod client;
pub(crate) mod console;
pub(crate) mod cookie;
pub(crate) mod counters;
pub(crate) mod events;
pub(crate) mod identity;
pub(crate) mod json;
pub(crate) mod registry;
pub(crate) mod secret;
pub(crate) mod service;
pub(crate) mod sqlite;
pub(crate) mod store;
pub(crate) mod things;
pub(crate) mod tunnel;
pub(crate) mod writer;
