// SPDX-License-Identifier: MIT
//! The hostile backend's plumbing: it plays the backend of one
//! `hyper_dmabuf` device from user space, with the protocol crates' own
//! schema, ring and message code (and broken variants of their output).
//!
//! No kernel driver serves the device in this domain (the scenario unbinds
//! dom0's own backend from it), so this process writes the backend's
//! xenstore nodes, maps the frontend's two rings through
//! `/dev/xen/gntdev` and binds the frontend's event channel through
//! `/dev/xen/evtchn` (`IOCTL_EVTCHN_BIND_INTERDOMAIN`), exactly what the
//! backend driver would do (back/backend.rs).

use crate::limits::scaled;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdmabuf_agent::xendev::{EventChannel, ForeignMap, Gntdev};
use hyper_dmabuf_common::ring::{Requester, Responder, HEADER_SIZE};
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::wire::{Message, Request, Response, Slot, SLOT_SIZE};
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_common::Error as ProtoError;
use hyper_dmabuf_xenbus_proto::schema::{self, BackendConfig, FrontendRings};
use hyper_dmabuf_xenbus_proto::XenbusState;

use crate::xs::Xs;

/// How long the frontend may take to answer a state change or a request.
pub(crate) const ANSWER: Duration = Duration::from_secs(10);

/// The backend nodes this process publishes (docs/protocol.md, section 5).
pub(crate) const OFFER_NODES: [&str; 4] = [
    schema::NODE_VERSIONS,
    schema::NODE_MAX_RING_PAGE_ORDER,
    schema::NODE_MAX_BUFFER_SIZE,
    schema::NODE_FEATURE_RW,
];

/// The device whose backend we play.
#[derive(Debug, Clone)]
pub(crate) struct BackDevice {
    /// The victim (frontend) domain.
    pub(crate) front_id: u16,
    /// `/local/domain/<own>/backend/hyper_dmabuf/<front_id>/<devid>`.
    pub(crate) back: String,
    /// The frontend directory, from the toolstack's `frontend` node.
    pub(crate) front: String,
}

impl BackDevice {
    /// Finds device `devid` of domain `front_id` in our backend directory
    /// and checks that no kernel driver of ours serves it.
    pub(crate) fn find(xs: &mut Xs, own: u16, front_id: u16, devid: u32) -> Result<Self, String> {
        let back = format!(
            "/local/domain/{own}/backend/{}/{front_id}/{devid}",
            schema::DEVICE_TYPE
        );
        let front = xs
            .read(&format!("{back}/{}", schema::NODE_FRONTEND))?
            .ok_or_else(|| format!("{back} has no frontend node: is the device attached?"))?;
        let bound = format!(
            "/sys/bus/xen-backend/devices/{}-{front_id}-{devid}/driver",
            schema::DEVICE_TYPE
        );
        if std::path::Path::new(&bound).exists() {
            return Err(format!(
                "{bound} exists: a kernel backend serves the device; unbind it first \
                 (echo {}-{front_id}-{devid} > /sys/bus/xen-backend/drivers/{}/unbind)",
                schema::DEVICE_TYPE,
                schema::DEVICE_TYPE
            ));
        }
        Ok(BackDevice {
            front_id,
            back,
            front,
        })
    }

    /// `<back>/<node>`.
    pub(crate) fn back_node(&self, node: &str) -> String {
        format!("{}/{node}", self.back)
    }

    /// `<front>/<node>`.
    pub(crate) fn front_node(&self, node: &str) -> String {
        format!("{}/{node}", self.front)
    }

    /// Writes our state.
    pub(crate) fn set_state(&self, xs: &mut Xs, state: XenbusState) -> Result<(), String> {
        schema::write_state(xs.store(), &self.back, state)
            .map_err(|e| format!("our state {}: {e:?}", state.name()))
    }

    /// The frontend's state; `Unknown` when absent (the driver writes only
    /// well-formed states).
    pub(crate) fn front_state(&self, xs: &mut Xs) -> Result<XenbusState, String> {
        schema::read_state(xs.store(), &self.front)
            .map_err(|e| format!("the frontend's state: {e:?}"))
    }

