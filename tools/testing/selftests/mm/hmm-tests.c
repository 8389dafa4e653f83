// SPDX-License-Identifier: GPL-2.0
/*
 * HMM selftests, driven through the dummy device of lib/test_hmm.c.
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
 * meaning.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include <mm/gup_test.h>
#include "hmm-common.h"

/* ---------------------------------------------------------------------
 * Fixture: one device under test plus a peer device with the same kind of
 * memory, both open for the calling process.
 */

FIXTURE(dmirror) {
	int fd;
	int peer_fd;
	size_t psz;
	bool gigantic_borrowed;	/* shrink the 1 GiB pool back on teardown */
};

FIXTURE_VARIANT(dmirror) {
	int unit;
	int peer;
	bool coherent;
};

FIXTURE_VARIANT_ADD(dmirror, private_mem) {
	.unit = 0,
	.peer = 1,
	.coherent = false,
};

FIXTURE_VARIANT_ADD(dmirror, coherent_mem) {
	.unit = 2,
	.peer = 3,
	.coherent = true,
};

FIXTURE_SETUP(dmirror)
{
	self->psz = sysconf(_SC_PAGESIZE);
	self->fd = dmirror_open(variant->unit);
	if (self->fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror%d absent (%s)", variant->unit,
		     variant->coherent ?
		     "test_hmm loaded without spm_addr_dev0/1" :
		     "test_hmm not loaded");
	ASSERT_LE(0, self->fd);
	self->peer_fd = dmirror_open(variant->peer);
	if (self->peer_fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror%d absent", variant->peer);
	ASSERT_LE(0, self->peer_fd);
}

#define GIGANTIC_NR "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"

FIXTURE_TEARDOWN(dmirror)
{
	/* Swap, memcg, KSM left on by a case that failed half way. */
	hmm_leftovers_teardown();
	close(self->peer_fd);
	close(self->fd);
	/* A page still mapped becomes surplus and is freed at exit. */
	if (self->gigantic_borrowed)
		write_str(GIGANTIC_NR, "0");
}

/* What SNAPSHOT on the local device reports for a writable migrated page. */
static unsigned char dev_local(bool coherent)
{
	return (coherent ? HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
			      HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL) | DEV_RW;
}

/*
 * What SNAPSHOT on one device reports for a writable page that lives on
 * the other. Coherent memory is mapped by ordinary PTEs, so the peer sees
 * it. A device-private page of another owner is a non-present entry that
 * hmm_range_fault() does not report without faulting it, so the peer sees
 * nothing there.
 */
static unsigned char dev_remote(bool coherent)
{
	return coherent ?
		HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE | DEV_RW :
		HMM_DMIRROR_PROT_NONE;
}

/* ---------------------------------------------------------------------
 * Opening the device and feeding it bad requests.
 */

/*
 * A mirror lives as long as its file: reopening starts with an empty
 * device page table (the first read has to fault) and data written through
 * a closed mirror stays in process memory.
 */
TEST_F(dmirror, open_release_cycle)
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

TEST_F(dmirror, malformed_requests)
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
TEST_F(dmirror, device_reads_cpu_data)
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
TEST_F(dmirror, device_reads_untouched_as_zero)
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
TEST_F(dmirror, device_read_needs_prot_read)
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
TEST_F(dmirror, device_writes_reach_cpu)
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
TEST_F(dmirror, device_write_needs_prot_write)
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
TEST_F(dmirror, two_mirrors_share_pages)
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

TEST_F(dmirror, fork_private_stays_private)
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

TEST_F(dmirror, fork_shared_stays_shared)
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

TEST_F(dmirror, thp_read_write)
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
TEST_F(dmirror, thp_protection_and_split)
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

TEST_F(dmirror, hugetlb_read_write)
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
TEST_F_TIMEOUT(dmirror, hugetlb_pud_snapshot, 180)
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

TEST_F(dmirror, memfd_shared_read_write)
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

TEST_F(dmirror, tmpfs_file_read_write)
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
TEST_F(dmirror, file_private_cow)
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
TEST_F(dmirror, mixed_vmas)
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
TEST_F(dmirror, device_node_mapping)
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
 * Migration to device memory and back.
 */

/*
 * To the device and back. MIGRATE_TO_DEV hands back what the device now
 * holds; while there the device reads its own copy without faulting.
 */
TEST_F(dmirror, migrate_round_trip)
{
	const unsigned long npages = 1024;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	char *va, *dbuf;
	unsigned long i;

	va = anon_map(len, PROT_READ | PROT_WRITE, false);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);
	pat_fill(va, len, 51, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 51, 0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(dev_local(variant->coherent), snap[i]);

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 51, 0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)	/* khugepaged may have collapsed it */
		ASSERT_EQ(DEV_RW, snap[i] & ~HMM_DMIRROR_PROT_PMD);
	ASSERT_EQ(-1, pat_find_bad(va, len, 51, 0));
}

/* Expect snapshot entries [from, to) of @fd to be @want. */
static void expect_snap(struct __test_metadata *_metadata, int fd, char *va,
			unsigned long npages, unsigned long from,
			unsigned long to, unsigned char want)
{
	unsigned char snap[64];
	struct hmm_dmirror_cmd cmd;
	unsigned long i;

	ASSERT_GE(64, npages);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_SNAPSHOT, va, snap, npages,
				 &cmd));
	for (i = from; i < to; i++) {
		if (snap[i] != want)
			TH_LOG("page %lu of %p: 0x%x, expected 0x%x", i,
			       (void *)va, snap[i], want);
		ASSERT_EQ(want, snap[i]);
	}
}

/*
 * Parts of a range move independently; pages already where a request
 * wants them are left alone and still counted as there.
 */
TEST_F(dmirror, migrate_sub_ranges)
{
	const unsigned long npages = 64;
	size_t psz = self->psz, len = npages * psz;
	unsigned char local = dev_local(variant->coherent);
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 52, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 va + 8 * psz, dbuf, 16, &cmd));
	ASSERT_EQ(16, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, 16 * psz, 52, 8 * psz));
	expect_snap(_metadata, self->fd, va, npages, 0, 8, DEV_RW);
	expect_snap(_metadata, self->fd, va, npages, 8, 24, local);
	expect_snap(_metadata, self->fd, va, npages, 24, 64, DEV_RW);

	/* Overlapping request: [16, 24) is already there. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 va + 16 * psz, dbuf, 24, &cmd));
	ASSERT_EQ(24, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, 24 * psz, 52, 16 * psz));
	expect_snap(_metadata, self->fd, va, npages, 8, 40, local);

	/* Back from the middle, then everything else. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				 va + 12 * psz, NULL, 8, &cmd));
	ASSERT_EQ(8, cmd.cpages);
	expect_snap(_metadata, self->fd, va, npages, 8, 12, local);
	expect_snap(_metadata, self->fd, va, npages, 12, 20, DEV_RW);
	expect_snap(_metadata, self->fd, va, npages, 20, 40, local);
	ASSERT_EQ(-1, pat_find_bad(va + 12 * psz, 8 * psz, 52, 12 * psz));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(24, cmd.cpages);
	expect_snap(_metadata, self->fd, va, npages, 0, 64, DEV_RW);
	ASSERT_EQ(-1, pat_find_bad(va, len, 52, 0));
}

/*
 * Many round trips. Each time the device rewrites the data while it sits
 * in device memory; the CPU checks it back in system memory and writes
 * the next pattern. Private memory comes back alternately by explicit
 * migration and by CPU faults.
 */
TEST_F(dmirror, migrate_many_times)
{
	const unsigned long npages = 128;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	__u32 seed;
	int round;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	for (round = 0; round < 8; round++) {
		seed = 100 + 2 * round;
		pat_fill(va, len, seed, 0);

		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
					 va, dbuf, npages, &cmd));
		ASSERT_EQ(npages, cmd.cpages);
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, seed, 0));

		pat_fill(dbuf, len, seed + 1, 0);
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
					 npages, &cmd));
		ASSERT_EQ(npages, cmd.cpages);
		ASSERT_EQ(0, cmd.faults);

		if (variant->coherent || (round & 1)) {
			ASSERT_EQ(0, dmirror_req(self->fd,
						 HMM_DMIRROR_MIGRATE_TO_SYS,
						 va, NULL, npages, &cmd));
			ASSERT_EQ(npages, cmd.cpages);
		}
		ASSERT_EQ(-1, pat_find_bad(va, len, seed + 1, 0));
		expect_snap(_metadata, self->fd, va, 64, 0, 64,
			    DEV_RW);
	}
}

/*
 * CPU access to migrated pages. Device-private pages are not CPU
 * addressable, so each touched page faults back to system memory on its
 * own and the rest stay put. Coherent pages are used in place.
 */
TEST_F(dmirror, cpu_access_device_pages)
{
	const unsigned long npages = 32;
	size_t psz = self->psz, len = npages * psz;
	unsigned char local = dev_local(variant->coherent);
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	unsigned long i;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 53, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);

	/* Read page 3, write page 7. */
	ASSERT_EQ(-1, pat_find_bad(va + 3 * psz, psz, 53, 3 * psz));
	pat_fill(va + 7 * psz, psz, 54, 7 * psz);

	if (variant->coherent) {
		expect_snap(_metadata, self->fd, va, npages, 0, npages,
			    local);
	} else {
		expect_snap(_metadata, self->fd, va, npages, 0, 3, local);
		expect_snap(_metadata, self->fd, va, npages, 3, 4,
			    DEV_RW);
		expect_snap(_metadata, self->fd, va, npages, 4, 7, local);
		expect_snap(_metadata, self->fd, va, npages, 7, 8,
			    DEV_RW);
		expect_snap(_metadata, self->fd, va, npages, 8, npages,
			    local);
	}

	/*
	 * The device sees the CPU's store wherever each page now is. One
	 * page per request: a request that faults must not span pages the
	 * device still holds, since 6.12's test_hmm copies through the
	 * device-private struct page it then gets back (not addressable).
	 */
	for (i = 0; i < npages; i++) {
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ,
					 va + i * psz, dbuf, 1, &cmd));
		ASSERT_EQ(1, cmd.cpages);
		ASSERT_EQ(-1, pat_find_bad(dbuf, psz, i == 7 ? 54 : 53,
					   i * psz));
	}

	/* Touch everything; then explicit migration finds what is left. */
	ASSERT_EQ(-1, pat_find_bad(va, 7 * psz, 53, 0));
	ASSERT_EQ(-1, pat_find_bad(va + 8 * psz, len - 8 * psz, 53, 8 * psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(variant->coherent ? npages : 0, cmd.cpages);
	expect_snap(_metadata, self->fd, va, npages, 0, npages, DEV_RW);
	ASSERT_EQ(-1, pat_find_bad(va + 7 * psz, psz, 54, 7 * psz));
}

/*
 * Pages on one device are not taken by another: the second device's
 * request fails with ENOENT and leaves them in place. Going through
 * system memory moves them.
 */
TEST_F(dmirror, migrate_between_devices)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	unsigned char local = dev_local(variant->coherent);
	unsigned char remote = dev_remote(variant->coherent);
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 55, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	expect_snap(_metadata, self->fd, va, npages, 0, npages, local);
	expect_snap(_metadata, self->peer_fd, va, npages, 0, npages,
		    remote);

	/*
	 * From here on the first device's own mappings of these pages are
	 * gone (the attempt invalidated them), so only migration requests
	 * go to it until the pages are back in system memory.
	 */
	ASSERT_EQ(-ENOENT, dmirror_req(self->peer_fd,
				       HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				       npages, &cmd));
	expect_snap(_metadata, self->fd, va, npages, 0, npages, local);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 va, dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 55, 0));
	expect_snap(_metadata, self->peer_fd, va, npages, 0, npages,
		    local);
	expect_snap(_metadata, self->fd, va, npages, 0, npages, remote);

	pat_fill(dbuf, len, 56, 0);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, cmd.faults);

	/* The device that lost the pages gets nothing back from them. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(0, cmd.cpages);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				 va, NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 56, 0));
}

/*
 * Requests the migration code refuses: no read permission, a range with
 * a hole, a range running off the end of its mapping. Nothing to bring
 * back is not an error.
 */
TEST_F(dmirror, migrate_refused)
{
	const unsigned long npages = 5;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_NONE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				       va, dbuf, npages, &cmd));
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				       va, NULL, npages, &cmd));

	ASSERT_EQ(0, mprotect(va, len, PROT_READ | PROT_WRITE));
	pat_fill(va, len, 57, 0);

	/* Nothing is on the device yet. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(0, cmd.cpages);

	/* Page 2 becomes a hole, page 4 is past the end. */
	ASSERT_EQ(0, munmap(va + 2 * psz, psz));
	ASSERT_EQ(0, munmap(va + 4 * psz, psz));
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				       va + psz, dbuf, 2, &cmd));
	ASSERT_EQ(-EINVAL, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				       va + 3 * psz, dbuf, 2, &cmd));

	/* Whatever moved before the hole comes back intact. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, 2, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, 2 * psz, 57, 0));
	ASSERT_EQ(-1, pat_find_bad(va + 3 * psz, psz, 57, 3 * psz));
}

/*
 * Read-only and never-written pages migrate too, and stay read-only on
 * the device: the device may read them, but a device write has to fail
 * with EPERM exactly as for the same pages in system memory.
 */
TEST_F(dmirror, migrate_read_only_pages)
{
	const unsigned long npages = 8;
	size_t psz = self->psz, len = npages * psz;
	unsigned char ro_local = dev_local(variant->coherent) & ~DEV_RW;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	ro_local |= DEV_RO;
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len / 2, 58, 0);	/* upper half never written */
	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_EQ(-1, zero_find_bad(va + len / 2, len / 2));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len / 2, 58, 0));
	ASSERT_EQ(-1, zero_find_bad(dbuf + len / 2, len / 2));
	expect_snap(_metadata, self->fd, va, npages, 0, npages,
		    ro_local);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len / 2, 58, 0));

	pat_fill(dbuf, len, 59, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len / 2, 58, 0));
	ASSERT_EQ(-1, zero_find_bad(va + len / 2, len / 2));
}

/* A userfaultfd; root may use kernel faults too, others user faults only. */
static int uffd_open(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd;

	fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0 && errno == EPERM)
		fd = syscall(__NR_userfaultfd,
			     O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		close(fd);
		return -errno;
	}
	return fd;
}

struct uffd_watch {
	int uffd;
	size_t psz;
	bool stop;
	unsigned long missing;	/* MISSING events seen */
	int err;
};

/*
 * Count the MISSING events of a userfaultfd and resolve each with the
 * zero page, so that the faulting thread goes on and the test can say
 * how many there were.
 */
static void *uffd_count_missing(void *arg)
{
	struct uffd_watch *w = arg;
	struct pollfd pfd = { .fd = w->uffd, .events = POLLIN };
	struct uffdio_zeropage zp;
	struct uffd_msg msg;

	while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
		if (poll(&pfd, 1, 10) <= 0)
			continue;
		if (read(w->uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		__atomic_add_fetch(&w->missing, 1, __ATOMIC_RELAXED);
		zp.range.start = msg.arg.pagefault.address & ~(w->psz - 1);
		zp.range.len = w->psz;
		zp.mode = 0;
		if (ioctl(w->uffd, UFFDIO_ZEROPAGE, &zp) && errno != EEXIST)
			w->err = errno;
	}
	return NULL;
}

/*
 * Zero pages of a userfaultfd MISSING range, populated by UFFDIO_ZEROPAGE:
 * migration may not populate such a range itself (userspace decides what
 * a missing page gets), so they stay where they are. They must stay
 * mapped, too: a page that does not migrate keeps its PTE, so the device
 * still sees the zero page and reading it from the CPU raises no MISSING
 * event for an address userspace already filled.
 */
TEST_F(dmirror, migrate_uffd_zero_pages_stay)
{
	const unsigned long npages = 64;
	size_t psz = self->psz, len = npages * psz;
	struct uffd_watch w = { .psz = psz };
	unsigned char snap[64];
	struct uffdio_register reg;
	struct uffdio_zeropage zp;
	struct hmm_dmirror_cmd cmd;
	unsigned long i, bad;
	pthread_t thread;
	char *va, *dbuf;
	int ret;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK))
		SKIP(return, "no userfaultfd in this kernel");
	w.uffd = uffd_open();
	ASSERT_LE(0, w.uffd);
	reg.range.start = (uintptr_t)va;
	reg.range.len = len;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	ASSERT_EQ(0, ioctl(w.uffd, UFFDIO_REGISTER, &reg));
	zp.range = reg.range;
	zp.mode = 0;
	ASSERT_EQ(0, ioctl(w.uffd, UFFDIO_ZEROPAGE, &zp));
	ASSERT_EQ((__s64)len, zp.zeropage);
	ASSERT_EQ(npages, pagemap_count(va, npages, PM_PRESENT));
	expect_snap(_metadata, self->fd, va, npages, 0, npages,
		    HMM_DMIRROR_PROT_ZERO | DEV_RO);
	ASSERT_EQ(0, pthread_create(&thread, NULL, uffd_count_missing, &w));

	/* Nothing moves: the driver only reads back what it has not got. */
	ret = dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
			  npages, &cmd);
	EXPECT_TRUE(ret == 0 || ret == -ENOENT) TH_LOG("ret %d", ret);
	EXPECT_EQ(npages, pagemap_count(va, npages, PM_PRESENT));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0, bad = 0; i < npages; i++)
		bad += snap[i] != (HMM_DMIRROR_PROT_ZERO | DEV_RO);
	EXPECT_EQ(0, bad) TH_LOG("page 0: 0x%x", snap[0]);

	/* Every page from the CPU: zeroes, and no event. */
	EXPECT_EQ(-1, zero_find_bad(va, len));
	__atomic_store_n(&w.stop, true, __ATOMIC_RELEASE);
	pthread_join(thread, NULL);
	EXPECT_EQ(0, w.missing);
	EXPECT_EQ(0, w.err);
	close(w.uffd);
	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
}

