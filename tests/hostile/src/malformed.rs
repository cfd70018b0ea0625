// SPDX-License-Identifier: MIT
//! Requests a receiver must refuse, whichever end sends them: the hostile
//! frontend (`cases.rs`) sends them to the backend driver, the hostile
//! backend (`backend/cases.rs`) to the frontend driver. Each is a
//! well-formed request of `common::wire` with one field spoilt; a
//! receiver answers it with the status given, counts it in
//! `protocol_errors` and logs one line (within the peer's budget).

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::pgdir::{self, DirPage, Layout, LEAF_ENTRIES};
use hyper_dmabuf_common::wire::{
    Export, ExportFlags, MapEpoch, Message, PageRefs, PrivData, Request, Slot,
};
use hyper_dmabuf_common::xen::{GrantRef, Status};

use std::fs::File;

use crate::cases::{
    grefs, put_page, root_over, ROOT_ENTRY0, ROOT_NR_ENTRIES, ROOT_SIZE, TWO_LEAVES,
};
use crate::ffi::{self, Granted};

/// Builds requests about an id, each with a fresh request id: (what,
/// request, the status it must be answered).
pub(crate) type Make = fn(HyperDmabufId, &mut dyn FnMut() -> u32) -> Vec<(String, Slot, Status)>;

/// Operation codes no version defines (answered `NotSupported`).
pub(crate) const UNKNOWN_OPS: [u8; 5] = [0x00, 0x07, 0x7f, 0x80, 0xff];

/// Encodes `message` with the request id `next_id` gives.
fn encode(message: Message, next_id: &mut dyn FnMut() -> u32) -> Slot {
    Request {
        req_id: next_id(),
        message,
    }
    .encode()
}

/// An EXPORT of `size` bytes of `hid`, its directory at reference 8.
pub(crate) fn export(hid: HyperDmabufId, size: u64, next_id: &mut dyn FnMut() -> u32) -> Slot {
    encode(
        Message::Export(Export {
            hid,
            size,
            pages: PageRefs::Directory(GrantRef::FIRST),
            flags: ExportFlags::default(),
            priv_data: PrivData::new(b"hostile").expect("short"),
            fence: None,
        }),
        next_id,
    )
}

/// UNEXPORTs of `hid` with each operation code of [`UNKNOWN_OPS`].
pub(crate) fn unknown_ops(
    hid: HyperDmabufId,
    next_id: &mut dyn FnMut() -> u32,
) -> Vec<(String, Slot, Status)> {
    UNKNOWN_OPS
        .iter()
        .map(|&op| {
            let mut slot = encode(Message::Unexport(hid), next_id);
            slot[4] = op;
            (format!("op {op:#04x}"), slot, Status::NotSupported)
        })
        .collect()
}

/// Requests about `hid` with a reserved byte set (answered `Invalid`).
pub(crate) fn reserved_nonzero(
    hid: HyperDmabufId,
    next_id: &mut dyn FnMut() -> u32,
) -> Vec<(String, Slot, Status)> {
    let epoch = MapEpoch::FIRST;
    let update = Message::Update {
        hid,
        priv_data: PrivData::EMPTY,
        fence: None,
    };
    // (what, request, byte to set)
    let spoilt = [
        ("EXPORT header byte 5", export(hid, 4096, next_id), 5),
        ("EXPORT flags bit 31", export(hid, 4096, next_id), 51),
        (
            "EXPORT private byte past priv_len",
            export(hid, 4096, next_id),
            56 + 100,
        ),
        (
            "EXPORT trailing reserved byte 255",
            export(hid, 4096, next_id),
            255,
        ),
        (
            "UNEXPORT byte 100",
            encode(Message::Unexport(hid), next_id),
            100,
        ),
        (
            "MAPPED byte 40",
            encode(Message::Mapped { hid, epoch }, next_id),
            40,
        ),
        ("UPDATE byte 40", encode(update, next_id), 40),
    ];
    spoilt
        .into_iter()
        .map(|(what, mut slot, at)| {
            slot[at] |= 0x80;
            (what.to_string(), slot, Status::Invalid)
        })
        .collect()
}

