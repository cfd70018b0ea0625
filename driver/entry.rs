// SPDX-License-Identifier: GPL-2.0

//! The calls from C into Rust (`hdm_rs_*`, declared in `shim.h`), and the
//! pointers Rust hands to C to get its objects back. Each entry point
//! turns raw pointers into references under the lifetime rule the kernel
//! guarantees for that callback, then runs safe code.

use core::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

use super::common::xen::DomId;
use super::common::{mmap, uapi};
use crate::backend::BackDevice;
use crate::bindings;
use crate::conn::{Conn, Pass};
use crate::ffi;
use crate::ffi::device::{FileWaker, Opening, SeqFile};
use crate::ffi::dmabuf::{DmabufOwner, DmabufSource};
use crate::ffi::xenbus::{IrqContext, XenbusDev};
use crate::files::FileCtx;
use crate::frontend::FrontDevice;
use crate::mapping::{ImportedBuffer, VmaEvent};
use crate::registry::Driver;

// --- the driver state ----------------------------------------------------------

/// The driver state, from [`start`] to [`stop`].
static DRIVER: AtomicPtr<Driver> = AtomicPtr::new(core::ptr::null_mut());

/// Creates the driver state (module init, before registration).
///
/// # Errors
///
/// `ENOMEM` if the state cannot be allocated.
pub(crate) fn start() -> Result {
    install_driver(Driver::new()?);
    Ok(())
}

/// Frees the driver state (module exit, after unregistration, when no
/// callback can run any more). Grants still draining are handed to the
/// grant layer, which ends them once the peer unmaps.
pub(crate) fn stop() {
    ffi::tick_cancel();
    if let Some(driver) = take_driver() {
        driver.abandon_drain();
    }
}

/// Publishes the driver state for the callbacks.
fn install_driver(driver: Arc<Driver>) {
    let old = DRIVER.swap(Arc::into_raw(driver).cast_mut(), Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: a non-null pointer here came from `Arc::into_raw` above.
        drop(unsafe { Arc::from_raw(old) });
    }
}

/// Takes the driver state back (module exit).
fn take_driver() -> Option<Arc<Driver>> {
    let ptr = DRIVER.swap(core::ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: a non-null pointer came from `Arc::into_raw` in
    // `install_driver`, and the swap makes this the only reclaim.
    (!ptr.is_null()).then(|| unsafe { Arc::from_raw(ptr) })
}

/// The driver state, for a callback.
fn driver() -> Option<&'static Driver> {
    let ptr = DRIVER.load(Ordering::Acquire);
    // SAFETY: the pointer is set before the C tables are registered and
    // reclaimed only after they are unregistered and the tick cancelled,
    // so every callback runs while it is valid.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

// --- the types C hands back ----------------------------------------------------------

// SAFETY: `hdm_rs_irq` below reads its context as a `Conn`, the only
// implementer.
unsafe impl IrqContext for Conn {}

// SAFETY: `hdm_rs_gbuf_release` below reclaims its owner as a
// `KBox<ImportedBuffer>`, the only implementer; the source borrows the
// buffer's own mapping and references.
unsafe impl DmabufOwner for ImportedBuffer {
    fn source(&self) -> DmabufSource<'_> {
        ImportedBuffer::source(self)
    }
}

// --- the control device -------------------------------------------------------------

/// Borrows the context of an open file.
///
/// # Safety
///
/// `ctx` came from `hdm_rs_open` and `hdm_rs_release` has not run for it.
unsafe fn file_ctx<'a>(ctx: *mut c_void) -> ArcBorrow<'a, FileCtx> {
    // SAFETY: per the contract, `ctx` is from `Arc::into_raw` and alive.
    unsafe { ArcBorrow::from_raw(ctx.cast::<FileCtx>()) }
}

#[no_mangle]
extern "C" fn hdm_rs_open(hf: *mut bindings::hdm_file, file: *mut bindings::file) -> *mut c_void {
    let Some(driver) = driver() else {
        return core::ptr::null_mut();
    };
    // SAFETY: `file` is the file this open is for; the value is dropped
    // before this call returns.
    let Some(opening) = (unsafe { Opening::from_raw(file) }) else {
        return core::ptr::null_mut();
    };
    let admin = opening.opener_capable(uapi::ADMIN_CAPABILITY);
    // SAFETY: `hf` is the argument of this open; the context holding the
    // waker is dropped in `hdm_rs_release`, before the C part is freed.
    let Some(waker) = (unsafe { FileWaker::from_raw(hf) }) else {
        return core::ptr::null_mut();
    };
    let Ok(file) = FileCtx::new(driver.next_id(), admin, waker) else {
        return core::ptr::null_mut();
    };
    if driver.files.add(file.clone()).is_err() {
        return core::ptr::null_mut();
    }
    crate::device::replay(driver, &file);
    Arc::into_raw(file).cast_mut().cast()
}

#[no_mangle]
extern "C" fn hdm_rs_release(ctx: *mut c_void) {
    // SAFETY: `ctx` came from `hdm_rs_open` (Arc::into_raw); this is its
    // one release.
    let file = unsafe { Arc::from_raw(ctx.cast::<FileCtx>()) };
    if let Some(driver) = driver() {
        driver.files.remove(file.id);
        crate::device::close(driver, &file);
    }
}

