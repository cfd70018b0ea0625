// SPDX-License-Identifier: MIT
//! Linux's Xen user-space devices, through their ioctls: `gntalloc`
//! (grant pages of our own to a domain), `gntdev` (map a domain's grants;
//! its dma-buf ioctls) and `evtchn` (interdomain event channels). The
//! benchmark's anchors and its transport are built on them, and the
//! hostile peer (`tests/hostile`) maps grants it was never told of
//! with `gntdev`; the records are those of
//! `include/uapi/xen/{gntalloc,gntdev,evtchn}.h`.
//!
//! Every record here carries numbers only (domain ids, counts, grant
//! references, offsets), no user address; each ioctl is given a record at
//! least as long as the count it encodes says the kernel touches. That is
//! what each `unsafe` block below relies on.

use hyper_dmabuf_client::testing::{ioctl_in_place, wait_readable};
use hyper_dmabuf_client::Mapping;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `_IOC(_IOC_NONE, type, nr, size)`: these devices use no direction bits.
const fn ioc_none(ty: u8, nr: u8, size: u32) -> u32 {
    (size << 16) | ((ty as u32) << 8) | nr as u32
}

// Record sizes are those of the C structures with their one-element
// array tails (checked against the 6.12 headers).
const GNTALLOC_ALLOC_GREF: u32 = ioc_none(b'G', 5, 24);
const GNTALLOC_DEALLOC_GREF: u32 = ioc_none(b'G', 6, 16);
const GNTALLOC_FLAG_WRITABLE: u16 = 1;
const GNTDEV_MAP_GRANT_REF: u32 = ioc_none(b'G', 0, 24);
const GNTDEV_UNMAP_GRANT_REF: u32 = ioc_none(b'G', 1, 16);
const GNTDEV_DMABUF_EXP_FROM_REFS: u32 = ioc_none(b'G', 9, 20);
const GNTDEV_DMABUF_IMP_TO_REFS: u32 = ioc_none(b'G', 11, 20);
const GNTDEV_DMABUF_IMP_RELEASE: u32 = ioc_none(b'G', 12, 8);
const EVTCHN_BIND_INTERDOMAIN: u32 = ioc_none(b'E', 1, 8);
const EVTCHN_BIND_UNBOUND_PORT: u32 = ioc_none(b'E', 2, 4);
const EVTCHN_NOTIFY: u32 = ioc_none(b'E', 4, 4);

/// Xen's page size: one grant per 4 KiB.
pub const PAGE: usize = 4096;

fn open_rw(path: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

fn put32(rec: &mut [u8], at: usize, v: u32) {
    rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get32(rec: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(rec[at..at + 4].try_into().expect("4 bytes"))
}

fn refs_from(rec: &[u8], at: usize, count: usize) -> Vec<u32> {
    (0..count).map(|i| get32(rec, at + 4 * i)).collect()
}

fn count32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))
}

/// `/dev/xen/gntalloc`: pages of this domain granted to another.
pub struct Gntalloc {
    file: File,
}

impl Gntalloc {
    /// Opens the device.
    pub fn open() -> io::Result<Self> {
        Ok(Gntalloc {
            file: open_rw("/dev/xen/gntalloc")?,
        })
    }

    /// Allocates `pages` zeroed pages and grants each to `domid`; returns
    /// the offset at which [`Gntalloc::map`] maps them, and one reference
    /// per page for the peer.
    pub fn grant(&self, domid: u16, pages: usize, writable: bool) -> io::Result<(u64, Vec<u32>)> {
        let mut rec = vec![0u8; 16 + 4 * pages.max(1)];
        rec[0..2].copy_from_slice(&domid.to_le_bytes());
        let flags = if writable { GNTALLOC_FLAG_WRITABLE } else { 0 };
        rec[2..4].copy_from_slice(&flags.to_le_bytes());
        put32(&mut rec, 4, count32(pages)?);
        // SAFETY: the kernel reads the 16-byte header and writes `pages`
        // references after it, which `rec` has room for; no addresses.
        unsafe { ioctl_in_place(self.file.as_fd(), GNTALLOC_ALLOC_GREF, &mut rec) }?;
        let index = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
        Ok((index, refs_from(&rec, 16, pages)))
    }

    /// Gives up grants made by [`Gntalloc::grant`]; each page is freed once
    /// neither the peer nor we map it any more.
    pub fn release(&self, index: u64, pages: usize) -> io::Result<()> {
        let mut rec = [0u8; 16];
        rec[0..8].copy_from_slice(&index.to_le_bytes());
        put32(&mut rec, 8, count32(pages)?);
        // SAFETY: the whole 16-byte record, numbers only.
        unsafe { ioctl_in_place(self.file.as_fd(), GNTALLOC_DEALLOC_GREF, &mut rec) }.map(drop)
    }

