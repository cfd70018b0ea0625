// SPDX-License-Identifier: MIT
//! The crate's only `unsafe` code: the ioctls, the descriptors they
//! return, and shared memory mappings.
//!
//! rustix makes every other system call this crate needs safe (`poll`,
//! `read`, `memfd_create`, seals, `fcntl`). What stays here cannot be made
//! safe by any library: an ioctl is safe only for a command whose argument
//! the caller knows, so each one is wrapped below in a function that names
//! its command and builds any pointer the record carries itself; a
//! descriptor number an ioctl returns becomes an [`OwnedFd`] only on the
//! word of the driver that made it; and memory another domain may write
//! is reached through copies and atomics, never through a reference the
//! compiler may assume stable.

use std::ffi::c_void;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{self, ExportArgs, ImportArgs, ListArgs, QueryArgs, QueryItem};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use rustix::mm::{MapFlags, ProtFlags};

/// An ioctl whose argument is a record of bytes the kernel reads and
/// writes in place; its output is the call's return value.
struct InPlace<'a> {
    opcode: Opcode,
    record: &'a mut [u8],
}

// SAFETY: the pointer handed to the kernel is the start of `record`, live
// and writable for the whole call (it is borrowed mutably for as long as
// this value exists), and the kernel may write it, which `IS_MUTATING`
// says. The output is the return value; nothing is read back through the
// pointer. Whether the command fits the record is the promise of
// `ioctl_in_place`'s callers.
unsafe impl Ioctl for InPlace<'_> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.record.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _record: *mut c_void) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

/// `ioctl(fd, opcode, record)`: the kernel reads and writes `record` in
/// place; returns what the call returned.
///
/// # Safety
///
/// `opcode` must be a command of the driver behind `fd` that touches at
/// most `record.len()` bytes of its argument, and any user address the
/// record carries must be valid for what that command does with it until
/// the call returns.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub unsafe fn ioctl_in_place(
    fd: BorrowedFd<'_>,
    opcode: u32,
    record: &mut [u8],
) -> io::Result<i32> {
    let ioctl = InPlace {
        // The command numbers are 32-bit everywhere; rustix's `Opcode` is
        // as wide or wider, by platform, with the same bits.
        opcode: opcode as Opcode,
        record,
    };
    // SAFETY: the command fits the record, as the caller promises.
    Ok(unsafe { rustix::ioctl::ioctl(fd, ioctl) }?)
}

/// A command whose record is exactly `N` bytes and carries no user
/// address: the kernel touches those `N` bytes and nothing else.
///
/// # Invariants
///
/// The number encodes `N` as its size, and the record of the command it
/// names holds no pointer.
#[derive(Clone, Copy)]
pub(crate) struct Command<const N: usize>(u32);

impl Command<{ ExportArgs::SIZE }> {
    /// `HDMABUF_IOCTL_EXPORT`: a descriptor, ids and private bytes.
    // INVARIANT: uapi's `_IOWR` of the record's size (checked by the
    // tests below); the record holds numbers and bytes only.
    pub(crate) const EXPORT: Self = Command(uapi::IOCTL_EXPORT);
}

impl Command<{ ImportArgs::SIZE }> {
    /// `HDMABUF_IOCTL_IMPORT`: an id and flags in, a descriptor out.
    // INVARIANT: as for EXPORT.
    pub(crate) const IMPORT: Self = Command(uapi::IOCTL_IMPORT);
}

impl Command<{ uapi::UnexportArgs::SIZE }> {
    /// `HDMABUF_IOCTL_UNEXPORT`: an id and a delay.
    // INVARIANT: as for EXPORT.
    pub(crate) const UNEXPORT: Self = Command(uapi::IOCTL_UNEXPORT);
}

impl Command<{ uapi::UpdateArgs::SIZE }> {
    /// `HDMABUF_IOCTL_UPDATE`: an id and private bytes.
    // INVARIANT: uapi's `_IOW` of the record's size (checked by the tests
    // below); the record holds numbers and bytes only.
    pub(crate) const UPDATE: Self = Command(uapi::IOCTL_UPDATE);
}

