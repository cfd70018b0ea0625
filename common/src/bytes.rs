// SPDX-License-Identifier: MIT
//! Little-endian field access for the fixed-size records of the wire format
//! and the uapi.
//!
//! Every record is a fixed-size byte array and every field sits at a
//! constant offset inside it, checked against the record size at compile
//! time by the `const` assertions next to each layout; so the slicing here
//! cannot go out of bounds for the offsets the codecs use.

use super::error::Error;

/// Reads the little-endian `u16` at `at`.
pub(crate) fn get_u16(record: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&record[at..at + 2]);
    u16::from_le_bytes(raw)
}

/// Reads the little-endian `u32` at `at`.
pub(crate) fn get_u32(record: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&record[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// Reads the little-endian `i32` at `at`.
pub(crate) fn get_i32(record: &[u8], at: usize) -> i32 {
    get_u32(record, at) as i32
}

/// Reads the little-endian `u64` at `at`.
pub(crate) fn get_u64(record: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&record[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Writes `value` little-endian at `at`.
pub(crate) fn put_u16(record: &mut [u8], at: usize, value: u16) {
    record[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// Writes `value` little-endian at `at`.
pub(crate) fn put_u32(record: &mut [u8], at: usize, value: u32) {
    record[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Writes `value` little-endian at `at`.
pub(crate) fn put_i32(record: &mut [u8], at: usize, value: i32) {
    put_u32(record, at, value as u32);
}

/// Writes `value` little-endian at `at`.
pub(crate) fn put_u64(record: &mut [u8], at: usize, value: u64) {
    record[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Checks that `record[from..to]` is all zero.
///
/// # Errors
///
/// [`Error::ReservedNotZero`] with the offset of the first non-zero byte.
pub(crate) fn check_zero(record: &[u8], from: usize, to: usize) -> Result<(), Error> {
    match record[from..to].iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(Error::ReservedNotZero { offset: from + i }),
    }
}
