/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Headers bindgen binds for the hyper-dmabuf modules (the 6.12 `kernel`
 * crate has no Xen, dma-buf or miscdevice abstractions). What is bound is
 * narrowed by the allowlists in bindgen_parameters.
 */
#include <linux/dma-buf.h>
#include <linux/miscdevice.h>
#include <xen/events.h>
#include <xen/grant_table.h>
#include <xen/page.h>
#include <xen/xen.h>
#include <xen/xenbus.h>

#include "hyper_dmabuf_shim.h"
