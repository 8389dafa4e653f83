// SPDX-License-Identifier: GPL-2.0
/*
 * Dummy HMM device, the hardware stand-in for the HMM selftests.
 *
 * Each /dev/hmm_dmirrorN behaves like a device with its own page table and
 * its own memory.  Opening the file mirrors the caller's address space with
 * an hmm_mirror; the ioctls of test_hmm_uapi.h then make the "device" read
 * and write that address space through its page table, move pages to and
 * from its memory, take exclusive access for atomics, or report how the CPU
 * maps a range.
 *
 * Devices 0 and 1 own MEMORY_DEVICE_PRIVATE memory: struct pages without a
 * CPU mapping, hot-plugged 256 MiB at a time into unused physical address
 * space.  With no real hardware behind them, the data of each such page is
 * kept in an ordinary system page, its "backing" page.  Devices 2 and 3 own
 * MEMORY_DEVICE_COHERENT memory: the two 256 MiB ranges named by
 * spm_addr_dev0 and spm_addr_dev1, which must have been kept away from the
 * page allocator at boot (memmap=).  The CPU reaches that memory directly,
 * so coherent pages carry their own data.
 *
 * The device page table is an xarray indexed by virtual page number whose
 * entries hold the pfn of the page with the data and the device's access
 * rights.  Entries do not pin pages; the mirror's invalidation callback
 * drops them whenever the CPU page tables change.  The one exception is
 * migration started by this device: a driver knows what it is moving, so
 * it ignores those invalidations and updates its page tables itself.
 *
 * Locking, outermost first:
 *   mmap_lock of the mirrored mm
 *   dmirror_device.mirrors_lock	list of open files of the device
 *   dmirror.pt_lock			device page table of one file; also
 *					taken by the invalidation callback, so
 *					nothing under it may fault or reclaim
 *   dmirror_device.mem_lock		(spinlock) device memory allocator
 * dmirror_device.chunks_lock serialises adding and removing device memory
 * and is never taken under pt_lock or mem_lock.  It also keeps the chunks
 * on mdev->chunks plugged while an evictor migrates their pages, so it is
 * held across migrate_device_pfns() .. migrate_device_finalize(): it nests
 * inside the mmap_lock and the page locks of a migration to the device,
 * and outside the rmap locks and the pt_lock the invalidations take (see
 * "Eviction" below).
 */
#include <linux/bitmap.h>
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/dma-direct.h>
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/hmm-dma.h>
#include <linux/init.h>
#include <linux/ioport.h>
#include <linux/kernel.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nospec.h>
#include <linux/platform_device.h>
#include <linux/rmap.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/shmem_fs.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/xarray.h>

#include "test_hmm_uapi.h"

#define DMIRROR_NDEVICES	4
#define DMIRROR_NPRIVATE	2
#define DMIRROR_CHUNK_SIZE	SZ_256M
#define DMIRROR_CHUNK_PAGES	(DMIRROR_CHUNK_SIZE >> PAGE_SHIFT)
/* Device private memory a device may hot-plug: 16 chunks, 4 GiB. */
#define DMIRROR_MAX_CHUNKS	16
/* Pages handed to hmm_range_fault() or migrate_vma_setup() at a time. */
#define DMIRROR_BATCH		512UL
/* Eviction rounds of 100ms before RELEASE gives up on busy memory. */
#define DMIRROR_DRAIN_TRIES	50
/* Largest mapping of the device file (see dmirror_fop_mmap()). */
#define DMIRROR_MMAP_MAX	SZ_64M

static unsigned long spm_addr_dev0;
module_param(spm_addr_dev0, ulong, 0444);
MODULE_PARM_DESC(spm_addr_dev0,
		 "Physical address of a reserved 256 MiB range used as coherent memory of /dev/hmm_dmirror2 (needs spm_addr_dev1 too)");

static unsigned long spm_addr_dev1;
module_param(spm_addr_dev1, ulong, 0444);
MODULE_PARM_DESC(spm_addr_dev1,
		 "Physical address of a reserved 256 MiB range used as coherent memory of /dev/hmm_dmirror3 (needs spm_addr_dev0 too)");

/*
 * Device page table entry: an xarray value entry holding a pfn and rights.
 * An entry without DPTE_VALID is a slot kept allocated so that filling it
 * later needs no memory (see dmirror_pt_reserve()).
 */
#define DPTE_VALID	BIT(0)
#define DPTE_WRITE	BIT(1)
#define DPTE_ATOMIC	BIT(2)
#define DPTE_PFN_SHIFT	3
#define DPTE_NONE	xa_mk_value(0)

struct dmirror_device;

/* Allocator state of one device page. */
struct dmirror_dpage {
	struct page		*backing;	/* data of a private page */
	const void		*owner;		/* allocating file; compared only */
	struct dmirror_chunk	*chunk;		/* set while on the LRU */
	struct list_head	lru;		/* in mdev->lru, under mem_lock */
};

/*
 * One memremap_pages() range of device memory.  @busy has a bit per page
 * handed out; a bitmap rather than a free list so that physically
 * contiguous runs can be found when huge device pages arrive.
 */
struct dmirror_chunk {
	struct dev_pagemap	pagemap;
	struct dmirror_device	*mdev;
	struct list_head	node;		/* in mdev->chunks */
	unsigned long		pfn_first;
	unsigned long		npages;
	unsigned long		nr_busy;
	unsigned long		hint;		/* where to search next */
	unsigned long		*busy;
	struct dmirror_dpage	*dpages;
	bool			draining;	/* being given back */
};

struct dmirror_device {
	struct device		dev;
	struct cdev		cdev;
	unsigned int		mem_type;	/* HMM_DMIRROR_MEMORY_DEVICE_* */
	phys_addr_t		spm_base;	/* coherent memory range */

	struct mutex		mirrors_lock;	/* protects mirrors */
	struct list_head	mirrors;

	struct mutex		chunks_lock;	/* serialises (un)plugging */
	unsigned int		nr_chunks;	/* including draining ones */
	spinlock_t		mem_lock;	/* chunks, chunk bitmaps */
	struct list_head	chunks;		/* chunks handing out pages */
	wait_queue_head_t	drain_wq;
	unsigned long		limit;		/* max pages in use, 0: none */
	struct list_head	lru;		/* pages in use, oldest first */
	bool			evict;		/* evict rather than fail */
	atomic_long_t		evicted;	/* pages evicted to make room */
};

/*
 * DMA mode of one file (HMM_DMIRROR_DMA_*): the device reaches system
 * pages through DMA addresses of a real struct device.  @map and the
 * window [@start, @end) it covers change under pt_lock, which the
 * invalidation callback holds while it unmaps; @lock keeps DMA requests
 * of the file from replacing the window under each other.
 */
struct dmirror_dma {
	struct mutex		lock;		/* one DMA request at a time */
	struct hmm_dma_map	map;
	unsigned long		start;
	unsigned long		end;
	unsigned long		*pfns;		/* hmm_pfns of the window */
	u64			unmapped;	/* since the last STATS */
	u64			local;		/* in the last request */
	u64			bounced;	/* in the last request */
};

/* One open file: a device context mirroring the opener's mm. */
struct dmirror {
	struct hmm_mirror	mirror;
	struct dmirror_device	*mdev;
	struct list_head	node;		/* in mdev->mirrors */
	struct mutex		pt_lock;
	struct xarray		pt;
	struct dmirror_dma	dma;
};

/* A validated ioctl argument and the counters it returns. */
struct dmirror_req {
	unsigned long		start;
	unsigned long		end;
	unsigned long		npages;
	void __user		*buf;
	u64			cpages;
	u64			faults;
};

static int dmirror_migrate(struct dmirror *dmirror, struct dmirror_req *req,
			   bool to_dev);
static void dmirror_dma_init(struct dmirror *dmirror);
static void dmirror_dma_destroy(struct dmirror *dmirror);
static void dmirror_dma_zap(struct dmirror *dmirror, unsigned long start,
			    unsigned long end);
static void dmirror_dma_setup(void);
static void dmirror_dma_teardown(void);

static dev_t dmirror_devt;
static struct dmirror_device *dmirror_devices[DMIRROR_NDEVICES];
static const struct dev_pagemap_ops dmirror_devmem_ops;

static bool dmirror_is_private(struct dmirror_device *mdev)
{
	return mdev->mem_type == HMM_DMIRROR_MEMORY_DEVICE_PRIVATE;
}

/* ---------------------------------------------------------------------
 * Device memory
 */

static struct dmirror_chunk *dmirror_page_chunk(struct page *page)
{
	return container_of(page->pgmap, struct dmirror_chunk, pagemap);
}

static struct dmirror_dpage *dmirror_page_dpage(struct page *page)
{
	struct dmirror_chunk *chunk = dmirror_page_chunk(page);

	return &chunk->dpages[page_to_pfn(page) - chunk->pfn_first];
}

static bool dmirror_page_is_ours(struct page *page)
{
	return is_zone_device_page(page) &&
	       page->pgmap->ops == &dmirror_devmem_ops;
}

/*
 * The page holding the data the device sees for @page: the backing page of
 * one of our private pages, otherwise @page itself (system memory and
 * coherent device memory are CPU addressable).  @page must be referenced
 * or locked so that it cannot be freed meanwhile.
 */
static struct page *dmirror_page_data(struct page *page)
{
	if (is_device_private_page(page))
		return dmirror_page_dpage(page)->backing;
	return page;
}

/*
 * The device stored into @page.  A page cache or swap cache folio must
 * then be dirty, or reclaim drops it as clean and the store is lost: the
 * CPU page table entry that made it writable need not be dirty.  Called
 * under pt_lock, which holds off the invalidation that truncation needs,
 * so the folio stays in its mapping meanwhile.  The backing pages of our
 * private pages have no mapping and are left alone.
 */
static void dmirror_page_written(struct page *page)
{
	struct folio *folio = page_folio(page);

	if (folio_mapping(folio))
		folio_mark_dirty(folio);
}

static int dmirror_chunk_add(struct dmirror_device *mdev)
{
	struct dmirror_chunk *chunk;
	struct resource *res = NULL;
	void *va;
	int ret = -ENOMEM;

	lockdep_assert_held(&mdev->chunks_lock);

	chunk = kzalloc(sizeof(*chunk), GFP_KERNEL);
	if (!chunk)
		return -ENOMEM;
	chunk->busy = bitmap_zalloc(DMIRROR_CHUNK_PAGES, GFP_KERNEL);
	chunk->dpages = kvcalloc(DMIRROR_CHUNK_PAGES, sizeof(*chunk->dpages),
				 GFP_KERNEL);
	if (!chunk->busy || !chunk->dpages)
		goto free_chunk;

	if (dmirror_is_private(mdev)) {
		res = request_free_mem_region(&iomem_resource,
					      DMIRROR_CHUNK_SIZE,
					      dev_name(&mdev->dev));
		if (IS_ERR(res)) {
			ret = PTR_ERR(res);
			goto free_chunk;
		}
		chunk->pagemap.type = MEMORY_DEVICE_PRIVATE;
		chunk->pagemap.range.start = res->start;
		chunk->pagemap.range.end = res->end;
	} else {
		chunk->pagemap.type = MEMORY_DEVICE_COHERENT;
		chunk->pagemap.range.start = mdev->spm_base;
		chunk->pagemap.range.end = mdev->spm_base +
					   DMIRROR_CHUNK_SIZE - 1;
	}
	chunk->pagemap.nr_range = 1;
	chunk->pagemap.ops = &dmirror_devmem_ops;
	chunk->pagemap.owner = mdev;

	va = memremap_pages(&chunk->pagemap, numa_node_id());
	if (IS_ERR(va)) {
		ret = PTR_ERR(va);
		goto release_region;
	}

	chunk->mdev = mdev;
	chunk->pfn_first = PHYS_PFN(chunk->pagemap.range.start);
	chunk->npages = DMIRROR_CHUNK_PAGES;

	spin_lock(&mdev->mem_lock);
	list_add_tail(&chunk->node, &mdev->chunks);
	spin_unlock(&mdev->mem_lock);
	mdev->nr_chunks++;

	dev_info(&mdev->dev, "added %u MiB of %s memory, pfns %#lx-%#lx\n",
		 DMIRROR_CHUNK_SIZE / SZ_1M,
		 dmirror_is_private(mdev) ? "private" : "coherent",
		 chunk->pfn_first, chunk->pfn_first + chunk->npages - 1);
	return 0;

release_region:
	if (res)
		release_mem_region(res->start, resource_size(res));
free_chunk:
	kvfree(chunk->dpages);
	bitmap_free(chunk->busy);
	kfree(chunk);
	return ret;
}

