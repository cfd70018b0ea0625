// SPDX-License-Identifier: MIT
//! Simulated machine memory: 4 KiB pages of atomic words, and windows over
//! one or several of them that the protocol code reads through
//! [`SharedMem`], exactly as the kernel reads granted or mapped pages.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::shmem::SharedMem;

/// Words in one page.
pub const PAGE_WORDS: usize = XEN_PAGE_SIZE / 4;

/// The contents of one machine page. Every domain that maps the page holds
/// a clone of the same `Arc`, so a write by one is seen by the others.
pub type PageMem = Arc<[AtomicU32]>;

/// A zeroed page.
pub fn new_page() -> PageMem {
    (0..PAGE_WORDS).map(|_| AtomicU32::new(0)).collect()
}

/// A virtually contiguous view of pages, as `vmap` gives the kernel: the
/// pages of a ring, of a directory page, or of an imported buffer.
///
/// A read-only window models a read-only mapping: a write through it
/// faults, which in the simulation is a panic (a bug of the simulated
/// driver, never something a peer can cause).
#[derive(Clone)]
pub struct Window {
    pages: Vec<PageMem>,
    writable: bool,
}

impl Window {
    /// A window over `pages`, in order.
    pub fn new(pages: Vec<PageMem>, writable: bool) -> Self {
        Window { pages, writable }
    }

    /// One window over the pages of `parts`, in order.
    pub fn join(parts: &[Window], writable: bool) -> Self {
        let pages = parts.iter().flat_map(|w| w.pages.iter().cloned()).collect();
        Window { pages, writable }
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Number of pages.
    pub fn nr_pages(&self) -> usize {
        self.pages.len()
    }

    /// Runs `f` on each page piece of `[offset, offset + len)`: the page,
    /// the offset in it, and the offset in the caller's buffer.
    fn pieces(&self, offset: usize, len: usize, mut f: impl FnMut(&[AtomicU32], usize, usize)) {
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let page = &self.pages[at / XEN_PAGE_SIZE];
            let in_page = at % XEN_PAGE_SIZE;
            let take = (XEN_PAGE_SIZE - in_page).min(len - done);
            f(&page[..], in_page, done);
            done += take;
        }
    }

    fn check_write(&self) {
        assert!(self.writable, "write through a read-only mapping");
    }
}

impl SharedMem for Window {
    fn len(&self) -> usize {
        self.pages.len() * XEN_PAGE_SIZE
    }

    fn read_u32(&self, offset: usize) -> u32 {
        self.pages[offset / XEN_PAGE_SIZE][..].read_u32(offset % XEN_PAGE_SIZE)
    }

    fn write_u32(&self, offset: usize, value: u32) {
        self.check_write();
        self.pages[offset / XEN_PAGE_SIZE][..].write_u32(offset % XEN_PAGE_SIZE, value)
    }

    fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.pages[offset / XEN_PAGE_SIZE][..].load_acquire_u32(offset % XEN_PAGE_SIZE)
    }

    fn store_release_u32(&self, offset: usize, value: u32) {
        self.check_write();
        self.pages[offset / XEN_PAGE_SIZE][..].store_release_u32(offset % XEN_PAGE_SIZE, value)
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        let len = dst.len();
        self.pieces(offset, len, |page, at, done| {
            let take = (XEN_PAGE_SIZE - at).min(len - done);
            page.read_bytes(at, &mut dst[done..done + take]);
        });
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) {
        self.check_write();
        self.pieces(offset, src.len(), |page, at, done| {
            let take = (XEN_PAGE_SIZE - at).min(src.len() - done);
            page.write_bytes(at, &src[done..done + take]);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_page_boundaries() {
        let w = Window::new(vec![new_page(), new_page(), new_page()], true);
        let src: Vec<u8> = (0..6000u32).map(|i| (i * 7 + 3) as u8).collect();
        w.write_bytes(3000, &src);
        let mut dst = vec![0u8; 6000];
        w.read_bytes(3000, &mut dst);
        assert_eq!(dst, src);
        w.write_u32(4096, 0xdead_beef);
        assert_eq!(w.read_u32(4096), 0xdead_beef);
    }

    #[test]
    #[should_panic(expected = "read-only")]
    fn read_only_window_refuses_writes() {
        Window::new(vec![new_page()], false).write_bytes(0, &[1]);
    }
}
