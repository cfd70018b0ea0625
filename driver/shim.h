/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C side of hyper_dmabuf.ko, the contract between shim.c and Rust.
 *
 * Linux 6.12's Rust crate has no abstractions for misc devices, XenBus,
 * grant tables, dma-buf, VMAs or MMU notifiers. The shim therefore holds
 * (1) the static tables the kernel calls through (file_operations, two
 * xenbus_drivers, dma_buf_ops, vm_operations, mmu notifier ops), each slot
 * a trampoline into an hdm_rs_* function implemented in Rust;
 * (2) out-of-line copies of the inline helpers and macros bindgen cannot
 * bind; and (3) the two memory-management mechanisms that only make sense
 * next to the mm internals they touch: walking a dma-buf's DMA addresses
 * into Xen frames, and mapping grant-mapped pages into user and kernel
 * page tables (the imported dma-buf's mmap/vmap). Every decision (what to
 * grant, map, accept or refuse, and when) is taken in Rust.
 */
#ifndef HYPER_DMABUF_SHIM_H
#define HYPER_DMABUF_SHIM_H

#include <linux/types.h>

struct dma_buf;
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
/* Our own domain id, read once from xenstore's "domid" at load. */
int hdm_read_own_domid(void);

/* --- module parameters and fault injection --------------------------------- */
bool hdm_inject_warn_requested(void);
void hdm_warn(const char *msg);
unsigned long long hdm_param_max_buffer_bytes(void);
unsigned int hdm_param_ring_page_order(void);
bool hdm_param_allow_rw(void);
bool hdm_param_log_buffers(void);
/* A line a peer can trigger at will: pr_warn/pr_info, rate-limited. */
void hdm_log_ratelimited(u16 peer, const char *msg);
void hdm_log_info_ratelimited(u16 peer, const char *msg);

/* --- registration ---------------------------------------------------------- */
/* Misc device, debugfs, then the frontend and backend xenbus drivers. */
int hdm_register_all(void);
void hdm_unregister_all(void);

/* --- the control device ---------------------------------------------------- */
/* One per open file of /dev/xen/hyper_dmabuf: its event wait queue. */
struct hdm_file;
void hdm_file_wake(struct hdm_file *hf);

/* Rust's per-file context, or NULL when it cannot be allocated. */
void *hdm_rs_open(struct hdm_file *hf);
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
void hdm_xb_set_drvdata(struct xenbus_device *dev, void *data);
void *hdm_xb_get_drvdata(struct xenbus_device *dev);
/* xenbus_read() into `buf`: length, -ENOENT, -ENOSPC if it does not fit. */
int hdm_xs_read(unsigned int txn, const char *path, char *buf, unsigned int len);
int hdm_xs_write(unsigned int txn, const char *path, const char *value);
int hdm_xs_rm(unsigned int txn, const char *path);
int hdm_xs_transaction_start(unsigned int *txn);
int hdm_xs_transaction_end(unsigned int txn, bool abort);

/* Threaded handler for an event-channel IRQ: hdm_rs_irq(ctx) then late EOI. */
int hdm_request_irq(unsigned int irq, void *ctx, const char *name);
/* Returns whether the pass found work (else the EOI is marked spurious). */
bool hdm_rs_irq(void *ctx);

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
/* dma_buf_get + attach to our device + map: -EBADF, -EINVAL, ... */
int hdm_pin_dmabuf(int fd, struct hdm_pin *pin);
void hdm_unpin_dmabuf(struct hdm_pin *pin);
/*
 * The frame of every 4 KiB page of a pinned dma-buf, in order, as gntdev
 * derives them: offset 0, exactly `nr` pages, each ordinary RAM and not a
 * bounce buffer; -EINVAL otherwise.
 */
int hdm_pin_frames(struct hdm_pin *pin, unsigned long long *gfns, unsigned int nr);

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
/* gnttab_unmap_refs_sync over a whole array (waits for page references). */
int hdm_unmap_refs_sync(struct gnttab_unmap_grant_ref *ops, struct page **pages,
			unsigned int count);

/* The imported buffer as a dma-buf over grant-mapped pages. */
struct hdm_gbuf_desc {
	struct page **pages;
	const unsigned int *refs;
	unsigned int nr;
	unsigned short domid;
	bool writable;
	unsigned long long size;
	void *owner;
};
/* dma_buf_export over `desc` (copied); ERR_PTR on failure. */
struct dma_buf *hdm_gbuf_export(const struct hdm_gbuf_desc *desc);
/* Called once, from the dma-buf's release, with desc->owner. */
void hdm_rs_gbuf_release(void *owner);
/* A new reference to a live dma-buf, false if it is being released. */
bool hdm_dmabuf_tryget(struct dma_buf *buf);
void hdm_dmabuf_put(struct dma_buf *buf);
/* Reserve an O_CLOEXEC fd; install consumes one dma-buf reference. */
int hdm_fd_reserve(void);
void hdm_fd_install(int fd, struct dma_buf *buf);
void hdm_fd_unreserve(int fd);

/* --- misc ------------------------------------------------------------------ */
void hdm_get_random_bytes(void *buf, unsigned int len);
void hdm_msleep(unsigned int ms);
unsigned long long hdm_jiffies_ms(void);

#endif /* HYPER_DMABUF_SHIM_H */
