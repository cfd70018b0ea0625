// SPDX-License-Identifier: MIT
//! Fuzz target `channel`: see `hdmabuf_fuzz::channel`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hdmabuf_fuzz::channel::run(data));
