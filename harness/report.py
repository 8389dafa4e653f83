#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turn one guest run into a verdict.

For each guest run (one per kernel: normal and debug), reads the kernel
console (KUnit's KTAP and any kernel splat) and the test stream of ttyS1 (one TAP document per suite, between the markers that
harness/guest/init prints), parses every TAP/KTAP document with the
kernel's own parser (tools/testing/kunit/kunit_parser.py), and ends with
one line "N passed, N failed, N skipped". Exit status 1 on any failure,
any kernel splat, or a guest that did not finish.
"""

import argparse
import os
import re
import sys

SPLAT = re.compile(
    r'BUG:|WARNING:|Oops|KASAN:|UBSAN:|KFENCE:|kernel BUG|Kernel panic|'
    r'general protection fault|possible circular locking|'
    r'possible recursive locking|inconsistent lock state|'
    r'INFO: task .* blocked|refcount_t:|list_(add|del) corruption|'
    r'Call Trace:|RCU stall|soft lockup|hard LOCKUP')
BEGIN = re.compile(r'^### hmm-suite-begin (\S+)')
END = re.compile(r'^### hmm-suite-end (\S+) rc=(\d+)')


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.problems = []

    def add_counts(self, name, counts):
        self.passed += counts.passed
        self.failed += counts.failed + counts.crashed
        self.skipped += counts.skipped
        print(f'    {name}: {counts.passed} cases passed, '
              f'{counts.failed + counts.crashed} failed, '
              f'{counts.skipped} skipped')

    def fail(self, message):
        self.failed += 1
        self.problems.append(message)


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path, 'rb') as f:
        return f.read().decode('utf-8', 'replace').splitlines()


def parse_tap(kunit_parser, name, lines, tally):
    """Parse one TAP/KTAP document and add its leaf cases to the tally."""
    print(f'--- {name}')
    test = kunit_parser.parse_run_tests(lines)
    if test.status == kunit_parser.TestStatus.FAILURE_TO_PARSE_TESTS:
        tally.fail(f'{name}: no parsable TAP output')
        return
    if test.counts.errors:
        tally.problems.append(f'{name}: {test.counts.errors} TAP errors')
    tally.add_counts(name, test.counts)


def split_suites(lines):
    """Yield (name, lines, rc) for each suite; rc is None if it never ended."""
    name, body = None, []
    for line in lines:
        m = BEGIN.match(line)
        if m:
            if name:
                yield name, body, None
            name, body = m.group(1), []
            continue
        m = END.match(line)
        if m and name:
            yield name, body, int(m.group(2))
            name = None
            continue
        if name:
            body.append(line)
    if name:
        yield name, body, None


def check_splats(name, console, tally):
    hits = [i for i, line in enumerate(console) if SPLAT.search(line)]
    if not hits:
        return
    tally.fail(f'{name}: kernel console has {len(hits)} splat line(s)')
    print('--- kernel splats on the console (each one fails the run):')
    for i in hits[:5]:
        for line in console[max(0, i - 2):i + 12]:
            print('    | ' + line)
        print('    |')


def report_run(kunit_parser, name, console_path, tap_path, kunit, tally):
    """Add one guest run (one kernel) to the tally."""
    print(f'=== {name} kernel')
    console = read_lines(console_path)
    tap = read_lines(tap_path)
    before = (tally.passed, tally.failed, tally.skipped)

    if kunit:
        # KUnit runs before init; what follows is not KTAP.
        end = next((i for i, line in enumerate(console)
                    if 'Run /init as init process' in line), len(console))
        parse_tap(kunit_parser, f'{name}/kunit', console[:end], tally)
    for suite, body, rc in split_suites(tap):
        parse_tap(kunit_parser, f'{name}/{suite}', body, tally)
        if rc is None:
            tally.fail(f'{name}/{suite}: the suite never finished (guest crash?)')
    if not any(BEGIN.match(line) for line in tap):
        tally.fail(f'{name}: no test suite ran in the guest')
    if not any(line.startswith('### hmm-guest-done') for line in tap):
        tally.fail(f'{name}: the guest did not finish (hang, panic or timeout)')
        print('--- console tail:')
        for line in console[-40:]:
            print('    | ' + line)
    check_splats(name, console, tally)
    print(f'    {name} kernel: {tally.passed - before[0]} cases passed, '
          f'{tally.failed - before[1]} failed, '
          f'{tally.skipped - before[2]} skipped')


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--kunit-parser',
                    help='tools/testing/kunit of the tree under test')
    ap.add_argument('--run', nargs=4, action='append', default=[],
                    metavar=('NAME', 'CONSOLE', 'TAP', 'KUNIT'),
                    help='one guest run; KUNIT is 1 if KUnit suites ran')
    ap.add_argument('--splats', metavar='CONSOLE',
                    help='only check one console for kernel splats')
    args = ap.parse_args()

    if args.splats:
        tally = Tally()
        check_splats('demo', read_lines(args.splats), tally)
        return 1 if tally.failed else 0

    sys.path.insert(0, args.kunit_parser)
    import kunit_parser  # pylint: disable=import-outside-toplevel

    tally = Tally()
    for name, console, tap, kunit in args.run:
        report_run(kunit_parser, name, console, tap, kunit == '1', tally)
    for p in tally.problems:
        print(f'problem: {p}')
    print(f'{tally.passed} passed, {tally.failed} failed, '
          f'{tally.skipped} skipped')
    return 1 if tally.failed else 0


if __name__ == '__main__':
    sys.exit(main())
