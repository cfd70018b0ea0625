// SPDX-License-Identifier: MIT
//! The `pgdir` target: the page-directory decoder, [`decode`], on
//! directory pages a hostile exporter wrote.
//!
//! The input builds a set of simulated shared pages keyed by grant
//! reference, as the importer would find them mapped: [`PgdirOp::Build`]
//! writes a valid directory for a buffer size (so the fuzzer starts from
//! deep, valid states), the other operations corrupt it — write any word
//! of any page, alias a page under another reference, drop a page, map a
//! page short, pick another root, announce another size, change the
//! limit — and
//! [`PgdirOp::Decode`] runs the decoder, with output buffers of the right
//! length or off by a few.
//!
//! Oracles: no panic; a directory that was built and not touched decodes
//! to exactly the references it was built from; whatever is accepted is
//! canonical: the announced size, within the limit, and re-encoding the
//! decoded references gives byte for byte the pages that were read (so
//! every count, index, reserved byte and unused entry was checked); an
//! output buffer of the wrong length is refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper_dmabuf_common::limits::{pages_for_bytes, XEN_PAGE_SIZE};
use hyper_dmabuf_common::pgdir::{
    decode, encode_leaf, encode_root, DirPage, Layout, LEAF_ENTRIES, ROOT_ENTRIES,
};
use hyper_dmabuf_common::xen::GrantRef;
use hyper_dmabuf_common::Error;

use crate::input::{decode_all, Reader, Writer};
use crate::wire::max_preset;

/// Largest buffer [`PgdirOp::Build`] writes a directory for: a two-level
/// directory of four leaves, so that one execution stays fast. Larger
/// announced sizes are still decoded (and refused or not) by their root.
pub const BUILD_CAP: u64 = (ROOT_ENTRIES as u64 + 4 * LEAF_ENTRIES as u64) * XEN_PAGE_SIZE as u64;

/// Largest data output the harness allocates; beyond it the decoder is
/// handed an empty one and must refuse.
const DATA_CAP: usize = 1 << 18;

const WORDS: usize = XEN_PAGE_SIZE / 4;

/// One step of a page-directory run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgdirOp {
    /// Replace every page by a valid directory for a buffer of
    /// `1 + size % BUILD_CAP` bytes, with references allocated upwards from
    /// `first_gref` (data pages, then leaves, then the root). Announces
    /// that size.
    Build {
        /// Buffer size, modulo [`BUILD_CAP`], plus one.
        size: u64,
        /// First reference handed out.
        first_gref: u32,
    },
    /// Write a word of a page.
    WriteWord {
        /// Page, by rank among the references present.
        page: u16,
        /// Word index, modulo 1024.
        word: u16,
        /// The value written.
        value: u32,
    },
    /// Map a copy of a page under another reference (replacing any).
    Alias {
        /// Page, by rank.
        page: u16,
        /// The other reference.
        gref: u32,
    },
    /// Drop a page: mapping its reference now fails.
    Remove {
        /// Page, by rank.
        page: u16,
    },
    /// Use another page as the root.
    SetRoot {
        /// Page, by rank.
        page: u16,
    },
    /// Announce another size in the export message.
    Announce {
        /// The announced size.
        size: u64,
    },
    /// Change the importer's limit.
    SetMax {
        /// Selects the limit ([`max_preset`]).
        max: u8,
    },
    /// Map only the first `words` words of a page (a short mapping).
    Truncate {
        /// Page, by rank.
        page: u16,
        /// Words kept, modulo 1024.
        words: u16,
    },
    /// Decode.
    Decode {
        /// Added to the right length of the data output (wrapping i8).
        data_delta: i8,
        /// Added to the right length of the leaf scratch.
        leaves_delta: i8,
    },
}

