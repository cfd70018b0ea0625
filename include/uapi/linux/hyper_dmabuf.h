/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR MIT) */
/*
 * hyper_dmabuf: share dma-bufs between Xen domains.
 *
 * The user-space interface of the device HDMABUF_DEVICE_PATH: the records
 * of its ioctls, the event records read() returns, and their constants.
 * docs/uapi.md describes every command, event and error.
 *
 * Every record is made of fixed-width fields in the machine's byte order
 * (little-endian on every architecture Xen runs on), each at a multiple of
 * its natural alignment, with explicit padding: the layout is the same for
 * 32-bit and 64-bit processes. Reserved fields must be zero; output fields
 * are ignored on input. Pointers are passed as __u64 user addresses.
 *
 * The Rust definitions (common/src/uapi/layout.rs) are the reference; the
 * host test common/tests/c_header.rs checks every size, offset, field type
 * and constant of this header against them.
 */
#ifndef _UAPI_LINUX_HYPER_DMABUF_H
#define _UAPI_LINUX_HYPER_DMABUF_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define HDMABUF_DEVICE_PATH "/dev/xen/hyper_dmabuf"

/* Bytes of random key in a buffer id. */
#define HDMABUF_KEY_LEN 16
/* Characters of an id's text form, without the terminating NUL. */
#define HDMABUF_ID_TEXT_LEN 49
/* Most bytes of private data an export carries. */
#define HDMABUF_MAX_PRIV_LEN 192
/* Longest delay of a delayed unexport: 10 minutes. */
#define HDMABUF_MAX_UNEXPORT_DELAY_MS 600000

/*
 * A shared buffer's id: the exporting domain's number for it and a random
 * key. Both are needed to import the buffer; a number alone is useless.
 * Text form (HDMABUF_ID_TEXT_LEN characters): the number as 16 lowercase
 * hex digits, '-', then the 16 key bytes in order as 32 hex digits, e.g.
 * "000000000000002a-00112233445566778899aabbccddeeff".
 */
struct hdmabuf_id {
	__u64 id;			/* never 0 */
	__u8 key[HDMABUF_KEY_LEN];
};

/* flags of struct hdmabuf_export: let the importer map it writable. */
#define HDMABUF_EXPORT_RW (1U << 0)

/*
 * HDMABUF_IOCTL_EXPORT: share the dma-buf dmabuf_fd with remote_domid.
 * Exporting the same dma-buf to the same domain again, from the file that
 * exported it (or an administrator's) with the same flags, updates its
 * private data and returns the same id; another file gets EPERM, other
 * flags EINVAL.
 */
struct hdmabuf_export {
	__s32 dmabuf_fd;		/* in: the local dma-buf */
	__u32 remote_domid;		/* in: the domain to share it with */
	__u32 flags;			/* in: HDMABUF_EXPORT_RW or 0 */
	__u32 priv_len;			/* in: bytes of priv used */
	__u8 priv[HDMABUF_MAX_PRIV_LEN]; /* in: for the importer; zero past priv_len */
	struct hdmabuf_id hid;		/* out: the buffer's id */
};

/*
 * flags of struct hdmabuf_import. In: HDMABUF_IMPORT_RW maps writable
 * (needs HDMABUF_EXPORT_RW). Out: HDMABUF_IMPORT_MODE_OUT is set, and
 * HDMABUF_IMPORT_RW if the new fd is O_RDWR (a buffer this domain maps
 * already comes back as it is mapped, whatever was asked). Set flags
 * again before reusing the struct: HDMABUF_IMPORT_MODE_OUT is EINVAL in.
 */
#define HDMABUF_IMPORT_RW (1U << 0)
#define HDMABUF_IMPORT_MODE_OUT (1U << 1)

/* HDMABUF_IOCTL_IMPORT: a new dma-buf fd for a buffer exported to us. */
struct hdmabuf_import {
	struct hdmabuf_id hid;		/* in: the buffer */
	__u32 flags;			/* in: HDMABUF_IMPORT_RW or 0; out: the fd's mode */
	__s32 fd;			/* out: the dma-buf, O_CLOEXEC */
	__u64 size;			/* out: its size in bytes */
};

/* HDMABUF_IOCTL_UNEXPORT: revoke an export, now or after delay_ms. */
struct hdmabuf_unexport {
	struct hdmabuf_id hid;		/* in: a buffer this domain exports */
	__u32 delay_ms;			/* in: 0 (now) to HDMABUF_MAX_UNEXPORT_DELAY_MS */
	__u32 reserved;			/* zero */
};

/* item of struct hdmabuf_query: what value answers. */
#define HDMABUF_QUERY_TYPE 1		/* HDMABUF_KIND_EXPORTED or HDMABUF_KIND_IMPORTED */
#define HDMABUF_QUERY_EXPORTER 2	/* domain id of the exporter */
#define HDMABUF_QUERY_IMPORTER 3	/* domain id of the importer */
#define HDMABUF_QUERY_SIZE 4		/* size in bytes */
#define HDMABUF_QUERY_BUSY 5		/* 1 while the importer maps it */
#define HDMABUF_QUERY_UNEXPORTED 6	/* 1 once it was revoked */
#define HDMABUF_QUERY_DELAYED_UNEXPORTED 7 /* 1 while a delayed unexport waits */
#define HDMABUF_QUERY_PRIV_SIZE 8	/* bytes of private data */
#define HDMABUF_QUERY_PRIV 9		/* private data copied to data_ptr; its length */
#define HDMABUF_QUERY_FLAGS 10		/* the export's flags (HDMABUF_EXPORT_RW) */

