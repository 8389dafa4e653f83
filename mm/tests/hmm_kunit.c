// SPDX-License-Identifier: GPL-2.0-only
/*
 * KUnit tests for hmm_range_fault() and the hmm_mirror API.
 *
 * Each case runs in its own kthread; kunit_vm_mmap() gives that thread a
 * private user address space, so the tests can map memory, touch it with
 * copy_to_user()/copy_from_user() like a process would, and check what
 * HMM reports against it.  Data is always checked in both directions: a
 * pattern written through the user mapping is read back through the pfns
 * HMM returned (kmap_local_page()), and the other way round.
 */
#include <kunit/test.h>
#include <linux/anon_inodes.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/file.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/huge_mm.h>
#include <linux/hugetlb.h>
#include <linux/ioport.h>
#include <linux/kthread.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_context.h>
#include <linux/mmu_notifier.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/prandom.h>
#include <linux/random.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/swapops.h>
#include <linux/uaccess.h>
#include <asm/tlbflush.h>

#include "../internal.h"
#include "hmm_kunit_helpers.h"

/* A range nobody touched reads as all-zero entries and stays unpopulated. */
static void hmm_test_snapshot_unpopulated(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_range range;
	struct hk_notifier *hn;
	int pass, i;
	bool ok = true;

	addr = ctx->addr;
	hn = ctx->hn;

	for (pass = 0; pass < 2; pass++) {
		memset(pfns, 0xff, sizeof(pfns));
		hk_range_init(&range, pfns, addr, HK_NPAGES, 0);
		KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
		mutex_unlock(&hn->lock);
		for (i = 0; i < HK_NPAGES; i++)
			KUNIT_EXPECT_EQ_MSG(test, pfns[i], 0UL, "page %d", i);
	}

	/* A page written by the "process" shows up, and only that one. */
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr + 3 * PAGE_SIZE, PAGE_SIZE, 7),
			0);
	hk_range_init(&range, pfns, addr, HK_NPAGES, 0);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if (i != 3) {
			KUNIT_EXPECT_EQ_MSG(test, pfns[i], 0UL, "page %d", i);
			continue;
		}
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + 3 * PAGE_SIZE, 7));
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);
}

/*
 * A read fault of anonymous memory maps the shared zero page read-only;
 * asking for write afterwards must break it into private pages.
 */
static void hmm_test_fault_read_zero_page(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_range range;
	struct hk_notifier *hn;
	int i;
	bool ok = true;

	addr = ctx->addr;
	hn = ctx->hn;

	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) != HMM_PFN_VALID) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_TRUE(test,
				  is_zero_pfn(page_to_pfn(hmm_pfn_to_page(pfns[i]))));
		KUNIT_EXPECT_TRUE(test, hk_page_is_zero(hmm_pfn_to_page(pfns[i])));
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);

	hk_range_init(&range, pfns, addr, HK_NPAGES,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_FALSE(test,
				   is_zero_pfn(page_to_pfn(hmm_pfn_to_page(pfns[i]))));
		KUNIT_EXPECT_EQ(test, hmm_pfn_to_map_order(pfns[i]), 0U);
		hk_fill_page(hmm_pfn_to_page(pfns[i]), addr + i * PAGE_SIZE, 1);
	}
	for (i = 1; i < HK_NPAGES; i++)
		KUNIT_EXPECT_NE(test, pfns[i] & ~HMM_PFN_FLAGS,
				pfns[0] & ~HMM_PFN_FLAGS);
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);

	/* What the "device" wrote is what the process reads. */
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_SIZE, 1), 0);
}

/* Write fault of fresh memory, device -> CPU and CPU -> device data. */
static void hmm_test_fault_write_data(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_range range;
	struct hk_notifier *hn;
	int i;
	bool ok = true;

	addr = ctx->addr;
	hn = ctx->hn;

	hk_range_init(&range, pfns, addr, HK_NPAGES,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_EQ(test, hmm_pfn_to_phys(pfns[i]),
				PFN_PHYS(page_to_pfn(hmm_pfn_to_page(pfns[i]))));
		hk_fill_page(hmm_pfn_to_page(pfns[i]), addr + i * PAGE_SIZE, 2);
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_SIZE, 2), 0);

	/* Now the CPU writes and a plain snapshot must see it. */
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 3), 0);
	hk_range_init(&range, pfns, addr, HK_NPAGES, 0);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + i * PAGE_SIZE, 3));
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);
}

/*
 * Per-page requests through pfn_flags_mask: only the pages that ask are
 * faulted; the others are reported as they are.
 */
static void hmm_test_per_page_request(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_range range;
	struct hk_notifier *hn;
	int i;

	addr = ctx->addr;
	hn = ctx->hn;

	hk_range_init(&range, pfns, addr, HK_NPAGES, 0);
	range.pfn_flags_mask = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
	for (i = 0; i < HK_NPAGES; i++) {
		if (i % 4 == 1)
			pfns[i] = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
		else if (i % 4 == 2)
			pfns[i] = HMM_PFN_REQ_FAULT;
		else
			pfns[i] = 0;
	}
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		unsigned long want = 0;

		if (i % 4 == 1)
			want = HMM_PFN_VALID | HMM_PFN_WRITE;
		else if (i % 4 == 2)
			want = HMM_PFN_VALID;
		KUNIT_EXPECT_EQ_MSG(test, pfns[i] & HK_PFN_ACCESS, want,
				    "page %d", i);
		if (i % 4 == 1)
			hk_fill_page(hmm_pfn_to_page(pfns[i]),
				     addr + i * PAGE_SIZE, 4);
	}
	mutex_unlock(&hn->lock);

	for (i = 1; i < HK_NPAGES; i += 4)
		KUNIT_EXPECT_EQ(test, hk_user_check(addr + i * PAGE_SIZE,
						    PAGE_SIZE, 4), 0);
}

/* PROT_READ memory: reads are fine, a write request is -EPERM. */
static void hmm_test_readonly_vma(struct kunit *test)
{
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_range range;
	struct hk_notifier *hn;
	int i;
	bool ok = true;

	addr = hk_map(test, HK_SIZE, PROT_READ);
	hn = hk_notifier_add(test, addr, HK_SIZE);

	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) != HMM_PFN_VALID) {
			ok = false;
			break;
		}
		/* Fresh anonymous memory reads as zeroes, through the pfn. */
		KUNIT_EXPECT_TRUE(test, hk_page_is_zero(hmm_pfn_to_page(pfns[i])));
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);

	hk_range_init(&range, pfns, addr, HK_NPAGES,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_EXPECT_EQ(test, hk_fault(hn, &range), -EPERM);
	KUNIT_EXPECT_FALSE(test, mutex_is_locked(&hn->lock));

	/* One page asking for write is enough to fail the whole call. */
	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	range.pfn_flags_mask = HMM_PFN_REQ_WRITE;
	memset(pfns, 0, sizeof(pfns));
	pfns[HK_NPAGES - 1] = HMM_PFN_REQ_WRITE;
	KUNIT_EXPECT_EQ(test, hk_fault(hn, &range), -EPERM);
}

/* A PMD-mapped THP is reported with its order and consecutive pfns. */
static void hmm_test_thp_order(struct kunit *test)
{
#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST)
	unsigned long npages = HPAGE_PMD_NR, addr, thp, i, first;
	struct hmm_range range;
	struct hk_notifier *hn;
	unsigned long *pfns;
	struct folio *folio;
	bool ok = true;

	if (!has_transparent_hugepage())
		kunit_skip(test, "CPU has no PMD-sized transparent huge pages");

	pfns = kunit_kcalloc(test, npages, sizeof(*pfns), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, pfns);
	addr = hk_map(test, 2 * HPAGE_PMD_SIZE, PROT_READ | PROT_WRITE);
	thp = ALIGN(addr, HPAGE_PMD_SIZE);
	KUNIT_ASSERT_EQ(test, hk_madvise_hugepage(current->mm, thp), 0);
	hn = hk_notifier_add(test, addr, 2 * HPAGE_PMD_SIZE);

	hk_range_init(&range, pfns, thp, npages,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	folio = page_folio(hmm_pfn_to_page(pfns[0]));
	if (folio_order(folio) != HPAGE_PMD_ORDER) {
		mutex_unlock(&hn->lock);
		kunit_skip(test, "kernel gave no THP (sysfs policy or allocation)");
	}
	first = pfns[0] & ~HMM_PFN_FLAGS;
	KUNIT_EXPECT_EQ(test, first % HPAGE_PMD_NR, 0UL);
	for (i = 0; i < npages; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_EQ(test, hmm_pfn_to_map_order(pfns[i]),
				(unsigned int)HPAGE_PMD_ORDER);
		KUNIT_EXPECT_EQ(test, pfns[i] & ~HMM_PFN_FLAGS, first + i);
		if (hmm_pfn_to_map_order(pfns[i]) != HPAGE_PMD_ORDER ||
		    (pfns[i] & ~HMM_PFN_FLAGS) != first + i) {
			ok = false;
			break;
		}
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);

	/* Data written by the CPU through the huge mapping, read by pfn. */
	KUNIT_ASSERT_EQ(test, hk_user_fill(thp, HPAGE_PMD_SIZE, 5), 0);

	/* A sub-range starting in the middle still reports the huge order. */
	hk_range_init(&range, pfns, thp + 17 * PAGE_SIZE, 8, 0);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < 8; i++) {
		KUNIT_EXPECT_EQ(test, pfns[i] & ~HMM_PFN_FLAGS, first + 17 + i);
		KUNIT_EXPECT_EQ(test, hmm_pfn_to_map_order(pfns[i]),
				(unsigned int)HPAGE_PMD_ORDER);
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      thp + (17 + i) * PAGE_SIZE,
						      5));
	}
	mutex_unlock(&hn->lock);
