// SPDX-License-Identifier: GPL-2.0
/*
 * The imported buffer as a dma-buf over grant-mapped pages: its
 * dma_buf_ops (the mmap is vma.c's), its kernel mapping, its export, and
 * the references and file descriptor that hand it to user space.
 */
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/fcntl.h>
#include <linux/file.h>
#include <linux/iosys-map.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <xen/grant_table.h>
#include <asm/xen/page.h>

#include "internal.h"

/* PV vmap reserves kernel ranges with a page that has no frame. */
static struct page *hdm_hole_page;

void hdm_hole_page_alloc(void)
{
	if (gnttab_alloc_pages(1, &hdm_hole_page))
		hdm_hole_page = NULL;
}

void hdm_hole_page_free(void)
{
	if (hdm_hole_page)
		gnttab_free_pages(1, &hdm_hole_page);
}

static struct sg_table *hdm_gbuf_map(struct dma_buf_attachment *attach,
				     enum dma_data_direction dir)
{
	struct hdm_gbuf *gb = attach->dmabuf->priv;
	struct scatterlist *sg;
	struct sg_table *sgt;
	unsigned int i;
	int err;

	sgt = kzalloc(sizeof(*sgt), GFP_KERNEL);
	if (!sgt)
		return ERR_PTR(-ENOMEM);
	/* One entry per page: in PV, neighbouring pfns are scattered frames. */
	err = sg_alloc_table(sgt, gb->d.nr, GFP_KERNEL);
	if (err)
		goto out_free;
	for_each_sgtable_sg(sgt, sg, i)
		sg_set_page(sg, gb->d.pages[i], PAGE_SIZE, 0);
	err = dma_map_sgtable(attach->dev, sgt, dir, DMA_ATTR_SKIP_CPU_SYNC);
	if (err)
		goto out_table;
	return sgt;

out_table:
	sg_free_table(sgt);
out_free:
	kfree(sgt);
	return ERR_PTR(err);
}

static void hdm_gbuf_unmap(struct dma_buf_attachment *attach,
			   struct sg_table *sgt, enum dma_data_direction dir)
{
	dma_unmap_sgtable(attach->dev, sgt, dir, DMA_ATTR_SKIP_CPU_SYNC);
	sg_free_table(sgt);
	kfree(sgt);
}

static void hdm_gbuf_release(struct dma_buf *buf)
{
	struct hdm_gbuf *gb = buf->priv;

	hdm_rs_gbuf_release(gb->d.owner);
	kfree(gb);
}

static int hdm_gbuf_cpu_access(struct dma_buf *buf, enum dma_data_direction dir)
{
	/* Grant mappings are write-back RAM on x86 in both domains. */
	return 0;
}

/*
 * Kernel mapping. Auto-translated: map the pages. PV: a normal PTE may
 * not point at a foreign frame, so reserve the range by mapping a page
 * that has no frame N times (its PTEs come out empty) and grant-map each
 * frame into its PTE, as xenbus_map_ring_valloc does for rings.
 */
static int hdm_gbuf_vmap_pv(struct hdm_gbuf *gb, struct iosys_map *map)
{
	struct hdm_pte_map pm = { .gb = gb, .first = 0 };
	struct page **hole;
	unsigned int i;
	void *vaddr;
	int err;

	if (!hdm_hole_page)
		return -EOPNOTSUPP;
	hole = kvcalloc(gb->d.nr, sizeof(*hole), GFP_KERNEL);
	if (!hole)
		return -ENOMEM;
	for (i = 0; i < gb->d.nr; i++)
		hole[i] = hdm_hole_page;
	vaddr = vm_map_ram(hole, gb->d.nr, NUMA_NO_NODE);
	kvfree(hole);
	if (!vaddr)
		return -ENOMEM;
	err = hdm_pte_map_alloc(&pm, gb->d.nr);
	if (err)
		goto out_vunmap;
	pm.start = (unsigned long)vaddr;
	/* vm_map_ram() built the page tables; init_mm is not exported, so find
	 * each (empty) PTE with lookup_address(). */
	for (i = 0; i < gb->d.nr && !err; i++) {
		unsigned int level;
		pte_t *pte = lookup_address(pm.start + ((unsigned long)i << PAGE_SHIFT),
					    &level);

		if (!pte || level != PG_LEVEL_4K)
			err = -EFAULT;
		else
			pm.ptes[i] = arbitrary_virt_to_machine(pte).maddr;
	}
	if (!err)
		err = hdm_pte_map(&pm, hdm_pte_flags(gb, false, true));
	if (err)
		goto out_pm;
	gb->vaddr = vaddr;
	gb->vmap_handles = pm.handles;
	gb->vmap_ptes = pm.ptes;
	iosys_map_set_vaddr(map, vaddr);
	return 0;

out_pm:
	hdm_pte_map_free(&pm);
out_vunmap:
	vm_unmap_ram(vaddr, gb->d.nr);
	return err;
}

