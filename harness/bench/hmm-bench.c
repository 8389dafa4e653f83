// SPDX-License-Identifier: GPL-2.0
/*
 * hmm-bench: time the HMM paths of a kernel through the dummy device.
 *
 * Runs unchanged on our kernel and on pristine upstream 6.12: it uses only
 * the ioctls 0x00-0x07 both drivers have, on /dev/hmm_dmirror0 (device
 * private memory). Every case runs -r times per size; each repetition is
 * timed with CLOCK_MONOTONIC around the one operation it measures (buffer
 * set-up and checks stay outside) and its data are checked, so a fast
 * wrong answer fails instead of winning. One more, untimed repetition
 * runs with the ftrace function profiler on and reports how long the
 * kernel spent inside the HMM functions of that case (the profiler is off
 * while user space times, so it costs the timed runs nothing).
 *
 * Output, one line per figure (the host's harness/bench/table.py reads it):
 *   SAMPLE case size_bytes ns
 *   REDO   case size_bytes why       (a void repetition, done again)
 *   BENCH  case size_bytes ns_median ns_min ns_max reps kernel_ns kcalls
 * kernel_ns/kcalls are -1 when the profiler is unavailable or the case
 * has no kernel function to profile. Exit status 1 on any failed check.
 *
 *   hmm-bench [-r reps] [-m max_MiB] [-c case,case...] [-f]
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "test_hmm_uapi.h"

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))
#define MIB		(1024UL * 1024)
#define PMD_BYTES	(2 * MIB)
#define MAX_REPS	64
#define TRACING		"/sys/kernel/tracing"

static size_t page_size;
static int reps = 5;
static size_t max_bytes = 1024 * MIB;
static const char *only;
static int full;
static int failures;
static int profiler;
static int dev_fd = -1;
static int quiet;		/* warm-up pass: time nothing, print nothing */

/* Kernel functions whose time the profiler reports, by case. */
#define KF_FAULT	"hmm_range_fault"
#define KF_MIGRATE	"migrate_vma_setup,migrate_vma_pages,migrate_vma_finalize"
#define KF_EXCLUSIVE	"make_device_exclusive_range"
#define KF_NOTIFIER	"__mmu_notifier_invalidate_range_start"

static const char *const profiled[] = {
	"hmm_range_fault", "migrate_vma_setup", "migrate_vma_pages",
	"migrate_vma_finalize", "make_device_exclusive_range",
	"__mmu_notifier_invalidate_range_start",
};

