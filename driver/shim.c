// SPDX-License-Identifier: GPL-2.0
/*
 * C side of hyper_dmabuf.ko; see shim.h for what belongs here and why.
 */
#include <linux/bug.h>
#include <linux/capability.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/dma-buf.h>
#include <linux/dma-direct.h>
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/interrupt.h>
#include <linux/iosys-map.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/poll.h>
#include <linux/random.h>
#include <linux/scatterlist.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/swiotlb.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <xen/events.h>
#include <xen/features.h>
#include <xen/grant_table.h>
#include <xen/page.h>
#include <xen/xen.h>
#include <xen/xenbus.h>
#include <asm/xen/hypercall.h>
#include <asm/xen/page.h>

#include "shim.h"

MODULE_IMPORT_NS(DMA_BUF);

/* --- module parameters ------------------------------------------------------ */

static bool inject_warn;
module_param(inject_warn, bool, 0444);
MODULE_PARM_DESC(inject_warn,
		 "Test only: print a kernel WARNING at load (VM runner self-test)");

static unsigned long long max_buffer_mib = 1024;
module_param(max_buffer_mib, ullong, 0444);
MODULE_PARM_DESC(max_buffer_mib,
		 "Largest buffer shared or accepted, in MiB (default 1024)");

static unsigned int ring_page_order = 2;
module_param(ring_page_order, uint, 0444);
MODULE_PARM_DESC(ring_page_order,
		 "Ring size offered or asked for, 2^order pages per ring (default 2, at most 4)");

static bool allow_rw = true;
module_param(allow_rw, bool, 0444);
MODULE_PARM_DESC(allow_rw,
		 "Backend: allow read-write exports unless the toolstack says otherwise (default 1)");

/*
 * Off by default: one line per buffer operation floods a serial console
 * (and the log) on a busy host. Writable at run time for debugging.
 */
static bool log_buffers;
module_param(log_buffers, bool, 0644);
MODULE_PARM_DESC(log_buffers,
		 "Log every buffer exported, announced, imported, released and unexported (default 0)");

bool hdm_param_log_buffers(void)
{
	return READ_ONCE(log_buffers);
}

bool hdm_inject_warn_requested(void)
{
	return inject_warn;
}

void hdm_warn(const char *msg)
{
	WARN(1, "%s\n", msg);
}

unsigned long long hdm_param_max_buffer_bytes(void)
{
	return min(max_buffer_mib, 1ULL << 20) << 20;
}

unsigned int hdm_param_ring_page_order(void)
{
	return ring_page_order;
}

bool hdm_param_allow_rw(void)
{
	return allow_rw;
}

/*
 * Lines a peer can trigger are rate-limited per peer: with one budget for
 * all, a peer that makes the driver refuse much (or a busy well-behaved
 * one) would silence the lines about every other peer. Domids hash into a
 * small table; two peers share a budget only if they collide.
 */
#define HDM_LOG_SLOTS 64
static struct ratelimit_state hdm_warn_budget[HDM_LOG_SLOTS];
static struct ratelimit_state hdm_info_budget[HDM_LOG_SLOTS];

static void hdm_log_budgets_init(void)
{
	int i;

	for (i = 0; i < HDM_LOG_SLOTS; i++) {
		ratelimit_state_init(&hdm_warn_budget[i], DEFAULT_RATELIMIT_INTERVAL,
				     DEFAULT_RATELIMIT_BURST);
		ratelimit_state_init(&hdm_info_budget[i], DEFAULT_RATELIMIT_INTERVAL,
				     DEFAULT_RATELIMIT_BURST);
	}
}

void hdm_log_ratelimited(u16 peer, const char *msg)
{
	if (__ratelimit(&hdm_warn_budget[peer % HDM_LOG_SLOTS]))
		pr_warn("hyper_dmabuf: %s\n", msg);
}

void hdm_log_info_ratelimited(u16 peer, const char *msg)
{
	if (__ratelimit(&hdm_info_budget[peer % HDM_LOG_SLOTS]))
		pr_info("hyper_dmabuf: %s\n", msg);
}

/* --- domain ----------------------------------------------------------------- */

bool hdm_xen_domain(void)
{
	return xen_domain();
}

bool hdm_xen_initial_domain(void)
{
	return xen_initial_domain();
}

bool hdm_xen_pv_domain(void)
{
	return xen_pv_domain();
}

bool hdm_xen_hvm_domain(void)
{
	return xen_hvm_domain();
}

bool hdm_xen_pvh_domain(void)
{
	return xen_pvh_domain();
}

bool hdm_xen_auto_translated(void)
{
	return xen_feature(XENFEAT_auto_translated_physmap);
}

int hdm_read_own_domid(void)
{
	unsigned int id = xenbus_read_unsigned("domid", "", 0x7fff);

	return id < DOMID_FIRST_RESERVED ? (int)id : -ENOENT;
}

void hdm_get_random_bytes(void *buf, unsigned int len)
{
	get_random_bytes(buf, len);
}

void hdm_msleep(unsigned int ms)
{
	msleep(ms);
}

