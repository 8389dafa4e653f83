// SPDX-License-Identifier: GPL-2.0
/*
 * A model-checking fuzz of the HMM dummy device's ioctls (lib/test_hmm.c).
 *
 * The process maps a fixed layout of regions, each in its own window of
 * inaccessible memory: written anonymous pages, untouched anonymous pages,
 * read-only pages, a PROT_NONE range, an unmapped hole, a THP, a shared
 * memfd, a hugetlbfs page and a mapping of the device file itself
 * (VM_MIXEDMAP).  For every page the fuzz keeps a model: where the page
 * may be (system memory or the memory of device N), how the CPU maps it,
 * which device page tables may or surely hold it, which of them hold it
 * for atomics (HMM_DMIRROR_EXCLUSIVE), whether it is locked to its device,
 * and its expected content.  The content is a shadow that only the fuzz's
 * own successful writes, device or CPU, change; it is never refreshed from
 * the memory under test.  Where the kernel may legitimately do one of two
 * things (a write that failed part way may have written a prefix), the
 * model keeps both possibilities and narrows them when it sees the result.
 *
 * Each iteration sends one request, to one of the four devices (0 and 1
 * device-private, 2 and 3 device-coherent when present): most are valid,
 * page aligned and inside one region, a few straddle a region's edge, and
 * a minority keep the old malformed classes (closed and foreign
 * descriptors, unknown numbers and sizes, bad argument and buffer
 * pointers, zero, huge and overflowing ranges, kernel addresses).  All 15
 * commands are sent.  The errno must be the one the model predicts;
 * SNAPSHOT bytes, LOCK_QUERY bytes, device reads (direct and DMA), cpages,
 * faults, DMA statistics and CHECK_EXCLUSIVE are checked against the
 * model, and a failed command must leave the argument untouched.  CPU
 * loads and stores in between move pages back and must raise SIGBUS
 * exactly on locked pages.  At the end every page is compared from the
 * CPU and each device's devmem_used must match the model, then be 0.
 *
 * A coverage line (per command: sent, succeeded, checked) and every errno
 * seen are printed; a command never sent or never checked fails the test.
 * A second case closes the descriptor while another thread has ioctls in
 * flight on it, and checks the file's device memory is given back.
 *
 * -s SEED -n ITERATIONS replays a run (the seed is printed); -T SECONDS
 * bounds the time, in case the machine is slow (default 240).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
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

#include "../kselftest.h"
#include "hmm-common.h"

#define PAGE		4096UL
#define WIN		(4UL << 20)	/* one region per 4 MiB window */
#define HUGE_2M		(2UL << 20)
#define NDEV		4
#define NPRIVATE	2
#define BUF_PAGES	512		/* largest modelled request */
#define RUN_PAGES	32		/* usual request length */
#define DMA_MAX_PAGES	8192		/* DMIRROR_DMA_MAX_PAGES */

enum kind { K_ERR, K_ANON, K_RO, K_THP, K_SHM, K_HUGETLB, K_DEVMAP };

enum region { R_ANON, R_FRESH, R_RO, R_THP, R_SHM, R_HUGETLB, R_DEVMAP,
	      R_NONE, R_HOLE, R_BUF, R_NR };

/* Where a page may be: bit 0 system memory, bit 1 + d device d. */
#define L_SYS		1u
#define L_DEV(d)	(2u << (d))
#define L_PRIVATE	(L_DEV(0) | L_DEV(1))
#define L_COHERENT	(L_DEV(2) | L_DEV(3))

/* How the CPU may map it (system or coherent memory). */
#define MS_NONE		1u	/* nothing mapped */
#define MS_ZERO		2u	/* the shared zero page */
#define MS_MAP		4u	/* a present page */
#define MS_EXCL		8u	/* a device-exclusive entry */

struct region_map {
	char		*at;
	unsigned long	npages;
	enum kind	kind;
	int		first;		/* index of its first page model */
	bool		present;
};

/* The model of one page; device masks have bit d for device d. */
struct pmodel {
	unsigned char	kind, loc, ms;
	unsigned char	pt_may, pt_sure;	/* device page table entry */
	unsigned char	at_may, at_sure;	/* ... made for atomics */
	bool		lk_may, lk_sure;	/* locked to its device */
	bool		has_alt;		/* content may be alt instead */
	bool		unknown;		/* content not modelled */
	bool		fuzzy;			/* shmem, been on coherent memory */
};

enum { THP_NO, THP_YES, THP_MAYBE };

struct device {
	int		fd;
	bool		present, coherent;
	dev_t		rdev;
	uint64_t	win_addr, win_n;	/* the DMA window */
	long		local;			/* its last request, -1 unknown */
	uint64_t	last_addr, last_n;	/* last range migrated here */
	bool		unmapped;		/* DMA_UNMAP since the last DMA */
};

/* The commands; then the statistics' pseudo commands, CPU and malformed. */
enum {
	C_READ, C_WRITE, C_TO_DEV, C_TO_SYS, C_SNAP, C_EXCL, C_CHECK_EXCL,
	C_RELEASE, C_DMA_READ, C_DMA_WRITE, C_DMA_STATS, C_DMA_UNMAP,
	C_LOCK, C_UNLOCK, C_LOCK_QUERY, C_NR, C_CPU = C_NR, C_BAD, C_NSTAT
};

static const struct {
	unsigned long	nr;
	const char	*name;
	bool		ptr;	/* uses the buffer at ptr */
} cmds[C_NR] = {
	[C_READ]	= { HMM_DMIRROR_READ, "READ", true },
	[C_WRITE]	= { HMM_DMIRROR_WRITE, "WRITE", true },
	[C_TO_DEV]	= { HMM_DMIRROR_MIGRATE_TO_DEV, "MIGRATE_TO_DEV", true },
	[C_TO_SYS]	= { HMM_DMIRROR_MIGRATE_TO_SYS, "MIGRATE_TO_SYS", false },
	[C_SNAP]	= { HMM_DMIRROR_SNAPSHOT, "SNAPSHOT", true },
	[C_EXCL]	= { HMM_DMIRROR_EXCLUSIVE, "EXCLUSIVE", true },
	[C_CHECK_EXCL]	= { HMM_DMIRROR_CHECK_EXCLUSIVE, "CHECK_EXCLUSIVE", false },
	[C_RELEASE]	= { HMM_DMIRROR_RELEASE, "RELEASE", false },
	[C_DMA_READ]	= { HMM_DMIRROR_DMA_READ, "DMA_READ", true },
	[C_DMA_WRITE]	= { HMM_DMIRROR_DMA_WRITE, "DMA_WRITE", true },
	[C_DMA_STATS]	= { HMM_DMIRROR_DMA_STATS, "DMA_STATS", true },
	[C_DMA_UNMAP]	= { HMM_DMIRROR_DMA_UNMAP, "DMA_UNMAP", false },
	[C_LOCK]	= { HMM_DMIRROR_LOCK, "LOCK", false },
	[C_UNLOCK]	= { HMM_DMIRROR_UNLOCK, "UNLOCK", false },
	[C_LOCK_QUERY]	= { HMM_DMIRROR_LOCK_QUERY, "LOCK_QUERY", true },
};

static struct region_map rg[R_NR];
static struct pmodel *pm;
static int npm;
static unsigned char *shadow, *alt;	/* npm pages each */
static struct device dev[NDEV];
static int thp_state;
static char *resv;
static uint64_t user_top;	/* TASK_SIZE, see user_top_probe() */
static bool swiotlb_force;
static unsigned long enomem_probes;

/* Statistics: per command sent, succeeded, checked; every errno. */
static unsigned long st_sent[C_NSTAT], st_ok[C_NSTAT], st_checked[C_NSTAT];
static unsigned long st_errno[256];
static unsigned long st_unknown;	/* pages whose content got lost */

static char why[512];
static int keep_going;	/* debugging: mismatches to report and go on */

/* The last requests, printed when the model disagrees. */
#define HISTORY 4096
static struct hist_entry {
	unsigned long	it;
	int		c, d, err, p0;
	unsigned long	n;
	unsigned char	loc, ms;
} hist[HISTORY];
static unsigned long hist_n, cur_it;
	/* what the last failed check found */

#define MISMATCH(...) ({ snprintf(why, sizeof(why), __VA_ARGS__); -1; })

static uint64_t rnd(uint64_t *s, uint64_t n)
{
	return n ? rnd_next(s) % n : 0;
}

static void fill_random(void *p, size_t len, uint64_t *s)
{
	uint64_t *q = p;
	size_t i;

	for (i = 0; i < len / 8; i++)
		q[i] = rnd_next(s);
}

/*
 * x86-64 processes get 47 bits of address space, 56 with 5-level paging;
 * the top page is never usable.  A mapping above 47 bits tells which.
 */
static void user_top_probe(void)
{
	void *hi = (void *)(1UL << 50);
	void *p = mmap(hi, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS |
		       MAP_FIXED_NOREPLACE, -1, 0);

	user_top = (1UL << 47) - PAGE;
	if (p == hi) {
		user_top = (1UL << 56) - PAGE;
		munmap(p, PAGE);
	}
}

/* ------------------------------------------------------------------
 * Layout
 */

static unsigned char *shadow_of(int p)
{
	return shadow + (size_t)p * PAGE;
}

static unsigned char *alt_of(int p)
{
	return alt + (size_t)p * PAGE;
}

/* The page model of @addr, or -1 where nothing usable is mapped. */
static int page_of(uint64_t addr)
{
	int r;

	for (r = 0; r < R_HOLE; r++) {
		uint64_t a = (uintptr_t)rg[r].at;

		if (rg[r].present && rg[r].kind != K_ERR && addr >= a &&
		    addr < a + rg[r].npages * PAGE)
			return rg[r].first + (addr - a) / PAGE;
	}
	return -1;
}

