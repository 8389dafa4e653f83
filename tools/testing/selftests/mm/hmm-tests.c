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
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "../kselftest_harness.h"
#include <lib/test_hmm_uapi.h>
#include <mm/gup_test.h>

#define SZ_1M		(1024UL * 1024)
#define SZ_1G		(1024 * SZ_1M)

/* Device-side view of one page as SNAPSHOT reports it. */
#define DEV_RW		HMM_DMIRROR_PROT_WRITE
#define DEV_RO		HMM_DMIRROR_PROT_READ

/* ---------------------------------------------------------------------
 * Small helpers: device requests, data patterns, mappings, /proc parsing.
 */

static int dmirror_open(int unit)
{
	char path[32];

	snprintf(path, sizeof(path), "/dev/hmm_dmirror%d", unit);
	return open(path, O_RDWR | O_CLOEXEC);
}

/*
 * Issue one request for @npages pages at @addr, with @data as the
 * device-side buffer. Returns 0 or the negated errno so that tests compare
 * against the errno the ABI documents. The driver copies @cmd back only on
 * success, so the counters are cleared first.
 */
static int dmirror_req(int fd, unsigned long req, void *addr, void *data,
		       unsigned long npages, struct hmm_dmirror_cmd *cmd)
{
	int ret;

	memset(cmd, 0, sizeof(*cmd));
	cmd->addr = (uintptr_t)addr;
	cmd->ptr = (uintptr_t)data;
	cmd->npages = npages;
	do {
		ret = ioctl(fd, req, cmd);
	} while (ret < 0 && errno == EINTR);
	return ret < 0 ? -errno : 0;
}

/*
 * Pattern word number @idx of pattern @seed. The seed sits in the high
 * half so it is never zero for seed != 0 and two seeds never agree; the
 * index is the word's position in the whole buffer, so a page copied to
 * the wrong place is caught as surely as a page not copied at all.
 */
static inline __u64 pat_word(__u32 seed, size_t idx)
{
	return ((__u64)seed << 32) | (__u32)idx;
}

/* Fill @len bytes at @p, which sits at byte @off of its buffer. */
static void pat_fill(void *p, size_t len, __u32 seed, size_t off)
{
	__u64 *w = p;
	size_t base = off / sizeof(*w);
	size_t i;

	for (i = 0; i < len / sizeof(*w); i++)
		w[i] = pat_word(seed, base + i);
}

/* Byte offset from @p of the first wrong word, or -1 if all match. */
static long pat_find_bad(const void *p, size_t len, __u32 seed,
			 size_t off)
{
	const __u64 *w = p;
	size_t base = off / sizeof(*w);
	size_t i;

	for (i = 0; i < len / sizeof(*w); i++)
		if (w[i] != pat_word(seed, base + i))
			return (long)(i * sizeof(*w));
	return -1;
}

static long zero_find_bad(const void *p, size_t len)
{
	const __u64 *w = p;
	size_t i;

	for (i = 0; i < len / sizeof(*w); i++)
		if (w[i])
			return (long)(i * sizeof(*w));
	return -1;
}

/*
 * Anonymous private mapping. @no_thp keeps THP out (and stops the range
 * merging with neighbours that allow it), for cases whose expectations
 * depend on base-page mappings whatever the THP mode is.
 */
static void *anon_map(size_t len, int prot, bool no_thp)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	if (no_thp && madvise(p, len, MADV_NOHUGEPAGE)) {
		munmap(p, len);
		return NULL;
	}
	return p;
}

