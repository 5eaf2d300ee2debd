//! Giving memory back when load falls.
//!
//! A burst of connections leaves the shard's buffer pool (`splice_proto::pool`) and pipe pool
//! full, and glibc keeps what was freed in the thread's arena. About once a second, while there
//! is anything to give back, the shard frees what sat unused in its pools for a whole period and
//! then asks the allocator to return free pages to the system. A steady load keeps the buffers
//! it uses; an idle shard with nothing left to give back sleeps without waking up for this.

use std::time::{Duration, Instant};

use super::PipePool;
use crate::sys;

/// How long a pooled buffer or pipe may sit unused before it goes (between one and two periods).
pub const PERIOD: Duration = Duration::from_secs(1);

/// When the shard next looks at its pools.
#[derive(Debug)]
pub(crate) struct Reclaim {
    next: Instant,
}

impl Reclaim {
    pub(crate) fn new() -> Self {
        Self {
            next: Instant::now() + PERIOD,
        }
    }

    /// When the shard must wake up to give memory back, if there is anything to give back.
    pub(crate) fn deadline(&self, pipes: &PipePool) -> Option<Instant> {
        (splice_proto::pool::decay_pending() || pipes.decay_pending()).then_some(self.next)
    }

    /// Frees what sat unused in the pools since the last period, once a period.
    pub(crate) fn tick(&mut self, now: Instant, pipes: &mut PipePool) {
        if now < self.next {
            return;
        }
        self.next = now + PERIOD;
        pipes.decay();
        if splice_proto::pool::decay() > 0 {
            sys::release_free_memory();
        }
    }
}
