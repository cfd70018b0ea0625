// SPDX-License-Identifier: MIT
//! What one end keeps about the buffers shared over one connection, and
//! every decision about them that is not a message's.
//!
//! [`super::channel`] decides what each message does; a [`Ledger`]
//! decides the rest, for the kernel module and the two-domain simulation
//! alike:
//!
//! * **admission** of a buffer the peer announces: the per-peer limit,
//!   and the ids it may not use again ([`Ledger::view`]'s
//!   [`Host::add_import`]);
//! * the **claim** on an import: idle, being mapped by one import ioctl,
//!   live (a local dma-buf exists), or unmapping (released while a page
//!   is still held) — and so which import ioctl maps, which reuses and
//!   which is refused ([`Ledger::import_begin`]);
//! * **orphans**: an import that outlives its session because a local user
//!   still maps it, kept apart once the peer's next instance announces a
//!   buffer of the same number ([`Ledger::detach`]);
//! * the **delayed unexport** schedule ([`Ledger::schedule_unexport`],
//!   [`Ledger::tick`]);
//! * the **RELEASE retry** queue: a RELEASE that finds the ring full is
//!   sent by the next tick or answer; at most one per import, so the queue
//!   is bounded by the admission limit and needs no memory of its own;
//! * the **UPDATE queue**: a frame announced while the ring is short of
//!   room (or while earlier ones wait) waits in its export's record, the
//!   newest private data of each buffer once, and goes in the order
//!   announced ([`Ledger::update`], [`Ledger::flush_updates`], a
//!   [`Fifo`] of at most one ring's worth of buffers);
//! * **export policy**: which buffer may be exported over a connection
//!   ([`export_layout`]) and what a refusal means to user space.
//!
//! The tables are the host's ([`Table`]: red-black trees in the kernel,
//! `BTreeMap`s in the tests), and so are the side effects ([`Sink`]):
//! ending grants, queueing events, waking waiters, counting. Nothing here
//! allocates.

use core::marker::PhantomData;

use super::channel::{Channel, ChannelConfig, ExportState, Host, ImportState, PendingTable};
use super::error::Error;
use super::fence::{FenceEnd, InFence, OutFence, OutState, DEFAULT_FENCE_TIMEOUT_MS, MAX_FENCES};
use super::fifo::Fifo;
use super::id::HyperDmabufId;
use super::limits::{MAX_IMPORTS_PER_PEER, XEN_PAGE_SIZE};
use super::pgdir::Layout;
use super::shmem::SharedMem;
use super::uapi::{self, Event, EventType};
use super::wire::{
    inline_capacity, Export, ExportFlags, FenceId, FenceResult, Message, PrivData, VERSION_2,
    VERSION_3,
};
use super::xen::Status;

/// Linux errno values of the refusals below, and of those of
/// [`super::grantable`] and [`super::mmap`] (`asm-generic/errno-base.h`):
/// what the control device's ioctls and an imported buffer's mmap return
/// (docs/uapi.md).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// No such buffer.
    pub const ENOENT: i32 = 2;
    /// I/O error: a refusal with no better name.
    pub const EIO: i32 = 5;
    /// Bad file descriptor.
    pub const EBADF: i32 = 9;
    /// Argument list too long: the buffer is too large.
    pub const E2BIG: i32 = 7;
    /// Try again.
    pub const EAGAIN: i32 = 11;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Permission denied: a writable mapping of a read-only buffer.
    pub const EACCES: i32 = 13;
    /// Device or resource busy.
    pub const EBUSY: i32 = 16;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// No space left: the peer's table is full.
    pub const ENOSPC: i32 = 28;
    /// Not connected to the peer.
    pub const ENOTCONN: i32 = 107;
}

/// A table of records keyed by buffer number, stored as the host likes.
///
/// Insertion is the only operation that may need memory, and it may fail
/// without losing the record.
pub trait Table {
    /// The record.
    type Value;

    /// The record under `key`.
    fn get(&self, key: u64) -> Option<&Self::Value>;

    /// The record under `key`, to change.
    fn get_mut(&mut self, key: u64) -> Option<&mut Self::Value>;

    /// Stores `value` under `key`, which the table does not hold.
    ///
    /// # Errors
    ///
    /// `value`, given back, when there is no memory for it.
    fn try_insert(&mut self, key: u64, value: Self::Value) -> Result<(), Self::Value>;

    /// Takes the record under `key` out.
    fn remove(&mut self, key: u64) -> Option<Self::Value>;

    /// The smallest key.
    fn first(&self) -> Option<u64>;

    /// The smallest key whose record satisfies `pred`.
    fn find(&self, pred: impl FnMut(&Self::Value) -> bool) -> Option<u64>;

    /// Calls `f` on every record, in key order.
    fn for_each<'a>(&'a self, f: impl FnMut(u64, &'a Self::Value));

    /// Calls `f` on every record, in key order, to change it.
    fn for_each_mut(&mut self, f: impl FnMut(u64, &mut Self::Value));

    /// Keeps the records for which `keep` says so; hands the others to
    /// `removed`.
    fn retain(
        &mut self,
        keep: impl FnMut(&mut Self::Value) -> bool,
        removed: impl FnMut(Self::Value),
    );
}

/// The side effects of the ledger's decisions, carried out by the host.
///
/// `G` is what keeps an export's pages granted; `F` is a local fence that
/// stands for one of the peer's (a host without fences keeps `()` and the
/// defaults, and so refuses every fence).
pub trait Sink<G, F = ()> {
    /// An export ended: end foreign access to its pages (deferred for
    /// those the peer still maps) and post [`EventType::GrantsEnded`]
    /// once they have all ended.
    fn retire(&mut self, grants: G);

    /// Queues `event` for user space: for `owner`'s file only if given.
    fn event(&mut self, event: Event, owner: Option<u64>);

    /// The request sent with `token` was answered (or failed).
    fn complete(&mut self, token: u64, status: Status);

    /// A request from the peer was refused (for counters and a log line).
    fn protocol_error(&mut self, error: Error);

    /// The peer announced a buffer and we took it (a log line, an index
    /// entry).
    fn announced(&mut self, _export: &Export) {}

    /// A buffer [`Sink::announced`] reported is forgotten: its record is
    /// gone (the peer revoked it, or its session ended, and no local user
    /// holds it any more). Once for each announced buffer.
    fn forgotten(&mut self, _hid: &HyperDmabufId) {}

    /// One of the connection's gauges went up or down.
    fn gauge(&mut self, _gauge: Gauge, _up: bool) {}

    /// A message was put on the ring, or found it full.
    fn sent(&mut self, _sent: bool) {}

    /// A due unexport of `hid` started (a log line).
    fn unexporting(&mut self, _hid: &HyperDmabufId) {}

    /// A local fence, not signalled, for one the peer attaches to a frame
    /// of `hid`, with whatever the host needs to add it to the buffer's
    /// dma-buf. `None` without memory (the frame is refused).
    fn fence_new(&mut self, _hid: &HyperDmabufId) -> Option<F> {
        None
    }

    /// The fence made by [`Sink::fence_new`] is the peer's now: the host
    /// adds it to the buffer's live dma-buf, if there is one, before its
    /// users hear of the frame.
    fn fence_attached(&mut self, _hid: &HyperDmabufId, _fence: &F) {}

    /// Signals a local fence made by [`Sink::fence_new`], with the error
    /// `end` carries.
    fn fence_end(&mut self, _fence: F, _end: FenceEnd) {}

    /// The host clock in milliseconds (the clock [`Ledger::tick`] is
    /// given): when a fence from the peer times out.
    fn now_ms(&self) -> u64 {
        0
    }
}

/// What a [`Sink::gauge`] call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Buffers we export to the peer.
    Exports,
    /// Buffers the peer announced to us, orphans included.
    Imports,
}

/// One of our exports to the peer.
#[derive(Debug)]
pub struct ExportRecord<G> {
    /// Protocol state.
    pub state: ExportState,
    /// What was announced (private data updated by re-exports).
    pub info: Export,
    /// The open file that exported it (who hears of it).
    pub owner: u64,
    /// The local buffer's identity, to recognise it exported again.
    pub identity: usize,
    /// When a delayed unexport is due (milliseconds on the host's clock).
    unexport_at: Option<u64>,
    /// Its file was closed: it is being unexported, and exporting the
    /// same buffer again makes a new export rather than reviving this one.
    owner_closed: bool,
    /// Its number is in the UPDATE queue: its newest private data waits
    /// for room on the ring.
    update_queued: bool,
    /// The fence of the frame in the UPDATE queue, if it has one.
    queued_fence: Option<FenceId>,
    /// The identity index names it (or named it): not a second export of
    /// a buffer exported already.
    indexed: bool,
    /// What keeps its pages granted.
    pub grants: G,
}

impl<G> ExportRecord<G> {
    /// A record of an export about to be announced.
    pub const fn new(info: Export, owner: u64, identity: usize, grants: G) -> Self {
        ExportRecord {
            state: ExportState::new(info.size),
            info,
            owner,
            identity,
            unexport_at: None,
            owner_closed: false,
            update_queued: false,
            queued_fence: None,
            indexed: true,
            grants,
        }
    }

