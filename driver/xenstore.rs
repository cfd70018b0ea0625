// SPDX-License-Identifier: GPL-2.0

//! The kernel's xenstore client as the `Store` the XenBus schema runs
//! over, so node values are parsed by `xenbus-proto`'s strict parsers
//! rather than the kernel's lenient `%u` scanning.

use kernel::prelude::*;
use kernel::str::CString;

use super::common::xen::DomId;
use super::xenbus_proto::parse::parse_domid;
use super::xenbus_proto::{schema, Error, Store, Txn, XenbusState};
use crate::ffi;
use crate::ffi::xenbus::{self, XenbusDev};

/// Xenstore through the kernel's xenbus client.
pub(crate) struct XenStore;

fn path(p: &str) -> Result<CString, Error> {
    CString::try_from_fmt(kernel::fmt!("{}", p)).map_err(|_| Error::PathTooLong)
}

fn store_err(e: kernel::error::Error) -> Error {
    if e == EAGAIN {
        Error::Again
    } else if e == EACCES || e == EPERM {
        Error::Denied
    } else {
        Error::Store(-e.to_errno())
    }
}

impl Store for XenStore {
    fn read(&mut self, txn: Txn, p: &str, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        match xenbus::xs_read(txn.0, &path(p)?, buf) {
            Ok(found) => Ok(found),
            Err(e) if e == ENOSPC => Err(Error::ValueTooLong),
            Err(e) => Err(store_err(e)),
        }
    }

    fn write(&mut self, txn: Txn, p: &str, value: &[u8]) -> Result<(), Error> {
        let text = core::str::from_utf8(value).map_err(|_| Error::InvalidArgument)?;
        let value =
            CString::try_from_fmt(kernel::fmt!("{}", text)).map_err(|_| Error::ValueTooLong)?;
        xenbus::xs_write(txn.0, &path(p)?, &value).map_err(store_err)
    }

    fn remove(&mut self, txn: Txn, p: &str) -> Result<(), Error> {
        match xenbus::xs_rm(txn.0, &path(p)?) {
            // Removing what is not there leaves the store as asked.
            Err(e) if e == ENOENT => Ok(()),
            other => other.map_err(store_err),
        }
    }

    fn transaction_start(&mut self) -> Result<Txn, Error> {
        xenbus::xs_transaction_start().map(Txn).map_err(store_err)
    }

    fn transaction_end(&mut self, txn: Txn, commit: bool) -> Result<(), Error> {
        xenbus::xs_transaction_end(txn.0, !commit).map_err(store_err)
    }
}

/// This domain's id, from its xenstore node `domid` (relative paths are
/// the domain's own directory); `None` when absent or not a domain id.
pub(crate) fn own_domid() -> Option<DomId> {
    let mut buf = [0u8; 16];
    let len = XenStore.read(Txn::NONE, "domid", &mut buf).ok()??;
    let id = parse_domid(buf.get(..len)?).ok()?;
    DomId::new(u32::from(id)).ok()
}

/// The state of the device's peer; `Unknown` when absent.
///
/// # Errors
///
/// The xenstore error when the node cannot be read or its value is not a
/// state; `InvalidArgument` if the peer's directory is not UTF-8.
pub(crate) fn peer_state(dev: &XenbusDev) -> Result<XenbusState, Error> {
    let otherend = dev
        .otherend()
        .to_str()
        .map_err(|_| Error::InvalidArgument)?;
    schema::read_state(&mut XenStore, otherend)
}

/// Polls the peer's state (no watch fires during removal) until
/// `released` says it let go of our pages, for at most five seconds.
pub(crate) fn await_peer_release(dev: &XenbusDev, released: fn(XenbusState) -> bool) -> bool {
    for _ in 0..50 {
        match peer_state(dev) {
            Ok(state) if released(state) => return true,
            Err(_) => return true,
            Ok(_) => ffi::sleep_ms(100),
        }
    }
    false
}

/// Why an action of a XenBus state machine failed: a kernel error, or a
/// xenstore value (the peer's or the toolstack's) that `xenbus-proto`
/// refused. The value error is kept rather than turned into an errno so
/// that the one line logged for the failure names the device *and* says
/// which node was wrong.
pub(crate) enum StepError {
    /// A kernel call failed.
    Kernel(kernel::error::Error),
    /// A node was missing or malformed, or negotiation failed.
    Value(Error),
}

impl From<kernel::error::Error> for StepError {
    fn from(e: kernel::error::Error) -> Self {
        StepError::Kernel(e)
    }
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::Value(e)
    }
}

impl core::fmt::Display for StepError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StepError::Kernel(e) => write!(f, "{:?}", e),
            StepError::Value(e) => write!(f, "{}", e),
        }
    }
}

/// Our directory and the peer's, as text.
///
/// # Errors
///
/// `EINVAL` if either path is not UTF-8.
pub(crate) fn dirs(dev: &XenbusDev) -> Result<(&str, &str)> {
    let ours = dev.nodename().to_str().map_err(|_| EINVAL)?;
    let theirs = dev.otherend().to_str().map_err(|_| EINVAL)?;
    Ok((ours, theirs))
}
