// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Heterogeneous memory management: snapshot (and fault in) the CPU page
 * tables of a range for a device, and the hmm_mirror convenience layer.
 *
 * The snapshot is taken with the generic page walker under the mmap read
 * lock.  Its result is only trusted by the caller once the interval
 * notifier sequence it sampled before the walk is still current, so the
 * walk itself reads page tables without their locks and relies on every
 * change that matters (unmap, protection downgrade, migration, split)
 * being preceded by an mmu notifier invalidation.
 *
 * When pages must be faulted in, the walker drops out to handle_mm_fault()
 * for the run of pages that need it and then resumes at the first faulted
 * address, never from the start of the range.
 */
#include <linux/hmm.h>
#include <linux/hugetlb.h>
#include <linux/huge_mm.h>
#include <linux/jiffies.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/pagemap.h>
#include <linux/memcontrol.h>
#include <linux/oom.h>
#include <linux/pagewalk.h>
#include <linux/rmap.h>
#include <linux/sched/mm.h>
#include <linux/shmem_fs.h>
#include <linux/swap.h>
#include <linux/swapops.h>
#include <linux/userfaultfd_k.h>

#include "internal.h"

/*
 * Private return code of the walk callbacks: our own fault changed the page
 * table structure under the walker, start a new walk at hmm_walk::resume.
 */
#define HMM_WALK_RESTART	(-EAGAIN)

/*
 * A page whose fault did not make it usable is faulted again at most this
 * many times in one hmm_range_fault() call before the caller is told to
 * retry with -EBUSY; it stops a livelock against, e.g., a migration that
 * keeps re-installing its entries.
 */
#define HMM_FAULT_ATTEMPTS	4

/* Pages populated per page table lock hold by hmm_populate_anon(). */
#define HMM_POPULATE_BATCH	32

/* The two bits of an entry that a request can ask for. */
#define HMM_PFN_REQ_MASK	(HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE)

/**
 * struct hmm_walk - state of one hmm_range_fault() call
 * @range: the caller's request
 * @resume: walks restart here.  Every entry of @range->hmm_pfns below it
 *	has been written by this call: what the caller gets back is output,
 *	never its own input or a pfn left from an earlier call.  Only moved
 *	by hmm_set_resume(), which checks that under CONFIG_DEBUG_VM.
 * @written: with CONFIG_DEBUG_VM, the end of the entries written so far
 * @fixed_req: request of every page when the input array is ignored
 * @may_fault: whether any page can carry HMM_PFN_REQ_FAULT at all
 * @stuck_addr: last address a fault was started at
 * @stuck_count: faults started at @stuck_addr in a row
 */
struct hmm_walk {
	struct hmm_range	*range;
	unsigned long		resume;
	unsigned long		written;
	unsigned long		fixed_req;
	bool			may_fault;
	unsigned long		stuck_addr;
	unsigned int		stuck_count;
};

static inline unsigned long hmm_index(const struct hmm_walk *hw,
				      unsigned long addr)
{
	return (addr - hw->range->start) >> PAGE_SHIFT;
}

/* What the caller asks for at @addr: 0, REQ_FAULT or REQ_FAULT|REQ_WRITE. */
static inline unsigned long hmm_request(const struct hmm_walk *hw,
					unsigned long addr)
{
	const struct hmm_range *range = hw->range;
	unsigned long req;

	if (!range->pfn_flags_mask)
		return hw->fixed_req;

	req = range->default_flags |
	      (range->hmm_pfns[hmm_index(hw, addr)] & range->pfn_flags_mask);
	if (!(req & HMM_PFN_REQ_FAULT))
		return 0;
	return req & HMM_PFN_REQ_MASK;
}

/*
 * Request bits and the VALID/WRITE output bits share their values, so an
 * entry satisfies a request when it has every bit the request has.
 */
static inline bool hmm_entry_satisfies(unsigned long entry, unsigned long req)
{
	return (entry & req) == req;
}

/* First address in [addr, end) whose entry @cpu does not satisfy, or end. */
static unsigned long hmm_first_unsatisfied(const struct hmm_walk *hw,
					   unsigned long addr,
					   unsigned long end,
					   unsigned long cpu)
{
	if (!hw->may_fault)
		return end;
	if (!hw->range->pfn_flags_mask)
		return hmm_entry_satisfies(cpu, hw->fixed_req) ? end : addr;

	for (; addr < end; addr += PAGE_SIZE)
		if (!hmm_entry_satisfies(cpu, hmm_request(hw, addr)))
			break;
	return addr;
}

/*
 * Entries are written in address order, from hw->resume on; track how far
 * they go, for hmm_set_resume() to check the invariant of struct hmm_walk.
 */
static inline void hmm_note_written(struct hmm_walk *hw, unsigned long addr,
				    unsigned long end)
{
	if (IS_ENABLED(CONFIG_DEBUG_VM) && addr <= hw->written &&
	    end > hw->written)
		hw->written = end;
}

static inline void hmm_set_resume(struct hmm_walk *hw, unsigned long addr)
{
	VM_WARN_ON_ONCE(addr > hw->written);
	hw->resume = addr;
}

static void hmm_fill(struct hmm_walk *hw, unsigned long addr,
		     unsigned long end, unsigned long entry)
{
	unsigned long *pfns = hw->range->hmm_pfns;
	unsigned long i = hmm_index(hw, addr);
	unsigned long last = hmm_index(hw, end);

	for (; i < last; i++)
		pfns[i] = entry;
	hmm_note_written(hw, addr, end);
}

