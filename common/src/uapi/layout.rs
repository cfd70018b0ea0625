// SPDX-License-Identifier: MIT
//! The layout of every uapi record and the value of every uapi constant,
//! under the names of the C header `include/uapi/linux/hyper_dmabuf.h`.
//!
//! This is the one definition of the records. The codecs of
//! [`super`] read and write each field at the offset named here, and the
//! host test `common/tests/c_header.rs` compiles a C program against the
//! header and checks that every `sizeof`, `offsetof`, field type and
//! constant value there is the one this table gives.
//!
//! Each record is checked where it is defined, at compile time
//! (`Record::new`): its fields follow one another from offset 0 with no
//! gap and no overlap, each at a multiple of its natural alignment, and
//! its size is a multiple of 8. No C compiler then has a reason to insert
//! padding, and the layout is the same for 32-bit and 64-bit processes:
//! i386 aligns a `__u64` to 4 inside a struct where x86-64 aligns it to 8,
//! and with every `__u64` at a multiple of 8 and every size a multiple of
//! 8 the two agree. The kernel copies exactly the size a command number
//! encodes, so a compat ioctl path is not needed.

use super::super::id::{HyperDmabufId, KEY_LEN, TEXT_LEN};
use super::super::limits::MAX_PRIV_LEN;
use super::{
    EventType, QueryItem, DEVICE_PATH, EXPORT_RW, IMPORT_MODE_OUT, IMPORT_RW, IOCTL_EXPORT,
    IOCTL_IMPORT, IOCTL_LIST, IOCTL_MAGIC, IOCTL_QUERY, IOCTL_UNEXPORT, IOCTL_UPDATE,
    KIND_EXPORTED, KIND_IMPORTED, MAX_UNEXPORT_DELAY_MS, STATE_BUSY, STATE_DELAYED_UNEXPORT,
    STATE_RW, STATE_UNEXPORTED,
};
use core::ops::Range;

/// The C type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CType {
    /// `__u32`.
    U32,
    /// `__s32`.
    S32,
    /// `__u64`.
    U64,
    /// `__u8 name[N]`.
    Bytes(usize),
    /// `struct hdmabuf_id` ([`id::RECORD`]).
    Id,
}

impl CType {
    /// `sizeof` the type.
    pub const fn size(self) -> usize {
        match self {
            CType::U32 | CType::S32 => 4,
            CType::U64 => 8,
            CType::Bytes(len) => len,
            CType::Id => HyperDmabufId::WIRE_SIZE,
        }
    }

    /// The alignment every field of this type keeps: its natural one (8
    /// for `struct hdmabuf_id`, which holds a `__u64`).
    pub const fn align(self) -> usize {
        match self {
            CType::U32 | CType::S32 => 4,
            CType::U64 | CType::Id => 8,
            CType::Bytes(_) => 1,
        }
    }
}

/// One field of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Its name in the C struct.
    pub name: &'static str,
    /// Byte offset from the start of the record.
    pub offset: usize,
    /// Its C type.
    pub ty: CType,
}

impl Field {
    const fn new(name: &'static str, offset: usize, ty: CType) -> Self {
        Field { name, offset, ty }
    }

    /// Its size in bytes.
    pub const fn size(&self) -> usize {
        self.ty.size()
    }

    /// The offset just past it.
    pub const fn end(&self) -> usize {
        self.offset + self.ty.size()
    }

    /// The bytes it takes in its record.
    pub const fn bytes(&self) -> Range<usize> {
        self.offset..self.end()
    }
}

/// One record: a C struct of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The struct's tag (`struct hdmabuf_export` is `"hdmabuf_export"`).
    pub name: &'static str,
    /// `sizeof` the struct.
    pub size: usize,
    /// Every field, in order.
    pub fields: &'static [Field],
}

