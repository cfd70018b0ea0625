// SPDX-License-Identifier: MIT
//! The `ledger` target: [`Ledger`], the bookkeeping of one connection that
//! the kernel module and the simulation both run, driven by a hostile
//! peer and by every local operation in any order, across reconnections.
//!
//! The peer is a real [`Requester`] on its ring (announcing and revoking
//! buffers, reusing the numbers and ids of its earlier sessions) and a
//! real [`Responder`] on ours. Local users import, map, abort, release
//! and hold pages; the exporter side exports, re-exports, unexports now
//! or later, closes files and ticks the clock.
//!
//! Oracles, after every step:
//!
//! * **admission**: the peer's EXPORT is answered as the rule says, from
//!   what the ledger held before: `NoSpace` at the limit, `Exists` for an
//!   id it holds (of this session or an ended one) or a number a live
//!   import of this session holds, `Ok` otherwise;
//! * **claims**: [`Ledger::import_begin`] follows the decision table
//!   (docs/uapi.md, IMPORT) from the record's state before the call;
//! * **no record is lost**: every import a local user holds is found,
//!   with the claim the harness gave it, until it is let go (one an ioctl
//!   is still mapping may be revoked by the peer: its MAPPED then fails);
//! * **counters**: the held count equals the records, stays within the
//!   limit, and the gauges the sink saw equal the tables; unsent RELEASEs
//!   never outnumber the imports;
//! * **grants**: every export's grants are retired exactly once, and never
//!   while the export is still recorded;
//! * **teardown**: a detach leaves no import of the ended session
//!   unorphaned or unclaimed, tells readers of each live one, and all of
//!   the session's waiting requests complete;
//! * **the peer's fences**: a fenced UPDATE is answered as the rule says
//!   (no buffer, a fence it holds, the limit), a SIGNAL is taken only for
//!   a fence the peer attached to that buffer, and every local fence ends
//!   exactly once: signalled, failed, timed out when its deadline passes,
//!   or with the session;
//! * **our fences**: the peer hears a SIGNAL only for a fence a frame it
//!   read carried, once; never more than the limit are held, none after
//!   the session.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU32;

use hyper_dmabuf_common::channel::{Channel, ChannelConfig};
use hyper_dmabuf_common::fence::{FenceEnd, InFence, OutFence, MAX_FENCES};
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::ledger::{
    Claim, ExportRecord, FileRights, Frame, Gauge, ImportRecord, ImportRefusal, ImportStep, Ledger,
    Released, Sink, Unexporting, UpdateRefusal,
};
use hyper_dmabuf_common::limits::{GNTTAB_NR_RESERVED_ENTRIES, XEN_PAGE_SIZE};
use hyper_dmabuf_common::ring::{init_shared, Requester, Responder};
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::{
    request_id, request_op, Export, ExportFlags, FenceId, FenceResult, MapEpoch, Message, PageRefs,
    PrivData, Request, Response, Slot, VERSION_3,
};
use hyper_dmabuf_common::xen::{DomId, GrantRef, Status};
use hyper_dmabuf_common::Error;

use crate::input::{decode_all, Reader, Writer};

/// Buffer numbers the operations pick from.
const NUMBERS: u8 = 5;
/// Sessions of the peer whose ids the operations pick from: a reloaded
/// peer numbers from 1 again with new keys.
const GENERATIONS: u8 = 3;
/// Local buffers the exporter side picks from.
const LOCAL: u8 = 4;
/// How long the peer's fences live here before they time out, in
/// milliseconds: a few ticks.
const FENCE_TIMEOUT_MS: u64 = 500;

/// The peer's buffer `sel` of its session `generation`.
fn peer_hid(sel: u8, generation: u8) -> HyperDmabufId {
    let number = u64::from(sel % NUMBERS) + 1;
    let mut key = [0u8; KEY_LEN];
    key[0] = generation % GENERATIONS;
    key[1] = 0xa5;
    // Distinct keys, as random ones are: orphans are kept by key.
    key[2] = sel % NUMBERS;
    HyperDmabufId::new(number, key).expect("number is not zero")
}

