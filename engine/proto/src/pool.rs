//! A per-thread pool of byte buffers.
//!
//! A connection holds a buffer only while bytes are in it (or an operation is filling it), so
//! thousands of idle connections cost no buffer memory, and a busy shard recycles the same few
//! buffers instead of going back to the allocator. Each shard is one thread, so a thread-local
//! pool is a per-shard pool with no locking.
//!
//! Buffers that APIs write into as `&mut [u8]` (rustls's `WriteTraffic::encrypt`) must be
//! initialised first, and safe code can only do that by writing every byte. Those come from
//! [`take_initialized`] and go back with [`give_initialized`], which keeps them initialised, so
//! that a buffer is zeroed once in its life rather than once per use.
//!
//! # What the pool keeps
//!
//! At most [`MAX_POOLED`] buffers and [`MAX_POOLED_BYTES`] bytes; more given back are freed.
//! When load falls, the owner calls [`decay`] now and then (a shard does so about once a
//! second): the buffers that sat in the pool through the whole period since the last call were
//! not needed, and are freed, down to [`KEPT_IDLE_BYTES`]. So a pool sized by a burst of
//! connections gives its memory back within two periods of the burst ending, while a steady
//! load keeps the buffers it uses. The pool reads no clock: the caller chooses the period.

use std::cell::RefCell;

/// Buffers kept per thread; more are freed.
pub const MAX_POOLED: usize = 256;

/// Bytes of buffer capacity kept per thread (64 buffers of 256 KiB); more are freed.
pub const MAX_POOLED_BYTES: usize = 16 * 1024 * 1024;

/// Bytes that [`decay`] leaves in the pool however long they sat unused (4 buffers of
/// 256 KiB), so that a quiet shard's next connection does not go to the allocator.
pub const KEPT_IDLE_BYTES: usize = 1024 * 1024;

/// One kind of pooled buffer.
#[derive(Default)]
struct Stack {
    bufs: Vec<Vec<u8>>,
    /// The fewest buffers this stack held since the last [`decay`]: that many were not needed.
    low: usize,
}

impl Stack {
    const fn new() -> Self {
        Self {
            bufs: Vec::new(),
            low: 0,
        }
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        let b = self.bufs.pop()?;
        self.low = self.low.min(self.bufs.len());
        Some(b)
    }
}

struct Pool {
    /// Empty buffers.
    plain: Stack,
    /// Buffers whose bytes up to `len()` are initialised (with leftovers).
    init: Stack,
    /// Capacity of every pooled buffer.
    bytes: usize,
    /// Capacity freed (given back to the allocator) since the last [`decay`].
    released: usize,
}

impl Pool {
    fn len(&self) -> usize {
        self.plain.bufs.len() + self.init.bufs.len()
    }

    fn pop(&mut self, init: bool) -> Option<Vec<u8>> {
        let b = if init {
            self.init.pop()
        } else {
            self.plain.pop()
        }?;
        self.bytes -= b.capacity();
        Some(b)
    }

    /// Keeps `buf` if the bounds allow, else frees it.
    fn push(&mut self, buf: Vec<u8>, init: bool) {
        let cap = buf.capacity();
        if self.len() < MAX_POOLED && self.bytes + cap <= MAX_POOLED_BYTES {
            self.bytes += cap;
            if init {
                self.init.bufs.push(buf);
            } else {
                self.plain.bufs.push(buf);
            }
        } else {
            self.released += cap;
        }
    }

    fn decay(&mut self) -> usize {
        let mut freed = 0;
        for stack in [&mut self.plain, &mut self.init] {
            // The oldest buffers are at the bottom; any `low` of them went unused all period.
            let mut n = stack.low;
            while n > 0 && self.bytes > KEPT_IDLE_BYTES {
                let b = stack.bufs.remove(0);
                self.bytes -= b.capacity();
                freed += b.capacity();
                n -= 1;
            }
            stack.low = stack.bufs.len();
        }
        std::mem::take(&mut self.released) + freed
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            plain: Stack::new(),
            init: Stack::new(),
            bytes: 0,
            released: 0,
        })
    };
}

