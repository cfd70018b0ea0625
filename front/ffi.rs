// SPDX-License-Identifier: GPL-2.0

//! The FFI layer of the hyper-dmabuf modules: every call into C and every
//! `unsafe` block of the module is here, behind safe functions.
//!
//! Shared by `hyper_dmabuf_front` and `hyper_dmabuf_back` (the latter
//! mounts this file by path); each module generates its own
//! `bindings` from the same header.

use crate::bindings;
use kernel::str::CStr;

// The protocol core's page geometry must be the kernel's.
const _: () = assert!(super::common::limits::XEN_PAGE_SHIFT == bindings::XEN_PAGE_SHIFT);
const _: () =
    assert!(super::common::limits::XEN_PAGE_SIZE == 1usize << bindings::XEN_PAGE_SHIFT);
// A multi-page ring must fit what xenbus_setup_ring() accepts.
const _: () =
    assert!(super::common::limits::MAX_RING_PAGE_ORDER <= bindings::XENBUS_MAX_RING_GRANT_ORDER);

/// XenBus state `Connected`, as `enum xenbus_state` numbers it.
pub(crate) const XENBUS_STATE_CONNECTED: u32 = bindings::xenbus_state::XenbusStateConnected;

/// Whether this kernel runs in a Xen domain (`xen_domain()`).
pub(crate) fn xen_domain() -> bool {
    // SAFETY: the shim only reads `xen_domain_type`, written once during
    // early boot before any module can load; no precondition.
    unsafe { bindings::hdm_xen_domain() }
}

/// Whether this is the initial domain, dom0 (`xen_initial_domain()`).
pub(crate) fn xen_initial_domain() -> bool {
    // SAFETY: reads boot-time constants only (`xen_domain_type`,
    // `xen_start_flags`); no precondition.
    unsafe { bindings::hdm_xen_initial_domain() }
}

/// Whether this is a PV domain (`xen_pv_domain()`).
pub(crate) fn xen_pv_domain() -> bool {
    // SAFETY: reads the boot-time `xen_domain_type` only; no precondition.
    unsafe { bindings::hdm_xen_pv_domain() }
}

/// Whether this is an HVM-container domain, HVM or PVH (`xen_hvm_domain()`).
pub(crate) fn xen_hvm_domain() -> bool {
    // SAFETY: reads the boot-time `xen_domain_type` only; no precondition.
    unsafe { bindings::hdm_xen_hvm_domain() }
}

/// Whether this is a PVH domain (`xen_pvh_domain()`).
pub(crate) fn xen_pvh_domain() -> bool {
    // SAFETY: reads the boot-time `xen_pvh` flag only; no precondition.
    unsafe { bindings::hdm_xen_pvh_domain() }
}

/// The name XenBus gives a state number (`xenbus_strstate()`).
pub(crate) fn xenbus_strstate(state: u32) -> &'static CStr {
    // SAFETY: `xenbus_strstate()` accepts any value and returns either an
    // entry of its static name table or the static string "INVALID": a
    // NUL-terminated string that lives as long as the kernel.
    unsafe { CStr::from_char_ptr(bindings::xenbus_strstate(state)) }
}

/// Whether the `inject_warn` module parameter asks for a test WARNING.
pub(crate) fn inject_warn_requested() -> bool {
    // SAFETY: reads a `bool` module parameter with permissions 0444, which
    // nothing writes after load; no precondition.
    unsafe { bindings::hdm_inject_warn_requested() }
}

/// Prints a kernel `WARNING:` with a backtrace (`WARN(1, ...)`).
pub(crate) fn warn(msg: &CStr) {
    // SAFETY: `msg` is a valid NUL-terminated string for the duration of
    // the call; the shim passes it to printk through "%s" only.
    unsafe { bindings::hdm_warn(msg.as_char_ptr()) }
}
