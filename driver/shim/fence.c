// SPDX-License-Identifier: GPL-2.0
/*
 * Fences that cross domains (protocol version 3), the kernel's half:
 *
 * - importer: a dma_fence that stands for one of the peer's, added to the
 *   imported dma-buf's reservation object with write usage, signalled
 *   (possibly with an error) when Rust says so;
 * - exporter: the unsignalled write fences of a dma-buf we export, as one
 *   fence, and a watch that tells Rust, in process context, once it
 *   signals.
 *
 * Rust decides which fence is which and when each ends
 * (common::fence, common::ledger); this file only carries it out.
 */
#include <linux/dma-buf.h>
#include <linux/dma-fence.h>
#include <linux/dma-resv.h>
#include <linux/list.h>
#include <linux/llist.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#include "internal.h"

/* --- importer: the peer's fences as ours ------------------------------------ */

struct hdm_peer_fence {
	struct dma_fence base;
	spinlock_t lock;
	char timeline[16];	/* "dom<peer>" */
};

static const char *hdm_fence_driver_name(struct dma_fence *fence)
{
	return "hyper_dmabuf";
}

static const char *hdm_fence_timeline_name(struct dma_fence *fence)
{
	return container_of(fence, struct hdm_peer_fence, base)->timeline;
}

/*
 * A fence outlives the dma-buf it was added to (a sync_file exported from
 * it, a waiter's reference), and the core calls its ops until it is freed
 * (sync_file info, tracepoints): each fence pins the module, so rmmod
 * fails while a process still holds one. The put is the release op's last
 * call, the pattern of every module that frees its own objects' memory
 * from their ops.
 */
static void hdm_fence_release(struct dma_fence *fence)
{
	dma_fence_free(fence);
	module_put(THIS_MODULE);
}

static const struct dma_fence_ops hdm_peer_fence_ops = {
	.get_driver_name = hdm_fence_driver_name,
	.get_timeline_name = hdm_fence_timeline_name,
	.release = hdm_fence_release,
};

struct dma_fence *hdm_fence_new(unsigned short peer)
{
	/*
	 * GFP_NOWAIT: made under the connection's lock, which the path that
	 * signals the peer's fences takes; reclaim may wait for a fence.
	 */
	struct hdm_peer_fence *f = kzalloc(sizeof(*f), GFP_NOWAIT);

	if (!f)
		return NULL;
	__module_get(THIS_MODULE);
	spin_lock_init(&f->lock);
	snprintf(f->timeline, sizeof(f->timeline), "dom%u", peer);
	/*
	 * A context of its own: the peer signals its fences in any order, and
	 * fences of one context must signal in order.
	 */
	dma_fence_init(&f->base, &hdm_peer_fence_ops, &f->lock,
		       dma_fence_context_alloc(1), 1);
	return &f->base;
}

struct dma_fence *hdm_fence_get(struct dma_fence *fence)
{
	return dma_fence_get(fence);
}

void hdm_fence_put(struct dma_fence *fence)
{
	dma_fence_put(fence);
}

void hdm_fence_end(struct dma_fence *fence, int error)
{
	if (error)
		dma_fence_set_error(fence, error);
	dma_fence_signal(fence);
	dma_fence_put(fence);
}

static int hdm_add_fence_locked(struct dma_buf *buf, struct dma_fence *fence)
{
	int err = dma_resv_reserve_fences(buf->resv, 1);

	if (!err)
		dma_resv_add_fence(buf->resv, fence, DMA_RESV_USAGE_WRITE);
	dma_resv_unlock(buf->resv);
	return err;
}

int hdm_dmabuf_lock_for_fences(struct dma_buf *buf, unsigned int count)
{
	int err;

	dma_resv_lock(buf->resv, NULL);
	err = dma_resv_reserve_fences(buf->resv, count);
	if (err)
		dma_resv_unlock(buf->resv);
	return err;
}

void hdm_dmabuf_add_reserved_fence(struct dma_buf *buf, struct dma_fence *fence)
{
	dma_resv_add_fence(buf->resv, fence, DMA_RESV_USAGE_WRITE);
}

void hdm_dmabuf_unlock(struct dma_buf *buf)
{
	dma_resv_unlock(buf->resv);
}

bool hdm_fence_is_signalled(struct dma_fence *fence)
{
	return dma_fence_is_signaled(fence);
}

int hdm_dmabuf_try_add_fence(struct dma_buf *buf, struct dma_fence *fence)
{
	/*
	 * Never wait for the lock: its holder may be waiting for a fence of
	 * ours that only the caller's connection can signal.
	 */
	if (!dma_resv_trylock(buf->resv))
		return -EBUSY;
	return hdm_add_fence_locked(buf, fence);
}

