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

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::str::{CStr, CString};
use kernel::sync::{new_condvar, new_mutex, Arc, CondVar, CondVarTimeoutResult, Mutex};
use kernel::time::msecs_to_jiffies;

use super::common::channel::{
    Channel, ChannelConfig, ExportState, Host, ImportState, Pending, MAX_OUTSTANDING,
};
use super::common::id::HyperDmabufId;
use super::common::limits::MAX_IMPORTS_PER_PEER;
use super::common::uapi::{Event, EventType};
use super::common::wire::{ExportFlags, Message, PrivData};
use super::common::xen::{DomId, Status};
use super::common::Error as ProtoError;
use crate::entry::ConnIrq;
use crate::export::{ExportEntry, ExportGrants};
use crate::ffi::{self, errno, SharedRing, XenbusDev};
use crate::import::ImportEntry;
use crate::registry::Driver;
use crate::stats;

/// The live transport of a connection. Field order is drop order: the
/// IRQ goes (waiting for a running handler) before the rings.
pub(crate) struct Link {
    irq: ConnIrq,
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
        irq: ConnIrq,
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

impl Link {
    /// Accounts for a send: kicks the peer if the ring asks for it; a full
    /// ring is `EAGAIN` (the caller retries or queues the message).
    fn sent(&self, result: core::result::Result<bool, ProtoError>) -> Result {
        match result {
            Ok(notify) => {
                if notify {
                    self.irq.notify();
                }
                stats::MESSAGES.inc();
                Ok(())
            }
            Err(_) => {
                stats::RING_FULL.inc();
                Err(EAGAIN)
            }
        }
    }
}

/// Everything behind the connection's lock.
pub(crate) struct ConnInner {
    link: Option<Link>,
    config: ChannelConfig,
    pub(crate) exports: RBTree<u64, ExportEntry>,
    pub(crate) imports: RBTree<u64, ImportEntry>,
    /// Imports of sessions that ended, still mapped here.
    orphans: Orphans,
    /// Requests someone waits for: `None` until answered.
    results: RBTree<u64, Option<Status>>,
    /// RELEASE messages that found the ring full, by buffer number.
    unsent: RBTree<u64, HyperDmabufId>,
}

/// Work to do once the lock is dropped.
#[derive(Default)]
pub(crate) struct Effects {
    events: KVec<Event>,
    retired: KVec<KBox<ExportGrants>>,
    wake: bool,
}

impl Effects {
    pub(crate) fn event(&mut self, event: Event) {
        if self.events.push(event, GFP_KERNEL).is_err() {
            stats::EVENTS_LOST.inc();
        }
    }

    fn retire(&mut self, grants: KBox<ExportGrants>) {
        // Without memory for the list, dropping the grants hands them to
        // the grant layer, which is just as safe.
        let _ = self.retired.push(grants, GFP_KERNEL);
    }
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
}

/// Imports of sessions that ended whose dma-bufs are still alive here.
///
/// An import outlives its session (`orphaned`) while a local user maps it.
/// It stays in `imports` under its number until the peer's next instance
/// announces a buffer of the same number (a reloaded module numbers from
/// 1 again); then it moves here, under a local key, so that the new buffer
/// is not refused as a duplicate. Found by the full id.
#[derive(Default)]
pub(crate) struct Orphans {
    table: RBTree<u64, ImportEntry>,
    next: u64,
}

impl Orphans {
    /// Takes `entry` in, in the node allocated beforehand.
    fn adopt(&mut self, node: RBTreeNodeReservation<u64, ImportEntry>, entry: ImportEntry) {
        let key = self.next;
        self.next = self.next.wrapping_add(1);
        self.table.insert(node.into_node(key, entry));
    }

    fn key_of(&self, hid: &HyperDmabufId) -> Option<u64> {
        self.table
            .iter()
            .find(|(_, e)| e.state.export.hid.matches(hid))
            .map(|(k, _)| *k)
    }

    fn get_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportEntry> {
        let key = self.key_of(hid)?;
        self.table.get_mut(&key)
    }

