// SPDX-License-Identifier: MIT
//! Two-domain simulation of hyper-dmabuf: two simulated domains in one
//! process run the real protocol code of `hyper-dmabuf-common`
//! ([`Channel`](hyper_dmabuf_common::channel::Channel), rings, page
//! directory) and the real XenBus logic of `hyper-dmabuf-xenbus-proto`,
//! over a simulated hypervisor with grant tables, foreign mappings, event
//! channels and per-domain counters.
//!
//! * [`hv`] — the hypervisor: pages, grants (with end-of-access refused
//!   while mapped and deferred as Linux does since XSA-396), batched maps
//!   with per-operation status, event channels, domain destruction.
//! * [`mem`] — pages as atomic words and windows over them, read through
//!   the same [`SharedMem`](hyper_dmabuf_common::shmem::SharedMem) trait
//!   the kernel uses.
//! * [`driver`] — one domain's driver: export, import, release, unexport,
//!   update, teardown, implementing the ledger's
//!   [`Sink`](hyper_dmabuf_common::ledger::Sink).
//! * [`world`] — two domains, the xenstore, the XenBus handshake, the
//!   event pump, kills and restarts, and the zero-counter checks.
//!
//! Nothing here is `unsafe` and nothing sleeps: every test is
//! single-threaded and deterministic from its seed.
#![forbid(unsafe_code)]

pub mod driver;
pub mod hv;
pub mod mem;
pub mod rng;
pub mod table;
pub mod world;

pub use driver::{BufId, Domain, DriverError};
pub use hv::{Counters, Hypervisor};
pub use world::{RawPeer, Side, World, WorldConfig};
