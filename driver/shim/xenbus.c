// SPDX-License-Identifier: GPL-2.0
/*
 * XenBus: the frontend and backend xenbus_drivers, each slot a trampoline
 * into hdm_rs_*; a backend's watch on its `online` node; the device's
 * fields; and its state switches, serialised by one lock.
 */
#include <linux/mutex.h>
#include <linux/slab.h>
#include <xen/xenbus.h>

#include "internal.h"

static const struct xenbus_device_id hdm_xenbus_ids[] = {
	{ "hyper_dmabuf" },
	{ "" }
};

static int hdm_front_probe(struct xenbus_device *dev,
			   const struct xenbus_device_id *id)
{
	return hdm_rs_front_probe(dev);
}

static void hdm_front_changed(struct xenbus_device *dev,
			      enum xenbus_state state)
{
	hdm_rs_front_changed(dev, state);
}

static int hdm_back_probe(struct xenbus_device *dev,
			  const struct xenbus_device_id *id)
{
	return hdm_rs_back_probe(dev);
}

static void hdm_back_changed(struct xenbus_device *dev, enum xenbus_state state)
{
	hdm_rs_back_changed(dev, state);
}

static struct xenbus_driver hdm_front_driver = {
	.ids = hdm_xenbus_ids,
	.probe = hdm_front_probe,
	.otherend_changed = hdm_front_changed,
	.remove = hdm_rs_front_remove,
	.not_essential = true,
};

static struct xenbus_driver hdm_back_driver = {
	.ids = hdm_xenbus_ids,
	.probe = hdm_back_probe,
	.otherend_changed = hdm_back_changed,
	.remove = hdm_rs_back_remove,
	.allow_rebind = true,
};

int hdm_xenbus_register(void)
{
	int err = xenbus_register_frontend(&hdm_front_driver);

	if (err)
		return err;
	err = xenbus_register_backend(&hdm_back_driver);
	if (err)
		xenbus_unregister_driver(&hdm_front_driver);
	return err;
}

void hdm_xenbus_unregister(void)
{
	xenbus_unregister_driver(&hdm_back_driver);
	xenbus_unregister_driver(&hdm_front_driver);
}

struct hdm_online_watch {
	struct xenbus_watch watch;
	struct xenbus_device *dev;
};

static void hdm_online_changed(struct xenbus_watch *watch, const char *path,
			       const char *token)
{
	struct hdm_online_watch *w = container_of(watch, struct hdm_online_watch, watch);

	hdm_rs_back_online(w->dev);
}

struct hdm_online_watch *hdm_watch_online(struct xenbus_device *dev)
{
	struct hdm_online_watch *w = kzalloc(sizeof(*w), GFP_KERNEL);

	if (!w)
		return NULL;
	w->dev = dev;
	if (xenbus_watch_pathfmt(dev, &w->watch, NULL, hdm_online_changed,
				 "%s/online", dev->nodename)) {
		kfree(w);
		return NULL;
	}
	return w;
}

void hdm_unwatch_online(struct hdm_online_watch *w)
{
	unregister_xenbus_watch(&w->watch);
	kfree(w->watch.node);
	kfree(w);
}

const char *hdm_xb_nodename(struct xenbus_device *dev)
{
	return dev->nodename;
}

const char *hdm_xb_otherend(struct xenbus_device *dev)
{
	return dev->otherend;
}

int hdm_xb_otherend_id(struct xenbus_device *dev)
{
	return dev->otherend_id;
}

/* A leaf: nothing else is taken under it. */
static DEFINE_MUTEX(hdm_state_lock);

void hdm_xb_switch_state(struct xenbus_device *dev, int state)
{
	mutex_lock(&hdm_state_lock);
	xenbus_switch_state(dev, state);
	mutex_unlock(&hdm_state_lock);
}

void hdm_xb_frontend_closed(struct xenbus_device *dev)
{
	mutex_lock(&hdm_state_lock);
	xenbus_frontend_closed(dev);
	mutex_unlock(&hdm_state_lock);
}

void hdm_xb_set_drvdata(struct xenbus_device *dev, void *data)
{
	dev_set_drvdata(&dev->dev, data);
}

void *hdm_xb_get_drvdata(struct xenbus_device *dev)
{
	return dev_get_drvdata(&dev->dev);
}
