// SPDX-License-Identifier: GPL-2.0
/*
 * Concurrency stress, device memory exhaustion and memory pressure for HMM,
 * through the dummy device of lib/test_hmm.c.
 *
 * Stress: several processes, each with several threads, race for a bounded
 * time on one range: CPU and device (HMM_DMIRROR_WRITE) writes, CPU and
 * device reads, migration to device memory and back, munmap and mmap of the
 * same addresses, mprotect, MADV_DONTNEED (a hole punch for shmem, which
 * frees pages wherever they are, device memory included), fork with
 * device pages (the child checks its copy) and HMM_DMIRROR_RELEASE, on 4K
 * pages, THP and shmem.  The range is cut into slots, each with a process-shared rwlock:
 * an operation that changes content (or mappings) holds it for writing, so
 * every page has one writer at a time and an exact expected content, kept
 * as (writer id, generation) per page; operations that keep the content
 * (reads, migrations, fork) share it, so the CPU reads pages while other
 * threads migrate them.  Every read and, at the end, every page is checked
 * word for word.  Afterwards device memory must be back to zero pages in
 * use, HMM_DMIRROR_RELEASE must unplug every chunk (a page reference leaked
 * anywhere would keep its chunk busy) and system memory must not shrink.
 *
 * Besides the slots, each data set has a small lock-free region: every
 * word of it has exactly one writer thread, which stores ever increasing
 * values there without any slot lock while other threads migrate the same
 * pages both ways; each store first checks that the word still holds the
 * writer's previous value, and at the end every word must hold the last
 * value its writer stored (a lost update fails).  Device locks
 * (HMM_DMIRROR_LOCK) and DMA accesses (HMM_DMIRROR_DMA_*) run among the
 * other operations.
 *
 * The race must have happened for a case to pass: every operation counts
 * its outcomes (success and each errno, printed as TAP comments), and
 * migrations are confirmed with HMM_DMIRROR_SNAPSHOT, before and after
 * each successful MIGRATE_TO_DEV / MIGRATE_TO_SYS (pages that moved).  A
 * case fails when fewer pages than a floor moved either way (see
 * check_floors()), when no CPU store of the lock-free region happened
 * while a migration of it was in flight, and, for THP, when
 * /proc/self/smaps shows the range not backed by huge pages or no huge
 * page was migrated.
 *
 * Another case races the death of a shmem inode whose pages sit in device
 * memory with the eviction of that memory (HMM_DMIRROR_RELEASE or close()
 * of the device file); see test_shmem_evict().
 * Another races device writes with the CPU faults that bring the same
 * shmem pages home; see test_shmem_fault_write().
 *
 * With test_hmm's eviction on (devmem_evict), three cases oversubscribe
 * device memory: the 4K race on a device a quarter of the working set
 * (test_oversub()), many threads faulting one device page
 * (test_hot_page()) and teardown while evicting (test_evict_teardown()),
 * for one stress case's share of -s more.
 *
 * Options: -s SECONDS for all stress cases together (default 60), -S SEED,
 * -p PROCESSES, -t THREADS per process, -B MIB adds a case racing on a
 * range of that size (more than one 256 MiB chunk of device memory if
 * above 256), -e runs only the three eviction cases, -r only the race of
 * device writes with CPU faults of shmem pages (test_shmem_fault_write())
 * for all the seconds.  The seed is printed; a run with the same seed
 * makes the same choices, up to the order races allow.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "../kselftest.h"
#include "hmm-common.h"

#define PAGE		((unsigned long)psize())
#define WORDS		(PAGE / sizeof(uint64_t))
#define THP_SIZE	(2UL << 20)
#define MAX_THREADS	16
#define MAX_PROCS	8
/* errno values counted one by one; larger ones share the last counter. */
#define NERR		134
/* Lock-free writer threads per process. */
#define LF_WRITERS	2

enum backing { B_ANON, B_THP, B_SHMEM };

struct expect {
	uint32_t	writer;		/* 0: never written, reads as zero */
	uint32_t	gen;
};

enum op { OP_CPU_WRITE, OP_DEV_WRITE, OP_CPU_READ, OP_DEV_READ, OP_TO_DEV,
	  OP_TO_SYS, OP_DONTNEED, OP_REMAP, OP_MPROTECT, OP_LOCK, OP_DMA_READ,
	  OP_DMA_WRITE, OP_LF_TO_DEV, OP_LF_TO_SYS, OP_FORK, OP_RELEASE,
	  OP_NR };

/*
 * One per data set, shared by the processes using it (MAP_SHARED
 * anonymous memory).  The counters after @why are kept in the first
 * process's copy only (struct stress.g), for all processes of the case.
 */
struct shared {
	pthread_rwlock_t	lock[256];
	struct expect		*exp;		/* nslots * slot_pages */
	unsigned long		ops[OP_NR];
	unsigned long		busy;		/* EBUSY retries */
	unsigned long		errors;
	char			why[256];
	unsigned long		lf_inflight;	/* lock-free region migrating */
	/* Whole case, in the first copy: */
	unsigned long		outcome[OP_NR][NERR];
	unsigned long		tried_dev;	/* pages asked to move, slots */
	unsigned long		tried_sys;
	unsigned long		moved_dev;	/* pages seen to move, slots */
	unsigned long		moved_sys;
	unsigned long		lf_tried_dev;	/* the same, lock-free region */
	unsigned long		lf_tried_sys;
	unsigned long		lf_moved_dev;
	unsigned long		lf_moved_sys;
	unsigned long		lf_stores;
	unsigned long		lf_raced;	/* stores during a migration */
	unsigned long		thp_moved;	/* PMD-mapped pages moved */
	unsigned long		locked;		/* pages locked */
	unsigned long		sigbus;		/* CPU reads of them refused */
	unsigned long		rel_started;	/* HMM_DMIRROR_RELEASE calls */
	unsigned long		rel_done;
};

struct stress {
	enum backing	backing;
	const char	*devpath;
	unsigned long	slot_pages;
	unsigned long	nslots;
	bool		shared_data;	/* shmem: one data set for all */
	int		memfd;
	time_t		deadline;
	uint64_t	seed;
	int		nthreads;
	int		nprocs;
	int		seconds;
	bool		private_dev;	/* device-private: LOCK works */
	bool		big;		/* -B: fill, then all to the device */
	unsigned long	lf_pages;	/* lock-free region */
	int		lf_nwriters;	/* writers sharing its words */
	/* per process */
	int		proc;
	char		*base;
	char		*lf;
	struct shared	*sh;
	struct shared	*g;		/* the case's counters */
	struct expect	*exp;		/* this process's expectations */
};

static const char *const op_names[OP_NR] = {
	"cpu_write", "dev_write", "cpu_read", "dev_read", "to_dev", "to_sys",
	"dontneed", "remap", "mprotect", "lock", "dma_read", "dma_write",
	"lf_to_dev", "lf_to_sys", "fork", "release",
};

/* Out of 1000; fork and release are heavy and global, keep them rare. */
static const int op_weight[OP_NR] = {
	110, 100, 110, 100, 130, 100, 50, 45, 40, 25, 55, 40, 45, 40, 8, 2,
};

/* swiotlb=force on the kernel command line: DMA may be refused. */
static bool dma_may_refuse;

/* Word @w of the page at offset @pgoff as written by (@writer, @gen). */
static uint64_t pattern(uint32_t writer, uint32_t gen, unsigned long pgoff,
			unsigned long w)
{
	uint64_t s = ((uint64_t)writer << 32 | gen) ^ (pgoff << 12 | w);

	if (!writer)
		return 0;
	return rnd_next(&s);
}

static void fill_page(void *p, struct expect e, unsigned long pgoff)
{
	uint64_t *q = p;
	unsigned long w;

	for (w = 0; w < WORDS; w++)
		q[w] = pattern(e.writer, e.gen, pgoff, w);
}

/* Returns the index of the first bad word, or -1. */
static long check_page(const void *p, struct expect e, unsigned long pgoff)
{
	const uint64_t *q = p;
	unsigned long w;

	for (w = 0; w < WORDS; w++)
		if (q[w] != pattern(e.writer, e.gen, pgoff, w))
			return w;
	return -1;
}

static int dmirror(int fd, unsigned long req, void *addr, void *buf,
		   unsigned long npages, uint64_t *cpages)
{
	struct hmm_dmirror_cmd cmd;
	int ret;

	ret = dmirror_req(fd, req, addr, buf, npages, &cmd);
	if (!ret && cpages)
		*cpages = cmd.cpages;
	return ret;
}

/*
 * A device access whose page table walk keeps being invalidated (every
 * change anywhere in the mm invalidates a whole-mm mirror) gives up with
 * EBUSY after a while; a driver retries, and so do we.  A failed write
 * may have written part of the range, so a write is retried until done.
 */
static int dmirror_retry(int fd, unsigned long req, void *addr, void *buf,
			 unsigned long npages, unsigned long *busy)
{
	int ret, tries = 0;

	do {
		ret = dmirror(fd, req, addr, buf, npages, NULL);
		if (ret == -EBUSY)
			__sync_fetch_and_add(busy, 1);
	} while (ret == -EBUSY && ++tries < 30);
	return ret;
}

/* The device number of the device node @devpath, or 0. */
static dev_t dev_rdev(const char *devpath)
{
	struct stat st;

	return stat(devpath, &st) ? 0 : st.st_rdev;
}

static long dev_attr_read(const char *devpath, const char *name)
{
	return devattr_read(dev_rdev(devpath), name);
}

static int dev_attr_write(const char *devpath, const char *name, long v)
{
	return devattr_write(dev_rdev(devpath), name, v);
}

/* ------------------------------------------------------------------ */

static __printf(2, 3) void fail(struct stress *st, const char *fmt, ...)
{
	va_list ap;
	char msg[200];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (__sync_fetch_and_add(&st->sh->errors, 1) == 0)
		snprintf(st->sh->why, sizeof(st->sh->why), "proc %d: %s",
			 st->proc, msg);
	ksft_print_msg("proc %d: %s\n", st->proc, msg);
}

static size_t slot_bytes(struct stress *st)
{
	return st->slot_pages * PAGE;
}

static char *slot_addr(struct stress *st, unsigned long slot)
{
	return st->base + slot * slot_bytes(st);
}

static struct expect *slot_exp(struct stress *st, unsigned long slot)
{
	return st->exp + slot * st->slot_pages;
}

