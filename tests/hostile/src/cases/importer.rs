// SPDX-License-Identifier: MIT
//! The victim exports to us, and we misbehave as the importer.
//!
//! Grant references are numbers in the victim's grant table, so we can
//! map a grant we were never told of, before the announcement, or keep
//! mapping one after an unexport, a refused or unanswered export, the
//! loss of the connection, or the unbinding of the victim's device; and we
//! can lie in MAPPED, RELEASE and the answers to UNEXPORT. Xen cannot take
//! a mapping away, so whatever we do the victim's driver must keep each
//! buffer pinned, and its grants draining, until we unmap, and only then
//! end them (`GrantsEnded`). We check that the bytes we read through our
//! mappings stay the exporter's pattern all along (a page let go too
//! early would be reused: the referee dirties fresh memory after dropping
//! its own references); the referee checks the gauges and events
//! (`referee/importer.rs`).

use std::collections::btree_map::{BTreeMap, Entry};

use hdmabuf_agent::xendev::{Gntdev, GrantRange, PAGE};
use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_client::Mapping;
use hyper_dmabuf_common::pgdir::ROOT_MAGIC;
use hyper_dmabuf_common::wire::{
    Export, MapEpoch, Message, PageRefs, Request, Response, Slot, VERSION_3,
};
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_xenbus_proto::schema;
use hyper_dmabuf_xenbus_proto::XenbusState;

use super::{expect_status, Ctx, Expect, REFEREE_ANSWER, ROOT_ENTRY0, ROOT_NR_ENTRIES};
use crate::limits::scaled;
use crate::peer::Conn;

/// Pages of each buffer the victim exports to us.
const PAGES: usize = 4;

/// How far around the references we have seen we look for new ones.
const WINDOW: u32 = 32;

/// Grants of the victim mapped here, read-only, through gntdev.
struct Foreign<'d> {
    gntdev: &'d Gntdev,
    range: Option<GrantRange>,
    map: Option<Mapping>,
}

impl<'d> Foreign<'d> {
    /// Maps `refs` of domain `domid`, in order.
    fn map(gntdev: &'d Gntdev, domid: u16, refs: &[u32]) -> std::io::Result<Self> {
        let range = gntdev.prepare(domid, refs)?;
        match gntdev.map(&range, false) {
            Ok(map) => Ok(Foreign {
                gntdev,
                range: Some(range),
                map: Some(map),
            }),
            Err(e) => {
                drop(gntdev.unprepare(range));
                Err(e)
            }
        }
    }

    /// A copy of page `i`.
    fn page(&self, i: usize) -> Vec<u8> {
        self.map.as_ref().map_or(Vec::new(), |m| {
            if (i + 1) * PAGE > m.len() {
                return Vec::new();
            }
            let mut page = vec![0u8; PAGE];
            m.read_at(i * PAGE, &mut page);
            page
        })
    }
}

impl Drop for Foreign<'_> {
    fn drop(&mut self) {
        // The mapping goes before its range is given back.
        drop(self.map.take());
        if let Some(range) = self.range.take() {
            drop(self.gntdev.unprepare(range));
        }
    }
}

fn word(page: &[u8], at: usize) -> u32 {
    page.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The data references a one-level root page lists.
fn data_refs(root: &[u8]) -> Result<Vec<u32>, String> {
    if word(root, 0) != ROOT_MAGIC {
        return Err(format!(
            "the root page has magic {:#x}, not hdmR",
            word(root, 0)
        ));
    }
    let n = word(root, ROOT_NR_ENTRIES) as usize;
    if n != PAGES {
        return Err(format!("the root lists {n} entries, expected {PAGES}"));
    }
    Ok((0..n).map(|i| word(root, ROOT_ENTRY0 + 4 * i)).collect())
}

/// Checks that `pages` hold the pattern of `seed`, page `i` at offset
/// `i * PAGE` of the buffer: no page of the exporter was let go and reused.
fn check_pattern(what: &str, seed: u64, pages: &[Vec<u8>]) -> Result<(), String> {
    let mut expected = vec![0u8; pages.len() * PAGE];
    pattern::fill(seed, &mut expected);
    for (i, page) in pages.iter().enumerate() {
        if page.as_slice() != &expected[i * PAGE..(i + 1) * PAGE] {
            let at = page
                .iter()
                .zip(&expected[i * PAGE..])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "{what}: page {i} differs from the exporter's pattern at byte {at} \
                 ({:#04x}): the page was let go while we map it",
                page.get(at).copied().unwrap_or(0)
            ));
        }
    }
    Ok(())
}

