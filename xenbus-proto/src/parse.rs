// SPDX-License-Identifier: MIT
//! Strict parsers and canonical formatters for every node value.
//!
//! Every value read from xenstore is untrusted: the peer domain writes its
//! own directory, and a toolstack bug is as likely as an attack. The rules,
//! the same for every numeric node:
//!
//! * ASCII decimal digits only: no sign, no `+`, no whitespace, no `0x`,
//!   no trailing NUL or newline;
//! * no leading zero, except the value `"0"` itself;
//! * at most [`MAX_U32_LEN`] (for 32-bit nodes) or [`MAX_U64_LEN`] (for
//!   64-bit nodes) bytes, checked before any digit is looked at;
//! * overflow checked, then the node's range checked.
//!
//! Every accepted value is in canonical form: formatting the parsed value
//! with [`Decimal`] gives back the same bytes. The fuzz harness's oracle
//! `check_value_parsers` checks exactly that.
//!
//! No parser allocates, recurses or loops more than its input length
//! (itself bounded before the loop starts).

use core::fmt;

use super::error::ValueError;
use super::state::XenbusState;

/// Longest canonical decimal `u32` (`"4294967295"`).
pub const MAX_U32_LEN: usize = 10;
/// Longest canonical decimal `u64` (`"18446744073709551615"`).
pub const MAX_U64_LEN: usize = 20;
/// Longest `versions` value accepted, in bytes.
pub const MAX_VERSIONS_LEN: usize = 64;
/// Most items a `versions` list may hold.
pub const MAX_VERSIONS: usize = 8;
/// Number of grant references Xen reserves at the start of every grant
/// table (`GNTTAB_NR_RESERVED_ENTRIES`); a published gref must not be one.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// First domain id Xen reserves (`DOMID_FIRST_RESERVED`); a `backend-id`
/// or `frontend-id` must be below it.
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

/// Parses a canonical decimal number of at most `max_len` digits into a
/// `u64`, checking overflow.
fn parse_decimal(s: &[u8], max_len: usize) -> Result<u64, ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    if s.len() > max_len {
        return Err(ValueError::TooLong { max: max_len });
    }
    let mut value: u64 = 0;
    for (offset, &b) in s.iter().enumerate() {
        if !b.is_ascii_digit() {
            return Err(ValueError::NotDecimal { offset });
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(ValueError::Overflow)?;
    }
    // Checked after the digits so that "0x1" reports NotDecimal, the more
    // useful message, rather than LeadingZero.
    if s.len() > 1 && s.first() == Some(&b'0') {
        return Err(ValueError::LeadingZero);
    }
    Ok(value)
}

/// Parses a canonical decimal `u64`.
///
/// # Errors
///
/// Any [`ValueError`] of the numeric rules in the module documentation.
pub fn parse_u64(s: &[u8]) -> Result<u64, ValueError> {
    parse_decimal(s, MAX_U64_LEN)
}

/// Parses a canonical decimal `u32`.
///
/// # Errors
///
/// Any [`ValueError`] of the numeric rules; [`ValueError::Overflow`] above
/// `u32::MAX`.
pub fn parse_u32(s: &[u8]) -> Result<u32, ValueError> {
    let v = parse_decimal(s, MAX_U32_LEN)?;
    u32::try_from(v).map_err(|_| ValueError::Overflow)
}

/// Parses a canonical decimal `u32` and checks `min <= v <= max`.
///
/// # Errors
///
/// As [`parse_u32`], and [`ValueError::OutOfRange`].
pub fn parse_u32_in(s: &[u8], min: u32, max: u32) -> Result<u32, ValueError> {
    let v = parse_u32(s)?;
    if v < min || v > max {
        return Err(ValueError::OutOfRange {
            value: v.into(),
            min: min.into(),
            max: max.into(),
        });
    }
    Ok(v)
}

/// Parses a canonical decimal `u64` and checks `min <= v <= max`.
///
/// # Errors
///
/// As [`parse_u64`], and [`ValueError::OutOfRange`].
pub fn parse_u64_in(s: &[u8], min: u64, max: u64) -> Result<u64, ValueError> {
    let v = parse_u64(s)?;
    if v < min || v > max {
        return Err(ValueError::OutOfRange { value: v, min, max });
    }
    Ok(v)
}

/// Parses a boolean node (`feature-rw`, `online`): exactly `"0"` or `"1"`.
///
/// # Errors
///
/// As [`parse_u32`], and [`ValueError::OutOfRange`] for other numbers.
pub fn parse_bool(s: &[u8]) -> Result<bool, ValueError> {
    Ok(parse_u32_in(s, 0, 1)? == 1)
}