/* Map (or map again at @at) slots of the range; shmem maps the memfd. */
static void *map_range(struct stress *st, void *at, size_t len, off_t off)
{
	int flags = at ? MAP_FIXED : 0;

	if (st->backing == B_SHMEM)
		return mmap(at, len, PROT_READ | PROT_WRITE,
			    flags | MAP_SHARED, st->memfd, off);
	return mmap(at, len, PROT_READ | PROT_WRITE,
		    flags | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

static int check_slot(struct stress *st, unsigned long slot, const char *buf,
		      const char *what)
{
	struct expect *e = slot_exp(st, slot);
	unsigned long i;

	for (i = 0; i < st->slot_pages; i++) {
		unsigned long pgoff = slot * st->slot_pages + i;
		long w = check_page(buf + i * PAGE, e[i], pgoff);

		if (w >= 0) {
			fail(st, "%s: page %lu word %ld is %#llx, expected writer %u gen %u",
			     what, pgoff, w,
			     (unsigned long long)((uint64_t *)(buf + i * PAGE))[w],
			     e[i].writer, e[i].gen);
			return -1;
		}
	}
	return 0;
}

/* Success, or one of the errors of the zero-terminated list @ok. */
static bool err_in(int err, const int *ok)
{
	if (!err)
		return true;
	for (; *ok; ok++)
		if (err == *ok)
			return true;
	return false;
}

/*
 * A migration may find pages it cannot move (locked or pinned by a racing
 * thread, or zapped from the device page table by a racing invalidation
 * before they could be read back): -ENOENT then says "not all in device
 * memory", which is a legitimate outcome.  -ENOMEM too while a racing
 * HMM_DMIRROR_RELEASE is unplugging the device memory: chunks being
 * drained hand out no pages and still count against the device's chunk
 * limit (a coherent device has one chunk only).  Whatever the outcome,
 * the data is checked by later reads.
 */
static const int ok_to_dev[] = { -ENOENT, -ENOMEM, 0 };
static const int ok_release[] = { -EBUSY, 0 };
static const int ok_none[] = { 0 };

struct worker {
	struct stress	*st;
	int		id;		/* writer id: proc * MAX_THREADS + t + 1 */
	int		fd;
	uint64_t	rnd;
	char		*buf;
	unsigned char	*pre, *post;	/* SNAPSHOT states */
	unsigned long	ops[OP_NR];
	uint32_t	gen;
	pthread_barrier_t *start;	/* all threads created */
};

/* Count one outcome of @op: 0 or a negative errno. */
static void tally(struct stress *st, enum op which, int ret)
{
	int e = ret < 0 ? -ret : 0;

	__sync_fetch_and_add(&st->g->outcome[which][e < NERR ? e : NERR - 1],
			     1);
}

static bool state_on_dev(unsigned char s)
{
	return s != HMM_DMIRROR_PROT_ERROR &&
	       ((s & 0xf0) == HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL ||
		(s & 0xf0) == HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL);
}

/* In system memory: mapped there, or (shmem) only in the page cache. */
static bool state_in_sys(unsigned char s)
{
	return s != HMM_DMIRROR_PROT_ERROR && !(s & 0xe0);
}

/* SNAPSHOT of @npages at @addr into @states; false if it failed. */
static bool snap(struct worker *wk, void *addr, unsigned long npages,
		 unsigned char *states)
{
	return !dmirror_retry(wk->fd, HMM_DMIRROR_SNAPSHOT, addr, states,
			      npages, &wk->st->sh->busy);
}

/*
 * Pages that a successful migration of @npages at @addr was seen to move:
 * in the other memory before (wk->pre), in the wanted one after.  Huge
 * pages moved (PMD-mapped before) are added to *@thp.
 */
static unsigned long moved(struct worker *wk, void *addr,
			   unsigned long npages, bool to_dev,
			   unsigned long *thp)
{
	unsigned long i, n = 0;

	if (!snap(wk, addr, npages, wk->post))
		return 0;
	for (i = 0; i < npages; i++) {
		bool from = to_dev ? state_in_sys(wk->pre[i]) :
				     state_on_dev(wk->pre[i]);
		bool to = to_dev ? state_on_dev(wk->post[i]) :
				   state_in_sys(wk->post[i]);

		if (from && to) {
			n++;
			if (wk->pre[i] & HMM_DMIRROR_PROT_PMD)
				(*thp)++;
		}
	}
	return n;
}

enum write_by { BY_CPU, BY_DEV, BY_DMA };

static int op_write(struct worker *wk, unsigned long slot, enum write_by by)
{
	struct stress *st = wk->st;
	struct expect *e = slot_exp(st, slot);
	char *dst = by == BY_CPU ? slot_addr(st, slot) : wk->buf;
	unsigned long i;
	int ret;

	wk->gen++;
	for (i = 0; i < st->slot_pages; i++) {
		e[i].writer = wk->id;
		e[i].gen = wk->gen;
		fill_page(dst + i * PAGE, e[i], slot * st->slot_pages + i);
	}
	if (by == BY_CPU)
		return 0;
	ret = dmirror_retry(wk->fd, by == BY_DEV ? HMM_DMIRROR_WRITE :
			    HMM_DMIRROR_DMA_WRITE, slot_addr(st, slot),
			    wk->buf, st->slot_pages, &st->sh->busy);
	if (ret == -EOPNOTSUPP && by == BY_DMA && dma_may_refuse) {
		/* Refused before touching anything: the CPU writes instead. */
		memcpy(slot_addr(st, slot), wk->buf, slot_bytes(st));
		return ret;
	}
	if (ret)
		fail(st, "HMM_DMIRROR_%sWRITE slot %lu: %s",
		     by == BY_DMA ? "DMA_" : "", slot, strerror(-ret));
	return ret;
}

static int op_dev_read(struct worker *wk, unsigned long slot)
{
	int ret = dmirror_retry(wk->fd, HMM_DMIRROR_READ,
				slot_addr(wk->st, slot), wk->buf,
				wk->st->slot_pages, &wk->st->sh->busy);

	if (ret)
		fail(wk->st, "HMM_DMIRROR_READ slot %lu: %s", slot,
		     strerror(-ret));
	else
		check_slot(wk->st, slot, wk->buf, "device read");
	return ret;
}

/*
 * The device reads the slot through DMA addresses; now and then the
 * window's statistics are checked for sanity and its mappings dropped.
 */
static int op_dma_read(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	struct hmm_dmirror_dma_stats ds = {};
	char *a = slot_addr(st, slot);
	uint64_t n = 0;
	int ret;

	ret = dmirror_retry(wk->fd, HMM_DMIRROR_DMA_READ, a, wk->buf,
			    st->slot_pages, &st->sh->busy);
	if (ret == -EOPNOTSUPP && dma_may_refuse)
		return ret;
	if (ret) {
		fail(st, "HMM_DMIRROR_DMA_READ slot %lu: %s", slot,
		     strerror(-ret));
		return ret;
	}
	check_slot(st, slot, wk->buf, "dma read");
	if (rnd_next(&wk->rnd) % 4)
		return 0;
	if (dmirror(wk->fd, HMM_DMIRROR_DMA_STATS, a, &ds, 1, NULL) ||
	    ds.mapped_pages > st->slot_pages || ds.local > st->slot_pages)
		fail(st, "HMM_DMIRROR_DMA_STATS slot %lu: %llu pages mapped, %llu local",
		     slot, (unsigned long long)ds.mapped_pages,
		     (unsigned long long)ds.local);
	if (dmirror(wk->fd, HMM_DMIRROR_DMA_UNMAP, a, NULL, 1, &n) ||
	    n > st->slot_pages)
		fail(st, "HMM_DMIRROR_DMA_UNMAP slot %lu: %llu mappings", slot,
		     (unsigned long long)n);
	return 0;
}

static int op_to_dev(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	char *a = slot_addr(st, slot);
	bool pre = snap(wk, a, st->slot_pages, wk->pre);
	int ret = dmirror(wk->fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, wk->buf,
			  st->slot_pages, NULL);

	__sync_fetch_and_add(&st->g->tried_dev, st->slot_pages);

	if (!err_in(ret, ok_to_dev)) {
		fail(st, "MIGRATE_TO_DEV slot %lu: %s", slot, strerror(-ret));
		return ret;
	}
	if (!ret)
		check_slot(st, slot, wk->buf, "migrate to device");
	/* ENOENT: some pages stayed behind, the others moved. */
	if (pre && ret != -ENOMEM)
		__sync_fetch_and_add(&st->g->moved_dev,
				     moved(wk, a, st->slot_pages, true,
					   &st->g->thp_moved));
	return ret;
}

/* Pages of the last snapshot (wk->pre) that are in our device memory. */
static unsigned long pre_on_dev(struct worker *wk, unsigned long npages)
{
	unsigned long i, n = 0;

	for (i = 0; i < npages; i++)
		n += state_on_dev(wk->pre[i]);
	return n;
}

/*
 * Most pages come back through CPU faults before a MIGRATE_TO_SYS finds
 * them: with nothing of the slot on the device, move it there first, so
 * that the way back is exercised (and counted) as often as the way there.
 */
static int op_to_sys(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	char *a = slot_addr(st, slot);
	bool pre = snap(wk, a, st->slot_pages, wk->pre);
	int ret;

	if (pre && !pre_on_dev(wk, st->slot_pages)) {
		op_to_dev(wk, slot);
		pre = snap(wk, a, st->slot_pages, wk->pre);
	}
	ret = dmirror(wk->fd, HMM_DMIRROR_MIGRATE_TO_SYS, a, NULL,
		      st->slot_pages, NULL);
	__sync_fetch_and_add(&st->g->tried_sys, st->slot_pages);

	if (ret)
		fail(st, "MIGRATE_TO_SYS slot %lu: %s", slot, strerror(-ret));
	else if (pre)
		__sync_fetch_and_add(&st->g->moved_sys,
				     moved(wk, a, st->slot_pages, false,
					   &st->g->thp_moved));
	return ret;
}

/* New pages: zero for anonymous memory, the file's data for shmem. */
static void forget_slot(struct stress *st, unsigned long slot)
{
	if (st->backing != B_SHMEM)
		memset(slot_exp(st, slot), 0,
		       st->slot_pages * sizeof(struct expect));
}

/*
 * Drop the slot's pages. MADV_DONTNEED only unmaps shmem, so shmem punches
 * a hole in the file instead: every process then reads zeroes there.
 */
static int op_dontneed(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;

	if (st->backing == B_SHMEM) {
		if (fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE |
			      FALLOC_FL_KEEP_SIZE, slot * slot_bytes(st),
			      slot_bytes(st))) {
			fail(st, "hole punch slot %lu: %s", slot,
			     strerror(errno));
			return -errno;
		}
		memset(slot_exp(st, slot), 0,
		       st->slot_pages * sizeof(struct expect));
		return 0;
	}
	if (madvise(slot_addr(st, slot), slot_bytes(st), MADV_DONTNEED)) {
		fail(st, "MADV_DONTNEED slot %lu: %s", slot, strerror(errno));
		return -errno;
	}
	forget_slot(st, slot);
	return 0;
}

static int op_remap(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	char *a = slot_addr(st, slot);

	if (munmap(a, slot_bytes(st))) {
		fail(st, "munmap slot %lu: %s", slot, strerror(errno));
		return -errno;
	}
	/* The addresses are free now; nobody else maps into our range. */
	if (map_range(st, a, slot_bytes(st), slot * slot_bytes(st)) != a) {
		fail(st, "mmap slot %lu again: %s", slot, strerror(errno));
		return -errno;
	}
	if (st->backing == B_THP)
		madvise(a, slot_bytes(st), MADV_HUGEPAGE);
	forget_slot(st, slot);
	return 0;
}

/* Read-only for a moment: device writes must fail, reads still work. */
static int op_mprotect(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	char *a = slot_addr(st, slot);
	int ret;

	if (mprotect(a, slot_bytes(st), PROT_READ)) {
		fail(st, "mprotect slot %lu: %s", slot, strerror(errno));
		return -errno;
	}
	memcpy(wk->buf, a, slot_bytes(st));
	ret = dmirror_retry(wk->fd, HMM_DMIRROR_WRITE, a, wk->buf,
			    st->slot_pages, &st->sh->busy);
	if (ret != -EPERM)
		fail(st, "HMM_DMIRROR_WRITE to read-only slot %lu: %s", slot,
		     ret ? strerror(-ret) : "succeeded");
	op_dev_read(wk, slot);
	if (mprotect(a, slot_bytes(st), PROT_READ | PROT_WRITE))
		fail(st, "mprotect slot %lu back: %s", slot, strerror(errno));
	return ret;
}

/* Set while this thread expects its CPU read to raise SIGBUS. */
/* HMM_DMIRROR_RELEASE calls started (odd bit: one is running). */
static unsigned long release_epoch(struct stress *st)
{
	unsigned long done = __atomic_load_n(&st->g->rel_done,
					     __ATOMIC_SEQ_CST);
	unsigned long started = __atomic_load_n(&st->g->rel_started,
						__ATOMIC_SEQ_CST);

	return started << 1 | (started != done);
}

/*
 * No HMM_DMIRROR_RELEASE ran since @epoch was read: none started since,
 * and none was running then.  The odd bit cannot tell a release that runs
 * all along from none at all, and such a release evicts (so unlocks) what
 * is locked meanwhile, so one running at @epoch counts.
 */
static bool release_quiet(struct stress *st, unsigned long epoch)
{
	return !(epoch & 1) && epoch == release_epoch(st);
}

/* Locked pages of the slot as HMM_DMIRROR_LOCK_QUERY reports them. */
static long locked_pages(struct worker *wk, char *a)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)a, .ptr = (uintptr_t)wk->post,
		.npages = wk->st->slot_pages,
	};

	if (ioctl(wk->fd, HMM_DMIRROR_LOCK_QUERY, &cmd))
		return -errno;
	return cmd.faults;
}

/* UNLOCK did not unlock the whole slot: say where its pages went. */
static void unlock_failed(struct worker *wk, unsigned long slot, int ret,
			  uint64_t n)
{
	struct stress *st = wk->st;
	unsigned long on = 0;

	if (snap(wk, slot_addr(st, slot), st->slot_pages, wk->pre))
		on = pre_on_dev(wk, st->slot_pages);
	fail(st, "HMM_DMIRROR_UNLOCK slot %lu: %s, %llu of %lu unlocked, %lu on device",
	     slot, ret ? strerror(-ret) : "ok", (unsigned long long)n,
	     st->slot_pages, on);
}

/*
 * Lock the slot to device memory: the CPU must get SIGBUS, the device
 * still reads the data, LOCK_QUERY sees every page locked until UNLOCK.
 * Every check is exact unless an HMM_DMIRROR_RELEASE ran meanwhile (it
 * evicts locked pages too).  Coherent memory refuses with EOPNOTSUPP;
 * shmem with EFAULT (see below).
 */
static int op_lock(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	unsigned long np = st->slot_pages, on = 0, epoch;
	char *a = slot_addr(st, slot);
	uint64_t n = 0;
	long q;
	int ret;

	if (!st->private_dev) {
		ret = dmirror(wk->fd, HMM_DMIRROR_LOCK, a, NULL, np, NULL);
		if (ret != -EOPNOTSUPP ||
		    locked_pages(wk, a) != -EOPNOTSUPP)
			fail(st, "HMM_DMIRROR_LOCK on coherent memory: %s",
			     ret ? strerror(-ret) : "succeeded");
		return ret;
	}
	epoch = release_epoch(st);
	ret = dmirror(wk->fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, wk->buf, np, NULL);
	if (!err_in(ret, ok_to_dev))
		fail(st, "MIGRATE_TO_DEV slot %lu: %s", slot, strerror(-ret));
	if (snap(wk, a, np, wk->pre))
		on = pre_on_dev(wk, np);
	ret = dmirror(wk->fd, HMM_DMIRROR_LOCK, a, NULL, np, NULL);
	if (ret) {
		/*
		 * Only pages all in our memory can be locked, and only through
		 * page tables: shmem pages in device memory are in the page
		 * cache only, so shmem always gets EFAULT.
		 */
		if (ret != -EFAULT || (on == np && release_quiet(st, epoch) &&
				       st->backing != B_SHMEM))
			fail(st, "HMM_DMIRROR_LOCK slot %lu, %lu of %lu pages on the device: %s",
			     slot, on, np, strerror(-ret));
		return ret;
	}
	if (on != np && release_quiet(st, epoch))
		fail(st, "HMM_DMIRROR_LOCK slot %lu succeeded with %lu of %lu pages on the device",
		     slot, on, np);
	__sync_fetch_and_add(&st->g->locked, np);
	q = locked_pages(wk, a);
	if (cpu_read_sigbus((uint64_t *)(a + (rnd_next(&wk->rnd) % np) * PAGE)))
		__sync_fetch_and_add(&st->g->sigbus, 1);
	else if (release_quiet(st, epoch))
		fail(st, "CPU read of locked slot %lu: no SIGBUS", slot);
	if (q != (long)np && release_quiet(st, epoch))
		fail(st, "HMM_DMIRROR_LOCK_QUERY slot %lu: %ld of %lu locked",
		     slot, q, np);
	op_dev_read(wk, slot);
	ret = dmirror(wk->fd, HMM_DMIRROR_UNLOCK, a, NULL, np, &n);
	if (ret || (n != np && release_quiet(st, epoch)))
		unlock_failed(wk, slot, ret, n);
	q = locked_pages(wk, a);
	if (q)
		fail(st, "HMM_DMIRROR_LOCK_QUERY slot %lu after unlock: %ld locked",
		     slot, q);
	return 0;
}

/*
 * fork with the slot in device memory: the child must see the content of
 * the fork, from the CPU and through its own device file; the parent's
 * copy is checked by the caller's next operations.
 */
