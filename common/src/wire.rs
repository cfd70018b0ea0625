// SPDX-License-Identifier: MIT
//! The messages carried on the shared rings.
//!
//! Each end of a connection sends requests on its own ring and answers the
//! peer's requests on the peer's ring (see [`super::ring`]). Every request
//! and every response fills one fixed-size slot of [`SLOT_SIZE`] bytes;
//! all fields are little-endian and sit at fixed offsets; every byte that
//! is not a defined field is reserved and must be zero. A request carries a
//! `req_id` chosen by its sender, echoed in the response together with a
//! [`Status`].
//!
//! The exporter's domain is never in a payload: the receiver knows which
//! peer sent a message from the ring it arrived on.
//!
//! Request layout (offsets in bytes):
//!
//! ```text
//!  0         1         2         3        4
//! +---------+---------+---------+---------+
//! |                req_id                 | 0
//! +---------+---------+---------+---------+
//! |   op    |          reserved           | 4
//! +---------+---------+---------+---------+
//! |        payload, by operation          | 8
//! +---------+---------+---------+---------+
//! |                  ...                  | 252
//! +---------+---------+---------+---------+
//! ```
//!
//! Response layout:
//!
//! ```text
//! +---------+---------+---------+---------+
//! |                req_id                 | 0
//! +---------+---------+---------+---------+
//! |   op    |          reserved           | 4
//! +---------+---------+---------+---------+
//! |                status                 | 8
//! +---------+---------+---------+---------+
//! |               reserved                | 12 .. 255
//! +---------+---------+---------+---------+
//! ```

use super::bytes::{check_zero, get_i32, get_u32, get_u64, put_i32, put_u32, put_u64};
use super::error::Error;
use super::id::HyperDmabufId;
use super::limits::{pages_for_bytes, MAX_PRIV_LEN, PGDIR_MAX_BUFFER_BYTES};
use super::xen::{GrantRef, Status};

/// Size of one ring slot: every request and every response.
pub const SLOT_SIZE: usize = 256;

/// One ring slot, copied out of (or about to be copied into) a ring.
pub type Slot = [u8; SLOT_SIZE];

/// Operation codes. Codes 0x00 and 0x80..=0xff are reserved for future
/// versions; a receiver answers unknown codes with
/// [`Status::NotSupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// The sender exports a new buffer to the receiver.
    Export = 0x01,
    /// The sender replaces the private data of a buffer it exported.
    Update = 0x02,
    /// The sender revokes a buffer it exported; the receiver stops new
    /// imports and answers [`Status::Ok`] if it holds no mapping, or
    /// [`Status::Busy`] with the epoch of its live mapping, and then sends
    /// [`Op::Release`] of that epoch when the mapping is gone.
    Unexport = 0x03,
    /// The sender, an importer, no longer maps the buffer (mapping epoch
    /// given).
    Release = 0x04,
    /// The sender, an importer, has mapped the buffer (a new mapping epoch).
    Mapped = 0x05,
    /// The sender, an exporter, says a fence it attached to a frame of a
    /// buffer has signalled (version 3).
    Signal = 0x06,
}

impl Op {
    /// Decodes an operation code.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownOp`] for a code this version does not define.
    pub const fn from_wire(raw: u8) -> Result<Self, Error> {
        Ok(match raw {
            0x01 => Op::Export,
            0x02 => Op::Update,
            0x03 => Op::Unexport,
            0x04 => Op::Release,
            0x05 => Op::Mapped,
            0x06 => Op::Signal,
            other => return Err(Error::UnknownOp(other)),
        })
    }
}

/// Flags of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportFlags(u32);

impl ExportFlags {
    /// The importer may map the pages writable (the grants are read-write).
    pub const WRITABLE: ExportFlags = ExportFlags(1 << 0);
    /// Every flag this version defines.
    pub const ALL: ExportFlags = ExportFlags(1 << 0);

    /// Decodes flags.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownFlags`] if undefined bits are set.
    pub const fn from_bits(bits: u32) -> Result<Self, Error> {
        if bits & !Self::ALL.0 != 0 {
            Err(Error::UnknownFlags(bits & !Self::ALL.0))
        } else {
            Ok(ExportFlags(bits))
        }
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: ExportFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Private data attached to an export: opaque to the drivers, passed from
/// the exporter's user space to the importer's.
///
/// # Invariants
///
/// `len <= MAX_PRIV_LEN` and the bytes past `len` are zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PrivData {
    len: u8,
    bytes: [u8; MAX_PRIV_LEN],
}

// `len` is stored in a u8.
const _: () = assert!(MAX_PRIV_LEN <= u8::MAX as usize);

impl PrivData {
    /// No private data.
    pub const EMPTY: PrivData = PrivData {
        len: 0,
        bytes: [0; MAX_PRIV_LEN],
    };

    /// Copies `data`.
    ///
    /// # Errors
    ///
    /// [`Error::PrivTooLong`] if `data` is longer than [`MAX_PRIV_LEN`].
    pub fn new(data: &[u8]) -> Result<Self, Error> {
        if data.len() > MAX_PRIV_LEN {
            return Err(Error::PrivTooLong(saturating_u32(data.len())));
        }
        let mut bytes = [0u8; MAX_PRIV_LEN];
        bytes[..data.len()].copy_from_slice(data);
        // INVARIANT: length checked, the tail of `bytes` is zero.
        Ok(PrivData {
            len: data.len() as u8,
            bytes,
        })
    }

