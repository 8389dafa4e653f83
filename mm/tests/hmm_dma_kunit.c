// SPDX-License-Identifier: GPL-2.0-only
/*
 * KUnit tests for hmm_dma (mm/hmm_dma.c), the DMA mappings of mirrored
 * pages (include/linux/hmm-dma.h).
 *
 * A KUnit device with a 64-bit DMA mask stands in for the hardware.  The
 * "device" reaches a DMA address at the kernel address of dma_to_phys(),
 * which must be the page itself: hmm_dma only serves devices that reach
 * memory directly and coherently, so nothing is ever synced.  Under
 * swiotlb=force it refuses every device; the hmm_dma_test_refuse_* cases
 * check that, the others need a device it accepts.
 */

#include <kunit/device.h>
#include <kunit/test.h>
#include <linux/dma-direct.h>
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/hmm-dma.h>
#include <linux/huge_mm.h>
#include <linux/ioport.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/swiotlb.h>
#include <linux/uaccess.h>

#include "hmm_kunit_helpers.h"

/*
 * A driver-like mirror whose invalidation unmaps the DMA entries.  While a
 * case holds hn.lock it only uses KUNIT_EXPECT_*(): an assertion would end
 * the case with the lock held, and the cleanup's munmap would then block
 * in hk_dma_invalidate() forever.
 */
struct hk_dma_mirror {
	struct hk_notifier	hn;	/* notifier and "page table" lock */
	struct hmm_dma_map	map;	/* under hn.lock */
	unsigned long		start;	/* address of entry 0 */
};

static bool hk_dma_invalidate(struct mmu_interval_notifier *mni,
			      const struct mmu_notifier_range *range,
			  unsigned long cur_seq)
{
	struct hk_dma_mirror *hd = container_of(mni, struct hk_dma_mirror,
					    hn.notifier);
	unsigned long start, end;

	if (mmu_notifier_range_blockable(range))
		mutex_lock(&hd->hn.lock);
	else if (!mutex_trylock(&hd->hn.lock))
		return false;
	mmu_interval_set_seq(mni, cur_seq);
	atomic_inc(&hd->hn.invalidations);
	start = max(range->start, hd->start);
	end = min(range->end, hd->start + hd->map.nr_entries * PAGE_SIZE);
	if (start < end)
		hmm_dma_unmap_range(&hd->map, (start - hd->start) >> PAGE_SHIFT,
				    (end - start) >> PAGE_SHIFT);
	mutex_unlock(&hd->hn.lock);
	return true;
}

static const struct mmu_interval_notifier_ops hk_dma_notifier_ops = {
	.invalidate = hk_dma_invalidate,
};

static void hk_dma_mirror_remove(void *data)
{
	struct hk_dma_mirror *hd = data;

	mmu_interval_notifier_remove(&hd->hn.notifier);
	hmm_dma_map_destroy(&hd->map);
	kfree(hd);
}

static struct device *hk_dma_device(struct kunit *test)
{
	struct device *dev = kunit_device_register(test, "hmm_dma_kunit");

	KUNIT_ASSERT_FALSE(test, IS_ERR(dev));
	KUNIT_ASSERT_EQ(test, dma_coerce_mask_and_coherent(dev,
							   DMA_BIT_MASK(64)), 0);
	/* The checks read DMA addresses back as physical ones. */
	if (get_dma_ops(dev))
		kunit_skip(test, "device is behind an IOMMU, not dma-direct");
	if (is_swiotlb_force_bounce(dev))
		kunit_skip(test, "swiotlb=force: hmm_dma refuses every device");
	return dev;
}

/* Mirror [start, start + npages pages) with DMA state for @dev. */
static struct hk_dma_mirror *hk_dma_mirror_add(struct kunit *test, struct device *dev,
					       unsigned long start,
				       unsigned long npages, void *owner)
{
	struct hk_dma_mirror *hd;
	int ret;

	hd = kzalloc(sizeof(*hd), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, hd);
	mutex_init(&hd->hn.lock);
	hd->start = start;
	ret = hmm_dma_map_init(&hd->map, dev, npages, owner, &hd->hn.lock);
	if (!ret) {
		ret = mmu_interval_notifier_insert(&hd->hn.notifier,
						   current->mm, start,
						   npages * PAGE_SIZE,
						   &hk_dma_notifier_ops);
		if (ret)
			hmm_dma_map_destroy(&hd->map);
	}
	if (ret)
		kfree(hd);
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, hk_dma_mirror_remove,
							hd), 0);
	return hd;
}