static int op_fork(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	int status;
	pid_t pid;

	dmirror(wk->fd, HMM_DMIRROR_MIGRATE_TO_DEV, slot_addr(st, slot),
		wk->buf, st->slot_pages, NULL);
	pid = fork();
	if (pid < 0) {
		fail(st, "fork: %s", strerror(errno));
		return -errno;
	}
	if (!pid) {
		int fd = open(st->devpath, O_RDWR);
		int bad = 0;

		if (fd < 0 || dmirror(fd, HMM_DMIRROR_READ, slot_addr(st, slot),
				      wk->buf, st->slot_pages, NULL))
			_exit(2);
		bad |= check_slot(st, slot, wk->buf, "child device read");
		bad |= check_slot(st, slot, slot_addr(st, slot), "child cpu");
		_exit(bad ? 1 : 0);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		fail(st, "forked child checking slot %lu: status %#x", slot,
		     status);
	return 0;
}

static int op_release(struct worker *wk)
{
	struct stress *st = wk->st;
	int ret;

	__sync_fetch_and_add(&st->g->rel_started, 1);
	ret = dmirror(wk->fd, HMM_DMIRROR_RELEASE, st->base, NULL, 1, NULL);
	__sync_fetch_and_add(&st->g->rel_done, 1);
	if (!err_in(ret, ok_release))
		fail(st, "HMM_DMIRROR_RELEASE: %s", strerror(-ret));
	return ret;
}

/* ------------------------------------------------------------------ */
/* The lock-free region: one writer per word, no slot lock. */

/* What word @i of the region holds after its writer's store number @seq. */
static uint64_t lf_value(unsigned long i, uint32_t seq)
{
	return seq ? (uint64_t)(i + 1) << 32 | seq : 0;
}

/* Writer (0 .. lf_nwriters - 1) of word @w of page @p. */
static int lf_owner(struct stress *st, unsigned long p, unsigned long w)
{
	return (p + w) % st->lf_nwriters;
}

struct lf_writer {
	struct stress	*st;
	int		idx;		/* among all writers of the region */
	uint64_t	rnd;
	uint32_t	*last;		/* per word: last store number */
	unsigned long	stores, raced;
	pthread_barrier_t *start;	/* all threads created */
};

/*
 * Store to our words of one page after another; each store first checks
 * that the word still holds our previous value: a migration that copied
 * the page before our store reached it and then mapped the copy would
 * lose it.  Stores made while a migration of the region is in flight are
 * counted, to show that the race took place.
 */
static void *lf_writer_main(void *arg)
{
	struct lf_writer *lw = arg;
	struct stress *st = lw->st;

	pthread_barrier_wait(lw->start);
	unsigned long n = 0;

	while (time(NULL) < st->deadline && !st->sh->errors) {
		unsigned long p = rnd_next(&lw->rnd) % st->lf_pages, w;
		uint64_t *q = (uint64_t *)(st->lf + p * PAGE);

		for (w = 0; w < WORDS; w++) {
			unsigned long i = p * WORDS + w;
			uint64_t v;

			if (lf_owner(st, p, w) != lw->idx)
				continue;
			v = __atomic_load_n(&q[w], __ATOMIC_RELAXED);
			if (v != lf_value(i, lw->last[i])) {
				fail(st, "lock-free page %lu word %lu: %#llx, stored %#llx",
				     p, w, (unsigned long long)v,
				     (unsigned long long)lf_value(i, lw->last[i]));
				return NULL;
			}
			__atomic_store_n(&q[w], lf_value(i, ++lw->last[i]),
					 __ATOMIC_RELAXED);
			lw->stores++;
			if (__atomic_load_n(&st->sh->lf_inflight,
					    __ATOMIC_RELAXED))
				lw->raced++;
		}
		/*
		 * Leave most of the CPUs to the migrating threads, and now
		 * and then a quiet while in which migrations to the device
		 * can stay there long enough to be migrated back.
		 */
		usleep(++n % 32 ? 100 : 2000);
	}
	return NULL;
}

/* Every word of @buf (the whole region) is zero or carries its index. */
static void lf_check_tags(struct stress *st, const uint64_t *buf,
			  unsigned long first, unsigned long npages)
{
	unsigned long i;

	for (i = 0; i < npages * WORDS; i++) {
		unsigned long idx = first * WORDS + i;

		if (buf[i] && buf[i] >> 32 != idx + 1) {
			fail(st, "lock-free page %lu word %lu read by the device as %#llx",
			     idx / WORDS, idx % WORDS,
			     (unsigned long long)buf[i]);
			return;
		}
	}
}

/*
 * Migrate the whole region or one page of it, while the writers store.
 * MIGRATE_TO_DEV hands back what it moved, in which every word must at
 * least be one its writer stored there.
 */
static int lf_migrate(struct worker *wk, unsigned long first,
		      unsigned long np, bool to_dev, bool pre)
{
	struct stress *st = wk->st;
	unsigned long *count = to_dev ? &st->g->lf_moved_dev :
					&st->g->lf_moved_sys;
	char *a = st->lf + first * PAGE;
	int ret;

	__sync_fetch_and_add(&st->sh->lf_inflight, 1);
	ret = dmirror(wk->fd, to_dev ? HMM_DMIRROR_MIGRATE_TO_DEV :
		      HMM_DMIRROR_MIGRATE_TO_SYS, a, wk->buf, np, NULL);
	__sync_fetch_and_sub(&st->sh->lf_inflight, 1);
	__sync_fetch_and_add(to_dev ? &st->g->lf_tried_dev :
			     &st->g->lf_tried_sys, np);
	if (!err_in(ret, to_dev ? ok_to_dev : ok_none)) {
		fail(st, "lock-free MIGRATE_TO_%s: %s", to_dev ? "DEV" : "SYS",
		     strerror(-ret));
		return ret;
	}
	if (!ret && to_dev)
		lf_check_tags(st, (uint64_t *)wk->buf, first, np);
	if (pre && (!ret || ret == -ENOENT))
		__sync_fetch_and_add(count, moved(wk, a, np, to_dev,
						  &st->g->thp_moved));
	return ret;
}

/* As op_to_sys(), the way back starts with the way there if need be. */
static int op_lf_migrate(struct worker *wk, bool to_dev)
{
	struct stress *st = wk->st;
	unsigned long first = 0, np = st->lf_pages;
	char *a;
	bool pre;

	if (rnd_next(&wk->rnd) % 2) {
		first = rnd_next(&wk->rnd) % np;
		np = 1;
	}
	a = st->lf + first * PAGE;
	pre = snap(wk, a, np, wk->pre);
	if (!to_dev && pre && !pre_on_dev(wk, np)) {
		lf_migrate(wk, first, np, true, pre);
		pre = snap(wk, a, np, wk->pre);
	}
	return lf_migrate(wk, first, np, to_dev, pre);
}

/* After the race: every word holds the last value its writer stored. */
static void lf_final_check(struct stress *st, struct lf_writer *lw, int n,
			   const uint64_t *dev)
{
	unsigned long i;
	int k;

	for (k = 0; k < n; k++) {
		for (i = 0; i < st->lf_pages * WORDS; i++) {
			uint64_t want = lf_value(i, lw[k].last[i]);
			uint64_t cpu = ((uint64_t *)st->lf)[i];

			if (lf_owner(st, i / WORDS, i % WORDS) != lw[k].idx)
				continue;
			if (cpu != want || dev[i] != want) {
				fail(st, "lock-free page %lu word %lu: %#llx/%#llx, stored %#llx",
				     i / WORDS, i % WORDS,
				     (unsigned long long)cpu,
				     (unsigned long long)dev[i],
				     (unsigned long long)want);
				return;
			}
		}
	}
}

/* ------------------------------------------------------------------ */

static enum op pick_op(struct worker *wk)
{
	int r = rnd_next(&wk->rnd) % 1000, op;

	for (op = 0; op < OP_NR - 1; op++) {
		r -= op_weight[op];
		if (r < 0)
			break;
	}
	return op;
}

static int do_op(struct worker *wk, enum op which, unsigned long slot)
{
	struct stress *st = wk->st;

	switch (which) {
	case OP_CPU_WRITE:
		return op_write(wk, slot, BY_CPU);
	case OP_DEV_WRITE:
		return op_write(wk, slot, BY_DEV);
	case OP_DMA_WRITE:
		return op_write(wk, slot, BY_DMA);
	case OP_CPU_READ:
		check_slot(st, slot, slot_addr(st, slot), "cpu read");
		return 0;
	case OP_DEV_READ:
		return op_dev_read(wk, slot);
	case OP_DMA_READ:
		return op_dma_read(wk, slot);
	case OP_TO_DEV:
		return op_to_dev(wk, slot);
	case OP_TO_SYS:
		return op_to_sys(wk, slot);
	case OP_DONTNEED:
		return op_dontneed(wk, slot);
	case OP_REMAP:
		return op_remap(wk, slot);
	case OP_MPROTECT:
		return op_mprotect(wk, slot);
	case OP_LOCK:
		return op_lock(wk, slot);
	case OP_LF_TO_DEV:
	case OP_LF_TO_SYS:
		return op_lf_migrate(wk, which == OP_LF_TO_DEV);
	case OP_FORK:
		return op_fork(wk, slot);
	default:
		return op_release(wk);
	}
}

/* Operations that change content or mappings take the slot exclusively. */
static bool op_changes_slot(enum op op)
{
	return op == OP_CPU_WRITE || op == OP_DEV_WRITE ||
	       op == OP_DMA_WRITE || op == OP_DONTNEED || op == OP_REMAP ||
	       op == OP_MPROTECT || op == OP_LOCK;
}

/* Release and the lock-free region take no slot lock at all. */
static bool op_lockless(enum op op)
{
	return op == OP_RELEASE || op == OP_LF_TO_DEV || op == OP_LF_TO_SYS;
}

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	struct stress *st = wk->st;

	pthread_barrier_wait(wk->start);
	while (time(NULL) < st->deadline && !st->sh->errors) {
		/*
		 * Every worker starts with a round trip of a slot and of the
		 * lock-free region, so that even a slow kernel, which runs few
		 * operations, tries both ways.
		 */
		enum op op = !wk->ops[OP_TO_SYS] ? OP_TO_SYS :
			     !wk->ops[OP_LF_TO_SYS] ? OP_LF_TO_SYS :
			     pick_op(wk);
		unsigned long slot = rnd_next(&wk->rnd) % st->nslots;
		pthread_rwlock_t *lock = &st->sh->lock[slot];
		int ret;

		if (op_lockless(op)) {
			ret = do_op(wk, op, 0);
		} else {
			if (op_changes_slot(op))
				pthread_rwlock_wrlock(lock);
			else
				pthread_rwlock_rdlock(lock);
			ret = do_op(wk, op, slot);
			pthread_rwlock_unlock(lock);
		}
		tally(st, op, ret);
		wk->ops[op]++;
	}
	return NULL;
}

/* Every page, from the CPU and through a device, after the race. */
static void final_check(struct stress *st, int fd, char *buf)
{
	unsigned long slot;

	for (slot = 0; slot < st->nslots && !st->sh->errors; slot++) {
		if (dmirror(fd, HMM_DMIRROR_READ, slot_addr(st, slot), buf,
			    st->slot_pages, NULL))
			fail(st, "final device read of slot %lu", slot);
		else
			check_slot(st, slot, buf, "final device read");
		check_slot(st, slot, slot_addr(st, slot), "final cpu read");
	}
}

/* AnonHugePages of this process's mappings that overlap [@p, @p + @len). */
static long smaps_thp_kb(const void *p, size_t len)
{
	uintptr_t start = (uintptr_t)p, end = start + len;
	unsigned long lo, hi;
	bool in = false;
	char line[256];
	long kb = 0, v;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			in = lo < end && hi > start;
		else if (in && sscanf(line, "AnonHugePages: %ld kB", &v) == 1)
			kb += v;
	}
	fclose(f);
	return kb;
}