/* Unplug a chunk whose pages have all been freed. */
static void dmirror_chunk_free(struct dmirror_chunk *chunk)
{
	struct dmirror_device *mdev = chunk->mdev;

	memunmap_pages(&chunk->pagemap);
	if (chunk->pagemap.type == MEMORY_DEVICE_PRIVATE)
		release_mem_region(chunk->pagemap.range.start,
				   range_len(&chunk->pagemap.range));
	kvfree(chunk->dpages);
	bitmap_free(chunk->busy);
	kfree(chunk);

	mutex_lock(&mdev->chunks_lock);
	mdev->nr_chunks--;
	mutex_unlock(&mdev->chunks_lock);
}

static struct page *dmirror_chunk_take(struct dmirror_chunk *chunk,
				       struct page *backing, const void *owner)
{
	unsigned long idx;

	lockdep_assert_held(&chunk->mdev->mem_lock);

	if (chunk->draining || chunk->nr_busy == chunk->npages)
		return NULL;
	idx = find_next_zero_bit(chunk->busy, chunk->npages, chunk->hint);
	if (idx >= chunk->npages)
		idx = find_first_zero_bit(chunk->busy, chunk->npages);
	if (idx >= chunk->npages)
		return NULL;

	__set_bit(idx, chunk->busy);
	chunk->nr_busy++;
	chunk->hint = idx + 1;
	chunk->dpages[idx].backing = backing;
	chunk->dpages[idx].owner = owner;
	chunk->dpages[idx].chunk = chunk;
	list_add_tail(&chunk->dpages[idx].lru, &chunk->mdev->lru);
	return pfn_to_page(chunk->pfn_first + idx);
}

static bool dmirror_devmem_at_limit(struct dmirror_device *mdev);

static struct page *dmirror_devmem_take(struct dmirror_device *mdev,
					struct page *backing,
					const void *owner)
{
	struct dmirror_chunk *chunk;
	struct page *page = NULL;

	spin_lock(&mdev->mem_lock);
	list_for_each_entry(chunk, &mdev->chunks, node) {
		if (dmirror_devmem_at_limit(mdev))
			break;
		page = dmirror_chunk_take(chunk, backing, owner);
		if (page)
			break;
	}
	spin_unlock(&mdev->mem_lock);
	return page;
}

static bool dmirror_devmem_has_room(struct dmirror_device *mdev)
{
	struct dmirror_chunk *chunk;
	bool room = false;

	spin_lock(&mdev->mem_lock);
	list_for_each_entry(chunk, &mdev->chunks, node) {
		if (!chunk->draining && chunk->nr_busy < chunk->npages) {
			room = true;
			break;
		}
	}
	spin_unlock(&mdev->mem_lock);
	return room;
}

/*
 * Hot-plug more device memory.  Coherent devices have exactly one range;
 * private ones grow up to DMIRROR_MAX_CHUNKS.  Another thread may have
 * grown the device while we waited for the lock, hence the recheck.
 */
static int dmirror_devmem_grow(struct dmirror_device *mdev)
{
	unsigned int limit = dmirror_is_private(mdev) ? DMIRROR_MAX_CHUNKS : 1;
	int ret = 0;

	mutex_lock(&mdev->chunks_lock);
	if (!dmirror_devmem_has_room(mdev)) {
		if (mdev->nr_chunks < limit)
			ret = dmirror_chunk_add(mdev);
		else
			ret = -ENOMEM;
	}
	mutex_unlock(&mdev->chunks_lock);
	return ret;
}

/*
 * Eviction: with devmem_evict set, a migration to the device that finds no
 * free device page (devmem_limit reached, or every chunk full) moves the
 * least recently used pages of the device back to system memory, whichever
 * process maps them, and takes one of the pages freed.  Pages join the
 * young end of mdev->lru when allocated and go back there each time the
 * device faults them into a page table.
 *
 * The evictor runs inside the caller's migration to the device: it holds
 * the mmap_lock of the caller's mm for reading and the page locks of the
 * migration's sources and of the device pages allocated so far.  It must
 * therefore never wait for a page lock, and does not: migrate_device_pfns()
 * only trylocks, so a victim someone else has locked (a CPU fault bringing
 * it back, another migration, one of our own destinations) is skipped.
 * It holds chunks_lock from collection to migrate_device_finalize(), as
 * chunks leave mdev->chunks only under that lock: HMM_DMIRROR_RELEASE
 * cannot unplug the memory of a victim meanwhile, and pages of chunks
 * already draining are left to it.  A closing file waits for chunks_lock
 * in dmirror_devmem_evict_owner(), an exiting process does not: the
 * anon_vma pin taken by migrate_device_pfns() keeps the rmap walk safe.
 * Under chunks_lock the evictor waits for the rmap locks of the processes
 * mapping its victims, for the pt_lock of their mirrors (invalidation)
 * and for memory; none of those is ever held while waiting for
 * chunks_lock or for a page lock.
 */
#define DMIRROR_EVICT_BATCH	16UL
/* LRU entries looked at per round: locked pages are skipped over. */
#define DMIRROR_EVICT_SCAN	(8 * DMIRROR_EVICT_BATCH)
/* Rounds before giving up with -ENOMEM: others may take what we free. */
#define DMIRROR_EVICT_TRIES	4

/* The device used @page, one of ours: it becomes the youngest. */
static void dmirror_devmem_touch(struct page *page)
{
	struct dmirror_chunk *chunk = dmirror_page_chunk(page);
	unsigned long idx = page_to_pfn(page) - chunk->pfn_first;

	spin_lock(&chunk->mdev->mem_lock);
	if (test_bit(idx, chunk->busy))
		list_move_tail(&chunk->dpages[idx].lru, &chunk->mdev->lru);
	spin_unlock(&chunk->mdev->mem_lock);
}

/*
 * Store in @pfns up to @max pfns from the old end of the LRU.  Every entry
 * looked at moves to the young end, so that a concurrent evictor, or the
 * next round after one that could not take them, tries other pages.
 */
static unsigned long dmirror_lru_gather(struct dmirror_device *mdev,
					unsigned long *pfns, unsigned long max)
{
	struct dmirror_dpage *dpage, *next;
	unsigned long n = 0, scanned = 0;
	LIST_HEAD(seen);

	lockdep_assert_held(&mdev->chunks_lock);

	spin_lock(&mdev->mem_lock);
	list_for_each_entry_safe(dpage, next, &mdev->lru, lru) {
		struct dmirror_chunk *chunk = dpage->chunk;
		unsigned long pfn = chunk->pfn_first + (dpage - chunk->dpages);

		if (n == max || scanned++ == DMIRROR_EVICT_SCAN)
			break;
		list_move_tail(&dpage->lru, &seen);
		/* Locked pages stay on the device, that is what locks are for. */
		if (chunk->draining || hmm_devlock_page_locked(pfn_to_page(pfn)))
			continue;
		pfns[n++] = pfn;
	}
	list_splice_tail(&seen, &mdev->lru);
	spin_unlock(&mdev->mem_lock);
	return n;
}

/*
 * Give each collected victim a system page with its data.  Unlike
 * RELEASE this may fail: the victim then stays, and the migration that
 * wanted room gets -ENOMEM.  A page locked to the device after it was
 * gathered stays too.
 */
static void dmirror_evict_copy(const unsigned long *src, unsigned long *dst,
			       unsigned long npages)
{
	unsigned long i;

	for (i = 0; i < npages; i++) {
		struct page *spage = migrate_pfn_to_page(src[i]);
		struct page *dpage;

		dst[i] = 0;
		if (!spage || !(src[i] & MIGRATE_PFN_MIGRATE) ||
		    hmm_devlock_page_locked(spage))
			continue;
		dpage = alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOWARN);
		if (!dpage)
			continue;
		lock_page(dpage);
		copy_highpage(dpage, dmirror_page_data(spage));
		dst[i] = migrate_pfn(page_to_pfn(dpage)) |
			 (src[i] & MIGRATE_PFN_WRITE);
	}
}

/*
 * Evict up to DMIRROR_EVICT_BATCH of the least recently used pages of
 * @mdev to system memory.
 * Context: process context, may sleep; see "Eviction" above.
 * Return: the number of pages that left device memory.
 */
static unsigned long dmirror_devmem_evict(struct dmirror_device *mdev)
{
	unsigned long src[DMIRROR_EVICT_BATCH], dst[DMIRROR_EVICT_BATCH];
	unsigned long i, n, done = 0;

	mutex_lock(&mdev->chunks_lock);
	n = dmirror_lru_gather(mdev, src, DMIRROR_EVICT_BATCH);
	if (n) {
		migrate_device_pfns(src, n);
		dmirror_evict_copy(src, dst, n);
		migrate_device_pages(src, dst, n);
		for (i = 0; i < n; i++)
			done += dst[i] && (src[i] & MIGRATE_PFN_MIGRATE);
		migrate_device_finalize(src, dst, n);
	}
	mutex_unlock(&mdev->chunks_lock);

	atomic_long_add(done, &mdev->evicted);
	return done;
}

/* Device memory is full: evict, if allowed, and take a page freed so. */
static struct page *dmirror_devmem_make_room(struct dmirror_device *mdev,
					     struct page *backing,
					     const void *owner)
{
	struct page *page = NULL;
	int tries;

	for (tries = 0; !page && tries < DMIRROR_EVICT_TRIES; tries++) {
		if (!READ_ONCE(mdev->evict) || !dmirror_devmem_evict(mdev))
			break;
		page = dmirror_devmem_take(mdev, backing, owner);
	}
	return page;
}

/*
 * Allocate one device page for the file @owner.  The page is returned
 * referenced and locked, ready to be a migration destination.
 */
static struct page *dmirror_devmem_alloc(struct dmirror_device *mdev,
					 const void *owner)
{
	struct page *backing = NULL;
	struct page *page;

	if (dmirror_is_private(mdev)) {
		backing = alloc_page(GFP_HIGHUSER | __GFP_NOWARN);
		if (!backing)
			return NULL;
	}

	page = dmirror_devmem_take(mdev, backing, owner);
	if (!page && !dmirror_devmem_grow(mdev))
		page = dmirror_devmem_take(mdev, backing, owner);
	if (!page)
		page = dmirror_devmem_make_room(mdev, backing, owner);
	if (!page) {
		if (backing)
			__free_page(backing);
		return NULL;
	}

	zone_device_page_init(page);
	return page;
}

