// SPDX-License-Identifier: GPL-2.0

//! Counters, shown in `/sys/kernel/debug/hyper_dmabuf/stats`.
//!
//! The `*_live` gauges count resources held right now; a test reads them
//! before and after a run and expects them back at their baseline. The
//! error counters only grow.

use core::sync::atomic::{AtomicI64, Ordering};

use kernel::str::{CStr, CString};

/// One counter.
pub(crate) struct Counter {
    name: &'static str,
    value: AtomicI64,
}

impl Counter {
    const fn new(name: &'static str) -> Self {
        Counter {
            name,
            value: AtomicI64::new(0),
        }
    }

    /// Adds `n` (which may be negative).
    pub(crate) fn add(&self, n: i64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub(crate) fn dec(&self) {
        self.add(-1);
    }

    /// The current value.
    pub(crate) fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Connections with both rings up.
pub(crate) static CONNECTIONS: Counter = Counter::new("connections_live");
/// Buffers this domain exports (until their grants have ended).
pub(crate) static EXPORTS: Counter = Counter::new("exports_live");
/// Buffers peers announced to this domain and not yet forgotten.
pub(crate) static IMPORTS: Counter = Counter::new("imports_live");
/// Peers' buffers this domain has mapped since it was loaded (a re-import
/// of a buffer still mapped does not count).
pub(crate) static BUFFERS_MAPPED: Counter = Counter::new("buffers_mapped");
/// Grant references this domain holds for exported buffers (data and
/// directory pages), including those still draining.
pub(crate) static GRANTS: Counter = Counter::new("grants_live");
/// Of those, grants of unexported buffers waiting for the peer to unmap.
pub(crate) static GRANTS_DRAINING: Counter = Counter::new("grants_draining");
/// Pages of peers' buffers this domain maps.
pub(crate) static PAGES_MAPPED: Counter = Counter::new("pages_mapped");
/// Imported dma-bufs alive (file references anywhere in the system).
pub(crate) static DMABUFS: Counter = Counter::new("dmabufs_live");
/// Local dma-bufs this domain holds pinned for exports: from the export
/// until every grant of it has ended (a peer still mapping a page keeps
/// it pinned, across an unexport, a failed export or a device's removal).
pub(crate) static EXPORTS_PINNED: Counter = Counter::new("dmabufs_pinned");
/// Released imports still mapped because something holds one of their
/// pages (a pipe after `vmsplice`); the exporter is told once let go.
pub(crate) static UNMAPS_PENDING: Counter = Counter::new("unmaps_pending");
/// Pages whose grant mapping could not be undone (never reused).
pub(crate) static PAGES_LEAKED: Counter = Counter::new("pages_leaked");
/// Log lines a peer caused past its budget (`common::logbudget`).
pub(crate) static LOG_SUPPRESSED: Counter = Counter::new("log_lines_suppressed");
/// Requests from peers that were refused as malformed.
pub(crate) static PROTOCOL_ERRORS: Counter = Counter::new("protocol_errors");
/// Rings closed because a peer broke them (overflow, bogus response).
pub(crate) static RING_ERRORS: Counter = Counter::new("ring_errors");
/// Requests we could not send because a ring was full.
pub(crate) static RING_FULL: Counter = Counter::new("ring_full");
/// Events dropped because their peer had used up its share of a
/// reader's queue.
pub(crate) static EVENTS_LOST: Counter = Counter::new("events_lost");
/// Messages handled (both directions).
pub(crate) static MESSAGES: Counter = Counter::new("messages");
/// Local fences standing for peers' fences, not yet signalled.
pub(crate) static FENCES_IN: Counter = Counter::new("fences_in_live");
/// Our fences a peer waits for, not yet signalled.
pub(crate) static FENCES_OUT: Counter = Counter::new("fences_out_live");
/// Peers' fences ended by the timeout, without a SIGNAL.
pub(crate) static FENCES_TIMED_OUT: Counter = Counter::new("fences_timed_out");
/// Peers' fences that could not be added to a live dma-buf (no memory).
pub(crate) static FENCES_UNATTACHED: Counter = Counter::new("fences_unattached");
/// Passes of the event handler over a connection's rings.
pub(crate) static EVENT_PASSES: Counter = Counter::new("event_passes");
/// Of those, passes that found nothing to do: what Xen's event-storm
/// throttle counts as spurious (a peer notifying for nothing, or two
/// notifications that one pass served).
pub(crate) static EVENT_PASSES_IDLE: Counter = Counter::new("event_passes_idle");

static ALL: [&Counter; 23] = [
    &CONNECTIONS,
    &EXPORTS,
    &IMPORTS,
    &GRANTS,
    &GRANTS_DRAINING,
    &PAGES_MAPPED,
    &DMABUFS,
    &EXPORTS_PINNED,
    &UNMAPS_PENDING,
    &PAGES_LEAKED,
    &PROTOCOL_ERRORS,
    &RING_ERRORS,
    &RING_FULL,
    &EVENTS_LOST,
    &LOG_SUPPRESSED,
    &MESSAGES,
    &BUFFERS_MAPPED,
    &FENCES_IN,
    &FENCES_OUT,
    &FENCES_TIMED_OUT,
    &FENCES_UNATTACHED,
    &EVENT_PASSES,
    &EVENT_PASSES_IDLE,
];

/// Hands `out` one `name value` line per counter (the debugfs `stats`
/// file).
pub(crate) fn lines(mut out: impl FnMut(&CStr)) {
    for c in ALL.iter() {
        if let Ok(line) = CString::try_from_fmt(kernel::fmt!("{} {}\n", c.name, c.get())) {
            out(&line);
        }
    }
}
