// SPDX-License-Identifier: MIT
//! Fences that cross domains (protocol version 3, docs/protocol.md section 15).
//!
//! When a frame is announced (EXPORT or UPDATE) while the exporter's
//! dma-buf still has unsignalled write fences, the message carries a
//! [`super::wire::FenceId`], and the exporter sends SIGNAL with that id once its own
//! fence signals. The importer makes a local fence for each id, adds it to
//! the imported dma-buf's reservation object, and signals it on SIGNAL —
//! or with an error when the peer goes away or the fence outlives the
//! importer's timeout, so no reader waits forever on an untrusted peer.
//!
//! This module keeps what each end knows about the fences of one
//! connection; [`super::ledger::Ledger`] holds one table of each kind and
//! makes the decisions. Each end holds at most [`MAX_FENCES`] fences per
//! connection and direction: the exporter refuses a new fenced frame
//! beyond it (`EAGAIN`), the importer answers [`super::xen::Status::NoSpace`].

use super::id::HyperDmabufId;
use super::wire::FenceResult;

/// Most fences one end holds per connection in each direction: an
/// exporter's fences not yet signalled (and SIGNALs not yet sent), an
/// importer's fences not yet ended. A producer with more frames in flight
/// than this, across all the buffers it shares with one peer, is far ahead
/// of its own GPU.
pub const MAX_FENCES: usize = 128;

/// How long an importer waits for the SIGNAL of a fence before it ends
/// the fence with an error, in milliseconds, unless configured otherwise
/// (the module's `fence_timeout_ms`). It matches the ten seconds after
/// which DRM's own schedulers declare a job hung.
pub const DEFAULT_FENCE_TIMEOUT_MS: u64 = 10_000;

/// The timeouts the module accepts, in milliseconds.
pub const FENCE_TIMEOUT_RANGE_MS: core::ops::RangeInclusive<u64> = 100..=600_000;

/// The timeout a module parameter asks for, clamped to
/// [`FENCE_TIMEOUT_RANGE_MS`].
pub fn fence_timeout_from_param(ms: u64) -> u64 {
    ms.clamp(
        *FENCE_TIMEOUT_RANGE_MS.start(),
        *FENCE_TIMEOUT_RANGE_MS.end(),
    )
}

/// How an importer's local fence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceEnd {
    /// The exporter's fence signalled.
    Signalled,
    /// The exporter's fence failed (its SIGNAL said so).
    Failed,
    /// No SIGNAL came within the timeout.
    TimedOut,
    /// The connection ended before the SIGNAL came.
    PeerGone,
}

impl FenceEnd {
    /// The error the local fence carries (a negative errno), if any:
    /// `EIO`, `ETIMEDOUT` or `EPIPE`.
    pub const fn error(self) -> Option<i32> {
        match self {
            FenceEnd::Signalled => None,
            FenceEnd::Failed => Some(-5),
            FenceEnd::TimedOut => Some(-110),
            FenceEnd::PeerGone => Some(-32),
        }
    }
}

impl From<FenceResult> for FenceEnd {
    fn from(result: FenceResult) -> Self {
        match result {
            FenceResult::Signalled => FenceEnd::Signalled,
            FenceResult::Failed => FenceEnd::Failed,
        }
    }
}

/// A fence the peer attached to a frame of a buffer we import, not yet
/// ended. `F` is the host's local fence.
#[derive(Debug)]
pub struct InFence<F> {
    /// The buffer whose frame it came with: its SIGNAL must name it.
    pub hid: HyperDmabufId,
    /// When it times out (host clock, milliseconds).
    pub deadline: u64,
    /// The local fence.
    pub handle: F,
}

/// Where one of our fences stands with the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// Its frame waits in the UPDATE queue: the peer has not heard of it.
    Queued,
    /// Its frame still waits, and it has ended: if it failed, the frame
    /// goes with it and its SIGNAL follows; if not, without it.
    QueuedEnded(FenceResult),
    /// The peer holds it and waits for its SIGNAL.
    Announced,
    /// It ended and its SIGNAL waits for room on the ring.
    Unsent(FenceResult),
    /// Its frame was replaced by a newer one or its export ended before
    /// the frame went: the peer never hears of it, and it is forgotten
    /// once it ends.
    Dropped,
}

/// One of our fences, attached to a frame of a buffer we export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutFence {
    /// The buffer whose frame it goes with.
    pub hid: HyperDmabufId,
    /// Where it stands.
    pub state: OutState,
}
