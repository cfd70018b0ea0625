// SPDX-License-Identifier: MIT
//! An in-memory xenstore implementing
//! [`hyper_dmabuf_xenbus_proto::Store`], for host tests that drive both
//! ends of a device (and the toolstack) through one store.
//!
//! What it models of xenstored:
//!
//! * nodes with values and permissions; writing a node creates its missing
//!   parents (with empty values and the permissions of their parent);
//!   removing a node removes everything below it;
//! * transactions: reads see the transaction's own writes; the commit
//!   fails with [`Error::Again`] if any node the transaction read or wrote
//!   was changed by someone else since the transaction started (as
//!   xenstored does per node); [`MemStore::fail_next_commits`] injects
//!   conflicts;
//! * watches: [`MemStore::watch`] registers a path prefix and a token;
//!   every committed change to a node at or below it queues a
//!   [`WatchEvent`], taken with [`MemStore::take_events`];
//! * a log of every committed change ([`MemStore::log`]);
//! * optional access checks: [`MemStore::act_as`] makes later accesses
//!   those of a domain, checked against the permissions (dom0 may do
//!   everything).
//!
//! It is not a xenstored: no quotas, no special `@` watches, no
//! `XS_DIRECTORY` ordering guarantees.

use std::collections::{BTreeMap, BTreeSet};

use hyper_dmabuf_xenbus_proto::store::{Perm, PermKind, Store, Txn};
use hyper_dmabuf_xenbus_proto::Error;

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its value.
    pub value: Vec<u8>,
    /// Its permission list (first entry: owner and default access).
    pub perms: Vec<Perm>,
    /// Generation of the last change.
    pub generation: u64,
}

/// A committed change, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node was written with this value.
    Write(String, Vec<u8>),
    /// A node and its children were removed.
    Remove(String),
    /// A node's permissions were set.
    SetPerms(String, Vec<Perm>),
}

/// A watch firing: the changed path and the token of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed.
    pub path: String,
    /// The token given to [`MemStore::watch`].
    pub token: String,
}

/// A pending operation of a transaction: path, new value (`None`:
/// removal), new permissions (`Some`: set the permissions, keep the value).
type PendingOp = (String, Option<Vec<u8>>, Option<Vec<Perm>>);

/// An open transaction.
#[derive(Debug, Default)]
struct Transaction {
    start_generation: u64,
    /// Pending writes (`Some`) and removals (`None`), in order.
    ops: Vec<PendingOp>,
    /// Paths read or written, for the conflict check.
    touched: BTreeSet<String>,
}

/// The in-memory xenstore.
#[derive(Debug, Default)]
pub struct MemStore {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    /// Generation at which each path was last changed or removed.
    changed_at: BTreeMap<String, u64>,
    txns: BTreeMap<u32, Transaction>,
    next_txn: u32,
    watches: Vec<(String, String)>,
    events: Vec<WatchEvent>,
    log: Vec<Change>,
    fail_commits: u32,
    actor: Option<u16>,
}

fn parent(path: &str) -> Option<&str> {
    let i = path.rfind('/')?;
    if i == 0 {
        None
    } else {
        path.get(..i)
    }
}