    /// Waits until the frontend's state is one of `want`; returns it.
    pub(crate) fn await_front(
        &self,
        xs: &mut Xs,
        want: &[XenbusState],
    ) -> Result<XenbusState, String> {
        let path = self.front_node(schema::NODE_STATE);
        let parse = |v: Option<&str>| {
            v.and_then(|v| v.parse().ok())
                .and_then(XenbusState::from_u32)
                .unwrap_or(XenbusState::Unknown)
        };
        let value = xs
            .wait_for(&path, scaled(ANSWER), |v| want.contains(&parse(v)))
            .map_err(|e| {
                let names: Vec<&str> = want.iter().map(|s| s.name()).collect();
                format!("waiting for the frontend to be {}: {e}", names.join(" or "))
            })?;
        Ok(parse(value.as_deref()))
    }

    /// Publishes `offer`: the well-formed nodes of its configuration,
    /// then its overrides (a value written as is, or the node removed).
    pub(crate) fn publish(&self, xs: &mut Xs, offer: &Offer) -> Result<(), String> {
        schema::publish_backend(xs.store(), &self.back, &offer.config)
            .map_err(|e| format!("publishing {:?}: {e:?}", offer.config))?;
        for (node, value) in &offer.overrides {
            let path = self.back_node(node);
            match value {
                Some(v) => xs.write(&path, v)?,
                None => xs.remove(&path)?,
            }
        }
        Ok(())
    }

    /// Removes every node we published, and restores what the toolstack
    /// wrote (`frontend`, `frontend-id`, `online`) should a case have
    /// changed it.
    pub(crate) fn clear(&self, xs: &mut Xs) -> Result<(), String> {
        for node in OFFER_NODES {
            xs.remove(&self.back_node(node))?;
        }
        xs.write(&self.back_node(schema::NODE_FRONTEND), &self.front)?;
        xs.write(
            &self.back_node(schema::NODE_FRONTEND_ID),
            &self.front_id.to_string(),
        )?;
        xs.write(&self.back_node(schema::NODE_ONLINE), "1")
    }

    /// The frontend nodes that are present: after a teardown there must
    /// be none (docs/protocol.md, section 6).
    pub(crate) fn front_leftovers(&self, xs: &mut Xs) -> Result<Vec<String>, String> {
        let mut nodes = vec![
            schema::NODE_VERSION.to_string(),
            schema::NODE_RING_PAGE_ORDER.to_string(),
            schema::NODE_EVENT_CHANNEL.to_string(),
        ];
        for i in 0..schema::MAX_RING_PAGES {
            nodes.push(format!("{}{i}", schema::NODE_RING_REF));
            nodes.push(format!("{}{i}", schema::NODE_BACK_RING_REF));
        }
        let mut left = Vec::new();
        for node in nodes {
            if let Some(v) = xs.read(&self.front_node(&node))? {
                left.push(format!("{node} = {v:?}"));
            }
        }
        Ok(left)
    }
}

/// What the backend publishes: a valid configuration and, for the
/// attacks, nodes overwritten or removed after it.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    /// The configuration (also what the frontend nodes are validated
    /// against).
    pub(crate) config: BackendConfig,
    /// `(node, Some(value))` written raw, `(node, None)` removed.
    pub(crate) overrides: Vec<(&'static str, Option<String>)>,
}

impl Default for Offer {
    /// What dom0's driver offers with the toolstack's `rw=1`: rings up
    /// to 4 pages, buffers up to 1 GiB, read-write allowed.
    fn default() -> Self {
        Offer {
            config: BackendConfig {
                max_ring_page_order: 2,
                max_buffer_size: 1 << 30,
                feature_rw: true,
            },
            overrides: Vec::new(),
        }
    }
}

impl Offer {
    /// The default offer with `node` set to `value` (`None`: removed).
    pub(crate) fn with(node: &'static str, value: Option<&str>) -> Self {
        Offer {
            overrides: vec![(node, value.map(str::to_string))],
            ..Offer::default()
        }
    }
}

/// A mapped ring, as the protocol code reads it.
pub(crate) struct RingMem<'g>(Rc<ForeignMap<'g>>);

impl RingMem<'_> {
    fn words(&self) -> &[std::sync::atomic::AtomicU32] {
        self.0.mapping().atomic_words()
    }
}

