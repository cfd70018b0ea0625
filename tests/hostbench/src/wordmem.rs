// SPDX-License-Identifier: MIT
//! [`WordMem`]: shared memory as atomic words, like the `[AtomicU32]`
//! implementation of `hyper-dmabuf-common`, with one difference: byte
//! copies that start on a word boundary and cover whole words (every ring
//! slot and directory page) move one word per step, with no per-byte lane
//! logic. The benchmarks run the ring over both to measure what that fast
//! path is worth.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hyper_dmabuf_common::shmem::SharedMem;

/// Atomic words with a whole-word copy path.
pub struct WordMem {
    words: Vec<AtomicU32>,
}

impl WordMem {
    /// `words` zeroed words.
    pub fn new(words: usize) -> Self {
        WordMem {
            words: (0..words).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl SharedMem for WordMem {
    fn len(&self) -> usize {
        self.words.len() * 4
    }

    fn read_u32(&self, offset: usize) -> u32 {
        self.words[offset / 4].load(Ordering::Relaxed)
    }

    fn write_u32(&self, offset: usize, value: u32) {
        self.words[offset / 4].store(value, Ordering::Relaxed)
    }

    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.words[offset / 4].load(Ordering::Acquire)
    }

    fn store_release_u32(&self, offset: usize, value: u32) {
        self.words[offset / 4].store(value, Ordering::Release)
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        if offset % 4 == 0 && dst.len() % 4 == 0 {
            let words = &self.words[offset / 4..][..dst.len() / 4];
            for (out, word) in dst.chunks_exact_mut(4).zip(words) {
                out.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
        } else {
            for (i, byte) in dst.iter_mut().enumerate() {
                let at = offset + i;
                *byte = self.words[at / 4].load(Ordering::Relaxed).to_ne_bytes()[at % 4];
            }
        }
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) {
        if offset % 4 == 0 && src.len() % 4 == 0 {
            let words = &self.words[offset / 4..][..src.len() / 4];
            for (bytes, word) in src.chunks_exact(4).zip(words) {
                let value = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                word.store(value, Ordering::Relaxed);
            }
        } else {
            for (i, &byte) in src.iter().enumerate() {
                let at = offset + i;
                let cell = &self.words[at / 4];
                let mut word = cell.load(Ordering::Relaxed).to_ne_bytes();
                word[at % 4] = byte;
                cell.store(u32::from_ne_bytes(word), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_round_trip() {
        let mem = WordMem::new(16);
        let src: Vec<u8> = (0..40u8).collect();
        for (offset, len) in [(0, 40), (4, 32), (3, 17), (1, 2)] {
            mem.write_bytes(offset, &src[..len]);
            let mut dst = vec![0u8; len];
            mem.read_bytes(offset, &mut dst);
            assert_eq!(dst, &src[..len]);
        }
    }
}

/// Atomic 64-bit words: [`WordMem`]'s whole-word path moving eight bytes
/// per step, as a kernel implementation over mapped pages can (the `u32`
/// accessors address one half of a word).
pub struct Word64Mem {
    words: Vec<AtomicU64>,
}

impl Word64Mem {
    /// `bytes` zeroed bytes, rounded up to whole 64-bit words.
    pub fn new(bytes: usize) -> Self {
        Word64Mem {
            words: (0..bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn half(&self, offset: usize) -> (&AtomicU64, u32) {
        (&self.words[offset / 8], (offset % 8 * 8) as u32)
    }

    fn get(&self, offset: usize, order: Ordering) -> u32 {
        let (word, shift) = self.half(offset);
        (word.load(order) >> shift) as u32
    }

    fn set(&self, offset: usize, value: u32, order: Ordering) {
        let (word, shift) = self.half(offset);
        let mask = !(u64::from(u32::MAX) << shift);
        let old = word.load(Ordering::Relaxed);
        word.store((old & mask) | (u64::from(value) << shift), order);
    }
}

impl SharedMem for Word64Mem {
    fn len(&self) -> usize {
        self.words.len() * 8
    }

    fn read_u32(&self, offset: usize) -> u32 {
        self.get(offset, Ordering::Relaxed)
    }

    fn write_u32(&self, offset: usize, value: u32) {
        self.set(offset, value, Ordering::Relaxed)
    }

    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.get(offset, Ordering::Acquire)
    }

    fn store_release_u32(&self, offset: usize, value: u32) {
        self.set(offset, value, Ordering::Release)
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        if offset % 8 == 0 && dst.len() % 8 == 0 {
            let words = &self.words[offset / 8..][..dst.len() / 8];
            for (out, word) in dst.chunks_exact_mut(8).zip(words) {
                out.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
        } else {
            for (i, byte) in dst.iter_mut().enumerate() {
                let at = offset + i;
                *byte = self.words[at / 8].load(Ordering::Relaxed).to_ne_bytes()[at % 8];
            }
        }
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) {
        if offset % 8 == 0 && src.len() % 8 == 0 {
            let words = &self.words[offset / 8..][..src.len() / 8];
            for (bytes, word) in src.chunks_exact(8).zip(words) {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(bytes);
                word.store(u64::from_ne_bytes(raw), Ordering::Relaxed);
            }
        } else {
            for (i, &byte) in src.iter().enumerate() {
                let at = offset + i;
                let cell = &self.words[at / 8];
                let mut word = cell.load(Ordering::Relaxed).to_ne_bytes();
                word[at % 8] = byte;
                cell.store(u64::from_ne_bytes(word), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests64 {
    use super::*;

    #[test]
    fn words_and_bytes_agree() {
        let mem = Word64Mem::new(64);
        mem.write_u32(4, 0x1122_3344);
        mem.write_u32(0, 0x5566_7788);
        assert_eq!(mem.read_u32(4), 0x1122_3344);
        let mut raw = [0u8; 8];
        mem.read_bytes(0, &mut raw);
        assert_eq!(raw[..4], 0x5566_7788u32.to_ne_bytes());
        let src: Vec<u8> = (0..48u8).collect();
        for (offset, len) in [(0, 48), (8, 32), (3, 17)] {
            mem.write_bytes(offset, &src[..len]);
            let mut dst = vec![0u8; len];
            mem.read_bytes(offset, &mut dst);
            assert_eq!(dst, &src[..len]);
        }
    }
}
