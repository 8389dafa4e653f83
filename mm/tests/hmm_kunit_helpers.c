// SPDX-License-Identifier: GPL-2.0-only
/*
 * Helpers shared by the HMM KUnit suites of mm/tests: the data pattern
 * both sides of a check use, the test's user mappings, a driver-like
 * interval notifier with its retry loop, and device-private memory for
 * the migration and device-lock suites.
 *
 * Every check goes both ways: a pattern written through the user mapping
 * is read back through the pfns HMM returned (kmap_local_page()), and
 * the other way round.
 */

#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/ioport.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "../internal.h"
#include "hmm_kunit_helpers.h"

/**
 * hk_pattern() - The expected content of one word of a test page.
 * @addr: user address of the page.
 * @word: index of the 64-bit word in the page.
 * @tag: what the case calls this generation of data.
 *
 * Context: Any context.
 * Return: the value of word @word of the page at @addr filled with @tag.
 */
u64 hk_pattern(unsigned long addr, unsigned int word, u64 tag)
{
	return tag ^ addr ^ ((u64)word << 32) ^ 0x9e3779b97f4a7c15ULL;
}
EXPORT_SYMBOL_IF_KUNIT(hk_pattern);

/**
 * hk_fill_page() - Fill a page through its kernel mapping.
 * @page: the page, as a device would reach it.
 * @addr: user address the page is mapped at.
 * @tag: generation of the data.
 *
 * Context: Process context.
 */
void hk_fill_page(struct page *page, unsigned long addr, u64 tag)
{
	u64 *p = kmap_local_page(page);
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / sizeof(u64); i++)
		p[i] = hk_pattern(addr, i, tag);
	kunmap_local(p);
}
EXPORT_SYMBOL_IF_KUNIT(hk_fill_page);

/**
 * hk_check_page() - Check a page through its kernel mapping.
 * @page: the page, as a device would reach it.
 * @addr: user address the page is mapped at.
 * @tag: generation of the data it must hold.
 *
 * Context: Process context.
 * Return: true if every word of @page holds hk_pattern(@addr, word, @tag).
 */
bool hk_check_page(struct page *page, unsigned long addr, u64 tag)
{
	u64 *p = kmap_local_page(page);
	bool ok = true;
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / sizeof(u64) && ok; i++)
		ok = p[i] == hk_pattern(addr, i, tag);
	kunmap_local(p);
	return ok;
}
EXPORT_SYMBOL_IF_KUNIT(hk_check_page);

/**
 * hk_page_is_zero() - Check that a page holds only zeroes.
 * @page: the page.
 *
 * Context: Process context.
 * Return: true if every byte of @page is zero.
 */
bool hk_page_is_zero(struct page *page)
{
	void *p = kmap_local_page(page);
	bool zero = !memchr_inv(p, 0, PAGE_SIZE);

	kunmap_local(p);
	return zero;
}
EXPORT_SYMBOL_IF_KUNIT(hk_page_is_zero);

/**
 * hk_user_fill() - Write the pattern through the user mapping, as the CPU.
 * @addr: page-aligned user address.
 * @size: bytes to write, a multiple of PAGE_SIZE.
 * @tag: generation of the data.
 *
 * Context: Process context of the test thread, which may fault.
 * Return: 0, -ENOMEM without a bounce buffer, -EFAULT if a store faulted.
 */
int hk_user_fill(unsigned long addr, unsigned long size, u64 tag)
{
	u64 *buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	unsigned long off;
	unsigned int i;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (off = 0; off < size && !ret; off += PAGE_SIZE) {
		for (i = 0; i < PAGE_SIZE / sizeof(u64); i++)
			buf[i] = hk_pattern(addr + off, i, tag);
		if (copy_to_user((void __user *)(addr + off), buf, PAGE_SIZE))
			ret = -EFAULT;
	}
	kfree(buf);
	return ret;
}
EXPORT_SYMBOL_IF_KUNIT(hk_user_fill);

