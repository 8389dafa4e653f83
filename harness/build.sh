#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Configure and build the $FLAVOR guest kernel in $BUILD (O= build of
# $OUT/linux): tinyconfig plus every fragment under harness/configs, merged
# with the tree's own merge_config.sh, then checked symbol by symbol so a
# dependency that silently drops an option fails here and not in a test.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FRAGMENTS=$(ls "$HARNESS"/configs/*.config)
[ "$FLAVOR" = normal ] || FRAGMENTS="$FRAGMENTS $(ls "$HARNESS"/configs/"$FLAVOR"/*.config)"

kmake() { kmake_in "$BUILD" "$@"; }

config_id() {
	cat $FRAGMENTS | sha256sum | cut -d' ' -f1
}

configure() {
	step "configuring the $FLAVOR kernel (tinyconfig + $(echo $FRAGMENTS | xargs -n1 basename | xargs))"
	# shellcheck disable=SC2086
	kconfig_make "$BUILD" config $FRAGMENTS
	config_id >"$BUILD/.hmm-config"
}

if [ ! -f "$BUILD/.config" ] || [ "$(cat "$BUILD/.hmm-config" 2>/dev/null)" != "$(config_id)" ]; then
	configure
else
	# The tree may have new Kconfig symbols: sync quietly, then recheck.
	# shellcheck disable=SC2086
	kconfig_sync "$BUILD" config $FRAGMENTS
fi

step "building the $FLAVOR kernel (-j$JOBS, ccache; log in $LOGS/kernel.log)"
run_logged "$LOGS/kernel.log" "kernel build" kmake -j"$JOBS" bzImage
# Our files must build without a warning; upstream's are not ours to fix.
owned=$(sed -n 's/\.[ch]$//p' "$LINUX/.git/hmm-owned" | paste -sd'|')
if [ -n "$owned" ] &&
   grep -E "^(\.\./linux/)?($owned)\.[ch]:[0-9]+:[0-9]+: warning:" "$LOGS/kernel.log" >&2; then
	die "compiler warnings in our files (above)"
fi
[ "$FLAVOR" != normal ] ||
	run_logged "$LOGS/headers.log" "headers_install" kmake headers_install
info "$(ls -l "$BUILD/arch/x86/boot/bzImage" | awk '{ print $5 }') bytes: $BUILD/arch/x86/boot/bzImage"
ccache -s 2>/dev/null | grep -iE 'hits|cache hit' | head -n 2 | sed 's/^/    ccache: /' || true
