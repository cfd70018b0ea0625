// SPDX-License-Identifier: GPL-2.0
/*
 * The driver's timed jobs: one delayed work item that runs hdm_rs_tick()
 * when Rust asked for it (delayed work has no Rust abstraction in 6.12).
 */
#include <linux/jiffies.h>
#include <linux/workqueue.h>

#include "internal.h"

static void hdm_tick_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(hdm_tick_work, hdm_tick_fn);

static void hdm_tick_fn(struct work_struct *work)
{
	unsigned int next = hdm_rs_tick();

	if (next)
		hdm_tick_schedule(next);
}

void hdm_tick_schedule(unsigned int ms)
{
	unsigned long delay = msecs_to_jiffies(ms);

	/* Before registration or after unregistration there is nothing to do. */
	if (!hdm_wq)
		return;
	/* Queue it, or bring a later run forward. */
	if (!queue_delayed_work(hdm_wq, &hdm_tick_work, delay)) {
		unsigned long due = hdm_tick_work.timer.expires;

		if (time_after(due, jiffies + delay))
			mod_delayed_work(hdm_wq, &hdm_tick_work, delay);
	}
}

void hdm_tick_cancel(void)
{
	cancel_delayed_work_sync(&hdm_tick_work);
}

void hdm_tick_disable(void)
{
	/* Not even a schedule racing with this can arm it again. */
	disable_delayed_work_sync(&hdm_tick_work);
}