impl PgdirOp {
    /// Reads one operation.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        match r.u8() % 9 {
            0 => PgdirOp::Build {
                size: r.u64(),
                first_gref: r.u32(),
            },
            1 => PgdirOp::WriteWord {
                page: r.u16(),
                word: r.u16(),
                value: r.u32(),
            },
            2 => PgdirOp::Alias {
                page: r.u16(),
                gref: r.u32(),
            },
            3 => PgdirOp::Remove { page: r.u16() },
            4 => PgdirOp::SetRoot { page: r.u16() },
            5 => PgdirOp::Announce { size: r.u64() },
            6 => PgdirOp::SetMax { max: r.u8() },
            7 => PgdirOp::Truncate {
                page: r.u16(),
                words: r.u16(),
            },
            _ => PgdirOp::Decode {
                data_delta: r.u8() as i8,
                leaves_delta: r.u8() as i8,
            },
        }
    }

    /// Writes one operation.
    pub fn encode(&self, w: &mut Writer) {
        match *self {
            PgdirOp::Build { size, first_gref } => w.u8(0).u64(size).u32(first_gref),
            PgdirOp::WriteWord { page, word, value } => w.u8(1).u16(page).u16(word).u32(value),
            PgdirOp::Alias { page, gref } => w.u8(2).u16(page).u32(gref),
            PgdirOp::Remove { page } => w.u8(3).u16(page),
            PgdirOp::SetRoot { page } => w.u8(4).u16(page),
            PgdirOp::Announce { size } => w.u8(5).u64(size),
            PgdirOp::SetMax { max } => w.u8(6).u8(max),
            PgdirOp::Truncate { page, words } => w.u8(7).u16(page).u16(words),
            PgdirOp::Decode {
                data_delta,
                leaves_delta,
            } => w.u8(8).u8(data_delta as u8).u8(leaves_delta as u8),
        };
    }
}

/// Encodes a sequence of operations.
pub fn encode(ops: &[PgdirOp]) -> Vec<u8> {
    let mut w = Writer::new();
    for op in ops {
        op.encode(&mut w);
    }
    w.finish()
}

type Page = Vec<AtomicU32>;

