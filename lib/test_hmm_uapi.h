/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Userspace interface of the HMM dummy device (lib/test_hmm.c).
 *
 * Each /dev/hmm_dmirrorN file stands for a device that mirrors the address
 * space of the process which opened it.  The ioctls below make that device
 * access, migrate or inspect the process memory, so the selftests can
 * exercise the HMM core from userspace.  This is a test interface, not a
 * stable ABI, which is why it lives next to the driver and not under
 * include/uapi.
 */
#ifndef _LIB_TEST_HMM_UAPI_H
#define _LIB_TEST_HMM_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

/**
 * struct hmm_dmirror_cmd - argument of every HMM_DMIRROR_* ioctl
 * @addr:   in: first byte of the process range the device works on; must
 *          be page aligned
 * @ptr:    in: user buffer holding the data to write, or receiving the data
 *          read (one page per page of the range) or, for
 *          HMM_DMIRROR_SNAPSHOT, one HMM_DMIRROR_PROT_* byte per page
 * @npages: in: length of the range in pages, at least one
 * @cpages: out: number of pages the command handled (copied, migrated or
 *          snapshotted)
 * @faults: out: number of times the device had to fault the range in
 *          through its page table
 */
struct hmm_dmirror_cmd {
	__u64		addr;
	__u64		ptr;
	__u64		npages;
	__u64		cpages;
	__u64		faults;
};

/* Device reads the range into @ptr through its own page table. */
#define HMM_DMIRROR_READ		_IOWR('H', 0x00, struct hmm_dmirror_cmd)
/* Device writes @ptr into the range through its own page table. */
#define HMM_DMIRROR_WRITE		_IOWR('H', 0x01, struct hmm_dmirror_cmd)
/* Move the range into device memory, then read it back into @ptr. */
#define HMM_DMIRROR_MIGRATE_TO_DEV	_IOWR('H', 0x02, struct hmm_dmirror_cmd)
/* Move the device memory pages of the range back to system memory. */
#define HMM_DMIRROR_MIGRATE_TO_SYS	_IOWR('H', 0x03, struct hmm_dmirror_cmd)
/* Report how the CPU maps each page, without faulting anything in. */
#define HMM_DMIRROR_SNAPSHOT		_IOWR('H', 0x04, struct hmm_dmirror_cmd)
/* Take exclusive (atomic) access to the range, then read it into @ptr. */
#define HMM_DMIRROR_EXCLUSIVE		_IOWR('H', 0x05, struct hmm_dmirror_cmd)
/* Fail with EPERM while the device still holds exclusive access. */
#define HMM_DMIRROR_CHECK_EXCLUSIVE	_IOWR('H', 0x06, struct hmm_dmirror_cmd)
/* Give all device memory back, moving its pages to system memory. */
#define HMM_DMIRROR_RELEASE		_IOWR('H', 0x07, struct hmm_dmirror_cmd)

/*
 * DMA mode: the device reaches system memory only through DMA addresses
 * obtained with the hmm_dma_map helpers (include/linux/hmm-dma.h) for a
 * real struct device.  The helpers refuse a device whose mappings would
 * bounce, so with swiotlb=force every DMA_READ, DMA_WRITE and
 * DMA_WRITE_PARTIAL fails with EOPNOTSUPP and touches nothing.  Each file
 * keeps the mappings of its last DMA range (its window) until that range
 * is invalidated or a DMA request names another range.
 */
/* Device reads the range into @ptr through DMA addresses. */
#define HMM_DMIRROR_DMA_READ		_IOWR('H', 0x10, struct hmm_dmirror_cmd)
/* Device writes @ptr into the range through DMA addresses. */
#define HMM_DMIRROR_DMA_WRITE		_IOWR('H', 0x11, struct hmm_dmirror_cmd)
/*
 * Fill the struct hmm_dmirror_dma_stats at @ptr.  @addr and @npages are
 * not used but, as for every command, must form a valid range.
 */
#define HMM_DMIRROR_DMA_STATS		_IOWR('H', 0x12, struct hmm_dmirror_cmd)
/* Drop every DMA mapping of the window; @cpages is how many were live. */
#define HMM_DMIRROR_DMA_UNMAP		_IOWR('H', 0x13, struct hmm_dmirror_cmd)
/*
 * Device writes only the nonzero bytes of @ptr into the range and leaves
 * the bytes where @ptr holds zero as they are: a partial write, as a
 * device with byte enables does it.
 */
