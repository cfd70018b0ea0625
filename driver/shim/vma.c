// SPDX-License-Identifier: GPL-2.0
/*
 * User mappings of an imported buffer. What a mapping may be is Rust's
 * verdict (hdm_rs_mmap_verdict), and so is which of the two ways below a
 * buffer is mapped (desc->tables, from the kind of domain); so is whether
 * a line about a failure is printed (hdm_rs_vma_event).
 *
 * HDM_PT_PAGES (PVH, auto-translated): the pages are ordinary pages of
 * ours whose frames Xen points at the exporter's, so the mapping holds
 * them like any driver mapping pages (vm_map_pages(), and
 * hdm_vma_fault_page() after a zap).
 *
 * HDM_PT_GRANT_PTES (PV): each PTE holds a grant mapping made by Xen
 * (gntdev's method), which the core mm must never copy, move or clear
 * itself. The PTEs are a cache of the buffer: every core operation that
 * would touch them first calls the MMU notifier, which unmaps them through
 * Xen; the next access faults and hdm_vma_fault_grant() maps that page
 * again, with the protection the VMA has then. That keeps munmap of any part, mremap, mprotect of any
 * part, MADV_DONTNEED, fork after MADV_DOFORK, get_user_pages (through
 * find_special_page) and exit correct without knowing which one ran.
 *
 * Each PV VMA has its own state (struct hdm_vma): the notifier of its
 * mm's range and the grant handles it made. A copy of the VMA (split,
 * mremap, fork) gets a fresh state from hdm_vma_open(), so no two VMAs
 * share one, and a state outlives its VMA's shrinking (a split): it still
 * undoes the handles it made in the part that moved to the other VMA.
 * Without VM_MIXEDMAP or VM_PFNMAP, fork() never copies the PTEs.
 *
 * Locking: mmap_lock, then hdm_vma.lock, then (only in the fault path,
 * inside apply_to_page_range) the PTE lock. The notifier's invalidate
 * takes hdm_vma.lock, so nothing that may allocate memory runs under it.
 */
#include <linux/bug.h>
#include <linux/dma-buf.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <xen/grant_table.h>
#include <asm/xen/page.h>

#include "internal.h"

struct hdm_vma {
	struct mmu_interval_notifier notifier;
	/* Protects pm.handles/pm.ptes and orders faults with invalidations. */
	struct mutex lock;
	struct hdm_pte_map pm;
};

static bool hdm_vma_invalidate(struct mmu_interval_notifier *mn,
			       const struct mmu_notifier_range *range,
			       unsigned long cur_seq)
{
	struct hdm_vma *v = container_of(mn, struct hdm_vma, notifier);
	unsigned long start, end;
	unsigned int from, to;

	if (!mmu_notifier_range_blockable(range))
		return false;
	mutex_lock(&v->lock);
	mmu_interval_set_seq(mn, cur_seq);
	start = max(range->start, v->pm.start);
	end = min(range->end, v->pm.start + ((unsigned long)v->pm.count << PAGE_SHIFT));
	if (start < end) {
		from = (start - v->pm.start) >> PAGE_SHIFT;
		to = DIV_ROUND_UP(end - v->pm.start, PAGE_SIZE);
		if (hdm_pte_unmap(&v->pm, from, to))
			pr_err("hyper_dmabuf: could not unmap a user grant PTE\n");
	}
	mutex_unlock(&v->lock);
	return true;
}

static const struct mmu_interval_notifier_ops hdm_vma_notifier_ops = {
	.invalidate = hdm_vma_invalidate,
};

/*
 * A state for `vma` (of `gb`) with nothing mapped yet. Called with the
 * mm's mmap_lock held for writing (mmap, and every copy of a VMA).
 */
static struct hdm_vma *hdm_vma_new(struct hdm_gbuf *gb, struct vm_area_struct *vma)
{
	struct hdm_vma *v = kzalloc(sizeof(*v), GFP_KERNEL);
	int err;

	if (!v)
		return NULL;
	mutex_init(&v->lock);
	v->pm.gb = gb;
	v->pm.start = vma->vm_start;
	v->pm.first = vma->vm_pgoff;
	err = hdm_pte_map_alloc(&v->pm, vma_pages(vma));
	if (err)
		goto out_free;
	err = mmu_interval_notifier_insert_locked(&v->notifier, vma->vm_mm,
						  vma->vm_start,
						  vma->vm_end - vma->vm_start,
						  &hdm_vma_notifier_ops);
	if (err)
		goto out_pm;
	return v;

out_pm:
	hdm_pte_map_free(&v->pm);
out_free:
	kfree(v);
	return NULL;
}

