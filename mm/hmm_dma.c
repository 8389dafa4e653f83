// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * DMA mappings of the pages hmm_range_fault() returned.
 *
 * A device that mirrors a process but does not own the memory must reach
 * system pages through the DMA API, and must stop reaching them when the
 * CPU page tables change.  struct hmm_dma_map keeps one entry per page of
 * a range, indexed like hmm_range::hmm_pfns: the DMA address of the page
 * and a state word saying which page is mapped there, whether the device
 * may write it, and the order of the mapping.  Unmapping is therefore
 * exact, idempotent, and works from any entry of a huge mapping.
 *
 * Only 6.12's streaming DMA API is used (dma_map_page_attrs() and
 * dma_unmap_page_attrs()), for dma-direct and IOMMUs alike.
 *
 * Mirrored pages differ from ordinary streaming DMA buffers in one way
 * that decides which devices can use them: the CPU keeps using a page
 * while the device has it mapped, and nothing tells either side when the
 * other writes.  The streaming API's ownership rule (the CPU leaves a
 * buffer alone between the sync for the device and the sync for the CPU)
 * cannot hold.  Through a bounce buffer, publishing a device write copies
 * the whole slot back and undoes the CPU stores made meanwhile, even to
 * bytes the device never wrote; on a platform that is not cache coherent,
 * the sync for the CPU invalidates cache lines the CPU has dirtied.  No
 * placement of syncs fixes that, so the helpers serve only devices that
 * reach every page directly and coherently: hmm_dma_map_init() refuses
 * the others with -EOPNOTSUPP, hmm_dma_map_pfn() refuses an address the
 * DMA API still says needs syncing, and there is no sync call at all.
 */
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/export.h>
#include <linux/hmm-dma.h>
#include <linux/lockdep.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/swiotlb.h>

/*
 * State word of an entry; 0 means nothing is mapped there.  Every entry of
 * a huge mapping carries the pfn of its own page, so the first entry of the
 * mapping is found from any of them by the pfn's offset in the huge page.
 */
#define HDS_MAPPED		BIT(0)
#define HDS_WRITE		BIT(1)
#define HDS_ORDER_SHIFT		2
#define HDS_ORDER_MASK		HMM_PFN_ORDER_MASK
#define HDS_PFN_SHIFT		8

static unsigned int hds_order(unsigned long st)
{
	return (st >> HDS_ORDER_SHIFT) & HDS_ORDER_MASK;
}

static unsigned long hds_pfn(unsigned long st)
{
	return st >> HDS_PFN_SHIFT;
}

static enum dma_data_direction hds_dir(unsigned long st)
{
	return (st & HDS_WRITE) ? DMA_BIDIRECTIONAL : DMA_TO_DEVICE;
}

/* First entry of the mapping that covers mapped entry @idx. */
static unsigned long hmm_dma_head(struct hmm_dma_map *map, unsigned long idx)
{
	unsigned long st = map->state[idx];

	return idx - (hds_pfn(st) & ((1UL << hds_order(st)) - 1));
}

static void hmm_dma_assert_locked(struct hmm_dma_map *map)
{
	if (map->lock)
		lockdep_assert_held(map->lock);
}

/*
 * Can @dev reach every page of memory directly and coherently, so that
 * its mappings never need a sync?  Not if its DMA is not cache coherent,
 * if swiotlb bounces all its mappings (swiotlb=force, a restricted DMA
 * pool), or if its DMA mask leaves memory out, which makes dma-direct
 * bounce whatever lies beyond it.
 */
static bool hmm_dma_dev_direct(struct device *dev)
{
	return dev_is_dma_coherent(dev) && !is_swiotlb_force_bounce(dev) &&
	       !dma_addressing_limited(dev);
}

