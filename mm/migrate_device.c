// SPDX-License-Identifier: GPL-2.0
/*
 * Moving anonymous and shmem memory between system RAM and device memory.
 *
 * A migration runs in three calls so that the driver can do the copy
 * with its own engine in between:
 *
 *  setup     collect the source pages of a virtual range (or of a set of
 *            device pfns), lock them, replace every CPU mapping of them
 *            with a migration entry and make sure nobody else holds them.
 *            From then on their contents are stable and the driver copies.
 *  pages     point the struct page state (anon_vma, index, flags, memcg)
 *            at the destinations the driver filled in, and populate empty
 *            page-table slots with destinations directly.
 *  finalize  turn migration entries into mappings of the destination (or
 *            back into mappings of the source where migration failed) and
 *            release whichever side lost.
 *
 * Entries of the src/dst arrays use the migrate_pfn() encoding. An entry
 * in src with MIGRATE_PFN_MIGRATE and no page is an empty slot of an
 * anonymous mapping that the driver may fill with a fresh page.
 *
 * Only order-0 folios move. Large anonymous folios are split during
 * collection; a folio that cannot be split, locked or unmapped, or that
 * has extra references (GUP pins), stays where it is and its entry comes
 * back without MIGRATE_PFN_MIGRATE. Callers treat every entry as
 * best-effort and check the flag after each step.
 *
 * Pages of a shmem file move too. They are found through the page cache,
 * mapped or not, and unmapped everywhere rather than replaced by
 * migration entries. Device-coherent memory takes the folio's place in
 * the page cache. Device-private memory, only for drivers that implement
 * dev_pagemap_ops.copy_to_ram, is represented by a device-private entry
 * in the page cache, not by page table entries (see
 * shmem_folio_to_device()). Any access other than through a device
 * mirror then goes through shmem_get_folio_gfp(), which calls
 * migrate_device_file_fault() to copy it back; truncation drops it with
 * migrate_device_file_free(). Whenever such an entry leaves the page
 * cache, every mirror of the file is invalidated first, since
 * hmm_range_fault() reports the entry to its device without a PTE.
 */
#include <linux/export.h>
#include <linux/memcontrol.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mm_inline.h>
#include <linux/mmu_notifier.h>
#include <linux/oom.h>
#include <linux/pagemap.h>
#include <linux/pagewalk.h>
#include <linux/rmap.h>
#include <linux/shmem_fs.h>
#include <linux/swap.h>
#include <linux/swapops.h>
#include <linux/userfaultfd_k.h>
#include <asm/tlbflush.h>
#include "internal.h"

/*
 * PTEs detached under one page-table lock before a single TLB flush.
 * Sharing an anon-exclusive page must follow the flush (a GUP-fast pin
 * taken through a stale TLB entry is only visible afterwards), so the
 * detached PTEs are kept here until then.
 */
#define MIGRATE_VMA_BATCH	16

struct migrate_vma_detached {
	pte_t old;		/* the PTE as it was before ptep_get_and_clear() */
	unsigned long idx;	/* index into migrate_vma.src */
};

struct migrate_vma_batch {
	struct migrate_vma_detached ent[MIGRATE_VMA_BATCH];
	unsigned int nr;
	bool flush;		/* a present PTE was cleared */
};

static struct folio *migrate_device_folio(unsigned long mpfn)
{
	struct page *page = migrate_pfn_to_page(mpfn);

	return page ? page_folio(page) : NULL;
}

static unsigned long migrate_vma_index(const struct migrate_vma *args,
				       unsigned long addr)
{
	return (addr - args->start) >> PAGE_SHIFT;
}

/* Does the caller's selection cover this page? */
static bool migrate_vma_page_selected(const struct migrate_vma *args,
				      struct page *page)
{
	if (is_device_private_page(page))
		return (args->flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE) &&
		       page->pgmap->owner == args->pgmap_owner;
	if (is_device_coherent_page(page))
		return (args->flags & MIGRATE_VMA_SELECT_DEVICE_COHERENT) &&
		       page->pgmap->owner == args->pgmap_owner;
	if (is_zone_device_page(page))
		return false;
	return args->flags & MIGRATE_VMA_SELECT_SYSTEM;
}

/*
 * Pages of this vma are in a shmem file's page cache: tmpfs, memfd,
 * shared anonymous memory and SysV shared memory.
 */
static bool migrate_vma_is_shmem(struct vm_area_struct *vma)
{
	return shmem_file(vma->vm_file);
}

/* A page cache folio, not an anonymous one (which has ->mapping too). */
static bool migrate_device_folio_is_file(struct folio *folio)
{
	return folio->mapping && !folio_test_anon(folio);
}

/* A device may write what it got from a shared writable mapping only. */
static unsigned long migrate_vma_file_write(struct vm_area_struct *vma)
{
	if ((vma->vm_flags & (VM_SHARED | VM_WRITE)) == (VM_SHARED | VM_WRITE))
		return MIGRATE_PFN_WRITE;
	return 0;
}

/* The folio the page cache entry @entry stands for, if selected. */
static struct folio *migrate_vma_file_folio(const struct migrate_vma *args,
					    void *entry)
{
	struct page *page;
	swp_entry_t swp;

	if (!entry)
		return NULL;
	if (!xa_is_value(entry))
		return migrate_vma_page_selected(args, &((struct folio *)entry)->page) ?
		       entry : NULL;
	swp = radix_to_swp_entry(entry);
	if (!is_device_private_entry(swp))
		return NULL;
	page = pfn_swap_entry_to_page(swp);
	return migrate_vma_page_selected(args, page) ? page_folio(page) : NULL;
}

/*
 * Collect the folio @entry stands for at @index of @mapping, referenced
 * and locked, if it is still there once locked. Only small folios move,
 * and only uptodate ones: a fallocated folio has not been cleared yet.
 */
static struct folio *migrate_vma_file_grab(const struct migrate_vma *args,
					   struct address_space *mapping,
				    pgoff_t index, void *entry)
{
	struct folio *folio;

	rcu_read_lock();
	folio = migrate_vma_file_folio(args, entry);
	if (folio && !folio_try_get(folio))
		folio = NULL;
	rcu_read_unlock();
	if (!folio)
		return NULL;

	if (!folio_trylock(folio))
		goto put;
	if (xa_load(&mapping->i_pages, index) != entry ||
	    folio_test_large(folio) ||
	    (!folio_is_zone_device(folio) && !folio_test_uptodate(folio)))
		goto unlock;
	return folio;
unlock:
	folio_unlock(folio);
put:
	folio_put(folio);
	return NULL;
}

