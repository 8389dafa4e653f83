#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Boot the built kernel in QEMU (TCG: nested KVM does not work on these
# machines) with a hard timeout.
#
#   qemu.sh test   console -> $LOGS/console.log, tests -> $LOGS/tap.log
#   qemu.sh demo   console -> $LOGS/console-demo.log, demo output live
#   qemu.sh shell  console and a shell on this terminal
#
# 512 MiB at 2 GiB are reserved with memmap= and handed to the dummy
# driver as its two device-coherent ranges; one 1 GiB hugetlb page is
# reserved at boot (a PUD mapping for the snapshot test): with 5 GiB,
# 2 GiB sit above 4 GiB and one aligned GiB of them stays free for it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mode=${1:-test}
limit=${QEMU_TIMEOUT:-1500}
kernel=$BUILD/arch/x86/boot/bzImage
[ -f "$kernel" ] || die "no kernel at $kernel: run make kernel first"
[ -f "$OUT/initrd.gz" ] || die "no initramfs at $OUT/initrd.gz"

# no_timer_check: under TCG on a loaded host the boot-time IO-APIC timer
# check can miss its ticks and panic ("IO-APIC + timer doesn't work").
append="console=ttyS0 panic=-1 oops=panic loglevel=7 no_timer_check hmmharness=$mode hmmflavor=$FLAVOR"
append="$append memmap=512M\$0x80000000"
append="$append test_hmm.spm_addr_dev0=0x80000000 test_hmm.spm_addr_dev1=0x90000000"
append="$append transparent_hugepage=madvise hugepagesz=1G hugepages=1 ${HMM_APPEND:-}"

qemu=(qemu-system-x86_64 -machine pc -accel tcg,thread=multi -cpu max
	-smp 2 -m 5G -kernel "$kernel" -initrd "$OUT/initrd.gz"
	-append "$append" -display none -no-reboot)

# Count TAP results in the test stream while the guest runs, so a long
# run shows where it is.
watch_progress() {
	local pid=$1 tap=$2 t=0 suite ok nok

	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		t=$((t + 1))
		[ $((t % 15)) -eq 0 ] || continue
		suite=$(grep -a '^### hmm-suite-begin' "$tap" 2>/dev/null | tail -n 1 | cut -d' ' -f3) || true
		ok=$(grep -acE '^ *ok ' "$tap" 2>/dev/null) || true
		nok=$(grep -acE '^ *not ok ' "$tap" 2>/dev/null) || true
		printf '    ... guest running %ds: %s, %s ok, %s not ok so far\n' \
			"$t" "${suite:-booting}" "$ok" "$nok"
	done
}

mkdir -p "$LOGS"
case "$mode" in
test)
	console=$LOGS/console.log tap=$LOGS/tap.log
	rm -f "$console" "$tap"
	step "booting the $FLAVOR kernel under TCG (timeout ${limit}s; console in $console)"
	timeout -k 10 "$limit" "${qemu[@]}" -serial "file:$console" \
		-serial "file:$tap" </dev/null >"$LOGS/qemu.log" 2>&1 &
	pid=$!
	watch_progress "$pid" "$tap"
	wait "$pid" && rc=0 || rc=$?
	[ "$rc" -ne 124 ] || warn "guest killed after ${limit}s"
	exit 0
	;;
demo)
	console=$LOGS/console-demo.log
	step "booting the guest under TCG for the demo (console in $console)"
	timeout -k 10 "$limit" "${qemu[@]}" -serial "file:$console" \
		-serial stdio </dev/null | tee "$LOGS/demo.log" | grep -v '^### '
	grep -q '^### hmm-guest-done' "$LOGS/demo.log" || {
		tail -n 30 "$console" >&2
		die "the guest did not finish the demo (console tail above)"
	}
	python3 "$HARNESS/report.py" --splats "$console" ||
		die "the kernel reported a problem during the demo (above)"
	;;
shell)
	step "booting the guest with a shell (Ctrl-A X quits QEMU)"
	exec "${qemu[@]}" -serial mon:stdio
	;;
*)
	die "unknown mode $mode (test, demo or shell)"
	;;
esac
