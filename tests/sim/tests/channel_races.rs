// SPDX-License-Identifier: MIT
//! Interleavings the single-threaded pump cannot produce by itself, and
//! ring sizes it does not use by default: each found a problem in
//! `common/src/channel.rs` (fixed by mapping epochs and a re-armed event
//! index), and each is kept as a regression test beside a control that
//! shows the set-up is right.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicU32;

use hyper_dmabuf_common::channel::{
    Channel, ChannelConfig, ExportPhase, ExportState, Host, ImportState,
};
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::ring::init_shared;
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::uapi::Event;
use hyper_dmabuf_common::wire::{Export, ExportFlags, Message, PageRefs, PrivData};
use hyper_dmabuf_common::xen::{DomId, GrantRef, Status};
use hyper_dmabuf_common::Error;
use hyper_dmabuf_sim::{Side, World, WorldConfig};

type Hook = Rc<RefCell<Option<Box<dyn FnOnce()>>>>;

/// Ring memory whose reads of the request producer (`req_prod`, offset 0)
/// can run a hook first: the peer acting at that exact instant, as it can
/// on another CPU.
#[derive(Clone)]
struct Hooked {
    mem: Rc<[AtomicU32]>,
    hook: Hook,
}

impl Hooked {
    fn new(mem: &Rc<[AtomicU32]>, hook: &Hook) -> Self {
        Hooked {
            mem: mem.clone(),
            hook: hook.clone(),
        }
    }
}

impl SharedMem for Hooked {
    fn len(&self) -> usize {
        SharedMem::len(&self.mem[..])
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.mem[..].read_u32(offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.mem[..].write_u32(offset, value)
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        if offset == 0 {
            let hook = self.hook.borrow_mut().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        self.mem[..].load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) {
        self.mem[..].store_release_u32(offset, value)
    }
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        self.mem[..].read_bytes(offset, dst)
    }
    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.mem[..].write_bytes(offset, src)
    }
}

/// The smallest honest host: tables and records, no resources.
#[derive(Default)]
struct TestHost {
    exports: HashMap<[u8; 24], ExportState>,
    imports: HashMap<[u8; 24], ImportState>,
    ended: Vec<HyperDmabufId>,
    completed: Vec<(u64, Status)>,
}

impl Host for TestHost {
    fn export_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ExportState> {
        self.exports.get_mut(&hid.encode())
    }
    fn end_export(&mut self, hid: &HyperDmabufId) {
        if self.exports.remove(&hid.encode()).is_some() {
            self.ended.push(*hid);
        }
    }
    fn import_mut(&mut self, hid: &HyperDmabufId) -> Option<&mut ImportState> {
        self.imports.get_mut(&hid.encode())
    }
    fn add_import(&mut self, import: ImportState) -> Result<(), Status> {
        self.imports.insert(import.export.hid.encode(), import);
        Ok(())
    }
    fn remove_import(&mut self, hid: &HyperDmabufId) {
        self.imports.remove(&hid.encode());
    }
    fn post_event(&mut self, _event: Event) {}
    fn complete(&mut self, token: u64, status: Status) {
        self.completed.push((token, status));
    }
    fn protocol_error(&mut self, error: Error) {
        panic!("honest peers sent a malformed request: {error}");
    }
}

type End = (Channel<Hooked>, TestHost);

const CONFIG: ChannelConfig = ChannelConfig {
    version: hyper_dmabuf_common::wire::VERSION_2,
    max_buffer_bytes: 1 << 30,
    allow_rw: true,
};

fn ring() -> Rc<[AtomicU32]> {
    let mem: Rc<[AtomicU32]> = (0..1024).map(|_| AtomicU32::new(0)).collect();
    init_shared(&mem[..]).unwrap();
    mem
}

/// Exporter E and importer I with one export of E announced to I, both
/// rings drained. `hook` is run by E's first read of I's request
/// producer.
fn announced_pair(hook: &Hook) -> (End, Rc<RefCell<End>>, HyperDmabufId) {
    let (e_id, i_id) = (DomId::new(1).unwrap(), DomId::new(2).unwrap());
    let (mem_e, mem_i) = (ring(), ring());
    let none: Hook = Rc::default();
    let e_chan = Channel::new(
        i_id,
        CONFIG,
        Hooked::new(&mem_e, &none),
        Hooked::new(&mem_i, hook),
    )
    .unwrap();
    let i_chan = Channel::new(
        e_id,
        CONFIG,
        Hooked::new(&mem_i, &none),
        Hooked::new(&mem_e, &none),
    )
    .unwrap();
    let mut e: End = (e_chan, TestHost::default());
    let i = Rc::new(RefCell::new((i_chan, TestHost::default())));
    let hid = HyperDmabufId::new(42, [7; KEY_LEN]).unwrap();
    let export = Export {
        hid,
        size: 4096,
        pages: PageRefs::Directory(GrantRef::new(8).unwrap()),
        flags: ExportFlags::default(),
        priv_data: PrivData::EMPTY,
        fence: None,
    };
    e.1.exports
        .insert(hid.encode(), ExportState::new(export.size));
    e.0.announce(export, None).unwrap();
    let run_i = |i: &Rc<RefCell<End>>| {
        let (c, h) = &mut *i.borrow_mut();
        c.process(h).unwrap();
    };
    run_i(&i);
    e.0.process(&mut e.1).unwrap();
    (e, i, hid)
}

