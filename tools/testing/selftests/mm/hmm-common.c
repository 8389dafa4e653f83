// SPDX-License-Identifier: GPL-2.0
/*
 * Helpers shared by the HMM selftests; see hmm-common.h. Each is small
 * and does one job; the tests keep their checks to themselves.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include "hmm-common.h"

/* In the order of enum thp_enabled and enum shmem_enabled. */
const char * const thp_enabled_names[] = {
	"never", "always", "inherit", "madvise", NULL
};

const char * const shmem_enabled_names[] = {
	"never", "always", "within_size", "advise", "inherit", "deny",
	"force", NULL
};

/* ---------------------------------------------------------------------
 * The device.
 */

int dmirror_open(int unit)
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
int dmirror_req(int fd, unsigned long req, void *addr, void *data,
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

/* CHECK_EXCLUSIVE on pages [from, to) of @va: 0 or -EPERM. */
int excl_state(int fd, char *va, size_t psz, unsigned long from,
	       unsigned long to)
{
	struct hmm_dmirror_cmd cmd;

	return dmirror_req(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, va + from * psz,
			   NULL, to - from, &cmd);
}

/* Does the device hold exclusive access to every page of [from, to)? */
bool excl_all(int fd, char *va, size_t psz, unsigned long from,
	      unsigned long to)
{
	unsigned long i;

	for (i = from; i < to; i++)
		if (excl_state(fd, va, psz, i, i + 1) != -EPERM)
			return false;
	return true;
}

/* ---------------------------------------------------------------------
 * Data patterns (pat_word() is in the header).
 */

/* Fill @len bytes at @p, which sits at byte @off of its buffer. */
void pat_fill(void *p, size_t len, __u32 seed, size_t off)
{
	__u64 *w = p;
	size_t base = off / sizeof(*w);
	size_t i;

	for (i = 0; i < len / sizeof(*w); i++)
		w[i] = pat_word(seed, base + i);
}

/* Byte offset from @p of the first wrong word, or -1 if all match. */
long pat_find_bad(const void *p, size_t len, __u32 seed,
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

long zero_find_bad(const void *p, size_t len)
{
	const __u64 *w = p;
	size_t i;

	for (i = 0; i < len / sizeof(*w); i++)
		if (w[i])
			return (long)(i * sizeof(*w));
	return -1;
}

/* ---------------------------------------------------------------------
 * Mappings and files holding patterns.
 */

/*
 * Anonymous private mapping. @no_thp keeps THP out (and stops the range
 * merging with neighbours that allow it), for cases whose expectations
 * depend on base-page mappings whatever the THP mode is.
 */
void *anon_map(size_t len, int prot, bool no_thp)
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
void *anon_map_aligned(size_t len, size_t align)
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

/*
 * Map @len bytes of PMD-aligned anonymous memory advised for THP and fill
 * it with @seed. Returns NULL when the kernel backed it with base pages
 * (THP off, or no huge page free), which the caller reports as a skip:
 * this mapping's own smaps entry must show all of it as AnonHugePages.
 */
char *thp_map_filled(size_t len, __u32 seed)
{
	size_t pmd = read_pmd_pagesize();
	char *p;

	if (!pmd)
		return NULL;
	p = anon_map_aligned(len, pmd);
	if (!p)
		return NULL;
	if (madvise(p, len, MADV_HUGEPAGE)) {
		munmap(p, len);
		return NULL;
	}
	pat_fill(p, len, seed, 0);
	if (!check_huge_anon(p, len / pmd, pmd)) {
		munmap(p, len);
		return NULL;
	}
	return p;
}

/* Temporary file in /tmp holding @len bytes of pattern @seed, unlinked. */
int tmpfile_with_pattern(size_t len, __u32 seed)
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
long file_find_bad(int fd, size_t len, __u32 seed)
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

/* ---------------------------------------------------------------------
 * shmem files holding patterns, and byte checks.
 */

/*
 * Write pattern @seed into [@off, @off + @len) of @fd with pwrite() in
 * chunks, so that the pages are created without ever being mapped.
 */
int shm_pwrite_pattern(int fd, size_t off, size_t len, __u32 seed)
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
long shm_pread_check(int fd, size_t off, size_t len, __u32 seed)
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
int shm_memfd_pattern(size_t len, __u32 seed)
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
char *shm_map(int fd, size_t len, int flags)
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
unsigned char shm_dev_state(bool coherent, bool writable)
{
	return (coherent ? HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
			   HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL) |
	       (writable ? DEV_RW : DEV_RO);
}

/*
 * The CPU reads every page of [@va, @va + @len) through a mapping: that
 * brings device-private pages back and maps device-coherent ones. Returns
 * the sum of the first words, so the loads cannot be dropped.
 */
__u64 shm_touch(const char *va, size_t len, size_t psz)
{
	__u64 sum = 0;
	size_t off;

	for (off = 0; off < len; off += psz)
		sum += __atomic_load_n((const __u64 *)(va + off),
				       __ATOMIC_RELAXED);
	return sum;
}

/* Is every byte of @p, @len bytes, equal to @c? */
bool all_bytes(const void *p, size_t len, unsigned char c)
{
	const unsigned char *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		if (b[i] != c)
			return false;
	return true;
}

/* ---------------------------------------------------------------------
 * Child processes.
 */

/*
 * Run @fn in a child process and return its exit status (128 + signal if
 * it was killed). Children report by exit code: the harness's ASSERT
 * machinery belongs to the test process and must not run in a fork.
 */
int in_child(int (*fn)(void *), void *arg)
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
 * CPU accesses that may raise a signal. One handler for SIGBUS and
 * SIGSEGV is installed for the whole process once; each thread arms it
 * for the signals it expects around one access, so that threads of
 * hmm-stress can do this concurrently. Any other signal, or one that
 * arrives while nothing is armed, gets its default action.
 */

__thread int cpu_touch_sig;
__thread int cpu_touch_code;
__thread void *cpu_touch_addr;
static __thread sigjmp_buf *cpu_touch_jb;
static __thread int cpu_touch_armed;	/* bitmask of 1 << signal */
static pthread_once_t cpu_touch_once = PTHREAD_ONCE_INIT;

static void cpu_touch_handler(int sig, siginfo_t *si, void *uc)
{
	if (!cpu_touch_jb || !(cpu_touch_armed & (1 << sig))) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	cpu_touch_sig = sig;
	cpu_touch_code = si->si_code;
	cpu_touch_addr = si->si_addr;
	siglongjmp(*cpu_touch_jb, 1);
}

static void cpu_touch_install(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = cpu_touch_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

struct cpu_touch_op {
	__u64 *p;
	bool write;
	__u64 *val;
	char *poison;	/* instead: MADV_HWPOISON this page */
	size_t psz;
	int ret;
};

static void cpu_touch_do(struct cpu_touch_op *op)
{
	if (op->poison) {
		op->ret = madvise(op->poison, op->psz, MADV_HWPOISON) ?
			  -errno : 0;
		return;
	}
	/* Atomic accesses: the compiler may not drop or merge them. */
	if (op->write)
		__atomic_store_n(op->p, *op->val, __ATOMIC_RELAXED);
	else
		*op->val = __atomic_load_n(op->p, __ATOMIC_RELAXED);
}

/* Run @op with @sigs (1 << signal) armed; returns the signal raised or 0. */
static int cpu_touch_guarded(struct cpu_touch_op *op, int sigs)
{
	sigjmp_buf jb;

	pthread_once(&cpu_touch_once, cpu_touch_install);
	cpu_touch_sig = 0;
	cpu_touch_code = 0;
	cpu_touch_addr = NULL;
	if (!sigsetjmp(jb, 1)) {
		cpu_touch_jb = &jb;
		cpu_touch_armed = sigs;
		/* Keep the access inside the armed window. */
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		cpu_touch_do(op);
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
	}
	cpu_touch_jb = NULL;
	cpu_touch_armed = 0;
	return cpu_touch_sig;
}

/*
 * Load the word at @p into *@val, or store *@val there, catching SIGBUS.
 * Returns the signal raised (si_code and si_addr in cpu_touch_code and
 * cpu_touch_addr), or 0 if the access went through.
 */
int cpu_touch(__u64 *p, bool write, __u64 *val)
{
	struct cpu_touch_op op = { .p = p, .write = write, .val = val };

	return cpu_touch_guarded(&op, 1 << SIGBUS);
}

/* Like cpu_touch(), but an access the mapping forbids gives SIGSEGV. */
int cpu_touch_segv(__u64 *p, bool write, __u64 *val)
{
	struct cpu_touch_op op = { .p = p, .write = write, .val = val };

	return cpu_touch_guarded(&op, 1 << SIGBUS | 1 << SIGSEGV);
}

/* Does a load from @p raise SIGBUS with BUS_ADRERR at exactly @p? */
bool cpu_read_sigbus(void *p)
{
	__u64 v = 0;

	return cpu_touch(p, false, &v) == SIGBUS &&
	       cpu_touch_code == BUS_ADRERR && cpu_touch_addr == p;
}

/* Does a store to @p raise SIGBUS with BUS_ADRERR at exactly @p? */
bool cpu_write_sigbus(void *p)
{
	__u64 v = 0xdeadbeefcafef00dULL;

	return cpu_touch(p, true, &v) == SIGBUS &&
	       cpu_touch_code == BUS_ADRERR && cpu_touch_addr == p;
}

/*
 * MADV_HWPOISON @p: memory_failure() as for an error the CPU consumed,
 * which sends the caller SIGBUS (BUS_MCEERR_AR) at @p. Returns 0 when
 * the page got poisoned that way, else -errno.
 */
int hwpoison_page(char *p, size_t psz)
{
	struct cpu_touch_op op = { .poison = p, .psz = psz };
	int sig;

	sig = cpu_touch_guarded(&op, 1 << SIGBUS);
	if (!sig && op.ret)
		return op.ret;
	if (sig && (sig != SIGBUS || cpu_touch_code != BUS_MCEERR_AR))
		return -EPROTO;
	return 0;
}

/* ---------------------------------------------------------------------
 * /proc and sysfs.
 */

/* N if @line is "@key: N ...", else -1. */
static long line_field(const char *line, const char *key)
{
	size_t klen = strlen(key);

	if (strncmp(line, key, klen) || line[klen] != ':')
		return -1;
	return strtol(line + klen + 1, NULL, 10);
}

/*
 * Value of field @key of a "Key: N kB" file such as /proc/meminfo or
 * /proc/self/status, or -1.
 */
long proc_field_kb(const char *path, const char *key)
{
	char line[256];
	long val = -1;
	FILE *f;

	f = fopen(path, "r");
	if (!f)
		return -1;
	while (val < 0 && fgets(line, sizeof(line), f))
		val = line_field(line, key);
	fclose(f);
	return val;
}

/* Value in kB of @key in /proc/meminfo, or -1. */
long meminfo_kb(const char *key)
{
	return proc_field_kb("/proc/meminfo", key);
}

/*
 * Value in kB of field @key ("Rss", "Swap", ...) of the /proc/self/smaps
 * entry of the mapping that starts at @va, or -1.
 */
long smaps_kb(void *va, const char *key)
{
	unsigned long start, end;
	bool in = false;
	char line[256];
	long val = -1;
	FILE *f;

	f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	while (val < 0 && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 &&
		    strchr(line, '-') < strchr(line, ' '))
			in = start == (uintptr_t)va;
		else if (in)
			val = line_field(line, key);
	}
	fclose(f);
	return val;
}

/*
 * Pages of [@va, @va + @npages pages) whose /proc/self/pagemap entry has
 * any of @bits (PM_PRESENT, PM_SWAP), or -1.
 */
long pagemap_count(const char *va, unsigned long npages, uint64_t bits)
{
	unsigned long i;
	long n = 0;
	int fd;

	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	for (i = 0; i < npages; i++)
		n += !!(pagemap_get_entry(fd, (char *)va + i * psize()) & bits);
	close(fd);
	return n;
}

/* Does the kernel command line hold @word? */
bool cmdline_has(const char *word)
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

/* Write the string @val into the (sysfs, cgroup) file @path: 0 or -errno. */
int write_str(const char *path, const char *val)
{
	ssize_t n = strlen(val);
	int fd, ret = 0;

	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, val, n) != n)
		ret = -errno;
	close(fd);
	return ret;
}

