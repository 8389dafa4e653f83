/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the HMM selftests (hmm-*tests, hmm-stress, hmm-fuzz):
 * the dummy device of lib/test_hmm.c, data patterns, child processes,
 * the device's sysfs attributes, memory cgroups, swap on the RAM disk and
 * a seeded PRNG. Page sizes, THP settings and /proc/self/smaps checks
 * come from vm_util.h and thp_settings.h.
 */
#ifndef __HMM_COMMON_H__
#define __HMM_COMMON_H__

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/types.h>
#include <lib/test_hmm_uapi.h>

#include "vm_util.h"
#include "thp_settings.h"

#define SZ_1M		(1024UL * 1024)
#define SZ_1G		(1024 * SZ_1M)

/* Device-side view of one page as SNAPSHOT reports it. */
#define DEV_RW		HMM_DMIRROR_PROT_WRITE
#define DEV_RO		HMM_DMIRROR_PROT_READ

/* The RAM disk (CONFIG_BLK_DEV_RAM) that swap cases put swap on. */
#define HMM_SWAPDEV	"/dev/ram0"
#define HMM_CGROOT	"/sys/fs/cgroup"
#define SHM_SWAP_LIMIT	"16M"	/* memory.max while swap cases write */
#define KSM_SYSFS	"/sys/kernel/mm/ksm/"

/* thp_read_string() names of .../transparent_hugepage/{enabled,shmem_enabled} */
extern const char * const thp_enabled_names[];
extern const char * const shmem_enabled_names[];

/* The device. */
int dmirror_open(int unit);
int dmirror_req(int fd, unsigned long req, void *addr, void *data,
		unsigned long npages, struct hmm_dmirror_cmd *cmd);
int excl_state(int fd, char *va, size_t psz, unsigned long from,
	       unsigned long to);
bool excl_all(int fd, char *va, size_t psz, unsigned long from,
	      unsigned long to);

/* Data patterns: every word says which buffer and which word it is. */
/*
 * Pattern word number @idx of pattern @seed. The seed sits in the high
 * half so it is never zero for seed != 0 and two seeds never agree; the
 * index is the word's position in the whole buffer, so a page copied to
 * the wrong place is caught as surely as a page not copied at all.
 */
static inline __u64 pat_word(__u32 seed, size_t idx)
{
	return ((__u64)seed << 32) | (__u32)idx;
}

void pat_fill(void *p, size_t len, __u32 seed, size_t off);
long pat_find_bad(const void *p, size_t len, __u32 seed, size_t off);
long zero_find_bad(const void *p, size_t len);

/* Mappings and files holding patterns. */
void *anon_map(size_t len, int prot, bool no_thp);
void *anon_map_aligned(size_t len, size_t align);
char *thp_map_filled(size_t len, __u32 seed);
int tmpfile_with_pattern(size_t len, __u32 seed);
long file_find_bad(int fd, size_t len, __u32 seed);

/* shmem files holding patterns, written and checked with pwrite/pread. */
#define SHM_CHUNK	SZ_1M	/* read()/write() buffer of the big cases */
int shm_pwrite_pattern(int fd, size_t off, size_t len, __u32 seed);
long shm_pread_check(int fd, size_t off, size_t len, __u32 seed);
int shm_memfd_pattern(size_t len, __u32 seed);
char *shm_map(int fd, size_t len, int flags);
unsigned char shm_dev_state(bool coherent, bool writable);
__u64 shm_touch(const char *va, size_t len, size_t psz);
bool all_bytes(const void *p, size_t len, unsigned char c);

/* Child processes, which report by exit code. */
int in_child(int (*fn)(void *), void *arg);

/* CPU accesses that may raise SIGBUS; the signal's details per thread. */
extern __thread int cpu_touch_sig;
extern __thread int cpu_touch_code;
extern __thread void *cpu_touch_addr;
int cpu_touch(__u64 *p, bool write, __u64 *val);
int cpu_touch_segv(__u64 *p, bool write, __u64 *val);
bool cpu_read_sigbus(void *p);
bool cpu_write_sigbus(void *p);
int hwpoison_page(char *p, size_t psz);

/* /proc and sysfs. */
long proc_field_kb(const char *path, const char *key);
long meminfo_kb(const char *key);
long smaps_kb(void *va, const char *key);
long pagemap_count(const char *va, unsigned long npages, uint64_t bits);
bool cmdline_has(const char *word);
int write_str(const char *path, const char *val);
dev_t dmirror_rdev(int fd);
int devattr_path(dev_t rdev, const char *name, char *path, size_t size);
long devattr_read(dev_t rdev, const char *name);
int devattr_write(dev_t rdev, const char *name, long val);
long devmem_used(int fd);

/* A memory cgroup for the calling process, swap, and their cleanup. */
int memcg_enter(const char *max);
int memcg_set_max(const char *max);
void memcg_leave(void);
int swap_start(size_t psz);
long swap_used_kb(void);
int ksm_run(int mode);
void hmm_leftovers_teardown(void);

/* A seeded PRNG, so that a failing run can be replayed. */
uint64_t rnd_next(uint64_t *s);

#endif /* __HMM_COMMON_H__ */