/* What the device sees at @addr, i.e. the kernel address behind it. */
static void *hk_dma_dev_view(struct device *dev, dma_addr_t addr)
{
	return phys_to_virt(dma_to_phys(dev, addr));
}

static bool hk_dma_view_matches(void *va, unsigned long uaddr, u64 tag)
{
	u64 *p = va;
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / sizeof(u64); i++)
		if (p[i] != hk_pattern(uaddr, i, tag))
			return false;
	return true;
}

static void hk_dma_view_fill(void *va, unsigned long uaddr, u64 tag)
{
	u64 *p = va;
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / sizeof(u64); i++)
		p[i] = hk_pattern(uaddr, i, tag);
}

/*
 * Map every page, read the CPU's data through the DMA addresses (the pages'
 * own), write new data through them and check the CPU sees it; mapping
 * again is free, and unmapping is exact and idempotent.
 */
static void hmm_dma_test_map_read_write(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	struct device *dev = hk_dma_device(test);
	unsigned long addr, i;
	struct hmm_range range;
	struct hk_dma_mirror *hd;
	unsigned long *pfns;
	dma_addr_t dma[HK_NPAGES], again;
	int ret = 0;

	pfns = kunit_kcalloc(test, HK_NPAGES, sizeof(*pfns), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, pfns);
	addr = ctx->addr;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 21), 0);
	hd = hk_dma_mirror_add(test, dev, addr, HK_NPAGES, NULL);

	hk_range_init(&range, pfns, addr, HK_NPAGES,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_ASSERT_EQ(test, hk_fault(&hd->hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++) {
		unsigned long uaddr = addr + i * PAGE_SIZE;

		ret = hmm_dma_map_pfn(&hd->map, i, pfns[i], &dma[i]);
		if (ret)
			goto out_unlock;
		/* Direct: the DMA address leads to the page itself. */
		KUNIT_EXPECT_EQ(test, dma_to_phys(dev, dma[i]),
				page_to_phys(hmm_pfn_to_page(pfns[i])));
		KUNIT_EXPECT_TRUE(test, hk_dma_view_matches(hk_dma_dev_view(dev, dma[i]),
							    uaddr, 21));
		hk_dma_view_fill(hk_dma_dev_view(dev, dma[i]), uaddr, 22);
	}
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, (unsigned long)HK_NPAGES);

	/* Same page, same rights: the existing mapping comes back. */
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, 3, pfns[3], &again), 0);
	KUNIT_EXPECT_EQ(test, again, dma[3]);
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, (unsigned long)HK_NPAGES);
	KUNIT_EXPECT_EQ(test, hmm_dma_lookup(&hd->map, 5, &again), 0);
	KUNIT_EXPECT_EQ(test, again, dma[5]);

	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_pfn(&hd->map, 3), 1UL);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_pfn(&hd->map, 3), 0UL);
	KUNIT_EXPECT_EQ(test, hmm_dma_lookup(&hd->map, 3, &again), -ENOENT);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_all(&hd->map),
			(unsigned long)HK_NPAGES - 1);
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, 0UL);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_all(&hd->map), 0UL);
out_unlock:
	mutex_unlock(&hd->hn.lock);
	KUNIT_ASSERT_EQ(test, ret, 0);

	KUNIT_EXPECT_EQ(test, hk_user_check(addr, HK_SIZE, 22), 0);
}

/*
 * A read-only page is mapped for the device to read only; asking again
 * with the write right replaces the mapping instead of reusing it.
 */