/*
 * Shared anonymous memory is shmem, and shmem pages migrate: the whole
 * range moves, the device reads it in its memory without a fault, and
 * MIGRATE_TO_SYS brings every page back with its data. (shmem_anon_shared
 * covers the move and fork; this case covers the way back.)
 */
TEST_F(dmirror, migrate_shared_anon)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;

	va = mmap(NULL, len, PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 60, 0);

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 60, 0));
	ASSERT_EQ(used0 + (long)npages, devmem_used(self->fd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 60, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 60, 0));
}

/*
 * A THP region migrates whole (the kernel splits it on the way) and the
 * device can update it in device memory.
 */
TEST_F(dmirror, thp_migrate_round_trip)
{
	size_t len = 2 * read_pmd_pagesize();
	unsigned long npages = len / self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	char *va, *dbuf;
	unsigned long i;

	va = thp_map_filled(len, 61);
	if (!va)
		SKIP(return, "no transparent huge page available");
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 61, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(dev_local(variant->coherent), snap[i]);

	pat_fill(dbuf, len, 62, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 62, 0));
}

/*
 * HMM_DMIRROR_RELEASE takes the device memory away: resident pages must
 * be evicted to system memory with their data, and the device must be
 * able to take pages again afterwards.
 */
TEST_F(dmirror, release_device_memory)
{
	const unsigned long npages = 64;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 63, 0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	pat_fill(dbuf, len, 64, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_RELEASE, va, NULL,
				 npages, &cmd));
	expect_snap(_metadata, self->fd, va, 64, 0, 64, DEV_RW);
	ASSERT_EQ(-1, pat_find_bad(va, len, 64, 0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 64, 0));
	expect_snap(_metadata, self->fd, va, 64, 0, 64,
		    dev_local(variant->coherent));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 64, 0));
}

/* ---------------------------------------------------------------------
 * Exclusive (atomic) access.
 */

/*
 * EXCLUSIVE hands the device the current data; the grant holds until the
 * CPU touches a page, which revokes it for that page only.
 */
TEST_F(dmirror, exclusive_grant_and_revoke)
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
TEST_F(dmirror, exclusive_revoked_by_mprotect)
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
TEST_F(dmirror, exclusive_then_fork)
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
TEST_F(dmirror, exclusive_thp)
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
TEST_F(dmirror, fork_cow_device_pages)
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

TEST_F(dmirror, fork_device_write_parent)
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

TEST_F(dmirror, snapshot_page_states)
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
TEST_F(dmirror, munmap_drops_mirror)
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

/* Rounds of munmap_races_device, and how many must overlap a read. */
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
TEST_F(dmirror, munmap_races_device)
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
TEST_F(dmirror, close_with_device_pages)
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
TEST_F(dmirror, exit_with_device_pages)
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
 * Large buffer: migration at a scale that needs several chunks of device
 * memory and many batches of the driver's fixed-size loops.
 */

FIXTURE(dmirror_big) {
	int fd;
	size_t psz;
};

FIXTURE_VARIANT(dmirror_big) {
	int unit;
	bool coherent;
	size_t len;	/* buffer size aimed for */
};

/* Needs several chunks of device memory at once. */
FIXTURE_VARIANT_ADD(dmirror_big, private_mem) {
	.unit = 0,
	.coherent = false,
	.len = SZ_1G,
};

/* test_hmm gives each coherent device 256 MiB; stay well inside it. */
FIXTURE_VARIANT_ADD(dmirror_big, coherent_mem) {
	.unit = 2,
	.coherent = true,
	.len = 192 * SZ_1M,
};

FIXTURE_SETUP(dmirror_big)
{
	self->psz = sysconf(_SC_PAGESIZE);
	self->fd = dmirror_open(variant->unit);
	if (self->fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror%d absent", variant->unit);
	ASSERT_LE(0, self->fd);
}

FIXTURE_TEARDOWN(dmirror_big)
{
	close(self->fd);
}

#define BIG_WINDOW	(64 * SZ_1M)	/* one request, one device buffer */
#define BIG_SPARE	(384 * SZ_1M)	/* left for the kernel and the rest */

/*
 * The whole buffer moves into device memory, 64 MiB per request, each
 * window checked on arrival and its first page rewritten there by the
 * device. The first window comes back through CPU faults (device-private
 * memory) or in-place CPU access (coherent), the rest by explicit
 * migration. The buffer shrinks if the machine cannot spare it; the size
 * used is logged. The timeout is generous because it counts guest time,
 * which under TCG on a busy host can run several times faster than the
 * wall clock; the harness's own QEMU timeout catches a real hang.
 */
TEST_F_TIMEOUT(dmirror_big, whole_buffer_migration, 900)
{
	long avail_kb = meminfo_kb("MemAvailable");
	size_t len = variant->len, off, win_pages;
	struct hmm_dmirror_cmd cmd;
	unsigned long npages;
	char *va, *dbuf;

	ASSERT_LT(0, avail_kb);
	if ((size_t)avail_kb << 10 < len + BIG_SPARE) {
		len = (((size_t)avail_kb << 10) - BIG_SPARE) &
		      ~(BIG_WINDOW - 1);
		ASSERT_LE(BIG_WINDOW, len);
	}
	TH_LOG("buffer %zu MiB (%ld MiB available)", len >> 20,
	       avail_kb >> 10);
	npages = len / self->psz;
	win_pages = BIG_WINDOW / self->psz;

	va = anon_map(len, PROT_READ | PROT_WRITE, false);
	ASSERT_NE(NULL, va);
	dbuf = malloc(BIG_WINDOW);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 401, 0);

	for (off = 0; off < len; off += BIG_WINDOW) {
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
					 va + off, dbuf, win_pages, &cmd));
		ASSERT_EQ(win_pages, cmd.cpages);
		ASSERT_EQ(-1, pat_find_bad(dbuf, BIG_WINDOW, 401, off));

		pat_fill(dbuf, self->psz, 402, off);
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va + off,
					 dbuf, 1, &cmd));
		ASSERT_EQ(0, cmd.faults);
	}

	ASSERT_EQ(-1, pat_find_bad(va, self->psz, 402, 0));
	ASSERT_EQ(-1, pat_find_bad(va + self->psz, BIG_WINDOW - self->psz,
				   401, self->psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages - (variant->coherent ? 0 : win_pages), cmd.cpages);

	for (off = 0; off < len; off += BIG_WINDOW) {
		ASSERT_EQ(-1, pat_find_bad(va + off, self->psz, 402, off));
		ASSERT_EQ(-1, pat_find_bad(va + off + self->psz,
					   BIG_WINDOW - self->psz, 401,
					   off + self->psz));
	}
	ASSERT_EQ(0, munmap(va, len));
}

/* ---------------------------------------------------------------------
 * The migration engine: device pages under mprotect and mremap, and
 * pages that a long-term pin keeps where they are.
 */

/*
 * mprotect() of pages in device memory downgrades the device entries
 * themselves: the device loses write access and keeps reading the data,
 * and after the range is writable again a CPU store reaches the device.
 */
TEST_F(dmirror, device_pages_mprotect)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	unsigned char local = dev_local(variant->coherent);
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 91, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	expect_snap(_metadata, self->fd, va, npages, 0, npages, local);

	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	expect_snap(_metadata, self->fd, va, npages, 0, npages,
		    (local & ~DEV_RW) | DEV_RO);
	pat_fill(dbuf, len, 92, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 91, 0));
	ASSERT_EQ(-1, pat_find_bad(va, len, 91, 0));

	ASSERT_EQ(0, mprotect(va, len, PROT_READ | PROT_WRITE));
	pat_fill(va, len, 93, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 93, 0));
	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
}

/*
 * mremap() moves the device entries with the rest of the page table:
 * the pages stay in device memory at the new address, nothing remains
 * at the old one, and the data comes home intact from the new address.
 */
TEST_F(dmirror, device_pages_mremap)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	unsigned char local = dev_local(variant->coherent);
	struct hmm_dmirror_cmd cmd;
	char *va, *to, *moved, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	to = anon_map(len, PROT_NONE, true);
	ASSERT_NE(NULL, va);
	ASSERT_NE(NULL, to);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 94, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));

	moved = mremap(va, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	ASSERT_EQ(to, moved);
	expect_snap(_metadata, self->fd, moved, npages, 0, npages, local);
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				       npages, &cmd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, moved, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 94, 0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, moved,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(moved, len, 94, 0));
	free(dbuf);
	ASSERT_EQ(0, munmap(moved, len));
}

static int gup_test_open(void)
{
	return open("/sys/kernel/debug/gup_test", O_RDWR | O_CLOEXEC);
}

/* Long-term pin [@va, @va + @len) for writing through gup_test. */
static int pin_longterm(int gup, char *va, size_t len)
{
	struct pin_longterm_test pin = {
		.addr = (uintptr_t)va,
		.size = len,
		.flags = PIN_LONGTERM_TEST_FLAG_USE_WRITE,
	};

	return ioctl(gup, PIN_LONGTERM_TEST_START, &pin) ? -errno : 0;
}

/* What the pinned pages hold, read through the pins into @buf. */
static int pin_read(int gup, void *buf)
{
	__u64 addr = (uintptr_t)buf;

	return ioctl(gup, PIN_LONGTERM_TEST_READ, &addr) ? -errno : 0;
}

/*
 * Migration leaves long-term pinned pages alone: the pin holder keeps
 * using the page it pinned, so moving the data away would split it in
 * two. Exactly the pinned pages stay in system memory, a CPU store to
 * them is still what the pin sees, and once unpinned they move too.
 */
TEST_F(dmirror, migrate_skips_pinned_pages)
{
	const unsigned long npages = 16, first = 4, npinned = 4;
	size_t psz = self->psz, len = npages * psz;
	unsigned char local = dev_local(variant->coherent);
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf, *pbuf;
	int gup;

	gup = gup_test_open();
	if (gup < 0)
		SKIP(return, "no gup_test in debugfs (CONFIG_GUP_TEST)");
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	pbuf = malloc(npinned * psz);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, pbuf);
	pat_fill(va, len, 95, 0);
	ASSERT_EQ(0, pin_longterm(gup, va + first * psz, npinned * psz));

	/* The device does not hold every page: ENOENT, as for any miss. */
	ASSERT_EQ(-ENOENT, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				       va, dbuf, npages, &cmd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 95, 0));
	expect_snap(_metadata, self->fd, va, npages, 0, first, local);
	expect_snap(_metadata, self->fd, va, npages, first, first + npinned,
		    DEV_RW);
	expect_snap(_metadata, self->fd, va, npages, first + npinned, npages,
		    local);

	pat_fill(va + first * psz, npinned * psz, 96, first * psz);
	ASSERT_EQ(0, pin_read(gup, pbuf));
	ASSERT_EQ(-1, pat_find_bad(pbuf, npinned * psz, 96, first * psz));

	ASSERT_EQ(0, ioctl(gup, PIN_LONGTERM_TEST_STOP));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	expect_snap(_metadata, self->fd, va, npages, 0, npages, local);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, first * psz, 95, 0));
	ASSERT_EQ(-1, pat_find_bad(va + first * psz, npinned * psz, 96,
				   first * psz));
	ASSERT_EQ(-1, pat_find_bad(va + (first + npinned) * psz,
				   (npages - first - npinned) * psz, 95,
				   (first + npinned) * psz));
	free(pbuf);
	free(dbuf);
	close(gup);
	ASSERT_EQ(0, munmap(va, len));
}

/*
 * A long-term pin never holds device memory: device-private pages fault
 * back to system memory and device-coherent pages are migrated out
 * before the pin is taken. The pin sees the data, and later CPU stores.
 */
TEST_F(dmirror, longterm_pin_leaves_device_memory)
{
	const unsigned long npages = 8;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf, *pbuf;
	int gup;

	gup = gup_test_open();
	if (gup < 0)
		SKIP(return, "no gup_test in debugfs (CONFIG_GUP_TEST)");
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	pbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, pbuf);
	pat_fill(va, len, 97, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	expect_snap(_metadata, self->fd, va, npages, 0, npages,
		    dev_local(variant->coherent));

	ASSERT_EQ(0, pin_longterm(gup, va, len));
	expect_snap(_metadata, self->fd, va, npages, 0, npages, DEV_RW);
	ASSERT_EQ(0, pin_read(gup, pbuf));
	ASSERT_EQ(-1, pat_find_bad(pbuf, len, 97, 0));
	pat_fill(va, len, 98, 0);
	ASSERT_EQ(0, pin_read(gup, pbuf));
	ASSERT_EQ(-1, pat_find_bad(pbuf, len, 98, 0));
	ASSERT_EQ(0, ioctl(gup, PIN_LONGTERM_TEST_STOP));
	free(pbuf);
	free(dbuf);
	close(gup);
	ASSERT_EQ(0, munmap(va, len));
}

/* ---------------------------------------------------------------------
 * Locking pages to device memory: HMM_DMIRROR_LOCK, UNLOCK, LOCK_QUERY.
 * Only device-private memory can be locked, so these cases use units 0
 * and 1 whatever the variant of the fixture above.
 */
#include <setjmp.h>
#include <signal.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>

/* VmPin of this process in kB (locked device pages count there), or -1. */
static long vmpin_kb(void)
{
	char line[128];
	long val = -1;
	FILE *f;

	f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "VmPin:", 6)) {
			val = strtol(line + 6, NULL, 10);
			break;
		}
	}
	fclose(f);
	return val;
}

/* Pages of [va, va + npages) that LOCK_QUERY reports locked, or -errno. */
static long locked_pages(int fd, void *va, unsigned long npages)
{
	struct hmm_dmirror_cmd cmd;
	unsigned char *st;
	unsigned long i;
	long n = 0;
	int ret;

	st = malloc(npages);
	if (!st)
		return -ENOMEM;
	ret = dmirror_req(fd, HMM_DMIRROR_LOCK_QUERY, va, st, npages, &cmd);
	for (i = 0; !ret && i < npages; i++)
		n += st[i] == 1;
	if (!ret && (cmd.cpages != npages || cmd.faults != (__u64)n))
		ret = -EPROTO;
	free(st);
	return ret ? ret : n;
}

/* Map @npages of pattern @seed and move them into @fd's device memory. */
static char *devlock_map_migrated(int fd, unsigned long npages,
				  size_t psz, __u32 seed)
{
	struct hmm_dmirror_cmd cmd;
	size_t len = npages * psz;
	char *va, *dbuf;
	int ret;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	if (!va)
		return NULL;
	dbuf = malloc(len);
	if (!dbuf)
		return NULL;
	pat_fill(va, len, seed, 0);
	ret = dmirror_req(fd, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf, npages,
			  &cmd);
	if (ret || cmd.cpages != npages ||
	    pat_find_bad(dbuf, len, seed, 0) != -1) {
		free(dbuf);
		munmap(va, len);
		return NULL;
	}
	free(dbuf);
	return va;
}

FIXTURE(devlock) {
	int fd;
	int peer_fd;
	size_t psz;
};

FIXTURE_SETUP(devlock)
{
	self->psz = sysconf(_SC_PAGESIZE);
	self->fd = dmirror_open(0);
	if (self->fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror0 absent (test_hmm not loaded)");
	ASSERT_LE(0, self->fd);
	self->peer_fd = dmirror_open(1);
	ASSERT_LE(0, self->peer_fd);
}

FIXTURE_TEARDOWN(devlock)
{
	close(self->peer_fd);
	close(self->fd);
}

/*
 * A locked page stays in device memory: CPU loads and stores get SIGBUS
 * at the faulting address, the device keeps working on the data, and
 * after UNLOCK a CPU access migrates the page back with the device's data.
 */
TEST_F(devlock, cpu_access_gets_sigbus)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	long pin0 = vmpin_kb();
	char *va, *dbuf;
	unsigned long i;

	ASSERT_LE(0, pin0);
	va = devlock_map_migrated(self->fd, npages, psz, 101);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, locked_pages(self->fd, va, npages));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(npages, locked_pages(self->fd, va, npages));
	ASSERT_EQ(pin0 + (long)(len >> 10), vmpin_kb());

	/* Locking again is a no-op and charges nothing more. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(pin0 + (long)(len >> 10), vmpin_kb());

	for (i = 0; i < npages; i += 5) {
		ASSERT_TRUE(cpu_read_sigbus(va + i * psz + 8));
		ASSERT_TRUE(cpu_write_sigbus(va + i * psz + psz - 8));
	}
	expect_snap(_metadata, self->fd, va, npages, 0, npages,
		    HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | DEV_RW);

	/* The device still reads and writes its memory. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 101, 0));
	pat_fill(dbuf, len, 102, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);

	/* Part of the range: the rest stays locked. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, va, NULL, 4,
				 &cmd));
	ASSERT_EQ(4, cmd.cpages);
	ASSERT_EQ(npages - 4, locked_pages(self->fd, va, npages));
	ASSERT_EQ(-1, pat_find_bad(va, 4 * psz, 102, 0));
	ASSERT_TRUE(cpu_read_sigbus(va + 4 * psz));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages - 4, cmd.cpages);
	ASSERT_EQ(pin0, vmpin_kb());
	ASSERT_EQ(0, locked_pages(self->fd, va, npages));
	ASSERT_EQ(-1, pat_find_bad(va, len, 102, 0));
	expect_snap(_metadata, self->fd, va, npages, 0, npages, DEV_RW);
	free(dbuf);
	munmap(va, len);
}

/*
 * Only pages already in the caller's device memory can be locked, and a
 * refused request locks nothing. A second device can neither lock,
 * migrate nor read the pages.
 */
