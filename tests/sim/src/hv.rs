// SPDX-License-Identifier: MIT
//! The simulated hypervisor: domains, their pages, grant tables, foreign
//! mappings and event channels, with per-domain counters.
//!
//! What it models, and how faithfully:
//!
//! * **Pages** belong to a domain and are reference counted: the owner's
//!   own references ([`Hypervisor::alloc_page`], [`Hypervisor::put_page`]),
//!   one per active grant, one per foreign mapping. A page is freed when the
//!   last reference goes, so a page the peer maps is never freed under it.
//! * **Grant tables**, one per domain: [`Hypervisor::grant_access`] hands
//!   out references from 8 up (0..7 are Xen's reserved entries, and freed
//!   references are reused, lowest first, as Linux's free list does).
//!   [`Hypervisor::end_access`] refuses with [`GrantError::InUse`] while any
//!   mapping of the grant exists (`gnttab_end_foreign_access_ref`);
//!   [`Hypervisor::end_access_deferred`] puts such a grant on the owner's
//!   deferred list, retried when its last mapping goes (what Linux does
//!   since XSA-396; Linux retries on a timer, the simulation at the exact
//!   moment it can succeed). A deferred grant is still a live grant in Xen:
//!   it can still be mapped.
//! * **Foreign mappings**: [`Hypervisor::map`] is one batched
//!   `GNTTABOP_map_grant_ref` with a status per operation; it fails for a
//!   reference not granted to the mapper, a writable map of a read-only
//!   grant, an ended (or never made) grant, a dead or unknown owner.
//! * **Event channels**: unbound ports, interdomain binding, a pending
//!   flag per end; [`Hypervisor::notify`] sets the peer's.
//! * **Domain death** ([`Hypervisor::destroy`]): as Xen does, the dead
//!   domain's own mappings are dropped (which completes the deferred ends
//!   of its peers), its ports closed, its grants that nobody maps removed;
//!   its pages that others map stay alive until they unmap them.
//!
//! [`Hypervisor::check`] verifies the whole bookkeeping after every step of
//! the tests.

use std::collections::{BTreeMap, BTreeSet};

use hyper_dmabuf_common::xen::{DomId, GrantRef};

use crate::mem::{new_page, PageMem, Window};

/// First grant reference handed out (`GNTTAB_NR_RESERVED_ENTRIES`).
pub const FIRST_GREF: u32 = 8;

/// A machine page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(u64);

/// A foreign mapping (the `handle` of `GNTTABOP_map_grant_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapHandle(u64);

/// Per-operation status of a grant map or unmap, as Xen's `GNTST_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapStatus {
    /// `GNTST_bad_domain`: the owner is dead or unknown.
    BadDomain,
    /// `GNTST_bad_gntref`: no such grant (never made, or ended).
    BadGntref,
    /// `GNTST_bad_handle`: no such mapping of the caller.
    BadHandle,
    /// `GNTST_permission_denied`: not granted to the caller, or a writable
    /// map of a read-only grant.
    PermissionDenied,
}

/// Why a grant operation of the owner failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    /// The grant is still mapped by the domain it was granted to.
    InUse,
    /// No such grant in the caller's table.
    NoSuchGrant,
    /// The page does not belong to the caller, or is free.
    NotOwner,
    /// The caller is dead.
    Dead,
}

/// Why an event-channel operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvtchnError {
    /// No such port, or not in the expected state.
    BadPort,
    /// The remote domain is dead or the port is not offered to the caller.
    Denied,
}

/// What one domain holds, as counted by the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Entries in its grant table (including deferred ones).
    pub grants: usize,
    /// Foreign mappings it holds.
    pub maps: usize,
    /// Grants on its deferred end-of-access list.
    pub deferred: usize,
    /// Its pages still allocated (by anyone's reference).
    pub pages: usize,
    /// Its open event-channel ports.
    pub ports: usize,
}

