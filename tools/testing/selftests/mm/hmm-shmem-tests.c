// SPDX-License-Identifier: GPL-2.0
/*
 * HMM selftests: pages of shmem/tmpfs files in device memory: migration,
 * exclusive access, several mappings and processes, file operations while
 * pages sit on the device. None of it depends on the THP mode of anonymous
 * memory, so the harness runs it once per kernel.
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
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>

#include "../kselftest_harness.h"
#include "hmm-common.h"
#include "hmm-expect.h"
#include "hmm-fixture.h"

/*
 * memfd (shmem) buffer mapped twice: the grant removes both CPU
 * mappings, an access through either revokes it, data is shared.
 */
TEST_F(hmm, exclusive_shmem)
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
TEST_F(hmm, exclusive_shmem_uffd_fork)
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
TEST_F(hmm, exclusive_shmem_thp)
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

/*
 * A memfd range goes to the device and back. There the device rewrites
 * it without faulting, and read() and the mapping see the new data. Pages
 * read() touches come back from device-private memory, the rest
 * MIGRATE_TO_SYS brings back; device-coherent pages are used in place.
 */
TEST_F(hmm, shmem_migrate_round_trip)
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
TEST_F(hmm, shmem_write_only_pages)
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
TEST_F(hmm, shmem_two_processes)
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
TEST_F(hmm, shmem_fd_write_while_on_device)
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

/*
 * Truncating a file frees the pages it drops from device memory. Past the
 * new end of file the mapping gives SIGBUS and the device gets an error;
 * extending the file again reads zeros there, and the part kept is intact.
 */
TEST_F(hmm, shmem_truncate_on_device)
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
TEST_F(hmm, shmem_punch_hole_on_device)
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
TEST_F(hmm, shmem_fork_shared_on_device)
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
TEST_F(hmm, shmem_private_mapping)
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
TEST_F(hmm, shmem_munmap_one_mapping)
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
TEST_F_TIMEOUT(hmm, shmem_large_file, 900)
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
TEST_F(hmm, shmem_not_shmem_refused)
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
TEST_F(hmm, shmem_close_device_fd)
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
TEST_F(hmm, shmem_anon_shared)
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
TEST_F(hmm, shmem_sysv_segment)
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
TEST_F(hmm, shmem_mirrors_follow_the_file)
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
TEST_F(hmm, shmem_huge_folio_stays)
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
TEST_F_TIMEOUT(hmm, shmem_dirty_after_device_write, 600)
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
TEST_F(hmm, shmem_splice_on_device)
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
TEST_F(hmm, shmem_sealed_memfd)
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

#define SHM_ACCT_PAGES	256

/*
 * What Documentation/mm/hmm.rst says of shmem pages in device-private
 * memory: the inode counts them as swapped, so the Swap figure of the
 * mapping in /proc/self/smaps shows them, and Rss no longer does (no PTE
 * maps them); when they come back, or a hole punch frees them in device
 * memory, Swap is back to 0. Device-coherent pages stay in the page
 * cache where the CPU maps them: no Swap there.
 */
TEST_F(hmm, shmem_device_pages_smaps)
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
