// SPDX-License-Identifier: MIT
//! vgem, the kernel's virtual GEM driver: buffers of shmem pages, as a
//! GPU driver without dedicated memory makes them, exported with PRIME.

use std::os::fd::AsFd;

use drm::buffer::{Buffer, DrmFourcc};
use drm::control::dumbbuffer::DumbBuffer;
use drm::control::Device as ControlDevice;
use hdmabuf::Failure;
use hyper_dmabuf_client::DmaBuf;
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

use super::card::Card;

/// `struct drm_vgem_fence_attach` (`uapi/drm/vgem_drm.h`).
#[repr(C)]
#[derive(Default)]
struct FenceAttach {
    handle: u32,
    flags: u32,
    out_fence: u32,
    pad: u32,
}

/// `struct drm_vgem_fence_signal`.
#[repr(C)]
struct FenceSignal {
    fence: u32,
    flags: u32,
}

/// `VGEM_FENCE_WRITE`: the fence is the buffer's writer's (readers wait).
const FENCE_WRITE: u32 = 0x1;
// `DRM_IOCTL_VGEM_FENCE_ATTACH`, `_SIGNAL`: driver commands 1 and 2, from
// `DRM_COMMAND_BASE` (0x40), on the DRM ioctl group 'd'.
const FENCE_ATTACH: Opcode = opcode::read_write::<FenceAttach>(b'd', 0x41);
const FENCE_SIGNAL: Opcode = opcode::write::<FenceSignal>(b'd', 0x42);

/// Pixels a line of the buffers made here (32 bits each): a 4 KiB line,
/// so that any number of pages is a whole number of lines.
const LINE_PIXELS: u32 = 1024;
const LINE_BYTES: u64 = LINE_PIXELS as u64 * 4;

/// An open vgem device.
pub(crate) struct Vgem(Card);

/// A vgem buffer kept open (its GEM handle), to fence.
pub(crate) struct Fenceable {
    dumb: Option<DumbBuffer>,
    /// Its dma-buf, open for reading and writing.
    pub(crate) dmabuf: DmaBuf,
}

/// A fence vgem attached to a buffer: it signals when told, or by itself
/// after ten seconds (vgem's own timeout).
pub(crate) struct VgemFence(u32);

impl Vgem {
    /// Opens the DRM device whose driver is vgem (`modprobe vgem` first).
    pub(crate) fn open() -> Result<Self, Failure> {
        Card::open("vgem").map(Vgem)
    }

    /// A new buffer of at least `size` bytes (whole 4 KiB lines), as a
    /// dma-buf open for reading and writing. The GEM handle goes when
    /// this returns: the dma-buf holds the object.
    pub(crate) fn buffer(&self, size: u64) -> Result<DmaBuf, Failure> {
        let mut buffer = self.fenceable(size)?;
        self.close(&mut buffer)?;
        Ok(buffer.dmabuf)
    }

    /// As [`Vgem::buffer`], keeping the GEM handle to fence the buffer.
    pub(crate) fn fenceable(&self, size: u64) -> Result<Fenceable, Failure> {
        let lines = u32::try_from(size.div_ceil(LINE_BYTES))
            .map_err(|_| Failure::Error(format!("{size} bytes: too large for vgem")))?;
        let dumb = self
            .0
            .create_dumb_buffer((LINE_PIXELS, lines), DrmFourcc::Xrgb8888, 32)
            .map_err(|e| Failure::Error(format!("vgem: creating a buffer of {size} bytes: {e}")))?;
        let exported = self
            .0
            .buffer_to_prime_fd(dumb.handle(), drm::CLOEXEC | drm::RDWR)
            .map_err(|e| Failure::Error(format!("vgem: PRIME export: {e}")))
            .and_then(|fd| Ok(DmaBuf::from_fd(fd)?));
        match exported {
            Ok(dmabuf) => Ok(Fenceable {
                dumb: Some(dumb),
                dmabuf,
            }),
            Err(e) => {
                // The handle is ours to close either way.
                let _ = self.0.destroy_dumb_buffer(dumb);
                Err(e)
            }
        }
    }

    /// Attaches a write fence to `buffer`, unsignalled: its readers (the
    /// importers' too, across domains) wait for it.
    pub(crate) fn attach_write_fence(&self, buffer: &Fenceable) -> Result<VgemFence, Failure> {
        let dumb = buffer.dumb.as_ref().ok_or("the buffer is closed")?;
        let mut record = FenceAttach {
            handle: dumb.handle().into(),
            flags: FENCE_WRITE,
            ..FenceAttach::default()
        };
        // SAFETY: the command's record is `FenceAttach`, numbers only.
        unsafe { ioctl(self.0.as_fd(), Updater::<FENCE_ATTACH, _>::new(&mut record)) }
            .map_err(|e| Failure::Error(format!("VGEM_FENCE_ATTACH: {e}")))?;
        Ok(VgemFence(record.out_fence))
    }

    /// Signals `fence`.
    pub(crate) fn signal(&self, fence: VgemFence) -> Result<(), Failure> {
        let record = FenceSignal {
            fence: fence.0,
            flags: 0,
        };
        // SAFETY: the command's record is `FenceSignal`, numbers only.
        unsafe { ioctl(self.0.as_fd(), Setter::<FENCE_SIGNAL, _>::new(record)) }
            .map_err(|e| Failure::Error(format!("VGEM_FENCE_SIGNAL: {e}")))
    }

    /// Closes the GEM handle of `buffer` (its dma-buf keeps the object).
    pub(crate) fn close(&self, buffer: &mut Fenceable) -> Result<(), Failure> {
        match buffer.dumb.take() {
            Some(dumb) => self
                .0
                .destroy_dumb_buffer(dumb)
                .map_err(|e| Failure::Error(format!("vgem: closing the GEM handle: {e}"))),
            None => Ok(()),
        }
    }
}
