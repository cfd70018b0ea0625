// SPDX-License-Identifier: GPL-2.0
/*
 * Export side: a local dma-buf pinned for us (attached to the control
 * device and mapped), the Xen frame of each of its pages, and pages of
 * our own for the page directory.
 */
#include <linux/dma-buf.h>
#include <linux/dma-map-ops.h>
#include <linux/gfp.h>
#include <linux/memory_hotplug.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/string.h>
#include <linux/swiotlb.h>
#include <xen/features.h>
#include <xen/page.h>
#include <asm/xen/page.h>

#include "internal.h"

/*
 * The control device's DMA operations. It is no DMA master: the driver
 * attaches it to a dma-buf it exports only to learn which pages the
 * buffer is made of, and grants those pages; the CPU and the peer reach
 * them, no device does. So a "DMA address" for it is the page's physical
 * address, as x86's nommu operations once gave.
 *
 * The platform's operations would be Xen's swiotlb in dom0, which
 * bounces any sg segment whose pages are not machine-contiguous or not
 * as aligned in machine memory as they are in pseudo-physical memory
 * (range_straddles_page_boundary): a GEM buffer's merged segments
 * (drm_prime_pages_to_sg) would then map to bounce buffers, which are
 * not the buffer, and the export would be refused at random, by how
 * the domain's memory happens to be laid out. Nothing here needs a
 * sync, as nothing here caches: the calls are no-ops.
 */
static dma_addr_t hdm_identity_map_page(struct device *dev, struct page *page,
					unsigned long offset, size_t size,
					enum dma_data_direction dir, unsigned long attrs)
{
	return page_to_phys(page) + offset;
}

static void hdm_identity_unmap_page(struct device *dev, dma_addr_t addr, size_t size,
				    enum dma_data_direction dir, unsigned long attrs)
{
}

static int hdm_identity_map_sg(struct device *dev, struct scatterlist *sgl, int nents,
			       enum dma_data_direction dir, unsigned long attrs)
{
	struct scatterlist *sg;
	int i;

	for_each_sg(sgl, sg, nents, i) {
		sg_dma_address(sg) = sg_phys(sg);
		sg_dma_len(sg) = sg->length;
	}
	return nents;
}

static void hdm_identity_unmap_sg(struct device *dev, struct scatterlist *sgl, int nents,
				  enum dma_data_direction dir, unsigned long attrs)
{
}

/*
 * Device memory an exporter maps for a peer (a GPU's VRAM through
 * dma_map_resource) gets its physical address too: the walk then refuses
 * it as "not system RAM", which says more than a failed map would.
 */
static dma_addr_t hdm_identity_map_resource(struct device *dev, phys_addr_t phys,
					    size_t size, enum dma_data_direction dir,
					    unsigned long attrs)
{
	return phys;
}

const struct dma_map_ops hdm_identity_dma_ops = {
	.map_page = hdm_identity_map_page,
	.unmap_page = hdm_identity_unmap_page,
	.map_sg = hdm_identity_map_sg,
	.unmap_sg = hdm_identity_unmap_sg,
	.map_resource = hdm_identity_map_resource,
};

/* Without DMA ops of its own, the device's addresses would be bus addresses. */
#if !IS_ENABLED(CONFIG_ARCH_HAS_DMA_OPS)
#error "hyper_dmabuf needs CONFIG_ARCH_HAS_DMA_OPS (x86 selects it with CONFIG_XEN)"
#endif

/*
 * Whether the page at `pfn` maps another domain's frame (a grant mapping:
 * an imported buffer exported on). PG_foreign shares its bit with
 * PG_xen_remapped, which swiotlb-xen sets on the first page of a coherent
 * allocation it had to make machine-contiguous (a dma-contig V4L2 buffer
 * in dom0 has it), and with page-cache and swap-cache flags. So in a PV
 * domain the p2m decides: a grant mapping marks its entry FOREIGN_FRAME
 * (a ballooned-out page's entry, all ones, is no frame at all). An
 * auto-translated domain has no p2m of its own to read, and no
 * swiotlb-xen: there the page flag is all there is.
 */
static bool hdm_pfn_foreign(unsigned long pfn)
{
	unsigned long mfn;

	if (xen_feature(XENFEAT_auto_translated_physmap))
		return pfn_valid(pfn) && PageForeign(pfn_to_page(pfn));
	mfn = __pfn_to_mfn(pfn);
	return mfn != INVALID_P2M_ENTRY && (mfn & FOREIGN_FRAME_BIT);
}

/*
 * Whether the page at `pfn` is ordinary RAM of this domain, in use: the
 * only kind it may grant. pfn_valid() alone would pass any page of a
 * present memory section: reserved ones (the kernel's image, firmware,
 * holes), free ones, device memory (ZONE_DEVICE). A free block's first
 * page is a buddy page; the reference count tells nothing, as the tail
 * pages of a non-compound allocation (dma-direct's coherent buffers,
 * V4L2's dma-contig) have none. In a PV domain the frame behind it must
 * be one: not ballooned out (no frame), and not an identity entry (the
 * host's own MMIO or firmware frames).
 */
static bool hdm_pfn_ordinary(unsigned long pfn)
{
	struct page *page = pfn_to_online_page(pfn);
	unsigned long mfn;

	if (!page || PageReserved(page) || is_zone_device_page(page) || PageBuddy(page))
		return false;
	if (xen_feature(XENFEAT_auto_translated_physmap))
		return true;
	mfn = __pfn_to_mfn(pfn);
	return mfn != INVALID_P2M_ENTRY && !(mfn & IDENTITY_FRAME_BIT);
}

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
	/* The walk reads the addresses of these operations, and no others. */
	if (WARN_ON_ONCE(get_dma_ops(hdm_misc_device()) != &hdm_identity_dma_ops)) {
		err = -EIO;
		goto out_put;
	}
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
	struct scatterlist *sg;
	unsigned int i = 0;
	int n;

	memset(walk, 0, sizeof(*walk));
	walk->segment = sgt->sgl != NULL && sgt->nents > 0;
	if (!walk->segment)
		return;
	walk->first_offset = offset_in_page(sg_dma_address(sgt->sgl));
	/*
	 * Every segment must be whole pages: the page walk below counts a
	 * segment's partial pages as whole ones, and would grant the bytes
	 * of a page the buffer only partly covers.
	 */
	for_each_sgtable_dma_sg(sgt, sg, n) {
		if (!PAGE_ALIGNED(sg_dma_address(sg)) || !PAGE_ALIGNED(sg_dma_len(sg))) {
			walk->ragged = true;
			walk->ragged_segment = n;
			break;
		}
	}
	for_each_sgtable_dma_page(sgt, &iter, 0) {
		/*
		 * A physical address (hdm_identity_dma_ops): unlike
		 * gntdev-dmabuf, which reads machine addresses back through
		 * the m2p, no exporter's layout in machine memory matters.
		 */
		unsigned long pfn = PHYS_PFN(sg_page_iter_dma_address(&iter));

		if (i == cap) {
			/* One page more than asked for is all Rust needs to know. */
			i++;
			break;
		}
		facts[i] = 0;
		gfns[i] = 0;
		if (hdm_pfn_foreign(pfn))
			facts[i] |= HDM_PAGE_FOREIGN;
		if (hdm_pfn_ordinary(pfn)) {
			facts[i] |= HDM_PAGE_RAM;
			gfns[i] = pfn_to_gfn(pfn);
		}
		/* Never with the operations above; kept as a guard. */
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
