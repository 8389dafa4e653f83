// SPDX-License-Identifier: GPL-2.0
/*
 * Hostile input for the HMM dummy device's ioctls (lib/test_hmm.c).
 *
 * Each iteration sends one random command, valid or not, built from
 * boundary values: zero and huge page counts, addresses at and beyond
 * TASK_SIZE, unaligned ones, ranges whose end overflows, holes, PROT_NONE,
 * read-only, hugetlbfs, a mapping of the device file itself (VM_MIXEDMAP,
 * which cannot migrate), a shared memfd, bad user buffers, closed and
 * non-device descriptors, unknown ioctl numbers and wrong sizes.  Every
 * fixture sits in its own reserved window with inaccessible guard pages
 * around it, so no request can reach the program's own memory.  The errno
 * of each command must be one the range's pages allow (computed from what
 * is mapped there); anything else, success included, fails the test.
 * Device writes into the data window are mirrored in a shadow copy and
 * every device read of it is compared with the shadow; the read-only and
 * guard data are checked at the end.  A second case closes the descriptor
 * while another thread has ioctls in flight on it.
 *
 * -s SEED -n ITERATIONS replays a run (the seed is printed); -T SECONDS
 * bounds the time, in case the machine is slow (default 240).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "kselftest.h"
#include <lib/test_hmm_uapi.h>

#define PAGE		4096UL
#define WIN		(4UL << 20)	/* one fixture per 4 MiB window */
#define HUGE_2M		(2UL << 20)
#define DATA_PAGES	16
#define BUF_PAGES	32

enum region { R_DATA, R_RO, R_NONE, R_HOLE, R_HUGETLB, R_DEVMAP, R_MEMFD,
	      R_BUF, R_NR };

enum kind { K_NONE, K_RW, K_RO, K_NOMIGRATE_RW, K_NOMIGRATE_RO };

struct fixture {
	char		*base;		/* window; the fixture at base + WIN/2 */
	char		*at;
	unsigned long	npages;
	enum kind	kind;
	bool		present;
};

static struct fixture fx[R_NR];
static char *resv;
/* TASK_SIZE: the end of the user address space (see user_top_probe()). */
static uint64_t user_top;
static unsigned char shadow[DATA_PAGES * PAGE];
static unsigned char ro_copy[4 * PAGE];

static uint64_t rnd_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

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

/*
 * Reserve R_NR windows of inaccessible memory and map each fixture in the
 * middle of its own, MAP_FIXED: everything around a fixture is PROT_NONE.
 */