#define HMM_DMIRROR_DMA_WRITE_PARTIAL	_IOWR('H', 0x14, struct hmm_dmirror_cmd)

/**
 * struct hmm_dmirror_dma_stats - state of a file's DMA window
 * @mappings:     live DMA mappings (a huge page mapped once counts once)
 * @huge:         how many of them cover more than one page
 * @mapped_pages: pages covered by the live mappings
 * @unmapped:     mappings dropped by invalidations since the last STATS
 * @local:        pages of the last DMA request served from the device's
 *                own memory (nothing to map)
 * @bounced:      pages of the last DMA request whose DMA address did not
 *                lead to the page itself; always 0 unless hmm_dma let a
 *                bouncing device through
 * @max_mapping:  largest DMA mapping the device takes, in bytes
 */
struct hmm_dmirror_dma_stats {
	__u64		mappings;
	__u64		huge;
	__u64		mapped_pages;
	__u64		unmapped;
	__u64		local;
	__u64		bounced;
	__u64		max_mapping;
};

/*
 * Locking pages to device memory (device-private units only; the others
 * answer EOPNOTSUPP).  A CPU access to a locked page raises SIGBUS
 * (BUS_ADRERR, si_addr the faulting address) instead of migrating it back.
 *
 * HMM_DMIRROR_LOCK: every page of the range must be in this device's
 * memory already (EFAULT otherwise); EBUSY if a page is locked by another
 * process (a fork parent); ENOMEM past RLIMIT_MEMLOCK (locked pages count
 * in VmPin).  All or nothing; @cpages is @npages on success.
 * HMM_DMIRROR_UNLOCK: unlock what this process locked in the range;
 * @cpages is the number of pages unlocked; EPERM if a page of the range is
 * locked by another process.
 * HMM_DMIRROR_LOCK_QUERY: one byte per page into @ptr, 1 if the page is in
 * this device's memory and locked, else 0; @faults is the number of 1s.
 */
#define HMM_DMIRROR_LOCK		_IOWR('H', 0x20, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_UNLOCK		_IOWR('H', 0x21, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_LOCK_QUERY		_IOWR('H', 0x22, struct hmm_dmirror_cmd)

/*
 * Page states written by HMM_DMIRROR_SNAPSHOT, one byte per page.  The low
 * bits say how the CPU may access the page, the high nibble says where the
 * page lives; the two are or'ed together.
 *
 * HMM_DMIRROR_PROT_ERROR: no usable mapping (hole or inaccessible vma)
 * HMM_DMIRROR_PROT_NONE: valid vma but nothing mapped yet
 * HMM_DMIRROR_PROT_READ: mapped read-only
 * HMM_DMIRROR_PROT_WRITE: mapped writable
 * HMM_DMIRROR_PROT_PMD: part of a mapping made at PMD level
 * HMM_DMIRROR_PROT_PUD: part of a mapping made at PUD level
 * HMM_DMIRROR_PROT_ZERO: the shared zero page
 * HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL: private memory of this device
 * HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE: private memory of another device
 * HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL: coherent memory of this device
 * HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE: coherent memory of another device
 */
enum {
	HMM_DMIRROR_PROT_ERROR			= 0xFF,
	HMM_DMIRROR_PROT_NONE			= 0x00,
	HMM_DMIRROR_PROT_READ			= 0x01,
	HMM_DMIRROR_PROT_WRITE			= 0x02,
	HMM_DMIRROR_PROT_PMD			= 0x04,
	HMM_DMIRROR_PROT_PUD			= 0x08,
	HMM_DMIRROR_PROT_ZERO			= 0x10,
	HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL	= 0x20,
	HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE	= 0x30,
	HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL	= 0x40,
	HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE	= 0x50,
};

/* Kind of memory a dummy device owns; zero means "no device here". */
enum {
	HMM_DMIRROR_MEMORY_DEVICE_PRIVATE = 1,
	HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
};

#endif /* _LIB_TEST_HMM_UAPI_H */