/* Anonymous read-write mapping of @len bytes starting on an @align boundary. */
static void *anon_map_aligned(size_t len, size_t align)
{
	size_t span = len + align;
	char *raw, *p;

	raw = mmap(NULL, span, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return NULL;
	p = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
	if (p != raw)
		munmap(raw, p - raw);
	munmap(p + len, raw + span - (p + len));
	return p;
}

/* Value in kB of @key in /proc/meminfo, or -1. */
static long meminfo_kb(const char *key)
{
	size_t klen = strlen(key);
	char line[128];
	long val = -1;
	FILE *f;

	f = fopen("/proc/meminfo", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			val = strtol(line + klen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return val;
}

static long read_long_file(const char *path)
{
	char buf[64];
	long val = -1;
	FILE *f;

	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fgets(buf, sizeof(buf), f))
		val = strtol(buf, NULL, 10);
	fclose(f);
	return val;
}

static int write_long_file(const char *path, long val)
{
	FILE *f = fopen(path, "w");
	int ret;

	if (!f)
		return -errno;
	ret = fprintf(f, "%ld\n", val) < 0 ? -EIO : 0;
	if (fclose(f) && !ret)
		ret = -errno;
	return ret;
}

static size_t pmd_size(void)
{
	long v = read_long_file("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");

	return v > 0 ? (size_t)v : 2 * SZ_1M;
}

/*
 * Map @len bytes of PMD-aligned anonymous memory advised for THP and fill
 * it with @seed. Returns NULL when the kernel backed it with base pages
 * (THP off, or no huge page free), which the caller reports as a skip:
 * AnonHugePages must have grown by at least @len for the fill.
 */
static char *thp_map_filled(size_t len, __u32 seed)
{
	long before = meminfo_kb("AnonHugePages");
	long after;
	char *p;

	p = anon_map_aligned(len, pmd_size());
	if (!p)
		return NULL;
	if (madvise(p, len, MADV_HUGEPAGE)) {
		munmap(p, len);
		return NULL;
	}
	pat_fill(p, len, seed, 0);
	after = meminfo_kb("AnonHugePages");
	if (before < 0 || after - before < (long)(len >> 10)) {
		munmap(p, len);
		return NULL;
	}
	return p;
}

/* Temporary file in /tmp holding @len bytes of pattern @seed, unlinked. */
static int tmpfile_with_pattern(size_t len, __u32 seed)
{
	char name[] = "/tmp/hmm-tests-XXXXXX";
	void *src;
	int fd;

	fd = mkstemp(name);
	if (fd < 0)
		return -1;
	unlink(name);
	src = malloc(len);
	if (!src)
		goto err_close;
	pat_fill(src, len, seed, 0);
	if (pwrite(fd, src, len, 0) != (ssize_t)len)
		goto err_free;
	free(src);
	return fd;

err_free:
	free(src);
err_close:
	close(fd);
	return -1;
}

/* Check that @len bytes of @fd from offset 0 hold pattern @seed. */
static long file_find_bad(int fd, size_t len, __u32 seed)
{
	void *buf = malloc(len);
	long bad;

	if (!buf)
		return -2;
	if (pread(fd, buf, len, 0) != (ssize_t)len)
		bad = -3;
	else
		bad = pat_find_bad(buf, len, seed, 0);
	free(buf);
	return bad;
}

/*
 * Run @fn in a child process and return its exit status (128 + signal if
 * it was killed). Children report by exit code: the harness's ASSERT
 * machinery belongs to the test process and must not run in a fork.
 */
static int in_child(int (*fn)(void *), void *arg)
{
	int status;
	pid_t pid;

	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0)
		_exit(fn(arg));
	if (waitpid(pid, &status, 0) != pid)
		return -errno;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}

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
	close(self->peer_fd);
	close(self->fd);
	/* A page still mapped becomes surplus and is freed at exit. */
	if (self->gigantic_borrowed)
		write_long_file(GIGANTIC_NR, 0);
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
	ASSERT_EQ(0x5a5a5a5a5a5a5a5aULL, *(__u64 *)(dbuf + len - 8));

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
	size_t len = 2 * pmd_size();
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
	size_t len = pmd_size();
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
	long nr = read_long_file(GIGANTIC_NR);
	struct hmm_dmirror_cmd cmd;
	unsigned long i, probe;
	unsigned char *snap;
	char *va, *dbuf;

	if (nr < 0)
		SKIP(return, "no 1 GiB hugetlb page size on this machine");
	if (nr == 0) {
		self->gigantic_borrowed = true;
		if (write_long_file(GIGANTIC_NR, 1) ||
		    read_long_file(GIGANTIC_NR) != 1)
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

/*
 * Shared anonymous memory is shmem; whether it may move is up to the
 * kernel (6.12 leaves it in place and reports ENOENT). Either way no data
 * may be lost and the device must keep seeing it.
 */
TEST_F(dmirror, migrate_shared_anon)
{
	const unsigned long npages = 16;
	size_t len = npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	int ret;

	va = mmap(NULL, len, PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 60, 0);

	ret = dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va, dbuf,
			  npages, &cmd);
	if (ret == 0) {
		ASSERT_EQ(npages, cmd.cpages);
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, 60, 0));
	} else {
		ASSERT_EQ(-ENOENT, ret);
	}
	memset(dbuf, 0, len);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 60, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 60, 0));
}