    /// Decodes a length and a [`MAX_PRIV_LEN`]-byte area.
    ///
    /// # Errors
    ///
    /// [`Error::PrivTooLong`] for a length over the maximum,
    /// [`Error::ReservedNotZero`] if the area has bytes past the length.
    pub(crate) fn decode(len: u32, area: &[u8], area_offset: usize) -> Result<Self, Error> {
        if len as usize > MAX_PRIV_LEN {
            return Err(Error::PrivTooLong(len));
        }
        let len = len as usize;
        check_zero(area, len, MAX_PRIV_LEN).map_err(|e| match e {
            Error::ReservedNotZero { offset } => Error::ReservedNotZero {
                offset: offset + area_offset,
            },
            other => other,
        })?;
        PrivData::new(&area[..len])
    }

    /// The data.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole zero-padded area, as stored in records.
    pub(crate) fn area(&self) -> &[u8; MAX_PRIV_LEN] {
        &self.bytes
    }
}

impl core::fmt::Debug for PrivData {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrivData({} bytes)", self.len)
    }
}

pub(crate) fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The first protocol version, with a page directory for every buffer.
pub const VERSION_1: u32 = 1;
/// Version 2: version 1, and EXPORT may carry a small buffer's grant
/// references itself ([`INLINE_REFS`]).
pub const VERSION_2: u32 = 2;

/// Version 3: version 2, and an EXPORT or UPDATE may carry a fence that
/// the exporter signals later with [`Op::Signal`].
pub const VERSION_3: u32 = 3;

/// Bit 2 of EXPORT's `flags` on the wire (version 3): the last 8 octets of
/// the slot carry a [`FenceId`], and inline references end before them.
pub const FENCED: u32 = 1 << 2;

/// Where a fenced EXPORT carries its fence: the slot's last 8 octets.
const EXPORT_FENCE: usize = SLOT_SIZE - 8;

/// Bit 1 of EXPORT's `flags` on the wire (version 2): the data pages'
/// grant references follow the private data in the message, and there is
/// no page directory. Not an [`ExportFlags`] flag: it says how the pages
/// are described, not what the importer may do with them.
pub const INLINE_REFS: u32 = 1 << 1;

/// Most grant references one EXPORT carries inline: the 200 octets from
/// the private data to the end of the slot, with no private data.
pub const MAX_INLINE_REFS: usize = (SLOT_SIZE - REQ_PRIV) / 4;

/// Where the inline references start: right after `priv_len` octets of
/// private data, rounded up to 4.
const fn inline_start(priv_len: usize) -> usize {
    REQ_PRIV + priv_len.div_ceil(4) * 4
}

/// Where an EXPORT's inline references must end: the slot's end, or its
/// fence if it carries one.
const fn inline_end(fenced: bool) -> usize {
    if fenced {
        EXPORT_FENCE
    } else {
        SLOT_SIZE
    }
}

/// How many grant references fit inline beside `priv_len` octets of
/// private data (2 with the full 192, 50 with none), and beside a fence
/// if `fenced` (none with the full 192, 48 with none).
pub const fn inline_capacity(priv_len: usize, fenced: bool) -> usize {
    let start = inline_start(priv_len);
    let end = inline_end(fenced);
    if start >= end {
        0
    } else {
        (end - start) / 4
    }
}

/// The grant references of a buffer's data pages, carried in its EXPORT.
///
/// # Invariants
///
/// `len <= MAX_INLINE_REFS`; the entries past `len` are
/// [`GrantRef::FIRST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineRefs {
    len: u8,
    refs: [GrantRef; MAX_INLINE_REFS],
}

const _: () = assert!(MAX_INLINE_REFS <= u8::MAX as usize);

impl InlineRefs {
    /// Copies `refs`.
    ///
    /// # Errors
    ///
    /// [`Error::TooManyInlineRefs`] past [`MAX_INLINE_REFS`].
    pub fn new(refs: &[GrantRef]) -> Result<Self, Error> {
        if refs.len() > MAX_INLINE_REFS {
            return Err(Error::TooManyInlineRefs(saturating_u32(refs.len())));
        }
        let mut out = [GrantRef::FIRST; MAX_INLINE_REFS];
        out[..refs.len()].copy_from_slice(refs);
        // INVARIANT: length checked, the tail is the filler.
        Ok(InlineRefs {
            len: refs.len() as u8,
            refs: out,
        })
    }

    /// The references, one per data page in order.
    pub fn as_slice(&self) -> &[GrantRef] {
        &self.refs[..usize::from(self.len)]
    }
}

/// Where the importer finds the grant references of a buffer's data
/// pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRefs {
    /// In the page directory whose root page is granted under this
    /// reference (protocol.md section 12).
    Directory(GrantRef),
    /// In the EXPORT message itself (version 2, [`INLINE_REFS`]).
    Inline(InlineRefs),
}

impl PageRefs {
    /// The directory's root reference, if the pages are in a directory.
    pub const fn root(&self) -> Option<GrantRef> {
        match self {
            PageRefs::Directory(root) => Some(*root),
            PageRefs::Inline(_) => None,
        }
    }

    /// Every reference the EXPORT names: the directory's root, or each
    /// data page's.
    pub fn named(&self) -> &[GrantRef] {
        match self {
            PageRefs::Directory(root) => core::slice::from_ref(root),
            PageRefs::Inline(refs) => refs.as_slice(),
        }
    }
}