/* Unmaps what `v` mapped and frees it; its VMA is going or never was. */
static void hdm_vma_free(struct hdm_vma *v)
{
	mutex_lock(&v->lock);
	if (hdm_pte_unmap(&v->pm, 0, v->pm.count))
		pr_err("hyper_dmabuf: could not unmap a user grant PTE\n");
	mutex_unlock(&v->lock);
	/* Waits for an invalidation still running on another CPU. */
	mmu_interval_notifier_remove(&v->notifier);
	hdm_pte_map_free(&v->pm);
	kfree(v);
}

/*
 * A copy of a PV VMA (split, mremap, fork after MADV_DOFORK): its own
 * state, with nothing mapped; its pages are mapped on first access. The
 * copy came with the original's vm_private_data, which it must not use.
 * Without memory the copy gets no state and SIGBUS on access.
 */
static void hdm_vma_open(struct vm_area_struct *vma)
{
	struct hdm_vma *v = vma->vm_private_data;
	struct hdm_vma *copy = v ? hdm_vma_new(v->pm.gb, vma) : NULL;

	vma->vm_private_data = copy;
	if (v && !copy)
		hdm_rs_vma_event(HDM_VMA_COPY_NO_MEMORY, v->pm.gb->d.domid, 0);
}

static void hdm_vma_close(struct vm_area_struct *vma)
{
	struct hdm_vma *v = vma->vm_private_data;

	if (v)
		hdm_vma_free(v);
}

/* The PTE of the faulting address: its machine address, whether empty. */
struct hdm_fault_pte {
	u64 maddr;
	bool none;
};

static int hdm_fault_pte(pte_t *pte, unsigned long addr, void *data)
{
	struct hdm_fault_pte *fp = data;

	fp->maddr = arbitrary_virt_to_machine(pte).maddr;
	fp->none = pte_none(ptep_get(pte));
	return 0;
}

/* PV: map the grant of the faulting page into its (empty) PTE. */
static vm_fault_t hdm_vma_fault_grant(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct hdm_vma *v = vma->vm_private_data;
	unsigned long addr = vmf->address & PAGE_MASK;
	struct gnttab_map_grant_ref op;
	struct hdm_fault_pte fp;
	unsigned long seq, i;
	struct hdm_gbuf *gb;

	if (!v || addr < v->pm.start)
		return VM_FAULT_SIGBUS;
	gb = v->pm.gb;
	i = (addr - v->pm.start) >> PAGE_SHIFT;
	if (i >= v->pm.count || v->pm.first + i != vmf->pgoff || vmf->pgoff >= gb->d.nr)
		return VM_FAULT_SIGBUS;
	/*
	 * Find (or allocate) the PTE before taking v->lock, which the
	 * notifier takes: allocating under it could recurse into reclaim.
	 * An invalidation after this point is seen by the retry check.
	 */
	seq = mmu_interval_read_begin(&v->notifier);
	if (apply_to_page_range(vma->vm_mm, addr, PAGE_SIZE, hdm_fault_pte, &fp))
		return VM_FAULT_OOM;
	if (!fp.none)
		return VM_FAULT_NOPAGE;
	gnttab_set_map_op(&op, fp.maddr, hdm_pte_flags(gb, true, vma->vm_flags & VM_WRITE),
			  gb->d.refs[vmf->pgoff], gb->d.domid);

	mutex_lock(&v->lock);
	if (mmu_interval_read_retry(&v->notifier, seq)) {
		mutex_unlock(&v->lock);
		return VM_FAULT_NOPAGE;
	}
	if (v->pm.handles[i] != INVALID_GRANT_HANDLE) {
		/* Ours, yet the PTE is empty: only a bug can get here. */
		mutex_unlock(&v->lock);
		hdm_rs_vma_event(HDM_VMA_PTE_CLEARED, gb->d.domid, 0);
		return VM_FAULT_SIGBUS;
	}
	gnttab_batch_map(&op, 1);
	if (op.status != GNTST_okay) {
		mutex_unlock(&v->lock);
		hdm_rs_vma_event(HDM_VMA_FAULT_UNMAPPED, gb->d.domid, op.status);
		return VM_FAULT_SIGBUS;
	}
	v->pm.handles[i] = op.handle;
	v->pm.ptes[i] = fp.maddr;
	mutex_unlock(&v->lock);
	return VM_FAULT_NOPAGE;
}

