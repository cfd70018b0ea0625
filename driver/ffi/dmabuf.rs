// SPDX-License-Identifier: GPL-2.0

//! Dma-bufs: pinning one we export, and exporting our own over
//! grant-mapped pages; the file descriptor that hands it to user space.

use core::ffi::{c_int, c_void};
use core::ptr::NonNull;

use kernel::error::to_result;
use kernel::prelude::*;

use super::super::common::grantable::{PinStep, Walk};
use super::super::common::mmap::{MappedBuffer, MmapPlan, MmapRequest};
use super::fence::{FenceRef, PeerFence};
use super::grant::GrantPages;
use crate::bindings;

/// A value that holds a dma-buf alive: a pinned one we export, or a
/// reference.
///
/// # Safety
///
/// `raw_dmabuf` returns a dma-buf that stays live as long as the value.
pub(crate) unsafe trait DmabufHandle {
    /// The dma-buf.
    fn raw_dmabuf(&self) -> *mut bindings::dma_buf;
}

// SAFETY: a pin holds its dma-buf until dropped (its invariant).
unsafe impl DmabufHandle for PinnedDmabuf {
    fn raw_dmabuf(&self) -> *mut bindings::dma_buf {
        self.pin.buf
    }
}

// SAFETY: a reference holds its dma-buf until dropped (its invariant).
unsafe impl DmabufHandle for DmabufRef {
    fn raw_dmabuf(&self) -> *mut bindings::dma_buf {
        self.0.as_ptr()
    }
}

// --- export side: pinned dma-bufs, grants, directory pages ------------------------

/// A dma-buf we hold, attached to our device and mapped, so its pages
/// stay put.
///
/// # Invariants
///
/// `pin` was filled by a successful `hdm_pin_dmabuf` and is released once,
/// in `drop`.
pub(crate) struct PinnedDmabuf {
    pin: bindings::hdm_pin,
}

// SAFETY: a dma-buf reference, attachment and mapping may be released
// from any process context.
unsafe impl Send for PinnedDmabuf {}
// SAFETY: no method mutates through `&self`.
unsafe impl Sync for PinnedDmabuf {}

/// Why [`PinnedDmabuf::pin`] failed: the step and the kernel's errno
/// (positive), for `common::grantable::pin_errno` to judge.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PinFailure {
    /// The call that failed.
    pub(crate) step: PinStep,
    /// What it returned.
    pub(crate) errno: i32,
}

impl PinnedDmabuf {
    /// Gets the dma-buf of `fd`, attaches and maps it.
    ///
    /// # Errors
    ///
    /// The step that failed and its errno, as the kernel said.
    pub(crate) fn pin(fd: i32) -> core::result::Result<Self, PinFailure> {
        // SAFETY: an all-zero `hdm_pin` (null pointers) is valid.
        let mut pin: bindings::hdm_pin = unsafe { core::mem::zeroed() };
        let mut step = 0u32;
        // SAFETY: `pin` and `step` are valid for writes; any fd value is
        // checked.
        let err = unsafe { bindings::hdm_pin_dmabuf(fd, &mut pin, &mut step) };
        if err < 0 {
            let step = match step {
                bindings::hdm_pin_step_HDM_PIN_GET => PinStep::Get,
                bindings::hdm_pin_step_HDM_PIN_ATTACH => PinStep::Attach,
                _ => PinStep::Map,
            };
            return Err(PinFailure { step, errno: -err });
        }
        crate::stats::EXPORTS_PINNED.inc();
        Ok(PinnedDmabuf { pin })
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.pin.size
    }

    /// Identity of the underlying dma-buf (its address), to recognise the
    /// same buffer exported again. Never dereferenced.
    pub(crate) fn identity(&self) -> usize {
        self.pin.buf as usize
    }

