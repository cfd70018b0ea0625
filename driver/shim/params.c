// SPDX-License-Identifier: GPL-2.0
/*
 * Module parameters: the kernel's table of them, and a getter for each
 * (the 6.12 Rust crate has no `params:` in module!). Each value is
 * returned as root set it; what it means is Rust's to decide.
 */
#include <linux/compiler.h>
#include <linux/moduleparam.h>

#include "internal.h"

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

static unsigned int max_imports = 4096;
module_param(max_imports, uint, 0444);
MODULE_PARM_DESC(max_imports,
		 "Buffers one peer may have announced to this domain at once (default 4096, 1 to 1048576)");

static unsigned int fence_timeout_ms = 10000;
module_param(fence_timeout_ms, uint, 0444);
MODULE_PARM_DESC(fence_timeout_ms,
		 "How long a peer's fence may stay unsignalled before it ends with ETIMEDOUT, in ms (default 10000, 100 to 600000)");

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

unsigned long long hdm_param_max_buffer_mib(void)
{
	return max_buffer_mib;
}

unsigned int hdm_param_ring_page_order(void)
{
	return ring_page_order;
}

unsigned int hdm_param_max_imports(void)
{
	return max_imports;
}

unsigned int hdm_param_fence_timeout_ms(void)
{
	return fence_timeout_ms;
}

bool hdm_param_allow_rw(void)
{
	return allow_rw;
}
