// SPDX-License-Identifier: MIT
//! The seed corpus: for each target, inputs that drive it through valid,
//! deep states (honest ring traffic, valid messages, valid directories of
//! several sizes, valid records) and a few classic attacks, from which
//! libFuzzer's mutations start.
//!
//! Seeds are built from operation lists with the encoders of this crate
//! and of `hyper-dmabuf-common`, not stored as bytes, so they follow the
//! wire format when it changes. `tests/corpus.rs` writes them to
//! `fuzz/corpus/<target>/seed-<name>` and runs each through its target.

use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::pgdir::{LEAF_ENTRIES, ROOT_ENTRIES};
use hyper_dmabuf_common::uapi::{
    Event, EventType, ExportArgs, ImportArgs, ListArgs, ListEntry, QueryArgs, QueryItem,
    UnexportArgs, IMPORT_RW,
};
use hyper_dmabuf_common::wire::{ExportFlags, PrivData, SLOT_SIZE};
use hyper_dmabuf_common::xen::DomId;

use crate::channel::{self, ChannelOp};
use crate::ledger::{self, LedgerOp};
use crate::pgdir::{self, PgdirOp, BUILD_CAP};
use crate::ring::{self, RingOp};
use crate::uapi::{self, Record, UapiOp};
use crate::wire::{self, sample_hid, sample_request, WireOp};

/// One seed input.
pub struct Seed {
    /// The target it is for.
    pub target: &'static str,
    /// File name under the target's corpus directory.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name: name.into(),
        bytes,
    }
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    for target in ["ring_responder", "ring_requester"] {
        out.extend(ring_seeds(target));
    }
    out.extend(channel_seeds());
    out.extend(ledger_seeds());
    out.extend(wire_seeds());
    out.extend(pgdir_seeds());
    out.extend(uapi_seeds());
    out.extend(xenstore_seeds());
    out
}

/// Honest traffic on a ring of `2^order` pages: `rounds` times, fill the
/// ring, publish, consume, answer, consume the answers; with final checks
/// (sleep and wake-up) in between.
pub fn honest_ring_ops(order: u8, rounds: u32) -> Vec<RingOp> {
    let slots = ((XEN_PAGE_SIZE << order) - 64) / SLOT_SIZE;
    let slots = 1u32 << (31 - (slots as u32).leading_zeros());
    let mut ops = Vec::new();
    for round in 0..rounds {
        ops.push(RingOp::RspFinalCheck);
        for i in 0..slots {
            ops.push(RingOp::ReqPush {
                tag: round * 1000 + i * 37,
            });
        }
        ops.push(RingOp::ReqPublish);
        ops.push(RingOp::ReqFinalCheck);
        for i in 0..slots {
            ops.push(RingOp::RspPop);
            ops.push(RingOp::RspPush { status: i as u8 });
        }
        ops.push(RingOp::RspPublish);
        for _ in 0..slots {
            ops.push(RingOp::ReqPop);
        }
        ops.push(RingOp::ReqFinalCheck);
    }
    ops
}

