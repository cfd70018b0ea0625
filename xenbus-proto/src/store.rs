// SPDX-License-Identifier: MIT
//! The small xenstore interface the protocol logic runs over, and node
//! paths built in fixed buffers.
//!
//! The kernel module implements [`Store`] over Linux's `xenbus_read`,
//! `xenbus_write`, `xenbus_rm` and `xenbus_transaction_start/end`; the host
//! tests over the in-memory store of the `hyper-dmabuf-xenbus-mem-store`
//! crate; the xl-config tool over the xenstore wire protocol.

use core::fmt::Write;

use super::error::Error;
use super::parse::FixedBuf;

/// A xenstore transaction handle; [`Txn::NONE`] is `XBT_NIL`, an access
/// outside any transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Txn(pub u32);

impl Txn {
    /// No transaction (`XBT_NIL`).
    pub const NONE: Self = Self(0);
}

/// What a domain may do with a node, as in xenstore's permission letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermKind {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

/// One entry of a node's permission list. The first entry names the
/// owner and the access of every domain not listed; the others grant
/// access to one domain each (xenstore's `n0`, `r5`, ... form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: u16,
    /// Its access.
    pub kind: PermKind,
}

/// Errno the default [`Store::set_perms`] reports (`EOPNOTSUPP`).
pub const EOPNOTSUPP: i32 = 95;

/// The xenstore operations the protocol needs. Nothing here allocates.
///
/// Paths are absolute (`/local/domain/...`). Every method takes the
/// transaction it runs in, [`Txn::NONE`] for none.
pub trait Store {
    /// Reads node `path` into `buf`.
    ///
    /// Returns `Ok(Some(len))` with the value in `buf[..len]`, or
    /// `Ok(None)` if the node does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::ValueTooLong`] if the value does not fit `buf` (the node
    /// exists but its value is not returned), [`Error::Again`] if the
    /// transaction must be restarted, [`Error::Denied`] or [`Error::Store`].
    fn read(&mut self, txn: Txn, path: &str, buf: &mut [u8]) -> Result<Option<usize>, Error>;

    /// Creates or overwrites node `path` with `value`, creating missing
    /// parent directories.
    ///
    /// # Errors
    ///
    /// [`Error::Again`], [`Error::Denied`] or [`Error::Store`].
    fn write(&mut self, txn: Txn, path: &str, value: &[u8]) -> Result<(), Error>;

    /// Removes node `path` and everything below it. Removing a node that
    /// does not exist succeeds (the kernel adaptor maps `ENOENT` to `Ok`).
    ///
    /// # Errors
    ///
    /// [`Error::Again`], [`Error::Denied`] or [`Error::Store`].
    fn remove(&mut self, txn: Txn, path: &str) -> Result<(), Error>;

    /// Starts a transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] (for example `EAGAIN` from a busy xenstored is
    /// [`Error::Again`]).
    fn transaction_start(&mut self) -> Result<Txn, Error>;

    /// Ends a transaction, committing it if `commit`, else aborting it.
    ///
    /// # Errors
    ///
    /// [`Error::Again`] if the commit conflicted with another writer (no
    /// write of the transaction took effect); [`Error::Store`].
    fn transaction_end(&mut self, txn: Txn, commit: bool) -> Result<(), Error>;

    /// Creates an empty directory node (the toolstack's `mkdir`). The
    /// default writes an empty value, which is what xenstored does.
    ///
    /// # Errors
    ///
    /// As [`Store::write`].
    fn mkdir(&mut self, txn: Txn, path: &str) -> Result<(), Error> {
        self.write(txn, path, b"")
    }

    /// Sets the permission list of node `path` (toolstack only; drivers
    /// never call it).
    ///
    /// # Errors
    ///
    /// The default refuses with `Error::Store(EOPNOTSUPP)`.
    fn set_perms(&mut self, txn: Txn, path: &str, perms: &[Perm]) -> Result<(), Error> {
        let _ = (txn, path, perms);
        Err(Error::Store(EOPNOTSUPP))
    }
}

