//! A shard's pool of pipes for the splice pump.
//!
//! Every kTLS connection needs two pipes (one per direction) for `splice(2)`. Creating one is
//! `pipe2` plus an `F_SETPIPE_SZ` that allocates the kernel's ring of buffers, and closing it
//! frees them again; a shard that keeps the pipes of ended connections hands them to the next
//! ones instead. The pool belongs to one shard (one thread), so it needs no lock.

use std::os::fd::OwnedFd;

use crate::error::SyscallError;
use crate::sys;

/// Bytes a splice pump's pipe holds (asked for with `F_SETPIPE_SZ` when the pipe is made).
pub const PIPE_SIZE: usize = 256 * 1024;

/// Pipes `(read end, write end)` kept for reuse, up to [`PipePool::MAX_POOLED`]; those that sat
/// unused between two [`PipePool::decay`] calls are closed, down to [`PipePool::KEPT_IDLE`].
#[derive(Debug)]
pub struct PipePool {
    pipes: Vec<(OwnedFd, OwnedFd)>,
    size: usize,
    /// The fewest pipes pooled since the last `decay`: that many were not needed.
    low: usize,
}

impl PipePool {
    /// Most pipes kept; more given back are closed. Two pipes per connection, so the pool
    /// covers the churn of 32 kTLS connections without holding many fds when idle.
    pub const MAX_POOLED: usize = 64;

    /// Pipes that [`PipePool::decay`] leaves however long they sat unused (two connections').
    pub const KEPT_IDLE: usize = 4;

    /// An empty pool whose new pipes are resized to `size` bytes (see [`sys::pipe`]).
    pub fn new(size: usize) -> Self {
        Self {
            pipes: Vec::new(),
            size,
            low: 0,
        }
    }

    /// A pipe from the pool, or a new nonblocking one of the pool's size when it is empty.
    pub fn take(&mut self) -> Result<(OwnedFd, OwnedFd), SyscallError> {
        match self.pipes.pop() {
            Some(p) => {
                self.low = self.low.min(self.pipes.len());
                Ok(p)
            }
            None => sys::pipe(self.size),
        }
    }

    /// Returns a pipe for reuse; it is closed instead when the pool is full.
    ///
    /// Give back only empty pipes: the next connection would otherwise receive the bytes left
    /// in it. The pool does not check (that would cost a system call).
    pub fn give(&mut self, pipe: (OwnedFd, OwnedFd)) {
        if self.pipes.len() < Self::MAX_POOLED {
            self.pipes.push(pipe);
        }
    }

    /// Closes the pipes that stayed in the pool since the last call (the oldest first, down to
    /// [`PipePool::KEPT_IDLE`]), so that a burst of kTLS connections does not keep its pipes'
    /// kernel buffers (and fds) for ever. Returns how many were closed. Call it periodically.
    pub fn decay(&mut self) -> usize {
        let n = self
            .low
            .min(self.pipes.len().saturating_sub(Self::KEPT_IDLE));
        self.pipes.drain(..n);
        self.low = self.pipes.len();
        n
    }

    /// Whether a [`PipePool::decay`] call could close anything.
    pub fn decay_pending(&self) -> bool {
        self.pipes.len() > Self::KEPT_IDLE
    }

    /// Pipes in the pool now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pipes.len()
    }

    /// Whether the pool holds no pipe.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pipes.is_empty()
    }
}

impl Default for PipePool {
    /// An empty pool of [`PIPE_SIZE`] pipes.
    fn default() -> Self {
        Self::new(PIPE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn reuses_pipes_and_caps_the_pool() {
        let mut pool = PipePool::default();
        assert!(pool.is_empty());

        // An empty pool makes a working pipe.
        let (rd, wr) = pool.take().unwrap();
        let (rd_raw, wr_raw) = (rd.as_raw_fd(), wr.as_raw_fd());
        let (mut r, mut w) = (File::from(rd), File::from(wr));
        w.write_all(b"ping").unwrap();
        let mut got = [0; 4];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");

        // A pipe given back is the next one taken.
        pool.give((r.into(), w.into()));
        assert_eq!(pool.len(), 1);
        let (rd, wr) = pool.take().unwrap();
        assert_eq!((rd.as_raw_fd(), wr.as_raw_fd()), (rd_raw, wr_raw));
        assert!(pool.is_empty());
        pool.give((rd, wr));

        // Past the cap, pipes given back are closed rather than kept.
        let extra: Vec<_> = (0..PipePool::MAX_POOLED + 5)
            .map(|_| sys::pipe(4096).unwrap())
            .collect();
        for p in extra {
            pool.give(p);
        }
        assert_eq!(pool.len(), PipePool::MAX_POOLED);
        let taken: Vec<_> = (0..PipePool::MAX_POOLED)
            .map(|_| pool.take().unwrap())
            .collect();
        assert!(pool.is_empty());
        assert!(
            taken
                .iter()
                .any(|(rd, wr)| (rd.as_raw_fd(), wr.as_raw_fd()) == (rd_raw, wr_raw)),
            "the first pipe stayed in the pool"
        );
    }

    #[test]
    fn decay_closes_pipes_that_sat_unused() {
        let mut pool = PipePool::new(4096);
        // A burst of 20 pipes comes back.
        let burst: Vec<_> = (0..20).map(|_| pool.take().unwrap()).collect();
        let raw: Vec<_> = burst.iter().map(|(r, _)| r.as_raw_fd()).collect();
        for p in burst {
            pool.give(p);
        }
        assert!(pool.decay_pending());
        // The period in which they were used: nothing is closed yet.
        assert_eq!(pool.decay(), 0);
        assert_eq!(pool.len(), 20);
        // A period with two in use at a time: the rest sat unused and go, the oldest first.
        for _ in 0..10 {
            let (a, b) = (pool.take().unwrap(), pool.take().unwrap());
            pool.give(b);
            pool.give(a);
        }
        assert_eq!(pool.decay(), 20 - PipePool::KEPT_IDLE);
        assert_eq!(pool.len(), PipePool::KEPT_IDLE);
        assert!(!pool.decay_pending());
        // The most recently used ones stayed: the oldest were closed.
        let kept: Vec<_> = (0..PipePool::KEPT_IDLE)
            .map(|_| pool.take().unwrap())
            .collect();
        let mut kept_raw: Vec<_> = kept.iter().map(|(r, _)| r.as_raw_fd()).collect();
        kept_raw.sort();
        let mut newest = raw[20 - PipePool::KEPT_IDLE..].to_vec();
        newest.sort();
        assert_eq!(kept_raw, newest);
    }
}
