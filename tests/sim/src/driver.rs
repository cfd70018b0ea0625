// SPDX-License-Identifier: MIT
//! A simulated hyper-dmabuf driver in one domain: what the kernel module
//! does around [`Channel`], over the simulated hypervisor.
//!
//! It keeps the tables the real driver keeps — exports (id → protocol
//! state, granted data pages, directory pages), imports (id → protocol
//! state, mapping handles), the event queue user space reads, completions
//! of waiting ioctls — and implements the ledger's
//! [`Sink`] over them, so that every
//! message is handled by the real protocol code and every decision by the
//! driver's own ledger. The ioctl-level
//! operations ([`Domain::export`], [`Domain::import`], [`Domain::release`],
//! [`Domain::unexport`], [`Domain::update`]) and the connection teardown
//! ([`Domain::teardown`]) follow the design: grant every page, build the
//! two-level directory, map the root, all leaves in one batch, all data
//! pages in one batch, check every status, undo on partial failure.

use std::collections::{BTreeMap, VecDeque};

use hyper_dmabuf_common::channel::{Channel, ChannelConfig, ExportState, ImportState};
use hyper_dmabuf_common::fence::{FenceEnd, InFence, OutFence};
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::ledger::{
    self, Claim, ExportRecord, ExportRefusal, FileRights, Frame, ImportRecord, ImportRefusal,
    ImportStep, Ledger, MappedError, SendError, Sink, Unexporting, UpdateRefusal,
};
use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::pgdir::{
    encode_leaf, encode_root, read_leaf, read_root_entries, read_root_header, DirPage, Layout,
};
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::{
    Export, ExportFlags, FenceId, FenceResult, InlineRefs, PageRefs, PrivData,
};
use hyper_dmabuf_common::xen::{DomId, GrantRef, Status};
use hyper_dmabuf_common::Error;

use crate::hv::{GrantError, Hypervisor, MapHandle, MapStatus, PageId, FIRST_GREF};
use crate::mem::Window;
use crate::rng::Rng;
use crate::table::{Counted, Walks};

/// Why an operation of the simulated driver failed (the errno of the
/// ioctl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError {
    /// No connection to a peer.
    NotConnected,
    /// No such buffer (or not from/to the connected peer).
    NoSuchBuffer,
    /// A writable import of a read-only export, or a read-write export on
    /// a device without `feature-rw`.
    NotWritable,
    /// Mapped by another import ioctl, or read-only by another user while
    /// writable was asked.
    Busy,
    /// No ring slot now; try again after the peer answered.
    Again,
    /// The buffer size was refused.
    Size(ExportRefusal),
    /// A grant map failed with this status.
    Map(MapStatus),
    /// The peer's page directory is malformed.
    Decode(Error),
    /// A grant operation failed.
    Grant(GrantError),
    /// The buffer is exported already, with other flags.
    OtherFlags,
}

impl From<ImportRefusal> for DriverError {
    fn from(refusal: ImportRefusal) -> Self {
        match refusal {
            ImportRefusal::NotFound => DriverError::NoSuchBuffer,
            ImportRefusal::Busy => DriverError::Busy,
            ImportRefusal::NotWritable => DriverError::NotWritable,
        }
    }
}

impl From<UpdateRefusal> for DriverError {
    fn from(e: UpdateRefusal) -> Self {
        match e {
            // The simulated domain has one user, the owner of every export.
            UpdateRefusal::NotFound | UpdateRefusal::NotOwner => DriverError::NoSuchBuffer,
            UpdateRefusal::OtherFlags => DriverError::OtherFlags,
            UpdateRefusal::NotConnected => DriverError::NotConnected,
            UpdateRefusal::QueueFull | UpdateRefusal::TooManyFences => DriverError::Again,
        }
    }
}

/// The simulated domain's one user, who owns every export.
const USER: FileRights = FileRights {
    file: 0,
    admin: false,
};

impl From<SendError> for DriverError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NotConnected => DriverError::NotConnected,
            SendError::RingFull | SendError::NoMemory => DriverError::Again,
        }
    }
}

/// A local buffer (what a dma-buf's pages are in the simulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BufId(u32);

struct UserBuffer {
    pages: Vec<PageId>,
    size: u64,
}

/// What keeps an export's pages granted: its data and directory grants.
#[derive(Debug)]
pub struct Grants {
    hid: HyperDmabufId,
    peer: DomId,
    /// The buffer's size, for its `GrantsEnded`.
    size: u64,
    data: Vec<GrantRef>,
    dir: Vec<(PageId, GrantRef)>,
}

/// A mapped import: what a live import's local buffer is here.
pub struct Mapping {
    handles: Vec<MapHandle>,
    window: Window,
    users: u32,
}

/// The simulated driver's ledger: the same code as the kernel module's,
/// over ordered maps.
type SimLedger = Ledger<
    Counted<ExportRecord<Grants>>,
    Counted<ImportRecord<Mapping>>,
    Counted<u64>,
    BTreeMap<u64, InFence<SimFence>>,
    BTreeMap<u64, OutFence>,
>;

/// A local fence standing for one of the peer's: its number in
/// [`Domain::local_fences`].
pub type SimFence = u64;

