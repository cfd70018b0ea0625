// SPDX-License-Identifier: MIT
//! Two-domain simulation: a frontend and a backend driver, each a state
//! machine plus an executor of its actions, talk through one in-memory
//! xenstore with watches, as the kernel module does through xenstored.
//!
//! The executors model what the kernel drivers do with the actions: the
//! frontend grants ring pages (a set of grant references stands for its
//! grant table), the backend maps them (and fails to map a reference that
//! is not granted). Every scenario checks the end states, that nothing is
//! left granted, mapped or published, and that no grant was revoked while
//! the peer still mapped it.

use std::collections::BTreeSet;

use hyper_dmabuf_xenbus_mem_store::{Change, MemStore};
use hyper_dmabuf_xenbus_proto::schema::{self, *};
use hyper_dmabuf_xenbus_proto::store::NodePath;
use hyper_dmabuf_xenbus_proto::{
    Action, Actions, BackendMachine, Error, FrontendMachine, XenbusState as S,
};
use proptest::prelude::*;

const FRONT: u16 = 5;
const BACK: u16 = 1;

fn spec() -> DeviceSpec {
    DeviceSpec {
        front: FRONT,
        back: BACK,
        devid: 0,
        max_ring_page_order: Some(2),
        max_buffer_size: None,
        feature_rw: Some(true),
    }
}

struct FrontDriver {
    m: FrontendMachine,
    negotiated: Option<Negotiated>,
    rings: Option<FrontendRings>,
    active: bool,
}

struct BackDriver {
    m: BackendMachine,
    config: Option<BackendConfig>,
    mapped: Option<FrontendRings>,
}

struct World {
    s: MemStore,
    fdir: String,
    bdir: String,
    front: Option<FrontDriver>,
    back: Option<BackDriver>,
    /// The frontend domain's grant table: references granted to the
    /// backend.
    granted: BTreeSet<u32>,
    next_gref: u32,
    front_pending: bool,
    back_pending: bool,
    online_pending: bool,
    protocol_errors: Vec<(S, S)>,
    revoked_while_mapped: u32,
    wrong_side_actions: u32,
    /// Overwrites one frontend node right after the frontend publishes.
    tamper_front: Option<(String, Vec<u8>)>,
}

impl World {
    fn new() -> Self {
        let mut s = MemStore::new();
        schema::create_device(&mut s, &spec()).unwrap();
        Self {
            s,
            fdir: NodePath::frontend_dir(FRONT, 0).unwrap().to_string(),
            bdir: NodePath::backend_dir(BACK, FRONT, 0).unwrap().to_string(),
            front: None,
            back: None,
            granted: BTreeSet::new(),
            next_gref: 8,
            front_pending: false,
            back_pending: false,
            online_pending: false,
            protocol_errors: Vec::new(),
            revoked_while_mapped: 0,
            wrong_side_actions: 0,
            tamper_front: None,
        }
    }

    /// What the toolstack wrote, restored if a domain's death removed it.
    fn ensure_dirs(&mut self) {
        let (f, b) = (self.fdir.clone(), self.bdir.clone());
        if self.s.get(&format!("{f}/backend")).is_none() {
            self.s.poke(&format!("{f}/backend"), b.as_bytes());
            self.s.poke(&format!("{f}/backend-id"), b"1");
            self.s.poke(&format!("{f}/state"), b"1");
        }
        if self.s.get(&format!("{b}/frontend")).is_none() {
            self.s.poke(&format!("{b}/frontend"), f.as_bytes());
            self.s.poke(&format!("{b}/frontend-id"), b"5");
            self.s.poke(&format!("{b}/online"), b"1");
            self.s.poke(&format!("{b}/state"), b"1");
        }
    }

    fn load_front(&mut self) {
        assert!(self.front.is_none());
        self.ensure_dirs();
        self.s.watch(&format!("{}/state", self.bdir), "front");
        self.front = Some(FrontDriver {
            m: FrontendMachine::new(),
            negotiated: None,
            rings: None,
            active: false,
        });
        // A watch fires once when it is registered.
        self.front_pending = true;
        let acts = self.front.as_mut().unwrap().m.start();
        self.exec_front(acts);
    }

