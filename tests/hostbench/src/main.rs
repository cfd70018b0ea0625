// SPDX-License-Identifier: MIT
//! Host benchmarks of the protocol core (`make bench-host`; not tests).
//!
//! * Ring: one 256-byte message pushed, published and popped, answered
//!   the same way (a request/response pair, as the protocol uses the ring),
//!   one at a time and in batches that fill the ring; against a bare
//!   `memcpy` of the same bytes (each message copied into shared memory by
//!   the producer and out of it by the consumer: two 256-byte copies). The
//!   ring runs over `[AtomicU32]`, the shared-memory implementation of
//!   `hyper-dmabuf-common` used by the tests and the simulation, and over
//!   `WordMem`, the same accessors with a whole-word fast path,
//!   to show what that path is worth.
//! * Page directory: encode and decode for 8 MiB, 256 MiB and 1 GiB
//!   buffers (2 048, 65 536 and 262 144 grant references).
//!
//! Prints a table and writes the records (name, size_bytes, metric,
//! ns_median, ns_p10, ns_p90, spread = (p90 - p10) / median, reps, batch)
//! to `target/bench/host.json` (or
//! the path given with `--out`). `--quick` shortens every measurement;
//! `--filter ring|wordmem|pgdir` runs one group (and the memcpy baseline),
//! e.g. under `valgrind --tool=callgrind`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use hyper_dmabuf_common::limits::{pages_for_bytes, XEN_PAGE_SIZE};
use hyper_dmabuf_common::pgdir::{decode, encode_leaf, encode_root, DirPage, Layout};
use hyper_dmabuf_common::ring::{init_shared, Requester, Responder};
use hyper_dmabuf_common::shmem::SharedMem;
use hyper_dmabuf_common::wire::{PageRefs, Request, Response, Slot, SLOT_SIZE};
use hyper_dmabuf_common::xen::{GrantRef, Status};
use hyper_dmabuf_common::Error;

use hdmabuf_hostbench::harness::{measure, to_json, Budget, Measurement};
use hdmabuf_hostbench::wordmem::{Word64Mem, WordMem};

/// Ring page order of the benchmarks: the default ring, 4 pages, 32 slots.
const RING_ORDER: u32 = hyper_dmabuf_common::limits::DEFAULT_RING_PAGE_ORDER;

fn sample_request() -> Slot {
    let hid = hyper_dmabuf_common::id::HyperDmabufId::new(0x1234, [7; 16]).expect("not zero");
    Request {
        req_id: 1,
        message: hyper_dmabuf_common::wire::Message::Export(hyper_dmabuf_common::wire::Export {
            hid,
            size: 8 << 20,
            pages: PageRefs::Directory(GrantRef::new(4242).expect("not reserved")),
            flags: Default::default(),
            priv_data: hyper_dmabuf_common::wire::PrivData::new(&[0xa5; 192]).expect("192 bytes"),
            fence: None,
        }),
    }
    .encode()
}

fn sample_response() -> Slot {
    Response {
        req_id: 1,
        op: 1,
        status: Status::Ok,
        map_epoch: None,
    }
    .encode()
}

/// Request/response pairs through a ring over `mem`, `batch` pairs per
/// call (each call leaves the ring empty).
fn ring_bench<M: SharedMem + Copy>(name: &str, mem: M, batch: u32, budget: Budget) -> Measurement {
    init_shared(&mem).expect("ring fits");
    let mut req = Requester::new(mem).expect("ring fits");
    let mut rsp = Responder::new(mem).expect("ring fits");
    assert!(batch <= req.size());
    let request = sample_request();
    let response = sample_response();
    let mut out: Slot = [0u8; SLOT_SIZE];
    // Two messages (request and response) per pair.
    measure(
        name,
        SLOT_SIZE as u64,
        "ns/msg",
        2 * u64::from(batch),
        budget,
        || {
            for _ in 0..batch {
                req.push(black_box(&request)).expect("room");
            }
            black_box(req.publish());
            for _ in 0..batch {
                assert!(rsp.pop(&mut out).expect("honest"));
                black_box(&out);
                rsp.push(black_box(&response)).expect("owed");
            }
            black_box(rsp.publish());
            for _ in 0..batch {
                assert!(req.pop(&mut out).expect("honest"));
                black_box(&out);
            }
        },
    )
}

