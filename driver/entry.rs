// SPDX-License-Identifier: GPL-2.0

//! The calls from C into Rust (`hdm_rs_*`, declared in `shim.h`), and the
//! pointers Rust hands to C to get its objects back. Each entry point
//! turns raw pointers into references under the lifetime rule the kernel
//! guarantees for that callback, then runs safe code.

use core::ffi::{c_long, c_uint, c_ulong, c_void};
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

use super::common::xen::DomId;
use crate::backend::BackDevice;
use crate::bindings;
use crate::conn::Conn;
use crate::device::FileCtx;
use crate::ffi::{self, DmabufRef, DmabufSource, FileWaker, Irq, SeqFile, XenbusDev};
use crate::frontend::FrontDevice;
use crate::import::ImportedBuffer;
use crate::registry::Driver;

// --- the driver state ----------------------------------------------------------

/// The driver state, from `registry::start` to `registry::stop`.
static DRIVER: AtomicPtr<Driver> = AtomicPtr::new(core::ptr::null_mut());
/// This domain's id (`DOMID_SELF` until read).
static OWN_DOMID: AtomicU32 = AtomicU32::new(0x7ff0);

/// Publishes the driver state for the callbacks.
pub(crate) fn install_driver(driver: Arc<Driver>) {
    if let Some(id) = ffi::own_domid() {
        OWN_DOMID.store(u32::from(id), Ordering::Relaxed);
    }
    let old = DRIVER.swap(Arc::into_raw(driver).cast_mut(), Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: a non-null pointer here came from `Arc::into_raw` above.
        drop(unsafe { Arc::from_raw(old) });
    }
}

/// Takes the driver state back (module exit).
pub(crate) fn take_driver() -> Option<Arc<Driver>> {
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

/// This domain's id.
pub(crate) fn own_domid() -> DomId {
    DomId::new(OWN_DOMID.load(Ordering::Relaxed)).unwrap_or(DomId::DOM0)
}

// --- pointers handed to C --------------------------------------------------------

/// A connection's event-channel IRQ, whose handler context is a strong
/// reference to the connection.
pub(crate) struct ConnIrq(Option<Irq>);

impl ConnIrq {
    /// Installs the handler of `conn` on the bound `irq`.
    pub(crate) fn new(
        conn: &Arc<Conn>,
        irq: u32,
        name: &'static kernel::str::CStr,
    ) -> Result<Self> {
        let ctx = Arc::into_raw(conn.clone()).cast::<c_void>();
        match Irq::request(irq, ctx, name) {
            Ok(irq) => Ok(ConnIrq(Some(irq))),
            Err(e) => {
                // SAFETY: `ctx` came from `Arc::into_raw` just above and no
                // handler uses it.
                drop(unsafe { Arc::from_raw(ctx.cast::<Conn>()) });
                Err(e)
            }
        }
    }

    /// Kicks the peer.
    pub(crate) fn notify(&self) {
        if let Some(irq) = &self.0 {
            irq.notify();
        }
    }
}

impl Drop for ConnIrq {
    fn drop(&mut self) {
        if let Some(irq) = self.0.take() {
            let ctx = irq.ctx();
            // Frees the IRQ, waiting for a running handler.
            drop(irq);
            // SAFETY: `ctx` came from `Arc::into_raw` in `new`; the handler
            // that used it is gone.
            drop(unsafe { Arc::from_raw(ctx.cast::<Conn>()) });
        }
    }
}

/// A new reference to the imported dma-buf `identity`.
///
/// The caller holds the lock of the connection the buffer was imported on,
/// and found `identity` in its `live` field: the dma-buf's release clears
/// that field under the same lock before the dma-buf is freed.
pub(crate) fn dmabuf_try_get(identity: usize) -> Option<DmabufRef> {
    // SAFETY: per the contract above the dma-buf's memory is live.
    unsafe { DmabufRef::try_get(identity) }
}

/// Exports `source` as a dma-buf owned by `buffer`, which the dma-buf's
/// release gets back. On failure, `buffer` is returned.
pub(crate) fn export_dmabuf(
    buffer: KBox<ImportedBuffer>,
) -> core::result::Result<DmabufRef, (Error, KBox<ImportedBuffer>)> {
    let owner = KBox::into_raw(buffer);
    // SAFETY: `owner` is valid (just leaked) and stays so until reclaimed
    // below or by `hdm_rs_gbuf_release`.
    let source: DmabufSource<'_> = unsafe { &*owner }.source();
    // SAFETY: `source` borrows from `*owner`, which is neither moved nor
    // freed until `hdm_rs_gbuf_release` reclaims it.
    match unsafe { DmabufRef::export(&source, owner.cast_const().cast()) } {
        Ok(buf) => Ok(buf),
        // SAFETY: `owner` came from `KBox::into_raw` just above and no
        // dma-buf refers to it.
        Err(e) => Err((e, unsafe { KBox::from_raw(owner) })),
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
extern "C" fn hdm_rs_open(hf: *mut bindings::hdm_file) -> *mut c_void {
    let Some(driver) = driver() else {
        return core::ptr::null_mut();
    };
    // SAFETY: `hf` is the argument of this open; the context holding the
    // waker is dropped in `hdm_rs_release`, before the C part is freed.
    let Some(waker) = (unsafe { FileWaker::from_raw(hf) }) else {
        return core::ptr::null_mut();
    };
    let Ok(file) = FileCtx::new(driver.next_id(), waker) else {
        return core::ptr::null_mut();
    };
    if driver.add_file(file.clone()).is_err() {
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
        driver.remove_file(file.id);
        file.close(driver);
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
extern "C" fn hdm_rs_irq(ctx: *mut c_void) -> bool {
    // SAFETY: `ctx` is the strong reference `ConnIrq::new` leaked for the
    // handler, reclaimed only after the IRQ is freed.
    let conn = unsafe { ArcBorrow::from_raw(ctx.cast::<Conn>()) };
    driver().is_some_and(|d| conn.process(d))
}

// --- dma-buf, timed jobs, debugfs ------------------------------------------------------

#[no_mangle]
extern "C" fn hdm_rs_gbuf_release(owner: *mut c_void) {
    // SAFETY: `owner` is the `KBox::into_raw` of `export_dmabuf`, passed
    // back once by the dma-buf's release.
    let buffer = unsafe { KBox::from_raw(owner.cast::<ImportedBuffer>()) };
    if let Some(driver) = driver() {
        buffer.release(driver);
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
        crate::stats::show(&m);
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
