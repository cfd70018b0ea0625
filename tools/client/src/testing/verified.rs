// SPDX-License-Identifier: MIT
//! An imported buffer, mapped and checked against its test pattern: the
//! importing half that the test agents (`stress`, `soak`, `kcheck`) share.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use hyper_dmabuf_common::id::HyperDmabufId;

use super::pattern;
use crate::{CpuAccess, Device, Error, Mapping};

/// Why an import failed.
#[derive(Debug)]
pub enum ImportError {
    /// The import ioctl failed.
    Import(Error),
    /// Mapping or verifying failed.
    Other(String),
}

/// An imported buffer whose every byte was found to hold its pattern; it
/// stays imported (and mapped) until dropped.
#[derive(Debug)]
pub struct Verified {
    /// Field order matters: the mapping goes before the dma-buf fd.
    map: Mapping,
    fd: OwnedFd,
    seed: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Verified {
    /// Imports `hid`, maps it and checks it holds `expect_size` bytes of
    /// the pattern of `seed`.
    ///
    /// # Errors
    ///
    /// [`ImportError::Import`] if the driver refused the import,
    /// [`ImportError::Other`] for another size, a failed mapping or other
    /// bytes.
    pub fn import(
        dev: &Device,
        hid: &HyperDmabufId,
        rw: bool,
        seed: u64,
        expect_size: u64,
    ) -> Result<Self, ImportError> {
        let imported = dev.import(hid, rw).map_err(ImportError::Import)?;
        if imported.size != expect_size {
            return Err(ImportError::Other(format!(
                "imported {} bytes, expected the {expect_size} of its NewExport event",
                imported.size
            )));
        }
        Self::new(imported.fd, imported.size, rw, seed).map_err(ImportError::Other)
    }

    /// Maps `fd`, an imported buffer of `size` bytes, and checks it holds
    /// the pattern of `seed`.
    ///
    /// # Errors
    ///
    /// A failed mapping, or the first byte that differs.
    pub fn new(fd: OwnedFd, size: u64, rw: bool, seed: u64) -> Result<Self, String> {
        let len =
            usize::try_from(size).map_err(|_| format!("{size} bytes do not fit in memory"))?;
        Mapping::check_file_holds(fd.as_fd(), len).map_err(|e| format!("{size} bytes: {e}"))?;
        // SAFETY: `fd` is an imported dma-buf (its size fixed when it was
        // made) and holds `len` bytes (checked above).
        let map = unsafe { Mapping::new(&fd, len, rw) }.map_err(|e| format!("mmap: {e}"))?;
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

    /// The mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Reads every byte again and compares it with the pattern (between
    /// the DMA-BUF sync calls a CPU reader must make).
    ///
    /// # Errors
    ///
    /// The first byte that differs, with the word around it, or a failed
    /// sync call.
    pub fn check(&self) -> Result<(), String> {
        let access = CpuAccess::begin(&self.fd, false).map_err(|e| e.to_string())?;
        if let Some(at) = pattern::first_mismatch_in(self.seed, &self.map) {
            let word = at / 8 * 8;
            let mut seen = vec![0u8; 8.min(self.map.len() - word)];
            self.map.read_at(word, &mut seen);
            return Err(format!(
                "byte {at} (page {}) differs from the pattern of seed {}; the 8 bytes there \
                 are {seen:02x?}",
                at / 4096,
                self.seed
            ));
        }
        access.end().map_err(|e| e.to_string())
    }
}

/// Runs `op` again while the driver says to retry ([`Error::should_retry`]:
/// the ring to the peer is full), for at most a second.
///
/// # Errors
///
/// `op`'s last error.
pub fn retry_full<T>(mut op: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        match op() {
            Err(e) if e.should_retry() && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