static char *page_addr(int p)
{
	int r;

	for (r = 0; r < R_HOLE; r++)
		if (rg[r].kind != K_ERR && rg[r].present && p >= rg[r].first &&
		    p < rg[r].first + (int)rg[r].npages)
			return rg[r].at + (p - rg[r].first) * PAGE;
	return NULL;
}

static int region_map(int r, int devfd)
{
	size_t len = rg[r].npages * PAGE;
	int prot = PROT_READ | PROT_WRITE;
	int anon = MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS;
	void *p;
	int memfd;

	switch (r) {
	case R_NONE:
		return 0;	/* the reservation is PROT_NONE */
	case R_HOLE:
		return munmap(rg[r].at, len);
	case R_THP:
		p = mmap(rg[r].at, len, prot, anon, -1, 0);
		/* THP in both modes; then no khugepaged behind our back. */
		madvise(p, len, MADV_HUGEPAGE);
		break;
	case R_HUGETLB:
		p = mmap(rg[r].at, len, prot, anon | MAP_HUGETLB, -1, 0);
		if (p == MAP_FAILED) {
			ksft_print_msg("no 2 MiB huge page: hugetlbfs region left out\n");
			rg[r].present = false;
			return 0;
		}
		break;
	case R_DEVMAP:
		p = mmap(rg[r].at, len, prot, MAP_FIXED | MAP_SHARED, devfd, 0);
		break;
	case R_SHM:
		memfd = memfd_create("hmm-fuzz", MFD_ALLOW_SEALING);
		if (memfd < 0 || ftruncate(memfd, len))
			return -1;
		fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
		p = mmap(rg[r].at, len, prot, MAP_FIXED | MAP_SHARED, memfd, 0);
		close(memfd);
		break;
	default:
		p = mmap(rg[r].at, len, prot, anon, -1, 0);
		break;
	}
	return p == MAP_FAILED ? -1 : 0;
}

static void model_init_region(int r, uint64_t *s)
{
	int i, p;

	for (i = 0; i < (int)rg[r].npages; i++) {
		p = rg[r].first + i;
		memset(&pm[p], 0, sizeof(pm[p]));
		pm[p].kind = rg[r].kind;
		pm[p].loc = L_SYS;
		pm[p].ms = MS_MAP;
		if (r == R_FRESH) {
			pm[p].ms = MS_NONE;
			memset(shadow_of(p), 0, PAGE);
			continue;
		}
		if (r == R_SHM)
			pm[p].ms = MS_NONE | MS_MAP;
		if (r == R_DEVMAP) {
			memset(shadow_of(p), 0, PAGE);
			continue;
		}
		fill_random(shadow_of(p), PAGE, s);
		memcpy(rg[r].at + i * PAGE, shadow_of(p), PAGE);
	}
}

/*
 * Reserve one window of inaccessible memory per region and map each
 * region in the middle of its own, MAP_FIXED: every region has guard
 * pages around it.  The hole is only the region's own pages, so that no
 * later mmap() can land in it.
 */
