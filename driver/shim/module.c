// SPDX-License-Identifier: GPL-2.0
/*
 * Registration of the module's C tables, in order, each undone if a later
 * one fails: the control device, the PV vmap's hole page, debugfs, then
 * the XenBus drivers (which probe existing devices at once); before them
 * the driver's workqueue. Unloading stops the fence watches once no
 * connection is left to arm one, then the timed work, then the queue.
 */
#include <linux/module.h>
#include <linux/workqueue.h>

#include "internal.h"

MODULE_IMPORT_NS(DMA_BUF);

struct workqueue_struct *hdm_wq;

int hdm_register_all(unsigned int tables)
{
	int err;

	hdm_wq = alloc_workqueue("hyper_dmabuf", WQ_MEM_RECLAIM, 0);
	if (!hdm_wq)
		return -ENOMEM;
	err = hdm_misc_register();
	if (err)
		goto out_wq;
	if (tables == HDM_PT_GRANT_PTES)
		hdm_hole_page_alloc();
	hdm_debugfs_register();
	err = hdm_xenbus_register();
	if (err) {
		hdm_debugfs_unregister();
		hdm_hole_page_free();
		hdm_misc_unregister();
		goto out_wq;
	}
	return 0;

out_wq:
	hdm_tick_disable();
	destroy_workqueue(hdm_wq);
	hdm_wq = NULL;
	return err;
}

void hdm_unregister_all(void)
{
	hdm_xenbus_unregister();
	hdm_fence_watch_drain();
	hdm_debugfs_unregister();
	hdm_hole_page_free();
	hdm_misc_unregister();
	/* Nothing queues work any more: no device, no open file. */
	hdm_tick_disable();
	destroy_workqueue(hdm_wq);
	hdm_wq = NULL;
}
