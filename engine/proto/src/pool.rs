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

use std::cell::RefCell;

/// Buffers kept per thread; more are freed.
const MAX_POOLED: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Buffers whose bytes up to `len()` are initialised (with leftovers).
    static INITIALIZED: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `cap` bytes.
pub fn take(cap: usize) -> Vec<u8> {
    let pooled = POOL.with(|p| p.borrow_mut().pop());
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

/// Returns a buffer to the pool (its contents are discarded).
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 {
        return;
    }
    buf.clear();
    if pooled() < MAX_POOLED {
        POOL.with(|p| p.borrow_mut().push(buf));
    }
}

/// A buffer of at least `len` initialised bytes, to be written over as a slice: its contents are
/// whatever an earlier user left (zeroes only where it was never written).
pub fn take_initialized(len: usize) -> Vec<u8> {
    let mut b = INITIALIZED
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| take(len));
    if b.len() < len {
        b.reserve_exact(len - b.len());
        b.resize(len, 0);
    }
    b
}

/// Returns a buffer to the pool with its bytes up to `len()` still initialised, for
/// [`take_initialized`].
pub fn give_initialized(buf: Vec<u8>) {
    if buf.is_empty() {
        give(buf);
        return;
    }
    if pooled() < MAX_POOLED {
        INITIALIZED.with(|p| p.borrow_mut().push(buf));
    }
}

/// Buffers pooled on this thread now (both kinds).
pub fn pooled() -> usize {
    POOL.with(|p| p.borrow().len()) + INITIALIZED.with(|p| p.borrow().len())
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
}