impl Record {
    /// A record of `size` bytes made of `fields`.
    ///
    /// # Panics
    ///
    /// Unless the fields follow one another from offset 0 to `size`
    /// without gap or overlap, each at a multiple of its alignment, and
    /// `size` is a multiple of 8. Records are constants, so this fails
    /// the build, never a running program.
    const fn new(name: &'static str, size: usize, fields: &'static [Field]) -> Self {
        let mut at = 0;
        let mut i = 0;
        while i < fields.len() {
            let field = &fields[i];
            assert!(field.offset == at, "a gap or an overlap before a field");
            assert!(
                field.offset % field.ty.align() == 0,
                "a field off its natural alignment"
            );
            at = field.end();
            i += 1;
        }
        assert!(at == size, "the fields do not fill the record");
        assert!(size % 8 == 0, "a record size that is not a multiple of 8");
        Record { name, size, fields }
    }
}

/// `struct hdmabuf_id`: a buffer's id ([`HyperDmabufId`]).
pub mod id {
    use super::{CType, Field, Record, KEY_LEN};

    /// The exporter's number for the buffer, never 0.
    pub const ID: Field = Field::new("id", 0, CType::U64);
    /// Random bytes that make the id unguessable.
    pub const KEY: Field = Field::new("key", 8, CType::Bytes(KEY_LEN));
    /// The record.
    pub const RECORD: Record = Record::new("hdmabuf_id", 24, &[ID, KEY]);
}

/// `struct hdmabuf_export` ([`ExportArgs`](super::ExportArgs)).
pub mod export {
    use super::{CType, Field, Record, MAX_PRIV_LEN};

    /// In: the local dma-buf to share.
    pub const DMABUF_FD: Field = Field::new("dmabuf_fd", 0, CType::S32);
    /// In: the domain to share it with.
    pub const REMOTE_DOMID: Field = Field::new("remote_domid", 4, CType::U32);
    /// In: `EXPORT_RW` or 0.
    pub const FLAGS: Field = Field::new("flags", 8, CType::U32);
    /// In: bytes of `priv` used.
    pub const PRIV_LEN: Field = Field::new("priv_len", 12, CType::U32);
    /// In: private data for the importer.
    pub const PRIV: Field = Field::new("priv", 16, CType::Bytes(MAX_PRIV_LEN));
    /// Out: the buffer's id.
    pub const HID: Field = Field::new("hid", 208, CType::Id);
    /// The record.
    pub const RECORD: Record = Record::new(
        "hdmabuf_export",
        232,
        &[DMABUF_FD, REMOTE_DOMID, FLAGS, PRIV_LEN, PRIV, HID],
    );
}

/// `struct hdmabuf_import` ([`ImportArgs`](super::ImportArgs)).
pub mod import {
    use super::{CType, Field, Record};

    /// In: the buffer.
    pub const HID: Field = Field::new("hid", 0, CType::Id);
    /// In: `IMPORT_RW` or 0. Out: `IMPORT_MODE_OUT`, and `IMPORT_RW` if
    /// the new fd is `O_RDWR`.
    pub const FLAGS: Field = Field::new("flags", 24, CType::U32);
    /// Out: the new dma-buf fd.
    pub const FD: Field = Field::new("fd", 28, CType::S32);
    /// Out: the buffer's size in bytes.
    pub const SIZE: Field = Field::new("size", 32, CType::U64);
    /// The record.
    pub const RECORD: Record = Record::new("hdmabuf_import", 40, &[HID, FLAGS, FD, SIZE]);
}

/// `struct hdmabuf_unexport` ([`UnexportArgs`](super::UnexportArgs)).
pub mod unexport {
    use super::{CType, Field, Record};

    /// In: the buffer.
    pub const HID: Field = Field::new("hid", 0, CType::Id);
    /// In: revoke after this many milliseconds (0: now).
    pub const DELAY_MS: Field = Field::new("delay_ms", 24, CType::U32);
    /// Zero.
    pub const RESERVED: Field = Field::new("reserved", 28, CType::U32);
    /// The record.
    pub const RECORD: Record = Record::new("hdmabuf_unexport", 32, &[HID, DELAY_MS, RESERVED]);
}

