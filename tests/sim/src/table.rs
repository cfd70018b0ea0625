// SPDX-License-Identifier: MIT
//! The simulated driver's ledger tables: ordered maps that count the
//! records their whole-table walks visit, so that a test can tell an
//! operation found its record by key from one that walked the table
//! (`tests/scale.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper_dmabuf_common::ledger::Table;

/// Records visited by walks, shared by one domain's tables.
#[derive(Debug, Clone, Default)]
pub struct Walks(Arc<AtomicU64>);

impl Walks {
    /// Records visited so far.
    pub fn visited(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Runs `f`, a look of the test's own at the tables, without
    /// counting its walks.
    pub fn unseen<R>(&self, f: impl FnOnce() -> R) -> R {
        let seen = self.visited();
        let out = f();
        self.0.store(seen, Ordering::Relaxed);
        out
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An ordered map whose walks count into [`Walks`].
#[derive(Debug)]
pub struct Counted<V> {
    map: BTreeMap<u64, V>,
    walks: Walks,
}

impl<V> Counted<V> {
    /// An empty table counting into `walks`.
    pub fn new(walks: &Walks) -> Self {
        Counted {
            map: BTreeMap::new(),
            walks: walks.clone(),
        }
    }
}

impl<V> Table for Counted<V> {
    type Value = V;

    fn get(&self, key: u64) -> Option<&V> {
        self.map.get(&key)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.map.get_mut(&key)
    }

    fn try_insert(&mut self, key: u64, value: V) -> Result<(), V> {
        Table::try_insert(&mut self.map, key, value)
    }

    fn remove(&mut self, key: u64) -> Option<V> {
        self.map.remove(&key)
    }

    fn first(&self) -> Option<u64> {
        self.map.keys().next().copied()
    }

    fn find(&self, mut pred: impl FnMut(&V) -> bool) -> Option<u64> {
        let mut visited = 0;
        let found = self.map.iter().find(|(_, v)| {
            visited += 1;
            pred(v)
        });
        self.walks.add(visited);
        found.map(|(k, _)| *k)
    }

    fn for_each<'a>(&'a self, f: impl FnMut(u64, &'a V)) {
        self.walks.add(self.map.len());
        Table::for_each(&self.map, f);
    }

    fn for_each_mut(&mut self, f: impl FnMut(u64, &mut V)) {
        self.walks.add(self.map.len());
        Table::for_each_mut(&mut self.map, f);
    }

    fn retain(&mut self, keep: impl FnMut(&mut V) -> bool, removed: impl FnMut(V)) {
        self.walks.add(self.map.len());
        Table::retain(&mut self.map, keep, removed);
    }
}
