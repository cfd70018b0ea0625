/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the shim's C files share among themselves; Rust sees none of it
 * (its contract is ../shim.h). Each concern's registration, which
 * module.c runs in order; the control device, which exporters map their
 * buffers for; and the imported buffer's C state with the PV grant-PTE
 * mappings that its mmap (vma.c) and vmap (gbuf.c) both make (pte.c).
 */
#ifndef HYPER_DMABUF_SHIM_INTERNAL_H
#define HYPER_DMABUF_SHIM_INTERNAL_H

#include <linux/mm.h>
#include <linux/types.h>
#include <xen/grant_table.h>

#include "../shim.h"

struct device;
struct dma_buf;
struct vm_area_struct;

/* --- registration, each undone by its pair (module.c calls them) ------------- */
/* fops.c: the misc device /dev/xen/hyper_dmabuf, with a 64-bit DMA mask. */
int hdm_misc_register(void);
void hdm_misc_unregister(void);
/* Its struct device: what the driver attaches to the dma-bufs it pins. */
struct device *hdm_misc_device(void);
/* pin.c: that device's DMA "mapping", a page's physical address. */
extern const struct dma_map_ops hdm_identity_dma_ops;
/* debugfs.c: /sys/kernel/debug/hyper_dmabuf and its files. */
void hdm_debugfs_register(void);
void hdm_debugfs_unregister(void);
/* xenbus.c: the frontend and backend drivers. */
int hdm_xenbus_register(void);
void hdm_xenbus_unregister(void);
/*
 * module.c: the driver's workqueue (WQ_MEM_RECLAIM): the event work, the
 * timed work and the fence watches run on it, as they signal or time out
 * fences that reclaim may wait for.
 */
extern struct workqueue_struct *hdm_wq;
/* tick.c: stops the timed work for good, before the queue goes. */
void hdm_tick_disable(void);
/* fence.c: no watch left, and none reporting (after the XenBus drivers). */
void hdm_fence_watch_drain(void);
/* gbuf.c: the grant-PTE vmap's page with no frame (HDM_PT_GRANT_PTES). */
void hdm_hole_page_alloc(void);
void hdm_hole_page_free(void);

/* --- the imported buffer (gbuf.c) ---------------------------------------------- */
struct hdm_gbuf {
	struct hdm_gbuf_desc d;
	/* PV vmap: the grants mapped a second time into vmalloc space. */
	void *vaddr;
	grant_handle_t *vmap_handles;
	u64 *vmap_ptes;
};

/* vma.c: the dma-buf's mmap. */
int hdm_gbuf_mmap(struct dma_buf *buf, struct vm_area_struct *vma);

/* --- PV grant mappings made straight into PTEs (pte.c) ------------------------ */
/*
 * PV only: grant mappings made straight into page-table entries (user
 * PTEs of an mmap, or kernel PTEs of a vmap), one per page. A normal PTE
 * may not point at another domain's frame in PV, so these PTEs are written
 * by Xen (GNTMAP_contains_pte) and must be cleared by Xen too: the core
 * never clears one itself because every path that would first runs the
 * MMU notifier (user PTEs) or our vunmap (kernel PTEs).
 */
struct hdm_pte_map {
	struct hdm_gbuf *gb;
	unsigned long start;	/* virtual address of the first page */
	unsigned int first;	/* its index in the buffer */
	unsigned int count;
	u64 *ptes;		/* machine addresses of the PTEs, once known */
	grant_handle_t *handles;
};

/* Room for `count` PTEs and handles, none mapped. */
int hdm_pte_map_alloc(struct hdm_pte_map *pm, unsigned int count);
void hdm_pte_map_free(struct hdm_pte_map *pm);
/* apply_to_page_range() callback: records the PTE's machine address. */
int hdm_collect_pte(pte_t *pte, unsigned long addr, void *data);
/* Grant-map flags for a PTE of `gb`, writable only if both allow it. */
unsigned int hdm_pte_flags(const struct hdm_gbuf *gb, bool user, bool write);
/* Map every page of `pm` into the PTEs collected for it, all or nothing. */
int hdm_pte_map(struct hdm_pte_map *pm, unsigned int flags);
/* Undo the mappings of [from, to) that exist. Returns how many failed. */
unsigned int hdm_pte_unmap(struct hdm_pte_map *pm, unsigned int from, unsigned int to);

#endif /* HYPER_DMABUF_SHIM_INTERNAL_H */
