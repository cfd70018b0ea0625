// SPDX-License-Identifier: GPL-2.0

//! Grant tables: the grants of a pinned dma-buf's pages and of pages we
//! own, and pages with no frame of their own to map the peer's grants
//! into.

use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

use kernel::error::to_result;
use kernel::prelude::*;

use super::super::common::grantable::Walk;
use super::dmabuf::PinnedDmabuf;
use super::{GNTST_OKAY, INVALID_HANDLE, PAGE_SIZE};
use crate::bindings;

/// The grants of every page of a pinned dma-buf to one peer.
///
/// Only the pin's own frames can be granted, and a reference is ended
/// only here, once: what `gnttab_grant_foreign_access` and
/// `gnttab_try_end_foreign_access` need is the type's to keep.
///
/// # Invariants
///
/// `refs[i]` is 0 or a live grant of frame `i` of `pin`; `live` counts the
/// non-zero entries. While any is live the pin is kept: dropped with live
/// grants, the value leaks it (its pages stay pinned for good rather than
/// go while a peer may map them).
pub(crate) struct DmabufGrants {
    pin: ManuallyDrop<PinnedDmabuf>,
    frames: KVVec<u64>,
    refs: KVVec<u32>,
    live: usize,
}

impl DmabufGrants {
    /// Room for the grants of the `nr` pages of `pin`, once `accept`
    /// agrees to what the walk of its pages found (the walk, and each
    /// page's `grantable::PAGE_*` facts); none is granted yet.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or what `accept` returns.
    pub(crate) fn new(
        mut pin: PinnedDmabuf,
        nr: usize,
        accept: impl FnOnce(Walk, &[u8]) -> Result,
    ) -> Result<Self> {
        let mut frames = KVVec::from_elem(0u64, nr, GFP_KERNEL)?;
        let mut facts = KVVec::from_elem(0u8, nr, GFP_KERNEL)?;
        let walk = pin.frames(&mut frames, &mut facts);
        let seen = usize::try_from(walk.pages).map_or(nr, |n| n.min(nr));
        accept(walk, facts.get(..seen).unwrap_or(&facts))?;
        Ok(DmabufGrants {
            pin: ManuallyDrop::new(pin),
            frames,
            refs: KVVec::from_elem(0u32, nr, GFP_KERNEL)?,
            live: 0,
        })
    }

    /// Grants every page not granted yet to `domid`, read-only unless
    /// `writable`. On failure what was granted stays live: end it with
    /// [`Self::try_end`].
    ///
    /// # Errors
    ///
    /// The grant table's error (`ENOSPC`: no free reference), or `EINVAL`
    /// for a frame number that does not fit the architecture's.
    pub(crate) fn grant(&mut self, domid: u16, writable: bool) -> Result {
        for (slot, &gfn) in self.refs.iter_mut().zip(self.frames.iter()) {
            if *slot != 0 {
                continue;
            }
            let frame = usize::try_from(gfn).map_err(|_| EINVAL)?;
            // SAFETY: no pointers; the frame is one of the pin's, which
            // stays pinned until the grant has ended (invariant).
            let r = unsafe {
                bindings::gnttab_grant_foreign_access(domid, frame as _, i32::from(!writable))
            };
            to_result(r)?;
            *slot = u32::try_from(r).map_err(|_| EINVAL)?;
            // INVARIANT: one more non-zero entry.
            self.live += 1;
        }
        Ok(())
    }

    /// The grant references, in page order (0: not granted, or ended).
    pub(crate) fn refs(&self) -> &[u32] {
        &self.refs
    }

    /// Grants not yet ended.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Ends every grant the peer does not map; how many ended.
    pub(crate) fn try_end(&mut self) -> usize {
        let mut ended = 0;
        for gref in self.refs.iter_mut().filter(|g| **g != 0) {
            // SAFETY: `gref` is a live grant of ours (invariant), ended
            // once: it is zeroed when it ends.
            if unsafe { bindings::gnttab_try_end_foreign_access(*gref) } != 0 {
                *gref = 0;
                ended += 1;
            }
        }
        // INVARIANT: as many non-zero entries fewer.
        self.live -= ended;
        ended
    }
}

