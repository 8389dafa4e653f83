#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make bench: our HMM against pristine upstream 6.12, side by side.
#
# Two kernels are built from one source directory, $OUT/linux-bench (a git
# worktree of $OUT/linux): first checked out at our patchset's HEAD, built
# into $OUT/build-bench-ours, then at the tag "base" (the pristine Debian
# tree), built into $OUT/build-bench-upstream. Same absolute paths and the
# same .config (checked) mean ccache shares every object our series does
# not touch, so the second kernel costs a few files and a link.
#
# Both boot under the same QEMU as make test and run the same static
# program, harness/bench/hmm-bench.c, which only uses the ioctls both dummy
# drivers have. Boots interleave (ours, upstream, ours, ...) so host noise
# hits both; harness/bench/table.py then prints the table and writes
# $OUT/bench/{results.md,raw.txt,*.png}.
#
# BENCH_ROUNDS (default 3) boots per kernel, BENCH_REPS (default 3)
# timed repetitions of every case per boot, BENCH_MAX_MB (default 1024)
# largest buffer, BENCH_FULL=1 runs every case up to that size (by default
# the slow ones stop earlier, see hmm-bench.c), BENCH_CASES=a,b runs only
# the cases whose names start so, BENCH_KERNELS="ours" boots only ours.

# bench_build points $LINUX at the bench tree in a subshell, on purpose.
# shellcheck disable=SC2030,SC2031
set -euo pipefail
. "$(dirname "$0")/../lib.sh"

LOGS=$OUT/logs/bench
SRC=$OUT/linux-bench
RESULTS=$OUT/bench
ROUNDS=${BENCH_ROUNDS:-3}
REPS=${BENCH_REPS:-3}
MAX_MB=${BENCH_MAX_MB:-1024}
CASES=${BENCH_CASES:-}
LIMIT=${QEMU_TIMEOUT:-900}
KERNELS=${BENCH_KERNELS:-ours upstream}
FRAGMENTS="$HARNESS/configs/base.config $(echo "$HARNESS"/configs/bench/*.config)"

bench_build_dir() { echo "$OUT/build-bench-$1"; }

# bench_checkout REV: put the bench source directory at REV, creating the
# worktree when it is missing or when prepare.sh re-extracted $OUT/linux.
bench_checkout() {
	local rev=$1

	if ! git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
		rm -rf "$SRC"
		git -C "$LINUX" worktree prune
		run_logged "$LOGS/worktree.log" "checking out the bench tree" \
			git -C "$LINUX" worktree add -q --detach "$SRC" "$rev"
	fi
	git -C "$SRC" checkout -q --detach "$rev"
}

config_id() {
	# shellcheck disable=SC2086
	cat $FRAGMENTS | sha256sum | cut -d' ' -f1
}

# bench_build NAME REV: configure (when the fragments changed) and build
# one bench kernel at REV. Runs at low priority: the machine is shared.
bench_build() {
	local name=$1 rev=$2 dir

	dir=$(bench_build_dir "$name")
	bench_checkout "$rev"
	(
		# kmake_in and merge_config.sh work on $LINUX.
		LINUX=$SRC
		renice -n 10 -p "$BASHPID" >/dev/null
		if [ ! -f "$dir/.config" ] || [ "$(cat "$dir/.hmm-config" 2>/dev/null)" != "$(config_id)" ]; then
			step "configuring the $name bench kernel (tinyconfig + $(echo "$FRAGMENTS" | xargs -n1 basename | xargs))"
			# shellcheck disable=SC2086
			kconfig_make "$dir" "$name" $FRAGMENTS
			config_id >"$dir/.hmm-config"
		else
			# shellcheck disable=SC2086
			kconfig_sync "$dir" "$name" $FRAGMENTS
		fi
		step "building the $name bench kernel at $(git -C "$SRC" log -1 --format='%h %s' | cut -c1-60) (log in $LOGS/$name-kernel.log)"
		run_logged "$LOGS/$name-kernel.log" "$name kernel build" \
			kmake_in "$dir" -j"$JOBS" bzImage
	)
	cp "$dir/arch/x86/boot/bzImage" "$RESULTS/bzImage-$name"
}

# Both kernels must be configured alike, or the comparison means nothing.
# Symbols only one tree has, switched off, are comments and do not count.
check_same_config() {
	local a b

	a=$(bench_build_dir ours)/.config
	b=$(bench_build_dir upstream)/.config
	if ! diff <(grep '^CONFIG_' "$a") <(grep '^CONFIG_' "$b") >"$LOGS/config.diff"; then
		cat "$LOGS/config.diff" >&2
		die "the two bench kernels' .config differ (above): a symbol of ours is on"
	fi
	info "both kernels: $(grep -c '^CONFIG_' "$a") identical CONFIG_ settings"
}

build_kernels() {
	bench_build ours "$(git -C "$LINUX" rev-parse HEAD)"
	bench_build upstream base
	check_same_config
}

