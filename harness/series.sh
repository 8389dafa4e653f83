#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# series:     git format-patch --cover-letter of base..HEAD into $OUT/series,
#             then checkpatch --strict on every patch of it.
# checkpatch: checkpatch --strict -f on the files we own, and on the
#             patches of patches/ for the files we do not own.
# Fails when checkpatch reports an ERROR or a WARNING.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# Debian's python3 first: it has the ply and git modules spdxcheck.py
# imports, which another python3 earlier in PATH may lack.
checkpatch() {
	(cd "$LINUX" && PATH=/usr/bin:$PATH perl scripts/checkpatch.pl --strict \
		--terse --showfile --no-summary "$@") || true
}

report() {
	local out=$1 errs

	if [ -s "$out" ]; then
		sed 's/^/    /' "$out"
	fi
	errs=$(grep -cE ': (ERROR|WARNING):' "$out") || true
	info "$(grep -cE ': CHECK:' "$out" || true) checks, $errs errors or warnings"
	[ "$errs" -eq 0 ] || die "checkpatch found $errs errors or warnings"
}

mkdir -p "$LOGS"
case "$1" in
series)
	step "writing the series to $OUT/series"
	rm -rf "$OUT/series"
	git -C "$LINUX" format-patch -q --cover-letter -o "$OUT/series" base..HEAD
	ls "$OUT/series" | sed 's/^/    /'
	step "checkpatch --strict on the series"
	# FILE_PATH_CHANGES asks whether MAINTAINERS needs updating for each
	# new file: ours all fall under existing entries (HMM's mm/hmm*,
	# lib/test_hmm*, ... and MEMORY MANAGEMENT's mm/).
	checkpatch --ignore FILE_PATH_CHANGES \
		$(ls "$OUT"/series/*.patch | grep -v 0000-cover-letter) >"$LOGS/checkpatch.log"
	report "$LOGS/checkpatch.log"
	;;
checkpatch)
	step "checkpatch --strict on our files and patches"
	files=$(cat "$LINUX/.git/hmm-owned" | grep -E '\.(c|h)$' || true)
	patches=$(ls "$REPO"/patches/*.patch 2>/dev/null || true)
	{
		[ -z "$files" ] || checkpatch -f $files
		[ -z "$patches" ] || checkpatch $patches
	} >"$LOGS/checkpatch.log"
	report "$LOGS/checkpatch.log"
	;;
esac
