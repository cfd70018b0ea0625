// SPDX-License-Identifier: GPL-2.0

//! What every connection works in, below the registry of connections:
//! fresh numbers, this domain's id, the open files and the events they
//! read, the grants that drain after their export ended, which
//! connection announced each buffer, and each peer's budget of log
//! lines. A connection reaches only this, never the
//! registry that holds it.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use kernel::prelude::*;

use super::common::xen::DomId;
use crate::announced::Announced;
use crate::files::{Addressed, Files};
use crate::grants::{Drain, ExportGrants};
use crate::peerlog::{Level, PeerLogs};

/// The driver-wide context of every connection.
#[pin_data]
pub(crate) struct Context {
    next: AtomicU64,
    own: DomId,
    /// Connections registered: how many peers share an event queue.
    peers: AtomicUsize,
    /// Every open file of the control device.
    #[pin]
    pub(crate) files: Files,
    /// Grants of ended exports the peer still maps.
    #[pin]
    drain: Drain,
    /// Which connection announced each buffer.
    #[pin]
    pub(crate) announced: Announced,
    /// Each peer's budget of log lines.
    #[pin]
    logs: PeerLogs,
}

impl Context {
    /// The context of a driver running in domain `own`.
    pub(crate) fn new(own: DomId) -> impl PinInit<Self> {
        pin_init!(Context {
            next: AtomicU64::new(1),
            own,
            peers: AtomicUsize::new(0),
            files <- Files::new(),
            drain <- Drain::new(),
            announced <- Announced::new(),
            logs <- PeerLogs::new(),
        })
    }

    /// A fresh number for a connection, file, buffer or request token.
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// This domain's id.
    pub(crate) fn own_domid(&self) -> DomId {
        self.own
    }

    /// One connection more (`true`) or less.
    pub(crate) fn peers_changed(&self, added: bool) {
        if added {
            self.peers.fetch_add(1, Ordering::Relaxed);
        } else {
            self.peers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Logs a line that peer `peer` caused, within that peer's budget.
    pub(crate) fn peer_log(&self, peer: DomId, level: Level, args: core::fmt::Arguments<'_>) {
        self.logs.line(peer, level, args);
    }

    /// Logs a line no peer caused (a local process, or the driver's own
    /// fault), within the driver's own budget.
    pub(crate) fn local_log(&self, level: Level, args: core::fmt::Arguments<'_>) {
        self.logs.local_line(level, args);
    }

    /// Queues `events` for the open files that may read them and wakes
    /// their readers.
    pub(crate) fn post(&self, events: &[Addressed]) {
        self.files.post(events, self.peers.load(Ordering::Relaxed));
    }

    /// Ends the grants of a buffer that is no longer exported (or whose
    /// export failed), or keeps them draining ([`Drain::retire`]).
    pub(crate) fn retire(&self, grants: KBox<ExportGrants>) {
        if let Some(ended) = self.retire_quietly(grants) {
            self.post(&[ended]);
        }
    }

    /// As [`Context::retire`], returning the `GrantsEnded` event to post
    /// (if every grant ended) for the caller to post in its turn.
    pub(crate) fn retire_quietly(&self, grants: KBox<ExportGrants>) -> Option<Addressed> {
        self.drain.retire(grants)
    }

    /// Hands whatever still drains to the grant layer (module exit).
    pub(crate) fn abandon_drain(&self) {
        self.drain.abandon();
    }

    /// Retries the draining grants ([`Drain::tick`]) and posts what ended.
    /// Returns when it wants to look again, if ever.
    pub(crate) fn tick_drain(&self, now: u64) -> Option<u64> {
        let mut ended = KVec::new();
        let next = self.drain.tick(now, &mut ended);
        self.post(&ended);
        next
    }
}
