// SPDX-License-Identifier: MIT
//! The one error type of the protocol core.

use core::fmt;

/// Why an input from a peer, from user space or from a caller was refused.
///
/// Every decoder and ring operation returns one of these instead of
/// panicking. Values carried in a variant are the offending input, for the
/// log line the driver prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The input is shorter than the record it should hold.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A message carries an operation code this version does not know.
    UnknownOp(u8),
    /// A field marked reserved is not zero.
    ReservedNotZero {
        /// Byte offset of the first non-zero reserved byte in its record.
        offset: usize,
    },
    /// A flags field has bits set that this version does not define.
    UnknownFlags(u32),
    /// A private-data length exceeds [`super::limits::MAX_PRIV_LEN`].
    PrivTooLong(u32),
    /// A buffer size is zero.
    EmptyBuffer,
    /// A buffer size exceeds the configured maximum.
    BufferTooLarge {
        /// Size asked for, in bytes.
        size: u64,
        /// Largest size accepted, in bytes.
        max: u64,
    },
    /// A count disagrees with the count derived from a size.
    CountMismatch {
        /// The count the size implies.
        expected: u32,
        /// The count found.
        found: u32,
    },
    /// The page directory describes a buffer of another size than announced.
    SizeMismatch {
        /// Size in the export message.
        announced: u64,
        /// Size in the directory.
        found: u64,
    },
    /// A page-directory page does not start with the expected magic.
    BadMagic(u32),
    /// A page-directory page has a layout version this code does not know.
    BadVersion(u16),
    /// A grant reference is zero or one of Xen's reserved entries.
    InvalidGref(u32),
    /// More grant references inline than an EXPORT has room for beside its
    /// private data.
    TooManyInlineRefs(u32),
    /// The same grant reference appears twice where each must be distinct.
    DuplicateGref(u32),
    /// A leaf page of a page directory names the wrong position.
    BadLeafIndex {
        /// Position the leaf was referenced from.
        expected: u32,
        /// Position the leaf claims.
        found: u32,
    },
    /// The peer moved a ring producer index further than the ring holds.
    RingOverflow {
        /// Entries the producer index claims are pending.
        pending: u32,
        /// Slots in the ring.
        size: u32,
    },
    /// No free slot on the ring; try again after the peer consumed some.
    RingFull,
    /// The shared memory is too small for the ring asked for.
    RingTooSmall,
    /// A ring page order outside `0..=MAX_RING_PAGE_ORDER`.
    BadRingOrder(u32),
    /// A response names a request id that is not outstanding.
    UnexpectedResponse(u32),
    /// A response carries a status code that is not defined.
    BadStatus(i32),
    /// A `hyper_dmabuf_id` is malformed (id zero).
    BadId,
    /// A mapping epoch is zero, or present where none belongs.
    BadEpoch,
    /// A fence id is zero, or a SIGNAL's result is not defined.
    BadFence,
    /// A domain id is one of Xen's reserved ids or does not fit 16 bits.
    BadDomId(u32),
    /// An unexport delay longer than [`super::uapi::MAX_UNEXPORT_DELAY_MS`].
    DelayTooLong(u32),
    /// A query item this version does not define.
    UnknownQueryItem(u32),
    /// An event type this version does not define.
    UnknownEvent(u32),
    /// A caller-supplied output buffer is too small for the result.
    OutputTooSmall {
        /// Entries needed.
        needed: usize,
        /// Entries available.
        got: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { needed, got } => {
                write!(f, "truncated input: need {needed} bytes, got {got}")
            }
            Error::UnknownOp(op) => write!(f, "unknown operation {op:#04x}"),
            Error::ReservedNotZero { offset } => {
                write!(f, "reserved field at offset {offset} is not zero")
            }
            Error::UnknownFlags(flags) => write!(f, "unknown flag bits {flags:#x}"),
            Error::PrivTooLong(len) => write!(f, "private data of {len} bytes is too long"),
            Error::EmptyBuffer => write!(f, "buffer size is zero"),
            Error::BufferTooLarge { size, max } => {
                write!(f, "buffer of {size} bytes exceeds the maximum of {max}")
            }
            Error::CountMismatch { expected, found } => {
                write!(f, "count {found} disagrees with size (expected {expected})")
            }
            Error::SizeMismatch { announced, found } => {
                write!(
                    f,
                    "directory describes {found} bytes, {announced} announced"
                )
            }
            Error::BadMagic(magic) => write!(f, "bad page-directory magic {magic:#010x}"),
            Error::BadVersion(v) => write!(f, "unknown page-directory version {v}"),
            Error::InvalidGref(gref) => write!(f, "invalid grant reference {gref}"),
            Error::TooManyInlineRefs(n) => {
                write!(f, "{n} grant references do not fit inline in the message")
            }
            Error::DuplicateGref(gref) => write!(f, "grant reference {gref} appears twice"),
            Error::BadLeafIndex { expected, found } => {
                write!(
                    f,
                    "directory leaf claims index {found}, expected {expected}"
                )
            }
            Error::RingOverflow { pending, size } => {
                write!(
                    f,
                    "peer claims {pending} pending entries on a ring of {size}"
                )
            }
            Error::RingFull => write!(f, "ring is full"),
            Error::RingTooSmall => write!(f, "shared memory too small for the ring"),
            Error::BadRingOrder(order) => write!(f, "ring page order {order} out of range"),
            Error::UnexpectedResponse(id) => write!(f, "response to unknown request {id}"),
            Error::BadStatus(status) => write!(f, "undefined status code {status}"),
            Error::BadId => write!(f, "malformed hyper_dmabuf_id"),
            Error::BadEpoch => write!(f, "bad mapping epoch"),
            Error::BadFence => write!(f, "bad fence id or result"),
            Error::BadDomId(domid) => write!(f, "{domid} is not a valid domain id"),
            Error::DelayTooLong(ms) => write!(f, "unexport delay of {ms} ms is too long"),
            Error::UnknownQueryItem(item) => write!(f, "unknown query item {item}"),
            Error::UnknownEvent(kind) => write!(f, "unknown event type {kind}"),
            Error::OutputTooSmall { needed, got } => {
                write!(f, "output holds {got} entries, {needed} needed")
            }
        }
    }
}

impl core::error::Error for Error {}
