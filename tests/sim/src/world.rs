// SPDX-License-Identifier: MIT
//! Two domains, a hypervisor and a xenstore: the connection is set up and
//! torn down by the real XenBus state machines of `xenbus-proto` over the
//! in-memory store, the messages are moved by event-channel
//! notifications, and domains can be killed and restarted at any point.
//!
//! The backend domain ([`Side::Back`]) and the frontend domain
//! ([`Side::Front`]) each run a [`Domain`] driver. The toolstack part
//! (device creation and removal) is played by [`World`] with the schema's
//! `create_device`, `begin_remove_device` and `remove_device_dirs`, as the
//! project's dom0 tool does; when a domain dies its whole
//! `/local/domain/<id>` tree disappears, as xenstored does.

use hyper_dmabuf_common::channel::ChannelConfig;
use hyper_dmabuf_common::ring::{init_shared, Requester, Responder};
use hyper_dmabuf_common::wire::{MapEpoch, Op, Response, Slot, SLOT_SIZE};
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_common::xen::{DomId, GrantRef};
use hyper_dmabuf_common::Error;
use hyper_dmabuf_xenbus_mem_store::MemStore;
use hyper_dmabuf_xenbus_proto::schema::{
    self, BackendConfig, BackendLimits, DeviceSpec, FrontendLimits, FrontendRings, Negotiated,
};
use hyper_dmabuf_xenbus_proto::{Action, Actions, BackendMachine, FrontendMachine, NodePath};

use crate::driver::{Conn, Domain, RingHold};
use crate::hv::{Counters, Hypervisor, MapHandle, PageId};
use crate::mem::Window;

/// Which end of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The backend domain.
    Back,
    /// The frontend domain.
    Front,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::Back => Side::Front,
            Side::Front => Side::Back,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Back => 0,
            Side::Front => 1,
        }
    }
}

/// Settings of a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorldConfig {
    /// `max-ring-page-order` the toolstack writes (and the frontend asks).
    pub ring_page_order: u32,
    /// `max-buffer-size` the toolstack writes.
    pub max_buffer_size: u64,
    /// `feature-rw` the toolstack writes.
    pub feature_rw: bool,
    /// Seed of the domains' id generators.
    pub seed: u64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            ring_page_order: 2,
            max_buffer_size: 64 << 20,
            feature_rw: true,
            seed: 1,
        }
    }
}

/// The frontend's rings between `AllocRingsAndPublish` and `Connect`.
struct PendingRings {
    pages: Vec<(PageId, GrantRef)>,
    front_ring: Window,
    back_ring: Window,
    port: u32,
}

enum Xb {
    Front {
        machine: FrontendMachine,
        negotiated: Option<Negotiated>,
        pending: Option<PendingRings>,
    },
    Back {
        machine: BackendMachine,
        config: Option<BackendConfig>,
    },
}

struct Node {
    dom: Domain,
    xb: Option<Xb>,
}

/// What [`World::pump`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PumpReport {
    /// `process` calls made.
    pub process_calls: u32,
    /// Fatal protocol errors that closed a connection.
    pub fatal: u32,
}

/// The simulation: a hypervisor, a xenstore, a backend and a frontend.
pub struct World {
    /// The hypervisor.
    pub hv: Hypervisor,
    /// The xenstore.
    pub store: MemStore,
    cfg: WorldConfig,
    nodes: [Option<Node>; 2],
    spec: Option<DeviceSpec>,
    /// XenBus protocol errors logged by the machines.
    pub xenbus_errors: Vec<String>,
    /// Fatal channel errors (each closed the connection).
    pub fatal_errors: Vec<(Side, Error)>,
    restarts: u64,
}

/// Driver defaults of the simulated backend.
const BACK_LIMITS: BackendLimits = BackendLimits {
    default_ring_page_order: 1,
    max_ring_page_order: 4,
    default_max_buffer_size: 1 << 30,
    max_buffer_size_ceiling: 1 << 30,
};

/// Limits of the simulated frontend.
const FRONT_LIMITS: FrontendLimits = FrontendLimits {
    max_ring_page_order: 4,
    max_buffer_size: 1 << 30,
};

/// Most `process` rounds one pump may take before it is called a livelock.
const PUMP_LIMIT: u32 = 100_000;

