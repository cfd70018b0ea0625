// SPDX-License-Identifier: MIT
//! The whole life-cycle of a buffer, in both directions: export →
//! notification → import → map → bytes compared both ways → unexport
//! handshake (Busy → RELEASE, or Ok at once) → grants ended → zero.

mod common;

use common::{assert_same_bytes, events_about, export};
use hyper_dmabuf_common::channel::ExportPhase;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::ExportFlags;
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_sim::{DriverError, Side, World, WorldConfig};

fn full_lifecycle(exporter: Side) {
    let mut w = World::new(WorldConfig::default());
    w.check();
    let importer = exporter.other();
    let (e_id, i_id) = (w.id(exporter), w.id(importer));
    // Whole pages, as a dma-buf is.
    let size = 4 * 4096;

    // Export: every page granted; version 2 carries 4 references in the
    // EXPORT itself, with no directory page.
    let mut s = export(&mut w, exporter, size, true, 1);
    let grants = w.hv.counters(e_id).grants - w.ring_baseline(exporter).grants;
    assert_eq!(grants, 4, "4 data pages, no directory");
    assert_eq!(
        w.dom(exporter).export_state(&s.hid).unwrap().phase(),
        ExportPhase::Announcing
    );
    w.pump();
    w.check();
    assert_eq!(w.dom(exporter).completion(s.token), Some(Status::Ok));
    assert_eq!(
        w.dom(exporter).export_state(&s.hid).unwrap().phase(),
        ExportPhase::Exported
    );

    // Notification: the importer's user space sees the export, with its
    // size and private data; nothing is mapped yet.
    let events = w.split(importer).0.take_events();
    let new = events
        .iter()
        .find(|e| e.kind == EventType::NewExport)
        .expect("NewExport event");
    assert!(new.hid.unwrap().matches(&s.hid));
    assert_eq!((new.size, new.peer), (size as u64, e_id));
    assert_eq!(new.priv_data.as_bytes(), &1u64.to_le_bytes());
    let ring_maps = w.hv.maps_of(i_id, e_id);
    assert_eq!(ring_maps, w.ring_baseline(importer).maps);

    // Import read-write: one map call, for the data.
    let calls = w.hv.map_calls;
    let (dom, hv) = w.split(importer);
    dom.import(hv, &s.hid, true).unwrap();
    assert_eq!(w.hv.map_calls - calls, 1);
    assert_eq!(
        w.hv.maps_of(i_id, e_id) - ring_maps,
        4,
        "directory unmapped, data mapped"
    );
    w.pump();
    w.check();
    assert!(w.dom(exporter).export_state(&s.hid).unwrap().peer_maps());
    let events = w.split(exporter).0.take_events();
    assert_eq!(events_about(&events, EventType::Mapped, &s.hid), 1);

    // Zero copy, both ways.
    assert_same_bytes(&w, &s);
    w.dom(importer)
        .write_import(&s.hid, 4090, b"written by the importer")
        .unwrap();
    assert_eq!(
        w.dom(exporter).read_buffer(&w.hv, s.buf, 4090, 23),
        b"written by the importer"
    );
    w.dom(exporter)
        .write_buffer(&w.hv, s.buf, size - 5, b"tail!");
    s.bytes[4090..4090 + 23].copy_from_slice(b"written by the importer");
    s.bytes[size - 5..].copy_from_slice(b"tail!");
    assert_eq!(
        w.dom(importer).read_import(&s.hid, size - 5, 5).unwrap(),
        b"tail!"
    );

    // A second user of the same import costs no map call.
    let calls = w.hv.map_calls;
    let (dom, hv) = w.split(importer);
    dom.import(hv, &s.hid, false).unwrap();
    assert_eq!(w.hv.map_calls, calls);
    assert_eq!(w.dom(importer).users(&s.hid), 2);

    // Unexport while mapped: Busy, the grants stay.
    let (dom, hv) = w.split(exporter);
    dom.unexport(hv, &s.hid).unwrap();
    w.pump();
    w.check();
    // Answered Busy: the exporter awaits the RELEASE.
    assert!(matches!(
        w.dom(exporter).export_state(&s.hid).unwrap().phase(),
        ExportPhase::AwaitingRelease(_)
    ));
    let events = w.split(importer).0.take_events();
    assert_eq!(events_about(&events, EventType::Unexport, &s.hid), 1);
    assert!(w.dom(importer).import_state(&s.hid).unwrap().revoked());
    assert_eq!(
        w.hv.counters(e_id).grants - w.ring_baseline(exporter).grants,
        4
    );
    // The mapping still works; a new import of the revoked buffer is refused
    // (even by a user that would share the existing mapping).
    assert_same_bytes(&w, &s);
    let (dom, hv) = w.split(importer);
    assert_eq!(
        dom.import(hv, &s.hid, false),
        Err(DriverError::NoSuchBuffer)
    );

    // First user goes: still mapped, nothing sent.
    let (dom, hv) = w.split(importer);
    dom.release(hv, &s.hid).unwrap();
    w.pump();
    assert!(w.dom(exporter).export_state(&s.hid).is_some());
    // Last user goes: unmap, RELEASE, grants ended.
    let (dom, hv) = w.split(importer);
    dom.release(hv, &s.hid).unwrap();
    w.pump();
    w.check();
    assert!(w.dom(exporter).export_state(&s.hid).is_none());
    assert!(w.dom(importer).import_state(&s.hid).is_none());
    let events = w.split(exporter).0.take_events();
    assert_eq!(events_about(&events, EventType::Released, &s.hid), 1);
    assert_eq!(events_about(&events, EventType::GrantsEnded, &s.hid), 1);
    w.assert_idle(exporter);
    w.assert_idle(importer);
    // The exporter's buffer is its own again and still holds the bytes.
    assert_eq!(
        w.dom(exporter).read_buffer(&w.hv, s.buf, 4090, 23),
        b"written by the importer"
    );

    // Unexport while not mapped: Ok at once, grants ended.
    let t = export(&mut w, exporter, 1, false, 2);
    w.pump();
    let (dom, hv) = w.split(exporter);
    dom.unexport(hv, &t.hid).unwrap();
    w.pump();
    w.check();
    // Answered Ok: the export ended.
    assert!(w.dom(exporter).export_state(&t.hid).is_none());
    assert!(w.dom(importer).import_state(&t.hid).is_none());
    let events = w.split(importer).0.take_events();
    assert_eq!(events_about(&events, EventType::Unexport, &t.hid), 1);
    let events = w.split(exporter).0.take_events();
    assert_eq!(events_about(&events, EventType::GrantsEnded, &t.hid), 1);
    w.assert_idle(exporter);
    w.assert_idle(importer);
    w.finish();
}