    fn load_back(&mut self) {
        assert!(self.back.is_none());
        self.ensure_dirs();
        self.s.watch(&format!("{}/state", self.fdir), "back");
        self.s
            .watch(&format!("{}/online", self.bdir), "back-online");
        self.back = Some(BackDriver {
            m: BackendMachine::new(),
            config: None,
            mapped: None,
        });
        self.back_pending = true;
        let acts = self.back.as_mut().unwrap().m.start();
        self.exec_back(acts);
    }

    fn unload_front(&mut self) {
        if let Some(f) = self.front.as_mut() {
            let acts = f.m.on_remove();
            self.exec_front(acts);
            self.s.unwatch("front");
            self.front = None;
            self.front_pending = false;
        }
    }

    fn unload_back(&mut self) {
        if let Some(b) = self.back.as_mut() {
            let acts = b.m.on_remove();
            self.exec_back(acts);
            self.s.unwatch("back");
            self.s.unwatch("back-online");
            self.back = None;
            self.back_pending = false;
        }
    }

    /// The frontend domain is destroyed: its driver vanishes, its grants
    /// with it (Xen keeps mapped pages alive until unmapped), and its
    /// xenstore directory is removed.
    fn kill_front(&mut self) {
        self.s.unwatch("front");
        self.front = None;
        self.front_pending = false;
        self.granted.clear();
        let dir = format!("/local/domain/{FRONT}");
        self.s.zap(&dir);
    }

    /// The backend domain (a driver domain) is destroyed.
    fn kill_back(&mut self) {
        self.s.unwatch("back");
        self.s.unwatch("back-online");
        self.back = None;
        self.back_pending = false;
        let dir = format!("/local/domain/{BACK}");
        self.s.zap(&dir);
    }

    fn pump(&mut self) {
        for ev in self.s.take_events() {
            match ev.token.as_str() {
                "front" if self.front.is_some() => self.front_pending = true,
                "back" if self.back.is_some() => self.back_pending = true,
                "back-online" if self.back.is_some() => self.online_pending = true,
                _ => {}
            }
        }
    }

    fn deliver_front(&mut self) {
        let peer = schema::read_state(&mut self.s, &self.bdir);
        let Some(f) = self.front.as_mut() else { return };
        let acts = match peer {
            Ok(p) => f.m.on_peer_state(p),
            Err(_) => f.m.on_local_error(),
        };
        self.exec_front(acts);
    }

    fn deliver_back(&mut self) {
        let peer = schema::read_state(&mut self.s, &self.fdir);
        let online = schema::read_online(&mut self.s, &self.bdir).unwrap_or(false);
        let Some(b) = self.back.as_mut() else { return };
        let acts = match peer {
            Ok(p) => b.m.on_peer_state(p, online),
            Err(_) => b.m.on_local_error(),
        };
        self.exec_back(acts);
    }

    /// Delivers watch events until both ends are quiet.
    fn run(&mut self) {
        for _ in 0..10_000 {
            self.pump();
            if self.front_pending {
                self.front_pending = false;
                self.deliver_front();
            } else if self.back_pending {
                self.back_pending = false;
                self.deliver_back();
            } else if self.online_pending {
                self.online_pending = false;
                let online = schema::read_online(&mut self.s, &self.bdir).unwrap_or(false);
                if let Some(b) = self.back.as_mut() {
                    let acts = b.m.on_online_changed(online);
                    self.exec_back(acts);
                }
            } else {
                self.check_invariants();
                return;
            }
        }
        panic!("the two ends never settle");
    }

    fn exec_front(&mut self, acts: Actions) {
        assert!(!acts.overflowed());
        for a in &acts {
            if self.front_action(*a).is_err() {
                let Some(f) = self.front.as_mut() else { return };
                let err = f.m.on_local_error();
                for a in &err {
                    let _ = self.front_action(*a);
                }
                return;
            }
        }
    }