/// A new export, as announced to the importer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    /// The buffer's id.
    pub hid: HyperDmabufId,
    /// Size of the buffer in bytes; the data pages are `ceil(size / 4096)`.
    pub size: u64,
    /// Where the data pages' grant references are.
    pub pages: PageRefs,
    /// Flags of the export.
    pub flags: ExportFlags,
    /// Private data for the importer's user space.
    pub priv_data: PrivData,
    /// The fence the buffer's first contents wait for (version 3).
    pub fence: Option<FenceId>,
}

/// A fence an exporter attached to a frame: the importer's readers wait
/// for it until the exporter sends [`Op::Signal`] with it. Chosen by the
/// exporter, never zero, and never reused while the importer holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FenceId(u64);

impl FenceId {
    /// Checks a raw id from the wire.
    ///
    /// # Errors
    ///
    /// [`Error::BadFence`] for zero.
    pub const fn new(raw: u64) -> Result<Self, Error> {
        if raw == 0 {
            Err(Error::BadFence)
        } else {
            // INVARIANT: checked above.
            Ok(FenceId(raw))
        }
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// A field that is zero for no fence.
    const fn optional(raw: u64) -> Option<FenceId> {
        if raw == 0 {
            None
        } else {
            Some(FenceId(raw))
        }
    }
}

/// How the exporter's fence ended, as a SIGNAL says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceResult {
    /// The work completed: the frame is ready.
    Signalled = 0,
    /// The work failed: the frame's contents are undefined.
    Failed = 1,
}

impl FenceResult {
    /// Decodes a SIGNAL's result.
    ///
    /// # Errors
    ///
    /// [`Error::BadFence`] for a value this version does not define.
    pub const fn from_wire(raw: u32) -> Result<Self, Error> {
        match raw {
            0 => Ok(FenceResult::Signalled),
            1 => Ok(FenceResult::Failed),
            _ => Err(Error::BadFence),
        }
    }
}

/// The body of a request, by operation.
// An EXPORT with its inline references is about twice the size of the
// other variants (440 octets): a message lives on the stack between a slot
// and its handling, once at a time, and boxing needs an allocator the
// protocol core does not have.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// [`Op::Export`].
    Export(Export),
    /// [`Op::Update`]: new private data for an exported buffer.
    Update {
        /// The buffer.
        hid: HyperDmabufId,
        /// Its new private data.
        priv_data: PrivData,
        /// The fence the new frame waits for (version 3).
        fence: Option<FenceId>,
    },
    /// [`Op::Unexport`].
    Unexport(HyperDmabufId),
    /// [`Op::Release`].
    Release {
        /// The buffer.
        hid: HyperDmabufId,
        /// The mapping epoch released.
        epoch: MapEpoch,
    },
    /// [`Op::Mapped`].
    Mapped {
        /// The buffer.
        hid: HyperDmabufId,
        /// The epoch of the new mapping.
        epoch: MapEpoch,
    },
    /// [`Op::Signal`].
    Signal {
        /// The buffer whose frame the fence came with.
        hid: HyperDmabufId,
        /// The fence.
        fence: FenceId,
        /// How it ended.
        result: FenceResult,
    },
}

/// Counts the times an importer mapped one buffer: its first mapping is
/// epoch 1, each new mapping after a release the next one.
///
/// MAPPED and RELEASE travel on the importer's ring while its answer to
/// UNEXPORT travels on the exporter's, so the exporter can see them in
/// either order. The epoch says which mapping each message is about: the
/// exporter ends the export only once it has seen the RELEASE of the
/// epoch the UNEXPORT answer named, never on a stale one.
///
/// # Invariants
///
/// Never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapEpoch(u32);

impl MapEpoch {
    /// The first mapping.
    pub const FIRST: MapEpoch = MapEpoch(1);

    /// Checks a raw epoch from the wire.
    ///
    /// # Errors
    ///
    /// [`Error::BadEpoch`] for zero.
    pub const fn new(raw: u32) -> Result<Self, Error> {
        if raw == 0 {
            Err(Error::BadEpoch)
        } else {
            // INVARIANT: checked above.
            Ok(MapEpoch(raw))
        }
    }

    /// The raw value.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The epoch after this one (saturating: four billion mappings of one
    /// buffer do not happen, and saturation keeps the order).
    pub const fn next(self) -> MapEpoch {
        MapEpoch(self.0.saturating_add(1))
    }
}

impl Message {
    /// The operation code of this message.
    pub const fn op(&self) -> Op {
        match self {
            Message::Export(_) => Op::Export,
            Message::Update { .. } => Op::Update,
            Message::Unexport(_) => Op::Unexport,
            Message::Release { .. } => Op::Release,
            Message::Mapped { .. } => Op::Mapped,
            Message::Signal { .. } => Op::Signal,
        }
    }

    /// The buffer the message is about.
    pub const fn hid(&self) -> &HyperDmabufId {
        match self {
            Message::Export(export) => &export.hid,
            Message::Update { hid, .. }
            | Message::Unexport(hid)
            | Message::Release { hid, .. }
            | Message::Mapped { hid, .. }
            | Message::Signal { hid, .. } => hid,
        }
    }
}