/* Fill consecutive pfns starting at @pfn, each tagged with @flags. */
static void hmm_fill_pfns(struct hmm_walk *hw, unsigned long addr,
			  unsigned long end, unsigned long pfn,
			  unsigned long flags)
{
	unsigned long *pfns = hw->range->hmm_pfns;
	unsigned long i = hmm_index(hw, addr);
	unsigned long last = hmm_index(hw, end);

	for (; i < last; i++, pfn++)
		pfns[i] = pfn | flags;
	hmm_note_written(hw, addr, end);
}

static inline unsigned long hmm_order_flags(unsigned int order)
{
	return (unsigned long)order << HMM_PFN_ORDER_SHIFT;
}

/* Entries in [addr, end) that can never be valid: error, or -EFAULT. */
static int hmm_report_unusable(struct hmm_walk *hw, unsigned long addr,
			       unsigned long end)
{
	if (hmm_first_unsatisfied(hw, addr, end, 0) != end)
		return -EFAULT;
	hmm_fill(hw, addr, end, HMM_PFN_ERROR);
	return 0;
}

static int hmm_fault_errno(vm_fault_t fault)
{
	if (fault & VM_FAULT_OOM)
		return -ENOMEM;
	if (fault & VM_FAULT_ERROR)
		return -EFAULT;
	return 0;
}

/*
 * Count a fault started at @addr; refuse once the same address has been
 * faulted HMM_FAULT_ATTEMPTS times in a row without the walk moving past it.
 */
static int hmm_note_fault(struct hmm_walk *hw, unsigned long addr)
{
	if (hw->stuck_addr != addr) {
		hw->stuck_addr = addr;
		hw->stuck_count = 0;
	}
	if (++hw->stuck_count > HMM_FAULT_ATTEMPTS)
		return -EBUSY;
	return 0;
}

/*
 * Fault every page of [addr, end) whose current entry @cpu falls short of
 * its request.  The caller holds no page table lock or mapping and will
 * re-read the page tables from @addr afterwards.
 */
static int hmm_fault_pages(struct hmm_walk *hw, struct vm_area_struct *vma,
			   unsigned long addr, unsigned long end,
			   unsigned long cpu)
{
	unsigned int flags;
	unsigned long req;
	int ret;

	ret = hmm_note_fault(hw, addr);
	if (ret)
		return ret;

	for (; addr < end; addr += PAGE_SIZE) {
		req = hmm_request(hw, addr);
		if (hmm_entry_satisfies(cpu, req))
			continue;

		flags = FAULT_FLAG_REMOTE;
		if (req & HMM_PFN_REQ_WRITE) {
			if (!(vma->vm_flags & VM_WRITE))
				return -EPERM;
			flags |= FAULT_FLAG_WRITE;
		}
		ret = hmm_fault_errno(handle_mm_fault(vma, addr, flags, NULL));
		if (ret)
			return ret;
		cond_resched();
	}
	return 0;
}

/*
 * Can a run of empty PTEs in @vma be populated by hmm_populate_anon()
 * rather than one handle_mm_fault() per page?  Only for plain private
 * anonymous memory where the fault path would do nothing but allocate a
 * zeroed order-0 page (or map the zero page): no userfaultfd, and no THP
 * or mTHP size the fault path might pick instead.
 */
static bool hmm_can_populate_anon(struct vm_area_struct *vma)
{
	if (!vma_is_anonymous(vma) || (vma->vm_flags & VM_SHARED))
		return false;
	if (userfaultfd_armed(vma))
		return false;
	return !thp_vma_allowable_orders(vma, vma->vm_flags,
					 TVA_IN_PF | TVA_ENFORCE_SYSFS,
					 THP_ORDERS_ALL_ANON);
}

/* A zeroed, charged anonymous folio for @addr, as the fault path makes. */
static struct folio *hmm_alloc_anon(struct vm_area_struct *vma,
				    unsigned long addr)
{
	struct folio *folio;

	if (unlikely(anon_vma_prepare(vma)))
		return NULL;
	folio = vma_alloc_zeroed_movable_folio(vma, addr);
	if (!folio)
		return NULL;
	if (mem_cgroup_charge(folio, vma->vm_mm, GFP_KERNEL)) {
		folio_put(folio);
		return NULL;
	}
	folio_throttle_swaprate(folio, GFP_KERNEL);
	/* Orders the zeroing before the PTE becomes visible. */
	__folio_mark_uptodate(folio);
	return folio;
}

/*
 * Install up to HMM_POPULATE_BATCH pages at [addr, end) under one page
 * table lock: @folios[i] for write requests, the zero page for read-only
 * ones (@folios[i] == NULL).  PTEs that stopped being empty meanwhile
 * (a racing CPU fault) are left alone and their folio freed.
 */
static int hmm_install_anon(struct vm_area_struct *vma, pmd_t *pmdp,
			    unsigned long addr, unsigned long end,
			    struct folio **folios)
{
	struct mm_struct *mm = vma->vm_mm;
	unsigned int i, nr_anon = 0;
	spinlock_t *ptl;	/* of the PTE table */
	pte_t *ptep, entry;
	int ret = 0;

	ptep = pte_offset_map_lock(mm, pmdp, addr, &ptl);
	if (!ptep)
		goto out_free;	/* table gone: the caller looks again */
	if (check_stable_address_space(mm)) {
		ret = -EFAULT;
		goto out_unlock;
	}

