// SPDX-License-Identifier: GPL-2.0

//! An imported buffer's pages: the peer's grants mapped here, the
//! directory read from them, the buffer a dma-buf stands on, and the
//! releases that wait for a page something still holds.
//!
//! The directory is mapped (root, then every leaf in one batch), copied
//! out and checked by `common::pgdir`, and unmapped; then every data page
//! is mapped in one batched call whose per-page statuses are all checked
//! (CVE-2021-26932: a batch is judged page by page, and what succeeded is
//! undone on failure). The dma-buf lives as long as anybody holds it; its
//! release unmaps the pages and tells the exporter. A page something still
//! holds (a pipe after `vmsplice`) keeps the whole buffer mapped: the
//! release then never waits for it, it leaves the unmap to the driver's
//! tick ([`Unmaps`]), which tells the exporter once the last page is let
//! go.

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::sync::{new_mutex, Arc, Mutex};

use super::common::id::HyperDmabufId;
use super::common::pgdir;
use super::common::wire::{Export, PageRefs};
use super::common::xen::{DomId, GrantRef};
use crate::conn::Conn;
use crate::context::Context;
use crate::ffi::dmabuf::DmabufSource;
use crate::ffi::grant::GrantPages;
use crate::ffi::{self, ModulePin, GNTMAP_HOST_MAP, GNTMAP_READONLY};
use crate::peerlog::Level;
use crate::{role, stats};

/// Room for one [`PendingUnmap`], reserved when a buffer is imported so
/// that its release needs no memory.
pub(crate) type UnmapSlot = RBTreeNodeReservation<u64, PendingUnmap>;

/// The longest wait between two tries of a pending unmap.
const UNMAP_RETRY_MAX_MS: u32 = 1000;

/// Peer grants mapped into our pages, all or none, with the counters and
/// log lines; unmapped on drop.
pub(crate) struct GrantMapping {
    pub(crate) pages: GrantPages,
}

impl GrantMapping {
    /// Maps `refs` of `peer` in one batch; all or nothing.
    ///
    /// # Errors
    ///
    /// `EIO` if any grant could not be mapped (logged, rate-limited per
    /// peer; what mapped is unmapped), `ENOMEM`.
    pub(crate) fn map(ctx: &Context, refs: &[u32], peer: DomId, flags: u32) -> Result<Self> {
        let mut mapping = GrantMapping {
            pages: GrantPages::alloc(refs.len())?,
        };
        let report = mapping.pages.map(refs, peer.get(), flags);
        stats::PAGES_MAPPED.add(mapping.pages.mapped() as i64);
        match report {
            Ok(r) if r.failed == 0 => Ok(mapping),
            failed => {
                let (count, status) =
                    failed.map_or((refs.len(), 0), |r| (r.failed, r.first_status));
                ctx.peer_log(
                    peer,
                    Level::Warn,
                    format_args!(
                        "dom{}: {} of {} grants could not be mapped (status {})",
                        peer.get(),
                        count,
                        refs.len(),
                        status
                    ),
                );
                // Dropping `mapping` unmaps exactly the pages that mapped.
                Err(EIO)
            }
        }
    }

    /// Whether something besides us holds one of the pages.
    pub(crate) fn busy(&self) -> bool {
        self.pages.busy()
    }

    /// Unmaps and frees the pages now, unless one is [`busy`]
    /// (Self::busy): then the mapping comes back, to try again later.
    pub(crate) fn unmap(self) -> core::result::Result<(), Self> {
        if self.busy() {
            return Err(self);
        }
        drop(self);
        Ok(())
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        let mapped = self.pages.mapped();
        if mapped == 0 {
            return;
        }
        if self.pages.busy() {
            // Only a buffer's data pages can be held by others, and those
            // leave through `unmap` (which waits for them): never block.
            pr_err!("imported pages still held at teardown; leaking them\n");
        } else if self.pages.unmap().is_ok() {
            stats::PAGES_MAPPED.add(-(mapped as i64));
            return;
        } else {
            pr_err!("could not unmap {} imported pages; leaking them\n", mapped);
        }
        // A page that may still show a foreign frame is never reused.
        stats::PAGES_LEAKED.add(mapped as i64);
        core::mem::replace(&mut self.pages, GrantPages::empty()).leak();
    }
}