/**
 * hk_user_check() - Check the pattern through the user mapping, as the CPU.
 * @addr: page-aligned user address.
 * @size: bytes to check, a multiple of PAGE_SIZE.
 * @tag: generation of the data it must hold.
 *
 * Context: Process context of the test thread, which may fault.
 * Return: 0 if the range holds the pattern, -EIO if a word differs,
 * -ENOMEM without a bounce buffer, -EFAULT if a load faulted.
 */
int hk_user_check(unsigned long addr, unsigned long size, u64 tag)
{
	u64 *buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	unsigned long off;
	unsigned int i;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (off = 0; off < size && !ret; off += PAGE_SIZE) {
		if (copy_from_user(buf, (void __user *)(addr + off),
				   PAGE_SIZE)) {
			ret = -EFAULT;
			break;
		}
		for (i = 0; i < PAGE_SIZE / sizeof(u64); i++)
			if (buf[i] != hk_pattern(addr + off, i, tag))
				ret = -EIO;
	}
	kfree(buf);
	return ret;
}
EXPORT_SYMBOL_IF_KUNIT(hk_user_check);

/**
 * hk_map() - Map anonymous private memory into the test's address space.
 * @test: the running case; the mapping goes away with its mm.
 * @size: length of the mapping.
 * @prot: PROT_* of the mapping.
 *
 * Context: Process context of the test thread; asserts on failure.
 * Return: the address of the new mapping.
 */
unsigned long hk_map(struct kunit *test, unsigned long size,
		     unsigned long prot)
{
	unsigned long addr;

	addr = kunit_vm_mmap(test, NULL, 0, size, prot,
			     MAP_ANONYMOUS | MAP_PRIVATE, 0);
	KUNIT_ASSERT_FALSE_MSG(test, !addr || IS_ERR_VALUE(addr),
			       "vm_mmap failed: %ld", (long)addr);
	KUNIT_ASSERT_NOT_NULL(test, current->mm);
	return addr;
}
EXPORT_SYMBOL_IF_KUNIT(hk_map);

static bool hk_invalidate(struct mmu_interval_notifier *mni,
			  const struct mmu_notifier_range *range,
			  unsigned long cur_seq)
{
	struct hk_notifier *hn = container_of(mni, struct hk_notifier,
					      notifier);

	if (mmu_notifier_range_blockable(range))
		mutex_lock(&hn->lock);
	else if (!mutex_trylock(&hn->lock))
		return false;
	mmu_interval_set_seq(mni, cur_seq);
	atomic_inc(&hn->invalidations);
	mutex_unlock(&hn->lock);
	return true;
}

static const struct mmu_interval_notifier_ops hk_notifier_ops = {
	.invalidate = hk_invalidate,
};

static void hk_notifier_remove(void *data)
{
	struct hk_notifier *hn = data;

	mmu_interval_notifier_remove(&hn->notifier);
	kfree(hn);
}

/**
 * hk_notifier_add() - Register a driver-like interval notifier.
 * @test: the running case; the notifier is removed when it ends.
 * @start: first address the notifier covers.
 * @size: length of the range it covers.
 *
 * Context: Process context of the test thread; asserts on failure.
 * Return: the notifier, registered on current->mm.
 */
struct hk_notifier *hk_notifier_add(struct kunit *test,
				    unsigned long start,
					   unsigned long size)
{
	struct hk_notifier *hn;
	int ret;

	hn = kzalloc(sizeof(*hn), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, hn);
	mutex_init(&hn->lock);
	ret = mmu_interval_notifier_insert(&hn->notifier, current->mm, start,
					   size, &hk_notifier_ops);
	if (ret)
		kfree(hn);
	KUNIT_ASSERT_EQ(test, ret, 0);
	ret = kunit_add_action_or_reset(test, hk_notifier_remove, hn);
	KUNIT_ASSERT_EQ(test, ret, 0);
	return hn;
}
EXPORT_SYMBOL_IF_KUNIT(hk_notifier_add);

