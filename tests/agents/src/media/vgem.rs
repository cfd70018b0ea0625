// SPDX-License-Identifier: MIT
//! vgem, the kernel's virtual GEM driver: buffers of shmem pages, as a
//! GPU driver without dedicated memory makes them, exported with PRIME.

use drm::buffer::{Buffer, DrmFourcc};
use drm::control::Device as ControlDevice;
use hdmabuf::Failure;
use hyper_dmabuf_client::DmaBuf;

use super::card::Card;

/// Pixels a line of the buffers made here (32 bits each): a 4 KiB line,
/// so that any number of pages is a whole number of lines.
const LINE_PIXELS: u32 = 1024;
const LINE_BYTES: u64 = LINE_PIXELS as u64 * 4;

/// An open vgem device.
pub(crate) struct Vgem(Card);

impl Vgem {
    /// Opens the DRM device whose driver is vgem (`modprobe vgem` first).
    pub(crate) fn open() -> Result<Self, Failure> {
        Card::open("vgem").map(Vgem)
    }

    /// A new buffer of at least `size` bytes (whole 4 KiB lines), as a
    /// dma-buf open for reading and writing. The GEM handle goes when
    /// this returns: the dma-buf holds the object.
    pub(crate) fn buffer(&self, size: u64) -> Result<DmaBuf, Failure> {
        let lines = u32::try_from(size.div_ceil(LINE_BYTES))
            .map_err(|_| Failure::Error(format!("{size} bytes: too large for vgem")))?;
        let dumb = self
            .0
            .create_dumb_buffer((LINE_PIXELS, lines), DrmFourcc::Xrgb8888, 32)
            .map_err(|e| Failure::Error(format!("vgem: creating a buffer of {size} bytes: {e}")))?;
        let exported = self
            .0
            .buffer_to_prime_fd(dumb.handle(), drm::CLOEXEC | drm::RDWR);
        // The handle is ours either way; the dma-buf, if made, keeps the
        // object alive.
        let destroyed = self.0.destroy_dumb_buffer(dumb);
        let fd = exported.map_err(|e| Failure::Error(format!("vgem: PRIME export: {e}")))?;
        destroyed.map_err(|e| Failure::Error(format!("vgem: closing the GEM handle: {e}")))?;
        Ok(DmaBuf::from_fd(fd)?)
    }
}
