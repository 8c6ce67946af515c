"""`sdzoo train` under real `torchrun --standalone --nproc_per_node 2` (gloo, CPU): exact resume and
clean stops. Small real data: 24 train / 6 test CIFAR-10 JPEGs (q75 copy) per class."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdzoo.train import load_checkpoint

pytestmark = pytest.mark.slow


def _torchrun(*args: str) -> list:
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
            '-m', 'sdzoo.cli', 'train', *args]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1')


def _train_args(data: Path, out: Path, mode: str) -> list:
    # 200 train images, global batch 16 = 2 x 8: 12 steps per epoch
    return ['sd_resnet20', '--data', str(data), '--out', str(out), '--epochs', '3',
            '--batch-size', '16', '--val-size', '40', '--threads', '1', '--no-progress', '--workers', '0',
            '--no-test', '--deterministic', '--drop-path-rate', '0.5', '--sd-mode', mode, '--amp', 'none']


def _run(cmd: list) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.timeout(900)
@pytest.mark.parametrize('mode', ['batch', 'row'])
def test_resumed_ddp_run_equals_uninterrupted_bit_for_bit(tmp_path: Path, tiny_cifar: Path, mode: str):
    """3 steps + resume + 3 steps == 6 steps, across an epoch of 12 steps, on 2 processes. Each rank
    keeps its own global RNG stream (row-mode coins) through the checkpoint."""
    full, part = tmp_path / 'full', tmp_path / 'part'
    _run(_torchrun(*_train_args(tiny_cifar, full, mode), '--max-steps', '6'))
    _run(_torchrun(*_train_args(tiny_cifar, part, mode), '--max-steps', '3'))
    first = load_checkpoint(part / 'last.pt')
    assert first['global_step'] == 3
    ranks = first['torch_rng_ranks']
    assert len(ranks) == 2 and not torch.equal(ranks[0], ranks[1])  # one stream per rank
    _run(_torchrun('--resume', str(part), '--max-steps', '3'))
    a, b = load_checkpoint(full / 'last.pt'), load_checkpoint(part / 'last.pt')
    assert a['global_step'] == b['global_step'] == 6
    for k, v in a['model'].items():
        assert torch.equal(v, b['model'][k]), k
    for ra, rb in zip(a['torch_rng_ranks'], b['torch_rng_ranks']):
        assert torch.equal(ra, rb)


def _children(pid: int) -> list:
    try:
        return [int(c) for c in Path(f'/proc/{pid}/task/{pid}/children').read_text().split()]
    except OSError:
        return []


def _rank_pid(torchrun_pid: int, rank: int, timeout: float = 120) -> int:
    """The worker process torchrun started for ``rank`` (from its environment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _children(torchrun_pid):
            try:
                env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
            except OSError:
                continue
            if f'RANK={rank}'.encode() in env:
                return pid
        time.sleep(0.2)
    raise AssertionError(f'no rank-{rank} worker under torchrun pid {torchrun_pid}')


@pytest.mark.timeout(600)
def test_sigterm_to_one_rank_stops_both_with_one_checkpoint(tmp_path: Path, tiny_cifar: Path):
    out = tmp_path / 'run'
    cmd = _torchrun(*_train_args(tiny_cifar, out, 'batch'), '--epochs', '50', '--log-seconds', '0')
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    seen = []
    try:
        rank1 = _rank_pid(proc.pid, 1)
        for line in proc.stdout:  # rank 0 prints a line per step: signal once epoch 2 is under way
            seen.append(line)
            if line.startswith('epoch 2 batch 2/'):
                break
        else:
            raise AssertionError(''.join(seen))
        os.kill(rank1, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=300)
        output = ''.join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    # both ranks stopped at the same step: rank 0 (told by rank 1) wrote one checkpoint and said so once,
    # rank 1 did not claim one, and neither crashed in a collective (torchrun may SIGTERM a rank that is
    # still exiting once the other has left: exit code 143 or -15, never an error)
    assert 'signal 15 (rank 1)' in output, output
    assert output.count('stopped by signal 15; checkpoint') == 1, output
    assert output.count('resume with: sdzoo train --resume') == 1, output
    for crash in ('RuntimeError', 'Connection closed', 'Connection reset', 'Broken pipe', 'exitcode  : 1 '):
        assert crash not in output, output
    ckpt = load_checkpoint(out / 'last.pt')
    assert ckpt['epoch'] >= 1 and ckpt['batch'] > 0, (ckpt['epoch'], ckpt['batch'])  # mid-epoch
    assert len(ckpt['torch_rng_ranks']) == 2
    assert not [p for p in out.iterdir() if 'tmp' in p.name], list(out.iterdir())


def test_ranks_augment_their_samples_differently(cifar_root: Path):
    """Each rank crops and flips its j-th sample with its own draws (they used to be keyed without the
    rank: every rank augmented alike). One real CIFAR-10 image repeated, so only augmentation differs."""
    import numpy as np
    from PIL import Image
    from sdzoo.data.loader import TensorLoader
    from sdzoo.data.sources import Split
    img = next((cifar_root / 'train').glob('*/*.jpg'))
    x = torch.from_numpy(np.array(Image.open(img).convert('RGB'))).unsqueeze(0).repeat(64, 1, 1, 1)
    split = Split(labels=torch.zeros(64, dtype=torch.long), images=x)
    batches = [next(TensorLoader(split, 16, (0.5,) * 3, (0.25,) * 3, train=True, seed=3, rank=r, world=2)
                    .iter_epoch(0))[0] for r in (0, 1)]
    same = [torch.equal(a, b) for a, b in zip(*batches)]
    assert not any(same), same


def test_rank_streams_overlap_no_other_seed():
    """Issue 46.14: rank r of --seed s used the global stream of seed s + r, so rank 1 of --seed 0 drew
    exactly what a single process with --seed 1 draws (row-mode coins, dropout). Rank 0 keeps its seed
    (single-process runs unchanged); other ranks' seeds are mixed and meet no small seed and each other not."""
    from sdzoo.train.distributed import rank_seed
    assert [rank_seed(s, 0) for s in range(5)] == list(range(5))
    mixed = {rank_seed(s, r) for s in range(1000) for r in range(1, 9)}
    assert len(mixed) == 8000 and not mixed & set(range(10 ** 6))
    # what the trainer seeds with: rank 1 of seed 0 now draws unlike a single process of seed 1
    torch.manual_seed(rank_seed(0, 1))
    a = torch.rand(8)
    torch.manual_seed(rank_seed(1, 0))
    assert not torch.equal(a, torch.rand(8))
    # restore_rng_state's fallback for a checkpoint without per-rank states: per (seed, rank, step)
    assert rank_seed(0, 1, 5) != rank_seed(0, 1, 6) != rank_seed(0, 1)
