// SPDX-License-Identifier: MIT
//! What the hyper-dmabuf fuzz targets run.
//!
//! Each fuzz target in `fuzz/fuzz_targets/` is one line that hands the
//! input to a function of this crate. The functions decode the input as a
//! *sequence of operations* (see [`input`]), apply them to the protocol
//! code of `hyper-dmabuf-common` and `hyper-dmabuf-xenbus-proto`, and check
//! oracles after each step; a broken oracle is a panic, which libFuzzer
//! reports as a crash.
//!
//! Keeping the logic here rather than in the targets means it builds and
//! runs on the stable toolchain without instrumentation, so `cargo test`
//! in this crate:
//!
//! * writes the seed corpus (`tests/corpus.rs`, see [`seeds`]), and
//! * replays every input under `fuzz/regressions/<target>/` (crashes
//!   found earlier) through the same functions (`tests/regressions.rs`).
//!
//! Targets, by name (the names of the libFuzzer binaries):
//!
//! * `ring_responder`, `ring_requester` — [`ring`]: the two ends of a
//!   shared ring, one of them facing a hostile peer;
//! * `channel` — [`channel`]: the per-connection protocol logic both
//!   drivers run, against a hostile peer;
//! * `ledger` — [`ledger`]: the per-connection bookkeeping both drivers
//!   run (admission, claims, orphans, schedules), against a hostile peer
//!   and any order of local operations;
//! * `wire` — [`wire`]: the ring message decoders;
//! * `pgdir` — [`pgdir`]: the grant-reference page directory decoder;
//! * `uapi` — [`uapi`]: the ioctl and event record decoders;
//! * `xenstore_values`, `xenstore_schema`, `xenbus_machines` —
//!   [`xenstore`]: the xenstore value parsers, schema readers and XenBus
//!   state machines.

pub mod channel;
pub mod input;
pub mod ledger;
pub mod pgdir;
pub mod ring;
pub mod seeds;
pub mod uapi;
pub mod wire;
pub mod xenbus_oracles;
pub mod xenstore;

/// A fuzz target: its name and the function it runs on each input.
#[derive(Clone, Copy)]
pub struct Target {
    /// Name of the libFuzzer binary and of its corpus directory.
    pub name: &'static str,
    /// Runs one input; panics if an oracle fails.
    pub run: fn(&[u8]),
}

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "ring_responder",
        run: ring::run_responder,
    },
    Target {
        name: "ring_requester",
        run: ring::run_requester,
    },
    Target {
        name: "channel",
        run: channel::run,
    },
    Target {
        name: "ledger",
        run: ledger::run,
    },
    Target {
        name: "wire",
        run: wire::run,
    },
    Target {
        name: "pgdir",
        run: pgdir::run,
    },
    Target {
        name: "uapi",
        run: uapi::run,
    },
    Target {
        name: "xenstore_values",
        run: xenstore::run_values,
    },
    Target {
        name: "xenstore_schema",
        run: xenstore::run_schema,
    },
    Target {
        name: "xenbus_machines",
        run: xenstore::run_machines,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
