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
 * Options: -s SECONDS for all stress cases together (default 60), -S SEED,
 * -p PROCESSES, -t THREADS per process.  The seed is printed; a run with
 * the same seed makes the same choices, up to the order races allow.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

#include "kselftest.h"
#include <lib/test_hmm_uapi.h>

#define PAGE		4096UL
#define WORDS		(PAGE / sizeof(uint64_t))
#define THP_SIZE	(2UL << 20)
#define MAX_THREADS	16
#define MAX_PROCS	8

enum backing { B_ANON, B_THP, B_SHMEM };

struct expect {
	uint32_t	writer;		/* 0: never written, reads as zero */
	uint32_t	gen;
};

/* Shared by every process of a case (MAP_SHARED anonymous memory). */
struct shared {
	pthread_rwlock_t	lock[256];
	struct expect		*exp;		/* nslots * slot_pages */
	unsigned long		ops[16];
	unsigned long		busy;		/* EBUSY retries */
	unsigned long		errors;
	char			why[256];
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
	/* per process */
	int		proc;
	char		*base;
	struct shared	*sh;
	struct expect	*exp;		/* this process's expectations */
};

enum op { OP_CPU_WRITE, OP_DEV_WRITE, OP_CPU_READ, OP_DEV_READ, OP_TO_DEV,
	  OP_TO_SYS, OP_DONTNEED, OP_REMAP, OP_MPROTECT, OP_FORK, OP_RELEASE,
	  OP_NR };

static const char *const op_names[OP_NR] = {
	"cpu_write", "dev_write", "cpu_read", "dev_read", "to_dev", "to_sys",
	"dontneed", "remap", "mprotect", "fork", "release",
};

/* Out of 1000; fork and release are heavy and global, keep them rare. */
static const int op_weight[OP_NR] = {
	130, 130, 155, 155, 150, 110, 60, 50, 50, 8, 2,
};

static uint64_t rnd_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

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
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)addr, .ptr = (uintptr_t)buf,
		.npages = npages,
	};

	if (ioctl(fd, req, &cmd))
		return -errno;
	if (cpages)
		*cpages = cmd.cpages;
	return 0;
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

/* sysfs file @name of the device node @devpath (lib/test_hmm.c). */
static int dev_attr_path(const char *devpath, const char *name, char *buf,
			 size_t len)
{
	struct stat st;

	if (stat(devpath, &st))
		return -errno;
	snprintf(buf, len, "/sys/dev/char/%u:%u/%s", major(st.st_rdev),
		 minor(st.st_rdev), name);
	return 0;
}

static long dev_attr_read(const char *devpath, const char *name)
{
	char path[128], val[32] = "";
	ssize_t n;
	int fd;

	if (dev_attr_path(devpath, name, path, sizeof(path)))
		return -1;
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, val, sizeof(val) - 1);
	close(fd);
	return n > 0 ? strtol(val, NULL, 0) : -1;
}

static int dev_attr_write(const char *devpath, const char *name, long v)
{
	char path[128], val[32];
	int fd, n, ret = 0;

	if (dev_attr_path(devpath, name, path, sizeof(path)))
		return -1;
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	n = snprintf(val, sizeof(val), "%ld\n", v);
	if (write(fd, val, n) != n)
		ret = -1;
	close(fd);
	return ret;
}

