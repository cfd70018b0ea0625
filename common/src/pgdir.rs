// SPDX-License-Identifier: MIT
//! The page directory: how an exporter tells the importer which grant
//! references make up a buffer.
//!
//! Xen's `io/displif.h` chains directory pages, each naming the next; an
//! importer must then map them one by one, a hypercall per 4 MiB of buffer
//! (257 sequential maps for 1 GiB). This protocol uses a two-level tree
//! instead, so that an import of any size costs three batched grant-map
//! calls at most (root, all leaves, all data pages) and no chain can loop:
//!
//! * the **root** page, whose grant reference travels in the
//!   [`Export`](super::wire::Export) message, holds the buffer size and
//!   either the data pages' references directly (buffers of at most
//!   [`ROOT_ENTRIES`] pages, about 4 MiB: one level) or the references of
//!   up to [`ROOT_ENTRIES`] **leaf** pages (two levels);
//! * leaf `i` holds the references of data pages
//!   `i * LEAF_ENTRIES .. min((i + 1) * LEAF_ENTRIES, nr_pages)` and its own
//!   index `i`, so a leaf listed at the wrong place is detected.
//!
//! Directory pages and data pages are always [`XEN_PAGE_SIZE`] units,
//! whatever the guest's `PAGE_SIZE`. The counts are all derived from the
//! 64-bit size; the decoder checks every count, every reference (never zero
//! or reserved) and that every unused entry and reserved byte is zero.
//!
//! Root page:
//!
//! ```text
//!  0         1         2         3        4
//! +---------+---------+---------+---------+
//! |          magic "hdmR" (0x526d6468)    | 0
//! +---------+---------+---------+---------+
//! |      version = 1  |  levels (1 or 2)  | 4
//! +---------+---------+---------+---------+
//! |             size (u64, bytes)         | 8
//! +---------+---------+---------+---------+
//! |                                       | 12
//! +---------+---------+---------+---------+
//! |          nr_pages = ceil(size/4096)   | 16
//! +---------+---------+---------+---------+
//! |  nr_entries (data pages or leaves)    | 20
//! +---------+---------+---------+---------+
//! |               reserved                | 24, 28
//! +---------+---------+---------+---------+
//! |   entry[0] .. entry[1015] (grant refs)| 32 .. 4095
//! +---------+---------+---------+---------+
//! ```
//!
//! Leaf page:
//!
//! ```text
//! +---------+---------+---------+---------+
//! |          magic "hdmL" (0x4c6d6468)    | 0
//! +---------+---------+---------+---------+
//! |      version = 1  |     reserved      | 4
//! +---------+---------+---------+---------+
//! |            index of this leaf         | 8
//! +---------+---------+---------+---------+
//! |              nr_entries               | 12
//! +---------+---------+---------+---------+
//! |   entry[0] .. entry[1019] (grant refs)| 16 .. 4095
//! +---------+---------+---------+---------+
//! ```

use super::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use super::error::Error;
use super::limits::{pages_for_bytes, PGDIR_MAX_BUFFER_BYTES, XEN_PAGE_SIZE};
use super::shmem::SharedMem;
use super::xen::GrantRef;
use core::ops::Range;

/// Magic of a root page, "hdmR" in little-endian byte order.
pub const ROOT_MAGIC: u32 = u32::from_le_bytes(*b"hdmR");
/// Magic of a leaf page, "hdmL".
pub const LEAF_MAGIC: u32 = u32::from_le_bytes(*b"hdmL");
/// Layout version.
pub const VERSION: u16 = 1;

const ROOT_HEADER: usize = 32;
const LEAF_HEADER: usize = 16;

/// Grant references in a root page.
pub const ROOT_ENTRIES: usize = (XEN_PAGE_SIZE - ROOT_HEADER) / 4;
/// Grant references in a leaf page.
pub const LEAF_ENTRIES: usize = (XEN_PAGE_SIZE - LEAF_HEADER) / 4;