/* Device number of the device file @fd, or 0. */
dev_t dmirror_rdev(int fd)
{
	struct stat st;

	return fstat(fd, &st) ? 0 : st.st_rdev;
}

/* Path of sysfs attribute @name of device @rdev (lib/test_hmm.c). */
int devattr_path(dev_t rdev, const char *name, char *path, size_t size)
{
	if (!rdev)
		return -ENODEV;
	snprintf(path, size, "/sys/dev/char/%u:%u/%s", major(rdev),
		 minor(rdev), name);
	return 0;
}

/* Value of sysfs attribute @name of device @rdev, or -1. */
long devattr_read(dev_t rdev, const char *name)
{
	char path[96], val[32] = "";
	ssize_t n;
	int fd;

	if (devattr_path(rdev, name, path, sizeof(path)))
		return -1;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, val, sizeof(val) - 1);
	close(fd);
	return n > 0 ? strtol(val, NULL, 0) : -1;
}

/* Set sysfs attribute @name of device @rdev to @val: 0 or -errno. */
int devattr_write(dev_t rdev, const char *name, long val)
{
	char path[96], text[32];
	int ret;

	ret = devattr_path(rdev, name, path, sizeof(path));
	if (ret)
		return ret;
	snprintf(text, sizeof(text), "%ld\n", val);
	return write_str(path, text);
}

