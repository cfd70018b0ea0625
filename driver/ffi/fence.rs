// SPDX-License-Identifier: GPL-2.0

//! Fences that cross domains: a local dma-fence for each of the peer's
//! (importer), and the pending write fences of a dma-buf we export,
//! watched until they signal (exporter). `common::fence` and the ledger
//! decide which fence is which and when each ends.

use core::ptr::NonNull;

use kernel::prelude::*;

use super::dmabuf::DmabufHandle;
use crate::bindings;

/// `ECANCELED`: a local fence dropped without an end (never expected:
/// the ledger ends each one), so that no reader waits for it forever.
const ECANCELED: i32 = 125;

/// A local fence standing for one of the peer's, not yet signalled.
///
/// # Invariants
///
/// Owns one reference to an unsignalled fence made by `hdm_fence_new`;
/// it is signalled exactly once, when the value goes ([`PeerFence::end`]
/// or `drop`).
pub(crate) struct PeerFence(NonNull<bindings::dma_fence>);

// SAFETY: a dma-fence may be signalled and released from any context.
unsafe impl Send for PeerFence {}

impl PeerFence {
    /// A new unsignalled fence for one of domain `peer`'s, or `None`
    /// without memory (it never sleeps for it: made under the
    /// connection's lock).
    pub(crate) fn new(peer: u16) -> Option<Self> {
        // SAFETY: no precondition.
        NonNull::new(unsafe { bindings::hdm_fence_new(peer) }).map(PeerFence)
    }

    /// The fence, for a call that takes its own reference if it keeps it.
    pub(super) fn as_ptr(&self) -> *mut bindings::dma_fence {
        self.0.as_ptr()
    }

    /// Another reference, to add to a dma-buf.
    pub(crate) fn reference(&self) -> FenceRef {
        // SAFETY: the fence is live (invariant); this takes a reference.
        unsafe { bindings::hdm_fence_get(self.0.as_ptr()) };
        FenceRef(self.0)
    }

    /// Signals the fence, with `error` (a negative errno) if given.
    pub(crate) fn end(self, error: Option<i32>) {
        let fence = self.0;
        core::mem::forget(self);
        // SAFETY: signals the unsignalled fence once and drops our
        // reference (invariant; `drop` will not run).
        unsafe { bindings::hdm_fence_end(fence.as_ptr(), error.unwrap_or(0)) };
    }
}

impl Drop for PeerFence {
    fn drop(&mut self) {
        // SAFETY: as in `end`: signalled once, our reference dropped.
        unsafe { bindings::hdm_fence_end(self.0.as_ptr(), -ECANCELED) };
    }
}

/// A reference to a fence.
///
/// # Invariants
///
/// Owns one reference to a live fence.
pub(crate) struct FenceRef(NonNull<bindings::dma_fence>);

// SAFETY: a fence reference may be dropped from any context.
unsafe impl Send for FenceRef {}

impl FenceRef {
    /// The fence, for a call that takes its own reference if it keeps it.
    pub(super) fn as_ptr(&self) -> *mut bindings::dma_fence {
        self.0.as_ptr()
    }

    /// Whether it has signalled.
    pub(crate) fn signalled(&self) -> bool {
        // SAFETY: the fence is live (invariant).
        unsafe { bindings::hdm_fence_is_signalled(self.0.as_ptr()) }
    }
}

impl Drop for FenceRef {
    fn drop(&mut self) {
        // SAFETY: drops the reference we own (invariant).
        unsafe { bindings::hdm_fence_put(self.0.as_ptr()) };
    }
}

/// The write fences of a dma-buf we export that had not signalled when we
/// looked, as one fence, to watch.
///
/// # Invariants
///
/// Owns a watch made by `hdm_fence_watch_new` and never armed.
pub(crate) struct FenceWatch(NonNull<bindings::hdm_fence_watch>);

// SAFETY: a watch holds a fence reference and memory, both freed from any
// process context.
unsafe impl Send for FenceWatch {}

impl FenceWatch {
    /// What readers of `buf` must wait for now, if anything. It may wait
    /// for memory: never under a connection's lock.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn pending(buf: &impl DmabufHandle) -> Result<Option<Self>> {
        // SAFETY: the dma-buf is live while `buf` is (`DmabufHandle`).
        let watch = unsafe { bindings::hdm_fence_watch_new(buf.raw_dmabuf()) };
        let watch = kernel::error::from_err_ptr(watch)?;
        Ok(NonNull::new(watch).map(FenceWatch))
    }

    /// Hands the watch to the shim: `hdm_rs_fence_signalled(conn, id, _)`
    /// runs once the fence signals (also if it has already).
    pub(crate) fn arm(self, conn: u64, id: u64) {
        let watch = self.0;
        core::mem::forget(self);
        // SAFETY: an unarmed watch (invariant), armed once; from now on
        // the shim frees it.
        unsafe { bindings::hdm_fence_watch_arm(watch.as_ptr(), conn, id) };
    }
}

impl Drop for FenceWatch {
    fn drop(&mut self) {
        // SAFETY: never armed (invariant): still ours to free.
        unsafe { bindings::hdm_fence_watch_free(self.0.as_ptr()) };
    }
}

/// Lockdep's fence-signalling section (`dma_fence_begin_signalling`),
/// held by the paths that end the peer's fences, from the lock that finds
/// them to the signal: inside it nothing may wait for memory or take a
/// lock that is held while waiting for it (a shrinker may wait for one of
/// these fences), and lockdep checks that.
pub(crate) struct SignallingSection(bool);

impl SignallingSection {
    /// Enters the section.
    pub(crate) fn begin() -> Self {
        // SAFETY: no precondition; paired with `drop`.
        SignallingSection(unsafe { bindings::hdm_fence_begin_signalling() })
    }
}

impl Drop for SignallingSection {
    fn drop(&mut self) {
        // SAFETY: ends the section `begin` entered, with its cookie.
        unsafe { bindings::hdm_fence_end_signalling(self.0) };
    }
}

/// Stops the watches armed for connection `conn` that have not signalled
/// (its session ended: the peer hears of none of them); how many. Those
/// that signalled already still report.
pub(crate) fn cancel_watches(conn: u64) -> u32 {
    // SAFETY: no pointers.
    unsafe { bindings::hdm_fence_watch_cancel(conn) }
}
