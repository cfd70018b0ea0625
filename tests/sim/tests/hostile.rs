// SPDX-License-Identifier: MIT
//! A hostile peer writes raw slots into the rings and forges directories:
//! the victim answers every bad request with an error status, reports the
//! malformed ones, leaks nothing, keeps serving, and tears down cleanly
//! when the peer overflows the ring.

mod common;

use common::pattern;
use hyper_dmabuf_common::channel::ExportPhase;
use hyper_dmabuf_common::fence::{FenceEnd, MAX_FENCES};
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::pgdir::{encode_root, Layout};
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::uapi::EventType;
use hyper_dmabuf_common::wire::{
    Export, ExportFlags, FenceId, FenceResult, InlineRefs, MapEpoch, Message, PageRefs, PrivData,
    Request, Slot,
};
use hyper_dmabuf_common::xen::{GrantRef, Status};
use hyper_dmabuf_common::Error;
use hyper_dmabuf_sim::hv::MapStatus;
use hyper_dmabuf_sim::{BufId, DriverError, RawPeer, Side, World, WorldConfig};

struct Attack {
    w: World,
    raw: RawPeer,
    attacker: Side,
    victim: Side,
    next_id: u32,
}

impl Attack {
    fn new(attacker: Side) -> Self {
        let mut w = World::new(WorldConfig::default());
        let raw = w.hijack(attacker);
        Attack {
            w,
            raw,
            attacker,
            victim: attacker.other(),
            next_id: 1,
        }
    }

    fn slot(&mut self, message: Message) -> Slot {
        let req_id = self.next_id;
        self.next_id += 1;
        Request { req_id, message }.encode()
    }

    /// Sends a slot, lets the victim run, and returns its answer.
    fn ask(&mut self, slot: Slot) -> Status {
        let req_id = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
        self.raw.send(&mut self.w.hv, &slot).unwrap();
        self.w.pump();
        // Whatever the victim asked meanwhile (MAPPED, RELEASE) is
        // acknowledged, as an honest peer would.
        self.raw.answer_all(&mut self.w.hv, Status::Ok).unwrap();
        self.w.pump();
        let responses = self.raw.responses().unwrap();
        assert_eq!(responses.len(), 1, "one answer per request");
        assert_eq!(responses[0].req_id, req_id, "the answer names the request");
        responses[0].status
    }

    /// The attacker grants a buffer and builds its directory, without
    /// announcing it.
    fn prepare(&mut self, size: usize, seed: u64) -> (BufId, Export) {
        let (dom, hv) = self.w.split(self.attacker);
        let buf = dom.create_buffer(hv, size as u64);
        dom.write_buffer(hv, buf, 0, &pattern(seed, size));
        let export = dom
            .export_unannounced(hv, buf, false, PrivData::EMPTY)
            .unwrap();
        (buf, export)
    }

    /// A root page written by hand (outside the attacker's driver),
    /// granted read-only to the victim.
    fn forge_root(&mut self, size: u64, entries: &[GrantRef]) -> GrantRef {
        let layout = Layout::new(size, u64::MAX).unwrap();
        let mut page = [0u8; 4096];
        encode_root(&layout, entries, &mut page).unwrap();
        let (a, v) = (self.w.id(self.attacker), self.w.id(self.victim));
        let hv = &mut self.w.hv;
        let id = hv.alloc_page(a);
        hv.page_window(a, id).write_bytes(0, &page);
        hv.grant_access(a, id, v, true).unwrap()
    }

    fn victim_import(&mut self, export: &Export, rw: bool) -> Result<(), DriverError> {
        let (dom, hv) = self.w.split(self.victim);
        dom.import(hv, &export.hid, rw)
    }

    /// The victim maps nothing of the attacker beyond the rings.
    fn assert_no_leaked_maps(&self) {
        let (v, a) = (self.w.id(self.victim), self.w.id(self.attacker));
        assert_eq!(
            self.w.hv.maps_of(v, a),
            self.w.ring_baseline(self.victim).maps
        );
    }
}

