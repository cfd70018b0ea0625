// SPDX-License-Identifier: GPL-2.0
/*
 * hyper_dmabuf_check.ko: test instrumentation, built beside the driver
 * and loaded only by the VM tests that use it (never shipped).
 *
 * debugfs "check" (/sys/kernel/debug/hyper_dmabuf/check) exercises the
 * dma-buf ops user space cannot reach. A process writes the number of one
 * of its dma-buf fds; the module uses it as a kernel importer would
 * (attach, map into an sg table, begin CPU access, vmap), sums its 64-bit
 * words, and undoes it all. A read then returns
 * "pages=N segments=M mapped=B sum=0x..." or "error=-E".
 *
 * debugfs "refuse" exports dma-bufs the driver must refuse to grant,
 * as real exporters can make them. A process writes a kind; the module
 * makes a dma-buf of it and installs a descriptor of it in that process
 * (the write fails with the error otherwise), and a read of the same open
 * file returns "fd=N":
 *   not-ram       one page of device memory, far past the end of RAM,
 *                 mapped as a GPU maps its VRAM for a peer
 *                 (dma_map_resource, no struct page);
 *   partial-page  4 KiB + 512 bytes: not a whole number of pages;
 *   offset        two pages' worth starting 512 bytes into a page;
 *   ragged        two pages' size mapped as half a page and a page: the
 *                 right page count, not the buffer's bytes.
 *
 * It attaches with a device of its own (64-bit DMA mask, as the driver's
 * control device), and puts its files in the driver's debugfs directory,
 * whose symbol keeps hyper_dmabuf.ko loaded while this module is.
 */
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/iosys-map.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
#include <linux/sched.h>
#include <linux/sprintf.h>
#include <linux/string.h>

#include "../shim/exports.h"

MODULE_IMPORT_NS(DMA_BUF);
MODULE_IMPORT_NS(HYPER_DMABUF);

static struct device *hdm_check_dev;
static struct dentry *hdm_check_file;
static struct dentry *hdm_refuse_file;
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

	attach = dma_buf_attach(buf, hdm_check_dev);
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

/* A dma-buf of a kind the driver must refuse (the "refuse" file). */
enum hdm_refuse_kind { HDM_NOT_RAM, HDM_PARTIAL_PAGE, HDM_OFFSET, HDM_RAGGED };

/* 32 TiB: past any RAM of the platform's domains. */
#define HDM_DEVICE_MEMORY (1ULL << 45)

struct hdm_refuse_buf {
	enum hdm_refuse_kind kind;
	unsigned int nr_pages;
	struct page *pages[3];
};

static struct sg_table *hdm_refuse_map(struct dma_buf_attachment *attach,
				       enum dma_data_direction dir)
{
	struct hdm_refuse_buf *rb = attach->dmabuf->priv;
	struct sg_table *sgt;
	struct scatterlist *sg;
	int err;

	sgt = kzalloc(sizeof(*sgt), GFP_KERNEL);
	if (!sgt)
		return ERR_PTR(-ENOMEM);
	err = sg_alloc_table(sgt, rb->kind == HDM_NOT_RAM ? 1 : rb->nr_pages, GFP_KERNEL);
	if (err)
		goto out_free;
	sg = sgt->sgl;
	switch (rb->kind) {
	case HDM_NOT_RAM:
		/* No page link: importers use the DMA addresses. */
		sg_dma_address(sg) = dma_map_resource(attach->dev, HDM_DEVICE_MEMORY,
						      PAGE_SIZE, dir, 0);
		if (dma_mapping_error(attach->dev, sg_dma_address(sg))) {
			err = -EIO;
			goto out_table;
		}
		sg_dma_len(sg) = PAGE_SIZE;
		return sgt;
	case HDM_PARTIAL_PAGE:
		sg_set_page(sg, rb->pages[0], PAGE_SIZE, 0);
		sg_set_page(sg_next(sg), rb->pages[1], 512, 0);
		break;
	case HDM_OFFSET:
		sg_set_page(sg, rb->pages[0], PAGE_SIZE - 512, 512);
		sg = sg_next(sg);
		sg_set_page(sg, rb->pages[1], PAGE_SIZE, 0);
		sg_set_page(sg_next(sg), rb->pages[2], 512, 0);
		break;
	case HDM_RAGGED:
		sg_set_page(sg, rb->pages[0], PAGE_SIZE / 2, 0);
		sg_set_page(sg_next(sg), rb->pages[1], PAGE_SIZE, 0);
		break;
	}
	err = dma_map_sgtable(attach->dev, sgt, dir, 0);
	if (err)
		goto out_table;
	return sgt;

out_table:
	sg_free_table(sgt);
out_free:
	kfree(sgt);
	return ERR_PTR(err);
}

static void hdm_refuse_unmap(struct dma_buf_attachment *attach, struct sg_table *sgt,
			     enum dma_data_direction dir)
{
	struct hdm_refuse_buf *rb = attach->dmabuf->priv;

	if (rb->kind == HDM_NOT_RAM)
		dma_unmap_resource(attach->dev, sg_dma_address(sgt->sgl), PAGE_SIZE, dir, 0);
	else
		dma_unmap_sgtable(attach->dev, sgt, dir, 0);
	sg_free_table(sgt);
	kfree(sgt);
}

