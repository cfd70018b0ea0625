// SPDX-License-Identifier: GPL-2.0

//! XenBus devices: the device, its `online` watch, its shared rings and
//! the IRQ bound to its event channel; xenstore.

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

use super::super::common::shmem::SharedMem;
use super::PAGE_SIZE;
use crate::bindings;

// --- XenBus devices and xenstore ------------------------------------------------

/// A bound XenBus device.
///
/// # Invariants
///
/// Points to a live `xenbus_device` from the driver's `probe` until its
/// `remove` returns; every holder is dropped before `remove` returns.
#[derive(Clone, Copy)]
pub(crate) struct XenbusDev(NonNull<bindings::xenbus_device>);

// SAFETY: the device lives while any holder does (invariant); what may run
// on several threads at once is either a read of fields fixed before
// probe (`nodename`, `otherend`, `otherend_id`), a call the xenbus core or
// xenstore serialises itself (the drvdata, ring and event-channel calls
// run from the core's serialised callbacks), or a state change, which the
// shim's `hdm_state_lock` serialises against every other one.
unsafe impl Send for XenbusDev {}
// SAFETY: as above.
unsafe impl Sync for XenbusDev {}

impl XenbusDev {
    /// Wraps the device given to a xenbus callback.
    ///
    /// # Safety
    ///
    /// `dev` is the device of a running probe, otherend_changed or remove
    /// callback, and the result is not used after that device's `remove`.
    pub(crate) unsafe fn from_raw(dev: *mut bindings::xenbus_device) -> Option<Self> {
        NonNull::new(dev).map(XenbusDev)
    }

    fn raw(&self) -> *mut bindings::xenbus_device {
        self.0.as_ptr()
    }

    /// Our xenstore directory.
    pub(crate) fn nodename(&self) -> &CStr {
        // SAFETY: the device is live (invariant); `nodename` is set before
        // probe and is NUL-terminated for the device's life.
        unsafe { CStr::from_char_ptr(bindings::hdm_xb_nodename(self.raw())) }
    }

    /// The peer's xenstore directory.
    pub(crate) fn otherend(&self) -> &CStr {
        // SAFETY: as `nodename`; `otherend` is read by the core before probe.
        unsafe { CStr::from_char_ptr(bindings::hdm_xb_otherend(self.raw())) }
    }

    /// The peer's domain id.
    pub(crate) fn otherend_id(&self) -> u16 {
        // SAFETY: the device is live (invariant).
        let id = unsafe { bindings::hdm_xb_otherend_id(self.raw()) };
        u16::try_from(id).unwrap_or(u16::MAX)
    }

    /// Writes our `state` node (from any thread: the shim serialises
    /// state changes).
    pub(crate) fn switch_state(&self, state: u32) {
        let state = i32::try_from(state).unwrap_or(i32::MAX);
        // SAFETY: the device is live (invariant); any state value is
        // accepted and written as a number.
        unsafe { bindings::hdm_xb_switch_state(self.raw(), state) };
    }

    /// Frontend: switches to Closed and completes the device's `down`.
    pub(crate) fn frontend_closed(&self) {
        // SAFETY: the device is live (invariant).
        unsafe { bindings::hdm_xb_frontend_closed(self.raw()) };
    }

    /// Stores the driver's per-device pointer.
    pub(crate) fn set_drvdata(&self, data: *const c_void) {
        // SAFETY: the device is live (invariant).
        unsafe { bindings::hdm_xb_set_drvdata(self.raw(), data.cast_mut()) }
    }

    /// The pointer stored with [`XenbusDev::set_drvdata`].
    pub(crate) fn drvdata(&self) -> *const c_void {
        // SAFETY: the device is live (invariant).
        unsafe { bindings::hdm_xb_get_drvdata(self.raw()) }
    }

    /// Frontend: allocates, zeroes and grants to the peer a ring of
    /// `pages` pages.
    ///
    /// # Errors
    ///
    /// `EINVAL` for 0 or more than [`MAX_RING_PAGES`] pages, or
    /// `xenbus_setup_ring`'s error (`ENOMEM`, `ENOSPC`).
    pub(crate) fn setup_ring(&self, pages: usize) -> Result<SharedRing> {
        let mut refs = [0u32; MAX_RING_PAGES];
        let nr = u32::try_from(pages).map_err(|_| EINVAL)?;
        if pages == 0 || pages > MAX_RING_PAGES {
            return Err(EINVAL);
        }
        let mut vaddr: *mut c_void = core::ptr::null_mut();
        // SAFETY: the device is live; `vaddr` and `refs` (16 entries, at
        // least `pages`) are valid for writes.
        to_result(unsafe {
            bindings::xenbus_setup_ring(
                self.raw(),
                kernel::bindings::GFP_KERNEL,
                &mut vaddr,
                nr,
                refs.as_mut_ptr(),
            )
        })?;
        let vaddr = NonNull::new(vaddr).ok_or(ENOMEM)?;
        Ok(SharedRing {
            vaddr,
            pages,
            how: RingOrigin::Granted(refs),
        })
    }