/// The data grants of `export` from `peer`: carried in its EXPORT, or read
/// from its directory.
pub(crate) fn read_directory(
    ctx: &Context,
    export: &Export,
    peer: DomId,
    max_bytes: u64,
) -> Result<KVVec<u32>> {
    let bad = |e: super::common::Error| {
        ctx.peer_log(
            peer,
            Level::Warn,
            format_args!(
                "dom{}: bad directory for buffer {}: {}",
                peer.get(),
                export.hid,
                e
            ),
        );
        EIO
    };
    let root = match &export.pages {
        // Version 2: the EXPORT carried them, no directory to map.
        PageRefs::Inline(refs) => return raw_refs(refs.as_slice()),
        PageRefs::Directory(root) => *root,
    };
    let ro = GNTMAP_HOST_MAP | GNTMAP_READONLY;
    let root = GrantMapping::map(ctx, &[root.get()], peer, ro)?;
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
        let leaves = GrantMapping::map(ctx, &raw, peer, ro)?;
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
    pub(crate) conn: Arc<Conn>,
    pub(crate) hid: HyperDmabufId,
    pub(crate) size: u64,
    pub(crate) writable: bool,
    pub(crate) refs: KVVec<u32>,
    pub(crate) mapping: GrantMapping,
    /// The driver's record for a release that has to wait, allocated up
    /// front so that the release never fails for want of memory.
    pub(crate) unmap_slot: UnmapSlot,
}

impl ImportedBuffer {
    /// What the dma-buf is made of.
    pub(crate) fn source(&self) -> DmabufSource<'_> {
        DmabufSource {
            pages: &self.mapping.pages,
            refs: &self.refs,
            domid: self.conn.peer.get(),
            writable: self.writable,
            tables: role::page_tables(),
            size: self.size,
        }
    }

    /// Unmaps the pages and tells the exporter the buffer is released;
    /// if a page is still held, leaves both to the driver's tick.
    pub(crate) fn unmap_and_release(self, ctx: &Context, unmaps: &Unmaps) {
        let ImportedBuffer {
            conn,
            hid,
            mapping,
            unmap_slot,
            ..
        } = self;
        match mapping.unmap() {
            Ok(()) => conn.import_released(ctx, &hid),
            Err(mapping) => {
                conn.import_unmapping(&hid);
                unmaps.defer(unmap_slot, PendingUnmap::new(conn, hid, mapping), ctx);
            }
        }
    }

    /// The dma-buf's last user let go (it is being freed: nothing may
    /// look it up any more once this returns).
    pub(crate) fn release(self: KBox<Self>, ctx: &Context, unmaps: &Unmaps) {
        stats::DMABUFS.dec();
        ffi::log_buffer(format_args!(
            "{}: released import of {}",
            self.conn.name(),
            self.hid
        ));
        KBox::into_inner(self).unmap_and_release(ctx, unmaps);
    }
}

/// An imported buffer whose dma-buf is gone but one of whose pages is
/// still held (a pipe after `vmsplice`): it stays mapped, the exporter
/// not told, and the module pinned, until the page is let go.
pub(crate) struct PendingUnmap {
    conn: Arc<Conn>,
    hid: HyperDmabufId,
    mapping: GrantMapping,
    /// Milliseconds between tries: from 10, doubling up to a second.
    pub(crate) retry_ms: u32,
    _pin: ModulePin,
}

impl PendingUnmap {
    fn new(conn: Arc<Conn>, hid: HyperDmabufId, mapping: GrantMapping) -> Self {
        stats::UNMAPS_PENDING.inc();
        PendingUnmap {
            conn,
            hid,
            mapping,
            retry_ms: 10,
            _pin: ModulePin::new(),
        }
    }

