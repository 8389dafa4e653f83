// SPDX-License-Identifier: GPL-2.0
/*
 * HMM selftests: the dummy device in its DMA mode (HMM_DMIRROR_DMA_*),
 * which reaches mirrored pages through DMA addresses of a real struct
 * device.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "../kselftest_harness.h"
#include "hmm-common.h"

/* ---------------------------------------------------------------------
 * DMA mode: the device reaches memory through DMA addresses of a real
 * struct device (HMM_DMIRROR_DMA_*), which must be the pages' own.  With
 * swiotlb=force on the kernel command line every mapping would bounce, and
 * a bounce buffer loses the CPU's stores to a page the device has mapped,
 * so the DMA mode must then refuse: refused_when_bouncing and
 * partial_write_keeps_cpu_data check that, the other cases skip.
 */

#define SWIOTLB_USED	"/sys/kernel/debug/swiotlb/io_tlb_used"
#define SWIOTLB_SLOT	2048	/* IO_TLB_SIZE */
#define DMA_REFUSED	"swiotlb=force: the DMA mode is refused"

FIXTURE(hmm_dma) {
	int fd;
	int peer_fd;
	size_t psz;
	bool bounce;	/* swiotlb=force: every DMA request must fail */
};

FIXTURE_VARIANT(hmm_dma) {
	int unit;
	int peer;
	bool coherent;
};

FIXTURE_VARIANT_ADD(hmm_dma, hmm_device_private) {
	.unit = 0,
	.peer = 1,
	.coherent = false,
};

FIXTURE_VARIANT_ADD(hmm_dma, hmm_device_coherent) {
	.unit = 2,
	.peer = 3,
	.coherent = true,
};