/* @len bytes at a huge page boundary, madvised for THP; NULL on failure. */
static char *map_thp(size_t len)
{
	char *p = mmap(NULL, len + THP_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	p = (char *)(((uintptr_t)p + THP_SIZE - 1) & ~(THP_SIZE - 1));
	if (madvise(p, len, MADV_HUGEPAGE))
		return NULL;
	return p;
}

/*
 * Map the slots and the lock-free region (after the slots in the memfd
 * for shmem); THP ranges start on a huge page boundary.
 */
static int map_all(struct stress *st)
{
	size_t len = st->nslots * slot_bytes(st);
	size_t lf_len = st->lf_pages * PAGE;

	if (st->backing == B_THP) {
		st->base = map_thp(len);
		st->lf = map_thp(lf_len);
		return st->base && st->lf ? 0 : -1;
	}
	st->base = map_range(st, NULL, len, 0);
	if (st->base == MAP_FAILED)
		return -1;
	st->lf = map_range(st, NULL, lf_len, len);
	return st->lf == MAP_FAILED ? -1 : 0;
}

/*
 * Populate the range before the race: for THP, so that every slot starts
 * as a huge page, which /proc/self/smaps must confirm; for -B, so that
 * all of it goes to device memory at once.
 */
static int prefill(struct stress *st, struct worker *wk)
{
	size_t len = st->nslots * slot_bytes(st);
	unsigned long slot;
	time_t t0;
	long kb;

	if (st->backing != B_SHMEM)
		memset(st->lf, 0, st->lf_pages * PAGE);
	if (st->backing != B_THP && !st->big)
		return 0;
	for (slot = 0; slot < st->nslots; slot++)
		op_write(wk, slot, BY_CPU);
	if (st->backing == B_THP) {
		kb = smaps_thp_kb(st->base, len) +
		     smaps_thp_kb(st->lf, st->lf_pages * PAGE);
		ksft_print_msg("proc %d: AnonHugePages %ld kB of %zu kB\n",
			       st->proc, kb, (len + st->lf_pages * PAGE) >> 10);
		if (kb < (long)((len + st->lf_pages * PAGE) >> 10)) {
			fail(st, "only %ld kB of the THP range in huge pages",
			     kb);
			return -1;
		}
	}
	if (!st->big)
		return 0;
	t0 = time(NULL);
	for (slot = 0; slot < st->nslots; slot++) {
		if (op_to_dev(wk, slot)) {
			fail(st, "moving slot %lu to the device failed", slot);
			return -1;
		}
	}
	ksft_print_msg("whole range in device memory in %ld s: %ld pages in %ld chunks\n",
		       (long)(time(NULL) - t0),
		       dev_attr_read(st->devpath, "devmem_used"),
		       dev_attr_read(st->devpath, "devmem_chunks"));
	/* The race gets its full time after the fill. */
	st->deadline = time(NULL) + st->seconds;
	return 0;
}

static int stress_proc(struct stress *st)
{
	struct lf_writer lw[LF_WRITERS];
	pthread_t lwt[LF_WRITERS];
	struct worker wk[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	unsigned long maxp = st->slot_pages > st->lf_pages ?
			     st->slot_pages : st->lf_pages;
	pthread_barrier_t start;
	int t, op, fd;

	if (map_all(st))
		return 1;
	for (t = 0; t < st->nthreads; t++) {
		wk[t] = (struct worker){
			.st = st,
			.id = st->proc * MAX_THREADS + t + 1,
			.rnd = st->seed ^ ((uint64_t)st->proc << 40) ^
			       ((uint64_t)t << 32),
		};
		wk[t].fd = open(st->devpath, O_RDWR);
		wk[t].buf = malloc(maxp * PAGE);
		wk[t].pre = malloc(maxp);
		wk[t].post = malloc(maxp);
		if (wk[t].fd < 0 || !wk[t].buf || !wk[t].pre || !wk[t].post)
			return 1;
	}
	if (prefill(st, &wk[0]))
		return 0;	/* failure recorded by fail() */
	/*
	 * Everything is allocated before the first thread starts: op_remap()
	 * leaves a hole in the range for a moment, and a mapping made then
	 * (a large malloc()) could land in it and be mapped over.
	 */
	for (t = 0; t < LF_WRITERS; t++) {
		int idx = st->shared_data ? st->proc * LF_WRITERS + t : t;

		lw[t] = (struct lf_writer){
			.st = st, .idx = idx,
			.rnd = st->seed ^ ((uint64_t)(idx + 1) << 48),
			.last = calloc(st->lf_pages * WORDS, sizeof(uint32_t)),
		};
		if (!lw[t].last)
			return 1;
	}
	pthread_barrier_init(&start, NULL, st->nthreads + LF_WRITERS + 1);
	for (t = 0; t < st->nthreads; t++) {
		wk[t].start = &start;
		pthread_create(&tid[t], NULL, worker_main, &wk[t]);
	}
	for (t = 0; t < LF_WRITERS; t++) {
		lw[t].start = &start;
		pthread_create(&lwt[t], NULL, lf_writer_main, &lw[t]);
	}
	pthread_barrier_wait(&start);
	for (t = 0; t < st->nthreads; t++)
		pthread_join(tid[t], NULL);
	for (t = 0; t < LF_WRITERS; t++) {
		pthread_join(lwt[t], NULL);
		__sync_fetch_and_add(&st->g->lf_stores, lw[t].stores);
		__sync_fetch_and_add(&st->g->lf_raced, lw[t].raced);
	}

	fd = open(st->devpath, O_RDWR);
	if (fd < 0)
		return 1;
	final_check(st, fd, wk[0].buf);
	if (dmirror_retry(fd, HMM_DMIRROR_READ, st->lf, wk[0].buf,
			  st->lf_pages, &st->sh->busy))
		fail(st, "final device read of the lock-free region");
	else if (!st->sh->errors)
		lf_final_check(st, lw, LF_WRITERS, (uint64_t *)wk[0].buf);
	close(fd);
	for (t = 0; t < st->nthreads; t++) {
		for (op = 0; op < OP_NR; op++)
			__sync_fetch_and_add(&st->sh->ops[op], wk[t].ops[op]);
		close(wk[t].fd);
		free(wk[t].buf);
	}
	return 0;
}

static struct shared *shared_new(struct stress *st)
{
	size_t nexp = st->nslots * st->slot_pages;
	pthread_rwlockattr_t attr;
	struct shared *sh;
	unsigned long i;

	sh = mmap(NULL, sizeof(*sh) + nexp * sizeof(struct expect),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return NULL;
	sh->exp = (struct expect *)(sh + 1);
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	for (i = 0; i < st->nslots; i++)
		pthread_rwlock_init(&sh->lock[i], &attr);
	return sh;
}

/* "name ok N, EBUSY N, ..." for each operation that ran. */
static void print_outcomes(struct shared *g)
{
	char line[512];
	int op, e, n;

	for (op = 0; op < OP_NR; op++) {
		n = 0;
		for (e = 0; e < NERR; e++) {
			const char *name = e ? strerrorname_np(e) : "ok";
			char num[16];

			if (!g->outcome[op][e])
				continue;
			if (!name) {
				snprintf(num, sizeof(num), "E%d", e);
				name = num;
			}
			n += snprintf(line + n, sizeof(line) - n, "%s %s %lu",
				      n ? "," : "", name, g->outcome[op][e]);
		}
		if (n)
			ksft_print_msg("%s:%s\n", op_names[op], line);
	}
}

/*
 * Floors that prove the races happened, as a share of the pages the
 * migrations asked for: a share rather than a rate, because the rate
 * follows the load of the shared host (6x fewer operations at a load of
 * 17 on 2 CPUs than idle) while the share does not.  Measured on the
 * normal kernel under that load: 45-86% of the pages asked for reached
 * the device, 9-21% went back through MIGRATE_TO_SYS (most come back
 * earlier, through CPU faults, which are not counted), and for the
 * lock-free region 14-85% and 6-26%.  The floors, 1/8 to the device and
 * 1/64 back and for the lock-free region, sit several times below the
 * lowest of these, yet a run whose migrations keep failing (ENOENT,
 * ENOMEM) or move nothing falls under them.  The lock-free region must
 * also have had stores land while a migration of it was in flight, and
 * the THP case must have migrated PMD-mapped pages.  Every worker starts
 * with a round trip, so both ways are tried even where a slow kernel (the
 * debug one: 8-100 operations in 4 s) runs few operations; the region's
 * requirements apply once it was tried (THP on the debug kernel may run
 * nothing but the slots' round trips).  Each lock is checked where it is
 * taken (SIGBUS, LOCK_QUERY).
 */
static int check_floors(struct stress *st, char *why, size_t whylen)
{
	struct shared *g = st->g;
	/* At least one page once anything was tried. */
	unsigned long f_dev = (g->tried_dev + 7) / 8;
	unsigned long f_sys = (g->tried_sys + 63) / 64;
	unsigned long f_lf_dev = (g->lf_tried_dev + 63) / 64;
	unsigned long f_lf_sys = (g->lf_tried_sys + 63) / 64;

	ksft_print_msg("pages moved to device / system %lu / %lu of %lu / %lu (floors %lu / %lu)\n",
		       g->moved_dev, g->moved_sys, g->tried_dev, g->tried_sys,
		       f_dev, f_sys);
	ksft_print_msg("lock-free region %lu / %lu of %lu / %lu (floors %lu / %lu)\n",
		       g->lf_moved_dev, g->lf_moved_sys, g->lf_tried_dev,
		       g->lf_tried_sys, f_lf_dev, f_lf_sys);
	ksft_print_msg("%lu of the pages moved were PMD-mapped\n", g->thp_moved);
	ksft_print_msg("lock-free stores %lu, %lu while the region migrated\n",
		       g->lf_stores, g->lf_raced);
	ksft_print_msg("%lu pages locked, %lu CPU reads of them got SIGBUS\n",
		       g->locked, g->sigbus);
	if (g->moved_dev < f_dev || g->moved_sys < f_sys)
		return snprintf(why, whylen,
				"only %lu / %lu pages moved to device / system memory, floors %lu / %lu",
				g->moved_dev, g->moved_sys, f_dev, f_sys), -1;
	/* -B: few operations on its large slots, the region is not its point. */
	if (!st->big &&
	    (g->lf_moved_dev < f_lf_dev || g->lf_moved_sys < f_lf_sys))
		return snprintf(why, whylen,
				"lock-free region: only %lu / %lu pages moved, floors %lu / %lu",
				g->lf_moved_dev, g->lf_moved_sys, f_lf_dev,
				f_lf_sys), -1;
	if (!g->lf_raced && g->lf_tried_dev + g->lf_tried_sys)
		return snprintf(why, whylen,
				"no lock-free store raced a migration"), -1;
	if (!g->tried_dev || !g->tried_sys)
		return snprintf(why, whylen, "no migration tried"), -1;
	if (st->backing == B_THP && !g->thp_moved)
		return snprintf(why, whylen, "no huge page migrated"), -1;
	return 0;
}

/*
 * Write every page of the shmem slots before the race: a hole of a shmem
 * file cannot migrate (MIGRATE_TO_DEV gives ENOENT), and a slow kernel
 * runs too few operations to fill them itself.
 */
static int shmem_prefill(struct stress *st, struct shared *sh)
{
	const struct expect e = { .writer = MAX_PROCS * MAX_THREADS + 1,
				  .gen = 1 };
	unsigned long i;
	char page[PAGE];

	for (i = 0; i < st->nslots * st->slot_pages; i++) {
		fill_page(page, e, i);
		if (pwrite(st->memfd, page, PAGE, i * PAGE) != PAGE)
			return -1;
		sh->exp[i] = e;
	}
	return 0;
}

/*
 * Private data: every process races on its own copy, with its own slot
 * locks.  Shmem: all processes share the file, the locks and the
 * expectations, so a page written by one is checked by the others.
 */
static int stress_run(struct stress *st, char *why, size_t whylen)
{
	struct shared *own[MAX_PROCS];
	pid_t pid[MAX_PROCS];
	unsigned long total = 0;
	int p, status, bad = 0;
	char ops[512] = "";
	int op, n = 0;

	st->shared_data = st->backing == B_SHMEM;
	st->lf_pages = st->backing == B_THP ? THP_SIZE / PAGE : 16;
	st->lf_nwriters = st->shared_data ? st->nprocs * LF_WRITERS :
					    LF_WRITERS;
	st->memfd = -1;
	if (st->shared_data) {
		st->memfd = memfd_create("hmm-stress", 0);
		if (st->memfd < 0 ||
		    ftruncate(st->memfd, st->nslots * slot_bytes(st) +
			      st->lf_pages * PAGE))
			return snprintf(why, whylen, "memfd: %s",
					strerror(errno)), -1;
	}
	for (p = 0; p < st->nprocs; p++) {
		own[p] = (!p || !st->shared_data) ? shared_new(st) : own[0];
		if (!own[p])
			return snprintf(why, whylen, "no memory"), -1;
	}
	st->g = own[0];
	if (st->shared_data && shmem_prefill(st, own[0]))
		return snprintf(why, whylen, "memfd: %s", strerror(errno)), -1;
	for (p = 0; p < st->nprocs; p++) {
		fflush(stdout);
		pid[p] = fork();
		if (!pid[p]) {
			st->proc = p;
			st->sh = own[p];
			st->exp = own[p]->exp;
			_exit(stress_proc(st));
		}
	}
	for (p = 0; p < st->nprocs; p++) {
		if (waitpid(pid[p], &status, 0) != pid[p] ||
		    !WIFEXITED(status) || WEXITSTATUS(status)) {
			snprintf(why, whylen, "process %d: status %#x", p,
				 status);
			bad = 1;
		}
	}
	for (p = 0; p < st->nprocs; p++) {
		if (p && st->shared_data)
			break;
		if (own[p]->errors && !bad) {
			snprintf(why, whylen, "%lu errors, first: %s",
				 own[p]->errors, own[p]->why);
			bad = 1;
		}
	}
	for (op = 0; op < OP_NR; op++) {
		unsigned long c = 0;

		for (p = 0; p < st->nprocs; p++)
			if (!p || !st->shared_data)
				c += own[p]->ops[op];
		total += c;
		n += snprintf(ops + n, sizeof(ops) - n, " %s=%lu",
			      op_names[op], c);
	}
	ksft_print_msg("%lu operations:%s\n", total, ops);
	print_outcomes(st->g);
	for (p = 0, total = 0; p < st->nprocs; p++)
		if (!p || !st->shared_data)
			total += own[p]->busy;
	ksft_print_msg("%lu device accesses retried after EBUSY\n", total);
	if (!bad && check_floors(st, why, whylen))
		bad = 1;
	if (st->memfd >= 0)
		close(st->memfd);
	return bad ? -1 : 0;
}

/* Nothing left behind: no device page in use, every chunk unpluggable. */
static int check_device_idle(const char *devpath, char *why, size_t whylen)
{
	long used = dev_attr_read(devpath, "devmem_used");
	int fd, ret;

	if (used) {
		snprintf(why, whylen, "%ld device pages still in use", used);
		return -1;
	}
	fd = open(devpath, O_RDWR);
	if (fd < 0)
		return -1;
	ret = dmirror(fd, HMM_DMIRROR_RELEASE, (void *)PAGE, NULL, 1, NULL);
	close(fd);
	if (ret || dev_attr_read(devpath, "devmem_chunks")) {
		snprintf(why, whylen, "device memory not released: %s, %ld chunks",
			 strerror(-ret), dev_attr_read(devpath, "devmem_chunks"));
		return -1;
	}
	return 0;
}

static const char *const backing_names[] = { "4k", "thp", "shmem" };

/* THP "never" (or no THP at all): the THP case has nothing to test. */
static bool thp_unavailable(void)
{
	char mode[128] = "";
	int fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY);

	if (fd < 0)
		return true;
	if (read(fd, mode, sizeof(mode) - 1) < 0)
		mode[0] = 0;
	close(fd);
	return !!strstr(mode, "[never]");
}

/* @mib: 0 for the normal cases, else the range size of the -B case. */
static void test_stress(const char *devpath, enum backing b, int seconds,
			uint64_t seed, int nprocs, int nthreads,
			unsigned long mib)
{
	struct stress st = {
		.backing = b, .devpath = devpath, .seed = seed,
		.nprocs = nprocs, .nthreads = nthreads, .seconds = seconds,
		.private_dev = !strcmp(devpath, "/dev/hmm_dmirror0"),
		.big = mib > 0,
	};
	const char *dev = strrchr(devpath, '/') + 1;
	const char *name = st.big ? "big_4k" : backing_names[b];
	char why[512] = "";
	long free0, free1;
	int i;

	if (b == B_THP && thp_unavailable()) {
		ksft_test_result_skip("stress_%s_%s: THP disabled\n", name, dev);
		return;
	}
	st.slot_pages = b == B_THP ? THP_SIZE / PAGE : 16;
	st.nslots = b == B_THP ? 4 : 64;
	if (st.big)
		st.slot_pages = (mib << 20) / PAGE / st.nslots;
	st.deadline = time(NULL) + seconds;
	free0 = meminfo_kb("MemFree");
	if (stress_run(&st, why, sizeof(why)) ||
	    check_device_idle(devpath, why, sizeof(why))) {
		ksft_test_result_fail("stress_%s_%s: %s\n", name, dev, why);
		return;
	}
	/*
	 * Device private pages keep their data in system pages; all freed,
	 * which after a large range may take the kernel a moment.
	 */
	for (i = 0; i < 30; i++) {
		free1 = meminfo_kb("MemFree");
		if (free1 >= free0 - 32 * 1024)
			break;
		usleep(100000);
	}
	ksft_print_msg("MemFree before %ld kB, after %ld kB (%d ms later)\n",
		       free0, free1, i * 100);
	if (free1 < free0 - 32 * 1024) {
		ksft_test_result_fail("stress_%s_%s: %ld kB of memory lost\n",
				      name, dev, free0 - free1);
		return;
	}
	ksft_test_result_pass("stress_%s_%s (%d procs x %d threads, %d s)\n",
			      name, dev, nprocs, nthreads, seconds);
}

/* ------------------------------------------------------------------ */

static const struct expect one_writer = { .writer = 1, .gen = 1 };

static void *buffer_new(unsigned long npages, struct expect e)
{
	char *p = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long i;

	if (p == MAP_FAILED)
		return NULL;
	for (i = 0; i < npages; i++)
		fill_page(p + i * PAGE, e, i);
	return p;
}

/* Returns the first page whose content is not @e's, or -1. */
static long buffer_check(const char *p, unsigned long npages, struct expect e)
{
	unsigned long i;

	for (i = 0; i < npages; i++)
		if (check_page(p + i * PAGE, e, i) >= 0)
			return i;
	return -1;
}

/* Pages of [p, p + npages) the device reports in its own memory. */
static long count_on_device(int fd, void *p, unsigned long npages)
{
	unsigned char *snap = malloc(npages);
	unsigned long i;
	long n = 0;

	if (!snap || dmirror(fd, HMM_DMIRROR_SNAPSHOT, p, snap, npages, NULL))
		n = -1;
	for (i = 0; n >= 0 && i < npages; i++)
		if ((snap[i] & 0xf0) == HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL ||
		    (snap[i] & 0xf0) == HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL)
			n++;
	free(snap);
	return n;
}

/* Record why a case failed, if @ok says it did; returns !@ok. */
static __printf(3, 4) bool failed(char *why, bool ok, const char *fmt, ...)
{
	va_list ap;

	if (ok)
		return false;
	va_start(ap, fmt);
	vsnprintf(why, 256, fmt, ap);
	va_end(ap);
	return true;
}

/*
 * Device memory runs out in the middle of a migration: the ioctl fails
 * with ENOMEM, the pages that got device memory are on the device and
 * mapped by it, the others stay in system memory, and no byte changes.
 */
static void test_exhaustion(const char *devpath)
{
	const unsigned long npages = 1024, limit = 256;
	const char *dev = strrchr(devpath, '/') + 1;
	char why[256] = "";
	char *p, *buf;
	int fd, ret;
	long n;

	fd = open(devpath, O_RDWR);
	p = buffer_new(npages, one_writer);
	buf = malloc(npages * PAGE);
	if (failed(why, fd >= 0 && p && buf, "setup: %s", strerror(errno)))
		goto out;
	if (failed(why, dev_attr_read(devpath, "devmem_used") == 0,
		   "device memory in use before the test"))
		goto out;
	if (failed(why, !dev_attr_write(devpath, "devmem_limit", limit),
		   "cannot set devmem_limit"))
		goto out;

	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, npages, NULL);
	if (failed(why, ret == -ENOMEM, "migrating %lu pages with room for %lu: %s",
		   npages, limit, ret ? strerror(-ret) : "succeeded"))
		goto out;
	n = dev_attr_read(devpath, "devmem_used");
	if (failed(why, n == limit, "%ld device pages in use, expected %lu", n, limit))
		goto out;
	n = count_on_device(fd, p, npages);
	if (failed(why, n == limit, "%ld pages in device memory, expected %lu", n,
		   limit))
		goto out;
	ret = dmirror(fd, HMM_DMIRROR_READ, p, buf, npages, NULL);
	if (failed(why, !ret, "device read after ENOMEM: %s", strerror(-ret)))
		goto out;
	n = buffer_check(buf, npages, one_writer);
	if (failed(why, n < 0, "device read after ENOMEM: page %ld wrong", n))
		goto out;

	/* Still full: a second attempt changes nothing. */
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, npages, NULL);
	if (failed(why, ret == -ENOMEM, "second migration: %s", strerror(-ret)))
		goto out;
	n = dev_attr_read(devpath, "devmem_used");
	if (failed(why, n == limit, "%ld device pages in use after retry", n))
		goto out;

	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, npages, NULL);
	if (failed(why, !ret, "migrating back: %s", strerror(-ret)))
		goto out;
	if (failed(why, dev_attr_read(devpath, "devmem_used") == 0,
		   "device pages in use after migrating back"))
		goto out;
	n = buffer_check(p, npages, one_writer);
	if (failed(why, n < 0, "cpu read after ENOMEM: page %ld wrong", n))
		goto out;

	/* With the limit gone the whole range fits. */
	if (failed(why, !dev_attr_write(devpath, "devmem_limit", 0), "limit reset"))
		goto out;
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, npages, NULL);
	if (failed(why, !ret, "migration without limit: %s", strerror(-ret)))
		goto out;
	n = buffer_check(buf, npages, one_writer);
	if (failed(why, n < 0, "migrated data: page %ld wrong", n))
		goto out;
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, npages, NULL);
	if (failed(why, !ret && dev_attr_read(devpath, "devmem_used") == 0,
		   "final migration back: %s", strerror(-ret)))
		goto out;
	n = buffer_check(p, npages, one_writer);
	if (failed(why, n < 0, "final cpu read: page %ld wrong", n))
		goto out;