unsigned long long hdm_jiffies_ms(void)
{
	return jiffies64_to_msecs(get_jiffies_64());
}

/* --- the control device -------------------------------------------------------- */

struct hdm_file {
	void *ctx;
	wait_queue_head_t wq;
};

static struct miscdevice hdm_misc;

void hdm_file_wake(struct hdm_file *hf)
{
	wake_up_interruptible(&hf->wq);
}

static int hdm_fop_open(struct inode *inode, struct file *file)
{
	struct hdm_file *hf = kzalloc(sizeof(*hf), GFP_KERNEL);

	if (!hf)
		return -ENOMEM;
	init_waitqueue_head(&hf->wq);
	hf->ctx = hdm_rs_open(hf);
	if (!hf->ctx) {
		kfree(hf);
		return -ENOMEM;
	}
	file->private_data = hf;
	return 0;
}

static int hdm_fop_release(struct inode *inode, struct file *file)
{
	struct hdm_file *hf = file->private_data;

	hdm_rs_release(hf->ctx);
	kfree(hf);
	return 0;
}

static ssize_t hdm_fop_read(struct file *file, char __user *buf, size_t len,
			    loff_t *off)
{
	struct hdm_file *hf = file->private_data;

	for (;;) {
		long ret = hdm_rs_read(hf->ctx, (unsigned long)buf, len);

		if (ret != -EAGAIN || (file->f_flags & O_NONBLOCK))
			return ret;
		if (wait_event_interruptible(hf->wq, hdm_rs_readable(hf->ctx)))
			return -ERESTARTSYS;
	}
}

static __poll_t hdm_fop_poll(struct file *file, struct poll_table_struct *wait)
{
	struct hdm_file *hf = file->private_data;

	poll_wait(file, &hf->wq, wait);
	return hdm_rs_readable(hf->ctx) ? EPOLLIN | EPOLLRDNORM : 0;
}

static long hdm_fop_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct hdm_file *hf = file->private_data;

	/* The device is root-only (0600); also refuse a descriptor passed on
	 * to an unprivileged process. */
	if (!file_ns_capable(file, &init_user_ns, CAP_SYS_ADMIN))
		return -EPERM;
	return hdm_rs_ioctl(hf->ctx, cmd, arg);
}

static const struct file_operations hdm_fops = {
	.owner = THIS_MODULE,
	.open = hdm_fop_open,
	.release = hdm_fop_release,
	.read = hdm_fop_read,
	.poll = hdm_fop_poll,
	.unlocked_ioctl = hdm_fop_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice hdm_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "xen/hyper_dmabuf",
	.fops = &hdm_fops,
	.mode = 0600,
};

/* --- XenBus ----------------------------------------------------------------- */

static const struct xenbus_device_id hdm_xenbus_ids[] = {
	{ "hyper_dmabuf" },
	{ "" }
};

static int hdm_front_probe(struct xenbus_device *dev,
			   const struct xenbus_device_id *id)
{
	return hdm_rs_front_probe(dev);
}

static void hdm_front_changed(struct xenbus_device *dev,
			      enum xenbus_state state)
{
	hdm_rs_front_changed(dev, state);
}

static int hdm_back_probe(struct xenbus_device *dev,
			  const struct xenbus_device_id *id)
{
	return hdm_rs_back_probe(dev);
}

static void hdm_back_changed(struct xenbus_device *dev, enum xenbus_state state)
{
	hdm_rs_back_changed(dev, state);
}

static struct xenbus_driver hdm_front_driver = {
	.ids = hdm_xenbus_ids,
	.probe = hdm_front_probe,
	.otherend_changed = hdm_front_changed,
	.remove = hdm_rs_front_remove,
	.not_essential = true,
};

static struct xenbus_driver hdm_back_driver = {
	.ids = hdm_xenbus_ids,
	.probe = hdm_back_probe,
	.otherend_changed = hdm_back_changed,
	.remove = hdm_rs_back_remove,
	.allow_rebind = true,
};

struct hdm_online_watch {
	struct xenbus_watch watch;
	struct xenbus_device *dev;
};

static void hdm_online_changed(struct xenbus_watch *watch, const char *path,
			       const char *token)
{
	struct hdm_online_watch *w = container_of(watch, struct hdm_online_watch, watch);

	hdm_rs_back_online(w->dev);
}

struct hdm_online_watch *hdm_watch_online(struct xenbus_device *dev)
{
	struct hdm_online_watch *w = kzalloc(sizeof(*w), GFP_KERNEL);

	if (!w)
		return NULL;
	w->dev = dev;
	if (xenbus_watch_pathfmt(dev, &w->watch, NULL, hdm_online_changed,
				 "%s/online", dev->nodename)) {
		kfree(w);
		return NULL;
	}
	return w;
}

void hdm_unwatch_online(struct hdm_online_watch *w)
{
	unregister_xenbus_watch(&w->watch);
	kfree(w->watch.node);
	kfree(w);
}

const char *hdm_xb_nodename(struct xenbus_device *dev)
{
	return dev->nodename;
}

