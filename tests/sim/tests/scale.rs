// SPDX-License-Identifier: MIT
//! Cost flat in buffers: with thousands of buffers live each way and
//! orphans of an ended session kept by a user, one more buffer's whole
//! life (export, import, a frame, a re-export, release, unexport, the
//! ticks between) and a lookup of an orphan find their records by key.
//! The ledger's whole-table walks visit no record on that path; a walk
//! put back on it visits thousands, and this fails.

mod common;

use std::collections::BTreeMap;

use common::{export, Shared};
use hyper_dmabuf_common::id::{HyperDmabufId, KEY_LEN};
use hyper_dmabuf_common::ledger::{ExportRecord, ImportRecord, Ledger, Sink};
use hyper_dmabuf_common::uapi::Event;
use hyper_dmabuf_common::wire::{Export, ExportFlags, PageRefs, PrivData};
use hyper_dmabuf_common::xen::{GrantRef, Status};
use hyper_dmabuf_common::Error;
use hyper_dmabuf_sim::table::{Counted, Walks};
use hyper_dmabuf_sim::{Side, World, WorldConfig};

/// Buffers live each way before the one measured.
const LIVE: u64 = 2000;

/// What both domains' walks visited.
fn walked(w: &World) -> u64 {
    w.dom(Side::Front).records_walked() + w.dom(Side::Back).records_walked()
}

fn fill(w: &mut World, side: Side, seed: u64) -> Vec<Shared> {
    let mut out = Vec::new();
    for i in 0..LIVE {
        out.push(export(w, side, 4096, false, seed + i));
        // A few at a time: the ring has fewer slots than that.
        if i % 8 == 7 {
            w.pump();
        }
    }
    w.pump();
    out
}

/// One buffer's life from `side` with everything else live.
fn one_life(w: &mut World, side: Side, seed: u64) {
    let s = export(w, side, 8192, true, seed);
    w.pump();
    let (dom, hv) = w.split(side.other());
    dom.import(hv, &s.hid, true).expect("import");
    // A new frame, and the same dma-buf exported again: an update.
    let (dom, hv) = w.split(side);
    dom.update(hv, &s.hid, PrivData::new(b"frame 2").unwrap())
        .expect("update");
    let (again, _) = dom
        .export(hv, s.buf, true, PrivData::new(b"frame 3").unwrap())
        .expect("re-export");
    assert_eq!(again, s.hid, "a re-export is the same buffer");
    w.pump();
    let (dom, hv) = w.split(side.other());
    assert_eq!(
        dom.read_import(&s.hid, 0, 4096).as_deref(),
        Some(&s.bytes[..4096]),
        "the importer reads the exporter's bytes"
    );
    dom.release(hv, &s.hid).expect("release");
    w.pump();
    let (dom, hv) = w.split(side);
    dom.unexport(hv, &s.hid).expect("unexport");
    w.pump();
    for side in [Side::Front, Side::Back] {
        let (dom, hv) = w.split(side);
        dom.advance_clock(hv, 50);
    }
    w.pump();
    let ended = w.dom(side).export_state(&s.hid).is_none();
    assert!(ended, "the unexport ran to its end");
}

#[test]
fn one_more_buffer_walks_no_table() {
    let mut w = World::new(WorldConfig::default());
    let front = fill(&mut w, Side::Front, 1);
    let back = fill(&mut w, Side::Back, 1_000_000);
    assert_eq!(w.dom(Side::Back).imports().len() as u64, LIVE);
    assert_eq!(w.dom(Side::Front).imports().len() as u64, LIVE);

    let before = walked(&w);
    one_life(&mut w, Side::Front, 7);
    one_life(&mut w, Side::Back, 8);
    assert_eq!(
        walked(&w) - before,
        0,
        "one buffer's life walked a table of {LIVE} records"
    );
    drop((front, back));
}