	for (i = 0; addr < end; addr += PAGE_SIZE, i++) {
		if (!pte_none(ptep_get(ptep + i)))
			continue;
		if (folios[i]) {
			entry = mk_pte(&folios[i]->page, vma->vm_page_prot);
			entry = pte_sw_mkyoung(entry);
			if (vma->vm_flags & VM_WRITE)
				entry = pte_mkwrite(pte_mkdirty(entry), vma);
			folio_add_new_anon_rmap(folios[i], vma, addr,
						RMAP_EXCLUSIVE);
			folio_add_lru_vma(folios[i], vma);
			folios[i] = NULL;
			nr_anon++;
		} else {
			entry = pfn_pte(my_zero_pfn(addr), vma->vm_page_prot);
			entry = pte_mkspecial(entry);
		}
		set_pte_at(mm, addr, ptep + i, entry);
		update_mmu_cache(vma, addr, ptep + i);
	}
	if (nr_anon)
		add_mm_counter(mm, MM_ANONPAGES, nr_anon);

out_unlock:
	pte_unmap_unlock(ptep, ptl);
out_free:
	for (i = 0; i < HMM_POPULATE_BATCH; i++)
		if (folios[i])
			folio_put(folios[i]);
	return ret;
}

/*
 * Populate the empty PTEs [addr, end) of one page table the way
 * do_anonymous_page() would, but a batch at a time: the per-page cost of
 * handle_mm_fault() (page table walk, lock round trip, fault accounting)
 * is what dominates faulting in large unpopulated ranges for a device.
 */
static int hmm_populate_anon(struct hmm_walk *hw, struct vm_area_struct *vma,
			     pmd_t *pmdp, unsigned long addr,
			     unsigned long end)
{
	struct folio *folios[HMM_POPULATE_BATCH];
	bool zero_ok = !mm_forbids_zeropage(vma->vm_mm);
	unsigned long batch_end, req, a;
	unsigned int i;
	int ret;

	for (; addr < end; addr = batch_end) {
		batch_end = min(end, addr + HMM_POPULATE_BATCH * PAGE_SIZE);
		memset(folios, 0, sizeof(folios));
		ret = 0;
		for (a = addr, i = 0; a < batch_end; a += PAGE_SIZE, i++) {
			req = hmm_request(hw, a);
			if (!(req & HMM_PFN_REQ_WRITE) && zero_ok)
				continue;
			if ((req & HMM_PFN_REQ_WRITE) &&
			    !(vma->vm_flags & VM_WRITE)) {
				ret = -EPERM;
				break;
			}
			folios[i] = hmm_alloc_anon(vma, a);
			if (!folios[i]) {
				ret = -ENOMEM;
				break;
			}
		}
		if (ret) {
			while (i--)
				if (folios[i])
					folio_put(folios[i]);
			return ret;
		}
		ret = hmm_install_anon(vma, pmdp, addr, batch_end, folios);
		if (ret)
			return ret;
		cond_resched();
	}
	return 0;
}

/*
 * A page of a shmem file that sits in device-private memory is in no page
 * table: the page cache holds its device-private entry instead (see
 * mm/migrate_device.c).  Report it to the device that owns it, writable
 * only through a shared writable mapping.  A locked device page is on its
 * way back to system memory and is reported absent.
 *
 * Whoever moves the page locks it, invalidates the mirrors, replaces the
 * entry and only then unlocks it.  A report made before the lock is
 * caught by mmu_interval_read_retry().  But the entry may have been read
 * before the replacement and the page seen unlocked after it: the
 * invalidation then came before the caller's notifier sequence was read,
 * and nothing would tell it that the page left the file.  So the entry is
 * read again once the page was seen unlocked, and reported only if it is
 * still there.
 */
static unsigned long hmm_file_entry(const struct hmm_walk *hw,
				    struct vm_area_struct *vma,
				    unsigned long addr)
{
	const void *owner = hw->range->dev_private_owner;
	pgoff_t index = linear_page_index(vma, addr);
	struct address_space *mapping;
	struct page *page;
	swp_entry_t swp;
	void *entry;

	if (!owner || !shmem_file(vma->vm_file))
		return 0;
	mapping = vma->vm_file->f_mapping;
	entry = xa_load(&mapping->i_pages, index);
	if (!xa_is_value(entry))
		return 0;
	swp = radix_to_swp_entry(entry);
	if (!is_device_private_entry(swp))
		return 0;
	page = pfn_swap_entry_to_page(swp);
	if (page->pgmap->owner != owner || PageLocked(page))
		return 0;
	/* Pairs with folio_unlock(), which orders the replacement before. */
	smp_rmb();
	if (xa_load(&mapping->i_pages, index) != entry)
		return 0;
	if ((vma->vm_flags & (VM_SHARED | VM_WRITE)) == (VM_SHARED | VM_WRITE))
		return swp_offset_pfn(swp) | HMM_PFN_VALID | HMM_PFN_WRITE;
	return swp_offset_pfn(swp) | HMM_PFN_VALID;
}

/*
 * First address of a hole of a shmem mapping that has a page in device
 * memory or is asked to be faulted; the entries before it are empty.
 */
static unsigned long hmm_file_hole(struct hmm_walk *hw,
				   struct vm_area_struct *vma,
				   unsigned long addr, unsigned long end)
{
	unsigned long start = addr;

	for (; addr < end; addr += PAGE_SIZE) {
		if (hmm_file_entry(hw, vma, addr) ||
		    (hw->may_fault && hmm_request(hw, addr)))
			break;
		hw->range->hmm_pfns[hmm_index(hw, addr)] = 0;
	}
	hmm_note_written(hw, start, addr);
	return addr;
}

/* Build the page tables of @mm down to the PTE table covering @addr. */
static int hmm_pte_table_alloc(struct mm_struct *mm, unsigned long addr)
{
	p4d_t *p4d = p4d_alloc(mm, pgd_offset(mm, addr), addr);
	pud_t *pud = p4d ? pud_alloc(mm, p4d, addr) : NULL;
	pmd_t *pmd = pud ? pmd_alloc(mm, pud, addr) : NULL;

	if (!pmd || pte_alloc(mm, pmd))
		return -ENOMEM;
	return 0;
}

