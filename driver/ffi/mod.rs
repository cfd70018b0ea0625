// SPDX-License-Identifier: GPL-2.0

//! The FFI layer: every call into C is here, behind safe types whose
//! invariants make the calls sound, one file per kernel subsystem. With
//! `entry.rs` (the calls from C into Rust) this is the only place with
//! `unsafe`. This file holds what belongs to no subsystem: the platform,
//! module parameters, time, randomness, the tick and the module itself.

pub(crate) mod device;
pub(crate) mod dmabuf;
pub(crate) mod fence;
pub(crate) mod grant;
pub(crate) mod xenbus;

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::str::CStr;

use crate::bindings;

// The protocol core's page geometry must be the kernel's.
const _: () = assert!(super::common::limits::XEN_PAGE_SHIFT == bindings::XEN_PAGE_SHIFT);
const _: () = assert!(super::common::limits::XEN_PAGE_SIZE == 1usize << bindings::XEN_PAGE_SHIFT);
// What the shim says of a page to grant is what common::grantable reads.
const _: () =
    assert!(super::common::grantable::PAGE_RAM as u32 == bindings::hdm_page_fact_HDM_PAGE_RAM);
const _: () = assert!(
    super::common::grantable::PAGE_BOUNCE as u32 == bindings::hdm_page_fact_HDM_PAGE_BOUNCE
);
const _: () = assert!(
    super::common::grantable::PAGE_FOREIGN as u32 == bindings::hdm_page_fact_HDM_PAGE_FOREIGN
);
// The administrator's capability is the kernel's CAP_SYS_ADMIN.
const _: () = assert!(super::common::uapi::ADMIN_CAPABILITY == bindings::CAP_SYS_ADMIN);
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

/// Whether this domain's physical addresses are translated by Xen
/// (`XENFEAT_auto_translated_physmap`: PVH and HVM, not PV).
pub(crate) fn xen_auto_translated() -> bool {
    // SAFETY: reads the boot-time Xen feature flags; no precondition.
    unsafe { bindings::hdm_xen_auto_translated() }
}

/// Module parameters.
pub(crate) mod params {
    use crate::bindings;

    /// Whether `inject_warn` asks for a test WARNING.
    pub(crate) fn inject_warn() -> bool {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_inject_warn_requested() }
    }
    /// `max_buffer_mib`, as root set it
    /// (`common::limits::max_buffer_bytes_from_mib` reads it).
    pub(crate) fn max_buffer_mib() -> u64 {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_param_max_buffer_mib() }
    }
    /// `ring_page_order`.
    pub(crate) fn ring_page_order() -> u32 {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_param_ring_page_order() }
    }
    /// `max_imports`, as root set it
    /// (`common::limits::max_imports_from_param` reads it).
    pub(crate) fn max_imports() -> u32 {
        // SAFETY: reads a read-only (0444) module parameter.
        unsafe { bindings::hdm_param_max_imports() }
    }
    /// `fence_timeout_ms`, as root set it
    /// (`common::fence::fence_timeout_from_param` reads it).
    pub(crate) fn fence_timeout_ms() -> u64 {
        // SAFETY: reads a read-only (0444) module parameter.
        u64::from(unsafe { bindings::hdm_param_fence_timeout_ms() })
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

/// A pin on this module: while one exists, `rmmod` is refused ("in use").
///
/// Held by work that must finish before the module's code and data may go
/// (an imported buffer whose pages a pipe still holds). Dropped only from
/// the tick's work item, which module exit cancels synchronously, or from
/// a system call on one of the module's files: so no code of the module
/// still runs when the last pin goes.
pub(crate) struct ModulePin(());

impl ModulePin {
    /// Pins the module (which is live: we are running its code).
    pub(crate) fn new() -> Self {
        // SAFETY: takes a reference on THIS_MODULE, which is live while
        // its code runs.
        unsafe { bindings::hdm_module_get() };
        ModulePin(())
    }
}

impl Drop for ModulePin {
    fn drop(&mut self) {
        // SAFETY: drops the reference taken in `new`, once.
        unsafe { bindings::hdm_module_put() };
    }
}

/// Registers the misc device, debugfs and both xenbus drivers, ready to
/// map imported buffers into page tables as `tables` says.
///
/// # Errors
///
/// What the first registration that failed returned; nothing stays
/// registered then.
pub(crate) fn register_all(tables: dmabuf::PageTables) -> Result {
    // SAFETY: called once from module init; the tables are C statics.
    to_result(unsafe { bindings::hdm_register_all(tables.raw()) })
}

/// Undoes [`register_all`]; every bound device is removed first.
pub(crate) fn unregister_all() {
    // SAFETY: called once from module exit after a successful register.
    unsafe { bindings::hdm_unregister_all() }
}
