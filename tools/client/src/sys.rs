// SPDX-License-Identifier: MIT
//! The thin FFI layer of the tools: every system call that needs `unsafe`
//! is here, each wrapped in a safe function that owns what it returns.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper_dmabuf_common::shmem::SharedMem;

/// Converts a `-1`-style return value into an `io::Result`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Calls `ioctl(fd, cmd, record)` with a record of exactly the size the
/// command number encodes; the kernel reads and writes `record` in place.
pub fn ioctl_record<const N: usize>(
    fd: BorrowedFd<'_>,
    cmd: u32,
    record: &mut [u8; N],
) -> io::Result<libc::c_int> {
    // SAFETY: `record` is a valid, writable buffer of N bytes for the whole
    // call, and every command used with this function encodes N as its
    // size, so the kernel accesses only those bytes.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, record.as_mut_ptr()) })
}

/// Calls `ioctl(fd, cmd, record)` for a command whose record has a
/// variable-length tail (an array sized by a count field in the record,
/// as the grant devices' ioctls take); `record` holds the whole of it.
pub fn ioctl_slice(fd: BorrowedFd<'_>, cmd: u32, record: &mut [u8]) -> io::Result<libc::c_int> {
    // SAFETY: `record` is valid and writable for its whole length during
    // the call; callers size it for the count they encode in it, and the
    // kernel accesses no more than that count implies.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, record.as_mut_ptr()) })
}

/// Writes `buf` to `fd` (one `write` call; returns how much was written).
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its whole length.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// CPU time the calling thread has used, user and kernel, in nanoseconds
/// (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`.
pub fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a NUL-terminated string valid for the call.
    let fd = check(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain system call on a borrowed, open descriptor.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

/// `fcntl(fd, F_ADD_SEALS, seals)`.
pub fn add_seals(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: plain system call on a borrowed, open descriptor.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(drop)
}

/// Adopts a descriptor a successful ioctl returned.
pub fn adopt_fd(raw: libc::c_int) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the kernel just created this descriptor for us (an ioctl that
    // returns a new fd), and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A shared memory mapping of a file, unmapped on drop.
///
/// # Invariants
///
/// `ptr` is the start of a live `MAP_SHARED` mapping of `len` bytes that
/// this value owns.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ [| PROT_WRITE], MAP_SHARED, fd, 0)`.
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Self> {
        Self::at(fd, len, 0, writable)
    }

    /// The same at file offset `offset` (the grant devices hand out the
    /// offset of each mapping they prepared).
    pub fn at(fd: BorrowedFd<'_>, len: usize, offset: u64, writable: bool) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address),
        // so no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // INVARIANT: mmap succeeded with this length.
        Ok(Mapping { ptr, len, writable })
    }

    /// The mapped bytes.
    ///
    /// Another domain may write them concurrently; the tool only compares
    /// or copies them, which is sound for plain bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: by the invariant the range is mapped and readable for the
        // lifetime of `self`; u8 has no invalid values.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The 32-bit word at byte `offset`, for indexes shared with another
    /// domain (which updates them concurrently, hence atomic access).
    /// `None` unless the word is aligned and inside the mapping.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if offset % 4 != 0 || offset.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: the word is inside the live mapping (checked above, and
        // by the invariant) and 4-aligned (the mapping is page-aligned);
        // every access to it goes through atomics, here and in the peer;
        // the reference cannot outlive `self`, which owns the mapping.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) })
    }

    /// The whole mapping as 32-bit words shared with another domain, for
    /// code that reads and writes shared rings through atomics (a store
    /// to a mapping without `PROT_WRITE` faults).
    pub fn atomic_words(&self) -> &[AtomicU32] {
        // SAFETY: by the invariant the mapping is live for the lifetime of
        // `&self` and page-aligned; `AtomicU32` has the size and alignment
        // of `u32` and permits concurrent modification by the peer, which
        // accesses the words atomically too.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU32>(), self.len / 4) }
    }

    /// The mapped bytes, writable, if mapped with `PROT_WRITE`.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: mapped writable (checked above) and exclusively borrowed
        // through `&mut self`.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }
}

/// A mapping of pages shared with another domain, reached only through
/// the protocol core's [`SharedMem`], so that its rings
/// (`hyper_dmabuf_common::ring`) can live there: the words through
/// atomics, the bytes copied in and out in one go.
///
/// It hands out no slice of the pages, which is what makes storing bytes
/// through a shared reference sound: no `&[u8]` of them can be alive
/// meanwhile.
pub struct SharedPages(Mapping);

impl From<Mapping> for SharedPages {
    fn from(map: Mapping) -> Self {
        SharedPages(map)
    }
}

impl SharedPages {
    /// The word at `offset`; panics (a caller's bug, as the trait allows)
    /// unless it is aligned and inside the mapping, or, for a store, the
    /// mapping is read-only.
    fn word(&self, offset: usize, store: bool) -> &AtomicU32 {
        assert!(!store || self.0.writable, "a store to a read-only mapping");
        self.0
            .atomic_u32(offset)
            .unwrap_or_else(|| panic!("u32 at {offset} outside a mapping of {} bytes", self.0.len))
    }

    /// The start of `len` bytes at `offset`, with the same checks.
    fn bytes(&self, offset: usize, len: usize, store: bool) -> *mut u8 {
        assert!(!store || self.0.writable, "a store to a read-only mapping");
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.0.len),
            "{len} bytes at {offset} outside a mapping of {} bytes",
            self.0.len
        );
        // SAFETY: `offset` is inside the live mapping (checked above, and
        // by its invariant), so the pointer stays in the same allocation.
        unsafe { self.0.ptr.as_ptr().add(offset) }
    }
}

impl SharedMem for SharedPages {
    fn len(&self) -> usize {
        self.0.len
    }

    fn read_u32(&self, offset: usize) -> u32 {
        self.word(offset, false).load(Ordering::Relaxed)
    }

    fn write_u32(&self, offset: usize, value: u32) {
        self.word(offset, true).store(value, Ordering::Relaxed)
    }

    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.word(offset, false).load(Ordering::Acquire)
    }

    fn store_release_u32(&self, offset: usize, value: u32) {
        self.word(offset, true).store(value, Ordering::Release)
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        let src = self.bytes(offset, dst.len(), false);
        // SAFETY: `src` starts `dst.len()` readable bytes of the live
        // mapping (checked by `bytes`), `dst` as many writable bytes of
        // ours, and the two cannot overlap: nothing hands out a slice of
        // the mapping. The peer may write the pages meanwhile; they are
        // plain bytes, copied out without a reference to them, for the
        // caller to check.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) {
        let dst = self.bytes(offset, src.len(), true);
        // SAFETY: `dst` starts `src.len()` bytes of the live mapping,
        // mapped writable (both checked by `bytes`), which no reference
        // of ours points into and `src` cannot overlap (as above).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: by the invariant we own this mapping; no slice borrowed
        // from it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Reads up to `buf.len()` bytes from `fd`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid and writable for its whole length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Waits up to `timeout_ms` (negative: forever) for `fd` to be readable.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match check(ret) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