impl Drop for DmabufGrants {
    fn drop(&mut self) {
        if self.live == 0 {
            // SAFETY: dropped once, here; no grant of its pages is live.
            unsafe { ManuallyDrop::drop(&mut self.pin) };
        }
    }
}

/// One of our own pages granted read-only to a peer (a page of a buffer's
/// directory). Dropping it ends the grant through the grant layer, which
/// frees the page once the peer no longer maps it.
///
/// # Invariants
///
/// `gref` grants `page`, which is ours; both are handed to the grant layer
/// once, in `drop`.
pub(crate) struct GrantedPage {
    page: NonNull<bindings::page>,
    gref: u32,
}

// SAFETY: handing a page to the grant layer is valid from any context.
unsafe impl Send for GrantedPage {}
// SAFETY: `&self` methods only read the reference.
unsafe impl Sync for GrantedPage {}

impl GrantedPage {
    /// Grants `page` to `domid`, read-only.
    ///
    /// # Errors
    ///
    /// The grant table's error (`ENOSPC`: no free reference); the page is
    /// freed.
    pub(crate) fn grant_readonly(page: OwnedPage, domid: u16) -> Result<Self> {
        let frame = usize::try_from(page.gfn()).map_err(|_| EINVAL)?;
        // SAFETY: no pointers; the frame is `page`'s, which this value
        // keeps until the grant layer has ended the grant.
        let r = unsafe { bindings::gnttab_grant_foreign_access(domid, frame as _, 1) };
        to_result(r)?;
        let gref = u32::try_from(r).map_err(|_| EINVAL)?;
        let raw = page.0;
        core::mem::forget(page);
        Ok(GrantedPage { page: raw, gref })
    }

    /// The grant reference.
    pub(crate) fn gref(&self) -> u32 {
        self.gref
    }
}

impl Drop for GrantedPage {
    fn drop(&mut self) {
        // SAFETY: `gref` grants `page` (invariant); our allocation
        // reference is handed to the grant layer, once.
        unsafe { bindings::gnttab_end_foreign_access(self.gref, self.page.as_ptr()) }
    }
}

/// A zeroed page we own.
///
/// # Invariants
///
/// `page` came from `hdm_alloc_page` and is freed or handed over once.
pub(crate) struct OwnedPage(NonNull<bindings::page>);

// SAFETY: freeing a page is valid from any context.
unsafe impl Send for OwnedPage {}
// SAFETY: `&self` methods only read the frame number.
unsafe impl Sync for OwnedPage {}

impl OwnedPage {
    /// Allocates a zeroed page.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn alloc() -> Result<Self> {
        // SAFETY: no precondition.
        NonNull::new(unsafe { bindings::hdm_alloc_page() })
            .map(OwnedPage)
            .ok_or(ENOMEM)
    }

    /// Its frame number, as the peer maps it.
    fn gfn(&self) -> u64 {
        // SAFETY: the page is live (invariant).
        unsafe { bindings::hdm_page_gfn(self.0.as_ptr()) }
    }

    /// Overwrites the page.
    pub(crate) fn write(&mut self, bytes: &[u8; PAGE_SIZE]) {
        // SAFETY: the page is ours and mapped in the kernel's linear map
        // (GFP_KERNEL, not highmem), `PAGE_SIZE` bytes long, and granted to
        // no one yet (a granted page is a `GrantedPage`, which has no
        // `write`).
        unsafe {
            let dst = bindings::hdm_page_address(self.0.as_ptr()).cast::<u8>();
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, PAGE_SIZE);
        }
    }
}

impl Drop for OwnedPage {
    fn drop(&mut self) {
        // SAFETY: the page is ours and not granted (a granted page is a
        // `GrantedPage`'s).
        unsafe { bindings::hdm_free_page(self.0.as_ptr()) }
    }
}

// --- import side: grant-mapped pages and their dma-buf ---------------------------

/// Pages without a frame of their own (`gnttab_alloc_pages`) and the
/// peer's grants mapped into them.
///
/// # Invariants
///
/// `pages` holds `gnttab_alloc_pages` pages; `handles[i]` is
/// `INVALID_HANDLE` or the handle of a grant mapped at `pages[i]` with
/// `flags`. Dropping the value unmaps what is mapped, or leaks the pages
/// when it cannot.
pub(crate) struct GrantPages {
    pages: KVVec<*mut bindings::page>,
    handles: KVVec<u32>,
    flags: u32,
}

