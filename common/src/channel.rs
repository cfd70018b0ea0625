// SPDX-License-Identifier: MIT
//! The protocol logic of one connection: what each end does with every
//! message, independent of how grants are mapped or buffers stored.
//!
//! A [`Channel`] joins the two rings of a connection to one peer domain:
//! it sends our requests on our ring ([`Requester`]) and answers the
//! peer's on the peer's ring ([`Responder`]). It owns the per-buffer
//! protocol state machines ([`ExportState`], [`ImportState`]) and drives
//! them from messages; everything that touches real resources — ending a
//! grant, mapping a buffer, queueing an event for user space, waking a
//! waiting ioctl — goes through the [`Host`] trait. The kernel module
//! implements `Host` over grant tables and dma-bufs, the two-domain
//! simulation over a simulated grant table, so both run this same code.
//!
//! The life-cycle of a buffer exported by A to B:
//!
//! ```text
//!  A (exporter)                               B (importer)
//!  export ioctl: grant pages, build directory
//!  Announcing ---- EXPORT(hid, size, dir) ---> Known, event NewExport
//!  Exported   <--- Ok ------------------------
//!                                             import ioctl: map directory and
//!                                             pages in one batch each
//!  busy       <--- MAPPED(hid, epoch e) ------- Mapped (users hold the dma-buf)
//!  unexport ioctl (after delay_ms)
//!  Revoking  ----- UNEXPORT(hid) ------------> Revoked, event Unexport
//!            <---- Busy(e) (still mapped) ---- (users still hold it)
//!  AwaitingRelease(e)                          last user gone: unmap
//!            <---- RELEASE(hid, e) ----------- forgotten
//!  end foreign access, event GrantsEnded
//! ```
//!
//! If B holds no mapping when the UNEXPORT arrives it answers `Ok` and A
//! ends access at once. MAPPED and RELEASE travel on B's ring, the answer
//! to UNEXPORT on A's, so A may see them in either order; the mapping
//! epoch ([`MapEpoch`]) tells A which RELEASE ends which mapping. If B never answers, A ends access anyway when the
//! connection closes; ending access on a page the peer still maps is
//! deferred by the grant layer until the peer unmaps it (as Linux does
//! since XSA-396), so no page is ever freed under a mapping.
//!
//! The peer is untrusted: a request that does not decode is answered with
//! an error status and reported through [`Host::protocol_error`]; a
//! response that names no outstanding request, or a ring the peer
//! overflowed, is a fatal [`Error`] after which the caller closes the
//! connection.

use super::error::Error;
use super::id::HyperDmabufId;
use super::ring::{Requester, Responder, RingView};
use super::shmem::SharedMem;
use super::uapi::{Event, EventType};
use super::wire::{
    request_id, request_op, Export, ExportFlags, FenceId, FenceResult, MapEpoch, Message, Op,
    PrivData, Request, Response, Slot, SLOT_SIZE,
};
use super::xen::{DomId, Status};

/// Largest ring this code drives (16 pages of 256-byte slots).
pub const MAX_OUTSTANDING: usize = 128;

/// Requests of the peer answered per [`Channel::process`] call, so that a
/// flooding peer cannot keep the handler busy forever.
pub const PROCESS_BUDGET: u32 = 64;

/// How long a notification may be owed to the peer
/// ([`Channel::notify_owed`]), in milliseconds (a driver's timer rounds it
/// up to its tick): long enough that the importer's next steps (mmap,
/// first access) run before the exporter is woken, short enough that the
/// exporter's Mapped event stays prompt and its ring's slots come back.
pub const NOTICE_DELAY_MS: u64 = 1;

/// Whether the requester waits on the answer to a request whose operation
/// octet is `op`: an EXPORT's (its exporter's call) and an UNEXPORT's (the
/// revocation), and, to be safe, one this version does not know. The
/// answers to UPDATE, RELEASE, MAPPED and SIGNAL only free a slot.
fn answer_awaited(op: u8) -> bool {
    !matches!(
        Op::from_wire(op),
        Ok(Op::Update | Op::Release | Op::Mapped | Op::Signal)
    )
}