    /// Whether exporting its buffer again is a re-export of this record:
    /// it is neither unexported nor going because its file was closed.
    const fn reexportable(&self, identity: usize) -> bool {
        self.identity == identity && self.updatable()
    }

    /// When its delayed unexport is due, if one is scheduled.
    pub const fn unexport_at(&self) -> Option<u64> {
        self.unexport_at
    }

    /// Whether an UPDATE of it waits for room on the ring.
    pub const fn update_queued(&self) -> bool {
        self.update_queued
    }

    /// Whether it may take a new frame: it is neither unexported nor
    /// going because its file was closed.
    const fn updatable(&self) -> bool {
        !self.state.unexported() && !self.owner_closed
    }

    /// [`Self::updatable`] at `now`, and no unexport of it is due: one
    /// asked for now (or whose delay ran out) that the ring had no room
    /// for yet is going, and no frame may cancel it.
    fn updatable_at(&self, now: u64) -> bool {
        self.updatable() && !self.unexport_due(now)
    }

    fn unexport_due(&self, now: u64) -> bool {
        matches!(self.unexport_at, Some(at) if at <= now)
    }
}

/// Where an import stands with this domain's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<L> {
    /// Nobody maps it.
    Idle,
    /// One import ioctl is mapping it.
    Mapping,
    /// Mapped, with a local buffer (`handle`) users hold.
    Live {
        /// The host's handle of the local buffer.
        handle: L,
        /// Whether it was mapped writable.
        writable: bool,
    },
    /// Its local buffer is released but a page is still held; the exporter
    /// hears once it is let go.
    Unmapping,
}

/// A buffer the peer announced to us.
#[derive(Debug)]
pub struct ImportRecord<L> {
    /// Protocol state.
    pub state: ImportState,
    claim: Claim<L>,
    /// Its session ended; it is forgotten once its users let go.
    orphaned: bool,
    /// Its RELEASE found the ring full and waits to be sent.
    release_unsent: bool,
}

impl<L> ImportRecord<L> {
    const fn new(state: ImportState) -> Self {
        ImportRecord {
            state,
            claim: Claim::Idle,
            orphaned: false,
            release_unsent: false,
        }
    }

    /// Where it stands with our users.
    pub const fn claim(&self) -> &Claim<L> {
        &self.claim
    }

    /// Whether its session ended.
    pub const fn orphaned(&self) -> bool {
        self.orphaned
    }

    /// Whether a local user or an import ioctl holds it.
    pub const fn claimed(&self) -> bool {
        !matches!(self.claim, Claim::Idle)
    }

    /// Whether this domain maps it for its users (QUERY's and LIST's
    /// "busy"): live, or released with a page still held.
    pub const fn held(&self) -> bool {
        matches!(self.claim, Claim::Live { .. } | Claim::Unmapping)
    }

    /// Whether no new import of it can be made because its exporter
    /// revoked it or its session ended (QUERY's "unexported").
    pub const fn ended(&self) -> bool {
        self.orphaned || self.state.revoked()
    }

    fn is(&self, hid: &HyperDmabufId) -> bool {
        self.state.export.hid.matches(hid)
    }
}

/// Why an import ioctl is refused before anything is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportRefusal {
    /// No such buffer from this peer, or it was revoked, or its session
    /// ended (`ENOENT`).
    NotFound,
    /// Another import ioctl is mapping it, its last mapping waits for a
    /// held page, or it is mapped read-only and writable was asked
    /// (`EBUSY`).
    Busy,
    /// Writable asked of a read-only export (`EPERM`).
    NotWritable,
}

impl ImportRefusal {
    /// The errno the import ioctl returns.
    pub const fn errno(self) -> i32 {
        match self {
            ImportRefusal::NotFound => errno::ENOENT,
            ImportRefusal::Busy => errno::EBUSY,
            ImportRefusal::NotWritable => errno::EPERM,
        }
    }
}

/// What an import ioctl does next.
#[derive(Debug)]
pub enum ImportStep<'a, L> {
    /// The buffer is mapped and its local buffer alive: take another
    /// reference to `handle`.
    Reuse {
        /// The live buffer.
        handle: &'a mut L,
        /// Its size in bytes.
        size: u64,
        /// Whether it is mapped read-write: what the new reference is.
        writable: bool,
    },
    /// The buffer is claimed for this ioctl: map it, then
    /// [`Ledger::import_mapped`] and [`Ledger::import_live`], or
    /// [`Ledger::import_abort`].
    Map(&'a Export),
}

/// What [`Ledger::import_released`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// No such import (already forgotten).
    Unknown,
    /// An orphan, forgotten: its exporter is gone.
    Forgotten,
    /// The RELEASE is on the ring; notify the peer if `true`.
    Sent(bool),
    /// The ring is full: a later [`Ledger::flush_releases`] sends it.
    Queued,
}

/// What a [`Ledger::tick`] did, and when it wants to run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// Something was sent: notify the peer.
    pub notify: bool,
    /// When to tick again (host clock), if ever.
    pub next: Option<u64>,
}

/// What [`Ledger::unexport_now`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unexporting {
    /// The UNEXPORT was sent (`notify`: notify the peer), or had been.
    Sent {
        /// Notify the peer.
        notify: bool,
    },
    /// The ring has no room for it yet: it is due, and a tick sends it.
    Due,
}

/// How long a message that found the ring full waits before the next
/// try, in milliseconds: the peer answers within a few.
pub const RETRY_MS: u64 = 10;

/// Whether an UPDATE may take a slot of `channel`'s ring now: one in
/// eight slots (at least one) stays free for EXPORT, UNEXPORT, MAPPED and
/// RELEASE, so that a stream of frames never makes them fail for want
/// of room.
fn update_room<M: SharedMem, P: PendingTable>(channel: &Channel<M, P>) -> bool {
    let reserve = (channel.ring_size() / 8).max(1);
    channel.can_send() && channel.free_slots() > reserve
}

/// Why an export is refused before anything is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportRefusal {
    /// Read-write asked on a connection without it (`EPERM`).
    NotWritable,
    /// Empty, or not a whole number of pages (`EINVAL`).
    BadSize,
    /// Beyond what the peer accepts or a directory can describe (`E2BIG`).
    TooLarge,
}

impl ExportRefusal {
    /// The errno the export ioctl returns.
    pub const fn errno(self) -> i32 {
        match self {
            ExportRefusal::NotWritable => errno::EPERM,
            ExportRefusal::BadSize => errno::EINVAL,
            ExportRefusal::TooLarge => errno::E2BIG,
        }
    }
}

/// Whether an export with `flags` may be made over a connection with
/// `config`: checked first, before the buffer is looked at
/// (docs/uapi.md).
///
/// # Errors
///
/// [`ExportRefusal::NotWritable`].
pub fn export_flags_allowed(
    config: &ChannelConfig,
    flags: ExportFlags,
) -> Result<(), ExportRefusal> {
    if flags.contains(ExportFlags::WRITABLE) && !config.allow_rw {
        return Err(ExportRefusal::NotWritable);
    }
    Ok(())
}

/// Whether a buffer of `size` bytes may be exported over a connection
/// with `config`; its directory's layout if it may.
///
/// # Errors
///
/// [`ExportRefusal::BadSize`], then [`ExportRefusal::TooLarge`].
pub fn export_layout(config: &ChannelConfig, size: u64) -> Result<Layout, ExportRefusal> {
    if size == 0 || size % XEN_PAGE_SIZE as u64 != 0 {
        return Err(ExportRefusal::BadSize);
    }
    if size > config.max_buffer_bytes {
        return Err(ExportRefusal::TooLarge);
    }
    Layout::new(size, config.max_buffer_bytes).map_err(|_| ExportRefusal::TooLarge)
}

/// Whether an export of `layout` with `priv_data` carries its grant
/// references in the EXPORT message (the session speaks version 2 and
/// they fit beside the private data, and beside a fence if the buffer has
/// one the session can carry): then it has no page directory, and the
/// importer maps its data pages at once.
pub fn refs_inline(
    config: &ChannelConfig,
    layout: &Layout,
    priv_data: &PrivData,
    fenced: bool,
) -> bool {
    let fenced = fenced && config.version >= VERSION_3;
    config.version >= VERSION_2
        && layout.nr_pages() as usize <= inline_capacity(priv_data.len(), fenced)
}

/// A frame announced by [`Ledger::update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Its private data.
    pub priv_data: PrivData,
    /// Whether the local buffer has an unsignalled fence its readers must
    /// wait for (the frame carries it if the session speaks version 3).
    pub fenced: bool,
}

/// A message of ours that went, or waits in a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Notify the peer.
    pub notify: bool,
    /// The id of the fence the frame carries: the host calls
    /// [`Ledger::fence_signalled`] with it once its own fence signals.
    pub fence: Option<FenceId>,
}

/// The errno of an export the peer answered with `status` (not `Ok`).
pub const fn export_refusal_errno(status: Status) -> i32 {
    match status {
        Status::TooLarge => errno::E2BIG,
        Status::PermissionDenied => errno::EPERM,
        Status::NoSpace => errno::ENOSPC,
        Status::NoMemory => errno::ENOMEM,
        _ => errno::EIO,
    }
}