/**
 * hmm_dma_map_init() - set up the DMA mapping state of a range
 * @map: state to initialise, owned by the caller
 * @dev: device that will access the pages; must have a DMA mask
 * @nr_entries: number of pages of the range
 * @owner: the pgmap owner of @dev's device-private memory (the value the
 *	driver puts in hmm_range::dev_private_owner), or NULL if it has none
 * @lock: the driver lock that serialises mapping against invalidation
 *	(usually the one it passes to hmm_mirror_range_fault()), or NULL if
 *	the driver serialises some other way; when set, every call that
 *	changes or reads the state asserts that it is held
 *
 * Nothing is mapped yet; entries get mapped by hmm_dma_map_pfn().
 *
 * Only a device that reaches all memory directly and coherently is
 * accepted: the CPU keeps using a mirrored page while the device has it
 * mapped, and a bounce buffer or a cache invalidation would undo its
 * stores.  A driver whose device is refused must keep the device off
 * mirrored memory, for instance by copying through memory of its own.
 * On failure @map is left empty: every call refuses it and
 * hmm_dma_map_destroy() does nothing.
 *
 * Context: process context, may sleep (allocates with GFP_KERNEL).
 * Return: 0 on success; -EINVAL if @dev is NULL, has no DMA mask, or
 * @nr_entries is 0; -EOPNOTSUPP if @dev is not cache coherent, has its
 * mappings bounced by swiotlb (swiotlb=force, a restricted DMA pool) or
 * cannot address all memory (dma_addressing_limited()); -ENOMEM if the
 * state could not be allocated.
 */
int hmm_dma_map_init(struct hmm_dma_map *map, struct device *dev,
		     unsigned long nr_entries, void *owner,
		     struct mutex *lock)
{
	memset(map, 0, sizeof(*map));
	if (!dev || !dev->dma_mask || !nr_entries)
		return -EINVAL;
	if (!hmm_dma_dev_direct(dev))
		return -EOPNOTSUPP;

	map->addrs = kvcalloc(nr_entries, sizeof(*map->addrs), GFP_KERNEL);
	map->state = kvcalloc(nr_entries, sizeof(*map->state), GFP_KERNEL);
	if (!map->addrs || !map->state) {
		kvfree(map->addrs);
		kvfree(map->state);
		map->addrs = NULL;
		map->state = NULL;
		return -ENOMEM;
	}
	map->dev = dev;
	map->owner = owner;
	map->lock = lock;
	map->nr_entries = nr_entries;
	return 0;
}
EXPORT_SYMBOL_GPL(hmm_dma_map_init);

/* Unmap the mapping that starts at entry @head and forget it. */
static void hmm_dma_drop(struct hmm_dma_map *map, unsigned long head)
{
	unsigned long st = map->state[head];
	unsigned long n = 1UL << hds_order(st);
	unsigned long i;

	/* Direct and coherent: nothing to copy or flush back. */
	dma_unmap_page_attrs(map->dev, map->addrs[head], n << PAGE_SHIFT,
			     hds_dir(st), DMA_ATTR_SKIP_CPU_SYNC);
	for (i = head; i < head + n; i++) {
		map->state[i] = 0;
		map->addrs[i] = 0;
	}
	map->nr_mappings--;
}

static unsigned long hmm_dma_drop_range(struct hmm_dma_map *map,
					unsigned long idx, unsigned long count)
{
	unsigned long end, dropped = 0;

	if (idx >= map->nr_entries)
		return 0;
	end = idx + min(count, map->nr_entries - idx);

	while (idx < end) {
		unsigned long head, st = map->state[idx];

		if (!(st & HDS_MAPPED)) {
			idx++;
			continue;
		}
		head = hmm_dma_head(map, idx);
		hmm_dma_drop(map, head);
		dropped++;
		idx = head + (1UL << hds_order(st));
	}
	return dropped;
}

/**
 * hmm_dma_map_destroy() - unmap everything and free the state
 * @map: state set up by hmm_dma_map_init()
 *
 * Calling it again, or on a state whose hmm_dma_map_init() failed, does
 * nothing.
 *
 * Context: process context, may sleep.  No other user of @map may run
 * concurrently; the driver lock need not be held.
 */
void hmm_dma_map_destroy(struct hmm_dma_map *map)
{
	if (!map->state)
		return;
	hmm_dma_drop_range(map, 0, map->nr_entries);
	kvfree(map->addrs);
	kvfree(map->state);
	memset(map, 0, sizeof(*map));
}
EXPORT_SYMBOL_GPL(hmm_dma_map_destroy);

/*
 * Order of the mapping to create for a page of order @order at entry
 * @idx: the whole huge page when it lies inside the range, nothing inside
 * it is mapped yet and the device can take it in one piece; 0 otherwise.
 */