out:
	dev_attr_write(devpath, "devmem_limit", 0);
	if (fd >= 0)
		close(fd);
	if (p)
		munmap(p, npages * PAGE);
	free(buf);
	if (why[0])
		ksft_test_result_fail("exhaustion_%s: %s\n", dev, why);
	else
		ksft_test_result_pass("exhaustion_%s\n", dev);
}

/*
 * HMM_DMIRROR_RELEASE while the process still maps device pages: they
 * are moved back to system memory first, then the memory is unplugged.
 */
static void test_release_mapped(const char *devpath)
{
	const unsigned long npages = 512;
	const char *dev = strrchr(devpath, '/') + 1;
	char why[256] = "";
	char *p, *buf;
	int fd, ret;
	long n;

	fd = open(devpath, O_RDWR);
	p = buffer_new(npages, one_writer);
	buf = malloc(npages * PAGE);
	if (failed(why, fd >= 0 && p && buf, "setup: %s", strerror(errno)))
		goto out;
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, npages, NULL);
	if (failed(why, !ret, "migration: %s", strerror(-ret)))
		goto out;
	n = count_on_device(fd, p, npages);
	if (failed(why, n == npages, "%ld of %lu pages in device memory", n, npages))
		goto out;

	ret = dmirror(fd, HMM_DMIRROR_RELEASE, p, NULL, 1, NULL);
	if (failed(why, !ret, "HMM_DMIRROR_RELEASE: %s", strerror(-ret)))
		goto out;
	n = dev_attr_read(devpath, "devmem_chunks");
	if (failed(why, n == 0, "%ld chunks still plugged", n))
		goto out;
	n = count_on_device(fd, p, npages);
	if (failed(why, n == 0, "%ld pages still in device memory", n))
		goto out;
	n = buffer_check(p, npages, one_writer);
	if (failed(why, n < 0, "cpu read after release: page %ld wrong", n))
		goto out;
	ret = dmirror(fd, HMM_DMIRROR_READ, p, buf, npages, NULL);
	if (failed(why, !ret, "device read after release: %s", strerror(-ret)))
		goto out;
	n = buffer_check(buf, npages, one_writer);
	if (failed(why, n < 0, "device read after release: page %ld wrong", n))
		goto out;
out:
	if (fd >= 0)
		close(fd);
	if (p)
		munmap(p, npages * PAGE);
	free(buf);
	if (why[0])
		ksft_test_result_fail("release_mapped_%s: %s\n", dev, why);
	else
		ksft_test_result_pass("release_mapped_%s\n", dev);
}

#define CGROOT	"/sys/fs/cgroup"
#define CG	CGROOT "/hmm-stress"

/* A number from a cgroup file, or the value of "key N" in it. */
static long cg_read(const char *file, const char *key)
{
	char path[128], text[1024], *s;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), CG "/%s", file);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	text[n] = 0;
	if (!key)
		return strtol(text, NULL, 10);
	for (s = text; s; s = strchr(s, '\n'), s = s ? s + 1 : NULL)
		if (!strncmp(s, key, strlen(key)) && s[strlen(key)] == ' ')
			return strtol(s + strlen(key) + 1, NULL, 10);
	return -1;
}

#define CG_MAX		(48L << 20)
#define CG_PAGES	4096UL

/*
 * In the cgroup: 16 MiB go to device memory (their charge goes with them:
 * a migration moves a page's memcg charge, it does not drop it), then the
 * cgroup is filled to a few MiB below memory.max and all 16 MiB are read
 * back by the CPU.  Migrating back moves the charge again rather than
 * charging anew, so it must neither fail nor OOM-kill at the limit.
 * Then the pages go back to the device and the child waits to be killed.
 */
static int memcg_child(const char *devpath, int ready)
{
	const struct expect e = { .writer = 2, .gen = 7 };
	char *p, *filler, *buf = malloc(CG_PAGES * PAGE);
	long cur, n, filled = 0;
	int fd, ret;

	if (write_str(CG "/cgroup.procs", "0"))
		return 10;
	p = buffer_new(CG_PAGES, e);
	fd = open(devpath, O_RDWR);
	filler = mmap(NULL, CG_MAX, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!p || fd < 0 || !buf || filler == MAP_FAILED)
		return 11;
	if (dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, CG_PAGES, NULL) ||
	    buffer_check(buf, CG_PAGES, e) >= 0)
		return 12;
	cur = cg_read("memory.current", NULL);
	ksft_print_msg("memcg: %lu pages on the device, memory.current %ld kB\n",
		       CG_PAGES, cur >> 10);
	if (cur < (long)(CG_PAGES * PAGE))
		return 13;
	while ((cur = cg_read("memory.current", NULL)) < CG_MAX - (6L << 20) &&
	       filled < CG_MAX) {
		memset(filler + filled, 0x5a, 256 << 10);
		filled += 256 << 10;
	}
	ksft_print_msg("memcg: filled %ld kB more, memory.current %ld kB of %ld kB\n",
		       filled >> 10, cur >> 10, CG_MAX >> 10);
	n = buffer_check(p, CG_PAGES, e);
	if (n >= 0) {
		ksft_print_msg("memcg: page %ld wrong after migrating back\n",
			       n);
		return 14;
	}
	if (count_on_device(fd, p, CG_PAGES) != 0)
		return 15;
	cur = cg_read("memory.current", NULL);
	ksft_print_msg("memcg: all back, memory.current %ld kB, oom_kill %ld\n",
		       cur >> 10, cg_read("memory.events", "oom_kill"));
	if (cg_read("memory.events", "oom_kill") != 0)
		return 16;
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, CG_PAGES, NULL);
	if (ret)
		return 17;
	if (write(ready, "r", 1) != 1)
		return 18;
	for (;;)
		pause();
}

static void test_memcg(const char *devpath)
{
	const struct expect e = { .writer = 3, .gen = 9 };
	const unsigned long npages = 256;
	char why[256] = "", max[32];
	int fd = -1, pipefd[2] = { -1, -1 }, status, ret;
	pid_t pid = -1;
	char *p = NULL, *buf = NULL, c;
	long n = 0;

	if (access(CGROOT "/cgroup.subtree_control", W_OK)) {
		ksft_test_result_skip("memcg_pressure: no cgroup v2 at %s\n",
				      CGROOT);
		return;
	}
	rmdir(CG);
	if (failed(why, !write_str(CGROOT "/cgroup.subtree_control", "+memory") &&
		   (!mkdir(CG, 0755) || errno == EEXIST),
		   "cannot make cgroup %s: %s", CG, strerror(errno)))
		goto out;
	snprintf(max, sizeof(max), "%ld", CG_MAX);
	if (failed(why, !write_str(CG "/memory.max", max), "memory.max: %s",
		   strerror(errno)))
		goto out;

	/* The parent's own device pages must come through untouched. */
	fd = open(devpath, O_RDWR);
	p = buffer_new(npages, e);
	buf = malloc(npages * PAGE);
	if (failed(why, fd >= 0 && p && buf && !pipe(pipefd), "setup: %s",
		   strerror(errno)))
		goto out;
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, npages, NULL);
	if (failed(why, !ret, "parent migration: %s", strerror(-ret)))
		goto out;

	fflush(stdout);
	pid = fork();
	if (failed(why, pid >= 0, "fork: %s", strerror(errno)))
		goto out;
	if (!pid) {
		close(pipefd[0]);
		_exit(memcg_child(devpath, pipefd[1]));
	}
	close(pipefd[1]);
	if (read(pipefd[0], &c, 1) != 1) {
		waitpid(pid, &status, 0);
		pid = -1;
		if (failed(why, 0, "child failed, status %#x", status))
			goto out;
	}
	n = dev_attr_read(devpath, "devmem_used");
	if (failed(why, n >= (long)(npages + CG_PAGES), "%ld device pages in use", n))
		goto out;

	/* Killed while its pages are in device memory: all must be freed. */
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	pid = -1;
	if (failed(why, WIFSIGNALED(status), "child status %#x", status))
		goto out;
	for (ret = 0; ret < 50; ret++) {
		n = dev_attr_read(devpath, "devmem_used");
		if (n == (long)npages)
			break;
		usleep(100000);
	}
	if (failed(why, n == (long)npages, "%ld device pages in use after the kill", n))
		goto out;
	if (failed(why, count_on_device(fd, p, npages) == (long)npages,
		   "parent's pages left device memory"))
		goto out;
	ret = dmirror(fd, HMM_DMIRROR_READ, p, buf, npages, NULL);
	if (failed(why, !ret && buffer_check(buf, npages, e) < 0,
		   "parent's data through the device"))
		goto out;
	if (failed(why, buffer_check(p, npages, e) < 0, "parent's data on the cpu"))
		goto out;