    /// Backend: maps the peer's ring pages `refs`.
    ///
    /// # Errors
    ///
    /// `EINVAL` for more than [`MAX_RING_PAGES`] refs, or
    /// `xenbus_map_ring_valloc`'s error (a ref Xen refused, `ENOMEM`).
    pub(crate) fn map_ring(&self, refs: &[u32]) -> Result<SharedRing> {
        let mut grefs = [0u32; MAX_RING_PAGES];
        let slot = grefs.get_mut(..refs.len()).ok_or(EINVAL)?;
        slot.copy_from_slice(refs);
        let nr = u32::try_from(refs.len()).map_err(|_| EINVAL)?;
        let mut vaddr: *mut c_void = core::ptr::null_mut();
        // SAFETY: the device is live; `grefs` holds `nr` (<= 16) refs and
        // `vaddr` is valid for writes.
        to_result(unsafe {
            bindings::xenbus_map_ring_valloc(self.raw(), grefs.as_mut_ptr(), nr, &mut vaddr)
        })?;
        let vaddr = NonNull::new(vaddr).ok_or(ENOMEM)?;
        Ok(SharedRing {
            vaddr,
            pages: refs.len(),
            how: RingOrigin::Mapped(*self),
        })
    }

    /// Backend: watches our own `online` node; the watch calls
    /// `hdm_rs_back_online` for this device until dropped.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the watch could not be registered.
    pub(crate) fn watch_online(&self) -> Result<OnlineWatch> {
        // SAFETY: the device is live (invariant); the watch is removed
        // (`OnlineWatch::drop`) before the device's `remove` returns.
        let w = unsafe { bindings::hdm_watch_online(self.raw()) };
        NonNull::new(w).map(OnlineWatch).ok_or(ENOMEM)
    }

    /// Frontend: allocates an unbound event channel for the peer.
    ///
    /// # Errors
    ///
    /// The hypercall's error (`ENOSPC`: no free port).
    pub(crate) fn alloc_evtchn(&self) -> Result<u32> {
        let mut port = 0u32;
        // SAFETY: the device is live; `port` is valid for writes.
        to_result(unsafe { bindings::xenbus_alloc_evtchn(self.raw(), &mut port) })?;
        Ok(port)
    }

    /// Frontend: frees a port that was never bound.
    pub(crate) fn free_evtchn(&self, port: u32) {
        // SAFETY: the device is live; the caller owns the unbound port.
        unsafe { bindings::xenbus_free_evtchn(self.raw(), port) };
    }

    /// Backend: binds to the peer's port, as a late-EOI IRQ.
    ///
    /// # Errors
    ///
    /// The hypercall's error (`EINVAL` for a port the peer did not offer
    /// us), or `ENOMEM`.
    pub(crate) fn bind_interdomain(&self, remote_port: u32) -> Result<u32> {
        // SAFETY: the device is live; any port number is checked by Xen.
        let irq =
            unsafe { bindings::bind_interdomain_evtchn_to_irq_lateeoi(self.raw(), remote_port) };
        to_result(irq)?;
        u32::try_from(irq).map_err(|_| EINVAL)
    }
}

/// A registered watch on a backend's `online` node.
///
/// # Invariants
///
/// Came from `hdm_watch_online` and is unregistered once, in `drop`.
pub(crate) struct OnlineWatch(NonNull<bindings::hdm_online_watch>);

// SAFETY: unregistering a watch is valid from any process context.
unsafe impl Send for OnlineWatch {}

impl Drop for OnlineWatch {
    fn drop(&mut self) {
        // SAFETY: registered and not yet unregistered (invariant); this
        // waits for a running callback unless called from it.
        unsafe { bindings::hdm_unwatch_online(self.0.as_ptr()) }
    }
}

/// Binds one of our unbound ports as a late-EOI IRQ.
///
/// # Errors
///
/// `ENOMEM`, or the hypercall's error.
pub(crate) fn bind_evtchn(port: u32) -> Result<u32> {
    // SAFETY: binds a port this domain allocated; no pointer arguments.
    let irq = unsafe { bindings::bind_evtchn_to_irq_lateeoi(port) };
    to_result(irq)?;
    u32::try_from(irq).map_err(|_| EINVAL)
}

/// Pages in the largest ring.
pub(crate) const MAX_RING_PAGES: usize = 1 << super::super::common::limits::MAX_RING_PAGE_ORDER;