/*
 * Nothing is mapped in [addr, end): no page table at some level, or no VMA
 * at all.  Fault the first page that is asked for and restart the walk
 * there: the fault builds the missing tables (or a huge page), and the
 * rest of the run is cheaper to handle from the level that now exists.
 * In a hugetlb VMA the walker holds the hugetlb VMA lock, which the fault
 * takes itself: drop it around the fault.
 *
 * A shmem page in device-private memory is reported only from under a
 * page table: mprotect() tells mirrors about a range only where page
 * tables exist.  So one met in a hole gets its table built instead, and
 * the walk restarts there.
 */
static int hmm_walk_hole(unsigned long addr, unsigned long end,
			 __always_unused int depth, struct mm_walk *walk)
{
	struct hmm_walk *hw = walk->private;
	struct vm_area_struct *vma = walk->vma;
	unsigned long first;
	int ret;

	addr = max(addr, hw->resume);
	if (addr >= end)
		return 0;
	if (!walk->vma)
		return hmm_report_unusable(hw, addr, end);

	if (shmem_file(vma->vm_file)) {
		first = hmm_file_hole(hw, vma, addr, end);
		if (first < end && hmm_file_entry(hw, vma, first)) {
			if (hmm_pte_table_alloc(walk->mm, first))
				return -ENOMEM;
			hmm_set_resume(hw, first);
			return HMM_WALK_RESTART;
		}
	} else {
		first = hmm_first_unsatisfied(hw, addr, end, 0);
		hmm_fill(hw, addr, first, 0);
	}
	if (first == end)
		return 0;

	if (is_vm_hugetlb_page(vma))
		hugetlb_vma_unlock_read(vma);
	ret = hmm_fault_pages(hw, vma, first, first + PAGE_SIZE, 0);
	if (is_vm_hugetlb_page(vma))
		hugetlb_vma_lock_read(vma);
	if (ret)
		return ret;
	hmm_set_resume(hw, first);
	return HMM_WALK_RESTART;
}

/*
 * Translate a PTE into an output entry.  Present pages without a struct
 * page the caller may use (special mappings other than the zero page and
 * devmap) and poisoned entries become HMM_PFN_ERROR; anything that a fault
 * could turn into a page becomes 0.
 */
static unsigned long hmm_pte_entry(const struct hmm_walk *hw,
				   struct vm_area_struct *vma,
				   unsigned long addr, pte_t pte)
{
	unsigned long pfn;
	swp_entry_t swp;

	if (pte_none(pte))
		return hmm_file_entry(hw, vma, addr);

	if (!pte_present(pte)) {
		swp = pte_to_swp_entry(pte);
		if (is_device_private_entry(swp) &&
		    pfn_swap_entry_to_page(swp)->pgmap->owner ==
		    hw->range->dev_private_owner) {
			pfn = swp_offset_pfn(swp) | HMM_PFN_VALID;
			if (is_writable_device_private_entry(swp))
				pfn |= HMM_PFN_WRITE;
			return pfn;
		}
		if (is_hwpoison_entry(swp) || is_poisoned_swp_entry(swp))
			return HMM_PFN_ERROR;
		return 0;
	}

	if (pte_protnone(pte))
		return 0;

	pfn = pte_pfn(pte);
	if ((!IS_ENABLED(CONFIG_ARCH_HAS_PTE_SPECIAL) || pte_special(pte)) &&
	    !is_zero_pfn(pfn) && !pte_devmap(pte) &&
	    !vm_normal_page(vma, addr, pte))
		return HMM_PFN_ERROR;

	return pfn | HMM_PFN_VALID | (pte_write(pte) ? HMM_PFN_WRITE : 0);
}

/*
 * The caller's own device-private page (the only non-present PTE reported
 * valid) is handed back as it is and never faulted, as in 6.12: a write
 * request on a read-only one, which every fork() leaves in the parent,
 * would have the core call the owner's migrate_to_ram() from inside the
 * owner's own device fault.  The owner gets VALID without WRITE and
 * decides itself, e.g. migrates the page back and faults again.
 */
static inline bool hmm_pte_is_owner_device(pte_t pte, unsigned long entry)
{
	return (entry & HMM_PFN_VALID) && is_swap_pte(pte);
}

/*
 * Report the PTEs of one page table over [addr, end).  On meeting pages
 * that need a fault, the whole run of them is faulted at once and the
 * caller is asked to come back to the same PMD (ACTION_AGAIN) with
 * hw->resume at the start of the run.
 */