static unsigned int hmm_dma_pick_order(struct hmm_dma_map *map,
				       unsigned long idx, unsigned long pfn,
				       unsigned int order)
{
	unsigned long n = 1UL << order;
	unsigned long off = pfn & (n - 1);
	unsigned long i;

	if (!order || off > idx || map->nr_entries - (idx - off) < n ||
	    dma_max_mapping_size(map->dev) < (n << PAGE_SHIFT))
		return 0;
	for (i = idx - off; i < idx - off + n; i++)
		if (map->state[i] & HDS_MAPPED)
			return 0;
	return order;
}

/* Does entry @idx already map @pfn with at least the rights asked for? */
static bool hmm_dma_entry_fits(struct hmm_dma_map *map, unsigned long idx,
			       unsigned long pfn, bool write)
{
	unsigned long st = map->state[idx];

	return (st & HDS_MAPPED) && hds_pfn(st) == pfn &&
	       (!write || (st & HDS_WRITE));
}

/**
 * hmm_dma_map_pfn() - DMA-map the page of one entry for the device
 * @map: the mapping state
 * @idx: the entry, i.e. the page index in the range
 * @hmm_pfn: range->hmm_pfns[@idx] as hmm_range_fault() returned it
 * @dma_addr: output: the DMA address of that page
 *
 * Maps the page read-only for the device (DMA_TO_DEVICE) or, when
 * @hmm_pfn has HMM_PFN_WRITE, read-write (DMA_BIDIRECTIONAL).  If the
 * entry already maps that page with enough rights, the existing mapping is
 * returned; a different page or missing write right replaces it.
 *
 * When hmm_pfn_to_map_order() reports a huge CPU mapping whose pages all
 * lie in the range and the device can take it in one piece, the whole
 * huge page is mapped once; every entry inside it then returns the base
 * address plus its offset, and the returned order lets the driver program
 * one large device PTE for entries idx - (pfn % (1 << order)) onwards.
 *
 * Device-private pages cannot be DMA-mapped.  Those of the map's owner
 * are the device's own memory and are reported as HMM_DMA_LOCAL; those of
 * anybody else must first be migrated to system memory (hmm_range_fault()
 * does that when the driver passes its owner in dev_private_owner).
 * Device-coherent pages are ordinary memory and are mapped.
 *
 * The device reaches the page itself, so CPU and device stores are seen
 * by the other side without any sync.  Should the DMA API nevertheless
 * report that the new mapping needs syncing (dma_need_sync(), e.g. an
 * IOMMU bouncing a mapping smaller than its granule), the mapping is
 * dropped again and refused.  With CONFIG_DMA_API_DEBUG, dma_need_sync()
 * is true for every mapping of a device behind an IOMMU, so such devices
 * are refused there.
 *
 * Context: the map's lock held if it has one.  Does not sleep.  The
 * result is valid until the entry is unmapped, which the driver's
 * invalidation callback must do for the pages it drops.
 * Return: on success the order of the DMA mapping now covering @idx (0 for
 * a single page), or HMM_DMA_LOCAL (nothing mapped, *@dma_addr untouched).
 * Errors: -EINVAL if @idx is outside the map, the map is not initialised,
 * or @hmm_pfn names no page; -EFAULT if @hmm_pfn is not HMM_PFN_VALID or
 * is HMM_PFN_ERROR (fault it in first); -EXDEV for another owner's
 * device-private page; -EOPNOTSUPP for other memory the DMA API cannot
 * map this way (PCI peer-to-peer) and for a mapping that would need
 * syncing; -ENOMEM if the DMA mapping failed (e.g. no IOMMU address
 * space left).
 */
