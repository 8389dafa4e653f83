// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Locking device-private pages to their device.
 *
 * A CPU access to a device-private page normally migrates it back to
 * system memory through dev_pagemap_ops->migrate_to_ram().  A driver that
 * needs data to stay in device memory (a device working set it cannot
 * afford to lose, memory the CPU must never observe) locks the range with
 * hmm_devlock_range(): from then on a CPU fault on those pages ends in
 * SIGBUS instead of a migration, for every mapping of the page (a fork
 * child sharing it copy-on-write included), until hmm_devlock_unlock_range()
 * or until the page is freed.
 *
 * The lock belongs to the page, not to the virtual range: it is kept in a
 * core xarray indexed by pfn, so it follows the page through fork and
 * mremap and is dropped when the page is freed (munmap, exit, migration of
 * the page by its driver, eviction of the device memory), from
 * free_zone_device_folio().  Each entry names the owner record of the mm
 * that took the lock, which holds one mm reference for all its pages.
 *
 * Locked pages are charged to mm->pinned_vm of that mm (VmPin in
 * /proc/PID/status) and limited by RLIMIT_MEMLOCK of the locking task, as
 * for RDMA memory registration, so a process cannot use device memory to
 * escape its locked-memory limit.  CAP_IPC_LOCK lifts the limit.
 */
#include <linux/capability.h>
#include <linux/hmm.h>
#include <linux/llist.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/pagewalk.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/swap.h>
#include <linux/swapops.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>
#include <kunit/visibility.h>

/*
 * An mm that has pages locked, with one mmgrab() reference for all of
 * them.  @refs counts its entries in hmm_devlock_pages and the requests
 * using it.  When it drops to zero the mm reference is dropped from a work
 * item, never where it dropped: pages are freed under page table locks,
 * and the last mmdrop() runs __mmdrop(), which may IPI other CPUs and wait
 * for them (cleanup_lazy_tlbs()) or sleep.
 */
struct hmm_devlock_owner {
	struct mm_struct	*mm;
	atomic_long_t		refs;
	struct list_head	node;	/* on hmm_devlock_owners */
	struct llist_node	dead;	/* on hmm_devlock_dead */
};

/* pfn -> owner of the mm that locked the page. */
static DEFINE_XARRAY(hmm_devlock_pages);

/*
 * Serialises lock and unlock requests, so that checking a whole range and
 * then updating it is atomic for them, and protects hmm_devlock_owners.
 * Freeing a page does not take it: requests hold a reference on every page
 * they look at.
 */
static DEFINE_MUTEX(hmm_devlock_mutex);

/* Owners, live ones (refs > 0) and dead ones not yet reaped. */
static LIST_HEAD(hmm_devlock_owners);

/* Owners whose refs dropped to zero, for hmm_devlock_reaper. */
static LLIST_HEAD(hmm_devlock_dead);

static void hmm_devlock_reap(struct work_struct *work)
{
	struct llist_node *first = llist_del_all(&hmm_devlock_dead);
	struct hmm_devlock_owner *o, *next;

	llist_for_each_entry_safe(o, next, first, dead) {
		mutex_lock(&hmm_devlock_mutex);
		list_del(&o->node);
		mutex_unlock(&hmm_devlock_mutex);
		mmdrop(o->mm);
		kfree(o);
	}
}

static DECLARE_WORK(hmm_devlock_reaper, hmm_devlock_reap);

/*
 * The live owner of @mm with one more reference, created if there is none.
 * A dead owner of @mm (refs zero) has no pages left and is skipped.
 */
static struct hmm_devlock_owner *hmm_devlock_owner_get(struct mm_struct *mm)
{
	struct hmm_devlock_owner *o;

	lockdep_assert_held(&hmm_devlock_mutex);
	list_for_each_entry(o, &hmm_devlock_owners, node)
		if (o->mm == mm && atomic_long_inc_not_zero(&o->refs))
			return o;