/*
 * A slot of a shmem mapping with nothing mapped: the page cache may still
 * hold a folio, or the entry of a page in device-private memory.
 */
static void migrate_vma_collect_file(struct migrate_vma *args, unsigned long addr)
{
	struct vm_area_struct *vma = args->vma;
	struct address_space *mapping = vma->vm_file->f_mapping;
	pgoff_t index = linear_page_index(vma, addr);
	struct folio *folio;

	folio = migrate_vma_file_grab(args, mapping, index,
				      xa_load(&mapping->i_pages, index));
	if (!folio)
		return;
	args->src[migrate_vma_index(args, addr)] = migrate_pfn(folio_pfn(folio)) |
					   MIGRATE_PFN_MIGRATE |
					   migrate_vma_file_write(vma);
	args->cpages++;
}

/*
 * Nothing mapped at @addr: anonymous mappings let the driver populate the
 * slot, shmem mappings look at their page cache.
 */
static void migrate_vma_collect_empty(struct migrate_vma *args, unsigned long addr)
{
	if (migrate_vma_is_shmem(args->vma)) {
		migrate_vma_collect_file(args, addr);
		return;
	}
	if (!vma_is_anonymous(args->vma))
		return;
	args->src[migrate_vma_index(args, addr)] = MIGRATE_PFN_MIGRATE;
	args->cpages++;
}

static int migrate_vma_collect_hole(unsigned long start, unsigned long end,
				    __always_unused int depth, struct mm_walk *walk)
{
	struct migrate_vma *args = walk->private;
	unsigned long addr;

	for (addr = start; addr < end; addr += PAGE_SIZE)
		migrate_vma_collect_empty(args, addr);
	return 0;
}

/*
 * Build the migration entry replacing @old, a present PTE or a
 * device-private entry of @page, keeping what the PTE knew about the
 * page: writability, exclusivity, young/dirty, soft-dirty and uffd-wp.
 */
static pte_t migrate_vma_migration_pte(struct page *page, pte_t old, bool exclusive)
{
	bool write, young = false, dirty = false, soft_dirty, uffd_wp;
	pgoff_t pfn = page_to_pfn(page);
	swp_entry_t entry;
	pte_t pte;

	if (pte_present(old)) {
		write = pte_write(old);
		young = pte_young(old);
		dirty = pte_dirty(old);
		soft_dirty = pte_soft_dirty(old);
		uffd_wp = pte_uffd_wp(old);
	} else {
		write = is_writable_device_private_entry(pte_to_swp_entry(old));
		soft_dirty = pte_swp_soft_dirty(old);
		uffd_wp = pte_swp_uffd_wp(old);
	}

	if (write)
		entry = make_writable_migration_entry(pfn);
	else if (exclusive)
		entry = make_readable_exclusive_migration_entry(pfn);
	else
		entry = make_readable_migration_entry(pfn);
	if (young)
		entry = make_migration_entry_young(entry);
	if (dirty)
		entry = make_migration_entry_dirty(entry);

	pte = swp_entry_to_pte(entry);
	if (soft_dirty)
		pte = pte_swp_mksoft_dirty(pte);
	if (uffd_wp)
		pte = pte_swp_mkuffd_wp(pte);
	return pte;
}

/*
 * Second half of detaching one page, after the batch's TLB flush: give up
 * anon exclusivity (fails only if the page may be pinned, in which case
 * the old PTE goes back), then leave a migration entry in the PTE and drop
 * the mapping's rmap and reference. The collection reference stays.
 */
static void migrate_vma_install_entry(struct migrate_vma *args,
				      pte_t *ptep, unsigned long addr,
					 const struct migrate_vma_detached *d)
{
	struct vm_area_struct *vma = args->vma;
	struct page *page = migrate_pfn_to_page(args->src[d->idx]);
	struct folio *folio = page_folio(page);
	bool exclusive = PageAnonExclusive(page);

	if (exclusive && folio_try_share_anon_rmap_pte(folio, page)) {
		set_pte_at(vma->vm_mm, addr, ptep, d->old);
		args->src[d->idx] = 0;
		args->cpages--;
		folio_unlock(folio);
		folio_put(folio);
		return;
	}

	if (pte_present(d->old) && pte_dirty(d->old))
		folio_mark_dirty(folio);
	set_pte_at(vma->vm_mm, addr, ptep,
		   migrate_vma_migration_pte(page, d->old, exclusive));
	folio_remove_rmap_pte(folio, page, vma);
	folio_put(folio);
}

/*
 * Look at one PTE under the page-table lock. Empty slots and the shared
 * zero page become empty entries, or page cache lookups in a shmem
 * mapping. The zero page holds no data, but its PTE stays until
 * migrate_vma_insert_page() replaces it: a slot that does not migrate keeps its
 * mapping and the PTE's soft-dirty and uffd-wp bits, and a userfaultfd
 * MISSING range gets no event for an address userspace already filled.
 * A selected small anonymous folio is referenced, locked and its PTE
 * cleared into @batch; a shmem folio is referenced and locked only.
 * Returns false, with a reference on *@large, when a large folio must be
 * split before collection can go on at @addr.
 */
static bool migrate_vma_detach_pte(struct migrate_vma *args, pte_t *ptep,
				   unsigned long addr, struct migrate_vma_batch *batch,
			    struct folio *unsplittable, struct folio **large)
{
	struct vm_area_struct *vma = args->vma;
	unsigned long idx = migrate_vma_index(args, addr);
	pte_t pte = ptep_get(ptep);
	struct folio *folio;
	struct page *page;
	bool write;

	if (pte_none(pte)) {
		migrate_vma_collect_empty(args, addr);
		return true;
	}

	if (pte_present(pte)) {
		if (is_zero_pfn(pte_pfn(pte))) {
			if ((args->flags & MIGRATE_VMA_SELECT_SYSTEM) &&
			    vma_is_anonymous(vma))
				migrate_vma_collect_empty(args, addr);
			return true;
		}
		page = vm_normal_page(vma, addr, pte);
		write = pte_write(pte);
	} else {
		swp_entry_t entry = pte_to_swp_entry(pte);

		if (!is_device_private_entry(entry))
			return true;
		page = pfn_swap_entry_to_page(entry);
		write = is_writable_device_private_entry(entry);
	}
	if (!page || !migrate_vma_page_selected(args, page))
		return true;