/// `struct dma_buf_sync { __u64 flags; }` (`linux/dma-buf.h`).
pub(crate) const DMA_BUF_SYNC_LEN: usize = 8;

impl Command<DMA_BUF_SYNC_LEN> {
    /// `DMA_BUF_IOCTL_SYNC`, `_IOW('b', 0, struct dma_buf_sync)`.
    // INVARIANT: `_IOW` of the record's size; the record is flags.
    pub(crate) const DMA_BUF_SYNC: Self =
        Command(rustix::ioctl::opcode::write::<[u8; DMA_BUF_SYNC_LEN]>(b'b', 0) as u32);
}

/// `struct udmabuf_create { __u32 memfd, flags; __u64 offset, size; }`
/// (`linux/udmabuf.h`).
pub(crate) const UDMABUF_CREATE_LEN: usize = 24;

impl Command<UDMABUF_CREATE_LEN> {
    /// `UDMABUF_CREATE`, `_IOW('u', 0x42, struct udmabuf_create)`; returns
    /// the new dma-buf's descriptor.
    // INVARIANT: `_IOW` of the record's size; the record is numbers.
    pub(crate) const UDMABUF_CREATE: Self =
        Command(rustix::ioctl::opcode::write::<[u8; UDMABUF_CREATE_LEN]>(b'u', 0x42) as u32);
}

/// Runs `command` on `fd` with `record`; returns what the call returned.
///
/// `fd` is whatever the caller opened as the command's device. A file of
/// another driver does not know these numbers (each driver owns its type
/// byte in Linux's `ioctl-number.rst`; ours is `0xB9`) and fails them
/// with `ENOTTY`.
pub(crate) fn command<const N: usize>(
    fd: BorrowedFd<'_>,
    command: Command<N>,
    record: &mut [u8; N],
) -> io::Result<i32> {
    // SAFETY: by the invariant of `Command`, the command touches exactly
    // the `N` bytes of `record` and follows no address out of it.
    unsafe { ioctl_in_place(fd, command.0, record) }
}

/// Adopts the descriptor a driver just created for this process.
///
/// # Safety
///
/// `raw` must come from a successful call that returned a new descriptor
/// to its caller, and nothing may have adopted it yet.
unsafe fn adopt(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(rustix::io::Errno::BADF.into());
    }
    // SAFETY: a new descriptor nobody owns yet, as the caller promises.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `HDMABUF_IOCTL_IMPORT` with `record`; the new dma-buf and the record
/// as the driver filled it.
pub(crate) fn import(
    device: BorrowedFd<'_>,
    record: &mut [u8; ImportArgs::SIZE],
) -> io::Result<(OwnedFd, ImportArgs)> {
    command(device, Command::IMPORT, record)?;
    // The descriptor is ours from here on: own it before anything else can
    // fail, or a record we cannot decode would leak it (and keep the
    // import, and the exporter's pages, mapped until this process ends).
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&record[uapi::layout::import::FD.bytes()]);
    // SAFETY: a successful IMPORT returns a new descriptor in `fd`, for
    // this call only (`docs/uapi.md`).
    let fd = unsafe { adopt(i32::from_le_bytes(raw)) }?;
    let out =
        ImportArgs::decode(record).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((fd, out))
}

/// `UDMABUF_CREATE` on `/dev/udmabuf` with `record`: the new dma-buf.
pub(crate) fn udmabuf_create(
    udmabuf: BorrowedFd<'_>,
    record: &mut [u8; UDMABUF_CREATE_LEN],
) -> io::Result<OwnedFd> {
    let raw = command(udmabuf, Command::UDMABUF_CREATE, record)?;
    // SAFETY: a successful UDMABUF_CREATE returns the new dma-buf's
    // descriptor, which only this call has seen.
    unsafe { adopt(raw) }
}