/// What a connection holds of the two ring areas.
pub enum RingHold {
    /// Frontend: its own pages, granted to the backend.
    Granted(Vec<(PageId, GrantRef)>),
    /// Backend: its mappings of the frontend's pages.
    Mapped(Vec<MapHandle>),
}

/// A live connection to the peer: the channel, its event channel and the
/// ring pages.
pub struct Conn {
    /// The peer domain.
    pub peer: DomId,
    /// Our event-channel port.
    pub port: u32,
    /// The protocol logic.
    pub chan: Channel<Window>,
    /// Negotiated settings.
    pub config: ChannelConfig,
    /// The ring pages.
    pub rings: RingHold,
    /// Our request ring and the peer's, for a test that takes over the
    /// connection.
    pub windows: (Window, Window),
    /// `process` asked to be called again.
    pub more: bool,
    /// A test drives this end by hand; the pump leaves it alone.
    pub hijacked: bool,
}

impl Conn {
    /// Makes a connection; `ours` is the ring we request on.
    ///
    /// # Errors
    ///
    /// As [`Channel::new`].
    pub fn new(
        peer: DomId,
        port: u32,
        config: ChannelConfig,
        ours: Window,
        theirs: Window,
        rings: RingHold,
    ) -> Result<Self, Error> {
        let chan = Channel::new(peer, config, ours.clone(), theirs.clone())?;
        Ok(Conn {
            peer,
            port,
            chan,
            config,
            rings,
            windows: (ours, theirs),
            more: false,
            hijacked: false,
        })
    }
}

/// What user space sees of the driver: its event queue, the answers of
/// waiting requests, the peer's refused requests.
#[derive(Default)]
struct UserView {
    events: VecDeque<Event>,
    completions: BTreeMap<u64, Status>,
    protocol_errors: Vec<Error>,
    /// Local fences made for the peer's, by number: how each ended.
    fences: BTreeMap<SimFence, Option<FenceEnd>>,
    next_fence: SimFence,
    /// The ledger's clock, in milliseconds: advanced by the tests only.
    clock: u64,
}

/// Where the ledger's decisions take effect in the simulation.
struct Ctx<'a> {
    user: &'a mut UserView,
    hv: &'a mut Hypervisor,
    me: DomId,
}

impl Sink<Grants, SimFence> for Ctx<'_> {
    fn fence_new(&mut self, _hid: &HyperDmabufId) -> Option<SimFence> {
        let fence = self.user.next_fence;
        self.user.next_fence += 1;
        self.user.fences.insert(fence, None);
        Some(fence)
    }

    fn fence_end(&mut self, fence: SimFence, end: FenceEnd) {
        let old = self.user.fences.insert(fence, Some(end));
        assert_eq!(old, Some(None), "fence {fence} ended twice or never made");
    }

    fn now_ms(&self) -> u64 {
        self.user.clock
    }

    fn retire(&mut self, grants: Grants) {
        for gref in &grants.data {
            self.hv
                .end_access_deferred(self.me, *gref)
                .expect("export grants exist until the export ends");
        }
        for (page, gref) in &grants.dir {
            self.hv
                .end_access_deferred(self.me, *gref)
                .expect("directory grants exist until the export ends");
            self.hv
                .put_page(self.me, *page)
                .expect("directory pages are ours");
        }
        self.user.events.push_back(Event::about_export(
            EventType::GrantsEnded,
            grants.peer,
            &grants.hid,
            grants.size,
        ));
    }

    fn event(&mut self, event: Event, _owner: Option<u64>) {
        // One user-space reader: every event is its.
        self.user.events.push_back(event);
    }

    fn complete(&mut self, token: u64, status: Status) {
        let old = self.user.completions.insert(token, status);
        assert!(old.is_none(), "token {token} completed twice");
    }

    fn protocol_error(&mut self, error: Error) {
        self.user.protocol_errors.push(error);
    }
}

/// What a driver holds, for the invariant checks and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverStats {
    /// Live exports.
    pub exports: usize,
    /// Known imports of the current session (mapped or not).
    pub imports: usize,
    /// Mapped imports of the current session.
    pub mapped: usize,
    /// Mapped imports of an ended session.
    pub orphans: usize,
    /// Local buffers.
    pub buffers: usize,
    /// Messages waiting for a ring slot: RELEASEs, and UNEXPORTs due.
    pub queued: usize,
}

/// One simulated domain's hyper-dmabuf driver (and its user space's
/// buffers).
pub struct Domain {
    /// This domain.
    pub id: DomId,
    rng: Rng,
    buffers: BTreeMap<BufId, UserBuffer>,
    next_buf: u32,
    next_token: u64,
    ledger: SimLedger,
    user: UserView,
    /// The connection to the peer, once XenBus connected it.
    pub conn: Option<Conn>,
    /// The rings and port of a stopped connection, until teardown.
    detached: Option<(RingHold, u32)>,
    /// A test drives this domain as a hostile peer: its tables are not
    /// checked.
    pub hostile: bool,
    /// What the ledger's whole-table walks visited.
    walks: Walks,
}

