// SPDX-License-Identifier: MIT
//! The hostile frontend's plumbing: it plays the frontend of a
//! `hyper_dmabuf` device from user space, with the protocol crates' own
//! schema, ring and message code (and broken variants of their output).
//!
//! The domain runs no `hyper_dmabuf.ko`, so nothing in its kernel binds
//! the device the toolstack gave it; this process writes the frontend's
//! xenstore nodes through `/dev/xen/xenbus`, grants its ring pages with
//! `/dev/xen/gntalloc` and offers an event channel with
//! `/dev/xen/evtchn`, exactly what the frontend driver would do.

use crate::limits::scaled;
use std::fs::{File, OpenOptions};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper_dmabuf_common::ring::{self, Requester, Responder};
use hyper_dmabuf_common::wire::{self, Response, Slot, SLOT_SIZE};
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_xenbus_proto::schema::{self, FrontendLimits, FrontendRings, Negotiated};
use hyper_dmabuf_xenbus_proto::XenbusState;

use crate::ffi::{self, Evtchn, Granted};
use crate::xs::Xs;

/// How long the backend may take to answer a state change or a request.
pub(crate) const ANSWER: Duration = Duration::from_secs(10);

/// Where the device lives.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    /// Our domain id.
    pub(crate) own: u16,
    /// The backend's domain.
    pub(crate) backend_id: u16,
    /// `/local/domain/<own>/device/hyper_dmabuf/<devid>`.
    pub(crate) front: String,
    /// The backend's directory.
    pub(crate) back: String,
}

impl Device {
    /// Finds device `devid` of this domain in xenstore.
    pub(crate) fn find(xs: &mut Xs, own: u16, devid: u32) -> Result<Self, String> {
        let front = format!("/local/domain/{own}/device/{}/{devid}", schema::DEVICE_TYPE);
        let back = xs
            .read(&format!("{front}/{}", schema::NODE_BACKEND))?
            .ok_or_else(|| {
                format!("{front} has no backend: attach a device first (hdmabuf xl attach {own})")
            })?;
        let backend_id = xs
            .read(&format!("{front}/{}", schema::NODE_BACKEND_ID))?
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{front}/backend-id is missing or malformed"))?;
        Ok(Device {
            own,
            backend_id,
            front,
            back,
        })
    }

    /// `<front>/<node>`.
    pub(crate) fn front_node(&self, node: &str) -> String {
        format!("{}/{node}", self.front)
    }

    /// Writes our state.
    pub(crate) fn set_state(&self, xs: &mut Xs, state: XenbusState) -> Result<(), String> {
        schema::write_state(xs.store(), &self.front, state).map_err(|e| format!("our state: {e:?}"))
    }

    /// Waits for the backend to reach `want`.
    pub(crate) fn await_backend(&self, xs: &mut Xs, want: XenbusState) -> Result<(), String> {
        let path = format!("{}/{}", self.back, schema::NODE_STATE);
        xs.wait_for(&path, scaled(ANSWER), |v| {
            v == Some(want.as_u32().to_string().as_str())
        })
        .map(drop)
        .map_err(|e| format!("waiting for the backend to be {}: {e}", want.name()))
    }

    /// Starts a new frontend instance, as a reloaded driver would: our
    /// nodes cleared, state Initialising, and the backend (whatever it
    /// went through) back in InitWait.
    pub(crate) fn reset(&self, xs: &mut Xs) -> Result<(), String> {
        schema::clear_frontend(xs.store(), &self.front)
            .map_err(|e| format!("clearing our nodes: {e:?}"))?;
        self.set_state(xs, XenbusState::Initialising)?;
        self.await_backend(xs, XenbusState::InitWait)
    }

    /// What the backend offers, negotiated for rings of one page (eight
    /// slots: the smallest ring is the easiest to fill).
    pub(crate) fn negotiate(&self, xs: &mut Xs) -> Result<Negotiated, String> {
        self.negotiate_order(xs, 0)
    }

