// SPDX-License-Identifier: GPL-2.0
/*
 * debugfs: /sys/kernel/debug/hyper_dmabuf/{stats,rings}, shown by Rust
 * (DEFINE_SHOW_ATTRIBUTE is a macro). The test hook `check` in the same
 * directory is another module's (test/hdm_check.c), never this one's.
 */
#include <linux/debugfs.h>
#include <linux/export.h>
#include <linux/seq_file.h>

#include "exports.h"
#include "internal.h"

static struct dentry *hdm_debugfs;

static int hdm_stats_show(struct seq_file *m, void *unused)
{
	hdm_rs_stats_show(m);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(hdm_stats);

static int hdm_rings_show(struct seq_file *m, void *unused)
{
	hdm_rs_rings_show(m);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(hdm_rings);

void hdm_seq_puts(struct seq_file *m, const char *s)
{
	seq_puts(m, s);
}

void hdm_debugfs_register(void)
{
	hdm_debugfs = debugfs_create_dir("hyper_dmabuf", NULL);
	debugfs_create_file("stats", 0400, hdm_debugfs, NULL, &hdm_stats_fops);
	debugfs_create_file("rings", 0400, hdm_debugfs, NULL, &hdm_rings_fops);
}

void hdm_debugfs_unregister(void)
{
	debugfs_remove(hdm_debugfs);
}

struct dentry *hdm_debugfs_dir(void)
{
	return hdm_debugfs;
}
EXPORT_SYMBOL_NS_GPL(hdm_debugfs_dir, HYPER_DMABUF);