/// Takes the victim's next request, which must be an EXPORT.
fn next_export(conn: &mut Conn<'_>) -> Result<(Slot, Export), String> {
    let slot = conn.next_request()?;
    match Request::decode(&slot, u64::MAX, VERSION_3).map(|r| r.message) {
        Ok(Message::Export(export)) => Ok((slot, export)),
        other => Err(format!("expected an EXPORT from the victim, got {other:?}")),
    }
}

/// Takes the victim's next request, which must be the UNEXPORT of `export`.
fn next_unexport(conn: &mut Conn<'_>, export: &Export) -> Result<Slot, String> {
    let slot = conn.next_request()?;
    match Request::decode(&slot, u64::MAX, VERSION_3).map(|r| r.message) {
        Ok(Message::Unexport(hid)) if hid.matches(&export.hid) => Ok(slot),
        other => Err(format!(
            "expected the UNEXPORT of {}, got {other:?}",
            export.hid
        )),
    }
}

/// Our answer to `request`.
fn answer(request: &Slot, status: Status, map_epoch: Option<MapEpoch>) -> Slot {
    let req = Request::decode(request, u64::MAX, VERSION_3);
    Response {
        req_id: u32::from_le_bytes([request[0], request[1], request[2], request[3]]),
        op: req.map_or(request[4], |r| r.message.op() as u8),
        status,
        map_epoch,
    }
    .encode()
}

/// An announced buffer, mapped as an importer would: its root if it has
/// a directory, then its data pages.
struct Announced<'d> {
    root: Option<Foreign<'d>>,
    data: Foreign<'d>,
    /// The data pages' references.
    refs: Vec<u32>,
    seed: u64,
}

impl<'d> Announced<'d> {
    fn map(gntdev: &'d Gntdev, domid: u16, export: &Export, seed: u64) -> Result<Self, String> {
        let (root, refs) = match export.pages {
            PageRefs::Directory(root) => {
                let root = Foreign::map(gntdev, domid, &[root.get()])
                    .map_err(|e| format!("mapping the root of {}: {e}", export.hid))?;
                let refs = data_refs(&root.page(0))?;
                (Some(root), refs)
            }
            // Version 2: the references came in the EXPORT.
            PageRefs::Inline(refs) => (None, refs.as_slice().iter().map(|r| r.get()).collect()),
        };
        let data = Foreign::map(gntdev, domid, &refs)
            .map_err(|e| format!("mapping the data of {}: {e}", export.hid))?;
        let a = Announced {
            root,
            data,
            refs,
            seed,
        };
        a.check("as mapped")?;
        Ok(a)
    }

    /// The root is still a root and the data still the pattern.
    fn check(&self, when: &str) -> Result<(), String> {
        if let Some(root) = &self.root {
            data_refs(&root.page(0)).map_err(|e| format!("{when}: {e}"))?;
        }
        let pages: Vec<Vec<u8>> = (0..PAGES).map(|i| self.data.page(i)).collect();
        check_pattern(when, self.seed, &pages)
    }
}

/// Sends `message`; the victim must answer `want`.
fn says(
    ctx: &mut Ctx<'_>,
    conn: &mut Conn<'_>,
    what: &str,
    message: Message,
    want: Status,
) -> Result<(), String> {
    let slot = ctx.request(message);
    expect_status(what, conn.ask(&slot)?, want)
}