/// Where an export stands, as seen by its exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportPhase {
    /// EXPORT sent, no answer yet.
    Announcing,
    /// The peer accepted the export.
    Exported,
    /// UNEXPORT sent, no answer yet.
    Revoking,
    /// The peer still maps the buffer and will send the RELEASE of this
    /// epoch.
    AwaitingRelease(MapEpoch),
}

/// Protocol state of one buffer this domain exports to the channel's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportState {
    phase: ExportPhase,
    /// Latest epoch the peer said it mapped.
    mapped: Option<MapEpoch>,
    /// Latest epoch the peer said it released.
    released: Option<MapEpoch>,
    /// The size announced, which every exporter-side event reports.
    size: u64,
}

impl ExportState {
    /// The state of an export of `size` bytes about to be announced.
    pub const fn new(size: u64) -> Self {
        ExportState {
            phase: ExportPhase::Announcing,
            mapped: None,
            released: None,
            size,
        }
    }

    /// The phase.
    pub const fn phase(&self) -> ExportPhase {
        self.phase
    }

    /// The buffer's size in bytes, as announced.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// Whether the peer said it maps the buffer (QUERY's "busy"): its
    /// latest MAPPED is newer than its latest RELEASE.
    pub fn peer_maps(&self) -> bool {
        match (self.mapped, self.released) {
            (Some(mapped), Some(released)) => mapped > released,
            (mapped, _) => mapped.is_some(),
        }
    }

    /// Whether an unexport has started.
    pub const fn unexported(&self) -> bool {
        matches!(
            self.phase,
            ExportPhase::Revoking | ExportPhase::AwaitingRelease(_)
        )
    }

    /// Whether the peer has released mapping `epoch` (or a later one).
    fn released(&self, epoch: MapEpoch) -> bool {
        self.released.is_some_and(|released| released >= epoch)
    }
}

/// Protocol state of one buffer the channel's peer exported to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportState {
    /// What the exporter announced.
    pub export: Export,
    mapped: bool,
    revoked: bool,
    /// Epoch of the current (or last) mapping.
    epoch: Option<MapEpoch>,
}

impl ImportState {
    /// The state of a newly announced buffer.
    pub const fn new(export: Export) -> Self {
        ImportState {
            export,
            mapped: false,
            revoked: false,
            epoch: None,
        }
    }

    /// Whether this domain maps the buffer.
    pub const fn mapped(&self) -> bool {
        self.mapped
    }

    /// Whether the exporter revoked it (no new imports).
    pub const fn revoked(&self) -> bool {
        self.revoked
    }
}

/// What a [`Channel`] needs from its environment.
///
/// The channel calls these while the caller holds whatever lock protects
/// the connection; none of them may call back into the channel.
pub trait Host {
    /// Our export of `hid` to this peer, if it exists.
    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportState>;

    /// Ends the export of `hid`: end foreign access to its data and
    /// directory pages (deferred for any page the peer still maps), drop
    /// the export and post [`EventType::GrantsEnded`].
    fn end_export(&mut self, hid: &HyperDmabufId);

    /// The import of `hid` from this peer, if it exists.
    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportState>;

    /// Records a new import announced by the peer.
    ///
    /// # Errors
    ///
    /// The status to answer: [`Status::NoSpace`] past the host's limit on
    /// imports from one peer, [`Status::NoMemory`].
    fn add_import(&mut self, import: ImportState) -> Result<(), Status>;

    /// Forgets an import that is not mapped.
    fn remove_import(&mut self, hid: &HyperDmabufId);

    /// Queues an event for user space.
    fn post_event(&mut self, event: Event);

    /// Wakes whoever waits for the request sent with `token`.
    fn complete(&mut self, token: u64, status: Status);

    /// Reports a request from the peer that was refused (for counters and
    /// one log line).
    fn protocol_error(&mut self, error: Error);

