#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turn the guest runs of make test into one verdict.

For each guest run (normal, debug, swiotlb) it reads the kernel console
(KUnit's KTAP and any kernel report) and the test stream of ttyS1 (one
TAP document per suite, between the markers harness/guest/init prints),
parses every document with the kernel's own parser
(tools/testing/kunit/kunit_parser.py, run in a child process under a time
and memory limit) and checks the result against harness/manifest: every
suite listed for the run must be there with at least its number of
cases, exit 0, print no TAP error and skip nothing the manifest does not
allow. It ends with one line "N passed, N failed, N skipped" and exits 1
on any failure, kernel report, missing suite or unfinished guest.

A run started with a filter (hmmsuites=, hmmtestargs=, kunit.filter_glob=
in HMM_APPEND) is checked with --filtered: the manifest's suites and
counts are not required, but a suite or KUnit run with no case still
fails, so a filter that matches nothing cannot pass.
"""

import argparse
import fnmatch
import json
import os
import re
import resource
import subprocess
import sys

# What the kernel prints when something is wrong.  Most reports come with
# "BUG:", "WARNING:" or a stack trace; the mm and RCU lines below come
# without one, so they are matched by their text.
SPLAT = re.compile(
    r'BUG:|WARNING:|Oops|KASAN:|UBSAN:|KFENCE:|kernel BUG|Kernel panic|'
    r'general protection fault|possible circular locking|'
    r'possible recursive locking|inconsistent lock state|'
    r'INFO: task .* blocked for more than|refcount_t:|'
    r'list_(add|del) corruption|Call Trace:|'
    r'rcu: INFO: .*detected stall|soft lockup|hard LOCKUP|'
    r'Bad swap file entry|Unused swap offset entry|Bad page|'
    r'bad (pgd|p4d|pud|pmd|pte) |'
    r'kmemleak: .*new suspected memory leak|unreferenced object 0x')
BEGIN = re.compile(r'^### hmm-suite-begin (\S+)')
END = re.compile(r'^### hmm-suite-end (\S+) rc=(\d+)')
LEAKS_BEGIN = '### hmm-kmemleak-begin'
LEAKS_END = re.compile(r'^### hmm-kmemleak-end rc=(\d+)')

# The parser may take this long and this much memory for one document.
PARSE_SECONDS = 120
PARSE_BYTES = 2 << 30

KTAP_VERSION = re.compile(r'^(K?TAP) version (\d+)$')
# On the console, KUnit's lines interleave with the kernel's own (a late
# "clocksource: Switched to tsc" between a KTAP header and its "# Subtest"
# breaks the parser): keep only lines that can be KTAP.
KTAP_LINE = re.compile(r'^(\s+\S|K?TAP version |1\.\.|ok |not ok |#)')
PLAN = re.compile(r'^1\.\.(\d+)')
RESULT = re.compile(r'^(ok|not ok) (\d+)\b')


class Manifest:
    """harness/manifest: which suites each run must show, and what may skip.

    Lines:  suite RUN NAME MIN_CASES
            skip  RUN SUITE CASE_GLOB REASON...
            require RUN kmemleak
    """

    def __init__(self, path):
        self.suites = {}
        self.skips = []
        self.require = set()
        if not os.path.exists(path):
            raise SystemExit(f'{path} is missing: it says what each run must show')
        with open(path, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                words = line.split('#', 1)[0].split()
                if not words:
                    continue
                kind, rest = words[0], words[1:]
                if kind == 'suite' and len(rest) == 3:
                    self.suites.setdefault(rest[0], {})[rest[1]] = int(rest[2])
                elif kind == 'skip' and len(rest) >= 4:
                    self.skips.append((rest[0], rest[1], rest[2],
                                       ' '.join(rest[3:])))
                elif kind == 'require' and len(rest) == 2:
                    self.require.add((rest[0], rest[1]))
                else:
                    raise SystemExit(f'{path}:{n}: cannot read "{line.strip()}"')

    def skip_reason(self, run, suite, case):
        for r, s, glob, reason in self.skips:
            if r == run and s == suite and fnmatch.fnmatchcase(case, glob):
                return reason
        return None


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.problems = []

    def fail(self, message):
        self.failed += 1
        self.problems.append(message)


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path, 'rb') as f:
        return f.read().decode('utf-8', 'replace').splitlines()


def structure_errors(lines):
    """What the 6.12 parser gets wrong, checked on the top-level lines.

    It loops without end on a plan that follows the results, drops results
    past the plan and ignores a second document, so those are refused
    before it runs.
    """
    errors, plan, results, docs = [], None, 0, 0
    for line in lines:
        if KTAP_VERSION.match(line):
            docs += 1
            if docs == 2:
                errors.append('a second TAP document in one suite')
            continue
        m = PLAN.match(line)
        if m:
            if plan is not None:
                errors.append('a second test plan')
            elif results:
                errors.append('the test plan follows the results')
            plan = int(m.group(1))
            continue
        m = RESULT.match(line)
        if m:
            results += 1
            if plan is not None and int(m.group(2)) > plan:
                errors.append(f'result {m.group(2)} is past the plan 1..{plan}')
    if docs and plan is None:
        errors.append('no test plan')
    return sorted(set(errors))


def leaves(test, path=''):
    """(name, status) of every test case under a parsed test."""
    if not test.subtests:
        yield path, test.status.name
        return
    for sub in test.subtests:
        yield from leaves(sub, f'{path}/{sub.name}' if path else sub.name)


def parse_worker(kunit_dir, console):
    """Child process: parse stdin, print the parser's output and a result."""
    sys.path.insert(0, kunit_dir)
    import kunit_parser  # pylint: disable=import-outside-toplevel

    extracted = list(kunit_parser.extract_tap_lines(sys.stdin.read().splitlines()))
    if console:
        extracted = [line for line in extracted if KTAP_LINE.match(line)]
    result = {'structure': structure_errors(extracted)}
    if not result['structure']:
        test = kunit_parser.parse_run_tests(extracted)
        result.update(
            parsed=test.status != kunit_parser.TestStatus.FAILURE_TO_PARSE_TESTS,
            errors=test.counts.errors,
            cases=list(leaves(test)) if test.subtests else [],
            groups={sub.name: sub.counts.total() for sub in test.subtests})
    print('@@result ' + json.dumps(result))


