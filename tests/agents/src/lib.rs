// SPDX-License-Identifier: MIT
//! What the test agents (`hdmabuf-agent`) share with the hostile tools
//! (`tests/hostile`): Linux's Xen grant and event-channel devices and a
//! seeded generator for reproducible test plans.

pub mod rng;
pub mod xendev;