fn unmap_all(hv: &mut Hypervisor, me: DomId, handles: &[MapHandle]) {
    let results = hv.unmap(me, handles);
    // A domain killed in the middle of an operation (fault injection)
    // finishes it with its mappings already gone.
    if hv.alive(me) {
        for r in results {
            r.expect("the driver unmaps only its own mappings");
        }
    }
}

impl Domain {
    /// A driver for domain `id`; `seed` makes its ids reproducible.
    pub fn new(id: DomId, seed: u64) -> Self {
        let walks = Walks::default();
        Domain {
            id,
            rng: Rng::new(seed ^ u64::from(id.get()).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            buffers: BTreeMap::new(),
            next_buf: 1,
            next_token: 1,
            ledger: Ledger::new(
                Counted::new(&walks),
                Counted::new(&walks),
                Counted::new(&walks),
                Counted::new(&walks),
            ),
            walks,
            user: UserView::default(),
            conn: None,
            detached: None,
            hostile: false,
        }
    }

    /// The connected peer.
    pub fn peer(&self) -> Option<DomId> {
        self.conn.as_ref().map(|c| c.peer)
    }

    /// The ledger's effects in this domain.
    fn ctx<'a>(user: &'a mut UserView, hv: &'a mut Hypervisor, me: DomId) -> Ctx<'a> {
        Ctx { user, hv, me }
    }

    // ---- local buffers ----

    /// Allocates a local buffer of at least `size` bytes, in whole pages
    /// (at least one) as a dma-buf is.
    pub fn create_buffer(&mut self, hv: &mut Hypervisor, size: u64) -> BufId {
        let nr = size.div_ceil(XEN_PAGE_SIZE as u64).max(1);
        let size = nr * XEN_PAGE_SIZE as u64;
        let pages = (0..nr).map(|_| hv.alloc_page(self.id)).collect();
        let id = BufId(self.next_buf);
        self.next_buf += 1;
        self.buffers.insert(id, UserBuffer { pages, size });
        id
    }

    fn buffer_window(&self, hv: &Hypervisor, buf: BufId) -> Window {
        hv.pages_window(self.id, &self.buffers[&buf].pages)
    }

    /// Writes into a local buffer.
    pub fn write_buffer(&self, hv: &Hypervisor, buf: BufId, offset: usize, bytes: &[u8]) {
        self.buffer_window(hv, buf).write_bytes(offset, bytes);
    }

    /// Reads from a local buffer.
    pub fn read_buffer(&self, hv: &Hypervisor, buf: BufId, offset: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.buffer_window(hv, buf).read_bytes(offset, &mut out);
        out
    }

    /// Frees a local buffer (closes the dma-buf): pages still granted stay
    /// alive through their grants.
    pub fn free_buffer(&mut self, hv: &mut Hypervisor, buf: BufId) {
        let b = self.buffers.remove(&buf).expect("known buffer");
        for page in b.pages {
            hv.put_page(self.id, page).expect("our page");
        }
    }

    /// Pages of the local buffers.
    pub fn buffer_page_count(&self) -> usize {
        self.buffers.values().map(|b| b.pages.len()).sum()
    }

    /// User space exits: every mapping of an import is released (each
    /// user), every local buffer freed.
    pub fn close_all(&mut self, hv: &mut Hypervisor) {
        let mut mapped = Vec::new();
        self.ledger.for_each(
            |_, _| {},
            |i| {
                if let Claim::Live { handle, .. } = i.claim() {
                    mapped.push((i.state.export.hid, handle.users));
                }
            },
        );
        for (hid, users) in mapped {
            for _ in 0..users {
                self.release(hv, &hid).expect("mapped import");
            }
        }
        for b in self.buffers() {
            self.free_buffer(hv, b);
        }
    }

    /// The local buffers.
    pub fn buffers(&self) -> Vec<BufId> {
        self.buffers.keys().copied().collect()
    }

    // ---- export side ----

    fn new_hid(&mut self) -> HyperDmabufId {
        loop {
            let number = self.rng.next();
            let mut key = [0u8; KEY_LEN];
            for chunk in key.chunks_mut(8) {
                chunk.copy_from_slice(&self.rng.next().to_le_bytes()[..chunk.len()]);
            }
            if let Ok(hid) = HyperDmabufId::new(number, key) {
                if self.ledger.export(&hid).is_none() {
                    return hid;
                }
            }
        }
    }

    /// Grants the buffer's pages to the peer and builds its directory:
    /// the record of an export not yet announced.
    fn prepare_export(
        &mut self,
        hv: &mut Hypervisor,
        buf: BufId,
        rw: bool,
        priv_data: PrivData,
        fenced: bool,
    ) -> Result<ExportRecord<Grants>, DriverError> {
        let conn = self.conn.as_ref().ok_or(DriverError::NotConnected)?;
        let (peer, config) = (conn.peer, conn.config);
        let flags = if rw {
            ExportFlags::WRITABLE
        } else {
            ExportFlags::default()
        };
        ledger::export_flags_allowed(&config, flags).map_err(|_| DriverError::NotWritable)?;
        let b = &self.buffers[&buf];
        let layout = ledger::export_layout(&config, b.size).map_err(DriverError::Size)?;
        let me = self.id;
        let pages = b.pages.clone();
        let mut data = Vec::with_capacity(pages.len());
        for page in &pages {
            data.push(
                hv.grant_access(me, *page, peer, !rw)
                    .map_err(DriverError::Grant)?,
            );
        }
        let mut dir = Vec::new();
        let pages = if ledger::refs_inline(&config, &layout, &priv_data, fenced) {
            PageRefs::Inline(InlineRefs::new(&data).expect("counted by refs_inline"))
        } else {
            PageRefs::Directory(grant_directory(hv, me, peer, &layout, &data, &mut dir))
        };
        let hid = self.new_hid();
        let export = Export {
            hid,
            size: layout.size(),
            pages,
            flags,
            priv_data,
            fence: None,
        };
        let grants = Grants {
            hid,
            peer,
            size: export.size,
            data,
            dir,
        };
        Ok(ExportRecord::new(export, USER.file, buf.0 as usize, grants))
    }

    /// Grants the buffer's pages to the peer, builds its directory and
    /// records the export, without announcing it (a hostile exporter's
    /// way).
    ///
    /// # Errors
    ///
    /// [`DriverError::NotConnected`], [`DriverError::NotWritable`],
    /// [`DriverError::Size`].
    pub fn export_unannounced(
        &mut self,
        hv: &mut Hypervisor,
        buf: BufId,
        rw: bool,
        priv_data: PrivData,
    ) -> Result<Export, DriverError> {
        let record = self.prepare_export(hv, buf, rw, priv_data, false)?;
        let export = record.info;
        let me = self.id;
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        self.ledger.record_export(&mut ctx, record)?;
        Ok(export)
    }

    /// Exports a local buffer to the peer: grants, directory, EXPORT.
    /// Returns the id and the token whose completion says whether the peer
    /// accepted it. A buffer exported already is updated instead (its
    /// token completes at once, as the ioctl returns).
    ///
    /// # Errors
    ///
    /// As [`Domain::export_unannounced`]; [`DriverError::Again`] if the
    /// ring is full (the grants are ended again).
    pub fn export(
        &mut self,
        hv: &mut Hypervisor,
        buf: BufId,
        rw: bool,
        priv_data: PrivData,
    ) -> Result<(HyperDmabufId, u64), DriverError> {
        let frame = Frame {
            priv_data,
            fenced: false,
        };
        self.export_frame(hv, buf, rw, frame)
            .map(|(hid, token, _)| (hid, token))
    }

    /// As [`Domain::export`], for a buffer whose local fences have not
    /// all signalled if `frame.fenced`: the EXPORT or UPDATE carries a
    /// fence of ours, whose id is returned, until
    /// [`Domain::signal_fence`].
    ///
    /// # Errors
    ///
    /// As [`Domain::export`].
    pub fn export_frame(
        &mut self,
        hv: &mut Hypervisor,
        buf: BufId,
        rw: bool,
        frame: Frame,
    ) -> Result<(HyperDmabufId, u64, Option<FenceId>), DriverError> {
        self.flush(hv);
        let me = self.id;
        let now = self.user.clock;
        let token = self.token();
        if let Some(hid) = self.ledger.export_of_identity(buf.0 as usize) {
            let chan = self.conn.as_mut().map(|c| &mut c.chan);
            let mut ctx = Self::ctx(&mut self.user, hv, me);
            let flags = if rw {
                ExportFlags::WRITABLE
            } else {
                ExportFlags::default()
            };
            let sent = self
                .ledger
                .update(chan, &mut ctx, &hid, USER, Some(flags), frame, now)?;
            self.notify_if(hv, sent.notify);
            self.user.completions.insert(token, Status::Ok);
            return Ok((hid, token, sent.fence));
        }
        let record = self.prepare_export(hv, buf, rw, frame.priv_data, frame.fenced)?;
        let hid = record.info.hid;
        let conn = self.conn.as_mut().expect("connected: checked above");
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let sent = self
            .ledger
            .announce(&mut conn.chan, &mut ctx, record, token, frame.fenced)?;
        self.notify_if(hv, sent.notify);
        Ok((hid, token, sent.fence))
    }

    fn notify_if(&self, hv: &mut Hypervisor, notify: bool) {
        if let (true, Some(conn)) = (notify, self.conn.as_ref()) {
            hv.notify(self.id, conn.port);
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// [`Ledger::for_each`] for a look of the test's own (a check, a
    /// list): its walks are not counted in [`Domain::records_walked`].
    fn inspect<'a>(
        &'a self,
        exports: impl FnMut(u64, &'a ExportRecord<Grants>),
        imports: impl FnMut(&'a ImportRecord<Mapping>),
    ) {
        self.walks.unseen(|| self.ledger.for_each(exports, imports));
    }

    /// Records the ledger's whole-table walks have visited so far (the
    /// fence tables, at most `MAX_FENCES` records each, not counted).
    pub fn records_walked(&self) -> u64 {
        self.walks.visited()
    }

    /// Starts the unexport handshake, as the driver does: the UNEXPORT
    /// goes at once if the ring has room, else it is due and a tick
    /// sends it once the ring has room. The
    /// peer's answer shows in [`Domain::export_state`] (awaiting release)
    /// or in the export's end ([`EventType::GrantsEnded`]).
    ///
    /// # Errors
    ///
    /// [`DriverError::NotConnected`], [`DriverError::NoSuchBuffer`].
    pub fn unexport(
        &mut self,
        hv: &mut Hypervisor,
        hid: &HyperDmabufId,
    ) -> Result<(), DriverError> {
        let now = self.user.clock;
        let me = self.id;
        let Some(conn) = self.conn.as_mut() else {
            return Err(DriverError::NotConnected);
        };
        let chan = (!conn.hijacked).then_some(&mut conn.chan);
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        match self.ledger.unexport_now(chan, &mut ctx, hid, now) {
            None => Err(DriverError::NoSuchBuffer),
            Some(Unexporting::Sent { notify }) => {
                self.notify_if(hv, notify);
                Ok(())
            }
            Some(Unexporting::Due) => {
                self.flush(hv);
                Ok(())
            }
        }
    }

    /// A new frame in an export (`HDMABUF_IOCTL_UPDATE`): its UPDATE is
    /// sent, or queued until the ring has room. Returns a token completed
    /// as the ioctl returns.
    ///
    /// # Errors
    ///
    /// As [`Domain::unexport`].
    pub fn update(
        &mut self,
        hv: &mut Hypervisor,
        hid: &HyperDmabufId,
        priv_data: PrivData,
    ) -> Result<u64, DriverError> {
        let frame = Frame {
            priv_data,
            fenced: false,
        };
        self.update_frame(hv, hid, frame).map(|(token, _)| token)
    }

    /// As [`Domain::update`], with a fence of ours if `frame.fenced`:
    /// its id is returned, for [`Domain::signal_fence`].
    ///
    /// # Errors
    ///
    /// As [`Domain::update`]; [`DriverError::Again`] past the fences
    /// allowed.
    pub fn update_frame(
        &mut self,
        hv: &mut Hypervisor,
        hid: &HyperDmabufId,
        frame: Frame,
    ) -> Result<(u64, Option<FenceId>), DriverError> {
        let now = self.user.clock;
        let conn = self.conn.as_mut().ok_or(DriverError::NotConnected)?;
        let me = self.id;
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let sent =
            self.ledger
                .update(Some(&mut conn.chan), &mut ctx, hid, USER, None, frame, now)?;
        self.notify_if(hv, sent.notify);
        let token = self.token();
        self.user.completions.insert(token, Status::Ok);
        Ok((token, sent.fence))
    }

    /// Our local fence behind fence `id` signalled (`result` says how):
    /// the peer is sent SIGNAL if it holds the fence.
    pub fn signal_fence(&mut self, hv: &mut Hypervisor, id: FenceId, result: FenceResult) {
        let me = self.id;
        let conn = self.conn.as_mut().map(|c| &mut c.chan);
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let notify = self.ledger.fence_signalled(conn, &mut ctx, id, result);
        self.notify_if(hv, notify);
    }

    /// Fences of ours the ledger holds (not signalled, or SIGNAL unsent).
    pub fn fences_out_held(&self) -> usize {
        self.ledger.fences_out_held()
    }

    /// Fences of the peer's the ledger holds (not ended).
    pub fn fences_in_held(&self) -> usize {
        self.ledger.fences_in_held()
    }

    /// Every local fence made for one of the peer's, by number, and how
    /// it ended (`None`: not yet).
    pub fn local_fences(&self) -> &BTreeMap<SimFence, Option<FenceEnd>> {
        &self.user.fences
    }

    /// The local fences a new dma-buf of import `hid` would carry.
    pub fn peer_fences(&self, hid: &HyperDmabufId) -> Vec<SimFence> {
        let mut out = Vec::new();
        self.ledger.peer_fences(hid, |f| out.push(*f));
        out
    }

    /// Moves the ledger's clock `ms` forward and runs the timed work.
    pub fn advance_clock(&mut self, hv: &mut Hypervisor, ms: u64) {
        self.user.clock += ms;
        let me = self.id;
        let now = self.user.clock;
        let conn = self
            .conn
            .as_mut()
            .filter(|c| !c.hijacked)
            .map(|c| &mut c.chan);
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let tick = self.ledger.tick(conn, &mut ctx, now);
        self.notify_if(hv, tick.notify);
    }

    /// UPDATEs waiting for room on the ring.
    pub fn updates_queued(&self) -> usize {
        self.ledger.updates_queued()
    }

    /// The protocol state of an export.
    pub fn export_state(&self, hid: &HyperDmabufId) -> Option<ExportState> {
        self.ledger.export(hid).map(|e| e.state)
    }

    /// The grant references of an export's data pages, in order.
    pub fn export_grants(&self, hid: &HyperDmabufId) -> Option<Vec<GrantRef>> {
        self.ledger.export(hid).map(|e| e.grants.data.clone())
    }

    /// The ids of every live export.
    pub fn exports(&self) -> Vec<HyperDmabufId> {
        let mut out = Vec::new();
        self.inspect(|_, e| out.push(e.info.hid), |_| {});
        out
    }

    // ---- import side ----

    /// The protocol state of an import of the current session.
    pub fn import_state(&self, hid: &HyperDmabufId) -> Option<ImportState> {
        self.ledger
            .import(hid)
            .filter(|i| !i.orphaned())
            .map(|i| i.state)
    }

    fn current_imports(&self) -> Vec<&ImportRecord<Mapping>> {
        let mut out = Vec::new();
        self.inspect(
            |_, _| {},
            |i| {
                if !i.orphaned() {
                    out.push(i);
                }
            },
        );
        out
    }

    /// The ids of every known import of the current session.
    pub fn imports(&self) -> Vec<HyperDmabufId> {
        self.current_imports()
            .iter()
            .map(|i| i.state.export.hid)
            .collect()
    }

    /// The imports this domain maps through its live connection (orphans
    /// excluded).
    pub fn mapped_imports(&self) -> Vec<HyperDmabufId> {
        self.current_imports()
            .iter()
            .filter(|i| mapping_of(i).is_some())
            .map(|i| i.state.export.hid)
            .collect()
    }

    /// Users holding the mapping of an import (or of an orphan).
    pub fn users(&self, hid: &HyperDmabufId) -> u32 {
        self.mapping(hid).map_or(0, |m| m.users)
    }

    /// Imports a buffer: maps it (root, leaves in one batch, data pages in
    /// one batch) and tells the exporter. Importing a buffer already
    /// mapped only takes another user reference.
    ///
    /// # Errors
    ///
    /// [`DriverError::NotConnected`], [`DriverError::NoSuchBuffer`]
    /// (also for a revoked buffer or one of an ended session),
    /// [`DriverError::NotWritable`], [`DriverError::Busy`],
    /// [`DriverError::Again`], [`DriverError::Map`],
    /// [`DriverError::Decode`]. On error nothing stays mapped.
    pub fn import(
        &mut self,
        hv: &mut Hypervisor,
        hid: &HyperDmabufId,
        rw: bool,
    ) -> Result<(), DriverError> {
        self.flush(hv);
        let me = self.id;
        let conn = self.conn.as_mut().ok_or(DriverError::NotConnected)?;
        let (peer, max) = (conn.peer, conn.config.max_buffer_bytes);
        let export = match self.ledger.import_begin(hid, rw)? {
            ImportStep::Reuse { handle, .. } => {
                handle.users += 1;
                return Ok(());
            }
            ImportStep::Map(export) => *export,
        };
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let (handles, window) = match map_buffer(ctx.hv, me, peer, &export, max, rw) {
            Ok(mapped) => mapped,
            Err(e) => {
                self.ledger.import_abort(&mut ctx, hid);
                return Err(e);
            }
        };
        if let Err(e) = self.ledger.import_mapped(&mut conn.chan, &mut ctx, hid) {
            unmap_all(ctx.hv, me, &handles);
            self.ledger.import_abort(&mut ctx, hid);
            return Err(match e {
                MappedError::NotFound => DriverError::NoSuchBuffer,
                MappedError::Again => DriverError::Again,
            });
        }
        let mapping = Mapping {
            handles,
            window,
            users: 1,
        };
        self.ledger.import_live(hid, mapping, rw);
        // The MAPPED's notification is owed: the driver's notice timer
        // sends it NOTICE_DELAY_MS later, here the timed work (which pays
        // it too) before the test goes on.
        self.flush(hv);
        Ok(())
    }

    fn mapping(&self, hid: &HyperDmabufId) -> Option<&Mapping> {
        self.ledger.import(hid).and_then(mapping_of)
    }

    /// Reads bytes of a mapped import, as user space reading its mmap.
    pub fn read_import(&self, hid: &HyperDmabufId, offset: usize, len: usize) -> Option<Vec<u8>> {
        let m = self.mapping(hid)?;
        let mut out = vec![0u8; len];
        m.window.read_bytes(offset, &mut out);
        Some(out)
    }

    /// Writes bytes into a mapped import (needs a writable mapping).
    ///
    /// # Errors
    ///
    /// [`DriverError::NoSuchBuffer`] or [`DriverError::NotWritable`].
    pub fn write_import(
        &self,
        hid: &HyperDmabufId,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), DriverError> {
        let m = self.mapping(hid).ok_or(DriverError::NoSuchBuffer)?;
        if !m.window.writable() {
            return Err(DriverError::NotWritable);
        }
        m.window.write_bytes(offset, bytes);
        Ok(())
    }

    /// A user of an imported buffer lets it go; the last one unmaps it and
    /// tells the exporter (or, for an orphan, forgets it).
    ///
    /// # Errors
    ///
    /// [`DriverError::NoSuchBuffer`] if it is not mapped.
    pub fn release(&mut self, hv: &mut Hypervisor, hid: &HyperDmabufId) -> Result<(), DriverError> {
        let me = self.id;
        let users = {
            let m = self.ledger.live_mut(hid).ok_or(DriverError::NoSuchBuffer)?;
            m.users -= 1;
            m.users
        };
        if users > 0 {
            return Ok(());
        }
        let m = self
            .ledger
            .import_unmapping(hid)
            .expect("a live import has its mapping");
        unmap_all(hv, me, &m.handles);
        let conn = self.conn.as_mut().map(|c| &mut c.chan);
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let released = self.ledger.import_released(conn, &mut ctx, hid);
        if let ledger::Released::Sent(notify) = released {
            self.notify_if(hv, notify);
        }
        Ok(())
    }

    // ---- messages ----

    /// The timed work: sends the UNEXPORTs that are due and the RELEASEs
    /// that found the ring full, as far as the ring has room.
    pub fn flush(&mut self, hv: &mut Hypervisor) {
        let now = self.user.clock;
        let me = self.id;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.hijacked {
            return;
        }
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let tick = self.ledger.tick(Some(&mut conn.chan), &mut ctx, now);
        self.notify_if(hv, tick.notify);
    }

    /// Handles what the peer sent (the event-channel handler).
    ///
    /// # Errors
    ///
    /// A fatal protocol error: the caller closes the connection.
    pub fn process(&mut self, hv: &mut Hypervisor) -> Result<(), Error> {
        let now = self.user.clock;
        let me = self.id;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        let progress = conn.chan.process(&mut self.ledger.view(&mut ctx))?;
        // As the driver: due UNEXPORTs before the queued frames.
        let revoked = self.ledger.unexports_blocked()
            && self
                .ledger
                .send_due_unexports(&mut conn.chan, &mut ctx, now)
                .0;
        let released = self.ledger.flush_releases(&mut conn.chan, &mut ctx);
        let updated = self.ledger.flush_updates(&mut conn.chan, &mut ctx, now);
        if progress.notify || released || updated || revoked {
            hv.notify(me, conn.port);
        }
        conn.more = progress.more;
        Ok(())
    }

    /// Releases everything the connection holds: [`Domain::disconnect`],
    /// then the rings (ending access, deferred while the backend still
    /// maps them, or unmapping them) and the event channel. Idempotent.
    pub fn teardown(&mut self, hv: &mut Hypervisor) {
        self.disconnect(hv);
        let me = self.id;
        if let Some((rings, port)) = self.detached.take() {
            match rings {
                RingHold::Granted(pages) => {
                    for (page, gref) in pages {
                        hv.end_access_deferred(me, gref).expect("ring grant exists");
                        hv.put_page(me, page).expect("ring page is ours");
                    }
                }
                RingHold::Mapped(handles) => unmap_all(hv, me, &handles),
            }
            hv.evtchn_close(me, port);
        }
    }

    /// The connection stops (peer closed or died, or a fatal protocol
    /// error): [`Ledger::detach`]. The rings and the event channel are
    /// kept until [`Domain::teardown`], since the backend may still map
    /// them. Idempotent.
    pub fn disconnect(&mut self, hv: &mut Hypervisor) {
        let me = self.id;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let mut ctx = Self::ctx(&mut self.user, hv, me);
        self.ledger.detach(&mut conn.chan, &mut ctx);
        self.detached = Some((conn.rings, conn.port));
    }

    // ---- what user space and the tests see ----

    /// Takes the queued events.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.user.events.drain(..).collect()
    }

    /// The status a waiting request completed with, if it did.
    pub fn completion(&self, token: u64) -> Option<Status> {
        self.user.completions.get(&token).copied()
    }

    /// Requests of the peer refused as malformed.
    pub fn protocol_errors(&self) -> &[Error] {
        &self.user.protocol_errors
    }

    /// What the driver holds.
    pub fn stats(&self) -> DriverStats {
        let mut st = DriverStats {
            buffers: self.buffers.len(),
            queued: self.ledger.releases_unsent(),
            ..DriverStats::default()
        };
        self.inspect(
            |_, e| {
                st.exports += 1;
                st.queued += usize::from(e.unexport_at().is_some());
            },
            |i| match (i.orphaned(), mapping_of(i).is_some()) {
                (true, _) => st.orphans += 1,
                (false, mapped) => {
                    st.imports += 1;
                    st.mapped += usize::from(mapped);
                }
            },
        );
        st
    }

    /// Checks the driver's tables against the hypervisor: every export's
    /// grants are live (not deferred), every mapping the driver holds is
    /// one the hypervisor counts and the other way round, protocol states
    /// agree with what is mapped.
    ///
    /// # Panics
    ///
    /// On the first disagreement.
    pub fn check(&self, hv: &Hypervisor) {
        let me = self.id;
        let c = hv.counters(me);
        let mut live_grants = 0;
        let mut maps = 0;
        self.inspect(
            |_, e| {
                let g = &e.grants;
                for gref in g.data.iter().chain(g.dir.iter().map(|(_, g)| g)) {
                    assert!(hv.has_grant(me, *gref), "export grant {gref} missing");
                }
                live_grants += g.data.len() + g.dir.len();
            },
            |i| {
                if let Some(m) = mapping_of(i) {
                    assert!(m.users > 0);
                    maps += m.handles.len();
                    assert!(
                        i.orphaned() || i.state.mapped(),
                        "mapped import not marked mapped"
                    );
                }
            },
        );
        let rings = self.conn.as_ref().map(|c| &c.rings);
        match rings.or(self.detached.as_ref().map(|(r, _)| r)) {
            Some(RingHold::Granted(p)) => live_grants += p.len(),
            Some(RingHold::Mapped(h)) => maps += h.len(),
            None => {}
        }
        assert_eq!(c.maps, maps, "domain {me}: mappings held vs counted");
        assert_eq!(
            c.grants - c.deferred,
            live_grants,
            "domain {me}: live grants vs exports"
        );
    }
}

/// The mapping of a live import.
fn mapping_of(import: &ImportRecord<Mapping>) -> Option<&Mapping> {
    match import.claim() {
        Claim::Live { handle, .. } => Some(handle),
        _ => None,
    }
}

/// Writes and grants `data`'s directory (leaves, then the root) to
/// `peer`, each page recorded in `dir`; the root's reference.
fn grant_directory(
    hv: &mut Hypervisor,
    me: DomId,
    peer: DomId,
    layout: &Layout,
    data: &[GrantRef],
    dir: &mut Vec<(PageId, GrantRef)>,
) -> GrantRef {
    let mut page: DirPage = [0u8; XEN_PAGE_SIZE];
    let mut grant_dir_page = |hv: &mut Hypervisor, page: &DirPage| {
        let id = hv.alloc_page(me);
        hv.page_window(me, id).write_bytes(0, page);
        let gref = hv
            .grant_access(me, id, peer, true)
            .expect("fresh page of ours");
        dir.push((id, gref));
        gref
    };
    let root_entries: Vec<GrantRef> = if layout.nr_leaves() == 0 {
        data.to_vec()
    } else {
        (0..layout.nr_leaves())
            .map(|i| {
                let range = layout.leaf_range(i).expect("leaf in range");
                encode_leaf(layout, i, &data[range], &mut page).expect("layout counts");
                grant_dir_page(hv, &page)
            })
            .collect()
    };
    encode_root(layout, &root_entries, &mut page).expect("layout counts");
    grant_dir_page(hv, &page)
}

/// Maps an exported buffer: the root page, then every leaf in one batch,
/// then every data page in one batch; the directory pages are unmapped
/// once decoded. References carried inline need no directory: one batch.
/// On any failure, whatever was mapped is unmapped.
fn map_buffer(
    hv: &mut Hypervisor,
    me: DomId,
    peer: DomId,
    export: &Export,
    max: u64,
    rw: bool,
) -> Result<(Vec<MapHandle>, Window), DriverError> {
    let data = match &export.pages {
        PageRefs::Inline(refs) => refs.as_slice().to_vec(),
        PageRefs::Directory(root_ref) => {
            let (root_handle, root) = hv
                .map(me, peer, &[*root_ref], false)
                .pop()
                .expect("one result per operation")
                .map_err(DriverError::Map)?;
            let mut dir = vec![root_handle];
            let decoded = decode_directory(hv, me, peer, &root, export.size, max, &mut dir);
            unmap_all(hv, me, &dir);
            decoded?
        }
    };
    let mut handles = Vec::with_capacity(data.len());
    let mut windows = Vec::with_capacity(data.len());
    let mut failed = None;
    for result in hv.map(me, peer, &data, rw) {
        match result {
            Ok((h, w)) => {
                handles.push(h);
                windows.push(w);
            }
            Err(status) => {
                failed.get_or_insert(status);
            }
        }
    }
    if let Some(status) = failed {
        unmap_all(hv, me, &handles);
        return Err(DriverError::Map(status));
    }
    Ok((handles, Window::join(&windows, rw)))
}

/// Reads the directory whose root is mapped; leaves are mapped in one
/// batch and their handles added to `dir`.
fn decode_directory(
    hv: &mut Hypervisor,
    me: DomId,
    peer: DomId,
    root: &Window,
    size: u64,
    max: u64,
    dir: &mut Vec<MapHandle>,
) -> Result<Vec<GrantRef>, DriverError> {
    let layout = read_root_header(root, size, max).map_err(DriverError::Decode)?;
    let filler = GrantRef::new(FIRST_GREF).expect("valid");
    let mut data = vec![filler; layout.nr_pages() as usize];
    if layout.nr_leaves() == 0 {
        read_root_entries(root, &layout, &mut data).map_err(DriverError::Decode)?;
        return Ok(data);
    }
    let mut leaves = vec![filler; layout.nr_leaves() as usize];
    read_root_entries(root, &layout, &mut leaves).map_err(DriverError::Decode)?;
    let mut windows = Vec::with_capacity(leaves.len());
    let mut failed = None;
    for result in hv.map(me, peer, &leaves, false) {
        match result {
            Ok((h, w)) => {
                dir.push(h);
                windows.push(w);
            }
            Err(status) => {
                failed.get_or_insert(status);
            }
        }
    }
    if let Some(status) = failed {
        return Err(DriverError::Map(status));
    }
    for (index, leaf) in (0u32..).zip(&windows) {
        let range = layout.leaf_range(index).expect("index below nr_leaves");
        read_leaf(leaf, &layout, index, &mut data[range]).map_err(DriverError::Decode)?;
    }
    Ok(data)
}
