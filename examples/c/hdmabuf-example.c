// SPDX-License-Identifier: MIT
/*
 * hdmabuf-example: share a buffer between two Xen domains using nothing
 * but <linux/hyper_dmabuf.h>, the kernel's own uapi headers and libc.
 *
 *   hdmabuf-example export DOMID SIZE SEED [TEXT]
 *   hdmabuf-example import ID SEED
 *
 * export: makes a dma-buf of SIZE bytes (a memfd turned into a dma-buf by
 * /dev/udmabuf), fills it with the test pattern of SEED, exports it to
 * domain DOMID with TEXT as its private data and prints
 *
 *   exported ID (SIZE bytes, seed SEED) to domain DOMID
 *
 * as `hdmabuf export` does. It then waits, at most WAIT_SECONDS, for the
 * importer to map the buffer (a MAPPED event) and let go of it (RELEASED),
 * unexports it and waits for GRANTS_ENDED: from then on no other domain
 * can reach its pages.
 *
 * import: imports the buffer ID (in the text form export printed), maps
 * it, checks that it holds the pattern of SEED and prints OK.
 *
 * The pattern is the hdmabuf tool's (tools/client/src/testing/pattern.rs), so
 * either end may be `hdmabuf export --seed` or `hdmabuf import --verify`.
 * Exit status: 0 success, 1 failure, 2 bad usage.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -I include/uapi -static \
 *            -o hdmabuf-example examples/c/hdmabuf-example.c
 */
#define _GNU_SOURCE /* memfd_create */
#define _FILE_OFFSET_BITS 64 /* a 32-bit build sizes memfds past 2 GiB */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/dma-buf.h>
#include <linux/hyper_dmabuf.h>
#include <linux/udmabuf.h>

/* How long the exporter waits for an importer to map and release. */
#define WAIT_SECONDS 120
/* How long it waits for the grants to end after unexporting. */
#define END_SECONDS 30

static _Noreturn void fail(const char *what)
{
	fprintf(stderr, "hdmabuf-example: %s: %s\n", what, strerror(errno));
	exit(1);
}

static _Noreturn void failx(const char *what)
{
	fprintf(stderr, "hdmabuf-example: %s\n", what);
	exit(1);
}

