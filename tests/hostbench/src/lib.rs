// SPDX-License-Identifier: MIT
//! Host benchmarks of the hyper-dmabuf protocol core: the timing harness
//! and the shared-memory variant the `hostbench` binary measures. Run them
//! with `make bench-host`.

pub mod harness;
pub mod wordmem;
