// SPDX-License-Identifier: MIT
//! What a user mapping of an imported buffer may be, and what it becomes.
//!
//! The kernel module's C shim reports what an `mmap` of an imported
//! dma-buf asks for (shared or private, writable or not, which pages) and
//! carries out the verdict: the VMA flags to set or clear, or the errno
//! (docs/uapi.md, "What a process can do"). How the pages are then put in
//! the page tables (the pages themselves, or the peer's grants mapped
//! again into each PTE in PV) is the shim's mechanism.

use super::ledger::errno;

/// What an `mmap` asks of an imported buffer: the VMA's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapRequest {
    /// `VM_MAYSHARE`: `MAP_SHARED` (even of a read-only file).
    pub shared: bool,
    /// `VM_WRITE`: mapped with `PROT_WRITE`.
    pub write: bool,
    /// First page of the buffer mapped (`vm_pgoff`).
    pub pgoff: u64,
    /// Pages mapped.
    pub pages: u64,
}

/// The imported buffer an `mmap` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedBuffer {
    /// Its pages.
    pub pages: u64,
    /// Whether it was imported read-write.
    pub writable: bool,
}

/// What becomes of an accepted mapping's VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapPlan {
    /// Clear `VM_MAYWRITE`: `mprotect` can never make it writable.
    pub never_writable: bool,
    /// `VM_DONTCOPY`: not inherited by `fork` unless the process asks
    /// (`MADV_DOFORK`), as gntdev's mappings.
    pub dont_copy: bool,
    /// `VM_DONTDUMP`: never in a core dump.
    pub dont_dump: bool,
    /// `VM_DONTEXPAND`: never grown by `mremap`.
    pub dont_expand: bool,
}

/// Why an `mmap` of an imported buffer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmapRefusal {
    /// A private mapping would copy on write: the copy would no longer be
    /// the shared buffer (and in PV would replace a grant PTE behind
    /// Xen's back).
    Private,
    /// `PROT_WRITE` of a read-only import.
    WriteReadOnly,
    /// Pages past the end of the buffer (the dma-buf core refuses these
    /// first; checked again since the shim indexes the pages with them).
    OutOfRange,
}

impl MmapRefusal {
    /// The errno `mmap` returns.
    pub const fn errno(self) -> i32 {
        match self {
            MmapRefusal::Private | MmapRefusal::OutOfRange => errno::EINVAL,
            MmapRefusal::WriteReadOnly => errno::EACCES,
        }
    }
}

/// The verdict on mapping `req` of `buffer`: shared mappings only,
/// writable only if the import is, inside the buffer; a mapping of a
/// read-only import can never become writable, and none is inherited by
/// `fork` unasked, grown, or dumped.
///
/// # Errors
///
/// The first [`MmapRefusal`] that applies, in the order of its variants.
pub fn mmap_verdict(buffer: MappedBuffer, req: MmapRequest) -> Result<MmapPlan, MmapRefusal> {
    if !req.shared {
        return Err(MmapRefusal::Private);
    }
    if req.write && !buffer.writable {
        return Err(MmapRefusal::WriteReadOnly);
    }
    match req.pgoff.checked_add(req.pages) {
        Some(end) if end <= buffer.pages => {}
        _ => return Err(MmapRefusal::OutOfRange),
    }
    Ok(MmapPlan {
        never_writable: !buffer.writable,
        dont_copy: true,
        dont_dump: true,
        dont_expand: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RO: MappedBuffer = MappedBuffer {
        pages: 4,
        writable: false,
    };
    const RW: MappedBuffer = MappedBuffer {
        pages: 4,
        writable: true,
    };
    const SHARED: MmapRequest = MmapRequest {
        shared: true,
        write: false,
        pgoff: 0,
        pages: 4,
    };

    #[test]
    fn shared_mappings_inside_the_buffer_are_accepted() {
        let plan = mmap_verdict(RW, SHARED).unwrap();
        assert!(!plan.never_writable);
        assert!(plan.dont_copy && plan.dont_dump && plan.dont_expand);
        let tail = MmapRequest {
            pgoff: 3,
            pages: 1,
            write: true,
            ..SHARED
        };
        assert!(mmap_verdict(RW, tail).is_ok());
    }

    #[test]
    fn a_read_only_import_maps_read_only_for_good() {
        assert!(mmap_verdict(RO, SHARED).unwrap().never_writable);
        let write = MmapRequest {
            write: true,
            ..SHARED
        };
        assert_eq!(mmap_verdict(RO, write), Err(MmapRefusal::WriteReadOnly));
        assert_eq!(MmapRefusal::WriteReadOnly.errno(), errno::EACCES);
    }

    #[test]
    fn private_mappings_and_pages_past_the_end_are_einval() {
        let private = MmapRequest {
            shared: false,
            ..SHARED
        };
        // Private is judged first, even of a read-only import written.
        let private_write = MmapRequest {
            write: true,
            ..private
        };
        assert_eq!(mmap_verdict(RO, private_write), Err(MmapRefusal::Private));
        for (pgoff, pages) in [(0, 5), (4, 1), (u64::MAX, 2)] {
            let req = MmapRequest {
                pgoff,
                pages,
                ..SHARED
            };
            assert_eq!(mmap_verdict(RW, req), Err(MmapRefusal::OutOfRange));
        }
        assert_eq!(MmapRefusal::Private.errno(), errno::EINVAL);
        assert_eq!(MmapRefusal::OutOfRange.errno(), errno::EINVAL);
    }
}
