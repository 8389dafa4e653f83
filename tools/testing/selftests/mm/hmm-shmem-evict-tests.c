// SPDX-License-Identifier: GPL-2.0
/*
 * HMM selftests: shmem pages in device memory under swap and memory
 * pressure, owner exit, device memory running out, and races of CPU
 * access, hole punching, migration and eviction (RELEASE, close()). None
 * of it depends on the THP mode of anonymous memory.
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
#include <sys/swap.h>

#include "../kselftest_harness.h"
#include "hmm-common.h"
#include "hmm-expect.h"
#include "hmm-fixture.h"

/* Pages of each side of shmem_swap_while_on_device. */
#define SHM_SWAP_FILE	(64 * SZ_1M)	/* the memfd */
#define SHM_SWAP_DEV	(4 * SZ_1M)	/* its head, moved to the device */

/*
 * Memory pressure with part of a file in device memory. The head of a
 * memfd goes to the device, then the rest is written in a memory cgroup
 * far too small for it, so most of it goes to swap on a RAM disk. The
 * device pages are not reclaimed and keep their data, the swapped pages
 * come back intact through read() and the mapping, and swapoff, which
 * walks the page cache of every shmem file, copes with the device entries
 * it finds there and leaves them on the device.
 */
TEST_F_TIMEOUT(hmm, shmem_swap_while_on_device, 600)
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
TEST_F(hmm, shmem_owner_exits)
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
TEST_F_TIMEOUT(hmm, shmem_race_cpu_and_migration, 300)
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
TEST_F(hmm, shmem_migrate_between_devices)
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
TEST_F(hmm, shmem_device_memory_runs_out)
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
TEST_F(hmm, shmem_mprotect_unpopulated)
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
TEST_F_TIMEOUT(hmm, shmem_release_races_cpu, 120)
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
TEST_F_TIMEOUT(hmm, shmem_release_races_close, 120)
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

TEST_HARNESS_MAIN
