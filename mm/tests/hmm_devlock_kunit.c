// SPDX-License-Identifier: GPL-2.0-only
/*
 * KUnit tests for device locks (mm/hmm_devlock.c): accounting and
 * refusals that need no device, and the page-free path with the pages of
 * a KUnit pgmap.  The SIGBUS, fork and release paths are covered with
 * real device-private pages by the hmm-tests selftests.
 */

#include <kunit/test.h>
#include <linux/cred.h>
#include <linux/hmm.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/sched/mm.h>
#include <linux/uaccess.h>

#include "hmm_kunit_helpers.h"

/* Run the rest of the case without CAP_IPC_LOCK, which lifts the limit. */
static const struct cred *hk_drop_ipc_lock(struct kunit *test)
{
	struct cred *cred = prepare_creds();

	KUNIT_ASSERT_NOT_NULL(test, cred);
	cap_lower(cred->cap_effective, CAP_IPC_LOCK);
	return override_creds(cred);
}

static void hk_restore_creds(const struct cred *old)
{
	const struct cred *cred = current_cred();

	revert_creds(old);
	put_cred(cred);
}

static void hmm_devlock_test_charge_limit(struct kunit *test)
{
	struct mm_struct *mm;
	const struct cred *old;
	s64 base;

	/* The suite's .init mapped memory: the case has its own mm. */
	mm = current->mm;
	KUNIT_ASSERT_NOT_NULL(test, mm);
	base = atomic64_read(&mm->pinned_vm);

	old = hk_drop_ipc_lock(test);
	KUNIT_EXPECT_EQ(test, hmm_devlock_charge(mm, 4, base + 4), 0);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base + 4);
	/* Over the limit: refused, and nothing is left charged. */
	KUNIT_EXPECT_EQ(test, hmm_devlock_charge(mm, 1, base + 4), -ENOMEM);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base + 4);
	KUNIT_EXPECT_EQ(test, hmm_devlock_charge(mm, 0, 0), 0);
	hmm_devlock_uncharge(mm, 4);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base);
	hk_restore_creds(old);

	/* CAP_IPC_LOCK lifts the limit, as for mlock() and RDMA. */
	KUNIT_EXPECT_EQ(test, hmm_devlock_charge(mm, 8, base), 0);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base + 8);
	hmm_devlock_uncharge(mm, 8);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base);
}

/* System memory cannot be locked to a device; nothing gets charged. */
static void hmm_devlock_test_refusals(struct kunit *test)
{
	static int owner;
	struct hk_ctx *ctx = test->priv;
	unsigned long addr = ctx->addr;
	struct mm_struct *mm = current->mm;
	struct page *page;
	long pinned;
	s64 base;

	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_SIZE, 21), 0);
	base = atomic64_read(&mm->pinned_vm);

	mmap_read_lock(mm);
	KUNIT_EXPECT_EQ(test, hmm_devlock_range(mm, addr, addr + HK_SIZE,
						&owner), -EFAULT);
	KUNIT_EXPECT_EQ(test, hmm_devlock_range(mm, addr, addr + HK_SIZE,
						NULL), -EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_devlock_range(mm, addr + 1, addr + HK_SIZE,
						&owner), -EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_devlock_range(mm, addr, addr, &owner),
			-EINVAL);
	KUNIT_EXPECT_EQ(test, hmm_devlock_range(mm, addr + HK_SIZE,
						addr + 2 * HK_SIZE, &owner),
			-EFAULT);
	KUNIT_EXPECT_EQ(test, hmm_devlock_unlock_range(mm, addr,
						       addr + HK_SIZE, &owner),
			0);
	mmap_read_unlock(mm);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base);

	/* An ordinary page is never reported locked; freeing it is a no-op. */
	mmap_read_lock(mm);
	pinned = get_user_pages(addr, 1, FOLL_WRITE, &page);
	mmap_read_unlock(mm);
	KUNIT_ASSERT_EQ(test, pinned, 1);
	KUNIT_EXPECT_FALSE(test, hmm_devlock_page_locked(page));
	hmm_devlock_page_free(page);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base);
	KUNIT_EXPECT_TRUE(test, hk_check_page(page, addr, 21));
	put_page(page);
}

/*
 * A locked page freed under a spinlock, as zap_pte_range() frees one under
 * the page table lock: the lock and its charge go at once, but the mm
 * reference of the lock is not dropped there.  If it were the last one,
 * __mmdrop() would run in that context, and it may IPI other CPUs and wait
 * (cleanup_lazy_tlbs()) or sleep.  The count is read inside the spinlock,
 * where this task is not switched out (a switch takes and drops lazy TLB
 * references on its mm).
 */
static void hmm_devlock_test_free_keeps_mm(struct kunit *test)
{
	static int owner;
	static DEFINE_SPINLOCK(ptl);
	unsigned long addr = hk_map(test, HK_MIG_NPAGES * PAGE_SIZE,
				    PROT_READ | PROT_WRITE);
	struct mm_struct *mm = current->mm;
	struct hk_pgmap *dm;
	struct page *dpage;
	int before, after;
	bool locked;
	s64 base;
	int ret;

	dm = hk_pgmap_add(test, &owner);
	KUNIT_ASSERT_EQ(test, hk_user_fill(addr, HK_MIG_NPAGES * PAGE_SIZE, 23),
			0);
	hk_shmem_to_device(test, addr, dm, &owner);
	dpage = pfn_to_page(PHYS_PFN(dm->pgmap.range.start));
	KUNIT_EXPECT_TRUE(test, hk_check_page(dm->backing[0], addr, 23));
	base = atomic64_read(&mm->pinned_vm);

	mmap_read_lock(mm);
	ret = hmm_devlock_range(mm, addr, addr + PAGE_SIZE, &owner);
	if (!ret)
		get_page(dpage);
	mmap_read_unlock(mm);
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_EXPECT_TRUE(test, hmm_devlock_page_locked(dpage));
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base + 1);

	/* Our reference is the last one on the page after this. */
	mmgrab(mm);
	KUNIT_ASSERT_EQ(test, vm_munmap(addr, HK_MIG_NPAGES * PAGE_SIZE), 0);
	KUNIT_EXPECT_EQ(test, atomic_read(&dm->frees), HK_MIG_NPAGES - 1);

	spin_lock(&ptl);
	before = atomic_read(&mm->mm_count);
	put_page(dpage);
	after = atomic_read(&mm->mm_count);
	locked = hmm_devlock_page_locked(dpage);
	spin_unlock(&ptl);

	KUNIT_EXPECT_EQ(test, atomic_read(&dm->frees), HK_MIG_NPAGES);
	KUNIT_EXPECT_FALSE(test, locked);
	KUNIT_EXPECT_EQ(test, atomic64_read(&mm->pinned_vm), base);
	KUNIT_EXPECT_EQ_MSG(test, after, before,
			    "mm reference dropped in page-free context");
	mmdrop(mm);
}

static struct kunit_case hmm_devlock_test_cases[] = {
	KUNIT_CASE(hmm_devlock_test_charge_limit),
	KUNIT_CASE(hmm_devlock_test_refusals),
	KUNIT_CASE(hmm_devlock_test_free_keeps_mm),
	{}
};

static int hmm_devlock_test_init(struct kunit *test)
{
	return hk_ctx_init(test, HK_SIZE, false);
}

static struct kunit_suite hmm_devlock_test_suite = {
	.name = "hmm_devlock",
	.init = hmm_devlock_test_init,
	.test_cases = hmm_devlock_test_cases,
};

kunit_test_suite(hmm_devlock_test_suite);

MODULE_DESCRIPTION("KUnit tests for device locks");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);