impl Counters {
    /// Whether everything is zero.
    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

struct Page {
    owner: DomId,
    mem: PageMem,
    owner_refs: u32,
    grant_refs: u32,
    map_refs: u32,
}

struct Grant {
    page: PageId,
    to: DomId,
    readonly: bool,
    maps: u32,
}

struct Mapping {
    mapper: DomId,
    owner: DomId,
    gref: GrantRef,
    page: PageId,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PortState {
    Unbound {
        remote: DomId,
    },
    Interdomain {
        remote: DomId,
        remote_port: u32,
    },
    /// The other end closed or died.
    Orphaned,
}

struct Port {
    state: PortState,
    pending: bool,
}

#[derive(Default)]
struct Dom {
    alive: bool,
    grants: BTreeMap<u32, Grant>,
    free_grefs: BTreeSet<u32>,
    next_gref: u32,
    deferred: BTreeSet<u32>,
    ports: BTreeMap<u32, Port>,
    next_port: u32,
}

/// The simulated hypervisor (and the grant layer of each guest kernel).
#[derive(Default)]
pub struct Hypervisor {
    doms: BTreeMap<u16, Dom>,
    next_domid: u16,
    pages: BTreeMap<PageId, Page>,
    next_page: u64,
    maps: BTreeMap<MapHandle, Mapping>,
    next_map: u64,
    /// Grant-map hypercalls made (each a batch).
    pub map_calls: u64,
    /// Fault injection: destroy this domain when the map call with this
    /// number (counted in `map_calls`) is made, before it runs.
    kill_at_map_call: Option<(u64, DomId)>,
}

impl Hypervisor {
    /// A hypervisor with no domain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a domain with the next free id (ids are never reused, as
    /// a rebooted guest gets a new one).
    pub fn create_domain(&mut self) -> DomId {
        let id = self.next_domid;
        self.next_domid += 1;
        self.doms.insert(
            id,
            Dom {
                alive: true,
                next_gref: FIRST_GREF,
                next_port: 1,
                ..Dom::default()
            },
        );
        DomId::new(u32::from(id)).expect("small domain ids are valid")
    }

    /// Whether `dom` exists and is alive.
    pub fn alive(&self, dom: DomId) -> bool {
        self.doms.get(&dom.get()).is_some_and(|d| d.alive)
    }

    fn live(&mut self, dom: DomId) -> Option<&mut Dom> {
        self.doms.get_mut(&dom.get()).filter(|d| d.alive)
    }

    // ---- pages ----

    /// Allocates a zeroed page owned by `dom`, holding one owner reference.
    ///
    /// # Panics
    ///
    /// If `dom` is dead (a dead domain runs no code).
    pub fn alloc_page(&mut self, dom: DomId) -> PageId {
        assert!(self.alive(dom), "dead domain {dom} allocates");
        let id = PageId(self.next_page);
        self.next_page += 1;
        self.pages.insert(
            id,
            Page {
                owner: dom,
                mem: new_page(),
                owner_refs: 1,
                grant_refs: 0,
                map_refs: 0,
            },
        );
        id
    }

    /// Takes another owner reference on a page of `dom`.
    ///
    /// # Errors
    ///
    /// [`GrantError::NotOwner`].
    pub fn get_page(&mut self, dom: DomId, page: PageId) -> Result<(), GrantError> {
        let p = self.pages.get_mut(&page).ok_or(GrantError::NotOwner)?;
        if p.owner != dom || p.owner_refs == 0 {
            return Err(GrantError::NotOwner);
        }
        p.owner_refs += 1;
        Ok(())
    }

    /// Drops an owner reference; the page is freed with its last
    /// reference of any kind.
    ///
    /// # Errors
    ///
    /// [`GrantError::NotOwner`] if `dom` holds no reference on it.
    pub fn put_page(&mut self, dom: DomId, page: PageId) -> Result<(), GrantError> {
        let p = self.pages.get_mut(&page).ok_or(GrantError::NotOwner)?;
        if p.owner != dom || p.owner_refs == 0 {
            return Err(GrantError::NotOwner);
        }
        p.owner_refs -= 1;
        self.maybe_free(page);
        Ok(())
    }

