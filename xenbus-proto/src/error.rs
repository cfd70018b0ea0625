// SPDX-License-Identifier: MIT
//! The error types of the XenBus protocol crate.
//!
//! [`ValueError`] says what is wrong with one node value (a string the peer
//! or the toolstack wrote); [`Error`] is what every operation of this crate
//! returns, and names the node a bad value came from.

use core::fmt;

/// What is wrong with the text of one xenstore node value.
///
/// Returned by the parsers in [`super::parse`]; every byte sequence either
/// parses or yields one of these, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueError {
    /// The value is the empty string.
    Empty,
    /// The value is longer than any valid value of its kind.
    TooLong {
        /// Largest length accepted, in bytes.
        max: usize,
    },
    /// A byte that is not an ASCII decimal digit (this includes signs,
    /// whitespace, `0x` prefixes and NUL bytes).
    NotDecimal {
        /// Offset of the first offending byte.
        offset: usize,
    },
    /// A number with a leading zero (only `"0"` itself may start with `0`).
    LeadingZero,
    /// A number that does not fit the type of its node.
    Overflow,
    /// A number outside the range its node allows.
    OutOfRange {
        /// The number found.
        value: u64,
        /// Smallest value accepted.
        min: u64,
        /// Largest value accepted.
        max: u64,
    },
    /// An empty item in a comma-separated list (`"1,,2"`, `",1"`, `"1,"`).
    EmptyItem,
    /// A list with more items than allowed.
    TooManyItems {
        /// Largest number of items accepted.
        max: usize,
    },
    /// A list whose items are not in strictly increasing order (this also
    /// rejects duplicates).
    NotIncreasing,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("empty value"),
            Self::TooLong { max } => write!(f, "value longer than {max} bytes"),
            Self::NotDecimal { offset } => {
                write!(f, "non-decimal byte at offset {offset}")
            }
            Self::LeadingZero => f.write_str("number with a leading zero"),
            Self::Overflow => f.write_str("number overflows its type"),
            Self::OutOfRange { value, min, max } => {
                write!(f, "{value} outside {min}..={max}")
            }
            Self::EmptyItem => f.write_str("empty list item"),
            Self::TooManyItems { max } => write!(f, "more than {max} list items"),
            Self::NotIncreasing => f.write_str("list not strictly increasing"),
        }
    }
}

/// Why a xenstore operation, a negotiation or a configuration was refused.
///
/// Values carried in a variant are for the log line the driver prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A node value failed to parse or is out of range.
    Value {
        /// Name of the node (for `ring-ref%u` nodes, the prefix).
        node: &'static str,
        /// Index of a `ring-ref%u`/`back-ring-ref%u` node, else `None`.
        index: Option<u32>,
        /// What is wrong with the value.
        error: ValueError,
    },
    /// A node the protocol requires is absent.
    Missing {
        /// Name of the node (for `ring-ref%u` nodes, the prefix).
        node: &'static str,
        /// Index of a `ring-ref%u`/`back-ring-ref%u` node, else `None`.
        index: Option<u32>,
    },
    /// A `ring-ref%u`/`back-ring-ref%u` node exists beyond the count that
    /// `ring-page-order` implies.
    ExtraNode {
        /// Prefix of the node.
        node: &'static str,
        /// Its index.
        index: u32,
    },
    /// The same grant reference is published twice for the rings.
    DuplicateGref(u32),
    /// The peer's `versions` list does not contain a version we speak.
    NoCommonVersion,
    /// The frontend chose a `version` the backend did not offer.
    UnsupportedVersion(u32),
    /// The frontend chose a `ring-page-order` above the backend's maximum.
    RingOrderTooLarge {
        /// Order the frontend chose.
        order: u32,
        /// Largest order the backend offered.
        max: u32,
    },
    /// A caller-supplied value or limit is outside what the protocol allows
    /// (a bug in the caller, not in the peer).
    InvalidArgument,
    /// A node path does not fit the fixed path buffer.
    PathTooLong,
    /// A node value does not fit the caller's buffer.
    ValueTooLong,
    /// The toolstack asked to create a device whose frontend or backend
    /// directory exists already.
    Exists,
    /// A transaction conflicted with another writer; start it again.
    Again,
    /// A transaction still conflicted after the bounded number of retries.
    RetriesExhausted,
    /// The store refused the access (xenstore `EACCES`).
    Denied,
    /// Any other store failure, with the positive errno the store reported.
    Store(i32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Value {
                node,
                index: Some(i),
                error,
            } => write!(f, "node {node}{i}: {error}"),
            Self::Value {
                node,
                index: None,
                error,
            } => write!(f, "node {node}: {error}"),
            Self::Missing {
                node,
                index: Some(i),
            } => write!(f, "node {node}{i} missing"),
            Self::Missing { node, index: None } => write!(f, "node {node} missing"),
            Self::ExtraNode { node, index } => {
                write!(f, "node {node}{index} beyond the ring size")
            }
            Self::DuplicateGref(g) => write!(f, "grant reference {g} published twice"),
            Self::NoCommonVersion => f.write_str("no common protocol version"),
            Self::UnsupportedVersion(v) => write!(f, "protocol version {v} not offered"),
            Self::RingOrderTooLarge { order, max } => {
                write!(f, "ring-page-order {order} above maximum {max}")
            }
            Self::InvalidArgument => f.write_str("invalid argument"),
            Self::PathTooLong => f.write_str("xenstore path too long"),
            Self::ValueTooLong => f.write_str("xenstore value too long"),
            Self::Exists => f.write_str("device directory exists already"),
            Self::Again => f.write_str("transaction conflict"),
            Self::RetriesExhausted => f.write_str("transaction retries exhausted"),
            Self::Denied => f.write_str("xenstore access denied"),
            Self::Store(errno) => write!(f, "xenstore error {errno}"),
        }
    }
}

impl Error {
    /// Attaches a node name to a value error.
    pub fn value(node: &'static str, index: Option<u32>, error: ValueError) -> Self {
        Self::Value { node, index, error }
    }
}
