//! A simulated hyper-dmabuf driver in one domain: what the kernel module
//! does around [`Channel`], over the simulated hypervisor.
//!
//! It keeps the tables the real driver keeps — exports (id → protocol
//! state, granted data pages, directory pages), imports (id → protocol
//! state, mapping handles), the event queue user space reads, completions
//! of waiting ioctls — and implements [`Host`] over them, so that every
//! message is handled by the real protocol code. The ioctl-level
//! operations ([`Domain::export`], [`Domain::import`], [`Domain::release`],
//! [`Domain::unexport`], [`Domain::update`]) and the connection teardown
//! ([`Domain::teardown`]) follow the design: grant every page, build the
//! two-level directory, map the root, all leaves in one batch, all data
//! pages in one batch, check every status, undo on partial failure.

use std::collections::{BTreeMap, VecDeque};

use hyper_dmabuf_common::channel::{Channel, ChannelConfig, ExportState, Host, ImportState};
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::pgdir::{
    encode_leaf, encode_root, read_leaf, read_root_entries, read_root_header, DirPage, Layout,
};
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::{Export, ExportFlags, Message, PrivData};
use hyper_dmabuf_common::xen::{DomId, GrantRef, Status};
use hyper_dmabuf_common::Error;

use crate::hv::{GrantError, Hypervisor, MapHandle, MapStatus, PageId, FIRST_GREF};
use crate::mem::Window;
use crate::rng::Rng;

/// Most imports accepted from one peer.
pub const MAX_IMPORTS_PER_PEER: usize = 256;

/// Why an operation of the simulated driver failed (the errno of the
/// ioctl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError {
    /// No connection to a peer.
    NotConnected,
    /// No such buffer (or not from/to the connected peer).
    NoSuchBuffer,
    /// The buffer was revoked by its exporter.
    Revoked,
    /// A writable import of a read-only export, or a read-write export on
    /// a device without `feature-rw`.
    NotWritable,
    /// No ring slot now; try again after the peer answered.
    Again,
    /// The buffer size was refused.
    Size(Error),
    /// A grant map failed with this status.
    Map(MapStatus),
    /// The peer's page directory is malformed.
    Decode(Error),
    /// A grant operation failed.
    Grant(GrantError),
}

/// A local buffer (what a dma-buf's pages are in the simulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BufId(u32);

struct UserBuffer {
    pages: Vec<PageId>,
    size: u64,
}

struct ExportEntry {
    peer: DomId,
    state: ExportState,
    export: Export,
    data: Vec<GrantRef>,
    dir: Vec<(PageId, GrantRef)>,
}

struct Mapping {
    handles: Vec<MapHandle>,
    window: Window,
    users: u32,
}

struct ImportEntry {
    peer: DomId,
    state: ImportState,
    mapping: Option<Mapping>,
}

/// A message waiting for a ring slot, in order. Each entry is the channel
/// call to make once a slot is free, so that state changes happen when
/// the message is really sent.
#[derive(Debug, Clone, Copy)]
enum Outgoing {
    Announce(Export, u64),
    Revoke(HyperDmabufId, u64),
    Update(HyperDmabufId, PrivData, u64),
    Unmapped(HyperDmabufId),
}

impl Outgoing {
    fn token(&self) -> Option<u64> {
        match *self {
            Outgoing::Announce(_, t) | Outgoing::Revoke(_, t) | Outgoing::Update(_, _, t) => {
                Some(t)
            }
            Outgoing::Unmapped(_) => None,
        }
    }
}

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
    /// Slots of our request ring.
    pub slots: u32,
    /// The ring pages.
    pub rings: RingHold,
    /// Our request ring and the peer's, for a test that takes over the
    /// connection.
    pub windows: (Window, Window),
    /// `process` asked to be called again.
    pub more: bool,
    /// A test drives this end by hand; the pump leaves it alone.
    pub hijacked: bool,
    outbox: VecDeque<Outgoing>,
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
        let slots = hyper_dmabuf_common::ring::slots_for_len(ours.len());
        let chan = Channel::new(peer, config, ours.clone(), theirs.clone())?;
        Ok(Conn {
            peer,
            port,
            chan,
            config,
            slots,
            rings,
            windows: (ours, theirs),
            more: false,
            hijacked: false,
            outbox: VecDeque::new(),
        })
    }

    /// Messages waiting for a ring slot.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }
}