/// Exporter E and importer I with one export of E mapped by I and an
/// UNEXPORT of it sent by E, not yet seen by I. `hook` is run by E's
/// first read of I's request producer.
fn revoking_pair(hook: &Hook) -> (End, Rc<RefCell<End>>, HyperDmabufId) {
    let (mut e, i, hid) = announced_pair(hook);
    {
        let (c, h) = &mut *i.borrow_mut();
        c.import_mapped(h, &hid).unwrap();
    }
    e.0.process(&mut e.1).unwrap();
    assert!(e.1.exports[&hid.encode()].peer_maps());
    e.0.revoke(&mut e.1, &hid, None).unwrap();
    (e, i, hid)
}

/// I answers the UNEXPORT with Busy (it maps the buffer), then its last
/// user lets go and it sends RELEASE.
fn importer_answers_then_releases(i: &Rc<RefCell<End>>, hid: HyperDmabufId) {
    let (c, h) = &mut *i.borrow_mut();
    c.process(h).unwrap();
    assert!(h.imports[&hid.encode()].revoked());
    c.import_unmapped(h, &hid).unwrap();
}

fn settle(e: &mut End, i: &Rc<RefCell<End>>) {
    for _ in 0..8 {
        e.0.process(&mut e.1).unwrap();
        let (c, h) = &mut *i.borrow_mut();
        c.process(h).unwrap();
    }
}

/// A MAPPED leaves its notification owed, and the next request carries
/// it although the exporter's event index, passed by the MAPPED, asks for
/// no other: without the debt the RELEASE would sit unseen.
#[test]
fn mapped_owes_its_notification_to_the_next_send() {
    let (_e, i, hid) = announced_pair(&Rc::default());
    let (c, h) = &mut *i.borrow_mut();
    c.import_mapped(h, &hid).unwrap();
    assert!(c.notify_owed(), "the exporter waits for an event");
    assert!(
        c.import_unmapped(h, &hid).unwrap(),
        "the RELEASE carries it"
    );
    assert!(!c.notify_owed());
    // Control: the exporter has not looked since, so a send of its own
    // is not asked to notify.
    c.import_mapped(h, &hid).unwrap();
    assert!(!c.notify_owed());
    assert!(!c.import_unmapped(h, &hid).unwrap());
}

/// A pass that answered only an UPDATE owes its notification; the
/// exporter sleeps with its event index in that answer, so the next
/// pass's awaited answer (an UNEXPORT's) must pay the debt at once,
/// although `publish` alone would not ask for it.
#[test]
fn awaited_answer_pays_an_earlier_pass_debt() {
    let (mut e, i, hid) = announced_pair(&Rc::default());
    let update = Message::Update {
        hid,
        priv_data: PrivData::EMPTY,
        fence: None,
    };
    e.0.send(update, None).unwrap();
    let (c, h) = &mut *i.borrow_mut();
    let p = c.process(h).unwrap();
    assert!(!p.notify && c.notify_owed(), "an UPDATE's answer is owed");
    e.0.revoke(&mut e.1, &hid, None).unwrap();
    let p = c.process(h).unwrap();
    assert!(p.notify, "the UNEXPORT's answer went unnotified");
    assert!(!c.notify_owed());
}

/// Control: the importer acts between two passes of the exporter; the
/// Busy answer is consumed before the RELEASE and the grants end.
#[test]
fn release_after_busy_ends_the_export() {
    let hook: Hook = Rc::default();
    let (mut e, i, hid) = revoking_pair(&hook);
    importer_answers_then_releases(&i, hid);
    settle(&mut e, &i);
    assert_eq!(e.1.ended, vec![hid]);
}

/// The same messages, but the importer acts while the exporter is inside
/// `process`, after it drained its responses and before it reads the
/// importer's requests (two CPUs, or the exporter's handler preempted
/// there). The exporter then consumes RELEASE while its export is still
/// `Revoking`, and the Busy answer after it. Before mapping epochs the
/// RELEASE was ignored and Busy moved the export to `AwaitingRelease` for
/// good; now the Busy names the epoch already released and the export
/// ends.
#[test]
fn release_consumed_before_busy_still_ends_the_export() {
    let hook: Hook = Rc::default();
    let (mut e, i, hid) = revoking_pair(&hook);
    let i2 = i.clone();
    *hook.borrow_mut() = Some(Box::new(move || importer_answers_then_releases(&i2, hid)));
    settle(&mut e, &i);
    assert!(hook.borrow().is_none(), "the interleaving happened");
    let phase = e.1.exports.get(&hid.encode()).map(|s| s.phase());
    assert_eq!(
        e.1.ended,
        vec![hid],
        "export left in {phase:?} after the importer released it"
    );
    assert!(!matches!(phase, Some(ExportPhase::AwaitingRelease(_))));
}