/// (a) + (b): we learn where the victim's grants are from one buffer
/// announced to us, then map the next buffer's grants by trying the
/// references around them, before we read its announcement; we accept
/// it, say we map nothing when it is unexported, and keep our mappings.
pub(super) fn early_map(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let gntdev = Gntdev::open().map_err(|e| format!("gntdev: {e}"))?;
    let be = ctx.dev.backend_id;
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    ctx.referee(&format!("export probe {PAGES} 11"), None)?;
    let (request, probe) = next_export(&mut conn)?;
    let mut seen = {
        let mapped = Announced::map(&gntdev, be, &probe, 11)?;
        let mut refs = mapped.refs.clone();
        refs.extend(probe.pages.root().map(|r| r.get()));
        refs
    };
    conn.reply(&answer(&request, Status::Ok, None))?;
    ctx.referee("exported probe 0", None)?;
    ctx.referee("unexport probe", None)?;
    let request = next_unexport(&mut conn, &probe)?;
    conn.reply(&answer(&request, Status::Ok, None))?;
    ctx.referee("ended probe", None)?;
    ctx.referee("gauges 0 0", None)?;

    // The next buffer: its grants are made before its announcement is
    // sent, from the references the victim just freed.
    seen.sort_unstable();
    let low = seen[0].saturating_sub(WINDOW).max(8);
    let high = seen[seen.len() - 1] + WINDOW;
    ctx.referee(&format!("export early {PAGES} 12"), None)?;
    let mut mapped: BTreeMap<u32, Foreign<'_>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + scaled(REFEREE_ANSWER);
    let mut last_pass = false;
    loop {
        for r in low..=high {
            if let Entry::Vacant(slot) = mapped.entry(r) {
                if let Ok(f) = Foreign::map(&gntdev, be, &[r]) {
                    slot.insert(f);
                }
            }
        }
        if last_pass {
            break;
        }
        // Once the announcement is on the ring every grant of it exists:
        // one more pass, and only then is it read.
        last_pass = conn.request_waiting()?;
        if std::time::Instant::now() >= deadline {
            return Err("the victim announced nothing".into());
        }
    }
    let (request, early) = next_export(&mut conn)?;
    let root = match early.pages {
        PageRefs::Directory(root) => Some(mapped.get(&root.get()).ok_or_else(|| {
            format!(
                "the root {root} of the new buffer was not among the {} grants mapped before \
                 its announcement ({low}..={high}: {:?})",
                mapped.len(),
                mapped.keys().collect::<Vec<_>>()
            )
        })?),
        PageRefs::Inline(_) => None,
    };
    let refs = match (root, early.pages) {
        (Some(root), _) => data_refs(&root.page(0))?,
        (None, pages) => pages.named().iter().map(|r| r.get()).collect(),
    };
    let data: Vec<&Foreign<'_>> = refs
        .iter()
        .map(|r| {
            mapped.get(r).ok_or_else(|| {
                format!("data grant {r} was not among those mapped before the announcement")
            })
        })
        .collect::<Result<_, _>>()?;
    println!(
        "importer-early-map: {} grants of domain {be} mapped before reading its announcement; \
         the new buffer's root {:?} and data {refs:?} among them",
        mapped.len(),
        early.pages.root().map(|r| r.get())
    );
    let read = |data: &[&Foreign<'_>]| -> Vec<Vec<u8>> { data.iter().map(|f| f.page(0)).collect() };
    check_pattern("mapped before the announcement", 12, &read(&data))?;
    conn.reply(&answer(&request, Status::Ok, None))?;
    ctx.referee("exported early 0", None)?;
    // Unexported: we say we map nothing, and keep every mapping.
    ctx.referee("unexport early", None)?;
    let request = next_unexport(&mut conn, &early)?;
    conn.reply(&answer(&request, Status::Ok, None))?;
    ctx.referee(&format!("gauges 1 {PAGES}"), None)?;
    ctx.referee(&format!("hold early 1 {PAGES}"), None)?;
    ctx.referee("drop early", None)?;
    check_pattern("after the unexport and the drop", 12, &read(&data))?;
    if let Some(root) = root {
        data_refs(&root.page(0)).map_err(|e| format!("after the drop: {e}"))?;
    }
    drop(data);
    drop(mapped);
    ctx.referee("ended early", None)?;
    ctx.referee("gauges 0 0", None)?;
    Ok(Expect::QUIET)
}

/// Has the victim export a buffer `name` of the pattern of `seed` to us,
/// takes its EXPORT and maps the buffer: the request (unanswered), the
/// announcement, the mapping.
fn export_and_map<'d>(
    ctx: &mut Ctx<'_>,
    conn: &mut Conn<'_>,
    gntdev: &'d Gntdev,
    name: &str,
    seed: u64,
) -> Result<(Slot, Export, Announced<'d>), String> {
    ctx.referee(&format!("export {name} {PAGES} {seed}"), None)?;
    let (request, export) = next_export(conn)?;
    let mapped = Announced::map(gntdev, ctx.dev.backend_id, &export, seed)?;
    Ok((request, export, mapped))
}

