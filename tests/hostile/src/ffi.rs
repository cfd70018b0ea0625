// SPDX-License-Identifier: MIT
//! The thin FFI layer of the hostile tools: Xen's user-space devices
//! (`/dev/xen/gntalloc`, `/dev/xen/evtchn`), raw ioctls with arbitrary
//! arguments, and the memory those may touch. Every `unsafe` block of the
//! crate is here.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use hyper_dmabuf_client::testing::wait_readable;
use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::uapi::{self, ImportArgs};

/// `-1`-style return value to `io::Result`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `_IOC(_IOC_NONE, type, nr, size)`, the encoding of Xen's device ioctls.
const fn ioc_none(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((size as libc::c_ulong) << 16) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

// --- anonymous memory ------------------------------------------------------------

/// An anonymous private mapping, unmapped on drop.
///
/// # Invariants
///
/// `ptr` starts a live mapping of `len` bytes owned by this value.
struct Anon {
    ptr: NonNull<u8>,
    len: usize,
}

impl Anon {
    fn new(len: usize, prot: libc::c_int) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address the kernel
        // chooses; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or(io::Error::from_raw_os_error(libc::ENOMEM))?;
        // INVARIANT: the mapping succeeded with this length.
        Ok(Anon { ptr, len })
    }

    /// Revokes all access to the last `len` bytes (a guard area).
    fn protect_tail(&self, len: usize) -> io::Result<()> {
        // SAFETY: the range lies inside our own mapping (callers pass a
        // multiple of the page size not above `self.len`); no Rust
        // reference into the mapping exists.
        check(unsafe {
            libc::mprotect(
                self.ptr.as_ptr().add(self.len - len).cast(),
                len,
                libc::PROT_NONE,
            )
        })
        .map(drop)
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: by the invariant we own the mapping; nothing borrows it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The only memory the ioctl abuser lets the kernel write: a read-write
/// area followed by a guard page with no access.
///
/// Records are built in the area and passed by address; the user
/// addresses *inside* records (QUERY's `data_ptr`, LIST's `entries_ptr`,
/// the only ones `docs/uapi.md` defines) are taken from
/// [`Arena::pointer`], so they too name the area, the guard page, or
/// addresses no user process maps. (Random bytes elsewhere in a record
/// are never addresses to a driver that keeps its uapi; one that did not
/// would be the bug this tool looks for.) Rust code never holds a
/// reference into the area: it copies bytes in and out between system
/// calls, so whatever a (buggy) driver writes there breaks no invariant.
pub(crate) struct Arena {
    map: Anon,
    /// Bytes before the guard page.
    usable: usize,
}

/// A user address that an ioctl may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserAddr {
    /// `offset` bytes into the arena's usable area.
    Arena(usize),
    /// The first byte of the guard page (`EFAULT` on any access).
    Guard,
    /// Address 0.
    Null,
    /// An address in the kernel's half (`access_ok` refuses it).
    Kernel,
    /// A non-canonical address.
    NonCanonical,
}

impl Arena {
    /// An arena of `usable` bytes (a multiple of the page size).
    pub(crate) fn new(usable: usize) -> io::Result<Self> {
        let map = Anon::new(usable + XEN_PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE)?;
        map.protect_tail(XEN_PAGE_SIZE)?;
        Ok(Arena { map, usable })
    }

    /// Bytes usable before the guard page.
    pub(crate) fn usable(&self) -> usize {
        self.usable
    }

    /// The numeric value of `addr`, as the kernel sees it.
    pub(crate) fn pointer(&self, addr: UserAddr) -> u64 {
        let base = self.map.ptr.as_ptr() as u64;
        match addr {
            UserAddr::Arena(offset) => base + offset.min(self.usable) as u64,
            UserAddr::Guard => base + self.usable as u64,
            UserAddr::Null => 0,
            UserAddr::Kernel => 0xffff_8880_0000_0000,
            UserAddr::NonCanonical => 0x8000_0000_0000_0000,
        }
    }

    /// Copies `bytes` into the arena at `offset` (clipped at the guard).
    pub(crate) fn write(&mut self, offset: usize, bytes: &[u8]) {
        let n = bytes.len().min(self.usable.saturating_sub(offset));
        // SAFETY: `offset + n` is within the usable, read-write area of
        // our live mapping; `bytes` is a separate Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.ptr.as_ptr().add(offset), n)
        };
    }

    /// Copies bytes out of the arena at `offset` (clipped at the guard).
    pub(crate) fn read(&self, offset: usize, bytes: &mut [u8]) {
        let n = bytes.len().min(self.usable.saturating_sub(offset));
        // SAFETY: as in `write`, the source range is inside the usable
        // area; the destination is a separate Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.ptr.as_ptr().add(offset), bytes.as_mut_ptr(), n)
        };
    }

    /// `ioctl(fd, cmd, arg)` with `arg` one of the addresses above; the
    /// raw result (`Err` holds the errno).
    pub(crate) fn ioctl(
        &mut self,
        fd: BorrowedFd<'_>,
        cmd: u32,
        arg: UserAddr,
    ) -> Result<i32, i32> {
        let arg = self.pointer(arg);
        // SAFETY: `arg` names the arena, its guard page, or an address no
        // user process maps, and every user address inside the record
        // was made by `pointer`: whatever the kernel writes lands in the
        // arena, which no Rust reference covers (see the type's docs).
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, arg) };
        if ret < 0 {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(ret)
        }
    }
}