enum RingOrigin {
    /// Our pages, granted to the peer with these refs.
    Granted([u32; MAX_RING_PAGES]),
    /// The peer's pages, mapped through this device.
    Mapped(XenbusDev),
}

/// The pages of one shared ring, viewed as 32-bit words.
///
/// # Invariants
///
/// `vaddr` maps `pages` pages for as long as the value lives: granted ring
/// pages are freed (or handed to the grant layer) and mapped ones unmapped
/// only in `drop`. For `Mapped`, the device outlives the ring.
pub(crate) struct SharedRing {
    vaddr: NonNull<c_void>,
    pages: usize,
    how: RingOrigin,
}

// SAFETY: the ring memory is only accessed through atomics, and the
// teardown calls are valid from any process context.
unsafe impl Send for SharedRing {}
// SAFETY: shared access is through `&[AtomicU32]` only.
unsafe impl Sync for SharedRing {}

impl SharedRing {
    /// The ring's grant references (frontend rings only).
    pub(crate) fn refs(&self) -> &[u32] {
        match &self.how {
            RingOrigin::Granted(refs) => refs.get(..self.pages).unwrap_or(&[]),
            RingOrigin::Mapped(_) => &[],
        }
    }

    fn words(&self) -> &[AtomicU32] {
        // SAFETY: `vaddr` maps `pages` whole pages, page-aligned, for the
        // life of `self` (invariant); the peer writes them concurrently,
        // which `AtomicU32` (interior mutability, atomic accesses) allows.
        unsafe {
            core::slice::from_raw_parts(
                self.vaddr.as_ptr().cast::<AtomicU32>(),
                self.pages * PAGE_SIZE / 4,
            )
        }
    }
}