FIXTURE_SETUP(hmm_dma)
{
	self->psz = sysconf(_SC_PAGESIZE);
	self->bounce = cmdline_has("swiotlb=force");
	self->fd = dmirror_open(variant->unit);
	if (self->fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror%d absent", variant->unit);
	ASSERT_LE(0, self->fd);
	self->peer_fd = dmirror_open(variant->peer);
	if (self->peer_fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror%d absent", variant->peer);
	ASSERT_LE(0, self->peer_fd);
}

FIXTURE_TEARDOWN(hmm_dma)
{
	close(self->peer_fd);
	close(self->fd);
}

/* STATS ignores the range, but it must still be a valid one. */
static int dma_stats(int fd, struct hmm_dmirror_dma_stats *st)
{
	void *any = (void *)(uintptr_t)sysconf(_SC_PAGESIZE);
	struct hmm_dmirror_cmd cmd;

	memset(st, 0xa5, sizeof(*st));
	return dmirror_req(fd, HMM_DMIRROR_DMA_STATS, any, st, 1, &cmd);
}

/*
 * CPU -> device -> CPU through DMA addresses, one mapping per base page,
 * and a CPU write between two device reads that changes no PTE: the
 * second read must see it although nothing was invalidated or synced.
 */
TEST_F(hmm_dma, read_write_round_trip)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	if (self->bounce)
		SKIP(return, DMA_REFUSED);
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	pat_fill(va, len, 0xd1, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_LE(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd1, 0));

	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(npages, st.mappings);
	ASSERT_EQ(0, st.huge);
	ASSERT_EQ(npages, st.mapped_pages);
	ASSERT_EQ(0, st.local);
	ASSERT_EQ(0, st.bounced);

	/* Same PTEs, new data: no invalidation, the mappings stay. */
	pat_fill(va, len, 0xd2, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd2, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(npages, st.mappings);
	ASSERT_EQ(0, st.unmapped);

	pat_fill(dbuf, len, 0xd3, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd3, 0));

	/* The driver's own teardown, twice: the second finds nothing. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_UNMAP, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_UNMAP, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.cpages);
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(0, st.mappings);
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd3, 0));
	free(dbuf);
	munmap(va, len);
}

/*
 * Untouched memory reads as zeros through a read-only mapping of the zero
 * page; a device write then faults real pages in and remaps the entries
 * writable, and the CPU sees the data.
 */
TEST_F(hmm_dma, zero_page_then_write)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	if (self->bounce)
		SKIP(return, DMA_REFUSED);
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	memset(dbuf, 0x5a, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, zero_find_bad(dbuf, len));

	pat_fill(dbuf, len, 0xd4, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd4, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(npages, st.mappings);
	/* The write fault replaced the zero page: those mappings went. */
	ASSERT_EQ(npages, st.unmapped);
	free(dbuf);
	munmap(va, len);
}

/*
 * The DMA mode needs a device that reaches the pages themselves: a page
 * the CPU keeps using while it is mapped cannot go through a bounce
 * buffer.  Under swiotlb=force every DMA request must therefore fail with
 * EOPNOTSUPP before the device touches anything: no swiotlb slot taken, no
 * mapping kept, the memory and the read buffer left alone, and the
 * device's other ways to reach memory (its page table, migration) still
 * work on the same pages.  Without swiotlb=force dma-direct hands out the
 * pages' own addresses and nothing bounces.
 */
TEST_F(hmm_dma, refused_when_bouncing)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	long slots = npages * (self->psz / SWIOTLB_SLOT);
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	long before, after;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 0xd5, 0);

	if (!self->bounce) {
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va,
					 dbuf, npages, &cmd));
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd5, 0));
		ASSERT_EQ(0, dma_stats(self->fd, &st));
		ASSERT_EQ(npages, st.mappings);
		ASSERT_EQ(0, st.bounced);
		free(dbuf);
		munmap(va, len);
		return;
	}

	/* The pool exists and is reported. */
	ASSERT_EQ(0, access(SWIOTLB_USED, R_OK));
	before = read_num(SWIOTLB_USED);
	memset(dbuf, 0, len);
	ASSERT_EQ(-EOPNOTSUPP, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va,
					   dbuf, npages, &cmd));
	ASSERT_EQ(0, cmd.cpages);
	ASSERT_EQ(-1, zero_find_bad(dbuf, len));
	pat_fill(dbuf, len, 0xd6, 0);
	ASSERT_EQ(-EOPNOTSUPP, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, va,
					   dbuf, npages, &cmd));
	ASSERT_EQ(-EOPNOTSUPP, dmirror_req(self->fd,
					   HMM_DMIRROR_DMA_WRITE_PARTIAL, va,
					   dbuf, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd5, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(0, st.mappings);
	ASSERT_EQ(0, st.mapped_pages);
	ASSERT_EQ(0, st.bounced);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_UNMAP, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.cpages);
	/* Other devices may bounce meanwhile, but not by a window's worth. */
	after = read_num(SWIOTLB_USED);
	ASSERT_GT(before + slots, after);

	/* The same pages through the device's page table and its memory. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd5, 0));
	pat_fill(dbuf, len, 0xd6, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd6, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd6, 0));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd6, 0));
	free(dbuf);
	munmap(va, len);
}

#define DMA_CPU_BYTES	101	/* the CPU writes bytes 0..100 of each page */

/* Byte @i of a page of pattern @seed; never zero. */
static unsigned char nz_byte(unsigned int seed, size_t i)
{
	return (i * 31 + seed * 7) % 255 + 1;
}

static void nz_fill(unsigned char *page, size_t from, size_t to,
		    unsigned int seed)
{
	size_t i;

	for (i = from; i < to; i++)
		page[i] = nz_byte(seed, i);
}

/* Offset of the first byte in [@from, @to) of @page that is wrong, or -1. */
static long nz_find_bad(const unsigned char *page, size_t from, size_t to,
			unsigned int seed)
{
	size_t i;

	for (i = from; i < to; i++)
		if (page[i] != nz_byte(seed, i))
			return i;
	return -1;
}

/*
 * The device writes the upper half of each page (a partial write) while
 * the CPU, after the pages were mapped for the device, writes bytes
 * 0..100 of the same pages: both writes must survive, and the bytes in
 * between keep their old data.  Through a bounce buffer they cannot:
 * publishing the device's write copies the whole slot back, over the
 * CPU's bytes.  So under swiotlb=force the device must be refused before
 * it maps or writes anything; otherwise its write must land.
 */
TEST_F(hmm_dma, partial_write_keeps_cpu_data)
{
	const unsigned long npages = 8;
	size_t half = self->psz / 2, len = npages * self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	unsigned char *va, *rbuf, *wbuf, *p;
	int rread, rwrite, side;
	unsigned long i;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	rbuf = calloc(1, len);
	ASSERT_NE(NULL, rbuf);
	wbuf = calloc(1, len);
	ASSERT_NE(NULL, wbuf);
	for (i = 0; i < npages; i++) {
		nz_fill(va + i * self->psz, 0, self->psz, 0x10 + i);
		nz_fill(wbuf + i * self->psz, half, self->psz, 0x30 + i);
	}

	/* The device maps the pages (reading them); the CPU goes on. */
	rread = dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, rbuf, npages,
			    &cmd);
	for (i = 0; i < npages; i++)
		nz_fill(va + i * self->psz, 0, DMA_CPU_BYTES, 0x20 + i);
	rwrite = dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE_PARTIAL, va, wbuf,
			     npages, &cmd);

	for (i = 0; i < npages; i++) {
		p = va + i * self->psz;
		ASSERT_EQ(-1, nz_find_bad(p, 0, DMA_CPU_BYTES, 0x20 + i))
			TH_LOG("page %lu: the CPU's bytes 0..%d were lost", i,
			       DMA_CPU_BYTES - 1);
		ASSERT_EQ(-1, nz_find_bad(p, DMA_CPU_BYTES, half, 0x10 + i))
			TH_LOG("page %lu: bytes nobody wrote changed", i);
	}

	if (self->bounce) {
		ASSERT_EQ(-EOPNOTSUPP, rread);
		ASSERT_EQ(-EOPNOTSUPP, rwrite);
		ASSERT_EQ(-1, zero_find_bad(rbuf, len));
		for (i = 0; i < npages; i++)
			ASSERT_EQ(-1, nz_find_bad(va + i * self->psz, half,
						  self->psz, 0x10 + i))
				TH_LOG("page %lu: a refused device wrote", i);
		ASSERT_EQ(0, dma_stats(self->fd, &st));
		ASSERT_EQ(0, st.mappings);
		free(wbuf);
		free(rbuf);
		munmap(va, len);
		return;
	}

	ASSERT_EQ(0, rread);
	ASSERT_EQ(0, rwrite);
	for (i = 0; i < npages; i++) {
		p = va + i * self->psz;
		ASSERT_EQ(-1, nz_find_bad(rbuf + i * self->psz, 0, self->psz,
					  0x10 + i));
		ASSERT_EQ(-1, nz_find_bad(p, half, self->psz, 0x30 + i))
			TH_LOG("page %lu: the device's write was lost", i);
	}
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(npages, st.mappings);
	ASSERT_EQ(0, st.unmapped);

	/* Unmapping copies nothing back; the device reads both parts. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_UNMAP, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, rbuf,
				 npages, &cmd));
	for (i = 0; i < npages; i++) {
		for (side = 0; side < 2; side++) {
			p = (side ? rbuf : va) + i * self->psz;
			ASSERT_EQ(-1, nz_find_bad(p, 0, DMA_CPU_BYTES,
						  0x20 + i));
			ASSERT_EQ(-1, nz_find_bad(p, DMA_CPU_BYTES, half,
						  0x10 + i));
			ASSERT_EQ(-1, nz_find_bad(p, half, self->psz, 0x30 + i));
		}
	}
	free(wbuf);
	free(rbuf);
	munmap(va, len);
}

/*
 * A THP is mapped once and reported as one huge mapping, the device taking
 * mappings that large.  Splitting the PMD unmaps the huge mapping; the
 * next access maps the split pages one by one.
 */