fn hid(number: u64) -> HyperDmabufId {
    HyperDmabufId::new(number, [0x5a; KEY_LEN]).unwrap()
}

fn hostile_peer(attacker: Side) {
    let mut at = Attack::new(attacker);
    let victim = at.victim;

    // A legitimate export, as the baseline.
    let (_, good) = at.prepare(3 * 4096, 1);
    let s = at.slot(Message::Export(good));
    assert_eq!(at.ask(s), Status::Ok);
    let events = at.w.split(victim).0.take_events();
    assert!(events.iter().any(|e| e.kind == EventType::NewExport));

    // Malformed requests: refused and reported.
    let mut bad_op = at.slot(Message::Release {
        hid: hid(1),
        epoch: MapEpoch::FIRST,
    });
    bad_op[4] = 0x80;
    assert_eq!(at.ask(bad_op), Status::NotSupported);
    let mut zero_op = at.slot(Message::Release {
        hid: hid(1),
        epoch: MapEpoch::FIRST,
    });
    zero_op[4] = 0;
    assert_eq!(at.ask(zero_op), Status::NotSupported);
    let mut zero_id = at.slot(Message::Release {
        hid: hid(1),
        epoch: MapEpoch::FIRST,
    });
    zero_id[8..16].fill(0);
    assert_eq!(at.ask(zero_id), Status::Invalid);
    let mut zero_epoch = at.slot(Message::Mapped {
        hid: hid(1),
        epoch: MapEpoch::FIRST,
    });
    zero_epoch[32..36].fill(0);
    assert_eq!(at.ask(zero_epoch), Status::Invalid);
    let mut reserved = at.slot(Message::Unexport(hid(1)));
    reserved[200] = 1;
    assert_eq!(at.ask(reserved), Status::Invalid);
    let mut empty = at.slot(Message::Export(good));
    empty[32..40].fill(0);
    assert_eq!(at.ask(empty), Status::Invalid);
    let huge = Export {
        size: 1 << 40,
        hid: hid(7),
        ..good
    };
    let s = at.slot(Message::Export(huge));
    assert_eq!(at.ask(s), Status::TooLarge);
    let mut pages = at.slot(Message::Export(Export {
        hid: hid(8),
        ..good
    }));
    pages[40] ^= 1;
    assert_eq!(at.ask(pages), Status::Invalid);
    let errors = at.w.dom(victim).protocol_errors().to_vec();
    assert_eq!(errors.len(), 8, "{errors:?}");
    assert!(matches!(errors[0], Error::UnknownOp(0x80)));
    assert!(matches!(errors[2], Error::BadId));
    assert!(matches!(errors[3], Error::BadEpoch));

    // Well-formed requests about the wrong things: refused, not reported.
    let s = at.slot(Message::Export(good));
    assert_eq!(at.ask(s), Status::Exists, "duplicate EXPORT");
    let s = at.slot(Message::Update {
        hid: hid(99),
        priv_data: PrivData::EMPTY,
        fence: None,
    });
    assert_eq!(at.ask(s), Status::NoSuchBuffer, "UPDATE of an unknown id");
    let s = at.slot(Message::Release {
        hid: hid(99),
        epoch: MapEpoch::FIRST,
    });
    assert_eq!(at.ask(s), Status::NoSuchBuffer, "RELEASE of nothing");
    let s = at.slot(Message::Mapped {
        hid: hid(99),
        epoch: MapEpoch::FIRST,
    });
    assert_eq!(at.ask(s), Status::NoSuchBuffer, "MAPPED of nothing");
    let s = at.slot(Message::Unexport(hid(99)));
    assert_eq!(at.ask(s), Status::NoSuchBuffer, "UNEXPORT of nothing");
    assert_eq!(at.w.dom(victim).protocol_errors().len(), 8);

    // The victim still imports the good buffer, and the revocation
    // handshake works against raw slots, replays included.
    at.victim_import(&good, false).unwrap();
    assert_eq!(
        at.w.dom(victim)
            .read_import(&good.hid, 0, 3 * 4096)
            .unwrap(),
        pattern(1, 3 * 4096)
    );
    let s = at.slot(Message::Unexport(good.hid));
    assert_eq!(at.ask(s), Status::Busy);
    let s = at.slot(Message::Unexport(good.hid));
    assert_eq!(at.ask(s), Status::Busy, "replayed UNEXPORT");
    let s = at.slot(Message::Update {
        hid: good.hid,
        priv_data: PrivData::EMPTY,
        fence: None,
    });
    assert_eq!(at.ask(s), Status::NoSuchBuffer, "UPDATE after UNEXPORT");
    let (dom, hv) = at.w.split(victim);
    dom.release(hv, &good.hid).unwrap();
    at.w.pump();
    let asked = at.raw.answer_all(&mut at.w.hv, Status::Ok).unwrap();
    assert_eq!(asked.len(), 1, "RELEASE sent");
    assert_eq!(asked[0][4], 0x04);
    at.w.pump();
    let s = at.slot(Message::Unexport(good.hid));
    assert_eq!(
        at.ask(s),
        Status::NoSuchBuffer,
        "UNEXPORT replayed after RELEASE"
    );
    at.assert_no_leaked_maps();

    // Forged directories: every import fails and nothing stays mapped.
    // (1) A root reference that was never granted.
    let (_, mut e) = at.prepare(4096, 2);
    e.pages = PageRefs::Directory(GrantRef::new(5000).unwrap());
    let s = at.slot(Message::Export(e));
    assert_eq!(at.ask(s), Status::Ok);
    assert_eq!(
        at.victim_import(&e, false),
        Err(DriverError::Map(MapStatus::BadGntref))
    );
    // (2) A root that is a data page.
    let (_, mut e) = at.prepare(2 * 4096, 3);
    let data = at.w.dom(at.attacker).export_grants(&e.hid).unwrap();
    e.pages = PageRefs::Directory(data[1]);
    let s = at.slot(Message::Export(e));
    assert_eq!(at.ask(s), Status::Ok);
    assert!(matches!(
        at.victim_import(&e, false),
        Err(DriverError::Decode(Error::BadMagic(_)))
    ));
    // (3) A hand-made directory naming one data page that is not granted:
    // the batch maps the others, the import unmaps them (CVE-2021-26932);
    // (3b) the same with the references inline (version 2): one batch,
    // undone.
    for (number, inline) in [(11, false), (13, true)] {
        let (_, e) = at.prepare(6 * 4096, number);
        let mut data = at.w.dom(at.attacker).export_grants(&e.hid).unwrap();
        data[3] = GrantRef::new(5000 + number as u32).unwrap();
        let pages = if inline {
            PageRefs::Inline(InlineRefs::new(&data).unwrap())
        } else {
            PageRefs::Directory(at.forge_root(e.size, &data))
        };
        let e = Export {
            pages,
            hid: hid(number),
            ..e
        };
        let s = at.slot(Message::Export(e));
        assert_eq!(at.ask(s), Status::Ok);
        let calls = at.w.hv.map_calls;
        assert_eq!(
            at.victim_import(&e, false),
            Err(DriverError::Map(MapStatus::BadGntref))
        );
        let batches = if inline { 1 } else { 2 };
        assert_eq!(
            at.w.hv.map_calls - calls,
            batches,
            "root, then one data batch"
        );
        at.assert_no_leaked_maps();
    }
    // (4) A read-write export whose grants are read-only.
    let (_, e) = at.prepare(2 * 4096, 5);
    let forged = Export {
        flags: ExportFlags::WRITABLE,
        ..e
    };
    let s = at.slot(Message::Export(forged));
    assert_eq!(at.ask(s), Status::Ok);
    assert_eq!(
        at.victim_import(&forged, true),
        Err(DriverError::Map(MapStatus::PermissionDenied))
    );
    at.assert_no_leaked_maps();
    // (5) A size that disagrees with the directory.
    let (_, e) = at.prepare(5 * 4096, 6);
    let data = at.w.dom(at.attacker).export_grants(&e.hid).unwrap();
    let forged = Export {
        size: 4096,
        hid: hid(12),
        pages: PageRefs::Directory(at.forge_root(5 * 4096, &data)),
        ..e
    };
    let s = at.slot(Message::Export(forged));
    assert_eq!(at.ask(s), Status::Ok);
    assert!(matches!(
        at.victim_import(&forged, false),
        Err(DriverError::Decode(Error::SizeMismatch { .. }))
    ));
    at.assert_no_leaked_maps();
    // (5b) Inline, the references are counted by the size: five of them
    // with a one-page size is refused on the ring.
    let forged = Export {
        size: 4096,
        hid: hid(14),
        ..e
    };
    let s = at.slot(Message::Export(forged));
    assert_eq!(at.ask(s), Status::Invalid);
    at.assert_no_leaked_maps();
    at.w.check();

    // The victim keeps serving: its own export is announced and revoked.
    let (dom, hv) = at.w.split(victim);
    let buf = dom.create_buffer(hv, 8192);
    let (mine, token) = dom.export(hv, buf, false, PrivData::EMPTY).unwrap();
    at.w.pump();
    let asked = at.raw.answer_all(&mut at.w.hv, Status::Ok).unwrap();
    assert_eq!(asked.len(), 1);
    at.w.pump();
    assert_eq!(at.w.dom(victim).completion(token), Some(Status::Ok));
    let (dom, hv) = at.w.split(victim);
    dom.unexport(hv, &mine).unwrap();
    at.w.pump();
    at.raw.answer_all(&mut at.w.hv, Status::Ok).unwrap();
    at.w.pump();
    // Answered Ok: the export ended.
    assert!(at.w.dom(victim).export_state(&mine).is_none());
    assert_eq!(at.w.dom(victim).stats().exports, 0);

    // A ring overflow is fatal: the victim closes the connection and
    // drops everything it had from the attacker.
    let prod = at.raw.ours.read_u32(0);
    at.raw.ours.write_u32(0, prod.wrapping_add(1000));
    let (a, port) = (at.raw.id, at.raw.port);
    at.w.hv.notify(a, port);
    let report = at.w.pump();
    assert_eq!(report.fatal, 1);
    assert!(matches!(
        at.w.fatal_errors[..],
        [(side, Error::RingOverflow { .. })] if side == victim
    ));
    assert!(at.w.dom(victim).conn.is_none());
    let st = at.w.dom(victim).stats();
    assert_eq!((st.exports, st.imports, st.orphans), (0, 0, 0));
    at.assert_no_leaked_maps();
    at.w.check();

    // Once the attacker is gone, nothing of either is left.
    at.w.kill(at.attacker);
    at.w.check();
    at.w.finish();
}