static int hmm_walk_ptes(struct mm_walk *walk, pmd_t *pmdp,
			 unsigned long addr, unsigned long end)
{
	struct hmm_walk *hw = walk->private;
	unsigned long *pfns = hw->range->hmm_pfns;
	unsigned long run = 0, run_end, entry, start = addr;
	unsigned long i = hmm_index(hw, addr);
	bool run_empty = true;
	pte_t *ptep, *base, pte;
	int ret;

	base = pte_offset_map(pmdp, addr);
	if (!base) {
		/* The table went away under us: look at the PMD again. */
		walk->action = ACTION_AGAIN;
		return 0;
	}

	for (ptep = base; addr < end; addr += PAGE_SIZE, ptep++, i++) {
		pte = ptep_get(ptep);
		entry = hmm_pte_entry(hw, walk->vma, addr, pte);
		if (likely(!hw->may_fault ||
			   hmm_entry_satisfies(entry, hmm_request(hw, addr)) ||
			   hmm_pte_is_owner_device(pte, entry))) {
			if (run)
				break;
			pfns[i] = entry;
			continue;
		}
		if (entry & HMM_PFN_ERROR) {
			pte_unmap(base);
			return -EFAULT;
		}
		if (!run)
			run = addr;
		run_empty &= pte_none(pte);
	}
	pte_unmap(base);
	hmm_note_written(hw, start, run ? run : end);

	if (!run) {
		hmm_set_resume(hw, end);
		return 0;
	}

	/*
	 * Fault [run, run_end).  Every page in it is either absent or falls
	 * short of its request, so let hmm_fault_pages() fault them all by
	 * treating their current entries as empty.
	 */
	run_end = addr;
	if (run_empty && hmm_can_populate_anon(walk->vma)) {
		ret = hmm_note_fault(hw, run);
		if (!ret)
			ret = hmm_populate_anon(hw, walk->vma, pmdp, run,
						run_end);
	} else {
		ret = hmm_fault_pages(hw, walk->vma, run, run_end, 0);
	}
	if (ret)
		return ret;
	hmm_set_resume(hw, run);
	walk->action = ACTION_AGAIN;
	return 0;
}

/*
 * Flags of a huge PMD mapping, or HMM_PFN_ERROR when it has no page the
 * caller may use.  A NUMA-hinting (protnone) PMD is reported as absent.
 */
static unsigned long hmm_huge_pmd_flags(struct vm_area_struct *vma,
					unsigned long addr, pmd_t pmd)
{
	if (pmd_protnone(pmd))
		return 0;
	if (!is_huge_zero_pmd(pmd) && !pmd_devmap(pmd) &&
	    !vm_normal_page_pmd(vma, addr, pmd))
		return HMM_PFN_ERROR;
	return HMM_PFN_VALID | (pmd_write(pmd) ? HMM_PFN_WRITE : 0) |
	       hmm_order_flags(PMD_SHIFT - PAGE_SHIFT);
}

/*
 * Report the pages of a huge leaf (PMD, PUD or hugetlb) in [addr, end),
 * the page at @addr being @pfn entered as @flags, up to the first one whose
 * request the leaf does not satisfy, and resume there.  Returns that
 * address, @end if there is none.  The pages before it are written now,
 * not left for after the caller's fault of it: that fault need not
 * invalidate anything (a write-protected THP or private hugetlb page is
 * reused in place), so no retry would catch them holding the input.
 */
static unsigned long hmm_report_leaf(struct hmm_walk *hw, unsigned long addr,
				     unsigned long end, unsigned long pfn,
				     unsigned long flags)
{
	unsigned long first = hmm_first_unsatisfied(hw, addr, end, flags);

	if (flags & HMM_PFN_VALID)
		hmm_fill_pfns(hw, addr, first, pfn, flags);
	else
		hmm_fill(hw, addr, first, 0);
	hmm_set_resume(hw, first);
	return first;
}

/*
 * Report [addr, end) of a huge leaf (PMD or PUD) whose page at @addr is
 * @pfn, entered as @flags, up to the first page the request is not
 * satisfied with; fault that one and have the walker look at the entry
 * again: one fault fixes (or splits) the whole huge mapping, and a
 * migration entry is waited for inside handle_mm_fault().
 */
static int hmm_walk_huge_leaf(struct mm_walk *walk, unsigned long addr,
			      unsigned long end, unsigned long pfn,
			      unsigned long flags)
{
	struct hmm_walk *hw = walk->private;
	unsigned long first;
	int ret;

	first = hmm_report_leaf(hw, addr, end, pfn, flags);
	if (first == end)
		return 0;

	ret = hmm_fault_pages(hw, walk->vma, first, first + PAGE_SIZE, flags);
	if (ret)
		return ret;
	walk->action = ACTION_AGAIN;
	return 0;
}

/* A PMD that is neither a table nor empty: huge page or swap-like entry. */
static int hmm_walk_pmd_leaf(struct mm_walk *walk, pmd_t pmd,
			     unsigned long addr, unsigned long end)
{
	unsigned long flags = 0, pfn = 0;

	if (pmd_present(pmd))
		flags = hmm_huge_pmd_flags(walk->vma, addr, pmd);
	else if (!thp_migration_supported() || !is_pmd_migration_entry(pmd))
		flags = HMM_PFN_ERROR;

	if (flags & HMM_PFN_ERROR)
		return hmm_report_unusable(walk->private, addr, end);
	if (flags & HMM_PFN_VALID)
		pfn = pmd_pfn(pmd) + ((addr & ~PMD_MASK) >> PAGE_SHIFT);
	return hmm_walk_huge_leaf(walk, addr, end, pfn, flags);
}

static int hmm_walk_pmd(pmd_t *pmdp, unsigned long addr, unsigned long end,
			struct mm_walk *walk)
{
	struct hmm_walk *hw = walk->private;
	pmd_t pmd;

	addr = max(addr, hw->resume);
	if (addr >= end)
		return 0;

	/*
	 * Read once without the PMD lock; a split or collapse racing with us
	 * is preceded by an invalidation the caller will notice.
	 */
	pmd = pmdp_get_lockless(pmdp);
	if (pmd_none(pmd))
		return hmm_walk_hole(addr, end, 3, walk);

	walk->action = ACTION_CONTINUE;
	if (!pmd_present(pmd) || pmd_trans_huge(pmd) || pmd_devmap(pmd))
		return hmm_walk_pmd_leaf(walk, pmd, addr, end);
	if (pmd_bad(pmd))
		return hmm_report_unusable(hw, addr, end);
	return hmm_walk_ptes(walk, pmdp, addr, end);
}