/// The same bytes through plain memory: each message copied into a
/// "shared" buffer and out of it again. The three buffers are 64-byte
/// aligned and 1 KiB apart inside one allocation, so that neither the heap
/// layout of a given build nor 4 KiB aliasing between them moves the
/// baseline.
fn memcpy_bench(budget: Budget) -> Measurement {
    let src = sample_request();
    let mut arena = vec![0u8; 4 * 1024 + 64];
    let start = arena.as_ptr().align_offset(64);
    let (head, rest) = arena[start..].split_at_mut(1024);
    let (shared, rest) = rest.split_at_mut(1024);
    head[..SLOT_SIZE].copy_from_slice(&src);
    let src = &head[..SLOT_SIZE];
    let shared = &mut shared[..SLOT_SIZE];
    let dst = &mut rest[..SLOT_SIZE];
    measure(
        "memcpy 256 B in + out",
        SLOT_SIZE as u64,
        "ns/msg",
        1,
        budget,
        || {
            black_box(&mut *shared).copy_from_slice(black_box(src));
            black_box(&mut *dst).copy_from_slice(black_box(&*shared));
            black_box(&*dst);
        },
    )
}

/// Grant references of a buffer: data pages from 1000 upwards, then the
/// leaves, then the root.
struct Dir {
    layout: Layout,
    data: Vec<GrantRef>,
    leaf_base: u32,
}

fn dir(size: u64) -> Dir {
    let layout = Layout::new(size, u64::MAX).expect("size within the format");
    let data: Vec<GrantRef> = (0..layout.nr_pages())
        .map(|i| GrantRef::new(1000 + i).expect("not reserved"))
        .collect();
    Dir {
        layout,
        data,
        leaf_base: 1000 + layout.nr_pages(),
    }
}

fn leaf_refs(d: &Dir) -> Vec<GrantRef> {
    (0..d.layout.nr_leaves())
        .map(|i| GrantRef::new(d.leaf_base + i).expect("not reserved"))
        .collect()
}

/// Writes the directory into `pages` (root first, then the leaves).
fn encode_dir(d: &Dir, leaves: &[GrantRef], pages: &mut [DirPage]) {
    let (root, rest) = pages.split_first_mut().expect("a root page");
    if d.layout.nr_leaves() == 0 {
        encode_root(&d.layout, &d.data, root).expect("counts");
        return;
    }
    for (index, page) in (0u32..).zip(rest.iter_mut()) {
        let range = d.layout.leaf_range(index).expect("index below nr_leaves");
        encode_leaf(&d.layout, index, &d.data[range], page).expect("counts");
    }
    encode_root(&d.layout, leaves, root).expect("counts");
}

