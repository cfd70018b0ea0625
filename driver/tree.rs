// SPDX-License-Identifier: GPL-2.0

//! The ledger's tables (`common::ledger::Table`) as the kernel's
//! red-black trees: a node is allocated before anything changes, so a
//! failed allocation gives the record back untouched. The tables live
//! under a connection's lock: nodes are allocated as `conn::UNDER_LOCK`
//! says, never by waiting for reclaim.

use kernel::rbtree::{RBTree, RBTreeNodeReservation};

use super::common::ledger::Table;

/// A red-black tree of records keyed by buffer number.
pub(crate) struct Tree<V>(RBTree<u64, V>);

impl<V> Tree<V> {
    pub(crate) fn new() -> Self {
        Tree(RBTree::new())
    }
}

impl<V> Default for Tree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Table for Tree<V> {
    type Value = V;

    fn get(&self, key: u64) -> Option<&V> {
        self.0.get(&key)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.0.get_mut(&key)
    }

    fn try_insert(&mut self, key: u64, value: V) -> Result<(), V> {
        if self.0.get(&key).is_some() {
            return Err(value);
        }
        match RBTreeNodeReservation::new(crate::conn::UNDER_LOCK) {
            Ok(node) => {
                self.0.insert(node.into_node(key, value));
                Ok(())
            }
            Err(_) => Err(value),
        }
    }

    fn remove(&mut self, key: u64) -> Option<V> {
        self.0.remove(&key)
    }

    fn first(&self) -> Option<u64> {
        self.0.keys().next().copied()
    }

    fn find(&self, mut pred: impl FnMut(&V) -> bool) -> Option<u64> {
        self.0.iter().find(|(_, v)| pred(v)).map(|(k, _)| *k)
    }

    fn for_each<'a>(&'a self, mut f: impl FnMut(u64, &'a V)) {
        self.0.iter().for_each(|(k, v)| f(*k, v));
    }

    fn for_each_mut(&mut self, mut f: impl FnMut(u64, &mut V)) {
        self.0.iter_mut().for_each(|(k, v)| f(*k, v));
    }

    fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool, mut removed: impl FnMut(V)) {
        let mut cursor = self.0.cursor_front();
        while let Some(mut c) = cursor {
            if keep(c.current_mut().1) {
                cursor = c.move_next();
            } else {
                let (next, node) = c.remove_current();
                removed(node.to_key_value().1);
                cursor = next;
            }
        }
    }
}
