// SPDX-License-Identifier: MIT
//! Fences that cross domains (protocol version 3), between two simulated
//! drivers running the real ledger and channel: a frame announced while
//! its buffer's writers are busy carries a fence; the importer's local
//! fence ends exactly when the exporter's SIGNAL says, or with an error
//! on timeout or peer loss; nothing is left held. A hostile exporter's
//! fences: `hostile.rs`.

mod common;

use common::export;
use hyper_dmabuf_common::fence::{FenceEnd, DEFAULT_FENCE_TIMEOUT_MS, MAX_FENCES};
use hyper_dmabuf_common::ledger::Frame;
use hyper_dmabuf_common::uapi::EventType;
use hyper_dmabuf_common::wire::{FenceResult, PrivData, VERSION_3};
use hyper_dmabuf_sim::{DriverError, Side, World, WorldConfig};

const EXPORTER: Side = Side::Back;
const IMPORTER: Side = Side::Front;

fn fenced(tag: u8) -> Frame {
    Frame {
        priv_data: PrivData::new(&[tag]).unwrap(),
        fenced: true,
    }
}

/// The importer's local fences that have not ended.
fn pending(w: &World) -> usize {
    w.dom(IMPORTER)
        .local_fences()
        .values()
        .filter(|e| e.is_none())
        .count()
}

/// How the importer's local fences ended, in the order they were made.
fn ends(w: &World) -> Vec<Option<FenceEnd>> {
    w.dom(IMPORTER).local_fences().values().copied().collect()
}

#[test]
fn sessions_speak_version_3() {
    let w = World::new(WorldConfig::default());
    let conn = w.dom(EXPORTER).conn.as_ref().unwrap();
    assert_eq!(conn.config.version, VERSION_3);
}

/// A fenced UPDATE: the importer hears the frame with its fence pending,
/// the new dma-buf of the import starts with it, and it signals when the
/// exporter's does, not before.
#[test]
fn a_fenced_frame_signals_when_the_exporters_fence_does() {
    let mut w = World::new(WorldConfig::default());
    let s = export(&mut w, EXPORTER, 4096, false, 1);
    w.pump();
    w.split(IMPORTER).0.take_events();
    let (dom, hv) = w.split(EXPORTER);
    let (_, fence) = dom.update_frame(hv, &s.hid, fenced(7)).unwrap();
    let fence = fence.expect("version 3 carries the fence");
    w.pump();
    let events = w.split(IMPORTER).0.take_events();
    assert!(events.iter().any(|e| e.kind == EventType::Update));
    assert_eq!(ends(&w), vec![None], "one fence, pending");
    assert_eq!(w.dom(IMPORTER).peer_fences(&s.hid).len(), 1);
    assert_eq!(w.dom(IMPORTER).fences_in_held(), 1);
    // Time passes short of the timeout: still pending.
    let (dom, hv) = w.split(IMPORTER);
    dom.advance_clock(hv, DEFAULT_FENCE_TIMEOUT_MS - 1);
    assert_eq!(pending(&w), 1);

    let (dom, hv) = w.split(EXPORTER);
    dom.signal_fence(hv, fence, FenceResult::Signalled);
    w.pump();
    assert_eq!(ends(&w), vec![Some(FenceEnd::Signalled)]);
    assert_eq!(w.dom(IMPORTER).fences_in_held(), 0);
    assert_eq!(w.dom(EXPORTER).fences_out_held(), 0);
    assert!(w.dom(IMPORTER).peer_fences(&s.hid).is_empty());
    w.finish();
}

/// A fence that fails on the exporter fails on the importer; an EXPORT
/// of a buffer with pending writers carries a fence too.
#[test]
fn a_failed_fence_fails_and_exports_carry_fences() {
    let mut w = World::new(WorldConfig::default());
    let (dom, hv) = w.split(EXPORTER);
    let buf = dom.create_buffer(hv, 3 * 4096);
    let (hid, _, fence) = dom.export_frame(hv, buf, false, fenced(1)).unwrap();
    w.pump();
    assert_eq!(w.dom(IMPORTER).peer_fences(&hid).len(), 1);
    let (dom, hv) = w.split(EXPORTER);
    dom.signal_fence(hv, fence.unwrap(), FenceResult::Failed);
    w.pump();
    assert_eq!(ends(&w), vec![Some(FenceEnd::Failed)]);
    w.finish();
}

