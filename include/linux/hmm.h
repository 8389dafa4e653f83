/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Heterogeneous memory management (HMM): let a device mirror the CPU page
 * tables of a process.
 *
 * Two layers are offered.  hmm_range_fault() takes a snapshot of the CPU
 * page tables over a virtual address range (optionally faulting pages in
 * first) and is paired by the caller with an mmu_interval_notifier that
 * tells it when the snapshot went stale.  struct hmm_mirror bundles that
 * notifier, a release callback and the usual fault/retry loop for drivers
 * that mirror a whole address space.
 *
 * See Documentation/mm/hmm.rst for the protocol drivers must follow.
 */
#ifndef _LINUX_HMM_H
#define _LINUX_HMM_H

#include <linux/mm.h>
#include <linux/mmu_notifier.h>

struct mutex;

/**
 * enum hmm_pfn_flags - flag bits of an hmm_range::hmm_pfns entry
 * @HMM_PFN_VALID: output: the low bits hold a PFN the device may read.
 *	With a dev_private_owner set, it may be a device-private page of
 *	that owner.
 * @HMM_PFN_WRITE: output: the device may also write the page
 *	(only ever set together with HMM_PFN_VALID).
 * @HMM_PFN_ERROR: output: there is no usable page behind this address
 *	(no VMA, VM_IO/VM_PFNMAP, special PTE, poisoned page, ...); the
 *	device must treat an access as fatal.
 * @HMM_PFN_ORDER_SHIFT: output: first bit of the 5-bit field giving the
 *	order of the CPU mapping that covers the page; read it with
 *	hmm_pfn_to_map_order().
 * @HMM_PFN_REQ_FAULT: input: the page must come back HMM_PFN_VALID,
 *	faulting it in if needed, or hmm_range_fault() fails.
 * @HMM_PFN_REQ_WRITE: input: the page must come back HMM_PFN_WRITE,
 *	write-faulting it if needed.  Only meaningful with HMM_PFN_REQ_FAULT.
 * @HMM_PFN_FLAGS: mask of every bit that is not part of the PFN.
 *
 * An entry that comes back as 0 has no page right now but could be faulted
 * in by a later call asking for it.  The request bits share their values
 * with the matching output bits, so an array may be reused between calls.
 */
enum hmm_pfn_flags {
	HMM_PFN_VALID = 1UL << (BITS_PER_LONG - 1),
	HMM_PFN_WRITE = 1UL << (BITS_PER_LONG - 2),
	HMM_PFN_ERROR = 1UL << (BITS_PER_LONG - 3),
	HMM_PFN_ORDER_SHIFT = (BITS_PER_LONG - 8),

	HMM_PFN_REQ_FAULT = HMM_PFN_VALID,
	HMM_PFN_REQ_WRITE = HMM_PFN_WRITE,

	HMM_PFN_FLAGS = 0xFFUL << HMM_PFN_ORDER_SHIFT,
};

/* Width of the map order field that starts at HMM_PFN_ORDER_SHIFT. */
#define HMM_PFN_ORDER_MASK	0x1FUL

/**
 * hmm_pfn_to_page() - struct page of a valid hmm_pfns entry
 * @hmm_pfn: an entry with HMM_PFN_VALID set
 *
 * Context: only meaningful while the caller holds the lock it checks
 * mmu_interval_read_retry() under, after that check succeeded.
 * Return: the page the entry refers to.
 */
static inline struct page *hmm_pfn_to_page(unsigned long hmm_pfn)
{
	return pfn_to_page(hmm_pfn & ~HMM_PFN_FLAGS);
}

/**
 * hmm_pfn_to_phys() - physical address of a valid hmm_pfns entry
 * @hmm_pfn: an entry with HMM_PFN_VALID set
 *
 * Context: same rule as hmm_pfn_to_page().
 * Return: the physical address of the first byte of the page.
 */