	folio = page_folio(page);
	if (!folio_test_anon(folio)) {
		/* Unmapped later, with the folio's other mappings. */
		if (migrate_vma_is_shmem(vma))
			migrate_vma_collect_file(args, addr);
		return true;
	}
	if (folio_test_ksm(folio))
		return true;
	if (folio_test_large(folio)) {
		if (folio == unsplittable)
			return true;
		folio_get(folio);
		*large = folio;
		return false;
	}

	folio_get(folio);
	if (!folio_trylock(folio)) {
		folio_put(folio);
		return true;
	}

	/* Virtually indexed caches may hold data the device must see. */
	if (pte_present(pte)) {
		flush_cache_page(vma, addr, pte_pfn(pte));
		batch->flush = true;
	}
	batch->ent[batch->nr].old = ptep_get_and_clear(vma->vm_mm, addr, ptep);
	batch->ent[batch->nr].idx = idx;
	batch->nr++;
	args->src[idx] = migrate_pfn(page_to_pfn(page)) | MIGRATE_PFN_MIGRATE |
			 (write ? MIGRATE_PFN_WRITE : 0);
	args->cpages++;
	return true;
}

/*
 * Collect up to MIGRATE_VMA_BATCH pages of one page table starting at @addr,
 * with one TLB flush for all of them. Returns where to continue. If the
 * page table went away under us the rest of the PMD is left alone:
 * entries already collected must never be looked at twice.
 */
static unsigned long migrate_vma_collect_batch(struct migrate_vma *args,
					       pmd_t *pmdp, unsigned long addr,
					unsigned long end,
					struct folio *unsplittable,
					struct folio **large)
{
	struct vm_area_struct *vma = args->vma;
	struct migrate_vma_batch batch = { .nr = 0, .flush = false };
	unsigned long first = addr;
	pte_t *base, *ptep;
	spinlock_t *ptl;	/* the page table lock */
	unsigned int i;

	base = pte_offset_map_lock(vma->vm_mm, pmdp, addr, &ptl);
	if (!base)
		return end;

	arch_enter_lazy_mmu_mode();
	for (ptep = base; addr < end && batch.nr < MIGRATE_VMA_BATCH;
	     addr += PAGE_SIZE, ptep++) {
		if (!migrate_vma_detach_pte(args, ptep, addr, &batch, unsplittable,
					    large))
			break;
	}
	arch_leave_lazy_mmu_mode();

	if (batch.flush)
		flush_tlb_range(vma, first, addr);
	for (i = 0; i < batch.nr; i++) {
		unsigned long a = args->start + (batch.ent[i].idx << PAGE_SHIFT);

		migrate_vma_install_entry(args,
					  base + ((a - first) >> PAGE_SHIFT),
					     a, &batch.ent[i]);
	}
	pte_unmap_unlock(base, ptl);
	return addr;
}

/* Split a large anonymous folio met while collecting; drops our reference. */
static bool migrate_vma_split_folio(struct folio *folio)
{
	int ret = -EAGAIN;

	if (folio_trylock(folio)) {
		ret = split_folio(folio);
		folio_unlock(folio);
	}
	folio_put(folio);
	return !ret;
}

/*
 * A PMD maps a huge page: split it so that its pages can be collected one
 * by one. Returns true if the PMD should be looked at again, false if its
 * range is to be skipped.
 */
static bool migrate_vma_split_huge_pmd(struct migrate_vma *args, pmd_t *pmdp,
				       unsigned long addr)
{
	struct vm_area_struct *vma = args->vma;
	struct folio *folio;
	spinlock_t *ptl;	/* the page table lock */
	pmd_t pmd;

	ptl = pmd_lock(vma->vm_mm, pmdp);
	pmd = pmdp_get(pmdp);
	if (!pmd_trans_huge(pmd)) {
		spin_unlock(ptl);
		return !is_swap_pmd(pmd);
	}
	if (!(args->flags & MIGRATE_VMA_SELECT_SYSTEM)) {
		spin_unlock(ptl);
		return false;
	}
	if (is_huge_zero_pmd(pmd)) {
		spin_unlock(ptl);
		split_huge_pmd(vma, pmdp, addr);
		return true;
	}
	folio = pmd_folio(pmd);
	if (!folio_test_anon(folio)) {
		spin_unlock(ptl);
		return false;
	}
	folio_get(folio);
	spin_unlock(ptl);
	return migrate_vma_split_folio(folio);
}

static int migrate_vma_collect_pmd(pmd_t *pmdp, unsigned long start,
				   unsigned long end, struct mm_walk *walk)
{
	struct migrate_vma *args = walk->private;
	struct folio *unsplittable = NULL;
	unsigned long addr = start;
	unsigned int tries = 0;
	pmd_t pmd;

	for (;;) {
		pmd = pmdp_get_lockless(pmdp);
		if (pmd_none(pmd))
			return migrate_vma_collect_hole(start, end, 0, walk);
		if (!pmd_trans_huge(pmd) && !is_swap_pmd(pmd))
			break;
		if (++tries > 3 || !migrate_vma_split_huge_pmd(args, pmdp, start))
			return 0;
	}

	/* A page table holds at most PTRS_PER_PTE folios to split. */
	for (tries = 0; addr < end && tries <= PTRS_PER_PTE; tries++) {
		struct folio *large = NULL;

		addr = migrate_vma_collect_batch(args, pmdp, addr, end, unsplittable,
						 &large);
		if (large && !migrate_vma_split_folio(large))
			unsplittable = large;
	}
	return 0;
}

static const struct mm_walk_ops migrate_vma_walk_ops = {
	.pmd_entry	= migrate_vma_collect_pmd,
	.pte_hole	= migrate_vma_collect_hole,
	.walk_lock	= PGWALK_RDLOCK,
};

/*
 * Walk the range inside one MMU_NOTIFY_MIGRATE invalidation so that
 * mirrors drop what they hold; the caller's own mirror recognises its
 * pgmap_owner and can skip the work.
 */