fn pgdir_benches(size: u64, label: &str, budget: Budget, out: &mut Vec<Measurement>) {
    let d = dir(size);
    let leaves = leaf_refs(&d);
    let mut pages = vec![[0u8; XEN_PAGE_SIZE]; d.layout.dir_pages() as usize];
    out.push(measure(
        format!("pgdir encode {label}"),
        size,
        "ns/op",
        1,
        budget,
        || encode_dir(&d, black_box(&leaves), black_box(&mut pages)),
    ));
    // The importer's view: every directory page mapped, as atomic words.
    encode_dir(&d, &leaves, &mut pages);
    let words: Vec<AtomicU32> = pages
        .iter()
        .flat_map(|p| p.chunks_exact(4))
        .map(|w| AtomicU32::new(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    let page_words = XEN_PAGE_SIZE / 4;
    let root = &words[..page_words];
    let filler = GrantRef::new(8).expect("not reserved");
    let mut data = vec![filler; pages_for_bytes(size).expect("fits") as usize];
    let mut scratch = vec![filler; d.layout.nr_leaves().max(1) as usize];
    let leaf_base = d.leaf_base;
    out.push(measure(
        format!("pgdir decode {label}"),
        size,
        "ns/op",
        1,
        budget,
        || {
            let layout = decode(
                root,
                size,
                u64::MAX,
                |gref| {
                    let index = gref.get().wrapping_sub(leaf_base) as usize + 1;
                    words
                        .get(index * page_words..(index + 1) * page_words)
                        .ok_or(Error::InvalidGref(gref.get()))
                },
                black_box(&mut data),
                &mut scratch,
            )
            .expect("valid directory");
            black_box(layout);
        },
    ));
    assert_eq!(data, d.data, "decoded references differ");
}

fn main() {
    let mut out_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/host.json");
    let mut quick = false;
    let mut filter = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--filter" => filter = args.next().expect("--filter needs a word"),
            "--out" => out_path = PathBuf::from(args.next().expect("--out needs a path")),
            other => {
                eprintln!(
                    "usage: hostbench [--quick] [--filter WORD] [--out FILE] (unknown: {other})"
                );
                std::process::exit(2);
            }
        }
    }
    let fast = Budget {
        warm_up: Duration::from_millis(if quick { 20 } else { 300 }),
        min_sample: Duration::from_millis(if quick { 1 } else { 5 }),
        samples: if quick { 11 } else { 101 },
    };
    let slow = Budget {
        warm_up: Duration::from_millis(if quick { 20 } else { 300 }),
        min_sample: Duration::from_micros(1),
        samples: if quick { 5 } else { 41 },
    };

    let ring_words = (XEN_PAGE_SIZE << RING_ORDER) / 4;
    let atomic: Vec<AtomicU32> = (0..ring_words).map(|_| AtomicU32::new(0)).collect();
    let fast_mem = WordMem::new(ring_words);
    let mem64 = Word64Mem::new(ring_words * 4);
    let slots = hyper_dmabuf_common::ring::slots_for_len(ring_words * 4);

    let run = |group: &str| filter.is_empty() || filter == group;
    // The memcpy baseline always runs: the ring ratios refer to it.
    let mut results = vec![memcpy_bench(fast)];
    if run("ring") {
        results.push(ring_bench("ring pair, 1 at a time", &atomic[..], 1, fast));
        let name = format!("ring pair, batch of {slots}");
        results.push(ring_bench(&name, &atomic[..], slots, fast));
    }
    if run("wordmem") {
        results.push(ring_bench(
            "ring pair, 1 at a time (WordMem)",
            &fast_mem,
            1,
            fast,
        ));
        let name = format!("ring pair, batch of {slots} (WordMem)");
        results.push(ring_bench(&name, &fast_mem, slots, fast));
        results.push(ring_bench(
            "ring pair, 1 at a time (Word64Mem)",
            &mem64,
            1,
            fast,
        ));
        let name = format!("ring pair, batch of {slots} (Word64Mem)");
        results.push(ring_bench(&name, &mem64, slots, fast));
    }
    if run("pgdir") {
        for (size, label) in [
            (8u64 << 20, "8 MiB"),
            (256 << 20, "256 MiB"),
            (1 << 30, "1 GiB"),
        ] {
            pgdir_benches(size, label, slow, &mut results);
        }
    }

    print_table(&results);
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).expect("create the output directory");
    }
    std::fs::write(&out_path, to_json(&results)).expect("write the results");
    println!("\nwrote {}", out_path.display());
}

fn print_table(results: &[Measurement]) {
    let memcpy = results[0].ns_median;
    println!(
        "{:<38} {:>11} {:>8} {:>12} {:>22} {:>5}  note",
        "benchmark", "size", "metric", "median", "p10 .. p90", "reps"
    );
    for m in results {
        let note = if m.metric == "ns/msg" && m.name.starts_with("ring") {
            format!("{:.2}x memcpy", m.ns_median / memcpy)
        } else if m.name.starts_with("pgdir decode") {
            format!(
                "{:.2} ms, {:.2} ns/gref",
                m.ns_median / 1e6,
                m.ns_median / f64::from(pages_for_bytes(m.size_bytes).unwrap_or(1))
            )
        } else if m.name.starts_with("pgdir encode") {
            format!("{:.2} ms", m.ns_median / 1e6)
        } else {
            String::new()
        };
        println!(
            "{:<38} {:>11} {:>8} {:>12.1} {:>10.1} .. {:>9.1} {:>5}  {}",
            m.name, m.size_bytes, m.metric, m.ns_median, m.ns_p10, m.ns_p90, m.reps, note
        );
    }
}