    fn get(&self, hid: &HyperDmabufId) -> Option<&ImportEntry> {
        self.table.get(&self.key_of(hid)?)
    }

    fn remove(&mut self, hid: &HyperDmabufId) -> Option<ImportEntry> {
        let key = self.key_of(hid)?;
        self.table.remove(&key)
    }

    fn len(&self) -> usize {
        self.table.iter().count()
    }
}

/// The connection's protocol state as `common::channel` sees it.
struct HostView<'a> {
    peer: DomId,
    name: &'a CStr,
    exports: &'a mut RBTree<u64, ExportEntry>,
    imports: &'a mut RBTree<u64, ImportEntry>,
    orphans: &'a mut Orphans,
    results: &'a mut RBTree<u64, Option<Status>>,
    fx: &'a mut Effects,
}

impl Host for HostView<'_> {
    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportState> {
        self.exports
            .get_mut(&hid.number())
            .filter(|e| e.info.hid.matches(hid))
            .map(|e| &mut e.state)
    }

    fn end_export(&mut self, hid: &HyperDmabufId) {
        if self.export_mut(hid).is_none() {
            return;
        }
        if let Some(entry) = self.exports.remove(&hid.number()) {
            stats::EXPORTS.dec();
            self.fx.retire(entry.grants);
        }
    }

    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportState> {
        self.imports
            .get_mut(&hid.number())
            .filter(|e| e.state.export.hid.matches(hid))
            .map(|e| &mut e.state)
    }

    fn add_import(&mut self, import: ImportState) -> Result<(), Status> {
        let count = self.imports.iter().count() + self.orphans.len();
        if count >= MAX_IMPORTS_PER_PEER {
            return Err(Status::NoSpace);
        }
        let hid = import.export.hid;
        let number = hid.number();
        // A full id stays unique across sessions, or an ended session's
        // release would find the new buffer: a peer that announces one of
        // its old ids again is refused.
        if self.orphans.get(&hid).is_some() {
            return Err(Status::Exists);
        }
        match self.imports.get(&number) {
            None => {}
            Some(old) if old.state.export.hid.matches(&hid) => return Err(Status::Exists),
            // Of a session that ended: it makes way for the new instance's.
            Some(old) if old.orphaned => {
                let node = RBTreeNodeReservation::new(GFP_KERNEL).map_err(|_| Status::NoMemory)?;
                if let Some(old) = self.imports.remove(&number) {
                    self.orphans.adopt(node, old);
                }
            }
            Some(_) => return Err(Status::Exists),
        }
        self.imports
            .try_create_and_insert(number, ImportEntry::new(import), GFP_KERNEL)
            .map_err(|_| Status::NoMemory)?;
        stats::IMPORTS.inc();
        // The peer decides how often this happens: rate-limited.
        if ffi::params::log_buffers() {
            ffi::log_info_ratelimited(
                self.peer,
                format_args!(
                    "{}: dom{} announced buffer {} ({} bytes)",
                    self.name,
                    self.peer.get(),
                    import.export.hid,
                    import.export.size
                ),
            );
        }
        Ok(())
    }

    fn remove_import(&mut self, hid: &HyperDmabufId) {
        if self.import_mut(hid).is_some() && self.imports.remove(&hid.number()).is_some() {
            stats::IMPORTS.dec();
        }
    }

    fn post_event(&mut self, event: Event) {
        self.fx.event(event);
    }

    fn complete(&mut self, token: u64, status: Status) {
        if let Some(slot) = self.results.get_mut(&token) {
            *slot = Some(status);
            self.fx.wake = true;
        }
    }

    fn protocol_error(&mut self, error: ProtoError) {
        stats::PROTOCOL_ERRORS.inc();
        ffi::log_ratelimited(
            self.peer,
            format_args!(
                "{}: refused a request from dom{}: {}",
                self.name,
                self.peer.get(),
                error
            ),
        );
    }
}

