// SPDX-License-Identifier: GPL-2.0-only
/*
 * KUnit tests for the migration engine of mm/migrate_device.c, driven
 * with system pages as destinations: every step a device driver relies
 * on (collection, empty slots, pins, restore, eviction by pfn) runs
 * without a device, and the data and the pfns the process ends up with
 * are checked.  Shmem pages also move to the device-private memory of a
 * KUnit pgmap (struct hk_pgmap) and come back through copy_to_ram().
 */

#include <kunit/test.h>
#include <linux/falloc.h>
#include <linux/file.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/shmem_fs.h>
#include <linux/swapops.h>
#include <linux/uaccess.h>

#include "../internal.h"
#include "hmm_kunit_helpers.h"

/*
 * A locked system page, as a driver hands in a destination, or 0 (no
 * destination: the slot does not migrate) if there is no memory.  It is
 * called with the mmap lock and the sources' page locks held, where the
 * case must not assert; the caller counts failures and asserts after.
 */
static unsigned long hk_dst_alloc(void)
{
	struct page *page = alloc_page(GFP_HIGHUSER_MOVABLE);

	if (!page)
		return 0;
	lock_page(page);
	return migrate_pfn(page_to_pfn(page));
}

/* The pfns [addr, addr + npages) maps now, faulting nothing. */
static void hk_snapshot(struct kunit *test, struct hk_notifier *hn,
			unsigned long addr, unsigned long npages,
			unsigned long *pfns)
{
	struct hmm_range range;
	unsigned long i;

	hk_range_init(&range, pfns, addr, npages, 0);
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	mutex_unlock(&hn->lock);
	for (i = 0; i < npages; i++)
		pfns[i] = (pfns[i] & HMM_PFN_VALID) ?
			  page_to_pfn(hmm_pfn_to_page(pfns[i])) : 0;
}

/* The process maps exactly the destination pages of @dst now. */
static void hk_expect_mapped(struct kunit *test, struct hk_notifier *hn,
			     unsigned long addr, const unsigned long *dst)
{
	unsigned long now[HK_MIG_NPAGES], i;

	hk_snapshot(test, hn, addr, HK_MIG_NPAGES, now);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_EQ_MSG(test, now[i], dst[i] >> MIGRATE_PFN_SHIFT,
				    "page %lu", i);
}

/* Bad arguments are refused before anything is touched. */
static void migrate_device_test_bad_args(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES], addr;
	struct page *sys_page;
	struct migrate_vma args;
	struct mm_struct *mm;

	addr = ctx->addr;
	mm = current->mm;
	sys_page = alloc_page(GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, sys_page);

	mmap_read_lock(mm);
	memset(&args, 0, sizeof(args));
	args.vma = vma_lookup(mm, addr);
	args.src = src;
	args.dst = dst;
	args.flags = MIGRATE_VMA_SELECT_SYSTEM;

	args.start = addr;
	args.end = addr;
	KUNIT_EXPECT_EQ_MSG(test, migrate_vma_setup(&args), -EINVAL, "empty");
	args.end = addr + (HK_MIG_NPAGES + 1) * PAGE_SIZE;
	KUNIT_EXPECT_EQ_MSG(test, migrate_vma_setup(&args), -EINVAL,
			    "beyond the vma");
	args.start = addr - PAGE_SIZE;
	args.end = addr + PAGE_SIZE;
	KUNIT_EXPECT_EQ_MSG(test, migrate_vma_setup(&args), -EINVAL,
			    "before the vma");
	args.start = addr;
	args.src = NULL;
	KUNIT_EXPECT_EQ_MSG(test, migrate_vma_setup(&args), -EINVAL, "no src");
	args.src = src;
	args.fault_page = sys_page;
	KUNIT_EXPECT_EQ_MSG(test, migrate_vma_setup(&args), -EINVAL,
			    "fault_page in system memory");
	args.fault_page = NULL;
	args.vma = NULL;
	KUNIT_EXPECT_EQ_MSG(test, migrate_vma_setup(&args), -EINVAL, "no vma");
	mmap_read_unlock(mm);
	__free_page(sys_page);
}

/*
 * Written pages, zero-page mappings and never-touched slots all migrate:
 * written pages carry their data over, the other two are empty slots the
 * destination fills. The process then maps exactly the destinations.
 */
