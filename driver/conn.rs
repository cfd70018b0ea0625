// SPDX-License-Identifier: GPL-2.0

//! One connection to a peer domain: the two rings and the event channel
//! of a connected XenBus device, the protocol of `common::channel` over
//! them, and the buffers shared over it in both directions.
//!
//! All state sits behind one mutex. The IRQ thread, the ioctls and the
//! XenBus callbacks take it for short, non-blocking steps; mapping grants,
//! waiting for answers and releasing dma-bufs happen outside it. Side
//! effects that need other locks (events for readers, ending grants) are
//! collected while locked and carried out after unlocking.

use kernel::alloc::flags::{GFP_KERNEL, GFP_NOWAIT};
use kernel::alloc::Flags;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::str::{CStr, CString};
use kernel::sync::{new_condvar, new_mutex, Arc, CondVar, CondVarTimeoutResult, Mutex};
use kernel::time::msecs_to_jiffies;

use super::common::channel::{Channel, ChannelConfig, Pending, MAX_OUTSTANDING, NOTICE_DELAY_MS};
use super::common::fence::{fence_timeout_from_param, FenceEnd, InFence, OutFence};
use super::common::id::HyperDmabufId;
use super::common::ledger::{
    self, Claim, FileRights, Frame, Gauge, ImportRecord, ImportRefusal, ImportStep, Ledger,
    MappedError, Released, SendError, Sink, Tick, Unexporting, RETRY_MS,
};
use super::common::limits::max_imports_from_param;
use super::common::uapi::{Event, EventType};
use super::common::wire::{Export, ExportFlags, FenceId, FenceResult, PrivData, VERSION_3};
use super::common::xen::{DomId, Status};
use super::common::Error as ProtoError;
use crate::context::Context;
use crate::ffi::device::SeqFile;
use crate::ffi::dmabuf::DmabufRef;
use crate::ffi::fence::{cancel_watches, FenceRef, FenceWatch, PeerFence, SignallingSection};
use crate::ffi::xenbus::{Irq, SharedRing, XenbusDev};
use crate::ffi::{self, errno};
use crate::files::Addressed;
use crate::grants::{ExportEntry, ExportGrants, RetiredList};
use crate::peerlog::Level;
use crate::stats;
use crate::tree::Tree;

/// The live transport of a connection. Field order is drop order: the
/// IRQ goes (waiting for a running handler) before the rings.
pub(crate) struct Link {
    irq: Irq<Conn>,
    channel: Channel<SharedRing, PendingBox>,
    dev: XenbusDev,
    broken: bool,
}

impl Link {
    /// A transport over `ours` (where we request) and `theirs` (where the
    /// peer requests), signalled through `irq`.
    pub(crate) fn new(
        dev: XenbusDev,
        config: ChannelConfig,
        ours: SharedRing,
        theirs: SharedRing,
        irq: Irq<Conn>,
    ) -> Result<Self> {
        let peer = DomId::new(u32::from(dev.otherend_id())).map_err(|_| EINVAL)?;
        let table = PendingBox(KVec::from_elem(None, MAX_OUTSTANDING, GFP_KERNEL)?);
        let channel = Channel::with_table(peer, config, ours, theirs, table).map_err(|_| EINVAL)?;
        Ok(Link {
            irq,
            channel,
            dev,
            broken: false,
        })
    }

    /// Has the connection's notice timer pay the notification the channel
    /// owes the peer, if it owes one (docs/protocol.md, section 8).
    fn owe_notice(&self) {
        if self.channel.notify_owed() {
            self.irq.notice_later(NOTICE_DELAY_MS as u32);
        }
    }
}

/// The channel's table of outstanding requests, on the heap: inline it is
/// several kilobytes, too big to move around on a 16 KiB kernel stack.
pub(crate) struct PendingBox(KVec<Option<Pending>>);

impl AsRef<[Option<Pending>]> for PendingBox {
    fn as_ref(&self) -> &[Option<Pending>] {
        &self.0
    }
}

impl AsMut<[Option<Pending>]> for PendingBox {
    fn as_mut(&mut self) -> &mut [Option<Pending>] {
        &mut self.0
    }
}

/// A buffer a peer announced to us, as the importer keeps it: a live
/// import's handle is its dma-buf's identity.
pub(crate) type ImportEntry = ImportRecord<usize>;

/// The ledger of a connection, over the kernel's trees; the peer's fences
/// are local dma-fences.
type ConnLedger = Ledger<
    Tree<ExportEntry>,
    Tree<ImportEntry>,
    Tree<u64>,
    Tree<InFence<PeerFence>>,
    Tree<OutFence>,
>;

/// How memory is allocated while `Conn::inner` is held: never by waiting
/// for reclaim. The paths that signal the peer's fences take that lock
/// (the SIGNAL's pass, the timeout's tick), and reclaim may wait for one
/// of those fences (a GPU driver's shrinker): a sleeping allocation under
/// the lock could wait for itself. Lockdep checks it
/// (`SignallingSection`). Failing instead refuses the request (ENOMEM),
/// loses an event (counted), or retries outside the lock.
pub(crate) const UNDER_LOCK: Flags = GFP_NOWAIT;

/// How the event work and the timed work allocate after the lock, where
/// a fence of the peer's may still wait on them (a delivery's queue):
/// never by waiting for reclaim either. Without memory a delivery's
/// events are posted at once, without waiting for its fences.
const IN_WORKER: Flags = GFP_NOWAIT;