/// `HDMABUF_IOCTL_QUERY` of `item`; for [`QueryItem::Priv`] the driver
/// copies the private data into `data`. Returns the record it filled.
pub(crate) fn query(
    device: BorrowedFd<'_>,
    hid: &HyperDmabufId,
    item: QueryItem,
    data: &mut [u8],
) -> io::Result<QueryArgs> {
    let mut record = QueryArgs {
        hid: *hid,
        item,
        value: 0,
        data_ptr: if data.is_empty() {
            0
        } else {
            data.as_mut_ptr() as u64
        },
        data_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
    }
    .encode();
    // SAFETY: QUERY touches the 56 bytes of its record, which the number
    // encodes, and writes at most `data_len` bytes at `data_ptr`: both
    // describe `data`, borrowed mutably until the call returns (a length
    // over `u32::MAX` is cut, so never beyond it).
    unsafe { ioctl_in_place(device, uapi::IOCTL_QUERY, &mut record) }?;
    QueryArgs::decode(&record).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `HDMABUF_IOCTL_LIST` into `entries`, room for
/// `entries.len() / ListEntry::SIZE` entries. Returns the record the
/// driver filled (its `count` may exceed the room).
pub(crate) fn list(device: BorrowedFd<'_>, entries: &mut [u8]) -> io::Result<ListArgs> {
    let room = entries.len() / uapi::ListEntry::SIZE;
    let mut record = ListArgs {
        entries_ptr: entries.as_mut_ptr() as u64,
        capacity: u32::try_from(room).unwrap_or(u32::MAX),
        count: 0,
    }
    .encode();
    // SAFETY: LIST touches the 16 bytes of its record and writes at most
    // `capacity` entries of `ListEntry::SIZE` bytes at `entries_ptr`:
    // `entries` holds that many and is borrowed mutably until the call
    // returns.
    unsafe { ioctl_in_place(device, uapi::IOCTL_LIST, &mut record) }?;
    Ok(ListArgs::decode(&record))
}

/// A shared mapping of a dma-buf, a memfd or another mappable file,
/// unmapped on drop.
///
/// Another domain (or process) may write the pages at any time, so the
/// mapping hands out no `&[u8]` of them in safe code: bytes are copied in
/// and out ([`Mapping::read_at`], [`Mapping::write_at`],
/// [`Mapping::read_chunks`]) and shared words are reached through atomics
/// ([`Mapping::atomic_u32`]). Code that knows nobody writes the pages
/// meanwhile may borrow them with the `unsafe` [`Mapping::as_slice`].
///
/// A dma-buf's CPU reader brackets its accesses with
/// [`CpuAccess`](crate::CpuAccess).
///
/// # Invariants
///
/// `ptr` starts a live `MAP_SHARED` mapping of `len` bytes, page-aligned,
/// that this value owns; it is mapped writable if `writable`.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is
// tied to the thread that made it, and every access through `&Mapping` is
// a volatile copy or an atomic, which any thread may make.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access never forms a plain reference.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// How many bytes [`Mapping::read_chunks`] and
    /// [`Mapping::write_chunks`] copy at a time.
    pub const CHUNK: usize = 1 << 20;

    /// Maps the first `len` bytes of `fd`, read-only unless `writable`.
    ///
    /// # Errors
    ///
    /// What `mmap` says: `EINVAL` for a length of zero, `EACCES` for a
    /// writable mapping of a read-only descriptor (a read-only import),
    /// `ENODEV` for a file that cannot be mapped.
    ///
    /// # Safety
    ///
    /// The file must hold `len` bytes for as long as the mapping lives:
    /// `mmap` maps a range past the end of a file (or one that shrinks
    /// later) all the same, and an access there faults (`SIGBUS`). A
    /// dma-buf never changes size; a memfd does only without
    /// `F_SEAL_SHRINK`. [`Imported::map`](crate::Imported::map) and
    /// [`Udmabuf::map`](crate::Udmabuf::map) check it for their files.
    pub unsafe fn new(fd: impl AsFd, len: usize, writable: bool) -> io::Result<Self> {
        // SAFETY: the caller's promise, passed on.
        unsafe { Self::at(fd, len, 0, writable) }
    }

    /// Checks that `fd` is at least `len` bytes long now, before a mapping
    /// of its files whose size cannot change afterwards (a dma-buf, a
    /// memfd sealed against shrinking).
    ///
    /// # Errors
    ///
    /// What `fstat` says, or `EINVAL` if the file is shorter.
    pub(crate) fn check_file_holds(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
        let size = rustix::fs::fstat(fd)?.st_size;
        match u64::try_from(size) {
            Ok(size) if u64::try_from(len).is_ok_and(|len| len <= size) => Ok(()),
            _ => Err(rustix::io::Errno::INVAL.into()),
        }
    }

    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page
    /// size), as Xen's grant devices hand out.
    ///
    /// # Errors
    ///
    /// As [`Mapping::new`].
    ///
    /// # Safety
    ///
    /// The file must hold `offset + len` bytes (for a device: the range
    /// must stay mappable) for as long as the mapping lives, as for
    /// [`Mapping::new`].
    pub unsafe fn at(fd: impl AsFd, len: usize, offset: u64, writable: bool) -> io::Result<Self> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new mapping at an address the kernel picks (no
        // `MAP_FIXED`): no memory of this process is replaced, and no
        // reference to the new range exists.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(io::ErrorKind::OutOfMemory)?;
        // INVARIANT: `mmap` mapped `len` bytes at `ptr` (page-aligned),
        // with these protections, for this value alone.
        Ok(Mapping { ptr, len, writable })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it is mapped writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The address of `len` bytes at `offset`.
    ///
    /// # Panics
    ///
    /// If the range leaves the mapping.
    fn range(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "{len} bytes at {offset} leave a mapping of {} bytes",
            self.len
        );
        // SAFETY: `offset` is inside the mapping or at its end (checked
        // above), so the pointer stays within the same mapping.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`.
    ///
    /// # Panics
    ///
    /// If the range leaves the mapping, as slice indexing does.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) {
        let src = self.range(offset, dst.len());
        // SAFETY: `src` starts `dst.len()` readable bytes of the live
        // mapping (checked by `range`, and by the invariant); `dst` is
        // ours and cannot overlap them, since safe code never holds a
        // slice of the mapping.
        unsafe { volatile_copy(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into the mapping at `offset`.
    ///
    /// # Panics
    ///
    /// If the range leaves the mapping, or it is read-only.
    pub fn write_at(&self, offset: usize, src: &[u8]) {
        assert!(self.writable, "a write to a read-only mapping");
        let dst = self.range(offset, src.len());
        // SAFETY: `dst` starts `src.len()` bytes of the live mapping,
        // mapped writable (both checked above); no reference of safe code
        // points into the mapping, and `src` cannot overlap it (as in
        // `read_at`).
        unsafe { volatile_copy(src.as_ptr(), dst, src.len()) }
    }

    /// A copy of the whole mapping as 32-bit words in the machine's byte
    /// order (a read-only mapping's answer to [`Mapping::atomic_words`]).
    pub fn read_words(&self) -> Vec<u32> {
        self.to_vec()
            .chunks_exact(4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    }

    /// A copy of the whole mapping.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; self.len];
        self.read_at(0, &mut bytes);
        bytes
    }

    /// Copies the whole mapping out, [`Mapping::CHUNK`] bytes at a time, handing
    /// each piece and its offset to `f`; stops early with what `f` breaks
    /// with.
    pub fn read_chunks<B>(&self, mut f: impl FnMut(usize, &[u8]) -> ControlFlow<B>) -> Option<B> {
        let mut chunk = vec![0u8; Self::CHUNK.min(self.len)];
        let mut offset = 0;
        while offset < self.len {
            let piece = &mut chunk[..Self::CHUNK.min(self.len - offset)];
            self.read_at(offset, piece);
            if let ControlFlow::Break(b) = f(offset, piece) {
                return Some(b);
            }
            offset += piece.len();
        }
        None
    }

    /// Writes the whole mapping, [`Mapping::CHUNK`] bytes at a time, each piece
    /// made by `f` from its offset (the piece starts zeroed).
    ///
    /// # Panics
    ///
    /// If the mapping is read-only.
    pub fn write_chunks(&self, mut f: impl FnMut(usize, &mut [u8])) {
        let mut chunk = vec![0u8; Self::CHUNK.min(self.len)];
        let mut offset = 0;
        while offset < self.len {
            let piece = &mut chunk[..Self::CHUNK.min(self.len - offset)];
            piece.fill(0);
            f(offset, piece);
            self.write_at(offset, piece);
            offset += piece.len();
        }
    }

    /// The 32-bit word at byte `offset`, for indexes shared with another
    /// domain that updates them concurrently (hence atomic access).
    /// `None` unless the word is aligned and inside the mapping.
    /// `None` too for a read-only mapping: an atomic is made for memory
    /// it may store to (`AtomicU32::from_ptr`); read those words with
    /// [`Mapping::read_words`].
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if !self.writable || offset % 4 != 0 || offset.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: the word is inside the live mapping (checked above, and
        // by the invariant) and 4-aligned (the mapping is page-aligned);
        // `AtomicU32` allows concurrent modification, which is what the
        // peer does; the reference cannot outlive `self`, which owns the
        // mapping.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) })
    }

    /// The whole mapping as 32-bit words shared with another domain, for
    /// rings whose every access is atomic.
    ///
    /// # Panics
    ///
    /// If the mapping is read-only: an atomic is made for memory it may
    /// store to (`AtomicU32::from_ptr`); read such words with
    /// [`Mapping::read_words`].
    pub fn atomic_words(&self) -> &[AtomicU32] {
        assert!(self.writable, "atomic access to a read-only mapping");
        // SAFETY: by the invariant the mapping is live for the lifetime of
        // `&self` and page-aligned; `AtomicU32` has the size and alignment
        // of `u32` and permits concurrent modification by the peer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU32>(), self.len / 4) }
    }

    /// The mapped bytes, borrowed.
    ///
    /// # Safety
    ///
    /// Nobody may write the pages while the slice is alive: no other
    /// process or domain, and not this one through [`Mapping::write_at`]
    /// or [`Mapping::atomic_words`]. (Memory that changes under a `&[u8]`
    /// breaks what the compiler assumes of it.)
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: by the invariant the range is mapped and readable for the
        // lifetime of `&self`; u8 has no invalid values; the caller
        // promises the bytes do not change meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, borrowed writable; `None` for a read-only
    /// mapping.
    ///
    /// # Safety
    ///
    /// Nobody else may read or write the pages while the slice is alive:
    /// no other process or domain (this one is kept out by `&mut self`).
    pub unsafe fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: mapped writable (checked above) and borrowed exclusively
        // through `&mut self`; the caller promises nobody else accesses
        // the pages meanwhile.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }
}

/// Copies `len` bytes from `src` to `dst`, one side being shared memory
/// that another domain, process or thread may write meanwhile: every
/// access to it is volatile (as rust-vmm's guest-memory accesses are), so
/// the compiler neither assumes the bytes stay put nor merges or invents
/// accesses; a racing writer changes the values copied, nothing else. The
/// aligned middle goes a machine word at a time.
///
/// # Safety
///
/// `src` is valid for `len` bytes of reads, `dst` for `len` bytes of
/// writes, and the two ranges do not overlap.
unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize) {
    const WORD: usize = std::mem::size_of::<u64>();
    let mut done = 0;
    // Both sides aligned alike: the middle can go by words.
    if (src as usize) % WORD == (dst as usize) % WORD {
        let head = (WORD - (src as usize) % WORD) % WORD;
        while done < head.min(len) {
            // SAFETY: `done < len`: inside both ranges (caller's promise).
            unsafe { dst.add(done).write_volatile(src.add(done).read_volatile()) };
            done += 1;
        }
        while len - done >= WORD {
            // SAFETY: `WORD` bytes from `done` are inside both ranges, and
            // 8-aligned on both sides (same alignment, `head` skipped).
            unsafe {
                let word = src.add(done).cast::<u64>().read_volatile();
                dst.add(done).cast::<u64>().write_volatile(word);
            }
            done += WORD;
        }
    }
    while done < len {
        // SAFETY: `done < len`: inside both ranges (caller's promise).
        unsafe { dst.add(done).write_volatile(src.add(done).read_volatile()) };
        done += 1;
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: by the invariant this value owns the mapping; every
        // borrow of it ended with the borrow of `self`. An error (none is
        // possible for a range `mmap` made) would leave it mapped, which
        // is harmless.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_dmabuf_common::uapi::UnexportArgs;
    use rustix::fs::MemfdFlags;
    use rustix::ioctl::opcode;
    use std::sync::atomic::Ordering;

    /// The size a command number encodes (`_IOC_SIZE`).
    fn encoded_size(number: u32) -> usize {
        ((number >> 16) & 0x3fff) as usize
    }

    #[test]
    fn commands_encode_their_record_size() {
        assert_eq!(encoded_size(Command::EXPORT.0), ExportArgs::SIZE);
        assert_eq!(encoded_size(Command::IMPORT.0), ImportArgs::SIZE);
        assert_eq!(encoded_size(Command::UNEXPORT.0), UnexportArgs::SIZE);
        assert_eq!(encoded_size(Command::UPDATE.0), uapi::UpdateArgs::SIZE);
        assert_eq!(encoded_size(Command::DMA_BUF_SYNC.0), DMA_BUF_SYNC_LEN);
        assert_eq!(encoded_size(Command::UDMABUF_CREATE.0), UDMABUF_CREATE_LEN);
        // The kernel headers' values.
        assert_eq!(Command::DMA_BUF_SYNC.0, 0x4008_6200);
        assert_eq!(Command::UDMABUF_CREATE.0, 0x4018_7542);
    }

    #[test]
    fn the_device_numbers_are_the_iowr_of_their_records() {
        let iowr = |nr, size| match size {
            ExportArgs::SIZE => opcode::read_write::<[u8; ExportArgs::SIZE]>(uapi::IOCTL_MAGIC, nr),
            ImportArgs::SIZE => opcode::read_write::<[u8; ImportArgs::SIZE]>(uapi::IOCTL_MAGIC, nr),
            UnexportArgs::SIZE => {
                opcode::read_write::<[u8; UnexportArgs::SIZE]>(uapi::IOCTL_MAGIC, nr)
            }
            QueryArgs::SIZE => opcode::read_write::<[u8; QueryArgs::SIZE]>(uapi::IOCTL_MAGIC, nr),
            ListArgs::SIZE => opcode::read_write::<[u8; ListArgs::SIZE]>(uapi::IOCTL_MAGIC, nr),
            _ => unreachable!(),
        } as u32;
        assert_eq!(uapi::IOCTL_EXPORT, iowr(1, ExportArgs::SIZE));
        assert_eq!(uapi::IOCTL_IMPORT, iowr(2, ImportArgs::SIZE));
        assert_eq!(uapi::IOCTL_UNEXPORT, iowr(3, UnexportArgs::SIZE));
        assert_eq!(uapi::IOCTL_QUERY, iowr(4, QueryArgs::SIZE));
        assert_eq!(uapi::IOCTL_LIST, iowr(5, ListArgs::SIZE));
        assert_eq!(
            uapi::IOCTL_UPDATE,
            opcode::write::<[u8; uapi::UpdateArgs::SIZE]>(uapi::IOCTL_MAGIC, 6) as u32
        );
    }

    fn memfd(len: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("mapping", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    /// A mapping of a test's own memfd.
    fn map(fd: &OwnedFd, len: usize, writable: bool) -> Mapping {
        // SAFETY: the tests size their memfds before mapping and never
        // shrink them.
        unsafe { Mapping::new(fd, len, writable) }.unwrap()
    }

    #[test]
    fn copies_of_every_alignment_and_length_are_exact() {
        let fd = memfd(2 * 4096);
        let m = map(&fd, 2 * 4096, true);
        let source: Vec<u8> = (0..200u8).collect();
        for offset in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 200] {
                m.write_at(0, &[0xee; 256]);
                m.write_at(offset, &source[..len]);
                let mut back = vec![0u8; len + 2];
                m.read_at(offset, &mut back[1..=len]);
                assert_eq!(&back[1..=len], &source[..len], "at {offset}, {len} bytes");
                let mut after = [0u8];
                m.read_at(offset + len, &mut after);
                assert_eq!(
                    after,
                    [0xee],
                    "nothing written past {len} bytes at {offset}"
                );
            }
        }
    }

    #[test]
    fn a_file_shorter_than_the_mapping_is_refused() {
        let fd = memfd(4096);
        assert!(Mapping::check_file_holds(fd.as_fd(), 4096).is_ok());
        let err = Mapping::check_file_holds(fd.as_fd(), 8192).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_einval()));
    }

    fn libc_einval() -> i32 {
        rustix::io::Errno::INVAL.raw_os_error()
    }

    #[test]
    fn copies_in_and_out_reach_the_file() {
        let fd = memfd(3 * 4096);
        let writer = map(&fd, 3 * 4096, true);
        let reader = map(&fd, 3 * 4096, false);
        writer.write_at(4090, b"across a page");
        let mut seen = [0u8; 13];
        reader.read_at(4090, &mut seen);
        assert_eq!(&seen, b"across a page");
        assert_eq!(&reader.to_vec()[4090..4103], b"across a page");
        // The same bytes through the file itself.
        let mut through_file = [0u8; 13];
        rustix::io::pread(&fd, &mut through_file[..], 4090).unwrap();
        assert_eq!(through_file, seen);
    }

    #[test]
    fn chunks_cover_the_mapping_once_in_order() {
        let len = Mapping::CHUNK * 2 + 4096;
        let fd = memfd(len as u64);
        let map = map(&fd, len, true);
        map.write_chunks(|offset, piece| piece.fill((offset / Mapping::CHUNK) as u8 + 1));
        let mut pieces = Vec::new();
        let never = map.read_chunks(|offset, piece| {
            assert!(piece
                .iter()
                .all(|&b| usize::from(b) == offset / Mapping::CHUNK + 1));
            pieces.push((offset, piece.len()));
            std::ops::ControlFlow::<()>::Continue(())
        });
        assert_eq!(never, None);
        assert_eq!(
            pieces,
            [
                (0, Mapping::CHUNK),
                (Mapping::CHUNK, Mapping::CHUNK),
                (2 * Mapping::CHUNK, 4096)
            ]
        );
        let found = map.read_chunks(|offset, _| {
            if offset > 0 {
                std::ops::ControlFlow::Break(offset)
            } else {
                std::ops::ControlFlow::Continue(())
            }
        });
        assert_eq!(found, Some(Mapping::CHUNK));
    }

    #[test]
    fn atomics_see_each_other_through_two_mappings() {
        let fd = memfd(4096);
        let a = map(&fd, 4096, true);
        let b = map(&fd, 4096, true);
        a.atomic_u32(8).unwrap().store(0xfeed, Ordering::Release);
        assert_eq!(b.atomic_words()[2].load(Ordering::Acquire), 0xfeed);
        assert!(a.atomic_u32(6).is_none(), "unaligned");
        assert!(a.atomic_u32(4094).is_none(), "past the end");
        assert_eq!(a.atomic_words().len(), 1024);
        let reader = map(&fd, 4096, false);
        assert!(reader.atomic_u32(8).is_none(), "read-only");
        assert_eq!(reader.read_words()[2], 0xfeed);
    }

    #[test]
    #[should_panic(expected = "atomic access to a read-only mapping")]
    fn a_read_only_mapping_gives_no_atomics() {
        let fd = memfd(4096);
        let _ = map(&fd, 4096, false).atomic_words();
    }

    #[test]
    #[should_panic(expected = "read-only")]
    fn a_read_only_mapping_refuses_writes() {
        let fd = memfd(4096);
        map(&fd, 4096, false).write_at(0, b"x");
    }

    #[test]
    #[should_panic(expected = "leave a mapping of 4096 bytes")]
    fn copies_stay_inside() {
        let fd = memfd(4096);
        map(&fd, 4096, false).read_at(4095, &mut [0u8; 2]);
    }

    #[test]
    fn mmap_errors_are_returned() {
        let fd = memfd(4096);
        // SAFETY: nothing is mapped: both calls fail.
        unsafe {
            assert_eq!(
                Mapping::new(&fd, 0, false).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            let read_only = std::fs::File::open("/dev/null").unwrap();
            assert!(Mapping::new(&read_only, 4096, true).is_err());
        }
    }
}
