"""runs/queue.sh: which runs it trains, in how many lanes, and that it stops cleanly.

The queue's own logic is shell: a copy of the script runs in a scratch tree laid out like the
repository (its ``sdzoo/`` a link to the real package, so the script's import check passes), with
an ``sdzoo`` executable first on PATH that records how it was called and writes the run's
``summary.json`` instead of training (the trainer is tested in test_train.py).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import sdzoo

REPO = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1

FAKE_SDZOO = r'''#!/usr/bin/env bash
dir= prev=
for a in "$@"; do { [ "$prev" = --out ] || [ "$prev" = --resume ]; } && dir=$a; prev=$a; done
echo "start $(date +%s.%N) $dir $*" >> "$QUEUE_TEST_LOG"
trap 'echo "term $dir" >> "$QUEUE_TEST_LOG"; exit 143' TERM
sleep "$QUEUE_TEST_SECONDS" & wait $!
echo "end $(date +%s.%N) $dir" >> "$QUEUE_TEST_LOG"
echo '{}' > "$dir/summary.json"
'''


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / 'repo'
    (root / 'runs').mkdir(parents=True)
    shutil.copy(REPO / 'runs' / 'queue.sh', root / 'runs' / 'queue.sh')
    (root / 'sdzoo').symlink_to(Path(sdzoo.__file__).resolve().parent)
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'sdzoo').write_text(FAKE_SDZOO)
    (bin_dir / 'sdzoo').chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               QUEUE_TEST_LOG=str(tmp_path / 'calls.log'), QUEUE_TEST_SECONDS='2')
    return root, env, tmp_path / 'calls.log'


def _queue(root: Path, env: dict, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(root / 'runs' / 'queue.sh'), *args], env=env, capture_output=True,
                          text=True, timeout=120, **kw)


def _states(root: Path, env: dict, *args: str):
    r = _queue(root, env, '--dry-run', *args)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    return dict(line.split(': ', 1) for line in lines[:-1]), lines[-1]


def test_dry_run_reports_each_entry_and_the_lanes(tree):
    root, env, _ = tree
    states, summary = _states(root, env)
    assert states and set(states.values()) <= {'start', 'skip (no checkpoint, no start arguments)'}
    startable = [d for d, s in states.items() if s == 'start']
    skipped = [d for d, s in states.items() if s != 'start']
    assert startable and skipped, states  # the queue has entries of both kinds
    assert summary == f'{len(startable)} to train: 1 lane(s) of {CORES} thread(s)'
    # a finished entry is passed over, a committed checkpoint makes an argument-less entry resumable
    (root / startable[0]).mkdir(parents=True)
    (root / startable[0] / 'summary.json').write_text('{}')
    (root / skipped[0]).mkdir(parents=True)
    (root / skipped[0] / 'last.pt').write_bytes(b'')
    states, summary = _states(root, env)
    assert states[startable[0]] == 'finished' and states[skipped[0]] == 'resume'
    left = len(startable)  # one fewer to start, one more to resume
    assert summary == f'{left} to train: 1 lane(s) of {CORES} thread(s)'
    if CORES >= 2:
        _, summary = _states(root, env, '--lanes', '2')
        assert summary == f'{left} to train: {min(2, left)} lane(s) of {CORES // min(2, left)} thread(s)'
    assert not list((root / 'runs').glob('*/.lock'))  # a dry run claims nothing


@pytest.mark.parametrize('args, message', [
    (('--lanes', '0'), "--lanes must be a whole number from 1 to the"),
    (('--lanes', 'two'), "--lanes must be a whole number from 1 to the"),
    (('--lanes', str(CORES + 1)), f"got '{CORES + 1}'"),
    (('--lanes',), '--lanes needs a number'),
    (('--fast',), "unknown argument '--fast'"),
])
def test_bad_arguments_are_refused_before_anything_runs(tree, args, message):
    root, env, log = tree
    r = _queue(root, env, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not log.exists() and [p.name for p in (root / 'runs').iterdir()] == ['queue.sh']


def _open_only(root: Path, env: dict, n: int):
    """Finish every entry but the first ``n`` startable ones; return those run dirs."""
    states, _ = _states(root, env)
    keep = [d for d, s in states.items() if s == 'start'][:n]
    for d in states:
        if d not in keep:
            (root / d).mkdir(parents=True, exist_ok=True)
            (root / d / 'summary.json').write_text('{}')
    return keep


@pytest.mark.skipif(CORES < 2, reason='two lanes need two cores')
def test_two_lanes_train_two_runs_at_once_each_once_on_one_thread(tree):
    root, env, log = tree
    runs = _open_only(root, env, 2)
    assert len(runs) == 2
    r = _queue(root, env, '--lanes', '2')
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    starts = {c[2]: (float(c[1]), c[3:]) for c in calls if c[0] == 'start'}
    ends = {c[2]: float(c[1]) for c in calls if c[0] == 'end'}
    assert sorted(starts) == sorted(runs) and len([c for c in calls if c[0] == 'start']) == 2  # each once
    for d, (_, argv) in starts.items():
        assert argv[:1] == ['train'] and argv[-3:] == ['--threads', str(CORES // 2), '--no-progress'], argv
        assert (root / d / 'summary.json').is_file()
    (a, b) = runs
    assert starts[b][0] < ends[a] and starts[a][0] < ends[b], calls  # side by side, not one after the other
    assert 'lane 1/2' in r.stdout and 'lane 2/2' in r.stdout and r.stdout.rstrip().endswith('queue done')


def test_one_open_run_gets_every_core_even_with_two_lanes_asked(tree):
    root, env, log = tree
    (run,) = _open_only(root, env, 1)
    r = _queue(root, env, *(['--lanes', '2'] if CORES >= 2 else []))
    assert r.returncode == 0, r.stdout + r.stderr
    (call,) = [line.split() for line in log.read_text().splitlines() if line.startswith('start')]
    assert call[2] == run and call[-3:] == ['--threads', str(CORES), '--no-progress'], call


def test_term_stops_the_running_trainers_and_the_queue(tree):
    root, env, log = tree
    lanes = min(2, CORES)
    runs = _open_only(root, env, lanes)
    env = dict(env, QUEUE_TEST_SECONDS='60')
    p = subprocess.Popen(['bash', str(root / 'runs' / 'queue.sh'), '--lanes', str(lanes)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count('start') < lanes):
            time.sleep(0.2)
        assert log.read_text().count('start') == lanes
        # as `pkill -TERM -f runs/queue.sh` does: the queue and its lanes, not the trainers (the lanes stop those)
        subprocess.run(['pkill', '-TERM', '-f', str(root / 'runs' / 'queue.sh')], check=True)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 143, out
    text = log.read_text()
    assert sorted(line.split()[1] for line in text.splitlines() if line.startswith('term')) == sorted(runs)
    assert 'end ' not in text and not any((root / d / 'summary.json').exists() for d in runs)
    assert 'stopped' in out


def test_refuses_to_train_with_sdzoo_installed_from_another_checkout(tree):
    root, env, log = tree
    (root / 'sdzoo').unlink()
    (root / 'sdzoo').mkdir()  # this checkout's package is not the one python imports
    r = _queue(root, env)
    assert r.returncode == 1 and f"not {root}/sdzoo: run pip install -e . here first" in r.stdout, r.stdout
    assert not log.exists()
