// SPDX-License-Identifier: MIT
//! A shared ring with the layout and the rules of Xen's `io/ring.h`.
//!
//! A ring lives in `2^order` shared pages: a 64-byte header
//! (`req_prod`, `req_event`, `rsp_prod`, `rsp_event`, padding) followed by
//! a power-of-two number of [`SLOT_SIZE`]-byte slots, each holding one
//! request or, once answered, its response. The **requester** (ring.h's
//! "front" ring) produces requests and consumes responses; the
//! **responder** ("back" ring) consumes requests and produces responses.
//!
//! Ownership of the shared words: only the requester writes `req_prod` and
//! `rsp_event`; only the responder writes `rsp_prod` and `req_event`. Each
//! end keeps its own private indices and never trusts a shared word it
//! does not own beyond the checks below:
//!
//! * a producer index the peer moved further than the ring can hold is
//!   reported as [`Error::RingOverflow`] (ring.h's
//!   `RING_REQUEST_PROD_OVERFLOW`), and so is a response the requester
//!   never asked for; the caller then closes the connection;
//! * slots are copied out into a local [`Slot`] before anything looks at
//!   them, and are decoded from that copy (no double fetch).
//!
//! Notification hold-off follows ring.h exactly: a producer notifies only
//! if the consumer's event index lies in the range it just published, and
//! a consumer about to sleep re-arms its event index then checks once more
//! ([`Requester::final_check`], [`Responder::final_check`]).
//!
//! Indices are free-running `u32`s compared with wrapping arithmetic.

use super::error::Error;
use super::shmem::SharedMem;
use super::wire::{Slot, SLOT_SIZE};

/// Size of the shared header before the first slot.
pub const HEADER_SIZE: usize = 64;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// Number of slots in a ring of `len` bytes: the largest power of two that
/// fits after the header (ring.h's `__RING_SIZE`), or 0 if none does.
pub const fn slots_for_len(len: usize) -> u32 {
    if len < HEADER_SIZE + SLOT_SIZE {
        return 0;
    }
    let fit = (len - HEADER_SIZE) / SLOT_SIZE;
    let fit = if fit > u32::MAX as usize {
        u32::MAX
    } else {
        fit as u32
    };
    1 << (31 - fit.leading_zeros())
}

/// Initialises the shared header of a new ring (ring.h's
/// `SHARED_RING_INIT`): producers at 0, event indices at 1. Done once by
/// the end that allocated the pages, before granting them.
///
/// # Errors
///
/// [`Error::RingTooSmall`] if not even one slot fits.
pub fn init_shared<M: SharedMem + ?Sized>(mem: &M) -> Result<(), Error> {
    if slots_for_len(mem.len()) == 0 {
        return Err(Error::RingTooSmall);
    }
    mem.write_bytes(0, &[0u8; HEADER_SIZE]);
    mem.write_u32(REQ_EVENT, 1);
    mem.write_u32(RSP_EVENT, 1);
    Ok(())
}

/// Checks a ring window and returns its slot count.
fn geometry<M: SharedMem>(mem: &M) -> Result<u32, Error> {
    match slots_for_len(mem.len()) {
        0 => Err(Error::RingTooSmall),
        n => Ok(n),
    }
}

/// Byte offset of the slot for free-running index `idx`.
///
/// # Panics
///
/// Never: `size` is a power of two with `HEADER_SIZE + size * SLOT_SIZE`
/// bytes in the window (checked by [`geometry`]), and the masked index is
/// below `size`.
fn slot_offset(size: u32, idx: u32) -> usize {
    HEADER_SIZE + (idx & (size - 1)) as usize * SLOT_SIZE
}

/// One end's view of a ring, for diagnostics: the four shared words as it
/// reads them now and its own private indices. Comparing the views of
/// both ends tells a lost notification (a producer ahead of the consumer
/// with an event index inside the published range) from a ring nobody
/// wrote to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingView {
    /// Slots in the ring.
    pub size: u32,
    /// Shared `req_prod`.
    pub req_prod: u32,
    /// Shared `req_event`.
    pub req_event: u32,
    /// Shared `rsp_prod`.
    pub rsp_prod: u32,
    /// Shared `rsp_event`.
    pub rsp_event: u32,
    /// What this end produced (requests or responses), published or not.
    pub prod_pvt: u32,
    /// What this end consumed (responses or requests).
    pub cons: u32,
}