def limit_child():
    resource.setrlimit(resource.RLIMIT_AS, (PARSE_BYTES, PARSE_BYTES))


def parse_doc(kunit_dir, name, lines, console):
    """Parse one document in a child process."""
    print(f'--- {name}')
    worker = [sys.executable, os.path.abspath(__file__), '--parse-worker', kunit_dir]
    try:
        child = subprocess.run(
            worker + (['--console'] if console else []),
            input='\n'.join(lines) + '\n', capture_output=True, text=True,
            timeout=PARSE_SECONDS, preexec_fn=limit_child, check=False)
    except subprocess.TimeoutExpired:
        return {'fatal': f'the TAP parser did not finish in {PARSE_SECONDS} s'}
    out = child.stdout.splitlines()
    print('\n'.join(line for line in out if not line.startswith('@@result ')))
    res = next((json.loads(line[9:]) for line in out if line.startswith('@@result ')), None)
    if res is None:
        tail = (child.stderr.strip().splitlines() or ['no output'])[-1]
        return {'fatal': f'the TAP parser failed (exit {child.returncode}: {tail})'}
    return res


class RunCheck:
    """Checks of one guest run against the manifest."""

    def __init__(self, args, manifest, tally, run, filtered):
        self.kunit_dir = args.kunit_parser
        self.manifest = manifest
        self.tally = tally
        self.run = run
        self.filtered = filtered
        self.seen = {}

    def suite(self, suite, lines, rc):
        name = f'{self.run}/{suite}'
        res = parse_doc(self.kunit_dir, name, lines, suite == 'kunit')
        if 'fatal' in res:
            self.tally.fail(f'{name}: {res["fatal"]}')
            return
        for err in res['structure']:
            self.tally.fail(f'{name}: malformed TAP: {err}')
        if res['structure']:
            return
        if not res['parsed']:
            self.tally.fail(f'{name}: no parsable TAP output')
            return
        if res['errors']:
            self.tally.fail(f'{name}: {res["errors"]} TAP error(s) (above)')
        if rc is not None and rc != 0:
            self.tally.fail(f'{name}: exited with status {rc}')
        self.count(suite, res)

    def count(self, suite, res):
        name = f'{self.run}/{suite}'
        passed = failed = skipped = 0
        for case, status in res['cases']:
            if status == 'SUCCESS':
                passed += 1
            elif status == 'SKIPPED':
                skipped += 1
                group = f'{suite}/{case.split("/")[0]}' if suite == 'kunit' else suite
                if not self.manifest.skip_reason(self.run, group, case):
                    self.tally.fail(f'{name}: {case} skipped, and harness/manifest '
                                    'does not allow it')
            else:
                failed += 1
        self.tally.passed += passed
        self.tally.failed += failed
        self.tally.skipped += skipped
        print(f'    {name}: {passed} cases passed, {failed} failed, {skipped} skipped')
        if not res['cases']:
            self.tally.fail(f'{name}: no test case ran')
        if suite == 'kunit':
            for group, total in res['groups'].items():
                self.seen[f'kunit/{group}'] = total
        else:
            self.seen[suite] = len(res['cases'])

    def against_manifest(self):
        if self.filtered:
            print(f'    {self.run}: filtered run, suites and counts of harness/manifest '
                  'not required')
            return
        for suite, floor in self.manifest.suites.get(self.run, {}).items():
            got = self.seen.get(suite)
            if got is None:
                self.tally.fail(f'{self.run}/{suite}: missing (harness/manifest lists it)')
            elif got < floor:
                self.tally.fail(f'{self.run}/{suite}: {got} cases, harness/manifest '
                                f'expects at least {floor}')
            elif got > floor:
                print(f'    note: {self.run}/{suite} ran {got} cases, the manifest '
                      f'floor is {floor}: raise it')


