// SPDX-License-Identifier: MIT
//! Share dma-bufs between Xen domains from Rust: a safe client of
//! `/dev/xen/hyper_dmabuf`.
//!
//! A domain *exports* a dma-buf of its own memory to a peer domain and
//! gets a [`HyperDmabufId`]; the peer learns of it from an event (or is
//! given the id some other way), *imports* it and gets a dma-buf of its
//! own over the same machine pages, without a copy. The exporter may
//! *unexport* it at any time: the peer can import it no more, but what it
//! has mapped stays mapped until it lets go; the exporter hears when
//! every grant has ended (`GrantsEnded`) and its pages are its own again.
//!
//! * [`Device`]: open the device, [`export`](Device::export) any
//!   [`AsFd`](std::os::fd::AsFd) dma-buf with [`ExportOptions`] (read-write
//!   or not, private data), [`import`](Device::import) an id as an
//!   [`Imported`] dma-buf with its size, [`unexport`](Device::unexport),
//!   [`query`](Device::query) or [`info`](Device::info),
//!   [`list`](Device::list).
//! * [`events`]: an iterator that waits ([`Device::events`]), a wait with
//!   a timeout, and a non-blocking read for `poll`, `epoll` or an async
//!   runtime (the device is `AsFd`).
//! * [`Mapping`] and [`CpuAccess`]: the pages of a dma-buf seen by the
//!   CPU, without ever forming a reference to memory the other domain may
//!   be writing.
//! * [`Udmabuf`]: a dma-buf of ordinary memory (a memfd) to export, for
//!   an application that shares what it draws itself; [`DmaBuf`]: one
//!   that a driver made (a GPU's PRIME export, a camera's buffer), checked
//!   to be a dma-buf, with its size and a mapping.
//! * [`Error`]: every failure names what was being done, carries the
//!   errno and, for the errnos the driver documents, a hint for the user.
//!
//! The value types ([`HyperDmabufId`], [`DomId`], [`PrivData`],
//! [`Event`], ...) are those of `hyper-dmabuf-common`, the crate the
//! kernel module compiles too, re-exported here so that an application
//! depends on this crate alone; [`uapi`] is the device's records, for
//! what the typed API does not cover.
//!
//! # Exporting
//!
//! ```no_run
//! use std::time::Duration;
//! use hyper_dmabuf_client::{Device, DomId, EventType, ExportOptions, PrivData, Udmabuf};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::open()?;
//! // Any dma-buf of this domain's RAM will do: a GPU buffer, a camera
//! // frame; here 4 MiB of memory filled with 0x5a.
//! let frame = Udmabuf::with_contents(4 << 20, |_, piece| piece.fill(0x5a))?;
//! let options = ExportOptions::new().private_data(PrivData::new(b"1024x1024 XR24")?);
//! let id = device.export(&frame, DomId::new(0)?, &options)?;
//! println!("exported {id}");
//! // Wait until the importer is done with it, then revoke it.
//! for event in device.events() {
//!     let event = event?;
//!     if event.kind == EventType::Released && event.hid == Some(id) {
//!         break;
//!     }
//! }
//! device.unexport(&id, Duration::ZERO)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Importing
//!
//! ```no_run
//! use hyper_dmabuf_client::{CpuAccess, Device, EventType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::open()?;
//! for event in device.events() {
//!     let event = event?;
//!     let (EventType::NewExport, Some(id)) = (event.kind, event.hid) else {
//!         continue;
//!     };
//!     println!("domain {} offers {id}: {:?}", event.peer, event.priv_data);
//!     let imported = device.import(&id, false)?;
//!     // Hand `imported.fd` to a GPU or display API, or read it here.
//!     let mapping = imported.map()?;
//!     let access = CpuAccess::begin(&imported, false)?;
//!     let mut first = [0u8; 16];
//!     mapping.read_at(0, &mut first);
//!     access.end()?;
//!     println!("{} bytes, starting {first:02x?}", imported.size);
//!     // Dropping the mapping and the fd releases the buffer.
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Safety and dependencies
//!
//! The system calls go through [rustix](https://docs.rs/rustix), which
//! makes `poll`, `read`, `memfd_create`, seals and `FIONBIO` safe and
//! gives the ioctl numbers (`_IOW` and the like) as `const fn`s. An ioctl
//! itself cannot be made safe in general (rustix's `ioctl` is `unsafe`,
//! and its `Ioctl` trait is an `unsafe` promise about the command), nor
//! can `mmap`: the crate's `unsafe` code is in one private module, each
//! block with the reason it is sound, and each ioctl is wrapped in a
//! function that names its command and builds any pointer its record
//! carries itself. The records are encoded by `hyper-dmabuf-common`, not
//! by `#[repr(C)]` structs, so no layout is guessed.
//!
//! # Features
//!
//! `testing`: the test pattern, imports verified against it, and the
//! primitives the project's test agents use ([`testing`]). Applications
//! do not need it.

mod device;
mod dmabuf;
mod error;
pub mod events;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;
mod udmabuf;

pub use device::{BufferInfo, Device, ExportOptions, Imported};
pub use dmabuf::{CpuAccess, DmaBuf};
pub use error::{Error, Result};
pub use events::Events;
pub use sys::Mapping;
pub use udmabuf::{Udmabuf, UDMABUF_PATH};

/// The error of the value types: a [`PrivData`] that is too long, a
/// [`DomId`] out of range, an id that does not parse, a record that does
/// not decode.
pub use hyper_dmabuf_common::error::Error as ValueError;
pub use hyper_dmabuf_common::id::HyperDmabufId;
pub use hyper_dmabuf_common::uapi;
pub use hyper_dmabuf_common::uapi::{
    Event, EventType, ListEntry, QueryItem, DEVICE_PATH, MAX_UNEXPORT_DELAY_MS,
};
pub use hyper_dmabuf_common::wire::{ExportFlags, PrivData};
pub use hyper_dmabuf_common::xen::DomId;