fn ring_seeds(target: &'static str) -> Vec<Seed> {
    let setup = |order: u8| ring::Setup {
        order,
        fill: 0xdead_beef,
    };
    let mut out = Vec::new();
    for order in 0..=4u8 {
        out.push(seed(
            target,
            format!("honest-order{order}"),
            ring::encode(&setup(order), &honest_ring_ops(order, 2)),
        ));
    }
    // One at a time, with notifications.
    let ping_pong: Vec<RingOp> = (0..20u32)
        .flat_map(|i| {
            [
                RingOp::RspFinalCheck,
                RingOp::ReqPush { tag: i },
                RingOp::ReqPublish,
                RingOp::RspPop,
                RingOp::RspPush { status: 0 },
                RingOp::ReqFinalCheck,
                RingOp::RspPublish,
                RingOp::ReqPop,
            ]
        })
        .collect();
    out.push(seed(
        target,
        "ping-pong",
        ring::encode(&setup(0), &ping_pong),
    ));
    // Attacks: producer past the ring, moved backwards, garbage in slots.
    let attacks: [(&str, Vec<RingOp>); 5] = [
        (
            // Move req_prod between the load of the index and the copy of
            // the slot, then tear the slot being copied.
            "race",
            vec![
                RingOp::ReqPush { tag: 7 },
                RingOp::ReqPublish,
                RingOp::Race {
                    after: 1,
                    word: 0,
                    value: 40,
                },
                RingOp::RspPop,
                RingOp::Race {
                    after: 5,
                    word: 16 + 65,
                    value: 0xffff_ffff,
                },
                RingOp::ReqPush { tag: 8 },
                RingOp::ReqPublish,
                RingOp::RspPop,
                RingOp::RspPush { status: 0 },
                RingOp::RspPublish,
                RingOp::ReqPop,
            ],
        ),
        (
            "overflow",
            vec![
                RingOp::SetProd { value: 9 },
                RingOp::RspPop,
                RingOp::ReqPop,
                RingOp::RspFinalCheck,
            ],
        ),
        (
            "backwards",
            vec![
                RingOp::ReqPush { tag: 1 },
                RingOp::ReqPush { tag: 2 },
                RingOp::ReqPublish,
                RingOp::RspPop,
                RingOp::AddProd { delta: u32::MAX },
                RingOp::RspPop,
                RingOp::RspPush { status: 0 },
                RingOp::RspPublish,
                RingOp::ReqPop,
            ],
        ),
        (
            "garbage-slot",
            vec![
                RingOp::ReqPush { tag: 5 },
                RingOp::ReqPublish,
                RingOp::WriteWord {
                    word: 16 + 1,
                    value: 0x7f,
                },
                RingOp::RspPop,
                RingOp::RspPush { status: 3 },
                RingOp::RspPublish,
                RingOp::ReqPop,
            ],
        ),
        (
            "event-games",
            vec![
                RingOp::SetEvent { value: u32::MAX },
                RingOp::ReqPush { tag: 1 },
                RingOp::ReqPublish,
                RingOp::RspPop,
                RingOp::RspPush { status: 0 },
                RingOp::RspPublish,
                RingOp::SetEvent { value: 0 },
                RingOp::ReqFinalCheck,
                RingOp::RspFinalCheck,
            ],
        ),
    ];
    for (name, ops) in attacks {
        out.push(seed(target, name, ring::encode(&setup(0), &ops)));
    }
    out
}

fn ledger_seeds() -> Vec<Seed> {
    use LedgerOp::*;
    let announce = |sel, generation| PeerExport {
        sel,
        generation,
        writable: true,
    };
    let begin = |sel, generation, writable| Begin {
        sel,
        generation,
        writable,
    };
    let mapped = |sel, generation| Mapped {
        sel,
        generation,
        ok: true,
    };
    let flows: [(&str, u8, Vec<LedgerOp>); 4] = [
        (
            // A user keeps a buffer across the peer's reload; the new
            // instance announces the same number, then the old id again.
            "orphan-adopted-then-id-reused",
            5,
            vec![
                announce(0, 0),
                begin(0, 0, true),
                mapped(0, 0),
                Reconnect,
                announce(0, 1),
                announce(0, 0),
                begin(0, 1, false),
                mapped(0, 1),
                Unmap {
                    sel: 0,
                    generation: 0,
                    held: true,
                },
                LetGo {
                    sel: 0,
                    generation: 0,
                },
            ],
        ),
        (
            "limit-reached",
            1,
            vec![
                announce(0, 0),
                announce(1, 0),
                PeerUnexport {
                    sel: 0,
                    generation: 0,
                },
                announce(1, 0),
            ],
        ),
        (
            "release-on-a-full-ring",
            5,
            (0..5u8)
                .flat_map(|i| [announce(i, 0), begin(i, 0, false), mapped(i, 0)])
                .chain((0..5u8).map(|i| Unmap {
                    sel: i,
                    generation: 0,
                    held: false,
                }))
                .chain([PeerAnswer { busy: false }, Process])
                .collect(),
        ),
        (
            "delayed-unexport-and-close",
            5,
            vec![
                Export {
                    local: 0,
                    owner: 0,
                    fenced: false,
                },
                Export {
                    local: 1,
                    owner: 1,
                    fenced: false,
                },
                PeerAnswer { busy: false },
                Unexport {
                    local: 0,
                    delay: 50,
                },
                Export {
                    local: 0,
                    owner: 0,
                    fenced: false,
                },
                Unexport {
                    local: 0,
                    delay: 20,
                },
                Tick { advance: 30 },
                Close { owner: 1 },
                Tick { advance: 0 },
                PeerAnswer { busy: true },
                Reconnect,
            ],
        ),
    ];
    flows
        .into_iter()
        .map(|(name, limit, ops)| seed("ledger", name, ledger::encode(limit, &ops)))
        .collect()
}