impl World {
    /// Two new domains with the device between them, connected.
    pub fn new(cfg: WorldConfig) -> Self {
        let mut hv = Hypervisor::new();
        let back = hv.create_domain();
        let front = hv.create_domain();
        let mut w = World {
            hv,
            store: MemStore::new(),
            cfg,
            nodes: [
                Some(Node {
                    dom: Domain::new(back, cfg.seed),
                    xb: None,
                }),
                Some(Node {
                    dom: Domain::new(front, cfg.seed),
                    xb: None,
                }),
            ],
            spec: None,
            xenbus_errors: Vec::new(),
            fatal_errors: Vec::new(),
            restarts: 0,
        };
        w.connect();
        w
    }

    /// The settings.
    pub fn config(&self) -> WorldConfig {
        self.cfg
    }

    /// Whether `side` has a live domain.
    pub fn alive(&self, side: Side) -> bool {
        self.nodes[side.index()].is_some()
    }

    /// The domain at `side`.
    ///
    /// # Panics
    ///
    /// If it was killed and not restarted.
    pub fn dom(&self, side: Side) -> &Domain {
        &self.nodes[side.index()].as_ref().expect("domain alive").dom
    }

    /// The domain at `side` and the hypervisor, to call driver operations.
    ///
    /// # Panics
    ///
    /// If it was killed and not restarted.
    pub fn split(&mut self, side: Side) -> (&mut Domain, &mut Hypervisor) {
        let node = self.nodes[side.index()].as_mut().expect("domain alive");
        (&mut node.dom, &mut self.hv)
    }

    /// The id of the domain at `side`.
    pub fn id(&self, side: Side) -> DomId {
        self.dom(side).id
    }

    /// Whether both ends have a connection.
    pub fn connected(&self) -> bool {
        [Side::Back, Side::Front]
            .iter()
            .all(|&s| self.alive(s) && self.dom(s).conn.is_some())
    }

    /// Pages per ring of the current connection.
    pub fn ring_pages(&self) -> usize {
        let order = self
            .cfg
            .ring_page_order
            .min(FRONT_LIMITS.max_ring_page_order);
        1 << order
    }

    fn dirs(&self) -> Option<(NodePath, NodePath)> {
        let spec = self.spec?;
        Some((
            NodePath::frontend_dir(spec.front, spec.devid).ok()?,
            NodePath::backend_dir(spec.back, spec.front, spec.devid).ok()?,
        ))
    }

    // ---- XenBus ----

    /// Creates the device between the two live domains (toolstack), probes
    /// both drivers and runs the handshake to Connected.
    ///
    /// # Panics
    ///
    /// If a domain is missing or the handshake does not connect.
    pub fn connect(&mut self) {
        let spec = DeviceSpec {
            front: self.id(Side::Front).get(),
            back: self.id(Side::Back).get(),
            devid: 0,
            max_ring_page_order: Some(self.cfg.ring_page_order),
            max_buffer_size: Some(self.cfg.max_buffer_size),
            feature_rw: Some(self.cfg.feature_rw),
        };
        schema::create_device(&mut self.store, &spec).expect("toolstack creates the device");
        self.spec = Some(spec);
        let (fdir, bdir) = self.dirs().expect("device exists");
        for token in ["back", "front", "online"] {
            self.store.unwatch(token);
        }
        self.store.watch(
            NodePath::new(fdir.as_str(), "state").unwrap().as_str(),
            "back",
        );
        self.store.watch(
            NodePath::new(bdir.as_str(), "state").unwrap().as_str(),
            "front",
        );
        self.store.watch(
            NodePath::new(bdir.as_str(), "online").unwrap().as_str(),
            "online",
        );
        for side in [Side::Back, Side::Front] {
            let xb = match side {
                Side::Back => Xb::Back {
                    machine: BackendMachine::new(),
                    config: None,
                },
                Side::Front => Xb::Front {
                    machine: FrontendMachine::new(),
                    negotiated: None,
                    pending: None,
                },
            };
            self.nodes[side.index()].as_mut().expect("alive").xb = Some(xb);
        }
        for side in [Side::Back, Side::Front] {
            self.probe(side);
        }
        self.settle();
        assert!(
            self.connected(),
            "XenBus handshake did not connect: {:?}; store: {:?}",
            self.xenbus_errors,
            self.store.log().iter().rev().take(12).collect::<Vec<_>>()
        );
        self.pump();
    }