impl SharedMem for SharedRing {
    fn len(&self) -> usize {
        self.words().len() * 4
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.words().read_u32(offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.words().write_u32(offset, value)
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.words().load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) {
        self.words().store_release_u32(offset, value)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.words().read_bytes(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.words().write_bytes(offset, src)
    }
}

impl Drop for SharedRing {
    fn drop(&mut self) {
        let nr = u32::try_from(self.pages).unwrap_or(0);
        match &mut self.how {
            RingOrigin::Granted(refs) => {
                let mut vaddr = self.vaddr.as_ptr();
                // SAFETY: `vaddr`/`refs` come from xenbus_setup_ring with
                // `nr` pages; access ends (deferred while the peer still
                // maps a page) and the pages are freed exactly once.
                unsafe { bindings::xenbus_teardown_ring(&mut vaddr, nr, refs.as_mut_ptr()) };
            }
            RingOrigin::Mapped(dev) => {
                // SAFETY: `vaddr` comes from xenbus_map_ring_valloc on
                // `dev`, which is still bound (invariant).
                unsafe { bindings::xenbus_unmap_ring_vfree(dev.raw(), self.vaddr.as_ptr()) };
            }
        }
    }
}

/// The type `hdm_rs_irq` (entry.rs) turns an IRQ's context pointer back
/// into.
///
/// # Safety
///
/// Only that type may implement it: [`Irq::request`] hands C a pointer to
/// a `T`, and `hdm_rs_irq` reads it as that type.
pub(crate) unsafe trait IrqContext: Send + Sync {}

/// An event-channel IRQ whose events run `hdm_rs_irq` in a work item, on
/// the context `T` it keeps alive.
///
/// # Invariants
///
/// `hi` came from `hdm_irq_request` for IRQ `irq` with context `ctx` (from
/// `Arc::into_raw`, the pointer `hdm_rs_irq` receives) and is freed once,
/// in `drop`, which also closes the port and then gives the reference
/// back.
pub(crate) struct Irq<T: IrqContext> {
    irq: u32,
    hi: NonNull<bindings::hdm_irq>,
    ctx: *const T,
}

// SAFETY: IRQ numbers and a reference to a `Send + Sync` context may move
// between threads; unbinding is valid from any process context.
unsafe impl<T: IrqContext> Send for Irq<T> {}
// SAFETY: `notify`, `kick` and `notice_later` only pass the number or the
// handle to IRQ-safe C functions; the context is `Sync`.
unsafe impl<T: IrqContext> Sync for Irq<T> {}

impl<T: IrqContext> Irq<T> {
    /// Installs the handler on `irq` (bound with a `_lateeoi` call), with
    /// a strong reference to `ctx` for `hdm_rs_irq` until the value is
    /// dropped. On error the IRQ is unbound.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the handler could not be installed (allocation or
    /// `request_irq` failed).
    pub(crate) fn request(irq: u32, ctx: Arc<T>, name: &'static CStr) -> Result<Self> {
        let ctx = Arc::into_raw(ctx);
        // SAFETY: `irq` was just bound by us; `name` is static; `ctx` stays
        // valid until the handler is freed (it is reclaimed after that in
        // `drop`), and `T: IrqContext` is the type `hdm_rs_irq` reads.
        let hi = unsafe {
            bindings::hdm_irq_request(irq, ctx.cast::<c_void>().cast_mut(), name.as_char_ptr())
        };
        match NonNull::new(hi) {
            Some(hi) => Ok(Irq { irq, hi, ctx }),
            None => {
                // SAFETY: no handler is installed; this unbinds the IRQ and
                // closes its port.
                unsafe { bindings::unbind_from_irqhandler(irq, core::ptr::null_mut()) };
                // SAFETY: `ctx` came from `Arc::into_raw` above and no
                // handler uses it.
                drop(unsafe { Arc::from_raw(ctx) });
                Err(ENOMEM)
            }
        }
    }

    /// Kicks the peer.
    pub(crate) fn notify(&self) {
        // SAFETY: the IRQ is bound (invariant); callable in any context.
        unsafe { bindings::notify_remote_via_irq(self.irq as i32) }
    }

    /// Queues our own pass, as if the peer had signalled.
    pub(crate) fn kick(&self) {
        // SAFETY: `hi` is live (invariant); queueing a work item is valid
        // in any context.
        unsafe { bindings::hdm_irq_kick(self.hi.as_ptr()) }
    }

    /// Has `hdm_rs_irq_notice` run on the context in `ms` milliseconds,
    /// unless it is due already.
    pub(crate) fn notice_later(&self, ms: u32) {
        // SAFETY: `hi` is live (invariant); queueing delayed work is valid
        // in any context.
        unsafe { bindings::hdm_irq_notice_later(self.hi.as_ptr(), ms) }
    }
}

impl<T: IrqContext> Drop for Irq<T> {
    fn drop(&mut self) {
        // SAFETY: `hi` is live and freed once (invariant); this waits for a
        // running pass, frees the IRQ and closes the port.
        unsafe { bindings::hdm_irq_free(self.hi.as_ptr()) };
        // SAFETY: `ctx` came from `Arc::into_raw` in `request`; the handler
        // that used it is gone.
        drop(unsafe { Arc::from_raw(self.ctx) });
    }
}

/// A xenstore transaction id (0: none).
pub(crate) type XsTxn = u32;

/// Reads node `path` into `buf`: its length, `None` if absent.
///
/// # Errors
///
/// The store's error (`EAGAIN` in a transaction that conflicted), or
/// `ENOSPC` if the value does not fit `buf`.
pub(crate) fn xs_read(txn: XsTxn, path: &CStr, buf: &mut [u8]) -> Result<Option<usize>> {
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    // SAFETY: `path` is NUL-terminated; `buf` is valid for `len` bytes.
    let got =
        unsafe { bindings::hdm_xs_read(txn, path.as_char_ptr(), buf.as_mut_ptr().cast(), len) };
    if got == ENOENT.to_errno() {
        return Ok(None);
    }
    to_result(got)?;
    Ok(Some(usize::try_from(got).unwrap_or(0)))
}

/// Writes node `path`.
///
/// # Errors
///
/// The store's error (`EACCES`, `ENOSPC` over quota, `EAGAIN` in a
/// transaction that conflicted).
pub(crate) fn xs_write(txn: XsTxn, path: &CStr, value: &CStr) -> Result {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    to_result(unsafe { bindings::hdm_xs_write(txn, path.as_char_ptr(), value.as_char_ptr()) })
}

/// Removes node `path`.
///
/// # Errors
///
/// `ENOENT` if absent, or the store's error.
pub(crate) fn xs_rm(txn: XsTxn, path: &CStr) -> Result {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    to_result(unsafe { bindings::hdm_xs_rm(txn, path.as_char_ptr()) })
}

/// Starts a transaction.
///
/// # Errors
///
/// The store's error (`EAGAIN` when it has too many open).
pub(crate) fn xs_transaction_start() -> Result<XsTxn> {
    let mut txn = 0;
    // SAFETY: `txn` is valid for writes.
    to_result(unsafe { bindings::hdm_xs_transaction_start(&mut txn) })?;
    Ok(txn)
}

/// Ends a transaction.
///
/// # Errors
///
/// `EAGAIN` on a conflict (start again), or the store's error.
pub(crate) fn xs_transaction_end(txn: XsTxn, abort: bool) -> Result {
    // SAFETY: ends a transaction id from `xs_transaction_start`.
    to_result(unsafe { bindings::hdm_xs_transaction_end(txn, abort) })
}