fn channel_seeds() -> Vec<Seed> {
    use ChannelOp::*;
    let setup = channel::Setup {
        our_order: 0,
        their_order: 0,
        max: 0,
        flags: 0b1111,
    };
    let answer = |status| PeerAnswer { status, mangle: 0 };
    let flows: [(&str, Vec<ChannelOp>); 5] = [
        (
            "export-revoke-busy-release",
            vec![
                Announce { hid: 0, tag: 0 },
                Announce { hid: 1, tag: 10 },
                answer(0),
                answer(0),
                PeerPublish,
                Process,
                PeerRequest { hid: 0, tag: 4 }, // MAPPED
                PeerPublish,
                Process,
                Revoke { hid: 0 },
                answer(5), // Busy
                PeerPublish,
                Process,
                PeerRequest { hid: 0, tag: 3 }, // RELEASE
                PeerPublish,
                Process,
                Revoke { hid: 1 },
                answer(0),
                PeerPublish,
                Process,
            ],
        ),
        (
            "import-map-unexport-unmap",
            vec![
                PeerRequest { hid: 2, tag: 0 }, // EXPORT
                PeerRequest { hid: 3, tag: 5 }, // EXPORT
                PeerPublish,
                Process,
                ImportMapped { hid: 2 },
                PeerRequest { hid: 2, tag: 1 }, // UPDATE
                PeerRequest { hid: 2, tag: 2 }, // UNEXPORT
                PeerRequest { hid: 3, tag: 2 }, // UNEXPORT
                PeerPublish,
                Process,
                answer(0),
                PeerPublish,
                Process,
                ImportUnmapped { hid: 2 },
                answer(0),
                PeerPublish,
                Process,
            ],
        ),
        (
            "refused-export",
            vec![
                Announce { hid: 4, tag: 20 },
                answer(7), // Invalid
                PeerPublish,
                Process,
            ],
        ),
        (
            "forged-response",
            vec![
                Announce { hid: 0, tag: 0 },
                PeerAnswer {
                    status: 0,
                    mangle: 0x80,
                },
                PeerPublish,
                Process,
            ],
        ),
        (
            "flood",
            (0..40u32)
                .map(|i| PeerRequest {
                    hid: i as u8,
                    tag: i,
                })
                .chain([PeerPublish, Process, Process])
                .collect(),
        ),
    ];
    flows
        .into_iter()
        .map(|(name, ops)| seed("channel", name, channel::encode(&setup, &ops)))
        .collect()
}

