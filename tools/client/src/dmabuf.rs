// SPDX-License-Identifier: MIT
//! CPU access to a dma-buf's mapping, bracketed as the kernel asks.

use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::sys::{self, Command, DMA_BUF_SYNC_LEN};

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
