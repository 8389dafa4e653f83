# SPDX-License-Identifier: GPL-2.0
# Shared helpers of the harness scripts: messages, timing, paths.
# Sourced, never executed.

HARNESS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HARNESS/.." && pwd)
OUT=${OUT:-$REPO/out}
case "$OUT" in /*) ;; *) OUT=$REPO/$OUT ;; esac
LINUX=$OUT/linux
# Two kernels are built from the same tree: "normal", and "debug" with
# KASAN, lockdep and the VM debug checks (configs/debug/*.config on top).
FLAVOR=${FLAVOR:-normal}
case "$FLAVOR" in
normal | debug) ;;
*) echo "unknown kernel flavor $FLAVOR (normal or debug)" >&2; exit 1 ;;
esac

build_dir() {
	if [ "$1" = normal ]; then echo "$OUT/build"; else echo "$OUT/build-$1"; fi
}
BUILD=$(build_dir "$FLAVOR")
# HMM_RUN names a guest run of a kernel other than its plain boot (its logs
# go to logs/$HMM_RUN), e.g. "swiotlb" below in harness/hmm.
LOGS=$OUT/logs/${HMM_RUN:-$FLAVOR}
export CCACHE_DIR=${CCACHE_DIR:-/var/cache/hmm-ccache}
export CCACHE_BASEDIR=$(dirname "$OUT")
export CCACHE_NOHASHDIR=1
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-8G}
JOBS=${JOBS:-$(($(nproc) + 1))}
T0=${HMM_T0:-$(date +%s)}
export HMM_T0=$T0

if [ -t 1 ]; then
	C_B=$'\e[1m' C_R=$'\e[31m' C_G=$'\e[32m' C_Y=$'\e[33m' C_0=$'\e[0m'
else
	C_B='' C_R='' C_G='' C_Y='' C_0=''
fi

elapsed() {
	local s=$(($(date +%s) - T0))

	printf '%d:%02d' $((s / 60)) $((s % 60))
}

step() { printf '%s==> [%s] %s%s\n' "$C_B" "$(elapsed)" "$*" "$C_0"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '%swarning:%s %s\n' "$C_Y" "$C_0" "$*" >&2; }
die() {
	printf '%serror:%s %s\n' "$C_R" "$C_0" "$*" >&2
	exit 1
}

# run_logged LOG DESCRIPTION CMD...: run CMD with its output in LOG and a
# heartbeat line every 15 seconds, so a long step is never silent. On
# failure the tail of the log is shown.
run_logged() {
	local log=$1 what=$2 pid rc t=0
	shift 2

	mkdir -p "$(dirname "$log")"
	"$@" >"$log" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		t=$((t + 1))
		if [ $((t % 15)) -eq 0 ]; then
			printf '    ... %s, %ds (%s)\n' "$what" "$t" \
				"$(tail -n 1 "$log" | cut -c1-60)"
		fi
	done
	wait "$pid" && rc=0 || rc=$?
	if [ "$rc" -ne 0 ]; then
		printf '%s--- last lines of %s ---%s\n' "$C_R" "$log" "$C_0" >&2
		tail -n 25 "$log" >&2
		die "$what failed (exit $rc), full log in $log"
	fi
}

# kmake_in DIR ARGS...: make in the patched tree with O=DIR, through ccache
# (for the architecture in $ARCH and $CROSS_COMPILE, if set).
kmake_in() {
	local dir=$1

	shift
	make -C "$LINUX" O="$dir" CC="ccache ${CROSS_COMPILE:-}gcc" HOSTCC="ccache gcc" "$@"
}

# kconfig_make DIR NAME FRAGMENT...: tinyconfig plus the fragments in DIR,
# merged with the tree's merge_config.sh, then checked symbol by symbol so
# an option dropped by an unmet dependency fails here, not in a test.
kconfig_make() {
	local dir=$1 name=$2

	shift 2
	mkdir -p "$dir"
	run_logged "$LOGS/$name-tinyconfig.log" "tinyconfig" kmake_in "$dir" tinyconfig
	run_logged "$LOGS/$name-merge.log" "merge_config.sh" \
		"$LINUX/scripts/kconfig/merge_config.sh" -m -O "$dir" "$dir/.config" "$@"
	kconfig_sync "$dir" "$name" "$@"
}

# kconfig_sync DIR NAME FRAGMENT...: olddefconfig, then the check above.
kconfig_sync() {
	local dir=$1 name=$2 line sym bad=""

	shift 2
	run_logged "$LOGS/$name-olddef.log" "olddefconfig" kmake_in "$dir" olddefconfig
	while read -r line; do
		sym=${line%%=*}
		grep -qxF "$line" "$dir/.config" ||
			bad="$bad $line(got: $(grep -E "^$sym=|^# $sym is not set" "$dir/.config" || echo absent))"
	done < <(grep -hE '^CONFIG_[A-Z0-9_]+=' "$@")
	[ -z "$bad" ] || die "kernel config in $dir did not take:$bad"
}

# The Debian source package of the 6.12 series; any stable update of it.
base_tarball() {
	ls -1 /usr/src/linux-source-6.12.tar.xz 2>/dev/null | head -n 1
}
