// SPDX-License-Identifier: MIT
//! The XenBus side of hyper-dmabuf: the state machines of both ends and the
//! xenstore schema of the `hyper_dmabuf` device, with strict parsing of
//! every node value.
//!
//! * [`state`] — [`XenbusState`], Xen's `enum xenbus_state`.
//! * [`parse`] — strict parsers and canonical formatters of node values.
//! * [`store`] — the small [`Store`] trait the logic runs over, and
//!   [`NodePath`], paths built in fixed buffers.
//! * [`schema`] — every node (name, values, meaning), and the functions
//!   that publish and read them.
//! * [`machine`] — [`FrontendMachine`] and [`BackendMachine`]: pure
//!   transition logic that answers each event with a list of [`Action`]s.
//! * [`Error`] and [`ValueError`].
//!
//! Nothing here allocates, panics on input, or uses `unsafe`. The
//! in-memory store for host tests is the separate crate
//! `hyper-dmabuf-xenbus-mem-store`.
//!
//! # Kernel build
//!
//! The kernel module compiles these files into itself with
//! `#[path = ".../xenbus-proto/src/lib.rs"] pub mod xenbus_proto;`, so
//! modules here name each other through `super::`, never `crate::`, the
//! crate uses nothing but `core`, and the only `cfg` is `cfg(test)`.
#![no_std]
#![forbid(unsafe_code)]

pub mod error;
pub mod machine;
pub mod parse;
pub mod schema;
pub mod state;
pub mod store;

pub use error::{Error, ValueError};
pub use machine::{Action, Actions, BackendMachine, FrontendMachine};
pub use state::XenbusState;
pub use store::{NodePath, Store, Txn};
