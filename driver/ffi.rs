// SPDX-License-Identifier: GPL-2.0

//! The FFI layer: every call into C is here, behind safe types whose
//! invariants make the calls sound. Together with `entry.rs` (the calls
//! from C into Rust) this is the only place with `unsafe`.

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

use kernel::alloc::flags::GFP_KERNEL;
use kernel::error::to_result;
use kernel::prelude::*;
use kernel::str::{CStr, CString};

use super::common::shmem::SharedMem;
use super::common::xen::DomId;
use crate::bindings;

// The protocol core's page geometry must be the kernel's.
const _: () = assert!(super::common::limits::XEN_PAGE_SHIFT == bindings::XEN_PAGE_SHIFT);
const _: () = assert!(super::common::limits::XEN_PAGE_SIZE == 1usize << bindings::XEN_PAGE_SHIFT);
// A multi-page ring must fit what xenbus_setup_ring() accepts.
const _: () =
    assert!(super::common::limits::MAX_RING_PAGE_ORDER <= bindings::XENBUS_MAX_RING_GRANT_ORDER);

/// Size of a page, the unit of grants and mappings.
pub(crate) const PAGE_SIZE: usize = 1 << bindings::XEN_PAGE_SHIFT;

/// `INVALID_GRANT_HANDLE` (a cast macro bindgen cannot evaluate).
pub(crate) const INVALID_HANDLE: u32 = u32::MAX;
/// `GNTMAP_host_map`.
pub(crate) const GNTMAP_HOST_MAP: u32 = bindings::GNTMAP_host_map;
/// `GNTMAP_readonly`.
pub(crate) const GNTMAP_READONLY: u32 = bindings::GNTMAP_readonly;
/// `GNTST_okay`.
pub(crate) const GNTST_OKAY: i16 = bindings::GNTST_okay as i16;

/// Errno values the kernel crate of 6.12 does not predeclare.
pub(crate) mod errno {
    use kernel::error::Error;

    /// `ETIMEDOUT`.
    pub(crate) fn etimedout() -> Error {
        Error::from_errno(-110)
    }
    /// `ENOTCONN`.
    pub(crate) fn enotconn() -> Error {
        Error::from_errno(-107)
    }
}

// --- domain and parameters ------------------------------------------------------

/// Whether this kernel runs in a Xen domain.
pub(crate) fn xen_domain() -> bool {
    // SAFETY: reads the boot-time `xen_domain_type`; no precondition.
    unsafe { bindings::hdm_xen_domain() }
}

/// Whether this is the initial domain, dom0.
pub(crate) fn xen_initial_domain() -> bool {
    // SAFETY: reads boot-time constants only; no precondition.
    unsafe { bindings::hdm_xen_initial_domain() }
}

/// Whether this is a PV domain.
pub(crate) fn xen_pv_domain() -> bool {
    // SAFETY: reads the boot-time `xen_domain_type`; no precondition.
    unsafe { bindings::hdm_xen_pv_domain() }
}

/// Whether this is an HVM-container domain (HVM or PVH).
pub(crate) fn xen_hvm_domain() -> bool {
    // SAFETY: reads the boot-time `xen_domain_type`; no precondition.
    unsafe { bindings::hdm_xen_hvm_domain() }
}

/// Whether this is a PVH domain.
pub(crate) fn xen_pvh_domain() -> bool {
    // SAFETY: reads the boot-time `xen_pvh` flag; no precondition.
    unsafe { bindings::hdm_xen_pvh_domain() }
}

/// This domain's id from xenstore, if readable.
pub(crate) fn own_domid() -> Option<u16> {
    // SAFETY: a xenstore read with no pointer arguments; xenstore is up
    // when the module loads (the xenbus core initialises at boot).
    let id = unsafe { bindings::hdm_read_own_domid() };
    u16::try_from(id).ok()
}

/// Module parameters.
pub(crate) mod params {
    use crate::bindings;

    /// Whether `inject_warn` asks for a test WARNING.
    pub(crate) fn inject_warn() -> bool {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_inject_warn_requested() }
    }
    /// `max_buffer_mib` in bytes.
    pub(crate) fn max_buffer_bytes() -> u64 {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_param_max_buffer_bytes() }
    }
    /// `ring_page_order`.
    pub(crate) fn ring_page_order() -> u32 {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_param_ring_page_order() }
    }
    /// `allow_rw`.
    pub(crate) fn allow_rw() -> bool {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_param_allow_rw() }
    }
    /// `log_buffers` (writable at run time).
    pub(crate) fn log_buffers() -> bool {
        // SAFETY: reads a module parameter; the shim uses READ_ONCE since
        // root may change it at any time.
        unsafe { bindings::hdm_param_log_buffers() }
    }
}