#[test]
fn back_to_front_lifecycle() {
    full_lifecycle(Side::Back);
}

#[test]
fn front_to_back_lifecycle() {
    full_lifecycle(Side::Front);
}

/// Read-only exports cannot be mapped or written writable; the grants are
/// read-only in the hypervisor too.
#[test]
fn read_only_export_stays_read_only() {
    for exporter in [Side::Back, Side::Front] {
        let mut w = World::new(WorldConfig::default());
        let importer = exporter.other();
        let s = export(&mut w, exporter, 10_000, false, 3);
        w.pump();
        let (dom, hv) = w.split(importer);
        assert_eq!(dom.import(hv, &s.hid, true), Err(DriverError::NotWritable));
        assert_eq!(
            w.hv.maps_of(w.id(importer), w.id(exporter)),
            w.ring_baseline(importer).maps
        );
        let (dom, hv) = w.split(importer);
        dom.import(hv, &s.hid, false).unwrap();
        assert_same_bytes(&w, &s);
        assert_eq!(
            w.dom(importer).write_import(&s.hid, 0, b"x"),
            Err(DriverError::NotWritable)
        );
        w.pump();
        w.check();
        w.finish();
    }
}

/// Exporting a buffer again with other flags is refused and changes
/// nothing: a read-only export does not become read-write behind its
/// importers, nor the other way round.
#[test]
fn a_reexport_keeps_its_flags() {
    let mut w = World::new(WorldConfig::default());
    let s = export(&mut w, Side::Front, 8192, false, 5);
    w.pump();
    let (dom, hv) = w.split(Side::Front);
    assert_eq!(
        dom.export(hv, s.buf, true, hyper_dmabuf_common::wire::PrivData::EMPTY),
        Err(DriverError::OtherFlags)
    );
    let (dom, hv) = w.split(Side::Front);
    let (again, _) = dom
        .export(hv, s.buf, false, hyper_dmabuf_common::wire::PrivData::EMPTY)
        .unwrap();
    assert_eq!(again, s.hid, "the same flags: an update of the same export");
    w.pump();
    let (dom, hv) = w.split(Side::Back);
    assert_eq!(dom.import(hv, &s.hid, true), Err(DriverError::NotWritable));
    w.pump();
    w.check();
    w.finish();
}

/// Without `feature-rw` a read-write export is refused locally, and one
/// forced onto the ring is refused by the peer.
#[test]
fn read_write_needs_the_feature() {
    let mut w = World::new(WorldConfig {
        feature_rw: false,
        ..WorldConfig::default()
    });
    let (dom, hv) = w.split(Side::Front);
    let buf = dom.create_buffer(hv, 100);
    assert_eq!(
        dom.export(hv, buf, true, hyper_dmabuf_common::wire::PrivData::EMPTY),
        Err(DriverError::NotWritable)
    );
    w.check();
    w.finish();
}