const char *hdm_xb_otherend(struct xenbus_device *dev)
{
	return dev->otherend;
}

int hdm_xb_otherend_id(struct xenbus_device *dev)
{
	return dev->otherend_id;
}

void hdm_xb_set_drvdata(struct xenbus_device *dev, void *data)
{
	dev_set_drvdata(&dev->dev, data);
}

void *hdm_xb_get_drvdata(struct xenbus_device *dev)
{
	return dev_get_drvdata(&dev->dev);
}

static struct xenbus_transaction hdm_txn(unsigned int id)
{
	struct xenbus_transaction t = { .id = id };

	return t;
}

int hdm_xs_read(unsigned int txn, const char *path, char *buf, unsigned int len)
{
	unsigned int got;
	char *value = xenbus_read(hdm_txn(txn), path, "", &got);

	if (IS_ERR(value))
		return PTR_ERR(value);
	if (got > len || got > INT_MAX) {
		kfree(value);
		return -ENOSPC;
	}
	memcpy(buf, value, got);
	kfree(value);
	return got;
}

int hdm_xs_write(unsigned int txn, const char *path, const char *value)
{
	return xenbus_write(hdm_txn(txn), path, "", value);
}

int hdm_xs_rm(unsigned int txn, const char *path)
{
	int err = xenbus_rm(hdm_txn(txn), path, "");

	return err == -ENOENT ? 0 : err;
}

int hdm_xs_transaction_start(unsigned int *txn)
{
	struct xenbus_transaction t;
	int err = xenbus_transaction_start(&t);

	*txn = t.id;
	return err;
}

int hdm_xs_transaction_end(unsigned int txn, bool abort)
{
	return xenbus_transaction_end(hdm_txn(txn), abort);
}

static irqreturn_t hdm_irq_thread(int irq, void *ctx)
{
	bool work = hdm_rs_irq(ctx);

	xen_irq_lateeoi(irq, work ? 0 : XEN_EOI_FLAG_SPURIOUS);
	return IRQ_HANDLED;
}

int hdm_request_irq(unsigned int irq, void *ctx, const char *name)
{
	return request_threaded_irq(irq, NULL, hdm_irq_thread, IRQF_ONESHOT,
				    name, ctx);
}

/* --- debugfs ---------------------------------------------------------------- */

static struct dentry *hdm_debugfs;
static struct page *hdm_hole_page;