static int layout_map(int devfd, uint64_t *s)
{
	static const unsigned long npages[R_NR] = {
		[R_ANON] = 32, [R_FRESH] = 16, [R_RO] = 4,
		[R_THP] = HUGE_2M / PAGE, [R_SHM] = 16,
		[R_HUGETLB] = HUGE_2M / PAGE, [R_DEVMAP] = 8,
		[R_NONE] = 4, [R_HOLE] = 4, [R_BUF] = BUF_PAGES,
	};
	static const enum kind kinds[R_NR] = {
		[R_ANON] = K_ANON, [R_FRESH] = K_ANON, [R_RO] = K_RO,
		[R_THP] = K_THP, [R_SHM] = K_SHM, [R_HUGETLB] = K_HUGETLB,
		[R_DEVMAP] = K_DEVMAP,
	};
	int r;

	resv = mmap(NULL, R_NR * WIN + HUGE_2M, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (resv == MAP_FAILED)
		return -1;
	resv = (char *)(((uintptr_t)resv + HUGE_2M - 1) & ~(HUGE_2M - 1));
	npm = 0;
	for (r = 0; r < R_NR; r++) {
		rg[r].at = resv + r * WIN + WIN / 2;
		rg[r].npages = npages[r];
		rg[r].kind = kinds[r];
		rg[r].present = true;
		rg[r].first = npm;
		if (rg[r].kind != K_ERR)
			npm += npages[r];
	}
	pm = calloc(npm, sizeof(*pm));
	shadow = malloc((size_t)npm * PAGE);
	alt = malloc((size_t)npm * PAGE);
	if (!pm || !shadow || !alt)
		return -1;
	for (r = 0; r < R_NR; r++) {
		if (region_map(r, devfd))
			return -1;
		if (rg[r].kind != K_ERR && rg[r].present)
			model_init_region(r, s);
	}
	if (mprotect(rg[R_RO].at, rg[R_RO].npages * PAGE, PROT_READ))
		return -1;
	return madvise(rg[R_THP].at, HUGE_2M, MADV_NOHUGEPAGE);
}

/* ------------------------------------------------------------------
 * Model helpers
 */

static bool is_private(int d)
{
	return d < NPRIVATE;
}

/* Every device forgets page @p: an invalidation without an owner. */
static void zap_all(int p, bool sure)
{
	pm[p].pt_sure = 0;
	pm[p].at_sure = 0;
	if (sure) {
		pm[p].pt_may = 0;
		pm[p].at_may = 0;
	}
}

/* Devices other than @d forget @p: an invalidation owned by @d. */
static void zap_others(int p, int d)
{
	unsigned char keep = 1u << d;

	pm[p].pt_may &= keep;
	pm[p].pt_sure &= keep;
	pm[p].at_may &= keep;
	pm[p].at_sure &= keep;
}

static void pt_set(int p, int d)
{
	pm[p].pt_may |= 1u << d;
	if (!pm[p].fuzzy)
		pm[p].pt_sure |= 1u << d;
}

static unsigned char sys_ms(int p)
{
	return pm[p].kind == K_SHM ? MS_NONE | MS_MAP : MS_MAP;
}

/* A THP split: every device page table forgets the whole region. */
static void thp_split(bool sure)
{
	int i;

	if (thp_state == THP_NO)
		return;
	for (i = 0; i < (int)rg[R_THP].npages; i++)
		zap_all(rg[R_THP].first + i, sure && thp_state == THP_YES);
	thp_state = sure ? THP_NO : THP_MAYBE;
}

/*
 * Page @p leaves the devices in @from (L_DEV bits) for system memory, as
 * a migration back does.  @sure: the move surely happened if the page was
 * there.
 */
static void leave_device(int p, unsigned int from, bool sure)
{
	struct pmodel *m = &pm[p];
	unsigned int hit = m->loc & from;
	bool all = m->loc == hit;

	if (m->fuzzy) {
		sure = false;
		all = false;
	}

	if (!hit)
		return;
	zap_all(p, sure && all);
	if (sure)
		m->loc &= ~from;
	m->loc |= L_SYS;
	if (sure && all) {
		m->ms = sys_ms(p);
		m->lk_may = false;
	} else {
		m->ms |= sys_ms(p);
	}
	m->lk_sure = false;
}

/*
 * The CPU (or GUP, or hmm_range_fault() for device @d, -1 for neither)
 * faults page @p: private pages of devices in @move come back, the zero
 * page is copied on a write, an exclusive entry is restored, an empty
 * slot filled.  Not sure: the fault may not have happened.
 */
static void fault_in(int p, unsigned int move, bool write, bool sure)
{
	struct pmodel *m = &pm[p];
	unsigned char ms, to = 0;

	leave_device(p, move, sure);
	if (m->kind == K_HUGETLB || m->kind == K_DEVMAP)
		return;
	ms = m->ms;
	if (ms & MS_NONE)
		to |= (write || m->kind == K_SHM) ? MS_MAP : MS_ZERO;
	if (ms & MS_ZERO)
		to |= write ? MS_MAP : MS_ZERO;
	if (ms & (MS_MAP | MS_EXCL))
		to |= MS_MAP;
	if (m->kind == K_SHM)
		to |= MS_NONE | MS_MAP;
	if ((ms & MS_EXCL) || (write && (ms & MS_ZERO)))
		zap_all(p, sure && (ms == MS_EXCL || (write && ms == MS_ZERO)));
	m->ms = sure ? to : ms | to;
}

/* May the page be (sure: surely is) locked on a device in @devs? */
static int lock_fail(int p, unsigned int devs)
{
	struct pmodel *m = &pm[p];

	if (!m->lk_may || !(m->loc & devs))
		return 0;
	return m->lk_sure && !(m->loc & ~devs) ? 2 : 1;
}

static void content_set(int p, const void *data)
{
	memcpy(shadow_of(p), data, PAGE);
	pm[p].has_alt = false;
	pm[p].unknown = false;
}

/* The content of @p may now be @data too (a write that may have happened). */
static void content_maybe(int p, const void *data)
{
	if (pm[p].unknown || !memcmp(shadow_of(p), data, PAGE))
		return;
	if (pm[p].has_alt) {
		pm[p].unknown = true;
		st_unknown++;
		return;
	}
	memcpy(alt_of(p), data, PAGE);
	pm[p].has_alt = true;
}

/* Compare what was read of @p with the model, narrowing it. */
static int content_check(int p, const void *data)
{
	if (pm[p].unknown)
		return 0;
	if (!memcmp(shadow_of(p), data, PAGE)) {
		pm[p].has_alt = false;
		return 0;
	}
	if (pm[p].has_alt && !memcmp(alt_of(p), data, PAGE)) {
		content_set(p, data);
		return 0;
	}
	return -1;
}

/* ------------------------------------------------------------------
 * Requests
 */

struct req {
	int		c;		/* C_*, or C_BAD */
	int		d;		/* device */
	int		fd;
	unsigned long	nr;		/* ioctl number sent */
	void		*arg;
	struct hmm_dmirror_cmd cmd;
	int		expect;		/* for malformed requests */
	bool		malformed;
	bool		bad_ptr;
	bool		probe;		/* devmem_limit set: ENOMEM */
	int		pg[BUF_PAGES];	/* page models of the range */
	unsigned long	n;
};

/* The errno expected for a malformed request, from its shape. */
static bool shape_bad(const struct hmm_dmirror_cmd *c)
{
	if (c->addr % PAGE || !c->npages || c->npages > user_top / PAGE)
		return true;
	return c->addr + c->npages * PAGE < c->addr ||
	       c->addr + c->npages * PAGE > user_top;
}

static char *buf;	/* the R_BUF region */

static void *bad_pointer(uint64_t *s)
{
	switch (rnd(s, 4)) {
	case 0:
		return NULL;
	case 1:
		return rg[R_HOLE].at;
	case 2:
		return (void *)0xffff888000000000UL;	/* kernel memory */
	default:
		return rg[R_NONE].at;
	}
}

/*
 * A command the driver does not have: a real one with the wrong size,
 * direction or type, or a number nobody uses.
 */
static unsigned long bad_cmd(uint64_t *s)
{
	unsigned long good = cmds[rnd(s, C_NR)].nr;
	unsigned int nr = _IOC_NR(good);

	switch (rnd(s, 5)) {
	case 0:
		return _IOC(_IOC_DIR(good), 'H', nr,
			    sizeof(struct hmm_dmirror_cmd) + 1 + rnd(s, 100));
	case 1:
		return _IOC(rnd(s, 3), 'H', nr, sizeof(struct hmm_dmirror_cmd));
	case 2:
		return _IOC(_IOC_DIR(good), 'A' + rnd(s, 7), nr,
			    sizeof(struct hmm_dmirror_cmd));
	case 3:
		return _IOWR('H', 0x40 + rnd(s, 0xc0), struct hmm_dmirror_cmd);
	default:
		return (unsigned int)rnd_next(s) | _IOC(0, 'h', 0, 0);
	}
}

/* A range the driver must refuse with EINVAL. */
static void bad_shape(struct hmm_dmirror_cmd *c, uint64_t *s)
{
	switch (rnd(s, 6)) {
	case 0:
		c->addr = (uintptr_t)rg[R_ANON].at + 1 + rnd(s, PAGE - 1);
		c->npages = 1 + rnd(s, 4);
		break;
	case 1:
		c->addr = (uintptr_t)rg[R_ANON].at;
		c->npages = 0;
		break;
	case 2:
		c->addr = user_top + PAGE * rnd(s, 4);
		c->npages = 1 + rnd(s, 4);
		break;
	case 3:
		c->addr = ~0ULL << (12 + rnd(s, 40));	/* kernel half */
		c->npages = 1;
		break;
	case 4:		/* past the end of the address space */
		c->addr = (uintptr_t)rg[R_ANON].at;
		c->npages = rnd(s, 2) ? ~0ULL : (~0ULL >> 12) + rnd(s, 4);
		break;
	default:	/* just past TASK_SIZE */
		c->addr = user_top - PAGE * (1 + rnd(s, 2));
		c->npages = (user_top - c->addr) / PAGE + 1 + rnd(s, 3);
		break;
	}
}

static int pick_device(uint64_t *s)
{
	int d;

	do
		d = rnd(s, NDEV);
	while (!dev[d].present);
	return d;
}

/*
 * RELEASE waits for every page of the device to come back; a coherent
 * page under an exclusive entry cannot be collected, so RELEASE would
 * wait for it in vain for seconds.
 */
static bool release_safe(int d)
{
	int p;

	for (p = 0; p < npm; p++)
		if ((pm[p].loc & L_DEV(d)) && !is_private(d) &&
		    (pm[p].ms & MS_EXCL))
			return false;
	return true;
}

/* Command weights: the model-heavy ones more often. */
static int pick_cmd(uint64_t *s, int d)
{
	static const unsigned char weight[C_NR] = {
		[C_READ] = 12, [C_WRITE] = 12, [C_TO_DEV] = 14, [C_TO_SYS] = 8,
		[C_SNAP] = 10, [C_EXCL] = 6, [C_CHECK_EXCL] = 4,
		[C_RELEASE] = 0, [C_DMA_READ] = 6, [C_DMA_WRITE] = 6,
		[C_DMA_STATS] = 3, [C_DMA_UNMAP] = 2, [C_LOCK] = 6,
		[C_UNLOCK] = 4, [C_LOCK_QUERY] = 4,
	};
	unsigned int total = 0, x, c;

	/* RELEASE unplugs all device memory: keep it rare. */
	if (rnd(s, 1500) == 0 && release_safe(d))
		return C_RELEASE;
	for (c = 0; c < C_NR; c++)
		total += weight[c];
	x = rnd(s, total);
	for (c = 0; x >= weight[c]; c++)
		x -= weight[c];
	return c;
}

/* A valid range in a region, or one that straddles its edge. */
static void pick_range(struct req *q, uint64_t *s)
{
	static const unsigned char weight[R_HOLE + 1] = {
		[R_ANON] = 10, [R_FRESH] = 4, [R_RO] = 2, [R_THP] = 4,
		[R_SHM] = 5, [R_HUGETLB] = 2, [R_DEVMAP] = 2, [R_NONE] = 1,
		[R_HOLE] = 1,
	};
	unsigned int total = 0, x, r;
	unsigned long np, start, n;

	for (r = 0; r <= R_HOLE; r++)
		total += rg[r].present ? weight[r] : 0;
	x = rnd(s, total);
	for (r = 0; x >= (rg[r].present ? weight[r] : 0); r++)
		x -= rg[r].present ? weight[r] : 0;
	np = rg[r].npages;
	start = rnd(s, np);
	n = 1 + rnd(s, RUN_PAGES < np - start ? RUN_PAGES : np - start);
	if (np > RUN_PAGES && rnd(s, 100) == 0) {	/* all of it */
		start = 0;
		n = np;
	}
	q->cmd.addr = (uintptr_t)rg[r].at + start * PAGE;
	switch (rnd(s, 16)) {
	case 0:		/* runs off the end */
		q->cmd.addr = (uintptr_t)rg[r].at + (np - 1 - rnd(s, 2 < np ? 2 : np)) * PAGE;
		n = 2 + rnd(s, 4);
		break;
	case 1:		/* starts in front */
		q->cmd.addr = (uintptr_t)rg[r].at - PAGE * (1 + rnd(s, 2));
		n = 2 + rnd(s, 4);
		break;
	}
	q->cmd.npages = n;
}

static void req_pages(struct req *q)
{
	unsigned long i;

	q->n = q->cmd.npages;
	for (i = 0; i < q->n && i < BUF_PAGES; i++)
		q->pg[i] = page_of(q->cmd.addr + i * PAGE);
}

static void req_build(struct req *q, uint64_t *s, int closed_fd, int null_fd)
{
	int x;

	memset(q, 0, offsetof(struct req, pg));
	q->d = pick_device(s);
	q->fd = dev[q->d].fd;
	q->arg = &q->cmd;
	q->c = pick_cmd(s, q->d);
	q->nr = cmds[q->c].nr;
	q->cmd.ptr = (uintptr_t)buf;
	pick_range(q, s);
	/* Locks and migrations back want pages on the device: often some. */
	if ((q->c == C_LOCK || q->c == C_UNLOCK || q->c == C_LOCK_QUERY ||
	     q->c == C_TO_SYS) && dev[q->d].last_n && rnd(s, 2)) {
		q->cmd.addr = dev[q->d].last_addr;
		q->cmd.npages = dev[q->d].last_n;
	}

	x = rnd(s, 100);
	if (x < 2) {
		q->fd = closed_fd;
		q->expect = EBADF;
	} else if (x < 4) {
		q->fd = null_fd;	/* not our device: no such ioctl */
		q->expect = ENOTTY;
	} else if (x < 6) {
		q->arg = rnd(s, 2) ? NULL : rg[R_NONE].at;
		q->expect = EFAULT;
	} else if (x < 10) {
		q->nr = bad_cmd(s);
		q->expect = ENOTTY;
	} else if (x < 15) {
		bad_shape(&q->cmd, s);
		q->expect = EINVAL;
	}
	if (q->expect) {
		q->malformed = true;
		/* A shape the driver rejects anyway comes first. */
		if (q->expect == EFAULT && q->arg != &q->cmd)
			return;
		if (q->expect != EBADF && q->expect != ENOTTY &&
		    shape_bad(&q->cmd))
			q->expect = EINVAL;
		return;
	}
	if (cmds[q->c].ptr && rnd(s, 25) == 0) {
		q->bad_ptr = true;
		q->cmd.ptr = (uintptr_t)bad_pointer(s);
	}
	req_pages(q);
}

/* ------------------------------------------------------------------
 * The model of each command.  Each gets the result and either accepts it
 * (updating the model) or returns -1 with the reason in why[].
 */

/* Bit of errno @x in a mask; EOPNOTSUPP, above 62, gets 63. */
static uint64_t E(int x)
{
	return 1ULL << (x == EOPNOTSUPP ? 63 : x < 63 ? x : 62);
}

static int expect_err(const struct req *q, uint64_t allowed, int err)
{
	if (allowed & E(err))
		return 0;
	return MISMATCH("%s on device %d: got %s, model allows mask %#llx",
			cmds[q->c].name, q->d, err ? strerror(err) : "success",
			(unsigned long long)allowed);
}

static int check_counts(const struct req *q, uint64_t cmin, uint64_t cmax,
			uint64_t fmin, uint64_t fmax)
{
	if (q->cmd.cpages < cmin || q->cmd.cpages > cmax)
		return MISMATCH("%s: cpages %llu, model %llu..%llu",
				cmds[q->c].name,
				(unsigned long long)q->cmd.cpages,
				(unsigned long long)cmin,
				(unsigned long long)cmax);
	if (q->cmd.faults < fmin || q->cmd.faults > fmax)
		return MISMATCH("%s: faults %llu, model %llu..%llu",
				cmds[q->c].name,
				(unsigned long long)q->cmd.faults,
				(unsigned long long)fmin,
				(unsigned long long)fmax);
	return 0;
}

static int check_data(const struct req *q, const unsigned char *data,
		      unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++) {
		if (content_check(q->pg[i], data + i * PAGE))
			return MISMATCH("%s dev %d: page %lu of %#llx (model %d) != shadow",
					cmds[q->c].name, q->d, i,
					(unsigned long long)q->cmd.addr,
					q->pg[i]);
	}
	return 0;
}

