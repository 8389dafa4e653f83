#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Configure and build the guest kernel in $OUT/build (O= build of
# $OUT/linux): tinyconfig plus every fragment under harness/configs, merged
# with the tree's own merge_config.sh, then checked symbol by symbol so a
# dependency that silently drops an option fails here and not in a test.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FRAGMENTS=$(ls "$HARNESS"/configs/*.config)

kmake() { make -C "$LINUX" O="$BUILD" CC="ccache gcc" HOSTCC="ccache gcc" "$@"; }

config_id() {
	cat $FRAGMENTS | sha256sum | cut -d' ' -f1
}

check_config() {
	local line sym bad=""

	while read -r line; do
		sym=${line%%=*}
		grep -qxF "$line" "$BUILD/.config" ||
			bad="$bad $line(got: $(grep -E "^$sym=|^# $sym is not set" "$BUILD/.config" || echo absent))"
	done < <(grep -hE '^CONFIG_[A-Z0-9_]+=' $FRAGMENTS)
	[ -z "$bad" ] || die "kernel config did not take:$bad"
}

configure() {
	step "configuring the kernel (tinyconfig + $(echo $FRAGMENTS | xargs -n1 basename | xargs))"
	mkdir -p "$BUILD"
	run_logged "$LOGS/config.log" "tinyconfig" kmake tinyconfig
	run_logged "$LOGS/config-merge.log" "merge_config.sh" \
		"$LINUX/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" $FRAGMENTS
	run_logged "$LOGS/config-olddef.log" "olddefconfig" kmake olddefconfig
	check_config
	config_id >"$BUILD/.hmm-config"
}

if [ ! -f "$BUILD/.config" ] || [ "$(cat "$BUILD/.hmm-config" 2>/dev/null)" != "$(config_id)" ]; then
	configure
else
	# The tree may have new Kconfig symbols: sync quietly, then recheck.
	run_logged "$LOGS/config-olddef.log" "olddefconfig" kmake olddefconfig
	check_config
fi

step "building the kernel (-j$JOBS, ccache; log in $LOGS/kernel.log)"
run_logged "$LOGS/kernel.log" "kernel build" kmake -j"$JOBS" bzImage
# Our files must build without a warning; upstream's are not ours to fix.
owned=$(sed -n 's/\.[ch]$//p' "$LINUX/.git/hmm-owned" | paste -sd'|')
if [ -n "$owned" ] &&
   grep -E "^(\.\./linux/)?($owned)\.[ch]:[0-9]+:[0-9]+: warning:" "$LOGS/kernel.log" >&2; then
	die "compiler warnings in our files (above)"
fi
run_logged "$LOGS/headers.log" "headers_install" kmake headers_install
info "$(ls -l "$BUILD/arch/x86/boot/bzImage" | awk '{ print $5 }') bytes: $BUILD/arch/x86/boot/bzImage"
ccache -s 2>/dev/null | grep -iE 'hits|cache hit' | head -n 2 | sed 's/^/    ccache: /' || true
