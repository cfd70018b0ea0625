// SPDX-License-Identifier: MIT
//! `/dev/xen/hyper_dmabuf` and its commands: export, import, unexport,
//! query, list. Events are in [`crate::events`].

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::limits::MAX_PRIV_LEN;
use hyper_dmabuf_common::uapi::{
    self, ExportArgs, ImportArgs, ListEntry, QueryItem, UnexportArgs, UpdateArgs, DEVICE_PATH,
};
use hyper_dmabuf_common::wire::{ExportFlags, PrivData};
use hyper_dmabuf_common::xen::DomId;
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::sys::{self, Command, Mapping};

/// No flag: a read-only export.
const READ_ONLY: ExportFlags = match ExportFlags::from_bits(0) {
    Ok(flags) => flags,
    Err(_) => panic!("0 sets no flag"),
};

/// An open `/dev/xen/hyper_dmabuf`: the capability to share buffers with
/// the domains this domain has a `hyper_dmabuf` device with.
///
/// Each open file is its own client: the buffers it exports belong to it
/// (it alone, or a file opened by an administrator, may unexport them),
/// it has its own queue of events, and closing it unexports what it
/// exported. It may be shared between threads (`&Device` is enough for
/// everything) and passed to another process as a descriptor
/// (`Device::try_from(OwnedFd)`).
///
/// ```no_run
/// use hyper_dmabuf_client::{Device, DomId, ExportOptions, PrivData, Udmabuf};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let device = Device::open()?;
/// let buffer = Udmabuf::new(1 << 20)?;
/// let options = ExportOptions::new().private_data(PrivData::new(b"frame 1")?);
/// let id = device.export(&buffer, DomId::new(0)?, &options)?;
/// println!("exported {id}: give this id to the importer");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
}

/// How to export: read-only or read-write, and the private data the
/// importer receives with the buffer.
///
/// ```
/// use hyper_dmabuf_client::{ExportOptions, PrivData};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let options = ExportOptions::new()
///     .writable(true)
///     .private_data(PrivData::new(b"1920x1080 XR24")?);
/// assert!(options.is_writable());
/// assert_eq!(options.priv_data().as_bytes(), b"1920x1080 XR24");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    flags: ExportFlags,
    priv_data: PrivData,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ExportOptions {
    /// Read-only, no private data.
    pub const fn new() -> Self {
        ExportOptions {
            flags: READ_ONLY,
            priv_data: PrivData::EMPTY,
        }
    }

    /// Lets the importer map the buffer writable (the device must allow
    /// it: `rw=1` in the domain's configuration).
    pub const fn writable(mut self, writable: bool) -> Self {
        self.flags = if writable {
            ExportFlags::WRITABLE
        } else {
            READ_ONLY
        };
        self
    }

    /// Bytes for the importer (at most 192), delivered with the buffer's
    /// `NewExport` event; exporting the same buffer again changes them
    /// (the importer gets an `Update` event).
    pub const fn private_data(mut self, priv_data: PrivData) -> Self {
        self.priv_data = priv_data;
        self
    }

    /// Whether the importer may map the buffer writable.
    pub const fn is_writable(&self) -> bool {
        self.flags.contains(ExportFlags::WRITABLE)
    }

    /// The export flags.
    pub const fn flags(&self) -> ExportFlags {
        self.flags
    }

    /// The private data.
    pub const fn priv_data(&self) -> &PrivData {
        &self.priv_data
    }

    /// The record of an export of `dmabuf` to `domain` with these options.
    fn args(&self, dmabuf: BorrowedFd<'_>, domain: DomId) -> ExportArgs {
        ExportArgs {
            dmabuf_fd: dmabuf.as_raw_fd(),
            remote: domain,
            flags: self.flags,
            priv_data: self.priv_data,
            hid: None,
        }
    }
}

/// An imported buffer: a dma-buf of this domain over the exporter's pages.
///
/// Hand `fd` to whatever consumes dma-bufs (a GPU or display API, V4L2),
/// or map it ([`Imported::map`]). The buffer stays imported while any
/// descriptor of it or mapping of it exists; the exporter learns of the
/// release (`Released`) after the last one goes.
#[derive(Debug)]
pub struct Imported {
    /// The dma-buf (`O_CLOEXEC`).
    pub fd: OwnedFd,
    /// Its size in bytes, a multiple of the page size.
    pub size: u64,
    /// Whether the dma-buf is `O_RDWR`: imported read-write, or asked
    /// read-only while this domain maps the buffer read-write already
    /// (the import is then that same dma-buf).
    pub writable: bool,
}