static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("BENCH-ERROR ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
	failures++;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* ---- the ftrace function profiler ---- */

static int tracing_write(const char *file, const char *val, int append)
{
	char path[128];
	int fd, ok;

	snprintf(path, sizeof(path), "%s/%s", TRACING, file);
	fd = open(path, O_WRONLY | (append ? O_APPEND : O_TRUNC));
	if (fd < 0)
		return -1;
	ok = write(fd, val, strlen(val)) == (ssize_t)strlen(val);
	close(fd);
	return ok ? 0 : -1;
}

/* Restrict the profiler to our functions; a missing one is reported. */
static void profiler_setup(void)
{
	unsigned int i, n = 0;

	if (tracing_write("set_ftrace_filter", "", 0)) {
		printf("INFO profiler unavailable (%s/set_ftrace_filter: %s)\n",
		       TRACING, strerror(errno));
		return;
	}
	for (i = 0; i < ARRAY_SIZE(profiled); i++) {
		if (tracing_write("set_ftrace_filter", profiled[i], 1))
			printf("INFO profiler cannot trace %s\n", profiled[i]);
		else
			n++;
	}
	profiler = n > 0;
	printf("INFO profiler traces %u functions\n", n);
}

static void profiler_start(void)
{
	/* Enabling resets the counters of every CPU. */
	if (profiler && tracing_write("function_profile_enabled", "1", 0))
		fail("profiler: cannot enable: %s", strerror(errno));
}

/* Does the 30-column name of trace_stat match one of @funcs? */
static int func_listed(const char *name, const char *funcs)
{
	const char *p = funcs;
	size_t len;

	while (*p) {
		len = strcspn(p, ",");
		if (len > 30)
			len = 30;
		if (strlen(name) == len && !strncmp(name, p, len))
			return 1;
		p += strcspn(p, ",");
		if (*p == ',')
			p++;
	}
	return 0;
}

/*
 * Stop profiling; add up the time (graph time: callees included) and the
 * calls of @funcs over every CPU's trace_stat/functionN.
 */
static void profiler_stop(const char *funcs, long long *ns, long long *calls)
{
	char path[128], line[256], name[64], unit[8];
	unsigned long hits;
	double t;
	FILE *f;
	int cpu;

	*ns = -1;
	*calls = -1;
	if (!profiler)
		return;
	tracing_write("function_profile_enabled", "0", 0);
	if (!funcs)
		return;
	*ns = 0;
	*calls = 0;
	for (cpu = 0; ; cpu++) {
		snprintf(path, sizeof(path), "%s/trace_stat/function%d",
			 TRACING, cpu);
		f = fopen(path, "r");
		if (!f)
			break;
		while (fgets(line, sizeof(line), f)) {
			if (sscanf(line, " %63s %lu %lf %7s", name, &hits, &t,
				   unit) != 4 || !func_listed(name, funcs))
				continue;
			if (!strcmp(unit, "us"))
				t *= 1e3;
			else if (!strcmp(unit, "ms"))
				t *= 1e6;
			*ns += (long long)t;
			*calls += hits;
		}
		fclose(f);
	}
}

/* ---- buffers ---- */

/*
 * A private anonymous buffer of @size bytes, 2 MiB aligned and a VMA of
 * its own, advised for THP or against it (THP is "madvise" in the guest).
 */
static char *buf_map(size_t size, int thp)
{
	size_t len = size + PMD_BYTES;
	char *raw, *p;

	raw = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED) {
		fail("mmap %zu bytes: %s", len, strerror(errno));
		exit(1);
	}
	p = (char *)(((uintptr_t)raw + PMD_BYTES - 1) & ~(PMD_BYTES - 1));
	if (p > raw)
		munmap(raw, p - raw);
	if (raw + len > p + size)
		munmap(p + size, raw + len - (p + size));
	if (madvise(p, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)) {
		fail("madvise: %s", strerror(errno));
		exit(1);
	}
	return p;
}

/* Word 0 of every page carries its own tag: page index and a seed. */
static uint64_t tag(size_t page, unsigned int seed)
{
	return ((uint64_t)seed << 40) ^ (page * 0x9e3779b97f4a7c15ULL) ^ page;
}

static void buf_fill(char *p, size_t size, unsigned int seed)
{
	size_t i;

	for (i = 0; i < size / page_size; i++)
		*(volatile uint64_t *)(p + i * page_size) = tag(i, seed);
}

static int buf_check(const char *what, const char *p, size_t size,
		     unsigned int seed)
{
	size_t i;

	for (i = 0; i < size / page_size; i++) {
		if (*(const volatile uint64_t *)(p + i * page_size) !=
		    tag(i, seed)) {
			fail("%s: %zu MiB: page %zu holds the wrong data", what,
			     size / MIB, i);
			return -1;
		}
	}
	return 0;
}

/* A device read of a never-touched range sees the zero page. */
static int buf_check_zero(const char *what, const char *p, size_t size)
{
	size_t i;

	for (i = 0; i < size / page_size; i++) {
		if (*(const volatile uint64_t *)(p + i * page_size)) {
			fail("%s: %zu MiB: page %zu is not zero", what,
			     size / MIB, i);
			return -1;
		}
	}
	return 0;
}

/* AnonHugePages of the VMA starting at @p, from /proc/self/smaps. */
static long anon_huge_kb(const char *p)
{
	char line[256], start[32];
	long kb = -1;
	int in = 0;
	FILE *f;

	snprintf(start, sizeof(start), "%lx-", (unsigned long)p);
	f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, start, strlen(start)))
			in = 1;
		else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