#else
	kunit_skip(test, "setting VM_HUGEPAGE needs the test built in");
#endif
}

#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST)
/*
 * Per-page requests over a huge leaf.  Every page asks for read, page 1
 * also for write; the input entries carry a stale pfn, as an array reused
 * from an earlier call would, which pfn_flags_mask makes the call ignore.
 */
#define HK_STALE_PFN	0x5a5aUL

static void hk_leaf_request(struct hmm_range *range, unsigned long *pfns,
			    unsigned long start, unsigned long npages)
{
	unsigned long i;

	hk_range_init(range, pfns, start, npages, 0);
	range->pfn_flags_mask = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
	for (i = 0; i < npages; i++)
		pfns[i] = HK_STALE_PFN | HMM_PFN_REQ_FAULT;
	pfns[1] |= HMM_PFN_REQ_WRITE;
}

/*
 * Every entry is output: the leaf's pfns in order, with its order, and
 * page 1 writable.  Page 0 is reported before page 1 is faulted, so its
 * write bit may be either.  Returns whether all pfns matched.
 */
static bool hk_expect_leaf(struct kunit *test, const unsigned long *pfns,
			   unsigned long npages, unsigned long first,
			   unsigned int order)
{
	bool ok = true;
	unsigned long i;

	for (i = 0; i < npages; i++) {
		ok &= (pfns[i] & ~HMM_PFN_FLAGS) == first + i;
		KUNIT_EXPECT_EQ_MSG(test, pfns[i] & ~HMM_PFN_FLAGS, first + i,
				    "page %lu: entry %#lx", i, pfns[i]);
		KUNIT_EXPECT_TRUE_MSG(test, pfns[i] & HMM_PFN_VALID,
				      "page %lu: entry %#lx", i, pfns[i]);
		KUNIT_EXPECT_EQ_MSG(test, hmm_pfn_to_map_order(pfns[i]), order,
				    "page %lu: entry %#lx", i, pfns[i]);
	}
	KUNIT_EXPECT_TRUE(test, pfns[1] & HMM_PFN_WRITE);
	return ok;
}
#endif

#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST) && defined(CONFIG_HUGETLBFS)
/* The smallest huge page size that has a free page now, or NULL. */
static struct hstate *hk_free_hstate(void)
{
	struct hstate *h, *best = NULL;

	for_each_hstate(h)
		if (READ_ONCE(h->free_huge_pages) &&
		    (!best || huge_page_order(h) < huge_page_order(best)))
			best = h;
	return best;
}
#endif

/*
 * A private hugetlb page that was only read is mapped read-only, and a
 * write fault then reuses it in place (hugetlb_wp(), no invalidation), so
 * the snapshot stays current across the fault.  A request asking write
 * on page 1 only must still return page 0, which needed no fault, as
 * output: the leaf's pfn, not the caller's input.
 */
static void hmm_test_hugetlb_per_page(struct kunit *test)
{
#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST) && defined(CONFIG_HUGETLBFS)
	unsigned long pfns[HK_NPAGES], addr, first;
	struct hmm_range range;
	struct hk_notifier *hn;
	struct file *file;
	struct hstate *h;
	bool ok;

	/* KUnit runs before init: the 2 MiB pool may still be empty. */
	h = hk_free_hstate();
	if (!h)
		kunit_skip(test, "no free hugetlb page");
	file = hugetlb_file_setup(HUGETLB_ANON_FILE, huge_page_size(h),
				  VM_NORESERVE, HUGETLB_ANONHUGE_INODE,
				  huge_page_shift(h));
	KUNIT_ASSERT_FALSE(test, IS_ERR(file));
	addr = kunit_vm_mmap(test, file, 0, huge_page_size(h),
			     PROT_READ | PROT_WRITE, MAP_PRIVATE, 0);
	fput(file);
	KUNIT_ASSERT_FALSE_MSG(test, !addr || IS_ERR_VALUE(addr),
			       "vm_mmap failed: %ld", (long)addr);
	hn = hk_notifier_add(test, addr, HK_SIZE);

	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_EQ(test, pfns[0] & HK_PFN_ACCESS, HMM_PFN_VALID);
	first = pfns[0] & ~HMM_PFN_FLAGS;

	hk_leaf_request(&range, pfns, addr, HK_NPAGES);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	ok = hk_expect_leaf(test, pfns, HK_NPAGES, first, huge_page_order(h));
	if (ok) {
		KUNIT_EXPECT_TRUE(test,
				  hk_page_is_zero(hmm_pfn_to_page(pfns[0])));
		hk_fill_page(hmm_pfn_to_page(pfns[1]), addr + PAGE_SIZE, 35);
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE(test, ok);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr + PAGE_SIZE, PAGE_SIZE, 35),
			0);
#else
	kunit_skip(test, "hugetlb files need the test built in");
#endif
}

#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST) && defined(CONFIG_TRANSPARENT_HUGEPAGE)
/*
 * Write-protect the huge PMD at @addr as fork() does the parent's.  Once
 * the child is gone the THP is the parent's alone again, and its next
 * write fault reuses it in place, without an invalidation; that is the
 * state this leaves, without a second process.
 */
static int hk_wrprotect_pmd(struct mm_struct *mm, unsigned long addr)
{
	struct vm_area_struct *vma;
	int ret = -ENOENT;
	spinlock_t *ptl;	/* of the PMD */
	pmd_t *pmdp;

	mmap_write_lock(mm);
	vma = vma_lookup(mm, addr);
	pmdp = vma ? mm_find_pmd(mm, addr) : NULL;
	if (pmdp) {
		ptl = pmd_lock(mm, pmdp);
		if (pmd_trans_huge(*pmdp)) {
			pmdp_set_wrprotect(mm, addr, pmdp);
			ret = 0;
		}
		spin_unlock(ptl);
		flush_tlb_range(vma, addr, addr + HPAGE_PMD_SIZE);
	}
	mmap_write_unlock(mm);
	return ret;
}
#endif

/* The THP version of hmm_test_hugetlb_per_page(), after a fork. */
static void hmm_test_thp_per_page_after_fork(struct kunit *test)
{
#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST) && defined(CONFIG_TRANSPARENT_HUGEPAGE)
	unsigned long pfns[HK_NPAGES], addr, thp, first;
	struct hmm_range range;
	struct hk_notifier *hn;
	bool ok;

	if (!has_transparent_hugepage())
		kunit_skip(test, "CPU has no PMD-sized transparent huge pages");
	addr = hk_map(test, 2 * HPAGE_PMD_SIZE, PROT_READ | PROT_WRITE);
	thp = ALIGN(addr, HPAGE_PMD_SIZE);
	KUNIT_ASSERT_EQ(test, hk_madvise_hugepage(current->mm, thp), 0);
	hn = hk_notifier_add(test, thp, HK_SIZE);
	KUNIT_ASSERT_EQ(test, hk_user_fill(thp, HPAGE_PMD_SIZE, 36), 0);

	hk_range_init(&range, pfns, thp, HK_NPAGES, 0);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	mutex_unlock(&hn->lock);
	if (!(pfns[0] & HMM_PFN_VALID) ||
	    hmm_pfn_to_map_order(pfns[0]) != HPAGE_PMD_ORDER)
		kunit_skip(test, "kernel gave no THP (sysfs policy or allocation)");
	first = pfns[0] & ~HMM_PFN_FLAGS;
	KUNIT_ASSERT_EQ(test, hk_wrprotect_pmd(current->mm, thp), 0);

	hk_leaf_request(&range, pfns, thp, HK_NPAGES);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	ok = hk_expect_leaf(test, pfns, HK_NPAGES, first, HPAGE_PMD_ORDER);
	if (ok) {
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[0]),
						      thp, 36));
		hk_fill_page(hmm_pfn_to_page(pfns[1]), thp + PAGE_SIZE, 37);
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE(test, ok);
	KUNIT_EXPECT_EQ(test, hk_user_check(thp, PAGE_SIZE, 36), 0);
	KUNIT_EXPECT_EQ(test, hk_user_check(thp + PAGE_SIZE, PAGE_SIZE, 37),
			0);
#else
	kunit_skip(test, "write-protecting a THP needs the test built in");
#endif
}

#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST) && defined(CONFIG_DEVICE_PRIVATE)
#define HK_DEV_NPAGES	4

/*
 * Device-private memory whose migrate_to_ram() counts its calls and does
 * not migrate, as amdkfd's does for a CPU fault raised from inside its
 * own GPU fault handling: the core then retries until it gives up.
 */
struct hk_devmem {
	struct dev_pagemap	pgmap;
	struct page		*backing[HK_DEV_NPAGES];
	atomic_t		to_ram_calls;
};

static void hk_devmem_page_free(struct page *page)
{
}

static vm_fault_t hk_devmem_migrate_to_ram(struct vm_fault *vmf)
{
	struct hk_devmem *dm = container_of(vmf->page->pgmap,
					    struct hk_devmem, pgmap);

	atomic_inc(&dm->to_ram_calls);
	return 0;
}

static const struct dev_pagemap_ops hk_devmem_ops = {
	.page_free	= hk_devmem_page_free,
	.migrate_to_ram	= hk_devmem_migrate_to_ram,
};

/* Runs after the test's mm, and so every mapping of the pages, is gone. */
static void hk_devmem_remove(void *data)
{
	struct hk_devmem *dm = data;
	unsigned int i;

	memunmap_pages(&dm->pgmap);
	release_mem_region(dm->pgmap.range.start, range_len(&dm->pgmap.range));
	for (i = 0; i < HK_DEV_NPAGES; i++)
		if (dm->backing[i])
			__free_page(dm->backing[i]);
}

static struct hk_devmem *hk_devmem_add(struct kunit *test, void *owner)
{
	struct hk_devmem *dm;
	struct resource *res;
	unsigned int i;
	void *ptr;