impl Imported {
    /// Maps the whole buffer, writable if it was imported so. Bracket
    /// CPU accesses with [`CpuAccess`](crate::CpuAccess).
    ///
    /// # Errors
    ///
    /// What `mmap` says ([`Mapping::new`]); a size that does not fit this
    /// process's address space is `InvalidInput`.
    pub fn map(&self) -> Result<Mapping> {
        let (fd, what) = (self.fd.as_fd(), "an imported buffer");
        // SAFETY: `fd` is the dma-buf IMPORT returned. (The fields are public:
        // an `Imported` built by hand around another file was mapped on this
        // same promise before; see the note of stop 22.)
        unsafe { crate::dmabuf::map_dmabuf(fd, self.size, self.writable, what) }
    }
}

impl AsFd for Imported {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Imported> for OwnedFd {
    fn from(imported: Imported) -> OwnedFd {
        imported.fd
    }
}

/// Everything the device tells of a buffer ([`Device::info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferInfo {
    /// Whether this domain imported it (otherwise it exported it).
    pub imported: bool,
    /// The exporting domain.
    pub exporter: DomId,
    /// The importing domain.
    pub importer: DomId,
    /// Size in bytes.
    pub size: u64,
    /// Whether the importer maps it.
    pub busy: bool,
    /// Whether it was unexported (revoked).
    pub unexported: bool,
    /// Whether a delayed unexport is pending.
    pub delayed_unexport: bool,
    /// The export flags.
    pub flags: ExportFlags,
    /// The private data.
    pub priv_data: PrivData,
}

impl Device {
    /// Opens [`DEVICE_PATH`], `/dev/xen/hyper_dmabuf`.
    ///
    /// # Errors
    ///
    /// What `open` says; `ENOENT` (the driver is not loaded) and `EACCES`
    /// (the node is root's) come with a hint.
    pub fn open() -> Result<Self> {
        Self::open_path(DEVICE_PATH)
    }