// Request field offsets. EXPORT uses all of them; UPDATE keeps the private
// data at the same place and reserves the rest; the other operations carry
// only the id.
const REQ_ID: usize = 0;
const REQ_OP: usize = 4;
const REQ_HID: usize = 8;
const REQ_SIZE: usize = 32;
const REQ_NR_PAGES: usize = 40;
const REQ_DIR_GREF: usize = 44;
const REQ_FLAGS: usize = 48;
const REQ_PRIV_LEN: usize = 52;
const REQ_PRIV: usize = 56;
const REQ_END: usize = REQ_PRIV + MAX_PRIV_LEN;
const _: () = assert!(REQ_END <= SLOT_SIZE);
const _: () = assert!(REQ_END <= EXPORT_FENCE);
const HID_END: usize = REQ_HID + HyperDmabufId::WIRE_SIZE;
const _: () = assert!(HID_END == REQ_SIZE);
// MAPPED and RELEASE carry their epoch right after the id.
const REQ_EPOCH: usize = HID_END;
// UPDATE (version 3) carries its fence where EXPORT has its size; SIGNAL
// its fence there too, and its result after it.
const REQ_FENCE: usize = HID_END;
const REQ_RESULT: usize = REQ_FENCE + 8;

// Response field offsets.
const RSP_STATUS: usize = 8;
const RSP_EPOCH: usize = 12;
const RSP_END: usize = 16;

/// A request: what one end asks of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the sender, echoed in the response.
    pub req_id: u32,
    /// What is asked.
    pub message: Message,
}

impl Request {
    /// Encodes into a slot; every reserved byte is zero.
    pub fn encode(&self) -> Slot {
        let mut slot = [0u8; SLOT_SIZE];
        put_u32(&mut slot, REQ_ID, self.req_id);
        slot[REQ_OP] = self.message.op() as u8;
        slot[REQ_HID..HID_END].copy_from_slice(&self.message.hid().encode());
        match &self.message {
            Message::Export(export) => {
                put_u64(&mut slot, REQ_SIZE, export.size);
                // An `Export` that went through `decode` or was built by the
                // driver has a size whose page count fits; saturate instead
                // of panicking for one built by hand, so that the receiver
                // refuses it.
                let pages = pages_for_bytes(export.size).unwrap_or(u32::MAX);
                put_u32(&mut slot, REQ_NR_PAGES, pages);
                put_priv(&mut slot, &export.priv_data);
                let mut flags = export.flags.bits();
                if let Some(fence) = export.fence {
                    flags |= FENCED;
                    put_u64(&mut slot, EXPORT_FENCE, fence.get());
                }
                match &export.pages {
                    PageRefs::Directory(root) => {
                        put_u32(&mut slot, REQ_DIR_GREF, root.get());
                    }
                    PageRefs::Inline(refs) => {
                        flags |= INLINE_REFS;
                        // An `Export` built by hand with more references
                        // than fit beside its private data loses the
                        // rest: the receiver refuses the count.
                        let start = inline_start(export.priv_data.len());
                        let end = inline_end(export.fence.is_some());
                        for (i, r) in refs.as_slice().iter().enumerate() {
                            let at = start + 4 * i;
                            if at + 4 <= end {
                                put_u32(&mut slot, at, r.get());
                            }
                        }
                    }
                }
                put_u32(&mut slot, REQ_FLAGS, flags);
            }
            Message::Update {
                priv_data, fence, ..
            } => {
                put_priv(&mut slot, priv_data);
                put_u64(&mut slot, REQ_FENCE, fence.map_or(0, FenceId::get));
            }
            Message::Signal { fence, result, .. } => {
                put_u64(&mut slot, REQ_FENCE, fence.get());
                put_u32(&mut slot, REQ_RESULT, *result as u32);
            }
            Message::Release { epoch, .. } | Message::Mapped { epoch, .. } => {
                put_u32(&mut slot, REQ_EPOCH, epoch.get())
            }
            Message::Unexport(_) => {}
        }
        slot
    }