/// The tables the [`Host`] implementation works on.
#[derive(Default)]
struct Tables {
    exports: BTreeMap<[u8; 24], ExportEntry>,
    imports: BTreeMap<[u8; 24], ImportEntry>,
    /// Imports still mapped by local users after their connection died.
    orphans: BTreeMap<[u8; 24], Mapping>,
    events: VecDeque<Event>,
    completions: BTreeMap<u64, Status>,
    protocol_errors: Vec<Error>,
}

impl Tables {
    fn end_export(&mut self, hv: &mut Hypervisor, me: DomId, key: &[u8; 24]) {
        let Some(e) = self.exports.remove(key) else {
            return;
        };
        for gref in &e.data {
            hv.end_access_deferred(me, *gref)
                .expect("export grants exist until the export ends");
        }
        for (page, gref) in &e.dir {
            hv.end_access_deferred(me, *gref)
                .expect("directory grants exist until the export ends");
            hv.put_page(me, *page).expect("directory pages are ours");
        }
        self.events.push_back(buffer_event(
            EventType::GrantsEnded,
            e.peer,
            Some(e.export.hid),
        ));
    }
}

struct Ctx<'a> {
    t: &'a mut Tables,
    hv: &'a mut Hypervisor,
    me: DomId,
    peer: DomId,
}

impl Host for Ctx<'_> {
    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportState> {
        let peer = self.peer;
        self.t
            .exports
            .get_mut(&hid.encode())
            .filter(|e| e.peer == peer && e.export.hid.matches(hid))
            .map(|e| &mut e.state)
    }

    fn end_export(&mut self, hid: &HyperDmabufId) {
        let key = hid.encode();
        if self
            .t
            .exports
            .get(&key)
            .is_some_and(|e| e.peer == self.peer)
        {
            self.t.end_export(self.hv, self.me, &key);
        }
    }

    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportState> {
        let peer = self.peer;
        self.t
            .imports
            .get_mut(&hid.encode())
            .filter(|e| e.peer == peer)
            .map(|e| &mut e.state)
    }

    fn add_import(&mut self, import: ImportState) -> Result<(), Status> {
        let peer = self.peer;
        if self.t.imports.values().filter(|e| e.peer == peer).count() >= MAX_IMPORTS_PER_PEER {
            return Err(Status::NoSpace);
        }
        self.t.imports.insert(
            import.export.hid.encode(),
            ImportEntry {
                peer,
                state: import,
                mapping: None,
            },
        );
        Ok(())
    }

    fn remove_import(&mut self, hid: &HyperDmabufId) {
        if let Some(e) = self.t.imports.remove(&hid.encode()) {
            assert!(
                e.mapping.is_none(),
                "the channel forgot an import this domain still maps"
            );
        }
    }

    fn post_event(&mut self, event: Event) {
        self.t.events.push_back(event);
    }

    fn complete(&mut self, token: u64, status: Status) {
        let old = self.t.completions.insert(token, status);
        assert!(old.is_none(), "token {token} completed twice");
    }

    fn protocol_error(&mut self, error: Error) {
        self.t.protocol_errors.push(error);
    }
}

fn buffer_event(kind: EventType, peer: DomId, hid: Option<HyperDmabufId>) -> Event {
    Event {
        kind,
        peer,
        hid,
        size: 0,
        flags: ExportFlags::default(),
        priv_data: PrivData::EMPTY,
        lost: 0,
    }
}

