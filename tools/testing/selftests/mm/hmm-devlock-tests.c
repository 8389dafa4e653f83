// SPDX-License-Identifier: GPL-2.0
/*
 * HMM selftests: locking pages to device memory (HMM_DMIRROR_LOCK, UNLOCK,
 * LOCK_QUERY). Only device-private memory can be locked, so these cases use
 * units 0 and 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include "../kselftest_harness.h"
#include "hmm-common.h"
#include "hmm-expect.h"

/* ---------------------------------------------------------------------
 * Locking pages to device memory: HMM_DMIRROR_LOCK, UNLOCK, LOCK_QUERY.
 * Only device-private memory can be locked, so these cases use units 0
 * and 1 whatever the variant of the fixture above.
 */

/* VmPin of this process in kB (locked device pages count there), or -1. */
static long vmpin_kb(void)
{
	return proc_field_kb("/proc/self/status", "VmPin");
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
 * Features that no case ran end to end before (issue 23, section 5):
 * what a device lock refuses, swapped-out pages, KSM, poisoned pages,
 * and how shmem pages in device memory are accounted.
 */

/* Does an access to @p raise SIGSEGV with SEGV_ACCERR at exactly @p? */
static bool cpu_access_segv(void *p, bool write)
{
	__u64 v = 0x5e9f5e9f5e9f5e9fULL;

	return cpu_touch_segv(p, write, &v) == SIGSEGV &&
	       cpu_touch_code == SEGV_ACCERR && cpu_touch_addr == p;
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

TEST_HARNESS_MAIN
