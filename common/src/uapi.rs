// SPDX-License-Identifier: MIT
//! The user-space interface of `/dev/xen/hyper_dmabuf`.
//!
//! One misc device per domain, whatever role the domain plays, beside
//! Xen's other devices (`/dev/xen/gntdev`, `/dev/xen/evtchn`). User space
//! talks to it with the ioctls below and reads [`Event`] records from it
//! (`read`/`poll`).
//!
//! Every argument is a fixed-size record of fixed-width fields with
//! explicit padding; records are encoded and decoded here, by the kernel
//! (after `copy_from_user` into a local array of exactly the record size)
//! and by the tools, so both sides share one definition. Fields are in the
//! machine's byte order, which is little-endian on every architecture Xen
//! runs on. Reserved fields must be zero; output fields are ignored on
//! input. The only pointers are documented `u64` user addresses.
//!
//! Where each field sits is [`layout`]'s table, which the codecs below
//! read and write by; the C header `include/uapi/linux/hyper_dmabuf.h`
//! declares the same records, and a host test checks it against the
//! table.
//!
//! | ioctl | number | record | original hyper_dmabuf |
//! |---|---|---|---|
//! | [`IOCTL_EXPORT`] | `_IOWR(0xB9, 1, 232)` | [`ExportArgs`] | `EXPORT_REMOTE` |
//! | [`IOCTL_IMPORT`] | `_IOWR(0xB9, 2, 40)` | [`ImportArgs`] | `EXPORT_FD` |
//! | [`IOCTL_UNEXPORT`] | `_IOWR(0xB9, 3, 32)` | [`UnexportArgs`] | `UNEXPORT` |
//! | [`IOCTL_QUERY`] | `_IOWR(0xB9, 4, 56)` | [`QueryArgs`] | `QUERY` |
//! | [`IOCTL_LIST`] | `_IOWR(0xB9, 5, 16)` | [`ListArgs`] | (none) |
//! | [`IOCTL_UPDATE`] | `_IOW(0xB9, 6, 224)` | [`UpdateArgs`] | (none) |
//!
//! The original's `TX_CH_SETUP`/`RX_CH_SETUP` have no counterpart: channels
//! are XenBus devices set up by the toolstack.

pub mod layout;

use super::bytes::{check_zero, get_i32, get_u32, get_u64, put_i32, put_u32, put_u64};
use super::error::Error;
use super::id::HyperDmabufId;
use super::wire::{Export, ExportFlags, PrivData};
use super::xen::DomId;
use layout::{event, export, import, list, list_entry, query, unexport, update, Field};

// The records are defined in the machine's byte order; these codecs write
// little-endian, which is the same thing on every Xen architecture.
const _: () = assert!(cfg!(target_endian = "little"));

/// Path of the device node.
pub const DEVICE_PATH: &str = "/dev/xen/hyper_dmabuf";

/// Name given to the misc device (devtmpfs creates `/dev/xen/hyper_dmabuf`).
pub const MISC_DEVICE_NAME: &str = "xen/hyper_dmabuf";

/// The ioctl type byte of this device (free in
/// `Documentation/userspace-api/ioctl/ioctl-number.rst`).
pub const IOCTL_MAGIC: u8 = 0xB9;

/// `_IOWR(magic, nr, size)` with the asm-generic encoding (x86, arm64).
pub const fn iowr(magic: u8, nr: u8, size: usize) -> u32 {
    const IOC_WRITE_READ: u32 = 3;
    assert!(size < (1 << 14));
    (IOC_WRITE_READ << 30) | ((size as u32) << 16) | ((magic as u32) << 8) | nr as u32
}

/// `_IOW(magic, nr, size)`: user space writes the record, the kernel only
/// reads it.
pub const fn iow(magic: u8, nr: u8, size: usize) -> u32 {
    const IOC_WRITE: u32 = 1;
    assert!(size < (1 << 14));
    (IOC_WRITE << 30) | ((size as u32) << 16) | ((magic as u32) << 8) | nr as u32
}

/// Export a local dma-buf to a peer domain: [`ExportArgs`].
pub const IOCTL_EXPORT: u32 = iowr(IOCTL_MAGIC, 1, ExportArgs::SIZE);
/// Import a buffer exported to this domain as a new dma-buf fd:
/// [`ImportArgs`].
pub const IOCTL_IMPORT: u32 = iowr(IOCTL_MAGIC, 2, ImportArgs::SIZE);
/// Revoke an export, now or after a delay: [`UnexportArgs`].
pub const IOCTL_UNEXPORT: u32 = iowr(IOCTL_MAGIC, 3, UnexportArgs::SIZE);
/// Ask about a buffer: [`QueryArgs`].
pub const IOCTL_QUERY: u32 = iowr(IOCTL_MAGIC, 4, QueryArgs::SIZE);
/// List the buffers this domain exports and imports: [`ListArgs`].
pub const IOCTL_LIST: u32 = iowr(IOCTL_MAGIC, 5, ListArgs::SIZE);
/// Announce a new frame in an export, without waiting: [`UpdateArgs`].
pub const IOCTL_UPDATE: u32 = iow(IOCTL_MAGIC, 6, UpdateArgs::SIZE);

/// Longest delay an unexport may be scheduled after: 10 minutes.
pub const MAX_UNEXPORT_DELAY_MS: u32 = 600_000;

