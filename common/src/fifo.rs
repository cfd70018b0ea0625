// SPDX-License-Identifier: MIT
//! A bounded first-in first-out queue of distinct keys, in a fixed array:
//! the exports whose newest UPDATE waits for room on the ring
//! ([`super::ledger::Ledger::update`]).
//!
//! Each key is at most once in the queue; queueing a key that is already
//! there moves it to the back. Its capacity is that of the largest ring
//! ([`super::channel::MAX_OUTSTANDING`] slots): the queue drains into the
//! ring, so more buffers waiting than a ring holds is a producer far ahead
//! of its peer, whose next frame is refused (`EAGAIN`) rather than held.
//! Every operation is O(capacity) at worst and allocates nothing.

/// Keys the queue holds at most.
pub const CAPACITY: usize = super::channel::MAX_OUTSTANDING;

/// The queue is full: the key was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The queue.
///
/// # Invariants
///
/// `len <= CAPACITY`; the keys are `keys[(head + i) % CAPACITY]` for
/// `i < len`, all distinct.
#[derive(Debug, Clone)]
pub struct Fifo {
    keys: [u64; CAPACITY],
    head: usize,
    len: usize,
}

impl Default for Fifo {
    fn default() -> Self {
        Fifo {
            keys: [0; CAPACITY],
            head: 0,
            len: 0,
        }
    }
}

impl Fifo {
    /// Keys queued.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, i: usize) -> usize {
        (self.head + i) % CAPACITY
    }

    fn position(&self, key: u64) -> Option<usize> {
        (0..self.len).find(|&i| self.keys[self.slot(i)] == key)
    }

    /// Takes `key` out, wherever it is; whether it was there.
    pub fn remove(&mut self, key: u64) -> bool {
        let Some(at) = self.position(key) else {
            return false;
        };
        // Close the gap: the keys behind it move up one place.
        for i in at..self.len - 1 {
            let (to, from) = (self.slot(i), self.slot(i + 1));
            self.keys[to] = self.keys[from];
        }
        // INVARIANT: one key fewer, the others still distinct and in order.
        self.len -= 1;
        true
    }

    /// Queues `key` at the back, taking it out of its earlier place first.
    ///
    /// # Errors
    ///
    /// [`Full`] when `key` is not queued and the queue is full; nothing
    /// changes then.
    pub fn push_back(&mut self, key: u64) -> Result<(), Full> {
        if self.len == CAPACITY && self.position(key).is_none() {
            return Err(Full);
        }
        self.remove(key);
        let at = self.slot(self.len);
        self.keys[at] = key;
        // INVARIANT: room checked (or made by the removal), `key` was not
        // in the queue any more.
        self.len += 1;
        Ok(())
    }

    /// The key at the front, taken out.
    pub fn pop_front(&mut self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let key = self.keys[self.head];
        // INVARIANT: the rest keep their order.
        self.head = (self.head + 1) % CAPACITY;
        self.len -= 1;
        Some(key)
    }

    /// The key at the front, left in place.
    pub fn front(&self) -> Option<u64> {
        (self.len > 0).then(|| self.keys[self.head])
    }

    /// Takes the key at the front back to the front (after
    /// [`Fifo::pop_front`] found it could not be sent).
    ///
    /// # Errors
    ///
    /// [`Full`] when the queue is full or holds `key`.
    pub fn push_front(&mut self, key: u64) -> Result<(), Full> {
        if self.len == CAPACITY || self.position(key).is_some() {
            return Err(Full);
        }
        self.head = (self.head + CAPACITY - 1) % CAPACITY;
        self.keys[self.head] = key;
        // INVARIANT: room checked, `key` was not queued.
        self.len += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn queueing_again_moves_to_the_back() {
        let mut q = Fifo::default();
        for k in [1, 2, 3] {
            q.push_back(k).unwrap();
        }
        q.push_back(1).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(
            [q.pop_front(), q.pop_front(), q.pop_front(), q.pop_front()],
            [Some(2), Some(3), Some(1), None]
        );
    }

    #[test]
    fn a_full_queue_refuses_a_new_key_but_moves_a_queued_one() {
        let mut q = Fifo::default();
        for k in 0..CAPACITY as u64 {
            q.push_back(k).unwrap();
        }
        assert_eq!(q.push_back(CAPACITY as u64), Err(Full));
        assert_eq!(q.push_back(0), Ok(()));
        assert_eq!(q.front(), Some(1));
        assert_eq!(q.push_front(7), Err(Full));
    }

    proptest! {
        /// The queue behaves as a deque of distinct keys would.
        #[test]
        fn same_as_a_model(ops in proptest::collection::vec((0u8..4, 0u64..(CAPACITY as u64 + 8)), 0..2000)) {
            let mut q = Fifo::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            for (op, key) in ops {
                match op {
                    0 => {
                        let had = model.iter().position(|&k| k == key);
                        let expect_ok = had.is_some() || model.len() < CAPACITY;
                        prop_assert_eq!(q.push_back(key).is_ok(), expect_ok);
                        if expect_ok {
                            if let Some(at) = had {
                                model.remove(at);
                            }
                            model.push_back(key);
                        }
                    }
                    1 => prop_assert_eq!(q.pop_front(), model.pop_front()),
                    2 => {
                        let at = model.iter().position(|&k| k == key);
                        prop_assert_eq!(q.remove(key), at.is_some());
                        if let Some(at) = at {
                            model.remove(at);
                        }
                    }
                    _ => {
                        let ok = model.len() < CAPACITY && !model.contains(&key);
                        prop_assert_eq!(q.push_front(key).is_ok(), ok);
                        if ok {
                            model.push_front(key);
                        }
                    }
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.front(), model.front().copied());
            }
        }
    }
}
