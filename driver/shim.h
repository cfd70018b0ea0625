/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C side of hyper_dmabuf.ko (driver/shim/, one file per concern),
 * and its contract with Rust: bindgen binds this header.
 *
 * Linux 6.12's Rust crate has no abstractions for misc devices, XenBus,
 * grant tables, dma-buf, VMAs or MMU notifiers. The shim therefore holds
 * only what Rust cannot do there yet:
 * (1) the static tables the kernel calls through (file_operations, two
 * xenbus_drivers, dma_buf_ops, vm_operations, the MMU interval notifier's
 * ops, module parameters, debugfs files), each slot a trampoline into an
 * hdm_rs_* function implemented in Rust;
 * (2) out-of-line copies of the inline helpers and macros bindgen cannot
 * bind, among them the walk of a pinned dma-buf's DMA addresses into Xen
 * frames (pin.c);
 * (3) the PV grant PTEs (pte.c) and what keeps them true, the MMU
 * interval notifier of each user mapping (vma.c) and the kernel vmap
 * (gbuf.c).
 *
 * It decides nothing. It reports facts (a dma-buf's pages and what they
 * are, what an mmap asks for, a parameter as root set it, the domain's
 * kind, what a mapping callback ran into) and carries out what Rust
 * returns: which pages may be granted, the mmap's verdict, how this
 * domain maps a peer's pages, whether a line is logged.
 */
#ifndef HYPER_DMABUF_SHIM_H
#define HYPER_DMABUF_SHIM_H

#include <linux/types.h>

struct dma_buf;
struct file;
struct page;
struct seq_file;
struct xenbus_device;
struct gnttab_map_grant_ref;
struct gnttab_unmap_grant_ref;

/* --- domain ---------------------------------------------------------------- */
bool hdm_xen_domain(void);
bool hdm_xen_initial_domain(void);
bool hdm_xen_pv_domain(void);
bool hdm_xen_hvm_domain(void);
bool hdm_xen_pvh_domain(void);
/* xen_feature(XENFEAT_auto_translated_physmap): false in PV. */
bool hdm_xen_auto_translated(void);

/* --- module parameters and fault injection --------------------------------- */
bool hdm_inject_warn_requested(void);
void hdm_warn(const char *msg);
unsigned long long hdm_param_max_buffer_mib(void);
unsigned int hdm_param_ring_page_order(void);
unsigned int hdm_param_max_imports(void);
unsigned int hdm_param_fence_timeout_ms(void);
bool hdm_param_allow_rw(void);
bool hdm_param_log_buffers(void);

/* --- registration ---------------------------------------------------------- */
/*
 * Misc device, debugfs, then the frontend and backend xenbus drivers;
 * `tables` (enum hdm_page_tables) is how imported buffers will be mapped:
 * the grant-PTE vmap needs a page with no frame, allocated here.
 */
int hdm_register_all(unsigned int tables);
void hdm_unregister_all(void);

/* --- the control device ---------------------------------------------------- */
/* One per open file of /dev/xen/hyper_dmabuf: its event wait queue. */
struct hdm_file;
void hdm_file_wake(struct hdm_file *hf);

/*
 * Rust's per-file context, or NULL when it cannot be allocated. `file` is
 * the file being opened, for hdm_file_capable() during the call.
 */
void *hdm_rs_open(struct hdm_file *hf, struct file *file);
/* file_ns_capable(file, &init_user_ns, cap): the opener's capability. */
bool hdm_file_capable(struct file *file, int cap);
void hdm_rs_release(void *ctx);
bool hdm_rs_readable(void *ctx);
/* One whole event into `buf` (a user address), or -EAGAIN when none. */
long hdm_rs_read(void *ctx, unsigned long buf, size_t len);
long hdm_rs_ioctl(void *ctx, unsigned int cmd, unsigned long arg);

/* --- XenBus ---------------------------------------------------------------- */
int hdm_rs_front_probe(struct xenbus_device *dev);
void hdm_rs_front_changed(struct xenbus_device *dev, unsigned int peer_state);
void hdm_rs_front_remove(struct xenbus_device *dev);
int hdm_rs_back_probe(struct xenbus_device *dev);
void hdm_rs_back_changed(struct xenbus_device *dev, unsigned int peer_state);
void hdm_rs_back_remove(struct xenbus_device *dev);