static void hdm_refuse_free(struct hdm_refuse_buf *rb)
{
	unsigned int i;

	for (i = 0; i < rb->nr_pages; i++)
		if (rb->pages[i])
			__free_page(rb->pages[i]);
	kfree(rb);
}

static void hdm_refuse_release(struct dma_buf *buf)
{
	hdm_refuse_free(buf->priv);
}

static const struct dma_buf_ops hdm_refuse_ops = {
	.map_dma_buf = hdm_refuse_map,
	.unmap_dma_buf = hdm_refuse_unmap,
	.release = hdm_refuse_release,
};

/* A new dma-buf of `kind`, and a descriptor of it in this process. */
static int hdm_refuse_make(enum hdm_refuse_kind kind)
{
	DEFINE_DMA_BUF_EXPORT_INFO(info);
	struct hdm_refuse_buf *rb;
	struct dma_buf *buf;
	unsigned int i;
	int fd;

	rb = kzalloc(sizeof(*rb), GFP_KERNEL);
	if (!rb)
		return -ENOMEM;
	rb->kind = kind;
	rb->nr_pages = kind == HDM_NOT_RAM ? 0 : kind == HDM_OFFSET ? 3 : 2;
	for (i = 0; i < rb->nr_pages; i++) {
		rb->pages[i] = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!rb->pages[i]) {
			hdm_refuse_free(rb);
			return -ENOMEM;
		}
	}
	info.ops = &hdm_refuse_ops;
	info.size = kind == HDM_PARTIAL_PAGE ? PAGE_SIZE + 512 :
		    kind == HDM_NOT_RAM ? PAGE_SIZE : 2 * PAGE_SIZE;
	info.flags = O_RDWR;
	info.priv = rb;
	buf = dma_buf_export(&info);
	if (IS_ERR(buf)) {
		hdm_refuse_free(rb);
		return PTR_ERR(buf);
	}
	fd = dma_buf_fd(buf, O_CLOEXEC);
	if (fd < 0)
		dma_buf_put(buf);
	return fd;
}

/*
 * Each open file keeps the result of its last write (as fd + 1, so that
 * 0 means none yet); the descriptor is installed in the writing process.
 */
static ssize_t hdm_refuse_write(struct file *file, const char __user *ubuf,
				size_t len, loff_t *off)
{
	static const char *const kinds[] = {
		[HDM_NOT_RAM] = "not-ram",
		[HDM_PARTIAL_PAGE] = "partial-page",
		[HDM_OFFSET] = "offset",
		[HDM_RAGGED] = "ragged",
	};
	char kind[16];
	ssize_t n;
	int fd;

	n = strncpy_from_user(kind, ubuf, min(len, sizeof(kind) - 1));
	if (n < 0)
		return n;
	kind[n] = '\0';
	n = sysfs_match_string(kinds, kind);
	if (n < 0)
		return -EINVAL;
	fd = hdm_refuse_make(n);
	if (fd < 0)
		return fd;
	file->private_data = (void *)(uintptr_t)(fd + 1);
	return len;
}

static ssize_t hdm_refuse_read(struct file *file, char __user *ubuf, size_t len,
			       loff_t *off)
{
	uintptr_t made = (uintptr_t)file->private_data;
	char result[24];

	if (!made)
		return -ENODATA;
	scnprintf(result, sizeof(result), "fd=%lu\n", (unsigned long)(made - 1));
	return simple_read_from_buffer(ubuf, len, off, result, strlen(result));
}

static const struct file_operations hdm_refuse_fops = {
	.owner = THIS_MODULE,
	.write = hdm_refuse_write,
	.read = hdm_refuse_read,
	.llseek = default_llseek,
};

static const struct file_operations hdm_check_fops = {
	.owner = THIS_MODULE,
	.write = hdm_check_write,
	.read = hdm_check_read,
	.llseek = default_llseek,
};

static int __init hdm_check_init(void)
{
	struct dentry *dir = hdm_debugfs_dir();
	int err;

	if (IS_ERR_OR_NULL(dir))
		return -ENODEV;
	hdm_check_dev = root_device_register("hyper_dmabuf_check");
	if (IS_ERR(hdm_check_dev))
		return PTR_ERR(hdm_check_dev);
	/* Exporters map their buffers for it as for the driver's device. */
	err = dma_coerce_mask_and_coherent(hdm_check_dev, DMA_BIT_MASK(64));
	if (err)
		goto out_dev;
	hdm_check_file = debugfs_create_file("check", 0600, dir, NULL, &hdm_check_fops);
	if (IS_ERR(hdm_check_file)) {
		err = PTR_ERR(hdm_check_file);
		goto out_dev;
	}
	hdm_refuse_file = debugfs_create_file("refuse", 0600, dir, NULL, &hdm_refuse_fops);
	if (IS_ERR(hdm_refuse_file)) {
		err = PTR_ERR(hdm_refuse_file);
		debugfs_remove(hdm_check_file);
		goto out_dev;
	}
	return 0;

out_dev:
	root_device_unregister(hdm_check_dev);
	return err;
}

static void __exit hdm_check_exit(void)
{
	debugfs_remove(hdm_refuse_file);
	debugfs_remove(hdm_check_file);
	root_device_unregister(hdm_check_dev);
}

module_init(hdm_check_init);
module_exit(hdm_check_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hyper-dmabuf test only: read a dma-buf as a kernel importer would (debugfs check); make dma-bufs the driver refuses (debugfs refuse)");
