//! The agents' reconnect policy (§8, issue 11), as pure functions: what to do when a tunnel
//! connection ends or cannot be made, and how long to wait.
//!
//! localproxy reconnects at once after a drop and every 2.5 s after a failed handshake, for
//! ever; it gives up on a close frame or an HTTP 4xx. Ours waits an exponentially growing,
//! jittered delay (never a tight loop), reuses the client token (the access token is
//! single-use without one, §2), and gives up on a close frame or a 4xx unless told to keep
//! trying.

use std::time::Duration;

/// The delays: `base`, doubled on each failed attempt, at most `max`; each delay is drawn in
/// its upper half by the jitter (so it never falls to zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0 for the first retry): `min(max, base * 2^attempt)`,
    /// scaled into its upper half by `jitter` (0.0 to 1.0; values outside are clamped): half of
    /// it at 0.0, all of it at 1.0.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self
            .base
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .map_or(self.max, |d| d.min(self.max));
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        ceiling / 2 + (ceiling / 2).mul_f64(jitter)
    }
}

/// How a tunnel connection (or an attempt at one) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The relay sent a WebSocket close frame: the tunnel is closed or expired. (A close
    /// with 1001, "going away", is a relay shutting down, not the tunnel ending: see
    /// [`End::from_close`].)
    Closed,
    /// The upgrade was answered with this HTTP status (not 101).
    Status(u16),
    /// TCP, TLS or WebSocket trouble, a bad frame, a connect error: transient.
    Dropped,
}

impl End {
    /// How a close frame with this code ends the connection. 1001 ("going away", RFC 6455
    /// §7.4.1) says the relay itself is going down, for a restart or an upgrade: the tunnel
    /// lives on in its registry, so it is a drop and the agent reconnects. localproxy gives up
    /// on any close frame; a relay restart should not end every agent. Any other code, or
    /// none, is the tunnel closed or expired.
    pub fn from_close(code: Option<u16>) -> End {
        match code {
            Some(crate::ws::close_code::GOING_AWAY) => End::Dropped,
            _ => End::Closed,
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Connect again after this delay, with the same access token and client token.
    Retry(Duration),
    /// Give up: the tunnel is closed, or the relay refused what retrying cannot fix.
    Stop,
}

/// The jitter for [`Reconnect::handle_end`]: a xorshift64 sequence from a seed the host picks
/// (a clock, random bytes), with values from 0.0 up to (not including) 1.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jitter(u64);

impl Jitter {
    /// A sequence from `seed` (any value: xorshift needs a state other than zero, so its
    /// lowest bit is set).
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// The next value.
    pub fn sample(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The reconnect state of one agent: how many attempts failed in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// The delays.
    pub backoff: Backoff,
    /// Retry after a close frame or a 4xx too (the "unless told to keep trying").
    pub keep_trying: bool,
    failures: u32,
}

impl Reconnect {
    /// A policy with no failure yet.
    pub fn new(backoff: Backoff, keep_trying: bool) -> Self {
        Reconnect {
            backoff,
            keep_trying,
            failures: 0,
        }
    }

    /// Call when a tunnel connection is up (the relay's 101 arrived): the next drop retries
    /// from the shortest delay.
    pub fn handle_connected(&mut self) {
        self.failures = 0;
    }

    /// Call when a tunnel connection ended or an attempt failed; `jitter` is a random number
    /// in 0.0 to 1.0 the caller draws. Says whether and when to connect again.
    pub fn handle_end(&mut self, end: End, jitter: f64) -> Next {
        let give_up = match end {
            End::Closed => true,
            End::Status(status) => (400..500).contains(&status),
            End::Dropped => false,
        };
        if give_up && !self.keep_trying {
            return Next::Stop;
        }
        let delay = self.backoff.delay(self.failures, jitter);
        self.failures = self.failures.saturating_add(1);
        Next::Retry(delay)
    }

    /// Failed attempts in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}
