#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turn one guest run into a verdict.

Reads the kernel console (KUnit's KTAP and any kernel splat) and the test
stream of ttyS1 (one TAP document per suite, between the markers that
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
        print(f'    {name}: {counts.passed} passed, '
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


def check_splats(console, tally):
    hits = [i for i, line in enumerate(console) if SPLAT.search(line)]
    if not hits:
        return
    tally.fail(f'kernel console has {len(hits)} splat line(s)')
    print('--- kernel splats on the console (each one fails the run):')
    for i in hits[:5]:
        for line in console[max(0, i - 2):i + 12]:
            print('    | ' + line)
        print('    |')


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--console', required=True)
    ap.add_argument('--tap', required=True)
    ap.add_argument('--kunit', required=True,
                    help='tools/testing/kunit of the tree under test')
    ap.add_argument('--no-kunit', action='store_true',
                    help='the kernel has no KUnit suite of ours')
    args = ap.parse_args()

    sys.path.insert(0, args.kunit)
    import kunit_parser  # pylint: disable=import-outside-toplevel

    console = read_lines(args.console)
    tap = read_lines(args.tap)
    tally = Tally()

    if not args.no_kunit:
        # KUnit runs before init; what follows is not KTAP.
        end = next((i for i, line in enumerate(console)
                    if 'Run /init as init process' in line), len(console))
        parse_tap(kunit_parser, 'kunit', console[:end], tally)
    for name, body, rc in split_suites(tap):
        parse_tap(kunit_parser, name, body, tally)
        if rc is None:
            tally.fail(f'{name}: the suite never finished (guest crash?)')
    if not any(BEGIN.match(line) for line in tap):
        tally.fail('no test suite ran in the guest')
    if not any(line.startswith('### hmm-guest-done') for line in tap):
        tally.fail('the guest did not finish (hang, panic or timeout)')
        print('--- console tail:')
        for line in console[-40:]:
            print('    | ' + line)
    check_splats(console, tally)

    for p in tally.problems:
        print(f'problem: {p}')
    print(f'{tally.passed} passed, {tally.failed} failed, '
          f'{tally.skipped} skipped')
    return 1 if tally.failed else 0


if __name__ == '__main__':
    sys.exit(main())