fn page_mem(page: &DirPage) -> Page {
    page.chunks_exact(4)
        .map(|w| AtomicU32::new(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

fn page_bytes(page: &[AtomicU32]) -> DirPage {
    let mut out = [0u8; XEN_PAGE_SIZE];
    for (dst, word) in out.chunks_exact_mut(4).zip(page) {
        dst.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
    }
    out
}

/// The importer's view: mapped pages, the root reference, the announced
/// size and the limit.
struct World {
    pages: BTreeMap<u32, Page>,
    root: u32,
    announced: u64,
    max: u64,
    /// The references of a directory built and not modified since.
    pristine: Option<Vec<GrantRef>>,
}

impl World {
    fn rank(&self, page: u16) -> Option<u32> {
        if self.pages.is_empty() {
            return None;
        }
        self.pages
            .keys()
            .nth(usize::from(page) % self.pages.len())
            .copied()
    }

    fn build(&mut self, size: u64, first_gref: u32) {
        let size = 1 + size % BUILD_CAP;
        let layout = Layout::new(size, u64::MAX).expect("size within the format");
        let mut next = first_gref;
        let mut alloc = || loop {
            let raw = next;
            next = next.wrapping_add(1);
            if let Ok(gref) = GrantRef::new(raw) {
                return gref;
            }
        };
        let data: Vec<GrantRef> = (0..layout.nr_pages()).map(|_| alloc()).collect();
        self.pages.clear();
        let mut page = [0u8; XEN_PAGE_SIZE];
        let root = if layout.nr_leaves() == 0 {
            encode_root(&layout, &data, &mut page).expect("counts from the layout");
            alloc()
        } else {
            let mut leaves = Vec::new();
            for index in 0..layout.nr_leaves() {
                let range = layout.leaf_range(index).expect("index below nr_leaves");
                encode_leaf(&layout, index, &data[range], &mut page).expect("counts");
                let gref = alloc();
                self.pages.insert(gref.get(), page_mem(&page));
                leaves.push(gref);
            }
            encode_root(&layout, &leaves, &mut page).expect("counts from the layout");
            alloc()
        };
        self.pages.insert(root.get(), page_mem(&page));
        self.root = root.get();
        self.announced = size;
        // References allocated by a wrapping counter may collide after 2^32
        // allocations only; a build never allocates that many, so the
        // directory is intact.
        self.pristine = Some(data);
    }

    fn decode(&self, data_delta: i8, leaves_delta: i8) {
        let layout = Layout::new(self.announced, self.max);
        let right = layout.map_or(0, |l| l.nr_pages() as usize);
        let data_len = right.saturating_add_signed(isize::from(data_delta));
        let data_len = if data_len > DATA_CAP { 0 } else { data_len };
        let right_leaves = match layout {
            Ok(l) if l.nr_leaves() > 0 => l.nr_leaves() as usize,
            _ => ROOT_ENTRIES,
        };
        let leaves_len = right_leaves.saturating_add_signed(isize::from(leaves_delta));
        let filler = GrantRef::new(u32::MAX).expect("not reserved");
        let mut data = vec![filler; data_len];
        let mut leaves = vec![filler; leaves_len];
        let Some(root) = self.pages.get(&self.root) else {
            return;
        };
        let result = decode(
            &root[..],
            self.announced,
            self.max,
            |gref| {
                self.pages
                    .get(&gref.get())
                    .map(|p| &p[..])
                    .ok_or(Error::InvalidGref(gref.get()))
            },
            &mut data,
            &mut leaves,
        );
        if let Some(built) = &self.pristine {
            let exact = data_delta == 0
                && (leaves_delta >= 0 || layout.map_or(true, |l| l.nr_leaves() == 0));
            if exact && layout.is_ok() && data_len == right {
                assert!(result.is_ok(), "intact directory refused: {result:?}");
                assert_eq!(&data, built, "intact directory decoded to other references");
            }
        }
        let Ok(decoded) = result else {
            return;
        };
        assert_eq!(
            Ok(decoded),
            layout,
            "decoded layout differs from the announced one"
        );
        assert_eq!(decoded.size(), self.announced);
        assert_eq!(Some(decoded.nr_pages()), pages_for_bytes(self.announced));
        assert_eq!(
            data.len(),
            decoded.nr_pages() as usize,
            "output of the wrong length accepted"
        );
        // Re-encode what was decoded: it must be the pages that were read.
        let mut page = [0u8; XEN_PAGE_SIZE];
        if decoded.nr_leaves() == 0 {
            encode_root(&decoded, &data, &mut page).expect("counts");
            assert!(page_bytes(root) == page, "accepted a non-canonical root");
        } else {
            let leaf_refs = &leaves[..decoded.nr_leaves() as usize];
            encode_root(&decoded, leaf_refs, &mut page).expect("counts");
            assert!(page_bytes(root) == page, "accepted a non-canonical root");
            for (index, gref) in (0u32..).zip(leaf_refs) {
                let range = decoded.leaf_range(index).expect("index below nr_leaves");
                encode_leaf(&decoded, index, &data[range], &mut page).expect("counts");
                let mapped = &self.pages[&gref.get()];
                assert!(
                    page_bytes(mapped) == page,
                    "accepted a non-canonical leaf {index}"
                );
            }
        }
    }
}

/// The `pgdir` target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let ops = decode_all(&mut r, PgdirOp::decode);
    let mut world = World {
        pages: BTreeMap::new(),
        root: 0,
        announced: 0,
        max: max_preset(0),
        pristine: None,
    };
    for op in ops {
        match op {
            PgdirOp::Build { size, first_gref } => world.build(size, first_gref),
            PgdirOp::WriteWord { page, word, value } => {
                if let Some(gref) = world.rank(page) {
                    let word = usize::from(word) % WORDS;
                    if let Some(cell) = world.pages[&gref].get(word) {
                        if cell.swap(value, Ordering::Relaxed) != value {
                            world.pristine = None;
                        }
                    }
                }
            }
            PgdirOp::Alias { page, gref } => {
                if let Some(from) = world.rank(page) {
                    let copy = page_mem(&page_bytes(&world.pages[&from]));
                    world.pages.insert(gref, copy);
                    world.pristine = None;
                }
            }
            PgdirOp::Remove { page } => {
                if let Some(gref) = world.rank(page) {
                    world.pages.remove(&gref);
                    world.pristine = None;
                }
            }
            PgdirOp::SetRoot { page } => {
                if let Some(gref) = world.rank(page) {
                    if gref != world.root {
                        world.root = gref;
                        world.pristine = None;
                    }
                }
            }
            PgdirOp::Announce { size } => {
                if size != world.announced {
                    world.announced = size;
                    world.pristine = None;
                }
            }
            PgdirOp::SetMax { max } => {
                world.max = max_preset(max);
                if world.announced > world.max {
                    world.pristine = None;
                }
            }
            PgdirOp::Truncate { page, words } => {
                if let Some(gref) = world.rank(page) {
                    let keep = usize::from(words) % WORDS;
                    if let Some(p) = world.pages.get_mut(&gref) {
                        p.truncate(keep);
                    }
                    world.pristine = None;
                }
            }
            PgdirOp::Decode {
                data_delta,
                leaves_delta,
            } => world.decode(data_delta, leaves_delta),
        }
    }
    world.decode(0, 0);
}
