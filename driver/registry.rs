// SPDX-License-Identifier: GPL-2.0

//! The driver-wide state: every connection (one per bound XenBus device,
//! either role) over the context they all work in (`context.rs`: ids,
//! open files, draining grants, log budgets), and the releases of
//! imported buffers that wait for a held page.
//!
//! Locks: see the lock order at the crate root (`hyper_dmabuf_main.rs`);
//! the registry's `conns` and the tables of the context are leaves.

use core::ops::Deref;

use kernel::alloc::flags::{GFP_KERNEL, GFP_NOWAIT};
use kernel::alloc::Flags;
use kernel::prelude::*;
use kernel::rbtree::RBTree;
use kernel::sync::{new_mutex, Arc, Mutex};

use super::common::ledger::RETRY_MS;
use super::common::xen::DomId;
use crate::conn::Conn;
use crate::context::Context;
use crate::ffi;
use crate::mapping::Unmaps;
use crate::xenstore;

/// The driver-wide state.
#[pin_data]
pub(crate) struct Driver {
    /// What every connection works in.
    #[pin]
    ctx: Context,
    #[pin]
    conns: Mutex<RBTree<u64, Arc<Conn>>>,
    /// Released imports whose pages something still holds.
    #[pin]
    pub(crate) unmaps: Unmaps,
}

impl Deref for Driver {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl Driver {
    /// The state of a driver that has nothing yet, in the domain that
    /// xenstore names (dom0 if it names none).
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the driver's state cannot be allocated.
    pub(crate) fn new() -> Result<Arc<Self>> {
        let own = xenstore::own_domid().unwrap_or(DomId::DOM0);
        Arc::pin_init(
            pin_init!(Driver {
                ctx <- Context::new(own),
                conns <- new_mutex!(RBTree::new(), "Driver::conns"),
                unmaps <- Unmaps::new(),
            }),
            GFP_KERNEL,
        )
    }

    /// Registers a connection.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the table's node cannot be allocated.
    pub(crate) fn add_conn(&self, conn: Arc<Conn>) -> Result {
        self.conns
            .lock()
            .try_create_and_insert(conn.id, conn, GFP_KERNEL)?;
        self.peers_changed(true);
        Ok(())
    }

    /// Forgets a connection.
    pub(crate) fn remove_conn(&self, id: u64) {
        let removed = self.conns.lock().remove(&id);
        if removed.is_some() {
            self.peers_changed(false);
        }
        drop(removed);
    }

    /// The connected connection to `peer` (the oldest if several).
    pub(crate) fn conn_for_peer(&self, peer: DomId) -> Option<Arc<Conn>> {
        // A snapshot first: a connection's lock ranks above the registry's.
        let conns = self.all_conns().ok()?;
        conns
            .iter()
            .find(|c| c.peer == peer && c.is_connected())
            .cloned()
    }

    /// The connection registered as `id`, if it still is.
    pub(crate) fn conn(&self, id: u64) -> Option<Arc<Conn>> {
        self.conns.lock().get(&id).cloned()
    }

    /// A snapshot of every connection.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the snapshot cannot be allocated.
    pub(crate) fn all_conns(&self) -> Result<KVec<Arc<Conn>>> {
        self.snapshot(GFP_KERNEL)
    }

    fn snapshot(&self, flags: Flags) -> Result<KVec<Arc<Conn>>> {
        let conns = self.conns.lock();
        let mut out = KVec::new();
        for c in conns.values() {
            out.push(c.clone(), flags)?;
        }
        Ok(out)
    }

    /// The timed jobs: delayed unexports, queued messages, draining
    /// grants, pending unmaps. Returns milliseconds until the next run is
    /// due, 0 for none.
    pub(crate) fn tick(&self) -> u32 {
        let now = ffi::now_ms();
        let mut next: Option<u64> = None;
        let mut due = |at: Option<u64>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        // It times the peers' fences out: its snapshot never waits for
        // memory (a reclaim may wait for one of those fences), and without
        // memory it tries again soon.
        match self.snapshot(GFP_NOWAIT) {
            Ok(conns) => {
                for conn in conns.iter() {
                    due(conn.tick(self, now));
                }
            }
            Err(_) => due(Some(now + RETRY_MS)),
        }
        due(self.unmaps.tick(self, now));
        due(self.tick_drain(now));
        next.map_or(0, |due| {
            u32::try_from(due.saturating_sub(now).max(1)).unwrap_or(u32::MAX)
        })
    }
}