/// An open file of the control device as the export rules see it: which
/// one, and whether it may manage every export of this domain
/// ([`uapi::may_manage_export`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRights {
    /// The open file.
    pub file: u64,
    /// Whether its opener is an administrator.
    pub admin: bool,
}

/// Why a new frame of an export ([`Ledger::update`]) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateRefusal {
    /// We export no such buffer, or it is being unexported (`ENOENT`).
    NotFound,
    /// Another file exported it, and this one may not manage it
    /// (`EPERM`): it may not change its private data, cancel its delayed
    /// unexport or learn its id.
    NotOwner,
    /// A re-export with other flags than the export's (`EINVAL`):
    /// unexport it first.
    OtherFlags,
    /// The connection is down (`ENOTCONN`): the export took the private
    /// data, the peer hears nothing.
    NotConnected,
    /// The frame would wait, and a ring's worth of other buffers' frames
    /// wait already (`EAGAIN`): the peer is far behind.
    QueueFull,
    /// The frame has a fence, and [`MAX_FENCES`] of ours are not yet
    /// signalled (`EAGAIN`): the producer is far ahead of its own GPU.
    TooManyFences,
}

impl UpdateRefusal {
    /// The errno the ioctl returns.
    pub const fn errno(self) -> i32 {
        match self {
            UpdateRefusal::NotFound => errno::ENOENT,
            UpdateRefusal::NotOwner => errno::EPERM,
            UpdateRefusal::OtherFlags => errno::EINVAL,
            UpdateRefusal::NotConnected => errno::ENOTCONN,
            UpdateRefusal::QueueFull | UpdateRefusal::TooManyFences => errno::EAGAIN,
        }
    }
}

/// Why a message of ours was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No memory for the record (`ENOMEM`).
    NoMemory,
    /// The ring is full, or [`MAX_FENCES`] of ours are not yet signalled
    /// (`EAGAIN`).
    RingFull,
    /// The connection is down (`ENOTCONN`).
    NotConnected,
}

/// The delayed unexports of a ledger: how many exports have one
/// scheduled, and a time none of them is due before. A tick walks the
/// exports only once one may be due.
///
/// # Invariants
///
/// `count` is the number of export records whose `unexport_at` is set:
/// every change goes through [`Schedule::set`] or [`Schedule::dropped`].
/// With any, none is due before `earliest`.
#[derive(Debug, Default, Clone, Copy)]
struct Schedule {
    count: usize,
    earliest: Option<u64>,
}

impl Schedule {
    /// Sets an export's due time `slot` to `due`.
    fn set(&mut self, slot: &mut Option<u64>, due: Option<u64>) {
        match (slot.is_some(), due.is_some()) {
            (false, true) => self.count += 1,
            (true, false) => self.count -= 1,
            _ => {}
        }
        *slot = due;
        // INVARIANT: a later due time leaves `earliest` a lower bound.
        if let Some(at) = due {
            self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
        }
        if self.count == 0 {
            self.earliest = None;
        }
    }

    /// An export record with due time `slot` left the table.
    fn dropped(&mut self, slot: Option<u64>) {
        if slot.is_some() {
            self.count -= 1;
            if self.count == 0 {
                self.earliest = None;
            }
        }
    }

    /// Whether one may be due at `now`: only then is a walk worth it.
    fn maybe_due(&self, now: u64) -> bool {
        self.count > 0 && self.earliest.map_or(true, |at| at <= now)
    }
}

/// How many keys one walk of a table gathers for messages to send: a
/// congested ring takes no more than this between two answers, and a
/// walk per batch keeps a backlog's cost linear.
const BATCH: usize = 32;

/// The key of an orphan in its table: the first 64 bits of its id's
/// random key. A peer's numbers start again after it restarts, its keys
/// do not; should two orphans' keys meet (a peer choosing its keys to),
/// the second buffer is refused as announced twice.
pub fn orphan_key(hid: &HyperDmabufId) -> u64 {
    let mut bits = [0u8; 8];
    bits.copy_from_slice(&hid.key()[..8]);
    u64::from_le_bytes(bits)
}

/// Everything one end keeps about the buffers of one connection: its
/// exports, the imports of the current session and the orphans of ended
/// ones.
///
/// `XT` holds [`ExportRecord`]s and `IT` [`ImportRecord`]s, keyed by
/// buffer number (orphans by [`orphan_key`]); `NT` maps a local buffer's
/// identity to the number of an export of it (the older of two live). `G` keeps an export's
/// pages granted; `L` is a live import's local buffer.
///
/// Every lookup an ioctl or a message makes is by key, and every walk
/// over a whole table runs once per event that concerns the whole table
/// (a session's end, a closed file) or sends as many messages as the
/// ring takes: what one buffer costs does not grow with how many others
/// the connection has (docs/performance.md, scale).
pub struct Ledger<XT, IT, NT, FI = NoFences<InFence<()>>, FO = NoFences<OutFence>> {
    exports: XT,
    imports: IT,
    orphans: IT,
    /// An export of each local buffer, by identity: the older of two
    /// live ones.
    identities: NT,
    /// Export records the identity index does not name (second exports
    /// of a buffer): while there are any, a miss walks.
    shadowed: usize,
    /// The peer's fences on our imports, by id.
    fences_in: FI,
    /// Our fences on our exports, by id.
    fences_out: FO,
    /// Records in `fences_in` and `fences_out`.
    fences_in_held: usize,
    fences_out_held: usize,
    /// Records of `fences_out` in [`OutState::Unsent`].
    signals_unsent: usize,
    /// The id of our next fence: never reused while the ledger lives.
    next_fence: u64,
    /// No fence of the peer's times out before this (host clock).
    fence_deadline: Option<u64>,
    fence_timeout_ms: u64,
    /// The delayed unexports: how many exports have one scheduled, and
    /// none is due before `earliest`.
    unexports: Schedule,
    /// Records in `imports` and `orphans`: the admission count.
    imports_held: usize,
    /// Records with `release_unsent`.
    releases_unsent: usize,
    /// The numbers of the export records with `update_queued`, in the
    /// order their UPDATEs go.
    updates: Fifo,
    /// An UNEXPORT that was due found the ring full: the answers that make
    /// room send it ([`Ledger::send_due_unexports`]), and only then is the
    /// walk for due ones worth its cost on that path.
    unexports_blocked: bool,
    max_imports: usize,
}

/// The [`Host`] a [`Channel`] works on: a ledger and its sink.
pub struct View<'a, XT, IT, NT, FI, FO, S, G, F> {
    ledger: &'a mut Ledger<XT, IT, NT, FI, FO>,
    sink: &'a mut S,
    grants: PhantomData<(G, F)>,
}

/// The fence tables of a host that keeps no fences: always empty, and
/// every insertion fails (so every fence is refused).
pub struct NoFences<V>(PhantomData<V>);

impl<V> Default for NoFences<V> {
    fn default() -> Self {
        NoFences(PhantomData)
    }
}

impl<V> Table for NoFences<V> {
    type Value = V;

    fn get(&self, _key: u64) -> Option<&V> {
        None
    }

    fn get_mut(&mut self, _key: u64) -> Option<&mut V> {
        None
    }

    fn try_insert(&mut self, _key: u64, value: V) -> Result<(), V> {
        Err(value)
    }

    fn remove(&mut self, _key: u64) -> Option<V> {
        None
    }

    fn first(&self) -> Option<u64> {
        None
    }

    fn find(&self, _pred: impl FnMut(&V) -> bool) -> Option<u64> {
        None
    }