/// `struct hdmabuf_update` ([`UpdateArgs`](super::UpdateArgs)).
pub mod update {
    use super::{CType, Field, Record, MAX_PRIV_LEN};

    /// In: the buffer.
    pub const HID: Field = Field::new("hid", 0, CType::Id);
    /// Zero.
    pub const FLAGS: Field = Field::new("flags", 24, CType::U32);
    /// In: bytes of `priv` used.
    pub const PRIV_LEN: Field = Field::new("priv_len", 28, CType::U32);
    /// In: the new private data for the importer.
    pub const PRIV: Field = Field::new("priv", 32, CType::Bytes(MAX_PRIV_LEN));
    /// The record.
    pub const RECORD: Record = Record::new("hdmabuf_update", 224, &[HID, FLAGS, PRIV_LEN, PRIV]);
}

/// `struct hdmabuf_query` ([`QueryArgs`](super::QueryArgs)).
pub mod query {
    use super::{CType, Field, Record};

    /// In: the buffer.
    pub const HID: Field = Field::new("hid", 0, CType::Id);
    /// In: a `HDMABUF_QUERY_*` item.
    pub const ITEM: Field = Field::new("item", 24, CType::U32);
    /// Zero.
    pub const RESERVED0: Field = Field::new("reserved0", 28, CType::U32);
    /// Out: the answer.
    pub const VALUE: Field = Field::new("value", 32, CType::U64);
    /// In: user address for `HDMABUF_QUERY_PRIV`, else 0.
    pub const DATA_PTR: Field = Field::new("data_ptr", 40, CType::U64);
    /// In: bytes at `data_ptr`.
    pub const DATA_LEN: Field = Field::new("data_len", 48, CType::U32);
    /// Zero.
    pub const RESERVED1: Field = Field::new("reserved1", 52, CType::U32);
    /// The record.
    pub const RECORD: Record = Record::new(
        "hdmabuf_query",
        56,
        &[HID, ITEM, RESERVED0, VALUE, DATA_PTR, DATA_LEN, RESERVED1],
    );
}

/// `struct hdmabuf_list` ([`ListArgs`](super::ListArgs)).
pub mod list {
    use super::{CType, Field, Record};

    /// In: user address of an array of `struct hdmabuf_list_entry`.
    pub const ENTRIES_PTR: Field = Field::new("entries_ptr", 0, CType::U64);
    /// In: entries the array holds.
    pub const CAPACITY: Field = Field::new("capacity", 8, CType::U32);
    /// Out: entries that exist (may exceed `capacity`).
    pub const COUNT: Field = Field::new("count", 12, CType::U32);
    /// The record.
    pub const RECORD: Record = Record::new("hdmabuf_list", 16, &[ENTRIES_PTR, CAPACITY, COUNT]);
}

/// `struct hdmabuf_list_entry` ([`ListEntry`](super::ListEntry)).
pub mod list_entry {
    use super::{CType, Field, Record};

    /// The buffer.
    pub const HID: Field = Field::new("hid", 0, CType::Id);
    /// Its size in bytes.
    pub const SIZE: Field = Field::new("size", 24, CType::U64);
    /// The importer (of an export) or the exporter (of an import).
    pub const PEER_DOMID: Field = Field::new("peer_domid", 32, CType::U32);
    /// `HDMABUF_KIND_*`.
    pub const KIND: Field = Field::new("kind", 36, CType::U32);
    /// `HDMABUF_STATE_*` bits.
    pub const STATE: Field = Field::new("state", 40, CType::U32);
    /// Zero.
    pub const RESERVED: Field = Field::new("reserved", 44, CType::U32);
    /// The record.
    pub const RECORD: Record = Record::new(
        "hdmabuf_list_entry",
        48,
        &[HID, SIZE, PEER_DOMID, KIND, STATE, RESERVED],
    );
}

