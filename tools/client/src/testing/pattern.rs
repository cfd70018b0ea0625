// SPDX-License-Identifier: MIT
//! The test pattern: a position-dependent pseudo-random byte stream, so
//! that a buffer verified in another domain proves every page arrived in
//! the right place, not just that some bytes match.

use std::ops::ControlFlow;

use crate::Mapping;

/// The pattern word at 8-byte index `index` for `seed` (SplitMix64 of the
/// position).
fn word(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The index of the pattern word that starts at byte `offset`.
///
/// # Panics
///
/// Unless `offset` is a multiple of 8 (a caller's bug: pieces of a
/// buffer are cut at page or chunk boundaries).
fn word_index(offset: usize) -> u64 {
    assert!(offset % 8 == 0, "a piece of the pattern at offset {offset}");
    (offset / 8) as u64
}

/// Fills `buf` with the pattern of `seed`, as the bytes at offset 0 of a
/// buffer.
pub fn fill(seed: u64, buf: &mut [u8]) {
    fill_at(seed, 0, buf);
}

/// Fills `buf` with the pattern of `seed`, as the bytes at `offset` (a
/// multiple of 8) of a buffer.
pub fn fill_at(seed: u64, offset: usize, buf: &mut [u8]) {
    let first = word_index(offset);
    let tail_index = first + (buf.len() / 8) as u64;
    let mut chunks = buf.chunks_exact_mut(8);
    for (index, chunk) in (first..).zip(&mut chunks) {
        chunk.copy_from_slice(&word(seed, index).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let len = tail.len();
    tail.copy_from_slice(&word(seed, tail_index).to_le_bytes()[..len]);
}

/// Offset of the first byte of `buf` that differs from the pattern of
/// `seed`, if any.
pub fn first_mismatch(seed: u64, buf: &[u8]) -> Option<usize> {
    first_mismatch_at(seed, 0, buf)
}

/// The same for `buf` standing at `offset` (a multiple of 8) of a
/// buffer; the result is an offset into `buf`.
pub fn first_mismatch_at(seed: u64, offset: usize, buf: &[u8]) -> Option<usize> {
    let first = word_index(offset);
    let mut chunks = buf.chunks_exact(8);
    for (at, chunk) in (0usize..).step_by(8).zip(&mut chunks) {
        let expected = word(seed, first + (at / 8) as u64).to_le_bytes();
        if chunk != expected {
            let lane = chunk
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Some(at + lane);
        }
    }
    let tail = chunks.remainder();
    let start = buf.len() - tail.len();
    let expected = word(seed, first + (start / 8) as u64).to_le_bytes();
    tail.iter()
        .zip(&expected)
        .position(|(a, b)| a != b)
        .map(|lane| start + lane)
}

/// Writes the pattern of `seed` over the whole mapping.
///
/// # Panics
///
/// If the mapping is read-only.
pub fn fill_mapping(seed: u64, map: &Mapping) {
    map.write_chunks(|offset, piece| fill_at(seed, offset, piece));
}

/// Offset of the first byte of the mapping that differs from the pattern
/// of `seed`, if any (reading it a copy at a time: another domain may be
/// writing it).
pub fn first_mismatch_in(seed: u64, map: &Mapping) -> Option<usize> {
    map.read_chunks(
        |offset, piece| match first_mismatch_at(seed, offset, piece) {
            Some(at) => ControlFlow::Break(offset + at),
            None => ControlFlow::Continue(()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_verify_at_every_length() {
        for len in [0, 1, 7, 8, 9, 4095, 4096, 4097, 65536 + 3] {
            let mut buf = vec![0u8; len];
            fill(42, &mut buf);
            assert_eq!(first_mismatch(42, &buf), None, "len {len}");
        }
    }

    #[test]
    fn mismatches_are_located() {
        let mut buf = vec![0u8; 3 * 4096 + 5];
        fill(7, &mut buf);
        for at in [0, 5, 4096, 2 * 4096 + 17, 3 * 4096 + 4] {
            let mut copy = buf.clone();
            copy[at] ^= 0x40;
            assert_eq!(first_mismatch(7, &copy), Some(at));
        }
        assert!(first_mismatch(8, &buf).is_some(), "another seed differs");
    }

    #[test]
    fn pieces_make_the_whole() {
        let mut whole = vec![0u8; 3 * 4096 + 13];
        fill(9, &mut whole);
        let mut pieces = vec![0u8; whole.len()];
        for (i, piece) in pieces.chunks_mut(4096).enumerate() {
            fill_at(9, i * 4096, piece);
            assert_eq!(first_mismatch_at(9, i * 4096, piece), None);
        }
        assert_eq!(pieces, whole);
        pieces[4096 + 3] ^= 1;
        assert_eq!(first_mismatch_at(9, 4096, &pieces[4096..8192]), Some(3));
    }

    #[test]
    fn a_mapping_is_checked_across_its_chunks() {
        let len = Mapping::CHUNK + 3 * 4096;
        let fd = rustix::fs::memfd_create("pattern", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len as u64).unwrap();
        // SAFETY: the memfd was sized to `len` above and only this test
        // has it.
        let map = unsafe { Mapping::new(&fd, len, true) }.unwrap();
        fill_mapping(5, &map);
        assert_eq!(first_mismatch_in(5, &map), None);
        let mut whole = vec![0u8; len];
        map.read_at(0, &mut whole);
        assert_eq!(first_mismatch(5, &whole), None, "the same as one fill");
        let at = Mapping::CHUNK + 4096 + 5;
        map.write_at(at, &[whole[at] ^ 0x10]);
        assert_eq!(first_mismatch_in(5, &map), Some(at));
    }

    #[test]
    #[should_panic(expected = "offset 4")]
    fn pieces_start_on_a_word() {
        fill_at(1, 4, &mut [0u8; 8]);
    }

    #[test]
    fn pages_are_distinct() {
        // A page mapped at the wrong place must not pass verification.
        let mut buf = vec![0u8; 2 * 4096];
        fill(1, &mut buf);
        assert_ne!(buf[..4096], buf[4096..]);
    }
}
