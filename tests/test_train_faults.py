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


@pytest.mark.timeout(600)
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path: Path, tiny_cifar: Path):
    """A checkpoint after every step; SIGKILL the moment a temp checkpoint file exists. last.pt is then
    the previous complete checkpoint, and the run resumes from it (removing the orphaned temp file)."""
    out = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'sdzoo.cli', 'train', 'sd_resnet20', '--data', str(tiny_cifar), '--out', str(out),
           '--epochs', '50', '--batch-size', '8', '--val-size', '40', '--threads', '1', '--no-progress',
           '--workers', '0', '--no-test', '--checkpoint-minutes', '0.000001']
    killed_mid_write = False
    for attempt in range(5):  # the write window is milliseconds wide: retry until a kill lands in it
        resume = [sys.executable, '-m', 'sdzoo.cli', 'train', '--resume', str(out), '--no-progress']
        proc = subprocess.Popen(resume if (out / 'last.pt').exists() else cmd,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if (out / 'last.pt').exists() and _tmp_files(out):
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        proc.stderr.close()
        ckpt = load_checkpoint(out / 'last.pt')  # complete and loadable, whatever the kill interrupted
        assert ckpt['global_step'] >= 1
        if _tmp_files(out):
            killed_mid_write = True
            break
    assert killed_mid_write, 'no SIGKILL landed while a checkpoint was being written'
    step = ckpt['global_step']
    r = subprocess.run([sys.executable, '-m', 'sdzoo.cli', 'train', '--resume', str(out), '--max-steps', '1',
                        '--no-progress'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out / 'last.pt')['global_step'] == step + 1
    assert _tmp_files(out) == []  # the killed writer's orphan is gone