/// (c): we map an announced buffer, then refuse it: the export fails
/// (`ENOSPC`) while we map every page.
pub(super) fn refuse_export(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let gntdev = Gntdev::open().map_err(|e| format!("gntdev: {e}"))?;
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let (request, export, mapped) = export_and_map(ctx, &mut conn, &gntdev, "refused", 13)?;
    conn.reply(&answer(&request, Status::NoSpace, None))?;
    ctx.referee(&format!("exported refused ENOSPC {}", export.hid), None)?;
    hold_then_unmap(ctx, "refused", mapped)
}

/// After an export that ended while we map `mapped`: the victim keeps the
/// buffer pinned and its data grants draining while we map them, through
/// its own `drop`; then we unmap and it ends them.
fn hold_then_unmap(ctx: &mut Ctx<'_>, name: &str, mapped: Announced<'_>) -> Result<Expect, String> {
    ctx.referee(&format!("gauges 1 {PAGES}"), None)?;
    ctx.referee(&format!("hold {name} 1 {PAGES}"), None)?;
    ctx.referee(&format!("drop {name}"), None)?;
    mapped.check("after the exporter dropped the buffer")?;
    drop(mapped);
    ctx.referee(&format!("ended {name}"), None)?;
    ctx.referee("gauges 0 0", None)?;
    Ok(Expect::QUIET)
}

/// (c) without an answer, then the loss of the connection: we map an
/// announced buffer and never answer; the export times out (`ETIMEDOUT`)
/// and is withdrawn, its UNEXPORT unanswered too; then our device
/// disconnects while we still map the buffer.
pub(super) fn silent_export(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let gntdev = Gntdev::open().map_err(|e| format!("gntdev: {e}"))?;
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let (_, export, mapped) = export_and_map(ctx, &mut conn, &gntdev, "silent", 14)?;
    ctx.referee(&format!("exported silent ETIMEDOUT {}", export.hid), None)?;
    // Withdrawn, waiting for our answer: pinned, nothing ended yet.
    ctx.referee("gauges 1 0", None)?;
    ctx.referee("hold silent 1 0", None)?;
    // The connection goes; the victim ends the export's grants, and
    // those we map drain.
    ctx.dev.reset(&mut ctx.xs)?;
    drop(rings);
    hold_then_unmap(ctx, "silent", mapped)
}

