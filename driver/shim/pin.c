// SPDX-License-Identifier: GPL-2.0
/*
 * Export side: a local dma-buf pinned for us (attached to the control
 * device and mapped), the Xen frame of each of its pages, and pages of
 * our own for the page directory.
 */
#include <linux/dma-buf.h>
#include <linux/dma-direct.h>
#include <linux/dma-map-ops.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/string.h>
#include <linux/swiotlb.h>
#include <xen/page.h>
#include <asm/xen/page.h>

#include "internal.h"

int hdm_pin_dmabuf(int fd, struct hdm_pin *pin, unsigned int *step)
{
	struct dma_buf_attachment *attach;
	struct sg_table *sgt;
	struct dma_buf *buf;
	int err;

	memset(pin, 0, sizeof(*pin));
	*step = HDM_PIN_GET;
	buf = dma_buf_get(fd);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	*step = HDM_PIN_ATTACH;
	attach = dma_buf_attach(buf, hdm_misc_device());
	if (IS_ERR(attach)) {
		err = PTR_ERR(attach);
		goto out_put;
	}
	*step = HDM_PIN_MAP;
	sgt = dma_buf_map_attachment_unlocked(attach, DMA_BIDIRECTIONAL);
	if (IS_ERR(sgt)) {
		err = PTR_ERR(sgt);
		goto out_detach;
	}
	pin->buf = buf;
	pin->attach = attach;
	pin->sgt = sgt;
	pin->size = buf->size;
	return 0;

out_detach:
	dma_buf_detach(buf, attach);
out_put:
	dma_buf_put(buf);
	return err;
}

void hdm_unpin_dmabuf(struct hdm_pin *pin)
{
	if (!pin->buf)
		return;
	dma_buf_unmap_attachment_unlocked(pin->attach, pin->sgt, DMA_BIDIRECTIONAL);
	dma_buf_detach(pin->buf, pin->attach);
	dma_buf_put(pin->buf);
	memset(pin, 0, sizeof(*pin));
}

void hdm_pin_frames(struct hdm_pin *pin, unsigned long long *gfns,
		    unsigned char *facts, unsigned int cap, struct hdm_pin_walk *walk)
{
	struct device *dev = hdm_misc_device();
	struct sg_table *sgt = pin->sgt;
	struct sg_dma_page_iter iter;
	/*
	 * With Xen's swiotlb (dom0, or a PV guest with PCI devices) a DMA
	 * address is a machine address, whose pfn is found through the m2p,
	 * as gntdev-dmabuf does. A PV domU without it uses dma-direct, whose
	 * addresses are pseudo-physical: gntdev's m2p lookup would then read
	 * a foreign frame number.
	 */
	bool machine = get_dma_ops(dev) != NULL;
	unsigned int i = 0;

	walk->segment = sgt->sgl != NULL;
	walk->first_offset = sgt->sgl ? sgt->sgl->offset : 0;
	walk->pages = 0;
	if (!sgt->sgl)
		return;
	for_each_sgtable_dma_page(sgt, &iter, 0) {
		dma_addr_t addr = sg_page_iter_dma_address(&iter);
		phys_addr_t phys = dma_to_phys(dev, addr);
		unsigned long pfn = machine ? bfn_to_pfn(XEN_PFN_DOWN(phys)) : PHYS_PFN(phys);

		if (i == cap) {
			/* One page more than asked for is all Rust needs to know. */
			i++;
			break;
		}
		facts[i] = 0;
		gfns[i] = 0;
		/* Only a page in the memory map has a struct page to look at. */
		if (pfn_valid(pfn)) {
			facts[i] |= HDM_PAGE_RAM;
			if (PageForeign(pfn_to_page(pfn)))
				facts[i] |= HDM_PAGE_FOREIGN;
			gfns[i] = pfn_to_gfn(pfn);
		}
		if (swiotlb_find_pool(dev, PFN_PHYS(pfn)))
			facts[i] |= HDM_PAGE_BOUNCE;
		i++;
	}
	walk->pages = i;
}

struct page *hdm_alloc_page(void)
{
	return alloc_page(GFP_KERNEL | __GFP_ZERO);
}

void hdm_free_page(struct page *page)
{
	__free_page(page);
}

unsigned long long hdm_page_gfn(struct page *page)
{
	return xen_page_to_gfn(page);
}

void *hdm_page_address(struct page *page)
{
	return page_address(page);
}