/// What a driver holds, for the invariant checks and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverStats {
    /// Live exports.
    pub exports: usize,
    /// Known imports (mapped or not).
    pub imports: usize,
    /// Mapped imports.
    pub mapped: usize,
    /// Mapped imports of a dead connection.
    pub orphans: usize,
    /// Local buffers.
    pub buffers: usize,
    /// Messages waiting for a ring slot.
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
    t: Tables,
    /// The connection to the peer, once XenBus connected it.
    pub conn: Option<Conn>,
    /// The rings and port of a stopped connection, until teardown.
    detached: Option<(RingHold, u32)>,
    /// A test drives this domain as a hostile peer: its tables are not
    /// checked.
    pub hostile: bool,
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
        Domain {
            id,
            rng: Rng::new(seed ^ u64::from(id.get()).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            buffers: BTreeMap::new(),
            next_buf: 1,
            next_token: 1,
            t: Tables::default(),
            conn: None,
            detached: None,
            hostile: false,
        }
    }

    /// The connected peer.
    pub fn peer(&self) -> Option<DomId> {
        self.conn.as_ref().map(|c| c.peer)
    }

    // ---- local buffers ----

    /// Allocates a local buffer of `size` bytes (at least one page).
    pub fn create_buffer(&mut self, hv: &mut Hypervisor, size: u64) -> BufId {
        let nr = size.div_ceil(XEN_PAGE_SIZE as u64).max(1);
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
        let mapped: Vec<(HyperDmabufId, u32)> = self
            .t
            .imports
            .values()
            .filter_map(|e| e.mapping.as_ref().map(|m| (e.state.export.hid, m.users)))
            .collect();
        for (hid, users) in mapped {
            for _ in 0..users {
                self.release(hv, &hid).expect("mapped import");
            }
        }
        for m in std::mem::take(&mut self.t.orphans).into_values() {
            unmap_all(hv, self.id, &m.handles);
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
                if !self.t.exports.contains_key(&hid.encode()) {
                    return hid;
                }
            }
        }
    }

    /// Grants the buffer's pages to the peer and builds its directory, and
    /// records the export, without announcing it.
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
        let conn = self.conn.as_ref().ok_or(DriverError::NotConnected)?;
        let (peer, config) = (conn.peer, conn.config);
        if rw && !config.allow_rw {
            return Err(DriverError::NotWritable);
        }
        let b = &self.buffers[&buf];
        let layout = Layout::new(b.size, config.max_buffer_bytes).map_err(DriverError::Size)?;
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
            data.clone()
        } else {
            (0..layout.nr_leaves())
                .map(|i| {
                    let range = layout.leaf_range(i).expect("leaf in range");
                    encode_leaf(&layout, i, &data[range], &mut page).expect("layout counts");
                    grant_dir_page(hv, &page)
                })
                .collect()
        };
        encode_root(&layout, &root_entries, &mut page).expect("layout counts");
        let root = grant_dir_page(hv, &page);
        // The root goes first in `dir`, as the teardown does not care.
        let hid = self.new_hid();
        let export = Export {
            hid,
            size: layout.size(),
            dir_gref: root,
            flags: if rw {
                ExportFlags::WRITABLE
            } else {
                ExportFlags::default()
            },
            priv_data,
        };
        self.t.exports.insert(
            hid.encode(),
            ExportEntry {
                peer,
                state: ExportState::new(),
                export,
                data,
                dir,
            },
        );
        Ok(export)
    }

    /// Exports a local buffer to the peer: grants, directory, EXPORT.
    /// Returns the id and the token whose completion says whether the peer
    /// accepted it.
    ///
    /// # Errors
    ///
    /// As [`Domain::export_unannounced`].
    pub fn export(
        &mut self,
        hv: &mut Hypervisor,
        buf: BufId,
        rw: bool,
        priv_data: PrivData,
    ) -> Result<(HyperDmabufId, u64), DriverError> {
        let export = self.export_unannounced(hv, buf, rw, priv_data)?;
        let token = self.token();
        self.submit(hv, Outgoing::Announce(export, token));
        Ok((export.hid, token))
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Starts the unexport handshake. Returns the token completed with the
    /// peer's answer.
    ///
    /// # Errors
    ///
    /// [`DriverError::NotConnected`], [`DriverError::NoSuchBuffer`].
    pub fn unexport(
        &mut self,
        hv: &mut Hypervisor,
        hid: &HyperDmabufId,
    ) -> Result<u64, DriverError> {
        let peer = self.peer().ok_or(DriverError::NotConnected)?;
        if self
            .t
            .exports
            .get(&hid.encode())
            .is_none_or(|e| e.peer != peer)
        {
            return Err(DriverError::NoSuchBuffer);
        }
        let token = self.token();
        self.submit(hv, Outgoing::Revoke(*hid, token));
        Ok(token)
    }

    /// Sends new private data for an export.
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
        let peer = self.peer().ok_or(DriverError::NotConnected)?;
        if self
            .t
            .exports
            .get(&hid.encode())
            .is_none_or(|e| e.peer != peer)
        {
            return Err(DriverError::NoSuchBuffer);
        }
        let token = self.token();
        self.submit(hv, Outgoing::Update(*hid, priv_data, token));
        Ok(token)
    }

    /// The protocol state of an export.
    pub fn export_state(&self, hid: &HyperDmabufId) -> Option<ExportState> {
        self.t.exports.get(&hid.encode()).map(|e| e.state)
    }

    /// The grant references of an export's data pages, in order.
    pub fn export_grants(&self, hid: &HyperDmabufId) -> Option<Vec<GrantRef>> {
        self.t.exports.get(&hid.encode()).map(|e| e.data.clone())
    }

    /// The ids of every live export.
    pub fn exports(&self) -> Vec<HyperDmabufId> {
        self.t.exports.values().map(|e| e.export.hid).collect()
    }

    // ---- import side ----

    /// The protocol state of an import.
    pub fn import_state(&self, hid: &HyperDmabufId) -> Option<ImportState> {
        self.t.imports.get(&hid.encode()).map(|e| e.state)
    }

    /// The ids of every known import.
    pub fn imports(&self) -> Vec<HyperDmabufId> {
        self.t
            .imports
            .values()
            .map(|e| e.state.export.hid)
            .collect()
    }

    /// The imports this domain maps through its live connection (orphans
    /// excluded).
    pub fn mapped_imports(&self) -> Vec<HyperDmabufId> {
        self.t
            .imports
            .values()
            .filter(|e| e.mapping.is_some())
            .map(|e| e.state.export.hid)
            .collect()
    }

    /// Users holding the mapping of an import (or of an orphan).
    pub fn users(&self, hid: &HyperDmabufId) -> u32 {
        let key = hid.encode();
        self.t
            .imports
            .get(&key)
            .and_then(|e| e.mapping.as_ref())
            .or_else(|| self.t.orphans.get(&key))
            .map_or(0, |m| m.users)
    }

    /// Imports a buffer: maps it (root, leaves in one batch, data pages in
    /// one batch) and tells the exporter. Importing a buffer already
    /// mapped only takes another user reference.
    ///
    /// # Errors
    ///
    /// [`DriverError::NotConnected`], [`DriverError::NoSuchBuffer`],
    /// [`DriverError::Revoked`], [`DriverError::NotWritable`],
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
        let peer = conn.peer;
        let entry = self
            .t
            .imports
            .get_mut(&hid.encode())
            .filter(|e| e.peer == peer)
            .ok_or(DriverError::NoSuchBuffer)?;
        if entry.state.revoked() {
            return Err(DriverError::Revoked);
        }
        if let Some(m) = &mut entry.mapping {
            if rw && !m.window.writable() {
                return Err(DriverError::NotWritable);
            }
            m.users += 1;
            return Ok(());
        }
        let export = entry.state.export;
        if rw && !export.flags.contains(ExportFlags::WRITABLE) {
            return Err(DriverError::NotWritable);
        }
        if conn.queued() > 0 || conn.chan.outstanding() >= conn.slots as usize {
            return Err(DriverError::Again);
        }
        let (handles, window) =
            map_buffer(hv, me, peer, &export, conn.config.max_buffer_bytes, rw)?;
        entry.mapping = Some(Mapping {
            handles,
            window,
            users: 1,
        });
        let mut ctx = Ctx {
            t: &mut self.t,
            hv,
            me,
            peer,
        };
        match conn.chan.import_mapped(&mut ctx, hid) {
            Ok(true) => hv.notify(me, conn.port),
            Ok(false) => {}
            Err(_) => {
                // Only a peer answering out of order can leave no request
                // id free while ring slots are: undo the mapping (the
                // channel changed nothing and sent nothing).
                let m = self
                    .t
                    .imports
                    .get_mut(&hid.encode())
                    .and_then(|e| e.mapping.take());
                if let Some(m) = m {
                    unmap_all(hv, me, &m.handles);
                }
                return Err(DriverError::Again);
            }
        }
        Ok(())
    }

    fn mapping(&self, hid: &HyperDmabufId) -> Option<&Mapping> {
        let key = hid.encode();
        self.t
            .imports
            .get(&key)
            .and_then(|e| e.mapping.as_ref())
            .or_else(|| self.t.orphans.get(&key))
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
    /// tells the exporter.
    ///
    /// # Errors
    ///
    /// [`DriverError::NoSuchBuffer`] if it is not mapped.
    pub fn release(&mut self, hv: &mut Hypervisor, hid: &HyperDmabufId) -> Result<(), DriverError> {
        let key = hid.encode();
        let me = self.id;
        if let Some(o) = self.t.orphans.get_mut(&key) {
            o.users -= 1;
            if o.users == 0 {
                let o = self.t.orphans.remove(&key).expect("present");
                unmap_all(hv, me, &o.handles);
            }
            return Ok(());
        }
        let entry = self
            .t
            .imports
            .get_mut(&key)
            .ok_or(DriverError::NoSuchBuffer)?;
        let m = entry.mapping.as_mut().ok_or(DriverError::NoSuchBuffer)?;
        m.users -= 1;
        if m.users > 0 {
            return Ok(());
        }
        let m = entry.mapping.take().expect("present");
        unmap_all(hv, me, &m.handles);
        self.submit(hv, Outgoing::Unmapped(*hid));
        Ok(())
    }

    // ---- messages ----

    fn submit(&mut self, hv: &mut Hypervisor, item: Outgoing) {
        match self.conn.as_mut() {
            Some(conn) => conn.outbox.push_back(item),
            None => {
                if let Some(token) = item.token() {
                    self.t.completions.insert(token, Status::NoSuchBuffer);
                }
                return;
            }
        }
        self.flush(hv);
    }

    /// Sends queued messages while the ring has free slots.
    pub fn flush(&mut self, hv: &mut Hypervisor) {
        let me = self.id;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.hijacked {
            return;
        }
        while let Some(&item) = conn.outbox.front() {
            if conn.chan.outstanding() >= conn.slots as usize {
                break;
            }
            let mut ctx = Ctx {
                t: &mut self.t,
                hv,
                me,
                peer: conn.peer,
            };
            let sent = match item {
                Outgoing::Announce(export, token) => conn.chan.announce(export, Some(token)),
                Outgoing::Revoke(hid, token) => {
                    // `revoke` answers Ok(false) both for "sent, no
                    // notification needed" and for "already unexported,
                    // nothing sent"; only in the first case will the token
                    // ever complete, so tell them apart here.
                    if ctx.export_mut(&hid).is_some_and(|s| s.unexported()) {
                        conn.outbox.pop_front();
                        ctx.complete(token, Status::Ok);
                        continue;
                    }
                    conn.chan.revoke(&mut ctx, &hid, Some(token))
                }
                Outgoing::Update(hid, priv_data, token) => conn
                    .chan
                    .send(Message::Update { hid, priv_data }, Some(token)),
                Outgoing::Unmapped(hid) => conn.chan.import_unmapped(&mut ctx, &hid),
            };
            if sent == Err(Error::RingFull) {
                // Only a peer answering out of order can hold every request
                // id while ring slots are free: wait for its answers.
                break;
            }
            conn.outbox.pop_front();
            match sent {
                Ok(true) => hv.notify(me, conn.port),
                Ok(false) => {}
                Err(Error::BadId) => {
                    // The buffer went away while the message waited (the
                    // export was refused, or the import forgotten).
                    if let Some(token) = item.token() {
                        ctx.complete(token, Status::NoSuchBuffer);
                    }
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }

    /// Handles what the peer sent (the event-channel handler).
    ///
    /// # Errors
    ///
    /// A fatal protocol error: the caller closes the connection.
    pub fn process(&mut self, hv: &mut Hypervisor) -> Result<(), Error> {
        let me = self.id;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut ctx = Ctx {
            t: &mut self.t,
            hv,
            me,
            peer: conn.peer,
        };
        let progress = conn.chan.process(&mut ctx)?;
        if progress.notify {
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
    /// error): fail waiting requests, end every export to the peer
    /// (deferred where still mapped), forget its imports (those still
    /// mapped by local users stay mapped until released). The rings and
    /// the event channel are kept until [`Domain::teardown`], since the
    /// backend may still map them. Idempotent.
    pub fn disconnect(&mut self, hv: &mut Hypervisor) {
        let me = self.id;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let peer = conn.peer;
        let mut ctx = Ctx {
            t: &mut self.t,
            hv,
            me,
            peer,
        };
        conn.chan.disconnect(&mut ctx);
        for item in conn.outbox.drain(..) {
            if let Some(token) = item.token() {
                ctx.complete(token, Status::NoSuchBuffer);
            }
        }
        let t = &mut self.t;
        let doomed: Vec<[u8; 24]> = t
            .exports
            .iter()
            .filter(|(_, e)| e.peer == peer)
            .map(|(k, _)| *k)
            .collect();
        for key in doomed {
            t.end_export(hv, me, &key);
        }
        let gone: Vec<[u8; 24]> = t
            .imports
            .iter()
            .filter(|(_, e)| e.peer == peer)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            let e = t.imports.remove(&key).expect("present");
            if let Some(m) = e.mapping {
                t.orphans.insert(key, m);
            }
        }
        self.detached = Some((conn.rings, conn.port));
        t.events
            .push_back(buffer_event(EventType::PeerDisconnected, peer, None));
    }

    // ---- what user space and the tests see ----

    /// Takes the queued events.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.t.events.drain(..).collect()
    }

    /// The status a waiting request completed with, if it did.
    pub fn completion(&self, token: u64) -> Option<Status> {
        self.t.completions.get(&token).copied()
    }

    /// Requests of the peer refused as malformed.
    pub fn protocol_errors(&self) -> &[Error] {
        &self.t.protocol_errors
    }

    /// What the driver holds.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            exports: self.t.exports.len(),
            imports: self.t.imports.len(),
            mapped: self
                .t
                .imports
                .values()
                .filter(|e| e.mapping.is_some())
                .count(),
            orphans: self.t.orphans.len(),
            buffers: self.buffers.len(),
            queued: self.conn.as_ref().map_or(0, |c| c.queued()),
        }
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
        for e in self.t.exports.values() {
            for gref in e.data.iter().chain(e.dir.iter().map(|(_, g)| g)) {
                assert!(hv.has_grant(me, *gref), "export grant {gref} missing");
            }
            live_grants += e.data.len() + e.dir.len();
        }
        let mut maps = 0;
        for e in self.t.imports.values() {
            if let Some(m) = &e.mapping {
                assert!(m.users > 0);
                maps += m.handles.len();
            }
            assert!(
                e.mapping.is_none() || e.state.mapped(),
                "mapped import not marked mapped"
            );
        }
        maps += self
            .t
            .orphans
            .values()
            .map(|m| m.handles.len())
            .sum::<usize>();
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

/// Maps an exported buffer: the root page, then every leaf in one batch,
/// then every data page in one batch; the directory pages are unmapped
/// once decoded. On any failure, whatever was mapped is unmapped.
fn map_buffer(
    hv: &mut Hypervisor,
    me: DomId,
    peer: DomId,
    export: &Export,
    max: u64,
    rw: bool,
) -> Result<(Vec<MapHandle>, Window), DriverError> {
    let (root_handle, root) = hv
        .map(me, peer, &[export.dir_gref], false)
        .pop()
        .expect("one result per operation")
        .map_err(DriverError::Map)?;
    let mut dir = vec![root_handle];
    let decoded = decode_directory(hv, me, peer, &root, export.size, max, &mut dir);
    unmap_all(hv, me, &dir);
    let data = decoded?;
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