/// Parses a `state` node: `"1"` (Initialising) to `"8"` (Reconfigured).
///
/// `"0"` (Unknown) is refused: no driver ever writes it; the protocol uses
/// Unknown only for a `state` node that is absent.
///
/// # Errors
///
/// As [`parse_u32`], and [`ValueError::OutOfRange`] outside `1..=8`.
pub fn parse_state(s: &[u8]) -> Result<XenbusState, ValueError> {
    let v = parse_u32_in(s, 1, 8)?;
    // Every value in 1..=8 maps to a state; Unknown is unreachable here
    // but handled without a panic.
    Ok(XenbusState::from_u32(v).unwrap_or(XenbusState::Unknown))
}

/// Parses a grant reference (`ring-ref%u`, `back-ring-ref%u`): a `u32` not
/// below [`GNTTAB_NR_RESERVED_ENTRIES`].
///
/// # Errors
///
/// As [`parse_u32`], and [`ValueError::OutOfRange`] for a reserved entry.
pub fn parse_gref(s: &[u8]) -> Result<u32, ValueError> {
    parse_u32_in(s, GNTTAB_NR_RESERVED_ENTRIES, u32::MAX)
}

/// Parses an event channel port (`event-channel`): a non-zero `u32` (port
/// 0 is never allocated by Xen).
///
/// # Errors
///
/// As [`parse_u32`], and [`ValueError::OutOfRange`] for 0.
pub fn parse_evtchn(s: &[u8]) -> Result<u32, ValueError> {
    parse_u32_in(s, 1, u32::MAX)
}

/// Parses a domain id (`backend-id`, `frontend-id`): below
/// [`DOMID_FIRST_RESERVED`].
///
/// # Errors
///
/// As [`parse_u32`], and [`ValueError::OutOfRange`] for reserved ids.
pub fn parse_domid(s: &[u8]) -> Result<u16, ValueError> {
    let v = parse_u32_in(s, 0, u32::from(DOMID_FIRST_RESERVED) - 1)?;
    u16::try_from(v).map_err(|_| ValueError::Overflow)
}

/// Number of decimal digits of `v`.
fn decimal_len(mut v: u32) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// A set of protocol versions, as carried by the `versions` node.
///
/// # Invariants
///
/// `len <= MAX_VERSIONS`; `items[..len]` is strictly increasing and every
/// item is at least 1; `items[len..]` is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    items: [u32; MAX_VERSIONS],
    len: usize,
}

impl Versions {
    /// Builds a list from versions given in strictly increasing order.
    ///
    /// # Errors
    ///
    /// [`ValueError::TooManyItems`], [`ValueError::NotIncreasing`],
    /// [`ValueError::EmptyItem`] for an empty slice,
    /// [`ValueError::OutOfRange`] for version 0, and [`ValueError::TooLong`]
    /// if the text would exceed [`MAX_VERSIONS_LEN`] bytes (so that every
    /// list built here can be published and parsed back).
    pub fn new(versions: &[u32]) -> Result<Self, ValueError> {
        if versions.is_empty() {
            return Err(ValueError::EmptyItem);
        }
        let mut out = Self {
            items: [0; MAX_VERSIONS],
            len: 0,
        };
        let mut text_len = 0usize;
        for &v in versions {
            out.push(v)?;
            // One comma before every item but the first.
            text_len += decimal_len(v) + usize::from(text_len > 0);
        }
        if text_len > MAX_VERSIONS_LEN {
            return Err(ValueError::TooLong {
                max: MAX_VERSIONS_LEN,
            });
        }
        Ok(out)
    }

    fn push(&mut self, v: u32) -> Result<(), ValueError> {
        if v == 0 {
            return Err(ValueError::OutOfRange {
                value: 0,
                min: 1,
                max: u32::MAX.into(),
            });
        }
        if let Some(&last) = self.as_slice().last() {
            if v <= last {
                return Err(ValueError::NotIncreasing);
            }
        }
        let slot = self
            .items
            .get_mut(self.len)
            .ok_or(ValueError::TooManyItems { max: MAX_VERSIONS })?;
        *slot = v;
        // INVARIANT: v is above every earlier item and non-zero, and the
        // slot existed, so len stays <= MAX_VERSIONS.
        self.len += 1;
        Ok(())
    }

