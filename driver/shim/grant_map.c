// SPDX-License-Identifier: GPL-2.0
/*
 * Import side, the kernel mapping: map and unmap ops at a page's kernel
 * address (gnttab_set_map_op and gnttab_set_unmap_op are inline), and the
 * pages' reference counts (page_count is inline).
 */
#include <linux/minmax.h>
#include <linux/mm.h>
#include <xen/grant_table.h>

#include "internal.h"

void hdm_set_map_op(struct gnttab_map_grant_ref *op, struct page *page,
		    unsigned int flags, unsigned int ref, unsigned short domid)
{
	gnttab_set_map_op(op, (unsigned long)page_address(page), flags, ref, domid);
	op->handle = INVALID_GRANT_HANDLE;
}

void hdm_set_unmap_op(struct gnttab_unmap_grant_ref *op, struct page *page,
		      unsigned int flags, unsigned int handle)
{
	gnttab_set_unmap_op(op, (unsigned long)page_address(page), flags, handle);
}

int hdm_pages_max_refs(struct page **pages, unsigned int count)
{
	unsigned int i;
	int most = 0;

	for (i = 0; i < count; i++)
		most = max(most, page_count(pages[i]));
	return most;
}

int hdm_unmap_refs(struct gnttab_unmap_grant_ref *ops, struct page **pages,
		   unsigned int count)
{
	return gnttab_unmap_refs(ops, NULL, pages, count);
}
