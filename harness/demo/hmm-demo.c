// SPDX-License-Identifier: GPL-2.0
/*
 * hmm-demo: show the mirror and migration at work through the dummy device.
 *
 * A buffer written by the CPU is read by the device through its mirror of
 * the process page tables; the device writes a new pattern the CPU then
 * sees; the buffer migrates to device-private memory; a CPU access faults
 * it back. Each step says what it verified. With --tap the same steps are
 * reported as a TAP document so that make test counts them.
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
#include <unistd.h>

#include <lib/test_hmm_uapi.h>

#define NPAGES	64

static int tap;
static int nsteps;
static int nfailed;

static void step(int ok, const char *fmt, ...)
{
	va_list ap;

	nsteps++;
	if (!ok)
		nfailed++;
	if (tap)
		printf("%s %d - ", ok ? "ok" : "not ok", nsteps);
	else
		printf("  [%s] ", ok ? "ok" : "FAILED");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void say(const char *fmt, ...)
{
	va_list ap;

	printf(tap ? "# " : "\n");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static int dmirror(int fd, unsigned long req, void *addr, void *ptr,
		   unsigned long npages, struct hmm_dmirror_cmd *cmd)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->addr = (uintptr_t)addr;
	cmd->ptr = (uintptr_t)ptr;
	cmd->npages = npages;
	return ioctl(fd, req, cmd) ? -errno : 0;
}

/* Index of the first word of @buf that is not @seed + i, or -1. */
static long pattern_mismatch(const uint32_t *buf, size_t words, uint32_t seed)
{
	size_t i;

	for (i = 0; i < words; i++)
		if (buf[i] != seed + i)
			return i;
	return -1;
}

static void pattern_fill(uint32_t *buf, size_t words, uint32_t seed)
{
	size_t i;

	for (i = 0; i < words; i++)
		buf[i] = seed + i;
}

/*
 * Count the pages whose snapshot state, masked with @mask, is @want. The
 * state of a device page carries the access bits (READ or WRITE) too.
 */
static unsigned int snapshot_count(int fd, void *addr, unsigned long npages,
				   unsigned char mask, unsigned char want)
{
	unsigned char state[NPAGES];
	struct hmm_dmirror_cmd cmd;
	unsigned int i, n = 0;

	if (dmirror(fd, HMM_DMIRROR_SNAPSHOT, addr, state, npages, &cmd))
		return 0;
	for (i = 0; i < npages; i++)
		n += (state[i] & mask) == want;
	return n;
}

int main(int argc, char **argv)
{
	size_t size, words;
	struct hmm_dmirror_cmd cmd;
	uint32_t *buf, *dev;
	unsigned int n;
	long bad;
	int fd, rc;

	tap = argc > 1 && !strcmp(argv[1], "--tap");
	if (tap)
		printf("TAP version 13\n1..10\n");
	size = NPAGES * sysconf(_SC_PAGESIZE);
	words = size / sizeof(*buf);

	say("HMM demo: a %zu KiB buffer shared by the CPU and /dev/hmm_dmirror0",
	    size >> 10);
	fd = open("/dev/hmm_dmirror0", O_RDWR);
	step(fd >= 0, "open /dev/hmm_dmirror0%s%s", fd < 0 ? ": " : "",
	     fd < 0 ? strerror(errno) : "");
	if (fd < 0)
		return 1;
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dev = malloc(size);
	if (buf == MAP_FAILED || !dev)
		return 1;

	say("1. The CPU writes a pattern; the device reads it through its mirror");
	pattern_fill(buf, words, 0x1000);
	memset(dev, 0, size);
	rc = dmirror(fd, HMM_DMIRROR_READ, buf, dev, NPAGES, &cmd);
	bad = rc ? 0 : pattern_mismatch(dev, words, 0x1000);
	step(!rc && cmd.cpages == NPAGES && bad < 0,
	     "device read %llu pages (%llu device faults), all %zu words match the CPU's pattern",
	     cmd.cpages, cmd.faults, words);

	say("2. The device writes a new pattern; the CPU sees it");
	pattern_fill(dev, words, 0x2000);
	rc = dmirror(fd, HMM_DMIRROR_WRITE, buf, dev, NPAGES, &cmd);
	bad = pattern_mismatch(buf, words, 0x2000);
	step(!rc && cmd.cpages == NPAGES && bad < 0,
	     "device wrote %llu pages, the CPU reads the device's pattern in all %zu words",
	     cmd.cpages, words);

	say("3. The buffer migrates to device-private memory");
	memset(dev, 0, size);
	rc = dmirror(fd, HMM_DMIRROR_MIGRATE_TO_DEV, buf, dev, NPAGES, &cmd);
	bad = rc ? 0 : pattern_mismatch(dev, words, 0x2000);
	step(!rc && cmd.cpages == NPAGES && bad < 0,
	     "migrated %llu of %d pages to the device (%s), their device copy matches",
	     cmd.cpages, NPAGES, rc ? strerror(-rc) : "no error");
	n = snapshot_count(fd, buf, NPAGES, 0xf0, HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL);
	step(n == NPAGES,
	     "snapshot: %u of %d CPU page table entries point to this device's memory",
	     n, NPAGES);
	memset(dev, 0, size);
	rc = dmirror(fd, HMM_DMIRROR_READ, buf, dev, NPAGES, &cmd);
	bad = rc ? 0 : pattern_mismatch(dev, words, 0x2000);
	step(!rc && bad < 0, "the device reads the pattern from its own memory");

	say("4. The CPU touches the buffer: each page faults back to system memory");
	bad = pattern_mismatch(buf, words, 0x2000);
	step(bad < 0, "the CPU read all %zu words intact after the fault back", words);
	n = snapshot_count(fd, buf, NPAGES, 0xff, HMM_DMIRROR_PROT_WRITE);
	step(n == NPAGES, "snapshot: %u of %d pages are writable system memory again",
	     n, NPAGES);

	say("5. The CPU writes; the device sees the change through the mirror");
	pattern_fill(buf, words, 0x3000);
	memset(dev, 0, size);
	rc = dmirror(fd, HMM_DMIRROR_READ, buf, dev, NPAGES, &cmd);
	bad = rc ? 0 : pattern_mismatch(dev, words, 0x3000);
	step(!rc && bad < 0, "the device reads the CPU's newest pattern");

	munmap(buf, size);
	free(dev);
	step(close(fd) == 0, "close the device");
	say("%d of %d steps verified", nsteps - nfailed, nsteps);
	return nfailed ? 1 : 0;
}
