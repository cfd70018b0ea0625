// SPDX-License-Identifier: MIT
//! Fuzz target `xenstore_values`: see `hdmabuf_fuzz::xenstore`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hdmabuf_fuzz::xenstore::run_values(data));
