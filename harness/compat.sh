#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Compile the in-tree users of our API (not link or boot them): the test
# kernel's config plus configs/compat/*.config, built in $OUT/compat, and
# only the objects below. powerpc's book3s_hv_uvmem.c needs a powerpc
# cross compiler, which Debian's archive has but this harness does not
# install; it uses only the migrate_vma API and is checked by the headers
# it shares with kfd_migrate.o and nouveau_dmem.o.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CBUILD=$OUT/compat
OBJECTS="drivers/gpu/drm/nouveau/nouveau_svm.o
drivers/gpu/drm/nouveau/nouveau_dmem.o
drivers/gpu/drm/amd/amdkfd/kfd_svm.o
drivers/gpu/drm/amd/amdkfd/kfd_migrate.o
drivers/gpu/drm/amd/amdgpu/amdgpu_hmm.o
drivers/gpu/drm/xe/xe_hmm.o
drivers/infiniband/core/umem_odp.o"

kmake() { make -C "$LINUX" O="$CBUILD" CC="ccache gcc" HOSTCC="ccache gcc" "$@"; }

step "configuring the compat kernel in $CBUILD"
mkdir -p "$CBUILD"
run_logged "$LOGS/compat-config.log" "tinyconfig" kmake tinyconfig
run_logged "$LOGS/compat-merge.log" "merge_config.sh" \
	"$LINUX/scripts/kconfig/merge_config.sh" -m -O "$CBUILD" "$CBUILD/.config" \
	"$HARNESS"/configs/*.config "$HARNESS"/configs/compat/*.config
run_logged "$LOGS/compat-olddef.log" "olddefconfig" kmake olddefconfig
bad=""
while read -r line; do
	grep -qxF "$line" "$CBUILD/.config" || bad="$bad $line"
done < <(grep -hE '^CONFIG_' "$HARNESS"/configs/compat/*.config)
[ -z "$bad" ] || die "compat config did not take:$bad"
step "compiling the in-tree users of the HMM API"
# shellcheck disable=SC2086
run_logged "$LOGS/compat.log" "compat build" kmake -j"$JOBS" $OBJECTS
for o in $OBJECTS; do
	[ -f "$CBUILD/$o" ] || die "$o was not built"
	info "ok  $o"
done