fn is_at_or_below(path: &str, dir: &str) -> bool {
    path == dir
        || (path.starts_with(dir)
            && (dir.ends_with('/') || path.as_bytes().get(dir.len()) == Some(&b'/')))
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a watch on `path` and everything below it.
    pub fn watch(&mut self, path: &str, token: &str) {
        self.watches.push((path.to_owned(), token.to_owned()));
    }

    /// Removes every watch with `token`.
    pub fn unwatch(&mut self, token: &str) {
        self.watches.retain(|(_, t)| t != token);
    }

    /// Takes the queued watch events, oldest first.
    pub fn take_events(&mut self) -> Vec<WatchEvent> {
        std::mem::take(&mut self.events)
    }

    /// Every committed change so far, oldest first.
    pub fn log(&self) -> &[Change] {
        &self.log
    }

    /// The committed value of `path`.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.nodes.get(path).map(|n| n.value.as_slice())
    }

    /// The committed value of `path` as text (lossy).
    pub fn get_str(&self, path: &str) -> Option<String> {
        self.get(path)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The permissions of `path`.
    pub fn perms(&self, path: &str) -> Option<&[Perm]> {
        self.nodes.get(path).map(|n| n.perms.as_slice())
    }

    /// Every node at or below `dir`, in path order.
    pub fn nodes_below(&self, dir: &str) -> Vec<(String, Vec<u8>)> {
        self.nodes
            .iter()
            .filter(|(p, _)| is_at_or_below(p, dir))
            .map(|(p, n)| (p.clone(), n.value.clone()))
            .collect()
    }

    /// Writes `value` outside any transaction and any access check (for
    /// tests playing a hostile peer or the toolstack).
    pub fn poke(&mut self, path: &str, value: &[u8]) {
        self.apply_write(path, value.to_vec(), None);
    }

    /// Removes `path` outside any transaction and any access check.
    pub fn zap(&mut self, path: &str) {
        self.apply_remove(path);
    }

    /// Makes the next `n` transaction commits fail with [`Error::Again`].
    pub fn fail_next_commits(&mut self, n: u32) {
        self.fail_commits = n;
    }

    /// Checks later accesses as domain `domid` (`None`: no checks).
    pub fn act_as(&mut self, domid: Option<u16>) {
        self.actor = domid;
    }

    /// Number of open transactions (a test checks none is leaked).
    pub fn open_transactions(&self) -> usize {
        self.txns.len()
    }

    fn access(&self, path: &str, write: bool) -> Result<(), Error> {
        let Some(dom) = self.actor else { return Ok(()) };
        if dom == 0 {
            return Ok(());
        }
        // The permissions of the node, or of its nearest existing parent
        // for a node about to be created.
        let mut p = Some(path);
        while let Some(cur) = p {
            if let Some(node) = self.nodes.get(cur) {
                let Some(first) = node.perms.first() else {
                    return Ok(());
                };
                if first.domid == dom {
                    return Ok(());
                }
                let kind = node
                    .perms
                    .iter()
                    .skip(1)
                    .find(|q| q.domid == dom)
                    .map_or(first.kind, |q| q.kind);
                let ok = match kind {
                    PermKind::None => false,
                    PermKind::Read => !write,
                    PermKind::Write => write,
                    PermKind::Both => true,
                };
                return if ok { Ok(()) } else { Err(Error::Denied) };
            }
            p = parent(cur);
        }
        Ok(())
    }

    fn bump(&mut self, path: &str) -> u64 {
        self.generation += 1;
        self.changed_at.insert(path.to_owned(), self.generation);
        for (w, token) in &self.watches {
            if is_at_or_below(path, w) {
                self.events.push(WatchEvent {
                    path: path.to_owned(),
                    token: token.clone(),
                });
            }
        }
        self.generation
    }

    fn apply_write(&mut self, path: &str, value: Vec<u8>, perms: Option<Vec<Perm>>) {
        // Create missing parents with the permissions of their parent.
        let mut missing = Vec::new();
        let mut p = parent(path);
        while let Some(cur) = p {
            if self.nodes.contains_key(cur) {
                break;
            }
            missing.push(cur.to_owned());
            p = parent(cur);
        }
        for dir in missing.into_iter().rev() {
            let inherited = parent(&dir)
                .and_then(|pp| self.nodes.get(pp))
                .map(|n| n.perms.clone())
                .unwrap_or_default();
            let generation = self.bump(&dir);
            self.nodes.insert(
                dir.clone(),
                Node {
                    value: Vec::new(),
                    perms: inherited,
                    generation,
                },
            );
            self.log.push(Change::Write(dir, Vec::new()));
        }
        let inherited = self
            .nodes
            .get(path)
            .map(|n| n.perms.clone())
            .or_else(|| {
                parent(path)
                    .and_then(|pp| self.nodes.get(pp))
                    .map(|n| n.perms.clone())
            })
            .unwrap_or_default();
        let generation = self.bump(path);
        let perms_changed = perms.is_some();
        let node = Node {
            value: value.clone(),
            perms: perms.clone().unwrap_or(inherited),
            generation,
        };
        let old = self.nodes.insert(path.to_owned(), node);
        if perms_changed {
            // set_perms keeps the value.
            if let (Some(old), Some(n)) = (old, self.nodes.get_mut(path)) {
                n.value = old.value;
            }
            self.log
                .push(Change::SetPerms(path.to_owned(), perms.unwrap_or_default()));
        } else {
            self.log.push(Change::Write(path.to_owned(), value));
        }
    }

    fn apply_remove(&mut self, path: &str) {
        let doomed: Vec<String> = self
            .nodes
            .keys()
            .filter(|p| is_at_or_below(p, path))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return;
        }
        for p in &doomed {
            self.nodes.remove(p);
            self.bump(p);
        }
        self.log.push(Change::Remove(path.to_owned()));
    }

    /// The value of `path` as transaction `txn` sees it.
    fn view(&self, txn: Option<&Transaction>, path: &str) -> Option<Vec<u8>> {
        if let Some(t) = txn {
            for (p, v, perms) in t.ops.iter().rev() {
                if perms.is_some() {
                    continue;
                }
                if p == path {
                    return v.clone();
                }
                if v.is_none() && is_at_or_below(path, p) {
                    return None;
                }
            }
        }
        self.nodes.get(path).map(|n| n.value.clone())
    }
}

