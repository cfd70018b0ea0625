// SPDX-License-Identifier: GPL-2.0
/*
 * PV grant PTEs: a peer's grants mapped by Xen straight into page-table
 * entries (GNTMAP_contains_pte), for the user mappings (vma.c) and the
 * kernel mapping (gbuf.c) of an imported buffer; see internal.h.
 */
#include <linux/mm.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <xen/grant_table.h>
#include <asm/xen/hypercall.h>
#include <asm/xen/page.h>

#include "internal.h"

int hdm_collect_pte(pte_t *pte, unsigned long addr, void *data)
{
	struct hdm_pte_map *pm = data;
	unsigned long i = (addr - pm->start) >> PAGE_SHIFT;

	if (i >= pm->count)
		return -EINVAL;
	pm->ptes[i] = arbitrary_virt_to_machine(pte).maddr;
	return 0;
}

/*
 * Unmap ops per hypercall when undoing PTE mappings. The ops live on the
 * stack: the MMU notifier may run in reclaim, where allocating is not
 * allowed, and a 1 GiB munmap is then 16,384 hypercalls, not 262,144.
 */
#define HDM_UNMAP_BATCH 16

unsigned int hdm_pte_unmap(struct hdm_pte_map *pm, unsigned int from, unsigned int to)
{
	struct gnttab_unmap_grant_ref ops[HDM_UNMAP_BATCH];
	unsigned int index[HDM_UNMAP_BATCH];
	unsigned int i = from, n, k, failed = 0;

	while (i < to) {
		for (n = 0; i < to && n < HDM_UNMAP_BATCH; i++) {
			if (pm->handles[i] == INVALID_GRANT_HANDLE)
				continue;
			gnttab_set_unmap_op(&ops[n], pm->ptes[i], GNTMAP_contains_pte,
					    pm->handles[i]);
			index[n++] = i;
		}
		if (!n)
			break;
		if (HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, ops, n)) {
			failed += n;
			continue;
		}
		for (k = 0; k < n; k++) {
			if (ops[k].status == GNTST_okay)
				pm->handles[index[k]] = INVALID_GRANT_HANDLE;
			else
				failed++;
		}
	}
	return failed;
}

unsigned int hdm_pte_flags(const struct hdm_gbuf *gb, bool user, bool write)
{
	unsigned int flags = GNTMAP_host_map | GNTMAP_contains_pte;

	/* A user PTE is marked special (guest_avail0 is _PAGE_SPECIAL), so
	 * that vm_normal_page() asks find_special_page() for its page. */
	if (user)
		flags |= GNTMAP_application_map | (1 << _GNTMAP_guest_avail0);
	if (!gb->d.writable || !write)
		flags |= GNTMAP_readonly;
	return flags;
}

int hdm_pte_map(struct hdm_pte_map *pm, unsigned int flags)
{
	struct gnttab_map_grant_ref *ops;
	unsigned int i;
	int err = 0;

	ops = kvcalloc(pm->count, sizeof(*ops), GFP_KERNEL);
	if (!ops)
		return -ENOMEM;
	for (i = 0; i < pm->count; i++)
		gnttab_set_map_op(&ops[i], pm->ptes[i], flags,
				  pm->gb->d.refs[pm->first + i], pm->gb->d.domid);
	gnttab_batch_map(ops, pm->count);
	for (i = 0; i < pm->count; i++) {
		if (ops[i].status == GNTST_okay) {
			pm->handles[i] = ops[i].handle;
		} else {
			pm->handles[i] = INVALID_GRANT_HANDLE;
			err = -EIO;
		}
	}
	kvfree(ops);
	if (err && hdm_pte_unmap(pm, 0, pm->count))
		pr_err("hyper_dmabuf: could not undo a partial PTE grant mapping\n");
	return err;
}

int hdm_pte_map_alloc(struct hdm_pte_map *pm, unsigned int count)
{
	unsigned int i;

	pm->count = count;
	pm->ptes = kvcalloc(count, sizeof(*pm->ptes), GFP_KERNEL);
	pm->handles = kvcalloc(count, sizeof(*pm->handles), GFP_KERNEL);
	if (!pm->ptes || !pm->handles) {
		kvfree(pm->ptes);
		kvfree(pm->handles);
		return -ENOMEM;
	}
	for (i = 0; i < count; i++)
		pm->handles[i] = INVALID_GRANT_HANDLE;
	return 0;
}

void hdm_pte_map_free(struct hdm_pte_map *pm)
{
	kvfree(pm->ptes);
	kvfree(pm->handles);
}