    /// Walks the pages: the frame of each into `gfns` and what the kernel
    /// says of it (`grantable::PAGE_*`) into `facts`, as far as both
    /// reach. Judges nothing (`grantable::accept_frames` does).
    pub(super) fn frames(&mut self, gfns: &mut [u64], facts: &mut [u8]) -> Walk {
        let cap = gfns.len().min(facts.len());
        let cap = u32::try_from(cap).unwrap_or(u32::MAX);
        let mut walk = bindings::hdm_pin_walk {
            segment: false,
            first_offset: 0,
            ragged: false,
            ragged_segment: 0,
            pages: 0,
        };
        // SAFETY: `pin` is live (invariant); `gfns` and `facts` hold at
        // least `cap` entries each; `walk` is valid for writes.
        unsafe {
            bindings::hdm_pin_frames(
                &mut self.pin,
                gfns.as_mut_ptr(),
                facts.as_mut_ptr(),
                cap,
                &mut walk,
            )
        };
        Walk {
            first_offset: walk.segment.then_some(walk.first_offset),
            ragged: walk.ragged.then_some(walk.ragged_segment),
            pages: walk.pages,
        }
    }
}

impl Drop for PinnedDmabuf {
    fn drop(&mut self) {
        // SAFETY: releases what `hdm_pin_dmabuf` took, once (invariant).
        unsafe { bindings::hdm_unpin_dmabuf(&mut self.pin) };
        crate::stats::EXPORTS_PINNED.dec();
    }
}

/// How an imported buffer's pages go into page tables (user mappings and
/// the kernel's vmap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageTables {
    /// The pages themselves: their frames are the peer's (auto-translated
    /// domains).
    Pages,
    /// Each grant mapped again, by Xen, into its page-table entry (PV,
    /// where a normal PTE may not point at another domain's frame).
    GrantPtes,
}

impl PageTables {
    /// The shim's `enum hdm_page_tables`.
    pub(super) fn raw(self) -> u32 {
        match self {
            PageTables::Pages => bindings::hdm_page_tables_HDM_PT_PAGES,
            PageTables::GrantPtes => bindings::hdm_page_tables_HDM_PT_GRANT_PTES,
        }
    }
}

/// What the imported dma-buf needs to stay valid: the mapped pages and
/// their grant references, owned by an import mapping (see `import.rs`).
pub(crate) struct DmabufSource<'a> {
    /// The grant-mapped pages.
    pub(crate) pages: &'a GrantPages,
    /// The grant reference of each page (for extra PV mappings).
    pub(crate) refs: &'a [u32],
    /// The exporting domain.
    pub(crate) domid: u16,
    /// Whether the buffer is mapped writable.
    pub(crate) writable: bool,
    /// How its pages go into page tables.
    pub(crate) tables: PageTables,
    /// Size in bytes.
    pub(crate) size: u64,
}

/// One reference to a dma-buf we exported over grant-mapped pages.
///
/// # Invariants
///
/// Owns one file reference of a live dma-buf.
pub(crate) struct DmabufRef(NonNull<bindings::dma_buf>);

// SAFETY: dma-buf references may be dropped from any process context.
unsafe impl Send for DmabufRef {}

/// The type `hdm_rs_gbuf_release` (entry.rs) takes a dma-buf's owner
/// back as: what the dma-buf stands on, owned by it from its export to its
/// release.
///
/// # Safety
///
/// Only that type may implement it ([`DmabufRef::export_owned`] hands C a
/// pointer to a `KBox<Self>` that the callback reclaims as that type), and
/// `source` describes pages and references the value owns.
pub(crate) unsafe trait DmabufOwner {
    /// What the dma-buf is made of.
    fn source(&self) -> DmabufSource<'_>;
}

impl DmabufRef {
    /// Exports `owner`'s pages as a dma-buf that owns it until its release
    /// (`hdm_rs_gbuf_release`). On failure, `owner` comes back.
    pub(crate) fn export_owned<T: DmabufOwner>(
        owner: KBox<T>,
    ) -> core::result::Result<Self, (Error, KBox<T>)> {
        let raw = KBox::into_raw(owner);
        // SAFETY: `raw` is valid (just leaked) and stays so until reclaimed
        // below or by the release callback.
        let source = unsafe { &*raw }.source();
        // SAFETY: `source` borrows from `*raw`, which is neither moved nor
        // freed until the release callback reclaims it (`DmabufOwner`).
        match unsafe { Self::export(&source, raw.cast_const().cast()) } {
            Ok(buf) => Ok(buf),
            // SAFETY: `raw` came from `KBox::into_raw` just above and no
            // dma-buf refers to it.
            Err(e) => Err((e, unsafe { KBox::from_raw(raw) })),
        }
    }