out:
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (fd >= 0)
		close(fd);
	if (p)
		munmap(p, npages * PAGE);
	free(buf);
	close(pipefd[0]);
	rmdir(CG);
	if (why[0])
		ksft_test_result_fail("memcg_pressure: %s\n", why);
	else
		ksft_test_result_pass("memcg_pressure\n");
}

#define EV_PAGES	256	/* pages of each file that dies */
#define EV_SURV		64	/* pages of the file that stays */

/* Handshake of one round, in shared memory. */
struct ev_sync {
	int		ready, go;
	long		on_dev;		/* dying file's pages on the device */
	uint64_t	t0, t1;		/* the evictor's release / close */
	int		ret;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void spin_ns(uint64_t ns)
{
	uint64_t end = now_ns() + ns;

	while (now_ns() < end)
		;
}

/*
 * The evictor: move the files' pages into device memory through our own
 * device file (so that its close evicts them; the dying file's only if
 * not @theirs, already moved by the other side), drop every mapping and
 * descriptor of them, then at the signal evict: HMM_DMIRROR_RELEASE, or
 * close() of the device file.
 */
static int evictor(const char *devpath, int dying, int surv, char *inherited,
		   struct ev_sync *sy, bool release, bool theirs,
		   uint64_t delay)
{
	const struct expect e = { .writer = 7, .gen = 1 };
	char *buf = malloc(EV_PAGES * PAGE);
	int fd = open(devpath, O_RDWR), ret;
	char *d, *s;
	long i;

	d = mmap(NULL, EV_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 dying, 0);
	s = mmap(NULL, EV_SURV * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 surv, 0);
	munmap(inherited, EV_PAGES * PAGE);
	if (fd < 0 || !buf || d == MAP_FAILED || s == MAP_FAILED)
		return 10;
	if (!theirs) {
		ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, d, buf, EV_PAGES,
			      NULL);
		if (ret && ret != -ENOENT)
			return 11;
		for (i = 0; !ret && i < EV_PAGES; i++)
			if (check_page(buf + i * PAGE, e, i) >= 0)
				return 12;
		sy->on_dev = count_on_device(fd, d, EV_PAGES);
	}
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, s, buf, EV_SURV, NULL);
	if (ret && ret != -ENOENT)
		return 13;
	munmap(d, EV_PAGES * PAGE);
	munmap(s, EV_SURV * PAGE);
	close(dying);
	close(surv);

	__atomic_store_n(&sy->ready, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&sy->go, __ATOMIC_SEQ_CST))
		;
	spin_ns(delay);
	sy->t0 = now_ns();
	if (release)
		sy->ret = dmirror(fd, HMM_DMIRROR_RELEASE, (void *)PAGE, NULL,
				  1, NULL);
	else
		sy->ret = close(fd) ? -errno : 0;
	sy->t1 = now_ns();
	return 0;
}

struct ev_count {
	unsigned long	rounds[2];	/* close, release */
	unsigned long	overlapped, on_dev, release_busy, theirs;
	uint64_t	evict_ns, death_ns;	/* how long each took last */
};

/* Fill the file's first @npages pages with (@e) patterns through write(). */
static int file_fill(int fd, unsigned long npages, struct expect e)
{
	char page[PAGE];
	unsigned long i;

	for (i = 0; i < npages; i++) {
		fill_page(page, e, i);
		if (pwrite(fd, page, PAGE, i * PAGE) != PAGE)
			return -1;
	}
	return 0;
}

/* Returns the first of the file's @npages pages that is not @e's, or -1. */
static long file_check(int fd, unsigned long npages, struct expect e)
{
	char page[PAGE];
	unsigned long i;

	for (i = 0; i < npages; i++)
		if (pread(fd, page, PAGE, i * PAGE) != PAGE ||
		    check_page(page, e, i) >= 0)
			return i;
	return -1;
}

/*
 * One round: a new memfd (the dying file) goes to device memory through
 * the evictor; we then drop its last descriptor and mapping, so the inode
 * is evicted and truncated, while the evictor evicts the device memory.
 * The surviving file, in device memory too, must come back intact.
 */
static int evict_round(const char *devpath, int surv, int fd, uint64_t *rnd,
		       struct ev_sync *sy, struct ev_count *c, char *why)
{
	const struct expect de = { .writer = 7, .gen = 1 };
	struct expect se = { .writer = 8, .gen = c->rounds[0] + c->rounds[1] };
	bool release = rnd_next(rnd) % 2, munmap_last = rnd_next(rnd) % 2;
	bool delay_evictor = rnd_next(rnd) % 2;
	/*
	 * The side that starts late does so by less than the other one took
	 * last time, so that the two overlap unless the timing changed.
	 */
	uint64_t delay = rnd_next(rnd) % ((delay_evictor ? c->death_ns :
					    c->evict_ns) + 1), t0, t1;
	/* RELEASE evicts every page: then we may move the file ourselves. */
	bool mine = release && rnd_next(rnd) % 2;
	char *buf = NULL, *rd, *d = MAP_FAILED;
	int dying, status, ret = -1, r;
	long n;
	pid_t pid;

	dying = memfd_create("hmm-stress-dying", 0);
	if (failed(why, dying >= 0 && !ftruncate(dying, EV_PAGES * PAGE) &&
		   !file_fill(dying, EV_PAGES, de) &&
		   !file_fill(surv, EV_SURV, se), "setup: %s", strerror(errno)))
		goto out;
	d = mmap(NULL, EV_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
		 dying, 0);
	if (failed(why, d != MAP_FAILED, "mmap: %s", strerror(errno)))
		goto out;
	memset(sy, 0, sizeof(*sy));
	if (mine) {
		/* Our mapping then holds the device entries. */
		buf = malloc(EV_PAGES * PAGE);
		r = buf ? dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, d, buf,
				  EV_PAGES, NULL) : -ENOMEM;
		sy->on_dev = count_on_device(fd, d, EV_PAGES);
		n = r ? 0 : buffer_check(buf, EV_PAGES, de);
		free(buf);
		buf = NULL;
		if (failed(why, (!r || r == -ENOENT) && n < 0,
			   "MIGRATE_TO_DEV of the dying file: %s, page %ld",
			   strerror(-r), n))
			goto out;
	}
	fflush(stdout);
	pid = fork();
	if (!pid)
		_exit(evictor(devpath, dying, surv, d, sy, release, mine,
			      delay_evictor ? delay : 0));
	if (failed(why, pid > 0, "fork: %s", strerror(errno)))
		goto out;
	while (!__atomic_load_n(&sy->ready, __ATOMIC_SEQ_CST)) {
		if (waitpid(pid, &status, WNOHANG) == pid) {
			failed(why, 0, "evictor failed, status %#x", status);
			goto out;
		}
		sched_yield();
	}
	__atomic_store_n(&sy->go, 1, __ATOMIC_SEQ_CST);
	spin_ns(delay_evictor ? 0 : delay);
	/* Our descriptor and mapping are the file's last references. */
	t0 = now_ns();
	if (munmap_last) {
		close(dying);
		munmap(d, EV_PAGES * PAGE);
	} else {
		munmap(d, EV_PAGES * PAGE);
		close(dying);
	}
	t1 = now_ns();
	dying = -1;
	d = MAP_FAILED;
	if (failed(why, waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
		   !WEXITSTATUS(status), "evictor status %#x", status))
		goto out;
	if (failed(why, err_in(sy->ret, ok_release), "eviction: %s",
		   strerror(-sy->ret)))
		goto out;
	c->rounds[release]++;
	c->theirs += mine;
	c->release_busy += sy->ret == -EBUSY;
	c->on_dev += sy->on_dev > 0 ? sy->on_dev : 0;
	c->overlapped += t0 < sy->t1 && sy->t0 < t1;
	c->evict_ns = sy->t1 - sy->t0;
	c->death_ns = t1 - t0;

	/* The survivor: through the page cache and through the device. */
	n = file_check(surv, EV_SURV, se);
	if (failed(why, n < 0, "surviving file: page %ld wrong", n))
		goto out;
	buf = mmap(NULL, EV_SURV * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
		   surv, 0);
	if (failed(why, buf != MAP_FAILED, "mmap: %s", strerror(errno)))
		goto out;
	rd = malloc(EV_SURV * PAGE);
	r = rd ? dmirror(fd, HMM_DMIRROR_READ, buf, rd, EV_SURV, NULL) :
		 -ENOMEM;
	n = r ? 0 : buffer_check(rd, EV_SURV, se);
	free(rd);
	munmap(buf, EV_SURV * PAGE);
	if (failed(why, !r && n < 0,
		   "surviving file through the device: %s, page %ld",
		   strerror(-r), n))
		goto out;
	/* Every device page freed: the dead file's, the evicted survivor's. */
	for (n = 0; n < 200 && dev_attr_read(devpath, "devmem_used"); n++)
		usleep(10000);
	if (failed(why, !dev_attr_read(devpath, "devmem_used"),
		   "%ld device pages in use after the round",
		   dev_attr_read(devpath, "devmem_used")))
		goto out;
	ret = 0;
out:
	if (d != MAP_FAILED)
		munmap(d, EV_PAGES * PAGE);
	if (dying >= 0)
		close(dying);
	return ret;
}

/*
 * Issue 17 item 1: device memory holding pages of a shmem file is evicted
 * (HMM_DMIRROR_RELEASE, or close() of the device file that allocated
 * them) while the file's last descriptor and mapping go away, so that its
 * inode is evicted and truncated under the eviction.  Each round has a
 * random lead for one side, sweeping the window; the rounds whose two
 * intervals overlapped are counted and at least one must have.  The file
 * that stays alive is checked after every round, and all device memory
 * must be free again.  On a kernel where eviction does not pin the
 * mapping, KASAN reports a use-after-free of the shmem inode.
 */
static void test_shmem_evict(const char *devpath, int seconds, uint64_t seed)
{
	const char *dev = strrchr(devpath, '/') + 1;
	time_t deadline = time(NULL) + seconds;
	struct ev_count c = {};
	struct ev_sync *sy;
	unsigned long rounds;
	char why[256] = "";
	uint64_t rnd = seed;
	int surv, fd;

	sy = mmap(NULL, sizeof(*sy), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	surv = memfd_create("hmm-stress-survivor", 0);
	fd = open(devpath, O_RDWR);
	if (failed(why, sy != MAP_FAILED && surv >= 0 && fd >= 0 &&
		   !ftruncate(surv, EV_SURV * PAGE), "setup: %s",
		   strerror(errno)))
		goto out;
	/* A slow kernel gets a few rounds more than its share of time. */
	while ((time(NULL) < deadline || c.rounds[0] + c.rounds[1] < 10) &&
	       !evict_round(devpath, surv, fd, &rnd, sy, &c, why))
		;
	rounds = c.rounds[0] + c.rounds[1];
	ksft_print_msg("shmem_evict: %lu rounds: %lu close, %lu release (%lu EBUSY)\n",
		       rounds, c.rounds[0], c.rounds[1], c.release_busy);
	ksft_print_msg("shmem_evict: %lu with the dying file mapped to the device\n",
		       c.theirs);
	ksft_print_msg("shmem_evict: %lu dying pages on the device, %lu rounds overlapped\n",
		       c.on_dev, c.overlapped);
	if (why[0])
		goto out;
	if (failed(why, c.on_dev >= rounds * EV_PAGES / 2,
		   "%lu rounds, %lu pages on the device", rounds, c.on_dev))
		goto out;
	failed(why, c.overlapped > 0, "no eviction overlapped an inode's death");
out:
	if (fd >= 0)
		close(fd);
	if (surv >= 0)
		close(surv);
	if (!why[0])
		check_device_idle(devpath, why, sizeof(why));
	if (why[0])
		ksft_test_result_fail("shmem_evict_%s: %s\n", dev, why);
	else
		ksft_test_result_pass("shmem_evict_%s (%d s)\n", dev, seconds);
}

/* One shmem race round's device writer (test_shmem_fault_write()). */
struct fw_writer {
	pthread_barrier_t	go;
	int			fd;	/* a device file whose mirror is empty */
	char			*p;
	char			*buf;	/* the generation to write */
	unsigned long		busy;
	int			ret;
};

#define FW_PAGES	64

static void *fw_writer_main(void *arg)
{
	struct fw_writer *w = arg;

	pthread_barrier_wait(&w->go);
	w->ret = dmirror_retry(w->fd, HMM_DMIRROR_WRITE, w->p, w->buf,
			       FW_PAGES, &w->busy);
	return NULL;
}

/*
 * The CPU reads every page of @p, which brings them home from device
 * memory one by one, while the writer's device write runs.  Backwards: the
 * page that comes home last is the first the device's walk meets, so no
 * later invalidation makes the device look at it again.  A page may be
 * caught half written, so only pages already holding @e all through are
 * told apart: returns how many there were.
 */
static unsigned long fw_cpu_read(const char *p, struct expect e)
{
	unsigned long i = FW_PAGES, newer = 0;

	while (i--)
		newer += check_page(p + i * PAGE, e, i) < 0;
	return newer;
}

/*
 * One round: the file goes to device memory, then the device writes
 * generation @e through @w's device file while the CPU reads the file,
 * faulting its pages home.  Once both are done every page must hold @e.
 * Returns 1 if the two overlapped (the CPU saw some pages written and
 * some not yet), 0 if not, -1 on failure with @why set.
 */
static int fw_round(int fd, struct fw_writer *w, struct expect e,
		    unsigned long *on_dev, char *why)
{
	unsigned long i, newer;
	pthread_t thr;
	long bad;
	int ret;

	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, w->p, w->buf, FW_PAGES,
		      NULL);
	if (failed(why, err_in(ret, ok_to_dev), "MIGRATE_TO_DEV: %s",
		   strerror(-ret)))
		return -1;
	*on_dev += count_on_device(fd, w->p, FW_PAGES);
	for (i = 0; i < FW_PAGES; i++)
		fill_page(w->buf + i * PAGE, e, i);
	if (failed(why, !pthread_create(&thr, NULL, fw_writer_main, w),
		   "pthread_create"))
		return -1;
	pthread_barrier_wait(&w->go);
	newer = fw_cpu_read(w->p, e);
	pthread_join(thr, NULL);
	if (failed(why, !w->ret, "HMM_DMIRROR_WRITE: %s", strerror(-w->ret)))
		return -1;
	bad = buffer_check(w->p, FW_PAGES, e);
	if (bad >= 0) {
		struct expect old = { .writer = e.writer, .gen = e.gen - 1 };
		const char *q = w->p + bad * PAGE;

		failed(why, false, "gen %u: page %ld lost the device write: word 0 is %#llx%s",
		       e.gen, bad, (unsigned long long)*(const uint64_t *)q,
		       check_page(q, old, bad) < 0 ? ", the gen before" : "");
		return -1;
	}
	return newer > 0 && newer < FW_PAGES;
}