	o = kzalloc(sizeof(*o), GFP_KERNEL);
	if (!o)
		return NULL;
	o->mm = mm;
	mmgrab(mm);
	atomic_long_set(&o->refs, 1);
	list_add(&o->node, &hmm_devlock_owners);
	return o;
}

/*
 * Drop @n references of @o.  Context: any, the page-free path included:
 * the last one only queues the owner for hmm_devlock_reaper.
 */
static void hmm_devlock_owner_put(struct hmm_devlock_owner *o, long n)
{
	if (!n || !atomic_long_sub_and_test(n, &o->refs))
		return;
	llist_add(&o->dead, &hmm_devlock_dead);
	schedule_work(&hmm_devlock_reaper);
}

/* Pages found in a range by hmm_devlock_collect(), each referenced. */
struct hmm_devlock_walk {
	void			*owner;
	bool			strict;	/* anything else is an error */
	unsigned long		nr;
	struct page		**pages;
};

/**
 * hmm_devlock_charge() - charge locked pages to an mm
 * @mm: the mm the pages are locked for
 * @npages: number of pages
 * @limit: limit in pages, normally RLIMIT_MEMLOCK of the caller
 *
 * Context: any; lockless (mm->pinned_vm is atomic).
 * Return: 0, or -ENOMEM with nothing charged if the charge would take
 * mm->pinned_vm over @limit and the caller lacks CAP_IPC_LOCK.
 */
