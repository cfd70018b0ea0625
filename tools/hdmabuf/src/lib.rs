//! The parts of `hdmabuf` that other tools of the project share: the thin
//! FFI layer, udmabuf-backed dma-bufs and the xenstore client. The hostile
//! peer (`tools/hdmabuf-hostile`) speaks to the same kernel interfaces and
//! the same xenstored, so it uses these rather than copies of them.

pub mod buffer;
pub mod rng;
pub mod sys;
pub mod xsclient;
