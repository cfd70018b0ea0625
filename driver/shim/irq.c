// SPDX-License-Identifier: GPL-2.0
/*
 * A connection's event-channel IRQ: the hard handler queues a work item,
 * which runs one pass of hdm_rs_irq() and does what the pass says (queue
 * itself again, or the late EOI); and the connection's notice timer, which
 * runs hdm_rs_irq_notice() to pay a notification owed to the peer. See
 * shim.h.
 */
#include <linux/interrupt.h>
#include <linux/jiffies.h>
#include <linux/slab.h>
#include <linux/workqueue.h>
#include <xen/events.h>

#include "internal.h"

struct hdm_irq {
	struct work_struct work;
	struct delayed_work notice;
	unsigned int irq;
	void *ctx;
};

static void hdm_irq_notice_fn(struct work_struct *work)
{
	struct hdm_irq *hi = container_of(to_delayed_work(work), struct hdm_irq, notice);

	hdm_rs_irq_notice(hi->ctx);
}

static void hdm_irq_work(struct work_struct *work)
{
	struct hdm_irq *hi = container_of(work, struct hdm_irq, work);
	int pass = hdm_rs_irq(hi->ctx);

	if (pass == HDM_IRQ_MORE)
		queue_work(hdm_wq, &hi->work);
	else
		xen_irq_lateeoi(hi->irq, pass == HDM_IRQ_IDLE ? XEN_EOI_FLAG_SPURIOUS : 0);
}

static irqreturn_t hdm_irq_handler(int irq, void *data)
{
	struct hdm_irq *hi = data;

	queue_work(hdm_wq, &hi->work);
	return IRQ_HANDLED;
}

struct hdm_irq *hdm_irq_request(unsigned int irq, void *ctx, const char *name)
{
	struct hdm_irq *hi = kzalloc(sizeof(*hi), GFP_KERNEL);

	if (!hi)
		return NULL;
	INIT_WORK(&hi->work, hdm_irq_work);
	INIT_DELAYED_WORK(&hi->notice, hdm_irq_notice_fn);
	hi->irq = irq;
	hi->ctx = ctx;
	if (request_irq(irq, hdm_irq_handler, 0, name, hi)) {
		kfree(hi);
		return NULL;
	}
	return hi;
}

void hdm_irq_kick(struct hdm_irq *hi)
{
	queue_work(hdm_wq, &hi->work);
}

void hdm_irq_notice_later(struct hdm_irq *hi, unsigned int ms)
{
	/* A notice already due stays due: the debt is as old as its first. */
	queue_delayed_work(hdm_wq, &hi->notice, msecs_to_jiffies(ms));
}

void hdm_irq_free(struct hdm_irq *hi)
{
	/* No new event queues the work; then no pass runs or is queued. */
	disable_irq(hi->irq);
	cancel_work_sync(&hi->work);
	/* Nothing schedules the notice once the connection let go of the
	 * IRQ (the caller took it out of reach first). */
	disable_delayed_work_sync(&hi->notice);
	unbind_from_irqhandler(hi->irq, hi);
	kfree(hi);
}
