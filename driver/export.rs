// SPDX-License-Identifier: GPL-2.0

//! Exporting: from a local dma-buf to grants, a page directory and an
//! announcement to the peer.
//!
//! The dma-buf stays attached and mapped (so its pages stay put) until
//! every grant of it has ended; a grant the peer still maps is retried,
//! never forced (the rule of XSA-396).

use kernel::alloc::flags::GFP_KERNEL;
use kernel::prelude::*;

use super::common::channel::ExportState;
use super::common::id::{HyperDmabufId, KEY_LEN};
use super::common::pgdir::{self, DirPage, Layout};
use super::common::uapi::{EventType, ExportArgs};
use super::common::wire::{Export, ExportFlags};
use super::common::xen::{DomId, GrantRef, Status};
use crate::conn::{buffer_event, Conn};
use crate::ffi::{self, errno, OwnedPage, PinnedDmabuf, PAGE_SIZE};
use crate::registry::Driver;
use crate::stats;

/// How long an exporter waits for the peer to accept an announcement.
const ANSWER_TIMEOUT_MS: u32 = 5000;

/// An export as its exporter keeps it.
pub(crate) struct ExportEntry {
    /// Protocol state.
    pub(crate) state: ExportState,
    /// What was announced (private data updated by re-exports).
    pub(crate) info: Export,
    /// The open file that exported it.
    pub(crate) owner: u64,
    /// The dma-buf's identity, to recognise it exported again.
    pub(crate) identity: usize,
    /// When a delayed unexport is due (milliseconds since boot).
    pub(crate) unexport_at: Option<u64>,
    /// The grants.
    pub(crate) grants: KBox<ExportGrants>,
}

/// The grants of one exported buffer and the pages behind them.
///
/// Dropping it with grants still live hands them to the grant layer,
/// which ends each once the peer unmaps it (holding the page meanwhile):
/// safe in every case, but only the retries of `try_end` keep the whole
/// dma-buf pinned until then.
pub(crate) struct ExportGrants {
    peer: DomId,
    hid: HyperDmabufId,
    size: u64,
    /// Data grants, in page order; 0 once ended.
    data: KVVec<u32>,
    /// Directory pages and their grants (root last); `None` once handed
    /// to the grant layer.
    dir: KVec<Option<(OwnedPage, u32)>>,
    /// Grants not yet ended.
    live: usize,
    /// The dma-buf, dropped after `data` (declared after it).
    _pin: PinnedDmabuf,
}

impl ExportGrants {
    /// Grants every page of `pin` and the directory describing them to
    /// `peer`. Returns the grants and the root's reference.
    fn new(
        mut pin: PinnedDmabuf,
        peer: DomId,
        hid: HyperDmabufId,
        layout: &Layout,
        writable: bool,
    ) -> Result<(KBox<Self>, GrantRef)> {
        let nr = layout.nr_pages() as usize;
        let mut gfns = KVVec::from_elem(0u64, nr, GFP_KERNEL)?;
        pin.frames(&mut gfns)?;
        let data = KVVec::with_capacity(nr, GFP_KERNEL)?;
        let dir = KVec::with_capacity(layout.dir_pages() as usize, GFP_KERNEL)?;
        let mut grants = KBox::new(
            ExportGrants {
                peer,
                hid,
                size: layout.size(),
                data,
                dir,
                live: 0,
                _pin: pin,
            },
            GFP_KERNEL,
        )?;
        let domid = peer.get();
        for &gfn in gfns.iter() {
            let gref = ffi::grant_access(domid, gfn, !writable)?;
            if grants.data.push(gref, GFP_KERNEL).is_err() {
                ffi::end_access_deferred(gref);
                return Err(ENOMEM);
            }
            grants.add_live(1);
        }
        drop(gfns);
        let root = grants.build_directory(layout)?;
        Ok((grants, root))
    }

    fn add_live(&mut self, n: usize) {
        self.live += n;
        stats::GRANTS.add(n as i64);
    }

    /// Writes and grants the leaves (if any) and the root.
    fn build_directory(&mut self, layout: &Layout) -> Result<GrantRef> {
        let refs = to_grant_refs(&self.data)?;
        let mut page: KBox<DirPage> = KBox::new([0u8; PAGE_SIZE], GFP_KERNEL)?;
        let mut leaves = KVec::with_capacity(layout.nr_leaves() as usize, GFP_KERNEL)?;
        for index in 0..layout.nr_leaves() {
            let range = layout.leaf_range(index).ok_or(EINVAL)?;
            let entries = refs.get(range).ok_or(EINVAL)?;
            pgdir::encode_leaf(layout, index, entries, &mut page).map_err(|_| EINVAL)?;
            leaves.push(self.grant_dir_page(&page)?, GFP_KERNEL)?;
        }
        // One level: the root lists the data pages; two: the leaves.
        let root_entries: &[GrantRef] = if layout.nr_leaves() == 0 {
            &refs
        } else {
            &leaves
        };
        pgdir::encode_root(layout, root_entries, &mut page).map_err(|_| EINVAL)?;
        self.grant_dir_page(&page)
    }

    fn grant_dir_page(&mut self, bytes: &DirPage) -> Result<GrantRef> {
        // The slot first: once granted, the page must not be dropped.
        self.dir.push(None, GFP_KERNEL)?;
        let mut page = OwnedPage::alloc()?;
        page.write(bytes);
        let gref = ffi::grant_access(self.peer.get(), page.gfn(), true)?;
        if let Some(slot) = self.dir.as_mut_slice().last_mut() {
            *slot = Some((page, gref));
        }
        self.add_live(1);
        GrantRef::new(gref).map_err(|_| EINVAL)
    }