#[test]
fn hostile_frontend() {
    hostile_peer(Side::Front);
}

#[test]
fn hostile_backend() {
    hostile_peer(Side::Back);
}

/// A response to a request that was never made is fatal: the victim closes
/// the connection, fails its waiting request, ends its export, and is
/// clean once the attacker is gone.
#[test]
fn forged_response_is_fatal() {
    for attacker in [Side::Back, Side::Front] {
        let mut at = Attack::new(attacker);
        let victim = at.victim;
        let (dom, hv) = at.w.split(victim);
        let buf = dom.create_buffer(hv, 3 * 4096);
        let (hid, token) = dom.export(hv, buf, false, PrivData::EMPTY).unwrap();
        at.w.pump();
        let asked = at.raw.answer_all(&mut at.w.hv, Status::Ok);
        // answer_all answered the real request; now a forged one follows.
        assert_eq!(asked.unwrap().len(), 1);
        let (dom, hv) = at.w.split(victim);
        dom.unexport(hv, &hid).unwrap();
        at.w.pump();
        let mut slot: Slot = [0u8; 256];
        assert!(at.raw.rsp.pop(&mut slot).unwrap());
        let forged = hyper_dmabuf_common::wire::Response {
            req_id: 0xdead,
            op: slot[4],
            status: Status::Ok,
            map_epoch: None,
        };
        at.raw.rsp.push(&forged.encode()).unwrap();
        at.raw.rsp.publish();
        let (a, port) = (at.raw.id, at.raw.port);
        at.w.hv.notify(a, port);
        at.w.pump();
        assert!(matches!(
            at.w.fatal_errors[..],
            [(side, Error::UnexpectedResponse(0xdead))] if side == victim
        ));
        assert_eq!(at.w.dom(victim).completion(token), Some(Status::Ok));
        // The UNEXPORT's answer never comes: the export ended with the
        // connection.
        assert!(at.w.dom(victim).export_state(&hid).is_none());
        at.assert_no_leaked_maps();
        at.w.check();
        at.w.kill(attacker);
        at.w.finish();
    }
}

