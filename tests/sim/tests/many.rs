// SPDX-License-Identifier: MIT
//! Many buffers at once, in both directions, interleaved: sizes from one
//! byte to more than 4 MiB (two-level directories), more exports than ring
//! slots (retried, as a user retries `EAGAIN`), imports, unexports with and
//! without mappings, releases in another order than the imports.

mod common;

use common::{assert_same_bytes, export_counting, Shared};
use hyper_dmabuf_common::channel::ExportPhase;
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_sim::rng::Rng;
use hyper_dmabuf_sim::{Side, World, WorldConfig};

const SIZES: [usize; 10] = [
    1,
    4095,
    4096,
    4097,
    3 * 4096 + 17,
    64 << 10,
    (1 << 20) + 5,
    4 << 20,
    (4 << 20) + 1,
    (5 << 20) + 4096 * 7 + 3,
];

#[test]
fn fifty_buffers_interleaved() {
    let mut w = World::new(WorldConfig::default());
    let mut rng = Rng::new(50);
    let mut shared: Vec<Shared> = Vec::new();
    let mut ring_full = 0;
    for i in 0..50u64 {
        // Four in five from the frontend: more than its ring has slots.
        let side = if i % 5 == 4 { Side::Back } else { Side::Front };
        // Every size of the list once, the rest small or medium.
        let size = match SIZES.get(i as usize) {
            Some(&s) => s,
            None => 1 + rng.below(300_000) as usize,
        };
        let rw = rng.below(3) == 0;
        let (s, full) = export_counting(&mut w, side, size, rw, 100 + i);
        shared.push(s);
        ring_full += full;
        // Pump now and then only: exports pile up beyond the ring's slots.
        if i >= 45 && rng.below(2) == 0 {
            w.pump();
        }
    }
    w.pump();
    w.check();
    assert!(ring_full > 0, "the exports never found the ring full");
    for s in &shared {
        assert_eq!(w.dom(s.exporter).completion(s.token), Some(Status::Ok));
    }

    // Import everything, some twice, in a shuffled order.
    let mut order: Vec<usize> = (0..shared.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &i in &order {
        let s = &shared[i];
        let (dom, hv) = w.split(s.exporter.other());
        dom.import(hv, &s.hid, false).unwrap();
        if i % 3 == 0 {
            dom.import(hv, &s.hid, false).unwrap();
        }
        if rng.below(3) == 0 {
            w.pump();
        }
    }
    w.pump();
    w.check();
    for s in &shared {
        assert_same_bytes(&w, s);
        assert!(w.dom(s.exporter).export_state(&s.hid).unwrap().peer_maps());
    }

    // Unexport half while mapped, release some before, some after.
    let mut unexported = Vec::new();
    for (i, s) in shared.iter().enumerate() {
        let importer = s.exporter.other();
        if i % 4 == 1 {
            // Released before the unexport: answered Ok.
            let users = w.dom(importer).users(&s.hid);
            for _ in 0..users {
                let (dom, hv) = w.split(importer);
                dom.release(hv, &s.hid).unwrap();
            }
        }
        if i % 2 == 1 {
            let (dom, hv) = w.split(s.exporter);
            dom.unexport(hv, &s.hid).unwrap();
            unexported.push(i);
        }
        if rng.below(5) == 0 {
            w.pump();
        }
    }
    w.pump();
    w.check();
    for &i in &unexported {
        let s = &shared[i];
        let state = w.dom(s.exporter).export_state(&s.hid);
        if i % 4 == 1 {
            // Answered Ok: the export ended.
            assert!(state.is_none(), "buffer {i} was released before");
        } else {
            // Answered Busy: the exporter awaits the RELEASE.
            let phase = state.map(|s| s.phase());
            assert!(
                matches!(phase, Some(ExportPhase::AwaitingRelease(_))),
                "buffer {i} is mapped: {phase:?}"
            );
            assert_same_bytes(&w, s);
        }
    }
    // Everything left goes: users release, exporters unexport the rest.
    for (i, s) in shared.iter().enumerate() {
        let importer = s.exporter.other();
        let users = w.dom(importer).users(&s.hid);
        for _ in 0..users {
            let (dom, hv) = w.split(importer);
            dom.release(hv, &s.hid).unwrap();
        }
        if i % 2 == 0 {
            let (dom, hv) = w.split(s.exporter);
            dom.unexport(hv, &s.hid).unwrap();
        }
    }
    w.pump();
    w.check();
    w.assert_idle(Side::Back);
    w.assert_idle(Side::Front);
    w.finish();
}
