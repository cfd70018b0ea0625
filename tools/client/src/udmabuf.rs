// SPDX-License-Identifier: MIT
//! dma-bufs of ordinary memory: a sealed memfd turned into a dma-buf by
//! Linux's `udmabuf` driver, for an application that shares memory it
//! fills itself rather than a device's buffer.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::sys::{self, Mapping, UDMABUF_CREATE_LEN};

/// Path of the udmabuf device.
pub const UDMABUF_PATH: &str = "/dev/udmabuf";

/// `UDMABUF_FLAGS_CLOEXEC` (`linux/udmabuf.h`).
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// A dma-buf over the pages of a memfd, with the memfd kept for CPU
/// access ([`Udmabuf::map`]). Export it like any dma-buf (it is
/// [`AsFd`]); it lives while either descriptor, or an export of it, does.
///
/// ```no_run
/// use hyper_dmabuf_client::Udmabuf;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // 1 MiB whose every chunk starts with its own offset.
/// let buffer = Udmabuf::with_contents(1 << 20, |offset, chunk| {
///     chunk[..8].copy_from_slice(&(offset as u64).to_le_bytes());
/// })?;
/// assert_eq!(buffer.size, 1 << 20);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Udmabuf {
    /// The dma-buf (`O_CLOEXEC`).
    pub dmabuf: OwnedFd,
    /// The memfd whose pages back it (sealed against shrinking).
    pub memfd: OwnedFd,
    /// Size in bytes, a multiple of the page size.
    pub size: u64,
}

impl Udmabuf {
    /// A dma-buf of `size` zeroed bytes (rounded up to whole pages).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a size of zero; what `memfd_create`,
    /// `ftruncate` or udmabuf say (`ENOENT` on opening it: the kernel was
    /// built without `CONFIG_UDMABUF`, with a hint).
    pub fn new(size: u64) -> Result<Self> {
        Self::create(size, None::<fn(usize, &mut [u8])>)
    }

    /// The same, with contents written before the dma-buf exists: `fill`
    /// gets each piece of the buffer, zeroed, and its offset
    /// ([`Mapping::write_chunks`]).
    ///
    /// # Errors
    ///
    /// As [`Udmabuf::new`].
    pub fn with_contents(size: u64, fill: impl FnMut(usize, &mut [u8])) -> Result<Self> {
        Self::create(size, Some(fill))
    }

    fn create(size: u64, fill: Option<impl FnMut(usize, &mut [u8])>) -> Result<Self> {
        let action = format!("creating a {size}-byte udmabuf");
        let page = rustix::param::page_size() as u64;
        let size = size
            .checked_next_multiple_of(page)
            .filter(|&size| size > 0)
            .ok_or_else(|| Error::invalid_input(&action, "no whole pages"))?;
        let fail = |e: Errno| Error::new(&action, e.into());
        let memfd =
            rustix::fs::memfd_create("hdmabuf", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .map_err(fail)?;
        rustix::fs::ftruncate(&memfd, size).map_err(fail)?;
        if let Some(fill) = fill {
            let len = usize::try_from(size)
                .map_err(|_| Error::invalid_input(&action, "larger than the address space"))?;
            // SAFETY: the memfd was sized to `size` bytes above and no
            // one else has it yet to shrink it; the mapping ends in this
            // block.
            let map =
                unsafe { Mapping::new(&memfd, len, true) }.map_err(|e| Error::new(&action, e))?;
            map.write_chunks(fill);
        }
        // udmabuf insists that the memfd cannot shrink under the dma-buf.
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK).map_err(fail)?;
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(UDMABUF_PATH)
            .map_err(|e| {
                Error::hinted(&action, e, |errno| {
                    (errno == Errno::NOENT)
                        .then_some("the kernel has no udmabuf device: it needs CONFIG_UDMABUF")
                })
            })?;
        let memfd_number = u32::try_from(memfd.as_raw_fd()).map_err(|_| fail(Errno::BADF))?;
        let mut record = [0u8; UDMABUF_CREATE_LEN];
        record[0..4].copy_from_slice(&memfd_number.to_ne_bytes());
        record[4..8].copy_from_slice(&UDMABUF_FLAGS_CLOEXEC.to_ne_bytes());
        // Bytes 8..16: the offset into the memfd, 0.
        record[16..24].copy_from_slice(&size.to_ne_bytes());
        let dmabuf =
            sys::udmabuf_create(device.as_fd(), &mut record).map_err(|e| Error::new(&action, e))?;
        Ok(Udmabuf {
            dmabuf,
            memfd,
            size,
        })
    }

    /// Maps the memfd's pages, the same the dma-buf shares: what this
    /// domain writes there, an importer reads, and the other way round
    /// for a read-write export.
    ///
    /// # Errors
    ///
    /// What `mmap` says; `EINVAL` if the memfd is shorter than `size` or
    /// not sealed against shrinking (the fields are public: a value not
    /// made by [`Udmabuf::new`] is checked, not trusted).
    pub fn map(&self, writable: bool) -> Result<Mapping> {
        let action = || format!("mapping a udmabuf of {} bytes", self.size);
        let len = usize::try_from(self.size)
            .map_err(|_| Error::invalid_input(action(), "larger than the address space"))?;
        let seals =
            rustix::fs::fcntl_get_seals(&self.memfd).map_err(|e| Error::new(action(), e.into()))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::new(action(), Errno::INVAL.into()));
        }
        Mapping::check_file_holds(self.memfd.as_fd(), len).map_err(|e| Error::new(action(), e))?;
        // SAFETY: the memfd holds `len` bytes and is sealed against
        // shrinking (both checked above), so it holds them while mapped.
        unsafe { Mapping::new(&self.memfd, len, writable) }.map_err(|e| Error::new(action(), e))
    }
}

impl AsFd for Udmabuf {
    /// The dma-buf.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dmabuf.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(size: u64, sealed: bool) -> OwnedFd {
        let fd = rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        if sealed {
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        }
        fd
    }

    /// The fields are public: `map` checks them instead of trusting them,
    /// or a memfd that can shrink (or a size larger than the file) would
    /// give a mapping whose accesses fault.
    #[test]
    fn a_value_not_made_by_new_is_checked_before_mapping() {
        let made = |memfd, size| Udmabuf {
            dmabuf: memfd_for_dmabuf(),
            memfd,
            size,
        };
        assert!(made(memfd(8192, true), 8192).map(true).is_ok());
        let unsealed = made(memfd(8192, false), 8192).map(true).unwrap_err();
        assert_eq!(unsealed.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
        let too_large = made(memfd(4096, true), 8192).map(false).unwrap_err();
        assert_eq!(too_large.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
    }

    fn memfd_for_dmabuf() -> OwnedFd {
        memfd(4096, false)
    }
}
