#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Build the guest's programs statically against the patched tree's headers
# and pack them with busybox and harness/guest/init into $OUT/initrd.gz.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$OUT/initramfs
# The normal kernel's headers serve both kernels: they share one tree.
CFLAGS="-static -O2 -g -Wall -pthread -D_GNU_SOURCE -I$LINUX -I$LINUX/tools/testing/selftests -isystem $OUT/build/usr/include"

# cc_prog NAME SOURCE [FLAGS]: compile one guest program.
cc_prog() {
	local name=$1 src=$2 flags=${3:-}

	[ -f "$src" ] || die "guest program source missing: $src"
	# shellcheck disable=SC2086
	run_logged "$LOGS/cc-$name.log" "compiling $name" \
		gcc $CFLAGS $flags -o "$ROOT/opt/hmm/$name" "$src" -lm
}

# The HMM programs of selftests/mm (hmm-common.c linked in by its
# Makefile), built by that Makefile, static and with warnings fatal.
HMM_PROGS="hmm-tests hmm-migrate-tests hmm-devlock-tests hmm-dma-tests"
HMM_PROGS+=" hmm-shmem-tests hmm-shmem-evict-tests hmm-stress hmm-fuzz"

mm_progs() {
	local out=$OUT/selftests-mm p

	rm -rf "$out"
	mkdir -p "$out"
	# shellcheck disable=SC2046
	run_logged "$LOGS/cc-selftests-mm.log" \
		"compiling the HMM programs (make -C tools/testing/selftests/mm)" \
		make -C "$LINUX/tools/testing/selftests/mm" OUTPUT="$out" \
		KHDR_INCLUDES="-isystem $OUT/build/usr/include" \
		LDFLAGS=-static EXTRA_CFLAGS=-Werror \
		$(printf "$out/%s " $HMM_PROGS)
	for p in $HMM_PROGS; do
		cp "$out/$p" "$ROOT/opt/hmm/$p"
	done
}

step "building guest programs and the initramfs"
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,opt/hmm}
cp /bin/busybox "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
file -b /bin/busybox 2>/dev/null | grep -q static ||
	ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' ||
	die "/bin/busybox is not static: install busybox-static"
cp "$HARNESS/guest/init" "$ROOT/init"
mm_progs
cc_prog hmm-demo "$HARNESS/demo/hmm-demo.c" -Werror
# Upstream 6.12's own selftest, from the pristine base commit, built
# against our uapi header: existing userspace must keep working.
git -C "$LINUX" show base:tools/testing/selftests/mm/hmm-tests.c >"$OUT/hmm-tests-6.12.c"
cc_prog hmm-tests-6.12 "$OUT/hmm-tests-6.12.c" -I"$LINUX/tools/testing/selftests/mm"
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initrd.gz"
info "$(du -h "$OUT/initrd.gz" | cut -f1) initramfs: $(ls "$ROOT/opt/hmm" | xargs)"
