// SPDX-License-Identifier: GPL-2.0

//! Importing: from an announced buffer to a dma-buf over the exporter's
//! pages.
//!
//! The directory is mapped (root, then every leaf in one batch), copied
//! out and checked by `common::pgdir`, and unmapped; then every data page
//! is mapped in one batched call whose per-page statuses are all checked
//! (CVE-2021-26932: a batch is judged page by page, and what succeeded is
//! undone on failure). The dma-buf lives as long as anybody holds it; its
//! release unmaps the pages and tells the exporter.

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::sync::Arc;

use super::common::channel::ImportState;
use super::common::id::HyperDmabufId;
use super::common::pgdir;
use super::common::wire::{Export, ExportFlags};
use super::common::xen::{DomId, GrantRef};
use crate::conn::{Conn, ImportStep};
use crate::ffi::{
    self, DmabufRef, DmabufSource, GrantPages, ReservedFd, GNTMAP_HOST_MAP, GNTMAP_READONLY,
    GNTST_OKAY, INVALID_HANDLE,
};
use crate::registry::Driver;
use crate::stats;

/// A buffer a peer announced to us, as the importer keeps it.
pub(crate) struct ImportEntry {
    /// Protocol state.
    pub(crate) state: ImportState,
    /// The dma-buf's identity while one exists.
    pub(crate) live: Option<usize>,
    /// Whether that dma-buf is writable.
    pub(crate) live_writable: bool,
    /// An import ioctl is mapping it.
    pub(crate) busy: bool,
    /// The connection is gone; forgotten once its users let go.
    pub(crate) orphaned: bool,
}

impl ImportEntry {
    /// A newly announced buffer.
    pub(crate) fn new(state: ImportState) -> Self {
        ImportEntry {
            state,
            live: None,
            live_writable: false,
            busy: false,
            orphaned: false,
        }
    }
}

/// Peer grants mapped into our pages, unmapped on drop.
struct GrantMapping {
    pages: GrantPages,
    handles: KVVec<u32>,
    flags: u32,
}

impl GrantMapping {
    /// Maps `refs` of `peer` in one batch; all or nothing.
    fn map(refs: &[u32], peer: DomId, flags: u32) -> Result<Self> {
        let pages = GrantPages::alloc(refs.len())?;
        let mut ops = pages.map_ops(refs, peer.get(), flags)?;
        let mut mapping = GrantMapping {
            pages,
            handles: KVVec::from_elem(INVALID_HANDLE, refs.len(), GFP_KERNEL)?,
            flags,
        };
        let call = mapping.pages.map(&mut ops);
        let mut failed = 0usize;
        let mut first_bad = 0i16;
        for (handle, op) in mapping.handles.iter_mut().zip(ops.iter()) {
            if op.status == GNTST_OKAY {
                *handle = op.handle;
            } else {
                if failed == 0 {
                    first_bad = op.status;
                }
                failed += 1;
            }
        }
        let mapped = refs.len() - failed;
        stats::PAGES_MAPPED.add(mapped as i64);
        if failed > 0 || call.is_err() {
            ffi::log_ratelimited(
                peer,
                format_args!(
                    "dom{}: {} of {} grants could not be mapped (status {})",
                    peer.get(),
                    failed,
                    refs.len(),
                    first_bad
                ),
            );
            // Dropping `mapping` unmaps exactly the pages that succeeded.
            return Err(EIO);
        }
        Ok(mapping)
    }

    fn mapped(&self) -> usize {
        self.handles
            .iter()
            .filter(|h| **h != INVALID_HANDLE)
            .count()
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        let mapped = self.mapped();
        let pages = core::mem::replace(&mut self.pages, GrantPages::empty());
        match pages.unmap(&mut self.handles, self.flags) {
            Ok(()) => stats::PAGES_MAPPED.add(-(mapped as i64)),
            Err(_) => {
                // A page that may still show a foreign frame is never
                // reused or freed.
                pr_err!("could not unmap {} imported pages; leaking them\n", mapped);
                stats::PAGES_LEAKED.add(mapped as i64);
                pages.leak();
            }
        }
    }
}

/// Reads the directory of `export` from `peer`: the data grants.
fn read_directory(export: &Export, peer: DomId, max_bytes: u64) -> Result<KVVec<u32>> {
    let bad = |e: super::common::Error| {
        ffi::log_ratelimited(
            peer,
            format_args!(
                "dom{}: bad directory for buffer {}: {}",
                peer.get(),
                export.hid,
                e
            ),
        );
        EIO
    };
    let ro = GNTMAP_HOST_MAP | GNTMAP_READONLY;
    let root = GrantMapping::map(&[export.dir_gref.get()], peer, ro)?;
    let root_words = root.pages.words(0).ok_or(EIO)?;
    let layout = pgdir::read_root_header(root_words, export.size, max_bytes).map_err(bad)?;
    let nr_pages = layout.nr_pages() as usize;
    let mut data: KVVec<GrantRef> = KVVec::with_capacity(nr_pages, GFP_KERNEL)?;
    data.extend_with(nr_pages, GrantRef::FIRST, GFP_KERNEL)?;
    if layout.nr_leaves() == 0 {
        pgdir::read_root_entries(root_words, &layout, &mut data).map_err(bad)?;
    } else {
        let mut leaf_refs: KVec<GrantRef> = KVec::new();
        leaf_refs.extend_with(layout.nr_leaves() as usize, GrantRef::FIRST, GFP_KERNEL)?;
        pgdir::read_root_entries(root_words, &layout, &mut leaf_refs).map_err(bad)?;
        drop(root);
        let raw = raw_refs(&leaf_refs)?;
        let leaves = GrantMapping::map(&raw, peer, ro)?;
        for index in 0..layout.nr_leaves() {
            let range = layout.leaf_range(index).ok_or(EIO)?;
            let words = leaves.pages.words(index as usize).ok_or(EIO)?;
            let out = data.get_mut(range).ok_or(EIO)?;
            pgdir::read_leaf(words, &layout, index, out).map_err(bad)?;
        }
    }
    raw_refs(&data)
}

