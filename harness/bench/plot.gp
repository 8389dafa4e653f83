# SPDX-License-Identifier: GPL-2.0
# Size sweep of make bench's main cases, ours against pristine upstream
# 6.12 (and memcpy as the copy limit where data move). Run in the results
# directory: reads sweep-CASE.dat (MiB ours_ms upstream_ms), written by
# harness/bench/table.py; writes sweep.png.
set terminal pngcairo size 1500,900 font ",10"
set output "sweep.png"
set logscale xy
set xlabel "buffer size (MiB)"
set ylabel "time (ms, median)"
set key top left
set grid
set style data linespoints
set multiplot layout 2,3 title "HMM: ours vs pristine upstream 6.12 (QEMU TCG guest, lower is better)"

panel(c) = sprintf("sweep-%s.dat", c)
set title "hmm\\_range\\_fault snapshot, 4K pages"
plot panel("snapshot-4k") u 1:2 t "ours" lw 2, "" u 1:3 t "upstream" lw 2
set title "hmm\\_range\\_fault snapshot, THP"
plot panel("snapshot-thp") u 1:2 t "ours" lw 2, "" u 1:3 t "upstream" lw 2
set title "device write fault-in of an unpopulated range"
plot panel("fault-write") u 1:2 t "ours" lw 2, "" u 1:3 t "upstream" lw 2, \
     panel("memcpy") u 1:2 t "memcpy" dt 2 lc "gray"
set title "device read through the mirror"
plot panel("dev-read") u 1:2 t "ours" lw 2, "" u 1:3 t "upstream" lw 2, \
     panel("memcpy") u 1:2 t "memcpy" dt 2 lc "gray"
set title "migrate to device, 4K-backed"
plot panel("migrate-dev-4k") u 1:2 t "ours" lw 2, "" u 1:3 t "upstream" lw 2, \
     panel("memcpy") u 1:2 t "memcpy" dt 2 lc "gray"
set title "migrate to device, THP-backed"
plot panel("migrate-dev-thp") u 1:2 t "ours" lw 2, "" u 1:3 t "upstream" lw 2, \
     panel("memcpy") u 1:2 t "memcpy" dt 2 lc "gray"
unset multiplot