/* First page index of the request that cannot be faulted for @write. */
static unsigned long first_err_page(const struct req *q, bool write,
				    bool gup, int *err)
{
	unsigned long i;

	for (i = 0; i < q->n; i++) {
		int p = q->pg[i];

		if (p < 0) {
			*err = EFAULT;
			return i;
		}
		if (write && pm[p].kind == K_RO) {
			*err = gup ? EFAULT : EPERM;
			return i;
		}
		/* GUP cannot split a hugetlb page: FOLL_SPLIT_PMD refused. */
		if (gup && pm[p].kind == K_HUGETLB) {
			*err = EOPNOTSUPP;
			return i;
		}
	}
	return q->n;
}

/*
 * Pages of the request that may fault into a SIGBUS: locked to a device
 * the fault moves them away from.  Returns the first surely locked one
 * before @end (or @end), and whether some may be.
 */
static unsigned long first_locked(const struct req *q, unsigned long end,
				  unsigned int move, bool *maybe)
{
	unsigned long i;

	*maybe = false;
	for (i = 0; i < end; i++) {
		int l = lock_fail(q->pg[i], move);

		if (l == 2)
			return i;
		if (l == 1)
			*maybe = true;
	}
	return end;
}

/* Bits of the private devices other than @d: what a fault by @d moves. */
static unsigned int foreign_private(int d)
{
	return L_PRIVATE & ~(d >= 0 && is_private(d) ? L_DEV(d) : 0);
}

/*
 * hmm_range_fault() never faults the owner's own device pages, so a write
 * to a read-only page that may sit in device @q->d's memory fails with
 * EPERM only in the driver, after the whole request was faulted: pages
 * after @f were faulted too, and one of them that cannot be (a hole, a
 * page locked to another device) may answer EFAULT first.  Adds that
 * errno to @allowed and returns the end of the pages that may have been
 * faulted after @f.
 */
static unsigned long owner_ro_reach(const struct req *q, unsigned long f,
				    int ferr, bool write, uint64_t *allowed)
{
	unsigned long i = f + 1;

	if (!write || ferr != EPERM || f >= q->n || !is_private(q->d) ||
	    !(pm[q->pg[f]].loc & L_DEV(q->d)))
		return f;
	for (; i < q->n; i++) {
		int p = q->pg[i];

		if (p < 0 || lock_fail(p, foreign_private(q->d))) {
			*allowed |= E(EFAULT);
			break;
		}
	}
	return i;
}

/* READ and WRITE: the device's own page table, faulting on a miss. */
static int model_rw(struct req *q, int err, bool write)
{
	unsigned int move = foreign_private(q->d);
	unsigned long n = q->n, f, i, sm, lf, reach;
	unsigned char bit = 1u << q->d;
	uint64_t allowed;
	bool lmaybe, full;
	int ferr = 0;

	if (write && q->bad_ptr)
		return expect_err(q, E(EFAULT), err);

	f = first_err_page(q, write, false, &ferr);
	lf = first_locked(q, f, move, &lmaybe);
	if (lf < f) {
		f = lf;
		ferr = EFAULT;
	}
	allowed = E(f < n ? ferr : q->bad_ptr ? EFAULT : 0) |
		  (lmaybe ? E(EFAULT) : 0);
	reach = owner_ro_reach(q, f, ferr, write, &allowed);
	if (expect_err(q, allowed, err))
		return -1;

	/*
	 * The first page surely missing from the device page table: the
	 * device faults from its first miss to the end, so every page from
	 * there on is surely faulted, and none of them written on failure.
	 */
	for (sm = 0; sm < f; sm++) {
		int p = q->pg[sm];

		if (!(pm[p].pt_may & bit) ||
		    (write && pm[p].ms == MS_ZERO && pm[p].loc == L_SYS))
			break;
	}
	full = !err || (!write && q->bad_ptr && err == EFAULT && f == n &&
			!lmaybe);
	if (!err && (check_counts(q, n, n, sm < n ? 1 : 0, n) ||
		     (!write && check_data(q, (unsigned char *)buf, n))))
		return -1;
	if (full) {
		for (i = 0; i < n; i++) {
			int p = q->pg[i];

			fault_in(p, move, write, i >= sm);
			pt_set(p, q->d);
			if (write)
				content_set(p, buf + i * PAGE);
		}
		return 0;
	}
	for (i = 0; i < f; i++) {
		bool sure = !lmaybe && err == ferr && i >= sm;

		fault_in(q->pg[i], move, write, sure);
		if (write && (i < sm || lmaybe || err != ferr))
			content_maybe(q->pg[i], buf + i * PAGE);
	}
	/* The driver filled its page table up to the read-only page. */
	for (i = 0; reach > f && i < f; i++)
		pm[q->pg[i]].pt_may |= bit;
	for (i = f + 1; i < reach; i++)
		fault_in(q->pg[i], move, write, false);
	return 0;
}

/* Pages on device @d's own memory for hmm_range_fault(): DMA "local". */
static long count_local(const struct req *q)
{
	unsigned long i;
	long n = 0;

	if (!is_private(q->d))
		return 0;
	for (i = 0; i < q->n; i++) {
		unsigned char loc = pm[q->pg[i]].loc;

		if (loc == L_DEV(q->d))
			n++;
		else if (loc & L_DEV(q->d))
			return -1;
	}
	return n;
}

/* DMA_READ, DMA_WRITE: the window is the request, pages faulted in. */
static int model_dma(struct req *q, int err, bool write)
{
	struct device *v = &dev[q->d];
	unsigned int move = foreign_private(q->d);
	unsigned long n = q->n, f, lf, i, reach;
	uint64_t allowed;
	bool lmaybe, sure;
	int ferr = 0;

	if (n > DMA_MAX_PAGES)
		return expect_err(q, E(EINVAL), err);
	f = first_err_page(q, write, false, &ferr);
	lf = first_locked(q, f, move, &lmaybe);
	if (lf < f) {
		f = lf;
		ferr = EFAULT;
	}
	if (write && q->bad_ptr)
		allowed = E(EFAULT);
	else
		allowed = E(f < n ? ferr : q->bad_ptr ? EFAULT : 0) |
			  (lmaybe ? E(EFAULT) : 0);
	reach = owner_ro_reach(q, f, ferr, write && !q->bad_ptr, &allowed);
	/* swiotlb=force: the device may refuse DMA altogether. */
	if (swiotlb_force)
		allowed |= E(EOPNOTSUPP);
	if (expect_err(q, allowed, err))
		return -1;
	if (err == EOPNOTSUPP) {
		v->win_n = DMA_MAX_PAGES;	/* window unknown */
		v->local = -1;
		v->unmapped = false;
		return 0;
	}
	v->win_addr = q->cmd.addr;
	v->win_n = n;
	v->unmapped = false;
	v->local = 0;
	if (write && q->bad_ptr)
		return 0;
	if (!err && check_counts(q, n, n, 1, 1))
		return -1;
	/* hmm_range_fault() faults every page it gets to. */
	sure = !lmaybe && (!err || err == ferr);
	for (i = 0; i < f; i++)
		fault_in(q->pg[i], move, write, sure);
	for (i = f + 1; i < reach; i++)
		fault_in(q->pg[i], move, write, false);
	if (!sure || reach > f)
		v->local = -1;
	if (f < n)
		return 0;
	v->local = sure ? count_local(q) : -1;
	if (err)
		return 0;
	if (!write)
		return check_data(q, (unsigned char *)buf, n);
	for (i = 0; i < n; i++)
		content_set(q->pg[i], buf + i * PAGE);
	return 0;
}

static int model_dma_stats(struct req *q, int err)
{
	struct device *v = &dev[q->d];
	struct hmm_dmirror_dma_stats *st = (void *)buf;

	if (expect_err(q, q->bad_ptr ? E(EFAULT) : E(0), err))
		return -1;
	if (err)
		return 0;
	if (check_counts(q, 0, 0, 0, 0))
		return -1;
	if (v->local >= 0 && st->local != (uint64_t)v->local)
		return MISMATCH("DMA_STATS on device %d: local %llu, model %ld",
				q->d, (unsigned long long)st->local, v->local);
	if (!swiotlb_force && st->bounced)
		return MISMATCH("DMA_STATS on device %d: %llu pages bounced without swiotlb=force",
				q->d, (unsigned long long)st->bounced);
	if (st->mapped_pages + st->local > v->win_n ||
	    st->mappings > st->mapped_pages || st->huge > st->mappings ||
	    !st->max_mapping ||
	    (v->unmapped && (st->mappings || st->mapped_pages)))
		return MISMATCH("DMA_STATS %d: n %llu huge %llu pg %llu loc %llu max %llu w %llu%s",
				q->d, (unsigned long long)st->mappings,
				(unsigned long long)st->huge,
				(unsigned long long)st->mapped_pages,
				(unsigned long long)st->local,
				(unsigned long long)st->max_mapping,
				(unsigned long long)v->win_n,
				v->unmapped ? ", all unmapped" : "");
	return 0;
}