impl SharedMem for RingMem<'_> {
    fn len(&self) -> usize {
        SharedMem::len(self.words())
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.words().read_u32(offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.words().write_u32(offset, value)
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.words().load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) {
        self.words().store_release_u32(offset, value)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.words().read_bytes(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.words().write_bytes(offset, src)
    }
}

/// Byte offset of `req_prod` in a ring header.
const REQ_PROD: usize = 0;
/// Byte offset of `rsp_prod` in a ring header.
const RSP_PROD: usize = 8;

/// One connection: both rings mapped, the event channel bound. Dropping
/// it unmaps the rings and closes the port, as the backend driver does
/// before it writes Closing or InitWait.
pub(crate) struct Session<'g> {
    /// What the frontend published.
    pub(crate) rings: FrontendRings,
    /// The frontend-requester ring (`ring-ref%u`): we answer there.
    answers: Responder<RingMem<'g>>,
    /// The backend-requester ring (`back-ring-ref%u`): we request there.
    requests: Requester<RingMem<'g>>,
    front_ring: Rc<ForeignMap<'g>>,
    back_ring: Rc<ForeignMap<'g>>,
    evtchn: EventChannel,
    next_req: u32,
}

impl<'g> Session<'g> {
    /// Reads and validates the frontend's nodes against `offered`, maps
    /// both rings and binds the event channel (the backend's
    /// `MapRingsAndBind`).
    pub(crate) fn open(
        xs: &mut Xs,
        gntdev: &'g Gntdev,
        dev: &BackDevice,
        offered: &BackendConfig,
    ) -> Result<Self, String> {
        let rings = schema::read_frontend_rings(xs.store(), &dev.front, offered)
            .map_err(|e| format!("the frontend's nodes: {e:?}"))?;
        let map = |refs: &[u32]| {
            gntdev
                .map_refs(dev.front_id, refs, true)
                .map(Rc::new)
                .map_err(|e| format!("mapping ring {refs:?}: {e}"))
        };
        let front_ring = map(rings.ring_refs())?;
        let back_ring = map(rings.back_ring_refs())?;
        let ring = |m: &Rc<ForeignMap<'g>>| RingMem(m.clone());
        let answers = Responder::new(ring(&front_ring)).map_err(|e| format!("ring-ref: {e:?}"))?;
        let requests =
            Requester::new(ring(&back_ring)).map_err(|e| format!("back-ring-ref: {e:?}"))?;
        let evtchn = EventChannel::connect(dev.front_id, rings.event_channel())
            .map_err(|e| format!("binding port {}: {e}", rings.event_channel()))?;
        Ok(Session {
            rings,
            answers,
            requests,
            front_ring,
            back_ring,
            evtchn,
            next_req: 0,
        })
    }

    /// Slots per ring.
    pub(crate) fn size(&self) -> u32 {
        self.requests.size()
    }

    /// Every grant reference of both rings.
    pub(crate) fn ring_refs(&self) -> Vec<u32> {
        let mut refs = self.rings.ring_refs().to_vec();
        refs.extend_from_slice(self.rings.back_ring_refs());
        refs
    }

    /// The frontend's port.
    pub(crate) fn remote_port(&self) -> u32 {
        self.rings.event_channel()
    }

    /// Kicks the frontend.
    pub(crate) fn notify(&self) -> Result<(), String> {
        self.evtchn.notify().map_err(|e| format!("notify: {e}"))
    }

    /// Waits up to `ms` for an event from the frontend.
    pub(crate) fn wait(&self, ms: u64) -> Result<bool, String> {
        match self.evtchn.wait(Duration::from_millis(ms)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(format!("evtchn: {e}")),
        }
    }

    /// A fresh request id.
    pub(crate) fn req_id(&mut self) -> u32 {
        self.next_req = self.next_req.wrapping_add(1);
        self.next_req
    }

    /// Encodes `message` as our next request.
    pub(crate) fn request(&mut self, message: Message) -> Slot {
        Request {
            req_id: self.req_id(),
            message,
        }
        .encode()
    }

    /// Moves every request the frontend published into `inbox` (after
    /// re-arming the event index, so none is missed).
    pub(crate) fn take_requests(&mut self, inbox: &mut VecDeque<Slot>) -> Result<(), String> {
        drain(&mut self.answers, inbox).map_err(|e| format!("ring-ref: {e:?}"))
    }

    /// Moves every response the frontend published into `out`.
    pub(crate) fn take_responses(&mut self, out: &mut VecDeque<Slot>) -> Result<(), String> {
        drain(&mut self.requests, out).map_err(|e| format!("back-ring-ref: {e:?}"))
    }