VISIBLE_IF_KUNIT int hmm_devlock_charge(struct mm_struct *mm,
					unsigned long npages,
					unsigned long limit)
{
	s64 pinned;

	if (!npages)
		return 0;
	pinned = atomic64_add_return(npages, &mm->pinned_vm);
	if (pinned > limit && !capable(CAP_IPC_LOCK)) {
		atomic64_sub(npages, &mm->pinned_vm);
		return -ENOMEM;
	}
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(hmm_devlock_charge);

/**
 * hmm_devlock_uncharge() - undo hmm_devlock_charge()
 * @mm: the mm that was charged
 * @npages: number of pages
 *
 * Context: any; lockless.
 */
VISIBLE_IF_KUNIT void hmm_devlock_uncharge(struct mm_struct *mm,
					   unsigned long npages)
{
	atomic64_sub(npages, &mm->pinned_vm);
}
EXPORT_SYMBOL_IF_KUNIT(hmm_devlock_uncharge);

static int hmm_devlock_test_walk(unsigned long addr, unsigned long next,
				 struct mm_walk *walk)
{
	struct hmm_devlock_walk *w = walk->private;
	struct vm_area_struct *vma = walk->vma;

	/* Device-private pages only ever replace anonymous base pages. */
	if (is_vm_hugetlb_page(vma) || (vma->vm_flags & (VM_PFNMAP | VM_IO)))
		return w->strict ? -EFAULT : 1;
	return 0;
}

static int hmm_devlock_hole(unsigned long addr, unsigned long next,
			    int depth, struct mm_walk *walk)
{
	struct hmm_devlock_walk *w = walk->private;

	return w->strict ? -EFAULT : 0;
}

/* The device-private page of @owner that @pte maps, or NULL. */
static struct page *hmm_devlock_pte_page(pte_t pte, void *owner)
{
	swp_entry_t entry;
	struct page *page;

	if (pte_none(pte) || pte_present(pte))
		return NULL;
	entry = pte_to_swp_entry(pte);
	if (!is_device_private_entry(entry))
		return NULL;
	page = pfn_swap_entry_to_page(entry);
	return page->pgmap->owner == owner ? page : NULL;
}

/*
 * Take a reference on each device-private page of w->owner mapped by the
 * page table under @pmd.  A whole table is handled here, under its lock,
 * so that the walker never splits a huge PMD on our behalf.
 */
static int hmm_devlock_pmd(pmd_t *pmd, unsigned long addr, unsigned long end,
			   struct mm_walk *walk)
{
	struct hmm_devlock_walk *w = walk->private;
	pmd_t pmdval = pmdp_get_lockless(pmd);
	pte_t *ptep, *first;
	spinlock_t *ptl;	/* of the page table under @pmd */
	int ret = 0;

	walk->action = ACTION_CONTINUE;
	if (!pmd_present(pmdval) || pmd_trans_huge(pmdval) ||
	    pmd_devmap(pmdval))
		return w->strict ? -EFAULT : 0;

	first = pte_offset_map_lock(walk->mm, pmd, addr, &ptl);
	if (!first) {
		walk->action = ACTION_AGAIN;
		return 0;
	}
	for (ptep = first; addr < end; addr += PAGE_SIZE, ptep++) {
		struct page *page;

		page = hmm_devlock_pte_page(ptep_get(ptep), w->owner);
		if (!page) {
			if (w->strict) {
				ret = -EFAULT;
				break;
			}
			continue;
		}
		get_page(page);
		w->pages[w->nr++] = page;
	}
	pte_unmap_unlock(first, ptl);
	return ret;
}

static const struct mm_walk_ops hmm_devlock_walk_ops = {
	.test_walk	= hmm_devlock_test_walk,
	.pmd_entry	= hmm_devlock_pmd,
	.pte_hole	= hmm_devlock_hole,
	.walk_lock	= PGWALK_RDLOCK,
};

static void hmm_devlock_put_pages(struct hmm_devlock_walk *w)
{
	unsigned long i;

	for (i = 0; i < w->nr; i++)
		put_page(w->pages[i]);
	kvfree(w->pages);
}

/*
 * Reference the device-private pages of @owner in [start, end).  With
 * @strict, anything else in the range (system memory, another device's
 * memory, a hole) makes it fail with -EFAULT.
 */
static int hmm_devlock_collect(struct mm_struct *mm, unsigned long start,
			       unsigned long end, void *owner, bool strict,
			       struct hmm_devlock_walk *w)
{
	int ret;

	mmap_assert_locked(mm);
	if (!owner || start >= end || !PAGE_ALIGNED(start) ||
	    !PAGE_ALIGNED(end) || end > mm->task_size)
		return -EINVAL;

	w->owner = owner;
	w->strict = strict;
	w->nr = 0;
	/* A silly range is the caller's problem: -ENOMEM, not a warning. */
	w->pages = kvmalloc_array((end - start) >> PAGE_SHIFT,
				  sizeof(*w->pages),
				  GFP_KERNEL | __GFP_NOWARN);
	if (!w->pages)
		return -ENOMEM;

	ret = walk_page_range(mm, start, end, &hmm_devlock_walk_ops, w);
	if (ret) {
		hmm_devlock_put_pages(w);
		return ret;
	}
	return 0;
}

/* Drop the reservations of the first @n pages of @w that are ours. */
static void hmm_devlock_unreserve(struct hmm_devlock_walk *w, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++)
		xa_release(&hmm_devlock_pages, page_to_pfn(w->pages[i]));
}

/*
 * Lock the pages of @w for the mm of @owner, all or none.  Pages already
 * locked for that mm stay as they are and are not charged twice.  Each
 * page locked takes a reference on @owner.
 */
