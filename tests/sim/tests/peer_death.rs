// SPDX-License-Identifier: MIT
//! Peer death injected at every step of the life-cycle, on both sides and
//! in both directions: the survivor ends every export (at once, since the
//! hypervisor dropped the dead domain's mappings), keeps its users'
//! mappings of the dead domain's pages readable until they let go, fails
//! every waiting request, and every counter returns to zero. A new
//! domain then connects and the survivor serves it.

mod common;

use common::{assert_same_bytes, export, pattern, Shared};
use hyper_dmabuf_common::channel::ExportPhase;
use hyper_dmabuf_common::uapi::EventType;
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_sim::hv::MapStatus;
use hyper_dmabuf_sim::{DriverError, Side, World, WorldConfig};

/// Where the death happens, for the buffer under test (exporter E,
/// importer I).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// E sent EXPORT; I has not answered.
    BeforeExportAnswer,
    /// E's export is accepted; I knows it, maps nothing.
    Exported,
    /// I is importing: dies before mapping the directory leaves.
    DuringImportLeaves,
    /// I is importing: dies before mapping the data pages.
    DuringImportData,
    /// I mapped; MAPPED not delivered yet.
    MappedInFlight,
    /// I maps the buffer, E knows it.
    Mapped,
    /// E sent UNEXPORT; I has not answered.
    UnexportInFlight,
    /// I answered Busy; E waits for RELEASE.
    AfterBusy,
    /// I unmapped and sent RELEASE; E has not seen it.
    ReleaseInFlight,
}

const STEPS: [Step; 9] = [
    Step::BeforeExportAnswer,
    Step::Exported,
    Step::DuringImportLeaves,
    Step::DuringImportData,
    Step::MappedInFlight,
    Step::Mapped,
    Step::UnexportInFlight,
    Step::AfterBusy,
    Step::ReleaseInFlight,
];

/// A two-level buffer, so that an import makes three map calls.
const SIZE: usize = (4 << 20) + 4096 + 9;

fn import(w: &mut World, s: &Shared) -> Result<(), DriverError> {
    let (dom, hv) = w.split(s.exporter.other());
    dom.import(hv, &s.hid, false)
}

fn release(w: &mut World, side: Side, s: &Shared) {
    let (dom, hv) = w.split(side);
    dom.release(hv, &s.hid).unwrap();
}

