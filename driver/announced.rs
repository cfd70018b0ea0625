// SPDX-License-Identifier: GPL-2.0

//! Which connection announced a buffer: an index from the first 64 bits
//! of an id's random key (`common::ledger::orphan_key`) to the connection,
//! kept by the ledgers' sinks as buffers are announced and forgotten, so
//! that an import finds its connection with one look-up, however many
//! peers there are.
//!
//! It is a hint. A look-up is checked against that connection's ledger,
//! and one that finds nothing sure falls back to asking every
//! connection: buffers of two connections whose keys begin alike (until
//! all of them are forgotten), or a buffer that found no memory for its
//! node (whose later removal may take another's count with it). Keys
//! are random: only a peer that chooses its own can make them meet, and
//! then only its own buffers' imports are slower.

use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::sync::{new_mutex, Mutex};

use super::common::id::HyperDmabufId;
use super::common::ledger::orphan_key;
use crate::conn::UNDER_LOCK;

/// The buffers announced under one key.
struct Holders {
    /// Their connection, while they were all announced on one.
    conn: Option<u64>,
    /// How many.
    count: u32,
}

/// The index.
#[pin_data]
pub(crate) struct Announced {
    #[pin]
    table: Mutex<RBTree<u64, Holders>>,
}

impl Announced {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Announced {
            table <- new_mutex!(RBTree::new(), "Announced::table"),
        })
    }

    /// Connection `conn` admitted `hid`. Called under the connection's
    /// lock: its node is allocated as [`UNDER_LOCK`] says, and without
    /// one the buffer is just not indexed.
    pub(crate) fn add(&self, hid: &HyperDmabufId, conn: u64) {
        let key = orphan_key(hid);
        let node = RBTreeNodeReservation::new(UNDER_LOCK);
        let mut table = self.table.lock();
        if let Some(holders) = table.get_mut(&key) {
            holders.count = holders.count.saturating_add(1);
            if holders.conn != Some(conn) {
                // Until every one of them is forgotten.
                holders.conn = None;
            }
        } else if let Ok(node) = node {
            let holders = Holders {
                conn: Some(conn),
                count: 1,
            };
            table.insert(node.into_node(key, holders));
        }
    }

    /// A buffer [`Announced::add`] was told of is forgotten.
    pub(crate) fn remove(&self, hid: &HyperDmabufId) {
        let key = orphan_key(hid);
        let mut table = self.table.lock();
        let gone = match table.get_mut(&key) {
            Some(holders) => {
                holders.count = holders.count.saturating_sub(1);
                holders.count == 0
            }
            None => false,
        };
        if gone {
            table.remove(&key);
        }
    }

    /// The connection that announced `hid`, if the index knows one.
    pub(crate) fn conn_of(&self, hid: &HyperDmabufId) -> Option<u64> {
        self.table.lock().get(&orphan_key(hid))?.conn
    }
}
