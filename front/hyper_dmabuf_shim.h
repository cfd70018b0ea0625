/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C shim of the hyper-dmabuf kernel modules: out-of-line wrappers for the
 * static inline functions and macros of the kernel headers that bindgen
 * cannot bind. Nothing else belongs here; all logic is in Rust.
 *
 * Shared by hyper_dmabuf_front.ko and hyper_dmabuf_back.ko (back/shim.c
 * includes front/shim.c), so the symbols are static to each module.
 */
#ifndef HYPER_DMABUF_SHIM_H
#define HYPER_DMABUF_SHIM_H

#include <linux/types.h>

/* xen/xen.h: xen_domain(). */
bool hdm_xen_domain(void);
/* xen/xen.h: xen_initial_domain(). */
bool hdm_xen_initial_domain(void);
/* xen/xen.h: xen_pv_domain(). */
bool hdm_xen_pv_domain(void);
/* xen/xen.h: xen_hvm_domain(). */
bool hdm_xen_hvm_domain(void);
/* xen/xen.h: xen_pvh_domain(). */
bool hdm_xen_pvh_domain(void);

/*
 * Fault injection for the VM test runner's self-test: the value of the
 * module parameter `inject_warn`, and a WARN() with the given message.
 */
bool hdm_inject_warn_requested(void);
void hdm_warn(const char *msg);

#endif /* HYPER_DMABUF_SHIM_H */