    /// Whether the peer may attach `fence` to a frame (version 3): not
    /// one it holds already, and room for one more.
    ///
    /// # Errors
    ///
    /// The status to answer: [`Status::Exists`], [`Status::NoSpace`]; a
    /// host without fences refuses every one.
    fn admit_fence(&mut self, _fence: FenceId) -> Result<(), Status> {
        Err(Status::NotSupported)
    }

    /// Attaches the peer's `fence` to the frame of `hid` it announces:
    /// readers of the buffer wait for it until its SIGNAL.
    ///
    /// # Errors
    ///
    /// As [`Host::admit_fence`], and [`Status::NoMemory`].
    fn attach_fence(&mut self, _hid: &HyperDmabufId, _fence: FenceId) -> Result<(), Status> {
        Err(Status::NotSupported)
    }

    /// The peer's SIGNAL of `fence`, attached to a frame of `hid`: the
    /// status to answer, [`Status::NoSuchBuffer`] for a fence it did not
    /// attach to that buffer or that ended already.
    fn signal_fence(
        &mut self,
        _hid: &HyperDmabufId,
        _fence: FenceId,
        _result: FenceResult,
    ) -> Status {
        Status::NoSuchBuffer
    }
}

/// One request sent and not yet answered (opaque outside this module).
#[derive(Clone, Copy)]
pub struct Pending {
    req_id: u32,
    op: Op,
    hid: HyperDmabufId,
    token: Option<u64>,
}

/// What a [`Channel::process`] pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The peer must be sent an event-channel notification.
    pub notify: bool,
    /// Work is left (budget exhausted); call `process` again.
    pub more: bool,
    /// Messages consumed (responses and requests): zero means the
    /// notification that woke us found nothing, which a driver reports
    /// as spurious to Xen's event-storm throttling.
    pub handled: u32,
}

/// Settings of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// The protocol version of the session (`wire::VERSION_1` or
    /// `wire::VERSION_2`).
    pub version: u32,
    /// Largest buffer accepted from the peer.
    pub max_buffer_bytes: u64,
    /// Whether the peer may export read-write buffers to us.
    pub allow_rw: bool,
}

/// Where a channel keeps its outstanding requests: [`MAX_OUTSTANDING`]
/// entries, all `None` at the start. By default an array inside the
/// channel; the kernel passes a heap allocation, so that a channel is
/// small enough to move around on a kernel stack.
pub trait PendingTable: AsRef<[Option<Pending>]> + AsMut<[Option<Pending>]> {}

impl<T: AsRef<[Option<Pending>]> + AsMut<[Option<Pending>]>> PendingTable for T {}

/// The protocol logic of one connection.
///
/// # Invariants
///
/// `pending` has exactly [`MAX_OUTSTANDING`] entries. Every `Some` entry
/// is a request pushed on `requests` whose response has not been consumed,
/// stored at `req_id % MAX_OUTSTANDING`.
pub struct Channel<M, T = [Option<Pending>; MAX_OUTSTANDING]> {
    peer: DomId,
    config: ChannelConfig,
    requests: Requester<M>,
    answers: Responder<M>,
    pending: T,
    next_req_id: u32,
    /// A notification the peer is owed but was not sent yet (a MAPPED's,
    /// or answers nobody waits for): the next one sent carries it.
    notify_owed: bool,
}

impl<M: SharedMem> Channel<M> {
    /// Joins our ring (`ours`, where we request) and the peer's (`theirs`,
    /// where we answer), both initialised with
    /// [`super::ring::init_shared`].
    ///
    /// # Errors
    ///
    /// [`Error::RingTooSmall`], or [`Error::BadRingOrder`] for a ring of
    /// more than [`MAX_OUTSTANDING`] slots.
    pub fn new(peer: DomId, config: ChannelConfig, ours: M, theirs: M) -> Result<Self, Error> {
        Self::with_table(peer, config, ours, theirs, [None; MAX_OUTSTANDING])
    }
}