    /// Opens the device node at `path`.
    ///
    /// # Errors
    ///
    /// As [`Device::open`].
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Non-blocking: `poll` then `read` is how every wait here goes, and
        // with two readers of one file (threads, or a process and its
        // child) the one that loses the race must not sleep in `read`
        // until the next event.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| Error::hinted(format!("opening {}", path.display()), e, open_hint))?;
        Ok(Device { fd: file.into() })
    }

    /// Shares the pages of `dmabuf`, a dma-buf of this domain's memory,
    /// with `domain`; returns the id the importer asks for.
    ///
    /// Exporting the same dma-buf to the same domain again, through this
    /// device file and with the same options' flags, returns the same id
    /// and replaces its private data. The export lasts until
    /// [`Device::unexport`], or until this open file is closed.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` (no device links the two domains), `EINVAL` (not a
    /// dma-buf of whole RAM pages, or exported already with other flags),
    /// `EPERM` (read-write not allowed, or another file's export),
    /// `EINTR` (a signal; the export was withdrawn),
    /// `E2BIG`, `ENOSPC`/`ENOMEM`, `ETIMEDOUT`, and `EAGAIN` (the ring is
    /// full: [`Error::should_retry`]); each with a hint.
    pub fn export(
        &self,
        dmabuf: impl AsFd,
        domain: DomId,
        options: &ExportOptions,
    ) -> Result<HyperDmabufId> {
        let action = || format!("exporting to domain {domain}");
        let mut record = options.args(dmabuf.as_fd(), domain).encode();
        sys::command(self.fd.as_fd(), Command::EXPORT, &mut record)
            .map_err(|e| Error::hinted(action(), e, export_hint))?;
        ExportArgs::decode_out(&record)
            .map_err(|e| Error::invalid_data(action(), format_args!("the driver's id: {e}")))
    }

    /// Imports the buffer `id`, exported to this domain, as a new dma-buf;
    /// writable only if `writable` and the export allows it.
    ///
    /// # Errors
    ///
    /// `ENOENT` (no such buffer for this domain, or revoked), `EPERM`
    /// (read-write asked of a read-only export), `EIO`, `EBUSY`, and
    /// `EAGAIN` ([`Error::should_retry`]); each with a hint.
    pub fn import(&self, id: &HyperDmabufId, writable: bool) -> Result<Imported> {
        let mut record = import_args(id, writable).encode();
        let action = || format!("importing {id}");
        let (fd, out) = sys::import(self.fd.as_fd(), &mut record)
            .map_err(|e| Error::hinted(action(), e, import_hint))?;
        // What the descriptor is, not what was asked: a buffer this domain
        // maps read-write already comes back as that same file, O_RDWR.
        // The driver says so; one that did not yet is asked.
        let writable = match out.writable_out() {
            Some(writable) => writable,
            None => {
                let mode =
                    rustix::fs::fcntl_getfl(&fd).map_err(|e| Error::new(action(), e.into()))?;
                mode & rustix::fs::OFlags::RWMODE == rustix::fs::OFlags::RDWR
            }
        };
        Ok(Imported {
            fd,
            size: out.size,
            writable,
        })
    }

    /// Announces a new frame in a buffer this file exported (or any, for a
    /// file opened by an administrator): its private data becomes
    /// `priv_data`, and the importer gets an `Update` event with it. Returns
    /// once the message is queued, without waiting for the importer; when
    /// the ring is full the kernel keeps each buffer's newest frame and
    /// sends it in turn. The cost is the same at every buffer size.
    ///
    /// # Errors
    ///
    /// `ENOENT` (this domain exports no such buffer, or it is being
    /// unexported), `EPERM` (another file's), `ENOTCONN` (the peer is not
    /// connected), `EAGAIN` (256 other buffers' frames wait already:
    /// [`Error::should_retry`]).
    pub fn update(&self, id: &HyperDmabufId, priv_data: PrivData) -> Result<()> {
        let mut record = UpdateArgs {
            hid: *id,
            priv_data,
        }
        .encode();
        sys::command(self.fd.as_fd(), Command::UPDATE, &mut record)
            .map(drop)
            .map_err(|e| Error::hinted(format!("updating {id}"), e, update_hint))
    }

    /// Revokes a buffer this file exported (or any, for a file opened by
    /// an administrator), after `delay` (at most 10 minutes; exporting it
    /// again before then cancels it). Importers get an `Unexport` event;
    /// this file gets `GrantsEnded` once no importer maps it any more.
    ///
    /// # Errors
    ///
    /// `ENOENT` (this domain exports no such buffer), `EPERM` (another
    /// file's), `EINVAL` (a delay over 10 minutes).
    pub fn unexport(&self, id: &HyperDmabufId, delay: Duration) -> Result<()> {
        let mut record = UnexportArgs {
            hid: *id,
            // Rounded up: a delay under a millisecond is still a delay,
            // not "now". The driver refuses what is too long (EINVAL).
            delay_ms: u32::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX),
        }
        .encode();
        sys::command(self.fd.as_fd(), Command::UNEXPORT, &mut record)
            .map(drop)
            .map_err(|e| Error::hinted(format!("unexporting {id}"), e, unexport_hint))
    }

    /// Asks one thing about a buffer this domain exports or imports (for
    /// [`QueryItem::Priv`], the length of its private data; the data
    /// itself is [`Device::private_data`]).
    ///
    /// # Errors
    ///
    /// `ENOENT`: no such buffer, or another file's export.
    pub fn query(&self, id: &HyperDmabufId, item: QueryItem) -> Result<u64> {
        if item == QueryItem::Priv {
            return Ok(self.private_data(id)?.len() as u64);
        }
        sys::query(self.fd.as_fd(), id, item, &mut [])
            .map(|out| out.value)
            .map_err(|e| Error::hinted(format!("querying {id}"), e, query_hint))
    }

    /// The private data of a buffer this domain exports or imports.
    ///
    /// # Errors
    ///
    /// As [`Device::query`].
    pub fn private_data(&self, id: &HyperDmabufId) -> Result<PrivData> {
        let action = || format!("querying the private data of {id}");
        let mut data = [0u8; MAX_PRIV_LEN];
        let out = sys::query(self.fd.as_fd(), id, QueryItem::Priv, &mut data)
            .map_err(|e| Error::hinted(action(), e, query_hint))?;
        let len = usize::try_from(out.value)
            .ok()
            .filter(|&len| len <= data.len())
            .ok_or_else(|| {
                Error::invalid_data(action(), format_args!("a length of {}", out.value))
            })?;
        PrivData::new(&data[..len]).map_err(|e| Error::invalid_data(action(), e))
    }

    /// Everything the device tells of a buffer, one query at a time (so
    /// not one snapshot: the buffer may change between two of them).
    ///
    /// # Errors
    ///
    /// As [`Device::query`].
    pub fn info(&self, id: &HyperDmabufId) -> Result<BufferInfo> {
        let value = |item| self.query(id, item);
        let bad = |item: QueryItem, value: u64| {
            Error::invalid_data(format!("querying {id}"), format_args!("{item:?} {value}"))
        };
        let domain = |item| {
            let raw = value(item)?;
            u32::try_from(raw)
                .ok()
                .and_then(|raw| DomId::new(raw).ok())
                .ok_or_else(|| bad(item, raw))
        };
        let flags = value(QueryItem::Flags)?;
        Ok(BufferInfo {
            imported: value(QueryItem::Type)? == u64::from(uapi::KIND_IMPORTED),
            exporter: domain(QueryItem::Exporter)?,
            importer: domain(QueryItem::Importer)?,
            size: value(QueryItem::Size)?,
            busy: value(QueryItem::Busy)? != 0,
            unexported: value(QueryItem::Unexported)? != 0,
            delayed_unexport: value(QueryItem::DelayedUnexported)? != 0,
            flags: u32::try_from(flags)
                .ok()
                .and_then(|bits| ExportFlags::from_bits(bits).ok())
                .ok_or_else(|| bad(QueryItem::Flags, flags))?,
            priv_data: self.private_data(id)?,
        })
    }

    /// Every buffer this domain exports (through this file, or any for an
    /// administrator's file) or may import.
    ///
    /// # Errors
    ///
    /// What the driver says; entries this crate cannot read are
    /// `InvalidData`.
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        const ACTION: &str = "listing buffers";
        let mut room = 64usize;
        loop {
            let bytes = room
                .checked_mul(ListEntry::SIZE)
                .ok_or_else(|| Error::invalid_data(ACTION, "more buffers than memory"))?;
            let mut entries = vec![0u8; bytes];
            let out =
                sys::list(self.fd.as_fd(), &mut entries).map_err(|e| Error::new(ACTION, e))?;
            let count = out.count as usize;
            if count > room {
                // More appeared than there was room for: ask again with
                // some slack for those that keep appearing.
                room = count.saturating_add(16);
                continue;
            }
            return entries
                .chunks_exact(ListEntry::SIZE)
                .take(count)
                .map(|chunk| {
                    <&[u8; ListEntry::SIZE]>::try_from(chunk)
                        .map_err(|e| Error::invalid_data(ACTION, e))
                        .and_then(|raw| {
                            ListEntry::decode(raw).map_err(|e| Error::invalid_data(ACTION, e))
                        })
                })
                .collect();
        }
    }

    /// Makes reads of this file non-blocking, or not (`FIONBIO`).
    /// [`Device::open`] opens it non-blocking, and the waits of this crate
    /// need it so (a blocking `read` sleeps until an event comes, and with
    /// two readers of one file the one that lost the race to the last
    /// event would sleep there): clear it only on a file nobody else
    /// reads. A [`Device`] made `From` a descriptor keeps its flags.
    ///
    /// # Errors
    ///
    /// What `ioctl(FIONBIO)` says.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        rustix::io::ioctl_fionbio(&self.fd, nonblocking)
            .map_err(|e| Error::new("setting O_NONBLOCK", e.into()))
    }
}

