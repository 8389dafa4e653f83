// SPDX-License-Identifier: GPL-2.0
/*
 * HMM selftests: mirroring, exclusive access, fork, SNAPSHOT and teardown,
 * driven through the dummy device of lib/test_hmm.c.
 *
 * Each /dev/hmm_dmirrorN node stands for a device that mirrors the address
 * space of whoever opened it. The ioctls of lib/test_hmm_uapi.h make that
 * device read or write process memory through its own page table (filled by
 * hmm_range_fault()), move pages into its memory and back (migrate_vma_*()),
 * take exclusive access for atomics, and report what hmm_range_fault()
 * reports for each page. Units 0 and 1 have device-private memory, units 2
 * and 3 device-coherent memory; every test runs on both kinds.
 *
 * Each case moves a known pattern between the CPU and the device and
 * checks it on the side that did not write it. Return values, errno and
 * the cpages/faults counters are checked where the ABI gives them a
 * meaning. Migration is in hmm-migrate-tests.c, shmem in hmm-shmem-tests.c
 * and hmm-shmem-evict-tests.c, device locks in hmm-devlock-tests.c and
 * the DMA mode in hmm-dma-tests.c.
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
#include <sys/mount.h>

#include "../kselftest_harness.h"
#include <mm/gup_test.h>
#include "hmm-common.h"
#include "hmm-expect.h"
#include "hmm-fixture.h"

/* ---------------------------------------------------------------------
 * Opening the device and feeding it bad requests.
 */

/*
 * A mirror lives as long as its file: reopening starts with an empty
 * device page table (the first read has to fault) and data written through
 * a closed mirror stays in process memory.
 */
TEST_F(hmm, open_close)
{
	const unsigned long npages = 4;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	int round, fd;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	for (round = 1; round <= 4; round++) {
		fd = dmirror_open(round & 1 ? variant->unit : variant->peer);
		ASSERT_LE(0, fd);

		pat_fill(dbuf, len, round, 0);
		ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_WRITE, va, dbuf,
					 npages, &cmd));
		ASSERT_EQ(npages, cmd.cpages);
		ASSERT_EQ(1, cmd.faults);

		memset(dbuf, 0, len);
		ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_READ, va, dbuf,
					 npages, &cmd));
		ASSERT_EQ(0, cmd.faults);
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, round, 0));
		ASSERT_EQ(0, close(fd));

		ASSERT_EQ(-1, pat_find_bad(va, len, round, 0));
	}
}

TEST_F(hmm, malformed_requests)
{
	const unsigned long npages = 2;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf, *hole;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 7, 0);

	/* Unaligned address, empty range, range wrapping the address space. */
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_READ, va + 8,
				       dbuf, 1, &cmd));
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_READ, va,
				       dbuf, 0, &cmd));
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va,
				       dbuf, ~0UL / self->psz, &cmd));
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT,
				       va + 1, dbuf, 1, &cmd));

	/*
	 * A command number the device does not know: -ENOTTY, as
	 * Documentation/driver-api/ioctl.rst asks (upstream 6.12's driver
	 * answered -EINVAL).
	 */
	ASSERT_EQ(-ENOTTY, dmirror_req(self->fd,
				       _IOWR('H', 0x7f, struct hmm_dmirror_cmd),
				       va, dbuf, 1, &cmd));

	/* The command block itself unreadable. */
	ASSERT_EQ(-1, ioctl(self->fd, HMM_DMIRROR_READ, NULL));
	ASSERT_EQ(EFAULT, errno);

	/* Device-side buffer unwritable: the read must fail, not crash. */
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ, va, NULL,
				       npages, &cmd));

	/* Target range not mapped at all. */
	hole = anon_map(len, PROT_NONE, true);
	ASSERT_NE(NULL, hole);
	ASSERT_EQ(0, munmap(hole, len));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ, hole,
				       dbuf, npages, &cmd));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_WRITE, hole,
				       dbuf, npages, &cmd));

	/* None of that disturbed the mirror: a good request still works. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 7, 0));
}

/* ---------------------------------------------------------------------
 * Device reads and writes of anonymous memory.
 */

/*
 * The device page table tracks the CPU's: a repeated read needs no fault,
 * a CPU store into an already-writable page is seen without one (same
 * physical page), and dropping pages invalidates exactly what was dropped.
 */
TEST_F(hmm, anon_read)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 11, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 11, 0));

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 11, 0));

	pat_fill(va, len, 12, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 12, 0));

	/* Drop the upper half: the device must see fresh zero pages there. */
	ASSERT_EQ(0, madvise(va + len / 2, len / 2, MADV_DONTNEED));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len / 2, 12, 0));
	ASSERT_EQ(-1, zero_find_bad(dbuf + len / 2, len / 2));
}

/*
 * Reading never-touched memory maps the shared zero page for the device;
 * the first CPU store replaces it and the device must follow.
 */
TEST_F(hmm, device_reads_untouched_as_zero)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char snap[16];
	char *va, *dbuf;
	unsigned long i;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	memset(dbuf, 0xa5, len);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, zero_find_bad(dbuf, len));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	for (i = 0; i < npages; i++)
		ASSERT_EQ(HMM_DMIRROR_PROT_ZERO | DEV_RO, snap[i]);

	pat_fill(va, len, 13, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 13, 0));
}

/* Without PROT_READ the device may not read: EFAULT, nothing copied. */
TEST_F(hmm, anon_read_prot)
{
	const unsigned long npages = 8;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, false);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 14, 0);

	ASSERT_EQ(0, mprotect(va, len, PROT_NONE));
	memset(dbuf, 0x5a, len);
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				       npages, &cmd));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				       npages, &cmd));
	for (size_t off = 0; off < len; off += 8)
		ASSERT_EQ(0x5a5a5a5a5a5a5a5aULL, *(__u64 *)(dbuf + off));
	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_EQ(-1, pat_find_bad(va, len, 14, 0));
	ASSERT_EQ(0, mprotect(va, len, PROT_NONE));

	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 14, 0));
}