/* "Key: N kB" of the kernel's memory counters, in kB, or -1. */
static long mem_counter(const char *key)
{
	char line[128];
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, strlen(key)) &&
		    line[strlen(key)] == ':') {
			v = strtol(line + strlen(key) + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
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

struct worker {
	struct stress	*st;
	int		id;		/* writer id: proc * MAX_THREADS + t + 1 */
	int		fd;
	uint64_t	rnd;
	char		*buf;
	unsigned long	ops[OP_NR];
	uint32_t	gen;
};

static void op_write(struct worker *wk, unsigned long slot, bool dev)
{
	struct stress *st = wk->st;
	struct expect *e = slot_exp(st, slot);
	char *dst = dev ? wk->buf : slot_addr(st, slot);
	unsigned long i;
	int ret;

	wk->gen++;
	for (i = 0; i < st->slot_pages; i++) {
		e[i].writer = wk->id;
		e[i].gen = wk->gen;
		fill_page(dst + i * PAGE, e[i], slot * st->slot_pages + i);
	}
	if (!dev)
		return;
	ret = dmirror_retry(wk->fd, HMM_DMIRROR_WRITE, slot_addr(st, slot),
			    wk->buf, st->slot_pages, &st->sh->busy);
	if (ret)
		fail(st, "HMM_DMIRROR_WRITE slot %lu: %s", slot, strerror(-ret));
}

static void op_dev_read(struct worker *wk, unsigned long slot)
{
	int ret = dmirror_retry(wk->fd, HMM_DMIRROR_READ,
				slot_addr(wk->st, slot), wk->buf,
				wk->st->slot_pages, &wk->st->sh->busy);

	if (ret)
		fail(wk->st, "HMM_DMIRROR_READ slot %lu: %s", slot,
		     strerror(-ret));
	else
		check_slot(wk->st, slot, wk->buf, "device read");
}

static void op_to_dev(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	int ret = dmirror(wk->fd, HMM_DMIRROR_MIGRATE_TO_DEV,
			  slot_addr(st, slot), wk->buf, st->slot_pages, NULL);

	if (!err_in(ret, ok_to_dev))
		fail(st, "MIGRATE_TO_DEV slot %lu: %s", slot, strerror(-ret));
	else if (!ret)
		check_slot(st, slot, wk->buf, "migrate to device");
}

static void op_to_sys(struct worker *wk, unsigned long slot)
{
	int ret = dmirror(wk->fd, HMM_DMIRROR_MIGRATE_TO_SYS,
			  slot_addr(wk->st, slot), NULL, wk->st->slot_pages,
			  NULL);

	if (ret)
		fail(wk->st, "MIGRATE_TO_SYS slot %lu: %s", slot,
		     strerror(-ret));
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
static void op_dontneed(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;

	if (st->backing == B_SHMEM) {
		if (fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE |
			      FALLOC_FL_KEEP_SIZE, slot * slot_bytes(st),
			      slot_bytes(st)))
			fail(st, "hole punch slot %lu: %s", slot,
			     strerror(errno));
		else
			memset(slot_exp(st, slot), 0,
			       st->slot_pages * sizeof(struct expect));
		return;
	}
	if (madvise(slot_addr(st, slot), slot_bytes(st), MADV_DONTNEED))
		fail(st, "MADV_DONTNEED slot %lu: %s", slot, strerror(errno));
	else
		forget_slot(st, slot);
}

static void op_remap(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	char *a = slot_addr(st, slot);

	if (munmap(a, slot_bytes(st))) {
		fail(st, "munmap slot %lu: %s", slot, strerror(errno));
		return;
	}
	/* The addresses are free now; nobody else maps into our range. */
	if (map_range(st, a, slot_bytes(st), slot * slot_bytes(st)) != a) {
		fail(st, "mmap slot %lu again: %s", slot, strerror(errno));
		return;
	}
	if (st->backing == B_THP)
		madvise(a, slot_bytes(st), MADV_HUGEPAGE);
	forget_slot(st, slot);
}

/* Read-only for a moment: device writes must fail, reads still work. */
static void op_mprotect(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	char *a = slot_addr(st, slot);
	int ret;

	if (mprotect(a, slot_bytes(st), PROT_READ)) {
		fail(st, "mprotect slot %lu: %s", slot, strerror(errno));
		return;
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
}

/*
 * fork with the slot in device memory: the child must see the content of
 * the fork, from the CPU and through its own device file; the parent's
 * copy is checked by the caller's next operations.
 */
static void op_fork(struct worker *wk, unsigned long slot)
{
	struct stress *st = wk->st;
	int status;
	pid_t pid;

	dmirror(wk->fd, HMM_DMIRROR_MIGRATE_TO_DEV, slot_addr(st, slot),
		wk->buf, st->slot_pages, NULL);
	pid = fork();
	if (pid < 0) {
		fail(st, "fork: %s", strerror(errno));
		return;
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
}

static void op_release(struct worker *wk)
{
	int ret = dmirror(wk->fd, HMM_DMIRROR_RELEASE, wk->st->base, NULL, 1,
			  NULL);

	if (!err_in(ret, ok_release))
		fail(wk->st, "HMM_DMIRROR_RELEASE: %s", strerror(-ret));
}

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

static void do_op(struct worker *wk, enum op which, unsigned long slot)
{
	struct stress *st = wk->st;

	switch (which) {
	case OP_CPU_WRITE:
	case OP_DEV_WRITE:
		op_write(wk, slot, which == OP_DEV_WRITE);
		break;
	case OP_CPU_READ:
		check_slot(st, slot, slot_addr(st, slot), "cpu read");
		break;
	case OP_DEV_READ:
		op_dev_read(wk, slot);
		break;
	case OP_TO_DEV:
		op_to_dev(wk, slot);
		break;
	case OP_TO_SYS:
		op_to_sys(wk, slot);
		break;
	case OP_DONTNEED:
		op_dontneed(wk, slot);
		break;
	case OP_REMAP:
		op_remap(wk, slot);
		break;
	case OP_MPROTECT:
		op_mprotect(wk, slot);
		break;
	case OP_FORK:
		op_fork(wk, slot);
		break;
	default:
		op_release(wk);
		break;
	}
}

static bool op_changes_slot(enum op op)
{
	return op == OP_CPU_WRITE || op == OP_DEV_WRITE ||
	       op == OP_DONTNEED || op == OP_REMAP || op == OP_MPROTECT;
}

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	struct stress *st = wk->st;

	while (time(NULL) < st->deadline && !st->sh->errors) {
		enum op op = pick_op(wk);
		unsigned long slot = rnd_next(&wk->rnd) % st->nslots;
		pthread_rwlock_t *lock = &st->sh->lock[slot];

		if (op == OP_RELEASE) {
			do_op(wk, op, 0);
		} else {
			if (op_changes_slot(op))
				pthread_rwlock_wrlock(lock);
			else
				pthread_rwlock_rdlock(lock);
			do_op(wk, op, slot);
			pthread_rwlock_unlock(lock);
		}
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

static int stress_proc(struct stress *st)
{
	struct worker wk[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	size_t len = st->nslots * slot_bytes(st);
	int t, op, fd;

	if (st->backing == B_THP) {
		/* Over-map so the range can start on a huge page boundary. */
		char *p = mmap(NULL, len + THP_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			return 1;
		st->base = (char *)(((uintptr_t)p + THP_SIZE - 1) &
				    ~(THP_SIZE - 1));
		madvise(st->base, len, MADV_HUGEPAGE);
	} else {
		st->base = map_range(st, NULL, len, 0);
		if (st->base == MAP_FAILED)
			return 1;
	}

	for (t = 0; t < st->nthreads; t++) {
		wk[t] = (struct worker){
			.st = st,
			.id = st->proc * MAX_THREADS + t + 1,
			.rnd = st->seed ^ ((uint64_t)st->proc << 40) ^
			       ((uint64_t)t << 32),
		};
		wk[t].fd = open(st->devpath, O_RDWR);
		wk[t].buf = malloc(slot_bytes(st));
		if (wk[t].fd < 0 || !wk[t].buf)
			return 1;
		pthread_create(&tid[t], NULL, worker_main, &wk[t]);
	}
	for (t = 0; t < st->nthreads; t++)
		pthread_join(tid[t], NULL);

	fd = open(st->devpath, O_RDWR);
	if (fd < 0)
		return 1;
	final_check(st, fd, wk[0].buf);
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
	st->memfd = -1;
	if (st->shared_data) {
		st->memfd = memfd_create("hmm-stress", 0);
		if (st->memfd < 0 ||
		    ftruncate(st->memfd, st->nslots * slot_bytes(st)))
			return snprintf(why, whylen, "memfd: %s",
					strerror(errno)), -1;
	}
	for (p = 0; p < st->nprocs; p++) {
		own[p] = (!p || !st->shared_data) ? shared_new(st) : own[0];
		if (!own[p])
			return snprintf(why, whylen, "no memory"), -1;
	}
	for (p = 0; p < st->nprocs; p++) {
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
	for (p = 0, total = 0; p < st->nprocs; p++)
		if (!p || !st->shared_data)
			total += own[p]->busy;
	ksft_print_msg("%lu device accesses retried after EBUSY\n", total);
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

static void test_stress(const char *devpath, enum backing b, int seconds,
			uint64_t seed, int nprocs, int nthreads)
{
	struct stress st = {
		.backing = b, .devpath = devpath, .seed = seed,
		.nprocs = nprocs, .nthreads = nthreads,
	};
	const char *dev = strrchr(devpath, '/') + 1;
	char why[512] = "";
	long free0, free1;

	st.slot_pages = b == B_THP ? THP_SIZE / PAGE : 16;
	st.nslots = b == B_THP ? 4 : 64;
	st.deadline = time(NULL) + seconds;
	free0 = mem_counter("MemFree");
	if (stress_run(&st, why, sizeof(why)) ||
	    check_device_idle(devpath, why, sizeof(why))) {
		ksft_test_result_fail("stress_%s_%s: %s\n", backing_names[b],
				      dev, why);
		return;
	}
	/* Device private pages keep their data in system pages; all freed. */
	free1 = mem_counter("MemFree");
	ksft_print_msg("MemFree before %ld kB, after %ld kB\n", free0, free1);
	if (free1 < free0 - 32 * 1024) {
		ksft_test_result_fail("stress_%s_%s: %ld kB of memory lost\n",
				      backing_names[b], dev, free0 - free1);
		return;
	}
	ksft_test_result_pass("stress_%s_%s (%d procs x %d threads, %d s)\n",
			      backing_names[b], dev, nprocs, nthreads,
			      seconds);
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

static int file_write(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, s, strlen(s));
	close(fd);
	return n == (ssize_t)strlen(s) ? 0 : -errno;
}

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

	if (file_write(CG "/cgroup.procs", "0"))
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
	if (failed(why, !file_write(CGROOT "/cgroup.subtree_control", "+memory") &&
		   (!mkdir(CG, 0755) || errno == EEXIST),
		   "cannot make cgroup %s: %s", CG, strerror(errno)))
		goto out;
	snprintf(max, sizeof(max), "%ld", CG_MAX);
	if (failed(why, !file_write(CG "/memory.max", max), "memory.max: %s",
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

int main(int argc, char **argv)
{
	static const char *const devs[] = {
		"/dev/hmm_dmirror0", "/dev/hmm_dmirror2",
	};
	int seconds = 60, nprocs = 3, nthreads = 4, ncases, opt, d, ndevs;
	uint64_t seed = time(NULL);

	while ((opt = getopt(argc, argv, "s:S:p:t:")) != -1) {
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
		default:
			fprintf(stderr,
				"usage: %s [-s secs] [-S seed] [-p procs] [-t threads]\n",
				argv[0]);
			return KSFT_FAIL;
		}
	}
	if (nprocs < 1 || nprocs > MAX_PROCS || nthreads < 1 ||
	    nthreads > MAX_THREADS || seconds < 1) {
		fprintf(stderr, "1-%d processes, 1-%d threads, seconds > 0\n",
			MAX_PROCS, MAX_THREADS);
		return KSFT_FAIL;
	}
	ksft_print_header();
	if (access(devs[0], R_OK | W_OK))
		ksft_exit_skip("%s: %s (CONFIG_TEST_HMM)\n", devs[0],
			       strerror(errno));
	/* Coherent device memory exists only with memmap= reserved RAM. */
	ndevs = access(devs[1], R_OK | W_OK) ? 1 : 2;
	ncases = 3 + (ndevs - 1);
	ksft_set_plan(ncases + 2 * ndevs + 1);
	ksft_print_msg("seed %llu, %d processes x %d threads, %d s\n",
		       (unsigned long long)seed, nprocs, nthreads, seconds);
	setvbuf(stdout, NULL, _IOLBF, 0);

	test_stress(devs[0], B_ANON, seconds / ncases ?: 1, seed, nprocs,
		    nthreads);
	test_stress(devs[0], B_THP, seconds / ncases ?: 1, seed + 1, nprocs,
		    nthreads);
	test_stress(devs[0], B_SHMEM, seconds / ncases ?: 1, seed + 2, nprocs,
		    nthreads);
	if (ndevs > 1)
		test_stress(devs[1], B_ANON, seconds / ncases ?: 1, seed + 3,
			    nprocs, nthreads);
	for (d = 0; d < ndevs; d++) {
		test_exhaustion(devs[d]);
		test_release_mapped(devs[d]);
	}
	test_memcg(devs[0]);
	ksft_finished();
}