static inline phys_addr_t hmm_pfn_to_phys(unsigned long hmm_pfn)
{
	return PFN_PHYS(hmm_pfn & ~HMM_PFN_FLAGS);
}

/**
 * hmm_pfn_to_map_order() - order of the CPU mapping behind an entry
 * @hmm_pfn: an entry with HMM_PFN_VALID set
 *
 * A device may use this to map a large page with a single entry of its
 * own: the CPU mapping is naturally aligned and 1 << order pages long, and
 * every entry inside it carries the same flags.  The mapping may extend
 * beyond the start or end of the range that was asked for.
 *
 * Context: same rule as hmm_pfn_to_page().
 * Return: 0 for a PTE mapping, PMD_SHIFT - PAGE_SHIFT for a PMD, etc.
 */
static inline unsigned int hmm_pfn_to_map_order(unsigned long hmm_pfn)
{
	return (hmm_pfn >> HMM_PFN_ORDER_SHIFT) & HMM_PFN_ORDER_MASK;
}

/**
 * struct hmm_range - one hmm_range_fault() request
 * @notifier: interval notifier covering [@start, @end) of the target mm
 * @notifier_seq: value of mmu_interval_read_begin() on @notifier
 * @start: first virtual address, page aligned
 * @end: one past the last virtual address, page aligned
 * @hmm_pfns: one entry per page: request flags in, PFN and flags out
 * @default_flags: request flags applied to every page
 * @pfn_flags_mask: which bits of each @hmm_pfns input entry are honoured
 *	in addition to @default_flags (0: ignore the input array)
 * @dev_private_owner: device-private pages whose pgmap owner matches are
 *	reported as-is instead of being migrated back to system memory
 */
struct hmm_range {
	struct mmu_interval_notifier *notifier;
	unsigned long		notifier_seq;
	unsigned long		start;
	unsigned long		end;
	unsigned long		*hmm_pfns;
	unsigned long		default_flags;
	unsigned long		pfn_flags_mask;
	void			*dev_private_owner;
};

int hmm_range_fault(struct hmm_range *range);

/*
 * HMM_RANGE_DEFAULT_TIMEOUT - milliseconds a caller should keep retrying
 * hmm_range_fault() on -EBUSY before giving up.
 */
#define HMM_RANGE_DEFAULT_TIMEOUT 1000

/**
 * enum hmm_update_event - why a mirrored range is being invalidated
 * @HMM_UPDATE_UNMAP: pages unmapped or freed (munmap, MADV_DONTNEED, zap,
 *	reclaim)
 * @HMM_UPDATE_PROTECTION: protection lowered (mprotect, write-protect,
 *	COW, soft-dirty)
 * @HMM_UPDATE_MIGRATE: pages migrating, e.g. to or from device memory
 * @HMM_UPDATE_EXCLUSIVE: a device takes exclusive access for atomics
 * @HMM_UPDATE_RELEASE: the address space is being torn down
 */
enum hmm_update_event {
	HMM_UPDATE_UNMAP,
	HMM_UPDATE_PROTECTION,
	HMM_UPDATE_MIGRATE,
	HMM_UPDATE_EXCLUSIVE,
	HMM_UPDATE_RELEASE,
};

/**
 * struct hmm_update - description of one invalidation
 * @start: first byte, page aligned
 * @end: one past the last byte
 * @event: the reason for the invalidation
 * @blockable: whether the callback may sleep
 * @owner: initiator of a migration or exclusive access
 *	(mmu_notifier_range.owner), or NULL
 */
struct hmm_update {
	unsigned long		start;
	unsigned long		end;
	enum hmm_update_event	event;
	bool			blockable;
	void			*owner;
};

struct hmm_mirror;