impl<M: SharedMem, T: PendingTable> Channel<M, T> {
    /// As [`Channel::new`], keeping outstanding requests in `table`.
    ///
    /// # Errors
    ///
    /// As [`Channel::new`]; [`Error::OutputTooSmall`] if `table` does not
    /// have exactly [`MAX_OUTSTANDING`] entries, all `None`.
    pub fn with_table(
        peer: DomId,
        config: ChannelConfig,
        ours: M,
        theirs: M,
        table: T,
    ) -> Result<Self, Error> {
        let entries = table.as_ref();
        if entries.len() != MAX_OUTSTANDING || entries.iter().any(Option::is_some) {
            return Err(Error::OutputTooSmall {
                needed: MAX_OUTSTANDING,
                got: entries.len(),
            });
        }
        let requests = Requester::new(ours)?;
        if requests.size() as usize > MAX_OUTSTANDING {
            return Err(Error::BadRingOrder(requests.size()));
        }
        Ok(Channel {
            peer,
            config,
            requests,
            answers: Responder::new(theirs)?,
            pending: table,
            next_req_id: 1,
            notify_owed: false,
        })
    }

    fn slot(&self, req_id: u32) -> Option<&Option<Pending>> {
        self.pending.as_ref().get(req_id as usize % MAX_OUTSTANDING)
    }

    fn slot_mut(&mut self, req_id: u32) -> Option<&mut Option<Pending>> {
        self.pending
            .as_mut()
            .get_mut(req_id as usize % MAX_OUTSTANDING)
    }

    /// The peer domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// The connection's settings.
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Requests sent and not answered.
    pub fn outstanding(&self) -> usize {
        self.pending.as_ref().iter().filter(|p| p.is_some()).count()
    }

    /// Slots of the ring we request on.
    pub fn ring_size(&self) -> u32 {
        self.requests.size()
    }

    /// Slots of that ring free for new requests.
    pub fn free_slots(&self) -> u32 {
        self.requests.free_slots()
    }

    /// Whether [`Channel::send`] would find a free slot and request id now
    /// (so a driver can queue notifications instead of failing them).
    pub fn can_send(&self) -> bool {
        self.requests.free_slots() > 0 && self.slot(self.next_req_id).is_some_and(Option::is_none)
    }

    /// Sends a request. `token` is handed back to [`Host::complete`] with
    /// the peer's status.
    ///
    /// Returns whether the peer must be notified now (the caller may also
    /// batch several sends and notify once).
    ///
    /// # Errors
    ///
    /// [`Error::RingFull`] when every slot is in use; wait for responses.
    pub fn send(&mut self, message: Message, token: Option<u64>) -> Result<bool, Error> {
        let req_id = self.next_req_id;
        if !self.can_send() {
            return Err(Error::RingFull);
        }
        self.requests.push(&Request { req_id, message }.encode())?;
        // INVARIANT: pushed above, stored at its index (which exists: the
        // table has MAX_OUTSTANDING entries).
        if let Some(slot) = self.slot_mut(req_id) {
            *slot = Some(Pending {
                req_id,
                op: message.op(),
                hid: *message.hid(),
                token,
            });
        }
        self.next_req_id = req_id.wrapping_add(1);
        // A notification owed from an earlier send goes with this one: the
        // peer's event index may already be behind us, so `publish` alone
        // would not ask for it again.
        Ok(self.requests.publish() | core::mem::take(&mut self.notify_owed))
    }

    /// Announces a new export (the caller created `state` with
    /// [`ExportState::new`] and keeps it where [`Host::export_mut`] finds
    /// it).
    ///
    /// # Errors
    ///
    /// As [`Channel::send`].
    pub fn announce(&mut self, export: Export, token: Option<u64>) -> Result<bool, Error> {
        self.send(Message::Export(export), token)
    }

