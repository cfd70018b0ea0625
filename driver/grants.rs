// SPDX-License-Identifier: GPL-2.0

//! The grants of an exported buffer, from the first to the last: every
//! page of a pinned dma-buf and the page directory describing them,
//! granted to one peer; and the table of those whose export ended while
//! the peer still maps a page, retried until it lets go.
//!
//! The dma-buf stays attached and mapped (so its pages stay put) until
//! every grant of it has ended, on every path: a grant the peer still maps
//! is retried, never forced (the rule of XSA-396), and never handed to the
//! grant layer either, whose deferred end would keep only a page reference
//! (which exporters that move their pages, as TTM's do, do not honour).
//! The record that waits for them is reserved with the grants, and each
//! export pins the module until its last grant has ended, so neither a
//! failed allocation nor an unload lets a page go early.

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::sync::{new_mutex, Mutex};

use super::common::grantable::{self, FrameRefusal};
use super::common::id::HyperDmabufId;
use super::common::ledger::ExportRecord;
use super::common::limits::XEN_PAGE_SIZE;
use super::common::pgdir::{self, DirPage, Layout};
use super::common::uapi::{Event, EventType};
use super::common::wire::{InlineRefs, PageRefs};
use super::common::xen::{DomId, GrantRef};
use crate::ffi::dmabuf::PinnedDmabuf;
use crate::ffi::grant::{DmabufGrants, GrantedPage, OwnedPage};
use crate::ffi::{self, ModulePin};
use crate::files::Addressed;
use crate::stats;

/// How often grants of unexported buffers are retried while the peer
/// still maps them.
const DRAIN_RETRY_MS: u32 = 1000;

/// Room in the table of draining grants for one export's, reserved with
/// them so that retiring them needs no memory.
pub(crate) type DrainSlot = RBTreeNodeReservation<u64, KBox<ExportGrants>>;

/// An export as its exporter keeps it: the local buffer's identity is
/// the dma-buf's, its grants keep the pages granted.
pub(crate) type ExportEntry = ExportRecord<KBox<ExportGrants>>;

/// Exports retired while a connection's lock is held, chained through
/// their own records: collecting them never allocates (`conn::UNDER_LOCK`).
/// They are retired once the lock is dropped.
#[derive(Default)]
pub(crate) struct RetiredList(Option<KBox<ExportGrants>>);

impl RetiredList {
    /// Adds `grants`.
    pub(crate) fn push(&mut self, mut grants: KBox<ExportGrants>) {
        grants.next_retired = self.0.take();
        self.0 = Some(grants);
    }

    /// Takes the most recent one out.
    fn pop(&mut self) -> Option<KBox<ExportGrants>> {
        let mut grants = self.0.take()?;
        self.0 = grants.next_retired.take();
        Some(grants)
    }

    /// Takes every one out, in the order they were retired (their
    /// `GrantsEnded` events follow it).
    pub(crate) fn drain(mut self) -> impl Iterator<Item = KBox<ExportGrants>> {
        let mut oldest_first = RetiredList::default();
        while let Some(grants) = self.pop() {
            oldest_first.push(grants);
        }
        core::iter::from_fn(move || oldest_first.pop())
    }
}

impl Drop for RetiredList {
    fn drop(&mut self) {
        // One at a time: a long chain must not recurse.
        while self.pop().is_some() {}
    }
}

/// The grants of one exported buffer: its pages' and its directory's.
///
/// It leaves through [`Drain::retire`], which keeps it (and so the pinned
/// dma-buf) until every grant has ended.
///
/// # Invariants
///
/// `drain_slot` is `Some` until the value is retired.
pub(crate) struct ExportGrants {
    peer: DomId,
    hid: HyperDmabufId,
    /// The open file that exported it (who is told when the grants end).
    owner: u64,
    size: u64,
    /// The data pages' grants, which keep the dma-buf pinned while live.
    data: DmabufGrants,
    /// Directory pages and their grants (root last), until handed to the
    /// grant layer.
    dir: KVec<GrantedPage>,
    /// Room in the driver's list of draining exports, reserved up front.
    drain_slot: Option<DrainSlot>,
    /// The next export retired in the same pass ([`RetiredList`]).
    next_retired: Option<KBox<ExportGrants>>,
    /// No unload while a grant may still be mapped.
    module: Option<ModulePin>,
}