# The guest: busybox, harness/guest/init and the benchmark program, built
# statically against our uapi header (ioctl-compatible with upstream's).
build_initramfs() {
	local root=$RESULTS/initramfs

	step "building hmm-bench and the bench initramfs"
	rm -rf "$root"
	mkdir -p "$root"/{bin,dev,proc,sys,tmp,opt/hmm}
	cp /bin/busybox "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	cp "$HARNESS/guest/init" "$root/init"
	run_logged "$LOGS/cc-hmm-bench.log" "compiling hmm-bench" \
		gcc -static -O2 -g -Wall -Werror -D_GNU_SOURCE -I"$LINUX/lib" \
		-o "$root/opt/hmm/hmm-bench" "$HARNESS/bench/hmm-bench.c"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$RESULTS/initrd.gz"
}

# boot NAME ROUND: one guest run of every case; its output lands in
# $LOGS/NAME-ROUND.out (ttyS1) and $LOGS/NAME-ROUND.console (ttyS0).
# Same machine and command line as harness/qemu.sh, plus the bench knobs.
boot() {
	local name=$1 round=$2 out con append pid rc t=0 args

	out=$LOGS/$name-$round.out
	con=$LOGS/$name-$round.console
	rm -f "$out" "$con"
	args="-r,$REPS,-m,$MAX_MB"
	# The guest splits hmmbenchargs at commas: cases are joined by "+".
	[ -z "$CASES" ] || args="$args,-c,${CASES//,/+}"
	[ -z "${BENCH_FULL:-}" ] || args="$args,-f"
	append="console=ttyS0 panic=-1 oops=panic loglevel=7 hmmharness=bench hmmflavor=normal"
	append="$append memmap=512M\$0x80000000"
	append="$append test_hmm.spm_addr_dev0=0x80000000 test_hmm.spm_addr_dev1=0x90000000"
	append="$append transparent_hugepage=madvise hugepagesz=1G hugepages=1"
	append="$append hmmbenchargs=$args ${HMM_APPEND:-}"
	timeout -k 10 "$LIMIT" qemu-system-x86_64 -machine pc \
		-accel tcg,thread=multi -cpu max -smp 2 -m 5G \
		-kernel "$RESULTS/bzImage-$name" -initrd "$RESULTS/initrd.gz" \
		-append "$append" -display none -no-reboot \
		-serial "file:$con" -serial "file:$out" </dev/null >"$LOGS/qemu.log" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		t=$((t + 1))
		[ $((t % 15)) -eq 0 ] || continue
		printf '    ... [%s] %s kernel, round %d/%d: %ds, %s\n' "$(elapsed)" \
			"$name" "$round" "$ROUNDS" "$t" \
			"$(grep -a '^BENCH ' "$out" 2>/dev/null | awk 'NF >= 9' | tail -n 1 |
				awk '{ printf "last done: %s %d MiB", $2, $3 / 1048576 }')"
	done
	wait "$pid" && rc=0 || rc=$?
	[ "$rc" -ne 124 ] || { tail -n 20 "$con" >&2; die "$name guest killed after ${LIMIT}s (console tail above)"; }
	python3 "$HARNESS/report.py" --splats "$con" >"$LOGS/$name-$round.splats" ||
		{ cat "$LOGS/$name-$round.splats" >&2; die "the $name kernel reported a problem (console $con)"; }
	grep -aq '^### hmm-bench-done rc=0' "$out" || {
		tail -n 20 "$out" >&2
		die "hmm-bench failed on the $name kernel, round $round (output $out)"
	}
	info "$name round $round: $(grep -ac '^BENCH ' "$out") figures in ${t}s"
}

run_rounds() {
	local r k

	for r in $(seq 1 "$ROUNDS"); do
		for k in $KERNELS; do
			step "round $r/$ROUNDS: booting the $k kernel"
			boot "$k" "$r"
		done
	done
}

report() {
	local k r

	step "results"
	: >"$RESULTS/raw.txt"
	for r in $(seq 1 "$ROUNDS"); do
		for k in $KERNELS; do
			grep -a -E '^(BENCH|SAMPLE|INFO|REDO) ' "$LOGS/$k-$r.out" |
				sed "s/^/$k $r /" >>"$RESULTS/raw.txt"
		done
	done
	python3 "$HARNESS/bench/table.py" --raw "$RESULTS/raw.txt" --out "$RESULTS" \
		--machine "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
		--rounds "$ROUNDS" --reps "$REPS" \
		--note "ours: $(git -C "$LINUX" rev-parse --short HEAD), $(git -C "$LINUX" rev-list --count base..HEAD) commits on base; upstream: base, $(git -C "$LINUX" log -1 --format=%s base)"
	if [ -n "$CASES" ]; then
		warn "BENCH_CASES ran a subset of the cases: no plot"
	elif command -v gnuplot >/dev/null; then
		(cd "$RESULTS" && gnuplot "$HARNESS/bench/plot.gp") >"$LOGS/gnuplot.log" 2>&1 ||
			die "gnuplot failed (log in $LOGS/gnuplot.log)"
		info "plot: $RESULTS/sweep.png"
	else
		warn "gnuplot is missing: no plot (make bench installs it)"
	fi
}

mkdir -p "$LOGS" "$RESULTS"
case "${1:-all}" in
build) build_kernels ;;
run)
	build_initramfs
	run_rounds
	report
	;;
report) report ;;
all)
	build_kernels
	build_initramfs
	run_rounds
	report
	;;
*) die "usage: $0 [all|build|run|report]" ;;
esac
