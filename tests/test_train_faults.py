"""Faults while training: SIGKILL in the middle of writing a checkpoint. Real `sdzoo train` processes
on a small real data set (CIFAR-10 JPEG q75 copy, 24 train images per class)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdzoo.train import load_checkpoint


def _tmp_files(out: Path) -> list:
    try:
        return [e.name for e in os.scandir(out) if e.name.startswith('.last.pt.') and e.name.endswith('.tmp')]
    except FileNotFoundError:
        return []


# The real `sdzoo train`, with os.fsync wrapped: once a complete last.pt exists, the next checkpoint's temp file
# (written in full, not yet fsynced and renamed onto last.pt) makes the process announce it and wait, so the
# SIGKILL lands inside the write window every time instead of by luck.
_PAUSE_IN_CHECKPOINT_WRITE = """
import os, sys, time
real_fsync = os.fsync
def fsync(fd):
    name = os.readlink(f'/proc/self/fd/{fd}')
    folder, base = os.path.split(name)
    if base.startswith('.last.pt.') and os.path.exists(os.path.join(folder, 'last.pt')):
        open(os.environ['SDZOO_TEST_PAUSED'], 'w').close()
        time.sleep(3600)
    return real_fsync(fd)
os.fsync = fsync
from sdzoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(600)
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path: Path, tiny_cifar: Path):
    """A checkpoint after every step; SIGKILL while the second one is being written. last.pt is then the
    previous complete checkpoint, and the run resumes from it (removing the orphaned temp file)."""
    out, paused = tmp_path / 'run', tmp_path / 'paused'
    cmd = [sys.executable, '-c', _PAUSE_IN_CHECKPOINT_WRITE, 'train', 'sd_resnet20', '--data', str(tiny_cifar),
           '--out', str(out), '--epochs', '50', '--batch-size', '8', '--val-size', '40', '--threads', '1',
           '--no-progress', '--workers', '0', '--no-test', '--checkpoint-minutes', '0.000001']
    log = open(tmp_path / 'train.err', 'w')  # a file, not a pipe nobody reads while waiting
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, SDZOO_TEST_PAUSED=str(paused)))
    try:
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / 'train.err').read_text()
            time.sleep(0.05)
        assert len(_tmp_files(out)) == 1  # the second checkpoint, written but not yet committed
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(out / 'last.pt')  # complete and loadable: the first checkpoint
    step = ckpt['global_step']
    assert step >= 1 and len(_tmp_files(out)) == 1
    r = subprocess.run([sys.executable, '-m', 'sdzoo.cli', 'train', '--resume', str(out), '--max-steps', '1',
                        '--no-progress'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out / 'last.pt')['global_step'] == step + 1
    assert _tmp_files(out) == []  # the killed writer's orphan is gone