impl ExportGrants {
    /// The record of the grants of `pin` to `peer`, for the file `owner`,
    /// with everything reserved; nothing is granted yet ([`Self::grant`]).
    ///
    /// # Errors
    ///
    /// `EINVAL` when the pin's pages may not be granted
    /// (`grantable::accept_frames`: not from a page boundary, not the
    /// layout's count, or not ordinary RAM of ours), after telling
    /// `refused` why; `ENOMEM`.
    pub(crate) fn new(
        pin: PinnedDmabuf,
        peer: DomId,
        hid: HyperDmabufId,
        owner: u64,
        layout: &Layout,
        refused: impl FnOnce(FrameRefusal),
    ) -> Result<KBox<Self>> {
        let nr = layout.nr_pages();
        let data = DmabufGrants::new(pin, nr as usize, |walk, facts| {
            grantable::accept_frames(walk, nr, facts).map_err(|why| {
                refused(why);
                Error::from_errno(-why.errno())
            })
        })?;
        let dir = KVec::with_capacity(layout.dir_pages() as usize, GFP_KERNEL)?;
        Ok(KBox::new(
            ExportGrants {
                peer,
                hid,
                owner,
                size: layout.size(),
                data,
                dir,
                drain_slot: Some(DrainSlot::new(GFP_KERNEL)?),
                next_retired: None,
                module: Some(ModulePin::new()),
            },
            GFP_KERNEL,
        )?)
    }

    /// Grants the data pages, then, unless their references go `inline`
    /// in the EXPORT, the directory; where the importer finds them. On
    /// failure what was granted stays recorded: retire the value.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or the grant table's error (`ENOSPC` when it has no free
    /// reference), or `EINVAL` if the layout and the pages disagree.
    pub(crate) fn grant(
        &mut self,
        layout: &Layout,
        writable: bool,
        inline: bool,
    ) -> Result<PageRefs> {
        let before = self.live();
        let granted = self.data.grant(self.peer.get(), writable);
        stats::GRANTS.add((self.live() - before) as i64);
        granted?;
        if inline {
            let refs = to_grant_refs(self.data.refs())?;
            return Ok(PageRefs::Inline(
                InlineRefs::new(&refs).map_err(|_| EINVAL)?,
            ));
        }
        self.build_directory(layout).map(PageRefs::Directory)
    }

    /// Takes the driver's record reserved for this export (once).
    pub(crate) fn take_drain_slot(&mut self) -> Option<DrainSlot> {
        self.drain_slot.take()
    }

    /// Writes and grants the leaves (if any) and the root.
    fn build_directory(&mut self, layout: &Layout) -> Result<GrantRef> {
        let refs = to_grant_refs(self.data.refs())?;
        let mut page: KBox<DirPage> = KBox::new([0u8; XEN_PAGE_SIZE], GFP_KERNEL)?;
        let mut leaves = KVec::with_capacity(layout.nr_leaves() as usize, GFP_KERNEL)?;
        for index in 0..layout.nr_leaves() {
            let range = layout.leaf_range(index).ok_or(EINVAL)?;
            let entries = refs.get(range).ok_or(EINVAL)?;
            pgdir::encode_leaf(layout, index, entries, &mut page).map_err(|_| EINVAL)?;
            leaves.push(self.grant_dir_page(&page)?, GFP_KERNEL)?;
        }
        // One level: the root lists the data pages; two: the leaves.
        let root_entries: &[GrantRef] = if layout.nr_leaves() == 0 {
            &refs
        } else {
            &leaves
        };
        pgdir::encode_root(layout, root_entries, &mut page).map_err(|_| EINVAL)?;
        self.grant_dir_page(&page)
    }

    fn grant_dir_page(&mut self, bytes: &DirPage) -> Result<GrantRef> {
        let mut page = OwnedPage::alloc()?;
        page.write(bytes);
        let granted = GrantedPage::grant_readonly(page, self.peer.get())?;
        let gref = GrantRef::new(granted.gref()).map_err(|_| EINVAL);
        // Room was reserved for every directory page: this does not fail,
        // and if it did, dropping the page would end its grant safely.
        self.dir.push(granted, GFP_KERNEL)?;
        stats::GRANTS.inc();
        gref
    }

    /// Grants not yet ended.
    pub(crate) fn live(&self) -> usize {
        self.data.live() + self.dir.len()
    }

    /// Ends every grant the peer does not map; true once none is left.
    pub(crate) fn try_end(&mut self) -> bool {
        let before = self.live();
        self.data.try_end();
        // Directory pages go to the grant layer with their page: it ends
        // and frees each once the peer unmaps it.
        drop(core::mem::replace(&mut self.dir, KVec::new()));
        stats::GRANTS.add(-((before - self.live()) as i64));
        self.live() == 0
    }