/// Requests about `hid` whose values are out of range: size 0, a page
/// count that disagrees with the size, 1 TiB (above any receiver's
/// maximum: `TooLarge`), directory references Xen reserves, private data
/// longer than its field, id number 0, epoch 0.
pub(crate) fn bad_values(
    hid: HyperDmabufId,
    next_id: &mut dyn FnMut() -> u32,
) -> Vec<(String, Slot, Status)> {
    let mut out = Vec::new();
    let mut s = export(hid, 4096, next_id);
    s[32..40].fill(0);
    out.push(("EXPORT of size 0".to_string(), s, Status::Invalid));
    let mut s = export(hid, 3 * 4096, next_id);
    s[40..44].copy_from_slice(&2u32.to_le_bytes());
    out.push((
        "EXPORT whose nr_pages disagrees with its size".to_string(),
        s,
        Status::Invalid,
    ));
    let mut s = export(hid, 4096, next_id);
    s[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
    s[40..44].copy_from_slice(&(((1u64 << 40) / 4096) as u32).to_le_bytes());
    out.push(("EXPORT of 1 TiB".to_string(), s, Status::TooLarge));
    for gref in [0u32, 7] {
        let mut s = export(hid, 4096, next_id);
        s[44..48].copy_from_slice(&gref.to_le_bytes());
        out.push((
            format!("EXPORT with directory reference {gref}"),
            s,
            Status::Invalid,
        ));
    }
    let mut s = export(hid, 4096, next_id);
    s[52..56].copy_from_slice(&193u32.to_le_bytes());
    out.push(("EXPORT with priv_len 193".to_string(), s, Status::Invalid));
    let mut s = encode(Message::Unexport(hid), next_id);
    s[8..16].fill(0);
    out.push(("UNEXPORT of id number 0".to_string(), s, Status::Invalid));
    let mut s = encode(
        Message::Release {
            hid,
            epoch: MapEpoch::FIRST,
        },
        next_id,
    );
    s[32..36].fill(0);
    out.push(("RELEASE of epoch 0".to_string(), s, Status::Invalid));
    out
}

// One-level root pages of a two-page buffer, spoilt for an importer to
// refuse (it must fail the import with `EIO` and one line). Each gets the
// page and a *ghost* reference: one the exporter granted and ended, inside
// its grant table but naming no page.

/// Sets root entry `index` to `gref`.
pub(crate) fn set_entry(page: &mut DirPage, index: usize, gref: u32) {
    let at = ROOT_ENTRY0 + 4 * index;
    page[at..at + 4].copy_from_slice(&gref.to_le_bytes());
}

/// The root says 3 pages' worth of bytes; the request 2 pages.
pub(crate) fn dir_size_disagrees(page: &mut DirPage, _ghost: u32) {
    page[ROOT_SIZE..ROOT_SIZE + 8].copy_from_slice(&(3u64 * 4096).to_le_bytes());
}

/// One entry listed for a two-page buffer.
pub(crate) fn dir_nr_entries_wrong(page: &mut DirPage, _ghost: u32) {
    page[ROOT_NR_ENTRIES..ROOT_NR_ENTRIES + 4].copy_from_slice(&1u32.to_le_bytes());
}

/// Not a root's magic.
pub(crate) fn dir_bad_magic(page: &mut DirPage, _ghost: u32) {
    page[0] ^= 0xff;
}

/// A reference past any grant table a domain can have.
pub(crate) fn dir_gref_out_of_range(page: &mut DirPage, _ghost: u32) {
    set_entry(page, 1, 0x7fff_fff0);
}

/// A reference inside the grant table that names no granted page.
pub(crate) fn dir_gref_not_granted(page: &mut DirPage, ghost: u32) {
    set_entry(page, 1, ghost);
}

/// A buffer of `pages` fresh pages granted read-only to `domid`, and its
/// one-level root page (granted too) spoilt by `mutate`, which also gets
/// a *ghost* reference: granted and ended at once, inside the grant table
/// but naming no page. The root is granted first and the ghost last, so
/// neither can take the other's number. Returns the root, the data pages
/// (to keep until the import is over) and the size.
pub(crate) fn spoilt_buffer(
    gntalloc: &File,
    domid: u16,
    pages: u32,
    mutate: impl FnOnce(&mut DirPage, u32),
) -> Result<(Granted<'_>, Granted<'_>, u64), String> {
    let grant =
        |n| ffi::grant_pages(gntalloc, domid, n, false).map_err(|e| format!("gntalloc: {e}"));
    let root = grant(1)?;
    let data = grant(pages)?;
    let ghost = grant(1)?.grefs()[0];
    let size = u64::from(pages) * XEN_PAGE_SIZE as u64;
    put_page(
        root.words(),
        &root_over(size, data.grefs(), |p| mutate(p, ghost))?,
    );
    Ok((root, data, size))
}

/// Leaf 0 of a two-leaf buffer, full of references that name nothing:
/// listed in both places of the root, the second has the wrong index.
pub(crate) fn leaf_zero() -> Result<DirPage, String> {
    let layout = Layout::new(TWO_LEAVES, u64::MAX).map_err(|e| format!("{e:?}"))?;
    let fake: Vec<u32> = (0..LEAF_ENTRIES as u32).map(|i| 8 + i).collect();
    let mut page = [0u8; XEN_PAGE_SIZE];
    pgdir::encode_leaf(&layout, 0, &grefs(&fake), &mut page).map_err(|e| format!("{e:?}"))?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_dmabuf_common::id::KEY_LEN;
    use hyper_dmabuf_common::limits::DEFAULT_MAX_BUFFER_BYTES;

    #[test]
    fn every_request_is_refused_as_said_and_ids_are_fresh() {
        let hid = HyperDmabufId::new(5, [7; KEY_LEN]).expect("not zero");
        let mut n = 0u32;
        let mut next = || {
            n += 1;
            n
        };
        let mut all = unknown_ops(hid, &mut next);
        all.extend(reserved_nonzero(hid, &mut next));
        all.extend(bad_values(hid, &mut next));
        let mut ids: Vec<u32> = all
            .iter()
            .map(|(_, s, _)| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
        for (what, slot, want) in &all {
            let error = Request::decode(
                slot,
                DEFAULT_MAX_BUFFER_BYTES,
                hyper_dmabuf_common::wire::VERSION_2,
            )
            .expect_err(what);
            assert_eq!(Status::from(error), *want, "{what}");
        }
        assert_eq!(all.len(), 5 + 7 + 8);
    }
}
