//! The session's per-peer and per-stream state.

use std::collections::BTreeSet;
use std::time::Instant;

use super::Version;

/// A peer connected on one side.
#[derive(Debug)]
pub(super) struct Peer {
    /// The version its subprotocol named.
    pub(super) version: Version,
    /// Whether its stream messages carry a serviceId, from its first one on (§4: a peer
    /// keeps to one); `None` before it has sent one.
    pub(super) with_service_id: Option<bool>,
    /// Per service: whether a stream has been started on this connection (by it, for the
    /// source; towards it, for the destination). DATA before that breaks the rules; DATA after
    /// it for a stream that is not open is stale, and dropped.
    pub(super) started: Vec<bool>,
    /// When it last sent anything.
    pub(super) last_heard: Instant,
    /// Whether it has been pinged since.
    pub(super) pinged: bool,
    /// Being closed (a rule break, the tunnel's close, idle): its frames are dropped.
    pub(super) closing: bool,
}

impl Peer {
    pub(super) fn new(version: Version, services: usize, now: Instant) -> Peer {
        Peer {
            version,
            with_service_id: None,
            started: vec![false; services],
            last_heard: now,
            pinged: false,
            closing: false,
        }
    }
}

/// The open stream of one service, with its connections (V3; a stream of a V1 or V2 source
/// has connection 1 only, as a V3 receiver counts).
#[derive(Debug, Clone)]
pub(super) struct Stream {
    pub(super) id: i32,
    /// The connections open now.
    open: BTreeSet<u32>,
    /// The highest connectionId started in the stream (refused ones too): a connection up to
    /// it that is not open has ended, and its frames are stale; one above was never started.
    highest: u32,
}

impl Stream {
    pub(super) fn new(id: i32, connection: u32) -> Stream {
        Stream {
            id,
            open: BTreeSet::from([connection]),
            highest: connection,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.open.len()
    }

    pub(super) fn contains(&self, connection: u32) -> bool {
        self.open.contains(&connection)
    }

    pub(super) fn was_started(&self, connection: u32) -> bool {
        connection <= self.highest
    }

    /// Opens `connection`, unless `max` are open already. Either way it counts as started.
    pub(super) fn start(&mut self, connection: u32, max: usize) -> bool {
        self.highest = self.highest.max(connection);
        if self.open.len() >= max {
            return false;
        }
        self.open.insert(connection);
        true
    }

    /// Ends `connection`; whether it was open.
    pub(super) fn end(&mut self, connection: u32) -> bool {
        self.open.remove(&connection)
    }
}