// Root header offsets.
const R_MAGIC: usize = 0;
const R_VERSION: usize = 4;
const R_LEVELS: usize = 6;
const R_SIZE: usize = 8;
const R_NR_PAGES: usize = 16;
const R_NR_ENTRIES: usize = 20;
const R_RESERVED: usize = 24;
// Leaf header offsets.
const L_MAGIC: usize = 0;
const L_VERSION: usize = 4;
const L_RESERVED: usize = 6;
const L_INDEX: usize = 8;
const L_NR_ENTRIES: usize = 12;

/// One directory page as the exporter writes it (its own memory).
pub type DirPage = [u8; XEN_PAGE_SIZE];

/// The shape of a buffer's directory, derived from the buffer size alone.
///
/// # Invariants
///
/// `0 < size <= PGDIR_MAX_BUFFER_BYTES`, `nr_pages == ceil(size / 4096)`,
/// and `nr_leaves` is zero when `nr_pages <= ROOT_ENTRIES`, otherwise
/// `ceil(nr_pages / LEAF_ENTRIES) <= ROOT_ENTRIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    nr_pages: u32,
    nr_leaves: u32,
}

impl Layout {
    /// The directory of a buffer of `size` bytes, if it is accepted under
    /// `max_bytes` (clamped to what the format can describe).
    ///
    /// # Errors
    ///
    /// [`Error::EmptyBuffer`] or [`Error::BufferTooLarge`].
    pub const fn new(size: u64, max_bytes: u64) -> Result<Self, Error> {
        let max = if max_bytes < PGDIR_MAX_BUFFER_BYTES {
            max_bytes
        } else {
            PGDIR_MAX_BUFFER_BYTES
        };
        if size == 0 {
            return Err(Error::EmptyBuffer);
        }
        if size > max {
            return Err(Error::BufferTooLarge { size, max });
        }
        let nr_pages = match pages_for_bytes(size) {
            Some(pages) => pages,
            None => return Err(Error::BufferTooLarge { size, max }),
        };
        let nr_leaves = if nr_pages as usize <= ROOT_ENTRIES {
            0
        } else {
            nr_pages.div_ceil(LEAF_ENTRIES as u32)
        };
        // INVARIANT: size bounded above, so nr_leaves <= ROOT_ENTRIES by
        // the definition of PGDIR_MAX_BUFFER_BYTES.
        Ok(Layout {
            size,
            nr_pages,
            nr_leaves,
        })
    }

    /// Buffer size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// Number of data pages.
    pub const fn nr_pages(&self) -> u32 {
        self.nr_pages
    }

    /// Number of leaf pages (zero for a one-level directory).
    pub const fn nr_leaves(&self) -> u32 {
        self.nr_leaves
    }

    /// 1 if the root lists data pages, 2 if it lists leaves.
    pub const fn levels(&self) -> u16 {
        if self.nr_leaves == 0 {
            1
        } else {
            2
        }
    }

    /// Directory pages in all: the root and the leaves.
    pub const fn dir_pages(&self) -> u32 {
        1 + self.nr_leaves
    }

    /// Entries used in the root page.
    pub const fn root_entries(&self) -> usize {
        if self.nr_leaves == 0 {
            self.nr_pages as usize
        } else {
            self.nr_leaves as usize
        }
    }

    /// The data pages leaf `index` lists, or `None` for an index past the
    /// last leaf.
    pub fn leaf_range(&self, index: u32) -> Option<Range<usize>> {
        if index >= self.nr_leaves {
            return None;
        }
        let start = index as usize * LEAF_ENTRIES;
        let end = (start + LEAF_ENTRIES).min(self.nr_pages as usize);
        Some(start..end)
    }
}

/// Writes a root page. `entries` are the data pages' references for a
/// one-level layout, the leaves' references for two levels.
///
/// # Errors
///
/// [`Error::CountMismatch`] if `entries` has the wrong length.
pub fn encode_root(layout: &Layout, entries: &[GrantRef], page: &mut DirPage) -> Result<(), Error> {
    check_count(layout.root_entries(), entries.len())?;
    page.fill(0);
    put_u32(page, R_MAGIC, ROOT_MAGIC);
    put_u16(page, R_VERSION, VERSION);
    put_u16(page, R_LEVELS, layout.levels());
    put_u64(page, R_SIZE, layout.size);
    put_u32(page, R_NR_PAGES, layout.nr_pages);
    put_u32(page, R_NR_ENTRIES, count_u32(entries.len()));
    put_entries(page, ROOT_HEADER, entries);
    Ok(())
}