/*
 * Backend: a watch on the device's own `online` node (the toolstack sets it
 * to 0 to remove a device); fires hdm_rs_back_online(dev), and once at once.
 */
struct hdm_online_watch;
struct hdm_online_watch *hdm_watch_online(struct xenbus_device *dev);
void hdm_unwatch_online(struct hdm_online_watch *w);
void hdm_rs_back_online(struct xenbus_device *dev);

const char *hdm_xb_nodename(struct xenbus_device *dev);
const char *hdm_xb_otherend(struct xenbus_device *dev);
int hdm_xb_otherend_id(struct xenbus_device *dev);
/*
 * xenbus_switch_state() and xenbus_frontend_closed(), serialised by one
 * lock: the XenBus callbacks switch a device's state, and so does a
 * connection's event work when the peer breaks a ring, concurrently.
 */
void hdm_xb_switch_state(struct xenbus_device *dev, int state);
void hdm_xb_frontend_closed(struct xenbus_device *dev);
void hdm_xb_set_drvdata(struct xenbus_device *dev, void *data);
void *hdm_xb_get_drvdata(struct xenbus_device *dev);
/* xenbus_read() into `buf`: length, -ENOENT, -ENOSPC if it does not fit. */
int hdm_xs_read(unsigned int txn, const char *path, char *buf, unsigned int len);
int hdm_xs_write(unsigned int txn, const char *path, const char *value);
int hdm_xs_rm(unsigned int txn, const char *path);	/* -ENOENT if absent */
int hdm_xs_transaction_start(unsigned int *txn);
int hdm_xs_transaction_end(unsigned int txn, bool abort);

/*
 * An event-channel IRQ (bound with a _lateeoi call) whose events are
 * handled in process context at normal priority: the hard handler only
 * queues a work item, which runs hdm_rs_irq(ctx) for one bounded pass and
 * then either queues itself again (more work: other tasks and other
 * connections run in between) or signals the late EOI, which lets the
 * next event in. NULL on failure (the IRQ is left bound).
 */
struct hdm_irq;
struct hdm_irq *hdm_irq_request(unsigned int irq, void *ctx, const char *name);
/* Queues a pass as if the peer had signalled. */
void hdm_irq_kick(struct hdm_irq *hi);
/*
 * Runs hdm_rs_irq_notice(ctx) in `ms` milliseconds, unless it is queued
 * already: the connection's own timer for a notification it owes the peer,
 * so that a peer cannot make the driver-wide timed work run at its pace.
 */
void hdm_irq_notice_later(struct hdm_irq *hi, unsigned int ms);
void hdm_rs_irq_notice(void *ctx);
/* Stops the IRQ, waits for a running pass, unbinds the IRQ (and port). */
void hdm_irq_free(struct hdm_irq *hi);
/* What one pass of hdm_rs_irq() found. */
enum hdm_irq_pass {
	HDM_IRQ_IDLE = 0,	/* nothing: the event was spurious */
	HDM_IRQ_DONE = 1,	/* work done, none left */
	HDM_IRQ_MORE = 2,	/* budget spent, work left */
};
int hdm_rs_irq(void *ctx);

/* --- debugfs --------------------------------------------------------------- */
void hdm_rs_stats_show(struct seq_file *m);
void hdm_rs_rings_show(struct seq_file *m);
void hdm_seq_puts(struct seq_file *m, const char *s);

/* --- deferred work: one delayed work item for timed jobs ------------------- */
/* Runs hdm_rs_tick() in `ms` milliseconds (sooner if already queued sooner). */
void hdm_tick_schedule(unsigned int ms);
/* Returns milliseconds until it wants to run again, 0 for never. */
unsigned int hdm_rs_tick(void);
void hdm_tick_cancel(void);