#if defined(CONFIG_ARCH_HAS_PTE_DEVMAP) && \
	defined(CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD)
/*
 * A PUD leaf (device DAX) is reported with its order; letting the walker
 * descend would make it split the mapping, so always answer CONTINUE for
 * leaves.  Tables are left to the PMD level.
 */
static int hmm_walk_pud(pud_t *pudp, unsigned long addr, unsigned long end,
			struct mm_walk *walk)
{
	struct hmm_walk *hw = walk->private;
	pud_t pud = pudp_get(pudp);
	unsigned long flags;

	if (!pud_present(pud) || !pud_leaf(pud))
		return 0;

	walk->action = ACTION_CONTINUE;
	addr = max(addr, hw->resume);
	if (addr >= end)
		return 0;
	if (!pud_devmap(pud))
		return hmm_report_unusable(hw, addr, end);

	flags = HMM_PFN_VALID | (pud_write(pud) ? HMM_PFN_WRITE : 0) |
		hmm_order_flags(PUD_SHIFT - PAGE_SHIFT);
	return hmm_walk_huge_leaf(walk, addr, end, pud_pfn(pud) +
				  ((addr & ~PUD_MASK) >> PAGE_SHIFT), flags);
}
#else
#define hmm_walk_pud	NULL
#endif

#ifdef CONFIG_HUGETLB_PAGE
static unsigned long hmm_hugetlb_entry_flags(struct vm_area_struct *vma,
					     pte_t entry)
{
	swp_entry_t swp;

	if (pte_present(entry))
		return HMM_PFN_VALID |
		       (huge_pte_write(entry) ? HMM_PFN_WRITE : 0) |
		       hmm_order_flags(huge_page_order(hstate_vma(vma)));
	if (huge_pte_none(entry))
		return 0;
	swp = pte_to_swp_entry(entry);
	if (is_hwpoison_entry(swp) || is_poisoned_swp_entry(swp))
		return HMM_PFN_ERROR;
	return 0;
}

/*
 * Called with the hugetlb VMA lock held for read; it is dropped around
 * the fault because hugetlb_fault() takes it itself.
 */
static int hmm_walk_hugetlb(pte_t *ptep, unsigned long hmask,
			    unsigned long addr, unsigned long end,
			    struct mm_walk *walk)
{
	struct hmm_walk *hw = walk->private;
	struct vm_area_struct *vma = walk->vma;
	unsigned long flags, first, pfn = 0;
	spinlock_t *ptl;	/* only held to read the entry */
	pte_t entry;
	int ret;

	addr = max(addr, hw->resume);
	if (addr >= end)
		return 0;

	ptl = huge_pte_lock(hstate_vma(vma), walk->mm, ptep);
	entry = huge_ptep_get(walk->mm, addr, ptep);
	spin_unlock(ptl);

	flags = hmm_hugetlb_entry_flags(vma, entry);
	if (flags & HMM_PFN_ERROR)
		return hmm_report_unusable(hw, addr, end);

	if (flags & HMM_PFN_VALID)
		pfn = pte_pfn(entry) + ((addr & ~hmask) >> PAGE_SHIFT);
	first = hmm_report_leaf(hw, addr, end, pfn, flags);
	if (first == end)
		return 0;

	hugetlb_vma_unlock_read(vma);
	ret = hmm_fault_pages(hw, vma, first, first + PAGE_SIZE, flags);
	hugetlb_vma_lock_read(vma);
	if (ret)
		return ret;
	return HMM_WALK_RESTART;
}
#else
#define hmm_walk_hugetlb	NULL
#endif

/*
 * VMAs whose pages may not be handed out (VM_IO, VM_PFNMAP: no struct page
 * or not ours to touch; no VM_READ: HMM has no write-only mappings) are
 * skipped and reported as errors, or fail the call if a fault was asked.
 */
static int hmm_walk_test(unsigned long addr, unsigned long end,
			 struct mm_walk *walk)
{
	struct hmm_walk *hw = walk->private;
	struct vm_area_struct *vma = walk->vma;
	int ret;

	if (!(vma->vm_flags & (VM_IO | VM_PFNMAP)) &&
	    (vma->vm_flags & VM_READ))
		return 0;

	addr = max(addr, hw->resume);
	if (addr < end) {
		ret = hmm_report_unusable(hw, addr, end);
		if (ret)
			return ret;
	}
	return 1;
}

static const struct mm_walk_ops hmm_walk_ops = {
	.pud_entry	= hmm_walk_pud,
	.pmd_entry	= hmm_walk_pmd,
	.pte_hole	= hmm_walk_hole,
	.hugetlb_entry	= hmm_walk_hugetlb,
	.test_walk	= hmm_walk_test,
	.walk_lock	= PGWALK_RDLOCK,
};

/*
 * A range must be page aligned, non-empty, inside the user address space
 * of the mm and inside the notifier's interval: pages outside the interval
 * are not covered by the sequence the caller validates against.
 */
static bool hmm_range_valid(const struct hmm_range *range)
{
	const struct mmu_interval_notifier *notifier = range->notifier;

	if (!notifier || !notifier->mm || !range->hmm_pfns)
		return false;
	if (!PAGE_ALIGNED(range->start) || !PAGE_ALIGNED(range->end))
		return false;
	if (range->start >= range->end || range->end > notifier->mm->task_size)
		return false;
	return range->start >= notifier->interval_tree.start &&
	       range->end - 1 <= notifier->interval_tree.last;
}