fn get_hid(record: &[u8], field: Field) -> Result<HyperDmabufId, Error> {
    let mut raw = [0u8; HyperDmabufId::WIRE_SIZE];
    raw.copy_from_slice(&record[field.bytes()]);
    HyperDmabufId::decode(&raw)
}

fn put_hid(record: &mut [u8], field: Field, hid: &HyperDmabufId) {
    record[field.bytes()].copy_from_slice(&hid.encode());
}

/// Checks that a reserved field is zero.
fn check_reserved(record: &[u8], field: Field) -> Result<(), Error> {
    check_zero(record, field.offset, field.end())
}

/// Decodes the private data of `len` and `area`.
fn get_priv(record: &[u8], len: Field, area: Field) -> Result<PrivData, Error> {
    PrivData::decode(
        get_u32(record, len.offset),
        &record[area.bytes()],
        area.offset,
    )
}

/// Encodes private data into `len` and `area`.
fn put_priv(record: &mut [u8], len: Field, area: Field, data: &PrivData) {
    put_u32(record, len.offset, data.len() as u32);
    record[area.bytes()].copy_from_slice(data.area());
}

/// Flags of [`ExportArgs`].
pub const EXPORT_RW: u32 = 1 << 0;
/// Flags of [`ImportArgs`]: in, map the buffer writable (needs an export
/// made with [`EXPORT_RW`]); out, with [`IMPORT_MODE_OUT`], the new
/// descriptor is `O_RDWR`.
pub const IMPORT_RW: u32 = 1 << 0;
/// Flags of [`ImportArgs`], out only: the driver says in [`IMPORT_RW`]
/// what the new descriptor's mode is (a buffer this domain maps already
/// comes back as it is mapped, whatever was asked). A driver that leaves
/// it clear returned the flags as given: ask `fcntl(F_GETFL)`.
pub const IMPORT_MODE_OUT: u32 = 1 << 1;

/// `struct hdmabuf_export`, the argument of [`IOCTL_EXPORT`].
///
/// ```text
/// offset size  field          dir
///      0    4  dmabuf_fd      in   the local dma-buf to share
///      4    4  remote_domid   in   the domain to share it with
///      8    4  flags          in   EXPORT_RW: grant read-write
///     12    4  priv_len       in   bytes of priv used, <= 192
///     16  192  priv           in   private data for the importer
///    208   24  hid            out  the buffer's hyper_dmabuf_id
/// ```
///
/// Exporting the same dma-buf to the same domain again, from the file that
/// exported it (or an administrator's) with the same flags, updates its
/// private data and returns the same id (docs/uapi.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportArgs {
    /// The local dma-buf.
    pub dmabuf_fd: i32,
    /// The domain to share with.
    pub remote: DomId,
    /// Grant flags.
    pub flags: ExportFlags,
    /// Private data for the importer.
    pub priv_data: PrivData,
    /// Output: the id (ignored on input).
    pub hid: Option<HyperDmabufId>,
}

impl ExportArgs {
    /// Record size.
    pub const SIZE: usize = export::RECORD.size;

    /// Decodes the record user space passed in. The output field is
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`Error::BadDomId`], [`Error::UnknownFlags`], [`Error::PrivTooLong`],
    /// [`Error::ReservedNotZero`] (private bytes past `priv_len`).
    pub fn decode_in(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        let flags = get_u32(record, export::FLAGS.offset);
        if flags & !EXPORT_RW != 0 {
            return Err(Error::UnknownFlags(flags & !EXPORT_RW));
        }
        Ok(ExportArgs {
            dmabuf_fd: get_i32(record, export::DMABUF_FD.offset),
            remote: DomId::new(get_u32(record, export::REMOTE_DOMID.offset))?,
            flags: ExportFlags::from_bits(flags)?,
            priv_data: get_priv(record, export::PRIV_LEN, export::PRIV)?,
            hid: None,
        })
    }

    /// Encodes the whole record (input fields and, if set, the output).
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_i32(&mut record, export::DMABUF_FD.offset, self.dmabuf_fd);
        put_u32(
            &mut record,
            export::REMOTE_DOMID.offset,
            u32::from(self.remote.get()),
        );
        put_u32(&mut record, export::FLAGS.offset, self.flags.bits());
        put_priv(&mut record, export::PRIV_LEN, export::PRIV, &self.priv_data);
        if let Some(hid) = &self.hid {
            put_hid(&mut record, export::HID, hid);
        }
        record
    }

    /// Decodes the output after the ioctl returned.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`] if the kernel wrote no id.
    pub fn decode_out(record: &[u8; Self::SIZE]) -> Result<HyperDmabufId, Error> {
        get_hid(record, export::HID)
    }
}

/// `struct hdmabuf_import`, the argument of [`IOCTL_IMPORT`].
///
/// ```text
/// offset size  field   dir
///      0   24  hid     in   the buffer
///     24    4  flags   in   IMPORT_RW: map writable
///                      out  IMPORT_MODE_OUT, and IMPORT_RW if the fd is O_RDWR
///     28    4  fd      out  new dma-buf fd (O_CLOEXEC)
///     32    8  size    out  buffer size in bytes
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportArgs {
    /// The buffer.
    pub hid: HyperDmabufId,
    /// In, [`IMPORT_RW`] or 0; out, [`IMPORT_MODE_OUT`] and the mode.
    pub flags: u32,
    /// Output: the new fd (ignored on input).
    pub fd: i32,
    /// Output: size in bytes (ignored on input).
    pub size: u64,
}

impl ImportArgs {
    /// Record size.
    pub const SIZE: usize = import::RECORD.size;