/* dev_pagemap_ops.page_free: the last reference to a device page is gone. */
static void dmirror_devmem_page_free(struct page *page)
{
	struct dmirror_chunk *chunk = dmirror_page_chunk(page);
	struct dmirror_device *mdev = chunk->mdev;
	unsigned long idx = page_to_pfn(page) - chunk->pfn_first;
	struct page *backing;
	bool idle;

	spin_lock(&mdev->mem_lock);
	backing = chunk->dpages[idx].backing;
	chunk->dpages[idx].backing = NULL;
	chunk->dpages[idx].owner = NULL;
	list_del(&chunk->dpages[idx].lru);
	__clear_bit(idx, chunk->busy);
	chunk->nr_busy--;
	idle = chunk->draining && !chunk->nr_busy;
	spin_unlock(&mdev->mem_lock);

	if (backing)
		__free_page(backing);
	/* The chunk cannot go away before we return: we hold a pgmap ref. */
	if (idle)
		wake_up(&mdev->drain_wq);
}

/*
 * Fill @dst for the device pages of @src that are to move to system
 * memory: allocate a page, copy the data over.  With a @vma the new pages
 * follow its memory policy and may fail; without one we are evicting
 * device memory that must be given back, so allocation may not fail.
 */
static void dmirror_copy_to_sys(const unsigned long *src, unsigned long *dst,
				unsigned long npages,
				struct vm_area_struct *vma, unsigned long start,
				const void *owner)
{
	unsigned long i;

	for (i = 0; i < npages; i++) {
		struct page *spage = migrate_pfn_to_page(src[i]);
		struct page *dpage;

		dst[i] = 0;
		if (!spage || !(src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (!dmirror_page_is_ours(spage))
			continue;
		if (owner && READ_ONCE(dmirror_page_dpage(spage)->owner) != owner)
			continue;

		if (vma)
			dpage = alloc_page_vma(GFP_HIGHUSER_MOVABLE, vma,
					       start + (i << PAGE_SHIFT));
		else
			dpage = alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL);
		if (!dpage)
			continue;

		lock_page(dpage);
		copy_highpage(dpage, dmirror_page_data(spage));
		dst[i] = migrate_pfn(page_to_pfn(dpage));
		if (src[i] & MIGRATE_PFN_WRITE)
			dst[i] |= MIGRATE_PFN_WRITE;
	}
}

/*
 * Store in @pfns the pfns of up to @max pages of @chunk in use (by @owner,
 * if given), scanning from index *@pos; *@pos is left where to go on.
 */
static unsigned long dmirror_chunk_gather(struct dmirror_chunk *chunk,
					  unsigned long *pos,
					  unsigned long *pfns,
					  unsigned long max, const void *owner)
{
	unsigned long idx = *pos, n = 0;

	spin_lock(&chunk->mdev->mem_lock);
	for_each_set_bit_from(idx, chunk->busy, chunk->npages) {
		if (n == max)
			break;
		if (!owner || chunk->dpages[idx].owner == owner)
			pfns[n++] = chunk->pfn_first + idx;
	}
	spin_unlock(&chunk->mdev->mem_lock);
	*pos = idx;
	return n;
}

/*
 * Move the pages of @chunk (only those of @owner, if given) back to system
 * memory, wherever they are mapped.  Only pages the allocator knows to be
 * in use are collected, with migrate_device_pfns(), so a mostly free
 * chunk costs no more than its busy pages.  Pages that are locked or
 * pinned at the time are skipped; callers needing all of them try again.
 */
static int dmirror_chunk_evict(struct dmirror_chunk *chunk, const void *owner)
{
	unsigned long *src, *dst;
	unsigned long pos = 0, n;

	src = kvmalloc_array(DMIRROR_BATCH, sizeof(*src), GFP_KERNEL);
	dst = kvmalloc_array(DMIRROR_BATCH, sizeof(*dst), GFP_KERNEL);
	if (!src || !dst) {
		kvfree(src);
		kvfree(dst);
		return -ENOMEM;
	}

	while ((n = dmirror_chunk_gather(chunk, &pos, src, DMIRROR_BATCH,
					 owner))) {
		migrate_device_pfns(src, n);
		dmirror_copy_to_sys(src, dst, n, NULL, 0, owner);
		migrate_device_pages(src, dst, n);
		migrate_device_finalize(src, dst, n);
		cond_resched();
	}

	kvfree(src);
	kvfree(dst);
	return 0;
}

static bool dmirror_chunk_idle(struct dmirror_chunk *chunk)
{
	bool idle;

	spin_lock(&chunk->mdev->mem_lock);
	idle = !chunk->nr_busy;
	spin_unlock(&chunk->mdev->mem_lock);
	return idle;
}

static int dmirror_chunk_drain(struct dmirror_chunk *chunk, bool forever)
{
	unsigned int tries;

	for (tries = 1; ; tries++) {
		dmirror_chunk_evict(chunk, NULL);
		if (wait_event_timeout(chunk->mdev->drain_wq,
				       dmirror_chunk_idle(chunk), HZ / 10))
			return 0;
		if (tries == DMIRROR_DRAIN_TRIES) {
			if (!forever)
				return -EBUSY;
			dev_warn(&chunk->mdev->dev,
				 "device memory still in use, waiting\n");
		}
	}
}

/*
 * Give all device memory back: stop allocating from it, move every page
 * still in use to system memory and unplug the chunks.  Without @forever,
 * chunks whose pages stay busy (e.g. a migration in flight) are kept and
 * -EBUSY is returned; module unload waits instead, as it cannot fail.
 */
static int dmirror_devmem_release(struct dmirror_device *mdev, bool forever)
{
	struct dmirror_chunk *chunk, *next;
	LIST_HEAD(victims);
	int ret = 0;

	mutex_lock(&mdev->chunks_lock);
	spin_lock(&mdev->mem_lock);
	list_for_each_entry(chunk, &mdev->chunks, node)
		chunk->draining = true;
	list_splice_init(&mdev->chunks, &victims);
	spin_unlock(&mdev->mem_lock);
	mutex_unlock(&mdev->chunks_lock);

	list_for_each_entry_safe(chunk, next, &victims, node) {
		if (dmirror_chunk_drain(chunk, forever)) {
			ret = -EBUSY;
			continue;
		}
		list_del(&chunk->node);
		dmirror_chunk_free(chunk);
	}

	if (!list_empty(&victims)) {
		mutex_lock(&mdev->chunks_lock);
		spin_lock(&mdev->mem_lock);
		list_for_each_entry(chunk, &victims, node)
			chunk->draining = false;
		list_splice(&victims, &mdev->chunks);
		spin_unlock(&mdev->mem_lock);
		mutex_unlock(&mdev->chunks_lock);
	}
	return ret;
}

/* A file is closing: move the device pages it allocated back to the CPU. */
static void dmirror_devmem_evict_owner(struct dmirror_device *mdev,
				       const void *owner)
{
	struct dmirror_chunk *chunk;

	mutex_lock(&mdev->chunks_lock);
	list_for_each_entry(chunk, &mdev->chunks, node)
		dmirror_chunk_evict(chunk, owner);
	mutex_unlock(&mdev->chunks_lock);
}

/* ---------------------------------------------------------------------
 * Device page table
 */

static void *dpte_make(struct page *page, unsigned long flags)
{
	return xa_mk_value((page_to_pfn(page) << DPTE_PFN_SHIFT) |
			   flags | DPTE_VALID);
}

static unsigned long dpte_flags(void *entry)
{
	return entry ? xa_to_value(entry) & GENMASK(DPTE_PFN_SHIFT - 1, 0) : 0;
}

static struct page *dpte_page(void *entry)
{
	return pfn_to_page(xa_to_value(entry) >> DPTE_PFN_SHIFT);
}

/*
 * Make sure every slot of [start, start + npages pages) exists, so that
 * dmirror_pt_set() never allocates: it runs under pt_lock, which the
 * invalidation callback takes, so reclaim from there could deadlock.
 * Context: may sleep; pt_lock not held.
 */
static int dmirror_pt_reserve(struct dmirror *dmirror, unsigned long start,
			      unsigned long npages)
{
	unsigned long index = start >> PAGE_SHIFT;
	unsigned long i;
	int ret;

	for (i = 0; i < npages; i++) {
		ret = xa_insert(&dmirror->pt, index + i, DPTE_NONE, GFP_KERNEL);
		if (ret && ret != -EBUSY)
			return ret;
	}
	return 0;
}

static int dmirror_pt_set(struct dmirror *dmirror, unsigned long addr,
			  struct page *page, unsigned long flags)
{
	void *old;

	lockdep_assert_held(&dmirror->pt_lock);
	old = xa_store(&dmirror->pt, addr >> PAGE_SHIFT,
		       dpte_make(page, flags), GFP_NOWAIT | __GFP_NOWARN);
	return xa_err(old);
}

/* Invalidate the entries of [start, end); keeps the slots allocated. */
static void dmirror_pt_zap(struct dmirror *dmirror, unsigned long start,
			   unsigned long end)
{
	XA_STATE(xas, &dmirror->pt, start >> PAGE_SHIFT);
	void *entry;

	lockdep_assert_held(&dmirror->pt_lock);
	if (end <= start)
		return;

	xas_lock(&xas);
	xas_for_each(&xas, entry, (end - 1) >> PAGE_SHIFT) {
		if (dpte_flags(entry) & DPTE_VALID)
			xas_store(&xas, DPTE_NONE);
	}
	xas_unlock(&xas);
}

/*
 * Copy up to @npages pages between the pages the device maps at @start
 * and @buf.  Stops at the first page the device cannot access that way:
 * no valid entry, or no write right for a write.
 * Return: the number of pages copied.
 */
static unsigned long dmirror_pt_copy(struct dmirror *dmirror,
				     unsigned long start, unsigned long npages,
				     void *buf, bool write)
{
	unsigned long need = DPTE_VALID | (write ? DPTE_WRITE : 0);
	unsigned long i;

	lockdep_assert_held(&dmirror->pt_lock);

	for (i = 0; i < npages; i++) {
		void *entry = xa_load(&dmirror->pt, (start >> PAGE_SHIFT) + i);
		void *ptr = buf + (i << PAGE_SHIFT);

		if ((dpte_flags(entry) & need) != need)
			break;
		if (write) {
			memcpy_to_page(dpte_page(entry), 0, ptr, PAGE_SIZE);
			dmirror_page_written(dpte_page(entry));
		} else {
			memcpy_from_page(ptr, dpte_page(entry), 0, PAGE_SIZE);
		}
	}
	return i;
}

/* Store what hmm_range_fault() found for @range in the page table. */
static int dmirror_pt_fill(struct dmirror *dmirror, struct hmm_range *range,
			   bool write)
{
	unsigned long npages = (range->end - range->start) >> PAGE_SHIFT;
	unsigned long i;
	int ret;

	lockdep_assert_held(&dmirror->pt_lock);

	for (i = 0; i < npages; i++) {
		unsigned long hpfn = range->hmm_pfns[i];
		unsigned long flags = 0;
		struct page *page;

		/* Faulting was requested, so anything else is a core bug. */
		if (!(hpfn & HMM_PFN_VALID) || (hpfn & HMM_PFN_ERROR))
			return -EFAULT;

		page = hmm_pfn_to_page(hpfn);
		if (is_device_private_page(page) && !dmirror_page_is_ours(page))
			return -EFAULT;
		if (hpfn & HMM_PFN_WRITE)
			flags |= DPTE_WRITE;
		else if (write)
			/* Our own read-only page: dmirror_pt_unshare(). */
			return is_device_private_page(page) ? -EAGAIN : -EPERM;
		if (dmirror_page_is_ours(page))
			dmirror_devmem_touch(page);
		ret = dmirror_pt_set(dmirror, range->start + (i << PAGE_SHIFT),
				     dmirror_page_data(page), flags);
		if (ret)
			return ret;
	}
	return 0;
}

/* Whether a page of @range, as the last fault returned it, is device-locked. */
static bool dmirror_range_locked(const struct hmm_range *range)
{
	unsigned long i, n = (range->end - range->start) >> PAGE_SHIFT;

	for (i = 0; i < n; i++)
		if ((range->hmm_pfns[i] & HMM_PFN_VALID) &&
		    hmm_devlock_page_locked(hmm_pfn_to_page(range->hmm_pfns[i])))
			return true;
	return false;
}

/*
 * hmm_range_fault() reports our own device pages as they are mapped, so a
 * read-only one (the parent's after fork()) comes back without
 * HMM_PFN_WRITE on a write request.  Do what a real driver does: bring
 * @range back to system memory, as HMM_DMIRROR_MIGRATE_TO_SYS does, for
 * the caller to fault again; that write fault breaks COW.  Not in a VMA
 * the process may not write: that write fails with -EPERM, as it would
 * for the same pages in system memory; nor when a page is locked to the
 * device (HMM_DMIRROR_LOCK): moving it would end the lock, -EFAULT.
 */
static int dmirror_pt_unshare(struct dmirror *dmirror,
			      const struct hmm_range *range)
{
	unsigned long start = range->start, end = range->end;
	struct dmirror_req req = {
		.start	= start,
		.end	= end,
		.npages	= (end - start) >> PAGE_SHIFT,
	};
	struct mm_struct *mm = dmirror->mirror.mm;
	struct vm_area_struct *vma;
	unsigned long addr;
	int ret = 0;

	if (!mmget_not_zero(mm))
		return -EFAULT;
	mmap_read_lock(mm);
	for (addr = start; addr < end; addr = vma->vm_end) {
		vma = vma_lookup(mm, addr);
		if (!vma || !(vma->vm_flags & VM_WRITE)) {
			ret = -EPERM;
			break;
		}
	}
	mmap_read_unlock(mm);
	mmput(mm);
	if (!ret && dmirror_range_locked(range))
		ret = -EFAULT;
	return ret ? ret : dmirror_migrate(dmirror, &req, false);
}

/*
 * Fault one batch into the device page table.  A racing migration can
 * put pages back into device memory after dmirror_pt_unshare(): keep
 * trying for HMM_RANGE_DEFAULT_TIMEOUT, as drivers retry a busy range
 * fault, then give up with -EBUSY rather than loop.
 */
static int dmirror_pt_fault_batch(struct dmirror *dmirror,
				  struct hmm_range *range, bool write)
{
	unsigned long timeout = jiffies +
				msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	int ret;

	ret = dmirror_pt_reserve(dmirror, range->start,
				 (range->end - range->start) >> PAGE_SHIFT);
	if (ret)
		return ret;
	for (;;) {
		ret = hmm_mirror_range_fault(&dmirror->mirror, range,
					     &dmirror->pt_lock);
		if (ret)
			return ret;
		ret = dmirror_pt_fill(dmirror, range, write);
		mutex_unlock(&dmirror->pt_lock);
		if (ret != -EAGAIN)
			return ret;
		if (time_after(jiffies, timeout))
			return -EBUSY;
		ret = dmirror_pt_unshare(dmirror, range);
		if (ret)
			return ret;
	}
}

/*
 * The device faults [start, end) into its page table, like hardware
 * walking the CPU page tables on a miss.
 */
static int dmirror_pt_fault(struct dmirror *dmirror, unsigned long start,
			    unsigned long end, bool write)
{
	struct hmm_range range = {
		.default_flags = HMM_PFN_REQ_FAULT |
				 (write ? HMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = dmirror->mdev,
	};
	unsigned long batch = min(DMIRROR_BATCH, (end - start) >> PAGE_SHIFT);
	unsigned long addr;
	int ret = 0;

	range.hmm_pfns = kvmalloc_array(batch, sizeof(*range.hmm_pfns),
					GFP_KERNEL);
	if (!range.hmm_pfns)
		return -ENOMEM;

	for (addr = start; addr < end; addr = range.end) {
		range.start = addr;
		range.end = min(end, addr + (batch << PAGE_SHIFT));

		ret = dmirror_pt_fault_batch(dmirror, &range, write);
		if (ret)
			break;
	}

	kvfree(range.hmm_pfns);
	return ret;
}

/* ---------------------------------------------------------------------
 * Mirror callbacks
 */

static int dmirror_invalidate(struct hmm_mirror *mirror,
			      const struct hmm_update *update)
{
	struct dmirror *dmirror = container_of(mirror, struct dmirror, mirror);

	/*
	 * Our own migrations update the device page tables themselves
	 * (dmirror_device_zap_migrating()), exactly for the pages that move.
	 */
	if (update->event == HMM_UPDATE_MIGRATE &&
	    update->owner == dmirror->mdev)
		return 0;

	if (update->blockable)
		mutex_lock(&dmirror->pt_lock);
	else if (!mutex_trylock(&dmirror->pt_lock))
		return -EAGAIN;
	dmirror_pt_zap(dmirror, update->start, update->end);
	dmirror_dma_zap(dmirror, update->start, update->end);
	mutex_unlock(&dmirror->pt_lock);
	return 0;
}

static void dmirror_mm_release(struct hmm_mirror *mirror)
{
	struct dmirror *dmirror = container_of(mirror, struct dmirror, mirror);

	mutex_lock(&dmirror->pt_lock);
	dmirror_pt_zap(dmirror, 0, ULONG_MAX);
	dmirror_dma_zap(dmirror, 0, ULONG_MAX);
	mutex_unlock(&dmirror->pt_lock);
}

static const struct hmm_mirror_ops dmirror_mirror_ops = {
	.invalidate_range	= dmirror_invalidate,
	.release		= dmirror_mm_release,
};

/*
 * A migration by this device is moving the pages of @src (from @start in
 * @mm).  dmirror_invalidate() ignored it, so drop the entries of those
 * pages in every file of the device that mirrors @mm.
 */
static void dmirror_device_zap_migrating(struct dmirror_device *mdev,
					 struct mm_struct *mm,
					 unsigned long start,
					 const unsigned long *src,
					 unsigned long npages)
{
	struct dmirror *dmirror;
	unsigned long i;

	mutex_lock(&mdev->mirrors_lock);
	list_for_each_entry(dmirror, &mdev->mirrors, node) {
		if (dmirror->mirror.mm != mm)
			continue;
		mutex_lock(&dmirror->pt_lock);
		for (i = 0; i < npages; i++) {
			unsigned long addr = start + (i << PAGE_SHIFT);

			if (src[i] & MIGRATE_PFN_MIGRATE)
				dmirror_pt_zap(dmirror, addr, addr + PAGE_SIZE);
		}
		dmirror_dma_zap(dmirror, start, start + (npages << PAGE_SHIFT));
		mutex_unlock(&dmirror->pt_lock);
	}
	mutex_unlock(&mdev->mirrors_lock);
}

/* ---------------------------------------------------------------------
 * Migration
 */

/*
 * Returns false when device memory ran out: the pages from there on are
 * left out of the migration and stay in system memory, intact.
 */
static bool dmirror_copy_to_dev(struct dmirror *dmirror,
				struct migrate_vma *args)
{
	unsigned long i;

	memset(args->dst, 0, args->npages * sizeof(*args->dst));
	for (i = 0; i < args->npages; i++) {
		unsigned long src = args->src[i];
		struct page *spage = migrate_pfn_to_page(src);
		struct page *dpage;

		if (!(src & MIGRATE_PFN_MIGRATE))
			continue;
		/* MIGRATE_VMA_SELECT_SYSTEM never collects device pages. */
		if (spage && is_zone_device_page(spage))
			continue;

		dpage = dmirror_devmem_alloc(dmirror->mdev, dmirror);
		if (!dpage)
			return false;

		/* No source page: an untouched or zero-page mapped address. */
		if (spage)
			copy_highpage(dmirror_page_data(dpage), spage);
		else
			clear_highpage(dmirror_page_data(dpage));

		args->dst[i] = migrate_pfn(page_to_pfn(dpage));
		if ((src & MIGRATE_PFN_WRITE) ||
		    (!spage && (args->vma->vm_flags & VM_WRITE)))
			args->dst[i] |= MIGRATE_PFN_WRITE;
	}
	return true;
}

/* Map the pages that reached device memory; the CPU is still locked out. */
static void dmirror_pt_map_migrated(struct dmirror *dmirror,
				    struct migrate_vma *args)
{
	unsigned long i;

	mutex_lock(&dmirror->pt_lock);
	for (i = 0; i < args->npages; i++) {
		struct page *dpage = migrate_pfn_to_page(args->dst[i]);

		if (!dpage || !(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		/* On failure the page just stays unmapped for the device. */
		dmirror_pt_set(dmirror, args->start + (i << PAGE_SHIFT),
			       dmirror_page_data(dpage),
			       (args->dst[i] & MIGRATE_PFN_WRITE) ?
			       DPTE_WRITE : 0);
	}
	mutex_unlock(&dmirror->pt_lock);
}

static unsigned long dmirror_count_migrated(struct migrate_vma *args)
{
	unsigned long i, n = 0;

	for (i = 0; i < args->npages; i++) {
		if ((args->src[i] & MIGRATE_PFN_VALID) &&
		    (args->src[i] & MIGRATE_PFN_MIGRATE))
			n++;
	}
	return n;
}

/*
 * Migrate one batch inside @vma, towards device memory or back to system
 * memory.  Between setup and finalize the CPU cannot touch the pages, so
 * that is when the device page tables are brought up to date.  Running out
 * of device memory still completes the batch for the pages that got one,
 * then fails with -ENOMEM so that the caller stops.
 */
static int dmirror_migrate_batch(struct dmirror *dmirror,
				 struct migrate_vma *args, bool to_dev,
				 struct dmirror_req *req)
{
	struct dmirror_device *mdev = dmirror->mdev;
	struct mm_struct *mm = args->vma->vm_mm;
	bool complete = true;
	int ret;

	args->pgmap_owner = mdev;
	if (to_dev)
		args->flags = MIGRATE_VMA_SELECT_SYSTEM;
	else if (dmirror_is_private(mdev))
		args->flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE;
	else
		args->flags = MIGRATE_VMA_SELECT_DEVICE_COHERENT;

	if (to_dev) {
		ret = dmirror_pt_reserve(dmirror, args->start,
					 (args->end - args->start) >> PAGE_SHIFT);
		if (ret)
			return ret;
	}

	ret = migrate_vma_setup(args);
	if (ret)
		return ret;
	if (!args->cpages)
		return 0;

	if (to_dev)
		complete = dmirror_copy_to_dev(dmirror, args);
	else
		dmirror_copy_to_sys(args->src, args->dst, args->npages,
				    args->vma, args->start, NULL);
	dmirror_device_zap_migrating(mdev, mm, args->start, args->src,
				     args->npages);
	migrate_vma_pages(args);
	if (to_dev)
		dmirror_pt_map_migrated(dmirror, args);
	else
		req->cpages += dmirror_count_migrated(args);
	migrate_vma_finalize(args);
	return complete ? 0 : -ENOMEM;
}

static int dmirror_migrate(struct dmirror *dmirror, struct dmirror_req *req,
			   bool to_dev)
{
	struct mm_struct *mm = dmirror->mirror.mm;
	unsigned long batch = min(DMIRROR_BATCH, req->npages);
	struct migrate_vma args;
	struct vm_area_struct *vma;
	unsigned long *pfns;
	unsigned long addr;
	int ret = 0;

	pfns = kvmalloc_array(2 * batch, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return -ENOMEM;
	if (!mmget_not_zero(mm)) {
		ret = -EINVAL;
		goto free_pfns;
	}

	mmap_read_lock(mm);
	for (addr = req->start; addr < req->end; addr = args.end) {
		vma = vma_lookup(mm, addr);
		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;
			break;
		}
		/* Only shmem files have pages that can live in device memory. */
		if (to_dev && (vma->vm_flags & VM_SHARED) && vma->vm_file &&
		    !shmem_file(vma->vm_file)) {
			ret = -EOPNOTSUPP;
			break;
		}
		memset(&args, 0, sizeof(args));
		args.vma = vma;
		args.start = addr;
		args.end = min3(req->end, vma->vm_end,
				addr + (batch << PAGE_SHIFT));
		args.src = pfns;
		args.dst = pfns + batch;

		ret = dmirror_migrate_batch(dmirror, &args, to_dev, req);
		if (ret)
			break;
	}
	mmap_read_unlock(mm);
	mmput(mm);
free_pfns:
	kvfree(pfns);
	return ret;
}

/*
 * dev_pagemap_ops.migrate_to_ram: the CPU touched one of our private pages.
 * Bring that page back; the rest stays in device memory until touched.
 */
static vm_fault_t dmirror_devmem_migrate_to_ram(struct vm_fault *vmf)
{
	struct dmirror_device *mdev = dmirror_page_chunk(vmf->page)->mdev;
	unsigned long src = 0, dst = 0;
	struct migrate_vma args = {
		.vma		= vmf->vma,
		.start		= vmf->address & PAGE_MASK,
		.end		= (vmf->address & PAGE_MASK) + PAGE_SIZE,
		.src		= &src,
		.dst		= &dst,
		.pgmap_owner	= mdev,
		.flags		= MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
		.fault_page	= vmf->page,
	};
	vm_fault_t ret = 0;

	if (migrate_vma_setup(&args))
		return VM_FAULT_SIGBUS;
	if (!args.cpages)
		return 0;

	dmirror_copy_to_sys(&src, &dst, 1, args.vma, args.start, NULL);
	if ((src & MIGRATE_PFN_MIGRATE) && !dst)
		ret = VM_FAULT_OOM;
	dmirror_device_zap_migrating(mdev, args.vma->vm_mm, args.start, &src,
				     1);
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);
	return ret;
}

/*
 * dev_pagemap_ops.copy_to_ram: a page of a shmem file that sits in our
 * memory is needed in system memory (read(), write(), or a CPU fault
 * through any mapping of the file).  The core has already made our
 * mirrors forget it.
 */
static int dmirror_devmem_copy_to_ram(struct page *dpage, struct page *page)
{
	copy_highpage(page, dmirror_page_data(dpage));
	return 0;
}

static const struct dev_pagemap_ops dmirror_devmem_ops = {
	.page_free	= dmirror_devmem_page_free,
	.migrate_to_ram	= dmirror_devmem_migrate_to_ram,
	.copy_to_ram	= dmirror_devmem_copy_to_ram,
};

/* ---------------------------------------------------------------------
 * ioctls
 */

/*
 * Move data between the user buffer and the range through the device page
 * table, a bounce buffer's worth at a time.  With @fault, a miss makes the
 * device fault in everything from the missing page to the end of the
 * request, counted as one device fault; without, a miss is -ENOENT.
 */
static int dmirror_transfer(struct dmirror *dmirror, struct dmirror_req *req,
			    bool write, bool fault)
{
	unsigned long batch = min(DMIRROR_BATCH, req->npages);
	unsigned long done = 0;
	void *bounce;
	int ret = 0;

	bounce = kvmalloc(batch << PAGE_SHIFT, GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;

	while (done < req->npages) {
		unsigned long n = min(batch, req->npages - done);
		unsigned long addr = req->start + (done << PAGE_SHIFT);
		void __user *ubuf = req->buf + (done << PAGE_SHIFT);
		unsigned long copied = 0;

		if (write && copy_from_user(bounce, ubuf, n << PAGE_SHIFT)) {
			ret = -EFAULT;
			break;
		}

		for (;;) {
			mutex_lock(&dmirror->pt_lock);
			copied += dmirror_pt_copy(dmirror,
						  addr + (copied << PAGE_SHIFT),
						  n - copied,
						  bounce + (copied << PAGE_SHIFT),
						  write);
			mutex_unlock(&dmirror->pt_lock);
			if (copied == n)
				break;

			if (!fault)
				ret = -ENOENT;
			else if (fatal_signal_pending(current))
				ret = -EINTR;
			else
				ret = dmirror_pt_fault(dmirror,
						       addr + (copied << PAGE_SHIFT),
						       req->end, write);
			if (ret)
				break;
			req->faults++;
		}
		if (ret)
			break;

		if (!write && copy_to_user(ubuf, bounce, n << PAGE_SHIFT)) {
			ret = -EFAULT;
			break;
		}
		done += n;
		req->cpages = done;
	}

	kvfree(bounce);
	return ret;
}

static int dmirror_cmd_read(struct dmirror *dmirror, struct dmirror_req *req)
{
	return dmirror_transfer(dmirror, req, false, true);
}

static int dmirror_cmd_write(struct dmirror *dmirror, struct dmirror_req *req)
{
	return dmirror_transfer(dmirror, req, true, true);
}

static int dmirror_cmd_migrate_to_dev(struct dmirror *dmirror,
				      struct dmirror_req *req)
{
	int ret;

	ret = dmirror_migrate(dmirror, req, true);
	if (ret)
		return ret;
	/* Hand back what the device now holds, for the caller to check. */
	return dmirror_transfer(dmirror, req, false, false);
}

static int dmirror_cmd_migrate_to_sys(struct dmirror *dmirror,
				      struct dmirror_req *req)
{
	return dmirror_migrate(dmirror, req, false);
}

static u8 dmirror_snapshot_state(struct dmirror_device *mdev,
				 unsigned long hpfn)
{
	unsigned int shift;
	struct page *page;
	u8 state;

	if (hpfn & HMM_PFN_ERROR)
		return HMM_DMIRROR_PROT_ERROR;
	if (!(hpfn & HMM_PFN_VALID))
		return HMM_DMIRROR_PROT_NONE;

	page = hmm_pfn_to_page(hpfn);
	if (is_device_private_page(page))
		state = page->pgmap->owner == mdev ?
			HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL :
			HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
	else if (is_device_coherent_page(page))
		state = page->pgmap->owner == mdev ?
			HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
			HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
	else if (is_zero_pfn(page_to_pfn(page)))
		state = HMM_DMIRROR_PROT_ZERO;
	else
		state = HMM_DMIRROR_PROT_NONE;

	state |= (hpfn & HMM_PFN_WRITE) ? HMM_DMIRROR_PROT_WRITE :
					  HMM_DMIRROR_PROT_READ;

	shift = hmm_pfn_to_map_order(hpfn) + PAGE_SHIFT;
	if (shift == PMD_SHIFT)
		state |= HMM_DMIRROR_PROT_PMD;
	else if (shift == PUD_SHIFT)
		state |= HMM_DMIRROR_PROT_PUD;
	return state;
}

static int dmirror_cmd_snapshot(struct dmirror *dmirror,
				struct dmirror_req *req)
{
	unsigned long batch = min(DMIRROR_BATCH, req->npages);
	struct hmm_range range = {
		.dev_private_owner = dmirror->mdev,
	};
	unsigned long addr, i, n;
	u8 *states;
	int ret = 0;

	range.hmm_pfns = kvmalloc_array(batch, sizeof(*range.hmm_pfns),
					GFP_KERNEL);
	states = kmalloc(batch, GFP_KERNEL);
	if (!range.hmm_pfns || !states) {
		ret = -ENOMEM;
		goto out;
	}

	for (addr = req->start; addr < req->end; addr = range.end) {
		range.start = addr;
		range.end = min(req->end, addr + (batch << PAGE_SHIFT));
		n = (range.end - range.start) >> PAGE_SHIFT;

		ret = hmm_mirror_range_fault(&dmirror->mirror, &range,
					     &dmirror->pt_lock);
		if (ret)
			break;
		for (i = 0; i < n; i++)
			states[i] = dmirror_snapshot_state(dmirror->mdev,
							   range.hmm_pfns[i]);
		mutex_unlock(&dmirror->pt_lock);

		if (copy_to_user(req->buf + req->cpages, states, n)) {
			ret = -EFAULT;
			break;
		}
		req->cpages += n;
	}
out:
	kfree(states);
	kvfree(range.hmm_pfns);
	return ret;
}

/* Map pages made exclusive to the device; their locks keep CPU out. */
static unsigned long dmirror_pt_map_exclusive(struct dmirror *dmirror,
					      unsigned long start,
					      struct page **pages,
					      unsigned long npages)
{
	unsigned long i, mapped = 0;

	mutex_lock(&dmirror->pt_lock);
	for (i = 0; i < npages; i++) {
		if (!pages[i])
			continue;
		if (dmirror_pt_set(dmirror, start + (i << PAGE_SHIFT),
				   pages[i], DPTE_WRITE | DPTE_ATOMIC))
			continue;
		mapped++;
	}
	mutex_unlock(&dmirror->pt_lock);
	return mapped;
}

static int dmirror_exclusive_batch(struct dmirror *dmirror,
				   unsigned long start, unsigned long end,
				   struct page **pages)
{
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	unsigned long mapped = 0;
	long i, got;
	int ret;

	mmap_assert_locked(dmirror->mirror.mm);

	ret = dmirror_pt_reserve(dmirror, start, npages);
	if (ret)
		return ret;
	got = make_device_exclusive_range(dmirror->mirror.mm, start, end,
					  pages, dmirror->mdev);
	if (got < 0)
		return got;

	mapped = dmirror_pt_map_exclusive(dmirror, start, pages, got);
	for (i = 0; i < got; i++) {
		if (pages[i]) {
			unlock_page(pages[i]);
			put_page(pages[i]);
		}
	}
	return mapped == npages ? 0 : -EBUSY;
}

static int dmirror_cmd_exclusive(struct dmirror *dmirror,
				 struct dmirror_req *req)
{
	struct mm_struct *mm = dmirror->mirror.mm;
	unsigned long batch = min(DMIRROR_BATCH, req->npages);
	unsigned long addr, next;
	struct page **pages;
	int ret = 0;

	pages = kvmalloc_array(batch, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	if (!mmget_not_zero(mm)) {
		ret = -EINVAL;
		goto free;
	}

	mmap_read_lock(mm);
	for (addr = req->start; addr < req->end; addr = next) {
		next = min(req->end, addr + (batch << PAGE_SHIFT));
		ret = dmirror_exclusive_batch(dmirror, addr, next, pages);
		if (ret)
			break;
	}
	mmap_read_unlock(mm);
	mmput(mm);
free:
	kvfree(pages);
	if (ret)
		return ret;

	/* Hand back what the device now holds, for the caller to check. */
	return dmirror_transfer(dmirror, req, false, false);
}

static int dmirror_cmd_check_exclusive(struct dmirror *dmirror,
				       struct dmirror_req *req)
{
	XA_STATE(xas, &dmirror->pt, req->start >> PAGE_SHIFT);
	void *entry;
	int ret = 0;

	mutex_lock(&dmirror->pt_lock);
	rcu_read_lock();
	xas_for_each(&xas, entry, (req->end - 1) >> PAGE_SHIFT) {
		if (xas_retry(&xas, entry))
			continue;
		if (dpte_flags(entry) & DPTE_ATOMIC) {
			ret = -EPERM;
			break;
		}
	}
	rcu_read_unlock();
	mutex_unlock(&dmirror->pt_lock);
	return ret;
}

static int dmirror_cmd_release(struct dmirror *dmirror,
			       struct dmirror_req *req)
{
	return dmirror_devmem_release(dmirror->mdev, false);
}

/* ---------------------------------------------------------------------
 * Locking pages to device memory (hmm_devlock_*())
 */

/*
 * Run @fn(mm, start, end, owner) on the request's range under the mmap
 * lock.  Locks are only meaningful for device-private memory: coherent
 * memory is CPU addressable and never migrates back on a CPU access.
 */
static long dmirror_devlock_call(struct dmirror *dmirror,
				 struct dmirror_req *req,
				 long (*fn)(struct mm_struct *mm,
					    unsigned long start,
					    unsigned long end, void *owner))
{
	struct mm_struct *mm = dmirror->mirror.mm;
	long ret;

	if (!dmirror_is_private(dmirror->mdev))
		return -EOPNOTSUPP;
	if (!mmget_not_zero(mm))
		return -EINVAL;
	mmap_read_lock(mm);
	ret = fn(mm, req->start, req->end, dmirror->mdev);
	mmap_read_unlock(mm);
	mmput(mm);
	return ret;
}

static long dmirror_devlock_lock(struct mm_struct *mm, unsigned long start,
				 unsigned long end, void *owner)
{
	return hmm_devlock_range(mm, start, end, owner);
}

static int dmirror_cmd_lock(struct dmirror *dmirror, struct dmirror_req *req)
{
	long ret = dmirror_devlock_call(dmirror, req, dmirror_devlock_lock);

	if (ret)
		return ret;
	req->cpages = req->npages;
	return 0;
}

static int dmirror_cmd_unlock(struct dmirror *dmirror,
			      struct dmirror_req *req)
{
	long ret = dmirror_devlock_call(dmirror, req,
					hmm_devlock_unlock_range);

	if (ret < 0)
		return ret;
	req->cpages = ret;
	return 0;
}

/*
 * One byte per page into the user buffer: 1 if the page is in this
 * device's memory and locked there, else 0.  Pages are found without
 * faulting, so the query never moves anything.
 */
static int dmirror_cmd_lock_query(struct dmirror *dmirror,
				  struct dmirror_req *req)
{
	unsigned long batch = min(DMIRROR_BATCH, req->npages);
	struct hmm_range range = {
		.dev_private_owner = dmirror->mdev,
	};
	unsigned long addr, i, n;
	u8 *states;
	int ret = 0;

	if (!dmirror_is_private(dmirror->mdev))
		return -EOPNOTSUPP;
	range.hmm_pfns = kvmalloc_array(batch, sizeof(*range.hmm_pfns),
					GFP_KERNEL);
	states = kmalloc(batch, GFP_KERNEL);
	if (!range.hmm_pfns || !states) {
		ret = -ENOMEM;
		goto out;
	}

	for (addr = req->start; addr < req->end; addr = range.end) {
		range.start = addr;
		range.end = min(req->end, addr + (batch << PAGE_SHIFT));
		n = (range.end - range.start) >> PAGE_SHIFT;

		ret = hmm_mirror_range_fault(&dmirror->mirror, &range,
					     &dmirror->pt_lock);
		if (ret)
			break;
		/* pt_lock held: the pages cannot be freed under us. */
		for (i = 0; i < n; i++) {
			unsigned long hpfn = range.hmm_pfns[i];
			struct page *page;

			states[i] = 0;
			if (!(hpfn & HMM_PFN_VALID) || (hpfn & HMM_PFN_ERROR))
				continue;
			page = hmm_pfn_to_page(hpfn);
			if (dmirror_page_is_ours(page) &&
			    hmm_devlock_page_locked(page))
				states[i] = 1;
			req->faults += states[i];
		}
		mutex_unlock(&dmirror->pt_lock);

		if (copy_to_user(req->buf + req->cpages, states, n)) {
			ret = -EFAULT;
			break;
		}
		req->cpages += n;
	}
out:
	kfree(states);
	kvfree(range.hmm_pfns);
	return ret;
}

/* ---------------------------------------------------------------------
 * DMA mode
 *
 * The device reaches system pages through the DMA addresses the
 * hmm_dma_map helpers give it for a platform device, as hardware behind
 * the DMA API would.  With no hardware, "the device accesses DMA address
 * A" means the CPU copies at the kernel address of dma_to_phys(A), which
 * must be the page itself: hmm_dma refuses a device whose mappings would
 * bounce (swiotlb=force), and every request then fails with -EOPNOTSUPP.
 * The device's own device-private pages need no mapping and are accessed
 * directly.
 */

/* Largest DMA window of one file: 32 MiB. */
#define DMIRROR_DMA_MAX_PAGES	(SZ_32M >> PAGE_SHIFT)

/* What a DMA request makes the device do with each page of the range. */
enum dmirror_dma_op {
	DMIRROR_DMA_OP_READ,
	DMIRROR_DMA_OP_WRITE,
	DMIRROR_DMA_OP_WRITE_PARTIAL,	/* only the nonzero bytes */
};

static struct platform_device *dmirror_dma_pdev;

static void dmirror_dma_setup(void)
{
	struct platform_device_info info = {
		.name		= "hmm_dmirror_dma",
		.id		= PLATFORM_DEVID_NONE,
		.dma_mask	= DMA_BIT_MASK(64),
	};
	struct platform_device *pdev;

	pdev = platform_device_register_full(&info);
	if (IS_ERR(pdev)) {
		pr_err("test_hmm: no DMA device, DMA mode disabled: %ld\n",
		       PTR_ERR(pdev));
		return;
	}
	dmirror_dma_pdev = pdev;
}

static void dmirror_dma_teardown(void)
{
	if (dmirror_dma_pdev)
		platform_device_unregister(dmirror_dma_pdev);
	dmirror_dma_pdev = NULL;
}

static void dmirror_dma_init(struct dmirror *dmirror)
{
	mutex_init(&dmirror->dma.lock);
}

/* Drop the window: its mappings, then its memory. */
static void dmirror_dma_window_free(struct dmirror_dma *dma)
{
	hmm_dma_map_destroy(&dma->map);
	kvfree(dma->pfns);
	dma->pfns = NULL;
	dma->start = 0;
	dma->end = 0;
}

static void dmirror_dma_destroy(struct dmirror *dmirror)
{
	dmirror_dma_window_free(&dmirror->dma);
	mutex_destroy(&dmirror->dma.lock);
}

/* Invalidation: unmap what the window maps in [start, end). */
static void dmirror_dma_zap(struct dmirror *dmirror, unsigned long start,
			    unsigned long end)
{
	struct dmirror_dma *dma = &dmirror->dma;

	lockdep_assert_held(&dmirror->pt_lock);
	start = max(start, dma->start);
	end = min(end, dma->end);
	if (start >= end)
		return;
	dma->unmapped += hmm_dma_unmap_range(&dma->map,
					     (start - dma->start) >> PAGE_SHIFT,
					     (end - start) >> PAGE_SHIFT);
}

/*
 * Make the window cover exactly the request, replacing (and so unmapping)
 * the previous one if it covered something else.
 */
static int dmirror_dma_window(struct dmirror *dmirror,
			      struct dmirror_req *req)
{
	struct dmirror_dma *dma = &dmirror->dma;
	struct dmirror_dma old = {};
	struct hmm_dma_map map;
	unsigned long *pfns;
	int ret;

	lockdep_assert_held(&dma->lock);
	if (dma->pfns && dma->start == req->start && dma->end == req->end)
		return 0;
	if (!dmirror_dma_pdev)
		return -ENODEV;
	if (req->npages > DMIRROR_DMA_MAX_PAGES)
		return -EINVAL;

	ret = hmm_dma_map_init(&map, &dmirror_dma_pdev->dev, req->npages,
			       dmirror->mdev, &dmirror->pt_lock);
	if (ret)
		return ret;
	pfns = kvcalloc(req->npages, sizeof(*pfns), GFP_KERNEL);
	if (!pfns) {
		hmm_dma_map_destroy(&map);
		return -ENOMEM;
	}

	mutex_lock(&dmirror->pt_lock);
	old.map = dma->map;
	old.pfns = dma->pfns;
	dma->map = map;
	dma->pfns = pfns;
	dma->start = req->start;
	dma->end = req->end;
	mutex_unlock(&dmirror->pt_lock);

	dmirror_dma_window_free(&old);
	return 0;
}

/*
 * The device stores one page of @src at @dst.  A partial write stores
 * only the nonzero bytes, so the bytes it skips must keep whatever the CPU
 * put there.
 */
static void dmirror_dma_store(void *dst, const void *src,
			      enum dmirror_dma_op op)
{
	const u8 *s = src;
	u8 *d = dst;
	size_t i;

	if (op != DMIRROR_DMA_OP_WRITE_PARTIAL) {
		memcpy(dst, src, PAGE_SIZE);
		return;
	}
	for (i = 0; i < PAGE_SIZE; i++)
		if (s[i])
			d[i] = s[i];
}

/*
 * The device accesses page @idx of the window through its DMA address.
 * It reaches the page itself, coherently, so neither side syncs: CPU
 * stores made while the page is mapped are seen by the device, and the
 * device's stores by the CPU, byte for byte.
 */
static int dmirror_dma_access(struct dmirror *dmirror, unsigned long idx,
			      void *buf, enum dmirror_dma_op op)
{
	struct dmirror_dma *dma = &dmirror->dma;
	unsigned long hpfn = dma->pfns[idx];
	struct device *dev = &dmirror_dma_pdev->dev;
	bool write = op != DMIRROR_DMA_OP_READ;
	dma_addr_t addr;
	phys_addr_t phys;
	void *va;
	int ret;

	ret = hmm_dma_map_pfn(&dma->map, idx, hpfn, &addr);
	if (ret == HMM_DMA_LOCAL) {
		struct page *data = dmirror_page_data(hmm_pfn_to_page(hpfn));

		if (write) {
			va = kmap_local_page(data);
			dmirror_dma_store(va, buf, op);
			kunmap_local(va);
			dmirror_page_written(data);
		} else {
			memcpy_from_page(buf, data, 0, PAGE_SIZE);
		}
		dma->local++;
		return 0;
	}
	if (ret < 0)
		return ret;

	/*
	 * dma-direct only (checked by the caller): no IOMMU translation.  An
	 * address elsewhere than the page is a bug the tests must see.
	 */
	phys = dma_to_phys(dev, addr);
	if (phys != hmm_pfn_to_phys(hpfn))
		dma->bounced++;
	va = phys_to_virt(phys);
	if (write) {
		dmirror_dma_store(va, buf, op);
		dmirror_page_written(hmm_pfn_to_page(hpfn));
	} else {
		memcpy(buf, va, PAGE_SIZE);
	}
	return 0;
}

/*
 * Whether the device may write the @n pages of @pfns, which a write fault
 * just returned: our own device pages come back as they are mapped, so a
 * read-only one (the parent's after fork()) must first be brought home by
 * dmirror_pt_unshare() (-EAGAIN), as dmirror_pt_fill() has it for device
 * writes.
 */
static int dmirror_dma_writable(const unsigned long *pfns, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++) {
		if (pfns[i] & HMM_PFN_WRITE)
			continue;
		return is_device_private_page(hmm_pfn_to_page(pfns[i])) ?
		       -EAGAIN : -EPERM;
	}
	return 0;
}

/*
 * One batch of a DMA request: fault the pages in for the device, map them
 * and move the data, all under pt_lock so no invalidation can unmap a page
 * while the device is at it.
 */
static int dmirror_dma_batch(struct dmirror *dmirror, unsigned long first,
			     unsigned long n, void *buf, enum dmirror_dma_op op)
{
	struct dmirror_dma *dma = &dmirror->dma;
	bool write = op != DMIRROR_DMA_OP_READ;
	struct hmm_range range = {
		.start = dma->start + (first << PAGE_SHIFT),
		.end = dma->start + ((first + n) << PAGE_SHIFT),
		.hmm_pfns = dma->pfns + first,
		.default_flags = HMM_PFN_REQ_FAULT |
				 (write ? HMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = dmirror->mdev,
	};
	unsigned long timeout = jiffies +
				msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	unsigned long i;
	int ret;

	for (;;) {
		ret = hmm_mirror_range_fault(&dmirror->mirror, &range,
					     &dmirror->pt_lock);
		if (ret)
			return ret;
		ret = write ? dmirror_dma_writable(range.hmm_pfns, n) : 0;
		if (ret != -EAGAIN)
			break;
		mutex_unlock(&dmirror->pt_lock);
		if (time_after(jiffies, timeout))
			return -EBUSY;
		ret = dmirror_pt_unshare(dmirror, &range);
		if (ret)
			return ret;
	}
	for (i = 0; i < n && !ret; i++)
		ret = dmirror_dma_access(dmirror, first + i,
					 buf + (i << PAGE_SHIFT), op);
	mutex_unlock(&dmirror->pt_lock);
	return ret;
}

static int dmirror_dma_transfer(struct dmirror *dmirror,
				struct dmirror_req *req, enum dmirror_dma_op op)
{
	struct dmirror_dma *dma = &dmirror->dma;
	unsigned long batch = min(DMIRROR_BATCH, req->npages);
	bool write = op != DMIRROR_DMA_OP_READ;
	unsigned long done = 0;
	void *bounce;
	int ret;

	if (dmirror_dma_pdev && get_dma_ops(&dmirror_dma_pdev->dev))
		return -EOPNOTSUPP;
	bounce = kvmalloc(batch << PAGE_SHIFT, GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;

	mutex_lock(&dma->lock);
	ret = dmirror_dma_window(dmirror, req);
	if (ret)
		goto unlock;
	dma->local = 0;
	dma->bounced = 0;

	while (done < req->npages) {
		unsigned long n = min(batch, req->npages - done);
		void __user *ubuf = req->buf + (done << PAGE_SHIFT);

		if (write && copy_from_user(bounce, ubuf, n << PAGE_SHIFT)) {
			ret = -EFAULT;
			break;
		}
		ret = dmirror_dma_batch(dmirror, done, n, bounce, op);
		if (ret)
			break;
		req->faults++;
		if (!write && copy_to_user(ubuf, bounce, n << PAGE_SHIFT)) {
			ret = -EFAULT;
			break;
		}
		done += n;
		req->cpages = done;
	}
unlock:
	mutex_unlock(&dma->lock);
	kvfree(bounce);
	return ret;
}

static int dmirror_cmd_dma_read(struct dmirror *dmirror,
				struct dmirror_req *req)
{
	return dmirror_dma_transfer(dmirror, req, DMIRROR_DMA_OP_READ);
}

static int dmirror_cmd_dma_write(struct dmirror *dmirror,
				 struct dmirror_req *req)
{
	return dmirror_dma_transfer(dmirror, req, DMIRROR_DMA_OP_WRITE);
}

static int dmirror_cmd_dma_write_partial(struct dmirror *dmirror,
					 struct dmirror_req *req)
{
	return dmirror_dma_transfer(dmirror, req, DMIRROR_DMA_OP_WRITE_PARTIAL);
}

/* Count the live mappings of the window, and the huge ones among them. */
static void dmirror_dma_count(struct dmirror_dma *dma,
			      struct hmm_dmirror_dma_stats *st)
{
	unsigned long pages[HMM_PFN_ORDER_MASK + 1] = {};
	unsigned long i;
	unsigned int order;
	dma_addr_t addr;
	int ret;

	for (i = 0; i < dma->map.nr_entries; i++) {
		ret = hmm_dma_lookup(&dma->map, i, &addr);
		if (ret >= 0)
			pages[ret]++;
	}
	st->mappings = dma->map.nr_mappings;
	for (order = 0; order <= HMM_PFN_ORDER_MASK; order++) {
		st->mapped_pages += pages[order];
		if (order)
			st->huge += pages[order] >> order;
	}
}

static int dmirror_cmd_dma_stats(struct dmirror *dmirror,
				 struct dmirror_req *req)
{
	struct dmirror_dma *dma = &dmirror->dma;
	struct hmm_dmirror_dma_stats st = {};

	if (!dmirror_dma_pdev)
		return -ENODEV;
	st.max_mapping = min_t(size_t, dma_max_mapping_size(&dmirror_dma_pdev->dev),
			       U64_MAX);

	mutex_lock(&dma->lock);
	mutex_lock(&dmirror->pt_lock);
	if (dma->pfns)
		dmirror_dma_count(dma, &st);
	st.unmapped = dma->unmapped;
	dma->unmapped = 0;
	st.local = dma->local;
	st.bounced = dma->bounced;
	mutex_unlock(&dmirror->pt_lock);
	mutex_unlock(&dma->lock);

	if (copy_to_user(req->buf, &st, sizeof(st)))
		return -EFAULT;
	return 0;
}

static int dmirror_cmd_dma_unmap(struct dmirror *dmirror,
				 struct dmirror_req *req)
{
	struct dmirror_dma *dma = &dmirror->dma;

	mutex_lock(&dma->lock);
	mutex_lock(&dmirror->pt_lock);
	if (dma->pfns)
		req->cpages = hmm_dma_unmap_all(&dma->map);
	mutex_unlock(&dmirror->pt_lock);
	mutex_unlock(&dma->lock);
	return 0;
}

struct dmirror_ioctl {
	unsigned int	cmd;
	int		(*fn)(struct dmirror *dmirror, struct dmirror_req *req);
};

/* Indexed by ioctl number; the full command must match, size included. */
static const struct dmirror_ioctl dmirror_ioctls[] = {
	[_IOC_NR(HMM_DMIRROR_READ)] = {
		HMM_DMIRROR_READ, dmirror_cmd_read },
	[_IOC_NR(HMM_DMIRROR_WRITE)] = {
		HMM_DMIRROR_WRITE, dmirror_cmd_write },
	[_IOC_NR(HMM_DMIRROR_MIGRATE_TO_DEV)] = {
		HMM_DMIRROR_MIGRATE_TO_DEV, dmirror_cmd_migrate_to_dev },
	[_IOC_NR(HMM_DMIRROR_MIGRATE_TO_SYS)] = {
		HMM_DMIRROR_MIGRATE_TO_SYS, dmirror_cmd_migrate_to_sys },
	[_IOC_NR(HMM_DMIRROR_SNAPSHOT)] = {
		HMM_DMIRROR_SNAPSHOT, dmirror_cmd_snapshot },
	[_IOC_NR(HMM_DMIRROR_EXCLUSIVE)] = {
		HMM_DMIRROR_EXCLUSIVE, dmirror_cmd_exclusive },
	[_IOC_NR(HMM_DMIRROR_CHECK_EXCLUSIVE)] = {
		HMM_DMIRROR_CHECK_EXCLUSIVE, dmirror_cmd_check_exclusive },
	[_IOC_NR(HMM_DMIRROR_RELEASE)] = {
		HMM_DMIRROR_RELEASE, dmirror_cmd_release },
	[_IOC_NR(HMM_DMIRROR_DMA_READ)] = {
		HMM_DMIRROR_DMA_READ, dmirror_cmd_dma_read },
	[_IOC_NR(HMM_DMIRROR_DMA_WRITE)] = {
		HMM_DMIRROR_DMA_WRITE, dmirror_cmd_dma_write },
	[_IOC_NR(HMM_DMIRROR_DMA_STATS)] = {
		HMM_DMIRROR_DMA_STATS, dmirror_cmd_dma_stats },
	[_IOC_NR(HMM_DMIRROR_DMA_UNMAP)] = {
		HMM_DMIRROR_DMA_UNMAP, dmirror_cmd_dma_unmap },
	[_IOC_NR(HMM_DMIRROR_DMA_WRITE_PARTIAL)] = {
		HMM_DMIRROR_DMA_WRITE_PARTIAL, dmirror_cmd_dma_write_partial },
	[_IOC_NR(HMM_DMIRROR_LOCK)] = {
		HMM_DMIRROR_LOCK, dmirror_cmd_lock },
	[_IOC_NR(HMM_DMIRROR_UNLOCK)] = {
		HMM_DMIRROR_UNLOCK, dmirror_cmd_unlock },
	[_IOC_NR(HMM_DMIRROR_LOCK_QUERY)] = {
		HMM_DMIRROR_LOCK_QUERY, dmirror_cmd_lock_query },
};

/* Reject ranges the device cannot address before any work is done. */
static int dmirror_req_init(struct dmirror *dmirror,
			    const struct hmm_dmirror_cmd *cmd,
			    struct dmirror_req *req)
{
	unsigned long limit = dmirror->mirror.mm->task_size;

	if (cmd->addr != (unsigned long)cmd->addr ||
	    !PAGE_ALIGNED(cmd->addr) || !cmd->npages ||
	    cmd->npages > (limit >> PAGE_SHIFT))
		return -EINVAL;

	req->start = cmd->addr;
	req->npages = cmd->npages;
	req->end = req->start + (req->npages << PAGE_SHIFT);
	if (req->end < req->start || req->end > limit)
		return -EINVAL;
	req->buf = u64_to_user_ptr(cmd->ptr);
	return 0;
}

static long dmirror_fop_ioctl(struct file *filp, unsigned int cmd,
			      unsigned long arg)
{
	struct dmirror *dmirror = filp->private_data;
	void __user *uarg = (void __user *)arg;
	const struct dmirror_ioctl *desc;
	struct hmm_dmirror_cmd ucmd;
	struct dmirror_req req = {};
	unsigned int nr = _IOC_NR(cmd);
	int ret;

	if (_IOC_TYPE(cmd) != 'H' || nr >= ARRAY_SIZE(dmirror_ioctls))
		return -ENOTTY;
	desc = &dmirror_ioctls[array_index_nospec(nr,
						  ARRAY_SIZE(dmirror_ioctls))];
	if (!desc->fn || desc->cmd != cmd)
		return -ENOTTY;

	if (copy_from_user(&ucmd, uarg, sizeof(ucmd)))
		return -EFAULT;
	ret = dmirror_req_init(dmirror, &ucmd, &req);
	if (ret)
		return ret;

	ret = desc->fn(dmirror, &req);
	if (ret)
		return ret;

	ucmd.cpages = req.cpages;
	ucmd.faults = req.faults;
	if (copy_to_user(uarg, &ucmd, sizeof(ucmd)))
		return -EFAULT;
	return 0;
}

/* ---------------------------------------------------------------------
 * File operations and device setup
 */

static int dmirror_fop_open(struct inode *inode, struct file *filp)
{
	struct dmirror_device *mdev = container_of(inode->i_cdev,
						   struct dmirror_device, cdev);
	struct dmirror *dmirror;
	int ret;

	if (!current->mm)
		return -EINVAL;

	dmirror = kzalloc(sizeof(*dmirror), GFP_KERNEL);
	if (!dmirror)
		return -ENOMEM;
	dmirror->mdev = mdev;
	mutex_init(&dmirror->pt_lock);
	xa_init(&dmirror->pt);
	dmirror_dma_init(dmirror);
	dmirror->mirror.ops = &dmirror_mirror_ops;

	/* Not under mirrors_lock: registering takes the mmap lock. */
	ret = hmm_mirror_register(&dmirror->mirror, current->mm);
	if (ret) {
		kfree(dmirror);
		return ret;
	}

	mutex_lock(&mdev->mirrors_lock);
	list_add(&dmirror->node, &mdev->mirrors);
	mutex_unlock(&mdev->mirrors_lock);

	filp->private_data = dmirror;
	return 0;
}

static int dmirror_fop_release(struct inode *inode, struct file *filp)
{
	struct dmirror *dmirror = filp->private_data;
	struct dmirror_device *mdev = dmirror->mdev;

	mutex_lock(&mdev->mirrors_lock);
	list_del(&dmirror->node);
	mutex_unlock(&mdev->mirrors_lock);

	hmm_mirror_unregister(&dmirror->mirror);
	dmirror_devmem_evict_owner(mdev, dmirror);

	dmirror_dma_destroy(dmirror);
	xa_destroy(&dmirror->pt);
	kfree(dmirror);
	return 0;
}

/*
 * Mapping the device file gives zeroed kernel pages inserted into a
 * VM_MIXEDMAP vma, like a driver exposing device-owned buffers; it lets
 * the tests check how hmm_range_fault() reports such mappings.
 */
static int dmirror_fop_mmap(struct file *filp, struct vm_area_struct *vma)
{
	unsigned long addr;
	int ret;

	if (vma->vm_end - vma->vm_start > DMIRROR_MMAP_MAX)
		return -EINVAL;

	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);

		if (!page)
			return -ENOMEM;
		/* On success the mapping holds its own reference. */
		ret = vm_insert_page(vma, addr, page);
		put_page(page);
		if (ret)
			return ret;
	}
	return 0;
}

static const struct file_operations dmirror_fops = {
	.owner		= THIS_MODULE,
	.open		= dmirror_fop_open,
	.release	= dmirror_fop_release,
	.mmap		= dmirror_fop_mmap,
	.unlocked_ioctl	= dmirror_fop_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

/* ---------------------------------------------------------------------
 * Device memory accounting, for the reliability tests
 *
 * Each device shows in sysfs (/sys/dev/char/MAJOR:MINOR/) how many of its
 * pages are in use and how many chunks are plugged, so a test can check
 * that everything came back, and takes a limit on the pages in use, so a
 * test can run the device out of memory without filling gigabytes first.
 * devmem_evict chooses what running out does, devmem_evicted counts the
 * pages eviction moved, so a test can tell that it happened.
 */

static unsigned long dmirror_devmem_used_locked(struct dmirror_device *mdev)
{
	struct dmirror_chunk *chunk;
	unsigned long used = 0;

	lockdep_assert_held(&mdev->mem_lock);
	list_for_each_entry(chunk, &mdev->chunks, node)
		used += chunk->nr_busy;
	return used;
}

/* Called with mem_lock held; chunks being drained are not counted. */
static bool dmirror_devmem_at_limit(struct dmirror_device *mdev)
{
	unsigned long limit = READ_ONCE(mdev->limit);

	return limit && dmirror_devmem_used_locked(mdev) >= limit;
}

static struct dmirror_device *dmirror_dev_to_mdev(struct device *dev)
{
	return container_of(dev, struct dmirror_device, dev);
}

static ssize_t devmem_used_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	struct dmirror_device *mdev = dmirror_dev_to_mdev(dev);
	unsigned long used;

	spin_lock(&mdev->mem_lock);
	used = dmirror_devmem_used_locked(mdev);
	spin_unlock(&mdev->mem_lock);
	return sysfs_emit(buf, "%lu\n", used);
}
static DEVICE_ATTR_RO(devmem_used);

static ssize_t devmem_chunks_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	struct dmirror_device *mdev = dmirror_dev_to_mdev(dev);
	unsigned int nr;

	mutex_lock(&mdev->chunks_lock);
	nr = mdev->nr_chunks;
	mutex_unlock(&mdev->chunks_lock);
	return sysfs_emit(buf, "%u\n", nr);
}
static DEVICE_ATTR_RO(devmem_chunks);

static ssize_t devmem_limit_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n",
			  READ_ONCE(dmirror_dev_to_mdev(dev)->limit));
}

/* Pages already handed out above a new limit stay; only new ones fail. */
static ssize_t devmem_limit_store(struct device *dev,
				  struct device_attribute *attr,
				  const char *buf, size_t count)
{
	unsigned long limit;
	int ret;

	ret = kstrtoul(buf, 0, &limit);
	if (ret)
		return ret;
	WRITE_ONCE(dmirror_dev_to_mdev(dev)->limit, limit);
	return count;
}
static DEVICE_ATTR_RW(devmem_limit);

static ssize_t devmem_evict_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  READ_ONCE(dmirror_dev_to_mdev(dev)->evict));
}