impl Store for MemStore {
    fn read(&mut self, txn: Txn, path: &str, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        self.access(path, false)?;
        let value = if txn == Txn::NONE {
            self.view(None, path)
        } else {
            let t = self.txns.get_mut(&txn.0).ok_or(Error::Store(22))?;
            t.touched.insert(path.to_owned());
            let t = self.txns.get(&txn.0);
            self.view(t, path)
        };
        match value {
            None => Ok(None),
            Some(v) => {
                let dst = buf.get_mut(..v.len()).ok_or(Error::ValueTooLong)?;
                dst.copy_from_slice(&v);
                Ok(Some(v.len()))
            }
        }
    }

    fn write(&mut self, txn: Txn, path: &str, value: &[u8]) -> Result<(), Error> {
        if !path.starts_with('/') {
            return Err(Error::Store(22));
        }
        self.access(path, true)?;
        if txn == Txn::NONE {
            self.apply_write(path, value.to_vec(), None);
        } else {
            let t = self.txns.get_mut(&txn.0).ok_or(Error::Store(22))?;
            t.touched.insert(path.to_owned());
            t.ops.push((path.to_owned(), Some(value.to_vec()), None));
        }
        Ok(())
    }

    fn remove(&mut self, txn: Txn, path: &str) -> Result<(), Error> {
        self.access(path, true)?;
        if txn == Txn::NONE {
            self.apply_remove(path);
        } else {
            let t = self.txns.get_mut(&txn.0).ok_or(Error::Store(22))?;
            t.touched.insert(path.to_owned());
            t.ops.push((path.to_owned(), None, None));
        }
        Ok(())
    }

    fn transaction_start(&mut self) -> Result<Txn, Error> {
        self.next_txn = self.next_txn.wrapping_add(1).max(1);
        let id = self.next_txn;
        self.txns.insert(
            id,
            Transaction {
                start_generation: self.generation,
                ..Transaction::default()
            },
        );
        Ok(Txn(id))
    }

