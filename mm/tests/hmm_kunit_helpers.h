/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Helpers shared by the HMM KUnit suites; see hmm_kunit_helpers.c.
 */
#ifndef _MM_TESTS_HMM_KUNIT_HELPERS_H
#define _MM_TESTS_HMM_KUNIT_HELPERS_H

#include <kunit/test.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>

#define HK_NPAGES	16
#define HK_SIZE		(HK_NPAGES * PAGE_SIZE)
#define HK_TIMEOUT_MS	10000
#define HK_PFN_ACCESS	(HMM_PFN_VALID | HMM_PFN_WRITE | HMM_PFN_ERROR)

/* Pages of a migration case and of struct hk_pgmap. */
#define HK_MIG_NPAGES	8

/**
 * struct hk_notifier - A driver-like interval notifier.
 * @notifier: registered on the test's mm, see hk_notifier_add().
 * @lock: the "device page table" lock, taken by the invalidation.
 * @invalidations: number of invalidations that reached the notifier.
 *
 * Used the way Documentation/mm/hmm.rst tells drivers to use the raw API.
 */
struct hk_notifier {
	struct mmu_interval_notifier	notifier;
	struct mutex			lock;	/* "device page table" */
	atomic_t			invalidations;
};

/**
 * struct hk_ctx - What a suite's .init leaves in test->priv for a case.
 * @addr: an anonymous read-write mapping of @size bytes.
 * @size: its length.
 * @hn: an hk_notifier over it, or NULL if the suite needs none.
 */
struct hk_ctx {
	unsigned long		addr;
	unsigned long		size;
	struct hk_notifier	*hn;
};

u64 hk_pattern(unsigned long addr, unsigned int word, u64 tag);
void hk_fill_page(struct page *page, unsigned long addr, u64 tag);
bool hk_check_page(struct page *page, unsigned long addr, u64 tag);
bool hk_page_is_zero(struct page *page);
int hk_user_fill(unsigned long addr, unsigned long size, u64 tag);
int hk_user_check(unsigned long addr, unsigned long size, u64 tag);
unsigned long hk_map(struct kunit *test, unsigned long size,
		     unsigned long prot);
struct hk_notifier *hk_notifier_add(struct kunit *test, unsigned long start,
				    unsigned long size);
int hk_fault(struct hk_notifier *hn, struct hmm_range *range);
void hk_range_init(struct hmm_range *range, unsigned long *pfns,
		   unsigned long start, unsigned long npages,
		   unsigned long default_flags);
int hk_ctx_init(struct kunit *test, unsigned long size, bool notifier);
void hk_ctx_exit(struct kunit *test);
int hk_madvise_hugepage(struct mm_struct *mm, unsigned long addr);
int hk_migrate_setup(struct migrate_vma *args, unsigned long addr,
		     unsigned long *src, unsigned long *dst);

#ifdef CONFIG_DEVICE_PRIVATE
/**
 * struct hk_pgmap - Device-private memory backed by system pages.
 * @pgmap: the MEMORY_DEVICE_PRIVATE pagemap.
 * @backing: the data of device page i, which copy_to_ram() copies from.
 * @copies: number of copy_to_ram() calls.
 * @frees: number of device pages freed.
 */
struct hk_pgmap {
	struct dev_pagemap	pgmap;
	struct page		*backing[HK_MIG_NPAGES];
	atomic_t		copies;
	atomic_t		frees;
};

struct hk_pgmap *hk_pgmap_add(struct kunit *test, void *owner);
void hk_shmem_to_device(struct kunit *test, unsigned long addr,
			struct hk_pgmap *dm, void *owner);
#endif /* CONFIG_DEVICE_PRIVATE */

#endif /* _MM_TESTS_HMM_KUNIT_HELPERS_H */