/*
 * 1: a migration to the device that finds no free page evicts others (see
 * "Eviction"); 0, the default: it fails with -ENOMEM, which tests of the
 * limit itself rely on.
 */
static ssize_t devmem_evict_store(struct device *dev,
				  struct device_attribute *attr,
				  const char *buf, size_t count)
{
	bool evict;
	int ret;

	ret = kstrtobool(buf, &evict);
	if (ret)
		return ret;
	WRITE_ONCE(dmirror_dev_to_mdev(dev)->evict, evict);
	return count;
}
static DEVICE_ATTR_RW(devmem_evict);

/* Pages evicted to make room since the device was created. */
static ssize_t devmem_evicted_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%ld\n",
			  atomic_long_read(&dmirror_dev_to_mdev(dev)->evicted));
}
static DEVICE_ATTR_RO(devmem_evicted);

static struct attribute *dmirror_dev_attrs[] = {
	&dev_attr_devmem_used.attr,
	&dev_attr_devmem_chunks.attr,
	&dev_attr_devmem_limit.attr,
	&dev_attr_devmem_evict.attr,
	&dev_attr_devmem_evicted.attr,
	NULL
};
ATTRIBUTE_GROUPS(dmirror_dev);

static void dmirror_device_release(struct device *dev)
{
	kfree(container_of(dev, struct dmirror_device, dev));
}