    /// What the backend offers, negotiated for rings of at most
    /// `2^max_order` pages.
    pub(crate) fn negotiate_order(
        &self,
        xs: &mut Xs,
        max_order: u32,
    ) -> Result<Negotiated, String> {
        let offer = schema::read_backend_config(xs.store(), &self.back)
            .map_err(|e| format!("backend nodes: {e:?}"))?;
        let limits = FrontendLimits {
            max_ring_page_order: max_order,
            max_buffer_size: u64::MAX,
        };
        schema::negotiate(&offer, &limits).map_err(|e| format!("negotiation: {e:?}"))
    }
}

/// The rings and event channel of one connection attempt, owned here and
/// granted to the backend. Dropping them ends the grants (gntalloc
/// defers pages the backend still maps) and closes the port.
pub(crate) struct Rings<'g> {
    /// The frontend-requester ring (`ring-ref0`).
    pub(crate) ours: Granted<'g>,
    /// The backend-requester ring (`back-ring-ref0`).
    pub(crate) theirs: Granted<'g>,
    /// The event channel device.
    pub(crate) evtchn: Evtchn,
    /// Our end of the event channel, unbound until the backend binds it.
    pub(crate) port: u32,
    /// Each ring is `2^order` pages.
    order: u32,
}

impl<'g> Rings<'g> {
    /// Grants two one-page rings to `dev`'s backend, initialises their
    /// headers (the backend cannot map them before it reads their
    /// references, published later) and offers it a port.
    pub(crate) fn new(gntalloc: &'g File, dev: &Device) -> Result<Self, String> {
        Self::with_order(gntalloc, dev, 0)
    }

    /// As [`Rings::new`], with rings of `2^order` pages each.
    pub(crate) fn with_order(gntalloc: &'g File, dev: &Device, order: u32) -> Result<Self, String> {
        let grant = || {
            ffi::grant_pages(gntalloc, dev.backend_id, 1 << order, true)
                .map_err(|e| format!("gntalloc: {e}"))
        };
        let ours = grant()?;
        let theirs = grant()?;
        ring::init_shared(ours.words()).map_err(|e| format!("ring: {e:?}"))?;
        ring::init_shared(theirs.words()).map_err(|e| format!("ring: {e:?}"))?;
        let evtchn = Evtchn::open().map_err(|e| format!("{}: {e}", ffi::EVTCHN_PATH))?;
        let port = evtchn
            .bind_unbound(dev.backend_id)
            .map_err(|e| format!("evtchn: {e}"))?;
        Ok(Rings {
            ours,
            theirs,
            evtchn,
            port,
            order,
        })
    }

    /// Initialises both rings' shared headers again, for a new session
    /// over the same pages (the backend has unmapped them).
    pub(crate) fn reinit(&self) -> Result<(), String> {
        ring::init_shared(self.ours.words()).map_err(|e| format!("ring: {e:?}"))?;
        ring::init_shared(self.theirs.words()).map_err(|e| format!("ring: {e:?}"))
    }

    /// The frontend nodes that describe these rings.
    pub(crate) fn nodes(&self, negotiated: &Negotiated) -> Result<FrontendRings, String> {
        if self.order > negotiated.ring_page_order {
            return Err(format!(
                "rings of order {} but the backend allows {}",
                self.order, negotiated.ring_page_order
            ));
        }
        FrontendRings::new(
            negotiated.version,
            self.order,
            self.ours.grefs(),
            self.theirs.grefs(),
            self.port,
        )
        .map_err(|e| format!("frontend nodes: {e:?}"))
    }

    /// Publishes `nodes`, switches to Initialised and waits for the
    /// backend to connect; then switches to Connected.
    pub(crate) fn connect(
        &self,
        xs: &mut Xs,
        dev: &Device,
        nodes: &FrontendRings,
    ) -> Result<Conn<'_>, String> {
        schema::publish_frontend(xs.store(), &dev.front, nodes)
            .map_err(|e| format!("publishing: {e:?}"))?;
        dev.set_state(xs, XenbusState::Initialised)?;
        dev.await_backend(xs, XenbusState::Connected)?;
        dev.set_state(xs, XenbusState::Connected)?;
        self.conn()
    }

    /// The protocol ends over these rings.
    pub(crate) fn conn(&self) -> Result<Conn<'_>, String> {
        Ok(Conn {
            requests: Requester::new(self.ours.words()).map_err(|e| format!("ring: {e:?}"))?,
            answers: Responder::new(self.theirs.words()).map_err(|e| format!("ring: {e:?}"))?,
            rings: self,
        })
    }
}