/*
 * A THP region migrates whole (the kernel splits it on the way) and the
 * device can update it in device memory.
 */
TEST_F(dmirror, thp_migrate_round_trip)
{
	size_t len = 2 * pmd_size();
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
	char *va;
	size_t len;
	__u32 seen_seed;
	__u32 new_seed;
};

/* Child side of a COW check: see the old data, then diverge. */
static int cow_job_child(void *arg)
{
	struct cow_job *job = arg;

	if (pat_find_bad(job->va, job->len, job->seen_seed, 0) != -1)
		return 20;
	pat_fill(job->va, job->len, job->new_seed, 0);
	if (pat_find_bad(job->va, job->len, job->new_seed, 0) != -1)
		return 21;
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
	size_t len = pmd_size();
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
	struct cow_job job = { .len = len, .seen_seed = 81, .new_seed = 82 };
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
	int go;
	int ret;
};

static void *unmap_race_thread(void *arg)
{
	struct unmap_race *r = arg;

	while (!__atomic_load_n(&r->go, __ATOMIC_ACQUIRE))
		;
	r->ret = munmap(r->va, r->len);
	return NULL;
}

/*
 * munmap() from another thread while the device reads the range: each
 * read either completes with the right data or fails with EFAULT.
 */
TEST_F(dmirror, munmap_races_device)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct unmap_race race = { .len = len };
	struct hmm_dmirror_cmd cmd;
	pthread_t thread;
	int round, ret, reads;
	char *dbuf;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	for (round = 0; round < 8; round++) {
		race.va = anon_map(len, PROT_READ | PROT_WRITE, false);
		ASSERT_NE(NULL, race.va);
		pat_fill(race.va, len, 300 + round, 0);
		if (round & 1)
			ASSERT_EQ(0, dmirror_req(self->fd,
						 HMM_DMIRROR_MIGRATE_TO_DEV,
						 race.va, dbuf, npages, &cmd));
		__atomic_store_n(&race.go, 0, __ATOMIC_RELEASE);
		ASSERT_EQ(0, pthread_create(&thread, NULL, unmap_race_thread,
					    &race));
		__atomic_store_n(&race.go, 1, __ATOMIC_RELEASE);
		for (reads = 0; reads < 200; reads++) {
			ret = dmirror_req(self->fd, HMM_DMIRROR_READ, race.va,
					  dbuf, npages, &cmd);
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
 * Processes that exit with pages in device memory: the device copes and
 * its memory is reusable afterwards.
 */
TEST_F(dmirror, exit_with_device_pages)
{
	struct exit_job job = {
		.unit = variant->unit, .npages = 512, .psz = self->psz,
	};
	size_t len = job.npages * self->psz;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	int i;

	for (i = 0; i < 2; i++)
		ASSERT_EQ(0, in_child(exit_job_child, &job));

	va = anon_map(len, PROT_READ | PROT_WRITE, false);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 96, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_DEV, va,
				 dbuf, job.npages, &cmd));
	ASSERT_EQ(job.npages, cmd.cpages);
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 96, 0));
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_MIGRATE_TO_SYS, va,
				 NULL, job.npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 96, 0));
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

