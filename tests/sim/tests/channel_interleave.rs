// SPDX-License-Identifier: MIT
//! The revocation handshake under random two-CPU interleavings.
//!
//! An exporter E and an importer I run the real [`Channel`] over shared
//! ring memory. A random schedule picks which side acts next (handle its
//! rings, or a user action: E revokes; I maps, unmaps, maps again), and
//! every read of a ring producer index may let the other side complete one
//! whole action right there, as a second CPU can. Run against `common/`
//! as it was before mapping epochs, this test finds both handshake races
//! within a few hundred cases (a RELEASE overtaking its Busy: the export
//! is never ended; a stale RELEASE answering a later Busy: the export is
//! ended under a live mapping). Properties:
//!
//! * safety: E never ends the export while I maps the buffer;
//! * liveness: once E revoked and I let go, E ends the export and I
//!   forgets it;
//! * no lost wake-up: when neither side has a notification pending or
//!   asked to run again, no request is left unanswered.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::AtomicU32;

use hyper_dmabuf_common::channel::{Channel, ChannelConfig, ExportState, Host, ImportState};
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::ring::init_shared;
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::uapi::Event;
use hyper_dmabuf_common::wire::{Export, ExportFlags, PageRefs, PrivData};
use hyper_dmabuf_common::xen::{DomId, GrantRef, Status};
use hyper_dmabuf_common::Error;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

const E: usize = 0;
const I: usize = 1;

/// The schedule and what both sides share outside their channels.
struct Sched {
    choices: RefCell<VecDeque<u8>>,
    /// What the other CPU does at each producer-index read.
    hooks: RefCell<VecDeque<u8>>,
    depth: Cell<u32>,
    /// An event-channel notification is pending for each side.
    pending: [Cell<bool>; 2],
    /// Whether I maps the buffer (the truth of its grant mappings).
    i_maps: Rc<Cell<bool>>,
    actors: RefCell<Vec<Weak<RefCell<Actor>>>>,
}

impl Sched {
    fn next(&self) -> Option<u8> {
        self.choices.borrow_mut().pop_front()
    }

    /// Called on every producer-index read by side `owner`: maybe the
    /// other side completes one action now.
    fn maybe_interleave(&self, owner: usize) {
        if self.depth.get() > 0 {
            return;
        }
        let Some(h) = self.hooks.borrow_mut().pop_front() else {
            return;
        };
        // One or two whole actions of the other side (one read in four),
        // or nothing.
        let actions = match h % 8 {
            0 => 1,
            1 => 2,
            _ => 0,
        };
        let other = self.actors.borrow()[1 - owner].upgrade().expect("alive");
        self.depth.set(1);
        for k in 0..actions {
            act(self, &other, (h / 8).wrapping_add(k));
        }
        self.depth.set(0);
    }
}

#[derive(Clone)]
struct Mem {
    words: Rc<[AtomicU32]>,
    owner: usize,
    sched: Rc<Sched>,
}