    /// `GrantsEnded` for a buffer whose grants have all ended, for the
    /// file that exported it.
    pub(crate) fn ended_event(&self) -> Addressed {
        ffi::log_buffer(format_args!(
            "buffer {} to dom{}: all grants ended",
            self.hid,
            self.peer.get()
        ));
        Addressed {
            event: Event::about_export(EventType::GrantsEnded, self.peer, &self.hid, self.size),
            owner: Some(self.owner),
        }
    }

    /// The key of its record among the draining: its number, which the
    /// driver never reuses.
    fn key(&self) -> u64 {
        self.hid.number()
    }
}

impl Drop for ExportGrants {
    fn drop(&mut self) {
        if self.live() == 0 {
            return;
        }
        // Only `Drain::retire` drops an export, once its grants have
        // ended; should a bug drop one earlier, the dma-buf (see
        // `DmabufGrants`) and the module stay pinned for good rather than
        // a page going while mapped.
        pr_err!(
            "buffer {} to dom{}: dropped with {} grants live; keeping it pinned\n",
            self.hid,
            self.peer.get(),
            self.live()
        );
        core::mem::forget(self.module.take());
    }
}

fn to_grant_refs(refs: &[u32]) -> Result<KVVec<GrantRef>> {
    let mut out = KVVec::with_capacity(refs.len(), GFP_KERNEL)?;
    for &r in refs {
        out.push(GrantRef::new(r).map_err(|_| EINVAL)?, GFP_KERNEL)?;
    }
    Ok(out)
}

/// The grants of exports that ended while the peer still mapped a page.
#[pin_data]
pub(crate) struct Drain {
    #[pin]
    table: Mutex<RBTree<u64, KBox<ExportGrants>>>,
}

impl Drain {
    /// Nothing draining yet.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Drain {
            table <- new_mutex!(RBTree::new(), "Drain::table"),
        })
    }

    /// Ends the grants of a buffer that is no longer exported (or whose
    /// export failed): the `GrantsEnded` event to post if they all ended
    /// now. Those the peer still maps are kept, in the room they reserved,
    /// and retried until it unmaps them, the dma-buf pinned meanwhile.
    pub(crate) fn retire(&self, mut grants: KBox<ExportGrants>) -> Option<Addressed> {
        if grants.try_end() {
            return Some(grants.ended_event());
        }
        let Some(slot) = grants.take_drain_slot() else {
            // Retired twice: a bug. Dropping it keeps it pinned for good.
            pr_err!("an export was retired twice\n");
            return None;
        };
        stats::GRANTS_DRAINING.add(grants.live() as i64);
        let key = grants.key();
        self.table.lock().insert(slot.into_node(key, grants));
        ffi::tick_schedule(DRAIN_RETRY_MS);
        None
    }

    /// Tries again to end the grants kept here; adds a `GrantsEnded` to
    /// `ended` for each buffer whose grants all did. Returns when it wants
    /// to look again, if ever.
    pub(crate) fn tick(&self, now: u64, ended: &mut KVec<Addressed>) -> Option<u64> {
        let mut done = KVec::new();
        let next;
        {
            let mut table = self.table.lock();
            let mut cursor = table.cursor_front();
            while let Some(mut c) = cursor {
                let (_, grants) = c.current_mut();
                let before = grants.live();
                let ended = grants.try_end();
                stats::GRANTS_DRAINING.add(grants.live() as i64 - before as i64);
                if ended {
                    // Without room to collect it, it is announced next time.
                    if done.reserve(1, GFP_KERNEL).is_err() {
                        break;
                    }
                    let (rest, node) = c.remove_current();
                    let _ = done.push(node, GFP_KERNEL);
                    cursor = rest;
                } else {
                    cursor = c.move_next();
                }
            }
            next = table.iter().next().map(|_| now + u64::from(DRAIN_RETRY_MS));
        }
        for node in done {
            let (_, grants) = node.to_key_value();
            if ended.push(grants.ended_event(), GFP_KERNEL).is_err() {
                stats::EVENTS_LOST.inc();
            }
        }
        next
    }

    /// Hands whatever still drains to the grant layer (module exit: the
    /// grant layer ends each once the peer unmaps it).
    pub(crate) fn abandon(&self) {
        let leftovers = core::mem::replace(&mut *self.table.lock(), RBTree::new());
        drop(leftovers);
    }
}