static int dmirror_device_create(unsigned int id, unsigned int mem_type,
				 phys_addr_t spm_base)
{
	struct dmirror_device *mdev;
	int ret;

	mdev = kzalloc(sizeof(*mdev), GFP_KERNEL);
	if (!mdev)
		return -ENOMEM;
	mdev->mem_type = mem_type;
	mdev->spm_base = spm_base;
	mutex_init(&mdev->mirrors_lock);
	INIT_LIST_HEAD(&mdev->mirrors);
	mutex_init(&mdev->chunks_lock);
	spin_lock_init(&mdev->mem_lock);
	INIT_LIST_HEAD(&mdev->chunks);
	INIT_LIST_HEAD(&mdev->lru);
	init_waitqueue_head(&mdev->drain_wq);

	device_initialize(&mdev->dev);
	mdev->dev.release = dmirror_device_release;
	mdev->dev.groups = dmirror_dev_groups;
	mdev->dev.devt = MKDEV(MAJOR(dmirror_devt), id);
	ret = dev_set_name(&mdev->dev, "hmm_dmirror%u", id);
	if (ret)
		goto put_dev;

	/* Coherent memory is plugged now, so a bad range shows at once. */
	if (!dmirror_is_private(mdev)) {
		mutex_lock(&mdev->chunks_lock);
		ret = dmirror_chunk_add(mdev);
		mutex_unlock(&mdev->chunks_lock);
		if (ret)
			goto put_dev;
	}

	cdev_init(&mdev->cdev, &dmirror_fops);
	mdev->cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&mdev->cdev, &mdev->dev);
	if (ret)
		goto release_mem;

	dmirror_devices[id] = mdev;
	return 0;