/// Logs one buffer operation, if the `log_buffers` parameter asks for it.
pub(crate) fn log_buffer(args: core::fmt::Arguments<'_>) {
    if params::log_buffers() {
        pr_info!("{}\n", args);
    }
}

/// Prints a kernel `WARNING:` with a backtrace.
pub(crate) fn warn(msg: &CStr) {
    // SAFETY: `msg` is NUL-terminated and outlives the call.
    unsafe { bindings::hdm_warn(msg.as_char_ptr()) }
}

/// Logs a warning that peer `peer` can trigger, within that peer's budget
/// of lines (the shim keeps one per peer).
pub(crate) fn log_ratelimited(peer: DomId, args: core::fmt::Arguments<'_>) {
    if let Ok(msg) = CString::try_from_fmt(args) {
        // SAFETY: `msg` is NUL-terminated; the shim prints it with "%s".
        unsafe { bindings::hdm_log_ratelimited(peer.get(), msg.as_char_ptr()) }
    }
}

/// Logs an informational line that peer `peer` can trigger, within that
/// peer's budget.
pub(crate) fn log_info_ratelimited(peer: DomId, args: core::fmt::Arguments<'_>) {
    if let Ok(msg) = CString::try_from_fmt(args) {
        // SAFETY: `msg` is NUL-terminated; the shim prints it with "%s".
        unsafe { bindings::hdm_log_info_ratelimited(peer.get(), msg.as_char_ptr()) }
    }
}

/// Fills `buf` with random bytes (`get_random_bytes`).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    let len = u32::try_from(buf.len()).unwrap_or(0);
    // SAFETY: `buf` is valid for writes of `len` bytes.
    unsafe { bindings::hdm_get_random_bytes(buf.as_mut_ptr().cast(), len) }
}

/// Sleeps for `ms` milliseconds (process context).
pub(crate) fn sleep_ms(ms: u32) {
    // SAFETY: `msleep` may be called from any process context.
    unsafe { bindings::hdm_msleep(ms) }
}

/// Milliseconds since boot (jiffies-based).
pub(crate) fn now_ms() -> u64 {
    // SAFETY: reads jiffies; no precondition.
    unsafe { bindings::hdm_jiffies_ms() }
}

/// Runs the driver's tick in `ms` milliseconds (sooner if due sooner).
pub(crate) fn tick_schedule(ms: u32) {
    // SAFETY: queues a static delayed work item; callable from any
    // process context between registration and `tick_cancel`.
    unsafe { bindings::hdm_tick_schedule(ms) }
}

/// Cancels the tick and waits for a running one.
pub(crate) fn tick_cancel() {
    // SAFETY: `cancel_delayed_work_sync` on a static work item.
    unsafe { bindings::hdm_tick_cancel() }
}

/// Registers the misc device, debugfs and both xenbus drivers.
pub(crate) fn register_all() -> Result {
    // SAFETY: called once from module init; the tables are C statics.
    to_result(unsafe { bindings::hdm_register_all() })
}

/// Undoes [`register_all`]; every bound device is removed first.
pub(crate) fn unregister_all() {
    // SAFETY: called once from module exit after a successful register.
    unsafe { bindings::hdm_unregister_all() }
}

// --- XenBus devices and xenstore ------------------------------------------------

/// A bound XenBus device.
///
/// # Invariants
///
/// Points to a live `xenbus_device` from the driver's `probe` until its
/// `remove` returns; every holder is dropped before `remove` returns.
#[derive(Clone, Copy)]
pub(crate) struct XenbusDev(NonNull<bindings::xenbus_device>);