// SAFETY: page pointers and handles may move between threads; freeing is
// valid in any process context.
unsafe impl Send for GrantPages {}
// SAFETY: `&self` methods only read the pages' reference counts and the
// mapped pages' contents (as atomics).
unsafe impl Sync for GrantPages {}

/// What [`GrantPages::map`] did.
pub(crate) struct MapReport {
    /// Grants that did not map.
    pub(crate) failed: usize,
    /// The status of the first of them.
    pub(crate) first_status: i16,
}

impl GrantPages {
    /// Allocates `count` pages, none mapped.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or `EINVAL` if `count` does not fit an `int`.
    pub(crate) fn alloc(count: usize) -> Result<Self> {
        let nr = i32::try_from(count).map_err(|_| EINVAL)?;
        let mut pages = KVVec::from_elem(core::ptr::null_mut(), count, GFP_KERNEL)?;
        let handles = KVVec::from_elem(INVALID_HANDLE, count, GFP_KERNEL)?;
        // SAFETY: `pages` holds `count` writable entries.
        to_result(unsafe { bindings::gnttab_alloc_pages(nr, pages.as_mut_ptr()) })?;
        Ok(GrantPages {
            pages,
            handles,
            flags: 0,
        })
    }

    /// No pages.
    pub(crate) fn empty() -> Self {
        GrantPages {
            pages: KVVec::new(),
            handles: KVVec::new(),
            flags: 0,
        }
    }

    /// Number of pages.
    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    /// Pages with a grant mapped.
    pub(crate) fn mapped(&self) -> usize {
        self.handles
            .iter()
            .filter(|h| **h != INVALID_HANDLE)
            .count()
    }

    /// Leaks the pages (when a grant mapping could not be undone, the
    /// pages must never be reused).
    pub(crate) fn leak(mut self) {
        core::mem::forget(core::mem::replace(&mut self.pages, KVVec::new()));
        self.handles.iter_mut().for_each(|h| *h = INVALID_HANDLE);
    }

    /// Maps `refs[i]` of `domid` at page `i`, all in one batch, with
    /// `flags` (`GNTMAP_*`), none of them mapped before. Each grant's
    /// status is judged: those that mapped stay mapped, the report counts
    /// the others; only a failure of the call itself is an error.
    ///
    /// # Errors
    ///
    /// `EINVAL` if `refs` and the pages differ in number or a page is
    /// mapped already, `ENOMEM`, or the hypercall's error.
    pub(crate) fn map(&mut self, refs: &[u32], domid: u16, flags: u32) -> Result<MapReport> {
        if refs.len() != self.pages.len() || self.mapped() != 0 {
            return Err(EINVAL);
        }
        let nr = u32::try_from(refs.len()).map_err(|_| EINVAL)?;
        // SAFETY: an all-zero map op is a valid value of this plain struct.
        let zero: bindings::gnttab_map_grant_ref = unsafe { core::mem::zeroed() };
        let mut ops = KVVec::from_elem(zero, refs.len(), GFP_KERNEL)?;
        for ((op, &page), &gref) in ops.iter_mut().zip(self.pages.iter()).zip(refs) {
            // SAFETY: `op` is valid for writes; `page` is one of our pages.
            unsafe { bindings::hdm_set_map_op(op, page, flags, gref, domid) };
        }
        self.flags = flags;
        // SAFETY: `ops[i]` targets `pages[i]`, both arrays have `nr`
        // entries, and the pages are frameless `gnttab_alloc_pages` pages
        // with nothing mapped.
        let call = to_result(unsafe {
            bindings::gnttab_map_refs(
                ops.as_mut_ptr(),
                core::ptr::null_mut(),
                self.pages.as_ptr().cast_mut(),
                nr,
            )
        });
        let mut report = MapReport {
            failed: 0,
            first_status: GNTST_OKAY,
        };
        for (handle, op) in self.handles.iter_mut().zip(ops.iter()) {
            if op.status == GNTST_OKAY {
                // INVARIANT: a grant is mapped at this page with `flags`.
                *handle = op.handle;
            } else {
                if report.failed == 0 {
                    report.first_status = op.status;
                }
                report.failed += 1;
            }
        }
        call.map(|()| report)
    }