/// An empty buffer with room for at least `cap` bytes.
pub fn take(cap: usize) -> Vec<u8> {
    let pooled = POOL.with(|p| p.borrow_mut().pop(false));
    match pooled {
        Some(mut b) => {
            if b.capacity() < cap {
                // Exact: `reserve` would double a slightly small buffer (256 KiB -> 512 KiB).
                b.reserve_exact(cap);
            }
            b
        }
        None => Vec::with_capacity(cap),
    }
}

/// Returns a buffer to the pool (its contents are discarded); it is freed instead when the
/// pool is full.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 {
        return;
    }
    buf.clear();
    POOL.with(|p| p.borrow_mut().push(buf, false));
}

/// A buffer of at least `len` initialised bytes, to be written over as a slice: its contents are
/// whatever an earlier user left (zeroes only where it was never written).
pub fn take_initialized(len: usize) -> Vec<u8> {
    let mut b = POOL
        .with(|p| p.borrow_mut().pop(true))
        .unwrap_or_else(|| take(len));
    if b.len() < len {
        b.reserve_exact(len - b.len());
        b.resize(len, 0);
    }
    b
}

/// Returns a buffer to the pool with its bytes up to `len()` still initialised, for
/// [`take_initialized`]; it is freed instead when the pool is full.
pub fn give_initialized(buf: Vec<u8>) {
    if buf.is_empty() {
        give(buf);
        return;
    }
    POOL.with(|p| p.borrow_mut().push(buf, true));
}

/// Frees the buffers that stayed in this thread's pool since the last call (down to
/// [`KEPT_IDLE_BYTES`]). Returns the bytes of capacity the pool freed since the last call, these
/// and those given back while it was full: a hint for the caller to ask the allocator to return
/// free memory to the system. Call it periodically (the period is the time a buffer may sit
/// unused before it goes); a call is cheap when nothing is to be freed.
pub fn decay() -> usize {
    POOL.with(|p| p.borrow_mut().decay())
}

/// Whether a [`decay`] call has anything to do: buffers above [`KEPT_IDLE_BYTES`] to look at, or
/// freed bytes to report. While this is false, an idle thread need not wake up for it.
pub fn decay_pending() -> bool {
    POOL.with(|p| {
        let p = p.borrow();
        p.bytes > KEPT_IDLE_BYTES || p.released > 0
    })
}

/// Buffers pooled on this thread now (both kinds).
pub fn pooled() -> usize {
    POOL.with(|p| p.borrow().len())
}