/// One step of a ledger run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerOp {
    /// Peer: announces its buffer `sel` of session `generation`.
    PeerExport {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
        /// Announced read-write.
        writable: bool,
    },
    /// Peer: revokes it.
    PeerUnexport {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
    },
    /// Peer: answers every request of ours, `Ok` or `Busy`.
    PeerAnswer {
        /// Answers UNEXPORT with `Busy` (the peer maps the buffer).
        busy: bool,
    },
    /// Local: the event handler runs.
    Process,
    /// Local: an import ioctl begins.
    Begin {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
        /// Asks for a writable mapping.
        writable: bool,
    },
    /// Local: the ioctl mapped the buffer, or failed (`ok` false).
    Mapped {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
        /// The mapping succeeded.
        ok: bool,
    },
    /// Local: the live buffer's dma-buf is released; `held` if a page is
    /// still held (the release is then a later step).
    Unmap {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
        /// A page is still held.
        held: bool,
    },
    /// Local: the held page is let go.
    LetGo {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
    },
    /// Local: exports local buffer `local` (an update if exported).
    Export {
        /// Selects the local buffer.
        local: u8,
        /// Selects the owner file.
        owner: u8,
        /// The buffer has a fence not yet signalled.
        fenced: bool,
    },
    /// Local: unexports it after `delay` ms.
    Unexport {
        /// Selects the local buffer.
        local: u8,
        /// Delay in milliseconds.
        delay: u8,
    },
    /// Local: the file `owner` was closed.
    Close {
        /// Selects the owner file.
        owner: u8,
    },
    /// Local: the clock advances and the timed work runs.
    Tick {
        /// Milliseconds.
        advance: u8,
    },
    /// The connection ends; the next one starts at once.
    Reconnect,
    /// Peer: a new frame of its buffer, with fence `fence`.
    PeerFencedUpdate {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
        /// The fence id, less one.
        fence: u8,
    },
    /// Peer: SIGNAL of fence `fence` on its buffer.
    PeerSignal {
        /// Selects the number.
        sel: u8,
        /// Selects the session.
        generation: u8,
        /// The fence id, less one.
        fence: u8,
    },
    /// Local: one of our fences signals.
    LocalSignal {
        /// Selects the fence.
        pick: u8,
        /// It failed.
        failed: bool,
    },
}

impl LedgerOp {
    /// Reads an operation.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        let tag = r.u8();
        let (a, b) = (r.u8(), r.u8());
        let flag = b & 0x80 != 0;
        match tag % 16 {
            0 => LedgerOp::PeerExport {
                sel: a,
                generation: b & 0x7f,
                writable: flag,
            },
            1 => LedgerOp::PeerUnexport {
                sel: a,
                generation: b & 0x7f,
            },
            2 => LedgerOp::PeerAnswer { busy: flag },
            3 => LedgerOp::Process,
            4 => LedgerOp::Begin {
                sel: a,
                generation: b & 0x7f,
                writable: flag,
            },
            5 => LedgerOp::Mapped {
                sel: a,
                generation: b & 0x7f,
                ok: !flag,
            },
            6 => LedgerOp::Unmap {
                sel: a,
                generation: b & 0x7f,
                held: flag,
            },
            7 => LedgerOp::LetGo {
                sel: a,
                generation: b & 0x7f,
            },
            8 => LedgerOp::Export {
                local: a,
                owner: b & 0x7f,
                fenced: flag,
            },
            9 => LedgerOp::Unexport { local: a, delay: b },
            10 => LedgerOp::Close { owner: a },
            11 => LedgerOp::Tick { advance: a },
            12 => LedgerOp::Reconnect,
            13 => LedgerOp::PeerFencedUpdate {
                sel: a & 0x0f,
                generation: a >> 4,
                fence: b,
            },
            14 => LedgerOp::PeerSignal {
                sel: a & 0x0f,
                generation: a >> 4,
                fence: b,
            },
            _ => LedgerOp::LocalSignal {
                pick: a,
                failed: flag,
            },
        }
    }

    /// Writes the operation as [`LedgerOp::decode`] reads it.
    pub fn encode(&self, w: &mut Writer) {
        let flagged = |g: u8, f: bool| (g & 0x7f) | if f { 0x80 } else { 0 };
        let (tag, a, b) = match *self {
            LedgerOp::PeerExport {
                sel,
                generation,
                writable,
            } => (0, sel, flagged(generation, writable)),
            LedgerOp::PeerUnexport { sel, generation } => (1, sel, generation & 0x7f),
            LedgerOp::PeerAnswer { busy } => (2, 0, flagged(0, busy)),
            LedgerOp::Process => (3, 0, 0),
            LedgerOp::Begin {
                sel,
                generation,
                writable,
            } => (4, sel, flagged(generation, writable)),
            LedgerOp::Mapped {
                sel,
                generation,
                ok,
            } => (5, sel, flagged(generation, !ok)),
            LedgerOp::Unmap {
                sel,
                generation,
                held,
            } => (6, sel, flagged(generation, held)),
            LedgerOp::LetGo { sel, generation } => (7, sel, generation & 0x7f),
            LedgerOp::Export {
                local,
                owner,
                fenced,
            } => (8, local, flagged(owner, fenced)),
            LedgerOp::Unexport { local, delay } => (9, local, delay),
            LedgerOp::Close { owner } => (10, owner, 0),
            LedgerOp::Tick { advance } => (11, advance, 0),
            LedgerOp::Reconnect => (12, 0, 0),
            LedgerOp::PeerFencedUpdate {
                sel,
                generation,
                fence,
            } => (13, (sel & 0x0f) | generation << 4, fence),
            LedgerOp::PeerSignal {
                sel,
                generation,
                fence,
            } => (14, (sel & 0x0f) | generation << 4, fence),
            LedgerOp::LocalSignal { pick, failed } => (15, pick, flagged(0, failed)),
        };
        w.u8(tag).u8(a).u8(b);
    }
}

