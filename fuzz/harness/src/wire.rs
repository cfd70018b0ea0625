// SPDX-License-Identifier: MIT
//! The `wire` target: the decoders of ring messages, [`Request::decode`]
//! and [`Response::decode`], on slots a hostile peer wrote.
//!
//! An input is a sequence of [`WireOp`]s, each one slot: raw bytes, or a
//! valid message built from a few fields and then patched byte by byte
//! (which reaches the deep checks faster than raw bytes do).
//!
//! Oracles: no panic; an accepted slot is canonical (re-encoding the
//! decoded message gives the same 256 bytes, so nothing is accepted that
//! this version would not send itself) and within the receiver's limits;
//! a refused request maps to an error status, never to `Ok`; a message
//! this crate encodes from valid fields always decodes back to itself.

use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::limits::{
    pages_for_bytes, DEFAULT_MAX_BUFFER_BYTES, GNTTAB_NR_RESERVED_ENTRIES, MAX_PRIV_LEN,
    PGDIR_MAX_BUFFER_BYTES,
};
use hyper_dmabuf_common::wire::{
    inline_capacity, request_id, Export, ExportFlags, FenceId, FenceResult, InlineRefs, MapEpoch,
    Message, Op, PageRefs, PrivData, Request, Response, Slot, SLOT_SIZE, VERSION_1, VERSION_2,
    VERSION_3,
};
use hyper_dmabuf_common::xen::{GrantRef, Status};

use crate::input::{decode_all, Reader, Writer};

/// The receiver limits a [`WireOp`] selects with its `max` byte.
pub const MAX_PRESETS: [u64; 7] = [
    DEFAULT_MAX_BUFFER_BYTES,
    4096,
    8 << 20,
    PGDIR_MAX_BUFFER_BYTES,
    u64::MAX,
    0,
    1,
];

/// The receiver limit selected by `sel`.
pub fn max_preset(sel: u8) -> u64 {
    MAX_PRESETS[usize::from(sel) % MAX_PRESETS.len()]
}

/// Every status, for [`status_from_byte`].
const STATUSES: [Status; 10] = [
    Status::Ok,
    Status::PermissionDenied,
    Status::NoSuchBuffer,
    Status::TooLarge,
    Status::NoMemory,
    Status::Busy,
    Status::Exists,
    Status::Invalid,
    Status::NoSpace,
    Status::NotSupported,
];

/// A status selected by a byte of input.
pub fn status_from_byte(b: u8) -> Status {
    STATUSES[usize::from(b) % STATUSES.len()]
}

/// A valid id derived from `tag`.
pub fn sample_hid(tag: u32) -> HyperDmabufId {
    let mut key = [0u8; KEY_LEN];
    for (i, k) in key.iter_mut().enumerate() {
        *k = (tag.rotate_left(i as u32 * 3) as u8) ^ (i as u8);
    }
    HyperDmabufId::new(u64::from(tag) | 1 << 40, key).expect("number is not zero")
}

/// The references of an EXPORT of `size` octets derived from `tag`: inline
/// (version 2) when bit 4 of `tag` asks and they fit beside `priv_len`
/// octets of private data, else a directory root.
pub fn sample_pages(tag: u32, size: u64, priv_len: usize) -> PageRefs {
    let first = GNTTAB_NR_RESERVED_ENTRIES + (tag >> 12);
    let pages = pages_for_bytes(size).map_or(usize::MAX, |p| p as usize);
    if tag & 16 != 0 && pages <= inline_capacity(priv_len, false) {
        let refs: Vec<GrantRef> = (0..pages as u32)
            .map(|i| GrantRef::new(first.saturating_add(i)).expect("above the reserved entries"))
            .collect();
        return PageRefs::Inline(InlineRefs::new(&refs).expect("counted"));
    }
    PageRefs::Directory(GrantRef::new(first).expect("above the reserved entries"))
}

