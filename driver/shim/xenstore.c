// SPDX-License-Identifier: GPL-2.0
/*
 * Xenstore: the kernel's xenbus client with transactions as plain ids
 * (struct xenbus_transaction is passed by value), for Rust's Store.
 */
#include <linux/err.h>
#include <linux/limits.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <xen/xenbus.h>

#include "internal.h"

static struct xenbus_transaction hdm_txn(unsigned int id)
{
	struct xenbus_transaction t = { .id = id };

	return t;
}

int hdm_xs_read(unsigned int txn, const char *path, char *buf, unsigned int len)
{
	unsigned int got;
	char *value = xenbus_read(hdm_txn(txn), path, "", &got);

	if (IS_ERR(value))
		return PTR_ERR(value);
	if (got > len || got > INT_MAX) {
		kfree(value);
		return -ENOSPC;
	}
	memcpy(buf, value, got);
	kfree(value);
	return got;
}

int hdm_xs_write(unsigned int txn, const char *path, const char *value)
{
	return xenbus_write(hdm_txn(txn), path, "", value);
}

int hdm_xs_rm(unsigned int txn, const char *path)
{
	return xenbus_rm(hdm_txn(txn), path, "");
}

int hdm_xs_transaction_start(unsigned int *txn)
{
	struct xenbus_transaction t;
	int err = xenbus_transaction_start(&t);

	*txn = t.id;
	return err;
}

int hdm_xs_transaction_end(unsigned int txn, bool abort)
{
	return xenbus_transaction_end(hdm_txn(txn), abort);
}
