// SPDX-License-Identifier: MIT
//! Xen basics the protocol names: grant references, domain ids and the
//! status codes carried in responses.

use super::error::Error;
use super::limits::GNTTAB_NR_RESERVED_ENTRIES;
use core::fmt;

/// A grant reference that may name a page granted by a peer: never zero and
/// never one of Xen's reserved entries.
///
/// # Invariants
///
/// The value is at least [`GNTTAB_NR_RESERVED_ENTRIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(u32);

impl GrantRef {
    /// The lowest valid reference (the first after Xen's reserved ones):
    /// a filler for output arrays before they are decoded into.
    pub const FIRST: GrantRef = GrantRef(GNTTAB_NR_RESERVED_ENTRIES);

    /// Checks a raw reference from the wire.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidGref`] if `raw` is zero or reserved.
    pub const fn new(raw: u32) -> Result<Self, Error> {
        if raw < GNTTAB_NR_RESERVED_ENTRIES {
            Err(Error::InvalidGref(raw))
        } else {
            // INVARIANT: checked just above.
            Ok(GrantRef(raw))
        }
    }

    /// The raw reference.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// First domain id Xen reserves for itself (`DOMID_FIRST_RESERVED`): ids at
/// or above it (`DOMID_SELF`, `DOMID_IO`, ...) never name a peer.
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

/// The id of a real domain.
///
/// # Invariants
///
/// The value is below [`DOMID_FIRST_RESERVED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(u16);

impl DomId {
    /// Domain 0.
    pub const DOM0: DomId = DomId(0);

    /// Checks a raw domain id, from user space or xenstore.
    ///
    /// # Errors
    ///
    /// [`Error::BadDomId`] if `raw` is a reserved id or does not fit 16 bits.
    pub const fn new(raw: u32) -> Result<Self, Error> {
        if raw >= DOMID_FIRST_RESERVED as u32 {
            Err(Error::BadDomId(raw))
        } else {
            // INVARIANT: checked just above.
            Ok(DomId(raw as u16))
        }
    }

    /// The raw id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Status of a response: success, or the reason a request failed as a
/// negative Xen errno (`xen/include/public/errno.h`, the values displif uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// The request was carried out.
    Ok = 0,
    /// The sender may not do this (e.g. a read-write export on a device
    /// that does not allow it).
    PermissionDenied = -1,
    /// No buffer with this id from this peer.
    NoSuchBuffer = -2,
    /// The buffer is larger than the receiver accepts.
    TooLarge = -7,
    /// The receiver ran out of memory.
    NoMemory = -12,
    /// The buffer is still mapped; see the operation for what follows.
    Busy = -16,
    /// An export with this id already exists.
    Exists = -17,
    /// The request is malformed (reserved fields, counts, references).
    Invalid = -22,
    /// The receiver keeps no more buffers from this peer.
    NoSpace = -28,
    /// The operation code is not supported.
    NotSupported = -95,
}

impl Status {
    /// Decodes a status from the wire.
    ///
    /// # Errors
    ///
    /// [`Error::BadStatus`] for a value this version does not define.
    pub const fn from_wire(raw: i32) -> Result<Self, Error> {
        Ok(match raw {
            0 => Status::Ok,
            -1 => Status::PermissionDenied,
            -2 => Status::NoSuchBuffer,
            -7 => Status::TooLarge,
            -12 => Status::NoMemory,
            -16 => Status::Busy,
            -17 => Status::Exists,
            -22 => Status::Invalid,
            -28 => Status::NoSpace,
            -95 => Status::NotSupported,
            other => return Err(Error::BadStatus(other)),
        })
    }

    /// The wire value (a negative errno, or zero).
    pub const fn to_wire(self) -> i32 {
        self as i32
    }

    /// The positive Linux errno matching this status, zero for `Ok` (the
    /// Xen and Linux values of these codes are the same).
    pub const fn errno(self) -> i32 {
        -(self as i32)
    }
}

impl From<Error> for Status {
    /// The status a receiver answers when it refuses a request for `err`.
    fn from(err: Error) -> Self {
        match err {
            Error::BufferTooLarge { .. } => Status::TooLarge,
            Error::UnknownOp(_) => Status::NotSupported,
            _ => Status::Invalid,
        }
    }
}
