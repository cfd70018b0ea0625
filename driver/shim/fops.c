// SPDX-License-Identifier: GPL-2.0
/*
 * The control device, /dev/xen/hyper_dmabuf: its misc device and
 * file_operations, each slot a trampoline into hdm_rs_*, and an open
 * file's wait queue (wait_event_interruptible and poll_wait are macros).
 */
#include <linux/capability.h>
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/user_namespace.h>
#include <linux/wait.h>

#include "internal.h"

struct hdm_file {
	void *ctx;
	wait_queue_head_t wq;
};

void hdm_file_wake(struct hdm_file *hf)
{
	wake_up_interruptible(&hf->wq);
}

bool hdm_file_capable(struct file *file, int cap)
{
	return file_ns_capable(file, &init_user_ns, cap);
}

static int hdm_fop_open(struct inode *inode, struct file *file)
{
	struct hdm_file *hf = kzalloc(sizeof(*hf), GFP_KERNEL);

	if (!hf)
		return -ENOMEM;
	init_waitqueue_head(&hf->wq);
	hf->ctx = hdm_rs_open(hf, file);
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

	/* Who may open the device is its node's permission; an open file is
	 * the capability, whoever holds it (docs/uapi.md, "Who may do what"). */
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

struct device *hdm_misc_device(void)
{
	return hdm_misc.this_device;
}

/* Segments of any length: nothing here walks them as a DMA engine would. */
static struct device_dma_parameters hdm_dma_parms = {
	.max_segment_size = UINT_MAX,
};

int hdm_misc_register(void)
{
	int err = misc_register(&hdm_misc);

	if (err)
		return err;
	/*
	 * Exporters map their buffers for this device (pin.c). It is no DMA
	 * master: it only reads back which pages a buffer is made of, so
	 * its addresses are the pages' own (hdm_identity_dma_ops).
	 */
	hdm_misc.this_device->dma_parms = &hdm_dma_parms;
	set_dma_ops(hdm_misc.this_device, &hdm_identity_dma_ops);
	err = dma_coerce_mask_and_coherent(hdm_misc.this_device, DMA_BIT_MASK(64));
	if (err)
		misc_deregister(&hdm_misc);
	return err;
}

void hdm_misc_unregister(void)
{
	misc_deregister(&hdm_misc);
}