impl AsFd for Device {
    /// The descriptor, to wait for events with `poll`, `epoll` or an
    /// async runtime ([`crate::events`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Device {
    /// A descriptor taken as the device's without a look at what it is.
    ///
    /// # Safety
    ///
    /// `fd` is the device's, or a file on which none of the device's
    /// command numbers does anything: an IMPORT's answer is a new
    /// descriptor this value takes ownership of, and another driver that
    /// answered the same number would hand it a number it does not own.
    pub unsafe fn from_fd_unchecked(fd: OwnedFd) -> Self {
        Device { fd }
    }
}

impl TryFrom<OwnedFd> for Device {
    type Error = Error;

    /// A descriptor of the device opened elsewhere (received over a
    /// socket, inherited): checked to be the character device at
    /// [`DEVICE_PATH`]. Its flags are kept ([`Device::set_nonblocking`]).
    ///
    /// # Errors
    ///
    /// What `fstat`/`stat` say, or `ENOTTY` for any other file.
    fn try_from(fd: OwnedFd) -> Result<Self> {
        const ACTION: &str = "taking a descriptor as the device's";
        let theirs = rustix::fs::fstat(&fd).map_err(|e| Error::new(ACTION, e.into()))?;
        let ours = rustix::fs::stat(DEVICE_PATH).map_err(|e| Error::new(ACTION, e.into()))?;
        let is_char = |st: &rustix::fs::Stat| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
        };
        if !is_char(&theirs) || !is_char(&ours) || theirs.st_rdev != ours.st_rdev {
            return Err(Error::new(ACTION, Errno::NOTTY.into()));
        }
        Ok(Device { fd })
    }
}