/* Device stores land in process memory; a repeat needs no fault. */
TEST_F(hmm, anon_write)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	pat_fill(dbuf, len, 15, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(va, len, 15, 0));

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 15, 0));

	pat_fill(dbuf, len, 16, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(va, len, 16, 0));
}

/*
 * Without PROT_WRITE the device may not write: EPERM and memory intact,
 * also when the device already has the pages mapped for reading.
 */
TEST_F(hmm, anon_write_prot)
{
	const unsigned long npages = 8;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, false);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 17, 0);
	ASSERT_EQ(0, mprotect(va, len, PROT_READ));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 17, 0));

	pat_fill(dbuf, len, 18, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 17, 0));

	ASSERT_EQ(0, mprotect(va, len, PROT_READ | PROT_WRITE));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 18, 0));
}

/*
 * Two devices mirroring the same pages see each other's stores. A device
 * read maps a page with the access the CPU has to it, so after the first
 * write made the pages writable neither device needs another fault.
 */
TEST_F(hmm, double_map)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	pat_fill(dbuf, len, 19, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 19, 0));

	pat_fill(dbuf, len, 20, 0);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(va, len, 20, 0));

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 20, 0));
}

/* ---------------------------------------------------------------------
 * fork(): private copies stay private, shared mappings stay shared.
 */

struct fork_job {
	int unit;
	char *va;
	size_t len;
	unsigned long npages;
	__u32 seen_seed;	/* what the child must find */
	__u32 new_seed;	/* what the child writes through its device */
};

/* Child side: read, then write, the buffer through its own mirror. */
static int fork_job_child(void *arg)
{
	struct fork_job *job = arg;
	struct hmm_dmirror_cmd cmd;
	char *dbuf;
	int fd;

	fd = dmirror_open(job->unit);
	if (fd < 0)
		return 10;
	dbuf = malloc(job->len);
	if (!dbuf)
		return 11;
	if (dmirror_req(fd, HMM_DMIRROR_READ, job->va, dbuf, job->npages,
			&cmd) || cmd.cpages != job->npages)
		return 12;
	if (pat_find_bad(dbuf, job->len, job->seen_seed, 0) != -1)
		return 13;
	pat_fill(dbuf, job->len, job->new_seed, 0);
	if (dmirror_req(fd, HMM_DMIRROR_WRITE, job->va, dbuf, job->npages,
			&cmd) || cmd.cpages != job->npages)
		return 14;
	if (pat_find_bad(job->va, job->len, job->new_seed, 0) != -1)
		return 15;
	close(fd);
	return 0;
}

TEST_F(hmm, anon_write_child)
{
	struct fork_job job = {
		.unit = variant->unit, .npages = 128,
		.seen_seed = 21, .new_seed = 22,
	};
	struct hmm_dmirror_cmd cmd;
	char *dbuf;

	job.len = job.npages * self->psz;
	job.va = anon_map(job.len, PROT_READ | PROT_WRITE, false);
	ASSERT_NE(NULL, job.va);
	dbuf = malloc(job.len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(job.va, job.len, 21, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 job.npages, &cmd));

	ASSERT_EQ(0, in_child(fork_job_child, &job));

	/* fork() write-protected our pages, so our mirror had to refault. */
	ASSERT_EQ(-1, pat_find_bad(job.va, job.len, 21, 0));
	memset(dbuf, 0, job.len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 job.npages, &cmd));
	ASSERT_EQ(job.npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, job.len, 21, 0));
}

TEST_F(hmm, anon_write_child_shared)
{
	struct fork_job job = {
		.unit = variant->unit, .npages = 128,
		.seen_seed = 23, .new_seed = 24,
	};
	struct hmm_dmirror_cmd cmd;
	char *dbuf;

	job.len = job.npages * self->psz;
	job.va = mmap(NULL, job.len, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, job.va);
	dbuf = malloc(job.len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(job.va, job.len, 23, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 job.npages, &cmd));

	ASSERT_EQ(0, in_child(fork_job_child, &job));

	ASSERT_EQ(-1, pat_find_bad(job.va, job.len, 24, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 job.npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, job.len, 24, 0));
}

/* ---------------------------------------------------------------------
 * Huge pages: THP and hugetlbfs, compound mappings seen as PMD/PUD.
 */

TEST_F(hmm, anon_write_huge)
{
	size_t len = 2 * read_pmd_pagesize();
	unsigned long npages = len / self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	char *va, *dbuf;
	unsigned long i;

	va = thp_map_filled(len, 31);
	if (!va)
		SKIP(return, "no transparent huge page available");
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	for (i = 0; i < npages; i++)
		ASSERT_EQ(HMM_DMIRROR_PROT_PMD | DEV_RW, snap[i]);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 31, 0));

	/* The read mapped the huge pages writable, as the CPU has them. */
	pat_fill(dbuf, len, 32, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(va, len, 32, 0));

	/* Device access must not have split the huge mappings. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(HMM_DMIRROR_PROT_PMD | DEV_RW, snap[i]);
}

/*
 * Protection changes on a THP: a whole-PMD mprotect keeps the huge
 * mapping, a partial one splits it; data and permissions follow both.
 */