/*
 * HDMABUF_IOCTL_UPDATE: a new frame in a buffer this domain exports. Its
 * private data becomes priv and the importer is told (an UPDATE event),
 * without waiting for it: the call returns once the message is queued.
 * When the ring is full, each buffer's newest update waits in the kernel
 * and is sent as soon as there is room, in the order of the calls; an
 * older update of the same buffer not yet sent is replaced.
 */
struct hdmabuf_update {
	struct hdmabuf_id hid;		/* in: a buffer this domain exports */
	__u32 flags;			/* in: zero */
	__u32 priv_len;			/* in: bytes of priv used */
	__u8 priv[HDMABUF_MAX_PRIV_LEN]; /* in: for the importer; zero past priv_len */
};

/* HDMABUF_IOCTL_QUERY: one fact about a buffer. */
struct hdmabuf_query {
	struct hdmabuf_id hid;		/* in: the buffer */
	__u32 item;			/* in: HDMABUF_QUERY_* */
	__u32 reserved0;		/* zero */
	__u64 value;			/* out: the answer */
	__u64 data_ptr;			/* in: user address for HDMABUF_QUERY_PRIV, else 0 */
	__u32 data_len;			/* in: bytes at data_ptr */
	__u32 reserved1;		/* zero */
};

/* kind of struct hdmabuf_list_entry (and HDMABUF_QUERY_TYPE's value). */
#define HDMABUF_KIND_EXPORTED 0		/* this domain exports it */
#define HDMABUF_KIND_IMPORTED 1		/* a peer exports it to this domain */

/* state bits of struct hdmabuf_list_entry. */
#define HDMABUF_STATE_BUSY (1U << 0)	/* the importer maps it */
#define HDMABUF_STATE_UNEXPORTED (1U << 1) /* revoked */
#define HDMABUF_STATE_DELAYED_UNEXPORT (1U << 2) /* a delayed unexport waits */
#define HDMABUF_STATE_RW (1U << 3)	/* shared read-write */

/* One buffer, as HDMABUF_IOCTL_LIST writes it. */
struct hdmabuf_list_entry {
	struct hdmabuf_id hid;
	__u64 size;			/* bytes */
	__u32 peer_domid;		/* the importer (exported) or exporter (imported) */
	__u32 kind;			/* HDMABUF_KIND_* */
	__u32 state;			/* HDMABUF_STATE_* bits */
	__u32 reserved;			/* zero */
};

/*
 * HDMABUF_IOCTL_LIST: the buffers this file may see. min(count, capacity)
 * entries are written to entries_ptr; count says how many exist.
 */
struct hdmabuf_list {
	__u64 entries_ptr;		/* in: user address of capacity entries */
	__u32 capacity;			/* in */
	__u32 count;			/* out */
};

/* type of struct hdmabuf_event. */
#define HDMABUF_EVENT_NEW_EXPORT 1	/* importer side: a peer exported a buffer to us */
#define HDMABUF_EVENT_UPDATE 2		/* importer side: its private data changed */
#define HDMABUF_EVENT_UNEXPORT 3	/* importer side: revoked, no new imports */
#define HDMABUF_EVENT_MAPPED 4		/* exporter side: the importer mapped it */
#define HDMABUF_EVENT_RELEASED 5	/* exporter side: the importer let go of it */
#define HDMABUF_EVENT_GRANTS_ENDED 6	/* exporter side: unexported, every grant ended */
#define HDMABUF_EVENT_PEER_CONNECTED 7	/* a peer domain connected */
#define HDMABUF_EVENT_PEER_DISCONNECTED 8 /* a peer domain went away */

/* One record read() returns; a read takes whole records only. */
struct hdmabuf_event {
	__u32 type;			/* HDMABUF_EVENT_* */
	__u32 peer_domid;		/* the other domain */
	struct hdmabuf_id hid;		/* the buffer; all zero for peer events */
	__u64 size;			/* the buffer's size in bytes; 0 for peer events */
	__u32 flags;			/* HDMABUF_EXPORT_RW (importer-side events) */
	__u32 priv_len;			/* bytes of priv used */
	__u8 priv[HDMABUF_MAX_PRIV_LEN]; /* private data (NEW_EXPORT, UPDATE) */
	__u32 lost;			/* events about the same peer dropped before this one */
	__u8 reserved[12];		/* zero */
};

#define HDMABUF_IOCTL_MAGIC 0xB9

#define HDMABUF_IOCTL_EXPORT _IOWR(HDMABUF_IOCTL_MAGIC, 1, struct hdmabuf_export)
#define HDMABUF_IOCTL_IMPORT _IOWR(HDMABUF_IOCTL_MAGIC, 2, struct hdmabuf_import)
#define HDMABUF_IOCTL_UNEXPORT _IOWR(HDMABUF_IOCTL_MAGIC, 3, struct hdmabuf_unexport)
#define HDMABUF_IOCTL_QUERY _IOWR(HDMABUF_IOCTL_MAGIC, 4, struct hdmabuf_query)
#define HDMABUF_IOCTL_LIST _IOWR(HDMABUF_IOCTL_MAGIC, 5, struct hdmabuf_list)
#define HDMABUF_IOCTL_UPDATE _IOW(HDMABUF_IOCTL_MAGIC, 6, struct hdmabuf_update)

#endif /* _UAPI_LINUX_HYPER_DMABUF_H */