static void migrate_device_test_system_round_trip(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES];
	const unsigned long written = 4, zero = 2;
	struct migrate_vma args;
	unsigned long addr, i;
	struct hk_notifier *hn;
	struct mm_struct *mm;
	int ret, nomem = 0;
	u64 word;

	addr = ctx->addr;
	mm = current->mm;
	hn = ctx->hn;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, written * PAGE_SIZE, 21), 0);
	for (i = written; i < written + zero; i++) {
		KUNIT_ASSERT_EQ(test, get_user(word, (u64 __user *)
					       (addr + i * PAGE_SIZE)), 0);
		KUNIT_ASSERT_EQ(test, word, 0ULL);
	}

	mmap_read_lock(mm);
	ret = hk_migrate_setup(&args, addr, src, dst);
	if (ret)
		goto out_unlock;
	KUNIT_EXPECT_EQ(test, args.cpages, (unsigned long)HK_MIG_NPAGES);
	KUNIT_EXPECT_GE(test, atomic_read(&hn->invalidations), 1);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		struct page *spage = migrate_pfn_to_page(src[i]);

		KUNIT_EXPECT_TRUE_MSG(test, src[i] & MIGRATE_PFN_MIGRATE,
				      "page %lu", i);
		KUNIT_EXPECT_EQ_MSG(test, !!spage, i < written, "page %lu", i);
		dst[i] = hk_dst_alloc();
		if (!dst[i])
			nomem++;
		else if (spage)
			copy_highpage(migrate_pfn_to_page(dst[i]), spage);
		else
			hk_fill_page(migrate_pfn_to_page(dst[i]),
				     addr + i * PAGE_SIZE, 22);
	}
	migrate_vma_pages(&args);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_TRUE_MSG(test, src[i] & MIGRATE_PFN_MIGRATE,
				      "page %lu", i);
	migrate_vma_finalize(&args);
out_unlock:
	mmap_read_unlock(mm);
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_ASSERT_EQ_MSG(test, nomem, 0, "no destination page");

	KUNIT_EXPECT_EQ(test, hk_user_check(addr, written * PAGE_SIZE, 21), 0);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr + written * PAGE_SIZE,
					    (HK_MIG_NPAGES - written) * PAGE_SIZE,
					    22), 0);
	hk_expect_mapped(test, hn, addr, dst);
}

/*
 * Without destinations nothing moves: every page is mapped again where it
 * was, with its data, and the empty slots stay empty.
 */
static void migrate_device_test_restore_without_dst(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES];
	unsigned long before[HK_MIG_NPAGES], after[HK_MIG_NPAGES];
	const unsigned long written = 6;
	struct migrate_vma args;
	struct hk_notifier *hn;
	struct mm_struct *mm;
	unsigned long addr, i;
	int ret;

	addr = ctx->addr;
	mm = current->mm;
	hn = ctx->hn;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, written * PAGE_SIZE, 23), 0);
	hk_snapshot(test, hn, addr, HK_MIG_NPAGES, before);

	mmap_read_lock(mm);
	ret = hk_migrate_setup(&args, addr, src, dst);
	if (ret)
		goto out_unlock;
	KUNIT_EXPECT_EQ(test, args.cpages, (unsigned long)HK_MIG_NPAGES);
	migrate_vma_pages(&args);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_FALSE_MSG(test, src[i] & MIGRATE_PFN_MIGRATE,
				       "page %lu", i);
	migrate_vma_finalize(&args);
out_unlock:
	mmap_read_unlock(mm);
	KUNIT_ASSERT_EQ(test, ret, 0);

	KUNIT_EXPECT_EQ(test, hk_user_check(addr, written * PAGE_SIZE, 23), 0);
	hk_snapshot(test, hn, addr, HK_MIG_NPAGES, after);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_EQ_MSG(test, after[i], before[i], "page %lu", i);
}

/*
 * Zero-page mappings are collected as empty slots, but without a
 * destination they keep their PTE: the process still maps the zero page
 * there, rather than nothing.
 */