/// Exactly [`PROCESS_BUDGET`](hyper_dmabuf_common::channel::PROCESS_BUDGET)
/// requests at once, then one more: with a ring of 64 slots (order 3) a
/// full ring is exactly the budget.
fn budget_burst(ring_page_order: u32, burst: usize) {
    let mut w = World::new(WorldConfig {
        ring_page_order,
        ..WorldConfig::default()
    });
    let mut tokens = Vec::new();
    for _ in 0..burst {
        let (dom, hv) = w.split(Side::Front);
        let buf = dom.create_buffer(hv, 1);
        tokens.push(dom.export(hv, buf, false, PrivData::EMPTY).unwrap().1);
    }
    w.pump();
    let (dom, hv) = w.split(Side::Front);
    let buf = dom.create_buffer(hv, 1);
    tokens.push(dom.export(hv, buf, false, PrivData::EMPTY).unwrap().1);
    // Pumps until quiescent; panics on a request nobody will ever answer.
    w.pump();
    for token in tokens {
        assert_eq!(w.dom(Side::Front).completion(token), Some(Status::Ok));
    }
    w.finish();
}

/// Control: 63 requests, one short of the budget.
#[test]
fn burst_below_the_budget_is_served() {
    budget_burst(3, 63);
}

/// When a pass answers exactly `PROCESS_BUDGET` requests and none is
/// left, `process` used to return `more = false` without re-arming
/// `req_event`, so the peer's next request was published without a
/// notification and never handled (the pump reports a lost wake-up).
#[test]
fn burst_of_exactly_the_budget_is_served() {
    budget_burst(3, 64);
}

/// The importer releases a mapping, maps the buffer again, and answers the
/// exporter's UNEXPORT with Busy, all before the exporter runs. The
/// exporter handles responses before requests, so it sees Busy first and
/// then the RELEASE of the *first* mapping, which it takes for the final
/// one.
fn stale_release(exporter: Side) {
    let mut w = World::new(WorldConfig::default());
    let importer = exporter.other();
    let (dom, hv) = w.split(exporter);
    let buf = dom.create_buffer(hv, 2 * 4096);
    let (hid, _) = dom.export(hv, buf, false, PrivData::EMPTY).unwrap();
    w.pump();
    let (dom, hv) = w.split(importer);
    dom.import(hv, &hid, false).unwrap();
    w.pump();
    // Without pumping in between: RELEASE, MAPPED, then UNEXPORT.
    let (dom, hv) = w.split(importer);
    dom.release(hv, &hid).unwrap();
    dom.import(hv, &hid, false).unwrap();
    let (dom, hv) = w.split(exporter);
    dom.unexport(hv, &hid).unwrap();
    // The pump runs the backend's handler first in each round: with the
    // importer at the back, its Busy is published before the exporter
    // looks at its ring.
    w.pump();
    w.check();
    assert_eq!(w.dom(importer).users(&hid), 1, "the importer maps it");
    assert!(
        w.dom(exporter).export_state(&hid).is_some(),
        "the exporter ended the export while the importer maps it"
    );
    assert_eq!(w.hv.counters(w.id(exporter)).deferred, 0);
    let (dom, hv) = w.split(importer);
    dom.release(hv, &hid).unwrap();
    w.pump();
    assert!(w.dom(exporter).export_state(&hid).is_none());
    w.finish();
}

/// Control: with the exporter's handler running first, the stale RELEASE
/// is consumed while the export is Revoking, the new MAPPED after it, and
/// only the last RELEASE ends the export.
#[test]
fn release_then_remap_then_unexport_exporter_first() {
    stale_release(Side::Back);
}

/// With the importer's handler first, the exporter sees Busy, then the
/// RELEASE of the first mapping. Before mapping epochs it ended the
/// export on that stale RELEASE although the importer mapped the buffer
/// again (grants ended deferred, GrantsEnded posted under a live
/// mapping); now only the RELEASE of the epoch the Busy named ends it.
#[test]
fn release_then_remap_then_unexport_importer_first() {
    stale_release(Side::Front);
}

/// A second unexport of a buffer already being revoked sends nothing and
/// completes its token at once, so an ioctl waiting on it does not wait
/// for an answer that never comes.
#[test]
fn second_revoke_completes_its_token() {
    let hook: Hook = Rc::default();
    let (mut e, i, hid) = revoking_pair(&hook);
    e.0.revoke(&mut e.1, &hid, Some(2)).unwrap();
    settle(&mut e, &i);
    importer_answers_then_releases(&i, hid);
    settle(&mut e, &i);
    assert_eq!(e.1.ended, vec![hid]);
    assert!(
        e.1.completed.iter().any(|(t, _)| *t == 2),
        "the second unexport's token was never completed: {:?}",
        e.1.completed
    );
}