	dm = kunit_kzalloc(test, sizeof(*dm), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, dm);
	res = request_free_mem_region(&iomem_resource, SZ_2M, "hk_devmem");
	if (IS_ERR(res))
		kunit_skip(test, "no free physical range for device memory");
	for (i = 0; i < HK_DEV_NPAGES; i++)
		dm->backing[i] = alloc_page(GFP_KERNEL);
	dm->pgmap.type = MEMORY_DEVICE_PRIVATE;
	dm->pgmap.range.start = res->start;
	dm->pgmap.range.end = res->end;
	dm->pgmap.nr_range = 1;
	dm->pgmap.ops = &hk_devmem_ops;
	dm->pgmap.owner = owner;
	ptr = memremap_pages(&dm->pgmap, NUMA_NO_NODE);
	if (IS_ERR(ptr)) {
		release_mem_region(res->start, resource_size(res));
		for (i = 0; i < HK_DEV_NPAGES; i++)
			if (dm->backing[i])
				__free_page(dm->backing[i]);
		KUNIT_FAIL_AND_ABORT(test, "memremap_pages: %ld",
				     PTR_ERR(ptr));
	}
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, hk_devmem_remove,
							dm), 0);
	for (i = 0; i < HK_DEV_NPAGES; i++)
		KUNIT_ASSERT_NOT_NULL(test, dm->backing[i]);
	return dm;
}

/* Move the HK_DEV_NPAGES pages at @addr into @dm, data and rights kept. */
static int hk_to_device(struct hk_devmem *dm, unsigned long addr)
{
	unsigned long src[HK_DEV_NPAGES], dst[HK_DEV_NPAGES], i;
	struct migrate_vma args = {
		.start		= addr,
		.end		= addr + HK_DEV_NPAGES * PAGE_SIZE,
		.src		= src,
		.dst		= dst,
		.pgmap_owner	= dm->pgmap.owner,
		.flags		= MIGRATE_VMA_SELECT_SYSTEM,
	};
	struct mm_struct *mm = current->mm;
	struct page *spage, *dpage;
	int ret;

	mmap_read_lock(mm);
	args.vma = vma_lookup(mm, addr);
	ret = args.vma ? migrate_vma_setup(&args) : -EINVAL;
	if (ret)
		goto out_unlock;
	for (i = 0; i < HK_DEV_NPAGES; i++) {
		spage = migrate_pfn_to_page(src[i]);
		dst[i] = 0;
		if (!spage || !(src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		dpage = pfn_to_page(PHYS_PFN(dm->pgmap.range.start) + i);
		copy_highpage(dm->backing[i], spage);
		zone_device_page_init(dpage);
		dst[i] = migrate_pfn(page_to_pfn(dpage)) |
			 (src[i] & MIGRATE_PFN_WRITE);
	}
	migrate_vma_pages(&args);
	for (i = 0; i < HK_DEV_NPAGES; i++)
		if (!(src[i] & MIGRATE_PFN_MIGRATE))
			ret = -EBUSY;
	migrate_vma_finalize(&args);
out_unlock:
	mmap_read_unlock(mm);
	return ret;
}

/*
 * Make the device-private entry at @addr read-only, as fork() does in the
 * parent (copy_nonpresent_pte()): the state every fork leaves behind.
 */
static int hk_wrprotect_device_pte(struct mm_struct *mm, unsigned long addr)
{
	spinlock_t *ptl;	/* of the PTE table */
	swp_entry_t swp;
	int ret = -ENOENT;
	pte_t *ptep, pte;
	pmd_t *pmdp;

	mmap_write_lock(mm);
	pmdp = mm_find_pmd(mm, addr);
	ptep = pmdp ? pte_offset_map_lock(mm, pmdp, addr, &ptl) : NULL;
	if (ptep) {
		pte = ptep_get(ptep);
		swp = pte_to_swp_entry(pte);
		if (is_swap_pte(pte) && is_device_private_entry(swp)) {
			swp = make_readable_device_private_entry(swp_offset(swp));
			set_pte_at(mm, addr, ptep, swp_entry_to_pte(swp));
			ret = 0;
		}
		pte_unmap_unlock(ptep, ptl);
	}
	mmap_write_unlock(mm);
	return ret;
}

/* One hmm_range_fault() call, no retry: what a single device fault sees. */
static int hk_fault_once(struct hk_notifier *hn, struct hmm_range *range)
{
	struct mm_struct *mm = hn->notifier.mm;
	int ret;

	range->notifier = &hn->notifier;
	range->notifier_seq = mmu_interval_read_begin(&hn->notifier);
	mmap_read_lock(mm);
	ret = hmm_range_fault(range);
	mmap_read_unlock(mm);
	return ret;
}

static void hk_expect_device_ro(struct kunit *test, const unsigned long *pfns,
				unsigned long dpfn)
{
	unsigned long i;

	for (i = 0; i < HK_DEV_NPAGES; i++) {
		KUNIT_EXPECT_EQ_MSG(test, pfns[i] & HK_PFN_ACCESS,
				    HMM_PFN_VALID, "page %lu", i);
		KUNIT_EXPECT_EQ_MSG(test, pfns[i] & ~HMM_PFN_FLAGS, dpfn + i,
				    "page %lu", i);
	}
}
#endif

/*
 * The owner's own read-only device-private pages (the parent's after
 * fork()) are reported VALID without WRITE even on a write request, as
 * in 6.12: faulting them would call the owner's migrate_to_ram() from
 * inside the owner's own device fault.  The driver decides what to do.
 * Anybody else's device-private page is still faulted.
 */
static void hmm_test_device_private_readonly(struct kunit *test)
{
#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST) && defined(CONFIG_DEVICE_PRIVATE)
	static int owner;
	unsigned long pfns[HK_DEV_NPAGES], size, addr, dpfn, i;
	struct hmm_range range;
	struct hk_notifier *hn;
	struct hk_devmem *dm;

	dm = hk_devmem_add(test, &owner);
	dpfn = PHYS_PFN(dm->pgmap.range.start);
	size = HK_DEV_NPAGES * PAGE_SIZE;
	addr = hk_map(test, size, PROT_READ | PROT_WRITE);
	hn = hk_notifier_add(test, addr, size);
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, size, 41), 0);
	KUNIT_ASSERT_EQ(test, hk_to_device(dm, addr), 0);
	for (i = 0; i < HK_DEV_NPAGES; i++) {
		KUNIT_EXPECT_TRUE(test, hk_check_page(dm->backing[i],
						      addr + i * PAGE_SIZE, 41));
		KUNIT_ASSERT_EQ(test, hk_wrprotect_device_pte(current->mm,
							      addr + i * PAGE_SIZE),
				0);
	}

	hk_range_init(&range, pfns, addr, HK_DEV_NPAGES,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	range.dev_private_owner = &owner;
	KUNIT_EXPECT_EQ(test, hk_fault_once(hn, &range), 0);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->to_ram_calls), 0);
	hk_expect_device_ro(test, pfns, dpfn);

	/* The same through a per-page request for write on page 2. */
	hk_range_init(&range, pfns, addr, HK_DEV_NPAGES, 0);
	range.pfn_flags_mask = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
	range.dev_private_owner = &owner;
	for (i = 0; i < HK_DEV_NPAGES; i++)
		pfns[i] = HMM_PFN_REQ_FAULT;
	pfns[2] |= HMM_PFN_REQ_WRITE;
	KUNIT_EXPECT_EQ(test, hk_fault_once(hn, &range), 0);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->to_ram_calls), 0);
	hk_expect_device_ro(test, pfns, dpfn);

	/* Not the owner: even a read faults, and this device refuses. */
	hk_range_init(&range, pfns, addr, HK_DEV_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_EXPECT_EQ(test, hk_fault_once(hn, &range), -EBUSY);
	KUNIT_EXPECT_GT(test, atomic_read(&dm->to_ram_calls), 0);
#else
	kunit_skip(test, "needs CONFIG_DEVICE_PRIVATE and the test built in");
#endif
}

/* Addresses without a VMA: errors in a snapshot, -EFAULT when faulting. */
static void hmm_test_no_vma(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_range range;
	struct hk_notifier *hn;
	int i;
	bool ok = true;

	addr = ctx->addr;
	hn = ctx->hn;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 6), 0);
	KUNIT_ASSERT_EQ(test, vm_munmap(addr + 4 * PAGE_SIZE, 8 * PAGE_SIZE),
			0);

	hk_range_init(&range, pfns, addr, HK_NPAGES, 0);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if (i >= 4 && i < 12) {
			KUNIT_EXPECT_EQ(test, pfns[i], (unsigned long)HMM_PFN_ERROR);
			continue;
		}
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + i * PAGE_SIZE, 6));
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);

	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_EXPECT_EQ(test, hk_fault(hn, &range), -EFAULT);
	KUNIT_EXPECT_FALSE(test, mutex_is_locked(&hn->lock));
}

static int hk_pfnmap_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct page *page = file->private_data;

	if (vma->vm_end - vma->vm_start != PAGE_SIZE || vma->vm_pgoff)
		return -EINVAL;
	return remap_pfn_range(vma, vma->vm_start, page_to_pfn(page),
			       PAGE_SIZE, vma->vm_page_prot);
}

static const struct file_operations hk_pfnmap_fops = {
	.owner	= THIS_MODULE,
	.mmap	= hk_pfnmap_mmap,
};