/// Writes leaf `index`, listing `data` (the references of the data pages in
/// [`Layout::leaf_range`]).
///
/// # Errors
///
/// [`Error::BadLeafIndex`] for an index past the last leaf,
/// [`Error::CountMismatch`] if `data` has the wrong length.
pub fn encode_leaf(
    layout: &Layout,
    index: u32,
    data: &[GrantRef],
    page: &mut DirPage,
) -> Result<(), Error> {
    let range = layout.leaf_range(index).ok_or(Error::BadLeafIndex {
        expected: layout.nr_leaves,
        found: index,
    })?;
    check_count(range.len(), data.len())?;
    page.fill(0);
    put_u32(page, L_MAGIC, LEAF_MAGIC);
    put_u16(page, L_VERSION, VERSION);
    put_u32(page, L_INDEX, index);
    put_u32(page, L_NR_ENTRIES, count_u32(data.len()));
    put_entries(page, LEAF_HEADER, data);
    Ok(())
}

fn put_entries(page: &mut DirPage, header: usize, entries: &[GrantRef]) {
    for (slot, gref) in page[header..].chunks_exact_mut(4).zip(entries) {
        slot.copy_from_slice(&gref.get().to_le_bytes());
    }
}

/// Reads and checks the header of a root page mapped from the peer, for a
/// buffer announced as `expected_size` bytes.
///
/// # Errors
///
/// [`Error::Truncated`] if `root` is smaller than a page; otherwise any
/// inconsistency between the header and the size.
pub fn read_root_header<M: SharedMem + ?Sized>(
    root: &M,
    expected_size: u64,
    max_bytes: u64,
) -> Result<Layout, Error> {
    let header = read_header::<ROOT_HEADER, M>(root)?;
    check_magic(get_u32(&header, R_MAGIC), ROOT_MAGIC)?;
    check_version(get_u16(&header, R_VERSION))?;
    let size = get_u64(&header, R_SIZE);
    if size != expected_size {
        return Err(Error::SizeMismatch {
            announced: expected_size,
            found: size,
        });
    }
    let layout = Layout::new(size, max_bytes)?;
    let levels = get_u16(&header, R_LEVELS);
    if levels != layout.levels() {
        return Err(Error::CountMismatch {
            expected: u32::from(layout.levels()),
            found: u32::from(levels),
        });
    }
    check_count(
        layout.nr_pages as usize,
        get_u32(&header, R_NR_PAGES) as usize,
    )?;
    check_count(
        layout.root_entries(),
        get_u32(&header, R_NR_ENTRIES) as usize,
    )?;
    super::bytes::check_zero(&header, R_RESERVED, ROOT_HEADER)?;
    Ok(layout)
}

/// Copies the root's entries (data or leaf references, see
/// [`Layout::levels`]) into `out`, which must hold exactly
/// [`Layout::root_entries`], and checks the unused entries are zero.
///
/// # Errors
///
/// [`Error::OutputTooSmall`], [`Error::InvalidGref`] or
/// [`Error::ReservedNotZero`].
pub fn read_root_entries<M: SharedMem + ?Sized>(
    root: &M,
    layout: &Layout,
    out: &mut [GrantRef],
) -> Result<(), Error> {
    check_output(layout.root_entries(), out.len())?;
    read_entries(root, ROOT_HEADER, out)
}