#[no_mangle]
extern "C" fn hdm_rs_readable(ctx: *mut c_void) -> bool {
    // SAFETY: called by the file's read/poll, between open and release.
    unsafe { file_ctx(ctx) }.readable()
}

#[no_mangle]
extern "C" fn hdm_rs_read(ctx: *mut c_void, buf: c_ulong, len: usize) -> c_long {
    // SAFETY: called by the file's read, between open and release.
    let file = unsafe { file_ctx(ctx) };
    match file.read(buf as usize, len) {
        Ok(n) => n as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}

#[no_mangle]
extern "C" fn hdm_rs_ioctl(ctx: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: called by the file's ioctl, between open and release.
    let file = unsafe { file_ctx(ctx) };
    let Some(driver) = driver() else {
        return ENODEV.to_errno() as c_long;
    };
    match crate::device::ioctl(driver, &file, cmd, arg as usize) {
        Ok(n) => n as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}

// --- XenBus ---------------------------------------------------------------------

/// Runs `f` on the state stored in `dev`'s drvdata by a probe.
///
/// # Safety
///
/// `dev` is the device of a running xenbus callback whose probe stored an
/// `Arc<T>` (and no other type) with `set_drvdata`.
unsafe fn with_device<T>(dev: *mut bindings::xenbus_device, f: impl FnOnce(&Driver, &T)) {
    // SAFETY: a running callback's device (caller's contract).
    let Some(xb) = (unsafe { XenbusDev::from_raw(dev) }) else {
        return;
    };
    let ptr = xb.drvdata().cast::<T>();
    if ptr.is_null() {
        return;
    }
    if let Some(driver) = driver() {
        // SAFETY: `ptr` is the `Arc<T>` probe stored (caller's contract),
        // reclaimed only by remove, which the core does not run
        // concurrently with this callback.
        let state = unsafe { ArcBorrow::from_raw(ptr) };
        f(driver, &state);
    }
}

/// Takes back the state a probe stored in `dev`.
///
/// # Safety
///
/// As [`with_device`], called from `remove`, the last callback.
unsafe fn take_device<T>(dev: *mut bindings::xenbus_device) -> Option<Arc<T>> {
    // SAFETY: a running callback's device (caller's contract).
    let xb = unsafe { XenbusDev::from_raw(dev) }?;
    let ptr = xb.drvdata().cast::<T>();
    if ptr.is_null() {
        return None;
    }
    xb.set_drvdata(core::ptr::null());
    // SAFETY: `ptr` came from `Arc::into_raw` in probe; cleared above so
    // it is reclaimed once.
    Some(unsafe { Arc::from_raw(ptr) })
}

#[no_mangle]
extern "C" fn hdm_rs_front_probe(dev: *mut bindings::xenbus_device) -> i32 {
    // SAFETY: probe's device, used until its remove (FrontDevice keeps it
    // and is dropped in remove).
    let Some(xb) = (unsafe { XenbusDev::from_raw(dev) }) else {
        return EINVAL.to_errno();
    };
    let Some(driver) = driver() else {
        return ENODEV.to_errno();
    };
    match FrontDevice::probe(driver, xb) {
        Ok(state) => {
            xb.set_drvdata(Arc::into_raw(state.clone()).cast());
            state.start(driver);
            0
        }
        Err(e) => e.to_errno(),
    }
}

#[no_mangle]
extern "C" fn hdm_rs_front_changed(dev: *mut bindings::xenbus_device, _peer: c_uint) {
    // SAFETY: otherend_changed of a device probed by the frontend driver,
    // which stores an `Arc<FrontDevice>`.
    unsafe { with_device::<FrontDevice>(dev, |driver, d| d.peer_changed(driver)) }
}

#[no_mangle]
extern "C" fn hdm_rs_front_remove(dev: *mut bindings::xenbus_device) {
    // SAFETY: remove of a device probed by the frontend driver.
    if let Some(state) = unsafe { take_device::<FrontDevice>(dev) } {
        if let Some(driver) = driver() {
            state.remove(driver);
        }
    }
}

#[no_mangle]
extern "C" fn hdm_rs_back_probe(dev: *mut bindings::xenbus_device) -> i32 {
    // SAFETY: probe's device, used until its remove (BackDevice keeps it
    // and is dropped in remove).
    let Some(xb) = (unsafe { XenbusDev::from_raw(dev) }) else {
        return EINVAL.to_errno();
    };
    let Some(driver) = driver() else {
        return ENODEV.to_errno();
    };
    match BackDevice::probe(driver, xb) {
        Ok(state) => {
            xb.set_drvdata(Arc::into_raw(state.clone()).cast());
            state.start(driver);
            0
        }
        Err(e) => e.to_errno(),
    }
}

#[no_mangle]
extern "C" fn hdm_rs_back_changed(dev: *mut bindings::xenbus_device, _peer: c_uint) {
    // SAFETY: otherend_changed of a device probed by the backend driver,
    // which stores an `Arc<BackDevice>`.
    unsafe { with_device::<BackDevice>(dev, |driver, d| d.peer_changed(driver)) }
}

#[no_mangle]
extern "C" fn hdm_rs_back_online(dev: *mut bindings::xenbus_device) {
    // SAFETY: the watch of a device probed by the backend driver, which
    // stores an `Arc<BackDevice>`; removed before that device's remove
    // reclaims it.
    unsafe { with_device::<BackDevice>(dev, |driver, d| d.online_changed(driver)) }
}

#[no_mangle]
extern "C" fn hdm_rs_back_remove(dev: *mut bindings::xenbus_device) {
    // SAFETY: remove of a device probed by the backend driver.
    if let Some(state) = unsafe { take_device::<BackDevice>(dev) } {
        if let Some(driver) = driver() {
            state.remove(driver);
        }
    }
}

#[no_mangle]
extern "C" fn hdm_rs_irq(ctx: *mut c_void) -> c_int {
    // SAFETY: `ctx` is the strong reference `Irq::<Conn>::request` leaked
    // for the handler, reclaimed only after the IRQ is freed.
    let conn = unsafe { ArcBorrow::from_raw(ctx.cast::<Conn>()) };
    let pass = driver().map_or(Pass::Idle, |d| conn.process(d));
    crate::stats::EVENT_PASSES.inc();
    if pass == Pass::Idle {
        crate::stats::EVENT_PASSES_IDLE.inc();
    }
    (match pass {
        Pass::Idle => bindings::hdm_irq_pass_HDM_IRQ_IDLE,
        Pass::Done => bindings::hdm_irq_pass_HDM_IRQ_DONE,
        Pass::More => bindings::hdm_irq_pass_HDM_IRQ_MORE,
    }) as c_int
}

#[no_mangle]
extern "C" fn hdm_rs_irq_notice(ctx: *mut c_void) {
    // SAFETY: as for `hdm_rs_irq`: the strong reference `Irq::<Conn>::request`
    // leaked, reclaimed only after the notice timer is disabled.
    let conn = unsafe { ArcBorrow::from_raw(ctx.cast::<Conn>()) };
    conn.pay_notice();
}

// --- dma-buf, user mappings, timed jobs, debugfs --------------------------------------

#[no_mangle]
extern "C" fn hdm_rs_gbuf_release(owner: *mut c_void) {
    // SAFETY: `owner` is the `KBox::into_raw` of
    // `DmabufRef::export_owned::<ImportedBuffer>`, passed back once by the
    // dma-buf's release.
    let buffer = unsafe { KBox::from_raw(owner.cast::<ImportedBuffer>()) };
    if let Some(driver) = driver() {
        buffer.release(driver, &driver.unmaps);
    }
}

#[no_mangle]
extern "C" fn hdm_rs_mmap_verdict(req: bindings::hdm_mmap_request) -> c_int {
    let (buffer, request) = ffi::dmabuf::mmap_request(&req);
    match mmap::mmap_verdict(buffer, request) {
        Ok(plan) => ffi::dmabuf::mmap_plan_bits(plan),
        Err(refusal) => -refusal.errno(),
    }
}

#[no_mangle]
extern "C" fn hdm_rs_vma_event(event: c_uint, domid: u16, status: c_int) {
    let event = match event {
        bindings::hdm_vma_event_HDM_VMA_COPY_NO_MEMORY => VmaEvent::CopyNoMemory,
        bindings::hdm_vma_event_HDM_VMA_PTE_CLEARED => VmaEvent::PteCleared,
        bindings::hdm_vma_event_HDM_VMA_FAULT_UNMAPPED => VmaEvent::FaultUnmapped { status },
        _ => return,
    };
    let Ok(peer) = DomId::new(u32::from(domid)) else {
        return;
    };
    if let Some(driver) = driver() {
        crate::mapping::vma_event(driver, peer, event);
    }
}

#[no_mangle]
extern "C" fn hdm_rs_fence_signalled(conn: u64, id: u64, error: c_int) {
    crate::stats::FENCES_OUT.dec();
    // A connection gone meanwhile took its fences with it.
    if let Some(driver) = driver() {
        if let Some(conn) = driver.conn(conn) {
            conn.fence_signalled(driver, id, error);
        }
    }
}

#[no_mangle]
extern "C" fn hdm_rs_tick() -> c_uint {
    driver().map_or(0, |d| d.tick())
}

#[no_mangle]
extern "C" fn hdm_rs_stats_show(m: *mut bindings::seq_file) {
    // SAFETY: the seq_file of the running show callback.
    if let Some(m) = unsafe { SeqFile::from_raw(m) } {
        crate::stats::lines(|line| m.puts(line));
    }
}

#[no_mangle]
extern "C" fn hdm_rs_rings_show(m: *mut bindings::seq_file) {
    // SAFETY: the seq_file of the running show callback.
    let Some(m) = (unsafe { SeqFile::from_raw(m) }) else {
        return;
    };
    if let Some(conns) = driver().and_then(|d| d.all_conns().ok()) {
        for conn in conns.iter() {
            conn.show_rings(&m);
        }
    }
}
