#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Self-test of harness/report.py: every hole it closes must fail a run.

make test runs this before it boots a guest. Each case writes a console
log and a test stream that a guest could have produced, runs report.py on
them against a small manifest and checks the exit status and the problem
it names. The first case is a good run, which must pass; every other one
carries one defect, which must fail the run with a problem line that
names it.

    judge-selftest.py [-v] KUNIT_DIR     (-v: every case, not only wrong ones)
"""

import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

MANIFEST = """\
suite test kunit/hmm 2
suite test demo 2
suite test hmm-tests/thp-always 3
skip test hmm-tests/thp-always *.may_skip_* needs what the machine lacks
require test kmemleak
"""

KUNIT = """\
[    1.000000] KTAP version 1
[    1.000001] 1..1
[    1.000002]     KTAP version 1
[    1.000003]     # Subtest: hmm
[    1.000004]     1..2
[    1.000005]     ok 1 hmm_test_one
[    1.000006]     ok 2 hmm_test_two
[    1.000007] ok 1 hmm
[    1.100000] Run /init as init process
"""

DEMO = ['TAP version 13', '1..2', 'ok 1 - cpu write', 'ok 2 - device read']
TESTS = ['TAP version 13', '1..3', 'ok 1 hmm.open_close', 'ok 2 hmm.anon_read',
         'ok 3 hmm.migrate']
LEAKS = ['### hmm-kmemleak-begin', '### hmm-kmemleak-end rc=0']


def stream(suites, leaks=None, done=True):
    lines = ['### hmm-guest-up 6.12 thp=always']
    for name, body, rc in suites:
        lines.append(f'### hmm-suite-begin {name}')
        lines += body
        if rc is not None:
            lines.append(f'### hmm-suite-end {name} rc={rc}')
    lines += LEAKS if leaks is None else leaks
    if done:
        lines.append('### hmm-guest-done')
    return '\n'.join(lines) + '\n'


def good(**change):
    """The suites of a good run, with one of them replaced."""
    suites = {'demo': (DEMO, 0), 'hmm-tests/thp-always': (TESTS, 0)}
    suites.update(change)
    return [(name, body, rc) for name, (body, rc) in suites.items() if body is not None]


def tests_with(*extra, plan=3):
    return ['TAP version 13', f'1..{plan}'] + TESTS[2:] + list(extra)


# (name, console, test stream, extra report.py arguments, problem it must name)
CASES = [
    ('a good run passes', KUNIT, stream(good()), [], None),
    ('a skip the manifest allows passes', KUNIT,
     stream(good(**{'hmm-tests/thp-always': (tests_with('ok 4 hmm.may_skip_1g # SKIP no page',
                                                        plan=4), 0)})), [], None),
    ('a filtered run without some suites passes', KUNIT,
     stream(good(demo=(None, 0))), ['--filtered'], None),
    ('a missing suite', KUNIT, stream(good(demo=(None, 0))), [], 'test/demo: missing'),
    ('a count below the manifest', KUNIT,
     stream(good(**{'hmm-tests/thp-always': (['TAP version 13', '1..2'] + TESTS[2:4],
                                             0)})), [],
     'expects at least 3'),
    ('a skip the manifest does not allow', KUNIT,
     stream(good(**{'hmm-tests/thp-always': (tests_with(plan=3)[:-1] +
                                             ['ok 3 hmm.migrate # SKIP no device'], 0)})), [],
     'does not allow it'),
    ('a suite that exits non-zero', KUNIT,
     stream(good(demo=(DEMO, 4))), [], 'exited with status 4'),
    ('a suite that never ends', KUNIT,
     stream(good(demo=(DEMO, None))), [], 'never finished'),
    ('an empty suite (a filter that matches nothing)', KUNIT,
     stream(good(demo=(['TAP version 13', '1..0'], 0))), ['--filtered'],
     'no test case ran'),
    ('KUnit missing from the console', '[    1.1] Run /init as init process\n',
     stream(good()), [], 'no parsable TAP output'),
    ('a plan after the results (the 6.12 parser loops on it)', KUNIT,
     stream(good(demo=(['TAP version 13', 'ok 1 - a', 'not ok 2 - b', '1..2'], 0))), [],
     'the test plan follows the results'),
    ('results past the plan', KUNIT,
     stream(good(demo=(['TAP version 13', '1..1', 'ok 1 - a', 'not ok 2 - b'], 0))), [],
     'past the plan'),
    ('a second TAP document in a suite', KUNIT,
     stream(good(demo=(DEMO + ['TAP version 13', '1..1', 'not ok 1 - c'], 0))), [],
     'a second TAP document'),
    ('a guest that does not finish', KUNIT, stream(good(), done=False), [],
     'did not finish'),
    ('a kmemleak report', KUNIT,
     stream(good(), leaks=['### hmm-kmemleak-begin',
                           'unreferenced object 0xffff888012345678 (size 64):',
                           '### hmm-kmemleak-end rc=0']), [], 'leaked object'),
    ('no kmemleak scan where it is required', KUNIT, stream(good(), leaks=[]), [],
     'no kmemleak scan'),
    ('a failed kmemleak scan', KUNIT,
     stream(good(), leaks=['### hmm-kmemleak-begin', '### hmm-kmemleak-end rc=1']), [],
     'kmemleak scan failed'),
]

# Console lines the kernel prints without a stack trace; each must fail.
REPORTS = [
    'swap_info_get: Bad swap file entry 3ffffffffffff',
    'swap_info_get: Unused swap offset entry 00000042',
    'mm/pgtable.c:42: bad pmd 00000000deadbeef(8000000012345067)',
    'mm/memory.c:7: bad pte 00000000deadbeef(8000000012345067)',
    'mm/memory.c:7: bad pud 00000000deadbeef(8000000012345067)',
    'rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:',
    'rcu: INFO: rcu_sched self-detected stall on CPU',
    'INFO: task hmm-tests:123 blocked for more than 60 seconds.',
    'watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [hmm-tests:99]',
    'kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)',
    'BUG: Bad page state in process hmm-tests  pfn:12345',
    'page_table_check: kernel BUG at mm/page_table_check.c:118!',
    'BUG: KASAN: slab-use-after-free in shmem_folio_from_device+0x12/0x40',
]
for text in REPORTS:
    CASES.append((f'console: "{text[:40]}"', KUNIT.replace(
        'Run /init', f'{text}\n[    1.100001] Run /init'), stream(good()), [],
        'kernel console has'))


def run_case(top, kunit_dir, n, case):
    _, console, tap, extra, problem = case
    tmp = os.path.join(top, str(n))
    os.mkdir(tmp)
    paths = [os.path.join(tmp, n) for n in ('console.log', 'tap.log', 'manifest')]
    for path, text in zip(paths, (console, tap, MANIFEST)):
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, os.path.join(HERE, 'report.py'), '--kunit-parser', kunit_dir,
         '--manifest', paths[2], '--run', 'test', paths[0], paths[1], '1'] + extra,
        capture_output=True, text=True, timeout=300, check=False)
    took = time.monotonic() - t0
    problems = [line for line in res.stdout.splitlines() if line.startswith('problem:')]
    if problem is None:
        ok = res.returncode == 0 and not problems
    else:
        ok = res.returncode == 1 and any(problem in p for p in problems)
    return ok, took, problems or res.stderr.strip().splitlines()[-3:]


def main():
    verbose = '-v' in sys.argv[1:]
    kunit_dir = [a for a in sys.argv[1:] if a != '-v'][0]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        runs = [pool.submit(run_case, tmp, kunit_dir, n, case)
                for n, case in enumerate(CASES)]
        for case, run in zip(CASES, runs):
            ok, took, problems = run.result()
            if verbose or not ok:
                print(f'    {"ok" if ok else "WRONG"}: {case[0]} ({took:.1f} s)')
            if not ok:
                bad += 1
                want = 'pass' if case[4] is None else f'fail naming "{case[4]}"'
                print(f'        expected the run to {want}; report.py said:')
                for p in problems:
                    print(f'        {p}')
    print(f'judge self-test: {len(CASES) - bad} of {len(CASES)} cases judged as expected')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