/// An update of the private data reaches the importer; an update of a
/// revoked buffer is refused.
#[test]
fn update_reaches_the_importer() {
    let mut w = World::new(WorldConfig::default());
    let s = export(&mut w, Side::Back, 5000, false, 4);
    w.pump();
    w.split(Side::Front).0.take_events();
    let new = hyper_dmabuf_common::wire::PrivData::new(b"new metadata").unwrap();
    let (dom, hv) = w.split(Side::Back);
    let token = dom.update(hv, &s.hid, new).unwrap();
    w.pump();
    assert_eq!(w.dom(Side::Back).completion(token), Some(Status::Ok));
    let events = w.split(Side::Front).0.take_events();
    let ev = events.iter().find(|e| e.kind == EventType::Update).unwrap();
    assert_eq!(ev.priv_data.as_bytes(), b"new metadata");
    assert_eq!(
        w.dom(Side::Front)
            .import_state(&s.hid)
            .unwrap()
            .export
            .priv_data
            .as_bytes(),
        b"new metadata"
    );
    w.finish();
}

/// Frames announced faster than the importer takes them: every update
/// call returns at once, those that find the ring full wait in the
/// exporter, each buffer's newest once, and the importer hears the frames
/// in the order they were made, the last of each buffer among them. An
/// unexport drops what still waits: no UPDATE follows its UNEXPORT.
#[test]
fn frames_beyond_the_ring_wait_in_order_newest_per_buffer() {
    let mut w = World::new(WorldConfig::default());
    let bufs: Vec<_> = (0..3)
        .map(|seed| export(&mut w, Side::Back, 4096, false, seed))
        .collect();
    w.pump();
    w.split(Side::Front).0.take_events();
    let frames = 500u64;
    let (dom, hv) = w.split(Side::Back);
    for frame in 0..frames {
        let hid = &bufs[frame as usize % bufs.len()].hid;
        let tag = hyper_dmabuf_common::wire::PrivData::new(&frame.to_le_bytes()).unwrap();
        dom.update(hv, hid, tag)
            .expect("an update never waits nor fails");
    }
    assert!(
        w.dom(Side::Back).updates_queued() > 0,
        "500 frames did not fill the ring"
    );
    assert!(w.dom(Side::Back).updates_queued() <= bufs.len());
    w.pump();
    assert_eq!(w.dom(Side::Back).updates_queued(), 0, "the queue drained");
    let heard: Vec<(HyperDmabufId, u64)> = w
        .split(Side::Front)
        .0
        .take_events()
        .iter()
        .filter(|e| e.kind == EventType::Update)
        .map(|e| {
            let frame = u64::from_le_bytes(e.priv_data.as_bytes().try_into().unwrap());
            (e.hid.unwrap(), frame)
        })
        .collect();
    assert!(
        heard.windows(2).all(|p| p[0].1 < p[1].1),
        "frames out of order"
    );
    for (i, b) in bufs.iter().enumerate() {
        let last = heard.iter().rev().find(|(h, _)| h.matches(&b.hid)).unwrap();
        let n = bufs.len() as u64;
        let newest = (frames - 1) - (frames - 1 - i as u64) % n;
        assert_eq!(last.1, newest, "newest frame of buffer {i}");
    }
    assert!(heard.len() < frames as usize, "nothing waited");

    // Fill the ring again, then unexport buffer 0 while its frame waits.
    let (dom, hv) = w.split(Side::Back);
    for frame in frames..2 * frames {
        let hid = &bufs[frame as usize % bufs.len()].hid;
        let tag = hyper_dmabuf_common::wire::PrivData::new(&frame.to_le_bytes()).unwrap();
        dom.update(hv, hid, tag).unwrap();
    }
    dom.unexport(hv, &bufs[0].hid).unwrap();
    // Asked now: no later frame may cancel it, however full the ring.
    assert_eq!(
        dom.update(hv, &bufs[0].hid, hyper_dmabuf_common::wire::PrivData::EMPTY),
        Err(DriverError::NoSuchBuffer)
    );
    w.pump();
    let events = w.split(Side::Front).0.take_events();
    let revoked = events
        .iter()
        .position(|e| e.kind == EventType::Unexport && e.hid.unwrap().matches(&bufs[0].hid))
        .expect("the unexport reached the importer");
    assert!(
        !events[revoked..]
            .iter()
            .any(|e| e.kind == EventType::Update && e.hid.unwrap().matches(&bufs[0].hid)),
        "an UPDATE followed its UNEXPORT"
    );
    assert_eq!(w.dom(Side::Back).updates_queued(), 0);
    let (dom, hv) = w.split(Side::Back);
    assert_eq!(
        dom.update(hv, &bufs[0].hid, hyper_dmabuf_common::wire::PrivData::EMPTY),
        Err(DriverError::NoSuchBuffer),
        "an unexported buffer takes no frame"
    );
    for b in &bufs[1..] {
        let (dom, hv) = w.split(Side::Back);
        dom.unexport(hv, &b.hid).unwrap();
    }
    w.pump();
    w.finish();
}