static void hmm_dma_test_write_upgrade(struct kunit *test)
{
	struct device *dev = hk_dma_device(test);
	dma_addr_t ro, rw;
	unsigned long addr;
	struct hmm_range range;
	struct hk_dma_mirror *hd;
	unsigned long pfn;
	int ret;

	addr = hk_map(test, PAGE_SIZE, PROT_READ | PROT_WRITE);
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, PAGE_SIZE, 23), 0);
	hd = hk_dma_mirror_add(test, dev, addr, 1, NULL);

	hk_range_init(&range, &pfn, addr, 1, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(&hd->hn, &range), 0);
	ret = hmm_dma_map_pfn(&hd->map, 0, pfn & ~HMM_PFN_WRITE, &ro);
	if (ret)
		goto out_unlock;
	KUNIT_EXPECT_TRUE(test, hk_dma_view_matches(hk_dma_dev_view(dev, ro), addr, 23));
	KUNIT_EXPECT_TRUE(test, pfn & HMM_PFN_WRITE);
	ret = hmm_dma_map_pfn(&hd->map, 0, pfn, &rw);
	if (ret)
		goto out_unlock;
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, 1UL);
	hk_dma_view_fill(hk_dma_dev_view(dev, rw), addr, 24);
out_unlock:
	mutex_unlock(&hd->hn.lock);
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_EXPECT_EQ(test, hk_user_check(addr, PAGE_SIZE, 24), 0);
}

/*
 * An invalidation unmaps exactly the entries it covers; the pages left
 * mapped keep working, and the unmapped ones map again after a new fault.
 */
static void hmm_dma_test_invalidate(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;
	struct device *dev = hk_dma_device(test);
	unsigned long addr, i, inval;
	struct hmm_range range;
	struct hk_dma_mirror *hd;
	unsigned long *pfns;
	dma_addr_t dma;
	int ret = 0;

	pfns = kunit_kcalloc(test, HK_NPAGES, sizeof(*pfns), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, pfns);
	addr = ctx->addr;
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 25), 0);
	hd = hk_dma_mirror_add(test, dev, addr, HK_NPAGES, NULL);

	hk_range_init(&range, pfns, addr, HK_NPAGES, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(&hd->hn, &range), 0);
	for (i = 0; i < HK_NPAGES; i++)
		KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, i, pfns[i],
						      &dma), 0);
	mutex_unlock(&hd->hn.lock);

	/* Unmap pages 4..7: only their entries go. */
	inval = atomic_read(&hd->hn.invalidations);
	KUNIT_ASSERT_EQ(test, vm_munmap(addr + 4 * PAGE_SIZE, 4 * PAGE_SIZE), 0);
	KUNIT_ASSERT_GT(test, atomic_read(&hd->hn.invalidations), (int)inval);

	mutex_lock(&hd->hn.lock);
	for (i = 0; i < HK_NPAGES; i++)
		KUNIT_EXPECT_EQ(test, hmm_dma_lookup(&hd->map, i, &dma),
				(i >= 4 && i < 8) ? -ENOENT : 0);
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, (unsigned long)HK_NPAGES - 4);
	KUNIT_EXPECT_TRUE(test, hk_dma_view_matches(hk_dma_dev_view(dev, dma),
						    addr + 15 * PAGE_SIZE, 25));
	mutex_unlock(&hd->hn.lock);

	/* The tail still maps and reads after a fresh fault. */
	hk_range_init(&range, pfns, addr + 8 * PAGE_SIZE, 8, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(&hd->hn, &range), 0);
	for (i = 0; i < 8; i++) {
		ret = hmm_dma_map_pfn(&hd->map, 8 + i, pfns[i], &dma);
		if (ret)
			break;
		KUNIT_EXPECT_TRUE(test, hk_dma_view_matches(hk_dma_dev_view(dev, dma),
							    addr + (8 + i) * PAGE_SIZE,
							25));
	}
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, (unsigned long)HK_NPAGES - 4);
	mutex_unlock(&hd->hn.lock);
	KUNIT_ASSERT_EQ(test, ret, 0);
}

/*
 * A PMD-mapped THP inside the range is mapped once, at its order, when the
 * device takes mappings that large; every entry inside returns base plus
 * offset, and unmapping any of them drops the whole mapping.  A THP only
 * partly inside the range is mapped page by page.
 */
