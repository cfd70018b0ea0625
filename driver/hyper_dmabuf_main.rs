// SPDX-License-Identifier: GPL-2.0

//! hyper-dmabuf for Xen: `hyper_dmabuf.ko`, one module for every domain.
//!
//! It registers a XenBus frontend driver (`front/`) and a backend driver
//! (`back/`) for device type `hyper_dmabuf`, and one control device,
//! `/dev/xen/hyper_dmabuf`, whatever role the domain plays: a domain can
//! export to and import from several peers at once, each over one device.
//!
//! Layout of the crate:
//!
//! * `registry` — the driver-wide state: connections, open files, grants
//!   still draining, and the timed jobs.
//! * `conn` — one connection to a peer: its rings, its event channel and
//!   the protocol of `common::channel` over them, with the buffers shared
//!   over it.
//! * `export`, `import` — the two halves of sharing a buffer.
//! * `device` — the ioctls and event queues of the control device.
//! * `xenstore`, `stats`, `role` — support.
//! * `ffi`, `entry` — the only `unsafe` code: calls into C and from C.
//!
//! The protocol itself (`common/`, `xenbus-proto/`) is compiled in from
//! the crates the tools and tests use.

use kernel::prelude::*;

mod bindings;
#[allow(unused_attributes)]
#[path = "../common/src/lib.rs"]
pub mod common;
#[allow(unused_attributes)]
#[path = "../xenbus-proto/src/lib.rs"]
pub mod xenbus_proto;

#[path = "../back/backend.rs"]
mod backend;
mod conn;
mod device;
mod entry;
mod export;
mod ffi;
#[path = "../front/frontend.rs"]
mod frontend;
mod import;
mod registry;
mod role;
mod stats;
mod xenstore;

module! {
    type: HyperDmabuf,
    name: "hyper_dmabuf",
    author: "hyper-dmabuf developers",
    description: "hyper-dmabuf for Xen: share dma-bufs between domains",
    license: "GPL",
    alias: ["xen:hyper_dmabuf", "xen-backend:hyper_dmabuf"],
}

/// The loaded module.
struct HyperDmabuf {
    role: role::Role,
}

impl kernel::Module for HyperDmabuf {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let role = role::announce()?;
        registry::start()?;
        if let Err(e) = ffi::register_all() {
            registry::stop();
            return Err(e);
        }
        pr_info!("loaded ({}), /dev/xen/hyper_dmabuf ready\n", role);
        Ok(HyperDmabuf { role })
    }
}

impl Drop for HyperDmabuf {
    fn drop(&mut self) {
        // Unbinding the drivers removes every device, which tears down
        // every connection; then nothing can queue timed jobs any more.
        ffi::unregister_all();
        registry::stop();
        pr_info!("unloaded ({})\n", self.role);
    }
}