    /// Answers taken requests with `answers` (any bytes, in this order:
    /// not necessarily theirs), published at once, then notifies.
    pub(crate) fn answer(&mut self, answers: &[Slot]) -> Result<(), String> {
        produce(&mut self.answers, answers).map_err(|e| format!("answering: {e:?}"))?;
        self.notify()
    }

    /// Sends requests (any bytes), published at once, then notifies.
    pub(crate) fn send(&mut self, requests: &[Slot]) -> Result<(), String> {
        produce(&mut self.requests, requests).map_err(|e| format!("requesting: {e:?}"))?;
        self.notify()
    }

    /// Writes `rsp_prod` of the frontend's ring: responses it never
    /// asked for, or more than the ring holds.
    pub(crate) fn force_rsp_prod(&self, value: u32) -> Result<(), String> {
        RingMem(self.front_ring.clone()).store_release_u32(RSP_PROD, value);
        self.notify()
    }

    /// Writes `slots` as responses at indices `first`.. of the frontend's
    /// ring and publishes them together: more answers than the responder
    /// end lets one push (a duplicate, say).
    pub(crate) fn forge_responses(&mut self, first: u32, slots: &[Slot]) -> Result<(), String> {
        let ring = RingMem(self.front_ring.clone());
        let mask = self.size() - 1;
        for (i, slot) in (first..).zip(slots) {
            ring.write_bytes(HEADER_SIZE + ((i & mask) as usize) * SLOT_SIZE, slot);
        }
        self.force_rsp_prod(first.wrapping_add(slots.len() as u32))
    }

    /// Writes `req_prod` of our ring: requests past the ring, or behind
    /// what the frontend consumed.
    pub(crate) fn force_req_prod(&self, value: u32) -> Result<(), String> {
        RingMem(self.back_ring.clone()).store_release_u32(REQ_PROD, value);
        self.notify()
    }

    /// The rings themselves, kept mapped past the session (a backend that
    /// says it let go of them but did not).
    pub(crate) fn keep_rings(&self) -> [Rc<ForeignMap<'g>>; 2] {
        [self.front_ring.clone(), self.back_ring.clone()]
    }
}

/// Either end of a ring, as far as moving slots goes.
trait End {
    /// Copies the next slot out, if the peer published one.
    fn next(&mut self, slot: &mut Slot) -> Result<bool, ProtoError>;
    /// Re-arms the event index and looks once more.
    fn recheck(&mut self) -> Result<bool, ProtoError>;
    /// Copies a slot in (unpublished).
    fn put(&mut self, slot: &Slot) -> Result<(), ProtoError>;
    /// Publishes what was put.
    fn flush(&mut self);
}

/// Both ends move slots the same way, under their own names.
macro_rules! end_of_ring {
    ($end:ty) => {
        impl End for $end {
            fn next(&mut self, slot: &mut Slot) -> Result<bool, ProtoError> {
                self.pop(slot)
            }
            fn recheck(&mut self) -> Result<bool, ProtoError> {
                self.final_check()
            }
            fn put(&mut self, slot: &Slot) -> Result<(), ProtoError> {
                self.push(slot)
            }
            fn flush(&mut self) {
                self.publish();
            }
        }
    };
}

end_of_ring!(Responder<RingMem<'_>>);
end_of_ring!(Requester<RingMem<'_>>);

/// Takes every slot the peer published, until a last look after
/// re-arming the event index finds none.
fn drain(end: &mut impl End, out: &mut VecDeque<Slot>) -> Result<(), ProtoError> {
    let mut slot = [0u8; SLOT_SIZE];
    loop {
        while end.next(&mut slot)? {
            out.push_back(slot);
        }
        if !end.recheck()? {
            return Ok(());
        }
    }
}

/// Puts `slots` and publishes them together.
fn produce(end: &mut impl End, slots: &[Slot]) -> Result<(), ProtoError> {
    for s in slots {
        end.put(s)?;
    }
    end.flush();
    Ok(())
}

/// The answer `status` to the request in `slot`, echoing its id and op.
pub(crate) fn answer_to(slot: &Slot, status: Status) -> Slot {
    Response {
        req_id: hyper_dmabuf_common::wire::request_id(slot),
        op: hyper_dmabuf_common::wire::request_op(slot),
        status,
        map_epoch: None,
    }
    .encode()
}

/// Waits until `done` holds, checking it every `step` up to `limit`.
pub(crate) fn poll_until(
    limit: Duration,
    step: Duration,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<bool, String> {
    let deadline = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(step);
    }
}