    /// Maps pages granted by [`Gntalloc::grant`] into this process.
    pub fn map(&self, index: u64, pages: usize) -> io::Result<Mapping> {
        // SAFETY: gntalloc keeps the pages of a range it granted while a
        // mapping of them lives, even after DEALLOC_GREF.
        unsafe { Mapping::at(&self.file, pages * PAGE, index, true) }
    }
}

/// `/dev/xen/gntdev`: another domain's grants, mapped here; and the
/// gntdev-dmabuf ioctls.
pub struct Gntdev {
    file: File,
}

/// Grants of a peer reserved by [`Gntdev::prepare`]; [`Gntdev::map`]
/// maps them (one batch of grant-map operations at `mmap` time).
pub struct GrantRange {
    index: u64,
    pages: usize,
}

impl Gntdev {
    /// Opens the device.
    pub fn open() -> io::Result<Self> {
        Ok(Gntdev {
            file: open_rw("/dev/xen/gntdev")?,
        })
    }

    /// `IOCTL_GNTDEV_MAP_GRANT_REF`: reserves the mapping of `refs` of
    /// `domid`; nothing is mapped yet.
    pub fn prepare(&self, domid: u16, refs: &[u32]) -> io::Result<GrantRange> {
        let mut rec = vec![0u8; 16 + 8 * refs.len().max(1)];
        put32(&mut rec, 0, count32(refs.len())?);
        for (i, r) in refs.iter().enumerate() {
            put32(&mut rec, 16 + 8 * i, u32::from(domid));
            put32(&mut rec, 20 + 8 * i, *r);
        }
        // SAFETY: the kernel reads the 16-byte header and the `refs.len()`
        // (domain, reference) pairs after it, all in `rec`; no addresses.
        unsafe { ioctl_in_place(self.file.as_fd(), GNTDEV_MAP_GRANT_REF, &mut rec) }?;
        Ok(GrantRange {
            index: u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes")),
            pages: refs.len(),
        })
    }

    /// Maps a prepared range into this process (read-only unless
    /// `writable`).
    pub fn map(&self, range: &GrantRange, writable: bool) -> io::Result<Mapping> {
        // SAFETY: gntdev keeps a prepared range's grant mappings while a
        // mapping of it lives, even after UNMAP_GRANT_REF.
        unsafe { Mapping::at(&self.file, range.pages * PAGE, range.index, writable) }
    }

    /// `IOCTL_GNTDEV_UNMAP_GRANT_REF`: forgets a range (its mapping must
    /// be gone already).
    pub fn unprepare(&self, range: GrantRange) -> io::Result<()> {
        let mut rec = [0u8; 16];
        rec[0..8].copy_from_slice(&range.index.to_le_bytes());
        put32(&mut rec, 8, count32(range.pages)?);
        // SAFETY: the whole 16-byte record, numbers only.
        unsafe { ioctl_in_place(self.file.as_fd(), GNTDEV_UNMAP_GRANT_REF, &mut rec) }.map(drop)
    }

    /// `IOCTL_GNTDEV_DMABUF_IMP_TO_REFS`: grants the pages of a local
    /// dma-buf of `pages` pages to `domid`; returns one reference per page.
    pub fn dmabuf_to_refs(
        &self,
        dmabuf: BorrowedFd<'_>,
        pages: usize,
        domid: u16,
    ) -> io::Result<Vec<u32>> {
        let mut rec = vec![0u8; 16 + 4 * pages.max(1)];
        put32(&mut rec, 0, dmabuf.as_raw_fd() as u32);
        put32(&mut rec, 4, count32(pages)?);
        put32(&mut rec, 8, u32::from(domid));
        // SAFETY: the kernel reads the 16-byte header and writes `pages`
        // references after it, which `rec` has room for; no addresses.
        unsafe { ioctl_in_place(self.file.as_fd(), GNTDEV_DMABUF_IMP_TO_REFS, &mut rec) }?;
        Ok(refs_from(&rec, 16, pages))
    }

    /// `IOCTL_GNTDEV_DMABUF_IMP_RELEASE`: ends the grants of a dma-buf
    /// given to [`Gntdev::dmabuf_to_refs`] and lets it go.
    pub fn release_dmabuf(&self, dmabuf: BorrowedFd<'_>) -> io::Result<()> {
        let mut rec = [0u8; 8];
        put32(&mut rec, 0, dmabuf.as_raw_fd() as u32);
        // SAFETY: the whole 8-byte record, numbers only.
        unsafe { ioctl_in_place(self.file.as_fd(), GNTDEV_DMABUF_IMP_RELEASE, &mut rec) }.map(drop)
    }