/// How many times the helpers of this crate start a transaction again
/// after a conflict before giving up with [`Error::RetriesExhausted`].
pub const TRANSACTION_TRIES: u32 = 16;

/// Runs `body` in a transaction, starting again on [`Error::Again`] (from
/// the body or from the commit) at most `tries` times in all.
///
/// The body must be idempotent: it may run several times. If it fails with
/// any other error the transaction is aborted and the error returned.
///
/// # Errors
///
/// The body's error, a store error, or [`Error::RetriesExhausted`].
pub fn with_transaction<S, T, F>(store: &mut S, tries: u32, mut body: F) -> Result<T, Error>
where
    S: Store + ?Sized,
    F: FnMut(&mut S, Txn) -> Result<T, Error>,
{
    for _ in 0..tries {
        let txn = match store.transaction_start() {
            Ok(t) => t,
            Err(Error::Again) => continue,
            Err(e) => return Err(e),
        };
        match body(store, txn) {
            Ok(value) => match store.transaction_end(txn, true) {
                Ok(()) => return Ok(value),
                Err(Error::Again) => continue,
                Err(e) => return Err(e),
            },
            Err(e) => {
                // The body's error is the one worth reporting; an abort
                // failure changes nothing for the caller.
                let _ = store.transaction_end(txn, false);
                if e != Error::Again {
                    return Err(e);
                }
            }
        }
    }
    Err(Error::RetriesExhausted)
}

/// Longest node path this crate builds. Xen allows longer ones
/// (`XENSTORE_ABS_PATH_MAX` is 3072), but every path of this protocol is
/// below 100 bytes.
pub const PATH_MAX: usize = 256;

/// An absolute node path built in a fixed buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NodePath(FixedBuf<PATH_MAX>);

impl NodePath {
    /// The path `<dir>/<node>`.
    ///
    /// # Errors
    ///
    /// [`Error::PathTooLong`]; [`Error::InvalidArgument`] if `dir` is empty
    /// or `node` is empty or contains `/`.
    pub fn new(dir: &str, node: &str) -> Result<Self, Error> {
        if dir.is_empty() || node.is_empty() || node.contains('/') {
            return Err(Error::InvalidArgument);
        }
        Self::format(format_args!("{dir}/{node}"))
    }

    /// The path `<dir>/<prefix><index>`, as for `ring-ref%u`.
    ///
    /// # Errors
    ///
    /// As [`NodePath::new`].
    pub fn indexed(dir: &str, prefix: &str, index: u32) -> Result<Self, Error> {
        if dir.is_empty() || prefix.is_empty() || prefix.contains('/') {
            return Err(Error::InvalidArgument);
        }
        Self::format(format_args!("{dir}/{prefix}{index}"))
    }

    /// The frontend directory `/local/domain/<front>/device/hyper_dmabuf/<devid>`.
    ///
    /// # Errors
    ///
    /// [`Error::PathTooLong`] (never, for these lengths).
    pub fn frontend_dir(front: u16, devid: u32) -> Result<Self, Error> {
        Self::format(format_args!(
            "/local/domain/{front}/device/{}/{devid}",
            super::schema::DEVICE_TYPE
        ))
    }

    /// The backend directory
    /// `/local/domain/<back>/backend/hyper_dmabuf/<front>/<devid>`.
    ///
    /// # Errors
    ///
    /// [`Error::PathTooLong`] (never, for these lengths).
    pub fn backend_dir(back: u16, front: u16, devid: u32) -> Result<Self, Error> {
        Self::format(format_args!(
            "/local/domain/{back}/backend/{}/{front}/{devid}",
            super::schema::DEVICE_TYPE
        ))
    }

    fn format(args: core::fmt::Arguments<'_>) -> Result<Self, Error> {
        let mut buf = FixedBuf::new();
        buf.write_fmt(args).map_err(|_| Error::PathTooLong)?;
        Ok(Self(buf))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl core::fmt::Debug for NodePath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::fmt::Display for NodePath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}
