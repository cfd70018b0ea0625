// SPDX-License-Identifier: MIT
//! Fuzz target `ring_requester`: see `hdmabuf_fuzz::ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hdmabuf_fuzz::ring::run_requester(data));
