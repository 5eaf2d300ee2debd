//! A per-thread pool of byte buffers.
//!
//! A connection holds a buffer only while bytes are in it (or an operation is filling it), so
//! thousands of idle connections cost no buffer memory, and a busy shard recycles the same few
//! buffers instead of going back to the allocator. Each shard is one thread, so a thread-local
//! pool is a per-shard pool with no locking.

use std::cell::RefCell;

/// Buffers kept per thread; more are freed.
const MAX_POOLED: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
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
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(buf);
        }
    });
}

/// Buffers pooled on this thread now.
pub fn pooled() -> usize {
    POOL.with(|p| p.borrow().len())
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
}
