// SPDX-License-Identifier: MIT
//! Fuzz target `pgdir`: see `hdmabuf_fuzz::pgdir`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hdmabuf_fuzz::pgdir::run(data));
