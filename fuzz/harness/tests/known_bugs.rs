//! Inputs that still break an oracle because of a known defect of
//! `common/`, reported and not yet fixed. Each test is `#[ignore]`d so
//! that `cargo test` stays green; run them with
//! `cargo test -- --ignored`. When the defect is fixed the test passes:
//! drop its `#[ignore]` and move its input to `fuzz/regressions/<target>/`.

use std::path::PathBuf;

use hdmabuf_fuzz::channel::{self, ChannelOp, Setup, Strictness};

fn known(target: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../regressions/known")
        .join(target)
        .join(name)
}

/// Fills our ring of 8 slots while a revoked import is still mapped, then
/// unmaps it: `Channel::import_unmapped` clears `mapped`, forgets the
/// import and only then tries to send RELEASE, which fails with
/// `RingFull`. The caller cannot retry (the import is gone: `BadId`), so
/// RELEASE is never sent and the exporter waits in `AwaitingRelease`,
/// keeping every grant of the buffer, until the connection closes.
/// `import_mapped` has the same order (state first, send second).
fn import_unmapped_on_full_ring() -> Vec<u8> {
    use ChannelOp::*;
    let setup = Setup {
        our_order: 0,
        their_order: 0,
        max: 0,
        flags: 0b1111,
    };
    let mut ops = vec![
        PeerRequest { hid: 2, tag: 0 }, // the peer exports buffer 2
        PeerPublish,
        Process,
        ImportMapped { hid: 2 },        // 1 outstanding (MAPPED)
        PeerRequest { hid: 2, tag: 2 }, // the peer revokes it: Busy
        PeerPublish,
        Process,
    ];
    // Seven exports of our own fill the 8-slot ring; the peer answers none.
    ops.extend([0u8, 1, 2, 3, 4, 5].map(|hid| Announce { hid, tag: 0 }));
    ops.push(Revoke { hid: 0 });
    ops.push(ImportUnmapped { hid: 2 }); // RingFull, import already forgotten
    channel::encode(&setup, &ops)
}

#[test]
fn known_inputs_are_up_to_date() {
    let path = known("channel", "import-unmapped-ring-full");
    let input = import_unmapped_on_full_ring();
    if std::fs::read(&path).ok().as_deref() != Some(&input[..]) {
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, &input).expect("write known input");
    }
    // The target itself skips this oracle and passes.
    channel::run(&input);
}

#[test]
#[ignore = "known defect in common/src/channel.rs: import_unmapped/import_mapped change state before a send that can fail"]
fn import_unmapped_keeps_state_when_the_ring_is_full() {
    let input = std::fs::read(known("channel", "import-unmapped-ring-full"))
        .unwrap_or_else(|_| import_unmapped_on_full_ring());
    channel::run_with(&input, Strictness::All);
}