/* --- export side: a dma-buf's pages as Xen frames -------------------------- */
struct hdm_pin {
	struct dma_buf *buf;
	void *attach;
	void *sgt;
	unsigned long long size;
};
/* Where hdm_pin_dmabuf() failed. */
enum hdm_pin_step {
	HDM_PIN_GET = 1,	/* dma_buf_get */
	HDM_PIN_ATTACH = 2,	/* dma_buf_attach to our device */
	HDM_PIN_MAP = 3,	/* dma_buf_map_attachment */
};
/* dma_buf_get + attach + map: 0, or that call's -errno and *step. */
int hdm_pin_dmabuf(int fd, struct hdm_pin *pin, unsigned int *step);
void hdm_unpin_dmabuf(struct hdm_pin *pin);
/* What hdm_pin_frames() saw of one page (common::grantable::PAGE_*). */
enum hdm_page_fact {
	HDM_PAGE_RAM = 1 << 0,		/* pfn_valid(): in the memory map */
	HDM_PAGE_BOUNCE = 1 << 1,	/* a swiotlb bounce buffer */
	HDM_PAGE_FOREIGN = 1 << 2,	/* PageForeign(): another domain's frame */
};
/* What hdm_pin_frames() saw of the sg table. */
struct hdm_pin_walk {
	bool segment;			/* it has a first segment */
	unsigned int first_offset;	/* that segment's DMA address into its page */
	bool ragged;			/* a segment is not whole pages: */
	unsigned int ragged_segment;	/* the first such */
	unsigned int pages;		/* DMA pages, counted up to cap + 1 */
};
/*
 * Walks a pinned dma-buf's DMA pages in order, deriving each page's frame
 * as gntdev does: for each of the first `cap`, its frame into gfns[i] (0
 * unless RAM) and its HDM_PAGE_* facts into facts[i]. Rust decides
 * whether they may be granted (common::grantable::accept_frames).
 */
void hdm_pin_frames(struct hdm_pin *pin, unsigned long long *gfns,
		    unsigned char *facts, unsigned int cap, struct hdm_pin_walk *walk);

/* A zeroed page we own (for directory pages), its frame and contents. */
struct page *hdm_alloc_page(void);
void hdm_free_page(struct page *page);
unsigned long long hdm_page_gfn(struct page *page);
void *hdm_page_address(struct page *page);

/* --- import side ------------------------------------------------------------ */
/* gnttab_set_map_op / gnttab_set_unmap_op at the page's kernel mapping. */
void hdm_set_map_op(struct gnttab_map_grant_ref *op, struct page *page,
		    unsigned int flags, unsigned int ref, unsigned short domid);
void hdm_set_unmap_op(struct gnttab_unmap_grant_ref *op, struct page *page,
		      unsigned int flags, unsigned int handle);
/* The largest page_count() of `pages` (Rust judges what it means). */
int hdm_pages_max_refs(struct page **pages, unsigned int count);
/* gnttab_unmap_refs over a whole array, once no page is busy. */
int hdm_unmap_refs(struct gnttab_unmap_grant_ref *ops, struct page **pages,
		   unsigned int count);
/* Pin or unpin this module: it cannot be unloaded while pinned. */
void hdm_module_get(void);
void hdm_module_put(void);

/* The imported buffer as a dma-buf over grant-mapped pages. */
/* How its pages go into page tables (Rust decides, from the domain). */
enum hdm_page_tables {
	HDM_PT_PAGES = 0,	/* auto-translated: the pages themselves */
	HDM_PT_GRANT_PTES = 1,	/* PV: each grant mapped again into its PTE */
};
struct hdm_gbuf_desc {
	struct page **pages;
	const unsigned int *refs;
	unsigned int nr;
	unsigned short domid;
	bool writable;
	unsigned int tables;	/* enum hdm_page_tables */
	unsigned long long size;
	void *owner;
};
/* dma_buf_export over `desc` (copied); ERR_PTR on failure. */
struct dma_buf *hdm_gbuf_export(const struct hdm_gbuf_desc *desc);
/* Called once, from the dma-buf's release, with desc->owner. */
void hdm_rs_gbuf_release(void *owner);

/* What an mmap of an imported buffer asks for: facts of the VMA and buffer. */
struct hdm_mmap_request {
	unsigned long long pgoff;		/* vm_pgoff */
	unsigned long long pages;		/* vma_pages() */
	unsigned long long buffer_pages;	/* desc->nr */
	bool shared;				/* VM_MAYSHARE */
	bool write;				/* VM_WRITE */
	bool buffer_writable;			/* desc->writable */
};
/* What becomes of the VMA (common::mmap::MmapPlan). */
enum hdm_mmap_plan {
	HDM_MMAP_NEVER_WRITABLE = 1 << 0,	/* clear VM_MAYWRITE */
	HDM_MMAP_DONTCOPY = 1 << 1,		/* set VM_DONTCOPY */
	HDM_MMAP_DONTDUMP = 1 << 2,		/* set VM_DONTDUMP */
	HDM_MMAP_DONTEXPAND = 1 << 3,		/* set VM_DONTEXPAND */
};
/* The HDM_MMAP_* bits to apply, or a negative errno: refuse the mmap. */
int hdm_rs_mmap_verdict(struct hdm_mmap_request req);