fn wire_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let requests: Vec<WireOp> = (0..10u32)
        .map(|tag| WireOp::RawRequest {
            max: 0,
            slot: sample_request(tag * 0x0101_0101 + tag, tag)
                .encode()
                .to_vec(),
        })
        .collect();
    out.push(seed("wire", "requests", wire::encode(&requests)));
    let responses: Vec<WireOp> = (0..10u8)
        .map(|i| WireOp::RawResponse {
            slot: wire::response(
                u32::from(i) * 77,
                i % 5 + 1,
                wire::status_from_byte(i),
                wire::sample_epoch(u32::from(i) << 8),
            )
            .encode()
            .to_vec(),
        })
        .collect();
    out.push(seed("wire", "responses", wire::encode(&responses)));
    let patched: Vec<WireOp> = (0..5u32)
        .map(|tag| WireOp::Patched {
            max: tag as u8,
            tag,
            size: [0, 1, 4096, 1 << 30, (1 << 30) + 1][tag as usize],
            patches: vec![],
        })
        .chain([WireOp::Patched {
            max: 0,
            tag: 0,
            size: 0,
            patches: vec![(40, 0), (52, 193), (255, 1)],
        }])
        .collect();
    out.push(seed("wire", "patched", wire::encode(&patched)));
    let built = vec![
        WireOp::BuiltResponse {
            req_id: 1,
            op: 1,
            status: 0,
            epoch: 0,
        },
        WireOp::BuiltResponse {
            req_id: 2,
            op: 0x80,
            status: -95,
            epoch: 0,
        },
        WireOp::BuiltResponse {
            req_id: 3,
            op: 3,
            status: -16,
            epoch: 2,
        },
        WireOp::BuiltResponse {
            req_id: 4,
            op: 3,
            status: -16,
            epoch: 0,
        },
    ];
    out.push(seed("wire", "built-responses", wire::encode(&built)));
    out
}

fn pgdir_seeds() -> Vec<Seed> {
    let page = XEN_PAGE_SIZE as u64;
    let sizes = [
        ("1B", 1),
        ("4KiB", page),
        ("4KiB+1", page + 1),
        ("one-level-full", ROOT_ENTRIES as u64 * page),
        ("two-level-min", ROOT_ENTRIES as u64 * page + 1),
        ("three-leaves", 3 * LEAF_ENTRIES as u64 * page),
        ("8MiB", 8 << 20),
        ("cap", BUILD_CAP),
    ];
    let mut out = Vec::new();
    for (name, size) in sizes {
        let ops = [
            PgdirOp::Build {
                size: size - 1,
                first_gref: 1000,
            },
            PgdirOp::Decode {
                data_delta: 0,
                leaves_delta: 0,
            },
        ];
        out.push(seed("pgdir", format!("valid-{name}"), pgdir::encode(&ops)));
    }
    let attacks: [(&str, Vec<PgdirOp>); 5] = [
        (
            "swapped-leaves",
            vec![
                PgdirOp::Build {
                    size: 3 * LEAF_ENTRIES as u64 * page - 1,
                    first_gref: 8,
                },
                PgdirOp::WriteWord {
                    page: u16::MAX,
                    word: 8,
                    value: 8 + 3 * LEAF_ENTRIES as u32 + 1,
                },
            ],
        ),
        (
            "root-as-leaf",
            vec![
                PgdirOp::Build {
                    size: 2 * LEAF_ENTRIES as u64 * page - 1,
                    first_gref: 8,
                },
                PgdirOp::Alias {
                    page: u16::MAX,
                    gref: 8 + 2 * LEAF_ENTRIES as u32,
                },
            ],
        ),
        (
            "announced-1GiB",
            vec![
                PgdirOp::Build {
                    size: 4095,
                    first_gref: 8,
                },
                PgdirOp::Announce { size: 1 << 30 },
                PgdirOp::SetMax { max: 3 },
            ],
        ),
        (
            "short-output",
            vec![
                PgdirOp::Build {
                    size: 5 * page,
                    first_gref: 8,
                },
                PgdirOp::Decode {
                    data_delta: -1,
                    leaves_delta: 0,
                },
                PgdirOp::Remove { page: 0 },
            ],
        ),
        (
            "short-leaf",
            vec![
                PgdirOp::Build {
                    size: 2 * LEAF_ENTRIES as u64 * page - 1,
                    first_gref: 8,
                },
                PgdirOp::Truncate {
                    page: 0,
                    words: 100,
                },
            ],
        ),
    ];
    for (name, ops) in attacks {
        out.push(seed("pgdir", name, pgdir::encode(&ops)));
    }
    out
}

