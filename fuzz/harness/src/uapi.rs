// SPDX-License-Identifier: MIT
//! The `uapi` target: the decoders of the ioctl records and event records
//! of `/dev/xen/hyper_dmabuf`, and the text form of ids the tools parse.
//!
//! An input is a sequence of [`UapiOp`]s, each one record as a process
//! would pass it to an ioctl (or read it from the device). Oracles: no
//! panic; an accepted record is canonical: re-encoding the decoded value
//! gives the input bytes back (output fields zeroed or reset where the
//! decoder ignores them), so no reserved byte or undefined value slips
//! through; an accepted id text is the id's own text form.

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{
    Event, ExportArgs, ImportArgs, ListArgs, ListEntry, QueryArgs, UnexportArgs,
};

use crate::input::{decode_all, Reader, Writer};

/// Record kinds, selected by an operation's tag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// [`ExportArgs::decode_in`] and [`ExportArgs::decode_out`].
    Export,
    /// [`ImportArgs::decode_in`] and [`ImportArgs::decode`].
    Import,
    /// [`UnexportArgs::decode`].
    Unexport,
    /// [`QueryArgs::decode`].
    Query,
    /// [`ListArgs::decode`].
    List,
    /// [`ListEntry::decode`].
    ListEntry,
    /// [`Event::decode`].
    Event,
    /// `HyperDmabufId::from_str`, on up to 64 bytes.
    IdText,
}

const RECORDS: [Record; 8] = [
    Record::Export,
    Record::Import,
    Record::Unexport,
    Record::Query,
    Record::List,
    Record::ListEntry,
    Record::Event,
    Record::IdText,
];

impl Record {
    /// Bytes the record takes in an input (the text form is preceded by
    /// its length and takes at most 64 bytes).
    pub fn size(self) -> usize {
        match self {
            Record::Export => ExportArgs::SIZE,
            Record::Import => ImportArgs::SIZE,
            Record::Unexport => UnexportArgs::SIZE,
            Record::Query => QueryArgs::SIZE,
            Record::List => ListArgs::SIZE,
            Record::ListEntry => ListEntry::SIZE,
            Record::Event => Event::SIZE,
            Record::IdText => 64,
        }
    }

    fn tag(self) -> u8 {
        RECORDS.iter().position(|&r| r == self).expect("listed") as u8
    }
}

/// One record to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UapiOp {
    /// Which decoder.
    pub record: Record,
    /// The bytes (zero-padded to the record size).
    pub bytes: Vec<u8>,
}

impl UapiOp {
    /// Reads one operation.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        let record = RECORDS[usize::from(r.u8()) % RECORDS.len()];
        let len = match record {
            Record::IdText => usize::from(r.u8()) % (record.size() + 1),
            _ => record.size(),
        };
        let mut bytes = r.bytes(len).to_vec();
        if record != Record::IdText {
            bytes.resize(len, 0);
        }
        UapiOp { record, bytes }
    }

    /// Writes one operation.
    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.record.tag());
        if self.record == Record::IdText {
            w.u8(self.bytes.len() as u8);
        }
        w.bytes(&self.bytes);
    }
}

/// Encodes a sequence of operations.
pub fn encode(ops: &[UapiOp]) -> Vec<u8> {
    let mut w = Writer::new();
    for op in ops {
        op.encode(&mut w);
    }
    w.finish()
}

fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(bytes.len());
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// The `uapi` target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    for op in decode_all(&mut r, UapiOp::decode) {
        check(op.record, &op.bytes);
    }
}

/// Decodes one record and checks the result.
pub fn check(record: Record, bytes: &[u8]) {
    match record {
        Record::Export => {
            let rec: [u8; ExportArgs::SIZE] = fixed(bytes);
            if let Ok(args) = ExportArgs::decode_in(&rec) {
                let mut input = rec;
                input[208..].fill(0);
                assert!(args.encode() == input, "non-canonical export record");
            }
            if let Ok(hid) = ExportArgs::decode_out(&rec) {
                assert!(hid.encode()[..] == rec[208..], "export output id");
            }
        }
        Record::Import => {
            let rec: [u8; ImportArgs::SIZE] = fixed(bytes);
            if let Ok(args) = ImportArgs::decode_in(&rec) {
                assert_eq!((args.fd, args.size), (-1, 0), "outputs not reset");
                let mut input = rec;
                input[28..32].copy_from_slice(&(-1i32).to_le_bytes());
                input[32..].fill(0);
                assert!(args.encode() == input, "non-canonical import record");
            }
            if let Ok(args) = ImportArgs::decode(&rec) {
                assert!(args.encode() == rec, "non-canonical import record");
            }
        }
        Record::Unexport => {
            let rec = fixed(bytes);
            if let Ok(args) = UnexportArgs::decode(&rec) {
                assert!(args.encode() == rec, "non-canonical unexport record");
            }
        }
        Record::Query => {
            let rec = fixed(bytes);
            if let Ok(args) = QueryArgs::decode(&rec) {
                assert!(args.encode() == rec, "non-canonical query record");
            }
        }
        Record::List => {
            let rec = fixed(bytes);
            assert!(ListArgs::decode(&rec).encode() == rec, "list record");
        }
        Record::ListEntry => {
            let rec = fixed(bytes);
            if let Ok(entry) = ListEntry::decode(&rec) {
                assert!(entry.encode() == rec, "non-canonical list entry");
            }
        }
        Record::Event => {
            let rec = fixed(bytes);
            if let Ok(event) = Event::decode(&rec) {
                assert!(event.encode() == rec, "non-canonical event record");
            }
        }
        Record::IdText => {
            if let Ok(text) = core::str::from_utf8(bytes) {
                if let Ok(hid) = text.parse::<HyperDmabufId>() {
                    assert!(
                        hid.to_string().eq_ignore_ascii_case(text),
                        "id text not the id's own form"
                    );
                    assert_eq!(HyperDmabufId::decode(&hid.encode()), Ok(hid));
                }
            }
        }
    }
}
