//! The hyper-dmabuf protocol core, shared by the kernel modules, the
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
//! * [`limits`] and [`Error`].
//!
//! # Kernel build
//!
//! The kernel modules compile these files into themselves with
//! `#[path = ".../common/src/lib.rs"] pub mod common;`, so modules here
//! name each other through `super::`, never `crate::`, and the crate uses
//! nothing but `core`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod bytes;
pub mod channel;
pub mod error;
pub mod id;
pub mod limits;
pub mod pgdir;
pub mod ring;
pub mod shmem;
pub mod uapi;
pub mod wire;
pub mod xen;

pub use error::Error;
