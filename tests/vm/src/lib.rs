// SPDX-License-Identifier: MIT
//! The VM test runner of hyper-dmabuf as a library: scenario files
//! ([`scenario`]), the step state machine that judges a run from its
//! console lines ([`monitor`]), and QEMU ([`qemu`]). The binary
//! `hdmabuf-vmtest` (`src/main.rs`) drives them.

pub mod monitor;
pub mod qemu;
pub mod scenario;
