// SPDX-License-Identifier: MIT
//! The test pattern: a position-dependent pseudo-random byte stream, so
//! that a buffer verified in another domain proves every page arrived in
//! the right place, not just that some bytes match.

/// The pattern word at 8-byte index `index` for `seed` (SplitMix64 of the
/// position).
fn word(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of `seed`, as the bytes at offset 0 of a
/// buffer.
pub fn fill(seed: u64, buf: &mut [u8]) {
    let tail_index = (buf.len() / 8) as u64;
    let mut chunks = buf.chunks_exact_mut(8);
    for (index, chunk) in (0u64..).zip(&mut chunks) {
        chunk.copy_from_slice(&word(seed, index).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let len = tail.len();
    tail.copy_from_slice(&word(seed, tail_index).to_le_bytes()[..len]);
}

/// Offset of the first byte of `buf` that differs from the pattern of
/// `seed`, if any.
pub fn first_mismatch(seed: u64, buf: &[u8]) -> Option<usize> {
    let mut chunks = buf.chunks_exact(8);
    for (index, chunk) in (0u64..).zip(&mut chunks) {
        let expected = word(seed, index).to_le_bytes();
        if chunk != expected {
            let lane = chunk
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Some(index as usize * 8 + lane);
        }
    }
    let tail = chunks.remainder();
    let start = buf.len() - tail.len();
    let expected = word(seed, (start / 8) as u64).to_le_bytes();
    tail.iter()
        .zip(&expected)
        .position(|(a, b)| a != b)
        .map(|lane| start + lane)
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
    fn pages_are_distinct() {
        // A page mapped at the wrong place must not pass verification.
        let mut buf = vec![0u8; 2 * 4096];
        fill(1, &mut buf);
        assert_ne!(buf[..4096], buf[4096..]);
    }
}
