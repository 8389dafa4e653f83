#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Compile the in-tree users of our API (not link or boot them): the test
# kernel's config plus configs/compat/*.config, built in $OUT/compat, and
# only the objects below; and powerpc's KVM ultravisor driver, the one
# user of the migrate_vma API outside x86, with Debian's powerpc cross
# compiler in a powernv_defconfig build of its own.
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

PPCBUILD=$OUT/compat-powerpc
PPC_OBJECT=arch/powerpc/kvm/book3s_hv_uvmem.o

# Runs in a subshell: ARCH and CROSS_COMPILE must not leak into the rest.
compat_powerpc() (
	export ARCH=powerpc CROSS_COMPILE=powerpc64le-linux-gnu-

	command -v "${CROSS_COMPILE}gcc" >/dev/null ||
		die "${CROSS_COMPILE}gcc missing (package gcc-powerpc64le-linux-gnu)"
	step "configuring the powerpc compat kernel in $PPCBUILD"
	mkdir -p "$PPCBUILD"
	run_logged "$LOGS/compat-powerpc-defconfig.log" "powernv_defconfig" \
		kmake_in "$PPCBUILD" powernv_defconfig
	run_logged "$LOGS/compat-powerpc-merge.log" "merge_config.sh" \
		"$LINUX/scripts/kconfig/merge_config.sh" -m -O "$PPCBUILD" \
		"$PPCBUILD/.config" "$HARNESS"/configs/compat-powerpc/*.config
	kconfig_sync "$PPCBUILD" compat-powerpc "$HARNESS"/configs/compat-powerpc/*.config
	run_logged "$LOGS/compat-powerpc.log" "compiling $PPC_OBJECT" \
		kmake_in "$PPCBUILD" -j"$JOBS" "$PPC_OBJECT"
	[ -f "$PPCBUILD/$PPC_OBJECT" ] || die "$PPC_OBJECT was not built"
	info "ok  $PPC_OBJECT (powerpc)"
)

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
compat_powerpc