static void hmm_dma_test_thp(struct kunit *test)
{
#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST)
	struct device *dev = hk_dma_device(test);
	unsigned long npages = HPAGE_PMD_NR, addr, thp, i;
	bool huge = dma_max_mapping_size(dev) >= HPAGE_PMD_SIZE;
	int want = huge ? HPAGE_PMD_ORDER : 0;
	struct hmm_range range;
	struct hk_dma_mirror *hd, *part;
	unsigned long *pfns;
	dma_addr_t base = 0, dma;

	if (!has_transparent_hugepage())
		kunit_skip(test, "CPU has no PMD-sized transparent huge pages");
	pfns = kunit_kcalloc(test, npages, sizeof(*pfns), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, pfns);
	addr = hk_map(test, 2 * HPAGE_PMD_SIZE, PROT_READ | PROT_WRITE);
	thp = ALIGN(addr, HPAGE_PMD_SIZE);
	KUNIT_ASSERT_EQ(test, hk_madvise_hugepage(current->mm, thp), 0);
	hd = hk_dma_mirror_add(test, dev, thp, npages, NULL);

	KUNIT_ASSERT_EQ(test, hk_user_fill(thp, HPAGE_PMD_SIZE, 27), 0);
	hk_range_init(&range, pfns, thp, npages,
		      HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
	KUNIT_ASSERT_EQ(test, hk_fault(&hd->hn, &range), 0);
	if (hmm_pfn_to_map_order(pfns[0]) != HPAGE_PMD_ORDER) {
		mutex_unlock(&hd->hn.lock);
		kunit_skip(test, "kernel gave no THP (sysfs policy or allocation)");
	}

	/* Start in the middle: the mapping still begins at entry 0. */
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, 100, pfns[100], &dma),
			want);
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, 1UL);
	for (i = 0; i < npages; i++) {
		if (hmm_dma_map_pfn(&hd->map, i, pfns[i], &dma) != want ||
		    (huge && i && dma != base + i * PAGE_SIZE)) {
			KUNIT_FAIL(test, "entry %lu: wrong order or address", i);
			break;
		}
		if (!i)
			base = dma;
	}
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, huge ? 1UL : npages);
	for (i = 0; i < npages; i += 97) {
		if (hmm_dma_lookup(&hd->map, i, &dma) != want) {
			KUNIT_FAIL(test, "entry %lu not mapped at order %d", i,
				   want);
			break;
		}
		KUNIT_EXPECT_TRUE(test, hk_dma_view_matches(hk_dma_dev_view(dev, dma),
							    thp + i * PAGE_SIZE,
							27));
		hk_dma_view_fill(hk_dma_dev_view(dev, dma), thp + i * PAGE_SIZE, 28);
	}
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_pfn(&hd->map, 300), 1UL);
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, huge ? 0UL : npages - 1);
	KUNIT_EXPECT_EQ(test, hmm_dma_lookup(&hd->map, 0, &dma),
			huge ? -ENOENT : 0);
	mutex_unlock(&hd->hn.lock);
	for (i = 0; i < npages; i += 97)
		KUNIT_EXPECT_EQ(test, hk_user_check(thp + i * PAGE_SIZE,
						    PAGE_SIZE, 28), 0);

	/* Only half of the THP in the range: page by page. */
	part = hk_dma_mirror_add(test, dev, thp + HPAGE_PMD_SIZE / 2, npages / 2,
				 NULL);
	hk_range_init(&range, pfns, thp + HPAGE_PMD_SIZE / 2, npages / 2,
		      HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(&part->hn, &range), 0);
	KUNIT_EXPECT_EQ(test, hmm_pfn_to_map_order(pfns[0]),
			(unsigned int)HPAGE_PMD_ORDER);
	for (i = 0; i < npages / 2; i++)
		KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&part->map, i, pfns[i],
						      &dma), 0);
	KUNIT_EXPECT_EQ(test, part->map.nr_mappings, npages / 2);
	mutex_unlock(&part->hn.lock);
#else
	kunit_skip(test, "setting VM_HUGEPAGE needs the test built in");
#endif
}

