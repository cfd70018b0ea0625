// SPDX-License-Identifier: GPL-2.0
/* The C shim is shared with the frontend; see front/hyper_dmabuf_shim.h. */
#include "../front/shim.c"
