// SPDX-License-Identifier: MIT
//! Randomized sequences of export, import, read/write, release, unexport,
//! update, buffer close and kill+restart of either side, with every
//! invariant checked after each step and every counter back at zero at
//! the end.

mod common;

use common::pattern;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::wire::PrivData;
use hyper_dmabuf_sim::{BufId, DriverError, Side, World, WorldConfig};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

#[derive(Debug, Clone)]
enum Op {
    Export {
        back: bool,
        size: usize,
        rw: bool,
    },
    Import {
        pick: usize,
        rw: bool,
    },
    Touch {
        pick: usize,
        at: usize,
    },
    Release {
        pick: usize,
    },
    Unexport {
        pick: usize,
    },
    Update {
        pick: usize,
    },
    CloseBuffer {
        pick: usize,
    },
    Pump,
    /// One handler pass of one side only.
    Step {
        back: bool,
    },
    /// The last user releases a mapping and maps the buffer again at once.
    Remap {
        pick: usize,
    },
    KillRestart {
        back: bool,
    },
    /// The driver of one side is unloaded and loaded again.
    Reload {
        back: bool,
    },
}

fn side(back: bool) -> Side {
    if back {
        Side::Back
    } else {
        Side::Front
    }
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        8 => 1usize..6 * 4096,
        1 => Just((4 << 20) + 4096 + 1),
    ];
    prop_oneof![
        4 => (any::<bool>(), size, any::<bool>())
            .prop_map(|(back, size, rw)| Op::Export { back, size, rw }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, rw)| Op::Import { pick, rw }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(pick, at)| Op::Touch { pick, at }),
        3 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Unexport { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Update { pick }),
        1 => any::<usize>().prop_map(|pick| Op::CloseBuffer { pick }),
        3 => Just(Op::Pump),
        3 => any::<bool>().prop_map(|back| Op::Step { back }),
        2 => any::<usize>().prop_map(|pick| Op::Remap { pick }),
        1 => any::<bool>().prop_map(|back| Op::KillRestart { back }),
        1 => any::<bool>().prop_map(|back| Op::Reload { back }),
    ]
}

/// A buffer some side exported, as the test knows it.
struct Live {
    exporter: Side,
    hid: HyperDmabufId,
    buf: Option<BufId>,
    size: usize,
    rw: bool,
}

/// A mapping some side's user holds.
struct Held {
    importer: Side,
    hid: HyperDmabufId,
}

struct Run {
    w: World,
    live: Vec<Live>,
    held: Vec<Held>,
    tokens: Vec<(Side, u64)>,
    seed: u64,
}

