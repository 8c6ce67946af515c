"""What the ``sdzoo_autoregister.pth`` start-up hook adds to *every* Python start in the environment.

Each variant starts ``python -S`` and lets ``site.addsitedir`` process one folder, exactly as start-up
processes site-packages: an empty folder (no hook), this tree's hook, this tree's hook switched off
with ``SDZOO_NO_AUTOREGISTER=1``, and, for comparison, the hook of another git revision
(``--compare main``). ``-S`` keeps other ``.pth`` files of the environment (and an installed copy
of the hook) out of the measurement. Two measurements per variant, interleaved in one run:

* whole-process wall time with hyperfine (``apt-get install hyperfine``), mean of ``--runs`` starts;
* the hook's own cumulative import time from ``python -X importtime`` (median of ``--runs``).

    python benchmarks/startup.py                      # writes benchmarks/results/startup.md
    python benchmarks/startup.py --runs 20 --compare main
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import busy_note, cpu_busy, describe  # noqa: E402  (benchmarks/machine.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
PTH = 'sdzoo_autoregister.pth'
HOOK = '_sdzoo_hook.py'


def _site_dir(root: Path, name: str, revision: Optional[str]) -> Path:
    """A folder holding the .pth file and hook of ``revision`` ('' for this tree, None: no hook)."""
    d = root / name
    d.mkdir()
    if revision is not None:
        for f in (HOOK, PTH):
            (d / f).write_text((REPO_ROOT / f).read_text() if revision == '' else subprocess.run(
                ['git', 'show', f'{revision}:{f}'], cwd=REPO_ROOT, capture_output=True, text=True,
                check=True).stdout)
        # byte-compiled as pip does at install time (PYTHONDONTWRITEBYTECODE would otherwise make
        # every start compile the hook from source)
        py_compile.compile(str(d / HOOK), doraise=True)
    return d


def _env(off: str = '') -> Dict[str, str]:
    # no PYTHONPATH: a checkout on it would shadow the hook of the folder under test
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['SDZOO_NO_AUTOREGISTER'] = off
    return env


def _code(site_dir: Path) -> str:
    return f'import site; site.addsitedir({str(site_dir)!r})'


def _interleaved(variants: Dict[str, tuple], runs: int, cwd: Path) -> Dict[str, Tuple[float, float]]:
    """Per variant, medians of (wall ms of the whole start, cumulative µs ``-X importtime`` reports for the
    hook module; 0 when the ``.pth`` line did not import it), variants interleaved round by round so that
    the load of a shared machine hits them alike."""
    wall: Dict[str, List[float]] = {label: [] for label in variants}
    hook: Dict[str, List[float]] = {label: [] for label in variants}
    for _ in range(runs):
        for label, (site_dir, off) in variants.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, '-S', '-c', _code(site_dir)], env=_env(off), cwd=cwd, check=True)
            wall[label].append(1e3 * (time.perf_counter() - t))
            r = subprocess.run([sys.executable, '-S', '-X', 'importtime', '-c', _code(site_dir)],
                               env=_env(off), cwd=cwd, capture_output=True, text=True, check=True)
            cols = [ln.split('|') for ln in r.stderr.splitlines()]
            hook[label].append(sum(float(c[1]) for c in cols if len(c) == 3 and c[2].strip() == '_sdzoo_hook'))
    return {label: (statistics.median(wall[label]), statistics.median(hook[label])) for label in variants}


def _hyperfine(variants: Dict[str, tuple], runs: int, out_json: Path) -> Dict[str, dict]:
    cmd = ['hyperfine', '-N', '--warmup', '5', '--runs', str(runs), '--export-json', str(out_json)]
    for label, (site_dir, off) in variants.items():
        # hyperfine -N runs commands without a shell: pass the switch through `env`
        prog = f'{sys.executable} -S -c "{_code(site_dir)}"'
        cmd += ['--command-name', label, f'env SDZOO_NO_AUTOREGISTER={off} {prog}']
    # run from the temp folder: a checkout as the working directory would shadow the hook under test
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_env(), cwd=out_json.parent)
    return {r['command']: r for r in json.loads(out_json.read_text())['results']}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--runs', type=int, default=200, help='starts per variant (hyperfine and importtime)')
    p.add_argument('--compare', default=None, help='git revision whose hook to measure too (e.g. main)')
    p.add_argument('--out', default=str(REPO_ROOT / 'benchmarks/results/startup.md'))
    args = p.parse_args(argv)
    if shutil.which('hyperfine') is None:
        sys.exit('error: hyperfine is not installed (apt-get install hyperfine)')
    busy0 = cpu_busy()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        variants = {'no hook': (_site_dir(root, 'none', None), ''),
                    'hook': (_site_dir(root, 'this', ''), ''),
                    'hook, SDZOO_NO_AUTOREGISTER=1': (root / 'this', '1')}
        # the floor: an empty module imported by the same kind of .pth line (finding and loading any module)
        floor = _site_dir(root, 'empty', None)
        (floor / HOOK).write_text('')
        (floor / PTH).write_text('import _sdzoo_hook\n')
        py_compile.compile(str(floor / HOOK), doraise=True)
        variants['empty module (floor)'] = (floor, '')
        if args.compare:
            variants[f'{args.compare} hook'] = (_site_dir(root, 'old', args.compare), '')
            variants[f'{args.compare} hook, SDZOO_NO_AUTOREGISTER=1'] = (root / 'old', '1')
        wall = _hyperfine(variants, args.runs, root / 'hyperfine.json')
        inter = _interleaved(variants, args.runs, root)
        rows = []
        for label in variants:
            w, (med, us) = wall[label], inter[label]
            rows.append(f"| {label} | {1e3 * w['mean']:.2f} ± {1e3 * w['stddev']:.2f} | {med:.2f} | "
                        f"{med - inter['no hook'][0]:+.2f} | {us:.0f} |")
    busy = busy_note(busy0, cpu_busy())
    cmd = 'python benchmarks/startup.py' + ''.join(f' {a}' for a in (argv if argv is not None else sys.argv[1:]))
    text = '\n'.join([
        '# Start-up cost of the sdzoo_autoregister.pth hook',
        '',
        f'- command: `{cmd}`',
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {describe()}; "
        f'Python {sys.version.split()[0]}',
        f'- {busy}',
        f'- `python -S` + `site.addsitedir(<folder>)`, run from an empty temp folder; hyperfine -N: mean ± sd of '
        f'{args.runs} starts per variant, variant after variant; interleaved: medians of {args.runs} rounds, each '
        'round starting every variant once (wall ms, and the cumulative µs `-X importtime` reports for the hook '
        'module, 0 when it was not imported)',
        '',
        '| variant | hyperfine wall (ms) | interleaved wall (ms) | vs no hook (ms) | hook import (µs) |',
        '|---|---|---|---|---|',
        *rows, ''])
    Path(args.out).write_text(text)
    print(text)


if __name__ == '__main__':
    main()