    /// Decodes the input fields.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`] or [`Error::UnknownFlags`].
    pub fn decode_in(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        let flags = get_u32(record, import::FLAGS.offset);
        if flags & !IMPORT_RW != 0 {
            return Err(Error::UnknownFlags(flags & !IMPORT_RW));
        }
        Ok(ImportArgs {
            hid: get_hid(record, import::HID)?,
            flags,
            fd: -1,
            size: 0,
        })
    }

    /// Decodes the whole record as the driver filled it (for user
    /// space). Returned flags this crate does not know are kept: a newer
    /// driver may say more.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`].
    pub fn decode(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        let flags = get_u32(record, import::FLAGS.offset);
        Ok(ImportArgs {
            hid: get_hid(record, import::HID)?,
            flags,
            fd: get_i32(record, import::FD.offset),
            size: get_u64(record, import::SIZE.offset),
        })
    }

    /// The record the driver returns for `fd`, of `size` bytes, opened
    /// read-write or not.
    #[must_use]
    pub fn returned(self, fd: i32, size: u64, writable: bool) -> Self {
        let mode = if writable { IMPORT_RW } else { 0 };
        ImportArgs {
            flags: IMPORT_MODE_OUT | mode,
            fd,
            size,
            ..self
        }
    }

    /// Whether the returned descriptor is `O_RDWR`, if the driver said.
    pub fn writable_out(&self) -> Option<bool> {
        (self.flags & IMPORT_MODE_OUT != 0).then_some(self.flags & IMPORT_RW != 0)
    }

    /// Encodes the whole record.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_hid(&mut record, import::HID, &self.hid);
        put_u32(&mut record, import::FLAGS.offset, self.flags);
        put_i32(&mut record, import::FD.offset, self.fd);
        put_u64(&mut record, import::SIZE.offset, self.size);
        record
    }
}

/// `struct hdmabuf_unexport`, the argument of [`IOCTL_UNEXPORT`].
///
/// ```text
/// offset size  field     dir
///      0   24  hid       in  the buffer, exported by this domain
///     24    4  delay_ms  in  revoke after this long (0: now), <= 600000
///     28    4  reserved  in  zero
/// ```
///
/// A delayed unexport is cancelled by exporting the same buffer again
/// before it fires, as in the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnexportArgs {
    /// The buffer.
    pub hid: HyperDmabufId,
    /// Delay before the revocation starts.
    pub delay_ms: u32,
}

impl UnexportArgs {
    /// Record size.
    pub const SIZE: usize = unexport::RECORD.size;

    /// Decodes the record.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`], [`Error::ReservedNotZero`], or
    /// [`Error::DelayTooLong`] past [`MAX_UNEXPORT_DELAY_MS`].
    pub fn decode(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        check_reserved(record, unexport::RESERVED)?;
        let delay_ms = get_u32(record, unexport::DELAY_MS.offset);
        if delay_ms > MAX_UNEXPORT_DELAY_MS {
            return Err(Error::DelayTooLong(delay_ms));
        }
        Ok(UnexportArgs {
            hid: get_hid(record, unexport::HID)?,
            delay_ms,
        })
    }

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_hid(&mut record, unexport::HID, &self.hid);
        put_u32(&mut record, unexport::DELAY_MS.offset, self.delay_ms);
        record
    }
}

/// `struct hdmabuf_update`, the argument of [`IOCTL_UPDATE`].
///
/// ```text
/// offset size  field     dir
///      0   24  hid       in  the buffer, exported by this domain
///     24    4  flags     in  zero
///     28    4  priv_len  in  bytes of priv used, <= 192
///     32  192  priv      in  the new private data for the importer
/// ```
///
/// The buffer's private data becomes `priv` and the importer is sent an
/// UPDATE; the call returns once the message is queued, without waiting
/// for the importer. When the ring is full the newest private data of
/// each buffer waits in the kernel and goes as soon as there is room, in
/// the order the calls were made (docs/uapi.md, docs/protocol.md 11.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateArgs {
    /// The buffer.
    pub hid: HyperDmabufId,
    /// Its new private data.
    pub priv_data: PrivData,
}

impl UpdateArgs {
    /// Record size.
    pub const SIZE: usize = update::RECORD.size;

    /// Decodes the record.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`], [`Error::UnknownFlags`], [`Error::PrivTooLong`],
    /// [`Error::ReservedNotZero`] (private bytes past `priv_len`).
    pub fn decode(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        let flags = get_u32(record, update::FLAGS.offset);
        if flags != 0 {
            return Err(Error::UnknownFlags(flags));
        }
        Ok(UpdateArgs {
            hid: get_hid(record, update::HID)?,
            priv_data: get_priv(record, update::PRIV_LEN, update::PRIV)?,
        })
    }

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_hid(&mut record, update::HID, &self.hid);
        put_priv(&mut record, update::PRIV_LEN, update::PRIV, &self.priv_data);
        record
    }
}

/// What [`IOCTL_QUERY`] asks about a buffer (the original's query items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum QueryItem {
    /// 0 if this domain exported the buffer, 1 if it imported it.
    Type = 1,
    /// Domain id of the exporter.
    Exporter = 2,
    /// Domain id of the importer.
    Importer = 3,
    /// Size in bytes.
    Size = 4,
    /// 1 while the importer maps the buffer.
    Busy = 5,
    /// 1 once the buffer was unexported (revoked).
    Unexported = 6,
    /// 1 while a delayed unexport is pending.
    DelayedUnexported = 7,
    /// Length of the private data.
    PrivSize = 8,
    /// The private data, copied to `data_ptr`; value is its length.
    Priv = 9,
    /// The export flags ([`EXPORT_RW`]).
    Flags = 10,
}