    /// Starts the revocation of an export. Returns whether to notify. If
    /// the revocation is already under way nothing is sent and `token` is
    /// completed at once with [`Status::Ok`].
    ///
    /// # Errors
    ///
    /// As [`Channel::send`]; [`Error::BadId`] if the export is unknown.
    pub fn revoke(
        &mut self,
        host: &mut impl Host,
        hid: &HyperDmabufId,
        token: Option<u64>,
    ) -> Result<bool, Error> {
        let state = host.export_mut(hid).ok_or(Error::BadId)?;
        if state.unexported() {
            // Already under way: nothing to send, and a waiter on this
            // token must not wait for an answer that will never come.
            if let Some(token) = token {
                host.complete(token, Status::Ok);
            }
            return Ok(false);
        }
        let notify = self.send(Message::Unexport(*hid), token)?;
        if let Some(state) = host.export_mut(hid) {
            state.phase = ExportPhase::Revoking;
        }
        Ok(notify)
    }

    /// Tells the exporter that this domain now maps an imported buffer.
    /// The notification is owed, not due ([`Channel::notify_owed`]). On
    /// error nothing changed and nothing was sent.
    ///
    /// # Errors
    ///
    /// As [`Channel::send`]; [`Error::BadId`] if the import is unknown,
    /// revoked or already mapped.
    pub fn import_mapped(
        &mut self,
        host: &mut impl Host,
        hid: &HyperDmabufId,
    ) -> Result<(), Error> {
        let state = host.import_mut(hid).ok_or(Error::BadId)?;
        if state.revoked || state.mapped {
            return Err(Error::BadId);
        }
        let epoch = state.epoch.map_or(MapEpoch::FIRST, MapEpoch::next);
        // Nothing waits for a MAPPED (the exporter only records it), and
        // an event now wakes the exporter's vCPU in the middle of the
        // import: the notification is owed instead, for the next send,
        // pass or tick (docs/protocol.md, section 11.6).
        self.notify_owed |= self.send(Message::Mapped { hid: *hid, epoch }, None)?;
        if let Some(state) = host.import_mut(hid) {
            state.mapped = true;
            state.epoch = Some(epoch);
        }
        Ok(())
    }

    /// Tells the exporter that this domain unmapped an imported buffer
    /// (its last user released it), and forgets the buffer if it was
    /// revoked meanwhile. On error nothing changed and nothing was sent:
    /// retry once the ring has room.
    ///
    /// # Errors
    ///
    /// As [`Channel::send`]; [`Error::BadId`] if the import is unknown or
    /// not mapped.
    pub fn import_unmapped(
        &mut self,
        host: &mut impl Host,
        hid: &HyperDmabufId,
    ) -> Result<bool, Error> {
        let state = host.import_mut(hid).ok_or(Error::BadId)?;
        let (true, Some(epoch)) = (state.mapped, state.epoch) else {
            return Err(Error::BadId);
        };
        let notify = self.send(Message::Release { hid: *hid, epoch }, None)?;
        if let Some(state) = host.import_mut(hid) {
            state.mapped = false;
            if state.revoked {
                host.remove_import(hid);
            }
        }
        Ok(notify)
    }

    /// Diagnostics: our view of the ring we request on, of the ring we
    /// answer on, and how many of our requests await a response.
    pub fn views(&self) -> (RingView, RingView, u32) {
        (
            self.requests.view(),
            self.answers.view(),
            self.requests.outstanding(),
        )
    }