TEST_F(devlock, refused_requests)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	long pin0 = vmpin_kb();
	char *va, *sys, *dbuf;
	int cfd;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	sys = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, sys);
	pat_fill(sys, len, 103, 0);
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_LOCK, sys, NULL,
				       npages, &cmd));

	/* Half in device memory: all or nothing. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, sys,
				 dbuf, npages / 2, &cmd));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_LOCK, sys, NULL,
				       npages, &cmd));
	ASSERT_EQ(0, locked_pages(self->fd, sys, npages));
	ASSERT_EQ(pin0, vmpin_kb());
	ASSERT_EQ(-1, pat_find_bad(sys, len, 103, 0));

	va = devlock_map_migrated(self->fd, npages, psz, 104);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(-EFAULT, dmirror_req(self->peer_fd, HMM_DMIRROR_LOCK, va,
				       NULL, npages, &cmd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));

	/* The peer's fault is refused like a CPU access: no data leaks. */
	memset(dbuf, 0, len);
	ASSERT_EQ(-EFAULT, dmirror_req(self->peer_fd, HMM_DMIRROR_READ, va,
				       dbuf, npages, &cmd));
	ASSERT_EQ(-1, zero_find_bad(dbuf, len));
	ASSERT_EQ(-ENOENT, dmirror_req(self->peer_fd,
				       HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				       npages, &cmd));
	ASSERT_EQ(npages, locked_pages(self->fd, va, npages));
	ASSERT_EQ(0, locked_pages(self->peer_fd, va, npages));

	/* Coherent memory is CPU addressable: nothing to lock there. */
	cfd = dmirror_open(2);
	if (cfd >= 0) {
		ASSERT_EQ(-EOPNOTSUPP, dmirror_req(cfd, HMM_DMIRROR_LOCK, va,
						   NULL, npages, &cmd));
		close(cfd);
	}

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 104, 0));
	ASSERT_EQ(pin0, vmpin_kb());
	free(dbuf);
}

/* Drop CAP_IPC_LOCK, which lifts the locked-memory limit, for good. */
static int drop_cap_ipc_lock(void)
{
	struct __user_cap_header_struct hdr = {
		.version = _LINUX_CAPABILITY_VERSION_3,
	};
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
	int i = CAP_TO_INDEX(CAP_IPC_LOCK);

	if (syscall(SYS_capget, &hdr, data))
		return -1;
	data[i].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
	data[i].permitted &= ~CAP_TO_MASK(CAP_IPC_LOCK);
	data[i].inheritable &= ~CAP_TO_MASK(CAP_IPC_LOCK);
	return syscall(SYS_capset, &hdr, data);
}

/*
 * Child of limit_is_enforced: with RLIMIT_MEMLOCK at 8 pages, locking 16
 * fails with ENOMEM and locks nothing, 8 fit, and munmap of locked pages
 * gives their charge back.
 */
static int devlock_limit_child(void *arg)
{
	const unsigned long npages = 16;
	size_t psz = sysconf(_SC_PAGESIZE), len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	struct rlimit rl;
	long pin0;
	char *va;
	int fd;

	if (drop_cap_ipc_lock())
		return 10;
	pin0 = vmpin_kb();
	if (pin0 < 0)
		return 11;
	rl.rlim_cur = pin0 * 1024 + npages / 2 * psz;
	rl.rlim_max = rl.rlim_cur;
	if (setrlimit(RLIMIT_MEMLOCK, &rl))
		return 12;
	fd = dmirror_open(0);
	if (fd < 0)
		return 13;
	va = devlock_map_migrated(fd, npages, psz, 105);
	if (!va)
		return 14;

	if (dmirror_req(fd, HMM_DMIRROR_LOCK, va, NULL, npages, &cmd) !=
	    -ENOMEM)
		return 15;
	if (locked_pages(fd, va, npages) != 0 || vmpin_kb() != pin0)
		return 16;
	if (dmirror_req(fd, HMM_DMIRROR_LOCK, va, NULL, npages / 2, &cmd))
		return 17;
	if (dmirror_req(fd, HMM_DMIRROR_LOCK, va + len / 2, NULL, 1, &cmd) !=
	    -ENOMEM)
		return 18;
	if (!cpu_read_sigbus(va) || !cpu_read_sigbus(va + len / 2 - 8))
		return 19;
	if (pat_find_bad(va + len / 2, len / 2, 105, len / 2) != -1)
		return 20;

	/* munmap frees the pages: the charge is back and can be reused. */
	if (munmap(va, len) || vmpin_kb() != pin0)
		return 21;
	va = devlock_map_migrated(fd, npages / 2, psz, 106);
	if (!va)
		return 22;
	if (dmirror_req(fd, HMM_DMIRROR_LOCK, va, NULL, npages / 2, &cmd))
		return 23;
	if (dmirror_req(fd, HMM_DMIRROR_UNLOCK, va, NULL, npages / 2, &cmd) ||
	    cmd.cpages != npages / 2)
		return 24;
	if (pat_find_bad(va, len / 2, 106, 0) != -1)
		return 25;
	close(fd);
	return 0;
}

TEST_F(devlock, limit_is_enforced)
{
	ASSERT_EQ(0, in_child(devlock_limit_child, NULL));
}

struct devlock_fork_job {
	char *va;
	size_t len;
	size_t psz;
};

/* The fork child shares the locked pages but must never get their data. */
static int devlock_fork_child(void *arg)
{
	struct devlock_fork_job *job = arg;
	unsigned long npages = job->len / job->psz;
	struct hmm_dmirror_cmd cmd;
	size_t off;
	int fd;

	for (off = 0; off < job->len; off += job->psz) {
		if (!cpu_read_sigbus(job->va + off))
			return 30;
		if (!cpu_write_sigbus(job->va + off + 64))
			return 31;
	}
	fd = dmirror_open(0);
	if (fd < 0)
		return 32;
	/* The lock is the parent's: the child can neither take nor drop it. */
	if (dmirror_req(fd, HMM_DMIRROR_LOCK, job->va, NULL, npages, &cmd) !=
	    -EBUSY)
		return 33;
	if (dmirror_req(fd, HMM_DMIRROR_UNLOCK, job->va, NULL, npages,
			&cmd) != -EPERM)
		return 34;
	if (locked_pages(fd, job->va, npages) != (long)npages)
		return 35;
	close(fd);
	return 0;
}

/* After unlock the child sees the data it shared at fork time. */
static int devlock_fork_child_after(void *arg)
{
	struct devlock_fork_job *job = arg;

	return pat_find_bad(job->va, job->len, 107, 0) == -1 ? 0 : 36;
}

TEST_F(devlock, fork_child_gets_sigbus)
{
	const unsigned long npages = 8;
	struct devlock_fork_job job = {
		.psz = self->psz,
		.len = npages * self->psz,
	};
	struct hmm_dmirror_cmd cmd;

	job.va = devlock_map_migrated(self->fd, npages, self->psz, 107);
	ASSERT_NE(NULL, job.va);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, job.va, NULL,
				 npages, &cmd));
	ASSERT_EQ(0, in_child(devlock_fork_child, &job));

	/* Still locked for the parent, which also gets SIGBUS. */
	ASSERT_EQ(npages, locked_pages(self->fd, job.va, npages));
	ASSERT_TRUE(cpu_read_sigbus(job.va + self->psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, job.va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, in_child(devlock_fork_child_after, &job));
	ASSERT_EQ(-1, pat_find_bad(job.va, job.len, 107, 0));
}

/* mremap moves the entries, and the lock moves with the pages. */
TEST_F(devlock, follows_mremap)
{
	const unsigned long npages = 8;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	long pin0 = vmpin_kb();
	char *va, *dst, *nva;

	va = devlock_map_migrated(self->fd, npages, psz, 108);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));
	dst = anon_map(len, PROT_NONE, true);
	ASSERT_NE(NULL, dst);
	nva = mremap(va, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_EQ(dst, nva);

	ASSERT_EQ(npages, locked_pages(self->fd, nva, npages));
	ASSERT_TRUE(cpu_read_sigbus(nva + 3 * psz + 16));
	ASSERT_EQ(pin0 + (long)(len >> 10), vmpin_kb());
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, nva, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(nva, len, 108, 0));
	ASSERT_EQ(pin0, vmpin_kb());
	munmap(nva, len);
}

/*
 * mprotect changes what the mapping allows, not where the page lives:
 * the lock stays, and even a read-only mapping gets SIGBUS on a load.
 */
TEST_F(devlock, survives_mprotect)
{
	const unsigned long npages = 8;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *va;

	va = devlock_map_migrated(self->fd, npages, psz, 109);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_EQ(npages, locked_pages(self->fd, va, npages));
	ASSERT_TRUE(cpu_read_sigbus(va + 2 * psz));
	ASSERT_EQ(0, mprotect(va, len, PROT_READ | PROT_WRITE));
	ASSERT_TRUE(cpu_write_sigbus(va + 5 * psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 109, 0));
	munmap(va, len);
}

/*
 * The device giving its memory back (RELEASE, as on driver unload)
 * force-drops the locks: the data comes back to system memory intact.
 */
TEST_F(devlock, release_forces_back)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	long pin0 = vmpin_kb();
	char *va, *dbuf;

	va = devlock_map_migrated(self->fd, npages, psz, 110);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));
	pat_fill(dbuf, len, 111, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_RELEASE, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(pin0, vmpin_kb());
	ASSERT_EQ(0, locked_pages(self->fd, va, npages));
	expect_snap(_metadata, self->fd, va, npages, 0, npages, DEV_RW);
	ASSERT_EQ(-1, pat_find_bad(va, len, 111, 0));
	free(dbuf);
	munmap(va, len);
}

/* Closing the device file evicts its pages, and their locks with them. */
TEST_F(devlock, close_drops_locks)
{
	const unsigned long npages = 8;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	long pin0 = vmpin_kb();
	int fd = dmirror_open(0);
	char *va;

	ASSERT_LE(0, fd);
	va = devlock_map_migrated(fd, npages, psz, 112);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_LOCK, va, NULL, npages,
				 &cmd));
	ASSERT_EQ(pin0 + (long)(len >> 10), vmpin_kb());
	ASSERT_EQ(0, close(fd));
	ASSERT_EQ(pin0, vmpin_kb());
	ASSERT_EQ(-1, pat_find_bad(va, len, 112, 0));
	munmap(va, len);
}

/* ---------------------------------------------------------------------
 * Exclusive access on huge pages and shmem, whatever the THP mode.
 */

/*
 * No madvise: with THP "always" the buffer is THP-backed (checked in its
 * own smaps entry), with "madvise" it is not; EXCLUSIVE must work the same,
 * page by page, either way.
 */
TEST_F(dmirror, exclusive_thp_unadvised)
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
TEST_F(dmirror, exclusive_thp_fork)
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
TEST_F(dmirror, exclusive_thp_mprotect_munmap)
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
TEST_F(dmirror, exclusive_two_devices)
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

/*
 * memfd (shmem) buffer mapped twice: the grant removes both CPU
 * mappings, an access through either revokes it, data is shared.
 */
TEST_F(dmirror, exclusive_shmem)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *alias, *dbuf;
	int mfd;

	mfd = memfd_create("hmm-tests-excl", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ASSERT_NE(MAP_FAILED, va);
	alias = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ASSERT_NE(MAP_FAILED, alias);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 127, 0);
	ASSERT_EQ(-1, pat_find_bad(alias, len, 127, 0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 127, 0));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, npages));

	/* A load through the other mapping revokes that page. */
	ASSERT_EQ(-1, pat_find_bad(alias + 3 * psz, psz, 127, 3 * psz));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 3, 4));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, 3));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 4, npages));

	/* The device writes, the CPU and the file see it. */
	pat_fill(dbuf, len, 128, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, file_find_bad(mfd, len, 128));
	ASSERT_EQ(-1, pat_find_bad(alias, len, 128, 0));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 0, npages));

	/* Exclusive again, then unmapped and truncated while exclusive. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, munmap(alias, len));
	ASSERT_EQ(0, munmap(va, len / 2));
	ASSERT_EQ(-EPERM, excl_state(self->fd, va, psz, npages / 2, npages));
	ASSERT_EQ(-1, file_find_bad(mfd, len, 128));
	ASSERT_EQ(0, ftruncate(mfd, len / 2));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, npages / 2, npages));
	ASSERT_EQ(0, munmap(va + len / 2, len / 2));
	close(mfd);
	free(dbuf);
}

#include <linux/userfaultfd.h>

/* Reads the fork event of a userfaultfd and closes the child's copy. */
static void *uffd_fork_reader(void *arg)
{
	int *uffd = arg;
	struct uffd_msg msg;
	ssize_t n;

	do {
		n = read(*uffd, &msg, sizeof(msg));
	} while (n < 0 && errno == EINTR);
	if (n != sizeof(msg) || msg.event != UFFD_EVENT_FORK)
		return (void *)-1L;
	close(msg.arg.fork.ufd);
	return NULL;
}

/*
 * fork() copies the page table of a shared mapping only when userfaultfd
 * write protection with the fork event is on it.  The copy must leave the
 * device's exclusive access alone: a CPU write through the parent's
 * mapping afterwards has to end it, as without the fork, and the device,
 * the CPU and the file must see the same bytes after.
 */
TEST_F(dmirror, exclusive_shmem_uffd_fork)
{
	const unsigned long npages = 4;
	size_t psz = self->psz, len = npages * psz;
	struct uffdio_register reg = { 0 };
	struct uffdio_api api = { 0 };
	struct hmm_dmirror_cmd cmd;
	pthread_t reader;
	void *reader_ret;
	char *va, *dbuf;
	int mfd, uffd, status;
	pid_t pid;

	if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK))
		SKIP(return, "no userfaultfd in this kernel");
	uffd = syscall(__NR_userfaultfd, O_CLOEXEC);
	ASSERT_LE(0, uffd);
	api.api = UFFD_API;
	api.features = UFFD_FEATURE_EVENT_FORK |
		       UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
	ASSERT_EQ(0, ioctl(uffd, UFFDIO_API, &api));

	mfd = memfd_create("hmm-tests-excl-uffd", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ASSERT_NE(MAP_FAILED, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 131, 0);
	reg.range.start = (uintptr_t)va;
	reg.range.len = len;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	ASSERT_EQ(0, ioctl(uffd, UFFDIO_REGISTER, &reg));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 131, 0));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, npages));

	/* fork() waits until the fork event is read. */
	ASSERT_EQ(0, pthread_create(&reader, NULL, uffd_fork_reader, &uffd));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(pat_find_bad(va, len, 131, 0) == -1 ? 0 : 1);
	ASSERT_EQ(0, pthread_join(reader, &reader_ret));
	ASSERT_EQ(NULL, reader_ret);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));

	/* The parent's CPU write ends the exclusivity of that page. */
	pat_fill(va + psz, psz, 132, psz);
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 1, 2));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, 1));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 2, npages));

	/* The device reads what the CPU wrote, the CPU what it writes. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, psz, 131, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + psz, psz, 132, psz));
	ASSERT_EQ(-1, pat_find_bad(dbuf + 2 * psz, len - 2 * psz, 131,
				   2 * psz));
	pat_fill(dbuf, len, 133, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 133, 0));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 0, npages));
	ASSERT_EQ(-1, file_find_bad(mfd, len, 133));

	close(uffd);
	munmap(va, len);
	close(mfd);
	free(dbuf);
}

#define SHMEM_THP "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

/*
 * A huge shmem folio is split like an anonymous THP.  shmem THP is made
 * available for the fill only ("advise" + MADV_HUGEPAGE), then put back.
 */
TEST_F(dmirror, exclusive_shmem_thp)
{
	size_t psz = self->psz, len = read_pmd_pagesize();
	unsigned long npages = len / psz;
	long before = meminfo_kb("ShmemHugePages");
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	bool advised;
	int mfd;

	if (access(SHMEM_THP, W_OK))
		SKIP(return, "no shmem THP control");
	advised = thp_read_string("shmem_enabled", shmem_enabled_names) ==
		  SHMEM_ADVISE;
	if (!advised)
		ASSERT_EQ(0, write_str(SHMEM_THP, "advise"));
	mfd = memfd_create("hmm-tests-excl-thp", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	va = mmap(NULL, 2 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		  0);
	ASSERT_NE(MAP_FAILED, va);
	va = (char *)(((uintptr_t)va + len - 1) & ~(uintptr_t)(len - 1));
	va = mmap(va, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		  mfd, 0);
	ASSERT_NE(MAP_FAILED, va);
	ASSERT_EQ(0, madvise(va, len, MADV_HUGEPAGE));
	pat_fill(va, len, 129, 0);
	if (!advised)
		ASSERT_EQ(0, write_str(SHMEM_THP, "never"));
	if (meminfo_kb("ShmemHugePages") - before < (long)(len >> 10)) {
		munmap(va, len);
		close(mfd);
		SKIP(return, "no huge shmem page available");
	}
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_EXCLUSIVE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 129, 0));
	ASSERT_TRUE(excl_all(self->fd, va, psz, 0, npages));
	ASSERT_EQ(-1, pat_find_bad(va, len, 129, 0));
	ASSERT_EQ(0, excl_state(self->fd, va, psz, 0, npages));
	ASSERT_EQ(-1, file_find_bad(mfd, len, 129));
	munmap(va, len);
	close(mfd);
	free(dbuf);
}

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

FIXTURE_VARIANT_ADD(hmm_dma, private_mem) {
	.unit = 0,
	.peer = 1,
	.coherent = false,
};