    /// Exports `source` as a dma-buf. `owner` is handed back to
    /// `hdm_rs_gbuf_release` when the last reference goes.
    ///
    /// # Safety
    ///
    /// `source`'s pages and refs stay valid and mapped until that release
    /// callback has run for `owner`.
    unsafe fn export(source: &DmabufSource<'_>, owner: *const c_void) -> Result<Self> {
        let desc = bindings::hdm_gbuf_desc {
            pages: source.pages.as_ptr(),
            refs: source.refs.as_ptr(),
            nr: u32::try_from(source.pages.len()).map_err(|_| EINVAL)?,
            domid: source.domid,
            writable: source.writable,
            tables: source.tables.raw(),
            size: source.size,
            owner: owner.cast_mut(),
        };
        // Every page must show a peer frame: C maps and hands them out.
        if source.refs.len() != source.pages.len() || source.pages.mapped() != source.pages.len() {
            return Err(EINVAL);
        }
        // SAFETY: `desc` is copied by the callee; its arrays stay valid
        // until release (caller's contract).
        let buf = unsafe { bindings::hdm_gbuf_export(&desc) };
        let buf = kernel::error::from_err_ptr(buf)?;
        NonNull::new(buf).map(DmabufRef).ok_or(ENOMEM)
    }

    /// A new reference to the dma-buf at `identity` (from
    /// [`DmabufRef::identity`]), unless it is being released.
    ///
    /// # Safety
    ///
    /// The dma-buf's memory is live: its release callback has not
    /// returned (the caller holds the lock that callback takes to forget
    /// the identity).
    pub(crate) unsafe fn try_get(identity: usize) -> Option<Self> {
        let buf = NonNull::new(identity as *mut bindings::dma_buf)?;
        // SAFETY: the dma-buf is allocated (caller's contract); this only
        // increments a non-zero file count.
        unsafe { bindings::hdm_dmabuf_tryget(buf.as_ptr()) }.then_some(DmabufRef(buf))
    }

    /// A reference to the dma-buf of the descriptor `fd`.
    ///
    /// # Errors
    ///
    /// `EBADF` if `fd` is not open, `EINVAL` if it is no dma-buf.
    pub(crate) fn from_fd(fd: i32) -> Result<Self> {
        // SAFETY: any fd value is checked by the callee.
        let buf = kernel::error::from_err_ptr(unsafe { bindings::hdm_dmabuf_get(fd) })?;
        NonNull::new(buf).map(DmabufRef).ok_or(EINVAL)
    }

    /// Adds `fence` to the dma-buf's reservation object, for its readers
    /// to wait for, if the object's lock is free now (never waiting for
    /// it).
    ///
    /// # Errors
    ///
    /// `EBUSY` if it is held; `ENOMEM`.
    pub(crate) fn try_add_fence(&self, fence: &FenceRef) -> Result {
        // SAFETY: both are live (invariants); the reservation object takes
        // its own reference.
        to_result(unsafe { bindings::hdm_dmabuf_try_add_fence(self.0.as_ptr(), fence.as_ptr()) })
    }