impl QueryItem {
    /// Decodes an item number.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownQueryItem`].
    pub const fn from_raw(raw: u32) -> Result<Self, Error> {
        Ok(match raw {
            1 => QueryItem::Type,
            2 => QueryItem::Exporter,
            3 => QueryItem::Importer,
            4 => QueryItem::Size,
            5 => QueryItem::Busy,
            6 => QueryItem::Unexported,
            7 => QueryItem::DelayedUnexported,
            8 => QueryItem::PrivSize,
            9 => QueryItem::Priv,
            10 => QueryItem::Flags,
            other => return Err(Error::UnknownQueryItem(other)),
        })
    }
}

/// `struct hdmabuf_query`, the argument of [`IOCTL_QUERY`].
///
/// ```text
/// offset size  field      dir
///      0   24  hid        in   the buffer
///     24    4  item       in   a QueryItem
///     28    4  reserved0  in   zero
///     32    8  value      out  the answer
///     40    8  data_ptr   in   user address for QueryItem::Priv, else 0
///     48    4  data_len   in   bytes at data_ptr
///     52    4  reserved1  in   zero
/// ```
///
/// For [`QueryItem::Priv`] the private data is copied to `data_ptr` and
/// `value` is its length; if `data_len` is smaller, the ioctl fails with
/// `ERANGE` and copies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryArgs {
    /// The buffer.
    pub hid: HyperDmabufId,
    /// The question.
    pub item: QueryItem,
    /// Output: the answer (ignored on input).
    pub value: u64,
    /// User address of the data area, for [`QueryItem::Priv`].
    pub data_ptr: u64,
    /// Size of the data area.
    pub data_len: u32,
}

impl QueryArgs {
    /// Record size.
    pub const SIZE: usize = query::RECORD.size;

    /// Decodes the record.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`], [`Error::UnknownQueryItem`],
    /// [`Error::ReservedNotZero`].
    pub fn decode(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        check_reserved(record, query::RESERVED0)?;
        check_reserved(record, query::RESERVED1)?;
        Ok(QueryArgs {
            hid: get_hid(record, query::HID)?,
            item: QueryItem::from_raw(get_u32(record, query::ITEM.offset))?,
            value: get_u64(record, query::VALUE.offset),
            data_ptr: get_u64(record, query::DATA_PTR.offset),
            data_len: get_u32(record, query::DATA_LEN.offset),
        })
    }

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_hid(&mut record, query::HID, &self.hid);
        put_u32(&mut record, query::ITEM.offset, self.item as u32);
        put_u64(&mut record, query::VALUE.offset, self.value);
        put_u64(&mut record, query::DATA_PTR.offset, self.data_ptr);
        put_u32(&mut record, query::DATA_LEN.offset, self.data_len);
        record
    }
}

/// `struct hdmabuf_list`, the argument of [`IOCTL_LIST`].
///
/// ```text
/// offset size  field        dir
///      0    8  entries_ptr  in   user address of an array of ListEntry
///      8    4  capacity     in   entries the array holds
///     12    4  count        out  entries that exist (may exceed capacity)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListArgs {
    /// User address of the entry array.
    pub entries_ptr: u64,
    /// Entries the array holds.
    pub capacity: u32,
    /// Output: entries that exist; `min(count, capacity)` were written.
    pub count: u32,
}

impl ListArgs {
    /// Record size.
    pub const SIZE: usize = list::RECORD.size;

    /// Decodes the record.
    pub fn decode(record: &[u8; Self::SIZE]) -> Self {
        ListArgs {
            entries_ptr: get_u64(record, list::ENTRIES_PTR.offset),
            capacity: get_u32(record, list::CAPACITY.offset),
            count: get_u32(record, list::COUNT.offset),
        }
    }

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_u64(&mut record, list::ENTRIES_PTR.offset, self.entries_ptr);
        put_u32(&mut record, list::CAPACITY.offset, self.capacity);
        put_u32(&mut record, list::COUNT.offset, self.count);
        record
    }
}

/// Kind of a listed buffer: exported by this domain.
pub const KIND_EXPORTED: u32 = 0;
/// Kind of a listed buffer: imported from a peer.
pub const KIND_IMPORTED: u32 = 1;

/// [`ListEntry::state`] bit: the importer maps the buffer.
pub const STATE_BUSY: u32 = 1 << 0;
/// [`ListEntry::state`] bit: unexported.
pub const STATE_UNEXPORTED: u32 = 1 << 1;
/// [`ListEntry::state`] bit: a delayed unexport is pending.
pub const STATE_DELAYED_UNEXPORT: u32 = 1 << 2;
/// [`ListEntry::state`] bit: shared read-write.
pub const STATE_RW: u32 = 1 << 3;

/// `struct hdmabuf_list_entry`, one element written by [`IOCTL_LIST`].
///
/// ```text
/// offset size  field       meaning
///      0   24  hid         the buffer
///     24    8  size        bytes
///     32    4  peer_domid  the importer (exported) or exporter (imported)
///     36    4  kind        KIND_EXPORTED or KIND_IMPORTED
///     40    4  state       STATE_* bits
///     44    4  reserved    zero
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEntry {
    /// The buffer.
    pub hid: HyperDmabufId,
    /// Size in bytes.
    pub size: u64,
    /// The other domain.
    pub peer: DomId,
    /// [`KIND_EXPORTED`] or [`KIND_IMPORTED`].
    pub kind: u32,
    /// `STATE_*` bits.
    pub state: u32,
}

