// SPDX-License-Identifier: MIT
//! The `xenstore_values`, `xenstore_schema` and `xenbus_machines`
//! targets: thin wrappers around the oracles of [`crate::xenbus_oracles`],
//! which decode their input themselves:
//!
//! * `check_value_parsers` — every xenstore node-value parser on the
//!   input; accepted values must be canonical and in range;
//! * `check_schema_readers` — a store whose nodes come from the input
//!   (records `[node, len, value]`), read by every schema reader;
//! * `check_machines` — a sequence of XenBus events for a frontend and a
//!   backend state machine; every action list must keep the invariants.
//!
//! A broken oracle comes back as `Err(description)` and is turned into a
//! panic here.

use crate::xenbus_oracles as fuzz;

/// The `xenstore_values` target.
pub fn run_values(data: &[u8]) {
    if let Err(what) = fuzz::check_value_parsers(data) {
        panic!("xenstore value parsers: {what}");
    }
}

/// The `xenstore_schema` target.
pub fn run_schema(data: &[u8]) {
    if let Err(what) = fuzz::check_schema_readers(data) {
        panic!("xenstore schema readers: {what}");
    }
}

/// The `xenbus_machines` target.
pub fn run_machines(data: &[u8]) {
    if let Err(what) = fuzz::check_machines(data) {
        panic!("xenbus state machines: {what}");
    }
}