/// `struct hdmabuf_event` ([`Event`](super::Event)).
pub mod event {
    use super::{CType, Field, Record, MAX_PRIV_LEN};

    /// `HDMABUF_EVENT_*`.
    pub const TYPE: Field = Field::new("type", 0, CType::U32);
    /// The other domain.
    pub const PEER_DOMID: Field = Field::new("peer_domid", 4, CType::U32);
    /// The buffer (all zero for an event about a peer).
    pub const HID: Field = Field::new("hid", 8, CType::Id);
    /// The buffer's size in bytes.
    pub const SIZE: Field = Field::new("size", 32, CType::U64);
    /// Its export flags.
    pub const FLAGS: Field = Field::new("flags", 40, CType::U32);
    /// Bytes of `priv` used.
    pub const PRIV_LEN: Field = Field::new("priv_len", 44, CType::U32);
    /// Private data.
    pub const PRIV: Field = Field::new("priv", 48, CType::Bytes(MAX_PRIV_LEN));
    /// Events about the same peer dropped before this one.
    pub const LOST: Field = Field::new("lost", 240, CType::U32);
    /// Zero.
    pub const RESERVED: Field = Field::new("reserved", 244, CType::Bytes(12));
    /// The record.
    pub const RECORD: Record = Record::new(
        "hdmabuf_event",
        256,
        &[
            TYPE, PEER_DOMID, HID, SIZE, FLAGS, PRIV_LEN, PRIV, LOST, RESERVED,
        ],
    );
}

/// Every record of the header.
pub const RECORDS: &[Record] = &[
    id::RECORD,
    export::RECORD,
    import::RECORD,
    unexport::RECORD,
    update::RECORD,
    query::RECORD,
    list::RECORD,
    list_entry::RECORD,
    event::RECORD,
];

/// The value of a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// An integer.
    Number(u64),
    /// A string literal.
    Text(&'static str),
}

/// A constant of the header: a `#define`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constant {
    /// Its name.
    pub name: &'static str,
    /// Its value.
    pub value: Value,
}

const fn number(name: &'static str, value: u64) -> Constant {
    Constant {
        name,
        value: Value::Number(value),
    }
}