impl ListEntry {
    /// Record size.
    pub const SIZE: usize = list_entry::RECORD.size;

    /// Decodes an entry.
    ///
    /// # Errors
    ///
    /// [`Error::BadId`], [`Error::BadDomId`], [`Error::ReservedNotZero`].
    pub fn decode(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        check_reserved(record, list_entry::RESERVED)?;
        Ok(ListEntry {
            hid: get_hid(record, list_entry::HID)?,
            size: get_u64(record, list_entry::SIZE.offset),
            peer: DomId::new(get_u32(record, list_entry::PEER_DOMID.offset))?,
            kind: get_u32(record, list_entry::KIND.offset),
            state: get_u32(record, list_entry::STATE.offset),
        })
    }

    /// Encodes an entry.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_hid(&mut record, list_entry::HID, &self.hid);
        put_u64(&mut record, list_entry::SIZE.offset, self.size);
        put_u32(
            &mut record,
            list_entry::PEER_DOMID.offset,
            u32::from(self.peer.get()),
        );
        put_u32(&mut record, list_entry::KIND.offset, self.kind);
        put_u32(&mut record, list_entry::STATE.offset, self.state);
        record
    }
}

/// Kinds of [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EventType {
    /// Importer side: a peer exported a buffer to this domain.
    NewExport = 1,
    /// Importer side: the exporter changed a buffer's private data.
    Update = 2,
    /// Importer side: the exporter revoked a buffer; no new imports.
    Unexport = 3,
    /// Exporter side: the importer mapped a buffer.
    Mapped = 4,
    /// Exporter side: the importer released its mapping.
    Released = 5,
    /// Exporter side: an unexport finished; every grant has ended.
    GrantsEnded = 6,
    /// A peer domain connected.
    PeerConnected = 7,
    /// A peer domain disconnected (closed, destroyed); its buffers are gone.
    PeerDisconnected = 8,
}

impl EventType {
    /// Decodes an event type.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEvent`].
    pub const fn from_raw(raw: u32) -> Result<Self, Error> {
        Ok(match raw {
            1 => EventType::NewExport,
            2 => EventType::Update,
            3 => EventType::Unexport,
            4 => EventType::Mapped,
            5 => EventType::Released,
            6 => EventType::GrantsEnded,
            7 => EventType::PeerConnected,
            8 => EventType::PeerDisconnected,
            other => return Err(Error::UnknownEvent(other)),
        })
    }
}

/// `struct hdmabuf_event`, one record returned by `read()` on the device.
/// A read returns whole records only; a buffer smaller than one record
/// fails with `EINVAL`.
///
/// ```text
/// offset size  field       meaning
///      0    4  type        EventType
///      4    4  peer_domid  the other domain
///      8   24  hid         the buffer (zero for peer events)
///     32    8  size        buffer size in bytes (0 for peer events)
///     40    4  flags       export flags, EXPORT_RW (importer-side events)
///     44    4  priv_len    bytes of priv used
///     48  192  priv        private data (NewExport, Update)
///    240    4  lost        events about the same peer dropped before this one
///    244   12  reserved    zero
/// ```
///
/// Which fields each kind fills is decided by its constructor:
/// [`Event::about_peer`], [`Event::about_import`], [`Event::about_export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventType,
    /// The other domain.
    pub peer: DomId,
    /// The buffer, if the event is about one.
    pub hid: Option<HyperDmabufId>,
    /// Size in bytes.
    pub size: u64,
    /// Export flags.
    pub flags: ExportFlags,
    /// Private data.
    pub priv_data: PrivData,
    /// Events about the same peer dropped before this one (the peer had
    /// used up its share of the reader's queue).
    pub lost: u32,
}

impl Event {
    /// Record size.
    pub const SIZE: usize = event::RECORD.size;

    /// An event about `peer` itself ([`EventType::PeerConnected`],
    /// [`EventType::PeerDisconnected`]): no buffer, size 0.
    pub fn about_peer(kind: EventType, peer: DomId) -> Self {
        Event {
            kind,
            peer,
            hid: None,
            size: 0,
            flags: ExportFlags::default(),
            priv_data: PrivData::EMPTY,
            lost: 0,
        }
    }

    /// An importer-side event ([`EventType::NewExport`],
    /// [`EventType::Update`], [`EventType::Unexport`]) about a buffer
    /// `peer` exported to this domain: its id, size and flags, and
    /// `priv_data`.
    pub fn about_import(
        kind: EventType,
        peer: DomId,
        export: &Export,
        priv_data: PrivData,
    ) -> Self {
        Event {
            hid: Some(export.hid),
            size: export.size,
            flags: export.flags,
            priv_data,
            ..Self::about_peer(kind, peer)
        }
    }