bool hdm_fence_begin_signalling(void)
{
	return dma_fence_begin_signalling();
}

void hdm_fence_end_signalling(bool cookie)
{
	dma_fence_end_signalling(cookie);
}

/* --- exporter: our fences, watched --------------------------------------------- */

struct hdm_fence_watch {
	struct dma_fence_cb cb;
	struct dma_fence *fence;
	unsigned long long conn;
	unsigned long long id;
	struct list_head node;		/* hdm_watches, once armed */
	struct llist_node done;		/* hdm_watches_done, once signalled */
};

/* Armed watches whose callback has not been removed. */
static LIST_HEAD(hdm_watches);
static DEFINE_SPINLOCK(hdm_watches_lock);
/* Signalled, for the work item to report in process context. */
static LLIST_HEAD(hdm_watches_done);

static void hdm_watch_work_fn(struct work_struct *work);
static DECLARE_WORK(hdm_watch_work, hdm_watch_work_fn);

static void hdm_watch_free(struct hdm_fence_watch *w)
{
	dma_fence_put(w->fence);
	kfree(w);
}

static void hdm_watch_work_fn(struct work_struct *work)
{
	struct llist_node *done = llist_reverse_order(llist_del_all(&hdm_watches_done));
	struct hdm_fence_watch *w, *next;

	llist_for_each_entry_safe(w, next, done, done) {
		spin_lock(&hdm_watches_lock);
		list_del(&w->node);
		spin_unlock(&hdm_watches_lock);
		hdm_rs_fence_signalled(w->conn, w->id, w->fence->error);
		hdm_watch_free(w);
	}
}

/* Runs under the fence's lock, maybe in IRQ context: hand over, no more. */
static void hdm_watch_signalled(struct dma_fence *fence, struct dma_fence_cb *cb)
{
	struct hdm_fence_watch *w = container_of(cb, struct hdm_fence_watch, cb);

	llist_add(&w->done, &hdm_watches_done);
	queue_work(hdm_wq, &hdm_watch_work);
}

struct hdm_fence_watch *hdm_fence_watch_new(struct dma_buf *buf)
{
	struct hdm_fence_watch *w;
	struct dma_fence *fence = NULL;
	int err;

	/* What a reader must wait for: the write fences, as one. */
	err = dma_resv_get_singleton(buf->resv, DMA_RESV_USAGE_WRITE, &fence);
	if (err)
		return ERR_PTR(err);
	if (!fence)
		return NULL;
	if (dma_fence_is_signaled(fence)) {
		dma_fence_put(fence);
		return NULL;
	}
	w = kzalloc(sizeof(*w), GFP_KERNEL);
	if (!w) {
		dma_fence_put(fence);
		return ERR_PTR(-ENOMEM);
	}
	w->fence = fence;
	INIT_LIST_HEAD(&w->node);
	INIT_LIST_HEAD(&w->cb.node);
	return w;
}

void hdm_fence_watch_free(struct hdm_fence_watch *w)
{
	hdm_watch_free(w);
}

void hdm_fence_watch_arm(struct hdm_fence_watch *w, unsigned long long conn,
			 unsigned long long id)
{
	w->conn = conn;
	w->id = id;
	spin_lock(&hdm_watches_lock);
	list_add_tail(&w->node, &hdm_watches);
	spin_unlock(&hdm_watches_lock);
	/* Signalled meanwhile: report it all the same, from the work item. */
	if (dma_fence_add_callback(w->fence, &w->cb, hdm_watch_signalled))
		hdm_watch_signalled(w->fence, &w->cb);
}

/*
 * Stops the watches of `conn` (all with `all`) whose callback has not run;
 * how many.
 */
static unsigned int hdm_fence_watch_stop(unsigned long long conn, bool all)
{
	struct hdm_fence_watch *w, *next;
	unsigned int count = 0;
	LIST_HEAD(stopped);

	spin_lock(&hdm_watches_lock);
	list_for_each_entry_safe(w, next, &hdm_watches, node) {
		if ((all || w->conn == conn) &&
		    dma_fence_remove_callback(w->fence, &w->cb))
			list_move(&w->node, &stopped);
	}
	spin_unlock(&hdm_watches_lock);
	list_for_each_entry_safe(w, next, &stopped, node) {
		hdm_watch_free(w);
		count++;
	}
	return count;
}

unsigned int hdm_fence_watch_cancel(unsigned long long conn)
{
	return hdm_fence_watch_stop(conn, false);
}

void hdm_fence_watch_drain(void)
{
	hdm_fence_watch_stop(0, true);
	/*
	 * The rest signalled: their callbacks queue the work (under the fence
	 * lock, which dma_fence_remove_callback() took after them), and the
	 * work reports and frees them.
	 */
	flush_work(&hdm_watch_work);
}
