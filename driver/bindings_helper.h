/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Headers bindgen binds for hyper_dmabuf.ko (the 6.12 `kernel` crate has
 * no Xen, dma-buf or misc device abstractions). What is bound is narrowed
 * by the allowlists in bindgen_parameters.
 */
#include <linux/capability.h>
#include <xen/events.h>
#include <xen/grant_table.h>
#include <xen/interface/grant_table.h>
#include <xen/page.h>
#include <xen/xen.h>
#include <xen/xenbus.h>

#include "shim.h"
