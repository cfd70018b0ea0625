// SPDX-License-Identifier: GPL-2.0

//! The driver-wide state: every connection (one per bound XenBus device,
//! either role), every open file of the control device, and the grants of
//! unexported buffers that the peer still maps.
//!
//! Lock order: a connection's lock, then `files`, then a file's queue.
//! `conns` and `draining` are never held while taking another lock.

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNode};
use kernel::sync::{new_mutex, Arc, Mutex};

use super::common::uapi::Event;
use super::common::xen::DomId;
use crate::conn::Conn;
use crate::device::FileCtx;
use crate::export::ExportGrants;
use crate::{entry, ffi, stats};

/// How often grants of unexported buffers are retried while the peer
/// still maps them.
const DRAIN_RETRY_MS: u32 = 1000;

/// The driver-wide state.
#[pin_data]
pub(crate) struct Driver {
    next: AtomicU64,
    #[pin]
    conns: Mutex<RBTree<u64, Arc<Conn>>>,
    #[pin]
    files: Mutex<RBTree<u64, Arc<FileCtx>>>,
    #[pin]
    draining: Mutex<RBTree<u64, KBox<ExportGrants>>>,
}

/// Creates the driver state (module init, before registration).
pub(crate) fn start() -> Result {
    let driver = Arc::pin_init(
        pin_init!(Driver {
            next: AtomicU64::new(1),
            conns <- new_mutex!(RBTree::new()),
            files <- new_mutex!(RBTree::new()),
            draining <- new_mutex!(RBTree::new()),
        }),
        GFP_KERNEL,
    )?;
    entry::install_driver(driver);
    Ok(())
}

/// Frees the driver state (module exit, after unregistration, when no
/// callback can run any more). Grants still draining are handed to the
/// grant layer, which ends them once the peer unmaps.
pub(crate) fn stop() {
    ffi::tick_cancel();
    if let Some(driver) = entry::take_driver() {
        let leftovers = core::mem::replace(&mut *driver.draining.lock(), RBTree::new());
        drop(leftovers);
    }
}

impl Driver {
    /// A fresh number for a connection, file, buffer or request token.
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection.
    pub(crate) fn add_conn(&self, conn: Arc<Conn>) -> Result {
        self.conns
            .lock()
            .try_create_and_insert(conn.id, conn, GFP_KERNEL)?;
        Ok(())
    }

    /// Forgets a connection.
    pub(crate) fn remove_conn(&self, id: u64) {
        let removed = self.conns.lock().remove(&id);
        drop(removed);
    }

    /// The connected connection to `peer` (the oldest if several).
    pub(crate) fn conn_for_peer(&self, peer: DomId) -> Option<Arc<Conn>> {
        let conns = self.conns.lock();
        let found = conns
            .values()
            .find(|c| c.peer == peer && c.is_connected())
            .cloned();
        found
    }

    /// A snapshot of every connection.
    pub(crate) fn all_conns(&self) -> Result<KVec<Arc<Conn>>> {
        let conns = self.conns.lock();
        let mut out = KVec::new();
        for c in conns.values() {
            out.push(c.clone(), GFP_KERNEL)?;
        }
        Ok(out)
    }

    /// Registers an open file.
    pub(crate) fn add_file(&self, file: Arc<FileCtx>) -> Result {
        self.files
            .lock()
            .try_create_and_insert(file.id, file, GFP_KERNEL)?;
        Ok(())
    }

    /// Forgets an open file.
    pub(crate) fn remove_file(&self, id: u64) -> Option<Arc<FileCtx>> {
        self.files.lock().remove(&id)
    }

    /// Queues `events` for every open file and wakes their readers.
    pub(crate) fn post(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let peers = self.conns.lock().iter().count();
        let files = self.files.lock();
        for file in files.values() {
            file.push(events, peers);
        }
    }

    /// Ends the grants of a buffer that is no longer exported; those the
    /// peer still maps are retried until it unmaps them.
    pub(crate) fn retire(&self, mut grants: KBox<ExportGrants>) {
        if grants.try_end() {
            grants.announce_ended(self);
            return;
        }
        let live = grants.live() as i64;
        // Without memory to wait, dropping hands the rest to the grant
        // layer, which ends them once the peer unmaps.
        if let Ok(node) = RBTreeNode::new(self.next_id(), grants, GFP_KERNEL) {
            stats::GRANTS_DRAINING.add(live);
            self.draining.lock().insert(node);
            ffi::tick_schedule(DRAIN_RETRY_MS);
        }
    }

    /// The timed jobs: delayed unexports, queued messages, draining
    /// grants. Returns milliseconds until the next run is due, 0 for none.
    pub(crate) fn tick(&self) -> u32 {
        let now = ffi::now_ms();
        let mut next: Option<u64> = None;
        if let Ok(conns) = self.all_conns() {
            for conn in conns.iter() {
                if let Some(due) = conn.tick(self, now) {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
        }
        let mut done = KVec::new();
        {
            let mut draining = self.draining.lock();
            let mut cursor = draining.cursor_front();
            while let Some(mut c) = cursor {
                let (_, grants) = c.current_mut();
                let before = grants.live();
                let ended = grants.try_end();
                stats::GRANTS_DRAINING.add(grants.live() as i64 - before as i64);
                if ended {
                    let (rest, node) = c.remove_current();
                    let _ = done.push(node, GFP_KERNEL);
                    cursor = rest;
                } else {
                    cursor = c.move_next();
                }
            }
            if draining.iter().next().is_some() {
                let due = now + u64::from(DRAIN_RETRY_MS);
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        for node in done {
            let (_, grants) = node.to_key_value();
            grants.announce_ended(self);
        }
        next.map_or(0, |due| {
            u32::try_from(due.saturating_sub(now).max(1)).unwrap_or(u32::MAX)
        })
    }
}
