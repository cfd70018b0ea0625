// SPDX-License-Identifier: GPL-2.0

//! `HDMABUF_IOCTL_EXPORT`: from a local dma-buf to grants and a page
//! directory (`grants.rs`) and an announcement to the peer, or an update
//! of a dma-buf exported already.
//!
//! Grant references are enumerable, so a peer may map a page before it is
//! told of the buffer, or after a failed export: those paths retire the
//! grants as an unexport does.

use kernel::prelude::*;

use super::common::grantable::{self, PinStep};
use super::common::id::{HyperDmabufId, KEY_LEN};
use super::common::ledger::{self, export_flags_allowed, export_layout, ExportRefusal, FileRights};
use super::common::uapi::ExportArgs;
use super::common::wire::{Export, ExportFlags, VERSION_3};
use super::common::xen::Status;
use crate::conn::Conn;
use crate::ffi::dmabuf::{DmabufRef, PinnedDmabuf};
use crate::ffi::fence::FenceWatch;
use crate::ffi::{self, errno};
use crate::grants::{ExportEntry, ExportGrants};
use crate::peerlog::Level;
use crate::registry::Driver;

/// How long an exporter waits for the peer to accept an announcement.
const ANSWER_TIMEOUT_MS: u32 = 5000;

/// A fresh, unguessable id.
fn new_id(driver: &Driver) -> Result<HyperDmabufId> {
    let mut key = [0u8; KEY_LEN];
    ffi::random_bytes(&mut key);
    HyperDmabufId::new(driver.next_id(), key).map_err(|_| EINVAL)
}

/// The errno of an export refused by the ledger's policy.
fn refused(refusal: ExportRefusal) -> Error {
    Error::from_errno(-refusal.errno())
}

/// `HDMABUF_IOCTL_EXPORT` for the open file `file`.
///
/// # Errors
///
/// For a buffer exported already to the peer: `EPERM` if another file
/// exported it and `file` may not manage it, `EINVAL` if with other
/// flags. `ENOTCONN` with no connection to the peer; the ledger's refusals
/// (`EPERM`, `EINVAL`, `E2BIG`); `EBADF` or `EINVAL` for a descriptor that
/// is not open or no dma-buf, and `EINVAL` for pages that may not be
/// granted (`common::grantable`); what the exporter's attach or map
/// returned; `ENOMEM`; the peer's refusal as an errno, or `ETIMEDOUT`
/// without an answer.
pub(crate) fn export(
    driver: &Driver,
    file: FileRights,
    args: &ExportArgs,
) -> Result<HyperDmabufId> {
    let owner = file.file;
    let conn = driver
        .conn_for_peer(args.remote)
        .ok_or_else(errno::enotconn)?;
    let config = conn.config().ok_or_else(errno::enotconn)?;
    let writable = args.flags.contains(ExportFlags::WRITABLE);
    export_flags_allowed(&config, args.flags).map_err(refused)?;
    if let Some(hid) = reexport(driver, &conn, file, args)? {
        return Ok(hid);
    }
    let pin = PinnedDmabuf::pin(args.dmabuf_fd)
        .map_err(|f| Error::from_errno(-grantable::pin_errno(f.step, f.errno)))?;
    let size = pin.size();
    let layout = export_layout(&config, size).map_err(|why| {
        if why == ExportRefusal::BadSize {
            driver.local_log(
                Level::Warn,
                format_args!(
                    "export to dom{} refused: the dma-buf is {size} bytes, not a whole \
                     number of pages",
                    conn.peer.get()
                ),
            );
        }
        refused(why)
    })?;
    let identity = pin.identity();
    // What the importer's readers wait for, if the session can carry it.
    let fence = if config.version >= VERSION_3 {
        FenceWatch::pending(&pin)?
    } else {
        None
    };
    let hid = new_id(driver)?;
    let mut grants = ExportGrants::new(pin, conn.peer, hid, owner, &layout, |why| {
        driver.local_log(
            Level::Warn,
            format_args!("export to dom{} refused: {why}", conn.peer.get()),
        );
    })?;
    let inline = ledger::refs_inline(&config, &layout, &args.priv_data, fence.is_some());
    let pages = match grants.grant(&layout, writable, inline) {
        Ok(pages) => pages,
        Err(e) => {
            // The peer may map what was granted already.
            driver.retire(grants);
            return Err(e);
        }
    };
    let info = Export {
        hid,
        size,
        pages,
        flags: args.flags,
        priv_data: args.priv_data,
        // The ledger gives it one if `fence` is some.
        fence: None,
    };
    let entry = ExportEntry::new(info, owner, identity, grants);
    let token = driver.next_id();
    conn.announce(driver, entry, token, fence)?;
    match conn.wait(token, ANSWER_TIMEOUT_MS) {
        Ok(Status::Ok) => {
            ffi::log_buffer(format_args!(
                "{}: exported {} ({} bytes, {} pages{}) to dom{}",
                conn.name(),
                hid,
                size,
                layout.nr_pages(),
                if writable { ", read-write" } else { "" },
                conn.peer.get()
            ));
            Ok(hid)
        }
        // The connection went down while we waited: `Conn::detach` failed
        // the request (NoSuchBuffer) as it took the link, under the lock
        // we woke with. That is no refusal by the peer: ENOTCONN, as for
        // an export begun after the loss (docs/driver.md, peer death).
        Ok(Status::NoSuchBuffer) if conn.config().is_none() => Err(errno::enotconn()),
        // The channel already ended a refused export.
        Ok(status) => Err(Error::from_errno(-ledger::export_refusal_errno(status))),
        Err(e) => {
            withdraw(driver, &conn, &hid);
            Err(e)
        }
    }
}

/// The export of a dma-buf exported to the peer already is a new frame
/// of it (`Conn::update`): found by the dma-buf's address, without a
/// walk of its pages, so it costs the same at every size. `None` if it is
/// not exported to the peer (or stopped being so meanwhile).
fn reexport(
    driver: &Driver,
    conn: &Conn,
    file: FileRights,
    args: &ExportArgs,
) -> Result<Option<HyperDmabufId>> {
    let buf = DmabufRef::from_fd(args.dmabuf_fd)
        .map_err(|e| Error::from_errno(-grantable::pin_errno(PinStep::Get, -e.to_errno())))?;
    // Our export holds the dma-buf, so its address names no other buffer
    // while it lasts; `buf` holds it while we look.
    let Some(hid) = conn.export_of_identity(driver, buf.identity()) else {
        return Ok(None);
    };
    match conn.update(driver, &hid, file, Some(args.flags), args.priv_data) {
        Ok(()) => Ok(Some(hid)),
        // Unexported between the two looks: a new export.
        Err(e) if e == ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// The peer did not answer: unexport, so the grants end once it lets go.
fn withdraw(driver: &Driver, conn: &Conn, hid: &HyperDmabufId) {
    let _ = conn.unexport(driver, hid, 0);
}