#[test]
fn orphans_are_found_by_key() {
    let mut w = World::new(WorldConfig::default());
    let front = fill(&mut w, Side::Front, 1);
    // The backend's users hold every buffer when the frontend dies.
    for (i, s) in front.iter().enumerate() {
        let (dom, hv) = w.split(Side::Back);
        dom.import(hv, &s.hid, false).expect("import");
        // Each import tells the exporter: a few at a time.
        if i % 8 == 7 {
            w.pump();
        }
    }
    w.pump();
    w.kill(Side::Front);
    w.pump();
    w.restart(Side::Front);
    w.pump();
    fill(&mut w, Side::Front, 500_000);

    let before = walked(&w);
    one_life(&mut w, Side::Front, 9);
    for s in &front[..10] {
        let (dom, hv) = w.split(Side::Back);
        assert_eq!(
            dom.read_import(&s.hid, 0, 64).as_deref(),
            Some(&s.bytes[..64]),
            "an orphan still reads its bytes"
        );
        dom.release(hv, &s.hid).expect("release of an orphan");
    }
    w.pump();
    assert_eq!(walked(&w) - before, 0, "orphans were looked up by a walk");
}

/// A sink that keeps nothing: the index test looks at the ledger only.
struct Quiet;

impl Sink<()> for Quiet {
    fn retire(&mut self, _grants: ()) {}
    fn event(&mut self, _event: Event, _owner: Option<u64>) {}
    fn complete(&mut self, _token: u64, _status: Status) {}
    fn protocol_error(&mut self, _error: Error) {}
}

fn record(number: u64, owner: u64, identity: usize) -> ExportRecord<()> {
    let info = Export {
        hid: HyperDmabufId::new(number, [number as u8; KEY_LEN]).unwrap(),
        size: 4096,
        pages: PageRefs::Directory(GrantRef::FIRST),
        flags: ExportFlags::WRITABLE,
        priv_data: PrivData::EMPTY,
        fence: None,
    };
    ExportRecord::new(info, owner, identity, ())
}

type Imports = BTreeMap<u64, ImportRecord<()>>;

/// A ledger over `exports` in which files 10 and 20 exported the same
/// dma-buf (identity 0x1000) at the same moment, neither seeing the
/// other's export: numbers 1 and 2.
fn exported_twice<XT>(exports: XT) -> Ledger<XT, Imports, BTreeMap<u64, u64>>
where
    XT: hyper_dmabuf_common::ledger::Table<Value = ExportRecord<()>>,
{
    let mut ledger = Ledger::new(exports, BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (number, file) in [(1, 10), (2, 20)] {
        ledger
            .record_export(&mut Quiet, record(number, file, 0x1000))
            .unwrap();
    }
    ledger
}

/// Of two exports of one dma-buf, the one the identity index names goes
/// (here its number comes again, which retires it): the other takes its
/// place in the index, and a look-up finds it without a walk.
#[test]
fn a_shadowed_export_is_indexed_once_the_other_goes() {
    let walks = Walks::default();
    let mut ledger = exported_twice(Counted::new(&walks));
    ledger
        .record_export(&mut Quiet, record(1, 30, 0x2000))
        .unwrap();
    let before = walks.visited();
    for _ in 0..10 {
        assert_eq!(
            ledger.export_of_identity(0x1000).map(|h| h.number()),
            Some(2)
        );
    }
    assert_eq!(
        ledger.export_of_identity(0x2000).map(|h| h.number()),
        Some(1)
    );
    assert_eq!(walks.visited(), before, "a look-up walked the exports");
}

/// Two files export one dma-buf at the same moment: two live exports of
/// it. The identity index names one; whichever goes first, the other is
/// still found.
#[test]
fn two_exports_of_one_buffer_are_both_found() {
    for closed in [10, 20] {
        let mut ledger = exported_twice(BTreeMap::new());
        assert_eq!(
            ledger.export_of_identity(0x1000).map(|h| h.number()),
            Some(1)
        );
        ledger.unexport_owned_by(closed, 0);
        let open = if closed == 10 { 2 } else { 1 };
        assert_eq!(
            ledger.export_of_identity(0x1000).map(|h| h.number()),
            Some(open),
            "file {closed} closed: the export of the other is still live"
        );
    }
}