static int model_dma_unmap(struct req *q, int err)
{
	struct device *v = &dev[q->d];

	if (expect_err(q, E(0), err))
		return -1;
	if (check_counts(q, 0, v->win_n, 0, 0))
		return -1;
	v->unmapped = true;
	return 0;
}

/*
 * The result a migration by device @d gets when the range reaches page
 * @p of another region: the vma checks of dmirror_migrate() and
 * migrate_vma_setup().
 */
static int segment_err(int p, bool to_dev)
{
	if (p < 0)
		return -EINVAL;
	if (pm[p].kind == K_DEVMAP)
		return to_dev ? -EOPNOTSUPP : -EINVAL;
	if (pm[p].kind == K_HUGETLB)
		return -EINVAL;
	return 0;
}

/*
 * Is @p, where it may be, collected by a migration to device memory?
 * Shmem folios move only if nothing else holds them, best effort.
 */
static int collectable(int p)
{
	struct pmodel *m = &pm[p];

	if (m->kind == K_SHM)
		return !!(m->loc & L_SYS);
	bool may = (m->loc & L_SYS) &&
		   (m->kind == K_SHM || (m->ms & ~MS_EXCL));
	bool sure = m->loc == L_SYS && (m->kind == K_SHM || !(m->ms & MS_EXCL));

	return sure ? 2 : may;
}

static int model_to_dev(struct req *q, int err)
{
	unsigned long n = q->n, i, stop = n;
	unsigned char bit = 1u << q->d;
	unsigned int dl = L_DEV(q->d);
	int serr = 0, ok = 2, hit = 0;
	uint64_t allowed;

	for (i = 0; i < n; i++) {
		serr = -segment_err(q->pg[i], true);
		if (serr) {
			stop = i;
			break;
		}
		if (collectable(q->pg[i]) > hit)
			hit = collectable(q->pg[i]);
	}
	if (!q->probe)
		hit = 0;
	/*
	 * Then the device reads the range back from its page table: pages
	 * it migrated are there, others only if it had them already.
	 */
	for (i = 0; i < stop && !serr; i++) {
		int p = q->pg[i];
		int v = (pm[p].pt_sure & bit) ? 2 : (pm[p].pt_may & bit) ? 1 : 0;

		if (!q->probe && collectable(p) > v)
			v = collectable(p);
		if (v < ok)
			ok = v;
	}
	if (hit == 2)
		allowed = E(ENOMEM);
	else if (serr)
		allowed = E(serr);
	else
		allowed = (ok ? E(q->bad_ptr ? EFAULT : 0) : 0) |
			  (ok < 2 ? E(ENOENT) : 0);
	if (hit == 1)
		allowed |= E(ENOMEM);
	if (expect_err(q, allowed, err))
		return -1;
	if (!err && (check_counts(q, n, n, 0, 0) ||
		     check_data(q, (unsigned char *)buf, n)))
		return -1;
	if (!err) {
		dev[q->d].last_addr = q->cmd.addr;
		dev[q->d].last_n = n;
	}
	for (i = 0; i < stop; i++) {
		int p = q->pg[i], c = q->probe ? 0 : collectable(p);

		zap_others(p, q->d);
		if (pm[p].kind == K_THP)
			thp_split(true);
		if (q->probe && err == ENOMEM) {
			/* Collection dropped the zero page, nothing replaced it. */
			if ((pm[p].ms & MS_ZERO) && pm[p].kind != K_SHM)
				pm[p].ms = (pm[p].ms & ~MS_ZERO) | MS_NONE;
			continue;
		}
		if (c && pm[p].kind == K_SHM && !is_private(q->d)) {
			/*
			 * Where a shmem page that went to coherent memory is
			 * later is not modelled: it may be back in system
			 * memory, or on the device, whatever the model saw.
			 */
			pm[p].fuzzy = true;
			pm[p].pt_sure = 0;
			c = 1;
		}
		/*
		 * Migration is best effort: a page someone holds a reference
		 * on for a moment (a per-CPU LRU batch after a fault) stays
		 * behind, and the device then answers ENOENT.
		 */
		if (c == 2 && err == ENOENT)
			c = 1;
		if (c == 2) {
			pm[p].loc = dl;
			pm[p].lk_may = false;
			pm[p].lk_sure = false;
			pm[p].ms = pm[p].kind == K_SHM ? MS_NONE | MS_MAP : MS_MAP;
			pt_set(p, q->d);
		} else if (c == 1) {
			pm[p].loc |= dl;
			pm[p].lk_sure = false;
			pm[p].ms |= MS_MAP;
			pm[p].pt_may |= bit;
		}
		if (!err || err == EFAULT)
			pt_set(p, q->d);
	}
	return 0;
}

/* Is @p collected by a migration of device @d back to system memory? */
static int collectable_back(int p, int d)
{
	struct pmodel *m = &pm[p];
	unsigned int dl = L_DEV(d);
	/* A coherent anonymous page under an exclusive entry is not seen. */
	bool excl = !is_private(d) && m->kind != K_SHM;

	if (!(m->loc & dl))
		return 0;
	if (m->fuzzy)
		return 1;
	if (excl && m->ms == MS_EXCL)
		return m->loc == dl ? 0 : 1;
	if (m->loc == dl && !(excl && (m->ms & MS_EXCL)))
		return 2;
	return 1;
}

static int model_to_sys(struct req *q, int err)
{
	unsigned long n = q->n, i, stop = n, cmin = 0, cmax = 0;
	int serr = 0, c;

	for (i = 0; i < n; i++) {
		serr = -segment_err(q->pg[i], false);
		if (serr) {
			stop = i;
			break;
		}
		c = collectable_back(q->pg[i], q->d);
		cmin += c == 2;
		cmax += c > 0;
	}
	if (expect_err(q, E(serr), err))
		return -1;
	if (!err && check_counts(q, cmin, cmax, 0, 0))
		return -1;
	for (i = 0; i < stop; i++) {
		int p = q->pg[i];

		c = collectable_back(p, q->d);
		zap_others(p, q->d);
		if (c)
			leave_device(p, L_DEV(q->d), c == 2);
	}
	return 0;
}

/* The SNAPSHOT bytes page @p may show to device @d. */
static int snap_allowed(int p, int d, unsigned char *set)
{
	struct pmodel *m;
	unsigned char w;
	int k = 0, e;

	if (p < 0) {
		set[k++] = HMM_DMIRROR_PROT_ERROR;
		return k;
	}
	m = &pm[p];
	w = m->kind == K_RO ? HMM_DMIRROR_PROT_READ : HMM_DMIRROR_PROT_WRITE;
	if (m->kind == K_HUGETLB) {
		set[k++] = HMM_DMIRROR_PROT_WRITE | HMM_DMIRROR_PROT_PMD;
		return k;
	}
	if (m->kind == K_DEVMAP) {
		set[k++] = HMM_DMIRROR_PROT_WRITE;
		return k;
	}
	if (m->loc & L_SYS) {
		if (m->ms & (MS_NONE | MS_EXCL))
			set[k++] = HMM_DMIRROR_PROT_NONE;
		if (m->ms & MS_ZERO)
			set[k++] = HMM_DMIRROR_PROT_ZERO | HMM_DMIRROR_PROT_READ;
		if (m->ms & MS_MAP) {
			if (m->kind != K_THP || thp_state != THP_YES)
				set[k++] = w;
			if (m->kind == K_THP && thp_state != THP_NO)
				set[k++] = w | HMM_DMIRROR_PROT_PMD;
		}
	}
	for (e = 0; e < NDEV; e++) {
		if (!(m->loc & L_DEV(e)))
			continue;
		if (is_private(e)) {
			set[k++] = e == d ? HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | w :
				   HMM_DMIRROR_PROT_NONE;
			continue;
		}
		if (m->ms & (MS_NONE | MS_EXCL))
			set[k++] = HMM_DMIRROR_PROT_NONE;
		if (m->ms & MS_MAP)
			set[k++] = (e == d ? HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
				    HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE) | w;
	}
	return k;
}

static bool snap_matches(int p, int d, unsigned char b)
{
	unsigned char set[16];
	int k = snap_allowed(p, d, set);

	while (k--)
		if (set[k] == b)
			return true;
	return false;
}

/* Narrow the model of @p to what can show as the SNAPSHOT byte @b. */
static void snap_narrow(int p, int d, unsigned char b)
{
	struct pmodel *m = &pm[p];
	unsigned char loc = m->loc, ms = m->ms, keep = 0, bit;

	for (bit = 1; bit && bit <= L_DEV(NDEV - 1); bit <<= 1) {
		if (!(loc & bit))
			continue;
		m->loc = bit;
		if (snap_matches(p, d, b))
			keep |= bit;
	}
	m->loc = keep ? keep : loc;
	if (m->fuzzy)
		m->loc = loc;
	if (m->kind == K_SHM || !(m->loc & (L_SYS | L_COHERENT)) ||
	    (m->loc & L_PRIVATE))
		return;
	keep = 0;
	for (bit = 1; bit <= MS_EXCL; bit <<= 1) {
		if (!(ms & bit))
			continue;
		m->ms = bit;
		if (snap_matches(p, d, b))
			keep |= bit;
	}
	m->ms = keep ? keep : ms;
	if (m->kind == K_THP && thp_state == THP_MAYBE && m->loc == L_SYS &&
	    m->ms == MS_MAP)
		thp_state = (b & HMM_DMIRROR_PROT_PMD) ? THP_YES : THP_NO;
}