/**
 * hmm_range_fault() - snapshot the CPU page tables of a range
 * @range: the range, its notifier and sequence, and its pfn array
 *
 * Fill @range->hmm_pfns with one entry per page of [@range->start,
 * @range->end): the PFN with HMM_PFN_VALID (and HMM_PFN_WRITE if the CPU
 * may write it), the order of the CPU mapping, 0 for a page that is not
 * present, or HMM_PFN_ERROR for a page that can never be handed out.
 * Pages whose request (@range->default_flags, plus the bits of their input
 * entry selected by @range->pfn_flags_mask) asks for HMM_PFN_REQ_FAULT or
 * HMM_PFN_REQ_WRITE and is not met are faulted in first.  A device-private
 * page of @range->dev_private_owner is never faulted: it is reported as it
 * is mapped, so a read-only one (the parent's after fork()) comes back
 * without HMM_PFN_WRITE even when write was requested, and the owner
 * decides what to do (migrate it back and call again, say), as in 6.12.
 *
 * The result may only be used once mmu_interval_read_retry() on
 * @range->notifier and @range->notifier_seq, taken under the lock the
 * driver's invalidate callback also takes, says it is still current.
 * On success every entry is output; on error the contents of
 * @range->hmm_pfns are undefined.
 *
 * Context: process context; the mmap lock of @range->notifier->mm must be
 * held for read (it is not dropped).  May sleep when faulting, and also
 * in a snapshot without HMM_PFN_REQ_FAULT: one of a shmem mapping with
 * pages in device-private memory allocates the page tables they are
 * reported from.
 * Return: 0 on success,
 * -EINVAL if the range is malformed (NULL notifier or pfn array,
 * unaligned, empty, reversed, beyond the user address space) or not
 * entirely inside @range->notifier's interval (6.12 took such a range; its
 * pages outside the interval are not covered by the sequence),
 * -EBUSY if the notifier sequence moved, or a page stayed unusable after
 * HMM_FAULT_ATTEMPTS (4) faults in this call (6.12 looped): retry after
 * re-reading the sequence,
 * -EFAULT if a requested page has no VMA, lies in a VM_IO/VM_PFNMAP or
 * unreadable VMA, has no usable page, or its fault failed,
 * -EPERM if a write fault was needed in a VMA without VM_WRITE,
 * -ENOMEM if a fault ran out of memory (VM_FAULT_OOM; 6.12 returned
 * -EFAULT) or page tables could not be allocated, snapshot included.
 */
int hmm_range_fault(struct hmm_range *range)
{
	struct hmm_walk hw = { .range = range };
	struct mm_struct *mm;
	int ret;

	if (!range || !hmm_range_valid(range))
		return -EINVAL;

	mm = range->notifier->mm;
	mmap_assert_locked(mm);

	hw.resume = range->start;
	hw.written = range->start;
	hw.may_fault = (range->default_flags | range->pfn_flags_mask) &
		       HMM_PFN_REQ_FAULT;
	if (range->default_flags & HMM_PFN_REQ_FAULT)
		hw.fixed_req = range->default_flags & HMM_PFN_REQ_MASK;

	do {
		if (mmu_interval_check_retry(range->notifier,
					     range->notifier_seq))
			return -EBUSY;
		ret = walk_page_range(mm, hw.resume, range->end,
				      &hmm_walk_ops, &hw);
	} while (ret == HMM_WALK_RESTART);

	return ret;
}
EXPORT_SYMBOL(hmm_range_fault);

/* Bits of hmm_mirror::state. */
enum {
	HMM_MIRROR_RELEASED,	/* ->release ran, or may no longer run */
};

static enum hmm_update_event hmm_update_event_of(enum mmu_notifier_event ev)
{
	switch (ev) {
	case MMU_NOTIFY_PROTECTION_VMA:
	case MMU_NOTIFY_PROTECTION_PAGE:
	case MMU_NOTIFY_SOFT_DIRTY:
		return HMM_UPDATE_PROTECTION;
	case MMU_NOTIFY_MIGRATE:
		return HMM_UPDATE_MIGRATE;
	case MMU_NOTIFY_EXCLUSIVE:
		return HMM_UPDATE_EXCLUSIVE;
	case MMU_NOTIFY_RELEASE:
		return HMM_UPDATE_RELEASE;
	case MMU_NOTIFY_UNMAP:
	case MMU_NOTIFY_CLEAR:
	default:
		/* Unknown reasons are treated as the strongest: pages gone. */
		return HMM_UPDATE_UNMAP;
	}
}

/*
 * The sequence is advanced before the driver runs: a fault racing with us
 * either sees the new value under the driver lock and retries, or finished
 * programming the device before we got the lock and gets zapped by it.
 */
static bool hmm_mirror_invalidate(struct mmu_interval_notifier *interval,
				  const struct mmu_notifier_range *nrange,
				  unsigned long cur_seq)
{
	struct hmm_mirror *mirror =
		container_of(interval, struct hmm_mirror, interval);
	struct hmm_update update = {
		.start		= max(nrange->start, interval->interval_tree.start),
		.end		= min(nrange->end, interval->interval_tree.last + 1),
		.event		= hmm_update_event_of(nrange->event),
		.blockable	= mmu_notifier_range_blockable(nrange),
		.owner		= nrange->owner,
	};
	int ret;

	mmu_interval_set_seq(interval, cur_seq);
	ret = mirror->ops->invalidate_range(mirror, &update);

	/*
	 * Only a non-blocking invalidation may fail; the notifier core warns
	 * on any other failure, and a driver bug must not become a splat.
	 */
	return !ret || update.blockable;
}

static const struct mmu_interval_notifier_ops hmm_mirror_interval_ops = {
	.invalidate = hmm_mirror_invalidate,
};

