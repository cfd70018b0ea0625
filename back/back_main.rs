// SPDX-License-Identifier: GPL-2.0

//! hyper-dmabuf for Xen: the backend module, `hyper_dmabuf_back.ko`.
//!
//! Supported now: loading in any Xen domain (normally dom0 or a driver
//! domain), detecting and logging the domain's role, unloading cleanly.
//!
//! Not yet: the XenBus backend driver, the shared ring, the misc device
//! `/dev/xen/hyper_dmabuf`, export and import of dma-bufs (the drivers
//! issue fills them in).
//!
//! The FFI layer, the role detection and the C shim are shared with the
//! frontend and compiled in from `front/` by path.

use kernel::prelude::*;

#[path = "../front/bindings.rs"]
mod bindings;
#[allow(unused_attributes)]
#[path = "../common/src/lib.rs"]
pub mod common;
#[path = "../front/ffi.rs"]
mod ffi;
#[path = "../front/role.rs"]
mod role;

module! {
    type: HyperDmabufBack,
    name: "hyper_dmabuf_back",
    author: "hyper-dmabuf developers",
    description: "hyper-dmabuf for Xen: backend",
    license: "GPL",
}

/// The loaded backend module.
struct HyperDmabufBack {
    role: role::Role,
}

impl kernel::Module for HyperDmabufBack {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let role = role::announce()?;
        pr_info!("backend loaded ({})\n", role);
        Ok(HyperDmabufBack { role })
    }
}

impl Drop for HyperDmabufBack {
    fn drop(&mut self) {
        pr_info!("backend unloaded ({})\n", self.role);
    }
}
