// SPDX-License-Identifier: MIT
//! The hyper-dmabuf protocol core, shared by the kernel module, the
//! user-space tools, the tests and the fuzzers.
//!
//! Everything a peer domain or user space can send through is decoded
//! here, by code that has no `unsafe`, allocates nothing and never panics
//! on bad input: a malformed input is an [`Error`], never a crash.
//!
//! * [`wire`] — the messages carried on the shared rings.
//! * [`id`] — `hyper_dmabuf_id`, the handle of a shared buffer.
//! * [`pgdir`] — the grant-reference page directory of a buffer.
//! * [`ring`] — a ring compatible with Xen's `io/ring.h`, generic over
//!   [`shmem::SharedMem`], so the same code runs over granted pages, test
//!   memory and fuzzer input.
//! * [`uapi`] — the ioctl interface of `/dev/xen/hyper_dmabuf`.
//! * [`ledger`] — what one end keeps about a connection's buffers, and the
//!   decisions about them that are not a message's.
//! * [`logbudget`] — how many log lines a peer may cause.
//! * [`grantable`] — which local dma-bufs, and which of their pages, the
//!   kernel module may grant; [`mmap`] — what a user mapping of an
//!   imported buffer may be. The module's C shim reports the facts, these
//!   rules decide.
//! * [`limits`] and [`Error`].
//!
//! # Kernel build
//!
//! The kernel module compiles these files into itself with
//! `#[path = ".../common/src/lib.rs"] pub mod common;`, so modules here
//! name each other through `super::`, never `crate::`, and the crate uses
//! nothing but `core`.
//!
//! The `std` feature, for user-space hosts (the simulation, the fuzzers),
//! adds the [`ledger::Table`] of `BTreeMap`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

mod bytes;
pub mod channel;
pub mod error;
pub mod fence;
pub mod fifo;
pub mod grantable;
pub mod id;
pub mod ledger;
pub mod limits;
pub mod logbudget;
pub mod mmap;
pub mod pgdir;
pub mod ring;
pub mod shmem;
pub mod uapi;
pub mod wire;
pub mod xen;

pub use error::Error;