TEST_F(hmm, thp_protection_and_split)
{
	size_t len = read_pmd_pagesize();
	size_t half = len / 2;
	unsigned long npages = len / self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	char *va, *dbuf;
	unsigned long i;

	va = thp_map_filled(len, 33);
	if (!va)
		SKIP(return, "no transparent huge page available");
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);

	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(HMM_DMIRROR_PROT_PMD | DEV_RO, snap[i]);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 33, 0));
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));

	/* Upper half writable again: the PMD has to be split. */
	ASSERT_EQ(0, mprotect(va + half, half, PROT_READ | PROT_WRITE));
	pat_fill(dbuf, half, 34, half);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va + half, dbuf,
				 npages / 2, &cmd));
	ASSERT_EQ(npages / 2, cmd.cpages);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages / 2, &cmd));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages / 2; i++)
		ASSERT_EQ(DEV_RO, snap[i]);
	for (; i < npages; i++)
		ASSERT_EQ(DEV_RW, snap[i]);

	ASSERT_EQ(-1, pat_find_bad(va, half, 33, 0));
	ASSERT_EQ(-1, pat_find_bad(va + half, half, 34, half));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, half, 33, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + half, half, 34, half));
}

TEST_F(hmm, anon_write_hugetlbfs)
{
	long hsz_kb = meminfo_kb("Hugepagesize");
	size_t hsz, len;
	unsigned long npages, i;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap, level;
	char *va, *dbuf;

	if (hsz_kb <= 0)
		SKIP(return, "kernel has no hugetlbfs");
	hsz = (size_t)hsz_kb << 10;
	len = 2 * hsz;
	npages = len / self->psz;
	va = mmap(NULL, len, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (va == MAP_FAILED && meminfo_kb("HugePages_Free") < 2)
		SKIP(return, "fewer than 2 free huge pages of %ld kB", hsz_kb);
	ASSERT_NE(MAP_FAILED, va);
	level = hsz >= SZ_1G ? HMM_DMIRROR_PROT_PUD : HMM_DMIRROR_PROT_PMD;
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);

	pat_fill(va, len, 35, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 35, 0));

	pat_fill(dbuf, len, 36, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 36, 0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(level | DEV_RW, snap[i]);

	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(level | DEV_RO, snap[i]);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 36, 0));

	/* hugetlb pages cannot move to device memory. */
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				       va, dbuf, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 36, 0));
	ASSERT_EQ(0, munmap(va, len));
}

/*
 * A PUD-sized page is reported as such. Needs a 1 GiB hugetlb page; one is
 * borrowed for the test when the pool can grow at run time.
 */
TEST_F_TIMEOUT(hmm, hugetlb_pud_snapshot, 180)
{
	unsigned long npages = SZ_1G / self->psz;
	long nr = access(GIGANTIC_NR, F_OK) ? -1 : (long)read_num(GIGANTIC_NR);
	struct hmm_dmirror_cmd cmd;
	unsigned long i, probe;
	unsigned char *snap;
	char *va, *dbuf;

	if (nr < 0)
		SKIP(return, "no 1 GiB hugetlb page size on this machine");
	if (nr == 0) {
		self->gigantic_borrowed = true;
		if (write_str(GIGANTIC_NR, "1") || read_num(GIGANTIC_NR) != 1)
			SKIP(return, "no 1 GiB hugetlb page could be allocated");
	}
	va = mmap(NULL, SZ_1G, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (30 << MAP_HUGE_SHIFT),
		  -1, 0);
	if (va == MAP_FAILED)
		SKIP(return, "1 GiB hugetlb page in use elsewhere");
	snap = malloc(npages);
	dbuf = malloc(self->psz);
	ASSERT_NE(NULL, snap);
	ASSERT_NE(NULL, dbuf);

	/* One word per page is enough to tell pages apart. */
	for (i = 0; i < npages; i++)
		*(__u64 *)(va + i * self->psz) = pat_word(37, i);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	for (i = 0; i < npages; i++)
		ASSERT_EQ(HMM_DMIRROR_PROT_PUD | DEV_RW, snap[i]);

	/* A few pages read through the device, first, last and between. */
	for (probe = 0; probe < npages; probe += npages / 7 + 1) {
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ,
					 va + probe * self->psz, dbuf, 1,
					 &cmd));
		ASSERT_EQ(pat_word(37, probe), *(__u64 *)dbuf);
	}
	ASSERT_EQ(0, munmap(va, SZ_1G));
}

/* ---------------------------------------------------------------------
 * File-backed memory.
 */

/*
 * Shared file mapping: device stores are stores to the file. @fd holds
 * pattern 41 on entry; the device must read it, and what the device
 * writes must come back from read(2), i.e. from the page cache.
 */
static void shared_file_roundtrip(struct __test_metadata *_metadata,
				  int dev, int fd, size_t len, size_t psz)
{
	unsigned long npages = len / psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(dev, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 41, 0));

	pat_fill(dbuf, len, 42, 0);
	ASSERT_EQ(0, dmirror_req(dev, HMM_DMIRROR_WRITE, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 42, 0));
	ASSERT_EQ(-1, file_find_bad(fd, len, 42));

	/* And the file is what a fresh mapping sees. */
	ASSERT_EQ(0, munmap(va, len));
	va = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, va);
	ASSERT_EQ(0, dmirror_req(dev, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 42, 0));
	ASSERT_EQ(-EPERM, dmirror_req(dev, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));
	ASSERT_EQ(0, munmap(va, len));
	free(dbuf);
}

TEST_F(hmm, memfd_shared_read_write)
{
	size_t len = 64 * self->psz;
	void *src;
	int fd;

	fd = memfd_create("hmm-tests", MFD_CLOEXEC);
	ASSERT_LE(0, fd);
	src = malloc(len);
	ASSERT_NE(NULL, src);
	pat_fill(src, len, 41, 0);
	ASSERT_EQ((ssize_t)len, pwrite(fd, src, len, 0));
	free(src);

	shared_file_roundtrip(_metadata, self->fd, fd, len, self->psz);
	close(fd);
}