/**
 * hk_fault() - The driver retry loop around hmm_range_fault().
 * @hn: the notifier covering @range; its lock is the "page table" lock.
 * @range: the request; its notifier fields are filled in here.
 *
 * Retries -EBUSY, as Documentation/mm/hmm.rst tells drivers to, until
 * the snapshot is current under @hn->lock or HK_TIMEOUT_MS have passed.
 * A case must not assert while it holds @hn->lock: the case would end
 * with the lock held and the munmap of its mm would wait for it forever.
 * Nor should it fail an expectation there: the report allocates, and
 * reclaim may invalidate, which takes @hn->lock.  Compare plain values
 * under the lock and check them after dropping it.
 *
 * Context: Process context, mmap lock not held.  On success returns with
 * @hn->lock held; range->hmm_pfns is valid until the caller drops it.
 * Return: 0 with @hn->lock held, or hmm_range_fault()'s error (-EBUSY if
 * invalidations never stopped) with the lock not held.
 */
int hk_fault(struct hk_notifier *hn, struct hmm_range *range)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HK_TIMEOUT_MS);
	struct mm_struct *mm = hn->notifier.mm;
	int ret;

	range->notifier = &hn->notifier;
	do {
		range->notifier_seq = mmu_interval_read_begin(&hn->notifier);
		mmap_read_lock(mm);
		ret = hmm_range_fault(range);
		mmap_read_unlock(mm);
		if (!ret) {
			mutex_lock(&hn->lock);
			if (!mmu_interval_read_retry(&hn->notifier,
						     range->notifier_seq))
				return 0;
			mutex_unlock(&hn->lock);
			ret = -EBUSY;
		}
	} while (ret == -EBUSY && !time_after(jiffies, timeout));
	return ret;
}
EXPORT_SYMBOL_IF_KUNIT(hk_fault);

/**
 * hk_range_init() - Set up a request for hmm_range_fault().
 * @range: the request to initialise; the notifier is left to the caller.
 * @pfns: output (and per-page input) array of @npages entries.
 * @start: first address.
 * @npages: number of pages.
 * @default_flags: HMM_PFN_REQ_* for every page.
 *
 * Context: Any context.
 */
void hk_range_init(struct hmm_range *range, unsigned long *pfns,
		   unsigned long start, unsigned long npages,
		   unsigned long default_flags)
{
	memset(range, 0, sizeof(*range));
	range->start = start;
	range->end = start + npages * PAGE_SIZE;
	range->hmm_pfns = pfns;
	range->default_flags = default_flags;
}
EXPORT_SYMBOL_IF_KUNIT(hk_range_init);

/**
 * hk_ctx_init() - Set up what most cases of a suite start from.
 * @test: the case about to run.
 * @size: length of the anonymous read-write mapping to create.
 * @notifier: whether to register an hk_notifier over it.
 *
 * The body of a suite's .init, as usercopy_test_init() does for
 * lib/usercopy_kunit.c: the mapping and the notifier go to a struct
 * hk_ctx in test->priv, and away with the case (the notifier through
 * its KUnit action, the mapping with the case's mm).
 *
 * Context: Process context of the test thread; asserts on failure.
 * Return: 0.
 */
