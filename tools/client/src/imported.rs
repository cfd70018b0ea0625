// SPDX-License-Identifier: MIT
//! An imported buffer, mapped and checked against its test pattern: the
//! importing half that the test agents (`stress`, `soak`, `kcheck`) share.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use hyper_dmabuf_common::id::HyperDmabufId;

use crate::device::{dmabuf_sync, Device, DeviceError};
use crate::{pattern, sys};

/// Why an import failed.
pub enum ImportError {
    /// The import ioctl failed.
    Import(DeviceError),
    /// Mapping or verifying failed.
    Other(String),
}

/// An imported buffer whose every byte was found to hold its pattern; it
/// stays imported (and mapped) until dropped.
pub struct Verified {
    /// Field order matters: the mapping goes before the dma-buf fd.
    map: sys::Mapping,
    fd: OwnedFd,
    seed: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Verified {
    /// Imports `hid`, maps it and checks it holds `expect_size` bytes of
    /// the pattern of `seed`.
    pub fn import(
        dev: &Device,
        hid: &HyperDmabufId,
        rw: bool,
        seed: u64,
        expect_size: u64,
    ) -> Result<Self, ImportError> {
        let (fd, size) = dev.import(hid, rw).map_err(ImportError::Import)?;
        if size != expect_size {
            return Err(ImportError::Other(format!(
                "imported {size} bytes, expected the {expect_size} of its NewExport event"
            )));
        }
        Self::new(fd, size, rw, seed).map_err(ImportError::Other)
    }

    /// Maps `fd`, an imported buffer of `size` bytes, and checks it holds
    /// the pattern of `seed`.
    pub fn new(fd: OwnedFd, size: u64, rw: bool, seed: u64) -> Result<Self, String> {
        let len =
            usize::try_from(size).map_err(|_| format!("{size} bytes do not fit in memory"))?;
        let map = sys::Mapping::new(fd.as_fd(), len, rw).map_err(|e| format!("mmap: {e}"))?;
        let v = Verified {
            map,
            fd,
            seed,
            size,
        };
        v.check()?;
        Ok(v)
    }

    /// The imported dma-buf.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// Reads every byte again and compares it with the pattern (between
    /// the DMA-BUF sync calls a CPU reader must make).
    pub fn check(&self) -> Result<(), String> {
        let fd = self.fd.as_fd();
        dmabuf_sync(fd, true, false).map_err(|e| format!("DMA_BUF_IOCTL_SYNC start: {e}"))?;
        let bytes = self.map.as_slice();
        if let Some(at) = pattern::first_mismatch(self.seed, bytes) {
            let word = at / 8 * 8;
            let seen = &bytes[word..(word + 8).min(bytes.len())];
            return Err(format!(
                "byte {at} (page {}) differs from the pattern of seed {}; the 8 bytes there \
                 are {seen:02x?}",
                at / 4096,
                self.seed
            ));
        }
        dmabuf_sync(fd, false, false).map_err(|e| format!("DMA_BUF_IOCTL_SYNC end: {e}"))
    }
}

/// Runs `op` again while the ring to the peer is full (`EAGAIN`), for at
/// most a second.
pub fn retry_full<T>(mut op: impl FnMut() -> Result<T, DeviceError>) -> Result<T, DeviceError> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        match op() {
            Err(e) if e.source.raw_os_error() == Some(libc::EAGAIN) && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