/* Pages in use in the memory of the device behind @fd, or -1. */
long devmem_used(int fd)
{
	return devattr_read(dmirror_rdev(fd), "devmem_used");
}

/* ---------------------------------------------------------------------
 * A memory cgroup, swap on the RAM disk and KSM, each switched off again
 * by hmm_leftovers_teardown() if a case fails half way.
 */

#define HMM_CGROUP	HMM_CGROOT "/hmm-tests"

static bool memcg_entered;
static bool swap_started;
static bool ksm_started;

/*
 * Put the calling process in a fresh memory cgroup limited to @max (a
 * memory.max value). Pages it creates from now on are charged there.
 */
int memcg_enter(const char *max)
{
	int ret;

	rmdir(HMM_CGROUP);	/* left over by an earlier failure */
	ret = write_str(HMM_CGROOT "/cgroup.subtree_control", "+memory");
	if (ret)
		return ret;
	if (mkdir(HMM_CGROUP, 0755))
		return -errno;
	memcg_entered = true;
	ret = memcg_set_max(max);
	if (!ret)
		ret = write_str(HMM_CGROUP "/cgroup.procs", "0");
	return ret;
}

/* Change memory.max of the cgroup memcg_enter() made: 0 or -errno. */
int memcg_set_max(const char *max)
{
	return write_str(HMM_CGROUP "/memory.max", max);
}