TEST_F(hmm, tmpfs_file_read_write)
{
	size_t len = 64 * self->psz;
	int fd;

	fd = tmpfile_with_pattern(len, 41);
	ASSERT_LE(0, fd);
	shared_file_roundtrip(_metadata, self->fd, fd, len, self->psz);
	close(fd);
}

/*
 * Private file mapping: device stores copy-on-write into anonymous pages,
 * which (unlike page cache pages) can then migrate; the file is untouched.
 */
TEST_F(hmm, file_private_cow)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	int fd;

	fd = tmpfile_with_pattern(len, 43);
	ASSERT_LE(0, fd);
	va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ASSERT_NE(MAP_FAILED, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 43, 0));

	pat_fill(dbuf, len, 44, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(va, len, 44, 0));
	ASSERT_EQ(-1, file_find_bad(fd, len, 43));

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 44, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 44, 0));
	ASSERT_EQ(-1, file_find_bad(fd, len, 43));
	close(fd);
}

/*
 * One request spanning three VMAs: a read-only private file mapping, an
 * anonymous one and a shared memfd. Reads cross the boundaries; a write
 * that covers the read-only part is refused before anything is written.
 */
TEST_F(hmm, mixed_vmas)
{
	const unsigned long part = 8;
	size_t plen = part * self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char snap[24];
	char *va, *dbuf;
	int ffd, mfd;
	unsigned long i;

	ffd = tmpfile_with_pattern(plen, 45);
	ASSERT_LE(0, ffd);
	mfd = memfd_create("hmm-tests-mixed", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, plen));

	va = anon_map(3 * plen, PROT_NONE, true);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(va, mmap(va, plen, PROT_READ, MAP_PRIVATE | MAP_FIXED,
			   ffd, 0));
	ASSERT_EQ(0, mprotect(va + plen, plen, PROT_READ | PROT_WRITE));
	ASSERT_EQ(va + 2 * plen,
		  mmap(va + 2 * plen, plen, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_FIXED, mfd, 0));
	pat_fill(va + plen, 2 * plen, 46, plen);

	dbuf = malloc(3 * plen);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 3 * part, &cmd));
	ASSERT_EQ(3 * part, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, plen, 45, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + plen, 2 * plen, 46, plen));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 3 * part, &cmd));
	for (i = 0; i < part; i++) {
		ASSERT_EQ(DEV_RO, snap[i]);
		ASSERT_EQ(DEV_RW, snap[part + i]);
	}

	pat_fill(dbuf, 3 * plen, 47, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      3 * part, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, plen, 45, 0));
	ASSERT_EQ(-1, pat_find_bad(va + plen, 2 * plen, 46, plen));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va + plen,
				 dbuf + plen, 2 * part, &cmd));
	ASSERT_EQ(2 * part, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va + plen, 2 * plen, 47, plen));
	ASSERT_EQ(-1, file_find_bad(ffd, plen, 45));
	ASSERT_EQ((ssize_t)plen, pread(mfd, dbuf, plen, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf, plen, 47, 2 * plen));
	close(mfd);
	close(ffd);
}

/*
 * The device node can itself be mapped: the driver inserts ordinary kernel
 * pages (a VM_MIXEDMAP mapping) which the device then mirrors like any
 * other page.
 */
TEST_F(hmm, mixedmap)
{
	const unsigned long npages = 8;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char snap[8];
	char *ro, *rw, *dbuf;
	unsigned long i;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ro = mmap(NULL, len, PROT_READ, MAP_PRIVATE, self->fd, 0);
	ASSERT_NE(MAP_FAILED, ro);
	ASSERT_EQ(-1, zero_find_bad(ro, len));
	memset(dbuf, 0xff, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, ro, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, zero_find_bad(dbuf, len));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, ro, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(DEV_RO, snap[i]);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, ro, dbuf,
				      npages, &cmd));

	rw = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, self->fd, 0);
	ASSERT_NE(MAP_FAILED, rw);
	pat_fill(rw, len, 48, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, rw, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 48, 0));
	pat_fill(dbuf, len, 49, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, rw, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(rw, len, 49, 0));
	ASSERT_EQ(0, munmap(rw, len));
	ASSERT_EQ(0, munmap(ro, len));
}

/* ---------------------------------------------------------------------
 * Exclusive (atomic) access.
 */

/*
 * EXCLUSIVE hands the device the current data; the grant holds until the
 * CPU touches a page, which revokes it for that page only.
 */
TEST_F(hmm, exclusive)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 71, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 71, 0));
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE,
				      va, NULL, npages, &cmd));

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 71, 0));

	/* A CPU read of page 5 ends exclusivity there and nowhere else. */
	ASSERT_EQ(-1, pat_find_bad(va + 5 * psz, psz, 71, 5 * psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE,
				 va + 5 * psz, NULL, 1, &cmd));
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE,
				      va, NULL, 5, &cmd));
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE,
				      va + 6 * psz, NULL, npages - 6, &cmd));

	pat_fill(va, len, 72, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 72, 0));
}

/* mprotect() revokes the grant and the device loses write access. */
TEST_F(hmm, exclusive_mprotect)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 73, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 73, 0));

	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE, va,
				 NULL, npages, &cmd));
	pat_fill(dbuf, len, 74, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 73, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 73, 0));
}

struct cow_job {
	int unit;	/* device the child reads its own copy through */
	char *va;
	size_t len;
	__u32 seen_seed;
	__u32 new_seed;
};