static void migrate_device_test_zero_page_kept_without_dst(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES], now[HK_MIG_NPAGES];
	struct migrate_vma args;
	struct hk_notifier *hn;
	struct mm_struct *mm;
	unsigned long addr, i;
	u64 word;
	int ret;

	addr = ctx->addr;
	mm = current->mm;
	hn = ctx->hn;
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_ASSERT_EQ(test, get_user(word, (u64 __user *)
					       (addr + i * PAGE_SIZE)), 0);

	mmap_read_lock(mm);
	ret = hk_migrate_setup(&args, addr, src, dst);
	if (ret)
		goto out_unlock;
	KUNIT_EXPECT_EQ(test, args.cpages, (unsigned long)HK_MIG_NPAGES);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_EQ_MSG(test, src[i], MIGRATE_PFN_MIGRATE,
				    "page %lu", i);
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);
out_unlock:
	mmap_read_unlock(mm);
	KUNIT_ASSERT_EQ(test, ret, 0);

	hk_snapshot(test, hn, addr, HK_MIG_NPAGES, now);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_TRUE_MSG(test, now[i] && is_zero_pfn(now[i]),
				      "page %lu: pfn %lx", i, now[i]);
}

/*
 * A pinned page is left out at setup and stays mapped: a store through
 * the pin is what the process reads. Its neighbours migrate.
 */
static void migrate_device_test_pinned_page_stays(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES], now[HK_MIG_NPAGES];
	const unsigned long pinned_idx = 3;
	struct migrate_vma args;
	struct hk_notifier *hn;
	struct mm_struct *mm;
	struct page *pinned;
	unsigned long addr, i;
	int ret, nomem = 0;

	addr = ctx->addr;
	mm = current->mm;
	hn = ctx->hn;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_MIG_NPAGES * PAGE_SIZE, 24), 0);
	KUNIT_ASSERT_EQ(test, pin_user_pages_fast(addr + pinned_idx * PAGE_SIZE,
						  1, FOLL_WRITE, &pinned), 1);

	mmap_read_lock(mm);
	ret = hk_migrate_setup(&args, addr, src, dst);
	if (ret)
		goto out_unlock;
	KUNIT_EXPECT_EQ(test, args.cpages, (unsigned long)HK_MIG_NPAGES - 1);
	KUNIT_EXPECT_EQ(test, src[pinned_idx], 0UL);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		if (!migrate_pfn_to_page(src[i]))
			continue;
		dst[i] = hk_dst_alloc();
		if (!dst[i]) {
			nomem++;
			continue;
		}
		copy_highpage(migrate_pfn_to_page(dst[i]),
			      migrate_pfn_to_page(src[i]));
	}
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);
out_unlock:
	mmap_read_unlock(mm);
	if (ret || nomem)
		unpin_user_page(pinned);
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_ASSERT_EQ_MSG(test, nomem, 0, "no destination page");

	hk_fill_page(pinned, addr + pinned_idx * PAGE_SIZE, 25);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr + pinned_idx * PAGE_SIZE,
					    PAGE_SIZE, 25), 0);
	unpin_user_page(pinned);
	hk_snapshot(test, hn, addr, HK_MIG_NPAGES, now);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		if (i == pinned_idx)
			continue;
		KUNIT_EXPECT_EQ_MSG(test, now[i], dst[i] >> MIGRATE_PFN_SHIFT,
				    "page %lu", i);
		KUNIT_EXPECT_EQ(test, hk_user_check(addr + i * PAGE_SIZE,
						    PAGE_SIZE, 24), 0);
	}
}

/*
 * Eviction by pfn finds the pages through the reverse map, without the
 * mmap lock, and the process maps the replacements afterwards.
 */
static void migrate_device_test_device_pfns(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES];
	struct hk_notifier *hn;
	unsigned long addr, i;
	int nomem = 0;

	addr = ctx->addr;
	hn = ctx->hn;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_MIG_NPAGES * PAGE_SIZE, 26), 0);
	hk_snapshot(test, hn, addr, HK_MIG_NPAGES, src);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_ASSERT_NE(test, src[i], 0UL);

	KUNIT_ASSERT_EQ(test, migrate_device_pfns(src, HK_MIG_NPAGES), 0);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		KUNIT_EXPECT_TRUE_MSG(test, src[i] & MIGRATE_PFN_MIGRATE,
				      "page %lu", i);
		dst[i] = 0;
		if (!migrate_pfn_to_page(src[i]))
			continue;
		dst[i] = hk_dst_alloc();
		if (!dst[i]) {
			nomem++;
			continue;
		}
		copy_highpage(migrate_pfn_to_page(dst[i]),
			      migrate_pfn_to_page(src[i]));
	}
	migrate_device_pages(src, dst, HK_MIG_NPAGES);
	migrate_device_finalize(src, dst, HK_MIG_NPAGES);
	KUNIT_ASSERT_EQ_MSG(test, nomem, 0, "no destination page");

	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_MIG_NPAGES * PAGE_SIZE, 26), 0);
	hk_expect_mapped(test, hn, addr, dst);
}