/* Bad input gets an errno, never a warning, and changes nothing. */
static void hmm_dma_test_bad_input(struct kunit *test)
{
	struct device *dev = hk_dma_device(test);
	struct device *nomask;
	struct hmm_dma_map map;
	unsigned long addr, pfn;
	struct hmm_range range;
	struct hk_dma_mirror *hd;
	dma_addr_t dma = 0;
	int ret;

	/* KUnit devices get a 32-bit mask; this one must have none. */
	nomask = kunit_device_register(test, "hmm_dma_kunit_nomask");
	KUNIT_ASSERT_FALSE(test, IS_ERR(nomask));
	nomask->dma_mask = NULL;
	KUNIT_EXPECT_EQ(test, hmm_dma_map_init(&map, NULL, 4, NULL, NULL),
			-EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_init(&map, nomask, 4, NULL, NULL),
			-EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_init(&map, dev, 0, NULL, NULL),
			-EINVAL);
	/* A failed init leaves a state that every call refuses. */
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&map, 0, HMM_PFN_VALID, &dma),
			-EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_all(&map), 0UL);
	hmm_dma_map_destroy(&map);

	addr = hk_map(test, PAGE_SIZE, PROT_READ | PROT_WRITE);
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, PAGE_SIZE, 29), 0);
	hd = hk_dma_mirror_add(test, dev, addr, 1, NULL);
	hk_range_init(&range, &pfn, addr, 1, HMM_PFN_REQ_FAULT);
	KUNIT_ASSERT_EQ(test, hk_fault(&hd->hn, &range), 0);

	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, 1, pfn, &dma), -EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, ULONG_MAX, pfn, &dma),
			-EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, 0,
					      pfn & ~HMM_PFN_VALID, &dma),
			-EFAULT);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, 0, 0, &dma), -EFAULT);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, 0,
					      pfn | HMM_PFN_ERROR, &dma),
			-EFAULT);
	/* A pfn with no memory behind it. */
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&hd->map, 0, HMM_PFN_VALID |
					      ((1UL << (MAX_PHYSMEM_BITS -
							PAGE_SHIFT)) - 1), &dma),
			-EINVAL);
	KUNIT_EXPECT_EQ(test, hd->map.nr_mappings, 0UL);
	KUNIT_EXPECT_EQ(test, hmm_dma_lookup(&hd->map, 0, &dma), -ENOENT);
	KUNIT_EXPECT_EQ(test, hmm_dma_lookup(&hd->map, 7, &dma), -EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_range(&hd->map, 5, 10), 0UL);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_pfn(&hd->map, 0), 0UL);

	/* And the state still works. */
	ret = hmm_dma_map_pfn(&hd->map, 0, pfn, &dma);
	if (!ret)
		KUNIT_EXPECT_TRUE(test, hk_dma_view_matches(hk_dma_dev_view(dev, dma),
							    addr, 29));
	mutex_unlock(&hd->hn.lock);
	KUNIT_ASSERT_EQ(test, ret, 0);
}

#ifdef CONFIG_DEVICE_PRIVATE
static void hk_dma_private_page_free(struct page *page)
{
}

static vm_fault_t hk_dma_private_migrate_to_ram(struct vm_fault *vmf)
{
	return VM_FAULT_SIGBUS;
}

static const struct dev_pagemap_ops hk_dma_private_ops = {
	.page_free	= hk_dma_private_page_free,
	.migrate_to_ram	= hk_dma_private_migrate_to_ram,
};

static void hk_dma_private_remove(void *data)
{
	struct dev_pagemap *pgmap = data;

	memunmap_pages(pgmap);
	release_mem_region(pgmap->range.start, range_len(&pgmap->range));
}
#endif

/*
 * Device-private pages cannot be DMA-mapped: the map owner's own are
 * reported as local memory, anybody else's are refused.  Nothing mapped.
 */