impl Arena {
    /// `HDMABUF_IOCTL_IMPORT` of the record at the arena's start: the new
    /// dma-buf, so that dropping it releases the import, or the errno
    /// (`EBADF` if the driver's answer holds no descriptor).
    pub(crate) fn import(&mut self, device: BorrowedFd<'_>) -> Result<OwnedFd, i32> {
        self.ioctl(device, uapi::IOCTL_IMPORT, UserAddr::Arena(0))?;
        let mut out = [0u8; ImportArgs::SIZE];
        self.read(0, &mut out);
        let fd = ImportArgs::decode(&out).map_or(-1, |args| args.fd);
        if fd < 0 {
            return Err(libc::EBADF);
        }
        // SAFETY: a successful IMPORT writes the descriptor it made for
        // this call into the record, and nothing else reads it from there.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `read(fd, addr, len)` into the arena or an unmapped address; the raw
/// result (`Err` holds the errno).
pub(crate) fn read_into(
    arena: &mut Arena,
    fd: BorrowedFd<'_>,
    arg: UserAddr,
    len: usize,
) -> Result<usize, i32> {
    let len = match arg {
        UserAddr::Arena(offset) => len.min(arena.usable().saturating_sub(offset)),
        _ => len,
    };
    let ptr = arena.pointer(arg);
    // SAFETY: as for `Arena::ioctl`: the kernel writes at most `len` bytes
    // at `ptr`, inside the arena (clipped above) or nowhere.
    let ret = unsafe { libc::read(fd.as_raw_fd(), ptr as *mut libc::c_void, len) };
    if ret < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret as usize)
    }
}

// --- identities ---------------------------------------------------------------------

/// Drops this process's privileges to `uid`/`gid` for good.
pub(crate) fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain system calls without pointers.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: as above.
    check(unsafe { libc::setgid(gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setuid(uid) }).map(drop)
}

// --- /dev/xen/gntalloc ------------------------------------------------------------

/// `/dev/xen/gntalloc`.
pub(crate) const GNTALLOC_PATH: &str = "/dev/xen/gntalloc";
/// `IOCTL_GNTALLOC_ALLOC_GREF` (`struct ioctl_gntalloc_alloc_gref`, 24 bytes).
const IOCTL_GNTALLOC_ALLOC_GREF: libc::c_ulong = ioc_none(b'G', 5, 24);
/// `IOCTL_GNTALLOC_DEALLOC_GREF` (`struct ioctl_gntalloc_dealloc_gref`, 16 bytes).
const IOCTL_GNTALLOC_DEALLOC_GREF: libc::c_ulong = ioc_none(b'G', 6, 16);
/// `GNTALLOC_FLAG_WRITABLE`.
const GNTALLOC_FLAG_WRITABLE: u16 = 1;

/// Pages of this domain granted to another through gntalloc, mapped here.
///
/// # Invariants
///
/// `ptr` starts a live shared mapping of `grefs.len()` pages of the
/// gntalloc file at offset `index`, owned by this value.
pub(crate) struct Granted<'a> {
    dev: &'a File,
    index: u64,
    grefs: Vec<u32>,
    ptr: NonNull<u8>,
}

