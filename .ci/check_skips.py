"""Fail CI on any skipped test that .ci/expected_skips does not list (one regular expression per line, matched
against pytest's ``SKIPPED [n] file:line: reason`` summary lines, ``#`` comments allowed), and print the count.

A skip means a test did not run: without this check a missing data set or package turns the core of the suite
into skips and pytest still exits 0.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


def main(log: str, expected: str) -> int:
    patterns = [re.compile(line.strip()) for line in Path(expected).read_text().splitlines()
                if line.strip() and not line.lstrip().startswith('#')]
    skipped = [line.strip() for line in Path(log).read_text().splitlines() if line.startswith('SKIPPED')]
    count = sum(int(m.group(1)) if (m := re.match(r'SKIPPED \[(\d+)\]', s)) else 1 for s in skipped)
    unexpected = [s for s in skipped if not any(p.search(s) for p in patterns)]
    print(f'skipped tests: {count} ({len(skipped) - len(unexpected)} summary lines expected, '
          f'{len(unexpected)} not)')
    for s in unexpected:
        print(f'unexpected skip: {s}', file=sys.stderr)
    return 1 if unexpected else 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