/// What an import ioctl does next.
pub(crate) enum ImportStep {
    /// The buffer is mapped and its dma-buf alive: a new reference.
    Reuse(ffi::DmabufRef, u64),
    /// Map it: the announcement and the directory size limit.
    Map(super::common::wire::Export, u64),
}

impl Conn {
    /// A connection to `peer` that is not connected yet.
    pub(crate) fn new(id: u64, peer: DomId, name: CString) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Conn {
                id,
                peer,
                name,
                inner <- new_mutex!(ConnInner {
                    link: None,
                    config: ChannelConfig { max_buffer_bytes: 0, allow_rw: false },
                    exports: RBTree::new(),
                    imports: RBTree::new(),
                    orphans: Orphans::default(),
                    results: RBTree::new(),
                    unsent: RBTree::new(),
                }),
                answered <- new_condvar!(),
            }),
            GFP_KERNEL,
        )
    }

    /// Runs `f` on the locked state with a view for the channel, then
    /// carries out the effects.
    fn locked<R>(
        &self,
        driver: &Driver,
        f: impl FnOnce(&mut Option<Link>, &mut ConnInnerView<'_>, &mut HostView<'_>) -> R,
    ) -> R {
        let mut fx = Effects::default();
        let result = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
            let mut view = ConnInnerView {
                config: &mut inner.config,
                unsent: &mut inner.unsent,
            };
            let mut host = HostView {
                peer: self.peer,
                name: &self.name,
                exports: &mut inner.exports,
                imports: &mut inner.imports,
                orphans: &mut inner.orphans,
                results: &mut inner.results,
                fx: &mut fx,
            };
            f(&mut inner.link, &mut view, &mut host)
        };
        self.finish(driver, fx);
        result
    }

    fn finish(&self, driver: &Driver, fx: Effects) {
        driver.post(&fx.events);
        for grants in fx.retired {
            driver.retire(grants);
        }
        if fx.wake {
            self.answered.notify_all();
        }
    }

    /// Our XenBus directory, which names the connection in log lines.
    pub(crate) fn name(&self) -> &CStr {
        &self.name
    }

    /// Writes the state of both rings as this end sees it, plus what waits
    /// on them (the debugfs `rings` file): enough to tell a lost
    /// notification from a peer that stopped answering.
    pub(crate) fn show_rings(&self, m: &ffi::SeqFile) {
        let inner = self.inner.lock();
        let line = match &inner.link {
            None => CString::try_from_fmt(kernel::fmt!(
                "{}: dom{} not connected\n",
                self.name(),
                self.peer.get()
            )),
            Some(link) => {
                let (ours, theirs, outstanding) = link.channel.views();
                CString::try_from_fmt(kernel::fmt!(
                    "{}: dom{}{} outstanding={} waiters={} unsent={} exports={} imports={}\n  \
                     we request: {}\n  we answer:  {}\n",
                    self.name(),
                    self.peer.get(),
                    if link.broken { " broken" } else { "" },
                    outstanding,
                    inner.results.iter().count(),
                    inner.unsent.iter().count(),
                    inner.exports.iter().count(),
                    inner.imports.iter().count() + inner.orphans.len(),
                    ours,
                    theirs
                ))
            }
        };
        drop(inner);
        if let Ok(line) = line {
            m.puts(&line);
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
    pub(crate) fn attach(&self, driver: &Driver, link: Link, config: ChannelConfig) {
        self.locked(driver, |slot, view, host| {
            *view.config = config;
            *slot = Some(link);
            host.fx
                .event(peer_event(EventType::PeerConnected, self.peer));
        });
        stats::CONNECTIONS.inc();
        pr_info!(
            "{}: connected to dom{} (buffers up to {} bytes{})\n",
            self.name(),
            self.peer.get(),
            config.max_buffer_bytes,
            if config.allow_rw {
                ", read-write allowed"
            } else {
                ""
            }
        );
        // Requests may have arrived before we looked.
        self.process(driver);
    }

    /// Stops using the rings: waiting requests fail, every export ends
    /// (grants the peer still maps drain until it unmaps them), imports
    /// that are not mapped are forgotten and mapped ones live on until
    /// their users let go. Returns the transport for the caller to drop
    /// outside any lock.
    pub(crate) fn detach(&self, driver: &Driver) -> Option<Link> {
        let link = self.locked(driver, |slot, view, host| {
            let mut link = slot.take()?;
            link.channel.disconnect(host);
            loop {
                let Some(number) = host.exports.keys().next().copied() else {
                    break;
                };
                if let Some(entry) = host.exports.remove(&number) {
                    stats::EXPORTS.dec();
                    host.fx.retire(entry.grants);
                }
            }
            let mut cursor = host.imports.cursor_front();
            while let Some(mut c) = cursor {
                let (_, entry) = c.current_mut();
                if !entry.orphaned {
                    host.fx.event(buffer_event(
                        EventType::Unexport,
                        self.peer,
                        &entry.state.export.hid,
                        entry.state.export.size,
                    ));
                }
                if entry.live.is_some() || entry.busy {
                    entry.orphaned = true;
                    cursor = c.move_next();
                } else {
                    stats::IMPORTS.dec();
                    cursor = c.remove_current().0;
                }
            }
            loop {
                let Some(number) = view.unsent.keys().next().copied() else {
                    break;
                };
                view.unsent.remove(&number);
            }
            host.fx
                .event(peer_event(EventType::PeerDisconnected, self.peer));
            host.fx.wake = true;
            Some(link)
        });
        if link.is_some() {
            stats::CONNECTIONS.dec();
            pr_info!(
                "{}: disconnected from dom{}\n",
                self.name(),
                self.peer.get()
            );
        }
        link
    }

    /// Handles what the peer sent (the IRQ thread). Returns whether there
    /// was anything to do.
    pub(crate) fn process(&self, driver: &Driver) -> bool {
        let mut close = None;
        let work = self.locked(driver, |slot, view, host| {
            let Some(link) = slot.as_mut().filter(|l| !l.broken) else {
                return false;
            };
            let mut any = false;
            loop {
                match link.channel.process(host) {
                    Ok(progress) => {
                        any |= progress.handled > 0;
                        if progress.notify {
                            link.irq.notify();
                        }
                        if !progress.more {
                            break;
                        }
                    }
                    Err(e) => {
                        stats::RING_ERRORS.inc();
                        pr_warn!(
                            "{}: dom{} broke the ring ({}); closing the device\n",
                            self.name(),
                            self.peer.get(),
                            e
                        );
                        link.broken = true;
                        close = Some(link.dev);
                        return true;
                    }
                }
            }
            flush_unsent(link, view, host);
            any
        });
        if let Some(dev) = close {
            // The XenBus machines see Closing and tear the session down.
            dev.switch_state(xenbus_closing());
        }
        work
    }

    /// Announces a new export and registers `token` for its answer.
    pub(crate) fn announce(&self, driver: &Driver, entry: ExportEntry, token: u64) -> Result {
        self.locked(driver, |slot, _view, host| {
            let link = slot
                .as_mut()
                .filter(|l| !l.broken)
                .ok_or_else(errno::enotconn)?;
            let info = entry.info;
            let number = info.hid.number();
            host.results
                .try_create_and_insert(token, None, GFP_KERNEL)?;
            if let Err(e) = host
                .exports
                .try_create_and_insert(number, entry, GFP_KERNEL)
            {
                host.results.remove(&token);
                return Err(e);
            }
            stats::EXPORTS.inc();
            let sent = link.channel.announce(info, Some(token));
            link.sent(sent).inspect_err(|_| {
                host.results.remove(&token);
                host.end_export(&info.hid);
            })
        })
    }

    /// Waits up to `ms` for the answer to `token`.
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

    /// If this domain already exports the dma-buf `identity` to the peer,
    /// gives it `priv_data`, cancels a pending delayed unexport, tells the
    /// peer, and returns its id.
    pub(crate) fn update_existing(
        &self,
        driver: &Driver,
        identity: usize,
        priv_data: PrivData,
    ) -> Option<Result<HyperDmabufId>> {
        self.locked(driver, |slot, _view, host| {
            let entry = host
                .exports
                .values_mut()
                .find(|e| e.identity == identity && !e.state.unexported())?;
            entry.info.priv_data = priv_data;
            entry.unexport_at = None;
            let hid = entry.info.hid;
            let Some(link) = slot.as_mut().filter(|l| !l.broken) else {
                return Some(Err(errno::enotconn()));
            };
            let sent = link.channel.send(Message::Update { hid, priv_data }, None);
            Some(link.sent(sent).map(|()| hid))
        })
    }

    /// Starts the unexport of `hid` now (`delay_ms == 0`) or later.
    /// `ENOENT` if we export no such buffer to this peer.
    pub(crate) fn unexport(&self, driver: &Driver, hid: &HyperDmabufId, delay_ms: u32) -> Result {
        let due = ffi::now_ms() + u64::from(delay_ms);
        let found = self.locked(driver, |_slot, _view, host| {
            let entry = host
                .exports
                .get_mut(&hid.number())
                .filter(|e| e.info.hid.matches(hid))?;
            if !entry.state.unexported() {
                entry.unexport_at = Some(due);
            }
            Some(())
        });
        found.ok_or(ENOENT)?;
        if delay_ms == 0 {
            self.tick(driver, ffi::now_ms());
        } else {
            ffi::tick_schedule(delay_ms);
        }
        Ok(())
    }

    /// Unexports, now, every buffer the file `owner` exported.
    pub(crate) fn unexport_owned_by(&self, driver: &Driver, owner: u64) {
        let now = ffi::now_ms();
        self.locked(driver, |_slot, _view, host| {
            for entry in host.exports.values_mut() {
                if entry.owner == owner && !entry.state.unexported() {
                    entry.unexport_at = Some(now);
                }
            }
        });
        self.tick(driver, now);
    }

    /// Timed work: starts due unexports and sends queued RELEASEs.
    /// Returns when it wants to run next, if ever.
    pub(crate) fn tick(&self, driver: &Driver, now: u64) -> Option<u64> {
        self.locked(driver, |slot, view, host| {
            let mut due = KVec::new();
            let mut next: Option<u64> = None;
            for entry in host.exports.values() {
                match entry.unexport_at {
                    Some(at) if at <= now => {
                        let _ = due.push(entry.info.hid, GFP_KERNEL);
                    }
                    Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                    None => {}
                }
            }
            let Some(link) = slot.as_mut().filter(|l| !l.broken) else {
                return next;
            };
            let mut notify = false;
            for hid in due.iter() {
                match link.channel.revoke(host, hid, None) {
                    Ok(n) => {
                        notify |= n;
                        stats::MESSAGES.inc();
                        if let Some(e) = host.exports.get_mut(&hid.number()) {
                            e.unexport_at = None;
                        }
                        ffi::log_buffer(format_args!(
                            "{}: unexporting {} from dom{}",
                            self.name(),
                            hid,
                            self.peer.get()
                        ));
                    }
                    // Ring full: the answers that free it wake us again.
                    Err(_) => {
                        stats::RING_FULL.inc();
                        next = Some(now + 10);
                    }
                }
            }
            if notify {
                link.irq.notify();
            }
            flush_unsent(link, view, host);
            if view.unsent.iter().next().is_some() {
                next = Some(next.map_or(now + 10, |n| n.min(now + 10)));
            }
            next
        })
    }

    /// First step of an import: reuse a live mapping or claim the buffer
    /// for mapping.
    pub(crate) fn import_begin(&self, hid: &HyperDmabufId, writable: bool) -> Result<ImportStep> {
        let mut inner = self.inner.lock();
        let max = inner.config.max_buffer_bytes;
        let entry = inner
            .imports
            .get_mut(&hid.number())
            .filter(|e| e.state.export.hid.matches(hid))
            .ok_or(ENOENT)?;
        if entry.orphaned || entry.state.revoked() {
            return Err(ENOENT);
        }
        if writable && !entry.state.export.flags.contains(ExportFlags::WRITABLE) {
            return Err(EPERM);
        }
        if let Some(identity) = entry.live {
            if writable && !entry.live_writable {
                // Mapped read-only by another user; one mapping per buffer.
                return Err(EBUSY);
            }
            // `live` is cleared under this lock by the dma-buf's release
            // before its memory goes, so the identity is a live dma-buf.
            if let Some(buf) = crate::entry::dmabuf_try_get(identity) {
                return Ok(ImportStep::Reuse(buf, entry.state.export.size));
            }
            // Being released right now: the caller may retry.
            return Err(EAGAIN);
        }
        if entry.busy {
            return Err(EBUSY);
        }
        entry.busy = true;
        Ok(ImportStep::Map(entry.state.export, max))
    }

    /// The buffer claimed with [`Conn::import_begin`] is mapped: tell
    /// the exporter. It stays claimed until [`Conn::import_live`].
    pub(crate) fn import_mapped(&self, driver: &Driver, hid: &HyperDmabufId) -> Result {
        self.locked(driver, |slot, _view, host| {
            let alive = host.import_mut(hid).is_some_and(|s| !s.revoked());
            let link = slot.as_mut().filter(|l| !l.broken);
            let (true, Some(link)) = (alive, link) else {
                return Err(ENOENT);
            };
            let sent = link.channel.import_mapped(host, hid);
            link.sent(sent)
        })
    }

    /// Records the dma-buf of a mapped import and ends the claim.
    pub(crate) fn import_live(&self, hid: &HyperDmabufId, identity: usize, writable: bool) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if let Some(e) = import_entry(&mut inner.imports, &mut inner.orphans, hid) {
            e.busy = false;
            e.live = Some(identity);
            e.live_writable = writable;
        }
    }

    /// An import that was claimed with [`Conn::import_begin`] failed.
    ///
    /// If the peer went away meanwhile, the teardown kept the entry only
    /// because this import was under way (`busy`): nothing maps it, so it
    /// goes now, or it would stay counted for good.
    pub(crate) fn import_abort(&self, hid: &HyperDmabufId) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let Some(e) = import_entry(&mut inner.imports, &mut inner.orphans, hid) else {
            return;
        };
        e.busy = false;
        if e.orphaned && e.live.is_none() {
            forget_import(&mut inner.imports, &mut inner.orphans, hid);
        }
    }

    /// The last user of an imported buffer let go and its pages are
    /// unmapped: tell the exporter (now, or once the ring has room).
    pub(crate) fn import_released(&self, driver: &Driver, hid: &HyperDmabufId) {
        self.locked(driver, |slot, view, host| {
            let number = hid.number();
            let Some(entry) = import_entry(host.imports, host.orphans, hid) else {
                return;
            };
            entry.live = None;
            if entry.orphaned {
                forget_import(host.imports, host.orphans, hid);
                return;
            }
            let link = slot.as_mut().filter(|l| !l.broken);
            let sent = link.is_some_and(|link| {
                let sent = link.channel.import_unmapped(host, hid);
                link.sent(sent).is_ok()
            });
            if !sent {
                if view
                    .unsent
                    .try_create_and_insert(number, *hid, GFP_KERNEL)
                    .is_ok()
                {
                    ffi::tick_schedule(10);
                }
            }
        });
    }

    /// Calls `f` on our export `hid`, if we have it.
    pub(crate) fn with_export<R>(
        &self,
        hid: &HyperDmabufId,
        f: impl FnOnce(&ExportEntry) -> R,
    ) -> Option<R> {
        let inner = self.inner.lock();
        inner
            .exports
            .get(&hid.number())
            .filter(|e| e.info.hid.matches(hid))
            .map(f)
    }

    /// Calls `f` on the import `hid`, if the peer announced it.
    pub(crate) fn with_import<R>(
        &self,
        hid: &HyperDmabufId,
        f: impl FnOnce(&ImportEntry) -> R,
    ) -> Option<R> {
        let inner = self.inner.lock();
        inner
            .imports
            .get(&hid.number())
            .filter(|e| e.state.export.hid.matches(hid))
            .or_else(|| inner.orphans.get(hid))
            .map(f)
    }

    /// The events a reader opened now has missed and still needs: this
    /// connection is up, and which buffers it may import.
    pub(crate) fn replay(&self, out: &mut KVec<Event>) {
        let inner = self.inner.lock();
        if inner.link.is_none() {
            return;
        }
        let _ = out.push(peer_event(EventType::PeerConnected, self.peer), GFP_KERNEL);
        for e in inner.imports.values() {
            if e.orphaned || e.state.revoked() {
                continue;
            }
            let export = &e.state.export;
            let event = Event {
                priv_data: export.priv_data,
                flags: export.flags,
                ..buffer_event(EventType::NewExport, self.peer, &export.hid, export.size)
            };
            let _ = out.push(event, GFP_KERNEL);
        }
    }

    /// Calls `f` on every export and import.
    pub(crate) fn for_each(
        &self,
        mut exports: impl FnMut(&ExportEntry),
        mut imports: impl FnMut(&ImportEntry),
    ) {
        let inner = self.inner.lock();
        inner.exports.values().for_each(&mut exports);
        inner.imports.values().for_each(&mut imports);
        inner.orphans.table.values().for_each(&mut imports);
    }
}