    fn transaction_end(&mut self, txn: Txn, commit: bool) -> Result<(), Error> {
        let t = self.txns.remove(&txn.0).ok_or(Error::Store(22))?;
        if !commit {
            return Ok(());
        }
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            return Err(Error::Again);
        }
        let conflict = t.touched.iter().any(|p| {
            self.changed_at.iter().any(|(c, &g)| {
                g > t.start_generation && (is_at_or_below(c, p) || is_at_or_below(p, c))
            })
        });
        if conflict {
            return Err(Error::Again);
        }
        for (path, value, perms) in t.ops {
            match (value, perms) {
                (_, Some(perms)) => {
                    let value = self.get(&path).map(<[u8]>::to_vec).unwrap_or_default();
                    self.apply_write(&path, value, Some(perms));
                }
                (Some(v), None) => self.apply_write(&path, v, None),
                (None, None) => self.apply_remove(&path),
            }
        }
        Ok(())
    }

    fn set_perms(&mut self, txn: Txn, path: &str, perms: &[Perm]) -> Result<(), Error> {
        self.access(path, true)?;
        if txn == Txn::NONE {
            let value = self.get(path).map(<[u8]>::to_vec).unwrap_or_default();
            self.apply_write(path, value, Some(perms.to_vec()));
        } else {
            let t = self.txns.get_mut(&txn.0).ok_or(Error::Store(22))?;
            t.touched.insert(path.to_owned());
            t.ops
                .push((path.to_owned(), Some(Vec::new()), Some(perms.to_vec())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove() {
        let mut s = MemStore::new();
        s.write(Txn::NONE, "/a/b/c", b"1").unwrap();
        assert_eq!(s.get("/a/b"), Some(&b""[..]));
        let mut buf = [0u8; 4];
        assert_eq!(s.read(Txn::NONE, "/a/b/c", &mut buf), Ok(Some(1)));
        assert_eq!(s.read(Txn::NONE, "/a/b/d", &mut buf), Ok(None));
        s.write(Txn::NONE, "/a/b/c", b"12345").unwrap();
        assert_eq!(
            s.read(Txn::NONE, "/a/b/c", &mut buf),
            Err(Error::ValueTooLong)
        );
        s.remove(Txn::NONE, "/a/b").unwrap();
        assert_eq!(s.get("/a/b/c"), None);
        assert_eq!(s.get("/a"), Some(&b""[..]));
        // Removing an absent node succeeds.
        s.remove(Txn::NONE, "/nope").unwrap();
    }

    #[test]
    fn transaction_isolation_and_conflict() {
        let mut s = MemStore::new();
        s.write(Txn::NONE, "/d/x", b"0").unwrap();
        let t = s.transaction_start().unwrap();
        s.write(t, "/d/x", b"1").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(s.read(t, "/d/x", &mut buf), Ok(Some(1)));
        assert_eq!(&buf[..1], b"1");
        assert_eq!(s.get("/d/x"), Some(&b"0"[..]));
        // Another writer changes the node: the commit conflicts.
        s.write(Txn::NONE, "/d/x", b"2").unwrap();
        assert_eq!(s.transaction_end(t, true), Err(Error::Again));
        assert_eq!(s.get("/d/x"), Some(&b"2"[..]));
        let t = s.transaction_start().unwrap();
        s.write(t, "/d/x", b"3").unwrap();
        s.remove(t, "/d/y").unwrap();
        assert_eq!(s.transaction_end(t, true), Ok(()));
        assert_eq!(s.get("/d/x"), Some(&b"3"[..]));
        assert_eq!(s.open_transactions(), 0);
    }

    #[test]
    fn injected_conflicts() {
        let mut s = MemStore::new();
        s.fail_next_commits(1);
        let t = s.transaction_start().unwrap();
        s.write(t, "/x", b"1").unwrap();
        assert_eq!(s.transaction_end(t, true), Err(Error::Again));
        assert_eq!(s.get("/x"), None);
    }

    #[test]
    fn watches_and_permissions() {
        let mut s = MemStore::new();
        s.watch("/local/domain/1", "front");
        s.write(Txn::NONE, "/local/domain/1/x", b"1").unwrap();
        s.write(Txn::NONE, "/local/domain/10/x", b"1").unwrap();
        let ev = s.take_events();
        assert!(ev.iter().all(|e| e.token == "front"));
        assert!(ev.iter().any(|e| e.path == "/local/domain/1/x"));
        assert!(!ev.iter().any(|e| e.path.starts_with("/local/domain/10")));

        let perms = [
            Perm {
                domid: 1,
                kind: PermKind::None,
            },
            Perm {
                domid: 0,
                kind: PermKind::Read,
            },
        ];
        s.set_perms(Txn::NONE, "/local/domain/1", &perms).unwrap();
        s.act_as(Some(2));
        let mut buf = [0u8; 4];
        assert_eq!(
            s.read(Txn::NONE, "/local/domain/1", &mut buf),
            Err(Error::Denied)
        );
        s.act_as(Some(1));
        s.write(Txn::NONE, "/local/domain/1/y", b"2").unwrap();
        assert_eq!(s.perms("/local/domain/1/y"), Some(&perms[..]));
    }
}