/// The limit on imports in a run (small, so that it is reached).
pub fn max_imports(first: u8) -> usize {
    usize::from(first % 6) + 1
}

/// An input: the import limit's selector, then the operations.
pub fn encode(limit: u8, ops: &[LedgerOp]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(limit);
    for op in ops {
        op.encode(&mut w);
    }
    w.finish()
}

/// An export's grants: a token retired once.
#[derive(Debug)]
struct Grants(u64);

type TestLedger = Ledger<
    BTreeMap<u64, ExportRecord<Grants>>,
    BTreeMap<u64, ImportRecord<u64>>,
    BTreeMap<u64, u64>,
    BTreeMap<u64, InFence<u64>>,
    BTreeMap<u64, OutFence>,
>;

/// The sink: records every effect and checks the ones it can.
#[derive(Default)]
struct Effects {
    retired: HashSet<u64>,
    events: Vec<(Event, Option<u64>)>,
    issued: HashSet<u64>,
    completed: HashMap<u64, Status>,
    gauges: [i64; 2],
    /// Local fences for the peer's, by serial: how each ended.
    fences: HashMap<u64, Option<FenceEnd>>,
    next_fence: u64,
    now: u64,
    /// Buffers announced and not yet forgotten.
    known: HashSet<HyperDmabufId>,
}

impl Sink<Grants, u64> for Effects {
    fn fence_new(&mut self, _hid: &HyperDmabufId) -> Option<u64> {
        self.next_fence += 1;
        self.fences.insert(self.next_fence, None);
        Some(self.next_fence)
    }

    fn fence_end(&mut self, fence: u64, end: FenceEnd) {
        let old = self.fences.insert(fence, Some(end));
        assert_eq!(old, Some(None), "local fence {fence} ended twice");
    }

    fn now_ms(&self) -> u64 {
        self.now
    }

    fn retire(&mut self, grants: Grants) {
        assert!(
            self.retired.insert(grants.0),
            "grants {} retired twice",
            grants.0
        );
    }

    fn event(&mut self, event: Event, owner: Option<u64>) {
        self.events.push((event, owner));
    }

    fn complete(&mut self, token: u64, status: Status) {
        assert!(
            self.issued.contains(&token),
            "completed a token never issued"
        );
        assert!(
            self.completed.insert(token, status).is_none(),
            "token {token} completed twice"
        );
    }

    fn protocol_error(&mut self, _error: Error) {}

    fn announced(&mut self, export: &Export) {
        assert!(
            self.known.insert(export.hid),
            "{} announced twice",
            export.hid
        );
    }

    fn forgotten(&mut self, hid: &HyperDmabufId) {
        assert!(
            self.known.remove(hid),
            "{hid} forgotten, never announced or twice"
        );
    }

    fn gauge(&mut self, gauge: Gauge, up: bool) {
        self.gauges[gauge as usize] += if up { 1 } else { -1 };
    }
}

/// What a local user holds of an import, as the harness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Mapping {
        writable: bool,
    },
    /// Mapping a record the peer revoked and the channel forgot since.
    Stale,
    Live {
        handle: u64,
        writable: bool,
    },
    Unmapping,
}

/// The peer's side of one connection.
struct Peer<'a> {
    requests: Requester<&'a [AtomicU32]>,
    answers: Responder<&'a [AtomicU32]>,
    next_req: u32,
    /// Request id → the buffer its EXPORT announced.
    exports: HashMap<u32, HyperDmabufId>,
    /// The count carried by the last UPDATE of ours it read: they must
    /// come in the order they were made.
    last_update: Option<u64>,
    /// Our buffers whose UNEXPORT it read: no UPDATE may follow.
    revoked: HashSet<HyperDmabufId>,
    /// Our fences a frame it read carried, and their buffers: each
    /// SIGNAL names one, once.
    fences_heard: HashMap<FenceId, HyperDmabufId>,
}

/// A fence of the peer's, as the harness sees it.
struct PeerFence {
    hid: HyperDmabufId,
    local: u64,
    deadline: u64,
}

/// Reads what our request in `slot` tells the peer: the order of UPDATEs
/// (each carries the count of the update call that made it) and that none
/// follows its buffer's UNEXPORT.
fn peer_reads(peer: &mut Peer<'_>, slot: &Slot) {
    let Ok(request) = Request::decode(slot, 1 << 30, VERSION_3) else {
        panic!("a request of ours does not decode");
    };
    match request.message {
        Message::Export(export) => {
            if let Some(fence) = export.fence {
                assert!(peer.fences_heard.insert(fence, export.hid).is_none());
            }
        }
        Message::Signal { hid, fence, .. } => {
            assert_eq!(
                peer.fences_heard.remove(&fence),
                Some(hid),
                "SIGNAL of a fence no frame carried"
            );
        }
        Message::Update {
            hid,
            priv_data,
            fence,
        } => {
            if let Some(fence) = fence {
                assert!(peer.fences_heard.insert(fence, hid).is_none());
            }
            assert!(
                !peer.revoked.contains(&hid),
                "UPDATE of {hid} after its UNEXPORT"
            );
            let count = priv_data
                .as_bytes()
                .try_into()
                .map(u64::from_le_bytes)
                .expect("the harness's private data: a count");
            assert!(
                peer.last_update.is_none_or(|last| count > last),
                "UPDATE {count} read after {:?}",
                peer.last_update
            );
            peer.last_update = Some(count);
        }
        Message::Unexport(hid) => {
            peer.revoked.insert(hid);
        }
        _ => {}
    }
}

