// SPDX-License-Identifier: MIT
//! Local dma-bufs to export: a memfd turned into a dma-buf by udmabuf.

use crate::sys;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Path of the udmabuf device.
pub const UDMABUF_PATH: &str = "/dev/udmabuf";

/// `_IOW('u', 0x42, struct udmabuf_create)`.
const UDMABUF_CREATE: u32 = 0x4018_7542;
/// `UDMABUF_FLAGS_CLOEXEC`.
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// A dma-buf backed by a sealed memfd, with the memfd kept for CPU access.
pub struct Udmabuf {
    /// The dma-buf.
    pub dmabuf: OwnedFd,
    /// The memfd whose pages back it.
    pub memfd: OwnedFd,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
}

/// Creates a dma-buf of `size` bytes (rounded up to whole pages) whose
/// contents `init` writes first.
pub fn create_udmabuf(size: u64, init: impl FnOnce(&mut [u8])) -> io::Result<Udmabuf> {
    let page = 4096u64;
    let size = size
        .checked_add(page - 1)
        .map(|s| s / page * page)
        .filter(|&s| s > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let name = c"hdmabuf";
    let memfd = sys::memfd_create(name)?;
    sys::ftruncate(memfd.as_fd(), size)?;
    {
        let len = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut map = sys::Mapping::new(memfd.as_fd(), len, true)?;
        if let Some(bytes) = map.as_mut_slice() {
            init(bytes);
        }
    }
    // udmabuf insists the memfd cannot shrink under the dma-buf.
    sys::add_seals(memfd.as_fd(), libc::F_SEAL_SHRINK)?;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(UDMABUF_PATH)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{UDMABUF_PATH}: {e} (is the kernel built with CONFIG_UDMABUF?)"),
            )
        })?;
    let mut record = [0u8; 24];
    record[0..4].copy_from_slice(&(memfd_raw(&memfd)).to_le_bytes());
    record[4..8].copy_from_slice(&UDMABUF_FLAGS_CLOEXEC.to_le_bytes());
    record[8..16].copy_from_slice(&0u64.to_le_bytes());
    record[16..24].copy_from_slice(&size.to_le_bytes());
    let raw = sys::ioctl_record(dev.as_fd(), UDMABUF_CREATE, &mut record)?;
    Ok(Udmabuf {
        dmabuf: sys::adopt_fd(raw)?,
        memfd,
        size,
    })
}

fn memfd_raw(fd: &OwnedFd) -> u32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd() as u32
}