    fn for_each<'a>(&'a self, _f: impl FnMut(u64, &'a V)) {}

    fn for_each_mut(&mut self, _f: impl FnMut(u64, &mut V)) {}

    fn retain(&mut self, _keep: impl FnMut(&mut V) -> bool, _removed: impl FnMut(V)) {}
}

impl<G, L, F, XT, IT, NT, FI, FO> Ledger<XT, IT, NT, FI, FO>
where
    XT: Table<Value = ExportRecord<G>>,
    IT: Table<Value = ImportRecord<L>>,
    NT: Table<Value = u64>,
    FI: Table<Value = InFence<F>>,
    FO: Table<Value = OutFence>,
{
    /// An empty ledger over empty tables, admitting up to
    /// [`MAX_IMPORTS_PER_PEER`] imports.
    pub fn new(exports: XT, imports: IT, orphans: IT, identities: NT) -> Self
    where
        FI: Default,
        FO: Default,
    {
        Ledger {
            exports,
            imports,
            orphans,
            identities,
            shadowed: 0,
            fences_in: FI::default(),
            fences_out: FO::default(),
            fences_in_held: 0,
            fences_out_held: 0,
            signals_unsent: 0,
            next_fence: 1,
            fence_deadline: None,
            fence_timeout_ms: DEFAULT_FENCE_TIMEOUT_MS,
            unexports: Schedule::default(),
            imports_held: 0,
            releases_unsent: 0,
            updates: Fifo::default(),
            unexports_blocked: false,
            max_imports: MAX_IMPORTS_PER_PEER,
        }
    }

    /// The same, admitting up to `max` imports (a test's small limit).
    #[must_use]
    pub fn with_max_imports(mut self, max: usize) -> Self {
        self.max_imports = max;
        self
    }

    /// The same, timing the peer's fences out after `ms` milliseconds.
    #[must_use]
    pub fn with_fence_timeout(mut self, ms: u64) -> Self {
        self.fence_timeout_ms = ms;
        self
    }

    /// The channel's view of this ledger, with `sink` for the effects.
    pub fn view<'a, S: Sink<G, F>>(
        &'a mut self,
        sink: &'a mut S,
    ) -> View<'a, XT, IT, NT, FI, FO, S, G, F> {
        View {
            ledger: self,
            sink,
            grants: PhantomData,
        }
    }

    /// Our export `hid`.
    pub fn export(&self, hid: &HyperDmabufId) -> Option<&ExportRecord<G>> {
        self.exports
            .get(hid.number())
            .filter(|e| e.info.hid.matches(hid))
    }

    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportRecord<G>> {
        self.exports
            .get_mut(hid.number())
            .filter(|e| e.info.hid.matches(hid))
    }

    /// The import `hid`: of the current session, or an orphan.
    pub fn import(&self, hid: &HyperDmabufId) -> Option<&ImportRecord<L>> {
        match self.imports.get(hid.number()).filter(|e| e.is(hid)) {
            Some(e) => Some(e),
            None => self.orphans.get(orphan_key(hid)).filter(|e| e.is(hid)),
        }
    }

    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportRecord<L>> {
        let number = hid.number();
        if self.imports.get(number).is_some_and(|e| e.is(hid)) {
            return self.imports.get_mut(number);
        }
        self.orphans.get_mut(orphan_key(hid)).filter(|e| e.is(hid))
    }

    /// Calls `exports` on every export and `imports` on every import,
    /// orphans included.
    pub fn for_each<'a>(
        &'a self,
        exports: impl FnMut(u64, &'a ExportRecord<G>),
        mut imports: impl FnMut(&'a ImportRecord<L>),
    ) where
        G: 'a,
        L: 'a,
    {
        self.exports.for_each(exports);
        self.imports.for_each(|_, e| imports(e));
        self.orphans.for_each(|_, e| imports(e));
    }

    /// Imports held (orphans included): what the admission limit counts.
    pub fn imports_held(&self) -> usize {
        self.imports_held
    }

    /// RELEASEs waiting for room on the ring.
    pub fn releases_unsent(&self) -> usize {
        self.releases_unsent
    }

    /// UPDATEs waiting for room on the ring.
    pub fn updates_queued(&self) -> usize {
        self.updates.len()
    }

    /// Whether a due UNEXPORT found the ring full and waits for room.
    pub fn unexports_blocked(&self) -> bool {
        self.unexports_blocked
    }

    // ---- exports ----

    /// Records `record` and announces it on `channel` with `token`, with
    /// a fence of ours if `fenced` and the session speaks version 3. On
    /// failure the record is gone and its grants retired (the peer may
    /// map them already: grant references are enumerable).
    ///
    /// # Errors
    ///
    /// [`SendError::NoMemory`], [`SendError::RingFull`] (also when
    /// [`MAX_FENCES`] of ours are not yet signalled).
    pub fn announce<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
        mut record: ExportRecord<G>,
        token: u64,
        fenced: bool,
    ) -> Result<Sent, SendError> {
        let hid = record.info.hid;
        let fence = if fenced && channel.config().version >= VERSION_3 {
            match self.reserve_fence(&hid, OutState::Announced) {
                Some(fence) => Some(fence),
                None => {
                    sink.retire(record.grants);
                    return Err(SendError::RingFull);
                }
            }
        } else {
            None
        };
        record.info.fence = fence;
        let info = record.info;
        if let Err(e) = self.record_export(sink, record) {
            if let Some(f) = fence {
                self.forget_fence(f);
            }
            return Err(e);
        }
        let sent = channel.announce(info, Some(token));
        sink.sent(sent.is_ok());
        match sent {
            Ok(notify) => Ok(Sent { notify, fence }),
            Err(_) => {
                if let Some(f) = fence {
                    self.forget_fence(f);
                }
                self.end_export(sink, &hid);
                Err(SendError::RingFull)
            }
        }
    }

    /// Records `record` without announcing it: the first half of
    /// [`Ledger::announce`] (and all of a test's hostile exporter's).
    ///
    /// # Errors
    ///
    /// [`SendError::NoMemory`]; the grants were retired.
    pub fn record_export(
        &mut self,
        sink: &mut impl Sink<G, F>,
        record: ExportRecord<G>,
    ) -> Result<(), SendError> {
        let number = record.info.hid.number();
        // Numbers are never reused; should one be, the old export is
        // retired, not dropped.
        if let Some(old) = self.exports.remove(number) {
            self.export_dropped(sink, old);
        }
        // The identity's entry first: once the export's node is had too,
        // nothing can fail. An entry naming a live export of the same
        // buffer (two files exported it at the same time) keeps naming
        // it, and the new record is found by a walk (`shadowed`).
        let identity = record.identity as u64;
        let before = self.identities.get(identity).copied();
        let older_live = before.is_some_and(|n| {
            self.exports
                .get(n)
                .is_some_and(|e| e.reexportable(record.identity))
        });
        let mut record = record;
        record.indexed = !older_live;
        if record.indexed {
            if let Some(slot) = self.identities.get_mut(identity) {
                *slot = number;
            } else if self.identities.try_insert(identity, number).is_err() {
                sink.retire(record.grants);
                return Err(SendError::NoMemory);
            }
        }
        let indexed = record.indexed;
        if let Err(record) = self.exports.try_insert(number, record) {
            if indexed {
                match before {
                    Some(older) => {
                        if let Some(slot) = self.identities.get_mut(identity) {
                            *slot = older;
                        }
                    }
                    None => {
                        self.identities.remove(identity);
                    }
                }
            }
            sink.retire(record.grants);
            return Err(SendError::NoMemory);
        }
        if !indexed {
            self.shadowed += 1;
        }
        sink.gauge(Gauge::Exports, true);
        Ok(())
    }

    fn end_export(&mut self, sink: &mut impl Sink<G, F>, hid: &HyperDmabufId) {
        if self.export(hid).is_none() {
            return;
        }
        if let Some(record) = self.exports.remove(hid.number()) {
            self.export_dropped(sink, record);
        }
    }

    /// Accounts for a record taken out of `exports` and retires its
    /// grants.
    fn export_dropped(&mut self, sink: &mut impl Sink<G, F>, record: ExportRecord<G>) {
        sink.gauge(Gauge::Exports, false);
        let identity = record.identity as u64;
        if !record.indexed {
            self.shadowed -= 1;
        } else if self.identities.get(identity) == Some(&record.info.hid.number()) {
            self.identities.remove(identity);
            if self.shadowed > 0 {
                self.index_shadow_of(record.identity);
            }
        }
        self.unexports.dropped(record.unexport_at);
        if record.update_queued {
            self.updates.remove(record.info.hid.number());
        }
        if let Some(fence) = record.queued_fence {
            drop_queued_fence(&mut self.fences_out, &mut self.fences_out_held, fence);
        }
        sink.retire(record.grants);
    }

    /// The indexed export of `identity` is gone: the oldest export of the
    /// same buffer it shadowed, if any, takes its place, found by one
    /// walk now rather than one per look-up for as long as it lives.
    /// Without memory for the entry it stays shadowed.
    fn index_shadow_of(&mut self, identity: usize) {
        let Some(number) = self.exports.find(|e| !e.indexed && e.identity == identity) else {
            return;
        };
        if self.identities.try_insert(identity as u64, number).is_ok() {
            if let Some(e) = self.exports.get_mut(number) {
                e.indexed = true;
                self.shadowed -= 1;
            }
        }
    }

    /// Our live export of the local buffer `identity` (one not being
    /// unexported), if there is one: its id. Of two exports of one buffer
    /// (two files exported it at the same time), the older.
    pub fn export_of_identity(&self, identity: usize) -> Option<HyperDmabufId> {
        let indexed = self
            .identities
            .get(identity as u64)
            .and_then(|&number| self.exports.get(number))
            .filter(|e| e.reexportable(identity));
        if let Some(e) = indexed {
            return Some(e.info.hid);
        }
        if self.shadowed == 0 {
            return None;
        }
        // Two exports of one buffer at once, the older gone: a walk.
        let key = self.exports.find(|e| e.reexportable(identity))?;
        self.exports.get(key).map(|e| e.info.hid)
    }

    /// A new frame in our export `hid`: it takes the frame's private data,
    /// a delayed unexport not yet due is cancelled, and the peer is sent an
    /// UPDATE, now if the ring has room to spare and no earlier UPDATE
    /// waits, else once [`Ledger::flush_updates`] reaches it. An UPDATE of
    /// the same buffer still waiting is replaced (with its fence, which
    /// the peer never hears of), and the buffer takes the last place: the
    /// peer hears the updates in the order they were made, and never an
    /// older frame of a buffer after a newer one. If the frame is fenced
    /// and the session speaks version 3, it carries a new fence of ours,
    /// whose id is returned.
    ///
    /// `flags`, if given, must be the export's (a re-export's check).
    ///
    /// # Errors
    ///
    /// Nothing changes on these: [`UpdateRefusal::NotFound`] if we export
    /// no such buffer; [`UpdateRefusal::NotOwner`] if `file` may not
    /// manage it ([`uapi::may_manage_export`]); then
    /// [`UpdateRefusal::NotFound`] if it is being unexported (its file
    /// closed, or an unexport due at `now`); [`UpdateRefusal::OtherFlags`];
    /// [`UpdateRefusal::TooManyFences`]; [`UpdateRefusal::QueueFull`] if it
    /// would wait and a ring's worth of other buffers wait already.
    /// [`UpdateRefusal::NotConnected`] without a channel: the export took
    /// the private data all the same, and the peer hears nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn update<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: Option<&mut Channel<M, P>>,
        sink: &mut impl Sink<G, F>,
        hid: &HyperDmabufId,
        file: FileRights,
        flags: Option<ExportFlags>,
        frame: Frame,
        now: u64,
    ) -> Result<Sent, UpdateRefusal> {
        let key = hid.number();
        let record = self
            .exports
            .get(key)
            .filter(|e| e.info.hid.matches(hid))
            .ok_or(UpdateRefusal::NotFound)?;
        // Whose it is first: another file learns nothing of its state.
        if !uapi::may_manage_export(record.owner, file.file, file.admin) {
            return Err(UpdateRefusal::NotOwner);
        }
        if !record.updatable_at(now) {
            return Err(UpdateRefusal::NotFound);
        }
        if flags.is_some_and(|f| f != record.info.flags) {
            return Err(UpdateRefusal::OtherFlags);
        }
        let hot = self.updates.is_empty() && channel.as_ref().is_some_and(|c| update_room(c));
        let fenced = frame.fenced
            && channel
                .as_ref()
                .is_some_and(|c| c.config().version >= VERSION_3);
        let fence = if fenced {
            let state = if hot {
                OutState::Announced
            } else {
                OutState::Queued
            };
            Some(
                self.reserve_fence(hid, state)
                    .ok_or(UpdateRefusal::TooManyFences)?,
            )
        } else {
            None
        };
        if !hot && channel.is_some() && self.updates.push_back(key).is_err() {
            if let Some(f) = fence {
                self.forget_fence(f);
            }
            return Err(UpdateRefusal::QueueFull);
        }
        if let Some(record) = self.exports.get_mut(key) {
            record.info.priv_data = frame.priv_data;
            self.unexports.set(&mut record.unexport_at, None);
        }
        let Some(channel) = channel else {
            return Err(UpdateRefusal::NotConnected);
        };
        if hot {
            let message = Message::Update {
                hid: *hid,
                priv_data: frame.priv_data,
                fence,
            };
            if let Ok(notify) = channel.send(message, None) {
                sink.sent(true);
                return Ok(Sent { notify, fence });
            }
            // `update_room` said there was room; should the channel
            // refuse anyway, the frame waits.
            if self.updates.push_back(key).is_err() {
                if let Some(f) = fence {
                    self.forget_fence(f);
                }
                return Err(UpdateRefusal::QueueFull);
            }
            if let Some(f) = fence.and_then(|f| self.fences_out.get_mut(f.get())) {
                f.state = OutState::Queued;
            }
        }
        if let Some(record) = self.exports.get_mut(key) {
            record.update_queued = true;
            let replaced = core::mem::replace(&mut record.queued_fence, fence);
            if let Some(old) = replaced {
                drop_queued_fence(&mut self.fences_out, &mut self.fences_out_held, old);
            }
        }
        sink.sent(false);
        let notify = self.flush_updates(channel, sink, now);
        Ok(Sent { notify, fence })
    }

    /// Sends the UPDATEs that wait, in the order they were made, while the
    /// ring has room to spare; drops those of buffers being unexported.
    /// Returns whether to notify the peer.
    pub fn flush_updates<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
        now: u64,
    ) -> bool {
        let mut notify = false;
        while update_room(channel) {
            let Some(key) = self.updates.pop_front() else {
                break;
            };
            let Some(record) = self.exports.get_mut(key) else {
                continue;
            };
            record.update_queued = false;
            let queued_fence = record.queued_fence.take();
            let (hid, priv_data) = (record.info.hid, record.info.priv_data);
            if !record.updatable_at(now) {
                // Unexported since, or about to be: the frame is moot, and
                // an UPDATE must not follow the UNEXPORT.
                if let Some(fence) = queued_fence {
                    drop_queued_fence(&mut self.fences_out, &mut self.fences_out_held, fence);
                }
                continue;
            }
            let fence = queued_fence.and_then(|f| self.fence_for_frame(f));
            let message = Message::Update {
                hid,
                priv_data,
                fence,
            };
            match channel.send(message, None) {
                Ok(n) => {
                    sink.sent(true);
                    notify |= n;
                    if let Some(fence) = fence {
                        self.fence_announced(fence);
                    }
                }
                Err(_) => {
                    // `update_room` said there was room; should the
                    // channel refuse anyway, the frame keeps its place.
                    sink.sent(false);
                    let queued = self.updates.push_front(key).is_ok();
                    if let Some(record) = self.exports.get_mut(key) {
                        record.update_queued = queued;
                        record.queued_fence = fence.filter(|_| queued);
                    }
                    if let (false, Some(fence)) = (queued, fence) {
                        drop_queued_fence(&mut self.fences_out, &mut self.fences_out_held, fence);
                    }
                    break;
                }
            }
        }
        if self.signals_unsent > 0 {
            notify |= self.flush_signals(channel, sink);
        }
        notify
    }

    // ---- our fences ----

    /// A new fence of ours on `hid`, in `state`: `None` when
    /// [`MAX_FENCES`] are held or there is no memory.
    fn reserve_fence(&mut self, hid: &HyperDmabufId, state: OutState) -> Option<FenceId> {
        if self.fences_out_held >= MAX_FENCES {
            return None;
        }
        let id = FenceId::new(self.next_fence).ok()?;
        let fence = OutFence { hid: *hid, state };
        self.fences_out.try_insert(id.get(), fence).ok()?;
        // Never zero, never reused: 2^64 fences do not happen.
        self.next_fence = self.next_fence.wrapping_add(1).max(1);
        self.fences_out_held += 1;
        Some(id)
    }

    fn forget_fence(&mut self, id: FenceId) {
        if let Some(fence) = self.fences_out.remove(id.get()) {
            self.fences_out_held -= 1;
            if matches!(fence.state, OutState::Unsent(_)) {
                self.signals_unsent -= 1;
            }
        }
    }

    /// The fence a queued frame carries when it goes: none if its fence
    /// signalled meanwhile (the frame is ready), else the fence.
    fn fence_for_frame(&mut self, id: FenceId) -> Option<FenceId> {
        match self.fences_out.get(id.get())?.state {
            OutState::QueuedEnded(FenceResult::Signalled) => {
                self.forget_fence(id);
                None
            }
            _ => Some(id),
        }
    }

    /// The frame carrying fence `id` is on the ring: the peer holds it.
    fn fence_announced(&mut self, id: FenceId) {
        let Some(fence) = self.fences_out.get_mut(id.get()) else {
            return;
        };
        match fence.state {
            OutState::QueuedEnded(result) => {
                fence.state = OutState::Unsent(result);
                self.signals_unsent += 1;
            }
            _ => fence.state = OutState::Announced,
        }
    }

    /// Our fence `id` signalled (`result` says how): the peer is sent
    /// SIGNAL if it holds the fence, now if the ring has room, else by
    /// [`Ledger::flush_signals`]. An id we do not hold (of an ended
    /// session, or ended already) is ignored. Returns whether to notify
    /// the peer.
    pub fn fence_signalled<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: Option<&mut Channel<M, P>>,
        sink: &mut impl Sink<G, F>,
        id: FenceId,
        result: FenceResult,
    ) -> bool {
        let Some(fence) = self.fences_out.get_mut(id.get()) else {
            return false;
        };
        match fence.state {
            OutState::Queued => {
                fence.state = OutState::QueuedEnded(result);
                false
            }
            OutState::Announced => {
                let hid = fence.hid;
                if let Some(channel) = channel.filter(|c| c.can_send()) {
                    let message = Message::Signal {
                        hid,
                        fence: id,
                        result,
                    };
                    if let Ok(notify) = channel.send(message, None) {
                        sink.sent(true);
                        self.forget_fence(id);
                        return notify;
                    }
                }
                sink.sent(false);
                fence.state = OutState::Unsent(result);
                self.signals_unsent += 1;
                false
            }
            OutState::Dropped => {
                self.forget_fence(id);
                false
            }
            OutState::QueuedEnded(_) | OutState::Unsent(_) => false,
        }
    }

    /// Sends the SIGNALs that found the ring full, while it has room.
    /// Returns whether to notify the peer.
    pub fn flush_signals<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
    ) -> bool {
        let mut notify = false;
        while self.signals_unsent > 0 && channel.can_send() {
            let Some(key) = self
                .fences_out
                .find(|f| matches!(f.state, OutState::Unsent(_)))
            else {
                break;
            };
            let (Some(fence), Ok(id)) = (self.fences_out.get(key), FenceId::new(key)) else {
                break;
            };
            let OutState::Unsent(result) = fence.state else {
                break;
            };
            let message = Message::Signal {
                hid: fence.hid,
                fence: id,
                result,
            };
            match channel.send(message, None) {
                Ok(n) => {
                    sink.sent(true);
                    notify |= n;
                    self.forget_fence(id);
                }
                Err(_) => {
                    sink.sent(false);
                    break;
                }
            }
        }
        notify
    }

    /// Fences of ours not yet signalled or whose SIGNAL is not yet sent.
    pub fn fences_out_held(&self) -> usize {
        self.fences_out_held
    }

    /// SIGNALs waiting for room on the ring.
    pub fn signals_unsent(&self) -> usize {
        self.signals_unsent
    }

    // ---- the peer's fences ----

    /// Fences of the peer's not yet ended.
    pub fn fences_in_held(&self) -> usize {
        self.fences_in_held
    }

    /// No fence of the peer's times out before this (host clock), if it
    /// holds any: when [`Ledger::tick`] must run.
    pub fn fence_deadline(&self) -> Option<u64> {
        self.fence_deadline
    }

    /// Calls `f` on each local fence standing for one of the peer's on
    /// `hid`: what a new dma-buf of that import starts with.
    pub fn peer_fences(&self, hid: &HyperDmabufId, mut f: impl FnMut(&F)) {
        self.fences_in.for_each(|_, fence| {
            if fence.hid.matches(hid) {
                f(&fence.handle);
            }
        });
    }

    /// Ends, with [`FenceEnd::TimedOut`], the peer's fences whose deadline
    /// is past at `now`; returns the next deadline.
    fn expire_fences(&mut self, sink: &mut impl Sink<G, F>, now: u64) -> Option<u64> {
        match self.fence_deadline {
            Some(due) if due <= now => {}
            later => return later,
        }
        let mut next: Option<u64> = None;
        let mut ended = 0;
        self.fences_in.retain(
            |f| {
                if f.deadline <= now {
                    return false;
                }
                next = Some(next.map_or(f.deadline, |n| n.min(f.deadline)));
                true
            },
            |f| {
                sink.fence_end(f.handle, FenceEnd::TimedOut);
                ended += 1;
            },
        );
        self.fences_in_held -= ended;
        self.fence_deadline = next;
        next
    }

    /// Whether we export the local buffer `identity` and it is not being
    /// unexported (so an export of it is an update).
    pub fn exports_identity(&self, identity: usize) -> bool {
        self.export_of_identity(identity).is_some()
    }

    /// Schedules the unexport of `hid` at `due` (host clock); one already
    /// under way is left alone. `false` if we export no such buffer.
    pub fn schedule_unexport(&mut self, hid: &HyperDmabufId, due: u64) -> bool {
        let Some(record) = self
            .exports
            .get_mut(hid.number())
            .filter(|e| e.info.hid.matches(hid))
        else {
            return false;
        };
        if !record.state.unexported() {
            self.unexports.set(&mut record.unexport_at, Some(due));
        }
        true
    }

    /// Unexports `hid` now: its UNEXPORT goes at once if the ring has
    /// room and no earlier one waits for it, found by its number (what
    /// it costs does not grow with the exports); otherwise it is due at
    /// `now` and the next [`Ledger::tick`] sends it. `None` if we export
    /// no such buffer.
    pub fn unexport_now<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: Option<&mut Channel<M, P>>,
        sink: &mut impl Sink<G, F>,
        hid: &HyperDmabufId,
        now: u64,
    ) -> Option<Unexporting> {
        let record = self.export(hid)?;
        if record.state.unexported() {
            return Some(Unexporting::Sent { notify: false });
        }
        if let Some(channel) = channel.filter(|_| !self.unexports_blocked) {
            if let Ok(notify) = self.revoke_export(channel, sink, hid.number()) {
                return Some(Unexporting::Sent { notify });
            }
            self.unexports_blocked = true;
        }
        self.schedule_unexport(hid, now);
        Some(Unexporting::Due)
    }

    /// Schedules, at `now`, the unexport of every buffer the file `owner`
    /// exported (it was closed).
    pub fn unexport_owned_by(&mut self, owner: u64, now: u64) {
        let updates = &mut self.updates;
        let unexports = &mut self.unexports;
        let (fences, held) = (&mut self.fences_out, &mut self.fences_out_held);
        self.exports.for_each_mut(|key, e| {
            if e.owner == owner && !e.state.unexported() {
                unexports.set(&mut e.unexport_at, Some(now));
                e.owner_closed = true;
                // Its frames are moot now.
                if core::mem::take(&mut e.update_queued) {
                    updates.remove(key);
                }
                if let Some(fence) = e.queued_fence.take() {
                    drop_queued_fence(fences, held, fence);
                }
            }
        });
    }

    /// The timed work at `now`: sends the UNEXPORTs that are due, the
    /// RELEASEs that found the ring full and the UPDATEs that wait, as far
    /// as the ring has room. Without a channel (not connected) nothing is
    /// sent and only the schedule is reported.
    pub fn tick<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: Option<&mut Channel<M, P>>,
        sink: &mut impl Sink<G, F>,
        now: u64,
    ) -> Tick {
        let mut tick = Tick {
            next: self.expire_fences(sink, now),
            ..Tick::default()
        };
        let mut any_due = false;
        if self.unexports.maybe_due(now) {
            // The walk finds the due ones and how long the rest wait.
            let mut later: Option<u64> = None;
            self.exports.for_each(|_, e| match e.unexport_at {
                Some(at) if at > now => later = Some(later.map_or(at, |l| l.min(at))),
                Some(_) => any_due = true,
                None => {}
            });
            // Until the due ones are sent, one is due now.
            self.unexports.earliest = if any_due { Some(now) } else { later };
            if let Some(at) = later {
                tick.next = Some(tick.next.map_or(at, |n| n.min(at)));
            }
        } else if let Some(at) = self.unexports.earliest {
            tick.next = Some(tick.next.map_or(at, |n| n.min(at)));
        }
        let Some(channel) = channel else {
            return tick;
        };
        let (notify, blocked) = if any_due {
            self.send_due_unexports(channel, sink, now)
        } else {
            self.unexports_blocked = false;
            (false, false)
        };
        tick.notify |= notify;
        // A notification owed (a MAPPED's, or answers nobody waits for),
        // if nothing paid it meanwhile (a backstop for the driver's timer).
        tick.notify |= channel.take_notify_owed();
        tick.notify |= self.flush_releases(channel, sink);
        tick.notify |= self.flush_signals(channel, sink);
        tick.notify |= self.flush_updates(channel, sink, now);
        if blocked
            || self.releases_unsent > 0
            || self.signals_unsent > 0
            || !self.updates.is_empty()
        {
            tick.next = Some(tick.next.map_or(now + RETRY_MS, |n| n.min(now + RETRY_MS)));
        }
        tick
    }

    /// Sends the UNEXPORTs due at `now`, smallest number first, while the
    /// ring has room: before any waiting UPDATE, so that a stream of frames
    /// can never hold a revocation back. Returns whether to notify the
    /// peer, and whether one is still due (the ring is full).
    pub fn send_due_unexports<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
        now: u64,
    ) -> (bool, bool) {
        let mut notify = false;
        // A batch of keys per walk: a revoke changes the record, so no
        // borrow of the table is held across it.
        let mut after = None;
        loop {
            let mut keys = [0u64; BATCH];
            let mut found = 0;
            self.exports.for_each(|key, e| {
                let later = after.map_or(true, |a| key > a);
                if found < BATCH && later && e.unexport_due(now) {
                    keys[found] = key;
                    found += 1;
                }
            });
            for &key in &keys[..found] {
                after = Some(key);
                match self.revoke_export(channel, sink, key) {
                    Ok(n) => notify |= n,
                    Err(()) => {
                        self.unexports_blocked = true;
                        return (notify, true);
                    }
                }
            }
            if found < BATCH {
                break;
            }
        }
        self.unexports_blocked = false;
        (notify, false)
    }

    /// Sends the UNEXPORT of our export `key`; its schedule, queued frame
    /// and that frame's fence end. Whether to notify the peer, or `Err`
    /// when the ring is full.
    fn revoke_export<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
        key: u64,
    ) -> Result<bool, ()> {
        let Some(hid) = self.exports.get(key).map(|e| e.info.hid) else {
            return Ok(false);
        };
        let Ok(notify) = channel.revoke(&mut self.view(sink), &hid, None) else {
            sink.sent(false);
            return Err(());
        };
        sink.sent(true);
        sink.unexporting(&hid);
        if let Some(e) = self.exports.get_mut(key) {
            self.unexports.set(&mut e.unexport_at, None);
            if core::mem::take(&mut e.update_queued) {
                self.updates.remove(key);
            }
            if let Some(fence) = e.queued_fence.take() {
                drop_queued_fence(&mut self.fences_out, &mut self.fences_out_held, fence);
            }
        }
        Ok(notify)
    }

    // ---- imports ----

    /// The first step of an import ioctl, writable if asked: reuse the
    /// live buffer, or claim the import for mapping.
    ///
    /// # Errors
    ///
    /// [`ImportRefusal`].
    pub fn import_begin(
        &mut self,
        hid: &HyperDmabufId,
        writable: bool,
    ) -> Result<ImportStep<'_, L>, ImportRefusal> {
        let record = self
            .imports
            .get_mut(hid.number())
            .filter(|e| e.is(hid))
            .ok_or(ImportRefusal::NotFound)?;
        if record.orphaned || record.state.revoked() {
            return Err(ImportRefusal::NotFound);
        }
        if matches!(record.claim, Claim::Unmapping) {
            // Its last mapping waits for a held page (docs/uapi.md).
            return Err(ImportRefusal::Busy);
        }
        if writable && !record.state.export.flags.contains(ExportFlags::WRITABLE) {
            return Err(ImportRefusal::NotWritable);
        }
        if matches!(record.claim, Claim::Idle) {
            record.claim = Claim::Mapping;
            return Ok(ImportStep::Map(&record.state.export));
        }
        let size = record.state.export.size;
        match &mut record.claim {
            // Mapped read-only by another user; one mapping per buffer.
            Claim::Live {
                writable: false, ..
            } if writable => Err(ImportRefusal::Busy),
            Claim::Live { handle, writable } => Ok(ImportStep::Reuse {
                handle,
                size,
                writable: *writable,
            }),
            // Another ioctl maps it.
            Claim::Idle | Claim::Mapping | Claim::Unmapping => Err(ImportRefusal::Busy),
        }
    }

    /// The import claimed by [`Ledger::import_begin`] is mapped: tell the
    /// exporter (MAPPED). It stays claimed until [`Ledger::import_live`].
    /// The notification is owed: if [`Channel::notify_owed`] says so the
    /// caller pays it within
    /// [`NOTICE_DELAY_MS`](super::channel::NOTICE_DELAY_MS)
    /// ([`Channel::take_notify_owed`]; [`Ledger::tick`] pays it too).
    ///
    /// # Errors
    ///
    /// [`MappedError`]; nothing was sent.
    pub fn import_mapped<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
        hid: &HyperDmabufId,
    ) -> Result<(), MappedError> {
        let current = self.imports.get(hid.number()).filter(|e| e.is(hid));
        match current {
            Some(e) if !e.ended() => {}
            _ => return Err(MappedError::NotFound),
        }
        let sent = channel.import_mapped(&mut self.view(sink), hid);
        sink.sent(sent.is_ok());
        // Besides a full ring, the channel refuses while the RELEASE of
        // the previous mapping waits for room: both pass.
        sent.map_err(|_| MappedError::Again)
    }

    /// The import `hid` has a live local buffer, `handle`; the claim of
    /// the ioctl that mapped it ends.
    pub fn import_live(&mut self, hid: &HyperDmabufId, handle: L, writable: bool) {
        if let Some(record) = self.import_mut(hid) {
            record.claim = Claim::Live { handle, writable };
        }
    }

    /// The live buffer of import `hid` (of this session or an ended one).
    pub fn live_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut L> {
        match &mut self.import_mut(hid)?.claim {
            Claim::Live { handle, .. } => Some(handle),
            _ => None,
        }
    }

    /// The import claimed by [`Ledger::import_begin`] failed. If its
    /// session ended meanwhile, the teardown kept it only for this ioctl:
    /// nothing maps it, so it goes now.
    pub fn import_abort(&mut self, sink: &mut impl Sink<G, F>, hid: &HyperDmabufId) {
        let Some(record) = self.import_mut(hid) else {
            return;
        };
        if matches!(record.claim, Claim::Mapping) {
            record.claim = Claim::Idle;
        }
        if record.orphaned && !record.claimed() {
            self.forget(sink, hid);
        }
    }

    /// The live buffer of import `hid` is released but a page is still
    /// held: it cannot be imported again until [`Ledger::import_released`].
    /// Returns the handle it had.
    pub fn import_unmapping(&mut self, hid: &HyperDmabufId) -> Option<L> {
        let record = self.import_mut(hid)?;
        match core::mem::replace(&mut record.claim, Claim::Unmapping) {
            Claim::Live { handle, .. } => Some(handle),
            _ => None,
        }
    }

    /// The last user of import `hid` let go and its pages are unmapped:
    /// an orphan is forgotten, otherwise the exporter is told (RELEASE),
    /// now or, if the ring is full or the connection down, by a later
    /// [`Ledger::flush_releases`].
    pub fn import_released<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: Option<&mut Channel<M, P>>,
        sink: &mut impl Sink<G, F>,
        hid: &HyperDmabufId,
    ) -> Released {
        let Some(record) = self.import_mut(hid) else {
            return Released::Unknown;
        };
        record.claim = Claim::Idle;
        if record.orphaned {
            self.forget(sink, hid);
            return Released::Forgotten;
        }
        if let Some(channel) = channel {
            match channel.import_unmapped(&mut self.view(sink), hid) {
                Ok(notify) => {
                    sink.sent(true);
                    return Released::Sent(notify);
                }
                Err(Error::RingFull) => sink.sent(false),
                // Not mapped in the protocol's view: nothing to tell.
                Err(_) => return Released::Sent(false),
            }
        }
        if let Some(record) = self.import_mut(hid) {
            if !record.release_unsent {
                record.release_unsent = true;
                self.releases_unsent += 1;
            }
        }
        Released::Queued
    }

    /// Sends the RELEASEs that found the ring full, smallest number first,
    /// while it has room. Returns whether to notify the peer.
    pub fn flush_releases<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
    ) -> bool {
        let mut notify = false;
        // A batch of keys per walk, as for due UNEXPORTs.
        while self.releases_unsent > 0 && channel.can_send() {
            let mut keys = [0u64; BATCH];
            let mut found = 0;
            self.imports.for_each(|key, e| {
                if found < BATCH && e.release_unsent {
                    keys[found] = key;
                    found += 1;
                }
            });
            if found == 0 {
                break;
            }
            for &key in &keys[..found] {
                if !channel.can_send() {
                    return notify;
                }
                let Some(record) = self.imports.get_mut(key) else {
                    continue;
                };
                record.release_unsent = false;
                self.releases_unsent -= 1;
                let hid = record.state.export.hid;
                // An import revoked and forgotten meanwhile has nothing to
                // send: `BadId`.
                if let Ok(n) = channel.import_unmapped(&mut self.view(sink), &hid) {
                    sink.sent(true);
                    notify |= n;
                }
            }
        }
        notify
    }

    /// The buffers a reader opened now may import: every import of the
    /// current session that is not revoked.
    pub fn announced(&self, mut f: impl FnMut(&Export)) {
        self.imports.for_each(|_, e| {
            if !e.orphaned && !e.state.revoked() {
                f(&e.state.export);
            }
        });
    }

    fn forget(&mut self, sink: &mut impl Sink<G, F>, hid: &HyperDmabufId) {
        let number = hid.number();
        let gone = if self.imports.get(number).is_some_and(|e| e.is(hid)) {
            self.imports.remove(number)
        } else {
            let key = orphan_key(hid);
            if self.orphans.get(key).is_some_and(|e| e.is(hid)) {
                self.orphans.remove(key)
            } else {
                None
            }
        };
        if let Some(record) = gone {
            self.dropped(sink, &record);
        }
    }

    /// Accounts for a record taken out of `imports` or `orphans`.
    fn dropped(&mut self, sink: &mut impl Sink<G, F>, record: &ImportRecord<L>) {
        sink.forgotten(&record.state.export.hid);
        sink.gauge(Gauge::Imports, false);
        self.imports_held -= 1;
        if record.release_unsent {
            self.releases_unsent -= 1;
        }
    }

    // ---- the session ----

    /// The session ended (the peer closed or died, or broke the ring):
    /// `channel`'s waiting requests fail, every export ends (grants the
    /// peer still maps drain until it unmaps them), imports nobody holds
    /// are forgotten and held ones are orphaned until their users let go.
    /// Readers hear [`EventType::Unexport`] for each import and then
    /// [`EventType::PeerDisconnected`].
    pub fn detach<M: SharedMem, P: PendingTable>(
        &mut self,
        channel: &mut Channel<M, P>,
        sink: &mut impl Sink<G, F>,
    ) {
        let peer = channel.peer();
        channel.disconnect(&mut self.view(sink));
        while let Some(key) = self.exports.first() {
            if let Some(record) = self.exports.remove(key) {
                self.export_dropped(sink, record);
            }
        }
        // Our fences: the peer is gone, and the host stops watching them.
        self.fences_out.retain(|_| false, |_| {});
        self.fences_out_held = 0;
        self.signals_unsent = 0;
        // Its fences: no SIGNAL will come.
        self.fences_in
            .retain(|_| false, |f| sink.fence_end(f.handle, FenceEnd::PeerGone));
        self.fences_in_held = 0;
        self.fence_deadline = None;
        let mut forgotten = 0;
        let mut unsent = 0;
        self.imports.retain(
            |e| {
                if !e.orphaned {
                    let export = &e.state.export;
                    sink.event(
                        Event::about_import(EventType::Unexport, peer, export, PrivData::EMPTY),
                        None,
                    );
                }
                if e.release_unsent {
                    e.release_unsent = false;
                    unsent += 1;
                }
                e.orphaned = true;
                let held = e.claimed();
                if !held {
                    sink.forgotten(&e.state.export.hid);
                }
                held
            },
            |_| forgotten += 1,
        );
        self.releases_unsent -= unsent;
        self.imports_held -= forgotten;
        for _ in 0..forgotten {
            sink.gauge(Gauge::Imports, false);
        }
        sink.event(Event::about_peer(EventType::PeerDisconnected, peer), None);
    }

    /// Admission of a buffer the peer announced (the channel checked the
    /// message itself).
    fn admit(&mut self, sink: &mut impl Sink<G, F>, import: ImportState) -> Result<(), Status> {
        if self.imports_held >= self.max_imports {
            return Err(Status::NoSpace);
        }
        let hid = import.export.hid;
        let number = hid.number();
        // A full id stays unique across sessions, or an ended session's
        // release would find the new buffer: a peer that announces one of
        // its old ids again is refused.
        if self
            .orphans
            .get(orphan_key(&hid))
            .is_some_and(|e| e.is(&hid))
        {
            return Err(Status::Exists);
        }
        let adopt = match self.imports.get(number) {
            None => None,
            Some(old) if old.is(&hid) || !old.orphaned => return Err(Status::Exists),
            // Of a session that ended: it makes way for the new instance's.
            Some(old) => Some(orphan_key(&old.state.export.hid)),
        };
        let record = ImportRecord::new(import);
        if let Some(key) = adopt {
            // The new record takes the old one's place by a swap, so that
            // once the orphan's node is had nothing can fail and no record
            // is lost. An orphan under the same key already: refused.
            if self.orphans.get(key).is_some() {
                return Err(Status::Exists);
            }
            self.orphans
                .try_insert(key, record)
                .map_err(|_| Status::NoMemory)?;
            if let (Some(current), Some(orphan)) =
                (self.imports.get_mut(number), self.orphans.get_mut(key))
            {
                core::mem::swap(current, orphan);
            }
        } else {
            self.imports
                .try_insert(number, record)
                .map_err(|_| Status::NoMemory)?;
        }
        self.imports_held += 1;
        sink.gauge(Gauge::Imports, true);
        sink.announced(&import.export);
        Ok(())
    }
}