static int hdm_gbuf_vmap(struct dma_buf *buf, struct iosys_map *map)
{
	struct hdm_gbuf *gb = buf->priv;
	void *vaddr;

	if (gb->d.tables == HDM_PT_GRANT_PTES)
		return hdm_gbuf_vmap_pv(gb, map);
	/* vm_map_ram, not vmap: vmap refuses more pages than the domain's
	 * RAM, and a large import balloons out about that much. */
	vaddr = vm_map_ram(gb->d.pages, gb->d.nr, NUMA_NO_NODE);
	if (!vaddr)
		return -ENOMEM;
	gb->vaddr = vaddr;
	iosys_map_set_vaddr(map, vaddr);
	return 0;
}

static void hdm_gbuf_vunmap(struct dma_buf *buf, struct iosys_map *map)
{
	struct hdm_gbuf *gb = buf->priv;

	if (gb->vmap_handles) {
		struct hdm_pte_map pm = {
			.gb = gb, .start = (unsigned long)gb->vaddr,
			.count = gb->d.nr, .ptes = gb->vmap_ptes,
			.handles = gb->vmap_handles,
		};

		/* Never let vm_unmap_ram() clear a grant PTE (Xen kills the
		 * domain): on failure, leak the range. */
		if (hdm_pte_unmap(&pm, 0, pm.count)) {
			pr_err("hyper_dmabuf: leaking a vmap range with grant PTEs\n");
			gb->vaddr = NULL;
		}
		hdm_pte_map_free(&pm);
		gb->vmap_handles = NULL;
		gb->vmap_ptes = NULL;
	}
	if (gb->vaddr)
		vm_unmap_ram(gb->vaddr, gb->d.nr);
	gb->vaddr = NULL;
}

static const struct dma_buf_ops hdm_gbuf_ops = {
	.cache_sgt_mapping = true,
	.map_dma_buf = hdm_gbuf_map,
	.unmap_dma_buf = hdm_gbuf_unmap,
	.release = hdm_gbuf_release,
	.begin_cpu_access = hdm_gbuf_cpu_access,
	.end_cpu_access = hdm_gbuf_cpu_access,
	.mmap = hdm_gbuf_mmap,
	.vmap = hdm_gbuf_vmap,
	.vunmap = hdm_gbuf_vunmap,
};

struct dma_buf *hdm_gbuf_export(const struct hdm_gbuf_desc *desc)
{
	DEFINE_DMA_BUF_EXPORT_INFO(info);
	struct hdm_gbuf *gb;
	struct dma_buf *buf;

	gb = kzalloc(sizeof(*gb), GFP_KERNEL);
	if (!gb)
		return ERR_PTR(-ENOMEM);
	gb->d = *desc;
	info.exp_name = "hyper_dmabuf";
	info.owner = THIS_MODULE;
	info.ops = &hdm_gbuf_ops;
	info.size = desc->size;
	info.flags = desc->writable ? O_RDWR : O_RDONLY;
	info.priv = gb;
	buf = dma_buf_export(&info);
	if (IS_ERR(buf))
		kfree(gb);
	return buf;
}

bool hdm_dmabuf_tryget(struct dma_buf *buf)
{
	return atomic_long_inc_not_zero(&buf->file->f_count);
}

struct dma_buf *hdm_dmabuf_get(int fd)
{
	return dma_buf_get(fd);
}

void hdm_dmabuf_put(struct dma_buf *buf)
{
	dma_buf_put(buf);
}

int hdm_fd_reserve(void)
{
	return get_unused_fd_flags(O_CLOEXEC);
}

void hdm_fd_install(int fd, struct dma_buf *buf)
{
	fd_install(fd, buf->file);
}

void hdm_fd_unreserve(int fd)
{
	put_unused_fd(fd);
}