    /// Probes the driver instance of `side`: its watch on the peer's
    /// state fires once when registered (as xenstored does), which the
    /// machine records, then `start` answers it.
    fn probe(&mut self, side: Side) {
        self.deliver(side);
        let acts = match self.xb(side) {
            Some(Xb::Back { machine, .. }) => machine.start(),
            Some(Xb::Front { machine, .. }) => machine.start(),
            None => Actions::new(),
        };
        self.exec(side, acts);
    }

    fn xb(&mut self, side: Side) -> Option<&mut Xb> {
        self.nodes[side.index()].as_mut()?.xb.as_mut()
    }

    /// Delivers watch events until none is left.
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            let events = self.store.take_events();
            if events.is_empty() {
                return;
            }
            // Watches coalesce: each end handles the peer's state once per
            // batch, as read when it handles it.
            let fired = |token: &str| events.iter().any(|e| e.token == token);
            let (back, front, online) = (fired("back"), fired("front"), fired("online"));
            if online {
                self.deliver_online();
            }
            if back {
                self.deliver(Side::Back);
            }
            if front {
                self.deliver(Side::Front);
            }
        }
        panic!("xenstore watches never settle");
    }

    fn deliver(&mut self, side: Side) {
        let Some((fdir, bdir)) = self.dirs() else {
            return;
        };
        let peer_dir = match side {
            Side::Back => fdir,
            Side::Front => bdir,
        };
        let state = schema::read_state(&mut self.store, peer_dir.as_str());
        let online = schema::read_online(&mut self.store, bdir.as_str()).unwrap_or(false);
        let acts = match (self.xb(side), state) {
            (None, _) => return,
            (Some(Xb::Back { machine, .. }), Ok(s)) => machine.on_peer_state(s, online),
            (Some(Xb::Front { machine, .. }), Ok(s)) => machine.on_peer_state(s),
            (Some(Xb::Back { machine, .. }), Err(_)) => machine.on_local_error(),
            (Some(Xb::Front { machine, .. }), Err(_)) => machine.on_local_error(),
        };
        self.exec(side, acts);
    }

    fn deliver_online(&mut self) {
        let Some((_, bdir)) = self.dirs() else {
            return;
        };
        let online = schema::read_online(&mut self.store, bdir.as_str()).unwrap_or(false);
        if let Some(Xb::Back { machine, .. }) = self.xb(Side::Back) {
            let acts = machine.on_online_changed(online);
            self.exec(Side::Back, acts);
        }
    }

    fn exec(&mut self, side: Side, acts: Actions) {
        for &action in &acts {
            if let Err(why) = self.act(side, action) {
                self.xenbus_errors
                    .push(format!("{side:?}: {action:?}: {why}"));
                let acts = match self.xb(side) {
                    Some(Xb::Back { machine, .. }) => machine.on_local_error(),
                    Some(Xb::Front { machine, .. }) => machine.on_local_error(),
                    None => Actions::new(),
                };
                self.exec(side, acts);
                return;
            }
        }
    }

    fn act(&mut self, side: Side, action: Action) -> Result<(), String> {
        let (fdir, bdir) = self.dirs().ok_or("no device")?;
        let my_dir = match side {
            Side::Back => bdir,
            Side::Front => fdir,
        };
        match action {
            Action::SwitchState(s) => {
                // As Linux's xenbus_switch_state: never re-create a state
                // node the toolstack removed, never rewrite the same state.
                let path = NodePath::new(my_dir.as_str(), "state").map_err(|e| e.to_string())?;
                let current = self.store.get(path.as_str()).map(<[u8]>::to_vec);
                let same = current.as_deref() == Some(s.as_u32().to_string().as_bytes());
                if current.is_some() && !same {
                    schema::write_state(&mut self.store, my_dir.as_str(), s)
                        .map_err(|e| e.to_string())?;
                }
            }
            Action::PublishBackendNodes => {
                let config =
                    schema::read_toolstack_config(&mut self.store, bdir.as_str(), &BACK_LIMITS)
                        .map_err(|e| e.to_string())?;
                schema::publish_backend(&mut self.store, bdir.as_str(), &config)
                    .map_err(|e| e.to_string())?;
                if let Some(Xb::Back { config: c, .. }) = self.xb(side) {
                    *c = Some(config);
                }
            }
            Action::ReadBackendNodes => {
                let offer = schema::read_backend_config(&mut self.store, bdir.as_str())
                    .map_err(|e| e.to_string())?;
                let n = schema::negotiate(&offer, &FRONT_LIMITS).map_err(|e| e.to_string())?;
                if let Some(Xb::Front { negotiated, .. }) = self.xb(side) {
                    *negotiated = Some(n);
                }
            }
            Action::AllocRingsAndPublish => self.alloc_rings(fdir.as_str())?,
            Action::MapRingsAndBind => self.map_rings(fdir.as_str())?,
            Action::Connect => {
                let back = self.id(Side::Back);
                let Some(Xb::Front {
                    negotiated,
                    pending,
                    ..
                }) = self.xb(side)
                else {
                    return Err("not a frontend".into());
                };
                let n = negotiated.ok_or("not negotiated")?;
                let p = pending.take().ok_or("no rings")?;
                let config = ChannelConfig {
                    version: n.version,
                    max_buffer_bytes: n.max_buffer_size,
                    allow_rw: n.feature_rw,
                };
                let conn = Conn::new(
                    back,
                    p.port,
                    config,
                    p.front_ring,
                    p.back_ring,
                    RingHold::Granted(p.pages),
                )
                .map_err(|e| e.to_string())?;
                self.split(side).0.conn = Some(conn);
            }
            Action::Disconnect => {
                let (dom, hv) = self.split(side);
                dom.disconnect(hv);
            }
            Action::Teardown => {
                let (dom, hv) = self.split(side);
                dom.teardown(hv);
                let me = dom.id;
                if let Some(Xb::Front { pending, .. }) = self.xb(side) {
                    if let Some(p) = pending.take() {
                        release_pending(&mut self.hv, me, p);
                    }
                }
                if side == Side::Front {
                    schema::clear_frontend(&mut self.store, fdir.as_str())
                        .map_err(|e| e.to_string())?;
                }
            }
            // The wait is bounded and the release defers any end of access
            // the peer still blocks; the simulation goes on at once.
            Action::AwaitPeerRelease => {}
            Action::LogProtocolError { ours, peer } => {
                self.xenbus_errors
                    .push(format!("{side:?}: peer in {peer} while {ours}"));
            }
        }
        Ok(())
    }

    fn alloc_rings(&mut self, fdir: &str) -> Result<(), String> {
        let back = self.id(Side::Back);
        let front = self.id(Side::Front);
        let (n, old) = match self.xb(Side::Front) {
            Some(Xb::Front {
                negotiated: Some(n),
                pending,
                ..
            }) => (*n, pending.take()),
            _ => return Err("not negotiated".into()),
        };
        if let Some(p) = old {
            release_pending(&mut self.hv, front, p);
        }
        let per_ring = 1usize << n.ring_page_order;
        let hv = &mut self.hv;
        let mut pages = Vec::new();
        for _ in 0..2 * per_ring {
            let page = hv.alloc_page(front);
            let gref = hv
                .grant_access(front, page, back, false)
                .map_err(|e| format!("{e:?}"))?;
            pages.push((page, gref));
        }
        let ids: Vec<PageId> = pages.iter().map(|(p, _)| *p).collect();
        let front_ring = hv.pages_window(front, &ids[..per_ring]);
        let back_ring = hv.pages_window(front, &ids[per_ring..]);
        init_shared(&front_ring).map_err(|e| e.to_string())?;
        init_shared(&back_ring).map_err(|e| e.to_string())?;
        let port = hv
            .evtchn_alloc_unbound(front, back)
            .map_err(|e| format!("{e:?}"))?;
        let refs: Vec<u32> = pages.iter().map(|(_, g)| g.get()).collect();
        let pending = PendingRings {
            pages,
            front_ring,
            back_ring,
            port,
        };
        let rings = FrontendRings::new(
            n.version,
            n.ring_page_order,
            &refs[..per_ring],
            &refs[per_ring..],
            port,
        );
        let published = rings.map_err(|e| e.to_string()).and_then(|r| {
            schema::publish_frontend(&mut self.store, fdir, &r).map_err(|e| e.to_string())
        });
        match published {
            Ok(()) => {
                if let Some(Xb::Front { pending: p, .. }) = self.xb(Side::Front) {
                    *p = Some(pending);
                }
                Ok(())
            }
            Err(e) => {
                release_pending(&mut self.hv, front, pending);
                Err(e)
            }
        }
    }

    fn map_rings(&mut self, fdir: &str) -> Result<(), String> {
        let back = self.id(Side::Back);
        let front = self.id(Side::Front);
        let config = match self.xb(Side::Back) {
            Some(Xb::Back {
                config: Some(c), ..
            }) => *c,
            _ => return Err("backend nodes not published".into()),
        };
        let rings = schema::read_frontend_rings(&mut self.store, fdir, &config)
            .map_err(|e| e.to_string())?;
        let mut grefs = Vec::new();
        for &raw in rings.ring_refs().iter().chain(rings.back_ring_refs()) {
            grefs.push(GrantRef::new(raw).map_err(|e| e.to_string())?);
        }
        let hv = &mut self.hv;
        let mut handles: Vec<MapHandle> = Vec::new();
        let mut windows = Vec::new();
        let mut failed = None;
        for r in hv.map(back, front, &grefs, true) {
            match r {
                Ok((h, w)) => {
                    handles.push(h);
                    windows.push(w);
                }
                Err(s) => {
                    failed.get_or_insert(s);
                }
            }
        }
        let bound = match failed {
            Some(s) => Err(format!("ring map failed: {s:?}")),
            None => hv
                .evtchn_bind_interdomain(back, front, rings.event_channel())
                .map_err(|e| format!("{e:?}")),
        };
        let port = match bound {
            Ok(port) => port,
            Err(e) => {
                hv.unmap(back, &handles);
                return Err(e);
            }
        };
        let per_ring = rings.ring_pages();
        let front_ring = Window::join(&windows[..per_ring], true);
        let back_ring = Window::join(&windows[per_ring..], true);
        let chan_config = ChannelConfig {
            version: rings.version(),
            max_buffer_bytes: config.max_buffer_size,
            allow_rw: config.feature_rw,
        };
        match Conn::new(
            front,
            port,
            chan_config,
            back_ring,
            front_ring,
            RingHold::Mapped(handles.clone()),
        ) {
            Ok(conn) => {
                self.split(Side::Back).0.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                self.hv.unmap(back, &handles);
                self.hv.evtchn_close(back, port);
                Err(e.to_string())
            }
        }
    }

    // ---- messages ----

    /// Runs the event handler of one side once, if its port is notified
    /// or it asked to run again (the other side does not run: a test
    /// chooses the order in which the two CPUs get to their rings).
    /// Returns whether it ran.
    pub fn step(&mut self, side: Side) -> bool {
        let Some(node) = self.nodes[side.index()].as_mut() else {
            return false;
        };
        let dom = &mut node.dom;
        dom.flush(&mut self.hv);
        let Some(conn) = dom.conn.as_ref() else {
            return false;
        };
        if conn.hijacked || !(self.hv.take_pending(dom.id, conn.port) || conn.more) {
            return false;
        }
        if let Err(e) = dom.process(&mut self.hv) {
            self.fatal_errors.push((side, e));
            let acts = match self.xb(side) {
                Some(Xb::Back { machine, .. }) => machine.on_local_error(),
                Some(Xb::Front { machine, .. }) => machine.on_local_error(),
                None => Actions::new(),
            };
            self.exec(side, acts);
            self.settle();
        }
        true
    }

    /// Runs both drivers' event handlers until no notification is pending
    /// and no handler asked to run again; a fatal protocol error closes
    /// the connection through XenBus.
    ///
    /// # Panics
    ///
    /// On a livelock, or if the ends are quiescent while a request is
    /// unanswered (a lost wake-up).
    pub fn pump(&mut self) -> PumpReport {
        let mut report = PumpReport::default();
        for _ in 0..PUMP_LIMIT {
            let mut ran = false;
            let mut fatal = Vec::new();
            for side in [Side::Back, Side::Front] {
                let Some(node) = self.nodes[side.index()].as_mut() else {
                    continue;
                };
                let dom = &mut node.dom;
                // An owed notification is paid (the driver's notice timer,
                // NOTICE_DELAY_MS later; here the timed work): the round is
                // not the last.
                ran |= dom
                    .conn
                    .as_ref()
                    .is_some_and(|c| !c.hijacked && c.chan.notify_owed());
                dom.flush(&mut self.hv);
                let Some(conn) = dom.conn.as_ref() else {
                    continue;
                };
                if conn.hijacked {
                    continue;
                }
                let pending = self.hv.take_pending(dom.id, conn.port);
                if pending || conn.more {
                    ran = true;
                    report.process_calls += 1;
                    if let Err(e) = dom.process(&mut self.hv) {
                        fatal.push((side, e));
                    }
                }
            }
            for (side, e) in fatal {
                report.fatal += 1;
                self.fatal_errors.push((side, e));
                let acts = match self.xb(side) {
                    Some(Xb::Back { machine, .. }) => machine.on_local_error(),
                    Some(Xb::Front { machine, .. }) => machine.on_local_error(),
                    None => Actions::new(),
                };
                self.exec(side, acts);
                self.settle();
            }
            if !ran {
                self.assert_quiescent();
                return report;
            }
        }
        panic!("pump: livelock after {PUMP_LIMIT} rounds");
    }

    fn assert_quiescent(&self) {
        if !self.connected() {
            return;
        }
        let hijacked = [Side::Back, Side::Front]
            .iter()
            .any(|&s| self.dom(s).conn.as_ref().is_some_and(|c| c.hijacked));
        if hijacked {
            return;
        }
        for side in [Side::Back, Side::Front] {
            let conn = self.dom(side).conn.as_ref().expect("connected");
            assert_eq!(
                conn.chan.outstanding(),
                0,
                "{side:?}: requests left unanswered with no notification pending (lost wake-up)"
            );
            let queued = self.dom(side).stats().queued;
            assert_eq!(queued, 0, "{side:?}: messages left queued");
        }
    }

    // ---- a hostile peer ----

    /// Takes over the connection of the domain at `side`, right after
    /// connecting and before any message: its driver stops handling the
    /// rings, and the returned [`RawPeer`] writes raw slots into them.
    ///
    /// # Panics
    ///
    /// If `side` is not connected or already sent something.
    pub fn hijack(&mut self, side: Side) -> RawPeer {
        let dom = &mut self.nodes[side.index()].as_mut().expect("alive").dom;
        let id = dom.id;
        dom.hostile = true;
        let conn = dom.conn.as_mut().expect("connected");
        assert_eq!(conn.chan.outstanding(), 0, "hijack before any traffic");
        conn.hijacked = true;
        let (ours, theirs) = conn.windows.clone();
        RawPeer {
            id,
            port: conn.port,
            req: Requester::new(ours.clone()).expect("ring checked at connect"),
            rsp: Responder::new(theirs.clone()).expect("ring checked at connect"),
            ours,
            theirs,
        }
    }

    // ---- life and death ----

    /// Kills the domain at `side` (`xl destroy`): the hypervisor destroys
    /// it, xenstored drops its tree, the survivor's driver reacts through
    /// XenBus, and the toolstack removes the stale device.
    pub fn kill(&mut self, side: Side) {
        let node = self.nodes[side.index()].take().expect("domain alive");
        let id = node.dom.id;
        drop(node);
        self.hv.destroy(id);
        self.store.zap(&format!("/local/domain/{}", id.get()));
        self.settle();
        self.remove_device();
        self.pump();
    }

    /// The toolstack removes the device as libxl does: backend `online` =
    /// 0 and `state` = Closing, the ends close, then both directories are
    /// removed and both drivers' instances unbound.
    pub fn disconnect(&mut self) {
        if let Some(spec) = self.spec {
            if self.alive(Side::Back) {
                schema::begin_remove_device(&mut self.store, &spec).expect("store works");
                self.settle();
            }
        }
        self.remove_device();
        self.pump();
    }

    fn remove_device(&mut self) {
        let Some(spec) = self.spec else { return };
        schema::remove_device_dirs(&mut self.store, &spec).expect("store works");
        self.store.take_events();
        for side in [Side::Back, Side::Front] {
            let acts = match self.xb(side) {
                Some(Xb::Back { machine, .. }) => machine.on_remove(),
                Some(Xb::Front { machine, .. }) => machine.on_remove(),
                None => continue,
            };
            self.exec(side, acts);
            // The instance is unbound: whatever it still held goes.
            if let Some(node) = self.nodes[side.index()].as_mut() {
                node.dom.teardown(&mut self.hv);
                if let Some(Xb::Front {
                    pending: Some(p), ..
                }) = node.xb.take()
                {
                    release_pending(&mut self.hv, node.dom.id, p);
                }
            }
        }
        for token in ["back", "front", "online"] {
            self.store.unwatch(token);
        }
        self.store.take_events();
        self.spec = None;
    }

    /// Unloads and reloads the driver of `side` (`rmmod` and `modprobe`)
    /// while both domains live and the device stays: the instance is
    /// removed (`on_remove`), the peer follows through XenBus, a new
    /// instance probes and connects again. The domain's user space keeps
    /// its buffers and its mappings.
    pub fn reload(&mut self, side: Side) {
        let acts = match self.xb(side) {
            Some(Xb::Back { machine, .. }) => machine.on_remove(),
            Some(Xb::Front { machine, .. }) => machine.on_remove(),
            None => return,
        };
        self.exec(side, acts);
        if let Some(node) = self.nodes[side.index()].as_mut() {
            node.dom.teardown(&mut self.hv);
            if let Some(Xb::Front {
                pending: Some(p), ..
            }) = node.xb.take()
            {
                release_pending(&mut self.hv, node.dom.id, p);
            }
        }
        self.settle();
        self.pump();
        let xb = match side {
            Side::Back => Xb::Back {
                machine: BackendMachine::new(),
                config: None,
            },
            Side::Front => Xb::Front {
                machine: FrontendMachine::new(),
                negotiated: None,
                pending: None,
            },
        };
        self.nodes[side.index()].as_mut().expect("alive").xb = Some(xb);
        self.probe(side);
        self.settle();
        assert!(
            self.connected(),
            "no reconnection after reloading {side:?}: {:?}",
            self.xenbus_errors
        );
        self.pump();
    }

    /// Boots a new domain at `side` (a new domain id, a fresh driver) and
    /// connects the device again.
    pub fn restart(&mut self, side: Side) {
        assert!(!self.alive(side), "restart of a live domain");
        let id = self.hv.create_domain();
        self.restarts += 1;
        self.nodes[side.index()] = Some(Node {
            dom: Domain::new(id, self.cfg.seed.wrapping_add(self.restarts)),
            xb: None,
        });
        self.connect();
    }

    // ---- checks ----

    /// Checks the hypervisor's bookkeeping and every driver against it.
    pub fn check(&self) {
        self.hv.check();
        for side in [Side::Back, Side::Front] {
            // A domain the hypervisor destroyed (fault injection) but the
            // world has not buried yet runs no code, and a hijacked one
            // breaks its own tables on purpose: neither is checked.
            let hijacked = self.alive(side) && self.dom(side).hostile;
            if self.alive(side) && self.hv.alive(self.id(side)) && !hijacked {
                self.dom(side).check(&self.hv);
            }
        }
        assert_eq!(self.store.open_transactions(), 0, "leaked transaction");
        // Between two honest, live, connected ends, an export lives as long
        // as its importer maps it: grants are never ended under a mapping.
        let honest = [Side::Back, Side::Front]
            .iter()
            .all(|&s| self.alive(s) && self.hv.alive(self.id(s)) && !self.dom(s).hostile);
        if honest && self.connected() {
            for side in [Side::Back, Side::Front] {
                for hid in self.dom(side).mapped_imports() {
                    assert!(
                        self.dom(side.other()).export_state(&hid).is_some(),
                        "{:?} ended an export that {side:?} still maps",
                        side.other()
                    );
                }
            }
        }
    }

    /// What the connection itself holds: the frontend grants (and owns)
    /// both rings and one port, the backend maps them and has one port.
    pub fn ring_baseline(&self, side: Side) -> Counters {
        if !self.connected() {
            return Counters::default();
        }
        let pages = 2 * self.ring_pages();
        match side {
            Side::Front => Counters {
                grants: pages,
                pages,
                ports: 1,
                ..Counters::default()
            },
            Side::Back => Counters {
                maps: pages,
                ports: 1,
                ..Counters::default()
            },
        }
    }

    /// Asserts the domain at `side` holds nothing but the connection: no
    /// export, import, orphan, queued message, and hypervisor counters at
    /// the connection's baseline (zero when disconnected).
    pub fn assert_idle(&self, side: Side) {
        let dom = self.dom(side);
        let s = dom.stats();
        assert_eq!(
            (s.exports, s.imports, s.orphans, s.queued),
            (0, 0, 0, 0),
            "{side:?} driver still holds {s:?}"
        );
        let want = self.ring_baseline(side);
        let mut got = self.hv.counters(dom.id);
        // Local buffers are the user's, not the driver's.
        got.pages -= self.buffer_pages(side);
        assert_eq!(got, want, "{side:?} hypervisor counters");
    }

    fn buffer_pages(&self, side: Side) -> usize {
        self.dom(side).buffer_page_count()
    }

    /// Closes every user's buffers and imports on both sides (the
    /// processes exit), disconnects, and asserts
    /// every counter is zero: drivers, hypervisor (every domain, dead ones
    /// included) and the device's xenstore nodes.
    pub fn finish(mut self) {
        for side in [Side::Back, Side::Front] {
            if self.alive(side) {
                let (dom, hv) = self.split(side);
                dom.close_all(hv);
            }
        }
        self.pump();
        self.check();
        let dirs = self.dirs();
        self.disconnect();
        self.check();
        for side in [Side::Back, Side::Front] {
            if self.alive(side) {
                self.assert_idle(side);
            }
        }
        assert_eq!(self.hv.totals(), Counters::default(), "hypervisor totals");
        if let Some((fdir, bdir)) = dirs {
            assert!(self.store.nodes_below(fdir.as_str()).is_empty());
            assert!(self.store.nodes_below(bdir.as_str()).is_empty());
        }
    }
}