    fn exec_back(&mut self, acts: Actions) {
        assert!(!acts.overflowed());
        for a in &acts {
            if self.back_action(*a).is_err() {
                let Some(b) = self.back.as_mut() else { return };
                let err = b.m.on_local_error();
                for a in &err {
                    let _ = self.back_action(*a);
                }
                return;
            }
        }
    }

    fn back_maps(&self, g: u32) -> bool {
        self.back
            .as_ref()
            .and_then(|b| b.mapped.as_ref())
            .is_some_and(|r| r.ring_refs().contains(&g) || r.back_ring_refs().contains(&g))
    }

    fn front_action(&mut self, a: Action) -> Result<(), Error> {
        match a {
            Action::SwitchState(st) => schema::write_state(&mut self.s, &self.fdir, st),
            Action::ReadBackendNodes => {
                let offer = schema::read_backend_config(&mut self.s, &self.bdir)?;
                let n = schema::negotiate(
                    &offer,
                    &FrontendLimits {
                        max_ring_page_order: 4,
                        max_buffer_size: 1 << 30,
                    },
                )?;
                self.front.as_mut().unwrap().negotiated = Some(n);
                Ok(())
            }
            Action::AllocRingsAndPublish => {
                let f = self.front.as_mut().unwrap();
                let n = f.negotiated.ok_or(Error::InvalidArgument)?;
                let pages = 1u32 << n.ring_page_order;
                let refs: Vec<u32> = (0..2 * pages).map(|i| self.next_gref + i).collect();
                self.next_gref += 2 * pages;
                self.granted.extend(&refs);
                let (a, b) = refs.split_at(pages as usize);
                let rings = FrontendRings::new(n.version, n.ring_page_order, a, b, 3)?;
                f.rings = Some(rings);
                schema::publish_frontend(&mut self.s, &self.fdir, &rings)?;
                if let Some((node, value)) = &self.tamper_front {
                    self.s.poke(&format!("{}/{node}", self.fdir), value);
                }
                Ok(())
            }
            Action::Connect => {
                let f = self.front.as_mut().unwrap();
                if f.rings.is_none() {
                    return Err(Error::InvalidArgument);
                }
                f.active = true;
                Ok(())
            }
            Action::Disconnect => {
                if let Some(f) = self.front.as_mut() {
                    f.active = false;
                }
                Ok(())
            }
            Action::Teardown => {
                let Some(f) = self.front.as_mut() else {
                    return Ok(());
                };
                f.active = false;
                f.negotiated = None;
                if let Some(r) = f.rings.take() {
                    for &g in r.ring_refs().iter().chain(r.back_ring_refs()) {
                        if self.back_maps(g) {
                            self.revoked_while_mapped += 1;
                        }
                        self.granted.remove(&g);
                    }
                }
                schema::clear_frontend(&mut self.s, &self.fdir)
            }
            Action::AwaitPeerRelease => {
                for _ in 0..100 {
                    let st = schema::read_state(&mut self.s, &self.bdir).unwrap_or(S::Unknown);
                    if FrontendMachine::peer_released(st) {
                        break;
                    }
                    self.pump();
                    if !self.back_pending {
                        break;
                    }
                    self.back_pending = false;
                    self.deliver_back();
                }
                Ok(())
            }
            Action::LogProtocolError { ours, peer } => {
                self.protocol_errors.push((ours, peer));
                Ok(())
            }
            Action::PublishBackendNodes | Action::MapRingsAndBind => {
                self.wrong_side_actions += 1;
                Err(Error::InvalidArgument)
            }
        }
    }