/*
 * What a user mapping's callbacks ran into, for a log line: Rust decides
 * whether it is printed (the budget of the peer that caused it, or the
 * driver's own). Never called with hdm_vma.lock held: it may sleep.
 */
enum hdm_vma_event {
	HDM_VMA_COPY_NO_MEMORY = 1,	/* a copied VMA got no state: it SIGBUSes */
	HDM_VMA_PTE_CLEARED = 2,	/* our grant PTE found empty: a bug */
	HDM_VMA_FAULT_UNMAPPED = 3,	/* the peer's grant did not map on a fault */
};
void hdm_rs_vma_event(unsigned int event, unsigned short domid, int status);
/* A new reference to a live dma-buf, false if it is being released. */
bool hdm_dmabuf_tryget(struct dma_buf *buf);
/* The dma-buf of fd, referenced, or an ERR_PTR (EBADF, EINVAL). */
struct dma_buf *hdm_dmabuf_get(int fd);
void hdm_dmabuf_put(struct dma_buf *buf);
/* Reserve an O_CLOEXEC fd; install consumes one dma-buf reference. */
int hdm_fd_reserve(void);
void hdm_fd_install(int fd, struct dma_buf *buf);
void hdm_fd_unreserve(int fd);

/* --- fences that cross domains (fence.c) ------------------------------------ */
struct dma_fence;
struct hdm_fence_watch;
/*
 * Importer: an unsignalled fence standing for one of domain `peer`'s (its
 * own context; it pins this module until released), or NULL without
 * memory (GFP_NOWAIT: made under the connection's lock).
 */
struct dma_fence *hdm_fence_new(unsigned short peer);
struct dma_fence *hdm_fence_get(struct dma_fence *fence);
void hdm_fence_put(struct dma_fence *fence);
/* Signals `fence`, with `error` (a -errno) unless 0, and drops a reference. */
void hdm_fence_end(struct dma_fence *fence, int error);
/*
 * Adds `fence` to `buf`'s reservation object with write usage if its lock
 * is free now: 0, -EBUSY, or -ENOMEM.
 */
int hdm_dmabuf_try_add_fence(struct dma_buf *buf, struct dma_fence *fence);
/*
 * Locks `buf`'s reservation object with room for `count` more fences: 0,
 * or -errno and not locked. Then add each with write usage (no
 * allocation), then unlock.
 */
int hdm_dmabuf_lock_for_fences(struct dma_buf *buf, unsigned int count);
void hdm_dmabuf_add_reserved_fence(struct dma_buf *buf, struct dma_fence *fence);
void hdm_dmabuf_unlock(struct dma_buf *buf);
bool hdm_fence_is_signalled(struct dma_fence *fence);
/* dma_fence_begin_signalling() and _end_signalling(): lockdep's section. */
bool hdm_fence_begin_signalling(void);
void hdm_fence_end_signalling(bool cookie);
/*
 * Exporter: the unsignalled write fences of `buf`, as one, to watch: NULL
 * if every one has signalled, ERR_PTR(-ENOMEM).
 */
struct hdm_fence_watch *hdm_fence_watch_new(struct dma_buf *buf);
/* Frees a watch never armed. */
void hdm_fence_watch_free(struct hdm_fence_watch *w);
/*
 * Arms it (it is the shim's from now on): hdm_rs_fence_signalled() runs in
 * process context once the fence signals, even if it has already.
 */
void hdm_fence_watch_arm(struct hdm_fence_watch *w, unsigned long long conn,
			 unsigned long long id);
void hdm_rs_fence_signalled(unsigned long long conn, unsigned long long id, int error);
/*
 * Stops the armed watches of connection `conn` that have not signalled
 * (they never report); how many.
 */
unsigned int hdm_fence_watch_cancel(unsigned long long conn);

/* --- misc ------------------------------------------------------------------ */
void hdm_get_random_bytes(void *buf, unsigned int len);
void hdm_msleep(unsigned int ms);
unsigned long long hdm_jiffies_ms(void);

#endif /* HYPER_DMABUF_SHIM_H */
