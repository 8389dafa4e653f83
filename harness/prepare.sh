#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Build out/linux: the pristine Debian 6.12 tree as one commit (tagged
# "base"), then one commit per entry of patches/series, so that git log and
# git format-patch show the patchset as a reviewer gets it.
#
# Entries of patches/series:
#   NAME.patch  git format-patch file; git am, else patch(1) with fuzz.
#               A reject stops the harness with the file names.
#   NAME.msg    a commit of files we own, copied wholesale from the repo.
#               First line "Files: path ...", a blank line, then the message.
#
# Nothing is redone when neither the base nor the series changed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# Files of the repo that stand at kernel paths: everything but the
# harness's own folders. Uncommitted work counts too, so it gets tested.
owned_files() {
	git -C "$REPO" ls-files --cached --others --exclude-standard |
		grep -vE '^(harness/|patches/|\.ci/|out/|README\.md$|Makefile$|\.gitignore$)' |
		while read -r f; do [ -f "$REPO/$f" ] && echo "$f"; done
}

series_entries() {
	sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$REPO/patches/series" | grep -v '^$' || true
}

base_id() {
	local tb

	tb=$(base_tarball)
	echo "$tb $(stat -c '%s %Y' "$tb") $(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null)"
}

series_id() {
	(
		cd "$REPO"
		series_entries
		sha256sum patches/series $(series_entries | sed 's|^|patches/|') \
			$(owned_files) 2>/dev/null
	) | sha256sum | cut -d' ' -f1
}

git_l() { git -C "$LINUX" "$@"; }

make_base() {
	local tb ver

	tb=$(base_tarball)
	ver=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)
	step "extracting $tb (Debian $ver) into $LINUX"
	rm -rf "$LINUX"
	mkdir -p "$LINUX"
	run_logged "$LOGS/extract.log" "tar" \
		tar -C "$LINUX" --strip-components=1 -xf "$tb"
	step "recording the pristine tree as the base commit"
	git_l init -q -b hmm
	git_l config user.name "$(git -C "$REPO" config user.name || echo HMM)"
	git_l config user.email "$(git -C "$REPO" config user.email || echo hmm@localhost)"
	git_l config core.autocrlf false
	git_l config gc.auto 0
	run_logged "$LOGS/base-add.log" "git add of the base tree" git -C "$LINUX" add -A -f
	git_l commit -q -m "Linux $(make -s -C "$LINUX" kernelversion) (Debian linux-source-6.12 $ver)"
	git_l tag base
	base_id >"$LINUX/.git/hmm-base"
}

apply_patch() {
	local p=$1 tmp

	[ -f "$p" ] || die "patches/series names $(basename "$p"), which does not exist"
	if git_l am -q --keep-cr "$p" >/dev/null 2>&1; then
		return
	fi
	git_l am --abort >/dev/null 2>&1 || true
	warn "$(basename "$p") needs fuzz on this base; applying with patch(1)"
	tmp=$(mktemp -d)
	git mailinfo "$tmp/msg" "$tmp/diff" <"$p" >"$tmp/info"
	if ! (cd "$LINUX" && patch -p1 -F3 -s --no-backup-if-mismatch <"$tmp/diff"); then
		die "patch $(basename "$p") does not apply to $(git_l log -1 --format=%s base); rejects: $(cd "$LINUX" && git status --porcelain | grep '\.rej$' | xargs)"
	fi
	git_l add -A
	{
		sed -n 's/^Subject: //p' "$tmp/info"
		echo
		cat "$tmp/msg"
	} | git_l commit -q -F - \
		--author="$(sed -n 's/^Author: //p' "$tmp/info") <$(sed -n 's/^Email: //p' "$tmp/info")>"
	rm -rf "$tmp"
}

apply_owned() {
	local m=$1 f files

	[ -f "$m" ] || die "patches/series names $(basename "$m"), which does not exist"
	files=$(sed -n '1s/^Files:[[:space:]]*//p' "$m")
	[ -n "$files" ] || die "$(basename "$m"): first line must be 'Files: path ...'"
	for f in $files; do
		[ -f "$REPO/$f" ] || die "$(basename "$m") names $f, which is not in the repo"
		mkdir -p "$LINUX/$(dirname "$f")"
		cp "$REPO/$f" "$LINUX/$f"
		git_l add -f "$f"
		echo "$f" >>"$LINUX/.git/hmm-owned"
	done
	tail -n +3 "$m" | git_l commit -q --allow-empty -F -
}

check_all_owned_listed() {
	local f unlisted=""

	for f in $(owned_files); do
		grep -qxF "$f" "$LINUX/.git/hmm-owned" || unlisted="$unlisted $f"
	done
	[ -z "$unlisted" ] ||
		die "files of ours not named by any .msg entry of patches/series:$unlisted"
}

apply_series() {
	local e n=0

	step "applying patches/series"
	git_l reset -q --hard base
	git_l clean -q -fdx
	: >"$LINUX/.git/hmm-owned"
	for e in $(series_entries); do
		case "$e" in
		*.patch) apply_patch "$REPO/patches/$e" ;;
		*.msg) apply_owned "$REPO/patches/$e" ;;
		*) die "patches/series: '$e' is neither a .patch nor a .msg" ;;
		esac
		n=$((n + 1))
		info "$(git_l log -1 --format=%s)"
	done
	check_all_owned_listed
	info "$n commits on top of base"
}

if [ ! -d "$LINUX/.git" ] || [ "$(cat "$LINUX/.git/hmm-base" 2>/dev/null)" != "$(base_id)" ]; then
	make_base
fi
id=$(series_id)
if [ "$(cat "$LINUX/.git/hmm-series" 2>/dev/null)" != "$id" ]; then
	apply_series
	echo "$id" >"$LINUX/.git/hmm-series"
else
	step "patched tree up to date ($(git_l rev-list --count base..HEAD) commits on base)"
fi