/// No SIGNAL within the timeout: the fence ends `TimedOut`, and the
/// exporter's late SIGNAL is refused harmlessly.
#[test]
fn an_unsignalled_fence_times_out() {
    let mut w = World::new(WorldConfig::default());
    let s = export(&mut w, EXPORTER, 4096, false, 2);
    w.pump();
    let (dom, hv) = w.split(EXPORTER);
    let (_, fence) = dom.update_frame(hv, &s.hid, fenced(1)).unwrap();
    w.pump();
    let (dom, hv) = w.split(IMPORTER);
    dom.advance_clock(hv, DEFAULT_FENCE_TIMEOUT_MS);
    assert_eq!(ends(&w), vec![Some(FenceEnd::TimedOut)]);
    assert_eq!(w.dom(IMPORTER).fences_in_held(), 0);
    let (dom, hv) = w.split(EXPORTER);
    dom.signal_fence(hv, fence.unwrap(), FenceResult::Signalled);
    w.pump();
    assert_eq!(ends(&w), vec![Some(FenceEnd::TimedOut)], "ended once");
    assert_eq!(w.dom(EXPORTER).fences_out_held(), 0);
    w.finish();
}

/// The exporter dies: every fence of its on the importer ends `PeerGone`.
#[test]
fn peer_death_ends_its_fences() {
    let mut w = World::new(WorldConfig::default());
    let a = export(&mut w, EXPORTER, 4096, false, 3);
    let b = export(&mut w, EXPORTER, 8192, false, 4);
    w.pump();
    for hid in [&a.hid, &b.hid] {
        let (dom, hv) = w.split(EXPORTER);
        dom.update_frame(hv, hid, fenced(1)).unwrap();
    }
    w.pump();
    assert_eq!(pending(&w), 2);
    w.kill(EXPORTER);
    assert_eq!(ends(&w), vec![Some(FenceEnd::PeerGone); 2]);
    assert_eq!(w.dom(IMPORTER).fences_in_held(), 0);
}

/// Frames that wait for room on the ring: a newer frame of a buffer
/// replaces a waiting one and its fence (the peer never hears of it); a
/// waiting frame whose fence signalled before it went goes without one;
/// every fence the peer heard of gets its SIGNAL, once.
#[test]
fn waiting_frames_carry_only_live_fences() {
    let mut w = World::new(WorldConfig::default());
    let bufs: Vec<_> = (0..2)
        .map(|seed| export(&mut w, EXPORTER, 4096, false, seed))
        .collect();
    w.pump();
    w.split(IMPORTER).0.take_events();
    // Fill the ring with unfenced frames so that the fenced ones wait.
    let (dom, hv) = w.split(EXPORTER);
    while dom.updates_queued() == 0 {
        dom.update(hv, &bufs[1].hid, PrivData::EMPTY).unwrap();
    }
    let (_, replaced) = dom.update_frame(hv, &bufs[0].hid, fenced(1)).unwrap();
    let (_, newest) = dom.update_frame(hv, &bufs[0].hid, fenced(2)).unwrap();
    let (_, early) = dom.update_frame(hv, &bufs[1].hid, fenced(3)).unwrap();
    assert_eq!(dom.fences_out_held(), 3);
    // The replaced frame's fence ends: nobody hears of it.
    dom.signal_fence(hv, replaced.unwrap(), FenceResult::Signalled);
    // The third frame's fence ends before its frame went.
    dom.signal_fence(hv, early.unwrap(), FenceResult::Signalled);
    w.pump();
    assert_eq!(ends(&w), vec![None], "only the newest frame's fence");
    assert_eq!(w.dom(EXPORTER).fences_out_held(), 1);
    let (dom, hv) = w.split(EXPORTER);
    dom.signal_fence(hv, newest.unwrap(), FenceResult::Signalled);
    w.pump();
    assert_eq!(ends(&w), vec![Some(FenceEnd::Signalled)]);
    assert_eq!(w.dom(EXPORTER).fences_out_held(), 0);
    w.finish();
}

/// At most `MAX_FENCES` of the exporter's fences wait at once: the next
/// fenced frame is refused with `EAGAIN` until one signals.
#[test]
fn the_exporter_bounds_its_fences() {
    let mut w = World::new(WorldConfig::default());
    let s = export(&mut w, EXPORTER, 4096, false, 5);
    w.pump();
    let mut fences = Vec::new();
    for i in 0..MAX_FENCES {
        let (dom, hv) = w.split(EXPORTER);
        let (_, fence) = dom.update_frame(hv, &s.hid, fenced(i as u8)).unwrap();
        fences.push(fence.unwrap());
        w.pump();
    }
    assert_eq!(pending(&w), MAX_FENCES);
    let (dom, hv) = w.split(EXPORTER);
    assert_eq!(
        dom.update_frame(hv, &s.hid, fenced(0)),
        Err(DriverError::Again)
    );
    dom.signal_fence(hv, fences[0], FenceResult::Signalled);
    assert!(dom.update_frame(hv, &s.hid, fenced(0)).is_ok());
    w.pump();
    for fence in fences.into_iter().skip(1) {
        let (dom, hv) = w.split(EXPORTER);
        dom.signal_fence(hv, fence, FenceResult::Signalled);
        w.pump();
    }
    assert_eq!(pending(&w), 1);
    w.finish();
}