impl From<Device> for OwnedFd {
    fn from(device: Device) -> OwnedFd {
        device.fd
    }
}

/// The record of an import of `id`.
fn import_args(id: &HyperDmabufId, writable: bool) -> ImportArgs {
    ImportArgs {
        hid: *id,
        flags: if writable { uapi::IMPORT_RW } else { 0 },
        fd: -1,
        size: 0,
    }
}

fn open_hint(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::NOENT => {
            Some("the hyper_dmabuf driver is not loaded in this domain: modprobe hyper_dmabuf")
        }
        Errno::ACCESS | Errno::PERM => Some("the device is root-only: run as root"),
        _ => None,
    }
}

fn export_hint(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::NOTCONN => Some(
            "no connected hyper_dmabuf device links this domain to that one: attach one \
             (hdmabuf xl attach DOMID in dom0) and load the driver in both domains",
        ),
        Errno::PERM => Some(
            "read-write sharing is not enabled on this device (feature-rw=0 / rw=0), or \
             another open file of the device exported this buffer to that domain",
        ),
        Errno::TOOBIG => Some("the buffer is larger than the device's max-buffer-size"),
        Errno::TIMEDOUT => Some("the peer domain did not answer; is its driver running?"),
        Errno::INVAL => Some(
            "the fd must be a dma-buf of this domain's own RAM pages (not an import), \
             whole pages from offset 0; or it is exported already with other flags: \
             unexport it first",
        ),
        Errno::INTR => Some("a signal came while waiting for the peer: export again"),
        Errno::NOSPC | Errno::NOMEM => {
            Some("the peer or this domain keeps no more buffers: unexport some first")
        }
        Errno::AGAIN => Some("the ring to that domain is full: retry"),
        _ => None,
    }
}

fn import_hint(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::NOENT => Some(
            "no buffer with this id was exported to this domain (unexported, or the exporter \
             is gone); `hdmabuf list` shows what is available",
        ),
        Errno::PERM => Some("the exporter shared this buffer read-only: import it read-only"),
        Errno::IO => Some("mapping the exporter's grants failed; see the kernel log"),
        Errno::BUSY => Some(
            "another import of this buffer is being mapped, or it is mapped read-only and \
             read-write was asked, or a pipe still holds its pages: retry once that is over",
        ),
        Errno::AGAIN => Some("its last user is releasing it, or the ring is full: retry"),
        _ => None,
    }
}

fn unexport_hint(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::NOENT => Some("this domain exports no buffer with this id"),
        Errno::PERM => Some(
            "another open file of the device exported it: only that file, or one opened by \
             an administrator, may unexport it",
        ),
        Errno::INVAL => Some("the delay may be at most 10 minutes"),
        _ => None,
    }
}

fn update_hint(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::NOENT => {
            Some("this domain exports no buffer with this id, or it is being unexported")
        }
        Errno::PERM => Some(
            "another open file of the device exported it: only that file, or one opened by \
             an administrator, may announce its frames",
        ),
        Errno::NOTCONN => Some("the importing domain is not connected"),
        Errno::AGAIN => Some(
            "frames of 256 other buffers wait for the importer already: it is far behind; \
             retry once it has taken some",
        ),
        _ => None,
    }
}

