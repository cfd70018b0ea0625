// SPDX-License-Identifier: GPL-2.0

//! Which kind of Xen domain this kernel runs in, and the load-time banner.

use core::fmt;
use kernel::c_str;
use kernel::prelude::*;

use crate::ffi;
use crate::ffi::dmabuf::PageTables;

/// How the domain is virtualised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Virt {
    /// Paravirtualised (PV).
    Pv,
    /// PVH: an HVM container without emulated devices.
    Pvh,
    /// Fully virtualised HVM.
    Hvm,
}

/// The role of this domain: initial domain or guest, and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Role {
    /// True in dom0 (`xen_initial_domain()`).
    pub(crate) initial: bool,
    /// How the domain is virtualised.
    pub(crate) virt: Virt,
}

impl Role {
    /// Detects the role of the running kernel.
    ///
    /// # Errors
    ///
    /// `ENODEV` when the kernel does not run on Xen.
    pub(crate) fn detect() -> Result<Self> {
        if !ffi::xen_domain() {
            return Err(ENODEV);
        }
        let virt = if ffi::xen_pv_domain() {
            Virt::Pv
        } else if ffi::xen_hvm_domain() && ffi::xen_pvh_domain() {
            Virt::Pvh
        } else if ffi::xen_hvm_domain() {
            Virt::Hvm
        } else {
            return Err(ENODEV);
        };
        Ok(Role {
            initial: ffi::xen_initial_domain(),
            virt,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dom = if self.initial { "dom0" } else { "domU" };
        let virt = match self.virt {
            Virt::Pv => "PV",
            Virt::Pvh => "PVH",
            Virt::Hvm => "HVM",
        };
        write!(f, "{dom} {virt}")
    }
}

/// How this domain puts a peer's pages into page tables: the pages
/// themselves where Xen translates our physical addresses (PVH, HVM);
/// in PV, where a PTE may not point at another domain's frame unless Xen
/// writes it, each grant mapped again into its PTE.
pub(crate) fn page_tables() -> PageTables {
    if ffi::xen_auto_translated() {
        PageTables::Pages
    } else {
        PageTables::GrantPtes
    }
}

/// Detects and logs the role, and honours `inject_warn`.
///
/// # Errors
///
/// `ENODEV` when the kernel does not run on Xen.
pub(crate) fn announce() -> Result<Role> {
    let role = Role::detect()?;
    pr_info!("role: {}\n", role);
    if ffi::params::inject_warn() {
        ffi::warn(c_str!("hyper_dmabuf: injected warning (inject_warn=1)"));
    }
    Ok(role)
}