    /// Locks the dma-buf's reservation object with room for `count` more
    /// fences, which [`ResvGuard::add`] then adds without allocating.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn lock_for_fences(&self, count: usize) -> Result<ResvGuard<'_>> {
        let count = u32::try_from(count).map_err(|_| EINVAL)?;
        // SAFETY: the dma-buf is live (invariant); unlocked by the guard.
        to_result(unsafe { bindings::hdm_dmabuf_lock_for_fences(self.0.as_ptr(), count) })?;
        Ok(ResvGuard {
            buf: self,
            left: count,
        })
    }

    /// The address of the dma-buf, for [`DmabufRef::try_get`].
    pub(crate) fn identity(&self) -> usize {
        self.0.as_ptr() as usize
    }

    /// Installs the reference as `fd`.
    pub(crate) fn install(self, fd: ReservedFd) {
        let buf = self.0.as_ptr();
        let raw = fd.0;
        core::mem::forget(self);
        core::mem::forget(fd);
        // SAFETY: `raw` is reserved and not installed; installing consumes
        // our file reference (both handed over exactly once).
        unsafe { bindings::hdm_fd_install(raw, buf) }
    }
}

impl Drop for DmabufRef {
    fn drop(&mut self) {
        // SAFETY: drops the reference we own (invariant).
        unsafe { bindings::hdm_dmabuf_put(self.0.as_ptr()) }
    }
}

/// A dma-buf's reservation object, locked with room for `left` more
/// fences.
///
/// # Invariants
///
/// The object is locked, with room reserved for `left` more fences.
pub(crate) struct ResvGuard<'a> {
    buf: &'a DmabufRef,
    left: u32,
}

impl ResvGuard<'_> {
    /// Adds `fence` with write usage, if room is left (else it is counted
    /// in `fences_unattached`: more than reserved is a bug).
    pub(crate) fn add(&mut self, fence: &PeerFence) {
        if self.left == 0 {
            crate::stats::FENCES_UNATTACHED.inc();
            return;
        }
        self.left -= 1;
        // SAFETY: the object is locked with room for one more (invariant);
        // both are live; it takes its own reference.
        unsafe { bindings::hdm_dmabuf_add_reserved_fence(self.buf.0.as_ptr(), fence.as_ptr()) };
    }
}

impl Drop for ResvGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: locked by `lock_for_fences`, unlocked once here.
        unsafe { bindings::hdm_dmabuf_unlock(self.buf.0.as_ptr()) };
    }
}

/// An `mmap` of an imported buffer as the shim reports it
/// (`hdm_rs_mmap_verdict`), in `common::mmap`'s terms.
pub(crate) fn mmap_request(req: &bindings::hdm_mmap_request) -> (MappedBuffer, MmapRequest) {
    let buffer = MappedBuffer {
        pages: req.buffer_pages,
        writable: req.buffer_writable,
    };
    let request = MmapRequest {
        shared: req.shared,
        write: req.write,
        pgoff: req.pgoff,
        pages: req.pages,
    };
    (buffer, request)
}

/// The shim's `HDM_MMAP_*` bits that carry out `plan`.
pub(crate) fn mmap_plan_bits(plan: MmapPlan) -> c_int {
    let mut bits = 0u32;
    if plan.never_writable {
        bits |= bindings::hdm_mmap_plan_HDM_MMAP_NEVER_WRITABLE;
    }
    if plan.dont_copy {
        bits |= bindings::hdm_mmap_plan_HDM_MMAP_DONTCOPY;
    }
    if plan.dont_dump {
        bits |= bindings::hdm_mmap_plan_HDM_MMAP_DONTDUMP;
    }
    if plan.dont_expand {
        bits |= bindings::hdm_mmap_plan_HDM_MMAP_DONTEXPAND;
    }
    c_int::try_from(bits).unwrap_or(0)
}

/// A reserved, not yet installed, O_CLOEXEC file descriptor.
pub(crate) struct ReservedFd(i32);

impl ReservedFd {
    /// Reserves a descriptor in the calling process.
    ///
    /// # Errors
    ///
    /// `EMFILE` if the process has no free descriptor.
    pub(crate) fn reserve() -> Result<Self> {
        // SAFETY: no precondition (process context).
        let fd = unsafe { bindings::hdm_fd_reserve() };
        to_result(fd)?;
        Ok(ReservedFd(fd))
    }

    /// The number.
    pub(crate) fn number(&self) -> i32 {
        self.0
    }
}

impl Drop for ReservedFd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is reserved by us and not installed.
        unsafe { bindings::hdm_fd_unreserve(self.0) }
    }
}