/// A valid request derived from `tag`, accepted under the default limit:
/// each of the five operations, with sizes from one byte to 16 MiB (to
/// 200 KiB with inline references), private data of 0..=192 bytes and
/// both flag settings.
pub fn sample_request(tag: u32, req_id: u32) -> Request {
    let hid = sample_hid(tag >> 3);
    let priv_len = (tag >> 4) as usize % (MAX_PRIV_LEN + 1);
    let priv_bytes: Vec<u8> = (0..priv_len).map(|i| (i as u8) ^ (tag as u8)).collect();
    let priv_data = PrivData::new(&priv_bytes).expect("length bounded");
    let size = if tag & 16 != 0 {
        u64::from(tag >> 8) % (inline_capacity(priv_len, false) as u64 * 4096).max(1) + 1
    } else {
        u64::from(tag >> 8) % (16 << 20) + 1
    };
    let message = match tag % 5 {
        0 => Message::Export(Export {
            hid,
            size,
            pages: sample_pages(tag, size, priv_len),
            flags: if tag & 8 != 0 {
                ExportFlags::WRITABLE
            } else {
                ExportFlags::default()
            },
            priv_data,
            fence: None,
        }),
        1 => Message::Update {
            hid,
            priv_data,
            fence: None,
        },
        2 => Message::Unexport(hid),
        3 => Message::Release {
            hid,
            epoch: sample_epoch(tag),
        },
        _ => Message::Mapped {
            hid,
            epoch: sample_epoch(tag),
        },
    };
    Request { req_id, message }
}

/// A valid version-3 request derived from `tag`: [`sample_request`]'s,
/// with a fence on an EXPORT (whose inline references then make room for
/// it) or an UPDATE when bit 5 of `tag` asks, or a SIGNAL for one tag in
/// six.
pub fn sample_fenced_request(tag: u32, req_id: u32) -> Request {
    let fence = FenceId::new(u64::from(tag.rotate_left(13)) | 1).expect("not zero");
    if tag % 6 == 5 {
        let result = if tag & 64 != 0 {
            FenceResult::Failed
        } else {
            FenceResult::Signalled
        };
        let message = Message::Signal {
            hid: sample_hid(tag >> 3),
            fence,
            result,
        };
        return Request { req_id, message };
    }
    let mut request = sample_request(tag, req_id);
    if tag & 32 != 0 {
        match &mut request.message {
            Message::Export(export) => {
                export.fence = Some(fence);
                if let PageRefs::Inline(refs) = export.pages {
                    if refs.as_slice().len() > inline_capacity(export.priv_data.len(), true) {
                        export.pages = PageRefs::Directory(refs.as_slice()[0]);
                    }
                }
            }
            Message::Update { fence: f, .. } => *f = Some(fence),
            _ => {}
        }
    }
    request
}

/// A mapping epoch derived from `tag` (1..=16).
pub fn sample_epoch(tag: u32) -> MapEpoch {
    MapEpoch::new(1 + (tag >> 8) % 16).expect("not zero")
}

/// The response a well-behaved receiver sends: a Busy answer to UNEXPORT
/// names a mapping epoch (here `epoch`), no other answer does.
pub fn response(req_id: u32, op: u8, status: Status, epoch: MapEpoch) -> Response {
    let busy_unexport = op == Op::Unexport as u8 && status == Status::Busy;
    Response {
        req_id,
        op,
        status,
        map_epoch: busy_unexport.then_some(epoch),
    }
}

/// One slot to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireOp {
    /// Decode raw bytes as a request under the limit `max` selects.
    RawRequest {
        /// Selects the receiver's limit ([`max_preset`]).
        max: u8,
        /// The slot.
        slot: Vec<u8>,
    },
    /// Decode raw bytes as a response.
    RawResponse {
        /// The slot.
        slot: Vec<u8>,
    },
    /// Encode a request from fields, patch bytes of the slot, decode.
    Patched {
        /// Selects the receiver's limit.
        max: u8,
        /// Selects the message ([`sample_request`]).
        tag: u32,
        /// Its size, if it is an export (0 keeps the sample's).
        size: u64,
        /// `(offset, value)` pairs written into the encoded slot.
        patches: Vec<(u8, u8)>,
    },
    /// Encode a response from raw fields and decode it.
    BuiltResponse {
        /// Echoed request id.
        req_id: u32,
        /// Echoed operation byte.
        op: u8,
        /// Raw status value.
        status: i32,
        /// Raw mapping epoch.
        epoch: u32,
    },
}

