// SPDX-License-Identifier: MIT
//! What the simulation's XenBus wiring relies on about watch delivery.
//!
//! Linux fires a watch once when it is registered and once per write,
//! and the driver reads the peer's state when it handles each event; so
//! the same peer state can be handled twice. The simulation coalesces the
//! events of one batch (as xenbus-proto's own simulation does) and, like
//! `xenbus_switch_state`, never rewrites an unchanged state. Without both,
//! the backend used to close the device on the second delivery of the
//! frontend's Initialised; xenbus-proto now ignores it, and this is the
//! regression test.

use hyper_dmabuf_xenbus_proto::{BackendMachine, XenbusState};

/// The backend handles frontend Initialised twice: once from the event of
/// its watch registration (read late, after the frontend wrote
/// Initialised) and once from the write itself, before the frontend saw
/// the backend Connected.
#[test]
fn backend_tolerates_a_repeated_initialised() {
    let mut b = BackendMachine::new();
    let _ = b.start();
    let first = b.on_peer_state(XenbusState::Initialised, true);
    assert_eq!(first.final_switch(), Some(XenbusState::Connected));
    let again = b.on_peer_state(XenbusState::Initialised, true);
    assert!(
        !again.is_protocol_error(),
        "a duplicated watch event closed the device: {again:?}"
    );
    assert_eq!(b.state(), XenbusState::Connected);
}