/// Everything behind the connection's lock.
pub(crate) struct ConnInner {
    link: Option<Link>,
    config: ChannelConfig,
    ledger: ConnLedger,
    /// Requests someone waits for: `None` until answered.
    results: RBTree<u64, Option<Status>>,
}

/// Work to do once the lock is dropped.
#[derive(Default)]
pub(crate) struct Effects {
    events: KVec<Addressed>,
    retired: RetiredList,
    /// New fences of the peer's, for the live dma-buf of their import.
    fences_new: KVec<(HyperDmabufId, FenceRef)>,
    /// Fences of the peer's that ended, to signal.
    fences_ended: KVec<(PeerFence, FenceEnd)>,
    wake: bool,
}

impl Effects {
    fn addressed(&mut self, addressed: Addressed) {
        if self.events.push(addressed, UNDER_LOCK).is_err() {
            stats::EVENTS_LOST.inc();
        }
    }
}

/// Events that wait for fences to reach a live dma-buf first, in the
/// order their passes made them.
struct Delivery {
    fences: KVec<(HyperDmabufId, FenceRef)>,
    events: KVec<Addressed>,
}

/// The deliveries of a connection not yet made.
#[derive(Default)]
pub(crate) struct Deliveries {
    queue: KVec<Delivery>,
    /// Someone is delivering the head of the queue, outside the lock.
    busy: bool,
}

/// A connection to one peer.
#[pin_data]
pub(crate) struct Conn {
    /// Registry key.
    pub(crate) id: u64,
    /// The peer domain.
    pub(crate) peer: DomId,
    /// For log lines: our XenBus directory.
    name: CString,
    #[pin]
    inner: Mutex<ConnInner>,
    #[pin]
    answered: CondVar,
    /// Events that wait behind fences to add (`Conn::deliver`).
    #[pin]
    deliveries: Mutex<Deliveries>,
}

/// Where the ledger's decisions take effect: the driver's counters, log
/// lines and readers, the waiters of this connection.
struct ConnSink<'a> {
    ctx: &'a Context,
    /// The connection's registry id.
    conn: u64,
    peer: DomId,
    name: &'a CStr,
    results: &'a mut RBTree<u64, Option<Status>>,
    fx: &'a mut Effects,
}

impl Sink<KBox<ExportGrants>, PeerFence> for ConnSink<'_> {
    fn fence_new(&mut self, _hid: &HyperDmabufId) -> Option<PeerFence> {
        // Room for the note `fence_attached` makes: without it the frame
        // is refused, as a reader of a live dma-buf must not miss it.
        self.fx.fences_new.reserve(1, UNDER_LOCK).ok()?;
        let fence = PeerFence::new(self.peer.get())?;
        stats::FENCES_IN.inc();
        Some(fence)
    }

    fn fence_attached(&mut self, hid: &HyperDmabufId, fence: &PeerFence) {
        // Room reserved by `fence_new`.
        let _ = self
            .fx
            .fences_new
            .push((*hid, fence.reference()), UNDER_LOCK);
    }

    fn fence_end(&mut self, fence: PeerFence, end: FenceEnd) {
        stats::FENCES_IN.dec();
        if end == FenceEnd::TimedOut {
            stats::FENCES_TIMED_OUT.inc();
        }
        // Signalled once the lock is dropped (their waiters' callbacks
        // run then); without memory for the list, at once.
        if self.fx.fences_ended.reserve(1, UNDER_LOCK).is_ok() {
            let _ = self.fx.fences_ended.push((fence, end), UNDER_LOCK);
        } else {
            fence.end(end.error());
        }
    }

    fn now_ms(&self) -> u64 {
        ffi::now_ms()
    }

    fn retire(&mut self, grants: KBox<ExportGrants>) {
        // Once the lock is dropped: ending grants unpins dma-bufs (their
        // reservation locks) and takes the drain's and the files' locks.
        self.fx.retired.push(grants);
    }

    fn event(&mut self, event: Event, owner: Option<u64>) {
        self.fx.addressed(Addressed { event, owner });
    }

    fn complete(&mut self, token: u64, status: Status) {
        if let Some(slot) = self.results.get_mut(&token) {
            *slot = Some(status);
            self.fx.wake = true;
        }
    }

    fn protocol_error(&mut self, error: ProtoError) {
        stats::PROTOCOL_ERRORS.inc();
        self.ctx.peer_log(
            self.peer,
            Level::Warn,
            format_args!(
                "{}: refused a request from dom{}: {}",
                self.name,
                self.peer.get(),
                error
            ),
        );
    }

    fn announced(&mut self, export: &Export) {
        self.ctx.announced.add(&export.hid, self.conn);
        // The peer decides how often this happens: within its budget.
        if ffi::params::log_buffers() {
            self.ctx.peer_log(
                self.peer,
                Level::Info,
                format_args!(
                    "{}: dom{} announced buffer {} ({} bytes)",
                    self.name,
                    self.peer.get(),
                    export.hid,
                    export.size
                ),
            );
        }
    }

    fn forgotten(&mut self, hid: &HyperDmabufId) {
        self.ctx.announced.remove(hid);
    }

    fn gauge(&mut self, gauge: Gauge, up: bool) {
        let counter = match gauge {
            Gauge::Exports => &stats::EXPORTS,
            Gauge::Imports => &stats::IMPORTS,
        };
        if up {
            counter.inc();
        } else {
            counter.dec();
        }
    }

    fn sent(&mut self, sent: bool) {
        if sent {
            stats::MESSAGES.inc();
        } else {
            stats::RING_FULL.inc();
        }
    }

    fn unexporting(&mut self, hid: &HyperDmabufId) {
        ffi::log_buffer(format_args!(
            "{}: unexporting {} from dom{}",
            self.name,
            hid,
            self.peer.get()
        ));
    }
}