static void hmm_dma_test_device_private(struct kunit *test)
{
#ifdef CONFIG_DEVICE_PRIVATE
	static int owner_a, owner_b;
	struct device *dev = hk_dma_device(test);
	struct hmm_dma_map mine, theirs;
	struct dev_pagemap *pgmap;
	struct resource *res;
	unsigned long hpfn;
	dma_addr_t dma = 0;
	void *ptr;

	pgmap = kunit_kzalloc(test, sizeof(*pgmap), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, pgmap);
	res = request_free_mem_region(&iomem_resource, SZ_2M, "hmm_dma_kunit");
	if (IS_ERR(res))
		kunit_skip(test, "no free physical range for device memory");
	pgmap->type = MEMORY_DEVICE_PRIVATE;
	pgmap->range.start = res->start;
	pgmap->range.end = res->end;
	pgmap->nr_range = 1;
	pgmap->ops = &hk_dma_private_ops;
	pgmap->owner = &owner_a;
	ptr = memremap_pages(pgmap, NUMA_NO_NODE);
	if (IS_ERR(ptr)) {
		release_mem_region(res->start, resource_size(res));
		KUNIT_FAIL(test, "memremap_pages: %ld", PTR_ERR(ptr));
		return;
	}
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, hk_dma_private_remove,
							pgmap), 0);

	hpfn = PHYS_PFN(res->start + 5 * PAGE_SIZE) | HMM_PFN_VALID |
	       HMM_PFN_WRITE;
	KUNIT_ASSERT_EQ(test, hmm_dma_map_init(&mine, dev, 4, &owner_a, NULL),
			0);
	KUNIT_ASSERT_EQ(test, hmm_dma_map_init(&theirs, dev, 4, &owner_b,
					       NULL), 0);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&mine, 1, hpfn, &dma),
			HMM_DMA_LOCAL);
	KUNIT_EXPECT_EQ(test, dma, (dma_addr_t)0);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&theirs, 1, hpfn, &dma), -EXDEV);
	KUNIT_EXPECT_EQ(test, mine.nr_mappings + theirs.nr_mappings, 0UL);
	KUNIT_EXPECT_EQ(test, hmm_dma_lookup(&mine, 1, &dma), -ENOENT);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_all(&mine), 0UL);
	hmm_dma_map_destroy(&mine);
	hmm_dma_map_destroy(&theirs);
	hmm_dma_map_destroy(&theirs);
#else
	kunit_skip(test, "CONFIG_DEVICE_PRIVATE is off");
#endif
}

static void hk_dma_page_free(void *page)
{
	__free_page(page);
}

/* A zeroed page, freed with the case; *@hpfn as hmm_range_fault() names it. */
static struct page *hk_dma_page(struct kunit *test, unsigned long *hpfn)
{
	struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);

	KUNIT_ASSERT_NOT_NULL(test, page);
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, hk_dma_page_free,
							page), 0);
	*hpfn = page_to_pfn(page) | HMM_PFN_VALID | HMM_PFN_WRITE;
	return page;
}

/*
 * A device whose DMA mask does not cover all memory would have its pages
 * bounced (dma_addressing_limited()), and a bounce buffer undoes the CPU
 * stores made to a mirrored page while it is mapped: init refuses it.  The
 * refused state is as empty as after any failed init, and argument errors
 * still come first.
 */
static void hmm_dma_test_refuse_limited(struct kunit *test)
{
	struct device *dev = kunit_device_register(test, "hmm_dma_kunit_32bit");
	struct hmm_dma_map map;
	unsigned long hpfn;
	dma_addr_t dma = 0;

	KUNIT_ASSERT_FALSE(test, IS_ERR(dev));
	KUNIT_ASSERT_EQ(test, dma_coerce_mask_and_coherent(dev,
							   DMA_BIT_MASK(32)), 0);
	if (!dma_addressing_limited(dev))
		kunit_skip(test, "all memory is below 4 GiB: nothing to bounce");
	hk_dma_page(test, &hpfn);

	KUNIT_EXPECT_EQ(test, hmm_dma_map_init(&map, dev, 4, NULL, NULL),
			-EOPNOTSUPP);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&map, 0, hpfn, &dma), -EINVAL);
	KUNIT_EXPECT_EQ(test, dma, (dma_addr_t)0);
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_all(&map), 0UL);
	hmm_dma_map_destroy(&map);
	KUNIT_EXPECT_EQ(test, hmm_dma_map_init(&map, dev, 0, NULL, NULL),
			-EINVAL);
}

/*
 * Under swiotlb=force every mapping of a dma-direct device bounces, so
 * init refuses even a coherent device with a 64-bit mask.  Without it the
 * same device is accepted and reaches the page itself: CPU stores made
 * after the mapping and device stores to another part of the page are
 * both seen by the other side with no sync at all, and unmapping copies
 * nothing.
 */