/* Back to the root cgroup; the cgroup goes away. */
void memcg_leave(void)
{
	write_str(HMM_CGROOT "/cgroup.procs", "0");
	rmdir(HMM_CGROUP);
	memcg_entered = false;
}

/*
 * Make @path a swap area the way mkswap does: a version 1 header in the
 * first page (no bad pages, no UUID, no label) and the SWAPSPACE2
 * signature in that page's last bytes. Returns 0 or -errno.
 */
static int mkswap(const char *path, size_t psz)
{
	struct {
		__u32 version;
		__u32 last_page;
		__u32 nr_badpages;
	} info = { .version = 1 };
	char *page;
	off_t size;
	int fd, ret = 0;

	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size = lseek(fd, 0, SEEK_END);
	page = calloc(1, psz);
	if (size < (off_t)(16 * psz) || !page) {
		ret = page ? -ENOSPC : -ENOMEM;
		goto out;
	}
	info.last_page = size / psz - 1;
	memcpy(page + 1024, &info, sizeof(info));
	memcpy(page + psz - 10, "SWAPSPACE2", 10);
	if (pwrite(fd, page, psz, 0) != (ssize_t)psz || fsync(fd))
		ret = -EIO;
out:
	free(page);
	close(fd);
	return ret;
}

/* Fresh swap on the RAM disk: 0, or -errno. */
int swap_start(size_t psz)
{
	int ret;

	swapoff(HMM_SWAPDEV);	/* left on by an earlier failure */
	ret = mkswap(HMM_SWAPDEV, psz);
	if (ret)
		return ret;
	if (swapon(HMM_SWAPDEV, 0))
		return -errno;
	swap_started = true;
	return 0;
}

/* Swap in use in the whole system, in kB. */
long swap_used_kb(void)
{
	return meminfo_kb("SwapTotal") - meminfo_kb("SwapFree");
}

/* Start (1), stop (0) or stop and unmerge (2) the KSM scanner. */
int ksm_run(int mode)
{
	char val[4];
	int ret;

	if (mode)
		ksm_started = true;
	snprintf(val, sizeof(val), "%d", mode);
	ret = write_str(KSM_SYSFS "run", val);
	if (mode == 2 && !ret)
		ksm_started = false;
	return ret;
}

/*
 * Run by the fixtures' teardown, which also runs after a failed ASSERT:
 * whatever a case left on (swap on the RAM disk, the process in the small
 * memory cgroup, the KSM scanner) must not outlive the case, since later
 * cases and hmm-stress assume no swap. Lifting memory.max first gives
 * swapoff room to read everything back in.
 */
void hmm_leftovers_teardown(void)
{
	if (ksm_started)
		ksm_run(2);	/* stop, unmerge */
	ksm_started = false;
	if (memcg_entered)
		memcg_set_max("max");
	if (swap_started)
		swapoff(HMM_SWAPDEV);
	if (memcg_entered)
		memcg_leave();
	swap_started = false;
	memcg_entered = false;
}

/* ---------------------------------------------------------------------
 * PRNG: splitmix64, so a run is replayed from its printed seed.
 */

uint64_t rnd_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
