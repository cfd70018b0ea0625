// SPDX-License-Identifier: MIT
//! The `ring_responder` and `ring_requester` targets: both ends of one
//! shared ring, over simulated shared memory, with a hostile peer that can
//! write any word of it between any two operations.
//!
//! The peer's writes can also land *inside* an operation: a
//! [`RingOp::Race`] schedules a write that happens after a given number of
//! further accesses to the shared memory ([`RacyMem`]), e.g. between the
//! load of a producer index and the copy of the slot it covers, or in the
//! middle of that copy (a torn slot). This checks the copy-then-validate
//! rule of Xen's `ring.h` under concurrent writes, deterministically.
//!
//! Every connection has two rings and each driver, front or back, is the
//! [`Requester`] on one of them and the [`Responder`] on the other, so the
//! two targets together cover the ring consumer of both drivers. They run
//! the same operations; they differ in which shared indices the targeted
//! hostile operations ([`RingOp::SetProd`], [`RingOp::AddProd`],
//! [`RingOp::SetEvent`]) overwrite: the ones the responder reads
//! (`req_prod`, `rsp_event`) or the ones the requester reads (`rsp_prod`,
//! `req_event`).
//!
//! Oracles, after every operation:
//!
//! * always: no panic; errors are only the ones a hostile peer may cause
//!   (`RingOverflow`, or `RingFull` from a push); `outstanding <= size`,
//!   `unanswered <= size`, `free_slots + outstanding == size`; a pending
//!   count never exceeds what the ring can hold; each end's counters agree
//!   with the number of its own successful pushes and pops;
//! * while no hostile operation has run: no error but `RingFull` when the
//!   ring really is full; each consumer pops exactly the slots the
//!   producer pushed and published, in order, and they decode to the
//!   messages sent; a consumer that re-armed its event index and found
//!   nothing (about to sleep) is always notified by the next publish of
//!   new entries (no lost wake-up).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper_dmabuf_common::limits::{DEFAULT_MAX_BUFFER_BYTES, MAX_RING_PAGE_ORDER, XEN_PAGE_SIZE};
use hyper_dmabuf_common::ring::{init_shared, Requester, Responder};
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::wire::{request_id, request_op, Request, Response, Slot, VERSION_2};
use hyper_dmabuf_common::Error;

use crate::input::{decode_all, Reader, Writer};
use crate::wire::{response, sample_epoch, sample_request, status_from_byte};

/// Which end the targeted hostile operations aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// Overwrite `req_prod` and `rsp_event`, read by the responder.
    Responder,
    /// Overwrite `rsp_prod` and `req_event`, read by the requester.
    Requester,
}

/// Byte offsets of the shared indices (Xen's `io/ring.h` layout).
const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// Ring geometry and the garbage the pages hold before initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Ring page order, taken modulo `MAX_RING_PAGE_ORDER + 1`.
    pub order: u8,
    /// Word every page is filled with before `init_shared`.
    pub fill: u32,
}

impl Setup {
    /// Reads a setup.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        Setup {
            order: r.u8(),
            fill: r.u32(),
        }
    }

    /// Writes a setup.
    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.order).u32(self.fill);
    }
}