static int hdm_stats_show(struct seq_file *m, void *unused)
{
	hdm_rs_stats_show(m);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(hdm_stats);

static int hdm_rings_show(struct seq_file *m, void *unused)
{
	hdm_rs_rings_show(m);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(hdm_rings);

void hdm_seq_puts(struct seq_file *m, const char *s)
{
	seq_puts(m, s);
}

/*
 * debugfs "check": test instrumentation for the dma-buf ops user space
 * cannot reach. A process writes the number of one of its dma-buf fds; the
 * driver uses it as a kernel importer would (attach, map into an sg table,
 * begin CPU access, vmap), sums its 64-bit words, and undoes it all. A read
 * then returns "pages=N segments=M sum=0x..." or "error=-E".
 */
static DEFINE_MUTEX(hdm_check_lock);
static char hdm_check_result[96];

static int hdm_check_dmabuf(struct dma_buf *buf)
{
	struct dma_buf_attachment *attach;
	struct iosys_map map;
	struct sg_table *sgt;
	struct scatterlist *sg;
	u64 sum = 0, bytes = 0;
	const u64 *words;
	unsigned int i;
	size_t n;
	int err;

	attach = dma_buf_attach(buf, hdm_misc.this_device);
	if (IS_ERR(attach))
		return PTR_ERR(attach);
	sgt = dma_buf_map_attachment_unlocked(attach, DMA_BIDIRECTIONAL);
	if (IS_ERR(sgt)) {
		err = PTR_ERR(sgt);
		goto out_detach;
	}
	for_each_sgtable_dma_sg(sgt, sg, i)
		bytes += sg_dma_len(sg);
	err = dma_buf_begin_cpu_access(buf, DMA_FROM_DEVICE);
	if (err)
		goto out_unmap;
	err = dma_buf_vmap_unlocked(buf, &map);
	if (err)
		goto out_cpu;
	words = map.vaddr;
	for (n = 0; n < buf->size / sizeof(*words); n++) {
		sum += words[n];
		if (!(n & 0xfffff))
			cond_resched();
	}
	dma_buf_vunmap_unlocked(buf, &map);
	scnprintf(hdm_check_result, sizeof(hdm_check_result),
		  "pages=%llu segments=%u mapped=%llu sum=0x%016llx\n",
		  (u64)(buf->size >> PAGE_SHIFT), sgt->nents, bytes, sum);
out_cpu:
	dma_buf_end_cpu_access(buf, DMA_FROM_DEVICE);
out_unmap:
	dma_buf_unmap_attachment_unlocked(attach, sgt, DMA_BIDIRECTIONAL);
out_detach:
	dma_buf_detach(buf, attach);
	return err;
}

static ssize_t hdm_check_write(struct file *file, const char __user *ubuf,
			       size_t len, loff_t *off)
{
	struct dma_buf *buf;
	int fd, err;

	err = kstrtoint_from_user(ubuf, len, 10, &fd);
	if (err)
		return err;
	buf = dma_buf_get(fd);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	mutex_lock(&hdm_check_lock);
	err = hdm_check_dmabuf(buf);
	if (err)
		scnprintf(hdm_check_result, sizeof(hdm_check_result), "error=%d\n", err);
	mutex_unlock(&hdm_check_lock);
	dma_buf_put(buf);
	return err ? err : len;
}

static ssize_t hdm_check_read(struct file *file, char __user *ubuf, size_t len,
			      loff_t *off)
{
	ssize_t ret;

	mutex_lock(&hdm_check_lock);
	ret = simple_read_from_buffer(ubuf, len, off, hdm_check_result,
				      strlen(hdm_check_result));
	mutex_unlock(&hdm_check_lock);
	return ret;
}

static const struct file_operations hdm_check_fops = {
	.owner = THIS_MODULE,
	.write = hdm_check_write,
	.read = hdm_check_read,
	.llseek = default_llseek,
};

/* --- timed jobs --------------------------------------------------------------- */

static void hdm_tick_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(hdm_tick_work, hdm_tick_fn);

static void hdm_tick_fn(struct work_struct *work)
{
	unsigned int next = hdm_rs_tick();

	if (next)
		hdm_tick_schedule(next);
}

void hdm_tick_schedule(unsigned int ms)
{
	unsigned long delay = msecs_to_jiffies(ms);

	/* Queue it, or bring a later run forward. */
	if (!queue_delayed_work(system_wq, &hdm_tick_work, delay)) {
		unsigned long due = hdm_tick_work.timer.expires;

		if (time_after(due, jiffies + delay))
			mod_delayed_work(system_wq, &hdm_tick_work, delay);
	}
}

void hdm_tick_cancel(void)
{
	cancel_delayed_work_sync(&hdm_tick_work);
}

/* --- registration ------------------------------------------------------------- */

int hdm_register_all(void)
{
	int err;

	hdm_log_budgets_init();
	err = misc_register(&hdm_misc);

	if (err)
		return err;
	/* Exporters map their buffers for this device, as gntdev's. */
	err = dma_coerce_mask_and_coherent(hdm_misc.this_device, DMA_BIT_MASK(64));
	if (err)
		goto out_misc;
	/* PV vmap reserves kernel ranges with a page that has no frame. */
	if (!xen_feature(XENFEAT_auto_translated_physmap) &&
	    gnttab_alloc_pages(1, &hdm_hole_page))
		hdm_hole_page = NULL;
	hdm_debugfs = debugfs_create_dir("hyper_dmabuf", NULL);
	debugfs_create_file("stats", 0400, hdm_debugfs, NULL, &hdm_stats_fops);
	debugfs_create_file("rings", 0400, hdm_debugfs, NULL, &hdm_rings_fops);
	debugfs_create_file("check", 0600, hdm_debugfs, NULL, &hdm_check_fops);
	err = xenbus_register_frontend(&hdm_front_driver);
	if (err)
		goto out_debugfs;
	err = xenbus_register_backend(&hdm_back_driver);
	if (err)
		goto out_front;
	return 0;

out_front:
	xenbus_unregister_driver(&hdm_front_driver);
out_debugfs:
	debugfs_remove(hdm_debugfs);
	if (hdm_hole_page)
		gnttab_free_pages(1, &hdm_hole_page);
out_misc:
	misc_deregister(&hdm_misc);
	return err;
}

void hdm_unregister_all(void)
{
	xenbus_unregister_driver(&hdm_back_driver);
	xenbus_unregister_driver(&hdm_front_driver);
	debugfs_remove(hdm_debugfs);
	if (hdm_hole_page)
		gnttab_free_pages(1, &hdm_hole_page);
	misc_deregister(&hdm_misc);
}

/* --- export side ---------------------------------------------------------------- */

int hdm_pin_dmabuf(int fd, struct hdm_pin *pin)
{
	struct dma_buf_attachment *attach;
	struct sg_table *sgt;
	struct dma_buf *buf;
	int err;

	memset(pin, 0, sizeof(*pin));
	buf = dma_buf_get(fd);
	if (IS_ERR(buf))
		return PTR_ERR(buf) == -EBADF ? -EBADF : -EINVAL;
	attach = dma_buf_attach(buf, hdm_misc.this_device);
	if (IS_ERR(attach)) {
		err = PTR_ERR(attach);
		goto out_put;
	}
	sgt = dma_buf_map_attachment_unlocked(attach, DMA_BIDIRECTIONAL);
	if (IS_ERR(sgt)) {
		err = PTR_ERR(sgt);
		goto out_detach;
	}
	pin->buf = buf;
	pin->attach = attach;
	pin->sgt = sgt;
	pin->size = buf->size;
	return 0;

out_detach:
	dma_buf_detach(buf, attach);
out_put:
	dma_buf_put(buf);
	return err;
}

void hdm_unpin_dmabuf(struct hdm_pin *pin)
{
	if (!pin->buf)
		return;
	dma_buf_unmap_attachment_unlocked(pin->attach, pin->sgt, DMA_BIDIRECTIONAL);
	dma_buf_detach(pin->buf, pin->attach);
	dma_buf_put(pin->buf);
	memset(pin, 0, sizeof(*pin));
}

int hdm_pin_frames(struct hdm_pin *pin, unsigned long long *gfns, unsigned int nr)
{
	struct device *dev = hdm_misc.this_device;
	struct sg_table *sgt = pin->sgt;
	struct sg_dma_page_iter iter;
	unsigned int i = 0;

	if (!sgt->sgl || sgt->sgl->offset)
		return -EINVAL;
	/*
	 * With Xen's swiotlb (dom0, or a PV guest with PCI devices) a DMA
	 * address is a machine address, whose pfn is found through the m2p,
	 * as gntdev-dmabuf does. A PV domU without it uses dma-direct, whose
	 * addresses are pseudo-physical: gntdev's m2p lookup would then read
	 * a foreign frame number.
	 */
	bool machine = get_dma_ops(dev) != NULL;

	for_each_sgtable_dma_page(sgt, &iter, 0) {
		dma_addr_t addr = sg_page_iter_dma_address(&iter);
		phys_addr_t phys = dma_to_phys(dev, addr);
		unsigned long pfn = machine ? bfn_to_pfn(XEN_PFN_DOWN(phys)) : PHYS_PFN(phys);

		if (i >= nr)
			return -EINVAL;
		/* Only ordinary RAM of our own may be granted: no MMIO/VRAM,
		 * no bounce buffer standing in for the real pages, no page
		 * that maps another domain's frame (an import exported on). */
		if (!pfn_valid(pfn) || swiotlb_find_pool(dev, PFN_PHYS(pfn)) ||
		    PageForeign(pfn_to_page(pfn)))
			return -EINVAL;
		gfns[i++] = pfn_to_gfn(pfn);
	}
	return i == nr ? 0 : -EINVAL;
}

struct page *hdm_alloc_page(void)
{
	return alloc_page(GFP_KERNEL | __GFP_ZERO);
}

void hdm_free_page(struct page *page)
{
	__free_page(page);
}

unsigned long long hdm_page_gfn(struct page *page)
{
	return xen_page_to_gfn(page);
}

void *hdm_page_address(struct page *page)
{
	return page_address(page);
}

/* --- import side: the kernel mapping -------------------------------------------- */

void hdm_set_map_op(struct gnttab_map_grant_ref *op, struct page *page,
		    unsigned int flags, unsigned int ref, unsigned short domid)
{
	gnttab_set_map_op(op, (unsigned long)page_address(page), flags, ref, domid);
	op->handle = INVALID_GRANT_HANDLE;
}

void hdm_set_unmap_op(struct gnttab_unmap_grant_ref *op, struct page *page,
		      unsigned int flags, unsigned int handle)
{
	gnttab_set_unmap_op(op, (unsigned long)page_address(page), flags, handle);
}

int hdm_unmap_refs_sync(struct gnttab_unmap_grant_ref *ops, struct page **pages,
			unsigned int count)
{
	struct gntab_unmap_queue_data item = {
		.unmap_ops = ops,
		.kunmap_ops = NULL,
		.pages = pages,
		.count = count,
	};

	return gnttab_unmap_refs_sync(&item);
}

/* --- import side: the dma-buf ------------------------------------------------------ */

struct hdm_gbuf {
	struct hdm_gbuf_desc d;
	/* PV vmap: the grants mapped a second time into vmalloc space. */
	void *vaddr;
	grant_handle_t *vmap_handles;
	u64 *vmap_ptes;
};

/* PV only: one grant mapping per page at user or kernel PTEs. */
struct hdm_pte_map {
	struct hdm_gbuf *gb;
	unsigned long start;	/* virtual address of the first page */
	unsigned int first;	/* its index in the buffer */
	unsigned int count;
	u64 *ptes;		/* machine addresses of the PTEs */
	grant_handle_t *handles;
};

static int hdm_collect_pte(pte_t *pte, unsigned long addr, void *data)
{
	struct hdm_pte_map *pm = data;
	unsigned long i = (addr - pm->start) >> PAGE_SHIFT;

	if (i >= pm->count)
		return -EINVAL;
	pm->ptes[i] = arbitrary_virt_to_machine(pte).maddr;
	return 0;
}

/* Undo the mappings of [from, to) that exist. Returns how many failed. */
static unsigned int hdm_pte_unmap(struct hdm_pte_map *pm, unsigned int from,
				  unsigned int to)
{
	struct gnttab_unmap_grant_ref op;
	unsigned int i, failed = 0;

	for (i = from; i < to; i++) {
		if (pm->handles[i] == INVALID_GRANT_HANDLE)
			continue;
		gnttab_set_unmap_op(&op, pm->ptes[i], GNTMAP_contains_pte,
				    pm->handles[i]);
		if (HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, &op, 1) ||
		    op.status != GNTST_okay) {
			failed++;
			continue;
		}
		pm->handles[i] = INVALID_GRANT_HANDLE;
	}
	return failed;
}

/* Map every page of `pm` into the PTEs collected for it, all or nothing. */
static int hdm_pte_map(struct hdm_pte_map *pm, unsigned int flags)
{
	struct gnttab_map_grant_ref *ops;
	unsigned int i;
	int err = 0;

	ops = kvcalloc(pm->count, sizeof(*ops), GFP_KERNEL);
	if (!ops)
		return -ENOMEM;
	for (i = 0; i < pm->count; i++) {
		if (!pm->gb->d.writable)
			flags |= GNTMAP_readonly;
		gnttab_set_map_op(&ops[i], pm->ptes[i], flags,
				  pm->gb->d.refs[pm->first + i], pm->gb->d.domid);
	}
	gnttab_batch_map(ops, pm->count);
	for (i = 0; i < pm->count; i++) {
		if (ops[i].status == GNTST_okay) {
			pm->handles[i] = ops[i].handle;
		} else {
			pm->handles[i] = INVALID_GRANT_HANDLE;
			err = -EIO;
		}
	}
	kvfree(ops);
	if (err && hdm_pte_unmap(pm, 0, pm->count))
		pr_err("hyper_dmabuf: could not undo a partial PTE grant mapping\n");
	return err;
}

static int hdm_pte_map_alloc(struct hdm_pte_map *pm, unsigned int count)
{
	unsigned int i;

	pm->count = count;
	pm->ptes = kvcalloc(count, sizeof(*pm->ptes), GFP_KERNEL);
	pm->handles = kvcalloc(count, sizeof(*pm->handles), GFP_KERNEL);
	if (!pm->ptes || !pm->handles) {
		kvfree(pm->ptes);
		kvfree(pm->handles);
		return -ENOMEM;
	}
	for (i = 0; i < count; i++)
		pm->handles[i] = INVALID_GRANT_HANDLE;
	return 0;
}

static void hdm_pte_map_free(struct hdm_pte_map *pm)
{
	kvfree(pm->ptes);
	kvfree(pm->handles);
}

static struct sg_table *hdm_gbuf_map(struct dma_buf_attachment *attach,
				     enum dma_data_direction dir)
{
	struct hdm_gbuf *gb = attach->dmabuf->priv;
	struct scatterlist *sg;
	struct sg_table *sgt;
	unsigned int i;
	int err;

	sgt = kzalloc(sizeof(*sgt), GFP_KERNEL);
	if (!sgt)
		return ERR_PTR(-ENOMEM);
	/* One entry per page: in PV, neighbouring pfns are scattered frames. */
	err = sg_alloc_table(sgt, gb->d.nr, GFP_KERNEL);
	if (err)
		goto out_free;
	for_each_sgtable_sg(sgt, sg, i)
		sg_set_page(sg, gb->d.pages[i], PAGE_SIZE, 0);
	err = dma_map_sgtable(attach->dev, sgt, dir, DMA_ATTR_SKIP_CPU_SYNC);
	if (err)
		goto out_table;
	return sgt;

out_table:
	sg_free_table(sgt);
out_free:
	kfree(sgt);
	return ERR_PTR(err);
}

static void hdm_gbuf_unmap(struct dma_buf_attachment *attach,
			   struct sg_table *sgt, enum dma_data_direction dir)
{
	dma_unmap_sgtable(attach->dev, sgt, dir, DMA_ATTR_SKIP_CPU_SYNC);
	sg_free_table(sgt);
	kfree(sgt);
}

static void hdm_gbuf_release(struct dma_buf *buf)
{
	struct hdm_gbuf *gb = buf->priv;

	hdm_rs_gbuf_release(gb->d.owner);
	kfree(gb);
}

static int hdm_gbuf_cpu_access(struct dma_buf *buf, enum dma_data_direction dir)
{
	/* Grant mappings are write-back RAM on x86 in both domains. */
	return 0;
}

/* PV user mappings: one grant PTE per page, undone before the core zaps. */
struct hdm_vma {
	struct mmu_interval_notifier notifier;
	struct mutex lock;
	struct hdm_pte_map pm;
};

static bool hdm_vma_invalidate(struct mmu_interval_notifier *mn,
			       const struct mmu_notifier_range *range,
			       unsigned long cur_seq)
{
	struct hdm_vma *v = container_of(mn, struct hdm_vma, notifier);
	unsigned long start, end;
	unsigned int from, to;

	if (!mmu_notifier_range_blockable(range))
		return false;
	mutex_lock(&v->lock);
	mmu_interval_set_seq(mn, cur_seq);
	start = max(range->start, v->pm.start);
	end = min(range->end, v->pm.start + ((unsigned long)v->pm.count << PAGE_SHIFT));
	if (start < end) {
		from = (start - v->pm.start) >> PAGE_SHIFT;
		to = DIV_ROUND_UP(end - v->pm.start, PAGE_SIZE);
		if (hdm_pte_unmap(&v->pm, from, to))
			pr_err("hyper_dmabuf: could not unmap a user grant PTE\n");
	}
	mutex_unlock(&v->lock);
	return true;
}

static const struct mmu_interval_notifier_ops hdm_vma_notifier_ops = {
	.invalidate = hdm_vma_invalidate,
};

static void hdm_vma_close(struct vm_area_struct *vma)
{
	struct hdm_vma *v = vma->vm_private_data;

	mutex_lock(&v->lock);
	if (hdm_pte_unmap(&v->pm, 0, v->pm.count))
		pr_err("hyper_dmabuf: could not unmap a user grant PTE\n");
	mutex_unlock(&v->lock);
	mmu_interval_notifier_remove(&v->notifier);
	hdm_pte_map_free(&v->pm);
	kfree(v);
}

static int hdm_vma_no_split(struct vm_area_struct *vma, unsigned long addr)
{
	return -EINVAL;
}

static int hdm_vma_no_mremap(struct vm_area_struct *vma)
{
	return -EINVAL;
}

static struct page *hdm_vma_special_page(struct vm_area_struct *vma,
					 unsigned long addr)
{
	struct hdm_vma *v = vma->vm_private_data;

	return v->pm.gb->d.pages[v->pm.first + ((addr - vma->vm_start) >> PAGE_SHIFT)];
}

static const struct vm_operations_struct hdm_vma_ops = {
	.close = hdm_vma_close,
	.may_split = hdm_vma_no_split,
	.mremap = hdm_vma_no_mremap,
	.find_special_page = hdm_vma_special_page,
};

static int hdm_gbuf_mmap_pv(struct hdm_gbuf *gb, struct vm_area_struct *vma)
{
	unsigned int flags = GNTMAP_host_map | GNTMAP_application_map |
			     GNTMAP_contains_pte | (1 << _GNTMAP_guest_avail0);
	struct hdm_vma *v;
	int err;

	v = kzalloc(sizeof(*v), GFP_KERNEL);
	if (!v)
		return -ENOMEM;
	mutex_init(&v->lock);
	v->pm.gb = gb;
	v->pm.start = vma->vm_start;
	v->pm.first = vma->vm_pgoff;
	err = hdm_pte_map_alloc(&v->pm, vma_pages(vma));
	if (err)
		goto out_free;
	/* No fork copies, splits or moves of grant PTEs. */
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP | VM_MIXEDMAP | VM_DONTCOPY);
	err = mmu_interval_notifier_insert_locked(&v->notifier, vma->vm_mm,
						  vma->vm_start,
						  vma->vm_end - vma->vm_start,
						  &hdm_vma_notifier_ops);
	if (err)
		goto out_pm;
	mmu_interval_read_begin(&v->notifier);
	err = apply_to_page_range(vma->vm_mm, vma->vm_start,
				  vma->vm_end - vma->vm_start, hdm_collect_pte, &v->pm);
	if (!err) {
		mutex_lock(&v->lock);
		err = hdm_pte_map(&v->pm, flags);
		mutex_unlock(&v->lock);
	}
	if (err)
		goto out_notifier;
	vma->vm_private_data = v;
	vma->vm_ops = &hdm_vma_ops;
	return 0;

out_notifier:
	mmu_interval_notifier_remove(&v->notifier);
out_pm:
	hdm_pte_map_free(&v->pm);
out_free:
	kfree(v);
	return err;
}