FIXTURE_VARIANT_ADD(hmm_dma, coherent_mem) {
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

/* ---------------------------------------------------------------------
 * Pages of shmem/tmpfs files in device memory.
 *
 * MIGRATE_TO_DEV takes the page cache pages of a shmem file, mapped or
 * not, into device memory. Device-private pages then live in the page
 * cache as device-private entries, in no page table: any CPU access, from
 * any mapping or through the file descriptor, copies them back, and
 * truncation frees them. Device-coherent pages replace the page cache
 * folio and the CPU uses them where they are. Each case below checks the
 * data on the side that did not write it, and checks that the pages did
 * reach the device (SNAPSHOT, devmem_used), so that it fails if the
 * feature is gone.
 */
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/shm.h>
#include <sys/swap.h>
#include <sys/sysmacros.h>
#include <time.h>

#define SHM_CHUNK	SZ_1M	/* read()/write() buffer of the big cases */

/*
 * Write pattern @seed into [@off, @off + @len) of @fd with pwrite() in
 * chunks, so that the pages are created without ever being mapped.
 */
static int shm_pwrite_pattern(int fd, size_t off, size_t len, __u32 seed)
{
	size_t n, done;
	char *buf;
	int ret = 0;

	buf = malloc(SHM_CHUNK);
	if (!buf)
		return -ENOMEM;
	for (done = 0; done < len; done += n) {
		n = len - done < SHM_CHUNK ? len - done : SHM_CHUNK;
		pat_fill(buf, n, seed, off + done);
		if (pwrite(fd, buf, n, off + done) != (ssize_t)n) {
			ret = -EIO;
			break;
		}
	}
	free(buf);
	return ret;
}

/*
 * Check [@off, @off + @len) of @fd with pread() in chunks: pattern @seed,
 * or zeros for @seed 0 (no case here uses 0 as a pattern). Returns the
 * file offset of the first wrong word, -1 if all match, -2 on a short read.
 */
static long shm_pread_check(int fd, size_t off, size_t len, __u32 seed)
{
	size_t n, done;
	long bad = -1;
	char *buf;

	buf = malloc(SHM_CHUNK);
	if (!buf)
		return -2;
	for (done = 0; done < len && bad == -1; done += n) {
		n = len - done < SHM_CHUNK ? len - done : SHM_CHUNK;
		if (pread(fd, buf, n, off + done) != (ssize_t)n) {
			bad = -2;
			break;
		}
		bad = seed ? pat_find_bad(buf, n, seed, off + done) :
			     zero_find_bad(buf, n);
		if (bad >= 0)
			bad += off + done;
	}
	free(buf);
	return bad;
}

/* A memfd of @len bytes holding pattern @seed, written with pwrite(). */
static int shm_memfd_pattern(size_t len, __u32 seed)
{
	int fd = memfd_create("hmm-tests-shmem", MFD_CLOEXEC);

	if (fd < 0)
		return -1;
	if (ftruncate(fd, len) || shm_pwrite_pattern(fd, 0, len, seed)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Read-write mapping of the first @len bytes of @fd, or NULL. */
static char *shm_map(int fd, size_t len, int flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);

	return p == MAP_FAILED ? NULL : p;
}

/*
 * What SNAPSHOT on the owning device shows for a migrated shmem page: a
 * device-private page is reported from its page cache entry, writable for
 * a shared writable mapping only; a device-coherent page once a CPU
 * access has mapped it.
 */
static unsigned char shm_dev_state(bool coherent, bool writable)
{
	return (coherent ? HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
			   HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL) |
	       (writable ? DEV_RW : DEV_RO);
}

/* Expect SNAPSHOT on @fd to report @want for each of @npages at @va. */
static void shm_expect_snap(struct __test_metadata *_metadata, int fd,
			    char *va, unsigned long npages,
			    unsigned char want)
{
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	unsigned long i;

	snap = malloc(npages);
	ASSERT_NE(NULL, snap);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_SNAPSHOT, va, snap, npages,
				 &cmd));
	for (i = 0; i < npages; i++) {
		if (snap[i] != want)
			TH_LOG("page %lu of %lu: state 0x%x, expected 0x%x", i,
			       npages, snap[i], want);
		ASSERT_EQ(want, snap[i]);
	}
	free(snap);
}

/*
 * The CPU reads every page of [@va, @va + @len) through a mapping: that
 * brings device-private pages back and maps device-coherent ones. Returns
 * the sum of the first words, so the loads cannot be dropped.
 */
static __u64 shm_touch(const char *va, size_t len, size_t psz)
{
	__u64 sum = 0;
	size_t off;

	for (off = 0; off < len; off += psz)
		sum += __atomic_load_n((const __u64 *)(va + off),
				       __ATOMIC_RELAXED);
	return sum;
}

/*
 * A memfd range goes to the device and back. There the device rewrites
 * it without faulting, and read() and the mapping see the new data. Pages
 * read() touches come back from device-private memory, the rest
 * MIGRATE_TO_SYS brings back; device-coherent pages are used in place.
 */
TEST_F(dmirror, shmem_migrate_round_trip)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz, half = len / 2;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd;

	mfd = memfd_create("hmm-tests-shmem", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 201, 0);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 201, 0));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	/* Coherent pages are mapped by the CPU where they are. */
	if (coh)
		shm_touch(va, len, self->psz);
	shm_expect_snap(_metadata, self->fd, va, npages,
			shm_dev_state(coh, true));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));

	pat_fill(dbuf, len, 202, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));

	ASSERT_EQ(-1, shm_pread_check(mfd, 0, half, 202));
	ASSERT_EQ(used0 + npages - (coh ? 0 : npages / 2),
		  devmem_used(self->fd));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(coh ? npages : npages / 2, cmd.cpages);
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 202, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 202));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * Pages written with write() and never mapped are found through the page
 * cache and migrate; a hole of the file has no page and stays a hole.
 */
TEST_F(dmirror, shmem_write_only_pages)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz, half = len / 2;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	struct stat st0, st1;
	char *va, *dbuf;
	long used0;
	int mfd;

	/* Only the first half is written; the second half is a hole. */
	mfd = memfd_create("hmm-tests-shmem", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	ASSERT_EQ(0, shm_pwrite_pattern(mfd, 0, half, 211));
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	ASSERT_EQ(0, fstat(mfd, &st0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages / 2, &cmd));
	ASSERT_EQ(npages / 2, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, half, 211, 0));
	ASSERT_EQ(used0 + npages / 2, devmem_used(self->fd));
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, npages / 2,
				shm_dev_state(false, true));

	/*
	 * Nothing to move in the hole: no device page is used, the device
	 * gets no mapping there, and the file allocates no block.
	 */
	ASSERT_EQ(-ENOENT, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				       va + half, dbuf, npages / 2, &cmd));
	ASSERT_EQ(used0 + npages / 2, devmem_used(self->fd));
	ASSERT_EQ(0, fstat(mfd, &st1));
	ASSERT_EQ(st0.st_blocks, st1.st_blocks);

	/* Device-private pages come back through read() alone. */
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, half, 211));
	ASSERT_EQ(-1, shm_pread_check(mfd, half, half, 0));
	ASSERT_EQ(used0 + (coh ? npages / 2 : 0), devmem_used(self->fd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages / 2, &cmd));
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(-1, pat_find_bad(va, half, 211, 0));
	ASSERT_EQ(-1, zero_find_bad(va + half, half));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/* One byte over a pipe, to sequence two processes. */
static int shm_post(int fd, char c)
{
	return write(fd, &c, 1) == 1 ? 0 : -1;
}

static char shm_wait(int fd)
{
	char c;

	return read(fd, &c, 1) == 1 ? c : 0;
}

struct shm_peer {
	int mfd;
	size_t len;
	int go;		/* read end: the parent says go */
	int done;	/* write end: 'y' when all checks held, else 'n' */
};

/*
 * The other process of shmem_two_processes, with a mapping of its own
 * made before the migration: it checks the parent's pattern 221, writes
 * 222 over the second half, then checks the device's pattern 223.
 */
static int shm_peer_run(struct shm_peer *peer)
{
	size_t half = peer->len / 2;
	bool ok;
	char *va;

	va = shm_map(peer->mfd, peer->len, MAP_SHARED);
	if (!va || shm_post(peer->done, 'm'))
		return 1;

	if (shm_wait(peer->go) != 'g')
		return 2;
	ok = pat_find_bad(va, peer->len, 221, 0) == -1;
	pat_fill(va + half, half, 222, half);
	if (shm_post(peer->done, ok ? 'y' : 'n'))
		return 3;

	if (shm_wait(peer->go) != 'g')
		return 4;
	ok = pat_find_bad(va, peer->len, 223, 0) == -1;
	if (shm_post(peer->done, ok ? 'y' : 'n'))
		return 5;
	return ok ? 0 : 6;
}

/*
 * Two processes share a memfd, each with its own mapping. What the parent
 * moved to the device the child reads and writes through its mapping,
 * and what the device then reads is the child's data; what the device
 * writes the child reads.
 */
TEST_F(dmirror, shmem_two_processes)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz, half = len / 2;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	int go[2], done[2], status;
	struct shm_peer peer;
	char *va, *dbuf;
	long used0;
	pid_t pid;

	peer.mfd = shm_memfd_pattern(len, 221);
	ASSERT_LE(0, peer.mfd);
	peer.len = len;
	va = shm_map(peer.mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(done));
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		/* The child must see EOF if the parent dies. */
		close(go[1]);
		close(done[0]);
		peer.go = go[0];
		peer.done = done[1];
		_exit(shm_peer_run(&peer));
	}
	close(go[0]);
	close(done[1]);
	ASSERT_EQ('m', shm_wait(done[0]));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 221, 0));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, npages,
				shm_dev_state(false, true));

	ASSERT_EQ(0, shm_post(go[1], 'g'));
	ASSERT_EQ('y', shm_wait(done[0]));
	/* The child's faults brought device-private pages back. */
	ASSERT_EQ(used0 + (coh ? npages : 0), devmem_used(self->fd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, half, 221, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + half, half, 222, half));

	/* Again to the device, where the device writes for the child. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	pat_fill(dbuf, len, 223, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, shm_post(go[1], 'g'));
	ASSERT_EQ('y', shm_wait(done[0]));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	ASSERT_EQ(-1, shm_pread_check(peer.mfd, 0, len, 223));

	close(go[1]);
	close(done[0]);
	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(peer.mfd);
}

/*
 * pwrite() into a range that is in device memory: the device then reads
 * the new bytes where they were written and its own data around them,
 * down to a few bytes written into the middle of a page.
 */
TEST_F(dmirror, shmem_fd_write_while_on_device)
{
	const unsigned long npages = 32;
	size_t psz = self->psz, len = npages * psz;
	size_t woff = npages / 4 * psz, wlen = npages / 4 * psz;
	size_t boff = (npages - 1) * psz + psz / 2, blen = 64;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd;

	mfd = shm_memfd_pattern(len, 231);
	ASSERT_LE(0, mfd);
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, npages,
				shm_dev_state(false, true));

	/* Whole pages, and 64 bytes in the middle of the last page. */
	ASSERT_EQ(0, shm_pwrite_pattern(mfd, woff, wlen, 232));
	ASSERT_EQ(0, shm_pwrite_pattern(mfd, boff, blen, 232));
	ASSERT_EQ(used0 + npages - (coh ? 0 : npages / 4 + 1),
		  devmem_used(self->fd));

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, woff, 231, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + woff, wlen, 232, woff));
	ASSERT_EQ(-1, pat_find_bad(dbuf + woff + wlen, boff - woff - wlen,
				   231, woff + wlen));
	ASSERT_EQ(-1, pat_find_bad(dbuf + boff, blen, 232, boff));
	ASSERT_EQ(-1, pat_find_bad(dbuf + boff + blen, len - boff - blen,
				   231, boff + blen));
	/* The pages not written are still on the device. */
	ASSERT_EQ(used0 + npages - (coh ? 0 : npages / 4 + 1),
		  devmem_used(self->fd));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/* Migrate all of a fresh memfd of @npages filled with @seed, mapped at *@va. */
static int shm_memfd_on_device(struct __test_metadata *_metadata, int dev,
			       unsigned long npages, size_t psz, __u32 seed,
			       char **va)
{
	size_t len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *dbuf;
	int mfd;

	mfd = shm_memfd_pattern(len, seed);
	if (mfd < 0)
		return -1;
	*va = shm_map(mfd, len, MAP_SHARED);
	dbuf = malloc(len);
	if (!*va || !dbuf ||
	    dmirror_req(dev, HMM_DMIRROR_MIGRATE_TO_DEV, *va, dbuf, npages,
			&cmd) || cmd.cpages != npages ||
	    pat_find_bad(dbuf, len, seed, 0) != -1) {
		TH_LOG("cannot move a memfd of %lu pages to the device",
		       npages);
		free(dbuf);
		close(mfd);
		return -1;
	}
	free(dbuf);
	return mfd;
}

/*
 * Truncating a file frees the pages it drops from device memory. Past the
 * new end of file the mapping gives SIGBUS and the device gets an error;
 * extending the file again reads zeros there, and the part kept is intact.
 */
TEST_F(dmirror, shmem_truncate_on_device)
{
	const unsigned long npages = 32;
	size_t psz = self->psz, len = npages * psz, half = len / 2;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd;

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	mfd = shm_memfd_on_device(_metadata, self->fd, npages, psz, 241, &va);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, ftruncate(mfd, half));
	ASSERT_EQ(used0 + npages / 2, devmem_used(self->fd));
	ASSERT_TRUE(cpu_read_sigbus(va + half));
	ASSERT_TRUE(cpu_write_sigbus(va + len - 8));
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ, va + half,
				       dbuf, npages / 2, &cmd));

	/* The first half is still on the device, intact. */
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, npages / 2,
				shm_dev_state(false, true));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages / 2, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, half, 241, 0));

	ASSERT_EQ(0, ftruncate(mfd, len));
	ASSERT_EQ(-1, zero_find_bad(va + half, half));
	ASSERT_EQ(-1, shm_pread_check(mfd, half, half, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, half, 241));
	ASSERT_EQ(-1, pat_find_bad(va, half, 241, 0));
	ASSERT_EQ(used0 + (coh ? npages / 2 : 0), devmem_used(self->fd));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * Punching a hole frees the device pages in it; the hole reads zeros from
 * the device, the mapping and read(), and the pages around it keep their
 * data on the device.
 */
TEST_F(dmirror, shmem_punch_hole_on_device)
{
	const unsigned long npages = 32;
	size_t psz = self->psz, len = npages * psz;
	size_t hoff = npages / 4 * psz, hlen = len / 2;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd;

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	mfd = shm_memfd_on_device(_metadata, self->fd, npages, psz, 251, &va);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, fallocate(mfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			       hoff, hlen));
	ASSERT_EQ(used0 + npages / 2, devmem_used(self->fd));
	if (!coh) {
		shm_expect_snap(_metadata, self->fd, va, npages / 4,
				shm_dev_state(false, true));
		shm_expect_snap(_metadata, self->fd, va + hoff + hlen,
				npages / 4, shm_dev_state(false, true));
	}

	memset(dbuf, 0xff, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, hoff, 251, 0));
	ASSERT_EQ(-1, zero_find_bad(dbuf + hoff, hlen));
	ASSERT_EQ(-1, pat_find_bad(dbuf + hoff + hlen, len - hoff - hlen, 251,
				   hoff + hlen));
	ASSERT_EQ(used0 + npages / 2, devmem_used(self->fd));

	ASSERT_EQ(-1, shm_pread_check(mfd, 0, hoff, 251));
	ASSERT_EQ(-1, shm_pread_check(mfd, hoff, hlen, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, hoff + hlen, len - hoff - hlen,
				      251));
	ASSERT_EQ(-1, pat_find_bad(va, hoff, 251, 0));
	ASSERT_EQ(-1, zero_find_bad(va + hoff, hlen));
	ASSERT_EQ(-1, pat_find_bad(va + hoff + hlen, len - hoff - hlen, 251,
				   hoff + hlen));
	ASSERT_EQ(used0 + (coh ? npages / 2 : 0), devmem_used(self->fd));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

struct shm_fork_job {
	char *va;
	size_t len;
};

/* Child of shmem_fork_shared_on_device: check 261, write 262 at the end. */
static int shm_fork_child(void *arg)
{
	struct shm_fork_job *job = arg;
	size_t half = job->len / 2;

	if (pat_find_bad(job->va, job->len, 261, 0) != -1)
		return 1;
	pat_fill(job->va + half, half, 262, half);
	return 0;
}

/*
 * A shared mapping inherited over fork() while its pages are in device
 * memory: the child reads them and its writes reach the parent's device
 * and the parent's mapping.
 */
TEST_F(dmirror, shmem_fork_shared_on_device)
{
	const unsigned long npages = 32;
	size_t psz = self->psz, len = npages * psz, half = len / 2;
	bool coh = variant->coherent;
	struct shm_fork_job job;
	struct hmm_dmirror_cmd cmd;
	char *dbuf;
	long used0;
	int mfd;

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	mfd = shm_memfd_on_device(_metadata, self->fd, npages, psz, 261,
				  &job.va);
	ASSERT_LE(0, mfd);
	job.len = len;
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	if (!coh)
		shm_expect_snap(_metadata, self->fd, job.va, npages,
				shm_dev_state(false, true));

	ASSERT_EQ(0, in_child(shm_fork_child, &job));
	ASSERT_EQ(used0 + (coh ? npages : 0), devmem_used(self->fd));

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, half, 261, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + half, half, 262, half));
	ASSERT_EQ(-1, pat_find_bad(job.va, half, 261, 0));
	ASSERT_EQ(-1, pat_find_bad(job.va + half, half, 262, half));

	free(dbuf);
	ASSERT_EQ(0, munmap(job.va, len));
	close(mfd);
}

/*
 * A private mapping of a memfd: its file pages reach the device read-only.
 * A device write then copies them on write into the mapping, which shows
 * the device's data, while the file keeps its own.
 */
TEST_F(dmirror, shmem_private_mapping)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd;

	mfd = shm_memfd_pattern(len, 271);
	ASSERT_LE(0, mfd);
	va = shm_map(mfd, len, MAP_PRIVATE);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 271, 0));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, npages,
				shm_dev_state(false, false));

	pat_fill(dbuf, len, 272, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	/* Anonymous copies in system memory, writable by the device. */
	shm_expect_snap(_metadata, self->fd, va, npages, DEV_RW);
	ASSERT_EQ(-1, pat_find_bad(va, len, 272, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 271));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * Two mappings of one memfd; the pages go to the device through the first,
 * which is then unmapped. The pages stay on the device (they belong to the
 * file, not to the mapping) and the second mapping reads them all.
 */
TEST_F(dmirror, shmem_munmap_one_mapping)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *a, *b, *dbuf;
	long used0;
	int mfd;

	mfd = memfd_create("hmm-tests-shmem", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	a = shm_map(mfd, len, MAP_SHARED);
	b = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, a);
	ASSERT_NE(NULL, b);
	pat_fill(a, len, 281, 0);
	ASSERT_EQ(-1, pat_find_bad(b, len, 281, 0));
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, a,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 281, 0));
	ASSERT_EQ(0, munmap(a, len));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	/* The device finds them through the other mapping too. */
	if (!coh)
		shm_expect_snap(_metadata, self->fd, b, npages,
				shm_dev_state(false, true));

	ASSERT_EQ(-1, pat_find_bad(b, len, 281, 0));
	ASSERT_EQ(used0 + (coh ? npages : 0), devmem_used(self->fd));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 281));

	free(dbuf);
	ASSERT_EQ(0, munmap(b, len));
	close(mfd);
}

