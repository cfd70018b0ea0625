// SPDX-License-Identifier: MIT
//! Helpers shared by the simulation tests.
#![allow(dead_code)]

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{Event, EventType};
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_sim::driver::DriverError;
use hyper_dmabuf_sim::rng::Rng;
use hyper_dmabuf_sim::{BufId, Side, World};

/// A buffer exported by one side, with the bytes written into it.
pub(crate) struct Shared {
    pub(crate) exporter: Side,
    pub(crate) buf: BufId,
    pub(crate) hid: HyperDmabufId,
    pub(crate) token: u64,
    pub(crate) bytes: Vec<u8>,
}

/// Deterministic test bytes.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed.wrapping_mul(31).wrapping_add(7)).bytes(len)
}

/// Creates a buffer of `size` bytes at `side`, fills it with a pattern and
/// exports it (not pumped, unless the ring was full).
pub(crate) fn export(w: &mut World, side: Side, size: usize, rw: bool, seed: u64) -> Shared {
    export_counting(w, side, size, rw, seed).0
}

/// As [`export`], and how many times the ring was full: the export is
/// retried, as a user retries `EAGAIN`, once the peer has answered.
pub(crate) fn export_counting(
    w: &mut World,
    side: Side,
    size: usize,
    rw: bool,
    seed: u64,
) -> (Shared, u32) {
    let bytes = pattern(seed, size);
    let (dom, hv) = w.split(side);
    let buf = dom.create_buffer(hv, size as u64);
    dom.write_buffer(hv, buf, 0, &bytes);
    let priv_data = PrivData::new(&seed.to_le_bytes()).unwrap();
    let mut full = 0;
    let (hid, token) = loop {
        let (dom, hv) = w.split(side);
        match dom.export(hv, buf, rw, priv_data) {
            Ok(done) => break done,
            Err(DriverError::Again) if full < 8 => {
                full += 1;
                w.pump();
            }
            Err(e) => panic!("export: {e:?}"),
        }
    };
    let shared = Shared {
        exporter: side,
        buf,
        hid,
        token,
        bytes,
    };
    (shared, full)
}

/// The events of `side` of kind `kind` about `hid`.
pub(crate) fn events_about(events: &[Event], kind: EventType, hid: &HyperDmabufId) -> usize {
    events
        .iter()
        .filter(|e| e.kind == kind && e.hid.as_ref().is_some_and(|h| h.matches(hid)))
        .count()
}

/// Asserts the importer sees exactly the exporter's bytes.
pub(crate) fn assert_same_bytes(w: &World, s: &Shared) {
    let importer = s.exporter.other();
    let got = w
        .dom(importer)
        .read_import(&s.hid, 0, s.bytes.len())
        .expect("mapped");
    assert!(got == s.bytes, "importer reads other bytes than exported");
}