/* The test pattern: SplitMix64 of each 8-byte word's position. */
static uint64_t pattern_word(uint64_t seed, uint64_t index)
{
	uint64_t z = seed + (index + 1) * 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Byte i of the pattern: words are stored little-endian. */
static uint8_t pattern_byte(uint64_t seed, size_t i)
{
	return (uint8_t)(pattern_word(seed, i / 8) >> (8 * (i % 8)));
}

static void id_to_text(const struct hdmabuf_id *hid, char text[HDMABUF_ID_TEXT_LEN + 1])
{
	int at = sprintf(text, "%016" PRIx64 "-", (uint64_t)hid->id);

	for (int i = 0; i < HDMABUF_KEY_LEN; i++)
		at += sprintf(text + at, "%02x", hid->key[i]);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parses the text form; returns 0, or -1 if text is not an id. */
static int id_from_text(const char *text, struct hdmabuf_id *hid)
{
	memset(hid, 0, sizeof(*hid));
	if (strlen(text) != HDMABUF_ID_TEXT_LEN || text[16] != '-')
		return -1;
	for (int i = 0; i < 16; i++) {
		int digit = hex_digit(text[i]);

		if (digit < 0)
			return -1;
		hid->id = hid->id << 4 | (__u64)digit;
	}
	for (int i = 0; i < HDMABUF_KEY_LEN; i++) {
		int high = hex_digit(text[17 + 2 * i]);
		int low = hex_digit(text[18 + 2 * i]);

		if (high < 0 || low < 0)
			return -1;
		hid->key[i] = (__u8)(high << 4 | low);
	}
	return hid->id == 0 ? -1 : 0;
}

static int same_id(const struct hdmabuf_id *a, const struct hdmabuf_id *b)
{
	/* The struct has no padding: comparing its bytes compares it. */
	return memcmp(a, b, sizeof(*a)) == 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Waits until the device has an event of type `type` about `hid`, or
 * `deadline` (now_ms()) passes. Events about other buffers and about
 * peers are skipped. Returns 0 once it came, -1 on timeout.
 */
static int wait_event(int dev, const struct hdmabuf_id *hid, __u32 type, __u64 size,
		      int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - now_ms();
		struct pollfd pfd = { .fd = dev, .events = POLLIN };
		struct hdmabuf_event ev;
		ssize_t got;

		if (left <= 0)
			return -1;
		if (poll(&pfd, 1, (int)left) < 0) {
			if (errno == EINTR)
				continue;
			fail("poll");
		}
		if (pfd.revents & (POLLERR | POLLNVAL))
			failx("the device's descriptor failed");
		if (!(pfd.revents & POLLIN))
			continue;
		got = read(dev, &ev, sizeof(ev));
		if (got < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			fail("read of an event");
		}
		if (got != sizeof(ev))
			failx("read returned a partial event");
		if (ev.lost)
			fprintf(stderr, "hdmabuf-example: %u events lost\n", ev.lost);
		if (!same_id(&ev.hid, hid))
			continue;
		/* Every event about a buffer carries its size. */
		if (ev.size != size)
			failx("an event about the buffer carries another size");
		if (ev.type == HDMABUF_EVENT_MAPPED)
			printf("mapped by domain %u\n", ev.peer_domid);
		if (ev.type == HDMABUF_EVENT_RELEASED)
			printf("released by domain %u\n", ev.peer_domid);
		fflush(stdout);
		if (ev.type == type)
			return 0;
	}
}

/* A dma-buf of `size` bytes holding the pattern of `seed`. */
static int pattern_dmabuf(__u64 size, uint64_t seed)
{
	struct udmabuf_create create;
	int memfd, udmabuf, dmabuf;
	uint8_t *bytes;

	memfd = memfd_create("hdmabuf-example", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (memfd < 0)
		fail("memfd_create");
	if (ftruncate(memfd, (off_t)size) < 0)
		fail("ftruncate of the memfd");
	bytes = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (bytes == MAP_FAILED)
		fail("mmap of the memfd");
	for (size_t i = 0; i < size; i++)
		bytes[i] = pattern_byte(seed, i);
	munmap(bytes, size);
	/* udmabuf wants a memfd that cannot shrink under the dma-buf. */
	if (fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		fail("sealing the memfd");

	udmabuf = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
	if (udmabuf < 0)
		fail("/dev/udmabuf (is the kernel built with CONFIG_UDMABUF?)");
	memset(&create, 0, sizeof(create));
	create.memfd = (__u32)memfd;
	create.flags = UDMABUF_FLAGS_CLOEXEC;
	create.offset = 0;
	create.size = size;
	dmabuf = ioctl(udmabuf, UDMABUF_CREATE, &create);
	if (dmabuf < 0)
		fail("UDMABUF_CREATE");
	/* The dma-buf holds the memfd's pages: neither fd is needed now. */
	close(udmabuf);
	close(memfd);
	return dmabuf;
}

static int export_buffer(__u32 domid, __u64 size, uint64_t seed, const char *text)
{
	struct hdmabuf_export ex;
	struct hdmabuf_unexport un;
	char id[HDMABUF_ID_TEXT_LEN + 1];
	size_t text_len = strlen(text);
	int dev, dmabuf, released;

	if (text_len > HDMABUF_MAX_PRIV_LEN)
		failx("the private text is longer than HDMABUF_MAX_PRIV_LEN");
	dev = open(HDMABUF_DEVICE_PATH, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		fail(HDMABUF_DEVICE_PATH);
	dmabuf = pattern_dmabuf(size, seed);

	memset(&ex, 0, sizeof(ex)); /* reserved and unused bytes must be 0 */
	ex.dmabuf_fd = dmabuf;
	ex.remote_domid = domid;
	ex.flags = 0; /* read-only; HDMABUF_EXPORT_RW to let it write */
	ex.priv_len = (__u32)text_len;
	memcpy(ex.priv, text, text_len);
	if (ioctl(dev, HDMABUF_IOCTL_EXPORT, &ex) < 0)
		fail("HDMABUF_IOCTL_EXPORT");
	/*
	 * The export holds its own reference to the dma-buf: closing ours
	 * changes nothing. Closing `dev` would unexport the buffer.
	 */
	close(dmabuf);
	id_to_text(&ex.hid, id);
	printf("exported %s (%llu bytes, seed %llu) to domain %u\n", id,
	       (unsigned long long)size, (unsigned long long)seed, domid);
	fflush(stdout);

	released = wait_event(dev, &ex.hid, HDMABUF_EVENT_RELEASED, size,
			      now_ms() + WAIT_SECONDS * 1000) == 0;
	if (!released)
		fprintf(stderr, "hdmabuf-example: not released within %d s\n", WAIT_SECONDS);

	memset(&un, 0, sizeof(un));
	un.hid = ex.hid;
	un.delay_ms = 0;
	if (ioctl(dev, HDMABUF_IOCTL_UNEXPORT, &un) < 0)
		fail("HDMABUF_IOCTL_UNEXPORT");
	if (wait_event(dev, &ex.hid, HDMABUF_EVENT_GRANTS_ENDED, size,
		       now_ms() + END_SECONDS * 1000) < 0)
		failx("the grants did not end in time");
	printf("unexported %s: every grant ended\n", id);
	close(dev);
	return released ? 0 : 1;
}

static int import_buffer(const char *text, uint64_t seed)
{
	struct hdmabuf_import im;
	struct hdmabuf_query query;
	struct dma_buf_sync sync;
	const uint8_t *bytes;
	int dev;

	memset(&im, 0, sizeof(im));
	if (id_from_text(text, &im.hid) < 0)
		failx("not an id (NNNNNNNNNNNNNNNN-KKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK)");
	dev = open(HDMABUF_DEVICE_PATH, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		fail(HDMABUF_DEVICE_PATH);
	im.flags = 0; /* read-only */
	if (ioctl(dev, HDMABUF_IOCTL_IMPORT, &im) < 0)
		fail("HDMABUF_IOCTL_IMPORT");

	memset(&query, 0, sizeof(query));
	query.hid = im.hid;
	query.item = HDMABUF_QUERY_EXPORTER;
	if (ioctl(dev, HDMABUF_IOCTL_QUERY, &query) < 0)
		fail("HDMABUF_IOCTL_QUERY");
	printf("imported %s: %llu bytes from domain %llu\n", text, (unsigned long long)im.size,
	       (unsigned long long)query.value);
	/* The imported dma-buf lives on without the device fd. */
	close(dev);

	/* The size comes from the exporting domain: check it fits before
	 * using it as a length (a 32-bit process has a 32-bit size_t). */
	if (im.size == 0 || im.size > SIZE_MAX)
		failx("the imported buffer's size does not fit this process");
	bytes = mmap(NULL, im.size, PROT_READ, MAP_SHARED, im.fd, 0);
	if (bytes == MAP_FAILED)
		fail("mmap of the imported buffer");
	sync.flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ;
	if (ioctl(im.fd, DMA_BUF_IOCTL_SYNC, &sync) < 0)
		fail("DMA_BUF_IOCTL_SYNC");
	for (size_t i = 0; i < im.size; i++) {
		if (bytes[i] != pattern_byte(seed, i)) {
			fprintf(stderr, "hdmabuf-example: byte %zu differs from the pattern\n", i);
			return 1;
		}
	}
	sync.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ;
	if (ioctl(im.fd, DMA_BUF_IOCTL_SYNC, &sync) < 0)
		fail("DMA_BUF_IOCTL_SYNC");
	/* Unmapping and closing the last reference releases the buffer. */
	munmap((void *)bytes, im.size);
	close(im.fd);
	printf("OK\n");
	return 0;
}

static unsigned long long number(const char *text, unsigned long long max)
{
	char *end;
	unsigned long long value;

	errno = 0;
	/* Decimal only, as the hdmabuf tool reads its numbers: strtoull
	 * would take "010" as octal and "-1" as its largest value. */
	value = strtoull(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-' || text[0] == '+' || value > max) {
		fprintf(stderr, "hdmabuf-example: bad number: %s\n", text);
		exit(2);
	}
	return value;
}

static int usage(void)
{
	fprintf(stderr, "usage: hdmabuf-example export DOMID SIZE SEED [TEXT]\n"
			"       hdmabuf-example import ID SEED\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (argc >= 5 && argc <= 6 && strcmp(argv[1], "export") == 0) {
		/* At most 4 GiB and what this process can map; rounded up to
		 * whole pages below, as udmabuf needs. */
		__u64 size = number(argv[3], SIZE_MAX < (1ULL << 32) ? SIZE_MAX : 1ULL << 32);
		__u64 page = (__u64)sysconf(_SC_PAGESIZE);

		size = (size + page - 1) / page * page;
		if (size == 0)
			return usage();
		return export_buffer((__u32)number(argv[2], 0x7fef), size,
				     number(argv[4], UINT64_MAX), argc == 6 ? argv[5] : "");
	}
	if (argc == 4 && strcmp(argv[1], "import") == 0)
		return import_buffer(argv[2], number(argv[3], UINT64_MAX));
	return usage();
}