/// Reads leaf `index` mapped from the peer into `out`, which must hold
/// exactly the length of [`Layout::leaf_range`] for that index.
///
/// # Errors
///
/// Any inconsistency of the leaf with the layout.
pub fn read_leaf<M: SharedMem + ?Sized>(
    leaf: &M,
    layout: &Layout,
    index: u32,
    out: &mut [GrantRef],
) -> Result<(), Error> {
    let range = layout.leaf_range(index).ok_or(Error::BadLeafIndex {
        expected: layout.nr_leaves,
        found: index,
    })?;
    check_output(range.len(), out.len())?;
    let header = read_header::<LEAF_HEADER, M>(leaf)?;
    check_magic(get_u32(&header, L_MAGIC), LEAF_MAGIC)?;
    check_version(get_u16(&header, L_VERSION))?;
    super::bytes::check_zero(&header, L_RESERVED, L_INDEX)?;
    let found = get_u32(&header, L_INDEX);
    if found != index {
        return Err(Error::BadLeafIndex {
            expected: index,
            found,
        });
    }
    check_count(range.len(), get_u32(&header, L_NR_ENTRIES) as usize)?;
    read_entries(leaf, LEAF_HEADER, out)
}

/// Decodes a whole directory: the root, then each leaf obtained from
/// `map_leaf`. For the simulation, the fuzzers and tools; the kernel calls
/// the steps itself so it can map all leaves in one batch.
///
/// `data` receives the data pages' references and must hold exactly
/// `nr_pages`; `leaves` is scratch for the leaf references and must hold at
/// least [`Layout::nr_leaves`].
///
/// # Errors
///
/// Any decoding error, or whatever `map_leaf` returns.
pub fn decode<M, L, F>(
    root: &M,
    expected_size: u64,
    max_bytes: u64,
    mut map_leaf: F,
    data: &mut [GrantRef],
    leaves: &mut [GrantRef],
) -> Result<Layout, Error>
where
    M: SharedMem + ?Sized,
    L: SharedMem,
    F: FnMut(GrantRef) -> Result<L, Error>,
{
    let layout = read_root_header(root, expected_size, max_bytes)?;
    check_output(layout.nr_pages as usize, data.len())?;
    if layout.nr_leaves == 0 {
        read_root_entries(root, &layout, data)?;
        return Ok(layout);
    }
    let got = leaves.len();
    let leaves = leaves
        .get_mut(..layout.nr_leaves as usize)
        .ok_or(Error::OutputTooSmall {
            needed: layout.nr_leaves as usize,
            got,
        })?;
    read_root_entries(root, &layout, leaves)?;
    for (index, &leaf_ref) in (0u32..).zip(leaves.iter()) {
        // PANIC: `index < nr_leaves`, so the range exists and lies within
        // `nr_pages`, the length of `data` checked above.
        let range = layout.leaf_range(index).unwrap_or(0..0);
        let leaf = map_leaf(leaf_ref)?;
        read_leaf(&leaf, &layout, index, &mut data[range])?;
    }
    Ok(layout)
}

fn read_header<const N: usize, M: SharedMem + ?Sized>(page: &M) -> Result<[u8; N], Error> {
    if page.len() < XEN_PAGE_SIZE {
        return Err(Error::Truncated {
            needed: XEN_PAGE_SIZE,
            got: page.len(),
        });
    }
    let mut header = [0u8; N];
    page.read_bytes(0, &mut header);
    Ok(header)
}

/// Copies `out.len()` references starting at `header`, each read once and
/// then validated, and checks the rest of the page is zero.
fn read_entries<M: SharedMem + ?Sized>(
    page: &M,
    header: usize,
    out: &mut [GrantRef],
) -> Result<(), Error> {
    let mut offset = header;
    for slot in out.iter_mut() {
        *slot = GrantRef::new(u32::from_le(page.read_u32(offset)))?;
        offset += 4;
    }
    while offset < XEN_PAGE_SIZE {
        if page.read_u32(offset) != 0 {
            return Err(Error::ReservedNotZero { offset });
        }
        offset += 4;
    }
    Ok(())
}

fn check_magic(found: u32, expected: u32) -> Result<(), Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::BadMagic(found))
    }
}

fn check_version(found: u16) -> Result<(), Error> {
    if found == VERSION {
        Ok(())
    } else {
        Err(Error::BadVersion(found))
    }
}

fn check_count(expected: usize, found: usize) -> Result<(), Error> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::CountMismatch {
            expected: count_u32(expected),
            found: count_u32(found),
        })
    }
}