impl RingView {
    fn read(mem: &impl SharedMem, size: u32, prod_pvt: u32, cons: u32) -> Self {
        RingView {
            size,
            req_prod: mem.read_u32(REQ_PROD),
            req_event: mem.read_u32(REQ_EVENT),
            rsp_prod: mem.read_u32(RSP_PROD),
            rsp_event: mem.read_u32(RSP_EVENT),
            prod_pvt,
            cons,
        }
    }
}

impl core::fmt::Display for RingView {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "size={} req_prod={} req_event={} rsp_prod={} rsp_event={} prod_pvt={} cons={}",
            self.size,
            self.req_prod,
            self.req_event,
            self.rsp_prod,
            self.rsp_event,
            self.prod_pvt,
            self.cons
        )
    }
}

/// The requesting end of a ring (ring.h's front ring).
///
/// # Invariants
///
/// `size` is a power of two and `size` slots fit in `mem`;
/// `req_prod_pvt - rsp_cons <= size` (wrapping).
pub struct Requester<M> {
    mem: M,
    size: u32,
    req_prod_pvt: u32,
    req_prod_published: u32,
    rsp_cons: u32,
}

impl<M: SharedMem> Requester<M> {
    /// Takes the requesting end of a ring whose header was initialised
    /// with [`init_shared`].
    ///
    /// # Errors
    ///
    /// [`Error::RingTooSmall`].
    pub fn new(mem: M) -> Result<Self, Error> {
        let size = geometry(&mem)?;
        Ok(Requester {
            mem,
            size,
            req_prod_pvt: 0,
            req_prod_published: 0,
            rsp_cons: 0,
        })
    }

    /// Slots in the ring.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Requests sent (pushed) whose responses have not been consumed.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Slots free for new requests.
    pub fn free_slots(&self) -> u32 {
        self.size - self.outstanding()
    }

