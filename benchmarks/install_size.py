"""Installed size of sdzoo's dependency closure for a set of extras, read from this environment's installed
distributions (their RECORD files), so the serving install can be set against the full one without installing
either again:

    python benchmarks/install_size.py                 # [all] against [cpu,serve], written to results/install_size.md

The torch-free serving venv that .ci/serving_env.sh builds from scratch is measured there with ``du`` (it also
holds pip and setuptools); this script counts the distributions alone.
"""
from __future__ import annotations

import argparse
import datetime
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, Set

from machine import describe  # benchmarks/machine.py
from results_file import write_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def closure(roots: Iterable[str], extras: Set[str]) -> Dict[str, int]:
    """``{distribution: bytes}`` of ``roots`` (with ``extras`` on sdzoo) and everything they require."""
    sizes, todo, seen = {}, [(r, extras if r == 'sdzoo' else set()) for r in roots], set()
    while todo:
        name, want = todo.pop()
        key = (_norm(name), frozenset(want))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        sizes[_norm(name)] = sum((f.size or 0) for f in (dist.files or []))
        for req in dist.requires or []:
            m = re.match(r'\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?', req)
            marker = req.split(';', 1)[1] if ';' in req else ''
            extra = re.search(r'extra\s*==\s*["\']([^"\']+)["\']', marker)
            if extra and extra.group(1) not in want:
                continue
            if 'sys_platform' in marker and sys.platform not in marker and 'linux' not in marker:
                continue
            sub = set(m.group(2)[1:-1].split(',')) if m.group(2) else set()
            todo.append((m.group(1), {e.strip() for e in sub if e.strip()}))
    return sizes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=str(REPO_ROOT / 'benchmarks' / 'results' / 'install_size.md'))
    args = ap.parse_args(argv)
    rows = []
    for label, extras in (('sdzoo[all] (torch, timm, onnxruntime, server)', {'all', 'torch', 'cpu', 'serve'}),
                          ('sdzoo[cpu,serve] (serving, no torch)', {'cpu', 'serve'})):
        sizes = closure(['sdzoo'], extras)
        biggest = ', '.join(f'{n} {b / 2**20:.0f}' for n, b in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])
        rows.append((label, len(sizes), sum(sizes.values()) / 2**20, biggest))
    full = rows[0][2]
    cmd = ' '.join(['python', 'benchmarks/install_size.py', *(argv if argv is not None else sys.argv[1:])])
    text = (f'# Installed size of the dependency closure\n\n- command: `{cmd}`\n'
            f'- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {describe()}; '
            f'python {sys.version.split()[0]}; sizes from the installed distributions\' RECORD files (MiB)\n\n'
            '| install | distributions | size (MiB) | share of [all] | largest (MiB) |\n|---|---:|---:|---:|---|\n'
            + ''.join(f'| {lab} | {n} | {mib:,.0f} | {mib / full:.1%} | {big} |\n' for lab, n, mib, big in rows))
    print(text)
    print(f'written to {write_atomic(args.out, text)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
