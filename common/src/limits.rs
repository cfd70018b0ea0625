// SPDX-License-Identifier: MIT
//! Protocol limits and Xen constants.
//!
//! Every size a peer or user space sends is checked against one of these
//! before anything is allocated or mapped.

/// Size of a Xen page: the unit of grants and of the page directory,
/// whatever the guest's own `PAGE_SIZE` is.
pub const XEN_PAGE_SIZE: usize = 4096;

/// `log2(XEN_PAGE_SIZE)`.
pub const XEN_PAGE_SHIFT: u32 = 12;

/// Grant references below this are reserved by Xen (`GNTTAB_NR_RESERVED_ENTRIES`)
/// for the toolstack and are never valid in a page directory.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// Largest private metadata blob attached to an export, in bytes (as in the
/// original hyper_dmabuf).
pub const MAX_PRIV_LEN: usize = 192;

/// Most buffers one peer may have announced to us at a time, by default;
/// an EXPORT past it is answered `NoSpace` (the importer's memory is the
/// peer's to spend only this far). The driver's `max_imports` module
/// parameter sets it ([`max_imports_from_param`]).
pub const MAX_IMPORTS_PER_PEER: usize = 4096;

/// Largest `max_imports` taken as it is: a peer may make us keep about
/// 1 KiB per buffer it announces, so 2^20 buffers (about 1 GiB) is
/// more than any configuration should allow.
pub const MAX_IMPORTS_PARAM: u32 = 1 << 20;

/// The per-peer import limit the `max_imports` module parameter (`raw`, as
/// root set it) gives: at least 1, at most [`MAX_IMPORTS_PARAM`].
pub const fn max_imports_from_param(raw: u32) -> usize {
    if raw == 0 {
        1
    } else if raw > MAX_IMPORTS_PARAM {
        MAX_IMPORTS_PARAM as usize
    } else {
        raw as usize
    }
}

/// Default largest buffer a domain accepts to import or export: 1 GiB.
pub const DEFAULT_MAX_BUFFER_BYTES: u64 = 1 << 30;

/// Largest `max_buffer_mib` module parameter taken as it is: 1 TiB (in
/// MiB). A larger value means this, so that the size in bytes cannot
/// overflow; it is far above [`PGDIR_MAX_BUFFER_BYTES`] anyway.
pub const MAX_BUFFER_MIB_PARAM: u64 = 1 << 20;

/// The largest buffer in bytes that the `max_buffer_mib` module parameter
/// (`mib`, as root set it) allows.
pub const fn max_buffer_bytes_from_mib(mib: u64) -> u64 {
    let mib = if mib > MAX_BUFFER_MIB_PARAM {
        MAX_BUFFER_MIB_PARAM
    } else {
        mib
    };
    mib << 20
}

/// Hard ceiling of the page directory format: a root page of leaf
/// references, each leaf full of data references (about 3.96 GiB). A
/// configured maximum above this is clamped to it.
pub const PGDIR_MAX_BUFFER_BYTES: u64 = (super::pgdir::ROOT_ENTRIES as u64)
    * (super::pgdir::LEAF_ENTRIES as u64)
    * (XEN_PAGE_SIZE as u64);

/// Largest ring, as a power-of-two number of pages (`XENBUS_MAX_RING_GRANTS`
/// is 16 pages in Linux).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// Ring size used when the toolstack does not ask for one: 4 pages, that is
/// 32 slots of [`super::wire::SLOT_SIZE`] bytes per ring.
pub const DEFAULT_RING_PAGE_ORDER: u32 = 2;

/// Number of Xen pages needed to hold `size` bytes, or `None` if it does
/// not fit a `u32` page count.
pub const fn pages_for_bytes(size: u64) -> Option<u32> {
    let pages = size.div_ceil(XEN_PAGE_SIZE as u64);
    if pages > u32::MAX as u64 {
        None
    } else {
        Some(pages as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_import_limit_parameter_is_clamped() {
        assert_eq!(max_imports_from_param(0), 1);
        assert_eq!(max_imports_from_param(1), 1);
        assert_eq!(max_imports_from_param(4096), MAX_IMPORTS_PER_PEER);
        assert_eq!(max_imports_from_param(10_000), 10_000);
        assert_eq!(max_imports_from_param(u32::MAX), 1 << 20);
    }

    #[test]
    fn the_buffer_parameter_is_mib_clamped_to_a_tebibyte() {
        assert_eq!(max_buffer_bytes_from_mib(1024), DEFAULT_MAX_BUFFER_BYTES);
        assert_eq!(max_buffer_bytes_from_mib(0), 0);
        assert_eq!(max_buffer_bytes_from_mib(1 << 20), 1 << 40);
        assert_eq!(max_buffer_bytes_from_mib(u64::MAX), 1 << 40);
    }
}
