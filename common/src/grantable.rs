// SPDX-License-Identifier: MIT
//! Which local dma-bufs, and which of their pages, may be granted to a
//! peer.
//!
//! The kernel module pins a dma-buf that user space asks to export
//! (`dma_buf_get`, attach to the control device, map) and walks its sg
//! table's DMA pages into Xen frames, as gntdev-dmabuf does. The C shim
//! only reports what it finds: at which step a pin failed, where the
//! table's first segment starts, how many pages it has, and for each page
//! whether it is ordinary RAM, a swiotlb bounce buffer, or another
//! domain's frame. The rules below decide; every refusal is `EINVAL`
//! (docs/uapi.md), except a bad file descriptor, which is `EBADF`.

use core::fmt;

use super::ledger::errno;

/// The page is in the memory map (`pfn_valid`): RAM, not MMIO or VRAM.
pub const PAGE_RAM: u8 = 1 << 0;
/// The page is a swiotlb bounce buffer standing in for the real pages.
pub const PAGE_BOUNCE: u8 = 1 << 1;
/// The page maps another domain's frame (a grant mapping, e.g. an
/// imported buffer exported on: the PV p2m's foreign bit, or
/// `PageForeign` where the domain has no p2m of its own).
pub const PAGE_FOREIGN: u8 = 1 << 2;

/// The step at which pinning a dma-buf failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStep {
    /// `dma_buf_get`: the descriptor is no dma-buf.
    Get,
    /// `dma_buf_attach`: the exporter refused our device.
    Attach,
    /// `dma_buf_map_attachment`: the exporter could not map it for us.
    Map,
}

/// The errno of a pin that failed at `step` with `err` (positive).
///
/// A descriptor that is not open is `EBADF`; one that is open but no
/// dma-buf is `EINVAL`, whatever `dma_buf_get` said. What the exporter
/// answers to attach or map is passed on.
pub const fn pin_errno(step: PinStep, err: i32) -> i32 {
    match step {
        PinStep::Get if err == errno::EBADF => errno::EBADF,
        PinStep::Get => errno::EINVAL,
        PinStep::Attach | PinStep::Map => err,
    }
}

/// What the walk of a pinned dma-buf's sg table found, besides each
/// page's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// Offset of the first segment into its first page; `None` if the
    /// table has no segment at all.
    pub first_offset: Option<u32>,
    /// The first segment that is not whole pages (its address or its
    /// length), if any.
    pub ragged: Option<u32>,
    /// DMA pages in the table, counted up to one more than the pages
    /// expected (the walk stops there).
    pub pages: u32,
}

/// Why a pinned dma-buf's pages may not be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRefusal {
    /// The sg table has no segment.
    NoSegment,
    /// The buffer does not start at a page boundary.
    Offset(u32),
    /// Segment `0` covers part of a page: the walk would count it whole
    /// and grant bytes that are not the buffer's.
    Ragged(u32),
    /// The table has another number of pages than the size implies.
    Count {
        /// Pages the size implies.
        expected: u32,
        /// Pages found (one more than expected at most).
        found: u32,
    },
    /// Page `0` is not RAM (MMIO, VRAM, or no page at all).
    NotRam(u32),
    /// Page `0` is a bounce buffer, not the buffer's own page.
    Bounce(u32),
    /// Page `0` maps another domain's frame.
    Foreign(u32),
}

impl FrameRefusal {
    /// The errno the export ioctl returns.
    pub const fn errno(self) -> i32 {
        errno::EINVAL
    }
}

/// What the driver logs when it refuses an export: the cause, and what
/// the user can do about it (the ioctl's `EINVAL` alone says neither).
impl fmt::Display for FrameRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameRefusal::NoSegment => {
                write!(
                    f,
                    "its exporter mapped no memory for it (an empty sg table)"
                )
            }
            FrameRefusal::Offset(offset) => write!(
                f,
                "it starts {offset} bytes into a page; only buffers made of whole pages \
                 can be granted (allocate it page-aligned)"
            ),
            FrameRefusal::Ragged(segment) => write!(
                f,
                "its exporter mapped segment {segment} in part of a page; every segment \
                 must be whole pages"
            ),
            FrameRefusal::Count { expected, found } if found > expected => write!(
                f,
                "its exporter mapped more pages than its size of {expected} pages"
            ),
            FrameRefusal::Count { expected, found } => write!(
                f,
                "its exporter mapped {found} pages for a size of {expected} pages"
            ),
            FrameRefusal::NotRam(page) => write!(
                f,
                "page {page} is not system RAM in use (device memory such as VRAM, or a \
                 reserved or free page, cannot be granted: allocate the buffer in system \
                 memory)"
            ),
            FrameRefusal::Bounce(page) => write!(
                f,
                "page {page} was mapped through a swiotlb bounce buffer, not the buffer's own"
            ),
            FrameRefusal::Foreign(page) => write!(
                f,
                "page {page} is another domain's (an imported buffer cannot be exported \
                 on: share it from the domain that made it)"
            ),
        }
    }
}