    /// Copies a request into the next free slot. It is not visible to the
    /// peer until [`Requester::publish`].
    ///
    /// # Errors
    ///
    /// [`Error::RingFull`] if every slot holds an outstanding request.
    pub fn push(&mut self, request: &Slot) -> Result<(), Error> {
        if self.free_slots() == 0 {
            return Err(Error::RingFull);
        }
        self.mem
            .write_bytes(slot_offset(self.size, self.req_prod_pvt), request);
        // INVARIANT: a slot was free, so outstanding stays <= size.
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes pushed requests and says whether the peer must be notified
    /// (ring.h's `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn publish(&mut self) -> bool {
        let old = self.req_prod_published;
        let new = self.req_prod_pvt;
        // Release: the slots written by `push` are visible before the new
        // producer index (ring.h's wmb()).
        self.mem.store_release_u32(REQ_PROD, new);
        self.req_prod_published = new;
        // The producer store must be visible before we read the peer's
        // event index, or both ends could decide not to notify (mb()).
        self.mem.full_barrier();
        let event = self.mem.read_u32(REQ_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// This end's view of the ring (diagnostics).
    pub fn view(&self) -> RingView {
        RingView::read(&self.mem, self.size, self.req_prod_pvt, self.rsp_cons)
    }

    /// Responses waiting to be consumed.
    ///
    /// # Errors
    ///
    /// [`Error::RingOverflow`] if the peer claims more responses than
    /// requests are outstanding.
    pub fn pending(&self) -> Result<u32, Error> {
        // Acquire: slot contents are read only after the producer index
        // that covers them (ring.h's rmb()).
        let rsp_prod = self.mem.load_acquire_u32(RSP_PROD);
        let pending = rsp_prod.wrapping_sub(self.rsp_cons);
        if pending > self.outstanding() {
            return Err(Error::RingOverflow {
                pending,
                size: self.size,
            });
        }
        Ok(pending)
    }

    /// Copies the next response out, if there is one.
    ///
    /// # Errors
    ///
    /// As [`Requester::pending`].
    pub fn pop(&mut self, response: &mut Slot) -> Result<bool, Error> {
        if self.pending()? == 0 {
            return Ok(false);
        }
        self.mem
            .read_bytes(slot_offset(self.size, self.rsp_cons), response);
        // INVARIANT: a response was pending, so rsp_cons stays at or below
        // req_prod_pvt.
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(true)
    }

    /// Before waiting for an event: asks to be notified of the next
    /// response and checks once more for one that raced with the request
    /// (ring.h's `RING_FINAL_CHECK_FOR_RESPONSES`). Returns whether
    /// responses are pending.
    ///
    /// # Errors
    ///
    /// As [`Requester::pending`].
    pub fn final_check(&mut self) -> Result<bool, Error> {
        if self.pending()? > 0 {
            return Ok(true);
        }
        self.mem.write_u32(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        // The event index must be visible before we look at the producer
        // again, or a response published in between would go unnoticed.
        self.mem.full_barrier();
        Ok(self.pending()? > 0)
    }
}

/// The responding end of a ring (ring.h's back ring).
///
/// # Invariants
///
/// `size` is a power of two and `size` slots fit in `mem`;
/// `req_cons - rsp_prod_pvt <= size` (wrapping).
pub struct Responder<M> {
    mem: M,
    size: u32,
    rsp_prod_pvt: u32,
    rsp_prod_published: u32,
    req_cons: u32,
}

impl<M: SharedMem> Responder<M> {
    /// Takes the responding end of a ring whose header was initialised
    /// with [`init_shared`].
    ///
    /// # Errors
    ///
    /// [`Error::RingTooSmall`].
    pub fn new(mem: M) -> Result<Self, Error> {
        let size = geometry(&mem)?;
        Ok(Responder {
            mem,
            size,
            rsp_prod_pvt: 0,
            rsp_prod_published: 0,
            req_cons: 0,
        })
    }

    /// Slots in the ring.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// This end's view of the ring (diagnostics).
    pub fn view(&self) -> RingView {
        RingView::read(&self.mem, self.size, self.rsp_prod_pvt, self.req_cons)
    }

    /// Requests consumed but not yet answered.
    pub fn unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Requests waiting to be consumed.
    ///
    /// # Errors
    ///
    /// [`Error::RingOverflow`] if the peer moved `req_prod` past what the
    /// ring can hold: an honest requester never has more than `size`
    /// requests beyond the responses we produced.
    pub fn pending(&self) -> Result<u32, Error> {
        // Acquire: pairs with the requester's release of `req_prod`.
        let req_prod = self.mem.load_acquire_u32(REQ_PROD);
        let in_flight = req_prod.wrapping_sub(self.rsp_prod_pvt);
        if in_flight > self.size {
            return Err(Error::RingOverflow {
                pending: in_flight,
                size: self.size,
            });
        }
        // An honest requester only moves req_prod forward, so it is never
        // behind what we already consumed; a peer that moved it backwards
        // is treated like one that overflowed.
        in_flight
            .checked_sub(self.unanswered())
            .ok_or(Error::RingOverflow {
                pending: in_flight,
                size: self.size,
            })
    }

    /// Copies the next request out, if there is one.
    ///
    /// # Errors
    ///
    /// As [`Responder::pending`].
    pub fn pop(&mut self, request: &mut Slot) -> Result<bool, Error> {
        if self.pending()? == 0 {
            return Ok(false);
        }
        self.mem
            .read_bytes(slot_offset(self.size, self.req_cons), request);
        // INVARIANT: pending() > 0 bounds req_cons - rsp_prod_pvt by size.
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(true)
    }

    /// Writes the response to the oldest unanswered request into its slot.
    /// It is not visible to the peer until [`Responder::publish`].
    ///
    /// # Errors
    ///
    /// [`Error::RingFull`] if no consumed request awaits an answer.
    pub fn push(&mut self, response: &Slot) -> Result<(), Error> {
        if self.unanswered() == 0 {
            return Err(Error::RingFull);
        }
        self.mem
            .write_bytes(slot_offset(self.size, self.rsp_prod_pvt), response);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes pushed responses and says whether the peer must be
    /// notified (ring.h's `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn publish(&mut self) -> bool {
        let old = self.rsp_prod_published;
        let new = self.rsp_prod_pvt;
        // Release: response slots before the producer index.
        self.mem.store_release_u32(RSP_PROD, new);
        self.rsp_prod_published = new;
        // Producer visible before reading the peer's event index.
        self.mem.full_barrier();
        let event = self.mem.read_u32(RSP_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Before waiting for an event: asks to be notified of the next request
    /// and checks once more (ring.h's `RING_FINAL_CHECK_FOR_REQUESTS`).
    /// Returns whether requests are pending.
    ///
    /// # Errors
    ///
    /// As [`Responder::pending`].
    pub fn final_check(&mut self) -> Result<bool, Error> {
        if self.pending()? > 0 {
            return Ok(true);
        }
        self.mem.write_u32(REQ_EVENT, self.req_cons.wrapping_add(1));
        // Event index visible before the producer is read again.
        self.mem.full_barrier();
        Ok(self.pending()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn ring_mem(pages: usize) -> Vec<AtomicU32> {
        let mem: Vec<AtomicU32> = (0..pages * 1024)
            .map(|_| AtomicU32::new(0xdead_beef))
            .collect();
        init_shared(&mem[..]).unwrap();
        mem
    }

    #[test]
    fn views_show_both_ends() {
        let mem = ring_mem(1);
        let mut req = Requester::new(&mem[..]).unwrap();
        let mut rsp = Responder::new(&mem[..]).unwrap();
        req.push(&slot(1)).unwrap();
        req.push(&slot(2)).unwrap();
        assert!(req.publish());
        let mut got = [0u8; SLOT_SIZE];
        assert!(rsp.pop(&mut got).unwrap());
        let (r, a) = (req.view(), rsp.view());
        assert_eq!((r.req_prod, r.prod_pvt, r.cons), (2, 2, 0));
        assert_eq!((a.req_prod, a.prod_pvt, a.cons), (2, 0, 1));
        assert_eq!(r.size, req.size());
        assert_eq!(
            a.to_string(),
            format!(
                "size={} req_prod=2 req_event=1 rsp_prod=0 rsp_event=1 prod_pvt=0 cons=1",
                a.size
            )
        );
    }

    fn slot(tag: u32) -> Slot {
        let mut slot = [0u8; SLOT_SIZE];
        slot[..4].copy_from_slice(&tag.to_le_bytes());
        slot[SLOT_SIZE - 1] = tag as u8;
        slot
    }

    #[test]
    fn geometry_matches_ring_h() {
        assert_eq!(slots_for_len(4096), 8);
        assert_eq!(slots_for_len(4 * 4096), 32);
        assert_eq!(slots_for_len(16 * 4096), 128);
        assert_eq!(slots_for_len(HEADER_SIZE + SLOT_SIZE), 1);
        assert_eq!(slots_for_len(HEADER_SIZE + SLOT_SIZE - 1), 0);
        let tiny: [AtomicU32; 4] = Default::default();
        assert!(matches!(
            Requester::new(&tiny[..]),
            Err(Error::RingTooSmall)
        ));
    }

    #[test]
    fn requests_and_responses_flow_with_wrapping_indices() {
        let mem = ring_mem(1);
        let mut req = Requester::new(&mem[..]).unwrap();
        let mut rsp = Responder::new(&mem[..]).unwrap();
        // Start near u32::MAX to exercise wrap-around of every index.
        let start = u32::MAX - 20;
        req.req_prod_pvt = start;
        req.req_prod_published = start;
        req.rsp_cons = start;
        rsp.req_cons = start;
        rsp.rsp_prod_pvt = start;
        rsp.rsp_prod_published = start;
        mem[0].store(start, core::sync::atomic::Ordering::Relaxed);
        mem[2].store(start, core::sync::atomic::Ordering::Relaxed);
        let mut out = [0u8; SLOT_SIZE];
        for round in 0..10u32 {
            for i in 0..req.size() {
                req.push(&slot(round * 100 + i)).unwrap();
            }
            assert_eq!(req.push(&slot(0)), Err(Error::RingFull));
            req.publish();
            for i in 0..rsp.size() {
                assert!(rsp.pop(&mut out).unwrap());
                assert_eq!(out, slot(round * 100 + i));
                rsp.push(&slot(round * 100 + i + 50)).unwrap();
            }
            assert!(!rsp.pop(&mut out).unwrap());
            rsp.publish();
            for i in 0..req.size() {
                assert!(req.pop(&mut out).unwrap());
                assert_eq!(out, slot(round * 100 + i + 50));
            }
            assert!(!req.pop(&mut out).unwrap());
        }
    }

    #[test]
    fn notification_hold_off() {
        let mem = ring_mem(1);
        let mut req = Requester::new(&mem[..]).unwrap();
        let mut rsp = Responder::new(&mem[..]).unwrap();
        let mut out = [0u8; SLOT_SIZE];
        // req_event starts at 1: the first request notifies.
        req.push(&slot(1)).unwrap();
        assert!(req.publish());
        // The responder has not re-armed: a second request does not notify.
        req.push(&slot(2)).unwrap();
        assert!(!req.publish());
        while rsp.pop(&mut out).unwrap() {
            rsp.push(&out).unwrap();
        }
        assert!(rsp.publish(), "rsp_event starts at 1");
        // Responder re-arms, finds nothing, will sleep: the next request notifies.
        assert!(!rsp.final_check().unwrap());
        req.push(&slot(3)).unwrap();
        assert!(req.publish());
        // A request that races with re-arming is found by the final check.
        assert!(rsp.final_check().unwrap());
    }

    #[test]
    fn overflowing_peer_is_detected() {
        let mem = ring_mem(1);
        let rsp = Responder::new(&mem[..]).unwrap();
        mem[0].store(9, core::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            rsp.pending(),
            Err(Error::RingOverflow {
                pending: 9,
                size: 8
            })
        );
        // A producer index moved backwards is an overflow too.
        mem[0].store(u32::MAX, core::sync::atomic::Ordering::Relaxed);
        assert!(matches!(rsp.pending(), Err(Error::RingOverflow { .. })));

        let req = Requester::new(&mem[..]).unwrap();
        mem[2].store(1, core::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            req.pending(),
            Err(Error::RingOverflow {
                pending: 1,
                size: 8
            })
        );
    }

    #[test]
    fn producer_moved_backwards_is_detected() {
        let mem = ring_mem(1);
        let mut rsp = Responder::new(&mem[..]).unwrap();
        let mut out = [0u8; SLOT_SIZE];
        mem[0].store(3, core::sync::atomic::Ordering::Relaxed);
        for _ in 0..3 {
            assert!(rsp.pop(&mut out).unwrap());
        }
        mem[0].store(1, core::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            rsp.pending(),
            Err(Error::RingOverflow {
                pending: 1,
                size: 8
            })
        );
    }

    #[test]
    fn responder_cannot_answer_what_it_did_not_consume() {
        let mem = ring_mem(1);
        let mut rsp = Responder::new(&mem[..]).unwrap();
        assert_eq!(rsp.push(&slot(1)), Err(Error::RingFull));
    }

    proptest! {
        /// A hostile requester writes arbitrary producer indices and slot
        /// contents between our operations: the responder never panics,
        /// never consumes more than the ring holds, and never has more
        /// unanswered requests than slots.
        #[test]
        fn hostile_requester(ops in proptest::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 0..200), order in 0usize..3) {
            let mem = ring_mem(1 << order);
            let mut rsp = Responder::new(&mem[..]).unwrap();
            let mut out = [0u8; SLOT_SIZE];
            for (kind, a, b) in ops {
                match kind % 5 {
                    0 => mem[0].store(a, core::sync::atomic::Ordering::Relaxed),
                    1 => { let words = mem.len() as u32; mem[(a % words) as usize].store(b, core::sync::atomic::Ordering::Relaxed) }
                    2 => { let _ = rsp.pop(&mut out); }
                    3 => { let _ = rsp.push(&out); let _ = rsp.publish(); }
                    _ => { let _ = rsp.final_check(); }
                }
                prop_assert!(rsp.unanswered() <= rsp.size());
            }
        }

        /// The same for a hostile responder against our requester.
        #[test]
        fn hostile_responder(ops in proptest::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 0..200)) {
            let mem = ring_mem(1);
            let mut req = Requester::new(&mem[..]).unwrap();
            let mut out = [0u8; SLOT_SIZE];
            for (kind, a, b) in ops {
                match kind % 5 {
                    0 => mem[2].store(a, core::sync::atomic::Ordering::Relaxed),
                    1 => { let words = mem.len() as u32; mem[(a % words) as usize].store(b, core::sync::atomic::Ordering::Relaxed) }
                    2 => { let _ = req.push(&slot(a)); let _ = req.publish(); }
                    3 => { let _ = req.pop(&mut out); }
                    _ => { let _ = req.final_check(); }
                }
                prop_assert!(req.outstanding() <= req.size());
            }
        }
    }
}
