/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What hyper_dmabuf.ko exports to companion modules (namespace
 * HYPER_DMABUF). Only test/hdm_check.c, the test-only
 * hyper_dmabuf_check.ko, uses it; depending on a symbol of ours keeps
 * hyper_dmabuf.ko loaded while it is.
 */
#ifndef HYPER_DMABUF_SHIM_EXPORTS_H
#define HYPER_DMABUF_SHIM_EXPORTS_H

struct dentry;

/* The driver's debugfs directory, /sys/kernel/debug/hyper_dmabuf. */
struct dentry *hdm_debugfs_dir(void);

#endif /* HYPER_DMABUF_SHIM_EXPORTS_H */