    /// Whether a page has a reference besides ours (a pipe after
    /// `vmsplice`, a `get_user_pages` pin): it must stay mapped until its
    /// holder lets go.
    pub(crate) fn busy(&self) -> bool {
        let Ok(nr) = u32::try_from(self.pages.len()) else {
            return true;
        };
        // SAFETY: `pages` holds `nr` live pages of ours; this only reads
        // their reference counts.
        let most = unsafe { bindings::hdm_pages_max_refs(self.as_ptr(), nr) };
        // Our own allocation is one reference; any other is a holder's.
        most > 1
    }

    /// Unmaps every mapped page at once. Call it only when no page is
    /// [`busy`](Self::busy) (a reader of a busy page would see whatever
    /// frame comes next). On success nothing is mapped.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, the hypercall's error, or `EIO` if Xen refused an unmap
    /// (those pages stay mapped and must be leaked).
    pub(crate) fn unmap(&mut self) -> Result {
        let mut ops = KVVec::with_capacity(self.handles.len(), GFP_KERNEL)?;
        let mut pages = KVVec::with_capacity(self.handles.len(), GFP_KERNEL)?;
        for (&handle, &page) in self.handles.iter().zip(self.pages.iter()) {
            if handle == INVALID_HANDLE {
                continue;
            }
            // SAFETY: an all-zero unmap op is a valid plain value.
            let mut op: bindings::gnttab_unmap_grant_ref = unsafe { core::mem::zeroed() };
            // SAFETY: `op` is valid for writes; `page` is one of ours.
            unsafe { bindings::hdm_set_unmap_op(&mut op, page, self.flags, handle) };
            ops.push(op, GFP_KERNEL)?;
            pages.push(page, GFP_KERNEL)?;
        }
        if ops.is_empty() {
            return Ok(());
        }
        let nr = u32::try_from(ops.len()).map_err(|_| EINVAL)?;
        // SAFETY: `ops[i]` unmaps a live mapping at `pages[i]` (invariant);
        // `nr` each.
        to_result(unsafe { bindings::hdm_unmap_refs(ops.as_mut_ptr(), pages.as_mut_ptr(), nr) })?;
        if ops.iter().any(|op| op.status != GNTST_OKAY) {
            return Err(EIO);
        }
        // INVARIANT: nothing is mapped any more.
        self.handles.iter_mut().for_each(|h| *h = INVALID_HANDLE);
        Ok(())
    }

    /// The words of page `index`, if a grant is mapped there. The peer may
    /// write them at any time, hence atomics; the page stays mapped while
    /// the borrow lives (unmapping takes `&mut self`).
    pub(crate) fn words(&self, index: usize) -> Option<&[AtomicU32]> {
        if *self.handles.get(index)? == INVALID_HANDLE {
            return None;
        }
        let page = *self.pages.get(index)?;
        // SAFETY: `page` is one of ours with a grant mapped at its kernel
        // address (invariant), `PAGE_SIZE` bytes, which stays mapped for
        // as long as `&self` lives: unmapping needs `&mut self`.
        Some(unsafe {
            core::slice::from_raw_parts(
                bindings::hdm_page_address(page).cast::<AtomicU32>(),
                PAGE_SIZE / 4,
            )
        })
    }

    pub(super) fn as_ptr(&self) -> *mut *mut bindings::page {
        self.pages.as_ptr().cast_mut()
    }
}

impl Drop for GrantPages {
    fn drop(&mut self) {
        // A page that still maps a grant is unmapped first; one that cannot
        // be (held by someone, or the unmap failed) is never freed.
        if self.mapped() > 0 && (self.busy() || self.unmap().is_err()) {
            return;
        }
        let Ok(nr) = i32::try_from(self.pages.len()) else {
            return;
        };
        if nr == 0 {
            return;
        }
        // SAFETY: the pages came from gnttab_alloc_pages and none is
        // mapped any more (checked above).
        unsafe { bindings::gnttab_free_pages(nr, self.pages.as_mut_ptr()) }
    }
}