TEST_F(hmm_dma, thp_one_mapping_per_huge_page)
{
	size_t pmd = read_pmd_pagesize();
	size_t len = 2 * pmd;
	unsigned long npages = len / self->psz;
	unsigned long per_thp = pmd / self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	bool huge;

	if (self->bounce)
		SKIP(return, DMA_REFUSED);
	va = thp_map_filled(len, 0xd7);
	if (!va)
		SKIP(return, "no THP for a PMD-aligned buffer");
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd7, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	/* dma-direct without bouncing takes mappings of any size. */
	huge = st.max_mapping >= pmd;
	ASSERT_TRUE(huge);
	ASSERT_EQ(npages, st.mapped_pages);
	ASSERT_EQ(huge ? 2 : npages, st.mappings);
	ASSERT_EQ(huge ? 2 : 0, st.huge);

	pat_fill(dbuf, len, 0xd8, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd8, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(huge ? 2 : npages, st.mappings);
	ASSERT_EQ(0, st.unmapped);

	/* Half of the first THP read-only: its PMD is split. */
	ASSERT_EQ(0, mprotect(va, pmd / 2, PROT_READ));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_LE(1, st.unmapped);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd8, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(npages, st.mapped_pages);
	ASSERT_EQ(huge ? per_thp + 1 : npages, st.mappings);
	ASSERT_EQ(huge ? 1 : 0, st.huge);
	free(dbuf);
	munmap(va, len);
}

/*
 * Migration invalidates DMA mappings.  Pages on this device's own private
 * memory need no mapping and are served locally; coherent pages are
 * ordinary memory and get mapped; a page on the peer device's private
 * memory is brought back to system memory before it is mapped.
 */
TEST_F(hmm_dma, migration_and_device_pages)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	if (self->bounce)
		SKIP(return, DMA_REFUSED);
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 0xd9, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(0, st.mappings);
	ASSERT_EQ(npages, st.unmapped);

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd9, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(variant->coherent ? 0 : npages, st.local);
	ASSERT_EQ(variant->coherent ? npages : 0, st.mappings);

	pat_fill(dbuf, len, 0xda, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xda, 0));

	/* Now on the peer's memory (coherent pages move via the CPU). */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xda, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(0, st.local);
	ASSERT_EQ(npages, st.mappings);
	ASSERT_EQ(0, st.bounced);
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xda, 0));
	free(dbuf);
	munmap(va, len);
}