int hk_ctx_init(struct kunit *test, unsigned long size, bool notifier)
{
	struct hk_ctx *ctx = kunit_kzalloc(test, sizeof(*ctx), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, ctx);
	ctx->size = size;
	ctx->addr = hk_map(test, size, PROT_READ | PROT_WRITE);
	if (notifier)
		ctx->hn = hk_notifier_add(test, ctx->addr, size);
	test->priv = ctx;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(hk_ctx_init);

/**
 * hk_ctx_exit() - Check how a case left what hk_ctx_init() set up.
 * @test: the case that ran.
 *
 * A case that returned with the notifier lock held would make the
 * cleanup's munmap wait for it forever: say so before that happens.
 *
 * Context: Process context (the KUnit cleanup).
 */
void hk_ctx_exit(struct kunit *test)
{
	struct hk_ctx *ctx = test->priv;

	if (ctx && ctx->hn)
		KUNIT_EXPECT_FALSE_MSG(test, mutex_is_locked(&ctx->hn->lock),
				       "case returned holding the notifier lock");
}
EXPORT_SYMBOL_IF_KUNIT(hk_ctx_exit);

#if IS_BUILTIN(CONFIG_HMM_KUNIT_TEST)
/**
 * hk_madvise_hugepage() - Ask for THPs in a VMA, as MADV_HUGEPAGE does.
 * @mm: the address space.
 * @addr: an address inside the VMA.
 *
 * Only for the built-in test: vm_flags_set() on another VMA is not a
 * module's business.
 *
 * Context: Process context; takes the mmap lock for writing.
 * Return: 0, or -EFAULT if no VMA holds @addr.
 */
int hk_madvise_hugepage(struct mm_struct *mm, unsigned long addr)
{
	struct vm_area_struct *vma;
	int ret = -EFAULT;

	mmap_write_lock(mm);
	vma = find_vma(mm, addr);
	if (vma && vma->vm_start <= addr) {
		vm_flags_set(vma, VM_HUGEPAGE);
		ret = 0;
	}
	mmap_write_unlock(mm);
	return ret;
}
EXPORT_SYMBOL_IF_KUNIT(hk_madvise_hugepage);
#endif

/**
 * hk_migrate_setup() - migrate_vma_setup() of HK_MIG_NPAGES system pages.
 * @args: the migration to set up.
 * @addr: start of the range, in a VMA of current->mm.
 * @src: HK_MIG_NPAGES source entries.
 * @dst: HK_MIG_NPAGES destination entries.
 *
 * The caller holds the mmap lock, so this does not assert: the case
 * checks the result after unlocking.
 *
 * Context: Process context, mmap lock of current->mm held.
 * Return: 0, or migrate_vma_setup()'s -EINVAL (no VMA at @addr, a range
 * outside it) or -ENOMEM.
 */
int hk_migrate_setup(struct migrate_vma *args, unsigned long addr,
		     unsigned long *src, unsigned long *dst)
{
	mmap_assert_locked(current->mm);
	memset(args, 0, sizeof(*args));
	args->vma = vma_lookup(current->mm, addr);
	args->start = addr;
	args->end = addr + HK_MIG_NPAGES * PAGE_SIZE;
	args->src = src;
	args->dst = dst;
	args->flags = MIGRATE_VMA_SELECT_SYSTEM;
	return migrate_vma_setup(args);
}
EXPORT_SYMBOL_IF_KUNIT(hk_migrate_setup);

#ifdef CONFIG_DEVICE_PRIVATE
static struct hk_pgmap *hk_pgmap_of(struct page *page)
{
	return container_of(page->pgmap, struct hk_pgmap, pgmap);
}

static unsigned long hk_pgmap_idx(struct page *page)
{
	return page_to_pfn(page) - PHYS_PFN(page->pgmap->range.start);
}

static void hk_pgmap_page_free(struct page *page)
{
	atomic_inc(&hk_pgmap_of(page)->frees);
}

static vm_fault_t hk_pgmap_migrate_to_ram(struct vm_fault *vmf)
{
	return VM_FAULT_SIGBUS;
}

static int hk_pgmap_copy_to_ram(struct page *dpage, struct page *page)
{
	struct hk_pgmap *dm = hk_pgmap_of(dpage);

	copy_highpage(page, dm->backing[hk_pgmap_idx(dpage)]);
	atomic_inc(&dm->copies);
	return 0;
}

static const struct dev_pagemap_ops hk_pgmap_ops = {
	.page_free	= hk_pgmap_page_free,
	.migrate_to_ram	= hk_pgmap_migrate_to_ram,
	.copy_to_ram	= hk_pgmap_copy_to_ram,
};

static void hk_pgmap_remove(void *data)
{
	struct hk_pgmap *dm = data;
	unsigned int i;

	memunmap_pages(&dm->pgmap);
	release_mem_region(dm->pgmap.range.start, range_len(&dm->pgmap.range));
	for (i = 0; i < HK_MIG_NPAGES; i++)
		__free_page(dm->backing[i]);
}

/**
 * hk_pgmap_add() - Create device-private memory of HK_MIG_NPAGES pages.
 * @test: the running case; the memory goes away when it ends.
 * @owner: pgmap owner, as a driver passes it to migrate_vma_setup().
 *
 * Each device page keeps its data in a system page of @backing, which
 * copy_to_ram() copies from; page frees and copies are counted.
 *
 * Context: Process context; asserts on failure.
 * Return: the new device memory.
 */
struct hk_pgmap *hk_pgmap_add(struct kunit *test, void *owner)
{
	struct hk_pgmap *dm;
	struct resource *res;
	unsigned int i;
	void *ptr;

	dm = kunit_kzalloc(test, sizeof(*dm), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, dm);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		dm->backing[i] = alloc_page(GFP_KERNEL);
		KUNIT_ASSERT_NOT_NULL(test, dm->backing[i]);
	}
	res = request_free_mem_region(&iomem_resource, SZ_2M, "hk_pgmap");
	KUNIT_ASSERT_FALSE(test, IS_ERR(res));
	dm->pgmap.type = MEMORY_DEVICE_PRIVATE;
	dm->pgmap.range.start = res->start;
	dm->pgmap.range.end = res->end;
	dm->pgmap.nr_range = 1;
	dm->pgmap.ops = &hk_pgmap_ops;
	dm->pgmap.owner = owner;
	ptr = memremap_pages(&dm->pgmap, NUMA_NO_NODE);
	if (IS_ERR(ptr))
		release_mem_region(res->start, resource_size(res));
	KUNIT_ASSERT_FALSE(test, IS_ERR(ptr));
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, hk_pgmap_remove,
							dm), 0);
	return dm;
}
EXPORT_SYMBOL_IF_KUNIT(hk_pgmap_add);

