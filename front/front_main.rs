// SPDX-License-Identifier: GPL-2.0

//! hyper-dmabuf for Xen: the frontend module, `hyper_dmabuf_front.ko`.
//!
//! Supported now: loading in any Xen domain (dom0 or domU, PV or PVH),
//! detecting and logging the domain's role, unloading cleanly. The module
//! alias `xen:hyper_dmabuf` makes a domU load it when the toolstack creates
//! a `hyper_dmabuf` XenBus device.
//!
//! Not yet: the XenBus frontend driver, the shared ring, the misc device
//! `/dev/xen/hyper_dmabuf`, export and import of dma-bufs (the drivers
//! issue fills them in).

use kernel::prelude::*;

mod bindings;
#[allow(unused_attributes)]
#[path = "../common/src/lib.rs"]
pub mod common;
mod ffi;
mod role;

module! {
    type: HyperDmabufFront,
    name: "hyper_dmabuf_front",
    author: "hyper-dmabuf developers",
    description: "hyper-dmabuf for Xen: frontend",
    license: "GPL",
    alias: ["xen:hyper_dmabuf"],
}

/// The loaded frontend module.
struct HyperDmabufFront {
    role: role::Role,
}

impl kernel::Module for HyperDmabufFront {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let role = role::announce()?;
        pr_info!("frontend loaded ({})\n", role);
        Ok(HyperDmabufFront { role })
    }
}

impl Drop for HyperDmabufFront {
    fn drop(&mut self) {
        pr_info!("frontend unloaded ({})\n", self.role);
    }
}