/// Why [`Ledger::import_mapped`] failed; nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappedError {
    /// The import was revoked or forgotten meanwhile, or the connection
    /// is down (`ENOENT`).
    NotFound,
    /// The ring has no room now (`EAGAIN`).
    Again,
}

impl<'v, G: 'v, L: 'v, F: 'v, XT, IT, NT, FI, FO, S> Host for View<'v, XT, IT, NT, FI, FO, S, G, F>
where
    XT: Table<Value = ExportRecord<G>>,
    IT: Table<Value = ImportRecord<L>>,
    NT: Table<Value = u64>,
    FI: Table<Value = InFence<F>>,
    FO: Table<Value = OutFence>,
    S: Sink<G, F>,
{
    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportState> {
        self.ledger.export_mut(hid).map(|e| &mut e.state)
    }

    fn end_export(&mut self, hid: &HyperDmabufId) {
        self.ledger.end_export(self.sink, hid);
    }

    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportState> {
        // The current session's only: an ended session's buffer is no
        // longer the peer's to update, revoke or announce again.
        self.ledger
            .imports
            .get_mut(hid.number())
            .filter(|e| e.is(hid) && !e.orphaned)
            .map(|e| &mut e.state)
    }

    fn add_import(&mut self, import: ImportState) -> Result<(), Status> {
        self.ledger.admit(self.sink, import)
    }

    fn remove_import(&mut self, hid: &HyperDmabufId) {
        let number = hid.number();
        if self.ledger.imports.get(number).is_some_and(|e| e.is(hid)) {
            if let Some(record) = self.ledger.imports.remove(number) {
                self.ledger.dropped(self.sink, &record);
            }
        }
    }

    fn post_event(&mut self, event: Event) {
        if !uapi::is_export_event(event.kind) {
            self.sink.event(event, None);
            return;
        }
        // About one of our exports: for the file that exported it, if it
        // still exists.
        let owner = event
            .hid
            .and_then(|hid| self.ledger.export(&hid).map(|e| e.owner));
        if owner.is_some() {
            self.sink.event(event, owner);
        }
    }

    fn complete(&mut self, token: u64, status: Status) {
        self.sink.complete(token, status);
    }

    fn protocol_error(&mut self, error: Error) {
        self.sink.protocol_error(error);
    }

    fn admit_fence(&mut self, fence: FenceId) -> Result<(), Status> {
        if self.ledger.fences_in.get(fence.get()).is_some() {
            return Err(Status::Exists);
        }
        if self.ledger.fences_in_held >= MAX_FENCES {
            return Err(Status::NoSpace);
        }
        Ok(())
    }

    fn attach_fence(&mut self, hid: &HyperDmabufId, fence: FenceId) -> Result<(), Status> {
        self.admit_fence(fence)?;
        let handle = self.sink.fence_new(hid).ok_or(Status::NoMemory)?;
        let ledger = &mut *self.ledger;
        let deadline = self.sink.now_ms().saturating_add(ledger.fence_timeout_ms);
        let record = InFence {
            hid: *hid,
            deadline,
            handle,
        };
        if let Err(record) = ledger.fences_in.try_insert(fence.get(), record) {
            self.sink.fence_end(record.handle, FenceEnd::PeerGone);
            return Err(Status::NoMemory);
        }
        ledger.fences_in_held += 1;
        ledger.fence_deadline = Some(ledger.fence_deadline.map_or(deadline, |d| d.min(deadline)));
        if let Some(record) = ledger.fences_in.get(fence.get()) {
            self.sink.fence_attached(hid, &record.handle);
        }
        Ok(())
    }

    fn signal_fence(&mut self, hid: &HyperDmabufId, fence: FenceId, result: FenceResult) -> Status {
        let ledger = &mut *self.ledger;
        if !ledger
            .fences_in
            .get(fence.get())
            .is_some_and(|f| f.hid.matches(hid))
        {
            return Status::NoSuchBuffer;
        }
        let Some(record) = ledger.fences_in.remove(fence.get()) else {
            return Status::NoSuchBuffer;
        };
        ledger.fences_in_held -= 1;
        self.sink.fence_end(record.handle, result.into());
        Status::Ok
    }
}

