"""Stochastic depth under DistributedDataParallel: 2 real gloo processes on 127.0.0.1."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

STEPS = 5
SD_SEED = 1234
MODES = ('batch', 'row')


def _train(rank: int, mode: str) -> dict:
    """A few SGD steps of sd_resnet20 under DDP; what each rank decided, saw and ended with."""
    import timm
    import sdzoo  # noqa: F401
    from sdzoo.layers import sd_modules
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = timm.create_model('sd_resnet20', drop_path_rate=0.5, sd_mode=mode, sd_seed=SD_SEED)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a dropped block's parameters get no gradient in that step: DDP must be told to expect it
    ddp = DDP(model, find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    kept, losses = [], []
    for _ in range(STEPS):
        x = torch.randn(8, 3, 32, 32, generator=data)
        y = torch.randint(0, 10, (8,), generator=data)
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        kept.append([u.last_kept for u in sd_modules(model)])
        losses.append(loss.item())
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return dict(kept=kept, losses=losses, init=init, params=params)


def _worker(rank: int, world: int, store_file: str, out_dir: str) -> None:
    os.environ.update(GLOO_SOCKET_IFNAME='lo')
    torch.set_num_threads(1)
    # rendezvous through a file, not a port picked free and then raced for; gloo binds its own pairs on port 0
    dist.init_process_group('gloo', init_method=f'file://{store_file}', rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        torch.save({mode: _train(rank, mode) for mode in MODES}, Path(out_dir) / f'rank{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory) -> list:
    """Both ranks' results (one 2-process run serves every test here: process start-up is the cost)."""
    out = tmp_path_factory.mktemp('ddp')
    mp.spawn(_worker, args=(2, str(out / 'store'), str(out)), nprocs=2, join=True)
    return [torch.load(out / f'rank{r}.pt') for r in range(2)]


@pytest.mark.timeout(300)
def test_ddp_ranks_drop_the_same_blocks_and_stay_in_sync(ddp_results):
    r0, r1 = (r['batch'] for r in ddp_results)
    # same seed -> the same drop decisions on every rank, step after step ...
    assert r0['kept'] == r1['kept']
    assert all(k is not None for step in r0['kept'] for k in step)
    assert sum(step.count(False) for step in r0['kept']) > 0, 'some steps must skip blocks'
    assert len({tuple(step) for step in r0['kept']}) > 1, 'decisions change from step to step'
    # ... although the data (and the initial weights) differ
    assert all(a != b for a, b in zip(r0['losses'], r1['losses']))
    assert any(not torch.equal(r0['init'][n], r1['init'][n]) for n in r0['init'])
    # gradient reduction worked through the skipped blocks: identical, trained parameters
    for n, p in r0['params'].items():
        assert torch.equal(p, r1['params'][n]), n
    assert any(not torch.equal(p, r0['init'][n]) for n, p in r0['params'].items())


@pytest.mark.timeout(300)
def test_ddp_row_mode_keeps_parameters_in_sync(ddp_results):
    # row mode: per-sample coins from each rank's own RNG; parameters still reduce identically
    r0, r1 = (r['row'] for r in ddp_results)
    assert all(a != b for a, b in zip(r0['losses'], r1['losses']))
    for n, p in r0['params'].items():
        assert torch.equal(p, r1['params'][n]), n
    assert any(not torch.equal(p, r0['init'][n]) for n, p in r0['params'].items())
