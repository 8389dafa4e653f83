/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Checks shared by the hmm-*-tests programs; they ASSERT, so they take the
 * _metadata of the running case and include after kselftest_harness.h.
 */
#ifndef __HMM_EXPECT_H__
#define __HMM_EXPECT_H__

/* Expect snapshot entries [from, to) of @fd to be @want. */
static inline void expect_snap(struct __test_metadata *_metadata, int fd,
			       char *va, unsigned long npages,
			       unsigned long from, unsigned long to,
			       unsigned char want)
{
	unsigned char snap[64];
	struct hmm_dmirror_cmd cmd;
	unsigned long i;

	ASSERT_GE(64, npages);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_SNAPSHOT, va, snap, npages,
				 &cmd));
	for (i = from; i < to; i++) {
		if (snap[i] != want)
			TH_LOG("page %lu of %p: 0x%x, expected 0x%x", i,
			       (void *)va, snap[i], want);
		ASSERT_EQ(want, snap[i]);
	}
}

/* Expect SNAPSHOT on @fd to report @want for each of @npages at @va. */
static inline void shm_expect_snap(struct __test_metadata *_metadata,
				   int fd, char *va, unsigned long npages,
				   unsigned char want)
{
	struct hmm_dmirror_cmd cmd;
	unsigned char *snap;
	unsigned long i;

	snap = malloc(npages);
	ASSERT_NE(NULL, snap);
	ASSERT_EQ(0, dmirror_req(fd, HMM_DMIRROR_SNAPSHOT, va, snap, npages,
				 &cmd));
	for (i = 0; i < npages; i++) {
		if (snap[i] != want)
			TH_LOG("page %lu of %lu: state 0x%x, expected 0x%x", i,
			       npages, snap[i], want);
		ASSERT_EQ(want, snap[i]);
	}
	free(snap);
}

/* Migrate all of a fresh memfd of @npages filled with @seed, mapped at *@va. */
static inline int shm_memfd_on_device(struct __test_metadata *_metadata,
				      int dev, unsigned long npages,
				      size_t psz, __u32 seed, char **va)
{
	size_t len = npages * psz;
	struct hmm_dmirror_cmd cmd;
	char *dbuf;
	int mfd;

	mfd = shm_memfd_pattern(len, seed);
	if (mfd < 0)
		return -1;
	*va = shm_map(mfd, len, MAP_SHARED);
	dbuf = malloc(len);
	if (!*va || !dbuf ||
	    dmirror_req(dev, HMM_DMIRROR_MIGRATE_TO_DEV, *va, dbuf, npages,
			&cmd) || cmd.cpages != npages ||
	    pat_find_bad(dbuf, len, seed, 0) != -1) {
		TH_LOG("cannot move a memfd of %lu pages to the device",
		       npages);
		free(dbuf);
		close(mfd);
		return -1;
	}
	free(dbuf);
	return mfd;
}

#endif /* __HMM_EXPECT_H__ */