    fn back_action(&mut self, a: Action) -> Result<(), Error> {
        match a {
            Action::SwitchState(st) => schema::write_state(&mut self.s, &self.bdir, st),
            Action::PublishBackendNodes => {
                let c = schema::read_toolstack_config(
                    &mut self.s,
                    &self.bdir,
                    &BackendLimits {
                        default_ring_page_order: 1,
                        max_ring_page_order: 4,
                        default_max_buffer_size: 1 << 28,
                        max_buffer_size_ceiling: 1 << 30,
                    },
                )?;
                schema::publish_backend(&mut self.s, &self.bdir, &c)?;
                self.back.as_mut().unwrap().config = Some(c);
                Ok(())
            }
            Action::MapRingsAndBind => {
                let c = self
                    .back
                    .as_ref()
                    .unwrap()
                    .config
                    .ok_or(Error::InvalidArgument)?;
                let r = schema::read_frontend_rings(&mut self.s, &self.fdir, &c)?;
                // Mapping a reference the frontend did not grant fails.
                if r.ring_refs()
                    .iter()
                    .chain(r.back_ring_refs())
                    .any(|g| !self.granted.contains(g))
                {
                    return Err(Error::Store(22));
                }
                self.back.as_mut().unwrap().mapped = Some(r);
                Ok(())
            }
            Action::Teardown => {
                if let Some(b) = self.back.as_mut() {
                    b.mapped = None;
                }
                Ok(())
            }
            Action::AwaitPeerRelease => {
                for _ in 0..100 {
                    let st = schema::read_state(&mut self.s, &self.fdir).unwrap_or(S::Unknown);
                    if BackendMachine::peer_released(st) {
                        break;
                    }
                    self.pump();
                    if !self.front_pending {
                        break;
                    }
                    self.front_pending = false;
                    self.deliver_front();
                }
                Ok(())
            }
            Action::LogProtocolError { ours, peer } => {
                self.protocol_errors.push((ours, peer));
                Ok(())
            }
            Action::ReadBackendNodes
            | Action::AllocRingsAndPublish
            | Action::Connect
            | Action::Disconnect => {
                self.wrong_side_actions += 1;
                Err(Error::InvalidArgument)
            }
        }
    }

    fn check_invariants(&mut self) {
        assert_eq!(self.wrong_side_actions, 0);
        assert_eq!(self.s.open_transactions(), 0);
        if let Some(f) = &self.front {
            let st = f.m.state();
            if f.rings.is_some() {
                assert!(
                    matches!(st, S::Initialised | S::Connected | S::Closing),
                    "frontend holds rings in {st}"
                );
            }
            assert_eq!(f.active, st == S::Connected);
            let written = schema::read_state(&mut self.s, &self.fdir).unwrap();
            assert_eq!(written, st, "frontend state node");
        }
        if let Some(b) = &self.back {
            let st = b.m.state();
            assert_eq!(b.mapped.is_some(), st == S::Connected, "backend in {st}");
        }
    }

    fn front_state(&self) -> S {
        self.front.as_ref().map_or(S::Unknown, |f| f.m.state())
    }

    fn back_state(&self) -> S {
        self.back.as_ref().map_or(S::Unknown, |b| b.m.state())
    }

    fn assert_connected(&self) {
        assert_eq!(
            (self.front_state(), self.back_state()),
            (S::Connected, S::Connected)
        );
        let f = self.front.as_ref().unwrap();
        let b = self.back.as_ref().unwrap();
        assert_eq!(f.rings, b.mapped);
        assert!(f.active);
        let r = f.rings.unwrap();
        for g in r.ring_refs().iter().chain(r.back_ring_refs()) {
            assert!(self.granted.contains(g));
        }
        // Granted references are exactly the current rings'.
        assert_eq!(self.granted.len(), 2 * r.ring_pages());
    }

    fn assert_nothing_shared(&self) {
        assert!(self.granted.is_empty(), "grants left: {:?}", self.granted);
        assert!(self.back.as_ref().map_or(true, |b| b.mapped.is_none()));
        for node in ["ring-ref0", "back-ring-ref0", "event-channel", "version"] {
            assert_eq!(self.s.get(&format!("{}/{node}", self.fdir)), None, "{node}");
        }
    }