/*
 * A 256 MiB memfd (192 MiB on a coherent device, which has 256 MiB in
 * all) moves to the device 1 MiB per request, each request's data checked
 * on arrival. All of it comes back through read() and is checked; then it
 * moves again and comes back through CPU faults on the mapping.
 */
TEST_F_TIMEOUT(dmirror, shmem_large_file, 900)
{
	size_t len = (variant->coherent ? 192 : 256) * SZ_1M;
	unsigned long npages = len / self->psz;
	unsigned long bpages = SHM_CHUNK / self->psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0, bad;
	size_t off;
	int pass, try, mfd, ret;

	mfd = shm_memfd_pattern(len, 291);
	ASSERT_LE(0, mfd);
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	dbuf = malloc(SHM_CHUNK);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	for (pass = 0; pass < 2; pass++) {
		for (off = 0; off < len; off += SHM_CHUNK) {
			/*
			 * Migration is best effort: a page someone else holds
			 * for a moment stays behind (seen: one of a batch, on
			 * the second pass), and a driver asks again.
			 */
			for (try = 0; try < 3; try++) {
				ret = dmirror_req(self->fd,
						  HMM_DMIRROR_MIGRATE_TO_DEV,
						  va + off, dbuf, bpages, &cmd);
				if (!ret)
					break;
				TH_LOG("pass %d, offset %zu, try %d: %s", pass,
				       off, try, strerror(-ret));
			}
			ASSERT_EQ(0, ret);
			ASSERT_EQ(bpages, cmd.cpages);
			ASSERT_EQ(-1, pat_find_bad(dbuf, SHM_CHUNK, 291, off));
		}
		ASSERT_EQ(used0 + npages, devmem_used(self->fd));
		/* Back by read() first, then by faults on the mapping. */
		bad = pass ? pat_find_bad(va, len, 291, 0) :
			     shm_pread_check(mfd, 0, len, 291);
		ASSERT_EQ(-1, bad);
		ASSERT_EQ(used0 + (coh ? npages : 0),
			  devmem_used(self->fd));
	}
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 291));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * Map (@flags: MAP_SHARED or MAP_PRIVATE) @len bytes of a new file in
 * directory @dir, unlinked at once, and fill the mapping with pattern
 * @seed. Returns NULL (and errno) if the file system cannot do it.
 */
static char *shm_map_file_in(const char *dir, size_t len, int flags,
			     __u32 seed, int *fdp)
{
	char name[96];
	char *va;
	int fd;

	snprintf(name, sizeof(name), "%s/hmm-tests-XXXXXX", dir);
	fd = mkstemp(name);
	if (fd < 0)
		return NULL;
	unlink(name);
	if (ftruncate(fd, len))
		goto close_fd;
	va = shm_map(fd, len, flags);
	if (!va)
		goto close_fd;
	pat_fill(va, len, seed, 0);
	*fdp = fd;
	return va;

close_fd:
	close(fd);
	return NULL;
}

/*
 * MIGRATE_TO_DEV of the mapping at @va, which is not of shmem, is refused
 * with @err and leaves the data, pattern @seed, where it was.
 */
static void shm_expect_refused(struct __test_metadata *_metadata, int dev,
			       char *va, size_t len, size_t psz, __u32 seed,
			       int err)
{
	unsigned long npages = len / psz;
	struct hmm_dmirror_cmd cmd;
	long used0;
	char *dbuf;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(dev);
	ASSERT_LE(0, used0);
	ASSERT_EQ(err, dmirror_req(dev, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				   npages, &cmd));
	ASSERT_EQ(used0, devmem_used(dev));
	ASSERT_EQ(-1, pat_find_bad(va, len, seed, 0));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(dev, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, seed, 0));
	free(dbuf);
}

/*
 * Only shmem file pages go to device memory, and nothing else moves: the
 * dummy device refuses a shared mapping of any other file (the device
 * node itself, a ramfs file, a hugetlbfs file) with EOPNOTSUPP, and
 * migrate_vma_setup() a private hugetlbfs mapping with EINVAL.
 */
TEST_F(dmirror, shmem_not_shmem_refused)
{
	size_t len = 8 * self->psz;
	char dir[] = "/tmp/hmm-tests-ramfs-XXXXXX";
	size_t hlen = read_pmd_pagesize();
	char *va;
	int fd;

	va = shm_map(self->fd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	pat_fill(va, len, 301, 0);
	shm_expect_refused(_metadata, self->fd, va, len, self->psz, 301,
			   -EOPNOTSUPP);
	ASSERT_EQ(0, munmap(va, len));

	ASSERT_NE(NULL, mkdtemp(dir));
	ASSERT_EQ(0, mount("ramfs", dir, "ramfs", 0, NULL));
	va = shm_map_file_in(dir, len, MAP_SHARED, 302, &fd);
	if (va) {
		shm_expect_refused(_metadata, self->fd, va, len, self->psz,
				   302, -EOPNOTSUPP);
		ASSERT_EQ(-1, file_find_bad(fd, len, 302));
		munmap(va, len);
		close(fd);
	}
	umount(dir);
	rmdir(dir);
	ASSERT_NE(NULL, va);

	/* The guest reserves huge pages; a machine without any skips this. */
	va = shm_map_file_in("/dev/hugepages", hlen, MAP_PRIVATE, 303, &fd);
	if (!va)
		SKIP(return, "no hugetlbfs file at /dev/hugepages: %s",
		     strerror(errno));
	shm_expect_refused(_metadata, self->fd, va, hlen, self->psz, 303,
			   -EINVAL);
	ASSERT_EQ(0, munmap(va, hlen));
	close(fd);
	va = shm_map_file_in("/dev/hugepages", hlen, MAP_SHARED, 304, &fd);
	ASSERT_NE(NULL, va);
	shm_expect_refused(_metadata, self->fd, va, hlen, self->psz, 304,
			   -EOPNOTSUPP);
	ASSERT_EQ(0, munmap(va, hlen));
	close(fd);
}

/*
 * Closing the device file that migrated a memfd range evicts its device
 * pages to system memory: nothing of it is left in device memory and the
 * data is intact for the mapping, read() and another mirror.
 */
TEST_F(dmirror, shmem_close_device_fd)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd, dev;

	dev = dmirror_open(variant->unit);
	ASSERT_LE(0, dev);
	used0 = devmem_used(dev);
	ASSERT_LE(0, used0);
	mfd = shm_memfd_on_device(_metadata, dev, npages, self->psz, 311, &va);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(used0 + npages, devmem_used(dev));
	if (!variant->coherent)
		shm_expect_snap(_metadata, dev, va, npages,
				shm_dev_state(false, true));

	ASSERT_EQ(0, close(dev));
	ASSERT_EQ(used0, devmem_used(self->fd));
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 311, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 311));
	ASSERT_EQ(-1, pat_find_bad(va, len, 311, 0));
	ASSERT_EQ(used0, devmem_used(self->fd));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/* Pages of each side of shmem_swap_while_on_device. */
#define SHM_SWAP_FILE	(64 * SZ_1M)	/* the memfd */
#define SHM_SWAP_DEV	(4 * SZ_1M)	/* its head, moved to the device */
#define SHM_SWAP_LIMIT	"16M"		/* memory.max while it is written */

/*
 * Memory pressure with part of a file in device memory. The head of a
 * memfd goes to the device, then the rest is written in a memory cgroup
 * far too small for it, so most of it goes to swap on a RAM disk. The
 * device pages are not reclaimed and keep their data, the swapped pages
 * come back intact through read() and the mapping, and swapoff, which
 * walks the page cache of every shmem file, copes with the device entries
 * it finds there and leaves them on the device.
 */
TEST_F_TIMEOUT(dmirror, shmem_swap_while_on_device, 600)
{
	size_t len = SHM_SWAP_FILE, alen = SHM_SWAP_DEV;
	unsigned long apages = alen / self->psz;
	unsigned long bpages = SHM_CHUNK / self->psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	long used0, swapped;
	char *va, *dbuf;
	size_t off;
	int mfd;

	if (access(HMM_SWAPDEV, F_OK))
		SKIP(return, "%s absent: no RAM disk to swap to", HMM_SWAPDEV);
	ASSERT_EQ(0, swap_start(self->psz));
	swapped = swap_used_kb();
	ASSERT_LE(0, swapped);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	dbuf = malloc(SHM_CHUNK);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, memcg_enter(SHM_SWAP_LIMIT));

	mfd = memfd_create("hmm-tests-shmem", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(0, shm_pwrite_pattern(mfd, 0, alen, 321));
	for (off = 0; off < alen; off += SHM_CHUNK) {
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
					 va + off, dbuf, bpages, &cmd));
		ASSERT_EQ(bpages, cmd.cpages);
		ASSERT_EQ(-1, pat_find_bad(dbuf, SHM_CHUNK, 321, off));
	}
	ASSERT_EQ(used0 + apages, devmem_used(self->fd));

	ASSERT_EQ(0, shm_pwrite_pattern(mfd, alen, len - alen, 321));
	swapped = swap_used_kb() - swapped;
	TH_LOG("%ld kB of %zu kB swapped out", swapped, (len - alen) >> 10);
	ASSERT_LE((long)((len - alen) / 2) >> 10, swapped);
	ASSERT_EQ(used0 + apages, devmem_used(self->fd));
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, apages,
				shm_dev_state(false, true));

	/* The tail through read() and the mapping, the head on the device. */
	ASSERT_EQ(-1, shm_pread_check(mfd, alen, len - alen, 321));
	ASSERT_EQ(-1, pat_find_bad(va + alen, len - alen, 321, alen));
	for (off = 0; off < alen; off += SHM_CHUNK) {
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va + off,
					 dbuf, bpages, &cmd));
		ASSERT_EQ(0, cmd.faults);
		ASSERT_EQ(-1, pat_find_bad(dbuf, SHM_CHUNK, 321, off));
	}
	ASSERT_EQ(used0 + apages, devmem_used(self->fd));

	/* Room for everything swapoff reads back in. */
	ASSERT_EQ(0, memcg_set_max("max"));
	ASSERT_EQ(0, swapoff(HMM_SWAPDEV));
	ASSERT_EQ(used0 + apages, devmem_used(self->fd));
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, apages,
				shm_dev_state(false, true));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 321));
	ASSERT_EQ(-1, pat_find_bad(va, len, 321, 0));
	ASSERT_EQ(used0 + (coh ? apages : 0), devmem_used(self->fd));

	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
	free(dbuf);
	memcg_leave();
}

/*
 * Anonymous pages read back from swap stay in the swap cache (the swap
 * is far from full, so a read fault keeps the slot). They migrate to
 * device memory like any other page: migration gives up the swap slot
 * first. Their data reaches the device and comes back to the CPU.
 */
TEST_F_TIMEOUT(dmirror, migrate_swap_cache_pages, 300)
{
	const unsigned long npages = 256;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	char *va, *dbuf;
	long cached, swapped = 0;
	unsigned long i;

	if (access(HMM_SWAPDEV, F_OK))
		SKIP(return, "%s absent: no RAM disk to swap to", HMM_SWAPDEV);
	ASSERT_EQ(0, swap_start(self->psz));
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);
	pat_fill(va, len, 335, 0);

	cached = meminfo_kb("SwapCached");
	/*
	 * MADV_PAGEOUT skips pages still in another CPU's LRU batch (seen:
	 * 249 of 256): ask again, then go on with what did go out, which
	 * the swap-cache check below still requires to be most of it.
	 */
	for (i = 0; i < 20; i++) {
		ASSERT_EQ(0, madvise(va, len, MADV_PAGEOUT));
		swapped = pagemap_count(va, npages, PM_SWAP);
		if (swapped == (long)npages)
			break;
		usleep(10000);
	}
	TH_LOG("%ld of %lu pages swapped out", swapped, npages);
	ASSERT_LE((long)npages / 2, swapped);
	/*
	 * A fault on a RAM disk's swap skips the swap cache; read-ahead
	 * puts the pages there, and the read fault then maps them from it.
	 */
	ASSERT_EQ(0, madvise(va, len, MADV_WILLNEED));
	ASSERT_EQ(-1, pat_find_bad(va, len, 335, 0));
	ASSERT_EQ(0, pagemap_count(va, npages, PM_SWAP));
	cached = meminfo_kb("SwapCached") - cached;
	TH_LOG("%ld kB in the swap cache after the read", cached);
	/* Most of them at least: the fix has to matter for the count. */
	ASSERT_LE((long)(len >> 11), cached);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 335, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++) {
		if (snap[i] != dev_local(variant->coherent))
			TH_LOG("page %lu: 0x%x", i, snap[i]);
		ASSERT_EQ(dev_local(variant->coherent), snap[i]);
	}
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 335, 0));

	/* Back by CPU faults (device-private) or in place (coherent). */
	ASSERT_EQ(-1, pat_find_bad(va, len, 335, 0));
	free(snap);
	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
}

struct shm_anon_job {
	char *va;
	size_t len;
};

/* Child: check 352 (written by the device), write 353 over it all. */
static int shm_anon_child(void *arg)
{
	struct shm_anon_job *job = arg;

	if (pat_find_bad(job->va, job->len, 352, 0) != -1)
		return 1;
	pat_fill(job->va, job->len, 353, 0);
	return 0;
}

/* The whole of [@va, @va + @len), holding @seed, moves to device @dev. */
static void shm_expect_migrates(struct __test_metadata *_metadata,
				int dev, bool coh, char *va, size_t len,
				size_t psz, __u32 seed)
{
	unsigned long npages = len / psz;
	struct hmm_dmirror_cmd cmd;
	long used0;
	char *dbuf;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(dev);
	ASSERT_LE(0, used0);
	ASSERT_EQ(0, dmirror_req(dev, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, seed, 0));
	ASSERT_EQ(used0 + npages, devmem_used(dev));
	if (!coh)
		shm_expect_snap(_metadata, dev, va, npages,
				shm_dev_state(false, true));
	free(dbuf);
}

/*
 * Shared anonymous memory is shmem too: it moves to the device like a
 * memfd, and a process that shares it through fork() reads the device's
 * data and writes its own, which the device then reads.
 */
TEST_F(dmirror, shmem_anon_shared)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	bool coh = variant->coherent;
	struct shm_anon_job job;
	struct hmm_dmirror_cmd cmd;
	char *dbuf;

	job.len = len;
	job.va = mmap(NULL, len, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, job.va);
	pat_fill(job.va, len, 351, 0);
	shm_expect_migrates(_metadata, self->fd, coh, job.va, len, self->psz,
			    351);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(dbuf, len, 352, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(0, cmd.faults);
	ASSERT_EQ(0, in_child(shm_anon_child, &job));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 353, 0));
	ASSERT_EQ(-1, pat_find_bad(job.va, len, 353, 0));
	ASSERT_EQ(0, munmap(job.va, len));
	free(dbuf);
}

/* SysV shared memory is shmem too, where the kernel has it. */
TEST_F(dmirror, shmem_sysv_segment)
{
	size_t len = 16 * self->psz;
	char *va;
	int id;

	if (access("/proc/sysvipc", F_OK))
		SKIP(return, "no SysV IPC in this kernel");
	id = shmget(IPC_PRIVATE, len, IPC_CREAT | 0600);
	ASSERT_LE(0, id);
	va = shmat(id, NULL, 0);
	shmctl(id, IPC_RMID, NULL);
	ASSERT_NE((void *)-1, va);
	pat_fill(va, len, 354, 0);
	shm_expect_migrates(_metadata, self->fd, variant->coherent, va, len,
			    self->psz, 354);
	ASSERT_EQ(-1, pat_find_bad(va, len, 354, 0));
	ASSERT_EQ(0, shmdt(va));
}

/*
 * Device mirrors of one file follow its pages wherever they go. The file
 * is mapped twice; the device sees pages it moved through the first
 * mapping through the second too, without faulting, and both this device
 * and a peer device read what read(), write() and the other device last
 * stored, never a stale copy: every move of a page must reach the
 * mirrors of every mapping of the file.
 */
TEST_F(dmirror, shmem_mirrors_follow_the_file)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz, q = len / 4;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *a, *b, *dbuf;
	long used0;
	int mfd;

	mfd = shm_memfd_pattern(len, 361);
	ASSERT_LE(0, mfd);
	a = shm_map(mfd, len, MAP_SHARED);
	b = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, a);
	ASSERT_NE(NULL, b);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	/* The peer mirrors the pages in system memory through b. */
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_READ, b, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 361, 0));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, a,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	if (!coh) {
		shm_expect_snap(_metadata, self->fd, b, npages,
				shm_dev_state(false, true));
		memset(dbuf, 0, len);
		ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, b, dbuf,
					 npages, &cmd));
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, 361, 0));
		ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	}

	/* The device rewrites the pages; the peer must not see the old ones. */
	pat_fill(dbuf, len, 362, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, a, dbuf, npages,
				 &cmd));
	ASSERT_EQ(0, cmd.faults);
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_READ, b, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 362, 0));
	ASSERT_EQ(used0 + (coh ? npages : 0), devmem_used(self->fd));

	/* Again on the device; write() changes the first quarter. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, a,
				 dbuf, npages, &cmd));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	ASSERT_EQ(0, shm_pwrite_pattern(mfd, 0, q, 363));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, b, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, q, 363, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + q, len - q, 362, q));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_READ, a, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, q, 363, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + q, len - q, 362, q));

	/* The peer writes through b; this device reads through a. */
	pat_fill(dbuf, len, 364, 0);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_WRITE, b, dbuf,
				 npages, &cmd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, a, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 364, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 364));

	free(dbuf);
	ASSERT_EQ(0, munmap(a, len));
	ASSERT_EQ(0, munmap(b, len));
	close(mfd);
}

