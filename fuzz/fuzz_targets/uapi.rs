// SPDX-License-Identifier: MIT
//! Fuzz target `uapi`: see `hdmabuf_fuzz::uapi`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hdmabuf_fuzz::uapi::run(data));
