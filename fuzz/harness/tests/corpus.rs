// SPDX-License-Identifier: MIT
//! Writes the seed corpus and checks it.
//!
//! `cargo test` here writes every seed of [`hdmabuf_fuzz::seeds::all`] to
//! `fuzz/corpus/<target>/seed-<name>` (or under `$HDMABUF_FUZZ_CORPUS`),
//! where `cargo fuzz run <target>` picks it up, and runs each through its
//! target so that a seed that breaks an oracle fails here, not in the
//! fuzzer.

use std::path::PathBuf;

use hdmabuf_fuzz::input::{decode_all, Reader};
use hdmabuf_fuzz::{channel, ledger, pgdir, ring, seeds, target, uapi, wire, TARGETS};

fn corpus_root() -> PathBuf {
    match std::env::var_os("HDMABUF_FUZZ_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus"),
    }
}

#[test]
fn write_seed_corpus() {
    let root = corpus_root();
    let seeds = seeds::all();
    for t in TARGETS {
        assert!(
            seeds.iter().any(|s| s.target == t.name),
            "target {} has no seed",
            t.name
        );
    }
    for s in &seeds {
        let t = target(s.target).expect("seed for a known target");
        (t.run)(&s.bytes);
        let dir = root.join(s.target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        std::fs::write(dir.join(format!("seed-{}", s.name)), &s.bytes).expect("write seed");
    }
}

#[test]
fn operations_round_trip() {
    for s in seeds::all() {
        match s.target {
            "ring_responder" | "ring_requester" => {
                let (setup, ops) = ring::decode(&s.bytes);
                assert_eq!(ring::encode(&setup, &ops), s.bytes, "{}", s.name);
            }
            "channel" => {
                let mut r = Reader::new(&s.bytes);
                let setup = channel::Setup::decode(&mut r);
                let ops = decode_all(&mut r, channel::ChannelOp::decode);
                assert_eq!(channel::encode(&setup, &ops), s.bytes, "{}", s.name);
            }
            "ledger" => {
                let mut r = Reader::new(&s.bytes);
                let limit = r.u8();
                let ops = decode_all(&mut r, ledger::LedgerOp::decode);
                assert_eq!(ledger::encode(limit, &ops), s.bytes, "{}", s.name);
            }
            "wire" => {
                let ops = decode_all(&mut Reader::new(&s.bytes), wire::WireOp::decode);
                assert_eq!(wire::encode(&ops), s.bytes, "{}", s.name);
            }
            "pgdir" => {
                let ops = decode_all(&mut Reader::new(&s.bytes), pgdir::PgdirOp::decode);
                assert_eq!(pgdir::encode(&ops), s.bytes, "{}", s.name);
            }
            "uapi" => {
                let ops = decode_all(&mut Reader::new(&s.bytes), uapi::UapiOp::decode);
                assert_eq!(uapi::encode(&ops), s.bytes, "{}", s.name);
            }
            _ => {}
        }
    }
}

/// Arbitrary short inputs never panic a target: a cheap stand-in for the
/// fuzzer that runs in every `cargo test`.
#[test]
fn pseudo_random_inputs() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for t in TARGETS {
        for _ in 0..300 {
            let len = (next() % 512) as usize;
            let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            (t.run)(&input);
        }
    }
}