static void migrate_vma_collect(struct migrate_vma *args)
{
	struct mmu_notifier_range range;

	mmu_notifier_range_init_owner(&range, MMU_NOTIFY_MIGRATE, 0,
				      args->vma->vm_mm, args->start, args->end,
				      args->pgmap_owner);
	mmu_notifier_invalidate_range_start(&range);
	walk_page_range_vma(args->vma, args->start, args->end,
			    &migrate_vma_walk_ops, args);
	mmu_notifier_invalidate_range_end(&range);
	args->npages = migrate_vma_index(args, args->end);
}

/*
 * System folios leave the LRU while they migrate; folios still in a CPU's
 * LRU batch are not on it yet, so drain every CPU once if needed. The
 * collection reference becomes the isolation reference.
 */
static bool migrate_device_isolate_lru(struct folio *folio, bool *drained)
{
	if (!folio_test_lru(folio) && !*drained) {
		lru_add_drain_all();
		*drained = true;
	}
	if (!folio_isolate_lru(folio))
		return false;
	folio_put(folio);
	return true;
}

/*
 * An anonymous source keeps its anon_vma pinned from migrate_device_unmap() until
 * its migration entries are gone (see migrate_device_unmap()).  Under the mmap lock
 * the vma keeps the anon_vma alive even if collection already unmapped
 * the folio, so a plain reference will do; without it only a folio that
 * is still mapped has a live anon_vma, and false means it is mapped
 * nowhere.
 */
static bool migrate_device_pin_anon_vma(struct folio *folio, bool mm_locked)
{
	if (!folio_test_anon(folio) || folio_test_ksm(folio))
		return true;
	if (mm_locked) {
		get_anon_vma(folio_anon_vma(folio));
		return true;
	}
	return folio_get_anon_vma(folio);
}

static void migrate_device_unpin_anon_vma(struct folio *folio)
{
	if (folio_test_anon(folio) && !folio_test_ksm(folio))
		put_anon_vma(folio_anon_vma(folio));
}

/*
 * Make every device that mirrors @mapping forget the page at @index: its
 * device-private entry is leaving the page cache, and hmm_range_fault()
 * reports such entries without a PTE whose change would tell the mirrors.
 */
static void migrate_device_file_invalidate(struct address_space *mapping, pgoff_t index)
{
	struct mmu_notifier_range range;
	struct vm_area_struct *vma;
	unsigned long addr;

	i_mmap_lock_read(mapping);
	vma_interval_tree_foreach(vma, &mapping->i_mmap, index, index) {
		addr = vma_address(vma, index, 1);
		mmu_notifier_range_init(&range, MMU_NOTIFY_CLEAR, 0, vma->vm_mm,
					addr, addr + PAGE_SIZE);
		mmu_notifier_invalidate_range_start(&range);
		mmu_notifier_invalidate_range_end(&range);
	}
	i_mmap_unlock_read(mapping);
}

/*
 * Take a collected folio out of every page table. Anonymous folios leave
 * migration entries behind; shmem folios are just unmapped, to be found
 * again through the page cache, and a shmem page in device memory is in
 * no page table but may be in device mirrors.
 */
static void migrate_device_unmap_folio(struct folio *folio)
{
	if (folio_test_anon(folio)) {
		if (folio_mapped(folio))
			try_to_migrate(folio, 0);
	} else if (folio_is_device_private(folio)) {
		migrate_device_file_invalidate(folio->mapping, folio->index);
	} else if (folio_mapped(folio)) {
		try_to_unmap(folio, 0);
	}
}

/*
 * Undo collection of one source whose migration will not happen: map it
 * back wherever it was unmapped, unlock it and give it back.
 */
static void migrate_device_release_source(struct folio *folio, bool isolated)
{
	if (folio_test_anon(folio))
		remove_migration_ptes(folio, folio, 0);
	migrate_device_unpin_anon_vma(folio);
	folio_unlock(folio);
	if (isolated)
		folio_putback_lru(folio);
	else
		folio_put(folio);
}

/*
 * Finish collection: take system folios off the LRU, unmap whatever
 * mappings the walk did not see (other processes after fork, or all of
 * them for migrate_device_range()), and refuse folios that someone else
 * still references, such as a GUP pin. Refused entries are released and
 * zeroed. Returns how many entries still migrate.
 *
 * The rmap walk that later replaces the migration entries needs the
 * anon_vma of an anonymous folio.  Without the mmap lock (@mm_locked
 * false: migrate_device_range() and friends) the process may unmap the
 * folio and free its anon_vma meanwhile, so, as migrate_pages() does,
 * pin it here; a folio whose anon_vma cannot be pinned is mapped nowhere
 * any more and is dropped without walking its rmap.
 */
static unsigned long migrate_device_unmap(unsigned long *src, unsigned long npages,
					  struct page *fault_page, bool mm_locked)
{
	unsigned long i, nr = 0;
	bool drained = false;

	lru_add_drain();
	for (i = 0; i < npages; i++) {
		struct folio *folio = migrate_device_folio(src[i]);
		bool isolated = false;
		int extra;

		if (!folio) {
			nr += !!(src[i] & MIGRATE_PFN_MIGRATE);
			continue;
		}
		if (!migrate_device_pin_anon_vma(folio, mm_locked)) {
			folio_unlock(folio);
			folio_put(folio);
			src[i] = 0;
			continue;
		}

		if (!folio_is_zone_device(folio)) {
			isolated = migrate_device_isolate_lru(folio, &drained);
			if (!isolated)
				goto refuse;
		}
		migrate_device_unmap_folio(folio);
		if (folio_mapped(folio))
			goto refuse;
		/* Ours, the fault path's, and those the swap cache holds. */
		extra = 1 + (fault_page && folio == page_folio(fault_page));
		if (folio_ref_count(folio) != extra + folio_expected_ref_count(folio))
			goto refuse;
		nr++;
		continue;
refuse:
		migrate_device_release_source(folio, isolated);
		src[i] = 0;
	}
	return nr;
}

/* Walk to the PMD of @addr, allocating the levels above it. */
static pmd_t *migrate_vma_pmd_alloc(struct mm_struct *mm, unsigned long addr)
{
	pgd_t *pgd = pgd_offset(mm, addr);
	p4d_t *p4d;
	pud_t *pud;

	p4d = p4d_alloc(mm, pgd, addr);
	if (!p4d)
		return NULL;
	pud = pud_alloc(mm, p4d, addr);
	if (!pud)
		return NULL;
	return pmd_alloc(mm, pud, addr);
}