/// (e): answers out of order, MAPPED of a buffer we never mapped, MAPPED
/// and RELEASE of unknown ids, a RELEASE of a stale epoch, a RELEASE after
/// the end, and the grants of a buffer mapped while we claimed another.
/// None of these is malformed: each is answered, none counted as an
/// error or logged, and none ends an export early.
pub(super) fn lies(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let gntdev = Gntdev::open().map_err(|e| format!("gntdev: {e}"))?;
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    ctx.referee("export a 2 15", None)?;
    let (request_a, a) = next_export(&mut conn)?;
    ctx.referee("export b 4 16", None)?;
    let (request_b, b) = next_export(&mut conn)?;
    // The second answered first.
    conn.reply(&answer(&request_b, Status::Ok, None))?;
    conn.reply(&answer(&request_a, Status::Ok, None))?;
    ctx.referee("exported a 0", None)?;
    ctx.referee("exported b 0", None)?;

    // `a` mapped, we say, as our second mapping; we never map it.
    let one = MapEpoch::FIRST;
    let two = one.next();
    let (hid, stranger) = (a.hid, ctx.hid());
    let mapped = |hid, epoch| Message::Mapped { hid, epoch };
    let release = |hid, epoch| Message::Release { hid, epoch };
    let c = &mut conn;
    says(
        ctx,
        c,
        "MAPPED without mapping",
        mapped(hid, two),
        Status::Ok,
    )?;
    says(
        ctx,
        c,
        "MAPPED of an unknown id",
        mapped(stranger, two),
        Status::NoSuchBuffer,
    )?;
    says(
        ctx,
        c,
        "RELEASE of an unknown id",
        release(stranger, two),
        Status::NoSuchBuffer,
    )?;
    ctx.referee("busy a 1", None)?;
    // Unexported: still mapped as epoch 2, we answer; a RELEASE of epoch
    // 1 is stale and must not end it.
    ctx.referee("unexport a", None)?;
    let request = next_unexport(c, &a)?;
    c.reply(&answer(&request, Status::Busy, Some(two)))?;
    says(
        ctx,
        c,
        "RELEASE of a stale epoch",
        release(hid, one),
        Status::Ok,
    )?;
    ctx.referee("hold a 2 0", None)?;
    says(
        ctx,
        c,
        "RELEASE of the awaited epoch",
        release(hid, two),
        Status::Ok,
    )?;
    ctx.referee("ended a", None)?;
    ctx.referee("gauges 1 0", None)?;
    says(
        ctx,
        c,
        "RELEASE after the end",
        release(hid, two),
        Status::NoSuchBuffer,
    )?;

    // `b`'s grants mapped, never announced as mapped; unexported, we say
    // we map nothing.
    let mapped = Announced::map(&gntdev, ctx.dev.backend_id, &b, 16)?;
    ctx.referee("busy b 0", None)?;
    ctx.referee("unexport b", None)?;
    let request = next_unexport(&mut conn, &b)?;
    conn.reply(&answer(&request, Status::Ok, None))?;
    hold_then_unmap(ctx, "b", mapped)
}

/// (d): we map an accepted buffer; the victim unbinds every device (we
/// close ours as a frontend should, keeping the mapping) and tries to
/// unload its module, which must be refused until we unmap, and then
/// succeed.
pub(super) fn unload(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let gntdev = Gntdev::open().map_err(|e| format!("gntdev: {e}"))?;
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let (request, _, mapped) = export_and_map(ctx, &mut conn, &gntdev, "unload", 17)?;
    conn.reply(&answer(&request, Status::Ok, None))?;
    ctx.referee("exported unload 0", None)?;
    // The unbind waits for us to close (up to 5 s): we answer the
    // backend's Closing with Closed, as a frontend does.
    let seq = ctx.post("unbind")?;
    let back_state = format!("{}/{}", ctx.dev.back, schema::NODE_STATE);
    let closing = XenbusState::Closing.as_u32().to_string();
    let mut closed = false;
    ctx.await_referee(seq, "unbind", scaled(REFEREE_ANSWER), |xs, dev| {
        if !closed && xs.read(&back_state)?.as_deref() == Some(closing.as_str()) {
            dev.set_state(xs, XenbusState::Closed)?;
            closed = true;
        }
        Ok(())
    })?;
    drop(rings);
    ctx.referee(&format!("gauges 1 {PAGES}"), None)?;
    ctx.referee(&format!("hold unload 1 {PAGES}"), None)?;
    ctx.referee("drop unload", None)?;
    mapped.check("after the unbind and the drop")?;
    drop(mapped);
    ctx.referee("unloaded", None)?;
    // The lines of our connection were charged to the unloaded module.
    Ok(Expect {
        info_lines: None,
        ..Expect::QUIET
    })
}