static int hdm_gbuf_mmap(struct dma_buf *buf, struct vm_area_struct *vma)
{
	struct hdm_gbuf *gb = buf->priv;

	/* Shared mappings only (MAP_SHARED of a read-only file has
	 * VM_MAYSHARE without VM_SHARED): COW of grant PTEs is not possible. */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (!gb->d.writable) {
		if (vma->vm_flags & VM_WRITE)
			return -EACCES;
		vm_flags_clear(vma, VM_MAYWRITE);
	}
	if (!xen_feature(XENFEAT_auto_translated_physmap))
		return hdm_gbuf_mmap_pv(gb, vma);
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
	return vm_map_pages(vma, gb->d.pages, gb->d.nr);
}

/*
 * Kernel mapping. Auto-translated: map the pages. PV: a normal PTE may
 * not point at a foreign frame, so reserve the range by mapping a page
 * that has no frame N times (its PTEs come out empty) and grant-map each
 * frame into its PTE, as xenbus_map_ring_valloc does for rings.
 */
static int hdm_gbuf_vmap_pv(struct hdm_gbuf *gb, struct iosys_map *map)
{
	struct hdm_pte_map pm = { .gb = gb, .first = 0 };
	struct page **hole;
	unsigned int i;
	void *vaddr;
	int err;

	if (!hdm_hole_page)
		return -EOPNOTSUPP;
	hole = kvcalloc(gb->d.nr, sizeof(*hole), GFP_KERNEL);
	if (!hole)
		return -ENOMEM;
	for (i = 0; i < gb->d.nr; i++)
		hole[i] = hdm_hole_page;
	vaddr = vm_map_ram(hole, gb->d.nr, NUMA_NO_NODE);
	kvfree(hole);
	if (!vaddr)
		return -ENOMEM;
	err = hdm_pte_map_alloc(&pm, gb->d.nr);
	if (err)
		goto out_vunmap;
	pm.start = (unsigned long)vaddr;
	/* vm_map_ram() built the page tables; init_mm is not exported, so find
	 * each (empty) PTE with lookup_address(). */
	for (i = 0; i < gb->d.nr && !err; i++) {
		unsigned int level;
		pte_t *pte = lookup_address(pm.start + ((unsigned long)i << PAGE_SHIFT),
					    &level);

		if (!pte || level != PG_LEVEL_4K)
			err = -EFAULT;
		else
			pm.ptes[i] = arbitrary_virt_to_machine(pte).maddr;
	}
	if (!err)
		err = hdm_pte_map(&pm, GNTMAP_host_map | GNTMAP_contains_pte);
	if (err)
		goto out_pm;
	gb->vaddr = vaddr;
	gb->vmap_handles = pm.handles;
	gb->vmap_ptes = pm.ptes;
	iosys_map_set_vaddr(map, vaddr);
	return 0;

out_pm:
	hdm_pte_map_free(&pm);
out_vunmap:
	vm_unmap_ram(vaddr, gb->d.nr);
	return err;
}