static void hmm_dma_test_refuse_bounce(struct kunit *test)
{
	struct device *dev = kunit_device_register(test, "hmm_dma_kunit_bounce");
	const size_t half = PAGE_SIZE / 2, cpu_bytes = 101;
	struct hmm_dma_map map;
	unsigned long hpfn;
	dma_addr_t dma = 0;
	struct page *page;
	u8 *cpu, *view;
	int ret;

	KUNIT_ASSERT_FALSE(test, IS_ERR(dev));
	KUNIT_ASSERT_EQ(test, dma_coerce_mask_and_coherent(dev,
							   DMA_BIT_MASK(64)), 0);
	if (get_dma_ops(dev))
		kunit_skip(test, "device is behind an IOMMU, not dma-direct");
	page = hk_dma_page(test, &hpfn);
	cpu = page_address(page);

	ret = hmm_dma_map_init(&map, dev, 1, NULL, NULL);
	if (is_swiotlb_force_bounce(dev)) {
		KUNIT_EXPECT_EQ(test, ret, -EOPNOTSUPP);
		KUNIT_EXPECT_EQ(test, hmm_dma_map_pfn(&map, 0, hpfn, &dma),
				-EINVAL);
		KUNIT_EXPECT_EQ(test, dma, (dma_addr_t)0);
		hmm_dma_map_destroy(&map);
		KUNIT_EXPECT_TRUE(test, !memchr_inv(cpu, 0, PAGE_SIZE));
		return;
	}
	KUNIT_ASSERT_EQ(test, ret, 0);
	ret = hmm_dma_map_pfn(&map, 0, hpfn, &dma);
	/* The stores below go where the address leads: check it first. */
	if (ret || dma_to_phys(dev, dma) != page_to_phys(page)) {
		hmm_dma_map_destroy(&map);
		KUNIT_FAIL(test, "hmm_dma_map_pfn() %d, %pad is not the page",
			   ret, &dma);
		return;
	}
	view = hk_dma_dev_view(dev, dma);
	memset(cpu, 0xc1, cpu_bytes);
	memset(view + half, 0xd2, half);
	KUNIT_EXPECT_TRUE(test, !memchr_inv(view, 0xc1, cpu_bytes));
	KUNIT_EXPECT_TRUE(test, !memchr_inv(cpu + half, 0xd2, half));
	KUNIT_EXPECT_EQ(test, hmm_dma_unmap_all(&map), 1UL);
	hmm_dma_map_destroy(&map);
	KUNIT_EXPECT_TRUE(test, !memchr_inv(cpu, 0xc1, cpu_bytes));
	KUNIT_EXPECT_TRUE(test, !memchr_inv(cpu + cpu_bytes, 0,
					    half - cpu_bytes));
	KUNIT_EXPECT_TRUE(test, !memchr_inv(cpu + half, 0xd2, half));
}

static struct kunit_case hmm_dma_test_cases[] = {
	KUNIT_CASE(hmm_dma_test_map_read_write),
	KUNIT_CASE(hmm_dma_test_write_upgrade),
	KUNIT_CASE(hmm_dma_test_invalidate),
	KUNIT_CASE(hmm_dma_test_thp),
	KUNIT_CASE(hmm_dma_test_bad_input),
	KUNIT_CASE(hmm_dma_test_device_private),
	KUNIT_CASE(hmm_dma_test_refuse_limited),
	KUNIT_CASE(hmm_dma_test_refuse_bounce),
	{}
};

/* The mirrors are the notifiers here: hk_dma_mirror_add() registers them. */
static int hmm_dma_test_init(struct kunit *test)
{
	return hk_ctx_init(test, HK_SIZE, false);
}

static struct kunit_suite hmm_dma_test_suite = {
	.name = "hmm_dma",
	.init = hmm_dma_test_init,
	.test_cases = hmm_dma_test_cases,
};

kunit_test_suite(hmm_dma_test_suite);

MODULE_DESCRIPTION("KUnit tests for the HMM DMA mapping helpers");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);