int hmm_dma_map_pfn(struct hmm_dma_map *map, unsigned long idx,
		    unsigned long hmm_pfn, dma_addr_t *dma_addr)
{
	bool write = hmm_pfn & HMM_PFN_WRITE;
	enum dma_data_direction dir = write ? DMA_BIDIRECTIONAL : DMA_TO_DEVICE;
	unsigned long pfn, head, n, i;
	struct page *page;
	unsigned int order;
	dma_addr_t base;

	hmm_dma_assert_locked(map);
	if (!map->state || idx >= map->nr_entries)
		return -EINVAL;
	if (!(hmm_pfn & HMM_PFN_VALID) || (hmm_pfn & HMM_PFN_ERROR))
		return -EFAULT;
	pfn = hmm_pfn & ~HMM_PFN_FLAGS;
	if (!pfn_valid(pfn))
		return -EINVAL;

	if (hmm_dma_entry_fits(map, idx, pfn, write)) {
		*dma_addr = map->addrs[idx];
		return hds_order(map->state[idx]);
	}
	/* The driver missed an invalidation, or needs write access now. */
	hmm_dma_drop_range(map, idx, 1);

	page = pfn_to_page(pfn);
	if (is_device_private_page(page))
		return (map->owner && page->pgmap->owner == map->owner) ?
			HMM_DMA_LOCAL : -EXDEV;
	if (is_pci_p2pdma_page(page))
		return -EOPNOTSUPP;

	order = hmm_dma_pick_order(map, idx, pfn, hmm_pfn_to_map_order(hmm_pfn));
	n = 1UL << order;
	head = idx - (pfn & (n - 1));
	base = dma_map_page_attrs(map->dev, pfn_to_page(pfn - (idx - head)), 0,
				  n << PAGE_SHIFT, dir, 0);
	if (dma_mapping_error(map->dev, base))
		return -ENOMEM;
	if (dma_need_sync(map->dev, base)) {
		/* A bounce slot is never copied back over the page. */
		dma_unmap_page_attrs(map->dev, base, n << PAGE_SHIFT, dir,
				     DMA_ATTR_SKIP_CPU_SYNC);
		return -EOPNOTSUPP;
	}

	for (i = 0; i < n; i++) {
		map->addrs[head + i] = base + (i << PAGE_SHIFT);
		map->state[head + i] = HDS_MAPPED | (write ? HDS_WRITE : 0) |
				       ((unsigned long)order << HDS_ORDER_SHIFT) |
				       ((pfn - (idx - head) + i) << HDS_PFN_SHIFT);
	}
	map->nr_mappings++;
	*dma_addr = map->addrs[idx];
	return order;
}
EXPORT_SYMBOL_GPL(hmm_dma_map_pfn);

/**
 * hmm_dma_lookup() - DMA address of an entry that is mapped
 * @map: the mapping state
 * @idx: the entry
 * @dma_addr: output: the DMA address of the page at @idx
 *
 * Context: the map's lock held if it has one.  Does not sleep.
 * Return: the order of the mapping covering @idx; -EINVAL if @idx is
 * outside the map; -ENOENT if nothing is mapped there.
 */
int hmm_dma_lookup(struct hmm_dma_map *map, unsigned long idx,
		   dma_addr_t *dma_addr)
{
	hmm_dma_assert_locked(map);
	if (!map->state || idx >= map->nr_entries)
		return -EINVAL;
	if (!(map->state[idx] & HDS_MAPPED))
		return -ENOENT;
	*dma_addr = map->addrs[idx];
	return hds_order(map->state[idx]);
}
EXPORT_SYMBOL_GPL(hmm_dma_lookup);

/**
 * hmm_dma_unmap_range() - drop the DMA mappings covering some entries
 * @map: the mapping state
 * @idx: first entry
 * @count: number of entries
 *
 * A huge mapping is dropped whole as soon as one of its entries is in
 * [@idx, @idx + @count): the entries outside that window become unmapped
 * too and will be mapped again by hmm_dma_map_pfn().  Entries that are not
 * mapped, and entries past the end of the map, are ignored, so unmapping
 * twice is harmless.  Nothing needs copying or flushing back: the device
 * wrote to the pages themselves, coherently.
 *
 * Context: the map's lock held if it has one; this is what the driver's
 * invalidation callback calls.  Does not sleep.
 * Return: the number of DMA mappings dropped.
 */
unsigned long hmm_dma_unmap_range(struct hmm_dma_map *map,
				  unsigned long idx, unsigned long count)
{
	hmm_dma_assert_locked(map);
	if (!map->state)
		return 0;
	return hmm_dma_drop_range(map, idx, count);
}
EXPORT_SYMBOL_GPL(hmm_dma_unmap_range);