/*
 * mprotect() tells mirrors about a range only where page tables exist,
 * and shmem pages in device-private memory are mirrored without PTEs:
 * give every page of a shmem range a page table before it migrates.
 */
static int migrate_vma_file_tables(struct migrate_vma *args)
{
	struct mm_struct *mm = args->vma->vm_mm;
	unsigned long addr;
	pmd_t *pmdp;

	for (addr = args->start; addr < args->end;
	     addr = pmd_addr_end(addr, args->end)) {
		pmdp = migrate_vma_pmd_alloc(mm, addr);
		if (!pmdp || pte_alloc(mm, pmdp))
			return -ENOMEM;
	}
	return 0;
}

/**
 * migrate_vma_setup() - collect and unmap the pages of a range for migration
 * @args: the range, the selection and the arrays (see struct migrate_vma)
 *
 * Fills @args->src for every page of [@args->start, @args->end): pages the
 * selection in @args->flags covers (system memory, or device memory whose
 * pgmap owner is @args->pgmap_owner) are locked, unmapped from every
 * process and marked MIGRATE_PFN_MIGRATE, with MIGRATE_PFN_WRITE if the
 * mapping was writable. Empty slots of an anonymous mapping are marked
 * MIGRATE_PFN_MIGRATE with no page: the driver may populate them. In a
 * shmem mapping, pages are looked up in the file's page cache, mapped or
 * not, and its holes are not collected. Other entries are 0. @args->dst
 * is cleared; @args->cpages counts the entries marked for migration and
 * @args->npages is the number of entries.
 *
 * The driver then allocates and locks a destination page for each entry
 * it wants, copies the data, stores migrate_pfn() of the destination in
 * @args->dst and calls migrate_vma_pages() and migrate_vma_finalize().
 * Set @args->fault_page when called from dev_pagemap_ops.migrate_to_ram:
 * the fault path's reference on that page is then expected.
 *
 * Context: Process context, may sleep. The caller holds mmap_lock of the
 * vma's mm (read is enough) until migrate_vma_finalize() returns.
 * Return: 0 on success, even if no page could be collected (check
 * @args->cpages and each entry); -EINVAL if the vma is missing, hugetlb,
 * DAX or VM_IO/VM_PFNMAP/VM_MIXEDMAP, if the range is empty or not
 * inside the vma, if an array is missing, or if @args->fault_page is not
 * a device-private page; -ENOMEM if the page tables of a shmem range
 * could not be allocated.
 */
int migrate_vma_setup(struct migrate_vma *args)
{
	struct vm_area_struct *vma = args->vma;
	unsigned long nr;

	args->start &= PAGE_MASK;
	args->end &= PAGE_MASK;
	if (!vma || is_vm_hugetlb_page(vma) || (vma->vm_flags & VM_SPECIAL) ||
	    vma_is_dax(vma))
		return -EINVAL;
	if (args->start >= args->end || args->start < vma->vm_start ||
	    args->end > vma->vm_end)
		return -EINVAL;
	if (!args->src || !args->dst)
		return -EINVAL;
	if (args->fault_page && !is_device_private_page(args->fault_page))
		return -EINVAL;
	mmap_assert_locked(vma->vm_mm);

	nr = migrate_vma_index(args, args->end);
	memset(args->src, 0, nr * sizeof(*args->src));
	memset(args->dst, 0, nr * sizeof(*args->dst));
	args->cpages = 0;
	args->npages = 0;
	if (migrate_vma_is_shmem(vma) && migrate_vma_file_tables(args))
		return -ENOMEM;

	migrate_vma_collect(args);
	if (args->cpages)
		args->cpages = migrate_device_unmap(args->src, nr, args->fault_page, true);
	return 0;
}
EXPORT_SYMBOL(migrate_vma_setup);

static pte_t migrate_vma_new_pte(struct vm_area_struct *vma, struct page *page)
{
	bool write = vma->vm_flags & VM_WRITE;
	swp_entry_t entry;
	pte_t pte;

	if (is_device_private_page(page)) {
		entry = write ? make_writable_device_private_entry(page_to_pfn(page)) :
				make_readable_device_private_entry(page_to_pfn(page));
		return swp_entry_to_pte(entry);
	}
	pte = mk_pte(page, vma->vm_page_prot);
	if (write)
		pte = pte_mkwrite(pte_mkdirty(pte), vma);
	return pte;
}

/*
 * May a new page take the place of @pte? An empty slot, or the shared
 * zero page collection left mapped there; not one a uffd-wp bit protects,
 * as the new PTE would be writable behind the userfaultfd's back.
 */
static bool migrate_vma_slot_free(pte_t pte)
{
	if (pte_none(pte))
		return true;
	return pte_present(pte) && is_zero_pfn(pte_pfn(pte)) &&
	       !pte_uffd_wp(pte);
}

/*
 * Map @page, new and locked, at the empty slot @addr: the equivalent of
 * an anonymous write fault that is handed its page. A zero-page PTE is
 * flushed out first. Fails if the slot was filled meanwhile or the mm is
 * going away.
 */
static bool migrate_vma_insert_page(struct migrate_vma *args, unsigned long addr,
				    struct page *page)
{
	struct vm_area_struct *vma = args->vma;
	struct mm_struct *mm = vma->vm_mm;
	struct folio *folio = page_folio(page);
	bool inserted = false;
	spinlock_t *ptl;	/* the page table lock */
	pmd_t *pmdp;
	pte_t *ptep, old;

	if (!vma_is_anonymous(vma) || userfaultfd_missing(vma))
		return false;
	if (folio_test_large(folio) || folio_mapped(folio))
		return false;
	if (is_zone_device_page(page) && !is_device_private_page(page) &&
	    !is_device_coherent_page(page))
		return false;
	pmdp = migrate_vma_pmd_alloc(mm, addr);
	if (!pmdp || pmd_trans_huge(pmdp_get_lockless(pmdp)))
		return false;
	if (pte_alloc(mm, pmdp) || anon_vma_prepare(vma))
		return false;
	if (mem_cgroup_charge(folio, mm, GFP_KERNEL))
		return false;
	/* The driver's copy must be visible before the PTE is. */
	__folio_mark_uptodate(folio);