fn ring() -> Vec<AtomicU32> {
    let mem: Vec<AtomicU32> = (0..XEN_PAGE_SIZE / 4).map(|_| AtomicU32::new(0)).collect();
    init_shared(&mem[..]).expect("whole pages");
    mem
}

/// What the admission rule answers `hid`, from the ledger before
/// (docs/protocol.md, EXPORT): an id of this session first (the channel's
/// check), then the limit, then an id of an ended session or a number a
/// live import of this session holds.
fn admission(ledger: &TestLedger, max: usize, hid: &HyperDmabufId) -> Status {
    let known = ledger.import(hid);
    if known.is_some_and(|i| !i.orphaned()) {
        return Status::Exists;
    }
    if ledger.imports_held() >= max {
        return Status::NoSpace;
    }
    if known.is_some() {
        return Status::Exists;
    }
    let mut taken = false;
    ledger.for_each(
        |_, _| {},
        |i| taken |= i.state.export.hid.number() == hid.number() && !i.orphaned(),
    );
    if taken {
        Status::Exists
    } else {
        Status::Ok
    }
}

/// What [`Ledger::import_begin`] must decide, from the record before.
fn begin_verdict(
    ledger: &TestLedger,
    hid: &HyperDmabufId,
    writable: bool,
) -> Result<bool, ImportRefusal> {
    let record = ledger.import(hid).ok_or(ImportRefusal::NotFound)?;
    if record.ended() {
        return Err(ImportRefusal::NotFound);
    }
    if matches!(record.claim(), Claim::Unmapping) {
        return Err(ImportRefusal::Busy);
    }
    if writable && !record.state.export.flags.contains(ExportFlags::WRITABLE) {
        return Err(ImportRefusal::NotWritable);
    }
    match record.claim() {
        Claim::Idle => Ok(true),
        Claim::Live {
            writable: false, ..
        } if writable => Err(ImportRefusal::Busy),
        Claim::Live { .. } => Ok(false),
        Claim::Mapping | Claim::Unmapping => Err(ImportRefusal::Busy),
    }
}