/* A VM_PFNMAP mapping of a kernel page must never be handed out. */
static void hmm_test_pfnmap_refused(struct kunit *test)
{
	unsigned long pfns[3], addr, before;
	struct hmm_range range;
	u64 word;
	struct hk_notifier *hn;
	struct page *page;
	struct file *file;
	int i;

	page = alloc_page(GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, page);
	hk_fill_page(page, 0, 8);
	file = anon_inode_getfile("hmm_kunit_pfnmap", &hk_pfnmap_fops, page,
				  O_RDWR);
	if (IS_ERR(file)) {
		__free_page(page);
		KUNIT_FAIL(test, "anon_inode_getfile: %ld", PTR_ERR(file));
		return;
	}

	/* Anonymous pages on both sides of the PFN map. */
	before = hk_map(test, 3 * PAGE_SIZE, PROT_READ | PROT_WRITE);
	addr = vm_mmap(file, before + PAGE_SIZE, PAGE_SIZE,
		       PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, 0);
	fput(file);
	if (IS_ERR_VALUE(addr)) {
		__free_page(page);
		KUNIT_FAIL(test, "vm_mmap of the pfn map: %ld", (long)addr);
		return;
	}
	KUNIT_EXPECT_EQ(test, addr, before + PAGE_SIZE);
	KUNIT_EXPECT_EQ(test, hk_user_fill(before, PAGE_SIZE, 9), 0);
	KUNIT_EXPECT_EQ(test, hk_user_fill(before + 2 * PAGE_SIZE, PAGE_SIZE,
					   9), 0);
	/*
	 * The mapping is real: the CPU sees the kernel page through it, and
	 * what it writes there lands in the kernel page.
	 */
	KUNIT_EXPECT_EQ(test, get_user(word, (u64 __user *)addr +
				       PAGE_SIZE / sizeof(u64) - 1), 0);
	KUNIT_EXPECT_EQ(test, word,
			hk_pattern(0, PAGE_SIZE / sizeof(u64) - 1, 8));
	KUNIT_EXPECT_EQ(test, hk_user_fill(addr, PAGE_SIZE, 16), 0);
	KUNIT_EXPECT_TRUE(test, hk_check_page(page, addr, 16));

	hn = hk_notifier_add(test, before, 3 * PAGE_SIZE);
	hk_range_init(&range, pfns, before, 3, 0);
	KUNIT_EXPECT_EQ(test, hk_fault(hn, &range), 0);
	if (mutex_is_locked(&hn->lock)) {
		KUNIT_EXPECT_EQ(test, pfns[1], (unsigned long)HMM_PFN_ERROR);
		for (i = 0; i < 3; i += 2)
			KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
							      before + i * PAGE_SIZE,
							      9));
		mutex_unlock(&hn->lock);
	}

	hk_range_init(&range, pfns, before, 3, HMM_PFN_REQ_FAULT);
	KUNIT_EXPECT_EQ(test, hk_fault(hn, &range), -EFAULT);

	/* Asking only for the neighbours works. */
	hk_range_init(&range, pfns, before, 3, 0);
	range.pfn_flags_mask = HMM_PFN_REQ_FAULT;
	pfns[0] = HMM_PFN_REQ_FAULT;
	pfns[1] = 0;
	pfns[2] = HMM_PFN_REQ_FAULT;
	KUNIT_EXPECT_EQ(test, hk_fault(hn, &range), 0);
	if (mutex_is_locked(&hn->lock)) {
		KUNIT_EXPECT_EQ(test, pfns[1], (unsigned long)HMM_PFN_ERROR);
		mutex_unlock(&hn->lock);
	}

	vm_munmap(addr, PAGE_SIZE);
	__free_page(page);
}

/* A malformed range of the test's mapping: what, start and end offsets. */
struct hk_bad_range {
	const char	*what;
	unsigned long	start, end;
};

static const struct hk_bad_range hk_bad_ranges[] = {
	{ "start > end", 4 * PAGE_SIZE, 2 * PAGE_SIZE },
	{ "empty", 2 * PAGE_SIZE, 2 * PAGE_SIZE },
	{ "unaligned start", 1, 2 * PAGE_SIZE },
	{ "unaligned end", 0, PAGE_SIZE + 8 },
	{ "outside notifier", 0, (HK_NPAGES + 1) * PAGE_SIZE },
};

static void hk_bad_range_desc(const struct hk_bad_range *r, char *desc)
{
	strscpy(desc, r->what, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(hk_bad_range, hk_bad_ranges, hk_bad_range_desc);

/* Each malformed range gets -EINVAL, not a warning or an oops. */
static void hmm_test_bad_range(struct kunit *test)
{
	const struct hk_bad_range *r = test->param_value;
	struct hk_ctx *ctx = test->priv;
	struct mm_struct *mm = current->mm;
	unsigned long pfns[HK_NPAGES];
	struct hmm_range range;
	int ret;

	hk_range_init(&range, pfns, 0, 0, HMM_PFN_REQ_FAULT);
	range.start = ctx->addr + r->start;
	range.end = ctx->addr + r->end;
	range.notifier = &ctx->hn->notifier;
	range.notifier_seq = mmu_interval_read_begin(&ctx->hn->notifier);
	mmap_read_lock(mm);
	ret = hmm_range_fault(&range);
	mmap_read_unlock(mm);
	KUNIT_EXPECT_EQ_MSG(test, ret, -EINVAL, "%s", r->what);
}

/*
 * Ranges beyond TASK_SIZE or wrapping around, and requests without a
 * notifier or pfn array, get -EINVAL too.
 */
static void hmm_test_bad_ranges(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES], addr, top;
	struct hmm_range range;
	struct hk_notifier *hn, *whole;
	struct mm_struct *mm;

	addr = ctx->addr;
	mm = current->mm;
	hn = ctx->hn;

	/* Beyond TASK_SIZE and wrapping around, with a notifier that spans. */
	whole = hk_notifier_add(test, 0, ULONG_MAX);
	top = mm->task_size;
	hk_range_init(&range, pfns, top - PAGE_SIZE, 2, HMM_PFN_REQ_FAULT);
	range.notifier = &whole->notifier;
	range.notifier_seq = mmu_interval_read_begin(&whole->notifier);
	mmap_read_lock(mm);
	KUNIT_EXPECT_EQ(test, hmm_range_fault(&range), -EINVAL);
	range.start = PAGE_ALIGN_DOWN(ULONG_MAX);
	range.end = range.start + 2 * PAGE_SIZE;
	KUNIT_EXPECT_EQ(test, hmm_range_fault(&range), -EINVAL);

	/* Missing notifier or pfn array. */
	hk_range_init(&range, pfns, addr, 1, 0);
	KUNIT_EXPECT_EQ(test, hmm_range_fault(&range), -EINVAL);
	range.notifier = &hn->notifier;
	range.hmm_pfns = NULL;
	KUNIT_EXPECT_EQ(test, hmm_range_fault(&range), -EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_range_fault(NULL), -EINVAL);

	/* The last page below TASK_SIZE is a valid (if empty) request. */
	hk_range_init(&range, pfns, top - PAGE_SIZE, 1, 0);
	range.notifier = &whole->notifier;
	range.notifier_seq = mmu_interval_read_begin(&whole->notifier);
	KUNIT_EXPECT_EQ(test, hmm_range_fault(&range), 0);
	KUNIT_EXPECT_EQ(test, pfns[0], (unsigned long)HMM_PFN_ERROR);
	mmap_read_unlock(mm);
}

/*
 * An invalidation between mmu_interval_read_begin() and hmm_range_fault()
 * must make the call fail with -EBUSY; a fresh sequence then succeeds.
 */
static void hmm_test_invalidate_ebusy(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES / 2], addr;
	struct hmm_range range;
	struct hk_notifier *hn;
	struct mm_struct *mm;
	int before, i;

	addr = ctx->addr;
	mm = current->mm;
	hn = ctx->hn;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 10), 0);

	hk_range_init(&range, pfns, addr, HK_NPAGES / 2, HMM_PFN_REQ_FAULT);
	range.notifier = &hn->notifier;
	range.notifier_seq = mmu_interval_read_begin(&hn->notifier);
	before = atomic_read(&hn->invalidations);
	/* Unmapping the other half still invalidates our notifier. */
	KUNIT_ASSERT_EQ(test, vm_munmap(addr + HK_SIZE / 2, HK_SIZE / 2), 0);
	KUNIT_EXPECT_GT(test, atomic_read(&hn->invalidations), before);

	mmap_read_lock(mm);
	KUNIT_EXPECT_EQ(test, hmm_range_fault(&range), -EBUSY);
	mmap_read_unlock(mm);
	KUNIT_EXPECT_TRUE(test, mmu_interval_read_retry(&hn->notifier,
							range.notifier_seq));

	range.notifier_seq = mmu_interval_read_begin(&hn->notifier);
	mmap_read_lock(mm);
	KUNIT_EXPECT_EQ(test, hmm_range_fault(&range), 0);
	mmap_read_unlock(mm);
	mutex_lock(&hn->lock);
	KUNIT_EXPECT_FALSE(test, mmu_interval_read_retry(&hn->notifier,
							 range.notifier_seq));
	for (i = 0; i < HK_NPAGES / 2; i++)
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + i * PAGE_SIZE, 10));
	mutex_unlock(&hn->lock);
}

/* Mirror side: a recording driver. */
struct hk_mirror {
	struct hmm_mirror	mirror;
	struct mutex		lock;	/* "device page table" */
	atomic_t		clock;
	atomic_t		invalidations;
	atomic_t		releases;
	int			release_time;
	int			release_event_time;
	int			events[HMM_UPDATE_RELEASE + 1];
	unsigned long		last_start, last_end;
	bool			registered;
};

static int hk_mirror_invalidate(struct hmm_mirror *mirror,
				const struct hmm_update *update)
{
	struct hk_mirror *hm = container_of(mirror, struct hk_mirror, mirror);

	if (update->blockable)
		mutex_lock(&hm->lock);
	else if (!mutex_trylock(&hm->lock))
		return -EAGAIN;
	atomic_inc(&hm->invalidations);
	if (update->event <= HMM_UPDATE_RELEASE)
		hm->events[update->event]++;
	if (update->event == HMM_UPDATE_RELEASE && !hm->release_event_time)
		hm->release_event_time = atomic_inc_return(&hm->clock);
	hm->last_start = update->start;
	hm->last_end = update->end;
	mutex_unlock(&hm->lock);
	return 0;
}