/// What one pass over a connection's rings found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Nothing: the event that woke us was spurious.
    Idle,
    /// Work done; none left.
    Done,
    /// The budget is spent and work is left: run another pass.
    More,
}

/// What an import ioctl does next (returned once per ioctl, by value:
/// boxing the announcement would allocate for nothing).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Import {
    /// The buffer is mapped and its dma-buf alive: a new reference, its
    /// size, and whether it is read-write.
    Reuse(DmabufRef, u64, bool),
    /// Map it: the announcement and the directory size limit.
    Map(Export, u64),
}

/// The errno of a ledger's refusal to send.
fn send_errno(e: SendError) -> Error {
    match e {
        SendError::NoMemory => ENOMEM,
        SendError::RingFull => EAGAIN,
        SendError::NotConnected => errno::enotconn(),
    }
}

impl Conn {
    /// A connection to `peer` that is not connected yet.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the connection cannot be allocated.
    pub(crate) fn new(id: u64, peer: DomId, name: CString) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Conn {
                id,
                peer,
                name,
                inner <- new_mutex!(ConnInner {
                    link: None,
                    config: ChannelConfig { version: 0, max_buffer_bytes: 0, allow_rw: false },
                    ledger: Ledger::new(Tree::new(), Tree::new(), Tree::new(), Tree::new())
                        .with_max_imports(max_imports_from_param(ffi::params::max_imports()))
                        .with_fence_timeout(fence_timeout_from_param(
                            ffi::params::fence_timeout_ms(),
                        )),
                    results: RBTree::new(),
                }, "Conn::inner"),
                answered <- new_condvar!("Conn::answered"),
                deliveries <- new_mutex!(Deliveries::default(), "Conn::deliveries"),
            }),
            GFP_KERNEL,
        )
    }

    /// Runs `f` on the locked state (the live link's channel if any, the
    /// ledger, a sink for the effects), then carries out the effects.
    fn locked<R>(
        &self,
        ctx: &Context,
        f: impl FnOnce(&mut ConnInnerParts<'_>, &mut ConnSink<'_>) -> R,
    ) -> R {
        let (result, fx) = self.locked_raw(ctx, f);
        self.finish(ctx, fx);
        result
    }

    /// [`Conn::locked`] for the paths that end the peer's fences (a pass
    /// over the rings, the timed work): lockdep's fence-signalling section
    /// runs from before the lock to the last signal.
    fn locked_signalling<R>(
        &self,
        ctx: &Context,
        f: impl FnOnce(&mut ConnInnerParts<'_>, &mut ConnSink<'_>) -> R,
    ) -> R {
        let section = SignallingSection::begin();
        let (result, mut fx) = self.locked_raw(ctx, f);
        end_fences(&mut fx);
        drop(section);
        self.finish(ctx, fx);
        result
    }

    fn locked_raw<R>(
        &self,
        ctx: &Context,
        f: impl FnOnce(&mut ConnInnerParts<'_>, &mut ConnSink<'_>) -> R,
    ) -> (R, Effects) {
        let mut fx = Effects::default();
        let result = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
            let mut sink = ConnSink {
                ctx,
                conn: self.id,
                peer: self.peer,
                name: &self.name,
                results: &mut inner.results,
                fx: &mut fx,
            };
            let mut parts = ConnInnerParts {
                link: &mut inner.link,
                config: &mut inner.config,
                ledger: &mut inner.ledger,
            };
            f(&mut parts, &mut sink)
        };
        (result, fx)
    }

    fn finish(&self, ctx: &Context, mut fx: Effects) {
        // The peer's fences that ended first: nothing below may wait for
        // them.
        end_fences(&mut fx);
        // An export's GrantsEnded follows the pass's events about it (its
        // Released), in the same delivery.
        let mut events = core::mem::take(&mut fx.events);
        for grants in core::mem::take(&mut fx.retired).drain() {
            if let Some(ended) = ctx.retire_quietly(grants) {
                if events.push(ended, IN_WORKER).is_err() {
                    stats::EVENTS_LOST.inc();
                }
            }
        }
        if fx.wake {
            self.answered.notify_all();
        }
        self.deliver(ctx, fx.fences_new, events);
    }

    /// Posts `events`, once `fences` are on the live dma-buf of their
    /// import (a reader woken by a frame's event finds its fence there),
    /// and after every delivery queued before. The reservation object's
    /// lock is only tried: its holder may be waiting for a fence of ours
    /// that this connection's next pass signals. What cannot be added now
    /// waits, with the events behind it, for the timed work to try again.
    fn deliver(
        &self,
        ctx: &Context,
        fences: KVec<(HyperDmabufId, FenceRef)>,
        events: KVec<Addressed>,
    ) {
        {
            let mut d = self.deliveries.lock();
            if fences.is_empty() && d.queue.is_empty() && !d.busy {
                drop(d);
                ctx.post(&events);
                return;
            }
            if d.queue.reserve(1, IN_WORKER).is_err() {
                // Without memory to wait: the fences are tried now, and
                // the events go at once unless earlier ones still wait
                // (then they are lost, counted, rather than overtake).
                let post_now = d.queue.is_empty() && !d.busy;
                drop(d);
                let missed = self.add_fences(fences);
                stats::FENCES_UNATTACHED.add(missed.len() as i64);
                if post_now {
                    ctx.post(&events);
                } else {
                    stats::EVENTS_LOST.add(events.len() as i64);
                }
                return;
            }
            let _ = d.queue.push(Delivery { fences, events }, IN_WORKER);
            if d.busy {
                // The one delivering takes this one in its turn.
                return;
            }
            d.busy = true;
        }
        self.drain_deliveries(ctx);
    }

    /// Delivers the queue in order while each delivery's fences can be
    /// added; whoever set `busy` calls it.
    fn drain_deliveries(&self, ctx: &Context) {
        loop {
            let batch = {
                let mut d = self.deliveries.lock();
                if d.queue.is_empty() {
                    d.busy = false;
                    return;
                }
                core::mem::take(&mut d.queue)
            };
            let mut left = KVec::new();
            let mut stuck = false;
            for mut delivery in batch {
                if !stuck {
                    let waiting = self.add_fences(delivery.fences);
                    if waiting.is_empty() {
                        ctx.post(&delivery.events);
                        continue;
                    }
                    delivery.fences = waiting;
                    stuck = true;
                }
                keep(&mut left, delivery);
            }
            if stuck {
                // What came meanwhile goes behind what is left.
                let mut d = self.deliveries.lock();
                for later in core::mem::take(&mut d.queue) {
                    keep(&mut left, later);
                }
                d.queue = left;
                d.busy = false;
                drop(d);
                ffi::tick_schedule(1);
                return;
            }
        }
    }

    /// Adds each fence to the live dma-buf of its import, if it has one;
    /// returns those whose reservation object was busy.
    fn add_fences(
        &self,
        fences: KVec<(HyperDmabufId, FenceRef)>,
    ) -> KVec<(HyperDmabufId, FenceRef)> {
        let mut waiting = KVec::new();
        for (hid, fence) in fences {
            // Signalled already (the pass that made it may have ended it,
            // the session's end ends them all): nobody need wait for it.
            if fence.signalled() {
                continue;
            }
            // Not live: a new dma-buf of it starts with the fence
            // (`Conn::import_live`).
            let Some(buf) = self.live_dmabuf(&hid) else {
                continue;
            };
            match buf.try_add_fence(&fence) {
                Ok(()) => {}
                Err(e) if e == EBUSY => {
                    if waiting.push((hid, fence), IN_WORKER).is_err() {
                        stats::FENCES_UNATTACHED.inc();
                    }
                }
                Err(_) => stats::FENCES_UNATTACHED.inc(),
            }
        }
        waiting
    }

    /// The timed work's turn at deliveries that waited for a busy
    /// reservation object. Returns when to try again, if some still wait.
    fn retry_deliveries(&self, ctx: &Context, now: u64) -> Option<u64> {
        {
            let mut d = self.deliveries.lock();
            if d.busy || d.queue.is_empty() {
                return None;
            }
            d.busy = true;
        }
        self.drain_deliveries(ctx);
        let d = self.deliveries.lock();
        (!d.queue.is_empty()).then_some(now + 1)
    }

    /// The live dma-buf of import `hid`, referenced, if it has one.
    fn live_dmabuf(&self, hid: &HyperDmabufId) -> Option<DmabufRef> {
        let inner = self.inner.lock();
        let Claim::Live { handle, .. } = inner.ledger.import(hid)?.claim() else {
            return None;
        };
        // SAFETY: a live import's identity is cleared under this lock by
        // its dma-buf's release before the dma-buf's memory goes, so it
        // names a live dma-buf (as in `import_begin`).
        unsafe { DmabufRef::try_get(*handle) }
    }

    /// Our XenBus directory, which names the connection in log lines.
    pub(crate) fn name(&self) -> &CStr {
        &self.name
    }

    /// Writes the state of both rings as this end sees it, plus what waits
    /// on them (the debugfs `rings` file): enough to tell a lost
    /// notification from a peer that stopped answering.
    pub(crate) fn show_rings(&self, m: &SeqFile) {
        // Read under the lock, written out after it (formatting allocates:
        // `UNDER_LOCK`).
        let state = {
            let inner = self.inner.lock();
            inner.link.as_ref().map(|link| {
                let (ours, theirs, outstanding) = link.channel.views();
                let mut exports = 0usize;
                inner.ledger.for_each(|_, _| exports += 1, |_| {});
                let waiters = inner.results.iter().count();
                let unsent = inner.ledger.releases_unsent();
                let imports = inner.ledger.imports_held();
                (
                    link.broken,
                    ours,
                    theirs,
                    outstanding,
                    waiters,
                    unsent,
                    exports,
                    imports,
                )
            })
        };
        let line = match state {
            None => CString::try_from_fmt(kernel::fmt!(
                "{}: dom{} not connected\n",
                self.name(),
                self.peer.get()
            )),
            Some((broken, ours, theirs, outstanding, waiters, unsent, exports, imports)) => {
                CString::try_from_fmt(kernel::fmt!(
                    "{}: dom{}{} outstanding={} waiters={} unsent={} exports={} imports={}\n  \
                     we request: {}\n  we answer:  {}\n",
                    self.name(),
                    self.peer.get(),
                    if broken { " broken" } else { "" },
                    outstanding,
                    waiters,
                    unsent,
                    exports,
                    imports,
                    ours,
                    theirs
                ))
            }
        };
        if let Ok(line) = line {
            m.puts(&line);
        }
    }

    /// The connection's notice timer: sends the notification owed to the
    /// peer, if a send or pass has not carried it meanwhile.
    pub(crate) fn pay_notice(&self) {
        let mut inner = self.inner.lock();
        if let Some(link) = inner.link.as_mut().filter(|l| !l.broken) {
            if link.channel.take_notify_owed() {
                link.irq.notify();
            }
        }
    }

    /// Runs the event's work item as if the peer had signalled.
    fn kick(&self) {
        if let Some(link) = &self.inner.lock().link {
            link.irq.kick();
        }
    }

    /// Whether the rings are up.
    pub(crate) fn is_connected(&self) -> bool {
        self.inner.lock().link.is_some()
    }

    /// The connection's settings, if connected.
    pub(crate) fn config(&self) -> Option<ChannelConfig> {
        let inner = self.inner.lock();
        inner.link.as_ref().map(|_| inner.config)
    }

    /// Starts using `link`.
    pub(crate) fn attach(&self, ctx: &Context, link: Link, config: ChannelConfig) {
        self.locked(ctx, |parts, sink| {
            *parts.config = config;
            *parts.link = Some(link);
            sink.event(Event::about_peer(EventType::PeerConnected, self.peer), None);
        });
        stats::CONNECTIONS.inc();
        ctx.peer_log(
            self.peer,
            Level::Info,
            format_args!(
                "{}: connected to dom{} (buffers up to {} bytes{})",
                self.name(),
                self.peer.get(),
                config.max_buffer_bytes,
                if config.allow_rw {
                    ", read-write allowed"
                } else {
                    ""
                }
            ),
        );
        // Requests may have arrived before we looked; the event's work
        // item takes what one pass leaves.
        if self.process(ctx) == Pass::More {
            self.kick();
        }
    }

    /// Stops using the rings ([`Ledger::detach`]). Returns the transport
    /// for the caller to drop outside any lock.
    pub(crate) fn detach(&self, ctx: &Context) -> Option<Link> {
        let link = self.locked_signalling(ctx, |parts, sink| {
            let mut link = parts.link.take()?;
            parts.ledger.detach(&mut link.channel, sink);
            sink.fx.wake = true;
            Some(link)
        });
        // Our fences are the session's: the peer hears of none any more.
        stats::FENCES_OUT.add(-i64::from(cancel_watches(self.id)));
        if link.is_some() {
            stats::CONNECTIONS.dec();
            ctx.peer_log(
                self.peer,
                Level::Info,
                format_args!("{}: disconnected from dom{}", self.name(), self.peer.get()),
            );
        }
        link
    }

    /// Handles what the peer sent: one pass of at most
    /// `PROCESS_BUDGET` requests under the lock (the event's work item
    /// runs it again while there is more, letting other work in between).
    pub(crate) fn process(&self, ctx: &Context) -> Pass {
        let mut close = None;
        let pass = self.locked_signalling(ctx, |parts, sink| {
            let Some(link) = parts.link.as_mut().filter(|l| !l.broken) else {
                return Pass::Idle;
            };
            let pass = match link.channel.process(&mut parts.ledger.view(sink)) {
                Ok(progress) => {
                    if progress.notify {
                        link.irq.notify();
                    } else {
                        link.owe_notice();
                    }
                    if progress.more {
                        Pass::More
                    } else if progress.handled > 0 {
                        Pass::Done
                    } else {
                        Pass::Idle
                    }
                }
                Err(e) => {
                    stats::RING_ERRORS.inc();
                    ctx.peer_log(
                        self.peer,
                        Level::Warn,
                        format_args!(
                            "{}: dom{} broke the ring ({}); closing the device",
                            self.name(),
                            self.peer.get(),
                            e
                        ),
                    );
                    link.broken = true;
                    close = Some(link.dev);
                    return Pass::Done;
                }
            };
            // Answers made room: first the UNEXPORTs that are due (a
            // stream of frames must not hold a revocation back), the
            // RELEASEs that found the ring full, then the frames queued.
            let now = ffi::now_ms();
            let ledger = &mut *parts.ledger;
            let revoked = ledger.unexports_blocked()
                && ledger.send_due_unexports(&mut link.channel, sink, now).0;
            let released = ledger.flush_releases(&mut link.channel, sink);
            if ledger.flush_updates(&mut link.channel, sink, now) || released || revoked {
                link.irq.notify();
            }
            // The peer's fences end by the timed work if no SIGNAL comes.
            if let Some(due) = ledger.fence_deadline() {
                let ms = due.saturating_sub(now).clamp(1, u64::from(u32::MAX));
                ffi::tick_schedule(u32::try_from(ms).unwrap_or(u32::MAX));
            }
            pass
        });
        if let Some(dev) = close {
            // The XenBus machines see Closing and tear the session down.
            dev.switch_state(xenbus_closing());
        }
        pass
    }

    /// Announces a new export and registers `token` for its answer.
    /// On failure the grants are retired (the peer may map them already).
    ///
    /// # Errors
    ///
    /// `ENOTCONN` if the peer is not connected or its ring is broken,
    /// `ENOMEM` if the answer's slot cannot be allocated, `EAGAIN` if the
    /// ring is full.
    pub(crate) fn announce(
        &self,
        ctx: &Context,
        entry: ExportEntry,
        token: u64,
        fence: Option<FenceWatch>,
    ) -> Result {
        // The answer's slot, allocated before the lock (`UNDER_LOCK`).
        let waiter = RBTreeNodeReservation::new(GFP_KERNEL);
        self.locked(ctx, |parts, sink| {
            let link = parts.link.as_mut().filter(|l| !l.broken);
            let connected = link.is_some();
            let (Some(link), Ok(waiter)) = (link, waiter) else {
                sink.retire(entry.grants);
                return Err(if connected { ENOMEM } else { errno::enotconn() });
            };
            sink.results.insert(waiter.into_node(token, None));
            let fenced = fence.is_some();
            match parts
                .ledger
                .announce(&mut link.channel, sink, entry, token, fenced)
            {
                Ok(sent) => {
                    if sent.notify {
                        link.irq.notify();
                    }
                    self.watch(fence, sent.fence);
                    Ok(())
                }
                Err(e) => {
                    sink.results.remove(&token);
                    Err(send_errno(e))
                }
            }
        })
    }

    /// Waits up to `ms` for the answer to `token`.
    ///
    /// # Errors
    ///
    /// `EINVAL` if `token` has no registered answer, `ENOTCONN` if the
    /// connection went away before the answer came, `ETIMEDOUT` after `ms`,
    /// `EINTR` if a signal woke the waiter.
    pub(crate) fn wait(&self, token: u64, ms: u32) -> Result<Status> {
        let mut guard = self.inner.lock();
        let mut left = msecs_to_jiffies(ms);
        let outcome = loop {
            match guard.results.get(&token) {
                Some(Some(status)) => break Ok(*status),
                Some(None) => {}
                None => break Err(EINVAL),
            }
            if guard.link.is_none() {
                break Err(errno::enotconn());
            }
            match self.answered.wait_interruptible_timeout(&mut guard, left) {
                CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
                CondVarTimeoutResult::Timeout => break Err(errno::etimedout()),
                CondVarTimeoutResult::Signal { .. } => break Err(EINTR),
            }
        };
        guard.results.remove(&token);
        outcome
    }

    /// Our live export of the local dma-buf `identity`, if any.
    pub(crate) fn export_of_identity(
        &self,
        ctx: &Context,
        identity: usize,
    ) -> Option<HyperDmabufId> {
        self.locked(ctx, |parts, _sink| {
            parts.ledger.export_of_identity(identity)
        })
    }

    /// A new frame in our export `hid` ([`Ledger::update`]): its UPDATE
    /// is on the ring, or queued behind earlier ones until the peer's
    /// answers make room. Never waits for the peer.
    ///
    /// # Errors
    ///
    /// The refusal's errno ([`ledger::UpdateRefusal::errno`]).
    pub(crate) fn update(
        &self,
        ctx: &Context,
        hid: &HyperDmabufId,
        file: FileRights,
        flags: Option<ExportFlags>,
        priv_data: PrivData,
    ) -> Result {
        // The frame waits for the buffer's writers, if the peer can be told
        // (version 3) and the buffer is this file's to update. Looked up
        // outside the lock: gathering them may wait for memory.
        let fence = match self.exported_dmabuf(hid, file) {
            Some(buf) => FenceWatch::pending(&buf)?,
            None => None,
        };
        let queued = self.locked(ctx, |parts, sink| {
            let link = parts.link.as_mut().filter(|l| !l.broken);
            let (channel, irq) = match link {
                Some(l) => (Some(&mut l.channel), Some(&l.irq)),
                None => (None, None),
            };
            let frame = Frame {
                priv_data,
                fenced: fence.is_some(),
            };
            let sent = parts
                .ledger
                .update(channel, sink, hid, file, flags, frame, ffi::now_ms())
                .map_err(|why| Error::from_errno(-why.errno()))?;
            self.watch(fence, sent.fence);
            if let (true, Some(irq)) = (sent.notify, irq) {
                irq.notify();
            }
            Ok::<bool, Error>(parts.ledger.updates_queued() > 0)
        })?;
        if queued {
            // The peer's answers flush the queue; the timed work is the
            // safety net should none come for a while.
            ffi::tick_schedule(RETRY_MS as u32);
        }
        Ok(())
    }

    /// A reference to the dma-buf of our export `hid`, if the session can
    /// carry fences (version 3) and `file` may manage the export (the
    /// ledger checks it again, and says why not).
    fn exported_dmabuf(&self, hid: &HyperDmabufId, file: FileRights) -> Option<DmabufRef> {
        let inner = self.inner.lock();
        if inner.link.as_ref()?.channel.config().version < VERSION_3 {
            return None;
        }
        let export = inner.ledger.export(hid)?;
        if !super::common::uapi::may_manage_export(export.owner, file.file, file.admin) {
            return None;
        }
        // SAFETY: the export's grants hold its dma-buf pinned while the
        // record exists, and the record cannot go while we hold this lock.
        unsafe { DmabufRef::try_get(export.identity) }
    }

    /// Arms `watch` for our fence `id` if the ledger gave the frame one;
    /// else the frame went without a fence (a session below version 3)
    /// and the watch is dropped.
    fn watch(&self, watch: Option<FenceWatch>, id: Option<FenceId>) {
        if let (Some(watch), Some(id)) = (watch, id) {
            stats::FENCES_OUT.inc();
            watch.arm(self.id, id.get());
        }
    }

    /// Our fence `id` signalled (`error`: its negative errno, or 0): the
    /// peer is sent SIGNAL if it holds the fence.
    pub(crate) fn fence_signalled(&self, ctx: &Context, id: u64, error: i32) {
        let Ok(id) = FenceId::new(id) else {
            return;
        };
        let result = if error == 0 {
            FenceResult::Signalled
        } else {
            FenceResult::Failed
        };
        let unsent = self.locked(ctx, |parts, sink| {
            let link = parts.link.as_mut().filter(|l| !l.broken);
            let (channel, irq) = match link {
                Some(l) => (Some(&mut l.channel), Some(&l.irq)),
                None => (None, None),
            };
            if parts.ledger.fence_signalled(channel, sink, id, result) {
                if let Some(irq) = irq {
                    irq.notify();
                }
            }
            parts.ledger.signals_unsent() > 0
        });
        if unsent {
            ffi::tick_schedule(RETRY_MS as u32);
        }
    }

    /// Starts the unexport of `hid` now (`delay_ms == 0`) or later.
    ///
    /// # Errors
    ///
    /// `ENOENT` if we export no such buffer to this peer.
    pub(crate) fn unexport(&self, ctx: &Context, hid: &HyperDmabufId, delay_ms: u32) -> Result {
        let now = ffi::now_ms();
        if delay_ms > 0 {
            let due = now + u64::from(delay_ms);
            let found = self.locked(ctx, |parts, _sink| parts.ledger.schedule_unexport(hid, due));
            if !found {
                return Err(ENOENT);
            }
            ffi::tick_schedule(delay_ms);
            return Ok(());
        }
        // Now: by the buffer's number, without the timed work's walk,
        // unless the ring is full.
        let done = self.locked(ctx, |parts, sink| {
            let link = parts.link.as_mut().filter(|l| !l.broken);
            let (channel, irq) = match link {
                Some(l) => (Some(&mut l.channel), Some(&l.irq)),
                None => (None, None),
            };
            let done = parts.ledger.unexport_now(channel, sink, hid, now);
            if let (Some(Unexporting::Sent { notify: true }), Some(irq)) = (done, irq) {
                irq.notify();
            }
            done
        });
        match done {
            None => Err(ENOENT),
            Some(Unexporting::Sent { .. }) => Ok(()),
            Some(Unexporting::Due) => {
                self.tick_now(ctx);
                Ok(())
            }
        }
    }

    /// Unexports, now, every buffer the file `owner` exported.
    pub(crate) fn unexport_owned_by(&self, ctx: &Context, owner: u64) {
        let now = ffi::now_ms();
        self.locked(ctx, |parts, _sink| {
            parts.ledger.unexport_owned_by(owner, now)
        });
        self.tick_now(ctx);
    }

    /// Runs [`Conn::tick`] now and has the driver's timed work run it
    /// again when it asks: an UNEXPORT that found the ring full is sent
    /// by that later tick (answers free the ring, but handling them does
    /// not send what is due).
    fn tick_now(&self, ctx: &Context) {
        let now = ffi::now_ms();
        if let Some(due) = self.tick(ctx, now) {
            let ms = due.saturating_sub(now).clamp(1, u64::from(u32::MAX));
            ffi::tick_schedule(u32::try_from(ms).unwrap_or(u32::MAX));
        }
    }

    /// Timed work ([`Ledger::tick`]). Returns when it wants to run next,
    /// if ever.
    pub(crate) fn tick(&self, ctx: &Context, now: u64) -> Option<u64> {
        let next = self.locked_signalling(ctx, |parts, sink| {
            let link = parts.link.as_mut().filter(|l| !l.broken);
            let (channel, irq) = match link {
                Some(l) => (Some(&mut l.channel), Some(&l.irq)),
                None => (None, None),
            };
            let Tick { notify, next } = parts.ledger.tick(channel, sink, now);
            if let (true, Some(irq)) = (notify, irq) {
                irq.notify();
            }
            next
        });
        match (next, self.retry_deliveries(ctx, now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// First step of an import: reuse a live mapping or claim the buffer
    /// for mapping ([`Ledger::import_begin`]).
    ///
    /// # Errors
    ///
    /// The ledger's refusal as its errno (`ENOENT`, `EBUSY`, `EPERM`;
    /// [`ImportRefusal::errno`]), or `EAGAIN` if the live mapping is being
    /// released right now (the caller may retry).
    pub(crate) fn import_begin(&self, hid: &HyperDmabufId, writable: bool) -> Result<Import> {
        let mut inner = self.inner.lock();
        let max = inner.config.max_buffer_bytes;
        match inner.ledger.import_begin(hid, writable) {
            Ok(ImportStep::Map(export)) => Ok(Import::Map(*export, max)),
            Ok(ImportStep::Reuse {
                handle,
                size,
                writable,
            }) => {
                // SAFETY: a live import's identity is cleared under this
                // lock by its dma-buf's release (`import_unmapping`,
                // `import_released`) before the dma-buf's memory goes, so
                // it names a live dma-buf.
                let buf = unsafe { DmabufRef::try_get(*handle) };
                // `None`: being released right now; the caller may retry.
                buf.map(|buf| Import::Reuse(buf, size, writable))
                    .ok_or(EAGAIN)
            }
            Err(refusal) => Err(import_errno(refusal)),
        }
    }

    /// The buffer claimed with [`Conn::import_begin`] is mapped: tell
    /// the exporter, whose notification waits for the next event or the
    /// notice timer. It stays claimed until [`Conn::import_live`].
    ///
    /// # Errors
    ///
    /// `ENOENT` if the peer is gone or the claim ended (revoked), `EAGAIN`
    /// if the MAPPED notice cannot be sent yet (ring full).
    pub(crate) fn import_mapped(&self, ctx: &Context, hid: &HyperDmabufId) -> Result {
        self.locked(ctx, |parts, sink| {
            let Some(link) = parts.link.as_mut().filter(|l| !l.broken) else {
                return Err(ENOENT);
            };
            match parts.ledger.import_mapped(&mut link.channel, sink, hid) {
                Ok(()) => {
                    // Not now: the event would wake the exporter in the
                    // middle of this import.
                    link.owe_notice();
                    Ok(())
                }
                Err(MappedError::NotFound) => Err(ENOENT),
                Err(MappedError::Again) => Err(EAGAIN),
            }
        })
    }

    /// Records the dma-buf of a mapped import and ends the claim, calling
    /// `add` on each of the peer's fences on the buffer that have not
    /// ended, under the lock: the caller holds the dma-buf's reservation
    /// object with room for them (`ResvGuard`), so that nobody reuses the
    /// dma-buf before they are on it. Later ones reach it through
    /// [`Conn::finish`].
    pub(crate) fn import_live(
        &self,
        hid: &HyperDmabufId,
        identity: usize,
        writable: bool,
        mut add: impl FnMut(&PeerFence),
    ) {
        let mut inner = self.inner.lock();
        inner.ledger.import_live(hid, identity, writable);
        inner.ledger.peer_fences(hid, |f| add(f));
    }

    /// An import that was claimed with [`Conn::import_begin`] failed.
    pub(crate) fn import_abort(&self, ctx: &Context, hid: &HyperDmabufId) {
        self.locked(ctx, |parts, sink| parts.ledger.import_abort(sink, hid));
    }

    /// The dma-buf of import `hid` is released but a page is still held:
    /// it is no longer live and cannot be imported again until unmapped.
    pub(crate) fn import_unmapping(&self, hid: &HyperDmabufId) {
        self.inner.lock().ledger.import_unmapping(hid);
    }

    /// The last user of an imported buffer let go and its pages are
    /// unmapped: tell the exporter (now, or once the ring has room).
    pub(crate) fn import_released(&self, ctx: &Context, hid: &HyperDmabufId) {
        self.locked(ctx, |parts, sink| {
            let link = parts.link.as_mut().filter(|l| !l.broken);
            let (channel, irq) = match link {
                Some(l) => (Some(&mut l.channel), Some(&l.irq)),
                None => (None, None),
            };
            match parts.ledger.import_released(channel, sink, hid) {
                Released::Sent(true) => {
                    if let Some(irq) = irq {
                        irq.notify();
                    }
                }
                Released::Queued => ffi::tick_schedule(ledger::RETRY_MS as u32),
                Released::Forgotten | Released::Sent(false) | Released::Unknown => {}
            }
        });
    }

    /// Calls `f` on our export `hid`, if we have it.
    pub(crate) fn with_export<R>(
        &self,
        hid: &HyperDmabufId,
        f: impl FnOnce(&ExportEntry) -> R,
    ) -> Option<R> {
        self.inner.lock().ledger.export(hid).map(f)
    }

    /// Calls `f` on the import `hid`, if the peer announced it.
    pub(crate) fn with_import<R>(
        &self,
        hid: &HyperDmabufId,
        f: impl FnOnce(&ImportEntry) -> R,
    ) -> Option<R> {
        self.inner.lock().ledger.import(hid).map(f)
    }

    /// The events a reader opened now has missed and still needs: this
    /// connection is up, and which buffers it may import.
    pub(crate) fn replay(&self, out: &mut KVec<Addressed>) {
        let inner = self.inner.lock();
        if inner.link.is_none() {
            return;
        }
        let everyone = |event| Addressed { event, owner: None };
        let _ = out.push(
            everyone(Event::about_peer(EventType::PeerConnected, self.peer)),
            UNDER_LOCK,
        );
        inner.ledger.announced(|export| {
            let event =
                Event::about_import(EventType::NewExport, self.peer, export, export.priv_data);
            if out.push(everyone(event), UNDER_LOCK).is_err() {
                stats::EVENTS_LOST.inc();
            }
        });
    }

    /// Calls `f` on every export and import.
    pub(crate) fn for_each(
        &self,
        mut exports: impl FnMut(&ExportEntry),
        imports: impl FnMut(&ImportEntry),
    ) {
        self.inner
            .lock()
            .ledger
            .for_each(|_, e| exports(e), imports);
    }
}

/// The parts of the locked state next to the sink.
struct ConnInnerParts<'a> {
    link: &'a mut Option<Link>,
    config: &'a mut ChannelConfig,
    ledger: &'a mut ConnLedger,
}

/// The errno of an import ioctl the ledger refused.
fn import_errno(refusal: ImportRefusal) -> Error {
    Error::from_errno(-refusal.errno())
}

fn xenbus_closing() -> u32 {
    super::xenbus_proto::XenbusState::Closing.as_u32()
}

/// Keeps `delivery` in `queue`; without memory for it, its fences are
/// not added and its events are lost (counted): posting them now would
/// overtake those queued before.
fn keep(queue: &mut KVec<Delivery>, delivery: Delivery) {
    if queue.reserve(1, IN_WORKER).is_ok() {
        let _ = queue.push(delivery, IN_WORKER);
    } else {
        stats::FENCES_UNATTACHED.add(delivery.fences.len() as i64);
        stats::EVENTS_LOST.add(delivery.events.len() as i64);
    }
}

/// Signals the peer's fences that `fx` ended.
fn end_fences(fx: &mut Effects) {
    for (fence, end) in core::mem::take(&mut fx.fences_ended) {
        fence.end(end.error());
    }
}