fn uapi_seeds() -> Vec<Seed> {
    let hid = sample_hid(42);
    let peer = DomId::new(3).expect("valid");
    let priv_data = PrivData::new(b"1920x1080 XR24").expect("short");
    let records: Vec<(Record, Vec<u8>)> = vec![
        (
            Record::Export,
            ExportArgs {
                dmabuf_fd: 7,
                remote: peer,
                flags: ExportFlags::WRITABLE,
                priv_data,
                hid: Some(hid),
            }
            .encode()
            .to_vec(),
        ),
        (
            Record::Import,
            ImportArgs {
                hid,
                flags: IMPORT_RW,
                fd: 9,
                size: 8 << 20,
            }
            .encode()
            .to_vec(),
        ),
        (
            Record::Unexport,
            UnexportArgs { hid, delay_ms: 500 }.encode().to_vec(),
        ),
        (
            Record::Query,
            QueryArgs {
                hid,
                item: QueryItem::Priv,
                value: 0,
                data_ptr: 0x7fff_1000,
                data_len: 192,
            }
            .encode()
            .to_vec(),
        ),
        (
            Record::List,
            ListArgs {
                entries_ptr: 0x7fff_2000,
                capacity: 16,
                count: 0,
            }
            .encode()
            .to_vec(),
        ),
        (
            Record::ListEntry,
            ListEntry {
                hid,
                size: 1 << 30,
                peer,
                kind: 1,
                state: 9,
            }
            .encode()
            .to_vec(),
        ),
        (
            Record::Event,
            Event {
                kind: EventType::NewExport,
                peer,
                hid: Some(hid),
                size: 4096,
                flags: ExportFlags::default(),
                priv_data,
                lost: 2,
            }
            .encode()
            .to_vec(),
        ),
        (Record::IdText, hid.to_string().into_bytes()),
    ];
    let mut out: Vec<Seed> = records
        .iter()
        .map(|(record, bytes)| {
            let op = UapiOp {
                record: *record,
                bytes: bytes.clone(),
            };
            seed("uapi", format!("{record:?}"), uapi::encode(&[op]))
        })
        .collect();
    let all: Vec<UapiOp> = records
        .into_iter()
        .map(|(record, bytes)| UapiOp { record, bytes })
        .collect();
    out.push(seed("uapi", "all", uapi::encode(&all)));
    out
}

fn xenstore_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    for value in [
        "0",
        "1",
        "4",
        "8",
        "65535",
        "4294967295",
        "18446744073709551615",
        "1,2",
        "1",
        "32752",
    ] {
        out.push(seed(
            "xenstore_values",
            format!("v-{}", value.replace(',', "_")),
            value.as_bytes().to_vec(),
        ));
    }
    // Schema readers: records [node, len, value]; node 9 is a ring
    // reference whose next byte picks the ring and index.
    let mut frontend = vec![0u8];
    let mut put = |node: u8, extra: Option<u8>, value: &str| {
        frontend.push(node);
        if let Some(sel) = extra {
            frontend.push(sel);
        }
        frontend.push(value.len() as u8);
        frontend.extend_from_slice(value.as_bytes());
    };
    put(0, None, "1"); // version
    put(1, None, "1"); // ring-page-order
    put(2, None, "17"); // event-channel
    put(9, Some(0), "100");
    put(9, Some(1), "101");
    put(9, Some(0x80), "102");
    put(9, Some(0x81), "103");
    put(3, None, "1"); // versions
    put(4, None, "4"); // max-ring-page-order
    put(5, None, "1073741824"); // max-buffer-size
    put(6, None, "0"); // feature-rw
    put(7, None, "4"); // state
    put(8, None, "1"); // online
    out.push(seed("xenstore_schema", "complete", frontend));
    // Machines: a normal connect, a peer crash and recovery, a removal.
    let connect: Vec<u8> = vec![
        9, 0x29, 2, 0x31, 3, 0x33, 4, 0x34, 5, 0x35, 6, 0x36, 13, 0x2d,
    ];
    out.push(seed("xenbus_machines", "lifecycle", connect));
    let churn: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(37) & 0x3f).collect();
    out.push(seed("xenbus_machines", "churn", churn));
    out
}
