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
 * It attaches with a device of its own (64-bit DMA mask, as the driver's
 * control device), and puts its file in the driver's debugfs directory,
 * whose symbol keeps hyper_dmabuf.ko loaded while this module is.
 */
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
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
	return 0;

out_dev:
	root_device_unregister(hdm_check_dev);
	return err;
}

static void __exit hdm_check_exit(void)
{
	debugfs_remove(hdm_check_file);
	root_device_unregister(hdm_check_dev);
}

module_init(hdm_check_init);
module_exit(hdm_check_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hyper-dmabuf test only: read a dma-buf as a kernel importer would (debugfs check)");