    fn front_states_written(&self) -> Vec<String> {
        let path = format!("{}/state", self.fdir);
        self.s
            .log()
            .iter()
            .filter_map(|c| match c {
                Change::Write(p, v) if *p == path => Some(String::from_utf8_lossy(v).into()),
                _ => None,
            })
            .collect()
    }
}

fn connected() -> World {
    let mut w = World::new();
    w.load_back();
    w.load_front();
    w.run();
    w.assert_connected();
    w
}

#[test]
fn normal_connect_backend_first() {
    let w = connected();
    // The toolstack's max-ring-page-order (2) wins over the driver's 4.
    assert_eq!(
        w.front.as_ref().unwrap().rings.unwrap().ring_page_order(),
        2
    );
    assert_eq!(
        w.s.get_str(&format!("{}/feature-rw", w.bdir)),
        Some("1".into())
    );
    assert!(w.protocol_errors.is_empty());
    assert_eq!(w.front_states_written(), ["1", "1", "3", "4"]);
}

#[test]
fn normal_connect_frontend_first() {
    let mut w = World::new();
    w.load_front();
    w.run();
    assert_eq!(w.front_state(), S::Initialising);
    w.load_back();
    w.run();
    w.assert_connected();
}

#[test]
fn connect_survives_transaction_conflicts() {
    let mut w = World::new();
    w.s.fail_next_commits(5);
    w.load_back();
    w.load_front();
    w.run();
    w.assert_connected();
}

#[test]
fn frontend_reload() {
    let mut w = connected();
    w.unload_front();
    w.run();
    assert_eq!(w.back_state(), S::InitWait);
    assert_eq!(w.revoked_while_mapped, 0);
    w.assert_nothing_shared();
    w.load_front();
    w.run();
    w.assert_connected();
    assert!(w.protocol_errors.is_empty());
}

#[test]
fn frontend_crash_and_new_instance() {
    let mut w = connected();
    // The driver instance vanishes without cleaning up; a new instance
    // starts over in the same domain (its old grants stay, as leaked).
    w.s.unwatch("front");
    w.front = None;
    w.granted.clear();
    w.load_front();
    w.run();
    w.assert_connected();
}

#[test]
fn frontend_domain_death() {
    let mut w = connected();
    w.kill_front();
    w.run();
    // The backend unmapped and waits for a new frontend.
    assert_eq!(w.back_state(), S::InitWait);
    assert!(w.back.as_ref().unwrap().mapped.is_none());
    // The domain comes back (same id, for the test) and reconnects.
    w.load_front();
    w.run();
    w.assert_connected();
}

#[test]
fn backend_reload() {
    let mut w = connected();
    w.unload_back();
    w.run();
    assert_eq!(w.front_state(), S::Closed);
    assert!(!w.front.as_ref().unwrap().m.failed());
    assert_eq!(w.revoked_while_mapped, 0);
    w.assert_nothing_shared();
    w.load_back();
    w.run();
    w.assert_connected();
    assert!(w.protocol_errors.is_empty());
}

#[test]
fn backend_domain_death_reconfigures() {
    let mut w = connected();
    w.kill_back();
    w.run();
    assert_eq!(w.front_state(), S::Initialising);
    let written = w.front_states_written();
    assert_eq!(&written[written.len() - 2..], ["7", "1"]);
    w.assert_nothing_shared();
    w.load_back();
    w.run();
    w.assert_connected();
}

#[test]
fn backend_crash_and_new_instance() {
    let mut w = connected();
    // The backend driver instance vanishes; its directory stays, and a new
    // instance republishes and goes to InitWait.
    w.s.unwatch("back");
    w.back = None;
    w.load_back();
    w.run();
    w.assert_connected();
    let written = w.front_states_written();
    assert!(written.contains(&"7".to_owned()), "{written:?}");
}