    /// Decodes a slot copied out of a ring, rejecting anything the
    /// session's `version` does not define. `max_buffer_bytes` is the
    /// largest buffer the receiver accepts.
    ///
    /// # Errors
    ///
    /// Any of the validation errors; [`Status::from`] gives the status to
    /// answer with. The `req_id` is in the slot's first four bytes even
    /// when decoding fails, see [`request_id`].
    pub fn decode(slot: &Slot, max_buffer_bytes: u64, version: u32) -> Result<Self, Error> {
        let req_id = request_id(slot);
        let op = Op::from_wire(slot[REQ_OP])?;
        if op == Op::Signal && version < VERSION_3 {
            return Err(Error::UnknownOp(slot[REQ_OP]));
        }
        check_zero(slot, REQ_OP + 1, REQ_HID)?;
        let mut hid_bytes = [0u8; HyperDmabufId::WIRE_SIZE];
        hid_bytes.copy_from_slice(&slot[REQ_HID..HID_END]);
        let hid = HyperDmabufId::decode(&hid_bytes)?;
        let message = match op {
            Op::Export => {
                // A buffer the page directory cannot describe could never
                // be imported: refused now, whatever the limit configured.
                let max_buffer_bytes = max_buffer_bytes.min(PGDIR_MAX_BUFFER_BYTES);
                let size = get_u64(slot, REQ_SIZE);
                if size == 0 {
                    return Err(Error::EmptyBuffer);
                }
                if size > max_buffer_bytes {
                    return Err(Error::BufferTooLarge {
                        size,
                        max: max_buffer_bytes,
                    });
                }
                let found = get_u32(slot, REQ_NR_PAGES);
                let expected = pages_for_bytes(size).ok_or(Error::BufferTooLarge {
                    size,
                    max: max_buffer_bytes,
                })?;
                if found != expected {
                    return Err(Error::CountMismatch { expected, found });
                }
                let mut raw_flags = get_u32(slot, REQ_FLAGS);
                let fenced = version >= VERSION_3 && raw_flags & FENCED != 0;
                let fence = if fenced {
                    raw_flags &= !FENCED;
                    Some(FenceId::new(get_u64(slot, EXPORT_FENCE))?)
                } else {
                    None
                };
                let (pages, flags, priv_data) =
                    if version >= VERSION_2 && raw_flags & INLINE_REFS != 0 {
                        decode_inline(slot, found, raw_flags, fenced)?
                    } else {
                        let root = GrantRef::new(get_u32(slot, REQ_DIR_GREF))?;
                        let flags = ExportFlags::from_bits(raw_flags)?;
                        (
                            PageRefs::Directory(root),
                            flags,
                            get_priv(slot, inline_end(fenced))?,
                        )
                    };
                Message::Export(Export {
                    hid,
                    size,
                    pages,
                    flags,
                    priv_data,
                    fence,
                })
            }
            Op::Update => {
                let fence = if version >= VERSION_3 {
                    FenceId::optional(get_u64(slot, REQ_FENCE))
                } else {
                    check_zero(slot, REQ_FENCE, REQ_FENCE + 8)?;
                    None
                };
                check_zero(slot, REQ_FENCE + 8, REQ_PRIV_LEN)?;
                let priv_data = get_priv(slot, SLOT_SIZE)?;
                Message::Update {
                    hid,
                    priv_data,
                    fence,
                }
            }
            Op::Signal => {
                let fence = FenceId::new(get_u64(slot, REQ_FENCE))?;
                let result = FenceResult::from_wire(get_u32(slot, REQ_RESULT))?;
                check_zero(slot, REQ_RESULT + 4, SLOT_SIZE)?;
                Message::Signal { hid, fence, result }
            }
            Op::Unexport => {
                check_zero(slot, HID_END, SLOT_SIZE)?;
                Message::Unexport(hid)
            }
            Op::Release | Op::Mapped => {
                let epoch = MapEpoch::new(get_u32(slot, REQ_EPOCH))?;
                check_zero(slot, REQ_EPOCH + 4, SLOT_SIZE)?;
                if op == Op::Release {
                    Message::Release { hid, epoch }
                } else {
                    Message::Mapped { hid, epoch }
                }
            }
        };
        Ok(Request { req_id, message })
    }
}

/// The `req_id` of a request slot, readable even when the rest of the slot
/// is invalid, so that the receiver can answer with an error status.
pub fn request_id(slot: &Slot) -> u32 {
    get_u32(slot, REQ_ID)
}

/// The raw operation byte of a request slot, echoed in an error response.
pub fn request_op(slot: &Slot) -> u8 {
    slot[REQ_OP]
}

fn put_priv(slot: &mut Slot, priv_data: &PrivData) {
    put_u32(slot, REQ_PRIV_LEN, saturating_u32(priv_data.len()));
    slot[REQ_PRIV..REQ_END].copy_from_slice(priv_data.area());
}

/// EXPORT's body with [`INLINE_REFS`] (version 2), checked in the order
/// of protocol.md 11.3: the directory field zero, no other unknown flag,
/// the private data's length, the count of references against the room
/// beside it (and its fence, if `fenced`), each reference, then every
/// octet but the fields zero.
fn decode_inline(
    slot: &Slot,
    nr_pages: u32,
    raw_flags: u32,
    fenced: bool,
) -> Result<(PageRefs, ExportFlags, PrivData), Error> {
    if get_u32(slot, REQ_DIR_GREF) != 0 {
        return Err(Error::ReservedNotZero {
            offset: REQ_DIR_GREF,
        });
    }
    let flags = ExportFlags::from_bits(raw_flags & !INLINE_REFS)?;
    let priv_len = get_u32(slot, REQ_PRIV_LEN);
    if priv_len as usize > MAX_PRIV_LEN {
        return Err(Error::PrivTooLong(priv_len));
    }
    let len = priv_len as usize;
    let count = nr_pages as usize;
    if count > inline_capacity(len, fenced) {
        return Err(Error::TooManyInlineRefs(nr_pages));
    }
    let start = inline_start(len);
    let mut refs = [GrantRef::FIRST; MAX_INLINE_REFS];
    for (i, r) in refs.iter_mut().take(count).enumerate() {
        *r = GrantRef::new(get_u32(slot, start + 4 * i))?;
    }
    check_zero(slot, REQ_PRIV + len, start)?;
    check_zero(slot, start + 4 * count, inline_end(fenced))?;
    let priv_data = PrivData::new(&slot[REQ_PRIV..REQ_PRIV + len])?;
    let refs = InlineRefs::new(&refs[..count])?;
    Ok((PageRefs::Inline(refs), flags, priv_data))
}

/// The private data, and the octets after it zero up to `end` (where a
/// fence starts, or the slot's end).
fn get_priv(slot: &Slot, end: usize) -> Result<PrivData, Error> {
    let priv_data = PrivData::decode(
        get_u32(slot, REQ_PRIV_LEN),
        &slot[REQ_PRIV..REQ_END],
        REQ_PRIV,
    )?;
    check_zero(slot, REQ_END, end)?;
    Ok(priv_data)
}

/// A response: the outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The `req_id` of the request answered.
    pub req_id: u32,
    /// The operation byte of the request answered, echoed as received (an
    /// unknown operation is answered with its own code).
    pub op: u8,
    /// The outcome.
    pub status: Status,
    /// For UNEXPORT answered [`Status::Busy`]: the epoch of the mapping
    /// the importer still holds, whose RELEASE will follow. `None` for
    /// every other answer (zero on the wire).
    pub map_epoch: Option<MapEpoch>,
}