/*
 * Child side of a COW check: find what the parent wrote before fork(),
 * then diverge. The child's stores are checked through a device mirror
 * of the child's own address space, the parent checks that they did not
 * reach its copy.
 */
static int cow_job_child(void *arg)
{
	struct cow_job *job = arg;
	struct hmm_dmirror_cmd cmd;
	char *dbuf;
	int fd;

	if (pat_find_bad(job->va, job->len, job->seen_seed, 0) != -1)
		return 20;
	pat_fill(job->va, job->len, job->new_seed, 0);
	fd = dmirror_open(job->unit);
	dbuf = malloc(job->len);
	if (fd < 0 || !dbuf)
		return 22;
	if (dmirror_req(fd, HMM_DMIRROR_READ, job->va, dbuf,
			job->len / sysconf(_SC_PAGESIZE), &cmd))
		return 23;
	if (pat_find_bad(dbuf, job->len, job->new_seed, 0) != -1)
		return 21;
	close(fd);
	free(dbuf);
	return 0;
}

/* fork() of an exclusive range: both processes get their own copy. */
TEST_F(hmm, exclusive_cow)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	struct cow_job job = { .len = len, .seen_seed = 75, .new_seed = 76 };
	struct hmm_dmirror_cmd cmd;
	char *dbuf;

	job.va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, job.va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(job.va, len, 75, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, job.va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, in_child(cow_job_child, &job));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE,
				 job.va, NULL, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(job.va, len, 75, 0));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 75, 0));

	/* The range can be made exclusive again after the fork. */
	pat_fill(job.va, len, 77, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, job.va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 77, 0));
	ASSERT_EQ(-1, pat_find_bad(job.va, len, 77, 0));
}

/*
 * Exclusive access to THP-backed memory. Device atomics must not depend
 * on how the CPU happens to map the memory, so this has to succeed like
 * for base pages.
 */
TEST_F(hmm, exclusive_thp)
{
	size_t len = read_pmd_pagesize();
	unsigned long npages = len / self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = thp_map_filled(len, 78);
	if (!va)
		SKIP(return, "no transparent huge page available");
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 78, 0));
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE,
				      va, NULL, npages, &cmd));
	pat_fill(va, len, 79, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_CHECK_EXCLUSIVE, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 79, 0));
}

/* ---------------------------------------------------------------------
 * fork() of memory that sits in device memory.
 */

/*
 * Migrated pages are shared copy-on-write with a child like any other
 * anonymous page: the child sees the data and its stores stay its own.
 */
TEST_F(hmm, hmm_cow_in_device)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct cow_job job = {
		.unit = variant->unit, .len = len,
		.seen_seed = 81, .new_seed = 82,
	};
	struct hmm_dmirror_cmd cmd;
	char *dbuf;

	job.va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, job.va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(job.va, len, 81, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 job.va, dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);

	ASSERT_EQ(0, in_child(cow_job_child, &job));
	ASSERT_EQ(0, in_child(cow_job_child, &job));

	/*
	 * Bring everything home before the device looks again: fork()
	 * dropped the device's own mappings of the shared pages.
	 */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				 job.va, NULL, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(job.va, len, 81, 0));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 81, 0));

	/* Our own store after the children are gone is private too. */
	pat_fill(job.va, len, 83, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 83, 0));
}

/*
 * A device write to the parent's pages while they sit in device memory
 * and a live child shares them.  fork() left the parent's device-private
 * entries read-only; hmm_range_fault() reports them so, as 6.12 does, and
 * the driver brings them home and faults again, which breaks COW in the
 * parent only.  (Upstream 6.12's driver fails this write with EFAULT.)
 */
struct cow_live_job {
	int unit;
	char *va;
	size_t len;
	unsigned long npages;
	__u64 refaults;		/* device faults of the child's second read */
	int ready[2];		/* child -> parent: first check done */
	int go[2];		/* parent -> child: written, check again */
};

/*
 * Child side: read our copy through our own device first (that moves
 * nothing), wait for the parent's device write, then check again through
 * the device and the CPU.  Private pages the parent's write brought home
 * moved for us too, so our device must have lost its mapping of them.
 */
static int cow_live_child(void *arg)
{
	struct cow_live_job *job = arg;
	struct hmm_dmirror_cmd cmd;
	char *dbuf, c = 0;
	int fd;

	fd = dmirror_open(job->unit);
	dbuf = malloc(job->len);
	if (fd < 0 || !dbuf)
		return 30;
	if (dmirror_req(fd, HMM_DMIRROR_READ, job->va, dbuf, job->npages,
			&cmd) || cmd.cpages != job->npages)
		return 31;
	if (pat_find_bad(dbuf, job->len, 91, 0) != -1)
		return 32;
	if (write(job->ready[1], &c, 1) != 1 || read(job->go[0], &c, 1) != 1)
		return 33;
	memset(dbuf, 0, job->len);
	if (dmirror_req(fd, HMM_DMIRROR_READ, job->va, dbuf, job->npages,
			&cmd) || cmd.cpages != job->npages)
		return 34;
	if (cmd.faults != job->refaults)
		return 37;
	if (pat_find_bad(dbuf, job->len, 91, 0) != -1)
		return 35;
	if (pat_find_bad(job->va, job->len, 91, 0) != -1)
		return 36;
	close(fd);
	return 0;
}

