"""runs/queue.sh: which runs it trains, in what order, and that it stops cleanly.

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
               QUEUE_TEST_LOG=str(tmp_path / 'calls.log'), QUEUE_TEST_SECONDS='0.2')
    env.pop('SDZOO_QUEUE_THREADS', None)
    return root, env, tmp_path / 'calls.log'


def _queue(root: Path, env: dict, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(root / 'runs' / 'queue.sh'), *args], env=env, capture_output=True,
                          text=True, timeout=120, **kw)


def _states(root: Path, env: dict):
    r = _queue(root, env, '--dry-run')
    assert r.returncode == 0, r.stderr
    return dict(line.split(': ', 1) for line in r.stdout.strip().splitlines())


def test_dry_run_reports_each_entry(tree):
    root, env, log = tree
    states = _states(root, env)
    assert states and set(states.values()) <= {'start', 'skip (no checkpoint, no start arguments)'}
    startable = [d for d, s in states.items() if s == 'start']
    skipped = [d for d, s in states.items() if s != 'start']
    assert startable and skipped, states  # the queue has entries of both kinds
    # a finished entry is passed over, a committed checkpoint makes an argument-less entry resumable
    (root / startable[0]).mkdir(parents=True)
    (root / startable[0] / 'summary.json').write_text('{}')
    (root / skipped[0]).mkdir(parents=True)
    (root / skipped[0] / 'last.pt').write_bytes(b'')
    states = _states(root, env)
    assert states[startable[0]] == 'finished' and states[skipped[0]] == 'resume'
    assert not log.exists()  # a dry run trains nothing


def test_bad_arguments_are_refused_before_anything_runs(tree):
    root, env, log = tree
    r = _queue(root, env, '--lanes', '2')
    assert r.returncode == 2 and "unknown argument '--lanes'" in r.stderr, r.stderr
    assert not log.exists() and [p.name for p in (root / 'runs').iterdir()] == ['queue.sh']


def _open_only(root: Path, env: dict, n: int):
    """Finish every entry but the first ``n`` startable ones; return those run dirs."""
    states = _states(root, env)
    keep = [d for d, s in states.items() if s == 'start'][:n]
    for d in states:
        if d not in keep:
            (root / d).mkdir(parents=True, exist_ok=True)
            (root / d / 'summary.json').write_text('{}')
    return keep


def test_runs_train_one_after_the_other_on_every_core_then_resume(tree):
    root, env, log = tree
    runs = _open_only(root, env, 2)
    assert len(runs) == 2
    r = _queue(root, env)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [(c[0], c[2]) for c in calls] == [('start', runs[0]), ('end', runs[0]), ('start', runs[1]), ('end', runs[1])]
    for c in calls[::2]:
        assert c[3] == 'train' and c[-5:] == ['--out', c[2], '--threads', str(CORES), '--no-progress'], c
    assert r.stdout.rstrip().endswith('queue done')
    # a run with a checkpoint and no summary resumes; finished ones are left alone
    (root / runs[1] / 'summary.json').unlink()
    (root / runs[1] / 'last.pt').write_bytes(b'')
    log.unlink()
    assert _queue(root, env).returncode == 0
    (call,) = [line.split() for line in log.read_text().splitlines() if line.startswith('start')]
    assert call[3:] == ['train', '--resume', runs[1], '--threads', str(CORES), '--no-progress'], call


def test_queue_threads_leaves_cores_for_other_work(tree):
    root, env, log = tree
    (run,) = _open_only(root, env, 1)
    r = _queue(root, dict(env, SDZOO_QUEUE_THREADS='1'))
    assert r.returncode == 0, r.stdout + r.stderr
    (call,) = [line.split() for line in log.read_text().splitlines() if line.startswith('start')]
    assert call[2] == run and call[-3:] == ['--threads', '1', '--no-progress'], call


def test_term_stops_the_running_trainer_and_the_queue(tree):
    root, env, log = tree
    runs = _open_only(root, env, 2)
    env = dict(env, QUEUE_TEST_SECONDS='60')
    p = subprocess.Popen(['bash', str(root / 'runs' / 'queue.sh')], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and 'start' in log.read_text()):
            time.sleep(0.2)
        # as `pkill -TERM -f runs/queue.sh` does: the queue, not the trainer (the queue stops that)
        subprocess.run(['pkill', '-TERM', '-f', str(root / 'runs' / 'queue.sh')], check=True)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 143, out
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ['start', 'term'] and lines[1] == f'term {runs[0]}', lines
    assert not (root / runs[0] / 'summary.json').exists() and out.rstrip().endswith('queue stopped')


def test_refuses_to_train_with_sdzoo_installed_from_another_checkout(tree):
    root, env, log = tree
    (root / 'sdzoo').unlink()
    (root / 'sdzoo').mkdir()  # this checkout's package is not the one the installed sdzoo command imports,
    (root / 'sdzoo' / '__init__.py').write_text('')  # though `python -c` run from here would find it first
    r = _queue(root, env)
    assert r.returncode == 1 and f"not {root}/sdzoo: run pip install -e . here first" in r.stdout, r.stdout
    assert not log.exists()