fn run(exporter: Side, victim: Side, step: Step) {
    let label = format!("{step:?}, exporter {exporter:?}, {victim:?} dies");
    let mut w = World::new(WorldConfig::default());
    let importer = exporter.other();
    let survivor = victim.other();
    let dead = w.id(victim);
    let surv = w.id(survivor);

    // Bystanders: a buffer each way, mapped by the other side.
    let by_surv = export(&mut w, survivor, 3 * 4096, false, 1);
    let by_dead = export(&mut w, victim, 5 * 4096 + 1, true, 2);
    w.pump();
    import(&mut w, &by_surv).unwrap();
    import(&mut w, &by_dead).unwrap();
    w.pump();

    // The buffer under test, driven to the step.
    let s = export(&mut w, exporter, SIZE, false, 3);
    let tokens = vec![(exporter, s.token)];
    let mut survivor_maps_s = false;
    if step != Step::BeforeExportAnswer {
        w.pump();
        assert_eq!(w.dom(exporter).completion(s.token), Some(Status::Ok));
    }
    match step {
        Step::BeforeExportAnswer | Step::Exported => {}
        Step::DuringImportLeaves | Step::DuringImportData => {
            let nth = if step == Step::DuringImportLeaves {
                2
            } else {
                3
            };
            let before = w.hv.maps_of(w.id(importer), w.id(exporter));
            w.hv.kill_at_map_call(nth, dead);
            assert_eq!(
                import(&mut w, &s),
                Err(DriverError::Map(MapStatus::BadDomain)),
                "{label}"
            );
            if victim == exporter {
                // The survivor's failed import left nothing mapped.
                assert_eq!(
                    w.hv.maps_of(w.id(importer), w.id(exporter)),
                    before,
                    "{label}"
                );
            }
        }
        _ => {
            import(&mut w, &s).unwrap();
            survivor_maps_s = survivor == importer;
            if step != Step::MappedInFlight {
                w.pump();
            }
            if matches!(
                step,
                Step::UnexportInFlight | Step::AfterBusy | Step::ReleaseInFlight
            ) {
                let (dom, hv) = w.split(exporter);
                dom.unexport(hv, &s.hid).unwrap();
                if step != Step::UnexportInFlight {
                    w.pump();
                    // Answered Busy: the exporter awaits the RELEASE.
                    let phase = w.dom(exporter).export_state(&s.hid).map(|s| s.phase());
                    assert!(
                        matches!(phase, Some(ExportPhase::AwaitingRelease(_))),
                        "{label}: {phase:?}"
                    );
                }
                if step == Step::ReleaseInFlight {
                    release(&mut w, importer, &s);
                    survivor_maps_s = false;
                }
            }
        }
    }
    w.check();

    // Death.
    w.kill(victim);
    w.check();
    assert!(!w.connected());
    let st = w.dom(survivor).stats();
    assert_eq!(
        (st.exports, st.imports, st.queued),
        (0, 0, 0),
        "{label}: survivor holds {st:?}"
    );
    // Every request of the survivor was answered or failed.
    for (side, token) in tokens {
        if side == survivor {
            assert!(w.dom(survivor).completion(token).is_some(), "{label}");
        }
    }
    let events = w.split(survivor).0.take_events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventType::PeerDisconnected && e.peer == dead),
        "{label}"
    );
    // The survivor's users still read the dead domain's pages they map.
    let mut orphans = vec![&by_dead];
    if survivor_maps_s {
        orphans.push(&s);
    }
    for o in &orphans {
        assert_same_bytes(&w, o);
    }
    let orphan_pages: usize = orphans.iter().map(|o| o.bytes.len().div_ceil(4096)).sum();
    let d = w.hv.counters(dead);
    assert_eq!(
        (d.maps, d.ports, d.deferred),
        (0, 0, 0),
        "{label}: dead domain"
    );
    assert_eq!(
        (d.grants, d.pages),
        (orphan_pages, orphan_pages),
        "{label}: dead domain's pages kept only for the survivor's mappings"
    );
    let c = w.hv.counters(surv);
    assert_eq!(
        (c.grants, c.deferred, c.ports, c.maps),
        (0, 0, 0, orphan_pages),
        "{label}: survivor"
    );

    // The users let go: the dead domain is gone entirely.
    for o in &orphans {
        while w.dom(survivor).users(&o.hid) > 0 {
            release(&mut w, survivor, o);
        }
    }
    w.check();
    assert!(w.hv.counters(dead).is_zero(), "{label}");
    let c = w.hv.counters(surv);
    assert_eq!(c.maps + c.grants + c.deferred + c.ports, 0, "{label}");
    assert_eq!(c.pages, w.dom(survivor).buffer_page_count(), "{label}");

    // A new domain boots in the victim's place; the survivor serves it,
    // both ways, from the same buffers.
    w.restart(victim);
    assert!(w.connected());
    let again = export(&mut w, survivor, 7000, false, 4);
    let (dom, hv) = w.split(survivor);
    let reexport = dom.export(hv, by_surv.buf, false, PrivData::EMPTY);
    let reexport = reexport.unwrap().0;
    let back = export(&mut w, victim, 9000, true, 5);
    w.pump();
    import(&mut w, &again).unwrap();
    import(&mut w, &back).unwrap();
    let (dom, hv) = w.split(victim);
    dom.import(hv, &reexport, false).unwrap();
    assert_same_bytes(&w, &again);
    assert_same_bytes(&w, &back);
    assert_eq!(
        w.dom(victim).read_import(&reexport, 0, 3 * 4096).unwrap(),
        pattern(1, 3 * 4096)
    );
    w.pump();
    w.check();
    w.finish();
}

#[test]
fn peer_death_at_every_step() {
    for step in STEPS {
        for exporter in [Side::Back, Side::Front] {
            for victim in [Side::Back, Side::Front] {
                run(exporter, victim, step);
            }
        }
    }
}

