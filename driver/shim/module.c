// SPDX-License-Identifier: GPL-2.0
/*
 * Registration of the module's C tables, in order, each undone if a later
 * one fails: the control device, the PV vmap's hole page, debugfs, then
 * the XenBus drivers (which probe existing devices at once). Unloading
 * stops the fence watches once no connection is left to arm one.
 */
#include <linux/module.h>

#include "internal.h"

MODULE_IMPORT_NS(DMA_BUF);

int hdm_register_all(unsigned int tables)
{
	int err = hdm_misc_register();

	if (err)
		return err;
	if (tables == HDM_PT_GRANT_PTES)
		hdm_hole_page_alloc();
	hdm_debugfs_register();
	err = hdm_xenbus_register();
	if (err) {
		hdm_debugfs_unregister();
		hdm_hole_page_free();
		hdm_misc_unregister();
	}
	return err;
}

void hdm_unregister_all(void)
{
	hdm_xenbus_unregister();
	hdm_fence_watch_drain();
	hdm_debugfs_unregister();
	hdm_hole_page_free();
	hdm_misc_unregister();
}