/* Set by the handler, read after siglongjmp(): plain globals suffice. */
static sigjmp_buf cpu_touch_env;
static sig_atomic_t cpu_touch_sig;
static sig_atomic_t cpu_touch_code;
static void *cpu_touch_addr;

static void cpu_touch_handler(int sig, siginfo_t *si, void *uc)
{
	cpu_touch_sig = sig;
	cpu_touch_code = si->si_code;
	cpu_touch_addr = si->si_addr;
	siglongjmp(cpu_touch_env, 1);
}

/*
 * Load the word at @p into *@val, or store *@val there, with a SIGBUS
 * handler installed. Returns the signal raised (si_code and si_addr in
 * cpu_touch_code/cpu_touch_addr), or 0 if the access went through.
 */
static int cpu_touch(__u64 *p, bool write, __u64 *val)
{
	struct sigaction sa, old;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = cpu_touch_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &old))
		return -1;
	cpu_touch_sig = 0;
	cpu_touch_code = 0;
	cpu_touch_addr = NULL;
	if (!sigsetjmp(cpu_touch_env, 1)) {
		/* Atomic accesses: the compiler may not drop or merge them. */
		if (write)
			__atomic_store_n(p, *val, __ATOMIC_RELAXED);
		else
			*val = __atomic_load_n(p, __ATOMIC_RELAXED);
	}
	sigaction(SIGBUS, &old, NULL);
	return cpu_touch_sig;
}

/* Does a load from @p raise SIGBUS with BUS_ADRERR at exactly @p? */
static bool cpu_read_sigbus(void *p)
{
	__u64 v = 0;

	return cpu_touch(p, false, &v) == SIGBUS &&
	       cpu_touch_code == BUS_ADRERR && cpu_touch_addr == p;
}

static bool cpu_write_sigbus(void *p)
{
	__u64 v = 0xdeadbeefcafef00dULL;

	return cpu_touch(p, true, &v) == SIGBUS &&
	       cpu_touch_code == BUS_ADRERR && cpu_touch_addr == p;
}

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

/* Is /sys/kernel/mm/transparent_hugepage/@file set to [@mode]? */
static bool thp_mode_is(const char *file, const char *mode)
{
	char path[128], buf[256], want[32];
	bool ret = false;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/kernel/mm/transparent_hugepage/%s",
		 file);
	snprintf(want, sizeof(want), "[%s]", mode);
	f = fopen(path, "r");
	if (!f)
		return false;
	if (fgets(buf, sizeof(buf), f))
		ret = !!strstr(buf, want);
	fclose(f);
	return ret;
}

/* CHECK_EXCLUSIVE on pages [from, to) of @va: 0 or -EPERM. */
static int excl_state(int fd, char *va, size_t psz, unsigned long from,
		      unsigned long to)
{
	struct hmm_dmirror_cmd cmd;

	return dmirror_req(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, va + from * psz,
			   NULL, to - from, &cmd);
}

/* Does the device hold exclusive access to every page of [from, to)? */
static bool excl_all(int fd, char *va, size_t psz, unsigned long from,
		     unsigned long to)
{
	unsigned long i;

	for (i = from; i < to; i++)
		if (excl_state(fd, va, psz, i, i + 1) != -EPERM)
			return false;
	return true;
}

/*
 * No madvise: with THP "always" the buffer is THP-backed (checked through
 * AnonHugePages), with "madvise" it is not; EXCLUSIVE must work the same,
 * page by page, either way.
 */