// SAFETY: the xenbus core serialises probe/otherend_changed/remove; the
// accessors used from other threads read fields fixed at probe time.
unsafe impl Send for XenbusDev {}
// SAFETY: as above; no method mutates Rust-visible state.
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

    /// Writes our `state` node.
    pub(crate) fn switch_state(&self, state: u32) {
        // SAFETY: the device is live (invariant); any state value is
        // accepted and written as a number.
        unsafe { bindings::xenbus_switch_state(self.raw(), state) };
    }

    /// Frontend: switches to Closed and completes the device's `down`.
    pub(crate) fn frontend_closed(&self) {
        // SAFETY: the device is live (invariant).
        unsafe { bindings::xenbus_frontend_closed(self.raw()) };
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
    pub(crate) fn watch_online(&self) -> Result<OnlineWatch> {
        // SAFETY: the device is live (invariant); the watch is removed
        // (`OnlineWatch::drop`) before the device's `remove` returns.
        let w = unsafe { bindings::hdm_watch_online(self.raw()) };
        NonNull::new(w).map(OnlineWatch).ok_or(ENOMEM)
    }

    /// Frontend: allocates an unbound event channel for the peer.
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
pub(crate) fn bind_evtchn(port: u32) -> Result<u32> {
    // SAFETY: binds a port this domain allocated; no pointer arguments.
    let irq = unsafe { bindings::bind_evtchn_to_irq_lateeoi(port) };
    to_result(irq)?;
    u32::try_from(irq).map_err(|_| EINVAL)
}

/// Pages in the largest ring.
pub(crate) const MAX_RING_PAGES: usize = 1 << super::common::limits::MAX_RING_PAGE_ORDER;

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

/// An event-channel IRQ with our threaded handler installed.
///
/// # Invariants
///
/// `ctx` is the pointer `hdm_rs_irq` receives; the handler is installed
/// until `drop`, which also closes the port.
pub(crate) struct Irq {
    irq: u32,
    ctx: *const c_void,
}

// SAFETY: IRQ numbers and the opaque context may move between threads;
// unbinding is valid from any process context.
unsafe impl Send for Irq {}
// SAFETY: `notify` only passes the number to an IRQ-safe C function.
unsafe impl Sync for Irq {}

impl Irq {
    /// Installs the threaded handler on `irq` (bound with a `_lateeoi`
    /// call) with context `ctx`. On error the IRQ is unbound.
    ///
    /// `ctx` must stay valid until the returned value is dropped; the
    /// caller guarantees it (it is a leaked `Arc` reclaimed after drop).
    pub(crate) fn request(irq: u32, ctx: *const c_void, name: &'static CStr) -> Result<Self> {
        // SAFETY: `irq` was just bound by us; `name` is static; `ctx` stays
        // valid until free (caller's contract above).
        let err = unsafe { bindings::hdm_request_irq(irq, ctx.cast_mut(), name.as_char_ptr()) };
        if err != 0 {
            // SAFETY: no handler is installed; this unbinds the IRQ and
            // closes its port.
            unsafe { bindings::unbind_from_irqhandler(irq, core::ptr::null_mut()) };
            return to_result(err).map(|_| Irq { irq, ctx });
        }
        Ok(Irq { irq, ctx })
    }

    /// Kicks the peer.
    pub(crate) fn notify(&self) {
        // SAFETY: the IRQ is bound (invariant); callable in any context.
        unsafe { bindings::notify_remote_via_irq(self.irq as i32) }
    }

    /// The context given at [`Irq::request`].
    pub(crate) fn ctx(&self) -> *const c_void {
        self.ctx
    }
}

impl Drop for Irq {
    fn drop(&mut self) {
        // SAFETY: the handler was installed with `ctx` (invariant); this
        // waits for a running handler, frees the IRQ and closes the port.
        unsafe { bindings::unbind_from_irqhandler(self.irq, self.ctx.cast_mut()) };
    }
}

/// A xenstore transaction id (0: none).
pub(crate) type XsTxn = u32;

/// Reads node `path` into `buf`: its length, `None` if absent.
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
pub(crate) fn xs_write(txn: XsTxn, path: &CStr, value: &CStr) -> Result {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    to_result(unsafe { bindings::hdm_xs_write(txn, path.as_char_ptr(), value.as_char_ptr()) })
}

/// Removes node `path` (absent is fine).
pub(crate) fn xs_rm(txn: XsTxn, path: &CStr) -> Result {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    to_result(unsafe { bindings::hdm_xs_rm(txn, path.as_char_ptr()) })
}

/// Starts a transaction.
pub(crate) fn xs_transaction_start() -> Result<XsTxn> {
    let mut txn = 0;
    // SAFETY: `txn` is valid for writes.
    to_result(unsafe { bindings::hdm_xs_transaction_start(&mut txn) })?;
    Ok(txn)
}

/// Ends a transaction; `EAGAIN` means a conflict: start again.
pub(crate) fn xs_transaction_end(txn: XsTxn, abort: bool) -> Result {
    // SAFETY: ends a transaction id from `xs_transaction_start`.
    to_result(unsafe { bindings::hdm_xs_transaction_end(txn, abort) })
}

// --- the control device -----------------------------------------------------------

/// The C part of one open file of the control device (its wait queue).
///
/// # Invariants
///
/// Valid from `hdm_rs_open` until `hdm_rs_release` returns; the Rust file
/// context holding it is dropped by then.
pub(crate) struct FileWaker(NonNull<bindings::hdm_file>);

// SAFETY: waking a wait queue is valid from any thread.
unsafe impl Send for FileWaker {}
// SAFETY: as above.
unsafe impl Sync for FileWaker {}

impl FileWaker {
    /// # Safety
    ///
    /// `hf` is the argument of a running `hdm_rs_open`, and the value is
    /// dropped before `hdm_rs_release` returns for that file.
    pub(crate) unsafe fn from_raw(hf: *mut bindings::hdm_file) -> Option<Self> {
        NonNull::new(hf).map(FileWaker)
    }

    /// Wakes readers and pollers.
    pub(crate) fn wake(&self) {
        // SAFETY: the file's C part is live (invariant).
        unsafe { bindings::hdm_file_wake(self.0.as_ptr()) }
    }
}

/// A debugfs `seq_file` being shown.
pub(crate) struct SeqFile(NonNull<bindings::seq_file>);

impl SeqFile {
    /// # Safety
    ///
    /// `m` is the `seq_file` of a running show callback and the value
    /// does not outlive it.
    pub(crate) unsafe fn from_raw(m: *mut bindings::seq_file) -> Option<Self> {
        NonNull::new(m).map(SeqFile)
    }

    /// Appends text.
    pub(crate) fn puts(&self, s: &CStr) {
        // SAFETY: live seq_file (invariant); `s` is NUL-terminated.
        unsafe { bindings::hdm_seq_puts(self.0.as_ptr(), s.as_char_ptr()) }
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

impl PinnedDmabuf {
    /// Gets the dma-buf of `fd`, attaches and maps it.
    pub(crate) fn pin(fd: i32) -> Result<Self> {
        // SAFETY: an all-zero `hdm_pin` (null pointers) is valid.
        let mut pin: bindings::hdm_pin = unsafe { core::mem::zeroed() };
        // SAFETY: `pin` is valid for writes; any fd value is checked.
        to_result(unsafe { bindings::hdm_pin_dmabuf(fd, &mut pin) })?;
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

    /// Fills `gfns` with the frame of each page.
    pub(crate) fn frames(&mut self, gfns: &mut [u64]) -> Result {
        let nr = u32::try_from(gfns.len()).map_err(|_| EINVAL)?;
        // SAFETY: `pin` is live (invariant); `gfns` holds `nr` entries.
        to_result(unsafe { bindings::hdm_pin_frames(&mut self.pin, gfns.as_mut_ptr(), nr) })
    }
}

impl Drop for PinnedDmabuf {
    fn drop(&mut self) {
        // SAFETY: releases what `hdm_pin_dmabuf` took, once (invariant).
        unsafe { bindings::hdm_unpin_dmabuf(&mut self.pin) }
    }
}

/// Grants the peer access to frame `gfn`; the grant reference.
pub(crate) fn grant_access(domid: u16, gfn: u64, readonly: bool) -> Result<u32> {
    let frame = usize::try_from(gfn).map_err(|_| EINVAL)?;
    // SAFETY: no pointers; the frame belongs to a page we keep alive
    // (pinned dma-buf or owned page) until the grant has ended.
    let r =
        unsafe { bindings::gnttab_grant_foreign_access(domid, frame as _, i32::from(readonly)) };
    to_result(r)?;
    u32::try_from(r).map_err(|_| EINVAL)
}

/// Ends a grant if the peer does not map it; true when ended (the
/// reference is then freed).
pub(crate) fn try_end_access(gref: u32) -> bool {
    // SAFETY: `gref` is a reference we granted and have not ended.
    unsafe { bindings::gnttab_try_end_foreign_access(gref) != 0 }
}

/// Hands a grant whose frame we no longer track to the grant layer, which
/// ends it once the peer unmaps (holding its own page reference).
pub(crate) fn end_access_deferred(gref: u32) {
    // SAFETY: `gref` is a reference we granted and have not ended; with a
    // NULL page the grant layer looks the frame up and pins it itself.
    unsafe { bindings::gnttab_end_foreign_access(gref, core::ptr::null_mut()) }
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
    pub(crate) fn alloc() -> Result<Self> {
        // SAFETY: no precondition.
        NonNull::new(unsafe { bindings::hdm_alloc_page() })
            .map(OwnedPage)
            .ok_or(ENOMEM)
    }

    /// Its frame number, as the peer maps it.
    pub(crate) fn gfn(&self) -> u64 {
        // SAFETY: the page is live (invariant).
        unsafe { bindings::hdm_page_gfn(self.0.as_ptr()) }
    }

    /// Overwrites the page.
    pub(crate) fn write(&mut self, bytes: &[u8; PAGE_SIZE]) {
        // SAFETY: the page is ours and mapped in the kernel's linear map
        // (GFP_KERNEL, not highmem), `PAGE_SIZE` bytes long; the peer may
        // only read it (read-only grant).
        unsafe {
            let dst = bindings::hdm_page_address(self.0.as_ptr()).cast::<u8>();
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, PAGE_SIZE);
        }
    }

    /// Ends grant `gref` of this page through the grant layer, which frees
    /// the page once the peer no longer maps it.
    pub(crate) fn end_access_and_free(self, gref: u32) {
        let page = self.0.as_ptr();
        core::mem::forget(self);
        // SAFETY: `gref` grants this page; our allocation reference is
        // handed to the grant layer (invariant: handed over once).
        unsafe { bindings::gnttab_end_foreign_access(gref, page) }
    }
}

impl Drop for OwnedPage {
    fn drop(&mut self) {
        // SAFETY: the page is ours and not granted (granted pages leave
        // through `end_access_and_free`).
        unsafe { bindings::hdm_free_page(self.0.as_ptr()) }
    }
}

// --- import side: grant-mapped pages and their dma-buf ---------------------------

/// Pages without a frame of their own, to map the peer's grants into
/// (`gnttab_alloc_pages`).
///
/// # Invariants
///
/// `pages` holds `gnttab_alloc_pages` pages; none is grant-mapped when the
/// value is dropped (`GrantMapping` unmaps first, or leaks on failure).
pub(crate) struct GrantPages {
    pages: KVVec<*mut bindings::page>,
}

// SAFETY: page pointers may move between threads; freeing is valid in
// any process context.
unsafe impl Send for GrantPages {}
// SAFETY: `&self` gives out only the pointers.
unsafe impl Sync for GrantPages {}

impl GrantPages {
    /// Allocates `count` pages.
    pub(crate) fn alloc(count: usize) -> Result<Self> {
        let nr = i32::try_from(count).map_err(|_| EINVAL)?;
        let mut pages = KVVec::from_elem(core::ptr::null_mut(), count, GFP_KERNEL)?;
        // SAFETY: `pages` holds `count` writable entries.
        to_result(unsafe { bindings::gnttab_alloc_pages(nr, pages.as_mut_ptr()) })?;
        Ok(GrantPages { pages })
    }

    /// No pages.
    pub(crate) fn empty() -> Self {
        GrantPages {
            pages: KVVec::new(),
        }
    }

    /// Number of pages.
    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    /// Leaks the pages (when a grant mapping could not be undone, the
    /// pages must never be reused).
    pub(crate) fn leak(mut self) {
        let empty = KVVec::new();
        core::mem::forget(core::mem::replace(&mut self.pages, empty));
    }

    /// Prepares `ops[i]` to map `refs[i]` of `domid` at page `i`.
    pub(crate) fn map_ops(
        &self,
        refs: &[u32],
        domid: u16,
        flags: u32,
    ) -> Result<KVVec<bindings::gnttab_map_grant_ref>> {
        if refs.len() != self.pages.len() {
            return Err(EINVAL);
        }
        // SAFETY: an all-zero map op is a valid value of this plain struct.
        let zero: bindings::gnttab_map_grant_ref = unsafe { core::mem::zeroed() };
        let mut ops = KVVec::from_elem(zero, refs.len(), GFP_KERNEL)?;
        for ((op, &page), &gref) in ops.iter_mut().zip(self.pages.iter()).zip(refs) {
            // SAFETY: `op` is valid for writes; `page` is one of our pages.
            unsafe { bindings::hdm_set_map_op(op, page, flags, gref, domid) };
        }
        Ok(ops)
    }

    /// Maps all `ops` (built by [`GrantPages::map_ops`]) in one batch.
    /// Per-op status is in the ops; the result only reports a failure of
    /// the call itself.
    pub(crate) fn map(&self, ops: &mut [bindings::gnttab_map_grant_ref]) -> Result {
        let nr = u32::try_from(ops.len()).map_err(|_| EINVAL)?;
        if ops.len() != self.pages.len() {
            return Err(EINVAL);
        }
        // SAFETY: `ops[i]` targets `pages[i]`, both arrays have `nr`
        // entries, and the pages are frameless `gnttab_alloc_pages` pages.
        to_result(unsafe {
            bindings::gnttab_map_refs(
                ops.as_mut_ptr(),
                core::ptr::null_mut(),
                self.pages.as_ptr().cast_mut(),
                nr,
            )
        })
    }

    /// Unmaps the pages whose `handles` are valid, waiting until nobody
    /// holds a page reference. On success every handle is invalid.
    pub(crate) fn unmap(&self, handles: &mut [u32], flags: u32) -> Result {
        if handles.len() != self.pages.len() {
            return Err(EINVAL);
        }
        let mut ops = KVVec::with_capacity(handles.len(), GFP_KERNEL)?;
        let mut pages = KVVec::with_capacity(handles.len(), GFP_KERNEL)?;
        for (&handle, &page) in handles.iter().zip(self.pages.iter()) {
            if handle == INVALID_HANDLE {
                continue;
            }
            // SAFETY: an all-zero unmap op is a valid plain value.
            let mut op: bindings::gnttab_unmap_grant_ref = unsafe { core::mem::zeroed() };
            // SAFETY: `op` is valid for writes; `page` is one of ours.
            unsafe { bindings::hdm_set_unmap_op(&mut op, page, flags, handle) };
            ops.push(op, GFP_KERNEL)?;
            pages.push(page, GFP_KERNEL)?;
        }
        if ops.is_empty() {
            return Ok(());
        }
        let nr = u32::try_from(ops.len()).map_err(|_| EINVAL)?;
        // SAFETY: `ops[i]` unmaps a live mapping at `pages[i]`; `nr` each.
        to_result(unsafe {
            bindings::hdm_unmap_refs_sync(ops.as_mut_ptr(), pages.as_mut_ptr(), nr)
        })?;
        if ops.iter().any(|op| op.status != GNTST_OKAY) {
            return Err(EIO);
        }
        handles.iter_mut().for_each(|h| *h = INVALID_HANDLE);
        Ok(())
    }

    /// The words of page `index`, which must be grant-mapped (readable).
    pub(crate) fn words(&self, index: usize) -> Option<&[AtomicU32]> {
        let page = *self.pages.get(index)?;
        // SAFETY: `page` is one of our pages and, per the caller, maps a
        // peer frame at its kernel address for as long as `&self` lives
        // (unmapping needs `&self` too, but only after this borrow ends);
        // the peer may write it concurrently, hence atomics.
        Some(unsafe {
            core::slice::from_raw_parts(
                bindings::hdm_page_address(page).cast::<AtomicU32>(),
                PAGE_SIZE / 4,
            )
        })
    }

    fn as_ptr(&self) -> *mut *mut bindings::page {
        self.pages.as_ptr().cast_mut()
    }
}

impl Drop for GrantPages {
    fn drop(&mut self) {
        let Ok(nr) = i32::try_from(self.pages.len()) else {
            return;
        };
        if nr == 0 {
            return;
        }
        // SAFETY: the pages came from gnttab_alloc_pages and none is
        // mapped any more (invariant).
        unsafe { bindings::gnttab_free_pages(nr, self.pages.as_mut_ptr()) }
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

impl DmabufRef {
    /// Exports `source` as a dma-buf. `owner` is handed back to
    /// `hdm_rs_gbuf_release` when the last reference goes.
    ///
    /// # Safety
    ///
    /// `source`'s pages and refs stay valid and mapped until that release
    /// callback has run for `owner`.
    pub(crate) unsafe fn export(source: &DmabufSource<'_>, owner: *const c_void) -> Result<Self> {
        let desc = bindings::hdm_gbuf_desc {
            pages: source.pages.as_ptr(),
            refs: source.refs.as_ptr(),
            nr: u32::try_from(source.pages.len()).map_err(|_| EINVAL)?,
            domid: source.domid,
            writable: source.writable,
            size: source.size,
            owner: owner.cast_mut(),
        };
        if source.refs.len() != source.pages.len() {
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

/// A reserved, not yet installed, O_CLOEXEC file descriptor.
pub(crate) struct ReservedFd(i32);

impl ReservedFd {
    /// Reserves a descriptor in the calling process.
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