    fn maybe_free(&mut self, page: PageId) {
        if let Some(p) = self.pages.get(&page) {
            if p.owner_refs + p.grant_refs + p.map_refs == 0 {
                self.pages.remove(&page);
            }
        }
    }

    /// The owner's own (writable) view of its page.
    ///
    /// # Panics
    ///
    /// If `dom` does not hold a reference on the page (a bug of the
    /// simulated driver: it touches memory it freed).
    pub fn page_window(&self, dom: DomId, page: PageId) -> Window {
        let p = &self.pages[&page];
        assert!(
            p.owner == dom && p.owner_refs > 0,
            "domain {dom} touches page {page:?} it does not hold"
        );
        Window::new(vec![p.mem.clone()], true)
    }

    /// The owner's view of several of its pages, as one window.
    pub fn pages_window(&self, dom: DomId, pages: &[PageId]) -> Window {
        let mems = pages
            .iter()
            .map(|pg| {
                let p = &self.pages[pg];
                assert!(p.owner == dom && p.owner_refs > 0, "page not held");
                p.mem.clone()
            })
            .collect();
        Window::new(mems, true)
    }

    // ---- grant table ----

    /// Grants `to` access to page `page` of `owner`
    /// (`gnttab_grant_foreign_access`). The grant holds a page reference.
    ///
    /// # Errors
    ///
    /// [`GrantError::NotOwner`], [`GrantError::Dead`].
    pub fn grant_access(
        &mut self,
        owner: DomId,
        page: PageId,
        to: DomId,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        if !self.alive(owner) {
            return Err(GrantError::Dead);
        }
        let p = self.pages.get_mut(&page).ok_or(GrantError::NotOwner)?;
        if p.owner != owner || p.owner_refs == 0 {
            return Err(GrantError::NotOwner);
        }
        p.grant_refs += 1;
        let d = self.live(owner).ok_or(GrantError::Dead)?;
        let raw = match d.free_grefs.pop_first() {
            Some(r) => r,
            None => {
                let r = d.next_gref;
                d.next_gref += 1;
                r
            }
        };
        d.grants.insert(
            raw,
            Grant {
                page,
                to,
                readonly,
                maps: 0,
            },
        );
        Ok(GrantRef::new(raw).expect("references start at 8"))
    }

    /// Ends access to a grant (`gnttab_end_foreign_access_ref`): refused
    /// while it is mapped.
    ///
    /// # Errors
    ///
    /// [`GrantError::InUse`], [`GrantError::NoSuchGrant`],
    /// [`GrantError::Dead`].
    pub fn end_access(&mut self, owner: DomId, gref: GrantRef) -> Result<(), GrantError> {
        let d = self.live(owner).ok_or(GrantError::Dead)?;
        let g = d.grants.get(&gref.get()).ok_or(GrantError::NoSuchGrant)?;
        if g.maps > 0 {
            return Err(GrantError::InUse);
        }
        self.remove_grant(owner, gref.get());
        Ok(())
    }