static int model_snapshot(struct req *q, int err)
{
	unsigned char *got = (unsigned char *)buf, set[16];
	unsigned long i;
	int k, j;

	if (expect_err(q, q->bad_ptr ? E(EFAULT) : E(0), err))
		return -1;
	if (err)
		return 0;
	if (check_counts(q, q->n, q->n, 0, 0))
		return -1;
	for (i = 0; i < q->n; i++) {
		k = snap_allowed(q->pg[i], q->d, set);
		for (j = 0; j < k && set[j] != got[i]; j++)
			;
		if (j == k)
			return MISMATCH("SNAPSHOT %d: %lu of %#llx (%d %#x %#x %d) %#x want %#x%s",
					q->d, i, (unsigned long long)q->cmd.addr,
					q->pg[i], q->pg[i] < 0 ? 0 : pm[q->pg[i]].loc,
					q->pg[i] < 0 ? 0 : pm[q->pg[i]].ms,
					thp_state, got[i], set[0],
					k > 1 ? " or more" : "");
		if (q->pg[i] >= 0)
			snap_narrow(q->pg[i], q->d, got[i]);
	}
	return 0;
}

/* EXCLUSIVE: page by page, GUP for write then a device-exclusive entry. */
static int model_exclusive(struct req *q, int err)
{
	unsigned long n = q->n, i, f, lf;
	bool lmaybe, busy = false;
	uint64_t allowed;
	int ferr = 0;

	f = first_err_page(q, true, true, &ferr);
	lf = first_locked(q, f, L_PRIVATE, &lmaybe);
	if (lf < f) {
		f = lf;
		ferr = EFAULT;
	}
	for (i = 0; i < f; i++) {
		int k = pm[q->pg[i]].kind;

		if (k == K_DEVMAP)
			busy = true;
	}
	if (f == 0)
		allowed = E(ferr);
	else if (f < n || busy)
		allowed = E(EBUSY);
	else
		allowed = E(q->bad_ptr ? EFAULT : 0);
	if (lmaybe)
		allowed |= E(EFAULT) | E(EBUSY);
	if (expect_err(q, allowed, err))
		return -1;
	if (!err && (check_counts(q, n, n, 0, 0) ||
		     check_data(q, (unsigned char *)buf, n)))
		return -1;
	for (i = 0; i < f && i < n; i++) {
		int p = q->pg[i];
		bool sure = !lmaybe;

		if (pm[p].kind == K_HUGETLB || pm[p].kind == K_DEVMAP)
			continue;
		if (pm[p].kind == K_THP)
			thp_split(true);
		fault_in(p, L_PRIVATE, true, sure);
		zap_all(p, sure);
		if (sure) {
			pm[p].ms = MS_EXCL;
			pm[p].at_may = 1u << q->d;
			pm[p].at_sure = 1u << q->d;
			pm[p].pt_may = 1u << q->d;
			pm[p].pt_sure = 1u << q->d;
		} else {
			pm[p].ms |= MS_EXCL;
			pm[p].at_may |= 1u << q->d;
			pm[p].pt_may |= 1u << q->d;
		}
	}
	return 0;
}

static int model_check_excl(struct req *q, int err)
{
	unsigned char bit = 1u << q->d;
	bool may = false, sure = false;
	unsigned long i;

	for (i = 0; i < q->n; i++) {
		int p = q->pg[i];

		if (p < 0)
			continue;
		may |= pm[p].at_may & bit;
		sure |= pm[p].at_sure & bit;
	}
	if (expect_err(q, sure ? E(EPERM) : may ? E(EPERM) | E(0) : E(0),
		       err))
		return -1;
	if (!err) {
		if (check_counts(q, 0, 0, 0, 0))
			return -1;
		for (i = 0; i < q->n; i++)
			if (q->pg[i] >= 0)
				pm[q->pg[i]].at_may &= ~bit;
	}
	return 0;
}

static int model_release(struct req *q, int err)
{
	int p;

	if (expect_err(q, E(0), err))
		return -1;
	if (check_counts(q, 0, 0, 0, 0))
		return -1;
	for (p = 0; p < npm; p++)
		leave_device(p, L_DEV(q->d), true);
	return 0;
}

static int model_lock(struct req *q, int err)
{
	unsigned int dl = L_DEV(q->d);
	unsigned long i;
	int ok = 2;

	if (!is_private(q->d))
		return expect_err(q, E(EOPNOTSUPP), err);
	for (i = 0; i < q->n; i++) {
		int p = q->pg[i];

		if (p < 0 || pm[p].kind == K_SHM || pm[p].kind == K_HUGETLB ||
		    !(pm[p].loc & dl)) {
			ok = 0;
			break;
		}
		if (pm[p].loc != dl)
			ok = 1;
	}
	if (expect_err(q, (ok ? E(0) : 0) | (ok < 2 ? E(EFAULT) : 0), err))
		return -1;
	if (err)
		return 0;
	if (check_counts(q, q->n, q->n, 0, 0))
		return -1;
	for (i = 0; i < q->n; i++) {
		pm[q->pg[i]].loc = dl;
		pm[q->pg[i]].lk_may = pm[q->pg[i]].lk_sure = true;
	}
	return 0;
}

static int model_unlock(struct req *q, int err)
{
	unsigned int dl = L_DEV(q->d);
	unsigned long i, cmin = 0, cmax = 0;

	if (!is_private(q->d))
		return expect_err(q, E(EOPNOTSUPP), err);
	if (expect_err(q, E(0), err))
		return -1;
	for (i = 0; i < q->n; i++) {
		int p = q->pg[i];

		if (p < 0 || !(pm[p].loc & dl) || !pm[p].lk_may)
			continue;
		cmax++;
		cmin += pm[p].loc == dl && pm[p].lk_sure;
	}
	if (check_counts(q, cmin, cmax, 0, 0))
		return -1;
	for (i = 0; i < q->n; i++) {
		int p = q->pg[i];

		if (p < 0 || !(pm[p].loc & dl))
			continue;
		pm[p].lk_sure = false;
		if ((pm[p].loc & L_PRIVATE) == dl)
			pm[p].lk_may = false;
	}
	return 0;
}

static int model_lock_query(struct req *q, int err)
{
	unsigned int dl = L_DEV(q->d);
	unsigned char *got = (unsigned char *)buf;
	unsigned long i, ones = 0;

	if (!is_private(q->d))
		return expect_err(q, E(EOPNOTSUPP), err);
	if (expect_err(q, q->bad_ptr ? E(EFAULT) : E(0), err))
		return -1;
	if (err)
		return 0;
	for (i = 0; i < q->n; i++) {
		int p = q->pg[i];
		bool may = p >= 0 && (pm[p].loc & dl) && pm[p].lk_may;
		bool sure = may && pm[p].loc == dl && pm[p].lk_sure;

		if (got[i] > 1 || (got[i] && !may) || (!got[i] && sure))
			return MISMATCH("LOCK_QUERY dev %d: page %lu of %#llx is %u, model %s",
					q->d, i, (unsigned long long)q->cmd.addr,
					got[i], sure ? "locked" : may ? "either" : "unlocked");
		ones += got[i];
		if (got[i]) {
			pm[p].loc = dl;
			pm[p].lk_sure = true;
		} else if (may && pm[p].loc == dl) {
			pm[p].lk_may = false;
		}
	}
	return check_counts(q, q->n, q->n, ones, ones);
}

static int model(struct req *q, int err)
{
	switch (q->c) {
	case C_READ:
		return model_rw(q, err, false);
	case C_WRITE:
		return model_rw(q, err, true);
	case C_TO_DEV:
		return model_to_dev(q, err);
	case C_TO_SYS:
		return model_to_sys(q, err);
	case C_SNAP:
		return model_snapshot(q, err);
	case C_EXCL:
		return model_exclusive(q, err);
	case C_CHECK_EXCL:
		return model_check_excl(q, err);
	case C_RELEASE:
		return model_release(q, err);
	case C_DMA_READ:
		return model_dma(q, err, false);
	case C_DMA_WRITE:
		return model_dma(q, err, true);
	case C_DMA_STATS:
		return model_dma_stats(q, err);
	case C_DMA_UNMAP:
		return model_dma_unmap(q, err);
	case C_LOCK:
		return model_lock(q, err);
	case C_UNLOCK:
		return model_unlock(q, err);
	default:
		return model_lock_query(q, err);
	}
}

/* ------------------------------------------------------------------
 * CPU accesses between the ioctls
 */

static sigjmp_buf cpu_jmp;
static sig_atomic_t cpu_sigbus;	/* set before siglongjmp() */

static void on_sigbus(int sig)
{
	cpu_sigbus = 1;
	siglongjmp(cpu_jmp, 1);
}

/*
 * Load or store a whole page from the CPU.  A private page comes back to
 * system memory, unless it is locked to its device: then SIGBUS.
 */
