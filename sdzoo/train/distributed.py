"""DDP plumbing for the trainer: process group, model wrapping, and the few things ranks must agree on.

Every rank takes the same steps, so everything that ends or interrupts a step sequence (a signal to
one rank, a periodic checkpoint) is agreed on with one tiny all-reduce per step; every rank keeps its
own global RNG stream (row-mode coins, dropout), and checkpoints carry all of them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ['dist_env', 'init_distributed', 'wrap_ddp', 'agree', 'barrier', 'rng_states', 'restore_rng_state', 'rank_seed',
           'shutdown_distributed']


def dist_env() -> Tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them (0, 1, 0 for a plain process)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    return int(os.environ.get('RANK', '0')), world, int(os.environ.get('LOCAL_RANK', '0'))


def init_distributed(device: torch.device, world: int) -> None:
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    # skipped blocks leave parameters unused; every rank skips the same ones (shared SD seed)
    return DDP(model, device_ids=[device.index] if device.type == 'cuda' else None, find_unused_parameters=True)


def agree(values: List[float], world: int, device: torch.device) -> List[float]:
    """Element-wise maximum over ranks (one all-reduce): any rank's stop signal or due checkpoint
    becomes every rank's, so all ranks leave the step loop, and checkpoint, at the same step."""
    if world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def shutdown_distributed(world: int) -> None:
    """Leave together, then destroy the process group. Left to interpreter exit, the group's gloo threads
    were torn down in static-destruction order and a rank could abort after a clean run ("terminate called
    without an active exception", SIGABRT, issue 46.13)."""
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rng_states(world: int) -> List[torch.Tensor]:
    """Every rank's global CPU RNG state, in rank order (collective: all ranks must call it)."""
    state = torch.get_rng_state()
    if world <= 1:
        return [state]
    states: List[Optional[torch.Tensor]] = [None] * world
    dist.all_gather_object(states, state)
    return [s for s in states if s is not None]


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The global-RNG seed of one process: ``seed`` itself on rank 0 (a single-process run is unchanged), else
    SplitMix64 of (seed, rank, step). ``seed + rank`` made rank 1 of ``--seed 0`` the very stream of a
    single process with ``--seed 1``; mixed seeds do not line up with any small seed."""
    mask = (1 << 64) - 1
    if rank == 0 and step == 0:
        return int(seed)
    z = 0
    for k in (int(seed), int(rank), int(step)):
        z = (z + (k & mask) + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
    return z % (1 << 63)


def restore_rng_state(ckpt: Dict[str, Any], rank: int, world: int, seed: int) -> None:
    """Load this rank's global RNG state from a checkpoint.

    ``torch_rng_ranks`` holds one state per rank. A checkpoint from before those were kept (or from
    fewer processes) has only rank 0's ``torch_rng``: rank 0 takes it (a single-process run resumes
    exactly as before); other ranks get a stream of their own from (seed, rank, step), never a copy
    of rank 0's, which would make every rank draw the same row-mode coins and dropout masks.
    """
    states = ckpt.get('torch_rng_ranks')
    if isinstance(states, (list, tuple)) and len(states) == world and world > 1:
        torch.set_rng_state(states[rank])
    elif rank == 0:
        if ckpt.get('torch_rng') is not None:
            torch.set_rng_state(ckpt['torch_rng'])
    else:
        torch.manual_seed(rank_seed(seed, rank, int(ckpt.get('global_step', 0))))