static void hk_mirror_release(struct hmm_mirror *mirror)
{
	struct hk_mirror *hm = container_of(mirror, struct hk_mirror, mirror);

	atomic_inc(&hm->releases);
	hm->release_time = atomic_inc_return(&hm->clock);
}

static const struct hmm_mirror_ops hk_mirror_ops = {
	.invalidate_range	= hk_mirror_invalidate,
	.release		= hk_mirror_release,
};

static void hk_mirror_cleanup(void *data)
{
	struct hk_mirror *hm = data;

	if (hm->registered)
		hmm_mirror_unregister(&hm->mirror);
	kfree(hm);
}

static struct hk_mirror *hk_mirror_new(struct kunit *test,
				       struct mm_struct *mm)
{
	struct hk_mirror *hm;

	hm = kzalloc(sizeof(*hm), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, hm);
	mutex_init(&hm->lock);
	hm->mirror.ops = &hk_mirror_ops;
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test,
							hk_mirror_cleanup, hm),
			0);
	KUNIT_ASSERT_EQ(test, hmm_mirror_register(&hm->mirror, mm), 0);
	hm->registered = true;
	KUNIT_EXPECT_PTR_EQ(test, hm->mirror.mm, mm);
	return hm;
}

static void hk_mirror_unregister(struct hk_mirror *hm)
{
	hmm_mirror_unregister(&hm->mirror);
	hm->registered = false;
}

/*
 * Register, fault through the mirror, see invalidations with the right
 * event and range, unregister: no callback at all afterwards.
 */
static void hmm_test_mirror_lifecycle(struct kunit *test)
{
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_range range;
	struct hk_mirror *hm;
	int i, count;
	bool ok = true;

	addr = hk_map(test, 2 * HK_SIZE, PROT_READ | PROT_WRITE);
	hm = hk_mirror_new(test, current->mm);
	KUNIT_EXPECT_PTR_EQ(test, hmm_mirror_notifier(&hm->mirror),
			    &hm->mirror.interval);

	hk_range_init(&range, pfns, addr, HK_NPAGES,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_ASSERT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &hm->lock), 0);
	KUNIT_EXPECT_TRUE(test, mutex_is_locked(&hm->lock));
	KUNIT_EXPECT_PTR_EQ(test, range.notifier, &hm->mirror.interval);
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		hk_fill_page(hmm_pfn_to_page(pfns[i]), addr + i * PAGE_SIZE,
			     11);
	}
	mutex_unlock(&hm->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_SIZE, 11), 0);

	/* CPU writes the second half, the mirror reads it. */
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr + HK_SIZE, HK_SIZE, 12), 0);
	hk_range_init(&range, pfns, addr + HK_SIZE, HK_NPAGES,
		      HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &hm->lock), 0);
	for (i = 0; i < HK_NPAGES; i++)
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + HK_SIZE +
						      i * PAGE_SIZE, 12));
	mutex_unlock(&hm->lock);

	count = atomic_read(&hm->invalidations);
	KUNIT_ASSERT_EQ(test, vm_munmap(addr + 2 * PAGE_SIZE, 2 * PAGE_SIZE),
			0);
	KUNIT_EXPECT_GT(test, atomic_read(&hm->invalidations), count);
	KUNIT_EXPECT_GT(test, hm->events[HMM_UPDATE_UNMAP], 0);
	KUNIT_EXPECT_LE(test, hm->last_start, addr + 2 * PAGE_SIZE);
	KUNIT_EXPECT_GE(test, hm->last_end, addr + 4 * PAGE_SIZE);

	/* The unmapped hole now fails a fault through the mirror. */
	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_EXPECT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &hm->lock), -EFAULT);
	KUNIT_EXPECT_FALSE(test, mutex_is_locked(&hm->lock));

	hk_mirror_unregister(hm);
	count = atomic_read(&hm->invalidations);
	KUNIT_EXPECT_EQ(test, vm_munmap(addr, 2 * HK_SIZE), 0);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->invalidations), count);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->releases), 0);
}

/*
 * The mm dies while the mirror is registered: a RELEASE invalidation,
 * then ->release exactly once, faults fail with -EFAULT, and unregister
 * does not call ->release again.
 */
static void hmm_test_mirror_release(struct kunit *test)
{
	unsigned long pfns[HK_NPAGES], addr;
	struct hmm_mirror late = { .ops = &hk_mirror_ops };
	struct hmm_range range;
	struct hk_mirror *hm;
	struct mm_struct *mm;
	int i;

	addr = hk_map(test, HK_SIZE, PROT_READ | PROT_WRITE);
	mm = current->mm;
	hm = hk_mirror_new(test, mm);
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 13), 0);

	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &hm->lock), 0);
	for (i = 0; i < HK_NPAGES; i++)
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + i * PAGE_SIZE, 13));
	mutex_unlock(&hm->lock);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->releases), 0);

	/* "Process exit": drop the only user of the mm. */
	kthread_unuse_mm(mm);
	mmput(mm);

	KUNIT_EXPECT_EQ(test, atomic_read(&hm->releases), 1);
	KUNIT_EXPECT_GT(test, hm->events[HMM_UPDATE_RELEASE], 0);
	KUNIT_EXPECT_GT(test, hm->release_event_time, 0);
	KUNIT_EXPECT_LT(test, hm->release_event_time, hm->release_time);

	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_EXPECT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &hm->lock), -EFAULT);
	KUNIT_EXPECT_FALSE(test, mutex_is_locked(&hm->lock));

	/* A dead mm cannot be mirrored any more. */
	KUNIT_EXPECT_EQ(test, hmm_mirror_register(&late, mm), -EINVAL);

	hk_mirror_unregister(hm);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->releases), 1);
}

/* Bad arguments to the mirror API. */
static void hmm_test_mirror_bad_args(struct kunit *test)
{
	static const struct hmm_mirror_ops no_invalidate = {
		.release = hk_mirror_release,
	};
	struct hmm_mirror mirror = { };
	unsigned long pfns[2], addr;
	struct hmm_range range;
	struct hk_mirror *hm;
	struct mutex lock;	/* stands for a driver lock */

	addr = hk_map(test, HK_SIZE, PROT_READ | PROT_WRITE);
	mutex_init(&lock);

	KUNIT_EXPECT_EQ(test, hmm_mirror_register(&mirror, current->mm),
			-EINVAL);
	mirror.ops = &no_invalidate;
	KUNIT_EXPECT_EQ(test, hmm_mirror_register(&mirror, current->mm),
			-EINVAL);
	mirror.ops = &hk_mirror_ops;
	KUNIT_EXPECT_EQ(test, hmm_mirror_register(&mirror, NULL), -EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_mirror_register(NULL, current->mm),
			-EINVAL);
	/* Unregistering a mirror that never registered is harmless. */
	hmm_mirror_unregister(&mirror);

	hm = hk_mirror_new(test, current->mm);
	hk_range_init(&range, pfns, addr + 1, 1, HMM_PFN_REQ_FAULT);
	KUNIT_EXPECT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &lock), -EINVAL);
	hk_range_init(&range, pfns, current->mm->task_size, 1,
		      HMM_PFN_REQ_FAULT);
	KUNIT_EXPECT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &lock), -EINVAL);
	KUNIT_EXPECT_FALSE(test, mutex_is_locked(&lock));
	KUNIT_EXPECT_EQ(test, hmm_mirror_range_fault(&hm->mirror, NULL,
						     &lock), -EINVAL);

	/* And a good request on the same mirror still works. */
	hk_range_init(&range, pfns, addr, 2,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_ASSERT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &lock), 0);
	hk_fill_page(hmm_pfn_to_page(pfns[1]), addr + PAGE_SIZE, 14);
	mutex_unlock(&lock);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr + PAGE_SIZE, PAGE_SIZE, 14),
			0);
}

/* A thread faulting through a mirror in a loop until it gets an error. */
struct hk_faulter {
	struct hk_mirror	*hm;
	unsigned long		addr;
	atomic_t		rounds;
	int			result;
	bool			bad_data;
	struct completion	done;
};