static int hdm_gbuf_vmap(struct dma_buf *buf, struct iosys_map *map)
{
	struct hdm_gbuf *gb = buf->priv;
	void *vaddr;

	if (!xen_feature(XENFEAT_auto_translated_physmap))
		return hdm_gbuf_vmap_pv(gb, map);
	/* vm_map_ram, not vmap: vmap refuses more pages than the domain's
	 * RAM, and a large import balloons out about that much. */
	vaddr = vm_map_ram(gb->d.pages, gb->d.nr, NUMA_NO_NODE);
	if (!vaddr)
		return -ENOMEM;
	gb->vaddr = vaddr;
	iosys_map_set_vaddr(map, vaddr);
	return 0;
}

static void hdm_gbuf_vunmap(struct dma_buf *buf, struct iosys_map *map)
{
	struct hdm_gbuf *gb = buf->priv;

	if (gb->vmap_handles) {
		struct hdm_pte_map pm = {
			.gb = gb, .start = (unsigned long)gb->vaddr,
			.count = gb->d.nr, .ptes = gb->vmap_ptes,
			.handles = gb->vmap_handles,
		};

		/* Never let vm_unmap_ram() clear a grant PTE (Xen kills the
		 * domain): on failure, leak the range. */
		if (hdm_pte_unmap(&pm, 0, pm.count)) {
			pr_err("hyper_dmabuf: leaking a vmap range with grant PTEs\n");
			gb->vaddr = NULL;
		}
		hdm_pte_map_free(&pm);
		gb->vmap_handles = NULL;
		gb->vmap_ptes = NULL;
	}
	if (gb->vaddr)
		vm_unmap_ram(gb->vaddr, gb->d.nr);
	gb->vaddr = NULL;
}

