"""Checkpoints written before per-rank RNG states were kept still resume exactly (single process).
Real training on a small real data set (CIFAR-10 JPEG q75 copy, 24 train images per class)."""
from __future__ import annotations

from pathlib import Path

import torch

from sdzoo.train import TrainConfig, Trainer, load_checkpoint
from sdzoo.train.checkpoint import atomic_save


def _cfg(out: Path, data: Path) -> TrainConfig:
    # row mode draws its per-sample coins from the global RNG: the state a checkpoint must carry
    return TrainConfig.from_dict(dict(
        model='sd_resnet20', data=str(data), out=str(out), epochs=1, batch_size=16, lr=0.05, sched='cosine',
        val_size=40, threads=1, deterministic=True, amp='none', checkpoint_minutes=60, eval_test=False,
        workers=0, drop_path_rate=0.5, sd_mode='row'))


def test_old_format_checkpoint_resumes_exactly(tmp_path: Path, tiny_cifar: Path):
    full = _cfg(tmp_path / 'full', tiny_cifar)
    Trainer(full, progress=False, max_steps=6).fit()
    part = _cfg(tmp_path / 'part', tiny_cifar)
    Trainer(part, progress=False, max_steps=3).fit()
    ckpt = load_checkpoint(Path(part.out) / 'last.pt')
    # the format of the checkpoints of runs in progress: one global RNG state, no per-rank list
    assert ckpt.pop('torch_rng_ranks') is None and ckpt['torch_rng'] is not None
    atomic_save(ckpt, Path(part.out) / 'last.pt')
    Trainer(TrainConfig.from_dict(ckpt['config']), resume=part.out, progress=False, max_steps=3).fit()
    a, b = load_checkpoint(Path(full.out) / 'last.pt'), load_checkpoint(Path(part.out) / 'last.pt')
    assert a['global_step'] == b['global_step'] == 6
    for k, v in a['model'].items():
        assert torch.equal(v, b['model'][k]), k
    assert torch.equal(a['torch_rng'], b['torch_rng'])