/*
 * A huge shmem folio does not move (best effort, not an error of the
 * file): the request cannot hand back device data for it, nothing is
 * allocated on the device, and the folio stays whole with its data.
 */
TEST_F(dmirror, shmem_huge_folio_stays)
{
	size_t len = read_pmd_pagesize();
	unsigned long npages = len / self->psz;
	long before = meminfo_kb("ShmemHugePages");
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	bool advised;
	long used0;
	int mfd;

	if (access(SHMEM_THP, W_OK))
		SKIP(return, "no shmem THP control");
	advised = thp_read_string("shmem_enabled", shmem_enabled_names) ==
		  SHMEM_ADVISE;
	if (!advised)
		ASSERT_EQ(0, write_str(SHMEM_THP, "advise"));
	mfd = memfd_create("hmm-tests-shmem-thp", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	va = anon_map_aligned(len, len);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(va, mmap(va, len, PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_FIXED, mfd, 0));
	ASSERT_EQ(0, madvise(va, len, MADV_HUGEPAGE));
	pat_fill(va, len, 371, 0);
	if (!advised)
		ASSERT_EQ(0, write_str(SHMEM_THP, "never"));
	if (meminfo_kb("ShmemHugePages") - before < (long)(len >> 10))
		SKIP(return, "no huge shmem page available");
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(-ENOENT, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				       va, dbuf, npages, &cmd));
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_LE((long)(len >> 10),
		  meminfo_kb("ShmemHugePages") - before);
	ASSERT_EQ(-1, pat_find_bad(va, len, 371, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 371));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 371, 0));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * Pages the device wrote must be dirty once back in system memory, or
 * reclaim drops them as clean page cache and the file reads zeros there.
 * The pages start clean (holes read through the mapping), the device
 * writes them, and each segment comes back to system memory another way:
 * a CPU read fault, read(), MIGRATE_TO_SYS, or eviction when the device
 * file closes (one segment never leaves system memory: the device writes
 * it in place). A memory cgroup then pushes the file out to swap, and
 * read() must find the device's data in every segment.
 */
TEST_F_TIMEOUT(dmirror, shmem_dirty_after_device_write, 600)
{
	static const char * const how[] = {
		"written in system memory", "back by CPU fault",
		"back by read()", "back by MIGRATE_TO_SYS",
		"back by eviction",
	};
	enum { SEG_SYSTEM, SEG_FAULT, SEG_READ, SEG_MIGRATE, SEG_EVICT, NSEG };
	size_t seg = 2 * SZ_1M, len = NSEG * seg;
	unsigned long spages = seg / self->psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	int mfd, fill, dev, d, s, nbad;
	char *va, *dbuf;
	long used0, bad;
	__u64 word;

	if (access(HMM_SWAPDEV, F_OK))
		SKIP(return, "%s absent: no RAM disk to swap to", HMM_SWAPDEV);
	ASSERT_EQ(0, swap_start(self->psz));
	dev = dmirror_open(variant->unit);
	ASSERT_LE(0, dev);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	dbuf = malloc(seg);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, memcg_enter(SHM_SWAP_LIMIT));

	mfd = memfd_create("hmm-tests-shmem", MFD_CLOEXEC);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(-1, zero_find_bad(va, len));

	for (s = 0; s < NSEG; s++) {
		d = s == SEG_EVICT ? dev : self->fd;
		if (s != SEG_SYSTEM) {
			ASSERT_EQ(0, dmirror_req(d, HMM_DMIRROR_MIGRATE_TO_DEV,
						 va + s * seg, dbuf, spages,
						 &cmd));
			ASSERT_EQ(spages, cmd.cpages);
			ASSERT_EQ(-1, zero_find_bad(dbuf, seg));
		}
		pat_fill(dbuf, seg, 391, s * seg);
		ASSERT_EQ(0, dmirror_req(d, HMM_DMIRROR_WRITE, va + s * seg,
					 dbuf, spages, &cmd));
		ASSERT_EQ(spages, cmd.cpages);
	}
	ASSERT_EQ(used0 + (NSEG - 1) * spages, devmem_used(self->fd));

	shm_touch(va + SEG_FAULT * seg, seg, self->psz);
	ASSERT_EQ(-1, shm_pread_check(mfd, SEG_READ * seg, seg, 391));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				 va + SEG_MIGRATE * seg, NULL, spages, &cmd));
	ASSERT_EQ(spages, cmd.cpages);
	ASSERT_EQ(0, close(dev));
	/* Coherent pages stay on the device when the CPU uses them. */
	ASSERT_EQ(used0 + (coh ? 2 * spages : 0), devmem_used(self->fd));

	/* Eight times the cgroup's limit, written after the segments. */
	fill = shm_memfd_pattern(8 * 16 * SZ_1M, 392);
	ASSERT_LE(0, fill);

	/* Check every segment, to tell which ways of coming back fail. */
	for (nbad = 0, s = 0; s < NSEG; s++) {
		bad = shm_pread_check(mfd, s * seg, seg, 391);
		if (bad >= 0 &&
		    pread(mfd, &word, sizeof(word), bad) == sizeof(word))
			TH_LOG("segment %s: 0x%llx at offset %ld", how[s],
			       (unsigned long long)word, bad);
		nbad += bad != -1;
	}
	ASSERT_EQ(0, nbad);
	ASSERT_EQ(-1, pat_find_bad(va, len, 391, 0));

	close(fill);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
	free(dbuf);
	ASSERT_EQ(0, memcg_set_max("max"));
	ASSERT_EQ(0, swapoff(HMM_SWAPDEV));
	memcg_leave();
}

/*
 * The file descriptor paths that do not go through read() and write():
 * splice() out of the file and into it, sendfile() out of it, while the
 * pages are in device memory, and fallocate() over them.
 */
TEST_F(dmirror, shmem_splice_on_device)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	int mfd, out, pfd[2];
	char *va, *dbuf;
	loff_t off;
	long used0;
	ssize_t n;

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	mfd = shm_memfd_on_device(_metadata, self->fd, npages, psz, 401, &va);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, pipe(pfd));

	/* Page 0 out through a pipe, page 1 in from one. */
	off = 0;
	ASSERT_EQ((ssize_t)psz, splice(mfd, &off, pfd[1], NULL, psz, 0));
	ASSERT_EQ((ssize_t)psz, read(pfd[0], dbuf, psz));
	ASSERT_EQ(-1, pat_find_bad(dbuf, psz, 401, 0));
	pat_fill(dbuf, psz, 402, psz);
	ASSERT_EQ((ssize_t)psz, write(pfd[1], dbuf, psz));
	off = psz;
	ASSERT_EQ((ssize_t)psz, splice(pfd[0], NULL, mfd, &off, psz, 0));

	/* Pages 2 and up go to another memfd with sendfile(). */
	out = memfd_create("hmm-tests-shmem-out", MFD_CLOEXEC);
	ASSERT_LE(0, out);
	off = 2 * psz;
	n = sendfile(out, mfd, &off, len - 2 * psz);
	ASSERT_EQ((ssize_t)(len - 2 * psz), n);
	ASSERT_EQ((ssize_t)(len - 2 * psz), pread(out, dbuf, len - 2 * psz, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len - 2 * psz, 401, 2 * psz));
	ASSERT_EQ(used0 + (coh ? npages : 0), devmem_used(self->fd));

	/* Back on the device, then allocated over and past its end. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, psz, 401, 0));
	ASSERT_EQ(-1, pat_find_bad(dbuf + psz, psz, 402, psz));
	ASSERT_EQ(-1, pat_find_bad(dbuf + 2 * psz, len - 2 * psz, 401,
				   2 * psz));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	ASSERT_EQ(0, fallocate(mfd, 0, 0, 2 * len));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, psz, 401));
	ASSERT_EQ(-1, shm_pread_check(mfd, psz, psz, 402));
	ASSERT_EQ(-1, shm_pread_check(mfd, 2 * psz, len - 2 * psz, 401));
	ASSERT_EQ(-1, shm_pread_check(mfd, len, len, 0));

	close(out);
	close(pfd[0]);
	close(pfd[1]);
	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * Seals hold for the device too: once a memfd with pages in device memory
 * is sealed against writes, the device can map it only read-only, a
 * device write is refused like write(), and the data stays as it was.
 */
TEST_F(dmirror, shmem_sealed_memfd)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd;

	mfd = memfd_create("hmm-tests-shmem-sealed",
			   MFD_CLOEXEC | MFD_ALLOW_SEALING);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, len));
	ASSERT_EQ(0, shm_pwrite_pattern(mfd, 0, len, 411));
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	ASSERT_EQ(0, munmap(va, len));

	ASSERT_EQ(0, fcntl(mfd, F_ADD_SEALS, F_SEAL_WRITE));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	va = mmap(NULL, len, PROT_READ, MAP_SHARED, mfd, 0);
	ASSERT_NE(MAP_FAILED, va);
	if (!coh)
		shm_expect_snap(_metadata, self->fd, va, npages,
				shm_dev_state(false, false));
	pat_fill(dbuf, len, 412, 0);
	ASSERT_EQ(-EPERM, dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf,
				      npages, &cmd));
	ASSERT_EQ(-1, pwrite(mfd, dbuf, len, 0));
	ASSERT_EQ(EPERM, errno);
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 411, 0));
	ASSERT_EQ(-1, pat_find_bad(va, len, 411, 0));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 411));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

struct shm_exit_job {
	int mfd;
	size_t len;
	int unit;
};

/*
 * Child of shmem_owner_exits: map the memfd, move it to the device with a
 * device file of its own, and exit with both still in place.
 */
static int shm_exit_child(void *arg)
{
	struct shm_exit_job *job = arg;
	unsigned long npages = job->len / sysconf(_SC_PAGESIZE);
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int dev;

	dev = dmirror_open(job->unit);
	va = shm_map(job->mfd, job->len, MAP_SHARED);
	dbuf = malloc(job->len);
	used0 = devmem_used(dev);
	if (dev < 0 || !va || !dbuf || used0 < 0)
		return 1;
	if (dmirror_req(dev, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf, npages,
			&cmd) || pat_find_bad(dbuf, job->len, 421, 0) != -1 ||
	    devmem_used(dev) != used0 + (long)npages)
		return 2;
	pat_fill(dbuf, job->len, 422, 0);
	if (dmirror_req(dev, HMM_DMIRROR_WRITE, va, dbuf, npages, &cmd))
		return 3;
	return 0;
}

/*
 * A process moves a shared file to the device and exits: its address
 * space goes first, then its device file, whose pages come back to the
 * file with the data the device wrote, for the processes still using it.
 */
TEST_F(dmirror, shmem_owner_exits)
{
	const unsigned long npages = 32;
	struct shm_exit_job job = {
		.len = npages * self->psz,
		.unit = variant->unit,
	};
	long used0;
	char *va;

	job.mfd = shm_memfd_pattern(job.len, 421);
	ASSERT_LE(0, job.mfd);
	va = shm_map(job.mfd, job.len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(0, in_child(shm_exit_child, &job));
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(-1, shm_pread_check(job.mfd, 0, job.len, 422));
	ASSERT_EQ(-1, pat_find_bad(va, job.len, 422, 0));

	ASSERT_EQ(0, munmap(va, job.len));
	close(job.mfd);
}

#define SHM_RACE_PAGES	32	/* in each of the two halves of the file */

struct shm_race {
	int dev;
	int mfd;
	char *va;
	size_t psz;
	unsigned int rounds;	/* of the CPU writer and of the hole puncher */
	bool stop;		/* for the migrating thread, atomic */
	int err;		/* first unexpected error of a thread */
	int cpu_active;		/* writer and puncher running, atomic */
	long overlaps;		/* migrations done meanwhile, atomic */
	unsigned int last_gen;	/* the writer's last generation */
	time_t deadline;	/* for reaching SHM_RACE_MIN_OVERLAPS */
};

/*
 * Whole-range migrations to the device that must overlap the CPU side:
 * the normal kernel reaches 16 in a few seconds, the debug kernel only 4
 * to 13 in the two minutes the case allows itself (its migrating thread
 * is starved by KASAN and kmemleak under TCG).
 */
#define SHM_RACE_MIN_OVERLAPS	2

/* Past its rounds, does the CPU side go on until enough overlapped? */
static bool shm_race_short(struct shm_race *r)
{
	return __atomic_load_n(&r->overlaps, __ATOMIC_RELAXED) <
	       SHM_RACE_MIN_OVERLAPS && time(NULL) < r->deadline;
}

/* Word @page of generation @gen, as the writer stores it. */
static __u64 shm_race_word(unsigned int gen, unsigned long page)
{
	return ((__u64)gen << 32) | page;
}

/*
 * First half: the CPU stores a new generation into the first word of each
 * page, in turn through the mapping and with pwrite().
 */
static void *shm_race_writer(void *arg)
{
	struct shm_race *r = arg;
	unsigned long p;
	unsigned int gen;
	__u64 w;

	for (gen = 1; gen <= r->rounds || shm_race_short(r); gen++) {
		for (p = 0; p < SHM_RACE_PAGES; p++) {
			w = shm_race_word(gen, p);
			if (gen & 1) {
				__atomic_store_n((__u64 *)(r->va + p * r->psz),
						 w, __ATOMIC_RELAXED);
			} else if (pwrite(r->mfd, &w, sizeof(w),
					  p * r->psz) != sizeof(w)) {
				r->err = errno;
				goto out;
			}
		}
		r->last_gen = gen;
	}
out:
	__atomic_sub_fetch(&r->cpu_active, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* Second half: punch it out and write pattern 431 back, over and over. */
static void *shm_race_puncher(void *arg)
{
	struct shm_race *r = arg;
	size_t off = SHM_RACE_PAGES * r->psz, len = off;
	unsigned int i;

	for (i = 0; i < r->rounds || shm_race_short(r); i++) {
		if (fallocate(r->mfd, FALLOC_FL_PUNCH_HOLE |
			      FALLOC_FL_KEEP_SIZE, off, len) ||
		    shm_pwrite_pattern(r->mfd, off, len, 431)) {
			r->err = errno ? errno : EIO;
			break;
		}
	}
	__atomic_sub_fetch(&r->cpu_active, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/*
 * Both halves go to the device and back until told to stop. Pages may be
 * busy, faulted back or punched out at any time, so a request may fail to
 * hand back every page (ENOENT); anything else is an error.
 */
static void *shm_race_migrator(void *arg)
{
	size_t len;
	struct shm_race *r = arg;
	struct hmm_dmirror_cmd cmd;
	unsigned long npages = 2 * SHM_RACE_PAGES;
	unsigned int i;
	char *dbuf;
	int ret;

	len = npages * r->psz;
	dbuf = malloc(len);
	if (!dbuf) {
		r->err = ENOMEM;
		return NULL;
	}
	for (i = 0; !__atomic_load_n(&r->stop, __ATOMIC_RELAXED); i++) {
		ret = dmirror_req(r->dev, (i % 4 == 3) ?
				  HMM_DMIRROR_MIGRATE_TO_SYS :
				  HMM_DMIRROR_MIGRATE_TO_DEV,
				  r->va, dbuf, npages, &cmd);
		if (ret && ret != -ENOENT) {
			r->err = -ret;
			break;
		}
		/* Every page moved while the CPU side was at work. */
		if (!ret && i % 4 != 3 &&
		    __atomic_load_n(&r->cpu_active, __ATOMIC_SEQ_CST))
			__atomic_add_fetch(&r->overlaps, 1, __ATOMIC_RELAXED);
	}
	free(dbuf);
	return NULL;
}

/*
 * The CPU writes, punches holes and refills while the pages keep moving
 * to the device and back. Once it stops, every page must hold what was
 * written last, whichever way it is read, and no device page may be left
 * behind by a punched-out page.
 */
TEST_F_TIMEOUT(dmirror, shmem_race_cpu_and_migration, 300)
{
	unsigned long npages = 2 * SHM_RACE_PAGES, p;
	size_t psz = self->psz, len = npages * psz, half = len / 2;
	struct hmm_dmirror_cmd cmd;
	pthread_t mig, wr, pu;
	struct shm_race r = {
		.dev = self->fd,
		.psz = psz,
		.rounds = 200,
		.cpu_active = 2,
		.deadline = time(NULL) + 120,
	};
	long used0;
	char *dbuf;

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	r.mfd = shm_memfd_pattern(len, 431);
	ASSERT_LE(0, r.mfd);
	r.va = shm_map(r.mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, r.va);

	ASSERT_EQ(0, pthread_create(&mig, NULL, shm_race_migrator, &r));
	ASSERT_EQ(0, pthread_create(&wr, NULL, shm_race_writer, &r));
	ASSERT_EQ(0, pthread_create(&pu, NULL, shm_race_puncher, &r));
	pthread_join(wr, NULL);
	pthread_join(pu, NULL);
	__atomic_store_n(&r.stop, true, __ATOMIC_RELAXED);
	pthread_join(mig, NULL);
	ASSERT_EQ(0, r.err);
	TH_LOG("%ld whole-range migrations overlapped %u writer rounds",
	       r.overlaps, r.last_gen);
	ASSERT_LE(SHM_RACE_MIN_OVERLAPS, r.overlaps);

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, r.va, dbuf,
				 npages, &cmd));
	for (p = 0; p < SHM_RACE_PAGES; p++) {
		ASSERT_EQ(shm_race_word(r.last_gen, p),
			  *(__u64 *)(dbuf + p * psz));
		ASSERT_EQ(-1, pat_find_bad(dbuf + p * psz + 8, psz - 8, 431,
					   p * psz + 8));
	}
	ASSERT_EQ(-1, pat_find_bad(dbuf + half, half, 431, half));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, r.va,
				 NULL, npages, &cmd));
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ((ssize_t)len, pread(r.mfd, dbuf, len, 0));
	for (p = 0; p < SHM_RACE_PAGES; p++)
		ASSERT_EQ(shm_race_word(r.last_gen, p),
			  *(__u64 *)(dbuf + p * psz));
	ASSERT_EQ(-1, pat_find_bad(dbuf + half, half, 431, half));
	ASSERT_EQ(-1, pat_find_bad(r.va + half, half, 431, half));

	free(dbuf);
	ASSERT_EQ(0, munmap(r.va, len));
	close(r.mfd);
}

/*
 * Pages of a file on one device are not taken by another device's
 * request; once back in system memory they move to the other device, and
 * a device reading pages that sit in another device's private memory
 * gets them back to system memory with their data.
 */
TEST_F(dmirror, shmem_migrate_between_devices)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	long used0, pused0;
	char *va, *dbuf;
	int mfd;

	used0 = devmem_used(self->fd);
	pused0 = devmem_used(self->peer_fd);
	ASSERT_LE(0, used0);
	ASSERT_LE(0, pused0);
	mfd = shm_memfd_on_device(_metadata, self->fd, npages, self->psz, 451,
				  &va);
	ASSERT_LE(0, mfd);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(-ENOENT, dmirror_req(self->peer_fd,
				       HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				       npages, &cmd));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));
	ASSERT_EQ(pused0, devmem_used(self->peer_fd));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 va, dbuf, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 451, 0));
	ASSERT_EQ(pused0 + npages, devmem_used(self->peer_fd));
	if (!coh)
		shm_expect_snap(_metadata, self->peer_fd, va, npages,
				shm_dev_state(false, true));
	pat_fill(dbuf, len, 452, 0);
	ASSERT_EQ(0, dmirror_req(self->peer_fd, HMM_DMIRROR_WRITE, va, dbuf,
				 npages, &cmd));

	/* Not this device's pages: nothing for it to bring back. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(0, cmd.cpages);
	ASSERT_EQ(pused0 + npages, devmem_used(self->peer_fd));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 452, 0));
	ASSERT_EQ(pused0 + (coh ? npages : 0),
		  devmem_used(self->peer_fd));
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 452));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * When device memory runs out in the middle of a request, the pages that
 * got no device page stay in the page cache with their data, and those
 * that did are on the device.
 */
