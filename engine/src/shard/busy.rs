//! Adaptive busy polling: how long a shard that has run out of work keeps looking for more
//! before it sleeps.
//!
//! Sleeping costs a wake-up when the next packet arrives, and on a virtual machine waking an
//! idle vCPU costs more than the work a forwarder does per packet. Polling for a while skips
//! that wake-up, but burns CPU when nothing comes. The window adapts the way KVM's halt
//! polling does: a shard that keeps being woken soon after it went idle polls longer (up to
//! the configured maximum); one that sleeps past the maximum polls less, down to not at all.
//! Idle connections and sparse traffic therefore cost nothing, and a request/response
//! exchange faster than the maximum is served without sleeping.

use std::time::Duration;

/// The first window after a short idle period (doubled from there).
const GROW_START: Duration = Duration::from_micros(10);

/// The adaptive window. [`BusyPoll::record`] is told how long each idle period lasted.
#[derive(Debug, Clone)]
pub(crate) struct BusyPoll {
    max: Duration,
    window: Duration,
}

impl BusyPoll {
    /// A poller whose window never exceeds `max` (zero turns polling off).
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
        }
    }

    /// How long to poll, from the moment work ran out, before sleeping.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// An idle period ended after `idle` (polling plus sleeping) with new work.
    pub(crate) fn record(&mut self, idle: Duration) {
        if self.max.is_zero() || idle <= self.window {
            // Off, or polling caught it: the window is right.
            return;
        }
        if idle > self.max {
            // Even the longest window would have missed it: polling was wasted.
            self.shrink();
        } else {
            // A short sleep the window just missed: a longer one would have caught it.
            self.window = (self.window * 2).max(GROW_START).min(self.max);
        }
    }

    /// One look while polling took `took`. Longer than the whole window means the thread was
    /// not running for most of it (other threads on this CPU, or the hypervisor running other
    /// guests): on a contended CPU polling takes time others need, so poll less.
    pub(crate) fn looked(&mut self, took: Duration) {
        if took > self.max {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        self.window /= 2;
        if self.window < GROW_START {
            self.window = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn short_idle_periods_grow_the_window_up_to_the_maximum() {
        let mut p = BusyPoll::new(us(100));
        assert_eq!(p.window(), Duration::ZERO);
        p.record(us(40));
        assert_eq!(p.window(), us(10));
        p.record(us(40));
        assert_eq!(p.window(), us(20));
        p.record(us(40));
        assert_eq!(p.window(), us(40));
        // Caught by the window: unchanged.
        p.record(us(40));
        p.record(us(3));
        assert_eq!(p.window(), us(40));
        p.record(us(90));
        p.record(us(90));
        assert_eq!(p.window(), us(100));
    }

    #[test]
    fn long_idle_periods_shrink_it_to_nothing() {
        let mut p = BusyPoll::new(us(100));
        for _ in 0..4 {
            p.record(us(50));
        }
        assert_eq!(p.window(), us(80));
        p.record(Duration::from_millis(5));
        assert_eq!(p.window(), us(40));
        for _ in 0..3 {
            p.record(Duration::from_secs(1));
        }
        assert_eq!(p.window(), Duration::ZERO);
        // And it can grow again.
        p.record(us(5));
        assert_eq!(p.window(), us(10));
    }

    #[test]
    fn a_look_that_lost_the_cpu_shrinks_it() {
        let mut p = BusyPoll::new(us(100));
        for _ in 0..5 {
            p.record(us(90));
        }
        assert_eq!(p.window(), us(100));
        p.looked(us(2));
        assert_eq!(p.window(), us(100));
        p.looked(us(300));
        assert_eq!(p.window(), us(50));
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut p = BusyPoll::new(Duration::ZERO);
        for idle in [us(1), us(50), us(500)] {
            p.record(idle);
            assert_eq!(p.window(), Duration::ZERO);
        }
    }
}