/// A two-level directory (more than 4 MiB) costs three map calls: root,
/// all leaves, all data pages.
#[test]
fn two_level_import_is_three_batches() {
    let mut w = World::new(WorldConfig::default());
    let size = (4 << 20) + 4096 * 3 + 1;
    let s = export(&mut w, Side::Front, size, false, 5);
    w.pump();
    let calls = w.hv.map_calls;
    let (dom, hv) = w.split(Side::Back);
    dom.import(hv, &s.hid, false).unwrap();
    assert_eq!(w.hv.map_calls - calls, 3);
    assert_eq!(
        w.hv.maps_of(w.id(Side::Back), w.id(Side::Front)),
        size.div_ceil(4096) + w.ring_pages() * 2
    );
    assert_same_bytes(&w, &s);
    w.pump();
    w.check();
    w.finish();
}

/// An export the importer refuses (its import table is full) is ended at
/// once by the exporter: the waiting request completes with the refusal
/// and no grant stays.
#[test]
fn refused_export_is_ended() {
    use hyper_dmabuf_common::limits::MAX_IMPORTS_PER_PEER;
    let mut w = World::new(WorldConfig::default());
    let mut shared = Vec::new();
    for i in 0..MAX_IMPORTS_PER_PEER as u64 + 1 {
        shared.push(export(&mut w, Side::Front, 100, false, i));
        if i % 16 == 0 {
            w.pump();
        }
    }
    w.pump();
    w.check();
    let last = shared.last().unwrap();
    assert_eq!(
        w.dom(Side::Front).completion(last.token),
        Some(Status::NoSpace)
    );
    assert!(w.dom(Side::Front).export_state(&last.hid).is_none());
    let events = w.split(Side::Front).0.take_events();
    assert_eq!(events_about(&events, EventType::GrantsEnded, &last.hid), 1);
    assert_eq!(
        w.dom(Side::Front).stats().exports,
        MAX_IMPORTS_PER_PEER,
        "the others stay exported"
    );
    for s in &shared[..MAX_IMPORTS_PER_PEER] {
        assert_eq!(w.dom(Side::Front).completion(s.token), Some(Status::Ok));
    }
    w.finish();
}

/// What a C program reading `struct hdmabuf_event` may rely on
/// (docs/uapi.md, "Events"): every event about a buffer carries its size,
/// on both sides; the importer-side ones its flags; events about a peer
/// neither.
#[test]
fn every_event_about_a_buffer_carries_its_size() {
    let mut w = World::new(WorldConfig::default());
    let (exporter, importer) = (Side::Front, Side::Back);
    let size = 3 * 4096;
    let s = export(&mut w, exporter, size, true, 1);
    let t = export(&mut w, exporter, 4096, true, 2);
    w.pump();
    let (dom, hv) = w.split(importer);
    dom.import(hv, &s.hid, false).unwrap();
    w.pump();
    let (dom, hv) = w.split(importer);
    dom.release(hv, &s.hid).unwrap();
    w.pump();
    let (dom, hv) = w.split(exporter);
    dom.unexport(hv, &s.hid).unwrap();
    w.pump();
    // `t` is still exported when the connection goes: the importer hears
    // of its end from the disconnection, not from an UNEXPORT.
    w.disconnect();

    let exporter_events = w.split(exporter).0.take_events();
    let importer_events = w.split(importer).0.take_events();
    let seen = |events: &[Event], kind| events_about(events, kind, &s.hid);
    for kind in [
        EventType::Mapped,
        EventType::Released,
        EventType::GrantsEnded,
    ] {
        assert_eq!(seen(&exporter_events, kind), 1, "{kind:?}");
    }
    for kind in [EventType::NewExport, EventType::Unexport] {
        assert_eq!(seen(&importer_events, kind), 1, "{kind:?}");
        assert_eq!(events_about(&importer_events, kind, &t.hid), 1, "{kind:?}");
    }
    for event in exporter_events.iter().chain(&importer_events) {
        let (expected_size, importer_side) = match event.hid {
            None => (0, false),
            Some(hid) if hid.matches(&s.hid) => (size as u64, event.peer == w.id(exporter)),
            Some(hid) if hid.matches(&t.hid) => (4096, event.peer == w.id(exporter)),
            Some(_) => panic!("an event about no buffer of this test: {event:?}"),
        };
        assert_eq!(event.size, expected_size, "{event:?}");
        let flags = if importer_side {
            ExportFlags::WRITABLE
        } else {
            ExportFlags::default()
        };
        assert_eq!(event.flags, flags, "{event:?}");
    }
    w.finish();
}
