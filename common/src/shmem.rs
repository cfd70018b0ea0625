// SPDX-License-Identifier: MIT
//! Memory shared with a peer domain.
//!
//! The peer can write shared pages at any moment, so no Rust reference to
//! them may ever exist: a `&[u8]` into peer-writable memory would let the
//! compiler assume the bytes do not change under it. Instead the protocol
//! code reads through [`SharedMem`], whose accessors copy values out (each
//! one read exactly once), and validates the copy.
//!
//! The kernel implements the trait over granted or mapped pages with
//! volatile and atomic accessors; the host tests, the simulation and the
//! fuzzers use the implementation for `[AtomicU32]` below, which is plain
//! safe Rust.

use core::sync::atomic::{fence, AtomicU32, Ordering};

/// A window of memory shared with another domain.
///
/// Offsets are in bytes from the start of the window. Callers keep every
/// access inside [`SharedMem::len`] and 4-byte aligned for the `u32`
/// accessors; the protocol code checks the window is large enough once,
/// when it takes the memory, and computes every later offset from masked
/// indices. An implementation must not cause undefined behaviour even if a
/// caller broke that rule: it may panic (host) or ignore the access and
/// warn (kernel).
///
/// `u32` values are in the byte order of the machine, like the indices of
/// Xen's `io/ring.h` (both domains run on the same host); message payloads
/// are read as bytes and decoded as little-endian by their codecs.
pub trait SharedMem {
    /// Size of the window in bytes.
    fn len(&self) -> usize;

    /// Whether the window is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the `u32` at `offset` once, with no ordering constraint.
    fn read_u32(&self, offset: usize) -> u32;

    /// Writes the `u32` at `offset` once, with no ordering constraint.
    fn write_u32(&self, offset: usize, value: u32);

    /// Reads the `u32` at `offset` with acquire ordering: no later read of
    /// the window is performed before it (`virt_rmb()` after the load).
    fn load_acquire_u32(&self, offset: usize) -> u32;

    /// Writes the `u32` at `offset` with release ordering: every earlier
    /// write to the window is visible before it (`virt_wmb()` before the
    /// store).
    fn store_release_u32(&self, offset: usize, value: u32);

    /// Copies `dst.len()` bytes starting at `offset` out of the window.
    fn read_bytes(&self, offset: usize, dst: &mut [u8]);

    /// Copies `src` into the window starting at `offset`.
    fn write_bytes(&self, offset: usize, src: &[u8]);

    /// A full barrier (`virt_mb()`): no load or store is reordered across
    /// it. Needed where a store of ours must be visible before we load a
    /// value the peer writes (the notification hold-off check).
    fn full_barrier(&self) {
        fence(Ordering::SeqCst);
    }
}

impl<T: SharedMem + ?Sized> SharedMem for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read_u32(&self, offset: usize) -> u32 {
        (**self).read_u32(offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        (**self).write_u32(offset, value)
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        (**self).load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) {
        (**self).store_release_u32(offset, value)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        (**self).read_bytes(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        (**self).write_bytes(offset, src)
    }
    fn full_barrier(&self) {
        (**self).full_barrier()
    }
}

/// Shared memory simulated by an array of atomic words, as used by the
/// host tests, the two-domain simulation and the fuzzers. Another thread
/// (the simulated peer) may write it concurrently.
///
/// Byte accesses are built from word accesses, so a simulated peer can tear
/// a multi-byte value exactly as a real one can, and out-of-range accesses
/// panic (a host-side bug in the caller, never reachable from peer input).
impl SharedMem for [AtomicU32] {
    fn len(&self) -> usize {
        <[AtomicU32]>::len(self) * 4
    }

    fn read_u32(&self, offset: usize) -> u32 {
        self[word_index(offset)].load(Ordering::Relaxed)
    }

    fn write_u32(&self, offset: usize, value: u32) {
        self[word_index(offset)].store(value, Ordering::Relaxed)
    }

    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self[word_index(offset)].load(Ordering::Acquire)
    }

    fn store_release_u32(&self, offset: usize, value: u32) {
        self[word_index(offset)].store(value, Ordering::Release)
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        if offset % 4 == 0 && dst.len() % 4 == 0 {
            // Whole words, as every ring slot and directory page is: one
            // load per word instead of a byte loop.
            let words = &self[offset / 4..offset / 4 + dst.len() / 4];
            for (chunk, word) in dst.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            return;
        }
        let mut at = offset;
        let mut rest = dst;
        while !rest.is_empty() {
            let lane = at % 4;
            let word = self[at / 4].load(Ordering::Relaxed).to_ne_bytes();
            let take = (4 - lane).min(rest.len());
            rest[..take].copy_from_slice(&word[lane..lane + take]);
            at += take;
            rest = &mut rest[take..];
        }
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) {
        if offset % 4 == 0 && src.len() % 4 == 0 {
            let words = &self[offset / 4..offset / 4 + src.len() / 4];
            for (chunk, word) in src.chunks_exact(4).zip(words) {
                word.store(
                    u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                    Ordering::Relaxed,
                );
            }
            return;
        }
        let mut at = offset;
        let mut rest = src;
        while !rest.is_empty() {
            let lane = at % 4;
            let take = (4 - lane).min(rest.len());
            let cell = &self[at / 4];
            if lane == 0 && take == 4 {
                let bytes = [rest[0], rest[1], rest[2], rest[3]];
                cell.store(u32::from_ne_bytes(bytes), Ordering::Relaxed);
            } else {
                // A partial word: merge the new bytes into the old value.
                let mut word = cell.load(Ordering::Relaxed).to_ne_bytes();
                word[lane..lane + take].copy_from_slice(&rest[..take]);
                cell.store(u32::from_ne_bytes(word), Ordering::Relaxed);
            }
            at += take;
            rest = &rest[take..];
        }
    }
}

/// Index of the word holding the aligned `u32` at `offset`.
fn word_index(offset: usize) -> usize {
    assert!(offset % 4 == 0, "unaligned u32 access at {offset}");
    offset / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_at_every_alignment() {
        let mem: [AtomicU32; 8] = Default::default();
        let mem = &mem[..];
        for offset in 0..8 {
            for len in 0..(32 - offset) {
                let src: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ 0x5a);
                mem.write_bytes(offset, &src[..len]);
                let mut dst = [0u8; 32];
                mem.read_bytes(offset, &mut dst[..len]);
                assert_eq!(&dst[..len], &src[..len], "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn partial_write_keeps_neighbours() {
        let mem: [AtomicU32; 2] = Default::default();
        let mem = &mem[..];
        mem.write_bytes(0, &[0xff; 8]);
        mem.write_bytes(3, &[1, 2]);
        let mut all = [0u8; 8];
        mem.read_bytes(0, &mut all);
        assert_eq!(all, [0xff, 0xff, 0xff, 1, 2, 0xff, 0xff, 0xff]);
    }
}