    /// Handles everything the peer sent: responses to our requests, then
    /// up to [`PROCESS_BUDGET`] of its requests, each answered.
    ///
    /// # Errors
    ///
    /// A fatal protocol violation (ring overflow, a response to nothing);
    /// the caller must close the connection.
    pub fn process(&mut self, host: &mut impl Host) -> Result<Progress, Error> {
        let mut slot: Slot = [0u8; SLOT_SIZE];
        let mut responses: u32 = 0;
        while self.requests.pop(&mut slot)? {
            self.on_response(host, &slot)?;
            responses = responses.saturating_add(1);
        }
        let mut answered = 0;
        let mut awaited = false;
        while answered < PROCESS_BUDGET && self.answers.pop(&mut slot)? {
            awaited |= answer_awaited(request_op(&slot));
            let response = self.on_request(host, &slot);
            self.answers.push(&response.encode())?;
            answered += 1;
        }
        let mut progress = Progress {
            handled: responses.saturating_add(answered),
            ..Progress::default()
        };
        // Answers nobody waits for only free the peer's slots: their
        // notification is owed, so that a stream of UPDATEs does not wake
        // the exporter's domain once per frame. An awaited answer pays the
        // debt at once, including one left by an earlier pass: the peer's
        // event index then lies in that pass's answers, so `publish` does
        // not ask again.
        if answered > 0 && self.answers.publish() {
            self.notify_owed = true;
        }
        if awaited && self.notify_owed {
            progress.notify = true;
            self.notify_owed = false;
        }
        progress.more = if answered == PROCESS_BUDGET && self.answers.pending()? > 0 {
            true
        } else {
            // About to sleep: re-arm both event indices, then look once more.
            let more_requests = self.answers.final_check()?;
            let more_responses = self.requests.final_check()?;
            more_requests || more_responses
        };
        Ok(progress)
    }

    fn on_response(&mut self, host: &mut impl Host, slot: &Slot) -> Result<(), Error> {
        let response = Response::decode(slot)?;
        let pending = match self.slot(response.req_id) {
            Some(Some(p)) if p.req_id == response.req_id && p.op as u8 == response.op => *p,
            _ => return Err(Error::UnexpectedResponse(response.req_id)),
        };
        if let Some(slot) = self.slot_mut(response.req_id) {
            *slot = None;
        }
        let status = response.status;
        match pending.op {
            Op::Export => {
                if let Some(state) = host.export_mut(&pending.hid) {
                    if status == Status::Ok {
                        if state.phase == ExportPhase::Announcing {
                            state.phase = ExportPhase::Exported;
                        }
                    } else if state.phase == ExportPhase::Announcing {
                        // The peer refused the export; it has no reason to
                        // map the pages, and if it did anyway the grant
                        // layer defers the end of access.
                        host.end_export(&pending.hid);
                    }
                }
            }
            Op::Unexport => {
                if let Some(state) = host.export_mut(&pending.hid) {
                    match response.map_epoch {
                        // Still mapped, unless that mapping's RELEASE
                        // overtook this answer.
                        Some(epoch) if status == Status::Busy && !state.released(epoch) => {
                            state.phase = ExportPhase::AwaitingRelease(epoch);
                        }
                        _ => host.end_export(&pending.hid),
                    }
                }
            }
            Op::Update | Op::Release | Op::Mapped | Op::Signal => {}
        }
        if let Some(token) = pending.token {
            host.complete(token, status);
        }
        Ok(())
    }

    fn on_request(&mut self, host: &mut impl Host, slot: &Slot) -> Response {
        let req_id = request_id(slot);
        let op = request_op(slot);
        let (status, map_epoch) =
            match Request::decode(slot, self.config.max_buffer_bytes, self.config.version) {
                Ok(request) => match request.message {
                    Message::Unexport(hid) => Self::on_unexport(host, self.peer, &hid),
                    message => (self.dispatch(host, message), None),
                },
                Err(error) => {
                    host.protocol_error(error);
                    (Status::from(error), None)
                }
            };
        Response {
            req_id,
            op,
            status,
            map_epoch,
        }
    }

    /// The importer's side of UNEXPORT: answers Ok if nothing is mapped
    /// (and forgets the buffer), Busy with the live mapping's epoch if it
    /// is.
    fn on_unexport(
        host: &mut impl Host,
        peer: DomId,
        hid: &HyperDmabufId,
    ) -> (Status, Option<MapEpoch>) {
        let Some(state) = host.import_mut(hid) else {
            return (Status::NoSuchBuffer, None);
        };
        let first_time = !state.revoked;
        state.revoked = true;
        let export = state.export;
        let live = if state.mapped { state.epoch } else { None };
        if live.is_none() {
            host.remove_import(hid);
        }
        if first_time {
            host.post_event(Event::about_import(
                EventType::Unexport,
                peer,
                &export,
                PrivData::EMPTY,
            ));
        }
        match live {
            Some(epoch) => (Status::Busy, Some(epoch)),
            None => (Status::Ok, None),
        }
    }