/* A filled buffer whose backing is checked: all THP, or no THP at all. */
static char *buf_populated(size_t size, int thp, unsigned int seed)
{
	char *p = buf_map(size, thp);
	long kb;

	buf_fill(p, size, seed);
	kb = anon_huge_kb(p);
	if (kb != (thp ? (long)(size / 1024) : 0)) {
		fail("%zu MiB %s buffer has %ld kB of THP: the case would not measure what it says",
		     size / MIB, thp ? "THP" : "4K", kb);
		exit(1);
	}
	return p;
}

/* ---- the device ---- */

/*
 * Set while a failure means "this repetition is void, redo it": migration
 * is best effort (a page another CPU briefly holds stays behind) and a
 * driver may refuse the whole request then. Reported as a REDO line.
 */
static int dmirror_may_fail;

static int dmirror(unsigned long req, void *addr, void *ptr, size_t size,
		   const char *what)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)addr,
		.ptr = (uintptr_t)ptr,
		.npages = size / page_size,
	};
	int ret, tries = 0;

	do {
		ret = ioctl(dev_fd, req, &cmd);
	} while (ret && (errno == EINTR || errno == EBUSY) && ++tries < 100);
	if (ret && dmirror_may_fail) {
		printf("REDO %s %zu ioctl: %s\n", what, size, strerror(errno));
		return -1;
	}
	if (ret) {
		fail("%s: %zu MiB: ioctl: %s", what, size / MIB,
		     strerror(errno));
		return -1;
	}
	if (cmd.cpages != cmd.npages && dmirror_may_fail) {
		printf("REDO %s %zu %llu of %llu pages\n", what, size,
		       (unsigned long long)cmd.cpages,
		       (unsigned long long)cmd.npages);
		return -1;
	}
	if (cmd.cpages != cmd.npages) {
		fail("%s: %zu MiB: the device handled %llu of %llu pages", what,
		     size / MIB, (unsigned long long)cmd.cpages,
		     (unsigned long long)cmd.npages);
		return -1;
	}
	return 0;
}

/* ---- timing series ---- */

struct series {
	const char *name;
	size_t size;
	uint64_t ns[MAX_REPS];
	int n;
	long long kernel_ns, kcalls;
};

static void series_init(struct series *s, const char *name, size_t size)
{
	memset(s, 0, sizeof(*s));
	s->name = name;
	s->size = size;
	s->kernel_ns = -1;
	s->kcalls = -1;
}