    /// `IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS`: maps `refs` of `domid` and
    /// returns a dma-buf over them (refused in a PV domain).
    pub fn dmabuf_from_refs(&self, domid: u16, refs: &[u32]) -> io::Result<OwnedFd> {
        let mut rec = vec![0u8; 16 + 4 * refs.len().max(1)];
        put32(&mut rec, 4, count32(refs.len())?);
        put32(&mut rec, 12, u32::from(domid));
        for (i, r) in refs.iter().enumerate() {
            put32(&mut rec, 16 + 4 * i, *r);
        }
        // SAFETY: the kernel reads the 16-byte header and the `refs.len()`
        // references after it, all in `rec`, and writes the new fd into
        // the header; no addresses.
        unsafe { ioctl_in_place(self.file.as_fd(), GNTDEV_DMABUF_EXP_FROM_REFS, &mut rec) }?;
        let fd = get32(&rec, 8) as libc::c_int;
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        // SAFETY: a successful EXP_FROM_REFS made this descriptor for
        // this call, and nothing else has adopted it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Grants of a peer mapped here by [`Gntdev::map_refs`]; unmapped, and
/// the range given back, on drop.
pub struct ForeignMap<'d> {
    gntdev: &'d Gntdev,
    range: Option<GrantRange>,
    map: Option<Mapping>,
    refs: Vec<u32>,
}

impl Gntdev {
    /// Maps `refs` of `domid` here, in order, in one batch of grant-map
    /// operations (read-only unless `writable`): Xen checks each, and one
    /// it refuses fails the whole map, leaving nothing mapped.
    pub fn map_refs(&self, domid: u16, refs: &[u32], writable: bool) -> io::Result<ForeignMap<'_>> {
        let range = self.prepare(domid, refs)?;
        match self.map(&range, writable) {
            Ok(map) => Ok(ForeignMap {
                gntdev: self,
                range: Some(range),
                map: Some(map),
                refs: refs.to_vec(),
            }),
            Err(e) => {
                let _ = self.unprepare(range);
                Err(e)
            }
        }
    }
}

impl ForeignMap<'_> {
    /// The mapping of the pages, in the order of [`ForeignMap::refs`].
    pub fn mapping(&self) -> &Mapping {
        self.map.as_ref().expect("mapped until dropped")
    }

    /// The references mapped.
    pub fn refs(&self) -> &[u32] {
        &self.refs
    }
}

impl Drop for ForeignMap<'_> {
    fn drop(&mut self) {
        // The mapping goes before its range is given back.
        drop(self.map.take());
        if let Some(range) = self.range.take() {
            let _ = self.gntdev.unprepare(range);
        }
    }
}

/// One interdomain event channel through `/dev/xen/evtchn`.
pub struct EventChannel {
    file: File,
    port: u32,
}

impl EventChannel {
    /// A new unbound port that `remote` may bind to (the listening side).
    pub fn listen(remote: u16) -> io::Result<Self> {
        let file = open_rw("/dev/xen/evtchn")?;
        let mut rec = [0u8; 4];
        put32(&mut rec, 0, u32::from(remote));
        // SAFETY: the whole 4-byte record, a domain id.
        let port = unsafe { ioctl_in_place(file.as_fd(), EVTCHN_BIND_UNBOUND_PORT, &mut rec) }?;
        Ok(EventChannel {
            file,
            port: port as u32,
        })
    }

    /// Binds to the port `remote_port` that `remote` listens on.
    pub fn connect(remote: u16, remote_port: u32) -> io::Result<Self> {
        let file = open_rw("/dev/xen/evtchn")?;
        let mut rec = [0u8; 8];
        put32(&mut rec, 0, u32::from(remote));
        put32(&mut rec, 4, remote_port);
        // SAFETY: the whole 8-byte record, a domain id and a port.
        let port = unsafe { ioctl_in_place(file.as_fd(), EVTCHN_BIND_INTERDOMAIN, &mut rec) }?;
        Ok(EventChannel {
            file,
            port: port as u32,
        })
    }

    /// Our end's port number.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Signals the other end.
    pub fn notify(&self) -> io::Result<()> {
        let mut rec = self.port.to_le_bytes();
        // SAFETY: the whole 4-byte record, a port.
        unsafe { ioctl_in_place(self.file.as_fd(), EVTCHN_NOTIFY, &mut rec) }.map(drop)
    }

    /// Waits for a signal (at most `limit`), then unmasks the port. An
    /// event that came after the caller last looked at the shared state
    /// is pending and makes this return at once, so no wake-up is lost.
    pub fn wait(&self, limit: Duration) -> io::Result<()> {
        if !wait_readable(self.file.as_fd(), Some(limit))? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no event from the peer domain",
            ));
        }
        let mut port = [0u8; 4];
        (&self.file).read_exact(&mut port)?;
        (&self.file).write_all(&port)
    }
}