static void hmm_mirror_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	struct hmm_mirror *mirror =
		container_of(mn, struct hmm_mirror, notifier);

	if (test_and_set_bit(HMM_MIRROR_RELEASED, &mirror->state))
		return;
	if (mirror->ops->release)
		mirror->ops->release(mirror);
}

static const struct mmu_notifier_ops hmm_mirror_notifier_ops = {
	.release = hmm_mirror_release,
};

/**
 * hmm_mirror_register() - start mirroring an address space
 * @mirror: mirror with @mirror->ops set; the rest is initialised here
 * @mm: the address space to mirror; must still have users
 *
 * From here on @mirror->ops->invalidate_range() is called for every change
 * to the CPU page tables of @mm's user address space, and ->release() once
 * when @mm is torn down.  A reference on @mm (mmgrab()) is held until
 * hmm_mirror_unregister().
 *
 * Context: process context, may sleep; takes the mmap lock of @mm for
 * write, so the caller must not hold it.
 * Return: 0 on success, -EINVAL if an argument is missing or @mm has no
 * users left, -ENOMEM if the notifiers could not be allocated.
 */
int hmm_mirror_register(struct hmm_mirror *mirror, struct mm_struct *mm)
{
	int ret;

	might_sleep();
	if (!mirror || !mm || !mirror->ops || !mirror->ops->invalidate_range)
		return -EINVAL;
	if (!mmget_not_zero(mm))
		return -EINVAL;

	mmgrab(mm);
	mirror->mm = mm;
	mirror->state = 0;
	mirror->notifier.ops = &hmm_mirror_notifier_ops;

	ret = mmu_notifier_register(&mirror->notifier, mm);
	if (ret)
		goto out_drop_mm;

	ret = mmu_interval_notifier_insert(&mirror->interval, mm, 0,
					   mm->task_size,
					   &hmm_mirror_interval_ops);
	if (ret)
		goto out_unregister_notifier;

	mmput(mm);
	return 0;

out_unregister_notifier:
	set_bit(HMM_MIRROR_RELEASED, &mirror->state);
	mmu_notifier_unregister(&mirror->notifier, mm);
out_drop_mm:
	mirror->mm = NULL;
	mmdrop(mm);
	mmput(mm);
	return ret;
}
EXPORT_SYMBOL_GPL(hmm_mirror_register);

/**
 * hmm_mirror_unregister() - stop mirroring
 * @mirror: a mirror registered with hmm_mirror_register()
 *
 * Waits for callbacks in flight; none runs once this returns.  ->release()
 * is not called by unregistering: it only reports the death of the mm.
 * Drops the reference on the mm taken at registration.
 *
 * Context: process context, may sleep; must not be called from a mirror
 * callback or with the mmap lock held.
 */
void hmm_mirror_unregister(struct hmm_mirror *mirror)
{
	struct mm_struct *mm = mirror->mm;

	might_sleep();
	if (!mm)
		return;
	mmu_interval_notifier_remove(&mirror->interval);
	set_bit(HMM_MIRROR_RELEASED, &mirror->state);
	mmu_notifier_unregister(&mirror->notifier, mm);
	mirror->mm = NULL;
	mmdrop(mm);
}
EXPORT_SYMBOL_GPL(hmm_mirror_unregister);

/* One hmm_range_fault() pass with the mm pinned and its mmap lock held. */
static int hmm_mirror_fault_once(struct hmm_mirror *mirror,
				 struct hmm_range *range)
{
	struct mm_struct *mm = mirror->mm;
	int ret;

	if (!mmget_not_zero(mm))
		return -EFAULT;
	range->notifier_seq = mmu_interval_read_begin(&mirror->interval);
	mmap_read_lock(mm);
	ret = hmm_range_fault(range);
	mmap_read_unlock(mm);
	/* Before taking the driver lock: the last mmput() invalidates. */
	mmput(mm);
	return ret;
}

/**
 * hmm_mirror_range_fault() - fault and snapshot a range for a mirror
 * @mirror: a registered mirror
 * @range: the request; @range->notifier is set to the mirror's notifier
 *	and @range->notifier_seq is managed here
 * @lock: the driver lock its ->invalidate_range() takes
 *
 * Runs hmm_range_fault() until it produces a snapshot that is still
 * current with @lock held, retrying on invalidations for up to
 * HMM_RANGE_DEFAULT_TIMEOUT milliseconds.
 *
 * Context: process context, may sleep.  The caller must hold neither the
 * mmap lock of the mirrored mm nor @lock.  On success @lock is held.
 * Return: 0 with @lock held and @range->hmm_pfns valid until it is
 * released; otherwise @lock is not held and the error is that of
 * hmm_range_fault() (-EINVAL, -EFAULT also when the mm is gone, -EPERM,
 * -ENOMEM), or -EBUSY when the timeout passed.
 */
int hmm_mirror_range_fault(struct hmm_mirror *mirror, struct hmm_range *range,
			   struct mutex *lock)
{
	unsigned long timeout;
	int ret;

	might_sleep();
	if (!mirror || !mirror->mm || !range || !lock)
		return -EINVAL;
	lockdep_assert_not_held(lock);
	lockdep_assert_not_held(&mirror->mm->mmap_lock);

	range->notifier = &mirror->interval;
	timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	for (;;) {
		ret = hmm_mirror_fault_once(mirror, range);
		if (!ret) {
			mutex_lock(lock);
			if (!mmu_interval_read_retry(&mirror->interval,
						     range->notifier_seq))
				return 0;
			mutex_unlock(lock);
			ret = -EBUSY;
		}
		if (ret != -EBUSY || time_after(jiffies, timeout))
			return ret;
	}
}
EXPORT_SYMBOL_GPL(hmm_mirror_range_fault);