/*
 * A device write that walks the page cache of a shmem file for its pages
 * in device memory (its mirror holds none of them) races CPU faults that
 * bring the same pages home from device memory.  A page the device was
 * told about after it left the page cache takes the write, and the file
 * keeps the generation before: the write is lost.  The rounds where the
 * CPU saw both generations are counted and at least one must have.
 */
static void test_shmem_fault_write(const char *devpath, int seconds)
{
	const char *dev = strrchr(devpath, '/') + 1;
	time_t deadline = time(NULL) + seconds;
	struct fw_writer w = { .fd = -1 };
	struct expect e = { .writer = 1, .gen = 1 };
	unsigned long rounds = 0, overlapped = 0, on_dev = 0;
	char why[256] = "";
	int memfd, fd, ret = 0;

	memfd = memfd_create("hmm-stress-fault-write", 0);
	fd = open(devpath, O_RDWR);
	w.fd = open(devpath, O_RDWR);
	w.buf = malloc(FW_PAGES * PAGE);
	if (failed(why, memfd >= 0 && fd >= 0 && w.fd >= 0 && w.buf &&
		   !ftruncate(memfd, FW_PAGES * PAGE) &&
		   !file_fill(memfd, FW_PAGES, e) &&
		   !pthread_barrier_init(&w.go, NULL, 2), "setup: %s",
		   strerror(errno)))
		goto out;
	w.p = mmap(NULL, FW_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
		   memfd, 0);
	if (failed(why, w.p != MAP_FAILED, "mmap: %s", strerror(errno)))
		goto out;
	while ((time(NULL) < deadline || rounds < 10) && ret >= 0) {
		e.gen++;
		ret = fw_round(fd, &w, e, &on_dev, why);
		overlapped += ret > 0;
		rounds++;
	}
	ksft_print_msg("shmem_fault_write: %lu rounds, %lu overlapped, %lu EBUSY\n",
		       rounds, overlapped, w.busy);
	ksft_print_msg("shmem_fault_write: %lu pages on the device\n", on_dev);
	if (why[0])
		goto out;
	if (failed(why, on_dev >= rounds * FW_PAGES / 2,
		   "%lu rounds, %lu pages on the device", rounds, on_dev))
		goto out;
	failed(why, overlapped > 0, "no device write overlapped the CPU faults");
out:
	if (w.p && w.p != MAP_FAILED)
		munmap(w.p, FW_PAGES * PAGE);
	if (w.fd >= 0)
		close(w.fd);
	if (fd >= 0)
		close(fd);
	if (memfd >= 0)
		close(memfd);
	free(w.buf);
	if (!why[0])
		check_device_idle(devpath, why, sizeof(why));
	if (why[0])
		ksft_test_result_fail("shmem_fault_write_%s: %s\n", dev, why);
	else
		ksft_test_result_pass("shmem_fault_write_%s (%d s)\n", dev,
				      seconds);
}

/* ------------------------------------------------------------------
 * Oversubscribed device memory (lib/test_hmm.c "Eviction"): with
 * devmem_evict set, a migration to a full device evicts the least
 * recently used device pages of any process instead of failing.
 */

/*
 * The kernel log from now on, to look for OOM kills in: /proc/vmstat's
 * oom_kill needs CONFIG_VM_EVENT_COUNTERS, which the test kernels lack.
 */
static int kmsg_open(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);

	if (fd >= 0 && lseek(fd, 0, SEEK_END) < 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

/* Records of @fd since kmsg_open() that tell of an OOM kill; closes @fd. */
static long kmsg_oom_kills(int fd)
{
	char rec[2048];
	long n = 0;
	ssize_t len;

	for (;;) {
		len = read(fd, rec, sizeof(rec) - 1);
		if (len < 0 && errno == EPIPE)
			continue;	/* overwritten records: go on */
		if (len <= 0)
			break;
		rec[len] = 0;
		if (strstr(rec, "Killed process") || strstr(rec, "oom-kill:"))
			n++;
	}
	close(fd);
	return n;
}

/* Limit @devpath to @limit pages and make running out evict, or undo. */
static int oversub_set(const char *devpath, long limit, bool evict)
{
	if (dev_attr_write(devpath, "devmem_evict", evict))
		return -1;
	return dev_attr_write(devpath, "devmem_limit", limit);
}

static const struct expect filler_data = { .writer = 13, .gen = 1 };

struct filler {
	pid_t		pid;
	int		filled;		/* its pages reached the device once */
	int		stop;
	unsigned long	passes;
	unsigned long	busy;		/* device reads retried */
};

/*
 * The filler: migrate @npages of its own to the device and read them back
 * through the device, which leaves them there, again and again until
 * told to stop; then check them through the CPU.  It fills the device
 * before the stress processes start, so their migrations must evict the
 * filler's pages or each other's, and each pass of the filler brings its
 * evicted pages back by evicting theirs.  ENOMEM: every page it could
 * have evicted was busy at that moment.  Returns 0 or what failed.
 */
static int oversub_filler(const char *devpath, long npages, struct filler *f)
{
	char *p = buffer_new(npages, filler_data);
	char *buf = malloc(npages * PAGE);
	int fd = open(devpath, O_RDWR), ret;

	if (!p || !buf || fd < 0)
		return 1;
	while (!__atomic_load_n(&f->stop, __ATOMIC_SEQ_CST)) {
		ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p, buf, npages,
			      NULL);
		if (ret && ret != -ENOMEM && ret != -ENOENT)
			return 2;
		if (!ret && buffer_check(buf, npages, filler_data) >= 0)
			return 3;
		__atomic_store_n(&f->filled, 1, __ATOMIC_SEQ_CST);
		memset(buf, 0, npages * PAGE);
		if (dmirror_retry(fd, HMM_DMIRROR_READ, p, buf, npages,
				  &f->busy) ||
		    buffer_check(buf, npages, filler_data) >= 0)
			return 4;
		__atomic_add_fetch(&f->passes, 1, __ATOMIC_SEQ_CST);
	}
	if (buffer_check(p, npages, filler_data) >= 0)
		return 5;
	close(fd);
	return 0;
}

static struct filler *filler_start(const char *devpath, long npages)
{
	struct filler *f = mmap(NULL, sizeof(*f), PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t pid;
	int i;

	if (f == MAP_FAILED)
		return NULL;
	fflush(stdout);
	/* Not into *f directly: the child's fork() would store 0 there. */
	pid = fork();
	if (!pid)
		_exit(oversub_filler(devpath, npages, f));
	if (pid < 0) {
		munmap(f, sizeof(*f));
		return NULL;
	}
	f->pid = pid;
	/* The device is full before the stress starts, or within 60 s. */
	for (i = 0; i < 6000 && !__atomic_load_n(&f->filled, __ATOMIC_SEQ_CST);
	     i++)
		usleep(10000);
	return f;
}

/* Stop the filler; returns its exit status, or -1 if it did not exit. */
static int filler_stop(struct filler *f, unsigned long *passes)
{
	int status = -1;

	__atomic_store_n(&f->stop, 1, __ATOMIC_SEQ_CST);
	if (waitpid(f->pid, &status, 0) != f->pid)
		status = -1;
	*passes = f->passes;
	munmap(f, sizeof(*f));
	return status;
}

/*
 * The 4K stress case, every operation of it, plus a filler process,
 * with device memory limited to a quarter of what they would together
 * put there (slots, lock-free regions, and the filler's pages, as many
 * as the limit), so that most migrations to the device evict pages of
 * another process or of another range of the same one.  On top of the usual checks
 * (every byte, device memory all free at the end, MemFree) and the
 * filler's own, eviction must have happened and nobody been OOM-killed.
 */
static void test_oversub(const char *devpath, int seconds, uint64_t seed,
			 int nprocs, int nthreads)
{
	struct stress st = {
		.backing = B_ANON, .devpath = devpath, .seed = seed,
		.nprocs = nprocs, .nthreads = nthreads, .seconds = seconds,
		.private_dev = !strcmp(devpath, "/dev/hmm_dmirror0"),
		.slot_pages = 16, .nslots = 64,
	};
	const char *dev = strrchr(devpath, '/') + 1;
	long ev0, ev1, ooms, free0, free1 = 0, limit, fill;
	unsigned long passes = 0;
	struct filler *f = NULL;
	char why[512] = "";
	int i, kmsg, ret, fst;

	/*
	 * stress_run() sets the lock-free region to 16 pages for 4K; the
	 * filler's part of the working set is the limit itself, so
	 * limit = (stress + limit) / 4.
	 */
	limit = nprocs * (st.nslots * st.slot_pages + 16) / 3;
	fill = limit;
	ev0 = dev_attr_read(devpath, "devmem_evicted");
	kmsg = kmsg_open();
	free0 = meminfo_kb("MemFree");
	if (failed(why, kmsg >= 0, "/dev/kmsg: %s", strerror(errno)) ||
	    failed(why, ev0 >= 0 && !oversub_set(devpath, limit, true),
		   "cannot limit the device to %ld pages with eviction", limit))
		goto out;
	f = filler_start(devpath, fill);
	if (failed(why, f, "filler: %s", strerror(errno)))
		goto out;
	st.deadline = time(NULL) + seconds;
	ret = stress_run(&st, why, sizeof(why));
	fst = filler_stop(f, &passes);
	ev1 = dev_attr_read(devpath, "devmem_evicted");
	ooms = kmsg_oom_kills(kmsg);
	kmsg = -1;
	ksft_print_msg("oversub: limit %ld pages, filler of %ld pages ran %lu passes\n",
		       limit, fill, passes);
	ksft_print_msg("oversub: %ld pages evicted, %ld OOM kills\n",
		       ev1 - ev0, ooms);
	/* An OOM kill explains a process's death better than its status. */
	if (ooms)
		ret = snprintf(why, sizeof(why), "%ld OOM kills", ooms);
	else if (!ret && fst)
		ret = snprintf(why, sizeof(why),
			       "filler status %#x (see oversub_filler())", fst);
	if (ret || failed(why, ev1 > ev0, "no page was evicted"))
		goto out;
	if (oversub_set(devpath, 0, false) ||
	    check_device_idle(devpath, why, sizeof(why)))
		goto out;
	for (i = 0; i < 30; i++) {
		free1 = meminfo_kb("MemFree");
		if (free1 >= free0 - 32 * 1024)
			break;
		usleep(100000);
	}
	failed(why, free1 >= free0 - 32 * 1024, "%ld kB of memory lost",
	       free0 - free1);
out:
	if (kmsg >= 0)
		close(kmsg);
	oversub_set(devpath, 0, false);
	if (why[0])
		ksft_test_result_fail("oversub_4k_%s: %s\n", dev, why);
	else
		ksft_test_result_pass("oversub_4k_%s (%d x %d threads, %d s, limit %ld)\n",
				      dev, nprocs, nthreads, seconds, limit);
}

/*
 * One device-private page, many CPU threads faulting it back at once and
 * the device reading it meanwhile.  Every round, every thread must get
 * the page's exact content, and the round must end within HOT_ROUND_S:
 * threads that keep taking references to the page while one of them
 * tries to migrate it can keep each other from ever succeeding.
 */
#define HOT_THREADS	8
#define HOT_ROUND_S	20
#define HOT_MIN_ROUNDS	20

struct hot {
	int			fd;
	char			*page;
	pthread_barrier_t	go, done;
	unsigned int		round;
	bool			stop;
	unsigned long		bad;		/* pages found wrong */
	unsigned long		busy;		/* device reads retried */
	int			dev_err;
};

static struct expect hot_expect(unsigned int round)
{
	return (struct expect){ .writer = 7, .gen = round + 1 };
}

static void *hot_cpu(void *arg)
{
	struct hot *h = arg;

	for (;;) {
		pthread_barrier_wait(&h->go);
		if (h->stop)
			return NULL;
		if (check_page(h->page, hot_expect(h->round), 0) >= 0)
			__sync_fetch_and_add(&h->bad, 1);
		pthread_barrier_wait(&h->done);
	}
}

static void *hot_dev(void *arg)
{
	struct hot *h = arg;
	char buf[PAGE];
	int ret;

	for (;;) {
		pthread_barrier_wait(&h->go);
		if (h->stop)
			return NULL;
		ret = dmirror_retry(h->fd, HMM_DMIRROR_READ, h->page, buf, 1,
				    &h->busy);
		if (ret)
			h->dev_err = ret;
		else if (check_page(buf, hot_expect(h->round), 0) >= 0)
			__sync_fetch_and_add(&h->bad, 1);
		pthread_barrier_wait(&h->done);
	}
}

/*
 * Child side: rounds until @deadline; progress in @shm[0], the slowest
 * round in microseconds in @shm[1].
 */
static int hot_rounds(const char *devpath, time_t deadline,
		      unsigned int *shm)
{
	struct hot h = {};
	pthread_t tid[HOT_THREADS + 1];
	char buf[PAGE];
	uint64_t t0, us;
	int t, ret = 0;

	h.fd = open(devpath, O_RDWR);
	h.page = buffer_new(1, hot_expect(0));
	if (h.fd < 0 || !h.page)
		return 10;
	pthread_barrier_init(&h.go, NULL, HOT_THREADS + 2);
	pthread_barrier_init(&h.done, NULL, HOT_THREADS + 2);
	for (t = 0; t < HOT_THREADS; t++)
		pthread_create(&tid[t], NULL, hot_cpu, &h);
	pthread_create(&tid[t], NULL, hot_dev, &h);

	for (h.round = 0; time(NULL) < deadline || h.round < HOT_MIN_ROUNDS;
	     h.round++) {
		fill_page(h.page, hot_expect(h.round), 0);
		if (dmirror(h.fd, HMM_DMIRROR_MIGRATE_TO_DEV, h.page, buf, 1,
			    NULL) ||
		    check_page(buf, hot_expect(h.round), 0) >= 0 ||
		    count_on_device(h.fd, h.page, 1) != 1) {
			ret = 11;
			break;
		}
		__atomic_store_n(&shm[0], h.round + 1, __ATOMIC_SEQ_CST);
		t0 = now_ns();
		alarm(HOT_ROUND_S);
		pthread_barrier_wait(&h.go);
		pthread_barrier_wait(&h.done);
		alarm(0);
		us = (now_ns() - t0) / 1000;
		if (us > shm[1])
			shm[1] = us;
		if (h.bad || h.dev_err) {
			ret = 12;
			break;
		}
	}
	h.stop = true;
	pthread_barrier_wait(&h.go);
	for (t = 0; t <= HOT_THREADS; t++)
		pthread_join(tid[t], NULL);
	close(h.fd);
	return ret;
}

static void test_hot_page(const char *devpath, int seconds)
{
	static const char *const what[] = {
		[10] = "setup failed",
		[11] = "migration to the device failed or moved wrong data",
		[12] = "a thread read wrong data or the device read failed",
	};
	const char *dev = strrchr(devpath, '/') + 1;
	unsigned int *round;
	char why[256] = "";
	int status;
	pid_t pid;

	round = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (failed(why, round != MAP_FAILED, "mmap: %s", strerror(errno)))
		goto out;
	fflush(stdout);
	pid = fork();
	if (!pid)
		_exit(hot_rounds(devpath, time(NULL) + seconds, round));
	if (failed(why, pid > 0 && waitpid(pid, &status, 0) == pid,
		   "fork: %s", strerror(errno)))
		goto out;
	if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
		failed(why, false, "round %u of %d threads faulting one device page took over %d s",
		       round[0], HOT_THREADS, HOT_ROUND_S);
	else if (!WIFEXITED(status) || WEXITSTATUS(status))
		failed(why, false, "round %u: %s (status %#x)", round[0],
		       WIFEXITED(status) && WEXITSTATUS(status) < 13 &&
		       what[WEXITSTATUS(status)] ? what[WEXITSTATUS(status)] :
		       "died", status);
	else
		ksft_print_msg("hot_page: %u rounds, %d CPU threads + device, slowest %u us\n",
			       round[0], HOT_THREADS, round[1]);
out:
	if (round != MAP_FAILED)
		munmap(round, PAGE);
	if (!why[0])
		check_device_idle(devpath, why, sizeof(why));
	if (why[0])
		ksft_test_result_fail("hot_page_%s: %s\n", dev, why);
	else
		ksft_test_result_pass("hot_page_%s (%d s)\n", dev, seconds);
}

/*
 * Teardown while evicting: a victim process with pages in device memory
 * exits, closes its device file or calls HMM_DMIRROR_RELEASE while an
 * evictor process's migration to the full device is evicting those very
 * pages, with the two sides' timing swept across each other.  Each
 * round must end within TD_ROUND_S, both processes must see their data
 * intact (the victim where it survives its teardown: after close() and
 * RELEASE), and device memory must be all free after each round.
 */
#define TD_PAGES	128	/* victim's pages, twice the limit */
#define TD_LIMIT	64
#define TD_ROUND_S	30
#define TD_MIN_ROUNDS	30
/* Rounds a slow kernel may take to see an eviction overlap a teardown. */
#define TD_MAX_ROUNDS	300

enum td_mode { TD_EXIT, TD_CLOSE, TD_RELEASE, TD_NMODES };

struct td_sync {
	int		ready;		/* victim's pages are on the device */
	int		go;
	uint64_t	td_start;	/* victim starts its teardown, ns */
	uint64_t	ev_start, ev_end;	/* evictor's migration */
	long		evicted;	/* during it */
};

static const struct expect td_victim = { .writer = 11, .gen = 1 };
static const struct expect td_evictor = { .writer = 12, .gen = 1 };

static int td_victim_main(const char *devpath, enum td_mode mode,
			  uint64_t delay, struct td_sync *sy)
{
	char *p = buffer_new(TD_PAGES, td_victim);
	char *buf = malloc(TD_PAGES * PAGE);
	const size_t half = TD_PAGES / 2 * PAGE;
	int fd = open(devpath, O_RDWR), ret, i;

	if (!p || !buf || fd < 0)
		return 10;
	/*
	 * Twice the limit, in two halves: the second evicts the first (a
	 * migration cannot evict its own destinations, they are locked).
	 */
	for (i = 0; i < 2; i++) {
		ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, p + i * half,
			      buf + i * half, TD_PAGES / 2, NULL);
		if (ret)
			return 11;
	}
	if (buffer_check(buf, TD_PAGES, td_victim) >= 0 ||
	    count_on_device(fd, p, TD_PAGES) <= 0)
		return 11;
	__atomic_store_n(&sy->ready, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&sy->go, __ATOMIC_SEQ_CST))
		sched_yield();
	spin_ns(delay);
	sy->td_start = now_ns();
	if (mode == TD_EXIT)
		_exit(0);	/* pages on the device, file open */
	if (mode == TD_CLOSE) {
		close(fd);
	} else {
		/* EBUSY: pages busy (being evicted) kept their chunk. */
		ret = dmirror(fd, HMM_DMIRROR_RELEASE, p, NULL, 1, NULL);
		if (ret && ret != -EBUSY)
			return 13;
	}
	if (buffer_check(p, TD_PAGES, td_victim) >= 0)
		return 12;
	return 0;
}

