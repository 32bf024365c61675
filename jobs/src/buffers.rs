//! Buffers kept for reuse: the send stage's rendered bodies and the provider's request
//! bodies.
//!
//! Both are the largest blocks the send stage allocates (a rendered HTML body is a few
//! kilobytes, a batch request ~1.3 MB per 100 messages of the bench's template), made on
//! one thread and freed on another once the provider answers. The allocator gives the
//! pages of such blocks back to the system as soon as they are free, so every new one was
//! mapped, zeroed and faulted in page by page: 7.9% of the machine's samples at 1,000,000
//! recipients (`mailing bench`, BENCHMARKS.md, twentieth stop). A buffer kept here stays
//! faulted in for the next message.
//!
//! A [`BufferPool`] keeps at most `budget` bytes of capacity and never a buffer larger
//! than `max_buffer`, so what it holds is bounded whatever the campaign's size or
//! template; a buffer it cannot keep is freed as before.

use std::sync::{Mutex, PoisonError};

/// Empty buffers waiting to be reused, bounded in bytes.
#[derive(Debug)]
pub struct BufferPool {
    kept: Mutex<Kept>,
    budget: usize,
    max_buffer: usize,
}

#[derive(Debug, Default)]
struct Kept {
    buffers: Vec<Vec<u8>>,
    /// The sum of the kept buffers' capacities.
    bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `budget` bytes of buffers, none larger than `max_buffer`.
    pub fn new(budget: usize, max_buffer: usize) -> Self {
        BufferPool {
            kept: Mutex::new(Kept::default()),
            budget,
            max_buffer: max_buffer.min(budget),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding the lock leaves a valid list; keep using it.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty buffer: the one given back last, or a new one.
    pub fn take(&self) -> Vec<u8> {
        let mut kept = self.kept();
        match kept.buffers.pop() {
            Some(buffer) => {
                kept.bytes -= buffer.capacity();
                buffer
            }
            None => Vec::new(),
        }
    }

    /// Keeps `buffer` (cleared) for a later [`BufferPool::take`], unless it is larger than
    /// the pool's `max_buffer` or the budget is spent; then it is freed.
    pub fn give(&self, buffer: Vec<u8>) {
        self.give_all(std::iter::once(buffer));
    }

    /// [`BufferPool::give`] for several buffers, under one lock.
    pub fn give_all(&self, buffers: impl IntoIterator<Item = Vec<u8>>) {
        let mut kept = self.kept();
        for mut buffer in buffers {
            let size = buffer.capacity();
            if size == 0 || size > self.max_buffer || kept.bytes + size > self.budget {
                continue;
            }
            buffer.clear();
            kept.bytes += size;
            kept.buffers.push(buffer);
        }
    }

    /// The bytes of capacity kept now.
    #[cfg(test)]
    pub(crate) fn kept_bytes(&self) -> usize {
        self.kept().bytes
    }

    /// How many buffers are kept now.
    #[cfg(test)]
    pub(crate) fn kept_buffers(&self) -> usize {
        self.kept().buffers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_with_its_capacity() {
        let pool = BufferPool::new(1 << 20, 1 << 16);
        let mut buffer = pool.take();
        assert_eq!(buffer.capacity(), 0, "an empty pool hands out new buffers");
        buffer.extend_from_slice(&[7; 5000]);
        let (at, capacity) = (buffer.as_ptr(), buffer.capacity());
        pool.give(buffer);
        assert_eq!((pool.kept_buffers(), pool.kept_bytes()), (1, capacity));
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!((again.as_ptr(), again.capacity()), (at, capacity));
        assert_eq!((pool.kept_buffers(), pool.kept_bytes()), (0, 0));
    }

    #[test]
    fn the_last_buffer_given_back_is_taken_first() {
        let pool = BufferPool::new(1 << 20, 1 << 16);
        let first = Vec::<u8>::with_capacity(100);
        let second = Vec::<u8>::with_capacity(200);
        let second_at = second.as_ptr();
        pool.give_all([first, second]);
        let taken = pool.take();
        assert_eq!(taken.as_ptr(), second_at);
    }

    #[test]
    fn what_is_kept_stays_within_the_budget_and_the_largest_buffer() {
        let pool = BufferPool::new(10_000, 4_000);
        // Too large for the pool: freed, not kept.
        pool.give(Vec::with_capacity(4_001));
        // Nothing to keep in a buffer that never held anything.
        pool.give(Vec::new());
        assert_eq!(pool.kept_buffers(), 0);
        pool.give_all((0..5).map(|_| Vec::with_capacity(3_000)));
        assert_eq!(
            pool.kept_buffers(),
            3,
            "a fourth 3,000-byte buffer exceeds 10,000"
        );
        assert!(pool.kept_bytes() <= 10_000);
        // A smaller one still fits in what is left of the budget.
        pool.give(Vec::with_capacity(500));
        assert_eq!(pool.kept_buffers(), 4);
        assert!(pool.kept_bytes() <= 10_000);
        // Taking gives the budget back.
        let taken = pool.take();
        assert_eq!(taken.capacity(), 500);
        pool.give(Vec::with_capacity(1_000));
        assert_eq!(pool.kept_buffers(), 4);
        assert!(pool.kept_bytes() <= 10_000);
    }

    #[test]
    fn a_kept_buffer_comes_back_cleared() {
        let pool = BufferPool::new(1 << 20, 1 << 16);
        pool.give(b"secret of another recipient".to_vec());
        assert!(pool.take().is_empty());
    }
}