impl Response {
    /// Encodes into a slot.
    pub fn encode(&self) -> Slot {
        let mut slot = [0u8; SLOT_SIZE];
        put_u32(&mut slot, REQ_ID, self.req_id);
        slot[REQ_OP] = self.op;
        put_i32(&mut slot, RSP_STATUS, self.status.to_wire());
        put_u32(
            &mut slot,
            RSP_EPOCH,
            self.map_epoch.map_or(0, MapEpoch::get),
        );
        slot
    }

    /// Decodes a slot copied out of a ring.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownOp`], [`Error::ReservedNotZero`],
    /// [`Error::BadStatus`], or [`Error::BadEpoch`] for an epoch that is
    /// missing from a Busy answer to UNEXPORT or present anywhere else.
    /// Whether `req_id` names an outstanding request is for the caller to
    /// check.
    pub fn decode(slot: &Slot) -> Result<Self, Error> {
        let op = Op::from_wire(slot[REQ_OP])?;
        check_zero(slot, REQ_OP + 1, RSP_STATUS)?;
        let status = Status::from_wire(get_i32(slot, RSP_STATUS))?;
        let raw_epoch = get_u32(slot, RSP_EPOCH);
        let map_epoch = if op == Op::Unexport && status == Status::Busy {
            Some(MapEpoch::new(raw_epoch)?)
        } else if raw_epoch != 0 {
            return Err(Error::BadEpoch);
        } else {
            None
        };
        check_zero(slot, RSP_END, SLOT_SIZE)?;
        Ok(Response {
            req_id: get_u32(slot, REQ_ID),
            op: op as u8,
            status,
            map_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::KEY_LEN;
    use crate::limits::DEFAULT_MAX_BUFFER_BYTES;
    use proptest::prelude::*;

    const MAX: u64 = DEFAULT_MAX_BUFFER_BYTES;

    fn hid_strategy() -> impl Strategy<Value = HyperDmabufId> {
        (1u64.., any::<[u8; KEY_LEN]>()).prop_map(|(id, key)| HyperDmabufId::new(id, key).unwrap())
    }

    fn priv_strategy() -> impl Strategy<Value = PrivData> {
        proptest::collection::vec(any::<u8>(), 0..=MAX_PRIV_LEN)
            .prop_map(|v| PrivData::new(&v).unwrap())
    }

    fn fence_strategy() -> impl Strategy<Value = Option<FenceId>> {
        proptest::option::of(1u64..).prop_map(|f| f.map(|f| FenceId::new(f).unwrap()))
    }

    fn message_strategy() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                hid_strategy(),
                1..=MAX,
                8u32..,
                any::<bool>(),
                priv_strategy(),
                fence_strategy()
            )
                .prop_map(|(hid, size, gref, rw, priv_data, fence)| Message::Export(
                    Export {
                        hid,
                        size,
                        pages: PageRefs::Directory(GrantRef::new(gref).unwrap()),
                        flags: if rw {
                            ExportFlags::WRITABLE
                        } else {
                            ExportFlags::default()
                        },
                        priv_data,
                        fence,
                    }
                )),
            (
                hid_strategy(),
                priv_strategy(),
                any::<bool>(),
                fence_strategy()
            )
                .prop_flat_map(|(hid, priv_data, rw, fence)| {
                    let room = inline_capacity(priv_data.len(), fence.is_some());
                    (
                        Just((hid, priv_data, rw, fence)),
                        proptest::collection::vec(8u32.., 1..=room.max(1)),
                        0u64..4096,
                    )
                })
                .prop_filter("room for one reference", |((_, p, _, f), _, _)| {
                    inline_capacity(p.len(), f.is_some()) > 0
                })
                .prop_map(|((hid, priv_data, rw, fence), refs, short)| {
                    let refs: std::vec::Vec<GrantRef> = refs
                        .into_iter()
                        .map(|r| GrantRef::new(r).unwrap())
                        .collect();
                    Message::Export(Export {
                        hid,
                        // The last page partly used.
                        size: refs.len() as u64 * 4096 - short,
                        pages: PageRefs::Inline(InlineRefs::new(&refs).unwrap()),
                        flags: if rw {
                            ExportFlags::WRITABLE
                        } else {
                            ExportFlags::default()
                        },
                        priv_data,
                        fence,
                    })
                }),
            (hid_strategy(), priv_strategy(), fence_strategy()).prop_map(
                |(hid, priv_data, fence)| Message::Update {
                    hid,
                    priv_data,
                    fence
                }
            ),
            (hid_strategy(), 1u64.., any::<bool>()).prop_map(|(hid, f, failed)| {
                Message::Signal {
                    hid,
                    fence: FenceId::new(f).unwrap(),
                    result: if failed {
                        FenceResult::Failed
                    } else {
                        FenceResult::Signalled
                    },
                }
            }),
            hid_strategy().prop_map(Message::Unexport),
            (hid_strategy(), 1u32..).prop_map(|(hid, e)| Message::Release {
                hid,
                epoch: MapEpoch::new(e).unwrap()
            }),
            (hid_strategy(), 1u32..).prop_map(|(hid, e)| Message::Mapped {
                hid,
                epoch: MapEpoch::new(e).unwrap()
            }),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trip(req_id in any::<u32>(), message in message_strategy()) {
            let request = Request { req_id, message };
            prop_assert_eq!(Request::decode(&request.encode(), MAX, VERSION_3), Ok(request));
        }

        #[test]
        fn response_round_trip(req_id in any::<u32>(), op in 1u8..=6, status in prop::sample::select(&[0, -1, -2, -7, -12, -16, -17, -22, -28, -95][..]), epoch in 1u32..) {
            let status = Status::from_wire(status).unwrap();
            let map_epoch = (op == Op::Unexport as u8 && status == Status::Busy).then(|| MapEpoch::new(epoch).unwrap());
            let response = Response { req_id, op, status, map_epoch };
            prop_assert_eq!(Response::decode(&response.encode()), Ok(response));
        }

        /// Any slot a hostile peer writes decodes to a value or an error,
        /// and a value re-encodes to exactly the bytes received: nothing is
        /// accepted that this version would not itself send.
        #[test]
        fn arbitrary_slots_are_canonical_or_refused(bytes in proptest::collection::vec(any::<u8>(), SLOT_SIZE), version in VERSION_1..=VERSION_3) {
            let mut slot = [0u8; SLOT_SIZE];
            slot.copy_from_slice(&bytes);
            if let Ok(request) = Request::decode(&slot, MAX, version) {
                prop_assert_eq!(request.encode(), slot);
            }
            if let Ok(response) = Response::decode(&slot) {
                prop_assert_eq!(response.encode(), slot);
            }
        }

        /// Flipping any single byte of a valid request either still decodes
        /// to a canonical request or is refused; never a panic.
        #[test]
        fn single_byte_corruption(req_id in any::<u32>(), message in message_strategy(), at in 0..SLOT_SIZE, value in any::<u8>()) {
            let mut slot = Request { req_id, message }.encode();
            slot[at] = value;
            if let Ok(request) = Request::decode(&slot, MAX, VERSION_3) {
                prop_assert_eq!(request.encode(), slot);
            }
        }

        /// Each version accepts everything the one before does, the same
        /// way: a peer that speaks an older version is understood.
        #[test]
        fn versions_extend_each_other(bytes in proptest::collection::vec(any::<u8>(), SLOT_SIZE)) {
            let mut slot = [0u8; SLOT_SIZE];
            slot.copy_from_slice(&bytes);
            for older in [VERSION_1, VERSION_2] {
                if let Ok(request) = Request::decode(&slot, MAX, older) {
                    prop_assert_eq!(Request::decode(&slot, MAX, older + 1), Ok(request));
                }
            }
        }
    }

    fn export(size: u64) -> Request {
        Request {
            req_id: 9,
            message: Message::Export(Export {
                hid: HyperDmabufId::new(1, [3; KEY_LEN]).unwrap(),
                size,
                pages: PageRefs::Directory(GrantRef::new(100).unwrap()),
                flags: ExportFlags::default(),
                priv_data: PrivData::new(b"meta").unwrap(),
                fence: None,
            }),
        }
    }

    fn inline_export(pages: u32, priv_len: usize) -> Slot {
        let refs: std::vec::Vec<GrantRef> = (0..pages)
            .map(|i| GrantRef::new(100 + i).unwrap())
            .collect();
        Request {
            req_id: 9,
            message: Message::Export(Export {
                hid: HyperDmabufId::new(1, [3; KEY_LEN]).unwrap(),
                size: u64::from(pages) * 4096,
                pages: PageRefs::Inline(InlineRefs::new(&refs).unwrap()),
                flags: ExportFlags::WRITABLE,
                priv_data: PrivData::new(&[7u8; MAX_PRIV_LEN][..priv_len]).unwrap(),
                fence: None,
            }),
        }
        .encode()
    }

    #[test]
    fn inline_references_follow_the_private_data() {
        assert_eq!(
            (
                inline_capacity(0, false),
                inline_capacity(1, false),
                inline_capacity(4, false)
            ),
            (50, 49, 49)
        );
        assert_eq!(
            (inline_capacity(190, false), inline_capacity(192, false)),
            (2, 2)
        );
        // Three octets of private data, one of padding, then the refs.
        let slot = inline_export(3, 3);
        assert_eq!(get_u32(&slot, REQ_FLAGS), 1 | INLINE_REFS);
        assert_eq!(get_u32(&slot, REQ_DIR_GREF), 0);
        assert_eq!(slot[REQ_PRIV + 3], 0);
        assert_eq!(get_u32(&slot, REQ_PRIV + 4), 100);
        assert_eq!(get_u32(&slot, REQ_PRIV + 12), 102);
        let Ok(Request {
            message: Message::Export(e),
            ..
        }) = Request::decode(&slot, MAX, VERSION_2)
        else {
            panic!("an inline export decodes in version 2");
        };
        let PageRefs::Inline(refs) = e.pages else {
            panic!("inline");
        };
        assert_eq!(refs.as_slice().len(), 3);
        // Version 1 knows no inline references: its directory reference
        // (E5, checked before the flags) is 0.
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_1),
            Err(Error::InvalidGref(0))
        );
        // Full private data leaves room for two.
        assert!(Request::decode(&inline_export(2, 192), MAX, VERSION_2).is_ok());