fn raw_refs(refs: &[GrantRef]) -> Result<KVVec<u32>> {
    let mut out = KVVec::with_capacity(refs.len(), GFP_KERNEL)?;
    for r in refs {
        out.push(r.get(), GFP_KERNEL)?;
    }
    Ok(out)
}

/// A mapped import: what its dma-buf stands on. Owned by the dma-buf from
/// its export to its release.
pub(crate) struct ImportedBuffer {
    conn: Arc<Conn>,
    hid: HyperDmabufId,
    size: u64,
    writable: bool,
    refs: KVVec<u32>,
    mapping: GrantMapping,
}

impl ImportedBuffer {
    /// What the dma-buf is made of.
    pub(crate) fn source(&self) -> DmabufSource<'_> {
        DmabufSource {
            pages: &self.mapping.pages,
            refs: &self.refs,
            domid: self.conn.peer.get(),
            writable: self.writable,
            size: self.size,
        }
    }

    /// Unmaps the pages, then tells the exporter the buffer is released.
    fn unmap_and_release(self, driver: &Driver) {
        let ImportedBuffer {
            conn, hid, mapping, ..
        } = self;
        drop(mapping);
        conn.import_released(driver, &hid);
    }

    /// The dma-buf's last user let go.
    pub(crate) fn release(self: KBox<Self>, driver: &Driver) {
        stats::DMABUFS.dec();
        ffi::log_buffer(format_args!(
            "{}: released import of {}",
            self.conn.name(),
            self.hid
        ));
        KBox::into_inner(self).unmap_and_release(driver);
    }
}

/// Maps the buffer and exports it as a dma-buf.
fn map_and_export(
    driver: &Driver,
    conn: &Arc<Conn>,
    export: &Export,
    max_bytes: u64,
    writable: bool,
) -> Result<DmabufRef> {
    let refs = read_directory(export, conn.peer, max_bytes)?;
    let flags = GNTMAP_HOST_MAP | if writable { 0 } else { GNTMAP_READONLY };
    let mapping = GrantMapping::map(&refs, conn.peer, flags)?;
    conn.import_mapped(driver, &export.hid)?;
    let buffer = ImportedBuffer {
        conn: conn.clone(),
        hid: export.hid,
        size: export.size,
        writable,
        refs,
        mapping,
    };
    let buffer = match KBox::new(buffer, GFP_KERNEL) {
        Ok(b) => b,
        Err(_) => {
            // `KBox::new` consumed the buffer, unmapping it.
            conn.import_released(driver, &export.hid);
            return Err(ENOMEM);
        }
    };
    match crate::entry::export_dmabuf(buffer) {
        Ok(buf) => {
            stats::DMABUFS.inc();
            Ok(buf)
        }
        Err((e, buffer)) => {
            KBox::into_inner(buffer).unmap_and_release(driver);
            Err(e)
        }
    }
}

/// `HDMABUF_IOCTL_IMPORT`: a new O_CLOEXEC dma-buf fd for `hid`, and its
/// size. The fd is installed only after `deliver` (which writes it to
/// user space) succeeded.
pub(crate) fn import(
    driver: &Driver,
    hid: &HyperDmabufId,
    writable: bool,
    deliver: impl FnOnce(i32, u64) -> Result,
) -> Result {
    let conn = find(driver, hid)?;
    let fd = ReservedFd::reserve()?;
    let (buf, size) = match conn.import_begin(hid, writable)? {
        ImportStep::Reuse(buf, size) => (buf, size),
        ImportStep::Map(export, max) => {
            if writable && !export.flags.contains(ExportFlags::WRITABLE) {
                conn.import_abort(hid);
                return Err(EPERM);
            }
            match map_and_export(driver, &conn, &export, max, writable) {
                Ok(buf) => {
                    conn.import_live(hid, buf.identity(), writable);
                    stats::BUFFERS_MAPPED.inc();
                    ffi::log_buffer(format_args!(
                        "{}: imported {} ({} bytes{}) from dom{}",
                        conn.name(),
                        hid,
                        export.size,
                        if writable { ", read-write" } else { "" },
                        conn.peer.get()
                    ));
                    (buf, export.size)
                }
                Err(e) => {
                    conn.import_abort(hid);
                    return Err(e);
                }
            }
        }
    };
    deliver(fd.number(), size)?;
    buf.install(fd);
    Ok(())
}

/// The connection a buffer was announced on.
pub(crate) fn find(driver: &Driver, hid: &HyperDmabufId) -> Result<Arc<Conn>> {
    let conns = driver.all_conns()?;
    conns
        .iter()
        .find(|c| c.with_import(hid, |_| ()).is_some())
        .cloned()
        .ok_or(ENOENT)
}