fn release_pending(hv: &mut Hypervisor, me: DomId, p: PendingRings) {
    for (page, gref) in p.pages {
        hv.end_access_deferred(me, gref).expect("ring grant exists");
        hv.put_page(me, page).expect("ring page is ours");
    }
    hv.evtchn_close(me, p.port);
}

/// A peer that writes raw slots into the rings instead of running the
/// protocol code (see [`World::hijack`]).
pub struct RawPeer {
    /// Its domain.
    pub id: DomId,
    /// Its event-channel port.
    pub port: u32,
    /// Its end of the ring it requests on.
    pub req: Requester<Window>,
    /// Its end of the ring the victim requests on.
    pub rsp: Responder<Window>,
    /// The ring it requests on, for writing its header by hand.
    pub ours: Window,
    /// The ring the victim requests on.
    theirs: Window,
}

impl RawPeer {
    /// The ring the victim requests on, for writing its header by hand.
    pub fn rsp_window(&self) -> Window {
        self.theirs.clone()
    }

    /// Pushes a raw request slot, publishes it and notifies.
    ///
    /// # Errors
    ///
    /// [`Error::RingFull`].
    pub fn send(&mut self, hv: &mut Hypervisor, slot: &Slot) -> Result<(), Error> {
        self.req.push(slot)?;
        if self.req.publish() {
            hv.notify(self.id, self.port);
        }
        Ok(())
    }

