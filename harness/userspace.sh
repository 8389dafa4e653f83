#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Build the guest's programs statically against the patched tree's headers
# and pack them with busybox and harness/guest/init into $OUT/initrd.gz.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$OUT/initramfs
# The normal kernel's headers serve both kernels: they share one tree.
CFLAGS="-static -O2 -g -Wall -pthread -D_GNU_SOURCE -I$LINUX -I$LINUX/tools/testing/selftests -isystem $OUT/build/usr/include"

# cc_prog NAME "SOURCE..." [FLAGS]: compile one guest program.
cc_prog() {
	local name=$1 srcs=$2 flags=${3:-} src

	for src in $srcs; do
		[ -f "$src" ] || die "guest program source missing: $src"
	done
	# shellcheck disable=SC2086
	run_logged "$LOGS/cc-$name.log" "compiling $name" \
		gcc $CFLAGS $flags -o "$ROOT/opt/hmm/$name" $srcs -lm
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
MM=$LINUX/tools/testing/selftests/mm
# hmm-common.c is ours (-Werror); vm_util.c and thp_settings.c upstream's.
HMM_LIBS="$MM/hmm-common.c $MM/vm_util.c $MM/thp_settings.c"
for t in hmm-tests hmm-migrate-tests hmm-devlock-tests hmm-dma-tests \
	hmm-shmem-tests hmm-shmem-evict-tests; do
	cc_prog $t "$MM/$t.c $HMM_LIBS" -Werror
done
cc_prog hmm-demo "$HARNESS/demo/hmm-demo.c" -Werror
# Upstream 6.12's own selftest, from the pristine base commit, built
# against our uapi header: existing userspace must keep working.
git -C "$LINUX" show base:tools/testing/selftests/mm/hmm-tests.c >"$OUT/hmm-tests-6.12.c"
cc_prog hmm-tests-6.12 "$OUT/hmm-tests-6.12.c" -I"$LINUX/tools/testing/selftests/mm"
cc_prog hmm-stress "$MM/hmm-stress.c $HMM_LIBS" -Werror
cc_prog hmm-fuzz "$MM/hmm-fuzz.c $HMM_LIBS" -Werror
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initrd.gz"
info "$(du -h "$OUT/initrd.gz" | cut -f1) initramfs: $(ls "$ROOT/opt/hmm" | xargs)"