TEST_F(dmirror, shmem_device_memory_runs_out)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd, ret;

	mfd = shm_memfd_pattern(len, 461);
	ASSERT_LE(0, mfd);
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(0, devattr_write(dmirror_rdev(self->fd), "devmem_limit", used0 + npages / 2));
	ret = dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
			  npages, &cmd);
	ASSERT_EQ(0, devattr_write(dmirror_rdev(self->fd), "devmem_limit", 0));
	ASSERT_EQ(-ENOMEM, ret);
	ASSERT_EQ(used0 + npages / 2, devmem_used(self->fd));
	if (!variant->coherent)
		shm_expect_snap(_metadata, self->fd, va, npages / 2,
				shm_dev_state(false, true));

	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 461));
	ASSERT_EQ(-1, pat_find_bad(va, len, 461, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(used0, devmem_used(self->fd));

	free(dbuf);
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

/*
 * A mapping of pages never touched by the CPU has no page table, and the
 * device finds them through the page cache. Making that mapping
 * read-only must still take write access away from the device: a device
 * write is refused with EPERM and the file keeps its data.
 */
TEST_F(dmirror, shmem_mprotect_unpopulated)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *area, *va, *dbuf;
	long used0, bad;
	int mfd, ret;

	/* Alone in its own GiB, so that not even a PUD entry exists. */
	area = mmap(NULL, 2 * SZ_1G, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(MAP_FAILED, area);
	va = (char *)(((uintptr_t)area + SZ_1G - 1) & ~(uintptr_t)(SZ_1G - 1));
	mfd = shm_memfd_pattern(len, 471);
	ASSERT_LE(0, mfd);
	ASSERT_EQ(va, mmap(va, len, PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_FIXED, mfd, 0));
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 471, 0));
	ASSERT_EQ(used0 + npages, devmem_used(self->fd));

	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	if (!variant->coherent)
		shm_expect_snap(_metadata, self->fd, va, npages,
				shm_dev_state(false, false));
	pat_fill(dbuf, len, 472, 0);
	ret = dmirror_req(self->fd, HMM_DMIRROR_WRITE, va, dbuf, npages, &cmd);
	bad = shm_pread_check(mfd, 0, len, 471);
	if (bad != -1)
		TH_LOG("the file changed through a read-only mapping");
	ASSERT_EQ(-EPERM, ret);
	ASSERT_EQ(-1, bad);
	ASSERT_EQ(-1, pat_find_bad(va, len, 471, 0));

	free(dbuf);
	ASSERT_EQ(0, munmap(area, 2 * SZ_1G));
	close(mfd);
}

struct shm_release_race {
	int dev;
	int mfd;
	char *va;	/* this thread's part of the file */
	size_t off;	/* its offset in the file */
	size_t len;
	size_t psz;
	bool back_by_read;	/* else by MIGRATE_TO_SYS */
	bool *stop;	/* atomic */
	long *releases;	/* completed by the main thread, atomic */
	long overlaps;	/* MIGRATE_TO_DEV that a release overlapped */
	int err;
};

/* Migrations of each thread that a release must have overlapped. */
#define SHM_RELEASE_MIN_OVERLAPS	4

/*
 * Move a part of the file to the device and back, by read() or by
 * MIGRATE_TO_SYS, in a loop. A release in progress leaves no device
 * memory to allocate (ENOMEM) and takes pages away (ENOENT): the pages
 * then just stay in, or come back to, system memory.
 */
static void *shm_release_race_cpu(void *arg)
{
	struct shm_release_race *r = arg;
	unsigned long npages = r->len / r->psz;
	struct hmm_dmirror_cmd cmd;
	long rel0;
	char *dbuf;
	int ret;

	dbuf = malloc(r->len);
	if (!dbuf) {
		r->err = ENOMEM;
		return NULL;
	}
	while (!__atomic_load_n(r->stop, __ATOMIC_RELAXED)) {
		rel0 = __atomic_load_n(r->releases, __ATOMIC_SEQ_CST);
		ret = dmirror_req(r->dev, HMM_DMIRROR_MIGRATE_TO_DEV, r->va,
				  dbuf, npages, &cmd);
		if (ret && ret != -ENOENT && ret != -ENOMEM) {
			r->err = -ret;
			break;
		}
		if (rel0 != __atomic_load_n(r->releases, __ATOMIC_SEQ_CST))
			__atomic_add_fetch(&r->overlaps, 1, __ATOMIC_RELAXED);
		if (!r->back_by_read)
			ret = dmirror_req(r->dev, HMM_DMIRROR_MIGRATE_TO_SYS,
					  r->va, NULL, npages, &cmd);
		if (ret && ret != -ENOENT && ret != -ENOMEM) {
			r->err = -ret;
			break;
		}
		if (shm_pread_check(r->mfd, r->off, r->len, 481) != -1) {
			r->err = EIO;
			break;
		}
	}
	free(dbuf);
	return NULL;
}

/*
 * The device empties its memory (HMM_DMIRROR_RELEASE) while pages of a
 * file keep going to it and coming back through read(): eviction must
 * cope with device pages that are on their way back or just left the
 * page cache, and the file must lose nothing.
 */
TEST_F_TIMEOUT(dmirror, shmem_release_races_cpu, 120)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz, half = len / 2;
	struct shm_release_race r[2];
	struct hmm_dmirror_cmd cmd;
	bool stop = false;
	long releases = 0;
	pthread_t cpu[2];
	int mfd, ret, i;
	time_t end, now;
	char *va;

	mfd = shm_memfd_pattern(len, 481);
	ASSERT_LE(0, mfd);
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	for (i = 0; i < 2; i++) {
		r[i] = (struct shm_release_race) {
			.dev = self->fd,
			.mfd = mfd,
			.va = va + i * half,
			.off = i * half,
			.len = half,
			.psz = self->psz,
			.back_by_read = !i,
			.stop = &stop,
			.releases = &releases,
		};
		ASSERT_EQ(0, pthread_create(&cpu[i], NULL,
					    shm_release_race_cpu, &r[i]));
	}

	/*
	 * Each release unplugs the memory: a few seconds of them, longer
	 * (up to 60 s) until each thread saw enough of its migrations
	 * overlap a release.
	 */
	end = time(NULL) + 4;
	do {
		ret = dmirror_req(self->fd, HMM_DMIRROR_RELEASE, va, NULL, 1,
				  &cmd);
		if (!ret)
			__atomic_add_fetch(&releases, 1, __ATOMIC_SEQ_CST);
		now = time(NULL);
	} while ((!ret || ret == -EBUSY) &&
		 (now < end ||
		  (now < end + 56 &&
		   (__atomic_load_n(&r[0].overlaps, __ATOMIC_RELAXED) <
		    SHM_RELEASE_MIN_OVERLAPS ||
		    __atomic_load_n(&r[1].overlaps, __ATOMIC_RELAXED) <
		    SHM_RELEASE_MIN_OVERLAPS))));
	__atomic_store_n(&stop, true, __ATOMIC_RELAXED);
	for (i = 0; i < 2; i++)
		pthread_join(cpu[i], NULL);
	ASSERT_TRUE(ret == 0 || ret == -EBUSY);
	ASSERT_EQ(0, r[0].err);
	ASSERT_EQ(0, r[1].err);
	TH_LOG("%ld releases; overlapped migrations: %ld (back by read()), %ld (by MIGRATE_TO_SYS)",
	       releases, r[0].overlaps, r[1].overlaps);
	ASSERT_LE(SHM_RELEASE_MIN_OVERLAPS, r[0].overlaps);
	ASSERT_LE(SHM_RELEASE_MIN_OVERLAPS, r[1].overlaps);
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 481));
	ASSERT_EQ(-1, pat_find_bad(va, len, 481, 0));

	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
}

struct shm_close_race {
	int dev;
	unsigned int id;	/* which thread: part of every seed */
	unsigned long npages;	/* per file */
	size_t psz;
	bool *stop;		/* atomic */
	unsigned long files;	/* files made and closed */
	unsigned long checked;	/* files read back before the close */
	int err;
};

/*
 * Make a memfd, move all of it to the device, unmap it and close it: its
 * last reference goes with the pages possibly still in device memory, so
 * the inode is freed while a release may be evicting them. Every other
 * file is read back first, to check that what survived a release is
 * intact.
 */
static void *shm_close_race_files(void *arg)
{
	struct shm_close_race *r = arg;
	size_t len = r->npages * r->psz;
	struct hmm_dmirror_cmd cmd;
	__u32 seed;
	char *va, *dbuf;
	int mfd, ret;

	dbuf = malloc(len);
	if (!dbuf) {
		r->err = ENOMEM;
		return NULL;
	}
	while (!__atomic_load_n(r->stop, __ATOMIC_RELAXED) && !r->err) {
		seed = 0x60000 | (r->id << 12) | (r->files & 0xfff);
		mfd = shm_memfd_pattern(len, seed);
		va = mfd < 0 ? NULL : shm_map(mfd, len, MAP_SHARED);
		if (!va) {
			r->err = errno ? errno : EIO;
			break;
		}
		ret = dmirror_req(r->dev, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
				  r->npages, &cmd);
		if (ret && ret != -ENOENT && ret != -ENOMEM)
			r->err = -ret;
		munmap(va, len);
		if ((r->files & 1) && shm_pread_check(mfd, 0, len, seed) != -1)
			r->err = EIO;
		r->checked += r->files & 1;
		close(mfd);
		r->files++;
	}
	free(dbuf);
	return NULL;
}

/*
 * The device empties its memory (HMM_DMIRROR_RELEASE) while files with
 * pages in it lose their last reference: eviction holds a page that
 * truncation of the dying inode wants to drop, and must neither touch
 * the freed file (KASAN on the debug kernel) nor lose the data of files
 * that live on.
 */
TEST_F_TIMEOUT(dmirror, shmem_release_races_close, 120)
{
	struct shm_close_race r[2];
	struct hmm_dmirror_cmd cmd;
	unsigned long releases = 0;
	bool stop = false;
	pthread_t files[2];
	int ret, i;
	time_t end;
	char *va;

	/* RELEASE needs an address; any mirrored page does. */
	va = anon_map(self->psz, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	for (i = 0; i < 2; i++) {
		r[i] = (struct shm_close_race) {
			.dev = self->fd,
			.id = i,
			.npages = 128,
			.psz = self->psz,
			.stop = &stop,
		};
		ASSERT_EQ(0, pthread_create(&files[i], NULL,
					    shm_close_race_files, &r[i]));
	}

	end = time(NULL) + 8;
	do {
		ret = dmirror_req(self->fd, HMM_DMIRROR_RELEASE, va, NULL, 1,
				  &cmd);
		releases++;
	} while ((!ret || ret == -EBUSY) && time(NULL) < end);
	__atomic_store_n(&stop, true, __ATOMIC_RELAXED);
	for (i = 0; i < 2; i++)
		pthread_join(files[i], NULL);
	TH_LOG("%lu releases, %lu + %lu files, %lu + %lu read back", releases,
	       r[0].files, r[1].files, r[0].checked, r[1].checked);
	ASSERT_TRUE(ret == 0 || ret == -EBUSY) TH_LOG("release: %d", ret);
	ASSERT_EQ(0, r[0].err);
	ASSERT_EQ(0, r[1].err);
	ASSERT_LT(0, r[0].checked + r[1].checked);
	ASSERT_EQ(0, munmap(va, self->psz));
}

/* ---------------------------------------------------------------------
 * Features that no case ran end to end before (issue 23, section 5):
 * what a device lock refuses, swapped-out pages, KSM, poisoned pages,
 * and how shmem pages in device memory are accounted.
 */

#include <sys/ptrace.h>
#include <sys/uio.h>

/* Does an access to @p raise SIGSEGV with SEGV_ACCERR at exactly @p? */
static bool cpu_access_segv(void *p, bool write)
{
	__u64 v = 0x5e9f5e9f5e9f5e9fULL;

	return cpu_touch_segv(p, write, &v) == SIGSEGV &&
	       cpu_touch_code == SEGV_ACCERR && cpu_touch_addr == p;
}

/* Is every byte of @p, @len bytes, equal to @c? */
static bool all_bytes(const void *p, size_t len, unsigned char c)
{
	const unsigned char *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		if (b[i] != c)
			return false;
	return true;
}

struct devlock_trace_job {
	char *va;
	size_t psz;
	__u32 seed;	/* 0: the peeks must fail, else what they read */
};

/*
 * Child: attach to the parent with ptrace, PEEKDATA and POKEDATA a word
 * of each page. With the pages locked both fail with EIO; unlocked they
 * read the pattern (and the poke writes back what was there).
 */
static int devlock_trace_child(void *arg)
{
	struct devlock_trace_job *job = arg;
	pid_t parent = getppid();
	int status, ret = 0;
	long word;

	if (ptrace(PTRACE_ATTACH, parent, NULL, NULL))
		return 40;
	if (waitpid(parent, &status, __WALL) != parent || !WIFSTOPPED(status))
		return 41;
	errno = 0;
	word = ptrace(PTRACE_PEEKDATA, parent, job->va + 8, NULL);
	if (!job->seed) {
		if (word != -1 || errno != EIO)
			ret = 42;
		else if (ptrace(PTRACE_POKEDATA, parent, job->va + 8,
				(void *)0x5a5a5a5aL) != -1 || errno != EIO)
			ret = 43;
	} else if (errno || (__u64)word != pat_word(job->seed, 1)) {
		ret = 44;
	} else if (ptrace(PTRACE_POKEDATA, parent, job->va + 8,
			  (void *)word)) {
		ret = 45;
	}
	if (ptrace(PTRACE_DETACH, parent, NULL, NULL))
		return 46;
	return ret;
}

#define DEVLOCK_ODIRECT_OFF	(128 * SZ_1M)	/* unused part of ram0 */
static int devlock_odirect_errno;	/* of the call that went wrong */

/*
 * O_DIRECT I/O between /dev/ram0 and @va: the block layer pins the user
 * pages with get_user_pages(). Returns 0 if both directions fail with
 * EFAULT and the disk block keeps its zeros, 1 if the RAM disk is absent,
 * else a code saying what went wrong.
 */
static int devlock_odirect_refused(char *va, size_t psz)
{
	void *blk;
	int fd, ret = 0;

	fd = open(HMM_SWAPDEV, O_RDWR | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 1 : 50;
	if (posix_memalign(&blk, psz, psz)) {
		close(fd);
		return 51;
	}
	memset(blk, 0, psz);
	if (pwrite(fd, blk, psz, DEVLOCK_ODIRECT_OFF) != (ssize_t)psz)
		ret = 52;
	else if (pwrite(fd, va, psz, DEVLOCK_ODIRECT_OFF) != -1 ||
		 errno != EFAULT)
		ret = 53;
	else if (pread(fd, va, psz, DEVLOCK_ODIRECT_OFF) != -1 ||
		 errno != EFAULT)
		ret = 54;
	else if (pread(fd, blk, psz, DEVLOCK_ODIRECT_OFF) != (ssize_t)psz ||
		 !all_bytes(blk, psz, 0))
		ret = 55;
	if (ret)
		devlock_odirect_errno = errno;
	free(blk);
	close(fd);
	return ret;
}

/*
 * get_user_pages() on locked pages fails, whoever asks: /proc/PID/mem,
 * process_vm_readv()/writev(), O_DIRECT and ptrace all get an error, no
 * byte of the device's data reaches their buffers and nothing they would
 * write reaches the pages. Once unlocked, the same calls work and see the
 * device's data (which shows that the refusals came from the lock).
 */
TEST_F(devlock, gup_refused)
{
	const unsigned long npages = 8;
	size_t psz = self->psz, len = npages * psz;
	struct devlock_trace_job job = { .psz = psz };
	struct iovec local, remote;
	struct hmm_dmirror_cmd cmd;
	char *va, *buf;
	int memfd, ret;

	va = devlock_map_migrated(self->fd, npages, psz, 130);
	ASSERT_NE(NULL, va);
	job.va = va;
	buf = malloc(len);
	ASSERT_NE(NULL, buf);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, locked_pages(self->fd, va, npages));

	/* /proc/self/mem: access_remote_vm() reports nothing done: EIO. */
	memfd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, memfd);
	memset(buf, 0x5a, len);
	ASSERT_EQ(-1, pread(memfd, buf, len, (off_t)(uintptr_t)va));
	ASSERT_EQ(EIO, errno);
	ASSERT_TRUE(all_bytes(buf, len, 0x5a));
	ASSERT_EQ(-1, pwrite(memfd, buf, psz, (off_t)(uintptr_t)va));
	ASSERT_EQ(EIO, errno);

	/* process_vm_readv()/writev() pin the remote pages: EFAULT. */
	local.iov_base = buf;
	local.iov_len = len;
	remote.iov_base = va;
	remote.iov_len = len;
	ASSERT_EQ(-1, process_vm_readv(getpid(), &local, 1, &remote, 1, 0));
	ASSERT_EQ(EFAULT, errno);
	ASSERT_TRUE(all_bytes(buf, len, 0x5a));
	ASSERT_EQ(-1, process_vm_writev(getpid(), &local, 1, &remote, 1, 0));
	ASSERT_EQ(EFAULT, errno);

	ret = devlock_odirect_refused(va, psz);
	if (ret == 1)
		TH_LOG("%s absent: O_DIRECT not checked", HMM_SWAPDEV);
	else if (ret)
		TH_LOG("O_DIRECT step %d: %s", ret,
		       strerror(devlock_odirect_errno));
	if (ret != 1)
		ASSERT_EQ(0, ret);

	ASSERT_EQ(0, in_child(devlock_trace_child, &job));

	/* All the while the pages stayed locked and the data on the device. */
	ASSERT_EQ(npages, locked_pages(self->fd, va, npages));
	memset(buf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, buf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(buf, len, 130, 0));
	/* Read-only: the ptrace child's fork() write-protected them. */
	expect_snap(_metadata, self->fd, va, npages, 0, npages,
		    HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | DEV_RO);

	/* Unlocked, the same calls go through and find the device's data. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	job.seed = 130;
	ASSERT_EQ(0, in_child(devlock_trace_child, &job));
	memset(buf, 0, len);
	ASSERT_EQ((ssize_t)len, pread(memfd, buf, len, (off_t)(uintptr_t)va));
	ASSERT_EQ(-1, pat_find_bad(buf, len, 130, 0));
	memset(buf, 0, len);
	ASSERT_EQ((ssize_t)len,
		  process_vm_readv(getpid(), &local, 1, &remote, 1, 0));
	ASSERT_EQ(-1, pat_find_bad(buf, len, 130, 0));
	ASSERT_EQ(-1, pat_find_bad(va, len, 130, 0));
	close(memfd);
	free(buf);
	munmap(va, len);
}

/*
 * An access that the mapping's protection forbids gets SIGSEGV as on any
 * page; only an allowed access meets the lock (SIGBUS). The lock and the
 * data survive both.
 */
TEST_F(devlock, mprotect_gives_sigsegv)
{
	const unsigned long npages = 8;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *va;

	va = devlock_map_migrated(self->fd, npages, psz, 131);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));

	ASSERT_EQ(0, mprotect(va, len, PROT_NONE));
	ASSERT_TRUE(cpu_access_segv(va + psz + 16, false));
	ASSERT_TRUE(cpu_access_segv(va + 2 * psz + 24, true));
	ASSERT_EQ(0, mprotect(va, len, PROT_READ));
	ASSERT_TRUE(cpu_access_segv(va + 3 * psz + 32, true));
	ASSERT_TRUE(cpu_read_sigbus(va + 3 * psz + 32));
	ASSERT_EQ(npages, locked_pages(self->fd, va, npages));

	ASSERT_EQ(0, mprotect(va, len, PROT_READ | PROT_WRITE));
	ASSERT_TRUE(cpu_write_sigbus(va + 4 * psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(va, len, 131, 0));
	munmap(va, len);
}