    /// The versions, in increasing order.
    pub fn as_slice(&self) -> &[u32] {
        // PANIC: len <= MAX_VERSIONS by the invariant; `get` keeps this
        // panic-free even if it were broken.
        self.items.get(..self.len).unwrap_or(&[])
    }

    /// Whether `v` is in the list.
    pub fn contains(&self, v: u32) -> bool {
        self.as_slice().contains(&v)
    }

    /// The highest version present in both lists, if any.
    pub fn highest_common(&self, ours: &[u32]) -> Option<u32> {
        self.as_slice()
            .iter()
            .rev()
            .copied()
            .find(|v| ours.contains(v))
    }
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Parses a `versions` node: a comma-separated list of at most
/// [`MAX_VERSIONS`] canonical decimal versions, each at least 1, in strictly
/// increasing order, at most [`MAX_VERSIONS_LEN`] bytes in all.
///
/// # Errors
///
/// [`ValueError::Empty`], [`ValueError::TooLong`], [`ValueError::EmptyItem`],
/// [`ValueError::TooManyItems`], [`ValueError::NotIncreasing`], or the
/// error of a bad item (offsets in [`ValueError::NotDecimal`] are relative
/// to the item).
pub fn parse_versions(s: &[u8]) -> Result<Versions, ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    if s.len() > MAX_VERSIONS_LEN {
        return Err(ValueError::TooLong {
            max: MAX_VERSIONS_LEN,
        });
    }
    let mut out = Versions {
        items: [0; MAX_VERSIONS],
        len: 0,
    };
    for item in s.split(|&b| b == b',') {
        if item.is_empty() {
            return Err(ValueError::EmptyItem);
        }
        out.push(parse_u32(item)?)?;
    }
    Ok(out)
}

/// A fixed-capacity byte buffer that implements [`fmt::Write`]; used to
/// build node paths and values without allocating.
///
/// # Invariants
///
/// `len <= N` and `buf[..len]` is valid UTF-8 (only `write_str` appends).
#[derive(Clone, Copy)]
pub struct FixedBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FixedBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole `str`s are ever appended, so this never fails; an
        // empty string is the panic-free fallback.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// Forgets the contents.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl<const N: usize> Default for FixedBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        // INVARIANT: end <= N since the slice existed; a whole str was
        // appended.
        self.len = end;
        Ok(())
    }
}

impl<const N: usize> fmt::Debug for FixedBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq for FixedBuf<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for FixedBuf<N> {}

/// Room for any value this crate writes (the longest is a `versions` list).
pub const VALUE_BUF_LEN: usize = MAX_VERSIONS_LEN;

/// A node value being formatted.
pub type ValueBuf = FixedBuf<VALUE_BUF_LEN>;

/// Formats a number in canonical decimal (the form the parsers accept).
pub struct Decimal;

impl Decimal {
    /// The canonical text of `v`.
    pub fn u64(v: u64) -> FixedBuf<MAX_U64_LEN> {
        let mut out = FixedBuf::new();
        // A u64 has at most MAX_U64_LEN digits, so this cannot fail; on a
        // failure the buffer would hold a prefix, which no parser accepts
        // as the same value.
        let _ = fmt::Write::write_fmt(&mut out, format_args!("{v}"));
        out
    }