impl SharedMem for Mem {
    fn len(&self) -> usize {
        SharedMem::len(&self.words[..])
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.words[..].read_u32(offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.words[..].write_u32(offset, value)
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.sched.maybe_interleave(self.owner);
        self.words[..].load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) {
        self.words[..].store_release_u32(offset, value)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.words[..].read_bytes(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.words[..].write_bytes(offset, src)
    }
}

#[derive(Default)]
struct TestHost {
    exports: Vec<(HyperDmabufId, ExportState)>,
    imports: Vec<ImportState>,
    ended: u32,
    i_maps: Rc<Cell<bool>>,
}

impl Host for TestHost {
    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportState> {
        self.exports
            .iter_mut()
            .find(|(h, _)| h.matches(hid))
            .map(|(_, s)| s)
    }
    fn end_export(&mut self, hid: &HyperDmabufId) {
        assert!(
            !self.i_maps.get(),
            "the exporter ended the export while the importer maps it"
        );
        let before = self.exports.len();
        self.exports.retain(|(h, _)| !h.matches(hid));
        if self.exports.len() < before {
            self.ended += 1;
        }
    }
    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportState> {
        self.imports.iter_mut().find(|s| s.export.hid.matches(hid))
    }
    fn add_import(&mut self, import: ImportState) -> Result<(), Status> {
        self.imports.push(import);
        Ok(())
    }
    fn remove_import(&mut self, hid: &HyperDmabufId) {
        assert!(!self.i_maps.get(), "import forgotten while mapped");
        self.imports.retain(|s| !s.export.hid.matches(hid));
    }
    fn post_event(&mut self, _event: Event) {}
    fn complete(&mut self, _token: u64, _status: Status) {}
    fn protocol_error(&mut self, error: Error) {
        panic!("honest peers sent a malformed request: {error}");
    }
}

struct Actor {
    side: usize,
    chan: Channel<Mem>,
    host: TestHost,
    more: bool,
    revoked: bool,
    maps_left: u32,
}

fn hid() -> HyperDmabufId {
    HyperDmabufId::new(9, [3; KEY_LEN]).unwrap()
}

/// Runs one enabled action of `actor`, chosen by `c`. Returns whether one
/// ran.
fn act(sched: &Sched, actor: &RefCell<Actor>, c: u8) -> bool {
    let mut a = actor.borrow_mut();
    let a = &mut *a;
    let side = a.side;
    let can_process = sched.pending[side].get() || a.more;
    // A user action needs a free request slot (the driver waits for one).
    let slot = a.chan.outstanding() < SLOTS;
    let import = a.host.import_mut(&hid()).copied();
    let mut enabled: Vec<u8> = Vec::new();
    if can_process {
        enabled.push(0);
    }
    if side == E && !a.revoked && slot {
        enabled.push(1);
    }
    if side == I && slot {
        if let Some(s) = import {
            if !s.revoked() && !s.mapped() && a.maps_left > 0 {
                enabled.push(2);
            }
            if s.mapped() {
                enabled.push(3);
            }
        }
    }
    if a.chan.notify_owed() {
        enabled.push(4);
    }
    let Some(&action) = enabled.get(usize::from(c) % enabled.len().max(1)) else {
        return false;
    };
    let notify = match action {
        0 => {
            sched.pending[side].set(false);
            let p = a.chan.process(&mut a.host).expect("honest peers");
            a.more = p.more;
            p.notify
        }
        1 => {
            a.revoked = true;
            a.chan.revoke(&mut a.host, &hid(), None).unwrap()
        }
        2 => {
            // The driver maps first, then tells the exporter.
            a.maps_left -= 1;
            sched.i_maps.set(true);
            // Its notification is owed (action 4 pays it).
            a.chan.import_mapped(&mut a.host, &hid()).unwrap();
            false
        }
        3 => {
            // The driver unmaps first, then tells the exporter.
            sched.i_maps.set(false);
            a.chan.import_unmapped(&mut a.host, &hid()).unwrap()
        }
        // The timed work: what a MAPPED or answers left owed.
        _ => a.chan.take_notify_owed(),
    };
    if notify {
        sched.pending[1 - side].set(true);
    }
    true
}

/// Slots of a one-page ring.
const SLOTS: usize = 8;

const CONFIG: ChannelConfig = ChannelConfig {
    version: hyper_dmabuf_common::wire::VERSION_2,
    max_buffer_bytes: 1 << 30,
    allow_rw: false,
};

fn run(choices: Vec<u8>, hooks: Vec<u8>, maps: u32) {
    let i_maps = Rc::new(Cell::new(false));
    let sched = Rc::new(Sched {
        choices: RefCell::new(choices.into()),
        hooks: RefCell::new(hooks.into()),
        depth: Cell::new(0),
        pending: [Cell::new(false), Cell::new(false)],
        i_maps: i_maps.clone(),
        actors: RefCell::new(Vec::new()),
    });
    let ring = || -> Rc<[AtomicU32]> {
        let words: Rc<[AtomicU32]> = (0..1024).map(|_| AtomicU32::new(0)).collect();
        init_shared(&words[..]).unwrap();
        words
    };
    let (e_ring, i_ring) = (ring(), ring());
    let mem = |words: &Rc<[AtomicU32]>, owner| Mem {
        words: words.clone(),
        owner,
        sched: sched.clone(),
    };
    let (e_id, i_id) = (DomId::new(1).unwrap(), DomId::new(2).unwrap());
    let e = Rc::new(RefCell::new(Actor {
        side: E,
        chan: Channel::new(i_id, CONFIG, mem(&e_ring, E), mem(&i_ring, E)).unwrap(),
        host: TestHost {
            i_maps: i_maps.clone(),
            ..TestHost::default()
        },
        more: false,
        revoked: false,
        maps_left: 0,
    }));
    let i = Rc::new(RefCell::new(Actor {
        side: I,
        chan: Channel::new(e_id, CONFIG, mem(&i_ring, I), mem(&e_ring, I)).unwrap(),
        host: TestHost {
            i_maps: i_maps.clone(),
            ..TestHost::default()
        },
        more: false,
        revoked: false,
        maps_left: maps,
    }));
    *sched.actors.borrow_mut() = vec![Rc::downgrade(&e), Rc::downgrade(&i)];
    let actors = [&e, &i];

    // E exports; then the schedule runs.
    {
        let mut a = e.borrow_mut();
        let a = &mut *a;
        let export = Export {
            hid: hid(),
            size: 4096,
            pages: PageRefs::Directory(GrantRef::new(8).unwrap()),
            flags: ExportFlags::default(),
            priv_data: PrivData::EMPTY,
            fence: None,
        };
        a.host.exports.push((hid(), ExportState::new(export.size)));
        if a.chan.announce(export, None).unwrap() {
            sched.pending[I].set(true);
        }
    }
    while let Some(c) = sched.next() {
        act(&sched, actors[usize::from(c) % 2], c / 2);
    }

    // The end of the story: E revokes if it has not, I's user lets go,
    // both handle their rings until nothing is pending.
    for _ in 0..100 {
        let mut ran = false;
        for (side, actor) in actors.iter().enumerate() {
            let mut a = actor.borrow_mut();
            let a = &mut *a;
            let slot = a.chan.outstanding() < SLOTS;
            let notify = if side == E && !a.revoked && slot {
                a.revoked = true;
                a.chan.revoke(&mut a.host, &hid(), None).unwrap()
            } else if side == I && slot && a.host.import_mut(&hid()).is_some_and(|s| s.mapped()) {
                i_maps.set(false);
                a.chan.import_unmapped(&mut a.host, &hid()).unwrap()
            } else if sched.pending[side].get() || a.more {
                sched.pending[side].set(false);
                let p = a.chan.process(&mut a.host).unwrap();
                a.more = p.more;
                p.notify
            } else if a.chan.notify_owed() {
                a.chan.take_notify_owed()
            } else {
                continue;
            };
            ran = true;
            if notify {
                sched.pending[1 - side].set(true);
            }
        }
        if !ran {
            break;
        }
    }
    let (e, i) = (e.borrow(), i.borrow());
    assert_eq!(e.chan.outstanding(), 0, "exporter's request never answered");
    assert_eq!(i.chan.outstanding(), 0, "importer's request never answered");
    assert_eq!(e.host.ended, 1, "the export was not ended");
    assert!(e.host.exports.is_empty());
    assert!(
        i.host.imports.is_empty(),
        "the importer still knows the buffer"
    );
    assert!(!i_maps.get());
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4000,
        rng_seed: RngSeed::Fixed(0x1e7e_4a11),
        ..ProptestConfig::default()
    })]

    #[test]
    fn revocation_under_interleavings(
        choices in prop::collection::vec(any::<u8>(), 0..40),
        hooks in prop::collection::vec(any::<u8>(), 0..80),
        maps in 0u32..4,
    ) {
        run(choices, hooks, maps);
    }
}

/// The stale-RELEASE race as an explicit schedule (no interleaving inside
/// a pass needed): I maps, E sees it, I unmaps and maps again, E revokes,
/// I answers Busy, E handles its rings.
#[test]
fn stale_release_schedule() {
    // Each entry: side (even E, odd I), then the index among the actions
    // enabled (see `act`).
    run(vec![1, 1, 0, 3, 3, 2, 1, 0], Vec::new(), 2);
}