/// Grants `count` fresh zeroed pages to `domid` (writable or not) and
/// maps them here.
pub(crate) fn grant_pages(
    dev: &File,
    domid: u16,
    count: u32,
    writable: bool,
) -> io::Result<Granted<'_>> {
    // struct ioctl_gntalloc_alloc_gref: domid u16, flags u16, count u32,
    // index u64 (out), gref_ids[count] u32 (out).
    let mut record = vec![0u32; 4 + count.max(2) as usize];
    record[0] =
        u32::from(domid) | u32::from(if writable { GNTALLOC_FLAG_WRITABLE } else { 0 }) << 16;
    record[1] = count;
    // SAFETY: `record` holds the 16-byte header and `count` gref slots
    // (at least the 24 bytes the command encodes); the kernel writes only
    // the index and `count` grefs.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOCTL_GNTALLOC_ALLOC_GREF,
            record.as_mut_ptr(),
        )
    })?;
    let index = u64::from(record[2]) | u64::from(record[3]) << 32;
    let grefs = record[4..4 + count as usize].to_vec();
    let len = count as usize * XEN_PAGE_SIZE;
    // SAFETY: a fresh shared mapping of the pages just allocated, at an
    // address the kernel chooses.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            dev.as_raw_fd(),
            index as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        dealloc(dev, index, count);
        return Err(e);
    }
    let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(io::Error::from_raw_os_error(libc::ENOMEM))?;
    // INVARIANT: mapped `count` pages at `index`.
    Ok(Granted {
        dev,
        index,
        grefs,
        ptr,
    })
}

fn dealloc(dev: &File, index: u64, count: u32) {
    let mut record = [0u64; 2];
    record[0] = index;
    record[1] = u64::from(count);
    // SAFETY: a 16-byte record, the size the command encodes; the kernel
    // only reads it. Pages the peer still maps are freed by gntalloc once
    // it unmaps them.
    unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOCTL_GNTALLOC_DEALLOC_GREF,
            record.as_mut_ptr(),
        )
    };
}

impl Granted<'_> {
    /// The grant references, one per page, in order.
    pub(crate) fn grefs(&self) -> &[u32] {
        &self.grefs
    }

    /// The pages as atomic words: the peer writes them concurrently, so
    /// they are only ever accessed atomically (this is the `SharedMem`
    /// the protocol code reads rings through).
    pub(crate) fn words(&self) -> &[AtomicU32] {
        // SAFETY: by the invariant the mapping is live for `&self` and
        // page-aligned; AtomicU32 has the size and alignment of u32 and
        // permits concurrent modification by others, so a shared slice
        // of atomics over memory another domain writes is sound.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<AtomicU32>(),
                self.grefs.len() * XEN_PAGE_SIZE / 4,
            )
        }
    }
}

impl Drop for Granted<'_> {
    fn drop(&mut self) {
        let count = self.grefs.len() as u32;
        // SAFETY: by the invariant we own the mapping; `words()` borrows
        // end with `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), count as usize * XEN_PAGE_SIZE) };
        dealloc(self.dev, self.index, count);
    }
}

// --- /dev/xen/evtchn ------------------------------------------------------------

/// `/dev/xen/evtchn`.
pub(crate) const EVTCHN_PATH: &str = "/dev/xen/evtchn";
const IOCTL_EVTCHN_BIND_UNBOUND_PORT: libc::c_ulong = ioc_none(b'E', 2, 4);
const IOCTL_EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, 4);

/// An open `/dev/xen/evtchn`: the ports bound through it are closed with it.
pub(crate) struct Evtchn {
    file: File,
}

impl Evtchn {
    /// Opens the device.
    pub(crate) fn open() -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(EVTCHN_PATH)?;
        Ok(Evtchn { file })
    }

    fn port_ioctl(&self, cmd: libc::c_ulong, value: u32) -> io::Result<libc::c_int> {
        let mut record = value;
        // SAFETY: every command used here takes one 4-byte `unsigned int`.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), cmd, &mut record) })
    }

    /// A new unbound port that `remote` may bind to.
    pub(crate) fn bind_unbound(&self, remote: u16) -> io::Result<u32> {
        self.port_ioctl(IOCTL_EVTCHN_BIND_UNBOUND_PORT, u32::from(remote))
            .map(|p| p as u32)
    }

    /// Sends an event on `port`.
    pub(crate) fn notify(&self, port: u32) -> io::Result<()> {
        self.port_ioctl(IOCTL_EVTCHN_NOTIFY, port).map(drop)
    }

    /// Waits up to `timeout_ms` (negative: for as long as it takes) for
    /// an event; each one read is unmasked again at once. Returns whether
    /// any came.
    pub(crate) fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        use std::io::{Read, Write};
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        if !wait_readable(std::os::fd::AsFd::as_fd(&self.file), timeout)? {
            return Ok(false);
        }
        let mut ports = [0u8; 64];
        let n = (&self.file).read(&mut ports)?;
        // Writing the ports back unmasks them.
        (&self.file).write_all(&ports[..n - n % 4])?;
        Ok(n > 0)
    }
}