/// Both domains die with buffers shared both ways: nothing is left in the
/// hypervisor once both are gone.
#[test]
fn both_die() {
    for first in [Side::Back, Side::Front] {
        let mut w = World::new(WorldConfig::default());
        let a = export(&mut w, Side::Back, 4096 * 4, true, 1);
        let b = export(&mut w, Side::Front, 4096 * 2 + 1, false, 2);
        w.pump();
        import(&mut w, &a).unwrap();
        import(&mut w, &b).unwrap();
        w.pump();
        w.kill(first);
        w.check();
        w.kill(first.other());
        w.check();
        assert!(w.hv.totals().is_zero(), "{:?}", w.hv.totals());
    }
}

/// The toolstack removes the device (or a module is unloaded) while
/// buffers are mapped both ways: both ends close through XenBus, each
/// ends its exports deferred (the peer's users still map them), each
/// keeps its users' mappings; once the users let go nothing is left, and
/// the same two domains connect again.
#[test]
fn device_removal_while_mapped() {
    let mut w = World::new(WorldConfig::default());
    let a = export(&mut w, Side::Back, 4 * 4096, false, 1);
    let b = export(&mut w, Side::Front, 3 * 4096 + 5, true, 2);
    w.pump();
    import(&mut w, &a).unwrap();
    import(&mut w, &b).unwrap();
    w.pump();
    w.disconnect();
    w.check();
    assert!(!w.connected());
    for (s, mine, theirs) in [(Side::Back, &a, &b), (Side::Front, &b, &a)] {
        let st = w.dom(s).stats();
        assert_eq!((st.exports, st.imports, st.orphans), (0, 0, 1), "{s:?}");
        let c = w.hv.counters(w.id(s));
        let my_pages = mine.bytes.len().div_ceil(4096);
        let their_pages = theirs.bytes.len().div_ceil(4096);
        // Its grants wait on the peer's users; it maps the peer's pages for
        // its own users; rings and ports are gone.
        assert_eq!(
            (c.grants, c.deferred, c.maps, c.ports),
            (my_pages, my_pages, their_pages, 0),
            "{s:?}"
        );
        assert_same_bytes(&w, theirs);
    }
    for s in [&a, &b] {
        release(&mut w, s.exporter.other(), s);
    }
    w.check();
    for s in [Side::Back, Side::Front] {
        w.assert_idle(s);
    }
    w.connect();
    let c = export(&mut w, Side::Back, 5000, false, 3);
    w.pump();
    import(&mut w, &c).unwrap();
    assert_same_bytes(&w, &c);
    w.pump();
    w.finish();
}

/// Either driver is unloaded and loaded again while buffers are mapped
/// both ways: the peer follows through XenBus, exports end (deferred
/// while still mapped), users keep their mappings, the device reconnects
/// by itself, and after the users let go every counter is zero.
#[test]
fn driver_reload_while_mapped() {
    for side in [Side::Back, Side::Front] {
        let mut w = World::new(WorldConfig::default());
        let a = export(&mut w, Side::Back, 2 * 4096, false, 1);
        let b = export(&mut w, Side::Front, 4096 + 1, true, 2);
        w.pump();
        import(&mut w, &a).unwrap();
        import(&mut w, &b).unwrap();
        w.pump();
        w.reload(side);
        w.check();
        assert!(w.connected(), "reload of {side:?}");
        for s in [Side::Back, Side::Front] {
            let st = w.dom(s).stats();
            assert_eq!((st.exports, st.imports, st.orphans), (0, 0, 1), "{s:?}");
        }
        assert_same_bytes(&w, &a);
        assert_same_bytes(&w, &b);
        for s in [&a, &b] {
            release(&mut w, s.exporter.other(), s);
        }
        w.check();
        w.assert_idle(Side::Back);
        w.assert_idle(Side::Front);
        // The new connection carries buffers again.
        let c = export(&mut w, side, 3000, false, 3);
        w.pump();
        import(&mut w, &c).unwrap();
        assert_same_bytes(&w, &c);
        w.pump();
        w.finish();
    }
}