    /// An exporter-side event ([`EventType::Mapped`],
    /// [`EventType::Released`], [`EventType::GrantsEnded`]) about a buffer
    /// of `size` bytes this domain exports to `peer`: its id and size.
    pub fn about_export(kind: EventType, peer: DomId, hid: &HyperDmabufId, size: u64) -> Self {
        Event {
            hid: Some(*hid),
            size,
            ..Self::about_peer(kind, peer)
        }
    }

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut record = [0u8; Self::SIZE];
        put_u32(&mut record, event::TYPE.offset, self.kind as u32);
        put_u32(
            &mut record,
            event::PEER_DOMID.offset,
            u32::from(self.peer.get()),
        );
        if let Some(hid) = &self.hid {
            put_hid(&mut record, event::HID, hid);
        }
        put_u64(&mut record, event::SIZE.offset, self.size);
        put_u32(&mut record, event::FLAGS.offset, self.flags.bits());
        put_priv(&mut record, event::PRIV_LEN, event::PRIV, &self.priv_data);
        put_u32(&mut record, event::LOST.offset, self.lost);
        record
    }

    /// Decodes a record read from the device.
    ///
    /// # Errors
    ///
    /// Any field this version does not define.
    pub fn decode(record: &[u8; Self::SIZE]) -> Result<Self, Error> {
        check_reserved(record, event::RESERVED)?;
        let hid = if record[event::HID.bytes()].iter().all(|&b| b == 0) {
            None
        } else {
            Some(get_hid(record, event::HID)?)
        };
        Ok(Event {
            kind: EventType::from_raw(get_u32(record, event::TYPE.offset))?,
            peer: DomId::new(get_u32(record, event::PEER_DOMID.offset))?,
            hid,
            size: get_u64(record, event::SIZE.offset),
            flags: ExportFlags::from_bits(get_u32(record, event::FLAGS.offset))?,
            priv_data: get_priv(record, event::PRIV_LEN, event::PRIV)?,
            lost: get_u32(record, event::LOST.offset),
        })
    }

    /// Whether an encoded record is about `peer` (read straight from the
    /// record, for a queue that counts its records per peer).
    pub fn is_about(record: &[u8; Self::SIZE], peer: DomId) -> bool {
        get_u32(record, event::PEER_DOMID.offset) == u32::from(peer.get())
    }
}

/// Events a queue dropped and has not reported yet, counted per peer so
/// that each is reported in the next record about the same peer: a reader
/// learns whose events it lost, and one peer's losses do not show up in
/// the records of another. `N` peers are tracked at once; losses of
/// further peers go to the next record, whoever it is about.
#[derive(Debug, Clone)]
pub struct LostEvents<const N: usize> {
    by_peer: [(u16, u32); N],
    tracked: usize,
    unattributed: u32,
}

impl<const N: usize> Default for LostEvents<N> {
    fn default() -> Self {
        LostEvents {
            by_peer: [(0, 0); N],
            tracked: 0,
            unattributed: 0,
        }
    }
}

impl<const N: usize> LostEvents<N> {
    /// Counts one dropped event about `peer`.
    pub fn note(&mut self, peer: DomId) {
        let id = peer.get();
        let tracked = &mut self.by_peer[..self.tracked];
        if let Some(entry) = tracked.iter_mut().find(|(p, _)| *p == id) {
            entry.1 = entry.1.saturating_add(1);
        } else if let Some(entry) = self.by_peer.get_mut(self.tracked) {
            *entry = (id, 1);
            self.tracked += 1;
        } else {
            self.unattributed = self.unattributed.saturating_add(1);
        }
    }

    /// What the next record about `peer` reports, now forgotten.
    pub fn take(&mut self, peer: DomId) -> u32 {
        let id = peer.get();
        let mut lost = core::mem::take(&mut self.unattributed);
        if let Some(i) = self.by_peer[..self.tracked]
            .iter()
            .position(|(p, _)| *p == id)
        {
            lost = lost.saturating_add(self.by_peer[i].1);
            self.tracked -= 1;
            self.by_peer.swap(i, self.tracked);
        }
        lost
    }
}

/// Records one open file of the control device may hold unread.
pub const EVENT_QUEUE_LEN: usize = 512;

/// Whether a reader's event queue takes one more event about `peer`.
///
/// The queue holds `capacity` records; `queued` are waiting, of which
/// `queued_from_peer` are about the same peer; `peers` peers are connected.
/// Each peer may hold at most `capacity / (peers + 1)` records, so the
/// peers together never hold more than `peers / (peers + 1)` of the queue,
/// and the room left is always at least one peer's share: a peer that
/// announces in bulk loses its own events, never another peer's. (A peer
/// that disconnects keeps its records until they are read; the bound then
/// holds for the peers that remain.)
pub fn event_admitted(
    capacity: usize,
    queued: usize,
    queued_from_peer: usize,
    peers: usize,
) -> bool {
    queued < capacity && queued_from_peer < capacity / (peers.max(1) + 1)
}

/// The local trust model: who may see and manage a buffer this domain
/// exports (QUERY, LIST, UNEXPORT, and its `Mapped`, `Released` and
/// `GrantsEnded` events).
///
/// Who may open the device is the device node's permission (0600 root by
/// default; an administrator may grant a group); an open file is then the
/// capability, passed on with it. A buffer belongs to the open file that
/// exported it. That file manages it; so does a file whose opener had
/// `CAP_SYS_ADMIN` in the initial user namespace (an administrator, as
/// `hdmabuf unexport` run by root). Any other file does not see it: QUERY
/// says `ENOENT`, LIST leaves it out, its events are not delivered, and
/// UNEXPORT is `EPERM`. Buffers peers announce (imports) are every
/// file's: any open file sees their events and may import them.
pub fn may_manage_export(owner_file: u64, file: u64, file_is_admin: bool) -> bool {
    owner_file == file || file_is_admin
}