static int td_evictor_main(const char *devpath, uint64_t delay,
			   struct td_sync *sy)
{
	char *q = buffer_new(TD_LIMIT, td_evictor);
	char *buf = malloc(TD_LIMIT * PAGE);
	int fd = open(devpath, O_RDWR), ret;
	long ev0;

	if (!q || !buf || fd < 0)
		return 20;
	while (!__atomic_load_n(&sy->ready, __ATOMIC_SEQ_CST))
		sched_yield();
	__atomic_store_n(&sy->go, 1, __ATOMIC_SEQ_CST);
	spin_ns(delay);
	ev0 = dev_attr_read(devpath, "devmem_evicted");
	sy->ev_start = now_ns();
	ret = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, q, buf, TD_LIMIT, NULL);
	sy->ev_end = now_ns();
	sy->evicted = dev_attr_read(devpath, "devmem_evicted") - ev0;
	/* ENOMEM: the victim's pages were all busy at that moment. */
	if (ret && ret != -ENOMEM && ret != -ENOENT)
		return 21;
	if (!ret && buffer_check(buf, TD_LIMIT, td_evictor) >= 0)
		return 22;
	if (dmirror(fd, HMM_DMIRROR_MIGRATE_TO_SYS, q, NULL, TD_LIMIT, NULL) ||
	    buffer_check(q, TD_LIMIT, td_evictor) >= 0)
		return 23;
	close(fd);
	return 0;
}

/* Wait for @pid until @deadline_ns; returns its status or -1 on timeout. */
static int td_wait(pid_t pid, uint64_t deadline_ns, uint64_t *when)
{
	int status;

	while (now_ns() < deadline_ns) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid) {
			*when = now_ns();
			return status;
		}
		if (r < 0)
			return -1;
		usleep(200);
	}
	return -1;
}

static int td_round(const char *devpath, unsigned long round, uint64_t *rnd,
		    struct td_sync *sy, unsigned long *overlapped, char *why)
{
	enum td_mode mode = round % TD_NMODES;
	uint64_t deadline = now_ns() + TD_ROUND_S * 1000000000ULL;
	uint64_t vend = 0, eend = 0;
	int vs, es;
	pid_t v, e;

	memset(sy, 0, sizeof(*sy));
	fflush(stdout);
	v = fork();
	if (!v)
		_exit(td_victim_main(devpath, mode, rnd_next(rnd) % 4000000,
				     sy));
	e = fork();
	if (!e)
		_exit(td_evictor_main(devpath, rnd_next(rnd) % 4000000, sy));
	vs = td_wait(v, deadline, &vend);
	es = td_wait(e, deadline, &eend);
	if (failed(why, vs != -1 && es != -1,
		   "round %lu (%s): %s did not finish in %d s", round,
		   mode == TD_EXIT ? "exit" : mode == TD_CLOSE ? "close" :
		   "release", vs == -1 ? "victim" : "evictor", TD_ROUND_S))
		return -1;
	if (failed(why, WIFEXITED(vs) && !WEXITSTATUS(vs) &&
		   WIFEXITED(es) && !WEXITSTATUS(es),
		   "round %lu: victim status %#x, evictor status %#x (see td_*_main)",
		   round, vs, es))
		return -1;
	if (failed(why, dev_attr_read(devpath, "devmem_used") == 0,
		   "round %lu: %ld device pages left in use", round,
		   dev_attr_read(devpath, "devmem_used")))
		return -1;
	if (sy->evicted > 0 && sy->ev_start < vend && sy->td_start < sy->ev_end)
		(*overlapped)++;
	return 0;
}

static void test_evict_teardown(const char *devpath, int seconds,
				uint64_t seed)
{
	const char *dev = strrchr(devpath, '/') + 1;
	time_t deadline = time(NULL) + seconds;
	unsigned long round, overlapped = 0;
	long ev0 = dev_attr_read(devpath, "devmem_evicted");
	struct td_sync *sy;
	char why[256] = "";
	uint64_t rnd = seed;

	sy = mmap(NULL, sizeof(*sy), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (failed(why, sy != MAP_FAILED && ev0 >= 0 &&
		   !oversub_set(devpath, TD_LIMIT, true),
		   "setup: %s", strerror(errno)))
		goto out;
	for (round = 0; time(NULL) < deadline || round < TD_MIN_ROUNDS ||
	     (!overlapped && round < TD_MAX_ROUNDS); round++)
		if (td_round(devpath, round, &rnd, sy, &overlapped, why))
			goto out;
	ksft_print_msg("evict_teardown: %lu rounds, %ld pages evicted, %lu overlapped a teardown\n",
		       round, dev_attr_read(devpath, "devmem_evicted") - ev0,
		       overlapped);
	failed(why, overlapped > 0, "no eviction overlapped a teardown");
out:
	oversub_set(devpath, 0, false);
	if (!why[0])
		check_device_idle(devpath, why, sizeof(why));
	if (why[0])
		ksft_test_result_fail("evict_teardown_%s: %s\n", dev, why);
	else
		ksft_test_result_pass("evict_teardown_%s (%d s)\n", dev, seconds);
}

int main(int argc, char **argv)
{
	static const char *const devs[] = {
		"/dev/hmm_dmirror0", "/dev/hmm_dmirror2",
	};
	int seconds = 60, nprocs = 3, nthreads = 4, ncases, opt, d, ndevs;
	uint64_t seed = time(NULL);
	unsigned long big = 0;
	bool only_evict = false, fault_write_only = false;
	int share;

	while ((opt = getopt(argc, argv, "s:S:p:t:B:er")) != -1) {
		switch (opt) {
		case 's':
			seconds = atoi(optarg);
			break;
		case 'S':
			seed = strtoull(optarg, NULL, 0);
			break;
		case 'p':
			nprocs = atoi(optarg);
			break;
		case 't':
			nthreads = atoi(optarg);
			break;
		case 'B':
			big = strtoul(optarg, NULL, 0);
			break;
		case 'e':
			only_evict = true;
			break;
		case 'r':
			fault_write_only = true;
			break;
		default:
			fprintf(stderr,
				"usage: %s [-s secs] [-S seed] [-p procs] [-t threads] [-B MiB] [-e] [-r]\n",
				argv[0]);
			return KSFT_FAIL;
		}
	}
	if (nprocs < 1 || nprocs > MAX_PROCS || nthreads < 1 ||
	    nthreads > MAX_THREADS || seconds < 1 || big > 1024) {
		fprintf(stderr, "1-%d processes, 1-%d threads, seconds > 0, -B up to 1024\n",
			MAX_PROCS, MAX_THREADS);
		return KSFT_FAIL;
	}
	ksft_print_header();
	if (access(devs[0], R_OK | W_OK))
		ksft_exit_skip("%s: %s (CONFIG_TEST_HMM)\n", devs[0],
			       strerror(errno));
	dma_may_refuse = cmdline_has("swiotlb=force");
	if (fault_write_only) {
		ksft_set_plan(1);
		test_shmem_fault_write(devs[0], seconds);
		ksft_finished();
	}
	/* Coherent device memory exists only with memmap= reserved RAM. */
	ndevs = access(devs[1], R_OK | W_OK) ? 1 : 2;
	/*
	 * 4K, THP, shmem, the two shmem races, coherent 4K share the time;
	 * the eviction cases get a share on top, not out of theirs.
	 */
	ncases = 5 + (ndevs - 1);
	if (only_evict) {
		ksft_set_plan(3);
		test_oversub(devs[0], seconds, seed + 6, nprocs, nthreads);
		test_hot_page(devs[0], seconds / 2 ?: 1);
		test_evict_teardown(devs[0], seconds / 2 ?: 1, seed + 7);
		ksft_finished();
	}
	ksft_set_plan(ncases + !!big + 2 * ndevs + 1 + 3);
	ksft_print_msg("seed %llu, %d processes x %d threads, %d s\n",
		       (unsigned long long)seed, nprocs, nthreads, seconds);
	setvbuf(stdout, NULL, _IOLBF, 0);

	share = seconds / ncases ?: 1;
	test_stress(devs[0], B_ANON, share, seed, nprocs, nthreads, 0);
	test_stress(devs[0], B_THP, share, seed + 1, nprocs, nthreads, 0);
	test_stress(devs[0], B_SHMEM, share, seed + 2, nprocs, nthreads, 0);
	test_shmem_evict(devs[0], share, seed + 4);
	test_shmem_fault_write(devs[0], share);
	if (ndevs > 1)
		test_stress(devs[1], B_ANON, share, seed + 3, nprocs, nthreads,
			    0);
	test_oversub(devs[0], share, seed + 6, nprocs, nthreads);
	test_hot_page(devs[0], share / 2 ?: 1);
	test_evict_teardown(devs[0], share / 2 ?: 1, seed + 7);
	/* One process: the range is private, -B of it per process. */
	if (big)
		test_stress(devs[0], B_ANON, share, seed + 5, 1, nthreads, big);
	for (d = 0; d < ndevs; d++) {
		test_exhaustion(devs[d]);
		test_release_mapped(devs[d]);
	}
	test_memcg(devs[0]);
	ksft_finished();
}