/// A queued frame carrying our fence `id` will not go: the peer never
/// hears of the fence, which is forgotten now if it has ended, else once
/// it does.
fn drop_queued_fence<FO: Table<Value = OutFence>>(fences: &mut FO, held: &mut usize, id: FenceId) {
    let Some(fence) = fences.get_mut(id.get()) else {
        return;
    };
    match fence.state {
        OutState::QueuedEnded(_) => {
            if fences.remove(id.get()).is_some() {
                *held -= 1;
            }
        }
        _ => fence.state = OutState::Dropped,
    }
}

/// The tables of user-space hosts (the simulation, the fuzzers): ordered
/// maps.
#[cfg(any(test, feature = "std"))]
mod std_table {
    use std::collections::BTreeMap;

    use super::Table;

    impl<V> Table for BTreeMap<u64, V> {
        type Value = V;

        fn get(&self, key: u64) -> Option<&V> {
            BTreeMap::get(self, &key)
        }

        fn get_mut(&mut self, key: u64) -> Option<&mut V> {
            BTreeMap::get_mut(self, &key)
        }

        fn try_insert(&mut self, key: u64, value: V) -> Result<(), V> {
            if self.contains_key(&key) {
                return Err(value);
            }
            self.insert(key, value);
            Ok(())
        }

        fn remove(&mut self, key: u64) -> Option<V> {
            BTreeMap::remove(self, &key)
        }

        fn first(&self) -> Option<u64> {
            self.keys().next().copied()
        }

        fn find(&self, mut pred: impl FnMut(&V) -> bool) -> Option<u64> {
            self.iter().find(|(_, v)| pred(v)).map(|(k, _)| *k)
        }

        fn for_each<'a>(&'a self, mut f: impl FnMut(u64, &'a V)) {
            self.iter().for_each(|(k, v)| f(*k, v));
        }

        fn for_each_mut(&mut self, mut f: impl FnMut(u64, &mut V)) {
            self.iter_mut().for_each(|(k, v)| f(*k, v));
        }

        fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool, mut removed: impl FnMut(V)) {
            let gone: std::vec::Vec<u64> = self
                .iter_mut()
                .filter_map(|(k, v)| (!keep(v)).then_some(*k))
                .collect();
            for key in gone {
                if let Some(v) = BTreeMap::remove(self, &key) {
                    removed(v);
                }
            }
        }
    }
}