static int hk_faulter_fn(void *data)
{
	struct hk_faulter *f = data;
	unsigned long pfns[HK_NPAGES];
	struct hmm_range range;
	int ret, i;

	for (;;) {
		hk_range_init(&range, pfns, f->addr, HK_NPAGES,
			      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
		ret = hmm_mirror_range_fault(&f->hm->mirror, &range,
					     &f->hm->lock);
		if (ret)
			break;
		for (i = 0; i < HK_NPAGES; i++) {
			if ((pfns[i] & HK_PFN_ACCESS) !=
			    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
				f->bad_data = true;
				continue;
			}
			hk_fill_page(hmm_pfn_to_page(pfns[i]),
				     f->addr + i * PAGE_SIZE, 15);
		}
		mutex_unlock(&f->hm->lock);
		atomic_inc(&f->rounds);
		cond_resched();
	}
	f->result = ret;
	complete(&f->done);
	return 0;
}

static struct hk_faulter *hk_faulter_start(struct kunit *test,
					   struct hk_mirror *hm,
					   unsigned long addr)
{
	struct hk_faulter *f;
	struct task_struct *task;
	int waited = 0;

	/* Not test-managed: it must outlive us if the thread gets stuck. */
	f = kzalloc(sizeof(*f), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, f);
	f->hm = hm;
	f->addr = addr;
	init_completion(&f->done);
	task = kthread_run(hk_faulter_fn, f, "hmm_kunit_fault");
	if (IS_ERR(task)) {
		kfree(f);
		KUNIT_FAIL_AND_ABORT(test, "kthread_run: %ld", PTR_ERR(task));
	}
	while (atomic_read(&f->rounds) < 3 && waited < HK_TIMEOUT_MS &&
	       !completion_done(&f->done)) {
		usleep_range(5000, 10000);
		waited += 5;
	}
	KUNIT_EXPECT_GE(test, atomic_read(&f->rounds), 3);
	return f;
}

/* Returns the thread's final error, or 1 if it is stuck. */
static int hk_faulter_finish(struct hk_faulter *f)
{
	int ret;

	if (!wait_for_completion_timeout(&f->done,
					 msecs_to_jiffies(HK_TIMEOUT_MS)))
		return 1;	/* leak f: the thread still uses it */
	ret = f->result;
	if (f->bad_data)
		ret = 2;
	kfree(f);
	return ret;
}

/*
 * munmap, then mm exit, while another thread keeps faulting through the
 * mirror: the faulter must see -EFAULT, never stale or missing pages.
 */
static void hmm_test_mirror_fault_vs_teardown(struct kunit *test)
{
	struct hk_faulter *f;
	struct hk_mirror *hm;
	struct mm_struct *mm;
	unsigned long addr;
	u64 word;

	addr = hk_map(test, HK_SIZE, PROT_READ | PROT_WRITE);
	mm = current->mm;
	hm = hk_mirror_new(test, mm);

	f = hk_faulter_start(test, hm, addr);
	/* What the faulting "device" wrote reaches the process. */
	KUNIT_EXPECT_EQ(test, get_user(word, (u64 __user *)addr), 0);
	KUNIT_EXPECT_EQ(test, word, hk_pattern(addr, 0, 15));
	KUNIT_EXPECT_EQ(test, vm_munmap(addr, HK_SIZE), 0);
	KUNIT_EXPECT_EQ(test, hk_faulter_finish(f), -EFAULT);
	KUNIT_EXPECT_GT(test, hm->events[HMM_UPDATE_UNMAP], 0);

	addr = vm_mmap(NULL, 0, HK_SIZE, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, 0);
	KUNIT_ASSERT_FALSE(test, IS_ERR_VALUE(addr));
	f = hk_faulter_start(test, hm, addr);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_SIZE, 15), 0);
	kthread_unuse_mm(mm);
	mmput(mm);
	KUNIT_EXPECT_EQ(test, hk_faulter_finish(f), -EFAULT);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->releases), 1);
	hk_mirror_unregister(hm);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->releases), 1);
}

/*
 * Non-blockable invalidation, as the OOM reaper issues it
 * (mmu_notifier_invalidate_range_start_nonblock(), range flags 0): a
 * driver whose lock is busy must fail it rather than sleep, the core
 * turns that into -EAGAIN for the caller, and nothing of the mirror is
 * torn down. Userspace cannot make the OOM reaper meet a busy driver
 * lock on demand, so the call is made here the way the reaper makes it.
 *
 * The driver lock is held by a helper thread, not by the test thread:
 * the test thread taking the invalidate_range_start lockdep map while
 * holding a lock that invalidation callbacks take would be the inversion
 * lockdep reports.
 */
struct hk_lock_holder {
	struct mutex		*lock;		/* held from locked to release */
	struct completion	locked;
	struct completion	release;
	struct completion	done;
};

static int hk_lock_holder_fn(void *data)
{
	struct hk_lock_holder *h = data;

	mutex_lock(h->lock);
	complete(&h->locked);
	wait_for_completion(&h->release);
	mutex_unlock(h->lock);
	complete(&h->done);
	return 0;
}

/* Start a thread that holds @lock until hk_lock_drop(). */
static void hk_lock_hold(struct kunit *test, struct hk_lock_holder *h,
			 struct mutex *lock)
{
	struct task_struct *t;

	h->lock = lock;
	init_completion(&h->locked);
	init_completion(&h->release);
	init_completion(&h->done);
	t = kthread_run(hk_lock_holder_fn, h, "hk_lock_holder");
	KUNIT_ASSERT_FALSE(test, IS_ERR(t));
	wait_for_completion(&h->locked);
}

static void hk_lock_drop(struct hk_lock_holder *h)
{
	complete(&h->release);
	wait_for_completion(&h->done);
}

/* One non-blockable invalidation of [@start, @end), as the reaper does. */
static int hk_nonblock_invalidate(struct mm_struct *mm, unsigned long start,
				  unsigned long end)
{
	struct mmu_notifier_range r;
	int ret;

	mmu_notifier_range_init(&r, MMU_NOTIFY_UNMAP, 0, mm, start, end);
	mmap_read_lock(mm);
	ret = mmu_notifier_invalidate_range_start_nonblock(&r);
	/* Only a successful start may (and must) be ended. */
	if (!ret)
		mmu_notifier_invalidate_range_end(&r);
	mmap_read_unlock(mm);
	return ret;
}

/*
 * Interval notifier (the raw API): with the driver lock busy the callback
 * returns false and the caller gets -EAGAIN; the sequence is not bumped,
 * so the snapshot the driver took stays valid and the pages it points to
 * still hold the data. With the lock free the same call goes through.
 */
static void hmm_test_nonblock_interval(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long pfns[HK_NPAGES], addr;
	struct hk_lock_holder holder;
	struct hmm_range range;
	struct hk_notifier *hn;
	struct mm_struct *mm;
	int i, inval;
	bool ok = true;

	addr = ctx->addr;
	mm = current->mm;
	hn = ctx->hn;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 40), 0);
	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	mutex_unlock(&hn->lock);
	inval = atomic_read(&hn->invalidations);

	hk_lock_hold(test, &holder, &hn->lock);
	KUNIT_EXPECT_EQ(test, hk_nonblock_invalidate(mm, addr, addr + HK_SIZE),
			-EAGAIN);
	KUNIT_EXPECT_EQ(test, atomic_read(&hn->invalidations), inval);
	hk_lock_drop(&holder);

	mutex_lock(&hn->lock);
	KUNIT_EXPECT_FALSE(test, mmu_interval_read_retry(&hn->notifier,
							 range.notifier_seq));
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HK_PFN_ACCESS) !=
		    (HMM_PFN_VALID | HMM_PFN_WRITE)) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + i * PAGE_SIZE, 40));
	}
	mutex_unlock(&hn->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);

	/* Control: the lock is free, the same call succeeds and counts. */
	KUNIT_EXPECT_EQ(test, hk_nonblock_invalidate(mm, addr, addr + HK_SIZE),
			0);
	KUNIT_EXPECT_EQ(test, atomic_read(&hn->invalidations), inval + 1);
	KUNIT_EXPECT_TRUE(test, mmu_interval_read_retry(&hn->notifier,
							range.notifier_seq));
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_SIZE, 40), 0);
}

/*
 * hmm_mirror: the driver's ->invalidate_range() sees !update->blockable,
 * fails with -EAGAIN, and the caller gets -EAGAIN (no warning from the
 * notifier core). The driver was never told to drop anything, the mirror
 * stays registered and usable, and a later blockable invalidation
 * reaches it as usual.
 */
static void hmm_test_nonblock_mirror(struct kunit *test)
{
	unsigned long pfns[HK_NPAGES], addr;
	struct hk_lock_holder holder;
	int i, inval, unmaps, releases;
	struct hmm_range range;
	struct hk_mirror *hm;
	struct mm_struct *mm;
	bool ok = true;

	addr = hk_map(test, HK_SIZE, PROT_READ | PROT_WRITE);
	mm = current->mm;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 41), 0);
	hm = hk_mirror_new(test, mm);
	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &hm->lock), 0);
	mutex_unlock(&hm->lock);
	inval = atomic_read(&hm->invalidations);
	unmaps = hm->events[HMM_UPDATE_UNMAP];
	releases = atomic_read(&hm->releases);

	hk_lock_hold(test, &holder, &hm->lock);
	KUNIT_EXPECT_EQ(test, hk_nonblock_invalidate(mm, addr, addr + HK_SIZE),
			-EAGAIN);
	hk_lock_drop(&holder);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->invalidations), inval);
	KUNIT_EXPECT_EQ(test, hm->events[HMM_UPDATE_UNMAP], unmaps);
	KUNIT_EXPECT_EQ(test, atomic_read(&hm->releases), releases);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_SIZE, 41), 0);

	/* Still mirrored: a fault through it sees the same data. */
	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hmm_mirror_range_fault(&hm->mirror, &range,
						     &hm->lock), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		if ((pfns[i] & HMM_PFN_VALID) != HMM_PFN_VALID) {
			ok = false;
			break;
		}
		KUNIT_EXPECT_TRUE(test, hk_check_page(hmm_pfn_to_page(pfns[i]),
						      addr + i * PAGE_SIZE, 41));
	}
	mutex_unlock(&hm->lock);
	KUNIT_ASSERT_TRUE_MSG(test, ok, "entry %#lx", pfns[i]);

	/* A blockable invalidation (munmap) reaches the driver. */
	KUNIT_ASSERT_EQ(test, vm_munmap(addr, HK_SIZE), 0);
	KUNIT_EXPECT_GT(test, atomic_read(&hm->invalidations), inval);
	KUNIT_EXPECT_GT(test, hm->events[HMM_UPDATE_UNMAP], unmaps);
}

