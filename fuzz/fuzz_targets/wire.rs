// SPDX-License-Identifier: MIT
//! Fuzz target `wire`: see `hdmabuf_fuzz::wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hdmabuf_fuzz::wire::run(data));
