// SPDX-License-Identifier: MIT
//! A dma-buf of another producer, and CPU access to a dma-buf's mapping,
//! bracketed as the kernel asks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::sys::{self, Command, Mapping, DMA_BUF_SYNC_LEN};

// `linux/magic.h`: the file system every dma-buf's file is on.
const DMA_BUF_MAGIC: u64 = 0x444d_4142;

/// A dma-buf that another driver or process made (a GPU's PRIME export, a
/// camera's `VIDIOC_EXPBUF`, one received over a socket): held to export
/// with [`Device::export`](crate::Device::export), to hand on, or to map.
#[derive(Debug)]
pub struct DmaBuf {
    fd: OwnedFd,
    size: u64,
}

impl DmaBuf {
    /// Takes `fd` if it is a dma-buf, with its size (fixed for its life).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `fd` is not a dma-buf; what `fstatfs` or `fstat`
    /// say.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        const ACTION: &str = "taking a dma-buf";
        let fs = rustix::fs::fstatfs(&fd).map_err(|e| Error::new(ACTION, e.into()))?;
        // `f_type`'s integer type differs between architectures.
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        if fs.f_type as u64 != DMA_BUF_MAGIC {
            return Err(Error::invalid_input(ACTION, "the file is not a dma-buf"));
        }
        let size = rustix::fs::fstat(&fd)
            .map_err(|e| Error::new(ACTION, e.into()))?
            .st_size;
        let size = u64::try_from(size)
            .map_err(|_| Error::invalid_data(ACTION, format!("a size of {size}")))?;
        Ok(DmaBuf { fd, size })
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Maps the whole buffer, writable if `writable` (the descriptor must
    /// be open for writing). Bracket CPU accesses with [`CpuAccess`].
    ///
    /// # Errors
    ///
    /// What `mmap` says ([`Mapping::new`]): `EACCES` for a writable
    /// mapping of a read-only descriptor, `ENODEV` for a dma-buf its
    /// exporter does not let map; a size that does not fit this process's
    /// address space is `InvalidInput`.
    pub fn map(&self, writable: bool) -> Result<Mapping> {
        // SAFETY: `fd` is a dma-buf, checked when it was taken.
        unsafe { map_dmabuf(self.fd.as_fd(), self.size, writable, "a dma-buf") }
    }
}

/// Maps the `size` bytes of the dma-buf `fd` (`what` names it in an error).
///
/// # Safety
///
/// `fd` must be a dma-buf: its size is fixed when it is made, so the
/// mapping's accesses cannot fault later (any other file may shrink).
pub(crate) unsafe fn map_dmabuf(
    fd: BorrowedFd<'_>,
    size: u64,
    writable: bool,
    what: &str,
) -> Result<Mapping> {
    let action = || format!("mapping {what} of {size} bytes");
    let len = usize::try_from(size)
        .map_err(|_| Error::invalid_input(action(), "larger than the address space"))?;
    Mapping::check_file_holds(fd, len).map_err(|e| Error::new(action(), e))?;
    // SAFETY: `fd` is a dma-buf (this function's contract), whose size is
    // fixed when it is made, and it holds `len` bytes (checked above).
    unsafe { Mapping::new(fd, len, writable) }.map_err(|e| Error::new(action(), e))
}

impl AsFd for DmaBuf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<DmaBuf> for OwnedFd {
    fn from(dmabuf: DmaBuf) -> OwnedFd {
        dmabuf.fd
    }
}

// `linux/dma-buf.h`: what `DMA_BUF_IOCTL_SYNC` says.
const SYNC_READ: u64 = 1 << 0;
const SYNC_WRITE: u64 = 1 << 1;
const SYNC_END: u64 = 1 << 2;

/// A CPU access to a dma-buf's pages through a mapping: begun with
/// `DMA_BUF_IOCTL_SYNC` (`SYNC_START`) and ended with it (`SYNC_END`),
/// so that caches and any device access are kept coherent with what the
/// CPU reads or writes in between. Ended on drop, if not before with
/// [`CpuAccess::end`] (which reports an error that drop cannot).
///
/// ```no_run
/// use hyper_dmabuf_client::{CpuAccess, Device, HyperDmabufId};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let id: HyperDmabufId = std::env::args().nth(1).unwrap_or_default().parse()?;
/// let imported = Device::open()?.import(&id, false)?;
/// let mapping = imported.map()?;
/// let access = CpuAccess::begin(&imported, false)?;
/// let mut header = [0u8; 64];
/// mapping.read_at(0, &mut header);
/// access.end()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CpuAccess<'a> {
    dmabuf: BorrowedFd<'a>,
    flags: u64,
    ended: bool,
}

impl<'a> CpuAccess<'a> {
    /// Begins reading `dmabuf`'s pages, and writing them if `write`.
    ///
    /// # Errors
    ///
    /// What `DMA_BUF_IOCTL_SYNC` says (`ENOTTY`: not a dma-buf).
    pub fn begin<F: AsFd + ?Sized>(dmabuf: &'a F, write: bool) -> Result<Self> {
        let flags = SYNC_READ | if write { SYNC_WRITE } else { 0 };
        let access = CpuAccess {
            dmabuf: dmabuf.as_fd(),
            flags,
            ended: false,
        };
        sync(access.dmabuf, flags).map_err(|e| Error::new("DMA_BUF_IOCTL_SYNC start", e))?;
        Ok(access)
    }

    /// Ends the access.
    ///
    /// # Errors
    ///
    /// What `DMA_BUF_IOCTL_SYNC` says.
    pub fn end(mut self) -> Result<()> {
        self.ended = true;
        sync(self.dmabuf, self.flags | SYNC_END)
            .map_err(|e| Error::new("DMA_BUF_IOCTL_SYNC end", e))
    }
}

impl Drop for CpuAccess<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // Nobody to tell of a failure here; `end` reports it.
            let _ = sync(self.dmabuf, self.flags | SYNC_END);
        }
    }
}

fn sync(dmabuf: BorrowedFd<'_>, flags: u64) -> std::io::Result<()> {
    let mut record: [u8; DMA_BUF_SYNC_LEN] = flags.to_ne_bytes();
    sys::command(dmabuf, Command::DMA_BUF_SYNC, &mut record).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::MemfdFlags;

    /// A file that can change size (or is a device) would give a mapping
    /// whose accesses fault: only a dma-buf is taken.
    #[test]
    fn a_file_that_is_not_a_dma_buf_is_refused() {
        let memfd = rustix::fs::memfd_create("not-a-dmabuf", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memfd, 4096).unwrap();
        let refused = DmaBuf::from_fd(memfd).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(DmaBuf::from_fd(null.into()).is_err());
    }
}