    /// Grants not yet ended.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Ends every grant the peer does not map; true once none is left.
    pub(crate) fn try_end(&mut self) -> bool {
        let mut ended = 0;
        for gref in self.data.iter_mut().filter(|g| **g != 0) {
            if ffi::try_end_access(*gref) {
                *gref = 0;
                ended += 1;
            }
        }
        // Directory pages go to the grant layer with their page: it ends
        // and frees each once the peer unmaps it.
        ended += hand_over(&mut self.dir);
        self.live -= ended;
        stats::GRANTS.add(-(ended as i64));
        self.live == 0
    }

    /// Posts `GrantsEnded` for a buffer whose grants have all ended.
    pub(crate) fn announce_ended(&self, driver: &Driver) {
        ffi::log_buffer(format_args!(
            "buffer {} to dom{}: all grants ended",
            self.hid,
            self.peer.get()
        ));
        driver.post(&[buffer_event(
            EventType::GrantsEnded,
            self.peer,
            &self.hid,
            self.size,
        )]);
    }
}

impl Drop for ExportGrants {
    fn drop(&mut self) {
        let mut handed = 0;
        for &gref in self.data.iter().filter(|g| **g != 0) {
            ffi::end_access_deferred(gref);
            handed += 1;
        }
        handed += hand_over(&mut self.dir);
        stats::GRANTS.add(-(handed as i64));
    }
}

/// Hands every directory page with its grant to the grant layer.
fn hand_over(dir: &mut KVec<Option<(OwnedPage, u32)>>) -> usize {
    let mut n = 0;
    for (page, gref) in dir.iter_mut().filter_map(Option::take) {
        page.end_access_and_free(gref);
        n += 1;
    }
    n
}

fn to_grant_refs(refs: &[u32]) -> Result<KVVec<GrantRef>> {
    let mut out = KVVec::with_capacity(refs.len(), GFP_KERNEL)?;
    for &r in refs {
        out.push(GrantRef::new(r).map_err(|_| EINVAL)?, GFP_KERNEL)?;
    }
    Ok(out)
}

/// A fresh, unguessable id.
fn new_id(driver: &Driver) -> Result<HyperDmabufId> {
    let mut key = [0u8; KEY_LEN];
    ffi::random_bytes(&mut key);
    HyperDmabufId::new(driver.next_id(), key).map_err(|_| EINVAL)
}

/// The errno for a peer's refusal of an export.
fn refusal(status: Status) -> Error {
    match status {
        Status::TooLarge => E2BIG,
        Status::PermissionDenied => EPERM,
        Status::NoSpace => ENOSPC,
        Status::NoMemory => ENOMEM,
        _ => EIO,
    }
}

/// `HDMABUF_IOCTL_EXPORT` for the file `owner`.
pub(crate) fn export(driver: &Driver, owner: u64, args: &ExportArgs) -> Result<HyperDmabufId> {
    let conn = driver
        .conn_for_peer(args.remote)
        .ok_or_else(errno::enotconn)?;
    let config = conn.config().ok_or_else(errno::enotconn)?;
    let writable = args.flags.contains(ExportFlags::WRITABLE);
    if writable && !config.allow_rw {
        return Err(EPERM);
    }
    let pin = PinnedDmabuf::pin(args.dmabuf_fd)?;
    let size = pin.size();
    if size == 0 || size % PAGE_SIZE as u64 != 0 {
        return Err(EINVAL);
    }
    if size > config.max_buffer_bytes {
        return Err(E2BIG);
    }
    if let Some(again) = conn.update_existing(driver, pin.identity(), args.priv_data) {
        return again;
    }
    let layout = Layout::new(size, config.max_buffer_bytes).map_err(|_| E2BIG)?;
    let identity = pin.identity();
    let hid = new_id(driver)?;
    let (grants, dir_gref) = ExportGrants::new(pin, conn.peer, hid, &layout, writable)?;
    let info = Export {
        hid,
        size,
        dir_gref,
        flags: args.flags,
        priv_data: args.priv_data,
    };
    let entry = ExportEntry {
        state: ExportState::new(),
        info,
        owner,
        identity,
        unexport_at: None,
        grants,
    };
    let token = driver.next_id();
    conn.announce(driver, entry, token)?;
    match conn.wait(token, ANSWER_TIMEOUT_MS) {
        Ok(Status::Ok) => {
            ffi::log_buffer(format_args!(
                "{}: exported {} ({} bytes, {} pages{}) to dom{}",
                conn.name(),
                hid,
                size,
                layout.nr_pages(),
                if writable { ", read-write" } else { "" },
                conn.peer.get()
            ));
            Ok(hid)
        }
        // The connection went down while we waited: `Conn::detach` failed
        // the request (NoSuchBuffer) as it took the link, under the lock
        // we woke with. That is no refusal by the peer: ENOTCONN, as for
        // an export begun after the loss (docs/driver.md, peer death).
        Ok(Status::NoSuchBuffer) if conn.config().is_none() => Err(errno::enotconn()),
        // The channel already ended a refused export.
        Ok(status) => Err(refusal(status)),
        Err(e) => {
            withdraw(driver, &conn, &hid);
            Err(e)
        }
    }
}

/// The peer did not answer: unexport, so the grants end once it lets go.
fn withdraw(driver: &Driver, conn: &Conn, hid: &HyperDmabufId) {
    let _ = conn.unexport(driver, hid, 0);
}