TEST_F(hmm, fork_device_write_parent)
{
	struct cow_live_job job = {
		.unit = variant->unit, .npages = 16,
		.refaults = variant->coherent ? 0 : 1,
	};
	unsigned char ro_local = (dev_local(variant->coherent) & ~DEV_RW) |
				 DEV_RO;
	struct hmm_dmirror_cmd cmd;
	int status;
	char *dbuf, c = 0;
	pid_t pid;

	job.len = job.npages * self->psz;
	job.va = anon_map(job.len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, job.va);
	dbuf = malloc(job.len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(job.va, job.len, 91, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, job.va,
				 dbuf, job.npages, &cmd));
	ASSERT_EQ(job.npages, cmd.cpages);
	ASSERT_EQ(0, pipe(job.ready));
	ASSERT_EQ(0, pipe(job.go));

	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(cow_live_child(&job));
	ASSERT_EQ(1, read(job.ready[0], &c, 1));
	/* Still in device memory, and read-only since fork(). */
	expect_snap(_metadata, self->fd, job.va, job.npages, 0, job.npages,
		    ro_local);

	pat_fill(dbuf, job.len, 92, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, job.va, dbuf,
				 job.npages, &cmd));
	ASSERT_EQ(job.npages, cmd.cpages);
	memset(dbuf, 0, job.len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 job.npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, job.len, 92, 0));
	ASSERT_EQ(-1, pat_find_bad(job.va, job.len, 92, 0));

	ASSERT_EQ(1, write(job.go[1], &c, 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	ASSERT_EQ(-1, pat_find_bad(job.va, job.len, 92, 0));
}

/* ---------------------------------------------------------------------
 * SNAPSHOT: every page state the ABI can report, from both devices.
 */

enum {
	SNAP_PROTNONE,		/* PROT_NONE mapping */
	SNAP_HOLE,		/* nothing mapped */
	SNAP_UNTOUCHED,		/* mapped, never accessed */
	SNAP_ZERO,		/* read-only, read: shared zero page */
	SNAP_RO,		/* written, then made read-only */
	SNAP_RW,		/* written */
	SNAP_ON_DEV,		/* migrated to the device under test */
	SNAP_ON_PEER,		/* migrated to the peer device */
	SNAP_NPAGES
};

TEST_F(hmm, snapshot)
{
	size_t psz = self->psz;
	unsigned char want[SNAP_NPAGES], peer_want[SNAP_NPAGES];
	unsigned char snap[SNAP_NPAGES], snap2[SNAP_NPAGES];
	struct hmm_dmirror_cmd cmd;
	unsigned char vec;
	char *va, *dbuf;
	int i;

	va = anon_map(SNAP_NPAGES * psz, PROT_NONE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(psz);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, munmap(va + SNAP_HOLE * psz, psz));
	ASSERT_EQ(0, mprotect(va + SNAP_UNTOUCHED * psz,
			      (SNAP_NPAGES - SNAP_UNTOUCHED) * psz,
			      PROT_READ | PROT_WRITE));
	ASSERT_EQ(0, mprotect(va + SNAP_ZERO * psz, psz, PROT_READ));
	ASSERT_EQ(-1, zero_find_bad(va + SNAP_ZERO * psz, psz));
	pat_fill(va + SNAP_RO * psz, psz, 91, SNAP_RO * psz);
	ASSERT_EQ(0, mprotect(va + SNAP_RO * psz, psz, PROT_READ));
	pat_fill(va + SNAP_RW * psz, 3 * psz, 91, SNAP_RW * psz);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 va + SNAP_ON_DEV * psz, dbuf, 1, &cmd));
	ASSERT_EQ(1, cmd.cpages);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 va + SNAP_ON_PEER * psz, dbuf, 1, &cmd));
	ASSERT_EQ(1, cmd.cpages);

	want[SNAP_PROTNONE] = HMM_DMIRROR_PROT_ERROR;
	want[SNAP_HOLE] = HMM_DMIRROR_PROT_ERROR;
	want[SNAP_UNTOUCHED] = HMM_DMIRROR_PROT_NONE;
	want[SNAP_ZERO] = HMM_DMIRROR_PROT_ZERO | DEV_RO;
	want[SNAP_RO] = DEV_RO;
	want[SNAP_RW] = DEV_RW;
	memcpy(peer_want, want, sizeof(want));
	want[SNAP_ON_DEV] = dev_local(variant->coherent);
	want[SNAP_ON_PEER] = dev_remote(variant->coherent);
	peer_want[SNAP_ON_DEV] = dev_remote(variant->coherent);
	peer_want[SNAP_ON_PEER] = dev_local(variant->coherent);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 SNAP_NPAGES, &cmd));
	ASSERT_EQ(SNAP_NPAGES, cmd.cpages);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_SNAPSHOT, va,
				 snap2, SNAP_NPAGES, &cmd));
	ASSERT_EQ(SNAP_NPAGES, cmd.cpages);
	for (i = 0; i < SNAP_NPAGES; i++) {
		if (snap[i] != want[i] || snap2[i] != peer_want[i])
			TH_LOG("page %d: 0x%02x/0x%02x, expected 0x%02x/0x%02x",
			       i, snap[i], snap2[i], want[i], peer_want[i]);
		EXPECT_EQ(want[i], snap[i]);
		EXPECT_EQ(peer_want[i], snap2[i]);
	}

	/* A snapshot observes: it faults nothing in. */
	ASSERT_EQ(0, mincore(va + SNAP_UNTOUCHED * psz, psz, &vec));
	ASSERT_EQ(0, vec & 1);

	/* And the migrated data is still what the CPU wrote. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				 va + SNAP_ON_DEV * psz, NULL, 1, &cmd));
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				 va + SNAP_ON_PEER * psz, NULL, 1, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va + SNAP_RO * psz, 4 * psz, 91,
				   SNAP_RO * psz));
}

/* ---------------------------------------------------------------------
 * Teardown while the device holds mappings.
 */