    /// Ends access now if possible, otherwise puts the grant on the
    /// owner's deferred list (Linux's `gnttab_end_foreign_access` since
    /// XSA-396). Returns whether it ended now.
    ///
    /// # Errors
    ///
    /// [`GrantError::NoSuchGrant`], [`GrantError::Dead`].
    pub fn end_access_deferred(
        &mut self,
        owner: DomId,
        gref: GrantRef,
    ) -> Result<bool, GrantError> {
        match self.end_access(owner, gref) {
            Ok(()) => Ok(true),
            Err(GrantError::InUse) => {
                let d = self.live(owner).ok_or(GrantError::Dead)?;
                d.deferred.insert(gref.get());
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn remove_grant(&mut self, owner: DomId, raw: u32) {
        let d = self.doms.get_mut(&owner.get()).expect("domain exists");
        let g = d.grants.remove(&raw).expect("grant exists");
        d.deferred.remove(&raw);
        if d.alive {
            d.free_grefs.insert(raw);
        }
        let p = self.pages.get_mut(&g.page).expect("granted page exists");
        p.grant_refs -= 1;
        self.maybe_free(g.page);
    }

    // ---- foreign mappings ----

    /// Fault injection: `victim` dies just before the `nth` grant-map
    /// call from now (1 is the next one), e.g. between the directory and
    /// the data pages of an import.
    pub fn kill_at_map_call(&mut self, nth: u64, victim: DomId) {
        self.kill_at_map_call = Some((self.map_calls + nth, victim));
    }

    /// Maps grants of `owner` into `mapper`, in one batched call. Each
    /// operation succeeds or fails on its own, as `GNTTABOP_map_grant_ref`.
    pub fn map(
        &mut self,
        mapper: DomId,
        owner: DomId,
        grefs: &[GrantRef],
        writable: bool,
    ) -> Vec<Result<(MapHandle, Window), MapStatus>> {
        self.map_calls += 1;
        if let Some((call, victim)) = self.kill_at_map_call {
            if call == self.map_calls {
                self.kill_at_map_call = None;
                self.destroy(victim);
            }
        }
        grefs
            .iter()
            .map(|&gref| self.map_one(mapper, owner, gref, writable))
            .collect()
    }

    fn map_one(
        &mut self,
        mapper: DomId,
        owner: DomId,
        gref: GrantRef,
        writable: bool,
    ) -> Result<(MapHandle, Window), MapStatus> {
        if !self.alive(mapper) {
            return Err(MapStatus::BadDomain);
        }
        let d = self.live(owner).ok_or(MapStatus::BadDomain)?;
        let g = d.grants.get_mut(&gref.get()).ok_or(MapStatus::BadGntref)?;
        if g.to != mapper || (writable && g.readonly) {
            return Err(MapStatus::PermissionDenied);
        }
        g.maps += 1;
        let page = g.page;
        let p = self.pages.get_mut(&page).expect("granted page exists");
        p.map_refs += 1;
        let mem = p.mem.clone();
        let handle = MapHandle(self.next_map);
        self.next_map += 1;
        self.maps.insert(
            handle,
            Mapping {
                mapper,
                owner,
                gref,
                page,
            },
        );
        Ok((handle, Window::new(vec![mem], writable)))
    }

    /// Unmaps mappings of `mapper`, in one batched call.
    pub fn unmap(&mut self, mapper: DomId, handles: &[MapHandle]) -> Vec<Result<(), MapStatus>> {
        handles
            .iter()
            .map(|&h| match self.maps.get(&h) {
                Some(m) if m.mapper == mapper => {
                    self.drop_mapping(h);
                    Ok(())
                }
                _ => Err(MapStatus::BadHandle),
            })
            .collect()
    }

    fn drop_mapping(&mut self, handle: MapHandle) {
        let m = self.maps.remove(&handle).expect("mapping exists");
        let p = self.pages.get_mut(&m.page).expect("mapped page exists");
        p.map_refs -= 1;
        let d = self.doms.get_mut(&m.owner.get()).expect("owner exists");
        let raw = m.gref.get();
        let g = d.grants.get_mut(&raw).expect("mapped grant exists");
        g.maps -= 1;
        // A deferred end, or a grant of a dead owner, ends with its last
        // mapping.
        if g.maps == 0 && (d.deferred.contains(&raw) || !d.alive) {
            self.remove_grant(m.owner, raw);
        }
        self.maybe_free(m.page);
    }

    // ---- event channels ----

    /// Allocates an unbound port of `dom` for `remote` to bind.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Denied`] if `dom` is dead.
    pub fn evtchn_alloc_unbound(&mut self, dom: DomId, remote: DomId) -> Result<u32, EvtchnError> {
        let d = self.live(dom).ok_or(EvtchnError::Denied)?;
        let port = d.next_port;
        d.next_port += 1;
        d.ports.insert(
            port,
            Port {
                state: PortState::Unbound { remote },
                pending: false,
            },
        );
        Ok(port)
    }

    /// Binds a new port of `dom` to `remote_port` of `remote`.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::BadPort`] or [`EvtchnError::Denied`].
    pub fn evtchn_bind_interdomain(
        &mut self,
        dom: DomId,
        remote: DomId,
        remote_port: u32,
    ) -> Result<u32, EvtchnError> {
        if !self.alive(dom) {
            return Err(EvtchnError::Denied);
        }
        let r = self.live(remote).ok_or(EvtchnError::Denied)?;
        let rp = r.ports.get_mut(&remote_port).ok_or(EvtchnError::BadPort)?;
        if rp.state != (PortState::Unbound { remote: dom }) {
            return Err(EvtchnError::Denied);
        }
        let d = self.live(dom).ok_or(EvtchnError::Denied)?;
        let port = d.next_port;
        d.next_port += 1;
        d.ports.insert(
            port,
            Port {
                state: PortState::Interdomain {
                    remote,
                    remote_port,
                },
                pending: false,
            },
        );
        let r = self.live(remote).ok_or(EvtchnError::Denied)?;
        if let Some(rp) = r.ports.get_mut(&remote_port) {
            rp.state = PortState::Interdomain {
                remote: dom,
                remote_port: port,
            };
        }
        Ok(port)
    }

    /// Sends an event on `port` of `dom`: sets the other end's pending
    /// flag. Sending on an unbound or orphaned port does nothing, as in Xen.
    pub fn notify(&mut self, dom: DomId, port: u32) {
        let Some(d) = self.live(dom) else { return };
        let Some(p) = d.ports.get(&port) else { return };
        if let PortState::Interdomain {
            remote,
            remote_port,
        } = p.state
        {
            if let Some(r) = self.live(remote) {
                if let Some(rp) = r.ports.get_mut(&remote_port) {
                    rp.pending = true;
                }
            }
        }
    }

    /// Takes (clears and returns) the pending flag of `port` of `dom`.
    pub fn take_pending(&mut self, dom: DomId, port: u32) -> bool {
        self.live(dom)
            .and_then(|d| d.ports.get_mut(&port))
            .is_some_and(|p| std::mem::take(&mut p.pending))
    }

    /// Closes `port` of `dom`; the other end becomes orphaned.
    pub fn evtchn_close(&mut self, dom: DomId, port: u32) {
        let Some(d) = self.doms.get_mut(&dom.get()) else {
            return;
        };
        let Some(p) = d.ports.remove(&port) else {
            return;
        };
        if let PortState::Interdomain {
            remote,
            remote_port,
        } = p.state
        {
            if let Some(rp) = self
                .doms
                .get_mut(&remote.get())
                .and_then(|r| r.ports.get_mut(&remote_port))
            {
                rp.state = PortState::Orphaned;
            }
        }
    }

    // ---- domain death ----

    /// Destroys `dom` as Xen does: drops its foreign mappings (completing
    /// its peers' deferred ends), closes its ports, drops its own page
    /// references and every grant nobody maps. Its pages that other
    /// domains map stay allocated until they unmap them.
    pub fn destroy(&mut self, dom: DomId) {
        let Some(d) = self.doms.get_mut(&dom.get()) else {
            return;
        };
        d.alive = false;
        let ports: Vec<u32> = d.ports.keys().copied().collect();
        for port in ports {
            self.evtchn_close(dom, port);
        }
        let mine: Vec<MapHandle> = self
            .maps
            .iter()
            .filter(|(_, m)| m.mapper == dom)
            .map(|(h, _)| *h)
            .collect();
        for h in mine {
            self.drop_mapping(h);
        }
        let d = self.doms.get_mut(&dom.get()).expect("exists");
        let unmapped: Vec<u32> = d
            .grants
            .iter()
            .filter(|(_, g)| g.maps == 0)
            .map(|(r, _)| *r)
            .collect();
        d.deferred.clear();
        d.free_grefs.clear();
        for raw in unmapped {
            self.remove_grant(dom, raw);
        }
        let owned: Vec<PageId> = self
            .pages
            .iter()
            .filter(|(_, p)| p.owner == dom)
            .map(|(id, _)| *id)
            .collect();
        for id in owned {
            if let Some(p) = self.pages.get_mut(&id) {
                p.owner_refs = 0;
            }
            self.maybe_free(id);
        }
    }

    // ---- accounting ----

    /// What `dom` holds.
    pub fn counters(&self, dom: DomId) -> Counters {
        let Some(d) = self.doms.get(&dom.get()) else {
            return Counters::default();
        };
        Counters {
            grants: d.grants.len(),
            maps: self.maps.values().filter(|m| m.mapper == dom).count(),
            deferred: d.deferred.len(),
            pages: self.pages.values().filter(|p| p.owner == dom).count(),
            ports: d.ports.len(),
        }
    }

    /// The sum over every domain, dead ones included.
    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for &id in self.doms.keys() {
            let c = self.counters(DomId::new(u32::from(id)).expect("valid"));
            t.grants += c.grants;
            t.maps += c.maps;
            t.deferred += c.deferred;
            t.pages += c.pages;
            t.ports += c.ports;
        }
        t
    }

    /// Number of mappings `mapper` holds of grants of `owner`.
    pub fn maps_of(&self, mapper: DomId, owner: DomId) -> usize {
        self.maps
            .values()
            .filter(|m| m.mapper == mapper && m.owner == owner)
            .count()
    }

    /// Whether `owner` has grant `gref` (live or deferred).
    pub fn has_grant(&self, owner: DomId, gref: GrantRef) -> bool {
        self.doms
            .get(&owner.get())
            .is_some_and(|d| d.grants.contains_key(&gref.get()))
    }

    /// Checks the bookkeeping: every count matches what it counts, a dead
    /// domain holds no mapping, port or unmapped grant, every page is
    /// referenced.
    ///
    /// # Panics
    ///
    /// On the first inconsistency.
    pub fn check(&self) {
        let mut grant_refs: BTreeMap<PageId, u32> = BTreeMap::new();
        let mut map_refs: BTreeMap<PageId, u32> = BTreeMap::new();
        let mut grant_maps: BTreeMap<(u16, u32), u32> = BTreeMap::new();
        for m in self.maps.values() {
            *map_refs.entry(m.page).or_default() += 1;
            *grant_maps.entry((m.owner.get(), m.gref.get())).or_default() += 1;
            assert!(self.alive(m.mapper), "dead domain {} still maps", m.mapper);
            let g = &self.doms[&m.owner.get()].grants[&m.gref.get()];
            assert_eq!(g.page, m.page, "mapping of a re-used grant");
        }
        for (&id, d) in &self.doms {
            for (&raw, g) in &d.grants {
                *grant_refs.entry(g.page).or_default() += 1;
                assert_eq!(
                    g.maps,
                    grant_maps.get(&(id, raw)).copied().unwrap_or(0),
                    "map count of grant {raw} of domain {id}"
                );
                assert!(
                    d.alive || g.maps > 0,
                    "dead domain {id} keeps unmapped grant {raw}"
                );
                assert!(
                    !d.free_grefs.contains(&raw),
                    "grant {raw} both used and free"
                );
            }
            for raw in &d.deferred {
                let g = d.grants.get(raw).expect("deferred grant exists");
                assert!(g.maps > 0, "deferred grant {raw} of {id} should have ended");
            }
            assert!(d.alive || d.ports.is_empty(), "dead domain {id} has ports");
        }
        for (id, p) in &self.pages {
            assert_eq!(p.grant_refs, grant_refs.get(id).copied().unwrap_or(0));
            assert_eq!(p.map_refs, map_refs.get(id).copied().unwrap_or(0));
            assert!(
                p.owner_refs + p.grant_refs + p.map_refs > 0,
                "unreferenced page"
            );
            assert!(self.alive(p.owner) || p.owner_refs == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_dmabuf_common::shmem::SharedMem;

    #[test]
    fn grant_map_end_and_defer() {
        let mut hv = Hypervisor::new();
        let a = hv.create_domain();
        let b = hv.create_domain();
        let c = hv.create_domain();
        let page = hv.alloc_page(a);
        let ro = hv.grant_access(a, page, b, true).unwrap();
        assert_eq!(ro.get(), FIRST_GREF);
        hv.page_window(a, page).write_bytes(0, b"hello");
        // Not granted to c; not writable; unknown reference.
        let bogus = GrantRef::new(99).unwrap();
        let r = hv.map(c, a, &[ro], false);
        assert_eq!(r[0].as_ref().err(), Some(&MapStatus::PermissionDenied));
        let r = hv.map(b, a, &[ro, bogus], true);
        assert_eq!(r[0].as_ref().err(), Some(&MapStatus::PermissionDenied));
        assert_eq!(r[1].as_ref().err(), Some(&MapStatus::BadGntref));
        let (h, w) = hv.map(b, a, &[ro], false).pop().unwrap().unwrap();
        let mut got = [0u8; 5];
        w.read_bytes(0, &mut got);
        assert_eq!(&got, b"hello");
        assert_eq!(hv.end_access(a, ro), Err(GrantError::InUse));
        assert_eq!(hv.end_access_deferred(a, ro), Ok(false));
        hv.put_page(a, page).unwrap();
        assert_eq!(hv.counters(a).deferred, 1);
        assert_eq!(hv.counters(a).pages, 1, "mapped page stays");
        hv.check();
        assert_eq!(hv.unmap(b, &[h]), vec![Ok(())]);
        assert!(hv.counters(a).is_zero());
        assert!(hv.counters(b).is_zero());
        // The ended grant cannot be mapped any more.
        let r = hv.map(b, a, &[ro], false);
        assert_eq!(r[0].as_ref().err(), Some(&MapStatus::BadGntref));
        hv.check();
    }

    #[test]
    fn destroy_keeps_pages_others_map() {
        let mut hv = Hypervisor::new();
        let a = hv.create_domain();
        let b = hv.create_domain();
        let pa = hv.alloc_page(a);
        let pb = hv.alloc_page(b);
        let ga = hv.grant_access(a, pa, b, false).unwrap();
        let gb = hv.grant_access(b, pb, a, false).unwrap();
        let (ha, _) = hv.map(b, a, &[ga], true).pop().unwrap().unwrap();
        let _ = hv.map(a, b, &[gb], true).pop().unwrap().unwrap();
        assert_eq!(hv.end_access_deferred(b, gb), Ok(false));
        hv.destroy(a);
        hv.check();
        // a's mapping of b's page is gone: b's deferred end completed.
        assert_eq!(hv.counters(b).deferred, 0);
        assert_eq!(hv.counters(b).grants, 0);
        // a's page stays while b maps it; a new map fails.
        assert_eq!(hv.counters(a).pages, 1);
        let r = hv.map(b, a, &[ga], false);
        assert_eq!(r[0].as_ref().err(), Some(&MapStatus::BadDomain));
        hv.unmap(b, &[ha]);
        hv.put_page(b, pb).unwrap();
        hv.check();
        assert!(hv.totals().is_zero());
    }
}