#[test]
fn closing_from_frontend() {
    let mut w = connected();
    let acts = w.front.as_mut().unwrap().m.on_local_error();
    w.exec_front(acts);
    w.run();
    assert_eq!(w.front_state(), S::Closed);
    assert!(w.front.as_ref().unwrap().m.failed());
    // The backend closed with it and then went back to waiting.
    assert_eq!(w.back_state(), S::InitWait);
    w.assert_nothing_shared();
    // A reload of the frontend driver reconnects.
    w.unload_front();
    w.load_front();
    w.run();
    w.assert_connected();
}

#[test]
fn closing_from_backend() {
    let mut w = connected();
    let acts = w.back.as_mut().unwrap().m.on_local_error();
    w.exec_back(acts);
    w.run();
    assert_eq!((w.front_state(), w.back_state()), (S::Closed, S::Closed));
    w.assert_nothing_shared();
    // A new frontend instance clears the backend's error latch.
    w.unload_front();
    w.load_front();
    w.run();
    w.assert_connected();
}

#[test]
fn toolstack_removal() {
    let mut w = connected();
    schema::begin_remove_device(&mut w.s, &spec()).unwrap();
    w.run();
    assert_eq!(
        schema::read_state(&mut w.s, &w.bdir),
        Ok(S::Closed),
        "the toolstack waits for the backend to reach Closed"
    );
    assert_eq!(w.front_state(), S::Closed);
    w.assert_nothing_shared();
    schema::remove_device_dirs(&mut w.s, &spec()).unwrap();
    w.unload_front();
    w.unload_back();
    w.run();
    assert!(w.s.nodes_below(&w.fdir).is_empty());
    assert!(w.s.nodes_below(&w.bdir).is_empty());
}

#[test]
fn toolstack_removal_without_frontend_driver() {
    let mut w = World::new();
    w.load_back();
    w.run();
    assert_eq!(w.back_state(), S::InitWait);
    schema::begin_remove_device(&mut w.s, &spec()).unwrap();
    w.run();
    assert_eq!(schema::read_state(&mut w.s, &w.bdir), Ok(S::Closed));
    schema::remove_device_dirs(&mut w.s, &spec()).unwrap();
    w.unload_back();
    w.run();
    assert!(w.s.nodes_below(&w.bdir).is_empty());
}

#[test]
fn toolstack_removal_after_frontend_error() {
    let mut w = connected();
    let acts = w.front.as_mut().unwrap().m.on_local_error();
    w.exec_front(acts);
    w.run();
    assert_eq!((w.front_state(), w.back_state()), (S::Closed, S::InitWait));
    schema::begin_remove_device(&mut w.s, &spec()).unwrap();
    w.run();
    assert_eq!(schema::read_state(&mut w.s, &w.bdir), Ok(S::Closed));
}

#[test]
fn both_removed() {
    let mut w = connected();
    w.unload_back();
    w.unload_front();
    w.run();
    assert_eq!(w.revoked_while_mapped, 0);
    w.assert_nothing_shared();
    assert_eq!(schema::read_state(&mut w.s, &w.fdir), Ok(S::Closed));
    assert_eq!(schema::read_state(&mut w.s, &w.bdir), Ok(S::Closed));
}

#[test]
fn hostile_backend_versions() {
    let mut w = World::new();
    w.load_back();
    w.run();
    w.s.poke(&format!("{}/versions", w.bdir), b"4,5");
    w.load_front();
    w.run();
    assert_eq!(w.front_state(), S::Closed);
    assert!(w.front.as_ref().unwrap().m.failed());
    w.assert_nothing_shared();
}