impl WireOp {
    /// Reads one operation.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        match r.u8() % 4 {
            0 => WireOp::RawRequest {
                max: r.u8(),
                slot: r.bytes(SLOT_SIZE).to_vec(),
            },
            1 => WireOp::RawResponse {
                slot: r.bytes(SLOT_SIZE).to_vec(),
            },
            2 => {
                let max = r.u8();
                let tag = r.u32();
                let size = r.u64();
                let n = r.u8() % 8;
                let patches = (0..n).map(|_| (r.u8(), r.u8())).collect();
                WireOp::Patched {
                    max,
                    tag,
                    size,
                    patches,
                }
            }
            _ => WireOp::BuiltResponse {
                req_id: r.u32(),
                op: r.u8(),
                status: r.u32() as i32,
                epoch: r.u32(),
            },
        }
    }

    /// Writes one operation. Raw slots are written in full (256 bytes).
    pub fn encode(&self, w: &mut Writer) {
        match self {
            WireOp::RawRequest { max, slot } => {
                w.u8(0).u8(*max).bytes(&padded(slot));
            }
            WireOp::RawResponse { slot } => {
                w.u8(1).bytes(&padded(slot));
            }
            WireOp::Patched {
                max,
                tag,
                size,
                patches,
            } => {
                w.u8(2)
                    .u8(*max)
                    .u32(*tag)
                    .u64(*size)
                    .u8(patches.len() as u8);
                for (at, v) in patches {
                    w.u8(*at).u8(*v);
                }
            }
            WireOp::BuiltResponse {
                req_id,
                op,
                status,
                epoch,
            } => {
                w.u8(3).u32(*req_id).u8(*op).u32(*status as u32).u32(*epoch);
            }
        }
    }
}

fn padded(bytes: &[u8]) -> Slot {
    let mut slot = [0u8; SLOT_SIZE];
    let n = bytes.len().min(SLOT_SIZE);
    slot[..n].copy_from_slice(&bytes[..n]);
    slot
}

/// Encodes a sequence of operations.
pub fn encode(ops: &[WireOp]) -> Vec<u8> {
    let mut w = Writer::new();
    for op in ops {
        op.encode(&mut w);
    }
    w.finish()
}