/* Child of ends_at_exit: lock pages in device memory and just exit. */
static int devlock_exit_child(void *arg)
{
	const unsigned long npages = 16;
	size_t psz = sysconf(_SC_PAGESIZE);
	long used0 = *(long *)arg;
	struct hmm_dmirror_cmd cmd;
	char *va;
	int fd;

	fd = dmirror_open(0);
	if (fd < 0)
		return 60;
	va = devlock_map_migrated(fd, npages, psz, 132);
	if (!va)
		return 61;
	if (dmirror_req(fd, HMM_DMIRROR_LOCK, va, NULL, npages, &cmd))
		return 62;
	if (locked_pages(fd, va, npages) != (long)npages)
		return 63;
	if (devmem_used(fd) < used0 + (long)npages)
		return 64;
	return 0;	/* no unlock, no munmap, no close */
}

/*
 * The lock ends with the process: its locked device pages are freed at
 * exit (devmem_used is back), and the memory serves the next lock.
 */
TEST_F(devlock, ends_at_exit)
{
	const unsigned long npages = 16;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	long used0, pin0 = vmpin_kb();
	char *va;
	int i;

	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	for (i = 0; i < 3; i++) {
		ASSERT_EQ(0, in_child(devlock_exit_child, &used0));
		ASSERT_EQ(used0, devmem_used(self->fd));
	}
	va = devlock_map_migrated(self->fd, npages, psz, 133);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(pin0 + (long)(len >> 10), vmpin_kb());
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, va, NULL,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 133, 0));
	munmap(va, len);
	ASSERT_EQ(used0, devmem_used(self->fd));
}

struct devlock_cow_job {
	char *va;
	size_t len;
	int pipe_go[2];	/* parent -> child: the parent has written */
};

/* Fork child: wait for the parent's device write, then check our copy. */
static int devlock_cow_child(void *arg)
{
	struct devlock_cow_job *job = arg;
	char c;

	if (read(job->pipe_go[0], &c, 1) != 1)
		return 70;
	return pat_find_bad(job->va, job->len, 134, 0) == -1 ? 0 : 71;
}

/*
 * After fork the locked pages are read-only in both processes: a device
 * write, which needs them writable, fails until the parent unlocks, and
 * changes nothing; device reads go on. After the unlock the write goes
 * to the parent's copy only: the child still reads what was there at
 * fork time.
 */
TEST_F(devlock, device_write_after_fork)
{
	const unsigned long npages = 8;
	size_t psz = self->psz, len = npages * psz;
	struct devlock_cow_job job = { .len = len };
	struct hmm_dmirror_cmd cmd;
	int status, ret;
	char *dbuf;
	pid_t pid;

	job.va = devlock_map_migrated(self->fd, npages, psz, 134);
	ASSERT_NE(NULL, job.va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	ASSERT_EQ(0, pipe(job.pipe_go));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_LOCK, job.va, NULL,
				 npages, &cmd));

	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(devlock_cow_child(&job));

	pat_fill(dbuf, len, 135, 0);
	ret = dmirror_req(self->fd, HMM_DMIRROR_WRITE, job.va, dbuf, npages,
			  &cmd);
	TH_LOG("device write of locked pages after fork: %d (%s)", ret,
	       ret ? strerror(-ret) : "no error");
	ASSERT_NE(0, ret);
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 134, 0));
	ASSERT_EQ(npages, locked_pages(self->fd, job.va, npages));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_UNLOCK, job.va, NULL,
				 npages, &cmd));
	pat_fill(dbuf, len, 135, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, job.va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(job.va, len, 135, 0));

	ASSERT_EQ(1, write(job.pipe_go[1], "g", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	ASSERT_EQ(-1, pat_find_bad(job.va, len, 135, 0));
	free(dbuf);
	munmap(job.va, len);
}

/*
 * MADV_PAGEOUT @va until all of its @len bytes are in swap (smaps Swap),
 * a few tries since pages still on a per-CPU LRU list are skipped.
 * Returns the kB swapped.
 */
static long pageout_all(char *va, size_t len)
{
	long kb = -1;
	int i;

	for (i = 0; i < 10; i++) {
		if (madvise(va, len, MADV_PAGEOUT))
			return -1;
		kb = smaps_kb(va, "Swap");
		if (kb >= (long)(len >> 10))
			break;
		usleep(10000);
	}
	return kb;
}

/*
 * hmm_range_fault() of swapped-out pages: SNAPSHOT (no fault) reports
 * them not present, a device read faults them in from swap and reads
 * the data that was written before they went out; then they are mapped
 * again. @va maps @len bytes of pattern @seed.
 */
static void expect_swapped_read(struct __test_metadata *_metadata, int fd,
				char *va, size_t len, size_t psz, __u32 seed)
{
	unsigned long npages = len / psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	unsigned long i;
	char *dbuf;

	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);
	ASSERT_EQ((long)(len >> 10), pageout_all(va, len));
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_SNAPSHOT, va, snap, npages,
				 &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(HMM_DMIRROR_PROT_NONE, snap[i]);

	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_LE(1, cmd.faults);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, seed, 0));
	ASSERT_EQ(0, smaps_kb(va, "Swap"));
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_SNAPSHOT, va, snap, npages,
				 &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_NE(HMM_DMIRROR_PROT_NONE, snap[i]);
	ASSERT_EQ(-1, pat_find_bad(va, len, seed, 0));
	free(snap);
	free(dbuf);
}

/* Anonymous pages in swap: the device read brings them back intact. */
TEST_F_TIMEOUT(dmirror, swapped_out_anon_read, 120)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	char *va;

	if (access(HMM_SWAPDEV, F_OK))
		SKIP(return, "%s absent: no RAM disk to swap to", HMM_SWAPDEV);
	ASSERT_EQ(0, swap_start(self->psz));
	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	pat_fill(va, len, 140, 0);
	expect_swapped_read(_metadata, self->fd, va, len, self->psz, 140);
	ASSERT_EQ(0, munmap(va, len));
	ASSERT_EQ(0, swapoff(HMM_SWAPDEV));
}

/* Shmem pages in swap: the device read brings them back intact. */
TEST_F_TIMEOUT(dmirror, swapped_out_shmem_read, 120)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	char *va;
	int mfd;

	if (access(HMM_SWAPDEV, F_OK))
		SKIP(return, "%s absent: no RAM disk to swap to", HMM_SWAPDEV);
	ASSERT_EQ(0, swap_start(self->psz));
	mfd = shm_memfd_pattern(len, 141);
	ASSERT_LE(0, mfd);
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	ASSERT_EQ(-1, pat_find_bad(va, len, 141, 0));
	expect_swapped_read(_metadata, self->fd, va, len, self->psz, 141);
	ASSERT_EQ(-1, shm_pread_check(mfd, 0, len, 141));
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
	ASSERT_EQ(0, swapoff(HMM_SWAPDEV));
}

/* Merged pages of this process, from /proc/self/ksm_merging_pages. */
static long ksm_merged_count(void)
{
	return read_num("/proc/self/ksm_merging_pages");
}

/*
 * KSM merges two identical regions A and B page by page. The device reads
 * the merged pages (read-only, shared), migration leaves them where they
 * are, and a device write to A breaks the sharing: A gets the device's
 * data, B keeps its own. A, no longer merged, then migrates as usual.
 */
TEST_F_TIMEOUT(dmirror, ksm_merged_pages, 120)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	char *a, *b, *dbuf;
	long used0, merged = 0;
	unsigned long i;
	time_t end;
	int ret;

	if (access(KSM_SYSFS "run", F_OK))
		SKIP(return, "no KSM (CONFIG_KSM off)");
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	a = anon_map(len, PROT_READ | PROT_WRITE, true);
	b = anon_map(len, PROT_READ | PROT_WRITE, true);
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, a);
	ASSERT_NE(NULL, b);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);
	pat_fill(a, len, 142, 0);
	pat_fill(b, len, 142, 0);
	ASSERT_EQ(0, madvise(a, len, MADV_MERGEABLE));
	ASSERT_EQ(0, madvise(b, len, MADV_MERGEABLE));

	ASSERT_EQ(0, write_str(KSM_SYSFS "sleep_millisecs", "0"));
	ASSERT_EQ(0, write_str(KSM_SYSFS "pages_to_scan", "1000"));
	ASSERT_EQ(0, ksm_run(1));
	for (end = time(NULL) + 60; time(NULL) < end; usleep(20000)) {
		merged = ksm_merged_count();
		if (merged >= (long)(2 * npages))
			break;
	}
	ASSERT_EQ(0, ksm_run(0));
	TH_LOG("%ld of %lu pages merged", merged, 2 * npages);
	ASSERT_EQ((long)(2 * npages), merged);

	/* Merged pages are read-only to the device too. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, a, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 142, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, a, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(DEV_RO, snap[i]);

	/*
	 * Migration leaves KSM pages alone: nothing moves, nothing changes.
	 * (The request itself may succeed: the device hands back what it
	 * mirrors, and it mirrors the merged pages since the read above.)
	 */
	ret = dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, dbuf,
			  npages, &cmd);
	ASSERT_TRUE(ret == 0 || ret == -ENOENT);
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, a, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(DEV_RO, snap[i]);
	ASSERT_EQ((long)(2 * npages), ksm_merged_count());
	ASSERT_EQ(-1, pat_find_bad(a, len, 142, 0));
	ASSERT_EQ(-1, pat_find_bad(b, len, 142, 0));

	/* A device write to A unshares it; B keeps the old data. */
	pat_fill(dbuf, len, 143, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_WRITE, a, dbuf, npages,
				 &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(a, len, 143, 0));
	ASSERT_EQ(-1, pat_find_bad(b, len, 142, 0));
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, b, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 142, 0));

	/* A is ordinary anonymous memory again and migrates. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, a,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 143, 0));
	ASSERT_EQ(used0 + (long)npages, devmem_used(self->fd));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, a,
				 NULL, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(a, len, 143, 0));
	ASSERT_EQ(-1, pat_find_bad(b, len, 142, 0));
	ASSERT_EQ(used0, devmem_used(self->fd));

	ASSERT_EQ(0, ksm_run(2));
	free(snap);
	free(dbuf);
	munmap(a, len);
	munmap(b, len);
}

/*
 * A poisoned page (MADV_HWPOISON, as memory_failure() leaves it) is
 * HMM_PFN_ERROR: SNAPSHOT reports it as an error, a device read that
 * includes it fails with EFAULT, and its neighbours still read and
 * migrate with their data. The page stays poisoned for the rest of the
 * boot: one page of RAM.
 */
TEST_F(dmirror, hwpoison_page_is_error)
{
	const unsigned long npages = 8, bad = 3;
	size_t psz = self->psz, len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	char *va, *dbuf;
	unsigned long i;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	dbuf = malloc(len);
	snap = malloc(npages);
	ASSERT_NE(NULL, va);
	ASSERT_NE(NULL, dbuf);
	ASSERT_NE(NULL, snap);
	pat_fill(va, len, 144, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf, npages,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 144, 0));

	ASSERT_EQ(0, hwpoison_page(va + bad * psz, psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_SNAPSHOT, va, snap,
				 npages, &cmd));
	for (i = 0; i < npages; i++)
		ASSERT_EQ(i == bad ? HMM_DMIRROR_PROT_ERROR : DEV_RW, snap[i]);

	memset(dbuf, 0x5a, len);
	ASSERT_EQ(-EFAULT, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				       npages, &cmd));
	ASSERT_TRUE(all_bytes(dbuf + bad * psz, psz, 0x5a));

	/* The neighbours on either side. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf, bad,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, bad * psz, 144, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ,
				 va + (bad + 1) * psz, dbuf, npages - bad - 1,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, (npages - bad - 1) * psz, 144,
				   (bad + 1) * psz));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
				 va + (bad + 1) * psz, dbuf, npages - bad - 1,
				 &cmd));
	ASSERT_EQ(npages - bad - 1, cmd.cpages);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS,
				 va + (bad + 1) * psz, NULL, npages - bad - 1,
				 &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, bad * psz, 144, 0));
	ASSERT_EQ(-1, pat_find_bad(va + (bad + 1) * psz,
				   (npages - bad - 1) * psz, 144,
				   (bad + 1) * psz));
	free(snap);
	free(dbuf);
	/* munmap() drops the poison entry; the page itself stays retired. */
	munmap(va, len);
}

#define SHM_ACCT_PAGES	256

/*
 * What Documentation/mm/hmm.rst says of shmem pages in device-private
 * memory: the inode counts them as swapped, so the Swap figure of the
 * mapping in /proc/self/smaps shows them, and Rss no longer does (no PTE
 * maps them); when they come back, or a hole punch frees them in device
 * memory, Swap is back to 0. Device-coherent pages stay in the page
 * cache where the CPU maps them: no Swap there.
 */
TEST_F(dmirror, shmem_device_pages_smaps)
{
	const unsigned long npages = SHM_ACCT_PAGES;
	size_t len = npages * self->psz;
	long kb = (long)(len >> 10);
	bool coh = variant->coherent;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	long used0;
	int mfd;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	used0 = devmem_used(self->fd);
	ASSERT_LE(0, used0);
	mfd = shm_memfd_pattern(len, 145);
	ASSERT_LE(0, mfd);
	va = shm_map(mfd, len, MAP_SHARED);
	ASSERT_NE(NULL, va);
	shm_touch(va, len, self->psz);
	ASSERT_EQ(kb, smaps_kb(va, "Rss"));
	ASSERT_EQ(0, smaps_kb(va, "Swap"));

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 145, 0));
	ASSERT_EQ(used0 + (long)npages, devmem_used(self->fd));
	if (coh)
		shm_touch(va, len, self->psz);
	ASSERT_EQ(coh ? 0 : kb, smaps_kb(va, "Swap"));
	ASSERT_EQ(coh ? kb : 0, smaps_kb(va, "Rss"));

	/* Back in system memory: the figures are back too. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 145, 0));
	ASSERT_EQ(0, smaps_kb(va, "Swap"));
	ASSERT_EQ(kb, smaps_kb(va, "Rss"));

	/* Freed in device memory, they leave Swap too. */
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, npages, &cmd));
	ASSERT_EQ(npages, cmd.cpages);
	ASSERT_EQ(0, fallocate(mfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			       0, len));
	ASSERT_EQ(used0, devmem_used(self->fd));
	ASSERT_EQ(0, smaps_kb(va, "Swap"));
	ASSERT_EQ(0, munmap(va, len));
	close(mfd);
	free(dbuf);
}

TEST_HARNESS_MAIN