release_mem:
	dmirror_devmem_release(mdev, true);
put_dev:
	put_device(&mdev->dev);
	return ret;
}

static void dmirror_device_destroy(unsigned int id)
{
	struct dmirror_device *mdev = dmirror_devices[id];

	if (!mdev)
		return;
	dmirror_devices[id] = NULL;
	cdev_device_del(&mdev->cdev, &mdev->dev);
	dmirror_devmem_release(mdev, true);
	put_device(&mdev->dev);
}

/* Coherent devices need two disjoint, section aligned reserved ranges. */
static bool dmirror_spm_valid(void)
{
	unsigned long align = PAGES_PER_SECTION << PAGE_SHIFT;
	unsigned long lo = min(spm_addr_dev0, spm_addr_dev1);
	unsigned long hi = max(spm_addr_dev0, spm_addr_dev1);

	if (!spm_addr_dev0 && !spm_addr_dev1)
		return false;
	if (!spm_addr_dev0 || !spm_addr_dev1 ||
	    !IS_ALIGNED(spm_addr_dev0, align) ||
	    !IS_ALIGNED(spm_addr_dev1, align) ||
	    hi - lo < DMIRROR_CHUNK_SIZE) {
		pr_err("test_hmm: spm_addr_dev0=%#lx spm_addr_dev1=%#lx unusable, coherent devices disabled\n",
		       spm_addr_dev0, spm_addr_dev1);
		return false;
	}
	return true;
}