/// The `wire` target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    for op in decode_all(&mut r, WireOp::decode) {
        match op {
            WireOp::RawRequest { max, slot } => {
                check_request(&padded(&slot), max_preset(max));
            }
            WireOp::RawResponse { slot } => check_response(&padded(&slot)),
            WireOp::Patched {
                max,
                tag,
                size,
                patches,
            } => {
                let mut request = sample_fenced_request(tag, tag.rotate_left(7));
                if let Message::Export(export) = &mut request.message {
                    if size != 0 && export.fence.is_none() {
                        export.size = size;
                        export.pages = sample_pages(tag, size, export.priv_data.len());
                    }
                }
                let max = max_preset(max);
                let mut slot = request.encode();
                if patches.is_empty() {
                    // Unpatched: a message we encode from valid fields is
                    // accepted exactly when its size is within the limit
                    // and the page directory's reach.
                    let fits = match request.message {
                        Message::Export(e) => e.size <= max.min(PGDIR_MAX_BUFFER_BYTES),
                        _ => true,
                    };
                    let decoded = Request::decode(&slot, max, VERSION_3);
                    if fits {
                        assert_eq!(decoded, Ok(request), "encoded request does not round-trip");
                    } else {
                        assert!(decoded.is_err(), "oversized export accepted");
                    }
                }
                for (at, value) in patches {
                    slot[usize::from(at)] = value;
                }
                check_request(&slot, max);
            }
            WireOp::BuiltResponse {
                req_id,
                op,
                status,
                epoch,
            } => {
                let slot = {
                    let mut slot = [0u8; SLOT_SIZE];
                    slot[..4].copy_from_slice(&req_id.to_le_bytes());
                    slot[4] = op;
                    slot[8..12].copy_from_slice(&status.to_le_bytes());
                    slot[12..16].copy_from_slice(&epoch.to_le_bytes());
                    slot
                };
                let decoded = Response::decode(&slot);
                // Valid: a known op and status, and an epoch exactly when
                // the answer is Busy to UNEXPORT.
                let expected = match (Op::from_wire(op), Status::from_wire(status)) {
                    (Ok(_), Ok(status)) => {
                        let r = response(req_id, op, status, MapEpoch::FIRST);
                        match (r.map_epoch, MapEpoch::new(epoch)) {
                            (Some(_), Ok(epoch)) => Some(Response {
                                map_epoch: Some(epoch),
                                ..r
                            }),
                            (None, _) if epoch == 0 => Some(r),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match expected {
                    Some(expected) => {
                        assert_eq!(decoded, Ok(expected), "valid response refused");
                        assert_eq!(expected.encode(), slot, "response encoding");
                    }
                    None => assert!(decoded.is_err(), "invalid response accepted"),
                }
                check_response(&slot);
            }
        }
    }
}

/// Decodes `slot` as a request under `max`, in every version, and checks
/// the results: each version accepts all the one before does, the same
/// way.
pub fn check_request(slot: &Slot, max: u64) {
    if let Ok(request) = Request::decode(slot, max, VERSION_1) {
        assert_eq!(
            Request::decode(slot, max, VERSION_2),
            Ok(request),
            "v2 differs"
        );
        if let Message::Export(export) = request.message {
            assert!(matches!(export.pages, PageRefs::Directory(_)), "v1 inline");
        }
    }
    if let Ok(request) = Request::decode(slot, max, VERSION_2) {
        assert_eq!(
            Request::decode(slot, max, VERSION_3),
            Ok(request),
            "v3 differs"
        );
        let fenced = match request.message {
            Message::Export(export) => export.fence.is_some(),
            Message::Update { fence, .. } => fence.is_some(),
            Message::Signal { .. } => true,
            _ => false,
        };
        assert!(!fenced, "v2 fence");
    }
    match Request::decode(slot, max, VERSION_3) {
        Ok(request) => {
            assert_eq!(&request.encode(), slot, "accepted a non-canonical request");
            assert_eq!(request.req_id, request_id(slot));
            if let Message::Export(export) = request.message {
                assert!(
                    export.size > 0 && export.size <= max.min(PGDIR_MAX_BUFFER_BYTES),
                    "size out of limits"
                );
                let named = export.pages.named();
                assert!(named.iter().all(|r| r.get() >= GNTTAB_NR_RESERVED_ENTRIES));
                if let PageRefs::Inline(refs) = export.pages {
                    assert_eq!(
                        Some(refs.as_slice().len() as u32),
                        pages_for_bytes(export.size),
                        "inline references not one per page"
                    );
                    let room = inline_capacity(export.priv_data.len(), export.fence.is_some());
                    assert!(refs.as_slice().len() <= room);
                }
                assert!(export.priv_data.len() <= MAX_PRIV_LEN);
            }
        }
        Err(error) => {
            assert_ne!(
                Status::from(error),
                Status::Ok,
                "{error:?} answered with Ok"
            );
        }
    }
}

/// Decodes `slot` as a response and checks the result.
pub fn check_response(slot: &Slot) {
    if let Ok(response) = Response::decode(slot) {
        assert_eq!(
            &response.encode(),
            slot,
            "accepted a non-canonical response"
        );
    }
}