static struct page *hdm_vma_special_page(struct vm_area_struct *vma,
					 unsigned long addr)
{
	struct hdm_vma *v = vma->vm_private_data;
	unsigned long pgoff = vma->vm_pgoff + ((addr - vma->vm_start) >> PAGE_SHIFT);

	if (!v || pgoff >= v->pm.gb->d.nr)
		return NULL;
	return v->pm.gb->d.pages[pgoff];
}

static const struct vm_operations_struct hdm_vma_grant_ops = {
	.open = hdm_vma_open,
	.close = hdm_vma_close,
	.fault = hdm_vma_fault_grant,
	.find_special_page = hdm_vma_special_page,
};

static int hdm_gbuf_mmap_grants(struct hdm_gbuf *gb, struct vm_area_struct *vma)
{
	struct hdm_vma *v;
	int err;

	/* Rust refused pages past the end; this guards the refs[] reads. */
	if (WARN_ON_ONCE(vma->vm_pgoff + vma_pages(vma) > gb->d.nr))
		return -EINVAL;
	v = hdm_vma_new(gb, vma);
	if (!v)
		return -ENOMEM;
	/*
	 * Map every page now, in one batch (a fault per page would cost a
	 * hypercall each). The VMA is not in the mm's tree yet and its mm is
	 * write-locked: no fault or invalidation can run meanwhile.
	 */
	err = apply_to_page_range(vma->vm_mm, vma->vm_start,
				  vma->vm_end - vma->vm_start, hdm_collect_pte, &v->pm);
	if (!err)
		err = hdm_pte_map(&v->pm, hdm_pte_flags(gb, true, vma->vm_flags & VM_WRITE));
	if (err) {
		hdm_vma_free(v);
		return err;
	}
	vma->vm_private_data = v;
	vma->vm_ops = &hdm_vma_grant_ops;
	return 0;
}

/* PVH: map the faulting page again after a zap (MADV_DONTNEED). */
static vm_fault_t hdm_vma_fault_page(struct vm_fault *vmf)
{
	struct hdm_gbuf *gb = vmf->vma->vm_private_data;

	if (vmf->pgoff >= gb->d.nr)
		return VM_FAULT_SIGBUS;
	vmf->page = gb->d.pages[vmf->pgoff];
	get_page(vmf->page);
	return 0;
}

static const struct vm_operations_struct hdm_vma_page_ops = {
	.fault = hdm_vma_fault_page,
};

int hdm_gbuf_mmap(struct dma_buf *buf, struct vm_area_struct *vma)
{
	struct hdm_gbuf *gb = buf->priv;
	struct hdm_mmap_request req = {
		.pgoff = vma->vm_pgoff,
		.pages = vma_pages(vma),
		.buffer_pages = gb->d.nr,
		/* MAP_SHARED of a read-only file has VM_MAYSHARE without
		 * VM_SHARED. */
		.shared = vma->vm_flags & VM_MAYSHARE,
		.write = vma->vm_flags & VM_WRITE,
		.buffer_writable = gb->d.writable,
	};
	int plan = hdm_rs_mmap_verdict(req);

	if (plan < 0)
		return plan;
	if (plan & HDM_MMAP_NEVER_WRITABLE)
		vm_flags_clear(vma, VM_MAYWRITE);
	vm_flags_set(vma, (plan & HDM_MMAP_DONTCOPY ? VM_DONTCOPY : 0) |
			  (plan & HDM_MMAP_DONTDUMP ? VM_DONTDUMP : 0) |
			  (plan & HDM_MMAP_DONTEXPAND ? VM_DONTEXPAND : 0));
	if (gb->d.tables == HDM_PT_GRANT_PTES)
		return hdm_gbuf_mmap_grants(gb, vma);
	vma->vm_private_data = gb;
	vma->vm_ops = &hdm_vma_page_ops;
	return vm_map_pages(vma, gb->d.pages, gb->d.nr);
}
