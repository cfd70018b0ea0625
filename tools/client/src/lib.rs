// SPDX-License-Identifier: MIT
//! The user-space side of `/dev/xen/hyper_dmabuf`, for every tool of the
//! project: the thin FFI layer ([`sys`], where every `unsafe` block is),
//! the device and its ioctls ([`device`]), local dma-bufs to export
//! ([`buffer`]), imported buffers mapped and checked ([`imported`]) and
//! the test pattern they are checked against ([`pattern`]).
//!
//! The records themselves are `hyper_dmabuf_common::uapi`'s, the codecs the
//! kernel module uses too; this crate only carries them across the system
//! call boundary.

pub mod buffer;
pub mod device;
pub mod imported;
pub mod pattern;
pub mod sys;