/// A responder that claims more responses than requests were made is
/// fatal for the requester.
#[test]
fn response_overflow_is_fatal() {
    for attacker in [Side::Back, Side::Front] {
        let mut at = Attack::new(attacker);
        let victim = at.victim;
        let (dom, hv) = at.w.split(victim);
        let buf = dom.create_buffer(hv, 4096);
        let (hid, token) = dom.export(hv, buf, false, PrivData::EMPTY).unwrap();
        at.w.pump();
        // rsp_prod (offset 8) of the victim's request ring, far ahead.
        let theirs = at.raw.rsp_window();
        theirs.write_u32(8, 77);
        let (a, port) = (at.raw.id, at.raw.port);
        at.w.hv.notify(a, port);
        at.w.pump();
        assert!(matches!(
            at.w.fatal_errors[..],
            [(side, Error::RingOverflow { .. })] if side == victim
        ));
        assert_eq!(
            at.w.dom(victim).completion(token),
            Some(Status::NoSuchBuffer)
        );
        assert!(at.w.dom(victim).export_state(&hid).is_none());
        at.w.check();
        at.w.kill(attacker);
        at.w.finish();
    }
}

/// A hostile importer answering UNEXPORT by hand: a Busy naming the epoch
/// it mapped holds the export until the RELEASE of that epoch; a Busy
/// without an epoch is malformed and fatal.
#[test]
fn busy_answers_from_a_hostile_importer() {
    for attacker in [Side::Back, Side::Front] {
        let mut at = Attack::new(attacker);
        let victim = at.victim;
        let mut hids = Vec::new();
        for _ in 0..2 {
            let (dom, hv) = at.w.split(victim);
            let buf = dom.create_buffer(hv, 4096);
            hids.push(dom.export(hv, buf, false, PrivData::EMPTY).unwrap().0);
        }
        at.w.pump();
        at.raw.answer_all(&mut at.w.hv, Status::Ok).unwrap();
        at.w.pump();
        let s = at.slot(Message::Mapped {
            hid: hids[0],
            epoch: MapEpoch::FIRST,
        });
        assert_eq!(at.ask(s), Status::Ok);

        // UNEXPORT of the mapped one: Busy(1) keeps it.
        let (dom, hv) = at.w.split(victim);
        dom.unexport(hv, &hids[0]).unwrap();
        at.w.pump();
        answer_next(&mut at, Status::Busy, MapEpoch::new(1).ok());
        assert!(matches!(
            at.w.dom(victim).export_state(&hids[0]).unwrap().phase(),
            ExportPhase::AwaitingRelease(_)
        ));
        let s = at.slot(Message::Release {
            hid: hids[0],
            epoch: MapEpoch::FIRST,
        });
        assert_eq!(at.ask(s), Status::Ok);
        assert!(at.w.dom(victim).export_state(&hids[0]).is_none());
        assert!(at.w.fatal_errors.is_empty());

        // A Busy with epoch zero does not decode: fatal.
        let (dom, hv) = at.w.split(victim);
        dom.unexport(hv, &hids[1]).unwrap();
        at.w.pump();
        answer_next(&mut at, Status::Busy, None);
        assert!(matches!(
            at.w.fatal_errors[..],
            [(side, Error::BadEpoch)] if side == victim
        ));
        assert!(at.w.dom(victim).export_state(&hids[1]).is_none());
        at.w.check();
        at.w.kill(attacker);
        at.w.finish();
    }
}

