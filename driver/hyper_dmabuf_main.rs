// SPDX-License-Identifier: GPL-2.0

//! hyper-dmabuf for Xen: `hyper_dmabuf.ko`, one module for every domain.
//!
//! It registers a XenBus frontend driver (`front/`) and a backend driver
//! (`back/`) for device type `hyper_dmabuf`, and one control device,
//! `/dev/xen/hyper_dmabuf`, whatever role the domain plays: a domain can
//! export to and import from several peers at once, each over one device.
//!
//! # Layers
//!
//! Each module uses only those listed before it; none reaches back up.
//!
//! 1. `ffi` (`ffi/`, one file per kernel subsystem) — every call into C,
//!    behind safe types; `stats`, `tree`, `peerlog`, `role`, `xenstore`
//!    — counters, the ledger's tables, log budgets, the domain's kind,
//!    xenstore as `xenbus_proto`'s store.
//! 2. `files` — the open files of the control device and their event
//!    queues; `grants` — an exported buffer's grants, and those draining
//!    after their export ended.
//! 3. `context` — what every connection works in: ids, files, draining
//!    grants, log budgets.
//! 4. `conn` — one connection to a peer: its rings and event channel,
//!    `common::channel` over them, and `common::ledger`'s bookkeeping of
//!    its buffers.
//! 5. `mapping` — an imported buffer's mapped pages, the buffer its
//!    dma-buf stands on, and the releases that wait for a held page.
//! 6. `registry` — the driver: the context, every connection, the waiting
//!    unmaps, the timed jobs.
//! 7. `export`, `import` — the two ioctls that share a buffer; `device`
//!    — the ioctl dispatch, QUERY and LIST; `frontend` (`front/`),
//!    `backend` (`back/`) — the two XenBus roles.
//! 8. `entry` — the calls from C into Rust, and the driver state they
//!    find.
//!
//! Every decision about a buffer is `common::ledger`'s; the protocol
//! itself (`common/`, `xenbus-proto/`) is compiled in from the crates the
//! tools and tests use. `unsafe` is in `ffi/` and `entry.rs`, plus one
//! block in `conn.rs` whose proof is that connection's lock (a live
//! import's dma-buf identity).
//!
//! # Lock order
//!
//! Every lock of the driver, each named for lockdep as below. A lock may
//! be taken while holding only locks of a smaller number; none is held
//! across a sleep on the peer (a wait for an answer drops `Conn::inner`
//! through its condition variable).
//!
//! 1. `FrontDevice::state`, `BackDevice::state` — a device's XenBus
//!    machine, held while its actions run (they attach and detach the
//!    connection).
//! 2. `BackDevice::online_watch` — alone.
//! 3. An imported dma-buf's reservation object (`dma_resv`), held by an
//!    import while the import turns live and the peer's pending fences
//!    are added to it (`Conn::import_live`). Elsewhere it is only tried
//!    (`dma_resv_trylock`, `Conn::deliver`), with nothing else held: its
//!    holder may be waiting for one of our fences. (An exported dma-buf's
//!    is taken by the exporter's own callbacks when its grants end and it
//!    is unpinned, after a connection's lock is dropped.)
//! 4. `Conn::inner` — a connection's rings, exports and imports
//!    (`Conn::answered` waits on it). Nothing allocated under it waits for
//!    memory (`conn::UNDER_LOCK`): the peer's fences are signalled by
//!    paths that take it.
//! 5. `Conn::deliveries` — events that wait for fences to reach a live
//!    dma-buf; only its queue is changed under it.
//! 6. `Files::table`, then 7. `FileCtx::queue` — posting events.
//! 8. `Driver::conns`, `Drain::table`, `Unmaps::table`,
//!    `Announced::table` — leaves: nothing is taken under them (a
//!    connection is looked up under `conns`, then used after it is
//!    dropped).
//! 9. `PeerLogs::budgets`, `PeerLogs::local` — leaves, taken to print a
//!    line a peer caused, or one no peer did (a user mapping's callbacks
//!    report them without holding `hdm_vma.lock`).
//!
//! The C shim's `hdm_state_lock` serialises every change of a device's
//! XenBus state (from its callbacks, or from a connection's event work
//! when the peer broke a ring); it is a leaf, taken under any of these.
//!
//! The C shim's `hdm_vma.lock` (a PV user mapping's grant handles) is taken
//! under the mm's `mmap_lock` and by the MMU notifier, never with any of
//! these; nothing that allocates memory runs under it.
//!
//! Rules that keep it so: allocate before locking (reservations of tree
//! nodes, the records a release or a retirement will need), collect side
//! effects under `Conn::inner` and carry them out after (`conn::Effects`).
//!
//! Fences: a pass over a connection's rings and its timed work run in
//! lockdep's fence-signalling section (`ffi::fence::SignallingSection`)
//! from before `Conn::inner` to the last peer fence they signal; so
//! lockdep checks that nothing on those paths waits for memory or for a
//! lock held while memory is allocated. Adding a fence to a dma-buf (its
//! reservation object's lock, which is held around allocations) is done
//! after the section, and only tried from a connection's own paths.
//! Those works run on the driver's own `WQ_MEM_RECLAIM` workqueue; a
//! delivery's queue and the tick's snapshot of connections never wait for
//! reclaim. Not yet so (docs/driver.md): after the section they still take
//! locks other paths hold while allocating (`Driver::conns`,
//! `Files::table`, `Drain::table`), the tick's drain and unmap
//! housekeeping allocate, and retiring an export unpins its dma-buf (a
//! blocking reservation lock); under memory pressure, with reclaim waiting
//! for a peer's fence, these could stall the works that would signal or
//! time it out.

use kernel::prelude::*;

mod bindings;
#[allow(unused_attributes)]
#[path = "../common/src/lib.rs"]
pub mod common;
#[allow(unused_attributes)]
#[path = "../xenbus-proto/src/lib.rs"]
pub mod xenbus_proto;

mod announced;
#[path = "../back/backend.rs"]
mod backend;
mod conn;
mod context;
mod device;
mod entry;
mod export;
mod ffi;
mod files;
#[path = "../front/frontend.rs"]
mod frontend;
mod grants;
mod import;
mod mapping;
mod peerlog;
mod registry;
mod role;
mod stats;
mod tree;
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
        entry::start()?;
        if let Err(e) = ffi::register_all(role::page_tables()) {
            entry::stop();
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
        entry::stop();
        pr_info!("unloaded ({})\n", self.role);
    }
}