TEST_F(dmirror, exclusive_thp_unadvised)
{
	size_t psz = self->psz, len = 2 * pmd_size();
	unsigned long npages = len / psz;
	long before = meminfo_kb("AnonHugePages");
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

	va = anon_map_aligned(len, pmd_size());
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 120, 0);
	if (thp_mode_is("enabled", "always"))
		ASSERT_LE(before + (long)(len >> 10),
			  meminfo_kb("AnonHugePages"));

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
	size_t len = pmd_size();
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
	size_t psz = self->psz, len = pmd_size();
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
	size_t psz = self->psz, len = pmd_size();
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

#define SHMEM_THP "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

static int shmem_thp_set(const char *mode)
{
	FILE *f = fopen(SHMEM_THP, "w");
	int ret;

	if (!f)
		return -errno;
	ret = fprintf(f, "%s\n", mode) < 0 ? -EIO : 0;
	if (fclose(f) && !ret)
		ret = -errno;
	return ret;
}

/*
 * A huge shmem folio is split like an anonymous THP.  shmem THP is made
 * available for the fill only ("advise" + MADV_HUGEPAGE), then put back.
 */
TEST_F(dmirror, exclusive_shmem_thp)
{
	size_t psz = self->psz, len = pmd_size();
	unsigned long npages = len / psz;
	long before = meminfo_kb("ShmemHugePages");
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	bool advised;
	int mfd;

	if (access(SHMEM_THP, W_OK))
		SKIP(return, "no shmem THP control");
	advised = thp_mode_is("shmem_enabled", "advise");
	if (!advised)
		ASSERT_EQ(0, shmem_thp_set("advise"));
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
		ASSERT_EQ(0, shmem_thp_set("never"));
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
 * struct device (HMM_DMIRROR_DMA_*).  With swiotlb=force on the kernel
 * command line every page bounces, and the data only arrives if the
 * driver maps, syncs and unmaps correctly.
 */

#define SWIOTLB_USED	"/sys/kernel/debug/swiotlb/io_tlb_used"
#define SWIOTLB_SLOT	2048	/* IO_TLB_SIZE */

FIXTURE(hmm_dma) {
	int fd;
	int peer_fd;
	size_t psz;
	bool bounce;	/* swiotlb=force: every mapping must bounce */
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

static bool cmdline_has(const char *word)
{
	char line[4096];
	bool found = false;
	FILE *f;

	f = fopen("/proc/cmdline", "r");
	if (!f)
		return false;
	if (fgets(line, sizeof(line), f))
		found = strstr(line, word);
	fclose(f);
	return found;
}

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
 * second read must see it although nothing was invalidated (with a bounce
 * buffer, only a sync before the device reads makes that true).
 */
TEST_F(hmm_dma, read_write_round_trip)
{
	const unsigned long npages = 64;
	size_t len = npages * self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;

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
	ASSERT_EQ(self->bounce ? npages : 0, st.bounced);

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
 * Bouncing happens exactly when the kernel forces it: every page's DMA
 * address leads to a swiotlb slot, the pool's usage grows by the mapped
 * pages while they stay mapped and drops when an invalidation unmaps them.
 * Without swiotlb=force, dma-direct hands out the pages' own addresses.
 */
TEST_F(hmm_dma, swiotlb_bounce)
{
	const unsigned long npages = 32;
	size_t len = npages * self->psz;
	long slots = npages * (self->psz / SWIOTLB_SLOT);
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	long before, mapped, after;
	char *va, *dbuf;

	va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(va, len, 0xd5, 0);

	before = read_long_file(SWIOTLB_USED);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd5, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(npages, st.mappings);
	if (!self->bounce) {
		ASSERT_EQ(0, st.bounced);
		free(dbuf);
		munmap(va, len);
		return;
	}

	ASSERT_EQ(npages, st.bounced);
	ASSERT_LE(0, before);	/* the pool exists and is reported */
	mapped = read_long_file(SWIOTLB_USED);
	ASSERT_LE(before + slots, mapped);

	/* Device writes land in the slots; only the sync brings them back. */
	pat_fill(dbuf, len, 0xd6, 0);
	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_WRITE, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(va, len, 0xd6, 0));

	ASSERT_EQ(0, munmap(va, len));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	ASSERT_EQ(0, st.mappings);
	ASSERT_EQ(npages, st.unmapped);
	after = read_long_file(SWIOTLB_USED);
	ASSERT_GE(mapped - slots, after);
	free(dbuf);
}

/*
 * A THP is mapped once and reported as one huge mapping when the device
 * takes mappings that large (with swiotlb=force it does not, and every
 * page is mapped on its own).  Splitting the PMD unmaps the huge mapping;
 * the next access maps the split pages one by one.
 */
TEST_F(hmm_dma, thp_one_mapping_per_huge_page)
{
	size_t pmd = pmd_size();
	size_t len = 2 * pmd;
	unsigned long npages = len / self->psz;
	unsigned long per_thp = pmd / self->psz;
	struct hmm_dmirror_dma_stats st;
	struct hmm_dmirror_cmd cmd;
	char *va, *dbuf;
	bool huge;

	va = thp_map_filled(len, 0xd7);
	if (!va)
		SKIP(return, "no THP for a PMD-aligned buffer");
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	ASSERT_EQ(0, dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, va, dbuf,
				 npages, &cmd));
	ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xd7, 0));
	ASSERT_EQ(0, dma_stats(self->fd, &st));
	huge = st.max_mapping >= pmd;
	ASSERT_EQ(!self->bounce, huge);
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
	ASSERT_EQ(self->bounce ? npages : 0, st.bounced);
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
};