#ifdef CONFIG_DEVICE_PRIVATE
static void hk_fput(void *file)
{
	fput(file);
}

/* A shared mapping of a new shmem file of HK_MIG_NPAGES pages. */
static unsigned long hk_shmem_map(struct kunit *test, struct file **filep)
{
	unsigned long size = HK_MIG_NPAGES * PAGE_SIZE, addr;
	struct file *file;

	file = shmem_file_setup("hk_shmem", size, 0);
	KUNIT_ASSERT_FALSE(test, IS_ERR(file));
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, hk_fput, file),
			0);
	addr = vm_mmap(file, 0, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
	KUNIT_ASSERT_FALSE(test, IS_ERR_VALUE(addr));
	*filep = file;
	return addr;
}

/* Each index of @mapping holds the device-private entry of page i of @dm. */
static void hk_expect_device_entries(struct kunit *test,
				     struct address_space *mapping,
				     struct hk_pgmap *dm)
{
	unsigned long i;

	for (i = 0; i < HK_MIG_NPAGES; i++) {
		void *entry = xa_load(&mapping->i_pages, i);
		swp_entry_t swp;

		KUNIT_ASSERT_TRUE_MSG(test, xa_is_value(entry), "index %lu", i);
		swp = radix_to_swp_entry(entry);
		KUNIT_EXPECT_TRUE(test, is_device_private_entry(swp));
		KUNIT_EXPECT_EQ(test, swp_offset_pfn(swp),
				PHYS_PFN(dm->pgmap.range.start) + i);
	}
	KUNIT_EXPECT_EQ(test, mapping->nrpages, 0UL);
}
#endif

/*
 * Shmem pages move to device-private memory: the page cache then holds
 * device-private entries and no folio, hmm_range_fault() reports the
 * device pages to their owner without faulting, a CPU access copies every
 * page back through copy_to_ram() after invalidating the mirror, and a
 * hole punch frees the device pages without copying them.
 */
static void migrate_device_test_shmem_device_private(struct kunit *test)
{
#ifdef CONFIG_DEVICE_PRIVATE
	static int owner;
	unsigned long pfns[HK_MIG_NPAGES], addr, i;
	struct address_space *mapping;
	struct hmm_range range;
	struct hk_notifier *hn;
	struct hk_pgmap *dm;
	struct file *file;
	int before;

	hk_map(test, PAGE_SIZE, PROT_READ);
	dm = hk_pgmap_add(test, &owner);
	addr = hk_shmem_map(test, &file);
	mapping = file->f_mapping;
	hn = hk_notifier_add(test, addr, HK_MIG_NPAGES * PAGE_SIZE);
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_MIG_NPAGES * PAGE_SIZE, 31), 0);
	KUNIT_ASSERT_EQ(test, mapping->nrpages, (unsigned long)HK_MIG_NPAGES);

	hk_shmem_to_device(test, addr, dm, &owner);
	hk_expect_device_entries(test, mapping, dm);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_TRUE(test, hk_check_page(dm->backing[i],
						      addr + i * PAGE_SIZE, 31));

	hk_range_init(&range, pfns, addr, HK_MIG_NPAGES, HMM_PFN_REQ_FAULT);
	range.dev_private_owner = &owner;
	KUNIT_ASSERT_EQ(test, hk_fault(hn, &range), 0);
	mutex_unlock(&hn->lock);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_EQ_MSG(test, pfns[i] & ~HMM_PFN_FLAGS,
				    PHYS_PFN(dm->pgmap.range.start) + i,
				    "index %lu", i);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->copies), 0);

	before = atomic_read(&hn->invalidations);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_MIG_NPAGES * PAGE_SIZE, 31),
			0);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->copies), HK_MIG_NPAGES);
	KUNIT_EXPECT_GE(test, atomic_read(&hn->invalidations),
			before + HK_MIG_NPAGES);
	KUNIT_EXPECT_EQ(test, mapping->nrpages, (unsigned long)HK_MIG_NPAGES);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->frees), HK_MIG_NPAGES);

	hk_shmem_to_device(test, addr, dm, &owner);
	hk_expect_device_entries(test, mapping, dm);
	KUNIT_EXPECT_EQ(test, vfs_fallocate(file, FALLOC_FL_PUNCH_HOLE |
					    FALLOC_FL_KEEP_SIZE, 0,
					    HK_MIG_NPAGES * PAGE_SIZE), 0);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->frees), 2 * HK_MIG_NPAGES);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->copies), HK_MIG_NPAGES);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_NULL(test, xa_load(&mapping->i_pages, i));