// Every `as u64` below widens a `u8`, `u32` or `usize` (at most 64 bits on
// every target): it loses nothing.
/// Every constant of the header.
pub const CONSTANTS: &[Constant] = &[
    Constant {
        name: "HDMABUF_DEVICE_PATH",
        value: Value::Text(DEVICE_PATH),
    },
    number("HDMABUF_KEY_LEN", KEY_LEN as u64),
    number("HDMABUF_ID_TEXT_LEN", TEXT_LEN as u64),
    number("HDMABUF_MAX_PRIV_LEN", MAX_PRIV_LEN as u64),
    number(
        "HDMABUF_MAX_UNEXPORT_DELAY_MS",
        MAX_UNEXPORT_DELAY_MS as u64,
    ),
    number("HDMABUF_IOCTL_MAGIC", IOCTL_MAGIC as u64),
    number("HDMABUF_IOCTL_EXPORT", IOCTL_EXPORT as u64),
    number("HDMABUF_IOCTL_IMPORT", IOCTL_IMPORT as u64),
    number("HDMABUF_IOCTL_UNEXPORT", IOCTL_UNEXPORT as u64),
    number("HDMABUF_IOCTL_QUERY", IOCTL_QUERY as u64),
    number("HDMABUF_IOCTL_LIST", IOCTL_LIST as u64),
    number("HDMABUF_IOCTL_UPDATE", IOCTL_UPDATE as u64),
    number("HDMABUF_EXPORT_RW", EXPORT_RW as u64),
    number("HDMABUF_IMPORT_RW", IMPORT_RW as u64),
    number("HDMABUF_IMPORT_MODE_OUT", IMPORT_MODE_OUT as u64),
    number("HDMABUF_QUERY_TYPE", QueryItem::Type as u64),
    number("HDMABUF_QUERY_EXPORTER", QueryItem::Exporter as u64),
    number("HDMABUF_QUERY_IMPORTER", QueryItem::Importer as u64),
    number("HDMABUF_QUERY_SIZE", QueryItem::Size as u64),
    number("HDMABUF_QUERY_BUSY", QueryItem::Busy as u64),
    number("HDMABUF_QUERY_UNEXPORTED", QueryItem::Unexported as u64),
    number(
        "HDMABUF_QUERY_DELAYED_UNEXPORTED",
        QueryItem::DelayedUnexported as u64,
    ),
    number("HDMABUF_QUERY_PRIV_SIZE", QueryItem::PrivSize as u64),
    number("HDMABUF_QUERY_PRIV", QueryItem::Priv as u64),
    number("HDMABUF_QUERY_FLAGS", QueryItem::Flags as u64),
    number("HDMABUF_KIND_EXPORTED", KIND_EXPORTED as u64),
    number("HDMABUF_KIND_IMPORTED", KIND_IMPORTED as u64),
    number("HDMABUF_STATE_BUSY", STATE_BUSY as u64),
    number("HDMABUF_STATE_UNEXPORTED", STATE_UNEXPORTED as u64),
    number(
        "HDMABUF_STATE_DELAYED_UNEXPORT",
        STATE_DELAYED_UNEXPORT as u64,
    ),
    number("HDMABUF_STATE_RW", STATE_RW as u64),
    number("HDMABUF_EVENT_NEW_EXPORT", EventType::NewExport as u64),
    number("HDMABUF_EVENT_UPDATE", EventType::Update as u64),
    number("HDMABUF_EVENT_UNEXPORT", EventType::Unexport as u64),
    number("HDMABUF_EVENT_MAPPED", EventType::Mapped as u64),
    number("HDMABUF_EVENT_RELEASED", EventType::Released as u64),
    number("HDMABUF_EVENT_GRANTS_ENDED", EventType::GrantsEnded as u64),
    number(
        "HDMABUF_EVENT_PEER_CONNECTED",
        EventType::PeerConnected as u64,
    ),
    number(
        "HDMABUF_EVENT_PEER_DISCONNECTED",
        EventType::PeerDisconnected as u64,
    ),
];

#[cfg(test)]
mod tests {
    use super::super::{
        Event, ExportArgs, ImportArgs, ListArgs, ListEntry, QueryArgs, UnexportArgs, UpdateArgs,
    };
    use super::*;
    use crate::wire::{ExportFlags, PrivData};
    use crate::xen::DomId;

    /// A record built from the table alone: `values` written at the
    /// offsets the table gives, independently of the codecs.
    fn record(table: Record, values: &[(Field, &[u8])]) -> std::vec::Vec<u8> {
        let mut bytes = std::vec![0u8; table.size];
        for (field, value) in values {
            assert!(
                table.fields.contains(field),
                "{} of {}",
                field.name,
                table.name
            );
            assert!(value.len() <= field.size(), "{} too long", field.name);
            bytes[field.offset..field.offset + value.len()].copy_from_slice(value);
        }
        bytes
    }

    fn hid() -> HyperDmabufId {
        HyperDmabufId::new(0x0102_0304_0506_0708, [0xa5; KEY_LEN]).unwrap()
    }

    #[test]
    fn an_id_is_its_number_then_its_key() {
        let hid = hid();
        let expected = record(
            id::RECORD,
            &[(id::ID, &hid.number().to_le_bytes()), (id::KEY, hid.key())],
        );
        assert_eq!(hid.encode().as_slice(), expected);
    }