/// Bytes of capacity pooled on this thread now.
pub fn pooled_bytes() -> usize {
    POOL.with(|p| p.borrow().bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_and_bounds() {
        let b = take(1000);
        assert!(b.capacity() >= 1000);
        let before = pooled();
        give(b);
        assert_eq!(pooled(), before + 1);
        let c = take(10);
        assert!(c.capacity() >= 1000, "the pooled buffer came back");
        assert!(c.is_empty());
        give(c);
        // A pooled buffer a little too small grows to the size asked for, not to double.
        let d = take(1500);
        assert!(
            d.capacity() >= 1500 && d.capacity() < 2000,
            "{}",
            d.capacity()
        );
        for _ in 0..(MAX_POOLED + 10) {
            give(Vec::with_capacity(8));
        }
        assert_eq!(pooled(), MAX_POOLED);
        give(Vec::new()); // nothing to keep
        assert_eq!(pooled(), MAX_POOLED);
    }

    #[test]
    fn initialized_buffers_are_not_zeroed_again() {
        let mut b = take_initialized(1000);
        assert_eq!(b.len(), 1000);
        assert!(b.iter().all(|&x| x == 0), "fresh room is zeroed");
        b[999] = 7;
        give_initialized(b);
        // The same buffer, as it was left: nothing was written over it.
        let c = take_initialized(500);
        assert_eq!(c.len(), 1000);
        assert_eq!(c[999], 7);
        // Asked for more than it holds: it grows, and only the new part is zeroed.
        give_initialized(c);
        let d = take_initialized(1500);
        assert_eq!((d.len(), d[999], d[1499]), (1500, 7, 0));
        // Both kinds count against the one bound.
        let before = pooled();
        give_initialized(d);
        give(Vec::with_capacity(8));
        assert_eq!(pooled(), before + 2);
        for _ in 0..(MAX_POOLED + 10) {
            give_initialized(vec![1; 8]);
        }
        assert_eq!(pooled(), MAX_POOLED);
    }

    const BIG: usize = 256 * 1024;

    /// Empties this thread's pool (tests share nothing across threads, but one test may take
    /// several steps).
    fn drain() {
        while pooled() > 0 {
            drop(POOL.with(|p| {
                let mut p = p.borrow_mut();
                p.pop(false).or_else(|| p.pop(true))
            }));
        }
        decay();
    }

    #[test]
    fn caps_the_bytes_kept() {
        drain();
        let n = MAX_POOLED_BYTES / BIG;
        let bufs: Vec<_> = (0..n + 3).map(|_| take(BIG)).collect();
        for b in bufs {
            give(b);
        }
        assert_eq!(pooled(), n, "no more than MAX_POOLED_BYTES of buffers kept");
        assert!(pooled_bytes() <= MAX_POOLED_BYTES);
        assert!(decay_pending());
        // Nothing sat a whole period yet: decay only reports the three over the cap.
        assert_eq!(decay(), 3 * BIG, "the three over the cap were freed");
        assert_eq!(pooled(), n);
        // Initialised buffers count against the same bytes.
        give_initialized(vec![1; BIG]);
        assert_eq!(pooled(), n);
        let (a, b) = (take(BIG), take(BIG));
        // The one over the cap, and those that sat unused all period, down to the floor.
        assert_eq!(decay(), BIG + (n - 2 - KEPT_IDLE_BYTES / BIG) * BIG);
        give(a);
        give(b);
    }

    #[test]
    fn decay_frees_what_sat_unused_and_keeps_what_is_used() {
        drain();
        // A burst of 40 connections' buffers comes back.
        let burst: Vec<_> = (0..40).map(|_| take(BIG)).collect();
        let burst_init: Vec<_> = (0..10).map(|_| take_initialized(BIG)).collect();
        for b in burst {
            give(b);
        }
        for b in burst_init {
            give_initialized(b);
        }
        assert_eq!(pooled(), 50);
        // The first period after it: the pool had not yet seen a full period, so it only
        // starts counting.
        decay();
        assert_eq!(pooled(), 50);
        // Two buffers in use at a time through the next period (a steady, small load).
        for _ in 0..100 {
            let (a, b) = (take(BIG), take_initialized(BIG));
            give(a);
            give_initialized(b);
        }
        let freed = decay();
        // 48 sat unused all period and go, but the last KEPT_IDLE_BYTES stay.
        let kept = KEPT_IDLE_BYTES / BIG;
        assert_eq!(pooled(), kept.max(2), "freed {freed}");
        assert_eq!(freed, (50 - kept.max(2)) * BIG);
        assert!(pooled_bytes() <= KEPT_IDLE_BYTES);
        assert!(
            !decay_pending(),
            "nothing left for decay: an idle shard may sleep"
        );
        // The buffers still in use each period are never freed.
        for _ in 0..5 {
            let (a, b) = (take(BIG), take_initialized(BIG));
            give(a);
            give_initialized(b);
            assert_eq!(decay(), 0, "nothing in use was freed");
        }
        assert!(pooled() >= 2);
    }

    #[test]
    fn decay_keeps_a_busy_pool() {
        drain();
        // Twenty buffers in use at once every period: none is freed.
        for _ in 0..3 {
            let bufs: Vec<_> = (0..20).map(|_| take(BIG)).collect();
            for b in bufs {
                give(b);
            }
            assert_eq!(decay(), 0);
        }
        assert_eq!(pooled(), 20);
    }
}