/// Whether the pages a walk found may be granted: the table starts at a
/// page boundary, every segment is whole pages, it has exactly `expected`
/// pages, and each (`facts[i]`, `PAGE_*` bits) is ordinary RAM of this
/// domain's own, no bounce buffer and no foreign frame.
///
/// # Errors
///
/// The first [`FrameRefusal`] that applies, in the order above; for a
/// page, its being another domain's comes first (the most precise cause).
pub fn accept_frames(walk: Walk, expected: u32, facts: &[u8]) -> Result<(), FrameRefusal> {
    match walk.first_offset {
        None => return Err(FrameRefusal::NoSegment),
        Some(0) => {}
        Some(offset) => return Err(FrameRefusal::Offset(offset)),
    }
    if let Some(segment) = walk.ragged {
        return Err(FrameRefusal::Ragged(segment));
    }
    let count = FrameRefusal::Count {
        expected,
        found: walk.pages,
    };
    if walk.pages != expected || facts.len() != expected as usize {
        return Err(count);
    }
    for (index, &fact) in (0u32..).zip(facts) {
        if fact & PAGE_FOREIGN != 0 {
            return Err(FrameRefusal::Foreign(index));
        }
        if fact & PAGE_RAM == 0 {
            return Err(FrameRefusal::NotRam(index));
        }
        if fact & PAGE_BOUNCE != 0 {
            return Err(FrameRefusal::Bounce(index));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE: Walk = Walk {
        first_offset: Some(0),
        ragged: None,
        pages: 3,
    };

    #[test]
    fn ordinary_ram_from_a_page_boundary_is_granted() {
        assert_eq!(accept_frames(WHOLE, 3, &[PAGE_RAM; 3]), Ok(()));
    }

    #[test]
    fn the_table_must_start_at_a_page_and_hold_every_page() {
        let none = Walk {
            first_offset: None,
            ragged: None,
            pages: 0,
        };
        assert_eq!(accept_frames(none, 0, &[]), Err(FrameRefusal::NoSegment));
        let off = Walk {
            first_offset: Some(512),
            ..WHOLE
        };
        assert_eq!(
            accept_frames(off, 3, &[PAGE_RAM; 3]),
            Err(FrameRefusal::Offset(512))
        );
        let short = Walk { pages: 2, ..WHOLE };
        assert_eq!(
            accept_frames(short, 3, &[PAGE_RAM; 2]),
            Err(FrameRefusal::Count {
                expected: 3,
                found: 2
            })
        );
        // The walk stops one page past the size.
        let long = Walk { pages: 4, ..WHOLE };
        assert!(matches!(
            accept_frames(long, 3, &[PAGE_RAM; 3]),
            Err(FrameRefusal::Count { found: 4, .. })
        ));
        // A segment in part of a page, even with the right page count.
        let ragged = Walk {
            ragged: Some(1),
            ..WHOLE
        };
        assert_eq!(
            accept_frames(ragged, 3, &[PAGE_RAM; 3]),
            Err(FrameRefusal::Ragged(1))
        );
        // Facts must cover exactly the pages expected.
        assert!(accept_frames(WHOLE, 3, &[PAGE_RAM; 2]).is_err());
    }

    #[test]
    fn mmio_bounce_buffers_and_foreign_frames_are_refused() {
        let cases = [
            (0, FrameRefusal::NotRam(1)),
            (PAGE_RAM | PAGE_BOUNCE, FrameRefusal::Bounce(1)),
            (PAGE_RAM | PAGE_FOREIGN, FrameRefusal::Foreign(1)),
            // Another domain's, whatever else is said of it.
            (PAGE_FOREIGN, FrameRefusal::Foreign(1)),
        ];
        for (fact, refusal) in cases {
            assert_eq!(
                accept_frames(WHOLE, 3, &[PAGE_RAM, fact, PAGE_RAM]),
                Err(refusal)
            );
            assert_eq!(refusal.errno(), errno::EINVAL);
        }
    }

    #[test]
    fn each_refusal_says_what_to_do() {
        use std::string::ToString;
        let said = |r: FrameRefusal| r.to_string();
        assert!(said(FrameRefusal::NotRam(3)).starts_with("page 3 is not system RAM"));
        assert!(said(FrameRefusal::Ragged(2)).contains("segment 2 in part of a page"));
        assert!(said(FrameRefusal::NotRam(3)).contains("allocate the buffer in system memory"));
        assert!(said(FrameRefusal::Offset(512)).contains("512 bytes into a page"));
        assert!(said(FrameRefusal::Foreign(0)).contains("share it from the domain that made it"));
        let long = FrameRefusal::Count {
            expected: 2,
            found: 3,
        };
        assert!(said(long).contains("more pages than its size of 2 pages"));
        let short = FrameRefusal::Count {
            expected: 2,
            found: 1,
        };
        assert!(said(short).contains("mapped 1 pages for a size of 2 pages"));
    }

    #[test]
    fn a_descriptor_that_is_no_dma_buf_is_einval() {
        assert_eq!(pin_errno(PinStep::Get, errno::EBADF), errno::EBADF);
        assert_eq!(pin_errno(PinStep::Get, errno::EINVAL), errno::EINVAL);
        assert_eq!(pin_errno(PinStep::Get, errno::ENOMEM), errno::EINVAL);
        assert_eq!(pin_errno(PinStep::Attach, errno::ENOMEM), errno::ENOMEM);
        assert_eq!(pin_errno(PinStep::Map, errno::EBUSY), errno::EBUSY);
    }
}