/// The `ledger` target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = max_imports(r.u8());
    let ops = decode_all(&mut r, LedgerOp::decode);
    let mut ops = ops.into_iter().peekable();

    let mut ledger: TestLedger = Ledger::new(
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    )
    .with_max_imports(max)
    .with_fence_timeout(FENCE_TIMEOUT_MS);
    // The peer's fences the ledger holds, by id; ours not yet signalled.
    let mut peer_fences: HashMap<u64, PeerFence> = HashMap::new();
    let mut our_fences: Vec<FenceId> = Vec::new();
    let mut fx = Effects::default();
    let mut held: HashMap<HyperDmabufId, Held> = HashMap::new();
    let mut local_hids: HashMap<u8, HyperDmabufId> = HashMap::new();
    let mut local_owners: HashMap<u8, u64> = HashMap::new();
    let mut next = 1u64;
    let mut now = 0u64;
    // Update calls made: each carries its count as private data.
    let mut updates = 0u64;
    let peer_id = DomId::new(1).expect("not reserved");
    let config = ChannelConfig {
        version: VERSION_3,
        max_buffer_bytes: 1 << 30,
        allow_rw: true,
    };
    let mut slot: Slot = [0u8; 256];

    // One connection per round; a Reconnect op ends it.
    while ops.peek().is_some() {
        let (ours, theirs) = (ring(), ring());
        let (ours, theirs) = (&ours[..], &theirs[..]);
        let mut channel = Channel::new(peer_id, config, ours, theirs).expect("ring fits");
        let mut peer = Peer {
            requests: Requester::new(theirs).expect("ring fits"),
            answers: Responder::new(ours).expect("ring fits"),
            next_req: 1,
            exports: HashMap::new(),
            last_update: None,
            revoked: HashSet::new(),
            fences_heard: HashMap::new(),
        };
        for op in ops.by_ref() {
            match op {
                LedgerOp::PeerExport {
                    sel,
                    generation,
                    writable,
                } => {
                    let hid = peer_hid(sel, generation);
                    let export = Export {
                        hid,
                        size: XEN_PAGE_SIZE as u64,
                        pages: PageRefs::Directory(
                            GrantRef::new(GNTTAB_NR_RESERVED_ENTRIES).expect("valid"),
                        ),
                        flags: if writable {
                            ExportFlags::WRITABLE
                        } else {
                            ExportFlags::default()
                        },
                        priv_data: PrivData::EMPTY,
                        fence: None,
                    };
                    let expected = admission(&ledger, max, &hid);
                    let req_id = peer.next_req;
                    let request = Request {
                        req_id,
                        message: Message::Export(export),
                    };
                    if peer.requests.push(&request.encode()).is_err() {
                        continue;
                    }
                    peer.next_req += 1;
                    peer.requests.publish();
                    peer.exports.insert(req_id, hid);
                    process(&mut ledger, &mut channel, &mut fx, now);
                    while let Ok(true) = peer.requests.pop(&mut slot) {
                        let answer = Response::decode(&slot).expect("our answers decode");
                        if let Some(answered) = peer.exports.remove(&answer.req_id) {
                            if answered == hid {
                                assert_eq!(answer.status, expected, "admission of {hid}");
                            }
                        }
                    }
                }
                LedgerOp::PeerUnexport { sel, generation } => {
                    let request = Request {
                        req_id: peer.next_req,
                        message: Message::Unexport(peer_hid(sel, generation)),
                    };
                    if peer.requests.push(&request.encode()).is_ok() {
                        peer.next_req += 1;
                        peer.requests.publish();
                    }
                    process(&mut ledger, &mut channel, &mut fx, now);
                    while let Ok(true) = peer.requests.pop(&mut slot) {}
                }
                LedgerOp::PeerAnswer { busy } => {
                    while let Ok(true) = peer.answers.pop(&mut slot) {
                        peer_reads(&mut peer, &slot);
                        let op = request_op(&slot);
                        let unexport = op == hyper_dmabuf_common::wire::Op::Unexport as u8;
                        let answer = Response {
                            req_id: request_id(&slot),
                            op,
                            status: if busy && unexport {
                                Status::Busy
                            } else {
                                Status::Ok
                            },
                            map_epoch: (busy && unexport).then_some(MapEpoch::FIRST),
                        };
                        let _ = peer.answers.push(&answer.encode());
                    }
                    peer.answers.publish();
                    process(&mut ledger, &mut channel, &mut fx, now);
                }
                LedgerOp::Process => process(&mut ledger, &mut channel, &mut fx, now),
                LedgerOp::Begin {
                    sel,
                    generation,
                    writable,
                } => {
                    let hid = peer_hid(sel, generation);
                    let verdict = begin_verdict(&ledger, &hid, writable);
                    match (ledger.import_begin(&hid, writable), verdict) {
                        (Ok(ImportStep::Map(export)), Ok(true)) => {
                            assert_eq!(export.hid, hid);
                            // Another ioctl may still be mapping an earlier
                            // record of this id that the peer revoked.
                            let before = held.insert(hid, Held::Mapping { writable });
                            assert!(matches!(before, None | Some(Held::Stale)));
                        }
                        (
                            Ok(ImportStep::Reuse {
                                handle, writable, ..
                            }),
                            Ok(false),
                        ) => {
                            assert!(
                                matches!(held.get(&hid), Some(Held::Live { handle: h, writable: w })
                                    if h == handle && *w == writable),
                                "reused a handle the user does not hold, or not as it is mapped"
                            );
                        }
                        (Err(e), Err(expected)) => assert_eq!(e, expected, "import of {hid}"),
                        (got, expected) => {
                            panic!("import of {hid}: got {got:?}, the table says {expected:?}")
                        }
                    }
                }
                LedgerOp::Mapped {
                    sel,
                    generation,
                    ok,
                } => {
                    let hid = peer_hid(sel, generation);
                    let writable = match held.get(&hid) {
                        Some(&Held::Mapping { writable }) => writable,
                        Some(Held::Stale) => {
                            ledger.import_abort(&mut fx, &hid);
                            held.remove(&hid);
                            continue;
                        }
                        _ => continue,
                    };
                    if ok && ledger.import_mapped(&mut channel, &mut fx, &hid).is_ok() {
                        let handle = next;
                        next += 1;
                        ledger.import_live(&hid, handle, writable);
                        held.insert(hid, Held::Live { handle, writable });
                    } else {
                        ledger.import_abort(&mut fx, &hid);
                        held.remove(&hid);
                    }
                }
                LedgerOp::Unmap {
                    sel,
                    generation,
                    held: page_held,
                } => {
                    let hid = peer_hid(sel, generation);
                    let Some(&Held::Live { handle, .. }) = held.get(&hid) else {
                        continue;
                    };
                    if page_held {
                        assert_eq!(ledger.import_unmapping(&hid), Some(handle));
                        held.insert(hid, Held::Unmapping);
                    } else {
                        let_go(&mut ledger, &mut channel, &mut fx, &mut held, &hid);
                    }
                }
                LedgerOp::LetGo { sel, generation } => {
                    let hid = peer_hid(sel, generation);
                    if held.get(&hid) == Some(&Held::Unmapping) {
                        let_go(&mut ledger, &mut channel, &mut fx, &mut held, &hid);
                    }
                }
                LedgerOp::Export {
                    local,
                    owner,
                    fenced,
                } => {
                    let local = local % LOCAL;
                    let identity = usize::from(local);
                    let owner = u64::from(owner % 3);
                    let rights = FileRights {
                        file: owner,
                        admin: false,
                    };
                    if let Some(hid) = ledger.export_of_identity(identity) {
                        assert_eq!(local_hids.get(&local), Some(&hid));
                        let frame = Frame {
                            priv_data: PrivData::new(&updates.to_le_bytes()).expect("fits"),
                            fenced,
                        };
                        updates += 1;
                        let fences_full = ledger.fences_out_held() >= MAX_FENCES;
                        let due = ledger
                            .export(&hid)
                            .and_then(|e| e.unexport_at())
                            .is_some_and(|at| at <= now);
                        let done = ledger.update(
                            Some(&mut channel),
                            &mut fx,
                            &hid,
                            rights,
                            Some(ExportFlags::default()),
                            frame,
                            now,
                        );
                        match done {
                            Ok(sent) => {
                                assert_eq!(local_owners.get(&local), Some(&owner));
                                assert!(!due, "a frame cancelled a due unexport");
                                assert_eq!(sent.fence.is_some(), fenced);
                                our_fences.extend(sent.fence);
                            }
                            Err(UpdateRefusal::TooManyFences) => {
                                assert!(fenced && fences_full, "fences refused below the limit")
                            }
                            // An unexport due and not yet sent: no frame
                            // may cancel it.
                            Err(UpdateRefusal::NotFound) if due => {}
                            // Another file's export, still open, is not this
                            // one's to update.
                            Err(UpdateRefusal::NotOwner) => {
                                assert!(
                                    matches!(local_owners.get(&local), Some(o) if *o != owner),
                                    "{local}: exported by {:?}, not {owner}",
                                    local_owners.get(&local)
                                );
                            }
                            Err(e) => panic!("update of a live export refused: {e:?}"),
                        }
                        continue;
                    }
                    let number = next;
                    next += 1;
                    let hid = HyperDmabufId::new(number, [0x5a; KEY_LEN]).expect("not zero");
                    let info = Export {
                        hid,
                        size: XEN_PAGE_SIZE as u64,
                        pages: PageRefs::Directory(
                            GrantRef::new(GNTTAB_NR_RESERVED_ENTRIES).expect("valid"),
                        ),
                        flags: ExportFlags::default(),
                        priv_data: PrivData::EMPTY,
                        fence: None,
                    };
                    let token = next;
                    next += 1;
                    fx.issued.insert(token);
                    let record = ExportRecord::new(info, owner, identity, Grants(number));
                    if let Ok(sent) = ledger.announce(&mut channel, &mut fx, record, token, fenced)
                    {
                        assert_eq!(sent.fence.is_some(), fenced);
                        our_fences.extend(sent.fence);
                        local_hids.insert(local, hid);
                        local_owners.insert(local, owner);
                    } else {
                        fx.issued.remove(&token);
                        assert!(
                            fx.retired.contains(&number),
                            "a failed export kept its grants"
                        );
                    }
                }
                LedgerOp::Unexport { local, delay } => {
                    if let Some(hid) = local_hids.get(&(local % LOCAL)) {
                        let known = ledger.export(hid).is_some();
                        if delay == 0 {
                            // As the driver: at once if the ring has room.
                            let done = ledger.unexport_now(Some(&mut channel), &mut fx, hid, now);
                            assert_eq!(done.is_some(), known);
                            if done == Some(Unexporting::Due) {
                                assert!(ledger.unexports_blocked(), "due with room on the ring");
                            }
                        } else {
                            let due = now + u64::from(delay);
                            assert_eq!(ledger.schedule_unexport(hid, due), known);
                        }
                    }
                }
                LedgerOp::Close { owner } => {
                    let owner = u64::from(owner % 3);
                    ledger.unexport_owned_by(owner, now);
                    local_owners.retain(|_, o| *o != owner);
                }
                LedgerOp::Tick { advance } => {
                    now += u64::from(advance);
                    fx.now = now;
                    let tick = ledger.tick(Some(&mut channel), &mut fx, now);
                    assert!(tick.next.is_none_or(|n| n > now), "a tick due in the past");
                    peer_fences.retain(|id, f| {
                        let end = fx.fences[&f.local];
                        if f.deadline <= now {
                            assert_eq!(end, Some(FenceEnd::TimedOut), "fence {id} outlived");
                            false
                        } else {
                            assert_eq!(end, None, "fence {id} ended early");
                            true
                        }
                    });
                    if let Some(next) = peer_fences.values().map(|f| f.deadline).min() {
                        assert!(tick.next.is_some_and(|n| n <= next), "no tick for a fence");
                    }
                }
                LedgerOp::Reconnect => break,
                LedgerOp::PeerFencedUpdate {
                    sel,
                    generation,
                    fence,
                } => {
                    let hid = peer_hid(sel, generation);
                    let id = u64::from(fence) + 1;
                    let expected = if ledger.import(&hid).is_none_or(|i| i.ended()) {
                        Status::NoSuchBuffer
                    } else if peer_fences.contains_key(&id) {
                        Status::Exists
                    } else if peer_fences.len() >= MAX_FENCES {
                        Status::NoSpace
                    } else {
                        Status::Ok
                    };
                    let message = Message::Update {
                        hid,
                        priv_data: PrivData::EMPTY,
                        fence: Some(FenceId::new(id).expect("not zero")),
                    };
                    let made = fx.next_fence;
                    if peer_asks(&mut peer, &mut ledger, &mut channel, &mut fx, now, message)
                        .is_some_and(|status| status != expected)
                    {
                        panic!("fenced UPDATE of {hid}: not {expected:?}");
                    }
                    if fx.next_fence != made {
                        assert_eq!(expected, Status::Ok, "a refused fence was made");
                        let f = PeerFence {
                            hid,
                            local: fx.next_fence,
                            deadline: now + FENCE_TIMEOUT_MS,
                        };
                        peer_fences.insert(id, f);
                    }
                }
                LedgerOp::PeerSignal {
                    sel,
                    generation,
                    fence,
                } => {
                    let hid = peer_hid(sel, generation);
                    let id = u64::from(fence) + 1;
                    let expected = match peer_fences.get(&id) {
                        Some(f) if f.hid == hid => Status::Ok,
                        _ => Status::NoSuchBuffer,
                    };
                    let message = Message::Signal {
                        hid,
                        fence: FenceId::new(id).expect("not zero"),
                        result: FenceResult::Signalled,
                    };
                    let status =
                        peer_asks(&mut peer, &mut ledger, &mut channel, &mut fx, now, message);
                    if let Some(status) = status {
                        assert_eq!(status, expected, "SIGNAL of fence {id} on {hid}");
                    }
                    if expected == Status::Ok && status.is_some() {
                        let f = peer_fences.remove(&id).expect("checked");
                        assert_eq!(fx.fences[&f.local], Some(FenceEnd::Signalled));
                    }
                }
                LedgerOp::LocalSignal { pick, failed } => {
                    if our_fences.is_empty() {
                        continue;
                    }
                    let id = our_fences.swap_remove(usize::from(pick) % our_fences.len());
                    let result = if failed {
                        FenceResult::Failed
                    } else {
                        FenceResult::Signalled
                    };
                    ledger.fence_signalled(Some(&mut channel), &mut fx, id, result);
                }
            }
            for (hid, h) in held.iter_mut() {
                if matches!(h, Held::Mapping { .. }) && ledger.import(hid).is_none() {
                    *h = Held::Stale;
                }
            }
            check(&ledger, &fx, max, &held);
            let pending = fx.fences.values().filter(|e| e.is_none()).count();
            assert_eq!(pending, peer_fences.len(), "local fences vs the peer's");
            assert_eq!(ledger.fences_in_held(), peer_fences.len());
            assert!(ledger.fences_out_held() <= MAX_FENCES);
        }
        // The session ends.
        let mut live = 0;
        ledger.for_each(|_, _| {}, |i| live += usize::from(!i.orphaned()));
        let before = fx.events.len();
        ledger.detach(&mut channel, &mut fx);
        let told = fx.events[before..]
            .iter()
            .filter(|(e, _)| e.kind == EventType::Unexport)
            .count();
        assert_eq!(told, live, "readers told of {told} of {live} imports");
        assert!(
            matches!(fx.events.last(), Some((e, None)) if e.kind == EventType::PeerDisconnected)
        );
        let missing = fx
            .issued
            .iter()
            .filter(|t| !fx.completed.contains_key(t))
            .count();
        assert_eq!(missing, 0, "{missing} waiting requests never completed");
        assert!(
            fx.fences.values().all(Option::is_some),
            "a fence of the peer's outlived its session"
        );
        peer_fences.clear();
        assert_eq!(ledger.fences_in_held(), 0);
        assert_eq!(
            ledger.fences_out_held(),
            0,
            "a fence of ours outlived the session"
        );
        // The host stops watching ours: they are gone with the session.
        our_fences.clear();
        ledger.for_each(
            |_, _| panic!("an export outlived its session"),
            |i| {
                assert!(
                    i.orphaned() && i.claimed(),
                    "an unheld import outlived its session"
                )
            },
        );
        check(&ledger, &fx, max, &held);
    }
}