static int cpu_access(int p, bool write, uint64_t *s)
{
	static unsigned char data[PAGE];
	char *va = page_addr(p);
	int l = lock_fail(p, L_PRIVATE);

	if (write)
		fill_random(data, PAGE, s);
	cpu_sigbus = 0;
	if (!sigsetjmp(cpu_jmp, 1)) {
		if (write)
			memcpy(va, data, PAGE);
		else
			memcpy(data, va, PAGE);
	}
	st_sent[C_CPU]++;
	if (cpu_sigbus) {
		if (!l)
			return MISMATCH("CPU %s of model page %d: SIGBUS, the page is not locked",
					write ? "store" : "load", p);
		pm[p].loc &= L_PRIVATE;
		pm[p].lk_sure = true;
		st_checked[C_CPU]++;
		return 0;
	}
	if (l == 2)
		return MISMATCH("CPU %s of model page %d: no SIGBUS on a locked page",
				write ? "store" : "load", p);
	st_ok[C_CPU]++;
	if (l) {
		pm[p].lk_may = false;
		pm[p].lk_sure = false;
	}
	fault_in(p, L_PRIVATE, write, true);
	if (write) {
		content_set(p, data);
		return 0;
	}
	st_checked[C_CPU]++;
	if (content_check(p, data))
		return MISMATCH("CPU load of model page %d differs from the shadow",
				p);
	return 0;
}

static int cpu_op(uint64_t *s)
{
	int p = rnd(s, npm), ret;
	bool write;

	if (!page_addr(p))
		return 0;
	write = pm[p].kind != K_RO && rnd(s, 2);
	ret = cpu_access(p, write, s);
	hist[hist_n % HISTORY].it = cur_it;
	hist[hist_n % HISTORY].c = C_CPU;
	hist[hist_n % HISTORY].d = write;
	hist[hist_n % HISTORY].err = cpu_sigbus ? EFAULT : 0;
	hist[hist_n % HISTORY].p0 = p;
	hist[hist_n % HISTORY].n = 1;
	hist[hist_n % HISTORY].loc = pm[p].loc;
	hist[hist_n % HISTORY].ms = pm[p].ms;
	hist_n++;
	return ret;
}

/* ------------------------------------------------------------------
 * The fuzz loop
 */

static const char *errname(int e)
{
	static char b[16];

	switch (e) {
	case 0: return "ok";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EBADF: return "EBADF";
	case ENOMEM: return "ENOMEM";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case ENODEV: return "ENODEV";
	case EXDEV: return "EXDEV";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	}
	snprintf(b, sizeof(b), "errno%d", e);
	return b;
}

static void print_coverage(void)
{
	char line[1024];
	int c, len = 0, e;

	for (c = 0; c < C_NSTAT; c++)
		len += snprintf(line + len, sizeof(line) - len, " %s %lu/%lu/%lu",
				c == C_CPU ? "cpu" : c == C_BAD ? "malformed" :
				cmds[c].name, st_sent[c], st_ok[c],
				st_checked[c]);
	ksft_print_msg("coverage (sent/ok/checked):%s\n", line);
	len = 0;
	for (e = 0; e < 256; e++)
		if (st_errno[e])
			len += snprintf(line + len, sizeof(line) - len, " %s %lu",
					errname(e), st_errno[e]);
	ksft_print_msg("results:%s; %lu ENOMEM probes, %lu pages lost track of\n",
		       line, enomem_probes, st_unknown);
}

/* Did a malformed request fail the way it must, leaving *arg alone? */
static int check_malformed(struct req *q, const struct hmm_dmirror_cmd *sent,
			   int err)
{
	if (err != q->expect)
		return MISMATCH("malformed (nr %#lx fd %d %#llx n %#llx): got %s, want %s",
				q->nr, q->fd, (unsigned long long)sent->addr,
				(unsigned long long)sent->npages,
				errname(err), errname(q->expect));
	if (q->arg == &q->cmd && memcmp(sent, &q->cmd, sizeof(*sent)))
		return MISMATCH("malformed request changed its argument");
	return 0;
}

/*
 * Check devmem_used of every device against the pages the model has
 * there; nothing else uses the devices meanwhile.
 */
static int check_devmem(void)
{
	int d, p;

	for (d = 0; d < NDEV; d++) {
		long used, lo = 0, hi = 0;

		if (!dev[d].present)
			continue;
		for (p = 0; p < npm; p++) {
			hi += !!(pm[p].loc & L_DEV(d));
			lo += pm[p].loc == L_DEV(d);
		}
		used = devattr_read(dev[d].rdev, "devmem_used");
		if (used < lo || used > hi)
			return MISMATCH("device %d: devmem_used %ld, model %ld..%ld",
					d, used, lo, hi);
	}
	return 0;
}

static const char *errname(int e);

static void history_add(const struct req *q, int err)
{
	struct hist_entry *h = &hist[hist_n++ % HISTORY];

	h->it = cur_it;
	h->c = q->malformed ? C_BAD : q->c;
	h->d = q->d;
	h->err = err;
	h->n = q->n;
	h->p0 = q->malformed ? -2 : q->pg[0];
	h->loc = h->p0 >= 0 ? pm[h->p0].loc : 0;
	h->ms = h->p0 >= 0 ? pm[h->p0].ms : 0;
}

static void history_print(void)
{
	unsigned long i = hist_n > HISTORY ? hist_n - HISTORY : 0;
	struct hist_entry *last = &hist[(hist_n - 1) % HISTORY];

	for (; i < hist_n; i++) {
		struct hist_entry *h = &hist[i % HISTORY];

		if (h->p0 < 0 || h->p0 >= last->p0 + (long)last->n ||
		    h->p0 + (long)h->n <= last->p0)
			continue;

		ksft_print_msg("  #%lu %s dev %d page %d+%lu: %s (then loc %#x ms %#x)\n",
			       h->it, h->c == C_BAD ? "malformed" :
			       h->c == C_CPU ? "cpu" : cmds[h->c].name, h->d,
			       h->p0, h->n, errname(h->err), h->loc, h->ms);
	}
}

static int one_request(struct req *q, uint64_t *s, int closed_fd,
		       int null_fd)
{
	struct hmm_dmirror_cmd sent;
	int err, stat;

	req_build(q, s, closed_fd, null_fd);
	stat = q->malformed ? C_BAD : q->c;
	if (!q->malformed && q->c == C_TO_DEV && rnd(s, 200) == 0) {
		long used = devattr_read(dev[q->d].rdev, "devmem_used");

		if (used > 0 && !devattr_write(dev[q->d].rdev, "devmem_limit", used)) {
			q->probe = true;
			enomem_probes++;
		}
	}
	if (!q->malformed && cmds[q->c].ptr) {
		if (q->c == C_WRITE || q->c == C_DMA_WRITE)
			fill_random(buf, q->n * PAGE, s);
		else
			memset(buf, 0xa5, q->n * PAGE > 64 ? q->n * PAGE : 64);
	}
	/* Outputs of a failed command must not be written back. */
	q->cmd.cpages = 0x5eed5eed;
	q->cmd.faults = 0xfa17fa17;
	sent = q->cmd;
	err = ioctl(q->fd, q->nr, q->arg) ? errno : 0;
	if (q->probe)
		devattr_write(dev[q->d].rdev, "devmem_limit", 0);
	st_sent[stat]++;
	st_errno[err < 256 ? err : 255]++;
	if (!err)
		st_ok[stat]++;
	if (q->malformed) {
		history_add(q, err);
		if (check_malformed(q, &sent, err))
			return -1;
		st_checked[stat]++;
		return 0;
	}
	if (err && memcmp(&sent, &q->cmd, sizeof(sent)))
		return MISMATCH("%s failed (%s) but changed its argument",
				cmds[q->c].name, errname(err));
	if (model(q, err)) {
		history_add(q, err);
		return -1;
	}
	history_add(q, err);
	st_checked[stat]++;
	return 0;
}

static int devices_open(int *closed_fd, int *null_fd)
{
	static const char *const names[NDEV] = {
		"/dev/hmm_dmirror0", "/dev/hmm_dmirror1",
		"/dev/hmm_dmirror2", "/dev/hmm_dmirror3",
	};
	struct stat st;
	int d;

	for (d = 0; d < NDEV; d++) {
		dev[d].fd = open(names[d], O_RDWR);
		dev[d].present = dev[d].fd >= 0;
		dev[d].coherent = d >= NPRIVATE;
		dev[d].local = 0;
		if (dev[d].present && !fstat(dev[d].fd, &st))
			dev[d].rdev = st.st_rdev;
		if (!dev[d].present && d < NPRIVATE)
			return -1;
	}
	if (!dev[2].present || !dev[3].present)
		ksft_print_msg("no device-coherent /dev/hmm_dmirror2,3: private devices only\n");
	*closed_fd = open(names[0], O_RDWR);
	*null_fd = open("/dev/null", O_RDWR);
	if (*closed_fd < 0 || *null_fd < 0)
		return -1;
	close(*closed_fd);	/* stays closed: nothing else is opened */
	return 0;
}

/* Did the setup get a THP?  SNAPSHOT says whether it is PMD mapped. */
static void thp_probe(void)
{
	struct hmm_dmirror_cmd c = {
		.addr = (uintptr_t)rg[R_THP].at, .ptr = (uintptr_t)buf,
		.npages = 1,
	};

	thp_state = THP_NO;
	if (!ioctl(dev[0].fd, HMM_DMIRROR_SNAPSHOT, &c) &&
	    (buf[0] & HMM_DMIRROR_PROT_PMD))
		thp_state = THP_YES;
	ksft_print_msg("THP region %s a huge page\n",
		       thp_state == THP_YES ? "is" : "is not");
}

/*
 * Close every device: their pages come back.  The mapping of the device
 * file holds a reference on dev[0]'s file, so it goes first.
 */
static void devices_close(void)
{
	int d;

	if (rg[R_DEVMAP].present)
		munmap(rg[R_DEVMAP].at, rg[R_DEVMAP].npages * PAGE);
	rg[R_DEVMAP].present = false;
	for (d = 0; d < NDEV; d++)
		if (dev[d].present)
			close(dev[d].fd);
}