static void *dma_race_thread(void *arg)
{
	struct dma_race *r = arg;
	int i;

	while (!__atomic_load_n(&r->go, __ATOMIC_ACQUIRE))
		;
	if (!r->mode) {
		usleep(100);
		r->ret = munmap(r->va, r->len);
		return NULL;
	}
	for (i = 0; !__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE); i++) {
		r->ret = mprotect(r->va, r->len, (i & 1) ?
				  PROT_READ | PROT_WRITE : PROT_READ);
		if (r->ret)
			break;
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
	int round, ret = 0, reads;
	char *dbuf;

	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);

	for (round = 0; round < 8; round++) {
		race.va = anon_map(len, PROT_READ | PROT_WRITE, true);
		ASSERT_NE(NULL, race.va);
		pat_fill(race.va, len, 0xe0 + round, 0);
		__atomic_store_n(&race.go, 0, __ATOMIC_RELEASE);
		ASSERT_EQ(0, pthread_create(&thread, NULL, dma_race_thread,
					    &race));
		__atomic_store_n(&race.go, 1, __ATOMIC_RELEASE);
		for (reads = 0; reads < 200; reads++) {
			ret = dmirror_req(self->fd, HMM_DMIRROR_DMA_READ,
					  race.va, dbuf, npages, &cmd);
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
	pthread_t thread;
	int reads, ret;
	char *dbuf;

	race.va = anon_map(len, PROT_READ | PROT_WRITE, true);
	ASSERT_NE(NULL, race.va);
	dbuf = malloc(len);
	ASSERT_NE(NULL, dbuf);
	pat_fill(race.va, len, 0xe8, 0);

	ASSERT_EQ(0, pthread_create(&thread, NULL, dma_race_thread, &race));
	__atomic_store_n(&race.go, 1, __ATOMIC_RELEASE);
	for (reads = 0; reads < 200; reads++) {
		/* Endless invalidations may outlast the fault timeout. */
		ret = dmirror_req(self->fd, HMM_DMIRROR_DMA_READ, race.va,
				  dbuf, npages, &cmd);
		if (ret == -EBUSY)
			continue;
		ASSERT_EQ(0, ret);
		ASSERT_EQ(-1, pat_find_bad(dbuf, len, 0xe8, 0));
	}
	__atomic_store_n(&race.stop, 1, __ATOMIC_RELEASE);
	ASSERT_EQ(0, pthread_join(thread, NULL));
	ASSERT_EQ(0, race.ret);

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