static struct kunit_case hmm_test_cases[] = {
	KUNIT_CASE(hmm_test_snapshot_unpopulated),
	KUNIT_CASE(hmm_test_fault_read_zero_page),
	KUNIT_CASE(hmm_test_fault_write_data),
	KUNIT_CASE(hmm_test_per_page_request),
	KUNIT_CASE(hmm_test_readonly_vma),
	KUNIT_CASE(hmm_test_thp_order),
	KUNIT_CASE(hmm_test_hugetlb_per_page),
	KUNIT_CASE(hmm_test_thp_per_page_after_fork),
	KUNIT_CASE(hmm_test_device_private_readonly),
	KUNIT_CASE(hmm_test_no_vma),
	KUNIT_CASE(hmm_test_pfnmap_refused),
	KUNIT_CASE_PARAM(hmm_test_bad_range, hk_bad_range_gen_params),
	KUNIT_CASE(hmm_test_bad_ranges),
	KUNIT_CASE(hmm_test_invalidate_ebusy),
	KUNIT_CASE(hmm_test_mirror_lifecycle),
	KUNIT_CASE(hmm_test_mirror_release),
	KUNIT_CASE(hmm_test_mirror_bad_args),
	KUNIT_CASE(hmm_test_mirror_fault_vs_teardown),
	KUNIT_CASE(hmm_test_nonblock_interval),
	KUNIT_CASE(hmm_test_nonblock_mirror),
	{}
};

static int hmm_test_init(struct kunit *test)
{
	return hk_ctx_init(test, HK_SIZE, true);
}

static struct kunit_suite hmm_test_suite = {
	.name = "hmm",
	.init = hmm_test_init,
	.exit = hk_ctx_exit,
	.test_cases = hmm_test_cases,
};

kunit_test_suite(hmm_test_suite);

/* ---------------------------------------------------------------------
 * Fuzzing the exported API: hmm_range_fault() and hmm_mirror_*() get
 * random, mostly hostile arguments over a layout of known pages, and every
 * return value and every returned entry is checked against a model of
 * that layout.  The seed is printed; hmm_kunit.fuzz_seed=N on the kernel
 * command line replays a run.
 */

static ulong fuzz_seed;
module_param(fuzz_seed, ulong, 0444);
MODULE_PARM_DESC(fuzz_seed, "Seed of the hmm_fuzz KUnit suite (0: random)");

#define HK_FUZZ_PAGES	64
#define HK_FUZZ_ITERS	4000
#define HK_FUZZ_REQ		(HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)

/* What each page of the layout is; see hk_fuzz_layout_map(). */
enum hk_fuzz_kind { HK_FUZZ_RW, HK_FUZZ_NONE, HK_FUZZ_RO };

struct hk_fuzz_layout {
	unsigned long	base;
	enum hk_fuzz_kind	kind[HK_FUZZ_PAGES];
	u64		tag[HK_FUZZ_PAGES];	/* 0: reads as zero */
	struct rnd_state rnd;
	unsigned long	in[HK_FUZZ_PAGES];	/* request entries */
	unsigned long	out[HK_FUZZ_PAGES];	/* the same, handed to HMM */
};

static u32 hk_fuzz_rand(struct hk_fuzz_layout *l, u32 n)
{
	return n ? prandom_u32_state(&l->rnd) % n : 0;
}

static void hk_fuzz_seed(struct kunit *test, struct hk_fuzz_layout *l)
{
	u64 seed = fuzz_seed ?: get_random_u64();

	kunit_info(test, "seed %llu (hmm_kunit.fuzz_seed=%llu replays)\n",
		   seed, seed);
	prandom_seed_state(&l->rnd, seed);
}

static void hk_fuzz_set(struct hk_fuzz_layout *l, int first, int n, enum hk_fuzz_kind k)
{
	while (n--)
		l->kind[first++] = k;
}

/*
 * Pages 0-15 written, 16-19 PROT_NONE, 20-27 read-only and never
 * touched, 28-31 a hole, 32-47 writable and never touched, 48-63 written.
 */
static void hk_fuzz_layout_map(struct kunit *test, struct hk_fuzz_layout *l)
{
	unsigned long a;
	int i;

	l->base = hk_map(test, HK_FUZZ_PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE);
	hk_fuzz_set(l, 0, HK_FUZZ_PAGES, HK_FUZZ_RW);
	a = vm_mmap(NULL, l->base + 16 * PAGE_SIZE, 4 * PAGE_SIZE, PROT_NONE,
		    MAP_FIXED | MAP_ANONYMOUS | MAP_PRIVATE, 0);
	KUNIT_ASSERT_EQ(test, a, l->base + 16 * PAGE_SIZE);
	hk_fuzz_set(l, 16, 4, HK_FUZZ_NONE);
	a = vm_mmap(NULL, l->base + 20 * PAGE_SIZE, 8 * PAGE_SIZE, PROT_READ,
		    MAP_FIXED | MAP_ANONYMOUS | MAP_PRIVATE, 0);
	KUNIT_ASSERT_EQ(test, a, l->base + 20 * PAGE_SIZE);
	hk_fuzz_set(l, 20, 8, HK_FUZZ_RO);
	KUNIT_ASSERT_EQ(test, vm_munmap(l->base + 28 * PAGE_SIZE,
					4 * PAGE_SIZE), 0);
	hk_fuzz_set(l, 28, 4, HK_FUZZ_NONE);
	for (i = 0; i < HK_FUZZ_PAGES; i++) {
		if (i >= 16 && i < 48)
			continue;
		l->tag[i] = 100 + i;
		KUNIT_ASSERT_EQ(test, hk_user_fill(l->base + i * PAGE_SIZE,
						   PAGE_SIZE, l->tag[i]), 0);
	}
}

/* The request hmm_range_fault() must honour for input entry @in. */
static unsigned long hk_fuzz_request(const struct hmm_range *r, unsigned long in)
{
	unsigned long req = r->default_flags | (in & r->pfn_flags_mask);

	return (req & HMM_PFN_REQ_FAULT) ? req & HK_FUZZ_REQ : 0;
}

/* The errno a page of kind @k gives for @req, or 0 if it can satisfy it. */
static int hk_fuzz_page_error(enum hk_fuzz_kind k, unsigned long req)
{
	if (!(req & HMM_PFN_REQ_FAULT))
		return 0;
	if (k == HK_FUZZ_NONE)
		return -EFAULT;
	if (k == HK_FUZZ_RO && (req & HMM_PFN_REQ_WRITE))
		return -EPERM;
	return 0;
}

static void hk_fuzz_random_flags(struct hk_fuzz_layout *l, struct hmm_range *r,
				 unsigned long *pfns, unsigned long n)
{
	static const unsigned long reqs[] = {
		0, HMM_PFN_REQ_FAULT, HK_FUZZ_REQ, HMM_PFN_REQ_WRITE,
	};
	static const unsigned long masks[] = { 0, HK_FUZZ_REQ, ~0UL };
	unsigned long i;

	r->default_flags = reqs[hk_fuzz_rand(l, 4)];
	r->pfn_flags_mask = masks[hk_fuzz_rand(l, 3)];
	for (i = 0; i < n; i++) {
		pfns[i] = reqs[hk_fuzz_rand(l, 4)];
		/* Output bits and a stale pfn left from an earlier call. */
		if (!hk_fuzz_rand(l, 4))
			pfns[i] |= ((u64)prandom_u32_state(&l->rnd) << 32 |
				    prandom_u32_state(&l->rnd)) & ~HK_FUZZ_REQ;
	}
}

/*
 * Check one successful snapshot of pages [first, first + n) of the layout
 * (lock held), then have the "device" write new data into a few of the
 * writable pages it was given, to be checked through the CPU later.
 */
static void hk_fuzz_check_result(struct kunit *test, struct hk_fuzz_layout *l,
				 const struct hmm_range *r, const unsigned long *in,
			     const unsigned long *out, int first, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		int p = first + i;
		unsigned long req = hk_fuzz_request(r, in[i]);
		struct page *page;

		if (l->kind[p] == HK_FUZZ_NONE) {
			KUNIT_EXPECT_EQ_MSG(test, out[i] & (HMM_PFN_VALID |
							    HMM_PFN_ERROR),
					    (unsigned long)HMM_PFN_ERROR,
					    "page %d", p);
			continue;
		}
		KUNIT_EXPECT_FALSE_MSG(test, out[i] & HMM_PFN_ERROR,
				       "page %d", p);
		if ((req & out[i]) != req)
			KUNIT_FAIL(test, "page %d: asked %#lx, got %#lx", p,
				   req, out[i]);
		if (!(out[i] & HMM_PFN_VALID))
			continue;
		if (l->kind[p] == HK_FUZZ_RO)
			KUNIT_EXPECT_FALSE_MSG(test, out[i] & HMM_PFN_WRITE,
					       "read-only page %d", p);
		page = hmm_pfn_to_page(out[i]);
		if (l->tag[p])
			KUNIT_EXPECT_TRUE_MSG(test,
					      hk_check_page(page,
							    l->base + p * PAGE_SIZE,
							    l->tag[p]),
					      "data of page %d", p);
		else
			KUNIT_EXPECT_TRUE_MSG(test, hk_page_is_zero(page),
					      "page %d not zero", p);
		if ((out[i] & HMM_PFN_WRITE) && !hk_fuzz_rand(l, 4)) {
			l->tag[p] = 1000 + hk_fuzz_rand(l, 1U << 20);
			hk_fill_page(page, l->base + p * PAGE_SIZE, l->tag[p]);
		}
	}
}

/* Everything the device wrote, as the process sees it. */
static void hk_fuzz_check_cpu(struct kunit *test, struct hk_fuzz_layout *l)
{
	int p;

	for (p = 0; p < HK_FUZZ_PAGES; p++)
		if (l->tag[p])
			KUNIT_EXPECT_EQ_MSG(test,
					    hk_user_check(l->base + p * PAGE_SIZE,
							  PAGE_SIZE, l->tag[p]),
					    0, "page %d", p);
}

/*
 * A range outside the layout's rules: unaligned, empty, reversed, past the
 * notifier, past TASK_SIZE or wrapping.  Returns false for a valid one.
 */