fn query_hint(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::NOENT => Some("no buffer with this id is exported by or to this domain"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_dmabuf_common::id::KEY_LEN;
    use std::fs::File;

    fn id() -> HyperDmabufId {
        HyperDmabufId::new(0x2a, [9; KEY_LEN]).unwrap()
    }

    fn domain(n: u32) -> DomId {
        DomId::new(n).unwrap()
    }

    #[test]
    fn only_the_device_is_taken_as_the_device() {
        // /dev/null is a character device, but not this one (on the host
        // there is no device at all): both are refused.
        let null = OwnedFd::from(File::open("/dev/null").unwrap());
        let err = Device::try_from(null).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        let dir = OwnedFd::from(File::open("/").unwrap());
        assert!(Device::try_from(dir).is_err());
    }

    #[test]
    fn export_options_reach_the_record() {
        let file = File::open("/dev/null").unwrap();
        let priv_data = PrivData::new(b"1920x1080 XR24").unwrap();
        let options = ExportOptions::new().writable(true).private_data(priv_data);
        let record = options.args(file.as_fd(), domain(5)).encode();
        let decoded = ExportArgs::decode_in(&record).unwrap();
        assert_eq!(decoded.dmabuf_fd, file.as_raw_fd());
        assert_eq!(decoded.remote, domain(5));
        assert_eq!(decoded.flags, ExportFlags::WRITABLE);
        assert_eq!(decoded.priv_data, priv_data);

        let read_only = ExportOptions::new().writable(true).writable(false);
        assert_eq!(read_only, ExportOptions::default());
        let record = read_only.args(file.as_fd(), domain(5)).encode();
        let decoded = ExportArgs::decode_in(&record).unwrap();
        assert_eq!(decoded.flags.bits(), 0);
        assert!(decoded.priv_data.is_empty());
    }

    #[test]
    fn import_records_ask_for_write_access_only_when_told() {
        for writable in [false, true] {
            let decoded = ImportArgs::decode_in(&import_args(&id(), writable).encode()).unwrap();
            assert_eq!(decoded.hid, id());
            assert_eq!(decoded.flags == uapi::IMPORT_RW, writable);
        }
    }

    /// Every command reaches the kernel, which refuses it for a file
    /// that is not the device: the errors name the action, carry the
    /// errno, and give no advice meant for the driver's errnos.
    #[test]
    fn commands_on_another_file_fail_with_enotty() {
        // SAFETY: /dev/null answers none of the device's commands.
        let device =
            unsafe { Device::from_fd_unchecked(OwnedFd::from(File::open("/dev/null").unwrap())) };
        let dmabuf = File::open("/dev/null").unwrap();
        let enotty = Some(Errno::NOTTY.raw_os_error());
        let failures = [
            device
                .export(&dmabuf, domain(3), &ExportOptions::new())
                .unwrap_err(),
            device.import(&id(), true).unwrap_err(),
            device.unexport(&id(), Duration::ZERO).unwrap_err(),
            device.query(&id(), QueryItem::Size).unwrap_err(),
            device.private_data(&id()).unwrap_err(),
            device.info(&id()).unwrap_err(),
            device.list().unwrap_err(),
        ];
        let actions: Vec<&str> = failures.iter().map(Error::action).collect();
        assert_eq!(
            actions,
            [
                "exporting to domain 3",
                &format!("importing {}", id()),
                &format!("unexporting {}", id()),
                &format!("querying {}", id()),
                &format!("querying the private data of {}", id()),
                &format!("querying {}", id()),
                "listing buffers",
            ]
        );
        for e in &failures {
            assert_eq!(e.raw_os_error(), enotty, "{e}");
            assert_eq!(e.hint(), None, "{e}");
        }
    }

    #[test]
    fn a_missing_node_says_to_load_the_driver() {
        let e = Device::open_path("/nonexistent/hyper_dmabuf").unwrap_err();
        assert_eq!(e.action(), "opening /nonexistent/hyper_dmabuf");
        assert!(e.hint().unwrap().contains("modprobe hyper_dmabuf"));
    }

    #[test]
    fn hints_follow_the_documented_errnos() {
        assert!(export_hint(Errno::NOTCONN).unwrap().contains("attach"));
        assert!(export_hint(Errno::AGAIN).unwrap().contains("retry"));
        assert!(import_hint(Errno::PERM).unwrap().contains("read-only"));
        assert!(unexport_hint(Errno::PERM)
            .unwrap()
            .contains("administrator"));
        assert_eq!(query_hint(Errno::PERM), None);
    }

    #[test]
    fn an_import_maps_with_its_access() {
        let memfd = rustix::fs::memfd_create("import", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memfd, 8192).unwrap();
        let imported = Imported {
            fd: memfd,
            size: 8192,
            writable: true,
        };
        let map = imported.map().unwrap();
        assert_eq!((map.len(), map.is_writable()), (8192, true));
        let read_only = Imported {
            writable: false,
            ..imported
        };
        assert!(!read_only.map().unwrap().is_writable());
    }
}