/// The parts of the state next to the channel's view.
struct ConnInnerView<'a> {
    config: &'a mut ChannelConfig,
    unsent: &'a mut RBTree<u64, HyperDmabufId>,
}

/// The import `hid`: of the current session, or of one that ended.
fn import_entry<'a>(
    imports: &'a mut RBTree<u64, ImportEntry>,
    orphans: &'a mut Orphans,
    hid: &HyperDmabufId,
) -> Option<&'a mut ImportEntry> {
    match imports
        .get_mut(&hid.number())
        .filter(|e| e.state.export.hid.matches(hid))
    {
        Some(e) => Some(e),
        None => orphans.get_mut(hid),
    }
}

/// Forgets the import `hid`, wherever it is.
fn forget_import(
    imports: &mut RBTree<u64, ImportEntry>,
    orphans: &mut Orphans,
    hid: &HyperDmabufId,
) {
    let number = hid.number();
    let current = imports
        .get(&number)
        .is_some_and(|e| e.state.export.hid.matches(hid));
    let gone = if current {
        imports.remove(&number)
    } else {
        orphans.remove(hid)
    };
    if gone.is_some() {
        stats::IMPORTS.dec();
    }
}

/// Sends the RELEASEs that found the ring full, while it has room.
fn flush_unsent(link: &mut Link, view: &mut ConnInnerView<'_>, host: &mut HostView<'_>) {
    let mut notify = false;
    loop {
        let Some((number, hid)) = view.unsent.iter().next().map(|(n, h)| (*n, *h)) else {
            break;
        };
        if !link.channel.can_send() {
            break;
        }
        view.unsent.remove(&number);
        match link.channel.import_unmapped(host, &hid) {
            Ok(n) => {
                notify |= n;
                stats::MESSAGES.inc();
            }
            // Forgotten meanwhile (revoked and removed): nothing to send.
            Err(_) => {}
        }
    }
    if notify {
        link.irq.notify();
    }
}

fn xenbus_closing() -> u32 {
    super::xenbus_proto::XenbusState::Closing.as_u32()
}

fn peer_event(kind: EventType, peer: DomId) -> Event {
    Event {
        kind,
        peer,
        hid: None,
        size: 0,
        flags: ExportFlags::default(),
        priv_data: PrivData::EMPTY,
        lost: 0,
    }
}

/// An event about one buffer.
pub(crate) fn buffer_event(kind: EventType, peer: DomId, hid: &HyperDmabufId, size: u64) -> Event {
    Event {
        hid: Some(*hid),
        size,
        ..peer_event(kind, peer)
    }
}