struct dma_race {
	char *va;
	size_t len;
	int mode;	/* 0: munmap, 1: mprotect flips */
	int go;
	int stop;
	int ret;
	int started;	/* munmap() entered */
	int done;	/* munmap() returned */
	long flips;	/* mprotect() calls completed */
};

/* Overlapping operations the two DMA race cases must see at least. */
#define DMA_RACE_MIN_OVERLAPS	8
#define DMA_RACE_MAX_ROUNDS	64
#define DMA_RACE_MIN_OK_READS	20
#define DMA_RACE_MAX_READS	2000

static void *dma_race_thread(void *arg)
{
	struct dma_race *r = arg;
	int i;

	while (!__atomic_load_n(&r->go, __ATOMIC_ACQUIRE))
		;
	if (!r->mode) {
		usleep(100);
		__atomic_store_n(&r->started, 1, __ATOMIC_SEQ_CST);
		r->ret = munmap(r->va, r->len);
		__atomic_store_n(&r->done, 1, __ATOMIC_SEQ_CST);
		return NULL;
	}
	for (i = 0; !__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE); i++) {
		r->ret = mprotect(r->va, r->len, (i & 1) ?
				  PROT_READ | PROT_WRITE : PROT_READ);
		if (r->ret)
			break;
		__atomic_add_fetch(&r->flips, 1, __ATOMIC_SEQ_CST);
	}
	return NULL;
}

/*
 * munmap() from another thread while the device reads through DMA: each
 * read returns the right data or EFAULT, and once the range is gone no
 * mapping is left behind.
 */
TEST_F(hmm_dma, munmap_during_dma)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct dma_race race = { .len = len };
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	pthread_t thread;
	int round, ret = 0, reads, overlaps = 0;
	bool before_done;
	char *dbuf;

	if (self->bounce)
		SKIP(return, DMA_REFUSED);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	/* A read overlaps if it starts before munmap() ends, ends after. */
	for (round = 0; round < DMA_RACE_MAX_ROUNDS &&
	     (round < 8 || overlaps < DMA_RACE_MIN_OVERLAPS); round++) {
		race.va = anon_map(len, PROT_READ | PROT_WRITE, true);
		ASSERT_NE(NULL, race.va);
		pat_fill(race.va, len, 0xe0 + round, 0);
		race.started = 0;
		race.done = 0;
		__atomic_store_n(&race.go, 0, __ATOMIC_RELEASE);
		ASSERT_EQ(0, pthread_create(&thread, NULL, dma_race_thread,
					    &race));
		__atomic_store_n(&race.go, 1, __ATOMIC_RELEASE);
		for (reads = 0; reads < 200; reads++) {
			before_done = !__atomic_load_n(&race.done,
						       __ATOMIC_SEQ_CST);
			ret = dmirror_req(self->fd, HMM_DMIRROR_DMA_READ,
					  race.va, dbuf, npages, &cmd);
			overlaps += before_done &&
				    __atomic_load_n(&race.started,
						    __ATOMIC_SEQ_CST);
			if (ret)
				break;
			ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xe0 + round, 0));
		}
		ASSERT_EQ(0, pthread_join(thread, NULL));
		ASSERT_EQ(0, race.ret);
		if (ret)
			ASSERT_EQ(-EFAULT, ret);
		ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ,
					       race.va, dbuf, npages, &cmd));
		ASSERT_EQ(0, dma_stats(self->fd, &st));
		ASSERT_EQ(0, st.mappings);
	}
	TH_LOG("%d rounds, %d reads overlapped munmap()", round, overlaps);
	ASSERT_LE(DMA_RACE_MIN_OVERLAPS, overlaps);
	free(dbuf);
}