static int cpu_compare(int r)
{
	int p;

	for (p = rg[r].first; p < rg[r].first + (int)rg[r].npages; p++) {
		char *va = page_addr(p);

		if (va && content_check(p, va))
			return MISMATCH("final CPU check: page %d (region %d) != shadow",
					p, r);
	}
	return 0;
}

/* Close every device (their pages come back), then compare every page. */
static int final_check(void)
{
	int d, r;

	long excl[NDEV] = { 0 };
	int p;

	if (check_devmem() || cpu_compare(R_DEVMAP))
		return -1;
	for (p = 0; p < npm; p++)
		for (d = NPRIVATE; d < NDEV; d++)
			excl[d] += (pm[p].loc & L_DEV(d)) &&
				   (pm[p].ms & MS_EXCL);
	devices_close();
	for (r = 0; r < R_HOLE; r++)
		if (rg[r].kind != K_ERR && cpu_compare(r))
			return -1;
	/*
	 * Closing a file evicts the pages it put in device memory; coherent
	 * pages under a device-exclusive entry are not collected by the
	 * eviction and stay until the process lets go of them.
	 */
	for (d = 0; d < NDEV; d++) {
		long used = dev[d].present ? devattr_read(dev[d].rdev, "devmem_used") : 0;

		if (used > excl[d])
			return MISMATCH("device %d: devmem_used %ld after close, %ld exclusive",
					d, used, excl[d]);
		if (used)
			ksft_print_msg("device %d: %ld exclusive pages kept at close (of %ld)\n",
				       d, used, excl[d]);
	}
	return 0;
}

static bool coverage_complete(void)
{
	int c;

	for (c = 0; c < C_NSTAT; c++)
		if (!st_sent[c] || !st_checked[c])
			return false;
	return true;
}

static void test_fuzz(uint64_t seed, unsigned long iters, int seconds)
{
	time_t start = time(NULL), end = start + seconds;
	struct sigaction sa = { .sa_handler = on_sigbus };
	int closed_fd, null_fd, ret = 0;
	static struct req q;
	uint64_t s = seed;
	unsigned long it;

	swiotlb_force = cmdline_has("swiotlb=force");
	sigaction(SIGBUS, &sa, NULL);
	if (devices_open(&closed_fd, &null_fd) ||
	    layout_map(dev[0].fd, &s)) {
		ksft_test_result_fail("fuzz_ioctl: setup: %s\n",
				      strerror(errno));
		return;
	}
	buf = rg[R_BUF].at;
	thp_probe();

	for (it = 0; it < iters && (!ret || keep_going); it++) {
		if (ret) {
			ksft_print_msg("iteration %lu: %s\n", it - 1, why);
			history_print();
			keep_going--;
			ret = 0;
		}
		cur_it = it;
		if (!(it & 255) && time(NULL) > end)
			break;
		if (rnd(&s, 10) == 0)
			ret = cpu_op(&s);
		else
			ret = one_request(&q, &s, closed_fd, null_fd);
		if (!ret && !(it & 1023))
			ret = check_devmem();
	}
	if (ret) {
		ksft_print_msg("iteration %lu: %s\n", it - 1, why);
		history_print();
		print_coverage();
		ksft_test_result_fail("fuzz_ioctl: iteration %lu: wrong (-s %llu -n %lu)\n",
				      it - 1, (unsigned long long)seed, it);
		devices_close();
		return;
	}
	ret = final_check();
	ksft_print_msg("%lu iterations in %ld s\n", it,
		       (long)(time(NULL) - start));
	print_coverage();
	close(null_fd);
	if (ret)
		ksft_test_result_fail("fuzz_ioctl: %s\n", why);
	else if (!coverage_complete())
		ksft_test_result_fail("fuzz_ioctl: a command was never sent or never checked\n");
	else
		ksft_test_result_pass("fuzz_ioctl (%lu iterations)\n", it);
}

/* ------------------------------------------------------------------ */

#define CLOSE_PAGES	16

struct closer {
	int		fd;
	char		*data;
	char		*buf;
	unsigned long	calls;
	int		unexpected;
	uint64_t	rnd;
};

/* Keeps the device busy on the data until the descriptor goes away. */
static void *closer_ioctls(void *arg)
{
	static const unsigned long ops[] = {
		HMM_DMIRROR_READ, HMM_DMIRROR_MIGRATE_TO_DEV,
		HMM_DMIRROR_MIGRATE_TO_SYS, HMM_DMIRROR_SNAPSHOT,
		HMM_DMIRROR_LOCK, HMM_DMIRROR_UNLOCK, HMM_DMIRROR_DMA_READ,
		HMM_DMIRROR_DMA_UNMAP,
	};
	struct closer *c = arg;

	for (;;) {
		unsigned long op = ops[rnd(&c->rnd, ARRAY_SIZE(ops))];
		struct hmm_dmirror_cmd cmd = {
			.addr = (uintptr_t)c->data, .ptr = (uintptr_t)c->buf,
			.npages = CLOSE_PAGES,
		};
		int err = ioctl(c->fd, op, &cmd) ? errno : 0;

		c->calls++;
		if (err == EBADF)
			return NULL;
		/*
		 * A migration racing the close may lose the device table; a
		 * lock needs every page in device memory; DMA may be refused
		 * under swiotlb=force.
		 */
		if (err && !(op == HMM_DMIRROR_MIGRATE_TO_DEV && err == ENOENT) &&
		    !(op == HMM_DMIRROR_LOCK && err == EFAULT) &&
		    !(op == HMM_DMIRROR_DMA_READ && err == EOPNOTSUPP &&
		      swiotlb_force)) {
			c->unexpected = err;
			return NULL;
		}
		if (!err && (op == HMM_DMIRROR_READ ||
			     op == HMM_DMIRROR_MIGRATE_TO_DEV ||
			     op == HMM_DMIRROR_DMA_READ) &&
		    memcmp(c->buf, c->data, CLOSE_PAGES * PAGE)) {
			c->unexpected = -1;
			return NULL;
		}
	}
}

/*
 * close() while ioctls are in flight on the descriptor: they finish on
 * the file they started with (EBADF only before they began), data stays
 * intact and the device memory of the closed file is given back, locked
 * pages included: devmem_used is 0 once the file is gone.
 */
static void test_close_race(uint64_t seed, int rounds)
{
	char *data = mmap(NULL, CLOSE_PAGES * PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *cbuf = malloc(CLOSE_PAGES * PAGE);
	unsigned long calls = 0;
	uint64_t s = seed;
	struct stat st;
	pthread_t tid;
	long used;
	int i;

	if (data == MAP_FAILED || !cbuf ||
	    stat("/dev/hmm_dmirror0", &st)) {
		ksft_test_result_fail("close_race: setup: %s\n",
				      strerror(errno));
		return;
	}
	fill_random(data, CLOSE_PAGES * PAGE, &s);
	for (i = 0; i < rounds; i++) {
		struct closer c = {
			.fd = open("/dev/hmm_dmirror0", O_RDWR),
			.data = data, .buf = cbuf, .rnd = rnd_next(&s),
		};

		if (c.fd < 0) {
			ksft_test_result_fail("close_race: open: %s\n",
					      strerror(errno));
			return;
		}
		pthread_create(&tid, NULL, closer_ioctls, &c);
		usleep(rnd(&s, 20000));
		close(c.fd);
		pthread_join(tid, NULL);
		calls += c.calls;
		if (c.unexpected) {
			ksft_test_result_fail("close_race: round %d: %s\n", i,
					      c.unexpected < 0 ?
					      "data differs" :
					      strerror(c.unexpected));
			return;
		}
		used = devattr_read(st.st_rdev, "devmem_used");
		if (used) {
			ksft_test_result_fail("close_race: round %d: devmem_used %ld after close\n",
					      i, used);
			return;
		}
	}
	fill_random(cbuf, CLOSE_PAGES * PAGE, &seed);	/* same as data */
	ksft_print_msg("close_race: %d rounds, %lu ioctls\n", rounds, calls);
	if (memcmp(cbuf, data, CLOSE_PAGES * PAGE))
		ksft_test_result_fail("close_race: data changed\n");
	else
		ksft_test_result_pass("close_race (%d rounds)\n", rounds);
}

int main(int argc, char **argv)
{
	unsigned long iters = 20000;
	uint64_t seed = time(NULL);
	int seconds = 240, opt;

	while ((opt = getopt(argc, argv, "s:n:T:")) != -1) {
		switch (opt) {
		case 's':
			seed = strtoull(optarg, NULL, 0);
			break;
		case 'n':
			iters = strtoul(optarg, NULL, 0);
			break;
		case 'T':
			seconds = atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: %s [-s seed] [-n iterations] [-T seconds]\n",
				argv[0]);
			return KSFT_FAIL;
		}
	}
	ksft_print_header();
	if (access("/dev/hmm_dmirror0", R_OK | W_OK) ||
	    access("/dev/hmm_dmirror1", R_OK | W_OK))
		ksft_exit_skip("/dev/hmm_dmirror0,1: %s (CONFIG_TEST_HMM)\n",
			       strerror(errno));
	ksft_set_plan(2);
	user_top_probe();
	ksft_print_msg("seed %llu, %lu iterations (replay: -s %llu -n %lu)\n",
		       (unsigned long long)seed, iters,
		       (unsigned long long)seed, iters);
	setvbuf(stdout, NULL, _IOLBF, 0);
	test_fuzz(seed, iters, seconds);
	test_close_race(seed, 200);
	ksft_finished();
}