/// The peer sends `message` and the ledger answers it: the status, or
/// `None` if the ring had no room.
fn peer_asks(
    peer: &mut Peer<'_>,
    ledger: &mut TestLedger,
    channel: &mut Channel<&[AtomicU32]>,
    fx: &mut Effects,
    now: u64,
    message: Message,
) -> Option<Status> {
    let req_id = peer.next_req;
    let request = Request { req_id, message };
    peer.requests.push(&request.encode()).ok()?;
    peer.next_req += 1;
    peer.requests.publish();
    process(ledger, channel, fx, now);
    let mut slot: Slot = [0u8; 256];
    let mut status = None;
    while let Ok(true) = peer.requests.pop(&mut slot) {
        let answer = Response::decode(&slot).expect("our answers decode");
        if answer.req_id == req_id {
            status = Some(answer.status);
        }
    }
    status
}

/// The event handler: process, then send what waited for room.
fn process(
    ledger: &mut TestLedger,
    channel: &mut Channel<&[AtomicU32]>,
    fx: &mut Effects,
    now: u64,
) {
    // The peer speaks the protocol: nothing it sends may be fatal.
    channel
        .process(&mut ledger.view(fx))
        .expect("an honest peer broke nothing");
    // As the driver: due UNEXPORTs, RELEASEs, then the queued frames.
    if ledger.unexports_blocked() {
        ledger.send_due_unexports(channel, fx, now);
    }
    ledger.flush_releases(channel, fx);
    ledger.flush_updates(channel, fx, now);
}