    /// The canonical text of a `bool` node: `"0"` or `"1"`.
    pub fn bool(v: bool) -> FixedBuf<MAX_U64_LEN> {
        Self::u64(u64::from(v))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn u32_good() {
        assert_eq!(parse_u32(b"0"), Ok(0));
        assert_eq!(parse_u32(b"7"), Ok(7));
        assert_eq!(parse_u32(b"4096"), Ok(4096));
        assert_eq!(parse_u32(b"4294967295"), Ok(u32::MAX));
    }

    #[test]
    fn u32_hostile() {
        assert_eq!(parse_u32(b""), Err(ValueError::Empty));
        assert_eq!(parse_u32(b"+1"), Err(ValueError::NotDecimal { offset: 0 }));
        assert_eq!(parse_u32(b"-1"), Err(ValueError::NotDecimal { offset: 0 }));
        assert_eq!(parse_u32(b" 1"), Err(ValueError::NotDecimal { offset: 0 }));
        assert_eq!(parse_u32(b"1 "), Err(ValueError::NotDecimal { offset: 1 }));
        assert_eq!(parse_u32(b"1\n"), Err(ValueError::NotDecimal { offset: 1 }));
        assert_eq!(parse_u32(b"1\0"), Err(ValueError::NotDecimal { offset: 1 }));
        assert_eq!(
            parse_u32(b"0x10"),
            Err(ValueError::NotDecimal { offset: 1 })
        );
        assert_eq!(parse_u32(b"1e3"), Err(ValueError::NotDecimal { offset: 1 }));
        assert_eq!(
            parse_u32(b"\xff"),
            Err(ValueError::NotDecimal { offset: 0 })
        );
        assert_eq!(parse_u32(b"01"), Err(ValueError::LeadingZero));
        assert_eq!(parse_u32(b"00"), Err(ValueError::LeadingZero));
        assert_eq!(parse_u32(b"0000000000"), Err(ValueError::LeadingZero));
        assert_eq!(parse_u32(b"4294967296"), Err(ValueError::Overflow));
        assert_eq!(parse_u32(b"9999999999"), Err(ValueError::Overflow));
        assert_eq!(
            parse_u32(b"10000000000"),
            Err(ValueError::TooLong { max: MAX_U32_LEN })
        );
        // The length is checked before the bytes are looked at.
        assert_eq!(
            parse_u32(&[b'1'; 4096]),
            Err(ValueError::TooLong { max: MAX_U32_LEN })
        );
    }

    #[test]
    fn u64_good_and_hostile() {
        assert_eq!(parse_u64(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_u64(b"1073741824"), Ok(1 << 30));
        assert_eq!(
            parse_u64(b"18446744073709551616"),
            Err(ValueError::Overflow)
        );
        assert_eq!(
            parse_u64(b"99999999999999999999"),
            Err(ValueError::Overflow)
        );
        assert_eq!(
            parse_u64(b"100000000000000000000"),
            Err(ValueError::TooLong { max: MAX_U64_LEN })
        );
        assert_eq!(parse_u64(b"012"), Err(ValueError::LeadingZero));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_u32_in(b"4", 0, 4), Ok(4));
        assert_eq!(
            parse_u32_in(b"5", 0, 4),
            Err(ValueError::OutOfRange {
                value: 5,
                min: 0,
                max: 4
            })
        );
        assert_eq!(parse_u64_in(b"1", 1, u64::MAX), Ok(1));
        assert!(parse_u64_in(b"0", 1, u64::MAX).is_err());
    }

    #[test]
    fn bool_nodes() {
        assert_eq!(parse_bool(b"0"), Ok(false));
        assert_eq!(parse_bool(b"1"), Ok(true));
        for bad in [&b"2"[..], b"00", b"01", b"true", b"", b"1 ", b"y"] {
            assert!(parse_bool(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_nodes() {
        for s in XenbusState::ALL.iter().skip(1) {
            let text = Decimal::u64(s.as_u32().into());
            assert_eq!(parse_state(text.as_bytes()), Ok(*s));
        }
        for bad in [&b"0"[..], b"9", b"10", b"4294967295", b"04", b"-1", b""] {
            assert!(parse_state(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grefs_ports_domids() {
        for r in 0..GNTTAB_NR_RESERVED_ENTRIES {
            let text = Decimal::u64(r.into());
            assert!(parse_gref(text.as_bytes()).is_err());
        }
        assert_eq!(parse_gref(b"8"), Ok(8));
        assert_eq!(parse_gref(b"4294967295"), Ok(u32::MAX));
        assert!(parse_evtchn(b"0").is_err());
        assert_eq!(parse_evtchn(b"1"), Ok(1));
        assert_eq!(parse_domid(b"0"), Ok(0));
        assert_eq!(parse_domid(b"32751"), Ok(0x7fef));
        assert!(parse_domid(b"32752").is_err());
        assert!(parse_domid(b"65535").is_err());
        assert!(parse_domid(b"65536").is_err());
    }

    #[test]
    fn versions_good() {
        assert_eq!(parse_versions(b"1").map(|v| v.contains(1)), Ok(true));
        let v = parse_versions(b"1,2,30").unwrap();
        assert_eq!(v.as_slice(), &[1, 2, 30]);
        assert_eq!(v.highest_common(&[1, 2]), Some(2));
        assert_eq!(v.highest_common(&[7]), None);
        assert!(parse_versions(b"1,2,3,4,5,6,7,8").is_ok());
    }

    #[test]
    fn versions_hostile() {
        assert_eq!(parse_versions(b""), Err(ValueError::Empty));
        assert_eq!(parse_versions(b","), Err(ValueError::EmptyItem));
        assert_eq!(parse_versions(b"1,,2"), Err(ValueError::EmptyItem));
        assert_eq!(parse_versions(b",1"), Err(ValueError::EmptyItem));
        assert_eq!(parse_versions(b"1,"), Err(ValueError::EmptyItem));
        assert_eq!(parse_versions(b"2,1"), Err(ValueError::NotIncreasing));
        assert_eq!(parse_versions(b"1,1"), Err(ValueError::NotIncreasing));
        assert!(matches!(
            parse_versions(b"0"),
            Err(ValueError::OutOfRange { .. })
        ));
        assert_eq!(
            parse_versions(b"1, 2"),
            Err(ValueError::NotDecimal { offset: 0 })
        );
        assert_eq!(parse_versions(b"01"), Err(ValueError::LeadingZero));
        assert_eq!(
            parse_versions(b"1,2,3,4,5,6,7,8,9"),
            Err(ValueError::TooManyItems { max: MAX_VERSIONS })
        );
        assert_eq!(
            parse_versions(&[b'1'; MAX_VERSIONS_LEN + 1]),
            Err(ValueError::TooLong {
                max: MAX_VERSIONS_LEN
            })
        );
        assert!(Versions::new(&[]).is_err());
        assert!(Versions::new(&[
            u32::MAX - 7,
            u32::MAX - 6,
            u32::MAX - 5,
            u32::MAX - 4,
            u32::MAX - 3,
            u32::MAX - 2,
            u32::MAX - 1
        ])
        .is_err());
    }

    #[test]
    fn fixed_buf_overflow_is_an_error() {
        use core::fmt::Write;
        let mut b = FixedBuf::<4>::new();
        assert!(b.write_str("abcd").is_ok());
        assert!(b.write_str("e").is_err());
        assert_eq!(b.as_str(), "abcd");
        b.clear();
        assert_eq!(b.as_str(), "");
    }

    #[test]
    fn error_display() {
        let e = ValueError::OutOfRange {
            value: 9,
            min: 1,
            max: 8,
        };
        assert_eq!(std::format!("{e}"), "9 outside 1..=8");
    }

    proptest! {
        #[test]
        fn u32_round_trip(v in any::<u32>()) {
            prop_assert_eq!(parse_u32(Decimal::u64(v.into()).as_bytes()), Ok(v));
        }

        #[test]
        fn u64_round_trip(v in any::<u64>()) {
            prop_assert_eq!(parse_u64(Decimal::u64(v).as_bytes()), Ok(v));
        }

        #[test]
        fn u32_rejects_above_max(v in (u64::from(u32::MAX) + 1)..) {
            prop_assert!(parse_u32(Decimal::u64(v).as_bytes()).is_err());
        }

        #[test]
        fn leading_zeros_rejected(v in any::<u32>(), zeros in 1usize..4) {
            let mut s = String::new();
            for _ in 0..zeros {
                s.push('0');
            }
            s.push_str(&std::format!("{v}"));
            prop_assert!(parse_u64(s.as_bytes()).is_err());
            prop_assert!(parse_u32(s.as_bytes()).is_err());
        }

        #[test]
        fn versions_round_trip(mut items in proptest::collection::btree_set(1u32.., 1..=MAX_VERSIONS)) {
            let items: Vec<u32> = core::mem::take(&mut items).into_iter().collect();
            match Versions::new(&items) {
                Ok(v) => {
                    let text = std::format!("{v}");
                    prop_assert_eq!(parse_versions(text.as_bytes()), Ok(v));
                    prop_assert_eq!(v.as_slice(), &items[..]);
                }
                // Only lists whose text is too long may be refused.
                Err(e) => prop_assert_eq!(e, ValueError::TooLong { max: MAX_VERSIONS_LEN }),
            }
        }

        #[test]
        fn state_round_trip(v in 1u32..=8) {
            let s = parse_state(Decimal::u64(v.into()).as_bytes()).unwrap();
            prop_assert_eq!(s.as_u32(), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_u32(&data);
            let _ = parse_u64(&data);
            let _ = parse_bool(&data);
            let _ = parse_state(&data);
            let _ = parse_gref(&data);
            let _ = parse_evtchn(&data);
            let _ = parse_domid(&data);
            let _ = parse_versions(&data);
        }

        #[test]
        fn huge_values_refused_by_length(n in 65usize..100_000) {
            let data = std::vec![b'1'; n];
            prop_assert!(parse_u64(&data).is_err());
            prop_assert!(parse_versions(&data).is_err());
        }
    }
}
