#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turn the rounds of make bench into one table, a Markdown file and plot data.

Reads raw.txt: every line of hmm-bench's output, prefixed with the kernel
(ours or upstream) and the round. For every case and size, all timed
repetitions of all rounds of one kernel are pooled: the figure is their
median, the spread their interquartile range over the median. The kernel
time is the median, over rounds, of the profiled repetition's time inside
the case's HMM functions (ftrace function profiler).

speedup = upstream time / our time: above 1.0x ours is faster. The
targets are the issue's; each row says whether this run met it.
"""

import argparse
import datetime
import os
import statistics
import sys

KERNELS = ('ours', 'upstream')

# case -> (target speedup, also "within 2x of memcpy", judged on kernel
# time), from the issue. What a mirror adds to munmap/mprotect is the time
# the kernel spends in the mmu notifiers of the *-mirror case: without a
# notifier that call does not happen at all.
TARGETS = {
    'snapshot-4k': (1.0, False, False),
    'snapshot-thp': (1.0, False, False),
    'fault-read': (1.5, False, False),
    'fault-write': (1.5, False, False),
    'migrate-dev-4k': (1.0, True, False),
    'migrate-dev-thp': (3.0, True, False),
    'munmap-mirror': (1.0, False, True),
    'mprotect-mirror': (1.0, False, True),
}

ORDER = ['memcpy', 'snapshot-4k', 'snapshot-thp', 'fault-read', 'fault-write',
         'dev-read', 'dev-write', 'migrate-dev-4k', 'migrate-sys',
         'migrate-dev-shmem', 'migrate-sys-shmem', 'migrate-dev-thp', 'cpu-fault-back', 'munmap-plain', 'munmap-mirror',
         'mprotect-plain', 'mprotect-mirror', 'exclusive-grant',
         'exclusive-revoke']

# Panels of the size-sweep plot.
PLOTTED = ['snapshot-4k', 'snapshot-thp', 'fault-write', 'dev-read',
           'migrate-dev-4k', 'migrate-dev-thp']


def quartiles(xs):
    xs = sorted(xs)
    if len(xs) < 4:
        return xs[0], xs[-1]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


class Figure:
    """Pooled samples of one case, size and kernel."""

    def __init__(self):
        self.samples = []
        self.kernel_ns = []

    def median(self):
        return statistics.median(self.samples) if self.samples else None

    def spread(self):
        if len(self.samples) < 2:
            return None
        lo, hi = quartiles(self.samples)
        return (hi - lo) / self.median()

    def kmedian(self):
        ks = [k for k in self.kernel_ns if k >= 0]
        return statistics.median(ks) if ks else None


def load(path):
    figs = {}
    info = {k: [] for k in KERNELS}
    redo = {k: [] for k in KERNELS}
    errors = []
    with open(path) as f:
        for line in f:
            w = line.split()
            if len(w) < 3 or w[0] not in KERNELS:
                continue
            kernel, tag = w[0], w[2]
            if tag == 'SAMPLE':
                key = (w[3], int(w[4]))
                figs.setdefault(key, {k: Figure() for k in KERNELS})
                figs[key][kernel].samples.append(int(w[5]))
            elif tag == 'BENCH':
                key = (w[3], int(w[4]))
                figs.setdefault(key, {k: Figure() for k in KERNELS})
                figs[key][kernel].kernel_ns.append(int(w[9]))
            elif tag == 'INFO':
                msg = ' '.join(w[3:])
                if msg.startswith('case '):
                    continue
                if msg not in info[kernel]:
                    info[kernel].append(msg)
            elif tag == 'REDO':
                redo[kernel].append(f'{w[3]} {int(w[4]) >> 20} MiB '
                                    f'({" ".join(w[5:])})')
            elif tag == 'BENCH-ERROR':
                errors.append(line.strip())
    return figs, info, redo, errors


def fmt_ms(ns):
    if ns is None:
        return '-'
    ms = ns / 1e6
    return f'{ms:.3f}' if ms < 10 else f'{ms:.1f}'


def fmt_pct(x):
    return '-' if x is None else f'{100 * x:.0f}%'


def fmt_x(x):
    return '-' if x is None else f'{x:.2f}x'


def ratio(up, ours):
    if up is None or ours is None or ours <= 0:
        return None
    return up / ours


def build_rows(figs):
    rows = []
    sizes = sorted({s for _, s in figs})
    for case in ORDER:
        for size in sizes:
            if (case, size) in figs:
                row = case_row(figs, case, size)
            else:
                row = None
            if row:
                rows.append(row)
    return rows


def case_row(figs, case, size):
    f = figs[(case, size)]
    o, u = f['ours'].median(), f['upstream'].median()
    row = {
        'case': case, 'size': size, 'ours': o, 'upstream': u,
        'ours_spread': f['ours'].spread(), 'up_spread': f['upstream'].spread(),
        'speedup': ratio(u, o),
        'ours_k': f['ours'].kmedian(), 'up_k': f['upstream'].kmedian(),
        'target': '', 'met': '',
    }
    row['kspeedup'] = ratio(row['up_k'], row['ours_k'])
    if case in TARGETS:
        want, vs_memcpy, on_kernel = TARGETS[case]
        got = row['kspeedup'] if on_kernel else row['speedup']
        if got is None:
            return row
        row['target'] = f'>= {want:.1f}x' + (' kernel' if on_kernel else '')
        met = got >= want
        mc = figs.get(('memcpy', size))
        if vs_memcpy and mc and mc['ours'].median():
            limit = o / mc['ours'].median()
            row['target'] += ', <= 2x memcpy'
            row['vs_memcpy'] = limit
            met = met and limit <= 2.0
            row['met'] = ('met' if met else 'MISSED') + \
                f' ({limit:.2f}x memcpy)'
        else:
            row['met'] = 'met' if met else 'MISSED'
    return row


def with_spread(ns, spread):
    if spread is None:
        return fmt_ms(ns)
    return f'{fmt_ms(ns)} ±{fmt_pct(spread)}'


COLUMNS = [
    ('case', lambda r: r['case']),
    ('MiB', lambda r: str(r['size'] >> 20)),
    ('ours ms', lambda r: with_spread(r['ours'], r['ours_spread'])),
    ('upstream ms', lambda r: with_spread(r['upstream'], r['up_spread'])),
    ('speedup', lambda r: fmt_x(r['speedup'])),
    ('kernel ms ours', lambda r: fmt_ms(r['ours_k'])),
    ('upstream', lambda r: fmt_ms(r['up_k'])),
    ('speedup', lambda r: fmt_x(r['kspeedup'])),
    ('target', lambda r: r['target']),
    ('met?', lambda r: r['met']),
]


def text_table(rows):
    cells = [[c[0] for c in COLUMNS]] + \
        [[c[1](r) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    out = []
    for n, row in enumerate(cells):
        out.append('  '.join(v.ljust(widths[i]) if i == 0 else
                             v.rjust(widths[i]) for i, v in enumerate(row)))
        if n == 0:
            out.append('  '.join('-' * w for w in widths))
    return '\n'.join(out)


def md_table(rows):
    out = ['| ' + ' | '.join(c[0] for c in COLUMNS) + ' |',
           '|' + '|'.join(' --- ' if i == 0 else ' ---: '
                          for i in range(len(COLUMNS))) + '|']
    for r in rows:
        out.append('| ' + ' | '.join(c[1](r) for c in COLUMNS) + ' |')
    return '\n'.join(out)


def summary(rows):
    """One line per target: met at how many of its sizes."""
    lines = []
    seen = []
    for r in rows:
        if r['target'] and r['case'] not in seen:
            seen.append(r['case'])
    ctl = [r['speedup'] for r in rows
           if r['case'] == 'memcpy' and r['speedup'] is not None]
    if ctl:
        lines.append('control: memcpy runs the same code on both kernels, '
                     f'its speedup ({min(ctl):.2f}x .. {max(ctl):.2f}x) '
                     'shows how much host noise this run had')
    for case in seen:
        rs = [r for r in rows if r['case'] == case]
        met = [r for r in rs if r['met'].startswith('met')]
        lines.append(f'{case}: target {rs[0]["target"]}: met at '
                     f'{len(met)} of {len(rs)} sizes')
    return lines


def write_plot_data(figs, outdir):
    for case in PLOTTED + ['memcpy']:
        path = os.path.join(outdir, f'sweep-{case}.dat')
        with open(path, 'w') as f:
            f.write('# MiB ours_ms upstream_ms\n')
            for (c, size), fig in sorted(figs.items()):
                if c != case:
                    continue
                o, u = fig['ours'].median(), fig['upstream'].median()
                f.write(f'{size >> 20} {o / 1e6 if o else "NaN"} '
                        f'{u / 1e6 if u else "NaN"}\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--raw', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--machine', default='unknown machine')
    ap.add_argument('--rounds', type=int, default=0)
    ap.add_argument('--reps', type=int, default=0)
    ap.add_argument('--note', default='')
    args = ap.parse_args()

    figs, info, redo, errors = load(args.raw)
    if not figs:
        sys.exit('no benchmark figures in ' + args.raw)
    rows = build_rows(figs)
    when = datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M UTC')
    head = [f'make bench, {when}, host: {args.machine}.',
            f'{args.rounds} boots of each kernel, interleaved, '
            f'{args.reps} timed repetitions of every case per boot; '
            'times are medians of all repetitions, ± the interquartile '
            'range over the median.',
            'speedup = upstream time / our time (above 1.0x ours is '
            'faster). Kernel ms: time inside the HMM functions of the '
            'case (ftrace function profiler, one profiled repetition '
            'per boot, median over boots).']
    if args.note:
        head.append(args.note)
    for k in KERNELS:
        if info[k]:
            head.append(f'{k}: ' + '; '.join(info[k]))
    summ = summary(rows)
    for k in KERNELS:
        if redo[k]:
            summ.append(f'{k}: {len(redo[k])} repetitions redone, the '
                        'driver did not migrate every page: ' +
                        '; '.join(redo[k]))

    print('\n'.join(head))
    print()
    print(text_table(rows))
    print()
    print('\n'.join(summ))
    for e in errors:
        print(e)

    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write('\n\n'.join(head) + '\n\n')
        f.write(md_table(rows) + '\n\n')
        f.write('\n'.join(f'- {s}' for s in summ) + '\n')
    write_plot_data(figs, args.out)
    print(f'\nwritten: {args.out}/results.md, {args.out}/raw.txt')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