fn let_go(
    ledger: &mut TestLedger,
    channel: &mut Channel<&[AtomicU32]>,
    fx: &mut Effects,
    held: &mut HashMap<HyperDmabufId, Held>,
    hid: &HyperDmabufId,
) {
    let orphan = ledger.import(hid).is_some_and(|i| i.orphaned());
    let released = ledger.import_released(Some(channel), fx, hid);
    held.remove(hid);
    if orphan {
        assert_eq!(released, Released::Forgotten);
        assert!(ledger.import(hid).is_none(), "a released orphan stayed");
    } else {
        assert_ne!(released, Released::Unknown, "a held import was lost");
    }
}

fn check(ledger: &TestLedger, fx: &Effects, max: usize, held: &HashMap<HyperDmabufId, Held>) {
    let (mut exports, mut imports) = (0i64, 0usize);
    ledger.for_each(
        |_, e| {
            exports += 1;
            assert!(
                !fx.retired.contains(&e.grants.0),
                "grants retired while the export is recorded"
            );
        },
        |_| imports += 1,
    );
    assert_eq!(ledger.imports_held(), imports, "held count vs records");
    assert_eq!(
        fx.known.len(),
        imports,
        "announced and not forgotten vs records"
    );
    assert!(imports <= max, "{imports} imports past the limit {max}");
    assert_eq!(fx.gauges[Gauge::Exports as usize], exports, "exports gauge");
    assert_eq!(
        fx.gauges[Gauge::Imports as usize],
        imports as i64,
        "imports gauge"
    );
    assert!(ledger.releases_unsent() <= imports);
    let mut queued = 0;
    ledger.for_each(|_, e| queued += usize::from(e.update_queued()), |_| {});
    assert_eq!(ledger.updates_queued(), queued, "queued UPDATEs vs records");
    for (hid, h) in held {
        if *h == Held::Stale {
            // Revoked by the peer before the ioctl said it mapped it: its
            // MAPPED is refused (ENOENT) and the ioctl undoes its mapping.
            continue;
        }
        let record = ledger
            .import(hid)
            .unwrap_or_else(|| panic!("import {hid} lost while held as {h:?}"));
        let agrees = match (h, record.claim()) {
            (Held::Mapping { .. }, Claim::Mapping) | (Held::Unmapping, Claim::Unmapping) => true,
            (
                Held::Live { handle, writable },
                Claim::Live {
                    handle: h,
                    writable: w,
                },
            ) => handle == h && writable == w,
            _ => false,
        };
        assert!(
            agrees,
            "import {hid}: held as {h:?}, recorded as {:?}",
            record.claim()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = LedgerOp> {
        (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(tag, a, b)| LedgerOp::decode(&mut Reader::new(&[tag, a, b])))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Operation sequences against the oracles: the same run as the
        /// fuzz target, on every `cargo test`.
        #[test]
        fn ledger_oracle(limit in any::<u8>(), ops in proptest::collection::vec(op(), 0..80)) {
            run(&encode(limit, &ops));
        }
    }

    /// A buffer exported by file 0 and exported again by file 1 (refused:
    /// not its export), by file 0 (an update), then file 0 closed and the
    /// buffer exported by file 1 (a new export, not a revival of the one
    /// going away): the oracles in `run` check each answer.
    #[test]
    fn a_reexport_is_its_owners_alone() {
        let export = |owner| LedgerOp::Export {
            local: 0,
            owner,
            fenced: false,
        };
        run(&encode(
            8,
            &[
                export(0),
                export(1),
                export(0),
                LedgerOp::Close { owner: 0 },
                export(1),
                export(1),
            ],
        ));
    }

    #[test]
    fn operations_round_trip() {
        for tag in 0..=u8::MAX {
            for (a, b) in [(0, 0), (7, 0x85), (255, 255)] {
                let op = LedgerOp::decode(&mut Reader::new(&[tag, a, b]));
                let mut w = Writer::new();
                op.encode(&mut w);
                let again = LedgerOp::decode(&mut Reader::new(&w.finish()));
                assert_eq!(again, op);
            }
        }
    }
}