fn check_output(needed: usize, got: usize) -> Result<(), Error> {
    if needed == got {
        Ok(())
    } else {
        Err(Error::OutputTooSmall { needed, got })
    }
}

fn count_u32(n: usize) -> u32 {
    super::wire::saturating_u32(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::DEFAULT_MAX_BUFFER_BYTES;
    use core::sync::atomic::AtomicU32;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// A directory as the exporter builds it, in simulated shared pages
    /// keyed by grant reference.
    struct Built {
        root: GrantRef,
        pages: BTreeMap<GrantRef, Vec<AtomicU32>>,
        data: Vec<GrantRef>,
    }

    fn page_mem(page: &DirPage) -> Vec<AtomicU32> {
        page.chunks_exact(4)
            .map(|w| AtomicU32::new(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    }

    fn build(size: u64) -> Built {
        let layout = Layout::new(size, PGDIR_MAX_BUFFER_BYTES).unwrap();
        let mut next = 1000u32;
        let mut alloc = || {
            next += 1;
            GrantRef::new(next).unwrap()
        };
        let data: Vec<GrantRef> = (0..layout.nr_pages()).map(|_| alloc()).collect();
        let mut pages = BTreeMap::new();
        let mut page = [0u8; XEN_PAGE_SIZE];
        let root = alloc();
        if layout.nr_leaves() == 0 {
            encode_root(&layout, &data, &mut page).unwrap();
        } else {
            let mut leaf_refs = Vec::new();
            for index in 0..layout.nr_leaves() {
                let range = layout.leaf_range(index).unwrap();
                encode_leaf(&layout, index, &data[range], &mut page).unwrap();
                let leaf_ref = alloc();
                pages.insert(leaf_ref, page_mem(&page));
                leaf_refs.push(leaf_ref);
            }
            encode_root(&layout, &leaf_refs, &mut page).unwrap();
        }
        pages.insert(root, page_mem(&page));
        Built { root, pages, data }
    }

    fn decode_built(built: &Built, size: u64, max: u64) -> Result<Vec<GrantRef>, Error> {
        let zero = GrantRef::new(8).unwrap();
        let nr_pages = pages_for_bytes(size).unwrap() as usize;
        let mut data = std::vec![zero; nr_pages];
        let mut leaves = std::vec![zero; ROOT_ENTRIES];
        let root = &built.pages[&built.root][..];
        decode(
            root,
            size,
            max,
            |gref| {
                built
                    .pages
                    .get(&gref)
                    .map(|p| &p[..])
                    .ok_or(Error::InvalidGref(gref.get()))
            },
            &mut data,
            &mut leaves,
        )?;
        Ok(data)
    }

    #[test]
    fn layout_boundaries() {
        let one = Layout::new(ROOT_ENTRIES as u64 * 4096, u64::MAX).unwrap();
        assert_eq!((one.levels(), one.nr_leaves()), (1, 0));
        let two = Layout::new(ROOT_ENTRIES as u64 * 4096 + 1, u64::MAX).unwrap();
        assert_eq!((two.levels(), two.nr_leaves()), (2, 1));
        let gib = Layout::new(1 << 30, DEFAULT_MAX_BUFFER_BYTES).unwrap();
        assert_eq!((gib.nr_pages(), gib.nr_leaves()), (262_144, 258));
        let full = Layout::new(PGDIR_MAX_BUFFER_BYTES, u64::MAX).unwrap();
        assert_eq!(full.nr_leaves() as usize, ROOT_ENTRIES);
        assert!(Layout::new(PGDIR_MAX_BUFFER_BYTES + 1, u64::MAX).is_err());
        assert_eq!(Layout::new(0, u64::MAX), Err(Error::EmptyBuffer));
        assert!(matches!(
            Layout::new(DEFAULT_MAX_BUFFER_BYTES + 1, DEFAULT_MAX_BUFFER_BYTES),
            Err(Error::BufferTooLarge { .. })
        ));
    }

    #[test]
    fn round_trip_at_the_edges() {
        for size in [
            1,
            4096,
            4097,
            1016 * 4096,
            1016 * 4096 + 1,
            1020 * 4096 * 3 + 5,
            8 << 20,
            1 << 30,
        ] {
            let built = build(size);
            assert_eq!(
                decode_built(&built, size, DEFAULT_MAX_BUFFER_BYTES).unwrap(),
                built.data,
                "size {size}"
            );
        }
    }

    #[test]
    fn size_must_match_the_announcement() {
        let built = build(8192);
        assert_eq!(
            decode_built(&built, 4096, DEFAULT_MAX_BUFFER_BYTES),
            Err(Error::SizeMismatch {
                announced: 4096,
                found: 8192
            })
        );
    }

    #[test]
    fn max_is_enforced_on_the_directory() {
        let built = build(8 << 20);
        assert!(matches!(
            decode_built(&built, 8 << 20, 4 << 20),
            Err(Error::BufferTooLarge { .. })
        ));
    }

    #[test]
    fn leaf_in_the_wrong_place_is_refused() {
        let size = 3 * LEAF_ENTRIES as u64 * 4096;
        let built = build(size);
        // Swap the first two leaf references in the root.
        let root = &built.pages[&built.root];
        let (a, b) = (
            root[8].load(core::sync::atomic::Ordering::Relaxed),
            root[9].load(core::sync::atomic::Ordering::Relaxed),
        );
        root[8].store(b, core::sync::atomic::Ordering::Relaxed);
        root[9].store(a, core::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            decode_built(&built, size, DEFAULT_MAX_BUFFER_BYTES),
            Err(Error::BadLeafIndex {
                expected: 0,
                found: 1
            })
        );
    }

    #[test]
    fn root_listed_as_its_own_leaf_is_refused() {
        let size = 2 * LEAF_ENTRIES as u64 * 4096;
        let built = build(size);
        let root = &built.pages[&built.root];
        root[8].store(built.root.get(), core::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            decode_built(&built, size, DEFAULT_MAX_BUFFER_BYTES),
            Err(Error::BadMagic(ROOT_MAGIC))
        );
    }

    #[test]
    fn short_page_is_refused() {
        let mem: [AtomicU32; 16] = Default::default();
        assert!(matches!(
            read_root_header(&mem[..], 4096, u64::MAX),
            Err(Error::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(size in 1u64..(16 << 20)) {
            let built = build(size);
            prop_assert_eq!(decode_built(&built, size, DEFAULT_MAX_BUFFER_BYTES).unwrap(), built.data);
        }

        /// Any word of any directory page changed to any value: the decoder
        /// returns an error or exactly the references now written, never
        /// panics, never reads outside the pages.
        #[test]
        fn corruption_is_refused_or_consistent(
            size in 1u64..(12 << 20),
            page_pick in any::<prop::sample::Index>(),
            word in 0usize..1024,
            value in any::<u32>(),
        ) {
            let built = build(size);
            let keys: Vec<GrantRef> = built.pages.keys().copied().collect();
            let target = keys[page_pick.index(keys.len())];
            built.pages[&target][word].store(value, core::sync::atomic::Ordering::Relaxed);
            if let Ok(data) = decode_built(&built, size, DEFAULT_MAX_BUFFER_BYTES) {
                prop_assert!(data.iter().all(|g| g.get() >= 8));
                prop_assert_eq!(data.len(), pages_for_bytes(size).unwrap() as usize);
            }
        }

        /// A root page of arbitrary bytes never panics the decoder.
        #[test]
        fn arbitrary_root(words in proptest::collection::vec(any::<u32>(), 1024), size in any::<u64>()) {
            let mem: Vec<AtomicU32> = words.into_iter().map(AtomicU32::new).collect();
            let mut data = std::vec![GrantRef::new(8).unwrap(); 4096];
            let mut leaves = std::vec![GrantRef::new(8).unwrap(); ROOT_ENTRIES];
            let _ = decode(&mem[..], size, DEFAULT_MAX_BUFFER_BYTES, |_| Ok(&mem[..]), &mut data, &mut leaves);
        }
    }
}
