// SPDX-License-Identifier: MIT
//! Fuzz target `ledger`: see `hdmabuf_fuzz::ledger`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hdmabuf_fuzz::ledger::run(data));