	ptep = pte_offset_map_lock(mm, pmdp, addr, &ptl);
	if (!ptep)
		return false;
	old = ptep_get(ptep);
	if (!check_stable_address_space(mm) && migrate_vma_slot_free(old)) {
		if (!pte_none(old)) {
			flush_cache_page(vma, addr, pte_pfn(old));
			ptep_clear_flush(vma, addr, ptep);
		}
		inc_mm_counter(mm, MM_ANONPAGES);
		folio_add_new_anon_rmap(folio, vma, addr, RMAP_EXCLUSIVE);
		if (!folio_is_zone_device(folio))
			folio_add_lru_vma(folio, vma);
		folio_get(folio);
		set_pte_at(mm, addr, ptep, migrate_vma_new_pte(vma, page));
		update_mmu_cache(vma, addr, ptep);
		inserted = true;
	}
	pte_unmap_unlock(ptep, ptl);
	return inserted;
}

/*
 * Populate the empty slots the driver gave a destination. Filling an
 * empty slot changes what a mirror would read there, so it runs inside
 * its own MMU_NOTIFY_MIGRATE invalidation.
 */
static void migrate_vma_populate(struct migrate_vma *args)
{
	unsigned long i, first = ULONG_MAX, last = 0;
	struct mmu_notifier_range range;

	for (i = 0; i < args->npages; i++) {
		if (migrate_pfn_to_page(args->src[i]) ||
		    !(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (!migrate_pfn_to_page(args->dst[i])) {
			args->src[i] &= ~MIGRATE_PFN_MIGRATE;
			continue;
		}
		first = min(first, i);
		last = i;
	}
	if (first == ULONG_MAX)
		return;

	mmu_notifier_range_init_owner(&range, MMU_NOTIFY_MIGRATE, 0,
				      args->vma->vm_mm,
				      args->start + (first << PAGE_SHIFT),
				      args->start + ((last + 1) << PAGE_SHIFT),
				      args->pgmap_owner);
	mmu_notifier_invalidate_range_start(&range);
	for (i = first; i <= last; i++) {
		struct page *page = migrate_pfn_to_page(args->dst[i]);

		if (migrate_pfn_to_page(args->src[i]) ||
		    !(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (!migrate_vma_insert_page(args, args->start + (i << PAGE_SHIFT),
					     page))
			args->src[i] &= ~MIGRATE_PFN_MIGRATE;
	}
	mmu_notifier_invalidate_range_end(&range);
}

/*
 * Device memory takes anonymous folios that are not in the swap cache
 * (see migrate_device_leave_swap_cache()), and shmem folios from system memory:
 * device-coherent memory as it is, in the page cache like any folio,
 * device-private memory only if its driver can copy them back on its own
 * (see migrate_device_file_fault()). Other ZONE_DEVICE kinds (fsdax,
 * p2pdma) are never destinations.
 */
static bool migrate_device_destination_ok(struct folio *src, struct folio *dst)
{
	bool to_device = folio_is_device_private(dst) ||
			 folio_is_device_coherent(dst);

	if (!to_device)
		return !folio_is_zone_device(dst);
	if (!migrate_device_folio_is_file(src))
		return !folio_mapping(src);
	if (folio_is_zone_device(src) || !shmem_mapping(src->mapping))
		return false;
	return folio_is_device_coherent(dst) ||
	       dst->page.pgmap->ops->copy_to_ram;
}

/*
 * An anonymous folio read back from swap stays in the swap cache, but
 * device memory cannot be there: a source going to the device gives up
 * its swap slot first (its data is in the folio, which is marked dirty).
 * That fails only while the slot is still in use, by another process's
 * PTE after fork or by writeback, and the folio then stays.
 */
static bool migrate_device_leave_swap_cache(struct folio *src, struct folio *dst)
{
	if (!folio_test_anon(src) || !folio_test_swapcache(src))
		return true;
	if (!folio_is_device_private(dst) && !folio_is_device_coherent(dst))
		return true;
	return folio_free_swap(src);
}

/*
 * Move the page cache entry of a shmem source to its destination. With
 * device-private memory on either side the page cache swaps a folio for a
 * device-private entry or back; otherwise the destination takes the
 * folio's place as in any page cache migration, and the source, out of
 * the page cache now, must not keep pointing at it. Returns false if the
 * page was truncated or gained a reference.
 */
static bool migrate_device_commit_file(struct folio *sfolio, struct folio *dfolio)
{
	if (folio_is_device_private(sfolio))
		return !shmem_folio_from_device(sfolio, dfolio);
	/* References: the page cache's and the isolation's. */
	if (folio_is_device_private(dfolio))
		return !shmem_folio_to_device(sfolio, dfolio, 2);
	if (folio_migrate_mapping(sfolio->mapping, dfolio, sfolio, 0) !=
	    MIGRATEPAGE_SUCCESS)
		return false;
	folio_migrate_flags(dfolio, sfolio);
	sfolio->mapping = NULL;
	return true;
}

/*
 * Move the struct page state of each migrating source to its destination.
 * This is the point of no return for an entry: after it, finalize maps
 * the destination. Entries without destination, or whose source gained a
 * reference since setup, lose MIGRATE_PFN_MIGRATE.
 */
static void __migrate_device_pages(unsigned long *src, unsigned long *dst,
				   unsigned long npages, struct page *fault_page)
{
	unsigned long i;

	for (i = 0; i < npages; i++) {
		struct folio *sfolio = migrate_device_folio(src[i]);
		struct folio *dfolio = migrate_device_folio(dst[i]);
		int extra;

		if (!sfolio || !(src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (!dfolio || !migrate_device_leave_swap_cache(sfolio, dfolio) ||
		    !migrate_device_destination_ok(sfolio, dfolio))
			goto keep;
		if (migrate_device_folio_is_file(sfolio)) {
			if (!migrate_device_commit_file(sfolio, dfolio))
				goto keep;
			continue;
		}
		extra = fault_page && sfolio == page_folio(fault_page);
		if (folio_migrate_mapping(folio_mapping(sfolio), dfolio, sfolio,
					  extra) != MIGRATEPAGE_SUCCESS)
			goto keep;
		folio_migrate_flags(dfolio, sfolio);
		continue;
keep:
		src[i] &= ~MIGRATE_PFN_MIGRATE;
	}
}

/**
 * migrate_vma_pages() - commit the migration of the collected pages
 * @migrate: as filled by migrate_vma_setup() plus the driver's @dst
 *
 * For each entry with MIGRATE_PFN_MIGRATE and a destination in @dst, moves
 * the page's state (anon rmap, flags, memcg charge) to the destination,
 * or maps the destination in an empty slot. Entries that cannot migrate
 * lose MIGRATE_PFN_MIGRATE; the driver must check it before treating the
 * copy as the page. The CPU mappings change only in migrate_vma_finalize().
 *
 * Context: Process context, may sleep; mmap_lock held as for
 * migrate_vma_setup().
 */
void migrate_vma_pages(struct migrate_vma *migrate)
{
	mmap_assert_locked(migrate->vma->vm_mm);
	migrate_vma_populate(migrate);
	__migrate_device_pages(migrate->src, migrate->dst, migrate->npages,
			       migrate->fault_page);
}
EXPORT_SYMBOL(migrate_vma_pages);

/*
 * Map the winner of each entry and release the loser: the destination
 * where the entry still migrates, else the source again. Destinations
 * that did not become the page are unlocked and freed by the last put.
 */
static void __migrate_device_finalize(unsigned long *src, unsigned long *dst,
				      unsigned long npages)
{
	unsigned long i;

	for (i = 0; i < npages; i++) {
		struct folio *sfolio = migrate_device_folio(src[i]);
		struct folio *dfolio = migrate_device_folio(dst[i]);
		bool moved = dfolio && (src[i] & MIGRATE_PFN_MIGRATE);

		if (dfolio && (!sfolio || !moved)) {
			/* Unused, or mapped directly into an empty slot. */
			folio_unlock(dfolio);
			folio_put(dfolio);
		}
		if (!sfolio)
			continue;

		if (folio_test_anon(sfolio))
			remove_migration_ptes(sfolio, moved ? dfolio : sfolio, 0);
		migrate_device_unpin_anon_vma(sfolio);
		folio_unlock(sfolio);
		if (moved || folio_is_zone_device(sfolio))
			folio_put(sfolio);
		else
			folio_putback_lru(sfolio);

		if (moved) {
			folio_unlock(dfolio);
			if (!folio_is_zone_device(dfolio))
				folio_add_lru(dfolio);
			folio_put(dfolio);
		}
	}
}

/**
 * migrate_vma_finalize() - restore CPU mappings after migration
 * @migrate: as passed to migrate_vma_pages()
 *
 * Replaces the migration entries left by migrate_vma_setup(): with the
 * destination page for entries that migrated, with the original page for
 * the others. Unlocks and releases every page the migration held; the
 * driver must not touch @migrate->src or @migrate->dst pages afterwards
 * without its own reference.
 *
 * Context: Process context, may sleep; mmap_lock held as for
 * migrate_vma_setup().
 */
void migrate_vma_finalize(struct migrate_vma *migrate)
{
	__migrate_device_finalize(migrate->src, migrate->dst, migrate->npages);
}
EXPORT_SYMBOL(migrate_vma_finalize);

/*
 * Reference and lock the folio at @pfn for a device-side migration. A
 * device page without a mapping (neither anonymous nor in a page cache)
 * holds nothing anyone can reach: a destination the driver did not use,
 * or a page whose data already moved back, waiting for its last put.
 * There is nothing to move, and no memcg charge to move with it.
 */
static unsigned long migrate_device_grab_pfn(unsigned long pfn)
{
	struct folio *folio = folio_get_nontail_page(pfn_to_page(pfn));

	if (!folio)
		return 0;
	if (!folio_trylock(folio))
		goto put;
	if (!folio->mapping)
		goto unlock;
	return migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE;
unlock:
	folio_unlock(folio);
put:
	folio_put(folio);
	return 0;
}

/**
 * migrate_device_range() - collect a range of device pages for eviction
 * @src_pfns: array of @npages entries, filled like migrate_vma.src
 * @start: first pfn of the range
 * @npages: number of pfns
 *
 * The device-side counterpart of migrate_vma_setup(), for a driver that
 * must empty its memory (unload, memory pressure on the device) without
 * knowing which processes map it. Every allocated page of the range is
 * locked and unmapped from all processes; free pages and pages that
 * cannot be taken get entry 0. Continue with migrate_device_pages() and
 * migrate_device_finalize().
 *
 * Context: Process context, may sleep; takes the rmap locks of the
 * processes mapping the pages. No mmap_lock needed.
 * Return: 0.
 */
int migrate_device_range(unsigned long *src_pfns, unsigned long start,
			 unsigned long npages)
{
	unsigned long i;

	for (i = 0; i < npages; i++)
		src_pfns[i] = migrate_device_grab_pfn(start + i);
	migrate_device_unmap(src_pfns, npages, NULL, false);
	return 0;
}
EXPORT_SYMBOL(migrate_device_range);

/**
 * migrate_device_pfns() - collect a set of device pages for eviction
 * @src_pfns: on entry, @npages raw pfns; on return, filled like
 *	      migrate_vma.src
 * @npages: number of entries
 *
 * Like migrate_device_range() for pages that are not contiguous, such as
 * the pages a driver's allocator knows to be in use.
 *
 * Context: Process context, may sleep; as migrate_device_range().
 * Return: 0.
 */
int migrate_device_pfns(unsigned long *src_pfns, unsigned long npages)
{
	unsigned long i;

	for (i = 0; i < npages; i++)
		src_pfns[i] = migrate_device_grab_pfn(src_pfns[i]);
	migrate_device_unmap(src_pfns, npages, NULL, false);
	return 0;
}
EXPORT_SYMBOL(migrate_device_pfns);

/**
 * migrate_device_pages() - commit a device-side migration
 * @src_pfns: as filled by migrate_device_range() or migrate_device_pfns()
 * @dst_pfns: the destinations the driver allocated, locked and copied to
 * @npages: number of entries
 *
 * As migrate_vma_pages() for entries that all have a source page.
 *
 * Context: Process context, may sleep.
 */
void migrate_device_pages(unsigned long *src_pfns, unsigned long *dst_pfns,
			  unsigned long npages)
{
	__migrate_device_pages(src_pfns, dst_pfns, npages, NULL);
}
EXPORT_SYMBOL(migrate_device_pages);

/**
 * migrate_device_finalize() - restore mappings after a device-side migration
 * @src_pfns: as passed to migrate_device_pages()
 * @dst_pfns: as passed to migrate_device_pages()
 * @npages: number of entries
 *
 * As migrate_vma_finalize().
 *
 * Context: Process context, may sleep.
 */
void migrate_device_finalize(unsigned long *src_pfns, unsigned long *dst_pfns,
			     unsigned long npages)
{
	__migrate_device_finalize(src_pfns, dst_pfns, npages);
}
EXPORT_SYMBOL(migrate_device_finalize);

/*
 * Reference and lock the device page of @entry at @index of @mapping, if
 * the entry is still there once the page is locked.
 */
static struct folio *migrate_device_file_lock_entry(struct address_space *mapping,
						    pgoff_t index, swp_entry_t entry)
{
	struct folio *folio = page_folio(pfn_swap_entry_to_page(entry));
	void *radix = swp_to_radix_entry(entry);

	rcu_read_lock();
	if (xa_load(&mapping->i_pages, index) != radix ||
	    !folio_try_get(folio)) {
		rcu_read_unlock();
		return NULL;
	}
	rcu_read_unlock();

	folio_lock(folio);
	if (xa_load(&mapping->i_pages, index) == radix)
		return folio;
	folio_unlock(folio);
	folio_put(folio);
	return NULL;
}

/**
 * migrate_device_file_fault() - bring a shmem page back from device memory
 * @mapping: the shmem file's mapping
 * @index: the page's index in it
 * @entry: the device-private entry the page cache holds at @index
 *
 * Called by shmem_get_folio_gfp() for any access to the page other than
 * through a device mirror: a CPU fault in any mapping of the file, read(),
 * write(), fallocate(). The mirrors are invalidated, the driver copies the
 * page into a new system folio with dev_pagemap_ops.copy_to_ram() and the
 * folio takes the entry's place in the page cache.
 *
 * Context: Process context, may sleep; takes the device page's lock, the
 * i_mmap_rwsem of @mapping and the mirrors' invalidation locks.
 * Return: -EEXIST when the caller should look @index up again: the page is
 * back, or someone else moved or truncated it meanwhile. -ENOMEM if no
 * system memory could be allocated, or the driver's error from
 * copy_to_ram().
 */
int migrate_device_file_fault(struct address_space *mapping, pgoff_t index,
			      swp_entry_t entry)
{
	struct folio *dfolio, *folio;
	int ret;

	dfolio = migrate_device_file_lock_entry(mapping, index, entry);
	if (!dfolio)
		return -EEXIST;
	if (!dfolio->page.pgmap->ops->copy_to_ram) {
		ret = -EIO;
		goto unlock_dfolio;
	}

	folio = folio_alloc(mapping_gfp_mask(mapping), 0);
	if (!folio) {
		ret = -ENOMEM;
		goto unlock_dfolio;
	}
	__folio_set_locked(folio);

	migrate_device_file_invalidate(mapping, index);
	ret = dfolio->page.pgmap->ops->copy_to_ram(&dfolio->page,
						   &folio->page);
	if (ret)
		goto free_folio;
	/* Fails only if truncation got the entry first. */
	if (!shmem_folio_from_device(dfolio, folio)) {
		folio_add_lru(folio);
		count_vm_event(PGMAJFAULT);
	}
	ret = -EEXIST;
free_folio:
	folio_unlock(folio);
	folio_put(folio);
unlock_dfolio:
	folio_unlock(dfolio);
	folio_put(dfolio);
	return ret;
}

/**
 * migrate_device_file_free() - drop a shmem page that is in device memory
 * @mapping: the shmem file's mapping
 * @index: the page's index in it
 * @entry: the device-private entry truncation found at @index
 *
 * Called by truncation and hole punching for a device-private entry.
 * The device page is locked first, as truncation locks a page cache
 * folio, and its ->mapping goes with the entry: an eviction holding the
 * page (migrate_device_range(), migrate_device_pfns() collect without a
 * reference on the file) keeps truncation, and so the freeing of the
 * inode, waiting until it lets go, and one that locks the page afterwards
 * finds no mapping and leaves it alone. The mirrors of the file forget
 * the page before the entry goes, and the page cache's reference is
 * dropped, which frees the device page unless a migration holds it.
 *
 * Context: Process context, may sleep; takes the device page's lock, the
 * i_mmap_rwsem of @mapping and the mirrors' invalidation locks.
 * Return: 1 if the entry was removed; 0 if it had gone already, e.g. the
 * page was brought back to system memory meanwhile.
 */
long migrate_device_file_free(struct address_space *mapping, pgoff_t index,
			      swp_entry_t entry)
{
	struct folio *dfolio;
	long freed = 0;

	dfolio = migrate_device_file_lock_entry(mapping, index, entry);
	if (!dfolio)
		return 0;
	migrate_device_file_invalidate(mapping, index);
	if (!shmem_device_entry_free(dfolio)) {
		/* The page cache's reference; ours holds the page till unlocked. */
		folio_put(dfolio);
		freed = 1;
	}
	folio_unlock(dfolio);
	folio_put(dfolio);
	return freed;
}

/*
 * GUP calls this before a long-term pin of a device-coherent folio: the
 * device may reclaim its memory, so the pinned copy must live in system
 * RAM. The caller's reference is consumed whatever happens. Returns 0 if
 * the folio moved, -EBUSY if it could not be unmapped or copied.
 */
int migrate_device_coherent_folio(struct folio *folio)
{
	unsigned long src, dst = 0;
	struct folio *dfolio;

	if (WARN_ON_ONCE(folio_test_large(folio))) {
		folio_put(folio);
		return -EBUSY;
	}

	folio_lock(folio);
	src = migrate_pfn(folio_pfn(folio)) | MIGRATE_PFN_MIGRATE;
	if (!migrate_device_unmap(&src, 1, NULL, false))
		return -EBUSY;

	dfolio = folio_alloc(GFP_USER | __GFP_NOWARN, 0);
	if (dfolio) {
		folio_lock(dfolio);
		folio_copy(dfolio, folio);
		dst = migrate_pfn(folio_pfn(dfolio));
	}
	__migrate_device_pages(&src, &dst, 1, NULL);
	__migrate_device_finalize(&src, &dst, 1);
	return (src & MIGRATE_PFN_MIGRATE) ? 0 : -EBUSY;
}
