// SPDX-License-Identifier: GPL-2.0
/*
 * C shim of the hyper-dmabuf kernel modules; see hyper_dmabuf_shim.h.
 */
#include <linux/bug.h>
#include <linux/moduleparam.h>
#include <xen/xen.h>

#include "hyper_dmabuf_shim.h"

static bool inject_warn;
module_param(inject_warn, bool, 0444);
MODULE_PARM_DESC(inject_warn,
		 "Test only: print a kernel WARNING at load (VM runner self-test)");

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

bool hdm_inject_warn_requested(void)
{
	return inject_warn;
}

void hdm_warn(const char *msg)
{
	WARN(1, "%s\n", msg);
}
