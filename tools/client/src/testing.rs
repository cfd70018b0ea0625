// SPDX-License-Identifier: MIT
//! What the project's own tools and tests use, not applications (feature
//! `testing`): the test pattern ([`pattern`]), imports verified against
//! it ([`Verified`]), a retry loop for a full ring ([`retry_full`]), and
//! the primitives the test agents build their other devices on (Xen's
//! grant and event-channel devices): [`ioctl_in_place`] and
//! [`wait_readable`].

pub mod pattern;
mod verified;

pub use crate::events::wait_readable;
pub use crate::sys::ioctl_in_place;
pub use verified::{retry_full, ImportError, Verified};