    /// Takes every response the victim published. The operation byte is
    /// taken as echoed (an unknown one included); the status and the
    /// reserved bytes are checked.
    ///
    /// # Errors
    ///
    /// A status that does not decode, reserved bytes set, or a ring the
    /// victim overflowed.
    pub fn responses(&mut self) -> Result<Vec<Response>, Error> {
        let mut out = Vec::new();
        let mut slot: Slot = [0u8; SLOT_SIZE];
        while self.req.pop(&mut slot)? {
            let word = |at: usize| [slot[at], slot[at + 1], slot[at + 2], slot[at + 3]];
            if let Some(offset) = slot[5..8].iter().chain(&slot[16..]).position(|&b| b != 0) {
                return Err(Error::ReservedNotZero { offset });
            }
            let status = Status::from_wire(i32::from_le_bytes(word(8)))?;
            let raw_epoch = u32::from_le_bytes(word(12));
            // Only a Busy answer to UNEXPORT names a mapping epoch.
            let map_epoch = if slot[4] == Op::Unexport as u8 && status == Status::Busy {
                Some(MapEpoch::new(raw_epoch)?)
            } else if raw_epoch != 0 {
                return Err(Error::BadEpoch);
            } else {
                None
            };
            out.push(Response {
                req_id: u32::from_le_bytes(word(0)),
                op: slot[4],
                status,
                map_epoch,
            });
        }
        Ok(out)
    }

    /// Takes every request of the victim and answers each with `status`;
    /// returns them.
    ///
    /// # Errors
    ///
    /// A ring the victim overflowed.
    pub fn answer_all(&mut self, hv: &mut Hypervisor, status: Status) -> Result<Vec<Slot>, Error> {
        let mut out = Vec::new();
        let mut slot: Slot = [0u8; SLOT_SIZE];
        while self.rsp.pop(&mut slot)? {
            let response = Response {
                req_id: hyper_dmabuf_common::wire::request_id(&slot),
                op: hyper_dmabuf_common::wire::request_op(&slot),
                status,
                map_epoch: None,
            };
            self.rsp.push(&response.encode())?;
            out.push(slot);
        }
        if !out.is_empty() && self.rsp.publish() {
            hv.notify(self.id, self.port);
        }
        Ok(out)
    }
}