static bool hk_fuzz_random_bad_range(struct hk_fuzz_layout *l, struct hmm_range *r,
				     struct hk_notifier **hn,
				 struct hk_notifier *layout,
				 struct hk_notifier *whole)
{
	unsigned long top = current->mm->task_size;

	/* Half of the ranges are bad ones. */
	switch (hk_fuzz_rand(l, 14)) {
	case 0:
		r->start += 1 + hk_fuzz_rand(l, PAGE_SIZE - 1);
		return true;
	case 1:
		r->end -= 1 + hk_fuzz_rand(l, PAGE_SIZE - 1);
		return true;
	case 2:
		r->end = r->start;
		return true;
	case 3:
		swap(r->start, r->end);
		return r->start != r->end;
	case 4:
		*hn = layout;
		r->end = l->base + (HK_FUZZ_PAGES + 1 + hk_fuzz_rand(l, 4)) * PAGE_SIZE;
		return true;
	case 5:
		*hn = whole;
		r->start = top - PAGE_SIZE * hk_fuzz_rand(l, 2);
		r->end = top + PAGE_SIZE * (1 + hk_fuzz_rand(l, 2));
		return true;
	case 6:
		*hn = whole;
		r->start = PAGE_ALIGN_DOWN(ULONG_MAX) - PAGE_SIZE *
			   hk_fuzz_rand(l, 4);
		r->end = r->start + PAGE_SIZE * (1 + hk_fuzz_rand(l, 8));
		return true;
	default:
		return false;
	}
}

static void hmm_fuzz_test_range_fault(struct kunit *test)
{
	struct hk_notifier *layout_hn, *whole, *hn;
	unsigned long *in, *out;
	struct hk_fuzz_layout *l;
	struct hmm_range r;
	int it, first, n, i, expect, ret, ok = 0, bad = 0;

	l = test->priv;
	in = l->in;
	out = l->out;
	layout_hn = hk_notifier_add(test, l->base, HK_FUZZ_PAGES * PAGE_SIZE);
	whole = hk_notifier_add(test, 0, ULONG_MAX);

	for (it = 0; it < HK_FUZZ_ITERS && !test->status; it++) {
		first = hk_fuzz_rand(l, HK_FUZZ_PAGES);
		n = 1 + hk_fuzz_rand(l, HK_FUZZ_PAGES - first);
		hk_range_init(&r, in, l->base + first * PAGE_SIZE, n, 0);
		hk_fuzz_random_flags(l, &r, in, n);
		hn = hk_fuzz_rand(l, 2) ? layout_hn : whole;

		if (hk_fuzz_random_bad_range(l, &r, &hn, layout_hn, whole)) {
			r.notifier = &hn->notifier;
			r.notifier_seq = mmu_interval_read_begin(&hn->notifier);
			mmap_read_lock(current->mm);
			ret = hmm_range_fault(&r);
			mmap_read_unlock(current->mm);
			KUNIT_EXPECT_EQ_MSG(test, ret, -EINVAL,
					    "iteration %d: [%#lx, %#lx)", it,
					    r.start, r.end);
			bad++;
			continue;
		}

		memcpy(out, in, n * sizeof(*in));
		r.hmm_pfns = out;
		expect = 0;
		for (i = 0; i < n; i++) {
			int err = hk_fuzz_page_error(l->kind[first + i],
						 hk_fuzz_request(&r, in[i]));

			/* The walk goes up: the lowest failing page wins. */
			if (err && !expect)
				expect = err;
		}
		ret = hk_fault(hn, &r);
		if (ret) {
			KUNIT_EXPECT_EQ_MSG(test, ret, expect,
					    "iteration %d: pages %d-%d", it,
					    first, first + n - 1);
			continue;
		}
		KUNIT_EXPECT_EQ_MSG(test, expect, 0,
				    "iteration %d: pages %d-%d succeeded", it,
				    first, first + n - 1);
		hk_fuzz_check_result(test, l, &r, in, out, first, n);
		mutex_unlock(&hn->lock);
		ok++;
	}
	hk_fuzz_check_cpu(test, l);
	kunit_info(test, "%d iterations: %d snapshots, %d rejected ranges\n",
		   it, ok, bad);
}

static int hk_fuzz_bad_invalidate(struct hmm_mirror *mirror,
				  const struct hmm_update *update)
{
	return 0;
}

static const struct hmm_mirror_ops hk_fuzz_no_invalidate_ops = {
	.release = hk_mirror_release,
};

static const struct hmm_mirror_ops hk_fuzz_no_release_ops = {
	.invalidate_range = hk_fuzz_bad_invalidate,
};

/*
 * Random register, unregister and fault calls on a few mirrors, valid and
 * not: registering an unregistered mirror works, bad arguments get
 * -EINVAL, a fault through an unregistered mirror gets -EINVAL, and a
 * fault through a registered one behaves like hmm_range_fault() on the
 * same pages.
 */
static void hmm_fuzz_test_mirror_calls(struct kunit *test)
{
	struct hmm_mirror stray = { .ops = &hk_fuzz_no_invalidate_ops };
	struct hk_mirror *hm[3];
	unsigned long *in, *out;
	struct hk_fuzz_layout *l;
	struct hmm_range r;
	int it, i, m, first, n, ret, expect, calls[4] = { 0 };

	l = test->priv;
	in = l->in;
	out = l->out;
	for (m = 0; m < ARRAY_SIZE(hm); m++) {
		hm[m] = kzalloc(sizeof(*hm[m]), GFP_KERNEL);
		KUNIT_ASSERT_NOT_NULL(test, hm[m]);
		mutex_init(&hm[m]->lock);
		hm[m]->mirror.ops = &hk_mirror_ops;
		KUNIT_ASSERT_EQ(test,
				kunit_add_action_or_reset(test,
							  hk_mirror_cleanup,
							  hm[m]), 0);
	}

	for (it = 0; it < HK_FUZZ_ITERS / 2 && !test->status; it++) {
		struct hk_mirror *h = hm[hk_fuzz_rand(l, ARRAY_SIZE(hm))];
		int op = hk_fuzz_rand(l, 4);

		calls[op]++;
		switch (op) {
		case 0:		/* register, if the API allows it now */
			if (h->registered)
				break;
			KUNIT_EXPECT_EQ(test, hmm_mirror_register(&h->mirror,
								  current->mm),
					0);
			h->registered = !test->status;
			break;
		case 1:		/* unregister, possibly again */
			hk_mirror_unregister(h);
			KUNIT_EXPECT_NULL(test, h->mirror.mm);
			break;
		case 2:		/* bad arguments */
			stray.ops = hk_fuzz_rand(l, 2) ? &hk_fuzz_no_invalidate_ops :
				    &hk_fuzz_no_release_ops;
			ret = hmm_mirror_register(hk_fuzz_rand(l, 2) ? &stray :
						  NULL, current->mm);
			/* No ->release is fine; no ->invalidate_range is not. */
			if (stray.ops == &hk_fuzz_no_release_ops && !ret) {
				hmm_mirror_unregister(&stray);
				break;
			}
			KUNIT_EXPECT_EQ(test, ret, -EINVAL);
			KUNIT_EXPECT_EQ(test, hmm_mirror_register(&h->mirror,
								  NULL),
					-EINVAL);
			KUNIT_EXPECT_EQ(test,
					hmm_mirror_range_fault(&h->mirror, NULL,
							       &h->lock),
					-EINVAL);
			hk_range_init(&r, in, l->base, 1, 0);
			KUNIT_EXPECT_EQ(test,
					hmm_mirror_range_fault(&h->mirror, &r,
							       NULL),
					-EINVAL);
			break;
		default:	/* fault a random part of the layout */
			first = hk_fuzz_rand(l, HK_FUZZ_PAGES);
			n = 1 + hk_fuzz_rand(l, HK_FUZZ_PAGES - first);
			hk_range_init(&r, in, l->base + first * PAGE_SIZE, n,
				      0);
			hk_fuzz_random_flags(l, &r, in, n);
			memcpy(out, in, n * sizeof(*in));
			r.hmm_pfns = out;
			expect = h->registered ? 0 : -EINVAL;
			for (i = 0; i < n && !expect; i++)
				expect = hk_fuzz_page_error(l->kind[first + i],
							    hk_fuzz_request(&r, in[i]));
			ret = hmm_mirror_range_fault(&h->mirror, &r, &h->lock);
			KUNIT_EXPECT_EQ_MSG(test, ret, expect,
					    "iteration %d: pages %d-%d, %s", it,
					    first, first + n - 1,
					    h->registered ? "registered" :
					    "unregistered");
			if (ret)
				break;
			hk_fuzz_check_result(test, l, &r, in, out, first, n);
			mutex_unlock(&h->lock);
			break;
		}
	}
	hk_fuzz_check_cpu(test, l);
	kunit_info(test, "%d calls: %d register, %d unregister, %d bad, %d fault\n",
		   it, calls[0], calls[1], calls[2], calls[3]);
}

static struct kunit_case hmm_fuzz_test_cases[] = {
	KUNIT_CASE_SLOW(hmm_fuzz_test_range_fault),
	KUNIT_CASE_SLOW(hmm_fuzz_test_mirror_calls),
	{}
};

/* A new seed and a fresh layout of known pages for each case. */
static int hmm_fuzz_test_init(struct kunit *test)
{
	struct hk_fuzz_layout *l = kunit_kzalloc(test, sizeof(*l), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, l);
	hk_fuzz_seed(test, l);
	hk_fuzz_layout_map(test, l);
	test->priv = l;
	return 0;
}

static struct kunit_suite hmm_fuzz_test_suite = {
	.name = "hmm_fuzz",
	.init = hmm_fuzz_test_init,
	.test_cases = hmm_fuzz_test_cases,
};

kunit_test_suite(hmm_fuzz_test_suite);

MODULE_DESCRIPTION("KUnit tests for hmm_range_fault() and hmm_mirror");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);