static int hmm_devlock_add(struct hmm_devlock_owner *owner,
			   struct hmm_devlock_walk *w)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	struct mm_struct *mm = owner->mm;
	unsigned long i, fresh = 0, stored = 0;
	int ret;

	lockdep_assert_held(&hmm_devlock_mutex);

	for (i = 0; i < w->nr; i++) {
		struct hmm_devlock_owner *cur;

		/* Our page reference keeps the entry, so its owner, alive. */
		cur = xa_load(&hmm_devlock_pages, page_to_pfn(w->pages[i]));
		if (cur && cur->mm != mm)
			return -EBUSY;
		if (!cur)
			fresh++;
	}

	ret = hmm_devlock_charge(mm, fresh, limit);
	if (ret)
		return ret;

	/* Make every store below infallible before changing anything. */
	for (i = 0; i < w->nr; i++) {
		unsigned long pfn = page_to_pfn(w->pages[i]);

		if (xa_load(&hmm_devlock_pages, pfn))
			continue;
		ret = xa_reserve(&hmm_devlock_pages, pfn, GFP_KERNEL);
		if (ret) {
			hmm_devlock_unreserve(w, i);
			hmm_devlock_uncharge(mm, fresh);
			return ret;
		}
	}

	/*
	 * Reserved slots read as NULL; storing into them cannot fail.  A
	 * page mapped twice in the range (shmem) was counted twice above.
	 */
	for (i = 0; i < w->nr; i++) {
		unsigned long pfn = page_to_pfn(w->pages[i]);

		if (xa_load(&hmm_devlock_pages, pfn))
			continue;
		xa_store(&hmm_devlock_pages, pfn, owner, GFP_KERNEL);
		stored++;
	}
	hmm_devlock_uncharge(mm, fresh - stored);
	atomic_long_add(stored, &owner->refs);
	return 0;
}

/**
 * hmm_devlock_range() - lock device-private pages to their device
 * @mm: the address space, whose mmap lock the caller holds
 * @start: first byte of the range, page aligned
 * @end: end of the range (exclusive), page aligned
 * @owner: the dev_pagemap owner of the caller's device memory, the value
 *	it passes as migrate_vma::pgmap_owner and hmm_range::dev_private_owner
 *
 * Every page of the range must already be in device-private memory of
 * @owner.  Once locked, a CPU access to such a page through any mapping
 * gets SIGBUS (si_code BUS_ADRERR, si_addr the faulting address) instead
 * of migrating the page back, and get_user_pages() or hmm_range_fault() on
 * it by anyone but @owner fail with -EFAULT.  The lock lasts until
 * hmm_devlock_unlock_range() or until the page is freed, whichever comes
 * first; the driver migrating or evicting the page frees it.
 *
 * The pages are charged to @mm->pinned_vm and limited by RLIMIT_MEMLOCK of
 * the calling task unless it has CAP_IPC_LOCK.  Locking a page already
 * locked for @mm again is a no-op.  Nothing is locked when an error is
 * returned.
 *
 * Context: process context, may sleep; mmap lock of @mm held (read or
 * write).
 * Return: 0 on success, or
 * -EINVAL if the range is empty, unaligned or beyond @mm's task size, or
 * @owner is NULL;
 * -EFAULT if a page of the range is not device-private memory of @owner
 * (not migrated, another device's, a hole or a special mapping);
 * -EBUSY if a page is locked for another mm (the parent of a fork child);
 * -ENOMEM if locking would exceed RLIMIT_MEMLOCK, or out of memory;
 * -EOPNOTSUPP without CONFIG_DEVICE_PRIVATE (the stub in <linux/hmm.h>).
 */
int hmm_devlock_range(struct mm_struct *mm, unsigned long start,
		      unsigned long end, void *owner)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	struct hmm_devlock_owner *o;
	struct hmm_devlock_walk w;
	int ret;

	/*
	 * Pages @mm already locked are in its pinned_vm, so a range larger
	 * than the limit can never fit: refuse it before allocating for it.
	 */
	if (end > start && ((end - start) >> PAGE_SHIFT) > limit &&
	    !capable(CAP_IPC_LOCK))
		return -ENOMEM;

	ret = hmm_devlock_collect(mm, start, end, owner, true, &w);
	if (ret)
		return ret;

	mutex_lock(&hmm_devlock_mutex);
	o = hmm_devlock_owner_get(mm);
	if (o) {
		ret = hmm_devlock_add(o, &w);
		hmm_devlock_owner_put(o, 1);
	} else {
		ret = -ENOMEM;
	}
	mutex_unlock(&hmm_devlock_mutex);

	hmm_devlock_put_pages(&w);
	return ret;
}
EXPORT_SYMBOL_GPL(hmm_devlock_range);

