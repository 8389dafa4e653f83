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
drivers/gpu/drm/amd/amdgpu/amdgpu_hmm.o
drivers/gpu/drm/xe/xe_hmm.o
drivers/infiniband/core/umem_odp.o"

# amdkfd is compiled as part of amdgpu, with amdgpu's flags, and kbuild
# cannot build one of its objects alone: reuse amdgpu_hmm.o's command.
KFD="kfd_svm kfd_migrate"

kfd_compile() {
	local name=$1 cmd

	cmd=$(sed -n '1s/^savedcmd_[^ ]* := //p' \
		"$CBUILD/drivers/gpu/drm/amd/amdgpu/.amdgpu_hmm.o.cmd" |
		sed -e "s#amdgpu/amdgpu_hmm#amdkfd/$name#g" \
		    -e "s#amdgpu/\.amdgpu_hmm#amdkfd/.$name#g" \
		    -e "s#\"amdgpu_hmm\"#\"$name\"#g")
	[ -n "$cmd" ] || die "no saved command line for amdgpu_hmm.o"
	mkdir -p "$CBUILD/drivers/gpu/drm/amd/amdkfd"
	(cd "$CBUILD" && eval "$cmd")
}

kmake() { kmake_in "$CBUILD" "$@"; }

step "configuring the compat kernel in $CBUILD"
kconfig_make "$CBUILD" compat "$HARNESS"/configs/*.config "$HARNESS"/configs/compat/*.config
step "compiling the in-tree users of the HMM API"
# shellcheck disable=SC2086
run_logged "$LOGS/compat.log" "compat build" kmake -j"$JOBS" $OBJECTS
for k in $KFD; do
	run_logged "$LOGS/compat-$k.log" "compiling amdkfd/$k.o" kfd_compile "$k"
	OBJECTS="$OBJECTS drivers/gpu/drm/amd/amdkfd/$k.o"
done
for o in $OBJECTS; do
	[ -f "$CBUILD/$o" ] || die "$o was not built"
	info "ok  $o"
done