        // The checks, in order: a directory reference beside inline ones.
        let mut bad = slot;
        put_u32(&mut bad, REQ_DIR_GREF, 100);
        assert_eq!(
            Request::decode(&bad, MAX, VERSION_2),
            Err(Error::ReservedNotZero {
                offset: REQ_DIR_GREF
            })
        );
        // More pages than fit: 50 with 1 octet of private data.
        let mut bad = inline_export(49, 1);
        put_u64(&mut bad, REQ_SIZE, 50 * 4096);
        put_u32(&mut bad, REQ_NR_PAGES, 50);
        assert_eq!(
            Request::decode(&bad, MAX, VERSION_2),
            Err(Error::TooManyInlineRefs(50))
        );
        // A reserved reference.
        let mut bad = slot;
        put_u32(&mut bad, REQ_PRIV + 8, 3);
        assert_eq!(
            Request::decode(&bad, MAX, VERSION_2),
            Err(Error::InvalidGref(3))
        );
        // The padding after the private data, and past the references.
        let mut bad = slot;
        bad[REQ_PRIV + 3] = 1;
        assert_eq!(
            Request::decode(&bad, MAX, VERSION_2),
            Err(Error::ReservedNotZero {
                offset: REQ_PRIV + 3
            })
        );
        let mut bad = slot;
        bad[REQ_PRIV + 16] = 1;
        assert_eq!(
            Request::decode(&bad, MAX, VERSION_2),
            Err(Error::ReservedNotZero {
                offset: REQ_PRIV + 16
            })
        );
    }

    #[test]
    fn export_checks() {
        let mut slot = export(4096 * 3 + 1).encode();
        assert_eq!(get_u32(&slot, REQ_NR_PAGES), 4);
        put_u32(&mut slot, REQ_NR_PAGES, 3);
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::CountMismatch {
                expected: 4,
                found: 3
            })
        );

        let slot = export(MAX + 1).encode();
        assert!(matches!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::BufferTooLarge { .. })
        ));

        // Within a limit above the directory's reach, but beyond it: no
        // importer could read its directory, so it is refused at once.
        let huge = 1 << 40;
        let slot = export(PGDIR_MAX_BUFFER_BYTES).encode();
        assert!(Request::decode(&slot, huge, VERSION_2).is_ok());
        let slot = export(PGDIR_MAX_BUFFER_BYTES + 4096).encode();
        assert_eq!(
            Request::decode(&slot, huge, VERSION_2),
            Err(Error::BufferTooLarge {
                size: PGDIR_MAX_BUFFER_BYTES + 4096,
                max: PGDIR_MAX_BUFFER_BYTES
            })
        );

        let mut slot = export(4096).encode();
        put_u64(&mut slot, REQ_SIZE, 0);
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::EmptyBuffer)
        );

        let mut slot = export(4096).encode();
        put_u32(&mut slot, REQ_DIR_GREF, 7);
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::InvalidGref(7))
        );

        let mut slot = export(4096).encode();
        put_u32(&mut slot, REQ_FLAGS, 6);
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_1),
            Err(Error::UnknownFlags(6))
        );
        put_u32(&mut slot, REQ_FLAGS, 4);
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::UnknownFlags(4))
        );

        let mut slot = export(4096).encode();
        put_u32(&mut slot, REQ_PRIV_LEN, 193);
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::PrivTooLong(193))
        );

        // Private bytes past the declared length are reserved.
        let mut slot = export(4096).encode();
        slot[REQ_PRIV + 4] = 1;
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::ReservedNotZero {
                offset: REQ_PRIV + 4
            })
        );

        let mut slot = export(4096).encode();
        slot[SLOT_SIZE - 1] = 1;
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::ReservedNotZero {
                offset: SLOT_SIZE - 1
            })
        );

        let mut slot = export(4096).encode();
        slot[REQ_OP] = 0x80;
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::UnknownOp(0x80))
        );
        assert_eq!(request_id(&slot), 9);
        assert_eq!(Status::from(Error::UnknownOp(0x80)), Status::NotSupported);
    }

    #[test]
    fn update_reserves_export_fields() {
        let hid = HyperDmabufId::new(5, [1; KEY_LEN]).unwrap();
        let mut slot = Request {
            req_id: 1,
            message: Message::Update {
                hid,
                priv_data: PrivData::EMPTY,
                fence: None,
            },
        }
        .encode();
        put_u64(&mut slot, REQ_SIZE, 4096);
        assert_eq!(
            Request::decode(&slot, MAX, VERSION_2),
            Err(Error::ReservedNotZero {
                offset: REQ_SIZE + 1
            })
        );
    }

    #[test]
    fn response_rejects_unknown_status() {
        let mut slot = Response {
            req_id: 1,
            op: 1,
            status: Status::Ok,
            map_epoch: None,
        }
        .encode();
        put_i32(&mut slot, RSP_STATUS, -5);
        assert_eq!(Response::decode(&slot), Err(Error::BadStatus(-5)));
    }

    #[test]
    fn epochs_are_checked() {
        let hid = HyperDmabufId::new(5, [1; KEY_LEN]).unwrap();
        let mut slot = Request {
            req_id: 1,
            message: Message::Mapped {
                hid,
                epoch: MapEpoch::FIRST,
            },
        }
        .encode();
        put_u32(&mut slot, REQ_EPOCH, 0);
        assert_eq!(Request::decode(&slot, MAX, VERSION_2), Err(Error::BadEpoch));

        // Busy to UNEXPORT must name the epoch; nothing else may.
        let busy = Response {
            req_id: 1,
            op: Op::Unexport as u8,
            status: Status::Busy,
            map_epoch: None,
        }
        .encode();
        assert_eq!(Response::decode(&busy), Err(Error::BadEpoch));
        let mut ok = Response {
            req_id: 1,
            op: Op::Unexport as u8,
            status: Status::Ok,
            map_epoch: None,
        }
        .encode();
        put_u32(&mut ok, RSP_EPOCH, 3);
        assert_eq!(Response::decode(&ok), Err(Error::BadEpoch));
    }
}