/*
 * munmap() of a mirrored range, with part of it in device memory: the
 * device must lose access, and new memory mapped at the same address must
 * be what it sees next, never the freed pages.
 */
TEST_F(hmm, munmap_drops_mirror)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf, *again;
	int round;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	for (round = 0; round < 8; round++) {
		pat_fill(va, len, 200 + round, 0);
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
					 npages, &cmd));
		ASSERT_EQ(1, cmd.faults);
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, 200 + round, 0));
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
					 va + len / 2, dbuf, npages / 2,
					 &cmd));
		ASSERT_EQ(npages / 2, cmd.cpages);

		ASSERT_EQ(0, munmap(va, len));
		ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ, va,
					       dbuf, npages, &cmd));

		again = mmap(va, len, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		ASSERT_EQ(va, again);
		ASSERT_EQ(0, madvise(va, len, MADV_NOHUGEPAGE));
		memset(dbuf, 0xff, len);
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
					 npages, &cmd));
		ASSERT_EQ(npages, cmd.cpages);
		ASSERT_EQ(-1, zero_find_bad(dbuf, len));
	}
}

struct unmap_race {
	char *va;
	size_t len;
	int ready;	/* the thread spins, waiting for go */
	int go;
	int started;	/* munmap() entered */
	int done;	/* munmap() returned */
	int ret;
};

static void *unmap_race_thread(void *arg)
{
	struct unmap_race *r = arg;

	__atomic_store_n(&r->ready, 1, __ATOMIC_RELEASE);
	while (!__atomic_load_n(&r->go, __ATOMIC_ACQUIRE))
		;
	__atomic_store_n(&r->started, 1, __ATOMIC_SEQ_CST);
	r->ret = munmap(r->va, r->len);
	__atomic_store_n(&r->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* Rounds of anon_teardown, and how many must overlap a read. */
#define UNMAP_RACE_MIN_OVERLAPS	8
#define UNMAP_RACE_MAX_ROUNDS	64

/*
 * munmap() from another thread while the device reads the range: each
 * read either completes with the right data or fails with EFAULT. A read
 * overlapped the munmap() when it started before munmap() returned and
 * ended after munmap() was entered; the case runs rounds until enough
 * reads did, so that it cannot pass with munmap() always winning or
 * always losing.
 */
TEST_F(hmm, anon_teardown)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct unmap_race race = { .len = len };
	struct hmm_dmirror_cmd cmd;
	int round, ret, reads, overlaps = 0, ok_overlaps = 0;
	pthread_t thread;
	bool before_done;
	char *dbuf;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	for (round = 0; round < UNMAP_RACE_MAX_ROUNDS &&
	     overlaps < UNMAP_RACE_MIN_OVERLAPS; round++) {
		race.va = anon_map(len, PROT_READ | PROT_WRITE, false);
		ASSERT_NE(NULL, race.va);
		pat_fill(race.va, len, 300 + round, 0);
		if (round & 1)
			ASSERT_EQ(0, dmirror_req(self->fd,
						 HMM_DMIRROR_MIGRATE_TO_DEV,
						 race.va, dbuf, npages, &cmd));
		race.ready = 0;
		race.started = 0;
		race.done = 0;
		__atomic_store_n(&race.go, 0, __ATOMIC_RELEASE);
		ASSERT_EQ(0, pthread_create(&thread, NULL, unmap_race_thread,
					    &race));
		while (!__atomic_load_n(&race.ready, __ATOMIC_ACQUIRE))
			;
		__atomic_store_n(&race.go, 1, __ATOMIC_RELEASE);
		for (reads = 0; reads < 200; reads++) {
			before_done = !__atomic_load_n(&race.done,
						       __ATOMIC_SEQ_CST);
			ret = dmirror_req(self->fd, HMM_DMIRROR_READ, race.va,
					  dbuf, npages, &cmd);
			if (before_done &&
			    __atomic_load_n(&race.started, __ATOMIC_SEQ_CST)) {
				overlaps++;
				ok_overlaps += !ret;
			}
			if (ret)
				break;
			ASSERT_EQ(-1, pat_find_bad(dbuf, len, 300 + round, 0));
		}
		ASSERT_EQ(0, pthread_join(thread, NULL));
		ASSERT_EQ(0, race.ret);
		if (ret)
			ASSERT_EQ(-EFAULT, ret);
		ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ,
					       race.va, dbuf, npages, &cmd));
	}
	TH_LOG("%d rounds, %d reads overlapped munmap(), %d of them completed",
	       round, overlaps, ok_overlaps);
	ASSERT_LE(UNMAP_RACE_MIN_OVERLAPS, overlaps);
}

/*
 * Closing a mirror while its device holds pages gives the memory back:
 * the pages return to system memory with their data.
 */
TEST_F(hmm, close_with_device_pages)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	int fd;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 93, 0);

	fd = dmirror_open(variant->unit);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	pat_fill(dbuf, len, 94, 0);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_WRITE, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(0, close(fd));

	expect_snap(_metadata, self->fd, va, 64, 0, 64, DEV_RW);
	ASSERT_EQ(-1, pat_find_bad(va, len, 94, 0));
}

struct exit_job {
	int unit;
	unsigned long npages;
	size_t psz;
};

/* Child: put data in device memory, check it, and exit without cleanup. */
static int exit_job_child(void *arg)
{
	struct exit_job *job = arg;
	size_t len = job->npages * job->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	int fd;

	fd = dmirror_open(job->unit);
	if (fd < 0)
		return 30;
	va = anon_map(len, PROT_READ | PROT_WRITE, false);
	dbuf = malloc(len);
	if (!va || !dbuf)
		return 31;
	pat_fill(va, len, 95, 0);
	if (dmirror_req(fd, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf, job->npages,
			&cmd) || cmd.cpages != job->npages)
		return 32;
	if (pat_find_bad(dbuf, len, 95, 0) != -1)
		return 33;
	return 0;
}

