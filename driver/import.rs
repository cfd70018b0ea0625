// SPDX-License-Identifier: GPL-2.0

//! `HDMABUF_IOCTL_IMPORT`: from an announced buffer to a dma-buf over
//! the exporter's pages (`mapping.rs` maps them), or another reference to
//! the dma-buf of a buffer mapped already.

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::sync::Arc;

use super::common::fence::MAX_FENCES;
use super::common::id::HyperDmabufId;
use super::common::wire::Export;
use crate::conn::{Conn, Import};
use crate::ffi::dmabuf::{DmabufRef, ReservedFd};
use crate::ffi::{self, GNTMAP_HOST_MAP, GNTMAP_READONLY};
use crate::mapping::{read_directory, GrantMapping, ImportedBuffer, UnmapSlot};
use crate::registry::Driver;
use crate::stats;

/// Maps the buffer and exports it as a dma-buf.
fn map_and_export(
    driver: &Driver,
    conn: &Arc<Conn>,
    export: &Export,
    max_bytes: u64,
    writable: bool,
) -> Result<DmabufRef> {
    let refs = read_directory(driver, export, conn.peer, max_bytes)?;
    let flags = GNTMAP_HOST_MAP | if writable { 0 } else { GNTMAP_READONLY };
    let mapping = GrantMapping::map(driver, &refs, conn.peer, flags)?;
    conn.import_mapped(driver, &export.hid)?;
    let unmap_slot = match UnmapSlot::new(GFP_KERNEL) {
        Ok(slot) => slot,
        Err(e) => {
            drop(mapping);
            conn.import_released(driver, &export.hid);
            return Err(e);
        }
    };
    let buffer = ImportedBuffer {
        conn: conn.clone(),
        hid: export.hid,
        size: export.size,
        writable,
        refs,
        mapping,
        unmap_slot,
    };
    let buffer = match KBox::new(buffer, GFP_KERNEL) {
        Ok(b) => b,
        Err(_) => {
            // `KBox::new` consumed the buffer, unmapping it.
            conn.import_released(driver, &export.hid);
            return Err(ENOMEM);
        }
    };
    match DmabufRef::export_owned(buffer) {
        Ok(buf) => {
            stats::DMABUFS.inc();
            Ok(buf)
        }
        Err((e, buffer)) => {
            KBox::into_inner(buffer).unmap_and_release(driver, &driver.unmaps);
            Err(e)
        }
    }
}

/// `HDMABUF_IOCTL_IMPORT`: a new O_CLOEXEC dma-buf fd for `hid`, its
/// size, and whether it is read-write (a buffer mapped already comes back
/// as it is mapped). The fd is installed only after `deliver` (which
/// writes them to user space) succeeded.
pub(crate) fn import(
    driver: &Driver,
    hid: &HyperDmabufId,
    writable: bool,
    deliver: impl FnOnce(i32, u64, bool) -> Result,
) -> Result {
    let fd = ReservedFd::reserve()?;
    let (conn, step) = begin(driver, hid, writable)?;
    let (buf, size, writable) = match step {
        Import::Reuse(buf, size, mapped_writable) => (buf, size, mapped_writable),
        Import::Map(export, max) => match map_and_export(driver, &conn, &export, max, writable) {
            Ok(buf) => {
                // Readers wait for the peer's fences on the buffer: the
                // dma-buf's reservation object is held, with room for as
                // many as the ledger keeps, while the import turns live and
                // they are added; later ones reach it as they come.
                let locked = match buf.lock_for_fences(MAX_FENCES) {
                    Ok(mut resv) => {
                        conn.import_live(hid, buf.identity(), writable, |f| resv.add(f));
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = locked {
                    // Not live: our only reference goes, and the mapping
                    // with it (the exporter hears RELEASE).
                    drop(buf);
                    return Err(e);
                }
                stats::BUFFERS_MAPPED.inc();
                ffi::log_buffer(format_args!(
                    "{}: imported {} ({} bytes{}) from dom{}",
                    conn.name(),
                    hid,
                    export.size,
                    if writable { ", read-write" } else { "" },
                    conn.peer.get()
                ));
                (buf, export.size, writable)
            }
            Err(e) => {
                conn.import_abort(driver, hid);
                return Err(e);
            }
        },
    };
    deliver(fd.number(), size, writable)?;
    buf.install(fd);
    Ok(())
}

/// The import's first step ([`Conn::import_begin`]) on the connection
/// `hid` was announced on: the one the index names (`announced.rs`), or,
/// if that one does not know it, whichever does.
///
/// # Errors
///
/// `ENOENT` if no connection knows `hid`, `ENOMEM`, and those of
/// [`Conn::import_begin`].
fn begin(driver: &Driver, hid: &HyperDmabufId, writable: bool) -> Result<(Arc<Conn>, Import)> {
    // `None` if `conn` does not know `hid` (a stale hint, a key shared
    // with another connection's, or another connection's buffer).
    let on = |conn: &Arc<Conn>| match conn.import_begin(hid, writable) {
        Err(e) if e == ENOENT => None,
        step => Some(step.map(|step| (conn.clone(), step))),
    };
    let hinted = driver.announced.conn_of(hid).and_then(|id| driver.conn(id));
    if let Some(step) = hinted.as_ref().and_then(on) {
        return step;
    }
    driver
        .all_conns()?
        .iter()
        .find_map(on)
        .unwrap_or(Err(ENOENT))
}