def check_splats(name, console, tally):
    hits = [i for i, line in enumerate(console) if SPLAT.search(line)]
    if not hits:
        return
    tally.fail(f'{name}: kernel console has {len(hits)} report line(s)')
    print('--- kernel reports on the console (each one fails the run):')
    for i in hits[:5]:
        for line in console[max(0, i - 2):i + 12]:
            print('    | ' + line)
        print('    |')


def check_leaks(name, tap, tally):
    """The kmemleak scan guest/init runs before power-off."""
    try:
        start = tap.index(LEAKS_BEGIN)
    except ValueError:
        tally.fail(f'{name}: no kmemleak scan (guest/init runs one on kernels with '
                   'kmemleak)')
        return
    body, rc = [], None
    for line in tap[start + 1:]:
        m = LEAKS_END.match(line)
        if m:
            rc = int(m.group(1))
            break
        body.append(line)
    if rc != 0:
        tally.fail(f'{name}: the kmemleak scan failed (rc={rc}; kmemleak disabled?)')
    leaks = [line for line in body if 'unreferenced object' in line]
    if leaks:
        tally.fail(f'{name}: kmemleak reports {len(leaks)} leaked object(s)')
        print('--- kmemleak:')
        for line in body[:40]:
            print('    | ' + line)


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


def report_run(args, manifest, tally, run, paths, kunit):
    """Add one guest run to the tally."""
    print(f'=== {run} run')
    console = read_lines(paths[0])
    tap = read_lines(paths[1])
    before = (tally.passed, tally.failed, tally.skipped)
    check = RunCheck(args, manifest, tally, run, args.filtered)

    if kunit:
        # KUnit runs before init; what follows is not KTAP.
        end = next((i for i, line in enumerate(console)
                    if 'Run /init as init process' in line), len(console))
        check.suite('kunit', console[:end], None)
    for suite, body, rc in split_suites(tap):
        check.suite(suite, body, rc)
        if rc is None:
            tally.fail(f'{run}/{suite}: the suite never finished (guest crash?)')
    if not any(BEGIN.match(line) for line in tap):
        tally.fail(f'{run}: no test suite ran in the guest')
    if not any(line.startswith('### hmm-guest-done') for line in tap):
        tally.fail(f'{run}: the guest did not finish (hang, panic or timeout)')
        print('--- console tail:')
        for line in console[-40:]:
            print('    | ' + line)
    check.against_manifest()
    if args.counts:
        for suite, got in sorted(check.seen.items()):
            print(f'suite {run} {suite} {got}')
    if (run, 'kmemleak') in manifest.require:
        check_leaks(run, tap, tally)
    check_splats(run, console, tally)
    print(f'    {run} run: {tally.passed - before[0]} cases passed, '
          f'{tally.failed - before[1]} failed, '
          f'{tally.skipped - before[2]} skipped')


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--kunit-parser',
                    help='tools/testing/kunit of the tree under test')
    ap.add_argument('--manifest',
                    default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         'manifest'),
                    help='suites and case counts each run must show')
    ap.add_argument('--filtered', action='store_true',
                    help='a filtered run: the manifest\'s suites are not required')
    ap.add_argument('--run', nargs=4, action='append', default=[],
                    metavar=('NAME', 'CONSOLE', 'TAP', 'KUNIT'),
                    help='one guest run; KUNIT is 1 if KUnit suites ran')
    ap.add_argument('--counts', action='store_true',
                    help='also print what each run showed as manifest lines')
    ap.add_argument('--splats', metavar='CONSOLE',
                    help='only check one console for kernel reports')
    ap.add_argument('--parse-worker', metavar='KUNIT_DIR', help=argparse.SUPPRESS)
    ap.add_argument('--console', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.parse_worker:
        parse_worker(args.parse_worker, args.console)
        return 0
    if args.splats:
        tally = Tally()
        check_splats('demo', read_lines(args.splats), tally)
        return 1 if tally.failed else 0

    manifest = Manifest(args.manifest)
    tally = Tally()
    if not args.run:
        tally.fail('no guest run to report')
    for run, console, tap, kunit in args.run:
        report_run(args, manifest, tally, run, (console, tap), kunit == '1')
    for p in tally.problems:
        print(f'problem: {p}')
    print(f'{tally.passed} passed, {tally.failed} failed, '
          f'{tally.skipped} skipped')
    return 1 if tally.failed else 0


if __name__ == '__main__':
    sys.exit(main())
