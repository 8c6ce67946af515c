"""``sdzoo compare A B``: two ``sdzoo validate`` results on the same images, paired (error difference, 95%
interval, McNemar exact test)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Tuple

from ..train.records import read_test_result
from .paired import paired_comparison

__all__ = ['read_validate_record', 'compare_command', 'add_parser']


def read_validate_record(given: str) -> Tuple[Path, Dict[str, Any]]:
    """``sdzoo validate --out``'s JSON, from its path or a folder that holds it as validate.json; a finished run
    directory without one gives its trainer's test result (summary.json), which records the same per-image hits."""
    path = Path(given)
    try:
        if path.is_dir():
            found = read_test_result(path)
            if found is None:
                raise ValueError(f'{given} holds no validate.json: run sdzoo validate on it with --out {path}/validate.json')
            path, record = found
        elif path.is_file():
            record = json.loads(path.read_text())
        else:
            raise ValueError(f'{given}: no such file (give the JSON of sdzoo validate --out, or a folder with a '
                             'validate.json: a run directory or a weights folder)')
    except json.JSONDecodeError as e:
        what = path if path.is_file() else f'the validate.json or summary.json in {path}'
        raise ValueError(f'{what} is not JSON ({e})') from None
    if not isinstance(record, dict) or 'per_image' not in record or 'top1' not in record:
        raise ValueError(f'{path} has no per-image results (written by an older sdzoo validate, or not by it): '
                         'run sdzoo validate again with --out')
    return path, record


def compare_command(args: argparse.Namespace) -> int:
    """Two networks on the same images, paired: the question is the images they disagree on."""
    (path_a, a), (path_b, b) = read_validate_record(args.first), read_validate_record(args.second)
    try:
        r = paired_comparison(a['per_image'], b['per_image'])
    except ValueError as e:
        raise ValueError(f'{path_a} and {path_b}: {e}') from None
    verdict = ('they differ on these images' if r.differs else
               'not distinguishable on these images (p >= 0.05)')
    print(f'{path_a}: top-1 {a["top1"]:.2f}%   {path_b}: top-1 {b["top1"]:.2f}%   ({r.images:,} images, paired)')
    print(f'error difference (first - second): {r.error_difference:+.2f} points, 95% CI {r.ci95[0]:+.2f} to '
          f'{r.ci95[1]:+.2f}; only the first right on {r.only_a} images, only the second on {r.only_b}; '
          f'McNemar exact p = {r.p_value:.3g}: {verdict}')
    if args.out:
        _write(args.out, dict(first=str(path_a), second=str(path_b), top1_first=a['top1'], top1_second=b['top1'],
                                  images=r.images, only_first_right=r.only_a, only_second_right=r.only_b,
                                  error_difference=r.error_difference, ci95=list(r.ci95), mcnemar_p=r.p_value))
    return 0


def _write(out: str, record: Dict[str, Any]) -> None:
    from ..files import atomic_write_json
    print(f'wrote {atomic_write_json(out, record)}')


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('compare', help='two sdzoo validate results on the same images, paired: error difference, '
                                       '95%% CI, McNemar exact test')
    p.add_argument('first', help="sdzoo validate --out's JSON, or a run directory / weights folder with a validate.json")
    p.add_argument('second', help='the same for the network to compare it with (same data set and split)')
    p.add_argument('--out', default=None, help='write the comparison as JSON here (default: print only)')
    p.add_argument('--debug', action='store_true', help='show tracebacks')
    p.set_defaults(func=compare_command)