impl Run {
    fn step(&mut self, op: &Op) {
        let w = &mut self.w;
        match *op {
            Op::Export { back, size, rw } => {
                let s = side(back);
                self.seed += 1;
                let (dom, hv) = w.split(s);
                let buf = dom.create_buffer(hv, size as u64);
                dom.write_buffer(hv, buf, 0, &pattern(self.seed, size));
                match dom.export(hv, buf, rw, PrivData::EMPTY) {
                    Ok((hid, token)) => {
                        self.tokens.push((s, token));
                        self.live.push(Live {
                            exporter: s,
                            hid,
                            buf: Some(buf),
                            size,
                            rw,
                        });
                    }
                    Err(e) => {
                        assert!(rw && !w.config().feature_rw, "export refused: {e:?}");
                        assert_eq!(e, DriverError::NotWritable);
                    }
                }
            }
            Op::Import { pick, rw } => {
                if self.live.is_empty() {
                    return;
                }
                let l = &self.live[pick % self.live.len()];
                let importer = l.exporter.other();
                let (dom, hv) = w.split(importer);
                match dom.import(hv, &l.hid, rw) {
                    Ok(()) => self.held.push(Held {
                        importer,
                        hid: l.hid,
                    }),
                    // Not announced yet, revoked, gone, read-only, or no
                    // ring slot: all legitimate between honest peers.
                    Err(
                        DriverError::NoSuchBuffer | DriverError::Again | DriverError::NotWritable,
                    ) => {}
                    Err(e) => panic!("import between honest peers failed: {e:?}"),
                }
            }
            Op::Touch { pick, at } => {
                if self.held.is_empty() {
                    return;
                }
                let h = &self.held[pick % self.held.len()];
                let Some(l) = self.live.iter().find(|l| l.hid.matches(&h.hid)) else {
                    return;
                };
                let (Some(buf), true) = (l.buf, l.rw) else {
                    return;
                };
                let off = at % l.size;
                let byte = [(at >> 8) as u8];
                if w.dom(h.importer).write_import(&h.hid, off, &byte).is_ok() {
                    assert_eq!(w.dom(l.exporter).read_buffer(&w.hv, buf, off, 1), byte);
                }
            }
            Op::Release { pick } => {
                if self.held.is_empty() {
                    return;
                }
                let h = self.held.swap_remove(pick % self.held.len());
                let (dom, hv) = w.split(h.importer);
                dom.release(hv, &h.hid).unwrap();
            }
            Op::Unexport { pick } => {
                if self.live.is_empty() {
                    return;
                }
                let l = self.live.swap_remove(pick % self.live.len());
                let (dom, hv) = w.split(l.exporter);
                match dom.unexport(hv, &l.hid) {
                    Ok(()) => {}
                    // Refused by the peer and ended meanwhile.
                    Err(DriverError::NoSuchBuffer) => {}
                    Err(e) => panic!("unexport failed: {e:?}"),
                }
            }
            Op::Update { pick } => {
                if self.live.is_empty() {
                    return;
                }
                let l = &self.live[pick % self.live.len()];
                let (dom, hv) = w.split(l.exporter);
                if let Ok(token) = dom.update(hv, &l.hid, PrivData::new(b"v2").unwrap()) {
                    self.tokens.push((l.exporter, token));
                }
            }
            Op::CloseBuffer { pick } => {
                if self.live.is_empty() {
                    return;
                }
                let n = self.live.len();
                let l = &mut self.live[pick % n];
                if let Some(buf) = l.buf.take() {
                    let (dom, hv) = w.split(l.exporter);
                    dom.free_buffer(hv, buf);
                }
            }
            Op::Pump => {
                w.pump();
            }
            Op::Step { back } => {
                w.step(side(back));
            }
            Op::Remap { pick } => {
                if self.held.is_empty() {
                    return;
                }
                let h = &self.held[pick % self.held.len()];
                let (importer, hid) = (h.importer, h.hid);
                if w.dom(importer).users(&hid) != 1 {
                    return;
                }
                let (dom, hv) = w.split(importer);
                dom.release(hv, &hid).unwrap();
                match dom.import(hv, &hid, false) {
                    Ok(()) => {}
                    Err(DriverError::NoSuchBuffer | DriverError::Again) => {
                        self.held.swap_remove(pick % self.held.len());
                    }
                    Err(e) => panic!("re-import failed: {e:?}"),
                }
            }
            Op::Reload { back } => {
                // Every export of either side ends; users keep their
                // mappings (now orphans) until they release them.
                w.reload(side(back));
                self.live.clear();
            }
            Op::KillRestart { back } => {
                let s = side(back);
                w.kill(s);
                // Whatever either side exported is gone; the survivor's
                // users keep their mappings of the dead side's pages.
                self.live.clear();
                self.held.retain(|h| h.importer != s);
                self.tokens.retain(|(t, _)| *t != s);
                w.restart(s);
            }
        }
    }

    /// Invariants after every step.
    fn check(&self) {
        let w = &self.w;
        w.check();
        for h in &self.held {
            assert!(w.dom(h.importer).users(&h.hid) > 0, "held mapping vanished");
            let Some(l) = self.live.iter().find(|l| l.hid.matches(&h.hid)) else {
                continue;
            };
            let Some(buf) = l.buf else { continue };
            // Zero copy: the importer reads the exporter's bytes, now.
            for off in [0, l.size / 2, l.size - 1] {
                assert_eq!(
                    w.dom(h.importer).read_import(&h.hid, off, 1).unwrap(),
                    w.dom(l.exporter).read_buffer(&w.hv, buf, off, 1)
                );
            }
        }
    }

    fn finish(mut self) {
        // Users let go, exporters unexport everything.
        for h in std::mem::take(&mut self.held) {
            let (dom, hv) = self.w.split(h.importer);
            dom.release(hv, &h.hid).unwrap();
        }
        for s in [Side::Back, Side::Front] {
            let (dom, hv) = self.w.split(s);
            for hid in dom.exports() {
                dom.unexport(hv, &hid).unwrap();
            }
        }
        self.w.pump();
        self.w.check();
        for s in [Side::Back, Side::Front] {
            let left = self.w.dom(s).exports();
            assert!(left.is_empty(), "{s:?}: unexports never ended {left:?}");
        }
        for (s, token) in &self.tokens {
            assert!(
                self.w.dom(*s).completion(*token).is_some(),
                "request never completed"
            );
        }
        self.w.assert_idle(Side::Back);
        self.w.assert_idle(Side::Front);
        self.w.finish();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(0x5eed_0001),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences(
        ops in prop::collection::vec(op(), 1..40),
        order in 0u32..3,
        rw in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let w = World::new(WorldConfig {
            ring_page_order: order,
            feature_rw: rw,
            seed,
            ..WorldConfig::default()
        });
        let mut run = Run { w, live: Vec::new(), held: Vec::new(), tokens: Vec::new(), seed };
        for op in &ops {
            run.step(op);
            run.check();
        }
        run.finish();
    }
}