/// One step of a ring run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingOp {
    /// The requester pushes a request built from `tag`.
    ReqPush {
        /// Selects the message ([`sample_request`]).
        tag: u32,
    },
    /// The requester publishes what it pushed.
    ReqPublish,
    /// The requester pops a response.
    ReqPop,
    /// The requester re-arms `rsp_event` before sleeping.
    ReqFinalCheck,
    /// The responder pops a request.
    RspPop,
    /// The responder answers its oldest unanswered request.
    RspPush {
        /// Selects the status for a request that decoded.
        status: u8,
    },
    /// The responder publishes its responses.
    RspPublish,
    /// The responder re-arms `req_event` before sleeping.
    RspFinalCheck,
    /// Hostile: the peer writes any word of the ring.
    WriteWord {
        /// Word index, modulo the window size.
        word: u16,
        /// The value written.
        value: u32,
    },
    /// Hostile: the peer sets the producer index the focused end reads.
    SetProd {
        /// The new index.
        value: u32,
    },
    /// Hostile: the peer moves that producer index (wrapping).
    AddProd {
        /// Added to the index.
        delta: u32,
    },
    /// Hostile: the peer sets the event index the focused end reads.
    SetEvent {
        /// The new index.
        value: u32,
    },
    /// Hostile: the peer writes a word of the ring while the next
    /// operations run, after `after` more word accesses by either end.
    Race {
        /// Word accesses to let pass first.
        after: u8,
        /// Word index, modulo the window size.
        word: u16,
        /// The value written.
        value: u32,
    },
}

impl RingOp {
    /// Number of operation kinds; a tag byte is taken modulo this.
    pub const KINDS: u8 = 13;

    /// Reads one operation.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        match r.u8() % Self::KINDS {
            0 => RingOp::ReqPush { tag: r.u32() },
            1 => RingOp::ReqPublish,
            2 => RingOp::ReqPop,
            3 => RingOp::ReqFinalCheck,
            4 => RingOp::RspPop,
            5 => RingOp::RspPush { status: r.u8() },
            6 => RingOp::RspPublish,
            7 => RingOp::RspFinalCheck,
            8 => RingOp::WriteWord {
                word: r.u16(),
                value: r.u32(),
            },
            9 => RingOp::SetProd { value: r.u32() },
            10 => RingOp::AddProd { delta: r.u32() },
            11 => RingOp::SetEvent { value: r.u32() },
            _ => RingOp::Race {
                after: r.u8(),
                word: r.u16(),
                value: r.u32(),
            },
        }
    }

    /// Writes one operation.
    pub fn encode(&self, w: &mut Writer) {
        match *self {
            RingOp::ReqPush { tag } => w.u8(0).u32(tag),
            RingOp::ReqPublish => w.u8(1),
            RingOp::ReqPop => w.u8(2),
            RingOp::ReqFinalCheck => w.u8(3),
            RingOp::RspPop => w.u8(4),
            RingOp::RspPush { status } => w.u8(5).u8(status),
            RingOp::RspPublish => w.u8(6),
            RingOp::RspFinalCheck => w.u8(7),
            RingOp::WriteWord { word, value } => w.u8(8).u16(word).u32(value),
            RingOp::SetProd { value } => w.u8(9).u32(value),
            RingOp::AddProd { delta } => w.u8(10).u32(delta),
            RingOp::SetEvent { value } => w.u8(11).u32(value),
            RingOp::Race { after, word, value } => w.u8(12).u8(after).u16(word).u32(value),
        };
    }

    fn hostile(&self) -> bool {
        matches!(
            self,
            RingOp::WriteWord { .. }
                | RingOp::SetProd { .. }
                | RingOp::AddProd { .. }
                | RingOp::SetEvent { .. }
                | RingOp::Race { .. }
        )
    }
}

/// Encodes a whole run: setup, then operations.
pub fn encode(setup: &Setup, ops: &[RingOp]) -> Vec<u8> {
    let mut w = Writer::new();
    setup.encode(&mut w);
    for op in ops {
        op.encode(&mut w);
    }
    w.finish()
}

/// Decodes a whole run.
pub fn decode(data: &[u8]) -> (Setup, Vec<RingOp>) {
    let mut r = Reader::new(data);
    let setup = Setup::decode(&mut r);
    (setup, decode_all(&mut r, RingOp::decode))
}

/// The `ring_responder` target.
pub fn run_responder(data: &[u8]) {
    run(data, Focus::Responder);
}

/// The `ring_requester` target.
pub fn run_requester(data: &[u8]) {
    run(data, Focus::Requester);
}