#else
	kunit_skip(test, "CONFIG_DEVICE_PRIVATE is off");
#endif
}

/*
 * Truncation takes a device page out of its file as it takes a folio:
 * locked, with ->mapping cleared as the entry goes. An eviction that
 * still finds the page (here we hold a reference on it, as an eviction
 * racing with the truncation would) sees that it belongs to no file and
 * leaves it alone, instead of using a mapping that may be freed by then.
 */
static void migrate_device_test_shmem_truncate_clears_mapping(struct kunit *test)
{
#ifdef CONFIG_DEVICE_PRIVATE
	static int owner;
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES], addr, i;
	struct folio *dfolio[HK_MIG_NPAGES];
	struct hk_pgmap *dm;
	struct file *file;

	hk_map(test, PAGE_SIZE, PROT_READ);
	dm = hk_pgmap_add(test, &owner);
	addr = hk_shmem_map(test, &file);
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_MIG_NPAGES * PAGE_SIZE, 33), 0);
	hk_shmem_to_device(test, addr, dm, &owner);
	hk_expect_device_entries(test, file->f_mapping, dm);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		dfolio[i] = pfn_folio(PHYS_PFN(dm->pgmap.range.start) + i);
		folio_get(dfolio[i]);
	}

	KUNIT_EXPECT_EQ(test, vfs_fallocate(file, FALLOC_FL_PUNCH_HOLE |
					    FALLOC_FL_KEEP_SIZE, 0,
					    HK_MIG_NPAGES * PAGE_SIZE), 0);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		KUNIT_EXPECT_NULL(test, xa_load(&file->f_mapping->i_pages, i));
		KUNIT_EXPECT_FALSE_MSG(test, folio_test_locked(dfolio[i]),
				       "page %lu", i);
		KUNIT_EXPECT_NULL_MSG(test, dfolio[i]->mapping, "page %lu", i);
		src[i] = folio_pfn(dfolio[i]);
		dst[i] = 0;
	}
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->frees), 0);

	migrate_device_pfns(src, HK_MIG_NPAGES);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_EQ_MSG(test, src[i], 0UL, "page %lu", i);
	migrate_device_pages(src, dst, HK_MIG_NPAGES);
	migrate_device_finalize(src, dst, HK_MIG_NPAGES);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		folio_put(dfolio[i]);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->frees), HK_MIG_NPAGES);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->copies), 0);
#else
	kunit_skip(test, "CONFIG_DEVICE_PRIVATE is off");
#endif
}

static struct kunit_case migrate_device_test_cases[] = {
	KUNIT_CASE(migrate_device_test_bad_args),
	KUNIT_CASE(migrate_device_test_system_round_trip),
	KUNIT_CASE(migrate_device_test_restore_without_dst),
	KUNIT_CASE(migrate_device_test_zero_page_kept_without_dst),
	KUNIT_CASE(migrate_device_test_pinned_page_stays),
	KUNIT_CASE(migrate_device_test_device_pfns),
	KUNIT_CASE(migrate_device_test_shmem_device_private),
	KUNIT_CASE(migrate_device_test_shmem_truncate_clears_mapping),
	{}
};

static int migrate_device_test_init(struct kunit *test)
{
	return hk_ctx_init(test, HK_MIG_NPAGES * PAGE_SIZE, true);
}

static struct kunit_suite migrate_device_test_suite = {
	.name = "migrate_device",
	.init = migrate_device_test_init,
	.exit = hk_ctx_exit,
	.test_cases = migrate_device_test_cases,
};

kunit_test_suite(migrate_device_test_suite);

MODULE_DESCRIPTION("KUnit tests for the device migration engine");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);
