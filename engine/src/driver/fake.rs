//! A driver for unit tests: it records the ops a shard submits and completes them only when
//! the test says so, with the result the test gives. No kernel is involved.
//!
//! It keeps the real drivers' contract: an op (with its buffer and its fd handle) stays in
//! flight until it completes, and comes back in its [`Completion`]; [`FakeDriver::cancel`]
//! completes every op on the fd with `ECANCELED`, as both real drivers do. The test and the
//! shard share the driver's state, so a test can look at and complete ops while the shard owns
//! the driver (or runs its loop).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use super::{Completion, Op};
use crate::sys::SyscallError;

/// A test's action at each wait.
pub type OnWait = Box<dyn FnMut(&mut FakeState)>;

/// What a test sees of the fake driver.
#[derive(Default)]
pub struct FakeState {
    /// Ops submitted and not yet completed, in submission order.
    pub in_flight: Vec<(u64, Op)>,
    /// Completions waiting for the next [`FakeDriver::wait`].
    pub ready: VecDeque<Completion>,
    /// Every token submitted, in order (kept after completion).
    pub submitted: Vec<u64>,
    /// Every fd [`FakeDriver::cancel`] was called for, in order.
    pub cancelled: Vec<RawFd>,
    /// The timeout of each [`FakeDriver::wait`], in order.
    pub waits: Vec<Option<Duration>>,
    /// Called at each [`FakeDriver::wait`] before it hands back the ready completions: lets a
    /// test act while the shard runs its own loop.
    pub on_wait: Option<OnWait>,
}

impl std::fmt::Debug for FakeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeState")
            .field("in_flight", &self.in_flight)
            .field("ready", &self.ready)
            .field("cancelled", &self.cancelled)
            .field("waits", &self.waits.len())
            .finish_non_exhaustive()
    }
}

impl FakeState {
    /// Completes the in-flight op with `token`: it comes back, with its buffer and fd, with
    /// `result` (and `accepted`, for an accept) at the next wait.
    ///
    /// # Panics
    /// When no op with `token` is in flight.
    pub fn complete(&mut self, token: u64, result: io::Result<usize>, accepted: Option<OwnedFd>) {
        let at = self
            .in_flight
            .iter()
            .position(|(t, _)| *t == token)
            .unwrap_or_else(|| panic!("no op in flight with token {token:#x}: {self:?}"));
        let (token, op) = self.in_flight.remove(at);
        self.ready.push_back(Completion {
            token,
            op,
            result,
            accepted,
        });
    }

    /// Whether an op with `token` is in flight.
    pub fn has(&self, token: u64) -> bool {
        self.in_flight.iter().any(|(t, _)| *t == token)
    }
}

/// The fake driver; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct FakeDriver(pub Rc<RefCell<FakeState>>);

/// The most waits a test's shard loop may make: a loop that does not end fails the test
/// instead of hanging it.
const MAX_WAITS: usize = 1000;

impl FakeDriver {
    /// Records `op`; it stays in flight until the test completes it.
    pub fn submit(&mut self, token: u64, op: Op) {
        let mut s = self.0.borrow_mut();
        s.submitted.push(token);
        s.in_flight.push((token, op));
    }

    /// Completes every op on `fd` with `ECANCELED`, as the real drivers do.
    pub fn cancel(&mut self, fd: RawFd) {
        let mut s = self.0.borrow_mut();
        s.cancelled.push(fd);
        let (gone, kept) = std::mem::take(&mut s.in_flight)
            .into_iter()
            .partition::<Vec<_>, _>(|(_, op)| op.fd() == fd);
        s.in_flight = kept;
        for (token, op) in gone {
            s.ready.push_back(Completion {
                token,
                op,
                result: Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                accepted: None,
            });
        }
    }

    /// Hands back what the test completed. It never sleeps.
    ///
    /// # Panics
    /// When the shard would sleep for ever (no timeout, nothing to hand back), or after
    /// [`MAX_WAITS`] waits: either way the loop under test would not have ended.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> Result<(), SyscallError> {
        let mut s = self.0.borrow_mut();
        s.waits.push(timeout);
        assert!(s.waits.len() <= MAX_WAITS, "the shard loop did not end");
        if let Some(mut f) = s.on_wait.take() {
            f(&mut s);
            s.on_wait.get_or_insert(f);
        }
        assert!(
            timeout.is_some() || !s.ready.is_empty(),
            "the shard would sleep for ever: {s:?}"
        );
        out.extend(s.ready.drain(..));
        Ok(())
    }
}