/// What an honest run must produce, for the model checks.
#[derive(Default)]
struct Model {
    /// Requests pushed and not yet popped by the responder; the first
    /// `req_published` of them are visible.
    requests: VecDeque<Slot>,
    req_published: usize,
    /// Responses pushed and not yet popped by the requester; the first
    /// `rsp_published` are visible.
    responses: VecDeque<Slot>,
    rsp_published: usize,
    /// (req_id, op) of requests popped and not yet answered.
    to_answer: VecDeque<(u32, u8)>,
    /// Request ids sent and not yet answered, in order.
    awaiting: VecDeque<u32>,
    /// A consumer re-armed and found nothing: it sleeps until notified.
    responder_sleeps: bool,
    requester_sleeps: bool,
}

/// Counters of each end's own successful operations (wrapping), checked
/// against what the end reports.
#[derive(Default)]
struct Counts {
    req_pushed: u32,
    req_popped: u32,
    rsp_popped: u32,
    rsp_pushed: u32,
}

fn allowed(err: Error, push: bool) {
    match err {
        Error::RingOverflow { .. } => {}
        Error::RingFull if push => {}
        other => panic!("unexpected ring error {other:?}"),
    }
}

/// Runs one input with the targeted hostile operations aimed at `focus`.
pub fn run(data: &[u8], focus: Focus) {
    let (setup, ops) = decode(data);
    let order = u32::from(setup.order) % (MAX_RING_PAGE_ORDER + 1);
    let words = (XEN_PAGE_SIZE << order) / 4;
    let words: Vec<AtomicU32> = (0..words).map(|_| AtomicU32::new(setup.fill)).collect();
    let racy = RacyMem::new(&words);
    let mem = &words[..];
    init_shared(mem).expect("a ring of whole pages always fits");
    let mut req = Requester::new(&racy).expect("geometry checked by init_shared");
    let mut rsp = Responder::new(&racy).expect("geometry checked by init_shared");
    assert_eq!(req.size(), rsp.size());
    let size = req.size();
    let (prod, event) = match focus {
        Focus::Responder => (REQ_PROD, RSP_EVENT),
        Focus::Requester => (RSP_PROD, REQ_EVENT),
    };

    let mut honest = true;
    let mut model = Model::default();
    let mut counts = Counts::default();
    let mut next_req_id = 0u32;
    let mut slot: Slot = [0u8; 256];

    for op in ops {
        honest &= !op.hostile();
        match op {
            RingOp::ReqPush { tag } => {
                let request = sample_request(tag, next_req_id);
                let encoded = request.encode();
                let had_room = req.free_slots() > 0;
                match req.push(&encoded) {
                    Ok(()) => {
                        assert!(had_room, "push succeeded on a full ring");
                        counts.req_pushed = counts.req_pushed.wrapping_add(1);
                        next_req_id = next_req_id.wrapping_add(1);
                        if honest {
                            model.requests.push_back(encoded);
                            model.awaiting.push_back(request.req_id);
                        }
                    }
                    Err(e) => {
                        assert!(!had_room, "push refused with {e:?} on a ring with room");
                        allowed(e, true);
                    }
                }
            }
            RingOp::ReqPublish => {
                let notify = req.publish();
                if honest {
                    let new = model.requests.len() - model.req_published;
                    if model.responder_sleeps && new > 0 {
                        assert!(notify, "lost wake-up: sleeping responder not notified");
                        model.responder_sleeps = false;
                    }
                    model.req_published = model.requests.len();
                }
            }
            RingOp::ReqPop => match req.pop(&mut slot) {
                Ok(popped) => {
                    if popped {
                        counts.req_popped = counts.req_popped.wrapping_add(1);
                    }
                    if honest {
                        check_response_pop(&mut model, popped, &slot);
                    } else if popped {
                        let _ = Response::decode(&slot);
                    }
                }
                Err(e) => {
                    assert!(!honest, "honest ring: requester pop failed with {e:?}");
                    allowed(e, false);
                }
            },
            RingOp::ReqFinalCheck => match req.final_check() {
                Ok(more) => {
                    if honest {
                        assert_eq!(more, model.rsp_published > 0, "requester final check");
                        model.requester_sleeps = !more;
                    }
                }
                Err(e) => {
                    assert!(!honest, "honest ring: requester final check: {e:?}");
                    allowed(e, false);
                }
            },
            RingOp::RspPop => match rsp.pop(&mut slot) {
                Ok(popped) => {
                    if popped {
                        counts.rsp_popped = counts.rsp_popped.wrapping_add(1);
                        model.to_answer.push_back(answer_key(&slot));
                    }
                    if honest {
                        check_request_pop(&mut model, popped, &slot);
                    }
                }
                Err(e) => {
                    assert!(!honest, "honest ring: responder pop failed with {e:?}");
                    allowed(e, false);
                }
            },
            RingOp::RspPush { status } => {
                let owed = rsp.unanswered() > 0;
                let (req_id, op_byte) = model.to_answer.front().copied().unwrap_or((0, 0));
                let epoch = sample_epoch(u32::from(status) << 8);
                let response = response(req_id, op_byte, status_from_byte(status), epoch).encode();
                match rsp.push(&response) {
                    Ok(()) => {
                        assert!(owed, "responder answered a request it never consumed");
                        counts.rsp_pushed = counts.rsp_pushed.wrapping_add(1);
                        model.to_answer.pop_front();
                        if honest {
                            model.responses.push_back(response);
                        }
                    }
                    Err(e) => {
                        assert!(!owed, "push refused with {e:?} while a request was owed");
                        allowed(e, true);
                    }
                }
            }
            RingOp::RspPublish => {
                let notify = rsp.publish();
                if honest {
                    let new = model.responses.len() - model.rsp_published;
                    if model.requester_sleeps && new > 0 {
                        assert!(notify, "lost wake-up: sleeping requester not notified");
                        model.requester_sleeps = false;
                    }
                    model.rsp_published = model.responses.len();
                }
            }
            RingOp::RspFinalCheck => match rsp.final_check() {
                Ok(more) => {
                    if honest {
                        assert_eq!(more, model.req_published > 0, "responder final check");
                        model.responder_sleeps = !more;
                    }
                }
                Err(e) => {
                    assert!(!honest, "honest ring: responder final check: {e:?}");
                    allowed(e, false);
                }
            },
            RingOp::WriteWord { word, value } => {
                mem[usize::from(word) % mem.len()].store(value, Ordering::Relaxed);
            }
            RingOp::SetProd { value } => mem[prod / 4].store(value, Ordering::Relaxed),
            RingOp::AddProd { delta } => {
                let old = mem[prod / 4].load(Ordering::Relaxed);
                mem[prod / 4].store(old.wrapping_add(delta), Ordering::Relaxed);
            }
            RingOp::SetEvent { value } => mem[event / 4].store(value, Ordering::Relaxed),
            RingOp::Race { after, word, value } => {
                racy.schedule(u32::from(after), usize::from(word) % mem.len(), value);
            }
        }
        check_invariants(&req, &rsp, size, &counts);
    }
}

