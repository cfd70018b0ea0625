// SPDX-License-Identifier: MIT
//! `hyper_dmabuf_id`: the handle of a shared buffer.
//!
//! The exporter picks a 64-bit number, unique among its live exports, and
//! 128 random bits of key. The pair is what the importer's user space
//! presents to get the buffer; the key makes it unguessable, so a process
//! that only learns or guesses a number cannot map the buffer. The id does
//! not name the exporting domain: the receiving driver knows it from the
//! channel a message arrived on and never takes it from a payload.

use super::error::Error;
use core::fmt;
use core::str::FromStr;

/// Bytes of random key in an id.
pub const KEY_LEN: usize = 16;

/// A `hyper_dmabuf_id`.
///
/// On the wire and in the uapi, `struct hdmabuf_id`
/// ([`uapi::layout::id`](super::uapi::layout::id)):
///
/// ```text
/// offset size  field  meaning
///      0    8  id     the exporter's number, never 0
///      8   16  key    random bytes that make the id unguessable
/// ```
///
/// # Invariants
///
/// `id` is not zero (zero marks "no buffer" in the uapi).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HyperDmabufId {
    id: u64,
    key: [u8; KEY_LEN],
}

impl HyperDmabufId {
    /// Size of the encoded id on the wire and in the uapi.
    pub const WIRE_SIZE: usize = 8 + KEY_LEN;

    /// Makes an id from its number and key.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`] if `id` is zero.
    pub const fn new(id: u64, key: [u8; KEY_LEN]) -> Result<Self, Error> {
        if id == 0 {
            return Err(Error::BadId);
        }
        // INVARIANT: `id` checked above.
        Ok(HyperDmabufId { id, key })
    }

    /// The number part.
    pub const fn number(&self) -> u64 {
        self.id
    }

    /// The key part.
    pub const fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// Encodes as 8 bytes of little-endian number followed by the key.
    pub fn encode(&self) -> [u8; Self::WIRE_SIZE] {
        let mut out = [0u8; Self::WIRE_SIZE];
        out[..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..].copy_from_slice(&self.key);
        out
    }

    /// Decodes the form written by [`HyperDmabufId::encode`].
    ///
    /// # Errors
    ///
    /// [`Error::BadId`] if the number is zero.
    pub fn decode(bytes: &[u8; Self::WIRE_SIZE]) -> Result<Self, Error> {
        let mut number = [0u8; 8];
        number.copy_from_slice(&bytes[..8]);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&bytes[8..]);
        HyperDmabufId::new(u64::from_le_bytes(number), key)
    }

    /// Whether `other` is the same id, comparing the key in constant time
    /// so that a caller probing keys learns nothing from timing.
    pub fn matches(&self, other: &HyperDmabufId) -> bool {
        let diff = self
            .key
            .iter()
            .zip(other.key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // `&`, not `&&`: both halves are evaluated whatever the first says.
        #[allow(clippy::needless_bitwise_bool)]
        let same = (self.id == other.id) & (diff == 0);
        same
    }
}

/// Length of the text form: 16 hex digits, `-`, 32 hex digits.
pub const TEXT_LEN: usize = 16 + 1 + 2 * KEY_LEN;

/// The text form `NNNNNNNNNNNNNNNN-KKKK…` (number and key in lowercase hex),
/// used by the tools.
impl fmt::Display for HyperDmabufId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-", self.id)?;
        for byte in &self.key {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Shows only the number: keys do not belong in logs.
impl fmt::Debug for HyperDmabufId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HyperDmabufId({:#x}, key: ..)", self.id)
    }
}

impl FromStr for HyperDmabufId {
    type Err = Error;

    /// Parses the text form written by `Display`.
    fn from_str(text: &str) -> Result<Self, Error> {
        let bytes = text.as_bytes();
        if bytes.len() != TEXT_LEN || bytes[16] != b'-' {
            return Err(Error::BadId);
        }
        let mut id = 0u64;
        for &digit in &bytes[..16] {
            id = (id << 4) | u64::from(hex_value(digit)?);
        }
        let mut key = [0u8; KEY_LEN];
        for (byte, pair) in key.iter_mut().zip(bytes[17..].chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        HyperDmabufId::new(id, key)
    }
}

fn hex_value(digit: u8) -> Result<u8, Error> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(Error::BadId),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    proptest! {
        #[test]
        fn wire_round_trip(id in 1u64.., key in any::<[u8; KEY_LEN]>()) {
            let hid = HyperDmabufId::new(id, key).unwrap();
            prop_assert_eq!(HyperDmabufId::decode(&hid.encode()).unwrap(), hid);
        }

        #[test]
        fn text_round_trip(id in 1u64.., key in any::<[u8; KEY_LEN]>()) {
            let hid = HyperDmabufId::new(id, key).unwrap();
            let text = hid.to_string();
            prop_assert_eq!(text.len(), TEXT_LEN);
            prop_assert_eq!(text.parse::<HyperDmabufId>().unwrap(), hid);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = text.parse::<HyperDmabufId>();
        }

        #[test]
        fn matches_is_equality(a in any::<[u8; KEY_LEN]>(), b in any::<[u8; KEY_LEN]>()) {
            let x = HyperDmabufId::new(7, a).unwrap();
            let y = HyperDmabufId::new(7, b).unwrap();
            prop_assert_eq!(x.matches(&y), a == b);
        }
    }

    #[test]
    fn zero_number_is_refused() {
        assert_eq!(HyperDmabufId::new(0, [1; KEY_LEN]), Err(Error::BadId));
        assert_eq!(
            HyperDmabufId::decode(&[0; HyperDmabufId::WIRE_SIZE]),
            Err(Error::BadId)
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let hid = HyperDmabufId::new(0x2a, [0xcd; KEY_LEN]).unwrap();
        assert!(!std::format!("{hid:?}").contains("cd"));
    }
}