    // Each record with a distinct value in every field: a codec that read
    // or wrote a field anywhere but at its table offset would differ.
    #[test]
    fn the_codecs_put_every_field_where_the_table_says() {
        let id = hid().encode();
        let export = ExportArgs {
            dmabuf_fd: -2,
            remote: DomId::new(5).unwrap(),
            flags: ExportFlags::WRITABLE,
            priv_data: PrivData::new(b"abc").unwrap(),
            hid: Some(hid()),
        };
        let bytes = record(
            export::RECORD,
            &[
                (export::DMABUF_FD, &(-2i32).to_le_bytes()),
                (export::REMOTE_DOMID, &5u32.to_le_bytes()),
                (export::FLAGS, &EXPORT_RW.to_le_bytes()),
                (export::PRIV_LEN, &3u32.to_le_bytes()),
                (export::PRIV, b"abc"),
                (export::HID, &id),
            ],
        );
        assert_eq!(export.encode().as_slice(), bytes);
        let bytes: [u8; ExportArgs::SIZE] = bytes.try_into().unwrap();
        assert_eq!(
            ExportArgs::decode_in(&bytes),
            Ok(ExportArgs {
                hid: None,
                ..export
            })
        );
        assert_eq!(ExportArgs::decode_out(&bytes), Ok(hid()));

        let import = ImportArgs {
            hid: hid(),
            flags: IMPORT_RW,
            fd: 9,
            size: 0x1122_3344_5566_7788,
        };
        let bytes = record(
            import::RECORD,
            &[
                (import::HID, &id),
                (import::FLAGS, &IMPORT_RW.to_le_bytes()),
                (import::FD, &9i32.to_le_bytes()),
                (import::SIZE, &0x1122_3344_5566_7788u64.to_le_bytes()),
            ],
        );
        assert_eq!(import.encode().as_slice(), bytes);
        assert_eq!(ImportArgs::decode(&bytes.try_into().unwrap()), Ok(import));

        let unexport = UnexportArgs {
            hid: hid(),
            delay_ms: 77,
        };
        let bytes = record(
            unexport::RECORD,
            &[
                (unexport::HID, &id),
                (unexport::DELAY_MS, &77u32.to_le_bytes()),
            ],
        );
        assert_eq!(unexport.encode().as_slice(), bytes);
        assert_eq!(
            UnexportArgs::decode(&bytes.try_into().unwrap()),
            Ok(unexport)
        );

        let update = UpdateArgs {
            hid: hid(),
            priv_data: PrivData::new(b"frame 7").unwrap(),
        };
        let bytes = record(
            update::RECORD,
            &[
                (update::HID, &id),
                (update::PRIV_LEN, &7u32.to_le_bytes()),
                (update::PRIV, b"frame 7"),
            ],
        );
        assert_eq!(update.encode().as_slice(), bytes);
        assert_eq!(UpdateArgs::decode(&bytes.try_into().unwrap()), Ok(update));

        let query = QueryArgs {
            hid: hid(),
            item: QueryItem::Priv,
            value: 0xaabb_ccdd_eeff_0011,
            data_ptr: 0x7fff_0000_1000,
            data_len: 192,
        };
        let bytes = record(
            query::RECORD,
            &[
                (query::HID, &id),
                (query::ITEM, &(QueryItem::Priv as u32).to_le_bytes()),
                (query::VALUE, &0xaabb_ccdd_eeff_0011u64.to_le_bytes()),
                (query::DATA_PTR, &0x7fff_0000_1000u64.to_le_bytes()),
                (query::DATA_LEN, &192u32.to_le_bytes()),
            ],
        );
        assert_eq!(query.encode().as_slice(), bytes);
        assert_eq!(QueryArgs::decode(&bytes.try_into().unwrap()), Ok(query));

        let list = ListArgs {
            entries_ptr: 0x1000_2000_3000,
            capacity: 7,
            count: 9,
        };
        let bytes = record(
            list::RECORD,
            &[
                (list::ENTRIES_PTR, &0x1000_2000_3000u64.to_le_bytes()),
                (list::CAPACITY, &7u32.to_le_bytes()),
                (list::COUNT, &9u32.to_le_bytes()),
            ],
        );
        assert_eq!(list.encode().as_slice(), bytes);
        assert_eq!(ListArgs::decode(&bytes.try_into().unwrap()), list);

        let entry = ListEntry {
            hid: hid(),
            size: 1 << 33,
            peer: DomId::new(3).unwrap(),
            kind: KIND_IMPORTED,
            state: STATE_RW | STATE_UNEXPORTED,
        };
        let bytes = record(
            list_entry::RECORD,
            &[
                (list_entry::HID, &id),
                (list_entry::SIZE, &(1u64 << 33).to_le_bytes()),
                (list_entry::PEER_DOMID, &3u32.to_le_bytes()),
                (list_entry::KIND, &KIND_IMPORTED.to_le_bytes()),
                (
                    list_entry::STATE,
                    &(STATE_RW | STATE_UNEXPORTED).to_le_bytes(),
                ),
            ],
        );
        assert_eq!(entry.encode().as_slice(), bytes);
        assert_eq!(ListEntry::decode(&bytes.try_into().unwrap()), Ok(entry));

        let event = Event {
            kind: EventType::Update,
            peer: DomId::new(4).unwrap(),
            hid: Some(hid()),
            size: 0x3000,
            flags: ExportFlags::WRITABLE,
            priv_data: PrivData::new(b"xyz!").unwrap(),
            lost: 6,
        };
        let bytes = record(
            event::RECORD,
            &[
                (event::TYPE, &(EventType::Update as u32).to_le_bytes()),
                (event::PEER_DOMID, &4u32.to_le_bytes()),
                (event::HID, &id),
                (event::SIZE, &0x3000u64.to_le_bytes()),
                (event::FLAGS, &EXPORT_RW.to_le_bytes()),
                (event::PRIV_LEN, &4u32.to_le_bytes()),
                (event::PRIV, b"xyz!"),
                (event::LOST, &6u32.to_le_bytes()),
            ],
        );
        assert_eq!(event.encode().as_slice(), bytes);
        assert_eq!(Event::decode(&bytes.try_into().unwrap()), Ok(event));
    }