/*
 * Processes that exit with pages in device memory: the device copes, the
 * pages are freed with the process (devmem_used is back where it was)
 * and its memory is reusable afterwards.
 */
TEST_F(hmm, exit_with_device_pages)
{
	struct exit_job job = {
		.unit = variant->unit, .npages = 512, .psz = self->psz,
	};
	size_t len = job.npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int i;

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	for (i = 0; i < 2; i++) {
		ASSERT_EQ(0, in_child(exit_job_child, &job));
		ASSERT_EQ(used0, devmem_used(self->fd));
	}

	va = anon_map(len, PROT_READ | PROT_WRITE, false);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 96, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, job.npages, &cmd));
	ASSERT_EQ(job.npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 96, 0));
	ASSERT_EQ(used0 + (long)job.npages, devmem_used(self->fd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, job.npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 96, 0));
	ASSERT_EQ(used0, devmem_used(self->fd));
}

/* ---------------------------------------------------------------------
 * Exclusive access on huge pages and shmem, whatever the THP mode.
 */

/*
 * No madvise: with THP "always" the buffer is THP-backed (checked in its
 * own smaps entry), with "madvise" it is not; EXCLUSIVE must work the same,
 * page by page, either way.
 */
TEST_F(hmm, exclusive_thp_unadvised)
{
	size_t psz = self->psz, pmd = read_pmd_pagesize(), len = 2 * pmd;
	unsigned long npages = len / psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map_aligned(len, pmd);
	ASSERT_NE(NULL, va);
	pat_fill(va, len, 120, 0);
	/* Checked before anything else is mapped next to it and merges. */
	if (thp_read_string("enabled", thp_enabled_names) == THP_ALWAYS)
		ASSERT_TRUE(check_huge_anon(va, len / pmd, pmd));
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 120, 0));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, npages));

	/* A CPU store revokes the grant of that page only. */
	va[7 * psz] = 1;
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 7, 8));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, 7));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 8, npages));
	va[7 * psz] = ((char *)dbuf)[7 * psz];
	ASSERT_EQ(-1, pat_find_bad(va, len, 120, 0));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 0, npages));
	free(dbuf);
	munmap(va, len);
}

/* fork() of a THP-backed exclusive range: each side keeps its own data. */
TEST_F(hmm, exclusive_thp_fork)
{
	size_t len = read_pmd_pagesize();
	unsigned long npages = len / self->psz;
	struct cow_job job = { .len = len, .seen_seed = 121, .new_seed = 122 };
	struct hmm_dmirror_cmd cmd;
	char *dbuf;

	job.va = thp_map_filled(len, 121);
	if (!job.va)
		SKIP(return, "no transparent huge page available");
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, job.va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_TRUE(excl_all(self->fd, job.va, self->psz, 0, npages));
	ASSERT_EQ(0, in_child(cow_job_child, &job));

	ASSERT_EQ(0, excl_state(self->fd, job.va, self->psz, 0, npages));
	ASSERT_EQ(-1, pat_find_bad(job.va, len, 121, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 121, 0));
	free(dbuf);
	munmap(job.va, len);
}

/* mprotect() and munmap() of a THP-backed exclusive range. */
TEST_F(hmm, exclusive_thp_mprotect_munmap)
{
	size_t psz = self->psz, len = read_pmd_pagesize();
	unsigned long npages = len / psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = thp_map_filled(len, 123);
	if (!va)
		SKIP(return, "no transparent huge page available");
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);

	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, npages));

	/*
	 * Splitting the VMA inside a PMD-sized range invalidates that whole
	 * range (a possible THP is split), so the device may lose the other
	 * half too; what matters is that it loses the protected half and
	 * can get the other back.
	 */
	ASSERT_EQ(0, mprotect(va, len / 2, PROT_READ));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 0, npages / 2));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va + len / 2,
				 dbuf, npages / 2, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len / 2, 123, len / 2));
	ASSERT_TRUE(excl_all(self->fd, va, psz, npages / 2, npages));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 0, npages / 2));
	pat_fill(dbuf, len, 124, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages / 2, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len / 2, 123, 0));

	/* munmap while exclusive: the device loses the pages, no leak. */
	ASSERT_EQ(0, munmap(va + len / 2, len / 2));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, npages / 2, npages));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ,
				       va + len / 2, dbuf, npages / 2, &cmd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages / 2, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len / 2, 123, 0));
	free(dbuf);
	munmap(va, len / 2);
}

/*
 * Two devices asking for the same pages: the later grant wins and
 * revokes the earlier one, and both see the same data.
 */
TEST_F(hmm, exclusive_two_devices)
{
	size_t psz = self->psz, len = read_pmd_pagesize();
	unsigned long npages = len / psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = thp_map_filled(len, 125);
	if (!va) {
		va = anon_map(len, PROT_READ | PROT_WRITE, true);
		ASSERT_NE(NULL, va);
		pat_fill(va, len, 125, 0);
	}
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_EXCLUSIVE, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 125, 0));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 0, npages));
	ASSERT_TRUE(excl_all(self->peer_fd, va, psz, 0, npages));

	/* The peer writes through its grant; the first device reads it. */
	pat_fill(dbuf, len, 126, 0);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 126, 0));
	ASSERT_EQ(0, excl_state(self->peer_fd, va, psz, 0, npages));
	ASSERT_EQ(-1, pat_find_bad(va, len, 126, 0));
	free(dbuf);
	munmap(va, len);
}

TEST_HARNESS_MAIN