/**
 * hmm_devlock_unlock_range() - undo hmm_devlock_range()
 * @mm: the address space, whose mmap lock the caller holds
 * @start: first byte of the range, page aligned
 * @end: end of the range (exclusive), page aligned
 * @owner: the dev_pagemap owner given to hmm_devlock_range()
 *
 * Unlocks and uncharges the pages of the range that are locked for @mm.
 * Pages of the range that are not device-private memory of @owner, or not
 * locked, are skipped: they may have been freed or migrated meanwhile.
 * After this a CPU access migrates the pages back as usual.
 *
 * Context: process context, may sleep; mmap lock of @mm held.
 * Return: the number of pages unlocked, or
 * -EINVAL for a bad range or a NULL @owner;
 * -EPERM if a page of the range is locked for another mm (nothing is
 * unlocked then);
 * -ENOMEM if out of memory.
 */
long hmm_devlock_unlock_range(struct mm_struct *mm, unsigned long start,
			      unsigned long end, void *owner)
{
	struct hmm_devlock_walk w;
	unsigned long i, done = 0;
	long ret;

	ret = hmm_devlock_collect(mm, start, end, owner, false, &w);
	if (ret)
		return ret;

	mutex_lock(&hmm_devlock_mutex);
	for (i = 0; i < w.nr; i++) {
		struct hmm_devlock_owner *cur;

		cur = xa_load(&hmm_devlock_pages, page_to_pfn(w.pages[i]));
		if (cur && cur->mm != mm) {
			ret = -EPERM;
			goto unlock;
		}
	}
	/*
	 * The page references keep the entries; the mutex keeps an owner
	 * whose last page goes here from being reaped under us.
	 */
	for (i = 0; i < w.nr; i++) {
		struct hmm_devlock_owner *cur;

		cur = xa_erase(&hmm_devlock_pages, page_to_pfn(w.pages[i]));
		if (cur) {
			hmm_devlock_owner_put(cur, 1);
			done++;
		}
	}
	hmm_devlock_uncharge(mm, done);
	ret = done;
unlock:
	mutex_unlock(&hmm_devlock_mutex);
	hmm_devlock_put_pages(&w);
	return ret;
}
EXPORT_SYMBOL_GPL(hmm_devlock_unlock_range);

/**
 * hmm_devlock_page_locked() - is a device-private page locked to its device
 * @page: a device-private page the caller holds a reference on, or whose
 *	page table lock it holds
 *
 * Called by the fault path before migrate_to_ram(); drivers may use it to
 * report the state of their pages.
 *
 * Context: any.
 * Return: true if @page is locked by hmm_devlock_range().
 */
bool hmm_devlock_page_locked(const struct page *page)
{
	if (xa_empty(&hmm_devlock_pages))
		return false;
	return !!xa_load(&hmm_devlock_pages, page_to_pfn(page));
}
EXPORT_SYMBOL_GPL(hmm_devlock_page_locked);

/**
 * hmm_devlock_page_free() - a device-private page is being freed
 * @page: the page, whose last reference is gone
 *
 * Drops the lock of @page, if any, and uncharges the mm that took it.  The
 * reference on that mm is not dropped here: when this was the last locked
 * page of the mm, it is dropped later from a work item.
 * Called by free_zone_device_folio(); not for drivers.
 *
 * Context: any context a page can be freed in, a page table lock held
 * included; takes the xarray spinlock and may queue a work item, never
 * sleeps.
 */
void hmm_devlock_page_free(struct page *page)
{
	struct hmm_devlock_owner *o;

	if (xa_empty(&hmm_devlock_pages))
		return;
	o = xa_erase(&hmm_devlock_pages, page_to_pfn(page));
	if (!o)
		return;
	hmm_devlock_uncharge(o->mm, 1);
	hmm_devlock_owner_put(o, 1);
}