/// Answers the victim's next request by hand and lets the victim run.
fn answer_next(at: &mut Attack, status: Status, map_epoch: Option<MapEpoch>) {
    let mut slot: Slot = [0u8; 256];
    assert!(at.raw.rsp.pop(&mut slot).unwrap());
    let response = hyper_dmabuf_common::wire::Response {
        req_id: u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]),
        op: slot[4],
        status,
        map_epoch,
    };
    at.raw.rsp.push(&response.encode()).unwrap();
    at.raw.rsp.publish();
    let (a, port) = (at.raw.id, at.raw.port);
    at.w.hv.notify(a, port);
    at.w.pump();
}

/// A hostile exporter's fences: a SIGNAL of a fence it never attached,
/// of one attached to another buffer, replayed, or of fence 0; a fence id
/// reused while held; more fences than the importer keeps. Each is
/// refused, and no local fence ends but by its own SIGNAL.
#[test]
fn hostile_fences_are_refused() {
    let mut at = Attack::new(Side::Back);
    let victim = at.victim;
    let (_, good) = at.prepare(4096, 1);
    let (_, other) = at.prepare(4096, 2);
    for e in [good, other] {
        let s = at.slot(Message::Export(e));
        assert_eq!(at.ask(s), Status::Ok);
    }
    let id = |n| FenceId::new(n).unwrap();
    let update = |hid, n| Message::Update {
        hid,
        priv_data: PrivData::EMPTY,
        fence: Some(id(n)),
    };
    let signal = |hid, n| Message::Signal {
        hid,
        fence: id(n),
        result: FenceResult::Signalled,
    };
    let ends = |at: &Attack| -> Vec<Option<FenceEnd>> {
        at.w.dom(victim).local_fences().values().copied().collect()
    };
    let ask = |at: &mut Attack, m| {
        let s = at.slot(m);
        at.ask(s)
    };
    assert_eq!(
        ask(&mut at, signal(good.hid, 1)),
        Status::NoSuchBuffer,
        "never attached"
    );
    assert_eq!(ask(&mut at, update(good.hid, 1)), Status::Ok);
    assert_eq!(
        ask(&mut at, update(good.hid, 1)),
        Status::Exists,
        "id reused"
    );
    assert_eq!(
        ask(&mut at, update(other.hid, 1)),
        Status::Exists,
        "id reused elsewhere"
    );
    assert_eq!(
        ask(&mut at, signal(other.hid, 1)),
        Status::NoSuchBuffer,
        "other buffer"
    );
    let mut zero = at.slot(signal(good.hid, 1));
    zero[32..40].fill(0);
    assert_eq!(at.ask(zero), Status::Invalid, "SIGNAL of fence 0");
    let mut result = at.slot(signal(good.hid, 1));
    result[40] = 2;
    assert_eq!(at.ask(result), Status::Invalid, "undefined result");
    assert_eq!(ends(&at), vec![None]);
    assert_eq!(ask(&mut at, signal(good.hid, 1)), Status::Ok);
    assert_eq!(
        ask(&mut at, signal(good.hid, 1)),
        Status::NoSuchBuffer,
        "replayed"
    );
    assert_eq!(ends(&at), vec![Some(FenceEnd::Signalled)]);
    // The importer keeps MAX_FENCES: the next is refused, nothing made.
    for n in 0..MAX_FENCES as u64 {
        assert_eq!(ask(&mut at, update(good.hid, 100 + n)), Status::Ok);
    }
    assert_eq!(ask(&mut at, update(good.hid, 99)), Status::NoSpace);
    assert_eq!(at.w.dom(victim).fences_in_held(), MAX_FENCES);
    assert_eq!(ends(&at).len(), MAX_FENCES + 1);
    // The attacker never signals: the session's end ends them all.
    at.w.kill(Side::Back);
    assert!(ends(&at).iter().all(Option::is_some));
    assert_eq!(at.w.dom(victim).fences_in_held(), 0);
}