/* Device page @i of @dm, allocated and locked as a driver would. */
static unsigned long hk_pgmap_alloc(struct hk_pgmap *dm, unsigned long i)
{
	struct page *page = pfn_to_page(PHYS_PFN(dm->pgmap.range.start) + i);

	zone_device_page_init(page);
	return migrate_pfn(page_to_pfn(page));
}

/**
 * hk_shmem_to_device() - Move HK_MIG_NPAGES pages to device memory.
 * @test: the running case.
 * @addr: start of the mapping, shmem or anonymous.
 * @dm: the device memory; page i goes to device page i.
 * @owner: @dm's pgmap owner.
 *
 * Every page must move; the data goes to @dm's backing pages.  Checks
 * under the mmap lock only expect; the assertions come after it.
 *
 * Context: Process context, mmap lock not held; asserts on failure.
 */
void hk_shmem_to_device(struct kunit *test, unsigned long addr,
			struct hk_pgmap *dm, void *owner)
{
	unsigned long src[HK_MIG_NPAGES], dst[HK_MIG_NPAGES], i;
	struct migrate_vma args;
	int ret, missing = 0;

	mmap_read_lock(current->mm);
	ret = hk_migrate_setup(&args, addr, src, dst);
	if (ret)
		goto out_unlock;
	args.pgmap_owner = owner;
	KUNIT_EXPECT_EQ(test, args.cpages, (unsigned long)HK_MIG_NPAGES);
	for (i = 0; i < HK_MIG_NPAGES; i++) {
		struct page *spage = migrate_pfn_to_page(src[i]);

		dst[i] = 0;
		if (!spage) {
			missing++;
			continue;
		}
		copy_highpage(dm->backing[i], spage);
		dst[i] = hk_pgmap_alloc(dm, i);
	}
	migrate_vma_pages(&args);
	for (i = 0; i < HK_MIG_NPAGES; i++)
		KUNIT_EXPECT_TRUE_MSG(test, src[i] & MIGRATE_PFN_MIGRATE,
				      "page %lu", i);
	migrate_vma_finalize(&args);
out_unlock:
	mmap_read_unlock(current->mm);
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_ASSERT_EQ_MSG(test, missing, 0, "pages not collected");
}
EXPORT_SYMBOL_IF_KUNIT(hk_shmem_to_device);

#endif /* CONFIG_DEVICE_PRIVATE */

MODULE_DESCRIPTION("Helpers shared by the HMM KUnit suites");
MODULE_LICENSE("GPL");
