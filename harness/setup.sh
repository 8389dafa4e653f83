#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Check the machine and install what the harness needs from Debian's archive
# (plus any packages named as arguments).
# Idempotent: does nothing when every package is already there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PACKAGES="linux-source-6.12 qemu-system-x86 busybox-static gcc make flex bison
bc libelf-dev libssl-dev cpio ccache dwarves xz-utils git python3 perl kmod
python3-ply python3-git
rsync gzip"

# Extra packages a command needs beyond the common set, as arguments.
PACKAGES="$PACKAGES $*"

missing_packages() {
	local p

	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
			grep -q 'install ok installed' || echo "$p"
	done
}

check_disk() {
	local dir=$1 need_gb=$2 avail

	mkdir -p "$dir"
	avail=$(df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1048576) }')
	[ "$avail" -ge "$need_gb" ] ||
		die "only ${avail} GiB free under $dir; the kernel tree and builds need ${need_gb} GiB"
}

step "checking the machine"
[ "$(uname -m)" = x86_64 ] || die "the harness runs on x86_64 hosts only"
check_disk "$OUT" 8
missing=$(missing_packages | xargs)
if [ -n "$missing" ]; then
	[ "$(id -u)" -eq 0 ] ||
		die "packages missing ($missing) and not root: run as root or install them"
	step "installing: $missing"
	export DEBIAN_FRONTEND=noninteractive
	run_logged "$LOGS/apt-update.log" "apt-get update" apt-get update
	# shellcheck disable=SC2086
	run_logged "$LOGS/apt-install.log" "apt-get install" \
		apt-get install -y --no-install-recommends $missing
fi
[ -n "$(base_tarball)" ] ||
	die "kernel source missing: /usr/src/linux-source-6.12.tar.xz (package linux-source-6.12)"
mkdir -p "$CCACHE_DIR"
info "packages present, base $(base_tarball), ccache in $CCACHE_DIR"