/// The (req_id, op) a responder echoes for a popped slot.
fn answer_key(slot: &Slot) -> (u32, u8) {
    (request_id(slot), request_op(slot))
}

fn check_request_pop(model: &mut Model, popped: bool, slot: &Slot) {
    assert_eq!(popped, model.req_published > 0, "responder pop");
    if !popped {
        return;
    }
    model.responder_sleeps = false;
    let sent = model.requests.pop_front().expect("counted above");
    model.req_published -= 1;
    assert_eq!(slot, &sent, "responder popped another slot than was sent");
    let decoded =
        Request::decode(slot, DEFAULT_MAX_BUFFER_BYTES, VERSION_2).expect("sent request decodes");
    assert_eq!(decoded.encode(), sent, "request not canonical");
}

fn check_response_pop(model: &mut Model, popped: bool, slot: &Slot) {
    assert_eq!(popped, model.rsp_published > 0, "requester pop");
    if !popped {
        return;
    }
    model.requester_sleeps = false;
    let sent = model.responses.pop_front().expect("counted above");
    model.rsp_published -= 1;
    assert_eq!(slot, &sent, "requester popped another slot than was sent");
    let response = Response::decode(slot).expect("honest response decodes");
    let expected = model
        .awaiting
        .pop_front()
        .expect("a response answers a request");
    assert_eq!(response.req_id, expected, "responses out of order");
}