/// The capability whose holder, in the initial user namespace, opens the
/// device as an administrator ([`may_manage_export`]): `CAP_SYS_ADMIN`
/// (`linux/capability.h`).
pub const ADMIN_CAPABILITY: u32 = 21;

/// Whether an event of `kind` goes only to the files that may manage the
/// export it is about ([`may_manage_export`]); the others go to every
/// open file.
pub const fn is_export_event(kind: EventType) -> bool {
    matches!(
        kind,
        EventType::Mapped | EventType::Released | EventType::GrantsEnded
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::KEY_LEN;
    use crate::limits::MAX_PRIV_LEN;

    #[test]
    fn an_export_is_managed_by_its_file_or_an_administrator() {
        assert!(may_manage_export(7, 7, false));
        assert!(may_manage_export(7, 8, true));
        assert!(!may_manage_export(7, 8, false));
    }

    #[test]
    fn only_exporter_side_events_are_private() {
        let private = [
            EventType::Mapped,
            EventType::Released,
            EventType::GrantsEnded,
        ];
        for raw in 1..=8 {
            let kind = EventType::from_raw(raw).unwrap();
            assert_eq!(is_export_event(kind), private.contains(&kind), "{kind:?}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn an_import_returns_its_descriptors_mode() {
        let hid = HyperDmabufId::new(3, [7; KEY_LEN]).unwrap();
        let asked = ImportArgs::decode_in(
            &ImportArgs {
                hid,
                flags: 0,
                fd: -1,
                size: 0,
            }
            .encode(),
        )
        .unwrap();
        // Asked read-only, given the read-write mapping there already is.
        let out = ImportArgs::decode(&asked.returned(5, 4096, true).encode()).unwrap();
        assert_eq!(
            (out.fd, out.size, out.writable_out()),
            (5, 4096, Some(true))
        );
        let out = ImportArgs::decode(&asked.returned(5, 4096, false).encode()).unwrap();
        assert_eq!(out.writable_out(), Some(false));
        // A driver that echoes the flags says nothing of the mode.
        assert_eq!(
            ImportArgs::decode(&asked.encode()).unwrap().writable_out(),
            None
        );
        // One that says more than we know still says the mode.
        let mut newer = asked.returned(5, 4096, true);
        newer.flags |= 1 << 7;
        assert_eq!(
            ImportArgs::decode(&newer.encode()).unwrap().writable_out(),
            Some(true)
        );
        // The mode flag is not an input.
        let mut record = asked.encode();
        record[layout::import::FLAGS.bytes()].copy_from_slice(&IMPORT_MODE_OUT.to_le_bytes());
        assert!(matches!(
            ImportArgs::decode_in(&record),
            Err(Error::UnknownFlags(IMPORT_MODE_OUT))
        ));
    }

    #[test]
    fn a_record_says_which_peer_it_is_about() {
        let peer = DomId::new(7).unwrap();
        let e = Event {
            kind: EventType::NewExport,
            peer,
            hid: None,
            size: 4096,
            flags: ExportFlags::default(),
            priv_data: PrivData::new(b"x").unwrap(),
            lost: 0,
        };
        assert!(Event::is_about(&e.encode(), peer));
        assert!(!Event::is_about(&e.encode(), DomId::new(8).unwrap()));
    }

    #[test]
    fn losses_are_reported_to_the_peer_they_concern() {
        let d = |n| DomId::new(n).unwrap();
        let mut lost = LostEvents::<2>::default();
        lost.note(d(1));
        lost.note(d(1));
        lost.note(d(2));
        assert_eq!(lost.take(d(2)), 1);
        assert_eq!(lost.take(d(2)), 0);
        // A third peer while two are tracked: reported to whoever is next.
        lost.note(d(3));
        lost.note(d(4));
        assert_eq!(lost.take(d(5)), 1);
        assert_eq!(lost.take(d(1)), 2);
        assert_eq!(lost.take(d(3)), 1);
        assert_eq!(lost.take(d(4)), 0);
    }

    proptest! {
        /// Every loss is reported exactly once.
        #[test]
        fn no_loss_is_reported_twice_or_never(
            ops in proptest::collection::vec((0u32..6, any::<bool>()), 0..500),
        ) {
            let mut lost = LostEvents::<3>::default();
            let (mut noted, mut taken) = (0u64, 0u64);
            for (peer, drop) in ops {
                let peer = DomId::new(peer).unwrap();
                if drop {
                    lost.note(peer);
                    noted += 1;
                } else {
                    taken += u64::from(lost.take(peer));
                }
            }
            for peer in 0..6 {
                taken += u64::from(lost.take(DomId::new(peer).unwrap()));
            }
            prop_assert_eq!(noted, taken);
        }
    }

    #[test]
    fn a_lone_peer_gets_half_the_queue() {
        assert!(event_admitted(512, 0, 0, 1));
        assert!(event_admitted(512, 255, 255, 1));
        assert!(!event_admitted(512, 256, 256, 1));
        // No peer connected (events left by one that went away).
        assert!(event_admitted(512, 255, 255, 0));
        assert!(!event_admitted(512, 512, 0, 3));
    }

    proptest! {
        /// Whatever order events of several peers arrive and are read in,
        /// a peer below its share is never refused for lack of room.
        #[test]
        fn no_peer_crowds_out_another(
            peers in 1usize..6,
            steps in proptest::collection::vec((0usize..6, any::<bool>()), 0..4000),
        ) {
            const CAP: usize = 64;
            let mut queue: std::collections::VecDeque<usize> = Default::default();
            for (who, read) in steps {
                if read {
                    queue.pop_front();
                    continue;
                }
                let peer = who % peers;
                let mine = queue.iter().filter(|p| **p == peer).count();
                let admitted = event_admitted(CAP, queue.len(), mine, peers);
                prop_assert_eq!(admitted, mine < CAP / (peers + 1));
                if admitted {
                    queue.push_back(peer);
                }
                prop_assert!(queue.len() <= CAP);
            }
        }
    }

    #[test]
    fn ioctl_numbers_are_stable() {
        // These values are ABI: changing one breaks every binary built
        // against the old header.
        assert_eq!(IOCTL_EXPORT, 0xc0e8_b901);
        assert_eq!(IOCTL_IMPORT, 0xc028_b902);
        assert_eq!(IOCTL_UNEXPORT, 0xc020_b903);
        assert_eq!(IOCTL_QUERY, 0xc038_b904);
        assert_eq!(IOCTL_LIST, 0xc010_b905);
        assert_eq!(IOCTL_UPDATE, 0x40e0_b906);
    }

    fn hid() -> HyperDmabufId {
        HyperDmabufId::new(0x1234, [7; KEY_LEN]).unwrap()
    }

    #[test]
    fn export_checks() {
        let args = ExportArgs {
            dmabuf_fd: 5,
            remote: DomId::new(3).unwrap(),
            flags: ExportFlags::WRITABLE,
            priv_data: PrivData::new(b"frame 1").unwrap(),
            hid: Some(hid()),
        };
        let record = args.encode();
        assert_eq!(
            ExportArgs::decode_in(&record).unwrap(),
            ExportArgs { hid: None, ..args }
        );
        assert_eq!(ExportArgs::decode_out(&record).unwrap(), hid());

        let mut bad = record;
        put_u32(&mut bad, 4, 0x7ff0);
        assert_eq!(ExportArgs::decode_in(&bad), Err(Error::BadDomId(0x7ff0)));
        let mut bad = record;
        put_u32(&mut bad, 8, 2);
        assert_eq!(ExportArgs::decode_in(&bad), Err(Error::UnknownFlags(2)));
        let mut bad = record;
        put_u32(&mut bad, 12, 200);
        assert_eq!(ExportArgs::decode_in(&bad), Err(Error::PrivTooLong(200)));
        let mut bad = record;
        bad[16 + 10] = 1;
        assert_eq!(
            ExportArgs::decode_in(&bad),
            Err(Error::ReservedNotZero { offset: 26 })
        );
    }

    #[test]
    fn unexport_and_query_checks() {
        let mut record = UnexportArgs {
            hid: hid(),
            delay_ms: 5,
        }
        .encode();
        assert_eq!(UnexportArgs::decode(&record).unwrap().delay_ms, 5);
        put_u32(&mut record, 24, MAX_UNEXPORT_DELAY_MS + 1);
        assert_eq!(
            UnexportArgs::decode(&record),
            Err(Error::DelayTooLong(MAX_UNEXPORT_DELAY_MS + 1))
        );
        record[29] = 1;
        assert!(matches!(
            UnexportArgs::decode(&record),
            Err(Error::ReservedNotZero { offset: 29 })
        ));

        let query = QueryArgs {
            hid: hid(),
            item: QueryItem::Priv,
            value: 0,
            data_ptr: 0x7fff_0000,
            data_len: 192,
        };
        let mut record = query.encode();
        assert_eq!(QueryArgs::decode(&record).unwrap(), query);
        put_u32(&mut record, 24, 11);
        assert_eq!(QueryArgs::decode(&record), Err(Error::UnknownQueryItem(11)));
    }

    proptest! {
        #[test]
        fn event_round_trip(kind in 1u32..=8, peer in 0u32..0x7ff0, size in any::<u64>(), rw in any::<bool>(),
                            data in proptest::collection::vec(any::<u8>(), 0..=MAX_PRIV_LEN), lost in any::<u32>(), with_hid in any::<bool>()) {
            let event = Event {
                kind: EventType::from_raw(kind).unwrap(),
                peer: DomId::new(peer).unwrap(),
                hid: with_hid.then(hid),
                size,
                flags: if rw { ExportFlags::WRITABLE } else { ExportFlags::default() },
                priv_data: PrivData::new(&data).unwrap(),
                lost,
            };
            prop_assert_eq!(Event::decode(&event.encode()), Ok(event));
        }

        /// Whatever bytes user space passes, decoding refuses or accepts
        /// without panicking.
        #[test]
        fn arbitrary_records(bytes in proptest::collection::vec(any::<u8>(), 256)) {
            let _ = ExportArgs::decode_in(bytes[..ExportArgs::SIZE].try_into().unwrap());
            let _ = ImportArgs::decode_in(bytes[..ImportArgs::SIZE].try_into().unwrap());
            let _ = UnexportArgs::decode(bytes[..UnexportArgs::SIZE].try_into().unwrap());
            let _ = QueryArgs::decode(bytes[..QueryArgs::SIZE].try_into().unwrap());
            let _ = ListArgs::decode(bytes[..ListArgs::SIZE].try_into().unwrap());
            let _ = ListEntry::decode(bytes[..ListEntry::SIZE].try_into().unwrap());
            let _ = Event::decode(bytes[..Event::SIZE].try_into().unwrap());
        }
    }
}
