// SPDX-License-Identifier: GPL-2.0
/*
 * The platform as Rust asks about it: which kind of Xen domain this is,
 * time, randomness, a WARN, and pins on this module. Each a wrapper of an
 * inline function or a macro.
 */
#include <linux/bug.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/random.h>
#include <xen/features.h>
#include <xen/xen.h>

#include "internal.h"

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

void hdm_warn(const char *msg)
{
	WARN(1, "%s\n", msg);
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

void hdm_module_get(void)
{
	__module_get(THIS_MODULE);
}

void hdm_module_put(void)
{
	module_put(THIS_MODULE);
}