fn check_invariants(
    req: &Requester<&RacyMem<'_>>,
    rsp: &Responder<&RacyMem<'_>>,
    size: u32,
    counts: &Counts,
) {
    assert!(req.outstanding() <= size, "requester: outstanding > size");
    assert_eq!(req.free_slots() + req.outstanding(), size);
    assert_eq!(
        req.outstanding(),
        counts.req_pushed.wrapping_sub(counts.req_popped),
        "requester: outstanding disagrees with its own pushes and pops"
    );
    if let Ok(pending) = req.pending() {
        assert!(
            pending <= req.outstanding(),
            "requester: pending > outstanding"
        );
    }
    assert!(rsp.unanswered() <= size, "responder: unanswered > size");
    assert_eq!(
        rsp.unanswered(),
        counts.rsp_popped.wrapping_sub(counts.rsp_pushed),
        "responder: unanswered disagrees with its own pops and pushes"
    );
    if let Ok(pending) = rsp.pending() {
        assert!(
            u64::from(pending) + u64::from(rsp.unanswered()) <= u64::from(size),
            "responder: pending + unanswered > size"
        );
    }
}

/// Shared memory whose peer can write in the middle of an operation: a
/// scheduled write happens after a number of word accesses.
pub struct RacyMem<'a> {
    words: &'a [AtomicU32],
    /// (accesses left, word, value) of the scheduled write.
    pending: Cell<Option<(u32, usize, u32)>>,
}

impl<'a> RacyMem<'a> {
    /// Wraps `words`; nothing is scheduled.
    pub fn new(words: &'a [AtomicU32]) -> Self {
        RacyMem {
            words,
            pending: Cell::new(None),
        }
    }

    /// Writes `value` to `word` after `after` more word accesses
    /// (replacing a write still scheduled).
    pub fn schedule(&self, after: u32, word: usize, value: u32) {
        self.pending.set(Some((after, word, value)));
    }

    /// Counts one access; performs the scheduled write when it is due.
    fn tick(&self) {
        match self.pending.get() {
            Some((0, word, value)) => {
                self.words[word].store(value, Ordering::Relaxed);
                self.pending.set(None);
            }
            Some((n, word, value)) => self.pending.set(Some((n - 1, word, value))),
            None => {}
        }
    }
}

impl SharedMem for RacyMem<'_> {
    fn len(&self) -> usize {
        self.words.len() * 4
    }

    fn read_u32(&self, offset: usize) -> u32 {
        self.tick();
        self.words.read_u32(offset)
    }

    fn write_u32(&self, offset: usize, value: u32) {
        self.tick();
        self.words.write_u32(offset, value)
    }

    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.tick();
        self.words.load_acquire_u32(offset)
    }

    fn store_release_u32(&self, offset: usize, value: u32) {
        self.tick();
        self.words.store_release_u32(offset, value)
    }

    /// Word by word, so that a scheduled write can tear the copy.
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        for (i, chunk) in dst.chunks_mut(4).enumerate() {
            self.tick();
            self.words.read_bytes(offset + 4 * i, chunk);
        }
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) {
        for (i, chunk) in src.chunks(4).enumerate() {
            self.tick();
            self.words.write_bytes(offset + 4 * i, chunk);
        }
    }
}