static int fixtures_map(int devfd, uint64_t *s)
{
	int r, memfd;

	resv = mmap(NULL, R_NR * WIN + HUGE_2M, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (resv == MAP_FAILED)
		return -1;
	resv = (char *)(((uintptr_t)resv + HUGE_2M - 1) & ~(HUGE_2M - 1));
	for (r = 0; r < R_NR; r++) {
		fx[r].base = resv + r * WIN;
		fx[r].at = fx[r].base + WIN / 2;
		fx[r].npages = 4;
		fx[r].kind = K_RW;
		fx[r].present = true;
	}
	fx[R_DATA].npages = DATA_PAGES;
	fx[R_BUF].npages = BUF_PAGES;
	fx[R_NONE].kind = K_NONE;
	fx[R_HOLE].kind = K_NONE;
	fx[R_RO].kind = K_RO;

	for (r = 0; r < R_NR; r++) {
		size_t len = fx[r].npages * PAGE;
		void *p = fx[r].at;
		int prot = PROT_READ | PROT_WRITE;
		int flags = MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS;

		switch (r) {
		case R_NONE:
			continue;	/* the reservation is PROT_NONE */
		case R_HOLE:
			munmap(fx[r].base, WIN);
			continue;
		case R_HUGETLB:
			fx[r].npages = HUGE_2M / PAGE;
			len = HUGE_2M;
			p = mmap(p, len, prot, flags | MAP_HUGETLB, -1, 0);
			fx[r].kind = K_NOMIGRATE_RW;
			fx[r].present = p != MAP_FAILED;
			if (!fx[r].present) {
				ksft_print_msg("no 2 MiB huge page: hugetlbfs fixture left out\n");
				fx[r].kind = K_NONE;
			}
			continue;
		case R_DEVMAP:
			/* Kernel pages in a VM_MIXEDMAP vma: not migratable. */
			p = mmap(p, len, prot, MAP_FIXED | MAP_SHARED, devfd, 0);
			fx[r].kind = K_NOMIGRATE_RW;
			break;
		case R_MEMFD:
			/* Shared shmem pages: they migrate like anonymous ones. */
			memfd = memfd_create("hmm-fuzz", MFD_ALLOW_SEALING);
			if (memfd < 0 || ftruncate(memfd, len))
				return -1;
			fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
			p = mmap(p, len, prot, MAP_FIXED | MAP_SHARED, memfd, 0);
			close(memfd);
			break;
		default:
			p = mmap(p, len, prot, flags, -1, 0);
			break;
		}
		if (p == MAP_FAILED)
			return -1;
		memset(p, 0, len);
	}
	fill_random(fx[R_DATA].at, DATA_PAGES * PAGE, s);
	memcpy(shadow, fx[R_DATA].at, sizeof(shadow));
	fill_random(fx[R_RO].at, sizeof(ro_copy), s);
	memcpy(ro_copy, fx[R_RO].at, sizeof(ro_copy));
	return mprotect(fx[R_RO].at, sizeof(ro_copy), PROT_READ);
}

static enum kind page_kind(uint64_t addr)
{
	int r;

	for (r = 0; r < R_NR; r++) {
		uint64_t a = (uintptr_t)fx[r].at;

		if (fx[r].present && addr >= a && addr < a + fx[r].npages * PAGE)
			return fx[r].kind;
	}
	return K_NONE;
}

/* One request as sent, and what the range it names is made of. */
struct req {
	int		fd;
	unsigned long	cmd;
	void		*arg;		/* usually &c */
	struct hmm_dmirror_cmd c;
	bool		bad_fd, bad_cmd, bad_arg, bad_shape, bad_ptr;
	bool		any_none, any_ro, any_nomigrate;
};

static const unsigned long cmds[] = {
	HMM_DMIRROR_READ, HMM_DMIRROR_WRITE, HMM_DMIRROR_MIGRATE_TO_DEV,
	HMM_DMIRROR_MIGRATE_TO_SYS, HMM_DMIRROR_SNAPSHOT,
	HMM_DMIRROR_EXCLUSIVE, HMM_DMIRROR_CHECK_EXCLUSIVE,
	HMM_DMIRROR_RELEASE,
};

/*
 * A command the driver does not have.  Numbers 0x08-0x3f are left alone:
 * other patches add commands there.
 */
static unsigned long bad_cmd(uint64_t *s)
{
	unsigned long good = cmds[rnd(s, 8)];
	unsigned int nr = _IOC_NR(good);

	switch (rnd(s, 5)) {
	case 0:		/* wrong size */
		return _IOC(_IOC_DIR(good), 'H', nr,
			    sizeof(struct hmm_dmirror_cmd) + 1 + rnd(s, 100));
	case 1:		/* wrong direction */
		return _IOC(rnd(s, 3), 'H', nr, sizeof(struct hmm_dmirror_cmd));
	case 2:		/* wrong type */
		return _IOC(_IOC_DIR(good), 'A' + rnd(s, 7), nr,
			    sizeof(struct hmm_dmirror_cmd));
	case 3:		/* number nobody uses */
		return _IOWR('H', 0x40 + rnd(s, 0xc0), struct hmm_dmirror_cmd);
	default:	/* noise */
		return (unsigned int)rnd_next(s) | _IOC(0, 'h', 0, 0);
	}
}

static uint64_t pick_addr(uint64_t *s, bool *shape_bad)
{
	uint64_t a;
	int r;

	switch (rnd(s, 12)) {
	case 0:
		*shape_bad = true;
		return (uintptr_t)fx[R_DATA].at + 1 + rnd(s, PAGE - 1);
	case 1:
		return 0;
	case 2:
		return user_top - PAGE * (1 + rnd(s, 2));
	case 3:
		*shape_bad = true;
		return user_top + PAGE * rnd(s, 4);
	case 4:
		*shape_bad = true;
		return ~0ULL << (12 + rnd(s, 40));	/* kernel half */
	case 5:		/* anywhere in the reserved windows */
		return (uintptr_t)resv + rnd(s, R_NR * WIN / PAGE) * PAGE;
	default:	/* a fixture, possibly straddling its edges */
		r = rnd(s, R_NR);
		a = (uintptr_t)fx[r].at + (rnd(s, fx[r].npages + 4) - 2) * PAGE;
		return a;
	}
}

static uint64_t pick_npages(uint64_t *s, uint64_t addr, bool *shape_bad)
{
	uint64_t n;

	switch (rnd(s, 10)) {
	case 0:
		*shape_bad = true;
		return 0;
	case 1:		/* past the end of the address space */
		n = rnd(s, 2) ? ~0ULL : (~0ULL >> 12) + rnd(s, 4);
		*shape_bad = true;
		return n;
	case 2:		/* just past USER_TOP */
		n = (user_top - addr) / PAGE + 1 + rnd(s, 3);
		*shape_bad = true;
		return n;
	case 3:
		return 1 + rnd(s, 2 * HUGE_2M / PAGE);
	default:
		return 1 + rnd(s, BUF_PAGES);
	}
}

static void *pick_ptr(uint64_t *s, bool *bad)
{
	switch (rnd(s, 8)) {
	case 0:
		*bad = true;
		return NULL;
	case 1:
		*bad = true;
		return fx[R_HOLE].at;
	case 2:
		*bad = true;
		return (void *)0xffff888000000000UL;	/* kernel memory */
	case 3:
		*bad = true;
		return fx[R_NONE].at;
	default:
		return fx[R_BUF].at;
	}
}

/* The range check of the driver, evaluated on the user side. */
static bool shape_bad(const struct hmm_dmirror_cmd *c)
{
	if (c->addr % PAGE || !c->npages || c->npages > user_top / PAGE)
		return true;
	return c->addr + c->npages * PAGE < c->addr ||
	       c->addr + c->npages * PAGE > user_top;
}

static void classify(struct req *q)
{
	uint64_t n = q->c.npages, a = q->c.addr, i;

	for (i = 0; i < n; i++) {
		switch (page_kind(a + i * PAGE)) {
		case K_NONE:
			q->any_none = true;
			break;
		case K_RO:
			q->any_ro = true;
			break;
		case K_NOMIGRATE_RO:
			q->any_ro = true;
			q->any_nomigrate = true;
			break;
		case K_NOMIGRATE_RW:
			q->any_nomigrate = true;
			break;
		default:
			break;
		}
		/* Ranges beyond the reservation are all holes. */
		if (q->any_none && i > 2 * R_NR * WIN / PAGE)
			break;
	}
	/* The user buffer holds BUF_PAGES; longer transfers run off it. */
	if (n > BUF_PAGES && q->cmd != HMM_DMIRROR_MIGRATE_TO_SYS &&
	    q->cmd != HMM_DMIRROR_CHECK_EXCLUSIVE &&
	    q->cmd != HMM_DMIRROR_RELEASE && q->cmd != HMM_DMIRROR_SNAPSHOT)
		q->bad_ptr = true;
}

/* Bit of errno @x in a mask; the one errno above 62 we expect gets 63. */
static uint64_t E(int x)
{
	return 1ULL << (x == EOPNOTSUPP ? 63 : x);
}

static bool errno_fits(int err)
{
	return err < 63 || err == EOPNOTSUPP;
}

/* The errnos (bit 0: success) the request may end with. */
static uint64_t allowed(const struct req *q)
{
	bool clean = !q->any_none && !q->bad_ptr;

	if (q->bad_fd)
		return E(EBADF);
	if (q->bad_cmd)
		return E(ENOTTY);
	if (q->bad_arg)
		return E(EFAULT);
	if (q->bad_shape)
		return E(EINVAL);

	switch (q->cmd) {
	case HMM_DMIRROR_READ:
		return clean ? E(0) : E(EFAULT);
	case HMM_DMIRROR_WRITE:
		if (clean && !q->any_ro)
			return E(0);
		return E(EFAULT) | (q->any_ro ? E(EPERM) : 0);
	case HMM_DMIRROR_MIGRATE_TO_DEV:
		/*
		 * Unmigratable pages are not in device memory: ENOENT; a
		 * shared mapping of a file other than shmem: EOPNOTSUPP.
		 */
		if (q->any_none)
			return E(EINVAL) | E(ENOENT) | E(EFAULT) |
			       (q->any_nomigrate ? E(EOPNOTSUPP) : 0);
		if (q->any_nomigrate)
			return E(EINVAL) | E(ENOENT) | E(EFAULT) |
			       E(EOPNOTSUPP) | E(0);
		return clean ? E(0) : E(EFAULT);
	case HMM_DMIRROR_MIGRATE_TO_SYS:
		return q->any_none ? E(EINVAL) :
		       q->any_nomigrate ? E(EINVAL) | E(0) : E(0);
	case HMM_DMIRROR_SNAPSHOT:
		return q->bad_ptr ? E(EFAULT) : E(0);
	case HMM_DMIRROR_EXCLUSIVE:
		/*
		 * EBUSY: some page could not be made exclusive;
		 * EOPNOTSUPP: hugetlbfs pages never can.
		 */
		if (clean && !q->any_ro && !q->any_nomigrate)
			return E(0) | E(EBUSY);
		return E(EFAULT) | E(EPERM) | E(EINVAL) | E(EBUSY) |
		       E(ENOENT) | E(EOPNOTSUPP) | (q->any_none ? 0 : E(0));
	case HMM_DMIRROR_CHECK_EXCLUSIVE:
		return E(0) | E(EPERM);
	default:	/* RELEASE */
		return E(0) | E(EBUSY);
	}
}

static bool data_range(const struct hmm_dmirror_cmd *c, unsigned long *first)
{
	uint64_t a = (uintptr_t)fx[R_DATA].at;

	*first = (c->addr - a) / PAGE;
	return c->addr >= a && c->npages <= DATA_PAGES &&
	       c->addr + c->npages * PAGE <= a + DATA_PAGES * PAGE;
}

static bool data_overlap(const struct hmm_dmirror_cmd *c)
{
	uint64_t a = (uintptr_t)fx[R_DATA].at;

	return c->npages <= DATA_PAGES + 2 * WIN / PAGE &&
	       c->addr < a + DATA_PAGES * PAGE &&
	       c->addr + c->npages * PAGE > a;
}

/*
 * Keep the shadow of the data window exact: a device write that worked
 * wrote the buffer; one that failed may have written part of it, so then
 * the CPU's view, checked through the device, becomes the shadow.
 */
static int shadow_update(struct req *q, int err, int fd)
{
	unsigned long first;
	size_t len;

	if (q->bad_fd || q->bad_cmd || q->bad_arg || q->bad_shape)
		return 0;
	if (!data_range(&q->c, &first)) {
		/* Pages it got to before failing further on were written. */
		if (q->cmd == HMM_DMIRROR_WRITE && data_overlap(&q->c))
			memcpy(shadow, fx[R_DATA].at, sizeof(shadow));
		return 0;
	}
	len = q->c.npages * PAGE;
	if (q->cmd == HMM_DMIRROR_WRITE && !err) {
		memcpy(shadow + first * PAGE, fx[R_BUF].at, len);
	} else if ((q->cmd == HMM_DMIRROR_READ ||
		    q->cmd == HMM_DMIRROR_MIGRATE_TO_DEV ||
		    q->cmd == HMM_DMIRROR_EXCLUSIVE) && !err &&
		   !q->bad_ptr && (void *)(uintptr_t)q->c.ptr == fx[R_BUF].at) {
		if (memcmp(shadow + first * PAGE, fx[R_BUF].at, len))
			return -1;
	} else if (q->cmd == HMM_DMIRROR_WRITE) {
		memcpy(shadow, fx[R_DATA].at, sizeof(shadow));
	}
	return 0;
}

static void req_build(struct req *q, uint64_t *s, int fd, int closed_fd,
		      int null_fd)
{
	memset(q, 0, sizeof(*q));
	q->fd = fd;
	q->arg = &q->c;
	switch (rnd(s, 40)) {
	case 0:
		q->fd = closed_fd;
		q->bad_fd = true;
		break;
	case 1:
		q->fd = null_fd;	/* not our device: no such ioctl */
		q->bad_cmd = true;
		break;
	case 2:
		q->arg = rnd(s, 2) ? NULL : fx[R_NONE].at;
		q->bad_arg = true;
		break;
	}
	q->cmd = cmds[rnd(s, 8)];
	/* RELEASE unplugs all device memory: keep it rare. */
	if (q->cmd == HMM_DMIRROR_RELEASE && rnd(s, 8))
		q->cmd = HMM_DMIRROR_READ;
	if (rnd(s, 12) == 0) {
		q->cmd = bad_cmd(s);
		q->bad_cmd = true;
	}
	q->c.addr = pick_addr(s, &q->bad_shape);
	q->c.npages = pick_npages(s, q->c.addr, &q->bad_shape);
	q->c.ptr = (uintptr_t)pick_ptr(s, &q->bad_ptr);
	q->bad_shape = shape_bad(&q->c);
	if (q->cmd == HMM_DMIRROR_WRITE && q->c.ptr == (uintptr_t)fx[R_BUF].at)
		fill_random(fx[R_BUF].at, BUF_PAGES * PAGE, s);
	if (!q->bad_shape)
		classify(q);
}

static const char *cmd_name(unsigned long cmd)
{
	static const char *const names[] = {
		"READ", "WRITE", "MIGRATE_TO_DEV", "MIGRATE_TO_SYS",
		"SNAPSHOT", "EXCLUSIVE", "CHECK_EXCLUSIVE", "RELEASE",
	};
	unsigned int i;

	for (i = 0; i < 8; i++)
		if (cmd == cmds[i])
			return names[i];
	return "bad";
}

static void test_fuzz(uint64_t seed, unsigned long iters, int seconds)
{
	unsigned long it, n_ok = 0, counts[64] = { 0 };
	int fd, closed_fd, null_fd, err;
	time_t start = time(NULL), end = start + seconds;
	uint64_t s = seed;
	struct req q;
	long bad;

	fd = open("/dev/hmm_dmirror0", O_RDWR);
	closed_fd = open("/dev/hmm_dmirror1", O_RDWR);
	null_fd = open("/dev/null", O_RDWR);
	if (fd < 0 || closed_fd < 0 || null_fd < 0 || fixtures_map(fd, &s)) {
		ksft_test_result_fail("fuzz_ioctl: setup: %s\n",
				      strerror(errno));
		return;
	}
	close(closed_fd);	/* stays closed: nothing else is opened */

	for (it = 0; it < iters; it++) {
		if (!(it & 255) && time(NULL) > end)
			break;
		req_build(&q, &s, fd, closed_fd, null_fd);
		err = ioctl(q.fd, q.cmd, q.arg) ? errno : 0;
		if (err < 64)
			counts[err]++;
		if (!errno_fits(err) || !(allowed(&q) & E(err))) {
			ksft_print_msg("#%lu %s %#lx fd %d %#llx+%#llx ptr %#llx: %s\n",
				       it, cmd_name(q.cmd), q.cmd, q.fd,
				       (unsigned long long)q.c.addr,
				       (unsigned long long)q.c.npages,
				       (unsigned long long)q.c.ptr,
				       err ? strerror(err) : "success");
			ksft_test_result_fail("fuzz_ioctl: iteration %lu: unexpected result\n",
					      it);
			return;
		}
		if (shadow_update(&q, err, fd)) {
			ksft_test_result_fail("fuzz_ioctl: #%lu: device read != shadow\n",
					      it);
			return;
		}
		n_ok += !err;
	}

	/* The CPU sees what the device wrote; nothing else changed. */
	bad = memcmp(shadow, fx[R_DATA].at, sizeof(shadow)) ||
	      memcmp(ro_copy, fx[R_RO].at, sizeof(ro_copy));
	ksft_print_msg("%lu iterations in %ld s, %lu ok; EINVAL %lu EFAULT %lu ENOTTY %lu\n",
		       it, (long)(time(NULL) - start), n_ok, counts[EINVAL],
		       counts[EFAULT], counts[ENOTTY]);
	ksft_print_msg("EPERM %lu ENOENT %lu EBADF %lu EBUSY %lu\n",
		       counts[EPERM], counts[ENOENT], counts[EBADF],
		       counts[EBUSY]);
	close(fd);
	close(null_fd);
	if (bad)
		ksft_test_result_fail("fuzz_ioctl: data window or read-only page changed\n");
	else
		ksft_test_result_pass("fuzz_ioctl (%lu iterations)\n", it);
}

/* ------------------------------------------------------------------ */

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
	};
	struct closer *c = arg;

	for (;;) {
		unsigned long op = ops[rnd(&c->rnd, 4)];
		struct hmm_dmirror_cmd cmd = {
			.addr = (uintptr_t)c->data, .ptr = (uintptr_t)c->buf,
			.npages = DATA_PAGES,
		};
		int err = ioctl(c->fd, op, &cmd) ? errno : 0;

		c->calls++;
		if (err == EBADF)
			return NULL;
		/* A migration racing the close may lose the device table. */
		if (err && !(op == HMM_DMIRROR_MIGRATE_TO_DEV && err == ENOENT)) {
			c->unexpected = err;
			return NULL;
		}
		if (!err && op != HMM_DMIRROR_MIGRATE_TO_SYS &&
		    op != HMM_DMIRROR_SNAPSHOT &&
		    memcmp(c->buf, c->data, DATA_PAGES * PAGE)) {
			c->unexpected = -1;
			return NULL;
		}
	}
}

/*
 * close() while ioctls are in flight on the descriptor: they finish on
 * the file they started with (EBADF only before they began), data stays
 * intact and the device memory of the closed file is given back.
 */
static void test_close_race(uint64_t seed, int rounds)
{
	char *data = mmap(NULL, DATA_PAGES * PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *buf = malloc(DATA_PAGES * PAGE);
	unsigned long calls = 0;
	uint64_t s = seed;
	pthread_t tid;
	int i;

	if (data == MAP_FAILED || !buf) {
		ksft_test_result_fail("close_race: no memory\n");
		return;
	}
	fill_random(data, DATA_PAGES * PAGE, &s);
	for (i = 0; i < rounds; i++) {
		struct closer c = {
			.fd = open("/dev/hmm_dmirror0", O_RDWR),
			.data = data, .buf = buf, .rnd = rnd_next(&s),
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
	}
	fill_random(buf, DATA_PAGES * PAGE, &seed);	/* same as data */
	ksft_print_msg("close_race: %d rounds, %lu ioctls\n", rounds, calls);
	if (memcmp(buf, data, DATA_PAGES * PAGE))
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