/*
 * mprotect() flips from another thread while the device reads and writes:
 * the data stays right; then one write-protection, done alone, unmaps
 * every writable mapping of the window.
 */
TEST_F(hmm_dma, mprotect_during_dma)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct dma_race race = { .len = len, .mode = 1 };
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	int reads, ret, ok_overlaps = 0, busy = 0;
	pthread_t thread;
	long flips0;
	char *dbuf;

	if (self->bounce)
		SKIP(return, DMA_REFUSED);
	race.va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, race.va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(race.va, len, 0xe8, 0);

	ASSERT_EQ(0, pthread_create(&thread, NULL, dma_race_thread, &race));
	__atomic_store_n(&race.go, 1, __ATOMIC_RELEASE);
	/* Count the reads that completed while an mprotect() completed. */
	for (reads = 0; reads < 200 ||
	     (ok_overlaps < DMA_RACE_MIN_OK_READS &&
	      reads < DMA_RACE_MAX_READS); reads++) {
		flips0 = __atomic_load_n(&race.flips, __ATOMIC_SEQ_CST);
		/* Endless invalidations may outlast the fault timeout. */
		ret = dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, race.va,
				  dbuf, npages, &cmd);
		if (ret == -EBUSY) {
			busy++;
			continue;
		}
		ASSERT_EQ(0, ret);
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xe8, 0));
		ok_overlaps += flips0 !=
			       __atomic_load_n(&race.flips, __ATOMIC_SEQ_CST);
	}
	__atomic_store_n(&race.stop, 1, __ATOMIC_RELEASE);
	ASSERT_EQ(0, pthread_join(thread, NULL));
	ASSERT_EQ(0, race.ret);
	TH_LOG("%d reads, %d EBUSY, %d checked ones overlapped %ld mprotects",
	       reads, busy, ok_overlaps, race.flips);
	ASSERT_LE(DMA_RACE_MIN_OK_READS, ok_overlaps);

	ASSERT_EQ(0, mprotect(race.va, len, PROT_READ | PROT_WRITE));
	pat_fill(dbuf, len, 0xe9, 0);
	do {
		ret = dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, race.va,
				  dbuf, npages, &cmd);
	} while (ret == -EBUSY);
	ASSERT_EQ(0, ret);
	ASSERT_EQ(-1, pat_find_bad(race.va, len, 0xe9, 0));

	ASSERT_EQ(0, dma_stats(self->fd, &st));	/* resets unmapped */
	ASSERT_EQ(npages, st.mappings);
	ASSERT_EQ(0, mprotect(race.va, len, PROT_READ));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(npages, st.unmapped);
	ASSERT_EQ(0, st.mappings);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, race.va,
				      dbuf, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(race.va, len, 0xe9, 0));
	free(dbuf);
	munmap(race.va, len);
}

/*
 * Requests the DMA mode cannot serve fail with the documented errno and
 * leave the memory alone: no access rights, a hole, a window larger than
 * the device takes, a bad stats buffer.
 */
TEST_F(hmm_dma, bad_requests)
{
	const unsigned long npages = 8;
	size_t len = npages * self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf, *big;
	unsigned long bigpages = (64 * SZ_1M) / self->psz;

	if (self->bounce)
		SKIP(return, DMA_REFUSED);
	va = anon_map(2 * len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, 2 * len, 0xf0, 0);

	ASSERT_EQ(0, mprotect(va, len, PROT_NONE));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va,
				       dbuf, npages, &cmd));
	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	pat_fill(dbuf, len, 0xf1, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, va,
				      dbuf, npages, &cmd));
	ASSERT_EQ(0, munmap(va + len, len));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE,
				       va + len, dbuf, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xf0, 0));

	big = anon_map(64 * SZ_1M, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, big);
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, big,
				       dbuf, bigpages, &cmd));
	munmap(big, 64 * SZ_1M);

	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_DMA_STATS, va,
				       (void *)8, 1, &cmd));
	/* Nothing failed half-way left a mapping behind. */
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(0, st.mappings);

	/* And the device still works afterwards. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xf0, 0));
	free(dbuf);
	munmap(va, len);
}

TEST_HARNESS_MAIN