#[test]
fn hostile_frontend_nodes_close_the_device() {
    for (node, value) in [
        ("ring-ref0", &b"7"[..]),
        ("ring-ref0", b"99999"),
        ("back-ring-ref1", b"x"),
        ("ring-page-order", b"3"),
        ("ring-ref9", b"4000"),
        ("event-channel", b"0"),
        ("version", b"01"),
    ] {
        let mut w = World::new();
        w.tamper_front = Some((node.to_owned(), value.to_vec()));
        w.load_back();
        w.load_front();
        w.run();
        assert_eq!(
            (w.front_state(), w.back_state()),
            (S::Closed, S::Closed),
            "{node} = {value:?}"
        );
        assert!(w.back.as_ref().unwrap().m.failed());
        w.assert_nothing_shared();
    }
}

/// Values a hostile peer writes into its `state` node.
fn hostile_state_values() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0u32..10).prop_map(|v| v.to_string().into_bytes()),
        Just(b"".to_vec()),
        Just(b"04".to_vec()),
        Just(b"4 ".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"4294967300".to_vec()),
        Just(vec![b'4'; 3000]),
        proptest::collection::vec(any::<u8>(), 0..8),
    ]
}

/// A hostile step: write a value, or remove the node.
fn hostile_steps() -> impl Strategy<Value = Vec<Option<Vec<u8>>>> {
    proptest::collection::vec(
        proptest::option::weighted(0.9, hostile_state_values()),
        0..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The backend is replaced by a peer that writes anything into its
    /// `state`; afterwards a real backend comes back. The frontend never
    /// panics, keeps its invariants, and either reconnects or stays down
    /// after a protocol error of its peer.
    #[test]
    fn hostile_backend_state_jumps(steps in hostile_steps()) {
        let mut w = connected();
        w.s.unwatch("back");
        w.back = None;
        let path = format!("{}/state", w.bdir);
        for step in &steps {
            match step {
                Some(v) => w.s.poke(&path, v),
                None => w.s.zap(&path),
            }
            w.run();
        }
        w.s.poke(&path, b"1");
        w.load_back();
        w.run();
        let f = w.front.as_ref().unwrap();
        if f.m.failed() {
            prop_assert_eq!(w.front_state(), S::Closed);
            w.assert_nothing_shared();
        } else {
            w.assert_connected();
        }
    }

    /// The frontend is replaced by a hostile peer; afterwards a real
    /// frontend instance comes back and must reconnect (a new frontend
    /// instance clears the backend's error latch).
    #[test]
    fn hostile_frontend_state_jumps(steps in hostile_steps()) {
        let mut w = connected();
        w.s.unwatch("front");
        w.front = None;
        let path = format!("{}/state", w.fdir);
        for step in &steps {
            match step {
                Some(v) => w.s.poke(&path, v),
                None => w.s.zap(&path),
            }
            w.run();
            let b = w.back.as_ref().unwrap();
            prop_assert_eq!(b.mapped.is_some(), b.m.state() == S::Connected);
        }
        w.granted.clear();
        w.load_front();
        w.run();
        w.assert_connected();
    }

    /// Random life-cycle events on two real drivers; after each, the
    /// invariants hold; at the end, fresh driver instances connect.
    #[test]
    fn random_life_cycles(ops in proptest::collection::vec(0u8..10, 0..32)) {
        let mut w = World::new();
        for op in ops {
            match op {
                0 if w.front.is_none() => w.load_front(),
                1 if w.back.is_none() => w.load_back(),
                2 => w.unload_front(),
                3 => w.unload_back(),
                4 => {
                    if let Some(f) = w.front.as_mut() {
                        let acts = f.m.on_local_error();
                        w.exec_front(acts);
                    }
                }
                5 => {
                    if let Some(b) = w.back.as_mut() {
                        let acts = b.m.on_local_error();
                        w.exec_back(acts);
                    }
                }
                6 => w.kill_front(),
                7 => w.kill_back(),
                8 => w.s.fail_next_commits(2),
                _ => {}
            }
            w.run();
            prop_assert_eq!(w.revoked_while_mapped, 0);
        }
        w.unload_front();
        w.unload_back();
        w.run();
        w.granted.clear();
        w.s.fail_next_commits(0);
        w.load_back();
        w.load_front();
        w.run();
        w.assert_connected();
    }
}
