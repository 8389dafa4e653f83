/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * DMA mappings of mirrored pages: the state a driver keeps beside the
 * hmm_pfns array of a range so that its device can reach those pages
 * through the DMA API, and the helpers that create and drop it.  Only
 * devices that reach memory directly and coherently can use them.
 *
 * See the "DMA mapping" section of Documentation/mm/hmm.rst.
 */
#ifndef _LINUX_HMM_DMA_H
#define _LINUX_HMM_DMA_H

#include <linux/hmm.h>
#include <linux/types.h>

struct device;
struct mutex;

/*
 * HMM_DMA_LOCAL - hmm_dma_map_pfn() result for a device-private page of
 * the map's own pgmap owner: the data already sits in the device's memory,
 * so nothing was mapped.  Never a valid map order.
 */
#define HMM_DMA_LOCAL	(HMM_PFN_ORDER_MASK + 1)

/**
 * struct hmm_dma_map - DMA mapping state of a mirrored range
 * @dev: device the pages are mapped for
 * @owner: pgmap owner of the device's own device-private memory, or NULL
 * @lock: the driver lock serialising map, unmap and invalidation, or NULL
 * @nr_entries: number of pages (entries) the state covers
 * @nr_mappings: live DMA mappings; a huge mapping counts once
 * @addrs: private: per entry, the DMA address of that page
 * @state: private: per entry, what is mapped there (see mm/hmm_dma.c)
 *
 * Entry i stands for page i of the range, the same index as in
 * hmm_range::hmm_pfns.  All fields are read-only for the driver.
 */
struct hmm_dma_map {
	struct device		*dev;
	void			*owner;
	struct mutex		*lock;		/* asserted, never taken */
	unsigned long		nr_entries;
	unsigned long		nr_mappings;
	dma_addr_t		*addrs;
	unsigned long		*state;
};

int hmm_dma_map_init(struct hmm_dma_map *map, struct device *dev,
		     unsigned long nr_entries, void *owner, struct mutex *lock);
void hmm_dma_map_destroy(struct hmm_dma_map *map);
int hmm_dma_map_pfn(struct hmm_dma_map *map, unsigned long idx,
		    unsigned long hmm_pfn, dma_addr_t *dma_addr);
int hmm_dma_lookup(struct hmm_dma_map *map, unsigned long idx,
		   dma_addr_t *dma_addr);
unsigned long hmm_dma_unmap_range(struct hmm_dma_map *map,
				  unsigned long idx, unsigned long count);

/**
 * hmm_dma_unmap_pfn() - drop the DMA mapping that covers one entry
 * @map: the mapping state
 * @idx: the entry
 *
 * Context: as hmm_dma_unmap_range().
 * Return: as hmm_dma_unmap_range().
 */
static inline unsigned long hmm_dma_unmap_pfn(struct hmm_dma_map *map,
					      unsigned long idx)
{
	return hmm_dma_unmap_range(map, idx, 1);
}

/**
 * hmm_dma_unmap_all() - drop every DMA mapping of the state
 * @map: the mapping state
 *
 * Context: as hmm_dma_unmap_range().
 * Return: as hmm_dma_unmap_range().
 */
static inline unsigned long hmm_dma_unmap_all(struct hmm_dma_map *map)
{
	return hmm_dma_unmap_range(map, 0, map->nr_entries);
}

#endif /* _LINUX_HMM_DMA_H */