/// A connected session: our requester and responder ends.
pub(crate) struct Conn<'r> {
    requests: Requester<&'r [AtomicU32]>,
    answers: Responder<&'r [AtomicU32]>,
    rings: &'r Rings<'r>,
}

/// Byte offset of `req_prod` in a ring header.
const REQ_PROD: usize = 0;
/// Byte offset of `rsp_prod` in a ring header.
const RSP_PROD: usize = 8;

impl Conn<'_> {
    /// Slots in each ring.
    pub(crate) fn size(&self) -> u32 {
        self.requests.size()
    }

    /// Kicks the backend.
    pub(crate) fn notify(&self) -> Result<(), String> {
        self.rings
            .evtchn
            .notify(self.rings.port)
            .map_err(|e| format!("notify: {e}"))
    }

    /// Pushes a request (any bytes) and notifies.
    pub(crate) fn send(&mut self, slot: &Slot) -> Result<(), String> {
        self.requests
            .push(slot)
            .map_err(|e| format!("push: {e:?}"))?;
        self.requests.publish();
        self.notify()
    }

    /// Waits for the next response, answering whatever the backend asks
    /// meanwhile with OK.
    pub(crate) fn response(&mut self) -> Result<Slot, String> {
        let deadline = Instant::now() + scaled(ANSWER);
        let mut slot = [0u8; SLOT_SIZE];
        loop {
            self.serve()?;
            if self
                .requests
                .pop(&mut slot)
                .map_err(|e| format!("responses: {e:?}"))?
            {
                return Ok(slot);
            }
            if self
                .requests
                .final_check()
                .map_err(|e| format!("responses: {e:?}"))?
            {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no response within {} s", scaled(ANSWER).as_secs()));
            }
            self.wait(left)?;
        }
    }

    /// Sends `slot` and returns the status of its answer, checking that
    /// the answer echoes the request's id and op. The answer is read
    /// field by field: `Response::decode` refuses an op this version does
    /// not define, and an unknown op's answer must still echo it.
    pub(crate) fn ask(&mut self, slot: &Slot) -> Result<Status, String> {
        self.send(slot)?;
        let raw = self.response()?;
        let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let (req_id, op) = (wire::request_id(slot), wire::request_op(slot));
        if word(0) != req_id || raw[4] != op {
            return Err(format!(
                "response to request {req_id} op {op:#x} names request {} op {:#x}",
                word(0),
                raw[4]
            ));
        }
        Status::from_wire(word(8) as i32)
            .map_err(|e| format!("the backend answered a bad status: {e:?}"))
    }

    /// Waits for a notification from the backend, at most `left` and
    /// at most 200 ms.
    pub(crate) fn wait(&self, left: Duration) -> Result<(), String> {
        let ms = i32::try_from(left.as_millis().min(200)).unwrap_or(200);
        self.rings
            .evtchn
            .wait(ms)
            .map(drop)
            .map_err(|e| format!("evtchn: {e}"))
    }

    /// Answers every request the backend sent with OK (a well-behaved
    /// exporter's answer to MAPPED and RELEASE).
    pub(crate) fn serve(&mut self) -> Result<u32, String> {
        self.serve_noting(|_| {})
    }

    /// As [`Conn::serve`], showing each request to `note` first.
    pub(crate) fn serve_noting(&mut self, mut note: impl FnMut(&Slot)) -> Result<u32, String> {
        let mut slot = [0u8; SLOT_SIZE];
        let mut n = 0;
        while self
            .answers
            .pop(&mut slot)
            .map_err(|e| format!("requests: {e:?}"))?
        {
            note(&slot);
            let rsp = Response {
                req_id: u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]),
                op: slot[4],
                status: Status::Ok,
                map_epoch: None,
            };
            self.answers
                .push(&rsp.encode())
                .map_err(|e| format!("answers: {e:?}"))?;
            n += 1;
        }
        if n > 0 && self.answers.publish() {
            self.notify()?;
        }
        Ok(n)
    }

    /// Waits for the backend's next request and answers it with what
    /// `answer` makes of it (the attacks send wrong answers).
    pub(crate) fn answer_next(&mut self, answer: impl FnOnce(&Slot) -> Slot) -> Result<(), String> {
        let slot = self.next_request()?;
        self.reply(&answer(&slot))
    }

    /// Whether the backend has published a request we have not taken.
    pub(crate) fn request_waiting(&self) -> Result<bool, String> {
        self.answers
            .pending()
            .map(|n| n > 0)
            .map_err(|e| format!("requests: {e:?}"))
    }

    /// Pushes an answer (any bytes) and notifies.
    pub(crate) fn reply(&mut self, answer: &Slot) -> Result<(), String> {
        self.answers
            .push(answer)
            .map_err(|e| format!("answers: {e:?}"))?;
        self.answers.publish();
        self.notify()
    }

    /// Waits for the backend's next request and takes it, unanswered.
    pub(crate) fn next_request(&mut self) -> Result<Slot, String> {
        let deadline = Instant::now() + scaled(ANSWER);
        let mut slot = [0u8; SLOT_SIZE];
        loop {
            if self
                .answers
                .pop(&mut slot)
                .map_err(|e| format!("requests: {e:?}"))?
            {
                return Ok(slot);
            }
            if self
                .answers
                .final_check()
                .map_err(|e| format!("requests: {e:?}"))?
            {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the backend sent no request within {} s",
                    scaled(ANSWER).as_secs()
                ));
            }
            self.wait(left)?;
        }
    }

    /// Keeps our ring full: every slot whose response came back is filled
    /// again at once with a request from `make`, for as long as `go` says
    /// (asked before each refill); then waits for the last responses.
    /// Responses are polled for, not waited for: a handler that takes
    /// requests for as long as it finds some never runs out. Each response
    /// goes to `check`; the backend's own requests are answered OK
    /// meanwhile. Returns how many responses came.
    pub(crate) fn refill(
        &mut self,
        mut make: impl FnMut() -> Slot,
        mut check: impl FnMut(&Slot) -> Result<(), String>,
        mut go: impl FnMut() -> Result<bool, String>,
    ) -> Result<u64, String> {
        let mut slot = [0u8; SLOT_SIZE];
        let mut answered = 0u64;
        let mut last_answer = Instant::now();
        loop {
            let going = go()?;
            if going {
                while self.requests.free_slots() > 0 {
                    self.requests
                        .push(&make())
                        .map_err(|e| format!("push: {e:?}"))?;
                }
                if self.requests.publish() {
                    self.notify()?;
                }
            } else if self.requests.outstanding() == 0 {
                return Ok(answered);
            }
            let mut got = 0u64;
            while self
                .requests
                .pop(&mut slot)
                .map_err(|e| format!("responses: {e:?}"))?
            {
                check(&slot)?;
                got += 1;
            }
            self.serve()?;
            answered += got;
            if got > 0 {
                last_answer = Instant::now();
                continue;
            }
            if last_answer.elapsed() > scaled(ANSWER) {
                return Err(format!(
                    "no response within {} s ({answered} answered)",
                    scaled(ANSWER).as_secs()
                ));
            }
            std::thread::yield_now();
        }
    }

    /// Writes `req_prod` of our ring directly: what a peer that
    /// overflows the ring does.
    pub(crate) fn force_req_prod(&self, value: u32) -> Result<(), String> {
        self.rings.ours.words()[REQ_PROD / 4].store(value, Ordering::Release);
        self.notify()
    }

    /// Writes `rsp_prod` of the backend's ring directly: responses it
    /// never asked for.
    pub(crate) fn force_rsp_prod(&self, value: u32) -> Result<(), String> {
        self.rings.theirs.words()[RSP_PROD / 4].store(value, Ordering::Release);
        self.notify()
    }
}

/// Opens `/dev/xen/gntalloc`.
pub(crate) fn open_gntalloc() -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(ffi::GNTALLOC_PATH)
        .map_err(|e| format!("{}: {e}", ffi::GNTALLOC_PATH))
}