    /// The values the constants of `prefix` give.
    fn values_of(prefix: &str) -> std::vec::Vec<u64> {
        CONSTANTS
            .iter()
            .filter(|c| c.name.starts_with(prefix))
            .map(|c| match c.value {
                Value::Number(n) => n,
                Value::Text(_) => panic!("{} is not a number", c.name),
            })
            .collect()
    }

    // A variant added to one of the enums needs its constant in the table
    // (and so in the header).
    #[test]
    fn every_query_item_and_event_type_has_its_constant() {
        let items = values_of("HDMABUF_QUERY_");
        let events = values_of("HDMABUF_EVENT_");
        for raw in 0..=255u32 {
            let number = u64::from(raw);
            assert_eq!(
                QueryItem::from_raw(raw).is_ok(),
                items.contains(&number),
                "query item {raw}"
            );
            assert_eq!(
                EventType::from_raw(raw).is_ok(),
                events.contains(&number),
                "event type {raw}"
            );
        }
    }

    #[test]
    fn constant_names_are_unique() {
        for (i, c) in CONSTANTS.iter().enumerate() {
            assert!(
                CONSTANTS[i + 1..].iter().all(|d| d.name != c.name),
                "{}",
                c.name
            );
        }
    }

    #[test]
    #[should_panic(expected = "a field off its natural alignment")]
    fn a_u64_off_its_alignment_is_refused() {
        const FIELDS: &[Field] = &[
            Field::new("a", 0, CType::U32),
            Field::new("b", 4, CType::U64),
            Field::new("c", 12, CType::U32),
        ];
        let _ = Record::new("bad", 16, FIELDS);
    }

    #[test]
    #[should_panic(expected = "a gap or an overlap before a field")]
    fn implicit_padding_is_refused() {
        const FIELDS: &[Field] = &[
            Field::new("a", 0, CType::U32),
            Field::new("b", 8, CType::U64),
        ];
        let _ = Record::new("bad", 16, FIELDS);
    }
}