    /// Whether a page is still held.
    pub(crate) fn busy(&self) -> bool {
        self.mapping.busy()
    }

    /// Unmaps (no page is busy any more) and tells the exporter.
    fn finish(self, ctx: &Context) {
        let PendingUnmap {
            conn, hid, mapping, ..
        } = self;
        drop(mapping);
        stats::UNMAPS_PENDING.dec();
        conn.import_released(ctx, &hid);
    }
}

/// Released imports whose pages something still holds.
#[pin_data]
pub(crate) struct Unmaps {
    #[pin]
    table: Mutex<RBTree<u64, PendingUnmap>>,
}

impl Unmaps {
    /// None yet.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Unmaps {
            table <- new_mutex!(RBTree::new(), "Unmaps::table"),
        })
    }

    /// Keeps `pending` until its pages are let go; the tick unmaps it
    /// then.
    fn defer(&self, slot: UnmapSlot, pending: PendingUnmap, ctx: &Context) {
        let first = pending.retry_ms;
        self.table
            .lock()
            .insert(slot.into_node(ctx.next_id(), pending));
        ffi::tick_schedule(first);
    }

    /// Unmaps the pending imports whose pages were let go. Returns when
    /// it wants to look again, if ever.
    pub(crate) fn tick(&self, ctx: &Context, now: u64) -> Option<u64> {
        let mut done = KVec::new();
        let mut next: Option<u64> = None;
        {
            let mut table = self.table.lock();
            let mut cursor = table.cursor_front();
            while let Some(mut c) = cursor {
                if c.current().1.busy() {
                    let (_, pending) = c.current_mut();
                    let due = now + u64::from(pending.retry_ms);
                    next = Some(next.map_or(due, |n| n.min(due)));
                    pending.retry_ms = (pending.retry_ms * 2).min(UNMAP_RETRY_MAX_MS);
                    cursor = c.move_next();
                } else {
                    // Without room to collect it, it is finished next time.
                    if done.reserve(1, GFP_KERNEL).is_err() {
                        next = Some(now + 10);
                        break;
                    }
                    let (rest, node) = c.remove_current();
                    let _ = done.push(node, GFP_KERNEL);
                    cursor = rest;
                }
            }
        }
        // Unmapping and telling the exporter take the connection's lock:
        // outside this one.
        for node in done {
            let (_, pending) = node.to_key_value();
            pending.finish(ctx);
        }
        next
    }
}

/// What a user mapping of an imported buffer ran into, as its C callbacks
/// report it (`hdm_rs_vma_event`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum VmaEvent {
    /// A copy of a PV mapping (split, mremap, fork) got no memory for its
    /// state: its accesses will fail (`SIGBUS`). A local process causes it.
    CopyNoMemory,
    /// A grant PTE the driver mapped was found empty: only a bug does it.
    PteCleared,
    /// The exporter's grant did not map on a fault (Xen's `status`): the
    /// access gets `SIGBUS`. The peer causes it.
    FaultUnmapped {
        /// Xen's `GNTST_*` status.
        status: i32,
    },
}

/// Logs `event` of a mapping of a buffer imported from `peer`, charged to
/// the budget of whoever caused it: that peer's, or the driver's own.
pub(crate) fn vma_event(ctx: &Context, peer: DomId, event: VmaEvent) {
    match event {
        VmaEvent::CopyNoMemory => ctx.local_log(
            Level::Warn,
            format_args!("no memory for a copy of a mapping; its accesses will fail"),
        ),
        VmaEvent::PteCleared => ctx.local_log(
            Level::Err,
            format_args!("a grant PTE was cleared behind the driver's back"),
        ),
        VmaEvent::FaultUnmapped { status } => ctx.peer_log(
            peer,
            Level::Warn,
            format_args!(
                "dom{}: a grant could not be mapped on fault (status {})",
                peer.get(),
                status
            ),
        ),
    }
}