static const struct dma_buf_ops hdm_gbuf_ops = {
	.cache_sgt_mapping = true,
	.map_dma_buf = hdm_gbuf_map,
	.unmap_dma_buf = hdm_gbuf_unmap,
	.release = hdm_gbuf_release,
	.begin_cpu_access = hdm_gbuf_cpu_access,
	.end_cpu_access = hdm_gbuf_cpu_access,
	.mmap = hdm_gbuf_mmap,
	.vmap = hdm_gbuf_vmap,
	.vunmap = hdm_gbuf_vunmap,
};

struct dma_buf *hdm_gbuf_export(const struct hdm_gbuf_desc *desc)
{
	DEFINE_DMA_BUF_EXPORT_INFO(info);
	struct hdm_gbuf *gb;
	struct dma_buf *buf;

	gb = kzalloc(sizeof(*gb), GFP_KERNEL);
	if (!gb)
		return ERR_PTR(-ENOMEM);
	gb->d = *desc;
	info.exp_name = "hyper_dmabuf";
	info.owner = THIS_MODULE;
	info.ops = &hdm_gbuf_ops;
	info.size = desc->size;
	info.flags = desc->writable ? O_RDWR : O_RDONLY;
	info.priv = gb;
	buf = dma_buf_export(&info);
	if (IS_ERR(buf))
		kfree(gb);
	return buf;
}

bool hdm_dmabuf_tryget(struct dma_buf *buf)
{
	return atomic_long_inc_not_zero(&buf->file->f_count);
}

void hdm_dmabuf_put(struct dma_buf *buf)
{
	dma_buf_put(buf);
}

int hdm_fd_reserve(void)
{
	return get_unused_fd_flags(O_CLOEXEC);
}

void hdm_fd_install(int fd, struct dma_buf *buf)
{
	fd_install(fd, buf->file);
}

void hdm_fd_unreserve(int fd)
{
	put_unused_fd(fd);
}