static void series_add(struct series *s, uint64_t t0)
{
	uint64_t ns = now_ns() - t0;

	if (quiet)
		return;
	if (s->n < MAX_REPS)
		s->ns[s->n++] = ns;
	printf("SAMPLE %s %zu %llu\n", s->name, s->size,
	       (unsigned long long)ns);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void series_print(struct series *s)
{
	uint64_t med;

	if (!s->n || quiet)
		return;
	qsort(s->ns, s->n, sizeof(s->ns[0]), cmp_u64);
	med = s->n % 2 ? s->ns[s->n / 2] :
		(s->ns[s->n / 2 - 1] + s->ns[s->n / 2]) / 2;
	printf("BENCH %s %zu %llu %llu %llu %d %lld %lld\n", s->name, s->size,
	       (unsigned long long)med, (unsigned long long)s->ns[0],
	       (unsigned long long)s->ns[s->n - 1], s->n, s->kernel_ns,
	       s->kcalls);
	fflush(stdout);
}

/*
 * Each case runs reps timed repetitions plus one profiled one. In the
 * loops below, "prof" is true on that last repetition: its user time is
 * not kept, the kernel's is.
 */
#define for_each_rep(r, prof) \
	for ((r) = 0; ((prof) = (r) == reps), (r) <= reps; (r)++)

static void timed_begin(int prof, uint64_t *t0)
{
	if (prof && !quiet)
		profiler_start();
	*t0 = now_ns();
}

static void timed_end(struct series *s, int prof, uint64_t t0,
		      const char *funcs)
{
	if (prof && !quiet)
		profiler_stop(funcs, &s->kernel_ns, &s->kcalls);
	else if (!prof)
		series_add(s, t0);
}

/* ---- the cases ---- */

/* Copy limit: memcpy between two populated THP buffers. */
static void case_memcpy(size_t size)
{
	char *src = buf_populated(size, 1, 1), *dst = buf_populated(size, 1, 2);
	struct series s;
	uint64_t t0;
	int r, prof;

	series_init(&s, "memcpy", size);
	for_each_rep(r, prof) {
		if (prof)
			break;
		timed_begin(0, &t0);
		memcpy(dst, src, size);
		timed_end(&s, 0, t0, NULL);
		buf_check("memcpy", dst, size, 1);
		buf_fill(dst, size, 2);
	}
	series_print(&s);
	munmap(src, size);
	munmap(dst, size);
}

/* hmm_range_fault() without faulting, over a populated range. */
static void case_snapshot(size_t size, int thp)
{
	char *p = buf_populated(size, thp, 3);
	unsigned char *prot = malloc(size / page_size);
	size_t i, want = HMM_DMIRROR_PROT_WRITE |
		(thp ? HMM_DMIRROR_PROT_PMD : 0);
	struct series s;
	uint64_t t0;
	int r, prof;

	series_init(&s, thp ? "snapshot-thp" : "snapshot-4k", size);
	for_each_rep(r, prof) {
		memset(prot, 0xee, size / page_size);
		timed_begin(prof, &t0);
		if (dmirror(HMM_DMIRROR_SNAPSHOT, p, prot, size, s.name))
			break;
		timed_end(&s, prof, t0, KF_FAULT);
		for (i = 0; i < size / page_size; i++) {
			if ((prot[i] & 0xf) == (HMM_DMIRROR_PROT_READ | want) ||
			    (prot[i] & 0xf) == want)
				continue;
			fail("%s: page %zu reported as 0x%x", s.name, i,
			     prot[i]);
			break;
		}
	}
	series_print(&s);
	free(prot);
	munmap(p, size);
}

/*
 * Fault-in of an unpopulated 4K range by the device: a read (the zero
 * page) and a write (new pages), a fresh range each repetition.
 */
static void case_fault(size_t size, int write)
{
	char *bounce = malloc(size), *p;
	struct series s;
	uint64_t t0;
	int r, prof;

	series_init(&s, write ? "fault-write" : "fault-read", size);
	for_each_rep(r, prof) {
		p = buf_map(size, 0);
		if (write)
			buf_fill(bounce, size, 4);
		else
			buf_fill(bounce, size, 5);
		timed_begin(prof, &t0);
		if (dmirror(write ? HMM_DMIRROR_WRITE : HMM_DMIRROR_READ, p,
			    bounce, size, s.name))
			break;
		timed_end(&s, prof, t0, KF_FAULT);
		if (write)
			buf_check(s.name, p, size, 4);
		else
			buf_check_zero(s.name, bounce, size);
		munmap(p, size);
	}
	series_print(&s);
	free(bounce);
}

/* Device reads and writes of a range it already mirrors. */
static void case_dev_rw(size_t size)
{
	char *p = buf_populated(size, 0, 6), *bounce = malloc(size);
	struct series rd, wr;
	uint64_t t0;
	int r, prof;

	series_init(&rd, "dev-read", size);
	series_init(&wr, "dev-write", size);
	if (dmirror(HMM_DMIRROR_READ, p, bounce, size, "dev-read (mirror)"))
		goto out;
	for_each_rep(r, prof) {
		memset(bounce, 0, size);
		timed_begin(prof, &t0);
		if (dmirror(HMM_DMIRROR_READ, p, bounce, size, rd.name))
			break;
		timed_end(&rd, prof, t0, KF_FAULT);
		buf_check(rd.name, bounce, size, 6 + r);

		buf_fill(bounce, size, 7 + r);
		timed_begin(prof, &t0);
		if (dmirror(HMM_DMIRROR_WRITE, p, bounce, size, wr.name))
			break;
		timed_end(&wr, prof, t0, KF_FAULT);
		buf_check(wr.name, p, size, 7 + r);
	}
	series_print(&rd);
	series_print(&wr);
out:
	free(bounce);
	munmap(p, size);
}

/*
 * Migration to device memory of a populated range, 4K- or THP-backed
 * (the ioctl also reads the migrated data back, which is checked), then
 * back: for 4K by the driver (MIGRATE_TO_SYS), for THP by CPU faults on
 * every page.
 */
static void case_migrate(size_t size, int thp)
{
	char *p, *bounce = malloc(size);
	struct series to_dev, back;
	int r, prof, redo = 0, ret;
	uint64_t t0;
	size_t i;

	series_init(&to_dev, thp ? "migrate-dev-thp" : "migrate-dev-4k", size);
	series_init(&back, thp ? "cpu-fault-back" : "migrate-sys", size);
	for_each_rep(r, prof) {
		p = buf_populated(size, thp, 8 + r);
		memset(bounce, 0, size);
		timed_begin(prof, &t0);
		dmirror_may_fail = redo < 5;
		ret = dmirror(HMM_DMIRROR_MIGRATE_TO_DEV, p, bounce, size,
			      to_dev.name);
		dmirror_may_fail = 0;
		if (ret && redo++ < 5) {
			/* Void: redo this repetition on a fresh buffer. */
			if (prof && !quiet)
				profiler_stop(NULL, &to_dev.kernel_ns,
					      &to_dev.kcalls);
			munmap(p, size);
			r--;
			continue;
		}
		if (ret)
			break;
		timed_end(&to_dev, prof, t0, KF_MIGRATE);
		buf_check(to_dev.name, bounce, size, 8 + r);

		timed_begin(prof, &t0);
		if (thp) {
			for (i = 0; i < size; i += page_size)
				(void)*(volatile char *)(p + i);
		} else if (dmirror(HMM_DMIRROR_MIGRATE_TO_SYS, p, bounce, size,
				   back.name)) {
			break;
		}
		timed_end(&back, prof, t0, KF_MIGRATE);
		buf_check(back.name, p, size, 8 + r);
		munmap(p, size);
	}
	series_print(&to_dev);
	series_print(&back);
	free(bounce);
}

/*
 * A shmem file of @size bytes (memfd) filled with @seed, mapped shared at
 * *@map; the caller closes the descriptor it returns.
 */
static int shmem_populated(size_t size, unsigned int seed, char **map)
{
	int fd = memfd_create("hmm-bench", MFD_CLOEXEC);

	if (fd < 0 || ftruncate(fd, size)) {
		fail("memfd of %zu MiB: %s", size / MIB, strerror(errno));
		exit(1);
	}
	*map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (*map == MAP_FAILED) {
		fail("mmap memfd: %s", strerror(errno));
		exit(1);
	}
	buf_fill(*map, size, seed);
	return fd;
}

/*
 * Can shmem pages migrate at all? Upstream 6.12 leaves them in system
 * memory, which its driver reports as ENOENT; the case is then ours only.
 */
static int shmem_migrates(void)
{
	struct hmm_dmirror_cmd cmd = { .npages = 1 };
	char *p, *bounce = malloc(page_size);
	int fd, ret;

	fd = shmem_populated(page_size, 1, &p);
	cmd.addr = (uintptr_t)p;
	cmd.ptr = (uintptr_t)bounce;
	ret = ioctl(dev_fd, HMM_DMIRROR_MIGRATE_TO_DEV, &cmd);
	if (ret)
		printf("INFO shmem pages do not migrate on this kernel (%s): migrate-*-shmem not run\n",
		       strerror(errno));
	munmap(p, page_size);
	close(fd);
	free(bounce);
	return !ret;
}

/*
 * Migration of a populated shmem file to device memory and back by the
 * driver, next to the anonymous 4K case; the data are checked both ways,
 * the way back through read() rather than the mapping.
 */
static void case_migrate_shmem(size_t size, int arg)
{
	char *p, *bounce = malloc(size);
	struct series to_dev, back;
	int r, prof, fd;
	uint64_t t0;

	if (!shmem_migrates())
		goto out;
	series_init(&to_dev, "migrate-dev-shmem", size);
	series_init(&back, "migrate-sys-shmem", size);
	for_each_rep(r, prof) {
		fd = shmem_populated(size, 15 + r, &p);
		memset(bounce, 0, size);
		timed_begin(prof, &t0);
		if (dmirror(HMM_DMIRROR_MIGRATE_TO_DEV, p, bounce, size,
			    to_dev.name))
			break;
		timed_end(&to_dev, prof, t0, KF_MIGRATE);
		buf_check(to_dev.name, bounce, size, 15 + r);

		timed_begin(prof, &t0);
		if (dmirror(HMM_DMIRROR_MIGRATE_TO_SYS, p, bounce, size,
			    back.name))
			break;
		timed_end(&back, prof, t0, KF_MIGRATE);
		if (pread(fd, bounce, size, 0) != (ssize_t)size)
			fail("%s: pread: %s", back.name, strerror(errno));
		buf_check(back.name, bounce, size, 15 + r);
		munmap(p, size);
		close(fd);
	}
	series_print(&to_dev);
	series_print(&back);
out:
	free(bounce);
}

/*
 * What a mirror costs munmap and mprotect: the same operation on a range
 * the device mirrors (it read it) and on one it does not.
 */
static void case_unmap_protect(size_t size, int mirrored)
{
	char *p, *bounce = malloc(size);
	struct series um, mp;
	uint64_t t0;
	int r, prof;

	series_init(&um, mirrored ? "munmap-mirror" : "munmap-plain", size);
	series_init(&mp, mirrored ? "mprotect-mirror" : "mprotect-plain", size);
	for_each_rep(r, prof) {
		p = buf_populated(size, 0, 12);
		if (mirrored &&
		    dmirror(HMM_DMIRROR_READ, p, bounce, size, "mirror"))
			break;
		timed_begin(prof, &t0);
		if (mprotect(p, size, PROT_READ))
			fail("mprotect: %s", strerror(errno));
		timed_end(&mp, prof, t0, KF_NOTIFIER);
		buf_check(mp.name, p, size, 12);

		/* mprotect() invalidated the mirror: the device reads again. */
		if (mirrored &&
		    dmirror(HMM_DMIRROR_READ, p, bounce, size, "mirror"))
			break;
		timed_begin(prof, &t0);
		if (munmap(p, size))
			fail("munmap: %s", strerror(errno));
		timed_end(&um, prof, t0, KF_NOTIFIER);
	}
	series_print(&um);
	series_print(&mp);
	free(bounce);
}

/* Exclusive access: the device takes it, then a CPU write revokes it. */
static void case_exclusive(size_t size)
{
	char *p = buf_populated(size, 0, 13), *bounce = malloc(size);
	struct series grant, revoke;
	uint64_t t0;
	int r, prof;

	series_init(&grant, "exclusive-grant", size);
	series_init(&revoke, "exclusive-revoke", size);
	for_each_rep(r, prof) {
		memset(bounce, 0, size);
		timed_begin(prof, &t0);
		if (dmirror(HMM_DMIRROR_EXCLUSIVE, p, bounce, size, grant.name))
			break;
		timed_end(&grant, prof, t0, KF_EXCLUSIVE);
		buf_check(grant.name, bounce, size, 13 + r);

		timed_begin(prof, &t0);
		buf_fill(p, size, 14 + r);
		timed_end(&revoke, prof, t0, NULL);
		buf_check(revoke.name, p, size, 14 + r);
	}
	series_print(&grant);
	series_print(&revoke);
	free(bounce);
	munmap(p, size);
}

/* ---- driver ---- */

/*
 * Every case runs from 2 MiB up to its own limit (or -m): under QEMU's TCG
 * moving data costs about 4 ms per MiB, so the cases that copy or fault
 * every page stop at 128 MiB, the per-page syscall ones at 32 MiB, and
 * make bench stays within its time budget. -f lifts the limits to 1 GiB.
 */
struct bench_case {
	const char *name;
	size_t max_mib;
	void (*run)(size_t size, int arg);
	int arg;
};

static void run_memcpy(size_t size, int arg) { case_memcpy(size); }
static void run_dev_rw(size_t size, int arg) { case_dev_rw(size); }
static void run_exclusive(size_t size, int arg) { case_exclusive(size); }

/* Buffer sizes, MiB: from one PMD to 1 GiB. */
static const size_t sizes_mib[] = { 2, 8, 32, 128, 512, 1024 };

static const struct bench_case cases[] = {
	{ "memcpy",		512,	run_memcpy,		0 },
	{ "snapshot-4k",	1024,	case_snapshot,		0 },
	{ "snapshot-thp",	1024,	case_snapshot,		1 },
	{ "fault-read",		128,	case_fault,		0 },
	{ "fault-write",	128,	case_fault,		1 },
	{ "dev-rw",		128,	run_dev_rw,		0 },
	{ "migrate-4k",		128,	case_migrate,		0 },
	{ "migrate-thp",	128,	case_migrate,		1 },
	{ "migrate-shmem",	128,	case_migrate_shmem,	0 },
	{ "mirror-cost-plain",	32,	case_unmap_protect,	0 },
	{ "mirror-cost-mirror",	32,	case_unmap_protect,	1 },
	{ "exclusive",		32,	run_exclusive,		0 },
};

static int wanted(const char *name)
{
	const char *p = only;
	size_t len;

	if (!p)
		return 1;
	while (*p) {
		len = strcspn(p, ",+");
		if (len && !strncmp(name, p, len))
			return 1;
		p += len;
		if (*p)
			p++;
	}
	return 0;
}

int main(int argc, char **argv)
{
	unsigned int i, j;
	int opt, timed;
	uint64_t start;
	size_t size;

	while ((opt = getopt(argc, argv, "r:m:c:f")) != -1) {
		switch (opt) {
		case 'r':
			reps = atoi(optarg);
			break;
		case 'm':
			max_bytes = strtoul(optarg, NULL, 0) * MIB;
			break;
		case 'c':
			only = optarg;
			break;
		case 'f':
			full = 1;
			break;
		default:
			fprintf(stderr, "usage: %s [-r reps] [-m max_MiB] [-c case,case+case...] [-f]\n",
				argv[0]);
			return 2;
		}
	}
	if (reps < 1 || reps >= MAX_REPS) {
		fprintf(stderr, "reps must be 1..%d\n", MAX_REPS - 1);
		return 2;
	}
	page_size = sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	dev_fd = open("/dev/hmm_dmirror0", O_RDWR);
	if (dev_fd < 0) {
		fail("/dev/hmm_dmirror0: %s", strerror(errno));
		return 1;
	}
	profiler_setup();
	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		if (!wanted(cases[i].name))
			continue;
		/*
		 * An unreported 2 MiB pass first: under QEMU's TCG the first
		 * run of a code path pays for its translation.
		 */
		start = now_ns();
		quiet = 1;
		timed = reps;
		reps = 1;
		cases[i].run(PMD_BYTES, cases[i].arg);
		reps = timed;
		quiet = 0;
		for (j = 0; j < ARRAY_SIZE(sizes_mib); j++) {
			size = sizes_mib[j] * MIB;
			if (size > max_bytes ||
			    (!full && sizes_mib[j] > cases[i].max_mib))
				break;
			cases[i].run(size, cases[i].arg);
		}
		printf("INFO case %s took %.1f s\n", cases[i].name,
		       (now_ns() - start) / 1e9);
	}
	close(dev_fd);
	return failures ? 1 : 0;
}