/**
 * struct hmm_mirror_ops - driver callbacks of a mirror
 * @invalidate_range: required.  The CPU page tables of
 *	[update->start, update->end) are about to change.  Take the lock the
 *	driver passes to hmm_mirror_range_fault(), drop the device mappings
 *	of the range and unlock.  The mirror's sequence has already been
 *	advanced, outside that lock, so faults that sample it from now on
 *	retry; a fault that checked it just before is still programming the
 *	device under the lock, and only taking the lock waits for it.  So the
 *	callback must always take the lock, never return early because its
 *	own view says nothing is mapped there (unless, as for its own
 *	migrations, the driver zaps those mappings under the lock itself).
 *	Return 0, or -EAGAIN only when !update->blockable and the lock could
 *	not be taken without sleeping.
 * @release: optional.  The mm is going away: stop all device access to it.
 *	Called at most once; the mirror must still be unregistered.
 */
struct hmm_mirror_ops {
	int (*invalidate_range)(struct hmm_mirror *mirror,
				const struct hmm_update *update);
	void (*release)(struct hmm_mirror *mirror);
};

/**
 * struct hmm_mirror - a device mirroring one address space
 * @ops: driver callbacks, set before hmm_mirror_register()
 * @mm: the mirrored address space, set by hmm_mirror_register()
 * @interval: private: notifier spanning the whole user address space; its
 *	sequence is the one hmm_mirror_range_fault() validates against
 * @notifier: private: plain notifier delivering ->release
 * @state: private: HMM_MIRROR_* bits, see mm/hmm.c
 */
struct hmm_mirror {
	const struct hmm_mirror_ops	*ops;
	struct mm_struct		*mm;
	struct mmu_interval_notifier	interval;
	struct mmu_notifier		notifier;
	unsigned long			state;
};

int hmm_mirror_register(struct hmm_mirror *mirror, struct mm_struct *mm);
void hmm_mirror_unregister(struct hmm_mirror *mirror);
int hmm_mirror_range_fault(struct hmm_mirror *mirror,
			   struct hmm_range *range, struct mutex *lock);

/**
 * hmm_mirror_notifier() - interval notifier of a mirror
 * @mirror: a registered mirror
 *
 * For drivers that call hmm_range_fault() or migrate_vma_setup() on their
 * own and need mmu_interval_read_begin()/mmu_interval_read_retry() on the
 * mirror's sequence.
 *
 * Context: any; @mirror must stay registered while the result is used.
 * Return: the notifier, valid until hmm_mirror_unregister().
 */
static inline struct mmu_interval_notifier *
hmm_mirror_notifier(struct hmm_mirror *mirror)
{
	return &mirror->interval;
}

/*
 * Locking device-private pages to their device (mm/hmm_devlock.c): a CPU
 * access to a locked page gets SIGBUS instead of migrating it back.
 */
#ifdef CONFIG_DEVICE_PRIVATE
int hmm_devlock_range(struct mm_struct *mm, unsigned long start,
		      unsigned long end, void *owner);
long hmm_devlock_unlock_range(struct mm_struct *mm, unsigned long start,
			      unsigned long end, void *owner);
bool hmm_devlock_page_locked(const struct page *page);
void hmm_devlock_page_free(struct page *page);
#else
/* No device-private memory, so nothing can be locked to it. */
static inline int hmm_devlock_range(struct mm_struct *mm, unsigned long start,
				    unsigned long end, void *owner)
{
	return -EOPNOTSUPP;
}

static inline long hmm_devlock_unlock_range(struct mm_struct *mm,
					    unsigned long start,
					    unsigned long end, void *owner)
{
	return 0;
}

static inline bool hmm_devlock_page_locked(const struct page *page)
{
	return false;
}

static inline void hmm_devlock_page_free(struct page *page)
{
}
#endif /* CONFIG_DEVICE_PRIVATE */

#if IS_ENABLED(CONFIG_KUNIT)
int hmm_devlock_charge(struct mm_struct *mm, unsigned long npages,
		       unsigned long limit);
void hmm_devlock_uncharge(struct mm_struct *mm, unsigned long npages);
#endif

#endif /* _LINUX_HMM_H */