    fn dispatch(&mut self, host: &mut impl Host, message: Message) -> Status {
        let peer = self.peer;
        match message {
            Message::Export(export) => {
                if export.flags.contains(ExportFlags::WRITABLE) && !self.config.allow_rw {
                    return Status::PermissionDenied;
                }
                if host.import_mut(&export.hid).is_some() {
                    return Status::Exists;
                }
                if let Some(Err(status)) = export.fence.map(|f| host.admit_fence(f)) {
                    return status;
                }
                if let Err(status) = host.add_import(ImportState::new(export)) {
                    return status;
                }
                if let Some(Err(status)) = export.fence.map(|f| host.attach_fence(&export.hid, f)) {
                    host.remove_import(&export.hid);
                    return status;
                }
                host.post_event(Event::about_import(
                    EventType::NewExport,
                    peer,
                    &export,
                    export.priv_data,
                ));
                Status::Ok
            }
            Message::Update {
                hid,
                priv_data,
                fence,
            } => {
                if !host.import_mut(&hid).is_some_and(|state| !state.revoked) {
                    return Status::NoSuchBuffer;
                }
                // The fence before the frame: no reader hears of a frame
                // that is not fenced as its exporter asked.
                if let Some(Err(status)) = fence.map(|f| host.attach_fence(&hid, f)) {
                    return status;
                }
                let Some(state) = host.import_mut(&hid) else {
                    return Status::NoSuchBuffer;
                };
                state.export.priv_data = priv_data;
                let export = state.export;
                host.post_event(Event::about_import(
                    EventType::Update,
                    peer,
                    &export,
                    priv_data,
                ));
                Status::Ok
            }
            Message::Signal { hid, fence, result } => host.signal_fence(&hid, fence, result),
            // Handled by `on_unexport`, which also answers an epoch.
            Message::Unexport(hid) => Self::on_unexport(host, peer, &hid).0,
            Message::Mapped { hid, epoch } => match host.export_mut(&hid) {
                Some(state) => {
                    state.mapped = state.mapped.max(Some(epoch));
                    let size = state.size();
                    host.post_event(Event::about_export(EventType::Mapped, peer, &hid, size));
                    Status::Ok
                }
                None => Status::NoSuchBuffer,
            },
            Message::Release { hid, epoch } => match host.export_mut(&hid) {
                Some(state) => {
                    state.released = state.released.max(Some(epoch));
                    let done = matches!(state.phase, ExportPhase::AwaitingRelease(awaited) if epoch >= awaited);
                    let size = state.size();
                    host.post_event(Event::about_export(EventType::Released, peer, &hid, size));
                    if done {
                        host.end_export(&hid);
                    }
                    Status::Ok
                }
                None => Status::NoSuchBuffer,
            },
        }
    }

    /// The connection is gone (peer closed or died): fails every waiting
    /// request with [`Status::NoSuchBuffer`]. The caller then ends every
    /// export to this peer and revokes every import from it.
    pub fn disconnect(&mut self, host: &mut impl Host) {
        for entry in self.pending.as_mut().iter_mut() {
            if let Some(pending) = entry.take() {
                if let Some(token) = pending.token {
                    host.complete(token, Status::NoSuchBuffer);
                }
            }
        }
    }

    /// Whether a notification is owed to the peer (after a MAPPED, or a
    /// pass that answered only requests nobody waits on): the caller sends
    /// it within [`NOTICE_DELAY_MS`] unless a send or pass carries it
    /// first.
    pub fn notify_owed(&self) -> bool {
        self.notify_owed
    }

    /// Takes the notification owed to the peer, if any: true when the
    /// caller must notify now.
    pub fn take_notify_owed(&mut self) -> bool {
        core::mem::take(&mut self.notify_owed)
    }
}