static void dmirror_coherent_create(void)
{
	int ret;

	if (!dmirror_spm_valid())
		return;

	ret = dmirror_device_create(2, HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
				    spm_addr_dev0);
	if (!ret)
		ret = dmirror_device_create(3,
					    HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
					    spm_addr_dev1);
	if (ret) {
		dmirror_device_destroy(2);
		pr_err("test_hmm: coherent devices disabled: %d\n", ret);
	}
}

static int __init dmirror_init(void)
{
	unsigned int id;
	int ret;

	ret = alloc_chrdev_region(&dmirror_devt, 0, DMIRROR_NDEVICES,
				  "hmm_dmirror");
	if (ret)
		return ret;

	for (id = 0; id < DMIRROR_NPRIVATE; id++) {
		ret = dmirror_device_create(id,
					    HMM_DMIRROR_MEMORY_DEVICE_PRIVATE,
					    0);
		if (ret)
			goto destroy;
	}
	/* Without coherent memory, /dev/hmm_dmirror2 and 3 do not exist. */
	dmirror_coherent_create();
	dmirror_dma_setup();

	pr_info("test_hmm: HMM dummy devices ready, for testing only\n");
	return 0;

destroy:
	while (id--)
		dmirror_device_destroy(id);
	unregister_chrdev_region(dmirror_devt, DMIRROR_NDEVICES);
	return ret;
}

static void __exit dmirror_exit(void)
{
	unsigned int id;

	dmirror_dma_teardown();
	for (id = 0; id < DMIRROR_NDEVICES; id++)
		dmirror_device_destroy(id);
	unregister_chrdev_region(dmirror_devt, DMIRROR_NDEVICES);
}

module_init(dmirror_init);
module_exit(dmirror_exit);
MODULE_DESCRIPTION("Dummy device for testing HMM (heterogeneous memory management)");
MODULE_LICENSE("GPL");
