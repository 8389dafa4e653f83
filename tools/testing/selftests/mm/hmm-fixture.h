/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The fixture of the HMM selftest programs that run on both kinds of
 * device memory: included once by each of them, after kselftest_harness.h.
 */
#ifndef __HMM_FIXTURE_H__
#define __HMM_FIXTURE_H__

/* ---------------------------------------------------------------------
 * Fixture: one device under test plus a peer device with the same kind of
 * memory, both open for the calling process.
 */

FIXTURE(hmm) {
	int fd;
	int peer_fd;
	size_t psz;
	bool gigantic_borrowed;	/* shrink the 1 GiB pool back on teardown */
};

FIXTURE_VARIANT(hmm) {
	int unit;
	int peer;
	bool coherent;
};

FIXTURE_VARIANT_ADD(hmm, hmm_device_private) {
	.unit = 0,
	.peer = 1,
	.coherent = false,
};

FIXTURE_VARIANT_ADD(hmm, hmm_device_coherent) {
	.unit = 2,
	.peer = 3,
	.coherent = true,
};

FIXTURE_SETUP(hmm)
{
	self->psz = sysconf(_SC_PAGESIZE);
	self->fd = dmirror_open(variant->unit);
	if (self->fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror%d absent (%s)", variant->unit,
		     variant->coherent ?
		     "test_hmm loaded without spm_addr_dev0/1" :
		     "test_hmm not loaded");
	ASSERT_LE(0, self->fd);
	self->peer_fd = dmirror_open(variant->peer);
	if (self->peer_fd < 0 && errno == ENOENT)
		SKIP(return, "/dev/hmm_dmirror%d absent", variant->peer);
	ASSERT_LE(0, self->peer_fd);
}

#define GIGANTIC_NR "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"

FIXTURE_TEARDOWN(hmm)
{
	/* Swap, memcg, KSM left on by a case that failed half way. */
	hmm_leftovers_teardown();
	close(self->peer_fd);
	close(self->fd);
	/* A page still mapped becomes surplus and is freed at exit. */
	if (self->gigantic_borrowed)
		write_str(GIGANTIC_NR, "0");
}

/* What SNAPSHOT on the local device reports for a writable migrated page. */
static inline unsigned char dev_local(bool coherent)
{
	return (coherent ? HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL :
			      HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL) | DEV_RW;
}

/*
 * What SNAPSHOT on one device reports for a writable page that lives on
 * the other. Coherent memory is mapped by ordinary PTEs, so the peer sees
 * it. A device-private page of another owner is a non-present entry that
 * hmm_range_fault() does not report without faulting it, so the peer sees
 * nothing there.
 */
static inline unsigned char dev_remote(bool coherent)
{
	return coherent ?
		HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE | DEV_RW :
		HMM_DMIRROR_PROT_NONE;
}

#endif /* __HMM_FIXTURE_H__ */
